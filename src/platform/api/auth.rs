//! Who may call: `Authorization: Bearer <key>`, one key per caller (`api.keys`), each for one
//! app. Keys are kept as SHA-256 digests and a presented key is compared with every one of them
//! in constant time, so neither timing nor length says how close a guess was. Each key has a
//! token bucket (governor), per process: N processes allow N times the rate.

use super::error::ApiError;
use super::ApiState;
use crate::config::Secret;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use sha2::{Digest, Sha256};
use std::num::NonZeroU32;
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// One configured caller.
#[derive(Debug, Clone)]
pub struct ApiKey {
    /// The key's name in the config (logged; the key itself never is).
    pub name: String,
    pub app: String,
    pub key: Secret,
}

struct Entry {
    digest: [u8; 32],
    caller: Caller,
    limiter: DefaultDirectRateLimiter,
}

/// The configured keys and their rate limiters.
pub struct Keys(Vec<Entry>);

impl Keys {
    pub fn new(keys: &[ApiKey], rate_per_second: u32, burst: u32) -> Keys {
        let quota = Quota::per_second(NonZeroU32::new(rate_per_second).unwrap_or(NonZeroU32::MIN))
            .allow_burst(NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN));
        Keys(
            keys.iter()
                .map(|k| Entry {
                    digest: Sha256::digest(k.key.expose().as_bytes()).into(),
                    caller: Caller {
                        name: Arc::from(k.name.as_str()),
                        app: Arc::from(k.app.as_str()),
                    },
                    limiter: RateLimiter::direct(quota),
                })
                .collect(),
        )
    }

    /// The caller a request's headers name, rate limit applied.
    pub fn authorize(&self, headers: &axum::http::HeaderMap) -> Result<Caller, ApiError> {
        let presented = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, key)| key.trim())
            .ok_or(ApiError::Unauthorized)?;
        self.authorize_key(presented)
    }

    /// The caller whose key this is, rate limit applied.
    pub fn authorize_key(&self, presented: &str) -> Result<Caller, ApiError> {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        // Every entry is compared; the match is picked without branching on the way.
        let mut found = None;
        for entry in &self.0 {
            if bool::from(entry.digest.ct_eq(&digest)) {
                found = Some(entry);
            }
        }
        let entry = found.ok_or(ApiError::Unauthorized)?;
        entry.limiter.check().map_err(|not_until| {
            let wait = not_until.wait_time_from(governor::clock::Clock::now(
                &governor::clock::DefaultClock::default(),
            ));
            ApiError::RateLimited {
                retry_after_secs: wait.as_secs() + u64::from(wait.subsec_nanos() > 0),
            }
        })?;
        Ok(entry.caller.clone())
    }
}

/// The authenticated caller of a request: the key's name and its app.
#[derive(Debug, Clone)]
pub struct Caller {
    pub name: Arc<str>,
    pub app: Arc<str>,
}

impl FromRequestParts<ApiState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Caller, ApiError> {
        state.keys.authorize(&parts.headers)
    }
}
