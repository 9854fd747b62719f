//! Who may call: `Authorization: Bearer <key>`, one key per caller (`api.keys`), each for one
//! app. Keys are kept as SHA-256 digests and a presented key is compared with every one of them
//! in constant time, so neither timing nor length says how close a guess was. Each key has a
//! token bucket (governor), per process: N processes allow N times the rate.
//!
//! The page (`/ui`) signs in once with a key and then holds a session ([`Keys::open_session`]):
//! `app.expiry.nonce.mac`, the MAC an HMAC-SHA256 keyed by the API key, the nonce random (two
//! sign-ins in one second are two sessions). A cookie jar, a proxy's log or an extension that
//! reads it learns no key, only a session that ends by itself; every process with the same
//! config can check it, a key taken out of the config ends its sessions, and a session signed
//! out is refused everywhere (`Store::sign_out`: the one thing kept, in PostgreSQL).

use super::error::ApiError;
use super::ApiState;
use crate::config::Secret;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use ring::hmac;
use sha2::{Digest, Sha256};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use subtle::ConstantTimeEq;

/// How long a page's session lasts (its cookie's `Max-Age`).
pub const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 3600);

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
    /// The key as an HMAC key: it signs the page's sessions and their form tokens.
    signer: hmac::Key,
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
                    signer: hmac::Key::new(hmac::HMAC_SHA256, k.key.expose().as_bytes()),
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
    fn authorize_key(&self, presented: &str) -> Result<Caller, ApiError> {
        let entry = self.entry(presented).ok_or(ApiError::Unauthorized)?;
        admit(entry)?;
        Ok(entry.caller.clone())
    }

    /// The entry whose key this is. Every entry is compared; the match is picked without
    /// branching on the way.
    fn entry(&self, presented: &str) -> Option<&Entry> {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let mut found = None;
        for entry in &self.0 {
            if bool::from(entry.digest.ct_eq(&digest)) {
                found = Some(entry);
            }
        }
        found
    }

    /// A page session for the holder of `presented` (rate limit applied), lasting
    /// [`SESSION_LIFETIME`] from `now`.
    pub fn open_session(&self, presented: &str, now: SystemTime) -> Result<PageSession, ApiError> {
        let entry = self.entry(presented).ok_or(ApiError::Unauthorized)?;
        admit(entry)?;
        let expiry = unix_seconds(now).saturating_add(SESSION_LIFETIME.as_secs());
        let app: &str = &entry.caller.app;
        let mut nonce = [0u8; 12];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut nonce).map_err(
            |_| ApiError::Unavailable {
                message: "no randomness for a session".to_owned(),
            },
        )?;
        let nonce = URL_SAFE_NO_PAD.encode(nonce);
        let mac = hmac::sign(&entry.signer, &session_message(app, expiry, &nonce));
        let cookie = format!(
            "{app}.{expiry}.{nonce}.{}",
            URL_SAFE_NO_PAD.encode(mac.as_ref())
        );
        Ok(PageSession::new(entry, cookie, expiry))
    }

    /// The session a cookie holds: signed by one of its app's keys and not expired at `now`
    /// (rate limit applied, as for a request with that key).
    pub fn session(&self, cookie: &str, now: SystemTime) -> Result<PageSession, ApiError> {
        let mut parts = cookie.rsplitn(4, '.');
        let (Some(mac), Some(nonce), Some(expiry), Some(app)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(ApiError::Unauthorized);
        };
        let expiry_text = expiry;
        let expiry: u64 = expiry.parse().map_err(|_| ApiError::Unauthorized)?;
        // One spelling per session: `+E` or `0E` would carry the same MAC under another cookie
        // text, and a sign-out names a session by its cookie's digest.
        if expiry.to_string() != expiry_text {
            return Err(ApiError::Unauthorized);
        }
        if expiry <= unix_seconds(now) {
            return Err(ApiError::Unauthorized);
        }
        let mac = URL_SAFE_NO_PAD
            .decode(mac)
            .map_err(|_| ApiError::Unauthorized)?;
        let message = session_message(app, expiry, nonce);
        // `verify` compares in constant time; every key of the app is tried.
        let mut found = None;
        for entry in self.0.iter().filter(|e| &*e.caller.app == app) {
            if hmac::verify(&entry.signer, &message, &mac).is_ok() {
                found = Some(entry);
            }
        }
        let entry = found.ok_or(ApiError::Unauthorized)?;
        admit(entry)?;
        Ok(PageSession::new(entry, cookie.to_owned(), expiry))
    }
}

/// A signed-in page: its caller, its cookie's value, and the token its forms carry.
pub struct PageSession {
    pub caller: Caller,
    pub cookie: String,
    /// When it ends, in Unix seconds.
    pub expiry: u64,
    /// An HMAC of the session under its key: only one who holds the key or can read the page
    /// can name it, and it ends with the session.
    pub csrf: String,
}

impl PageSession {
    fn new(entry: &Entry, cookie: String, expiry: u64) -> PageSession {
        let mut message = b"pusher ui form\0".to_vec();
        message.extend_from_slice(cookie.as_bytes());
        let tag = hmac::sign(&entry.signer, &message);
        PageSession {
            caller: entry.caller.clone(),
            csrf: tag.as_ref().iter().map(|b| format!("{b:02x}")).collect(),
            cookie,
            expiry,
        }
    }
}

/// What a session's MAC covers, under a label of its own (no other MAC of the key matches).
fn session_message(app: &str, expiry: u64, nonce: &str) -> Vec<u8> {
    format!("pusher ui session\0{app}\0{expiry}\0{nonce}").into_bytes()
}

fn unix_seconds(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The key's rate limit: one more request, or 429 with when to come back.
fn admit(entry: &Entry) -> Result<(), ApiError> {
    entry.limiter.check().map_err(|not_until| {
        let wait = not_until.wait_time_from(governor::clock::Clock::now(
            &governor::clock::DefaultClock::default(),
        ));
        ApiError::RateLimited {
            retry_after_secs: wait.as_secs() + u64::from(wait.subsec_nanos() > 0),
        }
    })
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn keys(list: &[(&str, &str, &str)]) -> Keys {
        let list: Vec<ApiKey> = list
            .iter()
            .map(|(name, app, key)| ApiKey {
                name: (*name).to_owned(),
                app: (*app).to_owned(),
                key: Secret::new(*key),
            })
            .collect();
        Keys::new(&list, 1000, 1000)
    }

    #[test]
    fn a_session_names_no_key_and_ends() {
        let (one, two) = ("key-one-0123456789", "key-two-0123456789");
        let all = keys(&[
            ("a", "game", one),
            ("b", "game", two),
            ("c", "other", "key-c-0123456789"),
        ]);
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let session = all.open_session(two, now).unwrap();
        assert!(!session.cookie.contains(two), "{}", session.cookie);
        assert!(
            session.cookie.starts_with("game.1800043200."),
            "{}",
            session.cookie
        );
        let back = all.session(&session.cookie, now).unwrap();
        assert_eq!(&*back.caller.name, "b");
        assert_eq!(back.csrf, session.csrf);
        // Its last second, then expired.
        let last = now + SESSION_LIFETIME - Duration::from_secs(1);
        assert!(all.session(&session.cookie, last).is_ok());
        assert!(matches!(
            all.session(&session.cookie, now + SESSION_LIFETIME),
            Err(ApiError::Unauthorized)
        ));
        // Another session of the same key, even in the same second, is another session, with
        // another form token.
        let again = all.open_session(two, now).unwrap();
        assert_ne!(again.cookie, session.cookie);
        assert_ne!(again.csrf, session.csrf);
        // Its key out of the config (the app's other key still in): refused.
        let rotated = keys(&[("a", "game", one)]);
        assert!(rotated.session(&session.cookie, now).is_err());
        // Moved to another app: refused.
        let moved = session.cookie.replacen("game.", "other.", 1);
        assert!(all.session(&moved, now).is_err());
        assert!(all.open_session("key-three-0123456789", now).is_err());
        // The format before the nonce: refused.
        let mut parts = session.cookie.split('.');
        let (app, expiry) = (parts.next().unwrap(), parts.next().unwrap());
        let old = hmac::sign(
            &hmac::Key::new(hmac::HMAC_SHA256, two.as_bytes()),
            format!("pusher ui session\0{app}\0{expiry}").as_bytes(),
        );
        let old = format!("{app}.{expiry}.{}", URL_SAFE_NO_PAD.encode(old.as_ref()));
        assert!(all.session(&old, now).is_err(), "{old}");
        // The same session with its expiry spelt otherwise: refused (a sign-out names the
        // cookie's text).
        let (app, expiry, rest) = {
            let mut p = session.cookie.splitn(3, '.');
            (p.next().unwrap(), p.next().unwrap(), p.next().unwrap())
        };
        for respelt in [
            format!("{app}.+{expiry}.{rest}"),
            format!("{app}.0{expiry}.{rest}"),
        ] {
            assert!(all.session(&respelt, now).is_err(), "{respelt}");
        }
        for bad in [
            "",
            "game",
            "game.1.2",
            ".1800043200..",
            "game.x.n.AAAA",
            two,
        ] {
            assert!(all.session(bad, now).is_err(), "{bad}");
        }
    }
}
