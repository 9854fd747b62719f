//! Feedback records in the seed system's formats (DESIGN.md §6, anchors §1.6), and the Kafka
//! producer that hands them off.
//!
//! APNs: `{"Sent","StatusCode","Reason","ApnsID","Err":{"Key","Description"},"DeviceToken",
//! "timestamp","metadata":{...,"deleteToken":true},"Notification":<payload>}`.
//! GCM: `{"from":<token>,"error":"DEVICE_UNREGISTERED","error_description":...,"metadata":{...}}`.
//! Error keys are the seed's (`mapErrorReason` for APNs, `translateError` for FCM), so existing
//! feedback consumers (the seed's listener deletes on them) keep working.
//!
//! [`FeedbackProducer::send`] returns once the broker acknowledged the record: that is the
//! "handed off" point after which the message's offset may be committed.

use crate::push::message::Metadata;
use crate::push::{Outcome, Platform};
use crate::telemetry::QuietProducerContext;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use serde::Serialize;
use serde_json::{Map, Value};
use std::sync::Arc;
use std::time::Duration;

/// The seed's feedback topic (it hard-coded this; here it is `feedback.kafka.topics`).
pub const DEFAULT_TOPIC_TEMPLATE: &str = crate::config::DEFAULT_FEEDBACK_TOPIC;

/// Fills `{app}` and `{platform}` in a topic template.
pub fn feedback_topic(template: &str, app: &str, platform: Platform) -> String {
    template
        .replace("{app}", app)
        .replace("{platform}", platform.as_str())
}

/// Whether an outcome gets a feedback record: failures always, successes on request or when
/// the message carries a `notif_id` (the platform's results need every verdict).
pub fn should_report(outcome: &Outcome, include_success: bool, tracked: bool) -> bool {
    include_success || tracked || !outcome.is_delivered()
}

/// What the pipeline knows about a message when its outcome arrives.
#[derive(Debug, Clone, Default)]
pub struct MessageContext {
    /// The app ("game") the topic named.
    pub app: Arc<str>,
    pub token: String,
    /// The message's `metadata`, as consumed.
    pub metadata: Metadata,
    /// Legacy FCM asked to replace the token with this one (feedback `canonicalRegistrationId`).
    pub canonical_registration_id: Option<String>,
    /// Unix milliseconds at which the message was consumed (records give seconds as
    /// `timestamp`, the seed's field).
    pub consumed_at_ms: i64,
    /// This pusher's host name (the seed's `metadata.hostname`).
    /// Shared by every message: a copy each was an allocation per message.
    pub hostname: Arc<str>,
}

impl MessageContext {
    /// Unix seconds at which the message was consumed.
    pub fn consumed_at(&self) -> i64 {
        self.consumed_at_ms.div_euclid(1000)
    }

    /// The seed's feedback metadata: the message's own, plus game, deviceToken, hostname,
    /// timestamp, and `deleteToken: true` when the token is to be deleted.
    /// The record's metadata: the message's, with the seed's fields; for a message with a
    /// `notif_id`, also the outcome's class and reason (what `pusher results` stores).
    fn feedback_metadata(&self, outcome: &Outcome) -> Map<String, Value> {
        let delete_token = matches!(outcome, Outcome::TokenInvalid { .. });
        let mut m = self.metadata.to_map();
        if m.contains_key("notif_id") {
            m.insert("outcome".to_owned(), Value::from(outcome.class()));
            if let Some(reason) = outcome.reason() {
                m.insert("reason".to_owned(), Value::from(reason));
            }
            // The verdict's time for `pusher results`: a token registered again before it
            // is deleted, after it kept. In whole seconds, a registration earlier in the
            // same second looked newer and the dead token stayed (the welcome push after a
            // login is in that second).
            m.insert("consumedAtMs".to_owned(), Value::from(self.consumed_at_ms));
        }
        if let Some(canonical) = &self.canonical_registration_id {
            m.insert(
                "canonicalRegistrationId".to_owned(),
                Value::from(canonical.as_str()),
            );
        }
        m.insert("game".to_owned(), Value::from(&*self.app));
        m.insert("deviceToken".to_owned(), Value::from(self.token.as_str()));
        m.insert("hostname".to_owned(), Value::from(&*self.hostname));
        m.insert("timestamp".to_owned(), Value::from(self.consumed_at()));
        if delete_token {
            m.insert("deleteToken".to_owned(), Value::Bool(true));
        }
        // APNs' 410 says since when the token is invalid (Unix ms): a registration after that
        // moment is a new one, and `pusher results` keeps it (protocols.md §1: "honour the
        // timestamp").
        if let Outcome::TokenInvalid {
            timestamp_ms: Some(since),
            ..
        } = outcome
        {
            m.insert("invalidSince".to_owned(), Value::from(*since));
        }
        m
    }
}

/// What the feedback record of a push may need of its last answer (APNs' records carry all
/// of it; FCM's none).
#[derive(Debug, Clone, Default)]
pub struct SendDetails {
    /// The vendor's id for the request (APNs' `apns-id`: ours, or the one APNs returned).
    pub apns_id: String,
    /// The vendor's HTTP status; `None` when there was no response (expired, malformed,
    /// transport).
    pub status: Option<u16>,
    /// The payload as sent (`{"aps":..,"M":..}`), or as consumed when it was never sent.
    pub notification: Value,
    /// A web push service's `Location` for the delivered message.
    pub location: Option<String>,
}

/// The seed's `PushError`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PushError {
    #[serde(rename = "Key")]
    pub key: String,
    #[serde(rename = "Description")]
    pub description: String,
}

/// The seed's APNs feedback record (`structs.ResponseWithMetadata`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ApnsFeedback {
    #[serde(rename = "Sent")]
    pub sent: bool,
    #[serde(rename = "StatusCode")]
    pub status_code: u16,
    #[serde(rename = "Reason")]
    pub reason: String,
    #[serde(rename = "ApnsID")]
    pub apns_id: String,
    /// `null` on success, as Go's nil pointer.
    #[serde(rename = "Err")]
    pub err: Option<PushError>,
    #[serde(rename = "DeviceToken")]
    pub device_token: String,
    pub timestamp: i64,
    pub metadata: Map<String, Value>,
    #[serde(rename = "Notification")]
    pub notification: Value,
}

/// The seed's GCM/FCM feedback record (`FeedbackResponse`, with the legacy `metadata`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GcmFeedback {
    pub from: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_description: Option<String>,
    pub metadata: Map<String, Value>,
}

/// The web push feedback record (no seed had one): the subscription's endpoint, whether it
/// was delivered, the push service's status, the outcome's class and reason.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WebPushFeedback {
    pub endpoint: String,
    pub sent: bool,
    /// `None` when there was no answer (expired, malformed, transport).
    pub status: Option<u16>,
    pub outcome: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The push service's `Location` for a delivered message.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    pub timestamp: i64,
    pub metadata: Map<String, Value>,
}

/// A record for any platform.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum FeedbackRecord {
    Apns(ApnsFeedback),
    Gcm(GcmFeedback),
    WebPush(WebPushFeedback),
}

impl FeedbackRecord {
    pub fn to_json(&self) -> Vec<u8> {
        // Serializing plain structs and maps of JSON values cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// The device token: the record's Kafka key.
    pub fn token(&self) -> &str {
        match self {
            FeedbackRecord::Apns(r) => &r.device_token,
            FeedbackRecord::Gcm(r) => &r.from,
            FeedbackRecord::WebPush(r) => &r.endpoint,
        }
    }
}

/// The seed's `mapErrorReason`: APNs reason -> feedback/metric key. Reasons the seed did not
/// list (BadCollapseId, TooManyProviderTokenUpdates, new ones) are `unexpected`, as there.
pub fn apns_error_key(reason: &str) -> &'static str {
    match reason {
        "PayloadEmpty" => "payload-empty",
        "PayloadTooLarge" => "payload-too-large",
        "MissingDeviceToken" => "missing-device-token",
        "BadDeviceToken" => "bad-device-token",
        "TooManyRequests" => "too-many-requests",
        "BadMessageId" => "bad-message-id",
        "BadExpirationDate" => "bad-expiration-date",
        "BadPriority" => "bad-priority",
        "BadTopic" => "bad-topic",
        "BadCertificate" => "bad-certificate",
        "BadCertificateEnvironment" => "bad-certificate-environment",
        "Forbidden" => "forbidden",
        "MissingTopic" => "missing-topic",
        "TopicDisallowed" => "topic-disallowed",
        "Unregistered" => "unregistered",
        "DeviceTokenNotForTopic" => "device-token-not-for-topic",
        "DuplicateHeaders" => "duplicate-headers",
        "BadPath" => "bad-path",
        "MethodNotAllowed" => "method-not-allowed",
        "IdleTimeout" => "idle-timeout",
        "Shutdown" => "shutdown",
        "InternalServerError" => "internal-server-error",
        "ServiceUnavailable" => "service-unavailable",
        "ExpiredProviderToken" => "expired-provider-token",
        "InvalidProviderToken" => "invalid-provider-token",
        "MissingProviderToken" => "missing-provider-token",
        _ => "unexpected",
    }
}

/// The seed's `translateError`: FCM v1 error code (or legacy HTTP error) -> feedback key.
/// The listener deletes on DEVICE_UNREGISTERED and BAD_REGISTRATION.
pub fn gcm_error_key(reason: &str) -> &'static str {
    match reason {
        "UNREGISTERED" | "NotRegistered" => "DEVICE_UNREGISTERED",
        "InvalidRegistration" | "MissingRegistration" => "BAD_REGISTRATION",
        "INVALID_ARGUMENT" | "InvalidParameters" | "MessageTooBig" | "InvalidDataKey"
        | "InvalidTtl" => "INVALID_JSON",
        "SENDER_ID_MISMATCH" | "MismatchSenderId" => "SENDER_ID_MISMATCH",
        "QUOTA_EXCEEDED" | "DeviceMessageRateExceeded" | "TopicsMessageRateExceeded" => {
            "DEVICE_MESSAGE_RATE_EXCEEDED"
        }
        "UNAVAILABLE" | "Unavailable" => "UNAVAILABLE",
        "INTERNAL" | "InternalServerError" => "INTERNAL_SERVER_ERROR",
        "THIRD_PARTY_AUTH_ERROR" => "THIRD_PARTY_AUTH_ERROR",
        _ => "UNKNOWN",
    }
}

/// The seed's error text for a push past its `push_expiry`.
const EXPIRED_TEXT: &str = "push message has expired";

/// Builds the APNs record for an outcome.
pub fn apns_record(outcome: &Outcome, ctx: &MessageContext, apns: &SendDetails) -> ApnsFeedback {
    let reason = outcome.reason().unwrap_or_default().to_owned();
    let status_code = apns.status.unwrap_or(match outcome {
        Outcome::Delivered => 200,
        Outcome::TokenInvalid { reason, .. }
        | Outcome::Rejected { reason }
        | Outcome::GaveUp { reason } => crate::push::apns::ApnsReason::parse(reason).status(),
        // Never sent: no status, as a Go zero value.
        Outcome::Expired | Outcome::Malformed { .. } => 0,
    });
    let err = match outcome {
        Outcome::Delivered => None,
        Outcome::Expired => Some(PushError {
            key: "push-expired".to_owned(),
            description: EXPIRED_TEXT.to_owned(),
        }),
        Outcome::Malformed { reason } => Some(PushError {
            key: "malformed-message".to_owned(),
            description: reason.clone(),
        }),
        Outcome::TokenInvalid { reason, .. }
        | Outcome::Rejected { reason }
        | Outcome::GaveUp { reason } => Some(PushError {
            key: apns_error_key(reason).to_owned(),
            description: reason.clone(),
        }),
    };
    ApnsFeedback {
        sent: outcome.is_delivered(),
        status_code,
        reason,
        apns_id: apns.apns_id.clone(),
        err,
        device_token: ctx.token.clone(),
        timestamp: ctx.consumed_at(),
        metadata: ctx.feedback_metadata(outcome),
        notification: apns.notification.clone(),
    }
}

/// Builds the GCM record for an outcome.
pub fn gcm_record(outcome: &Outcome, ctx: &MessageContext) -> GcmFeedback {
    let (error, description) = match outcome {
        Outcome::Delivered => (None, None),
        Outcome::Expired => (Some("PUSH_EXPIRED"), Some(EXPIRED_TEXT.to_owned())),
        Outcome::Malformed { reason } => (Some("INVALID_JSON"), Some(reason.clone())),
        Outcome::TokenInvalid { reason, .. } => {
            // Whatever the vendor's words, a token we delete must carry a key the seed's
            // listener deletes on.
            let key = match gcm_error_key(reason) {
                key @ ("DEVICE_UNREGISTERED" | "BAD_REGISTRATION") => key,
                _ => "BAD_REGISTRATION",
            };
            (Some(key), Some(reason.clone()))
        }
        Outcome::Rejected { reason } | Outcome::GaveUp { reason } => {
            (Some(gcm_error_key(reason)), Some(reason.clone()))
        }
    };
    GcmFeedback {
        from: ctx.token.clone(),
        error: error.map(str::to_owned),
        error_description: description,
        metadata: ctx.feedback_metadata(outcome),
    }
}

/// Builds the web push record for an outcome.
pub fn webpush_record(
    outcome: &Outcome,
    ctx: &MessageContext,
    details: &SendDetails,
) -> WebPushFeedback {
    WebPushFeedback {
        endpoint: ctx.token.clone(),
        sent: outcome.is_delivered(),
        status: details.status,
        outcome: outcome.class(),
        reason: outcome.reason().map(str::to_owned),
        location: details.location.clone(),
        timestamp: ctx.consumed_at(),
        metadata: ctx.feedback_metadata(outcome),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FeedbackError {
    #[error("feedback.kafka: cannot create the producer: {0}")]
    Create(rdkafka::error::KafkaError),
    #[error("feedback to {topic}: not acknowledged: {source}")]
    Delivery {
        topic: String,
        #[source]
        source: rdkafka::error::KafkaError,
    },
}

/// Produces feedback records; key = device token.
pub struct FeedbackProducer {
    producer: FutureProducer<QuietProducerContext>,
    template: String,
}

impl std::fmt::Debug for FeedbackProducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FeedbackProducer")
            .field("template", &self.template)
            .finish_non_exhaustive()
    }
}

impl FeedbackProducer {
    /// `brokers`: comma-separated bootstrap list; `template`: e.g. [`DEFAULT_TOPIC_TEMPLATE`].
    pub fn new(brokers: &str, template: &str) -> Result<Self, FeedbackError> {
        Self::with_config(brokers, template, &[])
    }

    /// As [`FeedbackProducer::new`], with extra librdkafka settings applied last.
    pub fn with_config(
        brokers: &str,
        template: &str,
        extra: &[(&str, &str)],
    ) -> Result<Self, FeedbackError> {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", brokers)
            // Acknowledged by all in-sync replicas, without duplicates from internal retries:
            // the offset commit that follows relies on it.
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("linger.ms", "5")
            // librdkafka keeps retrying a record this long (a broker restart), then fails it.
            .set("message.timeout.ms", "120000");
        for (key, value) in extra {
            config.set(*key, *value);
        }
        let producer = config
            .create_with_context(QuietProducerContext::default())
            .map_err(FeedbackError::Create)?;
        Ok(FeedbackProducer {
            producer,
            template: template.to_owned(),
        })
    }

    pub fn from_config(cfg: &crate::config::FeedbackKafkaConfig) -> Result<Self, FeedbackError> {
        Self::new(&cfg.brokers, cfg.topic_template())
    }

    pub fn topic(&self, app: &str, platform: Platform) -> String {
        feedback_topic(&self.template, app, platform)
    }

    /// Produces one record and waits for the broker's acknowledgement.
    pub async fn send(
        &self,
        app: &str,
        platform: Platform,
        record: &FeedbackRecord,
    ) -> Result<(), FeedbackError> {
        let topic = self.topic(app, platform);
        let payload = record.to_json();
        let kafka_record = FutureRecord::to(&topic)
            .key(record.token())
            .payload(&payload);
        // Waiting for room in a full local queue is backpressure, not a failure.
        self.producer
            .send(kafka_record, Timeout::Never)
            .await
            .map(|_| ())
            .map_err(|(source, _)| FeedbackError::Delivery { topic, source })
    }

    /// Waits for every record in flight (shutdown).
    pub fn flush(&self, timeout: Duration) -> Result<(), FeedbackError> {
        use rdkafka::producer::Producer;
        self.producer
            .flush(timeout)
            .map_err(|source| FeedbackError::Delivery {
                topic: self.template.clone(),
                source,
            })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ctx() -> MessageContext {
        MessageContext {
            app: "game".into(),
            token: "abc".to_owned(),
            metadata: json!({"jobId": "j1"})
                .as_object()
                .map(Metadata::from)
                .unwrap_or_default(),
            consumed_at_ms: 1_731_000_000_000,
            hostname: "pod-1".into(),
            canonical_registration_id: None,
        }
    }

    /// A tracked message's record carries when it was consumed to the millisecond beside the
    /// seed's seconds (`pusher results` reads it: `platform::results`' tests).
    #[test]
    fn a_tracked_record_keeps_its_milliseconds() {
        let mut ctx = ctx();
        ctx.consumed_at_ms = 1_731_000_000_750;
        ctx.metadata = json!({"notif_id": "n-1"})
            .as_object()
            .map(Metadata::from)
            .unwrap_or_default();
        let record = FeedbackRecord::Gcm(gcm_record(&Outcome::Delivered, &ctx));
        let value: Value = serde_json::from_slice(&record.to_json()).unwrap();
        assert_eq!(value["metadata"]["timestamp"], 1_731_000_000);
        assert_eq!(value["metadata"]["consumedAtMs"], 1_731_000_000_750_i64);
    }

    #[test]
    fn apns_unregistered_is_the_seed_record() {
        let outcome = Outcome::TokenInvalid {
            reason: "Unregistered".to_owned(),
            timestamp_ms: Some(1),
        };
        let details = SendDetails {
            apns_id: "id-1".to_owned(),
            status: Some(410),
            notification: json!({"aps": {"alert": "hi"}, "M": {"jobId": "j1"}}),
            location: None,
        };
        let record = FeedbackRecord::Apns(apns_record(&outcome, &ctx(), &details));
        let text = String::from_utf8(record.to_json()).unwrap();
        assert!(
            text.starts_with(r#"{"Sent":false,"StatusCode":410,"Reason":"Unregistered","ApnsID":"id-1","Err":{"Key":"unregistered","Description":"Unregistered"},"DeviceToken":"abc","timestamp":1731000000,"metadata":"#),
            "{text}"
        );
        let value: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            value["metadata"],
            json!({"jobId":"j1","game":"game","deviceToken":"abc","hostname":"pod-1","timestamp":1731000000,"deleteToken":true,"invalidSince":1})
        );
        assert_eq!(
            value["Notification"],
            json!({"aps": {"alert": "hi"}, "M": {"jobId": "j1"}})
        );
    }

    #[test]
    fn apns_keys_and_statuses() {
        let details = SendDetails::default();
        let delivered = apns_record(&Outcome::Delivered, &ctx(), &details);
        assert!(delivered.sent && delivered.err.is_none() && delivered.status_code == 200);
        assert!(!delivered.metadata.contains_key("deleteToken"));
        let rejected = apns_record(
            &Outcome::Rejected {
                reason: "BadTopic".to_owned(),
            },
            &ctx(),
            &details,
        );
        assert_eq!(
            (rejected.status_code, rejected.err.unwrap().key.as_str()),
            (400, "bad-topic")
        );
        let odd = apns_record(
            &Outcome::Rejected {
                reason: "BadCollapseId".to_owned(),
            },
            &ctx(),
            &details,
        );
        assert_eq!(odd.err.unwrap().key, "unexpected", "as the seed");
        let expired = apns_record(&Outcome::Expired, &ctx(), &details);
        assert_eq!(expired.status_code, 0);
        assert_eq!(expired.err.unwrap().description, "push message has expired");
        let gave_up = apns_record(
            &Outcome::GaveUp {
                reason: "TooManyRequests".to_owned(),
            },
            &ctx(),
            &details,
        );
        assert_eq!(
            (gave_up.status_code, gave_up.err.unwrap().key.as_str()),
            (429, "too-many-requests")
        );
    }

    #[test]
    fn gcm_records() {
        let unregistered = gcm_record(
            &Outcome::TokenInvalid {
                reason: "UNREGISTERED".to_owned(),
                timestamp_ms: None,
            },
            &ctx(),
        );
        let value = serde_json::to_value(FeedbackRecord::Gcm(unregistered)).unwrap();
        assert_eq!(
            value,
            json!({"from":"abc","error":"DEVICE_UNREGISTERED","error_description":"UNREGISTERED",
                   "metadata":{"jobId":"j1","game":"game","deviceToken":"abc","hostname":"pod-1","timestamp":1731000000,"deleteToken":true}})
        );
        let legacy = gcm_record(
            &Outcome::TokenInvalid {
                reason: "InvalidRegistration".to_owned(),
                timestamp_ms: None,
            },
            &ctx(),
        );
        assert_eq!(legacy.error.as_deref(), Some("BAD_REGISTRATION"));
        let quota = gcm_record(
            &Outcome::GaveUp {
                reason: "QUOTA_EXCEEDED".to_owned(),
            },
            &ctx(),
        );
        assert_eq!(quota.error.as_deref(), Some("DEVICE_MESSAGE_RATE_EXCEEDED"));
        let ok = serde_json::to_value(gcm_record(&Outcome::Delivered, &ctx())).unwrap();
        assert!(ok.get("error").is_none() && ok["from"] == "abc");
    }

    #[test]
    fn topics_and_reporting() {
        assert_eq!(
            feedback_topic(DEFAULT_TOPIC_TEMPLATE, "game", Platform::Gcm),
            "push-game-gcm-feedbacks"
        );
        assert!(!should_report(&Outcome::Delivered, false, false));
        assert!(should_report(&Outcome::Delivered, true, false));
        assert!(should_report(&Outcome::Delivered, false, true));
        assert!(should_report(&Outcome::Expired, false, false));
    }
}
