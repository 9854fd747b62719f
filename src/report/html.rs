//! One self-contained HTML page per report: the run's parameters and figures as tables, and
//! SVG charts drawn with plotters (latency percentile distribution, throughput and outcomes
//! over time, the schedule's lag during a replay). No script, no external asset: the page
//! opens anywhere, offline.

use super::compare::{notes, rows, Mark};
use super::ReportError;
use crate::report::data::{fmt_us, IntervalPoint, Report, Series};
use plotters::prelude::*;
use std::fmt::Write as _;
use std::path::Path;

const WIDTH: u32 = 900;
const HEIGHT: u32 = 360;
/// Colours of the series, in order (colour-blind safe: Okabe-Ito).
const PALETTE: [RGBColor; 6] = [
    RGBColor(0, 114, 178),
    RGBColor(213, 94, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(230, 159, 0),
    RGBColor(86, 180, 233),
];

/// Writes the page for one run.
pub fn write(report: &Report, path: &Path) -> Result<(), ReportError> {
    super::write_file(path, render(report)?.as_bytes())
}

/// The page for one run.
pub fn render(r: &Report) -> Result<String, ReportError> {
    let title = match &r.replay {
        Some(rep) => format!("pusher replay: {} at {}", rep.source, rep.pace),
        None => format!("pusher bench: {} {}", r.params.mode, r.params.platform),
    };
    let mut body = String::new();
    let _ = writeln!(body, "<h1>{}</h1>", esc(&title));
    let _ = writeln!(body, "<p class=\"sub\">{}</p>", esc(&subtitle(r)));
    if r.interrupted {
        body.push_str(
            "<p class=\"note interrupted\"><strong>Interrupted</strong>: stopped by a signal before the end; the figures cover what ran.</p>\n",
        );
    }
    body.push_str(&summary_table(r));

    let mut charts = Vec::new();
    if let Some(s) = &r.series {
        let n = samples(r);
        let mut lines = vec![(format!("{} latency", s.latency), s.distribution.clone(), n)];
        if !s.distribution_corrected.is_empty() {
            lines.push((
                format!("{} latency from the schedule (CO corrected)", s.latency),
                s.distribution_corrected.clone(),
                n,
            ));
        }
        if !s.distribution_send.is_empty() {
            lines.push(("send latency".to_string(), s.distribution_send.clone(), n));
        }
        charts.push(distribution_chart("Latency by percentile", &lines)?);
    }
    charts.push(throughput_chart(r)?);
    if let Some(s) = r.series.as_ref().filter(|s| !s.intervals.is_empty()) {
        let window = measured_window(r);
        charts.push(latency_over_time(s, &window)?);
        charts.push(errors_over_time(s, &window)?);
        if s.intervals.iter().any(|i| i.offered > 0) {
            charts.push(offered_vs_achieved(s, &window)?);
        }
    }
    if let Some(rep) = &r.replay {
        if !rep.lag_per_sec_us.is_empty() {
            let ms: Vec<f64> = rep
                .lag_per_sec_us
                .iter()
                .map(|&u| u as f64 / 1000.0)
                .collect();
            charts.push(time_chart(
                "Schedule lag during the replay (latest start each second)",
                "lag (ms)",
                &[("schedule lag".to_string(), ms)],
            )?);
        }
    }
    for c in charts {
        let _ = writeln!(body, "<figure>{c}</figure>");
    }
    body.push_str(&runs_table(r));
    body.push_str(&params_table(r));
    Ok(page(&title, &body))
}

/// What the charts over time cover: the measured window, after the warm-up.
fn measured_window(r: &Report) -> String {
    if r.params.warmup_secs > 0.0 {
        format!(
            "seconds of the measured window (after a {} s warm-up, not shown)",
            trim(r.params.warmup_secs)
        )
    } else {
        "seconds since the start".to_string()
    }
}

/// (interval midpoint, value) for each interval where `value` has one.
fn points(s: &Series, value: impl Fn(&IntervalPoint) -> Option<f64>) -> Vec<(f64, f64)> {
    s.intervals
        .iter()
        .filter_map(|i| value(i).map(|v| (i.start_secs + i.secs / 2.0, v)))
        .collect()
}

fn over_time(
    caption: &str,
    y_desc: &str,
    x_desc: &str,
    s: &Series,
    lines: Vec<(&str, Vec<(f64, f64)>)>,
) -> Result<String, ReportError> {
    let lines: Vec<(&str, Vec<(f64, f64)>)> =
        lines.into_iter().filter(|(_, p)| !p.is_empty()).collect();
    let x_max = s
        .intervals
        .last()
        .map(|i| i.start_secs + i.secs)
        .unwrap_or(1.0);
    let y_max = lines
        .iter()
        .flat_map(|(_, p)| p.iter().map(|q| q.1))
        .fold(0.001f64, f64::max)
        * 1.1;
    line_chart(
        Axes {
            caption,
            x_max,
            y_max,
            x_desc,
            y_desc,
            x_labels: 10,
            x_format: &|x| trim(*x),
            legend: SeriesLabelPosition::UpperRight,
        },
        &lines,
    )
}

/// p50 and p99 of each interval, send and end to end: a tail that grows shows where.
fn latency_over_time(s: &Series, x_desc: &str) -> Result<String, ReportError> {
    let ms = |v: Option<u64>| v.map(|us| us as f64 / 1000.0);
    over_time(
        &format!(
            "Latency over time (p50 and p99 of each {} ms)",
            trim(s.intervals[0].secs * 1000.0)
        ),
        "latency (ms)",
        x_desc,
        s,
        vec![
            ("send p50", points(s, |i| ms(i.send_p50_us))),
            ("send p99", points(s, |i| ms(i.send_p99_us))),
            ("end-to-end p50", points(s, |i| ms(i.e2e_p50_us))),
            ("end-to-end p99", points(s, |i| ms(i.e2e_p99_us))),
        ],
    )
}

/// The share of each interval's verdicts that were not "delivered".
fn errors_over_time(s: &Series, x_desc: &str) -> Result<String, ReportError> {
    over_time(
        "Errors over time (verdicts other than delivered)",
        "% of verdicts",
        x_desc,
        s,
        vec![(
            "not delivered",
            points(s, |i| {
                (i.done > 0).then(|| 100.0 * i.failed as f64 / i.done as f64)
            }),
        )],
    )
}

/// Open loop: what the schedule offered against what came back, per second.
fn offered_vs_achieved(s: &Series, x_desc: &str) -> Result<String, ReportError> {
    over_time(
        "Offered against achieved rate",
        "messages per second",
        x_desc,
        s,
        vec![
            (
                "offered (scheduled starts)",
                points(s, |i| Some(i.offered as f64 / i.secs)),
            ),
            (
                "achieved (verdicts)",
                points(s, |i| Some(i.done as f64 / i.secs)),
            ),
        ],
    )
}

/// `--repeat` runs side by side: their spread is the run's noise.
fn runs_table(r: &Report) -> String {
    if r.runs.len() < 2 {
        return String::new();
    }
    let mut t = String::from(
        "<h2>Repetitions</h2>\n<table>\n<tr><th>run</th><th>throughput (msg/s)</th><th>p99</th></tr>\n",
    );
    for (i, tp) in r.runs.iter().enumerate() {
        let p99 = r
            .runs_p99_us
            .get(i)
            .map(|us| fmt_us(*us))
            .unwrap_or_default();
        let _ = writeln!(
            t,
            "<tr><td>{}</td><td>{tp:.0}</td><td>{p99}</td></tr>",
            i + 1
        );
    }
    let min = r.runs.iter().copied().fold(f64::INFINITY, f64::min);
    let max = r.runs.iter().copied().fold(0.0, f64::max);
    let _ = writeln!(
        t,
        "<tr><td>spread</td><td>{min:.0} - {max:.0} (max/min {:.2})</td><td></td></tr>",
        max / min.max(1e-9)
    );
    t.push_str("</table>\n");
    t
}

/// The comparison page: the table of `compare` with marks, and both distributions overlaid.
pub fn render_compare(
    a: &Report,
    b: &Report,
    a_name: &str,
    b_name: &str,
    threshold_pct: f64,
) -> Result<String, ReportError> {
    let title = format!("pusher report compare: {a_name} vs {b_name}");
    let mut body = String::new();
    let _ = writeln!(body, "<h1>{}</h1>", esc(&title));
    let _ = writeln!(
        body,
        "<p class=\"sub\">A = {} ({}); B = {} ({}). Marked: changes beyond the noise (from the spread of repeated runs, or the drift assumed for one run, widened by the calibration's move between the reports), raw and calibration-normalised, and beyond {threshold_pct}%.</p>",
        esc(a_name),
        esc(&subtitle(a)),
        esc(b_name),
        esc(&subtitle(b))
    );
    for note in notes(a, b) {
        let _ = writeln!(body, "<p class=\"note\">Note: {}</p>", esc(&note));
    }
    body.push_str("<table><tr><th>figure</th><th>A</th><th>B</th><th>change</th><th>normalised</th><th>noise</th><th></th></tr>\n");
    for row in rows(a, b, threshold_pct) {
        let class = match row.mark {
            Mark::Better => "better",
            Mark::Worse => "worse",
            Mark::Changed => "changed",
            Mark::Same => "",
        };
        let _ = writeln!(
            body,
            "<tr class=\"{class}\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&row.name),
            esc(&row.a),
            esc(&row.b),
            esc(&row.change),
            esc(&row.normalised),
            esc(&row.noise),
            row.mark.word()
        );
    }
    body.push_str("</table>\n");
    let mut lines = Vec::new();
    for (name, r) in [("A", a), ("B", b)] {
        if let Some(s) = &r.series {
            lines.push((
                format!("{name}: {} latency", s.latency),
                s.distribution.clone(),
                samples(r),
            ));
        }
    }
    if !lines.is_empty() {
        let _ = writeln!(
            body,
            "<figure>{}</figure>",
            distribution_chart("Latency by percentile, A and B", &lines)?
        );
    }
    Ok(page(&title, &body))
}

/// How many latencies the distribution holds: it sets how far into the tail it can go.
fn samples(r: &Report) -> u64 {
    let l = &r.latency;
    let p = match r.series.as_ref().map(|s| s.latency.as_str()) {
        Some("end-to-end") => l.end_to_end.as_ref(),
        _ => l.send.as_ref(),
    };
    p.map(|p| p.count).unwrap_or(1)
}

fn subtitle(r: &Report) -> String {
    let p = &r.params;
    let load = match (p.concurrency, p.rate, &r.replay) {
        (_, Some(rate), _) => format!("open loop at {rate:.0}/s"),
        (Some(c), None, _) => format!("closed loop, {c} in flight"),
        (None, None, Some(rep)) => format!("open loop at {} of the recorded pace", rep.pace),
        _ => "?".into(),
    };
    format!(
        "{} {} via {}, {}, profile {}; pusher {}, started {}",
        p.mode,
        p.platform,
        p.transport,
        load,
        p.profile,
        r.pusher_version,
        humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(r.started_at)
        )
    )
}

fn summary_table(r: &Report) -> String {
    let mut t = String::from("<table class=\"summary\">\n");
    let _ = writeln!(
        t,
        "<tr><th>throughput</th><td colspan=\"6\">{:.0} msg/s over {:.2} s</td></tr>",
        r.throughput, r.duration_secs
    );
    let _ = writeln!(
        t,
        "<tr><th>latency</th><th>p50</th><th>p90</th><th>p99</th><th>p99.9</th><th>max</th><th>count</th></tr>"
    );
    let l = &r.latency;
    for (name, p) in [
        ("send", &l.send),
        ("send (CO corrected)", &l.send_corrected),
        ("end-to-end", &l.end_to_end),
        ("end-to-end (CO corrected)", &l.end_to_end_corrected),
    ] {
        if let Some(q) = p {
            let _ = writeln!(
                t,
                "<tr><th>{name}</th><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                fmt_us(q.p50_us),
                fmt_us(q.p90_us),
                fmt_us(q.p99_us),
                fmt_us(q.p999_us),
                fmt_us(q.max_us),
                q.count
            );
        }
    }
    if let Some(q) = r.replay.as_ref().and_then(|x| x.schedule_lag.as_ref()) {
        let _ = writeln!(
            t,
            "<tr><th>schedule lag</th><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            fmt_us(q.p50_us),
            fmt_us(q.p90_us),
            fmt_us(q.p99_us),
            fmt_us(q.p999_us),
            fmt_us(q.max_us),
            q.count
        );
    }
    let outcomes: Vec<String> = r.outcomes.iter().map(|(k, v)| format!("{k} {v}")).collect();
    let _ = writeln!(
        t,
        "<tr><th>outcomes</th><td colspan=\"6\">{}</td></tr>",
        esc(&outcomes.join(", "))
    );
    for (reason, n) in &r.reasons {
        let _ = writeln!(
            t,
            "<tr><th></th><td colspan=\"6\">{}: {n}</td></tr>",
            esc(reason)
        );
    }
    let c = &r.conservation;
    let stage =
        |name: &str, v: Option<u64>| v.map(|n| format!(" = {name} {n}")).unwrap_or_default();
    let _ = writeln!(
        t,
        "<tr><th>conservation</th><td colspan=\"6\" class=\"{}\">generated {}{}{} = answered {}{}: {}</td></tr>",
        if c.ok { "better" } else { "worse" },
        c.generated,
        stage("produced", c.produced),
        stage("consumed", c.consumed),
        c.answered,
        stage("committed", c.committed),
        esc(&c.verdict())
    );
    t.push_str("</table>\n");
    t
}

fn params_table(r: &Report) -> String {
    let mut t = String::from("<h2>Parameters</h2>\n<table class=\"params\">\n");
    let mut row = |k: &str, v: String| {
        let _ = writeln!(t, "<tr><th>{}</th><td>{}</td></tr>", esc(k), esc(&v));
    };
    let p = &r.params;
    row("mode", p.mode.clone());
    row("platform", p.platform.clone());
    row("profile", p.profile.clone());
    row("transport", p.transport.clone());
    let opt = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    row("count", opt(p.count.map(|c| c.to_string())));
    row("duration", opt(p.duration_secs.map(|d| format!("{d} s"))));
    row("warm-up", format!("{} s", p.warmup_secs));
    row("concurrency", opt(p.concurrency.map(|c| c.to_string())));
    row("rate", opt(p.rate.map(|c| format!("{c}/s"))));
    row("repeat", p.repeat.to_string());
    if let Some(rep) = &r.replay {
        row("capture", rep.source.clone());
        row("target", rep.target.clone());
        row("pace", rep.pace.clone());
        row("looped", rep.looped.to_string());
        row(
            "capture size",
            format!(
                "{} messages over {:.2} s",
                rep.capture_messages, rep.capture_secs
            ),
        );
    }
    row("calibration", format!("{:.0} ops/s", r.calibration));
    if let Some(rss) = r.peak_rss_bytes {
        row("peak RSS", format!("{:.1} MB", rss as f64 / 1e6));
    }
    row("pusher", r.pusher_version.clone());
    t.push_str("</table>\n");
    t
}

fn page(title: &str, body: &str) -> String {
    format!(
        r#"<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{}</title>
<style>
body {{ font-family: sans-serif; margin: 24px; color: #222; max-width: 960px; }}
h1 {{ font-size: 22px; margin-bottom: 4px; }}
h2 {{ font-size: 18px; margin-top: 28px; }}
.sub {{ color: #555; margin-top: 0; }}
table {{ border-collapse: collapse; margin: 12px 0; }}
th, td {{ border: 1px solid #ccc; padding: 4px 10px; text-align: right; font-variant-numeric: tabular-nums; }}
th {{ background: #f3f3f3; text-align: left; }}
td:first-child {{ text-align: left; }}
tr.better td, td.better {{ background: #e3f4e8; }}
tr.worse td, td.worse {{ background: #fbe3e0; }}
tr.changed td {{ background: #fdf6dc; }}
figure {{ margin: 16px 0; }}
figure svg {{ max-width: 100%; height: auto; }}
.note {{ background: #fdf6dc; padding: 6px 10px; }}
</style>
</head>
<body>
{}
</body>
</html>
"#,
        esc(title),
        body
    )
}

/// HTML escaping for text and quoted attributes.
fn esc(s: &str) -> String {
    html_escape::encode_safe(s).into_owned()
}

fn chart_err(e: impl std::fmt::Display) -> ReportError {
    ReportError::Chart(e.to_string())
}

/// A line of the percentile plot: its name, `[percentile, µs]` points, and the sample count.
type Distribution = (String, Vec<(f64, u64)>, u64);

/// HdrHistogram's percentile plot: x is log10(1 / (1 - percentile)), so 90 %, 99 %, 99.9 %
/// are evenly spaced and the tail is visible; y is latency in ms.
fn distribution_chart(caption: &str, lines: &[Distribution]) -> Result<String, ReportError> {
    // `n` samples resolve the tail down to 1/n: the maximum (100 %) is drawn there.
    let points: Vec<Vec<(f64, f64)>> = lines
        .iter()
        .map(|(_, d, n)| {
            let tail = ((*n).max(10) as f64).log10();
            d.iter()
                .map(|&(p, us)| {
                    let x = if p >= 100.0 {
                        tail
                    } else {
                        (-(1.0 - p / 100.0).log10()).min(tail)
                    };
                    (x, us as f64 / 1000.0)
                })
                .collect()
        })
        .collect();
    let x_max = points
        .iter()
        .flatten()
        .map(|p| p.0)
        .fold(2.0f64, f64::max)
        .ceil();
    let y_max = points
        .iter()
        .flatten()
        .map(|p| p.1)
        .fold(0.001f64, f64::max)
        * 1.1;
    let percent = |x: &f64| {
        let pct = 100.0 * (1.0 - 10f64.powf(-x));
        if pct < 99.0 {
            format!("{pct:.0}%")
        } else {
            format!("{}%", trim(pct))
        }
    };
    let named: Vec<(&str, Vec<(f64, f64)>)> = lines
        .iter()
        .zip(points)
        .map(|((name, _, _), pts)| (name.as_str(), pts))
        .collect();
    line_chart(
        Axes {
            caption,
            x_max,
            y_max,
            x_desc: "percentile",
            y_desc: "latency (ms)",
            x_labels: x_max as usize + 1,
            x_format: &percent,
            legend: SeriesLabelPosition::LowerRight,
        },
        &named,
    )
}

/// A number without trailing zeros: 99.9, 99.99, 12.5.
fn trim(v: f64) -> String {
    let s = format!("{v:.4}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    s.to_string()
}

/// Completions per second, in all and per outcome class: per interval (50 ms and up) when the
/// report has them, so a short run still draws a curve; per second for older reports.
fn throughput_chart(r: &Report) -> Result<String, ReportError> {
    if let Some(s) = r.series.as_ref().filter(|s| !s.intervals.is_empty()) {
        let mut lines = vec![("all verdicts", points(s, |i| Some(i.done as f64 / i.secs)))];
        if s.intervals.iter().any(|i| i.failed > 0) {
            lines.push((
                "not delivered",
                points(s, |i| Some(i.failed as f64 / i.secs)),
            ));
        }
        return over_time(
            &format!(
                "Throughput over time (per {} ms)",
                trim(s.intervals[0].secs * 1000.0)
            ),
            "messages per second",
            &measured_window(r),
            s,
            lines,
        );
    }
    let mut lines = vec![(
        "all completions".to_string(),
        r.timeline.iter().map(|&v| v as f64).collect::<Vec<_>>(),
    )];
    if let Some(s) = &r.series {
        // One line per class only when there is more than one class: else it repeats "all".
        if s.outcomes_per_sec.len() > 1 {
            for (class, v) in &s.outcomes_per_sec {
                lines.push((class.clone(), v.iter().map(|&v| v as f64).collect()));
            }
        }
    }
    time_chart(
        "Throughput and outcomes over time",
        "messages per second",
        &lines,
    )
}

/// Lines over the seconds of the run. A run shorter than two seconds is drawn as a flat line
/// across its one second.
fn time_chart(
    caption: &str,
    y_desc: &str,
    lines: &[(String, Vec<f64>)],
) -> Result<String, ReportError> {
    let secs = lines.iter().map(|(_, v)| v.len()).max().unwrap_or(0).max(1);
    let y_max = lines
        .iter()
        .flat_map(|(_, v)| v.iter().copied())
        .fold(1.0f64, f64::max)
        * 1.1;
    // Each value is the count of its second: drawn at the second's middle, and held across a
    // run of one second.
    let named: Vec<(&str, Vec<(f64, f64)>)> = lines
        .iter()
        .map(|(name, v)| {
            let pts = if v.len() == 1 {
                vec![(0.0, v[0]), (1.0, v[0])]
            } else {
                v.iter()
                    .enumerate()
                    .map(|(s, &y)| (s as f64 + 0.5, y))
                    .collect()
            };
            (name.as_str(), pts)
        })
        .collect();
    line_chart(
        Axes {
            caption,
            x_max: secs as f64,
            y_max,
            x_desc: "seconds since the start",
            y_desc,
            x_labels: 10,
            x_format: &|x| trim(*x),
            legend: SeriesLabelPosition::UpperRight,
        },
        &named,
    )
}

/// What differs between the report's charts.
struct Axes<'a> {
    caption: &'a str,
    x_max: f64,
    y_max: f64,
    x_desc: &'a str,
    y_desc: &'a str,
    x_labels: usize,
    x_format: &'a dyn Fn(&f64) -> String,
    legend: SeriesLabelPosition,
}

/// Named lines on `0..x_max` x `0..y_max`, with a legend, as an SVG document.
fn line_chart(axes: Axes, lines: &[(&str, Vec<(f64, f64)>)]) -> Result<String, ReportError> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(chart_err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(axes.caption, ("sans-serif", 18))
            .margin(12)
            .margin_right(40)
            .x_label_area_size(40)
            .y_label_area_size(64)
            .build_cartesian_2d(0f64..axes.x_max, 0f64..axes.y_max)
            .map_err(chart_err)?;
        chart
            .configure_mesh()
            .x_desc(axes.x_desc)
            .y_desc(axes.y_desc)
            .x_labels(axes.x_labels)
            .x_label_formatter(axes.x_format)
            .y_label_formatter(&|y| trim(*y))
            .draw()
            .map_err(chart_err)?;
        for (i, (name, pts)) in lines.iter().enumerate() {
            let color = PALETTE[i % PALETTE.len()];
            // A series of one point (a run shorter than two buckets) draws no line: a dot.
            let dot = if pts.len() == 1 { 4 } else { 0 };
            chart
                .draw_series(
                    LineSeries::new(pts.iter().copied(), color.stroke_width(2)).point_size(dot),
                )
                .map_err(chart_err)?
                .label(*name)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .position(axes.legend)
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK)
            .draw()
            .map_err(chart_err)?;
        root.present().map_err(chart_err)?;
    }
    Ok(svg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_and_trims() {
        assert_eq!(
            esc("<a href='x'>&</a>"),
            "&lt;a href=&#x27;x&#x27;&gt;&amp;&lt;&#x2F;a&gt;"
        );
        assert_eq!(trim(99.9), "99.9");
        assert_eq!(trim(90.0), "90");
    }

    /// A series of one point (a run shorter than two buckets: `bench --count 1`) is a dot,
    /// where it drew nothing and the chart looked empty.
    #[test]
    fn a_series_of_one_point_is_drawn() {
        let axes = || Axes {
            caption: "c",
            x_max: 1.0,
            y_max: 10.0,
            x_desc: "x",
            y_desc: "y",
            x_labels: 2,
            x_format: &|x| trim(*x),
            legend: SeriesLabelPosition::UpperRight,
        };
        let empty = line_chart(axes(), &[("a", vec![])]).unwrap();
        let one = line_chart(axes(), &[("a", vec![(0.5, 5.0)])]).unwrap();
        assert!(one.matches("<circle").count() > empty.matches("<circle").count());
    }

    /// The page says what the text report says of a run that lost messages: how many and why,
    /// not just "MISMATCH".
    #[test]
    fn the_summary_names_lost_messages_and_their_cause() {
        let mut r = crate::report::gate::tests::sample(1000.0, 100, 1.0);
        r.conservation.lost = 3;
        r.conservation.lost_cause = Some("Kafka dropped <3> messages".into());
        r.conservation.ok = false;
        let table = summary_table(&r);
        assert!(
            table.contains("LOST 3 (Kafka dropped &lt;3&gt; messages)"),
            "{table}"
        );
        assert!(table.contains("class=\"worse\""), "{table}");
    }
}
