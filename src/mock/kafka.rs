//! `pusher mock kafka`: librdkafka's mock cluster as a standalone broker on 127.0.0.1, so
//! `kcat`, `pusher gen --kafka` and `pusher run` in other processes can use it
//! (reference/kafka-probe.md §1). It lives only as long as this process: data is in memory, and
//! each partition keeps at most about 5 MiB (older messages are dropped silently), so give
//! high-volume topics enough partitions.

use anyhow::Context;
use clap::Args;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseProducer, Producer};
use std::io::Write;
use std::process::ExitCode;

#[derive(Debug, Clone, Args)]
pub struct KafkaMockArgs {
    /// Number of mock brokers.
    #[arg(long, default_value_t = 1)]
    pub brokers: i32,
    /// Topic to create up front (repeatable). Unknown topics are also auto-created on first
    /// use, with 4 partitions.
    #[arg(long = "topic")]
    pub topics: Vec<String>,
    /// Partitions of each --topic.
    #[arg(long, default_value_t = 8)]
    pub partitions: i32,
}

#[derive(Debug, thiserror::Error)]
pub enum KafkaMockError {
    #[error("{0}")]
    BadArgument(&'static str),
    #[error("starting librdkafka's mock cluster: {0}")]
    Start(rdkafka::error::KafkaError),
    #[error("librdkafka did not start a mock cluster")]
    NoCluster,
    #[error("creating topic {topic:?}: {source}")]
    CreateTopic {
        topic: String,
        #[source]
        source: rdkafka::error::KafkaError,
    },
}

/// A running mock cluster. The cluster is owned by a client handle created with
/// `test.mock.num.brokers` (not `MockCluster::new`), because only then is the raw handle
/// reachable to set the group join delay to 0.
pub struct KafkaMock {
    /// Owns the cluster: dropping it stops the brokers.
    _holder: BaseProducer,
    bootstrap: String,
}

impl KafkaMock {
    pub fn start(
        brokers: i32,
        topics: &[String],
        partitions: i32,
    ) -> Result<KafkaMock, KafkaMockError> {
        if brokers < 1 {
            return Err(KafkaMockError::BadArgument("--brokers must be >= 1"));
        }
        if partitions < 1 {
            return Err(KafkaMockError::BadArgument("--partitions must be >= 1"));
        }
        let holder: BaseProducer = ClientConfig::new()
            .set("test.mock.num.brokers", brokers.to_string())
            .create()
            .map_err(KafkaMockError::Start)?;
        let cluster = holder
            .client()
            .mock_cluster()
            .ok_or(KafkaMockError::NoCluster)?;
        // SAFETY: the handle comes from a live client that owns the mock cluster, and both
        // outlive this call. The mock otherwise makes every new consumer group wait 3 s.
        unsafe {
            let raw = rdkafka::bindings::rd_kafka_handle_mock_cluster(holder.client().native_ptr());
            if !raw.is_null() {
                rdkafka::bindings::rd_kafka_mock_group_initial_rebalance_delay_ms(raw, 0);
            }
        }
        for topic in topics {
            cluster
                .create_topic(topic, partitions, brokers.min(3))
                .map_err(|source| KafkaMockError::CreateTopic {
                    topic: topic.clone(),
                    source,
                })?;
        }
        let bootstrap = cluster.bootstrap_servers();
        drop(cluster);
        Ok(KafkaMock {
            _holder: holder,
            bootstrap,
        })
    }

    /// `127.0.0.1:PORT[,...]`, for `bootstrap.servers`.
    pub fn bootstrap(&self) -> &str {
        &self.bootstrap
    }
}

impl std::fmt::Debug for KafkaMock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaMock")
            .field("bootstrap", &self.bootstrap)
            .finish()
    }
}

/// Runs the mock until SIGINT or SIGTERM; prints `{"kafka":{"bootstrap":"127.0.0.1:PORT"}}`.
pub fn run(args: KafkaMockArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    runtime.block_on(async {
        let mock = KafkaMock::start(args.brokers, &args.topics, args.partitions)?;
        let line = serde_json::json!({"kafka": {"bootstrap": mock.bootstrap()}});
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "{line}").context("writing to stdout")?;
        stdout.flush().context("writing to stdout")?;
        drop(stdout);
        tracing::info!(bootstrap = mock.bootstrap(), topics = ?args.topics, "mock kafka running; Ctrl-C to stop");
        wait_for_stop_signal().await?;
        tracing::info!("mock kafka stopped");
        Ok(ExitCode::SUCCESS)
    })
}

async fn wait_for_stop_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result.context("waiting for SIGINT")?,
        _ = term.recv() => {}
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use rdkafka::consumer::{BaseConsumer, Consumer};

    #[test]
    fn topics_are_created_with_the_requested_partitions() {
        let mock = KafkaMock::start(1, &["push-game_apns".to_owned()], 6).unwrap();
        assert!(
            mock.bootstrap().starts_with("127.0.0.1:"),
            "{}",
            mock.bootstrap()
        );
        let client: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", mock.bootstrap())
            .create()
            .unwrap();
        let metadata = client
            .fetch_metadata(Some("push-game_apns"), std::time::Duration::from_secs(10))
            .unwrap();
        assert_eq!(metadata.topics()[0].partitions().len(), 6);
    }

    /// A consumer group joins and gets a produced message: the mock serves real clients over
    /// TCP, and the join-delay call did not break it.
    #[tokio::test]
    async fn a_consumer_group_receives_what_is_produced() {
        use rdkafka::consumer::StreamConsumer;
        use rdkafka::message::Message;
        use rdkafka::producer::{FutureProducer, FutureRecord};
        let mock = KafkaMock::start(1, &["t".to_owned()], 2).unwrap();
        let consumer: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", mock.bootstrap())
            .set("group.id", "g")
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", "6000")
            .create()
            .unwrap();
        consumer.subscribe(&["t"]).unwrap();
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", mock.bootstrap())
            .create()
            .unwrap();
        producer
            .send(
                FutureRecord::to("t").key("k").payload("hello"),
                std::time::Duration::from_secs(10),
            )
            .await
            .unwrap();
        let message = tokio::time::timeout(std::time::Duration::from_secs(30), consumer.recv())
            .await
            .expect("no message within 30 s")
            .unwrap();
        assert_eq!(message.payload(), Some(&b"hello"[..]));
    }

    #[test]
    fn bad_arguments_are_errors() {
        assert!(KafkaMock::start(0, &[], 1).is_err());
        assert!(KafkaMock::start(1, &[], 0).is_err());
    }
}
