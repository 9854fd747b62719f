//! One message of `pusher run`, from bytes to a handed-off outcome: parse, send, side effects
//! (feedback acknowledged, token deletion committed), then its offset marked done.

use super::feedback::{self, MessageContext, SendDetails};
use super::offsets::OffsetTracker;
use super::platform::AppSender;
use super::run::{app_from_topic, Counters, OutcomeEvent, Outputs};
use super::tokens::{DeletionTicket, TokenError};
use crate::push::{Outcome, Platform};
use crate::sender::retry::RetryPolicy;
use parking_lot::Mutex;
// The maps on the per-message path hash with foldhash: SipHash, twelve times a message, was
// ~4 % of `pusher run`'s instructions (callgrind). Their keys are topic, app and reason
// names, never message content.
use foldhash::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio_util::sync::CancellationToken;

/// Everything a message task needs, shared.
pub(super) struct Shared {
    pub(super) platform: Platform,
    pub(super) apps: HashMap<String, AppSender>,
    pub(super) outputs: Outputs,
    pub(super) include_success: bool,
    pub(super) tracker: Arc<Mutex<OffsetTracker>>,
    pub(super) counters: Arc<Counters>,
    pub(super) hostname: Arc<str>,
    pub(super) stop: CancellationToken,
    /// Unknown apps and unmatched topics are reported once each, not per message.
    pub(super) reported: Mutex<std::collections::HashSet<String>>,
    /// Per topic seen, its name and `app_from_topic`, shared by its messages: a regex match
    /// per message was ~2 % of the loop, and copies of the names an allocation each.
    pub(super) topic_apps: Mutex<HashMap<String, TopicApp>>,
    /// Given-up messages per (app, reason) since that pair was last reported.
    pub(super) gave_up: Mutex<HashMap<(String, String), GaveUpReport>>,
    /// Told when a message finishes: the consume loop waits on it when a partition's window
    /// is full, and the shutdown for the last ones (one waiter: a stored permit, no lock).
    pub(super) progress: tokio::sync::Notify,
    /// Failed feedback deliveries are logged at most once a minute per app.
    pub(super) feedback_reports: crate::telemetry::Throttle,
}

/// Given-up messages are logged as errors (and so reach Sentry) at most once a minute per app
/// and reason: an APNs outage must not become a million events.
#[derive(Default)]
pub(super) struct GaveUpReport {
    /// When it was last reported (never: `None`).
    pub(super) last: Option<tokio::time::Instant>,
    pub(super) unreported: u64,
}

pub(super) const GAVE_UP_REPORT_EVERY: Duration = Duration::from_secs(60);

/// A topic's name, and the app and platform it names (`app_from_topic`), if any.
pub(super) type TopicApp = (Arc<str>, Option<(Arc<str>, Platform)>);

pub(super) struct Consumed {
    pub(super) topic: Arc<str>,
    /// The app and platform the topic names, looked up by the loop.
    pub(super) app: Option<(Arc<str>, Platform)>,
    pub(super) partition: i32,
    pub(super) offset: i64,
    pub(super) payload: Option<Vec<u8>>,
    pub(super) key: Option<Vec<u8>>,
    pub(super) produced_at_ms: Option<i64>,
    pub(super) send_latency: Option<Duration>,
}

pub(super) fn now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

pub(super) fn hostname() -> Arc<str> {
    std::fs::read_to_string("/etc/hostname")
        .map(|s| s.trim().into())
        .unwrap_or_else(|_| "unknown".into())
}

/// One message, from bytes to a handed-off outcome. `slot` is its in-flight permit;
/// `revoked`: its partition was revoked.
pub(super) async fn handle(
    shared: &Shared,
    mut m: Consumed,
    slot: Option<tokio::sync::OwnedSemaphorePermit>,
    revoked: CancellationToken,
) {
    // Partitions of topics this pusher cannot send are paused on assignment; a message that
    // got through anyway is left unfinished (its partition commits no further), never
    // refused: it is not the message's fault.
    let Some((app, platform)) = m.app.take() else {
        report_once(
            shared,
            &m.topic,
            "Message from a topic that names no app and platform; left uncommitted.",
        );
        return;
    };
    if platform != shared.platform || !shared.apps.contains_key(&*app) {
        report_once(
            shared,
            &m.topic,
            "Message from a topic this pusher cannot send; left uncommitted.",
        );
        return;
    }
    // Checked above.
    let Some(sender) = shared.apps.get(&*app) else {
        return;
    };
    let mut ctx = MessageContext {
        app,
        consumed_at_ms: i64::try_from(now().as_millis()).unwrap_or(i64::MAX),
        hostname: shared.hostname.clone(),
        ..Default::default()
    };
    let started = tokio::time::Instant::now();
    let (outcome, details) = tokio::select! {
        biased;
        // Its partition is another consumer's now, which reads the message again from the
        // committed offset. Left unfinished, and its slot freed: sent on (from a failing
        // endpoint's gate once it answers, after a retry's wait), it went twice, late, and
        // held a slot the partitions still ours needed.
        () = revoked.cancelled() => return,
        pushed = sender.push(m.payload.as_deref(), &mut ctx) => pushed,
    };
    m.send_latency = Some(started.elapsed());
    // Side effects first, then the offset: that order is the at-least-once contract.
    let deletion = match hand_off(shared, sender, &ctx, &outcome, &details).await {
        HandOff::Done => None,
        HandOff::Deleting(ticket) => Some(ticket),
        HandOff::Stopped => return, // Not finished, so it will be redelivered.
    };
    drop(slot);
    // The feedback is out: while the DELETE is awaited (during a PostgreSQL outage, up to the
    // deleter's room per app of messages), keep only what `finish` reads, not the payload (up
    // to 64 KiB), the notification copy or the metadata.
    m.payload = None;
    drop(details);
    let (app, token) = (ctx.app.clone(), std::mem::take(&mut ctx.token));
    drop(ctx);
    if let Some(ticket) = deletion {
        let committed = tokio::select! {
            _ = shared.stop.cancelled() => return,
            c = ticket.committed() => c,
        };
        match committed {
            Ok(()) => {}
            // PostgreSQL refused this token on its own (counted by the deleter): retrying
            // cannot help.
            Err(TokenError::Permanent { .. }) => {}
            // The deleter stopped before the DELETE: not finished, so it will be redelivered.
            Err(e) => {
                tracing::warn!(error = %e, "Token not deleted; the message will be redone.");
                return;
            }
        }
    }
    finish(shared, &m, &app, &token, &outcome);
}

/// Where a message's side effects stand after [`hand_off`].
pub(super) enum HandOff {
    Done,
    /// Feedback is out; the token's DELETE is queued and the ticket says when it committed.
    Deleting(DeletionTicket),
    /// Stopped before the side effects were out.
    Stopped,
}

/// Feedback produced and acknowledged, then the token queued for deletion.
pub(super) async fn hand_off(
    shared: &Shared,
    sender: &AppSender,
    ctx: &MessageContext,
    outcome: &Outcome,
    details: &SendDetails,
) -> HandOff {
    if let Some(producer) = &shared.outputs.feedback {
        if feedback::should_report(outcome, shared.include_success, ctx.metadata.has_notif_id()) {
            let record = sender.feedback(outcome, ctx, details);
            let policy = RetryPolicy::unbounded(Duration::from_millis(100), Duration::from_secs(5));
            let component = || format!("feedback {} {}", shared.platform, ctx.app);
            let mut attempt = 0;
            loop {
                attempt += 1;
                match producer.send(&ctx.app, shared.platform, &record).await {
                    Ok(()) => {
                        if attempt > 1 {
                            crate::telemetry::health::set(&component(), None);
                        }
                        break;
                    }
                    Err(e) => {
                        // Every waiting message retries: the log once a minute per app, with
                        // the count held back; `/healthz` says it while it lasts.
                        crate::telemetry::health::set(&component(), Some(e.to_string()));
                        if let Some(held_back) = shared.feedback_reports.allow(&ctx.app) {
                            tracing::warn!(app = %ctx.app, error = %e, held_back, "Feedback not delivered; retrying.");
                        }
                        let wait = policy.delay(attempt, None, &mut rand::rng());
                        tokio::select! {
                            _ = shared.stop.cancelled() => return HandOff::Stopped,
                            _ = tokio::time::sleep(wait) => {}
                        }
                    }
                }
            }
        }
    }
    if let (Some(tokens), Outcome::TokenInvalid { .. }) = (&shared.outputs.tokens, outcome) {
        // Waiting for room in the deleter's queue keeps the in-flight slot: backpressure.
        let submitted = tokio::select! {
            _ = shared.stop.cancelled() => return HandOff::Stopped,
            s = tokens.submit(&ctx.app, shared.platform, &ctx.token) => s,
        };
        match submitted {
            Ok(ticket) => return HandOff::Deleting(ticket),
            // An app name that cannot be a table: counted by the deleter; retrying cannot help.
            Err(TokenError::InvalidTableName { .. }) => {}
            Err(e) => {
                tracing::warn!(error = %e, "Token deletion queue unavailable.");
                return HandOff::Stopped;
            }
        }
    }
    HandOff::Done
}

pub(super) fn finish(shared: &Shared, m: &Consumed, app: &str, token: &str, outcome: &Outcome) {
    if let Outcome::GaveUp { reason } = outcome {
        report_gave_up(shared, app, reason);
    }
    shared.counters.outcomes[outcome.index()].fetch_add(1, Ordering::Relaxed);
    if let Some(observer) = &shared.outputs.observer {
        observer.on_outcome(&OutcomeEvent {
            topic: &m.topic,
            partition: m.partition,
            offset: m.offset,
            app,
            token,
            outcome,
            produced_at_ms: m.produced_at_ms,
            key: m.key.as_deref(),
            send_latency: m.send_latency,
        });
    }
    // NotInFlight after a revocation is expected: the new owner redoes the message.
    if shared
        .tracker
        .lock()
        .finish(&m.topic, m.partition, m.offset)
        .is_ok()
    {
        shared.counters.finished.fetch_add(1, Ordering::Relaxed);
        shared.progress.notify_one();
    }
}

/// `app_from_topic`, remembered per topic (a consumer sees a handful of topics).
pub(super) fn topic_app(shared: &Shared, topic: &str) -> TopicApp {
    let mut known = shared.topic_apps.lock();
    if let Some(found) = known.get(topic) {
        return found.clone();
    }
    let app = app_from_topic(topic).map(|(app, platform)| (Arc::from(app), platform));
    let found = (Arc::from(topic), app);
    known.insert(topic.to_string(), found.clone());
    found
}

pub(super) fn report_gave_up(shared: &Shared, app: &str, reason: &str) {
    let now = tokio::time::Instant::now();
    let mut reports = shared.gave_up.lock();
    let key = (app.to_string(), reason.to_string());
    let report = reports.entry(key).or_default();
    report.unreported += 1;
    if report
        .last
        .is_none_or(|last| now.duration_since(last) >= GAVE_UP_REPORT_EVERY)
    {
        tracing::error!(
            app,
            reason,
            messages = report.unreported,
            "Messages given up after their retries."
        );
        report.last = Some(now);
        report.unreported = 0;
    }
}

pub(super) fn report_once(shared: &Shared, key: &str, what: &str) {
    if shared.reported.lock().insert(key.to_string()) {
        tracing::error!(key, "{what}");
    }
}
