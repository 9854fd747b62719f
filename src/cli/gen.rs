//! `pusher gen`: seeded push messages as JSON lines on stdout, in a file, into Kafka, or
//! shaped in time as a capture for `pusher replay`.

use super::flags::KafkaFlags;
use crate::gen::{kafka, GenConfig, GenError, Generator, Mix};
use crate::push::apns::PushType;
use crate::push::Platform;
use crate::units::{parse_count, parse_rate, parse_ratio};
use anyhow::{bail, Context};
use clap::Args;
use indicatif::ProgressBar;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Writes the seed system's Kafka messages as JSON lines: one message per line on stdout
/// (nothing else), or in a file, or produced straight into Kafka.
#[derive(Debug, Args)]
#[command(mut_arg("brokers", |a| a
    .alias("kafka")
    .help("Produce into Kafka at these bootstrap servers (host:port,...) instead of writing lines")))]
pub struct GenArgs {
    /// apns, gcm or webpush.
    #[arg(long, default_value = "apns")]
    pub platform: Platform,
    /// How many messages: a number with an optional k, m or g suffix (10k, 1m).
    #[arg(short = 'n', long, default_value = "1k", value_parser = parse_count)]
    pub count: u64,
    /// Seed for reproducible output (default: random, printed on stderr).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Share (0..1) of tokens the fake servers reject for good (Unregistered, BadToken,
    /// WrongTopic, in equal parts).
    #[arg(long, default_value = "0", value_parser = parse_ratio)]
    pub invalid_ratio: f64,
    /// Share (0..1) of tokens that fail once and then succeed (503 or 429 on the first try).
    #[arg(long, default_value = "0", value_parser = parse_ratio)]
    pub retry_ratio: f64,
    /// App (game) name: in the metadata and the default topic push-<app>_<platform>.
    #[arg(long, default_value = "game")]
    pub app: String,
    /// Payload size in bytes, or a mix like 200:0.5,1000:0.4,3500:0.1 (default: natural size).
    #[arg(long, value_parser = size_mix_arg)]
    pub payload_size: Option<Mix<usize>>,
    /// APNs push types, e.g. alert or alert:0.9,background:0.1 (default: no push_type field).
    #[arg(long, value_parser = push_type_mix_arg)]
    pub push_type: Option<Mix<PushType>>,
    /// GCM: mark messages "dry_run": true (FCM validates without delivering).
    #[arg(long)]
    pub dry_run: bool,
    /// Web push: the push service the subscriptions point at (their keys are ones
    /// `pusher mock webpush` can decrypt for).
    #[arg(long, default_value = crate::gen::DEFAULT_WEBPUSH_ORIGIN, value_name = "URL")]
    pub webpush_origin: String,
    /// Write to this file instead of stdout.
    #[arg(short = 'o', long, conflicts_with = "brokers")]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub kafka: KafkaFlags,
    /// Kafka topic (default: push-<app>_<platform>).
    #[arg(long, requires = "brokers")]
    pub topic: Option<String>,
    /// How long a message may wait for Kafka before its delivery counts as failed.
    #[arg(long, default_value = "30s", value_parser = crate::units::parse_duration)]
    pub delivery_timeout: Duration,
    /// Write a capture for `pusher replay` with this traffic shape instead of plain lines:
    /// constant, ramp, spike (burst) or day (a day compressed into --duration).
    #[arg(long, conflicts_with_all = ["brokers", "count"], requires_all = ["duration", "peak_rate"])]
    pub shape: Option<crate::replay::shape::Shape>,
    /// --shape: how long the shaped traffic lasts (e.g. 10m).
    #[arg(long, requires = "shape", value_parser = crate::units::parse_duration)]
    pub duration: Option<Duration>,
    /// --shape: the highest rate, messages per second (5000, 5000/s, 2k/s, 5k).
    #[arg(long, requires = "shape", value_parser = parse_rate)]
    pub peak_rate: Option<f64>,
    /// No progress bar and no summary on stderr (the seed is still printed when random).
    #[arg(short = 'q', long)]
    pub quiet: bool,
}

fn size_mix_arg(s: &str) -> Result<Mix<usize>, String> {
    s.parse().map_err(|e: GenError| e.to_string())
}
fn push_type_mix_arg(s: &str) -> Result<Mix<PushType>, String> {
    s.parse().map_err(|e: GenError| e.to_string())
}

pub fn run(args: GenArgs) -> anyhow::Result<ExitCode> {
    let seed = match args.seed {
        Some(seed) => seed,
        None => {
            let seed = rand::random();
            eprintln!("pusher gen: seed {seed} (pass --seed {seed} to repeat this output)");
            seed
        }
    };
    let shaped = match (args.shape, args.duration, args.peak_rate) {
        (Some(shape), Some(d), Some(peak)) => {
            Some(crate::replay::shape::ShapedTimes::new(shape, d, peak)?)
        }
        _ => None,
    };
    let config = GenConfig {
        platform: args.platform,
        // A shape decides the count: the generator just keeps going.
        count: if shaped.is_some() {
            u64::MAX
        } else {
            args.count
        },
        seed,
        invalid_ratio: args.invalid_ratio,
        retry_ratio: args.retry_ratio,
        app: args.app,
        payload_size: args.payload_size,
        push_type: args.push_type,
        dry_run: args.dry_run,
        webpush_origin: args.webpush_origin,
    };
    let mut generator = Generator::new(config)?;
    let count = generator.config().count;
    // A shape decides the count as it goes: no length to show.
    let progress =
        crate::progress::Progress::new("gen", shaped.is_none().then_some(count), args.quiet);
    let started = Instant::now();
    // Ctrl-C stops every sink at a message's end: a file or stdout keeps whole lines, Kafka
    // what it acknowledges (exit 130). Installed first, so that no sink meets a signal's
    // default action.
    let interrupt = crate::bench::interrupt::Interrupt::install_plain()?;
    let stopped = || interrupt.is_set();

    if let Some(brokers) = &args.kafka.brokers.brokers {
        let topic = args
            .topic
            .clone()
            .unwrap_or_else(|| generator.config().default_topic());
        let report = kafka::produce(
            &mut generator,
            brokers,
            &topic,
            args.delivery_timeout,
            args.kafka.kafka_timeout,
            &progress,
            &kafka::Stop {
                requested: &stopped,
                flush_for: crate::bench::interrupt::DRAIN,
            },
        )
        .with_context(|| format!("producing to Kafka topic {topic:?} at {brokers}"))?;
        progress.finish_and_clear();
        if report.interrupted {
            // Said even with --quiet: what reached the topic is what a reader will find.
            let unconfirmed = report.sent.saturating_sub(report.delivered + report.failed);
            eprintln!(
                "pusher gen: interrupted: {} delivered to {topic}, {} not delivered (still queued, dropped){}",
                report.delivered,
                report.failed,
                match unconfirmed {
                    0 => String::new(),
                    n => format!(", {n} without an answer from Kafka"),
                }
            );
            return Ok(ExitCode::from(crate::bench::interrupt::EXIT_CODE));
        }
        if !args.quiet {
            let secs = started.elapsed().as_secs_f64();
            eprintln!(
                "pusher gen: {} delivered, {} failed, to {topic} in {secs:.2}s ({:.0} msg/s)",
                report.delivered,
                report.failed,
                report.delivered as f64 / secs.max(1e-9)
            );
        }
        return Ok(ExitCode::SUCCESS);
    }

    // A file is written beside its place and moved there once complete: an interrupted or
    // failed run leaves what was there before, never a capture cut mid-line.
    let mut temp = None;
    let (sink, name): (Box<dyn Write>, String) = match &args.out {
        Some(path) => {
            let file = crate::report::temp_beside(path)
                .with_context(|| format!("creating a file beside {}", path.display()))?;
            let sink = file
                .reopen()
                .with_context(|| format!("creating a file beside {}", path.display()))?;
            temp = Some((file, path.clone()));
            (Box::new(sink), path.display().to_string())
        }
        None => (Box::new(std::io::stdout().lock()), "stdout".to_string()),
    };
    let put_in_place = |temp: Option<(tempfile::NamedTempFile, std::path::PathBuf)>| {
        if let Some((file, path)) = temp {
            file.persist(&path)
                .with_context(|| format!("moving the output into {}", path.display()))?;
        }
        anyhow::Ok(())
    };
    if let Some(times) = shaped {
        let topic = generator.config().default_topic();
        // A capture line is written field by field: one syscall each without a buffer.
        let mut sink = std::io::BufWriter::with_capacity(256 * 1024, sink);
        let times = times.take_while(|_| !stopped());
        let written = crate::replay::shape::write_capture(
            &mut generator,
            times,
            &topic,
            &mut sink,
            &progress,
        );
        // Flushed before the file is moved into place.
        let n = match written.and_then(|n| sink.flush().map(|()| n)) {
            Ok(n) => n,
            // The reader went away (`pusher gen --shape ... | head`): as below.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                // Its buffer would be flushed into the closed pipe again on drop.
                let _ = sink.into_parts();
                return Ok(ExitCode::SUCCESS);
            }
            Err(e) => return Err(e).with_context(|| format!("writing to {name}")),
        };
        drop(sink);
        // ShapedTimes::new refuses a shape holding under one message, so none placed means
        // interrupted before the first: never keep an empty capture.
        if n == 0 && !stopped() {
            bail!("the shape placed no message: give a longer --duration or a higher --peak-rate");
        }
        put_in_place(temp)?;
        progress.finish_and_clear();
        if !args.quiet {
            eprintln!("pusher gen: {n} messages shaped as a capture, to {name}");
        }
        return Ok(finished(stopped()));
    }
    let (bytes, count) = match write_lines(&mut generator, sink, &progress, &stopped) {
        Ok(written) => written,
        // The reader went away (`pusher gen | head`): stop quietly, as Unix tools do.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(ExitCode::SUCCESS),
        Err(e) => return Err(e).with_context(|| format!("writing to {name}")),
    };
    put_in_place(temp)?;
    progress.finish_and_clear();
    if !args.quiet {
        let secs = started.elapsed().as_secs_f64();
        eprintln!(
            "pusher gen: {count} messages, {bytes} bytes, to {name} in {secs:.2}s ({:.0} msg/s)",
            count as f64 / secs.max(1e-9)
        );
    }
    Ok(finished(stopped()))
}

/// Exit 130 when Ctrl-C cut the run short (what was written is whole and kept), else 0.
fn finished(interrupted: bool) -> ExitCode {
    if interrupted {
        eprintln!("pusher gen: interrupted; the messages written so far are kept");
        ExitCode::from(crate::bench::interrupt::EXIT_CODE)
    } else {
        ExitCode::SUCCESS
    }
}

/// Writes one message per line. Messages go into one large buffer written in big chunks
/// (cheaper than a `BufWriter` call per message). Returns the bytes and lines written.
fn write_lines(
    generator: &mut Generator,
    mut sink: Box<dyn Write>,
    progress: &ProgressBar,
    stopped: &dyn Fn() -> bool,
) -> std::io::Result<(u64, u64)> {
    const CHUNK: usize = 256 * 1024;
    let mut buf = Vec::with_capacity(CHUNK + 8192);
    let mut written = 0u64;
    let mut lines = 0u64;
    while !stopped() && generator.write_next(&mut buf).is_some() {
        buf.push(b'\n');
        lines += 1;
        if buf.len() >= CHUNK {
            sink.write_all(&buf)?;
            written += buf.len() as u64;
            buf.clear();
            progress.set_position(lines);
        }
    }
    sink.write_all(&buf)?;
    sink.flush()?;
    Ok((written + buf.len() as u64, lines))
}
