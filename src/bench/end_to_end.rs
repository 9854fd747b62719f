//! `pusher bench --mock` (end to end): generate -> produce into Kafka -> the real `run`
//! pipeline consumes, sends to the fake APNs or FCM server, hands off outcomes and commits -> measure.
//! Everything runs in this process: librdkafka's mock cluster (or `--brokers`), the fake on
//! its own thread, the producer on its own thread, the pipeline on the main runtime.

use super::calibrate::calibrate;
use super::interrupt::{Interrupt, DRAIN};
use super::recorder::Recorder;
use super::sender_only::target;
use super::{base_report, write_hgrm, Settings};
use crate::gen::{GenConfig, Generator, Mix};
use crate::mock::kafka::{KafkaMock, MockOptions};
use crate::pipeline::run::{run, Observer, OutcomeEvent, Outputs, RunSpec};
use crate::progress::Progress;
use crate::report::data::{peak_rss_bytes, Conservation, Report};
use crate::report::gate::median;
use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const APP: &str = "bench";
/// Messages produced but not yet answered, at most: bounds memory and keeps the mock
/// cluster's per-partition retention (5 MiB) from dropping unread messages.
const MAX_BACKLOG: u64 = 50_000;
/// Bytes a record costs in the mock's log beyond its value (key, headers, varints, its share
/// of the batch header), counted against what a partition keeps; generous on purpose.
const RECORD_OVERHEAD: u64 = 64;
/// After a loss, how long the messages still in flight get to answer before the run ends.
const LOSS_DRAIN: Duration = Duration::from_secs(10);

/// Shared between the producer thread and the pipeline's observer.
struct Clock {
    start: Instant,
    /// Open loop: the schedule's interval, ns. Message `seq` is due `seq` intervals after
    /// `first_due_ns`.
    interval_ns: Option<u64>,
    /// When the producer's first message was due (its start), ns since `start`.
    first_due_ns: AtomicU64,
    /// Messages produced (delivery acknowledged) and failed.
    produced: AtomicU64,
    produce_failed: AtomicU64,
    /// Messages generated (handed to the producer).
    generated: AtomicU64,
    answered: AtomicU64,
    /// Answered without a request to the endpoint (malformed or expired), which the fake's
    /// own count of answers does not cover.
    not_sent: AtomicU64,
    /// Answers in the measured window (what the progress bar counts).
    measured_answered: AtomicU64,
    /// Every answer from the measured window's start, a warm-up message's too: the
    /// throughput's numerator. Counting the measured messages' only, the window's first
    /// end-to-end latency held the warm-up's answers and counted none (a 10k run read 19.8k
    /// msg/s where 100k read 35.6k).
    window_answered: AtomicU64,
    /// No more messages will be generated.
    done_generating: AtomicBool,
    /// Start of the measured window, ns since `start` (after warm-up); set by the producer.
    measure_from_ns: AtomicU64,
    /// First sequence number produced after the warm-up.
    first_measured_seq: AtomicU64,
    /// Closed loop: messages produced ahead of the answers, at most.
    backlog: u64,
    /// The embedded mock: bytes produced to each partition and not yet answered. The mock
    /// drops a partition's oldest messages past its limit, read or not: the producer keeps
    /// this under `ahead_limit`, so what is not yet read is never dropped.
    ahead: Vec<AtomicU64>,
    ahead_limit: u64,
    /// Offsets the pipeline skipped, per partition (see [`Gaps`]).
    gaps: Mutex<Gaps>,
    /// This run's first offset per partition (none listed: 0). With `--brokers` the topic
    /// may hold earlier runs' messages: they are not this run's.
    first_offsets: HashMap<i32, i64>,
    /// Messages Kafka dropped before the pipeline consumed them.
    lost: AtomicU64,
    /// The first delivery error, for the report.
    produce_error: Mutex<Option<String>>,
    recorder: Mutex<Recorder>,
}

/// What the bench writes in a message's key, so that its answer needs nothing kept aside: its
/// sequence number, when it was produced (ns since [`Clock::start`]) and the bytes it counts
/// for in [`Clock::ahead`]. A ring of produce times indexed by sequence number gave a message
/// still unanswered a lap later (a stalled one) the produce time of a newer one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Tag {
    seq: u64,
    sent_ns: u64,
    size: u64,
}

impl Tag {
    fn write(&self, key: &mut String) {
        use std::fmt::Write as _;
        key.clear();
        let _ = write!(key, "{}:{}:{}", self.seq, self.sent_ns, self.size);
    }

    fn parse(key: &[u8]) -> Option<Tag> {
        let mut parts = std::str::from_utf8(key).ok()?.split(':');
        let mut next = || parts.next()?.parse::<u64>().ok();
        let tag = Tag {
            seq: next()?,
            sent_ns: next()?,
            size: next()?,
        };
        parts.next().is_none().then_some(tag)
    }
}

/// Where the pipeline is in each partition. Offsets of a partition are consecutive (the
/// bench's topic has no transactions or compaction), so an offset past the next expected one
/// means Kafka dropped those in between before they were read: the consumer, sent past the
/// log's start, starts again at the oldest it still has.
#[derive(Debug, Default)]
struct Gaps {
    /// This run's first offset per partition (a partition not listed starts at 0); older
    /// messages (`--brokers`, a topic used before) are not this run's.
    start: HashMap<i32, i64>,
    next: HashMap<i32, i64>,
    /// The first gap: partition, first and last offset skipped.
    first: Option<(i32, i64, i64)>,
}

impl Gaps {
    /// Takes a consumed offset; returns how many offsets it skipped.
    fn consumed(&mut self, partition: i32, offset: i64) -> u64 {
        let start = self.start.get(&partition).copied().unwrap_or(0);
        let expected = self.next.get(&partition).copied().unwrap_or(start);
        if offset < expected {
            return 0; // a redelivery, or a message older than the run
        }
        self.next.insert(partition, offset + 1);
        if offset == expected {
            return 0;
        }
        self.first.get_or_insert((partition, expected, offset - 1));
        (offset - expected) as u64
    }
}

impl Clock {
    fn ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    /// Messages that will never be answered: dropped by Kafka, or never produced.
    fn unanswerable(&self) -> u64 {
        self.lost.load(Ordering::Relaxed) + self.produce_failed.load(Ordering::Relaxed)
    }

    /// Why messages will never be answered, when some will not.
    fn lost_cause(&self, embedded: bool) -> Option<String> {
        let mut causes = Vec::new();
        let lost = self.lost.load(Ordering::Relaxed);
        if lost > 0 {
            let where_ = match self.gaps.lock().first {
                Some((p, from, to)) => format!(" (first: partition {p}, offsets {from}..={to})"),
                None => String::new(),
            };
            let why = if embedded {
                "the embedded mock keeps 5 MiB per partition and drops its oldest messages"
            } else {
                "the broker's retention deleted them"
            };
            causes.push(format!(
                "Kafka dropped {lost} messages before the pipeline consumed them{where_}: {why}"
            ));
        }
        let failed = self.produce_failed.load(Ordering::Relaxed);
        if failed > 0 {
            let first = self.produce_error.lock().clone().unwrap_or_default();
            causes.push(format!(
                "{failed} messages could not be produced (first error: {first})"
            ));
        }
        (!causes.is_empty()).then(|| causes.join("; "))
    }
}

struct Measure(Arc<Clock>);

impl Observer for Measure {
    fn on_outcome(&self, e: &OutcomeEvent<'_>) {
        let c = &self.0;
        let now = c.ns();
        if e.offset < c.first_offsets.get(&e.partition).copied().unwrap_or(0) {
            return; // an earlier run's message
        }
        c.answered.fetch_add(1, Ordering::Relaxed);
        if e.outcome.never_sent() {
            c.not_sent.fetch_add(1, Ordering::Relaxed);
        }
        if now >= c.measure_from_ns.load(Ordering::Relaxed) {
            c.window_answered.fetch_add(1, Ordering::Relaxed);
        }
        let Some(tag) = e.key.and_then(Tag::parse) else {
            return;
        };
        if let Some(ahead) = c.ahead.get(e.partition as usize) {
            // Saturating: a redelivered message is answered twice.
            let _ = ahead.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |a| {
                Some(a.saturating_sub(tag.size))
            });
        }
        if tag.seq < c.first_measured_seq.load(Ordering::Relaxed) {
            return; // warm-up
        }
        c.measured_answered.fetch_add(1, Ordering::Relaxed);
        let from = c.measure_from_ns.load(Ordering::Relaxed);
        let e2e = Duration::from_nanos(now.saturating_sub(tag.sent_ns));
        let at = Duration::from_nanos(now.saturating_sub(from));
        // Open loop: also from when the schedule meant it to be produced.
        let intended = c.interval_ns.map(|iv| {
            let due = c
                .first_due_ns
                .load(Ordering::Relaxed)
                .saturating_add(tag.seq.saturating_mul(iv));
            Duration::from_nanos(now.saturating_sub(due))
        });
        let mut r = c.recorder.lock();
        r.record_e2e(e2e, intended, at);
        if let Some(send) = e.send_latency {
            r.record_send(send, None, at);
        }
        r.record_outcome(e.outcome, at);
    }

    fn on_consumed(&self, _topic: &str, partition: i32, offset: i64) {
        let skipped = self.0.gaps.lock().consumed(partition, offset);
        if skipped > 0 {
            self.0.lost.fetch_add(skipped, Ordering::Relaxed);
        }
    }
}

/// Counts delivery reports.
struct Deliveries(Arc<Clock>);
impl ClientContext for Deliveries {}
impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => {
                self.0.produced.fetch_add(1, Ordering::Relaxed);
            }
            Err((e, _)) => {
                self.0
                    .produce_error
                    .lock()
                    .get_or_insert_with(|| e.to_string());
                self.0.produce_failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

pub fn run_bench(args: &Settings, interrupt: &Interrupt) -> anyhow::Result<Report> {
    super::check_payload_size(args, APP)?;
    let count = args.count.or(if args.duration.is_some() {
        None
    } else {
        Some(100_000)
    });
    let mut runs = Vec::new();
    let mut runs_p99 = Vec::new();
    let mut runs_latency = Vec::new();
    // The kept round's report, its end-to-end histogram (for --hgrm) and its throughput.
    let mut best: Option<(Report, Histogram<u64>, f64)> = None;
    let mut interrupted = false;
    // The calibration measured between rounds: within the run, so that load from elsewhere
    // during a long run is sampled too.
    let mut calibrations = Vec::new();
    for round in 0..args.repeat {
        if interrupt.is_set() && round > 0 {
            break;
        }
        if round > 0 {
            calibrations.push(calibrate(5, Duration::from_millis(40)));
        }
        let (report, e2e) = one_run(args, count, round, interrupt)?;
        // Lost messages fail the run: no more rounds, and this one's counts are reported.
        let lost = report.conservation.lost > 0;
        interrupted |= report.interrupted;
        if report.interrupted || lost {
            // Part of a round after whole ones: it proves nothing about the figures, but
            // its messages must still add up.
            if let Some((kept, _, _)) = best.as_mut() {
                if !report.conservation.ok {
                    kept.conservation = report.conservation;
                }
                break;
            }
        }
        runs.push(report.throughput);
        if let Some(p) = report.latency.end_to_end.as_ref() {
            runs_p99.push(p.p99_us);
        }
        runs_latency.push(report.latency.clone());
        let m = median(&runs);
        let keep = best
            .as_ref()
            .is_none_or(|(_, _, t)| (report.throughput - m).abs() < (t - m).abs());
        if keep || lost {
            let t = report.throughput;
            best = Some((report, e2e, t));
        }
        if lost {
            break;
        }
    }
    let (mut report, e2e, _) = best.context("no run completed")?;
    // Once, for the round the report keeps (each round's overwrote it: the file held the
    // last round's, an interrupted part included).
    write_hgrm(args, &e2e, interrupted)?;
    report.throughput = median(&runs);
    report.runs = runs;
    report.runs_p99_us = runs_p99;
    report.runs_latency = runs_latency;
    report.interrupted = interrupted;
    // None with one round: the caller's before and after are all there is.
    report.calibration = median(&calibrations);
    report.peak_rss_bytes = peak_rss_bytes();
    Ok(report)
}

/// One round: its report, and its end-to-end latency histogram.
fn one_run(
    args: &Settings,
    count: Option<u64>,
    round: usize,
    interrupt: &Interrupt,
) -> anyhow::Result<(Report, Histogram<u64>)> {
    let topic = format!("push-{APP}_{}", args.target.platform);
    let partitions = args.partitions.max(1);
    let kafka = match &args.brokers {
        Some(_) => None,
        // No loss watcher: the pipeline's observer sees every offset Kafka dropped unread.
        None => Some(KafkaMock::start_with(&MockOptions {
            watch_losses: false,
            ..MockOptions::new(1, std::slice::from_ref(&topic), partitions)
        })?),
    };
    let brokers = match (&args.brokers, &kafka) {
        (Some(b), _) => b.clone(),
        (None, Some(k)) => k.bootstrap().to_string(),
        (None, None) => bail!("no Kafka"),
    };
    let (fake, sender_config, profile_name) = target(&args.target)?;
    let origin = sender_config.webpush_origin().to_string();
    // The embedded mock's topic is new: its partitions start at 0.
    let start_offsets = match &kafka {
        Some(_) => HashMap::new(),
        None => end_offsets(&brokers, &topic),
    };

    let clock = Arc::new(Clock {
        start: Instant::now(),
        interval_ns: args.rate.map(|r| schedule_interval(r).as_nanos() as u64),
        first_due_ns: AtomicU64::new(0),
        produced: AtomicU64::new(0),
        produce_failed: AtomicU64::new(0),
        generated: AtomicU64::new(0),
        answered: AtomicU64::new(0),
        not_sent: AtomicU64::new(0),
        measured_answered: AtomicU64::new(0),
        window_answered: AtomicU64::new(0),
        done_generating: AtomicBool::new(false),
        measure_from_ns: AtomicU64::new(u64::MAX),
        first_measured_seq: AtomicU64::new(u64::MAX),
        // Closed loop: a shallow backlog, so end-to-end latency is the pipeline's, not the
        // queue's; open loop: only a safety bound.
        backlog: match args.rate {
            Some(_) => MAX_BACKLOG,
            None => (args.concurrency as u64 * 4).clamp(1000, MAX_BACKLOG),
        },
        ahead: match &kafka {
            Some(_) => (0..partitions).map(|_| AtomicU64::new(0)).collect(),
            None => Vec::new(),
        },
        // Half of what a partition keeps: a margin for what the log holds beyond values.
        ahead_limit: kafka.as_ref().map_or(0, |k| k.retention_bytes() / 2),
        gaps: Mutex::new(Gaps {
            start: start_offsets.clone(),
            ..Gaps::default()
        }),
        first_offsets: start_offsets,
        lost: AtomicU64::new(0),
        produce_error: Mutex::new(None),
        recorder: Mutex::new(Recorder::new()),
    });

    // One group per round, started at this round's first offsets: "earliest" alone would
    // also consume what earlier runs left in the topic (`--brokers`, `--repeat`).
    let group = format!("pusher-bench-{}-{round}", std::process::id());
    start_group_at(&brokers, &group, &topic, &clock.first_offsets)?;
    let mut spec = RunSpec::new(
        args.target.platform,
        brokers.clone(),
        group,
        vec![topic.clone()],
    );
    spec.offset_reset = "earliest".into();
    spec.max_in_flight = args.concurrency.max(1);
    spec.commit_interval = Duration::from_millis(200);
    spec.shutdown_timeout = Duration::from_secs(10);
    if kafka.is_some() {
        spec.consumer_extra = KafkaMock::consumer_tuning(batching(args).0);
    }

    let rt = crate::runtime::build(args.threads, "pusher-bench")?;
    let stop = CancellationToken::new();
    let bar = Progress::for_run(
        &format!("run {}/{}", round + 1, args.repeat),
        count,
        args.duration,
        args.warmup,
        args.quiet,
    );
    // Set when the interrupt is seen: the messages produced may be answered until then.
    let mut drain_until: Option<Instant> = None;
    // Set when messages are lost: those in flight may be answered until then.
    let mut lost_until: Option<Instant> = None;
    let result: anyhow::Result<(crate::pipeline::run::RunSummary, Duration)> = rt.block_on(async {
        let drain_until = &mut drain_until;
        let lost_until = &mut lost_until;
        let sender = sender_config.build()?;
        // The producer stops with the run: at a signal, or at the endpoint's first fault.
        let (interrupt, fault) = interrupt.or_endpoint_fault(sender.gates());
        let apps = HashMap::from([(APP.to_string(), sender)]);
        let outputs = Outputs {
            observer: Some(Arc::new(Measure(clock.clone()))),
            ..Outputs::default()
        };
        let pipeline = tokio::spawn(run(spec, apps, outputs, stop.clone()));

        let producer = {
            let clock = clock.clone();
            let args = args.clone();
            let brokers = brokers.clone();
            let topic = topic.clone();
            // The embedded mock: we know its partitions, so fill them in runs (see `PARTITION_RUN`).
            let runs = kafka.is_some().then_some(partitions);
            let interrupt = interrupt.clone();
            std::thread::Builder::new()
                .name("bench-producer".into())
                .spawn(move || {
                    let to = Destination {
                        brokers: &brokers,
                        topic: &topic,
                        runs,
                        webpush_origin: &origin,
                    };
                    produce(&args, count, &to, &clock, &interrupt)
                })?
        };

        // Wait for the warm-up, then for every generated message to be answered (after an
        // interrupt, for at most the drain time).
        let mut measuring = false;
        loop {
            tokio::time::sleep(Duration::from_millis(20)).await;
            if !measuring && clock.measure_from_ns.load(Ordering::Relaxed) != u64::MAX {
                measuring = true;
                tracing::info!("Warm-up over: measuring.");
                bar.measuring();
            }
            bar.set_position(clock.measured_answered.load(Ordering::Relaxed));
            if fault.cause().is_some() {
                break;
            }
            if interrupt.is_set() && drain_until.is_none() {
                *drain_until = Some(Instant::now() + DRAIN);
            }
            // A lost message is never answered: the producer stops at the first (a loss
            // fails the run), and the run ends once the others are answered.
            let unanswerable = clock.unanswerable();
            if unanswerable > 0 && lost_until.is_none() {
                *lost_until = Some(Instant::now() + LOSS_DRAIN);
            }
            let answered = clock.answered.load(Ordering::Relaxed);
            let generated = clock.generated.load(Ordering::Relaxed);
            if clock.done_generating.load(Ordering::Relaxed) && answered + unanswerable >= generated
            {
                break;
            }
            let now = Instant::now();
            if pipeline.is_finished()
                || drain_until.is_some_and(|d| now >= d)
                || lost_until.is_some_and(|d| now >= d)
            {
                break;
            }
        }
        let elapsed = Duration::from_nanos(
            clock.ns().saturating_sub(
                clock
                    .measure_from_ns
                    .load(Ordering::Relaxed)
                    .min(clock.ns()),
            ),
        );
        // Let the last commits go out, then stop the pipeline gracefully.
        tokio::time::sleep(Duration::from_millis(400)).await;
        stop.cancel();
        let summary = pipeline.await.context("pipeline task")??;
        producer
            .join()
            .map_err(|_| anyhow::anyhow!("producer thread panicked"))??;
        fault.check()?;
        Ok((summary, elapsed))
    });
    drop(bar);
    drop(rt);
    let server_answered = fake.as_ref().map(|f| f.stats.snapshot().pushes_answered());
    if let Some(fake) = fake {
        fake.stop();
    }
    let kafka_embedded = kafka.is_some();
    drop(kafka);
    let (summary, elapsed) = result?;

    let recorder = clock.recorder.lock().clone();
    let mut report = base_report(args, "end-to-end", &profile_name);
    report.duration_secs = elapsed.as_secs_f64();
    let window_answered = clock.window_answered.load(Ordering::Relaxed);
    report.throughput = window_answered as f64 / elapsed.as_secs_f64().max(1e-9);
    super::measurements(&mut report, &recorder);
    let generated = clock.generated.load(Ordering::Relaxed);
    let answered = clock.answered.load(Ordering::Relaxed);
    let lost = clock.unanswerable();
    report.interrupted = drain_until.is_some();
    report.conservation = Conservation {
        generated,
        produced: Some(clock.produced.load(Ordering::Relaxed)),
        consumed: Some(summary.consumed),
        server_answered,
        not_sent: clock.not_sent.load(Ordering::Relaxed),
        answered,
        committed: Some(committed_since(&summary, &clock.first_offsets)),
        in_flight: if report.interrupted || lost > 0 {
            generated.saturating_sub(answered + lost)
        } else {
            0
        },
        lost,
        lost_cause: clock.lost_cause(kafka_embedded),
        ok: false,
    }
    .check();
    Ok((report, recorder.e2e))
}

/// The producer thread: generates and produces, closed loop (at most `MAX_BACKLOG` ahead of
/// the answers) or open loop (`--rate`, on a fixed schedule; the backlog bound still holds).
/// Where the bench's producer writes, and what its messages point at.
struct Destination<'a> {
    brokers: &'a str,
    topic: &'a str,
    /// The embedded mock's partitions, filled in runs (see `PARTITION_RUN`).
    runs: Option<i32>,
    webpush_origin: &'a str,
}

fn produce(
    args: &Settings,
    count: Option<u64>,
    to: &Destination<'_>,
    clock: &Arc<Clock>,
    interrupt: &Interrupt,
) -> anyhow::Result<()> {
    let result = produce_inner(args, count, to, clock, interrupt);
    clock.done_generating.store(true, Ordering::Relaxed);
    result
}

/// The mock's fetch wait and the producer's linger, in ms. A closed loop measures capacity:
/// wider windows batch more (5, 2). An open loop measures latency at a given rate: narrower
/// ones (2, 1) halve the end-to-end p50 at 10k-25k msg/s (p99 10.3 -> 5.3 ms at 10k) and cost
/// about a tenth of the closed-loop maximum. Shorter still (1, 0) made batches so small that
/// the mock fell behind.
fn batching(args: &Settings) -> (u32, u32) {
    if args.rate.is_some() {
        (2, 1)
    } else {
        (5, 2)
    }
}

/// The open loop's gap between two messages at `rate` per second.
fn schedule_interval(rate: f64) -> Duration {
    Duration::from_secs_f64(1.0 / rate)
}

/// Consecutive messages produced to one partition of the embedded mock before moving to the
/// next. librdkafka's mock cluster finds a fetch offset by walking the partition's list of
/// message sets (rdkafka_mock.c, `rd_kafka_mock_msgset_find`: "FIXME: Maintain an index"), and
/// keeps up to 5 MiB per partition: spread by key, each linger window makes one tiny set per
/// partition, and every fetch walks thousands of them (a 200k-message run went at half the
/// rate of a 50k one). Runs make the sets large, as librdkafka's sticky partitioner does for
/// keyless messages. A real broker (`--brokers`) keeps the key partitioning.
const PARTITION_RUN: u64 = 256;

fn produce_inner(
    args: &Settings,
    count: Option<u64>,
    to: &Destination<'_>,
    clock: &Arc<Clock>,
    interrupt: &Interrupt,
) -> anyhow::Result<()> {
    let (brokers, topic, runs) = (to.brokers, to.topic, to.runs);
    let producer: ThreadedProducer<Deliveries> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("acks", "all")
        .set("linger.ms", batching(args).1.to_string())
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "500000")
        .create_with_context(Deliveries(clock.clone()))
        .context("creating the bench producer")?;
    let mut config = GenConfig::new(args.target.platform);
    // The generator stops at `count`; a duration-bound run generates until told to stop.
    config.count = u64::MAX;
    config.seed = args.seed;
    config.invalid_ratio = args.invalid_ratio;
    config.app = APP.into();
    config.webpush_origin = to.webpush_origin.to_string();
    config.payload_size = Some(args.payload_size.parse::<Mix<usize>>()?);
    let mut generator = Generator::new(config)?;
    // The warm-up and the schedule start with the first message.
    let first_due = Instant::now();
    let warm_until = first_due + args.warmup;
    clock.first_due_ns.store(
        first_due.duration_since(clock.start).as_nanos() as u64,
        Ordering::Relaxed,
    );
    let interval = args.rate.map(schedule_interval);
    let mut next_due = first_due;
    let mut buf = Vec::with_capacity(4096);
    let mut key = String::new();
    let mut measured = 0u64;
    let mut seq: u64 = 0;
    'producing: loop {
        if interrupt.is_set() || clock.unanswerable() > 0 {
            break;
        }
        // When this message is due. Open loop: its place in the schedule, however late the
        // producer runs (the window, warm-up and `--duration`, is the schedule's, as the
        // pacer's: stopping by the clock dropped the messages due but not yet produced, the
        // latest ones); closed loop: now.
        let due = match interval {
            Some(_) => next_due,
            None => Instant::now(),
        };
        let measuring = due >= warm_until;
        if measuring && clock.first_measured_seq.load(Ordering::Relaxed) == u64::MAX {
            clock.measure_from_ns.store(
                due.duration_since(clock.start).as_nanos() as u64,
                Ordering::Relaxed,
            );
            clock.first_measured_seq.store(seq, Ordering::Relaxed);
        }
        if measuring {
            if count.is_some_and(|c| measured >= c) {
                break;
            }
            if args.duration.is_some_and(|d| due >= warm_until + d) {
                break;
            }
        }
        // Backpressure: never run more than MAX_BACKLOG ahead of the pipeline.
        while seq.saturating_sub(clock.answered.load(Ordering::Relaxed)) >= clock.backlog {
            if interrupt.is_set() || clock.unanswerable() > 0 {
                break 'producing;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        if let Some(iv) = interval {
            let wait = next_due.saturating_duration_since(Instant::now());
            if !wait.is_zero() {
                std::thread::sleep(wait);
            }
            next_due += iv;
        }
        buf.clear();
        if generator.write_next(&mut buf).is_none() {
            break;
        }
        let partition = runs.map(|n| ((seq / PARTITION_RUN) % n as u64) as i32);
        let size = buf.len() as u64 + RECORD_OVERHEAD;
        if let Some(ahead) = partition.and_then(|p| clock.ahead.get(p as usize)) {
            // The mock's retention must never reach what the pipeline has not read: wait
            // for answers (one message alone may always go).
            loop {
                let a = ahead.load(Ordering::Relaxed);
                if a == 0 || a + size <= clock.ahead_limit {
                    break;
                }
                if interrupt.is_set() || clock.unanswerable() > 0 {
                    break 'producing;
                }
                std::thread::sleep(Duration::from_micros(200));
            }
            ahead.fetch_add(size, Ordering::Relaxed);
        }
        Tag {
            seq,
            sent_ns: clock.ns(),
            size,
        }
        .write(&mut key);
        let mut record = BaseRecord::to(topic)
            .key(key.as_str())
            .payload(buf.as_slice());
        if let Some(p) = partition {
            record = record.partition(p);
        }
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((e, r))
                    if e.rdkafka_error_code()
                        == Some(rdkafka::types::RDKafkaErrorCode::QueueFull) =>
                {
                    record = r;
                    std::thread::sleep(Duration::from_micros(500));
                }
                Err((e, _)) => bail!("producing to {topic}: {e}"),
            }
        }
        seq += 1;
        clock.generated.fetch_add(1, Ordering::Relaxed);
        measured += u64::from(measuring);
    }
    // Failed deliveries are counted (`produce_failed`) and fail the run from its report.
    producer
        .flush(Duration::from_secs(30))
        .context("flushing the bench producer")?;
    Ok(())
}

/// Offsets committed by the run beyond `start` (its first offset per partition, 0 where
/// none is listed): the messages it committed.
fn committed_since(summary: &crate::pipeline::run::RunSummary, start: &HashMap<i32, i64>) -> u64 {
    summary
        .committed
        .iter()
        .map(|((_, p), &o)| (o - start.get(p).copied().unwrap_or(0)).max(0) as u64)
        .sum()
}

/// Commits `offsets` (per partition of `topic`) for the new `group`, so that its consumer
/// starts there; nothing to do when empty (a new topic: "earliest" is its start).
pub(super) fn start_group_at(
    brokers: &str,
    group: &str,
    topic: &str,
    offsets: &HashMap<i32, i64>,
) -> anyhow::Result<()> {
    use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
    use rdkafka::{Offset, TopicPartitionList};
    if offsets.is_empty() {
        return Ok(());
    }
    let mut list = TopicPartitionList::new();
    for (&p, &o) in offsets {
        list.add_partition_offset(topic, p, Offset::Offset(o))?;
    }
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .context("creating a consumer to place the bench's group")?;
    consumer
        .commit(&list, CommitMode::Sync)
        .with_context(|| format!("starting group {group} at the end of {topic}"))
}

/// The next offset of each partition of `topic` (`--brokers`): where this run's messages
/// start. Empty when the topic does not exist yet (it will start at 0) or cannot be read.
pub(super) fn end_offsets(brokers: &str, topic: &str) -> HashMap<i32, i64> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let timeout = Duration::from_secs(5);
    let consumer: BaseConsumer = match ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("allow.auto.create.topics", "false")
        .create()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(error = %e, "No consumer to read the topic's end offsets.");
            return HashMap::new();
        }
    };
    let partitions: Vec<i32> = match consumer.fetch_metadata(Some(topic), timeout) {
        Ok(m) => m
            .topics()
            .iter()
            .filter(|t| t.name() == topic && t.error().is_none())
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect(),
        Err(e) => {
            tracing::debug!(error = %e, "Cannot read the topic's metadata.");
            return HashMap::new();
        }
    };
    partitions
        .into_iter()
        .filter_map(|p| {
            let (_, high) = consumer.fetch_watermarks(topic, p, timeout).ok()?;
            Some((p, high))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tag_reads_back_from_its_key() {
        let tag = Tag {
            seq: 131_072,
            sent_ns: 9_876_543_210,
            size: 364,
        };
        let mut key = String::from("left over");
        tag.write(&mut key);
        assert_eq!(key, "131072:9876543210:364");
        assert_eq!(Tag::parse(key.as_bytes()), Some(tag));
        for other in ["7", "1:2", "1:2:3:4", "1:x:3", ""] {
            assert_eq!(Tag::parse(other.as_bytes()), None, "{other}");
        }
    }
}
