//! `pusher api`: the platform's HTTP API (DESIGN.md §10) on axum. Stateless: every request's
//! state is in Kafka (what it accepted) and PostgreSQL (its idempotency key), so more
//! processes behind a load balancer add up.
//!
//! A request is answered only after Kafka acknowledged every record it wrote; anything else is
//! a 503 that says what Kafka took, refused, or may have taken. A retried request (same
//! `Idempotency-Key` from the same API key, or the same `notif_id`) is produced once and
//! answered with the first request's `notif_id`s.

mod auth;
mod capped;
mod error;
pub mod gorush;
mod limits;
mod messages;
mod path;
pub mod pushkin;
mod registry;
mod ui;

pub use auth::{ApiKey, Caller};
pub use error::ApiError;

use super::produce::{Producer, Record};
use super::registry::Registry;
use super::store::{ClaimKey, Claimed, Store, StoreError};
use crate::config::Secret;
use crate::push::Platform;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use parking_lot::Mutex;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// What `pusher api` is told (from `api.*` in the config).
#[derive(Debug, Clone)]
pub struct ApiSettings {
    pub keys: Vec<ApiKey>,
    pub max_body_bytes: usize,
    pub max_notifications: usize,
    pub max_tokens: usize,
    pub rate_per_second: u32,
    pub burst: u32,
    /// How long Kafka may take to acknowledge a request's records.
    pub produce_timeout: Duration,
    /// How long a `"sync": true` push waits for its verdicts.
    pub sync_timeout: Duration,
    /// When set, `/metrics` needs it as a bearer token.
    pub metrics_token: Option<Secret>,
    /// Whose backlogs the monitoring routes report.
    pub queues: Queues,
    /// Which web push endpoints a subscription may name (`webpush.allowLocalEndpoints`).
    pub webpush_rules: crate::push::webpush::EndpointRules,
    /// `route.deeplinkBase`: part of the pushes the router builds, whose size is checked here.
    pub deeplink_base: String,
    /// Most connections open at once; past it, new ones wait in the listen backlog.
    pub max_connections: usize,
    /// How long a request body may take to arrive, from the end of its head (then 408).
    pub body_timeout: Duration,
    /// How long a write to a client may wait for it to read (then the connection is closed).
    pub write_timeout: Duration,
    /// Bytes of records built and in flight to Kafka at once, over all requests (then 503).
    pub max_in_flight_bytes: usize,
}

/// The consumer groups behind Pushkin's queue routes, and where their topics are.
#[derive(Debug, Clone, Default)]
pub struct Queues {
    pub brokers: String,
    /// `pusher route`'s group (`/get_request_queue`).
    pub route_group: String,
    /// `pusher run apns`'s group (`/get_apn_sender_queue`).
    pub apns_group: String,
    /// `pusher run gcm`'s group (`/get_gcm_sender_queue`).
    pub gcm_group: String,
    /// `pusher run webpush`'s group (`/get_webpush_sender_queue`: not Pushkin's, which had no
    /// browsers).
    pub webpush_group: String,
}

impl ApiSettings {
    pub fn from_config(config: &crate::config::Config) -> ApiSettings {
        let a = &config.api;
        ApiSettings {
            keys: a
                .keys
                .iter()
                .filter_map(|(name, k)| {
                    Some(ApiKey {
                        name: name.clone(),
                        app: k.app.clone(),
                        key: k.key.clone()?,
                    })
                })
                .collect(),
            max_body_bytes: a.max_body_bytes,
            max_notifications: a.max_notifications,
            max_tokens: a.max_tokens,
            rate_per_second: a.rate_per_second,
            burst: a.burst,
            produce_timeout: a.produce_timeout,
            sync_timeout: a.sync_timeout,
            metrics_token: config.stats.prometheus.token.clone(),
            queues: Queues {
                brokers: config.queue.brokers.clone(),
                route_group: config.route.group.clone(),
                apns_group: config.group(Platform::Apns),
                gcm_group: config.group(Platform::Gcm),
                webpush_group: config.group(Platform::WebPush),
            },
            webpush_rules: if config.webpush.allow_local_endpoints {
                crate::push::webpush::EndpointRules::LOCAL
            } else {
                crate::push::webpush::EndpointRules::STRICT
            },
            deeplink_base: config.route.deeplink_base.clone(),
            max_connections: a.max_connections,
            body_timeout: a.body_timeout,
            write_timeout: a.write_timeout,
            max_in_flight_bytes: a.max_in_flight_bytes,
        }
    }
}

/// The API's shared state: settings, keys, the producer and the store.
#[derive(Clone)]
pub struct ApiState(Arc<Inner>);

pub struct Inner {
    settings: ApiSettings,
    keys: auth::Keys,
    producer: Producer,
    store: Store,
    registry: Registry,
    messages: crate::platform::messages::Messages,
    /// The page's last look at the router group's progress, per app (for routed/s).
    ui_routed: Mutex<std::collections::HashMap<String, (Instant, i64)>>,
    /// Records accepted by this process, by app and platform (gorush's `/api/stat/app`).
    accepted: Mutex<BTreeMap<String, [u64; 3]>>,
    /// Places for sync requests waiting for verdicts ([`SYNC_WAITERS`]).
    sync_waiters: Arc<tokio::sync::Semaphore>,
    /// The process's one reader of consumer-group backlogs (Pushkin's queue routes, the page).
    lag: crate::platform::lag::LagReader,
    /// Writes in progress ([`accept`]), waited for at shutdown.
    writes: tokio_util::task::TaskTracker,
    /// Bytes of records the writes in progress hold.
    budget: limits::Budget,
    /// `/healthz`'s last look at the brokers: when, and the problem it found. Locked for as
    /// long as a look runs ([`kafka_problem_now`]).
    kafka_probe: Arc<tokio::sync::Mutex<Option<KafkaLook>>>,
    /// Looks at the brokers started by `/healthz`.
    kafka_looks: AtomicUsize,
}

/// When `/healthz` last looked at the brokers, and the problem it found.
type KafkaLook = (Instant, Option<String>);

impl std::ops::Deref for ApiState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl ApiState {
    pub fn new(settings: ApiSettings, producer: Producer, store: Store) -> ApiState {
        let keys = auth::Keys::new(&settings.keys, settings.rate_per_second, settings.burst);
        let lag = crate::platform::lag::LagReader::new(&settings.queues.brokers);
        let budget = limits::Budget::new(settings.max_in_flight_bytes);
        ApiState(Arc::new(Inner {
            budget,
            lag,
            settings,
            keys,
            producer,
            registry: Registry::new(store.pool()),
            messages: crate::platform::messages::Messages::new(store.pool()),
            ui_routed: Mutex::new(Default::default()),
            store,
            accepted: Mutex::new(BTreeMap::new()),
            sync_waiters: Arc::new(tokio::sync::Semaphore::new(SYNC_WAITERS)),
            writes: tokio_util::task::TaskTracker::new(),
            kafka_probe: Arc::new(tokio::sync::Mutex::new(None)),
            kafka_looks: AtomicUsize::new(0),
        }))
    }

    /// Waits for records still in flight (shutdown).
    pub fn flush(&self, timeout: Duration) {
        self.producer.flush(timeout);
    }

    /// The reader behind the queue routes (how many clients and reads it made).
    pub fn lag(&self) -> &crate::platform::lag::LagReader {
        &self.lag
    }

    /// How many looks at the brokers `/healthz` started.
    pub fn kafka_looks(&self) -> usize {
        self.kafka_looks.load(Ordering::Relaxed)
    }
}

/// Every route of the API.
pub fn router(state: ApiState) -> Router {
    let max_body = state.settings.max_body_bytes;
    Router::new()
        .route("/api/push", post(push))
        .route("/post_notification_json", post(notifications))
        .route("/post_notification_proto", post(notifications))
        .route("/api/v1/notifications", post(notifications))
        .route("/post_events_json", post(events))
        .route("/post_events_proto", post(events))
        .route("/api/v1/events", post(events))
        .route("/api/v1/devices", axum::routing::put(registry::put_device))
        .route(
            "/api/v1/webpush/subscriptions",
            axum::routing::put(registry::put_subscription).delete(registry::delete_subscription),
        )
        .route(
            "/api/v1/devices/{token}",
            axum::routing::delete(registry::delete_device),
        )
        .route(
            "/api/v1/users/{user_id}/devices",
            get(registry::user_devices),
        )
        .route("/api/v1/notifications/{notif_id}", get(notification))
        .route("/api/v1/segments/push", post(segment_push))
        .route("/api/v1/messages", get(messages::list_messages))
        .route(
            "/api/v1/messages/{name}",
            get(messages::get_message)
                .put(messages::put_message)
                .delete(messages::delete_message),
        )
        .route("/api/stat/app", get(stat_app))
        .route("/get_request_queue", get(queue_size))
        .route("/get_apn_sender_queue", get(queue_size))
        .route("/get_gcm_sender_queue", get(queue_size))
        .route("/get_webpush_sender_queue", get(queue_size))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/version", get(version))
        .merge(
            Router::new()
                .route("/ui", get(ui::index))
                .route(
                    "/ui/login",
                    // Open to anyone: a key's worth of body, not api.maxBodyBytes.
                    post(ui::login).layer(DefaultBodyLimit::max(ui::LOGIN_BODY_LIMIT)),
                )
                .route("/ui/logout", post(ui::logout))
                .route("/ui/messages", post(ui::save_message))
                .route("/ui/messages/delete", post(ui::delete_message))
                .layer(axum::middleware::map_response(ui::no_store)),
        )
        .fallback(|| async { ApiError::NotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(max_body))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            body_deadline,
        ))
        .layer(axum::middleware::from_fn(observe))
        .with_state(state)
}

/// How long the requests in progress at shutdown may take to be answered; past it their
/// connections are closed (a write in progress still ends: [`accept`]).
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Serves the API on `listener` until `stop`; requests in progress are answered first (for up
/// to [`SHUTDOWN_GRACE`]), and the writes they started finish. HTTP/1.1 on hyper directly
/// rather than `axum::serve`, for what that lacks: a client that takes over 10 s to send its
/// request head (slow-loris) is disconnected, as the fakes and `/metrics` do. Its body has
/// `api.bodyTimeout`; a write that waits `api.writeTimeout` on a client that does not read
/// closes the connection; at most `api.maxConnections` are open at once.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: ApiState,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let router = router(state.clone());
    let places = Arc::new(tokio::sync::Semaphore::new(
        state.settings.max_connections.max(1),
    ));
    let mut connections = tokio::task::JoinSet::new();
    loop {
        // Finished connections leave the set as new ones come.
        while connections.try_join_next().is_some() {}
        // A place first: at the limit, new connections wait in the kernel's backlog instead
        // of taking file descriptors until accept() fails for everyone.
        let place = tokio::select! {
            _ = stop.cancelled() => break,
            place = places.clone().acquire_owned() => match place {
                Ok(place) => place,
                Err(_) => break,
            },
        };
        let stream = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                // Out of file descriptors and the like: back off instead of spinning.
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let service = hyper_util::service::TowerToHyperService::new(router.clone());
        let stop = stop.clone();
        let write_timeout = state.settings.write_timeout;
        connections.spawn(async move {
            let _place = place;
            // Without it, a client that never reads held its connection, its place and the
            // answer's memory until TCP gave up on it.
            let mut stream = tokio_io_timeout::TimeoutStream::new(stream);
            stream.set_write_timeout(Some(write_timeout));
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(hyper_util::rt::TokioIo::new(Box::pin(stream)), service);
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                _ = stop.cancelled() => {
                    // The request in progress is answered, then the connection closes.
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
        });
    }
    drop(listener);
    let all_answered = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(SHUTDOWN_GRACE, all_answered)
        .await
        .is_err()
    {
        tracing::warn!(
            connections = connections.len(),
            "Requests still in progress after {} s; their connections are closed.",
            SHUTDOWN_GRACE.as_secs()
        );
        connections.shutdown().await;
    }
    // Each write ends by itself (Kafka's and PostgreSQL's timeouts): cut short, it would
    // leave its claims pending with its records in Kafka.
    state.writes.close();
    let longest = state.producer.longest()
        + state
            .store
            .statement_bound()
            .unwrap_or(Duration::from_secs(30))
            .saturating_mul(2);
    if tokio::time::timeout(longest, state.writes.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            writes = state.writes.len(),
            "Writes still in progress at shutdown; their claims are taken over once stale."
        );
    }
    Ok(())
}

/// Bounds the time the body of a request may take ([`limits::Deadline`]).
async fn body_deadline(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    let timeout = state.settings.body_timeout;
    next.run(request.map(|body| axum::body::Body::new(limits::Deadline::new(body, timeout))))
        .await
}

/// Request counts and latency by route and status, for `/metrics`.
async fn observe(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "other".to_owned(), |p| p.as_str().to_owned());
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!(crate::telemetry::names::API_REQUESTS, "route" => route.clone(), "status" => status)
        .increment(1);
    metrics::histogram!(crate::telemetry::names::API_LATENCY, "route" => route)
        .record(started.elapsed().as_secs_f64());
    response
}

/// The body, or why it cannot be read (over the size limit: 413; not all there within
/// `api.bodyTimeout`: 408).
fn body(body: Result<Bytes, BytesRejection>, limit: usize) -> Result<Bytes, ApiError> {
    body.map_err(|e| body_error(e, limit))
}

fn body_error(e: BytesRejection, limit: usize) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::TooLarge { limit }
    } else if let Some(timeout) = limits::body_timeout(&e) {
        ApiError::BodyTimeout { timeout }
    } else {
        ApiError::BadRequest {
            field: None,
            message: format!("cannot read the body: {e}"),
        }
    }
}

fn parse_json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value =
        serde_path_to_error::deserialize(&mut de).map_err(|e| error::json_error(e, bytes))?;
    // Whatever follows the value (a second JSON object) would be dropped after a 2xx.
    de.end().map_err(|e| ApiError::BadRequest {
        field: None,
        message: format!("malformed JSON: {e}"),
    })?;
    Ok(value)
}

/// The `Idempotency-Key` header, when given (printable ASCII, at most 200 bytes).
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .ok()
        .map(str::trim)
        .filter(|k| !k.is_empty() && k.len() <= 200)
        .ok_or_else(|| ApiError::bad("Idempotency-Key", "1 to 200 printable ASCII characters"))?;
    Ok(Some(key.to_owned()))
}

/// Lets a refusal's log line out once every 10 s per kind, with the count held back: clients
/// retrying through a Kafka outage wrote a line per request (68,779 in 4.5 minutes).
fn refusals() -> &'static crate::telemetry::Throttle {
    static REFUSALS: std::sync::OnceLock<crate::telemetry::Throttle> = std::sync::OnceLock::new();
    REFUSALS.get_or_init(|| crate::telemetry::Throttle::new(Duration::from_secs(10)))
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> ApiError {
    let message = format!("{what} unavailable, nothing was accepted: {e}");
    if let Some(held_back) = refusals().allow(what) {
        tracing::warn!(problem = %message, held_back, "Request refused.");
    }
    crate::telemetry::health::set(&format!("api {what}"), Some(e.to_string()));
    ApiError::Unavailable { message }
}

/// A 503 for Kafka failing part of a request: `message` says what was written.
fn kafka_problem(message: String, e: &str) -> ApiError {
    if let Some(held_back) = refusals().allow("kafka, partly") {
        tracing::warn!(problem = %message, held_back, "Request partly refused.");
    }
    crate::telemetry::health::set("api kafka", Some(e.to_owned()));
    ApiError::Unavailable { message }
}

/// A store error met by a read (a GET): PostgreSQL down is a 503 that says so, without the
/// writes' "nothing was accepted" (a caller polling a result during an outage read that its
/// push was lost).
fn read_error(e: StoreError) -> ApiError {
    match e {
        StoreError::Unavailable(_) => {
            crate::telemetry::health::set("api postgres", Some(e.to_string()));
            ApiError::Unavailable {
                message: format!("postgres unavailable, nothing could be read: {e}"),
            }
        }
        other => store_error(other),
    }
}

fn store_error(e: StoreError) -> ApiError {
    match e {
        StoreError::NotifIdTaken(_) => ApiError::Conflict {
            message: e.to_string(),
            retry_after_secs: None,
        },
        StoreError::Unavailable(_) => unavailable("postgres", e),
        StoreError::Refused(_) => ApiError::BadRequest {
            field: None,
            message: e.to_string(),
        },
    }
}

/// An item's records, once its notif_id is known. Owning what it builds from: the write runs
/// in a task of its own ([`accept`]).
type RecordsFor = Box<dyn Fn(&str) -> Vec<Record> + Send + Sync>;

/// One item of a request (a notification, an event): the id its caller chose, if any, and
/// its records once its id is known.
struct Item {
    given_id: Option<String>,
    records: RecordsFor,
    /// Its records are requests for `pusher route` (a user's devices, a segment, an event):
    /// how many pushes they make, and so its `targets`, is known only there.
    routed: bool,
}

impl Item {
    /// The verdicts that complete it, when known at acceptance: one per record.
    fn targets(&self, records: usize) -> Option<u32> {
        (!self.routed).then(|| u32::try_from(records).unwrap_or(u32::MAX))
    }
}

/// What a request was answered with.
struct Accepted {
    notif_ids: Vec<String>,
    /// Records written for the request (or, for a retry, by the first request).
    counts: u64,
    /// Per item: written by this request (not a retry's answer).
    fresh: Vec<bool>,
}

impl Accepted {
    /// Adds `replayed` to `answer`: the ids of the items an earlier request with the same
    /// Idempotency-Key or notif_id wrote, which this one did not write again. Seen: gorush's
    /// callers reuse a `notif_id` as a label (`daily-reward`), and the second day's push was
    /// answered 200 and never sent, without a word.
    fn mark_replayed(&self, answer: &mut Value) {
        let replayed: Vec<&str> = self
            .notif_ids
            .iter()
            .zip(&self.fresh)
            .filter(|(_, fresh)| !**fresh)
            .map(|(id, _)| id.as_str())
            .collect();
        if !replayed.is_empty() {
            answer["replayed"] = json!(replayed);
        }
    }
}

/// The one path every write takes ([`write`]), in a task of its own whose answer the handler
/// waits for. A client that hangs up drops its handler at whatever it awaits; dropped between
/// produce and confirm, the claims stayed pending though Kafka had the records, every retry
/// got 409 until they went stale, and then wrote them again. Now a hang-up only loses the
/// answer: the write runs to its end, and a retry is answered as the first request was.
/// `bytes`: about what its records take, held from the process's budget until Kafka has them
/// (none left: 503 before anything is claimed).
async fn accept(
    state: &ApiState,
    caller: &Caller,
    headers: &HeaderMap,
    kind: &'static str,
    items: Vec<Item>,
    bytes: usize,
) -> Result<Accepted, ApiError> {
    let header = idempotency_key(headers)?;
    let held = state.budget.take(bytes)?;
    let (state, caller) = (state.clone(), caller.clone());
    let task = state.writes.clone().spawn(async move {
        let answer = write(&state, &caller, header, kind, items).await;
        drop(held);
        answer
    });
    match task.await {
        Ok(answer) => answer,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        // Only the runtime's end cancels it.
        Err(e) => Err(ApiError::Unavailable {
            message: format!("the write was stopped ({e}); retry with the same Idempotency-Key"),
        }),
    }
}

/// About the bytes of a routed request's records (one per item, for `pusher route`): each
/// is its item as the body had it, re-encoded as JSON (protobuf's are smaller), with its id.
fn routed_bytes(body: usize, items: usize) -> usize {
    body.saturating_mul(3)
        .saturating_add(items.saturating_mul(512))
}

/// Claims each item's idempotency key, produces the records of the items this request owns,
/// waits for every acknowledgement, confirms. One idempotency key per item: the
/// `Idempotency-Key` header's with the item's index, scoped to the caller's API key (two
/// backends of one app pick their keys apart), else its notif_id (per app), else a fresh one
/// (still stored, so its results can be looked up).
async fn write(
    state: &ApiState,
    caller: &Caller,
    header: Option<String>,
    kind: &str,
    items: Vec<Item>,
) -> Result<Accepted, ApiError> {
    let app: &str = &caller.app;
    if header.is_none() && items.iter().all(|i| i.given_id.is_none()) {
        return accept_unkeyed(state, app, kind, items).await;
    }
    let mut keys = Vec::with_capacity(items.len());
    let mut seen = std::collections::HashSet::new();
    for (i, item) in items.iter().enumerate() {
        let notif_id = item
            .given_id
            .clone()
            .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
        if !seen.insert(notif_id.clone()) {
            return Err(ApiError::bad(
                format!("{kind}[{i}].notif_id"),
                "the same notif_id twice in one request",
            ));
        }
        let idem_key = match (&header, &item.given_id) {
            // The key's name, length first: no name and header can make another's.
            (Some(h), _) => format!("h:{}:{}:{h}#{i}", caller.name.len(), caller.name),
            (None, Some(id)) => format!("n:{id}"),
            (None, None) => format!("g:{notif_id}"),
        };
        keys.push(ClaimKey { idem_key, notif_id });
    }

    let claim = uuid::Uuid::new_v4().to_string();
    // A claim is taken over only from a request that cannot be running any more: past the
    // longest its produce can take (after it, none of its records can still be written) and
    // its confirmation's longest statement (a pool wait and the statement itself). Taken
    // from a live one, both would write the records.
    let stale_after = state.producer.longest() + state.store.statement_bound().unwrap_or_default();
    let claimed = state
        .store
        .claim(app, &claim, &keys, stale_after)
        .await
        .map_err(store_error)?;
    crate::telemetry::health::set("api postgres", None);
    // A busy claim is free once its request is done, or once it goes stale.
    let busy: Vec<Duration> = claimed
        .iter()
        .filter_map(|c| match c {
            Claimed::Busy { stale_in } => Some(*stale_in),
            _ => None,
        })
        .collect();
    if let Some(&stale_in) = busy.iter().max() {
        let retry_after = busy.iter().map(|s| busy_retry_after(stale_after, *s)).max();
        let _ = state.store.release(app, &claim, &keys).await;
        return Err(ApiError::Conflict {
            message: format!(
                "a request with this Idempotency-Key or notif_id is in progress; retry (it is \
                 answered once that request is done, or taken over in {} s if it died)",
                stale_in.as_secs_f64().ceil()
            ),
            retry_after_secs: retry_after,
        });
    }

    let mut records = Vec::new();
    let mut confirmed = Vec::new();
    // The claims of `confirmed`, in the same order.
    let mut owned = Vec::new();
    let mut fingerprints = Vec::new();
    // Each confirmed item's records, as a range of `records`.
    let mut spans = Vec::new();
    let mut answer = Accepted {
        notif_ids: Vec::with_capacity(items.len()),
        counts: 0,
        fresh: Vec::with_capacity(items.len()),
    };
    for (i, ((item, key), claimed)) in items.iter().zip(&keys).zip(claimed).enumerate() {
        match claimed {
            Claimed::Ours { notif_id } => {
                let mine = (item.records)(&notif_id);
                if let Err(e) = check_record_sizes(kind, i, &mine) {
                    let _ = state.store.release(app, &claim, &keys).await;
                    return Err(e);
                }
                confirmed.push((key.idem_key.clone(), item.targets(mine.len())));
                owned.push(key.clone());
                fingerprints.push(records_fingerprint(&mine));
                answer.counts += mine.len() as u64;
                spans.push(records.len()..records.len() + mine.len());
                records.extend(mine);
                answer.notif_ids.push(notif_id);
                answer.fresh.push(true);
            }
            Claimed::Done {
                notif_id,
                targets,
                fingerprint,
            } => {
                // The same key with other content is no retry: answered as one, that content
                // was dropped without a word.
                if fingerprint.is_some_and(|f| f != records_fingerprint(&(item.records)(&notif_id)))
                {
                    let _ = state.store.release(app, &claim, &keys).await;
                    return Err(ApiError::KeyReused {
                        field: format!("{kind}[{i}]"),
                        message: format!(
                            "its Idempotency-Key or notif_id was accepted before, as {notif_id}, \
                             with other content; use a new key for new content"
                        ),
                    });
                }
                // A routed item wrote one request record; its `targets` are its devices.
                answer.counts += if item.routed { 1 } else { u64::from(targets) };
                answer.notif_ids.push(notif_id);
                answer.fresh.push(false);
            }
            Claimed::Busy { .. } => {}
        }
    }
    if !records.is_empty() {
        let produced = state.producer.produce_each(&records).await;
        if produced.iter().any(Result::is_err) {
            let mine = Owned {
                claim: &claim,
                keys: &owned,
                confirmed: &confirmed,
                fingerprints: &fingerprints,
                spans: &spans,
            };
            return Err(partly_produced(state, app, &mine, &produced, stale_after).await);
        }
        crate::telemetry::health::set("api kafka", None);
    }
    if !confirmed.is_empty() {
        match state
            .store
            .confirm(app, &claim, &confirmed, &fingerprints)
            .await
        {
            Ok(n) if n < confirmed.len() as u64 => tracing::warn!(
                items = confirmed.len() as u64 - n,
                "Accepted, but a retry took over claims of this request while it ran: both \
                 wrote their records."
            ),
            Ok(_) => {}
            // The records are in Kafka: the request is accepted. Its claims stay pending
            // until the confirmation goes through (a retry meanwhile is told to wait); one
            // that never does lets a retry after they go stale produce them again.
            Err(_) => confirm_later(state, app, &claim, confirmed, fingerprints),
        }
    }
    Ok(answer)
}

/// How long a store write that a request's answer did not wait for is retried: no longer
/// than `pusher results` keeps an early verdict's notification in view for its webhook
/// (`READY_WITHIN`, 10 minutes), so that a notification recorded late still gets its call.
const LATE_WRITE_FOR: Duration = Duration::from_secs(9 * 60);
/// How many such writes may wait at once (a long outage under load); past it, one is given up
/// with an error.
const LATE_WRITES: usize = 10_000;

/// A store write that failed after Kafka acknowledged the request's records (its
/// notifications' rows, its claims' confirmation): the request is accepted all the same, and
/// the write is retried in the background with jittered back-off for up to
/// [`LATE_WRITE_FOR`], logged at most once per 10 s. Before, a keyless notification accepted
/// during a PostgreSQL blip was 404 for good, and a keyed one's claims went stale at once, so
/// that the client's retry produced it again (it still can after an outage longer than the
/// claims' stale time: the confirmation then finds them taken over, and says so).
fn write_later<F, Fut>(what: &'static str, write: F)
where
    F: Fn() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<(), StoreError>> + Send,
{
    use std::sync::atomic::{AtomicUsize, Ordering};
    static WAITING: AtomicUsize = AtomicUsize::new(0);
    if WAITING.fetch_add(1, Ordering::Relaxed) >= LATE_WRITES {
        WAITING.fetch_sub(1, Ordering::Relaxed);
        if let Some(held_back) = refusals().allow("late writes, too many") {
            tracing::error!(
                held_back,
                limit = LATE_WRITES,
                "Accepted, but {what} failed and too many writes wait already: given up."
            );
        }
        return;
    }
    tokio::spawn(async move {
        let deadline = Instant::now() + LATE_WRITE_FOR;
        let backoff = crate::sender::retry::RetryPolicy::unbounded(
            Duration::from_millis(200),
            Duration::from_secs(5),
        );
        let mut failed = 0;
        loop {
            match write().await {
                Ok(()) => break,
                Err(e) if Instant::now() >= deadline => {
                    if let Some(held_back) = refusals().allow("late writes, given up") {
                        tracing::error!(error = %e, held_back, "Accepted, but {what} kept failing: given up.");
                    }
                    break;
                }
                Err(e) => {
                    if let Some(held_back) = refusals().allow(what) {
                        tracing::warn!(error = %e, held_back, "Accepted, but {what} failed; retrying it.");
                    }
                }
            }
            failed += 1;
            // Computed apart: the thread's generator may not be held across the await.
            let delay = backoff.delay(failed, None, &mut rand::rng());
            tokio::time::sleep(delay).await;
        }
        WAITING.fetch_sub(1, Ordering::Relaxed);
    });
}

/// [`write_later`] for a request's claims: their confirmation, once PostgreSQL takes it.
fn confirm_later(
    state: &ApiState,
    app: &str,
    claim: &str,
    confirmed: Vec<(String, Option<u32>)>,
    fingerprints: Vec<Vec<u8>>,
) {
    let (store, app, claim) = (state.store.clone(), app.to_owned(), claim.to_owned());
    write_later("the claims' confirmation", move || {
        let (store, app, claim) = (store.clone(), app.clone(), claim.clone());
        let (confirmed, fingerprints) = (confirmed.clone(), fingerprints.clone());
        async move {
            let n = store
                .confirm(&app, &claim, &confirmed, &fingerprints)
                .await?;
            if n < confirmed.len() as u64 {
                tracing::warn!(
                    items = confirmed.len() as u64 - n,
                    "Accepted, but a retry took over claims of this request while their \
                     confirmation waited for PostgreSQL: both wrote their records."
                );
            }
            Ok(())
        }
    });
}

/// `Retry-After` for a claim busy with another request: as long as it has been held (at least
/// 1 s), at most until it goes stale. A young claim's request is most likely still running and
/// done within a second or two; one that has run long is likely to run longer, or is dead and
/// free only once stale, so the retries thin out as the claim ages (a handful over its whole
/// life) and the last one lands when it can be taken over. Seen: always the time until stale,
/// up to 75 s, for a request that was done a second later.
fn busy_retry_after(stale_after: Duration, stale_in: Duration) -> u64 {
    let held = stale_after.saturating_sub(stale_in);
    let wait = held.min(stale_in).max(Duration::from_secs(1));
    wait.as_secs_f64().ceil() as u64
}

/// The elements of `v` at `indexes`.
fn pick<T: Clone>(v: &[T], indexes: &[usize]) -> Vec<T> {
    indexes.iter().filter_map(|&i| v.get(i).cloned()).collect()
}

/// A request's own items (claimed by it), as `accept` produced them.
struct Owned<'a> {
    claim: &'a str,
    keys: &'a [ClaimKey],
    confirmed: &'a [(String, Option<u32>)],
    fingerprints: &'a [Vec<u8>],
    /// Each item's records, as a range of the produced records.
    spans: &'a [std::ops::Range<usize>],
}

/// Kafka failed some of a request's records: the items whose records were all acknowledged
/// are confirmed (a retry with the same keys answers them without writing them again); the
/// claims of items with a record Kafka surely refused are given up, so a retry writes them at
/// once (an item partly acknowledged is written whole again: records are not claimed one by one);
/// an item Kafka may have written (sent, no acknowledgement) keeps its claim: a retry gets
/// 409 while it is fresh and takes it over once stale, when no request can still be writing
/// it. The answer says which is which, never "nothing was accepted" when it cannot know.
async fn partly_produced(
    state: &ApiState,
    app: &str,
    mine: &Owned<'_>,
    produced: &[Result<(), super::produce::ProduceError>],
    stale_after: Duration,
) -> ApiError {
    let (mut written, mut unknown, mut refused) = (Vec::new(), Vec::new(), Vec::new());
    for (j, span) in mine.spans.iter().enumerate() {
        let answers = produced.get(span.clone()).unwrap_or_default();
        if answers.iter().all(Result::is_ok) {
            written.push(j);
        } else if answers
            .iter()
            .any(|a| a.as_ref().is_err_and(|e| e.may_be_written()))
        {
            unknown.push(j);
        } else {
            refused.push(j);
        }
    }
    let e = produced
        .iter()
        .find_map(|r| r.as_ref().err().filter(|e| e.may_be_written()))
        .or_else(|| produced.iter().find_map(|r| r.as_ref().err()))
        .map(ToString::to_string)
        .unwrap_or_default();
    if !written.is_empty() {
        if let Err(c) = state
            .store
            .confirm(
                app,
                mine.claim,
                &pick(mine.confirmed, &written),
                &pick(mine.fingerprints, &written),
            )
            .await
        {
            // In Kafka, but not recorded: their claims stay pending, as unknown ones do,
            // until the confirmation goes through.
            tracing::debug!(error = %c, "Cannot confirm the items Kafka acknowledged yet.");
            confirm_later(
                state,
                app,
                mine.claim,
                pick(mine.confirmed, &written),
                pick(mine.fingerprints, &written),
            );
            unknown.append(&mut written);
        }
    }
    if !refused.is_empty() {
        if let Err(release) = state
            .store
            .release(app, mine.claim, &pick(mine.keys, &refused))
            .await
        {
            tracing::warn!(error = %release, "Cannot release the request's claims; a retry takes them over once stale.");
        }
    }
    if written.is_empty() && unknown.is_empty() {
        return unavailable("kafka", e);
    }
    kafka_problem(
        format!(
            "kafka unavailable: {} of {} new items were accepted, {} unknown (sent, but not \
             acknowledged: Kafka may have written them), {} not accepted. Retry with the same \
             Idempotency-Key or notif_ids: the accepted are answered without being written \
             again, the others written; an unknown one is answered 409 for up to {} s, then \
             written again: {e}",
            written.len(),
            mine.spans.len(),
            unknown.len(),
            refused.len(),
            stale_after.as_secs_f64().ceil()
        ),
        &e,
    )
}

fn records_fingerprint(records: &[Record]) -> Vec<u8> {
    crate::platform::store::fingerprint(
        records
            .iter()
            .map(|r| (r.topic.as_str(), r.key.as_str(), r.payload.as_slice())),
    )
}

/// Refuses an item whose record could never become a push: no pipeline message is over
/// [`MAX_MESSAGE_BYTES`], and past Kafka's 1,000,000 bytes the produce failed, which answered
/// 503 with `Retry-After` for a request that would fail every time.
///
/// [`MAX_MESSAGE_BYTES`]: crate::push::message::MAX_MESSAGE_BYTES
fn check_record_sizes(kind: &str, i: usize, records: &[Record]) -> Result<(), ApiError> {
    use crate::push::message::MAX_MESSAGE_BYTES;
    match records.iter().map(|r| r.key.len() + r.payload.len()).max() {
        Some(size) if size > MAX_MESSAGE_BYTES => Err(ApiError::bad(
            format!("{kind}[{i}]"),
            format!("{size} bytes as a message, over the limit of {MAX_MESSAGE_BYTES}"),
        )),
        _ => Ok(()),
    }
}

/// A request with nothing to dedup on (no `Idempotency-Key`, no `notif_id`): nothing to
/// claim. Its records are produced first; once Kafka has them, the notifications are recorded
/// as accepted in one plain INSERT (for their results). That statement failing does not undo
/// the acceptance: the results are still stored, the notification's `targets` are unknown.
async fn accept_unkeyed(
    state: &ApiState,
    app: &str,
    kind: &str,
    items: Vec<Item>,
) -> Result<Accepted, ApiError> {
    // Time-ordered ids (UUIDv7): the notifications' indexes grow at their end instead of
    // splitting random pages (PostgreSQL was the API's limit with random v4 ids).
    let notif_ids: Vec<String> = items
        .iter()
        .map(|_| uuid::Uuid::now_v7().to_string())
        .collect();
    let mut records = Vec::new();
    let mut accepted = Vec::with_capacity(items.len());
    for (i, (item, id)) in items.iter().zip(&notif_ids).enumerate() {
        let mine = (item.records)(id);
        check_record_sizes(kind, i, &mine)?;
        accepted.push((id.clone(), item.targets(mine.len())));
        records.extend(mine);
    }
    let produced = state.producer.produce_each(&records).await;
    if let Some(e) = produced.iter().find_map(|r| r.as_ref().err()) {
        let written = produced.iter().filter(|r| r.is_ok()).count();
        let unknown = produced
            .iter()
            .filter(|r| r.as_ref().is_err_and(|e| e.may_be_written()))
            .count();
        if written == 0 && unknown == 0 {
            return Err(unavailable("kafka", e));
        }
        // Nothing to dedup on: what was written stays, and a retry writes it again.
        return Err(kafka_problem(
            format!(
                "kafka unavailable: {written} of {} records were written and {unknown} may \
                 have been; without an Idempotency-Key or notif_ids a retry writes them all \
                 again: {e}",
                records.len()
            ),
            &e.to_string(),
        ));
    }
    crate::telemetry::health::set("api kafka", None);
    if state.store.record_accepted(app, &accepted).await.is_err() {
        let (store, app) = (state.store.clone(), app.to_owned());
        write_later("recording the notifications", move || {
            let (store, app, accepted) = (store.clone(), app.clone(), accepted.clone());
            async move { store.record_accepted(&app, &accepted).await }
        });
    }
    Ok(Accepted {
        counts: records.len() as u64,
        fresh: vec![true; notif_ids.len()],
        notif_ids,
    })
}

/// gorush's `POST /api/push`: each token of each notification becomes one message on
/// `push-<app>_<platform>`, answered as gorush does plus the `notif_id`s.
async fn push(
    State(state): State<ApiState>,
    caller: Caller,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let s = &state.settings;
    let raw = body(raw, s.max_body_bytes)?;
    let request: gorush::PushRequest =
        capped::with_limit(s.max_notifications, || parse_json(&raw))?;
    let count = request.notifications.len();
    check_count("notifications", count, s.max_notifications)?;
    let prepared = request
        .notifications
        .iter()
        .enumerate()
        .map(|(i, n)| {
            gorush::prepare(i, n, s.webpush_rules)
                .map(Arc::new)
                .map_err(|e| ApiError::bad(e.field, e.message))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let tokens: usize = prepared.iter().map(|p| p.tokens.len()).sum();
    if tokens > s.max_tokens {
        return Err(ApiError::bad(
            "notifications",
            format!(
                "{tokens} tokens, more than {} (api.maxTokens)",
                s.max_tokens
            ),
        ));
    }
    // A sync request's place among the waiters is taken before anything is accepted: with
    // none left, it is refused whole rather than accepted and answered without its verdicts.
    let sync_place = if request.sync {
        Some(
            state
                .sync_waiters
                .clone()
                .try_acquire_owned()
                .map_err(|_| ApiError::Unavailable {
                    message: format!(
                        "{SYNC_WAITERS} sync requests already wait for their verdicts in this \
                     process; nothing was accepted: retry, or send without \"sync\""
                    ),
                })?,
        )
    } else {
        None
    };
    let app: &str = &caller.app;
    let items = request
        .notifications
        .iter()
        .zip(&prepared)
        .map(|(n, p)| {
            let p = p.clone();
            let topic = format!("push-{app}_{}", p.platform);
            Item {
                given_id: n.notif_id.clone(),
                routed: false,
                records: Box::new(move |notif_id: &str| {
                    p.tokens
                        .iter()
                        .map(|token| Record {
                            topic: topic.clone(),
                            key: token.clone(),
                            payload: p.message(token, notif_id),
                        })
                        .collect()
                }),
            }
        })
        .collect();
    let bytes = prepared.iter().map(|p| p.record_bytes()).sum();
    let accepted = accept(&state, &caller, &headers, "notifications", items, bytes).await?;

    let mut by_platform = [0u64; 3];
    for (p, fresh) in prepared.iter().zip(&accepted.fresh) {
        if *fresh {
            by_platform[platform_index(p.platform)] += p.tokens.len() as u64;
        }
    }
    for platform in [Platform::Apns, Platform::Gcm, Platform::WebPush] {
        let n = by_platform[platform_index(platform)];
        if n > 0 {
            metrics::counter!(crate::telemetry::names::API_ACCEPTED,
                "app" => app.to_owned(), "platform" => platform.as_str())
            .increment(n);
        }
    }
    {
        let mut stats = state.accepted.lock();
        let entry = stats.entry(app.to_owned()).or_default();
        for (total, n) in entry.iter_mut().zip(by_platform) {
            *total += n;
        }
    }
    // The body is not kept through a sync wait (up to `api.syncTimeout`).
    drop((prepared, request, raw));
    let mut answer = json!({"success": "ok", "counts": accepted.counts, "logs": [],
        "notif_ids": accepted.notif_ids});
    if let Some(_place) = sync_place {
        let sync = sync_logs(&state, app, &accepted).await;
        answer["logs"] = Value::Array(sync.logs);
        answer["pending"] = json!(sync.pending);
        if let Some(e) = sync.error {
            answer["sync_error"] = json!(e);
        }
    }
    if count == 1 {
        answer["notif_id"] = answer["notif_ids"][0].clone();
    }
    accepted.mark_replayed(&mut answer);
    Ok(Json(answer).into_response())
}

/// Sync requests (gorush's `"sync": true`) one process lets wait for verdicts at once. Each
/// holds a connection's query every [`SYNC_POLL`]; past this a sync request is refused (503,
/// nothing accepted) instead of every waiter together emptying PostgreSQL's pool while the
/// pushers are down.
pub const SYNC_WAITERS: usize = 64;
const SYNC_POLL: Duration = Duration::from_millis(100);

/// What a sync request learned of its verdicts.
struct SyncAnswer {
    /// gorush's `logs`: one entry per failed token.
    logs: Vec<Value>,
    /// Accepted records without a verdict when the answer was made (`api.syncTimeout`, or
    /// PostgreSQL failing): 0 means `logs` is the whole story.
    pending: u64,
    /// Why the wait ended early. The request stays accepted: its records are in Kafka, and a
    /// 503 now would have its caller send them again.
    error: Option<String>,
}

/// gorush's sync mode: waits until every accepted record has a verdict in the results table
/// (or `api.syncTimeout`), then answers gorush's `logs`.
async fn sync_logs(state: &ApiState, app: &str, accepted: &Accepted) -> SyncAnswer {
    let deadline = Instant::now() + state.settings.sync_timeout;
    let mut answer = SyncAnswer {
        logs: Vec::new(),
        pending: accepted.counts,
        error: None,
    };
    loop {
        match state.store.result_total(app, &accepted.notif_ids).await {
            Ok(done) => answer.pending = accepted.counts.saturating_sub(done),
            Err(e) => {
                answer.error = Some(e.to_string());
                return answer;
            }
        }
        if answer.pending == 0 || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(SYNC_POLL).await;
    }
    for id in &accepted.notif_ids {
        let mut after = String::new();
        loop {
            let page = match state.store.results_page(app, id, &after, 1000).await {
                Ok(page) => page,
                Err(e) => {
                    answer.error = Some(e.to_string());
                    return answer;
                }
            };
            let full = page.len() == 1000;
            for r in &page {
                if r.outcome != "delivered" {
                    answer
                        .logs
                        .push(json!({"notif_id": id, "type": "failed-push",
                        "platform": gorush_platform(&r.platform),
                        "token": r.token, "message": r.outcome, "error": r.reason}));
                }
            }
            match page.last() {
                Some(last) if full => after = last.token.clone(),
                _ => break,
            }
        }
    }
    answer
}

/// gorush's name of a platform in `logs` (`ios`, `android`; a browser is `web`, as in
/// `/api/stat/app`).
fn gorush_platform(platform: &str) -> &str {
    match platform {
        "apns" => "ios",
        "gcm" => "android",
        "webpush" => "web",
        other => other,
    }
}

fn check_count(field: &str, count: usize, max: usize) -> Result<(), ApiError> {
    if count == 0 {
        return Err(ApiError::bad(field, "required: at least one"));
    }
    if count > max {
        return Err(ApiError::bad(
            field,
            format!("{count} {field}, more than {max} (api.maxNotifications)"),
        ));
    }
    Ok(())
}

/// How a Pushkin-style body is encoded, and how the route answers.
#[derive(Clone, Copy)]
enum Wire {
    /// Pushkin's `_json` route: 200.
    PushkinJson,
    /// Pushkin's `_proto` route: 200.
    PushkinProto,
    /// `/api/v1/...`: JSON, or protobuf with `Content-Type: application/x-protobuf`; 202.
    V1,
}

/// The wire of a request, from its route: `..._json`, `..._proto`, or `/api/v1/...`.
impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Wire {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Wire, Self::Rejection> {
        let path = parts.uri.path();
        Ok(if path.ends_with("_json") {
            Wire::PushkinJson
        } else if path.ends_with("_proto") {
            Wire::PushkinProto
        } else {
            Wire::V1
        })
    }
}

impl Wire {
    fn is_proto(self, headers: &HeaderMap) -> bool {
        match self {
            Wire::PushkinJson => false,
            Wire::PushkinProto => true,
            Wire::V1 => headers
                .get(axum::http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|t| t.contains("protobuf")),
        }
    }

    fn status(self) -> StatusCode {
        match self {
            Wire::V1 => StatusCode::ACCEPTED,
            _ => StatusCode::OK,
        }
    }
}

/// A Pushkin batch (its list is field 1, `list` by name): over `max` items it is refused
/// before any is decoded.
fn parse_proto<T: prost::Message + Default>(
    bytes: &[u8],
    list: &str,
    max: usize,
) -> Result<T, ApiError> {
    let malformed = |e: &dyn std::fmt::Display| ApiError::BadRequest {
        field: None,
        message: format!("malformed protobuf: {e}"),
    };
    match capped::count_field(bytes, 1, max) {
        None => return Err(malformed(&"a field's length or key runs past the body")),
        Some(n) if n > max => {
            return Err(ApiError::bad(
                list,
                format!("more than {max} items (api.maxNotifications)"),
            ))
        }
        Some(_) => {}
    }
    T::decode(bytes).map_err(|e| malformed(&e))
}

/// A Pushkin batch's items, from protobuf or JSON as `proto` says: between one and `max`
/// of them, each checked with its index.
fn pushkin_batch<B: pushkin::Batch, C>(
    proto: bool,
    raw: &[u8],
    max: usize,
    check: impl Fn(usize, B::Item) -> Result<C, gorush::FieldError>,
) -> Result<Vec<C>, ApiError> {
    let batch: B = if proto {
        parse_proto::<B::Proto>(raw, B::LIST, max)?.into()
    } else {
        capped::with_limit(max, || parse_json::<B>(raw))?
    };
    let list = batch.into_list();
    check_count(B::LIST, list.len(), max)?;
    list.into_iter()
        .enumerate()
        .map(|(i, item)| check(i, item).map_err(|e| ApiError::bad(e.field, e.message)))
        .collect()
}

/// An item for `pusher route`: one request on the app's requests topic (`topic`), keyed by
/// its user or segment, made by `request` once the item's id is known.
fn routed_item(
    topic: &str,
    given_id: Option<String>,
    request: impl Fn(&str) -> crate::platform::requests::RequestRecord + Send + Sync + 'static,
) -> Item {
    let topic = topic.to_owned();
    Item {
        given_id,
        routed: true,
        records: Box::new(move |id: &str| {
            let record = request(id);
            vec![Record {
                topic: topic.clone(),
                key: record.key(),
                payload: record.to_json(),
            }]
        }),
    }
}

/// Pushkin's user-addressed notifications, onto the app's requests topic (key = user id)
/// for `pusher route`.
async fn notifications(
    State(state): State<ApiState>,
    caller: Caller,
    wire: Wire,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let raw = body(raw, state.settings.max_body_bytes)?;
    let deeplink_base = &state.settings.deeplink_base;
    let checked = pushkin_batch::<pushkin::JsonNotifications, _>(
        wire.is_proto(&headers),
        &raw,
        state.settings.max_notifications,
        |i, n| pushkin::check_notification(i, n, deeplink_base),
    )?;
    let topic = crate::platform::requests::topic(&caller.app);
    let items: Vec<Item> = checked
        .into_iter()
        .map(|n| routed_item(&topic, n.notif_id.clone(), move |id| n.record(id)))
        .collect();
    let bytes = routed_bytes(raw.len(), items.len());
    let accepted = accept(&state, &caller, &headers, "notifications", items, bytes).await?;
    let mut answer = json!({"status": "OK", "accepted": accepted.notif_ids.len(),
        "notif_ids": accepted.notif_ids});
    accepted.mark_replayed(&mut answer);
    Ok((wire.status(), Json(answer)).into_response())
}

/// Pushkin's events, onto the app's requests topic (key = user id) for `pusher route`.
async fn events(
    State(state): State<ApiState>,
    caller: Caller,
    wire: Wire,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let raw = body(raw, state.settings.max_body_bytes)?;
    let records = pushkin_batch::<pushkin::JsonEvents, _>(
        wire.is_proto(&headers),
        &raw,
        state.settings.max_notifications,
        pushkin::check_event,
    )?;
    let topic = crate::platform::requests::topic(&caller.app);
    let items: Vec<Item> = records
        .into_iter()
        .map(|r| {
            routed_item(&topic, None, move |id| {
                let mut r = r.clone();
                if let crate::platform::requests::RequestRecord::Event { id: slot, .. } = &mut r {
                    *slot = id.to_owned();
                }
                r
            })
        })
        .collect();
    let bytes = routed_bytes(raw.len(), items.len());
    let accepted = accept(&state, &caller, &headers, "events", items, bytes).await?;
    // An event's notifications are `<event id>.<message name>` in the results.
    let mut answer = json!({"status": "OK", "accepted": accepted.notif_ids.len(),
                        "event_ids": accepted.notif_ids});
    accepted.mark_replayed(&mut answer);
    Ok((wire.status(), Json(answer)).into_response())
}

/// `POST /api/v1/segments/push`: one notification to every registered device that meets a
/// condition.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SegmentRequest {
    #[serde(default)]
    condition: crate::platform::requests::Condition,
    #[serde(default)]
    title: String,
    #[serde(default)]
    message: String,
    #[serde(default)]
    screen: String,
    #[serde(default)]
    data: serde_json::Map<String, Value>,
    notif_id: Option<String>,
}

/// A segment's push, built for each platform it can reach as the router will build it, is
/// one `pusher run` can send: else every device's push would fail (payload_too_large), after
/// a 202. The field is `data` when the push fits without it.
fn check_segment_push(
    request: &SegmentRequest,
    notif_id: Option<&str>,
    deeplink_base: &str,
) -> Result<(), ApiError> {
    use crate::platform::outbound::{unsendable, Notification, ALL_PLATFORMS};
    let platforms = match request.condition.platform {
        Some(p) => vec![p],
        None => ALL_PLATFORMS.to_vec(),
    };
    let mut push = Notification {
        title: request.title.clone(),
        content: request.message.clone(),
        screen: request.screen.clone(),
        notif_id: notif_id.unwrap_or(pushkin::ID_PLACEHOLDER).to_owned(),
        data: request.data.clone(),
        ..Notification::default()
    };
    let Some((platform, e)) = unsendable(&push, deeplink_base, &platforms) else {
        return Ok(());
    };
    push.data.clear();
    let field = if unsendable(&push, deeplink_base, &platforms).is_none() {
        "data"
    } else {
        "message"
    };
    Err(ApiError::bad(
        field,
        format!("the push could never be sent to {platform}: {e}"),
    ))
}

/// Accepted once Kafka has the request; `pusher route` streams the devices from the registry
/// in pages (never the whole registry in memory), and its progress shows in
/// `GET /api/v1/notifications/{notif_id}`.
async fn segment_push(
    State(state): State<ApiState>,
    caller: Caller,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let raw = body(raw, state.settings.max_body_bytes)?;
    let request: SegmentRequest = parse_json(&raw)?;
    if let Some((field, problem)) = request.condition.problem() {
        return Err(ApiError::bad(field, problem));
    }
    pushkin::check_screen(&request.screen).map_err(|e| ApiError::bad("screen", e))?;
    if request.title.is_empty() && request.message.is_empty() {
        return Err(ApiError::bad("message", "required (or title)"));
    }
    if request.title.len() + request.message.len() > pushkin::MAX_TEXT {
        return Err(ApiError::bad(
            "message",
            format!("title and message over {} bytes", pushkin::MAX_TEXT),
        ));
    }
    let given_id = request.notif_id.clone().filter(|id| !id.is_empty());
    if let Some(id) = &given_id {
        gorush::check_notif_id("notif_id".into(), id)
            .map_err(|e| ApiError::bad(e.field, e.message))?;
    }
    check_segment_push(&request, given_id.as_deref(), &state.settings.deeplink_base)?;
    let topic = crate::platform::requests::topic(&caller.app);
    let item = routed_item(&topic, given_id, move |notif_id| {
        crate::platform::requests::RequestRecord::Segment {
            notif_id: notif_id.to_owned(),
            condition: request.condition.clone(),
            title: request.title.clone(),
            content: request.message.clone(),
            screen: request.screen.clone(),
            data: request.data.clone(),
        }
    });
    let bytes = routed_bytes(raw.len(), 1);
    let accepted = accept(&state, &caller, &headers, "segment", vec![item], bytes).await?;
    let notif_id = accepted.notif_ids.first().cloned().unwrap_or_default();
    let mut answer = json!({"status": "OK", "notif_id": notif_id});
    accepted.mark_replayed(&mut answer);
    Ok((StatusCode::ACCEPTED, Json(answer)).into_response())
}

/// `?after=<token>&limit=<n>`: a page of a notification's per-token results.
#[derive(Debug, serde::Deserialize)]
struct Page {
    #[serde(default)]
    after: String,
    limit: Option<String>,
}

impl Page {
    /// Rows a page holds: 1 to 1,000 (more is capped), 100 by default.
    fn limit(&self) -> Result<i64, ApiError> {
        match self.limit.as_deref() {
            None => Ok(100),
            Some(text) => match text.parse::<i64>() {
                Ok(n) if n >= 1 => Ok(n.min(1000)),
                _ => Err(ApiError::bad("limit", "a number of rows, 1 to 1000")),
            },
        }
    }

    /// The token the page starts after. A token is valid UTF-8 without control characters:
    /// an `after` that is not (`%FF`, decoded as U+FFFD) matched nothing and answered an empty
    /// last page.
    fn after(&self) -> Result<&str, ApiError> {
        if self
            .after
            .chars()
            .any(|c| c == char::REPLACEMENT_CHARACTER || c.is_control())
        {
            return Err(ApiError::bad(
                "after",
                "a device token (UTF-8, no control characters)",
            ));
        }
        Ok(&self.after)
    }
}

/// `GET /api/v1/notifications/{notif_id}`: the notification, its verdicts counted by outcome,
/// and a page of per-token rows (`next` is the `after` of the next page). `pending` is what has
/// no verdict yet, for token-addressed pushes (a user-addressed one reaches devices only
/// `pusher route` knows). An event's notification, `<event id>.<message name>`, has no row of
/// its own (DESIGN.md §10): once it has a verdict, it is answered from the event's row, with
/// its targets unknown.
async fn notification(
    State(state): State<ApiState>,
    caller: Caller,
    path::Param(notif_id): path::Param<String>,
    page: Result<axum::extract::Query<Page>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let axum::extract::Query(page) = page.map_err(|e| ApiError::BadRequest {
        field: None,
        message: e.body_text(),
    })?;
    let (limit, after) = (page.limit()?, page.after()?);
    let app: &str = &caller.app;
    let (found, event_id) = match state
        .store
        .notification(app, &notif_id)
        .await
        .map_err(read_error)?
    {
        Some(found) => (found, None),
        None => {
            // Event ids are the API's UUIDs; a message name may hold dots (`daily.reward`).
            let event_id = notif_id.split_once('.').ok_or(ApiError::NotFound)?.0;
            let event = state
                .store
                .notification(app, event_id)
                .await
                .map_err(read_error)?
                .ok_or(ApiError::NotFound)?;
            (event, Some(event_id.to_owned()))
        }
    };
    let counts = state
        .store
        .result_counts(app, &notif_id)
        .await
        .map_err(read_error)?;
    // Any `<id>.<anything>` of an existing id would do otherwise: an event's notification is
    // known by its verdicts.
    if event_id.is_some() && counts.is_empty() {
        return Err(ApiError::NotFound);
    }
    let rows = state
        .store
        .results_page(app, &notif_id, after, limit)
        .await
        .map_err(read_error)?;
    let done: i64 = counts.values().sum();
    let segment = state
        .registry
        .segment_progress(app, &notif_id)
        .await
        .map_err(read_error)?;
    // A segment's targets are the devices it reached, known once it is done; an event's
    // notification's are never known here (the router expands it).
    let pending = match &segment {
        _ if event_id.is_some() => None,
        None => found.targets.map(|t| (i64::from(t) - done).max(0)),
        Some((_, sent, true)) => Some((sent - done).max(0)),
        Some((_, _, false)) => None,
    };
    let next = (rows.len() as i64 == limit).then(|| rows.last().map(|r| r.token.clone()));
    let results: Vec<Value> = rows
        .iter()
        .map(|r| {
            json!({"token": r.token, "platform": r.platform, "outcome": r.outcome,
            "reason": r.reason, "at": r.at_ms.div_euclid(1000)})
        })
        .collect();
    let mut answer = json!({
        "notif_id": notif_id,
        "state": found.state,
        "accepted_at": found.accepted_at,
        "targets": found.targets.filter(|_| event_id.is_none()),
        "counts": counts,
        "pending": pending,
        "segment": segment.map(|(_, sent, done)| json!({"sent": sent, "done": done})),
        "webhook": found.webhook.filter(|_| event_id.is_none()),
        "results": results,
        "next": next.flatten(),
    });
    if let Some(event_id) = event_id {
        answer["event_id"] = json!(event_id);
    }
    Ok(Json(answer).into_response())
}

fn platform_index(p: Platform) -> usize {
    match p {
        Platform::Apns => 0,
        Platform::Gcm => 1,
        Platform::WebPush => 2,
    }
}

/// gorush's `GET /api/stat/app`, for the caller's app, in gorush's shape: per platform the
/// verdicts stored so far (`push_success` delivered, `push_error` any other outcome, from every
/// `pusher results`) and what this process accepted (`accepted`; `total_count` their sum, as
/// gorush counts since its start). gorush's worker and task counts describe its in-process
/// queue, which has no counterpart here: left out rather than answered as zeros.
async fn stat_app(State(state): State<ApiState>, caller: Caller) -> Result<Json<Value>, ApiError> {
    let accepted = state
        .accepted
        .lock()
        .get(&*caller.app)
        .copied()
        .unwrap_or_default();
    let totals = state
        .store
        .result_totals(&caller.app)
        .await
        .map_err(read_error)?;
    let mut answer = json!({
        "version": env!("CARGO_PKG_VERSION"),
        "app": &*caller.app,
        "total_count": accepted.iter().sum::<u64>(),
        "huawei": {"push_success": 0, "push_error": 0},
    });
    for platform in [Platform::Apns, Platform::Gcm, Platform::WebPush] {
        let (success, error) = totals
            .iter()
            .find(|(p, _, _)| p == platform.as_str())
            .map_or((0, 0), |(_, s, e)| (*s, *e));
        answer[gorush_platform(platform.as_str())] = json!({
            "push_success": success,
            "push_error": error,
            "accepted": accepted[platform_index(platform)],
        });
    }
    Ok(Json(answer))
}

/// Pushkin's queue sizes, for the caller's app: the backlog of `pusher route` on the requests
/// topic, or of `pusher run apns|gcm` on the app's push topics. A bare number, as Pushkin
/// answers (a monitor that reads `int(body)` works unchanged); what it was read from, as JSON,
/// to a caller that accepts `application/json`.
async fn queue_size(
    State(state): State<ApiState>,
    caller: Caller,
    uri: axum::http::Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let q = state.settings.queues.clone();
    let app = caller.app.to_string();
    let (queue, group, topics) = match uri.path() {
        "/get_request_queue" => (
            "requests",
            q.route_group,
            vec![crate::platform::requests::topic(&app)],
        ),
        "/get_apn_sender_queue" => (
            "apns",
            q.apns_group,
            crate::push::topic::app_topics(&app, Platform::Apns).to_vec(),
        ),
        "/get_webpush_sender_queue" => (
            "webpush",
            q.webpush_group,
            crate::push::topic::app_topics(&app, Platform::WebPush).to_vec(),
        ),
        _ => (
            "gcm",
            q.gcm_group,
            crate::push::topic::app_topics(&app, Platform::Gcm).to_vec(),
        ),
    };
    let size = state
        .lag
        .position(&group, &topics, Duration::from_secs(5))
        .await
        // A read, not a write: no "nothing was accepted", and /healthz is not told (it asks
        // Kafka itself).
        .map_err(|e| ApiError::Unavailable {
            message: format!("cannot read the backlog of {group} from Kafka: {e}"),
        })?
        .position
        .backlog;
    let mut answer = if accepts_json(&headers) {
        Json(json!({"queue": queue, "size": size, "group": group, "topics": topics}))
            .into_response()
    } else {
        size.to_string().into_response()
    };
    answer.headers_mut().insert(
        axum::http::header::VARY,
        axum::http::HeaderValue::from_static("accept"),
    );
    Ok(answer)
}

/// The caller names `application/json` among what it accepts (any case, not at `q=0`).
fn accepts_json(headers: &HeaderMap) -> bool {
    headers
        .get_all(axum::http::header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|range| {
            let mut parts = range.split(';').map(str::trim);
            let media = parts.next().unwrap_or_default();
            let refused = parts.any(|p| {
                p.split_once('=').is_some_and(|(k, v)| {
                    k.trim().eq_ignore_ascii_case("q") && v.trim().parse::<f32>() == Ok(0.0)
                })
            });
            media.eq_ignore_ascii_case("application/json") && !refused
        })
}

/// `/healthz`: PostgreSQL and Kafka answer, and no component reports a problem. Both are
/// asked at each call, so a problem a failed request reported lasts until the next call
/// finds them answering: set by a produce and cleared only by the next successful one, a
/// Kafka blip left every replica unhealthy until traffic came, which an unready replica
/// never gets.
async fn healthz(State(state): State<ApiState>) -> Response {
    let db = tokio::time::timeout(Duration::from_secs(2), state.store.ping());
    let (db, brokers) = tokio::join!(db, kafka_problem_now(&state));
    let problem = match db {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e.to_string()),
        Err(_) => Some("no answer within 2 s".to_owned()),
    };
    crate::telemetry::health::set("api postgres", problem);
    crate::telemetry::health::set("api kafka", brokers);
    let (status, body) = crate::telemetry::healthz();
    (
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        body,
    )
        .into_response()
}

/// Whether the brokers answer now: one metadata request at a time, whose answer serves the
/// calls of the next second (an unauthenticated route must not make a request to Kafka, and
/// hold a blocking thread, per call). The look runs in a task of its own that holds the lock
/// until it is done: a caller that hangs up drops only its wait, and the next caller waits for
/// that look's answer. Seen: the hang-up released the lock with the look still running, so
/// callers that hung up started looks side by side, bounded only by the blocking pool.
async fn kafka_problem_now(state: &ApiState) -> Option<String> {
    let mut last = state.kafka_probe.clone().lock_owned().await;
    if let Some((at, problem)) = &*last {
        if at.elapsed() < Duration::from_secs(1) {
            return problem.clone();
        }
    }
    state.kafka_looks.fetch_add(1, Ordering::Relaxed);
    let state = state.clone();
    let look = tokio::spawn(async move {
        let probe =
            tokio::task::spawn_blocking(move || state.producer.reachable(Duration::from_secs(2)));
        let problem = match probe.await {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(format!("no broker answered within 2 s: {e}")),
            Err(e) => Some(e.to_string()),
        };
        *last = Some((Instant::now(), problem.clone()));
        problem
    });
    look.await.unwrap_or_else(|e| Some(e.to_string()))
}

async fn metrics(State(state): State<ApiState>, headers: HeaderMap) -> Response {
    if let Some(token) = &state.settings.metrics_token {
        if !crate::telemetry::bearer_matches(&headers, token.expose()) {
            return ApiError::Unauthorized.into_response();
        }
    }
    match crate::telemetry::prometheus() {
        Ok(handle) => handle.render().into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response(),
    }
}

async fn version() -> Json<Value> {
    Json(json!({"version": env!("CARGO_PKG_VERSION")}))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn json_is_for_callers_that_name_it() {
        let accepts = |values: &[&str]| {
            let mut headers = HeaderMap::new();
            for v in values {
                headers.append(axum::http::header::ACCEPT, v.parse().unwrap());
            }
            accepts_json(&headers)
        };
        assert!(accepts(&["application/json"]));
        assert!(accepts(&["text/html, Application/JSON;q=0.5"]));
        assert!(accepts(&["text/plain", "application/json"]));
        assert!(!accepts(&[]));
        assert!(!accepts(&["*/*"]));
        assert!(!accepts(&["text/plain"]));
        assert!(!accepts(&["application/json;q=0"]));
        assert!(!accepts(&["application/json-seq"]));
    }
}
