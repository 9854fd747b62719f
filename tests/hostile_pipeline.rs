//! Hostile Kafka input through the real pipeline (librdkafka's mock cluster over TCP, the
//! fake APNs over TLS, feedback into Kafka, the token deleter on the machine's PostgreSQL):
//! invalid UTF-8, deep nesting, a 10 MB message, a huge key, tokens that try SQL or paths,
//! topics that name no app. The pipeline stays up, every case is counted with its reason,
//! gets its feedback record, and is committed; valid messages around them are delivered.

mod fcm_support;
#[path = "common/feedback.rs"]
#[allow(dead_code)]
mod feedback;

use pusher::mock::kafka::KafkaMock;
use pusher::mock::{JwtKey, MockConfig, MockServer};
use pusher::pipeline::feedback::FeedbackProducer;
use pusher::pipeline::run::{run, AppSender, Observer, OutcomeEvent, Outputs, RunSpec};
use pusher::pipeline::tokens::{DeleterSettings, TokenDeleter};
use pusher::push::Platform;
use pusher::sender::apns::{ApnsAuth, ApnsConfig, ApnsSender, TokenAuth};
use pusher::sender::endpoint::Endpoint;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const KEY_ID: &str = "TESTKEY001";
const TEAM_ID: &str = "TEAM000001";
/// The big messages: 2 MiB, 32 times the 64 KiB limit. (librdkafka's mock cluster loses
/// messages of 3 MB and more from its log, so 10 MB cannot go through it; the parser's
/// refusal of a 10 MB value is a unit test in src/push/message.rs.)
const BIG: usize = 2 * 1024 * 1024;

/// Counts outcomes by "class/reason".
#[derive(Default)]
struct Reasons(Mutex<BTreeMap<String, u64>>);
impl Observer for Reasons {
    fn on_outcome(&self, e: &OutcomeEvent<'_>) {
        let key = format!("{}/{}", e.outcome.class(), e.outcome.reason().unwrap_or(""));
        *self.0.lock().unwrap().entry(key).or_default() += 1;
    }
}
impl Reasons {
    fn total(&self) -> u64 {
        self.0.lock().unwrap().values().sum()
    }
}

fn token(i: u64) -> String {
    format!("{:064x}", 0xa000_0000_0000_0000u64 + i)
}

fn valid(i: u64) -> Vec<u8> {
    format!(
        r#"{{"DeviceToken":"{}","Payload":{{"aps":{{"alert":"hi"}}}}}}"#,
        token(i)
    )
    .into_bytes()
}

/// Peak resident memory of this process (VmHWM), in MB.
fn peak_rss_mb() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<u64>().ok())
        .unwrap_or(0)
        / 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_messages_are_each_counted_and_the_pipeline_stays_up() {
    let app = format!("hostile{}", std::process::id());
    let topic = format!("push-{app}_apns");
    // Topics the default regex matches but that name no app ('.' is legal in Kafka names).
    let odd_topics = ["push-.._apns".to_string(), "push-a.b_apns".to_string()];
    let mut topics = vec![topic.clone()];
    topics.extend(odd_topics.iter().cloned());
    let kafka = KafkaMock::start(1, &topics, 2).unwrap();
    let brokers = kafka.bootstrap().to_string();

    let key_pem = std::fs::read_to_string("fixtures/apns/AuthKey_TESTKEY001.p8").unwrap();
    let mut mock_config = MockConfig::default();
    mock_config.apns.jwt_keys = vec![JwtKey::from_pem(KEY_ID, TEAM_ID, &key_pem).unwrap()];
    let fake = MockServer::start(mock_config).await.unwrap();
    let ca = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(ca.path(), fake.ca_pem()).unwrap();

    // (message, expected "class/reason")
    let deep = 20_000;
    let mut cases: Vec<(Vec<u8>, &str)> = vec![
        // Invalid UTF-8: a lone continuation byte, an overlong '/', a UTF-16 surrogate.
        (b"{\"DeviceToken\":\"\x80\"}".to_vec(), "malformed/not_utf8"),
        (
            b"{\"DeviceToken\":\"\xc0\xaf\"}".to_vec(),
            "malformed/not_utf8",
        ),
        (
            b"{\"Payload\":\"\xed\xa0\x80\"}".to_vec(),
            "malformed/not_utf8",
        ),
        // Deep nesting: at the top (not an object: refused before descending), a deep member
        // (skipped unparsed: no token), deep metadata (merged raw into `Payload.M`, so over
        // the APNs size limit), a deep payload (over the size limit too).
        (
            ["[".repeat(deep), "]".repeat(deep)].concat().into_bytes(),
            "malformed/wrong_type",
        ),
        (
            ["{\"a\":".repeat(deep / 2), "1".into(), "}".repeat(deep / 2)]
                .concat()
                .into_bytes(),
            "malformed/no_token",
        ),
        (
            format!(
                r#"{{"DeviceToken":"{}","Payload":{{}},"metadata":{{"m":{}1{}}}}}"#,
                token(902),
                "[".repeat(deep),
                "]".repeat(deep)
            )
            .into_bytes(),
            "malformed/payload_too_large",
        ),
        (
            format!(
                r#"{{"DeviceToken":"{}","Payload":{{"aps":{}1{}}}}}"#,
                token(900),
                "[".repeat(deep),
                "]".repeat(deep)
            )
            .into_bytes(),
            "malformed/payload_too_large",
        ),
        // Big: refused by size, before parsing, after copying at most 64 KiB + 1.
        (
            format!(
                r#"{{"DeviceToken":"{}","Payload":{{"aps":{{"alert":"{}"}}}}}}"#,
                token(901),
                "x".repeat(BIG)
            )
            .into_bytes(),
            "malformed/message_too_large",
        ),
        (vec![b' '; BIG], "malformed/message_too_large"),
        // Tokens that try SQL or a path: never put in a URL, never reach PostgreSQL.
        (
            br#"{"DeviceToken":"x'); DROP TABLE victim; --","Payload":{"aps":{}}}"#.to_vec(),
            "malformed/BadDeviceToken",
        ),
        (
            br#"{"DeviceToken":"../../../admin?x=1#","Payload":{"aps":{}}}"#.to_vec(),
            "malformed/BadDeviceToken",
        ),
        // Empty value.
        (Vec::new(), "malformed/invalid_json"),
    ];
    let valid_count = 20u64;
    for i in 0..valid_count {
        cases.push((valid(i), "delivered/"));
    }

    // A table the injected SQL names: it must survive.
    let (db, conn) = tokio_postgres::connect(
        "host=127.0.0.1 port=5432 user=postgres dbname=test",
        tokio_postgres::NoTls,
    )
    .await
    .expect("PostgreSQL on 127.0.0.1:5432 (ci/setup.sh starts it)");
    tokio::spawn(conn);
    db.batch_execute("CREATE TABLE IF NOT EXISTS victim (id int)")
        .await
        .unwrap();

    let mut apns = ApnsConfig::new(
        Endpoint::Custom(format!("https://{}", fake.tls_addr().unwrap())),
        ApnsAuth::Token(TokenAuth::new(key_pem.into_bytes(), KEY_ID, TEAM_ID)),
    );
    apns.ca_file = Some(ca.path().to_path_buf());
    apns.default_topic = Some("com.example.app".into());
    let sender = AppSender::apns(ApnsSender::new(apns).unwrap());

    let mut pg = deadpool_postgres::Config::new();
    pg.host = Some("127.0.0.1".into());
    pg.user = Some("postgres".into());
    pg.dbname = Some("test".into());
    let pool = pg
        .create_pool(
            Some(deadpool_postgres::Runtime::Tokio1),
            tokio_postgres::NoTls,
        )
        .unwrap();
    let deleter = TokenDeleter::spawn(pool, DeleterSettings::default());
    let reasons = Arc::new(Reasons::default());
    let outputs = Outputs {
        feedback: Some(Arc::new(
            FeedbackProducer::new(&brokers, "push-{app}-{platform}-feedbacks").unwrap(),
        )),
        tokens: Some(deleter.queue()),
        observer: Some(reasons.clone()),
    };
    let mut spec = RunSpec::new(
        Platform::Apns,
        brokers.clone(),
        format!("group-{app}"),
        vec!["^push-[^-_]+_(apns|gcm)".to_string()],
    );
    spec.offset_reset = "earliest".into();
    spec.max_in_flight = 50;
    spec.commit_interval = Duration::from_millis(100);
    let stop = CancellationToken::new();
    let apps = std::collections::HashMap::from([(app.clone(), sender)]);
    let pipeline = tokio::spawn(run(spec, apps, outputs, stop.clone()));
    // Produced while the pipeline consumes (the mock cluster's log is bounded).
    let rss_before = peak_rss_mb();
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("message.max.bytes", (3 * BIG).to_string())
        .create()
        .unwrap();
    for (i, (message, _)) in cases.iter().enumerate() {
        // A big key too, on one of them: it is not copied whole either.
        let key = if i == 0 {
            vec![b'k'; BIG]
        } else {
            i.to_string().into_bytes()
        };
        producer
            .send(
                FutureRecord::to(&topic).key(&key).payload(message),
                Duration::from_secs(30),
            )
            .await
            .unwrap_or_else(|(e, _)| panic!("produce case {i}: {e}"));
    }
    for odd in &odd_topics {
        producer
            .send(
                FutureRecord::<(), _>::to(odd).payload(&valid(999)),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
    }
    // Topics whose name says no app are not this pusher's to refuse: their partitions are
    // paused, their messages left in Kafka uncommitted.
    let produced = cases.len() as u64;
    let deadline = Instant::now() + Duration::from_secs(60);
    while reasons.total() < produced && Instant::now() < deadline {
        assert!(!pipeline.is_finished(), "the pipeline stopped");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A graceful stop finishes and commits what is in flight before it returns.
    stop.cancel();
    let summary = pipeline.await.unwrap().unwrap();
    let token_stats = deleter.shutdown(Duration::from_secs(10)).await;
    let rss_after = peak_rss_mb();

    // Each case counted once, with its reason.
    let mut want: BTreeMap<String, u64> = BTreeMap::new();
    for (_, reason) in &cases {
        *want.entry(reason.to_string()).or_default() += 1;
    }
    assert_eq!(*reasons.0.lock().unwrap(), want);
    // An odd topic's partition may show offset 0 (its message held, a commit tick came by):
    // the next to read is still its first message.
    assert!(
        summary
            .committed
            .iter()
            .all(|((t, _), next)| *t == topic || *next == 0),
        "nothing committed on the odd topics: {:?}",
        summary.committed
    );
    // Everything committed, nothing abandoned.
    assert_eq!(summary.consumed, produced, "{summary:?}");
    assert_eq!(summary.finished, produced);
    assert_eq!(summary.committed_total(), produced as i64);
    assert_eq!(summary.abandoned, 0);
    // Only the valid ones reached the fake.
    assert_eq!(fake.stats().snapshot().requests, valid_count);
    // Nothing reached PostgreSQL, and the table the injection names is still there.
    assert_eq!(
        token_stats.success + token_stats.error,
        0,
        "{token_stats:?}"
    );
    let exists: bool = db
        .query_one("SELECT to_regclass('victim') IS NOT NULL", &[])
        .await
        .unwrap()
        .get(0);
    assert!(exists, "the victim table is gone");

    // One small feedback record per malformed message: the 10 MB ones are not echoed.
    let malformed = want
        .iter()
        .filter(|(k, _)| k.starts_with("malformed/"))
        .map(|(_, n)| n)
        .sum::<u64>();
    let sizes: Vec<usize> = feedback::read_feedback(
        &brokers,
        &format!("push-{app}-apns-feedbacks"),
        malformed,
        Duration::from_secs(30),
    )
    .iter()
    .map(Vec::len)
    .collect();
    assert_eq!(sizes.len() as u64, malformed);
    assert!(sizes.iter().all(|s| *s < 128 * 1024), "{sizes:?}");
    eprintln!("peak RSS of the test process: {rss_before} MB before producing, {rss_after} MB after the run");
    fake.shutdown().await;
}

/// App names that try SQL or paths, from the command line or the environment: a config error
/// naming the key (exit 2), before anything connects; the table the SQL names survives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_names_that_inject_sql_or_paths_are_refused() {
    let (db, conn) = tokio_postgres::connect(
        "host=127.0.0.1 port=5432 user=postgres dbname=test",
        tokio_postgres::NoTls,
    )
    .await
    .expect("PostgreSQL on 127.0.0.1:5432 (ci/setup.sh starts it)");
    tokio::spawn(conn);
    db.batch_execute("CREATE TABLE IF NOT EXISTS hostile_y (id int)")
        .await
        .unwrap();
    let apps = [
        r#"x"; DROP TABLE hostile_y; --"#,
        "x_apns\" ; DROP TABLE \"hostile_y",
        "../../etc/passwd",
        "a/b",
        "game\0",
    ];
    for (i, app) in apps.iter().enumerate() {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_pusher"));
        cmd.args(["run", "apns", "--brokers", "127.0.0.1:1"])
            .env("PUSHER_STATS_PROMETHEUS_LISTEN", "")
            .env("PUSHER_INVALIDTOKEN_PG_HOST", "127.0.0.1");
        // Half from the command line, half from the environment.
        if app.contains('\0') {
            // A NUL cannot be in an argument or a variable: the config file's YAML then.
            let dir = tempfile::tempdir().unwrap();
            let file = dir.path().join("c.yaml");
            std::fs::write(&file, "apns:\n  apps: \"game\\0\"\n").unwrap();
            cmd.arg("--config").arg(&file);
            let out = cmd.output().await.unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{app:?}: {err}");
            assert!(err.contains("may hold only letters"), "{app:?}: {err}");
            continue;
        } else if i % 2 == 0 {
            cmd.args(["--app", app]);
        } else {
            cmd.env("PUSHER_APNS_APPS", app);
        }
        let out = cmd.output().await.unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{app:?}: {err}");
        assert!(err.contains("may hold only letters"), "{app:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    let exists: bool = db
        .query_one("SELECT to_regclass('hostile_y') IS NOT NULL", &[])
        .await
        .unwrap()
        .get(0);
    assert!(exists, "the hostile_y table is gone");
}

/// GCM: the same hostile values, and FCM tokens that try SQL or paths. FCM tokens travel in
/// the JSON body, so these reach the fake, come back invalid and go to PostgreSQL, only ever
/// as a bound parameter: the row with the injected text is deleted, the victim table stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcm_hostile_messages_and_injected_tokens_stay_data() {
    let app = format!("hostilegcm{}", std::process::id());
    let topic = format!("push-{app}_gcm");
    let kafka = KafkaMock::start(1, std::slice::from_ref(&topic), 2).unwrap();
    let brokers = kafka.bootstrap().to_string();
    let fake = fcm_support::start_fake(fcm_support::FakeOptions::default()).await;
    let sender =
        pusher::sender::fcm::FcmSender::new(fcm_support::v1_config(&fake, &fake.tls_url()))
            .unwrap();

    let sql = "x'); DROP TABLE victim_gcm; --";
    let path = "../../../admin?x=1#";
    let mut cases: Vec<(Vec<u8>, &str)> = vec![
        (b"{\"to\":\"\xff\"}".to_vec(), "malformed/not_utf8"),
        (
            ["[".repeat(20_000), "]".repeat(20_000)]
                .concat()
                .into_bytes(),
            "malformed/wrong_type",
        ),
        (
            format!(
                r#"{{"to":"t","data":{{"a":{}1{}}}}}"#,
                "[".repeat(20_000),
                "]".repeat(20_000)
            )
            .into_bytes(),
            "malformed/invalid_json",
        ),
        (
            format!(r#"{{"to":"t","data":{{"a":"{}"}}}}"#, "x".repeat(BIG)).into_bytes(),
            "malformed/message_too_large",
        ),
        (
            br#"{"message":"not an object"}"#.to_vec(),
            "malformed/wrong_type",
        ),
        (
            br#"{"to":"tok-m","data":[1],"metadata":{"notif_id":"g-bad"}}"#.to_vec(),
            "malformed/wrong_type",
        ),
    ];
    for token in [sql, path] {
        let m = serde_json::json!({"to": token, "data": {"k": "v"}});
        cases.push((m.to_string().into_bytes(), "token_invalid/INVALID_ARGUMENT"));
    }
    for i in 0..10 {
        let m = serde_json::json!({"to": format!("tok{i}:APA91b-x"), "data": {"k": "v"}});
        cases.push((m.to_string().into_bytes(), "delivered/"));
    }
    let produced = cases.len() as u64;

    let (db, conn) = tokio_postgres::connect(
        "host=127.0.0.1 port=5432 user=postgres dbname=test",
        tokio_postgres::NoTls,
    )
    .await
    .expect("PostgreSQL on 127.0.0.1:5432 (ci/setup.sh starts it)");
    tokio::spawn(conn);
    let tables = include_str!("../fixtures/tokens.sql").replace("\"game_", &format!("\"{app}_"));
    db.batch_execute(&format!(
        "{tables}; CREATE TABLE IF NOT EXISTS victim_gcm (id int)"
    ))
    .await
    .unwrap();
    // The injected texts are stored as tokens: they must be deleted as data, nothing else.
    db.execute(
        &format!("INSERT INTO \"{app}_gcm\" (token) VALUES ($1), ($2), ('keep')"),
        &[&sql, &path],
    )
    .await
    .unwrap();

    let mut pg = deadpool_postgres::Config::new();
    pg.host = Some("127.0.0.1".into());
    pg.user = Some("postgres".into());
    pg.dbname = Some("test".into());
    let pool = pg
        .create_pool(
            Some(deadpool_postgres::Runtime::Tokio1),
            tokio_postgres::NoTls,
        )
        .unwrap();
    let deleter = TokenDeleter::spawn(
        pool,
        DeleterSettings {
            flush_interval: Duration::from_millis(50),
            ..Default::default()
        },
    );
    let reasons = Arc::new(Reasons::default());
    let outputs = Outputs {
        feedback: Some(Arc::new(
            FeedbackProducer::new(&brokers, "push-{app}-{platform}-feedbacks").unwrap(),
        )),
        tokens: Some(deleter.queue()),
        observer: Some(reasons.clone()),
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
    let apps = std::collections::HashMap::from([(app.clone(), AppSender::gcm(sender))]);
    let pipeline = tokio::spawn(run(spec, apps, outputs, stop.clone()));
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("message.max.bytes", (3 * BIG).to_string())
        .create()
        .unwrap();
    for (i, (message, _)) in cases.iter().enumerate() {
        producer
            .send(
                FutureRecord::to(&topic)
                    .key(&i.to_string())
                    .payload(message),
                Duration::from_secs(30),
            )
            .await
            .unwrap_or_else(|(e, _)| panic!("produce case {i}: {e}"));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while reasons.total() < produced && Instant::now() < deadline {
        assert!(!pipeline.is_finished(), "the pipeline stopped");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A graceful stop finishes and commits what is in flight before it returns.
    stop.cancel();
    let summary = pipeline.await.unwrap().unwrap();
    let token_stats = deleter.shutdown(Duration::from_secs(10)).await;

    let mut want: BTreeMap<String, u64> = BTreeMap::new();
    for (_, reason) in &cases {
        *want.entry(reason.to_string()).or_default() += 1;
    }
    assert_eq!(*reasons.0.lock().unwrap(), want);
    assert_eq!(summary.committed_total(), produced as i64, "{summary:?}");
    assert_eq!(summary.abandoned, 0);
    // A refused message still names its device and keeps its notif_id: the verdict completes
    // the notification it belongs to.
    let failures = cases
        .iter()
        .filter(|(_, r)| !r.starts_with("delivered"))
        .count() as u64;
    let records = feedback::read_feedback_json(
        &brokers,
        &format!("push-{app}-gcm-feedbacks"),
        failures,
        Duration::from_secs(20),
    );
    let tracked: Vec<&serde_json::Value> = records
        .iter()
        .filter(|r| r["metadata"].get("notif_id").is_some())
        .collect();
    assert_eq!(tracked.len(), 1, "{records:?}");
    assert_eq!(
        (
            &tracked[0]["from"],
            &tracked[0]["metadata"]["notif_id"],
            &tracked[0]["metadata"]["outcome"],
            &tracked[0]["error"]
        ),
        (
            &serde_json::json!("tok-m"),
            &serde_json::json!("g-bad"),
            &serde_json::json!("malformed"),
            &serde_json::json!("INVALID_JSON")
        ),
        "{records:?}"
    );
    // Both injected tokens deleted as rows, the other row and the victim table untouched.
    assert_eq!(
        (token_stats.success, token_stats.error),
        (2, 0),
        "{token_stats:?}"
    );
    let left: Vec<String> = db
        .query(&format!("SELECT token FROM \"{app}_gcm\""), &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(left, ["keep"]);
    let exists: bool = db
        .query_one("SELECT to_regclass('victim_gcm') IS NOT NULL", &[])
        .await
        .unwrap()
        .get(0);
    assert!(exists, "the victim_gcm table is gone");
    db.batch_execute(&format!("DROP TABLE \"{app}_apns\", \"{app}_gcm\""))
        .await
        .unwrap();
}

/// Hostile web push subscriptions through the real pipeline, two apps in one run: one with the
/// production rules (https to public hosts only), one allowed local endpoints to reach the fake
/// push service. Every bad subscription ends as `token_invalid` with its reason, gets a
/// feedback record naming it (with `deleteToken`), and is committed; one refused only by the
/// endpoint rules (http, a private host: the fake's own address under the production rules)
/// is `rejected` and kept (no `deleteToken`): the rules are our configuration, and a pusher
/// run without the `allowLocalEndpoints` its API registered under deleted every such
/// subscription. Bad messages are
/// `malformed`; the valid pushes around them are delivered (their bodies decrypted by the
/// fake); nothing is posted to a private address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webpush_hostile_subscriptions_are_refused_with_feedback() {
    use pusher::push::webpush::{generated_subscription, slot_keys, EndpointRules};
    use pusher::sender::webpush::{WebPushConfig, WebPushSender};
    let strict_app = format!("wpstrict{}", std::process::id());
    let local_app = format!("wplocal{}", std::process::id());
    let topics = [
        format!("push-{strict_app}_webpush"),
        format!("push-{local_app}_webpush"),
    ];
    let feedback_topics = [
        format!("push-{strict_app}-webpush-feedbacks"),
        format!("push-{local_app}-webpush-feedbacks"),
    ];
    let kafka = KafkaMock::start(1, &topics, 1).unwrap();
    let brokers = kafka.bootstrap().to_string();
    let fake = MockServer::start_with(
        MockConfig::default(),
        pusher::mock::WebPushHandler::new(pusher::mock::WebPushOptions::default()),
    )
    .await
    .unwrap();
    let ca = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(ca.path(), fake.ca_pem()).unwrap();
    let origin = format!("https://{}", fake.tls_addr().unwrap());
    let sender = |rules: EndpointRules| {
        let mut config = WebPushConfig::new(slot_keys(21).0, "mailto:ops@example.com");
        config.rules = rules;
        config.ca_file = Some(ca.path().to_path_buf());
        AppSender::webpush(WebPushSender::new(config).unwrap())
    };
    let message = |subscription: serde_json::Value| {
        serde_json::json!({"subscription": subscription, "payload": {"title": "hi"},
            "metadata": {"notif_id": "h1"}})
        .to_string()
        .into_bytes()
    };
    let good = serde_json::json!(generated_subscription(&origin, "a1"));
    let with_endpoint = |endpoint: &str| {
        let mut s = good.clone();
        s["endpoint"] = endpoint.into();
        s
    };
    let with_key = |field: &str, value: &str| {
        let mut s = good.clone();
        s["keys"][field] = value.into();
        s
    };
    // (topic index, message, class/reason)
    let mut cases: Vec<(usize, Vec<u8>, &str)> = vec![
        // Production rules: the fake itself is a private address; so is the cloud's metadata
        // service; plain http is refused.
        (
            0,
            message(good.clone()),
            "rejected/endpoint_private_address",
        ),
        (
            0,
            message(with_endpoint("https://169.254.169.254/latest/meta-data")),
            "rejected/endpoint_private_address",
        ),
        (
            0,
            message(with_endpoint("https://[::1]:8443/wpush/a1")),
            "rejected/endpoint_private_address",
        ),
        (
            0,
            message(with_endpoint("http://push.example.com/wpush/a1")),
            "rejected/endpoint_not_https",
        ),
        // Local endpoints allowed: the keys and the URL still have to be right.
        (
            1,
            message(with_key("p256dh", "not*base64")),
            "token_invalid/bad_subscription_key",
        ),
        (
            1,
            message(with_key("p256dh", "BAAA")),
            "token_invalid/bad_subscription_key",
        ),
        (
            1,
            message(with_key("auth", "AAAAAAAAAAAAAAAAAAAA")),
            "token_invalid/bad_subscription_key",
        ),
        (
            1,
            message(with_endpoint("ftp://127.0.0.1/wpush/a1")),
            "token_invalid/endpoint_not_https",
        ),
        (
            1,
            b"{\"subscription\":\"\xff\"}".to_vec(),
            "malformed/not_utf8",
        ),
        (
            1,
            br#"{"payload":"no subscription"}"#.to_vec(),
            "malformed/no_token",
        ),
        (
            1,
            serde_json::json!({"subscription": good, "urgency": "now",
                "metadata": {"notif_id": "h-bad"}})
            .to_string()
            .into_bytes(),
            "malformed/invalid_value",
        ),
    ];
    for i in 0..5 {
        let s = serde_json::json!(generated_subscription(&origin, &format!("a{i:03}")));
        cases.push((1, message(s), "delivered/"));
    }
    let produced = cases.len() as u64;
    let reasons = Arc::new(Reasons::default());
    let outputs = Outputs {
        feedback: Some(Arc::new(
            FeedbackProducer::new(&brokers, "push-{app}-{platform}-feedbacks").unwrap(),
        )),
        tokens: None,
        observer: Some(reasons.clone()),
    };
    let mut spec = RunSpec::new(
        Platform::WebPush,
        brokers.clone(),
        format!("group-{local_app}"),
        topics.to_vec(),
    );
    spec.offset_reset = "earliest".into();
    spec.commit_interval = Duration::from_millis(100);
    let stop = CancellationToken::new();
    let apps = std::collections::HashMap::from([
        (strict_app.clone(), sender(EndpointRules::STRICT)),
        (local_app.clone(), sender(EndpointRules::LOCAL)),
    ]);
    let pipeline = tokio::spawn(run(spec, apps, outputs, stop.clone()));
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .unwrap();
    for (i, (topic, message, _)) in cases.iter().enumerate() {
        producer
            .send(
                FutureRecord::to(&topics[*topic])
                    .key(&i.to_string())
                    .payload(message),
                Duration::from_secs(30),
            )
            .await
            .unwrap_or_else(|(e, _)| panic!("produce case {i}: {e}"));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while reasons.total() < produced && Instant::now() < deadline {
        assert!(!pipeline.is_finished(), "the pipeline stopped");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.cancel();
    let summary = pipeline.await.unwrap().unwrap();
    let mut want: BTreeMap<String, u64> = BTreeMap::new();
    for (_, _, reason) in &cases {
        *want.entry(reason.to_string()).or_default() += 1;
    }
    assert_eq!(*reasons.0.lock().unwrap(), want);
    assert_eq!(summary.committed_total(), produced as i64, "{summary:?}");
    // Only the five valid pushes reached the fake, each decrypted.
    let stats = fake.stats().snapshot();
    assert_eq!((stats.requests, stats.decrypted), (5, 5), "{stats:?}");

    // A feedback record for every refusal, naming the subscription and why.
    let strict = feedback::read_feedback(&brokers, &feedback_topics[0], 4, Duration::from_secs(20));
    let local = feedback::read_feedback(&brokers, &feedback_topics[1], 12, Duration::from_secs(20));
    let records: Vec<serde_json::Value> = strict
        .iter()
        .chain(&local)
        .map(|r| serde_json::from_slice(r).unwrap())
        .collect();
    let refused: Vec<&serde_json::Value> = records
        .iter()
        .filter(|r| r["outcome"] == "token_invalid")
        .collect();
    assert_eq!(refused.len(), 4, "{records:?}");
    for r in &refused {
        assert_eq!(r["sent"], false, "{r}");
        assert_eq!(r["metadata"]["deleteToken"], true, "{r}");
        assert!(r["endpoint"].as_str().is_some_and(|e| !e.is_empty()), "{r}");
        assert!(r["reason"].as_str().is_some_and(|e| !e.is_empty()), "{r}");
    }
    // Refused by our rules: reported, never to be deleted.
    let kept: Vec<&serde_json::Value> = records
        .iter()
        .filter(|r| r["outcome"] == "rejected")
        .collect();
    assert_eq!(kept.len(), 4, "{records:?}");
    for r in &kept {
        assert_eq!(r["sent"], false, "{r}");
        assert!(r["metadata"].get("deleteToken").is_none(), "{r}");
        assert!(r["endpoint"].as_str().is_some_and(|e| !e.is_empty()), "{r}");
    }
    // Tracked (notif_id) pushes also report success; malformed ones still name what they can.
    assert_eq!(
        records
            .iter()
            .filter(|r| r["outcome"] == "delivered")
            .count(),
        5
    );
    assert_eq!(
        records
            .iter()
            .filter(|r| r["outcome"] == "malformed")
            .count(),
        3
    );
    // A refused message's notif_id is kept: its verdict completes the notification.
    let refused = records
        .iter()
        .find(|r| r["reason"] == "invalid_value")
        .unwrap();
    assert_eq!(
        (
            &refused["metadata"]["notif_id"],
            &refused["metadata"]["outcome"]
        ),
        (&serde_json::json!("h-bad"), &serde_json::json!("malformed")),
        "{refused}"
    );
    fake.shutdown().await;
}
