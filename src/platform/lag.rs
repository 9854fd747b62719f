//! Queue sizes for monitoring (Pushkin's `/get_*_queue`): in this architecture a queue is a
//! consumer group's backlog, the sum over a topic's partitions of the high watermark minus the
//! group's committed offset (minus the low watermark where the group has committed nothing).
//! Read by a side client that joins no group, so asking never disturbs the consumers.
//!
//! The API reads through one [`LagReader`]: one client per group for the process (each
//! librdkafka client is threads and connections; one per request let 200 concurrent GETs
//! make 200), and one read per group and topics at a time, whose answer serves every call in
//! the next [`FRESH`].

use parking_lot::Mutex;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The backlog of `group` on `topics` (missing topics count as empty). Blocking: call it from
/// `spawn_blocking`.
pub fn backlog(
    brokers: &str,
    group: &str,
    topics: &[String],
    timeout: Duration,
) -> Result<i64, rdkafka::error::KafkaError> {
    position(brokers, group, topics, timeout).map(|p| p.backlog)
}

/// Where a group is on some topics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Position {
    /// Records not yet committed.
    pub backlog: i64,
    /// Records committed (past the low watermark), summed over the partitions.
    pub committed: i64,
}

/// The backlog and progress of `group` on `topics`. Blocking, as `backlog`.
pub fn position(
    brokers: &str,
    group: &str,
    topics: &[String],
    timeout: Duration,
) -> Result<Position, rdkafka::error::KafkaError> {
    read(&side_client(brokers, group)?, topics, timeout)
}

/// A client that reads `group`'s committed offsets, joining no group.
fn side_client(brokers: &str, group: &str) -> Result<BaseConsumer, KafkaError> {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
}

/// The position of `side`'s group on `topics`. Blocking.
fn read(side: &BaseConsumer, topics: &[String], timeout: Duration) -> Result<Position, KafkaError> {
    // Nothing consumes through this client: what librdkafka queued for it (errors of a
    // broker gone, for one) is served here, or it would pile up for the process's life.
    for _ in 0..1000 {
        if side.poll(Duration::ZERO).is_none() {
            break;
        }
    }
    let metadata = side.fetch_metadata(None, timeout)?;
    let mut list = TopicPartitionList::new();
    let mut ends = Vec::new();
    for topic in metadata.topics() {
        if !topics.iter().any(|t| t == topic.name()) || topic.error().is_some() {
            continue;
        }
        for p in topic.partitions() {
            let (low, high) = side.fetch_watermarks(topic.name(), p.id(), timeout)?;
            list.add_partition(topic.name(), p.id());
            ends.push((topic.name().to_owned(), p.id(), low, high));
        }
    }
    if ends.is_empty() {
        return Ok(Position::default());
    }
    let committed = side.committed_offsets(list, timeout)?;
    let mut position = Position::default();
    for (topic, p, low, high) in &ends {
        let from = match committed.find_partition(topic, *p).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => o.max(*low),
            _ => *low,
        };
        position.backlog += (high - from).max(0);
        position.committed += from - low;
    }
    Ok(position)
}

/// How long one read answers every call for the same group and topics.
pub const FRESH: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, thiserror::Error)]
pub enum LagError {
    #[error("{0}")]
    Kafka(#[from] KafkaError),
    #[error("the read of the backlog stopped: {0}")]
    Stopped(String),
}

/// A position, and when it was read.
#[derive(Debug, Clone, Copy)]
pub struct Reading {
    pub position: Position,
    pub at: Instant,
}

/// The last answer for one group and topics, and when it came.
type Slot = Arc<tokio::sync::Mutex<Option<(Instant, Result<Reading, LagError>)>>>;

/// The process's reader of backlogs: one client per group, one read at a time per group and
/// topics, its answer shared for [`FRESH`].
pub struct LagReader {
    brokers: String,
    clients: Mutex<HashMap<String, Arc<BaseConsumer>>>,
    slots: Mutex<HashMap<(String, Vec<String>), Slot>>,
    created: AtomicUsize,
    reads: AtomicUsize,
}

impl std::fmt::Debug for LagReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LagReader")
            .field("brokers", &self.brokers)
            .finish_non_exhaustive()
    }
}

impl LagReader {
    /// A reader for `brokers`; no client is made until a read needs one.
    pub fn new(brokers: &str) -> LagReader {
        LagReader {
            brokers: brokers.to_owned(),
            clients: Mutex::new(HashMap::new()),
            slots: Mutex::new(HashMap::new()),
            created: AtomicUsize::new(0),
            reads: AtomicUsize::new(0),
        }
    }

    /// Clients made so far (one per group read).
    pub fn clients_created(&self) -> usize {
        self.created.load(Ordering::Relaxed)
    }

    /// Reads of Kafka so far (calls answered from a fresh reading are not reads).
    pub fn reads(&self) -> usize {
        self.reads.load(Ordering::Relaxed)
    }

    /// The position of `group` on `topics`: read once for every concurrent call, and the
    /// answer (a failure too) kept for [`FRESH`].
    pub async fn position(
        &self,
        group: &str,
        topics: &[String],
        timeout: Duration,
    ) -> Result<Reading, LagError> {
        let slot = self
            .slots
            .lock()
            .entry((group.to_owned(), topics.to_vec()))
            .or_default()
            .clone();
        // Concurrent calls wait here for the one read, then take its answer (a failure too:
        // each waiter reading again would queue a timeout each).
        let mut held = slot.lock_owned().await;
        if let Some((_, answer)) = held.as_ref().filter(|(at, _)| at.elapsed() < FRESH) {
            return answer.clone();
        }
        let client = self.client(group);
        if client.is_ok() {
            self.reads.fetch_add(1, Ordering::Relaxed);
        }
        let topics = topics.to_vec();
        // The read and its answer in a task of their own, holding the slot: a caller that
        // hangs up (a monitoring probe's timeout) drops its wait, not the lock, so the next
        // caller waits for this read instead of starting another beside it.
        let reading = tokio::spawn(async move {
            let answer = match client {
                Ok(client) => tokio::task::spawn_blocking(move || read(&client, &topics, timeout))
                    .await
                    .map_err(|e| LagError::Stopped(e.to_string()))
                    .and_then(|r| r.map_err(LagError::from))
                    .map(|position| Reading {
                        position,
                        at: Instant::now(),
                    }),
                Err(e) => Err(e.into()),
            };
            *held = Some((Instant::now(), answer.clone()));
            answer
        });
        reading
            .await
            .unwrap_or_else(|e| Err(LagError::Stopped(e.to_string())))
    }

    /// The client for `group`, made at its first read.
    fn client(&self, group: &str) -> Result<Arc<BaseConsumer>, KafkaError> {
        let mut clients = self.clients.lock();
        if let Some(client) = clients.get(group) {
            return Ok(client.clone());
        }
        let client = Arc::new(side_client(&self.brokers, group)?);
        self.created.fetch_add(1, Ordering::Relaxed);
        clients.insert(group.to_owned(), client.clone());
        Ok(client)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Callers that hang up mid-read (a monitoring probe's own timeout) leave the read running,
    /// and the next caller waits for it: one read, not one per caller. Seen: each hang-up
    /// freed the slot, and the next caller started a read beside the blocked one.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn callers_that_hang_up_share_one_read() {
        // Nothing listens there: a read waits out its timeout.
        let lag = LagReader::new("127.0.0.1:1");
        let topics = vec!["push-x_apns".to_owned()];
        for _ in 0..5 {
            let call = lag.position("g", &topics, Duration::from_secs(3));
            let _ = tokio::time::timeout(Duration::from_millis(100), call).await;
        }
        assert_eq!(lag.reads(), 1);
    }
}
