//! The Kafka side of `pusher run`: the consumer and its context (rebalances commit what is
//! done and reset the tracker; topics this pusher cannot send, and apps whose endpoint fails,
//! are paused; librdkafka's logs and statistics), and committing.

use super::offsets::OffsetTracker;
use super::run::{app_from_topic, Counters, PipelineError, RunSpec};
use crate::push::Platform;
use crate::telemetry::KafkaReports;
use parking_lot::Mutex;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::ClientContext;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// Commits on revocation, and resets the tracker on assignment.
pub(super) struct RebalanceContext {
    pub(super) tracker: Arc<Mutex<OffsetTracker>>,
    pub(super) counters: Arc<Counters>,
    /// librdkafka's logs and errors, at most one of a kind every 10 s.
    pub(super) reports: KafkaReports,
    /// Which assigned topics this pusher may send: its platform's, for the apps it has
    /// credentials for. Others are paused, not drained.
    pub(super) platform: Platform,
    pub(super) apps: std::collections::HashSet<String>,
    /// Topics already reported as not consumed.
    pub(super) refused: Mutex<std::collections::HashSet<String>>,
    /// Apps whose endpoint is failing: their partitions stay paused until it answers again.
    pub(super) down: Mutex<std::collections::BTreeSet<String>>,
    /// Apps whose consumed messages wait in the loop for a free slot: paused until they started.
    pub(super) held: Mutex<std::collections::BTreeSet<String>>,
    /// The last consumer lag seen in librdkafka's statistics (-1: none yet).
    pub(super) lag: std::sync::atomic::AtomicI64,
    /// Since when no broker has been up, for `/healthz`.
    pub(super) brokers_down_since: Mutex<Option<std::time::Instant>>,
    /// How long the brokers may be unreachable before `/healthz` says so.
    pub(super) session_timeout: Duration,
}

impl RebalanceContext {
    /// Why this pusher cannot send `topic`'s messages, if it cannot. None of these is the
    /// messages' fault (a regex matched an app without credentials, or a topic of the other
    /// platform), so they are left in Kafka for a pusher that can, never refused and committed.
    pub(super) fn refusal(&self, topic: &str) -> Option<String> {
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

    /// Whether `topic`'s app is paused, for its endpoint or for its held messages.
    pub(super) fn is_paused(&self, topic: &str) -> bool {
        app_from_topic(topic).is_some_and(|(app, _)| {
            self.down.lock().contains(&app) || self.held.lock().contains(&app)
        })
    }

    pub(super) fn down_apps(&self) -> Vec<String> {
        self.down.lock().iter().cloned().collect()
    }

    /// `/healthz` says the brokers are unreachable once none has been up for a session
    /// timeout (the group has dropped this member by then).
    pub(super) fn broker_health(&self, any_up: bool) {
        let mut since = self.brokers_down_since.lock();
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

/// How long consume errors must go on before `/healthz` says so, and how long without one
/// before it clears.
const PERSISTENT_ERROR: Duration = Duration::from_secs(30);

/// Errors the consumer hands back instead of messages (a batch it cannot decompress or
/// parse): one may be a blip, but when they go on, a partition is stuck and its backlog
/// grows while the rest flows, so `/healthz` says so until they stop.
pub(super) struct PersistentErrors {
    /// [`PERSISTENT_ERROR`] but in tests.
    after: Duration,
    /// When this run of errors began, and the last one.
    run: Option<(std::time::Instant, std::time::Instant)>,
}

impl Default for PersistentErrors {
    fn default() -> Self {
        PersistentErrors {
            after: PERSISTENT_ERROR,
            run: None,
        }
    }
}

impl PersistentErrors {
    pub(super) fn seen(&mut self, error: &rdkafka::error::KafkaError) {
        let now = std::time::Instant::now();
        let first = self.run.map_or(now, |(first, _)| first);
        self.run = Some((first, now));
        if now - first >= self.after {
            let problem = format!(
                "Kafka consumer errors for {} s, the last: {error} (a partition may be stuck; see the log)",
                (now - first).as_secs()
            );
            crate::telemetry::health::set("kafka-consume", Some(problem));
        }
    }

    /// Clears the run (and `/healthz`) once no error came for a while.
    pub(super) fn tick(&mut self) {
        if self
            .run
            .is_some_and(|(_, last)| last.elapsed() >= self.after)
        {
            self.run = None;
            crate::telemetry::health::set("kafka-consume", None);
        }
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
            let revoked: Vec<(String, i32)> = list
                .elements()
                .iter()
                .map(|e| (e.topic().to_string(), e.partition()))
                .collect();
            // Lost, not handed over (the session timed out, or a poll came too late): the
            // group has given the partitions to others already, and they may have committed
            // past us. Our commit could only be refused for the old generation, after a
            // synchronous wait on a coordinator we lost touch with, or (on a broker that does
            // not check generations) move their offsets back.
            if consumer.assignment_lost() {
                tracing::warn!(
                    partitions = revoked.len(),
                    "Partitions lost to the group: not committing; their new owners redo what was unfinished."
                );
                let mut tracker = self.tracker.lock();
                for (topic, partition) in &revoked {
                    tracker.revoke(topic, *partition);
                }
                return;
            }
            revoke_then_commit(&self.tracker, &revoked, |commits| {
                // Synchronous: the new owner starts from what we commit here.
                match consumer.commit(&to_list(commits), CommitMode::Sync) {
                    Ok(()) => record_commits(&self.counters, commits),
                    Err(e) => {
                        tracing::warn!(error = %e, "Commit on revocation failed; the new owner redoes those messages.")
                    }
                }
            });
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(list) = rebalance {
            let mut refused = TopicPartitionList::new();
            let mut consumed = TopicPartitionList::new();
            {
                let mut tracker = self.tracker.lock();
                for e in list.elements() {
                    tracker.assign(e.topic(), e.partition());
                    if let Some(why) = self.refusal(e.topic()) {
                        refused.add_partition(e.topic(), e.partition());
                        if self.refused.lock().insert(e.topic().to_string()) {
                            tracing::error!(topic = e.topic(), "Not consuming this topic: {why}. Its messages stay in Kafka, uncommitted.");
                        }
                    } else if self.is_paused(e.topic()) {
                        // Its app's endpoint is failing, or messages of it are held: it
                        // resumes when that ends.
                        refused.add_partition(e.topic(), e.partition());
                    } else {
                        consumed.add_partition(e.topic(), e.partition());
                    }
                }
            }
            if refused.count() > 0 {
                if let Err(e) = consumer.pause(&refused) {
                    tracing::error!(error = %e, "Could not pause partitions this pusher cannot send.");
                }
            }
            // librdkafka keeps a partition's pause through a revocation and a new assignment.
            // An app resumed while it had no partitions (its endpoint answered again during
            // the rebalance) resumed none, and its partitions paused before stayed paused.
            if consumed.count() > 0 {
                if let Err(e) = consumer.resume(&consumed) {
                    tracing::error!(error = %e, "Could not resume assigned partitions.");
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

/// On revocation: takes every partition's finished prefix and forgets the `revoked` ones under
/// the tracker's lock, then hands the prefix to `commit` with the lock released. The commit
/// waits on the broker (a hung one: until the request times out, a minute), and every message
/// task that ends takes this lock: held across it, they blocked their worker threads, and with
/// them `/healthz`, the metrics and every connection's driver. A message of a revoked
/// partition that ends meanwhile is ignored, as after the commit.
fn revoke_then_commit(
    tracker: &Mutex<OffsetTracker>,
    revoked: &[(String, i32)],
    commit: impl FnOnce(&[(String, i32, i64)]),
) {
    let commits = {
        let mut tracker = tracker.lock();
        // All partitions, moved or not: an earlier async commit may have been refused.
        let commits = tracker.all_commits();
        for (topic, partition) in revoked {
            tracker.revoke(topic, *partition);
        }
        commits
    };
    if !commits.is_empty() {
        commit(&commits);
    }
}

pub(super) fn to_list(commits: &[(String, i32, i64)]) -> TopicPartitionList {
    let mut list = TopicPartitionList::new();
    for (topic, partition, offset) in commits {
        // Cannot fail for a plain offset.
        let _ = list.add_partition_offset(topic, *partition, Offset::Offset(*offset));
    }
    list
}

pub(super) fn record_commits(counters: &Counters, commits: &[(String, i32, i64)]) {
    let mut committed = counters.committed.lock();
    for (topic, partition, offset) in commits {
        committed.insert((topic.clone(), *partition), *offset);
    }
}

/// Why an app's partitions are paused. They resume only when no reason is left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Pause {
    /// Its endpoint fails: nothing more of it is fetched, and what is in flight waits,
    /// uncommitted.
    Down,
    /// Its slots stayed full: what was consumed waits in the loop, and nothing more is fetched.
    Held,
}

/// Pauses the assigned partitions of `app`'s topics for `why` (`on`), or lifts that reason,
/// resuming them when it was the last.
pub(super) fn pause_app(
    consumer: &StreamConsumer<RebalanceContext>,
    app: &str,
    why: Pause,
    on: bool,
) {
    let context = consumer.context();
    let (was, paused) = {
        let mut down = context.down.lock();
        let mut held = context.held.lock();
        let was = down.contains(app) || held.contains(app);
        let reasons = match why {
            Pause::Down => &mut *down,
            Pause::Held => &mut *held,
        };
        if on {
            reasons.insert(app.to_string());
        } else {
            reasons.remove(app);
        }
        (was, down.contains(app) || held.contains(app))
    };
    if was == paused {
        return;
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
    let result = if paused {
        consumer.pause(&list)
    } else {
        consumer.resume(&list)
    };
    let partitions = list.count();
    match (result, paused, why) {
        (Ok(()), false, _) => tracing::info!(app, partitions, "Consuming again."),
        (Ok(()), true, Pause::Down) => tracing::warn!(
            app,
            partitions,
            "Paused consuming until the endpoint answers."
        ),
        (Ok(()), true, Pause::Held) => tracing::info!(
            app,
            partitions,
            "Paused consuming: every in-flight slot of the app stayed taken."
        ),
        (Err(e), _, _) => {
            tracing::error!(app, error = %e, "Could not pause or resume partitions.")
        }
    }
}

pub(super) fn consumer(
    spec: &RunSpec,
    context: RebalanceContext,
) -> Result<StreamConsumer<RebalanceContext>, PipelineError> {
    consumer_config(spec)
        .create_with_context(context)
        .map_err(PipelineError::Consumer)
}

/// The prefetch queue's bound, in kilobytes (`queued.max.messages.kbytes`).
const PREFETCH_KBYTES: u32 = 16 * 1024;

/// How long librdkafka waits before fetching again for a partition once the prefetch queue is
/// over its bound (`fetch.queue.backoff.ms`). librdkafka's default, 1 s, stalled `pusher run`
/// every second: the 16 MB queue drained in about half that time, then nothing arrived for
/// the rest (stalls of 0.03-0.43 s every 1.1 s capped ci/scale.sh's first step at 55k msg/s;
/// 71k without them). The queue must outlast the backoff at any rate one process reaches:
/// 16 MB holds tens of thousands of messages (~60,000 of `pusher gen`'s), 75 ms or more even
/// at 400k msg/s.
pub const PREFETCH_FULL_BACKOFF_MS: u32 = 20;

/// The consumer's librdkafka settings: ours, then `spec.consumer_extra`.
fn consumer_config(spec: &RunSpec) -> ClientConfig {
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
        // A topic created after the start (a broker that creates topics on first use, as
        // `pusher api` writing an app's first push does) is found within 10 s, not
        // librdkafka's default 5 min.
        .set("topic.metadata.refresh.interval.ms", "10000")
        // Bound the prefetch queue: memory stays flat under any backlog.
        .set("queued.max.messages.kbytes", PREFETCH_KBYTES.to_string())
        .set(
            "fetch.queue.backoff.ms",
            PREFETCH_FULL_BACKOFF_MS.to_string(),
        )
        // Statistics feed the consumer-lag gauge (RebalanceContext::stats).
        .set(
            "statistics.interval.ms",
            spec.lag_interval.as_millis().to_string(),
        );
    for (k, v) in &spec.consumer_extra {
        config.set(k, v);
    }
    config
}

/// Commits what is done: the partitions that moved, or with `all` every partition's position
/// (asynchronous commits can fail unseen: see `OffsetTracker::all_commits`).
pub(super) fn commit(
    consumer: &StreamConsumer<RebalanceContext>,
    tracker: &Mutex<OffsetTracker>,
    counters: &Counters,
    mode: CommitMode,
    all: bool,
) {
    let commits = if all {
        tracker.lock().all_commits()
    } else {
        tracker.lock().take_commits()
    };
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consume_errors_that_go_on_show_in_healthz_until_they_stop() {
        let problem = || {
            crate::telemetry::health::problems()
                .get("kafka-consume")
                .cloned()
        };
        let error = rdkafka::error::KafkaError::MessageConsumption(
            rdkafka::types::RDKafkaErrorCode::NotImplemented,
        );
        let mut errors = PersistentErrors {
            after: Duration::from_millis(200),
            run: None,
        };
        // One error is a blip.
        errors.seen(&error);
        assert_eq!(problem(), None);
        // Errors that go on are a stuck partition.
        std::thread::sleep(Duration::from_millis(250));
        errors.seen(&error);
        let said = problem().expect("kafka-consume in /healthz");
        assert!(said.contains("Not implemented"), "{said}");
        // Still there while they come; gone once none came for a while.
        errors.tick();
        assert!(problem().is_some());
        std::thread::sleep(Duration::from_millis(250));
        errors.tick();
        assert_eq!(problem(), None);
    }

    fn setting(config: &ClientConfig, key: &str) -> u64 {
        config
            .get(key)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{key} is not set"))
    }

    /// A full prefetch queue must not leave the consumer idle: the backoff has to be much
    /// shorter than the time the bounded queue takes to drain at a high rate.
    #[test]
    fn a_full_prefetch_queue_backs_off_for_less_than_it_takes_to_drain() {
        let spec = RunSpec::new(Platform::Apns, "127.0.0.1:9092", "g", vec!["t".into()]);
        let config = consumer_config(&spec);
        let bound_bytes = setting(&config, "queued.max.messages.kbytes") * 1024;
        let backoff_ms = setting(&config, "fetch.queue.backoff.ms");
        // At 400k messages of 500 bytes a second (200 MB/s), the queue lasts `drain_ms`; the
        // backoff is at most a quarter of it.
        let drain_ms = bound_bytes * 1000 / (400_000 * 500);
        assert!(
            backoff_ms * 4 <= drain_ms,
            "backoff {backoff_ms} ms against a queue that drains in {drain_ms} ms"
        );
        // Memory stays bounded.
        assert!(bound_bytes <= 64 << 20);
    }

    #[test]
    fn the_revocation_commit_runs_without_the_tracker_lock() {
        const T: &str = "push-game_apns";
        let tracker = Mutex::new(OffsetTracker::new(10));
        {
            let mut t = tracker.lock();
            for p in 0..2 {
                t.assign(T, p);
                t.start(T, p, 5).unwrap();
                t.start(T, p, 6).unwrap();
                t.finish(T, p, 5).unwrap();
            }
        }
        let mut committed = Vec::new();
        revoke_then_commit(&tracker, &[(T.to_string(), 0)], |commits| {
            // A message task ending now is not blocked for the commit's round trip.
            let mut t = tracker
                .try_lock()
                .expect("the lock is free during the commit");
            // The revoked partition is forgotten already; the kept one goes on.
            assert!(t.finish(T, 0, 6).is_err());
            t.finish(T, 1, 6).unwrap();
            committed = commits.to_vec();
        });
        assert_eq!(
            committed,
            [(T.to_string(), 0, 6), (T.to_string(), 1, 6)],
            "every partition's finished prefix"
        );
        assert_eq!(tracker.lock().epoch(T, 0), None);
        assert_eq!(tracker.lock().all_commits(), [(T.to_string(), 1, 7)]);
    }

    #[test]
    fn extra_settings_come_last() {
        let mut spec = RunSpec::new(Platform::Apns, "b:1", "g", vec!["t".into()]);
        spec.consumer_extra = vec![("fetch.queue.backoff.ms".into(), "5".into())];
        assert_eq!(
            setting(&consumer_config(&spec), "fetch.queue.backoff.ms"),
            5
        );
    }
}
