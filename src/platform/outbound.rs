//! What `pusher route` writes: push messages in the Kafka format `pusher run` reads
//! (DESIGN.md §4), and the feedback record of a push it decided not to send (`rate_limited`),
//! in the format `pusher run` writes (§6), so `pusher results` stores it like any verdict.

use super::messages::Priority;
use super::produce::Record;
use super::registry::Device;
use crate::push::Platform;
use serde_json::{json, Value};

/// Most bytes of a title plus content (APNs' 4 KiB leaves room for the rest of the payload):
/// the API's bound on a notification, and the router's on a message filled from an event.
pub const MAX_TEXT: usize = 3500;

/// The longest deep-link screen: it goes into every push's 4 KB payload (one too long was
/// rejected by APNs for every device).
pub const MAX_SCREEN: usize = 200;

/// A record the router produces for one device and notification. (topic, key, notif_id) name
/// it across a batch's retries, where its payload does not: it holds the time it was built.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub notif_id: String,
    pub record: Record,
}

/// One notification to one user's devices.
#[derive(Debug, Clone, Default)]
pub struct Notification {
    pub user_id: i64,
    pub title: String,
    pub content: String,
    pub screen: String,
    pub notif_id: String,
    /// Extra data (segments): top level in the APNs payload, in GCM `data`.
    pub data: serde_json::Map<String, Value>,
    /// Event mode: the message's name (`metadata.message`), empty otherwise.
    pub message: String,
    /// Seconds the push is worth sending (0: the provider's default).
    pub expiry_s: i64,
    pub priority: Option<Priority>,
}

/// The push message for one device.
pub fn push_message(d: &Device, n: &Notification, deeplink_base: &str, now_ms: i64) -> Vec<u8> {
    let mut metadata = json!({"notif_id": n.notif_id});
    if !n.message.is_empty() {
        metadata["message"] = Value::String(n.message.clone());
    }
    let mut message = match d.platform {
        // A browser: its subscription is the endpoint (the token) and the keys kept beside
        // it; the service worker gets the title, body, data and deep link as JSON.
        Platform::WebPush => {
            let subscription = match d.subscription() {
                Some(s) => json!(s),
                // Keys lost: the pusher refuses it as malformed, with a feedback record.
                None => json!({"endpoint": d.token}),
            };
            let mut payload = json!({"title": n.title, "body": n.content});
            if !n.data.is_empty() {
                payload["data"] = Value::Object(n.data.clone());
            }
            if !n.screen.is_empty() {
                let link = if deeplink_base.is_empty() {
                    n.screen.clone()
                } else {
                    format!("{deeplink_base}://{}", n.screen)
                };
                payload["screen"] = Value::String(link);
            }
            let mut message = json!({"subscription": subscription, "payload": payload,
                                     "metadata": metadata});
            if n.expiry_s > 0 {
                message["ttl"] = Value::from(n.expiry_s);
            }
            if let Some(p) = n.priority {
                message["urgency"] = Value::from(p.as_str());
            }
            message
        }
        Platform::Apns => {
            let mut payload = Value::Object(n.data.clone());
            payload["aps"] = json!({"alert": {"title": n.title, "body": n.content}});
            if !n.screen.is_empty() {
                payload["screen"] = Value::String(n.screen.clone());
            }
            let mut message = json!({"DeviceToken": d.token, "Payload": payload,
                                     "metadata": metadata});
            if n.expiry_s > 0 {
                message["expiration"] = Value::from((now_ms / 1000).saturating_add(n.expiry_s));
            }
            match n.priority {
                Some(Priority::High) => message["priority"] = Value::from(10),
                // APNs' 5 lets the device delay it to save power.
                Some(Priority::Normal) => message["priority"] = Value::from(5),
                None => {}
            }
            message
        }
        Platform::Gcm => {
            let mut message = json!({"to": d.token,
                "notification": {"title": n.title, "body": n.content},
                "metadata": metadata});
            let mut data = n.data.clone();
            if !n.screen.is_empty() {
                let link = if deeplink_base.is_empty() {
                    n.screen.clone()
                } else {
                    format!("{deeplink_base}://{}", n.screen)
                };
                data.insert("screen".into(), Value::String(link));
            }
            if !data.is_empty() {
                message["data"] = Value::Object(data);
            }
            if n.expiry_s > 0 {
                message["time_to_live"] = Value::from(n.expiry_s);
            }
            if let Some(p) = n.priority {
                message["priority"] = Value::from(p.as_str());
            }
            message
        }
    };
    if n.expiry_s > 0 {
        // The pusher drops it, counted as expired, once this has passed.
        message["push_expiry"] =
            Value::from(now_ms.saturating_add(n.expiry_s.saturating_mul(1000)));
    }
    serde_json::to_vec(&message).unwrap_or_default()
}

/// Why `n` could never be sent to a device of one of `platforms`: its push, built as the
/// router builds it, is refused by the parser `pusher run` uses (a payload over the
/// platform's limit counts JSON's escapes: a text of quotes or newlines doubles). None: it
/// fits them all.
pub fn unsendable(
    n: &Notification,
    deeplink_base: &str,
    platforms: &[Platform],
) -> Option<(Platform, crate::push::message::MessageError)> {
    use crate::push::message::{parse_apns, parse_gcm, parse_webpush};
    platforms.iter().find_map(|&platform| {
        let device = Device {
            user_id: n.user_id,
            platform,
            token: "check".into(),
            device_id: String::new(),
            platform_id: None,
            app_version: String::new(),
            registered_ms: 0,
            keys: Some(crate::push::webpush::Keys {
                p256dh: "check".into(),
                auth: "check".into(),
            }),
        };
        let push = push_message(&device, n, deeplink_base, 0);
        let parsed = match platform {
            Platform::Apns => parse_apns(&push).map(drop),
            Platform::Gcm => parse_gcm(&push).map(drop),
            Platform::WebPush => parse_webpush(&push).map(drop),
        };
        parsed.err().map(|e| (platform, e))
    })
}

/// Every platform a user's devices can be on.
pub const ALL_PLATFORMS: [Platform; 3] = [Platform::Apns, Platform::Gcm, Platform::WebPush];

/// A quick bound for the router's hot path: a push whose strings, escaped for JSON, add up to
/// no more than this fits every platform's payload ([`unsendable`] says so for the others).
const SURE_FIT: usize = crate::push::webpush::MAX_PLAINTEXT - 256;

/// True when a push of these strings (title, text, screen, deep link base, notif_id,
/// message name: no `data`) surely fits every platform, without building it.
pub fn surely_fits<'a>(strings: impl IntoIterator<Item = &'a str>) -> bool {
    strings.into_iter().map(json_len).sum::<usize>() <= SURE_FIT
}

/// The length of `s` as a JSON string, quotes and escapes included (as serde_json writes it).
pub fn json_len(s: &str) -> usize {
    2 + s
        .bytes()
        .map(|b| match b {
            b'"' | b'\\' | b'\n' | b'\r' | b'\t' | 0x08 | 0x0c => 2,
            0..=0x1f => 6,
            _ => 1,
        })
        .sum::<usize>()
}

/// The feedback record of a push the router did not send: `outcome` `rate_limited`, with why
/// (`device_limit` or `duplicate`).
pub fn not_sent_feedback(
    app: &str,
    d: &Device,
    n: &Notification,
    reason: &str,
    now_ms: i64,
) -> Vec<u8> {
    let seconds = now_ms / 1000;
    let metadata = json!({"notif_id": n.notif_id, "message": n.message, "game": app,
        "outcome": "rate_limited", "reason": reason, "timestamp": seconds});
    let record = match d.platform {
        Platform::WebPush => json!({"endpoint": d.token, "sent": false,
                                    "reason": "rate_limited", "metadata": metadata}),
        Platform::Apns => json!({"Sent": false, "Reason": "rate_limited", "DeviceToken": d.token,
                                 "timestamp": seconds, "metadata": metadata}),
        Platform::Gcm => json!({"from": d.token, "error": "RATE_LIMITED",
                                "error_description": reason, "metadata": metadata}),
    };
    serde_json::to_vec(&record).unwrap_or_default()
}

/// The feedback topic of `app` and `platform` from the template
/// (`push-{app}-{platform}-feedbacks`).
pub fn feedback_topic(template: &str, app: &str, platform: Platform) -> String {
    template
        .replace("{app}", app)
        .replace("{platform}", platform.as_str())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn device(platform: Platform) -> Device {
        Device {
            user_id: 1,
            platform,
            token: "t".into(),
            device_id: String::new(),
            platform_id: None,
            app_version: String::new(),
            registered_ms: 0,
            keys: None,
        }
    }

    #[test]
    fn messages_parse_as_the_pusher_reads_them() {
        let n = Notification {
            user_id: 1,
            title: "T".into(),
            content: "C".into(),
            screen: "shop".into(),
            notif_id: "n1".into(),
            message: "gift".into(),
            expiry_s: 60,
            priority: Some(Priority::High),
            ..Notification::default()
        };
        let now = 1_700_000_000_000;
        let gcm =
            crate::push::message::parse_gcm(&push_message(&device(Platform::Gcm), &n, "game", now))
                .unwrap();
        assert_eq!(gcm.data["screen"], "game://shop");
        let apns = crate::push::message::parse_apns(&push_message(
            &device(Platform::Apns),
            &n,
            "game",
            now,
        ))
        .unwrap();
        let payload: Value = serde_json::from_slice(&apns.notification.payload).unwrap();
        assert_eq!(payload["screen"], "shop");
        assert_eq!(payload["M"]["notif_id"], "n1");
        assert_eq!(payload["M"]["message"], "gift");
        let raw: Value =
            serde_json::from_slice(&push_message(&device(Platform::Apns), &n, "", now)).unwrap();
        assert_eq!(raw["push_expiry"], now + 60_000);
        assert_eq!(raw["priority"], 10);

        // A browser: its subscription from the registry, the notification as JSON inside.
        let mut browser = device(Platform::WebPush);
        let subscription =
            crate::push::webpush::generated_subscription("https://push.example.com", "b1");
        browser.token = subscription.endpoint.clone();
        browser.keys = Some(subscription.keys.clone());
        let web =
            crate::push::message::parse_webpush(&push_message(&browser, &n, "game", now)).unwrap();
        assert_eq!(web.subscription, subscription);
        assert_eq!(
            (web.ttl, web.urgency),
            (60, Some(crate::push::webpush::Urgency::High))
        );
        let payload: Value = serde_json::from_slice(&web.payload).unwrap();
        assert_eq!(
            (payload["title"].as_str(), payload["screen"].as_str()),
            (Some("T"), Some("game://shop"))
        );
        assert!(web.metadata.has_notif_id());
    }

    #[test]
    fn escaped_text_that_passes_the_byte_count_can_still_be_unsendable() {
        // Quotes, a quote, a backslash, a newline, a control character, two UTF-8 bytes.
        assert_eq!(json_len("a\"\\\n\u{1}é"), 2 + 1 + 2 + 2 + 2 + 6 + 2);
        assert_eq!(
            json_len("\"q\n\u{1}"),
            serde_json::to_string("\"q\n\u{1}").unwrap().len()
        );
        // 3,000 quotes: under MAX_TEXT as bytes, 6,000 once escaped in every payload.
        let quotes = Notification {
            content: "\"".repeat(3000),
            notif_id: "n".into(),
            ..Notification::default()
        };
        assert!(quotes.content.len() <= MAX_TEXT);
        let (_, e) = unsendable(&quotes, "", &ALL_PLATFORMS).unwrap();
        assert_eq!(e.reason(), "payload_too_large");
        assert!(!surely_fits([quotes.content.as_str()]));
        // What the quick bound lets through, the parsers take, on every platform.
        let longest = Notification {
            title: "t\"".repeat(100),
            // Up to the bound: the other strings take 916 bytes escaped.
            content: "\n".repeat((SURE_FIT - 916) / 2),
            screen: "s\"".repeat(100),
            notif_id: "\"".repeat(100),
            message: "m".repeat(100),
            ..Notification::default()
        };
        let base = "game";
        let strings: [&str; 6] = [
            &longest.title,
            &longest.content,
            &longest.screen,
            base,
            &longest.notif_id,
            &longest.message,
        ];
        assert!(surely_fits(strings));
        assert!(unsendable(&longest, base, &ALL_PLATFORMS).is_none());
    }

    #[test]
    fn a_not_sent_push_is_a_result_row() {
        let n = Notification {
            notif_id: "e1.gift".into(),
            message: "gift".into(),
            ..Notification::default()
        };
        for platform in [Platform::Apns, Platform::Gcm, Platform::WebPush] {
            let record: Value = serde_json::from_slice(&not_sent_feedback(
                "game",
                &device(platform),
                &n,
                "duplicate",
                1_700_000_000_000,
            ))
            .unwrap();
            let row = crate::platform::results::result_of(&record).unwrap();
            assert_eq!(
                (
                    row.outcome.as_str(),
                    row.reason.as_str(),
                    row.notif_id.as_str()
                ),
                ("rate_limited", "duplicate", "e1.gift")
            );
            assert_eq!(row.platform, platform.as_str());
        }
    }
}
