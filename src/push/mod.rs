//! Domain types shared by every part of pusher. No I/O here: the sender, the fake servers,
//! the generator and the pipeline all speak in these types.

pub mod apns;
pub mod app;
pub mod fcm;
pub mod gcm;
pub mod message;
pub mod outcome;
pub mod token_rules;
pub mod topic;
pub mod webpush;

pub use outcome::{Outcome, RetryHint, Verdict};

use serde::{Deserialize, Serialize};

/// The push platforms. `Gcm` keeps the seed system's name for Google's FCM; `WebPush` is the
/// browsers' standard protocol (RFC 8030).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Platform {
    Apns,
    Gcm,
    WebPush,
}

impl Platform {
    pub fn as_str(self) -> &'static str {
        match self {
            Platform::Apns => "apns",
            Platform::Gcm => "gcm",
            Platform::WebPush => "webpush",
        }
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Platform {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "apns" => Ok(Platform::Apns),
            "gcm" | "fcm" => Ok(Platform::Gcm),
            "webpush" | "web" => Ok(Platform::WebPush),
            other => Err(format!(
                "unknown platform {other:?} (expected apns, gcm or webpush)"
            )),
        }
    }
}
