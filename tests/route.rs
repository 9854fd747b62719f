//! The registry and `pusher route` against real parts: the API over TCP, Kafka (mock cluster
//! or Tansu), PostgreSQL. Pushkin's examples (JSON, and protobuf bytes written from the wire
//! format by hand, not by our encoder) register devices and reach every device of a user;
//! counts add up: notifications accepted = routed, pushes = devices reached.

mod common;
#[path = "common/kafka.rs"]
mod kafka;

use common::http::{authorized, post_json, request};
use common::platform::{next_within, pg_client, wait_until};
use kafka::TestKafka;
use pusher::platform::api::ApiSettings;
use pusher::platform::consume::Membership;
use pusher::platform::produce::{Producer, Record};
use pusher::platform::registry::Registry;
use pusher::platform::route::{self, RouteCounts, RouteSettings};
use pusher::platform::store::Store;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const KEY: &str = "route-key-0123456789abcdef";

struct Platform {
    app: String,
    kafka: TestKafka,
    addr: SocketAddr,
    stop: CancellationToken,
    router: tokio::task::JoinHandle<RouteCounts>,
    store: Store,
    /// The router's partitions.
    membership: Membership,
}

/// A router in the app's group.
fn spawn_router(
    kafka: &TestKafka,
    app: &str,
    store: &Store,
    stop: &CancellationToken,
    membership: Membership,
) -> tokio::task::JoinHandle<RouteCounts> {
    let router = tokio::spawn(route::run(
        RouteSettings {
            brokers: kafka.bootstrap().to_owned(),
            group: format!("route-{app}"),
            deeplink_base: "game".into(),
            batch_size: 100,
            offset_reset: "earliest".into(),
            events: Default::default(),
            membership,
            consumer_extra: Vec::new(),
        },
        Registry::new(store.pool()),
        Producer::new(kafka.bootstrap(), Duration::from_secs(5)).unwrap(),
        stop.clone(),
    ));
    tokio::spawn(async move { router.await.unwrap().unwrap() })
}

impl Platform {
    async fn start() -> Platform {
        let app = common::platform::fresh_app("rt");
        let topics = [
            format!("push-{app}-requests"),
            format!("push-{app}_apns"),
            format!("push-{app}_gcm"),
        ];
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        let kafka = TestKafka::start(&names, 2).await;
        let store = common::platform::store().await;
        let settings = ApiSettings {
            max_notifications: 100,
            rate_per_second: 1000,
            burst: 1000,
            queues: pusher::platform::api::Queues {
                brokers: kafka.bootstrap().to_owned(),
                route_group: format!("route-{app}"),
                apns_group: format!("apns-{app}"),
                gcm_group: format!("gcm-{app}"),
                webpush_group: format!("webpush-{app}"),
            },
            deeplink_base: "game".into(),
            ..common::platform::api_settings(&app, KEY)
        };
        let stop = CancellationToken::new();
        let (addr, _, _) =
            common::platform::serve_api(settings, kafka.bootstrap(), store.clone(), &stop).await;
        let membership = Membership::default();
        let router = spawn_router(&kafka, &app, &store, &stop, membership.clone());
        Platform {
            app,
            kafka,
            addr,
            stop,
            router,
            store,
            membership,
        }
    }

    async fn devices(&self, user: i64) -> Value {
        self.get(&format!("/api/v1/users/{user}/devices")).await
    }

    /// The tokens of `user`'s devices, as the API lists them.
    async fn tokens(&self, user: i64) -> Vec<String> {
        let d = self.devices(user).await;
        d["devices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["token"].as_str().unwrap().to_owned())
            .collect()
    }

    /// `GET /api/v1/notifications/{id}`.
    async fn notification(&self, id: &str) -> Value {
        self.get(&format!("/api/v1/notifications/{id}")).await
    }

    /// `GET path` with KEY, answered 200: its JSON.
    async fn get(&self, path: &str) -> Value {
        let a = authorized(self.addr, "GET", path, KEY, "").await;
        assert_eq!(a.status, 200, "{path}: {}", a.text());
        a.json()
    }

    /// Waits until `user` has `n` devices.
    async fn wait_devices(&self, user: i64, n: usize) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let d = self.devices(user).await;
            if d["devices"].as_array().unwrap().len() == n || Instant::now() > deadline {
                return d;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn stop(self) -> RouteCounts {
        self.stop.cancel();
        self.router.await.unwrap()
    }
}

/// `n` users from `first`, each with one GCM device (`token(i)`) and a login in language 1.
fn gcm_users(
    first: i64,
    n: i64,
    token: impl Fn(i64) -> String,
) -> (
    Vec<pusher::platform::registry::Device>,
    Vec<pusher::platform::registry::Login>,
) {
    use pusher::platform::registry::{Device, Login};
    let at_ms = 1_700_000_000_000;
    (0..n)
        .map(|i| {
            let device = Device {
                user_id: first + i,
                platform: pusher::push::Platform::Gcm,
                token: token(i),
                device_id: String::new(),
                platform_id: None,
                app_version: "1".into(),
                registered_ms: at_ms,
                keys: None,
            };
            let login = Login {
                user_id: first + i,
                language_id: Some(1),
                at_ms,
            };
            (device, login)
        })
        .unzip()
}

fn read_topic(brokers: &str, topic: &str, expected: usize) -> Vec<Value> {
    common::platform::read_topic(brokers, topic, expected)
        .into_iter()
        .map(|(_, v)| v)
        .collect()
}

/// A record on `app`'s requests topic, keyed `key`.
fn request_record(app: &str, key: &str, payload: Vec<u8>) -> Record {
    Record {
        topic: pusher::platform::requests::topic(app),
        key: key.into(),
        payload,
    }
}

/// Produces `records`, every one acknowledged.
async fn produce_requests(brokers: &str, records: &[Record]) {
    Producer::new(brokers, Duration::from_secs(5))
        .unwrap()
        .produce_all(records)
        .await
        .unwrap();
}

fn login(user: i64, platform_id: u8, device: &str, token: &str, ts: i64) -> Value {
    json!({"user_id": user, "event_id": 4001, "event_type": 0, "timestamp": ts,
        "pairs": {"languageId": "2", "platformId": platform_id.to_string(), "deviceId": device,
                  "deviceToken": token, "applicationVersion": "1.0.3"}})
}

/// Protobuf varint.
fn varint(mut n: u64, out: &mut Vec<u8>) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// A length-delimited field.
fn field(tag: u8, bytes: &[u8], out: &mut Vec<u8>) {
    out.push((tag << 3) | 2);
    varint(bytes.len() as u64, out);
    out.extend_from_slice(bytes);
}

/// `BatchEventRequest` with one login event, encoded from the wire format by hand.
fn login_proto(user: u64, platform_id: &str, token: &str) -> Vec<u8> {
    let mut event = Vec::new();
    event.push(1 << 3);
    varint(user, &mut event);
    event.push(2 << 3);
    varint(4001, &mut event);
    for (k, v) in [
        ("platformId", platform_id),
        ("deviceToken", token),
        ("languageId", "5"),
    ] {
        let mut pair = Vec::new();
        field(1, k.as_bytes(), &mut pair);
        field(2, v.as_bytes(), &mut pair);
        field(5, &pair, &mut event);
    }
    let mut batch = Vec::new();
    field(1, &event, &mut batch);
    batch
}

/// Logins (JSON and protobuf) register devices; a notification to the user reaches each of
/// them on its platform's topic, with the deep link and the notif_id; a user without devices
/// and other events are counted, not dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_register_devices_and_notifications_reach_each() {
    let p = Platform::start().await;
    let events = json!({"events": [
        login(1337, 1, "phone", "gcm-token-1", 1_458_866_235),
        login(1337, 5, "ipad", "apns-token-1", 1_458_866_236),
        // Pushkin's README example: not a login, left for event mode.
        {"user_id": 123, "event_id": 1, "event_type": 2, "timestamp": 1_458_866_235, "pairs": {"some_constant": "6"}}
    ]});
    let a = post_json(p.addr, "/post_events_json", KEY, &events).await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.json()["accepted"], 3);
    let event_id = a.json()["event_ids"][0].as_str().unwrap().to_owned();
    let proto = authorized(
        p.addr,
        "POST",
        "/post_events_proto",
        KEY,
        login_proto(1337, "2", "apns-token-2"),
    )
    .await;
    assert_eq!(proto.status, 200, "{}", proto.text());

    let devices = p.wait_devices(1337, 3).await;
    assert_eq!(devices["devices"].as_array().unwrap().len(), 3, "{devices}");
    assert_eq!(devices["language_id"], 5, "the last login's language");

    // Pushkin's notification example, to a user with three devices and one with none.
    let notes = json!({"notifications": [
        {"login_id": 1337, "title": "Msg title", "content": "Text of a message", "screen": "welcome_screen"},
        {"login_id": 1338, "title": "Msg title", "content": "Text of a message", "screen": "welcome_screen"}
    ]});
    let a = post_json(p.addr, "/post_notification_json", KEY, &notes).await;
    assert_eq!(a.status, 200, "{}", a.text());
    let ids = a.json()["notif_ids"].clone();

    let gcm = read_topic(p.kafka.bootstrap(), &format!("push-{}_gcm", p.app), 1);
    let apns = read_topic(p.kafka.bootstrap(), &format!("push-{}_apns", p.app), 2);
    assert_eq!((gcm.len(), apns.len()), (1, 2));
    assert_eq!(gcm[0]["to"], "gcm-token-1");
    assert_eq!(gcm[0]["data"]["screen"], "game://welcome_screen");
    assert_eq!(gcm[0]["metadata"]["notif_id"], ids[0]);
    let mut tokens: Vec<&str> = apns
        .iter()
        .map(|m| m["DeviceToken"].as_str().unwrap())
        .collect();
    tokens.sort();
    assert_eq!(tokens, ["apns-token-1", "apns-token-2"]);
    assert_eq!(apns[0]["Payload"]["screen"], "welcome_screen");

    // Pushkin's queue sizes: nobody consumes the push topics here; the router is done.
    let size = |path: &'static str| {
        let p = &p;
        async move {
            let a = authorized(p.addr, "GET", path, KEY, "").await;
            assert_eq!(a.status, 200, "{path}: {}", a.text());
            a.text().parse::<i64>().unwrap()
        }
    };
    assert_eq!(size("/get_apn_sender_queue").await, 2);
    assert_eq!(size("/get_gcm_sender_queue").await, 1);
    let deadline = Instant::now() + Duration::from_secs(20);
    while size("/get_request_queue").await != 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        size("/get_request_queue").await,
        0,
        "the router committed all 6"
    );
    // A user-addressed notification is complete at a verdict per device the router reached:
    // 3 for user 1337, none for 1338; an event's own row waits for no verdict (its pushes'
    // results are under `<event id>.<message>`).
    let status = |id: String| {
        let p = &p;
        async move {
            let v = p.notification(&id).await;
            (v["targets"].clone(), v["pending"].clone())
        }
    };
    let id = |i: usize| ids[i].as_str().unwrap().to_owned();
    assert_eq!(status(id(0)).await, (json!(3), json!(3)));
    assert_eq!(status(id(1)).await, (json!(0), json!(0)));
    assert_eq!(status(event_id).await, (Value::Null, Value::Null));

    let counts = p.stop().await;
    assert_eq!(counts.consumed, 6, "{counts:?}");
    assert_eq!(
        (
            counts.logins,
            counts
                .events
                .skipped
                .get("no_message")
                .copied()
                .unwrap_or(0),
            counts.notifications
        ),
        (3, 1, 2)
    );
    assert_eq!(
        (counts.pushes, counts.no_devices, counts.malformed),
        (3, 1, 0)
    );
}

/// Pushkin's registry rules: one user per token (the newest registration wins, in whatever
/// order they arrive), one token per device, at most 10 devices per user; and the REST calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_rules_and_rest_calls() {
    let p = Platform::start().await;
    let auth = format!("Bearer {KEY}");
    let put = |body: Value| {
        let auth = auth.clone();
        let addr = p.addr;
        async move {
            request(
                addr,
                "PUT",
                "/api/v1/devices",
                &[
                    ("authorization", &auth),
                    ("content-type", "application/json"),
                ],
                serde_json::to_vec(&body).unwrap(),
            )
            .await
        }
    };
    for i in 0..12 {
        let a = put(
            json!({"user_id": 7, "platform": 2, "token": format!("tok-{i}"),
            "device_id": format!("dev-{i}"), "language_id": 4, "app_version": "2.0"}),
        )
        .await;
        assert_eq!(a.status, 200, "{}", a.text());
    }
    let tokens = p.tokens(7).await;
    assert_eq!(tokens.len(), 10, "at most 10 per user: {tokens:?}");
    assert!(
        !tokens.contains(&"tok-0".into()) && !tokens.contains(&"tok-1".into()),
        "the oldest dropped: {tokens:?}"
    );

    // The same device with a new token: the old one goes.
    assert_eq!(
        put(json!({"user_id": 7, "platform": "gcm", "token": "tok-11b", "device_id": "dev-11"}))
            .await
            .status,
        200
    );
    let tokens = p.tokens(7).await;
    assert!(
        tokens.contains(&"tok-11b".into()) && !tokens.contains(&"tok-11".into()),
        "{tokens:?}"
    );

    // One user per token: user 8 logs in with user 7's token.
    assert_eq!(
        put(json!({"user_id": 8, "platform_id": 6, "token": "tok-5"}))
            .await
            .status,
        200
    );
    assert_eq!(p.devices(8).await["devices"][0]["token"], "tok-5");
    assert!(!p.devices(7).await.to_string().contains("\"tok-5\""));
    // A registration without a language is a login all the same (a segment's last_login
    // conditions read it). Seen: none recorded, and no login condition ever matched it.
    let logins = p
        .store
        .pool()
        .get()
        .await
        .unwrap()
        .query(
            "SELECT language_id FROM pusher_logins WHERE app = $1 AND user_id = 8",
            &[&p.app],
        )
        .await
        .unwrap();
    assert_eq!(logins.len(), 1);
    assert_eq!(logins[0].get::<_, Option<i32>>(0), None);
    // An older login event arriving late does not take it back.
    let registry = Registry::new(p.store.pool());
    let old = pusher::platform::registry::Device {
        user_id: 7,
        platform: pusher::push::Platform::Gcm,
        token: "tok-5".into(),
        device_id: String::new(),
        platform_id: None,
        app_version: String::new(),
        registered_ms: 1_000,
        keys: None,
    };
    registry.register(&p.app, &[old], &[]).await.unwrap();
    assert_eq!(p.devices(8).await["devices"][0]["token"], "tok-5");

    let del = |token: &'static str| {
        let addr = p.addr;
        async move {
            let path = format!("/api/v1/devices/{token}");
            authorized(addr, "DELETE", &path, KEY, "").await.status
        }
    };
    assert_eq!(del("tok-5").await, 204);
    assert_eq!(del("tok-5").await, 404);
    assert!(p.devices(8).await["devices"].as_array().unwrap().is_empty());

    // Bad registrations name the field.
    for (body, field) in [
        (
            json!({"user_id": 7, "platform": 3, "token": "x"}),
            "platform",
        ),
        (
            json!({"user_id": 7, "platform_id": 9, "token": "x"}),
            "platform_id",
        ),
        (
            json!({"user_id": 7, "platform": 1, "platform_id": 1, "token": "x"}),
            "platform_id",
        ),
        (json!({"user_id": 7, "platform": 1, "token": ""}), "token"),
        // An FCM topic is no device: its user's pushes would go to every subscriber.
        (
            json!({"user_id": 7, "platform": 2, "token": "/topics/all"}),
            "FCM topic",
        ),
        (
            json!({"user_id": 0, "platform": 1, "token": "x"}),
            "user_id",
        ),
        (
            json!({"user_id": "seven", "platform": 1, "token": "x"}),
            "user_id",
        ),
        (
            json!({"user_id": 7, "platform": 1, "token": "x", "colour": "red"}),
            "colour",
        ),
    ] {
        let a = put(body.clone()).await;
        assert_eq!(a.status, 400, "{body}: {}", a.text());
        assert!(
            a.json()["error"].as_str().unwrap().contains(field),
            "{body}: {}",
            a.text()
        );
    }
    let no_key = request(p.addr, "GET", "/api/v1/users/7/devices", &[], "").await;
    assert_eq!(no_key.status, 401);
    p.stop().await;
}

/// `/api/v1/notifications` and `/api/v1/events` take JSON or protobuf (by Content-Type) and
/// answer 202; hostile bodies are refused naming the problem.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_routes_and_hostile_bodies() {
    let p = Platform::start().await;
    let auth = format!("Bearer {KEY}");
    let a = request(
        p.addr,
        "POST",
        "/api/v1/events",
        &[
            ("authorization", &auth),
            ("content-type", "application/x-protobuf"),
        ],
        login_proto(42, "1", "gcm-42"),
    )
    .await;
    assert_eq!(a.status, 202, "{}", a.text());
    p.wait_devices(42, 1).await;
    let a = post_json(p.addr, "/api/v1/notifications", KEY,
        &json!({"notifications": [{"login_id": 42, "title": "t", "content": "c", "notif_id": "v1-1"}]})).await;
    assert_eq!(a.status, 202, "{}", a.text());
    assert_eq!(a.json()["notif_ids"], json!(["v1-1"]));
    let gcm = read_topic(p.kafka.bootstrap(), &format!("push-{}_gcm", p.app), 1);
    assert_eq!(gcm.len(), 1);
    assert_eq!(gcm[0]["metadata"]["notif_id"], "v1-1");

    for (path, body, needle) in [
        (
            "/post_events_proto",
            vec![0x0a, 0x05, 0x08],
            "malformed protobuf",
        ),
        (
            "/post_events_json",
            b"{\"events\": [{\"event_id\": 1}]}".to_vec(),
            "events[0].user_id",
        ),
        (
            "/post_events_json",
            b"{\"events\": [{\"user_id\": 1, \"event_id\": \"x\"}]}".to_vec(),
            "events[0].event_id",
        ),
        (
            "/post_notification_json",
            b"{\"notifications\": [{\"login_id\": 1}]}".to_vec(),
            "notifications[0].content",
        ),
        ("/post_notification_json", b"[]".to_vec(), "expected struct"),
        // Logins the router could not register: refused here, not dropped there.
        (
            "/post_events_json",
            br#"{"events": [{"user_id": 1, "event_id": 4001, "pairs": {"platformId": "1"}}]}"#
                .to_vec(),
            "events[0].pairs.deviceToken",
        ),
        (
            "/post_events_json",
            br#"{"events": [{"user_id": 1, "event_id": 4001,
                 "pairs": {"platformId": "9", "deviceToken": "t"}}]}"#
                .to_vec(),
            "events[0].pairs.platformId: not a platform",
        ),
    ] {
        let a = authorized(p.addr, "POST", path, KEY, body).await;
        assert_eq!(a.status, 400, "{path}: {}", a.text());
        assert!(a.text().contains(needle), "{path}: {}", a.text());
    }
    let counts = p.stop().await;
    assert_eq!(
        (counts.logins, counts.notifications, counts.pushes),
        (1, 1, 1)
    );
}

/// A segment push reaches every registered device meeting its condition, streamed from the
/// registry in pages, with its progress in the notification's status; a segment whose router
/// died after some pages resumes after the last page it finished.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segments_reach_every_matching_device_and_resume() {
    use pusher::platform::registry::{Device, Login};
    use pusher::push::Platform as P;
    let p = Platform::start().await;
    let registry = Registry::new(p.store.pool());
    // 3,000 users with one device each: platform alternating, language 1..3.
    let devices: Vec<Device> = (0..3000)
        .map(|i| Device {
            user_id: 10_000 + i,
            platform: if i % 2 == 0 { P::Gcm } else { P::Apns },
            token: format!("seg-{i:05}"),
            device_id: String::new(),
            platform_id: None,
            app_version: "2.0".into(),
            registered_ms: 1_700_000_000_000,
            keys: None,
        })
        .collect();
    let logins: Vec<Login> = (0..3000)
        .map(|i| Login {
            user_id: 10_000 + i,
            language_id: Some((i % 3) as i32 + 1),
            at_ms: 1_700_000_000_000,
        })
        .collect();
    registry.register(&p.app, &devices, &logins).await.unwrap();
    let matching: Vec<&Device> = devices
        .iter()
        .enumerate()
        .filter(|(i, d)| d.platform == P::Gcm && i % 3 == 0)
        .map(|(_, d)| d)
        .collect();
    assert_eq!(matching.len(), 500);

    let a = post_json(
        p.addr,
        "/api/v1/segments/push",
        KEY,
        &json!({
        "condition": {"platform": "gcm", "language_id": 1, "last_login_after": 1_600_000_000},
        "title": "Sale", "message": "Everything half price", "screen": "shop",
        "data": {"campaign": "c1"}, "notif_id": "seg-1"}),
    )
    .await;
    assert_eq!(a.status, 202, "{}", a.text());
    let gcm = read_topic(p.kafka.bootstrap(), &format!("push-{}_gcm", p.app), 500);
    assert_eq!(gcm.len(), 500);
    assert!(gcm
        .iter()
        .all(|m| m["data"]["campaign"] == "c1" && m["data"]["screen"] == "game://shop"));
    let status = p.notification("seg-1").await;
    assert_eq!(
        status["segment"],
        json!({"sent": 500, "done": true}),
        "{status}"
    );
    assert_eq!(
        (&status["targets"], &status["pending"]),
        (&json!(500), &json!(500)),
        "no results yet: no pusher runs here: {status}"
    );

    // A router died after the first 1,000 APNs devices of seg-2: the rest only are sent.
    let apns_tokens: Vec<&str> = devices
        .iter()
        .filter(|d| d.platform == P::Apns)
        .map(|d| d.token.as_str())
        .collect();
    registry
        .save_segment_progress(&p.app, "seg-2", apns_tokens[999], 1000, false)
        .await
        .unwrap();
    let a = post_json(
        p.addr,
        "/api/v1/segments/push",
        KEY,
        &json!({
        "condition": {"platform": "apns"}, "message": "m", "notif_id": "seg-2"}),
    )
    .await;
    assert_eq!(a.status, 202, "{}", a.text());
    let apns = read_topic(p.kafka.bootstrap(), &format!("push-{}_apns", p.app), 500);
    assert_eq!(apns.len(), 500, "1,500 APNs devices, 1,000 already sent");
    assert_eq!(
        apns.iter()
            .filter(|m| m["DeviceToken"].as_str().unwrap() <= apns_tokens[999])
            .count(),
        0
    );

    let bad = post_json(
        p.addr,
        "/api/v1/segments/push",
        KEY,
        &json!({"condition": {"colour": "red"}, "message": "m"}),
    )
    .await;
    assert_eq!(bad.status, 400, "{}", bad.text());
    assert!(bad.text().contains("colour"), "{}", bad.text());
    // Values PostgreSQL would refuse are refused at the API, naming the field: accepted, they
    // stopped the router's partition for good (every retry refused again).
    for (condition, field) in [
        (json!({"app_version": "2.0\u{0}"}), "condition.app_version"),
        (
            json!({"last_login_after": 1_700_000_000_000_000i64}),
            "condition.last_login_after",
        ),
        (
            json!({"last_login_before": -1}),
            "condition.last_login_before",
        ),
    ] {
        let bad = post_json(
            p.addr,
            "/api/v1/segments/push",
            KEY,
            &json!({"condition": condition, "message": "m"}),
        )
        .await;
        assert_eq!(bad.status, 400, "{condition}: {}", bad.text());
        assert_eq!(bad.json()["field"], field, "{}", bad.text());
    }
    // One accepted before the API checked (written to the requests topic as it was then),
    // ahead of a good one in its partition: it reaches no device and is counted, and the
    // good one after it is still sent.
    let old = pusher::platform::requests::RequestRecord::Segment {
        notif_id: "seg-refused".into(),
        condition: pusher::platform::requests::Condition {
            last_login_after: Some(1_700_000_000_000_000),
            ..Default::default()
        },
        title: String::new(),
        content: "m".into(),
        screen: String::new(),
        data: Default::default(),
    };
    produce_requests(
        p.kafka.bootstrap(),
        &[request_record(&p.app, "segment:seg-3", old.to_json())],
    )
    .await;
    let a = post_json(
        p.addr,
        "/api/v1/segments/push",
        KEY,
        &json!({"condition": {"platform": "gcm", "language_id": 2}, "message": "m",
                "notif_id": "seg-3"}),
    )
    .await;
    assert_eq!(a.status, 202, "{}", a.text());
    let gcm = read_topic(p.kafka.bootstrap(), &format!("push-{}_gcm", p.app), 1000);
    assert_eq!(gcm.len(), 1000, "seg-1's 500 and seg-3's 500");
    let refused = p.notification("seg-refused").await;
    assert_eq!(
        (&refused["segment"], &refused["targets"]),
        (&json!({"sent": 0, "done": true}), &json!(0)),
        "{refused}"
    );
    let counts = p.stop().await;
    // The refused segment is malformed, not also a segment: the counts add up to consumed.
    assert_eq!(
        (
            counts.consumed,
            counts.segments,
            counts.pushes,
            counts.malformed
        ),
        (4, 3, 1500, 1),
        "{counts:?}"
    );
}

/// A router that joins while another streams a broadcast is given partitions before the
/// broadcast ends: the streaming router polls between pages, serves the rebalance and drops
/// its batch (before, the whole group waited for the broadcast to end). The broadcast still
/// reaches every device exactly once: the partition's owner resumes after the last page
/// finished.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_joining_mid_broadcast_is_served_before_it_ends_and_each_device_gets_one_push() {
    // About 7 s of streaming here (debug build): longer than a rebalance takes to reach the
    // streaming router (its next heartbeat, 2 s at most).
    const DEVICES: i64 = 60_000;
    let p = Platform::start().await;
    let registry = broadcast_started(&p, DEVICES, "bcast").await;
    let within = Duration::from_secs(30);
    let progress = || registry.segment_progress(&p.app, "bcast");
    let joined = Instant::now();
    let second = Membership::default();
    let router = spawn_router(&p.kafka, &p.app, &p.store, &p.stop, second.clone());
    wait_until(within, "the second router got no partitions", || async {
        second.partitions() > 0
    })
    .await;
    let (_, sent, done) = progress().await.unwrap().unwrap();
    assert!(
        !done,
        "the second router waited {:?} for the broadcast to end ({sent} of {DEVICES} sent)",
        joined.elapsed()
    );
    let pushes = read_topic(
        p.kafka.bootstrap(),
        &format!("push-{}_gcm", p.app),
        DEVICES as usize,
    );
    let tokens: std::collections::HashSet<&str> =
        pushes.iter().map(|m| m["to"].as_str().unwrap()).collect();
    assert_eq!(
        (pushes.len(), tokens.len()),
        (DEVICES as usize, DEVICES as usize),
        "every device once"
    );
    assert_eq!(
        progress()
            .await
            .unwrap()
            .map(|(_, sent, done)| (sent, done)),
        Some((DEVICES, true))
    );
    let first = p.stop().await;
    let second = router.await.unwrap();
    assert_eq!(first.consumed + second.consumed, 1, "{first:?} {second:?}");
    assert_eq!(first.segments + second.segments, 1, "{first:?} {second:?}");
}

/// `devices` users with one GCM device each, registered; once the router holds its
/// partitions, a broadcast `notif_id` to all of them, returned once its first page is sent.
async fn broadcast_started(p: &Platform, devices: i64, notif_id: &str) -> Registry {
    let registry = Registry::new(p.store.pool());
    let (d, l) = gcm_users(100_000, devices, |i| format!("b-{i:06}"));
    for (d, l) in d.chunks(5_000).zip(l.chunks(5_000)) {
        registry.register(&p.app, d, l).await.unwrap();
    }
    let within = Duration::from_secs(30);
    wait_until(within, "the router got no partitions", || async {
        p.membership.partitions() >= 2
    })
    .await;
    let a = post_json(
        p.addr,
        "/api/v1/segments/push",
        KEY,
        &json!({"condition": {"platform": "gcm"}, "message": "m", "notif_id": notif_id}),
    )
    .await;
    assert_eq!(a.status, 202, "{}", a.text());
    wait_until(within, "the broadcast did not start", || async {
        registry
            .segment_progress(&p.app, notif_id)
            .await
            .unwrap()
            .is_some_and(|(_, sent, _)| sent != 0)
    })
    .await;
    registry
}

/// A router told to stop mid-broadcast (SIGTERM in a deploy) stops at the next page, its
/// progress saved, and the next router resumes there: every device reached, at most one page
/// twice. Seen: it sent the rest of the segment first, and a segment longer than a deploy's
/// grace period was killed mid-page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_stopping_mid_broadcast_stops_at_a_page_and_the_next_resumes() {
    const DEVICES: i64 = 60_000;
    let mut p = Platform::start().await;
    let registry = broadcast_started(&p, DEVICES, "stopped").await;
    let progress = || registry.segment_progress(&p.app, "stopped");
    p.stop.cancel();
    (&mut p.router).await.unwrap();
    let (_, sent, done) = progress().await.unwrap().unwrap();
    assert!(!done, "the router sent the whole segment before stopping");

    let stop = CancellationToken::new();
    let router = spawn_router(&p.kafka, &p.app, &p.store, &stop, Membership::default());
    wait_until(
        Duration::from_secs(60),
        "the next router did not finish it",
        || async { progress().await.unwrap().is_some_and(|(_, _, done)| done) },
    )
    .await;
    let pushes = read_topic(
        p.kafka.bootstrap(),
        &format!("push-{}_gcm", p.app),
        DEVICES as usize,
    );
    let tokens: std::collections::HashSet<&str> =
        pushes.iter().map(|m| m["to"].as_str().unwrap()).collect();
    assert_eq!(tokens.len(), DEVICES as usize, "every device reached");
    assert!(
        pushes.len() <= DEVICES as usize + 1_000,
        "{} pushes: more than one page twice (stopped at {sent})",
        pushes.len()
    );
    stop.cancel();
    router.await.unwrap();
}

/// A keyed request retried after Kafka's answer was lost writes its notification's record
/// twice, with one notif_id: both in one batch are routed once (one push per device) and the
/// partition goes on. Seen: setting both targets in one statement failed ("ON CONFLICT DO
/// UPDATE command cannot affect row a second time"), retried forever, the partition stuck.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notification_record_written_twice_is_routed_once() {
    let p = Platform::start().await;
    let registry = Registry::new(p.store.pool());
    registry
        .register(&p.app, &[android(42, "twice-token", 1_000)], &[])
        .await
        .unwrap();
    let record = json!({"kind": "notification", "user_id": 42, "title": "T", "content": "C",
                        "notif_id": "twice"})
    .to_string()
    .into_bytes();
    // Beside them, one written past the API with a notif_id PostgreSQL refuses: counted as
    // malformed, where retrying it stopped the partition for good.
    let unusable = json!({"kind": "notification", "user_id": 42, "title": "T", "content": "C",
                          "notif_id": "nul\u{0}id"})
    .to_string()
    .into_bytes();
    let records =
        [&record, &unusable, &record].map(|payload| request_record(&p.app, "42", payload.clone()));
    produce_requests(p.kafka.bootstrap(), &records).await;
    common::platform::wait_routed(p.kafka.bootstrap(), &p.app).await;
    let pushes = read_topic(p.kafka.bootstrap(), &format!("push-{}_gcm", p.app), 1);
    assert_eq!(pushes.len(), 1, "one push: {pushes:?}");
    assert_eq!(pushes[0]["metadata"]["notif_id"], "twice");
    let row = p
        .store
        .notification(&p.app, "twice")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.targets, Some(1));
    let counts = p.stop().await;
    assert_eq!(
        (counts.consumed, counts.pushes, counts.malformed),
        (3, 1, 1),
        "{counts:?}"
    );
}

/// Requests written past the API's checks whose pushes could never be sent (a 100 KB title;
/// a segment whose `data` outgrows every payload) are counted as malformed and the partition
/// goes on; so is a segment whose condition PostgreSQL refuses, counted once. Seen: a
/// notification near 1 MB made a push Kafka refused (MessageSizeTooLarge), the batch was
/// retried for good and the router's partitions stalled; under that, its pushes were written
/// and each failed `payload_too_large` without its notification; the refused segment counted
/// as a segment and as malformed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_no_push_can_carry_are_malformed_not_routed() {
    let p = Platform::start().await;
    Registry::new(p.store.pool())
        .register(&p.app, &[android(42, "carry-token", 1_000)], &[])
        .await
        .unwrap();
    let big = "T".repeat(100_000);
    let records = [
        json!({"kind": "notification", "user_id": 42, "title": big, "content": "C",
               "notif_id": "too-big"}),
        json!({"kind": "segment", "notif_id": "big-data", "condition": {}, "title": "T",
               "content": "C", "data": {"blob": big}}),
        json!({"kind": "segment", "notif_id": "bad-when", "condition":
               {"last_login_after": 999_999_999_999_999_i64}, "title": "T", "content": "C"}),
        json!({"kind": "notification", "user_id": 42, "title": "T", "content": "C",
               "notif_id": "fits"}),
    ]
    .map(|r| request_record(&p.app, "42", r.to_string().into_bytes()));
    produce_requests(p.kafka.bootstrap(), &records).await;
    common::platform::wait_routed(p.kafka.bootstrap(), &p.app).await;
    let pushes = read_topic(p.kafka.bootstrap(), &format!("push-{}_gcm", p.app), 1);
    assert_eq!(pushes.len(), 1, "only the push that fits: {pushes:?}");
    assert_eq!(pushes[0]["metadata"]["notif_id"], "fits");
    let counts = p.stop().await;
    assert_eq!(
        (
            counts.consumed,
            counts.notifications,
            counts.segments,
            counts.malformed,
            counts.pushes
        ),
        (4, 1, 0, 3, 1),
        "{counts:?}"
    );
}

/// A batch that fails after some of its pushes are in Kafka (one app's pushes acknowledged,
/// the next app's statement failing, as in a PostgreSQL failover) is redone whole: what Kafka
/// already acknowledged is not produced again. Seen: each retry sent the first app's pushes
/// again, once per retry for as long as the fault lasted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_redone_after_a_partial_failure_sends_each_push_once() {
    let two = TwoApps::start("rtp").await;
    let (a, b) = (&two.a, &two.b);
    let records = [a, b].map(|app| {
        let notification = json!({"kind": "notification", "user_id": 1, "title": "T",
                                  "content": "C", "notif_id": format!("n-{app}")});
        request_record(app, "1", notification.to_string().into_bytes())
    });
    let (pushes, counts) = two.route_failing_b_once(&records).await;
    let mut tokens: Vec<&str> = pushes.iter().map(|(_, key, _)| key.as_str()).collect();
    tokens.sort();
    assert_eq!(
        tokens,
        [format!("{a}-token"), format!("{b}-token")],
        "each push once"
    );
    assert_eq!(
        (counts.consumed, counts.notifications, counts.pushes),
        (2, 2, 2),
        "one batch, counted once: {counts:?}"
    );
}

/// A batch retried in place after its event phase was done (pushes in Kafka, claims marked
/// sent) and a later statement failed (another app's, as in a failover): the retry skips the
/// finished phase and counts its pushes as pushes, once. Seen: the retry found their claims
/// sent and counted them `already_sent`, so `pusher_route_total{what="event_push"}` never
/// counted pushes that went out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_retried_after_its_events_went_out_counts_them_as_pushes() {
    let two = TwoApps::start("rte").await;
    let message: pusher::platform::messages::Message = serde_json::from_value(json!({
        "name": "bonus", "event_id": 17, "cooldown_s": 3600,
        "localizations": [{"language_id": 1, "text": "bonus"}]}))
    .unwrap();
    pusher::platform::messages::Messages::new(two.store.pool())
        .put(&two.a, &message)
        .await
        .unwrap();
    let event = json!({"kind": "event", "id": "ev-1", "user_id": 1, "event_id": 17});
    let notification = json!({"kind": "notification", "user_id": 1, "title": "T",
                              "content": "C", "notif_id": "n-b"});
    let records = [
        request_record(&two.a, "1", event.to_string().into_bytes()),
        request_record(&two.b, "1", notification.to_string().into_bytes()),
    ];
    let (pushes, counts) = two.route_failing_b_once(&records).await;
    assert_eq!(pushes.len(), 2, "each push once: {pushes:?}");
    let e = &counts.events;
    assert_eq!(
        (e.events, e.notifications, e.pushes, e.already_sent),
        (1, 1, 1, 0),
        "{counts:?}"
    );
    assert!(e.skipped.is_empty(), "{counts:?}");
}

/// Two apps routed in one batch: `a`, and `b` after it (the router handles apps in name
/// order), each with user 1's Android device `<app>-token`.
struct TwoApps {
    a: String,
    b: String,
    kafka: TestKafka,
    store: Store,
}

impl TwoApps {
    async fn start(prefix: &str) -> TwoApps {
        let a = common::platform::fresh_app(prefix);
        let b = format!("{a}b");
        let topics: Vec<String> = [&a, &b]
            .iter()
            .flat_map(|app| [format!("push-{app}-requests"), format!("push-{app}_gcm")])
            .collect();
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        // One partition each: both records are fetched together and make one batch.
        let kafka = TestKafka::start(&names, 1).await;
        let store = common::platform::store().await;
        let registry = Registry::new(store.pool());
        for app in [&a, &b] {
            registry
                .register(app, &[android(1, &format!("{app}-token"), 1_000)], &[])
                .await
                .unwrap();
        }
        TwoApps { a, b, kafka, store }
    }

    /// Produces `records`, then routes them while the first statement that records how many
    /// devices b's notification reached fails (as in a PostgreSQL failover), until the two
    /// GCM topics hold two pushes: those pushes (topic, key, JSON) and the router's counts.
    async fn route_failing_b_once(
        &self,
        records: &[Record],
    ) -> (Vec<(String, String, Value)>, RouteCounts) {
        let (a, b) = (&self.a, &self.b);
        // A sequence, which a rollback does not undo, counts the tries.
        let pg = self.store.pool().get().await.unwrap();
        let tag = b.replace('-', "_");
        let trigger = common::platform::TestTrigger::create(
            &pg,
            &format!("test_targets_{tag}"),
            "BEFORE INSERT",
            "pusher_notifications",
            &format!(
                "IF NEW.app = '{b}' AND nextval('test_targets_{tag}') = 1 THEN
                 RAISE EXCEPTION 'injected: failover';
                 END IF;"
            ),
        )
        .await;
        produce_requests(self.kafka.bootstrap(), records).await;
        let stop = CancellationToken::new();
        let router = spawn_router(&self.kafka, a, &self.store, &stop, Membership::default());
        let both = [format!("push-{a}_gcm"), format!("push-{b}_gcm")];
        let both: Vec<&str> = both.iter().map(String::as_str).collect();
        let pushes = common::platform::read_topics(self.kafka.bootstrap(), &both, 2);
        stop.cancel();
        let counts = router.await.unwrap();
        let tries = trigger.drop(&pg).await;
        assert!(
            tries >= 2,
            "b's statement failed once, then passed: {tries}"
        );
        (pushes, counts)
    }
}

/// The router (`set_targets`) and the API (`record_accepted`) write the same notifications'
/// rows at once, given them in opposite orders: both lock them in notif_id order, so neither
/// deadlocks. Seen: 40P01 between the two, a failed request or a retried batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn router_and_api_lock_notification_rows_in_one_order() {
    let (store, _, app) = fresh_registry("lock").await;
    for round in 0..5 {
        let ids: Vec<String> = (0..2000).map(|i| format!("r{round}-{i:05}")).collect();
        let reached: Vec<(&str, u32)> = ids.iter().rev().map(|id| (id.as_str(), 1)).collect();
        let accepted: Vec<(String, Option<u32>)> =
            ids.iter().map(|id| (id.clone(), Some(1))).collect();
        let (routed, recorded) = tokio::join!(
            store.set_targets(&app, &reached),
            store.record_accepted(&app, &accepted)
        );
        routed.unwrap();
        recorded.unwrap();
    }
}

/// A notification that reached no device (a user without devices, a segment nothing matches)
/// is complete when the router counts 0, and no verdict will ever arrive: `pusher results`
/// still calls its webhook, once. A segment of exactly one page (its next page empty) is
/// counted and marked done. (That its count now comes before its last pushes, not after, is
/// by construction in `stream_segment`: the order is not observable from here.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_reached_no_device_is_complete_and_calls_its_webhook() {
    let p = Platform::start().await;
    let registry = Registry::new(p.store.pool());
    let page = 1000; // the router's segment page
    let (devices, logins) = gcm_users(20_000, page, |i| format!("page-{i:05}"));
    registry.register(&p.app, &devices, &logins).await.unwrap();
    let notes = json!({"notifications": [{"login_id": 1338, "title": "T", "content": "C"}]});
    let a = post_json(p.addr, "/post_notification_json", KEY, &notes).await;
    assert_eq!(a.status, 200, "{}", a.text());
    let user = a.json()["notif_ids"][0].as_str().unwrap().to_owned();
    for (id, language) in [("seg-none", 99), ("seg-page", 1)] {
        let a = post_json(
            p.addr,
            "/api/v1/segments/push",
            KEY,
            &json!({"condition": {"language_id": language}, "message": "m", "notif_id": id}),
        )
        .await;
        assert_eq!(a.status, 202, "{}", a.text());
    }
    // The three are routed in any order (the requests topic has two partitions).
    let deadline = Instant::now() + Duration::from_secs(20);
    for id in ["seg-page", "seg-none", user.as_str()] {
        while p.notification(id).await["targets"].is_null() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let seg = p.notification("seg-page").await;
    assert_eq!(
        (&seg["targets"], &seg["segment"]),
        (&json!(page), &json!({"sent": page, "done": true})),
        "{seg}"
    );
    for id in [user.as_str(), "seg-none"] {
        let s = p.notification(id).await;
        assert_eq!(
            (&s["targets"], &s["pending"]),
            (&json!(0), &json!(0)),
            "{s}"
        );
    }

    // The app's webhook, and pusher results (no feedback topic has records).
    let (hook, mut calls) = common::platform::webhook_receiver().await;
    let stop = CancellationToken::new();
    let writer = common::platform::spawn_results(
        p.kafka.bootstrap(),
        &p.app,
        &p.store,
        common::platform::hooks_of(&p.app, hook),
        &stop,
    );
    let mut bodies = Vec::new();
    for _ in 0..2 {
        let body = next_within(
            &mut calls,
            Duration::from_secs(20),
            "a webhook call for each notification that reached no device",
        )
        .await;
        bodies.push(body);
    }
    bodies.sort_by_key(|b| b["notif_id"].as_str().unwrap().to_owned());
    let mut expected = vec![
        json!({"app": p.app, "notif_id": user, "targets": 0, "counts": {}}),
        json!({"app": p.app, "notif_id": "seg-none", "targets": 0, "counts": {}}),
    ];
    expected.sort_by_key(|b| b["notif_id"].as_str().unwrap().to_owned());
    assert_eq!(bodies, expected);
    // Claimed once: nothing is left for another results process.
    assert!(p
        .store
        .claim_reached_none(&[&p.app])
        .await
        .unwrap()
        .is_empty());
    stop.cancel();
    let counts = writer.await.unwrap();
    assert_eq!((counts.webhooks, counts.consumed), (2, 0), "{counts:?}");
    assert!(calls.try_recv().is_err(), "no second call");
    let routed = p.stop().await;
    assert_eq!(
        (
            routed.notifications,
            routed.segments,
            routed.pushes,
            routed.no_devices
        ),
        (1, 2, page as u64, 1),
        "{routed:?}"
    );
}

/// The per-user limit's DELETE and a concurrent move of one of its tokens: user 1 registers an
/// 11th device while another transaction moves user 1's oldest token to user 2. Seen: the
/// limit's DELETE matched the token alone, waited for the move, and then deleted user 2's
/// newest device. It is kept now; user 1 still ends with at most 10.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_device_limit_never_deletes_a_token_moved_to_another_user_meanwhile() {
    let (store, registry, app) = fresh_registry("lim").await;
    let device = |user: i64, token: String, at_s: i64| android(user, &token, at_s);
    let ten: Vec<_> = (0..10)
        .map(|i| device(1, format!("t{i}"), 1_000 + i))
        .collect();
    registry.register(&app, &ten, &[]).await.unwrap();

    let mut other = pg_client().await;
    let moving = other.transaction().await.unwrap();
    moving
        .execute(
            "UPDATE pusher_devices SET user_id = 2, updated_at = to_timestamp(5000)
             WHERE app = $1 AND token = 't0'",
            &[&app],
        )
        .await
        .unwrap();
    let eleventh = {
        let registry = registry.clone();
        let app = app.clone();
        tokio::spawn(async move {
            registry
                .register(&app, &[device(1, "t10".into(), 2_000)], &[])
                .await
        })
    };
    // The registration waits for the move's row lock.
    let watcher = store.pool().get().await.unwrap();
    wait_until(
        Duration::from_secs(10),
        "the limit's DELETE never waited",
        || async {
            let waiting: i64 = watcher
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity
                     WHERE wait_event_type = 'Lock' AND query LIKE '%DELETE FROM pusher_devices%'",
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            waiting > 0
        },
    )
    .await;
    moving.commit().await.unwrap();
    eleventh.await.unwrap().unwrap();
    assert_eq!(
        tokens_of(&registry, &app, 2).await,
        ["t0"],
        "user 2's newest device"
    );
    let first = tokens_of(&registry, &app, 1).await;
    assert_eq!(first.len(), 10, "{first:?}");
    assert!(first.contains(&"t10".to_owned()), "{first:?}");
}

/// One token per (user, device id), whatever order logins arrive in: a device's old token whose
/// login is routed after the new one's (router lag, a PUT beside the events) stays out. Seen:
/// it was inserted again, and the device had two tokens.
#[tokio::test]
async fn a_late_login_with_a_devices_old_token_does_not_bring_it_back() {
    let (_store, registry, app) = fresh_registry("late").await;
    let device = |token: &str, at_s: i64| pusher::platform::registry::Device {
        device_id: "phone".into(),
        ..android(7, token, at_s)
    };
    registry
        .register(&app, &[device("new", 2_000)], &[])
        .await
        .unwrap();
    registry
        .register(&app, &[device("old", 1_000)], &[])
        .await
        .unwrap();
    assert_eq!(tokens_of(&registry, &app, 7).await, ["new"]);
    // A newer login with another token still replaces it.
    registry
        .register(&app, &[device("newer", 3_000)], &[])
        .await
        .unwrap();
    assert_eq!(tokens_of(&registry, &app, 7).await, ["newer"]);
}

/// Two logins of one device (user, device id) with different tokens at the same second, in one
/// batch (Pushkin's seconds: an app start's login and a token refresh right after it): the
/// later one stays, as one after the other would leave it. Seen: each deleted the other, and
/// the device had no token until its next login.
#[tokio::test]
async fn two_logins_of_one_device_in_one_second_keep_the_later_token() {
    let (_store, registry, app) = fresh_registry("tie").await;
    let device = |token: &str| pusher::platform::registry::Device {
        device_id: "phone".into(),
        ..android(7, token, 1_000)
    };
    registry
        .register(&app, &[device("b-first"), device("a-later")], &[])
        .await
        .unwrap();
    assert_eq!(tokens_of(&registry, &app, 7).await, ["a-later"]);
    // A device id of another user is another device.
    let other = pusher::platform::registry::Device {
        device_id: "phone".into(),
        ..android(8, "c-other-user", 1_000)
    };
    registry
        .register(&app, &[other, device("d-newest")], &[])
        .await
        .unwrap();
    assert_eq!(tokens_of(&registry, &app, 7).await, ["d-newest"]);
    assert_eq!(tokens_of(&registry, &app, 8).await, ["c-other-user"]);
}

/// Registrations of one user at the same moment, each one device with its login (as the API
/// and login events register): the user keeps at most 10 devices. Seen: 30 concurrent
/// registrations left 16, each trim seeing only its own insert.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_registrations_of_one_user_keep_ten_devices() {
    // A pool of 16 connections, so that the registrations overlap as the API's do.
    let mut config = common::platform::pg();
    config.pool_size = 16;
    let registry = Registry::new(Store::new(&config).unwrap().pool());
    let app = common::platform::fresh_app("conc");
    common::platform::store().await;
    let tasks: Vec<_> = (0..30)
        .map(|i| {
            let (registry, app) = (registry.clone(), app.clone());
            tokio::spawn(async move {
                let device = pusher::platform::registry::Device {
                    device_id: format!("d{i}"),
                    ..android(500, &format!("conc-{i:02}"), 1_000 + i)
                };
                let login = pusher::platform::registry::Login {
                    user_id: 500,
                    language_id: None,
                    at_ms: (1_000 + i) * 1000,
                };
                registry.register(&app, &[device], &[login]).await.unwrap();
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(tokens_of(&registry, &app, 500).await.len(), 10);
}

/// A token removed through the API (`DELETE /api/v1/devices/{token}`: a logout) is not
/// brought back by a login older than the removal that the router reads after it (a router
/// behind, a batch redone); a registration after the removal brings it back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_token_is_not_brought_back_by_an_older_login() {
    let p = Platform::start().await;
    let registry = Registry::new(p.store.pool());
    let now_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    registry
        .register(&p.app, &[android(7, "logged-out", now_s - 60)], &[])
        .await
        .unwrap();
    let deleted = authorized(p.addr, "DELETE", "/api/v1/devices/logged-out", KEY, "").await;
    assert_eq!(deleted.status, 204, "{}", deleted.text());
    registry
        .register(&p.app, &[android(7, "logged-out", now_s - 30)], &[])
        .await
        .unwrap();
    assert!(tokens_of(&registry, &p.app, 7).await.is_empty());
    // A login in the second of the removal (Pushkin's seconds; an account switch: the token
    // moves to the user who logs in next) is taken.
    let deleted = authorized(p.addr, "DELETE", "/api/v1/devices/other-token", KEY, "").await;
    assert_eq!(deleted.status, 404, "{}", deleted.text());
    let removed_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    registry
        .register(&p.app, &[android(8, "other-token", removed_s)], &[])
        .await
        .unwrap();
    assert_eq!(tokens_of(&registry, &p.app, 8).await, ["other-token"]);
    registry
        .register(&p.app, &[android(7, "logged-out", now_s + 1)], &[])
        .await
        .unwrap();
    assert_eq!(tokens_of(&registry, &p.app, 7).await, ["logged-out"]);
    p.stop().await;
}

/// A token its service called invalid stays out of the registry for a registration older than
/// the verdict, whenever that registration arrives (a login read again after a router restart,
/// or one that waited in the requests topic behind the verdict); a newer one brings it back.
/// Seen: the late older login inserted it again, and the next push to it failed again.
#[tokio::test]
async fn a_token_refused_by_its_service_is_not_brought_back_by_an_older_login() {
    let (store, registry, app) = fresh_registry("dead").await;
    let device = android;
    let verdict = |token: &str, at: i64| pusher::platform::store::ResultRow {
        app: app.clone(),
        notif_id: "n1".into(),
        token: token.into(),
        platform: "gcm".into(),
        outcome: "token_invalid".into(),
        reason: "UNREGISTERED".into(),
        at_ms: at * 1000,
        invalid_since_ms: None,
    };
    registry
        .register(
            &app,
            &[device(7, "dead", 1_000), device(7, "alive", 1_000)],
            &[],
        )
        .await
        .unwrap();
    // Two verdicts for one token in one batch, and a later batch with an older one.
    let removed = store
        .forget_invalid_tokens(&[verdict("dead", 1_500), verdict("dead", 2_000)])
        .await
        .unwrap();
    assert_eq!(removed, 1);
    store
        .forget_invalid_tokens(&[verdict("dead", 1_200)])
        .await
        .unwrap();
    assert_eq!(tokens_of(&registry, &app, 7).await, ["alive"]);

    // Logins older than the newest verdict, for this user or another, replayed: still out.
    registry
        .register(
            &app,
            &[device(7, "dead", 1_000), device(8, "dead", 1_999)],
            &[],
        )
        .await
        .unwrap();
    assert_eq!(tokens_of(&registry, &app, 7).await, ["alive"]);
    assert!(tokens_of(&registry, &app, 8).await.is_empty());
    // Another app's token of that name is not affected.
    let other = common::platform::fresh_app("dead-other");
    registry
        .register(&other, &[device(7, "dead", 1_000)], &[])
        .await
        .unwrap();
    assert_eq!(tokens_of(&registry, &other, 7).await, ["dead"]);

    // Registered after the verdict: the token is back, and a verdict about the message before
    // that registration does not remove it.
    registry
        .register(&app, &[device(8, "dead", 2_001)], &[])
        .await
        .unwrap();
    assert_eq!(tokens_of(&registry, &app, 8).await, ["dead"]);
    let removed = store
        .forget_invalid_tokens(&[verdict("dead", 2_000)])
        .await
        .unwrap();
    assert_eq!(removed, 0);
    assert_eq!(tokens_of(&registry, &app, 8).await, ["dead"]);

    // APNs says since when a token is invalid: registered after that moment, it is a new
    // registration and stays, though the message was consumed later still; registered
    // before it, it goes.
    let since = |token: &str, at: i64, since: i64| pusher::platform::store::ResultRow {
        platform: "apns".into(),
        reason: "Unregistered".into(),
        invalid_since_ms: Some(since * 1000),
        ..verdict(token, at)
    };
    registry
        .register(&app, &[device(10, "reinstalled", 3_000)], &[])
        .await
        .unwrap();
    let removed = store
        .forget_invalid_tokens(&[since("reinstalled", 5_000, 2_500)])
        .await
        .unwrap();
    assert_eq!(removed, 0);
    assert_eq!(tokens_of(&registry, &app, 10).await, ["reinstalled"]);
    let removed = store
        .forget_invalid_tokens(&[since("reinstalled", 5_000, 4_000)])
        .await
        .unwrap();
    assert_eq!(removed, 1);

    // Tombstones older than what is kept go; younger ones stay.
    registry
        .register(&app, &[device(9, "dead2", 1_000)], &[])
        .await
        .unwrap();
    store
        .forget_invalid_tokens(&[verdict("dead2", 1_500)])
        .await
        .unwrap();
    let pruned = store
        .prune_dead_tokens(std::time::Duration::from_secs(3600))
        .await
        .unwrap();
    assert!(
        pruned >= 1,
        "verdicts from 1970 are older than an hour: {pruned}"
    );
    registry
        .register(&app, &[device(9, "dead2", 1_000)], &[])
        .await
        .unwrap();
    assert_eq!(tokens_of(&registry, &app, 9).await, ["dead2"]);
}

/// A batch of logins (`register`) and a batch of invalid-token verdicts
/// (`forget_invalid_tokens`) on the same devices at once, given them in opposite orders: both
/// lock the devices in token order, so neither deadlocks. Seen: 40P01 between the router and
/// `pusher results`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_and_invalid_token_verdicts_lock_devices_in_one_order() {
    let (store, registry, app) = fresh_registry("devlock").await;
    for round in 0..5 {
        let tokens: Vec<String> = (0..2000).map(|i| format!("r{round}-{i:05}")).collect();
        let devices = |at_s: i64| -> Vec<_> {
            tokens
                .iter()
                .enumerate()
                .map(|(i, t)| android(i as i64, t, at_s))
                .collect()
        };
        registry.register(&app, &devices(1_000), &[]).await.unwrap();
        let verdicts: Vec<pusher::platform::store::ResultRow> = tokens
            .iter()
            .rev()
            .map(|t| pusher::platform::store::ResultRow {
                app: app.clone(),
                notif_id: "n".into(),
                token: t.clone(),
                platform: "gcm".into(),
                outcome: "token_invalid".into(),
                reason: String::new(),
                at_ms: 2_000_000,
                invalid_since_ms: None,
            })
            .collect();
        let again = devices(1_500);
        let (registered, forgotten) = tokio::join!(
            registry.register(&app, &again, &[]),
            store.forget_invalid_tokens(&verdicts)
        );
        registered.unwrap();
        assert_eq!(
            forgotten.unwrap(),
            2000,
            "every device registered before the verdict"
        );
    }
}

/// Two verdicts for one (notification, token) within one second, the newer stored first: the
/// older, arriving later, does not replace it. Seen: times were kept in whole seconds, and the
/// older won the tie.
#[tokio::test]
async fn of_two_verdicts_in_one_second_the_newer_stays() {
    let (store, _, app) = fresh_registry("ms").await;
    let verdict = |outcome: &str, timestamp: i64| {
        pusher::platform::results::result_of(&json!({"from": "t1", "metadata": {
            "notif_id": "n1", "game": app, "timestamp": timestamp, "outcome": outcome}}))
        .unwrap()
    };
    store
        .store_results(&[verdict("delivered", 1_700_000_000_900)])
        .await
        .unwrap();
    store
        .store_results(&[verdict("failed", 1_700_000_000_100)])
        .await
        .unwrap();
    let counts = store.result_counts(&app, "n1").await.unwrap();
    assert_eq!(counts, [("delivered".to_owned(), 1)].into());
}

/// A login without a language keeps the user's (Seen: it stored 1, English, over a user's
/// Spanish); a user who never said one has none, so event mode sends the default's texts.
#[tokio::test]
async fn a_login_without_a_language_keeps_the_users() {
    let (store, registry, app) = fresh_registry("lang").await;
    let login =
        |user_id: i64, language_id: Option<i32>, at_ms: i64| pusher::platform::registry::Login {
            user_id,
            language_id,
            at_ms,
        };
    registry
        .register(&app, &[], &[login(1, Some(3), 1_000)])
        .await
        .unwrap();
    registry
        .register(&app, &[], &[login(1, None, 2_000)])
        .await
        .unwrap();
    assert_eq!(registry.language_of(&app, 1).await.unwrap(), Some(3));
    // In one batch too, whichever order: the newest login's time, the newest language said.
    registry
        .register(
            &app,
            &[],
            &[
                login(2, None, 5_000),
                login(2, Some(4), 4_000),
                login(2, Some(5), 3_000),
            ],
        )
        .await
        .unwrap();
    assert_eq!(registry.language_of(&app, 2).await.unwrap(), Some(4));
    registry
        .register(&app, &[], &[login(3, None, 1_000)])
        .await
        .unwrap();
    assert_eq!(registry.language_of(&app, 3).await.unwrap(), None);
    let languages = pusher::platform::messages::Messages::new(store.pool())
        .languages(&app, &[1, 2, 3])
        .await
        .unwrap();
    assert_eq!(languages, std::collections::HashMap::from([(1, 3), (2, 4)]));
    // A newer login that says one changes it.
    registry
        .register(&app, &[], &[login(1, Some(2), 3_000)])
        .await
        .unwrap();
    assert_eq!(registry.language_of(&app, 1).await.unwrap(), Some(2));
    // An older login that says one, arriving after a newer one that said none, fills it in
    // without moving the last login back; an older one never replaces a language.
    registry
        .register(&app, &[], &[login(3, Some(6), 500)])
        .await
        .unwrap();
    assert_eq!(registry.language_of(&app, 3).await.unwrap(), Some(6));
    registry
        .register(&app, &[], &[login(3, Some(7), 600)])
        .await
        .unwrap();
    assert_eq!(registry.language_of(&app, 3).await.unwrap(), Some(6));

    // A segment by language counts a user who never said one as the default language.
    let device = |user_id: i64, token: &str| android(user_id, token, 1);
    registry
        .register(
            &app,
            &[device(2, "t-spanish"), device(4, "t-unsaid")],
            &[login(4, None, 1_000)],
        )
        .await
        .unwrap();
    let condition = |language_id: i32| pusher::platform::requests::Condition {
        language_id: Some(language_id),
        ..Default::default()
    };
    for (language, default, expected) in [
        (4, 1, vec!["t-spanish"]),
        (1, 1, vec!["t-unsaid"]),
        (4, 4, vec!["t-spanish", "t-unsaid"]),
    ] {
        let tokens: Vec<String> = registry
            .segment_page(&app, &condition(language), default, "", 100)
            .await
            .unwrap()
            .into_iter()
            .map(|d| d.token)
            .collect();
        assert_eq!(tokens, expected, "language {language}, default {default}");
    }
}

/// The store (schema made), its registry and a new app named from `prefix`.
async fn fresh_registry(prefix: &str) -> (Store, Registry, String) {
    let store = common::platform::store().await;
    let registry = Registry::new(store.pool());
    (store, registry, common::platform::fresh_app(prefix))
}

/// An Android phone of `user_id` with `token`, registered at `at_s` (Unix seconds).
fn android(user_id: i64, token: &str, at_s: i64) -> pusher::platform::registry::Device {
    pusher::platform::registry::Device {
        user_id,
        platform: pusher::push::Platform::Gcm,
        token: token.into(),
        device_id: String::new(),
        platform_id: Some(1),
        app_version: String::new(),
        registered_ms: at_s * 1000,
        keys: None,
    }
}

/// A user's device tokens in the registry, sorted.
async fn tokens_of(registry: &Registry, app: &str, user: i64) -> Vec<String> {
    let mut tokens: Vec<String> = registry
        .devices_of(app, &[user])
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.token)
        .collect();
    tokens.sort();
    tokens
}
