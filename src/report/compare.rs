//! `pusher report compare A.json B.json`: two runs side by side, with each figure's change and
//! a mark only where it moved beyond the noise (better or worse, by the figure's direction).
//!
//! The noise of a figure is a factor: from the spread (max / min) of the `--repeat` runs of
//! both reports ([`SPREAD_EXPONENT`]); a report of one run has no spread, so a typical
//! run-to-run drift is assumed for it ([`assumed_noise`]). Either widens by the factor the
//! machine's speed (the calibration) moved between the two reports. A change is marked when the
//! figure moved by more than that factor (and `--threshold`), up or down, both raw and
//! normalised by each report's calibration, as the bench's gate decides
//! (`report::gate::Change`): a faster or busier machine moves only the raw figure.

use crate::report::data::{fmt_us, Latencies, Percentiles, Report};
use crate::report::gate::{Change, Scaling};
use std::fmt::Write as _;

/// What a change means for a reviewer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mark {
    Same,
    Better,
    Worse,
    /// Moved past the threshold, for a figure with no better direction (e.g. outcome counts).
    Changed,
}

impl Mark {
    pub fn word(self) -> &'static str {
        match self {
            Mark::Same => "",
            Mark::Better => "better",
            Mark::Worse => "WORSE",
            Mark::Changed => "changed",
        }
    }
}

/// One line of the comparison.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub name: String,
    pub a: String,
    pub b: String,
    /// `+12.3%`, or `-` when a side is missing.
    pub change: String,
    /// The change normalised by the calibrations, for figures that follow machine speed.
    pub normalised: String,
    /// The factor a figure must move by, up or down, to be marked (`×1.50`), or for counts
    /// the threshold (`±5%`); empty for figures never judged.
    pub noise: String,
    pub mark: Mark,
}

#[derive(Clone, Copy, PartialEq)]
enum Better {
    Higher,
    Lower,
    Neither,
}

/// Run-to-run drift assumed for a report of one run, as a factor (up by it, or down by its
/// inverse), by figure. Measured: six single 5k-message runs of one build back to back
/// (sender-only and end to end) on a 2-core machine shared with two builds moved, pair by
/// pair and after the calibration, by factors up to 1.5 in throughput and 2 in latency; with
/// these bands no sender-only pair and 4 end-to-end pairs in 15 keep a mark (send latency
/// inside the pipeline). Repeated runs (`--repeat`) measure the noise instead.
pub fn assumed_noise(name: &str) -> f64 {
    match name.rsplit(' ').next().unwrap_or_default() {
        "p50" => 1.5,
        "p90" => 1.6,
        "p99" => 1.8,
        "p99.9" | "max" => 2.0,
        // throughput (msg/s)
        _ => 1.5,
    }
}

/// max / min of repeated runs' values; `None` for fewer than two.
fn spread(runs: &[f64]) -> Option<f64> {
    if runs.len() < 2 {
        return None;
    }
    let lo = runs.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = runs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (lo > 0.0).then(|| hi / lo)
}

/// How much wider than the runs' spread two reports' figures drift apart, as an exponent on
/// the spread (a factor: 1.2 becomes 1.2^2.5 = 1.58). The runs of one report follow each other
/// within a second and share the machine's state, so their spread misses what changes between
/// reports, and three runs are few. Measured: 40 reports of one build (`--sender-only --count
/// 5k --repeat 3`) on a 2-core machine busy with other benchmarks; of their 780 pairs, 138 had a
/// figure marked with the spread alone, 6 with its square and the speed's move below, none
/// from 2.5.
const SPREAD_EXPONENT: f64 = 2.5;

/// The noise of a figure, as a factor: from the runs' spread when both reports were repeated,
/// else at least the drift assumed for a single run; widened by how far the machine's speed
/// moved between the reports, since normalising by the calibration corrects only to first
/// order; never under `1 + threshold`.
fn noise(
    name: &str,
    runs_a: &[f64],
    runs_b: &[f64],
    cal_a: f64,
    cal_b: f64,
    threshold: f64,
) -> f64 {
    let (sa, sb) = (spread(runs_a), spread(runs_b));
    let measured = sa.into_iter().chain(sb).fold(1.0, f64::max);
    let factor = if sa.is_some() && sb.is_some() {
        measured.powf(SPREAD_EXPONENT)
    } else {
        measured.max(assumed_noise(name))
    };
    (factor * speed_moved(cal_a, cal_b)).max(1.0 + threshold)
}

/// How far the machine's speed moved between two calibrations, as a factor of at least 1
/// (1 where either is unknown).
fn speed_moved(cal_a: f64, cal_b: f64) -> f64 {
    if cal_a > 0.0 && cal_b > 0.0 {
        (cal_a / cal_b).max(cal_b / cal_a)
    } else {
        1.0
    }
}

/// A figure of both reports, judged against the noise.
struct Figure<'a> {
    name: String,
    a: Option<f64>,
    b: Option<f64>,
    runs_a: Vec<f64>,
    runs_b: Vec<f64>,
    better: Better,
    show: &'a dyn Fn(f64) -> String,
}

fn pct(f: f64) -> String {
    if f.is_finite() {
        format!("{:+.1}%", f * 100.0)
    } else {
        "new".into()
    }
}

fn judge(f: Figure<'_>, ra: &Report, rb: &Report, threshold: f64) -> Row {
    let text = |v: Option<f64>| v.map(f.show).unwrap_or_else(|| "-".into());
    let mut row = Row {
        name: f.name.clone(),
        a: text(f.a),
        b: text(f.b),
        change: String::new(),
        normalised: String::new(),
        noise: String::new(),
        mark: Mark::Same,
    };
    let (a, b) = match (f.a, f.b) {
        (Some(a), Some(b)) => (a, b),
        (None, None) => return row,
        (a, _) => {
            row.change = "-".into();
            // A figure B no longer has (nothing measured: no answer came) is worse whichever
            // way it points; one B has alone is new.
            row.mark = match (a, f.better) {
                (Some(_), Better::Higher | Better::Lower) => Mark::Worse,
                _ => Mark::Changed,
            };
            return row;
        }
    };
    if a == 0.0 || b == 0.0 {
        // No ratio, so no noise to weigh: a move to or from zero is judged by its direction
        // alone (throughput 1000 -> 0 is worse, not "new").
        row.change = if a == b {
            pct(0.0)
        } else if a == 0.0 {
            "new".into()
        } else {
            pct(-1.0)
        };
        let rose = b > a;
        row.mark = match f.better {
            _ if a == b => Mark::Same,
            Better::Higher if rose => Mark::Better,
            Better::Lower if !rose => Mark::Better,
            Better::Higher | Better::Lower => Mark::Worse,
            Better::Neither => Mark::Changed,
        };
        return row;
    }
    let scaling = match f.better {
        Better::Higher => Some(Scaling::WithSpeed),
        Better::Lower => Some(Scaling::AgainstSpeed),
        Better::Neither => None,
    };
    let Some(scaling) = scaling else {
        // Counts: no noise model, only the threshold.
        let raw = b / a - 1.0;
        row.change = pct(raw);
        row.noise = format!("±{:.0}%", threshold * 100.0);
        row.mark = if raw.abs() > threshold {
            Mark::Changed
        } else {
            Mark::Same
        };
        return row;
    };
    let c = Change::of(b, rb.calibration, a, ra.calibration, scaling);
    let factor = noise(
        &f.name,
        &f.runs_a,
        &f.runs_b,
        ra.calibration,
        rb.calibration,
        threshold,
    );
    row.change = pct(c.raw);
    row.normalised = pct(c.normalised);
    row.noise = format!("×{factor:.2}");
    let (up, down) = (
        c.rose_beyond(factor - 1.0),
        c.fell_beyond(1.0 - 1.0 / factor),
    );
    row.mark = match (up, down, f.better) {
        (true, _, Better::Higher) | (_, true, Better::Lower) => Mark::Better,
        (true, _, _) | (_, true, _) => Mark::Worse,
        _ => Mark::Same,
    };
    row
}

/// A row shown for context, never marked.
fn info(name: &str, a: String, b: String) -> Row {
    Row {
        name: name.into(),
        a,
        b,
        change: String::new(),
        normalised: String::new(),
        noise: String::new(),
        mark: Mark::Same,
    }
}

/// The rows of a comparison of `a` (before) and `b` (after); `threshold_pct` is the least
/// change marked.
pub fn rows(a: &Report, b: &Report, threshold_pct: f64) -> Vec<Row> {
    let t = threshold_pct / 100.0;
    let us = |v: f64| fmt_us(v as u64);
    let whole = |v: f64| format!("{v:.0}");
    let mut out = vec![
        judge(
            Figure {
                name: "throughput (msg/s)".into(),
                a: Some(a.throughput),
                b: Some(b.throughput),
                runs_a: a.runs.clone(),
                runs_b: b.runs.clone(),
                better: Better::Higher,
                show: &whole,
            },
            a,
            b,
            t,
        ),
        info(
            "measured (s)",
            format!("{:.2}", a.duration_secs),
            format!("{:.2}", b.duration_secs),
        ),
    ];
    type Kind = fn(&Latencies) -> Option<&Percentiles>;
    let kinds: [(&str, Kind); 4] = [
        ("send", |l| l.send.as_ref()),
        ("send (CO)", |l| l.send_corrected.as_ref()),
        ("end-to-end", |l| l.end_to_end.as_ref()),
        ("e2e (CO)", |l| l.end_to_end_corrected.as_ref()),
    ];
    type Pick = fn(&Percentiles) -> u64;
    let picks: [(&str, Pick); 5] = [
        ("p50", |p| p.p50_us),
        ("p90", |p| p.p90_us),
        ("p99", |p| p.p99_us),
        ("p99.9", |p| p.p999_us),
        ("max", |p| p.max_us),
    ];
    let per_run = |r: &Report, kind: Kind, pick: Pick| -> Vec<f64> {
        r.runs_latency
            .iter()
            .filter_map(|l| kind(l).map(|p| pick(p) as f64))
            .collect()
    };
    for (name, kind) in kinds {
        let (pa, pb) = (kind(&a.latency), kind(&b.latency));
        if pa.is_none() && pb.is_none() {
            continue;
        }
        for (q, pick) in picks {
            out.push(judge(
                Figure {
                    name: format!("{name} {q}"),
                    a: pa.map(|p| pick(p) as f64),
                    b: pb.map(|p| pick(p) as f64),
                    runs_a: per_run(a, kind, pick),
                    runs_b: per_run(b, kind, pick),
                    better: Better::Lower,
                    show: &us,
                },
                a,
                b,
                t,
            ));
        }
    }
    let lag = |r: &Report| r.replay.as_ref().and_then(|x| x.schedule_lag.clone());
    let (la, lb) = (lag(a), lag(b));
    if la.is_some() || lb.is_some() {
        for (q, pick) in picks {
            out.push(judge(
                Figure {
                    name: format!("schedule lag {q}"),
                    a: la.as_ref().map(|p| pick(p) as f64),
                    b: lb.as_ref().map(|p| pick(p) as f64),
                    runs_a: Vec::new(),
                    runs_b: Vec::new(),
                    better: Better::Lower,
                    show: &us,
                },
                a,
                b,
                t,
            ));
        }
    }
    let classes: std::collections::BTreeSet<&String> =
        a.outcomes.keys().chain(b.outcomes.keys()).collect();
    for class in classes {
        let get = |r: &Report| Some(r.outcomes.get(class).copied().unwrap_or(0) as f64);
        out.push(judge(
            Figure {
                name: format!("outcome {class}"),
                a: get(a),
                b: get(b),
                runs_a: Vec::new(),
                runs_b: Vec::new(),
                better: Better::Neither,
                show: &whole,
            },
            a,
            b,
            t,
        ));
    }
    let ok = |r: &Report| if r.conservation.ok { "ok" } else { "MISMATCH" };
    let mut conservation = info("conservation", ok(a).into(), ok(b).into());
    conservation.mark = match (a.conservation.ok, b.conservation.ok) {
        (true, false) => Mark::Worse,
        (false, true) => Mark::Better,
        _ => Mark::Same,
    };
    out.push(conservation);
    out.push(info(
        "calibration (ops/s)",
        whole(a.calibration),
        whole(b.calibration),
    ));
    out
}

/// What the reader should know before trusting the marks.
pub fn notes(a: &Report, b: &Report) -> Vec<String> {
    let mut notes = Vec::new();
    if a.params != b.params {
        notes.push(
            "the runs' parameters differ (mode, load, count...): compare with care".to_string(),
        );
    }
    for (name, r) in [("A", a), ("B", b)] {
        if r.interrupted {
            notes.push(format!(
                "{name} was interrupted: its figures cover part of a run"
            ));
        }
    }
    if a.runs.len() < 2 || b.runs.len() < 2 {
        notes.push(
            "a report of one run has no measured spread: a typical drift is assumed as its noise (--repeat 3 measures it)"
                .to_string(),
        );
    }
    notes
}

/// The comparison as a text table.
pub fn text(a: &Report, b: &Report, a_name: &str, b_name: &str, threshold_pct: f64) -> String {
    let rows = rows(a, b, threshold_pct);
    let mut s = String::new();
    let _ = writeln!(
        s,
        "pusher report compare: A = {a_name}, B = {b_name} (marked: beyond the noise, raw and calibration-normalised, and {threshold_pct}%)"
    );
    for note in notes(a, b) {
        let _ = writeln!(s, "  note: {note}");
    }
    let _ = writeln!(
        s,
        "  {:<22} {:>14} {:>14} {:>9} {:>11} {:>6}",
        "figure", "A", "B", "change", "normalised", "noise"
    );
    for r in &rows {
        let line = format!(
            "  {:<22} {:>14} {:>14} {:>9} {:>11} {:>6}  {}",
            r.name,
            r.a,
            r.b,
            r.change,
            r.normalised,
            r.noise,
            r.mark.word()
        );
        let _ = writeln!(s, "{}", line.trim_end());
    }
    let worse = rows.iter().filter(|r| r.mark == Mark::Worse).count();
    let better = rows.iter().filter(|r| r.mark == Mark::Better).count();
    let _ = writeln!(s, "  {worse} worse, {better} better");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(throughput: f64, runs: &[f64], p99s: &[u64], calibration: f64) -> Report {
        let text = std::fs::read_to_string("bench/baselines/ci.json").unwrap();
        let mut r: Report = serde_json::from_str(&text).unwrap();
        r.throughput = throughput;
        r.runs = runs.to_vec();
        r.calibration = calibration;
        r.latency = Latencies {
            send: Some(pcts(p99s[0])),
            ..Default::default()
        };
        r.runs_latency = p99s
            .iter()
            .map(|&p| Latencies {
                send: Some(pcts(p)),
                ..Default::default()
            })
            .collect();
        r.replay = None;
        r
    }

    fn pcts(p99: u64) -> Percentiles {
        Percentiles {
            count: 1000,
            min_us: 10,
            mean_us: 100.0,
            p50_us: 100,
            p90_us: 200,
            p99_us: p99,
            p999_us: p99,
            max_us: p99,
        }
    }

    fn mark(rows: &[Row], name: &str) -> Mark {
        rows.iter().find(|r| r.name == name).unwrap().mark
    }

    #[test]
    fn a_change_within_the_runs_spread_is_not_marked() {
        // Runs of A spread 900..1100 (x1.22, noise x1.65): B 8 % or 30 % down is noise, 45 %
        // down is not.
        let a = report(1000.0, &[900.0, 1000.0, 1100.0], &[500, 500, 500], 1e6);
        let b = report(920.0, &[910.0, 920.0, 930.0], &[500, 500, 500], 1e6);
        assert_eq!(mark(&rows(&a, &b, 5.0), "throughput (msg/s)"), Mark::Same);
        let b = report(700.0, &[690.0, 700.0, 710.0], &[500, 500, 500], 1e6);
        assert_eq!(mark(&rows(&a, &b, 5.0), "throughput (msg/s)"), Mark::Same);
        let b = report(550.0, &[540.0, 550.0, 560.0], &[500, 500, 500], 1e6);
        assert_eq!(mark(&rows(&a, &b, 5.0), "throughput (msg/s)"), Mark::Worse);
        let b = report(920.0, &[910.0, 920.0, 930.0], &[500, 500, 500], 1e6);
        // Both tight: the same 8 % is a change.
        let a = report(1000.0, &[990.0, 1000.0, 1010.0], &[500, 500, 500], 1e6);
        assert_eq!(mark(&rows(&a, &b, 5.0), "throughput (msg/s)"), Mark::Worse);
        assert_eq!(mark(&rows(&b, &a, 5.0), "throughput (msg/s)"), Mark::Better);
    }

    #[test]
    fn a_slower_machine_is_not_a_worse_pusher() {
        // B ran on a machine 30 % slower: throughput and calibration fell together.
        let a = report(1000.0, &[995.0, 1000.0, 1005.0], &[500, 505, 510], 1e6);
        let b = report(700.0, &[698.0, 700.0, 702.0], &[715, 720, 725], 0.7e6);
        let r = rows(&a, &b, 5.0);
        assert_eq!(mark(&r, "throughput (msg/s)"), Mark::Same, "{r:#?}");
        assert_eq!(mark(&r, "send p99"), Mark::Same, "{r:#?}");
    }

    #[test]
    fn a_machine_whose_speed_moved_widens_the_noise() {
        // Seen on a shared 2-core machine: one build, the calibration 1.9x faster for B,
        // latencies 59 % lower raw and 22 % lower normalised, each report's runs within 1.28.
        let a = report(1000.0, &[950.0, 1000.0, 1050.0], &[1000, 1100, 1280], 1e6);
        let b = report(1000.0, &[950.0, 1000.0, 1050.0], &[410, 450, 520], 1.9e6);
        let r = rows(&a, &b, 5.0);
        assert_eq!(mark(&r, "send p99"), Mark::Same, "{r:#?}");
        // A change beyond the widened noise is still one: throughput halved while the
        // calibration moved 1.2x.
        let b = report(500.0, &[490.0, 500.0, 510.0], &[500, 505, 510], 1.2e6);
        let a = report(1000.0, &[990.0, 1000.0, 1010.0], &[500, 505, 510], 1e6);
        let r = rows(&a, &b, 5.0);
        assert_eq!(mark(&r, "throughput (msg/s)"), Mark::Worse, "{r:#?}");
    }

    /// A figure that fell to zero or vanished has no ratio to weigh against the noise: it
    /// was shown as "new"/"changed" and passed `--fail-on-worse`.
    #[test]
    fn a_drop_to_zero_or_a_vanished_figure_is_judged_by_direction() {
        let a = report(1000.0, &[1000.0], &[500], 1e6);
        let mut b = report(0.0, &[0.0], &[500], 1e6);
        b.latency.send = None;
        b.runs_latency.clear();
        let r = rows(&a, &b, 5.0);
        assert_eq!(mark(&r, "throughput (msg/s)"), Mark::Worse, "{r:#?}");
        assert_eq!(mark(&r, "send p99"), Mark::Worse, "{r:#?}");
        let r = rows(&b, &a, 5.0);
        assert_eq!(mark(&r, "throughput (msg/s)"), Mark::Better, "{r:#?}");
        assert_eq!(mark(&r, "send p99"), Mark::Changed, "{r:#?}");
        // A latency down to zero is lower, so better; outcome counts have no direction.
        let zero = report(1000.0, &[1000.0], &[0], 1e6);
        let r = rows(&a, &zero, 5.0);
        assert_eq!(mark(&r, "send p99"), Mark::Better, "{r:#?}");
        assert_eq!(mark(&rows(&zero, &a, 5.0), "send p99"), Mark::Worse);
    }

    #[test]
    fn single_runs_assume_the_usual_drift() {
        let a = report(1000.0, &[1000.0], &[500], 1e6);
        let b = report(900.0, &[900.0], &[600], 1e6);
        let r = rows(&a, &b, 5.0);
        assert_eq!(mark(&r, "throughput (msg/s)"), Mark::Same, "{r:#?}");
        assert_eq!(mark(&r, "send p99"), Mark::Same, "{r:#?}");
        let b = report(500.0, &[500.0], &[1500], 1e6);
        let r = rows(&a, &b, 5.0);
        assert_eq!(mark(&r, "throughput (msg/s)"), Mark::Worse, "{r:#?}");
        assert_eq!(mark(&r, "send p99"), Mark::Worse, "{r:#?}");
        assert!(notes(&a, &b).iter().any(|n| n.contains("--repeat")));
    }
}
