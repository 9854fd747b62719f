//! gorush's `POST /api/push` (reference/platform-anchors.md §1): its request as types, and each
//! (notification, token) as one message in this pusher's Kafka format (DESIGN.md §4) with
//! `metadata.notif_id`. Pure: no I/O, so every rule here has a unit test.

use crate::push::message::{parse_apns, parse_gcm, parse_webpush};
use crate::push::webpush::{check_subscription, EndpointRules, Keys, Subscription};
use crate::push::Platform;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::collections::HashMap;

/// gorush's request body. Fields that do not change what a device shows (`retry`, Huawei's,
/// ...) are accepted and ignored, so a body written for gorush loads unchanged; those that
/// would (FCM's pass-through blocks, topics and conditions) are carried over or refused
/// naming the field, never dropped without a word.
#[derive(Debug, Deserialize)]
pub struct PushRequest {
    /// At most `api.maxNotifications`, counted while decoding.
    #[serde(deserialize_with = "super::capped::capped")]
    pub notifications: Vec<Notification>,
    /// gorush's sync mode, per request: wait (up to `api.syncTimeout`) for the verdicts and
    /// answer with the failed ones in `logs`. Needs `pusher run` and `pusher results` running.
    #[serde(default)]
    pub sync: bool,
}

/// One gorush notification: the fields this pusher can carry to APNs or FCM.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Notification {
    /// `""` is none (gorush's zero value).
    #[serde(deserialize_with = "empty_is_none")]
    pub notif_id: Option<String>,
    #[serde(deserialize_with = "null_is_default")]
    pub tokens: Vec<String>,
    /// One more token (gorush appends it to `tokens`).
    pub to: Option<String>,
    /// Browsers (platform 4, our extension: gorush has no web push): their subscriptions
    /// instead of tokens.
    #[serde(deserialize_with = "null_is_default")]
    pub subscriptions: Vec<Subscription>,
    pub platform: Option<i64>,
    pub message: Option<String>,
    pub title: Option<String>,
    /// `"high"` or `"normal"`.
    pub priority: Option<String>,
    #[serde(deserialize_with = "null_is_default")]
    pub content_available: bool,
    #[serde(deserialize_with = "null_is_default")]
    pub mutable_content: bool,
    /// A name, or (iOS critical alerts) an object.
    pub sound: Option<Value>,
    pub data: Option<Map<String, Value>>,
    pub image: Option<String>,
    // iOS
    pub topic: Option<String>,
    pub badge: Option<i64>,
    pub category: Option<String>,
    pub alert: Option<Map<String, Value>>,
    pub push_type: Option<String>,
    pub collapse_id: Option<String>,
    /// Accepted, not sent: one `apns-id` for many tokens would make APNs see duplicates.
    pub apns_id: Option<String>,
    /// Unix seconds; 0: deliver now or never (APNs stores nothing).
    pub expiration: Option<i64>,
    /// gorush's name is `thread-id`.
    #[serde(alias = "thread-id")]
    pub thread_id: Option<String>,
    /// `passive`, `active`, `time-sensitive` or `critical` (aps `interruption-level`).
    pub interruption_level: Option<String>,
    /// Safari's `url-args`.
    #[serde(rename = "url-args", alias = "url_args")]
    pub url_args: Option<Vec<String>>,
    /// A critical alert's sound (gorush's `name` and `volume`).
    pub name: Option<String>,
    pub volume: Option<f64>,
    // iOS Live Activities: `aps` fields, set as gorush sets them (a date or timestamp of 0
    // and an empty string or object are not given).
    pub event: Option<String>,
    #[serde(rename = "content-state")]
    pub content_state: Option<Map<String, Value>>,
    pub timestamp: Option<i64>,
    #[serde(rename = "stale-date")]
    pub stale_date: Option<i64>,
    #[serde(rename = "dismissal-date")]
    pub dismissal_date: Option<i64>,
    #[serde(rename = "attributes-type")]
    pub attributes_type: Option<String>,
    pub attributes: Option<Map<String, Value>>,
    #[serde(rename = "relevance-score")]
    pub relevance_score: Option<f64>,
    // Android
    pub time_to_live: Option<u32>,
    pub collapse_key: Option<String>,
    #[serde(deserialize_with = "null_is_default")]
    pub dry_run: bool,
    /// FCM's notification (`title`, `body`, `image`), under the notification's own fields.
    pub notification: Option<Map<String, Value>>,
    /// FCM's pass-through blocks and targets, which this pusher cannot carry: refused.
    pub android: Option<Value>,
    pub apns: Option<Value>,
    pub webpush: Option<Value>,
    pub fcm_options: Option<Value>,
    pub condition: Option<String>,
}

/// `null` as the type's default, as Go's JSON decoding leaves a zero value: a gorush client
/// that sends `"tokens": null` beside `to`, or `"content_available": null`, is not refused.
fn null_is_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// `""` (and `null`) as none.
fn empty_is_none<'de, D>(d: D) -> Result<Option<String>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    Ok(Option::<String>::deserialize(d)?.filter(|s| !s.is_empty()))
}

/// A field given with something in it (`{}`, `""` and `null` are not: gorush ignores them too).
fn given(value: Option<&Value>) -> bool {
    match value {
        None | Some(Value::Null) => false,
        Some(Value::Object(m)) => !m.is_empty(),
        Some(Value::String(s)) => !s.is_empty(),
        Some(Value::Array(a)) => !a.is_empty(),
        Some(_) => true,
    }
}

/// Refuses what a gorush body may hold that this pusher cannot send as gorush would: its
/// device would get another push than asked for (a data-only one for FCM's `notification`
/// block, say), after a 200.
fn check_unsupported(
    n: &Notification,
    platform: Platform,
    at: &dyn Fn(&str) -> String,
) -> Result<(), FieldError> {
    let blocks = [
        ("android", &n.android),
        ("apns", &n.apns),
        ("webpush", &n.webpush),
        ("fcm_options", &n.fcm_options),
    ];
    for (field, value) in blocks {
        if given(value.as_ref()) {
            return Err(FieldError::new(
                at(field),
                "FCM's pass-through blocks are not supported here: use the notification's own \
                 fields (title, message, image, sound, priority, time_to_live, collapse_key, data)",
            ));
        }
    }
    if n.condition.as_deref().is_some_and(|c| !c.is_empty()) {
        return Err(FieldError::new(
            at("condition"),
            "FCM topics and conditions are not supported here: send to tokens",
        ));
    }
    if n.topic.as_deref().is_some_and(|t| !t.is_empty()) {
        match platform {
            Platform::Apns => {}
            Platform::Gcm => {
                return Err(FieldError::new(
                    at("topic"),
                    "for Android it names an FCM topic, not supported here: send to tokens",
                ))
            }
            Platform::WebPush => {
                return Err(FieldError::new(
                    at("topic"),
                    "a browser's push takes collapse_key as its Topic",
                ))
            }
        }
    }
    if let Some(notification) = n.notification.as_ref().filter(|m| !m.is_empty()) {
        if platform != Platform::Gcm {
            return Err(FieldError::new(
                at("notification"),
                "only Android (platform 2) reads it: use title and message",
            ));
        }
        for (key, value) in notification {
            let ok =
                FCM_NOTIFICATION.contains(&key.as_str()) && (value.is_string() || value.is_null());
            if !ok {
                return Err(FieldError::new(
                    at(&format!("notification.{key}")),
                    "not supported here: notification takes title, body, image, icon, color, \
                     tag and click_action (strings)",
                ));
            }
            // FCM v1 refuses any other form (INVALID_ARGUMENT): every push would fail after
            // a 200.
            let color = value.as_str().filter(|c| key == "color" && !c.is_empty());
            if color.is_some_and(|c| !is_rgb_color(c)) {
                return Err(FieldError::new(
                    at("notification.color"),
                    "#rrggbb (FCM takes no other form)",
                ));
            }
        }
    }
    if n.expiration.is_some_and(|e| e < 0) {
        return Err(FieldError::new(
            at("expiration"),
            "Unix seconds, 0 or more (0: deliver now or never)",
        ));
    }
    Ok(())
}

/// The members of gorush's FCM `notification` block carried to the device (the others of the
/// README's examples, `icon` and `color`, go to FCM's `android.notification`).
const FCM_NOTIFICATION: [&str; 7] = [
    "title",
    "body",
    "image",
    "icon",
    "color",
    "tag",
    "click_action",
];

/// `#rrggbb`, the one form of a color FCM v1 takes.
fn is_rgb_color(c: &str) -> bool {
    c.len() == 7 && c.starts_with('#') && c.bytes().skip(1).all(|b| b.is_ascii_hexdigit())
}

/// A request problem, naming the field (`notifications[2].platform`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    fn new(field: impl Into<String>, message: impl Into<String>) -> FieldError {
        FieldError {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// A caller's `notif_id`: 1 to 200 bytes, no control characters. It becomes a key in
/// PostgreSQL (which refuses a NUL, and an index entry past ~2.7 KB) and in every record.
pub fn check_notif_id(field: String, id: &str) -> Result<(), FieldError> {
    if !crate::platform::requests::is_valid_notif_id(id) {
        return Err(FieldError::new(
            field,
            "1 to 200 characters, no control characters",
        ));
    }
    Ok(())
}

pub use crate::platform::registry::MAX_TOKEN_LEN;

/// gorush's platform numbers.
pub fn platform(n: Option<i64>, field: &str) -> Result<Platform, FieldError> {
    match n {
        Some(1) => Ok(Platform::Apns),
        Some(2) => Ok(Platform::Gcm),
        Some(4) => Ok(Platform::WebPush),
        Some(3) => Err(FieldError::new(
            field,
            "3 (Huawei) is not supported here: 1 is iOS, 2 is Android, 4 is a browser (web push)",
        )),
        Some(n) => Err(FieldError::new(
            field,
            format!("{n} is no platform: 1 is iOS, 2 is Android, 4 is a browser (web push)"),
        )),
        None => Err(FieldError::new(
            field,
            "required: 1 is iOS, 2 is Android, 4 is a browser (web push)",
        )),
    }
}

/// One notification checked and turned into a record template: the Kafka message with the
/// token left out, and the distinct tokens it goes to.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub platform: Platform,
    /// Distinct tokens; a browser's is its subscription's endpoint.
    pub tokens: Vec<String>,
    /// Web push: the keys of each endpoint.
    keys: HashMap<String, Keys>,
    /// The message's members but the token and the metadata, serialized once: `"a":1,"b":2`
    /// (empty when there are none).
    members: Vec<u8>,
}

impl Prepared {
    fn new(
        platform: Platform,
        tokens: Vec<String>,
        keys: HashMap<String, Keys>,
        template: &Map<String, Value>,
    ) -> Prepared {
        // A map of JSON values always serializes: `{` members `}`.
        let object = serde_json::to_vec(template).unwrap_or_else(|_| b"{}".to_vec());
        let members = object
            .get(1..object.len().saturating_sub(1))
            .unwrap_or_default()
            .to_vec();
        Prepared {
            platform,
            tokens,
            keys,
            members,
        }
    }

    /// About the bytes of its records: per token, the message, the token as its key, and the
    /// metadata with a notif_id (and a browser's keys).
    pub fn record_bytes(&self) -> usize {
        self.tokens
            .iter()
            .map(|t| self.members.len() + 2 * t.len() + 512)
            .sum()
    }

    /// The Kafka message for one token, carrying `notif_id` in its metadata. Spliced from the
    /// template's members serialized once: cloning the template per token (a deep copy of its
    /// JSON values, then their drop) cost the API thread 1.15-1.5x the CPU per notification.
    /// No template member is named like the token's or `metadata` (the templates below), so
    /// the object has no duplicate keys.
    pub fn message(&self, token: &str, notif_id: &str) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.members.len() + token.len() + notif_id.len() + 64);
        // Strings and maps of JSON values always serialize into a Vec.
        let _ = match self.platform {
            Platform::Apns => {
                out.extend_from_slice(b"{\"DeviceToken\":");
                serde_json::to_writer(&mut out, token)
            }
            Platform::Gcm => {
                out.extend_from_slice(b"{\"to\":");
                serde_json::to_writer(&mut out, token)
            }
            Platform::WebPush => {
                out.extend_from_slice(b"{\"subscription\":");
                let subscription = json!({"endpoint": token, "keys": self.keys.get(token)});
                serde_json::to_writer(&mut out, &subscription)
            }
        };
        out.extend_from_slice(b",\"metadata\":{\"notif_id\":");
        let _ = serde_json::to_writer(&mut out, notif_id);
        out.push(b'}');
        if !self.members.is_empty() {
            out.push(b',');
            out.extend_from_slice(&self.members);
        }
        out.push(b'}');
        out
    }
}

/// Checks notification `i` and builds its template. The template is run through the same
/// parser `pusher run` uses, so anything accepted here is a message the pusher can send.
pub fn prepare(i: usize, n: &Notification, rules: EndpointRules) -> Result<Prepared, FieldError> {
    let at = |field: &str| format!("notifications[{i}].{field}");
    let platform = platform(n.platform, &at("platform"))?;
    check_unsupported(n, platform, &at)?;
    let mut keys = HashMap::new();
    if platform == Platform::WebPush {
        if !n.tokens.is_empty() || n.to.as_deref().is_some_and(|t| !t.is_empty()) {
            return Err(FieldError::new(
                at("tokens"),
                "a browser has no token: give its subscriptions",
            ));
        }
        for (j, s) in n.subscriptions.iter().enumerate() {
            check_subscription(s, rules).map_err(|e| {
                FieldError::new(
                    format!("notifications[{i}].subscriptions[{j}]"),
                    e.to_string(),
                )
            })?;
            keys.insert(s.endpoint.clone(), s.keys.clone());
        }
    } else if !n.subscriptions.is_empty() {
        return Err(FieldError::new(
            at("subscriptions"),
            "only browsers (platform 4) have subscriptions",
        ));
    }
    let given: Vec<String> = match platform {
        Platform::WebPush => n.subscriptions.iter().map(|s| s.endpoint.clone()).collect(),
        // gorush's `to` is one more token.
        _ => n
            .tokens
            .iter()
            .chain(n.to.as_ref().filter(|t| !t.is_empty()))
            .cloned()
            .collect(),
    };
    let mut tokens: Vec<String> = Vec::with_capacity(given.len());
    // Duplicates dropped through a set: a body of the size limit holds ~150,000 short tokens,
    // and a scan of the list per token held a runtime thread for seconds.
    let mut seen: std::collections::HashSet<&str> =
        std::collections::HashSet::with_capacity(given.len());
    for (j, token) in given.iter().enumerate() {
        if let Some(problem) = crate::platform::registry::token_problem(platform, token) {
            return Err(FieldError::new(
                format!("notifications[{i}].tokens[{j}]"),
                problem,
            ));
        }
        if seen.insert(token) {
            tokens.push(token.clone());
        }
    }
    if tokens.is_empty() {
        return Err(match platform {
            Platform::WebPush => {
                FieldError::new(at("subscriptions"), "required: at least one subscription")
            }
            _ => FieldError::new(at("tokens"), "required: at least one token"),
        });
    }
    if let Some(id) = &n.notif_id {
        check_notif_id(at("notif_id"), id)?;
    }
    // `alert` and a Live Activity's fields are iOS's: an Android push of only an alert was
    // sent empty.
    let ios_content = platform == Platform::Apns
        && (n.alert.as_ref().is_some_and(|a| !a.is_empty())
            || n.event.as_deref().is_some_and(|e| !e.is_empty())
            || n.content_state.as_ref().is_some_and(|c| !c.is_empty()));
    let empty = n.message.as_deref().is_none_or(str::is_empty)
        && n.title.as_deref().is_none_or(str::is_empty)
        && fcm_notification(n, "title").is_none()
        && fcm_notification(n, "body").is_none()
        && !ios_content
        && n.data.as_ref().is_none_or(Map::is_empty)
        && !n.content_available;
    if empty {
        let also = match platform {
            Platform::Apns => "title, alert, data, content_available, event, content-state",
            _ => "title, data, content_available",
        };
        return Err(FieldError::new(
            at("message"),
            format!("required (or {also})"),
        ));
    }
    let priority = match n.priority.as_deref() {
        None | Some("") => None,
        Some(p) if p.eq_ignore_ascii_case("high") => Some("high"),
        Some(p) if p.eq_ignore_ascii_case("normal") => Some("normal"),
        Some(other) => {
            return Err(FieldError::new(
                at("priority"),
                format!("{other:?}: high or normal"),
            ))
        }
    };
    let template = match platform {
        Platform::Apns => apns_template(n, priority),
        Platform::Gcm => gcm_template(n, priority),
        Platform::WebPush => webpush_template(n, priority),
    };
    let prepared = Prepared::new(platform, tokens, keys, &template);
    // Checked with the id its records will carry, or one as long as the API's (a UUID): the
    // metadata counts against the payload limit in `pusher run`'s parsers.
    let sample = prepared.message(
        &prepared.tokens[0],
        n.notif_id
            .as_deref()
            .unwrap_or(super::pushkin::ID_PLACEHOLDER),
    );
    let parsed = match platform {
        Platform::Apns => parse_apns(&sample).map(|_| ()),
        Platform::Gcm => parse_gcm(&sample).map(|_| ()),
        Platform::WebPush => parse_webpush(&sample).map(|_| ()),
    };
    parsed.map_err(|e| FieldError::new(format!("notifications[{i}]"), e.to_string()))?;
    Ok(prepared)
}

/// gorush's APNs payload: `aps` from the notification's fields, `data` at the top level.
fn apns_template(n: &Notification, priority: Option<&str>) -> Map<String, Value> {
    let mut aps = Map::new();
    let title = n.title.as_deref().filter(|t| !t.is_empty());
    let body = n.message.as_deref().filter(|m| !m.is_empty());
    match (&n.alert, title) {
        (Some(alert), _) if !alert.is_empty() => {
            let mut alert = alert.clone();
            if let Some(t) = title {
                alert.entry("title").or_insert_with(|| json!(t));
            }
            if let Some(b) = body {
                alert.entry("body").or_insert_with(|| json!(b));
            }
            aps.insert("alert".into(), Value::Object(alert));
        }
        (_, Some(t)) => {
            let mut alert = json!({"title": t});
            if let Some(b) = body {
                alert["body"] = json!(b);
            }
            aps.insert("alert".into(), alert);
        }
        _ => {
            if let Some(b) = body {
                aps.insert("alert".into(), json!(b));
            }
        }
    }
    // A negative badge is left out, as gorush does (0 clears it).
    if let Some(badge) = n.badge.filter(|b| *b >= 0) {
        aps.insert("badge".into(), json!(badge));
    }
    if let Some(sound) = n.sound.as_ref().filter(|s| given(Some(s))) {
        aps.insert("sound".into(), sound.clone());
    }
    // gorush's `name` and `volume` make the sound a critical alert's (apns2's defaults for
    // what is not given).
    let name = n.name.as_deref().filter(|s| !s.is_empty());
    let volume = n.volume.filter(|v| *v > 0.0);
    if name.is_some() || volume.is_some() {
        aps.insert(
            "sound".into(),
            json!({"critical": 1, "name": name.unwrap_or("default"),
                   "volume": volume.unwrap_or(1.0)}),
        );
    }
    if let Some(level) = n.interruption_level.as_deref().filter(|l| !l.is_empty()) {
        aps.insert("interruption-level".into(), json!(level));
    }
    if let Some(args) = n.url_args.as_ref().filter(|a| !a.is_empty()) {
        aps.insert("url-args".into(), json!(args));
    }
    // Empty ones are left out, as gorush leaves them.
    if let Some(category) = n.category.as_deref().filter(|c| !c.is_empty()) {
        aps.insert("category".into(), json!(category));
    }
    if let Some(thread) = n.thread_id.as_deref().filter(|t| !t.is_empty()) {
        aps.insert("thread-id".into(), json!(thread));
    }
    if n.content_available {
        aps.insert("content-available".into(), json!(1));
    }
    if n.mutable_content {
        aps.insert("mutable-content".into(), json!(1));
    }
    live_activity(n, &mut aps);
    let mut payload = n.data.clone().unwrap_or_default();
    payload.insert("aps".into(), Value::Object(aps));
    let mut message = Map::new();
    message.insert("Payload".into(), Value::Object(payload));
    let mut set = |key: &str, value: Option<Value>| {
        if let Some(v) = value {
            message.insert(key.into(), v);
        }
    };
    // Go's zero value, "", is a field not given.
    let text = |v: &Option<String>| v.clone().filter(|t| !t.is_empty()).map(Value::String);
    set("topic", text(&n.topic));
    set("push_type", text(&n.push_type));
    set("collapse_id", text(&n.collapse_id));
    // 0 is kept: APNs then delivers at once or never (negatives are refused).
    set("expiration", n.expiration.map(|e| json!(e)));
    set(
        "priority",
        priority.map(|p| json!(if p == "high" { 10 } else { 5 })),
    );
    message
}

/// A Live Activity's `aps` fields (Apple's names), as gorush's `setLiveActivityFields`.
fn live_activity(n: &Notification, aps: &mut Map<String, Value>) {
    let text = |v: &Option<String>| v.as_ref().filter(|s| !s.is_empty()).map(|s| json!(s));
    let object = |v: &Option<Map<String, Value>>| {
        v.as_ref()
            .filter(|m| !m.is_empty())
            .map(|m| Value::Object(m.clone()))
    };
    let time = |v: Option<i64>| v.filter(|t| *t > 0).map(|t| json!(t));
    for (key, value) in [
        ("event", text(&n.event)),
        ("content-state", object(&n.content_state)),
        ("timestamp", time(n.timestamp)),
        ("stale-date", time(n.stale_date)),
        ("dismissal-date", time(n.dismissal_date)),
        ("attributes-type", text(&n.attributes_type)),
        ("attributes", object(&n.attributes)),
        ("relevance-score", n.relevance_score.map(|r| json!(r))),
    ] {
        if let Some(v) = value {
            aps.insert(key.into(), v);
        }
    }
}

/// The legacy GCM fields the pusher sends through FCM v1.
/// A browser's push: what the service worker gets is JSON with the notification's fields
/// (`title`, `body`, `image`, `data`); `time_to_live` is the `TTL`, `collapse_key` the
/// `Topic`, priority the `Urgency`.
fn webpush_template(n: &Notification, priority: Option<&str>) -> Map<String, Value> {
    let mut payload = Map::new();
    if let Some(t) = n.title.as_deref().filter(|t| !t.is_empty()) {
        payload.insert("title".into(), json!(t));
    }
    if let Some(b) = n.message.as_deref().filter(|m| !m.is_empty()) {
        payload.insert("body".into(), json!(b));
    }
    if let Some(image) = &n.image {
        payload.insert("image".into(), json!(image));
    }
    if let Some(data) = n.data.as_ref().filter(|d| !d.is_empty()) {
        payload.insert("data".into(), Value::Object(data.clone()));
    }
    let mut message = Map::new();
    message.insert("payload".into(), Value::Object(payload));
    if let Some(ttl) = n.time_to_live {
        message.insert("ttl".into(), json!(ttl));
    }
    if let Some(topic) = &n.collapse_key {
        message.insert("topic".into(), json!(topic));
    }
    if let Some(p) = priority {
        message.insert("urgency".into(), json!(p));
    }
    if let Some(expiration) = n.expiration.filter(|e| *e > 0) {
        message.insert("push_expiry".into(), json!(expiration.saturating_mul(1000)));
    }
    message
}

/// A string of gorush's FCM `notification` block.
fn fcm_notification<'a>(n: &'a Notification, key: &str) -> Option<&'a str> {
    n.notification
        .as_ref()?
        .get(key)?
        .as_str()
        .filter(|s| !s.is_empty())
}

/// As gorush builds it: FCM's `notification` block, under `title`, `message` and `image`.
fn gcm_template(n: &Notification, priority: Option<&str>) -> Map<String, Value> {
    let mut message = Map::new();
    let mut notification = Map::new();
    let title = n.title.as_deref().filter(|t| !t.is_empty());
    if let Some(t) = title.or_else(|| fcm_notification(n, "title")) {
        notification.insert("title".into(), json!(t));
    }
    let body = n.message.as_deref().filter(|m| !m.is_empty());
    if let Some(b) = body.or_else(|| fcm_notification(n, "body")) {
        notification.insert("body".into(), json!(b));
    }
    if let Some(sound) = n
        .sound
        .as_ref()
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
    {
        notification.insert("sound".into(), json!(sound));
    }
    let image = n.image.as_deref().filter(|i| !i.is_empty());
    if let Some(image) = image.or_else(|| fcm_notification(n, "image")) {
        notification.insert("image_url".into(), json!(image));
    }
    for key in ["icon", "color", "tag", "click_action"] {
        if let Some(v) = fcm_notification(n, key) {
            notification.insert(key.into(), json!(v));
        }
    }
    if !notification.is_empty() {
        message.insert("notification".into(), Value::Object(notification));
    }
    if let Some(data) = n.data.as_ref().filter(|d| !d.is_empty()) {
        message.insert("data".into(), Value::Object(data.clone()));
    }
    if let Some(ttl) = n.time_to_live {
        message.insert("time_to_live".into(), json!(ttl));
    }
    if let Some(key) = &n.collapse_key {
        message.insert("collapse_key".into(), json!(key));
    }
    if let Some(p) = priority {
        message.insert("priority".into(), json!(p));
    }
    if n.content_available {
        message.insert("content_available".into(), json!(true));
    }
    // For an iPhone reached through FCM (gorush sets aps `mutable-content`).
    if n.mutable_content {
        message.insert("mutable_content".into(), json!(true));
    }
    if n.dry_run {
        message.insert("dry_run".into(), json!(true));
    }
    message
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn one(body: Value) -> Result<Prepared, FieldError> {
        let n: Notification = serde_json::from_value(body).unwrap();
        prepare(0, &n, EndpointRules::STRICT)
    }

    #[test]
    fn ios_message_as_gorush_builds_it() {
        let p = one(
            json!({"tokens":["t1","t1","t2"],"platform":1,"title":"Hi","message":"Hello",
            "badge":3,"sound":"default","topic":"com.example","priority":"normal",
            "data":{"k":"v"},"content_available":true,"collapse_id":"c"}),
        )
        .unwrap();
        assert_eq!(p.tokens, ["t1", "t2"]);
        let m: Value = serde_json::from_slice(&p.message("t1", "n-1")).unwrap();
        assert_eq!(
            m,
            json!({"DeviceToken":"t1","metadata":{"notif_id":"n-1"},"topic":"com.example",
                "collapse_id":"c","priority":5,
                "Payload":{"k":"v","aps":{"alert":{"title":"Hi","body":"Hello"},"badge":3,
                    "sound":"default","content-available":1}}})
        );
        let parsed = parse_apns(&p.message("t1", "n-1")).unwrap();
        assert_eq!(parsed.notification.token, "t1");
    }

    #[test]
    fn android_message_as_gorush_builds_it() {
        let p = one(
            json!({"tokens":["a"],"platform":2,"message":"Hello","title":"T",
            "data":{"n":1},"time_to_live":60,"collapse_key":"k","priority":"high","dry_run":true}),
        )
        .unwrap();
        let m: Value = serde_json::from_slice(&p.message("a", "n-2")).unwrap();
        assert_eq!(
            m,
            json!({"to":"a","metadata":{"notif_id":"n-2"},
                "notification":{"title":"T","body":"Hello"},"data":{"n":1},"time_to_live":60,
                "collapse_key":"k","priority":"high","dry_run":true})
        );
        assert!(parse_gcm(&p.message("a", "n-2")).unwrap().dry_run);
    }

    #[test]
    fn a_message_is_one_json_object_whatever_its_token_and_id() {
        let token = "a\"b\\c";
        let p = one(json!({"tokens":[token],"platform":1,"message":"m"})).unwrap();
        let m: Value = serde_json::from_slice(&p.message(token, "n\"1")).unwrap();
        assert_eq!(
            m,
            json!({"DeviceToken":token,"metadata":{"notif_id":"n\"1"},
                "Payload":{"aps":{"alert":"m"}}})
        );
        let bare = Prepared::new(Platform::Gcm, vec!["a".into()], HashMap::new(), &Map::new());
        let m: Value = serde_json::from_slice(&bare.message("a", "n")).unwrap();
        assert_eq!(m, json!({"to":"a","metadata":{"notif_id":"n"}}));
    }

    #[test]
    fn bad_notifications_name_their_field() {
        let cases = [
            (
                json!({"tokens":["a"],"platform":3,"message":"m"}),
                "notifications[0].platform",
            ),
            (
                json!({"tokens":["a"],"platform":9,"message":"m"}),
                "notifications[0].platform",
            ),
            (
                json!({"tokens":["a"],"message":"m"}),
                "notifications[0].platform",
            ),
            (
                json!({"tokens":[],"platform":1,"message":"m"}),
                "notifications[0].tokens",
            ),
            (
                json!({"tokens":["a b"],"platform":1,"message":"m"}),
                "notifications[0].tokens[0]",
            ),
            (
                json!({"tokens":["a"],"platform":1}),
                "notifications[0].message",
            ),
            (
                json!({"tokens":["a"],"platform":2,"message":"m","priority":"max"}),
                "notifications[0].priority",
            ),
            (
                json!({"tokens":["a"],"platform":1,"message":"x".repeat(5000)}),
                "notifications[0]",
            ),
            (
                json!({"tokens":["a"],"platform":1,"message":"m","push_type":"shout"}),
                "notifications[0]",
            ),
        ];
        for (body, field) in cases {
            let e = one(body.clone()).unwrap_err();
            assert_eq!(e.field, field, "{body}: {e:?}");
        }
    }
    /// What the API accepts, `pusher run` can send with the id the records really carry: the
    /// check runs with a UUID-long id (or the caller's), as the metadata counts against the
    /// payload limit. Seen: checked with a 5-byte id, a message within 31 bytes of the limit
    /// was accepted and every record then refused as payload_too_large.
    #[test]
    fn a_payload_near_the_limit_is_checked_with_the_id_its_records_carry() {
        let uuid = "0190c3e4-7b1a-7cc0-9d5e-0123456789ab";
        let given = "g".repeat(200);
        for platform in [1, 2] {
            let parse = |p: &Prepared, id: &str| match platform {
                1 => parse_apns(&p.message("t", id)).map(drop),
                _ => parse_gcm(&p.message("t", id)).map(drop),
            };
            let mut largest = None;
            for n in 3900..4100 {
                let body = json!({"tokens":["t"],"platform":platform,"message":"x".repeat(n)});
                let Ok(p) = one(body) else { continue };
                largest = Some(n);
                parse(&p, uuid).unwrap_or_else(|e| panic!("platform {platform}, {n} bytes: {e}"));
                let with_id = json!({"tokens":["t"],"platform":platform,
                    "message":"x".repeat(n),"notif_id":given});
                if let Ok(p) = one(with_id) {
                    parse(&p, &given)
                        .unwrap_or_else(|e| panic!("platform {platform}, {n} bytes: {e}"));
                }
            }
            // The scan crossed the limit: some lengths accepted, the longest refused.
            assert!(
                largest.is_some_and(|n| n < 4099),
                "platform {platform}: {largest:?}"
            );
        }
    }

    /// gorush's README Live Activity example: its fields go into `aps` under Apple's names,
    /// as gorush sets them. Seen: they were dropped without a word, and the device got a plain
    /// alert after a 200. An update with only `event` and `content-state` is content.
    #[test]
    fn live_activity_fields_go_into_aps() {
        let p = one(
            json!({"tokens":["t"],"platform":1,"push_type":"liveactivity",
            "topic":"com.example.app.push-type.liveactivity","event":"start",
            "timestamp":1685952000,"content-state":{"homeScore":0,"period":"1H"},
            "attributes-type":"FootballMatchAttributes","attributes":{"homeTeam":"Team 1"},
            "stale-date":1685955600,"dismissal-date":1685959200,"relevance-score":0.5,
            "alert":{"title":"Team 1 vs Team 2","body":"Kick-off!"}}),
        )
        .unwrap();
        let m: Value = serde_json::from_slice(&p.message("t", "n")).unwrap();
        assert_eq!(
            m["Payload"]["aps"],
            json!({"alert":{"title":"Team 1 vs Team 2","body":"Kick-off!"},"event":"start",
                "timestamp":1685952000,"content-state":{"homeScore":0,"period":"1H"},
                "attributes-type":"FootballMatchAttributes","attributes":{"homeTeam":"Team 1"},
                "stale-date":1685955600,"dismissal-date":1685959200,"relevance-score":0.5})
        );
        assert_eq!(m["push_type"], "liveactivity");
        let update = one(json!({"tokens":["t"],"platform":1,"event":"update",
            "content-state":{"minute":2},"timestamp":0,"dismissal-date":0}))
        .unwrap();
        let m: Value = serde_json::from_slice(&update.message("t", "n")).unwrap();
        assert_eq!(
            m["Payload"]["aps"],
            json!({"event":"update","content-state":{"minute":2}})
        );
        // Android reads neither an alert nor a Live Activity: a push of only those is empty.
        let e =
            one(json!({"tokens":["t"],"platform":2,"alert":{"title":"x","body":"y"}})).unwrap_err();
        assert_eq!(e.field, "notifications[0].message", "{e:?}");
    }

    /// gorush's own names and values: `thread-id`, `expiration: 0` (APNs stores nothing), a
    /// negative badge left out, `to` as one more token, critical sound's `name` and `volume`.
    #[test]
    fn gorush_fields_keep_their_meaning() {
        let p = one(json!({"tokens":["a"],"to":"b","platform":1,"message":"m",
            "thread-id":"chat-7","expiration":0,"badge":-1,"name":"siren","volume":0.5,
            "interruption_level":"critical","url-args":["x"]}))
        .unwrap();
        assert_eq!(p.tokens, ["a", "b"]);
        let m: Value = serde_json::from_slice(&p.message("a", "n")).unwrap();
        assert_eq!(m["expiration"], 0);
        let aps = &m["Payload"]["aps"];
        assert_eq!(aps["thread-id"], "chat-7");
        assert_eq!(aps.get("badge"), None);
        assert_eq!(
            aps["sound"],
            json!({"critical": 1, "name": "siren", "volume": 0.5})
        );
        assert_eq!(aps["interruption-level"], "critical");
        assert_eq!(aps["url-args"], json!(["x"]));
        let parsed = parse_apns(&p.message("a", "n")).unwrap();
        assert_eq!(parsed.notification.expiration, Some(0));
        // The old name still works; a badge of 0 clears it.
        let p = one(json!({"tokens":["a"],"platform":1,"message":"m","thread_id":"t","badge":0}))
            .unwrap();
        let m: Value = serde_json::from_slice(&p.message("a", "n")).unwrap();
        assert_eq!(m["Payload"]["aps"]["thread-id"], "t");
        assert_eq!(m["Payload"]["aps"]["badge"], 0);
        assert_eq!(m.get("expiration"), None);
    }

    /// gorush's FCM `notification` block is what the device shows, under title/message/image:
    /// never a data-only push. Seen: dropped, and sent as data only after a 200.
    #[test]
    fn fcm_notification_block_is_shown() {
        let p = one(json!({"tokens":["a"],"platform":2,
            "notification":{"title":"Hi","body":"There","image":"https://i"},"data":{"k":"v"}}))
        .unwrap();
        let m: Value = serde_json::from_slice(&p.message("a", "n")).unwrap();
        assert_eq!(
            m["notification"],
            json!({"title":"Hi","body":"There","image_url":"https://i"})
        );
        // Alone, it is content enough.
        let p = one(
            json!({"tokens":["a"],"platform":2,"notification":{"body":"B"},
            "title":"T"}),
        )
        .unwrap();
        let m: Value = serde_json::from_slice(&p.message("a", "n")).unwrap();
        assert_eq!(m["notification"], json!({"title":"T","body":"B"}));
    }

    /// What a Go client sends as zero values is taken as gorush takes it: `null` and `""` as
    /// not given, `priority` in any case. Seen: each was a 400 for the whole batch.
    #[test]
    fn go_zero_values_are_not_given() {
        let p = one(json!({"tokens":null,"to":"b","platform":2,"message":"m",
            "content_available":null,"mutable_content":null,"dry_run":null,"subscriptions":null,
            "notif_id":"","priority":"HIGH"}))
        .unwrap();
        assert_eq!(p.tokens, ["b"]);
        let m: Value = serde_json::from_slice(&p.message("b", "n")).unwrap();
        assert_eq!(m["priority"], "high");
        let n: Notification = serde_json::from_value(json!({"notif_id":""})).unwrap();
        assert_eq!(n.notif_id, None);
        let p = one(
            json!({"tokens":["a"],"platform":1,"message":"m","push_type":"",
            "topic":"","collapse_id":"","sound":""}),
        )
        .unwrap();
        let m: Value = serde_json::from_slice(&p.message("a", "n")).unwrap();
        assert_eq!(
            m,
            json!({"DeviceToken":"a","metadata":{"notif_id":"n"},
                "Payload":{"aps":{"alert":"m"}}})
        );
    }

    /// An Android push's extras as gorush carries them: `mutable_content` and `sound` for an
    /// iPhone reached through FCM, the `notification` block's Android fields; an iOS alert of
    /// a title alone, and empty `category`/`thread-id`, as gorush leaves them out.
    #[test]
    fn extras_reach_the_device_as_gorush_sends_them() {
        let p = one(
            json!({"tokens":["a"],"platform":2,"message":"m","sound":"ping",
            "mutable_content":true,
            "notification":{"icon":"ic","color":"#ff0000","tag":"t","click_action":"OPEN"}}),
        )
        .unwrap();
        let raw = p.message("a", "n");
        let parsed = parse_gcm(&raw).unwrap();
        assert_eq!(parsed.mutable_content, Some(true));
        let n = parsed.notification.unwrap();
        assert_eq!(
            (n.sound.as_deref(), n.icon.as_deref(), n.color.as_deref()),
            (Some("ping"), Some("ic"), Some("#ff0000"))
        );
        assert_eq!(
            (n.tag.as_deref(), n.click_action.as_deref()),
            (Some("t"), Some("OPEN"))
        );
        let p = one(
            json!({"tokens":["a"],"platform":1,"title":"T","category":"",
            "thread-id":""}),
        )
        .unwrap();
        let m: Value = serde_json::from_slice(&p.message("a", "n")).unwrap();
        assert_eq!(m["Payload"]["aps"], json!({"alert":{"title":"T"}}));
    }

    /// What would change the push and cannot be carried is a 400 naming it.
    #[test]
    fn unsupported_gorush_fields_are_refused_by_name() {
        let cases = [
            (
                json!({"tokens":["a"],"platform":2,"message":"m","android":{"priority":"high"}}),
                "notifications[0].android",
            ),
            (
                json!({"tokens":["a"],"platform":1,"message":"m","apns":{"headers":{}}}),
                "notifications[0].apns",
            ),
            (
                json!({"tokens":["a"],"platform":2,"message":"m","webpush":{"x":1}}),
                "notifications[0].webpush",
            ),
            (
                json!({"tokens":["a"],"platform":2,"message":"m","condition":"'a' in topics"}),
                "notifications[0].condition",
            ),
            (
                json!({"tokens":["a"],"platform":2,"message":"m","topic":"news"}),
                "notifications[0].topic",
            ),
            (
                json!({"tokens":["a"],"platform":1,"message":"m","notification":{"title":"x"}}),
                "notifications[0].notification",
            ),
            (
                json!({"tokens":["a"],"platform":2,"notification":{"title":"x","sound":"s"}}),
                "notifications[0].notification.sound",
            ),
            (
                json!({"tokens":["a"],"platform":2,"notification":{"title":"x","color":"red"}}),
                "notifications[0].notification.color",
            ),
            // An FCM topic is no device: sent as one, every subscriber got the push.
            (
                json!({"tokens":["a","/topics/all"],"platform":2,"message":"m"}),
                "notifications[0].tokens[1]",
            ),
            (
                json!({"to":"/topics/news","platform":2,"message":"m"}),
                "notifications[0].tokens[0]",
            ),
            (
                json!({"tokens":["a"],"platform":1,"message":"m","expiration":-5}),
                "notifications[0].expiration",
            ),
        ];
        for (body, field) in cases {
            let e = one(body.clone()).unwrap_err();
            assert_eq!(e.field, field, "{body}: {e:?}");
        }
        // Empty blocks say nothing: accepted, as gorush ignores them.
        one(
            json!({"tokens":["a"],"platform":2,"message":"m","android":{},"apns":null,
            "condition":""}),
        )
        .unwrap();
    }
}
