//! The platform's Kafka producer: a batch of records is done only when the brokers
//! acknowledged every one of them (idempotent producer, `acks=all`), so the API can say
//! "accepted" and mean it.
//!
//! A record that failed is one of two things, and the API answers them differently: refused
//! (librdkafka never sent it, or the broker answered that it did not write it: a retry may
//! write it) or unknown (sent, and no acknowledgement came: the broker may have written it,
//! so a retry may write it twice). librdkafka tracks which, per message
//! (`rd_kafka_message_status`); this producer hands it on.

use crate::telemetry::KafkaReports;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::DeliveryResult;
use rdkafka::producer::{BaseRecord, Producer as _, ProducerContext, ThreadedProducer};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// One record for a push or requests topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub topic: String,
    pub key: String,
    pub payload: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum ProduceError {
    #[error("cannot create the Kafka producer: {0}")]
    Create(#[source] KafkaError),
    /// Not written: never sent, or the broker said it did not write it. Not the request's
    /// fault, and a retry writes it once.
    #[error("Kafka did not take a record for {topic}: {reason}")]
    NotAcknowledged { topic: String, reason: String },
    /// Sent, and no acknowledgement came (the message timed out in flight, the connection
    /// broke): the broker may have written it.
    #[error("Kafka did not acknowledge a record for {topic}, and may have written it: {reason}")]
    Unknown { topic: String, reason: String },
}

impl ProduceError {
    /// The record may be in Kafka although it failed.
    pub fn may_be_written(&self) -> bool {
        matches!(self, ProduceError::Unknown { .. })
    }
}

/// What librdkafka reported of one record.
type Report = Result<(), (KafkaError, bool)>;

/// Hands each record's delivery report, with whether the broker may have written a failed
/// one, to the task that waits for it.
#[derive(Default)]
struct Reports(KafkaReports);

impl rdkafka::ClientContext for Reports {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        self.0.log(level, fac, log_message);
    }
    fn error(&self, error: KafkaError, reason: &str) {
        self.0.error("producer", &error, reason);
    }
}

impl ProducerContext for Reports {
    type DeliveryOpaque = Box<oneshot::Sender<Report>>;

    fn delivery(&self, result: &DeliveryResult<'_>, waiting: Self::DeliveryOpaque) {
        let report = match result {
            Ok(_) => Ok(()),
            Err((e, message)) => {
                // SAFETY: `message` is the report's message, alive for this call;
                // `rd_kafka_message_status` only reads its status.
                let status = unsafe { rdkafka::bindings::rd_kafka_message_status(message.ptr()) };
                let may_be_written = status
                    != rdkafka::bindings::rd_kafka_msg_status_t::RD_KAFKA_MSG_STATUS_NOT_PERSISTED;
                Err((e.clone(), may_be_written))
            }
        };
        // The request may be gone (its client disconnected): nobody to tell.
        let _ = waiting.send(report);
    }
}

pub struct Producer {
    inner: ThreadedProducer<Reports>,
    timeout: Duration,
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// How long after a record's message timeout its report may still come (librdkafka scans
/// for timed-out messages about once a second). Past it, the record counts as unknown.
const REPORT_GRACE: Duration = Duration::from_secs(5);

/// How often a full local queue is tried again.
const QUEUE_RETRY: Duration = Duration::from_millis(10);

impl Producer {
    /// A producer for `brokers` whose records fail once unacknowledged for `timeout`.
    pub fn new(brokers: &str, timeout: Duration) -> Result<Producer, ProduceError> {
        let inner = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("acks", "all")
            .set("enable.idempotence", "true")
            // Concurrent requests share batches: a few ms of lingering buys throughput.
            .set("linger.ms", "2")
            .set("message.timeout.ms", timeout.as_millis().max(1).to_string())
            .create_with_context(Reports::default())
            .map_err(ProduceError::Create)?;
        Ok(Producer { inner, timeout })
    }

    /// The longest [`Producer::produce_each`] can take: a full local queue waited for up to
    /// the timeout, then the record's own message timeout, and its report's lateness. Once it
    /// has passed, none of its records can still be written.
    pub fn longest(&self) -> Duration {
        self.timeout * 2 + REPORT_GRACE
    }

    /// Produces every record and waits until all are acknowledged; the first failure is the
    /// answer (records already acknowledged stay written: a retry may write them again).
    pub async fn produce_all(&self, records: &[Record]) -> Result<(), ProduceError> {
        self.produce_each(records)
            .await
            .into_iter()
            .find_map(Result::err)
            .map_or(Ok(()), Err)
    }

    /// Produces every record and waits until each is acknowledged or failed: one answer per
    /// record, so that a caller can tell what was written, what was not, and what may have
    /// been ([`ProduceError::may_be_written`]).
    pub async fn produce_each<'r>(
        &self,
        records: impl IntoIterator<Item = &'r Record>,
    ) -> Vec<Result<(), ProduceError>> {
        // A full local queue is waited for (backpressure) until this deadline; a record still
        // not queued then was never sent.
        let queued_by = Instant::now() + self.timeout;
        let sends = records.into_iter().map(|r| self.produce_one(r, queued_by));
        futures_util::future::join_all(sends).await
    }

    async fn produce_one(&self, r: &Record, queued_by: Instant) -> Result<(), ProduceError> {
        let refused = |reason: String| ProduceError::NotAcknowledged {
            topic: r.topic.clone(),
            reason,
        };
        let unknown = |reason: String| ProduceError::Unknown {
            topic: r.topic.clone(),
            reason,
        };
        let (tx, rx) = oneshot::channel();
        let mut record = BaseRecord::with_opaque_to(&r.topic, Box::new(tx))
            .key(&r.key)
            .payload(&r.payload);
        loop {
            match self.inner.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back))
                    if Instant::now() < queued_by =>
                {
                    record = back;
                    tokio::time::sleep(QUEUE_RETRY).await;
                }
                // Never queued: not written.
                Err((e, _)) => return Err(refused(e.to_string())),
            }
        }
        // librdkafka reports every queued record by its message timeout; the bound only
        // guards against a report that never comes.
        match tokio::time::timeout(self.timeout + REPORT_GRACE, rx).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err((e, false)))) => Err(refused(e.to_string())),
            Ok(Ok(Err((e, true)))) => Err(unknown(e.to_string())),
            Ok(Err(_)) => Err(unknown("the delivery report was lost".to_owned())),
            Err(_) => Err(unknown(format!(
                "no delivery report within {} s",
                (self.timeout + REPORT_GRACE).as_secs()
            ))),
        }
    }

    /// Whether a broker answers (a metadata request) within `timeout`. Blocking: call it from
    /// `spawn_blocking`.
    pub fn reachable(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.inner.client().fetch_metadata(None, timeout).map(drop)
    }

    /// Waits for records still in flight (shutdown).
    pub fn flush(&self, timeout: Duration) {
        if let Err(e) = self.inner.flush(timeout) {
            tracing::warn!(error = %e, "Kafka records still unacknowledged at shutdown.");
        }
    }
}
