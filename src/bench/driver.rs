//! Drives a send function under a load plan: closed loop (a fixed number in flight) or open
//! loop (a fixed schedule of intended start times, goose/wrk2 style, so a slow target cannot
//! slow the schedule down and latency can be corrected for coordinated omission).

use super::interrupt::DRAIN;
use super::recorder::{histogram, micros, Recorder};
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
    next_item: impl FnMut(u64) -> Option<I>,
    send: F,
    stop: &CancellationToken,
    progress: &Progress,
) -> Driven
where
    F: Fn(I) -> Fut,
    Fut: Future<Output = Outcome>,
{
    drive_marked(plan, next_item, |item, _| send(item), stop, progress).await
}

/// [`drive`], with `send` told whether the message is in the measured window (`false`: the
/// warm-up), for a caller that measures more of it than the driver does.
pub async fn drive_marked<I, F, Fut>(
    plan: &LoadPlan,
    mut next_item: impl FnMut(u64) -> Option<I>,
    send: F,
    stop: &CancellationToken,
    progress: &Progress,
) -> Driven
where
    F: Fn(I, bool) -> Fut,
    Fut: Future<Output = Outcome>,
{
    // The open loop is the pacer's: message i is due at i / rate.
    if let Load::Open { rate } = plan.load {
        let window = Window {
            warmup: plan.warmup,
            count: plan.count,
            duration: plan.duration,
        };
        let every = 1.0 / rate.max(1e-9);
        let schedule =
            |i: u64| next_item(i).map(|item| (Duration::from_secs_f64(i as f64 * every), item));
        return paced_marked(schedule, window, send, stop, progress).await.0;
    }
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
    let concurrency = match plan.load {
        Load::Closed { concurrency } => concurrency.max(1),
        Load::Open { .. } => 1,
    };
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
        while !exhausted
            && in_flight.len() < concurrency
            && more(Instant::now(), measure_start, measured_started)
        {
            let Some(item) = next_item(sent) else {
                exhausted = true;
                break;
            };
            let measured = measure_start.is_some();
            measured_started += measured as u64;
            sent += 1;
            in_flight.push(timed(Box::pin(send(item, measured)), None, measured));
        }

        let still_starting = !exhausted && more(Instant::now(), measure_start, measured_started);
        if in_flight.is_empty() && !still_starting {
            break;
        }
        if drain_until.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        // What may end the wait besides an answer: the warm-up's end, the stop, and once
        // stopped the end of the drain.
        let wake = if measure_start.is_none() && still_starting {
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
        schedule_lag: None,
        interrupted: drain_until.is_some(),
        in_flight: in_flight.len() as u64,
    }
}

/// What a paced run measures: the messages scheduled after `warmup` (those before it are sent
/// and answered, not measured), at most `count` of them, and those scheduled within
/// `duration` of the warm-up's end.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Window {
    pub warmup: Duration,
    pub count: Option<u64>,
    pub duration: Option<Duration>,
}

/// The open loop's bound on sends in flight. Past it, a due message waits in the pacer for a
/// slot, as an index and a time: its lateness is measured (the schedule's lag, and latency
/// corrected for coordinated omission counts from its due time) and memory stays bounded.
/// Unbounded, a target that fell behind held every late message's send future (~16 KB each):
/// `bench --sender-only --rate 47667 --duration 10s` on a 2-core VM grew to 7.5 GB, and the
/// page faults of that growth (70 % of its CPU) kept it behind at 20k msg/s.
pub const OPEN_LOOP_MAX_IN_FLIGHT: usize = 10_000;

/// THE open-loop pacer, for `bench --rate` and `pusher replay`: `schedule(i)` gives the
/// `i`-th message's start (from the beginning) and the item to send, `None` at the end. Each
/// message starts at its time whatever the target does (a slow target shows as latency, never
/// as a slower schedule), unless [`OPEN_LOOP_MAX_IN_FLIGHT`] are in flight; a late start is
/// measured (the schedule's lag), never skipped; latency is also taken from the scheduled start
/// (coordinated-omission correction). `progress` counts
/// measured answers. Once `stop` is cancelled nothing more starts and the messages in flight
/// get [`DRAIN`] to answer. Returns the figures and the latest start (µs late) in each second
/// of the schedule.
pub async fn paced<I, F, Fut>(
    schedule: impl FnMut(u64) -> Option<(Duration, I)>,
    window: Window,
    send: F,
    stop: &CancellationToken,
    progress: &Progress,
) -> (Driven, Vec<u64>)
where
    F: Fn(I) -> Fut,
    Fut: Future<Output = Outcome>,
{
    paced_marked(schedule, window, |item, _| send(item), stop, progress).await
}

/// [`paced`], with `send` told whether the message is in the measured window.
async fn paced_marked<I, F, Fut>(
    mut schedule: impl FnMut(u64) -> Option<(Duration, I)>,
    window: Window,
    send: F,
    stop: &CancellationToken,
    progress: &Progress,
) -> (Driven, Vec<u64>)
where
    F: Fn(I, bool) -> Fut,
    Fut: Future<Output = Outcome>,
{
    let mut recorder = Recorder::new();
    let mut lag = histogram();
    let mut lag_per_sec: Vec<u64> = Vec::new();
    let mut in_flight = FuturesUnordered::new();
    let begin = Instant::now();
    let measure_start = begin + window.warmup;
    if window.warmup.is_zero() {
        progress.measuring();
    }
    let mut warming = !window.warmup.is_zero();
    let (mut sent, mut answered, mut measured_sent) = (0u64, 0u64, 0u64);
    let mut next = schedule(0);
    let mut drain_until: Option<Instant> = None;
    // Past the measured window's count or duration: nothing more starts.
    let past_window = |measured_sent: u64, at: Duration| {
        at >= window.warmup
            && (window.count.is_some_and(|c| measured_sent >= c)
                || window.duration.is_some_and(|d| at >= window.warmup + d))
    };
    loop {
        let now = Instant::now();
        if warming && now >= measure_start && !stop.is_cancelled() {
            warming = false;
            tracing::info!("Warm-up over: measuring.");
            progress.measuring();
        }
        if stop.is_cancelled() && drain_until.is_none() {
            drain_until = Some(now + DRAIN);
            next = None;
        }
        // Start everything that is due and has a slot; a late start is measured, never
        // skipped.
        while let Some((at, _)) = &next {
            if in_flight.len() >= OPEN_LOOP_MAX_IN_FLIGHT {
                break;
            }
            let at = *at;
            let due = begin + at;
            if past_window(measured_sent, at) {
                next = None;
                break;
            }
            let now = Instant::now();
            if now < due {
                break;
            }
            let Some((_, item)) = next.take() else { break };
            let measured = at >= window.warmup;
            if measured {
                let late = micros(now - due);
                let _ = lag.record(late);
                let second = (at - window.warmup).as_secs() as usize;
                if lag_per_sec.len() <= second {
                    lag_per_sec.resize(second + 1, 0);
                }
                lag_per_sec[second] = lag_per_sec[second].max(late);
                recorder.record_offered(at - window.warmup);
                measured_sent += 1;
            }
            sent += 1;
            in_flight.push(timed(send(item, measured), Some(due), measured));
            next = schedule(sent);
        }
        // No slot: only an answer (or the stop) starts the next one, not its time.
        let full = in_flight.len() >= OPEN_LOOP_MAX_IN_FLIGHT;
        let due = next.as_ref().filter(|_| !full).map(|(at, _)| begin + *at);
        if in_flight.is_empty() && due.is_none() {
            break;
        }
        if drain_until.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        let wake = match (due, warming) {
            (Some(d), true) => Some(d.min(measure_start)),
            (Some(d), false) => Some(d),
            (None, _) => drain_until,
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
                let since = finished.saturating_duration_since(measure_start);
                let from_intended = intended.map(|i| finished - i);
                recorder.record_send(finished - started, from_intended, since);
                recorder.record_outcome(&outcome, since);
                progress.set_position(recorder.completed());
            }
        }
    }
    let driven = Driven {
        recorder,
        sent,
        answered,
        elapsed: Instant::now().saturating_duration_since(measure_start),
        schedule_lag: Some(lag),
        interrupted: drain_until.is_some(),
        in_flight: in_flight.len() as u64,
    };
    (driven, lag_per_sec)
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

    /// A plan of `count` messages under `load`, with no warm-up and no duration.
    fn plan_for(count: Option<u64>, load: Load) -> LoadPlan {
        LoadPlan {
            count,
            duration: None,
            warmup: Duration::ZERO,
            load,
        }
    }

    /// Drives `plan` against a target that delivers each message `ms` after its start.
    async fn drive_slow(
        plan: &LoadPlan,
        ms: u64,
        stop: &CancellationToken,
        progress: &Progress,
    ) -> Driven {
        let send = |_i| async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Outcome::Delivered
        };
        drive(plan, Some, send, stop, progress).await
    }

    /// A target that holds each send for a while, counting how many it holds at once.
    #[derive(Default)]
    struct Holding {
        now: std::cell::Cell<usize>,
        peak: std::cell::Cell<usize>,
    }

    impl Holding {
        /// A send held for `d`, then delivered; it counts as held from the call, as the
        /// driver makes it.
        fn send(&self, d: Duration) -> impl Future<Output = Outcome> + '_ {
            self.now.set(self.now.get() + 1);
            self.peak.set(self.peak.get().max(self.now.get()));
            async move {
                tokio::time::sleep(d).await;
                self.now.set(self.now.get() - 1);
                Outcome::Delivered
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn closed_loop_sends_exactly_count_and_keeps_concurrency() {
        let target = Holding::default();
        let plan = plan_for(Some(100), Load::Closed { concurrency: 8 });
        let driven = drive(
            &plan,
            Some,
            |_i| target.send(Duration::from_millis(10)),
            &CancellationToken::new(),
            &Progress::hidden(),
        )
        .await;
        assert_eq!(driven.sent, 100);
        assert_eq!(driven.answered, 100);
        assert_eq!(driven.recorder.completed(), 100);
        assert_eq!(target.peak.get(), 8);
        // 100 messages, 8 at a time, 10 ms each: 13 rounds.
        assert_eq!(driven.elapsed, Duration::from_millis(130));
    }

    #[tokio::test(start_paused = true)]
    async fn open_loop_keeps_the_schedule_and_corrects_latency() {
        // 1000/s for 100 messages against a target that takes 50 ms: the schedule does not
        // slow down, so 50 are in flight at once and the run lasts ~0.1 s + 50 ms.
        let plan = plan_for(Some(100), Load::Open { rate: 1000.0 });
        let driven = drive_slow(&plan, 50, &CancellationToken::new(), &Progress::hidden()).await;
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

    /// A target that falls behind an open loop holds at most OPEN_LOOP_MAX_IN_FLIGHT sends;
    /// the rest wait their turn, and their wait shows in the schedule's lag and the
    /// coordinated-omission-corrected latency, not in the plain one.
    #[tokio::test(start_paused = true)]
    async fn open_loop_bounds_what_a_slow_target_holds() {
        let target = Holding::default();
        let n = 3 * OPEN_LOOP_MAX_IN_FLIGHT as u64;
        // Due within 0.3 s, answered 1 s after their start: three rounds of slots.
        let (driven, lag_per_sec) = paced(
            |i| (i < n).then(|| (Duration::from_secs_f64(i as f64 * 0.3 / n as f64), i)),
            Window {
                count: Some(n),
                ..Window::default()
            },
            |_i| target.send(Duration::from_secs(1)),
            &CancellationToken::new(),
            &Progress::hidden(),
        )
        .await;
        assert_eq!(target.peak.get(), OPEN_LOOP_MAX_IN_FLIGHT);
        assert_eq!((driven.sent, driven.answered), (n, n));
        assert_eq!(driven.recorder.completed(), n);
        // Every send took its 1 s; the last ones were due at 0.3 s and answered at ~3 s.
        let send = &driven.recorder.send;
        assert!(
            (990_000..=1_010_000).contains(&send.max()),
            "{}",
            send.max()
        );
        let corrected = driven.recorder.send_corrected.max();
        assert!((2_650_000..=3_050_000).contains(&corrected), "{corrected}");
        assert!(driven.schedule_lag.unwrap().max() >= 1_650_000);
        assert_eq!(lag_per_sec.len(), 1, "all were due in the first second");
    }

    /// A target 200 s slow, all slots taken: the last message starts 200 s late and answers
    /// 400 s after its due time, and both show as they are (they were clamped to 120 s).
    #[tokio::test(start_paused = true)]
    async fn lag_and_latency_beyond_two_minutes_are_kept() {
        let n = OPEN_LOOP_MAX_IN_FLIGHT as u64 + 1;
        let (driven, lag_per_sec) = paced(
            |i| (i < n).then_some((Duration::ZERO, i)),
            Window {
                count: Some(n),
                ..Window::default()
            },
            |_i| async {
                tokio::time::sleep(Duration::from_secs(200)).await;
                Outcome::Delivered
            },
            &CancellationToken::new(),
            &Progress::hidden(),
        )
        .await;
        assert_eq!(driven.answered, n);
        let secs = |us: u64| us / 1_000_000;
        assert_eq!(secs(driven.schedule_lag.unwrap().max()), 200);
        assert_eq!(lag_per_sec.iter().copied().map(secs).max(), Some(200));
        assert_eq!(secs(driven.recorder.send_corrected.max()), 400);
        assert_eq!(secs(driven.recorder.send.max()), 200);
    }

    #[tokio::test(start_paused = true)]
    async fn warmup_messages_are_sent_but_not_measured() {
        let plan = LoadPlan {
            warmup: Duration::from_millis(100),
            ..plan_for(Some(10), Load::Closed { concurrency: 1 })
        };
        let progress = Progress::hidden();
        let driven = drive_slow(&plan, 10, &CancellationToken::new(), &progress).await;
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
        let plan = plan_for(Some(1000), Load::Closed { concurrency: 4 });
        let stop = CancellationToken::new();
        let stopper = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(55)).await;
            stopper.cancel();
        });
        let driven = drive_slow(&plan, 10, &stop, &Progress::hidden()).await;
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
        let plan = plan_for(None, Load::Open { rate: 100.0 });
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
            duration: Some(Duration::from_millis(100)),
            ..plan_for(None, Load::Closed { concurrency: 2 })
        };
        let driven = drive_slow(&plan, 10, &CancellationToken::new(), &Progress::hidden()).await;
        assert_eq!(driven.answered, 20);
        let plan = plan_for(Some(1000), Load::Closed { concurrency: 4 });
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
