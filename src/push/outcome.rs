//! The verdict on one push. A vendor's "no" is an `Outcome`, not an error: `Err` is kept for
//! "we could not get a verdict at all" (DESIGN.md §5).

use serde::Serialize;
use std::time::Duration;

/// How one message ended. Every message ends in exactly one of these.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// The vendor accepted the push.
    Delivered,
    /// The token is dead or not ours: delete it. `timestamp_ms` is APNs' 410 timestamp
    /// (ms since the epoch: the last time APNs knew the token was invalid).
    TokenInvalid {
        reason: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        timestamp_ms: Option<u64>,
    },
    /// Permanently refused, not the token's fault (bad topic, payload too large, credentials...).
    Rejected { reason: String },
    /// `push_expiry` passed before we could send it; never sent.
    Expired,
    /// The input could not be turned into a request (bad JSON, no token, over the size limit).
    Malformed { reason: String },
    /// Retryable failures until the retry budget ran out.
    GaveUp { reason: String },
}

impl Outcome {
    /// Ended before any request was made: the message could not become one (malformed), or
    /// its `push_expiry` had passed.
    pub fn never_sent(&self) -> bool {
        matches!(self, Outcome::Malformed { .. } | Outcome::Expired)
    }

    /// A short, bounded label for metrics and reports.
    pub fn class(&self) -> &'static str {
        match self {
            Outcome::Delivered => "delivered",
            Outcome::TokenInvalid { .. } => "token_invalid",
            Outcome::Rejected { .. } => "rejected",
            Outcome::Expired => "expired",
            Outcome::Malformed { .. } => "malformed",
            Outcome::GaveUp { .. } => "gave_up",
        }
    }

    /// Every class, in a fixed order: [`Outcome::index`] is a position here, so counters can
    /// be a plain array instead of a map under a lock.
    pub const CLASSES: [&'static str; 6] = [
        "delivered",
        "token_invalid",
        "rejected",
        "expired",
        "malformed",
        "gave_up",
    ];

    /// This outcome's position in [`Outcome::CLASSES`].
    pub fn index(&self) -> usize {
        match self {
            Outcome::Delivered => 0,
            Outcome::TokenInvalid { .. } => 1,
            Outcome::Rejected { .. } => 2,
            Outcome::Expired => 3,
            Outcome::Malformed { .. } => 4,
            Outcome::GaveUp { .. } => 5,
        }
    }

    /// The vendor's reason (or ours), if any.
    pub fn reason(&self) -> Option<&str> {
        match self {
            Outcome::Delivered | Outcome::Expired => None,
            Outcome::TokenInvalid { reason, .. }
            | Outcome::Rejected { reason }
            | Outcome::Malformed { reason }
            | Outcome::GaveUp { reason } => Some(reason),
        }
    }

    pub fn is_delivered(&self) -> bool {
        matches!(self, Outcome::Delivered)
    }
}

/// What one attempt taught us: a final outcome, "try again", or "not this message's fault".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Final(Outcome),
    Retry(RetryHint),
    /// The endpoint or the configuration is at fault (credentials refused, no connection):
    /// every message would get the same answer, so it neither ends the message nor spends its
    /// retries (sender/gate.rs).
    Fault {
        reason: String,
    },
}

/// Why and how to retry one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryHint {
    /// The vendor reason or transport failure, kept for the final `GaveUp`.
    pub reason: String,
    /// Server-requested delay (`Retry-After`), honoured over our own back-off when longer.
    pub after: Option<Duration>,
    /// The connection is suspect (GOAWAY, reset, IdleTimeout, Shutdown): use a new one.
    pub reconnect: bool,
    /// Credentials went stale (ExpiredProviderToken, expired OAuth token): renew them first.
    pub renew_auth: bool,
    /// The failure concerns this push alone (a web push subscription's own server, not a push
    /// service we know): never a sign that the endpoint is failing for every push.
    pub own: bool,
}

impl RetryHint {
    pub fn new(reason: impl Into<String>) -> Self {
        RetryHint {
            reason: reason.into(),
            after: None,
            reconnect: false,
            renew_auth: false,
            own: false,
        }
    }
    pub fn after(mut self, after: Option<Duration>) -> Self {
        self.after = after;
        self
    }
    pub fn reconnect(mut self) -> Self {
        self.reconnect = true;
        self
    }
    pub fn renew_auth(mut self) -> Self {
        self.renew_auth = true;
        self
    }
    pub fn own(mut self) -> Self {
        self.own = true;
        self
    }
}

#[cfg(test)]
mod class_tests {
    use super::Outcome;

    #[test]
    fn each_class_has_its_index() {
        let r = || "r".to_string();
        let all = [
            Outcome::Delivered,
            Outcome::TokenInvalid {
                reason: r(),
                timestamp_ms: None,
            },
            Outcome::Rejected { reason: r() },
            Outcome::Expired,
            Outcome::Malformed { reason: r() },
            Outcome::GaveUp { reason: r() },
        ];
        for o in all {
            assert_eq!(Outcome::CLASSES[o.index()], o.class());
        }
    }
}
