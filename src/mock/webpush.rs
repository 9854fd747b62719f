//! The fake web push service, modelled on Mozilla's autopush: `POST /wpush/{id}` (the
//! endpoints `push::webpush::generated_subscription` makes), plugged into the shared server
//! core (so TLS and h2c, HTTP/2 and HTTP/1.1, profiles, faults, counters and admin are the
//! other fakes').
//!
//! Checks, first failure wins: path (404) and method (405); VAPID (RFC 8292): a missing or
//! malformed `Authorization: vapid t=<JWT>, k=<key>`, or a JWT that is not ES256 or not signed
//! by `k`, is 401; an `aud` other than this server's origin as the client addressed it, an
//! `exp` missing, past or more than 24 h ahead, a `sub` neither `mailto:` nor `https:` is 403.
//! Then `TTL` (required, a non-negative integer), `Urgency` and `Topic` (400); then the body:
//! over 4096 bytes 413, anything but `Content-Encoding: aes128gcm` 400, broken aes128gcm
//! framing 400, and (every `decrypt_every`th message) a body that does not decrypt with the
//! generated subscription's keys 400. A valid request then meets the token rules by
//! subscription id (`dead…` 410; `bad0…`, `0ff0…` and `gone…` 404; `4290…` 429 once; `5030…`
//! 503 once), then the profile's scripted answers; everything else is 201 Created with
//! `Location: /m/<id>`.
//!
//! Errors are autopush's JSON, `{"code","errno","error","message"}`, with autopush's errno
//! where it has one (102 invalid token, 104 too large, 106 no subscription, 109 VAPID, 110
//! encryption, 111 missing TTL, 113 topic, 114 negative TTL) and `null` elsewhere.

use super::apns::{OnceMemory, ONCE_MEMORY};
use super::profile::Scripted;
use super::server::{ConnState, Env, Handler};
use crate::clock::{self, SharedClock};
use crate::push::token_rules::TokenRule;
use crate::push::webpush::{self, Urgency, FAKE_PATH, MAX_BODY};
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine;
use bytes::Bytes;
use http::header::{ALLOW, CONTENT_TYPE, HOST, LOCATION, RETRY_AFTER};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use p256::ecdsa::signature::Verifier;
use p256::ecdsa::{Signature, VerifyingKey};
use parking_lot::Mutex;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

/// Bodies up to this size are read before answering (answering an HTTP/2 request mid-upload
/// resets the stream, which some clients report instead of the answer); bigger ones get 413
/// at once.
const DRAIN_LIMIT: usize = 64 * 1024;
/// Verified VAPID headers remembered, so a reused JWT costs one signature check. Senders use
/// one token per origin for hours: a handful of entries is the normal case, and the map is
/// simply emptied when a flood of distinct tokens fills it.
const VAPID_CACHE: usize = 1024;
/// Longest `exp` ahead of now (RFC 8292 §2).
const MAX_EXP_AHEAD_S: u64 = 24 * 3600;
/// Clock skew tolerated on `exp`, both ways.
const CLOCK_SKEW_S: u64 = 60;

const TTL: HeaderName = HeaderName::from_static("ttl");

/// base64url with or without padding (senders differ).
const B64URL: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Web push options of a fake server.
#[derive(Debug, Clone)]
pub struct WebPushOptions {
    /// Decrypt every Nth message body with the generated subscription's keys: 1 = every
    /// message (the default), 0 = never, N = every Nth. Decryption costs one P-256 scalar
    /// multiplication in pure Rust, ~0.1 ms (`cargo bench --bench sender -- decrypt_fake`:
    /// ~10,000 messages a second a core, against >100,000 pushes a second without), so a
    /// benchmark wants a sample. The aes128gcm framing is checked on every message.
    pub decrypt_every: u64,
    /// The clock `exp` is judged by.
    pub clock: SharedClock,
}

impl Default for WebPushOptions {
    fn default() -> Self {
        WebPushOptions {
            decrypt_every: 1,
            clock: clock::system(),
        }
    }
}

/// Why a VAPID `Authorization` is refused: 401 for the credential itself, 403 for what its
/// claims say (RFC 8292 §4.2).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VapidError {
    #[error("missing Authorization header: expected `vapid t=<JWT>, k=<public key>`")]
    Missing,
    #[error("Authorization is not `vapid t=<JWT>, k=<public key>`")]
    Malformed,
    #[error("k is not a base64url uncompressed P-256 public key")]
    BadKey,
    #[error("t is not a JWT (header.claims.signature in base64url JSON)")]
    BadToken,
    #[error("the JWT's alg is {0:?}; VAPID requires ES256")]
    Algorithm(String),
    #[error("the JWT signature does not verify against k")]
    Signature,
    #[error("aud {aud:?} is not this push service's origin {origin}")]
    Audience { aud: String, origin: String },
    #[error("the JWT has no numeric exp claim")]
    NoExpiry,
    #[error("the JWT expired at {0}")]
    Expired(u64),
    #[error("exp {0} is more than 24 hours ahead")]
    TooFar(u64),
    #[error("sub must be a mailto: or https: URI")]
    Subject,
}

impl VapidError {
    pub fn status(&self) -> u16 {
        match self {
            VapidError::Missing
            | VapidError::Malformed
            | VapidError::BadKey
            | VapidError::BadToken
            | VapidError::Algorithm(_)
            | VapidError::Signature => 401,
            VapidError::Audience { .. }
            | VapidError::NoExpiry
            | VapidError::Expired(_)
            | VapidError::TooFar(_)
            | VapidError::Subject => 403,
        }
    }

    /// What `by_reason` counts it as.
    pub fn label(&self) -> &'static str {
        match self {
            VapidError::Missing => "vapid_missing",
            VapidError::Malformed => "vapid_malformed",
            VapidError::BadKey => "vapid_bad_key",
            VapidError::BadToken => "vapid_bad_token",
            VapidError::Algorithm(_) => "vapid_algorithm",
            VapidError::Signature => "vapid_signature",
            VapidError::Audience { .. } => "vapid_audience",
            VapidError::NoExpiry => "vapid_no_expiry",
            VapidError::Expired(_) => "vapid_expired",
            VapidError::TooFar(_) => "vapid_expiry_too_far",
            VapidError::Subject => "vapid_subject",
        }
    }
}

/// The claims of a JWT whose signature verified, kept so that a reused token is judged
/// without a second signature check. `aud` and `exp` depend on the request and the time, so
/// they are checked on every use.
#[derive(Debug, Clone)]
struct VapidClaims {
    aud: Option<String>,
    /// `aud` as a canonical origin; `None` when absent or not an origin.
    aud_origin: Option<String>,
    exp: Option<u64>,
    sub: Option<String>,
}

impl VapidClaims {
    fn check(&self, origin: Option<&str>, now: u64) -> Result<(), VapidError> {
        if self.aud_origin.is_none() || self.aud_origin.as_deref() != origin {
            return Err(VapidError::Audience {
                aud: self.aud.clone().unwrap_or_default(),
                origin: origin.unwrap_or("(no Host header)").to_string(),
            });
        }
        let exp = self.exp.ok_or(VapidError::NoExpiry)?;
        if exp.saturating_add(CLOCK_SKEW_S) < now {
            return Err(VapidError::Expired(exp));
        }
        if exp > now + MAX_EXP_AHEAD_S + CLOCK_SKEW_S {
            return Err(VapidError::TooFar(exp));
        }
        // autopush refuses a sub that is not a contact URI; so do we.
        let sub = self.sub.as_deref().unwrap_or_default();
        let contact = |scheme: &str| has_prefix(sub, scheme) && sub.len() > scheme.len();
        if !contact("mailto:") && !contact("https:") {
            return Err(VapidError::Subject);
        }
        Ok(())
    }
}

/// `s` starts with `prefix`, ASCII case-insensitively.
fn has_prefix(s: &str, prefix: &str) -> bool {
    s.get(..prefix.len())
        .is_some_and(|head| head.eq_ignore_ascii_case(prefix))
}

/// The `t` and `k` of `vapid t=<JWT>, k=<key>`: the scheme in any case, the parameters in any
/// order, separated by commas with or without spaces (py_vapid sends `t=..,k=..`), values
/// optionally quoted.
fn parse_vapid_header(value: &str) -> Result<(&str, &str), VapidError> {
    let (scheme, params) = value
        .trim()
        .split_once([' ', '\t'])
        .ok_or(VapidError::Malformed)?;
    if !scheme.eq_ignore_ascii_case("vapid") {
        return Err(VapidError::Malformed);
    }
    let (mut t, mut k) = (None, None);
    for param in params.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, v) = param.split_once('=').ok_or(VapidError::Malformed)?;
        let v = v.trim().trim_matches('"');
        match name.trim() {
            n if n.eq_ignore_ascii_case("t") => t = Some(v),
            n if n.eq_ignore_ascii_case("k") => k = Some(v),
            _ => {}
        }
    }
    match (t, k) {
        (Some(t), Some(k)) if !t.is_empty() && !k.is_empty() => Ok((t, k)),
        _ => Err(VapidError::Malformed),
    }
}

/// Checks an ES256 JWT against the public key `k`; returns its claims. Raw r||s (JOSE) and
/// DER signatures both pass.
fn verify_jwt(t: &str, k: &str) -> Result<VapidClaims, VapidError> {
    #[derive(serde::Deserialize)]
    struct Head {
        alg: String,
    }
    let key = B64URL.decode(k).map_err(|_| VapidError::BadKey)?;
    if key.len() != 65 || key[0] != 0x04 {
        return Err(VapidError::BadKey);
    }
    let key = VerifyingKey::from_sec1_bytes(&key).map_err(|_| VapidError::BadKey)?;
    let mut parts = t.split('.');
    let (Some(head), Some(claims), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(VapidError::BadToken);
    };
    let head: Head = B64URL
        .decode(head)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or(VapidError::BadToken)?;
    if head.alg != "ES256" {
        return Err(VapidError::Algorithm(head.alg));
    }
    let sig = B64URL.decode(signature).map_err(|_| VapidError::BadToken)?;
    let sig = if sig.len() == 64 {
        Signature::from_slice(&sig)
    } else {
        Signature::from_der(&sig)
    }
    .map_err(|_| VapidError::Signature)?;
    let signed = &t[..head_len(t)];
    key.verify(signed.as_bytes(), &sig)
        .map_err(|_| VapidError::Signature)?;
    let claims: Value = B64URL
        .decode(claims)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .filter(Value::is_object)
        .ok_or(VapidError::BadToken)?;
    let text = |name: &str| claims.get(name).and_then(Value::as_str).map(str::to_owned);
    let aud = text("aud");
    Ok(VapidClaims {
        aud_origin: aud.as_deref().and_then(aud_origin),
        aud,
        // A string or fractional exp is refused, as autopush's JWT library does.
        exp: claims.get("exp").and_then(Value::as_u64),
        sub: text("sub"),
    })
}

/// Length of `header.claims`, the signed part of a JWT.
fn head_len(jwt: &str) -> usize {
    jwt.rfind('.').unwrap_or(0)
}

/// `scheme://host[:port]` with the host in lower case and the port only when it is not the
/// scheme's default: the form both sides of the `aud` comparison are brought to.
fn origin_of(scheme: &str, authority: &str) -> Option<String> {
    let authority: http::uri::Authority = authority.parse().ok()?;
    if authority.as_str().contains('@') || authority.host().is_empty() {
        return None;
    }
    let default = if scheme == "https" { 443 } else { 80 };
    let host = authority.host().to_ascii_lowercase();
    Some(match authority.port_u16() {
        Some(port) if port != default => format!("{scheme}://{host}:{port}"),
        _ => format!("{scheme}://{host}"),
    })
}

/// The origin an `aud` names: an http(s) URL without path (a lone `/` is tolerated, as
/// autopush's URL comparison does), query or user information.
fn aud_origin(aud: &str) -> Option<String> {
    let uri: http::Uri = aud.parse().ok()?;
    let scheme = uri.scheme_str()?.to_ascii_lowercase();
    if !matches!(scheme.as_str(), "https" | "http")
        || !matches!(uri.path(), "" | "/")
        || uri.query().is_some()
    {
        return None;
    }
    origin_of(&scheme, uri.authority()?.as_str())
}

/// This server's origin as the client addressed it: the listener's scheme and the request's
/// `:authority` (HTTP/2) or `Host` (HTTP/1.1).
fn request_origin(parts: &http::request::Parts, tls: bool) -> Option<String> {
    let authority = match parts.uri.authority() {
        Some(a) => a.as_str(),
        None => parts.headers.get(HOST)?.to_str().ok()?,
    };
    origin_of(if tls { "https" } else { "http" }, authority)
}

/// The web push headers, found in one pass over the map; the first of a repeated one counts.
#[derive(Default)]
struct PushHeaders<'a> {
    authorization: Option<&'a HeaderValue>,
    ttl: Option<&'a HeaderValue>,
    urgency: Option<&'a HeaderValue>,
    topic: Option<&'a HeaderValue>,
    encoding: Option<&'a HeaderValue>,
    content_length: Option<&'a HeaderValue>,
}

impl<'a> PushHeaders<'a> {
    fn scan(headers: &'a HeaderMap) -> Self {
        let mut h = PushHeaders::default();
        for (name, value) in headers {
            let slot = match name.as_str() {
                "authorization" => &mut h.authorization,
                "ttl" => &mut h.ttl,
                "urgency" => &mut h.urgency,
                "topic" => &mut h.topic,
                "content-encoding" => &mut h.encoding,
                "content-length" => &mut h.content_length,
                _ => continue,
            };
            slot.get_or_insert(value);
        }
        h
    }
}

/// An error answer in autopush's shape.
#[derive(Debug)]
struct PushError {
    status: u16,
    errno: Option<u16>,
    /// What `by_reason` counts it as.
    label: String,
    message: String,
    retry_after: Option<u64>,
}

impl PushError {
    fn new(status: u16, errno: Option<u16>, label: &str, message: impl Into<String>) -> Self {
        PushError {
            status,
            errno,
            label: label.to_string(),
            message: message.into(),
            retry_after: None,
        }
    }

    fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    fn vapid(e: VapidError) -> Self {
        PushError::new(e.status(), Some(109), e.label(), e.to_string())
    }

    fn encryption(label: &str, message: impl Into<String>) -> Self {
        PushError::new(400, Some(110), label, message)
    }

    fn too_large(len: Option<usize>) -> Self {
        let size = len
            .map(|n| format!("{n} bytes"))
            .unwrap_or("the body".into());
        PushError::new(
            413,
            Some(104),
            "payload_too_large",
            format!("{size} exceeds the {MAX_BODY}-byte limit on a push message"),
        )
    }

    fn invalid_token() -> Self {
        PushError::new(404, Some(102), "invalid_token", "Invalid token")
    }

    fn render(self, env: &Env) -> Response<Full<Bytes>> {
        env.stats.reason(&self.label);
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::json!({
            "code": self.status,
            "errno": self.errno,
            "error": status.canonical_reason().unwrap_or(""),
            "message": self.message,
        });
        let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Some(s) = self.retry_after {
            headers.insert(RETRY_AFTER, HeaderValue::from(s));
        }
        if status == StatusCode::METHOD_NOT_ALLOWED {
            headers.insert(ALLOW, HeaderValue::from_static("POST"));
        }
        response
    }
}

/// The status a profile's error-mix reason maps to: APNs and FCM names (the shipped profiles
/// use APNs names) to the web push status that means the same, a status number as itself,
/// anything else 500.
pub fn profile_status(reason: &str) -> u16 {
    match reason {
        "TooManyRequests" | "QUOTA_EXCEEDED" => 429,
        "ServiceUnavailable" | "Shutdown" | "UNAVAILABLE" => 503,
        "Unregistered" | "ExpiredToken" | "UNREGISTERED" => 410,
        "BadDeviceToken" | "DeviceTokenNotForTopic" | "SENDER_ID_MISMATCH" => 404,
        "PayloadTooLarge" => 413,
        "InternalServerError" | "INTERNAL" => 500,
        other => other
            .parse::<u16>()
            .ok()
            .filter(|s| (400..600).contains(s))
            .unwrap_or(500),
    }
}

/// autopush's errno for a status it answers for a subscription.
fn errno_of(status: u16) -> Option<u16> {
    match status {
        404 => Some(102),
        410 => Some(106),
        413 => Some(104),
        _ => None,
    }
}

/// The web push protocol handler.
#[derive(Debug)]
pub struct WebPushHandler {
    options: WebPushOptions,
    /// Verified `Authorization` values and their claims.
    vapid: Mutex<HashMap<Box<str>, VapidClaims>>,
    once: Mutex<OnceMemory>,
    ids: AtomicU64,
    /// Message bodies seen, for `decrypt_every`.
    bodies: AtomicU64,
}

impl WebPushHandler {
    pub fn new(options: WebPushOptions) -> WebPushHandler {
        WebPushHandler {
            options,
            vapid: Mutex::new(HashMap::new()),
            once: Mutex::new(OnceMemory::new(ONCE_MEMORY)),
            ids: AtomicU64::new(rand::random::<u32>() as u64),
            bodies: AtomicU64::new(0),
        }
    }

    /// Checks the VAPID credential for a request to `origin`; a header already verified
    /// costs a map lookup and the claim checks.
    fn authorize(
        &self,
        header: Option<&HeaderValue>,
        origin: Option<&str>,
    ) -> Result<(), VapidError> {
        let value = header
            .ok_or(VapidError::Missing)?
            .to_str()
            .map_err(|_| VapidError::Malformed)?;
        let now = self.options.clock.now().as_secs();
        if let Some(claims) = self.vapid.lock().get(value) {
            return claims.check(origin, now);
        }
        let (t, k) = parse_vapid_header(value)?;
        let claims = verify_jwt(t, k)?;
        let verdict = claims.check(origin, now);
        let mut cache = self.vapid.lock();
        if cache.len() >= VAPID_CACHE {
            cache.clear();
        }
        cache.insert(value.into(), claims);
        verdict
    }

    /// Everything but the token rules and the profile: VAPID, headers, body.
    fn check(
        &self,
        parts: &http::request::Parts,
        h: &PushHeaders<'_>,
        body: &[u8],
        id: &str,
        conn: &ConnState,
        env: &Env,
    ) -> Result<(), PushError> {
        let origin = request_origin(parts, conn.tls);
        self.authorize(h.authorization, origin.as_deref())
            .map_err(PushError::vapid)?;
        check_ttl(h.ttl)?;
        if h.urgency
            .is_some_and(|v| v.to_str().ok().and_then(Urgency::parse).is_none())
        {
            return Err(PushError::new(
                400,
                None,
                "invalid_urgency",
                "Urgency must be very-low, low, normal or high",
            ));
        }
        if h.topic
            .is_some_and(|v| !v.to_str().is_ok_and(webpush::valid_topic))
        {
            return Err(PushError::new(
                400,
                Some(113),
                "invalid_topic",
                "Topic must be 1 to 32 characters of the URL and filename safe base64 alphabet",
            ));
        }
        self.check_body(h.encoding, body, id, env)
    }

    fn check_body(
        &self,
        encoding: Option<&HeaderValue>,
        body: &[u8],
        id: &str,
        env: &Env,
    ) -> Result<(), PushError> {
        if body.len() > MAX_BODY {
            return Err(PushError::too_large(Some(body.len())));
        }
        let Some(encoding) = encoding else {
            // No body and no encoding: a tickle push, which wakes the service worker.
            return if body.is_empty() {
                Ok(())
            } else {
                Err(PushError::encryption(
                    "missing_encoding",
                    "Missing Content-Encoding header",
                ))
            };
        };
        // autopush answers 400 (errno 110) for an unknown encoding, not 415; so do we. The
        // legacy `aesgcm` it still accepts is refused here: the pusher must send aes128gcm.
        if !encoding.as_bytes().eq_ignore_ascii_case(b"aes128gcm") {
            return Err(PushError::encryption(
                "unknown_encoding",
                "Unknown Content-Encoding header: only aes128gcm is accepted",
            ));
        }
        webpush::parse_header(body)
            .map_err(|e| PushError::encryption("bad_framing", format!("aes128gcm: {e}")))?;
        if self.sample() {
            // Stricter than a real push service, which cannot decrypt (only the browser holds
            // the key): the fake derives the key of every subscription the generator made, so
            // a sender's encryption bug surfaces here instead of in a browser.
            let keys = webpush::generated_slot_keys(id);
            let plain = webpush::decrypt_with(body, &keys.secret, &keys.public, &keys.auth)
                .map_err(|e| {
                    PushError::encryption(
                        "decryption_failed",
                        format!("the body does not decrypt with the subscription's keys: {e}"),
                    )
                })?;
            env.stats.decrypted(&plain);
        }
        Ok(())
    }

    /// Whether this message body is one `decrypt_every` picks.
    fn sample(&self) -> bool {
        match self.options.decrypt_every {
            0 => false,
            1 => true,
            n => self.bodies.fetch_add(1, Ordering::Relaxed) % n == 0,
        }
    }

    fn first_time(&self, id: &str) -> bool {
        self.once.lock().first_time(id)
    }

    /// The answer a token rule gives, if any.
    fn token_rule(&self, id: &str) -> Option<PushError> {
        if has_prefix(id, "gone") {
            return Some(PushError::invalid_token());
        }
        match TokenRule::of(id)? {
            TokenRule::Unregistered => Some(PushError::new(
                410,
                Some(106),
                "no_subscription",
                "No such subscription",
            )),
            TokenRule::BadToken | TokenRule::WrongTopic => Some(PushError::invalid_token()),
            TokenRule::ThrottledOnce => self.first_time(id).then(|| {
                PushError::new(429, None, "too_many_requests", "Too many requests").retry_after(1)
            }),
            TokenRule::UnavailableOnce => self.first_time(id).then(|| {
                PushError::new(
                    503,
                    None,
                    "service_unavailable",
                    "The service is temporarily unavailable",
                )
                .retry_after(1)
            }),
        }
    }

    /// `201 Created`, `Location: /m/<message id>`, `TTL` echoed as autopush does.
    fn created(&self, ttl: Option<&HeaderValue>) -> Response<Full<Bytes>> {
        let n = self.ids.fetch_add(1, Ordering::Relaxed);
        let mut location = HeaderValue::from_str(&format!("/m/{n:016x}"))
            .unwrap_or(HeaderValue::from_static("/m/0"));
        // Unique per response: keep it out of the HPACK dynamic tables.
        location.set_sensitive(true);
        let mut response = Response::new(Full::new(Bytes::new()));
        *response.status_mut() = StatusCode::CREATED;
        let headers = response.headers_mut();
        headers.insert(LOCATION, location);
        if let Some(ttl) = ttl {
            headers.insert(TTL, ttl.clone());
        }
        response
    }
}

/// `TTL`: required, a non-negative integer (autopush caps large values instead of refusing
/// them; any size is accepted here).
fn check_ttl(ttl: Option<&HeaderValue>) -> Result<(), PushError> {
    let parsed = ttl.and_then(|v| v.to_str().ok()?.trim().parse::<i64>().ok());
    match parsed {
        None => Err(PushError::new(
            400,
            Some(111),
            "no_ttl",
            "Missing TTL value: a TTL header with a number of seconds is required",
        )),
        Some(n) if n < 0 => Err(PushError::new(
            400,
            Some(114),
            "invalid_ttl",
            "TTL must be greater than or equal to 0",
        )),
        Some(_) => Ok(()),
    }
}

/// The error the profile scripts for this request, if any.
fn scripted(env: &Env) -> Option<PushError> {
    match env.faults.scripted()? {
        Scripted::Unavailable => Some(
            PushError::new(
                503,
                None,
                "service_unavailable",
                "The service is temporarily unavailable",
            )
            .retry_after(1),
        ),
        Scripted::Throttled { retry_after_s } => Some(
            PushError::new(429, None, "too_many_requests", "Too many requests")
                .retry_after(retry_after_s),
        ),
        Scripted::Error(reason) => {
            let status = profile_status(&reason);
            let error = PushError::new(
                status,
                errno_of(status),
                &reason,
                format!("Scripted error {reason}"),
            );
            Some(if matches!(status, 429 | 503) {
                error.retry_after(1)
            } else {
                error
            })
        }
    }
}

/// Reads (and drops) a body, so the answer does not interrupt the upload.
async fn drain(body: Incoming) {
    let _ = Limited::new(body, DRAIN_LIMIT).collect().await;
}

impl Handler for WebPushHandler {
    async fn handle<'a>(
        &'a self,
        req: Request<Incoming>,
        conn: &'a ConnState,
        env: &'a Env,
    ) -> Response<Full<Bytes>> {
        let (parts, body) = req.into_parts();
        let path = parts.uri.path();
        let Some(id) = path
            .strip_prefix(FAKE_PATH)
            .filter(|id| !id.is_empty() && !id.contains('/'))
        else {
            drain(body).await;
            return PushError::new(
                404,
                Some(102),
                "not_found",
                format!("no push endpoint at {path}: POST to {FAKE_PATH}<subscription id>"),
            )
            .render(env);
        };
        if parts.method != Method::POST {
            drain(body).await;
            return PushError::new(
                405,
                None,
                "method_not_allowed",
                format!("use POST for {path}"),
            )
            .render(env);
        }
        let h = PushHeaders::scan(&parts.headers);
        let declared = h
            .content_length
            .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
        if declared.is_some_and(|n| n > DRAIN_LIMIT) {
            return PushError::too_large(declared).render(env);
        }
        let body = match Limited::new(body, DRAIN_LIMIT).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
                return PushError::too_large(None).render(env);
            }
            // The client reset the stream mid-body: nobody will read this answer.
            Err(_) => {
                return PushError::new(400, None, "broken_body", "the body could not be read")
                    .render(env);
            }
        };
        env.stats.bytes_in(body.len());
        if let Err(e) = self.check(&parts, &h, &body, id, conn, env) {
            return e.render(env);
        }
        if let Some(e) = self.token_rule(id).or_else(|| scripted(env)) {
            return e.render(env);
        }
        env.stats.delivered(id);
        self.created(h.ttl)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{Clock, ManualClock};
    use p256::ecdsa::signature::Signer;
    use p256::ecdsa::SigningKey;
    use std::sync::Arc;

    fn b64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_slice(&[seed; 32]).unwrap()
    }

    fn public(key: &SigningKey) -> String {
        b64(key.verifying_key().to_encoded_point(false).as_bytes())
    }

    /// A JWT with this header and these claims, signed by `key` (raw r||s).
    fn jwt(key: &SigningKey, head: &str, claims: &Value) -> String {
        let signed = format!(
            "{}.{}",
            b64(head.as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let sig: Signature = key.sign(signed.as_bytes());
        format!("{signed}.{}", b64(&sig.to_bytes()))
    }

    const ES256: &str = r#"{"typ":"JWT","alg":"ES256"}"#;

    #[test]
    fn vapid_headers_are_parsed_leniently() {
        for header in [
            "vapid t=a.b.c, k=KEY",
            "vapid t=a.b.c,k=KEY",
            "VAPID k=KEY,  t=a.b.c",
            "Vapid\tt=\"a.b.c\", k=\"KEY\", x=1",
            "vapid t=a.b.c, k=KEY,",
        ] {
            assert_eq!(parse_vapid_header(header), Ok(("a.b.c", "KEY")), "{header}");
        }
        for bad in [
            "Bearer t=a.b.c, k=KEY",
            "WebPush a.b.c",
            "vapid",
            "vapid t=a.b.c",
            "vapid t=, k=KEY",
            "vapid t a.b.c, k=KEY",
        ] {
            assert_eq!(parse_vapid_header(bad), Err(VapidError::Malformed), "{bad}");
        }
    }

    #[test]
    fn origins_are_canonical() {
        assert_eq!(
            aud_origin("https://Push.Example.com:443"),
            Some("https://push.example.com".into())
        );
        assert_eq!(aud_origin("HTTPS://h:8443/"), Some("https://h:8443".into()));
        assert_eq!(
            aud_origin("http://127.0.0.1:80"),
            Some("http://127.0.0.1".into())
        );
        assert_eq!(aud_origin("http://[::1]:9"), Some("http://[::1]:9".into()));
        for bad in [
            "https://h/path",
            "https://h/?q",
            "ftp://h",
            "h:443",
            "https://u@h",
            "",
        ] {
            assert_eq!(aud_origin(bad), None, "{bad}");
        }
        assert_eq!(
            origin_of("https", "localhost:443"),
            Some("https://localhost".into())
        );
        assert_eq!(
            origin_of("http", "localhost:443"),
            Some("http://localhost:443".into())
        );
    }

    #[test]
    fn jwts_are_verified_against_k() {
        let signer = key(7);
        let claims = serde_json::json!({"aud":"https://h","exp":100,"sub":"mailto:a@b.c"});
        let token = jwt(&signer, ES256, &claims);
        let verified = verify_jwt(&token, &public(&signer)).unwrap();
        assert_eq!(verified.aud_origin.as_deref(), Some("https://h"));
        assert_eq!(verified.exp, Some(100));
        assert_eq!(
            verify_jwt(&token, &public(&key(8))).unwrap_err(),
            VapidError::Signature
        );
        let hs = jwt(&signer, r#"{"alg":"HS256"}"#, &claims);
        assert_eq!(
            verify_jwt(&hs, &public(&signer)).unwrap_err(),
            VapidError::Algorithm("HS256".into())
        );
        assert_eq!(
            verify_jwt("a.b", &public(&signer)).unwrap_err(),
            VapidError::BadToken
        );
        assert_eq!(
            verify_jwt(&token, &b64(&[4; 65])).unwrap_err(),
            VapidError::BadKey
        );
        // A DER signature verifies too.
        let signed = &token[..head_len(&token)];
        let sig: Signature = signer.sign(signed.as_bytes());
        let der = format!("{signed}.{}", b64(sig.to_der().as_bytes()));
        assert!(verify_jwt(&der, &public(&signer)).is_ok());
    }

    #[test]
    fn claims_are_checked_with_skew() {
        let now = 1_000_000;
        let claims = |aud: &str, exp: Option<u64>, sub: &str| VapidClaims {
            aud: Some(aud.into()),
            aud_origin: aud_origin(aud),
            exp,
            sub: Some(sub.into()),
        };
        let check = |c: VapidClaims| c.check(Some("https://h"), now).map_err(|e| e.label());
        let mail = "mailto:ops@example.com";
        assert_eq!(check(claims("https://h", Some(now + 3600), mail)), Ok(()));
        assert_eq!(check(claims("https://h", Some(now - 30), mail)), Ok(()));
        assert_eq!(
            check(claims(
                "https://h",
                Some(now + MAX_EXP_AHEAD_S + 30),
                "https://example.com"
            )),
            Ok(())
        );
        assert_eq!(
            check(claims("https://h", Some(now - 61), mail)),
            Err("vapid_expired")
        );
        assert_eq!(
            check(claims("https://h", Some(now + MAX_EXP_AHEAD_S + 61), mail)),
            Err("vapid_expiry_too_far")
        );
        assert_eq!(
            check(claims("https://h", None, mail)),
            Err("vapid_no_expiry")
        );
        assert_eq!(
            check(claims("http://h", Some(now), mail)),
            Err("vapid_audience")
        );
        assert_eq!(
            check(claims("https://h:8443", Some(now), mail)),
            Err("vapid_audience")
        );
        for sub in ["ops@example.com", "mailto:", "http://example.com", ""] {
            assert_eq!(
                check(claims("https://h", Some(now), sub)),
                Err("vapid_subject"),
                "{sub}"
            );
        }
    }

    #[test]
    fn verified_tokens_are_cached() {
        let clock = ManualClock::new();
        let handler = WebPushHandler::new(WebPushOptions {
            decrypt_every: 1,
            clock: Arc::new(clock.clone()),
        });
        let signer = key(9);
        let now = clock.now().as_secs();
        let claims = serde_json::json!({"aud":"https://h","exp":now + 3600,"sub":"mailto:a@b.c"});
        let header = HeaderValue::from_str(&format!(
            "vapid t={}, k={}",
            jwt(&signer, ES256, &claims),
            public(&signer)
        ))
        .unwrap();
        assert_eq!(handler.authorize(Some(&header), Some("https://h")), Ok(()));
        assert_eq!(handler.vapid.lock().len(), 1);
        // The cached claims are judged again on every use: another origin, a later time.
        assert!(matches!(
            handler.authorize(Some(&header), Some("https://other")),
            Err(VapidError::Audience { .. })
        ));
        clock.advance(std::time::Duration::from_secs(3600 + 61));
        assert!(matches!(
            handler.authorize(Some(&header), Some("https://h")),
            Err(VapidError::Expired(_))
        ));
        assert_eq!(handler.vapid.lock().len(), 1);
        assert_eq!(handler.authorize(None, None), Err(VapidError::Missing));
    }

    #[test]
    fn ttls_and_profile_reasons() {
        let ttl =
            |s: &str| check_ttl(Some(&HeaderValue::from_str(s).unwrap())).map_err(|e| e.errno);
        assert_eq!(ttl("0"), Ok(()));
        assert_eq!(ttl("2419200"), Ok(()));
        assert_eq!(ttl("-1"), Err(Some(114)));
        assert_eq!(ttl("soon"), Err(Some(111)));
        assert_eq!(check_ttl(None).map_err(|e| e.errno), Err(Some(111)));
        for (reason, status) in [
            ("TooManyRequests", 429),
            ("ServiceUnavailable", 503),
            ("UNAVAILABLE", 503),
            ("Unregistered", 410),
            ("BadDeviceToken", 404),
            ("InternalServerError", 500),
            ("502", 502),
            ("whatever", 500),
        ] {
            assert_eq!(profile_status(reason), status, "{reason}");
        }
    }

    #[test]
    fn decrypt_every_samples() {
        let sampled = |every: u64| {
            let handler = WebPushHandler::new(WebPushOptions {
                decrypt_every: every,
                ..WebPushOptions::default()
            });
            (0..10).filter(|_| handler.sample()).count()
        };
        assert_eq!((sampled(0), sampled(1), sampled(3)), (0, 10, 4));
    }
}
