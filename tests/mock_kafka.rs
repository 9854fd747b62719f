//! `pusher mock kafka` as a user runs it (a process, clients over TCP), and the embedded
//! mock's loss watcher: nothing the broker drops goes unsaid, oversized requests are
//! refused, the seed workflow's volume fits, `--listen` pins the address.

use pusher::mock::kafka::{KafkaMock, Loss};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use regex::Regex;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A `pusher mock kafka` child: its ready line, and its stderr as it comes.
struct MockProcess {
    child: Child,
    ready: serde_json::Value,
    stderr: Arc<Mutex<String>>,
}

impl MockProcess {
    fn start(args: &[&str]) -> MockProcess {
        let mut child = Command::new(env!("CARGO_BIN_EXE_pusher"))
            .args(["mock", "kafka"])
            .args(args)
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("pusher mock kafka");
        let stderr = Arc::new(Mutex::new(String::new()));
        {
            let stderr = stderr.clone();
            let pipe = child.stderr.take().unwrap();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    let mut s = stderr.lock().unwrap();
                    s.push_str(&line);
                    s.push('\n');
                }
            });
        }
        let (tx, rx) = std::sync::mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("no ready line within 30 s");
        let ready: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| {
            panic!(
                "ready line {line:?}: {e}; stderr: {}",
                stderr.lock().unwrap()
            )
        });
        MockProcess {
            child,
            ready,
            stderr,
        }
    }

    fn bootstrap(&self) -> String {
        self.ready["kafka"]["bootstrap"]
            .as_str()
            .unwrap()
            .to_string()
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Messages the mock said it lost from `topic [partition]` (sum of its error lines).
    fn reported_lost(&self, topic: &str, partition: i32) -> u64 {
        let re = Regex::new(&format!(
            r"lost (\d+) messages of {} \[{partition}\]",
            regex::escape(topic)
        ))
        .unwrap();
        re.captures_iter(&self.stderr())
            .map(|c| c[1].parse::<u64>().unwrap())
            .sum()
    }
}

impl Drop for MockProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn producer(brokers: &str, extra: &[(&str, &str)]) -> BaseProducer {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers)
        .set("linger.ms", "20")
        .set("queue.buffering.max.messages", "1000000")
        .set("queue.buffering.max.kbytes", "2097151");
    for (k, v) in extra {
        c.set(*k, *v);
    }
    c.create().unwrap()
}

/// Sends every value to `topic [partition]` and waits until none is queued.
fn produce_all(p: &BaseProducer, topic: &str, partition: i32, values: &[Vec<u8>]) {
    for v in values {
        loop {
            match p.send(
                BaseRecord::<(), [u8]>::to(topic)
                    .partition(partition)
                    .payload(v),
            ) {
                Ok(()) => break,
                Err((e, _)) => {
                    assert!(format!("{e}").contains("Queue full"), "{e}");
                    p.poll(Duration::from_millis(10));
                }
            }
        }
    }
    p.flush(Duration::from_secs(60)).expect("flush");
}

fn watermarks(brokers: &str, topic: &str, partition: i32) -> (i64, i64) {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    c.fetch_watermarks(topic, partition, Duration::from_secs(10))
        .unwrap()
}

fn wait_for(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Produced past the partition's limit with no one consuming: the mock drops the oldest
/// messages and says so, naming topic, partition and exactly how many.
#[test]
fn unconsumed_drops_are_reported_with_topic_partition_and_count() {
    let mock = MockProcess::start(&[
        "--topic",
        "push-loss_apns",
        "--partitions",
        "2",
        "--retention-bytes",
        "2MiB",
    ]);
    assert_eq!(mock.ready["kafka"]["partition_bytes"], 2 * 1024 * 1024);
    let brokers = mock.bootstrap();
    let values: Vec<Vec<u8>> = (0..600)
        .map(|i| vec![b'a' + (i % 26) as u8; 10_000])
        .collect();
    produce_all(&producer(&brokers, &[]), "push-loss_apns", 0, &values);
    let (low, high) = watermarks(&brokers, "push-loss_apns", 0);
    assert_eq!(high, 600);
    assert!(low > 0, "6 MB into a 2 MiB partition dropped nothing?");
    wait_for("the loss report", Duration::from_secs(20), || {
        mock.reported_lost("push-loss_apns", 0) == low as u64
    });
    assert_eq!(mock.reported_lost("push-loss_apns", 1), 0);
    let stderr = mock.stderr();
    assert!(
        stderr.contains("no consumer group had read them") && stderr.contains("2 MiB"),
        "{stderr}"
    );
}

/// The seed workflow's worst case: kcat's sticky partitioner can put a whole run in one
/// partition. 100k generated GCM messages (42 MB) in partition 0 of a default `mock kafka`
/// topic are all kept (librdkafka's own mock keeps 5 MiB: 12k of them).
#[test]
fn the_seed_workflow_volume_fits_in_one_partition() {
    let mock = MockProcess::start(&["--topic", "push-game_gcm", "--partitions", "4"]);
    let brokers = mock.bootstrap();
    let gen = Command::new(env!("CARGO_BIN_EXE_pusher"))
        .args([
            "gen",
            "--platform",
            "gcm",
            "--count",
            "100k",
            "--seed",
            "3",
            "-q",
        ])
        .output()
        .expect("pusher gen");
    assert!(gen.status.success());
    let values: Vec<Vec<u8>> = gen
        .stdout
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(<[u8]>::to_vec)
        .collect();
    assert_eq!(values.len(), 100_000);
    produce_all(&producer(&brokers, &[]), "push-game_gcm", 0, &values);
    assert_eq!(watermarks(&brokers, "push-game_gcm", 0), (0, 100_000));
}

/// The README's pipe itself, `pusher gen | kcat -P` into `mock kafka --topic ... --partitions
/// 4`, with 100k GCM messages: every one is there (when kcat is installed).
#[test]
fn the_seed_workflow_through_kcat_loses_nothing() {
    if Command::new("kcat").arg("-V").output().is_err() {
        eprintln!("kcat not installed: skipping");
        return;
    }
    let mock = MockProcess::start(&["--topic", "push-game_gcm", "--partitions", "4"]);
    let brokers = mock.bootstrap();
    let mut gen = Command::new(env!("CARGO_BIN_EXE_pusher"))
        .args([
            "gen",
            "--platform",
            "gcm",
            "--count",
            "100k",
            "--seed",
            "4",
            "-q",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("pusher gen");
    let kcat = Command::new("kcat")
        .args(["-P", "-b", &brokers, "-t", "push-game_gcm"])
        .stdin(gen.stdout.take().unwrap())
        .output()
        .expect("kcat");
    assert!(gen.wait().unwrap().success());
    assert!(
        kcat.status.success(),
        "{}",
        String::from_utf8_lossy(&kcat.stderr)
    );
    let mut kept = 0;
    for p in 0..4 {
        let (low, high) = watermarks(&brokers, "push-game_gcm", p);
        assert_eq!(low, 0, "partition {p} dropped messages");
        kept += high;
    }
    assert_eq!(kept, 100_000);
}

/// A request over the limit is refused (the producer's message fails) instead of being
/// stored and then evicting the partition; the next message is kept; the mock says why.
#[test]
fn an_oversized_message_is_refused_not_stored() {
    let mock = MockProcess::start(&["--topic", "big", "--partitions", "1"]);
    assert_eq!(mock.ready["kafka"]["max_request_bytes"], 2 * 1024 * 1024);
    let brokers = mock.bootstrap();
    let p = producer(
        &brokers,
        &[
            ("message.max.bytes", "20000000"),
            ("message.timeout.ms", "3000"),
            ("linger.ms", "0"),
        ],
    );
    let big = vec![b'x'; 3_000_000];
    p.send(BaseRecord::<(), [u8]>::to("big").partition(0).payload(&big))
        .map_err(|(e, _)| e)
        .unwrap();
    let _ = p.flush(Duration::from_secs(10));
    let (low, high) = watermarks(&brokers, "big", 0);
    assert_eq!((low, high), (0, 0), "the 3 MB message was stored");
    // A producer with the default delivery timeout: the 3 s one above gave up on the small
    // message too on a loaded machine (CI), while it reconnected after the refusal.
    let small = producer(&brokers, &[("linger.ms", "0")]);
    produce_all(&small, "big", 0, &[b"small".to_vec()]);
    assert_eq!(watermarks(&brokers, "big", 0), (0, 1));
    wait_for("the refusal report", Duration::from_secs(10), || {
        mock.stderr().contains("refused a request of")
    });
}

/// `--listen` pins the address: clients given it reach the broker, and the broker
/// advertises it (so metadata sends them back there, not to librdkafka's own port).
#[test]
fn listen_pins_the_address() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let addr = format!("127.0.0.1:{port}");
    let mock = MockProcess::start(&["--listen", &addr, "--topic", "pinned"]);
    assert_eq!(mock.bootstrap(), addr);
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &addr)
        .create()
        .unwrap();
    let metadata = consumer
        .fetch_metadata(Some("pinned"), Duration::from_secs(10))
        .unwrap();
    let b = &metadata.brokers()[0];
    assert_eq!((b.host(), b.port()), ("127.0.0.1", i32::from(port)));
    produce_all(&producer(&addr, &[]), "pinned", 3, &[b"hello".to_vec()]);
    assert_eq!(watermarks(&addr, "pinned", 3), (0, 1));
}

/// The embedded mock (`bench --mock`, tests): messages a group committed may be dropped
/// (that is the mock's retention at work), those it had not are losses.
#[test]
fn the_embedded_mock_counts_only_what_no_group_committed() {
    let mock = KafkaMock::start(1, &["w".to_string()], 1).unwrap();
    let brokers = mock.bootstrap().to_string();
    let p = producer(&brokers, &[]);
    let batch = |from: usize| -> Vec<Vec<u8>> {
        (from..from + 200)
            .map(|i| format!("{i:0>10000}").into_bytes())
            .collect()
    };
    // 2 MB, read and committed by group g.
    produce_all(&p, "w", 0, &batch(0));
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", "g")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition_offset("w", 0, rdkafka::Offset::Beginning)
        .unwrap();
    consumer.assign(&tpl).unwrap();
    let mut last = -1;
    let start = Instant::now();
    while last < 199 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "consumed up to {last}"
        );
        if let Some(m) = consumer.poll(Duration::from_millis(100)) {
            last = m.unwrap().offset();
        }
    }
    consumer.commit_consumer_state(CommitMode::Sync).unwrap();
    // 4 MB more: the mock (5 MiB) drops committed messages only.
    produce_all(&p, "w", 0, &batch(200));
    produce_all(&p, "w", 0, &batch(400));
    let (low, _) = watermarks(&brokers, "w", 0);
    assert!(low > 0 && low <= 200, "low watermark {low}");
    // 4 MB more, still committed at 200: what is dropped past 200 is lost, and only that
    // (the drops before, all committed, would make the count larger).
    produce_all(&p, "w", 0, &batch(600));
    produce_all(&p, "w", 0, &batch(800));
    let (low, _) = watermarks(&brokers, "w", 0);
    assert!(low > 200, "low watermark {low}");
    wait_for("the loss", Duration::from_secs(10), || {
        mock.losses()
            == vec![Loss {
                topic: "w".into(),
                partition: 0,
                messages: (low - 200) as u64,
            }]
    });
}
