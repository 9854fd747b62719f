//! APNs provider tokens: ES256 JWTs (`{"alg":"ES256","kid"}` / `{"iss","iat"}`, base64url, raw
//! r||s signature), cached and shared by every connection. Apple wants a token renewed no more
//! often than every 20 minutes and no less than every 60 (protocols.md §1.4); we renew after a
//! configurable age in [20, 50] minutes, and at once when APNs says `ExpiredProviderToken`.

use crate::clock::SharedClock;
use http::HeaderValue;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use parking_lot::{Mutex, RwLock};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub const MIN_REFRESH: Duration = Duration::from_secs(20 * 60);
pub const MAX_REFRESH: Duration = Duration::from_secs(50 * 60);

/// Token-auth credentials: the .p8 key and its ids.
#[derive(Clone)]
pub struct TokenAuth {
    key_pem: Vec<u8>,
    pub key_id: String,
    pub team_id: String,
    /// Token age after which a new one is minted, in [20, 50] minutes.
    pub refresh_after: Duration,
}

impl std::fmt::Debug for TokenAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenAuth")
            .field("key", &"<redacted>")
            .field("key_id", &self.key_id)
            .field("team_id", &self.team_id)
            .field("refresh_after", &self.refresh_after)
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum JwtError {
    #[error("cannot read APNs key file {path}: {reason}")]
    ReadKey { path: PathBuf, reason: String },
    #[error("APNs key is not a PKCS#8 P-256 (.p8) private key: {0}")]
    BadKey(String),
    #[error("APNs key file {path} is not a PKCS#8 P-256 (.p8) private key: {reason}")]
    BadKeyFile { path: PathBuf, reason: String },
    #[error("key id must not be empty")]
    NoKeyId,
    #[error("team id must not be empty")]
    NoTeamId,
    #[error("token refresh age {0:?} is outside 20..=50 minutes")]
    RefreshOutOfRange(Duration),
    #[error("signing the provider token failed: {0}")]
    Sign(String),
}

impl TokenAuth {
    pub fn new(
        key_pem: Vec<u8>,
        key_id: impl Into<String>,
        team_id: impl Into<String>,
    ) -> TokenAuth {
        TokenAuth {
            key_pem,
            key_id: key_id.into(),
            team_id: team_id.into(),
            refresh_after: MAX_REFRESH,
        }
    }

    pub fn from_file(
        path: &Path,
        key_id: impl Into<String>,
        team_id: impl Into<String>,
    ) -> Result<TokenAuth, JwtError> {
        let pem = std::fs::read(path).map_err(|e| JwtError::ReadKey {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        // Checked here, where the path is known: the signer's error could not say which file
        // (the reason is jsonwebtoken's kind of error, never the file's contents).
        check_key(&pem).map_err(|reason| JwtError::BadKeyFile {
            path: path.to_path_buf(),
            reason,
        })?;
        Ok(TokenAuth::new(pem, key_id, team_id))
    }
}

/// Whether `pem` signs an ES256 token: a PEM that parses but holds another kind of key fails
/// only when used.
fn check_key(pem: &[u8]) -> Result<(), String> {
    let key = EncodingKey::from_ec_pem(pem).map_err(|e| e.to_string())?;
    let claims = Claims {
        iss: "check",
        iat: 0,
    };
    jsonwebtoken::encode(&Header::new(Algorithm::ES256), &claims, &key)
        .map(drop)
        .map_err(|e| e.to_string())
}

#[derive(serde::Serialize)]
struct Claims<'a> {
    iss: &'a str,
    iat: u64,
}

#[derive(Clone)]
struct Cached {
    /// `bearer <jwt>`, ready to clone into a request.
    header: HeaderValue,
    issued_at: Duration,
    generation: u64,
    /// Set by `invalidate`: renew on the next call whatever the age.
    stale: bool,
}

/// The shared token cache. Cheap on the hot path: a read lock and a `HeaderValue` clone.
pub struct JwtSigner {
    key: EncodingKey,
    header: Header,
    team_id: String,
    refresh_after: Duration,
    clock: SharedClock,
    cached: RwLock<Option<Cached>>,
    /// Serialises minting: concurrent callers that find the token old mint it once.
    mint: Mutex<()>,
}

impl std::fmt::Debug for JwtSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtSigner")
            .field("kid", &self.header.kid)
            .field("team_id", &self.team_id)
            .finish_non_exhaustive()
    }
}

impl JwtSigner {
    /// Checks the key by signing one token (a bad key fails here, not on the first push).
    pub fn new(auth: &TokenAuth, clock: SharedClock) -> Result<JwtSigner, JwtError> {
        if auth.key_id.trim().is_empty() {
            return Err(JwtError::NoKeyId);
        }
        if auth.team_id.trim().is_empty() {
            return Err(JwtError::NoTeamId);
        }
        if !(MIN_REFRESH..=MAX_REFRESH).contains(&auth.refresh_after) {
            return Err(JwtError::RefreshOutOfRange(auth.refresh_after));
        }
        let key =
            EncodingKey::from_ec_pem(&auth.key_pem).map_err(|e| JwtError::BadKey(e.to_string()))?;
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(auth.key_id.clone());
        let signer = JwtSigner {
            key,
            header,
            team_id: auth.team_id.clone(),
            refresh_after: auth.refresh_after,
            clock,
            cached: RwLock::new(None),
            mint: Mutex::new(()),
        };
        signer
            .sign(signer.clock.now())
            .map_err(|e| JwtError::BadKey(e.to_string()))?;
        Ok(signer)
    }

    /// The current `authorization` value and its generation (for `invalidate`).
    pub fn current(&self) -> Result<(HeaderValue, u64), JwtError> {
        let now = self.clock.now();
        if let Some(c) = self.fresh(now) {
            return Ok(c);
        }
        let _minting = self.mint.lock();
        // Re-check: another caller may have minted while we waited for the lock.
        if let Some(c) = self.fresh(now) {
            return Ok(c);
        }
        let header = self.sign(now)?;
        let mut cached = self.cached.write();
        let generation = cached.as_ref().map_or(1, |c| c.generation + 1);
        *cached = Some(Cached {
            header: header.clone(),
            issued_at: now,
            generation,
            stale: false,
        });
        Ok((header, generation))
    }

    /// APNs rejected token `generation` as expired: the next `current` mints a new one. Many
    /// responses for the same token invalidate it once; an already-replaced token is ignored.
    pub fn invalidate(&self, generation: u64) {
        let mut cached = self.cached.write();
        if let Some(c) = cached.as_mut() {
            if c.generation == generation {
                c.stale = true;
            }
        }
    }

    fn fresh(&self, now: Duration) -> Option<(HeaderValue, u64)> {
        let cached = self.cached.read();
        let c = cached.as_ref()?;
        let age = now.saturating_sub(c.issued_at);
        (!c.stale && age < self.refresh_after).then(|| (c.header.clone(), c.generation))
    }

    fn sign(&self, now: Duration) -> Result<HeaderValue, JwtError> {
        let claims = Claims {
            iss: &self.team_id,
            iat: now.as_secs(),
        };
        let jwt = jsonwebtoken::encode(&self.header, &claims, &self.key)
            .map_err(|e| JwtError::Sign(e.to_string()))?;
        // Not marked sensitive: h2 would then never HPACK-index it and would resend the
        // ~200-byte token literally on every request. It lives an hour and is never logged.
        HeaderValue::from_str(&format!("bearer {jwt}")).map_err(|e| JwtError::Sign(e.to_string()))
    }
}

/// The signers of a process's apps, one per key: apps that share a .p8 key (one team's apps,
/// usually) share its token. Apple counts token changes per team (protocols.md §1.4, Apple
/// DTS): with a signer each, N apps minted N tokens of the team within each refresh, and from
/// a handful of apps on, APNs answers `TooManyProviderTokenUpdates`.
#[derive(Default)]
pub struct Signers {
    by_key: std::collections::HashMap<(Vec<u8>, String, String, Duration), Arc<JwtSigner>>,
}

impl Signers {
    /// The signer for `auth`'s key, team and refresh age: made (and checked) on first use.
    pub fn get(
        &mut self,
        auth: &TokenAuth,
        clock: &SharedClock,
    ) -> Result<Arc<JwtSigner>, JwtError> {
        let key = (
            auth.key_pem.clone(),
            auth.key_id.clone(),
            auth.team_id.clone(),
            auth.refresh_after,
        );
        if let Some(signer) = self.by_key.get(&key) {
            return Ok(signer.clone());
        }
        let signer = Arc::new(JwtSigner::new(auth, clock.clone())?);
        self.by_key.insert(key, signer.clone());
        Ok(signer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{Clock, ManualClock};

    const KEY: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fixtures/apns/AuthKey_TESTKEY001.p8"
    );
    const PUB: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fixtures/apns/AuthKey_TESTKEY001.pub.pem"
    );

    fn signer(refresh_min: u64) -> (JwtSigner, ManualClock) {
        let clock = ManualClock::new();
        let mut auth = TokenAuth::from_file(Path::new(KEY), "TESTKEY001", "TEAM000001").unwrap();
        auth.refresh_after = Duration::from_secs(refresh_min * 60);
        (
            JwtSigner::new(&auth, Arc::new(clock.clone())).unwrap(),
            clock,
        )
    }

    /// Two apps of one key get one signer, so the second app's first push ten minutes in
    /// carries the first app's token, not a second token of the team; another team (or key)
    /// gets its own.
    #[test]
    fn apps_that_share_a_key_share_its_token() {
        let clock = ManualClock::new();
        let shared: SharedClock = Arc::new(clock.clone());
        let auth = TokenAuth::from_file(Path::new(KEY), "TESTKEY001", "TEAM000001").unwrap();
        let mut signers = Signers::default();
        let first_app = signers.get(&auth, &shared).unwrap();
        let (token, _) = first_app.current().unwrap();
        clock.advance(Duration::from_secs(10 * 60));
        let second_app = signers.get(&auth.clone(), &shared).unwrap();
        assert!(Arc::ptr_eq(&first_app, &second_app));
        assert_eq!(
            second_app.current().unwrap().0,
            token,
            "one token for the team"
        );
        let other_team = TokenAuth::from_file(Path::new(KEY), "TESTKEY001", "TEAM000002").unwrap();
        let other = signers.get(&other_team, &shared).unwrap();
        assert!(!Arc::ptr_eq(&first_app, &other));
        assert_ne!(other.current().unwrap().0, token);
    }

    fn jwt(v: &HeaderValue) -> String {
        v.to_str()
            .unwrap()
            .strip_prefix("bearer ")
            .unwrap()
            .to_string()
    }

    #[test]
    fn token_verifies_with_the_public_key_and_carries_kid_iss_iat() {
        let (s, clock) = signer(50);
        let (value, _) = s.current().unwrap();
        let token = jwt(&value);
        assert!(
            !token.contains('=') && !token.contains('+') && !token.contains('/'),
            "base64url, unpadded"
        );
        let public = std::fs::read(PUB).unwrap();
        let key = jsonwebtoken::DecodingKey::from_ec_pem(&public).unwrap();
        let mut validation = jsonwebtoken::Validation::new(Algorithm::ES256);
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        #[derive(serde::Deserialize)]
        struct C {
            iss: String,
            iat: u64,
        }
        let data = jsonwebtoken::decode::<C>(&token, &key, &validation).unwrap();
        assert_eq!(data.header.kid.as_deref(), Some("TESTKEY001"));
        assert_eq!(data.claims.iss, "TEAM000001");
        assert_eq!(data.claims.iat, clock.now().as_secs());
        // Raw r||s: a 64-byte signature (DER would be 70-72).
        use base64::Engine;
        let sig = token.rsplit('.').next().unwrap();
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(sig)
            .unwrap();
        assert_eq!(raw.len(), 64);
        assert!(!value.is_sensitive(), "HPACK must be able to index it");
    }

    #[test]
    fn renewal_window() {
        // (refresh age in minutes, minutes to advance, expect a new token)
        let cases = [
            (50, 19, false),
            (50, 49, false),
            (50, 50, true),
            (20, 19, false),
            (20, 20, true),
            (35, 34, false),
            (35, 35, true),
        ];
        for (refresh, advance, renewed) in cases {
            let (s, clock) = signer(refresh);
            let (first, g1) = s.current().unwrap();
            clock.advance(Duration::from_secs(advance * 60));
            let (second, g2) = s.current().unwrap();
            assert_eq!(
                first != second,
                renewed,
                "refresh {refresh} min, after {advance} min"
            );
            assert_eq!(g2 == g1 + 1, renewed);
        }
    }

    #[test]
    fn refresh_outside_20_to_50_minutes_is_refused() {
        for minutes in [0, 19, 51, 60] {
            let mut auth = TokenAuth::from_file(Path::new(KEY), "K", "T").unwrap();
            auth.refresh_after = Duration::from_secs(minutes * 60);
            let err = JwtSigner::new(&auth, Arc::new(ManualClock::new())).unwrap_err();
            assert!(matches!(err, JwtError::RefreshOutOfRange(_)), "{minutes}");
        }
    }

    #[test]
    fn invalidate_renews_at_once_and_only_once_per_generation() {
        let (s, clock) = signer(50);
        let (first, g1) = s.current().unwrap();
        clock.advance(Duration::from_secs(1));
        s.invalidate(g1);
        s.invalidate(g1);
        let (second, g2) = s.current().unwrap();
        assert_ne!(first, second);
        assert_eq!(g2, g1 + 1);
        // A late response about the old token must not throw away the new one.
        s.invalidate(g1);
        assert_eq!(s.current().unwrap(), (second, g2));
    }

    #[test]
    fn concurrent_callers_mint_once() {
        let (s, clock) = signer(50);
        let (_, g1) = s.current().unwrap();
        clock.advance(Duration::from_secs(50 * 60));
        let s = Arc::new(s);
        let results: Vec<_> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..8)
                .map(|_| scope.spawn(|| s.current().unwrap()))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(results.iter().all(|r| *r == results[0]));
        assert_eq!(results[0].1, g1 + 1, "exactly one new generation");
    }

    #[test]
    fn bad_keys_are_clear_errors() {
        let err = TokenAuth::from_file(Path::new("/nonexistent/AuthKey.p8"), "K", "T").unwrap_err();
        assert!(err.to_string().contains("/nonexistent/AuthKey.p8"), "{err}");
        // A file that is no key: its path named, its contents not.
        let dir = tempfile::tempdir().unwrap();
        let notkey = dir.path().join("notkey.p8");
        std::fs::write(&notkey, "SECRET-LOOKING CONTENTS").unwrap();
        let err = TokenAuth::from_file(&notkey, "K", "T").unwrap_err();
        assert!(matches!(err, JwtError::BadKeyFile { .. }), "{err}");
        let text = err.to_string();
        assert!(text.contains(&notkey.display().to_string()), "{text}");
        assert!(!text.contains("SECRET-LOOKING"), "{text}");
        let auth = TokenAuth::new(b"not a key".to_vec(), "K", "T");
        let err = JwtSigner::new(&auth, Arc::new(ManualClock::new())).unwrap_err();
        assert!(matches!(err, JwtError::BadKey(_)), "{err}");
        let auth = TokenAuth::from_file(Path::new(KEY), "", "T").unwrap();
        assert!(matches!(
            JwtSigner::new(&auth, Arc::new(ManualClock::new())),
            Err(JwtError::NoKeyId)
        ));
    }
}
