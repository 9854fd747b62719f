//! Queue sizes for monitoring (Pushkin's `/get_*_queue`): in this architecture a queue is a
//! consumer group's backlog, the sum over a topic's partitions of the high watermark minus the
//! group's committed offset (minus the low watermark where the group has committed nothing).
//! Read by a side client that joins no group, so asking never disturbs the consumers.

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use std::time::Duration;

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
    let side: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()?;
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
