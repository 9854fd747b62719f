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
use crate::telemetry::KafkaReports;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::message::{Message, Timestamp};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::ClientContext;
use regex::Regex;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
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

/// The app (game) and platform a topic names, e.g. `push-game_gcm-single` -> ("game", gcm).
pub fn app_from_topic(topic: &str) -> Option<(String, Platform)> {
    static RE: OnceLock<Option<Regex>> = OnceLock::new();
    let re = RE
        .get_or_init(|| Regex::new(r"^push-(\w+(?:[_-]\w+)*?)[-_](apns|gcm)").ok())
        .as_ref()?;
    let caps = re.captures(topic)?;
    let platform = caps.get(2)?.as_str().parse().ok()?;
    Some((caps.get(1)?.as_str().to_string(), platform))
}

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

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(list) = rebalance {
            let mut tracker = lock(&self.tracker);
            for e in list.elements() {
                tracker.assign(e.topic(), e.partition());
            }
            tracing::info!(partitions = list.count(), "Partitions assigned.");
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
    let permits = Arc::new(Semaphore::new(spec.max_in_flight.max(1)));
    let mut commit_tick = tokio::time::interval(spec.commit_interval);
    commit_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    tracing::info!(topics = ?spec.topics, group = %spec.group, "Consuming.");
    loop {
        // Take a slot before fetching: at most `max_in_flight` messages are ever held.
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
        };
        let message = tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = commit_tick.tick() => {
                commit(&consumer, &tracker, &counters, CommitMode::Async);
                metrics::gauge!(crate::telemetry::names::IN_FLIGHT).set(lock(&tracker).in_flight() as f64);
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
    let all = u32::try_from(spec.max_in_flight.max(1)).unwrap_or(u32::MAX);
    let drained = tokio::time::timeout(spec.shutdown_timeout, async {
        let _all = permits.acquire_many(all).await;
        // Messages waiting for their token's DELETE hold no slot: wait for them too.
        while lock(&tracker).in_flight() > 0 {
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
async fn handle(shared: &Shared, mut m: Consumed, slot: tokio::sync::OwnedSemaphorePermit) {
    let Some((app, platform)) = topic_app(shared, &m.topic) else {
        report_once(shared, &m.topic, "Topic does not name an app and platform (push-<app>_<apns|gcm>); its messages are skipped.");
        finish(
            shared,
            &m,
            "",
            "",
            &Outcome::Rejected {
                reason: "unknown_topic".into(),
            },
        );
        return;
    };
    let mut ctx = MessageContext {
        app: app.clone(),
        consumed_at: now().as_secs() as i64,
        hostname: shared.hostname.clone(),
        ..Default::default()
    };
    if platform != shared.platform {
        report_once(
            shared,
            &m.topic,
            "Topic is for the other platform; its messages are skipped.",
        );
        finish(
            shared,
            &m,
            &app,
            "",
            &Outcome::Rejected {
                reason: "wrong_platform".into(),
            },
        );
        return;
    }
    let (outcome, details) = match shared.apps.get(&app) {
        None => {
            report_once(
                shared,
                &app,
                "No credentials for this app; its messages get feedback `unknown_app`.",
            );
            (
                Outcome::Rejected {
                    reason: "unknown_app".into(),
                },
                ApnsDetails::default(),
            )
        }
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
            return Outcome::Malformed {
                reason: e.reason().to_string(),
            }
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
            let mut backoff = Duration::from_millis(100);
            loop {
                match producer.send(&ctx.app, shared.platform, &record).await {
                    Ok(()) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "Feedback not delivered; retrying.");
                        tokio::select! {
                            _ = shared.stop.cancelled() => return HandOff::Stopped,
                            _ = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(5));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_and_platform_from_topic() {
        let cases = [
            ("push-game_gcm", Some(("game", Platform::Gcm))),
            ("push-game_apns-single", Some(("game", Platform::Apns))),
            ("push-game_apns-massive", Some(("game", Platform::Apns))),
            ("push-my-app_gcm", Some(("my-app", Platform::Gcm))),
            ("push-my_app_apns", Some(("my_app", Platform::Apns))),
            ("push-game-apns", Some(("game", Platform::Apns))),
            ("other-topic", None),
            ("push-_gcm", None),
            ("push-game", None),
        ];
        for (topic, want) in cases {
            let got = app_from_topic(topic);
            assert_eq!(got.as_ref().map(|(a, p)| (a.as_str(), *p)), want, "{topic}");
        }
    }
}
