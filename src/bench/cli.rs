//! `pusher bench`: arguments, and the run -> report -> gate sequence.

use super::gate;
use super::interrupt::{self, Interrupt};
use super::report::{self, Report};
use crate::cli::GlobalArgs;
use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Run everything embedded in this process: fake servers (and, end to end, the Kafka mock
    /// cluster). Without it, give --endpoint.
    #[arg(long)]
    pub mock: bool,
    /// Drive the sender core directly, without Kafka.
    #[arg(long)]
    pub sender_only: bool,
    /// Platform to push to.
    #[arg(long, default_value = "apns", value_parser = parse_platform)]
    pub platform: crate::push::Platform,
    /// Messages to measure (suffixes: 10k, 1m). Default 100k unless --duration is given.
    #[arg(long, value_parser = parse_count)]
    pub count: Option<u64>,
    /// Measure for this long (e.g. 30s, 2m); with --count, whichever ends first.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// Send, but do not measure, for this long first.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1s")]
    pub warmup: Duration,
    /// Closed loop: messages in flight.
    #[arg(long, default_value_t = 1000, conflicts_with = "rate")]
    pub concurrency: usize,
    /// Open loop: messages per second, whatever the target does (latency is reported raw and
    /// corrected for coordinated omission).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Fake-server behaviour: a built-in profile name or a YAML file (see mock-services/).
    #[arg(long, default_value = "happy")]
    pub profile: String,
    /// Fake-server transport.
    #[arg(long, value_enum, default_value = "tls")]
    pub transport: Transport,
    /// HTTP/2 connections in the sender's pool.
    #[arg(long, default_value_t = 2)]
    pub connections: usize,
    /// Threads the sender (and, end to end, the pipeline) runs on: `cores` (as `pusher run`
    /// does by default) or a number (1: tokio's current-thread scheduler).
    #[arg(long, value_name = "N|cores", default_value = "cores")]
    pub threads: crate::runtime::Threads,
    /// Share of tokens the fake servers treat as invalid.
    #[arg(long, default_value_t = 0.0)]
    pub invalid_ratio: f64,
    /// Payload size in bytes (APNs `Payload`), as `pusher gen --payload-size`.
    #[arg(long, default_value = "300")]
    pub payload_size: String,
    /// An external endpoint (a fake elsewhere, or a real sandbox) instead of the embedded fake.
    #[arg(long, conflicts_with = "mock")]
    pub endpoint: Option<String>,
    /// CA file (PEM) to trust for --endpoint.
    #[arg(long, requires = "endpoint")]
    pub ca: Option<PathBuf>,
    /// Skip TLS verification of --endpoint (self-signed fakes only).
    #[arg(long, requires = "endpoint")]
    pub insecure: bool,
    /// APNs token auth for --endpoint: .p8 key file, key id, team id.
    #[arg(long, requires_all = ["key_id", "team_id"])]
    pub key_file: Option<PathBuf>,
    #[arg(long)]
    pub key_id: Option<String>,
    #[arg(long)]
    pub team_id: Option<String>,
    /// FCM for --endpoint: a service-account JSON file (HTTP v1, OAuth2 at its token_uri).
    #[arg(long, conflicts_with = "api_key")]
    pub service_account: Option<PathBuf>,
    /// FCM for --endpoint: a legacy server key (legacy HTTP API /fcm/send).
    #[arg(long, env = "PUSHER_BENCH_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// `apns-topic` for the pushes.
    #[arg(long, default_value = "com.example.app")]
    pub topic: String,
    /// An external Kafka for the end-to-end run (the topic push-bench_apns or push-bench_gcm
    /// must exist or be auto-created); default: librdkafka's mock cluster, in process.
    #[arg(long)]
    pub brokers: Option<String>,
    /// Partitions of the embedded mock cluster's topic.
    #[arg(long, default_value_t = 16)]
    pub partitions: i32,
    /// Repeat the run and report the median throughput (the gate uses it).
    #[arg(long, default_value_t = 1)]
    pub repeat: usize,
    /// Write the report as JSON (schema pusher-bench/1, see README).
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write the report as one self-contained HTML page with SVG charts.
    #[arg(long)]
    pub html: Option<PathBuf>,
    /// Write the send (or end-to-end) latency histogram in HdrHistogram's .hgrm text format.
    #[arg(long)]
    pub hgrm: Option<PathBuf>,
    /// Compare with this baseline report and fail on a regression.
    #[arg(long)]
    pub baseline: Option<PathBuf>,
    /// Allowed regression in percent (throughput drop or p99 rise, calibration-normalised).
    #[arg(long, default_value_t = 10.0, requires = "baseline")]
    pub max_regression: f64,
    /// Seed for the generated messages.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// No progress bar.
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Transport {
    /// HTTP/2 over TLS (as production).
    Tls,
    /// Cleartext HTTP/2 with prior knowledge.
    H2c,
}

fn parse_platform(s: &str) -> Result<crate::push::Platform, String> {
    s.parse()
}

fn parse_count(s: &str) -> Result<u64, String> {
    let n = crate::gen::parse_count(s).map_err(|e| e.to_string())?;
    if n == 0 {
        return Err("count must be at least 1".into());
    }
    Ok(n)
}

pub fn run(args: BenchArgs, _g: &GlobalArgs) -> anyhow::Result<ExitCode> {
    if !args.mock && args.endpoint.is_none() {
        bail!("say where to send: --mock (embedded fake servers) or --endpoint URL");
    }
    if args.repeat == 0 {
        bail!("--repeat must be at least 1");
    }
    if let Some(rate) = args.rate {
        if !(rate.is_finite() && rate > 0.0) {
            bail!("--rate must be a positive number of messages per second");
        }
    }
    if args.concurrency == 0 {
        bail!("--concurrency must be at least 1");
    }
    // Where the reports go, and the baseline, are checked first: a typo should fail before a
    // long run, not after it.
    for path in [&args.json, &args.html, &args.hgrm].into_iter().flatten() {
        crate::report::check_writable(path)?;
    }
    let baseline = match &args.baseline {
        Some(path) => Some((gate::load_baseline(path)?, path.as_path())),
        None => None,
    };
    let interrupt = Interrupt::install()?;
    // Calibrate before and after as well as inside the run: the median of the three resists
    // a burst of other load on a shared machine.
    let before = super::calibrate::calibrate(5, Duration::from_millis(60));
    let mut report = if args.sender_only {
        super::sender_only::run(&args, &interrupt)
    } else {
        super::end_to_end::run_bench(&args, &interrupt)
    }
    .context("bench run failed")?;
    let after = super::calibrate::calibrate(5, Duration::from_millis(60));
    report.calibration = gate::median(&[before, report.calibration, after]);
    conclude(
        &report,
        args.json.as_deref(),
        args.html.as_deref(),
        baseline,
        args.max_regression,
    )
}

/// The end of a bench or replay run: writes the reports, prints the summary, and decides the
/// exit status: 130 when interrupted (the gate is not applied to part of a run), 1 when a
/// message is unaccounted for or the gate finds a regression.
pub(crate) fn conclude(
    report: &Report,
    json: Option<&Path>,
    html: Option<&Path>,
    baseline: Option<(Report, &Path)>,
    max_regression: f64,
) -> anyhow::Result<ExitCode> {
    if let Some(path) = json {
        let text = serde_json::to_string_pretty(report)?;
        crate::report::write_file(path, text.as_bytes())?;
    }
    if let Some(path) = html {
        crate::report::html::write(report, path)?;
    }
    print!("{}", report.summary());
    let c = &report.conservation;
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
            return Ok(ExitCode::from(1));
        }
        println!("  gate: passed");
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes the `.hgrm` file when asked.
pub(super) fn write_hgrm(args: &BenchArgs, h: &hdrhistogram::Histogram<u64>) -> anyhow::Result<()> {
    if let Some(path) = &args.hgrm {
        crate::report::write_file(path, report::hgrm(h).as_bytes())?;
    }
    Ok(())
}

/// The report skeleton every mode fills.
pub(super) fn base_report(args: &BenchArgs, mode: &str, profile: &str) -> Report {
    Report {
        schema: report::SCHEMA.to_string(),
        pusher_version: env!("CARGO_PKG_VERSION").to_string(),
        started_at: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        params: report::Params {
            mode: mode.to_string(),
            platform: args.platform.to_string(),
            profile: profile.to_string(),
            transport: match args.transport {
                Transport::Tls => "tls".into(),
                Transport::H2c => "h2c".into(),
            },
            count: args.count,
            duration_secs: args.duration.map(|d| d.as_secs_f64()),
            warmup_secs: args.warmup.as_secs_f64(),
            concurrency: args.rate.is_none().then_some(args.concurrency),
            rate: args.rate,
            repeat: args.repeat,
            threads: args.threads.count(),
        },
        duration_secs: 0.0,
        throughput: 0.0,
        calibration: 0.0,
        latency: Default::default(),
        outcomes: Default::default(),
        reasons: Default::default(),
        conservation: Default::default(),
        timeline: Vec::new(),
        runs: Vec::new(),
        runs_p99_us: Vec::new(),
        runs_latency: Vec::new(),
        interrupted: false,
        peak_rss_bytes: None,
        series: None,
        replay: None,
    }
}
