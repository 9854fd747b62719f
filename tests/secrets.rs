//! Secrets never reach the output, at any log level: a debug run of `pusher run apns` with
//! secrets in its configuration, and `pusher send` with a .p12 password, are grepped for them.

use std::process::{Command, Stdio};
use std::time::Duration;

const PG_PASS: &str = "pg-secret-7f3a9c";
const P12_PASS: &str = "test"; // the fixture's password: too short to grep for alone
const SENTRY: &str = "https://sentrykey-51d2@sentry.example/1";
const API_KEY: &str = "fcm-server-key-88e1b2";

fn key_material() -> Vec<String> {
    // A distinctive line of the .p8 key: it must never be printed either.
    let p8 = std::fs::read_to_string("fixtures/apns/AuthKey_TESTKEY001.p8").unwrap();
    p8.lines()
        .filter(|l| !l.starts_with("-----"))
        .map(str::to_string)
        .collect()
}

#[test]
fn a_debug_run_prints_no_secret() {
    let child = Command::new(env!("CARGO_BIN_EXE_pusher"))
        .args([
            "-d",
            "run",
            "apns",
            "--app",
            "game",
            "--brokers",
            "127.0.0.1:1",
        ])
        .args([
            "--key-file",
            "fixtures/apns/AuthKey_TESTKEY001.p8",
            "--key-id",
            "TESTKEY001",
            "--team-id",
            "TEAM000001",
        ])
        .args(["--topic", "com.example.app"])
        .env("PUSHER_INVALIDTOKEN_PG_PASS", PG_PASS)
        .env("PUSHER_SENTRY_URL", SENTRY)
        .env("PUSHER_GCM_CERTS_OTHER_APIKEY", API_KEY)
        .env("PUSHER_STATS_PROMETHEUS_LISTEN", "")
        .env("PUSHER_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("Configuration loaded"),
        "not a debug run:\n{text}"
    );
    assert!(
        text.contains("<redacted>"),
        "secrets are not shown as <redacted>:\n{text}"
    );
    for secret in [PG_PASS, SENTRY, "sentrykey-51d2", API_KEY]
        .iter()
        .map(|s| s.to_string())
        .chain(key_material())
    {
        assert!(
            !text.contains(&secret),
            "secret {secret:?} printed:\n{text}"
        );
    }
}

#[test]
fn send_with_a_p12_password_prints_no_secret() {
    let out = Command::new(env!("CARGO_BIN_EXE_pusher"))
        .args([
            "-d",
            "send",
            "apns",
            "--endpoint",
            "https://127.0.0.1:1",
            "--certificate",
            "fixtures/apns/client.p12",
        ])
        .args([
            "--certificate-password",
            P12_PASS,
            "--token",
            &"ab".repeat(32),
            "--payload",
            r#"{"aps":{}}"#,
        ])
        .args(["--attempts", "1", "--timeout", "1s"])
        .env("PUSHER_LOG", "debug")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // It got past loading the .p12 (with its password) and tried to send: exit 1 with the
    // outcome line, not a usage error (exit 2) that would print nothing to check.
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains(r#""outcome":"gave_up""#), "{text}");
    let key = std::fs::read_to_string("fixtures/apns/client.key").unwrap();
    for line in key.lines().filter(|l| !l.starts_with("-----")) {
        assert!(!text.contains(line), "private key printed:\n{text}");
    }
    assert!(!text.contains("--certificate-password test"), "{text}");
}

// ---------------------------------------------------------------------------------------
// Every secret kind, at every log level, on error paths and in /metrics.

const METRICS_TOKEN: &str = "metrics-token-c41d";

/// Every line of a PEM file's body (the base64 of the key or certificate).
fn pem_lines(path: &str) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("-----") && l.len() > 16)
        .map(str::to_string)
        .collect()
}

/// The service account's private key lines and key id.
fn service_account_secrets() -> Vec<String> {
    let sa: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string("fixtures/fcm/service-account.json").unwrap(),
    )
    .unwrap();
    let mut secrets: Vec<String> = sa["private_key"]
        .as_str()
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("-----") && l.len() > 16)
        .map(str::to_string)
        .collect();
    secrets.push(sa["private_key_id"].as_str().unwrap().to_string());
    secrets
}

fn assert_no_secret(text: &str, secrets: &[String]) {
    assert!(!secrets.is_empty());
    for secret in secrets {
        assert!(
            !text.contains(secret.as_str()),
            "secret {secret:?} printed:\n{}",
            &text[..text.len().min(20_000)]
        );
    }
}

/// Runs `pusher` with `args` and `env` for about `secs` seconds (SIGTERM then), scraping
/// `/metrics` (with the token) once it is served. Returns stdout + stderr + the scrape.
fn run_capture(args: &[&str], env: &[(&str, &str)], secs: u64) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_pusher"))
        .args(args)
        .envs(env.iter().copied())
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        let mut all = String::new();
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line.clone());
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    let mut scrape = String::new();
    let addr_re = regex::Regex::new(r"127\.0\.0\.1:\d+").unwrap();
    while std::time::Instant::now() < deadline {
        let Ok(line) = rx.recv_timeout(Duration::from_millis(100)) else {
            continue;
        };
        if scrape.is_empty() && line.contains("Serving /metrics") {
            if let Some(addr) = addr_re.find(&line) {
                std::thread::sleep(Duration::from_millis(500));
                scrape = scrape_metrics(addr.as_str());
                assert!(
                    scrape.contains("200 OK"),
                    "/metrics with the token:\n{scrape}"
                );
            }
        }
    }
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let out = child.wait_with_output().unwrap();
    let stderr = reader.join().unwrap();
    format!(
        "{}{stderr}\n--- /metrics ---\n{scrape}",
        String::from_utf8_lossy(&out.stdout)
    )
}

fn scrape_metrics(addr: &str) -> String {
    use std::io::{Read, Write};
    let mut tcp = std::net::TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        tcp,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {METRICS_TOKEN}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    let _ = tcp.read_to_string(&mut out);
    out
}

/// The APNs secrets of a run (p8 key, PG password, Sentry DSN, an FCM API key, the metrics
/// token) at trace level and at the default level, with PostgreSQL unreachable (an error
/// path), and /metrics scraped.
#[test]
fn apns_runs_at_every_level_print_no_secret() {
    let mut secrets: Vec<String> = [PG_PASS, SENTRY, "sentrykey-51d2", API_KEY, METRICS_TOKEN]
        .iter()
        .map(|s| s.to_string())
        .collect();
    secrets.extend(key_material());
    // Trace enables every level below it: what any level prints, trace prints too.
    for level in ["trace", "info"] {
        let text = run_capture(
            &[
                "run",
                "apns",
                "--app",
                "game",
                "--brokers",
                "127.0.0.1:1",
                "--key-file",
                "fixtures/apns/AuthKey_TESTKEY001.p8",
                "--key-id",
                "TESTKEY001",
                "--team-id",
                "TEAM000001",
                "--topic",
                "com.example.app",
            ],
            &[
                ("PUSHER_LOG", level),
                ("PUSHER_INVALIDTOKEN_PG_PASS", PG_PASS),
                ("PUSHER_INVALIDTOKEN_PG_HOST", "127.0.0.1"),
                ("PUSHER_INVALIDTOKEN_PG_PORT", "1"),
                ("PUSHER_SENTRY_URL", SENTRY),
                ("PUSHER_GCM_CERTS_OTHER_APIKEY", API_KEY),
                ("PUSHER_STATS_REPORTERS", "prometheus"),
                ("PUSHER_STATS_PROMETHEUS_LISTEN", "127.0.0.1:0"),
                ("PUSHER_STATS_PROMETHEUS_TOKEN", METRICS_TOKEN),
            ],
            4,
        );
        assert!(
            text.contains("/metrics ---\nHTTP/1.1 200"),
            "no scrape at {level}:\n{text}"
        );
        assert_no_secret(&text, &secrets);
    }
}

/// FCM: a service-account file and the seed's firebaseCredentials JSON in the environment,
/// at trace level, with the token endpoint unreachable (an error path).
#[test]
fn gcm_runs_print_no_service_account_key() {
    let sa = std::fs::read_to_string("fixtures/fcm/service-account.json")
        .unwrap()
        .replace(
            "https://oauth2.googleapis.com/token",
            "https://127.0.0.1:1/token",
        );
    let dir = tempfile::tempdir().unwrap();
    let sa_file = dir.path().join("sa.json");
    std::fs::write(&sa_file, &sa).unwrap();
    let text = run_capture(
        &[
            "-d",
            "run",
            "gcm",
            "--app",
            "game",
            "--brokers",
            "127.0.0.1:1",
            "--service-account",
            sa_file.to_str().unwrap(),
            "--endpoint",
            "https://127.0.0.1:1",
        ],
        &[
            ("PUSHER_LOG", "trace"),
            ("PUSHER_GCM_APPS", "game,other"),
            ("PUSHER_GCM_FIREBASECREDENTIALS_OTHER", &sa),
            ("PUSHER_INVALIDTOKEN_HANDLERS", ""),
            ("PUSHER_STATS_REPORTERS", "prometheus"),
            ("PUSHER_STATS_PROMETHEUS_LISTEN", "127.0.0.1:0"),
            ("PUSHER_STATS_PROMETHEUS_TOKEN", METRICS_TOKEN),
        ],
        4,
    );
    assert!(
        text.contains("Configuration loaded"),
        "not a debug run:\n{text}"
    );
    let mut secrets = service_account_secrets();
    secrets.push(METRICS_TOKEN.into());
    assert_no_secret(&text, &secrets);
}

fn output(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_pusher"))
        .args(args)
        .envs(env.iter().copied())
        .env("PUSHER_LOG", "trace")
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

/// Bad credentials and bad configuration: the errors name the problem, never the secret.
#[test]
fn errors_about_credentials_print_no_secret() {
    let token = "ab".repeat(32);
    let common = [
        "--token",
        token.as_str(),
        "--attempts",
        "1",
        "--timeout",
        "1s",
    ];
    // A wrong .p12 password.
    let (code, text) = output(
        &[
            &["send", "apns", "--endpoint", "https://127.0.0.1:1"][..],
            &["--certificate", "fixtures/apns/client.p12"],
            &["--certificate-password", "wrong-p12-secret-0b"],
            &common,
        ]
        .concat(),
        &[],
    );
    assert_eq!(code, Some(2), "{text}");
    assert_no_secret(&text, &["wrong-p12-secret-0b".into()]);
    // A PEM certificate with a key that is not its own, and a key that is not a .p8.
    let (code, text) = output(
        &[
            &["send", "apns", "--endpoint", "https://127.0.0.1:1"][..],
            &["--certificate", "fixtures/apns/client.pem"],
            &["--key", "fixtures/apns/client-ca.key"],
            &common,
        ]
        .concat(),
        &[],
    );
    assert_ne!(code, Some(0), "{text}");
    let mut keys = pem_lines("fixtures/apns/client-ca.key");
    keys.extend(pem_lines("fixtures/apns/client.key"));
    assert_no_secret(&text, &keys);
    let (code, text) = output(
        &[
            &["send", "apns", "--endpoint", "https://127.0.0.1:1"][..],
            &["--key-file", "fixtures/apns/client.key"],
            &["--key-id", "K", "--team-id", "T", "--topic", "t"],
            &common,
        ]
        .concat(),
        &[],
    );
    assert_eq!(code, Some(2), "{text}");
    assert_no_secret(&text, &pem_lines("fixtures/apns/client.key"));
    // A service account whose token endpoint refuses connections.
    let (code, text) = output(
        &[
            &["send", "gcm", "--endpoint", "https://127.0.0.1:1"][..],
            &["--service-account", "fixtures/fcm/service-account.json"],
            &["--token-uri", "https://127.0.0.1:1/token", "--title", "t"],
            &common,
        ]
        .concat(),
        &[],
    );
    assert_ne!(code, Some(0), "{text}");
    assert_no_secret(&text, &service_account_secrets());
    // A legacy API key over a refused connection (from the environment).
    let (code, text) = output(
        &[
            &[
                "send",
                "gcm",
                "--endpoint",
                "http://127.0.0.1:1",
                "--title",
                "t",
            ][..],
            &common,
        ]
        .concat(),
        &[("PUSHER_GCM_API_KEY", API_KEY)],
    );
    assert_ne!(code, Some(0), "{text}");
    assert_no_secret(&text, &[API_KEY.into()]);
    // A Sentry DSN that fails validation, and a PostgreSQL password next to a bad key.
    let (code, text) = output(
        &["run", "apns", "--brokers", "127.0.0.1:1"],
        &[
            ("PUSHER_SENTRY_URL", "ftp://sentrykey-51d2@sentry.example/1"),
            ("PUSHER_INVALIDTOKEN_PG_PASS", PG_PASS),
        ],
    );
    assert_eq!(code, Some(2), "{text}");
    assert_no_secret(&text, &["sentrykey-51d2".into(), PG_PASS.into()]);
    let (code, text) = output(
        &["run", "apns", "--brokers", "127.0.0.1:1"],
        &[
            ("PUSHER_INVALIDTOKEN_PG_PASS", PG_PASS),
            ("PUSHER_INVALIDTOKEN_PG_PORT", "not-a-port"),
        ],
    );
    assert_eq!(code, Some(2), "{text}");
    assert_no_secret(&text, &[PG_PASS.into()]);
}
