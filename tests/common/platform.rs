//! What the platform's tests share: the machine's PostgreSQL, fresh app names, and reading a
//! topic back.
#![allow(dead_code)]

use pusher::config::{PgConfig, Secret};
use pusher::platform::api::{serve, ApiKey, ApiSettings, ApiState};
use pusher::platform::produce::Producer;
use pusher::platform::results::ResultCounts;
use pusher::platform::store::Store;
use pusher::platform::webhook::Webhooks;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::Message;
use serde_json::Value;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// The machine's PostgreSQL (ci/setup.sh starts it): trust auth, user postgres, database test.
pub fn pg() -> PgConfig {
    PgConfig {
        user: "postgres".to_owned(),
        pass: None,
        host: "127.0.0.1".to_owned(),
        database: "test".to_owned(),
        port: 5432,
        pool_size: 4,
        connection_timeout: Duration::from_secs(2),
        statement_timeout: Duration::from_secs(30),
    }
}

/// The platform's store on the machine's PostgreSQL, its tables created.
pub async fn store() -> Store {
    let store = Store::new(&pg()).unwrap();
    store
        .init()
        .await
        .expect("PostgreSQL on 127.0.0.1:5432 (ci/setup.sh starts it)");
    store
}

/// `pusher api`'s settings for a test: one key for `app`, limits no test reaches.
pub fn api_settings(app: &str, key: &str) -> ApiSettings {
    ApiSettings {
        keys: vec![ApiKey {
            name: "backend".into(),
            app: app.to_owned(),
            key: Secret::new(key),
        }],
        max_body_bytes: 1 << 20,
        max_notifications: 1000,
        max_tokens: 1000,
        rate_per_second: 10_000,
        burst: 10_000,
        produce_timeout: Duration::from_secs(5),
        sync_timeout: Duration::from_secs(30),
        metrics_token: None,
        queues: Default::default(),
        webpush_rules: pusher::push::webpush::EndpointRules::LOCAL,
        deeplink_base: String::new(),
        max_connections: 1000,
        body_timeout: Duration::from_secs(30),
        write_timeout: Duration::from_secs(30),
        max_in_flight_bytes: 256 << 20,
    }
}

/// `pusher api` on 127.0.0.1:0 with `settings` and `store`, producing to `brokers`, until
/// `stop`: its address, its state and the task serving it.
pub async fn serve_api(
    settings: ApiSettings,
    brokers: &str,
    store: Store,
    stop: &CancellationToken,
) -> (
    SocketAddr,
    ApiState,
    tokio::task::JoinHandle<std::io::Result<()>>,
) {
    let producer = Producer::new(brokers, settings.produce_timeout).unwrap();
    let state = ApiState::new(settings, producer, store);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(serve(listener, state.clone(), stop.clone()));
    (addr, state, task)
}

/// An app name no other test (or earlier run) uses.
pub fn fresh_app(prefix: &str) -> String {
    format!(
        "{prefix}{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    )
}

/// Every record on `topic` as (key, JSON), read from the start by a fresh group until
/// `expected` have come (or 20 s), then until a quiet half second shows no more arrive.
pub fn read_topic(brokers: &str, topic: &str, expected: usize) -> Vec<(String, Value)> {
    read_topics(brokers, &[topic], expected)
        .into_iter()
        .map(|(_, key, value)| (key, value))
        .collect()
}

/// The same over several topics: (topic, key, JSON).
pub fn read_topics(
    brokers: &str,
    topics: &[&str],
    expected: usize,
) -> Vec<(String, String, Value)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("read-{}", uuid::Uuid::new_v4()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(topics).unwrap();
    let mut records = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut quiet_since: Option<Instant> = None;
    while Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                quiet_since = None;
                let key = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
                let value = serde_json::from_slice(m.payload().unwrap_or_default()).unwrap();
                records.push((m.topic().to_owned(), key, value));
            }
            _ if records.len() >= expected
                && quiet_since.get_or_insert_with(Instant::now).elapsed()
                    > Duration::from_millis(500) =>
            {
                break;
            }
            _ => {}
        }
    }
    records
}

/// An app's webhook on port 0 that answers 200: its URL, and each call's JSON body.
pub async fn webhook_receiver() -> (String, tokio::sync::mpsc::UnboundedReceiver<Value>) {
    let (calls_tx, calls) = tokio::sync::mpsc::unbounded_channel::<Value>();
    let url = hook_server(move |body: axum::body::Bytes| {
        let calls = calls_tx.clone();
        async move {
            let _ = calls.send(serde_json::from_slice(&body).unwrap());
            axum::http::StatusCode::OK
        }
    })
    .await;
    (url, calls)
}

/// `pusher results`' consumer group for `app`'s feedback topics, from the start.
pub fn results_group(brokers: &str, app: &str) -> pusher::platform::consume::GroupSettings {
    pusher::platform::consume::GroupSettings {
        brokers: brokers.to_owned(),
        group: format!("results-{app}"),
        topic: pusher::platform::results::feedback_pattern("push-{app}-{platform}-feedbacks"),
        batch_size: 100,
        offset_reset: "earliest".to_owned(),
        consumer_extra: Vec::new(),
    }
}

/// `pusher results` in this process for `app` (`results_group`), calling `hooks`, until
/// `stop`: its counts once stopped.
pub fn spawn_results(
    brokers: &str,
    app: &str,
    store: &Store,
    hooks: Webhooks,
    stop: &CancellationToken,
) -> tokio::task::JoinHandle<ResultCounts> {
    let group = results_group(brokers, app);
    let run = pusher::platform::results::run(group, store.clone(), hooks, stop.clone());
    tokio::spawn(async move { run.await.unwrap() })
}

/// `app`'s webhook at `url`, as `results.webhooks` names it.
pub fn hooks_of(app: &str, url: String) -> Webhooks {
    Webhooks::new(&BTreeMap::from([(app.to_owned(), url)])).unwrap()
}

/// No app's webhook: a results process that hands what it completes over.
pub fn no_hooks() -> Webhooks {
    Webhooks::new(&BTreeMap::new()).unwrap()
}

/// A webhook at `POST /hook` on port 0 that `handler` answers: its URL.
pub async fn hook_server<H, T>(handler: H) -> String
where
    H: axum::handler::Handler<T, ()>,
    T: 'static,
{
    let router = axum::Router::new().route("/hook", axum::routing::post(handler));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    format!("http://{addr}/hook")
}

/// What `calls` receives next, within `within`; fails with `what` (what was awaited).
pub async fn next_within<T>(
    calls: &mut tokio::sync::mpsc::UnboundedReceiver<T>,
    within: Duration,
    what: &str,
) -> T {
    tokio::time::timeout(within, calls.recv())
        .await
        .unwrap_or_else(|_| panic!("{what}"))
        .unwrap()
}

/// Fails if `calls` receives anything more within 1.5 s: each call was made once.
pub async fn assert_each_once<T>(calls: &mut tokio::sync::mpsc::UnboundedReceiver<T>) {
    assert!(
        tokio::time::timeout(Duration::from_millis(1500), calls.recv())
            .await
            .is_err(),
        "each once"
    );
}

/// Polls `done` every 20 ms until it holds; fails with `what` once `within` has passed.
pub async fn wait_until<F, Fut>(within: Duration, what: &str, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !done().await {
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A session of its own on the machine's PostgreSQL, outside any pool: one that holds locks
/// or changes rows beside the code under test.
pub async fn pg_client() -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(
        "host=127.0.0.1 port=5432 user=postgres dbname=test",
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    client
}

/// Produces `pusher run`'s feedback record of a delivered GCM push of `notif_id` to `token`,
/// on `app`'s feedback topic.
pub async fn produce_delivered(brokers: &str, app: &str, notif_id: &str, token: &str) {
    use pusher::platform::produce::{Producer, Record};
    let verdict = serde_json::json!({"from": token, "metadata": {"notif_id": notif_id,
        "game": app, "outcome": "delivered", "timestamp": 1_700_000_000}});
    Producer::new(brokers, Duration::from_secs(5))
        .unwrap()
        .produce_all(&[Record {
            topic: format!("push-{app}-gcm-feedbacks"),
            key: token.into(),
            payload: verdict.to_string().into_bytes(),
        }])
        .await
        .unwrap();
}

/// Waits (30 s at most) until the group `route-{app}` has committed everything on the app's
/// requests topic.
pub async fn wait_routed(brokers: &str, app: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let (brokers, group) = (brokers.to_owned(), format!("route-{app}"));
    let topic = vec![format!("push-{app}-requests")];
    loop {
        let (b, g, t) = (brokers.clone(), group.clone(), topic.clone());
        let lag = tokio::task::spawn_blocking(move || {
            pusher::platform::lag::backlog(&b, &g, &t, Duration::from_secs(5))
        })
        .await
        .unwrap();
        if matches!(lag, Ok(0)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the routers did not commit: {lag:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A trigger a test puts on a table of the store, to fail or slow its statements. Its
/// function and a sequence share its name: `action` may draw from the sequence
/// (`nextval('<name>')`), which a rollback does not undo, so it counts the tries of a
/// statement that failed too.
pub struct TestTrigger {
    name: String,
    table: String,
}

impl TestTrigger {
    /// `timing`: `BEFORE INSERT`, `BEFORE UPDATE`, ...; `action`: the plpgsql run for each
    /// row before `RETURN NEW`.
    pub async fn create(
        pg: &tokio_postgres::Client,
        name: &str,
        timing: &str,
        table: &str,
        action: &str,
    ) -> TestTrigger {
        pg.batch_execute(&format!(
            "CREATE SEQUENCE {name};
             CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
                 {action}
                 RETURN NEW;
             END $$;
             CREATE TRIGGER {name} {timing} ON {table}
                 FOR EACH ROW EXECUTE FUNCTION {name}();"
        ))
        .await
        .unwrap();
        TestTrigger {
            name: name.into(),
            table: table.into(),
        }
    }

    /// Whether its sequence was drawn from at all.
    pub async fn fired(&self, pg: &tokio_postgres::Client) -> bool {
        pg.query_one(&format!("SELECT is_called FROM {}", self.name), &[])
            .await
            .unwrap()
            .get(0)
    }

    /// Removes the trigger, its function and its sequence; returns how often the sequence
    /// was drawn from.
    pub async fn drop(self, pg: &tokio_postgres::Client) -> i64 {
        let name = &self.name;
        let tries: i64 = pg
            .query_one(&format!("SELECT last_value FROM {name}"), &[])
            .await
            .unwrap()
            .get(0);
        pg.batch_execute(&format!(
            "DROP TRIGGER {name} ON {}; DROP FUNCTION {name}(); DROP SEQUENCE {name};",
            self.table
        ))
        .await
        .unwrap();
        tries
    }
}
