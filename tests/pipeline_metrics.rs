//! Prometheus `/metrics` of a running pipeline, scraped over HTTP: the consumer-lag gauge rises
//! with a backlog and falls to 0 once everything is committed; the outcome counters add up.
//! (One test per file: the Prometheus recorder is global to the process.)

#[path = "common/kafka.rs"]
mod kafka;

use kafka::TestKafka;
use pusher::gen::{GenConfig, Generator};
use pusher::mock::{JwtKey, MockConfig, MockServer, Profile};
use pusher::pipeline::run::{run, AppSender, Outputs, RunSpec};
use pusher::pipeline::stats::StatsObserver;
use pusher::push::Platform;
use pusher::sender::apns::{ApnsAuth, ApnsConfig, ApnsSender, TokenAuth};
use pusher::sender::endpoint::Endpoint;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

const MESSAGES: usize = 1000;

async fn scrape(addr: std::net::SocketAddr) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.0 200"), "{response}");
    response
}

/// The value of an unlabelled sample, e.g. `pusher_consumer_lag 12`.
fn sample(metrics: &str, name: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// The sum of a counter's samples whose labels contain `label`.
fn labelled_sum(metrics: &str, name: &str, label: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_lag_gauge_rises_with_a_backlog_and_returns_to_zero() {
    let metrics_addr = pusher::telemetry::serve_prometheus(
        "stats.prometheus.listen",
        "127.0.0.1:0".parse().unwrap(),
        None,
    )
    .await
    .unwrap();
    let app = format!("lag{}", std::process::id());
    let topic = format!("push-{app}_apns");
    let kafka = TestKafka::start(&[&topic], 2).await;
    let brokers = kafka.bootstrap().to_string();

    // A slow fake and few slots in flight: the backlog drains over a couple of seconds.
    let key_pem = std::fs::read_to_string("fixtures/apns/AuthKey_TESTKEY001.p8").unwrap();
    let mut mock_config = MockConfig {
        profile: Profile::from_yaml("slow", "latency: {dist: fixed, ms: 20}").unwrap(),
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
    let sender = AppSender::apns(ApnsSender::new(apns).unwrap());

    let mut gen = GenConfig::new(Platform::Apns);
    gen.count = MESSAGES as u64;
    gen.app = app.clone();
    let messages: Vec<_> = Generator::new(gen).unwrap().collect();
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .unwrap();
    let sends = messages.iter().enumerate().map(|(i, m)| {
        let (producer, topic, key) = (&producer, &topic, i.to_string());
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

    let mut spec = RunSpec::new(
        Platform::Apns,
        brokers.clone(),
        format!("group-{app}"),
        vec![topic.clone()],
    );
    spec.offset_reset = "earliest".into();
    spec.max_in_flight = 10;
    spec.commit_interval = Duration::from_millis(100);
    spec.lag_interval = Duration::from_millis(100);
    let outputs = Outputs {
        observer: Some(Arc::new(StatsObserver::new(Platform::Apns, None))),
        ..Outputs::default()
    };
    let stop = CancellationToken::new();
    let pipeline = tokio::spawn(run(
        spec,
        HashMap::from([(app.clone(), sender)]),
        outputs,
        stop.clone(),
    ));

    // Scrape while it works: the lag is seen above 0, then back at 0 once all is committed.
    let game = format!("game=\"{app}\"");
    let delivered = |m: &str| labelled_sum(m, "pusher_outcomes_total", "outcome=\"delivered\"");
    let (mut max_lag, mut last) = (0.0f64, String::new());
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        last = scrape(metrics_addr).await;
        let lag = sample(&last, "pusher_consumer_lag").unwrap_or(0.0);
        max_lag = max_lag.max(lag);
        if delivered(&last) == MESSAGES as f64 && lag == 0.0 && max_lag > 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.cancel();
    let summary = pipeline.await.unwrap().unwrap();
    assert_eq!(summary.committed_total(), MESSAGES as i64, "{summary:?}");
    assert!(
        max_lag > 0.0 && max_lag <= MESSAGES as f64,
        "lag never seen in (0, {MESSAGES}]: max {max_lag}\n{last}"
    );
    assert_eq!(sample(&last, "pusher_consumer_lag"), Some(0.0), "{last}");
    assert_eq!(delivered(&last), MESSAGES as f64, "{last}");
    assert!(last.contains(&game), "{last}");
    assert!(sample(&last, "pusher_in_flight").is_some(), "{last}");
    fake.shutdown().await;
}
