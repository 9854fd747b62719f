//! Request bodies: the seed's legacy GCM message translated to an FCM HTTP v1 `messages:send`
//! body, a v1 envelope passed through, and the legacy `/fcm/send` body.
//!
//! Translation (the seed dropped non-string `data` values and applied TTL, collapse key and
//! priority only when a notification was present; we do neither):
//! - `to` -> `message.token`, or for `/topics/<name>` -> `message.topic: "<name>"` (v1 takes
//!   the bare name); `dry_run` -> `validate_only`
//! - `data` -> `message.data`, non-string values JSON-encoded (`3` -> `"3"`, `{"a":1}` ->
//!   `"{\"a\":1}"`)
//! - `notification.{title, body, image_url}` -> `message.notification.{title, body, image}`
//!   (the legacy API's `image` too); the other notification fields -> `android.notification`
//!   (`badge` -> `notification_count` when it is a number, `android_channel_id` ->
//!   `channel_id`); `restricted_package_name` -> `android.restricted_package_name`
//! - `time_to_live` -> `android.ttl` (`"3600s"`), `collapse_key` -> `android.collapse_key`,
//!   `priority` `high`/`normal` -> `android.priority` `HIGH`/`NORMAL`, for every message
//! - with a `push_expiry`, the TTL (a v1 envelope's `android.ttl` too) is at most the seconds
//!   left before it, and sent even when the message gives none (FCM would keep it four weeks)
//! - for an iPhone, as the legacy API did: `content_available` -> `apns.payload.aps`
//!   `content-available: 1`, `mutable_content` -> `mutable-content: 1`, and the notification's
//!   `sound`, numeric `badge` and `click_action` -> `sound`, `badge`, `category`
//! - for an iPhone reached through FCM, `apns.headers`: v1 carries none of the options above
//!   to APNs (the legacy API did; v1 sends priority 10 and keeps a message 30 days), so a
//!   data-only message goes at `apns-priority` 5 (`background` when `content_available`), a
//!   notification at the message's priority (`high` 10, `normal` 5), and the TTL becomes
//!   `apns-expiration` (now + TTL; 0 stays 0: deliver now or never)
//! - `message_id`, `message_type`, `delivery_receipt_requested` (XMPP-only) are not sent.

use crate::push::fcm::{json_len, MAX_TTL_SECS};
use crate::push::gcm::{is_topic_address, payload_limit, GcmMessage, GcmNotification};
use serde_json::{json, Map, Value};
use std::borrow::Cow;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TranslateError {
    #[error("message has no device token")]
    NoToken,
    #[error("payload (data + notification) is {size} bytes, over FCM's limit of {limit}")]
    PayloadTooLarge { size: usize, limit: usize },
    #[error("cannot encode the request: {0}")]
    Encode(String),
}

/// The TTL cap, in seconds, of a message with `left` before its `push_expiry`: FCM must not
/// keep it past the time the pusher would drop it (and never keeps one over four weeks).
pub fn ttl_cap(left: Duration) -> u32 {
    u32::try_from(left.as_secs().min(MAX_TTL_SECS)).unwrap_or(u32::MAX)
}

/// The TTL to send: the message's own, at most `cap`. Without one FCM keeps a message four
/// weeks, so a cap is sent even then.
fn capped_ttl(own: Option<u32>, cap: Option<u32>) -> Option<u32> {
    match cap {
        Some(cap) => Some(own.map_or(cap, |ttl| ttl.min(cap))),
        None => own,
    }
}

/// The `messages:send` body for `msg`; `ttl_cap` (seconds, see [`ttl_cap`]) bounds its TTL;
/// `now` (Unix time) dates its `apns-expiration`.
pub fn v1_body(
    msg: &GcmMessage,
    ttl_cap: Option<u32>,
    now: Duration,
) -> Result<Vec<u8>, TranslateError> {
    if msg.to.is_empty() {
        return Err(TranslateError::NoToken);
    }
    if let Some(raw) = &msg.v1_message {
        // The envelope's `message` object, byte for byte without a cap; re-encoded under one.
        let message = match ttl_cap {
            Some(cap) => Cow::Owned(envelope_with_ttl(raw, cap, now)?),
            None => Cow::Borrowed(raw.as_ref()),
        };
        let mut out = Vec::with_capacity(message.len() + 32);
        out.extend_from_slice(if msg.dry_run {
            b"{\"validate_only\":true,\"message\":"
        } else {
            b"{\"message\":"
        });
        out.extend_from_slice(&message);
        out.push(b'}');
        return Ok(out);
    }
    let mut message = Map::new();
    match msg.to.strip_prefix("/topics/") {
        Some(topic) => message.insert("topic".into(), Value::String(topic.to_string())),
        None => message.insert("token".into(), Value::String(msg.to.clone())),
    };
    let limit = payload_limit(is_topic_address(&msg.to));
    let data = string_data(&msg.data);
    let mut size = 0;
    if !data.is_empty() {
        let data = Value::Object(data);
        size += json_len(&data);
        message.insert("data".into(), data);
    }
    let mut android = Map::new();
    if let Some(n) = &msg.notification {
        let (top, android_notification) = split_notification(n);
        if !top.is_empty() {
            let top = Value::Object(top);
            size += json_len(&top);
            message.insert("notification".into(), top);
        }
        if !android_notification.is_empty() {
            let n = Value::Object(android_notification);
            size += json_len(&n);
            android.insert("notification".into(), n);
        }
    }
    if size > limit {
        return Err(TranslateError::PayloadTooLarge { size, limit });
    }
    let ttl = capped_ttl(msg.time_to_live, ttl_cap);
    if let Some(ttl) = ttl {
        android.insert("ttl".into(), Value::String(format!("{ttl}s")));
    }
    if let Some(key) = &msg.collapse_key {
        android.insert("collapse_key".into(), Value::String(key.clone()));
    }
    if let Some(p) = &msg.priority {
        android.insert("priority".into(), Value::String(p.to_ascii_uppercase()));
    }
    if let Some(package) = &msg.restricted_package_name {
        android.insert(
            "restricted_package_name".into(),
            Value::String(package.clone()),
        );
    }
    if !android.is_empty() {
        message.insert("android".into(), Value::Object(android));
    }
    let mut apns = Map::new();
    let headers = apns_headers(msg, ttl, now);
    if !headers.is_empty() {
        apns.insert("headers".into(), Value::Object(headers));
    }
    let aps = apns_aps(msg);
    if !aps.is_empty() {
        apns.insert("payload".into(), json!({ "aps": aps }));
    }
    if !apns.is_empty() {
        message.insert("apns".into(), Value::Object(apns));
    }
    let mut body = Map::new();
    if msg.dry_run {
        body.insert("validate_only".into(), Value::Bool(true));
    }
    body.insert("message".into(), Value::Object(message));
    serde_json::to_vec(&body).map_err(|e| TranslateError::Encode(e.to_string()))
}

/// The `aps` members the legacy API gave an iPhone and v1 does not: without them an iPhone
/// reached through FCM played no sound, showed no badge and ran no notification service
/// extension (gorush sets the same for its Android pushes).
fn apns_aps(msg: &GcmMessage) -> Map<String, Value> {
    let mut aps = Map::new();
    if msg.content_available == Some(true) {
        aps.insert("content-available".into(), json!(1));
    }
    if msg.mutable_content == Some(true) {
        aps.insert("mutable-content".into(), json!(1));
    }
    if let Some(n) = &msg.notification {
        if let Some(sound) = &n.sound {
            aps.insert("sound".into(), json!(sound));
        }
        if let Some(badge) = n
            .badge
            .as_deref()
            .and_then(|b| b.trim().parse::<u32>().ok())
        {
            aps.insert("badge".into(), json!(badge));
        }
        if let Some(category) = &n.click_action {
            aps.insert("category".into(), json!(category));
        }
    }
    aps
}

/// What APNs is told of a legacy message that FCM v1 does not tell it (see the module's notes):
/// without these an iPhone got a silent push at priority 10, which Apple asks never to be sent
/// (protocols.md §2.2: "A data-only message to iOS must use `apns-priority: 5`"), and kept a
/// message 30 days past its TTL and its `push_expiry`. FCM ignores them for Android tokens.
fn apns_headers(msg: &GcmMessage, ttl: Option<u32>, now: Duration) -> Map<String, Value> {
    let mut headers = Map::new();
    let priority = if msg.notification.is_none() {
        Some("5")
    } else {
        match msg.priority.as_deref() {
            Some(p) if p.eq_ignore_ascii_case("high") => Some("10"),
            Some(p) if p.eq_ignore_ascii_case("normal") => Some("5"),
            _ => None,
        }
    };
    if let Some(priority) = priority {
        headers.insert("apns-priority".into(), Value::String(priority.into()));
    }
    if msg.notification.is_none() && msg.content_available == Some(true) {
        headers.insert("apns-push-type".into(), Value::String("background".into()));
    }
    if let Some(ttl) = ttl {
        let at = expires_at(ttl, now).to_string();
        headers.insert("apns-expiration".into(), Value::String(at));
    }
    headers
}

/// `apns-expiration` for a TTL: the Unix second it ends (0, "now or never", stays 0).
fn expires_at(ttl: u32, now: Duration) -> u64 {
    if ttl == 0 {
        0
    } else {
        now.as_secs() + u64::from(ttl)
    }
}

/// An envelope's `message` with `android.ttl` at most `cap` seconds (added when absent), and
/// `apns.headers.apns-expiration` no later than `now + cap` (added when absent). A TTL or
/// expiration that cannot be read, or an `android` or `apns` that is no object, is left for
/// FCM to refuse.
fn envelope_with_ttl(raw: &[u8], cap: u32, now: Duration) -> Result<Vec<u8>, TranslateError> {
    let encode = |e: serde_json::Error| TranslateError::Encode(e.to_string());
    let mut message: Map<String, Value> = serde_json::from_slice(raw).map_err(encode)?;
    let android = message
        .entry("android")
        .or_insert_with(|| Value::Object(Map::new()));
    if let Some(android) = android.as_object_mut() {
        // Whole seconds of a protobuf Duration (`"3600s"`, `"1.5s"`).
        let own = android.get("ttl").map(|ttl| {
            ttl.as_str()
                .and_then(|t| t.strip_suffix('s'))
                .and_then(|t| t.split('.').next())
                .and_then(|t| t.parse::<u64>().ok())
        });
        let keep = match own {
            None => false,
            Some(None) => true,
            Some(Some(seconds)) => seconds < u64::from(cap),
        };
        if !keep {
            android.insert("ttl".into(), Value::String(format!("{cap}s")));
        }
    }
    let cap_at = expires_at(cap, now);
    let headers = message
        .entry("apns")
        .or_insert_with(|| Value::Object(Map::new()))
        .as_object_mut()
        .map(|apns| {
            apns.entry("headers")
                .or_insert_with(|| Value::Object(Map::new()))
        })
        .and_then(Value::as_object_mut);
    if let Some(headers) = headers {
        let own = headers
            .get("apns-expiration")
            .map(|at| at.as_str().and_then(|at| at.trim().parse::<u64>().ok()));
        // An unreadable one is FCM's to refuse; 0 ("now or never") is within any cap.
        if own.is_none() || own.is_some_and(|at| at.is_some_and(|at| at > cap_at)) {
            headers.insert("apns-expiration".into(), Value::String(cap_at.to_string()));
        }
    }
    serde_json::to_vec(&message).map_err(encode)
}

/// FCM v1 takes only string data values: strings pass, everything else is JSON-encoded.
pub fn string_data(data: &Map<String, Value>) -> Map<String, Value> {
    data.iter()
        .map(|(k, v)| {
            let s = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            (k.clone(), Value::String(s))
        })
        .collect()
}

/// Splits the legacy notification into v1's `notification` and `android.notification`.
fn split_notification(n: &GcmNotification) -> (Map<String, Value>, Map<String, Value>) {
    let mut top = Map::new();
    let mut android = Map::new();
    let put = |map: &mut Map<String, Value>, key: &str, v: Option<&String>| {
        if let Some(v) = v {
            map.insert(key.into(), Value::String(v.clone()));
        }
    };
    put(&mut top, "title", n.title.as_ref());
    put(&mut top, "body", n.body.as_ref());
    put(&mut top, "image", n.image_url.as_ref().or(n.image.as_ref()));
    put(&mut android, "channel_id", n.android_channel_id.as_ref());
    put(&mut android, "sound", n.sound.as_ref());
    put(&mut android, "click_action", n.click_action.as_ref());
    put(&mut android, "body_loc_key", n.body_loc_key.as_ref());
    put(&mut android, "title_loc_key", n.title_loc_key.as_ref());
    put(&mut android, "icon", n.icon.as_ref());
    put(&mut android, "tag", n.tag.as_ref());
    put(&mut android, "color", n.color.as_ref());
    for (key, args) in [
        ("body_loc_args", &n.body_loc_args),
        ("title_loc_args", &n.title_loc_args),
    ] {
        if let Some(args) = args {
            android.insert(key.into(), json!(args));
        }
    }
    if let Some(count) = n
        .badge
        .as_deref()
        .and_then(|b| b.trim().parse::<u32>().ok())
    {
        android.insert("notification_count".into(), json!(count));
    }
    (top, android)
}

/// The legacy `/fcm/send` body: `to` for one token, `registration_ids` for several. Data values
/// are sent as they are (the legacy API took any JSON value). `ttl_cap` bounds `time_to_live`.
pub fn legacy_body(
    msg: &GcmMessage,
    tokens: &[String],
    ttl_cap: Option<u32>,
) -> Result<Vec<u8>, TranslateError> {
    let mut body = Map::new();
    match tokens {
        [] => return Err(TranslateError::NoToken),
        [one] => {
            body.insert("to".into(), Value::String(one.clone()));
        }
        many => {
            body.insert("registration_ids".into(), json!(many));
        }
    }
    if let Some(raw) = &msg.v1_message {
        // A v1 envelope sent over the legacy API: carry its data and notification over.
        let v1: Value =
            serde_json::from_slice(raw).map_err(|e| TranslateError::Encode(e.to_string()))?;
        for key in ["data", "notification"] {
            if let Some(v) = v1.get(key) {
                body.insert(key.into(), v.clone());
            }
        }
    } else {
        if !msg.data.is_empty() {
            body.insert("data".into(), Value::Object(msg.data.clone()));
        }
        if let Some(n) = &msg.notification {
            body.insert("notification".into(), legacy_notification(n));
        }
    }
    let mut opt = |k: &str, v: Option<Value>| {
        if let Some(v) = v {
            body.insert(k.into(), v);
        }
    };
    opt(
        "time_to_live",
        capped_ttl(msg.time_to_live, ttl_cap).map(|t| json!(t)),
    );
    opt("collapse_key", msg.collapse_key.clone().map(Value::String));
    opt("priority", msg.priority.clone().map(Value::String));
    opt("content_available", msg.content_available.map(Value::Bool));
    opt("mutable_content", msg.mutable_content.map(Value::Bool));
    opt(
        "restricted_package_name",
        msg.restricted_package_name.clone().map(Value::String),
    );
    opt("dry_run", msg.dry_run.then_some(Value::Bool(true)));
    let size = ["data", "notification"]
        .iter()
        .filter_map(|k| body.get(*k))
        .map(json_len)
        .sum::<usize>();
    let limit = payload_limit(matches!(tokens, [one] if is_topic_address(one)));
    if size > limit {
        return Err(TranslateError::PayloadTooLarge { size, limit });
    }
    serde_json::to_vec(&body).map_err(|e| TranslateError::Encode(e.to_string()))
}

fn legacy_notification(n: &GcmNotification) -> Value {
    let mut m = Map::new();
    let fields = [
        ("title", n.title.as_ref()),
        ("body", n.body.as_ref()),
        ("sound", n.sound.as_ref()),
        ("click_action", n.click_action.as_ref()),
        ("body_loc_key", n.body_loc_key.as_ref()),
        ("title_loc_key", n.title_loc_key.as_ref()),
        ("image", n.image_url.as_ref().or(n.image.as_ref())),
        ("android_channel_id", n.android_channel_id.as_ref()),
        ("icon", n.icon.as_ref()),
        ("tag", n.tag.as_ref()),
        ("color", n.color.as_ref()),
        ("badge", n.badge.as_ref()),
    ];
    for (k, v) in fields {
        if let Some(v) = v {
            m.insert(k.into(), Value::String(v.clone()));
        }
    }
    for (k, v) in [
        ("body_loc_args", &n.body_loc_args),
        ("title_loc_args", &n.title_loc_args),
    ] {
        if let Some(v) = v {
            m.insert(k.into(), json!(v));
        }
    }
    Value::Object(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::push::message::parse_gcm;

    const NOW: Duration = Duration::from_secs(1_700_000_000);

    fn v1(kafka: &str) -> Value {
        let msg = parse_gcm(kafka.as_bytes()).unwrap();
        serde_json::from_slice(&v1_body(&msg, None, NOW).unwrap()).unwrap()
    }

    #[test]
    fn seed_messages_translate_to_v1() {
        let cases = [
            // The seed's bench message: a notification, dry run.
            (
                r#"{"to":"tok","notification":{"title":"Come play!","body":"Helena miss you! come play!"},"dry_run":true,"metadata":{"jobId":"j1"}}"#,
                json!({"validate_only":true,"message":{"token":"tok",
                    "notification":{"title":"Come play!","body":"Helena miss you! come play!"},
                    "data":{"jobId":"j1"}}}),
            ),
            // Data only: TTL, collapse key and priority still apply; non-strings are encoded.
            (
                r#"{"to":"tok","data":{"alert":"Hello","n":3,"ok":true,"o":{"a":[1]},"z":null},"time_to_live":3600,"collapse_key":"c","priority":"high"}"#,
                json!({"message":{"token":"tok",
                    "data":{"alert":"Hello","n":"3","ok":"true","o":"{\"a\":[1]}","z":"null"},
                    "android":{"ttl":"3600s","collapse_key":"c","priority":"HIGH"},
                    "apns":{"headers":{"apns-priority":"5","apns-expiration":"1700003600"}}}}),
            ),
            // A legacy topic address: v1 wants the bare name as `topic`.
            (
                r#"{"to":"/topics/news","data":{"k":"v"}}"#,
                json!({"message":{"topic":"news","data":{"k":"v"},
                    "apns":{"headers":{"apns-priority":"5"}}}}),
            ),
            (
                r#"{"to":"tok","priority":"normal","time_to_live":0}"#,
                json!({"message":{"token":"tok","android":{"ttl":"0s","priority":"NORMAL"},
                    "apns":{"headers":{"apns-priority":"5","apns-expiration":"0"}}}}),
            ),
            // Android-only notification fields; a numeric badge; content_available.
            (
                r#"{"to":"tok","notification":{"title":"t","image_url":"https://i","sound":"default","tag":"x","body_loc_args":["a","b"],"badge":"3"},"content_available":true}"#,
                json!({"message":{"token":"tok",
                    "notification":{"title":"t","image":"https://i"},
                    "android":{"notification":{"sound":"default","tag":"x","body_loc_args":["a","b"],"notification_count":3}},
                    "apns":{"payload":{"aps":{"content-available":1,"sound":"default","badge":3}}}}}),
            ),
            // The legacy API's own names: `image`, `android_channel_id`,
            // `restricted_package_name` (they were dropped without a word).
            (
                r#"{"to":"tok","notification":{"title":"t","image":"https://i","android_channel_id":"promo"},"restricted_package_name":"com.x"}"#,
                json!({"message":{"token":"tok",
                    "notification":{"title":"t","image":"https://i"},
                    "android":{"notification":{"channel_id":"promo"},"restricted_package_name":"com.x"}}}),
            ),
            // What the legacy API told an iPhone: sound, badge, category, mutable-content.
            (
                r#"{"to":"tok","notification":{"title":"t","sound":"ping.caf","badge":2,"click_action":"REPLY"},"mutable_content":true}"#,
                json!({"message":{"token":"tok","notification":{"title":"t"},
                    "android":{"notification":{"sound":"ping.caf","click_action":"REPLY","notification_count":2}},
                    "apns":{"payload":{"aps":{"mutable-content":1,"sound":"ping.caf","badge":2,"category":"REPLY"}}}}}),
            ),
            // A silent push: priority 5 and `background` for an iPhone, as Apple asks.
            (
                r#"{"to":"tok","data":{"k":"v"},"content_available":true,"priority":"high"}"#,
                json!({"message":{"token":"tok","data":{"k":"v"},"android":{"priority":"HIGH"},
                    "apns":{"headers":{"apns-priority":"5","apns-push-type":"background"},
                            "payload":{"aps":{"content-available":1}}}}}),
            ),
            // A notification keeps its priority on iPhones too.
            (
                r#"{"to":"tok","notification":{"title":"t"},"priority":"normal","time_to_live":60}"#,
                json!({"message":{"token":"tok","notification":{"title":"t"},
                    "android":{"ttl":"60s","priority":"NORMAL"},
                    "apns":{"headers":{"apns-priority":"5","apns-expiration":"1700000060"}}}}),
            ),
            // Metadata does not override data.
            (
                r#"{"to":"tok","data":{"jobId":"mine"},"metadata":{"jobId":"theirs","extra":1}}"#,
                json!({"message":{"token":"tok","data":{"jobId":"mine","extra":"1"},
                    "apns":{"headers":{"apns-priority":"5"}}}}),
            ),
        ];
        for (kafka, want) in cases {
            assert_eq!(v1(kafka), want, "{kafka}");
        }
    }

    #[test]
    fn v1_envelopes_pass_through() {
        let kafka =
            r#"{"message":{"token":"tok","data":{"k":"v"},"android":{"ttl":"5s"}},"dry_run":true}"#;
        let msg = parse_gcm(kafka.as_bytes()).unwrap();
        let body = String::from_utf8(v1_body(&msg, None, NOW).unwrap()).unwrap();
        assert_eq!(
            body,
            r#"{"validate_only":true,"message":{"token":"tok","data":{"k":"v"},"android":{"ttl":"5s"}}}"#
        );
    }

    #[test]
    fn a_ttl_cap_bounds_every_body_s_ttl() {
        let ttl = |kafka: &str, cap| {
            let msg = parse_gcm(kafka.as_bytes()).unwrap();
            let v1: Value = serde_json::from_slice(&v1_body(&msg, cap, NOW).unwrap()).unwrap();
            let legacy: Value = serde_json::from_slice(
                &legacy_body(&msg, std::slice::from_ref(&msg.to), cap).unwrap(),
            )
            .unwrap();
            (
                v1["message"]["android"]["ttl"].clone(),
                legacy["time_to_live"].clone(),
                v1["message"]["apns"]["headers"]["apns-expiration"].clone(),
            )
        };
        // Each: the v1 TTL, the legacy TTL, and what an iPhone reached through v1 is told.
        let cases = [
            (
                r#"{"to":"t","time_to_live":3600}"#,
                Some(60),
                json!(["60s", 60, "1700000060"]),
            ),
            (
                r#"{"to":"t","time_to_live":30}"#,
                Some(60),
                json!(["30s", 30, "1700000030"]),
            ),
            // None of its own: FCM would keep it four weeks, APNs 30 days.
            (r#"{"to":"t"}"#, Some(60), json!(["60s", 60, "1700000060"])),
            (r#"{"to":"t"}"#, None, json!([null, null, null])),
            (
                r#"{"message":{"token":"t","android":{"ttl":"3600s"}}}"#,
                Some(60),
                json!(["60s", 60, "1700000060"]),
            ),
            (
                r#"{"message":{"token":"t","android":{"ttl":"1.5s"}}}"#,
                Some(60),
                json!(["1.5s", 60, "1700000060"]),
            ),
            (
                r#"{"message":{"token":"t","data":{"k":"v"}}}"#,
                Some(60),
                json!(["60s", 60, "1700000060"]),
            ),
            // An envelope's own expiration is kept when it ends sooner, lowered when later.
            (
                r#"{"message":{"token":"t","apns":{"headers":{"apns-expiration":"0"}}}}"#,
                Some(60),
                json!(["60s", 60, "0"]),
            ),
            (
                r#"{"message":{"token":"t","apns":{"headers":{"apns-expiration":"1800000000"}}}}"#,
                Some(60),
                json!(["60s", 60, "1700000060"]),
            ),
        ];
        for (kafka, cap, want) in cases {
            let (v1, legacy, expiration) = ttl(kafka, cap);
            assert_eq!(json!([v1, legacy, expiration]), want, "{kafka} {cap:?}");
        }
        assert_eq!(ttl_cap(Duration::from_secs(90_000_000)), 2_419_200);
        assert_eq!(ttl_cap(Duration::from_millis(59_999)), 59);
    }

    #[test]
    fn topic_messages_have_half_the_room() {
        let mut msg = GcmMessage {
            to: "/topics/news".into(),
            ..Default::default()
        };
        msg.data.insert("k".into(), Value::String("x".repeat(3000)));
        let refused = |r: Result<Vec<u8>, TranslateError>| match r {
            Err(TranslateError::PayloadTooLarge { limit, .. }) => Some(limit),
            _ => None,
        };
        assert_eq!(refused(v1_body(&msg, None, NOW)), Some(2048));
        assert_eq!(
            refused(legacy_body(&msg, &[msg.to.clone()], None)),
            Some(2048)
        );
        // The same data to a device fits.
        msg.to = "tok".into();
        assert_eq!(refused(v1_body(&msg, None, NOW)), None);
        assert_eq!(refused(legacy_body(&msg, &[msg.to.clone()], None)), None);
    }

    #[test]
    fn oversize_and_tokenless_messages_are_refused() {
        let big = "x".repeat(crate::push::gcm::MAX_PAYLOAD);
        let mut msg = GcmMessage {
            to: "tok".into(),
            ..Default::default()
        };
        msg.data.insert("big".into(), Value::String(big));
        assert!(matches!(
            v1_body(&msg, None, NOW),
            Err(TranslateError::PayloadTooLarge { .. })
        ));
        assert!(matches!(
            legacy_body(&msg, &["tok".into()], None),
            Err(TranslateError::PayloadTooLarge { .. })
        ));
        msg.to.clear();
        assert_eq!(v1_body(&msg, None, NOW), Err(TranslateError::NoToken));
        assert_eq!(legacy_body(&msg, &[], None), Err(TranslateError::NoToken));
    }

    #[test]
    fn legacy_bodies_fan_out() {
        let msg = parse_gcm(
            br#"{"to":"a","data":{"n":1},"notification":{"title":"t"},"dry_run":true,"time_to_live":60}"#,
        )
        .unwrap();
        let one: Value =
            serde_json::from_slice(&legacy_body(&msg, &["a".into()], None).unwrap()).unwrap();
        assert_eq!(
            one,
            json!({"to":"a","data":{"n":1},"notification":{"title":"t"},"dry_run":true,"time_to_live":60})
        );
        let many: Value =
            serde_json::from_slice(&legacy_body(&msg, &["a".into(), "b".into()], None).unwrap())
                .unwrap();
        assert_eq!(many["registration_ids"], json!(["a", "b"]));
        assert!(many.get("to").is_none());
        // The legacy API's own fields go back as they came (the seed's `image_url` as `image`).
        let msg = parse_gcm(
            br#"{"to":"a","notification":{"image_url":"https://i","android_channel_id":"promo"},"restricted_package_name":"com.x"}"#,
        )
        .unwrap();
        let body: Value =
            serde_json::from_slice(&legacy_body(&msg, &["a".into()], None).unwrap()).unwrap();
        assert_eq!(
            body,
            json!({"to":"a","notification":{"image":"https://i","android_channel_id":"promo"},
                "restricted_package_name":"com.x"})
        );
    }
}
