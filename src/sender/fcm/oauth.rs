//! OAuth2 access tokens for FCM HTTP v1 from a service-account JSON (protocols.md §2.3): an
//! RS256 JWT assertion POSTed as a form to the account's `token_uri`, the access token cached
//! and shared by every request, renewed in the background shortly before it expires. A failed
//! background renewal is logged, counted and retried with back-off while the old token is
//! still good; once it has expired, callers renew in the foreground (one request for all).

use crate::clock::SharedClock;
use crate::sender::endpoint::{Endpoint, EndpointError};
use crate::sender::http1::Http1Client;
use crate::sender::pool::{PoolError, TransportError};
use crate::sender::retry::RetryPolicy;
use bytes::Bytes;
use http::HeaderValue;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use parking_lot::{Mutex, RwLock};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The scope FCM sends need.
pub const FCM_SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";
/// The `aud` of the assertion. google-auth always uses this constant, whatever `token_uri` says
/// (protocols.md §2.3), so fakes must not check it, and neither do we vary it.
pub const GOOGLE_TOKEN_AUDIENCE: &str = "https://oauth2.googleapis.com/token";
/// Lifetime asked for in the assertion (Google's maximum).
const ASSERTION_LIFETIME_S: u64 = 3600;
/// The longest `expires_in` believed: Google's tokens last an hour, and a huge value from a
/// broken endpoint overflowed the expiry's arithmetic (a panic).
const MAX_TOKEN_LIFETIME_S: u64 = 3600;

/// The parts of a service-account JSON file we use. The private key is never printed.
#[derive(Clone)]
pub struct ServiceAccount {
    pub project_id: Option<String>,
    pub client_email: String,
    pub private_key_id: Option<String>,
    private_key: String,
    pub token_uri: String,
}

impl std::fmt::Debug for ServiceAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceAccount")
            .field("project_id", &self.project_id)
            .field("client_email", &self.client_email)
            .field("private_key_id", &self.private_key_id)
            .field("private_key", &"<redacted>")
            .field("token_uri", &self.token_uri)
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OAuthError {
    #[error("cannot read service-account file {path}: {reason}")]
    ReadFile { path: PathBuf, reason: String },
    #[error("service-account file is not valid JSON: {0}")]
    BadJson(String),
    #[error("service-account file has no {0:?}")]
    MissingField(&'static str),
    #[error("service-account file has type {0:?}, expected \"service_account\"")]
    NotServiceAccount(String),
    #[error("service-account private_key is not an RSA private key in PEM: {0}")]
    BadKey(String),
    #[error("service-account token_uri: {0}")]
    BadTokenUri(String),
    #[error("signing the OAuth assertion failed: {0}")]
    Sign(String),
    #[error("token endpoint unreachable: {0}")]
    Transport(#[from] TransportError),
    #[error("token endpoint refused the assertion: HTTP {status} {error}: {description}")]
    Refused {
        status: u16,
        error: String,
        description: String,
    },
    #[error("token endpoint answered HTTP {status} without a usable token: {reason}")]
    BadResponse { status: u16, reason: String },
    /// The token request that failed while this caller waited its turn: the same answer, not
    /// asked again (every message in flight asked a refusing endpoint in turn, 749 requests
    /// in 35 s).
    #[error("{message}")]
    Recent {
        message: String,
        permanent: bool,
        unreachable: bool,
    },
}

impl OAuthError {
    /// True when asking again cannot help (bad key, unknown account): a 4xx other than 429.
    pub fn is_permanent(&self) -> bool {
        match self {
            OAuthError::Refused { status, .. } => (400..500).contains(status) && *status != 429,
            OAuthError::Transport(_) | OAuthError::BadResponse { .. } => false,
            OAuthError::Recent { permanent, .. } => *permanent,
            _ => true,
        }
    }

    /// The token endpoint could not be reached at all (no connection).
    pub fn is_unreachable(&self) -> bool {
        match self {
            OAuthError::Transport(e) => e.is_endpoint_fault(),
            OAuthError::Recent { unreachable, .. } => *unreachable,
            _ => false,
        }
    }

    /// A short, bounded label for outcomes and metrics.
    pub fn kind(&self) -> &'static str {
        if self.is_permanent() {
            "oauth_token_refused"
        } else {
            "oauth_token_unavailable"
        }
    }
}

impl ServiceAccount {
    pub fn from_file(path: &Path) -> Result<ServiceAccount, OAuthError> {
        let bytes = std::fs::read(path).map_err(|e| OAuthError::ReadFile {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        ServiceAccount::from_json(&bytes)
    }

    /// Parses and checks a service-account JSON (the key is parsed here, so a bad key fails
    /// before the first push).
    pub fn from_json(bytes: &[u8]) -> Result<ServiceAccount, OAuthError> {
        #[derive(serde::Deserialize)]
        struct Raw {
            #[serde(rename = "type")]
            kind: Option<String>,
            project_id: Option<String>,
            private_key_id: Option<String>,
            private_key: Option<String>,
            client_email: Option<String>,
            token_uri: Option<String>,
        }
        let raw: Raw =
            serde_json::from_slice(bytes).map_err(|e| OAuthError::BadJson(e.to_string()))?;
        if let Some(kind) = raw.kind.as_deref().filter(|k| *k != "service_account") {
            return Err(OAuthError::NotServiceAccount(kind.to_string()));
        }
        let non_empty = |v: Option<String>, name| v.filter(|s| !s.trim().is_empty()).ok_or(name);
        let private_key =
            non_empty(raw.private_key, "private_key").map_err(OAuthError::MissingField)?;
        let client_email =
            non_empty(raw.client_email, "client_email").map_err(OAuthError::MissingField)?;
        let token_uri = non_empty(raw.token_uri, "token_uri").map_err(OAuthError::MissingField)?;
        EncodingKey::from_rsa_pem(private_key.as_bytes())
            .map_err(|e| OAuthError::BadKey(e.to_string()))?;
        Ok(ServiceAccount {
            project_id: raw.project_id.filter(|p| !p.trim().is_empty()),
            client_email,
            private_key_id: raw.private_key_id.filter(|k| !k.is_empty()),
            private_key,
            token_uri,
        })
    }

    /// The same account with another token endpoint (tests, fakes).
    pub fn with_token_uri(mut self, token_uri: impl Into<String>) -> ServiceAccount {
        self.token_uri = token_uri.into();
        self
    }
}

/// Splits `https://host[:port]/path` into the endpoint and the path.
fn split_url(url: &str) -> Result<(Endpoint, String), EndpointError> {
    let uri: http::Uri =
        url.parse()
            .map_err(|e: http::uri::InvalidUri| EndpointError::Invalid {
                url: url.to_string(),
                reason: e.to_string(),
            })?;
    let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
        return Err(EndpointError::Invalid {
            url: url.to_string(),
            reason: "expected scheme://host[:port]/path".into(),
        });
    };
    let path = uri
        .path_and_query()
        .map_or("/".to_string(), |p| p.as_str().to_string());
    Ok((Endpoint::Custom(format!("{scheme}://{authority}")), path))
}

/// Counters of the token source, for tests and logs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenStats {
    /// Tokens obtained.
    pub renewals: u64,
    /// Failed token requests.
    pub failures: u64,
    pub last_error: Option<String>,
}

#[derive(Clone)]
struct Cached {
    /// `Bearer <token>`, marked sensitive.
    header: HeaderValue,
    /// Clock time (since the epoch) at which the token stops being valid.
    expires_at: Duration,
    generation: u64,
    stale: bool,
}

/// The shared access-token cache. Clone freely.
#[derive(Clone)]
pub struct TokenSource {
    inner: Arc<TokenInner>,
}

struct TokenInner {
    client_email: String,
    key: EncodingKey,
    header: Header,
    http: Http1Client,
    token_path: String,
    clock: SharedClock,
    /// Renew when less than this is left of the token's life.
    renew_before: Duration,
    /// First back-off after a failed background renewal; doubles up to a minute.
    retry_backoff: Duration,
    cached: RwLock<Option<Cached>>,
    /// One token request at a time; waiters re-check the cache when they get the lock.
    renewing: tokio::sync::Mutex<()>,
    background: AtomicBool,
    renewals: AtomicU64,
    failures: AtomicU64,
    /// The last failed request's error, for `stats` and for the callers that waited on it.
    last_failure: Mutex<Option<OAuthError>>,
}

impl std::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSource")
            .field("client_email", &self.inner.client_email)
            .field("token_endpoint", self.inner.http.target())
            .field("token_path", &self.inner.token_path)
            .finish_non_exhaustive()
    }
}

#[derive(serde::Serialize)]
struct Claims<'a> {
    iss: &'a str,
    scope: &'a str,
    aud: &'a str,
    iat: u64,
    exp: u64,
}

impl TokenSource {
    /// `tls` is the client TLS config for an https `token_uri`.
    pub fn new(
        account: &ServiceAccount,
        tls: impl Fn(bool) -> Result<Option<Arc<rustls::ClientConfig>>, crate::sender::tls::TlsError>,
        timeout: Duration,
        renew_before: Duration,
        clock: SharedClock,
    ) -> Result<TokenSource, OAuthError> {
        let key = EncodingKey::from_rsa_pem(account.private_key.as_bytes())
            .map_err(|e| OAuthError::BadKey(e.to_string()))?;
        let mut header = Header::new(Algorithm::RS256);
        header.kid = account.private_key_id.clone();
        let (endpoint, token_path) =
            split_url(&account.token_uri).map_err(|e| OAuthError::BadTokenUri(e.to_string()))?;
        let target = endpoint
            .target()
            .map_err(|e| OAuthError::BadTokenUri(e.to_string()))?;
        let tls = tls(target.tls).map_err(|e| OAuthError::BadTokenUri(e.to_string()))?;
        let http = Http1Client::new(target, tls, timeout)
            .map_err(|e: PoolError| OAuthError::BadTokenUri(e.to_string()))?;
        let source = TokenSource {
            inner: Arc::new(TokenInner {
                client_email: account.client_email.clone(),
                key,
                header,
                http,
                token_path,
                clock,
                renew_before,
                retry_backoff: Duration::from_millis(500),
                cached: RwLock::new(None),
                renewing: tokio::sync::Mutex::new(()),
                background: AtomicBool::new(false),
                renewals: AtomicU64::new(0),
                failures: AtomicU64::new(0),
                last_failure: Mutex::new(None),
            }),
        };
        // Sign once now: a key jsonwebtoken cannot use fails here, not on the first push.
        source.assertion()?;
        Ok(source)
    }

    pub fn stats(&self) -> TokenStats {
        TokenStats {
            renewals: self.inner.renewals.load(Ordering::Relaxed),
            failures: self.inner.failures.load(Ordering::Relaxed),
            last_error: self
                .inner
                .last_failure
                .lock()
                .as_ref()
                .map(|e| e.to_string()),
        }
    }

    /// The `authorization` value to send and its generation (for `invalidate`). Starts a
    /// background renewal when the token is close to expiry; waits for a new one only when
    /// there is no valid token.
    pub async fn bearer(&self) -> Result<(HeaderValue, u64), OAuthError> {
        let now = self.inner.clock.now();
        if let Some(c) = self.valid(now) {
            if now + self.inner.renew_before >= c.expires_at {
                self.renew_in_background();
            }
            return Ok((c.header, c.generation));
        }
        self.renew_now().await
    }

    /// FCM said the token `generation` is expired or invalid: the next `bearer` gets a new one.
    pub fn invalidate(&self, generation: u64) {
        let mut cached = self.inner.cached.write();
        if let Some(c) = cached.as_mut().filter(|c| c.generation == generation) {
            c.stale = true;
        }
    }

    fn valid(&self, now: Duration) -> Option<Cached> {
        let cached = self.inner.cached.read();
        cached
            .as_ref()
            .filter(|c| !c.stale && now < c.expires_at)
            .cloned()
    }

    async fn renew_now(&self) -> Result<(HeaderValue, u64), OAuthError> {
        let failures = self.inner.failures.load(Ordering::Acquire);
        let _one_at_a_time = self.inner.renewing.lock().await;
        if let Some(c) = self.valid(self.inner.clock.now()) {
            return Ok((c.header, c.generation));
        }
        // A request that failed while this caller waited is its answer too.
        if self.inner.failures.load(Ordering::Acquire) != failures {
            if let Some(OAuthError::Recent {
                message,
                permanent,
                unreachable,
            }) = &*self.inner.last_failure.lock()
            {
                return Err(OAuthError::Recent {
                    message: message.clone(),
                    permanent: *permanent,
                    unreachable: *unreachable,
                });
            }
        }
        let c = self.fetch_and_store().await?;
        Ok((c.header, c.generation))
    }

    fn renew_in_background(&self) {
        if self.inner.background.swap(true, Ordering::AcqRel) {
            return;
        }
        let source = self.clone();
        tokio::spawn(async move {
            let policy =
                RetryPolicy::unbounded(source.inner.retry_backoff, Duration::from_secs(60));
            let mut attempt = 0;
            loop {
                attempt += 1;
                let result = {
                    let _one_at_a_time = source.inner.renewing.lock().await;
                    let now = source.inner.clock.now();
                    match source.valid(now) {
                        // Someone renewed meanwhile.
                        Some(c) if now + source.inner.renew_before < c.expires_at => Ok(()),
                        // Expired: callers renew in the foreground now.
                        None => Ok(()),
                        Some(_) => source.fetch_and_store().await.map(|_| ()),
                    }
                };
                match result {
                    Ok(()) => break,
                    Err(e) => {
                        let wait = policy.delay(attempt, None, &mut rand::rng());
                        tracing::warn!(error = %e, retry_in = ?wait, "OAuth token renewal failed; the current token is still valid.");
                        tokio::time::sleep(wait).await;
                    }
                }
            }
            source.inner.background.store(false, Ordering::Release);
        });
    }

    fn assertion(&self) -> Result<String, OAuthError> {
        let iat = self.inner.clock.now().as_secs();
        let claims = Claims {
            iss: &self.inner.client_email,
            scope: FCM_SCOPE,
            aud: GOOGLE_TOKEN_AUDIENCE,
            iat,
            exp: iat + ASSERTION_LIFETIME_S,
        };
        jsonwebtoken::encode(&self.inner.header, &claims, &self.inner.key)
            .map_err(|e| OAuthError::Sign(e.to_string()))
    }

    async fn fetch_and_store(&self) -> Result<Cached, OAuthError> {
        match self.fetch().await {
            Ok((token, lifetime)) => {
                let mut header =
                    HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
                        OAuthError::BadResponse {
                            status: 200,
                            reason: "access_token is not a valid header value".into(),
                        }
                    })?;
                header.set_sensitive(true);
                let mut cached = self.inner.cached.write();
                let generation = cached.as_ref().map_or(1, |c| c.generation + 1);
                let fresh = Cached {
                    header,
                    expires_at: self.inner.clock.now() + lifetime,
                    generation,
                    stale: false,
                };
                *cached = Some(fresh.clone());
                self.inner.renewals.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(generation, lifetime = ?lifetime, "OAuth token renewed.");
                Ok(fresh)
            }
            Err(e) => {
                *self.inner.last_failure.lock() = Some(OAuthError::Recent {
                    message: e.to_string(),
                    permanent: e.is_permanent(),
                    unreachable: e.is_unreachable(),
                });
                self.inner.failures.fetch_add(1, Ordering::Release);
                Err(e)
            }
        }
    }

    /// One token request: the access token and its lifetime.
    async fn fetch(&self) -> Result<(String, Duration), OAuthError> {
        let assertion = self.assertion()?;
        let form = form_urlencoded::Serializer::new(String::new())
            .append_pair("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer")
            .append_pair("assertion", &assertion)
            .finish();
        let request = http::Request::post(self.inner.token_path.as_str())
            .header(
                http::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .body(Bytes::from(form))
            .map_err(|e| OAuthError::BadTokenUri(e.to_string()))?;
        let (parts, body) = self.inner.http.send(request).await?;
        let status = parts.status.as_u16();
        #[derive(serde::Deserialize)]
        struct Reply {
            access_token: Option<String>,
            expires_in: Option<u64>,
            error: Option<String>,
            error_description: Option<String>,
        }
        let reply: Option<Reply> = serde_json::from_slice(&body).ok();
        if status != 200 {
            return match reply {
                Some(Reply {
                    error: Some(error),
                    error_description,
                    ..
                }) => Err(OAuthError::Refused {
                    status,
                    error,
                    description: error_description.unwrap_or_default(),
                }),
                _ => Err(OAuthError::Refused {
                    status,
                    error: format!("HTTP {status}"),
                    description: String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned(),
                }),
            };
        }
        match reply {
            Some(Reply {
                access_token: Some(token),
                expires_in,
                ..
            }) if !token.is_empty() => {
                // Google says 3599; a missing value is taken as the usual hour.
                let lifetime =
                    Duration::from_secs(expires_in.unwrap_or(3599).min(MAX_TOKEN_LIFETIME_S));
                Ok((token, lifetime))
            }
            _ => Err(OAuthError::BadResponse {
                status,
                reason: "no access_token in the answer".into(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = include_str!("../../../fixtures/fcm/service-account.json");

    #[test]
    fn service_account_parses_and_hides_its_key() {
        let sa = ServiceAccount::from_json(KEY.as_bytes()).unwrap();
        assert_eq!(sa.project_id.as_deref(), Some("pusher-test"));
        assert!(sa.client_email.contains('@'));
        let shown = format!("{sa:?}");
        assert!(shown.contains("<redacted>") && !shown.contains("PRIVATE KEY"));
    }

    #[test]
    fn bad_service_accounts_are_clear_errors() {
        let mut v: serde_json::Value = serde_json::from_str(KEY).unwrap();
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"not json".to_vec(), "not valid JSON"),
            (b"[]".to_vec(), "not valid JSON"),
            (
                {
                    let mut w = v.clone();
                    w.as_object_mut().unwrap().remove("private_key");
                    w.to_string().into_bytes()
                },
                "\"private_key\"",
            ),
            (
                {
                    let mut w = v.clone();
                    w["client_email"] = "".into();
                    w.to_string().into_bytes()
                },
                "\"client_email\"",
            ),
            (
                {
                    let mut w = v.clone();
                    w["type"] = "authorized_user".into();
                    w.to_string().into_bytes()
                },
                "authorized_user",
            ),
            (
                {
                    let mut w = v.clone();
                    w["private_key"] =
                        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n".into();
                    w.to_string().into_bytes()
                },
                "not an RSA private key",
            ),
        ];
        for (bytes, want) in cases {
            let err = ServiceAccount::from_json(&bytes).unwrap_err().to_string();
            assert!(err.contains(want), "{err:?} should contain {want:?}");
            assert!(!err.contains("PRIVATE KEY-----\nMII"), "key leaked: {err}");
        }
        v["token_uri"] = "not a url".into();
        let sa = ServiceAccount::from_json(v.to_string().as_bytes()).unwrap();
        let err = TokenSource::new(
            &sa,
            |_| Ok(None),
            Duration::from_secs(1),
            Duration::from_secs(60),
            crate::clock::system(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("token_uri"), "{err}");
    }

    #[test]
    fn urls_split_into_endpoint_and_path() {
        let (e, p) = split_url("https://oauth2.googleapis.com/token").unwrap();
        assert_eq!(e, Endpoint::Custom("https://oauth2.googleapis.com".into()));
        assert_eq!(p, "/token");
        let (e, p) = split_url("http://127.0.0.1:9/").unwrap();
        assert_eq!(e, Endpoint::Custom("http://127.0.0.1:9".into()));
        assert_eq!(p, "/");
        assert!(split_url("/token").is_err());
    }
}
