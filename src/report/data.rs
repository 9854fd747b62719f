//! The bench report: one serialisable model (JSON, schema `pusher-bench/1`), rendered as a
//! human summary or HdrHistogram's percentile-distribution text. The JSON schema is documented
//! in README.md ("Bench report") and checked by tests.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write as _;

pub const SCHEMA: &str = "pusher-bench/1";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Report {
    /// Always `pusher-bench/1` for this layout.
    pub schema: String,
    pub pusher_version: String,
    /// Unix seconds when the run started.
    pub started_at: u64,
    pub params: Params,
    /// Measured window (warm-up excluded), seconds.
    pub duration_secs: f64,
    /// Completed messages per second over the measured window (median run when repeated).
    pub throughput: f64,
    /// Operations/s of a fixed CPU workload measured in the same run: the gate divides by it,
    /// so a slower or busier machine does not read as a regression.
    pub calibration: f64,
    pub latency: Latencies,
    pub outcomes: BTreeMap<String, u64>,
    pub reasons: BTreeMap<String, u64>,
    pub conservation: Conservation,
    /// Completions per second of the measured window.
    pub timeline: Vec<u64>,
    /// Throughput of each repetition, when `--repeat` > 1.
    pub runs: Vec<f64>,
    /// p99 latency (end-to-end, else send) of each repetition, µs; the gate uses their median.
    #[serde(default)]
    pub runs_p99_us: Vec<u64>,
    /// The latencies of each repetition: `report compare` takes their spread as the noise.
    #[serde(default)]
    pub runs_latency: Vec<Latencies>,
    /// Stopped by SIGINT or SIGTERM before the plan's end: the figures cover what ran.
    #[serde(default)]
    pub interrupted: bool,
    /// Peak resident memory of the process, bytes (Linux), if known.
    pub peak_rss_bytes: Option<u64>,
    /// Chart data for the HTML report (absent in reports written before it existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub series: Option<Series>,
    /// `pusher replay` runs only: the capture, the pace and how well the schedule was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay: Option<ReplayInfo>,
    /// `bench --api` only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api: Option<ApiFigures>,
    /// `bench --events` only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<EventFigures>,
}

/// What the HTML report draws, kept in the JSON so a report can be drawn again later.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Series {
    /// Which latency the distributions are of: `end-to-end` when measured, else `send`.
    pub latency: String,
    /// Percentile distribution, HdrHistogram's iteration: `[percentile (0-100), µs]` pairs.
    pub distribution: Vec<(f64, u64)>,
    /// The same from the intended start (open loop, coordinated-omission corrected).
    #[serde(default)]
    pub distribution_corrected: Vec<(f64, u64)>,
    /// Completions per second of the measured window, per outcome class.
    pub outcomes_per_sec: BTreeMap<String, Vec<u64>>,
    /// End-to-end runs: the send latency's distribution too, drawn beside the end-to-end one.
    #[serde(default)]
    pub distribution_send: Vec<(f64, u64)>,
    /// The run in intervals (50 ms, doubled as needed to stay under 240 points): latency
    /// percentiles, completions, failures and the offered load over time.
    #[serde(default)]
    pub intervals: Vec<IntervalPoint>,
}

/// One interval of the run.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct IntervalPoint {
    /// Start, seconds since the measured window began.
    pub start_secs: f64,
    pub secs: f64,
    pub done: u64,
    /// Verdicts other than delivered.
    pub failed: u64,
    /// Open loop: messages scheduled to start in it.
    pub offered: u64,
    pub send_p50_us: Option<u64>,
    pub send_p99_us: Option<u64>,
    pub e2e_p50_us: Option<u64>,
    pub e2e_p99_us: Option<u64>,
}

/// Percentile distribution points (about 100 for a typical run).
pub fn distribution<T: hdrhistogram::Counter>(h: &Histogram<T>) -> Vec<(f64, u64)> {
    if h.is_empty() {
        return Vec::new();
    }
    h.iter_quantiles(2)
        .map(|v| (v.quantile_iterated_to() * 100.0, v.value_iterated_to()))
        .collect()
}

/// `bench --api`'s own figures: the HTTP tier beside a trivial handler on the same stack.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ApiFigures {
    /// Notifications per request.
    pub batch: usize,
    pub requests_per_s: f64,
    /// The same load against a handler that only reads the body and answers.
    pub baseline_requests_per_s: f64,
    pub baseline_p99_us: Option<u64>,
    /// `requests_per_s / baseline_requests_per_s`, measured in the same run.
    pub ratio_to_baseline: f64,
    /// Notifications accepted in the measured window.
    pub accepted_measured: u64,
}

/// `bench --events`' own figures: the routing rate and the cooldown check (every event sent
/// twice, two routers: each user gets the message once).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct EventFigures {
    /// Events per request.
    pub batch: usize,
    pub routers: usize,
    pub users: u64,
    /// Events accepted by the API (every one sent twice).
    pub events: u64,
    /// Events the routers handled per second, from the first accepted to the last routed.
    pub routed_per_s: f64,
    /// Pushes the routers produced: one per user when the cooldown holds.
    pub pushes: u64,
    /// Events that sent nothing because of the cooldown.
    pub cooldown_skipped: u64,
    /// Users whose device got the message more than once (0 when the cooldown holds).
    pub sent_twice: u64,
}

/// A replay's own figures.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ReplayInfo {
    /// The capture file, or `kafka:TOPIC` when replayed from a topic range.
    pub source: String,
    /// Where the messages went: `kafka TOPIC at BROKERS`, `fake apns (embedded)`, or the URL.
    pub target: String,
    /// `1x`, `10x` (the recorded pace times this) or `5000/s` (a fixed rate).
    pub pace: String,
    pub looped: bool,
    pub capture_messages: u64,
    /// From the capture's first message to its last, seconds.
    pub capture_secs: f64,
    /// How late sends started against the schedule (µs).
    pub schedule_lag: Option<Percentiles>,
    /// The latest start in each second of the replay, µs.
    pub lag_per_sec_us: Vec<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Params {
    /// `sender-only` or `end-to-end`.
    pub mode: String,
    pub platform: String,
    /// Fake server behaviour profile, or `external` for a real endpoint.
    pub profile: String,
    pub transport: String,
    pub count: Option<u64>,
    pub duration_secs: Option<f64>,
    pub warmup_secs: f64,
    /// Closed loop: in-flight messages.
    pub concurrency: Option<usize>,
    /// Open loop: messages per second.
    pub rate: Option<f64>,
    pub repeat: usize,
    /// Threads the sender and the pipeline ran on (the runtime's workers).
    #[serde(default)]
    pub threads: usize,
    /// The workload's shape (`--payload-size` as given, `--invalid-ratio`, `--connections`):
    /// the gate refuses a baseline of another. None in a replay (the capture is the
    /// workload) and in reports from before they were recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_size: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invalid_ratio: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connections: Option<usize>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Latencies {
    /// Request -> response.
    pub send: Option<Percentiles>,
    /// Open loop: intended start -> response (coordinated-omission corrected).
    pub send_corrected: Option<Percentiles>,
    /// Produced -> verdict.
    pub end_to_end: Option<Percentiles>,
    pub end_to_end_corrected: Option<Percentiles>,
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Percentiles {
    pub count: u64,
    pub min_us: u64,
    pub mean_us: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Option<Percentiles> {
        if h.is_empty() {
            return None;
        }
        Some(Percentiles {
            count: h.len(),
            min_us: h.min(),
            mean_us: h.mean(),
            p50_us: h.value_at_quantile(0.50),
            p90_us: h.value_at_quantile(0.90),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
        })
    }
}

/// Every message accounted for at every stage: generated = produced = consumed = answered =
/// committed. Stages a mode does not have are `None`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Conservation {
    pub generated: u64,
    pub produced: Option<u64>,
    pub consumed: Option<u64>,
    /// Requests the fake server answered (its own counter), when the fake is in-process.
    pub server_answered: Option<u64>,
    /// Messages that never reach a server (malformed or expired: replayed as they were
    /// captured, or refused by the pipeline end to end), which `server_answered` need not
    /// cover.
    #[serde(default)]
    pub not_sent: u64,
    /// Messages with a final outcome.
    pub answered: u64,
    pub committed: Option<u64>,
    /// Interrupted runs: messages generated that had no outcome yet when the run stopped
    /// waiting for them (see `interrupt::DRAIN`); 0 otherwise.
    #[serde(default)]
    pub in_flight: u64,
    /// Messages that can never be answered: dropped by Kafka before they were consumed, or
    /// never produced. Not 0 fails the run, interrupted or not; `lost_cause` says why.
    #[serde(default)]
    pub lost: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lost_cause: Option<String>,
    pub ok: bool,
}

impl Conservation {
    /// What the check found, in words, for the text and HTML reports alike.
    pub fn verdict(&self) -> String {
        match (self.ok, self.in_flight) {
            (true, _) => "ok".to_string(),
            (false, n) if self.lost > 0 => format!(
                "LOST {} ({}){}",
                self.lost,
                self.lost_cause.as_deref().unwrap_or("cause unknown"),
                match n {
                    0 => String::new(),
                    n => format!(", {n} still in flight"),
                }
            ),
            (false, 0) => "MISMATCH".to_string(),
            (false, n) => format!("incomplete: {n} still in flight when the run was interrupted"),
        }
    }

    /// Checks the stages that exist. Retries make the server answer more requests than there
    /// are messages, so `server_answered` only has to cover every message.
    pub fn check(mut self) -> Self {
        let g = self.generated;
        let stages_equal = [self.produced, self.consumed, self.committed]
            .iter()
            .flatten()
            .all(|&n| n == g);
        let server_ok = self
            .server_answered
            .is_none_or(|n| n.saturating_add(self.not_sent) >= g);
        self.ok = stages_equal && self.answered == g && server_ok;
        self
    }
}

pub fn fmt_us(us: u64) -> String {
    if us >= 1_000_000 {
        format!("{:.2} s", us as f64 / 1e6)
    } else if us >= 1_000 {
        format!("{:.2} ms", us as f64 / 1e3)
    } else {
        format!("{us} µs")
    }
}

impl Report {
    /// The human summary printed at the end of a run.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let p = &self.params;
        let load = match (p.concurrency, p.rate) {
            (_, Some(rate)) => format!("open loop at {rate:.0}/s"),
            (Some(c), None) => format!("closed loop, {c} in flight"),
            _ => match &self.replay {
                Some(r) => format!("open loop, {} pace", r.pace),
                None => String::from("?"),
            },
        };
        let _ = writeln!(
            s,
            "pusher {}: {} {} via {} ({}), profile {}",
            if self.replay.is_some() {
                "replay"
            } else {
                "bench"
            },
            p.mode,
            p.platform,
            p.transport,
            load,
            p.profile
        );
        if self.interrupted {
            let _ = writeln!(
                s,
                "  INTERRUPTED  stopped by a signal before the end: the figures cover what ran"
            );
        }
        let _ = writeln!(
            s,
            "  throughput   {:>12.0} msg/s over {:.2} s{}",
            self.throughput,
            self.duration_secs,
            if self.runs.len() > 1 {
                format!(
                    " (median of {} runs: {})",
                    self.runs.len(),
                    fmt_runs(&self.runs)
                )
            } else {
                String::new()
            }
        );
        if let Some(e) = &self.events {
            let _ = writeln!(
                s,
                "  events       {} events ({} users, each event twice, {} per request) routed at {:.0} events/s by {} routers",
                e.events, e.users, e.batch, e.routed_per_s, e.routers
            );
            let _ = writeln!(
                s,
                "  cooldown     {} pushes for {} users, {} skipped by the cooldown, {} users reached twice{}",
                e.pushes,
                e.users,
                e.cooldown_skipped,
                e.sent_twice,
                if e.sent_twice == 0 && e.pushes == e.users { " (holds)" } else { " (BROKEN)" }
            );
        }
        if let Some(api) = &self.api {
            let _ = writeln!(
                s,
                "  api          {:>12.0} requests/s of {} notifications; trivial handler on the same stack {:.0} requests/s (ratio {:.2}, p99 {})",
                api.requests_per_s,
                api.batch,
                api.baseline_requests_per_s,
                api.ratio_to_baseline,
                api.baseline_p99_us.map_or_else(|| "-".to_owned(), fmt_us),
            );
        }
        // The header right above its rows: the events and api lines are not latencies.
        let _ = writeln!(
            s,
            "  latency      {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
            "p50", "p90", "p99", "p99.9", "max", "count"
        );
        let rows = [
            ("send", &self.latency.send),
            ("send (CO)", &self.latency.send_corrected),
            ("end-to-end", &self.latency.end_to_end),
            ("e2e (CO)", &self.latency.end_to_end_corrected),
        ];
        for (name, pct) in rows {
            if let Some(q) = pct {
                let _ = writeln!(
                    s,
                    "  {:<12} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
                    name,
                    fmt_us(q.p50_us),
                    fmt_us(q.p90_us),
                    fmt_us(q.p99_us),
                    fmt_us(q.p999_us),
                    fmt_us(q.max_us),
                    q.count
                );
            }
        }
        let outcomes: Vec<String> = self
            .outcomes
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        let _ = writeln!(s, "  outcomes     {}", outcomes.join(", "));
        for (reason, n) in &self.reasons {
            let _ = writeln!(s, "    {reason}: {n}");
        }
        let c = &self.conservation;
        let stage =
            |name: &str, v: Option<u64>| v.map(|n| format!(" = {name} {n}")).unwrap_or_default();
        let verdict = c.verdict();
        let _ = writeln!(
            s,
            "  conservation generated {}{}{} = answered {}{}{}: {}",
            c.generated,
            stage("produced", c.produced),
            stage("consumed", c.consumed),
            c.answered,
            stage("committed", c.committed),
            c.server_answered
                .map(|n| match c.not_sent {
                    0 => format!(" (server saw {n} requests)"),
                    k => format!(" (server saw {n} requests; {k} malformed or expired, not sent)"),
                })
                .unwrap_or_default(),
            verdict
        );
        if let Some(r) = &self.replay {
            if let Some(lag) = &r.schedule_lag {
                let _ = writeln!(
                    s,
                    "  schedule lag p50 {}, p99 {}, p99.9 {}, max {} ({} messages of {} in the capture{})",
                    fmt_us(lag.p50_us),
                    fmt_us(lag.p99_us),
                    fmt_us(lag.p999_us),
                    fmt_us(lag.max_us),
                    lag.count,
                    r.capture_messages,
                    if r.looped { ", looped" } else { "" }
                );
            }
        }
        if let Some(rss) = self.peak_rss_bytes {
            let _ = writeln!(s, "  peak RSS     {:.1} MB", rss as f64 / 1e6);
        }
        let _ = writeln!(s, "  calibration  {:.0} ops/s", self.calibration);
        s
    }
}

fn fmt_runs(runs: &[f64]) -> String {
    runs.iter()
        .map(|r| format!("{r:.0}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The footer line of a `.hgrm` of an interrupted run (the figures cover what ran).
pub const HGRM_INTERRUPTED: &str =
    "#[Interrupted: a signal stopped the run before its end; this is the report's round]";

/// HdrHistogram's percentile-distribution text (the `.hgrm` format its plotters read), in
/// milliseconds. Written by hand: the hdrhistogram crate has binary serialisation only.
pub fn hgrm(h: &Histogram<u64>) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:>12} {:>14} {:>10} {:>14}\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    );
    let mut total = 0u64;
    for v in h.iter_quantiles(5) {
        total += v.count_since_last_iteration();
        let q = v.quantile_iterated_to();
        let inv = if q < 1.0 {
            format!("{:>14.2}", 1.0 / (1.0 - q))
        } else {
            String::new()
        };
        let _ = writeln!(
            s,
            "{:>12.3} {:>14.12} {:>10} {}",
            v.value_iterated_to() as f64 / 1000.0,
            q,
            total,
            inv
        );
    }
    let _ = writeln!(
        s,
        "#[Mean    = {:>12.3}, StdDeviation   = {:>12.3}]",
        h.mean() / 1000.0,
        h.stdev() / 1000.0
    );
    let _ = writeln!(
        s,
        "#[Max     = {:>12.3}, Total count    = {:>12}]",
        h.max() as f64 / 1000.0,
        h.len()
    );
    let _ = writeln!(
        s,
        "#[Buckets = {:>12}, SubBuckets     = {:>12}]",
        h.buckets(),
        h.distinct_values()
    );
    s
}

/// Peak resident set size of this process (Linux `VmHWM`).
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// The latency table's header stands right above its rows: the `api` line (a throughput)
    /// once sat between them.
    #[test]
    fn the_latency_header_heads_the_latency_rows() {
        let mut report = crate::report::gate::tests::sample(1000.0, 900, 1e6);
        report.api = Some(ApiFigures {
            batch: 100,
            requests_per_s: 10.0,
            baseline_requests_per_s: 1000.0,
            ratio_to_baseline: 0.01,
            ..ApiFigures::default()
        });
        let summary = report.summary();
        let lines: Vec<&str> = summary.lines().collect();
        let header = lines
            .iter()
            .position(|l| l.trim_start().starts_with("latency"))
            .unwrap();
        assert!(
            lines[header + 1].trim_start().starts_with("send"),
            "{summary}"
        );
        assert!(
            lines
                .iter()
                .position(|l| l.contains("requests/s of"))
                .unwrap()
                < header,
            "{summary}"
        );
    }
}
