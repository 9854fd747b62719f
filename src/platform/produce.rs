//! The platform's Kafka producer: a batch of records is done only when the brokers
//! acknowledged every one of them (idempotent producer, `acks=all`), so the API can say
//! "accepted" and mean it.

use crate::telemetry::QuietProducerContext;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
use rdkafka::util::Timeout;
use std::time::Duration;

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
    Create(#[source] rdkafka::error::KafkaError),
    /// A record was refused or not acknowledged in time: not the request's fault.
    #[error("Kafka did not acknowledge a record for {topic}: {reason}")]
    NotAcknowledged { topic: String, reason: String },
}

pub struct Producer {
    inner: FutureProducer<QuietProducerContext>,
    timeout: Duration,
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

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
            .create_with_context(QuietProducerContext::default())
            .map_err(ProduceError::Create)?;
        Ok(Producer { inner, timeout })
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
    /// record, so that a caller can tell what was written. Past the deadline, those still
    /// unanswered count as failed.
    pub async fn produce_each(&self, records: &[Record]) -> Vec<Result<(), ProduceError>> {
        // The bound is per record: one record stuck (its partition's leader unreachable)
        // leaves the others' acknowledgements standing.
        let deadline = self.timeout + Duration::from_secs(1);
        let sends = records.iter().map(|r| {
            let record = FutureRecord::to(&r.topic).key(&r.key).payload(&r.payload);
            // A full local queue waits (backpressure) until the same deadline.
            let send = self.inner.send(record, Timeout::After(self.timeout));
            async move {
                let failed = |reason: String| ProduceError::NotAcknowledged {
                    topic: r.topic.clone(),
                    reason,
                };
                match tokio::time::timeout(deadline, send).await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err((e, _))) => Err(failed(e.to_string())),
                    Err(_) => Err(failed(format!(
                        "no acknowledgement within {} s",
                        deadline.as_secs()
                    ))),
                }
            }
        });
        futures_util::future::join_all(sends).await
    }

    /// Waits for records still in flight (shutdown).
    pub fn flush(&self, timeout: Duration) {
        if let Err(e) = self.inner.flush(timeout) {
            tracing::warn!(error = %e, "Kafka records still unacknowledged at shutdown.");
        }
    }
}
