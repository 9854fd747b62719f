//! The progress bar of `bench`, `replay` and `gen` (one style: counts and rates with thousands
//! separators, an ETA), and the log writer that prints log lines above the bar being drawn
//! instead of through it.
//!
//! A bar is drawn on stderr only when stderr is a terminal and `--quiet` is not given. While
//! one is drawn it is the *active* bar: [`LogWriter`] (tracing's writer, see
//! `telemetry::init`) and [`eprintln_above`] hide it, write, and draw it again, so no stale
//! frame stays under a log line.

use indicatif::{HumanCount, HumanDuration, ProgressBar, ProgressDrawTarget, ProgressStyle};
use parking_lot::Mutex;
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// The bar being drawn, if any. `DRAWING` is its cheap mirror: a log line written while no bar
/// is drawn costs one atomic load.
static ACTIVE: Mutex<Option<(u64, indicatif::WeakProgressBar)>> = Mutex::new(None);
static DRAWING: AtomicBool = AtomicBool::new(false);
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A progress bar on stderr, or nothing (hidden). Derefs to indicatif's bar for the callers
/// that take one.
pub struct Progress {
    bar: ProgressBar,
    /// Duration-bound runs: when the measured window ends (set by [`Progress::measuring`]).
    deadline: Arc<OnceLock<Instant>>,
    duration: Option<Duration>,
    /// The label once measuring (see [`Progress::measuring`]).
    label: String,
    /// Its key in `ACTIVE` while drawn; 0 when hidden.
    id: u64,
}

impl Progress {
    /// A bar towards `len` items (`None`: unknown, a spinner), labelled `prefix`; hidden with
    /// `quiet` or when stderr is not a terminal.
    pub fn new(prefix: &str, len: Option<u64>, quiet: bool) -> Progress {
        Progress::with_duration(prefix, len, None, quiet)
    }

    /// As [`Progress::new`], for a run that also ends after `duration` of measuring: the ETA
    /// is the nearer of the two ends.
    pub fn with_duration(
        prefix: &str,
        len: Option<u64>,
        duration: Option<Duration>,
        quiet: bool,
    ) -> Progress {
        Progress::build(prefix, prefix, len, duration, quiet)
    }

    /// A bench run's bar: labelled `warm-up` while there is one, then `label` from
    /// [`Progress::measuring`] on.
    pub fn for_run(
        label: &str,
        len: Option<u64>,
        duration: Option<Duration>,
        warmup: Duration,
        quiet: bool,
    ) -> Progress {
        let first = if warmup.is_zero() { label } else { "warm-up" };
        Progress::build(label, first, len, duration, quiet)
    }

    fn build(
        label: &str,
        first: &str,
        len: Option<u64>,
        duration: Option<Duration>,
        quiet: bool,
    ) -> Progress {
        let deadline = Arc::new(OnceLock::new());
        if quiet || !std::io::stderr().is_terminal() {
            return Progress {
                bar: ProgressBar::hidden(),
                deadline,
                duration,
                label: label.to_string(),
                id: 0,
            };
        }
        let bar = ProgressBar::with_draw_target(len, ProgressDrawTarget::stderr());
        bar.set_style(style(len.is_some(), deadline.clone()));
        bar.set_prefix(first.to_string());
        // Redraw on a timer too: a slow replay (tens of messages a second) still shows time
        // passing and the ETA falling.
        bar.enable_steady_tick(Duration::from_millis(200));
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        activate(id, &bar);
        Progress {
            bar,
            deadline,
            duration,
            label: label.to_string(),
            id,
        }
    }

    /// The length, once known after the bar was made (`replay --from-kafka` counts the offsets
    /// only once connected): drawn as a bar towards it from here on.
    pub fn set_total(&self, len: u64) {
        self.bar.set_length(len);
        self.bar.set_style(style(true, self.deadline.clone()));
    }

    /// A bar that draws nothing.
    pub fn hidden() -> Progress {
        Progress::new("", None, true)
    }

    /// The measured part begins (after a warm-up): the bar's clock, rate and ETA start again
    /// from here, under its own label.
    pub fn measuring(&self) {
        if let Some(d) = self.duration {
            let _ = self.deadline.set(Instant::now() + d);
        }
        self.bar.reset_elapsed();
        self.bar.reset_eta();
        self.bar.set_position(0);
        self.bar.set_prefix(self.label.clone());
    }
}

impl std::ops::Deref for Progress {
    type Target = ProgressBar;
    fn deref(&self) -> &ProgressBar {
        &self.bar
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.bar.finish_and_clear();
        if self.id != 0 {
            deactivate(self.id);
        }
    }
}

fn activate(id: u64, bar: &ProgressBar) {
    let mut active = ACTIVE.lock();
    *active = Some((id, bar.downgrade()));
    DRAWING.store(true, Ordering::Release);
}

fn deactivate(id: u64) {
    let mut active = ACTIVE.lock();
    if active.as_ref().is_some_and(|(a, _)| *a == id) {
        *active = None;
        DRAWING.store(false, Ordering::Release);
    }
}

fn active() -> Option<ProgressBar> {
    if !DRAWING.load(Ordering::Acquire) {
        return None;
    }
    ACTIVE.lock().as_ref().and_then(|(_, w)| w.upgrade())
}

/// `{prefix}[elapsed] bar 12,345/100,000 (66,588/s, eta 2s)`; a spinner when the length is
/// unknown.
fn style(known_len: bool, deadline: Arc<OnceLock<Instant>>) -> ProgressStyle {
    let template = if known_len {
        "{prefix} [{elapsed_precise}] {wide_bar} {human_pos}/{human_len} ({rate}, eta {eta})"
    } else {
        "{prefix} [{elapsed_precise}] {spinner} {human_pos} ({rate}, eta {eta})"
    };
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .with_key(
            "rate",
            |s: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                let _ = w.write_str(&fmt_rate(s.per_sec()));
            },
        )
        .with_key(
            "eta",
            move |s: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                let by_count = (s.len().is_some() && s.per_sec() > 0.0).then(|| s.eta());
                let by_time = deadline
                    .get()
                    .map(|d| d.saturating_duration_since(Instant::now()));
                let _ = match eta(by_count, by_time) {
                    Some(d) => write!(w, "{:#}", HumanDuration(d)),
                    None => w.write_str("?"),
                };
            },
        )
}

/// The nearer of the two ends, when either is known.
fn eta(by_count: Option<Duration>, by_time: Option<Duration>) -> Option<Duration> {
    match (by_count, by_time) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// A rate rounded to a whole number, with thousands separators: `66,588/s`.
pub fn fmt_rate(per_sec: f64) -> String {
    let n = if per_sec.is_finite() && per_sec > 0.0 {
        per_sec.round() as u64
    } else {
        0
    };
    format!("{}/s", HumanCount(n))
}

/// Writes `line` (and a newline) on stderr above the active bar, if one is drawn.
pub fn eprintln_above(line: &str) {
    let mut text = String::with_capacity(line.len() + 1);
    text.push_str(line);
    text.push('\n');
    let _ = write_above(active(), &mut std::io::stderr(), text.as_bytes());
}

/// Writes `buf` to `sink` with `bar` hidden meanwhile, so the bar is drawn again below it
/// rather than left half-overwritten above it.
fn write_above(bar: Option<ProgressBar>, sink: &mut dyn Write, buf: &[u8]) -> std::io::Result<()> {
    match bar {
        Some(bar) => bar.suspend(|| sink.write_all(buf).and_then(|()| sink.flush())),
        None => sink.write_all(buf),
    }
}

/// tracing's writer for stderr that keeps log lines clear of the active progress bar
/// (`tracing_subscriber::fmt::layer().with_writer(LogWriter)`).
#[derive(Debug, Clone, Copy, Default)]
pub struct LogWriter;

/// One log event's writer (see [`LogWriter`]).
pub struct LogLine(std::io::Stderr);

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LogLine;
    fn make_writer(&'a self) -> LogLine {
        LogLine(std::io::stderr())
    }
}

impl Write for LogLine {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.write_all(buf).map(|()| buf.len())
    }

    // The formatter writes each event with one `write_all`: one suspend per line.
    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        write_above(active(), &mut self.0, buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use indicatif::TermLike;

    /// A terminal that records what is done to it, and log writes, in one sequence.
    #[derive(Debug, Clone, Default)]
    struct Screen(Arc<Mutex<Vec<String>>>);

    impl Screen {
        fn push(&self, s: String) {
            self.0.lock().push(s);
        }
        fn events(&self) -> Vec<String> {
            self.0.lock().clone()
        }
    }

    impl TermLike for Screen {
        fn width(&self) -> u16 {
            80
        }
        fn move_cursor_up(&self, n: usize) -> std::io::Result<()> {
            self.push(format!("up {n}"));
            Ok(())
        }
        fn move_cursor_down(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_right(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_left(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn write_line(&self, s: &str) -> std::io::Result<()> {
            self.push(format!("draw {s}"));
            Ok(())
        }
        fn write_str(&self, s: &str) -> std::io::Result<()> {
            if !s.is_empty() {
                self.push(format!("draw {s}"));
            }
            Ok(())
        }
        fn clear_line(&self) -> std::io::Result<()> {
            self.push("clear".into());
            Ok(())
        }
        fn flush(&self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Write for Screen {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.push(format!("log {}", String::from_utf8_lossy(buf).trim_end()));
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// A log line written while the bar is drawn: the bar is cleared first and drawn again
    /// after, so the line is not written over (or under) a stale frame.
    #[test]
    fn a_log_line_clears_the_bar_and_the_bar_comes_back_below_it() {
        let screen = Screen::default();
        let bar = ProgressBar::with_draw_target(
            Some(100),
            ProgressDrawTarget::term_like(Box::new(screen.clone())),
        );
        bar.set_style(ProgressStyle::with_template("{human_pos}/{human_len}").unwrap());
        bar.set_position(42);
        bar.tick();
        let mut sink = screen.clone();
        write_above(Some(bar.clone()), &mut sink, b"WARN something happened\n").unwrap();
        let events = screen.events();
        let log = events
            .iter()
            .position(|e| e == "log WARN something happened")
            .expect("the line was written");
        let drawn_before = events[..log].iter().rposition(|e| e.starts_with("draw 42"));
        let cleared_before = events[..log].iter().rposition(|e| e == "clear");
        assert!(
            drawn_before.is_some() && cleared_before > drawn_before,
            "the frame must be cleared before the line: {events:?}"
        );
        assert!(
            events[log + 1..].iter().any(|e| e == "draw 42/100"),
            "the bar is drawn again below the line: {events:?}"
        );
    }

    #[test]
    fn rates_are_whole_with_thousands_separators() {
        assert_eq!(fmt_rate(66_588.4), "66,588/s");
        assert_eq!(fmt_rate(1_234_567.5), "1,234,568/s");
        assert_eq!(fmt_rate(12.0), "12/s");
        assert_eq!(fmt_rate(f64::NAN), "0/s");
    }

    #[test]
    fn the_eta_is_the_nearer_end() {
        let s = Duration::from_secs;
        assert_eq!(eta(Some(s(10)), Some(s(3))), Some(s(3)));
        assert_eq!(eta(None, Some(s(3))), Some(s(3)));
        assert_eq!(eta(Some(s(10)), None), Some(s(10)));
        assert_eq!(eta(None, None), None);
    }

    /// No terminal here (tests), so no bar is drawn and none becomes active.
    #[test]
    fn without_a_terminal_nothing_is_drawn_or_registered() {
        let p = Progress::new("run", Some(10), false);
        if !std::io::stderr().is_terminal() {
            assert!(p.is_hidden());
            assert!(active().is_none());
        }
    }
}
