//! Web push (RFC 8030 delivery, RFC 8291 encryption, RFC 8292 VAPID) as domain types: the
//! browser's subscription, the Kafka message, the checks a subscription must pass before we
//! connect anywhere, the verdict table, and the reference decryption the fake uses.
//!
//! The decryption here is written on RustCrypto (`p256`, `hkdf`, `aes-gcm`) and pinned by RFC
//! 8291's Appendix A vector; the sender encrypts with `ring` (sender/webpush/). Two independent
//! implementations meet in every test, so a mistake in one cannot hide in the other.

use super::{Outcome, RetryHint, Verdict};
use base64::Engine;
use serde::{Deserialize, Serialize};
use std::net::IpAddr;
use std::time::Duration;

/// Largest request body a push service must accept (RFC 8030 §7.2): 413 above it.
pub const MAX_BODY: usize = 4096;
/// The aes128gcm header with a 65-byte key id: salt(16) rs(4) idlen(1) keyid(65).
pub const HEADER_LEN: usize = 86;
/// Largest plaintext that fits one record within [`MAX_BODY`] (16-byte tag, 1 delimiter).
pub const MAX_PLAINTEXT: usize = MAX_BODY - HEADER_LEN - 16 - 1;
/// `TTL` when a message gives none: four weeks, as the npm `web-push` library.
pub const DEFAULT_TTL: u32 = 4 * 7 * 24 * 3600;
/// Longest `Topic` (RFC 8030 §5.4: at most 32 characters of the base64url alphabet).
pub const MAX_TOPIC: usize = 32;
/// The path under which the fake push service and generated subscriptions live.
pub const FAKE_PATH: &str = "/wpush/";

/// The browsers' push services (host suffixes, on https's 443). Failures there (no
/// connection, 5xx, 401, 403) are retried and count toward an outage: every push failing so
/// pauses the app (sender/gate.rs), one subscription's give up after its retries. Failures at
/// any other origin (or port) count against the message alone, so one hostile subscription
/// pointing at a dead host cannot stall everyone else's pushes.
pub const PUSH_SERVICES: &[&str] = &[
    "fcm.googleapis.com",
    "push.services.mozilla.com",
    "push.apple.com",
    "notify.windows.com",
];

/// A browser's push subscription, as `PushSubscription.toJSON()` gives it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscription {
    pub endpoint: String,
    pub keys: Keys,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Keys {
    /// The browser's P-256 public key, uncompressed (65 bytes), base64url.
    pub p256dh: String,
    /// The browser's 16-byte authentication secret, base64url.
    pub auth: String,
}

/// `Urgency` (RFC 8030 §5.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Urgency {
    VeryLow,
    Low,
    Normal,
    High,
}

impl Urgency {
    pub fn as_str(self) -> &'static str {
        match self {
            Urgency::VeryLow => "very-low",
            Urgency::Low => "low",
            Urgency::Normal => "normal",
            Urgency::High => "high",
        }
    }

    pub fn parse(s: &str) -> Option<Urgency> {
        match s {
            "very-low" => Some(Urgency::VeryLow),
            "low" => Some(Urgency::Low),
            "normal" => Some(Urgency::Normal),
            "high" => Some(Urgency::High),
            _ => None,
        }
    }
}

/// One web push request from Kafka (DESIGN.md §11); parsed by `push::message::parse_webpush`.
#[derive(Debug, Clone, PartialEq)]
pub struct WebPushMessage {
    pub subscription: Subscription,
    /// What the browser's service worker receives: a JSON payload as its JSON text, a string
    /// payload as the string.
    pub payload: Vec<u8>,
    /// Seconds the push service keeps an undelivered message.
    pub ttl: u32,
    pub urgency: Option<Urgency>,
    /// Replaces an undelivered message with the same topic (the collapse key).
    pub topic: Option<String>,
    pub metadata: super::message::Metadata,
    /// Unix milliseconds; 0 = never expires.
    pub push_expiry: i64,
}

/// True for a `Topic` a push service accepts.
pub fn valid_topic(topic: &str) -> bool {
    !topic.is_empty()
        && topic.len() <= MAX_TOPIC
        && topic
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Where a subscription may point. Browsers' push services are public https origins; an
/// endpoint on a private address is someone asking the pusher to post into our own network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EndpointRules {
    /// Accept `http://` endpoints (fakes and tests only).
    pub allow_http: bool,
    /// Accept endpoints whose host is a loopback, private or link-local address (or
    /// `localhost`).
    pub allow_private: bool,
}

impl EndpointRules {
    /// Production: https to public hosts only.
    pub const STRICT: EndpointRules = EndpointRules {
        allow_http: false,
        allow_private: false,
    };
    /// Fakes on this machine.
    pub const LOCAL: EndpointRules = EndpointRules {
        allow_http: true,
        allow_private: true,
    };
}

/// Why a subscription cannot be sent to. Never an endpoint failure. The subscription's fault
/// (an invalid token: deleted, with a feedback record), except a refusal by our
/// [`EndpointRules`] ([`SubscriptionError::by_our_rules`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubscriptionError {
    #[error("endpoint is not a valid URL: {0}")]
    BadEndpoint(String),
    #[error("endpoint must be https (got {0:?})")]
    NotHttps(String),
    #[error(
        "endpoint host {0} is a loopback, private or link-local address (taken only for a local \
         fake: --allow-local-endpoints, webpush.allowLocalEndpoints)"
    )]
    PrivateAddress(String),
    #[error("keys.{field} is invalid: {reason}")]
    BadKey { field: &'static str, reason: String },
}

impl SubscriptionError {
    /// Refused by the [`EndpointRules`] only (http, a private host), which other rules allow
    /// (`webpush.allowLocalEndpoints`): a verdict of our configuration, not that the
    /// subscription is dead. A pusher run without the rules `pusher api` registered under
    /// would otherwise delete every such subscription.
    pub fn by_our_rules(&self) -> bool {
        match self {
            SubscriptionError::NotHttps(scheme) => scheme == "http",
            SubscriptionError::PrivateAddress(_) => true,
            SubscriptionError::BadEndpoint(_) | SubscriptionError::BadKey { .. } => false,
        }
    }

    /// Short stable label for feedback records and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            SubscriptionError::BadEndpoint(_) => "bad_endpoint",
            SubscriptionError::NotHttps(_) => "endpoint_not_https",
            SubscriptionError::PrivateAddress(_) => "endpoint_private_address",
            SubscriptionError::BadKey { .. } => "bad_subscription_key",
        }
    }
}

/// A subscription that passed every check: what the sender needs, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedSubscription {
    pub endpoint: http::Uri,
    /// `scheme://host[:port]` (the port only when not the scheme's default): VAPID's `aud`
    /// and the key of the connection pool.
    pub origin: String,
    pub p256dh: [u8; 65],
    pub auth: [u8; 16],
}

/// A VAPID `sub` a push service takes (RFC 8292 §2.1): `mailto:` with an address
/// (`local@domain`), or an `https:` URL with a host. A bare `mailto:` passed a prefix check,
/// and Apple's service and our fake then refused every token.
pub fn valid_subject(subject: &str) -> bool {
    if let Some(address) = subject.strip_prefix("mailto:") {
        let Some((local, domain)) = address.rsplit_once('@') else {
            return false;
        };
        let clean =
            |s: &str| !s.is_empty() && !s.chars().any(|c| c.is_whitespace() || c.is_control());
        return clean(local) && clean(domain);
    }
    subject.starts_with("https:")
        && subject.parse::<http::Uri>().is_ok_and(|uri| {
            uri.scheme_str() == Some("https") && uri.host().is_some_and(|h| !h.is_empty())
        })
}

/// Checks a subscription: a URL with a host, https (unless allowed), not private (unless
/// allowed), a 65-byte uncompressed P-256 point and a 16-byte secret in base64url.
pub fn check_subscription(
    sub: &Subscription,
    rules: EndpointRules,
) -> Result<CheckedSubscription, SubscriptionError> {
    let endpoint: http::Uri = sub
        .endpoint
        .parse()
        .map_err(|e: http::uri::InvalidUri| SubscriptionError::BadEndpoint(e.to_string()))?;
    let scheme = endpoint.scheme_str().unwrap_or_default();
    let tls = match scheme {
        "https" => true,
        "http" if rules.allow_http => false,
        "http" => return Err(SubscriptionError::NotHttps(scheme.into())),
        "" => return Err(SubscriptionError::BadEndpoint("no scheme".into())),
        other => return Err(SubscriptionError::NotHttps(other.into())),
    };
    let authority = endpoint
        .authority()
        .ok_or_else(|| SubscriptionError::BadEndpoint("no host".into()))?;
    if authority.as_str().contains('@') {
        return Err(SubscriptionError::BadEndpoint(
            "user information in the URL".into(),
        ));
    }
    // Host names are case-insensitive, but a push service may compare VAPID's `aud` as a
    // string: the origin is written in lower case, as browsers write endpoints.
    let host = authority.host().to_ascii_lowercase();
    let host = host.as_str();
    if host.is_empty() {
        return Err(SubscriptionError::BadEndpoint("no host".into()));
    }
    if !rules.allow_private && is_private_host(host) {
        return Err(SubscriptionError::PrivateAddress(host.into()));
    }
    let default_port = if tls { 443 } else { 80 };
    let origin = match authority.port_u16() {
        Some(port) if port != default_port => format!("{scheme}://{host}:{port}"),
        _ => format!("{scheme}://{host}"),
    };
    let p256dh = decode_key::<65>("p256dh", &sub.keys.p256dh)?;
    if p256dh[0] != 0x04 || p256::PublicKey::from_sec1_bytes(&p256dh).is_err() {
        return Err(SubscriptionError::BadKey {
            field: "p256dh",
            reason: "not an uncompressed P-256 point".into(),
        });
    }
    let auth = decode_key::<16>("auth", &sub.keys.auth)?;
    Ok(CheckedSubscription {
        endpoint,
        origin,
        p256dh,
        auth,
    })
}

fn decode_key<const N: usize>(
    field: &'static str,
    text: &str,
) -> Result<[u8; N], SubscriptionError> {
    let bad = |reason: String| SubscriptionError::BadKey { field, reason };
    // Browsers give base64url without padding; some libraries pad or use the standard
    // alphabet: accept all four, as pywebpush and npm web-push do.
    let trimmed = text.trim_end_matches('=');
    let bytes = if trimmed.contains(['+', '/']) {
        base64::engine::general_purpose::STANDARD_NO_PAD.decode(trimmed)
    } else {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(trimmed)
    }
    .map_err(|e| bad(format!("not base64url ({e})")))?;
    <[u8; N]>::try_from(bytes.as_slice())
        .map_err(|_| bad(format!("{} bytes, expected {N}", bytes.len())))
}

/// `localhost`, an IP literal that is loopback, private, link-local, unspecified or
/// unique-local, or a numeric host that is no dotted quad (`2130706433`, `0x7f000001`,
/// `127.1`, `0177.0.0.1`: getaddrinfo reads them as addresses). (A name that resolves to such
/// an address is not caught here: that needs the resolver's answer, which the connection pool
/// does not expose.)
pub fn is_private_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    // The resolver reads `localhost.` and `127.0.0.1.` as without the dot.
    let host = host.strip_suffix('.').unwrap_or(host);
    let lower = host.to_ascii_lowercase();
    if lower == "localhost" || lower.ends_with(".localhost") {
        return true;
    }
    match host.parse::<IpAddr>() {
        Ok(ip) => is_private_ip(ip),
        // No top-level domain is numeric: a last label of digits or hex is an address in a
        // form IpAddr does not parse, which we cannot judge, so it is refused.
        Err(_) => lower.rsplit('.').next().is_some_and(|last| {
            last.starts_with("0x") || (!last.is_empty() && last.bytes().all(|b| b.is_ascii_digit()))
        }),
    }
}

/// An address in our own network or this machine: loopback, private, link-local, CGNAT,
/// unique-local, unspecified, broadcast, and IPv4 inside IPv6 (mapped, compatible, NAT64).
pub fn is_private_ip(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(ip) => {
            ip.is_loopback()
                || ip.is_private()
                || ip.is_link_local()
                || ip.is_unspecified()
                || ip.is_broadcast()
                // 100.64.0.0/10, carrier-grade NAT
                || (ip.octets()[0] == 100 && (ip.octets()[1] & 0xc0) == 64)
        }
        IpAddr::V6(ip) => {
            let s = ip.segments();
            // The IPv4 address carried in the last 32 bits: ::a.b.c.d (compatible),
            // ::ffff:a.b.c.d (mapped), 64:ff9b::a.b.c.d (NAT64).
            let embedded = matches!(s[..6], [0, 0, 0, 0, 0, 0] | [0, 0, 0, 0, 0, 0xffff])
                || s[..6] == [0x64, 0xff9b, 0, 0, 0, 0];
            let v4 = std::net::Ipv4Addr::from(((s[6] as u32) << 16) | s[7] as u32);
            ip.is_loopback()
                || ip.is_unspecified()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                || (embedded && is_private_ip(IpAddr::V4(v4)))
        }
    }
}

/// The verdict on a push service's answer (RFC 8030, and what autopush, FCM's web push and
/// Apple's service send): 201 delivered; 404 and 410 the subscription is gone; 429 and 5xx
/// retried (honouring `Retry-After`); any other status refused, with its reason.
pub fn verdict(status: u16, retry_after: Option<Duration>, reason: &str) -> Verdict {
    match status {
        200..=299 => Verdict::Final(Outcome::Delivered),
        404 | 410 => Verdict::Final(Outcome::TokenInvalid {
            reason: if reason.is_empty() {
                status_reason(status).into()
            } else {
                reason.into()
            },
            timestamp_ms: None,
        }),
        429 | 500..=599 => Verdict::Retry(RetryHint::new(status_reason(status)).after(retry_after)),
        _ => Verdict::Final(Outcome::Rejected {
            reason: if reason.is_empty() {
                status_reason(status).into()
            } else {
                reason.into()
            },
        }),
    }
}

/// A short label for a status, used when the push service gives no reason.
pub fn status_reason(status: u16) -> &'static str {
    match status {
        400 => "bad_request",
        401 => "unauthorized",
        403 => "forbidden",
        404 => "not_found",
        410 => "gone",
        413 => "payload_too_large",
        429 => "too_many_requests",
        500 => "internal_server_error",
        502 => "bad_gateway",
        503 => "service_unavailable",
        504 => "gateway_timeout",
        _ => "http_error",
    }
}

// ---------------------------------------------------------------------------------------
// Generated subscriptions: the generator makes them, the fake recomputes their keys.

/// The subscription id: the endpoint's last path segment. The fakes' token rules
/// (`push::token_rules`) apply to it; a `gone…` id also answers 404.
pub fn subscription_id(endpoint: &str) -> &str {
    let path = endpoint.split(['?', '#']).next().unwrap_or_default();
    path.rsplit('/').next().unwrap_or_default()
}

/// Generated subscriptions share this many key pairs: the generator computes each public key
/// once (a scalar multiplication, far slower than writing a message), and the fake can keep
/// them all.
pub const KEY_SLOTS: u32 = 1024;

/// The key slot of a generated subscription id.
pub fn key_slot(id: &str) -> u32 {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(id.as_bytes());
    u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]) % KEY_SLOTS
}

/// The private key and auth secret of a generated subscription, derived from its id alone
/// (through its key slot), so the fake push service can decrypt what is sent to any
/// subscription the generator made without sharing state with it. (Real browsers keep each
/// subscription's keys secret, of course.)
pub fn generated_keys(id: &str) -> (p256::SecretKey, [u8; 16]) {
    slot_keys(key_slot(id))
}

/// The keys of one slot.
pub fn slot_keys(slot: u32) -> (p256::SecretKey, [u8; 16]) {
    use sha2::{Digest, Sha256};
    let id = slot.to_be_bytes();
    let mut counter = 0u32;
    let secret = loop {
        let seed = Sha256::new()
            .chain_update(b"pusher webpush subscription key\0")
            .chain_update(counter.to_be_bytes())
            .chain_update(id)
            .finalize();
        // Fails only for 0 or values >= the group order: about 2^-32 of seeds.
        if let Ok(key) = p256::SecretKey::from_slice(&seed) {
            break key;
        }
        counter += 1;
    };
    let auth_seed = Sha256::new()
        .chain_update(b"pusher webpush subscription auth\0")
        .chain_update(id)
        .finalize();
    let mut auth = [0u8; 16];
    auth.copy_from_slice(&auth_seed[..16]);
    (secret, auth)
}

/// A key slot's keys with the public half computed once: what the fake decrypts with.
#[derive(Debug)]
pub struct SlotKeys {
    pub secret: p256::SecretKey,
    /// The public key, uncompressed (65 bytes).
    pub public: [u8; 65],
    pub auth: [u8; 16],
}

/// The keys of a generated subscription, computed on first use of its slot and kept (1024
/// slots: about 150 KB). Decrypting with them costs one scalar multiplication, not two.
pub fn generated_slot_keys(id: &str) -> &'static SlotKeys {
    use p256::elliptic_curve::sec1::ToEncodedPoint;
    use std::sync::OnceLock;
    static SLOTS: OnceLock<Vec<OnceLock<SlotKeys>>> = OnceLock::new();
    let slots = SLOTS.get_or_init(|| (0..KEY_SLOTS).map(|_| OnceLock::new()).collect());
    let slot = key_slot(id);
    slots[slot as usize].get_or_init(|| {
        let (secret, auth) = slot_keys(slot);
        let mut public = [0u8; 65];
        public.copy_from_slice(secret.public_key().to_encoded_point(false).as_bytes());
        SlotKeys {
            secret,
            public,
            auth,
        }
    })
}

/// The subscription the generator writes for `id` at `origin` (`https://host:port`).
pub fn generated_subscription(origin: &str, id: &str) -> Subscription {
    Subscription {
        endpoint: format!("{}{FAKE_PATH}{id}", origin.trim_end_matches('/')),
        keys: slot_public_keys(key_slot(id)),
    }
}

/// The public keys (base64url) of one slot, as a subscription carries them.
pub fn slot_public_keys(slot: u32) -> Keys {
    use p256::elliptic_curve::sec1::ToEncodedPoint;
    let (secret, auth) = slot_keys(slot);
    let public = secret.public_key().to_encoded_point(false);
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    Keys {
        p256dh: b64.encode(public.as_bytes()),
        auth: b64.encode(auth),
    }
}

// ---------------------------------------------------------------------------------------
// aes128gcm (RFC 8188) with the web push key derivation (RFC 8291): decryption.

/// Why a body does not decrypt.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecryptError {
    #[error("body is {0} bytes, shorter than the aes128gcm header")]
    TooShort(usize),
    #[error("key id is {0} bytes; web push needs the sender's 65-byte public key")]
    KeyIdLength(usize),
    #[error("the key id is not a P-256 public key")]
    BadSenderKey,
    #[error("record size {rs} does not hold the {len}-byte record (one record expected)")]
    RecordSize { rs: u32, len: usize },
    #[error("the record does not authenticate (wrong keys, or a corrupted body)")]
    Authentication,
    #[error("the record has no padding delimiter 0x02 (single or last record)")]
    NoDelimiter,
}

/// The aes128gcm header: salt, record size and key id (the sender's public key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header<'a> {
    pub salt: &'a [u8],
    pub record_size: u32,
    pub key_id: &'a [u8],
    pub ciphertext: &'a [u8],
}

/// Reads the aes128gcm header and checks the framing web push requires (a 65-byte key id,
/// one record within the record size).
pub fn parse_header(body: &[u8]) -> Result<Header<'_>, DecryptError> {
    if body.len() < 21 {
        return Err(DecryptError::TooShort(body.len()));
    }
    let idlen = body[20] as usize;
    if idlen != 65 {
        return Err(DecryptError::KeyIdLength(idlen));
    }
    if body.len() < 21 + idlen + 17 {
        return Err(DecryptError::TooShort(body.len()));
    }
    let record_size = u32::from_be_bytes([body[16], body[17], body[18], body[19]]);
    let ciphertext = &body[21 + idlen..];
    if (record_size as usize) < ciphertext.len() || record_size < 18 {
        return Err(DecryptError::RecordSize {
            rs: record_size,
            len: ciphertext.len(),
        });
    }
    Ok(Header {
        salt: &body[..16],
        record_size,
        key_id: &body[21..21 + idlen],
        ciphertext,
    })
}

/// Decrypts a web push body for the subscription whose private key and auth secret are
/// given; returns the plaintext without its padding.
pub fn decrypt(
    body: &[u8],
    ua_secret: &p256::SecretKey,
    auth: &[u8; 16],
) -> Result<Vec<u8>, DecryptError> {
    use p256::elliptic_curve::sec1::ToEncodedPoint;
    let public = ua_secret.public_key().to_encoded_point(false);
    decrypt_with(body, ua_secret, public.as_bytes(), auth)
}

/// [`decrypt`] with the subscription's public key already known (`ua_public`, 65 bytes).
pub fn decrypt_with(
    body: &[u8],
    ua_secret: &p256::SecretKey,
    ua_public: &[u8],
    auth: &[u8; 16],
) -> Result<Vec<u8>, DecryptError> {
    use aes_gcm::aead::{Aead, KeyInit};
    let header = parse_header(body)?;
    let as_public =
        p256::PublicKey::from_sec1_bytes(header.key_id).map_err(|_| DecryptError::BadSenderKey)?;
    let shared = p256::ecdh::diffie_hellman(ua_secret.to_nonzero_scalar(), as_public.as_affine());
    // RFC 8291 §3.4: IKM from the ECDH secret, keyed by the auth secret, bound to both keys.
    let mut key_info = Vec::with_capacity(14 + 130);
    key_info.extend_from_slice(b"WebPush: info\0");
    key_info.extend_from_slice(ua_public);
    key_info.extend_from_slice(header.key_id);
    let mut ikm = [0u8; 32];
    hkdf::Hkdf::<sha2::Sha256>::new(Some(auth), shared.raw_secret_bytes())
        .expand(&key_info, &mut ikm)
        .map_err(|_| DecryptError::Authentication)?;
    // RFC 8188 §2.2-2.3: CEK and nonce from the salt (one record: sequence number 0).
    let prk = hkdf::Hkdf::<sha2::Sha256>::new(Some(header.salt), &ikm);
    let mut cek = [0u8; 16];
    let mut nonce = [0u8; 12];
    prk.expand(b"Content-Encoding: aes128gcm\0", &mut cek)
        .and_then(|()| prk.expand(b"Content-Encoding: nonce\0", &mut nonce))
        .map_err(|_| DecryptError::Authentication)?;
    let cipher =
        aes_gcm::Aes128Gcm::new_from_slice(&cek).map_err(|_| DecryptError::Authentication)?;
    let nonce = aes_gcm::Nonce::try_from(&nonce[..]).map_err(|_| DecryptError::Authentication)?;
    let mut plain = cipher
        .decrypt(&nonce, header.ciphertext)
        .map_err(|_| DecryptError::Authentication)?;
    // The last record ends with 0x02 then zero padding.
    while plain.last() == Some(&0) {
        plain.pop();
    }
    if plain.pop() != Some(2) {
        return Err(DecryptError::NoDelimiter);
    }
    Ok(plain)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> Vec<u8> {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(s)
            .expect("vector is base64url")
    }

    /// RFC 8291 Appendix A.
    pub(crate) const RFC_PLAINTEXT: &str =
        "V2hlbiBJIGdyb3cgdXAsIEkgd2FudCB0byBiZSBhIHdhdGVybWVsb24";
    pub(crate) const RFC_UA_PRIVATE: &str = "q1dXpw3UpT5VOmu_cf_v6ih07Aems3njxI-JWgLcM94";
    pub(crate) const RFC_AUTH: &str = "BTBZMqHH6r4Tts7J_aSIgg";
    pub(crate) const RFC_BODY: &str = "DGv6ra1nlYgDCS1FRnbzlwAAEABBBP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27mlmlMoZIIgDll6e3vCYLocInmYWAmS6TlzAC8wEqKK6PBru3jl7A_yl95bQpu6cVPTpK4Mqgkf1CXztLVBSt2Ks3oZwbuwXPXLWyouBWLVWGNWQexSgSxsj_Qulcy4a-fN";

    #[test]
    fn rfc8291_appendix_a_decrypts() {
        let secret = p256::SecretKey::from_slice(&b64(RFC_UA_PRIVATE)).expect("key");
        let auth: [u8; 16] = b64(RFC_AUTH).try_into().expect("16 bytes");
        let plain = decrypt(&b64(RFC_BODY), &secret, &auth).expect("decrypts");
        assert_eq!(plain, b64(RFC_PLAINTEXT));
        assert_eq!(plain, b"When I grow up, I want to be a watermelon");
        // One flipped bit anywhere in the ciphertext fails authentication.
        let mut body = b64(RFC_BODY);
        let last = body.len() - 1;
        body[last] ^= 1;
        assert_eq!(
            decrypt(&body, &secret, &auth),
            Err(DecryptError::Authentication)
        );
    }

    #[test]
    fn framing_is_checked() {
        assert_eq!(parse_header(&[0; 10]), Err(DecryptError::TooShort(10)));
        let mut body = b64(RFC_BODY);
        body[20] = 64;
        assert_eq!(parse_header(&body), Err(DecryptError::KeyIdLength(64)));
        let mut body = b64(RFC_BODY);
        body[16..20].copy_from_slice(&10u32.to_be_bytes());
        assert!(matches!(
            parse_header(&body),
            Err(DecryptError::RecordSize { rs: 10, .. })
        ));
    }

    #[test]
    fn subscriptions_are_checked() {
        let good = generated_subscription("https://push.example.com", "abc");
        let checked = check_subscription(&good, EndpointRules::STRICT).expect("valid");
        assert_eq!(checked.origin, "https://push.example.com");
        let with_port = generated_subscription("https://push.example.com:8443", "abc");
        let checked = check_subscription(&with_port, EndpointRules::STRICT).expect("valid");
        assert_eq!(checked.origin, "https://push.example.com:8443");
        let default_port = generated_subscription("https://push.example.com:443", "abc");
        let checked = check_subscription(&default_port, EndpointRules::STRICT).expect("valid");
        assert_eq!(checked.origin, "https://push.example.com");
        // The origin (VAPID's `aud`) is in lower case whatever the endpoint's case.
        let upper = generated_subscription("https://Push.Example.COM/send/x", "abc");
        let checked = check_subscription(&upper, EndpointRules::STRICT).expect("valid");
        assert_eq!(checked.origin, "https://push.example.com");

        let with = |endpoint: &str, p256dh: &str, auth: &str| Subscription {
            endpoint: endpoint.into(),
            keys: Keys {
                p256dh: p256dh.into(),
                auth: auth.into(),
            },
        };
        let (k, a) = (good.keys.p256dh.as_str(), good.keys.auth.as_str());
        let reason = |s: Subscription, rules| {
            check_subscription(&s, rules)
                .map(|_| ())
                .map_err(|e| e.reason())
        };
        assert_eq!(
            reason(
                with("http://push.example.com/x", k, a),
                EndpointRules::STRICT
            ),
            Err("endpoint_not_https")
        );
        for private in [
            "https://127.0.0.1/x",
            "https://10.1.2.3/x",
            "https://192.168.0.1:8443/x",
            "https://169.254.169.254/latest",
            "https://[::1]/x",
            "https://[fd00::1]/x",
            "https://localhost/x",
            "https://[::ffff:10.0.0.1]/x",
            // Forms the resolver reads as 127.0.0.1 (or another address).
            "https://localhost./x",
            "https://LocalHost./x",
            "https://127.0.0.1./x",
            "https://0x7f000001/x",
            "https://0X7F000001/x",
            "https://2130706433/x",
            "https://127.1/x",
            "https://0177.0.0.1/x",
            "https://1.2.3.0x4/x",
            "https://a.b.123/x",
        ] {
            assert_eq!(
                reason(with(private, k, a), EndpointRules::STRICT),
                Err("endpoint_private_address"),
                "{private}"
            );
            assert_eq!(reason(with(private, k, a), EndpointRules::LOCAL), Ok(()));
        }
        assert_eq!(
            reason(with("not a url", k, a), EndpointRules::STRICT),
            Err("bad_endpoint")
        );
        assert_eq!(
            reason(
                with("https://user@push.example.com/x", k, a),
                EndpointRules::STRICT
            ),
            Err("bad_endpoint")
        );
        assert_eq!(
            reason(
                with("https://push.example.com/x", "!!!", a),
                EndpointRules::STRICT
            ),
            Err("bad_subscription_key")
        );
        assert_eq!(
            reason(
                with("https://push.example.com/x", &k[..40], a),
                EndpointRules::STRICT
            ),
            Err("bad_subscription_key")
        );
        assert_eq!(
            reason(
                with("https://push.example.com/x", k, "AAAA"),
                EndpointRules::STRICT
            ),
            Err("bad_subscription_key")
        );
        // 65 bytes that are not a point on the curve.
        let not_a_point = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([4u8; 65]);
        assert_eq!(
            reason(
                with("https://push.example.com/x", &not_a_point, a),
                EndpointRules::STRICT
            ),
            Err("bad_subscription_key")
        );
        // Padded and standard-alphabet keys are accepted.
        let padded = format!("{a}==");
        assert_eq!(
            reason(
                with("https://push.example.com/x", k, &padded),
                EndpointRules::STRICT
            ),
            Ok(())
        );
    }

    #[test]
    fn numeric_hosts_and_a_trailing_dot_do_not_hide_a_private_address() {
        for private in [
            "localhost.",
            "x.localhost.",
            "10.0.0.1.",
            "[::1]",
            "0x7f000001",
            "0x7f.1",
            "2130706433",
            "127.1",
            "0177.0.0.1",
            "017700000001",
        ] {
            assert!(is_private_host(private), "{private}");
        }
        // Public: a dotted quad, a trailing dot on a name, digits before a real TLD.
        for public in [
            "8.8.8.8",
            "8.8.8.8.",
            "fcm.googleapis.com.",
            "123.example.com",
            "0x1.example.com",
            "[2001:db8::1]",
        ] {
            assert!(!is_private_host(public), "{public}");
        }
    }

    #[test]
    fn verdicts_follow_the_push_services() {
        assert_eq!(verdict(201, None, ""), Verdict::Final(Outcome::Delivered));
        for gone in [404, 410] {
            assert!(matches!(
                verdict(gone, None, ""),
                Verdict::Final(Outcome::TokenInvalid { .. })
            ));
        }
        for refused in [400, 401, 403, 413] {
            assert!(matches!(
                verdict(refused, None, ""),
                Verdict::Final(Outcome::Rejected { .. })
            ));
        }
        let after = Some(Duration::from_secs(3));
        match verdict(429, after, "") {
            Verdict::Retry(hint) => assert_eq!(hint.after, after),
            other => panic!("{other:?}"),
        }
        assert!(matches!(verdict(503, None, ""), Verdict::Retry(_)));
    }

    #[test]
    fn topics_and_ids() {
        assert!(valid_topic("game-update_1"));
        assert!(!valid_topic(""));
        assert!(!valid_topic(&"a".repeat(33)));
        assert!(!valid_topic("has space"));
        assert_eq!(subscription_id("https://h/wpush/dead01?x=1"), "dead01");
        let (a, _) = generated_keys("x");
        let (b, _) = generated_keys("x");
        assert_eq!(a.to_bytes(), b.to_bytes());
        assert_ne!(a.to_bytes(), generated_keys("y").0.to_bytes());
    }
}
