//! A platform's part of `pusher run`, behind one trait: turn a Kafka value into a push, send
//! it, and write its feedback record. The loop, the offsets and the side effects never match on
//! the platform; each platform is one file here (`apns.rs`, `gcm.rs`) and one constructor on
//! [`AppSender`]. A third platform adds a file and a constructor (docs/platforms.md).
//!
//! A trait object rather than an enum: the pipeline's per-message work is dominated by the
//! send itself, and one `dyn` call per message is noise beside it, while an enum would put a
//! `match` with an arm per platform at every step of the loop.

use super::feedback::{FeedbackRecord, MessageContext, SendDetails};
use crate::push::{Outcome, Platform};
use crate::sender::gate::Gate;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// A boxed push future: the send is most of a message task's size, and the task is moved
/// whole when spawned (memmove was the top symbol of the pipeline thread before it was boxed).
pub type PushFuture<'a> = Pin<Box<dyn Future<Output = (Outcome, SendDetails)> + Send + 'a>>;

/// One platform's sender, as the pipeline drives it.
pub trait PlatformSender: Send + Sync + std::fmt::Debug {
    fn platform(&self) -> Platform;

    /// The endpoints' gates (sender/gate.rs), one per endpoint judged apart (web push: one
    /// per push service): the loop pauses the app while any of them fails.
    fn gates(&self) -> &[Gate];

    /// Parses `payload` (the Kafka value), sends it with retries, and fills `ctx` (token,
    /// metadata) for the side effects. A value that is not a push is `Malformed`, never an
    /// error.
    fn push<'a>(&'a self, payload: Option<&'a [u8]>, ctx: &'a mut MessageContext)
        -> PushFuture<'a>;

    /// The feedback record of this platform (the seed's format) for an outcome.
    fn feedback(
        &self,
        outcome: &Outcome,
        ctx: &MessageContext,
        details: &SendDetails,
    ) -> FeedbackRecord;
}

/// The sender of one app: any platform's. Clone it freely.
#[derive(Debug, Clone)]
pub struct AppSender(Arc<dyn PlatformSender>);

impl AppSender {
    pub fn apns(sender: crate::sender::apns::ApnsSender) -> AppSender {
        AppSender(Arc::new(super::apns::Apns(sender)))
    }

    pub fn gcm(sender: crate::sender::fcm::FcmSender) -> AppSender {
        AppSender(Arc::new(super::gcm::Gcm(sender)))
    }

    pub fn webpush(sender: crate::sender::webpush::WebPushSender) -> AppSender {
        AppSender(Arc::new(super::webpush::WebPush(sender)))
    }

    pub fn platform(&self) -> Platform {
        self.0.platform()
    }

    pub fn gates(&self) -> &[Gate] {
        self.0.gates()
    }

    pub(super) fn push<'a>(
        &'a self,
        payload: Option<&'a [u8]>,
        ctx: &'a mut MessageContext,
    ) -> PushFuture<'a> {
        self.0.push(payload, ctx)
    }

    pub(super) fn feedback(
        &self,
        outcome: &Outcome,
        ctx: &MessageContext,
        details: &SendDetails,
    ) -> FeedbackRecord {
        self.0.feedback(outcome, ctx, details)
    }
}
