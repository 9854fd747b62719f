//! `pusher bench`: its flags into a plain `bench::Settings`, and the run -> report -> gate
//! sequence that bench and replay end with.

use super::flags::{
    at_least_one, ApnsCredentials, BrokersFlag, EndpointFlags, FakeFlags, FcmCredentials,
    LoadFlags, ReportFlags, ThreadsFlag,
};
use crate::bench::interrupt::{self, Interrupt};
use crate::bench::{External, Settings, Target, Transport};
use crate::push::Platform;
use crate::report::data::Report;
use crate::report::gate;
use anyhow::{bail, Context};
use clap::Args;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

#[derive(Debug, Clone, Args)]
#[command(
    group(clap::ArgGroup::new("http_bench").args(["api", "events"])),
    mut_arg("endpoint", |a| a
        .conflicts_with("mock")
        .help("An external endpoint (a fake elsewhere, or a real sandbox) instead of the embedded fake")),
    mut_arg("ca", |a| a.requires("endpoint")),
    mut_arg("insecure", |a| a.requires("endpoint")),
    mut_arg("api_key", |a| a.env("PUSHER_BENCH_API_KEY").hide_env_values(true)),
    mut_arg("brokers", |a| a.help("An external Kafka for the end-to-end run (the topic \
push-bench_apns or push-bench_gcm must exist or be auto-created); default: librdkafka's mock \
cluster, in process")),
    mut_arg("count", |a| a.help("Messages to measure (10k, 1m). Default 100k unless --duration is given")),
    mut_arg("duration", |a| a.help("Measure for this long (e.g. 30s, 2m); with --count, whichever ends first")),
    mut_arg("rate", |a| a.help("Open loop: messages per second (5000, 5000/s, 5k), whatever the \
target does (latency is reported raw and corrected for coordinated omission)")),
    mut_arg("threads", |a| a.help("Threads the sender (and, end to end, the pipeline) runs on: \
cores (as `pusher run` does by default; 0 means the same) or a number from 1 to 1024 (1: tokio's \
current-thread scheduler)")),
)]
pub struct BenchArgs {
    /// Run everything embedded in this process: fake servers (and, end to end, the Kafka mock
    /// cluster). Without it, give --endpoint.
    #[arg(long)]
    pub mock: bool,
    /// Drive the sender core directly, without Kafka.
    #[arg(long)]
    pub sender_only: bool,
    /// Benchmark `pusher api`: HTTP clients post gorush batches (--batch notifications, one
    /// token each) to the API in this process, which answers once Kafka acknowledged every
    /// record, and the pipeline delivers them to the embedded fake (HTTP-to-delivery latency);
    /// beside it, the same HTTP stack with a trivial handler. Needs PostgreSQL (--pg).
    /// --count and --rate count notifications; --concurrency is requests in flight.
    #[arg(long, conflicts_with = "sender_only")]
    pub api: bool,
    /// Benchmark event mode: HTTP clients post batches of events (--batch per request, every
    /// event twice) to the API; two `pusher route`s in one group turn them into one message
    /// per user under a cooldown (PostgreSQL claims); the pipeline delivers to the embedded
    /// fake. Reports events routed per second, event-to-delivery latency and the cooldown
    /// check (each user reached once). --count counts events. Needs PostgreSQL (--pg).
    #[arg(long, conflicts_with_all = ["sender_only", "api"])]
    pub events: bool,
    /// --api, --events: notifications or events per request.
    #[arg(long, default_value_t = 100, requires = "http_bench")]
    pub batch: usize,
    /// --api, --events: the platform's PostgreSQL (claims, registry, messages), as
    /// `host=H port=P user=U dbname=D` (password: PGPASSWORD).
    #[arg(
        long,
        default_value = "host=127.0.0.1 port=5432 user=postgres dbname=test",
        requires = "http_bench"
    )]
    pub pg: String,
    /// Platform to push to.
    #[arg(long, default_value = "apns", value_parser = parse_platform)]
    pub platform: Platform,
    #[command(flatten)]
    pub load: LoadFlags,
    /// Send, but do not measure, for this long first (0s: none).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1s")]
    pub warmup: Duration,
    /// Closed loop: messages in flight.
    #[arg(long, default_value_t = 1000, conflicts_with = "rate")]
    pub concurrency: usize,
    #[command(flatten)]
    pub fake: FakeFlags,
    #[command(flatten)]
    pub threads: ThreadsFlag,
    /// Share of tokens the fake servers treat as invalid.
    #[arg(long, default_value_t = 0.0, value_parser = crate::units::parse_ratio)]
    pub invalid_ratio: f64,
    /// Payload size in bytes (APNs `Payload`), as `pusher gen --payload-size`.
    #[arg(long, default_value = "300")]
    pub payload_size: String,
    #[command(flatten)]
    pub endpoint: EndpointFlags,
    #[command(flatten)]
    pub apns: ApnsCredentials,
    #[command(flatten)]
    pub fcm: FcmCredentials,
    /// `apns-topic` for the pushes.
    #[arg(long, default_value = "com.example.app")]
    pub topic: String,
    #[command(flatten)]
    pub brokers: BrokersFlag,
    /// Partitions of the embedded mock cluster's topic.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(i32).range(1..))]
    pub partitions: i32,
    /// Repeat the run and report the median throughput (the gate uses it).
    #[arg(long, default_value_t = 1, value_parser = at_least_one)]
    pub repeat: usize,
    #[command(flatten)]
    pub report: ReportFlags,
    /// Write the send (or end-to-end) latency histogram in HdrHistogram's .hgrm text format.
    #[arg(long, value_name = "FILE")]
    pub hgrm: Option<PathBuf>,
    /// Seed for the generated messages.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

fn parse_platform(s: &str) -> Result<Platform, String> {
    s.parse()
}

/// Where bench and replay send (the embedded fake, or `--endpoint`), with the credentials given.
/// An endpoint elsewhere needs its platform's credentials: `what` says how the command chose
/// the platform, for the error that asks for them.
pub(super) fn target(
    platform: Platform,
    fake: &FakeFlags,
    topic: &str,
    endpoint: &EndpointFlags,
    apns: &ApnsCredentials,
    fcm: &FcmCredentials,
    what: &str,
) -> anyhow::Result<Target> {
    let external = endpoint.endpoint.as_ref().map(|url| External {
        url: url.clone(),
        ca: endpoint.ca.clone(),
        insecure: endpoint.insecure,
    });
    let (apns, fcm_auth) = (apns.auth()?, fcm.auth()?);
    // Only the embedded fake trusts the key a run makes for itself: anywhere else every push
    // was refused (InvalidProviderToken) and the run measured nothing.
    if external.is_some() {
        match platform {
            Platform::Apns if apns.is_none() => bail!(
                "{what} with --endpoint: give APNs credentials, --key-file FILE --key-id ID \
                 --team-id TEAM (token auth) or --certificate FILE [--key FILE] \
                 [--certificate-password P]; only the embedded fake takes a key made for the run"
            ),
            Platform::Gcm if fcm_auth.is_none() => bail!(
                "{what} with --endpoint: give FCM credentials, --service-account FILE or \
                 --api-key KEY; only the embedded fake takes a test account"
            ),
            _ => {}
        }
    }
    Ok(Target {
        platform,
        profile: fake.profile.clone(),
        transport: Transport::of_run(external.as_ref().map(|e| e.url.as_str()), fake.transport),
        connections: fake.connections,
        topic: topic.to_string(),
        external,
        apns,
        fcm: fcm_auth,
        project: fcm.project.clone(),
    })
}

pub fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    if !args.mock && args.endpoint.endpoint.is_none() {
        bail!("say where to send: --mock (embedded fake servers) or --endpoint URL");
    }
    if args.repeat == 0 {
        bail!("--repeat must be at least 1");
    }
    if args.concurrency == 0 {
        bail!("--concurrency must be at least 1");
    }
    // The HTTP benches run once; a --repeat they ignored still said "repeat: 3" in the report.
    if (args.api || args.events) && args.repeat > 1 {
        bail!(
            "--repeat is for the sender-only and end-to-end benches: --api and --events run once"
        );
    }
    let report_flags = &args.report;
    // Where the reports go, and the baseline, are checked first: a typo should fail before a
    // long run, not after it.
    let outputs: Vec<(&str, &Path)> = [
        ("--json", &report_flags.json),
        ("--html", &report_flags.html),
        ("--hgrm", &args.hgrm),
    ]
    .into_iter()
    .filter_map(|(flag, path)| Some((flag, path.as_deref()?)))
    .collect();
    crate::report::check_outputs(&outputs, report_flags.baseline.as_deref())?;
    let baseline = match &report_flags.baseline {
        Some(path) => Some((gate::load_baseline(path)?, path.as_path())),
        None => None,
    };
    let settings = Settings {
        sender_only: args.sender_only,
        target: target(
            args.platform,
            &args.fake,
            &args.topic,
            &args.endpoint,
            &args.apns,
            &args.fcm,
            &format!("--platform {}", args.platform),
        )?,
        count: args.load.count,
        duration: args.load.duration,
        warmup: args.warmup,
        concurrency: args.concurrency,
        rate: args.load.rate,
        threads: args.threads.threads,
        invalid_ratio: args.invalid_ratio,
        payload_size: args.payload_size.clone(),
        brokers: args.brokers.brokers.clone(),
        partitions: args.partitions,
        repeat: args.repeat,
        hgrm: args.hgrm.clone(),
        seed: args.seed,
        quiet: report_flags.quiet,
    };
    let interrupt = Interrupt::install()?;
    // Calibrate before and after as well as inside the run (between its rounds): the median
    // resists a burst of other load on a shared machine.
    let before = crate::bench::calibrate::calibrate(5, Duration::from_millis(60));
    let http = crate::bench::api::ApiBench {
        batch: args.batch,
        pg: pg_config(&args.pg)?,
    };
    let ran = if args.api {
        crate::bench::api::run(&settings, &http, &interrupt)
    } else if args.events {
        crate::bench::events::run(&settings, &http, &interrupt)
    } else if settings.sender_only {
        crate::bench::sender_only::run(&settings, &interrupt)
    } else {
        crate::bench::end_to_end::run_bench(&settings, &interrupt)
    };
    let mut report = match ran {
        Ok(report) => report,
        // Stopped before anything was measured (a set-up that was interrupted): no report,
        // and the interrupt's exit status.
        Err(e) if interrupt.is_set() => {
            eprintln!("pusher: {e:#}");
            return Ok(ExitCode::from(interrupt::EXIT_CODE));
        }
        Err(e) => return Err(e.context("bench run failed")),
    };
    let after = crate::bench::calibrate::calibrate(5, Duration::from_millis(60));
    report.calibration = gate::calibration(&[before, report.calibration, after]);
    conclude(&report, report_flags, baseline)
}

/// `host=H port=P user=U dbname=D` as the PostgreSQL settings (password from PGPASSWORD).
fn pg_config(text: &str) -> anyhow::Result<crate::config::PgConfig> {
    let mut pg = crate::config::PgConfig {
        pass: std::env::var("PGPASSWORD")
            .ok()
            .map(crate::config::Secret::new),
        pool_size: 16,
        connection_timeout: Duration::from_secs(5),
        ..Default::default()
    };
    for pair in text.split_whitespace() {
        let (key, value) = pair
            .split_once('=')
            .with_context(|| format!("--pg: {pair:?} is not key=value"))?;
        match key {
            "host" => pg.host = value.to_owned(),
            "port" => {
                pg.port = value
                    .parse()
                    .with_context(|| format!("--pg: port {value:?}"))?
            }
            "user" => pg.user = value.to_owned(),
            "dbname" => pg.database = value.to_owned(),
            other => bail!("--pg: unknown key {other:?} (host, port, user, dbname)"),
        }
    }
    Ok(pg)
}

/// The exit status of a run the gate found slower than its baseline: its own, so that a
/// retry (`ci/bench-gate.sh`) can tell a speed regression, which load from elsewhere can fake,
/// from a lost or double-counted message (1), which a retry must never pass.
pub const EXIT_REGRESSION: u8 = 3;

/// The end of a bench or replay run: writes the reports, prints the summary, and decides the
/// exit status: 130 when interrupted (the gate is not applied to part of a run), 1 when a
/// message is unaccounted for, 2 when the baseline is another kind of run, and
/// [`EXIT_REGRESSION`] when the gate finds a regression.
pub(super) fn conclude(
    report: &Report,
    flags: &ReportFlags,
    baseline: Option<(Report, &Path)>,
) -> anyhow::Result<ExitCode> {
    let max_regression = flags.max_regression;
    if let Some(path) = &flags.json {
        let text = serde_json::to_string_pretty(report)?;
        crate::report::write_file(path, text.as_bytes())?;
    }
    if let Some(path) = &flags.html {
        crate::report::html::write(report, path)?;
    }
    print!("{}", report.summary());
    let c = &report.conservation;
    // A loss fails the run even when a signal also stopped it: the loss is the news.
    if c.lost > 0 {
        eprintln!(
            "error: {} messages lost: {}",
            c.lost,
            c.lost_cause.as_deref().unwrap_or("cause unknown")
        );
        return Ok(ExitCode::from(1));
    }
    if !c.ok && c.in_flight == 0 {
        eprintln!("error: conservation check failed: messages were lost or double-counted");
        if !report.interrupted {
            return Ok(ExitCode::from(1));
        }
    }
    if report.interrupted {
        if baseline.is_some() {
            println!("  gate: not applied (the run was interrupted)");
        }
        eprintln!("pusher: interrupted: the summary and reports cover what ran");
        return Ok(ExitCode::from(interrupt::EXIT_CODE));
    }
    if let Some((base, path)) = baseline {
        let differences = gate::differences(report, &base);
        if !differences.is_empty() {
            bail!(
                "the baseline {} is another kind of run ({}): the gate compares runs of one kind; record a baseline with these settings",
                path.display(),
                differences.join("; ")
            );
        }
        if base.params.threads == 0 {
            println!(
                "  gate: WARNING: the baseline does not record its threads (a report from before --threads); this run used {}",
                report.params.threads
            );
        }
        let result = gate::compare(report, &base, max_regression);
        for line in &result.lines {
            println!("  gate: {line}");
        }
        if !result.passed() {
            eprintln!(
                "error: regression beyond {max_regression}% against {}:",
                path.display()
            );
            for r in &result.regressions {
                eprintln!("  {r}");
            }
            return Ok(ExitCode::from(EXIT_REGRESSION));
        }
        println!("  gate: passed");
    }
    Ok(ExitCode::SUCCESS)
}
