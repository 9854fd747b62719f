//! Traffic shapes for `pusher gen --shape`: a rate curve over `--duration`, peaking at
//! `--peak-rate`, turned into send times. Messages are placed where the curve's integral
//! crosses each whole number, so every window holds the curve's count to within one message,
//! and the same arguments always give the same times.

use std::str::FromStr;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// The peak rate all along.
    Constant,
    /// From 0 up to the peak, linearly.
    Ramp,
    /// A tenth of the peak, with a burst at the peak for the middle tenth of the run.
    Spike,
    /// A day of traffic compressed into the duration: a tenth of the peak at 04:00, the peak
    /// at 16:00, a cosine between.
    Day,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ShapeError {
    #[error("unknown shape {0:?}: use constant, ramp, spike (or burst), or day")]
    Unknown(String),
    #[error("{0}")]
    Invalid(String),
}

impl FromStr for Shape {
    type Err = ShapeError;
    fn from_str(s: &str) -> Result<Shape, ShapeError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "constant" | "flat" => Ok(Shape::Constant),
            "ramp" => Ok(Shape::Ramp),
            "spike" | "burst" => Ok(Shape::Spike),
            "day" | "day-curve" | "diurnal" => Ok(Shape::Day),
            _ => Err(ShapeError::Unknown(s.to_string())),
        }
    }
}

impl std::fmt::Display for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Shape::Constant => "constant",
            Shape::Ramp => "ramp",
            Shape::Spike => "spike",
            Shape::Day => "day",
        })
    }
}

/// Where the spike sits, as fractions of the run, and the base level around it.
const SPIKE_FROM: f64 = 0.45;
const SPIKE_TO: f64 = 0.55;
const SPIKE_BASE: f64 = 0.1;
const DAY_FLOOR: f64 = 0.1;

impl Shape {
    /// The mean rate over the run, as a fraction of the peak.
    pub fn mean_level(self) -> f64 {
        self.integral(1.0)
    }

    /// The integral of [`Shape::level`] from 0 to `x` (in [0, 1]), in closed form: the
    /// number of messages up to `x` of a run is this × peak × duration.
    pub fn integral(self, x: f64) -> f64 {
        let x = x.clamp(0.0, 1.0);
        match self {
            Shape::Constant => x,
            Shape::Ramp => x * x / 2.0,
            Shape::Spike => {
                SPIKE_BASE * x.min(SPIKE_FROM)
                    + (x.clamp(SPIKE_FROM, SPIKE_TO) - SPIKE_FROM)
                    + SPIKE_BASE * (x - SPIKE_TO).max(0.0)
            }
            Shape::Day => {
                // level = m - a·cos(2πx - π/3), with m = (1 + floor) / 2, a = (1 - floor) / 2.
                use std::f64::consts::PI;
                let (m, a) = ((1.0 + DAY_FLOOR) / 2.0, (1.0 - DAY_FLOOR) / 2.0);
                m * x - a / (2.0 * PI) * ((2.0 * PI * x - PI / 3.0).sin() - (-PI / 3.0).sin())
            }
        }
    }

    /// The rate, as a fraction of the peak, at `x` in [0, 1] of the run.
    pub fn level(self, x: f64) -> f64 {
        match self {
            Shape::Constant => 1.0,
            Shape::Ramp => x.clamp(0.0, 1.0),
            Shape::Spike => {
                if (SPIKE_FROM..SPIKE_TO).contains(&x) {
                    1.0
                } else {
                    SPIKE_BASE
                }
            }
            Shape::Day => {
                // x = 0 is midnight; the trough at 04:00, the crest 12 hours later.
                let hours = x * 24.0;
                let c = (1.0 - (2.0 * std::f64::consts::PI * (hours - 4.0) / 24.0).cos()) / 2.0;
                DAY_FLOOR + (1.0 - DAY_FLOOR) * c
            }
        }
    }
}

/// The send times of a shaped run: message `k` at the time the curve's integral reaches `k`,
/// found by bisection on the closed-form integral. Seen: integrating in fixed 10 µs steps took
/// 16 s for an hour's shape (6 minutes for a day's), and a long enough run never ended, deaf
/// to Ctrl-C, as its steps fell below the time's float precision.
#[derive(Debug, Clone)]
pub struct ShapedTimes {
    shape: Shape,
    duration: f64,
    /// Messages the whole run holds (the integral at its end, not rounded).
    total: f64,
    /// The last message placed, and where.
    k: u64,
    t: f64,
}

/// The highest rate a shape places: its times are written in microseconds.
const STEP_SECS: f64 = 1e-5;

impl ShapedTimes {
    pub fn new(
        shape: Shape,
        duration: Duration,
        peak_rate: f64,
    ) -> Result<ShapedTimes, ShapeError> {
        if duration.is_zero() {
            return Err(ShapeError::Invalid("--duration must be more than 0".into()));
        }
        if !(peak_rate.is_finite() && peak_rate > 0.0) {
            return Err(ShapeError::Invalid(
                "--peak-rate must be a positive number of messages per second".into(),
            ));
        }
        // A message per step at most keeps the times exact; refuse what we cannot place.
        if peak_rate * STEP_SECS > 1.0 {
            return Err(ShapeError::Invalid(format!(
                "--peak-rate {peak_rate} is above the 100000/s a shape can place"
            )));
        }
        // Fewer than one message in all would make an empty capture, which replay refuses.
        let held = shape.mean_level() * duration.as_secs_f64() * peak_rate;
        if held < 1.0 {
            return Err(ShapeError::Invalid(format!(
                "--duration {} × --peak-rate {peak_rate}/s holds {held:.2} messages with --shape \
                 {shape} (its mean rate is {:.0}% of the peak): at least one is needed; give a \
                 longer --duration or a higher --peak-rate",
                humantime::format_duration(duration),
                shape.mean_level() * 100.0
            )));
        }
        let seconds = duration.as_secs_f64();
        Ok(ShapedTimes {
            shape,
            duration: seconds,
            total: shape.integral(1.0) * seconds * peak_rate,
            k: 0,
            t: 0.0,
        })
    }

    /// How many messages the shape holds (the integral of the curve, rounded down).
    pub fn expected_count(shape: Shape, duration: Duration, peak_rate: f64) -> u64 {
        (shape.mean_level() * duration.as_secs_f64() * peak_rate) as u64
    }
}

impl Iterator for ShapedTimes {
    type Item = Duration;
    fn next(&mut self) -> Option<Duration> {
        let k = self.k + 1;
        let target = k as f64 / self.total;
        if target > 1.0 {
            return None;
        }
        // The integral is monotone: the time is between the last message's and the end.
        let reached =
            |t: f64| self.shape.integral(t / self.duration) >= target * self.shape.integral(1.0);
        let (mut lo, mut hi) = (self.t, self.duration);
        // 64 halvings reach the float's precision at any duration.
        for _ in 0..64 {
            let mid = lo + (hi - lo) / 2.0;
            if mid <= lo || mid >= hi {
                break;
            }
            if reached(mid) {
                hi = mid;
            } else {
                lo = mid;
            }
        }
        self.k = k;
        self.t = hi;
        Some(Duration::from_secs_f64(hi))
    }
}

/// Writes a shaped capture: one generated message at each of `times`, keyed by its token,
/// to `topic`, timed from the first (its `t_us` is 0, as in every capture). Returns how many.
/// `out` gets one write per field: give it a buffered writer. `progress` counts the messages.
pub fn write_capture(
    generator: &mut crate::gen::Generator,
    times: impl IntoIterator<Item = Duration>,
    topic: &str,
    out: &mut impl std::io::Write,
    progress: &indicatif::ProgressBar,
) -> std::io::Result<u64> {
    let mut value = Vec::with_capacity(4096);
    let mut n = 0u64;
    let mut first = None;
    for at in times {
        value.clear();
        if generator.write_next(&mut value).is_none() {
            break;
        }
        let key = generator.last_token().as_bytes().to_vec();
        let since_first = at.saturating_sub(*first.get_or_insert(at));
        super::capture::write_entry(out, since_first, topic, Some(&key), &value)?;
        n += 1;
        if n % 1024 == 0 {
            progress.set_position(n);
        }
    }
    out.flush()?;
    progress.set_position(n);
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn per_window(times: &[Duration], window: Duration, n: usize) -> Vec<u64> {
        let mut w = vec![0u64; n];
        for t in times {
            let i = (t.as_secs_f64() / window.as_secs_f64()) as usize;
            w[i.min(n - 1)] += 1;
        }
        w
    }

    /// The progress bar counts what is written (it stood still at 0 before).
    #[test]
    fn write_capture_moves_the_progress_bar() {
        let mut config = crate::gen::GenConfig::new(crate::push::Platform::Apns);
        config.count = 3000;
        let mut generator = crate::gen::Generator::new(config).unwrap();
        let times = (0..3000u64).map(Duration::from_millis);
        let bar = indicatif::ProgressBar::hidden();
        let mut out = Vec::new();
        let n = write_capture(&mut generator, times, "push-game_apns", &mut out, &bar).unwrap();
        assert_eq!(n, 3000);
        assert_eq!(bar.position(), 3000);
    }

    #[test]
    fn constant_places_the_rate_in_every_window() {
        let times: Vec<_> = ShapedTimes::new(Shape::Constant, Duration::from_secs(10), 1000.0)
            .unwrap()
            .collect();
        assert!((9999..=10000).contains(&times.len()), "{}", times.len());
        for (i, n) in per_window(&times, Duration::from_secs(1), 10)
            .iter()
            .enumerate()
        {
            assert!((999..=1001).contains(n), "second {i}: {n}");
        }
        assert!(times.windows(2).all(|w| w[0] <= w[1]));
    }

    #[test]
    fn ramp_rises_linearly() {
        let times: Vec<_> = ShapedTimes::new(Shape::Ramp, Duration::from_secs(10), 1000.0)
            .unwrap()
            .collect();
        // Second i holds the integral of 100*t over [i, i+1]: 100*i + 50.
        for (i, n) in per_window(&times, Duration::from_secs(1), 10)
            .iter()
            .enumerate()
        {
            let want = 100 * i as u64 + 50;
            assert!(n.abs_diff(want) <= 1, "second {i}: {n} vs {want}");
        }
        assert!(times.len().abs_diff(5000) <= 1);
    }

    #[test]
    fn spike_bursts_in_the_middle_tenth() {
        let times: Vec<_> = ShapedTimes::new(Shape::Spike, Duration::from_secs(20), 2000.0)
            .unwrap()
            .collect();
        let w = per_window(&times, Duration::from_secs(1), 20);
        for (i, n) in w.iter().enumerate() {
            let want = if i == 9 || i == 10 { 2000 } else { 200 };
            assert!(n.abs_diff(want) <= 1, "second {i}: {n} vs {want}: {w:?}");
        }
    }

    #[test]
    fn day_curve_has_its_trough_at_4_and_crest_at_16() {
        let d = Duration::from_secs(24);
        let times: Vec<_> = ShapedTimes::new(Shape::Day, d, 1000.0).unwrap().collect();
        let w = per_window(&times, Duration::from_secs(1), 24);
        let (min_i, _) = w.iter().enumerate().min_by_key(|(_, n)| **n).unwrap();
        let (max_i, _) = w.iter().enumerate().max_by_key(|(_, n)| **n).unwrap();
        assert!((3..=4).contains(&min_i), "{w:?}");
        assert!((15..=16).contains(&max_i), "{w:?}");
        assert!(w[min_i] >= 100 && w[min_i] < 120, "{w:?}");
        assert!(w[max_i] > 980, "{w:?}");
        let expected = ShapedTimes::expected_count(Shape::Day, d, 1000.0);
        assert!((times.len() as u64).abs_diff(expected) <= 1);
    }

    #[test]
    fn bad_shape_arguments_are_refused() {
        assert_eq!(
            "sine".parse::<Shape>().unwrap_err().to_string(),
            "unknown shape \"sine\": use constant, ramp, spike (or burst), or day"
        );
        assert_eq!("burst".parse::<Shape>(), Ok(Shape::Spike));
        assert!(ShapedTimes::new(Shape::Ramp, Duration::ZERO, 1.0).is_err());
        assert!(ShapedTimes::new(Shape::Ramp, Duration::from_secs(1), 0.0).is_err());
        assert!(ShapedTimes::new(Shape::Ramp, Duration::from_secs(1), 1e6).is_err());
        // Less than one message in all: an empty capture.
        let few = ShapedTimes::new(Shape::Constant, Duration::from_secs(1), 0.5).unwrap_err();
        assert!(
            few.to_string()
                .contains("--duration 1s × --peak-rate 0.5/s"),
            "{few}"
        );
        assert!(ShapedTimes::new(Shape::Ramp, Duration::from_secs(1), 1.5).is_err());
        assert!(ShapedTimes::new(Shape::Ramp, Duration::from_secs(2), 1.5).is_ok());
    }
}
