//! `pusher api` over TCP against real parts: Kafka (the mock cluster over TCP, or Tansu with
//! `PUSHER_TEST_KAFKA=tansu`), the machine's PostgreSQL, and for the end-to-end test the real
//! `pusher run apns` binary and the fake APNs. Counts add up: tokens accepted = records on the
//! push topics = tokens delivered.

mod common;
#[path = "common/kafka.rs"]
mod kafka;
#[path = "common/pg_proxy.rs"]
mod pg_proxy;
#[path = "support/watched.rs"]
mod watched;

use common::http::{authorized, post_json, request, Answer};
use common::platform::{
    assert_each_once, fresh_app, hook_server, hooks_of, next_within, no_hooks, pg, pg_client,
    read_topic, results_group, serve_api, spawn_results, wait_until, webhook_receiver,
};
use common::process::{KillOnDrop, PusherRun};
use common::{start_fake, Fake, FakeOptions};
use kafka::TestKafka;
use pusher::config::{PgConfig, Secret};
use pusher::platform::api::{ApiKey, ApiSettings, ApiState};
use pusher::platform::store::{ClaimKey, Claimed, Store};
use rdkafka::types::RDKafkaRespErr;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const KEY: &str = "test-key-0123456789abcdef";

/// The platform's test settings with KEY, under gorush's limits: 64 KiB a body, 100
/// notifications, 1,000 requests a second.
fn settings(app: &str) -> ApiSettings {
    ApiSettings {
        max_body_bytes: 64 * 1024,
        max_notifications: 100,
        rate_per_second: 1000,
        burst: 1000,
        ..common::platform::api_settings(app, KEY)
    }
}

/// A running API on 127.0.0.1:0 for `app`, producing to `brokers`.
struct Api {
    addr: SocketAddr,
    state: ApiState,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Api {
    async fn start(settings: ApiSettings, brokers: &str) -> Api {
        Api::start_on(settings, brokers, &pg()).await
    }

    /// `start` with these PostgreSQL settings.
    async fn start_on(settings: ApiSettings, brokers: &str, pg: &PgConfig) -> Api {
        let store = Store::new(pg).unwrap();
        store
            .init()
            .await
            .expect("PostgreSQL on 127.0.0.1:5432 (ci/setup.sh starts it)");
        let stop = CancellationToken::new();
        let (addr, state, task) = serve_api(settings, brokers, store, &stop).await;
        Api {
            addr,
            state,
            stop,
            task,
        }
    }

    async fn stop(self) {
        self.stop.cancel();
        self.task.await.unwrap().unwrap();
    }
}

fn topics(app: &str) -> [String; 2] {
    [format!("push-{app}_apns"), format!("push-{app}_gcm")]
}

/// `mock_cluster_for(app)` refusing every write to the app's GCM topic (authorization failed).
fn cluster_refusing_gcm(
    app: &str,
) -> rdkafka::mocking::MockCluster<'static, rdkafka::producer::DefaultProducerContext> {
    let cluster = mock_cluster_for(app);
    cluster
        .topic_error(
            &topics(app)[1],
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED,
        )
        .unwrap();
    cluster
}

/// A one-broker mock cluster holding `app`'s two push topics (one partition each), for tests
/// that script the broker (its errors, its delays).
fn mock_cluster_for(
    app: &str,
) -> rdkafka::mocking::MockCluster<'static, rdkafka::producer::DefaultProducerContext> {
    let cluster = rdkafka::mocking::MockCluster::new(1).unwrap();
    for topic in topics(app) {
        cluster.create_topic(&topic, 1, 1).unwrap();
    }
    cluster
}

async fn kafka_for(app: &str) -> TestKafka {
    let [apns, gcm] = topics(app);
    TestKafka::start(&[&apns, &gcm], 2).await
}

/// A fresh app, a broker holding its two push topics, and the API for it on `settings(app)`
/// as `change` leaves them.
async fn fresh_api(change: impl FnOnce(&mut ApiSettings)) -> (String, TestKafka, Api) {
    let app = fresh_app("api");
    let kafka = kafka_for(&app).await;
    let mut s = settings(&app);
    change(&mut s);
    let api = Api::start(s, kafka.bootstrap()).await;
    (app, kafka, api)
}

/// A fresh app and a broker holding its GCM feedback topic only, for `pusher results`.
async fn app_with_feedback() -> (String, TestKafka) {
    let app = fresh_app("api");
    let kafka = TestKafka::start(&[&format!("push-{app}-gcm-feedbacks")], 1).await;
    (app, kafka)
}

/// The keys of the records on `topic`, sorted (`expected` of them, as `read_topic` waits).
fn sorted_keys(brokers: &str, topic: &str, expected: usize) -> Vec<String> {
    let mut keys: Vec<String> = read_topic(brokers, topic, expected)
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    keys.sort();
    keys
}

/// One gorush notification of `tokens` on `platform` with the message "m", as a body.
fn one_push(tokens: &[&str], platform: u8) -> Vec<u8> {
    serde_json::to_vec(
        &json!({"notifications": [{"tokens": tokens, "platform": platform, "message": "m"}]}),
    )
    .unwrap()
}

/// Pushes one token ("warm") and waits for its 200: connected, the producer id and the
/// partition's leader known, what follows waits on Kafka's acknowledgements only.
async fn warm_up(addr: SocketAddr) {
    let warm = authorized(addr, "POST", "/api/push", KEY, one_push(&["warm"], 1)).await;
    assert_eq!(warm.status, 200, "{}", warm.text());
}

/// `pusher run apns` for `app` (group `g-<app>`, `in_flight` at most) against `fake`, with
/// `env` over its settings.
fn run_apns(
    app: &str,
    brokers: &str,
    fake: &Fake,
    in_flight: u64,
    env: Vec<(&str, String)>,
) -> KillOnDrop {
    let group = format!("g-{app}");
    PusherRun {
        app,
        brokers,
        group: &group,
        in_flight,
        env,
    }
    .spawn(fake)
}

/// `POST /api/push` of `body` with KEY and the Idempotency-Key `idem`.
async fn keyed_push(addr: SocketAddr, idem: &str, body: impl Into<hyper::body::Bytes>) -> Answer {
    let auth = format!("Bearer {KEY}");
    let headers = [("authorization", auth.as_str()), ("idempotency-key", idem)];
    request(addr, "POST", "/api/push", &headers, body).await
}

/// The claim of a request keyed `idem_key` on `notif_id`.
fn claim_key(idem_key: &str, notif_id: &str) -> ClaimKey {
    ClaimKey {
        idem_key: idem_key.into(),
        notif_id: notif_id.into(),
    }
}

/// gorush's README bodies, unchanged: every token is one record on its platform's topic,
/// keyed by the token, in the pusher's format, with the notif_id the API answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gorush_readme_bodies_become_one_record_per_token() {
    let (app, kafka, api) = fresh_api(|_| {}).await;

    let readme = json!({
      "notifications": [
        {"tokens": ["token_a", "token_b"], "platform": 1, "message": "Hello World iOS!"},
        {"tokens": ["token_a", "token_b"], "platform": 2, "message": "Hello World Android!"}
      ]
    });
    let answer = post_json(api.addr, "/api/push", KEY, &readme).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let body = answer.json();
    assert_eq!(body["success"], "ok");
    assert_eq!(body["counts"], 4);
    assert_eq!(body["logs"], json!([]));
    let ids = body["notif_ids"].as_array().unwrap().clone();
    assert_eq!(ids.len(), 2);

    // gorush's iOS example with its extras: alert dictionary, critical sound, data.
    let ios = json!({"notifications": [{
        "tokens": ["token_c"], "platform": 1, "message": "Hello World iOS!",
        "title": "You got your emails.", "topic": "com.example.app", "badge": 5,
        "sound": {"critical": 1, "name": "default", "volume": 2.0},
        "alert": {"title": "Game Request", "body": "Bob wants to play poker", "action-loc-key": "PLAY"},
        "data": {"key1": "welcome", "key2": 2}, "mutable_content": true,
        "notif_id": "mine-1"
    }]});
    let answer = post_json(api.addr, "/api/push", KEY, &ios).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.json()["notif_id"], "mine-1");

    let [apns_topic, gcm_topic] = topics(&app);
    let apns = read_topic(kafka.bootstrap(), &apns_topic, 3);
    let gcm = read_topic(kafka.bootstrap(), &gcm_topic, 2);
    assert_eq!((apns.len(), gcm.len()), (3, 2), "accepted = produced");
    for (key, value) in &apns {
        assert_eq!(value["DeviceToken"], *key);
        pusher::push::message::parse_apns(value.to_string().as_bytes()).unwrap();
    }
    for (key, value) in &gcm {
        assert_eq!(value["to"], *key);
        assert_eq!(value["notification"]["body"], "Hello World Android!");
        assert_eq!(value["metadata"]["notif_id"], ids[1]);
    }
    let critical = apns.iter().find(|(k, _)| k == "token_c").unwrap();
    assert_eq!(critical.1["metadata"]["notif_id"], "mine-1");
    assert_eq!(critical.1["Payload"]["aps"]["sound"]["critical"], 1);
    assert_eq!(
        critical.1["Payload"]["aps"]["alert"]["action-loc-key"],
        "PLAY"
    );
    assert_eq!(critical.1["Payload"]["key2"], 2);
    assert_eq!(critical.1["topic"], "com.example.app");
    api.stop().await;
}

/// A retried request (same Idempotency-Key, or the same notif_id) is produced once and
/// answered with the first request's notif_ids.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retried_requests_are_produced_once() {
    let (app, kafka, api) = fresh_api(|_| {}).await;
    let bytes = one_push(&["t1", "t2"], 2);
    let first = keyed_push(api.addr, "order-42", bytes.clone()).await;
    let second = keyed_push(api.addr, "order-42", bytes.clone()).await;
    assert_eq!(
        (first.status, second.status),
        (200, 200),
        "{}",
        second.text()
    );
    assert_eq!(first.json()["notif_ids"], second.json()["notif_ids"]);
    assert_eq!(second.json()["counts"], 2);
    // The answer says the retry wrote nothing: a caller reusing an id as a label is told.
    assert_eq!(first.json().get("replayed"), None);
    assert_eq!(second.json()["replayed"], first.json()["notif_ids"]);
    // The same body sent again differently serialized is still a retry.
    let spaced =
        r#"{ "notifications" : [ { "message": "m", "platform": 2, "tokens": ["t1", "t2"] } ] }"#;
    let third = keyed_push(api.addr, "order-42", spaced).await;
    assert_eq!(third.status, 200, "{}", third.text());
    assert_eq!(first.json()["notif_ids"], third.json()["notif_ids"]);
    // The same key with other content is refused (the IETF draft's 422), naming the item,
    // instead of answered as a retry while its tokens were dropped.
    let refused = keyed_push(api.addr, "order-42", one_push(&["t1", "t9"], 2)).await;
    assert_eq!(refused.status, 422, "{}", refused.text());
    assert_eq!(refused.json()["field"], "notifications[0]");

    // The same notif_id without a header: once too.
    let with_id = json!({"notifications": [{"tokens": ["t3"], "platform": 2, "message": "m", "notif_id": "n-7"}]});
    for i in 0..3 {
        let a = post_json(api.addr, "/api/push", KEY, &with_id).await;
        assert_eq!(a.status, 200, "{}", a.text());
        assert_eq!(a.json()["notif_id"], "n-7");
        let replayed = (i > 0).then(|| json!(["n-7"]));
        assert_eq!(a.json().get("replayed").cloned(), replayed, "try {i}");
    }
    let changed = json!({"notifications": [{"tokens": ["t3"], "platform": 2, "message": "other", "notif_id": "n-7"}]});
    let a = post_json(api.addr, "/api/push", KEY, &changed).await;
    assert_eq!(a.status, 422, "{}", a.text());
    // A notif_id reused by a different request (another key) is a conflict, not a push.
    let reused = keyed_push(api.addr, "other", serde_json::to_vec(&with_id).unwrap()).await;
    assert_eq!(reused.status, 409, "{}", reused.text());

    let records = read_topic(kafka.bootstrap(), &format!("push-{app}_gcm"), 3);
    let mut by_token: HashMap<String, usize> = HashMap::new();
    for (key, _) in &records {
        *by_token.entry(key.clone()).or_default() += 1;
    }
    assert_eq!(
        by_token,
        HashMap::from([("t1".into(), 1), ("t2".into(), 1), ("t3".into(), 1)]),
        "each token once"
    );
    api.stop().await;
}

/// Who may call, how often, and what is refused: 401, 429 with Retry-After, 400 naming the
/// field, 413; none of them produces a record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_name_the_problem_and_produce_nothing() {
    let (app, kafka, api) = fresh_api(|s| {
        s.max_body_bytes = 4096;
        s.max_notifications = 2;
    })
    .await;
    let ok = json!({"notifications": [{"tokens": ["a"], "platform": 1, "message": "m"}]});

    let none = request(
        api.addr,
        "POST",
        "/api/push",
        &[],
        serde_json::to_vec(&ok).unwrap(),
    )
    .await;
    assert_eq!(none.status, 401);
    assert_eq!(none.headers["www-authenticate"], "Bearer");
    let wrong = post_json(api.addr, "/api/push", "test-key-0123456789abcdeX", &ok).await;
    assert_eq!(wrong.status, 401);

    let bad = |body: Value, field: &'static str| (body, field);
    let cases = [
        bad(
            json!({"notifications": [{"tokens": ["a"], "platform": 3, "message": "m"}]}),
            "notifications[0].platform",
        ),
        bad(
            json!({"notifications": [{"tokens": ["a"], "platform": 1, "badge": "five", "message": "m"}]}),
            "notifications[0].badge",
        ),
        bad(
            json!({"notifications": [{"tokens": [], "platform": 1, "message": "m"}]}),
            "notifications[0].tokens",
        ),
        bad(
            json!({"notifications": [{"tokens": "a", "platform": 1, "message": "m"}]}),
            "notifications[0].tokens",
        ),
        bad(
            json!({"notifications": [{"tokens": ["a"], "platform": 1}]}),
            "notifications[0].message",
        ),
        // `alert` is iOS's: an Android push of only an alert was sent empty.
        bad(
            json!({"notifications": [{"tokens": ["a"], "platform": 2, "alert": {"title": "x"}}]}),
            "notifications[0].message",
        ),
        bad(
            json!({"notifications": [ok["notifications"][0], ok["notifications"][0], ok["notifications"][0]]}),
            "notifications",
        ),
        bad(json!({"notifications": []}), "notifications"),
        // A voip push to a topic without `.voip`: APNs would answer DeviceTokenNotForTopic.
        // (Refused by the parser `pusher run` uses, which names the item; its message names
        // the topic.)
        bad(
            json!({"notifications": [{"tokens": ["ab"], "platform": 1, "message": "m",
                "push_type": "voip", "topic": "com.example.app"}]}),
            "notifications[0]",
        ),
    ];
    for (body, field) in cases {
        let a = post_json(api.addr, "/api/push", KEY, &body).await;
        assert_eq!(a.status, 400, "{body}: {}", a.text());
        assert_eq!(a.json()["field"], field, "{body}: {}", a.text());
        assert!(a.json()["error"].as_str().unwrap().starts_with(field));
        // gorush's names for the same, for clients written for it.
        assert_eq!(a.json()["code"], 400);
        assert_eq!(a.json()["message"], a.json()["error"]);
    }
    let malformed = authorized(api.addr, "POST", "/api/push", KEY, "{\"notifications\": [").await;
    assert_eq!(malformed.status, 400, "{}", malformed.text());
    assert!(malformed.json()["error"]
        .as_str()
        .unwrap()
        .contains("malformed JSON"));
    // Two bodies in one: the second was dropped after a 200.
    let one = r#"{"notifications":[{"tokens":["t"],"platform":2,"message":"m"}]}"#;
    let two = authorized(api.addr, "POST", "/api/push", KEY, format!("{one}{one}")).await;
    assert_eq!(two.status, 400, "{}", two.text());
    assert!(two.text().contains("trailing characters"), "{}", two.text());
    let big =
        json!({"notifications": [{"tokens": ["a"], "platform": 1, "message": "x".repeat(5000)}]});
    let a = post_json(api.addr, "/api/push", KEY, &big).await;
    assert_eq!(a.status, 413, "{}", a.text());
    assert!(a.json()["error"]
        .as_str()
        .unwrap()
        .contains("api.maxBodyBytes"));

    // Nothing of the above was produced: the topics hold only a sentinel sent last.
    let sentinel =
        json!({"notifications": [{"tokens": ["sentinel"], "platform": 1, "message": "m"}]});
    assert_eq!(
        post_json(api.addr, "/api/push", KEY, &sentinel)
            .await
            .status,
        200
    );
    let records = read_topic(kafka.bootstrap(), &format!("push-{app}_apns"), 1);
    let keys: Vec<&str> = records.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["sentinel"]);
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_over_its_rate_gets_429_with_retry_after() {
    let (_, _kafka, api) = fresh_api(|s| {
        s.rate_per_second = 1;
        s.burst = 2;
    })
    .await;
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let a = authorized(api.addr, "GET", "/api/stat/app", KEY, "").await;
        statuses.push(a.status);
        if a.status == 429 {
            let wait: u64 = a.headers["retry-after"].to_str().unwrap().parse().unwrap();
            assert!((1..=2).contains(&wait), "Retry-After {wait}");
        }
    }
    assert_eq!(statuses, [200, 200, 429]);
    api.stop().await;
}

/// PostgreSQL unreachable: the error says why in the OS's words, where it said only "error
/// connecting to server" (a host unknown, refused or silent read the same).
#[tokio::test]
async fn an_unreachable_postgresql_is_named_with_its_cause() {
    let mut config = common::platform::pg();
    config.port = 1;
    let e = Store::new(&config).unwrap().ping().await.unwrap_err();
    assert!(e.to_string().contains("refused"), "{e}");
}

/// `pusher api` for a fresh app, reaching PostgreSQL through a proxy a test can cut.
async fn api_behind_pg_proxy() -> (TestKafka, pg_proxy::PgProxy, Api) {
    let app = fresh_app("api");
    let kafka = kafka_for(&app).await;
    let proxy = pg_proxy::PgProxy::start(true).await;
    let mut config = pg();
    config.port = proxy.port;
    let api = Api::start_on(settings(&app), kafka.bootstrap(), &config).await;
    (kafka, proxy, api)
}

/// A server that answers but takes no writes (a standby after a failover, or
/// `default_transaction_read_only`) refuses every request: `/healthz`'s look at PostgreSQL
/// says so. Seen: `SELECT 1` answered, and it said ok while every keyed push was a 503.
#[tokio::test]
async fn a_read_only_postgresql_is_not_healthy() {
    let db = common::platform::pg_client().await;
    // A role of its own, so that the machine's other tests keep a writable server.
    db.batch_execute(
        "DO $$ BEGIN
             IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'pusher_read_only') THEN
                 CREATE ROLE pusher_read_only LOGIN;
             END IF;
         END $$;
         ALTER ROLE pusher_read_only SET default_transaction_read_only = on",
    )
    .await
    .unwrap();
    let mut config = common::platform::pg();
    assert!(Store::new(&config).unwrap().ping().await.is_ok());
    config.user = "pusher_read_only".into();
    let e = Store::new(&config).unwrap().ping().await.unwrap_err();
    assert!(e.to_string().contains("read-only"), "{e}");
}

/// A push without a key accepted while PostgreSQL is down (Kafka took its records, so it is
/// accepted) is recorded once PostgreSQL is back, and its result can be read. Seen: 404 for
/// good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_accepted_during_a_postgresql_outage_is_recorded_after_it() {
    let (_kafka, proxy, api) = api_behind_pg_proxy().await;
    proxy.down();
    let body = json!({"notifications": [{"tokens": ["o1"], "platform": 2, "message": "m"}]});
    let pushed = post_json(api.addr, "/api/push", KEY, &body).await;
    assert_eq!(pushed.status, 200, "{}", pushed.text());
    assert!(proxy.refused() > 0, "PostgreSQL was not down");
    let path = format!(
        "/api/v1/notifications/{}",
        pushed.json()["notif_id"].as_str().unwrap()
    );
    proxy.up();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut status = 0;
    while Instant::now() < deadline {
        status = authorized(api.addr, "GET", &path, KEY, "").await.status;
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, 200, "{path} never recorded");
    api.stop().await;
}

/// PostgreSQL down while a caller polls a result: a 503 that says nothing could be read. Seen:
/// the writes' "nothing was accepted", which read as if the push polled for was lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_during_a_postgresql_outage_does_not_say_nothing_was_accepted() {
    let (_kafka, proxy, api) = api_behind_pg_proxy().await;
    let body = json!({"notifications": [{"tokens": ["r1"], "platform": 2, "message": "m"}]});
    let pushed = post_json(api.addr, "/api/push", KEY, &body).await;
    assert_eq!(pushed.status, 200, "{}", pushed.text());
    let path = format!(
        "/api/v1/notifications/{}",
        pushed.json()["notif_id"].as_str().unwrap()
    );
    assert_eq!(
        authorized(api.addr, "GET", &path, KEY, "").await.status,
        200
    );

    proxy.down();
    for path in [path.as_str(), "/api/stat/app", "/api/v1/users/7/devices"] {
        let read = authorized(api.addr, "GET", path, KEY, "").await;
        assert_eq!(read.status, 503, "{path}: {}", read.text());
        let said = read.json()["error"].as_str().unwrap().to_owned();
        assert!(!said.contains("nothing was accepted"), "{path}: {said}");
        assert!(said.contains("nothing could be read"), "{path}: {said}");
    }
    proxy.up();
    api.stop().await;
}

/// Kafka unreachable: 503 with Retry-After, nothing reported as accepted, and the claim
/// released, so that the retry against a working broker produces at once, with the same key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_down_is_503_and_the_retry_is_accepted_once() {
    let app = fresh_app("api");
    let kafka = kafka_for(&app).await;
    let mut s = settings(&app);
    s.produce_timeout = Duration::from_secs(1);
    // Nothing listens on port 9: the records are never acknowledged.
    let down = Api::start(s, "127.0.0.1:9").await;
    let body = one_push(&["t1"], 1);
    let refused = keyed_push(down.addr, "k-503", body.clone()).await;
    assert_eq!(refused.status, 503, "{}", refused.text());
    assert_eq!(refused.headers["retry-after"], "1");
    assert!(refused.json()["error"]
        .as_str()
        .unwrap()
        .contains("nothing was accepted"));
    down.stop().await;

    // The usual timeout: a first produce to a real broker on a loaded machine can take over 1 s.
    let up = Api::start(settings(&app), kafka.bootstrap()).await;
    let accepted = keyed_push(up.addr, "k-503", body.clone()).await;
    assert_eq!(accepted.status, 200, "{}", accepted.text());
    let again = keyed_push(up.addr, "k-503", body).await;
    assert_eq!(again.json()["notif_ids"], accepted.json()["notif_ids"]);
    assert_eq!(
        read_topic(kafka.bootstrap(), &format!("push-{app}_apns"), 1).len(),
        1
    );
    up.stop().await;
}

/// Kafka takes one item's records and refuses the other's (a topic it will not write): the
/// written item is accepted, and retries with the same key write only the refused one. Seen:
/// every claim was released, so each retry wrote the first item's records again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partly_written_request_is_retried_without_writing_twice() {
    let app = fresh_app("api");
    let [apns, gcm] = topics(&app);
    let cluster = cluster_refusing_gcm(&app);
    let brokers = cluster.bootstrap_servers();
    let body = serde_json::to_vec(&json!({"notifications": [
        {"tokens": ["a1", "a2"], "platform": 1, "message": "m"},
        {"tokens": ["g1"], "platform": 2, "message": "m"}
    ]}))
    .unwrap();
    let mut s = settings(&app);
    s.produce_timeout = Duration::from_secs(2);
    let refusing = Api::start(s, &brokers).await;
    let first = keyed_push(refusing.addr, "k-part", body.clone()).await;
    assert_eq!(first.status, 503, "{}", first.text());
    assert!(
        first.text().contains("1 of 2 new items were accepted"),
        "{}",
        first.text()
    );
    let second = keyed_push(refusing.addr, "k-part", body.clone()).await;
    assert_eq!(second.status, 503, "{}", second.text());
    refusing.stop().await;

    cluster
        .topic_error(&gcm, RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR)
        .unwrap();
    let writing = Api::start(settings(&app), &brokers).await;
    let third = keyed_push(writing.addr, "k-part", body).await;
    assert_eq!(third.status, 200, "{}", third.text());
    assert_eq!(third.json()["counts"], 3, "{}", third.text());
    writing.stop().await;
    // Accepted = produced: each token once, over three attempts.
    assert_eq!(read_topic(&brokers, &apns, 2).len(), 2);
    assert_eq!(read_topic(&brokers, &gcm, 1).len(), 1);
}

/// Kafka stores a record but its acknowledgement never comes in time (the broker answers
/// after the message timeout): the outcome is unknown, so the 503 says so instead of "nothing
/// was accepted", and the item's claim stays: a retry with the same key is 409 while it is
/// fresh, and writes nothing. Seen: the claim was released, and the retry wrote the record a
/// second time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_kafka_may_have_written_keeps_its_claim() {
    let app = fresh_app("api");
    let [apns, _] = topics(&app);
    let cluster = mock_cluster_for(&app);
    let brokers = cluster.bootstrap_servers();
    let mut s = settings(&app);
    s.produce_timeout = Duration::from_secs(1);
    let slow = Api::start(s, &brokers).await;
    warm_up(slow.addr).await;
    // The broker writes what it gets, and answers 4 s later: past the message timeout.
    cluster
        .broker_round_trip_time(1, Duration::from_secs(4))
        .unwrap();
    let first = keyed_push(slow.addr, "k-unknown", one_push(&["t-unknown"], 1)).await;
    assert_eq!(first.status, 503, "{}", first.text());
    let said = first.json()["error"].as_str().unwrap().to_owned();
    assert!(!said.contains("nothing was accepted"), "{said}");
    assert!(
        said.contains("0 of 1 new items were accepted, 1 unknown"),
        "{said}"
    );
    cluster
        .broker_round_trip_time(1, Duration::from_millis(0))
        .unwrap();
    slow.stop().await;

    let up = Api::start(settings(&app), &brokers).await;
    let retry_after = || async {
        let retry = keyed_push(up.addr, "k-unknown", one_push(&["t-unknown"], 1)).await;
        assert_eq!(retry.status, 409, "{}", retry.text());
        retry.headers["retry-after"]
            .to_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
    };
    // The claim is a few seconds old: retry about that much later, not when it goes stale
    // (`up`'s stale time: twice its produce timeout plus 5 s, plus twice PostgreSQL's
    // statement timeout, 75 s), though its request may be done a second from now.
    let young = retry_after().await;
    assert!((1..=15).contains(&young), "Retry-After {young}");
    // Held for 60 s of its 75: retry when it goes stale, about 15 s on, not sooner and sooner
    // (a client following it is not out of retries before then).
    age_claims(&app, 60.0).await;
    let old = retry_after().await;
    assert!((13..=15).contains(&old), "Retry-After {old}");
    let sentinel = authorized(
        up.addr,
        "POST",
        "/api/push",
        KEY,
        one_push(&["sentinel"], 1),
    )
    .await;
    assert_eq!(sentinel.status, 200, "{}", sentinel.text());
    up.stop().await;
    // The record the 503 could not vouch for is in Kafka, once.
    assert_eq!(
        sorted_keys(&brokers, &apns, 3),
        ["sentinel", "t-unknown", "warm"]
    );
}

/// Two backends of one app, each with its own API key, both number their requests from 1:
/// the same Idempotency-Key from the two is two requests, each answered with its own
/// notif_ids. Seen: the key was the app's, so the second got the first's notif_ids (its
/// tokens dropped) or a 422. A notif_id stays the app's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_is_the_api_keys_own() {
    const OTHER: &str = "other-key-0123456789abcdef";
    let app = fresh_app("api");
    let kafka = kafka_for(&app).await;
    let mut s = settings(&app);
    s.keys.push(ApiKey {
        name: "billing".to_owned(),
        app: app.clone(),
        key: Secret::new(OTHER),
    });
    let api = Api::start(s, kafka.bootstrap()).await;
    let send = |key: &'static str, token: &'static str| {
        let addr = api.addr;
        async move {
            let auth = format!("Bearer {key}");
            let body =
                json!({"notifications": [{"tokens": [token], "platform": 2, "message": "m"}]});
            request(
                addr,
                "POST",
                "/api/push",
                &[("authorization", &auth), ("idempotency-key", "1")],
                serde_json::to_vec(&body).unwrap(),
            )
            .await
        }
    };
    let a = send(KEY, "from-backend").await;
    let b = send(OTHER, "from-billing").await;
    assert_eq!((a.status, b.status), (200, 200), "{}", b.text());
    assert_ne!(a.json()["notif_ids"], b.json()["notif_ids"]);
    // Each one's retry is answered as its own first request was.
    let a2 = send(KEY, "from-backend").await;
    let b2 = send(OTHER, "from-billing").await;
    assert_eq!(a2.json()["notif_ids"], a.json()["notif_ids"]);
    assert_eq!(b2.json()["notif_ids"], b.json()["notif_ids"]);
    // A notif_id is the app's, whoever sends it.
    let with_id = json!({"notifications": [{"tokens": ["t-id"], "platform": 2, "message": "m", "notif_id": "shared-1"}]});
    assert_eq!(
        post_json(api.addr, "/api/push", KEY, &with_id).await.status,
        200
    );
    let again = post_json(api.addr, "/api/push", OTHER, &with_id).await;
    assert_eq!(again.status, 200, "{}", again.text());
    assert_eq!(again.json()["notif_id"], "shared-1");
    api.stop().await;
    assert_eq!(
        sorted_keys(kafka.bootstrap(), &format!("push-{app}_gcm"), 3),
        ["from-backend", "from-billing", "t-id"]
    );
}

/// Over `api.maxNotifications` is refused at the item past it: the items after it are never
/// decoded (JSON: the 101st is skipped unread; protobuf: its tags are counted on the wire
/// first). Seen: a 1 MiB body of `{}` decoded ~350,000 items, ~170 MB, before the 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_over_the_limit_is_refused_before_it_is_decoded() {
    let app = fresh_app("api");
    let kafka = TestKafka::start(&[&format!("push-{app}-requests")], 1).await;
    let mut s = settings(&app);
    s.max_body_bytes = 1 << 20;
    let api = Api::start(s, kafka.bootstrap()).await;
    let auth = format!("Bearer {KEY}");
    let post = |path: &'static str, content_type: &'static str, body: Vec<u8>| {
        let (addr, auth) = (api.addr, auth.clone());
        async move {
            request(
                addr,
                "POST",
                path,
                &[("authorization", &auth), ("content-type", content_type)],
                body,
            )
            .await
        }
    };
    // A 1 MiB body of empty notifications.
    let mut empties = b"{\"notifications\":[".to_vec();
    while empties.len() < (1 << 20) - 10 {
        empties.extend_from_slice(b"{},");
    }
    empties.extend_from_slice(b"{}]}");
    for path in ["/api/push", "/post_notification_json"] {
        let a = post(path, "application/json", empties.clone()).await;
        assert_eq!(a.status, 400, "{path}: {}", a.text());
        assert_eq!(a.json()["field"], "notifications", "{path}: {}", a.text());
    }
    // 100 good items, then one the decoder would refuse for its type: refused for the count.
    let good = json!({"tokens": ["a"], "platform": 1, "message": "m"});
    let mut items = vec![good; 100];
    items.push(json!({"tokens": 5}));
    let a = post(
        "/api/push",
        "application/json",
        serde_json::to_vec(&json!({"notifications": items})).unwrap(),
    )
    .await;
    assert_eq!(a.status, 400, "{}", a.text());
    assert_eq!(a.json()["field"], "notifications", "{}", a.text());
    assert!(
        a.json()["error"]
            .as_str()
            .unwrap()
            .contains("more than 100"),
        "{}",
        a.text()
    );
    // Protobuf: 101 empty notifications, then bytes no decoder could read.
    let mut proto = [0x0a, 0x00].repeat(101);
    proto.extend_from_slice(&[0x0a, 0x05, 0x00]);
    for (path, field) in [
        ("/post_notification_proto", "notifications"),
        ("/post_events_proto", "events"),
    ] {
        let a = post(path, "application/x-protobuf", proto.clone()).await;
        assert_eq!(a.status, 400, "{path}: {}", a.text());
        assert_eq!(a.json()["field"], field, "{path}: {}", a.text());
    }
    // At the limit, the protobuf is decoded as before.
    // (login_id 1, content "m")
    let hundred = [0x0a, 0x05, 0x08, 0x01, 0x1a, 0x01, b'm'].repeat(100);
    let a = post(
        "/post_notification_proto",
        "application/x-protobuf",
        hundred,
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.json()["accepted"], 100);
    api.stop().await;
}

/// What could never become a push is refused before it is accepted, naming the field: a
/// segment's `data` over the platforms' payload limit (it passed the 64 KiB record check and
/// failed on every device in `pusher run`), and a Pushkin notification within 3,500 bytes
/// whose quotes JSON escapes to twice that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_that_could_never_be_sent_is_refused() {
    let app = fresh_app("api");
    let kafka = TestKafka::start(&[&format!("push-{app}-requests")], 1).await;
    let api = Api::start(settings(&app), kafka.bootstrap()).await;
    let big = json!({"blob": "x".repeat(5000)});
    for condition in [
        json!({}),
        json!({"platform": "gcm"}),
        json!({"platform": "webpush"}),
    ] {
        let a = post_json(
            api.addr,
            "/api/v1/segments/push",
            KEY,
            &json!({"condition": condition, "message": "m", "data": big}),
        )
        .await;
        assert_eq!(a.status, 400, "{condition}: {}", a.text());
        assert_eq!(a.json()["field"], "data", "{}", a.text());
        assert!(a.text().contains("over the limit"), "{}", a.text());
    }
    let quotes = "\"".repeat(2500);
    let a = post_json(
        api.addr,
        "/api/v1/segments/push",
        KEY,
        &json!({"message": quotes}),
    )
    .await;
    assert_eq!(a.status, 400, "{}", a.text());
    assert_eq!(a.json()["field"], "message", "{}", a.text());
    let a = post_json(
        api.addr,
        "/post_notification_json",
        KEY,
        &json!({"notifications": [{"login_id": 7, "content": quotes}]}),
    )
    .await;
    assert_eq!(a.status, 400, "{}", a.text());
    assert_eq!(
        a.json()["field"],
        "notifications[0].content",
        "{}",
        a.text()
    );
    // A name given as another type is that field's error, not "malformed JSON" (serde_json
    // calls it a syntax error).
    let a = post_json(
        api.addr,
        "/api/v1/segments/push",
        KEY,
        &json!({"condition": {"platform": 2}, "message": "m"}),
    )
    .await;
    assert_eq!(a.status, 400, "{}", a.text());
    assert_eq!(a.json()["field"], "condition.platform", "{}", a.text());
    assert!(!a.text().contains("malformed"), "{}", a.text());
    // What fits is accepted, and only that reached Kafka.
    let a = post_json(
        api.addr,
        "/api/v1/segments/push",
        KEY,
        &json!({"message": "m", "data": {"blob": "x".repeat(1000)}}),
    )
    .await;
    assert_eq!(a.status, 202, "{}", a.text());
    api.stop().await;
    let records = read_topic(kafka.bootstrap(), &format!("push-{app}-requests"), 1);
    assert_eq!(records.len(), 1);
}

/// A bad path parameter is a 400 whose JSON names it, like every other bad input. Seen:
/// axum's plain-text 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_path_parameters_are_json_naming_them() {
    let app = fresh_app("api");
    let api = Api::start(settings(&app), "127.0.0.1:9").await;
    for (method, path, field) in [
        ("GET", "/api/v1/notifications/%FF", "notif_id"),
        ("DELETE", "/api/v1/devices/%FF%FE", "token"),
        ("GET", "/api/v1/messages/%C3", "name"),
        ("PUT", "/api/v1/messages/%FF", "name"),
        ("DELETE", "/api/v1/messages/%FF", "name"),
        ("GET", "/api/v1/users/abc/devices", "user_id"),
    ] {
        let a = authorized(api.addr, method, path, KEY, "{}").await;
        assert_eq!(a.status, 400, "{method} {path}: {}", a.text());
        assert_eq!(
            a.headers["content-type"], "application/json",
            "{method} {path}"
        );
        assert_eq!(a.json()["field"], field, "{method} {path}: {}", a.text());
    }
    api.stop().await;
}

/// A missing field is named, not the object that lacks it, and a method a path does not take
/// is a JSON refusal with `Allow`. Seen: no `field` for a missing one; an empty 405.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_fields_and_wrong_methods_are_named() {
    let app = fresh_app("api");
    let api = Api::start(settings(&app), "127.0.0.1:9").await;
    for (method, path, body, field) in [
        ("PUT", "/api/v1/webpush/subscriptions", "{}", "user_id"),
        (
            "POST",
            "/api/push",
            r#"{"notification": []}"#,
            "notifications",
        ),
        (
            "POST",
            "/api/push",
            r#"{"notifications": [{"tokens": ["a"], "message": "m"}]}"#,
            "notifications[0].platform",
        ),
    ] {
        let a = authorized(api.addr, method, path, KEY, body).await;
        assert_eq!(a.status, 400, "{method} {path}: {}", a.text());
        assert_eq!(a.json()["field"], field, "{method} {path}: {}", a.text());
    }
    let a = authorized(api.addr, "GET", "/api/push", KEY, "").await;
    assert_eq!(a.status, 405, "{}", a.text());
    assert_eq!(a.headers["content-type"], "application/json");
    assert_eq!(a.headers["allow"], "POST");
    assert_eq!(a.json()["code"], 405, "{}", a.text());
    api.stop().await;
}

/// Pushkin's queue routes share one client per group for the process, and concurrent calls
/// one read: 50 at once answer the backlog, from one client. Seen: each call made its own
/// librdkafka client (threads, connections) in a blocking task.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_sizes_share_one_client_and_one_read() {
    let app = fresh_app("api");
    let kafka = kafka_for(&app).await;
    let mut s = settings(&app);
    s.queues = pusher::platform::api::Queues {
        brokers: kafka.bootstrap().to_owned(),
        route_group: format!("route-{app}"),
        apns_group: format!("apns-{app}"),
        gcm_group: format!("gcm-{app}"),
        webpush_group: format!("webpush-{app}"),
    };
    let api = Api::start(s, kafka.bootstrap()).await;
    let three =
        json!({"notifications": [{"tokens": ["a", "b", "c"], "platform": 1, "message": "m"}]});
    assert_eq!(
        post_json(api.addr, "/api/push", KEY, &three).await.status,
        200
    );
    let started = std::time::Instant::now();
    let calls = (0..50).map(|_| {
        tokio::spawn(authorized(
            api.addr,
            "GET",
            "/get_apn_sender_queue",
            KEY,
            "",
        ))
    });
    // Pushkin's answer: the bare number.
    for answer in futures_util::future::join_all(calls).await {
        let a = answer.unwrap();
        assert_eq!(a.status, 200, "{}", a.text());
        assert_eq!(a.text(), "3");
    }
    let lag = api.state.lag();
    assert_eq!(lag.clients_created(), 1);
    // One read answers every call of its second (more on a machine slow enough to spread
    // the 50 calls over several seconds).
    let seconds = started.elapsed().as_secs() as usize;
    assert!(
        lag.reads() <= 2 + seconds,
        "{} reads for 50 calls in {seconds} s",
        lag.reads()
    );
    // Another group is another client; the same group later, the same client.
    let gcm = authorized(api.addr, "GET", "/get_gcm_sender_queue", KEY, "").await;
    assert_eq!(gcm.text(), "0");
    tokio::time::sleep(pusher::platform::lag::FRESH).await;
    // What it was read from, to a caller that asks for JSON.
    let auth = format!("Bearer {KEY}");
    let again = request(
        api.addr,
        "GET",
        "/get_apn_sender_queue",
        &[("authorization", &auth), ("accept", "application/json")],
        "",
    )
    .await;
    let detail = again.json();
    assert_eq!(
        (&detail["queue"], &detail["size"], &detail["group"]),
        (&json!("apns"), &json!(3), &json!(format!("apns-{app}"))),
        "{detail}"
    );
    assert!(
        detail["topics"]
            .as_array()
            .is_some_and(|t| t.contains(&json!(format!("push-{app}_apns")))),
        "{detail}"
    );
    assert_eq!(lag.clients_created(), 2);
    // The browsers' pusher has its backlog too (Pushkin had no browsers). Seen: 404.
    let webpush = request(
        api.addr,
        "GET",
        "/get_webpush_sender_queue",
        &[("authorization", &auth), ("accept", "application/json")],
        "",
    )
    .await;
    assert_eq!(webpush.status, 200, "{}", webpush.text());
    assert_eq!(
        (&webpush.json()["queue"], &webpush.json()["size"]),
        (&json!("webpush"), &json!(0))
    );
    assert_eq!(webpush.json()["group"], format!("webpush-{app}"));
    api.stop().await;
}

/// gorush's sync mode names a browser's failed push `web`, not `android`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_logs_name_a_browser_web() {
    let app = fresh_app("api");
    let [apns, gcm] = topics(&app);
    let webpush = format!("push-{app}_webpush");
    let kafka = TestKafka::start(&[&apns, &gcm, &webpush], 1).await;
    let api = Api::start(settings(&app), kafka.bootstrap()).await;
    let subscription = pusher::push::webpush::generated_subscription("https://127.0.0.1:9", "b1");
    let endpoint = subscription.endpoint.clone();
    // `pusher results`' part: the verdict stored once the notification is accepted.
    let store = common::platform::store().await;
    let verdict = {
        let (store, app, endpoint) = (store.clone(), app.clone(), endpoint.clone());
        tokio::spawn(async move {
            wait_until(Duration::from_secs(20), "never accepted", || async {
                store
                    .notification(&app, "web-sync-1")
                    .await
                    .unwrap()
                    .is_some_and(|n| n.state == "accepted")
            })
            .await;
            store
                .store_results(&[pusher::platform::store::ResultRow {
                    app,
                    notif_id: "web-sync-1".into(),
                    token: endpoint,
                    platform: "webpush".into(),
                    outcome: "token_invalid".into(),
                    reason: "410".into(),
                    at_ms: 1_700_000_000_000,
                    invalid_since_ms: None,
                }])
                .await
                .unwrap();
        })
    };
    let sync = post_json(
        api.addr,
        "/api/push",
        KEY,
        &json!({"sync": true, "notifications": [{"platform": 4, "subscriptions": [subscription],
            "message": "Hi", "notif_id": "web-sync-1"}]}),
    )
    .await;
    verdict.await.unwrap();
    assert_eq!(sync.status, 200, "{}", sync.text());
    let logs = sync.json()["logs"].clone();
    assert_eq!(
        logs,
        json!([{"notif_id": "web-sync-1", "type": "failed-push", "platform": "web",
            "token": endpoint, "message": "token_invalid", "error": "410"}]),
        "{}",
        sync.text()
    );
    api.stop().await;
}

/// A statement that waits (here on a row another session inserted and holds uncommitted, as a
/// stuck transaction or a migration would) fails at `statementTimeout`: the request is a 503
/// naming PostgreSQL within seconds, not a connection held until the other session ends, and
/// nothing is produced; once the lock is gone, the retry is accepted once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_waiting_on_a_lock_is_503_at_the_statement_timeout() {
    let app = fresh_app("api");
    let kafka = kafka_for(&app).await;
    let mut pg_config = pg();
    pg_config.statement_timeout = Duration::from_secs(1);
    let api = Api::start_on(settings(&app), kafka.bootstrap(), &pg_config).await;

    let mut blocker = pg_client().await;
    let lock = blocker.transaction().await.unwrap();
    // The row the request's claim inserts: its INSERT waits for this transaction to end.
    lock.execute(
        "INSERT INTO pusher_notifications (app, idem_key, notif_id, claim)
         VALUES ($1, 'h:7:backend:k-lock#0', 'held-by-another-session', 'other')",
        &[&app],
    )
    .await
    .unwrap();

    let body = one_push(&["t1"], 1);
    let started = Instant::now();
    let refused = tokio::time::timeout(
        Duration::from_secs(10),
        keyed_push(api.addr, "k-lock", body.clone()),
    )
    .await
    .expect("the request waited for the lock instead of failing at the statement timeout");
    assert_eq!(refused.status, 503, "{}", refused.text());
    assert!(
        refused.text().contains("statement timeout"),
        "{}",
        refused.text()
    );
    assert!(started.elapsed() >= Duration::from_secs(1));
    lock.rollback().await.unwrap();

    let accepted = keyed_push(api.addr, "k-lock", body.clone()).await;
    assert_eq!(accepted.status, 200, "{}", accepted.text());
    let again = keyed_push(api.addr, "k-lock", body).await;
    assert_eq!(again.json()["notif_ids"], accepted.json()["notif_ids"]);
    // Accepted = produced: one token, one record, none from the refused request.
    assert_eq!(
        read_topic(kafka.bootstrap(), &format!("push-{app}_apns"), 1).len(),
        1
    );

    // The settings every pooled connection carries (the router's, results', the deleter's).
    let pool = pusher::pipeline::tokens::pg_pool(&pg_config).unwrap();
    let client = pool.get().await.unwrap();
    for setting in ["statement_timeout", "idle_in_transaction_session_timeout"] {
        let row = client
            .query_one(&format!("SHOW {setting}"), &[])
            .await
            .unwrap();
        assert_eq!(row.get::<_, String>(0), "1s", "{setting}");
    }
    // Creating the tables waits for their locks at most as long: a start behind a session
    // holding them (a dump, another start stuck) fails, naming the wait, instead of queueing
    // every statement on the tables behind it without end. (A start that finds its schema's
    // shape recorded runs nothing: the record goes, so that this one must run it.)
    blocker
        .execute("DELETE FROM pusher_schema", &[])
        .await
        .unwrap();
    blocker
        .execute("SELECT pg_advisory_lock(7210417)", &[])
        .await
        .unwrap();
    let refused = tokio::time::timeout(
        Duration::from_secs(10),
        Store::new(&pg_config).unwrap().init(),
    )
    .await
    .expect("the start waited for the lock without end");
    blocker
        .execute("SELECT pg_advisory_unlock(7210417)", &[])
        .await
        .unwrap();
    let e = refused.unwrap_err().to_string();
    assert!(e.contains("lock timeout"), "{e}");
    assert!(e.contains("held elsewhere"), "{e}");
    // Once the schema's shape is recorded, a start takes no table's lock: one beside a session
    // reading the registry (which an ALTER TABLE would wait for) starts at once.
    Store::new(&pg_config).unwrap().init().await.unwrap();
    blocker
        .batch_execute("BEGIN; LOCK TABLE pusher_devices IN ACCESS SHARE MODE")
        .await
        .unwrap();
    let started = tokio::time::timeout(
        Duration::from_secs(10),
        Store::new(&pg_config).unwrap().init(),
    )
    .await
    .expect("the start returned");
    blocker.batch_execute("ROLLBACK").await.unwrap();
    started.unwrap();
    api.stop().await;
}

/// A notifications table of the shape before 2026-12-05 (`(app, idem_key)` the primary key,
/// every row keyed) is changed in place by the schema, twice without harm: its rows stay, a
/// notification with nothing to dedup on needs no key, a notif_id and a key are still unique,
/// and a webhook called before calls were tracked counts as ended. A device-limit table that
/// kept one owner (`last_event`) gets the list of owners charged, seeded with that owner. A
/// notification not yet notified gets its running count of verdicts (`done`) from those stored.
#[tokio::test]
async fn schema_migrates_the_keyed_notifications_table() {
    let client = pg_client().await;
    let schema = fresh_app("migrate_");
    client
        .batch_execute(&format!(
            "SET client_min_messages = warning; CREATE SCHEMA {schema}; SET search_path = {schema};
             CREATE TABLE pusher_notifications (
                 app text NOT NULL, idem_key text NOT NULL, notif_id text NOT NULL,
                 state text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'accepted')),
                 claim text NOT NULL, claimed_at timestamptz NOT NULL DEFAULT now(),
                 accepted_at timestamptz, targets integer NOT NULL DEFAULT 0,
                 notified_at timestamptz,
                 PRIMARY KEY (app, idem_key), UNIQUE (app, notif_id));
             INSERT INTO pusher_notifications (app, idem_key, notif_id, claim, notified_at)
                 VALUES ('a', 'g:n1', 'n1', '', now());
             INSERT INTO pusher_notifications (app, idem_key, notif_id, claim, targets)
                 VALUES ('a', 'g:n9', 'n9', '', 3);
             CREATE TABLE pusher_results (
                 app text NOT NULL, notif_id text NOT NULL, token text NOT NULL,
                 platform text NOT NULL, outcome text NOT NULL, reason text NOT NULL DEFAULT '',
                 at timestamptz NOT NULL, PRIMARY KEY (app, notif_id, token));
             INSERT INTO pusher_results (app, notif_id, token, platform, outcome, at)
                 VALUES ('a', 'n1', 't1', 'gcm', 'delivered', now()),
                        ('a', 'n9', 't1', 'gcm', 'delivered', now()),
                        ('a', 'n9', 't2', 'gcm', 'delivered', now());
             CREATE TABLE pusher_device_limits (
                 app text NOT NULL, token text NOT NULL, tat timestamptz NOT NULL,
                 last_event text NOT NULL, PRIMARY KEY (app, token));
             INSERT INTO pusher_device_limits VALUES ('a', 't1', now(), 'n1');"
        ))
        .await
        .unwrap();
    for _ in 0..2 {
        client
            .batch_execute(pusher::platform::store::SCHEMA)
            .await
            .unwrap();
    }
    let insert = "INSERT INTO pusher_notifications (app, idem_key, notif_id, claim)
                  VALUES ('a', $1, $2, '')";
    client
        .execute(insert, &[&None::<&str>, &"n2"])
        .await
        .unwrap();
    client
        .execute(insert, &[&None::<&str>, &"n3"])
        .await
        .unwrap();
    client
        .execute(insert, &[&Some("h:k#0"), &"n4"])
        .await
        .unwrap();
    let same_key = client.execute(insert, &[&Some("h:k#0"), &"n5"]).await;
    let same_id = client.execute(insert, &[&None::<&str>, &"n1"]).await;
    for refused in [same_key, same_id] {
        let e = refused.unwrap_err();
        assert_eq!(
            e.as_db_error().map(|db| db.code().clone()),
            Some(tokio_postgres::error::SqlState::UNIQUE_VIOLATION),
            "{e}"
        );
    }
    let rows = client
        .query(
            "SELECT notif_id, idem_key FROM pusher_notifications ORDER BY notif_id",
            &[],
        )
        .await
        .unwrap();
    let rows: Vec<(String, Option<String>)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(
        rows,
        [
            ("n1".to_owned(), Some("g:n1".to_owned())),
            ("n2".to_owned(), None),
            ("n3".to_owned(), None),
            ("n4".to_owned(), Some("h:k#0".to_owned())),
            ("n9".to_owned(), Some("g:n9".to_owned())),
        ]
    );
    // The running count of verdicts starts from those already stored (once: the schema run
    // again keeps what `pusher results` added since); a notified one needs none.
    async fn done(client: &tokio_postgres::Client) -> Vec<(String, i32)> {
        let rows = client
            .query(
                "SELECT notif_id, done FROM pusher_notifications
                     WHERE notif_id IN ('n1', 'n9') ORDER BY notif_id",
                &[],
            )
            .await
            .unwrap();
        rows.iter().map(|r| (r.get(0), r.get(1))).collect()
    }
    assert_eq!(
        done(&client).await,
        [("n1".to_owned(), 0), ("n9".to_owned(), 2)]
    );
    // A webhook called before the `webhook` column existed counts as ended; a call in
    // progress when the schema runs again stays in progress.
    client
        .execute(
            "UPDATE pusher_notifications SET notified_at = now() WHERE notif_id = 'n2'",
            &[],
        )
        .await
        .unwrap();
    client
        .execute(
            "UPDATE pusher_notifications SET done = 3 WHERE notif_id = 'n9'",
            &[],
        )
        .await
        .unwrap();
    client
        .batch_execute(pusher::platform::store::SCHEMA)
        .await
        .unwrap();
    assert_eq!(
        done(&client).await,
        [("n1".to_owned(), 0), ("n9".to_owned(), 3)]
    );
    let webhooks = client
        .query(
            "SELECT notif_id, webhook FROM pusher_notifications
                 WHERE notified_at IS NOT NULL ORDER BY notif_id",
            &[],
        )
        .await
        .unwrap();
    let webhooks: Vec<(String, Option<String>)> =
        webhooks.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(
        webhooks,
        [
            ("n1".to_owned(), Some("ok".to_owned())),
            ("n2".to_owned(), None)
        ]
    );
    client
        .execute(
            "INSERT INTO pusher_device_limits (app, token, tat, charged)
                 VALUES ('a', 't2', now(), ARRAY['n2'])",
            &[],
        )
        .await
        .unwrap();
    let limits = client
        .query(
            "SELECT token, charged FROM pusher_device_limits ORDER BY token",
            &[],
        )
        .await
        .unwrap();
    let limits: Vec<(String, Vec<String>)> = limits.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(
        limits,
        [
            ("t1".to_owned(), vec!["n1".to_owned()]),
            ("t2".to_owned(), vec!["n2".to_owned()])
        ]
    );
    client
        .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
        .await
        .unwrap();
}

/// The claim protocol against PostgreSQL: a key is ours once; a second claim while the
/// first is pending is busy; a pending claim older than the stale time is taken over with its
/// first notif_id; a confirmed one is done, with its counts.
#[tokio::test]
async fn claims_dedup_take_over_stale_ones_and_remember_counts() {
    let store = common::platform::store().await;
    let app = fresh_app("api");
    let key = |id: &str| claim_key("k", id);
    let long = Duration::from_secs(60);
    let first = store.claim(&app, "c1", &[key("n1")], long).await.unwrap();
    assert_eq!(
        first,
        [Claimed::Ours {
            notif_id: "n1".into()
        }]
    );
    // Busy, going stale in about the stale time (what Retry-After says).
    let busy = store.claim(&app, "c2", &[key("n2")], long).await.unwrap();
    match busy.as_slice() {
        [Claimed::Busy { stale_in }] => assert!(
            *stale_in > Duration::from_secs(50) && *stale_in <= long,
            "{stale_in:?}"
        ),
        other => panic!("{other:?}"),
    }
    // c1 died: with a zero stale time, c3 takes it over, keeping n1.
    let taken = store
        .claim(&app, "c3", &[key("n3")], Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(
        taken,
        [Claimed::Ours {
            notif_id: "n1".into()
        }]
    );
    // c1's late confirmation changes nothing, and says so: the claim is c3's now.
    let late = store
        .confirm(&app, "c1", &[("k".into(), Some(9))], &[])
        .await
        .unwrap();
    assert_eq!(late, 0);
    // Nor does c1's late release (a 400 or 422 after all) take c3's claim away.
    store.release(&app, "c1", &[key("n1")]).await.unwrap();
    let owner = store
        .confirm(&app, "c3", &[("k".into(), Some(5))], &[])
        .await
        .unwrap();
    assert_eq!(owner, 1);
    let done = store
        .claim(&app, "c4", &[key("n4")], Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(
        done,
        [Claimed::Done {
            notif_id: "n1".into(),
            targets: 5,
            fingerprint: None,
        }]
    );
}

/// The whole path: gorush requests over HTTP -> Kafka -> the real `pusher run apns` -> the
/// fake APNs. Tokens accepted = records produced = tokens delivered, each once.
/// The router can read a request record before the API has recorded or confirmed its
/// notification (both happen once Kafka acknowledged the record): the devices it counted are
/// kept, whichever writes first, and a token-addressed push's records are its targets.
#[tokio::test]
async fn a_router_faster_than_the_api_keeps_its_targets() {
    let store = common::platform::store().await;
    let app = fresh_app("api");
    let targets = |id: &'static str| {
        let (store, app) = (store.clone(), app.clone());
        async move {
            let n = store.notification(&app, id).await.unwrap().unwrap();
            (n.state, n.targets)
        }
    };
    // Unkeyed: the router first, then the API's INSERT.
    store.set_targets(&app, &[("u1", 3)]).await.unwrap();
    store
        .record_accepted(&app, &[("u1".into(), None)])
        .await
        .unwrap();
    assert_eq!(targets("u1").await, ("accepted".into(), Some(3)));
    // Keyed: claimed, routed, then confirmed.
    let long = Duration::from_secs(60);
    store
        .claim(&app, "c1", &[claim_key("k1", "r1")], long)
        .await
        .unwrap();
    assert_eq!(targets("r1").await, ("pending".into(), None));
    store.set_targets(&app, &[("r1", 2)]).await.unwrap();
    store
        .confirm(&app, "c1", &[("k1".into(), None)], &[])
        .await
        .unwrap();
    assert_eq!(targets("r1").await, ("accepted".into(), Some(2)));
    // A token-addressed push, keyed: its records.
    store
        .claim(&app, "c2", &[claim_key("k2", "t1")], long)
        .await
        .unwrap();
    store
        .confirm(&app, "c2", &[("k2".into(), Some(5))], &[])
        .await
        .unwrap();
    assert_eq!(targets("t1").await, ("accepted".into(), Some(5)));
    // A request that failed after its record reached Kafka gave its claim back; the router
    // then wrote the row alone. The client's retry with the same notif_id still takes it.
    let key = || claim_key("n:o1", "o1");
    store.claim(&app, "c3", &[key()], long).await.unwrap();
    store.release(&app, "c3", &[key()]).await.unwrap();
    store.set_targets(&app, &[("o1", 4)]).await.unwrap();
    let retried = store.claim(&app, "c4", &[key()], long).await.unwrap();
    assert_eq!(
        retried,
        [Claimed::Ours {
            notif_id: "o1".into()
        }]
    );
}

/// A fast pipeline's verdicts can reach `pusher results` before the API has recorded the
/// notification (it does once Kafka acknowledged the records): the webhook is still called,
/// once the row is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verdicts_before_the_notification_is_recorded_still_call_its_webhook() {
    let (app, kafka) = app_with_feedback().await;
    let store = common::platform::store().await;
    let (hook, mut calls) = webhook_receiver().await;
    let stop = CancellationToken::new();
    let writer = spawn_results(kafka.bootstrap(), &app, &store, hooks_of(&app, hook), &stop);
    // A delivered verdict for (notif_id, token), stored by pusher results.
    let stored = |notif_id: &'static str, token: &'static str| {
        let (store, app) = (store.clone(), app.clone());
        let brokers = kafka.bootstrap().to_owned();
        async move {
            common::platform::produce_delivered(&brokers, &app, notif_id, token).await;
            wait_until(
                Duration::from_secs(20),
                "the verdict was never stored",
                || async {
                    !store
                        .result_counts(&app, notif_id)
                        .await
                        .unwrap()
                        .is_empty()
                },
            )
            .await;
        }
    };
    stored("early-1", "tok-1").await;
    // Only now does the API record the notification, with its one target.
    store
        .record_accepted(&app, &[("early-1".into(), Some(1))])
        .await
        .unwrap();
    let body = next_within(
        &mut calls,
        Duration::from_secs(20),
        "the webhook is called once the notification is recorded",
    )
    .await;
    assert_eq!(
        body,
        json!({"app": app, "notif_id": "early-1", "targets": 1, "counts": {"delivered": 1}})
    );
    // A keyed request (a client's notif_id, dots allowed): its verdict is stored while its
    // row is still pending, then the request is confirmed.
    store
        .claim(
            &app,
            "c1",
            &[claim_key("n:early.2", "early.2")],
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    stored("early.2", "tok-2").await;
    store
        .confirm(&app, "c1", &[("n:early.2".into(), Some(1))], &[])
        .await
        .unwrap();
    let body = next_within(
        &mut calls,
        Duration::from_secs(20),
        "the webhook is called once the request is confirmed",
    )
    .await;
    assert_eq!(body["notif_id"], "early.2", "{body}");
    stop.cancel();
    let counts = writer.await.unwrap();
    assert_eq!((counts.stored, counts.webhooks), (2, 2), "{counts:?}");
}

/// Verdicts of notifications not ready yet (one the API has not recorded, one whose request is
/// still pending) are stored, and the results process stops; both become ready while none
/// runs. The next results process calls each one's webhook, once. Seen: they were kept in the
/// process's memory only, and a restart lost their webhooks, silently.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_ready_while_no_results_process_runs_still_call_their_webhook() {
    let (app, kafka) = app_with_feedback().await;
    let store = common::platform::store().await;
    let (hook, mut calls) = webhook_receiver().await;
    store
        .claim(
            &app,
            "c1",
            &[claim_key("n:late-2", "late-2")],
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    let stop = CancellationToken::new();
    let first = spawn_results(
        kafka.bootstrap(),
        &app,
        &store,
        hooks_of(&app, hook.clone()),
        &stop,
    );
    common::platform::produce_delivered(kafka.bootstrap(), &app, "late-1", "tok-1").await;
    common::platform::produce_delivered(kafka.bootstrap(), &app, "late-2", "tok-2").await;
    let ids = ["late-1".to_owned(), "late-2".to_owned()];
    wait_until(
        Duration::from_secs(20),
        "the verdicts were never stored",
        || async { store.result_total(&app, &ids).await.unwrap() >= 2 },
    )
    .await;
    stop.cancel();
    let counts = first.await.unwrap();
    // Both committed: the next process reads neither again.
    assert_eq!((counts.stored, counts.webhooks), (2, 0), "{counts:?}");

    // Ready while no results process runs.
    store
        .record_accepted(&app, &[("late-1".into(), Some(1))])
        .await
        .unwrap();
    store
        .confirm(&app, "c1", &[("n:late-2".into(), Some(1))], &[])
        .await
        .unwrap();
    let stop = CancellationToken::new();
    let next = spawn_results(kafka.bootstrap(), &app, &store, hooks_of(&app, hook), &stop);
    let called = delivered_calls(
        &mut calls,
        2,
        Duration::from_secs(20),
        "the next process calls the webhook of each",
    )
    .await;
    assert_eq!(called, ["late-1", "late-2"]);
    assert_each_once(&mut calls).await;
    stop.cancel();
    let counts = next.await.unwrap();
    assert_eq!((counts.stored, counts.webhooks), (0, 2), "{counts:?}");
    let waiting: i64 = store
        .pool()
        .get()
        .await
        .unwrap()
        .query_one(
            "SELECT count(*) FROM pusher_early_verdicts WHERE app = $1",
            &[&app],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(waiting, 0, "nothing waits once called");
}

/// gorush's `/api/stat/app` in gorush's shape: per platform the verdicts stored for the
/// caller's app (a token's first verdict for a notification: one replayed or replacing it adds
/// nothing), and what this process accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stat_app_counts_the_apps_verdicts_as_gorush_does() {
    use pusher::platform::store::ResultRow;
    let (app, _kafka, api) = fresh_api(|_| {}).await;
    let other = fresh_app("api");
    let store = common::platform::store().await;
    let verdict = |app: &str, token: &str, platform: &str, outcome: &str, at_ms: i64| ResultRow {
        app: app.to_owned(),
        notif_id: "n-1".to_owned(),
        token: token.to_owned(),
        platform: platform.to_owned(),
        outcome: outcome.to_owned(),
        reason: String::new(),
        at_ms,
        invalid_since_ms: None,
    };
    store
        .store_results(&[
            verdict(&app, "t1", "gcm", "delivered", 1_000),
            verdict(&app, "t2", "gcm", "token_invalid", 1_000),
            verdict(&app, "t3", "apns", "delivered", 1_000),
        ])
        .await
        .unwrap();
    store
        .store_results(&[
            verdict(&app, "t1", "gcm", "delivered", 1_000),
            verdict(&app, "t3", "apns", "delivered", 2_000),
            verdict(&other, "t1", "webpush", "delivered", 1_000),
        ])
        .await
        .unwrap();
    let push = post_json(
        api.addr,
        "/api/push",
        KEY,
        &json!({"notifications": [{"tokens": ["a", "b"], "platform": 2, "message": "m"}]}),
    )
    .await;
    assert_eq!(push.status, 200, "{}", push.text());
    let stat = authorized(api.addr, "GET", "/api/stat/app", KEY, "")
        .await
        .json();
    assert_eq!(
        stat["android"],
        json!({"push_success": 1, "push_error": 1, "accepted": 2})
    );
    assert_eq!(
        stat["ios"],
        json!({"push_success": 1, "push_error": 0, "accepted": 0})
    );
    assert_eq!(
        stat["web"],
        json!({"push_success": 0, "push_error": 0, "accepted": 0})
    );
    assert_eq!(stat["huawei"], json!({"push_success": 0, "push_error": 0}));
    assert_eq!(stat["total_count"], 2);
    assert_eq!(stat["app"], json!(app));
    api.stop().await;
}

/// Completion reads a running count of each notification's verdicts (`done`), added to as
/// they are stored, instead of counting every verdict of it again on each batch (quadratic over
/// a broadcast): a verdict replacing an older one for its token adds nothing; verdicts stored
/// before the notification's row are counted when the row is made, and those stored while it
/// had none are named for a count of their own; two writers storing verdicts of the same
/// notifications in opposite orders at once neither deadlock nor lose a count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verdicts_are_counted_as_they_are_stored() {
    use pusher::platform::store::ResultRow;
    let store = common::platform::store().await;
    let app = fresh_app("api");
    fn verdict_of(app: &str, notif_id: &str, token: &str, at_ms: i64) -> ResultRow {
        ResultRow {
            app: app.to_owned(),
            notif_id: notif_id.to_owned(),
            token: token.to_owned(),
            platform: "gcm".to_owned(),
            outcome: "delivered".to_owned(),
            reason: String::new(),
            at_ms,
            invalid_since_ms: None,
        }
    }
    let verdict =
        |notif_id: &str, token: &str, at_ms: i64| verdict_of(&app, notif_id, token, at_ms);
    let pg = store.pool().get().await.unwrap();
    let done = |notif_id: &'static str| {
        let (pg, app) = (&pg, app.clone());
        async move {
            pg.query_one(
                "SELECT done FROM pusher_notifications WHERE app = $1 AND notif_id = $2",
                &[&app, &notif_id],
            )
            .await
            .unwrap()
            .get::<_, i32>(0)
        }
    };
    store
        .record_accepted(&app, &[("c-1".into(), Some(3))])
        .await
        .unwrap();
    let none = std::collections::HashSet::new();
    let pair = |id: &str| vec![(app.clone(), id.to_owned())];
    let uncounted = store
        .store_results(&[verdict("c-1", "t1", 1_000), verdict("c-1", "t2", 1_000)])
        .await
        .unwrap();
    assert!(uncounted.is_empty(), "{uncounted:?}");
    // A newer verdict for t1 replaces the older: no new row, nothing added.
    store
        .store_results(&[verdict("c-1", "t1", 2_000)])
        .await
        .unwrap();
    assert_eq!(done("c-1").await, 2);
    assert!(store
        .claim_completed(&pair("c-1"), &none)
        .await
        .unwrap()
        .is_empty());
    store
        .store_results(&[verdict("c-1", "t3", 1_000)])
        .await
        .unwrap();
    let complete = store.claim_completed(&pair("c-1"), &none).await.unwrap();
    assert_eq!(complete.len(), 1, "{complete:?}");
    assert_eq!(complete[0].counts["delivered"], 3);
    // Verdicts before the row: named as uncounted, and counted when the row is made.
    let early = store
        .store_results(&[verdict("c-2", "t1", 1_000), verdict("c-2", "t2", 1_000)])
        .await
        .unwrap();
    assert_eq!(early, pair("c-2"));
    store
        .record_accepted(&app, &[("c-2".into(), Some(2))])
        .await
        .unwrap();
    assert_eq!(done("c-2").await, 2);
    // A count short of the rows (a row made while verdicts were being stored) is counted
    // again when named.
    pg.execute(
        "UPDATE pusher_notifications SET done = 0 WHERE app = $1 AND notif_id = 'c-2'",
        &[&app],
    )
    .await
    .unwrap();
    assert!(store
        .claim_completed(&pair("c-2"), &none)
        .await
        .unwrap()
        .is_empty());
    let again: std::collections::HashSet<(String, String)> = pair("c-2").into_iter().collect();
    assert_eq!(
        store
            .claim_completed(&pair("c-2"), &again)
            .await
            .unwrap()
            .len(),
        1
    );
    // Two writers, the same 20 notifications in opposite orders, 10 rounds each.
    let ids: Vec<String> = (0..20).map(|i| format!("m-{i:02}")).collect();
    let accepted: Vec<(String, Option<u32>)> =
        ids.iter().map(|id| (id.clone(), Some(20))).collect();
    store.record_accepted(&app, &accepted).await.unwrap();
    let writers: Vec<_> = [false, true]
        .into_iter()
        .map(|reverse| {
            let (store, ids, app) = (store.clone(), ids.clone(), app.clone());
            tokio::spawn(async move {
                for round in 0..10 {
                    let mut rows: Vec<ResultRow> = ids
                        .iter()
                        .map(|id| verdict_of(&app, id, &format!("t{reverse}-{round}"), 1_000))
                        .collect();
                    if reverse {
                        rows.reverse();
                    }
                    store.store_results(&rows).await.unwrap();
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    let counts: Vec<i32> = pg
        .query(
            "SELECT done FROM pusher_notifications WHERE app = $1 AND notif_id LIKE 'm-%'",
            &[&app],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(counts, vec![20; 20]);
}

/// The only results process with an app's hook is away longer than 10 minutes (a crash loop):
/// another one, without the hook, still hands what it completes over (claimed and released for
/// the hooked process's sweep) instead of leaving it unclaimed, never to be called. Seen: past
/// 10 minutes the app no longer counted as hooked anywhere, and its webhooks were lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_whose_hooked_process_is_away_for_long_is_still_handed_over() {
    let (app, kafka) = app_with_feedback().await;
    let (store, ids) = one_token_notifications(&app, "away", 1).await;
    let pg = store.pool().get().await.unwrap();
    // Announced by its hooked process 15 minutes ago, not since.
    pg.execute(
        "INSERT INTO pusher_webhook_apps (app, seen_at) VALUES ($1, now() - interval '15 minutes')",
        &[&app],
    )
    .await
    .unwrap();
    let stop = CancellationToken::new();
    let without = spawn_results(kafka.bootstrap(), &app, &store, no_hooks(), &stop);
    common::platform::produce_delivered(kafka.bootstrap(), &app, &ids[0], "tok-0").await;
    wait_until(Duration::from_secs(30), "never handed over", || async {
        pg.query_one(
            "SELECT notified_at < now() - interval '5 minutes' FROM pusher_notifications
                 WHERE app = $1 AND notif_id = $2",
            &[&app, &ids[0]],
        )
        .await
        .unwrap()
        .get::<_, Option<bool>>(0)
        .unwrap_or(false)
    })
    .await;
    stop.cancel();
    let counts = without.await.unwrap();
    assert_eq!((counts.stored, counts.webhooks), (1, 0), "{counts:?}");
}

/// `n` notifications of `app` accepted with one token each (`<prefix>-0`, ...), as the API
/// records them, in a store whose tables exist.
async fn one_token_notifications(app: &str, prefix: &str, n: usize) -> (Store, Vec<String>) {
    let store = common::platform::store().await;
    let ids: Vec<String> = (0..n).map(|i| format!("{prefix}-{i}")).collect();
    let accepted: Vec<(String, Option<u32>)> = ids.iter().map(|id| (id.clone(), Some(1))).collect();
    store.record_accepted(app, &accepted).await.unwrap();
    (store, ids)
}

/// Produces a delivered verdict of each of `ids` (to `tok-0`, `tok-1`, ...) on `app`'s
/// feedback topic.
async fn produce_delivered_each(brokers: &str, app: &str, ids: &[String]) {
    for (i, id) in ids.iter().enumerate() {
        common::platform::produce_delivered(brokers, app, id, &format!("tok-{i}")).await;
    }
}

/// The next `n` webhook calls, each within `within` (failing with `what`), each of one
/// delivered verdict: their notif_ids, sorted.
async fn delivered_calls(
    calls: &mut tokio::sync::mpsc::UnboundedReceiver<Value>,
    n: usize,
    within: Duration,
    what: &str,
) -> Vec<String> {
    let mut called = Vec::new();
    for _ in 0..n {
        let body = next_within(calls, within, what).await;
        assert_eq!(body["counts"], json!({"delivered": 1}), "{body}");
        called.push(body["notif_id"].as_str().unwrap().to_owned());
    }
    called.sort();
    called
}

/// Two results processes whose `results.webhooks` differ: the one without the app's hook
/// reads every verdict, and hands each notification it completes over to the one with the
/// hook, which calls it once. Before, none was called, and nothing said so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_results_process_without_the_hook_hands_completed_notifications_over() {
    let app = fresh_app("api");
    let other = fresh_app("api");
    let feedback = format!("push-{app}-gcm-feedbacks");
    let other_feedback = format!("push-{other}-gcm-feedbacks");
    let kafka = TestKafka::start(&[&feedback, &other_feedback], 1).await;
    const N: usize = 5;
    let (store, ids) = one_token_notifications(&app, "h", N).await;
    let (hook, mut calls) = webhook_receiver().await;
    let stop = CancellationToken::new();
    // The process with the hook reads another app's feedback only: every verdict of `app`
    // goes to the one without it.
    let mut elsewhere = results_group(kafka.bootstrap(), &other);
    elsewhere.topic = other_feedback.clone();
    let with_hook = tokio::spawn(pusher::platform::results::run(
        elsewhere,
        store.clone(),
        hooks_of(&app, hook),
        stop.clone(),
    ));
    let pg = store.pool().get().await.unwrap();
    wait_until(
        Duration::from_secs(10),
        "the hooked app is never announced",
        || async {
            pg.query_opt("SELECT 1 FROM pusher_webhook_apps WHERE app = $1", &[&app])
                .await
                .unwrap()
                .is_some()
        },
    )
    .await;
    let without = spawn_results(kafka.bootstrap(), &app, &store, no_hooks(), &stop);
    produce_delivered_each(kafka.bootstrap(), &app, &ids).await;
    let called = delivered_calls(
        &mut calls,
        N,
        Duration::from_secs(30),
        "every notification's hook is called",
    )
    .await;
    assert_eq!(called, ids);
    assert_each_once(&mut calls).await;
    stop.cancel();
    let with_hook = with_hook.await.unwrap().unwrap();
    let without = without.await.unwrap();
    assert_eq!(
        (without.stored, without.webhooks),
        (N as u64, 0),
        "{without:?}"
    );
    assert_eq!(
        (with_hook.stored, with_hook.webhooks),
        (0, N as u64),
        "{with_hook:?}"
    );
}

/// A hook that answers slowly holds its calls: one process makes at most its bound at once
/// (256; 2 here), hands the rest back to PostgreSQL and makes them as calls end. Every
/// notification's hook is still called, once. Before, each completion started a call of its
/// own, without bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_calls_in_progress_are_bounded_and_the_rest_made_later() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let (app, kafka) = app_with_feedback().await;
    const N: usize = 8;
    let (store, ids) = one_token_notifications(&app, "b", N).await;
    // A hook that takes 300 ms to answer, counting the calls it holds at once.
    let (now, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (tx, mut calls) = tokio::sync::mpsc::unbounded_channel::<String>();
    let hook = {
        let (now, most) = (now.clone(), most.clone());
        hook_server(move |body: axum::body::Bytes| {
            let (now, most, tx) = (now.clone(), most.clone(), tx.clone());
            async move {
                most.fetch_max(now.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(300)).await;
                now.fetch_sub(1, Ordering::SeqCst);
                let body: Value = serde_json::from_slice(&body).unwrap();
                let _ = tx.send(body["notif_id"].as_str().unwrap().to_owned());
                axum::http::StatusCode::OK
            }
        })
        .await
    };
    // Every verdict is in Kafka first: the first batch completes all of them at once.
    produce_delivered_each(kafka.bootstrap(), &app, &ids).await;
    let stop = CancellationToken::new();
    let writer = spawn_results(
        kafka.bootstrap(),
        &app,
        &store,
        hooks_of(&app, hook).with_max_calls(2),
        &stop,
    );
    let mut called = Vec::new();
    for _ in 0..N {
        called.push(
            next_within(
                &mut calls,
                Duration::from_secs(30),
                "every notification's hook is called",
            )
            .await,
        );
    }
    called.sort();
    assert_eq!(called, ids);
    assert_each_once(&mut calls).await;
    assert!(most.load(Ordering::SeqCst) <= 2, "{most:?} calls at once");
    stop.cancel();
    let counts = writer.await.unwrap();
    assert_eq!(
        (counts.stored, counts.webhooks),
        (N as u64, N as u64),
        "{counts:?}"
    );
}

/// One app's hook that hangs holds only that app's calls: with its bound full, another
/// app's hook is still called at once. Before, one bound for every app made a failing hook
/// keep other apps' completed notifications uncalled until it recovered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_apps_hanging_hook_holds_no_other_apps_calls() {
    let store = common::platform::store().await;
    let (stuck, quick) = (fresh_app("api"), fresh_app("api"));
    let hanging = hook_server(|| async {
        tokio::time::sleep(Duration::from_secs(600)).await;
        axum::http::StatusCode::OK
    })
    .await;
    let (hook, mut calls) = webhook_receiver().await;
    let hooks = pusher::platform::webhook::Webhooks::new(&std::collections::BTreeMap::from([
        (stuck.clone(), hanging),
        (quick.clone(), hook),
    ]))
    .unwrap()
    .with_max_calls(2);
    assert!(hooks.spawn_call(&store, &stuck, "s-1", b"{}".to_vec()));
    assert!(hooks.spawn_call(&store, &stuck, "s-2", b"{}".to_vec()));
    assert!(
        !hooks.spawn_call(&store, &stuck, "s-3", b"{}".to_vec()),
        "its bound is full: handed back"
    );
    assert_eq!(hooks.free_slots(&stuck), 0);
    assert_eq!(hooks.free_slots(&quick), 2);
    assert!(hooks.spawn_call(&store, &quick, "q-1", br#"{"notif_id":"q-1"}"#.to_vec()));
    let body = next_within(
        &mut calls,
        Duration::from_secs(10),
        "the other app's hook is called",
    )
    .await;
    assert_eq!(body["notif_id"], "q-1");
    hooks.stop(&store).await;
}

/// A webhook call outlives the `pusher results` that made it: one stopped mid-retry gives its
/// call up and the next makes it at once; one that died (its claim no longer renewed) leaves
/// it to the next after the lease. A call that ended is not made again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_calls_survive_the_results_process() {
    let (app, kafka) = app_with_feedback().await;
    let store = common::platform::store().await;
    // A hook that answers 500 to everything, counting the calls.
    let (tx, mut failed_calls) = tokio::sync::mpsc::unbounded_channel::<()>();
    let failing = hook_server(move || {
        let _ = tx.send(());
        async { axum::http::StatusCode::INTERNAL_SERVER_ERROR }
    })
    .await;
    store
        .record_accepted(&app, &[("w-1".into(), Some(1))])
        .await
        .unwrap();
    common::platform::produce_delivered(kafka.bootstrap(), &app, "w-1", "tok-1").await;
    let webhook_of = |id: &'static str| {
        let (store, app) = (store.clone(), app.clone());
        async move { store.notification(&app, id).await.unwrap().unwrap().webhook }
    };

    // The first process: the hook fails, and the process stops while it retries.
    let stop = CancellationToken::new();
    let first = spawn_results(
        kafka.bootstrap(),
        &app,
        &store,
        hooks_of(&app, failing),
        &stop,
    );
    next_within(
        &mut failed_calls,
        Duration::from_secs(30),
        "the first process calls the hook",
    )
    .await;
    assert_eq!(webhook_of("w-1").await.as_deref(), Some("calling"));
    stop.cancel();
    let counts = first.await.unwrap();
    assert_eq!((counts.stored, counts.webhooks), (1, 1), "{counts:?}");
    assert_eq!(webhook_of("w-1").await.as_deref(), Some("calling"));

    // The next process (its group committed the verdict: nothing is consumed again) makes the
    // call given up, well before the lease.
    let (hook, mut calls) = webhook_receiver().await;
    let stop = CancellationToken::new();
    let started = Instant::now();
    let next = spawn_results(kafka.bootstrap(), &app, &store, hooks_of(&app, hook), &stop);
    let body = next_within(
        &mut calls,
        Duration::from_secs(30),
        "the next process makes the call the first gave up",
    )
    .await;
    assert!(started.elapsed() < pusher::platform::webhook::LEASE / 10);
    assert_eq!(
        body,
        json!({"app": app, "notif_id": "w-1", "targets": 1, "counts": {"delivered": 1}})
    );
    wait_until(
        Duration::from_secs(10),
        "the call's end is never recorded",
        || async { webhook_of("w-1").await.as_deref() == Some("ok") },
    )
    .await;

    // A process that died mid-call: w-2's claim was last renewed longer ago than the lease.
    // w-1's call ended: as old, it is not made again.
    store
        .record_accepted(&app, &[("w-2".into(), Some(1))])
        .await
        .unwrap();
    let pg = store.pool().get().await.unwrap();
    pg.execute(
        "UPDATE pusher_notifications
             SET notified_at = now() - interval '10 minutes'
             WHERE app = $1 AND notif_id IN ('w-1', 'w-2')",
        &[&app],
    )
    .await
    .unwrap();
    let body = next_within(
        &mut calls,
        Duration::from_secs(30),
        "an abandoned call is made again",
    )
    .await;
    assert_eq!(
        body,
        json!({"app": app, "notif_id": "w-2", "targets": 1, "counts": {}}),
    );
    let w1_claimed: bool = pg
        .query_one(
            "SELECT notified_at < now() - interval '5 minutes' FROM pusher_notifications
                 WHERE app = $1 AND notif_id = 'w-1'",
            &[&app],
        )
        .await
        .unwrap()
        .get(0);
    assert!(w1_claimed, "an ended call was claimed again");
    stop.cancel();
    let counts = next.await.unwrap();
    assert_eq!((counts.consumed, counts.webhooks), (0, 2), "{counts:?}");
    assert!(calls.try_recv().is_err(), "a call made twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_to_kafka_to_pusher_to_fake_apns() {
    let (app, kafka, api) = fresh_api(|_| {}).await;
    let fake = start_fake(FakeOptions {
        record_tokens: 10_000,
        ..FakeOptions::default()
    })
    .await;
    let mut accepted = 0;
    let mut tokens = Vec::new();
    for batch in 0..10 {
        let notifications: Vec<Value> = (0..10)
            .map(|n| {
                let ts: Vec<String> = (0..5)
                    .map(|t| common::token(batch * 1000 + n * 10 + t))
                    .collect();
                tokens.extend(ts.clone());
                json!({"tokens": ts, "platform": 1, "message": "Hello", "topic": common::TOPIC})
            })
            .collect();
        let a = post_json(
            api.addr,
            "/api/push",
            KEY,
            &json!({ "notifications": notifications }),
        )
        .await;
        assert_eq!(a.status, 200, "{}", a.text());
        accepted += a.json()["counts"].as_u64().unwrap();
    }
    assert_eq!(accepted, 500);
    let _pusher = run_apns(&app, kafka.bootstrap(), &fake, 100, Vec::new());
    let deadline = Instant::now() + Duration::from_secs(60);
    let delivered = loop {
        let delivered = fake.server.stats().delivered_tokens();
        if delivered.len() >= tokens.len() || Instant::now() > deadline {
            break delivered;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let produced = read_topic(kafka.bootstrap(), &format!("push-{app}_apns"), 500).len();
    assert_eq!(produced as u64, accepted, "accepted = produced");
    assert_eq!(delivered.len(), tokens.len(), "produced = delivered");
    for token in &tokens {
        assert_eq!(delivered.get(token), Some(&1), "{token} delivered once");
    }
    api.stop().await;
}

/// `/healthz`, `/metrics` and `/version` answer; `/metrics` counts the requests by route.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_metrics_and_stats() {
    let (app, _kafka, api) = fresh_api(|_| {}).await;
    pusher::telemetry::prometheus().unwrap();
    let body = json!({"notifications": [{"tokens": ["a", "b"], "platform": 2, "message": "m"}]});
    assert_eq!(
        post_json(api.addr, "/api/push", KEY, &body).await.status,
        200
    );
    let health = request(api.addr, "GET", "/healthz", &[], "").await;
    assert_eq!(health.status, 200, "{}", health.text());
    let stat = authorized(api.addr, "GET", "/api/stat/app", KEY, "").await;
    assert_eq!(stat.json()["android"]["accepted"], 2);
    assert_eq!(stat.json()["total_count"], 2);
    let metrics = request(api.addr, "GET", "/metrics", &[], "").await.text();
    assert!(
        metrics.contains(r#"pusher_api_requests_total{route="/api/push",status="200"}"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!(
            r#"pusher_api_accepted_total{{app="{app}",platform="gcm"}} 2"#
        )),
        "{metrics}"
    );
    assert_eq!(request(api.addr, "GET", "/nope", &[], "").await.status, 404);
    api.stop().await;
}

/// Delivery results: a push through `pusher run apns` (feedback on) to the fake, whose
/// `dead…` tokens are unregistered; `pusher results` (in this process) stores one row per
/// token from the feedback topic, and `GET /api/v1/notifications/{id}` serves the counts and
/// the rows in pages. Counts add up: delivered + token_invalid = accepted, nothing pending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_of_a_push_are_stored_and_served() {
    use pusher::push::token_rules::TokenRule;
    let app = fresh_app("api");
    let feedback_topic = format!("push-{app}-apns-feedbacks");
    let [apns, gcm] = topics(&app);
    let kafka = TestKafka::start(&[&apns, &gcm, &feedback_topic], 2).await;
    // Sync requests below wait this long for their verdicts.
    let mut api_settings = settings(&app);
    api_settings.sync_timeout = Duration::from_secs(10);
    let api = Api::start(api_settings, kafka.bootstrap()).await;
    let fake = start_fake(FakeOptions::default()).await;
    let tokens: Vec<String> = (0..20)
        .map(|i| {
            let t = common::token(i);
            if i % 4 == 0 {
                TokenRule::Unregistered.apply(&t)
            } else {
                t
            }
        })
        .collect();
    // Three of them in the registry: a good one, a dead one, and a dead one registered again
    // later than the push (its verdict is about the old registration).
    let registry = pusher::platform::registry::Registry::new(Store::new(&pg()).unwrap().pool());
    let device = |token: &str, registered_ms: i64| pusher::platform::registry::Device {
        user_id: 99,
        platform: pusher::push::Platform::Apns,
        token: token.to_owned(),
        device_id: String::new(),
        platform_id: None,
        app_version: String::new(),
        registered_ms,
        keys: None,
    };
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let devices = [
        device(&tokens[1], now_ms - 60_000),
        device(&tokens[0], now_ms - 60_000),
        device(&tokens[4], now_ms + 3_600_000),
    ];
    registry.register(&app, &devices, &[]).await.unwrap();
    let body = json!({"notifications": [{"tokens": tokens, "platform": 1, "message": "Hi",
        "topic": common::TOPIC, "notif_id": "r-1"}]});
    let a = post_json(api.addr, "/api/push", KEY, &body).await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.json()["counts"], 20);

    let _pusher = run_apns(
        &app,
        kafka.bootstrap(),
        &fake,
        100,
        vec![("PUSHER_FEEDBACK_REPORTERS", "kafka".to_owned())],
    );
    // The app's webhook: a server that fails the first call, then takes the retry.
    let hook_calls: std::sync::Arc<std::sync::Mutex<Vec<Value>>> = Default::default();
    let hook = {
        let calls = hook_calls.clone();
        hook_server(move |body: axum::body::Bytes| {
            let calls = calls.clone();
            async move {
                let mut calls = calls.lock().unwrap();
                calls.push(serde_json::from_slice(&body).unwrap());
                if calls.len() == 1 {
                    axum::http::StatusCode::INTERNAL_SERVER_ERROR
                } else {
                    axum::http::StatusCode::OK
                }
            }
        })
        .await
    };
    let stop = CancellationToken::new();
    let writer = spawn_results(
        kafka.bootstrap(),
        &app,
        &Store::new(&pg()).unwrap(),
        hooks_of(&app, hook),
        &stop,
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        let a = authorized(api.addr, "GET", "/api/v1/notifications/r-1", KEY, "").await;
        assert_eq!(a.status, 200, "{}", a.text());
        let status = a.json();
        if status["pending"] == 0 || Instant::now() > deadline {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(status["targets"], 20, "{status}");
    assert_eq!(
        status["counts"],
        json!({"delivered": 15, "token_invalid": 5}),
        "{status}"
    );
    assert_eq!(status["pending"], 0);
    let page = authorized(
        api.addr,
        "GET",
        "/api/v1/notifications/r-1?limit=15",
        KEY,
        "",
    )
    .await
    .json();
    assert_eq!(page["results"].as_array().unwrap().len(), 15);
    let next = page["next"].as_str().unwrap().to_owned();
    let rest = authorized(
        api.addr,
        "GET",
        &format!("/api/v1/notifications/r-1?limit=15&after={next}"),
        KEY,
        "",
    )
    .await
    .json();
    assert_eq!(rest["results"].as_array().unwrap().len(), 5);
    assert_eq!(rest["next"], Value::Null);
    let rows: Vec<&Value> = rest["results"]
        .as_array()
        .unwrap()
        .iter()
        .chain(page["results"].as_array().unwrap())
        .collect();
    let dead: Vec<&&Value> = rows
        .iter()
        .filter(|r| r["outcome"] == "token_invalid")
        .collect();
    assert!(
        dead.iter().all(|r| r["reason"] == "Unregistered"),
        "{dead:?}"
    );
    assert_eq!(dead.len(), 5);
    let status_of = |path: String| async move { authorized(api.addr, "GET", &path, KEY, "").await };
    assert_eq!(
        status_of("/api/v1/notifications/nope".into()).await.status,
        404
    );
    // A page's bounds are checked like every other input, naming the parameter. Seen: `%FF`
    // answered an empty last page, `limit=0` a page of one, `limit=abc` a 400 naming nothing.
    for (query, field) in [
        ("limit=abc", "limit"),
        ("limit=0", "limit"),
        ("limit=-1", "limit"),
        ("after=%FF", "after"),
        ("after=%01", "after"),
    ] {
        let a = status_of(format!("/api/v1/notifications/r-1?{query}")).await;
        assert_eq!(a.status, 400, "{query}: {}", a.text());
        assert_eq!(a.json()["field"], field, "{query}: {}", a.text());
    }
    // An event's notification, `<event id>.<message>`, has verdicts but no row of its own: it
    // is served once it has one, from the event's row, its targets unknown.
    assert_eq!(
        status_of("/api/v1/notifications/r-1.gift".into())
            .await
            .status,
        404
    );
    let verdict = |token: &str, outcome: &str| pusher::platform::store::ResultRow {
        app: app.clone(),
        notif_id: "r-1.gift".to_owned(),
        token: token.to_owned(),
        platform: "apns".to_owned(),
        outcome: outcome.to_owned(),
        reason: String::new(),
        at_ms: now_ms,
        invalid_since_ms: None,
    };
    Store::new(&pg())
        .unwrap()
        .store_results(&[verdict("t1", "delivered"), verdict("t2", "rate_limited")])
        .await
        .unwrap();
    let event = status_of("/api/v1/notifications/r-1.gift".into()).await;
    assert_eq!(event.status, 200, "{}", event.text());
    let event = event.json();
    assert_eq!(
        (&event["event_id"], &event["targets"], &event["pending"]),
        (&json!("r-1"), &Value::Null, &Value::Null),
        "{event}"
    );
    assert_eq!(event["counts"], json!({"delivered": 1, "rate_limited": 1}));
    assert_eq!(event["results"].as_array().map(Vec::len), Some(2));
    assert_eq!(
        status_of("/api/v1/notifications/nope.gift".into())
            .await
            .status,
        404
    );
    // gorush's sync mode: the answer waits for the verdicts, and names the failed token.
    let sync = post_json(
        api.addr,
        "/api/push",
        KEY,
        &json!({"sync": true, "notifications": [{"tokens": [&tokens[1], &tokens[0]],
            "platform": 1, "message": "Hi", "topic": common::TOPIC}]}),
    )
    .await;
    assert_eq!(sync.status, 200, "{}", sync.text());
    let sync = sync.json();
    assert_eq!(
        (&sync["counts"], &sync["pending"]),
        (&json!(2), &json!(0)),
        "{sync}"
    );
    let logs = sync["logs"].as_array().unwrap();
    assert_eq!(logs.len(), 1, "{sync}");
    assert_eq!(
        (&logs[0]["token"], &logs[0]["message"]),
        (&json!(tokens[0]), &json!("token_invalid"))
    );
    // No `pusher run gcm` here: at `api.syncTimeout` the answer says what has no verdict,
    // rather than an empty `logs` that reads as "all delivered".
    let waited = post_json(
        api.addr,
        "/api/push",
        KEY,
        &json!({"sync": true, "notifications": [{"tokens": ["gcm-never"], "platform": 2,
            "message": "Hi"}]}),
    )
    .await
    .json();
    assert_eq!(
        (&waited["logs"], &waited["pending"]),
        (&json!([]), &json!(1)),
        "{waited}"
    );
    stop.cancel();
    let counts = writer.await.unwrap();
    assert_eq!(
        (counts.stored, counts.untracked, counts.malformed),
        (22, 0, 0),
        "{counts:?}"
    );
    api.stop().await;
}

/// A push `pusher run` refuses as malformed (here a payload over APNs' 4 KiB) still completes
/// its notification: its feedback record carries the message's `metadata` (notif_id, outcome
/// `malformed`), `pusher results` stores a failed row, and the webhook is called with both
/// verdicts. Before, the record had no notif_id: it was counted `untracked`, and the
/// notification stayed pending for good, its webhook never called.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_push_still_completes_its_notification() {
    let app = fresh_app("api");
    let [apns, _] = topics(&app);
    let feedback = format!("push-{app}-apns-feedbacks");
    let kafka = TestKafka::start(&[&apns, &feedback], 1).await;
    let store = common::platform::store().await;
    store
        .record_accepted(&app, &[("m-1".into(), Some(2))])
        .await
        .unwrap();
    let (good, bad) = (common::token(1), common::token(2));
    let message = |token: &str, alert: String| {
        json!({"DeviceToken": token, "Payload": {"aps": {"alert": alert}},
               "metadata": {"notif_id": "m-1", "jobId": "j"}})
        .to_string()
        .into_bytes()
    };
    common::process::produce_all(
        kafka.bootstrap(),
        &apns,
        &[message(&good, "Hi".into()), message(&bad, "x".repeat(5000))],
    )
    .await;
    let fake = start_fake(FakeOptions::default()).await;
    let _pusher = run_apns(
        &app,
        kafka.bootstrap(),
        &fake,
        10,
        vec![("PUSHER_FEEDBACK_REPORTERS", "kafka".to_owned())],
    );
    let (hook, mut calls) = webhook_receiver().await;
    let stop = CancellationToken::new();
    let writer = spawn_results(kafka.bootstrap(), &app, &store, hooks_of(&app, hook), &stop);
    let body = next_within(
        &mut calls,
        Duration::from_secs(60),
        "the notification completes: its webhook is called",
    )
    .await;
    assert_eq!(
        body,
        json!({"app": app, "notif_id": "m-1", "targets": 2,
               "counts": {"delivered": 1, "malformed": 1}})
    );
    let rows = store.results_page(&app, "m-1", "", 10).await.unwrap();
    let refused = rows.iter().find(|r| r.token == bad).unwrap();
    assert_eq!(
        (refused.outcome.as_str(), refused.reason.as_str()),
        ("malformed", "payload_too_large")
    );
    stop.cancel();
    let counts = writer.await.unwrap();
    assert_eq!(
        (counts.stored, counts.untracked, counts.webhooks),
        (2, 0, 1),
        "{counts:?}"
    );
}

/// `pusher api` (the binary) SIGKILLed while clients are sending: every request it answered
/// 200 is in Kafka, and the unanswered ones, retried with the same Idempotency-Key against a
/// restarted API, are accepted (after their dead claims go stale): every token reaches Kafka.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_api_loses_nothing_it_acknowledged() {
    use std::collections::HashSet;
    use std::sync::{Arc, Mutex};
    let app = fresh_app("api");
    let kafka = kafka_for(&app).await;
    let brokers = kafka.bootstrap().to_owned();
    let spawn = || {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_pusher"));
        cmd.args(["api", "--listen", "127.0.0.1:0", "--brokers", &brokers])
            .env("PUSHER_API_KEYS_T_APP", &app)
            .env("PUSHER_API_KEYS_T_KEY", KEY)
            // A fresh Tansu may take over a second for its first acknowledgement (it failed
            // CI once at 1 s): a timeout here would be a 503, not what this test is about.
            .env("PUSHER_API_PRODUCETIMEOUT", "5s")
            // A dead request's claims are taken over after 2 x 5 s + 2 x 2 s.
            .env("PUSHER_INVALIDTOKEN_PG_STATEMENTTIMEOUT", "2s")
            .env("PUSHER_INVALIDTOKEN_PG_HOST", "127.0.0.1")
            .env("PUSHER_INVALIDTOKEN_PG_USER", "postgres")
            .env("PUSHER_INVALIDTOKEN_PG_DATABASE", "test")
            .env("PUSHER_LOG", "warn");
        let mut api = watched::Watched::spawn(cmd);
        let line = api.wait_for(false, "listening on http://", Duration::from_secs(30));
        let addr: SocketAddr = line
            .trim()
            .trim_start_matches("listening on http://")
            .parse()
            .unwrap();
        (api, addr)
    };
    let body = |i: usize| {
        let tokens: Vec<String> = (0..10).map(|j| format!("t-{i}-{j}")).collect();
        serde_json::to_vec(
            &json!({"notifications": [{"tokens": tokens, "platform": 2, "message": "m"}]}),
        )
        .unwrap()
    };
    let (api, addr) = spawn();
    let acked: Arc<Mutex<HashSet<usize>>> = Arc::default();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (acked, next) = (acked.clone(), next.clone());
        clients.push(tokio::spawn(async move {
            let auth = format!("Bearer {KEY}");
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let key = format!("k-{i}");
                let headers = [
                    ("authorization", auth.as_str()),
                    ("idempotency-key", key.as_str()),
                ];
                match common::http::try_request(addr, "POST", "/api/push", &headers, body(i)).await
                {
                    Ok(a) if a.status == 200 => {
                        acked.lock().unwrap().insert(i);
                    }
                    Ok(a) => panic!("request {i}: {} {}", a.status, a.text()),
                    // Killed: this one and the rest are unanswered.
                    Err(_) => return,
                }
            }
        }));
    }
    // Kill it mid-stream, once it has answered a few hundred requests.
    let deadline = Instant::now() + Duration::from_secs(30);
    while acked.lock().unwrap().len() < 200 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    watched::Watched::signal(api.id(), "KILL");
    for c in clients {
        c.await.unwrap();
    }
    drop(api);
    let acked = acked.lock().unwrap().clone();
    let sent = next.load(std::sync::atomic::Ordering::Relaxed);
    assert!(acked.len() >= 200, "{} acknowledged", acked.len());

    let topic = format!("push-{app}_gcm");
    let records = read_topic(kafka.bootstrap(), &topic, acked.len() * 10);
    let in_kafka: HashSet<String> = records.iter().map(|(k, _)| k.clone()).collect();
    for i in &acked {
        for j in 0..10 {
            assert!(
                in_kafka.contains(&format!("t-{i}-{j}")),
                "acknowledged t-{i}-{j} lost"
            );
        }
    }

    // The unanswered ones, retried against a new process with their keys.
    let (_api, addr) = spawn();
    for i in (0..sent).filter(|i| !acked.contains(i)) {
        // A dead claim is taken over after 14 s (above).
        let deadline = Instant::now() + Duration::from_secs(40);
        loop {
            let a = keyed_push(addr, &format!("k-{i}"), body(i)).await;
            if a.status == 200 {
                break;
            }
            assert_eq!(a.status, 409, "{}", a.text());
            assert!(Instant::now() < deadline, "request {i} still busy");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    // The restarted API counted every request it answered 200, from its first: its metrics
    // recorder is installed at start, not at the first scrape.
    let answered = sent - acked.len();
    let metrics = request(addr, "GET", "/metrics", &[], "").await.text();
    assert!(
        metrics.contains(&format!(
            r#"pusher_api_requests_total{{route="/api/push",status="200"}} {answered}"#
        )),
        "{answered} answered 200: {metrics}"
    );
    let records = read_topic(kafka.bootstrap(), &topic, sent * 10);
    let in_kafka: HashSet<String> = records.iter().map(|(k, _)| k.clone()).collect();
    assert_eq!(
        in_kafka.len(),
        sent * 10,
        "every token of every request, acknowledged once"
    );
    // Only requests in flight at the kill may have been written twice.
    let extra = records.len() - in_kafka.len();
    eprintln!(
        "requests {sent}, acknowledged before the kill {}, duplicates {extra}",
        acked.len()
    );
    assert!(
        extra <= 4 * 10,
        "{extra} duplicates for 4 requests in flight"
    );
}

/// A client that never finishes its request head (slow-loris) is disconnected after 10 s,
/// while the API keeps answering others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_head_that_never_ends_is_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_, _kafka, api) = fresh_api(|_| {}).await;
    let mut slow = tokio::net::TcpStream::connect(api.addr).await.unwrap();
    slow.write_all(b"POST /api/push HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    assert_eq!(
        request(api.addr, "GET", "/version", &[], "").await.status,
        200
    );
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(20), slow.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "still open after 20 s");
    let waited = started.elapsed();
    assert!(waited >= Duration::from_secs(9), "cut off after {waited:?}");
    api.stop().await;
}

/// The pending claims of `app` (PostgreSQL).
async fn pending_claims(app: &str) -> i64 {
    pg_client()
        .await
        .query_one(
            "SELECT count(*) FROM pusher_notifications WHERE app = $1 AND state = 'pending'",
            &[&app],
        )
        .await
        .unwrap()
        .get(0)
}

/// Waits (10 s at most, then fails with `what`) until `app` has a pending claim.
async fn wait_claimed(app: &str, what: &str) {
    wait_until(Duration::from_secs(10), what, || async {
        pending_claims(app).await > 0
    })
    .await;
}

/// Makes `app`'s pending claims `seconds` old (PostgreSQL).
async fn age_claims(app: &str, seconds: f64) {
    pg_client()
        .await
        .execute(
            "UPDATE pusher_notifications SET claimed_at = now() - make_interval(secs => $2)
             WHERE app = $1 AND state = 'pending'",
            &[&app, &seconds],
        )
        .await
        .unwrap();
}

/// A client that hangs up while its keyed request waits for Kafka loses only the answer: the
/// write ends (produced, confirmed), and its retry is answered with the same notif_id, each
/// token written once; the 409s while it runs say to retry within a second or two. Seen: the
/// hang-up dropped the handler between produce and confirm, so the claim stayed pending with
/// the records in Kafka; every retry got 409 until the claim went stale, then the tokens were
/// written again. And the 409's Retry-After was the time until the claim went stale (75 s
/// here) for a request that was done 2 s after it claimed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_hangs_up_mid_write_loses_only_the_answer() {
    use tokio::io::AsyncWriteExt;
    let app = fresh_app("api");
    let [apns, _] = topics(&app);
    let cluster = mock_cluster_for(&app);
    let brokers = cluster.bootstrap_servers();
    let api = Api::start(settings(&app), &brokers).await;
    warm_up(api.addr).await;
    // Kafka acknowledges 2 s late, well within the produce timeout (5 s).
    cluster
        .broker_round_trip_time(1, Duration::from_secs(2))
        .unwrap();

    let body = one_push(&["h1", "h2"], 1);
    let mut client = tokio::net::TcpStream::connect(api.addr).await.unwrap();
    let head = format!(
        "POST /api/push HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {KEY}\r\n\
         idempotency-key: k-hangup\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n",
        body.len()
    );
    client.write_all(head.as_bytes()).await.unwrap();
    client.write_all(&body).await.unwrap();
    // Claimed, so waiting for Kafka: the client hangs up (its HTTP timeout, say).
    wait_claimed(&app, "the request never claimed its key").await;
    client.shutdown().await.unwrap();
    drop(client);

    // Retried as a client does: 409 while the write runs, then the first request's answer,
    // long before its claim could go stale (75 s here).
    let started = Instant::now();
    let answer = loop {
        let retry = keyed_push(api.addr, "k-hangup", body.clone()).await;
        if retry.status == 200 {
            break retry;
        }
        assert_eq!(retry.status, 409, "{}", retry.text());
        let wait: u64 = retry.headers["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        // As long as the claim has been held (at least 1 s), not the 75 s until it goes stale:
        // the first request is done about 2 s after it claimed.
        let held = started.elapsed().as_secs_f64();
        assert!(
            wait <= held.ceil() as u64 + 1,
            "Retry-After {wait} for a claim held for about {held:.1} s"
        );
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "still 409 after {:?}: the hung-up write never confirmed",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(pending_claims(&app).await, 0);
    cluster
        .broker_round_trip_time(1, Duration::from_millis(0))
        .unwrap();
    let notif_id = answer.json()["notif_ids"][0].as_str().unwrap().to_owned();
    let records = read_topic(&brokers, &apns, 3);
    let mut keys: Vec<&str> = records.iter().map(|(k, _)| k.as_str()).collect();
    keys.sort();
    assert_eq!(keys, ["h1", "h2", "warm"], "each token once");
    for (key, value) in &records {
        if key != "warm" {
            assert_eq!(value["metadata"]["notif_id"], notif_id);
        }
    }
    api.stop().await;
}

/// Waits until `/healthz` answers 200 (another test's failure may be reported for a moment:
/// the problems are the process's).
async fn healthy_within(addr: SocketAddr, within: Duration) -> Result<(), String> {
    let deadline = Instant::now() + within;
    loop {
        let health = request(addr, "GET", "/healthz", &[], "").await;
        if health.status == 200 {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(health.text());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `/healthz` asks Kafka itself: a failed produce is reported until the next look finds the
/// brokers answering, a queue read that cannot reach its brokers is a plain 503 that marks
/// nothing, and brokers that do not answer are a problem named `api kafka`. Seen: one failed
/// produce (or queue read) left `api kafka` reported until a later produce succeeded, which a
/// replica taken out of service for it never gets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_asks_kafka_rather_than_remembering_a_failure() {
    let app = fresh_app("api");
    let cluster = cluster_refusing_gcm(&app);
    let brokers = cluster.bootstrap_servers();
    let mut s = settings(&app);
    s.produce_timeout = Duration::from_secs(2);
    // The queue routes read from brokers that are not there.
    s.queues = pusher::platform::api::Queues {
        brokers: "127.0.0.1:9".into(),
        route_group: format!("route-{app}"),
        apns_group: format!("apns-{app}"),
        gcm_group: format!("gcm-{app}"),
        webpush_group: format!("webpush-{app}"),
    };
    let api = Api::start(s, &brokers).await;
    let body = json!({"notifications": [{"tokens": ["g1"], "platform": 2, "message": "m"}]});
    let refused = post_json(api.addr, "/api/push", KEY, &body).await;
    assert_eq!(refused.status, 503, "{}", refused.text());
    healthy_within(api.addr, Duration::from_secs(10))
        .await
        .expect("Kafka answers: healthy, though the last produce failed");

    let queue = authorized(api.addr, "GET", "/get_request_queue", KEY, "").await;
    assert_eq!(queue.status, 503, "{}", queue.text());
    let said = queue.json()["error"].as_str().unwrap().to_owned();
    assert!(!said.contains("nothing was accepted"), "{said}");
    assert!(said.contains("backlog"), "{said}");
    healthy_within(api.addr, Duration::from_secs(10))
        .await
        .expect("a failed queue read marks nothing");
    api.stop().await;

    let down = Api::start(settings(&app), "127.0.0.1:9").await;
    let health = request(down.addr, "GET", "/healthz", &[], "").await;
    assert_eq!(health.status, 503, "{}", health.text());
    assert!(health.text().contains("api kafka"), "{}", health.text());
    down.stop().await;
}

/// `/healthz` looks at Kafka once at a time whatever its callers do: callers that hang up while
/// the look runs do not start another, and the next caller gets that look's answer. Seen: a
/// caller that hung up released the look's lock with the look still running, so every hang-up
/// let the next caller start one more, each holding a blocking thread for its 2 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_looks_at_kafka_once_at_a_time_when_callers_hang_up() {
    use tokio::io::AsyncWriteExt;
    let app = fresh_app("api");
    // No broker there: each look takes its whole 2 s.
    let api = Api::start(settings(&app), "127.0.0.1:9").await;
    let mut callers = Vec::new();
    for _ in 0..10 {
        let mut caller = tokio::net::TcpStream::connect(api.addr).await.unwrap();
        caller
            .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        callers.push(caller);
    }
    wait_until(Duration::from_secs(5), "no look started", || async {
        api.state.kafka_looks() > 0
    })
    .await;
    // They hang up one after another while the look runs (a probe's timeout, say).
    for caller in callers {
        drop(caller);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let health = request(api.addr, "GET", "/healthz", &[], "").await;
    assert_eq!(health.status, 503, "{}", health.text());
    assert_eq!(api.state.kafka_looks(), 1, "looks at the brokers");
    api.stop().await;
}

/// A client that sends requests and never reads the answers is disconnected once a write has
/// waited `api.writeTimeout` on it, instead of holding its connection (and the answers'
/// memory) until TCP gives up. Requests pipelined on one connection make answers larger than
/// both sockets' buffers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_cut_off_at_the_write_timeout() {
    use tokio::io::AsyncWriteExt;
    let app = fresh_app("api");
    let mut s = settings(&app);
    s.write_timeout = Duration::from_secs(1);
    let api = Api::start(s, "127.0.0.1:9").await;
    let stream = tokio::net::TcpStream::connect(api.addr).await.unwrap();
    // The read half is kept, never read: the connection stays open on this side.
    let (unread, mut write) = stream.into_split();
    let started = Instant::now();
    let sender = tokio::spawn(async move {
        let requests = "GET /version HTTP/1.1\r\nhost: x\r\n\r\n".repeat(1000);
        loop {
            if let Err(e) = write.write_all(requests.as_bytes()).await {
                return e;
            }
        }
    });
    // Under the 10 s a request head may take: only the write timeout can end it sooner.
    let ended = tokio::time::timeout(Duration::from_secs(8), sender).await;
    let waited = started.elapsed();
    assert!(ended.is_ok(), "still connected after {waited:?}");
    let error = ended.unwrap().unwrap();
    assert!(
        matches!(
            error.kind(),
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
        ),
        "{error}"
    );
    drop(unread);
    assert_eq!(
        request(api.addr, "GET", "/version", &[], "").await.status,
        200
    );
    api.stop().await;
}

/// Sends a request head announcing `length` bytes of body, then nothing.
async fn head_only(
    addr: SocketAddr,
    path: &str,
    headers: &str,
    length: usize,
) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head =
        format!("POST {path} HTTP/1.1\r\nhost: x\r\n{headers}content-length: {length}\r\n\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    stream
}

/// A body that trickles in (its head complete, a byte now and then) is answered 408 at
/// `api.bodyTimeout` and its connection closed. Seen: waited for as long as the client liked,
/// without a key on the sign-in form, so such connections could pile up until the process
/// was out of file descriptors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_trickles_is_cut_off_at_the_body_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_, _kafka, api) = fresh_api(|s| {
        s.body_timeout = Duration::from_secs(1);
    })
    .await;
    let auth = format!("authorization: Bearer {KEY}\r\n");
    for (path, headers) in [
        ("/api/push", auth.as_str()),
        (
            "/ui/login",
            "content-type: application/x-www-form-urlencoded\r\n",
        ),
    ] {
        let mut slow = head_only(api.addr, path, headers, 1000).await;
        let started = Instant::now();
        // A byte every 300 ms, while the answer is read: it comes before the body is whole.
        let mut answer = Vec::new();
        let mut read = [0u8; 4096];
        let closed = tokio::time::timeout(Duration::from_secs(10), async {
            let mut trickled = 0;
            loop {
                tokio::select! {
                    n = slow.read(&mut read) => match n {
                        Ok(0) | Err(_) => break,
                        Ok(n) => answer.extend_from_slice(&read[..n]),
                    },
                    _ = tokio::time::sleep(Duration::from_millis(300)) => {
                        if trickled < 100 && slow.write_all(b"{").await.is_ok() {
                            trickled += 1;
                        }
                    }
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "{path}: still open after 10 s");
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 408"), "{path}: {answer}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{path}: {:?}",
            started.elapsed()
        );
    }
    api.stop().await;
}

/// Past `api.maxConnections`, a new connection waits to be accepted until one closes, instead
/// of every connection taking a file descriptor until `accept` fails for all of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_limit_wait_for_a_place() {
    let (_, _kafka, api) = fresh_api(|s| {
        s.max_connections = 2;
    })
    .await;
    let auth = format!("authorization: Bearer {KEY}\r\n");
    let first = head_only(api.addr, "/api/push", &auth, 100).await;
    let second = head_only(api.addr, "/api/push", &auth, 100).await;
    let third =
        tokio::spawn(async move { request(api.addr, "GET", "/version", &[], "").await.status });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !third.is_finished(),
        "answered with 2 connections open of 2"
    );
    drop(first);
    let status = tokio::time::timeout(Duration::from_secs(5), third)
        .await
        .expect("answered once a place is free")
        .unwrap();
    assert_eq!(status, 200);
    drop(second);
    api.stop().await;
}

/// A stop with a request still reading its body (a client gone silent without closing) ends
/// within the shutdown grace. Seen: the graceful shutdown waited for that request, and the
/// process never exited until killed, killing the requests in progress with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_ends_within_the_grace_whatever_the_clients_do() {
    let (_, _kafka, api) = fresh_api(|s| {
        // Longer than the grace: the stop alone must end it.
        s.body_timeout = Duration::from_secs(120);
    })
    .await;
    let auth = format!("authorization: Bearer {KEY}\r\n");
    let silent = head_only(api.addr, "/api/push", &auth, 100).await;
    // The request is being read.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    api.stop.cancel();
    let ended = tokio::time::timeout(
        pusher::platform::api::SHUTDOWN_GRACE + Duration::from_secs(5),
        api.task,
    )
    .await;
    assert!(
        ended.is_ok(),
        "still serving {:?} after the stop",
        started.elapsed()
    );
    ended.unwrap().unwrap().unwrap();
    drop(silent);
}

/// Records in flight are bounded by `api.maxInFlightBytes` over all requests: past it a
/// request is 503 with Retry-After and nothing of it is written; once the others are done, it
/// is accepted. Seen: no bound, so concurrent requests of many tokens each built and queued
/// their records until the process ran out of memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_in_flight_are_bounded_by_bytes() {
    let app = fresh_app("api");
    let [apns, _] = topics(&app);
    let cluster = mock_cluster_for(&app);
    let brokers = cluster.bootstrap_servers();
    let mut s = settings(&app);
    s.max_in_flight_bytes = 100_000;
    let api = Api::start(s, &brokers).await;
    let push = |tokens: Vec<String>| {
        json!({"notifications": [
        {"tokens": tokens, "platform": 1, "message": "m"}]})
    };
    warm_up(api.addr).await;
    cluster
        .broker_round_trip_time(1, Duration::from_secs(2))
        .unwrap();
    // ~550 bytes a record: 150 records hold most of the budget while Kafka is slow.
    let big: Vec<String> = (0..150).map(|i| format!("big-{i}")).collect();
    let big = serde_json::to_vec(&push(big)).unwrap();
    let first = tokio::spawn(keyed_push(api.addr, "k-big", big));
    // Claimed: its bytes are held (taken before the claim) until Kafka has its records.
    wait_claimed(&app, "the first request never claimed its key").await;
    let small: Vec<String> = (0..40).map(|i| format!("small-{i}")).collect();
    let refused = post_json(api.addr, "/api/push", KEY, &push(small.clone())).await;
    assert_eq!(refused.status, 503, "{}", refused.text());
    assert_eq!(refused.headers["retry-after"], "1");
    assert!(
        refused.text().contains("api.maxInFlightBytes"),
        "{}",
        refused.text()
    );
    let first = first.await.unwrap();
    assert_eq!(first.status, 200, "{}", first.text());
    let again = post_json(api.addr, "/api/push", KEY, &push(small.clone())).await;
    assert_eq!(again.status, 200, "{}", again.text());
    cluster
        .broker_round_trip_time(1, Duration::from_millis(0))
        .unwrap();
    // Accepted = produced: the refused request wrote nothing.
    assert_eq!(read_topic(&brokers, &apns, 191).len(), 191);
    api.stop().await;
}

/// gorush bodies keep their meaning over the wire: FCM's `notification` block is shown,
/// `thread-id` and `expiration: 0` reach APNs, and what cannot be carried is a 400 naming it
/// with nothing produced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gorush_fields_are_carried_or_refused_by_name() {
    let (app, kafka, api) = fresh_api(|_| {}).await;
    let refused = post_json(
        api.addr,
        "/api/push",
        KEY,
        &json!({"notifications": [{"tokens": ["x"], "platform": 2, "message": "m",
            "android": {"notification": {"channel_id": "c"}}}]}),
    )
    .await;
    assert_eq!(refused.status, 400, "{}", refused.text());
    assert_eq!(refused.json()["field"], "notifications[0].android");
    let body = json!({"notifications": [
        {"tokens": ["g"], "platform": 2, "notification": {"title": "Hi", "body": "There"},
         "data": {"k": "v"}},
        {"tokens": ["i"], "platform": 1, "message": "now", "thread-id": "chat-7",
         "expiration": 0}
    ]});
    let answer = post_json(api.addr, "/api/push", KEY, &body).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let [apns_topic, gcm_topic] = topics(&app);
    let gcm = read_topic(kafka.bootstrap(), &gcm_topic, 1);
    assert_eq!(gcm.len(), 1, "the refused request wrote nothing");
    assert_eq!(
        gcm[0].1["notification"],
        json!({"title": "Hi", "body": "There"})
    );
    let apns = read_topic(kafka.bootstrap(), &apns_topic, 1);
    assert_eq!(apns[0].1["Payload"]["aps"]["thread-id"], "chat-7");
    assert_eq!(apns[0].1["expiration"], 0);
    api.stop().await;
}
