//! The web push sender (RFC 8030): each message is encrypted for its browser (encrypt.rs),
//! signed for its push service's origin (vapid.rs) and POSTed to its subscription's endpoint
//! with `TTL`, `Urgency` and `Topic`. Browsers' subscriptions point at many push services, so
//! there is one transport (HTTP/2 where offered, HTTP/1.1 otherwise) per origin, created on
//! first use and bounded: past `max_origins` the least recently used one is dropped (its
//! connections close once its last request ends). Retries on timers through the shared
//! attempt loop, as APNs and FCM, with one gate per push service: Mozilla's outage must not
//! look like one subscription's bad luck because Google's service still answers.

pub mod encrypt;
pub mod vapid;

pub use encrypt::{encrypt, EncryptError};
pub use vapid::{parse_private_key, Vapid, VapidError};

use crate::clock::SharedClock;
pub use crate::push::webpush::PUSH_SERVICES;
use crate::push::webpush::{self, check_subscription, EndpointRules, WebPushMessage};
use crate::push::{Outcome, RetryHint, Verdict};
use crate::sender::attempt::{attempt_until_final, Attempt, Deadline};
use crate::sender::endpoint::Endpoint;
use crate::sender::gate::{Gate, OnFault};
use crate::sender::pool::{PoolConfig, TransportError};
use crate::sender::retry::{retry_after, RetryPolicy};
use crate::sender::tls::{self, TlsError, TlsOptions};
use crate::sender::transport::{HttpVersion, Transport};
use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE, LOCATION};
use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderName, HeaderValue};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

static TTL: HeaderName = HeaderName::from_static("ttl");
static URGENCY: HeaderName = HeaderName::from_static("urgency");
static TOPIC: HeaderName = HeaderName::from_static("topic");

#[derive(Debug, Clone)]
pub struct WebPushConfig {
    /// The application server's VAPID key (the browsers subscribed with its public half).
    pub vapid_key: p256::SecretKey,
    /// VAPID `sub`: `mailto:` or `https:` contact for the push services' operators.
    pub subject: String,
    /// Which endpoints may be posted to (https only and no private hosts, in production).
    pub rules: EndpointRules,
    /// Hosts (or host suffixes) whose failures for every push to them pause the app, each
    /// judged apart (a gate each); see [`PUSH_SERVICES`]. On https's 443 only, unless the entry names a port
    /// (`127.0.0.1:8443`, `[::1]:8443`).
    pub push_services: Vec<String>,
    /// Trust only this CA (PEM) for the push services; the web's roots otherwise.
    pub ca_file: Option<PathBuf>,
    /// Skip server certificate verification (self-signed fakes only).
    pub insecure: bool,
    pub http: HttpVersion,
    /// Per origin.
    pub pool: PoolConfig,
    /// Origins with a live transport at once.
    pub max_origins: usize,
    pub retry: RetryPolicy,
    pub on_fault: OnFault,
    /// Names this sender in logs (`webpush game`); a push service's gate adds its entry.
    pub name: String,
    pub clock: SharedClock,
}

impl WebPushConfig {
    pub fn new(vapid_key: p256::SecretKey, subject: impl Into<String>) -> WebPushConfig {
        WebPushConfig {
            vapid_key,
            subject: subject.into(),
            rules: EndpointRules::STRICT,
            push_services: PUSH_SERVICES.iter().map(|s| s.to_string()).collect(),
            ca_file: None,
            insecure: false,
            http: HttpVersion::Auto,
            pool: PoolConfig {
                connections: 1,
                ..PoolConfig::default()
            },
            max_origins: 1000,
            retry: RetryPolicy::default(),
            on_fault: OnFault::default(),
            name: "webpush".into(),
            clock: crate::clock::system(),
        }
    }
}

/// Why a sender could not be built (all configuration problems).
#[derive(Debug, thiserror::Error)]
pub enum WebPushError {
    #[error(transparent)]
    Vapid(#[from] VapidError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("webpush: maxOrigins must be at least 1")]
    NoOrigins,
    #[error("webpush: a connection pool needs at least one connection per origin")]
    NoConnections,
    #[error("webpush: push service {0:?} is not a host, host:port or [IPv6]:port")]
    BadPushService(String),
}

/// A `push_services` entry: a host (or host suffix), and the port it must be on.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PushService {
    host: String,
    /// None: https's 443 only.
    port: Option<u16>,
}

impl PushService {
    /// `host`, `host:port`, `[IPv6]:port` or a bare IPv6 address.
    fn parse(entry: &str) -> Option<PushService> {
        let entry = entry.trim().to_ascii_lowercase();
        let (host, port) = match entry.strip_prefix('[') {
            Some(rest) => {
                let (host, tail) = rest.split_once(']')?;
                let port = match tail {
                    "" => None,
                    tail => Some(tail.strip_prefix(':')?.parse().ok()?),
                };
                (host.to_string(), port)
            }
            None => match entry.rsplit_once(':') {
                Some((host, port)) if !host.contains(':') => {
                    (host.to_string(), Some(port.parse().ok()?))
                }
                _ => (entry.clone(), None),
            },
        };
        (!host.is_empty()).then_some(PushService { host, port })
    }
}

/// A push's outcome with what the last attempt saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebPushDelivery {
    pub outcome: Outcome,
    /// The last answer's HTTP status, if any attempt got one.
    pub status: Option<u16>,
    /// The push service's `Location` for the message (201).
    pub location: Option<String>,
    pub attempts: u32,
    /// The last attempt's transport failure, in full.
    pub transport_error: Option<String>,
    /// The push ended because the endpoint failed, not for its own sake (`OnFault::Fail`).
    pub endpoint_fault: Option<String>,
}

impl WebPushDelivery {
    fn ended(outcome: Outcome) -> WebPushDelivery {
        WebPushDelivery {
            outcome,
            status: None,
            location: None,
            attempts: 0,
            transport_error: None,
            endpoint_fault: None,
        }
    }
}

/// A push service's answer to one attempt.
#[derive(Debug, Clone)]
pub struct WebPushResponse {
    pub status: u16,
    pub location: Option<String>,
}

#[derive(Clone, Debug)]
pub struct WebPushSender {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    vapid: Vapid,
    rules: EndpointRules,
    push_services: Vec<PushService>,
    tls: Arc<rustls::ClientConfig>,
    http: HttpVersion,
    pool: PoolConfig,
    origins: Mutex<Origins>,
    max_origins: usize,
    retry: RetryPolicy,
    /// One per `push_services` entry, in order, then one for every other origin.
    gates: Vec<Gate>,
    rng: Randomness,
    clock: SharedClock,
}

/// Encryption's randomness: the system's. A test can break it, as a failing system RNG would.
#[derive(Debug)]
struct Randomness {
    system: ring::rand::SystemRandom,
    #[cfg(test)]
    broken: std::sync::atomic::AtomicBool,
}

impl Randomness {
    fn new() -> Randomness {
        Randomness {
            system: ring::rand::SystemRandom::new(),
            #[cfg(test)]
            broken: Default::default(),
        }
    }

    fn get(&self) -> &dyn ring::rand::SecureRandom {
        #[cfg(test)]
        if self.broken.load(std::sync::atomic::Ordering::Relaxed) {
            // Zeros only: no P-256 key pair can be made of them.
            #[allow(deprecated)]
            return &ring::test::rand::FixedByteRandom { byte: 0 };
        }
        &self.system
    }
}

/// The live transports by origin, with a use counter for dropping the least recently used.
#[derive(Debug, Default)]
struct Origins {
    by_origin: HashMap<String, (Arc<Transport>, u64)>,
    uses: u64,
    opened: u64,
}

impl WebPushSender {
    /// Checks the configuration (VAPID key and subject, CA) without connecting.
    pub fn new(config: WebPushConfig) -> Result<WebPushSender, WebPushError> {
        if config.max_origins == 0 {
            return Err(WebPushError::NoOrigins);
        }
        if config.pool.connections == 0 {
            return Err(WebPushError::NoConnections);
        }
        let push_services = config
            .push_services
            .iter()
            .map(|entry| {
                PushService::parse(entry).ok_or_else(|| WebPushError::BadPushService(entry.clone()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let vapid = Vapid::new(
            &config.vapid_key,
            &config.subject,
            config.clock.clone(),
            config.max_origins,
        )?;
        let tls = tls::client_config(&TlsOptions {
            ca_file: config.ca_file.clone(),
            insecure: config.insecure,
            client_identity: None,
        })?;
        let gates = config
            .push_services
            .iter()
            .map(|entry| format!("{} {}", config.name, entry.trim()))
            .chain([config.name.clone()])
            .map(|name| Gate::new(name, config.on_fault))
            .collect();
        Ok(WebPushSender {
            inner: Arc::new(Inner {
                vapid,
                rules: config.rules,
                push_services,
                tls,
                http: config.http,
                pool: config.pool,
                origins: Mutex::new(Origins::default()),
                max_origins: config.max_origins,
                retry: config.retry,
                gates,
                rng: Randomness::new(),
                clock: config.clock,
            }),
        })
    }

    /// Every gate: one per push service (`push_services`, in order), then the other origins'.
    pub fn gates(&self) -> &[Gate] {
        &self.inner.gates
    }

    /// The gate of the endpoints at `origin` (`https://host[:port]`): its push service's, or
    /// the one of every origin that is no push service's.
    pub fn gate_for(&self, origin: &str) -> &Gate {
        self.gate_of(self.push_service(origin))
    }

    /// The gate of a push service (its index), or of the other origins.
    fn gate_of(&self, service: Option<usize>) -> &Gate {
        // The other origins' gate is the last, after one per `push_services` entry.
        let others = self.inner.gates.len() - 1;
        &self.inner.gates[service.unwrap_or(others)]
    }

    /// The VAPID public key (browsers subscribe with it as `applicationServerKey`).
    pub fn public_key(&self) -> &str {
        self.inner.vapid.public_key()
    }

    /// Origins with a live transport now, and transports opened so far.
    pub fn origins(&self) -> (usize, u64) {
        let origins = self.inner.origins.lock();
        (origins.by_origin.len(), origins.opened)
    }

    /// Sends with retries; the outcome is always final. A subscription that cannot be sent
    /// to (bad keys, a bad URL) is `TokenInvalid`, so it is deleted like a dead token; one our
    /// endpoint rules refuse (http, a private host) is `Rejected`, and kept: other rules allow
    /// it. A payload too large to encrypt is `Malformed`; a message whose
    /// `push_expiry` passes before an attempt is `Expired`, and each attempt's `TTL` is at most
    /// the seconds it has left.
    pub async fn send(&self, msg: &WebPushMessage) -> WebPushDelivery {
        let deadline = Deadline::from_push_expiry(msg.push_expiry, self.inner.clock.now());
        if deadline.passed() {
            return WebPushDelivery::ended(Outcome::Expired);
        }
        let sub = match check_subscription(&msg.subscription, self.inner.rules) {
            Ok(sub) => sub,
            Err(e) => {
                tracing::debug!(error = %e, "Refused web push subscription.");
                let reason = e.reason().into();
                return WebPushDelivery::ended(if e.by_our_rules() {
                    Outcome::Rejected { reason }
                } else {
                    Outcome::TokenInvalid {
                        reason,
                        timestamp_ms: None,
                    }
                });
            }
        };
        let seal = || encrypt(&msg.payload, &sub.p256dh, &sub.auth, self.inner.rng.get());
        // A failure of our own randomness or ciphers is left to the attempts, where it is a
        // fault (the subscription is not to blame); the message's and the key's end it here.
        let mut body = match seal() {
            Ok(body) => Some(Bytes::from(body)),
            Err(e @ EncryptError::TooLarge(_)) => {
                return WebPushDelivery::ended(Outcome::Malformed {
                    reason: e.to_string(),
                })
            }
            Err(e @ EncryptError::BadPeerKey) => {
                return WebPushDelivery::ended(bad_key(&e));
            }
            Err(EncryptError::Random) => None,
        };
        let mut headers = HeaderMap::with_capacity(6);
        headers.insert(CONTENT_ENCODING, HeaderValue::from_static("aes128gcm"));
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        if let Some(urgency) = msg.urgency {
            headers.insert(URGENCY.clone(), HeaderValue::from_static(urgency.as_str()));
        }
        if let Some(topic) = &msg.topic {
            // Checked by the parser; a value that still is not a header is refused.
            match HeaderValue::from_str(topic) {
                Ok(v) if webpush::valid_topic(topic) => {
                    headers.insert(TOPIC.clone(), v);
                }
                _ => {
                    return WebPushDelivery::ended(Outcome::Malformed {
                        reason: format!("topic {topic:?} is not 1-32 base64url characters"),
                    })
                }
            }
        }
        let path = sub
            .endpoint
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        let service = self.push_service(&sub.origin);
        let gate = self.gate_of(service);
        let request = Request {
            origin: &sub.origin,
            path: &path,
            headers: &headers,
            trusted: service.is_some(),
        };
        let done = attempt_until_final(&self.inner.retry, gate, deadline, move || {
            // Sealed once, by the first attempt whose randomness works.
            let sealed = match &body {
                Some(sealed) => Ok(sealed.clone()),
                None => seal().map(|b| body.insert(Bytes::from(b)).clone()),
            };
            // What the push service keeps the message for: never past its `push_expiry`.
            let ttl = deadline.left().map_or(msg.ttl, |left| {
                msg.ttl
                    .min(u32::try_from(left.as_secs()).unwrap_or(u32::MAX))
            });
            self.judged_attempt(request, ttl, sealed)
        })
        .await;
        let mut delivery = WebPushDelivery::ended(done.outcome);
        if let Some(response) = done.answer {
            delivery.status = Some(response.status);
            delivery.location = response.location;
        }
        delivery.attempts = done.attempts;
        delivery.transport_error = done.error;
        delivery.endpoint_fault = done.endpoint_fault;
        delivery
    }

    /// One attempt and its verdict.
    async fn judged_attempt(
        &self,
        request: Request<'_>,
        ttl: u32,
        sealed: Result<Bytes, EncryptError>,
    ) -> Attempt<WebPushResponse> {
        let body = match sealed {
            Ok(body) => body,
            Err(e @ EncryptError::BadPeerKey) => return Attempt::unsent(bad_key(&e)),
            Err(e @ EncryptError::TooLarge(_)) => {
                return Attempt::unsent(Outcome::Malformed {
                    reason: e.to_string(),
                })
            }
            // Our randomness or ciphers: every push would fail alike.
            Err(e @ EncryptError::Random) => return Attempt::fault("encrypt", e.to_string()),
        };
        let Request {
            origin,
            path,
            headers,
            trusted,
        } = request;
        // A local fake's refusals of our key are judged as a push service's (taken as any
        // host's, a wrong VAPID key rejected the README's seed backlog, then gave it up, and
        // the app never paused); its other failures stay the subscription's, as any host's.
        let judged = trusted || self.local_fake(origin);
        let mut key_refused = false;
        let mut attempt = match self
            .attempt(origin, path, headers, ttl, body, trusted)
            .await
        {
            // A 401 or 403 refuses our VAPID token (RFC 8292 §4.2): our key, `aud`, `exp` or
            // clock, or a key the subscription was not made for (autopush: 401, errno 109;
            // Apple: 400 `VapidPkHashMismatch`, which rejected a backlog after a key change).
            // Every push to a push service refused alike is ours (a key rotation, a skewed
            // clock): retried, the refusals count toward its outage and pause the app (its
            // gate). One subscription's alone gives up after its retries while the others are
            // delivered. Final at once, it rejected a whole backlog; a fault at once, one
            // subscription paused the app.
            Ok((response, Verdict::Final(Outcome::Rejected { reason })))
                if judged
                    && (matches!(response.status, 401 | 403)
                        || reason == "VapidPkHashMismatch") =>
            {
                // The retry signs a new token: the refused one may be from a skewed clock.
                self.inner.vapid.forget(origin);
                key_refused = true;
                Attempt::answered(response, Verdict::Retry(RetryHint::new(reason)))
            }
            Ok((response, verdict)) => Attempt::answered(response, verdict),
            Err(AttemptError::Vapid(e)) => Attempt::fault("vapid", e.to_string()),
            Err(AttemptError::Origin(e)) => Attempt::unsent(Outcome::TokenInvalid {
                reason: format!("bad_endpoint: {e}"),
                timestamp_ms: None,
            }),
            // No connection (refused, no such name, TLS) is retried, not a fault: a name under
            // a push service's suffix may not exist. Every push to a push service failing so
            // counts toward its outage and pauses the app; one subscription's failures give up
            // after its retries.
            Err(AttemptError::Transport(e)) => {
                tracing::debug!(error = %e, "Web push transport failure.");
                Attempt {
                    answer: None,
                    verdict: Verdict::Retry(RetryHint::new(e.kind()).reconnect()),
                    error: Some(e.to_string()),
                    detail: Some(e.detail()),
                    unsent: false,
                }
            }
        };
        // A server that is no push service we know is this subscription's alone: its
        // failures never pause the app's other pushes, and its `Retry-After` is not waited
        // out past a few seconds (a slot held a minute per retry, by a host anyone can name).
        if let (Verdict::Retry(hint), false) = (&mut attempt.verdict, trusted || key_refused) {
            hint.own = true;
            hint.after = hint.after.map(|after| after.min(UNTRUSTED_MAX_RETRY_AFTER));
        }
        attempt
    }

    /// A local host where local endpoints are allowed (fakes only): the fake push service a
    /// team tries this with, whose refusals of our key are judged as a push service's.
    fn local_fake(&self, origin: &str) -> bool {
        self.inner.rules.allow_private
            && origin
                .parse::<http::Uri>()
                .ok()
                .and_then(|uri| uri.host().map(crate::push::webpush::is_private_host))
                .unwrap_or(false)
    }

    /// The push service (its `push_services` index) that `origin` is of: its host is an
    /// entry's or ends in `.` and it, on the entry's port, or on https's 443 for an entry
    /// without one. Any other port is no push service's (`fcm.googleapis.com:9` is someone's
    /// subscription).
    fn push_service(&self, origin: &str) -> Option<usize> {
        let uri = origin.parse::<http::Uri>().ok()?;
        let host = uri.host().unwrap_or_default();
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        let https = uri.scheme_str() == Some("https");
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        self.inner.push_services.iter().position(|service| {
            let on_port = match service.port {
                Some(p) => p == port,
                None => https && port == 443,
            };
            on_port
                && (host == service.host
                    || host
                        .strip_suffix(service.host.as_str())
                        .is_some_and(|head| head.ends_with('.')))
        })
    }

    async fn attempt(
        &self,
        origin: &str,
        path: &PathAndQuery,
        headers: &HeaderMap,
        ttl: u32,
        body: Bytes,
        trusted: bool,
    ) -> Result<(WebPushResponse, Verdict), AttemptError> {
        let transport = self.transport(origin)?;
        let mut headers = headers.clone();
        headers.insert(TTL.clone(), HeaderValue::from(ttl));
        headers.insert(
            AUTHORIZATION,
            self.inner
                .vapid
                .authorization(origin)
                .map_err(AttemptError::Vapid)?,
        );
        let (parts, reply) = transport
            .post(path, &headers, body)
            .await
            .map_err(AttemptError::Transport)?;
        let status = parts.status.as_u16();
        let header = |name: HeaderName| {
            parts
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        // Only a push service's words become the reason (a metric label): any other server
        // is named by its status, so it cannot fill the labels with text of its choosing.
        let reason = if trusted {
            reason(&reply)
        } else {
            String::new()
        };
        let verdict = match status {
            // A push service says a subscription is gone in its own words, or in none (WNS);
            // a web page is a proxy's or a wrong URL's (it deleted a whole table of
            // subscriptions). Retried as a refused key is: every push answered so pauses the
            // app, one subscription's alone gives up, kept.
            404 | 410 if trusted && is_html(&reply) && page_title(&reply).is_none() => {
                Verdict::Retry(RetryHint::new(format!(
                    "{}_web_page",
                    webpush::status_reason(status)
                )))
            }
            _ => webpush::verdict(status, retry_after(&parts.headers), &reason),
        };
        Ok((
            WebPushResponse {
                status,
                location: header(LOCATION),
            },
            verdict,
        ))
    }

    /// The origin's transport, opened on first use; the least recently used one is dropped
    /// when there are too many.
    fn transport(&self, origin: &str) -> Result<Arc<Transport>, AttemptError> {
        let mut origins = self.inner.origins.lock();
        origins.uses += 1;
        let now = origins.uses;
        if let Some((transport, used)) = origins.by_origin.get_mut(origin) {
            *used = now;
            return Ok(transport.clone());
        }
        let mut target = Endpoint::Custom(origin.to_string())
            .target()
            .map_err(|e| AttemptError::Origin(e.to_string()))?;
        // A subscription's host is someone else's choice: a name that resolves into our
        // network is not connected to (the literal addresses were refused already). A push
        // service's name is the operator's choice (an egress proxy may answer for it).
        target.public_only = !self.inner.rules.allow_private && self.push_service(origin).is_none();
        let tls = target.tls.then(|| self.inner.tls.clone());
        let transport = Arc::new(
            Transport::new(target, tls, self.inner.http, self.inner.pool.clone())
                .map_err(|e| AttemptError::Origin(e.to_string()))?,
        );
        if origins.by_origin.len() >= self.inner.max_origins {
            let oldest = origins
                .by_origin
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(origin, _)| origin.clone());
            if let Some(oldest) = oldest {
                origins.by_origin.remove(&oldest);
            }
        }
        origins.opened += 1;
        origins
            .by_origin
            .insert(origin.to_string(), (transport.clone(), now));
        Ok(transport)
    }
}

/// A subscription key that is no P-256 public key: the subscription's fault.
fn bad_key(e: &EncryptError) -> Outcome {
    Outcome::TokenInvalid {
        reason: format!("bad_subscription_key: {e}"),
        timestamp_ms: None,
    }
}

/// What every attempt of one push sends, and where.
#[derive(Clone, Copy)]
struct Request<'a> {
    origin: &'a str,
    path: &'a PathAndQuery,
    headers: &'a HeaderMap,
    /// The origin is a push service's (`push_services`).
    trusted: bool,
}

/// The longest `Retry-After` honoured from a host that is no push service.
const UNTRUSTED_MAX_RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(5);

/// Why one attempt got no answer.
#[derive(Debug)]
enum AttemptError {
    Transport(TransportError),
    Vapid(VapidError),
    /// The origin cannot be connected to at all (not a host name a TLS client can use).
    Origin(String),
}

/// The body is an HTML page (a proxy's or a web server's error page).
fn is_html(body: &[u8]) -> bool {
    let start = body.trim_ascii_start();
    start.first() == Some(&b'<')
}

/// The title of an HTML page when it is one word (Google's error pages: `NotRegistered`,
/// `UnauthorizedRegistration`), not a sentence (nginx's "404 Not Found").
fn page_title(body: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(&body[..body.len().min(4096)]).to_ascii_lowercase();
    let start = text.find("<title>")? + "<title>".len();
    let end = start + text[start..].find("</title>")?;
    let original = String::from_utf8_lossy(&body[..body.len().min(4096)]);
    let title = original.get(start..end)?.trim();
    (!title.is_empty() && title.len() <= 64 && title.chars().all(|c| c.is_ascii_alphanumeric()))
        .then(|| title.to_string())
}

/// The push service's reason, from its JSON error body (autopush: `{"errno","message"}`,
/// FCM: `{"error":{"message"}}`, Apple: `{"reason"}`) or its text, on one line, bounded.
fn reason(body: &[u8]) -> String {
    if body.is_empty() {
        return String::new();
    }
    // A web page is no push service's words (its text would become a metric label), but
    // for Google's error page, whose title is the reason (`<TITLE>NotRegistered</TITLE>`).
    if is_html(body) {
        return page_title(body).unwrap_or_default();
    }
    let text = match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(v) => v
            .get("reason")
            .or_else(|| v.get("message"))
            .or_else(|| v.get("error").and_then(|e| e.get("message")))
            .or_else(|| v.get("error"))
            .and_then(|m| m.as_str())
            .map(str::to_string)
            .unwrap_or_default(),
        Err(_) => String::from_utf8_lossy(body).into_owned(),
    };
    // A line break would split a StatsD line or a log line (an HTML error page has many).
    let words: Vec<&str> = text.split_whitespace().collect();
    words.join(" ").chars().take(200).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A one-byte push to a generated subscription `id` at `origin`.
    fn test_message(origin: &str, id: &str) -> WebPushMessage {
        WebPushMessage {
            subscription: crate::push::webpush::generated_subscription(origin, id),
            payload: b"x".to_vec(),
            ttl: 60,
            urgency: None,
            topic: None,
            metadata: Default::default(),
            push_expiry: 0,
        }
    }

    #[test]
    fn push_services_match_by_host_suffix_on_their_port() {
        let key = crate::push::webpush::generated_keys("k").0;
        let mut config = WebPushConfig::new(key, "mailto:a@b.c");
        config.push_services.push("127.0.0.1:8443".into());
        config.push_services.push("[::1]:8080".into());
        let sender = WebPushSender::new(config).expect("valid");
        assert!(sender.push_service("https://fcm.googleapis.com").is_some());
        assert!(sender
            .push_service("https://fcm.googleapis.com:443")
            .is_some());
        assert!(sender.push_service("https://web.push.apple.com").is_some());
        assert!(sender
            .push_service("https://updates.push.services.mozilla.com")
            .is_some());
        assert!(sender.push_service("https://127.0.0.1:8443").is_some());
        assert!(sender.push_service("http://[::1]:8080").is_some());
        assert!(sender
            .push_service("https://evilpush.apple.com.example")
            .is_none());
        assert!(sender.push_service("https://notpush.apple.com").is_none());
        assert!(sender.push_service("https://example.com").is_none());
        // Another port is not the push service: someone's server, whose failures are its own.
        assert!(sender
            .push_service("https://fcm.googleapis.com:9")
            .is_none());
        assert!(sender
            .push_service("https://web.push.apple.com:8443")
            .is_none());
        assert!(sender.push_service("http://fcm.googleapis.com").is_none());
        assert!(sender.push_service("https://127.0.0.1").is_none());
        assert!(sender.push_service("https://127.0.0.1:9").is_none());
        // A gate per push service; every other origin shares one.
        let gate = |origin: &str| sender.gate_for(origin).name().to_string();
        assert_eq!(
            gate("https://fcm.googleapis.com"),
            "webpush fcm.googleapis.com"
        );
        assert_eq!(
            gate("https://updates.push.services.mozilla.com"),
            "webpush push.services.mozilla.com"
        );
        assert_eq!(gate("https://127.0.0.1:8443"), "webpush 127.0.0.1:8443");
        assert_eq!(gate("https://example.com"), "webpush");
        assert_eq!(sender.gates().len(), PUSH_SERVICES.len() + 3);
    }

    #[test]
    fn push_service_entries_parse() {
        let parse = |entry: &str| PushService::parse(entry).map(|s| (s.host, s.port));
        assert_eq!(
            parse("push.apple.com"),
            Some(("push.apple.com".into(), None))
        );
        assert_eq!(
            parse("127.0.0.1:8443"),
            Some(("127.0.0.1".into(), Some(8443)))
        );
        assert_eq!(parse("[::1]:8443"), Some(("::1".into(), Some(8443))));
        assert_eq!(parse("::1"), Some(("::1".into(), None)));
        assert_eq!(parse("host:x"), None);
        assert_eq!(parse(""), None);
        let key = crate::push::webpush::generated_keys("k").0;
        let mut config = WebPushConfig::new(key, "mailto:a@b.c");
        config.push_services = vec!["host:99999".into()];
        assert!(matches!(
            WebPushSender::new(config),
            Err(WebPushError::BadPushService(_))
        ));
    }

    /// Local endpoints allowed, over HTTP/1.1, two attempts a push.
    fn local_config() -> WebPushConfig {
        let key = crate::push::webpush::generated_keys("k").0;
        let mut config = WebPushConfig::new(key, "mailto:a@b.c");
        config.rules = EndpointRules::LOCAL;
        config.http = HttpVersion::Http1;
        config.retry.max_attempts = 2;
        config
    }

    /// Serves `app` on a free port of 127.0.0.1; its address.
    async fn serve_local(app: axum::Router) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        tokio::spawn(async move { axum::serve(listener, app).await });
        addr
    }

    /// The system's randomness failing is ours, not the subscription's: never `TokenInvalid`
    /// (which deletes it). A one-shot send reports the fault; the pusher waits at the push
    /// service's gate, sends nothing meanwhile, and delivers once encryption works again.
    #[tokio::test]
    async fn a_failing_random_number_generator_is_a_fault_not_a_bad_subscription() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::time::Duration;
        let requests = Arc::new(AtomicUsize::new(0));
        let seen = requests.clone();
        let addr = serve_local(axum::Router::new().fallback(move || {
            seen.fetch_add(1, Ordering::SeqCst);
            async {
                (
                    http::StatusCode::CREATED,
                    [(http::header::LOCATION, "/m/1")],
                )
            }
        }))
        .await;
        let origin = format!("http://{addr}");
        let broken_sender = |on_fault: OnFault| {
            let key = crate::push::webpush::generated_keys("k").0;
            let mut config = WebPushConfig::new(key, "mailto:a@b.c");
            config.rules = EndpointRules::LOCAL;
            config.push_services = vec![addr.clone()];
            config.http = HttpVersion::Http1;
            config.on_fault = on_fault;
            let sender = WebPushSender::new(config).expect("valid");
            sender.inner.rng.broken.store(true, Ordering::SeqCst);
            sender
        };
        let message = test_message(&origin, "a1");

        let d = broken_sender(OnFault::Fail).send(&message).await;
        assert!(matches!(d.outcome, Outcome::GaveUp { .. }), "{d:?}");
        assert!(
            d.endpoint_fault
                .as_deref()
                .is_some_and(|f| f.starts_with("encrypt: ")),
            "{d:?}"
        );

        let sender = broken_sender(OnFault::Wait);
        let send = tokio::spawn({
            let (sender, message) = (sender.clone(), message.clone());
            async move { sender.send(&message).await }
        });
        let mut health = sender.gate_for(&origin).health();
        tokio::time::timeout(Duration::from_secs(10), health.wait_for(|h| !h.is_up()))
            .await
            .expect("the push service's gate closes")
            .expect("gate");
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!send.is_finished(), "the push waits");
        assert_eq!(requests.load(Ordering::SeqCst), 0);
        sender.inner.rng.broken.store(false, Ordering::SeqCst);
        let d = tokio::time::timeout(Duration::from_secs(10), send)
            .await
            .expect("delivered once encryption works")
            .expect("send");
        assert_eq!((d.outcome, d.status), (Outcome::Delivered, Some(201)));
        assert_eq!(requests.load(Ordering::SeqCst), 1);
    }

    /// A host that is no push service is named by its status, not its words (they would be
    /// metric labels of its choosing), and its `Retry-After` is not waited out for an hour.
    #[tokio::test]
    async fn a_host_that_is_no_push_service_gets_no_say() {
        use std::time::Duration;
        let addr = serve_local(axum::Router::new().fallback(|uri: http::Uri| async move {
            if uri.path().ends_with("busy") {
                (
                    http::StatusCode::TOO_MANY_REQUESTS,
                    [(http::header::RETRY_AFTER, "3600")],
                    "{\"message\":\"busy\"}",
                )
            } else {
                (
                    http::StatusCode::BAD_REQUEST,
                    [(http::header::CACHE_CONTROL, "no-store")],
                    "{\"message\":\"label 1\\npush.ack:1|c\"}",
                )
            }
        }))
        .await;
        let mut config = local_config();
        config.retry.max_retry_after = Duration::from_secs(3600);
        let sender = WebPushSender::new(config).expect("valid");
        // By the machine's name (/etc/hosts: 127.0.0.1): a local fake's is judged as a push
        // service's.
        let name = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
        let port = addr.rsplit(':').next().unwrap_or_default();
        let message = |id: &str| test_message(&format!("http://{}:{port}", name.trim()), id);
        let d = sender.send(&message("a1")).await;
        assert_eq!(
            d.outcome,
            Outcome::Rejected {
                reason: "bad_request".into()
            }
        );
        let d = tokio::time::timeout(Duration::from_secs(30), sender.send(&message("a1busy")))
            .await
            .expect("Retry-After: 3600 is not waited out");
        assert!(
            matches!(&d.outcome, Outcome::GaveUp { reason } if reason == "too_many_requests"),
            "{d:?}"
        );
        assert_eq!(d.attempts, 2);
    }

    /// A local fake (local endpoints allowed) refusing our VAPID token: judged as a push
    /// service's refusal, so that every push refused pauses the app. Seen: rejected at once,
    /// and the README's seed backlog drained on a wrong key.
    #[tokio::test]
    async fn a_local_fake_refusing_our_key_pauses_the_app() {
        use std::time::Duration;
        let addr =
            serve_local(axum::Router::new().fallback(|| async { http::StatusCode::FORBIDDEN }))
                .await;
        let mut config = local_config();
        config.retry.base = Duration::from_millis(1);
        config.on_fault = OnFault::Wait;
        let sender = WebPushSender::new(config).expect("valid");
        let mut health = sender
            .gates()
            .last()
            .expect("the other origins' gate")
            .health();
        let send = tokio::spawn({
            let sender = sender.clone();
            let message = test_message(&format!("http://{addr}"), "a1");
            async move { sender.send(&message).await }
        });
        tokio::time::timeout(Duration::from_secs(20), health.wait_for(|h| !h.is_up()))
            .await
            .expect("the app pauses")
            .expect("the gate lives");
        assert!(!send.is_finished(), "the push waits, not ended");
        send.abort();
    }

    /// Production rules: a subscription whose host name resolves to this machine is never
    /// connected to; the same name listed as a push service is (the operator chose it).
    #[tokio::test]
    async fn a_name_resolving_into_our_network_is_not_connected_to() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::time::Duration;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let seen = accepted.clone();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                seen.fetch_add(1, Ordering::SeqCst);
                drop(socket);
            }
        });
        // The machine's own name resolves to 127.0.0.1 (/etc/hosts); `localhost` is refused
        // by name before any lookup.
        let name = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
        let origin = format!("https://{}:{port}", name.trim());
        let message = test_message(&origin, "a1");
        let sender = |push_services: Vec<String>| {
            let key = crate::push::webpush::generated_keys("k").0;
            let mut config = WebPushConfig::new(key, "mailto:a@b.c");
            config.push_services = push_services;
            config.retry.max_attempts = 1;
            config.on_fault = OnFault::Fail;
            WebPushSender::new(config).expect("valid")
        };
        let d = tokio::time::timeout(Duration::from_secs(20), sender(vec![]).send(&message))
            .await
            .expect("bounded");
        assert!(matches!(d.outcome, Outcome::GaveUp { .. }), "{d:?}");
        assert!(
            d.transport_error
                .as_deref()
                .is_some_and(|e| e.contains("no public address")),
            "{d:?}"
        );
        assert_eq!(accepted.load(Ordering::SeqCst), 0);
        let listed = format!("{}:{port}", name.trim());
        let _ = tokio::time::timeout(Duration::from_secs(20), sender(vec![listed]).send(&message))
            .await
            .expect("bounded");
        assert!(
            accepted.load(Ordering::SeqCst) > 0,
            "a push service is connected to"
        );
    }

    #[test]
    fn reasons_come_from_the_body() {
        assert_eq!(
            reason(br#"{"code":404,"errno":102,"error":"Not Found","message":"Request did not validate invalid token"}"#),
            "Request did not validate invalid token"
        );
        assert_eq!(reason(br#"{"error":{"message":"x"}}"#), "x");
        assert_eq!(reason(b"plain"), "plain");
        // Apple's web push service.
        assert_eq!(reason(br#"{"reason":"BadJwtToken"}"#), "BadJwtToken");
        // A web page is nobody's reason (its status names it), but for a one-word title
        // (Google's error pages).
        assert_eq!(
            reason(b"<html><head><title>404 Not Found</title></head></html>"),
            ""
        );
        assert_eq!(reason(b"\n <!DOCTYPE html><html>"), "");
        assert_eq!(
            reason(b"<HTML>\n<HEAD>\r\n<TITLE>NotRegistered</TITLE>"),
            "NotRegistered"
        );
        assert_eq!(reason(b""), "");
    }
}
