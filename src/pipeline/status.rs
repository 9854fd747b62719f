//! The line `pusher run` logs every `log_interval`: what it did since the last one.

use super::run::Counters;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// The line `pusher run` logs every `log_interval`: what it did since the last one.
pub(super) struct StatusLine {
    pub(super) tick: Option<tokio::time::Interval>,
    pub(super) since: tokio::time::Instant,
    pub(super) finished: u64,
    pub(super) outcomes: BTreeMap<String, u64>,
}

impl StatusLine {
    pub(super) fn new(every: Duration) -> StatusLine {
        let tick = (!every.is_zero()).then(|| {
            let mut t = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            t
        });
        StatusLine {
            tick,
            since: tokio::time::Instant::now(),
            finished: 0,
            outcomes: BTreeMap::new(),
        }
    }

    pub(super) async fn tick(&mut self) {
        match &mut self.tick {
            Some(t) => {
                t.tick().await;
            }
            None => std::future::pending().await,
        }
    }

    pub(super) fn log(
        &mut self,
        counters: &Counters,
        in_flight: usize,
        lag: i64,
        paused: Vec<String>,
        held: Vec<String>,
    ) {
        let finished = counters.finished.load(Ordering::Relaxed);
        let outcomes = counters.outcomes();
        let secs = self.since.elapsed().as_secs_f64().max(0.001);
        let rate = (finished - self.finished) as f64 / secs;
        let mut delta: Vec<String> = outcomes
            .iter()
            .filter_map(|(k, n)| {
                let d = n - self.outcomes.get(k).copied().unwrap_or(0);
                (d > 0).then(|| format!("{k}={d}"))
            })
            .collect();
        if delta.is_empty() {
            delta.push("none".into());
        }
        tracing::info!(
            rate = format!("{rate:.0}/s"),
            outcomes = delta.join(" "),
            in_flight,
            lag = (lag >= 0).then_some(lag),
            paused = (!paused.is_empty()).then(|| paused.join(",")),
            held = (!held.is_empty()).then(|| held.join(",")),
            "Status."
        );
        self.since = tokio::time::Instant::now();
        self.finished = finished;
        self.outcomes = outcomes;
    }
}
