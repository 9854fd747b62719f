//! Web push in `pusher run`: a web push message in (DESIGN.md §11), a web push feedback record
//! out. The subscription's endpoint is the message's token: feedback names it, and a dead
//! subscription is deleted by it.

use super::feedback::{self, FeedbackRecord, MessageContext, SendDetails};
use super::platform::{PlatformSender, PushFuture};
use crate::push::message::{endpoint_hint, metadata_hint, parse_webpush};
use crate::push::{Outcome, Platform};
use crate::sender::gate::Gate;
use crate::sender::webpush::WebPushSender;

#[derive(Debug)]
pub(super) struct WebPush(pub(super) WebPushSender);

impl PlatformSender for WebPush {
    fn platform(&self) -> Platform {
        Platform::WebPush
    }

    fn gates(&self) -> &[Gate] {
        self.0.gates()
    }

    fn push<'a>(
        &'a self,
        payload: Option<&'a [u8]>,
        ctx: &'a mut MessageContext,
    ) -> PushFuture<'a> {
        Box::pin(push(&self.0, payload, ctx))
    }

    fn feedback(
        &self,
        outcome: &Outcome,
        ctx: &MessageContext,
        details: &SendDetails,
    ) -> FeedbackRecord {
        FeedbackRecord::WebPush(feedback::webpush_record(outcome, ctx, details))
    }
}

async fn push(
    sender: &WebPushSender,
    payload: Option<&[u8]>,
    ctx: &mut MessageContext,
) -> (Outcome, SendDetails) {
    let mut message = match parse_webpush(payload.unwrap_or_default()) {
        Ok(m) => m,
        Err(e) => {
            ctx.token = payload.and_then(endpoint_hint).unwrap_or_default();
            // Its notif_id too: the verdict must complete the notification it belongs to.
            ctx.metadata = payload.map(metadata_hint).unwrap_or_default();
            let outcome = Outcome::Malformed {
                reason: e.reason().to_string(),
            };
            return (outcome, SendDetails::default());
        }
    };
    ctx.token = message.subscription.endpoint.clone();
    ctx.metadata = std::mem::take(&mut message.metadata);
    // `push_expiry` is the sender's to check: before each attempt, not only now.
    let delivery = sender.send(&message).await;
    let details = SendDetails {
        status: delivery.status,
        location: delivery.location,
        ..Default::default()
    };
    (delivery.outcome, details)
}
