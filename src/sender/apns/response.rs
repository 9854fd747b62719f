//! Turning an APNs answer (status, headers, body) into a verdict: a pure function over the
//! reason table in `push::apns`. Unknown reasons are kept as strings, never dropped.

use crate::push::apns::ApnsReason;
use crate::push::{Outcome, Verdict};
use http::HeaderMap;
use std::time::Duration;

/// One APNs answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApnsResponse {
    pub status: u16,
    /// `None` on success.
    pub reason: Option<ApnsReason>,
    /// The `apns-id` APNs echoed or made.
    pub apns_id: Option<String>,
    /// Milliseconds since the epoch, on 410 only: when APNs last knew the token was invalid.
    pub timestamp_ms: Option<u64>,
    /// `Retry-After` (seconds, or an HTTP-date: a wait from now).
    pub retry_after: Option<Duration>,
    pub verdict: Verdict,
}

#[derive(serde::Deserialize)]
struct ErrorBody {
    reason: Option<String>,
    timestamp: Option<u64>,
}

impl ApnsResponse {
    pub fn from_parts(status: u16, headers: &HeaderMap, body: &[u8]) -> ApnsResponse {
        let apns_id = headers
            .get("apns-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let retry_after = crate::sender::retry::retry_after(headers);
        if status == 200 {
            // APNs answers every request with an `apns-id` (the request's or one it made): a
            // 200 without one is something else answering (a wrong URL, a proxy's health
            // page), and taken as delivered it would end the whole backlog so.
            let verdict = match apns_id {
                Some(_) => Verdict::Final(Outcome::Delivered),
                None => Verdict::Fault {
                    reason: "HTTP 200 without an apns-id (is the URL APNs?)".into(),
                },
            };
            return ApnsResponse {
                status,
                reason: None,
                apns_id,
                timestamp_ms: None,
                retry_after,
                verdict,
            };
        }
        let parsed: Option<ErrorBody> = serde_json::from_slice(body).ok();
        let bare = !matches!(
            parsed,
            Some(ErrorBody {
                reason: Some(_),
                ..
            })
        );
        let (reason, timestamp_ms) = match parsed {
            Some(ErrorBody {
                reason: Some(reason),
                timestamp,
            }) => (ApnsReason::parse(&reason), timestamp),
            Some(ErrorBody {
                reason: None,
                timestamp,
            }) => (ApnsReason::Other(format!("HTTP {status}")), timestamp),
            // Not APNs' JSON (a proxy's error page, say): keep the status as the reason.
            None => (ApnsReason::Other(format!("HTTP {status}")), None),
        };
        let verdict = match status {
            // APNs names a reason with every refusal: a 4xx without one is not APNs judging the
            // message but something else answering (a wrong URL, a proxy), and it would answer
            // every message the same. Only a size refusal is about this message. A bare 410
            // included: taken as "gone", a proxy's 410s would delete every token.
            400..=499 if bare && !matches!(status, 413 | 429) => Verdict::Fault {
                reason: format!("HTTP {status} without an APNs reason (is the URL APNs?)"),
            },
            _ => reason.verdict(status, retry_after, timestamp_ms),
        };
        ApnsResponse {
            status,
            reason: Some(reason),
            apns_id,
            timestamp_ms,
            retry_after,
            verdict,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::push::RetryHint;

    const ID: &str = "123e4567-e89b-12d3-a456-426614174000";

    fn respond(status: u16, headers: &[(&str, &str)], body: &str) -> ApnsResponse {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.insert(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        ApnsResponse::from_parts(status, &map, body.as_bytes())
    }

    #[test]
    fn status_and_body_to_verdict() {
        let token_invalid = |reason: &str, ts| {
            Verdict::Final(Outcome::TokenInvalid {
                reason: reason.into(),
                timestamp_ms: ts,
            })
        };
        let rejected = |reason: &str| {
            Verdict::Final(Outcome::Rejected {
                reason: reason.into(),
            })
        };
        let retry = |reason: &str| Verdict::Retry(RetryHint::new(reason));
        let cases: Vec<(u16, &str, Verdict)> = vec![
            (200, "", Verdict::Final(Outcome::Delivered)),
            (
                410,
                r#"{"reason":"Unregistered","timestamp":1700000000123}"#,
                token_invalid("Unregistered", Some(1_700_000_000_123)),
            ),
            (
                410,
                r#"{"reason":"ExpiredToken"}"#,
                token_invalid("ExpiredToken", None),
            ),
            (
                400,
                r#"{"reason":"BadDeviceToken"}"#,
                token_invalid("BadDeviceToken", None),
            ),
            (
                400,
                r#"{"reason":"DeviceTokenNotForTopic"}"#,
                token_invalid("DeviceTokenNotForTopic", None),
            ),
            (400, r#"{"reason":"BadTopic"}"#, rejected("BadTopic")),
            (
                400,
                r#"{"reason":"BadCollapseId"}"#,
                rejected("BadCollapseId"),
            ),
            (
                403,
                r#"{"reason":"InvalidProviderToken"}"#,
                Verdict::Fault {
                    reason: "InvalidProviderToken".into(),
                },
            ),
            (
                403,
                r#"{"reason":"BadEnvironmentKeyInToken"}"#,
                Verdict::Fault {
                    reason: "BadEnvironmentKeyIdInToken".into(),
                },
            ),
            (
                413,
                r#"{"reason":"PayloadTooLarge"}"#,
                rejected("PayloadTooLarge"),
            ),
            (
                429,
                r#"{"reason":"TooManyRequests"}"#,
                Verdict::Retry(RetryHint::new("TooManyRequests").own()),
            ),
            (
                500,
                r#"{"reason":"InternalServerError"}"#,
                retry("InternalServerError"),
            ),
            (
                503,
                r#"{"reason":"ServiceUnavailable"}"#,
                retry("ServiceUnavailable"),
            ),
            (
                503,
                r#"{"reason":"Shutdown"}"#,
                Verdict::Retry(RetryHint::new("Shutdown").reconnect()),
            ),
            (
                403,
                r#"{"reason":"ExpiredProviderToken"}"#,
                Verdict::Retry(
                    RetryHint::new("ExpiredProviderToken")
                        .renew_auth()
                        .reconnect(),
                ),
            ),
            (
                400,
                r#"{"reason":"BrandNewReason"}"#,
                rejected("BrandNewReason"),
            ),
            (
                503,
                r#"{"reason":"BrandNewReason"}"#,
                retry("BrandNewReason"),
            ),
            (502, "<html>bad gateway</html>", retry("HTTP 502")),
            // No APNs reason on a refusal: something else answers (a wrong URL, a proxy).
            (
                404,
                "",
                Verdict::Fault {
                    reason: "HTTP 404 without an APNs reason (is the URL APNs?)".into(),
                },
            ),
            (
                403,
                "<html>forbidden</html>",
                Verdict::Fault {
                    reason: "HTTP 403 without an APNs reason (is the URL APNs?)".into(),
                },
            ),
            // A 410 without Apple's reason is no token's death (Apple always names one).
            (
                410,
                "",
                Verdict::Fault {
                    reason: "HTTP 410 without an APNs reason (is the URL APNs?)".into(),
                },
            ),
            (
                410,
                "<html>gone</html>",
                Verdict::Fault {
                    reason: "HTTP 410 without an APNs reason (is the URL APNs?)".into(),
                },
            ),
            (
                410,
                r#"{"timestamp":1700000000123}"#,
                Verdict::Fault {
                    reason: "HTTP 410 without an APNs reason (is the URL APNs?)".into(),
                },
            ),
            // ... but a bare size refusal is about this message.
            (413, "", rejected("HTTP 413")),
        ];
        for (status, body, want) in cases {
            let got = respond(status, &[("apns-id", ID)], body);
            assert_eq!(got.verdict, want, "{status} {body}");
            assert_eq!(got.status, status);
        }
    }

    /// A 200 that is no APNs answer (no `apns-id`) must not end the message as delivered.
    #[test]
    fn a_200_without_an_apns_id_is_a_fault() {
        let r = respond(200, &[], "");
        assert_eq!(
            r.verdict,
            Verdict::Fault {
                reason: "HTTP 200 without an apns-id (is the URL APNs?)".into()
            }
        );
    }

    #[test]
    fn unknown_reason_is_kept() {
        let r = respond(400, &[], r#"{"reason":"BrandNewReason"}"#);
        assert_eq!(r.reason, Some(ApnsReason::Other("BrandNewReason".into())));
    }

    #[test]
    fn headers_are_read() {
        let r = respond(
            429,
            &[
                ("apns-id", "123e4567-e89b-12d3-a456-426614174000"),
                ("retry-after", "7"),
            ],
            r#"{"reason":"TooManyRequests"}"#,
        );
        assert_eq!(
            r.apns_id.as_deref(),
            Some("123e4567-e89b-12d3-a456-426614174000")
        );
        assert_eq!(r.retry_after, Some(Duration::from_secs(7)));
        assert_eq!(
            r.verdict,
            Verdict::Retry(
                RetryHint::new("TooManyRequests")
                    .after(Some(Duration::from_secs(7)))
                    .own()
            )
        );
        // An HTTP-date in the past: no wait.
        let r = respond(
            200,
            &[
                ("apns-id", ID),
                ("retry-after", "Wed, 21 Oct 2015 07:28:00 GMT"),
            ],
            "",
        );
        assert_eq!(r.retry_after, Some(Duration::ZERO));
        assert_eq!(r.reason, None);
    }
}
