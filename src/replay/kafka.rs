//! Kafka on both sides of a replay: reading a topic's time range into a capture
//! (`pusher replay --from-kafka`), and producing a replay into a topic.
//!
//! Reading seeks with `offsets_for_times` (reference/kafka-probe.md §1) and still filters
//! every message by its timestamp. librdkafka's mock cluster cannot answer by time (it
//! answers -1 for every timestamp); that is detected (it also answers -1 for timestamp 0 on a
//! non-empty partition) and the partition is scanned from its start instead. The consumer is
//! assigned, never subscribed, and commits nothing. A partition is done at its end offset of
//! the range or at librdkafka's end-of-partition event, whichever comes first: offsets that
//! deliver no message (a transaction marker, a compacted gap) end no wait. The messages are
//! put in time order within a memory budget (`super::sort`).
//!
//! Both sides wait at most `--kafka-timeout` for the brokers' answers: a broker that cannot
//! be reached is one error, and librdkafka's own reports go through the throttled reporter
//! `pusher run` uses.

use super::capture::write_entry;
use super::sort::{Record, Sorter, SpillError};
use crate::bench::interrupt::Interrupt;
use crate::progress::Progress;
use crate::push::Outcome;
use crate::telemetry::{KafkaReports, QuietProducerContext};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Message, Timestamp};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::ClientContext;
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A consumer context that reports through `KafkaReports` (as `QuietProducerContext` does
/// for producers).
#[derive(Default)]
struct QuietConsumer(KafkaReports);

impl ClientContext for QuietConsumer {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        self.0.log(level, fac, message);
    }
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        // A partition's end is news the read loop waits for (`enable.partition.eof`), not an
        // error: logged as one, every export ended in an ERROR line.
        if error.rdkafka_error_code() != Some(RDKafkaErrorCode::PartitionEOF) {
            self.0.error("consumer", &error, reason);
        }
    }
}

impl ConsumerContext for QuietConsumer {}

#[derive(Debug, thiserror::Error)]
pub enum RangeError {
    #[error("empty time range: --since {since} is not before --until {until}")]
    EmptyRange { since: String, until: String },
    #[error("no messages in topic {topic} between {since} and {until}")]
    NoMessages {
        topic: String,
        since: String,
        until: String,
    },
    #[error("unknown time {0:?}: give RFC 3339 (2026-11-29T19:00:00Z), Unix milliseconds, or a duration ago (15m), from 1970 to 9999")]
    Time(String),
    #[error("topic {topic} at {brokers}: {reason}")]
    Topic {
        topic: String,
        brokers: String,
        reason: String,
    },
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error(
        "reading {topic}: no progress for {secs} s on partitions {partitions:?} (messages gone?)"
    )]
    Stalled {
        topic: String,
        secs: u64,
        partitions: Vec<i32>,
    },
    #[error("{topic} partition {partition} offset {offset} has no timestamp")]
    NoTimestamp {
        topic: String,
        partition: i32,
        offset: i64,
    },
    #[error("writing the capture: {0}")]
    Write(#[from] std::io::Error),
    #[error("no answer from Kafka at {brokers} within {waited} ({cause}); is a broker running there? (--kafka-timeout sets the wait)")]
    Unreachable {
        brokers: String,
        waited: String,
        cause: String,
    },
    #[error("writing {path}: {source}")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Spill(#[from] SpillError),
    #[error("Kafka has no topic {topic:?} and does not create topics on first use")]
    UnknownTopic { topic: String },
    /// Ctrl-C: nothing more read or written.
    #[error("interrupted")]
    Interrupted,
}

fn unreachable(brokers: &str, timeout: Duration, e: &rdkafka::error::KafkaError) -> RangeError {
    RangeError::Unreachable {
        brokers: brokers.to_string(),
        waited: humantime::format_duration(timeout).to_string(),
        cause: e.to_string(),
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Parses `--since`/`--until`: RFC 3339 (`2026-11-29T19:00:00Z`, or without the `T`/`Z`, UTC),
/// Unix milliseconds (`1795000000000`), a duration ago (`15m`, `2h`), or `now`. Milliseconds
/// since the epoch.
pub fn parse_time(s: &str) -> Result<i64, RangeError> {
    let at = parse_any_time(s)?;
    // Kafka's timestamps (and RFC 3339, which shows them) end with year 9999. Seen: a time
    // past it panicked when shown.
    if !(0..=LAST_MS).contains(&at) {
        return Err(RangeError::Time(s.to_string()));
    }
    Ok(at)
}

/// 9999-12-31T23:59:59.999Z.
const LAST_MS: i64 = 253_402_300_799_999;

fn parse_any_time(s: &str) -> Result<i64, RangeError> {
    let t = s.trim();
    if t == "now" {
        return Ok(now_ms());
    }
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        return t.parse().map_err(|_| RangeError::Time(s.to_string()));
    }
    if let Ok(at) = humantime::parse_rfc3339_weak(t) {
        return at
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .map_err(|_| RangeError::Time(s.to_string()));
    }
    match humantime::parse_duration(t) {
        Ok(ago) => Ok(now_ms().saturating_sub(i64::try_from(ago.as_millis()).unwrap_or(i64::MAX))),
        Err(_) => Err(RangeError::Time(s.to_string())),
    }
}

fn show_ms(ms: i64) -> String {
    if !(0..=LAST_MS).contains(&ms) {
        return ms.to_string();
    }
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms as u64)).to_string()
}

/// What [`read_range`] reads: `topic`'s messages with timestamps in `[since_ms, until_ms]`
/// (until: the end of the topic when it was opened).
#[derive(Debug, Clone)]
pub struct Range<'a> {
    pub brokers: &'a str,
    pub topic: &'a str,
    pub since_ms: i64,
    pub until_ms: Option<i64>,
    /// The longest wait for the brokers' answers.
    pub timeout: Duration,
    /// Bytes of messages held in memory; past it, sorted runs go to temporary files
    /// ([`super::sort::DEFAULT_BUDGET`] for the command).
    pub sort_budget: usize,
}

/// What a read wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    pub messages: u64,
    /// Sorted runs spilled to temporary files (0: sorted in memory).
    pub spilled_runs: usize,
}

/// [`read_range`] into the file at `path`, which is replaced only when the whole capture was
/// written: it goes to a temporary file beside it first, renamed over `path` at the end, so
/// a failure or an interrupt leaves an existing file as it was. Sorted runs go beside it too.
pub fn read_range_to_file(
    range: &Range<'_>,
    path: &Path,
    progress: &Progress,
    interrupt: &Interrupt,
) -> Result<Written, RangeError> {
    let file_err = |source| RangeError::File {
        path: path.to_path_buf(),
        source,
    };
    // Removed unless the whole range was written: an existing FILE is never emptied.
    let temp = crate::report::temp_beside(path).map_err(file_err)?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut out = std::io::BufWriter::new(temp);
    let written = read_range(range, dir, &mut out, progress, interrupt)?;
    let temp = out.into_inner().map_err(|e| file_err(e.into_error()))?;
    temp.as_file().sync_all().map_err(file_err)?;
    temp.persist(path).map_err(|e| file_err(e.error))?;
    Ok(written)
}

/// Reads `range` and writes it to `out` as a capture, in time order, timed from the first
/// message; sorted runs past the budget go to temporary files in `spill_dir`, removed however
/// this ends. `progress` counts the offsets read; `interrupt` stops the read (or the writing)
/// with [`RangeError::Interrupted`].
pub fn read_range(
    range: &Range<'_>,
    spill_dir: &Path,
    out: &mut impl Write,
    progress: &Progress,
    interrupt: &Interrupt,
) -> Result<Written, RangeError> {
    let &Range {
        brokers,
        topic,
        since_ms,
        until_ms,
        timeout,
        sort_budget,
    } = range;
    let until_text = until_ms.map(show_ms).unwrap_or_else(|| "now".into());
    if until_ms.is_some_and(|u| u <= since_ms) {
        return Err(RangeError::EmptyRange {
            since: show_ms(since_ms),
            until: until_text,
        });
    }
    let consumer: BaseConsumer<QuietConsumer> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("pusher-replay-{}", std::process::id()))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("allow.auto.create.topics", "false")
        // A partition whose last offsets hold no message ends with this event.
        .set("enable.partition.eof", "true")
        .create_with_context(QuietConsumer::default())?;
    let topic_err = |reason: String| RangeError::Topic {
        topic: topic.to_string(),
        brokers: brokers.to_string(),
        reason,
    };
    let metadata = consumer
        .fetch_metadata(Some(topic), timeout)
        .map_err(|e| unreachable(brokers, timeout, &e))?;
    let meta = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .ok_or_else(|| topic_err("not in the cluster's metadata".into()))?;
    if let Some(e) = meta.error() {
        return Err(topic_err(
            rdkafka::types::RDKafkaErrorCode::from(e).to_string(),
        ));
    }
    let partitions: Vec<i32> = meta.partitions().iter().map(|p| p.id()).collect();
    if partitions.is_empty() {
        return Err(topic_err("has no partitions".into()));
    }

    // (low, high) per partition, and whether the broker can answer offsets by time.
    let mut marks = HashMap::new();
    for &p in &partitions {
        marks.insert(p, consumer.fetch_watermarks(topic, p, timeout)?);
    }
    let by_time = |ts: i64| -> Result<HashMap<i32, Option<i64>>, RangeError> {
        let mut tpl = TopicPartitionList::new();
        for &p in &partitions {
            tpl.add_partition_offset(topic, p, Offset::Offset(ts))?;
        }
        let answer = consumer.offsets_for_times(tpl, timeout)?;
        Ok(answer
            .elements()
            .iter()
            .map(|e| match e.offset() {
                Offset::Offset(o) if o >= 0 => (e.partition(), Some(o)),
                _ => (e.partition(), None),
            })
            .collect())
    };
    let probe = by_time(0)?;
    let seekable = partitions
        .iter()
        .filter(|p| marks[p].1 > marks[p].0)
        .any(|p| probe.get(p).copied().flatten().is_some());
    let starts = if seekable {
        Some(by_time(since_ms)?)
    } else {
        None
    };
    let ends = match (seekable, until_ms) {
        (true, Some(u)) => Some(by_time(u.saturating_add(1))?),
        _ => None,
    };

    // Offsets to read per partition: [start, end).
    let mut todo: HashMap<i32, (i64, i64)> = HashMap::new();
    let mut tpl = TopicPartitionList::new();
    for &p in &partitions {
        let (low, high) = marks[&p];
        let start = match &starts {
            // A broker that answers by time says "none at or after since" with None.
            Some(s) => s.get(&p).copied().flatten().unwrap_or(high),
            None => low,
        }
        .max(low);
        let end = ends
            .as_ref()
            .and_then(|e| e.get(&p).copied().flatten())
            .unwrap_or(high)
            .min(high);
        if start < end {
            todo.insert(p, (start, end));
            tpl.add_partition_offset(topic, p, Offset::Offset(start))?;
        }
    }
    let total: i64 = todo.values().map(|(start, end)| end - start).sum();
    progress.set_total(total.max(0) as u64);
    tracing::info!(
        seekable,
        partitions = todo.len(),
        offsets = total,
        "Reading the topic range."
    );
    // The next offset expected per partition, for the progress.
    let mut next: HashMap<i32, i64> = todo.iter().map(|(&p, &(start, _))| (p, start)).collect();
    let mut advance = |p: i32, to: i64| {
        if let Some(at) = next.get_mut(&p) {
            if to > *at {
                progress.inc((to - *at) as u64);
                *at = to;
            }
        }
    };
    let mut sorter = Sorter::new(sort_budget, spill_dir);
    if !todo.is_empty() {
        consumer.assign(&tpl)?;
        let mut last_progress = Instant::now();
        while !todo.is_empty() {
            if interrupt.is_set() {
                return Err(RangeError::Interrupted);
            }
            match consumer.poll(Duration::from_millis(200)) {
                Some(Ok(m)) => {
                    let (p, o) = (m.partition(), m.offset());
                    let Some(&(_, end)) = todo.get(&p) else {
                        continue;
                    };
                    last_progress = Instant::now();
                    if o >= end {
                        advance(p, end);
                        todo.remove(&p);
                        continue;
                    }
                    advance(p, o + 1);
                    let ts = match m.timestamp() {
                        Timestamp::CreateTime(t) | Timestamp::LogAppendTime(t) => t,
                        Timestamp::NotAvailable => {
                            return Err(RangeError::NoTimestamp {
                                topic: topic.to_string(),
                                partition: p,
                                offset: o,
                            })
                        }
                    };
                    if ts >= since_ms && until_ms.is_none_or(|u| ts <= u) {
                        sorter.push(Record {
                            ts,
                            partition: p,
                            offset: o,
                            key: m.key().map(<[u8]>::to_vec),
                            value: m.payload().unwrap_or_default().to_vec(),
                        })?;
                    }
                    if o + 1 >= end {
                        todo.remove(&p);
                    }
                }
                // The partition's end: what is left of the range delivers no message.
                Some(Err(KafkaError::PartitionEOF(p))) => {
                    if let Some((_, end)) = todo.remove(&p) {
                        advance(p, end);
                        last_progress = Instant::now();
                    }
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "Kafka error while reading the range.");
                }
                None => {}
            }
            if last_progress.elapsed() > timeout {
                let mut partitions: Vec<i32> = todo.keys().copied().collect();
                partitions.sort_unstable();
                return Err(RangeError::Stalled {
                    topic: topic.to_string(),
                    secs: timeout.as_secs(),
                    partitions,
                });
            }
        }
    }
    let spilled_runs = sorter.spilled_runs();
    // Time order across partitions; a partition's own order breaks ties.
    let mut first_ts = None;
    let messages = sorter.finish(|r| {
        if interrupt.is_set() {
            return Err(RangeError::Interrupted);
        }
        let first = *first_ts.get_or_insert(r.ts);
        let at = Duration::from_millis((r.ts - first).max(0) as u64);
        write_entry(out, at, topic, r.key.as_deref(), &r.value)?;
        Ok(())
    })?;
    if messages == 0 {
        return Err(RangeError::NoMessages {
            topic: topic.to_string(),
            since: show_ms(since_ms),
            until: until_text,
        });
    }
    out.flush()?;
    Ok(Written {
        messages,
        spilled_runs,
    })
}

/// A producer for replaying into Kafka: every message waits for its delivery report, which
/// is its outcome. It is returned once the brokers answered, within `timeout`, and described
/// each of `topics` (as `pusher gen` checks its topic).
pub fn producer(
    brokers: &str,
    timeout: Duration,
    topics: &[&str],
) -> Result<FutureProducer<QuietProducerContext>, RangeError> {
    let producer: FutureProducer<QuietProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("acks", "all")
        .set("linger.ms", "2")
        .set("queue.buffering.max.messages", "500000")
        .set("message.timeout.ms", "30000")
        .create_with_context(QuietProducerContext::default())?;
    // Without this, every message would wait out its own 30 s against a dead broker.
    producer
        .client()
        .fetch_metadata(None, timeout)
        .map_err(|e| unreachable(brokers, timeout, &e))?;
    // A topic the cluster neither has nor creates would cost every message its 30 s.
    for &topic in topics {
        let metadata = producer
            .client()
            .fetch_metadata(Some(topic), timeout)
            .map_err(|e| unreachable(brokers, timeout, &e))?;
        let unknown = metadata.topics().iter().any(|t| {
            t.name() == topic
                && t.error().map(RDKafkaErrorCode::from)
                    == Some(RDKafkaErrorCode::UnknownTopicOrPartition)
        });
        if unknown {
            return Err(RangeError::UnknownTopic {
                topic: topic.to_string(),
            });
        }
    }
    Ok(producer)
}

/// Produces one message; delivered when Kafka acknowledged it.
pub async fn produce(
    producer: &FutureProducer<QuietProducerContext>,
    topic: &str,
    key: Option<&[u8]>,
    value: &[u8],
) -> Outcome {
    let mut record = FutureRecord::<[u8], [u8]>::to(topic).payload(value);
    if let Some(k) = key {
        record = record.key(k);
    }
    match producer.send(record, Duration::from_secs(30)).await {
        Ok(_) => Outcome::Delivered,
        Err((e, _)) => Outcome::GaveUp {
            reason: format!("kafka: {e}"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_spellings() {
        assert_eq!(parse_time("1795000000000").unwrap(), 1_795_000_000_000);
        assert_eq!(parse_time("1970-01-01T00:00:01Z").unwrap(), 1000);
        assert_eq!(parse_time("1970-01-01 00:00:02").unwrap(), 2000);
        let ago = parse_time("15m").unwrap();
        assert!((now_ms() - ago - 900_000).abs() < 5_000);
        // Past year 9999 (or before 1970): refused, where showing it panicked.
        for far in ["253402300800000", "10000000000000000", "300000000y"] {
            assert!(parse_time(far).is_err(), "{far}");
        }
        assert_eq!(parse_time("253402300799999").unwrap(), LAST_MS);
        let err = parse_time("yesterday-ish").unwrap_err().to_string();
        assert!(
            err.contains("unknown time") && err.contains("RFC 3339"),
            "{err}"
        );
    }

    #[test]
    fn an_empty_range_is_refused_before_connecting() {
        let mut out = Vec::new();
        // No broker listens there: the check comes first.
        let range = |since_ms, until_ms| Range {
            brokers: "127.0.0.1:1",
            topic: "t",
            since_ms,
            until_ms: Some(until_ms),
            timeout: Duration::from_secs(1),
            sort_budget: 1024,
        };
        let (dir, bar, stop) = (Path::new("."), Progress::hidden(), Interrupt::manual());
        let err = read_range(&range(2000, 1000), dir, &mut out, &bar, &stop)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("empty time range"), "{err}");
        let err = read_range(&range(1000, 1000), dir, &mut out, &bar, &stop)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("empty time range"), "{err}");
    }
}
