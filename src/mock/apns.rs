//! The fake APNs: routing, validation in APNs' order, JWT and certificate auth, per-token
//! rules, answers with APNs' exact statuses and `{"reason":...}` bodies.
//!
//! Checks, first failure wins: method (405 MethodNotAllowed), path (404 BadPath, 400
//! MissingDeviceToken), token format (BadDeviceToken), repeated headers (DuplicateHeaders),
//! `apns-id` (BadMessageId), topic (MissingTopic), push type (InvalidPushType), priority
//! (BadPriority), expiration (BadExpirationDate), collapse id (BadCollapseId), auth (403
//! BadCertificate / MissingProviderToken / InvalidProviderToken / ExpiredProviderToken; 429
//! TooManyProviderTokenUpdates for a new token on a connection within 20 minutes of its last),
//! payload (400 PayloadEmpty, 413 PayloadTooLarge: 4096 bytes, 5120 for voip), topic suffix of
//! the push type (400 DeviceTokenNotForTopic: voip wants `<bundle>.voip`, ...). Then a valid
//! request meets the token rules (`crate::push::token_rules`), then the profile's scripted
//! answers (outage, throttle, error mix); everything else is a 200.

use super::profile::Scripted;
use super::server::{ConnState, Credential, Env, Handler};
use super::MockError;
use crate::clock::{self, SharedClock};
use crate::push::apns::{
    payload_limit, valid_apns_id, valid_priority, valid_token, ApnsReason, PushType,
    MAX_COLLAPSE_ID,
};
use crate::push::token_rules::TokenRule;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine;
use bytes::Bytes;
use http::header::{CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use p256::ecdsa::signature::Verifier;
use p256::ecdsa::{Signature, VerifyingKey};
use parking_lot::Mutex;
use std::collections::{HashMap, HashSet, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

const APNS_ID: HeaderName = HeaderName::from_static("apns-id");

/// A JWT older than this is `ExpiredProviderToken`.
const TOKEN_LIFETIME_S: u64 = 3600;
/// A new provider token issued less than this after the one it replaces on a connection is
/// `TooManyProviderTokenUpdates` (Apple: refresh no more than once every 20 minutes).
const MIN_TOKEN_UPDATE_S: u64 = 20 * 60;
/// How many tokens the "once" rules remember; the oldest is forgotten first.
pub(super) const ONCE_MEMORY: usize = 100_000;

const B64URL: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// APNs options of a fake server.
#[derive(Debug, Clone)]
pub struct ApnsOptions {
    /// Keys JWTs are verified against. With none (and no client CA) auth is not checked.
    pub jwt_keys: Vec<JwtKey>,
    /// The clock `iat` is checked against.
    pub clock: SharedClock,
    /// Refuse a request without `apns-push-type` (400 InvalidPushType), as watchOS and strict
    /// APNs servers do. On by default: a sender that omits it must not pass here.
    pub require_push_type: bool,
}

impl Default for ApnsOptions {
    fn default() -> Self {
        ApnsOptions {
            jwt_keys: Vec::new(),
            clock: clock::system(),
            require_push_type: true,
        }
    }
}

/// A provider key the fake accepts: key id (`kid`), team id (`iss`), public key.
#[derive(Debug, Clone)]
pub struct JwtKey {
    pub key_id: String,
    pub team_id: String,
    pub key: VerifyingKey,
}

impl JwtKey {
    /// From PEM text: a public key (SPKI) or the `.p8` private key itself.
    pub fn from_pem(key_id: &str, team_id: &str, pem: &str) -> Result<JwtKey, MockError> {
        use p256::pkcs8::{DecodePrivateKey, DecodePublicKey};
        let key = match p256::PublicKey::from_public_key_pem(pem) {
            Ok(public) => public,
            Err(_) => p256::SecretKey::from_pkcs8_pem(pem)
                .map_err(|_| {
                    MockError::Config(format!(
                        "JWT key {key_id}: not a P-256 public key or PKCS#8 private key in PEM"
                    ))
                })?
                .public_key(),
        };
        Ok(JwtKey {
            key_id: key_id.to_string(),
            team_id: team_id.to_string(),
            key: VerifyingKey::from(key),
        })
    }

    /// From the command line's `KEYID:TEAMID:FILE.pem`.
    pub fn from_spec(spec: &str) -> Result<JwtKey, MockError> {
        let mut parts = spec.splitn(3, ':');
        let (Some(key_id), Some(team_id), Some(file)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(MockError::Config(format!(
                "--jwt-key {spec:?}: expected KEYID:TEAMID:PUBKEY.pem"
            )));
        };
        if key_id.is_empty() || team_id.is_empty() {
            return Err(MockError::Config(format!(
                "--jwt-key {spec:?}: empty key id or team id"
            )));
        }
        let pem = std::fs::read_to_string(Path::new(file)).map_err(|e| {
            MockError::Config(format!("--jwt-key {key_id}: cannot read {file}: {e}"))
        })?;
        JwtKey::from_pem(key_id, team_id, &pem)
    }
}

/// The APNs protocol handler.
#[derive(Debug)]
pub struct ApnsHandler {
    keys: HashMap<String, JwtKey>,
    /// A client CA is configured: connections without a certificate or a JWT are refused.
    cert_auth: bool,
    clock: SharedClock,
    require_push_type: bool,
    once: Mutex<OnceMemory>,
    ids: IdGenerator,
}

impl ApnsHandler {
    pub fn new(options: &ApnsOptions, cert_auth: bool) -> Result<ApnsHandler, MockError> {
        Ok(ApnsHandler {
            keys: options
                .jwt_keys
                .iter()
                .map(|k| (k.key_id.clone(), k.clone()))
                .collect(),
            cert_auth,
            clock: options.clock.clone(),
            require_push_type: options.require_push_type,
            once: Mutex::new(OnceMemory::new(ONCE_MEMORY)),
            ids: IdGenerator::new(),
        })
    }

    /// Validation and auth of the request head; `Err` is the answer.
    fn check_head(
        &self,
        parts: &http::request::Parts,
        h: &ApnsHeaders<'_>,
        conn: &ConnState,
    ) -> Result<(), ApnsReason> {
        use ApnsReason::*;
        if parts.method != Method::POST {
            return Err(MethodNotAllowed);
        }
        let Some(token) = parts.uri.path().strip_prefix("/3/device/") else {
            return Err(BadPath);
        };
        if token.is_empty() {
            return Err(MissingDeviceToken);
        }
        if !valid_token(token) {
            return Err(BadDeviceToken);
        }
        if h.duplicate {
            return Err(DuplicateHeaders);
        }
        if h.id.is_some_and(|v| !v.to_str().is_ok_and(valid_apns_id)) {
            return Err(BadMessageId);
        }
        // A certificate connection may omit the topic: the certificate's own topic is used.
        if h.topic.is_none_or(|v| v.is_empty()) && !conn.client_cert {
            return Err(MissingTopic);
        }
        match h.push_type {
            None if self.require_push_type => return Err(InvalidPushType),
            Some(v) if v.to_str().ok().and_then(PushType::parse).is_none() => {
                return Err(InvalidPushType)
            }
            _ => {}
        }
        if h.priority
            .is_some_and(|v| !parse::<u8>(v).is_some_and(valid_priority))
        {
            return Err(BadPriority);
        }
        if h.expiration.is_some_and(|v| parse::<u64>(v).is_none()) {
            return Err(BadExpirationDate);
        }
        if h.collapse_id.is_some_and(|v| v.len() > MAX_COLLAPSE_ID) {
            return Err(BadCollapseId);
        }
        self.authenticate(h.authorization, conn)
    }

    fn authenticate(
        &self,
        authorization: Option<&HeaderValue>,
        conn: &ConnState,
    ) -> Result<(), ApnsReason> {
        use ApnsReason::*;
        if conn.client_cert {
            return Ok(());
        }
        if self.keys.is_empty() {
            return if self.cert_auth {
                Err(BadCertificate)
            } else {
                Ok(())
            };
        }
        let Some(value) = authorization else {
            return Err(MissingProviderToken);
        };
        let value = value.to_str().map_err(|_| InvalidProviderToken)?;
        let Some((scheme, token)) = value.split_once(' ') else {
            return Err(MissingProviderToken);
        };
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(MissingProviderToken);
        }
        let token = token.trim();
        let now = self.clock.now().as_secs();
        let fresh = |issued_at: u64| {
            if issued_at.saturating_add(TOKEN_LIFETIME_S) < now {
                Err(ExpiredProviderToken)
            } else {
                Ok(())
            }
        };
        let mut cached = conn.credential.lock();
        if let Some(c) = cached.as_mut().filter(|c| c.token == token) {
            let answer = fresh(c.issued_at);
            c.renewal_due |= answer.is_err();
            return answer;
        }
        let (team, issued_at) = self.verify_jwt(token)?;
        // One team per connection (Apple does not support more).
        if cached.as_ref().is_some_and(|c| c.issuer != team) {
            return Err(InvalidProviderToken);
        }
        if let Err(expired) = fresh(issued_at) {
            if let Some(c) = cached.as_mut() {
                c.renewal_due = true;
            }
            return Err(expired);
        }
        // A token replacing the connection's own less than 20 minutes (by `iat`) after it was
        // issued: the provider mints too often (per request, per connection, or alternating
        // keys). Counted per connection, as pushy's author reads Apple's rule (pushy #682):
        // new connections, other processes and other apps of the team each start afresh.
        // Not for the first token, nor for the renewal an ExpiredProviderToken asked for.
        if let Some(c) = cached.as_ref() {
            if !c.renewal_due && issued_at < c.issued_at.saturating_add(MIN_TOKEN_UPDATE_S) {
                return Err(TooManyProviderTokenUpdates);
            }
        }
        *cached = Some(Credential {
            token: token.to_string(),
            issuer: team,
            issued_at,
            renewal_due: false,
        });
        Ok(())
    }

    /// Checks an ES256 JWT; returns its team and `iat`. Raw r||s and DER signatures both pass.
    fn verify_jwt(&self, token: &str) -> Result<(String, u64), ApnsReason> {
        #[derive(serde::Deserialize)]
        struct Header {
            alg: String,
            kid: String,
        }
        #[derive(serde::Deserialize)]
        struct Claims {
            iss: String,
            iat: u64,
        }
        fn invalid<E>(_: E) -> ApnsReason {
            ApnsReason::InvalidProviderToken
        }
        let mut parts = token.split('.');
        let (Some(header), Some(claims), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(ApnsReason::InvalidProviderToken);
        };
        let head: Header =
            serde_json::from_slice(&B64URL.decode(header).map_err(invalid)?).map_err(invalid)?;
        let key = self
            .keys
            .get(&head.kid)
            .filter(|_| head.alg == "ES256")
            .ok_or(ApnsReason::InvalidProviderToken)?;
        let body: Claims =
            serde_json::from_slice(&B64URL.decode(claims).map_err(invalid)?).map_err(invalid)?;
        if body.iss != key.team_id {
            return Err(ApnsReason::InvalidProviderToken);
        }
        let sig = B64URL.decode(signature).map_err(invalid)?;
        let sig = if sig.len() == 64 {
            Signature::from_slice(&sig)
        } else {
            Signature::from_der(&sig)
        }
        .map_err(invalid)?;
        let signed = &token[..header.len() + 1 + claims.len()];
        key.key.verify(signed.as_bytes(), &sig).map_err(invalid)?;
        Ok((body.iss, body.iat))
    }

    fn answer(
        &self,
        env: &Env,
        apns_id: HeaderValue,
        reason: &ApnsReason,
        extra: Extra,
    ) -> Response<Full<Bytes>> {
        env.stats.reason(reason.as_str());
        let body = match extra {
            Extra::Timestamp(ms) => {
                format!(r#"{{"reason":"{}","timestamp":{ms}}}"#, reason.as_str())
            }
            _ => format!(r#"{{"reason":"{}"}}"#, reason.as_str()),
        };
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() =
            StatusCode::from_u16(reason.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let headers = response.headers_mut();
        headers.insert(APNS_ID, apns_id);
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Extra::RetryAfter(s) = extra {
            headers.insert(RETRY_AFTER, HeaderValue::from(s));
        }
        response
    }

    /// `Some(answer)` when a token rule decides this request.
    fn token_rule(&self, token: &str) -> Option<(ApnsReason, Extra)> {
        let rule = TokenRule::of(token)?;
        match rule {
            TokenRule::Unregistered => Some((
                ApnsReason::Unregistered,
                Extra::Timestamp(self.clock.now().as_millis() as u64),
            )),
            TokenRule::BadToken => Some((ApnsReason::BadDeviceToken, Extra::None)),
            TokenRule::WrongTopic => Some((ApnsReason::DeviceTokenNotForTopic, Extra::None)),
            TokenRule::UnavailableOnce => self
                .first_time(token)
                .then_some((ApnsReason::ServiceUnavailable, Extra::None)),
            TokenRule::ThrottledOnce => self
                .first_time(token)
                .then_some((ApnsReason::TooManyRequests, Extra::RetryAfter(1))),
        }
    }

    fn first_time(&self, token: &str) -> bool {
        self.once.lock().first_time(token)
    }
}

/// The request headers APNs looks at, found in one pass over the map (cheaper than one
/// hashed lookup per name on the hot path).
#[derive(Default)]
struct ApnsHeaders<'a> {
    id: Option<&'a HeaderValue>,
    topic: Option<&'a HeaderValue>,
    push_type: Option<&'a HeaderValue>,
    priority: Option<&'a HeaderValue>,
    expiration: Option<&'a HeaderValue>,
    collapse_id: Option<&'a HeaderValue>,
    authorization: Option<&'a HeaderValue>,
    content_length: Option<&'a HeaderValue>,
    /// One of the headers above (but content-length) came more than once.
    duplicate: bool,
}

impl<'a> ApnsHeaders<'a> {
    fn scan(headers: &'a HeaderMap) -> Self {
        let mut h = ApnsHeaders::default();
        for (name, value) in headers {
            let slot = match name.as_str() {
                "apns-id" => &mut h.id,
                "apns-topic" => &mut h.topic,
                "apns-push-type" => &mut h.push_type,
                "apns-priority" => &mut h.priority,
                "apns-expiration" => &mut h.expiration,
                "apns-collapse-id" => &mut h.collapse_id,
                "authorization" => &mut h.authorization,
                "content-length" => {
                    h.content_length = Some(value);
                    continue;
                }
                _ => continue,
            };
            h.duplicate |= slot.replace(value).is_some();
        }
        h
    }
}

enum BodyError {
    TooLarge,
    Broken,
}

/// Reads a request body of at most `limit` bytes. A body in one DATA frame (the usual case)
/// is kept as is, without a copy.
async fn read_body(mut body: Incoming, limit: usize) -> Result<Bytes, BodyError> {
    let mut first: Option<Bytes> = None;
    let mut joined: Option<bytes::BytesMut> = None;
    let mut len = 0;
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.map_err(|_| BodyError::Broken)?.into_data() else {
            continue; // trailers
        };
        len += data.len();
        if len > limit {
            return Err(BodyError::TooLarge);
        }
        match (&mut first, &mut joined) {
            (None, None) => first = Some(data),
            (Some(head), None) => {
                let mut buf = bytes::BytesMut::with_capacity(limit.min(len * 2));
                buf.extend_from_slice(head);
                buf.extend_from_slice(&data);
                joined = Some(buf);
            }
            (_, Some(buf)) => buf.extend_from_slice(&data),
        }
    }
    Ok(match (first, joined) {
        (_, Some(buf)) => buf.freeze(),
        (Some(one), None) => one,
        (None, None) => Bytes::new(),
    })
}

enum Extra {
    None,
    Timestamp(u64),
    RetryAfter(u64),
}

fn parse<T: std::str::FromStr>(v: &HeaderValue) -> Option<T> {
    v.to_str().ok()?.trim().parse().ok()
}

impl Handler for ApnsHandler {
    async fn handle<'a>(
        &'a self,
        req: Request<Incoming>,
        conn: &'a ConnState,
        env: &'a Env,
    ) -> Response<Full<Bytes>> {
        let (parts, body) = req.into_parts();
        let h = ApnsHeaders::scan(&parts.headers);
        // Echo a valid apns-id, make one otherwise (also on BadMessageId).
        let mut apns_id = match h.id {
            Some(v) if v.to_str().is_ok_and(valid_apns_id) => v.clone(),
            _ => self.ids.next(),
        };
        // Unique per response: "never indexed" keeps it out of the HPACK dynamic tables,
        // where it would only evict useful entries and cost the encoder a table search.
        apns_id.set_sensitive(true);
        let limit = payload_limit(h.push_type.and_then(|v| PushType::parse(v.to_str().ok()?)));
        if let Err(reason) = self.check_head(&parts, &h, conn) {
            // The body is read first (up to the limit), as a server that answers at the end of
            // the request does: answered before it, the stream is reset after the answer, and
            // curl 7.88 shows "Stream error in the HTTP/2 framing layer" instead of the 400.
            // Bounded: a client that never ends its stream would keep it in flight for good.
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), read_body(body, limit))
                .await;
            return self.answer(env, apns_id, &reason, Extra::None);
        }
        if h.content_length
            .and_then(parse::<u64>)
            .is_some_and(|n| n > limit as u64)
        {
            return self.answer(env, apns_id, &ApnsReason::PayloadTooLarge, Extra::None);
        }
        let payload = match read_body(body, limit).await {
            Ok(payload) => payload,
            Err(BodyError::TooLarge) => {
                return self.answer(env, apns_id, &ApnsReason::PayloadTooLarge, Extra::None)
            }
            // The client reset the stream mid-body: nobody will read this answer.
            Err(BodyError::Broken) => {
                return self.answer(env, apns_id, &ApnsReason::InternalServerError, Extra::None)
            }
        };
        env.stats.bytes_in(payload.len());
        if payload.is_empty() {
            return self.answer(env, apns_id, &ApnsReason::PayloadEmpty, Extra::None);
        }
        // A push type with a topic suffix (voip: `<bundle>.voip`, ...) sent to a topic without
        // it. protocols.md does not say what real APNs answers; DeviceTokenNotForTopic is
        // assumed (a voip token belongs to `<bundle>.voip`, not to the bundle id), so a sender
        // that forgets the suffix sees its tokens refused here.
        let topic = h.topic.and_then(|v| v.to_str().ok());
        let push_type = h.push_type.and_then(|v| PushType::parse(v.to_str().ok()?));
        if let (Some(topic), Some(push_type)) = (topic, push_type) {
            if !push_type.fits_topic(topic) {
                return self.answer(
                    env,
                    apns_id,
                    &ApnsReason::DeviceTokenNotForTopic,
                    Extra::None,
                );
            }
        }
        // The path was checked in check_head.
        let token = parts
            .uri
            .path()
            .get("/3/device/".len()..)
            .unwrap_or_default();
        if let Some((reason, extra)) = self.token_rule(token) {
            return self.answer(env, apns_id, &reason, extra);
        }
        match env.faults.scripted() {
            None => {}
            Some(Scripted::Unavailable) => {
                return self.answer(env, apns_id, &ApnsReason::ServiceUnavailable, Extra::None);
            }
            Some(Scripted::Throttled { retry_after_s }) => {
                return self.answer(
                    env,
                    apns_id,
                    &ApnsReason::TooManyRequests,
                    Extra::RetryAfter(retry_after_s),
                );
            }
            Some(Scripted::Error(reason)) => {
                let reason = ApnsReason::parse(&reason);
                let extra = match reason.status() {
                    410 => Extra::Timestamp(self.clock.now().as_millis() as u64),
                    _ => Extra::None,
                };
                return self.answer(env, apns_id, &reason, extra);
            }
        }
        env.stats.delivered(token);
        let mut response = Response::new(Full::new(Bytes::new()));
        response.headers_mut().insert(APNS_ID, apns_id);
        response
    }
}

/// Remembers which tokens already had their one failure, forgetting the oldest when full.
/// Shared with the fake FCM.
#[derive(Debug)]
pub(super) struct OnceMemory {
    seen: HashSet<String>,
    order: VecDeque<String>,
    capacity: usize,
}

impl OnceMemory {
    pub(super) fn new(capacity: usize) -> Self {
        OnceMemory {
            seen: HashSet::new(),
            order: VecDeque::new(),
            capacity,
        }
    }

    /// True the first time a token is seen (and records it).
    pub(super) fn first_time(&mut self, token: &str) -> bool {
        let token = token.to_ascii_lowercase();
        if self.seen.contains(&token) {
            return false;
        }
        if self.order.len() >= self.capacity {
            if let Some(oldest) = self.order.pop_front() {
                self.seen.remove(&oldest);
            }
        }
        self.seen.insert(token.clone());
        self.order.push_back(token);
        true
    }
}

/// `apns-id`s for requests without one: a random 64-bit prefix and a counter, in UUID
/// form (version 4 bits set). Unique per server without a random draw per request.
#[derive(Debug)]
struct IdGenerator {
    prefix: u64,
    counter: AtomicU64,
}

impl IdGenerator {
    fn new() -> Self {
        // Version 4 in bits 12..16 of the third group.
        let prefix = (rand::random::<u64>() & !0xF000) | 0x4000;
        IdGenerator {
            prefix,
            counter: AtomicU64::new(rand::random::<u64>()),
        }
    }

    fn next(&self) -> HeaderValue {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        // Variant bits 10xx in the fourth group.
        let low = (n & 0x3FFF_FFFF_FFFF_FFFF) | 0x8000_0000_0000_0000;
        let value = u128::from(self.prefix) << 64 | u128::from(low);
        let mut out = [0u8; 36];
        let hex = b"0123456789abcdef";
        let mut nibble = 32;
        for (i, slot) in out.iter_mut().enumerate() {
            if matches!(i, 8 | 13 | 18 | 23) {
                *slot = b'-';
            } else {
                nibble -= 1;
                *slot = hex[((value >> (nibble * 4)) & 0xF) as usize];
            }
        }
        HeaderValue::from_bytes(&out).unwrap_or(HeaderValue::from_static(
            "00000000-0000-4000-8000-000000000000",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_are_canonical_uuids_and_differ() {
        let ids = IdGenerator::new();
        let (a, b) = (ids.next(), ids.next());
        assert!(valid_apns_id(a.to_str().unwrap()), "{a:?}");
        assert_ne!(a, b);
        assert_eq!(&a.to_str().unwrap()[14..15], "4");
    }

    #[test]
    fn once_memory_fails_once_and_forgets_the_oldest() {
        let mut m = OnceMemory::new(2);
        assert!(m.first_time("a"));
        assert!(!m.first_time("A"));
        assert!(m.first_time("b"));
        assert!(m.first_time("c"));
        assert!(m.first_time("a"), "a was the oldest and is forgotten");
    }

    #[test]
    fn jwt_key_specs_are_checked() {
        assert!(JwtKey::from_spec("nokey").is_err());
        assert!(JwtKey::from_spec("K:T:/nonexistent.pem").is_err());
        let k = JwtKey::from_spec("TESTKEY001:TEAM000001:fixtures/apns/AuthKey_TESTKEY001.pub.pem")
            .unwrap();
        let p =
            JwtKey::from_spec("TESTKEY001:TEAM000001:fixtures/apns/AuthKey_TESTKEY001.p8").unwrap();
        assert_eq!(k.key, p.key);
    }
}
