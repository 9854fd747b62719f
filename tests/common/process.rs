//! The real `pusher run apns` binary as a child process, and the Kafka chores around it
//! (producing generated messages, reading a group's committed offsets from a side client),
//! for the crash and restart tests.

use super::{fixture, Fake, KEY_ID, TEAM_ID, TOPIC};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use std::ops::{Deref, DerefMut};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A child process that is killed and reaped when dropped, so a failing (panicking) test
/// leaves no `pusher run` behind to eat the CPU of the tests and benchmarks after it.
pub struct KillOnDrop(pub Child);

impl Deref for KillOnDrop {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // Both fail harmlessly when the child has already been reaped.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// How a `pusher run apns` child is started.
pub struct PusherRun<'a> {
    pub app: &'a str,
    pub brokers: &'a str,
    pub group: &'a str,
    pub in_flight: u64,
    /// Extra `PUSHER_*` settings (they win over the defaults set here).
    pub env: Vec<(&'a str, String)>,
}

impl PusherRun<'_> {
    /// Starts it against `fake` over TLS with token auth; no feedback, deletion, stats.
    pub fn spawn(&self, fake: &Fake) -> KillOnDrop {
        KillOnDrop(
            self.command(fake)
                .stderr(Stdio::inherit())
                .spawn()
                .expect("start pusher run"),
        )
    }

    /// The command [`PusherRun::spawn`] runs, for a caller that keeps its stderr.
    pub fn command(&self, fake: &Fake) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_pusher"));
        cmd.args(["run", "apns", "--app", self.app, "--brokers", self.brokers])
            .arg("--key-file")
            .arg(fixture("AuthKey_TESTKEY001.p8"))
            .args(["--key-id", KEY_ID, "--team-id", TEAM_ID, "--topic", TOPIC])
            .args(["--endpoint", &fake.tls_url(), "--ca"])
            .arg(&fake.ca_file)
            .env("PUSHER_QUEUE_GROUP", self.group)
            .env("PUSHER_QUEUE_OFFSETRESETSTRATEGY", "earliest")
            .env("PUSHER_INFLIGHT", self.in_flight.to_string())
            .env("PUSHER_FEEDBACK_REPORTERS", "")
            .env("PUSHER_INVALIDTOKEN_HANDLERS", "")
            .env("PUSHER_STATS_REPORTERS", "")
            .env("PUSHER_STATS_PROMETHEUS_LISTEN", "")
            .env("PUSHER_LOG", "warn")
            .env("PUSHER_QUEUE_SESSIONTIMEOUT", "3000");
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd.stdout(Stdio::null());
        cmd
    }
}

/// SIGTERM (std only has SIGKILL); `kill` from procps is on every Debian machine.
pub fn sigterm(child: &Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
}

/// SIGKILL and reap.
pub fn sigkill(child: &mut Child) {
    child.kill().unwrap();
    child.wait().unwrap();
}

/// Produces `messages` (key = index) and waits for every delivery.
pub async fn produce_all(brokers: &str, topic: &str, messages: &[Vec<u8>]) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "5")
        .create()
        .unwrap();
    // In chunks, all of a chunk in flight at once (one by one, each would wait for its own
    // linger and ack; all at once would overflow the producer's queue).
    for (c, chunk) in messages.chunks(20_000).enumerate() {
        let sends = chunk.iter().enumerate().map(|(i, m)| {
            let producer = &producer;
            let key = (c * 20_000 + i).to_string();
            async move {
                producer
                    .send(
                        FutureRecord::to(topic).key(&key).payload(m),
                        Duration::from_secs(30),
                    )
                    .await
                    .map_err(|(e, _)| e)
                    .unwrap();
            }
        });
        futures_util::future::join_all(sends).await;
    }
}

/// The group's committed offsets on `partitions` partitions of `topic`, read by a side client
/// that never subscribes (reference/kafka-probe.md §1.5). Partitions without one count as 0.
pub fn committed_offsets(brokers: &str, group: &str, topic: &str, partitions: i32) -> Vec<i64> {
    let side: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .create()
        .unwrap();
    let mut list = TopicPartitionList::new();
    for p in 0..partitions {
        list.add_partition(topic, p);
    }
    let committed = side
        .committed_offsets(list, Duration::from_secs(10))
        .unwrap();
    (0..partitions)
        .map(
            |p| match committed.find_partition(topic, p).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => o,
                _ => 0,
            },
        )
        .collect()
}

/// The end (high watermark) of each of `partitions` partitions of `topic`: how many messages
/// the topic holds, producer retries included.
pub fn partition_ends(brokers: &str, topic: &str, partitions: i32) -> Vec<i64> {
    let side: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    (0..partitions)
        .map(|p| {
            side.fetch_watermarks(topic, p, Duration::from_secs(10))
                .unwrap()
                .1
        })
        .collect()
}
