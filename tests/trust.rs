//! Setups people really use, through the real `pusher run` binary, where messages were lost
//! before (issue "Trust what exists"): the default config with both platforms' topics in one
//! cluster, a topic of the other platform, a wrong CA, an endpoint that is down for a while.
//! A failure that is not the message's fault pauses the pusher; it never ends messages.

// Both fakes' helpers include tests/common/fake.rs: two copies of one small type.
#![allow(clippy::duplicate_mod)]

mod common;
mod fcm_support;
#[path = "common/kafka.rs"]
mod kafka;
#[path = "common/pg_proxy.rs"]
mod pg_proxy;

use common::process::{committed_offsets, produce_all, sigterm, KillOnDrop};
use common::{fixture, start_fake, FakeOptions, KEY_ID, TEAM_ID, TOPIC};
use kafka::TestKafka;
use pusher::gen::{GenConfig, Generator};
use pusher::push::Platform;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn messages(platform: Platform, count: u64, seed: u64) -> Vec<Vec<u8>> {
    let mut config = GenConfig::new(platform);
    config.count = count;
    config.seed = seed;
    Generator::new(config).unwrap().map(|m| m.bytes).collect()
}

/// A port nothing listens on (bound, then released).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `GET path` over HTTP/1.1: (status, body); `None` when nothing answers.
fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let status = text.split(' ').nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((status, body))
}

/// Polls `check` every 50 ms until it holds or `within` passes. (The checks block briefly:
/// the tests run on a multi-thread runtime, so the in-process fakes keep answering.)
async fn wait_for(what: &str, within: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits (30 s at most) for `/healthz` to answer 503; its body.
async fn unhealthy(metrics: SocketAddr) -> String {
    let mut health = String::new();
    wait_for(
        "/healthz to say the endpoint fails",
        Duration::from_secs(30),
        || match http_get(metrics, "/healthz") {
            Some((503, body)) => {
                health = body;
                true
            }
            _ => false,
        },
    )
    .await;
    health
}

/// `pusher run <platform> --app game` with the repository's default config (no group, no
/// topics set), no feedback, deletion or StatsD; stderr to `log`.
fn pusher_run(
    platform: &str,
    brokers: &str,
    args: &[&str],
    env: &[(&str, String)],
    log: &Path,
) -> KillOnDrop {
    pusher_run_app(platform, "game", brokers, args, env, log)
}

/// As [`pusher_run`], for `app`.
fn pusher_run_app(
    platform: &str,
    app: &str,
    brokers: &str,
    args: &[&str],
    env: &[(&str, String)],
    log: &Path,
) -> KillOnDrop {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pusher"));
    cmd.args(["run", platform, "--app", app, "--brokers", brokers])
        .args(args)
        .env("PUSHER_QUEUE_OFFSETRESETSTRATEGY", "earliest")
        .env("PUSHER_FEEDBACK_REPORTERS", "")
        .env("PUSHER_INVALIDTOKEN_HANDLERS", "")
        .env("PUSHER_STATS_REPORTERS", "")
        .env("PUSHER_STATS_PROMETHEUS_LISTEN", "")
        .env("PUSHER_QUEUE_SESSIONTIMEOUT", "3000")
        .env("NO_COLOR", "1");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let log = std::fs::File::create(log).unwrap();
    KillOnDrop(
        cmd.stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start pusher run"),
    )
}

fn apns_args<'a>(endpoint: &'a str, ca: &'a str) -> Vec<&'a str> {
    let mut args = vec![
        "--key-file",
        "fixtures/apns/AuthKey_TESTKEY001.p8",
        "--key-id",
        KEY_ID,
        "--team-id",
        TEAM_ID,
        "--topic",
        TOPIC,
        "--endpoint",
        endpoint,
    ];
    if !ca.is_empty() {
        args.extend(["--ca", ca]);
    }
    args
}

/// Stops a pusher with SIGTERM; it must exit 0 within `within`.
async fn stop(mut child: KillOnDrop, within: Duration) {
    sigterm(&child);
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "pusher exited with {status}");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "pusher did not stop within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn sum(v: Vec<i64>) -> i64 {
    v.iter().sum()
}

/// Waits until `group` has committed `n` messages of `topic` (2 partitions).
async fn wait_committed(brokers: &str, group: &str, topic: &str, n: u64) {
    wait_for(
        &format!("{group} to commit {n} of {topic}"),
        Duration::from_secs(60),
        || sum(committed_offsets(brokers, group, topic, 2)) == n as i64,
    )
    .await;
}

/// Seen with the default config: `pusher run gcm` consumed `push-game_apns`, committed those
/// messages as rejected, and the APNs pusher found nothing. Now each pusher subscribes only to
/// its platform's topics, in its own default group (`pusher-gcm`, `pusher-apns`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_platform_pusher_reads_only_its_own_topics_in_its_own_group() {
    const N: u64 = 300;
    let kafka = TestKafka::start(&["push-game_apns", "push-game_gcm"], 2).await;
    let brokers = kafka.bootstrap().to_string();
    produce_all(&brokers, "push-game_apns", &messages(Platform::Apns, N, 1)).await;
    produce_all(&brokers, "push-game_gcm", &messages(Platform::Gcm, N, 2)).await;
    let apns = start_fake(FakeOptions::default()).await;
    let fcm = fcm_support::start_fake(fcm_support::FakeOptions {
        api_keys: vec!["test-key".into()],
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();

    // FCM first: it must take the GCM topic only.
    let fcm_url = fcm.tls_url();
    let fcm_ca = fcm.ca_file.display().to_string();
    let gcm = pusher_run(
        "gcm",
        &brokers,
        &[
            "--apiKey",
            "test-key",
            "--endpoint",
            &fcm_url,
            "--ca",
            &fcm_ca,
        ],
        &[],
        &dir.path().join("gcm.log"),
    );
    wait_committed(&brokers, "pusher-gcm", "push-game_gcm", N).await;
    assert_eq!(fcm.stats().requests, N);
    stop(gcm, Duration::from_secs(20)).await;
    assert_eq!(
        sum(committed_offsets(
            &brokers,
            "pusher-gcm",
            "push-game_apns",
            2
        )),
        0,
        "the GCM pusher committed APNs messages"
    );
    assert_eq!(apns.stats().requests, 0);

    // The APNs pusher then finds every APNs message still there.
    let url = apns.tls_url();
    let ca = apns.ca_file.display().to_string();
    let run = pusher_run(
        "apns",
        &brokers,
        &apns_args(&url, &ca),
        &[],
        &dir.path().join("apns.log"),
    );
    wait_committed(&brokers, "pusher-apns", "push-game_apns", N).await;
    stop(run, Duration::from_secs(20)).await;
    let stats = apns.stats();
    assert_eq!(
        (stats.requests, common::status_count(&stats, 200)),
        (N, N),
        "every APNs message delivered once"
    );
}

/// An explicit topic of the other platform is a configuration error at start-up, naming it.
#[test]
fn a_topic_of_the_other_platform_is_refused_at_start_up() {
    let out = Command::new(env!("CARGO_BIN_EXE_pusher"))
        .args(["run", "apns", "--app", "game", "--brokers", "127.0.0.1:1"])
        .args(apns_args("https://127.0.0.1:1", ""))
        .env("PUSHER_QUEUE_TOPICS", "push-game_gcm")
        .env("PUSHER_STATS_REPORTERS", "")
        .env("PUSHER_STATS_PROMETHEUS_LISTEN", "")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("queue.topics[0]") && stderr.contains("is a gcm topic"),
        "{stderr}"
    );
}

/// Seen: a wrong `--ca` turned 12,064 messages into `gave_up` in 18 s, the TLS error never
/// logged, `/healthz` ok. Now: the cause logged once, `/healthz` 503 with it, nothing sent,
/// ended or committed; SIGTERM exits at once; run again with the right CA, all delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_ca_pauses_the_pusher_and_loses_nothing() {
    const N: u64 = 400;
    let kafka = TestKafka::start(&["push-game_apns"], 2).await;
    let brokers = kafka.bootstrap().to_string();
    produce_all(&brokers, "push-game_apns", &messages(Platform::Apns, N, 3)).await;
    let fake = start_fake(FakeOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let url = fake.tls_url();
    let wrong_ca = fixture("client-ca.pem").display().to_string();
    let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let log = dir.path().join("wrong.log");
    let run = pusher_run(
        "apns",
        &brokers,
        &apns_args(&url, &wrong_ca),
        &[
            ("PUSHER_STATS_PROMETHEUS_LISTEN", metrics.to_string()),
            ("PUSHER_STATS_REPORTERS", "prometheus".into()),
        ],
        &log,
    );
    let health = unhealthy(metrics).await;
    assert!(
        health.contains("endpoint apns game") && health.contains("UnknownIssuer"),
        "{health}"
    );
    // Probes go on (after 1, 2, 4 s): still nothing sent, nothing committed.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(fake.stats().requests, 0);
    assert_eq!(
        sum(committed_offsets(
            &brokers,
            "pusher-apns",
            "push-game_apns",
            2
        )),
        0
    );
    stop(run, Duration::from_secs(15)).await;
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        text.matches("Endpoint failing").count(),
        1,
        "the cause is logged once:\n{text}"
    );
    assert!(text.contains("UnknownIssuer"), "{text}");
    assert!(
        !text.contains("gave_up") && !text.contains("given up"),
        "{text}"
    );

    // The right CA: every message delivered once and committed.
    let ca = fake.ca_file.display().to_string();
    let run = pusher_run(
        "apns",
        &brokers,
        &apns_args(&url, &ca),
        &[],
        &dir.path().join("right.log"),
    );
    wait_committed(&brokers, "pusher-apns", "push-game_apns", N).await;
    stop(run, Duration::from_secs(20)).await;
    let stats = fake.stats();
    assert_eq!((stats.requests, common::status_count(&stats, 200)), (N, N));
}

/// The endpoint is down (connection refused) for a while, then comes up on the same address:
/// the pusher resumes by itself; nothing given up, everything delivered, committed once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pusher_resumes_by_itself_when_the_endpoint_comes_back() {
    const N: u64 = 400;
    let kafka = TestKafka::start(&["push-game_apns"], 2).await;
    let brokers = kafka.bootstrap().to_string();
    produce_all(&brokers, "push-game_apns", &messages(Platform::Apns, N, 4)).await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let run = pusher_run(
        "apns",
        &brokers,
        &apns_args(&url, ""),
        &[
            ("PUSHER_STATS_PROMETHEUS_LISTEN", metrics.to_string()),
            ("PUSHER_STATS_REPORTERS", "prometheus".into()),
        ],
        &dir.path().join("run.log"),
    );
    wait_for(
        "/healthz to say the endpoint fails",
        Duration::from_secs(30),
        || matches!(http_get(metrics, "/healthz"), Some((503, b)) if b.contains("connect_error")),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        sum(committed_offsets(
            &brokers,
            "pusher-apns",
            "push-game_apns",
            2
        )),
        0
    );

    // The endpoint comes up where the pusher was told it is.
    let pem = std::fs::read_to_string(fixture("AuthKey_TESTKEY001.pub.pem")).unwrap();
    let mut config = pusher::mock::MockConfig {
        tls_listen: None,
        h2c_listen: Some(format!("127.0.0.1:{port}").parse().unwrap()),
        ..Default::default()
    };
    config.apns.jwt_keys = vec![pusher::mock::JwtKey::from_pem(KEY_ID, TEAM_ID, &pem).unwrap()];
    let fake = pusher::mock::MockServer::start(config).await.unwrap();
    wait_committed(&brokers, "pusher-apns", "push-game_apns", N).await;
    wait_for("/healthz ok again", Duration::from_secs(10), || {
        matches!(http_get(metrics, "/healthz"), Some((200, _)))
    })
    .await;
    stop(run, Duration::from_secs(20)).await;
    let stats = fake.stats().snapshot();
    assert_eq!((stats.requests, common::status_count(&stats, 200)), (N, N));
}

/// Production tokens sent to the sandbox (the default without `-p`) all answer
/// `BadDeviceToken`, as dead tokens do: taken at its word, the pusher deleted the fleet. Until
/// one push is delivered, a run of them pauses the pusher instead: a few tokens are judged,
/// then nothing more is sent or committed, and `/healthz` names the likely cause.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_environment_pauses_the_pusher_instead_of_deleting_every_token() {
    use pusher::push::token_rules::TokenRule;
    const N: u64 = 200;
    let kafka = TestKafka::start(&["push-game_apns"], 2).await;
    let brokers = kafka.bootstrap().to_string();
    // The fake answers BadDeviceToken to every one of these tokens.
    let refused: Vec<Vec<u8>> = (0..N)
        .map(|i| {
            let token = TokenRule::BadToken.apply(&format!("{i:064x}"));
            serde_json::json!({"DeviceToken": token, "Payload": {"aps": {"alert": "hi"}}})
                .to_string()
                .into_bytes()
        })
        .collect();
    produce_all(&brokers, "push-game_apns", &refused).await;
    let fake = start_fake(FakeOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let ca = fake.ca_file.display().to_string();
    let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let log = dir.path().join("sandbox.log");
    let run = pusher_run(
        "apns",
        &brokers,
        &apns_args(&fake.tls_url(), &ca),
        &[
            ("PUSHER_STATS_PROMETHEUS_LISTEN", metrics.to_string()),
            ("PUSHER_STATS_REPORTERS", "prometheus".into()),
            // Ten at a time, so that what is sent after the guard closes is countable.
            ("PUSHER_INFLIGHT", "10".into()),
        ],
        &log,
    );
    let health = unhealthy(metrics).await;
    assert!(health.contains("wrong APNs environment"), "{health}");
    // One probe at a time after that (1 s, 2 s): still refused, still paused.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let committed = sum(committed_offsets(
        &brokers,
        "pusher-apns",
        "push-game_apns",
        2,
    ));
    stop(run, Duration::from_secs(15)).await;
    let judged = u64::try_from(committed).unwrap();
    assert!(
        judged < 20,
        "at most the 19 refusals before the guard were finished: {judged} of {N}"
    );
    let requests = fake.stats().requests;
    assert!(
        requests < 40,
        "sent: 19 refusals, the 20th, what was in flight and the probes; not {requests}"
    );
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(text.matches("Endpoint failing").count(), 1, "{text}");
}

/// Certificate auth with a wrong `--topic`: APNs answers `BadTopic` to every message that
/// names no topic of its own. Taken as final rejections, they drained the backlog, committed.
/// Until one push with the configured topic is delivered, they pause the pusher instead:
/// nothing is committed, and `/healthz` names the topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_configured_topic_pauses_the_pusher_instead_of_rejecting_the_backlog() {
    const N: u64 = 100;
    let kafka = TestKafka::start(&["push-game_apns"], 2).await;
    let brokers = kafka.bootstrap().to_string();
    let untopiced: Vec<Vec<u8>> = (0..N)
        .map(|i| {
            serde_json::json!({"DeviceToken": format!("{i:064x}"), "Payload": {"aps": {"alert": "hi"}}})
                .to_string()
                .into_bytes()
        })
        .collect();
    produce_all(&brokers, "push-game_apns", &untopiced).await;
    let fake = start_fake(FakeOptions {
        profile: common::profile("errors: [{reason: BadTopic, rate: 1.0}]"),
        jwt: false,
        client_ca: true,
        ..FakeOptions::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let url = fake.tls_url();
    let ca = fake.ca_file.display().to_string();
    let certificate = fixture("client.p12").display().to_string();
    let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let run = pusher_run(
        "apns",
        &brokers,
        &[
            "--certificate",
            &certificate,
            "--certificate-password",
            "test",
            "--topic",
            "com.example.not-this-app",
            "--endpoint",
            &url,
            "--ca",
            &ca,
        ],
        &[
            ("PUSHER_STATS_PROMETHEUS_LISTEN", metrics.to_string()),
            ("PUSHER_STATS_REPORTERS", "prometheus".into()),
            ("PUSHER_INFLIGHT", "10".into()),
        ],
        &dir.path().join("topic.log"),
    );
    let health = unhealthy(metrics).await;
    assert!(
        health.contains("BadTopic for the configured topic"),
        "{health}"
    );
    // Probes after 1 s and 2 s: still refused, still paused, nothing ended.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let committed = sum(committed_offsets(
        &brokers,
        "pusher-apns",
        "push-game_apns",
        2,
    ));
    stop(run, Duration::from_secs(15)).await;
    assert_eq!(
        committed, 0,
        "no message was ended for the configuration's fault"
    );
    let requests = fake.stats().requests;
    assert!(
        requests > 0 && requests < N,
        "what was in flight and the probes: {requests}"
    );
}

/// PostgreSQL unreachable for the token deleter. Before, nothing said so while it lasted: no
/// `/healthz` problem, no metric (the counts were only logged at exit). Now `/healthz` names
/// the table while its DELETEs fail and is ok again once they commit, and `/metrics` counts
/// the deletions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_token_deletes_show_on_healthz_and_their_counts_on_metrics() {
    use pusher::push::token_rules::TokenRule;
    const N: u64 = 6;
    let app = format!("tok{}", std::process::id());
    let topic = format!("push-{app}_apns");
    let table = format!("{app}_apns");
    let (db, conn) = tokio_postgres::connect(
        &format!(
            "host=127.0.0.1 port={} user=postgres dbname=test",
            pg_proxy::PG_PORT
        ),
        tokio_postgres::NoTls,
    )
    .await
    .expect("PostgreSQL on 127.0.0.1:5432 (user postgres, database test)");
    tokio::spawn(conn);
    db.batch_execute(
        &include_str!("../fixtures/tokens.sql").replace("\"game_", &format!("\"{app}_")),
    )
    .await
    .unwrap();
    let tokens: Vec<String> = (0..N)
        .map(|i| TokenRule::Unregistered.apply(&format!("{i:064x}")))
        .collect();
    db.execute(
        &format!("INSERT INTO \"{table}\" (user_id, token) SELECT 'u', unnest($1::text[])"),
        &[&tokens],
    )
    .await
    .unwrap();
    let dead: Vec<Vec<u8>> = tokens
        .iter()
        .map(|token| {
            serde_json::json!({"DeviceToken": token, "Payload": {"aps": {"alert": "hi"}}})
                .to_string()
                .into_bytes()
        })
        .collect();
    let proxy = pg_proxy::PgProxy::start(false).await;
    let kafka = TestKafka::start(&[&topic], 2).await;
    let brokers = kafka.bootstrap().to_string();
    produce_all(&brokers, &topic, &dead).await;
    let fake = start_fake(FakeOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let ca = fake.ca_file.display().to_string();
    let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let run = pusher_run_app(
        "apns",
        &app,
        &brokers,
        &apns_args(&fake.tls_url(), &ca),
        &[
            ("PUSHER_STATS_PROMETHEUS_LISTEN", metrics.to_string()),
            ("PUSHER_STATS_REPORTERS", "prometheus".into()),
            ("PUSHER_INVALIDTOKEN_HANDLERS", "pg".into()),
            ("PUSHER_INVALIDTOKEN_PG_HOST", "127.0.0.1".into()),
            ("PUSHER_INVALIDTOKEN_PG_PORT", proxy.port.to_string()),
            ("PUSHER_INVALIDTOKEN_PG_USER", "postgres".into()),
            ("PUSHER_INVALIDTOKEN_PG_DATABASE", "test".into()),
        ],
        &dir.path().join("run.log"),
    );
    let component = format!("postgres tokens {table}");
    wait_for(
        "/healthz to name the table",
        Duration::from_secs(30),
        || matches!(http_get(metrics, "/healthz"), Some((503, b)) if b.contains(&component)),
    )
    .await;
    assert_eq!(
        sum(committed_offsets(&brokers, "pusher-apns", &topic, 2)),
        0
    );

    proxy.up();
    wait_committed(&brokers, "pusher-apns", &topic, N).await;
    wait_for("/healthz ok again", Duration::from_secs(10), || {
        matches!(http_get(metrics, "/healthz"), Some((200, _)))
    })
    .await;
    let (_, body) = http_get(metrics, "/metrics").unwrap();
    let deleted = body
        .lines()
        .filter(|l| l.starts_with("pusher_tokens_delete_total{"))
        .filter(|l| l.contains(&format!("game=\"{app}\"")) && l.contains("result=\"success\""))
        .find_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok());
    assert_eq!(deleted, Some(N as f64), "{body}");
    stop(run, Duration::from_secs(20)).await;
    let left = db
        .query(&format!("SELECT token FROM \"{table}\""), &[])
        .await
        .unwrap();
    assert!(left.is_empty(), "every dead token deleted");
    assert!(proxy.refused() > 0);
    db.batch_execute(&format!("DROP TABLE \"{app}_apns\", \"{app}_gcm\""))
        .await
        .unwrap();
}
