//! Security defaults: TLS verification is on unless turned off, everything listens on
//! 127.0.0.1 unless told otherwise, and the admin endpoints (the fakes' /stats and /reset,
//! the pusher's /metrics) can require a bearer token.

mod common;

use common::{config, sender, start_fake, token, token_auth, FakeOptions};
use pusher::config::{Config, Secret};
use pusher::mock::{MockConfig, MockServer};
use pusher::push::apns::ApnsNotification;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

/// One HTTP/1.1 request over a plain socket; (status, body).
fn http(addr: SocketAddr, method: &str, path: &str, auth: Option<&str>) -> (u16, String) {
    let mut tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let auth = auth
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    write!(
        tcp,
        "{method} {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    tcp.read_to_string(&mut raw).unwrap();
    let status = raw[9..12].parse().unwrap();
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fakes_admin_endpoint_can_require_a_token() {
    let server = MockServer::start(MockConfig {
        admin_listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
        admin_token: Some("admin-token-3f9e".into()),
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let admin = server.admin_addr().unwrap();
    let results = tokio::task::spawn_blocking(move || {
        [
            http(admin, "GET", "/stats", None),
            http(admin, "GET", "/stats", Some("Bearer wrong-token")),
            http(admin, "GET", "/stats", Some("Basic admin-token-3f9e")),
            http(admin, "POST", "/reset", None),
            http(admin, "GET", "/stats", Some("Bearer admin-token-3f9e")),
            http(admin, "POST", "/reset", Some("bearer admin-token-3f9e")),
        ]
    })
    .await
    .unwrap();
    let statuses: Vec<u16> = results.iter().map(|r| r.0).collect();
    assert_eq!(statuses, [401, 401, 401, 401, 200, 200]);
    assert!(results[4].1.contains("\"requests\""), "{:?}", results[4]);
    assert!(
        !results[0].1.contains("admin-token"),
        "the 401 names the token"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_can_require_a_token_and_healthz_stays_open() {
    let addr = pusher::telemetry::serve_prometheus(
        "stats.prometheus.listen",
        SocketAddr::from(([127, 0, 0, 1], 0)),
        Some(Secret::new("metrics-token-77a1")),
    )
    .await
    .unwrap();
    metrics::counter!("pusher_security_test_total").increment(1);
    let results = tokio::task::spawn_blocking(move || {
        [
            http(addr, "GET", "/metrics", None),
            http(addr, "GET", "/metrics", Some("Bearer nope")),
            http(addr, "GET", "/metrics", Some("Bearer metrics-token-77a1")),
            http(addr, "GET", "/healthz", None),
        ]
    })
    .await
    .unwrap();
    let statuses: Vec<u16> = results.iter().map(|r| r.0).collect();
    assert_eq!(statuses, [401, 401, 200, 200]);
    assert!(results[2].1.contains("pusher_security_test_total"));
    assert!(!results[0].1.contains("pusher_security_test_total"));
}

#[test]
fn listeners_default_to_loopback() {
    let loopback = |addr: &str| addr.parse::<SocketAddr>().unwrap().ip().is_loopback();
    let defaults = Config::default();
    for listen in [
        &defaults.stats.prometheus.listen,
        &defaults.route.listen,
        &defaults.results.listen,
    ] {
        assert!(loopback(listen), "{listen}");
    }
    let m = MockConfig::default();
    for addr in [m.tls_listen, m.h2c_listen].into_iter().flatten() {
        assert!(addr.ip().is_loopback(), "{addr}");
    }
    assert_eq!(m.admin_listen, None);
    assert_eq!(m.admin_token, None);

    // `pusher mock all` with no address flags: every listener it reports is on 127.0.0.1.
    let mut child = Command::new(env!("CARGO_BIN_EXE_pusher"))
        .args(["mock", "all", "--admin-token", "tok-51c0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let ready: serde_json::Value = serde_json::from_str(&line).unwrap();
    let mut addrs = Vec::new();
    for service in ["apns", "fcm"] {
        for key in ["tls", "h2c", "admin"] {
            addrs.push(ready[service][key].as_str().unwrap().to_string());
        }
    }
    // The admin token from the command line is required (and not printed).
    let admin: SocketAddr = ready["apns"]["admin"].as_str().unwrap().parse().unwrap();
    let unauthorized = http(admin, "GET", "/stats", None).0;
    let authorized = http(admin, "GET", "/stats", Some("Bearer tok-51c0")).0;
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(addrs.iter().all(|a| loopback(a)), "{addrs:?}");
    assert!(!line.contains("tok-51c0"), "{line}");
    assert_eq!((unauthorized, authorized), (401, 200));
}

/// `--admin-token "$TOKEN"` with TOKEN unset left the admin endpoint open without a word.
#[test]
fn an_empty_admin_token_is_refused() {
    for service in ["apns", "gcm", "webpush", "all"] {
        let out = Command::new(env!("CARGO_BIN_EXE_pusher"))
            .args(["mock", service, "--admin-token", ""])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{service}: {stderr}");
        assert!(stderr.contains("--admin-token"), "{service}: {stderr}");
        assert!(out.stdout.is_empty(), "{service}: started");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_verification_is_on_by_default() {
    let fake = start_fake(FakeOptions::default()).await;
    let n = ApnsNotification::new(token(1), &br#"{"aps":{}}"#[..]);

    // Without the fake's CA the sender must refuse the connection: the public roots do not
    // know the fake's generated CA.
    let mut untrusted = config(&fake, fake.tls_url(), token_auth());
    untrusted.ca_file = None;
    untrusted.retry.max_attempts = 1;
    let delivery = sender(untrusted).send_with_details(&n).await;
    assert!(!delivery.outcome.is_delivered(), "{delivery:?}");
    let error = delivery.transport_error.clone().unwrap_or_default();
    assert!(error.to_lowercase().contains("certificate"), "{error}");
    assert_eq!(fake.stats().requests, 0, "a request went through");

    // The same with the CA: delivered (so the refusal above is about trust, nothing else).
    let trusted = config(&fake, fake.tls_url(), token_auth());
    assert!(sender(trusted).send(&n).await.is_delivered());

    // The CLI: `pusher send` without --ca fails and says why.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_pusher"))
        .args(["send", "apns", "--endpoint", &fake.tls_url()])
        .args(["--key-file", "fixtures/apns/AuthKey_TESTKEY001.p8"])
        .args(["--key-id", "TESTKEY001", "--team-id", "TEAM000001"])
        .args(["--topic", "com.example.app", "--token", &token(2)])
        .args(["--payload", r#"{"aps":{}}"#, "--attempts", "1"])
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_lowercase();
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("certificate"), "{text}");
    assert_eq!(
        fake.stats().requests,
        1,
        "only the trusted send got through"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fcm_tls_verification_is_on_by_default() {
    use pusher::mock::{FcmHandler, FcmOptions};
    let fake = MockServer::start_with(
        MockConfig::default(),
        FcmHandler::new(FcmOptions::default()),
    )
    .await
    .unwrap();
    let url = format!("https://127.0.0.1:{}", fake.tls_addr().unwrap().port());
    let ca = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(ca.path(), fake.ca_pem()).unwrap();
    let send = |ca: Option<&std::path::Path>| {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_pusher"));
        cmd.args(["send", "gcm", "--api-key", "k", "--endpoint", &url])
            .args([
                "--token",
                "dXk0:APA91b-x",
                "--title",
                "t",
                "--attempts",
                "1",
            ]);
        if let Some(ca) = ca {
            cmd.arg("--ca").arg(ca);
        }
        cmd.output()
    };
    let out = send(None).await.unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_lowercase();
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("certificate"), "{text}");
    assert_eq!(fake.stats().snapshot().requests, 0);
    // With the fake's CA: delivered.
    let out = send(Some(ca.path())).await.unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}
