//! The FCM sender: HTTP v1 (`/v1/projects/{p}/messages:send`, OAuth2 from a service account)
//! or the legacy HTTP API (`/fcm/send`, `Authorization: key=...`; Google shut the real one down
//! in 2024, kept for the seed's configuration and for fakes). HTTP/2 over the shared pool by
//! default, HTTP/1.1 (keep-alive) on request. Retries on timers, as APNs.
//! Clone it freely (an `Arc` inside); every send runs concurrently.

pub mod message;
pub mod oauth;
pub mod response;

use crate::clock::SharedClock;
use crate::push::gcm::{is_topic_address, GcmMessage};
use crate::push::{Outcome, RetryHint, Verdict};
use crate::sender::attempt::{attempt_until_final, Attempt, Deadline};
use crate::sender::endpoint::{Endpoint, EndpointError};
use crate::sender::gate::{Gate, OnFault};
use crate::sender::guard::RefusalGuard;
use crate::sender::pool::{Pool, PoolConfig, PoolError, TransportError};
use crate::sender::retry::RetryPolicy;
use crate::sender::tls::{self, TlsError, TlsOptions};
use crate::sender::transport::Transport;
use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE};
use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderValue};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use crate::sender::http1::Http1Client;
pub use crate::sender::transport::HttpVersion;
use message::ttl_cap;
pub use message::{legacy_body, v1_body, TranslateError};
pub use oauth::{OAuthError, ServiceAccount, TokenSource, TokenStats};
pub use response::{FcmResponse, LegacyReply};

/// FCM's production base URL.
pub const FCM_PRODUCTION_URL: &str = "https://fcm.googleapis.com";
/// Most tokens one legacy request may carry.
pub const LEGACY_MAX_TOKENS: usize = 1000;

/// How we prove who we are to FCM; also picks the API. `Debug` never shows the key.
#[derive(Clone)]
pub enum FcmAuth {
    /// HTTP v1 with OAuth2 access tokens from this service account.
    ServiceAccount(ServiceAccount),
    /// The legacy HTTP API with a server key (`--apiKey` in the seed).
    ApiKey(String),
}

impl std::fmt::Debug for FcmAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FcmAuth::ServiceAccount(account) => {
                f.debug_tuple("ServiceAccount").field(account).finish()
            }
            FcmAuth::ApiKey(_) => f.write_str("ApiKey(<redacted>)"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct FcmConfig {
    /// `https://fcm.googleapis.com` by default; a fake's `https://127.0.0.1:PORT` or h2c
    /// `http://...` otherwise.
    pub base_url: String,
    pub auth: FcmAuth,
    /// The project to send as; taken from the service account when `None`.
    pub project_id: Option<String>,
    /// Trust only this CA (PEM) for FCM and the token endpoint.
    pub ca_file: Option<PathBuf>,
    /// Skip server certificate verification (self-signed fakes only).
    pub insecure: bool,
    pub http: HttpVersion,
    pub pool: PoolConfig,
    pub retry: RetryPolicy,
    /// What a send does when the endpoint or the credentials fail (sender/gate.rs).
    pub on_fault: OnFault,
    /// Names this sender in logs (`gcm game`).
    pub name: String,
    /// Renew the OAuth token when less than this is left of its life.
    pub renew_before: Duration,
    pub clock: SharedClock,
}

impl FcmConfig {
    pub fn new(auth: FcmAuth) -> FcmConfig {
        FcmConfig {
            base_url: FCM_PRODUCTION_URL.to_string(),
            auth,
            project_id: None,
            ca_file: None,
            insecure: false,
            http: HttpVersion::Auto,
            pool: PoolConfig::default(),
            retry: RetryPolicy::default(),
            on_fault: OnFault::default(),
            name: "gcm".into(),
            renew_before: Duration::from_secs(300),
            clock: crate::clock::system(),
        }
    }
}

/// Why a sender could not be built (all configuration problems).
#[derive(Debug, thiserror::Error)]
pub enum FcmError {
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Pool(#[from] PoolError),
    #[error(transparent)]
    OAuth(#[from] OAuthError),
    #[error("no FCM project id: the service-account file has no project_id; give one (--project)")]
    NoProject,
    #[error("FCM project id {0:?} may hold only letters, digits, '-', '_' and '.'")]
    BadProject(String),
    #[error("the FCM API key is empty or not a valid header value")]
    BadApiKey,
}

/// A push's outcome with what the last attempt saw (for the CLI and feedback records).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FcmDelivery {
    pub outcome: Outcome,
    /// The last answer's HTTP status, if any attempt got one.
    pub status: Option<u16>,
    /// FcmError code (or canonical status) for v1, the result error for legacy.
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    /// v1 message `name`, legacy `message_id`.
    pub message_id: Option<String>,
    /// Legacy: FCM says to store this token instead of the one sent.
    pub canonical_registration_id: Option<String>,
    pub attempts: u32,
    /// The last attempt's transport or token failure, or the words of an answer that was the
    /// endpoint's fault (Google's `error.message`), in full.
    pub transport_error: Option<String>,
    /// The push ended because the endpoint or the credentials failed, not for its own sake
    /// (only when the sender fails fast, `OnFault::Fail`): the cause in full.
    pub endpoint_fault: Option<String>,
}

impl FcmDelivery {
    fn new(outcome: Outcome, attempts: u32) -> FcmDelivery {
        FcmDelivery {
            outcome,
            status: None,
            error_code: None,
            error_message: None,
            message_id: None,
            canonical_registration_id: None,
            attempts,
            transport_error: None,
            endpoint_fault: None,
        }
    }

    fn record(&mut self, r: &FcmResponse) {
        self.status = Some(r.status);
        self.error_code = r.error_code.clone();
        self.error_message = r.error_message.clone();
        self.message_id = r.message_id.clone();
        self.canonical_registration_id = r.canonical_registration_id.clone();
        self.transport_error = None;
    }
}

#[derive(Clone, Debug)]
pub struct FcmSender {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    transport: Transport,
    api: Api,
    retry: RetryPolicy,
    gate: Gate,
    /// The wrong-project guard (sender/guard.rs), in `OnFault::Wait` only (the production
    /// pusher): `pusher send` reports what FCM said.
    project: Option<RefusalGuard>,
    clock: SharedClock,
}

#[derive(Debug)]
enum Api {
    V1 {
        tokens: TokenSource,
        path: PathAndQuery,
    },
    Legacy {
        authorization: HeaderValue,
    },
}

/// Why one attempt got no FCM answer.
#[derive(Debug)]
enum AttemptError {
    Transport(TransportError),
    OAuth(OAuthError),
}

impl FcmSender {
    /// Checks the whole configuration (endpoint, CA, key, project) without connecting.
    pub fn new(config: FcmConfig) -> Result<FcmSender, FcmError> {
        let target = Endpoint::Custom(config.base_url.clone()).target()?;
        let tls_for = |https: bool| -> Result<Option<Arc<rustls::ClientConfig>>, TlsError> {
            if !https {
                return Ok(None);
            }
            tls::client_config(&TlsOptions {
                ca_file: config.ca_file.clone(),
                insecure: config.insecure,
                client_identity: None,
            })
            .map(Some)
        };
        let api = match &config.auth {
            FcmAuth::ServiceAccount(account) => {
                let project = config
                    .project_id
                    .clone()
                    .or_else(|| account.project_id.clone())
                    .ok_or(FcmError::NoProject)?;
                if project.is_empty()
                    || !project
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
                {
                    return Err(FcmError::BadProject(project));
                }
                let path = PathAndQuery::try_from(format!("/v1/projects/{project}/messages:send"))
                    .map_err(|_| FcmError::BadProject(project.clone()))?;
                let tokens = TokenSource::new(
                    account,
                    tls_for,
                    config.pool.request_timeout,
                    config.renew_before,
                    config.clock.clone(),
                )?;
                Api::V1 { tokens, path }
            }
            FcmAuth::ApiKey(key) => {
                if key.trim().is_empty() {
                    return Err(FcmError::BadApiKey);
                }
                let mut authorization = HeaderValue::from_str(&format!("key={}", key.trim()))
                    .map_err(|_| FcmError::BadApiKey)?;
                authorization.set_sensitive(true);
                Api::Legacy { authorization }
            }
        };
        let tls_config = tls_for(target.tls)?;
        let transport = Transport::new(target, tls_config, config.http, config.pool.clone())?;
        Ok(FcmSender {
            inner: Arc::new(Inner {
                transport,
                api,
                retry: config.retry,
                project: (config.on_fault == OnFault::Wait).then(RefusalGuard::fcm),
                gate: Gate::new(config.name.clone(), config.on_fault),
                clock: config.clock.clone(),
            }),
        })
    }

    /// The endpoint's health as this sender sees it.
    pub fn gate(&self) -> &Gate {
        &self.inner.gate
    }

    /// The HTTP/2 pool, when HTTP/2 is configured.
    pub fn pool(&self) -> Option<&Pool> {
        self.inner.transport.pool()
    }

    /// True when requests go over HTTP/1.1 (configured, or fallen back to).
    pub fn uses_http1(&self) -> bool {
        self.inner.transport.uses_http1()
    }

    /// The OAuth token cache (v1 only).
    pub fn token_source(&self) -> Option<&TokenSource> {
        match &self.inner.api {
            Api::V1 { tokens, .. } => Some(tokens),
            Api::Legacy { .. } => None,
        }
    }

    /// True when this sender speaks the legacy API.
    pub fn is_legacy(&self) -> bool {
        matches!(self.inner.api, Api::Legacy { .. })
    }

    /// Sends with retries; the outcome is always final.
    pub async fn send(&self, msg: &GcmMessage) -> crate::push::Outcome {
        self.send_with_details(msg).await.outcome
    }

    /// Like `send`, keeping what the last attempt saw. Waits between attempts on timers, so
    /// other sends carry on meanwhile. Past the message's `push_expiry`, no attempt is made
    /// and the push ends `Expired`.
    pub async fn send_with_details(&self, msg: &GcmMessage) -> FcmDelivery {
        let deadline = Deadline::from_push_expiry(msg.push_expiry, self.inner.clock.now());
        if deadline.passed() {
            return FcmDelivery::new(Outcome::Expired, 0);
        }
        let build = |cap: Option<u32>| -> Result<(Option<u32>, Bytes), TranslateError> {
            let body = match &self.inner.api {
                Api::V1 { .. } => v1_body(msg, cap, self.inner.clock.now()),
                Api::Legacy { .. } => legacy_body(msg, std::slice::from_ref(&msg.to), cap),
            }?;
            Ok((cap, Bytes::from(body)))
        };
        // What FCM keeps the message for: never past its `push_expiry`, so the body is built
        // again when an attempt has fewer seconds left than the last one.
        let cap = || deadline.left().map(ttl_cap);
        let mut built = match build(cap()) {
            Ok(built) => built,
            Err(e) => {
                return FcmDelivery::new(
                    Outcome::Malformed {
                        reason: e.to_string(),
                    },
                    0,
                )
            }
        };
        let done = attempt_until_final(&self.inner.retry, &self.inner.gate, deadline, || {
            let now = cap();
            let body = if now == built.0 {
                Ok(built.1.clone())
            } else {
                build(now).map(|fresh| {
                    built = fresh;
                    built.1.clone()
                })
            };
            self.attempt(body, is_topic_address(&msg.to))
        })
        .await;
        let mut delivery = FcmDelivery::new(done.outcome, done.attempts);
        if let Some(response) = &done.answer {
            delivery.record(response);
        }
        delivery.transport_error = done.error;
        delivery.endpoint_fault = done.endpoint_fault;
        delivery
    }

    /// One attempt of `send_with_details` with `body` (to a `topic` address or a token), and
    /// its verdict.
    async fn attempt(
        &self,
        body: Result<Bytes, TranslateError>,
        topic: bool,
    ) -> Attempt<FcmResponse> {
        let body = match body {
            Ok(body) => body,
            Err(e) => {
                return Attempt::unsent(Outcome::Malformed {
                    reason: e.to_string(),
                })
            }
        };
        let answer = match &self.inner.api {
            Api::V1 { tokens, path } => self.attempt_v1(tokens, path, &body).await,
            Api::Legacy { authorization } => self
                .attempt_legacy(authorization, &body, 1, topic)
                .await
                .and_then(|reply| {
                    // `LegacyReply::parse` gives one result per token sent.
                    reply.results.into_iter().next().ok_or_else(|| {
                        AttemptError::Transport(TransportError::Io(
                            "legacy answer without a result".into(),
                        ))
                    })
                }),
        };
        match answer {
            Ok(response) => {
                let verdict = self.judge(response.verdict.clone());
                // A fault's cause carries Google's words (which project, which permission);
                // the outcome's reason stays the bare code, a bounded metric label.
                let words = match &verdict {
                    Verdict::Fault { .. } => response
                        .error_message
                        .as_deref()
                        .filter(|m| !m.is_empty())
                        .map(|m| m.chars().take(300).collect::<String>()),
                    _ => None,
                };
                let mut attempt = Attempt::answered(response, verdict);
                attempt.error = words;
                attempt
            }
            // The token endpoint unreachable, or refusing the service account's assertion:
            // every push would fail the same way.
            Err(AttemptError::OAuth(e)) if e.is_permanent() || e.is_unreachable() => {
                Attempt::fault(e.kind(), e.to_string())
            }
            Err(AttemptError::OAuth(e)) => Attempt {
                answer: None,
                verdict: Verdict::Retry(RetryHint::new(e.kind())),
                error: Some(e.to_string()),
                detail: Some(e.to_string()),
                unsent: false,
            },
            Err(AttemptError::Transport(e)) => {
                tracing::debug!(error = %e, "FCM transport failure.");
                Attempt::transport(&e)
            }
        }
    }

    /// One message to many tokens, one delivery per token in order. Legacy: `registration_ids`
    /// in requests of up to 1000 tokens, retrying only the tokens whose result says so, until
    /// the message's `push_expiry` (then `Expired`); an endpoint fault ends the tokens, as it
    /// does not wait at the gate. v1: one request per token, all concurrently (as the Admin
    /// SDKs' `sendEach`).
    pub async fn send_multicast(&self, msg: &GcmMessage, tokens: &[String]) -> Vec<FcmDelivery> {
        match &self.inner.api {
            Api::V1 { .. } => {
                let sends = tokens.iter().map(|token| async move {
                    match with_token(msg, token) {
                        Ok(m) => self.send_with_details(&m).await,
                        Err(e) => FcmDelivery::new(
                            Outcome::Malformed {
                                reason: e.to_string(),
                            },
                            0,
                        ),
                    }
                });
                futures_util::future::join_all(sends).await
            }
            Api::Legacy { authorization } => {
                let mut out = Vec::with_capacity(tokens.len());
                for chunk in tokens.chunks(LEGACY_MAX_TOKENS) {
                    out.extend(self.legacy_multicast(authorization, msg, chunk).await);
                }
                out
            }
        }
    }

    async fn legacy_multicast(
        &self,
        authorization: &HeaderValue,
        msg: &GcmMessage,
        tokens: &[String],
    ) -> Vec<FcmDelivery> {
        let mut deliveries: Vec<Option<FcmDelivery>> = vec![None; tokens.len()];
        // Indexes of the tokens still to send, and the last hint for each.
        let mut pending: Vec<usize> = (0..tokens.len()).collect();
        let mut hints: Vec<Option<RetryHint>> = vec![None; tokens.len()];
        let mut last: Vec<FcmDelivery> = (0..tokens.len())
            .map(|_| FcmDelivery::new(Outcome::Delivered, 0))
            .collect();
        let policy = &self.inner.retry;
        let deadline = Deadline::from_push_expiry(msg.push_expiry, self.inner.clock.now());
        let mut attempt = 0;
        while !pending.is_empty() {
            if deadline.passed() {
                for &i in &pending {
                    let mut d = last[i].clone();
                    d.outcome = Outcome::Expired;
                    deliveries[i] = Some(d);
                }
                break;
            }
            attempt += 1;
            let batch: Vec<String> = pending.iter().map(|&i| tokens[i].clone()).collect();
            let body = match legacy_body(msg, &batch, deadline.left().map(ttl_cap)) {
                Ok(b) => Bytes::from(b),
                Err(e) => {
                    for &i in &pending {
                        deliveries[i] = Some(FcmDelivery::new(
                            Outcome::Malformed {
                                reason: e.to_string(),
                            },
                            0,
                        ));
                    }
                    break;
                }
            };
            let results = self
                .attempt_legacy(authorization, &body, batch.len(), false)
                .await;
            let mut still = Vec::new();
            let mut longest_after = None;
            for (n, &i) in pending.iter().enumerate() {
                last[i].attempts = attempt;
                let hint = match &results {
                    Ok(reply) => match reply.results.get(n) {
                        // `LegacyReply::parse` gives one result per token sent.
                        None => RetryHint::new("legacy answer without a result"),
                        Some(r) => {
                            last[i].record(r);
                            match &self.judge(r.verdict.clone()) {
                                Verdict::Final(outcome) => {
                                    let mut d = last[i].clone();
                                    d.outcome = outcome.clone();
                                    deliveries[i] = Some(d);
                                    continue;
                                }
                                Verdict::Retry(hint) => hint.clone(),
                                // Every token would get the same: end them all with it.
                                Verdict::Fault { reason } => {
                                    let mut d = last[i].clone();
                                    d.outcome = Outcome::GaveUp {
                                        reason: reason.clone(),
                                    };
                                    d.endpoint_fault = Some(reason.clone());
                                    deliveries[i] = Some(d);
                                    continue;
                                }
                            }
                        }
                    },
                    Err(AttemptError::Transport(e)) => {
                        last[i].transport_error = Some(e.to_string());
                        RetryHint::new(e.kind()).reconnect()
                    }
                    Err(AttemptError::OAuth(e)) => RetryHint::new(e.kind()),
                };
                longest_after = longest_after.max(hint.after);
                hints[i] = Some(hint);
                still.push(i);
            }
            if !still.is_empty() && !policy.should_retry(attempt) {
                for &i in &still {
                    let mut d = last[i].clone();
                    d.outcome = Outcome::GaveUp {
                        reason: hints[i].take().map(|h| h.reason).unwrap_or_default(),
                    };
                    deliveries[i] = Some(d);
                }
                break;
            }
            pending = still;
            if !pending.is_empty() {
                let delay = policy.delay(attempt, longest_after, &mut rand::rng());
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = deadline.reached() => {}
                }
            }
        }
        deliveries
            .into_iter()
            .map(|d| {
                d.unwrap_or_else(|| {
                    FcmDelivery::new(
                        Outcome::GaveUp {
                            reason: "not sent".into(),
                        },
                        0,
                    )
                })
            })
            .collect()
    }

    /// The verdict to act on: the answer's, unless the wrong-project guard says otherwise.
    fn judge(&self, verdict: Verdict) -> Verdict {
        match &self.inner.project {
            Some(guard) => guard.judge(verdict),
            None => verdict,
        }
    }

    async fn attempt_v1(
        &self,
        tokens: &TokenSource,
        path: &PathAndQuery,
        body: &Bytes,
    ) -> Result<FcmResponse, AttemptError> {
        let (bearer, generation) = tokens.bearer().await.map_err(AttemptError::OAuth)?;
        let (parts, reply) = self
            .exchange(path, bearer, body.clone())
            .await
            .map_err(AttemptError::Transport)?;
        let response = FcmResponse::v1(parts.status.as_u16(), &parts.headers, &reply);
        if let Verdict::Retry(hint) = &response.verdict {
            if hint.renew_auth {
                tokens.invalidate(generation);
            }
        }
        Ok(response)
    }

    async fn attempt_legacy(
        &self,
        authorization: &HeaderValue,
        body: &Bytes,
        tokens: usize,
        topic: bool,
    ) -> Result<LegacyReply, AttemptError> {
        static LEGACY_PATH: PathAndQuery = PathAndQuery::from_static("/fcm/send");
        let (parts, reply) = self
            .exchange(&LEGACY_PATH, authorization.clone(), body.clone())
            .await
            .map_err(AttemptError::Transport)?;
        Ok(LegacyReply::parse(
            parts.status.as_u16(),
            &parts.headers,
            &reply,
            tokens,
            topic,
        ))
    }

    async fn exchange(
        &self,
        path: &PathAndQuery,
        authorization: HeaderValue,
        body: Bytes,
    ) -> Result<(http::response::Parts, Bytes), TransportError> {
        static JSON: HeaderValue = HeaderValue::from_static("application/json; charset=UTF-8");
        let mut headers = HeaderMap::with_capacity(2);
        headers.insert(CONTENT_TYPE, JSON.clone());
        headers.insert(AUTHORIZATION, authorization);
        self.inner.transport.post(path, &headers, body).await
    }
}

/// `msg` addressed to `token` (a v1 envelope gets its `message.token` replaced, or its
/// `message.fid`: one target only, of the kind it had).
fn with_token(msg: &GcmMessage, token: &str) -> Result<GcmMessage, TranslateError> {
    let mut m = msg.clone();
    m.to = token.to_string();
    if let Some(raw) = &msg.v1_message {
        let mut v: serde_json::Value =
            serde_json::from_slice(raw).map_err(|e| TranslateError::Encode(e.to_string()))?;
        if let Some(obj) = v.as_object_mut() {
            let key = if obj.contains_key("fid") && !obj.contains_key("token") {
                "fid"
            } else {
                "token"
            };
            obj.insert(key.into(), serde_json::Value::String(token.into()));
        }
        m.v1_message = Some(Bytes::from(
            serde_json::to_vec(&v).map_err(|e| TranslateError::Encode(e.to_string()))?,
        ));
    }
    Ok(m)
}
