//! Event mode against real parts: the API over TCP, Kafka (mock cluster or Tansu), the
//! machine's PostgreSQL, one or two `pusher route`s. Pushkin's documented event examples
//! (JSON verbatim, protobuf from the wire format by hand) trigger messages in each user's
//! language; cooldown holds with two routers and every event sent twice; opt-outs, the
//! per-device limit and duplicate suppression each end as counted reasons or `rate_limited`
//! verdicts. Counts add up in every test.

mod common;
#[path = "common/kafka.rs"]
mod kafka;
#[path = "common/pg_proxy.rs"]
mod pg_proxy;
#[path = "support/watched.rs"]
mod watched;

use common::http::{post_json, request};
use common::platform::{pg, read_topic, read_topics};
use kafka::TestKafka;
use pusher::platform::api::{serve, ApiState};
use pusher::platform::claims::{Claim, Claimed, Claims, Limit};
use pusher::platform::consume::Membership;
use pusher::platform::events::{self, DeviceLimits, Event, EventSettings, EventStores, Produced};
use pusher::platform::messages::{Message, Messages};
use pusher::platform::produce::Producer;
use pusher::platform::registry::{login_of, Registry};
use pusher::platform::route::{self, RouteCounts, RouteSettings};
use pusher::platform::store::Store;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const KEY: &str = "events-key-0123456789abcdef";

struct Platform {
    app: String,
    kafka: TestKafka,
    addr: SocketAddr,
    stop: CancellationToken,
    events: EventSettings,
    routers: Vec<tokio::task::JoinHandle<RouteCounts>>,
}

impl Platform {
    /// The API and `routers` routers in one group, with these per-device limits.
    async fn start(routers: usize, limits: DeviceLimits) -> Platform {
        let app = common::platform::fresh_app("ev");
        let topics = [
            format!("push-{app}-requests"),
            format!("push-{app}_apns"),
            format!("push-{app}_gcm"),
            format!("push-{app}-apns-feedbacks"),
            format!("push-{app}-gcm-feedbacks"),
        ];
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        let kafka = TestKafka::start(&names, 4).await;
        let store = common::platform::store().await;
        let settings = common::platform::api_settings(&app, KEY);
        let producer = Producer::new(kafka.bootstrap(), Duration::from_secs(5)).unwrap();
        let state = ApiState::new(settings, producer, store.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        tokio::spawn(serve(listener, state, stop.clone()));
        let events = EventSettings {
            deeplink_base: "game".into(),
            limits: HashMap::from([(app.clone(), limits)]),
            ..EventSettings::default()
        };
        let mut p = Platform {
            app,
            kafka,
            addr,
            stop,
            events,
            routers: Vec::new(),
        };
        for _ in 0..routers {
            p.add_router(common::platform::pg(), Vec::new());
        }
        p
    }

    /// One more router in the group, on this PostgreSQL, with these consumer properties.
    fn add_router(
        &mut self,
        pg: pusher::config::PgConfig,
        consumer_extra: Vec<(String, String)>,
    ) -> Membership {
        let membership = Membership::default();
        let run = tokio::spawn(route::run(
            RouteSettings {
                brokers: self.kafka.bootstrap().to_owned(),
                group: format!("route-{}", self.app),
                deeplink_base: "game".into(),
                batch_size: 100,
                offset_reset: "earliest".into(),
                events: self.events.clone(),
                membership: membership.clone(),
                consumer_extra,
            },
            Registry::new(Store::new(&pg).unwrap().pool()),
            Producer::new(self.kafka.bootstrap(), Duration::from_secs(5)).unwrap(),
            self.stop.clone(),
        ));
        self.routers
            .push(tokio::spawn(async move { run.await.unwrap().unwrap() }));
        membership
    }

    async fn put_message(&self, name: &str, message: Value) -> Value {
        let auth = format!("Bearer {KEY}");
        let a = request(
            self.addr,
            "PUT",
            &format!("/api/v1/messages/{name}"),
            &[
                ("authorization", &auth),
                ("content-type", "application/json"),
            ],
            message.to_string(),
        )
        .await;
        assert_eq!(a.status, 200, "{}", a.text());
        a.json()
    }

    async fn events(&self, events: Value) {
        let a = post_json(
            self.addr,
            "/api/v1/events",
            KEY,
            &json!({ "events": events }),
        )
        .await;
        assert_eq!(a.status, 202, "{}", a.text());
    }

    /// Waits until the routers have committed everything on the requests topic.
    async fn wait_routed(&self) {
        common::platform::wait_routed(self.kafka.bootstrap(), &self.app).await;
    }

    /// Every push on the app's topics, (platform, key, message): `expected` of them, then
    /// whatever else comes within a quiet half second.
    fn pushes(&self, expected: usize) -> Vec<(String, String, Value)> {
        let topics = [
            format!("push-{}_apns", self.app),
            format!("push-{}_gcm", self.app),
        ];
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        read_topics(self.kafka.bootstrap(), &names, expected)
            .into_iter()
            .map(|(topic, key, value)| {
                let platform = if topic.ends_with("_apns") {
                    "apns"
                } else {
                    "gcm"
                };
                (platform.to_owned(), key, value)
            })
            .collect()
    }

    async fn stop(self) -> RouteCounts {
        self.stop.cancel();
        let mut total = RouteCounts::default();
        for r in self.routers {
            let c = r.await.unwrap();
            total.consumed += c.consumed;
            total.logins += c.logins;
            total.opt_outs += c.opt_outs;
            total.events.add(&c.events);
        }
        total
    }
}

fn login(user: i64, language: i32, platform_id: u8, token: &str) -> Value {
    json!({"user_id": user, "event_id": 4001, "timestamp": 1_458_823_440_000_i64,
        "pairs": {"languageId": language.to_string(), "platformId": platform_id.to_string(),
                  "deviceId": format!("dev-{token}"), "deviceToken": token,
                  "applicationVersion": "1"}})
}

fn skipped(c: &RouteCounts, reason: &str) -> u64 {
    c.events.skipped.get(reason).copied().unwrap_or(0)
}

/// The title and body of a push, whichever platform it is for.
fn text(platform: &str, m: &Value) -> (String, String) {
    let alert = if platform == "apns" {
        &m["Payload"]["aps"]["alert"]
    } else {
        &m["notification"]
    };
    (
        alert["title"].as_str().unwrap().to_owned(),
        alert["body"].as_str().unwrap().to_owned(),
    )
}

/// Protobuf varint.
fn varint(mut n: u64, out: &mut Vec<u8>) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// `BatchEventRequest` with Pushkin's documented protobuf example's first event (user 1337,
/// event 1, timestamp 1458823445000), from the wire format by hand.
fn pushkin_proto_example() -> Vec<u8> {
    let mut event = vec![1 << 3];
    varint(1337, &mut event);
    event.push(2 << 3);
    varint(1, &mut event);
    event.push(4 << 3);
    varint(1_458_823_445_000, &mut event);
    let mut batch = vec![(1 << 3) | 2];
    varint(event.len() as u64, &mut batch);
    batch.extend_from_slice(&event);
    batch
}

/// Pushkin's event examples (JSON verbatim from its documentation, and protobuf) trigger a
/// message in each user's language, falling back to English; parameters are filled from the
/// pairs; a message whose parameter is missing, an event id with no message and a user with
/// no device send nothing and are counted by reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushkin_events_become_localized_notifications() {
    let p = Platform::start(1, DeviceLimits::default()).await;
    let welcome = p
        .put_message(
            "welcome",
            json!({"event_id": 1, "screen": "welcome_screen", "priority": "high",
                   "localizations": [
                       {"language_id": 1, "title": "Welcome", "text": "Come play!"},
                       {"language_id": 2, "title": "Willkommen", "text": "Komm spielen!"}]}),
        )
        .await;
    assert!(welcome["id"].as_i64().unwrap() > 0, "{welcome}");
    p.put_message(
        "device-greeting",
        json!({"event_id": 1, "localizations": [
            {"language_id": 1, "title": "Hello {deviceId}", "text": "Version {applicationVersion}"}]}),
    )
    .await;
    p.events(json!([
        login(1337, 2, 1, "gcm-1337"),
        login(1337, 2, 2, "apns-1337"),
        login(1338, 7, 1, "gcm-1338"),
    ]))
    .await;
    p.wait_routed().await;

    // Pushkin's JSON example, verbatim.
    let example = r#"{
  "events": [
    {
      "user_id" : 1337,
      "event_id" : 1,
      "timestamp" : 1458823445000
    },
    {
      "user_id" : 1338,
      "event_id" : 1,
      "timestamp" : 1458823448000,
      "pairs": {
        "platformId" : "1",
        "deviceId" : "S342DFS",
        "deviceToken" : "VD3#fd4",
        "applicationVersion" : "1"
      }
    }
  ]
}"#;
    let auth = format!("Bearer {KEY}");
    let a = request(
        p.addr,
        "POST",
        "/post_events_json",
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
        ],
        example,
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text());
    let event_ids = a.json()["event_ids"].clone();
    assert_eq!(event_ids.as_array().unwrap().len(), 2, "{event_ids}");
    // Protobuf: the same event for 1337 again, and events nothing listens to or for nobody.
    let proto = request(
        p.addr,
        "POST",
        "/post_events_proto",
        &[("authorization", &auth)],
        pushkin_proto_example(),
    )
    .await;
    assert_eq!(proto.status, 200, "{}", proto.text());
    p.events(json!([
        {"user_id": 1337, "event_id": 99, "pairs": {}},
        {"user_id": 4242, "event_id": 1, "pairs": {}}
    ]))
    .await;
    p.wait_routed().await;

    // 1337 (German, two devices): welcome twice (no cooldown), device-greeting never (its
    // events carry no deviceId). 1338 (language 7: English): welcome and device-greeting.
    let pushes = p.pushes(6);
    let mut seen: BTreeMap<(String, String, String), usize> = BTreeMap::new();
    for (platform, token, m) in &pushes {
        let (title, body) = text(platform, m);
        *seen.entry((token.clone(), title, body)).or_default() += 1;
    }
    let expected: BTreeMap<(String, String, String), usize> = [
        (("apns-1337", "Willkommen", "Komm spielen!"), 2),
        (("gcm-1337", "Willkommen", "Komm spielen!"), 2),
        (("gcm-1338", "Welcome", "Come play!"), 1),
        (("gcm-1338", "Hello S342DFS", "Version 1"), 1),
    ]
    .into_iter()
    .map(|((t, a, b), n)| ((t.to_owned(), a.to_owned(), b.to_owned()), n))
    .collect();
    assert_eq!(seen, expected, "{pushes:#?}");
    // Deep link, priority, notif_id `<event id>.<message>` and the message's name.
    let gcm_1338 = pushes
        .iter()
        .find(|(_, t, m)| t == "gcm-1338" && m["notification"]["title"] == "Welcome")
        .unwrap();
    assert_eq!(gcm_1338.2["data"]["screen"], "game://welcome_screen");
    assert_eq!(gcm_1338.2["priority"], "high");
    assert_eq!(
        gcm_1338.2["metadata"]["notif_id"],
        format!("{}.welcome", event_ids[1].as_str().unwrap())
    );
    assert_eq!(gcm_1338.2["metadata"]["message"], "welcome");
    let apns = pushes.iter().find(|(p, _, _)| p == "apns").unwrap();
    assert_eq!(apns.2["Payload"]["screen"], "welcome_screen");

    let c = p.stop().await;
    assert_eq!(c.logins, 3);
    // 2 (JSON) + 1 (proto) + 2 events; 3 of them for user 1337/1338 with two messages each.
    assert_eq!(c.events.events, 5, "{c:?}");
    assert_eq!(skipped(&c, "no_message"), 1, "{c:?}");
    // 1337 twice and 4242 lack deviceId; 4242 has no device for the welcome.
    assert_eq!(skipped(&c, "missing_parameter"), 3, "{c:?}");
    assert_eq!(skipped(&c, "no_devices"), 1, "{c:?}");
    assert_eq!(c.events.notifications, 4, "{c:?}");
    assert_eq!(c.events.pushes, pushes.len() as u64, "{c:?}");
    assert_eq!(c.events.pushes, 6);
    // Every (event, message) pair is accounted for: 4 events with 2 messages, 1 without.
    let skipped_total: u64 = c.events.skipped.values().sum();
    assert_eq!(c.events.notifications + skipped_total - 1, 4 * 2, "{c:?}");
}

/// Every event sent twice, two routers in one group: each (user, message) is sent once inside
/// its cooldown; the second of each pair is counted as `cooldown`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cooldown_holds_with_two_routers_and_every_event_twice() {
    let p = Platform::start(2, DeviceLimits::default()).await;
    p.put_message(
        "daily-bonus",
        json!({"event_id": 17, "cooldown_s": 3600, "localizations": [
            {"language_id": 1, "title": "Bonus", "text": "{amount} coins for you"}]}),
    )
    .await;
    const USERS: i64 = 60;
    let logins: Vec<Value> = (1..=USERS)
        .map(|u| login(u, 1, if u % 2 == 0 { 1 } else { 2 }, &format!("tok-{u}")))
        .collect();
    p.events(Value::Array(logins)).await;
    p.wait_routed().await;
    let events: Vec<Value> = (1..=USERS)
        .map(|u| json!({"user_id": u, "event_id": 17, "pairs": {"amount": "50"}}))
        .collect();
    // Twice, concurrently, as two requests (two ids per user and event).
    let body = json!({ "events": events });
    let (a, b) = tokio::join!(
        post_json(p.addr, "/api/v1/events", KEY, &body),
        post_json(p.addr, "/api/v1/events", KEY, &body),
    );
    assert_eq!((a.status, b.status), (202, 202));
    p.wait_routed().await;
    let pushes = p.pushes(USERS as usize);
    let mut per_token: BTreeMap<String, usize> = BTreeMap::new();
    for (_, token, m) in &pushes {
        *per_token.entry(token.clone()).or_default() += 1;
        assert_eq!(
            text(if m.get("to").is_some() { "gcm" } else { "apns" }, m).1,
            "50 coins for you"
        );
    }
    assert_eq!(per_token.len(), USERS as usize, "every user reached");
    assert!(
        per_token.values().all(|&n| n == 1),
        "sent twice: {per_token:?}"
    );
    let c = p.stop().await;
    assert_eq!(c.events.events, 2 * USERS as u64, "{c:?}");
    assert_eq!(c.events.pushes, USERS as u64, "{c:?}");
    assert_eq!(skipped(&c, "cooldown"), USERS as u64, "{c:?}");
}

/// PostgreSQL down for longer than the group's poll interval (6 s here, 30 minutes in
/// production) while two routers hold batches of events: each keeps polling with its
/// partitions paused, so it stays in the group and no batch is routed twice. (Before, both
/// left the group, their commits failed, and their batches were routed again, by another
/// router racing the first for the same cooldown claims.) A third router joining during a
/// second outage takes partitions from the others (a rebalance): they drop their batches, and
/// the partitions' owners route each event once when PostgreSQL is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_outage_longer_than_the_poll_interval_routes_each_event_once() {
    let proxy = pg_proxy::PgProxy::start(true).await;
    let mut p = Platform::start(0, DeviceLimits::default()).await;
    let mut pg = common::platform::pg();
    pg.port = proxy.port;
    // librdkafka's least: it may not be under the session timeout (6 s).
    let poll = || vec![("max.poll.interval.ms".to_owned(), "6000".to_owned())];
    let first = [
        p.add_router(pg.clone(), poll()),
        p.add_router(pg.clone(), poll()),
    ];
    for (event_id, name) in [(17, "bonus"), (18, "quest")] {
        p.put_message(
            name,
            json!({"event_id": event_id, "cooldown_s": 3600, "localizations": [
                {"language_id": 1, "title": "T", "text": name}]}),
        )
        .await;
    }
    // Before any record: a batch handled while the group forms is redone when its commit
    // is refused, and the counts below say "nothing twice".
    wait_until("both routers hold partitions", || {
        first.iter().all(|m| m.partitions() > 0)
    })
    .await;
    const USERS: i64 = 8;
    let logins: Vec<Value> = (1..=USERS)
        .map(|u| login(u, 1, 1, &format!("tok-{u}")))
        .collect();
    p.events(Value::Array(logins)).await;
    p.wait_routed().await;
    let events = |event_id: i32| {
        Value::Array(
            (1..=USERS)
                .map(|u| json!({"user_id": u, "event_id": event_id}))
                .collect(),
        )
    };
    let failing = || pusher::telemetry::health::problems().contains_key("route");

    proxy.down();
    p.events(events(17)).await;
    wait_until("the routers meet the outage", failing).await;
    // Past the poll interval, with room for librdkafka's once-a-second check.
    tokio::time::sleep(Duration::from_secs(11)).await;
    proxy.up();
    p.wait_routed().await;

    proxy.down();
    p.events(events(18)).await;
    wait_until("the routers meet the second outage", failing).await;
    let third = p.add_router(pg.clone(), poll());
    wait_until("the third router is given partitions", || {
        third.partitions() > 0
    })
    .await;
    proxy.up();
    p.wait_routed().await;

    let pushes = p.pushes(2 * USERS as usize);
    let mut per_token: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (platform, token, m) in &pushes {
        per_token
            .entry(token.clone())
            .or_default()
            .push(text(platform, m).1);
    }
    for texts in per_token.values_mut() {
        texts.sort();
    }
    assert_eq!(per_token.len(), USERS as usize, "{per_token:?}");
    assert!(
        per_token.values().all(|t| *t == ["bonus", "quest"]),
        "each event once: {per_token:?}"
    );
    assert!(proxy.refused() > 0, "the routers met the outage");
    let c = p.stop().await;
    assert_eq!(
        c.consumed,
        3 * USERS as u64,
        "no batch routed twice (a dropped batch is not counted): {c:?}"
    );
    assert_eq!(c.events.events, 2 * USERS as u64, "{c:?}");
    assert_eq!(c.events.pushes, 2 * USERS as u64, "{c:?}");
    assert_eq!(c.events.already_sent, 0, "{c:?}");
    assert!(c.events.skipped.is_empty(), "{c:?}");
}

/// A router joins while the first is inside a slow batch (the group goes to rebalancing
/// without the first having polled): the first's commit is refused and the batch redone, and
/// it is counted once. Seen: its counts were added before the commit, then again by the redo.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_whose_commit_a_rebalance_refuses_is_counted_once() {
    let mut p = Platform::start(1, DeviceLimits::default()).await;
    // The first write of this app's logins sleeps 3 s, once (a sequence, which a rollback
    // does not undo, counts the tries).
    let store = common::platform::store().await;
    let pg = store.pool().get().await.unwrap();
    let tag = p.app.replace('-', "_");
    let trigger = common::platform::TestTrigger::create(
        &pg,
        &format!("test_slow_{tag}"),
        "BEFORE INSERT OR UPDATE",
        "pusher_logins",
        &format!(
            "IF NEW.app = '{app}' THEN
             IF nextval('test_slow_{tag}') = 1 THEN
             PERFORM pg_sleep(3);
             END IF;
             END IF;",
            app = p.app
        ),
    )
    .await;
    const USERS: i64 = 8;
    let logins: Vec<Value> = (1..=USERS)
        .map(|u| login(u, 1, 1, &format!("tok-{u}")))
        .collect();
    p.events(Value::Array(logins)).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if trigger.fired(&pg).await {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the router never wrote the logins"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    p.add_router(common::platform::pg(), Vec::new());
    p.wait_routed().await;
    trigger.drop(&pg).await;
    let c = p.stop().await;
    assert_eq!(c.consumed, USERS as u64, "each record counted once: {c:?}");
    assert_eq!(c.logins, USERS as u64, "{c:?}");
}

/// A PostgreSQL error while marking a phase's claims sent, after its pushes are in Kafka, is
/// retried in place. Seen: the batch failed and was redone whole, won the same claims again
/// (unsent, the events' own) and sent every push of the phase twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_mark_after_the_produce_sends_each_push_once() {
    let p = Platform::start(1, DeviceLimits::default()).await;
    p.put_message(
        "bonus",
        json!({"event_id": 17, "cooldown_s": 3600, "localizations": [
            {"language_id": 1, "title": "T", "text": "bonus"}]}),
    )
    .await;
    const USERS: i64 = 4;
    let logins: Vec<Value> = (1..=USERS)
        .map(|u| login(u, 1, 1, &format!("tok-{u}")))
        .collect();
    p.events(Value::Array(logins)).await;
    p.wait_routed().await;

    // The first statement that marks one of this app's cooldowns sent fails (a sequence,
    // which a rollback does not undo, counts the tries), as a failover would fail it.
    let store = common::platform::store().await;
    let pg = store.pool().get().await.unwrap();
    let tag = p.app.replace('-', "_");
    let trigger = common::platform::TestTrigger::create(
        &pg,
        &format!("test_mark_{tag}"),
        "BEFORE UPDATE",
        "pusher_cooldowns",
        &format!(
            "IF NEW.app = '{app}' AND NEW.sent AND NOT OLD.sent
             AND nextval('test_mark_{tag}') = 1 THEN
             RAISE EXCEPTION 'injected: cannot mark sent';
             END IF;",
            app = p.app
        ),
    )
    .await;
    let events: Vec<Value> = (1..=USERS)
        .map(|u| json!({"user_id": u, "event_id": 17}))
        .collect();
    p.events(Value::Array(events)).await;
    p.wait_routed().await;
    let pushes = p.pushes(USERS as usize);
    let tries = trigger.drop(&pg).await;
    assert!(
        tries >= 2,
        "the mark failed once and was tried again: {tries}"
    );
    let mut tokens: Vec<&str> = pushes.iter().map(|(_, token, _)| token.as_str()).collect();
    tokens.sort();
    assert_eq!(
        tokens,
        ["tok-1", "tok-2", "tok-3", "tok-4"],
        "each push once"
    );
    let c = p.stop().await;
    assert_eq!(c.consumed, 2 * USERS as u64, "no batch redone: {c:?}");
    assert_eq!(c.events.pushes, USERS as u64, "{c:?}");
}

/// Waits up to 30 s for `done`.
async fn wait_until(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The claim statements under real concurrency: eight tasks claim the same 200 keys, each as
/// its own event; exactly one wins each key. The winner's event claiming again (a
/// redelivery) wins again until its pushes are marked sent, then is told they were; another
/// event still loses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_claims_have_one_winner_and_redelivery_wins_its_own() {
    let store = Store::new(&pg()).unwrap();
    store.init().await.unwrap();
    let claims = Claims::new(store.pool());
    let app = common::platform::fresh_app("cl");
    let keys: Vec<(i64, &str)> = (0..100).flat_map(|u| [(u, "a"), (u, "b")]).collect();
    let tasks: Vec<_> = (0..8)
        .map(|t| {
            let claims = claims.clone();
            let app = app.clone();
            let mut batch: Vec<(Claim, i64)> = keys
                .iter()
                .map(|(u, m)| {
                    (
                        Claim {
                            subject: u.to_string(),
                            message: (*m).to_owned(),
                            owner: format!("event-{t}"),
                        },
                        3600,
                    )
                })
                .collect();
            // Different orders, as different routers' batches would be.
            if t % 2 == 1 {
                batch.reverse();
            }
            tokio::spawn(async move {
                let won = claims.cooldown(&app, &batch).await.unwrap();
                batch
                    .into_iter()
                    .zip(won)
                    .filter(|(_, w)| *w == Claimed::Won)
                    .map(|(c, _)| (c.0.subject, c.0.message, c.0.owner))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut winners: HashMap<(String, String), String> = HashMap::new();
    for t in tasks {
        for (subject, message, owner) in t.await.unwrap() {
            assert!(
                winners
                    .insert((subject.clone(), message.clone()), owner)
                    .is_none(),
                "two winners for {subject}/{message}"
            );
        }
    }
    assert_eq!(winners.len(), keys.len());
    let ((subject, message), owner) = winners.iter().next().unwrap();
    let again = |owner: &str| Claim {
        subject: subject.clone(),
        message: message.clone(),
        owner: owner.to_owned(),
    };
    let pair = [(again(owner), 3600), (again("someone-else"), 3600)];
    let found = claims.cooldown(&app, &pair).await.unwrap();
    assert_eq!(
        found,
        vec![Claimed::Won, Claimed::Lost],
        "a redelivery before its pushes were sent wins again, another event loses"
    );
    claims
        .mark_sent(&app, &[again(owner)], &[], &[])
        .await
        .unwrap();
    let found = claims.cooldown(&app, &pair).await.unwrap();
    assert_eq!(
        found,
        vec![Claimed::Sent, Claimed::Lost],
        "once sent, a redelivery is told so and sends nothing"
    );

    // The per-device limit: 3 per hour; the 4th is refused, a redelivery of the 3rd is not.
    let limit = Limit {
        count: 3,
        window_s: 3600.0,
    };
    let device = |owner: &str| Claim {
        subject: "token-1".into(),
        message: String::new(),
        owner: owner.into(),
    };
    // One event's two messages to one device: two owners, two rounds of the statement.
    let won = claims
        .limit(&app, &[device("n1"), device("n2")], limit)
        .await
        .unwrap();
    assert_eq!(won, vec![true, true]);
    for _ in 0..2 {
        let won = claims
            .limit(&app, &[device("n1"), device("n2")], limit)
            .await
            .unwrap();
        assert_eq!(
            won,
            vec![true, true],
            "a redelivered batch is not charged again"
        );
    }
    let won = claims
        .limit(&app, &[device("n3"), device("n4")], limit)
        .await
        .unwrap();
    assert_eq!(
        won,
        vec![true, false],
        "three charges in all: the fourth is refused"
    );
    let won = claims.limit(&app, &[device("n4")], limit).await.unwrap();
    assert_eq!(won, vec![false], "still limited");
    let won = claims.limit(&app, &[device("n1")], limit).await.unwrap();
    assert_eq!(won, vec![true], "a charged owner still wins its own");
}

/// A user's opt-out (Pushkin's 4006, by message id) stops that message only; duplicate
/// suppression stops the same message to the same device inside its window; the per-device
/// limit stops the third push in its window. Each stopped push is a `rate_limited` feedback
/// record with its reason, and the counts add up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opt_outs_limits_and_duplicates() {
    let p = Platform::start(
        1,
        DeviceLimits {
            limit: Some(Limit {
                count: 2,
                window_s: 3600.0,
            }),
            dedup_window_s: 3600.0,
        },
    )
    .await;
    let en = |text: &str| json!([{"language_id": 1, "title": "T", "text": text}]);
    let news = p
        .put_message("news", json!({"event_id": 5, "localizations": en("news")}))
        .await;
    p.put_message(
        "quest",
        json!({"event_id": 6, "localizations": en("quest")}),
    )
    .await;
    // The gift has a cooldown: refused by the limit, it must not hold it.
    p.put_message(
        "gift",
        json!({"event_id": 7, "cooldown_s": 3600, "localizations": en("gift")}),
    )
    .await;
    p.events(json!([login(1, 1, 1, "gcm-1"), login(2, 1, 2, "apns-2")]))
        .await;
    // User 2 gets "news" once, then opts out of it by Pushkin's numeric id, in one request:
    // the opt-out applies to what comes after it, not before.
    p.events(json!([
        {"user_id": 2, "event_id": 5},
        {"user_id": 2, "event_id": 4006, "pairs": {"1": news["id"].to_string()}}
    ]))
    .await;
    p.wait_routed().await;
    // User 1: quest twice (the second a duplicate), news, gift (over the limit of 2).
    // User 2: news (opted out), quest.
    for events in [
        json!([{"user_id": 1, "event_id": 6}, {"user_id": 2, "event_id": 5}]),
        json!([{"user_id": 1, "event_id": 6}, {"user_id": 2, "event_id": 6}]),
        json!([{"user_id": 1, "event_id": 5}]),
        json!([{"user_id": 1, "event_id": 7}]),
    ] {
        p.events(events).await;
        p.wait_routed().await;
    }
    let pushes = p.pushes(4);
    let mut sent: Vec<(String, String)> = pushes
        .iter()
        .map(|(platform, token, m)| (token.clone(), text(platform, m).1))
        .collect();
    sent.sort();
    assert_eq!(
        sent,
        vec![
            ("apns-2".to_owned(), "news".to_owned()),
            ("apns-2".to_owned(), "quest".to_owned()),
            ("gcm-1".to_owned(), "news".to_owned()),
            ("gcm-1".to_owned(), "quest".to_owned()),
        ]
    );
    let feedback = read_topic(
        p.kafka.bootstrap(),
        &format!("push-{}-gcm-feedbacks", p.app),
        2,
    );
    let mut reasons: Vec<(String, String)> = feedback
        .iter()
        .map(|(_, r)| {
            let row = pusher::platform::results::result_of(r).unwrap();
            assert_eq!(row.outcome, "rate_limited");
            (
                row.notif_id.rsplit('.').next().unwrap().to_owned(),
                row.reason,
            )
        })
        .collect();
    reasons.sort();
    assert_eq!(
        reasons,
        vec![
            ("gift".to_owned(), "device_limit".to_owned()),
            ("quest".to_owned(), "duplicate".to_owned()),
        ]
    );
    // The gift the limit refused holds no dedup claim (else the next gift within the hour
    // would be a "duplicate" of one the device never got); the quest sent does.
    let store = common::platform::store().await;
    let client = store.pool().get().await.unwrap();
    for (message, held) in [("gift", 0), ("quest", 1)] {
        let n: i64 = client
            .query_one(
                "SELECT count(*) FROM pusher_dedup WHERE app = $1 AND token = 'gcm-1' AND message = $2",
                &[&p.app, &message],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, held, "{message}");
    }
    // Nor a cooldown: the user got no gift, so the next one may come.
    let held: i64 = client
        .query_one(
            "SELECT count(*) FROM pusher_cooldowns WHERE app = $1 AND user_id = 1 AND message = 'gift'",
            &[&p.app],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(held, 0, "the refused gift's cooldown was given back");
    let c = p.stop().await;
    assert_eq!(c.opt_outs, 1);
    assert_eq!(skipped(&c, "opted_out"), 1, "{c:?}");
    assert_eq!(c.events.notifications, 6, "{c:?}");
    assert_eq!(c.events.pushes, 4, "{c:?}");
    assert_eq!(c.events.rate_limited, 2, "{c:?}");
    assert_eq!(
        c.events.notifications,
        c.events.pushes + c.events.rate_limited,
        "one device each"
    );
}

/// A message's `expiry_s` runs from the event, not from when a router got to it: an event
/// that waited out its message's life (a backlog while routers or PostgreSQL were down) is
/// counted `expired`, not sent; a younger one is sent with what is left of its life.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_events_expiry_runs_from_the_event() {
    let p = Platform::start(1, DeviceLimits::default()).await;
    p.put_message(
        "energy",
        json!({"event_id": 9, "expiry_s": 3600,
               "localizations": [{"language_id": 1, "text": "Energy is full"}]}),
    )
    .await;
    p.events(json!([login(5, 1, 1, "gcm-5")])).await;
    p.wait_routed().await;
    let now_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let young = now_s - 600;
    p.events(json!([
        {"user_id": 5, "event_id": 9, "timestamp": now_s - 2 * 86_400},
        {"user_id": 5, "event_id": 9, "timestamp": young},
    ]))
    .await;
    p.wait_routed().await;
    let pushes = p.pushes(1);
    assert_eq!(pushes.len(), 1, "{pushes:?}");
    let expiry_ms = pushes[0].2["push_expiry"].as_i64().unwrap();
    let expected = (young + 3600) * 1000;
    assert!(
        (expected..expected + 5_000).contains(&expiry_ms),
        "expires {expiry_ms}, the event's life ends at {expected}"
    );
    let c = p.stop().await;
    assert_eq!(skipped(&c, "expired"), 1, "{c:?}");
    assert_eq!(c.events.pushes, 1, "{c:?}");
}

/// The messages API: create, read, list, replace, delete; bad input is a 400 naming the
/// field, and nothing is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_api_round_trip_and_refusals() {
    let p = Platform::start(0, DeviceLimits::default()).await;
    let auth = format!("Bearer {KEY}");
    let call = |method: &'static str, path: String, body: String| {
        let auth = auth.clone();
        let addr = p.addr;
        async move {
            request(
                addr,
                method,
                &path,
                &[
                    ("authorization", &auth),
                    ("content-type", "application/json"),
                ],
                body,
            )
            .await
        }
    };
    let stored = p
        .put_message(
            "promo",
            json!({"event_id": 12, "cooldown_s": 60, "expiry_s": 3600, "screen": "shop",
                   "localizations": [{"language_id": 1, "title": "Sale", "text": "50% off"}]}),
        )
        .await;
    assert_eq!(stored["name"], "promo");
    assert_eq!(stored["priority"], "normal");
    let got = call("GET", "/api/v1/messages/promo".into(), String::new()).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.json(), stored);
    // A GET's body, edited and PUT back (its `id` is ignored: the stored one stays). Seen: 400,
    // "unknown field `id`".
    let mut edited = got.json();
    edited["screen"] = json!("sale");
    edited["id"] = json!(999_999);
    let put = call("PUT", "/api/v1/messages/promo".into(), edited.to_string()).await;
    assert_eq!(put.status, 200, "{}", put.text());
    assert_eq!(put.json()["screen"], "sale");
    assert_eq!(put.json()["id"], stored["id"]);
    // Replacing drops localizations not given again.
    p.put_message(
        "promo",
        json!({"event_id": 12, "localizations": [
            {"language_id": 2, "title": "Angebot", "text": "50% Rabatt"}]}),
    )
    .await;
    let list = call("GET", "/api/v1/messages".into(), String::new()).await;
    let list = list.json();
    assert_eq!(list["messages"].as_array().unwrap().len(), 1);
    assert_eq!(
        list["messages"][0]["localizations"],
        json!([{"language_id": 2, "title": "Angebot", "text": "50% Rabatt"}])
    );
    // Python's escaped braces, as Pushkin's texts have them.
    let escaped = p
        .put_message(
            "code",
            json!({"event_id": 13, "localizations": [
                {"language_id": 1, "text": "Use code {{VIP}}, {name}"}]}),
        )
        .await;
    assert_eq!(
        escaped["localizations"][0]["text"],
        "Use code {{VIP}}, {name}"
    );
    for (body, field) in [
        (
            json!({"event_id": 4001, "localizations": [{"language_id": 1, "text": "x"}]}),
            "event_id",
        ),
        (json!({"event_id": 3, "localizations": []}), "localizations"),
        (
            json!({"event_id": 3, "cooldown_s": -1, "localizations": [{"language_id": 1, "text": "x"}]}),
            "cooldown_s",
        ),
        (
            json!({"event_id": "3", "localizations": [{"language_id": 1, "text": "x"}]}),
            "event_id",
        ),
        (
            json!({"event_id": 3, "localizations": [{"language_id": 1, "text": "x"}], "colour": 1}),
            "colour",
        ),
        // Python's `str.format` would fail it: refused where it is written.
        (
            json!({"event_id": 3, "localizations": [{"language_id": 1, "text": "Hi {friend.name}"}]}),
            "localizations[0].text",
        ),
    ] {
        let a = call("PUT", "/api/v1/messages/bad".into(), body.to_string()).await;
        assert_eq!(a.status, 400, "{body}: {}", a.text());
        assert!(a.text().contains(field), "{body}: {}", a.text());
    }
    let a = call("PUT", "/api/v1/messages/bad%20name".into(), "{}".into()).await;
    assert_eq!(a.status, 400, "{}", a.text());
    // A name of digits would read as another message's numeric id in opt-out events.
    let a = call(
        "PUT",
        "/api/v1/messages/7".into(),
        json!({"event_id": 3, "localizations": [{"language_id": 1, "text": "x"}]}).to_string(),
    )
    .await;
    assert_eq!(a.status, 400, "{}", a.text());
    assert!(a.text().contains("digits"), "{}", a.text());
    assert_eq!(
        call("GET", "/api/v1/messages/bad".into(), String::new())
            .await
            .status,
        404,
        "nothing stored"
    );
    assert_eq!(
        call("DELETE", "/api/v1/messages/promo".into(), String::new())
            .await
            .status,
        204
    );
    assert_eq!(
        call("DELETE", "/api/v1/messages/promo".into(), String::new())
            .await
            .status,
        404
    );
    // Another app's key sees none of it; no key is a 401.
    let anon = request(p.addr, "GET", "/api/v1/messages", &[], "").await;
    assert_eq!(anon.status, 401);
    p.stop().await;
}

/// `pusher route` (the binary) SIGKILLed mid-stream, then started again: every user gets the
/// message, and no user twice but for the one window the design leaves (pushes in Kafka whose
/// claims were not yet marked sent: at most one batch).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_router_loses_nothing_and_repeats_at_most_a_batch() {
    const USERS: i64 = 20_000;
    const BATCH: usize = 100;
    let p = Platform::start(0, DeviceLimits::default()).await;
    p.put_message(
        "comeback",
        json!({"event_id": 21, "cooldown_s": 3600, "localizations": [
            {"language_id": 1, "title": "T", "text": "come back"}]}),
    )
    .await;
    let store = Store::new(&pg()).unwrap();
    let devices: Vec<pusher::platform::registry::Device> = (1..=USERS)
        .map(|u| pusher::platform::registry::Device {
            user_id: u,
            platform: pusher::push::Platform::Gcm,
            token: format!("kill-{u}"),
            device_id: String::new(),
            platform_id: None,
            app_version: String::new(),
            registered_ms: 1,
            keys: None,
        })
        .collect();
    Registry::new(store.pool())
        .register(&p.app, &devices, &[])
        .await
        .unwrap();
    for chunk in (1..=USERS).collect::<Vec<_>>().chunks(1000) {
        let events: Vec<Value> = chunk
            .iter()
            .map(|u| json!({"user_id": u, "event_id": 21}))
            .collect();
        p.events(Value::Array(events)).await;
    }
    let brokers = p.kafka.bootstrap().to_owned();
    let spawn = || {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_pusher"));
        cmd.args(["route", "--brokers", &brokers])
            .env("PUSHER_ROUTE_GROUP", format!("route-{}", p.app))
            .env("PUSHER_ROUTE_BATCHSIZE", BATCH.to_string())
            .env("PUSHER_ROUTE_LISTEN", "127.0.0.1:0")
            .env("PUSHER_INVALIDTOKEN_PG_HOST", "127.0.0.1")
            .env("PUSHER_INVALIDTOKEN_PG_USER", "postgres")
            .env("PUSHER_INVALIDTOKEN_PG_DATABASE", "test")
            .env("PUSHER_LOG", "warn");
        watched::Watched::spawn(cmd)
    };
    let topic = format!("push-{}_gcm", p.app);
    let pushed = || {
        let (b, t) = (brokers.clone(), topic.clone());
        async move {
            tokio::task::spawn_blocking(move || {
                common::process::partition_ends(&b, &t, 4)
                    .iter()
                    .sum::<i64>()
            })
            .await
            .unwrap()
        }
    };
    let router = spawn();
    // Watched from one side client (a new client per look would take longer than a batch).
    let (b, t) = (brokers.clone(), topic.clone());
    let pid = router.id();
    tokio::task::spawn_blocking(move || {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        let side: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &b)
            .create()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let out: i64 = (0..4)
                .map(|p| {
                    side.fetch_watermarks(&t, p, Duration::from_secs(5))
                        .map_or(0, |(_, high)| high)
                })
                .sum();
            if out >= 300 || Instant::now() > deadline {
                watched::Watched::signal(pid, "KILL");
                return;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    })
    .await
    .unwrap();
    drop(router);
    let at_kill = pushed().await;
    assert!(
        (300..USERS).contains(&at_kill),
        "killed mid-stream: {at_kill} of {USERS} pushes were out"
    );
    let _router = spawn();
    p.wait_routed().await;
    let pushes = p.pushes(USERS as usize);
    let mut per_token: HashMap<String, usize> = HashMap::new();
    for (_, token, _) in &pushes {
        *per_token.entry(token.clone()).or_default() += 1;
    }
    assert_eq!(per_token.len(), USERS as usize, "every user reached");
    let repeated: usize = per_token.values().map(|n| n - 1).sum();
    assert!(
        repeated <= BATCH,
        "{repeated} pushes repeated after the kill: more than one batch ({BATCH})"
    );
    println!("killed with {at_kill} of {USERS} out; {repeated} repeated after the restart");
    p.stop().await;
}

/// A claim won, not sent (Kafka refused the batch), and won again by the same event's retry
/// after its window: the window runs again from the retry. Seen: it kept the first expiry,
/// already past, so another event won the same pair a moment after the retry's push.
#[tokio::test]
async fn a_cooldown_won_again_by_a_retry_runs_from_the_retry() {
    let store = Store::new(&pg()).unwrap();
    store.init().await.unwrap();
    let claims = Claims::new(store.pool());
    let app = common::platform::fresh_app("cr");
    let claim = |owner: &str| Claim {
        subject: "7".into(),
        message: "gift".into(),
        owner: owner.into(),
    };
    let first = [(claim("e1"), 1)];
    assert_eq!(claims.cooldown(&app, &first).await.unwrap(), [Claimed::Won]);
    // Past the first claim's one-second window, the retry of e1 wins its own claim and sends.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let retry = [(claim("e1"), 3600)];
    assert_eq!(claims.cooldown(&app, &retry).await.unwrap(), [Claimed::Won]);
    claims
        .mark_sent(&app, &[claim("e1")], &[], &[])
        .await
        .unwrap();
    let other = [(claim("e2"), 3600)];
    assert_eq!(
        claims.cooldown(&app, &other).await.unwrap(),
        [Claimed::Lost],
        "inside the cooldown of e1's push"
    );
}

/// A message's cooldown changed while users are inside it: the new length applies to them,
/// measured from their last push, as Pushkin compares the last send with the current
/// cooldown. Seen: the end stored at the claim held, so a cooldown raised from 1 s to a day
/// let the next event through a second later, and one lowered from an hour to 1 s held an
/// hour.
#[tokio::test]
async fn a_changed_cooldown_applies_to_users_inside_the_old_one() {
    let store = Store::new(&pg()).unwrap();
    store.init().await.unwrap();
    let claims = Claims::new(store.pool());
    let app = common::platform::fresh_app("cc");
    let claim = |user: &str, owner: &str| Claim {
        subject: user.into(),
        message: "gift".into(),
        owner: owner.into(),
    };
    let sent = |c: Claim| {
        let claims = claims.clone();
        let app = app.clone();
        async move {
            assert_eq!(
                claims.cooldown(&app, &[(c.clone(), 1)]).await.unwrap(),
                [Claimed::Won]
            );
            claims.mark_sent(&app, &[c], &[], &[]).await.unwrap();
        }
    };
    // User 7 was sent to under a one-second cooldown, user 8 under an hour's.
    sent(claim("7", "e1")).await;
    assert_eq!(
        claims
            .cooldown(&app, &[(claim("8", "e1"), 3600)])
            .await
            .unwrap(),
        [Claimed::Won]
    );
    claims
        .mark_sent(&app, &[claim("8", "e1")], &[], &[])
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    // Raised to a day: user 7 waits. Lowered to a second: user 8 may have the next.
    assert_eq!(
        claims
            .cooldown(&app, &[(claim("7", "e2"), 86_400)])
            .await
            .unwrap(),
        [Claimed::Lost],
        "a day's cooldown has not passed since the push a second ago"
    );
    assert_eq!(
        claims
            .cooldown(&app, &[(claim("8", "e2"), 1)])
            .await
            .unwrap(),
        [Claimed::Won],
        "a second's cooldown has passed"
    );
}

/// Marking claims sent and giving them back lock their rows in key order, whatever order the
/// batch names them in and whatever plan PostgreSQL picks, as the claim statements do: a
/// statement held up by a row holds the rows before it and none after. Locked in join order,
/// two routers marking the same users' claims in different orders (the old and the new owner
/// of a partition during a rebalance) could deadlock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_are_marked_and_given_back_in_key_order() {
    let store = Store::new(&pg()).unwrap();
    store.init().await.unwrap();
    let claims = Claims::new(store.pool());
    let app = common::platform::fresh_app("lk");
    // Claimed last key first, so that neither the batch nor the table is in key order.
    let batch: Vec<Claim> = ["3", "2", "1"]
        .into_iter()
        .map(|s| Claim {
            subject: s.into(),
            message: "m".into(),
            owner: "e".into(),
        })
        .collect();
    let claim_each = || async {
        for c in &batch {
            claims.cooldown(&app, &[(c.clone(), 3600)]).await.unwrap();
            claims
                .dedup(&app, std::slice::from_ref(c), 3600.0)
                .await
                .unwrap();
        }
    };
    let (c, a, b) = (claims.clone(), app.clone(), batch.clone());
    claim_each().await;
    locks_in_key_order(&app, "pusher_cooldowns", "user_id", async move {
        c.release_cooldowns(&a, &b).await
    })
    .await;
    let (c, a, b) = (claims.clone(), app.clone(), batch.clone());
    locks_in_key_order(&app, "pusher_dedup", "token", async move {
        c.release_dedup(&a, &b).await
    })
    .await;
    let pg = common::platform::pg_client().await;
    let rows = |table: &'static str| {
        let (pg, app) = (&pg, &app);
        async move {
            let sql = format!(
                "SELECT count(*), count(*) FILTER (WHERE sent) FROM {table} WHERE app = $1"
            );
            let row = pg.query_one(&sql, &[app]).await.unwrap();
            (row.get::<_, i64>(0), row.get::<_, i64>(1))
        }
    };
    assert_eq!(rows("pusher_cooldowns").await, (0, 0), "given back");
    assert_eq!(rows("pusher_dedup").await, (0, 0), "given back");
    claim_each().await;
    let (c, a, b) = (claims.clone(), app.clone(), batch.clone());
    locks_in_key_order(&app, "pusher_cooldowns", "user_id", async move {
        c.mark_sent(&a, &b, &[], &[]).await
    })
    .await;
    let (c, a, b) = (claims.clone(), app.clone(), batch.clone());
    locks_in_key_order(&app, "pusher_dedup", "token", async move {
        c.mark_sent(&a, &[], &b, &[]).await
    })
    .await;
    assert_eq!(rows("pusher_cooldowns").await, (3, 3), "marked sent");
    assert_eq!(rows("pusher_dedup").await, (3, 3), "marked sent");
}

/// Runs `statement` (over keys 1, 2 and 3 of `app` in `table`) while another session holds
/// key 3: once it waits on that row, key 1 must be locked already.
async fn locks_in_key_order(
    app: &str,
    table: &str,
    key: &str,
    statement: impl std::future::Future<Output = Result<(), pusher::platform::store::StoreError>>
        + Send
        + 'static,
) {
    let lock = |k: &str, how: &str| {
        format!("SELECT 1 FROM {table} WHERE app = $1 AND {key} = '{k}' FOR UPDATE {how}")
    };
    let holder = common::platform::pg_client().await;
    holder.batch_execute("BEGIN").await.unwrap();
    holder.execute(&lock("3", ""), &[&app]).await.unwrap();
    let holder_pid: i32 = holder
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let running = tokio::spawn(statement);
    let probe = common::platform::pg_client().await;
    common::platform::wait_until(
        Duration::from_secs(10),
        "the statement waits on key 3",
        || {
            let probe = &probe;
            async move {
                let waiting: i64 = probe
                    // Waiting on the held row itself, not on a table lock queued behind the
                    // holder (another test's schema change would be).
                    .query_one(
                        "SELECT count(*) FROM pg_stat_activity
                     WHERE $1 = ANY(pg_blocking_pids(pid)) AND wait_event_type = 'Lock'
                       AND wait_event IN ('tuple', 'transactionid')",
                        &[&holder_pid],
                    )
                    .await
                    .unwrap()
                    .get(0);
                waiting > 0
            }
        },
    )
    .await;
    let first = probe.execute(&lock("1", "NOWAIT"), &[&app]).await;
    let refused = first.as_ref().err().and_then(|e| e.as_db_error());
    assert_eq!(
        refused.map(|e| (e.code().clone(), e.message().contains("lock on row"))),
        Some((tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE, true)),
        "{table}: key 1 was not locked before key 3 ({first:?})"
    );
    holder.batch_execute("ROLLBACK").await.unwrap();
    running.await.unwrap().unwrap();
}

/// Unix milliseconds now.
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// A batch attempt fails after winning its claims (the per-device limit's statement fails, as
/// a failover would fail it), and its retry comes after the event's message life: the retry
/// counts it `expired` and gives back the cooldown and dedup claims the failed attempt won,
/// so the user's next event for the message is sent. Seen: they stayed held, unsent, and every
/// later event was counted `cooldown` for the whole cooldown although the user got nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_of_a_failed_attempt_are_given_back_when_its_retry_sends_nothing() {
    let p = Platform::start(
        1,
        DeviceLimits {
            limit: Some(Limit {
                count: 10,
                window_s: 3600.0,
            }),
            dedup_window_s: 3600.0,
        },
    )
    .await;
    p.put_message(
        "energy",
        json!({"event_id": 9, "cooldown_s": 3600, "expiry_s": 2,
               "localizations": [{"language_id": 1, "text": "Energy is full"}]}),
    )
    .await;
    p.events(json!([login(5, 1, 1, "gcm-5")])).await;
    p.wait_routed().await;
    // The first statement charging this app's limit outlasts the event's life, then fails (a
    // sequence, which a rollback does not undo, counts the tries); the retry comes 1 s later.
    let store = common::platform::store().await;
    let pg = store.pool().get().await.unwrap();
    let trigger = failing_limit_charge(&p, &pg, "test_limit", 1).await;
    p.events(json!([{"user_id": 5, "event_id": 9, "timestamp": now_ms()}]))
        .await;
    p.wait_routed().await;
    // Within the cooldown and the dedup window of the first event's claims.
    p.events(json!([{"user_id": 5, "event_id": 9}])).await;
    p.wait_routed().await;
    let pushes = p.pushes(1);
    let tries = trigger.drop(&pg).await;
    assert_eq!(pushes.len(), 1, "the second event is sent: {pushes:?}");
    assert!(
        tries >= 2,
        "the limit failed once, then charged the second event: {tries}"
    );
    let c = p.stop().await;
    assert_eq!(skipped(&c, "expired"), 1, "{c:?}");
    assert_eq!(skipped(&c, "cooldown"), 0, "{c:?}");
    assert_eq!((c.events.pushes, c.events.rate_limited), (1, 0), "{c:?}");
}

/// Makes the `nth` statement charging `p`'s device limit outlast 2.5 s (the events' life in
/// these tests), then fail, as a failover would; a sequence, which a rollback does not undo,
/// counts the tries.
async fn failing_limit_charge(
    p: &Platform,
    pg: &tokio_postgres::Client,
    name: &str,
    nth: u32,
) -> common::platform::TestTrigger {
    let name = format!("{name}_{}", p.app.replace('-', "_"));
    common::platform::TestTrigger::create(
        pg,
        &name,
        "BEFORE INSERT",
        "pusher_device_limits",
        &format!(
            "IF NEW.app = '{app}' AND nextval('{name}') = {nth} THEN
             PERFORM pg_sleep(2.5);
             RAISE EXCEPTION 'injected: failover';
             END IF;",
            app = p.app
        ),
    )
    .await
}

/// A batch attempt charges a device's limit for one of an event's two messages, then fails
/// (the second charge's statement fails, as a failover would fail it), and its retry comes
/// after the messages' life: the retry sends nothing and gives the charge back, so the user's
/// next message is sent. Seen: the device stayed charged, and the next message was refused as
/// `device_limit` although the device had got nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limit_charge_of_a_failed_attempt_is_given_back_when_its_retry_sends_nothing() {
    let p = Platform::start(
        1,
        DeviceLimits {
            limit: Some(Limit {
                count: 1,
                window_s: 3600.0,
            }),
            dedup_window_s: 0.0,
        },
    )
    .await;
    let en = |text: &str| json!([{"language_id": 1, "text": text}]);
    // One event, two messages to one device: two charges, two statements.
    for name in ["energy", "lives"] {
        p.put_message(
            name,
            json!({"event_id": 9, "expiry_s": 2, "localizations": en(name)}),
        )
        .await;
    }
    p.put_message("gift", json!({"event_id": 10, "localizations": en("gift")}))
        .await;
    p.events(json!([login(5, 1, 1, "gcm-5")])).await;
    p.wait_routed().await;
    // The second statement charging this app's limit outlasts the messages' life, then fails;
    // the retry comes 1 s later.
    let store = common::platform::store().await;
    let pg = store.pool().get().await.unwrap();
    let trigger = failing_limit_charge(&p, &pg, "test_charge", 2).await;
    p.events(json!([{"user_id": 5, "event_id": 9, "timestamp": now_ms()}]))
        .await;
    p.wait_routed().await;
    p.events(json!([{"user_id": 5, "event_id": 10}])).await;
    p.wait_routed().await;
    let pushes = p.pushes(1);
    let tries = trigger.drop(&pg).await;
    assert!(tries >= 3, "charged, failed, then the gift: {tries}");
    let sent: Vec<(String, String)> = pushes
        .iter()
        .map(|(platform, token, m)| (token.clone(), text(platform, m).1))
        .collect();
    assert_eq!(sent, [("gcm-5".to_owned(), "gift".to_owned())]);
    let charged: Vec<String> = pg
        .query_one(
            "SELECT charged FROM pusher_device_limits WHERE app = $1 AND token = 'gcm-5'",
            &[&p.app],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(charged.len(), 1, "the gift's charge only: {charged:?}");
    assert!(charged[0].ends_with(".gift"), "{charged:?}");
    let c = p.stop().await;
    assert_eq!(skipped(&c, "expired"), 2, "{c:?}");
    assert_eq!((c.events.pushes, c.events.rate_limited), (1, 0), "{c:?}");
}

/// A limit charge given back is given back once, only by its owner, and never below what the
/// device's later charges need: given back after a newer charge made once the older had run
/// out, it frees nothing (the device holds one push's room per interval, as without the older
/// charge); the newest given back frees one push's room.
#[tokio::test]
async fn a_limit_charge_given_back_leaves_the_later_charges() {
    let store = Store::new(&pg()).unwrap();
    store.init().await.unwrap();
    let claims = Claims::new(store.pool());
    let app = common::platform::fresh_app("gb");
    // Two pushes per 4 s: one every 2 s.
    let limit = Limit {
        count: 2,
        window_s: 4.0,
    };
    let charge = |owner: &str| {
        [Claim {
            subject: "tok".into(),
            message: String::new(),
            owner: owner.into(),
        }]
    };
    assert_eq!(
        claims.limit(&app, &charge("a"), limit).await.unwrap(),
        [true]
    );
    // Past a's interval: b's charge counts from its own time.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        claims.limit(&app, &charge("b"), limit).await.unwrap(),
        [true]
    );
    for _ in 0..2 {
        claims
            .give_back_charges(&app, &charge("a"), limit)
            .await
            .unwrap();
    }
    // Another owner's give-back touches nothing.
    claims
        .give_back_charges(&app, &charge("x"), limit)
        .await
        .unwrap();
    assert_eq!(
        claims.limit(&app, &charge("c"), limit).await.unwrap(),
        [true]
    );
    assert_eq!(
        claims.limit(&app, &charge("d"), limit).await.unwrap(),
        [false],
        "b and c stand: the device is full"
    );
    claims
        .give_back_charges(&app, &charge("c"), limit)
        .await
        .unwrap();
    assert_eq!(
        claims.limit(&app, &charge("e"), limit).await.unwrap(),
        [true]
    );
    assert_eq!(
        claims.limit(&app, &charge("f"), limit).await.unwrap(),
        [false]
    );
}

/// A batch attempt gets one of an event's pushes into Kafka and fails on another record of the
/// phase (the other device's `rate_limited` verdict, whose feedback topic librdkafka refuses),
/// so its claims are never marked sent; the retry that succeeds comes after the message's
/// life. The push in Kafka keeps its cooldown claim, its dedup claim and its limit charge, all
/// marked sent, and the user's next event for the message is inside the cooldown. Seen: the
/// retry counted the pair `expired` and gave all three back, so the device could get more
/// than its limit, and the next event was sent again within the cooldown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_in_kafka_keeps_its_claims_when_the_retry_finds_its_event_expired() {
    let mut p = Platform::start(
        0,
        DeviceLimits {
            limit: Some(Limit {
                count: 1,
                window_s: 3600.0,
            }),
            dedup_window_s: 3600.0,
        },
    )
    .await;
    // Longer than librdkafka takes (512 characters): every feedback record fails at once.
    p.events.feedback_template = format!("push-{{app}}-{{platform}}-{}", "f".repeat(600));
    p.add_router(common::platform::pg(), Vec::new());
    let en = |text: &str| json!([{"language_id": 1, "text": text}]);
    p.put_message("gift", json!({"event_id": 10, "localizations": en("gift")}))
        .await;
    p.put_message(
        "energy",
        json!({"event_id": 9, "cooldown_s": 3600, "expiry_s": 2, "localizations": en("energy")}),
    )
    .await;
    // gcm-b gets a gift first: its limit is full.
    p.events(json!([login(5, 1, 1, "gcm-b")])).await;
    p.wait_routed().await;
    p.events(json!([{"user_id": 5, "event_id": 10}])).await;
    p.wait_routed().await;
    p.events(json!([login(5, 1, 1, "gcm-a")])).await;
    p.wait_routed().await;
    // gcm-a's push is acknowledged, gcm-b's `device_limit` verdict fails: retried until the
    // event has expired (2 s), when the phase has nothing left to produce.
    p.events(json!([{"user_id": 5, "event_id": 9, "timestamp": now_ms()}]))
        .await;
    p.wait_routed().await;
    let mut sent: Vec<(String, String)> = p
        .pushes(2)
        .iter()
        .map(|(platform, token, m)| (token.clone(), text(platform, m).1))
        .collect();
    sent.sort();
    assert_eq!(
        sent,
        [
            ("gcm-a".to_owned(), "energy".to_owned()),
            ("gcm-b".to_owned(), "gift".to_owned())
        ]
    );

    let held = energy_claims(&p.app).await;
    assert_eq!(
        held.cooldown,
        Some(true),
        "the cooldown of the push in Kafka holds"
    );
    assert_eq!(
        held.dedup,
        [("gcm-a".to_owned(), true)],
        "gcm-b's was given back"
    );
    let (charged, sent) = (held.charged, held.sent);
    assert_eq!(charged.len(), 1, "the energy push's charge: {charged:?}");
    assert!(charged[0].ends_with(".energy"), "{charged:?}");
    assert_eq!(sent, charged, "marked sent");

    // Inside the cooldown of the push in Kafka.
    p.events(json!([{"user_id": 5, "event_id": 9}])).await;
    p.wait_routed().await;
    let c = p.stop().await;
    assert_eq!(skipped(&c, "expired"), 1, "{c:?}");
    assert_eq!(skipped(&c, "cooldown"), 1, "{c:?}");
    // gcm-a's energy is in Kafka from the failed attempt, whose counts were never kept: a
    // push, as the gift is.
    assert_eq!(c.events.already_sent, 0, "{c:?}");
    assert_eq!((c.events.pushes, c.events.rate_limited), (2, 0), "{c:?}");
}

/// What PostgreSQL holds for user 5's `energy` message in `app`.
struct EnergyClaims {
    /// The cooldown claim's `sent`, if there is one.
    cooldown: Option<bool>,
    /// The dedup claims: (token, sent).
    dedup: Vec<(String, bool)>,
    /// gcm-a's per-device limit: its owners charged and those marked sent.
    charged: Vec<String>,
    sent: Vec<String>,
}

async fn energy_claims(app: &str) -> EnergyClaims {
    let store = common::platform::store().await;
    let pg = store.pool().get().await.unwrap();
    let cooldown = pg
        .query_opt(
            "SELECT sent FROM pusher_cooldowns WHERE app = $1 AND user_id = 5 AND message = 'energy'",
            &[&app],
        )
        .await
        .unwrap()
        .map(|r| r.get::<_, bool>(0));
    let dedup = pg
        .query(
            "SELECT token, sent FROM pusher_dedup WHERE app = $1 AND message = 'energy'",
            &[&app],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let (charged, sent) = pg
        .query_one(
            "SELECT charged, sent FROM pusher_device_limits WHERE app = $1 AND token = 'gcm-a'",
            &[&app],
        )
        .await
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    EnergyClaims {
        cooldown,
        dedup,
        charged,
        sent,
    }
}

/// Event routing straight on PostgreSQL, no Kafka and no router, for the tests that play a
/// router's attempts by hand: a fresh app, its messages, and a per-device limit of one push an
/// hour.
struct Direct {
    store: Store,
    claims: Claims,
    messages: Messages,
    registry: Registry,
    app: String,
    settings: EventSettings,
}

impl Direct {
    /// `messages`: (name, event id, cooldown s, expiry s), each with an English text.
    async fn new(prefix: &str, messages: &[(&str, i32, i64, i64)], dedup_window_s: f64) -> Direct {
        let store = Store::new(&pg()).unwrap();
        store.init().await.unwrap();
        let app = common::platform::fresh_app(prefix);
        let direct = Direct {
            claims: Claims::new(store.pool()),
            messages: Messages::new(store.pool()),
            registry: Registry::new(store.pool()),
            settings: EventSettings {
                limits: HashMap::from([(
                    app.clone(),
                    DeviceLimits {
                        limit: Some(Limit {
                            count: 1,
                            window_s: 3600.0,
                        }),
                        dedup_window_s,
                    },
                )]),
                ..EventSettings::default()
            },
            app,
            store,
        };
        for &(name, event_id, cooldown_s, expiry_s) in messages {
            let message: Message = serde_json::from_value(json!({
                "name": name, "event_id": event_id, "cooldown_s": cooldown_s,
                "expiry_s": expiry_s, "localizations": [{"language_id": 1, "text": name}]
            }))
            .unwrap();
            direct.messages.put(&direct.app, &message).await.unwrap();
        }
        direct
    }

    /// User 5 logs in on `token` at `now_ms`.
    async fn register(&self, token: &str, now_ms: i64) {
        let pairs: BTreeMap<String, String> =
            serde_json::from_value(login(5, 1, 1, token)["pairs"].clone()).unwrap();
        let (device, login) = login_of(5, now_ms, &pairs).unwrap();
        self.registry
            .register(&self.app, &[device], &[login])
            .await
            .unwrap();
    }

    /// Routes user 5's event `uid` of `event_id`, which happened at `at_ms`, at `now_ms`,
    /// with `produced` in Kafka from earlier attempts.
    async fn route(
        &self,
        uid: &str,
        event_id: i32,
        at_ms: i64,
        now_ms: i64,
        produced: &Produced,
    ) -> events::Routed {
        let stores = EventStores {
            notifications: &self.store,
            messages: &self.messages,
            registry: &self.registry,
            claims: &self.claims,
        };
        let event = Event {
            uid: uid.into(),
            user_id: 5,
            event_id,
            pairs: BTreeMap::new(),
            at_ms,
        };
        events::route(
            &self.settings,
            &stores,
            &self.app,
            &[event],
            now_ms,
            produced,
        )
        .await
        .unwrap()
    }

    /// What the router does once `routed`'s records are in Kafka.
    async fn mark_sent(&self, routed: &events::Routed) {
        self.claims
            .mark_sent(
                &self.app,
                &routed.cooldown_sent,
                &routed.dedup_sent,
                &routed.limit_sent,
            )
            .await
            .unwrap();
    }
}

/// A router gets an event's push into Kafka and marks it sent, then dies before committing;
/// the redelivery comes after the message's life. The message has no cooldown and no dedup
/// window: only the device's limit charge says the push went out, and it is kept (marked
/// sent), so the device's next message is refused. Seen: the redelivery gave the charge back,
/// and the device got two pushes where its limit allows one.
#[tokio::test]
async fn a_charge_marked_sent_is_kept_when_a_redelivery_finds_its_event_expired() {
    let d = Direct::new("rd", &[("energy", 9, 0, 2), ("gift", 10, 0, 0)], 0.0).await;
    let now = now_ms();
    d.register("gcm-5", now).await;
    let nothing = Produced::new();
    let first = d.route("e1", 9, now, now, &nothing).await;
    assert_eq!(first.counts.pushes, 1, "{:?}", first.counts);
    // Its push is in Kafka: marked sent, then the router dies before the commit.
    d.mark_sent(&first).await;
    let later = now + 3000;
    let again = d.route("e1", 9, now, later, &nothing).await;
    assert_eq!(
        again.counts.skipped.get("expired"),
        Some(&1),
        "{:?}",
        again.counts
    );
    assert!(again.records.is_empty());
    let next = d.route("e2", 10, now, later, &nothing).await;
    assert_eq!(
        (next.counts.pushes, next.counts.rate_limited),
        (0, 1),
        "the energy push's charge stands: {:?}",
        next.counts
    );
}

/// A batch attempt gets an event's push to device gcm-a into Kafka, then fails (gcm-b's
/// `device_limit` verdict is not produced); before the retry gcm-a leaves the user (feedback
/// deletes its token), and the retry finds gcm-b refused again. The notification reached
/// gcm-a: its cooldown holds, and gcm-a's dedup claim and limit charge are marked sent, so a
/// later redelivery gives none of them back; gcm-a's push counts as a push. Seen: the retry
/// counted the notification as reaching no device and gave its cooldown back, and left
/// gcm-a's dedup claim and charge unsent.
#[tokio::test]
async fn a_push_in_kafka_to_a_device_gone_since_keeps_its_claims() {
    let d = Direct::new(
        "gone",
        &[("gift", 10, 0, 0), ("energy", 9, 3600, 0)],
        3600.0,
    )
    .await;
    let now = now_ms();
    let nothing = Produced::new();
    // gcm-b gets a gift: its limit is full.
    d.register("gcm-b", now).await;
    let gift = d.route("e0", 10, now, now, &nothing).await;
    assert_eq!(gift.counts.pushes, 1, "{:?}", gift.counts);
    d.mark_sent(&gift).await;
    d.register("gcm-a", now).await;
    // The first attempt: gcm-a's push is acknowledged, then the attempt fails.
    let first = d.route("e1", 9, now, now, &nothing).await;
    assert_eq!(
        (first.counts.pushes, first.counts.rate_limited),
        (1, 1),
        "{:?}",
        first.counts
    );
    let produced: Produced = first
        .records
        .iter()
        .filter(|o| o.record.key == "gcm-a")
        .map(|o| {
            (
                o.record.topic.clone(),
                o.record.key.clone(),
                o.notif_id.clone(),
            )
        })
        .collect();
    assert_eq!(produced.len(), 1);
    assert!(d.registry.remove(&d.app, "gcm-a", now_ms()).await.unwrap());
    let retry = d.route("e1", 9, now, now, &produced).await;
    d.mark_sent(&retry).await;

    let held = energy_claims(&d.app).await;
    assert_eq!(
        held.cooldown,
        Some(true),
        "the cooldown of the push in Kafka holds"
    );
    assert_eq!(
        held.dedup,
        [("gcm-a".to_owned(), true)],
        "gcm-a's marked sent, gcm-b's given back"
    );
    let (charged, sent) = (held.charged, held.sent);
    assert_eq!(charged, ["e1.energy"]);
    assert_eq!(sent, charged, "marked sent");
    assert_eq!(
        (
            retry.counts.pushes,
            retry.counts.rate_limited,
            retry.counts.already_sent
        ),
        (1, 1, 0),
        "gcm-a's push in Kafka counts once, as a push: {:?}",
        retry.counts
    );
}

/// A device's limit remembers one owner (one push per second); `a` is charged and marked
/// sent, `b` pushes it out, and `a` (a late redelivery) is charged again: that charge is not
/// one marked sent, so giving it back frees the device. Seen: `sent` kept `a` from its first
/// charge, so the give-back was refused and the device stayed full.
#[tokio::test]
async fn an_owner_pushed_out_of_a_limit_and_charged_again_is_not_sent() {
    let store = Store::new(&pg()).unwrap();
    store.init().await.unwrap();
    let claims = Claims::new(store.pool());
    let app = common::platform::fresh_app("po");
    let limit = Limit {
        count: 1,
        window_s: 1.0,
    };
    let charge = |owner: &str| {
        [Claim {
            subject: "tok".into(),
            message: String::new(),
            owner: owner.into(),
        }]
    };
    let pg = store.pool().get().await.unwrap();
    let row = || async {
        pg.query_one(
            "SELECT charged, sent FROM pusher_device_limits WHERE app = $1 AND token = 'tok'",
            &[&app],
        )
        .await
        .map(|r| (r.get::<_, Vec<String>>(0), r.get::<_, Vec<String>>(1)))
        .unwrap()
    };
    assert_eq!(
        claims.limit(&app, &charge("a"), limit).await.unwrap(),
        [true]
    );
    claims
        .mark_sent(&app, &[], &[], &charge("a"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        claims.limit(&app, &charge("b"), limit).await.unwrap(),
        [true]
    );
    assert_eq!(row().await, (vec!["b".to_owned()], vec![]), "a pushed out");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        claims.limit(&app, &charge("a"), limit).await.unwrap(),
        [true]
    );
    claims
        .give_back_charges(&app, &charge("a"), limit)
        .await
        .unwrap();
    assert_eq!(
        claims.limit(&app, &charge("c"), limit).await.unwrap(),
        [true],
        "a's second charge was given back"
    );
}

/// An event in the same batch as a segment is judged by the clock of its turn, not of the
/// batch's start: one whose message's life ended while the segment streamed is `expired` and
/// claims nothing. Seen: it was claimed, marked sent and produced with an expiry already past
/// (`pusher run` drops such a push), and its cooldown held though the user got nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_after_a_slow_segment_is_judged_by_the_clock_of_its_turn() {
    let mut p = Platform::start(0, DeviceLimits::default()).await;
    p.put_message(
        "energy",
        json!({"event_id": 9, "cooldown_s": 3600, "expiry_s": 3,
               "localizations": [{"language_id": 1, "text": "Energy is full"}]}),
    )
    .await;
    let store = common::platform::store().await;
    Registry::new(store.pool())
        .register(
            &p.app,
            &[pusher::platform::registry::Device {
                user_id: 5,
                platform: pusher::push::Platform::Gcm,
                token: "gcm-5".into(),
                device_id: String::new(),
                platform_id: None,
                app_version: String::new(),
                registered_ms: 1,
                keys: None,
            }],
            &[],
        )
        .await
        .unwrap();
    // Each step of the segment's progress takes 4 s: longer than what is left of the event.
    let pg = store.pool().get().await.unwrap();
    let tag = p.app.replace('-', "_");
    pg.batch_execute(&format!(
        "CREATE FUNCTION test_slow_seg_{tag}() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             IF NEW.app = '{app}' THEN
                 PERFORM pg_sleep(4);
             END IF;
             RETURN NEW;
         END $$;
         CREATE TRIGGER test_slow_seg_{tag} BEFORE INSERT OR UPDATE ON pusher_segments
             FOR EACH ROW EXECUTE FUNCTION test_slow_seg_{tag}();",
        app = p.app
    ))
    .await
    .unwrap();
    let router = p.add_router(common::platform::pg(), Vec::new());
    wait_until("the router holds partitions", || router.partitions() > 0).await;
    // One key: one partition, one batch.
    let records: Vec<pusher::platform::produce::Record> = [
        json!({"kind": "segment", "notif_id": "seg-1", "condition": {}, "title": "T",
               "content": "C"}),
        json!({"kind": "event", "id": "ev-1", "user_id": 5, "event_id": 9,
               "timestamp": now_ms()}),
    ]
    .iter()
    .map(|r| pusher::platform::produce::Record {
        topic: format!("push-{}-requests", p.app),
        key: "5".into(),
        payload: r.to_string().into_bytes(),
    })
    .collect();
    Producer::new(p.kafka.bootstrap(), Duration::from_secs(5))
        .unwrap()
        .produce_all(&records)
        .await
        .unwrap();
    p.wait_routed().await;
    let pushes = p.pushes(1);
    pg.batch_execute(&format!(
        "DROP TRIGGER test_slow_seg_{tag} ON pusher_segments; DROP FUNCTION test_slow_seg_{tag}();"
    ))
    .await
    .unwrap();
    let ids: Vec<&Value> = pushes
        .iter()
        .map(|(_, _, m)| &m["metadata"]["notif_id"])
        .collect();
    assert_eq!(ids, [&json!("seg-1")], "only the segment's push");
    let held: i64 = pg
        .query_one(
            "SELECT count(*) FROM pusher_cooldowns WHERE app = $1 AND user_id = 5",
            &[&p.app],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(held, 0, "no cooldown claimed for what was not sent");
    let c = p.stop().await;
    assert_eq!(skipped(&c, "expired"), 1, "{c:?}");
    assert_eq!(c.events.pushes, 0, "{c:?}");
}

/// An event whose record the API wrote twice (a retry took over its request's claims while
/// it ran) is routed once when both copies are in one batch, though its message has no
/// cooldown and only the app's dedup window stands between the device and a second push.
/// Seen: both copies own the same dedup claim, so both were sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_written_twice_is_sent_once() {
    let mut p = Platform::start(
        0,
        DeviceLimits {
            limit: None,
            dedup_window_s: 3600.0,
        },
    )
    .await;
    p.put_message(
        "quest",
        json!({"event_id": 6, "localizations": [{"language_id": 1, "text": "quest"}]}),
    )
    .await;
    p.events(json!([login(5, 1, 1, "gcm-5")])).await;
    let event = json!({"kind": "event", "id": "ev-twice", "user_id": 5, "event_id": 6});
    let record = pusher::platform::produce::Record {
        topic: format!("push-{}-requests", p.app),
        key: "5".into(),
        payload: event.to_string().into_bytes(),
    };
    // Both before the router starts (with the login): fetched together, one batch.
    Producer::new(p.kafka.bootstrap(), Duration::from_secs(5))
        .unwrap()
        .produce_all(&[record.clone(), record])
        .await
        .unwrap();
    p.add_router(common::platform::pg(), Vec::new());
    p.wait_routed().await;
    let pushes = p.pushes(1);
    assert_eq!(pushes.len(), 1, "{pushes:?}");
    assert_eq!(pushes[0].2["metadata"]["notif_id"], "ev-twice.quest");
    let c = p.stop().await;
    assert_eq!(c.events.events, 2, "{c:?}");
    assert_eq!(skipped(&c, "duplicate_event"), 1, "{c:?}");
    assert_eq!(c.events.pushes, 1, "{c:?}");
}

/// A cooldown or window past PostgreSQL's timestamps (a message row written by hand or before
/// the API bounded cooldowns; a configured window) is taken as 10 years: the claim is won.
/// Seen: the statement failed (22008), and with it, for good, every batch holding such an
/// event, all apps included. The schema refuses such a message row written by hand now.
#[tokio::test]
async fn cooldowns_and_windows_past_postgresqls_range_are_bounded() {
    let store = Store::new(&pg()).unwrap();
    store.init().await.unwrap();
    let claims = Claims::new(store.pool());
    let app = common::platform::fresh_app("cb");
    let claim = |subject: &str| Claim {
        subject: subject.into(),
        message: "gift".into(),
        owner: "e1".into(),
    };
    let huge = 10_000_000_000_000_i64;
    assert_eq!(
        claims.cooldown(&app, &[(claim("7"), huge)]).await.unwrap(),
        [Claimed::Won]
    );
    assert_eq!(
        claims
            .dedup(&app, &[claim("tok")], huge as f64)
            .await
            .unwrap(),
        [Claimed::Won]
    );
    let limit = Limit {
        count: 1,
        window_s: huge as f64,
    };
    assert_eq!(
        claims.limit(&app, &[claim("tok")], limit).await.unwrap(),
        [true]
    );
    let client = store.pool().get().await.unwrap();
    let years: f64 = client
        .query_one(
            "SELECT extract(epoch FROM until - now())::float8 / (365 * 86400) FROM pusher_cooldowns
                 WHERE app = $1",
            &[&app],
        )
        .await
        .unwrap()
        .get(0);
    assert!((9.9..=10.0).contains(&years), "{years}");
    let refused = client
        .execute(
            "INSERT INTO pusher_messages (app, name, event_id, cooldown_s) VALUES ($1, 'm', 1, $2)",
            &[&app, &huge],
        )
        .await
        .unwrap_err();
    assert_eq!(
        refused.as_db_error().and_then(|db| db.constraint()),
        Some("pusher_messages_bounds"),
        "{refused}"
    );
}
