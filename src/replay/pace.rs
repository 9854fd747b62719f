//! The replay pacer: starts each message at its scheduled time (the capture's own times,
//! scaled by `--speed`, or a fixed `--rate`), open loop: a slow target never slows the
//! schedule, it only shows as latency. How late each start was against its schedule is
//! measured (the schedule's lag), and latency is taken from the scheduled start as well as
//! from the real one (coordinated-omission correction), into the bench's `Recorder`.
//!
//! Time is tokio's clock, so tests drive it with `tokio::time::pause()` and `advance()`.

use crate::bench::driver::{paced, Driven, Window};
use crate::progress::Progress;
use crate::push::Outcome;
use std::future::Future;
use std::str::FromStr;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How fast to replay.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pace {
    /// The recorded pace times this factor (`1x`, `10x`, `0.5x`).
    Speed(f64),
    /// A fixed number of messages per second, whatever the recorded times.
    Rate(f64),
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PaceError {
    #[error(
        "unknown speed {0:?}: write a multiple of the recorded pace of at least 0.001, followed by x (1x, 10x, 0.5x)"
    )]
    Speed(String),
}

/// Parses `--speed`: `1x`, `10x`, `0.5x` (the `x` is required, so `10` is not mistaken for a
/// rate).
pub fn parse_speed(s: &str) -> Result<f64, PaceError> {
    let t = s.trim();
    let num = t
        .strip_suffix('x')
        .or_else(|| t.strip_suffix('X'))
        .ok_or_else(|| PaceError::Speed(s.to_string()))?;
    match f64::from_str(num) {
        // As slow as the slowest rate: below, a schedule's times leave what a Duration holds.
        Ok(v) if v.is_finite() && v >= crate::units::MIN_RATE => Ok(v),
        _ => Err(PaceError::Speed(s.to_string())),
    }
}

/// The scheduled start (from the beginning of the replay) of the `i`-th message sent, for a
/// capture whose messages are at `times`; with `looping`, the capture starts again after its
/// last message plus one mean gap, and one round lasts at least 1 µs per message (a capture
/// whose messages share one time would otherwise loop in no time, and never reach
/// `--duration`). `None` when the schedule is over.
pub fn scheduled(times: &[Duration], pace: Pace, looping: bool, i: u64) -> Option<Duration> {
    let n = times.len() as u64;
    if n == 0 || (!looping && i >= n) {
        return None;
    }
    let (round, idx) = (i / n, (i % n) as usize);
    match pace {
        Pace::Rate(rate) => Some(Duration::from_secs_f64(i as f64 / rate)),
        Pace::Speed(speed) => {
            let last = times[times.len() - 1];
            // One mean gap between rounds, so the last and first messages do not coincide.
            let period = if n > 1 {
                let gap = last.as_nanos() / u128::from(n - 1);
                (last + Duration::from_nanos(u64::try_from(gap).unwrap_or(u64::MAX)))
                    .max(Duration::from_micros(n))
            } else {
                Duration::from_millis(1)
            };
            let at = period.mul_f64(round as f64) + times[idx];
            Some(at.div_f64(speed))
        }
    }
}

/// When to stop besides the end of the schedule.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Limit {
    pub count: Option<u64>,
    pub duration: Option<Duration>,
}

/// Replays: `schedule(i)` gives the `i`-th message's scheduled start (from the beginning) and
/// the item to send, `None` at the end. Every message is started, however late; nothing is
/// skipped. `progress` counts answers. Once `stop` is cancelled nothing more starts and the
/// messages in flight get `DRAIN` to answer (bench::driver::paced, the one pacer). Returns the measurements and the latest start
/// (µs late) in each second of the schedule.
pub async fn replay<I, F, Fut>(
    schedule: impl FnMut(u64) -> Option<(Duration, I)>,
    limit: Limit,
    send: F,
    stop: &CancellationToken,
    progress: &Progress,
) -> (Driven, Vec<u64>)
where
    F: Fn(I) -> Fut,
    Fut: Future<Output = Outcome>,
{
    tracing::info!("Replaying: the schedule starts.");
    let window = Window {
        warmup: Duration::ZERO,
        count: limit.count,
        duration: limit.duration,
    };
    paced(schedule, window, send, stop, progress).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use tokio::time::Instant;

    /// A capture of `n` messages, with gaps that vary (1, 2, 3, 4 ms, repeating).
    fn times(n: usize) -> Vec<Duration> {
        let mut t = Duration::ZERO;
        (0..n)
            .map(|i| {
                let at = t;
                t += Duration::from_millis(1 + (i % 4) as u64);
                at
            })
            .collect()
    }

    /// Replays `times` at `pace` against a target that takes `latency`; returns when each
    /// send really started (from the beginning) and the run's figures.
    async fn run(
        times: &[Duration],
        pace: Pace,
        latency: Duration,
        limit: Limit,
        looping: bool,
    ) -> (Vec<Duration>, Driven) {
        let starts = RefCell::new(Vec::new());
        let begin = Instant::now();
        let (driven, _) = replay(
            |i| scheduled(times, pace, looping, i).map(|at| (at, i)),
            limit,
            |_i| {
                starts.borrow_mut().push(Instant::now() - begin);
                async move {
                    tokio::time::sleep(latency).await;
                    Outcome::Delivered
                }
            },
            &CancellationToken::new(),
            &Progress::hidden(),
        )
        .await;
        (starts.into_inner(), driven)
    }

    /// The pace is kept to within 1 ms of the schedule at 1x and at 10x, even when the target
    /// takes far longer than the gaps (open loop: up to 50 sends in flight).
    #[tokio::test(start_paused = true)]
    async fn pace_is_kept_at_1x_and_10x_against_a_slow_target() {
        let t = times(400);
        for speed in [1.0, 10.0] {
            let (starts, driven) = run(
                &t,
                Pace::Speed(speed),
                Duration::from_millis(50),
                Limit::default(),
                false,
            )
            .await;
            assert_eq!(starts.len(), 400);
            for (i, (s, want)) in starts.iter().zip(&t).enumerate() {
                let want = want.div_f64(speed);
                assert!(
                    s.abs_diff(want) <= Duration::from_millis(1),
                    "{speed}x message {i}: {s:?} vs {want:?}"
                );
            }
            let last = t[399].div_f64(speed);
            // The run lasts the schedule plus one answer, not 400 answers.
            assert!(
                driven.elapsed.abs_diff(last + Duration::from_millis(50))
                    <= Duration::from_millis(2),
                "{:?}",
                driven.elapsed
            );
            assert_eq!(driven.answered, 400);
            let lag = driven.schedule_lag.as_ref().unwrap();
            assert_eq!(lag.len(), 400);
            assert!(
                lag.value_at_quantile(0.99) <= 1000,
                "lag p99 {}",
                lag.value_at_quantile(0.99)
            );
            // Latency from the scheduled start includes the 50 ms answer.
            let p50 = driven.recorder.send_corrected.value_at_quantile(0.5);
            assert!((49_000..=51_100).contains(&p50), "{p50}");
        }
    }

    /// A send that blocks the pacer's thread (a stall in the send path itself) makes the
    /// following starts late: that lateness is measured, and the latency taken from the
    /// schedule includes it. Real time here (lower bounds only, safe on a loaded machine).
    #[tokio::test]
    async fn lateness_is_measured_and_corrects_latency() {
        let t: Vec<Duration> = (0..10).map(|i| Duration::from_millis(i * 10)).collect();
        let (driven, per_sec) = replay(
            |i| scheduled(&t, Pace::Speed(1.0), false, i).map(|at| (at, i)),
            Limit::default(),
            |i| {
                if i == 5 {
                    // Due at 50 ms, holds the thread until at least 80 ms: message 6 (due at
                    // 60 ms) starts at least 20 ms late.
                    std::thread::sleep(Duration::from_millis(30));
                }
                async { Outcome::Delivered }
            },
            &CancellationToken::new(),
            &Progress::hidden(),
        )
        .await;
        assert_eq!(driven.answered, 10);
        let lag = driven.schedule_lag.as_ref().unwrap();
        assert!(lag.max() >= 19_000, "lag max {}", lag.max());
        assert!(driven.recorder.send_corrected.max() >= 19_000);
        assert!(driven.recorder.send.max() < driven.recorder.send_corrected.max());
        assert_eq!(per_sec.len(), 1);
        assert!(per_sec[0] >= 19_000);
    }

    #[tokio::test(start_paused = true)]
    async fn rate_loop_and_limits() {
        let t = times(10);
        // A fixed rate ignores the recorded gaps: 1000/s is one start per ms.
        let (starts, _) = run(
            &t,
            Pace::Rate(1000.0),
            Duration::ZERO,
            Limit::default(),
            false,
        )
        .await;
        for (i, s) in starts.iter().enumerate() {
            assert!(s.abs_diff(Duration::from_millis(i as u64)) <= Duration::from_micros(100));
        }
        // Looping goes round until the count.
        let (starts, driven) = run(
            &t,
            Pace::Rate(1000.0),
            Duration::ZERO,
            Limit {
                count: Some(35),
                duration: None,
            },
            true,
        )
        .await;
        assert_eq!((starts.len(), driven.sent, driven.answered), (35, 35, 35));
        // ... or until the duration: starts scheduled before 100 ms only.
        let (starts, _) = run(
            &t,
            Pace::Speed(1.0),
            Duration::ZERO,
            Limit {
                count: None,
                duration: Some(Duration::from_millis(100)),
            },
            true,
        )
        .await;
        // One round is 10 messages over 21 ms + one mean gap (21/9 ms): 23.3 ms. Four rounds
        // end at 93.3 ms; the fifth starts 4 messages before 100 ms (93.3, 94.3, 96.3, 99.3).
        assert_eq!(starts.len(), 44, "{starts:?}");
    }

    /// Interrupted at 102 ms: nothing is scheduled after, the sends in flight answer, and
    /// the replay says it was interrupted.
    #[tokio::test(start_paused = true)]
    async fn a_stop_ends_the_replay_after_the_messages_in_flight() {
        let t = times(400);
        let stop = CancellationToken::new();
        let stopper = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(102)).await;
            stopper.cancel();
        });
        let (driven, _) = replay(
            |i| scheduled(&t, Pace::Speed(1.0), false, i).map(|at| (at, i)),
            Limit::default(),
            |_i| async {
                tokio::time::sleep(Duration::from_millis(50)).await;
                Outcome::Delivered
            },
            &stop,
            &Progress::hidden(),
        )
        .await;
        assert!(driven.interrupted);
        // Gaps of 1, 2, 3, 4 ms: starts at 0, 1, 3, 6, 10, ... 100, 101, then 103: 42 by
        // 102 ms, of 400; the last answers 50 ms after it started.
        assert_eq!(driven.sent, 42);
        assert_eq!((driven.answered, driven.in_flight), (42, 0));
        assert_eq!(driven.elapsed, Duration::from_millis(151));
    }

    /// Seen: a capture whose messages all share one time looped with period 0, every round
    /// at 0, so `--duration` never ended the replay. A round now lasts 1 µs per message.
    #[test]
    fn a_loop_of_messages_at_one_time_moves_on() {
        let t = [Duration::ZERO; 3];
        let at = |i| scheduled(&t, Pace::Speed(1.0), true, i).unwrap();
        assert_eq!((at(0), at(2)), (Duration::ZERO, Duration::ZERO));
        assert_eq!(
            (at(3), at(5)),
            (Duration::from_micros(3), Duration::from_micros(3))
        );
        assert_eq!(at(3000), Duration::from_millis(3));
        // At 0.5x, twice as long.
        let slow = scheduled(&t, Pace::Speed(0.5), true, 3).unwrap();
        assert_eq!(slow, Duration::from_micros(6));
        // Real gaps keep their period: 0 and 10 ms, one mean gap (10 ms) between rounds.
        let gaps = [Duration::ZERO, Duration::from_millis(10)];
        let at = scheduled(&gaps, Pace::Speed(1.0), true, 2).unwrap();
        assert_eq!(at, Duration::from_millis(20));
    }

    /// The same capture with `--duration`: the replay ends at its schedule's end.
    #[tokio::test(start_paused = true)]
    async fn a_loop_of_messages_at_one_time_ends_at_the_duration() {
        let t = [Duration::ZERO; 3];
        let (starts, _) = run(
            &t,
            Pace::Speed(1.0),
            Duration::ZERO,
            Limit {
                count: None,
                duration: Some(Duration::from_millis(1)),
            },
            true,
        )
        .await;
        // Rounds at 0, 3, ..., 999 µs: 334 of 3 messages.
        assert_eq!(starts.len(), 1002);
    }

    #[test]
    fn speed_spellings() {
        assert_eq!(parse_speed("1x"), Ok(1.0));
        assert_eq!(parse_speed("10x"), Ok(10.0));
        assert_eq!(parse_speed(" 0.5X "), Ok(0.5));
        for bad in ["10", "fast", "0x", "-2x", "x", "infx", "10xx"] {
            let err = parse_speed(bad).unwrap_err().to_string();
            assert!(
                err.contains("unknown speed") && err.contains("1x, 10x"),
                "{bad}: {err}"
            );
        }
    }
}
