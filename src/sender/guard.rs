//! The wrong-credentials guard: refusals that name the token but, when they are nearly all an
//! app gets, more likely mean the configuration is wrong. Taken at their word, they delete every token of
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
//! So such verdicts are the configuration's fault when they are nearly all an app gets: at
//! 20 or more, if they are 9 or more per delivery since the sender started, the gate closes
//! (the app pauses, `/healthz` says why) and the messages wait. A wrong environment refuses
//! nearly every token: the few it delivers are the table's tokens of that environment
//! (developers' devices in a production table), and before, one of those deliveries was taken
//! as proof of the right environment and the rest of the fleet's tokens were deleted. A right
//! one refuses a few malformed tokens among many deliveries; a real fleet's dead tokens answer
//! 410 `Unregistered` / `UNREGISTERED`, which is never counted. Counted since the start, not
//! over a window: the environment and the credentials do not change while the sender runs, so
//! its deliveries stay the evidence (an app that delivered millions is not paused by a burst of
//! malformed tokens), and deliveries are counted only up to 100,000, enough to excuse any
//! plausible burst, so that past that a delivery costs one load, as before.
//!
//! FCM's `THIRD_PARTY_AUTH_ERROR` (the project's APNs certificate or key, or its web push
//! credential, in the Firebase console is bad or expired: a yearly chore) is a rejection of
//! that one message, not of its token, and Android tokens still deliver; counted the same way,
//! so that an app of iPhones behind FCM pauses instead of rejecting its backlog.
//!
//! APNs' `BadTopic`, `MissingTopic` and `TopicDisallowed` (400) refuse the topic, a
//! configuration fault (protocols.md §1.3). For a push sent with the app's configured topic
//! (the message named none) every other such push gets the same answer: until one push with the
//! configured topic was delivered, each is the configuration's fault at once, not counted (as
//! final rejections they drained the backlog).

use crate::push::fcm::legacy;
use crate::push::{Outcome, Verdict};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Token refusals that may say the configuration is wrong: fewer are too few to tell.
pub const REFUSALS_BEFORE_FAULT: u64 = 20;
/// ... when there are at least this many per delivery (90 % of the verdicts counted).
const REFUSALS_PER_DELIVERY: u64 = 9;
/// Deliveries past which they are not counted: enough evidence of the configuration.
const PROVEN: u64 = 100_000;

/// `ApnsReason::BadDeviceToken` and `DeviceTokenNotForTopic` (checked against the enum's
/// names in the tests).
const APNS_REASONS: [&str; 2] = ["BadDeviceToken", "DeviceTokenNotForTopic"];
/// `ApnsReason::BadTopic`, `MissingTopic` and `TopicDisallowed`.
const APNS_TOPIC_REASONS: [&str; 3] = ["BadTopic", "MissingTopic", "TopicDisallowed"];
/// `FcmErrorCode::SenderIdMismatch` and its legacy name.
const FCM_REASONS: [&str; 2] = ["SENDER_ID_MISMATCH", legacy::MISMATCH_SENDER_ID];
/// `FcmErrorCode::ThirdPartyAuthError` and its legacy name, `rejected` reasons, and what they
/// suggest.
const FCM_REJECTIONS: [(&str, &str); 2] = [
    ("THIRD_PARTY_AUTH_ERROR", THIRD_PARTY_HINT),
    ("InvalidApnsCredential", THIRD_PARTY_HINT),
];
const THIRD_PARTY_HINT: &str =
    "the Firebase project's APNs key or certificate (or web push credential) refused?";

#[derive(Debug)]
pub struct RefusalGuard {
    /// The `token_invalid` reasons that count.
    reasons: &'static [&'static str],
    /// What the fault's cause suggests, after "<reason> for <n> tokens against <m> delivered: ".
    hint: &'static str,
    /// The `rejected` reasons that count too, each with its own hint.
    rejections: &'static [(&'static str, &'static str)],
    /// The `rejected` reasons that refuse what the configuration gave a push (see
    /// `judge_configured`).
    configured: &'static [&'static str],
    /// Deliveries since the start, up to [`PROVEN`].
    delivered: AtomicU64,
    /// Counted refusals since the start.
    refused: AtomicU64,
    /// A push that relied on the configuration was delivered.
    configured_delivered: AtomicBool,
}

impl RefusalGuard {
    fn new(
        reasons: &'static [&'static str],
        hint: &'static str,
        rejections: &'static [(&'static str, &'static str)],
        configured: &'static [&'static str],
    ) -> RefusalGuard {
        RefusalGuard {
            reasons,
            hint,
            rejections,
            configured,
            delivered: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            configured_delivered: AtomicBool::new(false),
        }
    }

    /// APNs: a wrong environment or topic.
    pub fn apns() -> RefusalGuard {
        RefusalGuard::new(
            &APNS_REASONS,
            "the wrong APNs environment (production tokens need -p) or topic?",
            &[],
            &APNS_TOPIC_REASONS,
        )
    }

    /// FCM: credentials (service account or server key) of another Firebase project.
    pub fn fcm() -> RefusalGuard {
        RefusalGuard::new(
            &FCM_REASONS,
            "credentials of another Firebase project (the service account or server key)?",
            &FCM_REJECTIONS,
            &[],
        )
    }

    /// The verdict to act on: `verdict` itself, or a fault once the refusals say the
    /// configuration is wrong.
    pub fn judge(&self, verdict: Verdict) -> Verdict {
        let hint = match &verdict {
            Verdict::Final(Outcome::Delivered) => {
                self.count_delivery();
                None
            }
            Verdict::Final(Outcome::TokenInvalid { reason, .. })
                if self.reasons.contains(&reason.as_str()) =>
            {
                Some((reason, self.hint))
            }
            Verdict::Final(Outcome::Rejected { reason }) => self
                .rejections
                .iter()
                .find(|(counted, _)| counted == reason)
                .map(|(_, hint)| (reason, *hint)),
            _ => None,
        };
        let Some((reason, hint)) = hint else {
            return verdict;
        };
        let refused = self.refused.fetch_add(1, Ordering::Relaxed) + 1;
        let delivered = self.delivered.load(Ordering::Relaxed);
        if refused >= REFUSALS_BEFORE_FAULT
            && refused >= delivered.saturating_mul(REFUSALS_PER_DELIVERY)
        {
            // The bound, not the running count: the cause stays the same for each probe
            // refused while paused (a count made each an "other cause", logged).
            let bound = REFUSALS_BEFORE_FAULT.max(delivered.saturating_mul(REFUSALS_PER_DELIVERY));
            return Verdict::Fault {
                reason: format!(
                    "{reason} for {bound} or more tokens against {delivered} delivered: {hint}"
                ),
            };
        }
        verdict
    }

    /// Up to [`PROVEN`]: past it a delivery costs one load, no store to bounce the cache line
    /// between the workers.
    fn count_delivery(&self) {
        if self.delivered.load(Ordering::Relaxed) < PROVEN {
            self.delivered.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// `judge` for a push that relied on the configuration (APNs: sent with the app's topic,
    /// the message naming none). Until one such push was delivered, a refusal of the topic is
    /// the configuration's fault: every such push would get it.
    pub fn judge_configured(&self, verdict: Verdict) -> Verdict {
        match &verdict {
            Verdict::Final(Outcome::Delivered)
                if !self.configured_delivered.load(Ordering::Relaxed) =>
            {
                self.configured_delivered.store(true, Ordering::Relaxed);
            }
            Verdict::Final(Outcome::Rejected { reason })
                if !self.configured_delivered.load(Ordering::Relaxed)
                    && self.configured.contains(&reason.as_str()) =>
            {
                return Verdict::Fault {
                    reason: format!(
                        "{reason} for the configured topic and none delivered with it yet: \
                         is the app's topic (--topic, apns.certs.<app>.topic) right?"
                    ),
                };
            }
            _ => {}
        }
        self.judge(verdict)
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
        assert_eq!(
            APNS_TOPIC_REASONS,
            [
                ApnsReason::BadTopic.as_str(),
                ApnsReason::MissingTopic.as_str(),
                ApnsReason::TopicDisallowed.as_str()
            ]
        );
    }

    #[test]
    fn a_refused_configured_topic_is_a_fault_until_one_push_with_it_is_delivered() {
        let rejected = |reason: &str| {
            Verdict::Final(Outcome::Rejected {
                reason: reason.into(),
            })
        };
        let guard = RefusalGuard::apns();
        for reason in APNS_TOPIC_REASONS {
            assert!(
                matches!(
                    guard.judge_configured(rejected(reason)),
                    Verdict::Fault { .. }
                ),
                "{reason}"
            );
            // The message's own topic: its producer's choice, its verdict.
            assert_eq!(guard.judge(rejected(reason)), rejected(reason));
        }
        assert_eq!(
            guard.judge_configured(rejected("BadCollapseId")),
            rejected("BadCollapseId")
        );
        // A delivery with a message's own topic says nothing of the configured one.
        guard.judge(Verdict::Final(Outcome::Delivered));
        assert!(matches!(
            guard.judge_configured(rejected("BadTopic")),
            Verdict::Fault { .. }
        ));
        guard.judge_configured(Verdict::Final(Outcome::Delivered));
        assert_eq!(
            guard.judge_configured(rejected("BadTopic")),
            rejected("BadTopic")
        );
        // FCM has no configured topic.
        let fcm = RefusalGuard::fcm();
        assert_eq!(
            fcm.judge_configured(rejected("BadTopic")),
            rejected("BadTopic")
        );
    }

    fn refused(reason: &str) -> Verdict {
        Verdict::Final(Outcome::TokenInvalid {
            reason: reason.into(),
            timestamp_ms: None,
        })
    }

    #[test]
    fn refusals_that_are_nearly_all_an_app_gets_become_a_fault() {
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
                        cause.starts_with(&format!(
                            "{reason} for 20 or more tokens against 0 delivered"
                        )),
                        "{cause}"
                    );
                    // The next refusal (a probe's) says the same: not "another cause".
                    assert_eq!(
                        guard.judge(refused(reason)),
                        Verdict::Fault { reason: cause }
                    );
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

    /// THIRD_PARTY_AUTH_ERROR for nearly every push (an app of iPhones behind FCM whose APNs
    /// key in Firebase expired) is the configuration's, not each message's. Seen: a backlog
    /// rejected and committed in seconds. Among deliveries (Android tokens of the same app)
    /// it stays each message's rejection.
    #[test]
    fn third_party_auth_errors_for_nearly_all_are_a_fault() {
        let rejected = Verdict::Final(Outcome::Rejected {
            reason: FcmErrorCode::ThirdPartyAuthError.as_str().into(),
        });
        let guard = RefusalGuard::fcm();
        for _ in 1..REFUSALS_BEFORE_FAULT {
            assert_eq!(guard.judge(rejected.clone()), rejected);
        }
        match guard.judge(rejected.clone()) {
            Verdict::Fault { reason } => assert!(reason.contains("APNs key"), "{reason}"),
            other => panic!("{other:?}"),
        }
        let guard = RefusalGuard::fcm();
        for _ in 0..100 {
            guard.judge(Verdict::Final(Outcome::Delivered));
        }
        for _ in 0..200 {
            assert_eq!(guard.judge(rejected.clone()), rejected);
        }
    }

    /// A production table's few developer tokens are delivered by the sandbox: one delivery
    /// among the refusals turned the guard off for good, and 2,970 of 3,000 tokens were
    /// deleted.
    #[test]
    fn a_few_deliveries_do_not_excuse_the_refusals() {
        let guard = RefusalGuard::apns();
        let mut deleted = 0;
        for i in 0..3_000 {
            if i % 100 == 0 {
                guard.judge(Verdict::Final(Outcome::Delivered));
            } else if guard.judge(refused("BadDeviceToken")) == refused("BadDeviceToken") {
                deleted += 1;
            }
        }
        assert_eq!(deleted, REFUSALS_BEFORE_FAULT - 1);
    }

    #[test]
    fn among_many_deliveries_they_are_the_tokens() {
        for (guard, reason) in [
            (RefusalGuard::apns(), "BadDeviceToken"),
            (RefusalGuard::fcm(), "SENDER_ID_MISMATCH"),
        ] {
            // A malformed token in 5: a bad table, but the configuration is right.
            for _ in 0..REFUSALS_BEFORE_FAULT * 10 {
                assert_eq!(guard.judge(refused(reason)), refused(reason));
                for _ in 0..4 {
                    guard.judge(Verdict::Final(Outcome::Delivered));
                }
            }
            // The deliveries stay the evidence: a later burst of refusals, many in a row, is
            // the tokens'.
            for _ in 0..REFUSALS_BEFORE_FAULT * 50 {
                assert_eq!(guard.judge(refused(reason)), refused(reason));
            }
        }
    }
}
