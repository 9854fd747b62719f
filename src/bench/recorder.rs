//! Per-run measurements: HdrHistograms of latency (µs) and outcome counts. One recorder per
//! driver task; recorders merge once at the end, so the hot path never takes a lock.

use crate::push::Outcome;
use crate::report::data::{distribution, Latencies, Percentiles, Series};
use hdrhistogram::Histogram;
use std::collections::BTreeMap;
use std::time::Duration;

/// Highest latency we track; anything slower is clamped (and still counted).
const MAX_LATENCY_US: u64 = 120_000_000;

fn histogram() -> Histogram<u64> {
    // 3 significant figures over 1 µs .. 120 s, the usual HdrHistogram set-up. The bounds are
    // constants (a test covers them), so this cannot fail at run time.
    #[allow(clippy::expect_used)]
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("constant histogram bounds are valid")
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

fn micros(d: Duration) -> u64 {
    (d.as_micros() as u64).clamp(1, MAX_LATENCY_US)
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
        }
    }
}

impl Recorder {
    pub fn new() -> Self {
        Self::default()
    }

    /// One send: its latency, and in open loop its latency from the intended start.
    pub fn record_send(&mut self, latency: Duration, from_intended: Option<Duration>) {
        let _ = self.send.record(micros(latency));
        if let Some(d) = from_intended {
            let _ = self.send_corrected.record(micros(d));
        }
    }

    pub fn record_e2e(&mut self, latency: Duration, from_intended: Option<Duration>) {
        let _ = self.e2e.record(micros(latency));
        if let Some(d) = from_intended {
            let _ = self.e2e_corrected.record(micros(d));
        }
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

    /// What the HTML report draws: end-to-end latency when measured, else send latency.
    pub fn series(&self) -> Series {
        let (name, raw, corrected) = if self.e2e.is_empty() {
            ("send", &self.send, &self.send_corrected)
        } else {
            ("end-to-end", &self.e2e, &self.e2e_corrected)
        };
        Series {
            latency: name.to_string(),
            distribution: distribution(raw),
            distribution_corrected: distribution(corrected),
            outcomes_per_sec: self.outcome_timeline.clone(),
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_and_merges() {
        let mut a = Recorder::new();
        let mut b = Recorder::new();
        a.record_send(Duration::from_micros(100), None);
        b.record_send(Duration::from_micros(300), Some(Duration::from_micros(900)));
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
    }
}
