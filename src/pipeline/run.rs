//! The `run` loop: Kafka consumer -> bounded dispatch -> sender -> outcome handlers ->
//! per-partition offset tracker (DESIGN.md §5).
//!
//! At-least-once: a message's offset becomes committable only when its outcome is final *and*
//! its side effects are done (feedback acknowledged by Kafka, invalid token's DELETE committed
//! in PostgreSQL). Messages of a partition finish in any order; the tracker commits only the
//! contiguous prefix. A crash resends what was in flight and loses nothing.
//!
//! A message waiting for its token's DELETE gives its in-flight slot back, so pushes go on
//! while PostgreSQL is down; it stays unfinished (its partition's commits stop there) until the
//! deleter acknowledges the batch. What that can hold is bounded by the deleter's queue
//! (`DeleterSettings::queue_capacity` + a batch) and the tracker's window per partition.

use super::feedback::FeedbackProducer;
use super::kafka::{commit, consumer, pause_app, Pause, RebalanceContext};
use super::message::{handle, hostname, topic_app, Consumed, Shared};
use super::offsets::{OffsetError, OffsetTracker};
use super::status::StatusLine;
use super::tokens::TokenQueue;
use crate::push::{Outcome, Platform};
use crate::sender::gate::{Gate, Health};
use crate::telemetry::KafkaReports;
use parking_lot::Mutex;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{Message, Timestamp};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

/// How the loop consumes and commits.
#[derive(Debug, Clone)]
pub struct RunSpec {
    pub platform: Platform,
    pub brokers: String,
    pub group: String,
    /// Topic names or regexes (a regex starts with `^`).
    pub topics: Vec<String>,
    pub session_timeout: Duration,
    /// `earliest` or `latest`: where a group without committed offsets starts.
    pub offset_reset: String,
    /// Messages in flight at most (memory stays flat under any backlog).
    pub max_in_flight: usize,
    pub commit_interval: Duration,
    /// On shutdown, how long in-flight messages may take to finish.
    pub shutdown_timeout: Duration,
    /// Feedback for successes too (failures always get one).
    pub include_success_feedback: bool,
    /// How often the consumer-lag gauge is updated (zero: never).
    pub lag_interval: Duration,
    /// How often a status line (rate, outcomes, lag) is logged (zero: never).
    pub log_interval: Duration,
    /// Extra librdkafka consumer settings, applied last.
    pub consumer_extra: Vec<(String, String)>,
    /// Records every consumed message (`run --capture FILE`, for `pusher replay`).
    pub capture: Option<Arc<dyn Capture>>,
}

/// Where `run --capture` records each consumed message. A trait so the loop needs nothing of
/// the capture format, which is replay's (`replay::capture::CaptureWriter`).
pub trait Capture: std::fmt::Debug + Send + Sync {
    fn record(&self, topic: &str, key: Option<&[u8]>, value: Option<&[u8]>);
}

impl RunSpec {
    pub fn new(
        platform: Platform,
        brokers: impl Into<String>,
        group: impl Into<String>,
        topics: Vec<String>,
    ) -> RunSpec {
        RunSpec {
            platform,
            brokers: brokers.into(),
            group: group.into(),
            topics,
            session_timeout: Duration::from_secs(6),
            offset_reset: "latest".into(),
            max_in_flight: 2000,
            commit_interval: Duration::from_millis(500),
            shutdown_timeout: Duration::from_secs(30),
            include_success_feedback: false,
            lag_interval: Duration::from_secs(5),
            log_interval: Duration::from_secs(10),
            consumer_extra: Vec::new(),
            capture: None,
        }
    }
}

pub use super::platform::AppSender;

/// Where outcomes go besides the offset tracker.
#[derive(Default, Clone)]
pub struct Outputs {
    pub feedback: Option<Arc<FeedbackProducer>>,
    pub tokens: Option<TokenQueue>,
    /// Sees every final outcome (the bench measures end-to-end latency here).
    pub observer: Option<Arc<dyn Observer>>,
}

/// A final outcome, as the observer sees it.
#[derive(Debug)]
pub struct OutcomeEvent<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub app: &'a str,
    pub token: &'a str,
    pub outcome: &'a Outcome,
    /// The Kafka message timestamp (producer create time), ms since the epoch.
    pub produced_at_ms: Option<i64>,
    /// The Kafka message key, if any (the bench puts a sequence number there).
    pub key: Option<&'a [u8]>,
    /// Time spent in the sender (all attempts), when the message was sent.
    pub send_latency: Option<Duration>,
}

pub trait Observer: Send + Sync {
    fn on_outcome(&self, event: &OutcomeEvent<'_>);
    /// Each message as the loop takes it from Kafka (in offset order per partition, but for
    /// redeliveries): offsets it skips were dropped before they were read (`bench --mock`
    /// counts them as lost).
    fn on_consumed(&self, _topic: &str, _partition: i32, _offset: i64) {}
}

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("cannot create the Kafka consumer: {0}")]
    Consumer(#[source] rdkafka::error::KafkaError),
    #[error("cannot subscribe to {topics:?}: {source}")]
    Subscribe {
        topics: Vec<String>,
        source: rdkafka::error::KafkaError,
    },
    #[error("no app is configured")]
    NoApps,
}

/// What a run did, for the caller's report and tests' conservation checks.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunSummary {
    pub consumed: u64,
    /// Messages whose outcome was handled and offset marked done.
    pub finished: u64,
    pub outcomes: BTreeMap<String, u64>,
    /// Last committed offset (next to read) per (topic, partition).
    pub committed: BTreeMap<(String, i32), i64>,
    /// In flight when the shutdown timeout ran out (they will be redelivered).
    pub abandoned: u64,
}

impl RunSummary {
    /// Sum of committed offsets: equals the number of messages consumed from offset 0.
    pub fn committed_total(&self) -> i64 {
        self.committed.values().sum()
    }
}

pub use crate::push::topic::app_from_topic;

/// Live counters, shared by the loop and the message tasks.
#[derive(Default)]
pub(super) struct Counters {
    pub(super) consumed: AtomicU64,
    pub(super) finished: AtomicU64,
    /// Per outcome class, indexed by `Outcome::index` (no lock on the per-message path).
    pub(super) outcomes: [AtomicU64; Outcome::CLASSES.len()],
    pub(super) committed: Mutex<BTreeMap<(String, i32), i64>>,
}

impl Counters {
    /// The outcome counts by class, those seen only.
    pub(super) fn outcomes(&self) -> BTreeMap<String, u64> {
        Outcome::CLASSES
            .iter()
            .zip(&self.outcomes)
            .map(|(class, n)| (class.to_string(), n.load(Ordering::Relaxed)))
            .filter(|(_, n)| *n > 0)
            .collect()
    }
}

/// On one thread, messages the loop starts before it lets the other tasks run. Without a
/// pause, a burst of answers freed ~1,000 slots, the loop filled them all, and only then did the
/// connection's task write the new requests: the endpoint sat idle while the pusher worked,
/// then the other way round (strace against the fake: one write of all of them per round).
/// Letting the connection write every few dozen keeps both busy: 71k -> 90k msg/s in
/// ci/scale.sh's first step (1 core), at less CPU per message; 8 was slower (each yield is a
/// pass over the run queue and smaller writes), 128 hardly better than none. With more
/// threads, another worker writes meanwhile: there it changed nothing for `pusher run` on 2
/// cores and cost `bench --mock` (fake in the same runtime) a fifth, so it is not done.
const START_BATCH: u32 = 32;

/// Consumes until `shutdown` is cancelled, then drains and commits.
pub async fn run(
    spec: RunSpec,
    apps: HashMap<String, AppSender>,
    outputs: Outputs,
    shutdown: CancellationToken,
) -> Result<RunSummary, PipelineError> {
    if apps.is_empty() {
        return Err(PipelineError::NoApps);
    }
    // The window also holds finished messages waiting behind a slow one at the head of their
    // partition, so it is much wider than the in-flight bound (16 bytes an entry).
    let window = spec.max_in_flight.max(1).saturating_mul(64).max(65_536);
    let tracker = Arc::new(Mutex::new(OffsetTracker::new(window)));
    let counters = Arc::new(Counters::default());
    let consumer = consumer(
        &spec,
        RebalanceContext {
            tracker: tracker.clone(),
            counters: counters.clone(),
            reports: KafkaReports::default(),
            platform: spec.platform,
            apps: apps.keys().cloned().collect(),
            refused: Mutex::new(Default::default()),
            down: Mutex::new(Default::default()),
            held: Mutex::new(Default::default()),
            lag: std::sync::atomic::AtomicI64::new(-1),
            brokers_down_since: Mutex::new(None),
            session_timeout: spec.session_timeout,
        },
    )?;
    let topics: Vec<&str> = spec.topics.iter().map(String::as_str).collect();
    consumer
        .subscribe(&topics)
        .map_err(|source| PipelineError::Subscribe {
            topics: spec.topics.clone(),
            source,
        })?;
    let consumer = Arc::new(consumer);

    // Message tasks are stopped only at the hard deadline (after the graceful timeout).
    let hard_stop = CancellationToken::new();
    let shared = Arc::new(Shared {
        platform: spec.platform,
        apps: apps.into_iter().collect(),
        outputs,
        include_success: spec.include_success_feedback,
        tracker: tracker.clone(),
        counters: counters.clone(),
        hostname: hostname(),
        stop: hard_stop.clone(),
        reported: Mutex::new(Default::default()),
        topic_apps: Mutex::default(),
        gave_up: Mutex::default(),
        progress: tokio::sync::Notify::new(),
        feedback_reports: crate::telemetry::Throttle::new(super::message::GAVE_UP_REPORT_EVERY),
    });
    // A bound per app: an app whose endpoint is down holds only its own slots (its messages
    // wait at the sender's gate), and the other apps go on.
    let permits: foldhash::HashMap<String, Arc<Semaphore>> = shared
        .apps
        .keys()
        .map(|app| {
            (
                app.clone(),
                Arc::new(Semaphore::new(spec.max_in_flight.max(1))),
            )
        })
        .collect();
    let mut commit_tick = tokio::time::interval(spec.commit_interval);
    commit_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut health = watch_endpoints(&shared.apps);
    let mut status = StatusLine::new(spec.log_interval);
    let mut ticks: u64 = 0;
    let yield_every = (tokio::runtime::Handle::current().runtime_flavor()
        == tokio::runtime::RuntimeFlavor::CurrentThread)
        .then_some(START_BATCH);
    let mut started_since_yield = 0;

    // Made once: a labelled handle per message costs a registry lookup. (The recorder, when
    // there is one, is installed before the pipeline starts.)
    let consumed_metric =
        metrics::counter!(crate::telemetry::names::CONSUMED, "platform" => spec.platform.as_str());
    let starter = Starter {
        shared: &shared,
        capture: spec.capture.as_ref(),
        permits: &permits,
        consumed_metric,
    };
    // The message waiting for a slot or its partition's window, and the messages set aside
    // per app once it waited too long (`HOLD_AFTER`): their app is paused meanwhile.
    let mut waiting: Option<Waiting> = None;
    let mut held: Held = BTreeMap::new();
    let mut consume_errors = super::kafka::PersistentErrors::default();
    let mut held_retry = tokio::time::interval(HELD_RETRY);
    held_retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut probe_check = tokio::time::interval(PROBE_CHECK);
    probe_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tracing::info!(topics = %crate::telemetry::Json(&spec.topics), group = %spec.group, "Consuming.");
    loop {
        let waits = waiting.is_some() || !held.is_empty();
        let message = tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = commit_tick.tick() => {
                // Every tenth, all partitions: heals an async commit refused unseen.
                ticks += 1;
                commit(&consumer, &tracker, &counters, CommitMode::Async, ticks % 10 == 0);
                consume_errors.tick();
                metrics::gauge!(crate::telemetry::names::IN_FLIGHT).set(tracker.lock().in_flight() as f64);
                continue;
            }
            Some((app, up)) = health.recv() => {
                pause_app(&consumer, &app, Pause::Down, !up);
                // A message waiting for a slot of an app whose endpoint is now down would wait
                // for the outage: set aside at once.
                if !up && waiting.as_ref().is_some_and(|w| w.app() == Some(app.as_str())) {
                    waiting = waiting.and_then(|w| hold(&starter, &consumer, &mut held, w));
                }
                continue;
            }
            _ = probe_check.tick() => {
                resume_unprobed(&consumer, &shared.apps);
                continue;
            }
            _ = status.tick() => {
                let context = consumer.context();
                let set_aside = held.iter().map(|(app, queue)| format!("{app}:{}", queue.len())).collect();
                status.log(&counters, tracker.lock().in_flight(), context.lag.load(Ordering::Relaxed), context.down_apps(), set_aside);
                continue;
            }
            event = next_wait_event(&starter, waiting.as_ref(), &mut held_retry), if waits => {
                match event {
                    WaitEvent::Slot(permit) => {
                        if let Some(w) = waiting.as_mut() {
                            w.permit = Some(permit);
                        }
                    }
                    WaitEvent::TooLong => {
                        waiting = waiting.and_then(|w| hold(&starter, &consumer, &mut held, w));
                        continue;
                    }
                    WaitEvent::Progress => {}
                }
                waiting = waiting.and_then(|w| starter.try_start(w));
                start_held(&starter, &consumer, &mut held);
                continue;
            }
            m = consumer.recv(), if waiting.is_none() => m,
        };
        let message = match message {
            Ok(m) => m,
            Err(e) => {
                // The seed's explicit per-app topics (`-single`, `-massive`) often do not
                // exist: say so once, not every few seconds.
                let missing_topic = e.rdkafka_error_code()
                    == Some(rdkafka::types::RDKafkaErrorCode::UnknownTopicOrPartition);
                if !missing_topic {
                    // The same reporter as librdkafka's error callback: an outage that
                    // shows on both paths is one line per kind, not two.
                    consumer.context().reports.error("consumer", &e, "consume");
                    consume_errors.seen(&e);
                } else if shared.reported.lock().insert(e.to_string()) {
                    tracing::info!(error = %e, "A subscribed topic does not exist (yet); consuming the others.");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if let Some(observer) = &shared.outputs.observer {
            observer.on_consumed(message.topic(), message.partition(), message.offset());
        }
        // The topic's app, looked up once here for the slot and the message task both.
        let (topic, app) = topic_app(&shared, message.topic());
        let consumed = Consumed {
            topic,
            app,
            partition: message.partition(),
            offset: message.offset(),
            // Bounded copies: a huge value is kept only as far as needed to refuse it.
            payload: message.payload().map(crate::push::message::bounded_copy),
            key: message.key().map(crate::push::message::bounded_copy),
            produced_at_ms: match message.timestamp() {
                Timestamp::CreateTime(t) | Timestamp::LogAppendTime(t) => Some(t),
                Timestamp::NotAvailable => None,
            },
            send_latency: None,
        };
        drop(message);
        // Behind messages of its app already set aside (fetched before the pause took):
        // after them, in order.
        if let Some(queue) = consumed.app.as_ref().and_then(|(app, _)| held.get_mut(app)) {
            let epoch = starter.epoch(&consumed);
            queue.push_back((consumed, epoch));
            continue;
        }
        // A slot of the message's app first (at most `max_in_flight` of an app's messages are
        // held), then its partition's window; else it waits, and nothing else is consumed.
        waiting = starter.try_start(Waiting::new(consumed));
        if let Some(every) = yield_every {
            started_since_yield += 1;
            if started_since_yield == every {
                started_since_yield = 0;
                tokio::task::yield_now().await;
            }
        }
    }

    // Graceful shutdown: no more fetching; let in-flight work finish within the timeout.
    tracing::info!("Stopping: finishing in-flight messages.");
    let drained = tokio::time::timeout(spec.shutdown_timeout, async {
        // Every slot free, and the messages waiting for their token's DELETE (they hold no
        // slot) done; messages waiting for a failing endpoint cannot finish: not waited for.
        loop {
            let in_flight = tracker.lock().in_flight();
            if in_flight == 0 || in_flight <= parked(&shared.apps) {
                break;
            }
            // Woken by each finished message; a message that starts waiting at a failing
            // endpoint says nothing, so look again at least every 100 ms.
            let _ =
                tokio::time::timeout(Duration::from_millis(100), shared.progress.notified()).await;
        }
    })
    .await
    .is_ok();
    hard_stop.cancel();
    let abandoned = tracker.lock().in_flight() as u64;
    if !drained {
        tracing::warn!(
            abandoned,
            "Shutdown timeout: unfinished messages will be redelivered."
        );
    } else if abandoned > 0 {
        tracing::warn!(
            abandoned,
            "Stopping with messages waiting for a failing endpoint: they will be redelivered."
        );
    }
    close(consumer, tracker.clone(), counters.clone()).await;
    let summary = RunSummary {
        consumed: counters.consumed.load(Ordering::Relaxed),
        finished: counters.finished.load(Ordering::Relaxed),
        outcomes: counters.outcomes(),
        committed: counters.committed.lock().clone(),
        abandoned,
    };
    Ok(summary)
}

/// How long the last commit and leaving the group may take at shutdown.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// The last commit, then leaves the group and closes the consumer, within `CLOSE_TIMEOUT`.
/// All three wait on the broker, and with the broker unreachable (stopped, not refusing)
/// closing waits without end: rdkafka's `Drop` polls until librdkafka reports the consumer
/// closed. So it runs on a thread of its own, and past the deadline we go on without it:
/// what was not committed is delivered again (at least once), and the group drops the silent
/// member after its session timeout.
async fn close(
    consumer: Arc<StreamConsumer<RebalanceContext>>,
    tracker: Arc<Mutex<OffsetTracker>>,
    counters: Arc<Counters>,
) {
    let (done, closed) = tokio::sync::oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name("kafka-close".into())
        .spawn(move || {
            commit(&consumer, &tracker, &counters, CommitMode::Sync, true);
            consumer.unsubscribe();
            drop(consumer);
            let _ = done.send(());
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "Could not close the Kafka consumer; its offsets are committed on the next start.");
        return;
    }
    if tokio::time::timeout(CLOSE_TIMEOUT, closed).await.is_err() {
        tracing::warn!(
            timeout = ?CLOSE_TIMEOUT,
            "Kafka did not answer the last commit or the group leave in time; stopping without them (uncommitted messages are delivered again)."
        );
    }
}

/// How long the loop waits for one message's slot (or its partition's window) before it sets
/// the message aside and pauses its app. Meanwhile nothing else is consumed: waiting for as
/// long as an app's slots stay taken (its endpoint hangs) stopped every other app, the commits,
/// the pauses and, at `max.poll.interval.ms`, the group membership. Short waits are the
/// backpressure of a busy pipeline, where pausing and resuming would refetch every time.
const HOLD_AFTER: Duration = Duration::from_secs(1);

/// How often messages set aside try again besides when a message finishes (a slot is given
/// back after its message finished, or while it waits for its token's DELETE).
const HELD_RETRY: Duration = Duration::from_millis(50);

/// A consumed message not started yet: no free slot of its app, or its partition's window full.
struct Waiting {
    message: Consumed,
    permit: Option<OwnedSemaphorePermit>,
    /// Since when it waits: set when it first has to (no clock read per message started).
    since: Option<tokio::time::Instant>,
}

impl Waiting {
    fn new(message: Consumed) -> Self {
        Waiting {
            message,
            permit: None,
            since: None,
        }
    }

    fn app(&self) -> Option<&str> {
        self.message.app.as_ref().map(|(app, _)| &**app)
    }

    fn waits(mut self) -> Self {
        self.since.get_or_insert_with(tokio::time::Instant::now);
        self
    }
}

/// Messages set aside, per app, in the order consumed, each with its partition's epoch then.
type Held = BTreeMap<Arc<str>, VecDeque<(Consumed, Option<u64>)>>;

/// Starts consumed messages: a slot of their app, a place in their partition's window, a task.
struct Starter<'a> {
    shared: &'a Arc<Shared>,
    capture: Option<&'a Arc<dyn Capture>>,
    permits: &'a foldhash::HashMap<String, Arc<Semaphore>>,
    consumed_metric: metrics::Counter,
}

impl Starter<'_> {
    /// The slots of the message's app; none for a topic of no app of ours (`handle` leaves
    /// its messages unfinished).
    fn app_permits(&self, m: &Consumed) -> Option<Arc<Semaphore>> {
        m.app
            .as_ref()
            .and_then(|(app, _)| self.permits.get(&**app).cloned())
    }

    /// The message's partition's current assignment (`OffsetTracker::epoch`).
    fn epoch(&self, m: &Consumed) -> Option<u64> {
        self.shared.tracker.lock().epoch(&m.topic, m.partition)
    }

    /// Starts the message, or gives it back when it has to wait.
    fn try_start(&self, mut w: Waiting) -> Option<Waiting> {
        if w.permit.is_none() {
            if let Some(permits) = self.app_permits(&w.message) {
                match permits.try_acquire_owned() {
                    Ok(p) => w.permit = Some(p),
                    Err(_) => return Some(w.waits()),
                }
            }
        }
        // Never skip a message: a later commit would pass over it. A full window (a slow
        // message at the head of its partition) is backpressure: wait for it to move.
        let m = &w.message;
        let revoked = {
            let mut tracker = self.shared.tracker.lock();
            match tracker.start(&m.topic, m.partition, m.offset) {
                Err(OffsetError::Full { .. }) => return Some(w.waits()),
                // Already started (a redelivery after a rebalance): the first copy handles it.
                Err(e) => {
                    tracing::debug!(error = %e, "Message not started.");
                    return None;
                }
                // Started: its window exists.
                Ok(()) => tracker
                    .revocation(&m.topic, m.partition)
                    .unwrap_or_default(),
            }
        };
        self.shared
            .counters
            .consumed
            .fetch_add(1, Ordering::Relaxed);
        self.consumed_metric.increment(1);
        // Once started: a redelivery the first copy handles is not recorded twice.
        if let Some(capture) = self.capture {
            capture.record(&m.topic, m.key.as_deref(), m.payload.as_deref());
        }
        let shared = self.shared.clone();
        let Waiting {
            message, permit, ..
        } = w;
        // Boxed: a message's future is ~3 KB (the send's state, the feedback's produce), and
        // tokio moves a spawned future by value through several calls before it is in place;
        // boxed, those moves are of a pointer. Counted with a uprobe on memmove: 111 copies
        // and 52.7 KB a message before (nine of them this future), 100 and 31 KB after.
        tokio::spawn(Box::pin(async move {
            handle(&shared, message, permit, revoked).await;
        }));
        None
    }
}

/// What ended a wait for a message's start.
enum WaitEvent {
    /// A slot of the waiting message's app.
    Slot(OwnedSemaphorePermit),
    /// A message finished (or time to look again): windows and slots may have room.
    Progress,
    /// The waiting message waited `HOLD_AFTER`.
    TooLong,
}

async fn next_wait_event(
    starter: &Starter<'_>,
    waiting: Option<&Waiting>,
    retry: &mut tokio::time::Interval,
) -> WaitEvent {
    let slot = waiting
        .filter(|w| w.permit.is_none())
        .and_then(|w| starter.app_permits(&w.message));
    let too_long = waiting
        .and_then(|w| w.since)
        .map(|since| since + HOLD_AFTER);
    tokio::select! {
        Ok(p) = async {
            match slot {
                Some(permits) => permits.acquire_owned().await,
                None => std::future::pending().await,
            }
        } => WaitEvent::Slot(p),
        _ = starter.shared.progress.notified() => WaitEvent::Progress,
        _ = retry.tick() => WaitEvent::Progress,
        _ = async {
            match too_long {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        } => WaitEvent::TooLong,
    }
}

/// Sets a waiting message aside and pauses its app, so that the other apps go on. A message of
/// no app of ours has no pause to take: it goes on waiting.
fn hold(
    starter: &Starter<'_>,
    consumer: &StreamConsumer<RebalanceContext>,
    held: &mut Held,
    w: Waiting,
) -> Option<Waiting> {
    let Some(app) = w.message.app.as_ref().map(|(app, _)| app.clone()) else {
        return Some(Waiting {
            since: Some(tokio::time::Instant::now()),
            ..w
        });
    };
    // Its slot, if it had one, goes back: it is taken again when the message starts.
    // No rebalance runs while a message waits (that happens inside `recv`, not polled then):
    // the epoch now is the one it was read under.
    let epoch = starter.epoch(&w.message);
    held.entry(app.clone())
        .or_default()
        .push_back((w.message, epoch));
    pause_app(consumer, &app, Pause::Held, true);
    None
}

/// Starts what was set aside, in order, as far as slots and windows allow; an app whose
/// messages all started is resumed.
fn start_held(starter: &Starter<'_>, consumer: &StreamConsumer<RebalanceContext>, held: &mut Held) {
    held.retain(|app, queue| {
        while let Some((message, epoch)) = queue.pop_front() {
            // Its partition was revoked since (and maybe assigned again): whoever holds it
            // now reads it again from the committed offset, which cannot be past it. Started
            // on a new window, its offset would have become committable at once, past the
            // messages before it that are read again.
            if starter.epoch(&message) != epoch {
                tracing::debug!(topic = %message.topic, partition = message.partition, offset = message.offset, "Held message of a revoked partition dropped; it is read again.");
                continue;
            }
            if let Some(w) = starter.try_start(Waiting::new(message)) {
                queue.push_front((w.message, epoch));
                return true;
            }
        }
        pause_app(consumer, app, Pause::Held, false);
        false
    });
}

/// Each app's endpoint health, as `(app, up)` on every change (and on `/healthz`): an app is
/// down while any of its gates is, and with several gates (web push: one per push service)
/// the cause names which.
fn watch_endpoints(
    apps: &foldhash::HashMap<String, AppSender>,
) -> tokio::sync::mpsc::UnboundedReceiver<(String, bool)> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    for (app, sender) in apps {
        let gates = sender.gates();
        let named = gates.len() > 1;
        let mut healths: Vec<(String, watch::Receiver<Health>)> = gates
            .iter()
            .map(|gate| (gate.name().to_string(), gate.health()))
            .collect();
        let (app, tx) = (app.clone(), tx.clone());
        let component = format!("endpoint {} {app}", sender.platform());
        tokio::spawn(async move {
            loop {
                let changes = healths.iter_mut().map(|(_, h)| Box::pin(h.changed()));
                let (changed, _, _) = futures_util::future::select_all(changes).await;
                if changed.is_err() {
                    break;
                }
                let causes: Vec<String> = healths
                    .iter_mut()
                    .filter_map(|(name, health)| match &*health.borrow_and_update() {
                        Health::Up => None,
                        Health::Down { cause, .. } if named => Some(format!("{name}: {cause}")),
                        Health::Down { cause, .. } => Some(cause.clone()),
                    })
                    .collect();
                let up = causes.is_empty();
                crate::telemetry::health::set(&component, (!up).then(|| causes.join("; ")));
                if tx.send((app.clone(), up)).is_err() {
                    break;
                }
            }
        });
    }
    rx
}

/// How often the loop looks for a paused app whose failing endpoint nobody is left to probe.
const PROBE_CHECK: Duration = Duration::from_secs(1);

/// Resumes each app paused for a failing endpoint at which no message waits any more (they
/// expired there, or one alone gave up): a gate opens only on an answer to a send, and with
/// the app paused no send would come, so it stayed paused for good. The next message probes
/// the endpoint; if it still fails, its messages wait at the gate again, and once they fill
/// the app's slots the app pauses again (held), with one of them probing.
fn resume_unprobed(
    consumer: &StreamConsumer<RebalanceContext>,
    apps: &foldhash::HashMap<String, AppSender>,
) {
    for app in consumer.context().down_apps() {
        let Some(sender) = apps.get(&app) else {
            continue;
        };
        let gates = sender.gates();
        if gates.iter().any(Gate::awaits_a_probe) && gates.iter().all(|g| g.parked() == 0) {
            tracing::info!(
                app,
                "No message waits at the failing endpoint: consuming again, so that the next one probes it."
            );
            pause_app(consumer, &app, Pause::Down, false);
        }
    }
}

/// Messages waiting at a failing endpoint's gate, over all apps.
fn parked(apps: &foldhash::HashMap<String, AppSender>) -> usize {
    apps.values()
        .flat_map(AppSender::gates)
        .map(Gate::parked)
        .sum()
}
