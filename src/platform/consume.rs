//! The one consume loop of the platform's consumer groups (`pusher route`, `pusher results`):
//! take what is fetched as a batch, hand it to the handler, commit past it only once the handler
//! succeeded. A handler's failure is PostgreSQL's or Kafka's, never the records' (records that
//! cannot be read are the handler's to count and skip), so the batch is retried (1 s doubling
//! to 30 s) and nothing is committed until it passes. At least once: a crash redoes the batch.
//!
//! While a batch waits to be retried, and between the pages of a long one (a segment), the
//! member polls with its partitions paused ([`Lease`]): it stays in the group however long
//! PostgreSQL is down, and a rebalance neither waits for it nor leaves the batch to two
//! members.

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::message::BorrowedMessage;
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
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

/// A member that stops heartbeating is out of the group after this.
const SESSION_TIMEOUT: Duration = Duration::from_secs(6);
const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(2);

/// The group consumer's librdkafka settings: ours, then `settings.consumer_extra`, then the
/// eager assignment strategy.
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
        .set(
            "session.timeout.ms",
            SESSION_TIMEOUT.as_millis().to_string(),
        )
        .set(
            "heartbeat.interval.ms",
            HEARTBEAT_INTERVAL.as_millis().to_string(),
        )
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
    // Eager, whatever the extras say: `batches` drops a batch at any rebalance and relies on
    // the partition being revoked, so that its next owner (maybe this member) reads it again
    // from the commit. Under cooperative-sticky a kept partition is not revoked and would go
    // on past the dropped batch, losing it.
    config.set("partition.assignment.strategy", "range,roundrobin");
    config
}

/// What a consumer group does with a batch. A trait rather than a closure: the future must be
/// `Send` for every batch lifetime, which async closures cannot promise yet.
pub trait Batches {
    /// What a handled batch did (its counts), applied by [`Batches::committed`].
    type Done: Send;

    /// Handles one batch; an error is PostgreSQL's or Kafka's (the batch is retried), or the
    /// lease's end (a rebalance took the batch: it is dropped). A handler that works long on
    /// one batch calls [`Lease::keep`] between steps.
    fn handle(
        &mut self,
        batch: &[BorrowedMessage<'_>],
        lease: &Lease<'_>,
    ) -> impl std::future::Future<Output = Result<Self::Done, String>> + Send;

    /// Applies a handled batch's `done` once Kafka accepted a commit past it: a batch whose
    /// commit is refused (a rebalance) is redone by its partitions' owner, who counts it.
    fn committed(&mut self, done: Self::Done);
}

/// A member's hold on the batch it works on. Between the polls that read batches, librdkafka
/// hears of nothing: a member that does not poll for `max.poll.interval.ms` leaves the group
/// (and its batch goes to another member while it still works on it), and a rebalance waits
/// for it, every other member of the group idle meanwhile. [`Lease::keep`] polls with the
/// member's partitions paused (nothing new is read), so it stays in the group and serves a
/// rebalance at once; after one, the batch is no longer this member's (the partitions' new
/// owners redo it from the committed offsets).
pub struct Lease<'a> {
    consumer: &'a GroupConsumer,
    /// The member's rebalance count when the batch was read.
    rebalances: u64,
    /// When the batch was read, or last confirmed as this member's ([`Lease::confirm`]).
    confirmed_at: parking_lot::Mutex<std::time::Instant>,
    /// The process is stopping: long work (a segment's pages) ends at its next step.
    stop: CancellationToken,
    paused: AtomicBool,
    /// The first record of a new assignment, met while polling: the next batch starts with it.
    next: parking_lot::Mutex<Option<BorrowedMessage<'a>>>,
}

impl<'a> Lease<'a> {
    fn new(consumer: &'a GroupConsumer, stop: &CancellationToken) -> Lease<'a> {
        Lease {
            consumer,
            rebalances: consumer.context().rebalances(),
            confirmed_at: parking_lot::Mutex::new(std::time::Instant::now()),
            stop: stop.clone(),
            paused: AtomicBool::new(false),
            next: parking_lot::Mutex::new(None),
        }
    }

    /// Whether the process is stopping (SIGTERM): work that saves its progress step by step
    /// (a segment, page by page) returns Err at its next step, and the batch is redone by
    /// whoever reads its partitions next, from that progress. Seen: a router told to stop
    /// sent the rest of a 100,000-device segment first (a million would outlast a deploy's
    /// grace period and be killed mid-page).
    pub fn stopping(&self) -> bool {
        self.stop.is_cancelled()
    }

    /// Whether a rebalance took the batch.
    pub fn lost(&self) -> bool {
        self.consumer.context().rebalances() != self.rebalances
    }

    /// Polls the consumer for up to `wait` (zero: once, without waiting), the member's
    /// partitions paused. Err once a rebalance took the batch: stop working on it.
    pub async fn keep(&self, wait: Duration) -> Result<(), String> {
        if !self.paused.swap(true, Ordering::Relaxed) {
            pause(self.consumer, true);
        }
        if !self.lost() {
            match tokio::time::timeout(wait, self.consumer.recv()).await {
                Ok(Ok(m)) if self.lost() => *self.next.lock() = Some(m),
                // Paused, nothing of this member's partitions comes: should a record come
                // anyway, it is given back (read again after the batch), never dropped. A seek
                // fails only for a partition no longer held, whose new owner reads from the
                // commit.
                Ok(Ok(m)) => {
                    let seek = self.consumer.seek(
                        m.topic(),
                        m.partition(),
                        Offset::Offset(m.offset()),
                        Duration::ZERO,
                    );
                    if let Err(e) = seek {
                        tracing::warn!(error = %e, "Cannot give back a record read while paused.");
                    }
                }
                Ok(Err(e)) => tracing::debug!(error = %e, "Kafka consumer error while paused."),
                Err(_) => {}
            }
        }
        if self.lost() {
            Err("a rebalance took the batch's partitions".to_owned())
        } else {
            Ok(())
        }
    }

    /// Before a write that the batch's redo would make again (its pushes): Err when the group
    /// may have given the batch to another member. A batch is given away only after its
    /// member polls (a rebalance waits for it) or is expelled: it stopped heartbeating past
    /// the session timeout (the process was frozen: a VM pause, SIGSTOP) or held the batch
    /// past `max.poll.interval.ms`. So a batch held longer than half the session timeout
    /// asks the coordinator first, waiting up to a heartbeat for its answer. Seen: a router
    /// frozen 20 s between its cooldown claims and its produce woke and sent the pushes its
    /// successor had sent meanwhile (20 of 40 users got two).
    pub async fn confirm(&self) -> Result<(), String> {
        if self.confirmed_at.lock().elapsed() < SESSION_TIMEOUT / 2 {
            return match self.lost() {
                true => Err("a rebalance took the batch's partitions".to_owned()),
                false => Ok(()),
            };
        }
        // Paused, the poll waits out the heartbeat: once per half session, not per step.
        self.keep(HEARTBEAT_INTERVAL).await?;
        *self.confirmed_at.lock() = std::time::Instant::now();
        Ok(())
    }

    /// Ends the hold: resumes the partitions; the record to start the next batch with.
    fn end(self) -> Option<BorrowedMessage<'a>> {
        if self.paused.into_inner() {
            pause(self.consumer, false);
        }
        self.next.into_inner()
    }
}

/// Runs `handler` over batches until `stop`. `component` names the `/healthz` problem while
/// batches fail.
pub async fn batches<B: Batches>(
    consumer: &GroupConsumer,
    batch_size: usize,
    component: &str,
    stop: &CancellationToken,
    handler: &mut B,
) {
    let batch_size = batch_size.max(1);
    // A record met while a batch's lease polled, after a rebalance took that batch.
    let mut carried = None;
    // Batches whose commit was refused with no rebalance since (a timeout), and their offsets:
    // the next commit includes those, so once accepted it covers them. `refused_at`: the
    // rebalance count they were read at; after a rebalance they are dropped, as the
    // partitions' owners redo (and count) them.
    let mut uncommitted: Vec<B::Done> = Vec::new();
    let mut offsets: BTreeMap<(String, i32), i64> = BTreeMap::new();
    let mut refused_at = 0;
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
        let lease = Lease::new(consumer, stop);
        // Whatever else is already fetched joins the batch (no waiting for more). A rebalance
        // served meanwhile takes what came before it (its partitions' new owners read them
        // from the commit); a record that came with it starts the next batch.
        while batch.len() < batch_size && !lease.lost() {
            match tokio::time::timeout(Duration::from_millis(2), consumer.recv()).await {
                Ok(Ok(m)) if lease.lost() => carried = Some(m),
                Ok(Ok(m)) => batch.push(m),
                _ => break,
            }
        }
        let mut delay = Duration::from_secs(1);
        let done = if lease.lost() {
            None
        } else {
            loop {
                let e = match handler.handle(&batch, &lease).await {
                    // Finished after a rebalance took it: the new owner redoes it.
                    Ok(_) if lease.lost() => break None,
                    Ok(done) => break Some(done),
                    Err(e) => e,
                };
                if lease.lost() {
                    break None;
                }
                // Stopped mid-batch (a segment between pages): nothing committed, the batch
                // is redone from its saved progress.
                if stop.is_cancelled() {
                    tracing::info!(reason = %e, "Stopped mid-batch; it is redone from its saved progress.");
                    return;
                }
                crate::telemetry::health::set(component, Some(e.clone()));
                tracing::warn!(error = %e, retry_in_s = delay.as_secs(), "Batch failed, not by the records' fault; retrying, nothing committed.");
                // The wait polls (the lease), so the member keeps its partitions however long
                // PostgreSQL is down: one that left the group had its batch routed by another
                // member too, both when PostgreSQL came back.
                let until = tokio::time::Instant::now() + delay;
                while !lease.lost() && tokio::time::Instant::now() < until {
                    let left = until.saturating_duration_since(tokio::time::Instant::now());
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = lease.keep(left.min(HOLD_POLL)) => {}
                    }
                }
                if lease.lost() {
                    break None;
                }
                delay = (delay * 2).min(Duration::from_secs(30));
            }
        };
        let read_at = lease.rebalances;
        carried = lease.end().or(carried);
        // Done, or dropped: what failed is then the new owner's to report.
        crate::telemetry::health::set(component, None);
        let Some(done) = done else {
            tracing::info!(
                records = batch.len(),
                "A rebalance took the batch's partitions: their new owner redoes it."
            );
            continue;
        };
        if read_at != refused_at {
            uncommitted.clear();
            offsets.clear();
            refused_at = read_at;
        }
        for m in &batch {
            let slot = offsets
                .entry((m.topic().to_owned(), m.partition()))
                .or_insert(0);
            *slot = (*slot).max(m.offset() + 1);
        }
        match commit(consumer, &offsets) {
            Ok(()) => {
                offsets.clear();
                for earlier in uncommitted.drain(..) {
                    handler.committed(earlier);
                }
                handler.committed(done);
            }
            Err(e) => {
                tracing::info!(error = %e, records = batch.len(), "Commit not accepted: the batch is counted once a later commit covers it, or redone after a rebalance.");
                crate::telemetry::health::set(component, Some(format!("commit refused: {e}")));
                // Bounded: commits refused for this long with no rebalance are not a
                // rebalance's; the oldest are counted now (a redo would count them twice).
                if uncommitted.len() >= UNCOMMITTED_MAX {
                    handler.committed(uncommitted.remove(0));
                }
                uncommitted.push(done);
            }
        }
    }
}

/// Most batches kept waiting for an accepted commit to count them.
const UNCOMMITTED_MAX: usize = 1024;

/// How often a member waiting to retry a failed batch polls: far within
/// `max.poll.interval.ms` (60 s at the least).
const HOLD_POLL: Duration = Duration::from_secs(1);

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

/// Commits `offsets` (each partition's next record), and waits for the coordinator's answer:
/// only an accepted commit makes a batch's counts true (one refused during a rebalance has
/// the batch redone).
fn commit(
    consumer: &GroupConsumer,
    offsets: &BTreeMap<(String, i32), i64>,
) -> Result<(), rdkafka::error::KafkaError> {
    let mut list = TopicPartitionList::new();
    for ((topic, partition), offset) in offsets {
        list.add_partition_offset(topic, *partition, Offset::Offset(*offset))?;
    }
    let commit = || consumer.commit(&list, CommitMode::Sync);
    // A synchronous commit blocks the thread for a round trip: on a multi-thread runtime the
    // other tasks move to another worker; `block_in_place` panics on a current-thread one.
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::CurrentThread) | Err(_) => commit(),
        Ok(_) => tokio::task::block_in_place(commit),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn settings(consumer_extra: Vec<(String, String)>) -> GroupSettings {
        GroupSettings {
            brokers: "127.0.0.1:9092".into(),
            group: "g".into(),
            topic: "t".into(),
            batch_size: 100,
            offset_reset: "earliest".into(),
            consumer_extra,
        }
    }

    /// A cooperative strategy set among the extras does not apply: the group stays eager.
    #[test]
    fn the_assignment_strategy_stays_eager() {
        let settings = settings(vec![(
            "partition.assignment.strategy".into(),
            "cooperative-sticky".into(),
        )]);
        assert_eq!(
            consumer_config(&settings).get("partition.assignment.strategy"),
            Some("range,roundrobin")
        );
    }

    struct Count {
        committed: usize,
        stop: CancellationToken,
    }

    impl Batches for Count {
        type Done = usize;

        async fn handle(
            &mut self,
            batch: &[BorrowedMessage<'_>],
            _: &Lease<'_>,
        ) -> Result<usize, String> {
            Ok(batch.len())
        }

        fn committed(&mut self, done: usize) {
            self.committed += done;
            if self.committed >= 5 {
                self.stop.cancel();
            }
        }
    }

    /// On a current-thread runtime (`--threads 1`) the synchronous commit runs in place
    /// (`block_in_place` panics there), and each batch is counted once its commit is accepted.
    #[test]
    fn batches_commit_on_a_current_thread_runtime() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let kafka = crate::mock::kafka::KafkaMock::start(1, &["t".to_owned()], 1).unwrap();
            let producer =
                crate::platform::produce::Producer::new(kafka.bootstrap(), Duration::from_secs(5))
                    .unwrap();
            let records: Vec<crate::platform::produce::Record> = (0..5)
                .map(|i| crate::platform::produce::Record {
                    topic: "t".into(),
                    key: i.to_string(),
                    payload: b"{}".to_vec(),
                })
                .collect();
            producer.produce_all(&records).await.unwrap();
            let settings = GroupSettings {
                brokers: kafka.bootstrap().to_owned(),
                batch_size: 2,
                ..settings(Vec::new())
            };
            let consumer = consumer(&settings, Membership::default()).unwrap();
            let stop = CancellationToken::new();
            let mut count = Count {
                committed: 0,
                stop: stop.clone(),
            };
            let run = batches(&consumer, 2, "test", &stop, &mut count);
            tokio::time::timeout(Duration::from_secs(30), run)
                .await
                .unwrap();
            assert_eq!(count.committed, 5);
        });
    }

    /// The route and results consumers back off as briefly as `pusher run`'s once their
    /// prefetch queue is full (librdkafka's 1 s default idles them).
    #[test]
    fn a_full_prefetch_queue_backs_off_briefly() {
        let settings = settings(Vec::new());
        let backoff = consumer_config(&settings)
            .get("fetch.queue.backoff.ms")
            .map(str::to_owned);
        assert_eq!(
            backoff,
            Some(crate::pipeline::PREFETCH_FULL_BACKOFF_MS.to_string())
        );
    }
}
