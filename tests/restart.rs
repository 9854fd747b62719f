//! Crash and restart: the real `pusher run apns` binary is killed with SIGKILL mid-stream and
//! started again. Every message's token reaches the fake at least once (nothing lost), and the
//! duplicates stay within what was in flight or finished-but-not-yet-committed at the kill.

use pusher::gen::{GenConfig, Generator};
use pusher::mock::kafka::KafkaMock;
use pusher::mock::{JwtKey, MockConfig, MockServer, Profile};
use pusher::push::Platform;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::collections::HashSet;
mod common;

use common::process::{sigterm, KillOnDrop};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const MESSAGES: u64 = 6000;
const IN_FLIGHT: u64 = 200;
const COMMIT_EVERY: Duration = Duration::from_millis(500);

fn spawn_pusher(app: &str, brokers: &str, endpoint: &str, ca: &std::path::Path) -> KillOnDrop {
    let child = Command::new(env!("CARGO_BIN_EXE_pusher"))
        .args(["run", "apns", "--app", app, "--brokers", brokers])
        .args([
            "--key-file",
            "fixtures/apns/AuthKey_TESTKEY001.p8",
            "--key-id",
            "TESTKEY001",
            "--team-id",
            "TEAM000001",
        ])
        .args(["--topic", "com.example.app", "--endpoint", endpoint, "--ca"])
        .arg(ca)
        .env("PUSHER_QUEUE_GROUP", format!("restart-{app}"))
        .env("PUSHER_QUEUE_OFFSETRESETSTRATEGY", "earliest")
        .env("PUSHER_INFLIGHT", IN_FLIGHT.to_string())
        .env("PUSHER_FEEDBACK_REPORTERS", "")
        .env("PUSHER_INVALIDTOKEN_HANDLERS", "")
        .env("PUSHER_STATS_REPORTERS", "")
        .env("PUSHER_STATS_PROMETHEUS_LISTEN", "")
        .env("PUSHER_LOG", "warn")
        .env("PUSHER_QUEUE_SESSIONTIMEOUT", "3000")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start pusher run");
    KillOnDrop(child)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_stream_then_restart_loses_nothing() {
    let app = format!("rs{}", std::process::id());
    let topic = format!("push-{app}_apns");
    let kafka = KafkaMock::start(1, std::slice::from_ref(&topic), 4).unwrap();
    let brokers = kafka.bootstrap().to_string();

    let key = std::fs::read_to_string("fixtures/apns/AuthKey_TESTKEY001.p8").unwrap();
    let mut config = MockConfig {
        record_tokens: 2 * MESSAGES as usize,
        ..MockConfig::default()
    };
    config.apns.jwt_keys = vec![JwtKey::from_pem("TESTKEY001", "TEAM000001", &key).unwrap()];
    // A little latency, so that the kill lands with work in flight.
    config.profile = Profile::from_yaml("slow", "latency: {dist: fixed, ms: 2}").unwrap();
    let fake = MockServer::start(config).await.unwrap();
    let ca = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(ca.path(), fake.ca_pem()).unwrap();
    let endpoint = format!("https://{}", fake.tls_addr().unwrap());

    let mut gen = GenConfig::new(Platform::Apns);
    gen.count = MESSAGES;
    gen.seed = 11;
    gen.app = app.clone();
    let mut tokens = HashSet::new();
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .unwrap();
    let messages: Vec<_> = Generator::new(gen).unwrap().collect();
    // All in flight at once: one by one, each would wait for its own linger and ack.
    let sends = messages.iter().enumerate().map(|(i, m)| {
        tokens.insert(m.token.clone());
        let key = i.to_string();
        let producer = &producer;
        let topic = &topic;
        async move {
            producer
                .send(
                    FutureRecord::to(topic).key(&key).payload(&m.bytes),
                    Duration::from_secs(10),
                )
                .await
                .unwrap();
        }
    });
    futures_util::future::join_all(sends).await;
    assert_eq!(tokens.len() as u64, MESSAGES);

    // First run: SIGKILL once a good part is done (no graceful anything).
    let mut first = spawn_pusher(&app, &brokers, &endpoint, ca.path());
    let answered = || fake.stats().snapshot().responses;
    let deadline = Instant::now() + Duration::from_secs(60);
    while answered() < MESSAGES / 6 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The rate in full flow, to bound what one commit interval can leave uncommitted.
    let (t1, r1) = (Instant::now(), answered());
    while answered() < MESSAGES / 3 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let rate = (answered() - r1) as f64 / t1.elapsed().as_secs_f64();
    first.kill().unwrap(); // SIGKILL
    first.wait().unwrap();
    let at_kill = answered();
    assert!(
        at_kill < MESSAGES,
        "the kill came too late to test anything"
    );

    let t_kill = Instant::now();
    // Second run: picks up from the committed offsets and finishes.
    let mut second = spawn_pusher(&app, &brokers, &endpoint, ca.path());
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let delivered = fake.stats().delivered_tokens();
        if tokens.iter().all(|t| delivered.contains_key(t)) || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("second run done after {:?}", t_kill.elapsed());
    // Graceful stop: exit 0.
    sigterm(&second);
    let status = second.wait().unwrap();
    println!("stopped after {:?}", t_kill.elapsed());
    assert!(status.success(), "pusher exited with {status}");

    let delivered = fake.stats().delivered_tokens();
    let missing: Vec<_> = tokens
        .iter()
        .filter(|t| !delivered.contains_key(*t))
        .take(5)
        .collect();
    assert!(missing.is_empty(), "lost messages, e.g. {missing:?}");
    let total: u64 = delivered.values().sum();
    let duplicates = total - MESSAGES;
    // What can be sent twice: the messages in flight at the kill, and those finished since
    // the last commit (at most one commit interval's worth), with slack for the rate estimate.
    let bound = IN_FLIGHT + (rate * COMMIT_EVERY.as_secs_f64() * 2.0) as u64;
    println!("killed at {at_kill} answers ({rate:.0}/s); duplicates {duplicates}, bound {bound}");
    assert!(
        duplicates <= bound,
        "{duplicates} duplicates > bound {bound}"
    );
    fake.shutdown().await;
}
