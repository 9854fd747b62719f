//! The CI regression gate: compare a run with a baseline report. Both are normalised by the
//! calibration measured in their own run, so a slower or busier machine is not a regression.

use super::data::{Report, SCHEMA};
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum GateError {
    #[error("cannot read baseline {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("baseline {path} is not a pusher bench report: {source}")]
    Parse {
        path: String,
        source: serde_json::Error,
    },
    #[error("baseline {path} has schema {found:?}, expected {SCHEMA:?}")]
    Schema { path: String, found: String },
    #[error(
        "baseline {path} has no usable figures (throughput, calibration and send p99 must be > 0)"
    )]
    Empty { path: String },
    /// A run that cannot stand for the code's speed: part of a run, or one that lost messages.
    #[error("baseline {path} is {why}: its figures are no baseline")]
    Unfit { path: String, why: &'static str },
}

pub fn load_baseline(path: &Path) -> Result<Report, GateError> {
    let p = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| GateError::Read {
        path: p.clone(),
        source,
    })?;
    let report: Report = serde_json::from_str(&text).map_err(|source| GateError::Parse {
        path: p.clone(),
        source,
    })?;
    if report.schema != SCHEMA {
        return Err(GateError::Schema {
            path: p,
            found: report.schema,
        });
    }
    if !(report.throughput > 0.0
        && report.calibration > 0.0
        && p99(&report).is_some_and(|v| v > 0.0))
    {
        return Err(GateError::Empty { path: p });
    }
    let why = if report.interrupted {
        Some("an interrupted run")
    } else if !report.conservation.ok || report.conservation.lost > 0 {
        Some("a run whose messages did not add up (its conservation check failed)")
    } else {
        None
    };
    if let Some(why) = why {
        return Err(GateError::Unfit { path: p, why });
    }
    Ok(report)
}

fn p99(r: &Report) -> Option<f64> {
    // Open loop: the latency corrected for coordinated omission (from each message's
    // intended start), the one that shows a stall; the raw one hides what waited behind it.
    if r.params.rate.is_some() {
        let corrected = |l: &super::data::Latencies| {
            l.end_to_end_corrected
                .as_ref()
                .or(l.send_corrected.as_ref())
                .map(|p| p.p99_us as f64)
        };
        let runs: Vec<f64> = r.runs_latency.iter().filter_map(corrected).collect();
        if !runs.is_empty() {
            return Some(median(&runs));
        }
        if let Some(v) = corrected(&r.latency) {
            return Some(v);
        }
    }
    // The median of the repetitions' p99s: one run's tail is too noisy to gate on.
    if !r.runs_p99_us.is_empty() {
        let v: Vec<f64> = r.runs_p99_us.iter().map(|&x| x as f64).collect();
        return Some(median(&v));
    }
    r.latency
        .end_to_end
        .as_ref()
        .or(r.latency.send.as_ref())
        .map(|p| p.p99_us as f64)
}

/// Which latency [`p99`] is of: end to end where the run measured it, else send; corrected
/// for coordinated omission in open loop.
fn p99_kind(r: &Report) -> &'static str {
    let corrected = r.params.rate.is_some()
        && (r.latency.end_to_end_corrected.is_some() || r.latency.send_corrected.is_some());
    match (r.latency.end_to_end.is_some(), corrected) {
        (true, false) => "end-to-end",
        (true, true) => "end-to-end (CO-corrected)",
        (false, false) => "send",
        (false, true) => "send (CO-corrected)",
    }
}

/// How a run applied its load, in words: runs that differ here measure different things.
fn load_of(r: &Report) -> String {
    match (&r.replay, r.params.concurrency, r.params.rate) {
        (Some(replay), _, _) => format!("replay at {}", replay.pace),
        (None, _, Some(rate)) => format!("open loop at {rate}/s"),
        (None, Some(c), None) => format!("closed loop, {c} in flight"),
        (None, None, None) => "unknown".to_owned(),
    }
}

/// Where `current` is a different kind of run from `baseline` (mode, platform, profile,
/// transport, load, threads), one line per difference: its figures would be compared as if
/// they measured the same thing (a sender-only run against an end-to-end baseline, a release
/// run on every core against the CI's one thread), and a 50 % slower change passed.
pub fn differences(current: &Report, baseline: &Report) -> Vec<String> {
    let (now, base) = (&current.params, &baseline.params);
    let mut pairs = vec![
        ("mode", now.mode.clone(), base.mode.clone()),
        ("platform", now.platform.clone(), base.platform.clone()),
        ("profile", now.profile.clone(), base.profile.clone()),
        ("transport", now.transport.clone(), base.transport.clone()),
        ("load", load_of(current), load_of(baseline)),
    ];
    // 0: a report from before the threads were recorded, which cannot say.
    if base.threads != 0 {
        pairs.push(("threads", now.threads.to_string(), base.threads.to_string()));
    }
    // The workload: a baseline from before it was recorded cannot say. Seen: a run of 3,000
    // byte payloads on one connection was judged a 43 % regression of a 300-byte baseline
    // (and a lighter workload would hide one).
    let shown = |v: &Option<String>| v.clone().unwrap_or_else(|| "unknown".to_owned());
    if base.payload_size.is_some() {
        pairs.push((
            "payload size",
            shown(&now.payload_size),
            shown(&base.payload_size),
        ));
    }
    if let Some(ratio) = base.invalid_ratio {
        let now_ratio = now.invalid_ratio.map(|r| r.to_string());
        pairs.push(("invalid ratio", shown(&now_ratio), ratio.to_string()));
    }
    if let Some(c) = base.connections {
        let now_c = now.connections.map(|c| c.to_string());
        pairs.push(("connections", shown(&now_c), c.to_string()));
    }
    pairs
        .into_iter()
        .filter(|(_, a, b)| a != b)
        .map(|(name, a, b)| format!("{name} {a}, baseline {b}"))
        .collect()
}

/// The verdict of a comparison, one line per figure.
#[derive(Debug, Clone, PartialEq)]
pub struct GateResult {
    pub lines: Vec<String>,
    pub regressions: Vec<String>,
}

impl GateResult {
    pub fn passed(&self) -> bool {
        self.regressions.is_empty()
    }
}

/// How a figure follows the machine's speed, for normalising it by the calibration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scaling {
    /// Rises on a faster machine (throughput): divided by the calibration.
    WithSpeed,
    /// Falls on a faster machine (latency): multiplied by it.
    AgainstSpeed,
}

/// A figure's relative change from a baseline, raw and normalised by each run's calibration.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Change {
    pub raw: f64,
    pub normalised: f64,
}

impl Change {
    /// From `base` (calibration `base_cal`) to `now` (calibration `now_cal`).
    pub fn of(now: f64, now_cal: f64, base: f64, base_cal: f64, scaling: Scaling) -> Change {
        let ratio = now / base;
        let speed = now_cal.max(f64::MIN_POSITIVE) / base_cal.max(f64::MIN_POSITIVE);
        let normalised = match scaling {
            Scaling::WithSpeed => ratio / speed,
            Scaling::AgainstSpeed => ratio * speed,
        };
        Change {
            raw: ratio - 1.0,
            normalised: normalised - 1.0,
        }
    }

    /// Up by more than `limit` (a fraction) in both the raw and the normalised figure: a
    /// slower machine moves only the raw one, a noisy calibration only the normalised one, a
    /// slower pusher both.
    pub fn rose_beyond(&self, limit: f64) -> bool {
        self.raw > limit && self.normalised > limit
    }

    /// Down by more than `limit` in both, as [`Change::rose_beyond`].
    pub fn fell_beyond(&self, limit: f64) -> bool {
        self.raw < -limit && self.normalised < -limit
    }
}

/// Throughput may not fall, nor p99 rise, by more than `max_regression_pct` once both runs
/// are normalised by their calibration.
pub fn compare(current: &Report, baseline: &Report, max_regression_pct: f64) -> GateResult {
    let mut lines = Vec::new();
    let mut regressions = Vec::new();
    let limit = max_regression_pct / 100.0;

    let tp = Change::of(
        current.throughput,
        current.calibration,
        baseline.throughput,
        baseline.calibration,
        Scaling::WithSpeed,
    );
    let line = format!(
        "throughput {:.0}/s vs baseline {:.0}/s: {:+.1}% raw, {:+.1}% normalised (limit -{max_regression_pct}%)",
        current.throughput,
        baseline.throughput,
        tp.raw * 100.0,
        tp.normalised * 100.0
    );
    if tp.fell_beyond(limit) {
        regressions.push(line.clone());
    }
    lines.push(line);

    if let (Some(now), Some(base)) = (p99(current), p99(baseline)) {
        let c = Change::of(
            now,
            current.calibration,
            base,
            baseline.calibration,
            Scaling::AgainstSpeed,
        );
        let line = format!(
            "p99 {} latency {:.0} µs vs baseline {:.0} µs: {:+.1}% raw, {:+.1}% normalised (limit +{max_regression_pct}%)",
            p99_kind(current),
            now,
            base,
            c.raw * 100.0,
            c.normalised * 100.0
        );
        if c.rose_beyond(limit) {
            regressions.push(line.clone());
        }
        lines.push(line);
    }

    // Faster by failing is no gain: a change that turns pushes into rejections (a header the
    // endpoint refuses) raised throughput, since refusals come back quickly, and passed.
    if let (Some(now), Some(base)) = (delivered_share(current), delivered_share(baseline)) {
        let line = format!(
            "delivered {:.2}% of messages vs baseline {:.2}% (limit -{DELIVERED_SHARE_LIMIT_PP} points)",
            now * 100.0,
            base * 100.0
        );
        if (base - now) * 100.0 > DELIVERED_SHARE_LIMIT_PP {
            regressions.push(line.clone());
        }
        lines.push(line);
    }
    GateResult { lines, regressions }
}

/// How far the share of messages delivered may fall, in percentage points: above the random
/// spread of a fault profile's error rates over a short run.
const DELIVERED_SHARE_LIMIT_PP: f64 = 1.0;

/// The share of a run's outcomes that are `delivered` (None: no outcomes recorded).
fn delivered_share(r: &Report) -> Option<f64> {
    let total: u64 = r.outcomes.values().sum();
    (total > 0).then(|| r.outcomes.get("delivered").copied().unwrap_or(0) as f64 / total as f64)
}

/// A run's calibration from its samples (before the run, between its rounds, after it): the
/// median of those taken. A 0 is a sample not taken (one round has nothing between; `--api`
/// takes none inside): counted, it made the median the lower of the other two.
pub fn calibration(samples: &[f64]) -> f64 {
    let taken: Vec<f64> = samples.iter().copied().filter(|&c| c > 0.0).collect();
    median(&taken)
}

/// The median of repeated runs' values.
pub fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::report::data::*;

    pub(crate) fn sample(throughput: f64, p99_us: u64, calibration: f64) -> Report {
        let pct = Percentiles {
            count: 10,
            min_us: 1,
            mean_us: 5.0,
            p50_us: 5,
            p90_us: 8,
            p99_us,
            p999_us: p99_us,
            max_us: p99_us,
        };
        Report {
            schema: SCHEMA.into(),
            pusher_version: "test".into(),
            started_at: 0,
            params: Params {
                mode: "sender-only".into(),
                platform: "apns".into(),
                profile: "happy".into(),
                transport: "tls".into(),
                count: Some(10),
                duration_secs: None,
                warmup_secs: 0.0,
                concurrency: Some(1),
                rate: None,
                repeat: 1,
                threads: 1,
                payload_size: Some("300".into()),
                invalid_ratio: Some(0.0),
                connections: Some(2),
            },
            duration_secs: 1.0,
            throughput,
            calibration,
            latency: Latencies {
                send: Some(pct),
                ..Default::default()
            },
            outcomes: Default::default(),
            reasons: Default::default(),
            conservation: Conservation {
                ok: true,
                ..Default::default()
            },
            timeline: vec![],
            runs: vec![throughput],
            runs_p99_us: vec![],
            runs_latency: vec![],
            interrupted: false,
            peak_rss_bytes: None,
            series: None,
            replay: None,
            api: None,
            events: None,
        }
    }

    #[test]
    fn same_figures_pass() {
        let r = sample(1000.0, 500, 1e6);
        assert!(compare(&r, &r, 10.0).passed());
    }

    #[test]
    fn a_throughput_drop_beyond_the_limit_fails() {
        let base = sample(1000.0, 500, 1e6);
        assert!(!compare(&sample(850.0, 500, 1e6), &base, 10.0).passed());
        assert!(compare(&sample(950.0, 500, 1e6), &base, 10.0).passed());
    }

    #[test]
    fn a_slower_machine_is_not_a_regression() {
        // Half the calibration, half the throughput, twice the latency: same normalised figures.
        let base = sample(1000.0, 500, 1e6);
        assert!(compare(&sample(500.0, 1000, 5e5), &base, 10.0).passed());
    }

    #[test]
    fn calibration_noise_alone_is_not_a_regression() {
        // Same raw figures, a calibration 40% higher: normalised throughput falls, raw does not.
        let base = sample(1000.0, 500, 1e6);
        assert!(compare(&sample(1000.0, 500, 1.4e6), &base, 10.0).passed());
    }

    #[test]
    fn a_p99_rise_beyond_the_limit_fails() {
        let base = sample(1000.0, 500, 1e6);
        let r = compare(&sample(1000.0, 600, 1e6), &base, 10.0);
        assert!(!r.passed());
        assert!(r.regressions[0].contains("p99"));
    }

    #[test]
    fn fewer_deliveries_fail_even_when_faster() {
        let mut base = sample(1000.0, 500, 1e6);
        base.outcomes = [("delivered".to_string(), 1000)].into();
        let mut rejected = sample(1500.0, 300, 1e6);
        rejected.outcomes = [("rejected".to_string(), 1000)].into();
        let r = compare(&rejected, &base, 10.0);
        assert!(!r.passed());
        assert!(r.regressions[0].contains("delivered 0.00%"), "{r:?}");
        let mut same = sample(1000.0, 500, 1e6);
        same.outcomes = [("delivered".to_string(), 995), ("gave_up".to_string(), 5)].into();
        assert!(compare(&same, &base, 10.0).passed());
    }

    /// A run of another kind than its baseline is named, field by field; a baseline from
    /// before threads were recorded (0) is not held against the run.
    #[test]
    fn runs_of_another_kind_are_named() {
        let base = sample(1000.0, 500, 1e6);
        assert!(differences(&base, &base).is_empty());
        let mut other = base.clone();
        other.params.mode = "end-to-end".into();
        other.params.threads = 2;
        other.params.concurrency = None;
        other.params.rate = Some(5000.0);
        assert_eq!(
            differences(&other, &base),
            [
                "mode end-to-end, baseline sender-only",
                "load open loop at 5000/s, baseline closed loop, 1 in flight",
                "threads 2, baseline 1",
            ]
        );
        let mut old = base.clone();
        old.params.threads = 0;
        assert!(differences(&base, &old).is_empty());
        // The workload's shape; a baseline from before it was recorded cannot say.
        let mut heavier = base.clone();
        heavier.params.payload_size = Some("3000".into());
        heavier.params.connections = Some(1);
        assert_eq!(
            differences(&heavier, &base),
            [
                "payload size 3000, baseline 300",
                "connections 1, baseline 2"
            ]
        );
        let mut unrecorded = base.clone();
        unrecorded.params.payload_size = None;
        unrecorded.params.invalid_ratio = None;
        unrecorded.params.connections = None;
        assert!(differences(&heavier, &unrecorded).is_empty());
        let mut replay = base.clone();
        replay.replay = Some(ReplayInfo {
            pace: "10x".into(),
            ..Default::default()
        });
        assert_eq!(
            differences(&replay, &base),
            ["load replay at 10x, baseline closed loop, 1 in flight"]
        );
    }

    #[test]
    fn the_calibration_is_the_median_of_the_samples_taken() {
        assert_eq!(calibration(&[2e6, 0.0, 3e6]), 2.5e6);
        assert_eq!(calibration(&[2e6, 2.2e6, 3e6]), 2.2e6);
        assert_eq!(calibration(&[0.0, 0.0]), 0.0);
    }

    #[test]
    fn median_of_runs() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(&[]), 0.0);
    }

    #[test]
    fn corrupt_baselines_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("bad.json");
        std::fs::write(&bad, "{not json").unwrap();
        assert!(matches!(load_baseline(&bad), Err(GateError::Parse { .. })));
        assert!(matches!(
            load_baseline(&dir.path().join("missing.json")),
            Err(GateError::Read { .. })
        ));
        let mut r = sample(1000.0, 500, 1e6);
        r.schema = "other/9".into();
        let other = dir.path().join("other.json");
        std::fs::write(&other, serde_json::to_string(&r).unwrap()).unwrap();
        assert!(matches!(
            load_baseline(&other),
            Err(GateError::Schema { .. })
        ));
        let good = dir.path().join("good.json");
        std::fs::write(&good, serde_json::to_string(&sample(1.0, 1, 1.0)).unwrap()).unwrap();
        assert!(load_baseline(&good).is_ok());
        // Part of a run, or one that lost messages, is no baseline. Seen: both accepted.
        let mut part = sample(1.0, 1, 1.0);
        part.interrupted = true;
        let mut lossy = sample(1.0, 1, 1.0);
        lossy.conservation.ok = false;
        lossy.conservation.lost = 500;
        for (name, r) in [("part.json", part), ("lossy.json", lossy)] {
            let path = dir.path().join(name);
            std::fs::write(&path, serde_json::to_string(&r).unwrap()).unwrap();
            assert!(
                matches!(load_baseline(&path), Err(GateError::Unfit { .. })),
                "{name}"
            );
        }
    }

    /// Open loop is gated on the latency corrected for coordinated omission: the raw p99
    /// hides the messages that waited behind a stall. Seen: a raw 15 s p99 gated where the
    /// corrected one was 21 s.
    #[test]
    fn open_loop_is_gated_on_the_corrected_p99() {
        let mut r = sample(1000.0, 500, 1e6);
        r.params.rate = Some(5000.0);
        r.params.concurrency = None;
        let corrected = |p99_us| Percentiles {
            p99_us,
            ..r.latency.send.clone().unwrap()
        };
        r.latency.send_corrected = Some(corrected(900));
        assert_eq!(p99(&r), Some(900.0));
        r.runs_latency = [700, 800, 2000]
            .into_iter()
            .map(|v| Latencies {
                send_corrected: Some(corrected(v)),
                ..Default::default()
            })
            .collect();
        assert_eq!(p99(&r), Some(800.0));
        r.params.rate = None;
        assert_eq!(p99(&r), Some(500.0));
    }
}
