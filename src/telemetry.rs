//! Logging (tracing) set-up, metric names and exporters (Prometheus, StatsD), and Sentry.

use crate::config::Secret;
use sentry::integrations::tracing::ErrorLayer;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer;

/// Logs go to stderr so stdout stays clean for JSON output (`send`, `mock`, `gen`). Errors
/// logged also go to Sentry once [`init_sentry`] has set it up (until then the layer is idle).
pub fn init(debug: bool, json: bool) {
    let filter = log_filter(std::env::var("PUSHER_LOG").ok().as_deref(), debug);
    // Colours only for a person at a terminal (and not with NO_COLOR): a log file or a
    // collector would get escape codes.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let text = (!json).then(|| {
        tracing_subscriber::fmt::layer()
            .with_ansi(ansi)
            .with_writer(crate::progress::LogWriter)
    });
    let json = json.then(|| {
        tracing_subscriber::fmt::layer()
            .event_format(JsonLines)
            .with_writer(crate::progress::LogWriter)
    });
    // A second init (tests) is harmless: keep the first subscriber.
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(text)
        .with(json)
        .with(ErrorLayer::new().with_filter(LevelFilter::ERROR))
        .try_init();
}

/// An error and its causes on one line, each said once: an error whose message already holds
/// its source's (`config file x: No such file or directory (os error 2)`) would otherwise say
/// the OS cause twice, and one that leaves it to its source (tokio_postgres' "error connecting
/// to server") would say nothing of what went wrong.
pub fn with_causes(err: &(dyn std::error::Error + 'static)) -> String {
    let mut line = err.to_string();
    let mut next = err.source();
    while let Some(cause) = next {
        let text = cause.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        next = cause.source();
    }
    line
}

/// tokio_postgres logs every statement's parameters at debug, a browser subscription's `auth`
/// secret among them (`-d` printed it): its statements' target stays at info unless the
/// filter names tokio_postgres.
const STATEMENT_PARAMETERS: &str = "tokio_postgres::query=info";

/// The log filter: `PUSHER_LOG` (a tracing-subscriber filter) when set and valid, else info,
/// or debug with `-d`.
fn log_filter(spec: Option<&str>, debug: bool) -> EnvFilter {
    let default = if debug { "debug" } else { "info" };
    let quiet = |spec: &str| {
        if spec.contains("tokio_postgres") {
            spec.to_owned()
        } else {
            format!("{spec},{STATEMENT_PARAMETERS}")
        }
    };
    spec.filter(|s| !s.trim().is_empty())
        .and_then(|s| EnvFilter::try_new(quiet(s)).ok())
        .unwrap_or_else(|| EnvFilter::new(quiet(default)))
}

/// A value logged as compact JSON (`topics = %Json(&topics)`): text logs show the JSON, and
/// `-j` logs keep it as nested JSON instead of a string.
pub struct Json<'a, T: serde::Serialize>(pub &'a T);

impl<T: serde::Serialize> std::fmt::Display for Json<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = serde_json::to_string(self.0).map_err(|_| std::fmt::Error)?;
        f.write_str(&text)
    }
}

/// `-j` log lines: tracing-subscriber's JSON shape (`timestamp`, `level`, `target`,
/// `fields`), with numbers and booleans as such and a field holding a JSON object or array
/// (see [`Json`]) nested, not quoted. (tracing-subscriber's own JSON layer writes every
/// non-primitive field as a string; nesting needs its unstable `valuable` support.)
struct JsonLines;

impl<S, N> tracing_subscriber::fmt::FormatEvent<S, N> for JsonLines
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        use tracing_subscriber::fmt::time::FormatTime;
        let mut timestamp = String::new();
        tracing_subscriber::fmt::time::SystemTime.format_time(
            &mut tracing_subscriber::fmt::format::Writer::new(&mut timestamp),
        )?;
        let mut fields = JsonFields(serde_json::Map::new());
        event.record(&mut fields);
        let meta = event.metadata();
        let line = serde_json::json!({
            "timestamp": timestamp,
            "level": meta.level().as_str(),
            "fields": fields.0,
            "target": meta.target(),
        });
        writeln!(writer, "{line}")
    }
}

struct JsonFields(serde_json::Map<String, serde_json::Value>);

impl JsonFields {
    fn text(&mut self, field: &tracing::field::Field, text: String) {
        let nested = (text.starts_with('{') || text.starts_with('['))
            .then(|| serde_json::from_str::<serde_json::Value>(&text).ok())
            .flatten();
        let value = nested.unwrap_or(serde_json::Value::String(text));
        self.0.insert(field.name().to_string(), value);
    }
}

impl tracing::field::Visit for JsonFields {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.text(field, format!("{value:?}"));
    }
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.text(field, value.to_string());
    }
    fn record_i64(&mut self, field: &tracing::field::Field, value: i64) {
        self.0.insert(field.name().to_string(), value.into());
    }
    fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
        self.0.insert(field.name().to_string(), value.into());
    }
    fn record_f64(&mut self, field: &tracing::field::Field, value: f64) {
        self.0.insert(field.name().to_string(), value.into());
    }
    fn record_bool(&mut self, field: &tracing::field::Field, value: bool) {
        self.0.insert(field.name().to_string(), value.into());
    }
}

/// Starts reporting to Sentry when `dsn` is set and not empty: events logged at error level,
/// panics, and what [`report_error`] is given. Keep the guard until exit: dropping it sends
/// what is still queued (2 s at most). The DSN's key is never logged.
pub fn init_sentry(
    dsn: Option<&Secret>,
) -> Result<Option<sentry::ClientInitGuard>, TelemetryError> {
    let Some(dsn) = dsn.filter(|d| !d.is_empty()) else {
        return Ok(None);
    };
    // The parse error names what is wrong, never the DSN itself.
    let dsn: sentry::types::Dsn = dsn
        .expose()
        .parse()
        .map_err(|e| TelemetryError::Sentry(format!("sentry.url: not a Sentry DSN: {e}")))?;
    let host = dsn.host().to_string();
    let mut options = sentry::ClientOptions::default();
    options.dsn = Some(dsn);
    options.release = sentry::release_name!();
    let guard = sentry::init(options);
    tracing::info!(host, "Reporting errors to Sentry.");
    Ok(Some(guard))
}

/// Sends one error to Sentry (a no-op when Sentry is not set up).
pub fn report_error(message: &str) {
    sentry::capture_message(message, sentry::Level::Error);
}

/// What `/healthz` reports: each component's problem, if it has one (an endpoint failing,
/// the brokers unreachable). Process-wide, as the endpoint it serves.
pub mod health {
    use parking_lot::Mutex;
    use std::collections::BTreeMap;

    static PROBLEMS: Mutex<BTreeMap<String, String>> = Mutex::new(BTreeMap::new());

    /// Records `component`'s problem, or that it has none.
    pub fn set(component: &str, problem: Option<String>) {
        let mut problems = PROBLEMS.lock();
        match problem {
            Some(p) => {
                problems.insert(component.to_string(), p);
            }
            None => {
                problems.remove(component);
            }
        }
    }

    /// The problems now, by component (empty: healthy).
    pub fn problems() -> BTreeMap<String, String> {
        PROBLEMS.lock().clone()
    }
}

/// Metric names, in one place (Prometheus; StatsD uses the seed's short names below).
pub mod names {
    /// Final outcomes, labelled platform, game, outcome, reason.
    pub const OUTCOMES: &str = "pusher_outcomes_total";
    /// Time in the sender per message (all attempts), seconds; labelled platform.
    pub const SEND_LATENCY: &str = "pusher_send_latency_seconds";
    /// Messages consumed and not yet finished.
    pub const IN_FLIGHT: &str = "pusher_in_flight";
    /// Messages consumed from Kafka, labelled platform.
    pub const CONSUMED: &str = "pusher_consumed_total";
    /// Messages behind the high watermark, summed over assigned partitions.
    pub const CONSUMER_LAG: &str = "pusher_consumer_lag";
    /// `pusher api` requests, labelled route and status.
    pub const API_REQUESTS: &str = "pusher_api_requests_total";
    /// `pusher api` request latency, seconds; labelled route.
    pub const API_LATENCY: &str = "pusher_api_request_seconds";
    /// Messages `pusher api` wrote to the push topics, labelled app and platform.
    pub const API_ACCEPTED: &str = "pusher_api_accepted_total";
    /// `pusher route`: records handled, labelled what (login, notification, push, ...).
    pub const ROUTED: &str = "pusher_route_total";
    /// `pusher results`: result rows written.
    pub const RESULTS: &str = "pusher_results_stored_total";
    /// Webhook calls of `pusher results`, labelled result (ok, failed).
    pub const WEBHOOKS: &str = "pusher_webhooks_total";
    /// Invalid-token deletion per table, labelled platform, game and result: `success` (rows
    /// deleted), `nonexistent` (tokens without a row), `error` (failed DELETE statements),
    /// `dropped` (tokens given up).
    pub const TOKENS_DELETE: &str = "pusher_tokens_delete_total";
    /// The seed's StatsD counters.
    pub const STATSD_SENT: &str = "sent";
    pub const STATSD_ACK: &str = "ack";
    pub const STATSD_FAILED: &str = "failed";
    /// The seed's StatsD timer: time in the sender per message, ms.
    pub const STATSD_LATENCY: &str = "send_notification_latency";
    /// The seed listener's deletion counters (tags platform, game); `dropped` is ours.
    pub const STATSD_TOKENS_DELETE_SUCCESS: &str = "tokens_delete_success";
    pub const STATSD_TOKENS_DELETE_NONEXISTENT: &str = "tokens_delete_nonexistent";
    pub const STATSD_TOKENS_DELETE_ERROR: &str = "tokens_delete_error";
    pub const STATSD_TOKENS_DELETE_DROPPED: &str = "tokens_delete_dropped";
}

/// Installs the Prometheus recorder (once per process) and serves `/metrics` and `/healthz`
/// on `listen` from the current tokio runtime. Returns the address bound (port 0 allowed).
/// With a `token`, `/metrics` needs `Authorization: Bearer <token>`; `/healthz` stays open
/// (liveness probes carry no credentials, and it tells nothing).
pub async fn serve_prometheus(
    key: &'static str,
    listen: std::net::SocketAddr,
    token: Option<crate::config::Secret>,
) -> Result<std::net::SocketAddr, TelemetryError> {
    use http_body_util::Full;
    use hyper::{body::Bytes, Response};

    let handle = prometheus()?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| TelemetryError::Bind {
            key,
            addr: listen,
            source,
        })?;
    let addr = listener
        .local_addr()
        .map_err(|source| TelemetryError::Bind {
            key,
            addr: listen,
            source,
        })?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                // Out of file descriptors and the like: back off instead of spinning.
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            };
            let handle = handle.clone();
            let token = token.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let handle = handle.clone();
                        let allowed = token
                            .as_ref()
                            .is_none_or(|t| bearer_matches(req.headers(), t.expose()));
                        async move {
                            let (status, body) = match req.uri().path() {
                                "/metrics" if !allowed => (401, "token required\n".to_string()),
                                "/metrics" => (200, handle.render()),
                                "/healthz" => healthz(),
                                _ => (404, "not found\n".to_string()),
                            };
                            let mut response = Response::new(Full::new(Bytes::from(body)));
                            *response.status_mut() =
                                hyper::StatusCode::from_u16(status).unwrap_or_default();
                            Ok::<_, std::convert::Infallible>(response)
                        }
                    },
                );
                let io = hyper_util::rt::TokioIo::new(stream);
                // A head that takes longer than 10 s (slow-loris) closes the connection.
                let _ = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(std::time::Duration::from_secs(10))
                    .serve_connection(io, service)
                    .await;
            });
        }
    });
    tracing::info!(%addr, key, "Serving /metrics and /healthz.");
    Ok(addr)
}

/// The Prometheus recorder of this process, installed on first use (every server of the
/// process renders the same one).
pub fn prometheus() -> Result<metrics_exporter_prometheus::PrometheusHandle, TelemetryError> {
    use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
    static HANDLE: parking_lot::Mutex<Option<PrometheusHandle>> = parking_lot::Mutex::new(None);
    let mut slot = HANDLE.lock();
    if let Some(handle) = slot.as_ref() {
        return Ok(handle.clone());
    }
    let handle = PrometheusBuilder::new()
        .set_buckets(&[
            0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ])
        .map_err(|e| TelemetryError::Prometheus(e.to_string()))?
        .install_recorder()
        .map_err(|e| TelemetryError::Prometheus(e.to_string()))?;
    spawn_upkeep(handle.clone())?;
    *slot = Some(handle.clone());
    Ok(handle)
}

/// How often the recorder's histogram samples are folded into their buckets.
const UPKEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Folds the histogram samples into their buckets every [`UPKEEP_EVERY`]. The exporter keeps
/// every sample until then (`install_recorder` spawns no upkeep): without it, a pusher whose
/// `/metrics` nobody scrapes grew by ~22 bytes a message (13 MB per 600k), without bound. A
/// thread, not a task: the recorder outlives any one runtime of the process.
fn spawn_upkeep(
    handle: metrics_exporter_prometheus::PrometheusHandle,
) -> Result<(), TelemetryError> {
    std::thread::Builder::new()
        .name("metrics-upkeep".into())
        .spawn(move || loop {
            std::thread::sleep(UPKEEP_EVERY);
            handle.run_upkeep();
        })
        .map(drop)
        .map_err(|e| TelemetryError::Prometheus(format!("cannot start the upkeep thread: {e}")))
}

/// `/healthz`: 200 `ok`, or 503 with what is wrong as JSON (`{"status":"unhealthy",
/// "problems":{"endpoint apns game":"connect_error: ..."}}`).
pub fn healthz() -> (u16, String) {
    let problems = health::problems();
    if problems.is_empty() {
        return (200, "ok\n".to_string());
    }
    let body = serde_json::json!({"status": "unhealthy", "problems": problems});
    (503, format!("{body}\n"))
}

/// True when `headers` carry `Authorization: Bearer <token>` (scheme in any case), compared
/// in constant time. Used by the admin endpoints (`/metrics`, the fakes' `/stats`).
pub fn bearer_matches(headers: &http::HeaderMap, token: &str) -> bool {
    use subtle::ConstantTimeEq;
    let Some(value) = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let Some((scheme, given)) = value.split_once(' ') else {
        return false;
    };
    scheme.eq_ignore_ascii_case("bearer")
        && bool::from(given.trim().as_bytes().ct_eq(token.as_bytes()))
}

/// A StatsD client sending over UDP without blocking the caller.
pub fn statsd(host: &str, prefix: &str) -> Result<cadence::StatsdClient, TelemetryError> {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0")
        .map_err(|e| TelemetryError::Statsd(e.to_string()))?;
    socket
        .set_nonblocking(true)
        .map_err(|e| TelemetryError::Statsd(e.to_string()))?;
    let sink = cadence::BufferedUdpMetricSink::from(host, socket)
        .map_err(|e| TelemetryError::Statsd(format!("{host}: {e}")))?;
    let queued = cadence::QueuingMetricSink::from(sink);
    Ok(cadence::StatsdClient::builder(prefix, queued)
        .with_error_handler(|e| tracing::debug!(error = %e, "StatsD send failed."))
        .build())
}

/// StatsD as the seed's agent saw it, without a UDP line per message: counters are summed and
/// sent once per flush interval (`push.sent:2000|c`, not 2,000 lines of `push.sent:1|c`), and
/// each timer sends at most [`StatsdBatch::TIMINGS`] samples an interval, with the sample
/// rate that lets the agent scale its counts back (`|@0.05`).
pub struct StatsdBatch {
    client: cadence::StatsdClient,
    pending: parking_lot::Mutex<Pending>,
}

/// Tags of one series, in order.
type Tags = Vec<(&'static str, String)>;

#[derive(Default)]
struct Pending {
    counters: std::collections::HashMap<(&'static str, Tags), u64>,
    /// Per series: how many were seen, and a uniform sample of them (reservoir sampling).
    timings: std::collections::HashMap<(&'static str, Tags), (u64, Vec<u64>)>,
}

/// A tag value as a StatsD line can carry it. cadence writes values as given, and a value
/// holds text from outside (a push service's reason): `|`, `,` and `#` end the value early
/// and a line break starts a metric line of the sender's choosing, so each becomes `_`.
fn clean(mut tags: Tags) -> Tags {
    let bad = |c: char| matches!(c, '|' | ',' | '#') || c.is_control();
    for (_, value) in &mut tags {
        if value.contains(bad) {
            *value = value.replace(bad, "_");
        }
    }
    tags
}

impl StatsdBatch {
    /// Timer samples sent per series and interval, at most.
    pub const TIMINGS: usize = 100;

    pub fn new(client: cadence::StatsdClient) -> StatsdBatch {
        StatsdBatch {
            client,
            pending: Default::default(),
        }
    }

    fn pending(&self) -> parking_lot::MutexGuard<'_, Pending> {
        self.pending.lock()
    }

    pub fn count(&self, name: &'static str, tags: Tags) {
        self.add(name, tags, 1);
    }

    /// Adds `n` to a counter.
    pub fn add(&self, name: &'static str, tags: Tags, n: u64) {
        *self
            .pending()
            .counters
            .entry((name, clean(tags)))
            .or_default() += n;
    }

    pub fn time(&self, name: &'static str, tags: Tags, ms: u64) {
        use rand::Rng;
        let mut pending = self.pending();
        let (seen, sample) = pending.timings.entry((name, clean(tags))).or_default();
        *seen += 1;
        if sample.len() < Self::TIMINGS {
            sample.push(ms);
        } else {
            let slot = rand::rng().random_range(0..*seen) as usize;
            if slot < Self::TIMINGS {
                sample[slot] = ms;
            }
        }
    }

    /// Sends what was gathered since the last flush.
    pub fn flush(&self) {
        use cadence::prelude::*;
        let Pending { counters, timings } = std::mem::take(&mut *self.pending());
        for ((name, tags), n) in counters {
            let mut m = self.client.count_with_tags(name, n);
            for (k, v) in &tags {
                m = m.with_tag(k, v);
            }
            m.send();
        }
        for ((name, tags), (seen, sample)) in timings {
            let rate = sample.len() as f64 / seen as f64;
            for ms in sample {
                let mut m = self.client.time_with_tags(name, ms);
                for (k, v) in &tags {
                    m = m.with_tag(k, v);
                }
                if rate < 1.0 {
                    m = m.with_sampling_rate(rate);
                }
                m.send();
            }
        }
    }

    /// Flushes every `every` on the current runtime, and once more when the returned guard
    /// is dropped (at shutdown).
    pub fn spawn_flusher(self: &std::sync::Arc<Self>, every: std::time::Duration) -> FlushOnDrop {
        let batch = self.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(every.max(std::time::Duration::from_millis(1)));
            tick.tick().await;
            loop {
                tick.tick().await;
                batch.flush();
            }
        });
        FlushOnDrop(self.clone(), task)
    }
}

/// Stops the periodic flush and sends what is left.
pub struct FlushOnDrop(std::sync::Arc<StatsdBatch>, tokio::task::JoinHandle<()>);

impl Drop for FlushOnDrop {
    fn drop(&mut self) {
        self.1.abort();
        self.0.flush();
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("stats.prometheus: {0}")]
    Prometheus(String),
    /// `key`: the config key of the address.
    #[error("{key} {addr}: {source}")]
    Bind {
        key: &'static str,
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("stats.statsd: {0}")]
    Statsd(String),
    #[error("{0}")]
    Sentry(String),
}

/// Lets a repeated report through at most once per `every` for each key, and counts what it
/// held back: during a broker outage librdkafka reports the same failure ten times a second,
/// which would flood the log and Sentry. (Written here: tracing has no rate limit of its own.)
pub struct Throttle {
    every: std::time::Duration,
    last: parking_lot::Mutex<std::collections::HashMap<String, (std::time::Instant, u64)>>,
}

impl Throttle {
    pub fn new(every: std::time::Duration) -> Self {
        Throttle {
            every,
            last: Default::default(),
        }
    }

    /// `Some(n)` when a report under `key` may go out now, `n` being how many were held back
    /// since the last one; `None` when it is to be held back. Keys are error kinds: few.
    pub fn allow(&self, key: &str) -> Option<u64> {
        let mut last = self.last.lock();
        let now = std::time::Instant::now();
        match last.get_mut(key) {
            Some((at, held)) if now.duration_since(*at) < self.every => {
                *held += 1;
                None
            }
            Some((at, held)) => {
                let n = std::mem::take(held);
                *at = now;
                Some(n)
            }
            None => {
                last.insert(key.to_string(), (now, 0));
                Some(0)
            }
        }
    }
}

#[cfg(test)]
mod statsd_tests {
    #[test]
    fn a_tag_value_cannot_add_a_statsd_line() {
        let (lines, sink) = cadence::SpyMetricSink::new();
        let batch = super::StatsdBatch::new(cadence::StatsdClient::from_sink("push", sink));
        batch.count(
            "failed",
            vec![("reason", "x\npush.ack:1000000|c,#game:y\r".to_string())],
        );
        batch.flush();
        let sent: Vec<String> = lines
            .try_iter()
            .map(|l| String::from_utf8(l).expect("utf-8"))
            .collect();
        assert_eq!(
            sent,
            ["push.failed:1|c|#reason:x_push.ack:1000000_c__game:y_"]
        );
    }
}

#[cfg(test)]
mod throttle_tests {
    use super::Throttle;
    use std::time::Duration;

    #[test]
    fn one_report_per_period_per_key_with_the_count_held_back() {
        let t = Throttle::new(Duration::from_millis(50));
        assert_eq!(t.allow("down"), Some(0));
        assert_eq!(t.allow("down"), None);
        assert_eq!(t.allow("down"), None);
        assert_eq!(t.allow("other"), Some(0), "keys are separate");
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(t.allow("down"), Some(2));
        assert_eq!(t.allow("down"), None);
    }
}

/// librdkafka's own logs and errors, through tracing, each kind at most once every 10 s (the
/// count held back is logged with the next). rdkafka's default context logs every one: a
/// broker outage gave about 20 ERROR lines a second, and every ERROR goes to Sentry.
pub struct KafkaReports {
    throttle: Throttle,
}

impl Default for KafkaReports {
    fn default() -> Self {
        KafkaReports {
            throttle: Throttle::new(std::time::Duration::from_secs(10)),
        }
    }
}

impl KafkaReports {
    pub fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        use rdkafka::config::RDKafkaLogLevel as L;
        let Some(held_back) = self.throttle.allow(&format!("log {fac}")) else {
            return;
        };
        match level {
            L::Emerg | L::Alert | L::Critical | L::Error => {
                tracing::error!(target: "librdkafka", held_back, "librdkafka: {fac} {message}")
            }
            L::Warning => {
                tracing::warn!(target: "librdkafka", held_back, "librdkafka: {fac} {message}")
            }
            L::Notice | L::Info => {
                tracing::info!(target: "librdkafka", held_back, "librdkafka: {fac} {message}")
            }
            L::Debug => tracing::debug!(target: "librdkafka", "librdkafka: {fac} {message}"),
        }
    }

    /// A client-wide error (`what` names the client: "consumer", "feedback producer").
    pub fn error(&self, what: &str, error: &rdkafka::error::KafkaError, reason: &str) {
        let key = format!("error {what} {:?}", error.rdkafka_error_code());
        if let Some(held_back) = self.throttle.allow(&key) {
            tracing::error!(%error, reason, held_back, "Kafka {what} error.");
        }
    }
}

/// A producer context that reports through `KafkaReports`.
#[derive(Default)]
pub struct QuietProducerContext(pub KafkaReports);

impl rdkafka::ClientContext for QuietProducerContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        self.0.log(level, fac, log_message);
    }
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        self.0.error("producer", &error, reason);
    }
}

#[cfg(test)]
mod filter_tests {
    use std::sync::{Arc, Mutex};

    /// What a subscriber with the filter of `spec` and `-d` writes of a statement's
    /// parameters (as tokio_postgres logs them) and of another debug line.
    fn logged(spec: Option<&str>, debug: bool) -> String {
        #[derive(Clone, Default)]
        struct Buffer(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Buffer {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(bytes);
                Ok(bytes.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(super::log_filter(spec, debug))
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::debug!(target: "tokio_postgres::query",
                "executing statement s1 with parameters: [\"auth-secret\"]");
            tracing::debug!(target: "pusher::platform", "a debug line");
        });
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        text
    }

    #[test]
    fn statement_parameters_stay_out_of_debug_and_trace_logs() {
        for (spec, debug) in [(None, true), (Some("trace"), false), (Some("debug"), true)] {
            let text = logged(spec, debug);
            assert!(text.contains("a debug line"), "{spec:?}: {text}");
            assert!(!text.contains("auth-secret"), "{spec:?}: {text}");
        }
        // Named, as someone debugging PostgreSQL would.
        assert!(logged(Some("info,tokio_postgres=debug"), false).contains("auth-secret"));
        // An invalid filter falls back to the default level, still without them.
        assert!(!logged(Some("pusher=loud"), true).contains("auth-secret"));
        assert!(logged(Some("pusher=loud"), true).contains("a debug line"));
    }
}

#[cfg(test)]
mod causes_tests {
    #[derive(Debug, thiserror::Error)]
    #[error("error connecting to server")]
    struct Silent(#[source] std::io::Error);

    #[derive(Debug, thiserror::Error)]
    #[error("config file x: {0}")]
    struct Said(#[source] std::io::Error);

    #[test]
    fn each_cause_is_said_once() {
        let refused = || std::io::Error::other("Connection refused (os error 111)");
        assert_eq!(
            super::with_causes(&Silent(refused())),
            "error connecting to server: Connection refused (os error 111)"
        );
        assert_eq!(
            super::with_causes(&Said(refused())),
            "config file x: Connection refused (os error 111)"
        );
    }
}
