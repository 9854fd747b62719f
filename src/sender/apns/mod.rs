//! The APNs sender: request building, the shared HTTP/2 pool, token or certificate auth, and
//! retries on timers. Clone it freely (an `Arc` inside); every send runs concurrently.

pub mod cert;
pub mod jwt;
pub mod request;
pub mod response;

use crate::clock::SharedClock;
use crate::push::apns::{ApnsNotification, ApnsReason};
use crate::push::{Outcome, Verdict};
use crate::sender::attempt::{attempt_until_final, Attempt, Deadline};
use crate::sender::endpoint::{Endpoint, EndpointError};
use crate::sender::gate::{Gate, OnFault};
use crate::sender::guard::RefusalGuard;
use crate::sender::pool::{Pool, PoolConfig, PoolError, TransportError};
use crate::sender::retry::RetryPolicy;
use crate::sender::tls::{self, ClientIdentity, TlsError, TlsOptions};
use http::HeaderValue;
use std::path::PathBuf;
use std::sync::Arc;

pub use cert::{load_identity, CertError};
pub use jwt::{JwtError, JwtSigner, Signers, TokenAuth};
pub use request::{build_request, RequestContext, RequestError};
pub use response::ApnsResponse;

/// How we prove who we are to APNs.
#[derive(Debug, Clone)]
pub enum ApnsAuth {
    /// ES256 JWT from a .p8 key (shared by all connections).
    Token(TokenAuth),
    /// Mutual TLS with the provider certificate.
    Certificate(ClientIdentity),
}

#[derive(Debug, Clone)]
pub struct ApnsConfig {
    pub endpoint: Endpoint,
    pub auth: ApnsAuth,
    /// `apns-topic` for notifications that carry none (usually the app's bundle id).
    pub default_topic: Option<String>,
    /// Trust only this CA file (PEM) instead of the public roots.
    pub ca_file: Option<PathBuf>,
    /// Skip server certificate verification (self-signed fakes only).
    pub insecure: bool,
    pub pool: PoolConfig,
    pub retry: RetryPolicy,
    /// What a send does when the endpoint or the credentials fail (sender/gate.rs).
    pub on_fault: OnFault,
    /// Names this sender in logs (`apns game`).
    pub name: String,
    pub clock: SharedClock,
    /// The provider-token signer to use with token auth, shared with the other apps of the
    /// same key ([`jwt::Signers`]); one of its own when `None`.
    pub signer: Option<Arc<JwtSigner>>,
}

impl ApnsConfig {
    pub fn new(endpoint: Endpoint, auth: ApnsAuth) -> ApnsConfig {
        ApnsConfig {
            endpoint,
            auth,
            default_topic: None,
            ca_file: None,
            insecure: false,
            pool: PoolConfig::default(),
            retry: RetryPolicy::default(),
            on_fault: OnFault::default(),
            name: "apns".into(),
            clock: crate::clock::system(),
            signer: None,
        }
    }
}

/// Why a sender could not be built (all configuration problems).
#[derive(Debug, thiserror::Error)]
pub enum ApnsError {
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Jwt(#[from] JwtError),
    #[error(transparent)]
    Pool(#[from] PoolError),
    #[error("certificate auth needs TLS, but endpoint {0} is cleartext (http://)")]
    CertificateWithoutTls(String),
    #[error("default topic {0:?} is not a valid header value")]
    BadTopic(String),
}

/// Why one attempt got no APNs answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SendError {
    /// The notification itself is bad; sending it again cannot help.
    #[error("invalid notification: {0}")]
    Invalid(#[from] RequestError),
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error("provider token: {0}")]
    Auth(String),
}

/// A push's outcome with what the last attempt saw (for the CLI and feedback records).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub outcome: Outcome,
    /// The last APNs answer, if any attempt got one.
    pub response: Option<ApnsResponse>,
    pub attempts: u32,
    /// The last attempt's transport failure, in full (the outcome keeps only its kind).
    pub transport_error: Option<String>,
    /// The push ended because the endpoint or the credentials failed, not for its own sake
    /// (only when the sender fails fast, `OnFault::Fail`): the cause in full.
    pub endpoint_fault: Option<String>,
}

#[derive(Clone, Debug)]
pub struct ApnsSender {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    pool: Pool,
    context: RequestContext,
    jwt: Option<Arc<JwtSigner>>,
    retry: RetryPolicy,
    gate: Gate,
    /// The wrong-environment and wrong-topic guard (sender/guard.rs), in `OnFault::Wait` only
    /// (the production pusher): `pusher send` reports what APNs said.
    environment: Option<RefusalGuard>,
    clock: SharedClock,
}

impl ApnsSender {
    /// Checks the whole configuration (endpoint, CA, key or certificate) without connecting.
    pub fn new(config: ApnsConfig) -> Result<ApnsSender, ApnsError> {
        let target = config.endpoint.target()?;
        let (jwt, identity) = match &config.auth {
            ApnsAuth::Token(auth) => {
                let signer = match &config.signer {
                    Some(shared) => shared.clone(),
                    None => Arc::new(JwtSigner::new(auth, config.clock.clone())?),
                };
                (Some(signer), None)
            }
            ApnsAuth::Certificate(id) => {
                if !target.tls {
                    return Err(ApnsError::CertificateWithoutTls(format!(
                        "{:?}",
                        config.endpoint
                    )));
                }
                (None, Some(id.clone()))
            }
        };
        let tls_config = if target.tls {
            Some(tls::client_config(&TlsOptions {
                ca_file: config.ca_file.clone(),
                insecure: config.insecure,
                client_identity: identity,
            })?)
        } else {
            None
        };
        let default_topic = match &config.default_topic {
            Some(t) => Some(HeaderValue::from_str(t).map_err(|_| ApnsError::BadTopic(t.clone()))?),
            None => None,
        };
        let context = RequestContext {
            scheme: target.scheme.clone(),
            authority: target.authority.clone(),
            default_topic,
            topic_required: jwt.is_some(),
        };
        let pool = Pool::new(target, tls_config, config.pool.clone())?;
        Ok(ApnsSender {
            inner: Arc::new(Inner {
                pool,
                context,
                jwt,
                retry: config.retry,
                environment: (config.on_fault == OnFault::Wait).then(RefusalGuard::apns),
                gate: Gate::new(config.name, config.on_fault),
                clock: config.clock,
            }),
        })
    }

    pub fn pool(&self) -> &Pool {
        &self.inner.pool
    }

    /// The endpoint's health as this sender sees it.
    pub fn gate(&self) -> &Gate {
        &self.inner.gate
    }

    /// One attempt. An APNs answer, whatever it says, is `Ok`. Acts on what the answer implies
    /// for shared state: an `ExpiredProviderToken` invalidates the token it was sent with, and a
    /// reconnect hint (Shutdown, IdleTimeout, ExpiredProviderToken) retires the connection.
    pub async fn send_once(&self, n: &ApnsNotification) -> Result<ApnsResponse, SendError> {
        let request = build_request(n, &self.inner.context, None)?;
        self.send_request(n, &request).await
    }

    /// One attempt of `n` as `built` (its request without authorization, built once for all
    /// its attempts): the current provider token is added.
    async fn send_request(
        &self,
        n: &ApnsNotification,
        built: &http::Request<()>,
    ) -> Result<ApnsResponse, SendError> {
        let mut request = http::Request::new(());
        *request.method_mut() = built.method().clone();
        *request.uri_mut() = built.uri().clone();
        *request.headers_mut() = built.headers().clone();
        let generation = match &self.inner.jwt {
            Some(jwt) => {
                let (value, generation) =
                    jwt.current().map_err(|e| SendError::Auth(e.to_string()))?;
                request
                    .headers_mut()
                    .insert(http::header::AUTHORIZATION, value);
                Some(generation)
            }
            None => None,
        };
        let (parts, body, conn) = self
            .inner
            .pool
            .send_tracked(request, n.payload.clone())
            .await?;
        let response = ApnsResponse::from_parts(parts.status.as_u16(), &parts.headers, &body);
        if let Verdict::Retry(hint) = &response.verdict {
            if hint.renew_auth {
                if let (Some(jwt), Some(generation)) = (&self.inner.jwt, generation) {
                    jwt.invalidate(generation);
                }
            }
            if hint.reconnect {
                self.inner.pool.discard(conn);
            }
        }
        Ok(response)
    }

    /// Sends with retries; the outcome is always final.
    pub async fn send(&self, n: &ApnsNotification) -> Outcome {
        self.send_with_details(n).await.outcome
    }

    /// Like `send`, keeping the last APNs answer and the number of attempts. Waits between
    /// attempts on timers, so other sends carry on meanwhile.
    pub async fn send_with_details(&self, n: &ApnsNotification) -> Delivery {
        self.send_expiring(n, 0).await
    }

    /// Like `send_with_details`, for a message with a `push_expiry` (Unix ms, 0 for never):
    /// past it, no attempt is made and the push ends `Expired`.
    pub async fn send_expiring(&self, n: &ApnsNotification, push_expiry_ms: i64) -> Delivery {
        let deadline = Deadline::from_push_expiry(push_expiry_ms, self.inner.clock.now());
        // Built once, and refused here, before the gate: a push that cannot become a request
        // is no word of APNs', and must not wait for it (during an outage) nor be taken for
        // its answer.
        let built = match build_request(n, &self.inner.context, None) {
            Ok(built) => built,
            Err(e) if !deadline.passed() => {
                return Delivery {
                    outcome: malformed(&e),
                    response: None,
                    attempts: 0,
                    transport_error: None,
                    endpoint_fault: None,
                }
            }
            // Past its expiry it ends `Expired`, as any push: no attempt is made.
            Err(_) => http::Request::new(()),
        };
        let done = attempt_until_final(&self.inner.retry, &self.inner.gate, deadline, || async {
            match self.send_request(n, &built).await {
                Ok(response) => {
                    let verdict = match &self.inner.environment {
                        // Sent with the app's configured topic.
                        Some(guard) if n.topic.is_none() => {
                            guard.judge_configured(response.verdict.clone())
                        }
                        Some(guard) => guard.judge(response.verdict.clone()),
                        None => response.verdict.clone(),
                    };
                    Attempt::answered(response, verdict)
                }
                // Built above; nothing is sent.
                Err(SendError::Invalid(e)) => Attempt::unsent(malformed(&e)),
                // The key cannot sign: every push would fail the same way.
                Err(SendError::Auth(reason)) => {
                    Attempt::fault("provider_token", format!("provider token: {reason}"))
                }
                // The pool has already retired a broken connection.
                Err(SendError::Transport(e)) => {
                    tracing::debug!(error = %e, "Transport failure.");
                    Attempt::transport(&e)
                }
            }
        })
        .await;
        Delivery {
            outcome: done.outcome,
            response: done.answer,
            attempts: done.attempts,
            transport_error: done.error,
            endpoint_fault: done.endpoint_fault,
        }
    }
}

/// A push that cannot become a request. The short label, not the message: it becomes a
/// metric label, and the message carries numbers (a token's length) that would make one series
/// per value.
fn malformed(e: &RequestError) -> Outcome {
    Outcome::Malformed {
        reason: e.kind().to_string(),
    }
}

/// True when a response says the token is gone for good (for feedback records).
pub fn is_unregistered(reason: &ApnsReason) -> bool {
    matches!(reason, ApnsReason::Unregistered | ApnsReason::ExpiredToken)
}
