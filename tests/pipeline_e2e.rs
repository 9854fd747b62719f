//! End to end through real parts: Kafka over TCP (librdkafka's mock cluster), the pipeline,
//! the fake APNs server over TLS, the machine's PostgreSQL, and feedback back into Kafka.
//! Every message is accounted for: produced = consumed = outcomes = committed, every valid
//! token reaches the fake, every invalid one is deleted, every failure has one feedback record.

use pusher::gen::{GenConfig, Generator};
use pusher::mock::kafka::KafkaMock;
use pusher::mock::{JwtKey, MockConfig, MockServer};
use pusher::pipeline::feedback::FeedbackProducer;
use pusher::pipeline::run::{run, AppSender, Observer, OutcomeEvent, Outputs, RunSpec};
use pusher::pipeline::tokens::{DeleterSettings, TokenDeleter};
use pusher::push::token_rules::TokenRule;
use pusher::push::Platform;
use pusher::sender::apns::{ApnsAuth, ApnsConfig, ApnsSender, TokenAuth};
use pusher::sender::endpoint::Endpoint;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::Message;
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

fn pg_pool() -> deadpool_postgres::Pool {
    let mut cfg = deadpool_postgres::Config::new();
    cfg.host = Some("127.0.0.1".into());
    cfg.port = Some(5432);
    cfg.user = Some("postgres".into());
    cfg.dbname = Some("test".into());
    cfg.create_pool(
        Some(deadpool_postgres::Runtime::Tokio1),
        tokio_postgres::NoTls,
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apns_end_to_end_counts_add_up() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let app = format!("e2e{}", std::process::id());
    let topic = format!("push-{app}_apns");
    let kafka = KafkaMock::start(1, std::slice::from_ref(&topic), 4).unwrap();
    let brokers = kafka.bootstrap().to_string();

    // The fake APNs server checks our JWTs.
    let key_pem = std::fs::read_to_string("fixtures/apns/AuthKey_TESTKEY001.p8").unwrap();
    let mut mock_config = MockConfig::default();
    mock_config.apns.jwt_keys = vec![JwtKey::from_pem(KEY_ID, TEAM_ID, &key_pem).unwrap()];
    let fake = MockServer::start(mock_config).await.unwrap();
    let ca = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(ca.path(), fake.ca_pem()).unwrap();

    // Messages: generated (valid, invalid tokens, fail-once tokens) plus hostile ones.
    let mut gen_config = GenConfig::new(Platform::Apns);
    gen_config.count = 1500;
    gen_config.seed = 7;
    gen_config.invalid_ratio = 0.1;
    gen_config.retry_ratio = 0.04;
    gen_config.app = app.clone();
    let mut generator = Generator::new(gen_config).unwrap();
    let mut messages: Vec<Vec<u8>> = Vec::new();
    let mut valid = 0u64;
    let mut invalid_tokens = Vec::new();
    let mut buf = Vec::new();
    while let Some(rule) = generator.write_next(&mut buf) {
        match rule {
            Some(r) if r.is_token_invalid() => {
                invalid_tokens.push(generator.last_token().to_string())
            }
            _ => valid += 1,
        }
        messages.push(std::mem::take(&mut buf));
    }
    let hostile: Vec<Vec<u8>> = vec![
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
    ];
    let malformed = 5u64;
    let expired = 1u64;
    messages.extend(hostile);
    let produced = messages.len() as u64;

    // The invalid tokens are in the app's token table; they must be gone at the end.
    let table = format!("{app}_apns");
    let db = pg().await;
    db.batch_execute(&format!("DROP TABLE IF EXISTS \"{table}\"; CREATE TABLE \"{table}\" (id serial PRIMARY KEY, token text)"))
        .await
        .unwrap();
    for t in &invalid_tokens {
        db.execute(
            &format!("INSERT INTO \"{table}\" (token) VALUES ($1)"),
            &[t],
        )
        .await
        .unwrap();
    }

    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .unwrap();
    // All in flight at once: one by one, each would wait for its own linger and ack.
    let sends = messages.iter().enumerate().map(|(i, m)| {
        let (producer, topic) = (&producer, &topic);
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

    // The pipeline.
    let mut apns = ApnsConfig::new(
        Endpoint::Custom(format!("https://{}", fake.tls_addr().unwrap())),
        ApnsAuth::Token(TokenAuth::new(key_pem.into_bytes(), KEY_ID, TEAM_ID)),
    );
    apns.ca_file = Some(ca.path().to_path_buf());
    apns.default_topic = Some("com.example.app".into());
    apns.retry.base = Duration::from_millis(10);
    let sender = ApnsSender::new(apns).unwrap();
    let apps = HashMap::from([(app.clone(), AppSender::Apns(sender))]);
    let feedback =
        Arc::new(FeedbackProducer::new(&brokers, "push-{app}-{platform}-feedbacks").unwrap());
    let deleter = TokenDeleter::spawn(
        pg_pool(),
        DeleterSettings {
            flush_interval: Duration::from_millis(50),
            ..Default::default()
        },
    );
    let seen = Arc::new(Count::default());
    let outputs = Outputs {
        feedback: Some(feedback.clone()),
        tokens: Some(deleter.queue()),
        observer: Some(seen.clone()),
    };
    let mut spec = RunSpec::new(
        Platform::Apns,
        brokers.clone(),
        format!("group-{app}"),
        vec![format!("^push-{app}_apns")],
    );
    spec.offset_reset = "earliest".into();
    spec.max_in_flight = 200;
    spec.commit_interval = Duration::from_millis(100);
    let stop = CancellationToken::new();
    let pipeline = tokio::spawn(run(spec, apps, outputs, stop.clone()));

    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.0.load(Ordering::Relaxed) < produced && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Let the last commit go out, then stop gracefully.
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.cancel();
    let summary = pipeline.await.unwrap().unwrap();
    let token_stats = deleter.shutdown(Duration::from_secs(10)).await;

    // Conservation: produced = consumed = outcomes = committed.
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

    // Every valid token reached the fake and was delivered (fail-once tokens after a retry).
    let want = BTreeMap::from([
        ("delivered".to_string(), valid),
        ("token_invalid".to_string(), invalid_tokens.len() as u64),
        ("malformed".to_string(), malformed),
        ("expired".to_string(), expired),
    ]);
    assert_eq!(summary.outcomes, want);
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
    let left: i64 = db
        .query_one(&format!("SELECT count(*) FROM \"{table}\""), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0);
    db.batch_execute(&format!("DROP TABLE \"{table}\""))
        .await
        .unwrap();

    // Exactly one feedback record per failure.
    let failures = produced - valid;
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", format!("fb-{app}"))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer
        .subscribe(&[&format!("push-{app}-apns-feedbacks")])
        .unwrap();
    let mut records = 0u64;
    let mut deleted_in_feedback = HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while records < failures && Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            records += 1;
            let v: serde_json::Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
            if v["metadata"]["deleteToken"] == serde_json::Value::Bool(true) {
                deleted_in_feedback.insert(v["DeviceToken"].as_str().unwrap().to_string());
            }
        }
    }
    // Nothing more arrives.
    assert!(consumer.poll(Duration::from_millis(500)).is_none());
    assert_eq!(records, failures);
    assert_eq!(deleted_in_feedback.len(), invalid_tokens.len());
    assert!(invalid_tokens
        .iter()
        .all(|t| deleted_in_feedback.contains(t)));
    assert!(invalid_tokens.iter().all(|t| TokenRule::of(t).is_some()));
    fake.shutdown().await;
}

mod fcm_support;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcm_end_to_end_counts_add_up() {
    use fcm_support::{start_fake, v1_config, FakeOptions};
    let app = format!("e2egcm{}", std::process::id());
    let topic = format!("push-{app}_gcm");
    let kafka = KafkaMock::start(1, std::slice::from_ref(&topic), 4).unwrap();
    let brokers = kafka.bootstrap().to_string();
    let fake = start_fake(FakeOptions::default()).await;

    let mut gen_config = GenConfig::new(Platform::Gcm);
    gen_config.count = 1000;
    gen_config.seed = 8;
    gen_config.invalid_ratio = 0.1;
    gen_config.retry_ratio = 0.04;
    gen_config.app = app.clone();
    let mut valid = 0u64;
    let mut invalid_tokens = Vec::new();
    let mut messages: Vec<Vec<u8>> = Vec::new();
    for m in Generator::new(gen_config).unwrap() {
        match m.rule {
            Some(r) if r.is_token_invalid() => invalid_tokens.push(m.token.clone()),
            _ => valid += 1,
        }
        messages.push(m.bytes);
    }
    messages.push(b"[1,2,3]".to_vec());
    messages.push(br#"{"to":"abc","data":"not an object"}"#.to_vec());
    messages.push(br#"{"to":"abc","notification":{"title":"late"},"push_expiry":1000}"#.to_vec());
    let (malformed, expired) = (2u64, 1u64);
    let produced = messages.len() as u64;

    let table = format!("{app}_gcm");
    let db = pg().await;
    db.batch_execute(&format!("DROP TABLE IF EXISTS \"{table}\"; CREATE TABLE \"{table}\" (id serial PRIMARY KEY, token text)")).await.unwrap();
    for t in &invalid_tokens {
        db.execute(
            &format!("INSERT INTO \"{table}\" (token) VALUES ($1)"),
            &[t],
        )
        .await
        .unwrap();
    }
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .unwrap();
    let sends = messages.iter().enumerate().map(|(i, m)| {
        let (producer, topic) = (&producer, &topic);
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

    let sender = pusher::sender::fcm::FcmSender::new(v1_config(&fake, &fake.tls_url())).unwrap();
    let apps = HashMap::from([(app.clone(), AppSender::Gcm(sender))]);
    let feedback =
        Arc::new(FeedbackProducer::new(&brokers, "push-{app}-{platform}-feedbacks").unwrap());
    let deleter = TokenDeleter::spawn(
        pg_pool(),
        DeleterSettings {
            flush_interval: Duration::from_millis(50),
            ..Default::default()
        },
    );
    let seen = Arc::new(Count::default());
    let outputs = Outputs {
        feedback: Some(feedback),
        tokens: Some(deleter.queue()),
        observer: Some(seen.clone()),
    };
    let mut spec = RunSpec::new(
        Platform::Gcm,
        brokers.clone(),
        format!("group-{app}"),
        vec![topic.clone()],
    );
    spec.offset_reset = "earliest".into();
    spec.commit_interval = Duration::from_millis(100);
    let stop = CancellationToken::new();
    let pipeline = tokio::spawn(run(spec, apps, outputs, stop.clone()));
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.0.load(Ordering::Relaxed) < produced && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.cancel();
    let summary = pipeline.await.unwrap().unwrap();
    let token_stats = deleter.shutdown(Duration::from_secs(10)).await;

    assert_eq!(summary.consumed, produced, "{summary:?}");
    assert_eq!(summary.committed_total(), produced as i64);
    let want = BTreeMap::from([
        ("delivered".to_string(), valid),
        ("token_invalid".to_string(), invalid_tokens.len() as u64),
        ("malformed".to_string(), malformed),
        ("expired".to_string(), expired),
    ]);
    assert_eq!(summary.outcomes, want);
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
    let left: i64 = db
        .query_one(&format!("SELECT count(*) FROM \"{table}\""), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0);
    db.batch_execute(&format!("DROP TABLE \"{table}\""))
        .await
        .unwrap();

    // One GCM feedback record per failure, in the seed's format.
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", format!("fb-{app}"))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer
        .subscribe(&[&format!("push-{app}-gcm-feedbacks")])
        .unwrap();
    let failures = produced - valid;
    let mut records = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while (records.len() as u64) < failures && Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            records
                .push(serde_json::from_slice::<serde_json::Value>(m.payload().unwrap()).unwrap());
        }
    }
    assert!(consumer.poll(Duration::from_millis(500)).is_none());
    assert_eq!(records.len() as u64, failures);
    assert!(
        records
            .iter()
            .all(|r| r["error"].is_string() && r.get("from").is_some()),
        "{:?}",
        &records[..2]
    );
}
