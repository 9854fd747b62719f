//! Nordeus Pushkin's request formats (reference/platform-anchors.md §2): batches of
//! user-addressed notifications and of events, in JSON and in protobuf (proto2; hand-written
//! prost structs, so no protoc and no build script), turned into requests-topic records.

use super::gorush::FieldError;
use crate::platform::registry::{login_of, LOGIN_EVENT};
use crate::platform::requests::RequestRecord;
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;

/// `PushNotification{int64 login_id=1; string title=2; string content=3; string screen=4}`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PushNotification {
    #[prost(int64, optional, tag = "1")]
    pub login_id: Option<i64>,
    #[prost(string, optional, tag = "2")]
    pub title: Option<String>,
    #[prost(string, optional, tag = "3")]
    pub content: Option<String>,
    #[prost(string, optional, tag = "4")]
    pub screen: Option<String>,
}

/// `BatchNotificationRequest{repeated PushNotification notifications=1}`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct BatchNotificationRequest {
    #[prost(message, repeated, tag = "1")]
    pub notifications: Vec<PushNotification>,
}

/// `Pair{required string key=1; required string value=2}`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Pair {
    #[prost(string, required, tag = "1")]
    pub key: String,
    #[prost(string, required, tag = "2")]
    pub value: String,
}

/// `Event{int64 user_id=1; int32 event_id=2; int32 event_type=3; int64 timestamp=4;
/// repeated Pair pairs=5}`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Event {
    #[prost(int64, optional, tag = "1")]
    pub user_id: Option<i64>,
    #[prost(int32, optional, tag = "2")]
    pub event_id: Option<i32>,
    #[prost(int32, optional, tag = "3")]
    pub event_type: Option<i32>,
    #[prost(int64, optional, tag = "4")]
    pub timestamp: Option<i64>,
    #[prost(message, repeated, tag = "5")]
    pub pairs: Vec<Pair>,
}

/// `BatchEventRequest{repeated Event events=1}`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct BatchEventRequest {
    #[prost(message, repeated, tag = "1")]
    pub events: Vec<Event>,
}

/// Pushkin's JSON notification batch: `{"notifications":[{"login_id":1338,"title":...,
/// "content":...,"screen":...}]}` (the same fields as the protobuf).
#[derive(Debug, Deserialize)]
pub struct JsonNotifications {
    #[serde(deserialize_with = "super::capped::capped")]
    pub notifications: Vec<JsonNotification>,
}

#[derive(Debug, Deserialize)]
pub struct JsonNotification {
    pub login_id: Option<i64>,
    pub title: Option<String>,
    pub content: Option<String>,
    pub screen: Option<String>,
    /// Ours: an id the caller chose (a retry with it is accepted once).
    pub notif_id: Option<String>,
}

/// Pushkin's JSON event batch; `pairs` is an object of strings (numbers and booleans are
/// taken as their text).
#[derive(Debug, Deserialize)]
pub struct JsonEvents {
    #[serde(deserialize_with = "super::capped::capped")]
    pub events: Vec<JsonEvent>,
}

#[derive(Debug, Deserialize)]
pub struct JsonEvent {
    pub user_id: Option<i64>,
    pub event_id: Option<i32>,
    pub event_type: Option<i32>,
    pub timestamp: Option<i64>,
    #[serde(default)]
    pub pairs: BTreeMap<String, Value>,
}

impl From<PushNotification> for JsonNotification {
    fn from(p: PushNotification) -> Self {
        JsonNotification {
            login_id: p.login_id,
            title: p.title,
            content: p.content,
            screen: p.screen,
            notif_id: None,
        }
    }
}

impl From<Event> for JsonEvent {
    fn from(e: Event) -> Self {
        JsonEvent {
            user_id: e.user_id,
            event_id: e.event_id,
            event_type: e.event_type,
            timestamp: e.timestamp,
            pairs: e
                .pairs
                .into_iter()
                .map(|p| (p.key, Value::String(p.value)))
                .collect(),
        }
    }
}

/// A Pushkin batch, as JSON (`Self`) or as protobuf (`Proto`, its list field 1): a list by
/// the name `LIST`.
pub trait Batch: serde::de::DeserializeOwned {
    const LIST: &'static str;
    type Proto: prost::Message + Default + Into<Self>;
    type Item;
    fn into_list(self) -> Vec<Self::Item>;
}

impl From<BatchNotificationRequest> for JsonNotifications {
    fn from(b: BatchNotificationRequest) -> Self {
        let notifications = b.notifications.into_iter().map(Into::into).collect();
        JsonNotifications { notifications }
    }
}

impl Batch for JsonNotifications {
    const LIST: &'static str = "notifications";
    type Proto = BatchNotificationRequest;
    type Item = JsonNotification;
    fn into_list(self) -> Vec<JsonNotification> {
        self.notifications
    }
}

impl From<BatchEventRequest> for JsonEvents {
    fn from(b: BatchEventRequest) -> Self {
        let events = b.events.into_iter().map(Into::into).collect();
        JsonEvents { events }
    }
}

impl Batch for JsonEvents {
    const LIST: &'static str = "events";
    type Proto = BatchEventRequest;
    type Item = JsonEvent;
    fn into_list(self) -> Vec<JsonEvent> {
        self.events
    }
}

/// A notification checked: to whom, and what (the notif_id is filled in by the claim).
pub struct CheckedNotification {
    pub user_id: i64,
    pub title: String,
    pub content: String,
    pub screen: String,
    pub notif_id: Option<String>,
}

impl CheckedNotification {
    pub fn record(&self, notif_id: &str) -> RequestRecord {
        RequestRecord::Notification {
            user_id: self.user_id,
            title: self.title.clone(),
            content: self.content.clone(),
            screen: self.screen.clone(),
            notif_id: notif_id.to_owned(),
        }
    }
}

pub use crate::platform::outbound::MAX_TEXT;
use crate::platform::outbound::{unsendable, Notification, ALL_PLATFORMS};

/// The notif_id a push is checked with before its own is known: as long as the API's ids
/// (UUIDs).
pub const ID_PLACEHOLDER: &str = "00000000-0000-0000-0000-000000000000";

fn user(id: Option<i64>, field: String) -> Result<i64, FieldError> {
    match id {
        Some(id) if id > 0 => Ok(id),
        Some(id) => Err(FieldError {
            field,
            message: format!("{id} is no user id (a positive integer)"),
        }),
        None => Err(FieldError {
            field,
            message: "required".into(),
        }),
    }
}

/// Checks notification `i`. Its push is built for every platform a user's device can be on
/// and read by the parser `pusher run` uses: the byte count of its texts alone let through a
/// text that JSON's escapes take past the payload limit, which failed for every device.
pub fn check_notification(
    i: usize,
    n: JsonNotification,
    deeplink_base: &str,
) -> Result<CheckedNotification, FieldError> {
    let user_id = user(n.login_id, format!("notifications[{i}].login_id"))?;
    let title = n.title.unwrap_or_default();
    let content = n.content.unwrap_or_default();
    if title.is_empty() && content.is_empty() {
        return Err(FieldError {
            field: format!("notifications[{i}].content"),
            message: "required (or title)".into(),
        });
    }
    if title.len() + content.len() > MAX_TEXT {
        return Err(FieldError {
            field: format!("notifications[{i}].content"),
            message: format!("title and content over {MAX_TEXT} bytes"),
        });
    }
    let screen = n.screen.unwrap_or_default();
    check_screen(&screen).map_err(|message| FieldError {
        field: format!("notifications[{i}].screen"),
        message,
    })?;
    let notif_id = n.notif_id.filter(|id| !id.is_empty());
    if let Some(id) = &notif_id {
        super::gorush::check_notif_id(format!("notifications[{i}].notif_id"), id)?;
    }
    let push = Notification {
        user_id,
        title,
        content,
        screen,
        notif_id: notif_id
            .clone()
            .unwrap_or_else(|| ID_PLACEHOLDER.to_owned()),
        ..Notification::default()
    };
    if let Some((platform, e)) = unsendable(&push, deeplink_base, &ALL_PLATFORMS) {
        return Err(FieldError {
            field: format!("notifications[{i}].content"),
            message: format!("its push could never be sent to {platform}: {e}"),
        });
    }
    let Notification {
        title,
        content,
        screen,
        ..
    } = push;
    Ok(CheckedNotification {
        user_id,
        title,
        content,
        screen,
        notif_id,
    })
}

/// A screen fits a push and a URL ([`MAX_SCREEN`], as for a stored message).
pub fn check_screen(screen: &str) -> Result<(), String> {
    use crate::platform::outbound::MAX_SCREEN;
    if screen.len() > MAX_SCREEN || screen.chars().any(char::is_control) {
        return Err(format!("at most {MAX_SCREEN} bytes, no control characters"));
    }
    Ok(())
}

/// The longest value of an event's pair (a device token is at most
/// [`super::gorush::MAX_TOKEN_LEN`]).
pub const MAX_PAIR: usize = 2048;

pub fn check_event(i: usize, e: JsonEvent) -> Result<RequestRecord, FieldError> {
    let user_id = user(e.user_id, format!("events[{i}].user_id"))?;
    let event_id = e.event_id.ok_or_else(|| FieldError {
        field: format!("events[{i}].event_id"),
        message: "required".into(),
    })?;
    let mut pairs = BTreeMap::new();
    for (key, value) in e.pairs {
        let text = match value {
            Value::String(s) => s,
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            _ => {
                return Err(FieldError {
                    field: format!("events[{i}].pairs.{key}"),
                    message: "a string, a number or a boolean".into(),
                })
            }
        };
        // Stored as text by the router (a login's token, an opt-out's names): PostgreSQL
        // refuses a NUL, and a refused record would stop the router's partition. A value may
        // span lines (a chat message as a parameter: Pushkin takes it); a name may not.
        let line_break = |c: char| matches!(c, '\n' | '\r' | '\t');
        if key.chars().any(char::is_control)
            || text.chars().any(|c| c.is_control() && !line_break(c))
            || text.len() > MAX_PAIR
        {
            return Err(FieldError {
                field: format!("events[{i}].pairs.{key}"),
                message: format!(
                    "at most {MAX_PAIR} bytes, no control characters but line breaks and tabs \
                     in a value"
                ),
            });
        }
        pairs.insert(key, text);
    }
    // A login the router could not register (no token, no platform Pushkin has) would be
    // accepted here and dropped there. A `languageId` that is no number is not refused: the
    // router registers the device and keeps the user's language (a float encoder's "1.0").
    if event_id == LOGIN_EVENT {
        if let Err(unusable) = login_of(user_id, 0, &pairs) {
            return Err(FieldError {
                field: format!("events[{i}].pairs.{}", unusable.pair),
                message: unusable.why.into(),
            });
        }
    }
    Ok(RequestRecord::Event {
        id: String::new(),
        user_id,
        event_id,
        event_type: e.event_type.unwrap_or(0),
        timestamp: e.timestamp.unwrap_or(0),
        pairs,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use prost::Message;

    /// Bytes written by hand from the protobuf wire format (not by prost): field 1, a
    /// length-delimited PushNotification of login_id 1338 (varint), title "T", content "C".
    #[test]
    fn protobuf_from_the_wire_format() {
        let inner = [0x08, 0xba, 0x0a, 0x12, 0x01, b'T', 0x1a, 0x01, b'C'];
        let mut bytes = vec![0x0a, inner.len() as u8];
        bytes.extend_from_slice(&inner);
        let batch = BatchNotificationRequest::decode(bytes.as_slice()).unwrap();
        assert_eq!(batch.notifications[0].login_id, Some(1338));
        assert_eq!(batch.notifications[0].title.as_deref(), Some("T"));
        assert_eq!(batch.encode_to_vec(), bytes);
    }

    #[test]
    fn checks_name_the_field() {
        let n = JsonNotification {
            login_id: Some(0),
            title: Some("t".into()),
            content: None,
            screen: None,
            notif_id: None,
        };
        assert_eq!(
            check_notification(3, n, "").err().unwrap().field,
            "notifications[3].login_id"
        );
        let e: JsonEvent = serde_json::from_value(
            serde_json::json!({"user_id": 1, "event_id": 4001, "pairs": {"languageId": 2, "x": [1]}}),
        )
        .unwrap();
        assert_eq!(check_event(0, e).err().unwrap().field, "events[0].pairs.x");
    }

    /// A parameter may span lines (Pushkin takes it); a NUL, which PostgreSQL refuses, may
    /// not. Seen: one multi-line value refused the whole batch of 100 events.
    #[test]
    fn a_pair_value_may_span_lines() {
        let event = |value: &str| -> JsonEvent {
            serde_json::from_value(
                serde_json::json!({"user_id": 1, "event_id": 21, "pairs": {"a": value}}),
            )
            .unwrap()
        };
        assert!(check_event(0, event("line\nbreak\tand tab\r\n")).is_ok());
        assert_eq!(
            check_event(0, event("nul\u{0}")).err().unwrap().field,
            "events[0].pairs.a"
        );
    }
}
