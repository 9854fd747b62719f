//! Per-run measurements: HdrHistograms of latency (µs) and outcome counts. One recorder per
//! driver task; recorders merge once at the end, so the hot path never takes a lock.

use crate::push::Outcome;
use crate::report::data::{distribution, IntervalPoint, Latencies, Percentiles, Series};
use hdrhistogram::Histogram;
use std::collections::BTreeMap;
use std::time::Duration;

/// The range a histogram starts with, µs; it grows past it (auto-resize). Clamped to it, a
/// latency or schedule lag beyond 120 s (a replay the target cannot keep up with) read as a
/// flat, plausible "120.00 s" in the summary, the JSON and the gate.
const INITIAL_MAX_US: u64 = 120_000_000;

/// A latency histogram (µs): 3 significant figures from 1 µs, the usual HdrHistogram set-up,
/// as long as the longest value recorded.
pub(crate) fn histogram() -> Histogram<u64> {
    // The bounds are constants (a test covers them), so this cannot fail at run time.
    #[allow(clippy::expect_used)]
    let mut h = Histogram::new_with_bounds(1, INITIAL_MAX_US, 3)
        .expect("constant histogram bounds are valid");
    h.auto(true);
    h
}

/// Adds one to `key`, allocating its String only the first time it is seen (the hot path of
/// a million-message run records the same few classes over and over).
fn count(map: &mut BTreeMap<String, u64>, key: &str) {
    match map.get_mut(key) {
        Some(n) => *n += 1,
        None => {
            map.insert(key.to_string(), 1);
        }
    }
}

/// `d` in whole µs, at least 1 (the histograms' lowest value).
pub(crate) fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

/// Most points a chart over time gets: past it, the interval doubles.
pub const MAX_INTERVALS: usize = 240;
/// The finest interval: a 1.7 s run still draws 34 points.
pub const FIRST_INTERVAL: Duration = Duration::from_millis(50);

/// One interval of a run: latency distributions (2 significant figures: a point per interval
/// needs no more, and 240 of them stay ~5 MB), completions, failures and offered starts.
#[derive(Debug, Clone, Default)]
pub struct Interval {
    pub send: Option<Histogram<u32>>,
    pub e2e: Option<Histogram<u32>>,
    /// Messages with a verdict in the interval.
    pub done: u64,
    /// Of those, not delivered.
    pub failed: u64,
    /// Open loop: messages scheduled to start in the interval (the offered load).
    pub offered: u64,
}

impl Interval {
    fn merge(&mut self, other: &Interval) {
        merge_into(&mut self.send, &other.send);
        merge_into(&mut self.e2e, &other.e2e);
        self.done += other.done;
        self.failed += other.failed;
        self.offered += other.offered;
    }
}

fn merge_into(mine: &mut Option<Histogram<u32>>, other: &Option<Histogram<u32>>) {
    if let Some(other) = other {
        let _ = mine.get_or_insert_with(coarse_histogram).add(other);
    }
}

fn coarse_histogram() -> Histogram<u32> {
    // Constant bounds (a test covers them): cannot fail at run time.
    #[allow(clippy::expect_used)]
    let mut h = Histogram::new_with_bounds(1, INITIAL_MAX_US, 2)
        .expect("constant histogram bounds are valid");
    h.auto(true);
    h
}

/// A run cut into intervals for the charts over time: `width` starts at [`FIRST_INTERVAL`]
/// and doubles (neighbours merged) whenever the run outgrows [`MAX_INTERVALS`], so a run of
/// any length has a bounded number of points and a short one still has many.
#[derive(Debug, Clone)]
pub struct Intervals {
    pub width: Duration,
    pub slots: Vec<Interval>,
}

impl Default for Intervals {
    fn default() -> Self {
        Intervals {
            width: FIRST_INTERVAL,
            slots: Vec::new(),
        }
    }
}

impl Intervals {
    fn slot(&mut self, at: Duration) -> &mut Interval {
        let mut i = (at.as_nanos() / self.width.as_nanos().max(1)) as usize;
        while i >= MAX_INTERVALS {
            self.coarsen();
            i /= 2;
        }
        if self.slots.len() <= i {
            self.slots.resize_with(i + 1, Interval::default);
        }
        &mut self.slots[i]
    }

    /// Doubles the width, merging neighbours.
    fn coarsen(&mut self) {
        let slots = std::mem::take(&mut self.slots);
        let mut merged: Vec<Interval> = Vec::with_capacity(slots.len().div_ceil(2));
        for (i, slot) in slots.into_iter().enumerate() {
            if i % 2 == 0 {
                merged.push(slot);
            } else if let Some(last) = merged.last_mut() {
                last.merge(&slot);
            }
        }
        self.slots = merged;
        self.width *= 2;
    }

    fn merge(&mut self, other: &Intervals) {
        let mut other = other.clone();
        while other.width < self.width {
            other.coarsen();
        }
        while self.width < other.width {
            self.coarsen();
        }
        if self.slots.len() < other.slots.len() {
            self.slots.resize_with(other.slots.len(), Interval::default);
        }
        for (mine, theirs) in self.slots.iter_mut().zip(&other.slots) {
            mine.merge(theirs);
        }
    }
}

#[derive(Debug, Clone)]
pub struct Recorder {
    /// Request -> response, as the client saw it.
    pub send: Histogram<u64>,
    /// Open loop only: intended start -> response (coordinated-omission corrected).
    pub send_corrected: Histogram<u64>,
    /// Produced -> verdict (end-to-end runs).
    pub e2e: Histogram<u64>,
    /// Open loop end-to-end, from the intended produce time.
    pub e2e_corrected: Histogram<u64>,
    /// Outcome class -> count.
    pub outcomes: BTreeMap<String, u64>,
    /// "class: reason" -> count, for the non-delivered ones.
    pub reasons: BTreeMap<String, u64>,
    /// Completions per second since the start of the measured window.
    pub timeline: Vec<u64>,
    /// The same, per outcome class (the HTML report's outcomes over time).
    pub outcome_timeline: BTreeMap<String, Vec<u64>>,
    /// Latency percentiles, errors and offered load over time.
    pub intervals: Intervals,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder {
            send: histogram(),
            send_corrected: histogram(),
            e2e: histogram(),
            e2e_corrected: histogram(),
            outcomes: BTreeMap::new(),
            reasons: BTreeMap::new(),
            timeline: Vec::new(),
            outcome_timeline: BTreeMap::new(),
            intervals: Intervals::default(),
        }
    }
}

impl Recorder {
    pub fn new() -> Self {
        Self::default()
    }

    /// One send finished at `at` (since the window started): its latency, and in open loop
    /// its latency from the intended start.
    pub fn record_send(
        &mut self,
        latency: Duration,
        from_intended: Option<Duration>,
        at: Duration,
    ) {
        let _ = self.send.record(micros(latency));
        if let Some(d) = from_intended {
            let _ = self.send_corrected.record(micros(d));
        }
        let slot = self.intervals.slot(at);
        let _ = slot
            .send
            .get_or_insert_with(coarse_histogram)
            .record(micros(latency));
    }

    pub fn record_e2e(&mut self, latency: Duration, from_intended: Option<Duration>, at: Duration) {
        let _ = self.e2e.record(micros(latency));
        if let Some(d) = from_intended {
            let _ = self.e2e_corrected.record(micros(d));
        }
        let slot = self.intervals.slot(at);
        let _ = slot
            .e2e
            .get_or_insert_with(coarse_histogram)
            .record(micros(latency));
    }

    /// Open loop: one message was scheduled to start at `at` (the offered load).
    pub fn record_offered(&mut self, at: Duration) {
        self.intervals.slot(at).offered += 1;
    }

    /// The verdict on one message; `at` is its completion time since the window started.
    pub fn record_outcome(&mut self, outcome: &Outcome, at: Duration) {
        count(&mut self.outcomes, outcome.class());
        if let Some(reason) = outcome.reason() {
            let key = format!("{}: {}", outcome.class(), reason);
            count(&mut self.reasons, &key);
        }
        let second = at.as_secs() as usize;
        if self.timeline.len() <= second {
            self.timeline.resize(second + 1, 0);
        }
        self.timeline[second] += 1;
        let per_class = match self.outcome_timeline.get_mut(outcome.class()) {
            Some(t) => t,
            None => self
                .outcome_timeline
                .entry(outcome.class().to_string())
                .or_default(),
        };
        if per_class.len() <= second {
            per_class.resize(second + 1, 0);
        }
        per_class[second] += 1;
        let slot = self.intervals.slot(at);
        slot.done += 1;
        if !outcome.is_delivered() {
            slot.failed += 1;
        }
    }

    pub fn completed(&self) -> u64 {
        self.outcomes.values().sum()
    }

    /// The report's latency figures.
    pub fn latencies(&self) -> Latencies {
        Latencies {
            send: Percentiles::of(&self.send),
            send_corrected: Percentiles::of(&self.send_corrected),
            end_to_end: Percentiles::of(&self.e2e),
            end_to_end_corrected: Percentiles::of(&self.e2e_corrected),
        }
    }

    /// What the HTML report draws: end-to-end latency when measured (and the send latency
    /// beside it), else send latency; and the run in intervals.
    pub fn series(&self) -> Series {
        let (name, raw, corrected) = if self.e2e.is_empty() {
            ("send", &self.send, &self.send_corrected)
        } else {
            ("end-to-end", &self.e2e, &self.e2e_corrected)
        };
        let width = self.intervals.width.as_secs_f64();
        let q = |h: &Option<Histogram<u32>>, q: f64| {
            h.as_ref()
                .filter(|h| !h.is_empty())
                .map(|h| h.value_at_quantile(q))
        };
        let intervals = self
            .intervals
            .slots
            .iter()
            .enumerate()
            .map(|(i, s)| IntervalPoint {
                start_secs: i as f64 * width,
                secs: width,
                done: s.done,
                failed: s.failed,
                offered: s.offered,
                send_p50_us: q(&s.send, 0.5),
                send_p99_us: q(&s.send, 0.99),
                e2e_p50_us: q(&s.e2e, 0.5),
                e2e_p99_us: q(&s.e2e, 0.99),
            })
            .collect();
        Series {
            latency: name.to_string(),
            distribution: distribution(raw),
            distribution_corrected: distribution(corrected),
            outcomes_per_sec: self.outcome_timeline.clone(),
            distribution_send: if self.e2e.is_empty() {
                Vec::new()
            } else {
                distribution(&self.send)
            },
            intervals,
        }
    }

    pub fn merge(&mut self, other: &Recorder) {
        let _ = self.send.add(&other.send);
        let _ = self.send_corrected.add(&other.send_corrected);
        let _ = self.e2e.add(&other.e2e);
        let _ = self.e2e_corrected.add(&other.e2e_corrected);
        for (k, v) in &other.outcomes {
            *self.outcomes.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &other.reasons {
            *self.reasons.entry(k.clone()).or_default() += v;
        }
        if self.timeline.len() < other.timeline.len() {
            self.timeline.resize(other.timeline.len(), 0);
        }
        for (i, v) in other.timeline.iter().enumerate() {
            self.timeline[i] += v;
        }
        for (class, other) in &other.outcome_timeline {
            let mine = self.outcome_timeline.entry(class.clone()).or_default();
            if mine.len() < other.len() {
                mine.resize(other.len(), 0);
            }
            for (i, v) in other.iter().enumerate() {
                mine[i] += v;
            }
        }
        self.intervals.merge(&other.intervals);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_and_merges() {
        let mut a = Recorder::new();
        let mut b = Recorder::new();
        a.record_send(Duration::from_micros(100), None, Duration::from_millis(10));
        b.record_send(
            Duration::from_micros(300),
            Some(Duration::from_micros(900)),
            Duration::from_millis(1500),
        );
        a.record_outcome(&Outcome::Delivered, Duration::from_millis(10));
        b.record_outcome(
            &Outcome::TokenInvalid {
                reason: "Unregistered".into(),
                timestamp_ms: None,
            },
            Duration::from_millis(1500),
        );
        a.merge(&b);
        assert_eq!(a.send.len(), 2);
        assert_eq!(a.send_corrected.len(), 1);
        assert_eq!(a.completed(), 2);
        assert_eq!(a.reasons.get("token_invalid: Unregistered"), Some(&1));
        assert_eq!(a.timeline, vec![1, 1]);
        assert_eq!(a.outcome_timeline["delivered"], vec![1]);
        assert_eq!(a.outcome_timeline["token_invalid"], vec![0, 1]);
        assert!(a.send.max() >= 300 && a.send.max() < 302);
        // 50 ms intervals: the two land in slots 0 and 30.
        assert_eq!(a.intervals.width, FIRST_INTERVAL);
        assert_eq!(a.intervals.slots.len(), 31);
        assert_eq!(
            (a.intervals.slots[0].done, a.intervals.slots[30].failed),
            (1, 1)
        );
    }

    /// A latency past the histograms' initial 120 s is recorded as it is, in the figures, the
    /// intervals and a merge (it was clamped to 120 s).
    #[test]
    fn latencies_beyond_two_minutes_are_kept() {
        let mut r = Recorder::new();
        let long = Duration::from_secs(300);
        r.record_send(Duration::from_millis(5), Some(long), Duration::ZERO);
        r.record_e2e(long, Some(long * 2), Duration::ZERO);
        let mut merged = Recorder::new();
        merged.merge(&r);
        for r in [&r, &merged] {
            let l = r.latencies();
            let max = |p: Option<Percentiles>| p.map(|p| p.max_us / 1_000_000);
            assert_eq!(max(l.send_corrected), Some(300));
            assert_eq!(max(l.end_to_end), Some(300));
            assert_eq!(max(l.end_to_end_corrected), Some(600));
            // Two significant figures there: 300 s within 1 %.
            let slot = r.intervals.slots[0].e2e.as_ref().unwrap();
            assert!(
                (300..=303).contains(&(slot.max() / 1_000_000)),
                "{}",
                slot.max()
            );
        }
    }

    #[test]
    fn a_long_run_keeps_a_bounded_number_of_intervals() {
        let mut r = Recorder::new();
        for ms in (0..600_000).step_by(100) {
            let at = Duration::from_millis(ms);
            r.record_send(Duration::from_micros(100 + ms / 100), None, at);
            r.record_outcome(&Outcome::Delivered, at);
        }
        assert!(r.intervals.slots.len() <= MAX_INTERVALS);
        // 10 minutes: 50 ms doubled to 3.2 s (188 intervals).
        assert_eq!(r.intervals.width, Duration::from_millis(3200));
        assert_eq!(r.intervals.slots.iter().map(|s| s.done).sum::<u64>(), 6000);
        // Merging a finer recorder coarsens it first.
        let mut fine = Recorder::new();
        fine.record_outcome(&Outcome::Delivered, Duration::from_millis(7000));
        r.merge(&fine);
        assert_eq!(r.intervals.slots[2].done, 33);
    }
}
