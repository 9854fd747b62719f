//! `pusher mock kafka`: librdkafka's mock cluster as a standalone broker on 127.0.0.1, so
//! `kcat`, `pusher gen --kafka` and `pusher run` in other processes can use it
//! (reference/kafka-probe.md §1). It lives only as long as this process: data is in memory.
//!
//! librdkafka's mock drops a partition's oldest messages, without a word, once it holds more
//! than 5 MiB or 100,000 message sets (`rdkafka_mock.c`, hard-coded, no API), and stores a
//! record batch of any size. So that nothing is lost silently:
//! - a produce request over a limit is refused (librdkafka's `receive.message.max.bytes` of
//!   the client that owns the mock: the mock closes the connection, the producer's messages
//!   fail rather than vanish) and reported: [`MAX_REQUEST_BYTES`] for `pusher mock kafka`,
//!   a partition's 5 MiB for the embedded mock (tests push 2 MiB values through it);
//! - `pusher mock kafka` raises the per-partition limit ([`MockOptions::retention_bytes`]) by
//!   writing the two fields librdkafka keeps it in, after checking every field on the way
//!   against what the code must find there (see [`layout`]); when the check fails, the
//!   limit stays 5 MiB and the ready line says so;
//! - a watcher follows the mock's own log (its debug lines for appends, commits and topic
//!   creations) and reports, as an error naming topic, partition and count, every message
//!   dropped before each consumer group that reads the partition had committed it.

use crate::telemetry::{KafkaReports, Throttle};
use crate::units::show_size;
use parking_lot::Mutex;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::producer::{BaseProducer, Producer};
use rdkafka::ClientContext;
use regex::Regex;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// librdkafka's own per-partition limits in its mock (`rd_kafka_mock_partition_init`).
pub const MOCK_PARTITION_BYTES: u64 = 5 * 1024 * 1024;
pub const MOCK_PARTITION_SETS: u64 = 100_000;
/// The largest produce request the mock takes. A librdkafka producer (kcat, `pusher`) with
/// the default `message.max.bytes` (1,000,000) sends requests of at most 1 MB plus one
/// message, so none of its requests is refused; a message over 1 MiB, from a producer
/// configured for it, is (a real broker's default `message.max.bytes` is 1 MiB too).
pub const MAX_REQUEST_BYTES: u64 = 2 * 1024 * 1024;
/// What `pusher mock kafka` keeps per partition by default: the README's seed workflow puts
/// up to 100k GCM messages (42 MB) in one partition when kcat's sticky partitioner does.
pub const DEFAULT_RETENTION_BYTES: u64 = 128 * 1024 * 1024;
/// How often the watcher reports what it found.
const REPORT_EVERY: Duration = Duration::from_secs(1);

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
    #[error("listening on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("starting the watcher thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// How to start a mock cluster.
#[derive(Debug, Clone)]
pub struct MockOptions {
    pub brokers: i32,
    /// Created up front.
    pub topics: Vec<String>,
    /// Partitions of `topics`.
    pub partitions: i32,
    /// Partitions of topics created on first use (librdkafka's default: 4).
    pub auto_create_partitions: Option<i32>,
    /// Bytes each partition keeps; `None` leaves librdkafka's 5 MiB (what tests and
    /// `bench --mock` rely on to keep memory flat while they consume as they produce).
    pub retention_bytes: Option<u64>,
    /// Where broker 1 listens (broker N on the port N-1 above); `None`: librdkafka's own
    /// listeners on free ports of 127.0.0.1.
    pub listen: Option<SocketAddr>,
    /// Larger produce requests are refused; at most what a partition keeps, so that no
    /// single batch can push everything else out.
    pub max_request_bytes: u64,
    /// Watch for messages the mock drops before a group consumed them (it reads the mock's
    /// debug log: ~15 % of `bench --mock`'s throughput, which checks its counts itself).
    pub watch_losses: bool,
}

impl MockOptions {
    pub fn new(brokers: i32, topics: &[String], partitions: i32) -> MockOptions {
        MockOptions {
            brokers,
            topics: topics.to_vec(),
            partitions,
            auto_create_partitions: None,
            retention_bytes: None,
            listen: None,
            max_request_bytes: MOCK_PARTITION_BYTES,
            watch_losses: true,
        }
    }
}

/// Messages the mock dropped from one partition before a consumer group committed them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loss {
    pub topic: String,
    pub partition: i32,
    /// Messages lost since the mock started.
    pub messages: u64,
}

/// A running mock cluster. The cluster is owned by a client handle created with
/// `test.mock.num.brokers` (not `MockCluster::new`), because only then is the raw handle
/// reachable (group join delay, limits, advertised addresses) and its log ours to read.
pub struct KafkaMock {
    /// Owns the cluster: dropping the last reference stops the brokers.
    holder: Arc<BaseProducer<MockContext>>,
    bootstrap: String,
    retention_bytes: u64,
    retention_sets: u64,
    max_request_bytes: u64,
    stop: Arc<AtomicBool>,
    watcher: Option<JoinHandle<()>>,
    forwarder: Option<Forwarder>,
}

impl KafkaMock {
    /// A mock with librdkafka's limits, watched for losses.
    pub fn start(
        brokers: i32,
        topics: &[String],
        partitions: i32,
    ) -> Result<KafkaMock, KafkaMockError> {
        KafkaMock::start_with(&MockOptions::new(brokers, topics, partitions))
    }

    pub fn start_with(options: &MockOptions) -> Result<KafkaMock, KafkaMockError> {
        let brokers = options.brokers;
        if brokers < 1 {
            return Err(KafkaMockError::BadArgument("--brokers must be >= 1"));
        }
        if options.partitions < 1 || options.auto_create_partitions.is_some_and(|p| p < 1) {
            return Err(KafkaMockError::BadArgument("--partitions must be >= 1"));
        }
        let retention = options.retention_bytes.unwrap_or(MOCK_PARTITION_BYTES);
        if options.max_request_bytes < 1000 || retention < options.max_request_bytes {
            return Err(KafkaMockError::BadArgument(
                "--retention-bytes must be at least the largest produce request (2MiB)",
            ));
        }
        let context = MockContext::new(
            options.topics.iter().cloned().collect(),
            options.max_request_bytes,
        );
        let mut config = ClientConfig::new();
        config
            .set("test.mock.num.brokers", brokers.to_string())
            // The mock checks requests against its owner's limit: bigger ones are refused.
            .set(
                "receive.message.max.bytes",
                options.max_request_bytes.to_string(),
            );
        if options.watch_losses {
            // The mock's debug lines are what the watcher reads (appends, commits, topics).
            config
                .set("debug", "mock")
                .set_log_level(RDKafkaLogLevel::Debug);
        }
        let holder: BaseProducer<MockContext> = config
            .create_with_context(context)
            .map_err(KafkaMockError::Start)?;
        let holder = Arc::new(holder);
        let cluster = holder
            .client()
            .mock_cluster()
            .ok_or(KafkaMockError::NoCluster)?;
        // SAFETY: the handle comes from a live client that owns the mock cluster, and both
        // outlive every use of it (the watcher thread holds the client).
        let raw = unsafe {
            rdkafka::bindings::rd_kafka_handle_mock_cluster(holder.client().native_ptr())
        };
        let raw = MockPtr(raw);
        if raw.0.is_null() {
            return Err(KafkaMockError::NoCluster);
        }
        // Found before any client connects, so nothing races with what is read and written.
        let checked = layout::Cluster::check(raw.0, brokers);
        if let Err(why) = &checked {
            tracing::debug!(why, "librdkafka's mock layout not as expected");
        }
        // SAFETY: as above. The mock otherwise makes every new consumer group wait 3 s.
        unsafe { rdkafka::bindings::rd_kafka_mock_group_initial_rebalance_delay_ms(raw.0, 0) };
        for topic in &options.topics {
            cluster
                .create_topic(topic, options.partitions, brokers.min(3))
                .map_err(|source| KafkaMockError::CreateTopic {
                    topic: topic.clone(),
                    source,
                })?;
        }
        drop(cluster);

        let (mut retention_bytes, mut retention_sets) = (MOCK_PARTITION_BYTES, MOCK_PARTITION_SETS);
        if let Ok(layout) = &checked {
            if let Some(p) = options.auto_create_partitions {
                layout.set_auto_create_partitions(p);
            }
            if let Some(bytes) = options.retention_bytes {
                let sets = retention_sets_for(bytes);
                match options
                    .topics
                    .iter()
                    .try_for_each(|t| layout.set_retention(t, bytes, sets))
                {
                    Ok(()) => (retention_bytes, retention_sets) = (bytes, sets),
                    Err(why) => tracing::warn!(
                        why,
                        "Could not raise the mock's per-partition limit: each partition keeps 5 MiB."
                    ),
                }
            }
        } else if options.retention_bytes.is_some() || options.auto_create_partitions.is_some() {
            tracing::warn!(
                "This librdkafka's mock cluster is not the one pusher knows (2.12.1): each partition keeps 5 MiB, topics created on first use get 4 partitions."
            );
        }
        {
            let mut watch = holder.context().lock();
            watch.retention = (retention_bytes, retention_sets);
            if checked.is_ok() && options.retention_bytes.is_some() {
                watch.raise_on_create = Some(RaiseOnCreate {
                    cluster: raw,
                    bytes: retention_bytes,
                    sets: retention_sets,
                });
            }
        }

        let mut bootstrap = cluster_bootstrap(&holder);
        let forwarder = match options.listen {
            Some(addr) => {
                let forwarder = Forwarder::start(addr, &bootstrap)?;
                for (i, public) in forwarder.addrs.iter().enumerate() {
                    let host = std::ffi::CString::new(advertised_host(public).to_string())
                        .map_err(|_| KafkaMockError::BadArgument("--listen: bad host"))?;
                    // SAFETY: live cluster (above); librdkafka copies the host string.
                    unsafe {
                        rdkafka::bindings::rd_kafka_mock_broker_set_host_port(
                            raw.0,
                            i as i32 + 1,
                            host.as_ptr(),
                            i32::from(public.port()),
                        )
                    };
                }
                bootstrap = forwarder
                    .addrs
                    .iter()
                    .map(|a| format!("{}:{}", advertised_host(a), a.port()))
                    .collect::<Vec<_>>()
                    .join(",");
                Some(forwarder)
            }
            None => None,
        };

        let stop = Arc::new(AtomicBool::new(false));
        let watcher = {
            let holder = holder.clone();
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("kafka-mock-watch".into())
                .spawn(move || watch(&holder, &stop))
                .map_err(KafkaMockError::Thread)?
        };
        Ok(KafkaMock {
            holder,
            bootstrap,
            retention_bytes,
            retention_sets,
            max_request_bytes: options.max_request_bytes,
            stop,
            watcher: Some(watcher),
            forwarder,
        })
    }

    /// `127.0.0.1:PORT[,...]`, for `bootstrap.servers`.
    pub fn bootstrap(&self) -> &str {
        &self.bootstrap
    }

    /// Consumer properties for reading from the mock: it answers a fetch that finds no data
    /// only after the consumer's whole `fetch.wait.max.ms` (librdkafka's default 500 ms), even
    /// when records arrive meanwhile (a real broker answers as soon as they do), so each idle
    /// hop would cost up to half a second. A short wait makes it behave like a broker.
    pub fn consumer_tuning(fetch_wait_ms: u32) -> Vec<(String, String)> {
        vec![("fetch.wait.max.ms".to_owned(), fetch_wait_ms.to_string())]
    }

    /// Bytes each partition keeps before dropping its oldest messages.
    pub fn retention_bytes(&self) -> u64 {
        self.retention_bytes
    }

    /// Message sets each partition keeps before dropping its oldest.
    pub fn retention_sets(&self) -> u64 {
        self.retention_sets
    }

    /// The largest produce request taken.
    pub fn max_request_bytes(&self) -> u64 {
        self.max_request_bytes
    }

    /// Messages lost so far (dropped before a group reading the partition committed them),
    /// per partition, as far as the watcher has read the mock's log (it follows within
    /// milliseconds).
    pub fn losses(&self) -> Vec<Loss> {
        let watch = self.holder.context().lock();
        watch
            .partitions
            .iter()
            .filter(|(_, p)| p.lost > 0)
            .map(|((topic, partition), p)| Loss {
                topic: topic.clone(),
                partition: *partition,
                messages: p.lost,
            })
            .collect()
    }
}

impl Drop for KafkaMock {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(watcher) = self.watcher.take() {
            // The watcher polls every 100 ms; it reports what it still has, then ends.
            let _ = watcher.join();
        }
        if let Some(forwarder) = self.forwarder.take() {
            forwarder.stop();
        }
    }
}

impl std::fmt::Debug for KafkaMock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaMock")
            .field("bootstrap", &self.bootstrap)
            .field("retention_bytes", &self.retention_bytes)
            .finish()
    }
}

/// Message sets kept alongside `bytes`: enough that bytes, not sets, are the limit for
/// any batch of at least 128 bytes (a record batch's header alone is 61).
fn retention_sets_for(bytes: u64) -> u64 {
    (bytes / 128).max(MOCK_PARTITION_SETS)
}

fn cluster_bootstrap(holder: &BaseProducer<MockContext>) -> String {
    holder
        .client()
        .mock_cluster()
        .map(|c| c.bootstrap_servers())
        .unwrap_or_default()
}

/// The host clients are told to use: the listen address, or loopback for a wildcard.
fn advertised_host(addr: &SocketAddr) -> std::net::IpAddr {
    if addr.ip().is_unspecified() {
        std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)
    } else {
        addr.ip()
    }
}

/// The mock cluster's raw handle, to raise the limits of topics created on first use.
#[derive(Clone, Copy)]
struct MockPtr(*mut rdkafka::bindings::rd_kafka_mock_cluster_t);
// SAFETY: a handle to a cluster that lives as long as the client holding it; librdkafka's
// mock API may be called from any thread (requests go through its op queue).
unsafe impl Send for MockPtr {}

struct RaiseOnCreate {
    cluster: MockPtr,
    bytes: u64,
    sets: u64,
}

/// What the watcher knows of one partition.
#[derive(Default)]
struct PartitionWatch {
    /// Last committed offset of each group that committed on this partition.
    committed: BTreeMap<String, i64>,
    /// Lost since the last report: count, first and last offset, groups that were behind.
    pending: u64,
    pending_from: i64,
    pending_to: i64,
    pending_groups: Vec<String>,
    lost: u64,
}

#[derive(Default)]
struct WatchState {
    partitions: HashMap<(String, i32), PartitionWatch>,
    /// Bytes and message sets a partition keeps.
    retention: (u64, u64),
    /// Topics created up front (others were created on first use).
    created: HashSet<String>,
    raise_on_create: Option<RaiseOnCreate>,
}

/// The holder client's context: reads the mock's log, passes the rest to the throttled
/// reporter `pusher run` uses.
struct MockContext {
    reports: KafkaReports,
    refusals: Throttle,
    max_request_bytes: u64,
    state: Mutex<WatchState>,
}

impl MockContext {
    fn new(created: HashSet<String>, max_request_bytes: u64) -> MockContext {
        MockContext {
            reports: KafkaReports::default(),
            refusals: Throttle::new(Duration::from_secs(10)),
            max_request_bytes,
            state: Mutex::new(WatchState {
                created,
                ..WatchState::default()
            }),
        }
    }

    fn lock(&self) -> parking_lot::MutexGuard<'_, WatchState> {
        self.state.lock()
    }

    /// One line of the mock's log; true when it was one the watcher reads.
    fn read_mock_line(&self, line: &str) -> bool {
        // librdkafka prefixes its lines with the thread: "[thrd:mock]: ".
        let line = match line.split_once("]: ") {
            Some((thread, rest)) if thread.starts_with("[thrd:") => rest,
            _ => line,
        };
        // Most lines are about requests and fetches: skip them before any regex.
        if !(line.starts_with("Topic ")
            || line.starts_with("Created topic")
            || line.contains("Log append"))
        {
            return false;
        }
        static APPEND: LazyLock<Option<Regex>> = LazyLock::new(|| {
            Regex::new(r"Log append (\S+) \[(\d+)\] .*\(log now (-?\d+)\.\.-?\d+, original start (-?\d+)\)").ok()
        });
        static COMMIT: LazyLock<Option<Regex>> = LazyLock::new(|| {
            Regex::new(r"^Topic (\S+) \[(\d+)\] committing offset (-?\d+) for group (.*)$").ok()
        });
        static CREATED: LazyLock<Option<Regex>> =
            LazyLock::new(|| Regex::new(r#"^Created topic "(.*)" with (\d+) partition"#).ok());
        let num = |s: &str| s.parse::<i64>().unwrap_or(0);
        if let Some(c) = APPEND.as_ref().and_then(|r| r.captures(line)) {
            let (start, original) = (num(&c[3]), num(&c[4]));
            if start > original {
                self.dropped(&c[1], num(&c[2]) as i32, original, start);
            }
            return true;
        }
        if let Some(c) = COMMIT.as_ref().and_then(|r| r.captures(line)) {
            let mut state = self.lock();
            let p = state
                .partitions
                .entry((c[1].to_string(), num(&c[2]) as i32))
                .or_default();
            p.committed.insert(c[4].to_string(), num(&c[3]));
            return true;
        }
        if let Some(c) = CREATED.as_ref().and_then(|r| r.captures(line)) {
            self.topic_created(&c[1], num(&c[2]));
            return true;
        }
        false
    }

    /// The mock dropped offsets `[from, to)` of a partition: those a group reading it had
    /// not committed are lost (with no group at all, every one is).
    fn dropped(&self, topic: &str, partition: i32, from: i64, to: i64) {
        let mut state = self.lock();
        let p = state
            .partitions
            .entry((topic.to_string(), partition))
            .or_default();
        let behind: Vec<String> = p
            .committed
            .iter()
            .filter(|(_, &o)| o < to)
            .map(|(g, _)| g.clone())
            .collect();
        let floor = p.committed.values().copied().min().unwrap_or(from);
        let first_lost = floor.max(from);
        if first_lost < to {
            let n = (to - first_lost) as u64;
            if p.pending == 0 {
                p.pending_from = first_lost;
            }
            p.pending += n;
            p.pending_to = to - 1;
            for g in behind {
                if !p.pending_groups.contains(&g) {
                    p.pending_groups.push(g);
                }
            }
            p.lost += n;
        }
    }

    fn topic_created(&self, topic: &str, partitions: i64) {
        let state = self.lock();
        if state.created.contains(topic) {
            return;
        }
        let Some(raise) = &state.raise_on_create else {
            tracing::debug!(
                topic,
                partitions,
                "Kafka mock: topic {topic} created on first use; each of its partitions keeps {}.",
                show_size(state.retention.0)
            );
            return;
        };
        // The topic exists on the mock thread; a round trip through its op queue makes what
        // that thread wrote visible here before the limits are read and raised.
        // SAFETY: live cluster: the watcher (this thread) holds its owner.
        unsafe {
            rdkafka::bindings::rd_kafka_mock_group_initial_rebalance_delay_ms(raise.cluster.0, 0)
        };
        match layout::Cluster::at(raise.cluster.0).set_retention(topic, raise.bytes, raise.sets) {
            Ok(()) => tracing::info!(
                topic,
                partitions,
                "Kafka mock: topic {topic} created on first use; each of its partitions keeps {}.",
                show_size(raise.bytes)
            ),
            Err(why) => tracing::warn!(
                topic,
                why,
                "Kafka mock: topic {topic} created on first use keeps only 5 MiB per partition; name it with --topic."
            ),
        }
    }

    /// Reports, as one error per partition, what was lost since the last report.
    fn report(&self) {
        let mut state = self.lock();
        let limit = show_size(state.retention.0);
        let sets = state.retention.1;
        let mut lines = Vec::new();
        for ((topic, partition), p) in state.partitions.iter_mut() {
            if p.pending == 0 {
                continue;
            }
            let who = if p.pending_groups.is_empty() {
                "no consumer group had read them".to_string()
            } else {
                format!("not yet committed by group {}", p.pending_groups.join(", "))
            };
            lines.push((
                topic.clone(),
                *partition,
                p.pending,
                format!(
                    "Kafka mock lost {} messages of {topic} [{partition}] (offsets {}..{}): {who}; a partition keeps {limit} or {sets} message sets, then drops its oldest. Consume as you produce, use more partitions, or raise --retention-bytes.",
                    p.pending, p.pending_from, p.pending_to
                ),
            ));
            p.pending = 0;
            p.pending_groups.clear();
        }
        drop(state);
        lines.sort();
        for (topic, partition, lost, line) in lines {
            tracing::error!(topic, partition, lost, "{line}");
        }
    }
}

impl ClientContext for MockContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        if fac == "MOCK" && self.read_mock_line(message) {
            return;
        }
        // librdkafka says "Protocol parse failure" first, then why: the why is reported.
        if fac == "PROTOERR"
            && message.contains("Protocol parse failure")
            && message.contains("rd_kafka_mock_connection_read_request")
        {
            return;
        }
        // A request over the limit: the mock closes the connection ("Invalid request size").
        if message.contains("Invalid request size") {
            if let Some(held_back) = self.refusals.allow("size") {
                let size = message
                    .split("Invalid request size ")
                    .nth(1)
                    .and_then(|s| s.split_whitespace().next())
                    .unwrap_or("?");
                let peer = message.rsplit(" from ").next().unwrap_or("?");
                tracing::error!(
                    held_back,
                    "Kafka mock refused a request of {size} bytes from {peer}: over the {} limit on produce requests. The connection is closed; the producer's messages fail, none is stored.",
                    show_size(self.max_request_bytes)
                );
            }
            return;
        }
        if matches!(level, RDKafkaLogLevel::Debug) {
            return;
        }
        self.reports.log(level, fac, message);
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        self.reports.error("mock cluster", &error, reason);
    }
}

impl rdkafka::producer::ProducerContext for MockContext {
    type DeliveryOpaque = ();
    // The holder produces nothing.
    fn delivery(&self, _: &rdkafka::producer::DeliveryResult<'_>, _: ()) {}
}

/// Serves the holder's log (the mock's lines among it) and reports losses once a second.
fn watch(holder: &BaseProducer<MockContext>, stop: &AtomicBool) {
    let mut last = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        holder.poll(Duration::from_millis(100));
        if last.elapsed() >= REPORT_EVERY {
            holder.context().report();
            last = Instant::now();
        }
    }
    holder.poll(Duration::ZERO);
    holder.context().report();
}

/// `--listen`: TCP listeners on fixed ports, each piping connections to one mock broker
/// (librdkafka's mock binds only free ports of 127.0.0.1, but lets the address it
/// advertises be changed).
struct Forwarder {
    addrs: Vec<SocketAddr>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Forwarder {
    fn start(first: SocketAddr, bootstrap: &str) -> Result<Forwarder, KafkaMockError> {
        let targets: Vec<SocketAddr> = bootstrap
            .split(',')
            .filter_map(|b| b.trim().parse().ok())
            .collect();
        let stop = Arc::new(AtomicBool::new(false));
        let mut addrs = Vec::new();
        let mut listeners = Vec::new();
        for i in 0..targets.len() {
            let mut addr = first;
            if first.port() != 0 {
                let port =
                    first
                        .port()
                        .checked_add(i as u16)
                        .ok_or(KafkaMockError::BadArgument(
                            "--listen: not enough ports above it for every broker",
                        ))?;
                addr.set_port(port);
            }
            let listener = TcpListener::bind(addr)
                .map_err(|source| KafkaMockError::Listen { addr, source })?;
            let bound = listener
                .local_addr()
                .map_err(|source| KafkaMockError::Listen { addr, source })?;
            addrs.push(bound);
            listeners.push(listener);
        }
        let mut threads = Vec::new();
        for (listener, target) in listeners.into_iter().zip(targets) {
            let stop = stop.clone();
            let thread = std::thread::Builder::new()
                .name("kafka-mock-listen".into())
                .spawn(move || accept(&listener, target, &stop))
                .map_err(KafkaMockError::Thread)?;
            threads.push(thread);
        }
        Ok(Forwarder {
            addrs,
            stop,
            threads,
        })
    }

    fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for addr in &self.addrs {
            // Wakes the accept loop so that it sees the flag.
            let mut wake = *addr;
            wake.set_ip(advertised_host(addr));
            let _ = TcpStream::connect_timeout(&wake, Duration::from_secs(1));
        }
        for thread in self.threads {
            let _ = thread.join();
        }
    }
}

fn accept(listener: &TcpListener, target: SocketAddr, stop: &AtomicBool) {
    for client in listener.incoming() {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let Ok(client) = client else {
            // Out of descriptors and the like: back off instead of spinning.
            std::thread::sleep(Duration::from_millis(50));
            continue;
        };
        let Ok(broker) = TcpStream::connect(target) else {
            continue;
        };
        let _ = client.set_nodelay(true);
        let _ = broker.set_nodelay(true);
        let (Ok(client2), Ok(broker2)) = (client.try_clone(), broker.try_clone()) else {
            continue;
        };
        let _ = std::thread::Builder::new()
            .name("kafka-mock-pipe".into())
            .spawn(move || pipe(client, broker));
        let _ = std::thread::Builder::new()
            .name("kafka-mock-pipe".into())
            .spawn(move || pipe(broker2, client2));
    }
}

/// Copies one direction; when it ends, closes both sockets so the other direction ends too.
fn pipe(mut from: TcpStream, mut to: TcpStream) {
    let _ = std::io::copy(&mut from, &mut to);
    let _ = from.shutdown(std::net::Shutdown::Both);
    let _ = to.shutdown(std::net::Shutdown::Both);
}

/// librdkafka 2.12.1's private mock structures, where the two per-partition limits and the
/// partition count of topics created on first use live (`rdkafka_mock_int.h`; no API sets
/// them). Offsets were measured with `offsetof` against that header on x86_64 (LP64, the
/// same on aarch64). Nothing is written unless every field read on the way holds what it
/// must: the library version, a value just set through the public API, the owning client,
/// the broker count, the defaults librdkafka sets, each topic's name, owner and partition
/// count, each partition's id, owner and limits. Otherwise the limits stay as they are.
mod layout {
    use super::{MOCK_PARTITION_BYTES, MOCK_PARTITION_SETS};
    use rdkafka::bindings as rd;
    use std::ffi::CStr;
    use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};

    type Raw = *mut rd::rd_kafka_mock_cluster_t;

    const VERSION: i32 = 0x020c_01ff;
    const CLUSTER_RK: usize = 32;
    const CLUSTER_BROKER_CNT: usize = 64;
    const CLUSTER_TOPICS_FIRST: usize = 72;
    const CLUSTER_TOPIC_CNT: usize = 88;
    const CLUSTER_DEFAULT_PARTITIONS: usize = 248;
    const CLUSTER_DEFAULT_REPLICATION: usize = 252;
    const CLUSTER_REBALANCE_DELAY: usize = 256;
    const TOPIC_NEXT: usize = 0;
    const TOPIC_NAME: usize = 16;
    const TOPIC_PARTITIONS: usize = 64;
    const TOPIC_PARTITION_CNT: usize = 72;
    const TOPIC_CLUSTER: usize = 80;
    const PARTITION_ID: usize = 16;
    const PARTITION_MAX_SIZE: usize = 96;
    const PARTITION_MAX_CNT: usize = 104;
    const PARTITION_TOPIC: usize = 200;
    const PARTITION_SIZE: usize = 224;
    /// A value no one sets, written through the API to find the field.
    const PROBE_DELAY_MS: i32 = 271_828;

    /// A cluster whose layout was checked.
    pub struct Cluster(Raw);

    /// Reads a field `offset` bytes into a struct.
    ///
    /// # Safety
    /// `base + offset` must be inside a live, readable object, aligned for `T`.
    unsafe fn read<T: Copy>(base: *const u8, offset: usize) -> T {
        // SAFETY: the caller's contract.
        unsafe { std::ptr::read_volatile(base.add(offset).cast::<T>()) }
    }

    impl Cluster {
        /// Checks what can be checked without following a pointer (every offset read is
        /// inside the cluster struct, which is much larger), before any client connects.
        pub fn check(raw: Raw, brokers: i32) -> Result<Cluster, &'static str> {
            if !cfg!(all(target_pointer_width = "64", target_os = "linux")) {
                return Err("not a 64-bit Linux build");
            }
            // SAFETY: no arguments; returns a constant.
            if unsafe { rd::rd_kafka_version() } != VERSION {
                return Err("not librdkafka 2.12.1");
            }
            let base = raw.cast::<u8>();
            // SAFETY: live cluster; the API call is synchronous (the mock thread's reply
            // makes its write visible here); the offsets are inside the struct.
            unsafe {
                rd::rd_kafka_mock_group_initial_rebalance_delay_ms(raw, PROBE_DELAY_MS);
                if read::<i32>(base, CLUSTER_REBALANCE_DELAY) != PROBE_DELAY_MS {
                    return Err("group delay not where expected");
                }
                let rk = rd::rd_kafka_mock_cluster_handle(raw);
                if read::<*mut rd::rd_kafka_t>(base, CLUSTER_RK) != rk {
                    return Err("owning client not where expected");
                }
                if read::<i32>(base, CLUSTER_BROKER_CNT) != brokers
                    || read::<i32>(base, CLUSTER_DEFAULT_PARTITIONS) != 4
                    || read::<i32>(base, CLUSTER_DEFAULT_REPLICATION) != brokers.min(3)
                {
                    return Err("broker count or topic defaults not where expected");
                }
            }
            Ok(Cluster(raw))
        }

        /// A cluster checked before, found again from another thread.
        pub fn at(raw: Raw) -> Cluster {
            Cluster(raw)
        }

        /// Partitions of topics created on first use.
        pub fn set_auto_create_partitions(&self, partitions: i32) {
            // SAFETY: checked field of a live cluster; an aligned i32 store, done before
            // clients connect (the mock thread reads it when it creates a topic).
            unsafe {
                AtomicI32::from_ptr(self.0.cast::<u8>().add(CLUSTER_DEFAULT_PARTITIONS).cast())
                    .store(partitions, Ordering::Relaxed)
            };
        }

        /// Raises every partition of `topic` to keep `bytes` and `sets`. The topic must have
        /// been created before the caller's last synchronous call into the mock.
        pub fn set_retention(
            &self,
            topic: &str,
            bytes: u64,
            sets: u64,
        ) -> Result<(), &'static str> {
            let base = self.0.cast::<u8>();
            // SAFETY: every pointer followed was read from a field checked above or on the
            // way, and the walk stops at `topic` (created, and made visible, before this
            // call): no element a concurrent insertion is writing is read.
            unsafe {
                let count = read::<i32>(base, CLUSTER_TOPIC_CNT);
                let mut t = read::<*const u8>(base, CLUSTER_TOPICS_FIRST);
                for _ in 0..count.max(0) {
                    if t.is_null() {
                        break;
                    }
                    if read::<*const u8>(t, TOPIC_CLUSTER) != base.cast_const() {
                        return Err("topic owner not where expected");
                    }
                    let name = read::<*const std::ffi::c_char>(t, TOPIC_NAME);
                    if !name.is_null() && CStr::from_ptr(name).to_bytes() == topic.as_bytes() {
                        return raise_partitions(t, bytes, sets);
                    }
                    t = read::<*const u8>(t, TOPIC_NEXT);
                }
            }
            Err("topic not found in the mock")
        }
    }

    /// # Safety
    /// `topic` points at a live, checked-owner topic struct.
    unsafe fn raise_partitions(
        topic: *const u8,
        bytes: u64,
        sets: u64,
    ) -> Result<(), &'static str> {
        // SAFETY: the caller's contract; partitions is an array of `count` structs.
        unsafe {
            let count = read::<i32>(topic, TOPIC_PARTITION_CNT);
            let parts = read::<*mut u8>(topic, TOPIC_PARTITIONS);
            if count < 1 || parts.is_null() {
                return Err("partitions not where expected");
            }
            for i in 0..count as usize {
                let p = parts.add(i * PARTITION_SIZE);
                let max_size = read::<u64>(p, PARTITION_MAX_SIZE);
                let max_cnt = read::<u64>(p, PARTITION_MAX_CNT);
                if read::<i32>(p, PARTITION_ID) != i as i32
                    || read::<*const u8>(p, PARTITION_TOPIC) != topic
                    || !(max_size == MOCK_PARTITION_BYTES || max_size == bytes)
                    || !(max_cnt == MOCK_PARTITION_SETS || max_cnt == sets)
                {
                    return Err("partition fields not where expected");
                }
            }
            for i in 0..count as usize {
                let p = parts.add(i * PARTITION_SIZE);
                // Aligned 8-byte stores: the mock thread reads either value, never a mix.
                AtomicU64::from_ptr(p.add(PARTITION_MAX_SIZE).cast())
                    .store(bytes, Ordering::Relaxed);
                AtomicU64::from_ptr(p.add(PARTITION_MAX_CNT).cast()).store(sets, Ordering::Relaxed);
            }
        }
        Ok(())
    }
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

    /// The watcher's reading of the mock's lines: a drop past every group's commit is a
    /// loss, one behind the slowest group's commit is not, and with no group all of it is.
    #[test]
    fn drops_count_against_the_slowest_group() {
        let ctx = MockContext::new(HashSet::new(), MOCK_PARTITION_BYTES);
        let append = |t: &str, start: i64, orig: i64| {
            format!("[thrd:mock]: Broker 1: Log append {t} [0] 10 messages, 900 bytes at offset 90 (log now {start}..100, original start {orig})")
        };
        assert!(ctx.read_mock_line(&append("a", 40, 0)));
        assert!(ctx.read_mock_line("[thrd:mock]: Topic b [0] committing offset 50 for group g1"));
        assert!(ctx.read_mock_line("Topic b [0] committing offset 70 for group g2"));
        assert!(ctx.read_mock_line(&append("b", 60, 0)));
        assert!(ctx.read_mock_line(&append("b", 65, 60)));
        assert!(ctx.read_mock_line("Topic b [0] committing offset 90 for group g1"));
        assert!(ctx.read_mock_line(&append("b", 80, 65)));
        assert!(!ctx.read_mock_line("[thrd:mock]: Broker 1: Received FetchRequestV11"));
        assert!(!ctx.read_mock_line("[thrd:mock]: Topic  [0] fetch err NO_ERROR for offset 0"));
        let state = ctx.lock();
        assert_eq!(state.partitions[&("a".to_string(), 0)].lost, 40);
        // b: 50..60 and 60..65 (g1 behind), then 70..80 (g2 behind).
        let b = &state.partitions[&("b".to_string(), 0)];
        assert_eq!(b.lost, 10 + 5 + 10);
        assert_eq!(b.pending_groups, vec!["g1".to_string(), "g2".to_string()]);
    }
}
