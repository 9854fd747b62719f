//! `pusher report compare A.json B.json`: two runs side by side, with each figure's change
//! and a mark where it moved past the threshold (better or worse, by the figure's direction).

use crate::bench::report::{fmt_us, Percentiles, Report};
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
    pub mark: Mark,
}

#[derive(Clone, Copy)]
enum Better {
    Higher,
    Lower,
    Neither,
}

fn row(
    name: &str,
    a: Option<f64>,
    b: Option<f64>,
    show: impl Fn(f64) -> String,
    better: Better,
    threshold_pct: f64,
) -> Row {
    let text = |v: Option<f64>| v.map(&show).unwrap_or_else(|| "-".into());
    let (change, mark) = match (a, b) {
        (Some(a), Some(b)) => {
            let pct = if a == 0.0 {
                if b == 0.0 {
                    0.0
                } else {
                    f64::INFINITY
                }
            } else {
                (b - a) / a.abs() * 100.0
            };
            let moved = pct.abs() > threshold_pct;
            let mark = match (moved, better) {
                (false, _) => Mark::Same,
                (true, Better::Neither) => Mark::Changed,
                (true, Better::Higher) if pct > 0.0 => Mark::Better,
                (true, Better::Lower) if pct < 0.0 => Mark::Better,
                (true, _) => Mark::Worse,
            };
            let change = if pct.is_finite() {
                format!("{pct:+.1}%")
            } else {
                "new".into()
            };
            (change, mark)
        }
        (None, None) => ("".into(), Mark::Same),
        _ => ("-".into(), Mark::Changed),
    };
    Row {
        name: name.to_string(),
        a: text(a),
        b: text(b),
        change,
        mark,
    }
}

/// The rows of a comparison of `a` (before) and `b` (after).
pub fn rows(a: &Report, b: &Report, threshold_pct: f64) -> Vec<Row> {
    let t = threshold_pct;
    let us = |v: f64| fmt_us(v as u64);
    let mut out = vec![
        row(
            "throughput (msg/s)",
            Some(a.throughput),
            Some(b.throughput),
            |v| format!("{v:.0}"),
            Better::Higher,
            t,
        ),
        row(
            "measured (s)",
            Some(a.duration_secs),
            Some(b.duration_secs),
            |v| format!("{v:.2}"),
            Better::Neither,
            t,
        ),
    ];
    let lat = |r: &Report| {
        let l = &r.latency;
        [
            ("send", l.send.clone()),
            ("send (CO)", l.send_corrected.clone()),
            ("end-to-end", l.end_to_end.clone()),
            ("e2e (CO)", l.end_to_end_corrected.clone()),
            (
                "schedule lag",
                r.replay.as_ref().and_then(|x| x.schedule_lag.clone()),
            ),
        ]
    };
    for ((name, pa), (_, pb)) in lat(a).into_iter().zip(lat(b)) {
        if pa.is_none() && pb.is_none() {
            continue;
        }
        type Pick = fn(&Percentiles) -> u64;
        let picks: [(&str, Pick); 5] = [
            ("p50", |p| p.p50_us),
            ("p90", |p| p.p90_us),
            ("p99", |p| p.p99_us),
            ("p99.9", |p| p.p999_us),
            ("max", |p| p.max_us),
        ];
        for (q, pick) in picks {
            out.push(row(
                &format!("{name} {q}"),
                pa.as_ref().map(|p| pick(p) as f64),
                pb.as_ref().map(|p| pick(p) as f64),
                us,
                Better::Lower,
                t,
            ));
        }
    }
    let classes: std::collections::BTreeSet<&String> =
        a.outcomes.keys().chain(b.outcomes.keys()).collect();
    for class in classes {
        let get = |r: &Report| Some(r.outcomes.get(class).copied().unwrap_or(0) as f64);
        out.push(row(
            &format!("outcome {class}"),
            get(a),
            get(b),
            |v| format!("{v:.0}"),
            Better::Neither,
            t,
        ));
    }
    let ok = |r: &Report| if r.conservation.ok { "ok" } else { "MISMATCH" };
    out.push(Row {
        name: "conservation".into(),
        a: ok(a).into(),
        b: ok(b).into(),
        change: String::new(),
        mark: match (a.conservation.ok, b.conservation.ok) {
            (true, false) => Mark::Worse,
            (false, true) => Mark::Better,
            _ => Mark::Same,
        },
    });
    out.push(row(
        "calibration (ops/s)",
        Some(a.calibration),
        Some(b.calibration),
        |v| format!("{v:.0}"),
        Better::Neither,
        t,
    ));
    out
}

/// The comparison as a text table.
pub fn text(a: &Report, b: &Report, a_name: &str, b_name: &str, threshold_pct: f64) -> String {
    let rows = rows(a, b, threshold_pct);
    let mut s = String::new();
    let _ = writeln!(
        s,
        "pusher report compare: A = {a_name}, B = {b_name} (marks beyond {threshold_pct}%)"
    );
    if a.params != b.params {
        let _ = writeln!(
            s,
            "  note: the runs' parameters differ (mode, load, count...): compare with care"
        );
    }
    let _ = writeln!(
        s,
        "  {:<22} {:>14} {:>14} {:>9}",
        "figure", "A", "B", "change"
    );
    for r in &rows {
        let _ = writeln!(
            s,
            "  {:<22} {:>14} {:>14} {:>9}  {}",
            r.name,
            r.a,
            r.b,
            r.change,
            r.mark.word()
        );
    }
    let worse = rows.iter().filter(|r| r.mark == Mark::Worse).count();
    let better = rows.iter().filter(|r| r.mark == Mark::Better).count();
    let _ = writeln!(s, "  {worse} worse, {better} better");
    s
}
