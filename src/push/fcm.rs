//! FCM wire vocabulary shared by the sender and the fake server: HTTP v1 error codes with their
//! HTTP status and canonical status, the legacy `/fcm/send` result errors, and the code ->
//! verdict tables (reference/protocols.md §2.4 and §3).

use super::outcome::{Outcome, RetryHint, Verdict};
use std::time::Duration;

/// The `@type` of the FCM error detail that carries `errorCode`.
pub const FCM_ERROR_TYPE: &str = "type.googleapis.com/google.firebase.fcm.v1.FcmError";
/// The `@type` of the detail that says why a request was not authenticated.
pub const ERROR_INFO_TYPE: &str = "type.googleapis.com/google.rpc.ErrorInfo";
/// The `@type` of the detail that lists bad fields.
pub const BAD_REQUEST_TYPE: &str = "type.googleapis.com/google.rpc.BadRequest";
/// The ErrorInfo reason of a stale OAuth access token.
pub const ACCESS_TOKEN_EXPIRED: &str = "ACCESS_TOKEN_EXPIRED";
/// Longest `android.ttl` FCM accepts: four weeks.
pub const MAX_TTL_SECS: u64 = 2_419_200;

/// Bytes of `value` as compact JSON, counted without building the string (payload limits).
pub fn json_len(value: &serde_json::Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Writing a `Value` to a sink that cannot fail cannot fail.
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}

/// An FCM HTTP v1 error code (`details[].errorCode`), plus `Other` so a new one is kept.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum FcmErrorCode {
    UnspecifiedError,
    InvalidArgument,
    Unregistered,
    SenderIdMismatch,
    QuotaExceeded,
    Unavailable,
    Internal,
    ThirdPartyAuthError,
    Other(String),
}

const CODES: &[(FcmErrorCode, &str, u16, &str)] = &[
    (
        FcmErrorCode::UnspecifiedError,
        "UNSPECIFIED_ERROR",
        500,
        "UNKNOWN",
    ),
    (
        FcmErrorCode::InvalidArgument,
        "INVALID_ARGUMENT",
        400,
        "INVALID_ARGUMENT",
    ),
    (FcmErrorCode::Unregistered, "UNREGISTERED", 404, "NOT_FOUND"),
    (
        FcmErrorCode::SenderIdMismatch,
        "SENDER_ID_MISMATCH",
        403,
        "PERMISSION_DENIED",
    ),
    (
        FcmErrorCode::QuotaExceeded,
        "QUOTA_EXCEEDED",
        429,
        "RESOURCE_EXHAUSTED",
    ),
    (FcmErrorCode::Unavailable, "UNAVAILABLE", 503, "UNAVAILABLE"),
    (FcmErrorCode::Internal, "INTERNAL", 500, "INTERNAL"),
    (
        FcmErrorCode::ThirdPartyAuthError,
        "THIRD_PARTY_AUTH_ERROR",
        401,
        "UNAUTHENTICATED",
    ),
];

impl FcmErrorCode {
    /// From an `errorCode` (or a legacy alias). Unknown codes are kept as `Other`.
    pub fn parse(code: &str) -> FcmErrorCode {
        if code == "APNS_AUTH_ERROR" {
            return FcmErrorCode::ThirdPartyAuthError;
        }
        CODES
            .iter()
            .find(|(_, name, _, _)| *name == code)
            .map(|(c, _, _, _)| c.clone())
            .unwrap_or_else(|| FcmErrorCode::Other(code.to_string()))
    }

    pub fn as_str(&self) -> &str {
        match self {
            FcmErrorCode::Other(s) => s,
            known => CODES
                .iter()
                .find(|(c, _, _, _)| c == known)
                .map(|(_, name, _, _)| *name)
                .unwrap_or("UNSPECIFIED_ERROR"),
        }
    }

    /// The HTTP status FCM answers this code with (500 for unknown codes).
    pub fn status(&self) -> u16 {
        CODES
            .iter()
            .find(|(c, _, _, _)| c == self)
            .map_or(500, |(_, _, status, _)| *status)
    }

    /// The canonical `error.status` that goes with this code.
    pub fn canonical_status(&self) -> &'static str {
        CODES
            .iter()
            .find(|(c, _, _, _)| c == self)
            .map_or("UNKNOWN", |(_, _, _, status)| *status)
    }

    /// What an answer with this code means for the push (protocols.md §2.4). `about_token`:
    /// for INVALID_ARGUMENT, the message names the registration token (then the token is
    /// bad, not the message).
    pub fn verdict(&self, retry_after: Option<Duration>, about_token: bool) -> Verdict {
        use FcmErrorCode::*;
        let reason = self.as_str().to_string();
        match self {
            Unregistered | SenderIdMismatch => Verdict::Final(Outcome::TokenInvalid {
                reason,
                timestamp_ms: None,
            }),
            InvalidArgument if about_token => Verdict::Final(Outcome::TokenInvalid {
                reason,
                timestamp_ms: None,
            }),
            QuotaExceeded | Unavailable | Internal => {
                Verdict::Retry(RetryHint::new(reason).after(retry_after))
            }
            // The project's APNs or web push credential in Firebase is bad. FCM says so only
            // for messages to Apple or web targets; Android tokens still deliver, so it is
            // this message's verdict: a fault would retry it forever and flap the app's gate.
            // Not the token's fault either: nothing is deleted. Nearly all an app gets, it is
            // the configuration's (sender/guard.rs).
            ThirdPartyAuthError => Verdict::Final(Outcome::Rejected { reason }),
            _ => Verdict::Final(Outcome::Rejected { reason }),
        }
    }
}

impl std::fmt::Display for FcmErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The verdict on an error answer that carries no FcmError detail, from its canonical
/// `error.status` and HTTP status. A bare NOT_FOUND or PERMISSION_DENIED is a wrong project
/// or a missing permission (a dead token carries UNREGISTERED), and a bare 401 a refused key:
/// configuration, not the message, so neither deletes nor rejects.
pub fn status_verdict(status: u16, canonical: &str, retry_after: Option<Duration>) -> Verdict {
    let reason = if canonical.is_empty() {
        format!("HTTP {status}")
    } else {
        canonical.to_string()
    };
    match canonical {
        "RESOURCE_EXHAUSTED" | "UNAVAILABLE" | "INTERNAL" | "DEADLINE_EXCEEDED" | "ABORTED" => {
            Verdict::Retry(RetryHint::new(reason).after(retry_after))
        }
        _ if status == 429 || status >= 500 => {
            Verdict::Retry(RetryHint::new(reason).after(retry_after))
        }
        "PERMISSION_DENIED" | "NOT_FOUND" | "UNAUTHENTICATED" => Verdict::Fault { reason },
        // No Google error at all on a 404 or 405: the URL is not FCM's (the legacy
        // `/fcm/send` answers 404 since its shutdown), whatever the message.
        "" if matches!(status, 404 | 405) => Verdict::Fault { reason },
        _ if matches!(status, 401 | 403) => Verdict::Fault { reason },
        _ => Verdict::Final(Outcome::Rejected { reason }),
    }
}

/// True when an INVALID_ARGUMENT message is about the registration token (FCM: "The
/// registration token is not a valid FCM registration token"). Never for a target conflict
/// (FCM: "Invalid value at 'message' (oneof), oneof field 'target' is already set. Cannot set
/// 'topic'"): two targets are the message's fault, and its token may be good.
pub fn message_names_token(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    !m.contains("oneof")
        && (m.contains("registration token")
            || m.contains("message.token")
            || m.contains("message.fid"))
}

/// Legacy `/fcm/send` `results[].error` values (protocols.md §3, table 9).
pub mod legacy {
    use super::*;

    pub const NOT_REGISTERED: &str = "NotRegistered";
    pub const INVALID_REGISTRATION: &str = "InvalidRegistration";
    pub const MISMATCH_SENDER_ID: &str = "MismatchSenderId";
    pub const MISSING_REGISTRATION: &str = "MissingRegistration";
    pub const UNAVAILABLE: &str = "Unavailable";
    pub const INTERNAL_SERVER_ERROR: &str = "InternalServerError";
    pub const DEVICE_MESSAGE_RATE_EXCEEDED: &str = "DeviceMessageRateExceeded";
    pub const MESSAGE_TOO_BIG: &str = "MessageTooBig";
    pub const INVALID_DATA_KEY: &str = "InvalidDataKey";
    pub const INVALID_TTL: &str = "InvalidTtl";

    /// What one legacy result error means for the push.
    pub fn verdict(error: &str, retry_after: Option<Duration>) -> Verdict {
        let reason = error.to_string();
        match error {
            NOT_REGISTERED | INVALID_REGISTRATION | MISMATCH_SENDER_ID => {
                Verdict::Final(Outcome::TokenInvalid {
                    reason,
                    timestamp_ms: None,
                })
            }
            UNAVAILABLE
            | INTERNAL_SERVER_ERROR
            | DEVICE_MESSAGE_RATE_EXCEEDED
            | "TopicsMessageRateExceeded" => {
                Verdict::Retry(RetryHint::new(reason).after(retry_after))
            }
            _ => Verdict::Final(Outcome::Rejected { reason }),
        }
    }

    /// The legacy name of a v1 code, for the fake's legacy endpoint.
    pub fn from_code(code: &FcmErrorCode) -> &'static str {
        match code {
            FcmErrorCode::Unregistered => NOT_REGISTERED,
            FcmErrorCode::InvalidArgument => INVALID_REGISTRATION,
            FcmErrorCode::SenderIdMismatch => MISMATCH_SENDER_ID,
            FcmErrorCode::QuotaExceeded => DEVICE_MESSAGE_RATE_EXCEEDED,
            FcmErrorCode::Unavailable => UNAVAILABLE,
            _ => INTERNAL_SERVER_ERROR,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_len_counts_compact_json() {
        for v in [
            serde_json::json!({"k": "v", "n": [1, 2, {"é": null}]}),
            serde_json::json!("x\"y"),
            serde_json::json!({}),
        ] {
            assert_eq!(json_len(&v), v.to_string().len());
        }
    }

    #[test]
    fn codes_round_trip_with_their_statuses() {
        for (code, name, status, canonical) in CODES {
            assert_eq!(&FcmErrorCode::parse(name), code);
            assert_eq!(code.as_str(), *name);
            assert_eq!(code.status(), *status);
            assert_eq!(code.canonical_status(), *canonical);
        }
        assert_eq!(
            FcmErrorCode::parse("APNS_AUTH_ERROR"),
            FcmErrorCode::ThirdPartyAuthError
        );
        let new = FcmErrorCode::parse("BRAND_NEW");
        assert_eq!(new.as_str(), "BRAND_NEW");
        assert_eq!(new.status(), 500);
    }

    #[test]
    fn code_verdicts_follow_the_table() {
        let after = Some(Duration::from_secs(3));
        let invalid = |r: &str| {
            Verdict::Final(Outcome::TokenInvalid {
                reason: r.into(),
                timestamp_ms: None,
            })
        };
        let rejected = |r: &str| Verdict::Final(Outcome::Rejected { reason: r.into() });
        let retry = |r: &str| Verdict::Retry(RetryHint::new(r).after(after));
        let cases = [
            ("UNREGISTERED", false, invalid("UNREGISTERED")),
            ("SENDER_ID_MISMATCH", false, invalid("SENDER_ID_MISMATCH")),
            ("INVALID_ARGUMENT", true, invalid("INVALID_ARGUMENT")),
            ("INVALID_ARGUMENT", false, rejected("INVALID_ARGUMENT")),
            ("QUOTA_EXCEEDED", false, retry("QUOTA_EXCEEDED")),
            ("UNAVAILABLE", false, retry("UNAVAILABLE")),
            ("INTERNAL", false, retry("INTERNAL")),
            (
                "THIRD_PARTY_AUTH_ERROR",
                false,
                rejected("THIRD_PARTY_AUTH_ERROR"),
            ),
            ("UNSPECIFIED_ERROR", false, rejected("UNSPECIFIED_ERROR")),
            ("BRAND_NEW", false, rejected("BRAND_NEW")),
        ];
        for (code, about_token, want) in cases {
            assert_eq!(
                FcmErrorCode::parse(code).verdict(after, about_token),
                want,
                "{code}"
            );
        }
    }

    #[test]
    fn bare_statuses_and_legacy_errors() {
        assert!(matches!(
            status_verdict(503, "UNAVAILABLE", None),
            Verdict::Retry(_)
        ));
        assert!(matches!(status_verdict(502, "", None), Verdict::Retry(_)));
        // A bare NOT_FOUND is a wrong project: configuration.
        assert_eq!(
            status_verdict(404, "NOT_FOUND", None),
            Verdict::Fault {
                reason: "NOT_FOUND".into()
            }
        );
        assert_eq!(
            status_verdict(400, "", None),
            Verdict::Final(Outcome::Rejected {
                reason: "HTTP 400".into()
            })
        );
        // No Google error on a 404: not FCM's URL (the legacy API since its shutdown).
        assert_eq!(
            status_verdict(404, "", None),
            Verdict::Fault {
                reason: "HTTP 404".into()
            }
        );
        for e in ["NotRegistered", "InvalidRegistration", "MismatchSenderId"] {
            assert!(matches!(
                legacy::verdict(e, None),
                Verdict::Final(Outcome::TokenInvalid { .. })
            ));
        }
        for e in ["Unavailable", "InternalServerError"] {
            assert!(matches!(legacy::verdict(e, None), Verdict::Retry(_)));
        }
        assert!(matches!(
            legacy::verdict("MessageTooBig", None),
            Verdict::Final(Outcome::Rejected { .. })
        ));
        assert!(message_names_token(
            "The registration token is not a valid FCM registration token"
        ));
        assert!(!message_names_token(
            "Invalid value at 'message.data[0].value'"
        ));
        for oneof in [
            "Invalid value at 'message' (oneof), oneof field 'target' is already set. Cannot set 'topic'",
            "Invalid value at 'message' (oneof), oneof field 'target' is already set. Cannot set 'message.token'",
        ] {
            assert!(!message_names_token(oneof), "{oneof}");
        }
    }
}
