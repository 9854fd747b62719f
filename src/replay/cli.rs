//! `pusher replay FILE` (a capture, at its recorded pace, a multiple of it, or a fixed rate,
//! into Kafka or straight to a sender target) and `pusher replay --from-kafka TOPIC` (a topic's
//! time range into a capture).

use super::capture::{self, Entry};
use super::kafka;
use super::pace::{parse_rate, parse_speed, replay, scheduled, Limit, Pace};
use crate::bench::driver::Driven;
use crate::bench::interrupt::Interrupt;
use crate::bench::report::{
    self, peak_rss_bytes, Conservation, Latencies, Percentiles, ReplayInfo, Report, Series,
};
use crate::bench::sender_only::{target, SenderConfig};
use crate::cli::GlobalArgs;
use crate::clock::Clock as _;
use crate::pipeline::run::app_from_topic;
use crate::progress::Progress;
use crate::push::message::{is_expired, parse_apns, parse_gcm};
use crate::push::{Outcome, Platform};
use crate::sender::apns::ApnsSender;
use crate::sender::fcm::FcmSender;
use anyhow::bail;
use clap::{Args, Parser};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// The capture to replay (JSON lines, see README "pusher replay").
    #[arg(required_unless_present = "from_kafka", conflicts_with = "from_kafka")]
    pub file: Option<PathBuf>,

    /// Instead of replaying: read this topic's messages between --since and --until from
    /// --brokers and write them as a capture (to --out, or stdout).
    #[arg(long, value_name = "TOPIC", requires_all = ["brokers", "since"])]
    pub from_kafka: Option<String>,
    /// Start of the range: RFC 3339 (2026-11-29T19:00:00Z), Unix ms, or a duration ago (15m).
    #[arg(long, requires = "from_kafka")]
    pub since: Option<String>,
    /// End of the range (inclusive); default: the end of the topic.
    #[arg(long, requires = "from_kafka")]
    pub until: Option<String>,
    /// Where --from-kafka writes the capture (default stdout).
    #[arg(short = 'o', long, requires = "from_kafka")]
    pub out: Option<PathBuf>,

    /// The recorded pace times this: 1x, 10x, 0.5x.
    #[arg(long, default_value = "1x", value_parser = speed_arg, conflicts_with = "rate")]
    pub speed: f64,
    /// A fixed rate instead of the recorded pace: 5000/s.
    #[arg(long, value_parser = rate_arg)]
    pub rate: Option<f64>,
    /// Start the capture again when it ends (needs --count or --duration).
    #[arg(long = "loop")]
    pub looping: bool,
    /// Stop after this many messages (suffixes: 10k, 1m).
    #[arg(long, value_parser = count_arg)]
    pub count: Option<u64>,
    /// Stop scheduling after this long (e.g. 30s, 5m).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,

    /// Replay into Kafka at these brokers (each message to its recorded topic, or --topic).
    #[arg(long)]
    pub brokers: Option<String>,
    /// With --brokers: produce every message to this topic instead of its recorded one.
    #[arg(long, requires = "brokers")]
    pub topic: Option<String>,
    /// With --brokers: how long to wait for the brokers' answers before giving up.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub kafka_timeout: Duration,
    /// Send straight to the embedded fake APNs or FCM server (by the capture's topics).
    #[arg(long, conflicts_with_all = ["brokers", "endpoint"])]
    pub mock: bool,
    /// Send straight to this APNs endpoint (a fake elsewhere, or a sandbox).
    #[arg(long, conflicts_with = "brokers")]
    pub endpoint: Option<String>,
    /// CA file (PEM) to trust for --endpoint.
    #[arg(long, requires = "endpoint")]
    pub ca: Option<PathBuf>,
    /// Skip TLS verification of --endpoint (self-signed fakes only).
    #[arg(long, requires = "endpoint")]
    pub insecure: bool,
    /// APNs token auth for --endpoint: .p8 key file, key id, team id.
    #[arg(long, requires_all = ["key_id", "team_id", "endpoint"])]
    pub key_file: Option<PathBuf>,
    #[arg(long)]
    pub key_id: Option<String>,
    #[arg(long)]
    pub team_id: Option<String>,
    /// FCM for --endpoint (GCM captures): a service-account JSON file (HTTP v1).
    #[arg(long, requires = "endpoint", conflicts_with = "api_key")]
    pub service_account: Option<PathBuf>,
    /// FCM for --endpoint (GCM captures): a legacy server key.
    #[arg(
        long,
        requires = "endpoint",
        env = "PUSHER_REPLAY_API_KEY",
        hide_env_values = true
    )]
    pub api_key: Option<String>,
    /// `apns-topic` for the pushes.
    #[arg(long, default_value = "com.example.app")]
    pub apns_topic: String,
    /// --mock: the fake server's behaviour (mock-services/*.yaml).
    #[arg(long, default_value = "happy")]
    pub profile: String,
    /// --mock: tls or h2c.
    #[arg(long, default_value = "tls")]
    pub transport: String,
    /// HTTP/2 connections in the sender's pool.
    #[arg(long, default_value_t = 2)]
    pub connections: usize,

    /// Write the report as JSON (schema pusher-bench/1 with a `replay` section).
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write the report as one self-contained HTML page with SVG charts.
    #[arg(long)]
    pub html: Option<PathBuf>,
    /// Compare with this baseline report and fail on a regression.
    #[arg(long)]
    pub baseline: Option<PathBuf>,
    /// Allowed regression in percent (throughput drop or p99 rise, calibration-normalised).
    #[arg(long, default_value_t = 10.0, requires = "baseline")]
    pub max_regression: f64,
    /// No progress bar.
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

fn speed_arg(s: &str) -> Result<f64, String> {
    parse_speed(s).map_err(|e| e.to_string())
}
fn rate_arg(s: &str) -> Result<f64, String> {
    parse_rate(s).map_err(|e| e.to_string())
}
fn count_arg(s: &str) -> Result<u64, String> {
    match crate::gen::parse_count(s) {
        Ok(0) => Err("count must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

pub fn run(args: ReplayArgs, _g: &GlobalArgs) -> anyhow::Result<ExitCode> {
    if let Some(topic) = &args.from_kafka {
        return from_kafka(&args, topic);
    }
    let Some(file) = &args.file else {
        bail!("give a capture file to replay, or --from-kafka TOPIC to make one");
    };
    if args.brokers.is_none() && !args.mock && args.endpoint.is_none() {
        bail!("say where to replay: --brokers B (into Kafka), --mock (embedded fake APNs) or --endpoint URL");
    }
    if args.looping && args.count.is_none() && args.duration.is_none() {
        bail!("--loop needs --count or --duration (else it never ends)");
    }
    // Checked before the replay, as `pusher bench` does.
    for path in [&args.json, &args.html].into_iter().flatten() {
        crate::report::check_writable(path)?;
    }
    let baseline = match &args.baseline {
        Some(path) => Some((crate::bench::gate::load_baseline(path)?, path.as_path())),
        None => None,
    };
    let entries = Arc::new(capture::read(file)?);
    let pace = match args.rate {
        Some(r) => Pace::Rate(r),
        None => Pace::Speed(args.speed),
    };
    let interrupt = Interrupt::install()?;

    let before = crate::bench::calibrate::calibrate(5, Duration::from_millis(60));
    let (driven, lag_per_sec, conservation, target, transport) = match &args.brokers {
        Some(brokers) => to_kafka(&args, brokers, &entries, pace, &interrupt)?,
        None => to_sender(&args, &entries, pace, &interrupt)?,
    };
    let after = crate::bench::calibrate::calibrate(5, Duration::from_millis(60));

    let mut report = make_report(
        &args,
        file,
        &entries,
        pace,
        &driven,
        lag_per_sec,
        target,
        transport,
    );
    report.conservation = conservation.check();
    report.calibration = crate::bench::gate::median(&[before, after]);
    crate::bench::cli::conclude(
        &report,
        args.json.as_deref(),
        args.html.as_deref(),
        baseline,
        args.max_regression,
    )
}

/// A finished replay: measurements, lag per second, counts, target and transport names.
type Replayed = (Driven, Vec<u64>, Conservation, String, String);

/// The schedule: the `i`-th message to send and when.
fn schedule<'a>(
    entries: &'a [Entry],
    times: &'a [Duration],
    pace: Pace,
    looping: bool,
) -> impl FnMut(u64) -> Option<(Duration, &'a Entry)> + 'a {
    move |i| {
        scheduled(times, pace, looping, i)
            .map(|at| (at, &entries[(i % entries.len() as u64) as usize]))
    }
}

fn to_kafka(
    args: &ReplayArgs,
    brokers: &str,
    entries: &[Entry],
    pace: Pace,
    interrupt: &Interrupt,
) -> anyhow::Result<Replayed> {
    let producer = kafka::producer(brokers, args.kafka_timeout)?;
    let times: Vec<Duration> = entries.iter().map(|e| e.at).collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let bar = progress(args, entries.len() as u64);
    let (driven, lag) = rt.block_on(replay(
        schedule(entries, &times, pace, args.looping),
        limit(args),
        |e| {
            let topic = args.topic.as_deref().unwrap_or(&e.topic);
            kafka::produce(&producer, topic, e.key.as_deref(), &e.value)
        },
        interrupt.token(),
        &bar,
    ));
    drop(bar);
    let delivered = driven
        .recorder
        .outcomes
        .get("delivered")
        .copied()
        .unwrap_or(0);
    let conservation = Conservation {
        generated: driven.sent,
        produced: Some(delivered),
        answered: driven.answered,
        in_flight: driven.in_flight,
        ..Default::default()
    };
    let target = format!(
        "kafka {} at {brokers}",
        args.topic.as_deref().unwrap_or("(recorded topics)")
    );
    Ok((driven, lag, conservation, target, "kafka".into()))
}

/// Sends straight to APNs (the embedded fake, or --endpoint), with the bench's sender set-up.
fn to_sender(
    args: &ReplayArgs,
    entries: &[Entry],
    pace: Pace,
    interrupt: &Interrupt,
) -> anyhow::Result<Replayed> {
    // One capture, one platform: the sender is APNs or FCM, chosen by the topics.
    let mut platform = None;
    for e in entries {
        match app_from_topic(&e.topic) {
            Some((_, p)) if platform.is_none_or(|q| q == p) => platform = Some(p),
            Some(_) => bail!(
                "topic {}: the capture mixes APNs and GCM topics; replay to a sender takes one platform (split it, or replay into Kafka with --brokers)",
                e.topic
            ),
            None => bail!(
                "topic {} names no platform (push-<app>_apns or _gcm): cannot tell how to send it",
                e.topic
            ),
        }
    }
    let platform = platform.unwrap_or(Platform::Apns);
    let bench = bench_args(args, platform)?;
    let (fake, config, _profile) = target(&bench)?;
    let server_before = fake.as_ref().map(|f| f.stats.snapshot().responses);
    let times: Vec<Duration> = entries.iter().map(|e| e.at).collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let bar = progress(args, entries.len() as u64);
    let result = rt.block_on(async {
        let sender = match config {
            SenderConfig::Apns(config) => AnySender::Apns(ApnsSender::new(*config)?),
            SenderConfig::Fcm(config) => AnySender::Fcm(FcmSender::new(*config)?),
        };
        let send = |e: &Entry| {
            let sender = sender.clone();
            // Parsed here, as the pipeline would, so the future owns no borrow of the capture.
            let parsed = match &sender {
                AnySender::Apns(_) => Parsed::Apns(parse_apns(&e.value)),
                AnySender::Fcm(_) => Parsed::Gcm(parse_gcm(&e.value).map(Box::new)),
            };
            async move {
                let now = crate::clock::SystemClock.now();
                match (sender, parsed) {
                    (_, Parsed::Apns(Err(err)) | Parsed::Gcm(Err(err))) => Outcome::Malformed {
                        reason: err.to_string(),
                    },
                    (AnySender::Apns(s), Parsed::Apns(Ok(m))) => {
                        if is_expired(m.push_expiry, now) {
                            Outcome::Expired
                        } else {
                            s.send(&m.notification).await
                        }
                    }
                    (AnySender::Fcm(s), Parsed::Gcm(Ok(m))) => {
                        if is_expired(m.push_expiry, now) {
                            Outcome::Expired
                        } else {
                            s.send(&m).await
                        }
                    }
                    // Parsed for the sender it was made with: these cannot meet.
                    (_, _) => Outcome::Malformed {
                        reason: "platform mismatch".into(),
                    },
                }
            }
        };
        anyhow::Ok(
            replay(
                schedule(entries, &times, pace, args.looping),
                limit(args),
                send,
                interrupt.token(),
                &bar,
            )
            .await,
        )
    });
    drop(bar);
    drop(rt);
    let server_answered = fake
        .as_ref()
        .map(|f| f.stats.snapshot().responses - server_before.unwrap_or(0));
    let target = match (&args.endpoint, &fake) {
        (Some(url), _) => url.clone(),
        _ => format!(
            "fake {} (embedded)",
            if platform == Platform::Apns {
                "apns"
            } else {
                "fcm"
            }
        ),
    };
    if let Some(fake) = fake {
        fake.stop();
    }
    let (driven, lag) = result?;
    let conservation = Conservation {
        generated: driven.sent,
        server_answered,
        answered: driven.answered,
        in_flight: driven.in_flight,
        ..Default::default()
    };
    Ok((driven, lag, conservation, target, args.transport.clone()))
}

/// The bench's arguments for the same target, so the bench's own set-up (fake thread,
/// provider key, TLS) is reused as it is.
/// The sender for the capture's platform.
#[derive(Clone)]
enum AnySender {
    Apns(ApnsSender),
    Fcm(FcmSender),
}

/// A captured message parsed for its platform.
enum Parsed {
    Apns(Result<crate::push::message::ApnsMessage, crate::push::message::MessageError>),
    Gcm(Result<Box<crate::push::gcm::GcmMessage>, crate::push::message::MessageError>),
}

fn bench_args(
    args: &ReplayArgs,
    platform: Platform,
) -> anyhow::Result<crate::bench::cli::BenchArgs> {
    #[derive(Parser)]
    struct Wrap {
        #[command(flatten)]
        bench: crate::bench::cli::BenchArgs,
    }
    let mut argv: Vec<String> = vec![
        "bench".into(),
        "--platform".into(),
        platform.to_string(),
        "--profile".into(),
        args.profile.clone(),
        "--transport".into(),
        args.transport.clone(),
        "--connections".into(),
        args.connections.to_string(),
        "--topic".into(),
        args.apns_topic.clone(),
    ];
    match &args.endpoint {
        Some(url) => {
            argv.extend(["--endpoint".into(), url.clone()]);
            if let Some(ca) = &args.ca {
                argv.extend(["--ca".into(), ca.display().to_string()]);
            }
            if args.insecure {
                argv.push("--insecure".into());
            }
            if let Some(file) = &args.service_account {
                argv.extend(["--service-account".into(), file.display().to_string()]);
            }
            if let Some(key) = &args.api_key {
                argv.extend(["--api-key".into(), key.clone()]);
            }
            if let (Some(k), Some(kid), Some(team)) = (&args.key_file, &args.key_id, &args.team_id)
            {
                argv.extend([
                    "--key-file".into(),
                    k.display().to_string(),
                    "--key-id".into(),
                    kid.clone(),
                    "--team-id".into(),
                    team.clone(),
                ]);
            }
        }
        None => argv.push("--mock".into()),
    }
    Ok(Wrap::try_parse_from(argv)
        .map_err(|e| anyhow::anyhow!("{}", e.to_string().trim()))?
        .bench)
}

fn limit(args: &ReplayArgs) -> Limit {
    Limit {
        count: args.count,
        duration: args.duration,
    }
}

#[allow(clippy::too_many_arguments)]
fn make_report(
    args: &ReplayArgs,
    file: &std::path::Path,
    entries: &[Entry],
    pace: Pace,
    driven: &Driven,
    lag_per_sec_us: Vec<u64>,
    target: String,
    transport: String,
) -> Report {
    let r = &driven.recorder;
    let elapsed = driven.elapsed.as_secs_f64().max(1e-9);
    let capture_secs = entries.last().map(|e| e.at.as_secs_f64()).unwrap_or(0.0);
    Report {
        schema: report::SCHEMA.to_string(),
        pusher_version: env!("CARGO_PKG_VERSION").to_string(),
        started_at: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs().saturating_sub(driven.elapsed.as_secs()))
            .unwrap_or(0),
        params: report::Params {
            mode: "replay".into(),
            platform: platform_of(entries),
            profile: if args.mock {
                args.profile.clone()
            } else {
                "external".into()
            },
            transport,
            count: args.count,
            duration_secs: args.duration.map(|d| d.as_secs_f64()),
            warmup_secs: 0.0,
            concurrency: None,
            rate: args.rate,
            repeat: 1,
            // The pacer and the senders run on one thread.
            threads: 1,
        },
        duration_secs: elapsed,
        throughput: r.completed() as f64 / elapsed,
        calibration: 0.0,
        latency: Latencies::from_recorder(r),
        outcomes: r.outcomes.clone(),
        reasons: r.reasons.clone(),
        conservation: Conservation::default(),
        timeline: r.timeline.clone(),
        runs: vec![r.completed() as f64 / elapsed],
        runs_p99_us: Vec::new(),
        runs_latency: vec![Latencies::from_recorder(r)],
        interrupted: driven.interrupted,
        peak_rss_bytes: peak_rss_bytes(),
        series: Some(Series::of(r)),
        replay: Some(ReplayInfo {
            source: file.display().to_string(),
            target,
            pace: match pace {
                Pace::Speed(s) => format!("{s}x"),
                Pace::Rate(r) => format!("{r}/s"),
            },
            looped: args.looping,
            capture_messages: entries.len() as u64,
            capture_secs,
            schedule_lag: driven.schedule_lag.as_ref().and_then(Percentiles::of),
            lag_per_sec_us,
        }),
    }
}

fn platform_of(entries: &[Entry]) -> String {
    let mut platforms: Vec<String> = entries
        .iter()
        .filter_map(|e| app_from_topic(&e.topic).map(|(_, p)| p.to_string()))
        .collect();
    platforms.sort();
    platforms.dedup();
    match platforms.as_slice() {
        [one] => one.clone(),
        [] => "unknown".into(),
        _ => "mixed".into(),
    }
}

/// `--from-kafka`: a topic range into a capture.
fn from_kafka(args: &ReplayArgs, topic: &str) -> anyhow::Result<ExitCode> {
    let (Some(brokers), Some(since)) = (&args.brokers, &args.since) else {
        bail!("--from-kafka needs --brokers and --since");
    };
    let since = kafka::parse_time(since)?;
    let until = args.until.as_deref().map(kafka::parse_time).transpose()?;
    let n = match &args.out {
        Some(path) => {
            kafka::read_range_to_file(brokers, topic, since, until, args.kafka_timeout, path)?
        }
        None => {
            let mut out = std::io::stdout().lock();
            let n = kafka::read_range(brokers, topic, since, until, args.kafka_timeout, &mut out)?;
            out.flush()?;
            n
        }
    };
    if !args.quiet {
        eprintln!("pusher replay: {n} messages from {topic} written as a capture");
    }
    Ok(ExitCode::SUCCESS)
}

fn progress(args: &ReplayArgs, per_round: u64) -> Progress {
    let len = args.count.or((!args.looping).then_some(per_round));
    Progress::with_duration("replay", len, args.duration, args.quiet)
}
