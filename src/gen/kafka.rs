//! The Kafka sink of `pusher gen`: a `BaseProducer` with the settings that reached 500k msg/s
//! in reference/kafka-probe.md §1.2, polled from the generating thread, waiting for every
//! delivery report before it returns. It first asks the brokers for the topic's metadata,
//! so that a broker that cannot be reached is one error after `--kafka-timeout`; librdkafka's
//! own reports go through the throttled reporter `pusher run` uses.

use super::{GenError, Generator};
use crate::telemetry::KafkaReports;
use indicatif::ProgressBar;
use parking_lot::Mutex;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{
    BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext, PurgeConfig,
};
use rdkafka::ClientContext;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Counts of a finished produce run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KafkaReport {
    pub sent: u64,
    pub delivered: u64,
    pub failed: u64,
    /// Stopped by [`Stop`]: `failed` counts what was still queued (purged, never sent), and
    /// `sent - delivered - failed` what had no report when the run gave up waiting.
    pub interrupted: bool,
}

/// When to stop early (Ctrl-C), and how long the messages queued then may take to be
/// delivered before the rest is dropped from the queue.
pub struct Stop<'a> {
    pub requested: &'a dyn Fn() -> bool,
    pub flush_for: Duration,
}

/// Counts delivery reports; keeps the first error for the message shown to the user.
#[derive(Default)]
struct Deliveries {
    delivered: AtomicU64,
    failed: AtomicU64,
    first_error: Mutex<Option<String>>,
    /// The last client-wide error (a broker that cannot be reached), for the final message.
    last_client_error: Mutex<Option<String>>,
    reports: KafkaReports,
}

impl ClientContext for Deliveries {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        self.reports.log(level, fac, message);
    }
    fn error(&self, error: KafkaError, reason: &str) {
        *self.last_client_error.lock() = Some(if reason.is_empty() {
            error.to_string()
        } else {
            reason.to_string()
        });
        self.reports.error("producer", &error, reason);
    }
}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => {
                self.delivered.fetch_add(1, Ordering::Relaxed);
            }
            Err((e, _)) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                self.first_error.lock().get_or_insert_with(|| e.to_string());
            }
        }
    }
}

/// Producer settings from the probe; `timeout` bounds how long a message may wait for the
/// broker before its delivery fails.
fn producer_config(brokers: &str, timeout: Duration) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers)
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "500000")
        .set("queue.buffering.max.kbytes", "1048576")
        .set("message.timeout.ms", timeout.as_millis().max(1).to_string());
    c
}

/// Waits up to `timeout` for the brokers to describe `topic`. A producer alone would retry
/// in silence until each message's own timeout.
fn check_reachable(
    producer: &BaseProducer<Deliveries>,
    topic: &str,
    timeout: Duration,
) -> Result<(), GenError> {
    let metadata = match producer.client().fetch_metadata(Some(topic), timeout) {
        Ok(m) => m,
        Err(e) => {
            // Errors arrive through the event queue: serve it to learn the cause.
            producer.poll(Duration::ZERO);
            let cause = producer
                .context()
                .last_client_error
                .lock()
                .clone()
                .unwrap_or_else(|| e.to_string());
            return Err(GenError::Unreachable {
                waited: humantime::format_duration(timeout).to_string(),
                cause,
            });
        }
    };
    let unknown = metadata.topics().iter().any(|t| {
        t.name() == topic
            && t.error().map(RDKafkaErrorCode::from)
                == Some(RDKafkaErrorCode::UnknownTopicOrPartition)
    });
    if unknown {
        return Err(GenError::UnknownTopic {
            topic: topic.to_string(),
        });
    }
    Ok(())
}

/// Produces every message of `generator` to `topic` (key = device token), then waits for
/// all delivery reports. Any failed delivery is an error naming the count and the first cause.
/// `connect_timeout` bounds the wait for the brokers' first answer, `timeout` each delivery.
/// Once `stop` is requested no more messages are generated; those queued get
/// `stop.flush_for` to be delivered, the rest is purged, and the counts are returned (not an
/// error: the caller asked for it).
pub fn produce(
    generator: &mut Generator,
    brokers: &str,
    topic: &str,
    timeout: Duration,
    connect_timeout: Duration,
    progress: &ProgressBar,
    stop: &Stop<'_>,
) -> Result<KafkaReport, GenError> {
    let producer: BaseProducer<Deliveries> =
        producer_config(brokers, timeout).create_with_context(Deliveries::default())?;
    check_reachable(&producer, topic, connect_timeout)?;
    let mut value = Vec::with_capacity(4096);
    let mut sent = 0u64;
    'generating: while !(stop.requested)() && generator.write_next(&mut value).is_some() {
        let key = generator.last_token();
        loop {
            match producer.send(BaseRecord::to(topic).key(key).payload(&value)) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    if (stop.requested)() {
                        break 'generating;
                    }
                    producer.poll(Duration::from_millis(5));
                }
                // librdkafka refuses it before sending: say which message and why.
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge), _)) => {
                    return Err(GenError::TooLarge {
                        index: sent,
                        size: value.len(),
                    });
                }
                Err((e, _)) => return Err(e.into()),
            }
        }
        value.clear();
        sent += 1;
        if sent % 1024 == 0 {
            producer.poll(Duration::ZERO);
            progress.set_position(producer.context().delivered.load(Ordering::Relaxed));
        }
    }

    // flush() waits for the queue to drain; delivery reports then tell what happened.
    // Give it a margin beyond message.timeout.ms, after which every message has a report.
    let full_wait = timeout + Duration::from_secs(5);
    let ctx = producer.context();
    let reported = || ctx.delivered.load(Ordering::Relaxed) + ctx.failed.load(Ordering::Relaxed);
    let wait_until = |deadline: Instant| {
        let mut deadline = deadline;
        let mut shortened = (stop.requested)();
        while reported() < sent && Instant::now() < deadline {
            // A flush timeout is not final: the loop and the deadline decide.
            let _ = producer.flush(Duration::from_millis(100));
            progress.set_position(ctx.delivered.load(Ordering::Relaxed));
            // Stopped while waiting: the shorter wait, from now.
            if !shortened && (stop.requested)() {
                shortened = true;
                deadline = deadline.min(Instant::now() + stop.flush_for);
            }
        }
    };
    wait_until(
        Instant::now()
            + if (stop.requested)() {
                stop.flush_for.min(full_wait)
            } else {
                full_wait
            },
    );
    let interrupted = (stop.requested)();
    if interrupted && reported() < sent {
        // What never left the queue is dropped (each gets a failed report); what is on
        // the wire may still be acknowledged: a short wait for it.
        producer.purge(PurgeConfig::default().queue());
        wait_until(Instant::now() + Duration::from_secs(2));
    }
    let report = KafkaReport {
        sent,
        delivered: ctx.delivered.load(Ordering::Relaxed),
        failed: ctx.failed.load(Ordering::Relaxed),
        interrupted,
    };
    progress.set_position(report.delivered);
    if interrupted {
        return Ok(report);
    }
    if report.failed > 0 {
        let first_error = ctx.first_error.lock().clone().unwrap_or_default();
        return Err(GenError::Undelivered {
            sent,
            failed: report.failed,
            first_error,
        });
    }
    if report.delivered < sent {
        return Err(GenError::DeliveryTimeout {
            sent,
            delivered: report.delivered,
        });
    }
    Ok(report)
}
