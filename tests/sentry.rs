//! Sentry (`PUSHER_SENTRY_URL` / `sentry.url`): a fake Sentry on 127.0.0.1 (wiremock) must
//! receive an event for what went wrong: `pusher run` failing to start (bad config, missing
//! credentials) and messages given up in a running pipeline. The DSN's key is never printed.

#[path = "common/kafka.rs"]
mod kafka;

use kafka::TestKafka;
use pusher::config::Secret;
use pusher::gen::{GenConfig, Generator};
use pusher::mock::{JwtKey, MockConfig, MockServer, Profile};
use pusher::pipeline::run::{run, AppSender, Outputs, RunSpec};
use pusher::push::Platform;
use pusher::sender::apns::{ApnsAuth, ApnsConfig, ApnsSender, TokenAuth};
use pusher::sender::endpoint::Endpoint;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use wiremock::matchers::{method, path_regex};
use wiremock::{Mock, ResponseTemplate};

const KEY: &str = "f00dfeedsecretkey0123456789abcdef";

/// A fake Sentry accepting envelopes for any project.
async fn fake_sentry() -> wiremock::MockServer {
    let server = wiremock::MockServer::start().await;
    Mock::given(method("POST"))
        .and(path_regex(r"^/api/[0-9]+/(envelope|store)/$"))
        .respond_with(ResponseTemplate::new(200).set_body_string("{}"))
        .mount(&server)
        .await;
    server
}

fn dsn(server: &wiremock::MockServer) -> String {
    format!("http://{KEY}@{}/42", server.address())
}

/// The bodies received so far that contain `text`.
async fn events_with(server: &wiremock::MockServer, text: &str) -> Vec<String> {
    server
        .received_requests()
        .await
        .unwrap_or_default()
        .into_iter()
        .map(|r| String::from_utf8_lossy(&r.body).into_owned())
        .filter(|b| b.contains(text))
        .collect()
}

async fn pusher_run(extra: &[&str], dsn: &str) -> std::process::Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_pusher"))
        .arg("-d")
        .args(extra)
        .args(["run", "apns", "--app", "game"])
        .env("PUSHER_SENTRY_URL", dsn)
        .env("PUSHER_STATS_PROMETHEUS_LISTEN", "")
        .env("PUSHER_LOG", "debug")
        .kill_on_drop(true)
        .output()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_failure_to_start_reaches_sentry_and_the_key_is_never_printed() {
    let sentry = fake_sentry().await;
    let dsn = dsn(&sentry);

    // The config loads, but the app has no credentials: reported with the key at fault.
    let out = pusher_run(&[], &dsn).await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("apns.certs.game"), "{stderr}");
    assert!(!stderr.contains(KEY), "the DSN key was printed:\n{stderr}");
    assert!(
        String::from_utf8_lossy(&out.stdout).find(KEY).is_none(),
        "key on stdout"
    );
    let events = events_with(&sentry, "apns.certs.game").await;
    assert_eq!(events.len(), 1, "{:?}", sentry.received_requests().await);
    // The envelope is authenticated with the key; its body does not repeat it.
    assert!(!events[0].contains(KEY));

    // A config that cannot be read: the URL comes from the environment alone.
    let out = pusher_run(&["--config", "/nonexistent/pusher.yaml"], &dsn).await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains(KEY), "{stderr}");
    let events = events_with(&sentry, "/nonexistent/pusher.yaml").await;
    assert_eq!(events.len(), 1, "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_given_up_reach_sentry_once_not_per_message() {
    let sentry = fake_sentry().await;
    pusher::telemetry::init(false, false);
    let guard = pusher::telemetry::init_sentry(Some(&Secret::new(dsn(&sentry))))
        .unwrap()
        .expect("Sentry on");

    let app = format!("sentry{}", std::process::id());
    let topic = format!("push-{app}_apns");
    let kafka = TestKafka::start(&[&topic], 1).await;
    let brokers = kafka.bootstrap().to_string();
    // APNs answers 503 to everything: every message is given up after its retries.
    let key_pem = std::fs::read_to_string("fixtures/apns/AuthKey_TESTKEY001.p8").unwrap();
    let mut mock_config = MockConfig {
        profile: Profile::from_yaml("down", "errors: [{reason: ServiceUnavailable, rate: 1.0}]")
            .unwrap(),
        ..MockConfig::default()
    };
    mock_config.apns.jwt_keys =
        vec![JwtKey::from_pem("TESTKEY001", "TEAM000001", &key_pem).unwrap()];
    let fake = MockServer::start(mock_config).await.unwrap();
    let ca = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(ca.path(), fake.ca_pem()).unwrap();
    let mut apns = ApnsConfig::new(
        Endpoint::Custom(format!("https://{}", fake.tls_addr().unwrap())),
        ApnsAuth::Token(TokenAuth::new(
            key_pem.into_bytes(),
            "TESTKEY001",
            "TEAM000001",
        )),
    );
    apns.ca_file = Some(ca.path().to_path_buf());
    apns.default_topic = Some("com.example.app".into());
    apns.retry.max_attempts = 2;
    apns.retry.base = Duration::from_millis(1);
    apns.retry.cap = Duration::from_millis(5);
    let sender = AppSender::apns(ApnsSender::new(apns).unwrap());

    let mut gen = GenConfig::new(Platform::Apns);
    gen.count = 20;
    gen.app = app.clone();
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .unwrap();
    for m in Generator::new(gen).unwrap() {
        producer
            .send(
                FutureRecord::<(), _>::to(&topic).payload(&m.bytes),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
    }

    let mut spec = RunSpec::new(
        Platform::Apns,
        brokers.clone(),
        format!("group-{app}"),
        vec![topic.clone()],
    );
    spec.offset_reset = "earliest".into();
    spec.commit_interval = Duration::from_millis(100);
    let stop = CancellationToken::new();
    let pipeline = tokio::spawn(run(
        spec,
        HashMap::from([(app.clone(), sender)]),
        Outputs::default(),
        stop.clone(),
    ));
    let deadline = Instant::now() + Duration::from_secs(30);
    while fake.stats().snapshot().responses < 40 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A graceful stop lets every message in flight reach its outcome before it returns.
    stop.cancel();
    let summary = pipeline.await.unwrap().unwrap();
    assert_eq!(summary.outcomes.get("gave_up"), Some(&20), "{summary:?}");
    drop(guard); // sends what is queued

    let events = events_with(&sentry, "given up").await;
    assert_eq!(events.len(), 1, "one event for 20 messages, not 20");
    assert!(events[0].contains(&app), "{}", events[0]);
    fake.shutdown().await;
}
