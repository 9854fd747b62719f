//! The requests topic (`push-<app>-requests`, key = user id): what `pusher api` accepted for
//! `pusher route` to expand. One JSON record per user-addressed notification or event.

use crate::push::Platform;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// The requests topic of an app.
pub fn topic(app: &str) -> String {
    format!("push-{app}-requests")
}

/// The regex `pusher route` subscribes to: every app's requests topic.
pub const TOPIC_PATTERN: &str = "^push-[A-Za-z0-9_-]+-requests$";

/// The app of a requests topic.
pub fn app_of(topic: &str) -> Option<&str> {
    topic
        .strip_prefix("push-")?
        .strip_suffix("-requests")
        .filter(|app| crate::push::app::is_valid_name(app))
}

/// Whether `id` can name a notification (or an event): 1 to 200 characters, no control
/// characters. The API refuses others; the router counts a record written past it as
/// malformed, where retrying a statement PostgreSQL refuses would stop its partition.
pub fn is_valid_notif_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 200 && !id.chars().any(char::is_control)
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RequestRecord {
    /// Pushkin's user-addressed notification: to every device of the user.
    Notification {
        user_id: i64,
        title: String,
        content: String,
        #[serde(default)]
        screen: String,
        notif_id: String,
    },
    /// A push to every registered device that meets a condition (the Python platform's
    /// notification worker): streamed from the registry in pages.
    Segment {
        notif_id: String,
        condition: Condition,
        title: String,
        content: String,
        #[serde(default)]
        screen: String,
        #[serde(default)]
        data: Map<String, Value>,
    },
    /// Pushkin's event: "this happened to this user", with its pairs.
    Event {
        /// The id `pusher api` gave it (empty in records from before ids): owns the claims
        /// the event takes, and names its notifications (`<id>.<message>`).
        #[serde(default, skip_serializing_if = "String::is_empty")]
        id: String,
        user_id: i64,
        event_id: i32,
        #[serde(default)]
        event_type: i32,
        /// Unix seconds (0: when it was accepted).
        #[serde(default)]
        timestamp: i64,
        #[serde(default)]
        pairs: BTreeMap<String, String>,
    },
}

/// Which devices a segment reaches: every field given must hold (none: every device).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Condition {
    pub platform: Option<Platform>,
    pub language_id: Option<i32>,
    pub app_version: Option<String>,
    /// The user's last login at or after this, Unix seconds.
    pub last_login_after: Option<i64>,
    /// The user's last login before this, Unix seconds.
    pub last_login_before: Option<i64>,
}

/// The latest login time a condition may name: 9999-12-31T23:59:59Z. Past it PostgreSQL's
/// `to_timestamp` refuses the value, and a refused condition could never be streamed.
pub const MAX_LOGIN_SECONDS: i64 = 253_402_300_799;

impl Condition {
    /// What PostgreSQL would refuse in the condition, as (field, problem): checked by the API
    /// before the request is accepted, since the router meets it only later.
    pub fn problem(&self) -> Option<(&'static str, String)> {
        if let Some(v) = &self.app_version {
            if v.len() > 256 || v.chars().any(char::is_control) {
                return Some((
                    "condition.app_version",
                    "at most 256 bytes, no control characters".to_owned(),
                ));
            }
        }
        for (field, value) in [
            ("condition.last_login_after", self.last_login_after),
            ("condition.last_login_before", self.last_login_before),
        ] {
            if value.is_some_and(|t| !(0..=MAX_LOGIN_SECONDS).contains(&t)) {
                return Some((
                    field,
                    format!("Unix seconds from 0 to {MAX_LOGIN_SECONDS} (9999-12-31)"),
                ));
            }
        }
        None
    }
}

impl RequestRecord {
    /// The record's Kafka key: the user (one router owns a user at a time), or the segment.
    pub fn key(&self) -> String {
        match self {
            RequestRecord::Notification { user_id, .. } | RequestRecord::Event { user_id, .. } => {
                user_id.to_string()
            }
            RequestRecord::Segment { notif_id, .. } => format!("segment:{notif_id}"),
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        // Plain data: it always serializes.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn topics_name_their_app() {
        assert_eq!(topic("game"), "push-game-requests");
        assert_eq!(app_of("push-my-game-requests"), Some("my-game"));
        assert_eq!(app_of("push-game_apns"), None);
        let re = regex::Regex::new(TOPIC_PATTERN).unwrap();
        assert!(re.is_match("push-my_game-requests"));
        assert!(!re.is_match("push-game_apns"));
    }

    #[test]
    fn records_round_trip() {
        let r = RequestRecord::Event {
            id: "e1".into(),
            user_id: 7,
            event_id: 4001,
            event_type: 0,
            timestamp: 1,
            pairs: BTreeMap::from([("languageId".into(), "2".into())]),
        };
        let back: RequestRecord = serde_json::from_slice(&r.to_json()).unwrap();
        assert_eq!(back, r);
    }
}
