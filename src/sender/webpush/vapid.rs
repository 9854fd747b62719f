//! VAPID (RFC 8292): an ES256 JWT per push-service origin, `aud` = the origin, `exp` 12 h
//! ahead (at most 24 h is allowed), `sub` the operator's contact, sent as
//! `Authorization: vapid t=<jwt>, k=<public key>`. One token per origin, cached and renewed an
//! hour before it expires, so signing is rare and the hot path is a read lock.
//!
//! Signed with `jsonwebtoken` (as APNs' tokens) rather than `web-push-native`'s VAPID: that
//! one signs a new token per request and leaves the port out of `aud`, which a push service
//! on a non-default port (our fake, a self-hosted autopush) refuses.

use crate::clock::SharedClock;
use base64::Engine;
use http::HeaderValue;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use p256::elliptic_curve::sec1::ToEncodedPoint;
use p256::pkcs8::{DecodePrivateKey, EncodePrivateKey, LineEnding};
use parking_lot::RwLock;
use std::collections::HashMap;
use std::time::Duration;

/// How long a token is valid.
const LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// A token with less than this left is renewed.
const RENEW_BEFORE: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VapidError {
    #[error("VAPID private key: {0} (give a PEM file's text or the raw 32-byte key in base64url)")]
    BadKey(String),
    #[error("VAPID subject {0:?} must be a mailto: address or an https: URL (RFC 8292 §2.1)")]
    BadSubject(String),
    #[error("signing the VAPID token: {0}")]
    Sign(String),
}

/// The application server's VAPID identity. `Debug` never shows the key.
pub struct Vapid {
    key: EncodingKey,
    header: Header,
    /// `k=`: the public key, uncompressed, base64url.
    public_key: String,
    subject: String,
    clock: SharedClock,
    cache: RwLock<HashMap<String, (HeaderValue, Duration)>>,
    /// Origins whose token is kept; past this the expired ones go, then all (a token is one
    /// signature, cheap to make again).
    max_cached: usize,
}

impl std::fmt::Debug for Vapid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vapid")
            .field("public_key", &self.public_key)
            .field("subject", &self.subject)
            .finish_non_exhaustive()
    }
}

/// Reads a P-256 private key: PEM (PKCS#8 `PRIVATE KEY` or SEC1 `EC PRIVATE KEY`, as
/// `openssl ecparam -genkey` and the npm `web-push generate-vapid-keys` tools give) or the
/// raw 32-byte scalar in base64url (as `web-push generate-vapid-keys` prints it).
pub fn parse_private_key(text: &str) -> Result<p256::SecretKey, VapidError> {
    let text = text.trim();
    if text.starts_with("-----BEGIN") {
        return p256::SecretKey::from_pkcs8_pem(text)
            .or_else(|_| p256::SecretKey::from_sec1_pem(text))
            .map_err(|e| VapidError::BadKey(format!("not a P-256 key in PEM ({e})")));
    }
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text.trim_end_matches('='))
        .map_err(|e| VapidError::BadKey(format!("not base64url ({e})")))?;
    // Exactly 32: `from_slice` pads 24-31 bytes with zeros, so a key cut short in a copy
    // was taken as another key, and every push services' check of it failed.
    if raw.len() != 32 {
        return Err(VapidError::BadKey(format!(
            "{} bytes, not a 32-byte P-256 scalar",
            raw.len()
        )));
    }
    p256::SecretKey::from_slice(&raw)
        .map_err(|_| VapidError::BadKey("32 bytes, but not a P-256 scalar".to_owned()))
}

/// A subject whose host is no public name (`mailto:ops@localhost`, `https://box.local`).
fn local_subject(subject: &str) -> bool {
    let host = match subject.strip_prefix("mailto:") {
        Some(address) => address.rsplit_once('@').map_or("", |(_, host)| host),
        None => subject
            .strip_prefix("https://")
            .and_then(|rest| rest.split(['/', ':', '?', '#']).next())
            .unwrap_or(""),
    };
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    host == "localhost"
        || host.ends_with(".localhost")
        || host.ends_with(".local")
        || !host.contains('.')
}

impl Vapid {
    /// `max_cached`: origins whose token is kept (the sender's live origins).
    pub fn new(
        key: &p256::SecretKey,
        subject: &str,
        clock: SharedClock,
        max_cached: usize,
    ) -> Result<Vapid, VapidError> {
        if !crate::push::webpush::valid_subject(subject) {
            return Err(VapidError::BadSubject(subject.into()));
        }
        if local_subject(subject) {
            tracing::warn!(
                subject,
                "Apple's push service refuses a VAPID subject on a local host (403 BadJwtToken \
                 for every push to Safari); others take it. Give a real mailto: address or \
                 https: URL."
            );
        }
        let pem = key
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|e| VapidError::BadKey(e.to_string()))?;
        let encoding = EncodingKey::from_ec_pem(pem.as_bytes())
            .map_err(|e| VapidError::BadKey(e.to_string()))?;
        let public_key = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(key.public_key().to_encoded_point(false).as_bytes());
        let vapid = Vapid {
            key: encoding,
            header: Header::new(Algorithm::ES256),
            public_key,
            subject: subject.into(),
            clock,
            cache: RwLock::new(HashMap::new()),
            max_cached: max_cached.max(1),
        };
        // A key that cannot sign fails here, not on the first push.
        vapid.mint("https://check.invalid")?;
        Ok(vapid)
    }

    /// The public key as the `k=` parameter and browsers' `applicationServerKey` want it.
    pub fn public_key(&self) -> &str {
        &self.public_key
    }

    /// The `Authorization` header for a push to `origin` (`scheme://host[:port]`).
    pub fn authorization(&self, origin: &str) -> Result<HeaderValue, VapidError> {
        let now = self.clock.now();
        if let Some((value, expires)) = self.cache.read().get(origin) {
            // A token that expires further ahead than a new one would was made while the
            // clock was fast: push services refuse it (`exp` over 24 h ahead), so it is made
            // again once the clock is right, not kept until it runs out.
            if *expires > now + RENEW_BEFORE && *expires <= now + LIFETIME {
                return Ok(value.clone());
            }
        }
        let (value, expires) = self.mint(origin)?;
        let mut cache = self.cache.write();
        if cache.len() >= self.max_cached {
            cache.retain(|_, (_, e)| *e > now + RENEW_BEFORE);
            if cache.len() >= self.max_cached {
                cache.clear();
            }
        }
        cache.insert(origin.to_string(), (value.clone(), expires));
        Ok(value)
    }

    /// Drops `origin`'s token, after a push service refused it: the next push signs a new
    /// one (a token made under a skewed clock, or before a key was replaced, is not sent
    /// again for hours).
    pub fn forget(&self, origin: &str) {
        self.cache.write().remove(origin);
    }

    fn mint(&self, origin: &str) -> Result<(HeaderValue, Duration), VapidError> {
        let expires = self.clock.now() + LIFETIME;
        let claims = serde_json::json!({
            "aud": origin,
            "exp": expires.as_secs(),
            "sub": self.subject,
        });
        let token = jsonwebtoken::encode(&self.header, &claims, &self.key)
            .map_err(|e| VapidError::Sign(e.to_string()))?;
        let value = HeaderValue::try_from(format!("vapid t={token}, k={}", self.public_key))
            .map_err(|e| VapidError::Sign(e.to_string()))?;
        Ok((value, expires))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{Clock, ManualClock};
    use std::sync::Arc;

    fn key() -> p256::SecretKey {
        crate::push::webpush::generated_keys("vapid test").0
    }

    fn vapid_on(clock: &ManualClock) -> Vapid {
        Vapid::new(
            &key(),
            "mailto:ops@example.com",
            Arc::new(clock.clone()),
            100,
        )
        .expect("valid")
    }

    #[test]
    fn tokens_are_per_origin_cached_and_renewed() {
        let clock = ManualClock::new();
        let vapid = vapid_on(&clock);
        let a = vapid.authorization("https://push.example.com").expect("a");
        assert_eq!(
            a,
            vapid.authorization("https://push.example.com").expect("a")
        );
        let b = vapid
            .authorization("https://other.example.com:8443")
            .expect("b");
        assert_ne!(a, b);

        // The token verifies against the public key it carries, with the origin as `aud`.
        let text = b.to_str().expect("ascii");
        let (t, k) = text
            .strip_prefix("vapid t=")
            .and_then(|rest| rest.split_once(", k="))
            .expect("vapid t=..., k=...");
        assert_eq!(k, vapid.public_key());
        let point = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(k)
            .expect("base64url");
        let (x, y) = (&point[1..33], &point[33..]);
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let decoding =
            jsonwebtoken::DecodingKey::from_ec_components(&b64.encode(x), &b64.encode(y))
                .expect("key");
        let mut validation = jsonwebtoken::Validation::new(Algorithm::ES256);
        validation.set_audience(&["https://other.example.com:8443"]);
        validation.validate_exp = false;
        let data =
            jsonwebtoken::decode::<serde_json::Value>(t, &decoding, &validation).expect("verifies");
        let exp = data.claims["exp"].as_u64().expect("exp");
        let now = clock.now().as_secs();
        assert!(exp > now && exp <= now + 24 * 3600);
        assert_eq!(data.claims["sub"], "mailto:ops@example.com");

        // Eleven hours on the token is still good; twelve minus less than an hour is renewed.
        clock.advance(Duration::from_secs(10 * 3600));
        assert_eq!(
            a,
            vapid.authorization("https://push.example.com").expect("a")
        );
        clock.advance(Duration::from_secs(3600 + 1));
        assert_ne!(
            a,
            vapid.authorization("https://push.example.com").expect("a")
        );
    }

    #[test]
    fn a_token_made_under_a_fast_clock_or_refused_is_made_again() {
        let clock = ManualClock::new();
        let vapid = vapid_on(&clock);
        let origin = "https://push.example.com";
        clock.advance(Duration::from_secs(20 * 3600));
        let fast = vapid.authorization(origin).expect("token");
        // NTP sets the clock right: the token's `exp` is now 32 h ahead, past what push
        // services take.
        clock.rewind(Duration::from_secs(20 * 3600));
        let fixed = vapid.authorization(origin).expect("token");
        assert_ne!(fast, fixed);
        assert_eq!(fixed, vapid.authorization(origin).expect("cached"));
        // A refused token is not sent again.
        clock.advance(Duration::from_secs(1));
        vapid.forget(origin);
        assert_ne!(fixed, vapid.authorization(origin).expect("new"));
    }

    #[test]
    fn keys_and_subjects_are_checked() {
        let clock: SharedClock = Arc::new(ManualClock::new());
        for subject in [
            "ops@example.com",
            "mailto:",
            "mailto:ops",
            "mailto:@example.com",
            "mailto:ops@",
            "mailto:o ps@example.com",
            "https:",
            "https://",
        ] {
            assert!(
                matches!(
                    Vapid::new(&key(), subject, clock.clone(), 100),
                    Err(VapidError::BadSubject(_))
                ),
                "{subject}"
            );
        }
        for subject in ["mailto:ops@example.com", "https://example.com/contact"] {
            assert!(
                Vapid::new(&key(), subject, clock.clone(), 100).is_ok(),
                "{subject}"
            );
            assert!(!local_subject(subject), "{subject}");
        }
        // Taken, with a warning: Apple refuses them (403 BadJwtToken), others do not.
        for subject in [
            "mailto:ops@localhost",
            "mailto:ops@box.local",
            "https://LOCALHOST:8080/x",
            "https://intranet/",
        ] {
            assert!(local_subject(subject), "{subject}");
        }
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key().to_bytes());
        assert_eq!(
            parse_private_key(&raw).expect("raw").to_bytes(),
            key().to_bytes()
        );
        let pem = key().to_pkcs8_pem(LineEnding::LF).expect("pem");
        assert_eq!(
            parse_private_key(&pem).expect("pem").to_bytes(),
            key().to_bytes()
        );
        let sec1 = key().to_sec1_pem(LineEnding::LF).expect("sec1");
        assert_eq!(
            parse_private_key(&sec1).expect("sec1").to_bytes(),
            key().to_bytes()
        );
        assert!(parse_private_key("AAAA").is_err());
        // A raw key cut short (24-31 bytes) is refused, not padded into another key.
        for len in [32, 40] {
            let e = parse_private_key(&raw[..len]).expect_err("short");
            assert!(e.to_string().contains("not a 32-byte"), "{e}");
        }
        assert!(
            parse_private_key("-----BEGIN PRIVATE KEY-----\nxx\n-----END PRIVATE KEY-----")
                .is_err()
        );
    }
}
