//! The wrong-environment guard. APNs answers `BadDeviceToken` (400) both for a dead or
//! malformed token and for a good token sent to the wrong environment (a production token to
//! the sandbox, the default without `-p`), and `DeviceTokenNotForTopic` both for a token of
//! another app and for a misconfigured topic (protocols.md §1.3). Taken at their word, a
//! pusher started without `-p` against production tokens deletes every token of the fleet.
//!
//! So, until an app has had one push delivered, 20 such verdicts (any other verdicts
//! between them) are the configuration's fault: the gate closes (the app pauses, `/healthz` says why) and the
//! messages wait. Once one push was delivered, the environment and topic are known good and
//! these verdicts are the tokens' again. A real fleet's dead tokens answer 410 `Unregistered`,
//! which is never counted here.

use crate::push::apns::ApnsReason;
use crate::push::{Outcome, Verdict};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

/// Token refusals before any delivery that say the environment or topic is wrong.
pub const REFUSALS_BEFORE_FAULT: u32 = 20;

#[derive(Debug, Default)]
pub struct EnvironmentGuard {
    delivered: AtomicBool,
    refused: AtomicU32,
}

impl EnvironmentGuard {
    /// The verdict to act on: `verdict` itself, or a fault once the refusals say the
    /// environment or topic is wrong.
    pub fn judge(&self, verdict: Verdict) -> Verdict {
        match &verdict {
            // Looked at first: a store on every delivery would bounce the cache line.
            Verdict::Final(Outcome::Delivered) if !self.delivered.load(Ordering::Relaxed) => {
                self.delivered.store(true, Ordering::Relaxed);
            }
            Verdict::Final(Outcome::TokenInvalid { reason, .. })
                if !self.delivered.load(Ordering::Relaxed)
                    && (reason == ApnsReason::BadDeviceToken.as_str()
                        || reason == ApnsReason::DeviceTokenNotForTopic.as_str()) =>
            {
                let refused = self.refused.fetch_add(1, Ordering::Relaxed) + 1;
                if refused >= REFUSALS_BEFORE_FAULT {
                    return Verdict::Fault {
                        reason: format!(
                            "{reason} for {refused} tokens and none delivered yet: the wrong APNs environment (production tokens need -p) or topic?"
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

    fn bad_token() -> Verdict {
        Verdict::Final(Outcome::TokenInvalid {
            reason: "BadDeviceToken".into(),
            timestamp_ms: None,
        })
    }

    #[test]
    fn refusals_before_any_delivery_become_a_fault() {
        let guard = EnvironmentGuard::default();
        for _ in 1..REFUSALS_BEFORE_FAULT {
            assert_eq!(guard.judge(bad_token()), bad_token());
        }
        assert!(matches!(guard.judge(bad_token()), Verdict::Fault { .. }));
        // Unregistered is a dead token whatever the environment.
        let gone = Verdict::Final(Outcome::TokenInvalid {
            reason: "Unregistered".into(),
            timestamp_ms: None,
        });
        assert_eq!(guard.judge(gone.clone()), gone);
    }

    #[test]
    fn after_a_delivery_they_are_the_tokens_again() {
        let guard = EnvironmentGuard::default();
        guard.judge(Verdict::Final(Outcome::Delivered));
        for _ in 0..REFUSALS_BEFORE_FAULT * 2 {
            assert_eq!(guard.judge(bad_token()), bad_token());
        }
    }
}
