//! Drives a send function under a load plan: closed loop (a fixed number in flight) or open
//! loop (a fixed schedule of intended start times, goose/wrk2 style, so a slow target cannot
//! slow the schedule down and latency can be corrected for coordinated omission).

use super::interrupt::DRAIN;
use super::recorder::Recorder;
use crate::progress::Progress;
use crate::push::Outcome;
use futures_util::stream::{FuturesUnordered, StreamExt};
use std::future::Future;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How load is applied.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Load {
    /// `concurrency` messages in flight at all times.
    Closed { concurrency: usize },
    /// `rate` message starts per second, whatever the target does.
    Open { rate: f64 },
}

/// What to run: a count or a duration (whichever ends first), after a warm-up whose messages
/// are sent and counted but not measured.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadPlan {
    pub count: Option<u64>,
    pub duration: Option<Duration>,
    pub warmup: Duration,
    pub load: Load,
}

/// What a drive produced.
#[derive(Debug)]
pub struct Driven {
    /// Measurements of the measured window only.
    pub recorder: Recorder,
    /// Messages handed to `send`, warm-up included.
    pub sent: u64,
    /// Messages that came back with an outcome, warm-up included.
    pub answered: u64,
    /// Length of the measured window.
    pub elapsed: Duration,
    /// Open loop only: how late sends started against their schedule.
    pub schedule_lag: Option<hdrhistogram::Histogram<u64>>,
    /// Stopped by `stop` before the plan's end.
    pub interrupted: bool,
    /// Interrupted runs: sends still without an answer when the drain time ran out.
    pub in_flight: u64,
}

/// Runs `send` on items from `next_item` (called with a sequence number; `None` ends the run)
/// under `plan`. `progress` counts measured answers only. Once `stop` is cancelled no message
/// starts; those in flight get [`DRAIN`] to answer.
pub async fn drive<I, F, Fut>(
    plan: &LoadPlan,
    mut next_item: impl FnMut(u64) -> Option<I>,
    send: F,
    stop: &CancellationToken,
    progress: &Progress,
) -> Driven
where
    F: Fn(I) -> Fut,
    Fut: Future<Output = Outcome>,
{
    let mut recorder = Recorder::new();
    let mut in_flight = FuturesUnordered::new();
    let begin = Instant::now();
    let warm_until = begin + plan.warmup;
    let mut measure_start: Option<Instant> = None;
    if plan.warmup.is_zero() {
        measure_start = Some(begin);
        progress.measuring();
    }
    let mut measured_started = 0u64;
    let (mut sent, mut answered) = (0u64, 0u64);
    let mut exhausted = false;
    let mut lag = match plan.load {
        Load::Open { .. } => {
            hdrhistogram::Histogram::<u64>::new_with_bounds(1, 120_000_000, 3).ok()
        }
        Load::Closed { .. } => None,
    };
    let interval = match plan.load {
        Load::Open { rate } => Duration::from_secs_f64(1.0 / rate.max(1e-9)),
        Load::Closed { .. } => Duration::ZERO,
    };
    let mut next_due = begin;
    // Set when `stop` is seen: in-flight sends may answer until then.
    let mut drain_until: Option<Instant> = None;

    // May one more message start now? (The plan's count and duration bound the measured window.)
    let more = |now: Instant, measure_start: Option<Instant>, measured_started: u64| -> bool {
        if stop.is_cancelled() {
            return false;
        }
        if let (Some(d), Some(ms)) = (plan.duration, measure_start) {
            if now >= ms + d {
                return false;
            }
        }
        plan.count.is_none_or(|c| measured_started < c)
    };

    loop {
        let now = Instant::now();
        if measure_start.is_none() && now >= warm_until && !stop.is_cancelled() {
            measure_start = Some(now);
            tracing::info!("Warm-up over: measuring.");
            progress.measuring();
        }
        if stop.is_cancelled() && drain_until.is_none() {
            drain_until = Some(now + DRAIN);
        }
        let can_start = !exhausted && more(now, measure_start, measured_started);
        match plan.load {
            Load::Closed { concurrency } => {
                while !exhausted
                    && in_flight.len() < concurrency.max(1)
                    && more(Instant::now(), measure_start, measured_started)
                {
                    let Some(item) = next_item(sent) else {
                        exhausted = true;
                        break;
                    };
                    let measured = measure_start.is_some();
                    measured_started += measured as u64;
                    sent += 1;
                    in_flight.push(timed(Box::pin(send(item)), None, measured));
                }
            }
            Load::Open { .. } => {
                // Start everything that is due; a late start is measured, never skipped.
                while can_start
                    && !exhausted
                    && Instant::now() >= next_due
                    && more(Instant::now(), measure_start, measured_started)
                {
                    let Some(item) = next_item(sent) else {
                        exhausted = true;
                        break;
                    };
                    let measured = measure_start.is_some();
                    measured_started += measured as u64;
                    sent += 1;
                    let intended = next_due;
                    next_due += interval;
                    if let (Some(h), true) = (lag.as_mut(), measured) {
                        let _ = h.record((Instant::now() - intended).as_micros().max(1) as u64);
                    }
                    if let Some(ms) = measure_start {
                        recorder.record_offered(intended.saturating_duration_since(ms));
                    }
                    in_flight.push(timed(Box::pin(send(item)), Some(intended), measured));
                }
            }
        }

        let still_starting = !exhausted && more(Instant::now(), measure_start, measured_started);
        if in_flight.is_empty() && !still_starting {
            break;
        }
        if drain_until.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        let wait_for_schedule = matches!(plan.load, Load::Open { .. }) && still_starting;
        // What may end the wait besides an answer: the schedule, the warm-up's end (closed
        // loop), the stop, and once stopped the end of the drain.
        let wake = if wait_for_schedule {
            Some(next_due)
        } else if measure_start.is_none() && still_starting {
            Some(warm_until)
        } else {
            drain_until
        };
        let done = tokio::select! {
            biased;
            done = in_flight.next(), if !in_flight.is_empty() => done,
            _ = stop.cancelled(), if drain_until.is_none() => None,
            _ = sleep_until_some(wake) => None,
        };
        if let Some((outcome, started, intended, measured)) = done {
            let finished = Instant::now();
            answered += 1;
            if measured {
                let since = measure_start
                    .map(|ms| finished.saturating_duration_since(ms))
                    .unwrap_or_default();
                recorder.record_send(finished - started, intended.map(|i| finished - i), since);
                recorder.record_outcome(&outcome, since);
                progress.set_position(recorder.completed());
            }
        }
    }
    let elapsed = measure_start
        .map(|ms| Instant::now() - ms)
        .unwrap_or_default();
    Driven {
        recorder,
        sent,
        answered,
        elapsed,
        schedule_lag: lag,
        interrupted: drain_until.is_some(),
        in_flight: in_flight.len() as u64,
    }
}

/// Sleeps until `at`, or forever when there is nothing to wake for.
pub(crate) async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// One send, with when it really started, when it was meant to start, and whether it is in
/// the measured window.
async fn timed<Fut: Future<Output = Outcome>>(
    fut: Fut,
    intended: Option<Instant>,
    measured: bool,
) -> (Outcome, Instant, Option<Instant>, bool) {
    let started = Instant::now();
    let outcome = fut.await;
    (outcome, started, intended, measured)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn closed_loop_sends_exactly_count_and_keeps_concurrency() {
        let in_flight = std::cell::Cell::new(0usize);
        let peak = std::cell::Cell::new(0usize);
        let plan = LoadPlan {
            count: Some(100),
            duration: None,
            warmup: Duration::ZERO,
            load: Load::Closed { concurrency: 8 },
        };
        let driven = drive(
            &plan,
            Some,
            |_i| {
                in_flight.set(in_flight.get() + 1);
                peak.set(peak.get().max(in_flight.get()));
                let in_flight = &in_flight;
                async move {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    in_flight.set(in_flight.get() - 1);
                    Outcome::Delivered
                }
            },
            &CancellationToken::new(),
            &Progress::hidden(),
        )
        .await;
        assert_eq!(driven.sent, 100);
        assert_eq!(driven.answered, 100);
        assert_eq!(driven.recorder.completed(), 100);
        assert_eq!(peak.get(), 8);
        // 100 messages, 8 at a time, 10 ms each: 13 rounds.
        assert_eq!(driven.elapsed, Duration::from_millis(130));
    }

    #[tokio::test(start_paused = true)]
    async fn open_loop_keeps_the_schedule_and_corrects_latency() {
        // 1000/s for 100 messages against a target that takes 50 ms: the schedule does not
        // slow down, so 50 are in flight at once and the run lasts ~0.1 s + 50 ms.
        let plan = LoadPlan {
            count: Some(100),
            duration: None,
            warmup: Duration::ZERO,
            load: Load::Open { rate: 1000.0 },
        };
        let driven = drive(
            &plan,
            Some,
            |_i| async {
                tokio::time::sleep(Duration::from_millis(50)).await;
                Outcome::Delivered
            },
            &CancellationToken::new(),
            &Progress::hidden(),
        )
        .await;
        assert_eq!(driven.answered, 100);
        assert!(
            driven.elapsed >= Duration::from_millis(149)
                && driven.elapsed <= Duration::from_millis(152),
            "{:?}",
            driven.elapsed
        );
        let p = driven.recorder.send.value_at_quantile(0.5);
        assert!((49_000..=51_100).contains(&p), "{p}");
        assert_eq!(driven.recorder.send_corrected.len(), 100);
    }

    #[tokio::test(start_paused = true)]
    async fn warmup_messages_are_sent_but_not_measured() {
        let plan = LoadPlan {
            count: Some(10),
            duration: None,
            warmup: Duration::from_millis(100),
            load: Load::Closed { concurrency: 1 },
        };
        let progress = Progress::hidden();
        let driven = drive(
            &plan,
            Some,
            |_i| async {
                tokio::time::sleep(Duration::from_millis(10)).await;
                Outcome::Delivered
            },
            &CancellationToken::new(),
            &progress,
        )
        .await;
        assert_eq!(driven.recorder.completed(), 10);
        assert_eq!(driven.sent, 20, "10 during warm-up, 10 measured");
        assert_eq!(driven.answered, driven.sent);
        // The bar counts towards --count: measured answers only, never 20/10.
        assert_eq!(progress.position(), 10);
    }

    /// Stopped (SIGINT) half-way: nothing starts after the stop, everything in flight
    /// answers, and the run says it was interrupted.
    #[tokio::test(start_paused = true)]
    async fn a_stop_ends_the_run_after_the_messages_in_flight() {
        let plan = LoadPlan {
            count: Some(1000),
            duration: None,
            warmup: Duration::ZERO,
            load: Load::Closed { concurrency: 4 },
        };
        let stop = CancellationToken::new();
        let stopper = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(55)).await;
            stopper.cancel();
        });
        let driven = drive(
            &plan,
            Some,
            |_i| async {
                tokio::time::sleep(Duration::from_millis(10)).await;
                Outcome::Delivered
            },
            &stop,
            &Progress::hidden(),
        )
        .await;
        assert!(driven.interrupted);
        assert_eq!(driven.in_flight, 0);
        // Six rounds of 4 started by 55 ms (0, 10, ... 50 ms), all answered by 60 ms.
        assert_eq!((driven.sent, driven.answered), (24, 24));
        assert_eq!(driven.recorder.completed(), 24);
        assert_eq!(driven.elapsed, Duration::from_millis(60));
    }

    /// A target that never answers: the stop waits for it no longer than the drain time,
    /// and reports what is still in flight.
    #[tokio::test(start_paused = true)]
    async fn a_stop_waits_for_a_stuck_target_only_so_long() {
        let plan = LoadPlan {
            count: None,
            duration: None,
            warmup: Duration::ZERO,
            load: Load::Open { rate: 100.0 },
        };
        let stop = CancellationToken::new();
        let stopper = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(95)).await;
            stopper.cancel();
        });
        let driven = drive(
            &plan,
            Some,
            |_i| std::future::pending::<Outcome>(),
            &stop,
            &Progress::hidden(),
        )
        .await;
        assert!(driven.interrupted);
        assert_eq!(
            (driven.sent, driven.answered, driven.in_flight),
            (10, 0, 10)
        );
        assert_eq!(
            driven.elapsed,
            Duration::from_millis(95) + DRAIN,
            "stopped at 95 ms, then the drain"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn duration_bounds_the_run_and_items_can_run_out() {
        let plan = LoadPlan {
            count: None,
            duration: Some(Duration::from_millis(100)),
            warmup: Duration::ZERO,
            load: Load::Closed { concurrency: 2 },
        };
        let driven = drive(
            &plan,
            Some,
            |_i| async {
                tokio::time::sleep(Duration::from_millis(10)).await;
                Outcome::Delivered
            },
            &CancellationToken::new(),
            &Progress::hidden(),
        )
        .await;
        assert_eq!(driven.answered, 20);
        let plan = LoadPlan {
            count: Some(1000),
            duration: None,
            warmup: Duration::ZERO,
            load: Load::Closed { concurrency: 4 },
        };
        let driven = drive(
            &plan,
            |i| (i < 7).then_some(i),
            |_i| async { Outcome::Delivered },
            &CancellationToken::new(),
            &Progress::hidden(),
        )
        .await;
        assert_eq!(driven.answered, 7);
    }
}
