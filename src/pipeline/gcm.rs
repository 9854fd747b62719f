//! GCM/FCM in `pusher run`: the seed's GCM message (or an FCM v1 envelope) in, the seed's GCM
//! feedback record out.

use super::feedback::{self, FeedbackRecord, MessageContext, SendDetails};
use super::platform::{PlatformSender, PushFuture};
use crate::push::message::parse_gcm;
use crate::push::{Outcome, Platform};
use crate::sender::fcm::FcmSender;
use crate::sender::gate::Gate;

#[derive(Debug)]
pub(super) struct Gcm(pub(super) FcmSender);

impl PlatformSender for Gcm {
    fn platform(&self) -> Platform {
        Platform::Gcm
    }

    fn gates(&self) -> &[Gate] {
        std::slice::from_ref(self.0.gate())
    }

    fn push<'a>(
        &'a self,
        payload: Option<&'a [u8]>,
        ctx: &'a mut MessageContext,
    ) -> PushFuture<'a> {
        Box::pin(async move { (push(&self.0, payload, ctx).await, SendDetails::default()) })
    }

    fn feedback(
        &self,
        outcome: &Outcome,
        ctx: &MessageContext,
        _details: &SendDetails,
    ) -> FeedbackRecord {
        FeedbackRecord::Gcm(feedback::gcm_record(outcome, ctx))
    }
}

async fn push(sender: &FcmSender, payload: Option<&[u8]>, ctx: &mut MessageContext) -> Outcome {
    let mut message = match parse_gcm(payload.unwrap_or_default()) {
        Ok(m) => m,
        Err(e) => {
            ctx.token = payload
                .and_then(|p| crate::push::message::token_hint(p, false))
                .unwrap_or_default();
            // Its notif_id too: the verdict must complete the notification it belongs to.
            ctx.metadata = payload
                .map(crate::push::message::metadata_hint)
                .unwrap_or_default();
            return Outcome::Malformed {
                reason: e.reason().to_string(),
            };
        }
    };
    ctx.token = message.to.clone();
    ctx.metadata = std::mem::take(&mut message.metadata);
    // `push_expiry` is the sender's to check: before each attempt, not only now.
    let delivery = sender.send_with_details(&message).await;
    if let Some(canonical) = &delivery.canonical_registration_id {
        // Legacy FCM asks to replace the token; the feedback carries it for the token store.
        ctx.canonical_registration_id = Some(canonical.clone());
    }
    delivery.outcome
}
