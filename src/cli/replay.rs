//! `pusher replay FILE` (a capture, at its recorded pace, a multiple of it, or a fixed rate,
//! into Kafka or straight to a sender target) and `pusher replay --from-kafka TOPIC` (a topic's
//! time range into a capture).

use super::flags::{
    ApnsCredentials, EndpointFlags, FakeFlags, FcmCredentials, KafkaFlags, LoadFlags, ReportFlags,
};
use crate::bench::driver::Driven;
use crate::bench::interrupt::Interrupt;
use crate::bench::sender_only::{target, SenderConfig};
use crate::clock::Clock as _;
use crate::progress::Progress;
use crate::push::message::{is_expired, parse_apns, parse_gcm};
use crate::push::topic::app_from_topic;
use crate::push::{Outcome, Platform};
use crate::replay::capture::{self, Entry};
use crate::replay::kafka;
use crate::replay::pace::{parse_speed, replay, scheduled, Limit, Pace};
use crate::report::data::{
    self as report, peak_rss_bytes, Conservation, Percentiles, ReplayInfo, Report,
};
use crate::sender::apns::ApnsSender;
use crate::sender::fcm::FcmSender;
use crate::sender::webpush::WebPushSender;
use anyhow::bail;
use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Args)]
#[command(
    mut_arg("brokers", |a| a
        .conflicts_with("endpoint")
        .help("Replay into Kafka at these bootstrap servers (each message to its recorded \
topic, or --topic); with --from-kafka, read from them")),
    mut_arg("endpoint", |a| a.help("Send straight to this endpoint (a fake elsewhere, or a sandbox)")),
    mut_arg("ca", |a| a.requires("endpoint")),
    mut_arg("insecure", |a| a.requires("endpoint")),
    mut_arg("key_file", |a| a.requires_all(["key_id", "team_id", "endpoint"])),
    mut_arg("certificate", |a| a.requires("endpoint")),
    mut_arg("service_account", |a| a.requires("endpoint")),
    mut_arg("api_key", |a| a
        .env("PUSHER_REPLAY_API_KEY")
        .hide_env_values(true)),
    mut_arg("count", |a| a.help("Stop after this many messages (10k, 1m)")),
    mut_arg("duration", |a| a.help("Stop scheduling after this long (e.g. 30s, 5m)")),
    mut_arg("rate", |a| a.help("A fixed rate instead of the recorded pace (5000/s, 2k/s, 5k)")),
    mut_arg("json", |a| a.help("Write the report as JSON (schema pusher-bench/1 with a `replay` section)")),
)]
pub struct ReplayArgs {
    /// The capture to replay (JSON lines, see README "pusher replay").
    #[arg(required_unless_present = "from_kafka", conflicts_with = "from_kafka")]
    pub file: Option<PathBuf>,

    /// Instead of replaying: read this topic's messages between --since and --until from
    /// --brokers and write them as a capture (to --out, or stdout).
    #[arg(
        long,
        value_name = "TOPIC",
        requires_all = ["brokers", "since"],
        // Flags of a replay, which an export would silently ignore.
        conflicts_with_all = [
            "json", "html", "baseline", "count", "duration", "rate", "speed", "looping", "mock",
            "topic",
        ],
    )]
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
    #[command(flatten)]
    pub load: LoadFlags,
    /// Start the capture again when it ends (needs --count or --duration).
    #[arg(long = "loop")]
    pub looping: bool,

    #[command(flatten)]
    pub kafka: KafkaFlags,
    /// With --brokers: produce every message to this topic instead of its recorded one.
    #[arg(long, requires = "brokers")]
    pub topic: Option<String>,
    /// Send straight to the embedded fake APNs, FCM or web push server (by the capture's
    /// topics).
    #[arg(long, conflicts_with_all = ["brokers", "endpoint"])]
    pub mock: bool,
    #[command(flatten)]
    pub endpoint: EndpointFlags,
    #[command(flatten)]
    pub apns: ApnsCredentials,
    #[command(flatten)]
    pub fcm: FcmCredentials,
    /// `apns-topic` for the pushes.
    #[arg(long, default_value = "com.example.app")]
    pub apns_topic: String,
    #[command(flatten)]
    pub fake: FakeFlags,
    #[command(flatten)]
    pub report: ReportFlags,
}

fn speed_arg(s: &str) -> Result<f64, String> {
    parse_speed(s).map_err(|e| e.to_string())
}

pub fn run(args: ReplayArgs) -> anyhow::Result<ExitCode> {
    if let Some(topic) = &args.from_kafka {
        return from_kafka(&args, topic);
    }
    let Some(file) = &args.file else {
        bail!("give a capture file to replay, or --from-kafka TOPIC to make one");
    };
    if args.kafka.brokers.brokers.is_none() && !args.mock && args.endpoint.endpoint.is_none() {
        bail!("say where to replay: --brokers B (into Kafka), --mock (the embedded fake of the capture's platform) or --endpoint URL");
    }
    if args.looping && args.load.count.is_none() && args.load.duration.is_none() {
        bail!("--loop needs --count or --duration (else it never ends)");
    }
    // Checked before the replay, as `pusher bench` does.
    let outputs: Vec<(&str, &std::path::Path)> =
        [("--json", &args.report.json), ("--html", &args.report.html)]
            .into_iter()
            .filter_map(|(flag, path)| Some((flag, path.as_deref()?)))
            .collect();
    crate::report::check_outputs(&outputs, args.report.baseline.as_deref())?;
    let baseline = match &args.report.baseline {
        Some(path) => Some((crate::report::gate::load_baseline(path)?, path.as_path())),
        None => None,
    };
    let entries = Arc::new(capture::read(file)?);
    let pace = match args.load.rate {
        Some(r) => Pace::Rate(r),
        None => Pace::Speed(args.speed),
    };
    // The sender's set-up (credentials for an --endpoint among it) is checked before the
    // replay starts, as `pusher bench` checks its own.
    let sender = match &args.kafka.brokers.brokers {
        Some(_) => None,
        None => {
            let platform = capture_platform(&entries)?;
            let target = super::bench::target(
                platform,
                &args.fake,
                &args.apns_topic,
                &args.endpoint,
                &args.apns,
                &args.fcm,
                &format!(
                    "a capture of {} messages (topics push-<app>_{platform})",
                    platform_name(platform)
                ),
            )?;
            Some((platform, target))
        }
    };
    let interrupt = Interrupt::install()?;

    let before = crate::bench::calibrate::calibrate(5, Duration::from_millis(60));
    let (driven, lag_per_sec, conservation, target, transport) =
        match (&args.kafka.brokers.brokers, sender) {
            (Some(brokers), _) => to_kafka(&args, brokers, &entries, pace, &interrupt)?,
            (None, Some((platform, target))) => {
                to_sender(&args, platform, &target, &entries, pace, &interrupt)?
            }
            (None, None) => bail!("nowhere to replay to"),
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
    report.calibration = crate::report::gate::calibration(&[before, after]);
    super::bench::conclude(&report, &args.report, baseline)
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
    // The targets: --topic, or each topic the capture holds.
    let mut topics: Vec<&str> = match &args.topic {
        Some(t) => vec![t.as_str()],
        None => entries.iter().map(|e| e.topic.as_str()).collect(),
    };
    topics.sort_unstable();
    topics.dedup();
    let producer = kafka::producer(brokers, args.kafka.kafka_timeout, &topics)?;
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

/// The one platform of a capture replayed to a sender (APNs, FCM or web push), by its topics.
fn capture_platform(entries: &[Entry]) -> anyhow::Result<Platform> {
    let mut platform = None;
    for e in entries {
        match app_from_topic(&e.topic) {
            Some((_, p)) if platform.is_none_or(|q| q == p) => platform = Some(p),
            Some(_) => bail!(
                "topic {}: the capture mixes platforms' topics; replay to a sender takes one platform (split it, or replay into Kafka with --brokers)",
                e.topic
            ),
            None => bail!(
                "topic {} names no platform (push-<app>_apns, _gcm or _webpush): cannot tell how to send it",
                e.topic
            ),
        }
    }
    Ok(platform.unwrap_or(Platform::Apns))
}

fn platform_name(platform: Platform) -> &'static str {
    match platform {
        Platform::Apns => "APNs",
        Platform::Gcm => "FCM",
        Platform::WebPush => "web push",
    }
}

/// Sends straight to APNs, FCM or a web push service (the embedded fake, or --endpoint), with
/// the bench's sender set-up.
fn to_sender(
    args: &ReplayArgs,
    platform: Platform,
    target_flags: &crate::bench::Target,
    entries: &[Entry],
    pace: Pace,
    interrupt: &Interrupt,
) -> anyhow::Result<Replayed> {
    // The bench's own set-up (fake thread, provider key, TLS), reused as it is.
    let (fake, config, _profile) = target(target_flags)?;
    let server_before = fake.as_ref().map(|f| f.stats.snapshot().pushes_answered());
    let times: Vec<Duration> = entries.iter().map(|e| e.at).collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let bar = progress(args, entries.len() as u64);
    let not_sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let result = rt.block_on(async {
        let sender = match config {
            SenderConfig::Apns(config) => AnySender::Apns(ApnsSender::new(*config)?),
            SenderConfig::Fcm(config) => AnySender::Fcm(FcmSender::new(*config)?),
            SenderConfig::WebPush(config, origin) => {
                AnySender::WebPush(WebPushSender::new(*config)?, origin.into())
            }
        };
        // An endpoint that cannot answer (a CA that does not sign it, refused credentials)
        // stops the replay with its cause, as it stops a bench: its messages did not fail.
        let gates = match &sender {
            AnySender::Apns(s) => vec![s.gate().clone()],
            AnySender::Fcm(s) => vec![s.gate().clone()],
            AnySender::WebPush(s, _) => s.gates().to_vec(),
        };
        let (run, fault) = interrupt.or_endpoint_fault(&gates);
        let send = |e: &Entry| {
            let sender = sender.clone();
            // Parsed here, as the pipeline would, so the future owns no borrow of the capture.
            let parsed = match &sender {
                AnySender::Apns(_) => Parsed::Apns(parse_apns(&e.value)),
                AnySender::Fcm(_) => Parsed::Gcm(parse_gcm(&e.value).map(Box::new)),
                AnySender::WebPush(_, origin) => Parsed::WebPush(
                    crate::push::message::parse_webpush(&e.value)
                        .map(|m| Box::new(at_origin(m, origin))),
                ),
            };
            let not_sent = not_sent.clone();
            async move {
                let now = crate::clock::SystemClock.now();
                let outcome = match (sender, parsed) {
                    (AnySender::WebPush(s, _), Parsed::WebPush(Ok(m))) => {
                        if is_expired(m.push_expiry, now) {
                            Outcome::Expired
                        } else {
                            s.send(&m).await.outcome
                        }
                    }
                    (
                        _,
                        Parsed::Apns(Err(err)) | Parsed::Gcm(Err(err)) | Parsed::WebPush(Err(err)),
                    ) => Outcome::Malformed {
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
                };
                // Replayed as captured, and never reaching the server.
                if outcome.never_sent() {
                    not_sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                outcome
            }
        };
        let replayed = replay(
            schedule(entries, &times, pace, args.looping),
            limit(args),
            send,
            run.token(),
            &bar,
        )
        .await;
        fault.check()?;
        anyhow::Ok(replayed)
    });
    drop(bar);
    drop(rt);
    let server_answered = fake
        .as_ref()
        .map(|f| f.stats.snapshot().pushes_answered() - server_before.unwrap_or(0));
    let target = match (&args.endpoint.endpoint, &fake) {
        (Some(url), _) => url.clone(),
        _ => format!(
            "fake {} (embedded)",
            match platform {
                Platform::Apns => "apns",
                Platform::Gcm => "fcm",
                Platform::WebPush => "webpush",
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
        not_sent: not_sent.load(std::sync::atomic::Ordering::Relaxed),
        answered: driven.answered,
        in_flight: driven.in_flight,
        ..Default::default()
    };
    Ok((
        driven,
        lag,
        conservation,
        target,
        crate::bench::Transport::of_run(args.endpoint.endpoint.as_deref(), args.fake.transport)
            .as_str()
            .to_string(),
    ))
}

/// The sender for the capture's platform.
#[derive(Clone)]
enum AnySender {
    Apns(ApnsSender),
    Fcm(FcmSender),
    /// With the origin every subscription is pointed at (the fake's, or --endpoint).
    WebPush(WebPushSender, Arc<str>),
}

/// A captured message parsed for its platform.
enum Parsed {
    Apns(Result<crate::push::message::ApnsMessage, crate::push::message::MessageError>),
    Gcm(Result<Box<crate::push::gcm::GcmMessage>, crate::push::message::MessageError>),
    WebPush(Result<Box<crate::push::webpush::WebPushMessage>, crate::push::message::MessageError>),
}

/// The subscription's endpoint moved to `origin`, its path kept: a capture's pushes go to the
/// push service under test.
fn at_origin(
    mut m: crate::push::webpush::WebPushMessage,
    origin: &str,
) -> crate::push::webpush::WebPushMessage {
    let path = m
        .subscription
        .endpoint
        .split_once("://")
        .and_then(|(_, rest)| rest.find('/').map(|i| rest[i..].to_string()))
        .unwrap_or_default();
    m.subscription.endpoint = format!("{}{path}", origin.trim_end_matches('/'));
    m
}

fn limit(args: &ReplayArgs) -> Limit {
    Limit {
        count: args.load.count,
        duration: args.load.duration,
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
                args.fake.profile.clone()
            } else {
                "external".into()
            },
            transport,
            count: args.load.count,
            duration_secs: args.load.duration.map(|d| d.as_secs_f64()),
            warmup_secs: 0.0,
            concurrency: None,
            rate: args.load.rate,
            repeat: 1,
            // The pacer and the senders run on one thread.
            threads: 1,
            // The capture is the workload.
            payload_size: None,
            invalid_ratio: None,
            connections: None,
        },
        duration_secs: elapsed,
        throughput: r.completed() as f64 / elapsed,
        calibration: 0.0,
        latency: r.latencies(),
        outcomes: r.outcomes.clone(),
        reasons: r.reasons.clone(),
        conservation: Conservation::default(),
        timeline: r.timeline.clone(),
        runs: vec![r.completed() as f64 / elapsed],
        runs_p99_us: Vec::new(),
        runs_latency: vec![r.latencies()],
        interrupted: driven.interrupted,
        peak_rss_bytes: peak_rss_bytes(),
        series: Some(r.series()),
        replay: Some(ReplayInfo {
            source: file.display().to_string(),
            target,
            pace: match pace {
                Pace::Speed(s) => format!("{s}x"),
                Pace::Rate(r) => format!("{r}/s"),
            },
            // Went past the capture's end: `--loop` given but never needed is no loop.
            looped: args.looping && driven.sent > entries.len() as u64,
            capture_messages: entries.len() as u64,
            capture_secs,
            schedule_lag: driven.schedule_lag.as_ref().and_then(Percentiles::of),
            lag_per_sec_us,
        }),
        api: None,
        events: None,
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
    let (Some(brokers), Some(since)) = (&args.kafka.brokers.brokers, &args.since) else {
        bail!("--from-kafka needs --brokers and --since");
    };
    let since = kafka::parse_time(since)?;
    let until = args.until.as_deref().map(kafka::parse_time).transpose()?;
    // Ctrl-C stops the read (exit 130); the temporary files are removed as the error returns.
    let interrupt = Interrupt::install_plain()?;
    let range = kafka::Range {
        brokers,
        topic,
        since_ms: since,
        until_ms: until,
        timeout: args.kafka.kafka_timeout,
        sort_budget: crate::replay::sort::DEFAULT_BUDGET,
    };
    let bar = Progress::new("from-kafka", None, args.report.quiet);
    let written = match &args.out {
        Some(path) => kafka::read_range_to_file(&range, path, &bar, &interrupt),
        None => {
            let mut out = std::io::stdout().lock();
            kafka::read_range(&range, &std::env::temp_dir(), &mut out, &bar, &interrupt)
        }
    };
    drop(bar);
    let written = match written {
        Ok(w) => w,
        Err(kafka::RangeError::Interrupted) => {
            eprintln!(
                "pusher replay: interrupted; {}",
                match &args.out {
                    Some(path) => format!("{} not written", path.display()),
                    None => "the capture on stdout is incomplete".into(),
                }
            );
            return Ok(ExitCode::from(crate::bench::interrupt::EXIT_CODE));
        }
        Err(e) => return Err(e.into()),
    };
    if !args.report.quiet {
        eprintln!(
            "pusher replay: {} messages from {topic} written as a capture",
            written.messages
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn progress(args: &ReplayArgs, per_round: u64) -> Progress {
    let len = args.load.count.or((!args.looping).then_some(per_round));
    Progress::with_duration("replay", len, args.load.duration, args.report.quiet)
}
