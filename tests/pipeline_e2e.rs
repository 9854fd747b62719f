//! End to end through real parts: Kafka over TCP (librdkafka's mock cluster, or a real broker,
//! Tansu, with `PUSHER_TEST_KAFKA=tansu`: tests/common/kafka.rs), the pipeline, the fake APNs /
//! FCM servers over TLS, the machine's PostgreSQL, and feedback back into Kafka.
//! Every message is accounted for: produced = consumed = outcomes = committed, every valid
//! token reaches the fake, every invalid one is deleted, every failure has one feedback record.

mod fcm_support;
#[path = "common/feedback.rs"]
mod feedback;
#[path = "common/kafka.rs"]
mod kafka;
#[path = "common/pg_proxy.rs"]
mod pg_proxy;

use kafka::TestKafka;

/// Every feedback record of the app, read back; and that no more arrive.
fn feedback_records(brokers: &str, app: &str, platform: Platform, expected: u64) -> Vec<Value> {
    let topic = format!("push-{app}-{platform}-feedbacks");
    feedback::read_feedback_json(brokers, &topic, expected, Duration::from_secs(30))
}
use pusher::gen::{GenConfig, Generator};
use pusher::mock::{JwtKey, MockConfig, MockServer};
use pusher::pipeline::feedback::FeedbackProducer;
use pusher::pipeline::run::{run, AppSender, Observer, OutcomeEvent, Outputs, RunSpec, RunSummary};
use pusher::pipeline::tokens::{DeleterSettings, TokenDeleter, TokenStats};
use pusher::push::token_rules::TokenRule;
use pusher::push::Platform;
use pusher::sender::apns::{ApnsAuth, ApnsConfig, ApnsSender, TokenAuth};
use pusher::sender::endpoint::Endpoint;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const KEY_ID: &str = "TESTKEY001";
const TEAM_ID: &str = "TEAM000001";

#[derive(Default)]
struct Count(AtomicU64);
impl Observer for Count {
    fn on_outcome(&self, _event: &OutcomeEvent<'_>) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

async fn pg() -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(
        "host=127.0.0.1 port=5432 user=postgres dbname=test",
        tokio_postgres::NoTls,
    )
    .await
    .expect("PostgreSQL on 127.0.0.1:5432 (ci/setup.sh starts it)");
    tokio::spawn(conn);
    client
}

/// A pool to the machine's PostgreSQL, or to a proxy in front of it on `port`.
fn pg_pool(port: u16) -> deadpool_postgres::Pool {
    let mut cfg = deadpool_postgres::Config::new();
    cfg.host = Some("127.0.0.1".into());
    cfg.port = Some(port);
    cfg.connect_timeout = Some(Duration::from_secs(2));
    cfg.user = Some("postgres".into());
    cfg.dbname = Some("test".into());
    cfg.create_pool(
        Some(deadpool_postgres::Runtime::Tokio1),
        tokio_postgres::NoTls,
    )
    .unwrap()
}

/// Generated messages (valid, invalid tokens, fail-once tokens) and which must fail.
struct Batch {
    messages: Vec<Vec<u8>>,
    valid: u64,
    invalid_tokens: Vec<String>,
}

fn generate(platform: Platform, app: &str, count: u64, seed: u64) -> Batch {
    let mut config = GenConfig::new(platform);
    config.count = count;
    config.seed = seed;
    config.invalid_ratio = 0.1;
    config.retry_ratio = 0.04;
    config.app = app.to_string();
    let mut batch = Batch {
        messages: Vec::new(),
        valid: 0,
        invalid_tokens: Vec::new(),
    };
    for m in Generator::new(config).unwrap() {
        match m.rule {
            Some(r) if r.is_token_invalid() => batch.invalid_tokens.push(m.token.clone()),
            _ => batch.valid += 1,
        }
        batch.messages.push(m.bytes);
    }
    batch
}

/// A fresh token table holding `tokens`: they must all be gone at the end.
async fn token_table(db: &tokio_postgres::Client, table: &str, tokens: &[String]) {
    db.batch_execute(&format!(
        "DROP TABLE IF EXISTS \"{table}\"; CREATE TABLE \"{table}\" (id serial PRIMARY KEY, token text)"
    ))
    .await
    .unwrap();
    for t in tokens {
        db.execute(
            &format!("INSERT INTO \"{table}\" (token) VALUES ($1)"),
            &[t],
        )
        .await
        .unwrap();
    }
}

async fn rows_left_then_drop(db: &tokio_postgres::Client, table: &str) -> i64 {
    let left = db
        .query_one(&format!("SELECT count(*) FROM \"{table}\""), &[])
        .await
        .unwrap()
        .get(0);
    db.batch_execute(&format!("DROP TABLE \"{table}\""))
        .await
        .unwrap();
    left
}

async fn produce(brokers: &str, topic: &str, messages: &[Vec<u8>]) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    // All in flight at once: one by one, each would wait for its own linger and ack.
    let sends = messages.iter().enumerate().map(|(i, m)| {
        let producer = &producer;
        async move {
            let key = i.to_string();
            producer
                .send(
                    FutureRecord::to(topic).key(&key).payload(m),
                    Duration::from_secs(10),
                )
                .await
                .unwrap();
        }
    });
    futures_util::future::join_all(sends).await;
}

/// A pipeline running with feedback and token deletion, and a count of its final outcomes.
struct Running {
    seen: Arc<Count>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Result<RunSummary, pusher::pipeline::run::PipelineError>>,
    deleter: TokenDeleter,
}

async fn start_pipeline(
    platform: Platform,
    app: &str,
    brokers: &str,
    sender: AppSender,
    pg_port: u16,
) -> Running {
    let apps = HashMap::from([(app.to_string(), sender)]);
    let feedback =
        Arc::new(FeedbackProducer::new(brokers, "push-{app}-{platform}-feedbacks").unwrap());
    let settings = DeleterSettings {
        flush_interval: Duration::from_millis(50),
        retry_initial: Duration::from_millis(20),
        retry_max: Duration::from_millis(200),
        ..Default::default()
    };
    let deleter = TokenDeleter::spawn(pg_pool(pg_port), settings);
    let seen = Arc::new(Count::default());
    let outputs = Outputs {
        feedback: Some(feedback),
        tokens: Some(deleter.queue()),
        observer: Some(seen.clone()),
    };
    let topic = format!("^push-{app}_{platform}");
    let mut spec = RunSpec::new(
        platform,
        brokers.to_string(),
        format!("group-{app}"),
        vec![topic],
    );
    spec.offset_reset = "earliest".into();
    spec.max_in_flight = 200;
    spec.commit_interval = Duration::from_millis(100);
    let stop = CancellationToken::new();
    let task = tokio::spawn(run(spec, apps, outputs, stop.clone()));
    Running {
        seen,
        stop,
        task,
        deleter,
    }
}

impl Running {
    fn outcomes(&self) -> u64 {
        self.seen.0.load(Ordering::Relaxed)
    }

    /// Waits until `n` messages have their final outcome (or `limit` passes).
    async fn wait_outcomes(&self, n: u64, limit: Duration) {
        let deadline = Instant::now() + limit;
        while self.outcomes() < n && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops gracefully: the pipeline finishes what is in flight and commits it before it
    /// returns (no sleep needed for "the last commit").
    async fn stop(self) -> (RunSummary, TokenStats) {
        self.stop.cancel();
        let summary = self.task.await.unwrap().unwrap();
        let token_stats = self.deleter.shutdown(Duration::from_secs(10)).await;
        (summary, token_stats)
    }
}

/// Runs the pipeline until every produced message has an outcome, then stops it gracefully.
async fn run_pipeline(
    platform: Platform,
    app: &str,
    brokers: &str,
    sender: AppSender,
    produced: u64,
) -> (RunSummary, TokenStats) {
    let running = start_pipeline(platform, app, brokers, sender, pg_proxy::PG_PORT).await;
    running
        .wait_outcomes(produced, Duration::from_secs(60))
        .await;
    running.stop().await
}

/// Conservation: produced = consumed = finished = outcomes = committed, nothing abandoned.
fn assert_conserved(summary: &RunSummary, produced: u64) {
    let outcomes: u64 = summary.outcomes.values().sum();
    assert_eq!(summary.consumed, produced, "{summary:?}");
    assert_eq!(outcomes, produced, "{summary:?}");
    assert_eq!(summary.finished, produced);
    assert_eq!(
        summary.committed_total(),
        produced as i64,
        "committed offsets {:?}",
        summary.committed
    );
    assert_eq!(summary.abandoned, 0);
}

fn outcomes(
    delivered: u64,
    token_invalid: u64,
    malformed: u64,
    expired: u64,
) -> BTreeMap<String, u64> {
    BTreeMap::from([
        ("delivered".to_string(), delivered),
        ("token_invalid".to_string(), token_invalid),
        ("malformed".to_string(), malformed),
        ("expired".to_string(), expired),
    ])
}

/// The fake APNs server (checking our JWTs) and a sender pointed at it; keep the CA file.
async fn apns_fake() -> (MockServer, AppSender, tempfile::NamedTempFile) {
    let key_pem = std::fs::read_to_string("fixtures/apns/AuthKey_TESTKEY001.p8").unwrap();
    let mut mock_config = MockConfig::default();
    mock_config.apns.jwt_keys = vec![JwtKey::from_pem(KEY_ID, TEAM_ID, &key_pem).unwrap()];
    let fake = MockServer::start(mock_config).await.unwrap();
    let ca = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(ca.path(), fake.ca_pem()).unwrap();
    let mut apns = ApnsConfig::new(
        Endpoint::Custom(format!("https://{}", fake.tls_addr().unwrap())),
        ApnsAuth::Token(TokenAuth::new(key_pem.into_bytes(), KEY_ID, TEAM_ID)),
    );
    apns.ca_file = Some(ca.path().to_path_buf());
    apns.default_topic = Some("com.example.app".into());
    apns.retry.base = Duration::from_millis(10);
    let sender = AppSender::apns(ApnsSender::new(apns).unwrap());
    (fake, sender, ca)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apns_end_to_end_counts_add_up() {
    let app = format!("e2e{}", std::process::id());
    let topic = format!("push-{app}_apns");
    let kafka = TestKafka::start(&[&topic, &format!("push-{app}-apns-feedbacks")], 4).await;
    let brokers = kafka.bootstrap().to_string();

    let (fake, sender, _ca) = apns_fake().await;

    let Batch {
        mut messages,
        valid,
        invalid_tokens,
    } = generate(Platform::Apns, &app, 1500, 7);
    // Hostile input: each is counted, gets feedback, and its offset is committed.
    messages.extend([
        b"{not json".to_vec(),
        vec![0xff, 0xfe, 0x00],
        br#"{"Payload":{"aps":{"alert":"no token"}}}"#.to_vec(),
        br#"{"DeviceToken":"abcdef","Payload":{"aps":{}},"push_expiry":1000}"#.to_vec(),
        br#"{"DeviceToken":12345,"Payload":{"aps":{"alert":"wrong type"}}}"#.to_vec(),
        format!(
            r#"{{"DeviceToken":"abcdef","Payload":{{"aps":{{"alert":"{}"}}}}}}"#,
            "x".repeat(5000)
        )
        .into_bytes(),
    ]);
    let (malformed, expired) = (5, 1);
    let produced = messages.len() as u64;

    let table = format!("{app}_apns");
    let db = pg().await;
    token_table(&db, &table, &invalid_tokens).await;
    produce(&brokers, &topic, &messages).await;

    let (summary, token_stats) =
        run_pipeline(Platform::Apns, &app, &brokers, sender, produced).await;

    assert_conserved(&summary, produced);
    // Every valid token reached the fake and was delivered (fail-once tokens after a retry).
    assert_eq!(
        summary.outcomes,
        outcomes(valid, invalid_tokens.len() as u64, malformed, expired)
    );
    let stats = fake.stats().snapshot();
    assert_eq!(
        stats.by_status.get(&200).copied().unwrap_or(0),
        valid,
        "{stats:?}"
    );

    // Every invalid token was deleted from PostgreSQL.
    assert_eq!(
        token_stats.success,
        invalid_tokens.len() as u64,
        "{token_stats:?}"
    );
    assert_eq!(rows_left_then_drop(&db, &table).await, 0);

    // Exactly one feedback record per failure; the invalid tokens are marked for deletion.
    let records = feedback_records(&brokers, &app, Platform::Apns, produced - valid);
    assert_eq!(records.len() as u64, produced - valid);
    let marked: HashSet<&str> = records
        .iter()
        .filter(|v| v["metadata"]["deleteToken"] == Value::Bool(true))
        .filter_map(|v| v["DeviceToken"].as_str())
        .collect();
    assert_eq!(marked.len(), invalid_tokens.len());
    assert!(invalid_tokens.iter().all(|t| marked.contains(t.as_str())));
    assert!(invalid_tokens.iter().all(|t| TokenRule::of(t).is_some()));
    // A rejected push's feedback carries the message's own metadata, which was also merged
    // into the payload it sent (`Payload.M`).
    let rejected: Vec<&Value> = records
        .iter()
        .filter(|v| v["metadata"]["deleteToken"] == Value::Bool(true))
        .collect();
    assert_eq!(rejected.len(), invalid_tokens.len());
    assert!(rejected.iter().all(|v| v["metadata"]["jobId"].is_string()
        && v["Notification"]["M"]["jobId"] == v["metadata"]["jobId"]));
    // A message refused for its structure still names the token it carried.
    let too_large = records
        .iter()
        .find(|v| v["Reason"] == "payload_too_large")
        .expect("feedback for the oversize payload");
    assert_eq!(too_large["DeviceToken"], "abcdef", "{too_large}");
    assert_eq!(too_large["Err"]["Key"], "malformed-message");
    fake.shutdown().await;
}

/// Producers compress: a batch in any codec they use is read and pushed (librdkafka built
/// without zstd stopped a partition at the first zstd batch, for good, with `/healthz` ok).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_compression_codec_a_producer_uses_is_pushed() {
    let app = format!("e2ezip{}", std::process::id());
    let topic = format!("push-{app}_apns");
    let kafka = TestKafka::start(&[&topic, &format!("push-{app}-apns-feedbacks")], 2).await;
    let brokers = kafka.bootstrap().to_string();
    let (fake, sender, _ca) = apns_fake().await;

    // Tansu 0.6.0 cannot read snappy batches back itself (its own limit, not the pusher's).
    let codecs: &[&str] = if kafka.is_real() {
        &["none", "gzip", "lz4", "zstd"]
    } else {
        &["none", "gzip", "snappy", "lz4", "zstd"]
    };
    let mut config = GenConfig::new(Platform::Apns);
    config.count = 40 * codecs.len() as u64;
    config.seed = 11;
    config.app = app.clone();
    let messages: Vec<Vec<u8>> = Generator::new(config).unwrap().map(|m| m.bytes).collect();
    for (codec, part) in codecs.iter().zip(messages.chunks(40)) {
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("compression.codec", *codec)
            // One batch per codec, so each is read as a compressed message set.
            .set("linger.ms", "50")
            .create()
            .unwrap();
        let sends = part.iter().enumerate().map(|(i, m)| {
            let (producer, topic) = (&producer, &topic);
            async move {
                let key = format!("{codec}-{i}");
                producer
                    .send(
                        FutureRecord::to(topic).key(&key).payload(m),
                        Duration::from_secs(10),
                    )
                    .await
                    .unwrap_or_else(|(e, _)| panic!("{codec}: {e}"));
            }
        });
        futures_util::future::join_all(sends).await;
    }
    let produced = messages.len() as u64;
    let (summary, _) = run_pipeline(Platform::Apns, &app, &brokers, sender, produced).await;
    assert_conserved(&summary, produced);
    assert_eq!(
        summary.outcomes.get("delivered").copied(),
        Some(produced),
        "{summary:?}"
    );
    assert_eq!(fake.stats().snapshot().requests, produced);
    fake.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcm_end_to_end_counts_add_up() {
    use fcm_support::{start_fake, v1_config, FakeOptions};
    let app = format!("e2egcm{}", std::process::id());
    let topic = format!("push-{app}_gcm");
    let kafka = TestKafka::start(&[&topic, &format!("push-{app}-gcm-feedbacks")], 4).await;
    let brokers = kafka.bootstrap().to_string();
    let fake = start_fake(FakeOptions::default()).await;

    let Batch {
        mut messages,
        valid,
        invalid_tokens,
    } = generate(Platform::Gcm, &app, 1000, 8);
    messages.extend([
        b"[1,2,3]".to_vec(),
        br#"{"to":"abc","data":"not an object"}"#.to_vec(),
        br#"{"to":"abc","notification":{"title":"late"},"push_expiry":1000}"#.to_vec(),
    ]);
    let (malformed, expired) = (2, 1);
    let produced = messages.len() as u64;
    let refused_token = "abc";

    let table = format!("{app}_gcm");
    let db = pg().await;
    token_table(&db, &table, &invalid_tokens).await;
    produce(&brokers, &topic, &messages).await;

    let sender = pusher::sender::fcm::FcmSender::new(v1_config(&fake, &fake.tls_url())).unwrap();
    let (summary, token_stats) = run_pipeline(
        Platform::Gcm,
        &app,
        &brokers,
        AppSender::gcm(sender),
        produced,
    )
    .await;

    assert_conserved(&summary, produced);
    assert_eq!(
        summary.outcomes,
        outcomes(valid, invalid_tokens.len() as u64, malformed, expired)
    );
    // Every valid message answered 200, plus the one OAuth token the sender fetched.
    assert_eq!(
        fake.stats().by_status.get(&200).copied().unwrap_or(0),
        valid + 1
    );
    assert_eq!(
        token_stats.success,
        invalid_tokens.len() as u64,
        "{token_stats:?}"
    );
    assert_eq!(rows_left_then_drop(&db, &table).await, 0);

    // One GCM feedback record per failure, in the seed's format.
    let records = feedback_records(&brokers, &app, Platform::Gcm, produced - valid);
    assert_eq!(records.len() as u64, produced - valid);
    assert!(
        records
            .iter()
            .all(|r| r["error"].is_string() && r.get("from").is_some()),
        "{:?}",
        &records[..2]
    );
    // The message refused for its structure (`data` not an object) names its token.
    let refused: Vec<&Value> = records
        .iter()
        .filter(|r| r["error_description"] == "wrong_type")
        .collect();
    assert_eq!(refused.len(), 2, "{refused:?}");
    assert!(
        refused.iter().any(|r| r["from"] == refused_token),
        "{refused:?}"
    );
}

/// PostgreSQL goes away in the middle of a run (a proxy in front of it is cut, live
/// connections included) and comes back: pushes go on meanwhile, the messages whose token
/// awaits deletion stay unfinished (so uncommitted: a crash would redo them), and once
/// PostgreSQL is back every token is deleted and the counts add up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_mid_run_pushes_go_on_and_no_deletion_is_lost() {
    let app = format!("e2epg{}", std::process::id());
    let topic = format!("push-{app}_apns");
    let kafka = TestKafka::start(&[&topic, &format!("push-{app}-apns-feedbacks")], 4).await;
    let brokers = kafka.bootstrap().to_string();
    let (fake, sender, _ca) = apns_fake().await;

    // Two halves: the first with PostgreSQL up, the second produced after it is cut.
    let first = generate(Platform::Apns, &app, 600, 21);
    let second = generate(Platform::Apns, &app, 600, 22);
    let produced = (first.messages.len() + second.messages.len()) as u64;
    let invalid: Vec<String> = first
        .invalid_tokens
        .iter()
        .chain(&second.invalid_tokens)
        .cloned()
        .collect();
    assert!(!second.invalid_tokens.is_empty());
    let table = format!("{app}_apns");
    let db = pg().await;
    token_table(&db, &table, &invalid).await;

    let proxy = pg_proxy::PgProxy::start(true).await;
    let running = start_pipeline(Platform::Apns, &app, &brokers, sender, proxy.port).await;
    produce(&brokers, &topic, &first.messages).await;
    let n1 = first.messages.len() as u64;
    running.wait_outcomes(n1, Duration::from_secs(60)).await;
    assert_eq!(running.outcomes(), n1, "first half done with PostgreSQL up");
    let deleted_before = running.deleter.stats().success;
    assert_eq!(deleted_before, first.invalid_tokens.len() as u64);

    proxy.down();
    produce(&brokers, &topic, &second.messages).await;
    // Pushes go on: every valid message of both halves reaches the fake...
    let valid = first.valid + second.valid;
    let deadline = Instant::now() + Duration::from_secs(60);
    let delivered = || {
        fake.stats()
            .snapshot()
            .by_status
            .get(&200)
            .copied()
            .unwrap_or(0)
    };
    while delivered() < valid && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        delivered(),
        valid,
        "pushes stopped while PostgreSQL was down"
    );
    // ...and every message but those whose token awaits deletion has its outcome.
    let waiting = second.invalid_tokens.len() as u64;
    running
        .wait_outcomes(produced - waiting, Duration::from_secs(30))
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(running.outcomes(), produced - waiting);
    let stats = running.deleter.stats();
    assert!(stats.error > 0, "the outage was not felt: {stats:?}");
    assert_eq!(
        (stats.success, stats.dropped),
        (deleted_before, 0),
        "{stats:?}"
    );
    let left: i64 = db
        .query_one(&format!("SELECT count(*) FROM \"{table}\""), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        left as u64, waiting,
        "tokens deleted while PostgreSQL was down?"
    );

    proxy.up();
    running
        .wait_outcomes(produced, Duration::from_secs(30))
        .await;
    let (summary, token_stats) = running.stop().await;
    assert_conserved(&summary, produced);
    assert_eq!(
        summary.outcomes,
        BTreeMap::from([
            ("delivered".to_string(), valid),
            ("token_invalid".to_string(), invalid.len() as u64),
        ])
    );
    assert_eq!(
        (token_stats.success, token_stats.dropped),
        (invalid.len() as u64, 0),
        "{token_stats:?}"
    );
    assert_eq!(rows_left_then_drop(&db, &table).await, 0);
    assert!(proxy.refused() > 0, "the proxy never refused a connection");
    let records = feedback_records(&brokers, &app, Platform::Apns, produced - valid);
    assert_eq!(records.len() as u64, produced - valid);
    fake.shutdown().await;
}
