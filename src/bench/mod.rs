//! `pusher bench`: load plan, driver (closed and open loop), recorder, the embedded fakes, and
//! the two modes (sender only, end to end). A run takes a plain [`Settings`] and returns a
//! [`Report`]; the flags that make one are in `cli/bench.rs`.

pub mod api;
pub mod calibrate;
pub mod driver;
pub mod end_to_end;
pub mod events;
pub mod fake;
pub mod interrupt;
pub mod recorder;
pub mod sender_only;

use crate::push::Platform;
use crate::report::data::{self as report, Report};
use crate::runtime::Threads;
use crate::sender::apns::ApnsAuth;
use crate::sender::fcm::FcmAuth;
use std::path::PathBuf;
use std::time::Duration;

/// One bench run, as the flags of `pusher bench` describe it.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Drive the sender core directly, without Kafka.
    pub sender_only: bool,
    /// Where the pushes go and how the sender is set up.
    pub target: Target,
    /// Messages to measure; none with `duration` alone (the modes default to 100k).
    pub count: Option<u64>,
    pub duration: Option<Duration>,
    /// Sent, not measured, first.
    pub warmup: Duration,
    /// Closed loop: messages in flight (when `rate` is none).
    pub concurrency: usize,
    /// Open loop: messages per second.
    pub rate: Option<f64>,
    pub threads: Threads,
    pub invalid_ratio: f64,
    /// Payload size or mix, as `pusher gen --payload-size`.
    pub payload_size: String,
    /// An external Kafka for the end-to-end run (else the embedded mock cluster).
    pub brokers: Option<String>,
    /// Partitions of the embedded mock cluster's topic.
    pub partitions: i32,
    pub repeat: usize,
    /// Where to write the latency histogram (.hgrm).
    pub hgrm: Option<PathBuf>,
    pub seed: u64,
    /// No progress bar.
    pub quiet: bool,
}

/// Where the pushes go and how the sender is set up: bench's and replay's one set-up.
#[derive(Debug, Clone)]
pub struct Target {
    pub platform: Platform,
    /// The embedded fake's behaviour profile (a built-in name or a YAML file).
    pub profile: String,
    /// The embedded fake's transport.
    pub transport: Transport,
    /// HTTP/2 connections in the sender's pool.
    pub connections: usize,
    /// `apns-topic` for the pushes.
    pub topic: String,
    /// An external endpoint instead of the embedded fake.
    pub external: Option<External>,
    /// APNs credentials, required with an external endpoint; the embedded fake always takes
    /// a provider key made for the run (it verifies that one).
    pub apns: Option<ApnsAuth>,
    /// FCM credentials (required with an external endpoint); without them, against the
    /// embedded fake, a test service account.
    pub fcm: Option<FcmAuth>,
    /// The FCM project to send as (default: `pusher-bench`).
    pub project: Option<String>,
}

/// An endpoint elsewhere (a fake, or a real sandbox).
#[derive(Debug, Clone)]
pub struct External {
    pub url: String,
    /// CA (PEM) to trust for it.
    pub ca: Option<PathBuf>,
    /// Skip TLS verification (self-signed fakes only).
    pub insecure: bool,
}

/// The embedded fake's transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// HTTP/2 over TLS (as production).
    Tls,
    /// Cleartext HTTP/2 with prior knowledge.
    H2c,
}

impl Transport {
    /// What a run sends over: an `--endpoint` URL's scheme says it (`http://` is h2c), else
    /// the embedded fake's `--transport`. Seen: an h2c endpoint's run labelled tls, and the
    /// gate refusing its baseline as another kind of run.
    pub fn of_run(external: Option<&str>, fake: Transport) -> Transport {
        match external {
            Some(url)
                if url
                    .get(..7)
                    .is_some_and(|s| s.eq_ignore_ascii_case("http://")) =>
            {
                Transport::H2c
            }
            Some(_) => Transport::Tls,
            None => fake,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Tls => "tls",
            Transport::H2c => "h2c",
        }
    }
}

/// Generated messages tried at the smallest `--payload-size` before a run: all of them must
/// fail for the run to be refused.
const PAYLOAD_SAMPLE: u64 = 16;

/// Refuses a `--payload-size` under which every message would be malformed: its smallest size,
/// with what the generator adds to the payload (the `metadata` of app `app`), is over the
/// platform's limit. Sender-only could not parse its messages and end to end answered every
/// one `malformed: payload_too_large`: a run of refusals measures nothing. A mix with sizes
/// that fit runs (end to end counts the others as malformed, not sent).
pub(crate) fn check_payload_size(settings: &Settings, app: &str) -> anyhow::Result<()> {
    use crate::gen::{GenConfig, Generator, Mix};
    use crate::push::message::{parse_apns, parse_gcm, parse_webpush};
    let mix: Mix<usize> = settings.payload_size.parse()?;
    let Some(smallest) = mix.values().min() else {
        return Ok(());
    };
    let platform = settings.target.platform;
    let mut config = GenConfig::new(platform);
    config.count = PAYLOAD_SAMPLE;
    config.seed = settings.seed;
    config.app = app.to_string();
    config.payload_size = Some(Mix::single(smallest));
    let mut generator = Generator::new(config)?;
    let mut buf = Vec::with_capacity(smallest + 1024);
    let mut first_error = None;
    while generator.write_next(&mut buf).is_some() {
        let parsed = match platform {
            Platform::Apns => parse_apns(&buf).map(drop),
            Platform::Gcm => parse_gcm(&buf).map(drop),
            Platform::WebPush => parse_webpush(&buf).map(drop),
        };
        match parsed {
            Ok(()) => return Ok(()),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
        buf.clear();
    }
    match first_error {
        Some(e) => anyhow::bail!(
            "--payload-size {}: every {platform} message would be malformed, not sent ({e}; the \
             generated message adds its metadata to the payload); nothing to measure",
            settings.payload_size
        ),
        None => Ok(()),
    }
}

/// Writes the `.hgrm` file when asked: the histogram of the round the report keeps, marked
/// when a signal stopped the run (as the JSON and the summary are).
pub(crate) fn write_hgrm(
    settings: &Settings,
    h: &hdrhistogram::Histogram<u64>,
    interrupted: bool,
) -> Result<(), crate::report::ReportError> {
    if let Some(path) = &settings.hgrm {
        let mut text = report::hgrm(h);
        if interrupted {
            text.push_str(report::HGRM_INTERRUPTED);
            text.push('\n');
        }
        crate::report::write_file(path, text.as_bytes())?;
    }
    Ok(())
}

/// The report's measurements from a run's recorder: latency, outcomes and their reasons,
/// completions per second, and the series over time.
pub(crate) fn measurements(report: &mut Report, recorder: &recorder::Recorder) {
    report.latency = recorder.latencies();
    report.outcomes = recorder.outcomes.clone();
    report.reasons = recorder.reasons.clone();
    report.timeline = recorder.timeline.clone();
    let mut series = recorder.series();
    end_at(&mut series.intervals, report.duration_secs);
    report.series = Some(series);
}

/// Cuts the run's last interval at its end, `secs` into it: its rate is then divided by the
/// time it covered, not the full width (every throughput chart ended in a false drop). Not
/// the only one: the first interval's width names the chart's intervals.
fn end_at(intervals: &mut [report::IntervalPoint], secs: f64) {
    let many = intervals.len() > 1;
    if let Some(last) = intervals.last_mut().filter(|_| many) {
        let width = secs - last.start_secs;
        if width > 0.0 && width < last.secs {
            last.secs = width;
        }
    }
}

/// `bench --api` and `--events` drive requests of `batch` items each, and their recorder
/// counts requests: the report counts items, as its throughput does (a request's verdict, 202
/// or a refusal, is its items' verdict).
pub(crate) fn count_items(report: &mut Report, batch: u64) {
    let scale = |counts: &mut std::collections::BTreeMap<String, u64>| {
        counts.values_mut().for_each(|n| *n *= batch)
    };
    // A request's 2xx is the items' acceptance by the API, not their delivery (the
    // pipeline's verdicts are in the conservation line): "delivered 4000" beside 2000 pushes
    // read as a contradiction.
    fn accepted<V>(counts: &mut std::collections::BTreeMap<String, V>) {
        if let Some(n) = counts.remove("delivered") {
            counts.insert("accepted".to_owned(), n);
        }
    }
    scale(&mut report.outcomes);
    accepted(&mut report.outcomes);
    scale(&mut report.reasons);
    report.timeline.iter_mut().for_each(|n| *n *= batch);
    if let Some(series) = &mut report.series {
        for per_sec in series.outcomes_per_sec.values_mut() {
            per_sec.iter_mut().for_each(|n| *n *= batch);
        }
        accepted(&mut series.outcomes_per_sec);
        for point in &mut series.intervals {
            point.done *= batch;
            point.failed *= batch;
            point.offered *= batch;
        }
    }
}

/// The report skeleton every mode fills.
pub(crate) fn base_report(settings: &Settings, mode: &str, profile: &str) -> Report {
    Report {
        schema: report::SCHEMA.to_string(),
        pusher_version: env!("CARGO_PKG_VERSION").to_string(),
        started_at: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        params: report::Params {
            mode: mode.to_string(),
            platform: settings.target.platform.to_string(),
            profile: profile.to_string(),
            transport: settings.target.transport.as_str().into(),
            count: settings.count,
            duration_secs: settings.duration.map(|d| d.as_secs_f64()),
            warmup_secs: settings.warmup.as_secs_f64(),
            concurrency: settings.rate.is_none().then_some(settings.concurrency),
            rate: settings.rate,
            repeat: settings.repeat,
            threads: settings.threads.count(),
            payload_size: Some(settings.payload_size.clone()),
            invalid_ratio: Some(settings.invalid_ratio),
            connections: Some(settings.target.connections),
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
        api: None,
        events: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_endpoint_url_says_its_transport() {
        use Transport::{H2c, Tls};
        assert_eq!(Transport::of_run(Some("http://127.0.0.1:1"), Tls), H2c);
        assert_eq!(Transport::of_run(Some("HTTP://127.0.0.1:1"), Tls), H2c);
        assert_eq!(
            Transport::of_run(Some("https://api.push.apple.com"), H2c),
            Tls
        );
        assert_eq!(Transport::of_run(None, H2c), H2c);
    }

    fn interval(start_secs: f64) -> report::IntervalPoint {
        report::IntervalPoint {
            start_secs,
            secs: 0.05,
            ..Default::default()
        }
    }

    /// A run of 0.12 s in 50 ms intervals: the last covers 20 ms, and its rate is taken over
    /// those; a run of one interval keeps its width (it names the chart's intervals).
    #[test]
    fn the_last_interval_ends_with_the_run() {
        let mut intervals = vec![interval(0.0), interval(0.05), interval(0.1)];
        end_at(&mut intervals, 0.12);
        assert!((intervals[2].secs - 0.02).abs() < 1e-9);
        assert_eq!(intervals[1].secs, 0.05);
        let mut one = vec![interval(0.0)];
        end_at(&mut one, 0.02);
        assert_eq!(one[0].secs, 0.05);
        // A window that ends past the last interval leaves it whole.
        end_at(&mut intervals[..2], 0.5);
        assert_eq!(intervals[1].secs, 0.05);
    }
}
