//! The config tree as types: every key, its type and its default. The environment names and
//! the unknown-key check are derived from these types ([`super::keys`]), so a key is added here
//! and nowhere else.
//!
//! Rules the derivation relies on: every field serializes (no `skip_serializing_if`), an
//! optional key (`None` by default) is text, and a per-app map is a `BTreeMap<String, _>`.

use serde::de::{self, DeserializeOwned, Deserializer, IntoDeserializer};
use serde::{Deserialize, Serialize, Serializer};
use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// A string that must never be printed (passwords, API keys, credentials, DSNs).
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    /// The secret itself, for the one place that needs it (a connection, a signature).
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Secret(s)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Serialized (for the key tree, or anyone dumping a config) without its value.
impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("<redacted>")
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Config {
    pub queue: QueueConfig,
    pub apns: ApnsConfig,
    pub gcm: GcmConfig,
    /// Browsers over the Web Push protocol (DESIGN.md §11).
    pub webpush: WebPushConfig,
    pub feedback: FeedbackConfig,
    pub stats: StatsConfig,
    pub invalid_token: InvalidTokenConfig,
    /// How long in-flight work may take after SIGTERM/SIGINT (a bare number is seconds).
    #[serde(with = "secs")]
    pub graceful_shutdown_timeout: Duration,
    /// Most messages in flight (consumed, not yet finished) at once, over all partitions.
    pub in_flight: usize,
    pub sentry: SentryConfig,
    /// `pusher api`: the platform's HTTP API (DESIGN.md §10). Its state (idempotency keys,
    /// notifications) lives in the `invalidToken.pg` database, beside the token tables.
    pub api: ApiConfig,
    /// `pusher route`: the consumer group on the requests topics (DESIGN.md §10).
    pub route: RouteConfig,
    /// `pusher results`: the consumer group on the feedback topics (DESIGN.md §10).
    pub results: ResultsConfig,
    /// The seed's keys that were set and are ignored (filled by the loader, not a key).
    #[serde(skip)]
    pub seed_keys: Vec<SeedKey>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            queue: QueueConfig::default(),
            apns: ApnsConfig::default(),
            gcm: GcmConfig::default(),
            webpush: WebPushConfig::default(),
            feedback: FeedbackConfig::default(),
            stats: StatsConfig::default(),
            invalid_token: InvalidTokenConfig::default(),
            graceful_shutdown_timeout: Duration::from_secs(30),
            in_flight: 1000,
            sentry: SentryConfig::default(),
            api: ApiConfig::default(),
            route: RouteConfig::default(),
            results: ResultsConfig::default(),
            seed_keys: Vec::new(),
        }
    }
}

/// A key of the seed's config that this pusher accepts and ignores, as it was given (a dotted
/// key or an environment name), with what governs that now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeedKey {
    pub key: String,
    pub now: &'static str,
}

/// The seed's keys that do nothing here: (dotted key, what governs that now). A key covers
/// everything under it. Accepted so that a config written for the seed loads; the pusher warns
/// once at start.
pub const SEED_KEYS: &[(&str, &str)] = &[
    ("apns.concurrentWorkers", "inFlight bounds concurrency"),
    ("gcm.concurrentWorkers", "inFlight bounds concurrency"),
    ("gcm.maxPendingMessages", "inFlight bounds concurrency"),
    ("apns.pushQueueSize", "inFlight bounds concurrency"),
    ("apns.responseChannelSize", "inFlight bounds concurrency"),
    ("queue.channelSize", "inFlight bounds concurrency"),
    (
        "invalidToken.pg.maxRetries",
        "a failed DELETE is retried until it commits or the shutdown deadline passes; only a token PostgreSQL refuses on its own is dropped",
    ),
    ("invalidToken.pg.table", "tables are named <app>_<platform>"),
    ("apns.logStatsInterval", "stats.logInterval"),
    ("gcm.logStatsInterval", "stats.logInterval"),
    ("gcm.pingInterval", "XMPP only; FCM over HTTP has no pings"),
    ("gcm.pingTimeout", "XMPP only; FCM over HTTP has no pings"),
    ("stats.flush", "stats.statsd.flushIntervalInMs"),
    ("stats.statsd.buflen", "stats.statsd.flushIntervalInMs"),
    (
        "feedback.cache",
        "not needed: each feedback carries its message",
    ),
    (
        "feedbackListeners",
        "invalidToken: the pusher deletes invalid tokens itself",
    ),
    ("apns.rateLimit", "not available"),
    ("gcm.rateLimit", "not available"),
    ("apns.dedup", "not available"),
    ("gcm.dedup", "not available"),
    ("log.level", "PUSHER_LOG and -d"),
    ("pprof", "not available"),
];

/// The feedback topic template when none is configured.
pub const DEFAULT_FEEDBACK_TOPIC: &str = "push-{app}-{platform}-feedbacks";

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default)]
pub struct QueueConfig {
    /// Topic names or regexes (a name starting with `^` is a regex, as librdkafka reads it).
    #[serde(deserialize_with = "comma_list")]
    pub topics: Vec<String>,
    /// Comma-separated `host:port` list.
    pub brokers: String,
    /// The consumer group; `pusher-<platform>` when unset, so the APNs and FCM pushers never
    /// share one (a shared group splits each platform's partitions between both pushers).
    #[serde(deserialize_with = "non_empty")]
    pub group: Option<String>,
    /// Consumer `session.timeout.ms` (a bare number is milliseconds).
    #[serde(with = "millis")]
    pub session_timeout: Duration,
    /// `auto.offset.reset`.
    pub offset_reset_strategy: OffsetReset,
    /// On shutdown, wait for in-flight messages (up to the graceful timeout).
    pub handle_all_messages_before_exiting: bool,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            topics: vec!["^push-[^-_]+_(apns|gcm)".to_owned()],
            brokers: "localhost:9092".to_owned(),
            group: None,
            session_timeout: Duration::from_millis(6000),
            offset_reset_strategy: OffsetReset::Latest,
            handle_all_messages_before_exiting: true,
        }
    }
}

/// Where a group without committed offsets starts; librdkafka's aliases are accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OffsetReset {
    #[serde(alias = "smallest", alias = "beginning")]
    Earliest,
    #[default]
    #[serde(alias = "largest", alias = "end")]
    Latest,
    /// Fail the consumer instead of guessing.
    Error,
}

impl OffsetReset {
    /// The `auto.offset.reset` value.
    pub fn as_str(self) -> &'static str {
        match self {
            OffsetReset::Earliest => "earliest",
            OffsetReset::Latest => "latest",
            OffsetReset::Error => "error",
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ApnsConfig {
    #[serde(deserialize_with = "comma_list")]
    pub apps: Vec<String>,
    /// Per-app credentials, keyed by app name.
    pub certs: BTreeMap<String, ApnsCert>,
    pub connection_pool_size: usize,
    pub retry: RetryConfig,
    /// A custom APNs base URL (a fake server); the vendor's host when absent.
    pub endpoint: Option<String>,
}

impl Default for ApnsConfig {
    fn default() -> Self {
        ApnsConfig {
            apps: Vec::new(),
            certs: BTreeMap::new(),
            connection_pool_size: 1,
            retry: RetryConfig::default(),
            endpoint: None,
        }
    }
}

/// One app's APNs credentials: token auth (`authKeyPath` + `keyID` + `teamID`) or a client
/// certificate (`certificate` = PKCS#12 or PEM path, with its `password`).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct ApnsCert {
    #[serde(rename = "authKeyPath")]
    pub auth_key_path: Option<PathBuf>,
    #[serde(rename = "keyID")]
    pub key_id: Option<String>,
    #[serde(rename = "teamID")]
    pub team_id: Option<String>,
    pub topic: Option<String>,
    pub certificate: Option<PathBuf>,
    /// The PEM private key of `certificate` when it is not in the same file.
    #[serde(rename = "certificateKey")]
    pub certificate_key: Option<PathBuf>,
    #[serde(deserialize_with = "non_empty")]
    pub password: Option<Secret>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default)]
pub struct RetryConfig {
    /// Base back-off (a bare number is milliseconds).
    #[serde(with = "millis")]
    pub interval: Duration,
    /// Most sends of one message (the first included).
    pub max_retry_attempts: u32,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            interval: Duration::from_secs(1),
            max_retry_attempts: 3,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default)]
pub struct GcmConfig {
    #[serde(deserialize_with = "comma_list")]
    pub apps: Vec<String>,
    pub certs: BTreeMap<String, GcmCert>,
    /// The seed's key: a service-account JSON document per app (a secret).
    pub firebase_credentials: BTreeMap<String, Secret>,
    /// A custom FCM base URL (a fake server); Google's when absent.
    pub endpoint: Option<String>,
}

/// One app's FCM credentials: a service-account file (HTTP v1) or a legacy `apiKey`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct GcmCert {
    #[serde(rename = "serviceAccountFile")]
    pub service_account_file: Option<PathBuf>,
    /// Overrides the `project_id` of the service account.
    #[serde(rename = "projectID")]
    pub project_id: Option<String>,
    /// Overrides the `token_uri` of the service account (a fake OAuth endpoint).
    #[serde(rename = "tokenURI")]
    pub token_uri: Option<String>,
    #[serde(rename = "apiKey", deserialize_with = "non_empty")]
    pub api_key: Option<Secret>,
    /// The seed's; the legacy API authenticates with the key alone.
    #[serde(rename = "senderID")]
    pub sender_id: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default)]
pub struct WebPushConfig {
    #[serde(deserialize_with = "comma_list")]
    pub apps: Vec<String>,
    /// Per-app VAPID identity, keyed by app name.
    pub vapid: BTreeMap<String, VapidKey>,
    /// Push services (hosts or host suffixes, on 443 unless given as `host:port`) whose
    /// failures for every push pause the app instead of failing the messages; the browsers'
    /// own by default.
    #[serde(deserialize_with = "comma_list")]
    pub push_services: Vec<String>,
    /// Accept `http://` endpoints and loopback or private hosts (fakes and tests only: in
    /// production a subscription pointing there is refused, never posted to).
    pub allow_local_endpoints: bool,
    /// Push-service origins with open connections at once (least recently used closed).
    pub max_origins: usize,
    /// HTTP/2 connections per origin.
    pub connections_per_origin: usize,
    pub retry: RetryConfig,
}

impl Default for WebPushConfig {
    fn default() -> Self {
        WebPushConfig {
            apps: Vec::new(),
            vapid: BTreeMap::new(),
            push_services: crate::push::webpush::PUSH_SERVICES
                .iter()
                .map(|s| s.to_string())
                .collect(),
            allow_local_endpoints: false,
            max_origins: 1000,
            connections_per_origin: 1,
            retry: RetryConfig::default(),
        }
    }
}

/// One app's VAPID key: the private key as text (`privateKey`: PEM, or raw base64url as
/// `web-push generate-vapid-keys` prints it) or a file (`privateKeyFile`), and the contact
/// the push services see (`subject`: `mailto:` or `https:`).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default)]
pub struct VapidKey {
    #[serde(deserialize_with = "non_empty")]
    pub private_key: Option<Secret>,
    pub private_key_file: Option<PathBuf>,
    pub subject: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default)]
pub struct FeedbackConfig {
    #[serde(deserialize_with = "comma_list")]
    pub reporters: Vec<FeedbackReporter>,
    pub kafka: FeedbackKafkaConfig,
    /// Also report successes (the seed did before v4).
    pub include_success: bool,
}

impl Default for FeedbackConfig {
    fn default() -> Self {
        FeedbackConfig {
            reporters: vec![FeedbackReporter::Kafka],
            kafka: FeedbackKafkaConfig::default(),
            include_success: false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FeedbackReporter {
    Kafka,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default)]
pub struct FeedbackKafkaConfig {
    /// One topic template; `{app}` and `{platform}` are filled in. A list for the seed's shape.
    #[serde(deserialize_with = "comma_list")]
    pub topics: Vec<String>,
    pub brokers: String,
}

impl Default for FeedbackKafkaConfig {
    fn default() -> Self {
        FeedbackKafkaConfig {
            topics: vec![DEFAULT_FEEDBACK_TOPIC.to_owned()],
            brokers: "localhost:9092".to_owned(),
        }
    }
}

impl FeedbackKafkaConfig {
    /// The topic template (validated to be exactly one).
    pub fn topic_template(&self) -> &str {
        self.topics
            .first()
            .map(String::as_str)
            .unwrap_or(DEFAULT_FEEDBACK_TOPIC)
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default)]
pub struct StatsConfig {
    #[serde(deserialize_with = "comma_list")]
    pub reporters: Vec<StatsReporter>,
    pub statsd: StatsdConfig,
    pub prometheus: PrometheusConfig,
    /// How often `pusher run` logs its status line; zero: never (a bare number is seconds).
    #[serde(with = "secs")]
    pub log_interval: Duration,
}

impl Default for StatsConfig {
    fn default() -> Self {
        StatsConfig {
            reporters: vec![StatsReporter::Statsd],
            statsd: StatsdConfig::default(),
            prometheus: PrometheusConfig::default(),
            log_interval: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StatsReporter {
    Statsd,
    Prometheus,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default)]
pub struct StatsdConfig {
    /// `host:port` of the StatsD agent (UDP).
    pub host: String,
    pub prefix: String,
    /// Counters are summed and sent once per interval (a bare number is milliseconds).
    #[serde(rename = "flushIntervalInMs", with = "millis")]
    pub flush_interval: Duration,
}

impl Default for StatsdConfig {
    fn default() -> Self {
        StatsdConfig {
            host: "localhost:8125".to_owned(),
            prefix: "push".to_owned(),
            flush_interval: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default)]
pub struct PrometheusConfig {
    /// Address of the `/metrics` and `/healthz` listener (loopback unless told otherwise).
    pub listen: String,
    /// When set, `/metrics` needs `Authorization: Bearer <token>` (`/healthz` stays open).
    #[serde(deserialize_with = "non_empty")]
    pub token: Option<Secret>,
}

impl Default for PrometheusConfig {
    fn default() -> Self {
        PrometheusConfig {
            listen: "127.0.0.1:9091".to_owned(),
            token: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default)]
pub struct InvalidTokenConfig {
    #[serde(deserialize_with = "comma_list")]
    pub handlers: Vec<TokenHandler>,
    pub pg: PgConfig,
    pub batch: TokenBatchConfig,
}

impl Default for InvalidTokenConfig {
    fn default() -> Self {
        InvalidTokenConfig {
            handlers: vec![TokenHandler::Pg],
            pg: PgConfig::default(),
            batch: TokenBatchConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenHandler {
    Pg,
}

/// The seed's `invalidToken.pg` block.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default)]
pub struct PgConfig {
    pub user: String,
    #[serde(deserialize_with = "non_empty")]
    pub pass: Option<Secret>,
    pub host: String,
    pub database: String,
    pub port: u16,
    pub pool_size: usize,
    /// Connect timeout (a bare number is milliseconds).
    #[serde(with = "millis")]
    pub connection_timeout: Duration,
    /// The longest a statement may run or wait (for a lock, for an answer) before it fails
    /// and is retried; `0` = no limit (a bare number is milliseconds).
    #[serde(with = "millis")]
    pub statement_timeout: Duration,
}

impl Default for PgConfig {
    fn default() -> Self {
        PgConfig {
            user: "pusher_user".to_owned(),
            pass: None,
            host: "localhost".to_owned(),
            database: "push".to_owned(),
            port: 5432,
            pool_size: 20,
            connection_timeout: Duration::from_millis(100),
            statement_timeout: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default)]
pub struct TokenBatchConfig {
    /// Tokens per DELETE.
    pub size: usize,
    /// A partial batch waits at most this long (a bare number is milliseconds).
    #[serde(rename = "intervalMs", with = "millis")]
    pub interval: Duration,
}

impl Default for TokenBatchConfig {
    fn default() -> Self {
        TokenBatchConfig {
            size: 1000,
            interval: Duration::from_millis(250),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct SentryConfig {
    /// The DSN holds a key: a secret.
    #[serde(deserialize_with = "non_empty")]
    pub url: Option<Secret>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ApiConfig {
    /// `host:port` the API listens on (loopback unless told otherwise).
    pub listen: String,
    /// Who may call, by a name for each key: `keys: {game-backend: {app: game, key: ...}}`
    /// (`PUSHER_API_KEYS_<NAME>_KEY`). The app a request is for comes from its key.
    pub keys: BTreeMap<String, ApiKey>,
    /// Largest request body, in bytes.
    pub max_body_bytes: usize,
    /// Most notifications in one request (gorush's `core.max_notification`).
    pub max_notifications: usize,
    /// Most tokens over all notifications of one request (every token is one Kafka record).
    pub max_tokens: usize,
    /// Requests per second each key may make, per `pusher api` process.
    pub rate_per_second: u32,
    /// Requests a key may make at once above its rate.
    pub burst: u32,
    /// How long a request waits for Kafka to acknowledge its records before it is answered
    /// 503 (a bare number is seconds).
    #[serde(with = "secs")]
    pub produce_timeout: Duration,
    /// How long a `"sync": true` request waits for its verdicts (a bare number is seconds).
    #[serde(with = "secs")]
    pub sync_timeout: Duration,
    /// Most client connections open at once, per process; past it new ones wait to be
    /// accepted.
    pub max_connections: usize,
    /// How long a request body may take to arrive once its head has (a bare number is
    /// seconds); then 408 and the connection is closed.
    #[serde(with = "secs")]
    pub body_timeout: Duration,
    /// How long an answer's write may wait on a client that does not read it (a bare number is
    /// seconds); then the connection is closed.
    #[serde(with = "secs")]
    pub write_timeout: Duration,
    /// Bytes of Kafka records a process builds and waits on at once, over all requests
    /// (librdkafka holds a copy of each too); past it a request is 503 with Retry-After.
    pub max_in_flight_bytes: usize,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: "127.0.0.1:8088".to_owned(),
            keys: BTreeMap::new(),
            max_body_bytes: 1 << 20,
            max_notifications: 100,
            max_tokens: 10_000,
            rate_per_second: 1000,
            burst: 200,
            produce_timeout: Duration::from_secs(10),
            sync_timeout: Duration::from_secs(10),
            max_connections: 1000,
            body_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(30),
            max_in_flight_bytes: 256 << 20,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default)]
pub struct RouteConfig {
    /// The routers' consumer group.
    pub group: String,
    /// Address of the router's `/metrics` and `/healthz` (empty: none).
    pub listen: String,
    /// Deep links in GCM data are `<deeplinkBase>://<screen>` (Pushkin's base_deeplink_url);
    /// empty: the screen as given.
    pub deeplink_base: String,
    /// Most requests handled together (one registry round trip and one produce per batch).
    pub batch_size: usize,
    /// Event mode: the language whose localization a user without their own gets (Pushkin:
    /// English, 1).
    pub default_language: i32,
    /// Event mode: per app (`default` for the others), what reaches one device.
    pub limits: BTreeMap<String, DeviceLimitsConfig>,
}

impl Default for RouteConfig {
    fn default() -> Self {
        RouteConfig {
            group: "pusher-route".to_owned(),
            listen: "127.0.0.1:9101".to_owned(),
            deeplink_base: String::new(),
            batch_size: 500,
            default_language: 1,
            limits: BTreeMap::new(),
        }
    }
}

/// Per-device limits of event mode's notifications.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct DeviceLimitsConfig {
    /// At most this many notifications per device per `window` (0: no limit).
    pub per_device: u32,
    #[serde(with = "secs")]
    pub window: Duration,
    /// The same message to the same device at most once per this (0: off).
    #[serde(with = "secs")]
    pub dedup_window: Duration,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ResultsConfig {
    /// The result writers' consumer group.
    pub group: String,
    /// Address of the result writer's `/metrics` and `/healthz` (empty: none).
    pub listen: String,
    /// Most feedback records written together (one upsert per batch).
    pub batch_size: usize,
    /// Per app, a URL called (POST, JSON) once a notification has every verdict. A secret:
    /// the calls are not signed, so a token in the URL is how a hook knows its caller.
    pub webhooks: BTreeMap<String, Secret>,
}

impl Default for ResultsConfig {
    fn default() -> Self {
        ResultsConfig {
            group: "pusher-results".to_owned(),
            listen: "127.0.0.1:9102".to_owned(),
            batch_size: 1000,
            webhooks: BTreeMap::new(),
        }
    }
}

/// One API key and the app it may push for.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct ApiKey {
    pub app: String,
    #[serde(deserialize_with = "non_empty")]
    pub key: Option<Secret>,
}

/// A blank string is no value (`PUSHER_QUEUE_GROUP=` unsets the group, `pass: ""` is no
/// password).
fn non_empty<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: From<String>,
{
    let s: Option<String> = Option::deserialize(d)?;
    Ok(s.filter(|s| !s.trim().is_empty()).map(T::from))
}

/// Accepts `"a,b"` (the seed's and the environment's form) or a YAML list; each item is a `T`
/// (a string, or an enum by its name). A visitor, so that errors carry the key's path.
fn comma_list<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: DeserializeOwned,
{
    struct ListVisitor<T>(std::marker::PhantomData<T>);
    impl<'de, T: DeserializeOwned> de::Visitor<'de> for ListVisitor<T> {
        type Value = Vec<T>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a list, or a comma-separated string")
        }
        fn visit_str<E: de::Error>(self, s: &str) -> Result<Vec<T>, E> {
            split_list(s).iter().map(|item| parse_item(item)).collect()
        }
        fn visit_unit<E: de::Error>(self) -> Result<Vec<T>, E> {
            Ok(Vec::new())
        }
        fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            let mut items = Vec::new();
            while let Some(item) = seq.next_element::<String>()? {
                let item = item.trim();
                if !item.is_empty() {
                    items.push(parse_item(item)?);
                }
            }
            Ok(items)
        }
    }
    d.deserialize_any(ListVisitor(std::marker::PhantomData))
}

fn parse_item<T: DeserializeOwned, E: de::Error>(item: &str) -> Result<T, E> {
    T::deserialize(item.into_deserializer()).map_err(|e: de::value::Error| E::custom(e))
}

pub(super) fn split_list(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Durations as on the command line ("30s", "250ms", "5m"); a bare number, in YAML or as
/// text from the environment, keeps the unit the seed gave the key.
#[derive(Clone, Copy)]
enum Unit {
    Secs,
    Millis,
}

impl Unit {
    fn of(self, n: u64) -> Duration {
        match self {
            Unit::Secs => Duration::from_secs(n),
            Unit::Millis => Duration::from_millis(n),
        }
    }
    fn name(self) -> &'static str {
        match self {
            Unit::Secs => "seconds",
            Unit::Millis => "milliseconds",
        }
    }
}

fn deserialize_duration<'de, D: Deserializer<'de>>(d: D, unit: Unit) -> Result<Duration, D::Error> {
    struct DurationVisitor(Unit);
    impl de::Visitor<'_> for DurationVisitor {
        type Value = Duration;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(
                f,
                "a duration like \"30s\" or \"250ms\", or a number of {}",
                self.0.name()
            )
        }
        fn visit_u64<E: de::Error>(self, n: u64) -> Result<Duration, E> {
            Ok(self.0.of(n))
        }
        fn visit_i64<E: de::Error>(self, n: i64) -> Result<Duration, E> {
            u64::try_from(n)
                .map(|n| self.0.of(n))
                .map_err(|_| E::custom(format!("{n} is negative: not a duration")))
        }
        fn visit_str<E: de::Error>(self, s: &str) -> Result<Duration, E> {
            let s = s.trim();
            if let Ok(n) = s.parse::<u64>() {
                return Ok(self.0.of(n));
            }
            if let Ok(n) = s.parse::<i64>() {
                return self.visit_i64(n);
            }
            humantime::parse_duration(s).map_err(|e| {
                E::custom(format!(
                    "{s:?} is not a duration like \"30s\" or \"250ms\", or a number of {} ({e})",
                    self.0.name()
                ))
            })
        }
    }
    d.deserialize_any(DurationVisitor(unit))
}

fn serialize_duration<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&humantime::format_duration(*d).to_string())
}

/// A duration whose bare number is seconds.
mod secs {
    use super::*;
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        deserialize_duration(d, Unit::Secs)
    }
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        serialize_duration(d, s)
    }
}

/// A duration whose bare number is milliseconds.
mod millis {
    use super::*;
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        deserialize_duration(d, Unit::Millis)
    }
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        serialize_duration(d, s)
    }
}
