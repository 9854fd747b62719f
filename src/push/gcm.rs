//! GCM / FCM push requests as they arrive from Kafka (DESIGN.md §4, anchors §1.4): the seed's
//! legacy GCM fields, typed, or an FCM HTTP v1 envelope kept as is. Parsing is in
//! `push::message::parse_gcm`.

use serde::Deserialize;
use serde_json::{Map, Value};

/// Largest `data` + `notification` FCM accepts, in bytes.
pub const MAX_PAYLOAD: usize = 4096;
/// The same for a message to a topic or a condition (protocols.md §2.2).
pub const MAX_TOPIC_PAYLOAD: usize = 2048;

/// The payload limit of a message to a topic or condition (`topic`), or to one device.
pub fn payload_limit(topic: bool) -> usize {
    if topic {
        MAX_TOPIC_PAYLOAD
    } else {
        MAX_PAYLOAD
    }
}

/// True for a legacy `to` that addresses a topic (`/topics/<name>`), not a device.
pub fn is_topic_address(to: &str) -> bool {
    to.starts_with("/topics/")
}

/// True for a `data` key FCM reserves and refuses (400 INVALID_ARGUMENT; legacy
/// `InvalidDataKey`): `from`, `message_type`, and any key starting `google.` or
/// `gcm.notification.` (protocols.md §2.2). Matched as written: FCM's keys are
/// case-sensitive, and refusing a key FCM takes would lose the push.
pub fn reserved_data_key(key: &str) -> bool {
    matches!(key, "from" | "message_type")
        || key.starts_with("google.")
        || key.starts_with("gcm.notification.")
}

/// One GCM push request from Kafka.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct GcmMessage {
    /// The registration token (`to`; for a v1 envelope, `message.token` or `message.fid`).
    pub to: String,
    pub message_id: Option<String>,
    pub message_type: Option<String>,
    pub collapse_key: Option<String>,
    /// `"high"` or `"normal"` as sent (not checked here: FCM gives the verdict).
    pub priority: Option<String>,
    pub content_available: Option<bool>,
    /// The legacy API's: an iPhone's notification service extension may change it.
    pub mutable_content: Option<bool>,
    /// Seconds.
    pub time_to_live: Option<u32>,
    pub delivery_receipt_requested: Option<bool>,
    /// The Android package the token must belong to (v1 `android.restricted_package_name`).
    pub restricted_package_name: Option<String>,
    /// Validate only, do not deliver (v1 `validate_only`). The seed ignored it; we honour it.
    pub dry_run: bool,
    pub notification: Option<GcmNotification>,
    /// `data` with `metadata` merged in (keys already in `data` win). Non-string values are
    /// kept; the FCM sender JSON-encodes them, as FCM takes only strings.
    pub data: Map<String, Value>,
    pub metadata: super::message::Metadata,
    /// Unix milliseconds; 0 = never expires.
    pub push_expiry: i64,
    /// Set when the Kafka message was an FCM v1 envelope `{"message":{...}}`: the `message`
    /// object, byte for byte, to be sent as is. Then only `to`, `dry_run`, `metadata` and
    /// `push_expiry` above are filled.
    pub v1_message: Option<bytes::Bytes>,
}

/// The legacy `notification` object. Field names as the legacy GCM API and the seed.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(default)]
pub struct GcmNotification {
    pub title: Option<String>,
    pub body: Option<String>,
    pub sound: Option<String>,
    pub click_action: Option<String>,
    pub body_loc_key: Option<String>,
    #[serde(deserialize_with = "loc_args")]
    pub body_loc_args: Option<Vec<String>>,
    pub title_loc_key: Option<String>,
    #[serde(deserialize_with = "loc_args")]
    pub title_loc_args: Option<Vec<String>>,
    pub image_url: Option<String>,
    /// The legacy API's name for `image_url` (the seed's); `image_url` wins when both are set.
    pub image: Option<String>,
    /// Android 8+'s notification channel (v1 `android.notification.channel_id`): without it
    /// the push lands in the app's default channel.
    pub android_channel_id: Option<String>,
    pub icon: Option<String>,
    pub tag: Option<String>,
    pub color: Option<String>,
    /// A string in the legacy API; a number is accepted and kept as its text.
    #[serde(deserialize_with = "string_or_number")]
    pub badge: Option<String>,
}

/// Legacy GCM documents `*_loc_args` as "JSON array as string"; producers send either that or
/// a real array.
fn loc_args<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        List(Vec<String>),
        Text(String),
    }
    Ok(match Option::<Either>::deserialize(d)? {
        None => None,
        Some(Either::List(v)) => Some(v),
        Some(Either::Text(s)) => Some(serde_json::from_str(&s).unwrap_or_else(|_| vec![s])),
    })
}

fn string_or_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(match Option::<Value>::deserialize(d)? {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s),
        Some(Value::Number(n)) => Some(n.to_string()),
        Some(other) => {
            return Err(serde::de::Error::custom(format!(
                "expected a string or a number, got {other}"
            )))
        }
    })
}
