//! The one consume loop of the platform's consumer groups (`pusher route`, `pusher results`):
//! take what is fetched as a batch, hand it to the handler, commit past it only once the handler
//! succeeded. A handler's failure is PostgreSQL's or Kafka's, never the records' (records that
//! cannot be read are the handler's to count and skip), so the batch is retried (1 s doubling
//! to 30 s) and nothing is committed until it passes. At least once: a crash redoes the batch.
//!
//! While a batch waits to be retried, the member keeps polling with its partitions paused: a
//! member that stops polling for `max.poll.interval.ms` leaves the group, and when PostgreSQL
//! came back after an outage that long, the member that had the batch and the one given its
//! partition both routed it (two routers winning one event's cooldown). Polling also serves
//! rebalances: one that comes meanwhile takes the batch from this member (the partition's new
//! owner redoes it from the committed offset), so it is dropped, not retried.

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::message::BorrowedMessage;
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Where and how a platform consumer reads.
#[derive(Debug, Clone)]
pub struct GroupSettings {
    pub brokers: String,
    pub group: String,
    /// A topic name, or a regex starting with `^`.
    pub topic: String,
    /// Most records handled together.
    pub batch_size: usize,
    /// Where a group without committed offsets starts.
    pub offset_reset: String,
    /// librdkafka properties set last (the benches' short fetch wait on the mock cluster).
    pub consumer_extra: Vec<(String, String)>,
}

/// How many partitions one member holds now (0 before its first assignment and while a
/// rebalance moves them). Clones share the count: give each member its own.
#[derive(Debug, Clone, Default)]
pub struct Membership(Arc<AtomicUsize>);

impl Membership {
    pub fn partitions(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

/// Logs the group's rebalances (a member that joins or dies shows in the log) and keeps the
/// member's partition count.
pub struct GroupContext {
    membership: Membership,
    /// Assignments and revocations so far: a failed batch that waited across one is no longer
    /// this member's to retry.
    rebalances: AtomicU64,
}

impl GroupContext {
    fn rebalances(&self) -> u64 {
        self.rebalances.load(Ordering::Relaxed)
    }
}

impl ClientContext for GroupContext {}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        self.rebalances.fetch_add(1, Ordering::Relaxed);
        if let Rebalance::Revoke(list) = rebalance {
            self.membership.0.store(0, Ordering::Relaxed);
            tracing::info!(partitions = list.count(), "Partitions revoked.");
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        self.rebalances.fetch_add(1, Ordering::Relaxed);
        match rebalance {
            Rebalance::Assign(list) => {
                // librdkafka keeps a partition's pause across a reassignment: one paused by a
                // failing batch (`batches`) would never be read again.
                if let Err(e) = consumer.resume(list) {
                    tracing::warn!(error = %e, "Cannot resume newly assigned partitions.");
                }
                self.membership.0.store(list.count(), Ordering::Relaxed);
                tracing::info!(partitions = list.count(), "Partitions assigned.");
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(e) => tracing::warn!(error = %e, "Rebalance failed."),
        }
    }
}

pub type GroupConsumer = StreamConsumer<GroupContext>;

/// A consumer that commits only what its handler finished.
pub fn consumer(
    settings: &GroupSettings,
    membership: Membership,
) -> Result<GroupConsumer, rdkafka::error::KafkaError> {
    let consumer: GroupConsumer = consumer_config(settings).create_with_context(GroupContext {
        membership,
        rebalances: AtomicU64::new(0),
    })?;
    consumer.subscribe(&[settings.topic.as_str()])?;
    Ok(consumer)
}

/// The group consumer's librdkafka settings: ours, then `settings.consumer_extra`.
fn consumer_config(settings: &GroupSettings) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &settings.brokers)
        .set("group.id", &settings.group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", &settings.offset_reset)
        // New apps' topics are found within seconds.
        .set("topic.metadata.refresh.interval.ms", "5000")
        // A member that joins or dies is noticed within seconds (librdkafka's 45 s session
        // and 3 s heartbeat left a second router waiting for its first assignment for
        // minutes); the same settings as `pusher run`'s consumer.
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "2000")
        // Longer than a batch can take, retries included (the retry back-off is at most 30 s).
        .set("max.poll.interval.ms", "60000")
        // librdkafka's 1 s would idle a consumer that drains its full prefetch queue sooner.
        .set(
            "fetch.queue.backoff.ms",
            crate::pipeline::PREFETCH_FULL_BACKOFF_MS.to_string(),
        );
    for (k, v) in &settings.consumer_extra {
        config.set(k, v);
    }
    config
}

/// What a consumer group does with a batch. A trait rather than a closure: the future must be
/// `Send` for every batch lifetime, which async closures cannot promise yet.
pub trait Batches {
    /// Handles one batch; an error is PostgreSQL's or Kafka's (the batch is retried).
    fn handle(
        &mut self,
        batch: &[BorrowedMessage<'_>],
    ) -> impl std::future::Future<Output = Result<(), String>> + Send;
}

/// Runs `handler` over batches until `stop`. `component` names the `/healthz` problem while
/// batches fail.
pub async fn batches(
    consumer: &GroupConsumer,
    batch_size: usize,
    component: &str,
    stop: &CancellationToken,
    handler: &mut impl Batches,
) {
    let batch_size = batch_size.max(1);
    // A record that came while a failed batch waited, after a rebalance took the batch: the
    // next batch starts with it.
    let mut carried = None;
    loop {
        let first = match carried.take() {
            Some(m) => Ok(m),
            None => tokio::select! {
                _ = stop.cancelled() => return,
                m = consumer.recv() => m,
            },
        };
        let mut batch = Vec::with_capacity(batch_size);
        match first {
            Ok(m) => batch.push(m),
            Err(e) => {
                tracing::warn!(error = %e, "Kafka consumer error.");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        }
        // Whatever else is already fetched joins the batch (no waiting for more).
        while batch.len() < batch_size {
            match tokio::time::timeout(Duration::from_millis(2), consumer.recv()).await {
                Ok(Ok(m)) => batch.push(m),
                _ => break,
            }
        }
        let rebalances = consumer.context().rebalances();
        let mut delay = Duration::from_secs(1);
        let mut paused = false;
        // Some(first record of the next batch, if one came): a rebalance took this batch.
        let moved = loop {
            let Err(e) = handler.handle(&batch).await else {
                break None;
            };
            crate::telemetry::health::set(component, Some(e.clone()));
            tracing::warn!(error = %e, retry_in_s = delay.as_secs(), "Batch failed, not by the records' fault; retrying, nothing committed.");
            if !paused {
                paused = true;
                pause(consumer, true);
            }
            match hold(consumer, delay, stop, rebalances).await {
                Held::Elapsed => {}
                Held::Moved(next) => break Some(next),
                Held::Stopped => return,
            }
            delay = (delay * 2).min(Duration::from_secs(30));
        };
        if paused {
            pause(consumer, false);
        }
        match moved {
            Some(next) => {
                tracing::info!(
                    records = batch.len(),
                    "A rebalance took the failing batch's partitions: their new owner redoes it."
                );
                carried = next;
            }
            None => {
                crate::telemetry::health::set(component, None);
                commit(consumer, &batch);
            }
        }
    }
}

/// How often a member waiting to retry a failed batch polls: far within
/// `max.poll.interval.ms` (60 s for results, the least of the groups).
const HOLD_POLL: Duration = Duration::from_secs(1);

/// How a wait before a retry ended.
enum Held<'a> {
    /// Time to retry.
    Elapsed,
    /// A rebalance came (with the first record of the new assignment, if one came too).
    Moved(Option<BorrowedMessage<'a>>),
    Stopped,
}

/// Waits `delay` before a failed batch is retried, polling the paused consumer meanwhile (it
/// stays in the group and serves rebalances); `rebalances` is the count when the batch was
/// read.
async fn hold<'a>(
    consumer: &'a GroupConsumer,
    delay: Duration,
    stop: &CancellationToken,
    rebalances: u64,
) -> Held<'a> {
    let until = tokio::time::Instant::now() + delay;
    loop {
        if consumer.context().rebalances() != rebalances {
            return Held::Moved(None);
        }
        let left = until.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            return Held::Elapsed;
        }
        let polled = tokio::select! {
            _ = stop.cancelled() => return Held::Stopped,
            polled = tokio::time::timeout(left.min(HOLD_POLL), consumer.recv()) => polled,
        };
        match polled {
            Ok(Ok(m)) if consumer.context().rebalances() != rebalances => {
                return Held::Moved(Some(m))
            }
            // Paused, nothing of the batch's partitions comes: should a record come anyway,
            // it is given back (fetched again after the batch), never dropped. A seek fails
            // only for a partition no longer held, whose new owner reads from the commit.
            Ok(Ok(m)) => {
                let seek = consumer.seek(
                    m.topic(),
                    m.partition(),
                    Offset::Offset(m.offset()),
                    Duration::ZERO,
                );
                if let Err(e) = seek {
                    tracing::warn!(error = %e, "Cannot give back a record fetched while paused.");
                }
            }
            Ok(Err(e)) => tracing::debug!(error = %e, "Kafka consumer error while a batch waits."),
            Err(_) => {}
        }
    }
}

/// Pauses (or resumes) every partition this member holds.
fn pause(consumer: &GroupConsumer, paused: bool) {
    let done = consumer.assignment().and_then(|list| {
        if paused {
            consumer.pause(&list)
        } else {
            consumer.resume(&list)
        }
    });
    if let Err(e) = done {
        tracing::warn!(error = %e, paused, "Cannot pause or resume the group's partitions.");
    }
}

/// Commits past the last record of each partition in the batch.
fn commit(consumer: &GroupConsumer, batch: &[BorrowedMessage<'_>]) {
    let mut next: BTreeMap<(String, i32), i64> = BTreeMap::new();
    for m in batch {
        let slot = next
            .entry((m.topic().to_owned(), m.partition()))
            .or_insert(0);
        *slot = (*slot).max(m.offset() + 1);
    }
    let mut list = TopicPartitionList::new();
    for ((topic, partition), offset) in next {
        if let Err(e) = list.add_partition_offset(&topic, partition, Offset::Offset(offset)) {
            tracing::warn!(error = %e, "Cannot commit an offset.");
        }
    }
    // A failed commit (a rebalance took the partition) means the batch is redone elsewhere.
    if let Err(e) = consumer.commit(&list, CommitMode::Async) {
        tracing::debug!(error = %e, "Commit not accepted.");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The route and results consumers back off as briefly as `pusher run`'s once their
    /// prefetch queue is full (librdkafka's 1 s default idles them).
    #[test]
    fn a_full_prefetch_queue_backs_off_briefly() {
        let settings = GroupSettings {
            brokers: "127.0.0.1:9092".into(),
            group: "g".into(),
            topic: "t".into(),
            batch_size: 100,
            offset_reset: "earliest".into(),
            consumer_extra: Vec::new(),
        };
        let backoff = consumer_config(&settings)
            .get("fetch.queue.backoff.ms")
            .map(str::to_owned);
        assert_eq!(
            backoff,
            Some(crate::pipeline::PREFETCH_FULL_BACKOFF_MS.to_string())
        );
    }
}
