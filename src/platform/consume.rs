//! The one consume loop of the platform's consumer groups (`pusher route`, `pusher results`):
//! take what is fetched as a batch, hand it to the handler, commit past it only once the handler
//! succeeded. A handler's failure is PostgreSQL's or Kafka's, never the records' (records that
//! cannot be read are the handler's to count and skip), so the batch is retried (1 s doubling
//! to 30 s) and nothing is committed until it passes. At least once: a crash redoes the batch.

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::message::BorrowedMessage;
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
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
}

impl ClientContext for GroupContext {}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(list) = rebalance {
            self.membership.0.store(0, Ordering::Relaxed);
            tracing::info!(partitions = list.count(), "Partitions revoked.");
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(list) => {
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
    let consumer: GroupConsumer =
        consumer_config(settings).create_with_context(GroupContext { membership })?;
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
    loop {
        let first = tokio::select! {
            _ = stop.cancelled() => return,
            m = consumer.recv() => m,
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
        let mut delay = Duration::from_secs(1);
        while let Err(e) = handler.handle(&batch).await {
            crate::telemetry::health::set(component, Some(e.clone()));
            tracing::warn!(error = %e, retry_in_s = delay.as_secs(), "Batch failed, not by the records' fault; retrying, nothing committed.");
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(Duration::from_secs(30));
        }
        crate::telemetry::health::set(component, None);
        commit(consumer, &batch);
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
