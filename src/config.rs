//! Configuration: built-in defaults < YAML file < PUSHER_* environment < CLI overrides,
//! validated before anything starts (DESIGN.md §7).
//!
//! The tree and the environment names are the seed system's (anchors §1.11): viper's rule of
//! `PUSHER_` + the dotted key upper-cased with `.` -> `_` (`queue.brokers` ->
//! `PUSHER_QUEUE_BROKERS`). Keys are matched case-insensitively as viper did. Per-app keys use
//! the app name in the middle: `PUSHER_APNS_CERTS_<APP>_AUTHKEYPATH`. Lists come from the
//! environment as comma-separated strings (`PUSHER_APNS_APPS="a,b"`).
//!
//! Layering works on the YAML value tree: the file is parsed into a tree, each override is
//! written into it at its key with the type that key needs, and the tree is deserialized once
//! (missing keys take the built-in defaults). Secrets are [`Secret`]s: their `Debug` prints
//! `<redacted>`, so `{:?}` of a whole config is safe to log.

use serde::de::{self, Deserializer};
use serde::Deserialize;
use serde_yaml_ng::{Mapping, Value};
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The prefix of every environment override.
pub const ENV_PREFIX: &str = "PUSHER_";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: String, message: String },
    /// An environment variable or CLI override that cannot be used.
    #[error("{name}: {problem}")]
    Override { name: String, problem: String },
    /// A value that parsed but makes no sense; `key` is the dotted config key.
    #[error("{key}: {problem}")]
    Invalid { key: String, problem: String },
}

fn invalid(key: impl Into<String>, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        problem: problem.into(),
    }
}

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

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Config {
    pub queue: QueueConfig,
    pub apns: ApnsConfig,
    pub gcm: GcmConfig,
    pub feedback: FeedbackConfig,
    pub stats: StatsConfig,
    pub invalid_token: InvalidTokenConfig,
    /// Seconds to finish in-flight work after SIGTERM/SIGINT.
    pub graceful_shutdown_timeout: u64,
    /// Most messages in flight (consumed, not yet finished) at once, over all partitions.
    pub in_flight: usize,
    pub sentry: SentryConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            queue: QueueConfig::default(),
            apns: ApnsConfig::default(),
            gcm: GcmConfig::default(),
            feedback: FeedbackConfig::default(),
            stats: StatsConfig::default(),
            invalid_token: InvalidTokenConfig::default(),
            graceful_shutdown_timeout: 30,
            in_flight: 1000,
            sentry: SentryConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
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
    /// Consumer `session.timeout.ms`.
    pub session_timeout: u64,
    /// `auto.offset.reset`: earliest or latest.
    pub offset_reset_strategy: String,
    /// On shutdown, wait for in-flight messages (up to the graceful timeout).
    pub handle_all_messages_before_exiting: bool,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            topics: vec!["^push-[^-_]+_(apns|gcm)".to_owned()],
            brokers: "localhost:9092".to_owned(),
            group: None,
            session_timeout: 6000,
            offset_reset_strategy: "latest".to_owned(),
            handle_all_messages_before_exiting: true,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ApnsConfig {
    #[serde(deserialize_with = "comma_list")]
    pub apps: Vec<String>,
    /// Per-app credentials, keyed by app name.
    pub certs: BTreeMap<String, ApnsCert>,
    pub concurrent_workers: usize,
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
            concurrent_workers: 300,
            connection_pool_size: 1,
            retry: RetryConfig::default(),
            endpoint: None,
        }
    }
}

/// One app's APNs credentials: token auth (`authKeyPath` + `keyID` + `teamID`) or a client
/// certificate (`certificate` = PKCS#12 or PEM path, with its `password`).
#[derive(Debug, Clone, Default, Deserialize)]
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
    pub password: Option<Secret>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct RetryConfig {
    /// Base back-off, e.g. "1s" or "250ms".
    #[serde(deserialize_with = "duration")]
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

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct GcmConfig {
    #[serde(deserialize_with = "comma_list")]
    pub apps: Vec<String>,
    pub certs: BTreeMap<String, GcmCert>,
    /// The seed's key: a service-account JSON document per app (a secret).
    pub firebase_credentials: BTreeMap<String, Secret>,
    /// Most sends in flight per app.
    pub max_pending_messages: usize,
    pub concurrent_workers: usize,
    /// A custom FCM base URL (a fake server); Google's when absent.
    pub endpoint: Option<String>,
}

impl Default for GcmConfig {
    fn default() -> Self {
        GcmConfig {
            apps: Vec::new(),
            certs: BTreeMap::new(),
            firebase_credentials: BTreeMap::new(),
            max_pending_messages: 100,
            concurrent_workers: 10,
            endpoint: None,
        }
    }
}

/// One app's FCM credentials: a service-account file (HTTP v1) or a legacy `apiKey`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct GcmCert {
    #[serde(rename = "serviceAccountFile")]
    pub service_account_file: Option<PathBuf>,
    /// Overrides the `project_id` of the service account.
    #[serde(rename = "projectID", alias = "projectId")]
    pub project_id: Option<String>,
    #[serde(rename = "apiKey")]
    pub api_key: Option<Secret>,
    #[serde(rename = "senderID", alias = "senderId")]
    pub sender_id: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct FeedbackConfig {
    /// `kafka` or nothing.
    #[serde(deserialize_with = "comma_list")]
    pub reporters: Vec<String>,
    pub kafka: FeedbackKafkaConfig,
    /// Also report successes (the seed did before v4).
    pub include_success: bool,
}

impl Default for FeedbackConfig {
    fn default() -> Self {
        FeedbackConfig {
            reporters: vec!["kafka".to_owned()],
            kafka: FeedbackKafkaConfig::default(),
            include_success: false,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
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
            topics: vec![crate::pipeline::feedback::DEFAULT_TOPIC_TEMPLATE.to_owned()],
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
            .unwrap_or(crate::pipeline::feedback::DEFAULT_TOPIC_TEMPLATE)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct StatsConfig {
    /// `statsd` and/or `prometheus`.
    #[serde(deserialize_with = "comma_list")]
    pub reporters: Vec<String>,
    pub statsd: StatsdConfig,
    pub prometheus: PrometheusConfig,
}

impl Default for StatsConfig {
    fn default() -> Self {
        StatsConfig {
            reporters: vec!["statsd".to_owned()],
            statsd: StatsdConfig::default(),
            prometheus: PrometheusConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct StatsdConfig {
    /// `host:port` of the StatsD agent (UDP).
    pub host: String,
    pub prefix: String,
    pub flush_interval_in_ms: u64,
}

impl Default for StatsdConfig {
    fn default() -> Self {
        StatsdConfig {
            host: "localhost:8125".to_owned(),
            prefix: "push".to_owned(),
            flush_interval_in_ms: 5000,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct PrometheusConfig {
    /// Address of the `/metrics` and `/healthz` listener (loopback unless told otherwise).
    pub listen: String,
    /// When set, `/metrics` needs `Authorization: Bearer <token>` (`/healthz` stays open).
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

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct InvalidTokenConfig {
    /// `pg` or nothing.
    #[serde(deserialize_with = "comma_list")]
    pub handlers: Vec<String>,
    pub pg: PgConfig,
    pub batch: TokenBatchConfig,
}

impl Default for InvalidTokenConfig {
    fn default() -> Self {
        InvalidTokenConfig {
            handlers: vec!["pg".to_owned()],
            pg: PgConfig::default(),
            batch: TokenBatchConfig::default(),
        }
    }
}

/// The seed's `invalidToken.pg` block.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct PgConfig {
    pub user: String,
    pub pass: Option<Secret>,
    pub host: String,
    pub database: String,
    pub port: u16,
    pub pool_size: usize,
    pub max_retries: u32,
    /// Connect timeout, milliseconds.
    #[serde(rename = "connectionTimeout")]
    pub connection_timeout_ms: u64,
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
            max_retries: 3,
            connection_timeout_ms: 100,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct TokenBatchConfig {
    /// Tokens per DELETE.
    pub size: usize,
    /// A partial batch waits at most this long.
    pub interval_ms: u64,
}

impl Default for TokenBatchConfig {
    fn default() -> Self {
        TokenBatchConfig {
            size: 1000,
            interval_ms: 250,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct SentryConfig {
    /// The DSN holds a key: a secret.
    pub url: Option<Secret>,
}

/// An empty string is no value (`PUSHER_QUEUE_GROUP=` unsets the group).
fn non_empty<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let s: Option<String> = Option::deserialize(d)?;
    Ok(s.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()))
}

/// Accepts `"a,b"` (the seed's and the environment's form) or a YAML list.
fn comma_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        One(String),
        Many(Vec<String>),
    }
    Ok(match Either::deserialize(d)? {
        Either::One(s) => split_list(&s),
        Either::Many(v) => v
            .into_iter()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect(),
    })
}

fn split_list(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Accepts "1s" / "250ms" (humantime) or a number of milliseconds. A visitor rather than an
/// untagged enum, so that errors carry the key's full path.
fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    struct DurationVisitor;
    impl de::Visitor<'_> for DurationVisitor {
        type Value = Duration;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a duration like \"1s\" or \"250ms\", or milliseconds")
        }
        fn visit_u64<E: de::Error>(self, ms: u64) -> Result<Duration, E> {
            Ok(Duration::from_millis(ms))
        }
        fn visit_str<E: de::Error>(self, s: &str) -> Result<Duration, E> {
            humantime::parse_duration(s.trim()).map_err(|e| {
                E::custom(format!(
                    "{s:?} is not a duration like \"1s\" or \"250ms\": {e}"
                ))
            })
        }
    }
    d.deserialize_any(DurationVisitor)
}

/// What type an override's text becomes in the tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Text,
    List,
    Number,
    Bool,
}

/// Every fixed key that can be overridden, as (dotted key, kind). The environment name is
/// derived from the key (viper's rule).
const KEYS: &[(&str, Kind)] = &[
    ("queue.topics", Kind::List),
    ("queue.brokers", Kind::Text),
    ("queue.group", Kind::Text),
    ("queue.sessionTimeout", Kind::Number),
    ("queue.offsetResetStrategy", Kind::Text),
    ("queue.handleAllMessagesBeforeExiting", Kind::Bool),
    ("apns.apps", Kind::List),
    ("apns.concurrentWorkers", Kind::Number),
    ("apns.connectionPoolSize", Kind::Number),
    ("apns.retry.interval", Kind::Text),
    ("apns.retry.maxRetryAttempts", Kind::Number),
    ("apns.endpoint", Kind::Text),
    ("gcm.apps", Kind::List),
    ("gcm.maxPendingMessages", Kind::Number),
    ("gcm.concurrentWorkers", Kind::Number),
    ("gcm.endpoint", Kind::Text),
    ("feedback.reporters", Kind::List),
    ("feedback.kafka.topics", Kind::List),
    ("feedback.kafka.brokers", Kind::Text),
    ("feedback.includeSuccess", Kind::Bool),
    ("stats.reporters", Kind::List),
    ("stats.statsd.host", Kind::Text),
    ("stats.statsd.prefix", Kind::Text),
    ("stats.statsd.flushIntervalInMs", Kind::Number),
    ("stats.prometheus.listen", Kind::Text),
    ("stats.prometheus.token", Kind::Text),
    ("invalidToken.handlers", Kind::List),
    ("invalidToken.pg.user", Kind::Text),
    ("invalidToken.pg.pass", Kind::Text),
    ("invalidToken.pg.host", Kind::Text),
    ("invalidToken.pg.database", Kind::Text),
    ("invalidToken.pg.port", Kind::Number),
    ("invalidToken.pg.poolSize", Kind::Number),
    ("invalidToken.pg.maxRetries", Kind::Number),
    ("invalidToken.pg.connectionTimeout", Kind::Number),
    ("invalidToken.batch.size", Kind::Number),
    ("invalidToken.batch.intervalMs", Kind::Number),
    ("gracefulShutdownTimeout", Kind::Number),
    ("inFlight", Kind::Number),
    ("sentry.url", Kind::Text),
];

/// Per-app keys: (section prefix, field names). `PUSHER_APNS_CERTS_<APP>_<FIELD>`.
const APNS_CERT_FIELDS: &[&str] = &[
    "authKeyPath",
    "keyID",
    "teamID",
    "topic",
    "certificate",
    "password",
];
const GCM_CERT_FIELDS: &[&str] = &["serviceAccountFile", "projectID", "apiKey", "senderID"];

/// Environment names the seed spelled differently from its key.
const ENV_ALIASES: &[(&str, &str)] =
    &[("PUSHER_GRACEFULLSHUTDOWNTIMEOUT", "gracefulShutdownTimeout")];

fn env_name(key: &str) -> String {
    format!("{ENV_PREFIX}{}", key.replace('.', "_").to_ascii_uppercase())
}

/// Maps an environment name to (dotted key path segments, kind), or `None` when it is not a
/// config key (other PUSHER_* variables, such as PUSHER_LOG, are left alone).
fn key_for_env(name: &str) -> Option<(Vec<String>, Kind)> {
    let upper = name.to_ascii_uppercase();
    if let Some((_, key)) = ENV_ALIASES.iter().find(|(env, _)| *env == upper) {
        return lookup_key(key);
    }
    if let Some((key, kind)) = KEYS.iter().find(|(key, _)| env_name(key) == upper) {
        return Some((key.split('.').map(str::to_owned).collect(), *kind));
    }
    let rest = upper.strip_prefix(ENV_PREFIX)?;
    for (section, fields) in [
        ("APNS_CERTS_", APNS_CERT_FIELDS),
        ("GCM_CERTS_", GCM_CERT_FIELDS),
    ] {
        if let Some(app_and_field) = rest.strip_prefix(section) {
            // The app name may hold '_': the field is matched from the end.
            for field in fields {
                let suffix = format!("_{}", field.to_ascii_uppercase());
                if let Some(app) = app_and_field
                    .strip_suffix(&suffix)
                    .filter(|a| !a.is_empty())
                {
                    let platform = if section.starts_with("APNS") {
                        "apns"
                    } else {
                        "gcm"
                    };
                    let path = vec![
                        platform.to_owned(),
                        "certs".to_owned(),
                        app.to_ascii_lowercase(),
                        (*field).to_owned(),
                    ];
                    return Some((path, Kind::Text));
                }
            }
        }
    }
    if let Some(app) = rest
        .strip_prefix("GCM_FIREBASECREDENTIALS_")
        .filter(|a| !a.is_empty())
    {
        let path = vec![
            "gcm".to_owned(),
            "firebaseCredentials".to_owned(),
            app.to_ascii_lowercase(),
        ];
        return Some((path, Kind::Text));
    }
    None
}

/// Maps a dotted key (any case) to its path and kind, for CLI overrides.
fn lookup_key(key: &str) -> Option<(Vec<String>, Kind)> {
    if let Some((k, kind)) = KEYS.iter().find(|(k, _)| k.eq_ignore_ascii_case(key)) {
        return Some((k.split('.').map(str::to_owned).collect(), *kind));
    }
    let parts: Vec<&str> = key.split('.').collect();
    match parts.as_slice() {
        [platform, certs, app, field] if certs.eq_ignore_ascii_case("certs") => {
            let fields = match platform.to_ascii_lowercase().as_str() {
                "apns" => APNS_CERT_FIELDS,
                "gcm" => GCM_CERT_FIELDS,
                _ => return None,
            };
            let field = fields.iter().find(|f| f.eq_ignore_ascii_case(field))?;
            Some((
                vec![
                    platform.to_ascii_lowercase(),
                    "certs".to_owned(),
                    (*app).to_owned(),
                    (*field).to_owned(),
                ],
                Kind::Text,
            ))
        }
        [gcm, creds, app]
            if gcm.eq_ignore_ascii_case("gcm")
                && creds.eq_ignore_ascii_case("firebaseCredentials") =>
        {
            Some((
                vec![
                    "gcm".to_owned(),
                    "firebaseCredentials".to_owned(),
                    (*app).to_owned(),
                ],
                Kind::Text,
            ))
        }
        _ => None,
    }
}

/// Turns an override's text into a typed tree value; `name` is what the error names.
fn typed_value(name: &str, raw: &str, kind: Kind) -> Result<Value, ConfigError> {
    let bad = |problem: String| ConfigError::Override {
        name: name.to_owned(),
        problem,
    };
    Ok(match kind {
        Kind::Text => Value::String(raw.to_owned()),
        Kind::List => Value::Sequence(split_list(raw).into_iter().map(Value::String).collect()),
        Kind::Number => {
            let n: u64 = raw
                .trim()
                .parse()
                .map_err(|_| bad(format!("expected a whole number >= 0, got {raw:?}")))?;
            Value::Number(n.into())
        }
        Kind::Bool => match raw.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Value::Bool(true),
            "false" | "0" | "no" | "off" => Value::Bool(false),
            _ => return Err(bad(format!("expected true or false, got {raw:?}"))),
        },
    })
}

/// Writes `value` at `path`, creating mappings on the way and reusing existing keys that match
/// case-insensitively (viper's keys are case-insensitive).
fn set_path(
    root: &mut Value,
    path: &[String],
    value: Value,
    name: &str,
) -> Result<(), ConfigError> {
    let mut node = root;
    for (i, segment) in path.iter().enumerate() {
        if node.is_null() {
            *node = Value::Mapping(Mapping::new());
        }
        let Value::Mapping(map) = node else {
            return Err(ConfigError::Override {
                name: name.to_owned(),
                problem: format!(
                    "{} in the config file is not a mapping",
                    path[..i].join(".")
                ),
            });
        };
        let existing = map
            .keys()
            .find(|k| k.as_str().is_some_and(|k| k.eq_ignore_ascii_case(segment)))
            .cloned();
        let key = existing.unwrap_or_else(|| Value::String(segment.clone()));
        if i + 1 == path.len() {
            map.insert(key, value);
            return Ok(());
        }
        node = map.entry(key).or_insert(Value::Null);
    }
    Ok(())
}

impl Config {
    /// Defaults < the YAML file at `path` < `PUSHER_*` variables from `env`.
    pub fn load(
        path: &Path,
        env: impl Iterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        Self::load_with(Some(path), env, &[])
    }

    /// The full layering. `path` `None` skips the file; `overrides` are CLI `(dotted key, value)`
    /// pairs, applied last.
    pub fn load_with(
        path: Option<&Path>,
        env: impl Iterator<Item = (String, String)>,
        overrides: &[(String, String)],
    ) -> Result<Config, ConfigError> {
        match path {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                Self::load_yaml(&text, &path.display().to_string(), env, overrides)
            }
            None => Self::layer(Value::Null, "(defaults)".to_owned(), env, overrides),
        }
    }

    /// The layering over YAML text already read; `source` names it in errors. (The fuzz
    /// harness drives the loader through here.)
    pub fn load_yaml(
        text: &str,
        source: &str,
        env: impl Iterator<Item = (String, String)>,
        overrides: &[(String, String)],
    ) -> Result<Config, ConfigError> {
        let tree: Value = serde_yaml_ng::from_str(text).map_err(|e| ConfigError::Parse {
            path: source.to_owned(),
            message: e.to_string(),
        })?;
        Self::layer(tree, source.to_owned(), env, overrides)
    }

    fn layer(
        mut tree: Value,
        source: String,
        env: impl Iterator<Item = (String, String)>,
        overrides: &[(String, String)],
    ) -> Result<Config, ConfigError> {
        // Sorted so a failure is the same one every run.
        let mut env: Vec<(String, String)> = env
            .filter(|(k, _)| k.to_ascii_uppercase().starts_with(ENV_PREFIX))
            .collect();
        env.sort();
        for (name, raw) in &env {
            if let Some((key_path, kind)) = key_for_env(name) {
                let value = typed_value(name, raw, kind)?;
                set_path(&mut tree, &key_path, value, name)?;
            }
        }
        for (key, raw) in overrides {
            let (key_path, kind) = lookup_key(key).ok_or_else(|| ConfigError::Override {
                name: key.clone(),
                problem: "no such config key".to_owned(),
            })?;
            let value = typed_value(key, raw, kind)?;
            set_path(&mut tree, &key_path, value, key)?;
        }
        if tree.is_null() {
            return Ok(Config::default());
        }
        // Deserialize from text so serde_yaml_ng's errors name the dotted key at fault.
        let text = serde_yaml_ng::to_string(&tree).map_err(|e| ConfigError::Parse {
            path: source.clone(),
            message: e.to_string(),
        })?;
        serde_yaml_ng::from_str(&text).map_err(|e| ConfigError::Parse {
            path: source,
            message: strip_location(&e.to_string()),
        })
    }

    /// The consumer group of `platform`'s pusher: `queue.group` when set, else
    /// `pusher-<platform>`.
    pub fn group(&self, platform: crate::push::Platform) -> String {
        self.queue
            .group
            .clone()
            .unwrap_or_else(|| format!("pusher-{platform}"))
    }

    /// `queue.topics` narrowed to `platform`'s topics, plus each app's own topics: a pusher
    /// never subscribes to the other platform's. A topic that cannot be narrowed (an explicit
    /// topic of the other platform, a regex that matches both) is an error naming it.
    pub fn topics(
        &self,
        platform: crate::push::Platform,
        apps: &[String],
    ) -> Result<Vec<String>, ConfigError> {
        use crate::push::topic;
        let mut topics = Vec::new();
        for (i, pattern) in self.queue.topics.iter().enumerate() {
            let narrowed = topic::for_platform(pattern, platform)
                .map_err(|e| invalid(format!("queue.topics[{i}]"), e.to_string()))?;
            topics.push(narrowed);
        }
        for app in apps {
            topics.extend(topic::app_topics(app, platform));
        }
        topics.sort();
        topics.dedup();
        Ok(topics)
    }

    /// The environment names this build understands for the fixed keys (for docs and tests).
    pub fn env_names() -> Vec<String> {
        let mut names: Vec<String> = KEYS.iter().map(|(k, _)| env_name(k)).collect();
        names.extend(ENV_ALIASES.iter().map(|(env, _)| (*env).to_owned()));
        names
    }

    /// Checks everything that can be checked before starting; the first problem is returned,
    /// naming its key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let q = &self.queue;
        if q.brokers.trim().is_empty() {
            return Err(invalid("queue.brokers", "must not be empty"));
        }
        if q.topics.is_empty() {
            return Err(invalid("queue.topics", "must not be empty"));
        }
        for (i, topic) in q.topics.iter().enumerate() {
            if topic.starts_with('^') {
                regex::Regex::new(topic).map_err(|e| {
                    invalid(format!("queue.topics[{i}]"), format!("invalid regex: {e}"))
                })?;
            }
        }
        if q.session_timeout == 0 {
            return Err(invalid(
                "queue.sessionTimeout",
                "must be > 0 (milliseconds)",
            ));
        }
        const RESETS: &[&str] = &[
            "earliest",
            "latest",
            "smallest",
            "largest",
            "beginning",
            "end",
            "error",
        ];
        if !RESETS.contains(&q.offset_reset_strategy.as_str()) {
            return Err(invalid(
                "queue.offsetResetStrategy",
                format!(
                    "{:?} is not one of {}",
                    q.offset_reset_strategy,
                    RESETS.join(", ")
                ),
            ));
        }
        if self.in_flight == 0 {
            return Err(invalid("inFlight", "must be >= 1"));
        }
        if self.graceful_shutdown_timeout == 0 {
            return Err(invalid("gracefulShutdownTimeout", "must be >= 1 (seconds)"));
        }
        self.validate_apns()?;
        self.validate_gcm()?;
        self.validate_outputs()
    }

    fn validate_apns(&self) -> Result<(), ConfigError> {
        let a = &self.apns;
        if a.concurrent_workers == 0 {
            return Err(invalid("apns.concurrentWorkers", "must be >= 1"));
        }
        if a.connection_pool_size == 0 {
            return Err(invalid("apns.connectionPoolSize", "must be >= 1"));
        }
        if a.retry.max_retry_attempts == 0 {
            return Err(invalid(
                "apns.retry.maxRetryAttempts",
                "must be >= 1 (it counts the first send)",
            ));
        }
        for app in &a.apps {
            let key = format!("apns.certs.{app}");
            check_app_name(&key, app)?;
            let cert = find_app(&a.certs, app).ok_or_else(|| {
                invalid(&key, "missing: every app in apns.apps needs credentials")
            })?;
            if let Some(path) = &cert.auth_key_path {
                check_file(&format!("{key}.authKeyPath"), path)?;
                if cert.key_id.as_deref().is_none_or(str::is_empty) {
                    return Err(invalid(format!("{key}.keyID"), "required with authKeyPath"));
                }
                if cert.team_id.as_deref().is_none_or(str::is_empty) {
                    return Err(invalid(
                        format!("{key}.teamID"),
                        "required with authKeyPath",
                    ));
                }
            } else if let Some(path) = &cert.certificate {
                check_file(&format!("{key}.certificate"), path)?;
            } else {
                return Err(invalid(
                    key,
                    "needs authKeyPath (+ keyID, teamID) or certificate",
                ));
            }
            if cert.topic.as_deref().is_none_or(str::is_empty) {
                return Err(invalid(
                    format!("{key}.topic"),
                    "required (the app's bundle id)",
                ));
            }
        }
        if let Some(url) = &a.endpoint {
            check_url("apns.endpoint", url)?;
        }
        Ok(())
    }

    fn validate_gcm(&self) -> Result<(), ConfigError> {
        let g = &self.gcm;
        if g.max_pending_messages == 0 {
            return Err(invalid("gcm.maxPendingMessages", "must be >= 1"));
        }
        if g.concurrent_workers == 0 {
            return Err(invalid("gcm.concurrentWorkers", "must be >= 1"));
        }
        for app in &g.apps {
            let key = format!("gcm.certs.{app}");
            check_app_name(&key, app)?;
            if find_app(&g.firebase_credentials, app).is_some_and(|c| !c.is_empty()) {
                continue;
            }
            let cert = find_app(&g.certs, app).ok_or_else(|| {
                invalid(&key, "missing: every app in gcm.apps needs serviceAccountFile, apiKey or gcm.firebaseCredentials")
            })?;
            if let Some(path) = &cert.service_account_file {
                check_file(&format!("{key}.serviceAccountFile"), path)?;
            } else if cert.api_key.as_ref().is_none_or(|k| k.is_empty()) {
                // The legacy API authenticates with the key alone; senderID is the seed's,
                // accepted and unused.
                return Err(invalid(key, "needs serviceAccountFile or apiKey"));
            }
        }
        if let Some(url) = &g.endpoint {
            check_url("gcm.endpoint", url)?;
        }
        Ok(())
    }

    fn validate_outputs(&self) -> Result<(), ConfigError> {
        let f = &self.feedback;
        check_names("feedback.reporters", &f.reporters, &["kafka"])?;
        if f.reporters.iter().any(|r| r == "kafka") {
            if f.kafka.brokers.trim().is_empty() {
                return Err(invalid("feedback.kafka.brokers", "must not be empty"));
            }
            if f.kafka.topics.len() != 1 {
                return Err(invalid(
                    "feedback.kafka.topics",
                    "exactly one topic template, e.g. push-{app}-{platform}-feedbacks",
                ));
            }
        }
        let s = &self.stats;
        check_names("stats.reporters", &s.reporters, &["statsd", "prometheus"])?;
        if s.reporters.iter().any(|r| r == "statsd") {
            check_host_port("stats.statsd.host", &s.statsd.host)?;
            if s.statsd.flush_interval_in_ms == 0 {
                return Err(invalid("stats.statsd.flushIntervalInMs", "must be >= 1"));
            }
        }
        if s.reporters.iter().any(|r| r == "prometheus") {
            s.prometheus
                .listen
                .parse::<std::net::SocketAddr>()
                .map_err(|_| {
                    invalid(
                        "stats.prometheus.listen",
                        format!("{:?} is not an ip:port address", s.prometheus.listen),
                    )
                })?;
        }
        let t = &self.invalid_token;
        check_names("invalidToken.handlers", &t.handlers, &["pg"])?;
        if t.handlers.iter().any(|h| h == "pg") {
            if t.pg.host.trim().is_empty() {
                return Err(invalid("invalidToken.pg.host", "must not be empty"));
            }
            if t.pg.port == 0 {
                return Err(invalid("invalidToken.pg.port", "must be 1-65535"));
            }
            if t.pg.pool_size == 0 {
                return Err(invalid("invalidToken.pg.poolSize", "must be >= 1"));
            }
            if t.pg.database.trim().is_empty() {
                return Err(invalid("invalidToken.pg.database", "must not be empty"));
            }
            if t.batch.size == 0 {
                return Err(invalid("invalidToken.batch.size", "must be >= 1"));
            }
            if t.batch.interval_ms == 0 {
                return Err(invalid("invalidToken.batch.intervalMs", "must be >= 1"));
            }
        }
        if let Some(url) = &self.sentry.url {
            // Never echo the DSN: it carries a key.
            let dsn = url.expose();
            if !(dsn.is_empty() || dsn.starts_with("https://") || dsn.starts_with("http://")) {
                return Err(invalid("sentry.url", "must be an http(s):// DSN"));
            }
        }
        Ok(())
    }
}

/// Finds an app's entry; keys match case-insensitively (env-created keys are lower case).
fn find_app<'a, T>(map: &'a BTreeMap<String, T>, app: &str) -> Option<&'a T> {
    map.get(app).or_else(|| {
        map.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(app))
            .map(|(_, v)| v)
    })
}

fn check_app_name(key: &str, app: &str) -> Result<(), ConfigError> {
    crate::pipeline::tokens::table_name(app, crate::push::Platform::Apns)
        .map(|_| ())
        .map_err(|_| {
            invalid(
                key,
                format!("app name {app:?} may hold only letters, digits, '_' and '-'"),
            )
        })
}

fn check_file(key: &str, path: &Path) -> Result<(), ConfigError> {
    if path.is_file() {
        Ok(())
    } else {
        Err(invalid(key, format!("file not found: {}", path.display())))
    }
}

fn check_url(key: &str, url: &str) -> Result<(), ConfigError> {
    match url.parse::<http::Uri>() {
        Ok(uri) if uri.scheme().is_some() && uri.host().is_some() => Ok(()),
        _ => Err(invalid(key, format!("{url:?} is not an absolute URL"))),
    }
}

fn check_host_port(key: &str, value: &str) -> Result<(), ConfigError> {
    match value.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0) => {
            Ok(())
        }
        _ => Err(invalid(key, format!("{value:?} is not host:port"))),
    }
}

fn check_names(key: &str, names: &[String], allowed: &[&str]) -> Result<(), ConfigError> {
    match names.iter().find(|n| !allowed.contains(&n.as_str())) {
        Some(bad) => Err(invalid(
            key,
            format!("unknown {bad:?} (allowed: {})", allowed.join(", ")),
        )),
        None => Ok(()),
    }
}

/// serde_yaml_ng appends " at line L column C" of the re-serialized tree: meaningless to a user.
fn strip_location(message: &str) -> String {
    match message.find(" at line ") {
        Some(i) => message[..i].to_owned(),
        None => message.to_owned(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::io::Write;

    fn env(pairs: &[(&str, &str)]) -> impl Iterator<Item = (String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect::<Vec<_>>()
            .into_iter()
    }

    fn yaml_file(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f
    }

    #[test]
    fn defaults_validate() {
        let c = Config::load_with(None, env(&[]), &[]).unwrap();
        assert_eq!(c.queue.brokers, "localhost:9092");
        assert_eq!(
            c.feedback.kafka.topic_template(),
            "push-{app}-{platform}-feedbacks"
        );
        c.validate().unwrap();
    }

    #[test]
    fn shipped_default_yaml_loads_and_validates() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/default.yaml");
        let c = Config::load(&path, env(&[])).unwrap();
        c.validate().unwrap();
    }

    #[test]
    fn precedence_defaults_file_env_cli() {
        let f =
            yaml_file("queue:\n  brokers: file:1\n  group: file-group\n  sessionTimeout: 7000\n");
        let c = Config::load_with(
            Some(f.path()),
            env(&[
                ("PUSHER_QUEUE_GROUP", "env-group"),
                ("PUSHER_QUEUE_SESSIONTIMEOUT", "8000"),
            ]),
            &[("queue.sessionTimeout".to_owned(), "9000".to_owned())],
        )
        .unwrap();
        assert_eq!(c.queue.brokers, "file:1", "file beats default");
        assert_eq!(
            c.queue.group.as_deref(),
            Some("env-group"),
            "env beats file"
        );
        assert_eq!(c.queue.session_timeout, 9000, "CLI beats env");
        assert_eq!(c.queue.offset_reset_strategy, "latest", "default kept");
    }

    #[test]
    fn every_fixed_env_name_lands_on_its_key() {
        for (key, kind) in KEYS {
            let name = env_name(key);
            let raw = match kind {
                Kind::Text => "x",
                Kind::List => "a,b",
                Kind::Number => "7",
                Kind::Bool => "true",
            };
            let (path, k) = key_for_env(&name).unwrap_or_else(|| panic!("{name} not recognised"));
            assert_eq!(path.join("."), *key);
            assert_eq!(k, *kind);
            let mut tree = Value::Null;
            set_path(
                &mut tree,
                &path,
                typed_value(&name, raw, *kind).unwrap(),
                &name,
            )
            .unwrap();
            let mut node = &tree;
            for p in &path {
                node = &node[p.as_str()];
            }
            assert!(!node.is_null(), "{name} was not written at {key}");
        }
        assert_eq!(
            key_for_env("PUSHER_GRACEFULLSHUTDOWNTIMEOUT").unwrap().0,
            vec!["gracefulShutdownTimeout"]
        );
        assert!(
            key_for_env("PUSHER_LOG").is_none(),
            "non-config PUSHER_ vars are left alone"
        );
    }

    #[test]
    fn env_values_reach_the_config() {
        let c = Config::load_with(
            None,
            env(&[
                ("PUSHER_QUEUE_TOPICS", "push-a_apns, push-b_gcm"),
                ("PUSHER_QUEUE_BROKERS", "k1:9092,k2:9092"),
                ("PUSHER_QUEUE_HANDLEALLMESSAGESBEFOREEXITING", "false"),
                ("PUSHER_APNS_APPS", "game,my_app"),
                ("PUSHER_APNS_CERTS_MY_APP_AUTHKEYPATH", "/keys/k.p8"),
                ("PUSHER_APNS_CERTS_MY_APP_KEYID", "ABC"),
                ("PUSHER_APNS_CERTS_GAME_PASSWORD", "hunter2"),
                ("PUSHER_GCM_APPS", "g1"),
                ("PUSHER_GCM_CERTS_G1_APIKEY", "AIzaSecret"),
                ("PUSHER_GCM_CERTS_G1_SENDERID", "123"),
                (
                    "PUSHER_GCM_FIREBASECREDENTIALS_G1",
                    "{\"private_key\":\"x\"}",
                ),
                ("PUSHER_GCM_MAXPENDINGMESSAGES", "50"),
                ("PUSHER_FEEDBACK_REPORTERS", ""),
                ("PUSHER_FEEDBACK_KAFKA_TOPICS", "fb-{app}-{platform}"),
                ("PUSHER_FEEDBACK_KAFKA_BROKERS", "fb:9092"),
                ("PUSHER_STATS_REPORTERS", "statsd,prometheus"),
                ("PUSHER_STATS_STATSD_HOST", "stats:8125"),
                ("PUSHER_STATS_STATSD_PREFIX", "p."),
                ("PUSHER_STATS_STATSD_FLUSHINTERVALINMS", "100"),
                ("PUSHER_INVALIDTOKEN_HANDLERS", "pg"),
                ("PUSHER_INVALIDTOKEN_PG_USER", "u"),
                ("PUSHER_INVALIDTOKEN_PG_PASS", "pgsecret"),
                ("PUSHER_INVALIDTOKEN_PG_HOST", "db"),
                ("PUSHER_INVALIDTOKEN_PG_DATABASE", "tokens"),
                ("PUSHER_INVALIDTOKEN_PG_PORT", "6543"),
                ("PUSHER_INVALIDTOKEN_PG_POOLSIZE", "4"),
                ("PUSHER_INVALIDTOKEN_PG_MAXRETRIES", "9"),
                ("PUSHER_INVALIDTOKEN_PG_CONNECTIONTIMEOUT", "250"),
                ("PUSHER_GRACEFULLSHUTDOWNTIMEOUT", "12"),
                ("PUSHER_APNS_CONCURRENTWORKERS", "20"),
                ("PUSHER_SENTRY_URL", "https://key@sentry.example/1"),
            ]),
            &[],
        )
        .unwrap();
        assert_eq!(c.queue.topics, ["push-a_apns", "push-b_gcm"]);
        assert_eq!(c.queue.brokers, "k1:9092,k2:9092");
        assert!(!c.queue.handle_all_messages_before_exiting);
        assert_eq!(c.apns.apps, ["game", "my_app"]);
        assert_eq!(
            c.apns.certs["my_app"].auth_key_path.as_deref(),
            Some(Path::new("/keys/k.p8"))
        );
        assert_eq!(c.apns.certs["my_app"].key_id.as_deref(), Some("ABC"));
        assert_eq!(
            c.apns.certs["game"].password.as_ref().unwrap().expose(),
            "hunter2"
        );
        assert_eq!(c.gcm.apps, ["g1"]);
        assert_eq!(
            c.gcm.certs["g1"].api_key.as_ref().unwrap().expose(),
            "AIzaSecret"
        );
        assert_eq!(c.gcm.certs["g1"].sender_id.as_deref(), Some("123"));
        assert!(c.gcm.firebase_credentials["g1"]
            .expose()
            .contains("private_key"));
        assert_eq!(c.gcm.max_pending_messages, 50);
        assert!(c.feedback.reporters.is_empty());
        assert_eq!(c.feedback.kafka.topic_template(), "fb-{app}-{platform}");
        assert_eq!(c.feedback.kafka.brokers, "fb:9092");
        assert_eq!(c.stats.reporters, ["statsd", "prometheus"]);
        assert_eq!(c.stats.statsd.host, "stats:8125");
        assert_eq!(c.stats.statsd.prefix, "p.");
        assert_eq!(c.stats.statsd.flush_interval_in_ms, 100);
        let pg = &c.invalid_token.pg;
        assert_eq!(
            (pg.user.as_str(), pg.host.as_str(), pg.database.as_str()),
            ("u", "db", "tokens")
        );
        assert_eq!(pg.pass.as_ref().unwrap().expose(), "pgsecret");
        assert_eq!(
            (
                pg.port,
                pg.pool_size,
                pg.max_retries,
                pg.connection_timeout_ms
            ),
            (6543, 4, 9, 250)
        );
        assert_eq!(c.graceful_shutdown_timeout, 12);
        assert_eq!(c.apns.concurrent_workers, 20);
        assert_eq!(
            c.sentry.url.as_ref().unwrap().expose(),
            "https://key@sentry.example/1"
        );
    }

    #[test]
    fn env_cert_keys_merge_with_file_keys_case_insensitively() {
        let f = yaml_file(
            "apns:\n  apps: Game\n  certs:\n    Game:\n      keyID: FILE\n      topic: com.x\n",
        );
        let c = Config::load(f.path(), env(&[("PUSHER_APNS_CERTS_GAME_KEYID", "ENV")])).unwrap();
        assert_eq!(c.apns.apps, ["Game"], "a comma string in YAML is a list");
        assert_eq!(c.apns.certs["Game"].key_id.as_deref(), Some("ENV"));
        assert_eq!(c.apns.certs["Game"].topic.as_deref(), Some("com.x"));
    }

    #[test]
    fn bad_values_name_the_key() {
        let err = |pairs: &[(&str, &str)]| {
            Config::load_with(None, env(pairs), &[])
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            err(&[("PUSHER_QUEUE_SESSIONTIMEOUT", "soon")]),
            "PUSHER_QUEUE_SESSIONTIMEOUT: expected a whole number >= 0, got \"soon\""
        );
        assert!(err(&[("PUSHER_FEEDBACK_INCLUDESUCCESS", "maybe")])
            .starts_with("PUSHER_FEEDBACK_INCLUDESUCCESS: expected true or false"));
        let e = err(&[("PUSHER_INVALIDTOKEN_PG_PORT", "70000")]);
        assert!(e.contains("invalidToken.pg.port"), "{e}");

        let f = yaml_file("queue:\n  sessionTimeout: [1]\n");
        let e = Config::load(f.path(), env(&[])).unwrap_err().to_string();
        assert!(e.contains("queue.sessionTimeout"), "{e}");
        let f = yaml_file("apns:\n  retry:\n    interval: soonish\n");
        let e = Config::load(f.path(), env(&[])).unwrap_err().to_string();
        assert!(
            e.contains("apns.retry.interval") && e.contains("soonish"),
            "{e}"
        );
        let f = yaml_file("queue: [\n");
        assert!(matches!(
            Config::load(f.path(), env(&[])),
            Err(ConfigError::Parse { .. })
        ));
        assert!(matches!(
            Config::load(Path::new("/nonexistent/pusher.yaml"), env(&[])),
            Err(ConfigError::Read { .. })
        ));
        let e = Config::load_with(None, env(&[]), &[("queue.nope".to_owned(), "1".to_owned())])
            .unwrap_err();
        assert_eq!(e.to_string(), "queue.nope: no such config key");
    }

    #[test]
    fn validate_names_the_key() {
        let check = |pairs: &[(&str, &str)]| {
            Config::load_with(None, env(pairs), &[])
                .unwrap()
                .validate()
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            check(&[("PUSHER_QUEUE_BROKERS", " ")]),
            "queue.brokers: must not be empty"
        );
        assert!(check(&[("PUSHER_QUEUE_TOPICS", "^push-(")])
            .starts_with("queue.topics[0]: invalid regex"));
        assert!(check(&[("PUSHER_QUEUE_OFFSETRESETSTRATEGY", "sideways")])
            .starts_with("queue.offsetResetStrategy:"));
        assert_eq!(
            check(&[("PUSHER_APNS_APPS", "game")]),
            "apns.certs.game: missing: every app in apns.apps needs credentials"
        );
        assert_eq!(
            check(&[
                ("PUSHER_APNS_APPS", "game"),
                ("PUSHER_APNS_CERTS_GAME_AUTHKEYPATH", "/nonexistent/k.p8")
            ]),
            "apns.certs.game.authKeyPath: file not found: /nonexistent/k.p8"
        );
        let key = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/apns/AuthKey_TESTKEY001.p8");
        let key = key.to_str().unwrap();
        assert_eq!(
            check(&[
                ("PUSHER_APNS_APPS", "game"),
                ("PUSHER_APNS_CERTS_GAME_AUTHKEYPATH", key)
            ]),
            "apns.certs.game.keyID: required with authKeyPath"
        );
        assert_eq!(
            check(&[
                ("PUSHER_APNS_APPS", "game"),
                ("PUSHER_APNS_CERTS_GAME_AUTHKEYPATH", key),
                ("PUSHER_APNS_CERTS_GAME_KEYID", "TESTKEY001"),
                ("PUSHER_APNS_CERTS_GAME_TEAMID", "TEAM")
            ]),
            "apns.certs.game.topic: required (the app's bundle id)"
        );
        assert!(check(&[("PUSHER_APNS_APPS", "a;drop")]).starts_with("apns.certs.a;drop: app name"));
        assert_eq!(
            check(&[("PUSHER_GCM_APPS", "g")]),
            "gcm.certs.g: missing: every app in gcm.apps needs serviceAccountFile, apiKey or gcm.firebaseCredentials"
        );
        assert!(check(&[("PUSHER_STATS_REPORTERS", "graphite")])
            .starts_with("stats.reporters: unknown \"graphite\""));
        assert!(check(&[("PUSHER_STATS_STATSD_HOST", "nohost")]).starts_with("stats.statsd.host:"));
        assert_eq!(
            check(&[("PUSHER_INVALIDTOKEN_PG_POOLSIZE", "0")]),
            "invalidToken.pg.poolSize: must be >= 1"
        );
        assert_eq!(
            check(&[("PUSHER_FEEDBACK_KAFKA_BROKERS", "")]),
            "feedback.kafka.brokers: must not be empty"
        );
        assert_eq!(
            check(&[("PUSHER_SENTRY_URL", "key@nowhere")]),
            "sentry.url: must be an http(s):// DSN"
        );

        // A complete, valid multi-app setup.
        Config::load_with(
            None,
            env(&[
                ("PUSHER_APNS_APPS", "game,other"),
                ("PUSHER_APNS_CERTS_GAME_AUTHKEYPATH", key),
                ("PUSHER_APNS_CERTS_GAME_KEYID", "TESTKEY001"),
                ("PUSHER_APNS_CERTS_GAME_TEAMID", "TEAM"),
                ("PUSHER_APNS_CERTS_GAME_TOPIC", "com.example.game"),
                ("PUSHER_APNS_CERTS_OTHER_CERTIFICATE", key),
                ("PUSHER_APNS_CERTS_OTHER_TOPIC", "com.example.other"),
                ("PUSHER_GCM_APPS", "game"),
                ("PUSHER_GCM_FIREBASECREDENTIALS_GAME", "{}"),
            ]),
            &[],
        )
        .unwrap()
        .validate()
        .unwrap();
    }

    #[test]
    fn debug_print_shows_no_secret() {
        let c = Config::load_with(
            None,
            env(&[
                ("PUSHER_APNS_CERTS_GAME_PASSWORD", "apns-p12-password"),
                ("PUSHER_GCM_CERTS_GAME_APIKEY", "AIzaSyLEGACYKEY"),
                (
                    "PUSHER_GCM_FIREBASECREDENTIALS_GAME",
                    "-----BEGIN PRIVATE KEY-----MIIE",
                ),
                ("PUSHER_INVALIDTOKEN_PG_PASS", "pg-password-123"),
                ("PUSHER_SENTRY_URL", "https://sentrykey456@sentry.example/1"),
            ]),
            &[],
        )
        .unwrap();
        let printed = format!("{c:?} {c:#?}");
        for secret in [
            "apns-p12-password",
            "AIzaSyLEGACYKEY",
            "PRIVATE KEY",
            "pg-password-123",
            "sentrykey456",
        ] {
            assert!(!printed.contains(secret), "{secret} leaked in Debug");
        }
        assert!(printed.contains("<redacted>"));
    }
}
