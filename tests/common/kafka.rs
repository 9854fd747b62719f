//! The Kafka broker a test runs against, over TCP on 127.0.0.1:
//! - by default librdkafka's mock cluster, in this process (`pusher mock kafka`'s broker);
//! - with `PUSHER_TEST_KAFKA=tansu`, a real Kafka-protocol broker: Tansu with SQLite storage,
//!   one per test, started and stopped by `ci/tansu.sh` (build it first: `ci/tansu.sh build`).
//!
//! Tansu creates no topic on first use (reference/kafka-probe.md §2), so every topic a test
//! touches, feedback topics included, is created here up front, on both brokers alike.
#![allow(dead_code)]

use pusher::mock::kafka::KafkaMock;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

pub enum TestKafka {
    Mock(KafkaMock),
    Tansu {
        bootstrap: String,
        dir: tempfile::TempDir,
    },
}

/// Which broker `PUSHER_TEST_KAFKA` asks for: "mock" (default) or "tansu".
pub fn kind() -> String {
    std::env::var("PUSHER_TEST_KAFKA").unwrap_or_else(|_| "mock".into())
}

fn tansu_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("ci/tansu.sh")
}

impl TestKafka {
    /// Starts the broker and creates `topics` with `partitions` each.
    pub async fn start(topics: &[&str], partitions: i32) -> TestKafka {
        match kind().as_str() {
            "mock" => {
                let names: Vec<String> = topics.iter().map(|t| t.to_string()).collect();
                TestKafka::Mock(KafkaMock::start(1, &names, partitions).unwrap())
            }
            "tansu" => {
                let dir = tempfile::tempdir().unwrap();
                let out = Command::new("bash")
                    .arg(tansu_script())
                    .arg("start")
                    .arg(dir.path())
                    .output()
                    .expect("bash ci/tansu.sh start");
                assert!(
                    out.status.success(),
                    "ci/tansu.sh start failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                let bootstrap = String::from_utf8(out.stdout).unwrap().trim().to_string();
                let kafka = TestKafka::Tansu { bootstrap, dir };
                kafka.create_topics(topics, partitions).await;
                kafka
            }
            other => panic!("PUSHER_TEST_KAFKA={other:?}: expected mock or tansu"),
        }
    }

    pub fn bootstrap(&self) -> &str {
        match self {
            TestKafka::Mock(m) => m.bootstrap(),
            TestKafka::Tansu { bootstrap, .. } => bootstrap,
        }
    }

    /// A real broker (durable log, real group coordinator), not the in-process mock.
    pub fn is_real(&self) -> bool {
        matches!(self, TestKafka::Tansu { .. })
    }

    async fn create_topics(&self, topics: &[&str], partitions: i32) {
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", self.bootstrap())
            .create()
            .unwrap();
        let new: Vec<NewTopic> = topics
            .iter()
            .map(|t| NewTopic::new(t, partitions, TopicReplication::Fixed(1)))
            .collect();
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        for result in admin.create_topics(&new, &options).await.unwrap() {
            if let Err((topic, code)) = result {
                panic!("creating topic {topic}: {code}");
            }
        }
    }
}

impl Drop for TestKafka {
    fn drop(&mut self) {
        if let TestKafka::Tansu { dir, .. } = self {
            let _ = Command::new("bash")
                .arg(tansu_script())
                .arg("stop")
                .arg(dir.path())
                .status();
        }
    }
}
