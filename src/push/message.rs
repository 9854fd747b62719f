//! Parsing of the Kafka message values into pushes (DESIGN.md §4). Pure: bytes in, a typed
//! message or a `MessageError` with a stable `reason()` label out.
//!
//! Keys of the Kafka message are matched ASCII-case-insensitively, as the seed's Go decoder did
//! (`deviceToken` works). Nested objects the sender passes on (`Payload`, the v1 `message`) are
//! kept as the producer wrote them: they are borrowed as `RawValue`s and copied, not parsed
//! into a tree and serialised again (this is the pipeline's hot path).

use super::apns::{self, ApnsNotification, PushType};
use super::gcm::{self, GcmMessage, GcmNotification};
use super::webpush::{self, Subscription, WebPushMessage};
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use std::borrow::Cow;
use std::collections::HashSet;
use std::time::Duration;

/// The largest Kafka message value parsed. A push payload is at most 5 KB (APNs VoIP; 4 KB
/// otherwise, and for FCM), metadata included, so anything this big can never be sent: it is
/// refused before parsing, and the pipeline copies no more than this of it (in-flight memory
/// stays bounded whatever the topic holds).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// What the pipeline keeps of a message value: at most one byte over the limit, enough for
/// the parser to refuse it as too large.
pub fn bounded_copy(bytes: &[u8]) -> Vec<u8> {
    bytes[..bytes.len().min(MAX_MESSAGE_BYTES + 1)].to_vec()
}

/// An APNs push request from Kafka.
#[derive(Debug, Clone, PartialEq)]
pub struct ApnsMessage {
    /// Token, headers, and the payload with `metadata` merged into `Payload.M`.
    pub notification: ApnsNotification,
    pub metadata: Metadata,
    /// Unix milliseconds; 0 = never expires.
    pub push_expiry: i64,
}

/// A message's `metadata` object as the producer wrote it: checked to be an object, but not
/// parsed into a tree. Only feedback records need the tree, and most pushes get none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Metadata(Option<Box<str>>);

impl Metadata {
    pub fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    /// True when the message carries a `notif_id` (the platform tracks its result). A text
    /// search first: most messages have none, and they are not parsed for it.
    pub fn has_notif_id(&self) -> bool {
        self.0
            .as_deref()
            .is_some_and(|text| text.contains("notif_id") && self.to_map().contains_key("notif_id"))
    }

    /// The metadata as a JSON map (empty when there is none).
    pub fn to_map(&self) -> Map<String, Value> {
        // The text was checked to be an object when the message was parsed.
        self.0
            .as_deref()
            .and_then(|text| serde_json::from_str(text).ok())
            .unwrap_or_default()
    }
}

impl From<&Map<String, Value>> for Metadata {
    fn from(map: &Map<String, Value>) -> Metadata {
        if map.is_empty() {
            return Metadata(None);
        }
        Metadata(serde_json::to_string(map).ok().map(String::into_boxed_str))
    }
}

/// Why a Kafka message cannot become a push. `reason()` is the label used in feedback and
/// metrics; it never changes for a variant.
#[derive(Debug, thiserror::Error)]
pub enum MessageError {
    #[error("message is not valid UTF-8 (bad byte at offset {0})")]
    NotUtf8(usize),
    #[error("message is not valid JSON: {0}")]
    InvalidJson(#[source] serde_json::Error),
    #[error("message has no device token (field {0:?} missing or empty)")]
    NoToken(&'static str),
    #[error("message has no {0:?}")]
    MissingField(&'static str),
    #[error("field {field:?} has the wrong type: expected {expected}")]
    WrongType {
        field: &'static str,
        expected: &'static str,
    },
    #[error("field {field:?} is invalid: {detail}")]
    InvalidValue { field: &'static str, detail: String },
    #[error("payload is {size} bytes, over the limit of {limit}")]
    PayloadTooLarge { size: usize, limit: usize },
    #[error("message is over the limit of {MAX_MESSAGE_BYTES} bytes")]
    MessageTooLarge,
    #[error(
        "key {key:?} in {field} is reserved by FCM (from, message_type, google.*, gcm.notification.*)"
    )]
    ReservedDataKey { key: String, field: &'static str },
}

impl MessageError {
    /// Short stable label for feedback records and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            MessageError::NotUtf8(_) => "not_utf8",
            MessageError::InvalidJson(_) => "invalid_json",
            MessageError::NoToken(_) => "no_token",
            MessageError::MissingField(_) => "missing_field",
            MessageError::WrongType { .. } => "wrong_type",
            MessageError::InvalidValue { .. } => "invalid_value",
            MessageError::PayloadTooLarge { .. } => "payload_too_large",
            MessageError::MessageTooLarge => "message_too_large",
            MessageError::ReservedDataKey { .. } => "reserved_data_key",
        }
    }
}

/// The device token of a message the parser refused, when one can still be read (a top-level
/// string `DeviceToken` for APNs, `to`, `message.token` or `message.fid` for GCM), so its
/// feedback record names the device. Only for refused messages: it parses the whole value
/// again.
pub fn token_hint(bytes: &[u8], apns: bool) -> Option<String> {
    if bytes.len() > MAX_MESSAGE_BYTES {
        return None;
    }
    let value: Value = serde_json::from_slice(bytes).ok()?;
    let object = value.as_object()?;
    let field = |name: &str| {
        object
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| v.as_str())
    };
    let token = if apns {
        field("DeviceToken")
    } else {
        field("to").or_else(|| {
            let message = object.get("message")?;
            message
                .get("token")
                .or_else(|| message.get("fid"))
                .and_then(Value::as_str)
        })
    }?;
    // A token, not an arbitrary string: bounded and printable.
    (!token.is_empty() && token.len() <= 4096 && !token.chars().any(char::is_control))
        .then(|| token.to_string())
}

/// The top-level `metadata` object of a message the parser refused, when one can still be
/// read, so that its feedback record carries the message's `notif_id` (and `pusher results`
/// stores a verdict that completes the notification) as the token is recovered by
/// [`token_hint`]. Empty for a value over [`MAX_MESSAGE_BYTES`], not JSON, or whose `metadata`
/// is no object. Only for refused messages: it parses the whole value again.
pub fn metadata_hint(bytes: &[u8]) -> Metadata {
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Metadata::default();
    }
    let Ok(Value::Object(object)) = serde_json::from_slice::<Value>(bytes) else {
        return Metadata::default();
    };
    // The key is matched as the parsers match it: ignoring case.
    object
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("metadata"))
        .and_then(|(_, v)| v.as_object())
        .map(Metadata::from)
        .unwrap_or_default()
}

/// True when the message carries an expiry (`push_expiry` > 0, Unix ms) that is already past
/// at `now` (time since the Unix epoch, e.g. `Clock::now()`).
pub fn is_expired(push_expiry_ms: i64, now: Duration) -> bool {
    push_expiry_ms > 0 && (push_expiry_ms as u128) < now.as_millis()
}

/// Parses an APNs Kafka message: `{"DeviceToken","Payload","metadata","push_expiry",
/// "collapse_id","push_type","priority","expiration","topic"}`; other keys are ignored.
pub fn parse_apns(bytes: &[u8]) -> Result<ApnsMessage, MessageError> {
    let entries = top_object(bytes)?;
    let mut token: Option<String> = None;
    let mut payload: Option<&RawValue> = None;
    // Parsed once: checked here, merged into `Payload.M` below.
    let mut metadata: Option<(&RawValue, Members)> = None;
    let mut push_expiry = 0;
    let mut collapse_id: Option<String> = None;
    let mut push_type: Option<PushType> = None;
    let mut priority: Option<u8> = None;
    let mut expiration: Option<u64> = None;
    let mut topic: Option<String> = None;

    for (key, raw) in &entries.0 {
        let key = key.as_ref();
        if key.eq_ignore_ascii_case("DeviceToken") {
            token = typed("DeviceToken", "a string", raw)?;
        } else if key.eq_ignore_ascii_case("Payload") {
            payload = (raw.get() != "null").then_some(*raw);
        } else if key.eq_ignore_ascii_case("metadata") {
            metadata = typed::<Option<Members>>("metadata", "an object", raw)?
                .filter(|m| !m.0.is_empty())
                .map(|m| (*raw, m));
        } else if key.eq_ignore_ascii_case("push_expiry") {
            push_expiry =
                typed::<Option<i64>>("push_expiry", "an integer (Unix ms)", raw)?.unwrap_or(0);
        } else if key.eq_ignore_ascii_case("collapse_id") {
            collapse_id = typed("collapse_id", "a string", raw)?;
        } else if key.eq_ignore_ascii_case("push_type") {
            let name: Option<String> = typed("push_type", "a string", raw)?;
            push_type = match name {
                None => None,
                Some(name) => {
                    Some(
                        PushType::parse(&name).ok_or_else(|| MessageError::InvalidValue {
                            field: "push_type",
                            detail: format!("unknown push type {name:?}"),
                        })?,
                    )
                }
            };
        } else if key.eq_ignore_ascii_case("priority") {
            priority = typed("priority", "an integer (10, 5 or 1)", raw)?;
        } else if key.eq_ignore_ascii_case("expiration") {
            expiration = typed("expiration", "an unsigned integer (Unix s)", raw)?;
        } else if key.eq_ignore_ascii_case("topic") {
            topic = typed("topic", "a string", raw)?;
        }
    }

    let token = token
        .filter(|t| !t.is_empty())
        .ok_or(MessageError::NoToken("DeviceToken"))?;
    let payload = payload.ok_or(MessageError::MissingField("Payload"))?;
    if let Some(p) = priority.filter(|p| !apns::valid_priority(*p)) {
        return Err(MessageError::InvalidValue {
            field: "priority",
            detail: format!("{p} is not 10, 5 or 1"),
        });
    }
    if let Some(id) = collapse_id
        .as_ref()
        .filter(|id| id.len() > apns::MAX_COLLAPSE_ID)
    {
        return Err(MessageError::InvalidValue {
            field: "collapse_id",
            detail: format!(
                "{} bytes, over the limit of {}",
                id.len(),
                apns::MAX_COLLAPSE_ID
            ),
        });
    }
    // A push type that needs a topic suffix sent to a topic without it: APNs would answer
    // `DeviceTokenNotForTopic`, which reads as a dead token and deletes a good one.
    if let (Some(topic), Some(push_type)) = (&topic, push_type) {
        if let Some(suffix) = push_type.topic_suffix().filter(|s| !topic.ends_with(s)) {
            return Err(MessageError::InvalidValue {
                field: "topic",
                detail: format!(
                    "does not end with {suffix:?}, which a {} push needs",
                    push_type.as_str()
                ),
            });
        }
    }
    let payload = merge_metadata_into_payload(payload, metadata.as_ref().map(|(_, m)| m))?;
    let limit = apns::payload_limit(push_type);
    if payload.len() > limit {
        return Err(MessageError::PayloadTooLarge {
            size: payload.len(),
            limit,
        });
    }

    // Past `push_expiry` the pusher drops the message (`Expired`); APNs must not keep it
    // longer either: without this, APNs stored an undelivered one past it (up to 30 days
    // with a later `expiration`). An `expiration` of 0 (deliver once, never store) stays.
    let expiration = match (expiration, u64::try_from(push_expiry).unwrap_or(0)) {
        (e, 0) => e,
        (Some(0), _) => Some(0),
        (e, ms) => Some(e.map_or(ms.div_ceil(1000), |e| e.min(ms.div_ceil(1000)))),
    };
    Ok(ApnsMessage {
        notification: ApnsNotification {
            token,
            topic,
            push_type,
            priority,
            expiration,
            collapse_id,
            apns_id: None,
            payload: payload.into(),
        },
        metadata: Metadata(metadata.map(|(raw, _)| raw.get().into())),
        push_expiry,
    })
}

/// Parses a GCM Kafka message: the seed's legacy fields (`to`, `notification`, `data`, ...),
/// or an FCM v1 envelope `{"message":{...}}` kept as is.
pub fn parse_gcm(bytes: &[u8]) -> Result<GcmMessage, MessageError> {
    let entries = top_object(bytes)?;
    let mut msg = GcmMessage::default();
    let mut v1_message: Option<&RawValue> = None;
    // Bytes of data + notification as the producer wrote them, for the size limit.
    let mut payload_size = 0;
    let mut metadata_size = 0;
    let mut metadata = Map::new();

    for (key, raw) in &entries.0 {
        let key = key.as_ref();
        let is = |name: &str| key.eq_ignore_ascii_case(name);
        if is("to") {
            msg.to = typed::<Option<String>>("to", "a string", raw)?.unwrap_or_default();
        } else if is("message") {
            v1_message = (raw.get() != "null").then_some(*raw);
        } else if is("data") {
            msg.data = typed::<Option<_>>("data", "an object", raw)?.unwrap_or_default();
            payload_size += raw.get().len();
        } else if is("notification") {
            msg.notification =
                typed::<Option<GcmNotification>>("notification", "an object of strings", raw)?;
            payload_size += raw.get().len();
        } else if is("metadata") {
            metadata = typed::<Option<_>>("metadata", "an object", raw)?.unwrap_or_default();
            msg.metadata = Metadata((!metadata.is_empty()).then(|| raw.get().into()));
            metadata_size = raw.get().len();
        } else if is("push_expiry") {
            msg.push_expiry =
                typed::<Option<i64>>("push_expiry", "an integer (Unix ms)", raw)?.unwrap_or(0);
        } else if is("dry_run") || is("validate_only") {
            msg.dry_run |= typed::<Option<bool>>("dry_run", "a boolean", raw)?.unwrap_or(false);
        } else if is("time_to_live") {
            msg.time_to_live = typed("time_to_live", "an unsigned integer (seconds)", raw)?;
        } else if is("collapse_key") {
            msg.collapse_key = typed("collapse_key", "a string", raw)?;
        } else if is("priority") {
            msg.priority = typed("priority", "a string", raw)?;
        } else if is("message_id") {
            msg.message_id = typed("message_id", "a string", raw)?;
        } else if is("message_type") {
            msg.message_type = typed("message_type", "a string", raw)?;
        } else if is("content_available") {
            msg.content_available = typed("content_available", "a boolean", raw)?;
        } else if is("mutable_content") {
            msg.mutable_content = typed("mutable_content", "a boolean", raw)?;
        } else if is("delivery_receipt_requested") {
            msg.delivery_receipt_requested = typed("delivery_receipt_requested", "a boolean", raw)?;
        } else if is("restricted_package_name") {
            msg.restricted_package_name = typed("restricted_package_name", "a string", raw)?;
        }
    }

    if let Some(message) = v1_message {
        let inner = object("message", message)?;
        // FCM takes exactly one target (a protobuf oneof). Its refusal of two reads like a
        // bad token to a classifier and would delete a good one: refused here, as the
        // message's fault.
        let set: Vec<&str> = ["token", "fid", "topic", "condition"]
            .into_iter()
            .filter(|name| {
                inner
                    .0
                    .iter()
                    .any(|(k, raw)| k.as_ref() == *name && raw.get() != "null")
            })
            .collect();
        if set.len() > 1 {
            return Err(MessageError::InvalidValue {
                field: "message",
                detail: format!(
                    "{} are all set; FCM takes exactly one target",
                    set.join(" and ")
                ),
            });
        }
        // The device target: `token`, or `fid` (a Firebase Installation ID, which FCM now
        // prefers). Either is the device's key for feedback and token deletion.
        let target = |name: &str, field: &'static str| -> Result<Option<String>, MessageError> {
            match inner.0.iter().find(|(k, _)| k.as_ref() == name) {
                Some((_, raw)) => {
                    Ok(typed::<Option<String>>(field, "a string", raw)?.filter(|t| !t.is_empty()))
                }
                None => Ok(None),
            }
        };
        msg.to = match target("token", "message.token")? {
            Some(token) => token,
            None => target("fid", "message.fid")?.ok_or(MessageError::NoToken("message.token"))?,
        };
        msg.v1_message = Some(bytes::Bytes::copy_from_slice(message.get().as_bytes()));
        return Ok(msg);
    }

    if msg.to.is_empty() {
        return Err(MessageError::NoToken("to"));
    }
    // FCM refuses the whole message for a reserved data key: refused here, naming it.
    if let Some(key) = msg.data.keys().find(|k| gcm::reserved_data_key(k)) {
        return Err(MessageError::ReservedDataKey {
            key: key.clone(),
            field: "data",
        });
    }
    // Metadata goes into data, as the seed did; keys already in data win. Its size counts as
    // written by the producer (an upper bound when keys overlap; no re-serialising). A
    // reserved key in it refuses the message too: the producer wrote it, and dropping it
    // would hide that from them.
    let mut merged = false;
    for (k, v) in metadata {
        if !msg.data.contains_key(&k) {
            if gcm::reserved_data_key(&k) {
                return Err(MessageError::ReservedDataKey {
                    key: k,
                    field: "metadata (merged into data)",
                });
            }
            msg.data.insert(k, v);
            merged = true;
        }
    }
    if merged {
        payload_size += metadata_size;
    }
    // A topic message has half a device message's room.
    let limit = gcm::payload_limit(gcm::is_topic_address(&msg.to));
    if payload_size > limit {
        return Err(MessageError::PayloadTooLarge {
            size: payload_size,
            limit,
        });
    }
    Ok(msg)
}

/// Copies `metadata` into `Payload.M` (keys already in `M` win) and returns the payload bytes.
/// Nothing is parsed into a tree: members are copied byte for byte (this is the pipeline's hot
/// path), and a key repeated in `metadata` keeps its last value, as a JSON map would.
fn merge_metadata_into_payload(
    payload: &RawValue,
    metadata: Option<&Members>,
) -> Result<Vec<u8>, MessageError> {
    let text = payload.get();
    // The raw value is valid JSON already; an object is the one kind that starts with '{'.
    if !text.starts_with('{') {
        return Err(MessageError::WrongType {
            field: "Payload",
            expected: "an object",
        });
    }
    let Some(metadata) = metadata else {
        return Ok(text.as_bytes().to_vec());
    };
    // Most payloads have no `M`: then `"M":{metadata}` goes before the closing brace, and the
    // payload is not parsed again. A key can only be `M` when the text holds `"M"` or an
    // escape (`"\u004d"`); either sends it the long way.
    static M_KEY: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(br#""M""#));
    if M_KEY.find(text.as_bytes()).is_none() && memchr::memchr(b'\\', text.as_bytes()).is_none() {
        let body = text[1..text.len() - 1].trim_ascii();
        let mut out = Vec::with_capacity(text.len() + 128);
        out.push(b'{');
        if !body.is_empty() {
            out.extend_from_slice(body.as_bytes());
            out.push(b',');
        }
        out.extend_from_slice(b"\"M\":");
        write_merged(&mut out, None, metadata)?;
        out.push(b'}');
        return Ok(out);
    }
    let members = object("Payload", payload)?;
    let mut out = Vec::with_capacity(payload.get().len() + 128);
    out.push(b'{');
    let mut merged = false;
    for (i, (key, raw)) in members.0.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_key(&mut out, key)?;
        out.push(b':');
        if key.as_ref() == "M" && !merged {
            let m = typed::<Option<Members>>("Payload.M", "an object", raw)?;
            write_merged(&mut out, m.as_ref(), metadata)?;
            merged = true;
        } else {
            out.extend_from_slice(raw.get().as_bytes());
        }
    }
    if !merged {
        if !members.0.is_empty() {
            out.push(b',');
        }
        out.extend_from_slice(b"\"M\":");
        write_merged(&mut out, None, metadata)?;
    }
    out.push(b'}');
    Ok(out)
}

/// Writes `M`'s own members, then those of `metadata` whose key `M` does not have (a key
/// repeated in `metadata` keeps its last value).
fn write_merged(
    out: &mut Vec<u8>,
    m: Option<&Members>,
    metadata: &Members,
) -> Result<(), MessageError> {
    let own = m.map(|m| m.0.as_slice()).unwrap_or_default();
    let meta = metadata.0.as_slice();
    // A metadata member is kept unless `M` has its key or a later member repeats it (the last
    // of a repeated key wins). A few keys, the usual case, are compared directly; many (a
    // 64 KiB message can hold thousands) go through a set, walking `metadata` backwards.
    let keep: Vec<bool> = if own.len() + meta.len() <= 16 {
        let has = |members: &[(Cow<str>, &RawValue)], key: &str| {
            members.iter().any(|(k, _)| k.as_ref() == key)
        };
        (0..meta.len())
            .map(|i| {
                let key = meta[i].0.as_ref();
                !has(own, key) && !has(&meta[i + 1..], key)
            })
            .collect()
    } else {
        let mut seen: HashSet<&str> = own.iter().map(|(k, _)| k.as_ref()).collect();
        let mut keep = vec![false; meta.len()];
        for (i, (key, _)) in meta.iter().enumerate().rev() {
            keep[i] = seen.insert(key.as_ref());
        }
        keep
    };
    let extra = meta
        .iter()
        .zip(keep)
        .filter_map(|(member, k)| k.then_some(member));
    out.push(b'{');
    for (i, (key, raw)) in own.iter().chain(extra).enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_key(out, key)?;
        out.push(b':');
        out.extend_from_slice(raw.get().as_bytes());
    }
    out.push(b'}');
    Ok(())
}

/// Parses a web push Kafka message (DESIGN.md §11): `{"subscription":{"endpoint","keys":
/// {"p256dh","auth"}},"payload":<JSON or text>,"ttl","urgency","topic","metadata",
/// "push_expiry"}`; other keys are ignored. The subscription itself is checked by the sender
/// (a bad one is the subscription's fault, not the message's).
pub fn parse_webpush(bytes: &[u8]) -> Result<WebPushMessage, MessageError> {
    let entries = top_object(bytes)?;
    let mut subscription: Option<Subscription> = None;
    let mut payload = Vec::new();
    let mut ttl = webpush::DEFAULT_TTL;
    let mut urgency = None;
    let mut topic = None;
    let mut metadata = Metadata::default();
    let mut push_expiry = 0;
    for (key, raw) in &entries.0 {
        let key = key.as_ref();
        let is = |name: &str| key.eq_ignore_ascii_case(name);
        if is("subscription") {
            subscription = typed(
                "subscription",
                "an object {\"endpoint\", \"keys\": {\"p256dh\", \"auth\"}} of strings",
                raw,
            )?;
        } else if is("payload") {
            // A string is sent as its text; any other JSON value as its JSON.
            payload = match typed::<Value>("payload", "JSON", raw)? {
                Value::Null => Vec::new(),
                Value::String(text) => text.into_bytes(),
                _ => raw.get().as_bytes().to_vec(),
            };
        } else if is("ttl") {
            ttl = typed::<Option<u32>>("ttl", "an unsigned integer (seconds)", raw)?
                .unwrap_or(webpush::DEFAULT_TTL);
        } else if is("urgency") {
            urgency =
                match typed::<Option<String>>("urgency", "a string", raw)? {
                    None => None,
                    Some(u) => Some(webpush::Urgency::parse(&u).ok_or_else(|| {
                        MessageError::InvalidValue {
                            field: "urgency",
                            detail: format!("{u:?} is not very-low, low, normal or high"),
                        }
                    })?),
                };
        } else if is("topic") {
            topic = typed::<Option<String>>("topic", "a string", raw)?;
            if let Some(t) = topic.as_deref().filter(|t| !webpush::valid_topic(t)) {
                return Err(MessageError::InvalidValue {
                    field: "topic",
                    detail: format!("{t:?} is not 1-{} base64url characters", webpush::MAX_TOPIC),
                });
            }
        } else if is("metadata") {
            let map: Map<String, Value> =
                typed::<Option<_>>("metadata", "an object", raw)?.unwrap_or_default();
            metadata = Metadata((!map.is_empty()).then(|| raw.get().into()));
        } else if is("push_expiry") {
            push_expiry =
                typed::<Option<i64>>("push_expiry", "an integer (Unix ms)", raw)?.unwrap_or(0);
        }
    }
    let subscription = subscription.ok_or(MessageError::NoToken("subscription"))?;
    if subscription.endpoint.is_empty() {
        return Err(MessageError::NoToken("subscription.endpoint"));
    }
    if payload.len() > webpush::MAX_PLAINTEXT {
        return Err(MessageError::PayloadTooLarge {
            size: payload.len(),
            limit: webpush::MAX_PLAINTEXT,
        });
    }
    Ok(WebPushMessage {
        subscription,
        payload,
        ttl,
        urgency,
        topic,
        metadata,
        push_expiry,
    })
}

/// The endpoint of a web push message the parser refused, when one can still be read, so its
/// feedback record names the subscription.
pub fn endpoint_hint(bytes: &[u8]) -> Option<String> {
    if bytes.len() > MAX_MESSAGE_BYTES {
        return None;
    }
    let value: Value = serde_json::from_slice(bytes).ok()?;
    let endpoint = value.get("subscription")?.get("endpoint")?.as_str()?;
    (!endpoint.is_empty() && endpoint.len() <= 4096 && !endpoint.chars().any(char::is_control))
        .then(|| endpoint.to_string())
}

/// Writes a member's key as a JSON string. A key borrowed from the input had no escapes, and
/// valid JSON holds no control characters in a string, so its text goes out as it came.
#[expect(
    clippy::ptr_arg,
    reason = "the variant says whether the input escaped the key"
)]
fn write_key(out: &mut Vec<u8>, key: &Cow<str>) -> Result<(), MessageError> {
    match key {
        Cow::Borrowed(text) => {
            out.push(b'"');
            out.extend_from_slice(text.as_bytes());
            out.push(b'"');
            Ok(())
        }
        Cow::Owned(text) => serde_json::to_writer(out, text).map_err(MessageError::InvalidJson),
    }
}

/// The top-level object of a Kafka message, as (key, raw value) pairs in order.
fn top_object(bytes: &[u8]) -> Result<Members<'_>, MessageError> {
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(MessageError::MessageTooLarge);
    }
    let text = std::str::from_utf8(bytes).map_err(|e| MessageError::NotUtf8(e.valid_up_to()))?;
    serde_json::from_str(text).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => MessageError::WrongType {
            field: "message",
            expected: "a JSON object",
        },
        _ => MessageError::InvalidJson(e),
    })
}

/// A nested object as (key, raw value) pairs.
fn object<'a>(field: &'static str, raw: &'a RawValue) -> Result<Members<'a>, MessageError> {
    typed(field, "an object", raw)
}

/// Decodes one member's raw value: a type mismatch names the field; anything else (the
/// recursion limit on deep nesting) is invalid JSON.
fn typed<'a, T: Deserialize<'a>>(
    field: &'static str,
    expected: &'static str,
    raw: &'a RawValue,
) -> Result<T, MessageError> {
    serde_json::from_str(raw.get()).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => MessageError::WrongType { field, expected },
        _ => MessageError::InvalidJson(e),
    })
}

/// A JSON object's members, borrowed from the input (keys are copied only when escaped).
struct Members<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de> Deserialize<'de> for Members<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct MembersVisitor;
        impl<'de> Visitor<'de> for MembersVisitor {
            type Value = Members<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut members = Vec::with_capacity(map.size_hint().unwrap_or(8));
                while let Some(Key(key)) = map.next_key()? {
                    let value: &'de RawValue = map.next_value()?;
                    members.push((key, value));
                }
                Ok(Members(members))
            }
        }
        d.deserialize_map(MembersVisitor)
    }
}

/// A map key borrowed from the input when it has no escapes. (`Cow<str>`'s own Deserialize
/// always copies.)
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string key")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

#[cfg(test)]
mod token_hint_tests {
    use super::{metadata_hint, token_hint};

    #[test]
    fn a_refused_message_still_names_its_token() {
        let cases: &[(&str, bool, Option<&str>)] = &[
            (
                r#"{"DeviceToken":"abcd","Payload":"not an object"}"#,
                true,
                Some("abcd"),
            ),
            (
                r#"{"devicetoken":"abcd","push_type":"telepathy"}"#,
                true,
                Some("abcd"),
            ),
            (r#"{"to":"tok","data":[1]}"#, false, Some("tok")),
            (
                r#"{"message":{"token":"tok","android":7}}"#,
                false,
                Some("tok"),
            ),
            (r#"{"DeviceToken":12}"#, true, None),
            (r#"{"DeviceToken":"a\nb"}"#, true, None),
            ("not json", true, None),
        ];
        for (raw, apns, want) in cases {
            assert_eq!(token_hint(raw.as_bytes(), *apns).as_deref(), *want, "{raw}");
        }
    }

    /// A refused message's `metadata` is kept for its feedback record (its notif_id names the
    /// notification the verdict completes); a value that is not JSON, or a `metadata` that is
    /// no object, has none.
    #[test]
    fn a_refused_message_still_carries_its_metadata() {
        let refused = br#"{"DeviceToken":"abcd","Payload":"not an object",
            "Metadata":{"notif_id":"n-1","jobId":"j"}}"#;
        let metadata = metadata_hint(refused);
        assert!(metadata.has_notif_id());
        assert_eq!(
            serde_json::Value::Object(metadata.to_map()),
            serde_json::json!({"notif_id": "n-1", "jobId": "j"})
        );
        for raw in [
            &br#"{"to":"t","metadata":"n-1"}"#[..],
            br#"{"to":"t","metadata":{}}"#,
            br#"{"to":"t"}"#,
            b"not json {\"metadata\":{\"notif_id\":\"n\"}}",
        ] {
            assert!(
                metadata_hint(raw).is_empty(),
                "{}",
                String::from_utf8_lossy(raw)
            );
        }
        let mut big = br#"{"metadata":{"notif_id":"n"},"x":""#.to_vec();
        big.resize(super::MAX_MESSAGE_BYTES + 1, b'x');
        big.extend_from_slice(br#""}"#);
        assert!(
            metadata_hint(&big).is_empty(),
            "past the bound nothing is parsed"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const TOKEN: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    /// Each input is refused by `parse` for its reason, in an error that names what it gives.
    fn assert_refused<T: std::fmt::Debug>(
        parse: fn(&[u8]) -> Result<T, MessageError>,
        cases: Vec<(Vec<u8>, &str, &str)>,
    ) {
        for (input, reason, names) in cases {
            let err = parse(&input).expect_err(&String::from_utf8_lossy(&input));
            assert_eq!(
                err.reason(),
                reason,
                "{}: {err}",
                String::from_utf8_lossy(&input)
            );
            assert!(err.to_string().contains(names), "{err} should name {names}");
        }
    }

    fn payload_json(m: &ApnsMessage) -> Value {
        serde_json::from_slice(&m.notification.payload).expect("payload is JSON")
    }

    #[test]
    fn ten_megabyte_messages_are_refused_by_size_and_copied_bounded() {
        let big = format!(
            r#"{{"DeviceToken":"{TOKEN}","to":"t","Payload":{{"aps":{{"alert":"{}"}}}}}}"#,
            "x".repeat(10 << 20)
        );
        let kept = bounded_copy(big.as_bytes());
        assert_eq!(kept.len(), MAX_MESSAGE_BYTES + 1);
        for bytes in [big.as_bytes(), &kept[..]] {
            assert_eq!(parse_apns(bytes).unwrap_err().reason(), "message_too_large");
            assert_eq!(parse_gcm(bytes).unwrap_err().reason(), "message_too_large");
        }
        assert_eq!(bounded_copy(b"{}"), b"{}");
        // At the limit it is parsed (and refused for what it says, not its size).
        let at_limit = format!(r#"{{"x":"{}"}}"#, "y".repeat(MAX_MESSAGE_BYTES - 8));
        assert_eq!(at_limit.len(), MAX_MESSAGE_BYTES);
        assert_eq!(
            parse_apns(at_limit.as_bytes()).unwrap_err().reason(),
            "no_token"
        );
    }

    #[test]
    fn apns_every_field() {
        let msg = json!({
            "DeviceToken": TOKEN, "Payload": {"aps": {"alert": "hi"}}, "metadata": {"jobId": "j1"},
            "push_expiry": 1_700_000_000_000_i64, "collapse_id": "c1", "push_type": "background",
            "priority": 5, "expiration": 1_700_000_000_u64, "topic": "com.example.app", "ApnsID": "ignored"
        });
        let m = parse_apns(msg.to_string().as_bytes()).expect("parses");
        let n = &m.notification;
        assert_eq!(n.token, TOKEN);
        assert_eq!(n.topic.as_deref(), Some("com.example.app"));
        assert_eq!(n.push_type, Some(PushType::Background));
        assert_eq!(n.priority, Some(5));
        assert_eq!(n.expiration, Some(1_700_000_000));
        assert_eq!(n.collapse_id.as_deref(), Some("c1"));
        assert_eq!(n.apns_id, None);
        assert_eq!(m.push_expiry, 1_700_000_000_000);
        assert_eq!(
            m.metadata.to_map(),
            json!({"jobId": "j1"}).as_object().cloned().expect("object")
        );
        assert_eq!(
            payload_json(&m),
            json!({"aps": {"alert": "hi"}, "M": {"jobId": "j1"}})
        );
    }

    /// A message's `push_expiry` bounds how long APNs may store it (`apns-expiration`).
    #[test]
    fn apns_expiration_never_outlives_push_expiry() {
        let parse = |extra: &str| {
            let raw = format!(r#"{{"DeviceToken":"{TOKEN}","Payload":{{}}{extra}}}"#);
            parse_apns(raw.as_bytes())
                .expect("parses")
                .notification
                .expiration
        };
        assert_eq!(parse(""), None);
        assert_eq!(parse(r#","push_expiry":0"#), None);
        assert_eq!(
            parse(r#","push_expiry":1700000000500"#),
            Some(1_700_000_001)
        );
        assert_eq!(
            parse(r#","push_expiry":1700000000000,"expiration":1800000000"#),
            Some(1_700_000_000)
        );
        assert_eq!(
            parse(r#","push_expiry":1700000000000,"expiration":1600000000"#),
            Some(1_600_000_000)
        );
        assert_eq!(
            parse(r#","push_expiry":1700000000000,"expiration":0"#),
            Some(0)
        );
        assert_eq!(parse(r#","push_expiry":-5"#), None);
    }

    #[test]
    fn apns_minimal_message_has_defaults_and_payload_verbatim() {
        let raw = format!(r#"{{"DeviceToken":"{TOKEN}","Payload":{{"aps" : {{"alert":"x"}} }}}}"#);
        let m = parse_apns(raw.as_bytes()).expect("parses");
        // Without metadata the payload is the producer's bytes, spacing included.
        assert_eq!(&m.notification.payload[..], br#"{"aps" : {"alert":"x"} }"#);
        assert_eq!(m.push_expiry, 0);
        assert!(m.metadata.is_empty());
        let n = &m.notification;
        assert_eq!(
            (n.topic.as_ref(), n.push_type, n.priority, n.expiration),
            (None, None, None, None)
        );
    }

    #[test]
    fn apns_keys_are_case_insensitive() {
        for (token_key, payload_key, meta_key, expiry_key) in [
            ("DeviceToken", "Payload", "metadata", "push_expiry"),
            ("deviceToken", "payload", "Metadata", "Push_Expiry"),
            ("DEVICETOKEN", "PAYLOAD", "METADATA", "PUSH_EXPIRY"),
        ] {
            let msg = json!({token_key: TOKEN, payload_key: {"aps": {}}, meta_key: {"a": 1}, expiry_key: 7, "TOPIC": "t"});
            let m = parse_apns(msg.to_string().as_bytes())
                .unwrap_or_else(|e| panic!("{token_key}: {e}"));
            assert_eq!(m.notification.token, TOKEN);
            assert_eq!(m.push_expiry, 7);
            assert_eq!(m.notification.topic.as_deref(), Some("t"));
            assert_eq!(payload_json(&m)["M"], json!({"a": 1}));
        }
    }

    #[test]
    fn apns_metadata_merge_rules() {
        let cases = [
            // (Payload, metadata, expected payload)
            (
                json!({"aps": {}}),
                json!({"jobId": "j"}),
                json!({"aps": {}, "M": {"jobId": "j"}}),
            ),
            (
                json!({"aps": {}, "M": {"jobId": "mine", "x": 1}}),
                json!({"jobId": "j", "y": [2]}),
                json!({"aps": {}, "M": {"jobId": "mine", "x": 1, "y": [2]}}),
            ),
            (
                json!({"aps": {}, "M": null}),
                json!({"k": true}),
                json!({"aps": {}, "M": {"k": true}}),
            ),
            (json!({}), json!({"k": "v"}), json!({"M": {"k": "v"}})),
            (json!({"aps": {}}), json!({}), json!({"aps": {}})),
            (json!({"aps": {}}), Value::Null, json!({"aps": {}})),
        ];
        for (payload, metadata, want) in cases {
            let msg = json!({"DeviceToken": TOKEN, "Payload": payload, "metadata": metadata});
            let m = parse_apns(msg.to_string().as_bytes()).expect("parses");
            assert_eq!(payload_json(&m), want, "{msg}");
        }
        // Escaped keys survive the hand-written re-assembly.
        let raw = format!(
            r#"{{"DeviceToken":"{TOKEN}","Payload":{{"a\"b\u00e9":1}},"metadata":{{"k":"v"}}}}"#
        );
        let m = parse_apns(raw.as_bytes()).expect("parses");
        assert_eq!(payload_json(&m), json!({"a\"bé": 1, "M": {"k": "v"}}));
        // Members are copied as written, in order; a key repeated in metadata keeps its last
        // value, as a JSON map would, and M's own keys still win.
        let raw = format!(
            r#"{{"DeviceToken":"{TOKEN}","Payload":{{"M":{{"z":0, "a":1}},"aps":{{}}}},"metadata":{{"b":1,"a":9,"b":2, "c":{{"d":[1,2]}}}}}}"#
        );
        let m = parse_apns(raw.as_bytes()).expect("parses");
        assert_eq!(
            std::str::from_utf8(&m.notification.payload).expect("utf-8"),
            r#"{"M":{"z":0,"a":1,"b":2,"c":{"d":[1,2]}},"aps":{}}"#
        );
        // Many metadata keys (merged through a set, not a scan per key).
        let keys: Vec<String> = (0..300).map(|i| format!(r#""k{i}":{i}"#)).collect();
        let raw = format!(
            r#"{{"DeviceToken":"{TOKEN}","Payload":{{"M":{{"k7":"mine"}}}},"metadata":{{{}}}}}"#,
            keys.join(",")
        );
        let m = parse_apns(raw.as_bytes()).expect("parses");
        let merged = payload_json(&m);
        assert_eq!(merged["M"].as_object().map(Map::len), Some(300));
        assert_eq!(
            (&merged["M"]["k7"], &merged["M"]["k299"]),
            (&json!("mine"), &json!(299))
        );
    }

    #[test]
    fn metadata_is_spliced_into_a_payload_without_m() {
        // (Payload as written, the payload sent): spliced before the closing brace, the
        // payload's own text kept; a payload that could hold `M` goes the long way.
        let cases = [
            (
                r#"{"aps":{"alert":"hi"}}"#,
                r#"{"aps":{"alert":"hi"},"M":{"k":"v"}}"#,
            ),
            (r#"{ "aps" : {} }"#, r#"{"aps" : {},"M":{"k":"v"}}"#),
            ("{}", r#"{"M":{"k":"v"}}"#),
            ("{ \n }", r#"{"M":{"k":"v"}}"#),
            // `"M"` in a value: parsed, no `M` key found, appended.
            (
                r#"{"aps":{"alert":"M"}}"#,
                r#"{"aps":{"alert":"M"},"M":{"k":"v"}}"#,
            ),
            // An escaped key that is `M`: merged into it, not a second `M`.
            (r#"{"\u004d":{"x":1}}"#, r#"{"M":{"x":1,"k":"v"}}"#),
        ];
        for (payload, want) in cases {
            let raw = format!(
                r#"{{"DeviceToken":"{TOKEN}","Payload":{payload},"metadata":{{"k":"v"}}}}"#
            );
            let m = parse_apns(raw.as_bytes()).expect("parses");
            assert_eq!(
                std::str::from_utf8(&m.notification.payload).expect("utf-8"),
                want,
                "{raw}"
            );
        }
        for payload in ["[1]", "\"text\"", "1", "true"] {
            let raw = format!(
                r#"{{"DeviceToken":"{TOKEN}","Payload":{payload},"metadata":{{"k":"v"}}}}"#
            );
            let err = parse_apns(raw.as_bytes()).expect_err(payload);
            assert_eq!(err.reason(), "wrong_type", "{payload}");
        }
    }

    #[test]
    fn apns_errors_table() {
        let big = "x".repeat(5000);
        let cases: Vec<(Vec<u8>, &str, &str)> = vec![
            (b"\xff\xfe{}".to_vec(), "not_utf8", "UTF-8"),
            (b"{\"DeviceToken\":".to_vec(), "invalid_json", "JSON"),
            (b"not json".to_vec(), "invalid_json", "JSON"),
            (b"".to_vec(), "invalid_json", "JSON"),
            (b"[1,2]".to_vec(), "wrong_type", "message"),
            (b"\"str\"".to_vec(), "wrong_type", "message"),
            (
                br#"{"Payload":{"aps":{}}}"#.to_vec(),
                "no_token",
                "DeviceToken",
            ),
            (
                br#"{"DeviceToken":"","Payload":{"aps":{}}}"#.to_vec(),
                "no_token",
                "DeviceToken",
            ),
            (
                br#"{"DeviceToken":null,"Payload":{"aps":{}}}"#.to_vec(),
                "no_token",
                "DeviceToken",
            ),
            (
                format!(r#"{{"DeviceToken":"{TOKEN}"}}"#).into_bytes(),
                "missing_field",
                "Payload",
            ),
            (
                format!(r#"{{"DeviceToken":"{TOKEN}","Payload":null}}"#).into_bytes(),
                "missing_field",
                "Payload",
            ),
            (
                br#"{"DeviceToken":12,"Payload":{}}"#.to_vec(),
                "wrong_type",
                "DeviceToken",
            ),
            (
                format!(r#"{{"DeviceToken":"{TOKEN}","Payload":"text"}}"#).into_bytes(),
                "wrong_type",
                "Payload",
            ),
            (
                format!(r#"{{"DeviceToken":"{TOKEN}","Payload":{{}},"metadata":[1]}}"#)
                    .into_bytes(),
                "wrong_type",
                "metadata",
            ),
            (
                format!(r#"{{"DeviceToken":"{TOKEN}","Payload":{{"M":3}},"metadata":{{"a":1}}}}"#)
                    .into_bytes(),
                "wrong_type",
                "Payload.M",
            ),
            (
                format!(r#"{{"DeviceToken":"{TOKEN}","Payload":{{}},"push_expiry":"soon"}}"#)
                    .into_bytes(),
                "wrong_type",
                "push_expiry",
            ),
            (
                format!(r#"{{"DeviceToken":"{TOKEN}","Payload":{{}},"push_expiry":1.5}}"#)
                    .into_bytes(),
                "wrong_type",
                "push_expiry",
            ),
            (
                format!(r#"{{"DeviceToken":"{TOKEN}","Payload":{{}},"priority":"high"}}"#)
                    .into_bytes(),
                "wrong_type",
                "priority",
            ),
            (
                format!(r#"{{"DeviceToken":"{TOKEN}","Payload":{{}},"priority":7}}"#).into_bytes(),
                "invalid_value",
                "priority",
            ),
            (
                format!(r#"{{"DeviceToken":"{TOKEN}","Payload":{{}},"expiration":-1}}"#)
                    .into_bytes(),
                "wrong_type",
                "expiration",
            ),
            (
                format!(r#"{{"DeviceToken":"{TOKEN}","Payload":{{}},"push_type":"telepathy"}}"#)
                    .into_bytes(),
                "invalid_value",
                "push_type",
            ),
            (
                format!(r#"{{"DeviceToken":"{TOKEN}","Payload":{{}},"topic":["a"]}}"#).into_bytes(),
                "wrong_type",
                "topic",
            ),
            (
                format!(
                    r#"{{"DeviceToken":"{TOKEN}","Payload":{{}},"topic":"com.x","push_type":"voip"}}"#
                )
                .into_bytes(),
                "invalid_value",
                ".voip",
            ),
            (
                format!(
                    r#"{{"DeviceToken":"{TOKEN}","Payload":{{}},"collapse_id":"{}"}}"#,
                    "c".repeat(65)
                )
                .into_bytes(),
                "invalid_value",
                "collapse_id",
            ),
            (
                format!(r#"{{"DeviceToken":"{TOKEN}","Payload":{{"aps":{{"alert":"{big}"}}}}}}"#)
                    .into_bytes(),
                "payload_too_large",
                "4096",
            ),
        ];
        assert_refused(parse_apns, cases);
    }

    #[test]
    fn apns_payload_limits_follow_push_type() {
        let body = "x".repeat(4500);
        let alert = format!(r#"{{"DeviceToken":"{TOKEN}","Payload":{{"aps":{{}},"d":"{body}"}}}}"#);
        assert_eq!(
            parse_apns(alert.as_bytes()).map_err(|e| e.reason()).err(),
            Some("payload_too_large")
        );
        let voip = format!(
            r#"{{"DeviceToken":"{TOKEN}","push_type":"voip","Payload":{{"aps":{{}},"d":"{body}"}}}}"#
        );
        assert_eq!(
            parse_apns(voip.as_bytes())
                .expect("voip allows 5120")
                .notification
                .payload
                .len(),
            4500 + 17
        );
        // Metadata counts: a payload just under the limit goes over once merged.
        let just = "y".repeat(4096 - 16);
        let msg = format!(
            r#"{{"DeviceToken":"{TOKEN}","Payload":{{"aps":{{"a":"{just}"}}}},"metadata":{{"jobId":"j"}}}}"#
        );
        assert!(parse_apns(msg.replace(r#","metadata":{"jobId":"j"}"#, "").as_bytes()).is_ok());
        assert_eq!(
            parse_apns(msg.as_bytes()).map_err(|e| e.reason()).err(),
            Some("payload_too_large")
        );
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        // Deep, but under MAX_MESSAGE_BYTES (which refuses bigger ones unparsed).
        let deep = format!("{}1{}", "[".repeat(20_000), "]".repeat(20_000));
        // Metadata and `Payload.M` are merged raw: the deep member is copied, not parsed, and
        // the merged payload is refused by its size.
        let inputs = [
            format!(r#"{{"DeviceToken":"{TOKEN}","Payload":{{}},"metadata":{{"a":{deep}}}}}"#),
            format!(
                r#"{{"DeviceToken":"{TOKEN}","Payload":{{"M":{{"a":{deep}}}}},"metadata":{{"k":1}}}}"#
            ),
        ];
        for input in inputs {
            assert_eq!(
                parse_apns(input.as_bytes()).map_err(|e| e.reason()).err(),
                Some("payload_too_large")
            );
        }
        let gcm = format!(r#"{{"to":"t","data":{{"a":{deep}}}}}"#);
        assert_eq!(
            parse_gcm(gcm.as_bytes()).map_err(|e| e.reason()).err(),
            Some("invalid_json")
        );
        // Deep nesting in a member kept raw is bounded by the size limit instead.
        let raw = format!(r#"{{"DeviceToken":"{TOKEN}","Payload":{{"aps":{deep}}}}}"#);
        assert_eq!(
            parse_apns(raw.as_bytes()).map_err(|e| e.reason()).err(),
            Some("payload_too_large")
        );
    }

    #[test]
    fn big_values_within_limits_parse() {
        let token = "ab".repeat(100);
        let metadata: Map<String, Value> = (0..200).map(|i| (format!("k{i}"), json!(i))).collect();
        let msg = json!({"DeviceToken": token, "Payload": {"aps": {}}, "metadata": metadata, "push_expiry": i64::MAX});
        let m = parse_apns(msg.to_string().as_bytes()).expect("parses");
        assert_eq!(m.metadata.to_map().len(), 200);
        assert_eq!(m.push_expiry, i64::MAX);
        assert_eq!(payload_json(&m)["M"].as_object().map(Map::len), Some(200));
    }

    #[test]
    fn gcm_every_legacy_field() {
        let msg = json!({
            "to": "tok:APA91b", "message_id": "m1", "message_type": "t", "collapse_key": "c",
            "priority": "high", "content_available": true, "time_to_live": 3600,
            "delivery_receipt_requested": false, "dry_run": true,
            "notification": {"title": "T", "body": "B", "sound": "s", "click_action": "ca",
                "body_loc_key": "bk", "body_loc_args": ["1", "2"], "title_loc_key": "tk",
                "title_loc_args": "[\"x\"]", "image_url": "https://i", "icon": "ic", "tag": "tg",
                "color": "#fff", "badge": 3, "unknown": "ignored"},
            "data": {"s": "v", "n": 1, "o": {"a": [1]}, "b": false, "nul": null},
            "metadata": {"jobId": "j", "s": "metadata loses"}, "push_expiry": 5
        });
        let m = parse_gcm(msg.to_string().as_bytes()).expect("parses");
        assert_eq!(m.to, "tok:APA91b");
        assert_eq!(m.message_id.as_deref(), Some("m1"));
        assert_eq!(m.message_type.as_deref(), Some("t"));
        assert_eq!(m.collapse_key.as_deref(), Some("c"));
        assert_eq!(m.priority.as_deref(), Some("high"));
        assert_eq!(m.content_available, Some(true));
        assert_eq!(m.time_to_live, Some(3600));
        assert_eq!(m.delivery_receipt_requested, Some(false));
        assert!(m.dry_run);
        assert_eq!(m.push_expiry, 5);
        assert_eq!(m.v1_message, None);
        let n = m.notification.expect("notification");
        assert_eq!(
            (n.title.as_deref(), n.body.as_deref(), n.sound.as_deref()),
            (Some("T"), Some("B"), Some("s"))
        );
        assert_eq!(
            (
                n.click_action.as_deref(),
                n.body_loc_key.as_deref(),
                n.title_loc_key.as_deref()
            ),
            (Some("ca"), Some("bk"), Some("tk"))
        );
        assert_eq!(
            n.body_loc_args,
            Some(vec!["1".to_string(), "2".to_string()])
        );
        assert_eq!(n.title_loc_args, Some(vec!["x".to_string()]));
        assert_eq!(
            (n.image_url.as_deref(), n.icon.as_deref(), n.tag.as_deref()),
            (Some("https://i"), Some("ic"), Some("tg"))
        );
        assert_eq!(
            (n.color.as_deref(), n.badge.as_deref()),
            (Some("#fff"), Some("3"))
        );
        // Non-string data kept; metadata merged, data's own keys win.
        let want =
            json!({"s": "v", "n": 1, "o": {"a": [1]}, "b": false, "nul": null, "jobId": "j"});
        assert_eq!(Value::Object(m.data), want);
        assert_eq!(m.metadata.to_map().len(), 2);
    }

    #[test]
    fn gcm_keys_case_insensitive_and_defaults() {
        let m =
            parse_gcm(br#"{"TO":"t1","Data":{"a":"b"},"DRY_RUN":false,"Metadata":{"jobId":"j"}}"#)
                .expect("parses");
        assert_eq!(m.to, "t1");
        assert!(!m.dry_run);
        assert_eq!(Value::Object(m.data), json!({"a": "b", "jobId": "j"}));
        let m = parse_gcm(br#"{"to":"t2"}"#).expect("parses");
        assert_eq!(
            (m.time_to_live, m.notification, m.push_expiry, m.data.len()),
            (None, None, 0, 0)
        );
    }

    #[test]
    fn gcm_v1_envelope_is_kept_as_is() {
        let inner = r#"{"token":"v1tok","data":{"k":"v"},"android":{"ttl":"30s"}}"#;
        let raw = format!(
            r#"{{"message":{inner},"validate_only":true,"metadata":{{"jobId":"j"}},"push_expiry":9}}"#
        );
        let m = parse_gcm(raw.as_bytes()).expect("parses");
        assert_eq!(m.to, "v1tok");
        assert!(m.dry_run);
        assert_eq!(m.push_expiry, 9);
        assert_eq!(m.metadata.to_map().get("jobId"), Some(&json!("j")));
        assert_eq!(m.v1_message.as_deref(), Some(inner.as_bytes()));
        assert!(
            m.data.is_empty(),
            "metadata is not merged into a v1 message"
        );
        let err = parse_gcm(br#"{"message":{"topic":"news"}}"#).expect_err("no token");
        assert_eq!(
            (err.reason(), err.to_string().contains("message.token")),
            ("no_token", true)
        );
        // A Firebase Installation ID is the device target too.
        let m = parse_gcm(br#"{"message":{"fid":"fid-1","data":{"k":"v"}}}"#).expect("fid");
        assert_eq!(m.to, "fid-1");
        let err = parse_gcm(br#"{"message":{"token":"t","fid":"f"}}"#).expect_err("two targets");
        assert_eq!(err.reason(), "invalid_value");
        assert_eq!(
            token_hint(br#"{"message":{"fid":"fid-2","data":1}}"#, false).as_deref(),
            Some("fid-2")
        );
        let err = parse_gcm(br#"{"message":"x"}"#).expect_err("not an object");
        assert_eq!(err.reason(), "wrong_type");
    }

    #[test]
    fn gcm_errors_table() {
        let big = "x".repeat(4100);
        let cases: Vec<(Vec<u8>, &str, &str)> = vec![
            (b"{\"to\":\"\xc3\x28\"}".to_vec(), "not_utf8", "offset 7"),
            (b"{\"to\":".to_vec(), "invalid_json", "JSON"),
            (b"42".to_vec(), "wrong_type", "message"),
            (br#"{"data":{"a":"b"}}"#.to_vec(), "no_token", "to"),
            (br#"{"to":""}"#.to_vec(), "no_token", "to"),
            (br#"{"to":5}"#.to_vec(), "wrong_type", "to"),
            (br#"{"to":"t","data":"x"}"#.to_vec(), "wrong_type", "data"),
            (
                br#"{"to":"t","notification":{"title":5}}"#.to_vec(),
                "wrong_type",
                "notification",
            ),
            (
                br#"{"to":"t","time_to_live":-1}"#.to_vec(),
                "wrong_type",
                "time_to_live",
            ),
            (
                br#"{"to":"t","dry_run":"yes"}"#.to_vec(),
                "wrong_type",
                "dry_run",
            ),
            (
                br#"{"to":"t","priority":10}"#.to_vec(),
                "wrong_type",
                "priority",
            ),
            (
                br#"{"to":"t","push_expiry":"x"}"#.to_vec(),
                "wrong_type",
                "push_expiry",
            ),
            (
                br#"{"to":"t","metadata":"x"}"#.to_vec(),
                "wrong_type",
                "metadata",
            ),
            (
                format!(r#"{{"to":"t","data":{{"a":"{big}"}}}}"#).into_bytes(),
                "payload_too_large",
                "4096",
            ),
        ];
        assert_refused(parse_gcm, cases);
    }

    #[test]
    fn gcm_v1_envelope_with_two_targets_is_refused() {
        // FCM refuses them as a oneof conflict; sent, that could read as a bad token.
        for kafka in [
            r#"{"message":{"token":"t","topic":"x"}}"#,
            r#"{"message":{"token":"t","condition":"'a' in topics"}}"#,
            r#"{"message":{"fid":"f","topic":"x"}}"#,
            r#"{"message":{"token":"t","fid":"f"}}"#,
            // An empty string is still set, for FCM.
            r#"{"message":{"token":"","fid":"f"}}"#,
        ] {
            let err = parse_gcm(kafka.as_bytes()).expect_err(kafka);
            assert_eq!(err.reason(), "invalid_value", "{kafka}");
            assert!(err.to_string().contains("exactly one target"), "{err}");
        }
        // A null is not set.
        let m = parse_gcm(br#"{"message":{"token":"t","topic":null}}"#).expect("one target");
        assert_eq!(m.to, "t");
    }

    #[test]
    fn gcm_topic_messages_have_half_the_room() {
        let data =
            |to: &str, n: usize| format!(r#"{{"to":"{to}","data":{{"k":"{}"}}}}"#, "x".repeat(n));
        let err = parse_gcm(data("/topics/news", 3000).as_bytes()).expect_err("over 2048");
        assert_eq!(err.reason(), "payload_too_large");
        assert!(err.to_string().contains("limit of 2048"), "{err}");
        assert!(parse_gcm(data("/topics/news", 2000).as_bytes()).is_ok());
        assert!(
            parse_gcm(data("tok", 3000).as_bytes()).is_ok(),
            "a device has 4096"
        );
        // Merged metadata counts for a topic too.
        let meta = format!(
            r#"{{"to":"/topics/news","data":{{"k":"v"}},"metadata":{{"m":"{}"}}}}"#,
            "x".repeat(2100)
        );
        assert_eq!(
            parse_gcm(meta.as_bytes()).map(drop).map_err(|e| e.reason()),
            Err("payload_too_large")
        );
    }

    #[test]
    fn gcm_reserved_data_keys_are_refused_naming_the_key() {
        for (kafka, key, field) in [
            (r#"{"to":"t","data":{"from":"x"}}"#, "from", "data"),
            (
                r#"{"to":"t","data":{"message_type":"x"}}"#,
                "message_type",
                "data",
            ),
            (
                r#"{"to":"t","data":{"google.c.a.e":"1"}}"#,
                "google.c.a.e",
                "data",
            ),
            (
                r#"{"to":"t","data":{"gcm.notification.title":"x"}}"#,
                "gcm.notification.title",
                "data",
            ),
            (
                r#"{"to":"t","data":{"k":"v"},"metadata":{"from":"producer"}}"#,
                "from",
                "metadata",
            ),
        ] {
            let err = parse_gcm(kafka.as_bytes()).expect_err(kafka);
            assert_eq!(err.reason(), "reserved_data_key", "{kafka}");
            let text = err.to_string();
            assert!(
                text.contains(&format!("{key:?}")) && text.contains(field),
                "{text}"
            );
        }
        // Close to reserved is fine: FCM's keys are case-sensitive and its prefixes end in dots.
        for ok in [
            r#"{"to":"t","data":{"From":"x","fromage":"x","googled":"x","gcm_id":"x"}}"#,
            // The producer's own data wins over metadata: nothing reserved is merged.
            r#"{"to":"t","data":{"from2":"x"},"metadata":{"jobId":"j"}}"#,
        ] {
            assert!(parse_gcm(ok.as_bytes()).is_ok(), "{ok}");
        }
    }

    #[test]
    fn expiry() {
        let now = Duration::from_millis(1_000);
        assert!(!is_expired(0, now), "0 never expires");
        assert!(!is_expired(-5, now));
        assert!(is_expired(999, now));
        assert!(!is_expired(1_000, now));
        assert!(!is_expired(1_001, now));
    }
}

#[cfg(test)]
mod webpush_tests {
    use super::*;

    #[test]
    fn web_push_messages_parse() {
        let sub =
            r#"{"endpoint":"https://push.example.com/wpush/a","keys":{"p256dh":"BA","auth":"QQ"}}"#;
        let m = parse_webpush(
            format!(r#"{{"subscription":{sub},"payload":{{"title":"hi"}},"ttl":60,"urgency":"high","topic":"news","metadata":{{"notif_id":"n1"}},"push_expiry":5}}"#)
                .as_bytes(),
        )
        .expect("parses");
        assert_eq!(m.subscription.endpoint, "https://push.example.com/wpush/a");
        assert_eq!(m.payload, br#"{"title":"hi"}"#);
        assert_eq!(
            (m.ttl, m.urgency, m.topic.as_deref()),
            (60, Some(webpush::Urgency::High), Some("news"))
        );
        assert!(m.metadata.has_notif_id());
        assert_eq!(m.push_expiry, 5);

        let m = parse_webpush(format!(r#"{{"subscription":{sub},"payload":"text"}}"#).as_bytes())
            .expect("parses");
        assert_eq!(
            (m.payload.as_slice(), m.ttl),
            (&b"text"[..], webpush::DEFAULT_TTL)
        );

        let reason = |text: String| {
            parse_webpush(text.as_bytes())
                .map(|_| ())
                .map_err(|e| e.reason())
        };
        assert_eq!(reason(r#"{"payload":"x"}"#.into()), Err("no_token"));
        assert_eq!(
            reason(format!(r#"{{"subscription":{sub},"urgency":"now"}}"#)),
            Err("invalid_value")
        );
        assert_eq!(
            reason(format!(r#"{{"subscription":{sub},"topic":"a b"}}"#)),
            Err("invalid_value")
        );
        assert_eq!(
            reason(format!(r#"{{"subscription":{sub},"ttl":-1}}"#)),
            Err("wrong_type")
        );
        assert_eq!(
            reason(r#"{"subscription":{"endpoint":1}}"#.into()),
            Err("wrong_type")
        );
        let big = "x".repeat(webpush::MAX_PLAINTEXT + 1);
        assert_eq!(
            reason(format!(r#"{{"subscription":{sub},"payload":"{big}"}}"#)),
            Err("payload_too_large")
        );
        assert_eq!(
            endpoint_hint(br#"{"subscription":{"endpoint":"https://h/x"},"ttl":"bad"}"#).as_deref(),
            Some("https://h/x")
        );
    }
}
