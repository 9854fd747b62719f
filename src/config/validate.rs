//! Validation: everything that can be checked before starting, each problem naming its key.
//! [`Config::validate`] returns a [`Validated`] config, the only kind `pusher run` takes.

use super::schema::{Config, FeedbackReporter, StatsReporter, TokenHandler};
use super::{invalid, ConfigError};
use std::collections::BTreeMap;
use std::path::Path;

/// The most messages `inFlight` may allow.
const MAX_IN_FLIGHT: usize = 1_000_000;
/// The most records one route or results batch may hold.
const MAX_BATCH_SIZE: usize = 100_000;
/// The longest per-device limit window and dedup window: 10 years, as a message's longest
/// cooldown. PostgreSQL's timestamps end in 294276 AD: past them every claim statement, and
/// with it the router's batch of every app, would fail for good.
const MAX_LIMIT_WINDOW: std::time::Duration = std::time::Duration::from_secs(10 * 365 * 24 * 3600);

/// A config that passed [`Config::validate`].
#[derive(Debug, Clone)]
pub struct Validated(Config);

impl std::ops::Deref for Validated {
    type Target = Config;
    fn deref(&self) -> &Config {
        &self.0
    }
}

impl Validated {
    pub fn into_inner(self) -> Config {
        self.0
    }
}

impl Config {
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

    /// Checks everything that can be checked before starting; the first problem is returned,
    /// naming its key.
    pub fn validate(self) -> Result<Validated, ConfigError> {
        self.check()?;
        Ok(Validated(self))
    }

    fn check(&self) -> Result<(), ConfigError> {
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
        if q.session_timeout.is_zero() {
            return Err(invalid("queue.sessionTimeout", "must be > 0"));
        }
        if self.in_flight == 0 {
            return Err(invalid("inFlight", "must be >= 1"));
        }
        // Its semaphore panics above usize::MAX >> 3; far below that, memory runs out.
        if self.in_flight > MAX_IN_FLIGHT {
            return Err(invalid("inFlight", format!("must be <= {MAX_IN_FLIGHT}")));
        }
        if self.graceful_shutdown_timeout.is_zero() {
            return Err(invalid("gracefulShutdownTimeout", "must be > 0"));
        }
        self.validate_apns()?;
        self.validate_gcm()?;
        self.validate_webpush()?;
        self.validate_outputs()?;
        self.validate_api()
    }

    fn validate_api(&self) -> Result<(), ConfigError> {
        let a = &self.api;
        a.listen.parse::<std::net::SocketAddr>().map_err(|_| {
            invalid(
                "api.listen",
                format!("{:?} is not an ip:port address", a.listen),
            )
        })?;
        for (key, value) in [
            ("api.maxBodyBytes", a.max_body_bytes),
            ("api.maxNotifications", a.max_notifications),
            ("api.maxTokens", a.max_tokens),
            ("api.ratePerSecond", a.rate_per_second as usize),
            ("api.burst", a.burst as usize),
            ("api.maxConnections", a.max_connections),
            ("api.maxInFlightBytes", a.max_in_flight_bytes),
        ] {
            if value == 0 {
                return Err(invalid(key, "must be >= 1"));
            }
        }
        if self.route.group.trim().is_empty() {
            return Err(invalid("route.group", "must not be empty"));
        }
        if self.results.group.trim().is_empty() {
            return Err(invalid("results.group", "must not be empty"));
        }
        // A batch's buffer is allocated at its full size.
        for (key, size) in [
            ("results.batchSize", self.results.batch_size),
            ("route.batchSize", self.route.batch_size),
        ] {
            if size == 0 {
                return Err(invalid(key, "must be >= 1"));
            }
            if size > MAX_BATCH_SIZE {
                return Err(invalid(key, format!("must be <= {MAX_BATCH_SIZE}")));
            }
        }
        for (app, l) in &self.route.limits {
            if app != "default" && !crate::push::app::is_valid_name(app) {
                return Err(invalid(
                    format!("route.limits.{app}"),
                    "an app name (A-Z a-z 0-9 _ -) or default",
                ));
            }
            if l.per_device > 0 && l.window.is_zero() {
                return Err(invalid(
                    format!("route.limits.{app}.window"),
                    "must be > 0 when perDevice is set",
                ));
            }
            for (key, window) in [("window", l.window), ("dedupWindow", l.dedup_window)] {
                if window > MAX_LIMIT_WINDOW {
                    return Err(invalid(
                        format!("route.limits.{app}.{key}"),
                        format!("must be <= {}s (10 years)", MAX_LIMIT_WINDOW.as_secs()),
                    ));
                }
            }
        }
        if a.produce_timeout.is_zero() {
            return Err(invalid("api.produceTimeout", "must be > 0"));
        }
        if a.body_timeout.is_zero() {
            return Err(invalid("api.bodyTimeout", "must be > 0"));
        }
        if a.write_timeout.is_zero() {
            return Err(invalid("api.writeTimeout", "must be > 0"));
        }
        let mut seen = std::collections::HashSet::new();
        for (name, key) in &a.keys {
            check_app_name(&format!("api.keys.{name}.app"), &key.app)?;
            let secret = key
                .key
                .as_ref()
                .ok_or_else(|| invalid(format!("api.keys.{name}.key"), "required"))?;
            check_header_token(&format!("api.keys.{name}.key"), secret.expose())?;
            if secret.expose().len() < 16 {
                return Err(invalid(
                    format!("api.keys.{name}.key"),
                    "at least 16 characters (a guessable key is no key)",
                ));
            }
            if !seen.insert(secret.expose()) {
                return Err(invalid(
                    format!("api.keys.{name}.key"),
                    "the same key as another name: each caller needs its own",
                ));
            }
        }
        Ok(())
    }

    fn validate_apns(&self) -> Result<(), ConfigError> {
        let a = &self.apns;
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
            let cert = app_entry(&a.certs, app).ok_or_else(|| {
                invalid(&key, "missing: every app in apns.apps needs credentials")
            })?;
            // Token auth won and the certificate was dropped without a word.
            if cert.auth_key_path.is_some() && cert.certificate.is_some() {
                return Err(invalid(
                    format!("{key}.authKeyPath"),
                    format!(
                        "set beside {key}.certificate: give token auth (authKeyPath) or a \
                         client certificate, not both"
                    ),
                ));
            }
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
                if let Some(path) = &cert.certificate_key {
                    check_file(&format!("{key}.certificateKey"), path)?;
                }
            } else {
                return Err(invalid(
                    key,
                    "needs authKeyPath (+ keyID, teamID) or certificate",
                ));
            }
            // APNs needs apns-topic with token auth; a certificate connection without one
            // gets the certificate's own topic (protocols.md §1.3), as the sender and the
            // fake do.
            let topic = cert.topic.as_deref();
            if cert.auth_key_path.is_some() && topic.is_none_or(str::is_empty) {
                return Err(invalid(
                    format!("{key}.topic"),
                    "required with authKeyPath (the app's bundle id)",
                ));
            }
            if topic.is_some_and(str::is_empty) {
                return Err(invalid(format!("{key}.topic"), "must not be empty"));
            }
        }
        if let Some(url) = &a.endpoint {
            check_url("apns.endpoint", url)?;
        }
        Ok(())
    }

    fn validate_gcm(&self) -> Result<(), ConfigError> {
        let g = &self.gcm;
        for app in &g.apps {
            let key = format!("gcm.certs.{app}");
            check_app_name(&key, app)?;
            if app_entry(&g.firebase_credentials, app).is_some_and(|c| !c.is_empty()) {
                continue;
            }
            let cert = app_entry(&g.certs, app).ok_or_else(|| {
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

    fn validate_webpush(&self) -> Result<(), ConfigError> {
        let w = &self.webpush;
        for app in &w.apps {
            let key = format!("webpush.vapid.{app}");
            check_app_name(&key, app)?;
            let vapid = app_entry(&w.vapid, app).ok_or_else(|| {
                invalid(&key, "missing: every app in webpush.apps needs privateKey or privateKeyFile, and subject")
            })?;
            match (&vapid.private_key, &vapid.private_key_file) {
                (Some(_), None) => {}
                (None, Some(path)) => check_file(&format!("{key}.privateKeyFile"), path)?,
                _ => {
                    return Err(invalid(
                        key,
                        "needs exactly one of privateKey and privateKeyFile",
                    ))
                }
            }
            let subject = vapid.subject.as_deref().unwrap_or_default();
            if !crate::push::webpush::valid_subject(subject) {
                return Err(invalid(
                    format!("{key}.subject"),
                    "required: a mailto: address (mailto:ops@example.com) or an https: URL (RFC 8292)",
                ));
            }
        }
        if w.max_origins == 0 {
            return Err(invalid("webpush.maxOrigins", "must be at least 1"));
        }
        if w.connections_per_origin == 0 {
            return Err(invalid(
                "webpush.connectionsPerOrigin",
                "must be at least 1",
            ));
        }
        Ok(())
    }

    fn validate_outputs(&self) -> Result<(), ConfigError> {
        let f = &self.feedback;
        if f.reporters.contains(&FeedbackReporter::Kafka) {
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
        if s.reporters.contains(&StatsReporter::Statsd) {
            check_host_port("stats.statsd.host", &s.statsd.host)?;
            if s.statsd.flush_interval.is_zero() {
                return Err(invalid("stats.statsd.flushIntervalInMs", "must be > 0"));
            }
        }
        // Served whenever it is set (`/healthz` too), whatever `reporters` lists.
        if !s.prometheus.listen.is_empty() {
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
        if let Some(token) = &s.prometheus.token {
            check_header_token("stats.prometheus.token", token.expose())?;
        }
        for (key, listen) in [
            ("route.listen", &self.route.listen),
            ("results.listen", &self.results.listen),
        ] {
            if !listen.is_empty() && listen.parse::<std::net::SocketAddr>().is_err() {
                return Err(invalid(
                    key,
                    format!("{listen:?} is not an ip:port address"),
                ));
            }
        }
        let t = &self.invalid_token;
        // Not echoed: a URL here may hold a password (it was logged whole, with -d).
        let host = t.pg.host.trim();
        if host.contains("://") || host.contains(['@', '=']) || host.contains(char::is_whitespace) {
            return Err(invalid(
                "invalidToken.pg.host",
                "a host name or address, not a URL or connection string: give the user, \
                 password and database in their own keys (invalidToken.pg.user, .pass, .database)",
            ));
        }
        if t.handlers.contains(&TokenHandler::Pg) {
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
            if t.batch.interval.is_zero() {
                return Err(invalid("invalidToken.batch.intervalMs", "must be > 0"));
            }
            if t.pg.connection_timeout.is_zero() {
                return Err(invalid("invalidToken.pg.connectionTimeout", "must be > 0"));
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

/// An app's entry in a per-app map (`apns.certs`, `webpush.vapid`, ...): keys match
/// case-insensitively, as environment names make them lower case (`PUSHER_WEBPUSH_APPS=MyGame`
/// with `PUSHER_WEBPUSH_VAPID_MYGAME_PRIVATEKEY`). Validation and start-up both look here, so
/// what validates starts.
pub fn app_entry<'a, T>(map: &'a BTreeMap<String, T>, app: &str) -> Option<&'a T> {
    map.get(app).or_else(|| {
        map.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(app))
            .map(|(_, v)| v)
    })
}

fn check_app_name(key: &str, app: &str) -> Result<(), ConfigError> {
    if crate::push::app::is_valid_name(app) {
        Ok(())
    } else {
        Err(invalid(
            key,
            format!("app name {app:?} may hold only letters, digits, '_' and '-'"),
        ))
    }
}

/// A key a caller presents in `Authorization: Bearer ...`: what is presented is trimmed and
/// read only when it is visible ASCII (spaces inside allowed), so a key with surrounding
/// whitespace (a Kubernetes Secret's trailing newline) or any other character could never
/// match: every request 401, nothing logged. The value is never printed.
fn check_header_token(key: &str, token: &str) -> Result<(), ConfigError> {
    if token.trim() != token {
        return Err(invalid(
            key,
            "starts or ends with whitespace (a trailing newline?): no request could present it",
        ));
    }
    if !token.bytes().all(|b| b == b' ' || b.is_ascii_graphic()) {
        return Err(invalid(
            key,
            "holds a character that is not visible ASCII: no request could present it",
        ));
    }
    Ok(())
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
