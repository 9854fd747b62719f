//! The wrong-credentials guard: refusals that name the token but, before any delivery, more
//! likely mean the configuration is wrong. Taken at their word, they delete every token of
//! the fleet.
//!
//! - APNs answers `BadDeviceToken` (400) both for a dead or malformed token and for a good token
//!   sent to the wrong environment (a production token to the sandbox, the default without
//!   `-p`), and `DeviceTokenNotForTopic` both for a token of another app and for a
//!   misconfigured topic (protocols.md §1.3).
//! - FCM answers `SENDER_ID_MISMATCH` (v1; legacy `MismatchSenderId`) for a token of another
//!   project, and so for every token when the service account (or server key) is another
//!   Firebase project's (protocols.md §2.4, §3).
//!
//! So, until an app has had one push delivered, 20 such verdicts (any other verdicts between
//! them) are the configuration's fault: the gate closes (the app pauses, `/healthz` says why)
//! and the messages wait. Once one push was delivered, the environment, topic and project are
//! known good and these verdicts are the tokens' again. A real fleet's dead tokens answer 410
//! `Unregistered` / `UNREGISTERED`, which is never counted here.

use crate::push::fcm::legacy;
use crate::push::{Outcome, Verdict};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

/// Token refusals before any delivery that say the configuration is wrong.
pub const REFUSALS_BEFORE_FAULT: u32 = 20;

/// `ApnsReason::BadDeviceToken` and `DeviceTokenNotForTopic` (checked against the enum's
/// names in the tests).
const APNS_REASONS: [&str; 2] = ["BadDeviceToken", "DeviceTokenNotForTopic"];
/// `FcmErrorCode::SenderIdMismatch` and its legacy name.
const FCM_REASONS: [&str; 2] = ["SENDER_ID_MISMATCH", legacy::MISMATCH_SENDER_ID];

#[derive(Debug)]
pub struct RefusalGuard {
    /// The `token_invalid` reasons that count.
    reasons: &'static [&'static str],
    /// What the fault's cause suggests, after "<reason> for <n> tokens and none delivered yet: ".
    hint: &'static str,
    delivered: AtomicBool,
    refused: AtomicU32,
}

impl RefusalGuard {
    fn new(reasons: &'static [&'static str], hint: &'static str) -> RefusalGuard {
        RefusalGuard {
            reasons,
            hint,
            delivered: AtomicBool::new(false),
            refused: AtomicU32::new(0),
        }
    }

    /// APNs: a wrong environment or topic.
    pub fn apns() -> RefusalGuard {
        RefusalGuard::new(
            &APNS_REASONS,
            "the wrong APNs environment (production tokens need -p) or topic?",
        )
    }

    /// FCM: credentials (service account or server key) of another Firebase project.
    pub fn fcm() -> RefusalGuard {
        RefusalGuard::new(
            &FCM_REASONS,
            "credentials of another Firebase project (the service account or server key)?",
        )
    }

    /// The verdict to act on: `verdict` itself, or a fault once the refusals say the
    /// configuration is wrong.
    pub fn judge(&self, verdict: Verdict) -> Verdict {
        match &verdict {
            // Looked at first: a store on every delivery would bounce the cache line.
            Verdict::Final(Outcome::Delivered) if !self.delivered.load(Ordering::Relaxed) => {
                self.delivered.store(true, Ordering::Relaxed);
            }
            Verdict::Final(Outcome::TokenInvalid { reason, .. })
                if !self.delivered.load(Ordering::Relaxed)
                    && self.reasons.contains(&reason.as_str()) =>
            {
                let refused = self.refused.fetch_add(1, Ordering::Relaxed) + 1;
                if refused >= REFUSALS_BEFORE_FAULT {
                    return Verdict::Fault {
                        reason: format!(
                            "{reason} for {refused} tokens and none delivered yet: {}",
                            self.hint
                        ),
                    };
                }
            }
            _ => {}
        }
        verdict
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::push::apns::ApnsReason;
    use crate::push::fcm::FcmErrorCode;

    #[test]
    fn the_reasons_are_the_vendors_names() {
        assert_eq!(
            APNS_REASONS,
            [
                ApnsReason::BadDeviceToken.as_str(),
                ApnsReason::DeviceTokenNotForTopic.as_str()
            ]
        );
        assert_eq!(FCM_REASONS[0], FcmErrorCode::SenderIdMismatch.as_str());
    }

    fn refused(reason: &str) -> Verdict {
        Verdict::Final(Outcome::TokenInvalid {
            reason: reason.into(),
            timestamp_ms: None,
        })
    }

    #[test]
    fn refusals_before_any_delivery_become_a_fault() {
        for (guard, reason, dead) in [
            (RefusalGuard::apns(), "BadDeviceToken", "Unregistered"),
            (
                RefusalGuard::apns(),
                "DeviceTokenNotForTopic",
                "ExpiredToken",
            ),
            (RefusalGuard::fcm(), "SENDER_ID_MISMATCH", "UNREGISTERED"),
            (RefusalGuard::fcm(), "MismatchSenderId", "NotRegistered"),
        ] {
            for _ in 1..REFUSALS_BEFORE_FAULT {
                assert_eq!(guard.judge(refused(reason)), refused(reason));
            }
            match guard.judge(refused(reason)) {
                Verdict::Fault { reason: cause } => {
                    assert!(
                        cause.starts_with(&format!("{reason} for 20 tokens")),
                        "{cause}"
                    )
                }
                other => panic!("{reason}: {other:?}"),
            }
            // A dead token is dead whatever the configuration.
            assert_eq!(guard.judge(refused(dead)), refused(dead));
        }
        // Each guard counts its own platform's reasons only.
        let guard = RefusalGuard::fcm();
        for _ in 0..REFUSALS_BEFORE_FAULT * 2 {
            assert_eq!(
                guard.judge(refused("BadDeviceToken")),
                refused("BadDeviceToken")
            );
        }
    }

    #[test]
    fn after_a_delivery_they_are_the_tokens_again() {
        for (guard, reason) in [
            (RefusalGuard::apns(), "BadDeviceToken"),
            (RefusalGuard::fcm(), "SENDER_ID_MISMATCH"),
        ] {
            guard.judge(Verdict::Final(Outcome::Delivered));
            for _ in 0..REFUSALS_BEFORE_FAULT * 2 {
                assert_eq!(guard.judge(refused(reason)), refused(reason));
            }
        }
    }
}
