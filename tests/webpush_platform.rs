//! Browsers through the whole platform, against real parts: subscriptions registered over the
//! HTTP API into the machine's PostgreSQL, a gorush-style push (platform 4) into Kafka, the
//! real `pusher run webpush` binary sending to the fake push service (which checks VAPID and
//! decrypts every body), `pusher results` storing a row per subscription and deleting the
//! dead ones from the registry. Counts add up: accepted = produced = answered = delivered +
//! token_invalid = result rows.

mod common;
#[path = "common/kafka.rs"]
mod kafka;

use common::http::{post_json, request};
use common::platform::{api_settings, fresh_app, pg, read_topic, store};
use kafka::TestKafka;
use p256::pkcs8::EncodePrivateKey;
use pusher::mock::{MockConfig, MockServer, WebPushHandler, WebPushOptions};
use pusher::platform::api::{serve, ApiState};
use pusher::platform::consume::GroupSettings;
use pusher::platform::produce::Producer;
use pusher::platform::results::{feedback_pattern, run as results};
use pusher::push::webpush::{generated_subscription, slot_keys};
use serde_json::{json, Value};
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const KEY: &str = "test-key-webpush-0123456789";

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// How many devices `user` has in the registry.
async fn devices_of(api: std::net::SocketAddr, auth: &str, user: i64) -> usize {
    request(
        api,
        "GET",
        &format!("/api/v1/users/{user}/devices"),
        &[("authorization", auth)],
        "",
    )
    .await
    .json()["devices"]
        .as_array()
        .map_or(0, Vec::len)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browsers_registered_over_http_get_pushes_and_dead_ones_are_deleted() {
    let app = fresh_app("wp");
    let topic = format!("push-{app}_webpush");
    let feedback = format!("push-{app}-webpush-feedbacks");
    let kafka = TestKafka::start(&[&topic, &feedback], 2).await;
    let fake = MockServer::start_with(
        MockConfig::default(),
        WebPushHandler::new(WebPushOptions::default()),
    )
    .await
    .expect("fake push service");
    let origin = format!("https://{}", fake.tls_addr().expect("tls"));
    let mut ca = tempfile::NamedTempFile::new().unwrap();
    ca.write_all(fake.ca_pem().as_bytes()).unwrap();
    let mut vapid = tempfile::NamedTempFile::new().unwrap();
    let pem = slot_keys(11)
        .0
        .to_pkcs8_pem(p256::pkcs8::LineEnding::LF)
        .unwrap();
    vapid.write_all(pem.as_bytes()).unwrap();

    let store = store().await;
    let producer = Producer::new(kafka.bootstrap(), Duration::from_secs(5)).unwrap();
    let state = ApiState::new(api_settings(&app, KEY), producer, store);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api = listener.local_addr().unwrap();
    let stop_api = CancellationToken::new();
    let api_task = tokio::spawn(serve(listener, state, stop_api.clone()));
    let auth = format!("Bearer {KEY}");

    // Ten browsers: two whose subscriptions the push service no longer knows.
    let subscriptions: Vec<Value> = (0..10)
        .map(|i| {
            let id = match i {
                3 => format!("dead{i:060}"),
                7 => format!("gone{i:060}"),
                _ => format!("a{i:063}"),
            };
            json!(generated_subscription(&origin, &id))
        })
        .collect();
    for (i, s) in subscriptions.iter().enumerate() {
        let body = json!({"user_id": 1000 + i as i64, "subscription": s, "language_id": 2});
        let a = request(
            api,
            "PUT",
            "/api/v1/webpush/subscriptions",
            &[
                ("authorization", &auth),
                ("content-type", "application/json"),
            ],
            body.to_string(),
        )
        .await;
        assert_eq!(a.status, 200, "{}", a.text());
    }
    // A subscription that could never be sent to is refused, naming why.
    let mut bad = subscriptions[0].clone();
    bad["keys"]["p256dh"] = json!("AAAA");
    let a = request(
        api,
        "PUT",
        "/api/v1/webpush/subscriptions",
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
        ],
        json!({"user_id": 1, "subscription": bad}).to_string(),
    )
    .await;
    assert_eq!(a.status, 400, "{}", a.text());
    assert!(a.text().contains("p256dh"), "{}", a.text());
    let devices = request(
        api,
        "GET",
        "/api/v1/users/1003/devices",
        &[("authorization", &auth)],
        "",
    )
    .await
    .json();
    assert_eq!(devices["devices"][0]["platform"], "webpush", "{devices}");
    assert_eq!(devices["devices"][0]["token"], subscriptions[3]["endpoint"]);
    assert!(
        devices["devices"][0].get("keys").is_none(),
        "auth stays private"
    );

    let body = json!({"notifications": [{"platform": 4, "subscriptions": subscriptions,
        "title": "Come play!", "message": "Helena misses you", "data": {"level": 3},
        "collapse_key": "invite", "notif_id": "w-1"}]});
    let a = post_json(api, "/api/push", KEY, &body).await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.json()["counts"], 10);
    let produced = read_topic(kafka.bootstrap(), &topic, 10);
    assert_eq!(produced.len(), 10);

    let _pusher = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_pusher"))
            .args([
                "run",
                "webpush",
                "--app",
                &app,
                "--brokers",
                kafka.bootstrap(),
            ])
            .arg("--vapid-key")
            .arg(vapid.path())
            .args([
                "--vapid-subject",
                "mailto:ops@example.com",
                "--allow-local-endpoints",
            ])
            .arg("--ca")
            .arg(ca.path())
            .env("PUSHER_QUEUE_GROUP", format!("g-{app}"))
            .env("PUSHER_QUEUE_OFFSETRESETSTRATEGY", "earliest")
            .env("PUSHER_FEEDBACK_REPORTERS", "kafka")
            .env("PUSHER_INVALIDTOKEN_HANDLERS", "")
            .env("PUSHER_STATS_REPORTERS", "")
            .env("PUSHER_STATS_PROMETHEUS_LISTEN", "")
            .env(
                "PUSHER_WEBPUSH_PUSHSERVICES",
                fake.tls_addr().expect("tls").to_string(),
            )
            .env("PUSHER_LOG", "warn")
            .env("PUSHER_QUEUE_SESSIONTIMEOUT", "3000")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start pusher run webpush"),
    );
    let stop = CancellationToken::new();
    let writer = tokio::spawn(results(
        GroupSettings {
            brokers: kafka.bootstrap().to_owned(),
            group: format!("results-{app}"),
            topic: feedback_pattern("push-{app}-{platform}-feedbacks"),
            batch_size: 100,
            offset_reset: "earliest".to_owned(),
            consumer_extra: Vec::new(),
        },
        pusher::platform::store::Store::new(&pg()).unwrap(),
        pusher::platform::webhook::Webhooks::new(&Default::default()).unwrap(),
        stop.clone(),
    ));
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        let a = request(
            api,
            "GET",
            "/api/v1/notifications/w-1",
            &[("authorization", &auth)],
            "",
        )
        .await;
        assert_eq!(a.status, 200, "{}", a.text());
        let status = a.json();
        if status["pending"] == 0 || Instant::now() > deadline {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        status["counts"],
        json!({"delivered": 8, "token_invalid": 2}),
        "{status}"
    );
    let stats = fake.stats().snapshot();
    assert_eq!(stats.responses, 10, "{stats:?}");
    assert_eq!(stats.decrypted, 10, "every body decrypted: {stats:?}");
    assert_eq!(stats.by_status.get(&201).copied(), Some(8), "{stats:?}");

    // The dead subscriptions are gone from the registry; the others stay.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (dead, gone, alive) = (
            devices_of(api, &auth, 1003).await,
            devices_of(api, &auth, 1007).await,
            devices_of(api, &auth, 1000).await,
        );
        if (dead, gone, alive) == (0, 0, 1) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "devices left: dead {dead}, gone {gone}, alive {alive}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.cancel();
    let counts = writer.await.unwrap().unwrap();
    assert_eq!((counts.stored, counts.malformed), (10, 0), "{counts:?}");
    assert_eq!(counts.devices_removed, 2, "{counts:?}");
    stop_api.cancel();
    api_task.await.unwrap().unwrap();
    fake.shutdown().await;
}
