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

use super::feedback::{self, ApnsDetails, FeedbackProducer, FeedbackRecord, MessageContext};
use super::offsets::{OffsetError, OffsetTracker};
use super::tokens::{DeletionTicket, TokenError, TokenQueue};
use crate::push::message::{is_expired, parse_apns, parse_gcm};
use crate::push::{Outcome, Platform};
use crate::sender::apns::ApnsSender;
use crate::sender::fcm::FcmSender;
use crate::sender::gate::{Gate, Health};
use crate::sender::retry::RetryPolicy;
use crate::telemetry::KafkaReports;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::message::{Message, Timestamp};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::ClientContext;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::Semaphore;
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
    pub capture: Option<Arc<crate::replay::capture::CaptureWriter>>,
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

/// The sender of one app.
#[derive(Debug, Clone)]
pub enum AppSender {
    Apns(ApnsSender),
    Gcm(FcmSender),
}

impl AppSender {
    pub fn gate(&self) -> &Gate {
        match self {
            AppSender::Apns(s) => s.gate(),
            AppSender::Gcm(s) => s.gate(),
        }
    }

    pub fn platform(&self) -> Platform {
        match self {
            AppSender::Apns(_) => Platform::Apns,
            AppSender::Gcm(_) => Platform::Gcm,
        }
    }
}

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
struct Counters {
    consumed: AtomicU64,
    finished: AtomicU64,
    outcomes: Mutex<BTreeMap<String, u64>>,
    committed: Mutex<BTreeMap<(String, i32), i64>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere must not stop the pusher: the data is still consistent counters.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Commits on revocation, and resets the tracker on assignment.
struct RebalanceContext {
    tracker: Arc<Mutex<OffsetTracker>>,
    counters: Arc<Counters>,
    /// librdkafka's logs and errors, at most one of a kind every 10 s.
    reports: KafkaReports,
    /// Which assigned topics this pusher may send: its platform's, for the apps it has
    /// credentials for. Others are paused, not drained.
    platform: Platform,
    apps: std::collections::HashSet<String>,
    /// Topics already reported as not consumed.
    refused: Mutex<std::collections::HashSet<String>>,
    /// Apps whose endpoint is failing: their partitions stay paused until it answers again.
    down: Mutex<std::collections::BTreeSet<String>>,
    /// The last consumer lag seen in librdkafka's statistics (-1: none yet).
    lag: std::sync::atomic::AtomicI64,
    /// Since when no broker has been up, for `/healthz`.
    brokers_down_since: Mutex<Option<std::time::Instant>>,
    /// How long the brokers may be unreachable before `/healthz` says so.
    session_timeout: Duration,
}

impl RebalanceContext {
    /// Why this pusher cannot send `topic`'s messages, if it cannot. None of these is the
    /// messages' fault (a regex matched an app without credentials, or a topic of the other
    /// platform), so they are left in Kafka for a pusher that can, never refused and committed.
    fn refusal(&self, topic: &str) -> Option<String> {
        match app_from_topic(topic) {
            None => {
                Some("its name does not say an app and platform (push-<app>_<platform>)".into())
            }
            Some((_, p)) if p != self.platform => Some(format!("it is a {p} topic")),
            Some((app, _)) if !self.apps.contains(&app) => Some(format!(
                "app {app:?} has no {} credentials here",
                self.platform
            )),
            Some(_) => None,
        }
    }

    fn is_down(&self, topic: &str) -> bool {
        app_from_topic(topic).is_some_and(|(app, _)| lock(&self.down).contains(&app))
    }

    fn down_apps(&self) -> Vec<String> {
        lock(&self.down).iter().cloned().collect()
    }

    /// `/healthz` says the brokers are unreachable once none has been up for a session
    /// timeout (the group has dropped this member by then).
    fn broker_health(&self, any_up: bool) {
        let mut since = lock(&self.brokers_down_since);
        let down_for = match (any_up, *since) {
            (true, _) => None,
            (false, None) => {
                *since = Some(std::time::Instant::now());
                Some(Duration::ZERO)
            }
            (false, Some(at)) => Some(at.elapsed()),
        };
        if any_up {
            *since = None;
        }
        let problem = down_for
            .filter(|d| *d >= self.session_timeout)
            .map(|d| format!("no Kafka broker reachable for {} s", d.as_secs()));
        crate::telemetry::health::set("kafka", problem);
    }
}

impl ClientContext for RebalanceContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        self.reports.log(level, fac, log_message);
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        // A missing subscribed topic is reported by the consume loop, once.
        if error.rdkafka_error_code()
            == Some(rdkafka::types::RDKafkaErrorCode::UnknownTopicOrPartition)
        {
            tracing::debug!(%error, reason, "librdkafka: topic not available.");
        } else {
            self.reports.error("consumer", &error, reason);
        }
    }

    /// The consumer-lag gauge: high watermark minus committed offset, summed over the
    /// partitions this consumer holds. librdkafka computes it from its own fetches and our
    /// commits, so this costs no request, and never calls `committed()` on this consumer
    /// (that makes its Drop hang: kafka-probe.md §1.5). A partition with no commit yet is
    /// unknown (-1 in librdkafka) and left out.
    fn stats(&self, statistics: rdkafka::statistics::Statistics) {
        let lag: i64 = statistics
            .topics
            .values()
            .flat_map(|t| t.partitions.values())
            .filter(|p| p.partition >= 0 && p.consumer_lag >= 0)
            .map(|p| p.consumer_lag)
            .sum();
        metrics::gauge!(crate::telemetry::names::CONSUMER_LAG).set(lag as f64);
        self.lag.store(lag, Ordering::Relaxed);
        self.broker_health(statistics.brokers.values().any(|b| b.state == "UP"));
    }
}

impl ConsumerContext for RebalanceContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(list) = rebalance {
            let mut tracker = lock(&self.tracker);
            let commits = tracker.take_commits();
            if !commits.is_empty() {
                // Synchronous: the new owner starts from what we commit here.
                match consumer.commit(&to_list(&commits), CommitMode::Sync) {
                    Ok(()) => record_commits(&self.counters, &commits),
                    Err(e) => {
                        tracing::warn!(error = %e, "Commit on revocation failed; the new owner redoes those messages.")
                    }
                }
            }
            for e in list.elements() {
                tracker.revoke(e.topic(), e.partition());
            }
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(list) = rebalance {
            let mut refused = TopicPartitionList::new();
            {
                let mut tracker = lock(&self.tracker);
                for e in list.elements() {
                    tracker.assign(e.topic(), e.partition());
                    if let Some(why) = self.refusal(e.topic()) {
                        refused.add_partition(e.topic(), e.partition());
                        if lock(&self.refused).insert(e.topic().to_string()) {
                            tracing::error!(topic = e.topic(), "Not consuming this topic: {why}. Its messages stay in Kafka, uncommitted.");
                        }
                    } else if self.is_down(e.topic()) {
                        // Its app's endpoint is failing: it resumes when that answers again.
                        refused.add_partition(e.topic(), e.partition());
                    }
                }
            }
            if refused.count() > 0 {
                if let Err(e) = consumer.pause(&refused) {
                    tracing::error!(error = %e, "Could not pause partitions this pusher cannot send.");
                }
            }
            tracing::info!(
                partitions = list.count(),
                paused = refused.count(),
                "Partitions assigned."
            );
        }
    }
}

fn to_list(commits: &[(String, i32, i64)]) -> TopicPartitionList {
    let mut list = TopicPartitionList::new();
    for (topic, partition, offset) in commits {
        // Cannot fail for a plain offset.
        let _ = list.add_partition_offset(topic, *partition, Offset::Offset(*offset));
    }
    list
}

fn record_commits(counters: &Counters, commits: &[(String, i32, i64)]) {
    let mut committed = lock(&counters.committed);
    for (topic, partition, offset) in commits {
        committed.insert((topic.clone(), *partition), *offset);
    }
}

/// Everything a message task needs, shared.
struct Shared {
    platform: Platform,
    apps: HashMap<String, AppSender>,
    outputs: Outputs,
    include_success: bool,
    tracker: Arc<Mutex<OffsetTracker>>,
    counters: Arc<Counters>,
    hostname: String,
    stop: CancellationToken,
    /// Unknown apps and unmatched topics are reported once each, not per message.
    reported: Mutex<std::collections::HashSet<String>>,
    /// `app_from_topic` per topic seen: a regex match per message was ~2 % of the loop.
    topic_apps: Mutex<HashMap<String, Option<(String, Platform)>>>,
    /// Given-up messages per (app, reason) since that pair was last reported.
    gave_up: Mutex<HashMap<(String, String), GaveUpReport>>,
}

/// Given-up messages are logged as errors (and so reach Sentry) at most once a minute per app
/// and reason: an APNs outage must not become a million events.
#[derive(Default)]
struct GaveUpReport {
    /// When it was last reported (never: `None`).
    last: Option<tokio::time::Instant>,
    unreported: u64,
}

const GAVE_UP_REPORT_EVERY: Duration = Duration::from_secs(60);

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
        apps,
        outputs,
        include_success: spec.include_success_feedback,
        tracker: tracker.clone(),
        counters: counters.clone(),
        hostname: hostname(),
        stop: hard_stop.clone(),
        reported: Mutex::new(Default::default()),
        topic_apps: Mutex::new(HashMap::new()),
        gave_up: Mutex::new(HashMap::new()),
    });
    // A bound per app: an app whose endpoint is down holds only its own slots (its messages
    // wait at the sender's gate), and the other apps go on.
    let permits: HashMap<String, Arc<Semaphore>> = shared
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

    tracing::info!(topics = %crate::telemetry::Json(&spec.topics), group = %spec.group, "Consuming.");
    loop {
        // Fetching goes on while an endpoint is down (its partitions are paused, so nothing of
        // theirs arrives): a consumer that stops polling is dropped from its group.
        let message = tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = commit_tick.tick() => {
                commit(&consumer, &tracker, &counters, CommitMode::Async);
                metrics::gauge!(crate::telemetry::names::IN_FLIGHT).set(lock(&tracker).in_flight() as f64);
                continue;
            }
            Some((app, up)) = health.recv() => {
                pause_app(&consumer, &app, up);
                continue;
            }
            _ = status.tick() => {
                let context = consumer.context();
                status.log(&counters, lock(&tracker).in_flight(), context.lag.load(Ordering::Relaxed), context.down_apps());
                continue;
            }
            m = consumer.recv() => m,
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
                } else if lock(&shared.reported).insert(e.to_string()) {
                    tracing::info!(error = %e, "A subscribed topic does not exist (yet); consuming the others.");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (topic, partition, offset) = (
            message.topic().to_string(),
            message.partition(),
            message.offset(),
        );
        // Never skip a message: a later commit would pass over it. A full window (a slow
        // message at the head of its partition) is backpressure: wait for it to move.
        let started = loop {
            match lock(&tracker).start(&topic, partition, offset) {
                Err(OffsetError::Full { .. }) => {}
                other => break other,
            }
            tokio::select! {
                _ = shutdown.cancelled() => break Err(OffsetError::Full { topic: topic.clone(), partition, capacity: 0 }),
                _ = tokio::time::sleep(Duration::from_millis(5)) => {}
            }
        };
        if let Err(e) = started {
            // Already started (a redelivery after a rebalance): the first copy handles it.
            // Or stopping: the message is not committed and will be read again.
            tracing::debug!(error = %e, "Message not started.");
            continue;
        }
        // A slot of the message's app: at most `max_in_flight` of an app's messages are held.
        // (A topic of no app of ours gets none: `handle` leaves it unfinished.)
        let app_permits =
            topic_app(&shared, &topic).and_then(|(app, _)| permits.get(&app).cloned());
        let permit = match app_permits {
            Some(p) => tokio::select! {
                _ = shutdown.cancelled() => break,
                p = p.acquire_owned() => match p { Ok(p) => Some(p), Err(_) => break },
            },
            None => None,
        };
        counters.consumed.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(crate::telemetry::names::CONSUMED, "platform" => spec.platform.as_str())
            .increment(1);
        if let Some(capture) = &spec.capture {
            capture.record(&topic, message.key(), message.payload());
        }
        // Bounded copies: a huge value is kept only as far as needed to refuse it.
        let payload = message.payload().map(crate::push::message::bounded_copy);
        let key = message.key().map(crate::push::message::bounded_copy);
        let produced_at_ms = match message.timestamp() {
            Timestamp::CreateTime(t) | Timestamp::LogAppendTime(t) => Some(t),
            Timestamp::NotAvailable => None,
        };
        drop(message);
        let shared = shared.clone();
        tokio::spawn(async move {
            handle(
                &shared,
                Consumed {
                    topic,
                    partition,
                    offset,
                    payload,
                    key,
                    produced_at_ms,
                    send_latency: None,
                },
                permit,
            )
            .await;
        });
    }

    // Graceful shutdown: no more fetching; let in-flight work finish within the timeout.
    tracing::info!("Stopping: finishing in-flight messages.");
    let drained = tokio::time::timeout(spec.shutdown_timeout, async {
        // Every slot free, and the messages waiting for their token's DELETE (they hold no
        // slot) done; messages waiting for a failing endpoint cannot finish: not waited for.
        loop {
            let in_flight = lock(&tracker).in_flight();
            if in_flight == 0 || in_flight <= parked(&shared.apps) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .is_ok();
    hard_stop.cancel();
    let abandoned = lock(&tracker).in_flight() as u64;
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
        outcomes: lock(&counters.outcomes).clone(),
        committed: lock(&counters.committed).clone(),
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
            commit(&consumer, &tracker, &counters, CommitMode::Sync);
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

/// Each app's endpoint health, as `(app, up)` on every change (and on `/healthz`).
fn watch_endpoints(
    apps: &HashMap<String, AppSender>,
) -> tokio::sync::mpsc::UnboundedReceiver<(String, bool)> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    for (app, sender) in apps {
        let mut health = sender.gate().health();
        let (app, tx) = (app.clone(), tx.clone());
        let component = format!("endpoint {} {app}", sender.platform());
        tokio::spawn(async move {
            while health.changed().await.is_ok() {
                let now = health.borrow_and_update().clone();
                let problem = match &now {
                    Health::Up => None,
                    Health::Down { cause, .. } => Some(cause.clone()),
                };
                crate::telemetry::health::set(&component, problem);
                if tx.send((app.clone(), now.is_up())).is_err() {
                    break;
                }
            }
        });
    }
    rx
}

/// Pauses (or resumes) the assigned partitions of `app`'s topics: while its endpoint fails,
/// nothing more of it is fetched, and what is in flight waits, uncommitted.
fn pause_app(consumer: &StreamConsumer<RebalanceContext>, app: &str, up: bool) {
    let context = consumer.context();
    if up {
        lock(&context.down).remove(app);
    } else {
        lock(&context.down).insert(app.to_string());
    }
    let Ok(assigned) = consumer.assignment() else {
        return;
    };
    let mut list = TopicPartitionList::new();
    for e in assigned.elements() {
        let ours = context.refusal(e.topic()).is_none();
        if ours && app_from_topic(e.topic()).is_some_and(|(a, _)| a == app) {
            list.add_partition(e.topic(), e.partition());
        }
    }
    if list.count() == 0 {
        return;
    }
    let result = if up {
        consumer.resume(&list)
    } else {
        consumer.pause(&list)
    };
    match result {
        Ok(()) if up => tracing::info!(app, partitions = list.count(), "Consuming again."),
        Ok(()) => tracing::warn!(
            app,
            partitions = list.count(),
            "Paused consuming until the endpoint answers."
        ),
        Err(e) => tracing::error!(app, error = %e, "Could not pause or resume partitions."),
    }
}

/// Messages waiting at a failing endpoint's gate, over all apps.
fn parked(apps: &HashMap<String, AppSender>) -> usize {
    apps.values().map(|s| s.gate().parked()).sum()
}

/// The line `pusher run` logs every `log_interval`: what it did since the last one.
struct StatusLine {
    tick: Option<tokio::time::Interval>,
    since: tokio::time::Instant,
    finished: u64,
    outcomes: BTreeMap<String, u64>,
}

impl StatusLine {
    fn new(every: Duration) -> StatusLine {
        let tick = (!every.is_zero()).then(|| {
            let mut t = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            t
        });
        StatusLine {
            tick,
            since: tokio::time::Instant::now(),
            finished: 0,
            outcomes: BTreeMap::new(),
        }
    }

    async fn tick(&mut self) {
        match &mut self.tick {
            Some(t) => {
                t.tick().await;
            }
            None => std::future::pending().await,
        }
    }

    fn log(&mut self, counters: &Counters, in_flight: usize, lag: i64, paused: Vec<String>) {
        let finished = counters.finished.load(Ordering::Relaxed);
        let outcomes = lock(&counters.outcomes).clone();
        let secs = self.since.elapsed().as_secs_f64().max(0.001);
        let rate = (finished - self.finished) as f64 / secs;
        let mut delta: Vec<String> = outcomes
            .iter()
            .filter_map(|(k, n)| {
                let d = n - self.outcomes.get(k).copied().unwrap_or(0);
                (d > 0).then(|| format!("{k}={d}"))
            })
            .collect();
        if delta.is_empty() {
            delta.push("none".into());
        }
        tracing::info!(
            rate = format!("{rate:.0}/s"),
            outcomes = delta.join(" "),
            in_flight,
            lag = (lag >= 0).then_some(lag),
            paused = (!paused.is_empty()).then(|| paused.join(",")),
            "Status."
        );
        self.since = tokio::time::Instant::now();
        self.finished = finished;
        self.outcomes = outcomes;
    }
}

fn consumer(
    spec: &RunSpec,
    context: RebalanceContext,
) -> Result<StreamConsumer<RebalanceContext>, PipelineError> {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &spec.brokers)
        .set("group.id", &spec.group)
        // We commit ourselves, only what is done (the seed auto-committed on read).
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", &spec.offset_reset)
        .set(
            "session.timeout.ms",
            spec.session_timeout.as_millis().to_string(),
        )
        // librdkafka's default heartbeat (3 s) is as long as a short session: the member
        // would time out between heartbeats and rebalance for nothing. A third, as Kafka's docs advise.
        .set(
            "heartbeat.interval.ms",
            (spec.session_timeout.as_millis() / 3).max(100).to_string(),
        )
        .set("enable.partition.eof", "false")
        // Bound the prefetch queue: memory stays flat under any backlog.
        .set("queued.max.messages.kbytes", "16384")
        // Statistics feed the consumer-lag gauge (RebalanceContext::stats).
        .set(
            "statistics.interval.ms",
            spec.lag_interval.as_millis().to_string(),
        );
    for (k, v) in &spec.consumer_extra {
        config.set(k, v);
    }
    config
        .create_with_context(context)
        .map_err(PipelineError::Consumer)
}

fn commit(
    consumer: &StreamConsumer<RebalanceContext>,
    tracker: &Mutex<OffsetTracker>,
    counters: &Counters,
    mode: CommitMode,
) {
    let commits = lock(tracker).take_commits();
    if commits.is_empty() {
        return;
    }
    match consumer.commit(&to_list(&commits), mode) {
        Ok(()) => record_commits(counters, &commits),
        Err(e) => {
            tracing::warn!(error = %e, "Offset commit failed; it is retried with the next one.")
        }
    }
}

struct Consumed {
    topic: String,
    partition: i32,
    offset: i64,
    payload: Option<Vec<u8>>,
    key: Option<Vec<u8>>,
    produced_at_ms: Option<i64>,
    send_latency: Option<Duration>,
}

fn now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// One message, from bytes to a handed-off outcome. `slot` is its in-flight permit.
async fn handle(shared: &Shared, mut m: Consumed, slot: Option<tokio::sync::OwnedSemaphorePermit>) {
    // Partitions of topics this pusher cannot send are paused on assignment; a message that
    // got through anyway is left unfinished (its partition commits no further), never
    // refused: it is not the message's fault.
    let Some((app, platform)) = topic_app(shared, &m.topic) else {
        report_once(
            shared,
            &m.topic,
            "Message from a topic that names no app and platform; left uncommitted.",
        );
        return;
    };
    if platform != shared.platform || !shared.apps.contains_key(&app) {
        report_once(
            shared,
            &m.topic,
            "Message from a topic this pusher cannot send; left uncommitted.",
        );
        return;
    }
    let mut ctx = MessageContext {
        app: app.clone(),
        consumed_at: now().as_secs() as i64,
        hostname: shared.hostname.clone(),
        ..Default::default()
    };
    let (outcome, details) = match shared.apps.get(&app) {
        // Checked above.
        None => return,
        Some(AppSender::Apns(sender)) => {
            let started = tokio::time::Instant::now();
            // Boxed: the send future is most of this task's size, and the task is moved
            // whole when spawned (memmove was the top symbol of the pipeline thread).
            let result = Box::pin(apns(sender, m.payload.as_deref(), &mut ctx)).await;
            m.send_latency = Some(started.elapsed());
            result
        }
        Some(AppSender::Gcm(sender)) => {
            let started = tokio::time::Instant::now();
            let outcome = Box::pin(gcm(sender, m.payload.as_deref(), &mut ctx)).await;
            m.send_latency = Some(started.elapsed());
            (outcome, ApnsDetails::default())
        }
    };
    // Side effects first, then the offset: that order is the at-least-once contract.
    let deletion = match hand_off(shared, &ctx, &outcome, &details).await {
        HandOff::Done => None,
        HandOff::Deleting(ticket) => Some(ticket),
        HandOff::Stopped => return, // Not finished, so it will be redelivered.
    };
    drop(slot);
    if let Some(ticket) = deletion {
        let committed = tokio::select! {
            _ = shared.stop.cancelled() => return,
            c = ticket.committed() => c,
        };
        match committed {
            Ok(()) => {}
            // The database refuses it for good (counted by the deleter): retrying cannot help.
            Err(TokenError::Permanent { .. }) => {}
            // The deleter stopped before the DELETE: not finished, so it will be redelivered.
            Err(e) => {
                tracing::warn!(error = %e, "Token not deleted; the message will be redone.");
                return;
            }
        }
    }
    finish(shared, &m, &app, &ctx.token, &outcome);
}

/// Where a message's side effects stand after [`hand_off`].
enum HandOff {
    Done,
    /// Feedback is out; the token's DELETE is queued and the ticket says when it committed.
    Deleting(DeletionTicket),
    /// Stopped before the side effects were out.
    Stopped,
}

async fn apns(
    sender: &ApnsSender,
    payload: Option<&[u8]>,
    ctx: &mut MessageContext,
) -> (Outcome, ApnsDetails) {
    let mut message = match parse_apns(payload.unwrap_or_default()) {
        Ok(m) => m,
        Err(e) => {
            ctx.token = payload
                .and_then(|p| crate::push::message::token_hint(p, true))
                .unwrap_or_default();
            let details = ApnsDetails {
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
    if is_expired(message.push_expiry, now()) {
        let details = ApnsDetails {
            notification: notification_json(),
            ..Default::default()
        };
        return (Outcome::Expired, details);
    }
    let delivery = sender.send_with_details(&message.notification).await;
    let details = if delivery.outcome.is_delivered() {
        // Built lazily: successes need it only for success feedback.
        ApnsDetails {
            apns_id: delivery
                .response
                .as_ref()
                .and_then(|r| r.apns_id.clone())
                .unwrap_or_default(),
            status: delivery.response.as_ref().map(|r| r.status),
            notification: serde_json::Value::Null,
        }
    } else {
        ApnsDetails {
            apns_id: delivery
                .response
                .as_ref()
                .and_then(|r| r.apns_id.clone())
                .unwrap_or_default(),
            status: delivery.response.as_ref().map(|r| r.status),
            notification: notification_json(),
        }
    };
    (delivery.outcome, details)
}

async fn gcm(sender: &FcmSender, payload: Option<&[u8]>, ctx: &mut MessageContext) -> Outcome {
    let mut message = match parse_gcm(payload.unwrap_or_default()) {
        Ok(m) => m,
        Err(e) => {
            ctx.token = payload
                .and_then(|p| crate::push::message::token_hint(p, false))
                .unwrap_or_default();
            return Outcome::Malformed {
                reason: e.reason().to_string(),
            };
        }
    };
    ctx.token = message.to.clone();
    ctx.metadata = std::mem::take(&mut message.metadata);
    if is_expired(message.push_expiry, now()) {
        return Outcome::Expired;
    }
    let delivery = sender.send_with_details(&message).await;
    if let Some(canonical) = &delivery.canonical_registration_id {
        // Legacy FCM asks to replace the token; the feedback carries it for the token store.
        ctx.canonical_registration_id = Some(canonical.clone());
    }
    delivery.outcome
}

/// Feedback produced and acknowledged, then the token queued for deletion.
async fn hand_off(
    shared: &Shared,
    ctx: &MessageContext,
    outcome: &Outcome,
    details: &ApnsDetails,
) -> HandOff {
    if let Some(producer) = &shared.outputs.feedback {
        if feedback::should_report(outcome, shared.include_success) {
            let record = match shared.platform {
                Platform::Apns => {
                    FeedbackRecord::Apns(feedback::apns_record(outcome, ctx, details))
                }
                Platform::Gcm => FeedbackRecord::Gcm(feedback::gcm_record(outcome, ctx)),
            };
            let policy = RetryPolicy::unbounded(Duration::from_millis(100), Duration::from_secs(5));
            let mut attempt = 0;
            loop {
                attempt += 1;
                match producer.send(&ctx.app, shared.platform, &record).await {
                    Ok(()) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "Feedback not delivered; retrying.");
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

fn finish(shared: &Shared, m: &Consumed, app: &str, token: &str, outcome: &Outcome) {
    if let Outcome::GaveUp { reason } = outcome {
        report_gave_up(shared, app, reason);
    }
    {
        // Look up before inserting: no String allocated per message.
        let mut outcomes = lock(&shared.counters.outcomes);
        match outcomes.get_mut(outcome.class()) {
            Some(n) => *n += 1,
            None => {
                outcomes.insert(outcome.class().to_string(), 1);
            }
        }
    }
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
    if lock(&shared.tracker)
        .finish(&m.topic, m.partition, m.offset)
        .is_ok()
    {
        shared.counters.finished.fetch_add(1, Ordering::Relaxed);
    }
}

/// `app_from_topic`, remembered per topic (a consumer sees a handful of topics).
fn topic_app(shared: &Shared, topic: &str) -> Option<(String, Platform)> {
    let mut known = lock(&shared.topic_apps);
    if let Some(found) = known.get(topic) {
        return found.clone();
    }
    let found = app_from_topic(topic);
    known.insert(topic.to_string(), found.clone());
    found
}

fn report_gave_up(shared: &Shared, app: &str, reason: &str) {
    let now = tokio::time::Instant::now();
    let mut reports = lock(&shared.gave_up);
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

fn report_once(shared: &Shared, key: &str, what: &str) {
    if lock(&shared.reported).insert(key.to_string()) {
        tracing::error!(key, "{what}");
    }
}
