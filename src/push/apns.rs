//! APNs wire vocabulary shared by the sender and the fake server: reasons, push types,
//! priorities, limits, and the reason -> verdict table (reference/protocols.md §1.3).

use super::outcome::{Outcome, RetryHint, Verdict};
use std::sync::LazyLock;
use std::time::Duration;

/// Largest payload APNs accepts for every push type but VoIP.
pub const MAX_PAYLOAD: usize = 4096;
/// Largest VoIP payload.
pub const MAX_PAYLOAD_VOIP: usize = 5120;
/// Largest `apns-collapse-id`, in bytes.
pub const MAX_COLLAPSE_ID: usize = 64;

/// The payload limit for a push type.
pub fn payload_limit(push_type: Option<PushType>) -> usize {
    match push_type {
        Some(PushType::Voip) => MAX_PAYLOAD_VOIP,
        _ => MAX_PAYLOAD,
    }
}

/// One APNs notification, ready for the sender: everything `build_request` needs.
/// `payload` is the JSON body as bytes (already merged with metadata by the pipeline).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApnsNotification {
    /// Hex device token.
    pub token: String,
    /// `apns-topic`; the app's configured topic when `None`.
    pub topic: Option<String>,
    pub push_type: Option<PushType>,
    /// `apns-priority` (10, 5 or 1).
    pub priority: Option<u8>,
    /// `apns-expiration`, Unix seconds; 0 = deliver once, do not store.
    pub expiration: Option<u64>,
    pub collapse_id: Option<String>,
    /// `apns-id` (canonical UUID); APNs makes one when absent.
    pub apns_id: Option<String>,
    pub payload: bytes::Bytes,
}

impl ApnsNotification {
    /// A notification with only a token and a payload.
    pub fn new(token: impl Into<String>, payload: impl Into<bytes::Bytes>) -> Self {
        ApnsNotification {
            token: token.into(),
            topic: None,
            push_type: None,
            priority: None,
            expiration: None,
            collapse_id: None,
            apns_id: None,
            payload: payload.into(),
        }
    }
}

/// Every reason APNs is known to send, plus `Other` so a new one is kept, never dropped.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ApnsReason {
    BadCollapseId,
    BadDeviceToken,
    BadExpirationDate,
    BadMessageId,
    BadPriority,
    BadTopic,
    DeviceTokenNotForTopic,
    DuplicateHeaders,
    IdleTimeout,
    InvalidPushType,
    MissingDeviceToken,
    MissingTopic,
    PayloadEmpty,
    TopicDisallowed,
    BadCertificate,
    BadCertificateEnvironment,
    ExpiredProviderToken,
    Forbidden,
    InvalidProviderToken,
    MissingProviderToken,
    UnrelatedKeyIdInToken,
    /// Apple's spelling is disputed; both `BadEnvironmentKeyIdInToken` and
    /// `BadEnvironmentKeyInToken` parse to this (protocols.md §1.3).
    BadEnvironmentKeyIdInToken,
    BadPath,
    MethodNotAllowed,
    ExpiredToken,
    Unregistered,
    PayloadTooLarge,
    TooManyProviderTokenUpdates,
    TooManyRequests,
    InternalServerError,
    ServiceUnavailable,
    Shutdown,
    Other(String),
}

/// (reason, wire name, HTTP status). One table, so parsing, printing and the fake's status
/// codes can never disagree.
const TABLE: &[(ApnsReason, &str, u16)] = &[
    (ApnsReason::BadCollapseId, "BadCollapseId", 400),
    (ApnsReason::BadDeviceToken, "BadDeviceToken", 400),
    (ApnsReason::BadExpirationDate, "BadExpirationDate", 400),
    (ApnsReason::BadMessageId, "BadMessageId", 400),
    (ApnsReason::BadPriority, "BadPriority", 400),
    (ApnsReason::BadTopic, "BadTopic", 400),
    (
        ApnsReason::DeviceTokenNotForTopic,
        "DeviceTokenNotForTopic",
        400,
    ),
    (ApnsReason::DuplicateHeaders, "DuplicateHeaders", 400),
    (ApnsReason::IdleTimeout, "IdleTimeout", 400),
    (ApnsReason::InvalidPushType, "InvalidPushType", 400),
    (ApnsReason::MissingDeviceToken, "MissingDeviceToken", 400),
    (ApnsReason::MissingTopic, "MissingTopic", 400),
    (ApnsReason::PayloadEmpty, "PayloadEmpty", 400),
    (ApnsReason::TopicDisallowed, "TopicDisallowed", 400),
    (ApnsReason::BadCertificate, "BadCertificate", 403),
    (
        ApnsReason::BadCertificateEnvironment,
        "BadCertificateEnvironment",
        403,
    ),
    (
        ApnsReason::ExpiredProviderToken,
        "ExpiredProviderToken",
        403,
    ),
    (ApnsReason::Forbidden, "Forbidden", 403),
    (
        ApnsReason::InvalidProviderToken,
        "InvalidProviderToken",
        403,
    ),
    (
        ApnsReason::MissingProviderToken,
        "MissingProviderToken",
        403,
    ),
    (
        ApnsReason::UnrelatedKeyIdInToken,
        "UnrelatedKeyIdInToken",
        403,
    ),
    (
        ApnsReason::BadEnvironmentKeyIdInToken,
        "BadEnvironmentKeyIdInToken",
        403,
    ),
    (ApnsReason::BadPath, "BadPath", 404),
    (ApnsReason::MethodNotAllowed, "MethodNotAllowed", 405),
    (ApnsReason::ExpiredToken, "ExpiredToken", 410),
    (ApnsReason::Unregistered, "Unregistered", 410),
    (ApnsReason::PayloadTooLarge, "PayloadTooLarge", 413),
    (
        ApnsReason::TooManyProviderTokenUpdates,
        "TooManyProviderTokenUpdates",
        429,
    ),
    (ApnsReason::TooManyRequests, "TooManyRequests", 429),
    (ApnsReason::InternalServerError, "InternalServerError", 500),
    (ApnsReason::ServiceUnavailable, "ServiceUnavailable", 503),
    (ApnsReason::Shutdown, "Shutdown", 503),
];

impl ApnsReason {
    /// Every named reason (not `Other`), for table tests and the fake's error mixes.
    pub fn all() -> impl Iterator<Item = &'static ApnsReason> {
        TABLE.iter().map(|(r, _, _)| r)
    }

    pub fn parse(s: &str) -> ApnsReason {
        if s == "BadEnvironmentKeyInToken" {
            return ApnsReason::BadEnvironmentKeyIdInToken;
        }
        TABLE
            .iter()
            .find(|(_, name, _)| *name == s)
            .map(|(r, _, _)| r.clone())
            .unwrap_or_else(|| ApnsReason::Other(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        match self {
            ApnsReason::Other(s) => s,
            known => TABLE
                .iter()
                .find(|(r, _, _)| r == known)
                .map(|(_, name, _)| *name)
                .unwrap_or("Unknown"),
        }
    }

    /// The HTTP status APNs sends with this reason (500 for unknown ones).
    pub fn status(&self) -> u16 {
        TABLE
            .iter()
            .find(|(r, _, _)| r == self)
            .map(|(_, _, s)| *s)
            .unwrap_or(500)
    }

    /// What to do with a message APNs answered with `status` and this reason.
    /// `retry_after` comes from a `Retry-After` header, `timestamp_ms` from a 410 body.
    pub fn verdict(
        &self,
        status: u16,
        retry_after: Option<Duration>,
        timestamp_ms: Option<u64>,
    ) -> Verdict {
        use ApnsReason::*;
        let reason = self.as_str().to_string();
        match self {
            Unregistered | ExpiredToken | BadDeviceToken | DeviceTokenNotForTopic => {
                Verdict::Final(Outcome::TokenInvalid {
                    reason,
                    timestamp_ms,
                })
            }
            // Apple: "too many requests to the same device token": this token's alone.
            TooManyRequests => Verdict::Retry(RetryHint::new(reason).after(retry_after).own()),
            TooManyProviderTokenUpdates | InternalServerError | ServiceUnavailable => {
                Verdict::Retry(RetryHint::new(reason).after(retry_after))
            }
            Shutdown | IdleTimeout => {
                Verdict::Retry(RetryHint::new(reason).after(retry_after).reconnect())
            }
            // The credentials, not the message: every request gets the same answer.
            InvalidProviderToken
            | MissingProviderToken
            | BadCertificate
            | BadCertificateEnvironment
            | UnrelatedKeyIdInToken
            | BadEnvironmentKeyIdInToken => Verdict::Fault { reason },
            // Apple "wedges" a connection after this; pushy reconnects (protocols.md §1.3).
            ExpiredProviderToken => Verdict::Retry(RetryHint::new(reason).renew_auth().reconnect()),
            // The request line or head, not the message: the sender checks every token is hex
            // and puts it in the path, and sets each header once, so only our path or method
            // (a base path, a proxy) or something between us and APNs draws these, for every
            // push alike. Retried, they count toward an outage and pause the app
            // (sender/gate.rs); as final verdicts they rejected the whole backlog.
            BadPath | MethodNotAllowed | MissingDeviceToken | DuplicateHeaders => {
                Verdict::Retry(RetryHint::new(reason))
            }
            Other(_) if status == 429 || status >= 500 => {
                Verdict::Retry(RetryHint::new(reason).after(retry_after))
            }
            // A credentials refusal our table does not know (Apple renames these: see
            // `BadEnvironmentKeyInToken`): as every 403 but `Forbidden` in the table, the
            // configuration's fault. Taken as this message's verdict, it rejected the backlog.
            Other(_) if matches!(status, 401 | 403) => Verdict::Fault { reason },
            Other(_) if status == 410 => Verdict::Final(Outcome::TokenInvalid {
                reason,
                timestamp_ms,
            }),
            _ => Verdict::Final(Outcome::Rejected { reason }),
        }
    }
}

impl std::fmt::Display for ApnsReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `apns-push-type` values (protocols.md §1.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PushType {
    Alert,
    Background,
    Location,
    Voip,
    Complication,
    FileProvider,
    Mdm,
    LiveActivity,
    PushToTalk,
    Widgets,
    Controls,
}

const PUSH_TYPES: &[(PushType, &str)] = &[
    (PushType::Alert, "alert"),
    (PushType::Background, "background"),
    (PushType::Location, "location"),
    (PushType::Voip, "voip"),
    (PushType::Complication, "complication"),
    (PushType::FileProvider, "fileprovider"),
    (PushType::Mdm, "mdm"),
    (PushType::LiveActivity, "liveactivity"),
    (PushType::PushToTalk, "pushtotalk"),
    (PushType::Widgets, "widgets"),
    (PushType::Controls, "controls"),
];

impl PushType {
    pub fn parse(s: &str) -> Option<PushType> {
        PUSH_TYPES.iter().find(|(_, n)| *n == s).map(|(t, _)| *t)
    }
    pub fn as_str(self) -> &'static str {
        PUSH_TYPES
            .iter()
            .find(|(t, _)| *t == self)
            .map(|(_, n)| *n)
            .unwrap_or("alert")
    }

    /// The type a payload implies when the message names none: `background` for a silent
    /// push (an `aps` holding only `content-available: 1`), `alert` otherwise (what the seed's
    /// APNs library sent). Strict endpoints refuse a request without `apns-push-type`
    /// (watchOS requires it), so one is always sent.
    pub fn for_payload(payload: &[u8]) -> PushType {
        // Almost every payload is an alert: look for the key before parsing anything. With a
        // SIMD search: comparing every 17-byte window was ~1,400 instructions a message
        // (callgrind), 2 % of `pusher run`.
        static KEY: LazyLock<memchr::memmem::Finder<'static>> =
            LazyLock::new(|| memchr::memmem::Finder::new("content-available"));
        if KEY.find(payload).is_none() {
            return PushType::Alert;
        }
        #[derive(serde::Deserialize)]
        struct Body {
            aps: Option<serde_json::Map<String, serde_json::Value>>,
        }
        let silent = serde_json::from_slice::<Body>(payload)
            .ok()
            .and_then(|b| b.aps)
            .is_some_and(|aps| {
                aps.len() == 1 && aps.get("content-available").and_then(|v| v.as_i64()) == Some(1)
            });
        if silent {
            PushType::Background
        } else {
            PushType::Alert
        }
    }
}

impl PushType {
    /// The suffix Apple requires on `apns-topic` for this push type (the bundle id plus it);
    /// `None` where the bundle id alone is right (protocols.md §1.2). `widgets` and `controls`
    /// (WidgetKit's and ControlKit's pushes) take `.push-type.widgets` and
    /// `.push-type.controls`, as Apple's WidgetKit article and the clients that send them
    /// (APNSwift, dotAPNS) write them: the bare bundle id is answered `DeviceTokenNotForTopic`.
    pub fn topic_suffix(self) -> Option<&'static str> {
        match self {
            PushType::Voip => Some(".voip"),
            PushType::Complication => Some(".complication"),
            PushType::FileProvider => Some(".pushkit.fileprovider"),
            PushType::Location => Some(".location-query"),
            PushType::LiveActivity => Some(".push-type.liveactivity"),
            PushType::PushToTalk => Some(".voip-ptt"),
            PushType::Widgets => Some(".push-type.widgets"),
            PushType::Controls => Some(".push-type.controls"),
            _ => None,
        }
    }

    /// True when `topic` is one this push type may be sent to: it carries the type's suffix,
    /// if the type has one.
    pub fn fits_topic(self, topic: &str) -> bool {
        self.topic_suffix().is_none_or(|s| topic.ends_with(s))
    }
}

impl ApnsNotification {
    /// `apns-push-type` as sent: the message's own, else the one its payload implies.
    pub fn effective_push_type(&self) -> PushType {
        self.push_type
            .unwrap_or_else(|| PushType::for_payload(&self.payload))
    }

    /// `apns-priority` as sent: the message's own, else 5 for a background push (Apple
    /// requires 5 there, so an explicit 10 is lowered too; 1 stays); `None` leaves APNs'
    /// default (10).
    pub fn effective_priority(&self, push_type: PushType) -> Option<u8> {
        match (self.priority, push_type) {
            (Some(10), PushType::Background) => Some(5),
            (Some(p), _) => Some(p),
            (None, PushType::Background) => Some(5),
            (None, _) => None,
        }
    }
}

/// `apns-priority`: 10 immediate, 5 power-considerate, 1 lowest.
pub fn valid_priority(p: u8) -> bool {
    matches!(p, 1 | 5 | 10)
}

/// A device token as APNs wants it: non-empty hex. The length is not fixed (protocols.md §1.2).
pub fn valid_token(token: &str) -> bool {
    // Without a branch per byte: tokens are random hex, so a branch on digit-or-letter
    // mispredicted about every other byte, and this check was ~3 % of `pusher run`'s CPU
    // (perf, ci/scale.sh's first step). Bitwise `&`/`|` on bools let the loop vectorise.
    let hex = |b: u8| (b.wrapping_sub(b'0') < 10) | ((b | 0x20).wrapping_sub(b'a') < 6);
    !token.is_empty() && token.len() <= 200 && token.bytes().fold(true, |ok, b| ok & hex(b))
}

/// Canonical UUID (8-4-4-4-12 hex) as `apns-id` requires.
pub fn valid_apns_id(id: &str) -> bool {
    let b = id.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_round_trips_through_its_wire_name() {
        for r in ApnsReason::all() {
            assert_eq!(&ApnsReason::parse(r.as_str()), r);
        }
        assert_eq!(
            ApnsReason::parse("BadEnvironmentKeyInToken"),
            ApnsReason::BadEnvironmentKeyIdInToken
        );
        assert_eq!(
            ApnsReason::parse("NewAppleReason").as_str(),
            "NewAppleReason"
        );
    }

    #[test]
    fn verdict_table() {
        use Verdict::*;
        let cases: &[(&str, u16, &str)] = &[
            ("Unregistered", 410, "token_invalid"),
            ("ExpiredToken", 410, "token_invalid"),
            ("BadDeviceToken", 400, "token_invalid"),
            ("DeviceTokenNotForTopic", 400, "token_invalid"),
            ("BadTopic", 400, "rejected"),
            ("PayloadTooLarge", 413, "rejected"),
            ("Forbidden", 403, "rejected"),
            ("BadPath", 404, "retry"),
            ("MethodNotAllowed", 405, "retry"),
            ("MissingDeviceToken", 400, "retry"),
            ("DuplicateHeaders", 400, "retry"),
            ("InvalidProviderToken", 403, "fault"),
            ("MissingProviderToken", 403, "fault"),
            ("BadCertificate", 403, "fault"),
            ("BadCertificateEnvironment", 403, "fault"),
            ("TooManyRequests", 429, "retry"),
            ("InternalServerError", 500, "retry"),
            ("ServiceUnavailable", 503, "retry"),
            ("Shutdown", 503, "retry"),
            ("ExpiredProviderToken", 403, "retry"),
            ("SomethingNew", 503, "retry"),
            ("SomethingNew", 400, "rejected"),
            ("SomethingNew", 410, "token_invalid"),
            // A credentials refusal the table does not know (a re-spelled key reason).
            ("UnrelatedKeyInToken", 403, "fault"),
            ("SomethingNew", 401, "fault"),
        ];
        for (reason, status, want) in cases {
            let got = match ApnsReason::parse(reason).verdict(*status, None, None) {
                Final(o) => o.class(),
                Retry(_) => "retry",
                Fault { .. } => "fault",
            };
            assert_eq!(got, *want, "{reason} {status}");
        }
        match ApnsReason::ExpiredProviderToken.verdict(403, None, None) {
            Retry(h) => assert!(h.renew_auth && h.reconnect),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn push_types_name_their_topic_suffix() {
        let cases = [
            (PushType::Alert, "com.example.app", true),
            (PushType::Background, "com.example.app", true),
            (PushType::Voip, "com.example.app", false),
            (PushType::Voip, "com.example.app.voip", true),
            (PushType::Complication, "com.example.app.complication", true),
            (
                PushType::FileProvider,
                "com.example.app.fileprovider",
                false,
            ),
            (
                PushType::FileProvider,
                "com.example.app.pushkit.fileprovider",
                true,
            ),
            (PushType::Location, "com.example.app.location-query", true),
            (
                PushType::LiveActivity,
                "com.example.app.liveactivity",
                false,
            ),
            (
                PushType::LiveActivity,
                "com.example.app.push-type.liveactivity",
                true,
            ),
            (PushType::PushToTalk, "com.example.app.voip", false),
            (PushType::PushToTalk, "com.example.app.voip-ptt", true),
            (PushType::Widgets, "com.example.app", false),
            (PushType::Widgets, "com.example.app.push-type.widgets", true),
            (
                PushType::Controls,
                "com.example.app.push-type.controls",
                true,
            ),
            (PushType::Alert, "com.example.app", true),
        ];
        for (push_type, topic, fits) in cases {
            assert_eq!(push_type.fits_topic(topic), fits, "{push_type:?} {topic}");
        }
    }

    #[test]
    fn background_pushes_go_at_priority_5_at_most() {
        let mut n = ApnsNotification::new("ab", &b"{}"[..]);
        for (priority, push_type, want) in [
            (Some(10), PushType::Background, Some(5)),
            (Some(1), PushType::Background, Some(1)),
            (None, PushType::Background, Some(5)),
            (Some(10), PushType::Alert, Some(10)),
            (None, PushType::Alert, None),
        ] {
            n.priority = priority;
            assert_eq!(
                n.effective_priority(push_type),
                want,
                "{priority:?} {push_type:?}"
            );
        }
    }

    #[test]
    fn token_and_id_checks() {
        assert!(valid_token(&"ab".repeat(32)));
        assert!(!valid_token("xyz"));
        assert!(!valid_token(""));
        assert!(valid_apns_id("123e4567-e89b-12d3-a456-426614174000"));
        assert!(!valid_apns_id("123e4567e89b12d3a456426614174000"));
        assert_eq!(payload_limit(Some(PushType::Voip)), 5120);
        assert_eq!(payload_limit(None), 4096);
    }

    #[test]
    fn every_character_is_judged_as_hex_or_not() {
        // The branch-free check against the standard library's, character by character, in
        // the middle of an otherwise good token.
        for c in (0u8..=127).map(char::from).chain(['é', 'ａ', '٣']) {
            let token = format!("{}{c}{}", "0a".repeat(16), "F9".repeat(16));
            assert_eq!(valid_token(&token), c.is_ascii_hexdigit(), "{c:?}");
        }
        assert!(valid_token(&"f".repeat(200)));
        assert!(!valid_token(&"f".repeat(201)));
    }
}
