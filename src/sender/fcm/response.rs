//! Turning FCM answers into verdicts: the v1 `{"name"}` / `{"error":{...}}` answer, and the
//! legacy `/fcm/send` per-token results. Pure functions over the tables in `push::fcm`.

use crate::push::fcm::{
    legacy, message_names_token, status_verdict, FcmErrorCode, ACCESS_TOKEN_EXPIRED,
    ERROR_INFO_TYPE, FCM_ERROR_TYPE,
};
use crate::push::{Outcome, RetryHint, Verdict};
use crate::sender::retry::retry_after;
use http::HeaderMap;
use serde::Deserialize;
use std::time::Duration;

/// One FCM answer about one token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FcmResponse {
    pub status: u16,
    /// The FcmError `errorCode`, else the canonical `error.status` (v1), or the legacy
    /// result's `error`.
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    /// v1 `name` (`projects/p/messages/0:...`) or the legacy `message_id`.
    pub message_id: Option<String>,
    /// Legacy only: the token to store instead of the one sent.
    pub canonical_registration_id: Option<String>,
    pub retry_after: Option<Duration>,
    pub verdict: Verdict,
}

#[derive(Deserialize)]
struct V1Success {
    name: Option<String>,
}

#[derive(Deserialize)]
struct V1ErrorBody {
    error: V1Error,
}

#[derive(Deserialize)]
struct V1Error {
    #[serde(default)]
    message: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    details: Vec<serde_json::Value>,
}

impl FcmResponse {
    /// Reads a v1 `messages:send` answer.
    pub fn v1(status: u16, headers: &HeaderMap, body: &[u8]) -> FcmResponse {
        let retry_after = retry_after(headers);
        let text = || Some(String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned());
        if (200..300).contains(&status) {
            let name = serde_json::from_slice::<V1Success>(body)
                .ok()
                .and_then(|s| s.name);
            // FCM names every message it accepts (validate_only too). A success without a
            // name is something else answering (a stub, a gateway's default route), that
            // would "deliver" every message so: the endpoint's fault, not a delivery.
            let (verdict, error_message) = match name {
                Some(_) => (Verdict::Final(Outcome::Delivered), None),
                None => (
                    Verdict::Fault {
                        reason: format!("HTTP {status} without a message name (is the URL FCM's?)"),
                    },
                    text(),
                ),
            };
            return FcmResponse {
                status,
                error_code: None,
                error_message,
                message_id: name,
                canonical_registration_id: None,
                retry_after,
                verdict,
            };
        }
        let Ok(V1ErrorBody { error }) = serde_json::from_slice::<V1ErrorBody>(body) else {
            // Not Google's JSON (a proxy's page, say): judge by the status alone.
            let verdict = match status {
                401 => Verdict::Retry(RetryHint::new("HTTP 401").renew_auth()),
                // FCM names an error in every refusal: any other answer below 500 without
                // one is not FCM judging the message but something else (a wrong URL, a
                // proxy, http:// to a TLS port), and it would answer every message the same.
                // Only a size refusal is about this message; a 429 is retried.
                413 | 429 => status_verdict(status, "", retry_after),
                _ if status < 500 => Verdict::Fault {
                    reason: format!("HTTP {status} without a Google error (is the URL FCM's?)"),
                },
                _ => status_verdict(status, "", retry_after),
            };
            return FcmResponse {
                status,
                error_code: None,
                error_message: text(),
                message_id: None,
                canonical_registration_id: None,
                retry_after,
                verdict,
            };
        };
        let detail = |ty: &str, field: &str| {
            error
                .details
                .iter()
                .filter(|d| d.get("@type").and_then(|t| t.as_str()) == Some(ty))
                .find_map(|d| d.get(field).and_then(|v| v.as_str()).map(str::to_owned))
        };
        let fcm_code = detail(FCM_ERROR_TYPE, "errorCode");
        let info_reason = detail(ERROR_INFO_TYPE, "reason");
        let verdict = match fcm_code.as_deref().map(FcmErrorCode::parse) {
            // A code newer than our table on a 429 or 5xx: the status says to retry (as APNs'
            // unknown reasons); a final rejection would drop the message in an outage.
            Some(FcmErrorCode::Other(_)) if status == 429 || status >= 500 => {
                status_verdict(status, &error.status, retry_after)
            }
            // A credentials refusal whose code our table does not know (or says nothing):
            // as a bare 401/403, the configuration's fault. Taken as this message's verdict,
            // it rejected the whole backlog.
            Some(FcmErrorCode::Other(_) | FcmErrorCode::UnspecifiedError)
                if matches!(status, 401 | 403) =>
            {
                status_verdict(status, &error.status, retry_after)
            }
            Some(code) => code.verdict(retry_after, message_names_token(&error.message)),
            // A stale or refused OAuth token: renew it and try again (the send loop turns a
            // second 401 into a rejection).
            None if status == 401 => {
                let reason = if info_reason.as_deref() == Some(ACCESS_TOKEN_EXPIRED) {
                    ACCESS_TOKEN_EXPIRED
                } else {
                    "UNAUTHENTICATED"
                };
                Verdict::Retry(RetryHint::new(reason).renew_auth())
            }
            None => status_verdict(status, &error.status, retry_after),
        };
        let error_code = fcm_code.or_else(|| (!error.status.is_empty()).then_some(error.status));
        FcmResponse {
            status,
            error_code,
            error_message: Some(error.message),
            message_id: None,
            canonical_registration_id: None,
            retry_after,
            verdict,
        }
    }
}

/// A legacy `/fcm/send` answer: one entry per token sent, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LegacyReply {
    pub status: u16,
    /// Parsed as an integer: it can exceed 2^53 (protocols.md §3).
    pub multicast_id: Option<i64>,
    pub results: Vec<FcmResponse>,
}

#[derive(Deserialize)]
struct LegacyBody {
    multicast_id: Option<i64>,
    #[serde(default)]
    results: Vec<LegacyResult>,
    /// A topic message's answer has no `results`: `{"message_id":<int64>}` or
    /// `{"error":"TopicsMessageRateExceeded"}` (protocols.md §3).
    message_id: Option<i64>,
    error: Option<String>,
}

#[derive(Deserialize)]
struct LegacyResult {
    message_id: Option<String>,
    registration_id: Option<String>,
    error: Option<String>,
}

impl LegacyReply {
    /// Reads a legacy answer for `tokens` tokens, or for one `topic` address (answered with
    /// one id or one error, no `results`). A non-200 (or a body that does not list one result
    /// per token) gives every token the same verdict.
    pub fn parse(
        status: u16,
        headers: &HeaderMap,
        body: &[u8],
        tokens: usize,
        topic: bool,
    ) -> LegacyReply {
        let after = retry_after(headers);
        let same_for_all =
            |verdict: Verdict, code: Option<String>, message: Option<String>| LegacyReply {
                status,
                multicast_id: None,
                results: (0..tokens)
                    .map(|_| FcmResponse {
                        status,
                        error_code: code.clone(),
                        error_message: message.clone(),
                        message_id: None,
                        canonical_registration_id: None,
                        retry_after: after,
                        verdict: verdict.clone(),
                    })
                    .collect(),
            };
        let text = || Some(String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned());
        if status != 200 {
            // 400 bad JSON/fields, 401 bad key: permanent; 5xx: retry with Retry-After. FCM's
            // 400 says what is wrong in plain text; a web page below 500 is something else
            // answering (http:// to a TLS port, a proxy), alike for every message.
            let web_page = body.trim_ascii_start().starts_with(b"<");
            // (401, 403, 404 and 405 are faults by their status, with words about the key or
            // the URL.)
            let by_status = matches!(status, 401 | 403 | 404 | 405 | 413 | 429);
            let verdict = if web_page && status < 500 && !by_status {
                Verdict::Fault {
                    reason: format!("HTTP {status} with a web page, not FCM's (is the URL FCM's?)"),
                }
            } else {
                status_verdict(status, "", after)
            };
            return same_for_all(verdict, Some(format!("HTTP {status}")), text());
        }
        let parsed = match serde_json::from_slice::<LegacyBody>(body) {
            Ok(p) if p.results.len() == tokens => p,
            // A topic message: its one verdict, read as a token's. Only for a topic: to a
            // token, that shape is no FCM answer (and `NotRegistered` would delete the token).
            Ok(LegacyBody {
                results,
                message_id,
                error,
                ..
            }) if topic
                && results.is_empty()
                && tokens == 1
                && (message_id.is_some() || error.is_some()) =>
            {
                LegacyBody {
                    multicast_id: None,
                    results: vec![LegacyResult {
                        message_id: message_id.map(|id| id.to_string()),
                        registration_id: None,
                        error,
                    }],
                    message_id: None,
                    error: None,
                }
            }
            Ok(_) | Err(_) => {
                // A 200 that is not the legacy API's answer: the endpoint is something else,
                // and would answer every message so; not the messages' fault.
                let reason = "unexpected legacy answer".to_string();
                return same_for_all(
                    Verdict::Fault {
                        reason: reason.clone(),
                    },
                    Some(reason),
                    text(),
                );
            }
        };
        let results = parsed
            .results
            .into_iter()
            .map(|r| {
                let verdict = match &r.error {
                    Some(error) => legacy::verdict(error, after),
                    None => Verdict::Final(Outcome::Delivered),
                };
                FcmResponse {
                    status,
                    error_code: r.error,
                    error_message: None,
                    message_id: r.message_id,
                    canonical_registration_id: r.registration_id,
                    retry_after: after,
                    verdict,
                }
            })
            .collect();
        LegacyReply {
            status,
            multicast_id: parsed.multicast_id,
            results,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(code: u16, status: &str, message: &str, details: &str) -> String {
        format!(
            r#"{{"error":{{"code":{code},"message":"{message}","status":"{status}","details":[{details}]}}}}"#
        )
    }
    fn fcm(code: &str) -> String {
        format!(r#"{{"@type":"{FCM_ERROR_TYPE}","errorCode":"{code}"}}"#)
    }

    #[test]
    fn v1_answers_to_verdicts() {
        let mut headers = HeaderMap::new();
        headers.insert("retry-after", "7".parse().unwrap());
        let after = Some(Duration::from_secs(7));
        let invalid = |r: &str| {
            Verdict::Final(Outcome::TokenInvalid {
                reason: r.into(),
                timestamp_ms: None,
            })
        };
        let rejected = |r: &str| Verdict::Final(Outcome::Rejected { reason: r.into() });
        let fault = |r: &str| Verdict::Fault { reason: r.into() };
        let retry = |r: &str| Verdict::Retry(RetryHint::new(r).after(after));
        let cases: Vec<(u16, String, Verdict)> = vec![
            (
                404,
                error(
                    404,
                    "NOT_FOUND",
                    "Requested entity was not found.",
                    &fcm("UNREGISTERED"),
                ),
                invalid("UNREGISTERED"),
            ),
            (
                403,
                error(
                    403,
                    "PERMISSION_DENIED",
                    "SenderId mismatch",
                    &fcm("SENDER_ID_MISMATCH"),
                ),
                invalid("SENDER_ID_MISMATCH"),
            ),
            (
                400,
                error(
                    400,
                    "INVALID_ARGUMENT",
                    "The registration token is not a valid FCM registration token",
                    &fcm("INVALID_ARGUMENT"),
                ),
                invalid("INVALID_ARGUMENT"),
            ),
            (
                400,
                error(
                    400,
                    "INVALID_ARGUMENT",
                    "Invalid value at 'message.data[0].value' (TYPE_STRING), 12",
                    &fcm("INVALID_ARGUMENT"),
                ),
                rejected("INVALID_ARGUMENT"),
            ),
            (
                429,
                error(429, "RESOURCE_EXHAUSTED", "quota", &fcm("QUOTA_EXCEEDED")),
                retry("QUOTA_EXCEEDED"),
            ),
            (
                503,
                error(503, "UNAVAILABLE", "down", &fcm("UNAVAILABLE")),
                retry("UNAVAILABLE"),
            ),
            (
                500,
                error(500, "INTERNAL", "oops", &fcm("INTERNAL")),
                retry("INTERNAL"),
            ),
            (
                401,
                error(
                    401,
                    "UNAUTHENTICATED",
                    "apns key",
                    &fcm("THIRD_PARTY_AUTH_ERROR"),
                ),
                rejected("THIRD_PARTY_AUTH_ERROR"),
            ),
            (
                401,
                error(
                    401,
                    "UNAUTHENTICATED",
                    "expired",
                    &format!(r#"{{"@type":"{ERROR_INFO_TYPE}","reason":"ACCESS_TOKEN_EXPIRED"}}"#),
                ),
                Verdict::Retry(RetryHint::new("ACCESS_TOKEN_EXPIRED").renew_auth()),
            ),
            (
                401,
                error(401, "UNAUTHENTICATED", "bad creds", ""),
                Verdict::Retry(RetryHint::new("UNAUTHENTICATED").renew_auth()),
            ),
            (
                403,
                error(403, "PERMISSION_DENIED", "no", ""),
                fault("PERMISSION_DENIED"),
            ),
            (
                503,
                error(503, "UNAVAILABLE", "down", ""),
                retry("UNAVAILABLE"),
            ),
            (502, "<html>".into(), retry("HTTP 502")),
            (
                400,
                error(400, "INVALID_ARGUMENT", "x", &fcm("BRAND_NEW")),
                rejected("BRAND_NEW"),
            ),
            // An unknown code on a 429 or 5xx: the status decides, as for APNs.
            (
                503,
                error(503, "UNAVAILABLE", "x", &fcm("BRAND_NEW")),
                retry("UNAVAILABLE"),
            ),
            (
                500,
                error(500, "", "x", &fcm("BRAND_NEW")),
                retry("HTTP 500"),
            ),
            (
                429,
                error(429, "RESOURCE_EXHAUSTED", "x", &fcm("BRAND_NEW")),
                retry("RESOURCE_EXHAUSTED"),
            ),
            // A credentials refusal with a code the table does not know: configuration.
            (
                403,
                error(403, "PERMISSION_DENIED", "x", &fcm("BRAND_NEW")),
                fault("PERMISSION_DENIED"),
            ),
            (
                401,
                error(401, "UNAUTHENTICATED", "x", &fcm("UNSPECIFIED_ERROR")),
                fault("UNAUTHENTICATED"),
            ),
            // No Google error below 500: something else answers (nginx's "plain HTTP
            // request was sent to HTTPS port", a proxy's 421), alike for every message.
            (
                400,
                "<html><center>The plain HTTP request was sent to HTTPS port</center></html>"
                    .into(),
                fault("HTTP 400 without a Google error (is the URL FCM's?)"),
            ),
            (
                421,
                String::new(),
                fault("HTTP 421 without a Google error (is the URL FCM's?)"),
            ),
            (
                302,
                String::new(),
                fault("HTTP 302 without a Google error (is the URL FCM's?)"),
            ),
            // Except a size refusal (this message's) and a 429 (retried).
            (413, "<html>".into(), rejected("HTTP 413")),
            (429, "<html>".into(), retry("HTTP 429")),
            // A success without the message's name is no delivery.
            (
                200,
                "{}".into(),
                fault("HTTP 200 without a message name (is the URL FCM's?)"),
            ),
            (
                200,
                "ok".into(),
                fault("HTTP 200 without a message name (is the URL FCM's?)"),
            ),
        ];
        for (status, body, want) in cases {
            let r = FcmResponse::v1(status, &headers, body.as_bytes());
            assert_eq!(r.verdict, want, "{status} {body}");
        }
        let ok = FcmResponse::v1(
            200,
            &HeaderMap::new(),
            br#"{"name":"projects/p/messages/0:1"}"#,
        );
        assert_eq!(ok.verdict, Verdict::Final(Outcome::Delivered));
        assert_eq!(ok.message_id.as_deref(), Some("projects/p/messages/0:1"));
        let bare = FcmResponse::v1(
            403,
            &headers,
            error(403, "PERMISSION_DENIED", "m", "").as_bytes(),
        );
        assert_eq!(bare.error_code.as_deref(), Some("PERMISSION_DENIED"));
        assert_eq!(bare.error_message.as_deref(), Some("m"));
    }

    #[test]
    fn legacy_answers_to_verdicts() {
        let body =
            br#"{"multicast_id":9007199254740993123,"success":2,"failure":3,"canonical_ids":1,
          "results":[{"message_id":"0:1"},{"message_id":"0:2","registration_id":"newtok"},
          {"error":"NotRegistered"},{"error":"Unavailable"},{"error":"MessageTooBig"}]}"#;
        let r = LegacyReply::parse(200, &HeaderMap::new(), body, 5, false);
        assert_eq!(r.multicast_id, Some(9_007_199_254_740_993_123));
        let verdicts: Vec<_> = r.results.iter().map(|x| x.verdict.clone()).collect();
        assert_eq!(verdicts[0], Verdict::Final(Outcome::Delivered));
        assert_eq!(verdicts[1], Verdict::Final(Outcome::Delivered));
        assert_eq!(
            r.results[1].canonical_registration_id.as_deref(),
            Some("newtok")
        );
        assert!(matches!(
            verdicts[2],
            Verdict::Final(Outcome::TokenInvalid { .. })
        ));
        assert!(matches!(verdicts[3], Verdict::Retry(_)));
        assert!(matches!(
            verdicts[4],
            Verdict::Final(Outcome::Rejected { .. })
        ));

        let mut headers = HeaderMap::new();
        headers.insert("retry-after", "2".parse().unwrap());
        let down = LegacyReply::parse(503, &headers, b"", 2, false);
        assert_eq!(down.results.len(), 2);
        assert_eq!(
            down.results[0].verdict,
            Verdict::Retry(RetryHint::new("HTTP 503").after(Some(Duration::from_secs(2))))
        );
        // A refused server key is the configuration's fault, not the message's.
        let unauthorized = LegacyReply::parse(401, &HeaderMap::new(), b"Unauthorized", 1, false);
        assert!(matches!(
            unauthorized.results[0].verdict,
            Verdict::Fault { .. }
        ));
        // A 200 that is not the legacy API's answer: something else answers, for every
        // message alike.
        let short = LegacyReply::parse(200, &HeaderMap::new(), br#"{"results":[]}"#, 1, false);
        assert!(matches!(short.results[0].verdict, Verdict::Fault { .. }));
        // The legacy API answers bad JSON with a bare 400: that message's fault.
        let bad_json = LegacyReply::parse(400, &HeaderMap::new(), b"Bad Request", 1, false);
        assert_eq!(
            bad_json.results[0].verdict,
            Verdict::Final(Outcome::Rejected {
                reason: "HTTP 400".into()
            })
        );
        // A web page is not the legacy API's 400 but something else answering (nginx's "plain
        // HTTP request was sent to HTTPS port"), alike for every message. Seen: rejected.
        let page = b"<html><center>The plain HTTP request was sent to HTTPS port</center></html>";
        let proxy = LegacyReply::parse(400, &HeaderMap::new(), page, 1, false);
        assert!(matches!(proxy.results[0].verdict, Verdict::Fault { .. }));
        // A refused key's page says so, not "is the URL FCM's?".
        let key = LegacyReply::parse(401, &HeaderMap::new(), b"<HTML>Unauthorized", 1, false);
        assert!(
            matches!(&key.results[0].verdict, Verdict::Fault { reason } if !reason.contains("URL")),
            "{:?}",
            key.results[0].verdict
        );
        // And the legacy URL since its shutdown: 404 with no Google error.
        let gone = LegacyReply::parse(404, &HeaderMap::new(), b"Not Found", 1, false);
        assert!(matches!(gone.results[0].verdict, Verdict::Fault { .. }));
        // A topic message's answers have no `results` (protocols.md §3): they were read as
        // an endpoint that is not FCM, and paused the app.
        let topic = LegacyReply::parse(
            200,
            &HeaderMap::new(),
            br#"{"message_id":9007199254740993123}"#,
            1,
            true,
        );
        assert_eq!(topic.results[0].verdict, Verdict::Final(Outcome::Delivered));
        assert_eq!(
            topic.results[0].message_id.as_deref(),
            Some("9007199254740993123")
        );
        let slow_down = LegacyReply::parse(
            200,
            &HeaderMap::new(),
            br#"{"error":"TopicsMessageRateExceeded"}"#,
            1,
            true,
        );
        assert!(matches!(slow_down.results[0].verdict, Verdict::Retry(_)));
        // To a token, that shape is no FCM answer: a fault, not a verdict on the token.
        let not_fcm = LegacyReply::parse(
            200,
            &HeaderMap::new(),
            br#"{"error":"NotRegistered"}"#,
            1,
            false,
        );
        assert!(matches!(not_fcm.results[0].verdict, Verdict::Fault { .. }));
        assert!(matches!(slow_down.results[0].verdict, Verdict::Retry(_)));
    }
}
