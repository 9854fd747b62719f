//! The Kafka sink of `pusher gen`: a `BaseProducer` with the settings that reached 500k msg/s
//! in reference/kafka-probe.md §1.2, polled from the generating thread, waiting for every
//! delivery report before it returns.

use super::{GenError, Generator};
use indicatif::ProgressBar;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::ClientContext;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Counts of a finished produce run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KafkaReport {
    pub sent: u64,
    pub delivered: u64,
    pub failed: u64,
}

/// Counts delivery reports; keeps the first error for the message shown to the user.
#[derive(Default)]
struct Deliveries {
    delivered: AtomicU64,
    failed: AtomicU64,
    first_error: Mutex<Option<String>>,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => {
                self.delivered.fetch_add(1, Ordering::Relaxed);
            }
            Err((e, _)) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut first) = self.first_error.lock() {
                    first.get_or_insert_with(|| e.to_string());
                }
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

/// Produces every message of `generator` to `topic` (key = device token), then waits for
/// all delivery reports. Any failed delivery is an error naming the count and the first cause.
pub fn produce(
    generator: &mut Generator,
    brokers: &str,
    topic: &str,
    timeout: Duration,
    progress: &ProgressBar,
) -> Result<KafkaReport, GenError> {
    let producer: BaseProducer<Deliveries> =
        producer_config(brokers, timeout).create_with_context(Deliveries::default())?;
    let mut value = Vec::with_capacity(4096);
    let mut sent = 0u64;
    while generator.write_next(&mut value).is_some() {
        let key = generator.last_token();
        loop {
            match producer.send(BaseRecord::to(topic).key(key).payload(&value)) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    producer.poll(Duration::from_millis(5));
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
    let deadline = Instant::now() + timeout + Duration::from_secs(5);
    let ctx = producer.context();
    let reported = || ctx.delivered.load(Ordering::Relaxed) + ctx.failed.load(Ordering::Relaxed);
    while reported() < sent && Instant::now() < deadline {
        // A flush timeout is not final: the loop and the deadline decide.
        let _ = producer.flush(Duration::from_millis(100));
        progress.set_position(ctx.delivered.load(Ordering::Relaxed));
    }
    let report = KafkaReport {
        sent,
        delivered: ctx.delivered.load(Ordering::Relaxed),
        failed: ctx.failed.load(Ordering::Relaxed),
    };
    progress.set_position(report.delivered);
    if report.failed > 0 {
        let first_error = ctx
            .first_error
            .lock()
            .ok()
            .and_then(|e| e.clone())
            .unwrap_or_default();
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
