//! APNs in `pusher run`: the seed's APNs message in, the seed's APNs feedback record out.

use super::feedback::{self, FeedbackRecord, MessageContext, SendDetails};
use super::platform::{PlatformSender, PushFuture};
use crate::push::message::parse_apns;
use crate::push::{Outcome, Platform};
use crate::sender::apns::ApnsSender;
use crate::sender::gate::Gate;

#[derive(Debug)]
pub(super) struct Apns(pub(super) ApnsSender);

impl PlatformSender for Apns {
    fn platform(&self) -> Platform {
        Platform::Apns
    }

    fn gates(&self) -> &[Gate] {
        std::slice::from_ref(self.0.gate())
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
        FeedbackRecord::Apns(feedback::apns_record(outcome, ctx, details))
    }
}

async fn push(
    sender: &ApnsSender,
    payload: Option<&[u8]>,
    ctx: &mut MessageContext,
) -> (Outcome, SendDetails) {
    let mut message = match parse_apns(payload.unwrap_or_default()) {
        Ok(m) => m,
        Err(e) => {
            ctx.token = payload
                .and_then(|p| crate::push::message::token_hint(p, true))
                .unwrap_or_default();
            // Its notif_id too: the verdict must complete the notification it belongs to.
            ctx.metadata = payload
                .map(crate::push::message::metadata_hint)
                .unwrap_or_default();
            let details = SendDetails {
                notification: payload
                    .and_then(|p| serde_json::from_slice(p).ok())
                    .unwrap_or(serde_json::Value::Null),
                ..Default::default()
            };
            return (
                Outcome::Malformed {
                    reason: e.reason().to_string(),
                },
                details,
            );
        }
    };
    ctx.token = message.notification.token.clone();
    ctx.metadata = std::mem::take(&mut message.metadata);
    let notification_json =
        || serde_json::from_slice(&message.notification.payload).unwrap_or(serde_json::Value::Null);
    // `push_expiry` is the sender's to check: before each attempt, not only now.
    let delivery = sender
        .send_expiring(&message.notification, message.push_expiry)
        .await;
    let response = delivery.response.as_ref();
    let details = SendDetails {
        apns_id: response.and_then(|r| r.apns_id.clone()).unwrap_or_default(),
        status: response.map(|r| r.status),
        // Only failures' feedback carries the payload: a success skips re-parsing it.
        notification: if delivery.outcome.is_delivered() {
            serde_json::Value::Null
        } else {
            notification_json()
        },
        location: None,
    };
    (delivery.outcome, details)
}
