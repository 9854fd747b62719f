//! `pusher bench` as a user runs it: small runs end to end and sender-only, the JSON report
//! against its schema, the regression gate, and bad input.

mod common;
#[path = "support/schema.rs"]
mod schema;
#[path = "support/watched.rs"]
mod watched;

use serde_json::{json, Value};
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;
use watched::Watched;

fn pusher(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pusher"))
        .args(args)
        .env("PUSHER_LOG", "warn")
        .output()
        .expect("run pusher")
}

use schema::check_report;

/// `pusher bench ARGS --quiet --json <dir>/<name>.json`, which must succeed: its stdout, and
/// its report checked against the schema.
fn bench_ok(dir: &Path, name: &str, args: &[&str]) -> (String, Value) {
    let json = dir.join(format!("{name}.json"));
    let quiet = ["--quiet", "--json", json.to_str().unwrap()];
    let out = pusher(&[&["bench"][..], args, &quiet].concat());
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{name}: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (stdout, check_report(&json))
}

#[test]
fn end_to_end_bench_conserves_every_message_and_writes_a_valid_report() {
    let dir = tempfile::tempdir().unwrap();
    let hgrm = dir.path().join("e2e.hgrm");
    let (stdout, r) = bench_ok(
        dir.path(),
        "e2e",
        &[
            "--mock",
            "--count",
            "3000",
            "--warmup",
            "0s",
            "--invalid-ratio",
            "0.1",
            "--hgrm",
            hgrm.to_str().unwrap(),
        ],
    );
    assert!(
        stdout.contains("conservation") && stdout.contains(": ok"),
        "{stdout}"
    );
    let c = &r["conservation"];
    assert_eq!(c["generated"], 3000);
    for stage in ["produced", "consumed", "answered", "committed"] {
        assert_eq!(c[stage], 3000, "{stage}: {c}");
    }
    let outcomes: u64 = r["outcomes"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(outcomes, 3000);
    assert!(
        r["outcomes"]["token_invalid"].as_u64().unwrap() > 200,
        "{}",
        r["outcomes"]
    );
    assert!(r["latency"]["end_to_end"]["p99_us"].as_u64().unwrap() > 0);
    let hgrm = std::fs::read_to_string(hgrm).unwrap();
    assert!(
        hgrm.contains("Percentile") && hgrm.contains("#[Max"),
        "{hgrm}"
    );
}

/// `bench --events`: every event sent twice through the API, two routers, the pipeline and
/// the fake: each user is reached exactly once (the cooldown holds), and the pushes add up.
#[test]
fn events_bench_reaches_each_user_once() {
    let dir = tempfile::tempdir().unwrap();
    let (stdout, r) = bench_ok(
        dir.path(),
        "events",
        &[
            "--mock",
            "--events",
            "--count",
            "2000",
            "--batch",
            "50",
            "--concurrency",
            "8",
        ],
    );
    assert!(stdout.contains("(holds)"), "{stdout}");
    assert_eq!(r["params"]["mode"], "events");
    let e = &r["events"];
    assert_eq!(
        (e["users"].as_u64(), e["events"].as_u64()),
        (Some(1000), Some(2000)),
        "{e}"
    );
    assert_eq!(
        (e["pushes"].as_u64(), e["sent_twice"].as_u64()),
        (Some(1000), Some(0)),
        "{e}"
    );
    let c = &r["conservation"];
    assert_eq!(c["ok"], true, "{c}");
    assert_eq!(r["latency"]["end_to_end"]["count"], 1000);
}

/// `bench --api`: gorush batches over HTTP into the API (PostgreSQL, Kafka acks), beside a
/// trivial handler on the same stack, and on through the pipeline into the fake: every
/// notification accepted is a record in Kafka, consumed, and answered.
#[test]
fn api_bench_conserves_every_notification_and_reports_the_baseline() {
    let dir = tempfile::tempdir().unwrap();
    let (stdout, r) = bench_ok(
        dir.path(),
        "api",
        &[
            "--mock",
            "--api",
            "--count",
            "2000",
            "--batch",
            "50",
            // A warm-up, whose requests are not measured: nor are their tokens' deliveries.
            "--warmup",
            "300ms",
            "--concurrency",
            "8",
        ],
    );
    assert!(
        stdout.contains("trivial handler on the same stack"),
        "{stdout}"
    );
    assert_eq!(r["params"]["mode"], "api");
    let c = &r["conservation"];
    // Every notification, the warm-up's too.
    let generated = c["generated"].as_u64().unwrap();
    assert!(generated > 2000, "the warm-up sent some: {c}");
    assert_eq!(generated % 50, 0, "{c}");
    assert_eq!(
        (c["produced"].as_u64(), c["answered"].as_u64()),
        (Some(generated), Some(generated)),
        "{c}"
    );
    assert_eq!(
        c["consumed"].as_u64(),
        Some(generated),
        "the pipeline consumed them all: {c}"
    );
    assert_eq!(c["ok"], true);
    // Counted in notifications, as the throughput is: 40 requests of 50, accepted (a request's
    // 2xx says nothing of delivery, which the conservation line counts).
    assert_eq!(r["outcomes"], json!({"accepted": 2000}));
    assert_eq!(r["latency"]["send"]["count"], 40, "a request latency each");
    // HTTP-to-delivery: one per measured token, through `pusher run`'s pipeline into the
    // fake (the warm-up's were counted too).
    assert_eq!(r["latency"]["end_to_end"]["count"], 2000);
    assert_eq!(r["api"]["accepted_measured"], 2000);
    let api = &r["api"];
    assert_eq!(api["batch"], 50);
    assert!(api["baseline_requests_per_s"].as_f64().unwrap() > 0.0);
    assert!(api["ratio_to_baseline"].as_f64().unwrap() > 0.0);
}

#[test]
fn sender_only_open_loop_reports_raw_and_corrected_latency() {
    let dir = tempfile::tempdir().unwrap();
    let (_, r) = bench_ok(
        dir.path(),
        "so",
        &[
            "--mock",
            "--sender-only",
            "--count",
            "2000",
            "--rate",
            "4000",
            "--warmup",
            "0s",
        ],
    );
    assert_eq!(r["params"]["mode"], "sender-only");
    assert_eq!(r["conservation"]["ok"], true);
    assert_eq!(r["conservation"]["server_answered"], 2000);
    assert_eq!(r["latency"]["send"]["count"], 2000);
    assert_eq!(r["latency"]["send_corrected"]["count"], 2000);
}

/// FCM and web push through the same harness: the embedded fake FCM (HTTP v1, OAuth at its own
/// /token) and the fake push service (VAPID checked, bodies decrypted), end to end through
/// Kafka and sender-only; counts add up and invalid tokens are reported.
#[test]
fn gcm_and_webpush_benches_end_to_end_and_sender_only_conserve_every_message() {
    let dir = tempfile::tempdir().unwrap();
    for (platform, mode, extra) in [
        ("gcm", "end-to-end", &[][..]),
        ("gcm", "sender-only", &["--sender-only"][..]),
        ("webpush", "end-to-end", &[][..]),
        ("webpush", "sender-only", &["--sender-only"][..]),
    ] {
        let args = [
            &[
                "--mock",
                "--platform",
                platform,
                "--count",
                "2000",
                "--warmup",
                "0s",
                "--invalid-ratio",
                "0.1",
            ][..],
            extra,
        ]
        .concat();
        let (_, r) = bench_ok(dir.path(), &format!("{platform}-{mode}"), &args);
        assert_eq!(r["params"]["platform"], platform);
        assert_eq!(r["params"]["mode"], mode);
        let c = &r["conservation"];
        assert_eq!(c["ok"], true, "{mode}: {c}");
        assert_eq!(c["generated"], 2000, "{mode}: {c}");
        assert_eq!(c["answered"], 2000, "{mode}: {c}");
        if mode == "end-to-end" {
            for stage in ["produced", "consumed", "committed"] {
                assert_eq!(c[stage], 2000, "{stage}: {c}");
            }
        }
        // The fake's pushes only: its OAuth answers at /token are none (they read one high).
        assert_eq!(c["server_answered"], 2000, "{mode}: {c}");
        let outcomes = r["outcomes"].as_object().unwrap();
        let total: u64 = outcomes.values().map(|v| v.as_u64().unwrap()).sum();
        assert_eq!(total, 2000, "{mode}: {outcomes:?}");
        let invalid = outcomes["token_invalid"].as_u64().unwrap();
        assert!((100..400).contains(&invalid), "{mode}: {outcomes:?}");
        assert_eq!(outcomes["delivered"].as_u64().unwrap() + invalid, 2000);
    }
}

#[test]
fn the_gate_fails_on_a_doctored_baseline_and_passes_on_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("run.json");
    let base = [
        "bench",
        "--mock",
        "--sender-only",
        "--count",
        "2000",
        "--warmup",
        "0s",
        "--quiet",
    ];
    let out = pusher(&[&base[..], &["--json", json.to_str().unwrap()]].concat());
    assert!(out.status.success());

    // A baseline claiming ten times the throughput: this run is a regression.
    let mut doctored: Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    doctored["throughput"] = Value::from(doctored["throughput"].as_f64().unwrap() * 10.0);
    let doctored_path = dir.path().join("doctored.json");
    std::fs::write(&doctored_path, doctored.to_string()).unwrap();
    let out = pusher(
        &[
            &base[..],
            &[
                "--baseline",
                doctored_path.to_str().unwrap(),
                "--max-regression",
                "20",
            ],
        ]
        .concat(),
    );
    // Its own exit status: ci/bench-gate.sh tries again after a regression only.
    assert_eq!(out.status.code(), Some(3));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("regression"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A baseline with a tenth of the throughput and ten times the p99 passes.
    let mut easy = doctored.clone();
    easy["throughput"] = Value::from(doctored["throughput"].as_f64().unwrap() / 100.0);
    easy["latency"]["send"]["p99_us"] =
        Value::from(easy["latency"]["send"]["p99_us"].as_u64().unwrap() * 10);
    easy["runs_p99_us"] = Value::from(
        easy["runs_p99_us"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() * 10)
            .collect::<Vec<_>>(),
    );
    let easy_path = dir.path().join("easy.json");
    std::fs::write(&easy_path, easy.to_string()).unwrap();
    let out = pusher(&[&base[..], &["--baseline", easy_path.to_str().unwrap()]].concat());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("gate: passed"), "{stdout}");
    assert!(stdout.contains("gate: p99 send latency"), "{stdout}");

    // The same easy figures from another kind of run (end to end, on more threads): not a
    // comparison, refused (it passed).
    let threads = easy["params"]["threads"].as_u64().unwrap();
    let mut other = easy.clone();
    other["params"]["mode"] = Value::from("end-to-end");
    other["params"]["threads"] = Value::from(threads + 3);
    let other_path = dir.path().join("other.json");
    std::fs::write(&other_path, other.to_string()).unwrap();
    let out = pusher(&[&base[..], &["--baseline", other_path.to_str().unwrap()]].concat());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("another kind of run")
            && stderr.contains("mode sender-only, baseline end-to-end")
            && stderr.contains(&format!("threads {threads}, baseline {}", threads + 3)),
        "{stderr}"
    );
}

/// ci/bench-gate.sh tries again after a speed regression (exit 3) only, keeping the first
/// attempt's report; a lost or double-counted message (exit 1), or any other failure, fails
/// at once (a retry let a loss that shows one run in three pass). A stand-in for `pusher`
/// answers each attempt with the next status given.
#[test]
fn the_ci_gate_tries_again_only_after_a_speed_regression() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let stub = dir.path().join("pusher");
    std::fs::write(
        &stub,
        r#"#!/bin/sh
n=$(( $(cat "$STUB_DIR/calls" 2>/dev/null || echo 0) + 1 ))
echo "$n" > "$STUB_DIR/calls"
while [ $# -gt 0 ]; do
  if [ "$1" = --json ]; then printf '{"attempt": %s}' "$n" > "$2"; fi
  shift
done
exit $(echo "$STUB_CODES" | cut -d' ' -f"$n")
"#,
    )
    .unwrap();
    std::fs::set_permissions(&stub, std::fs::Permissions::from_mode(0o755)).unwrap();
    let json = dir.path().join("bench-ci.json");
    let first = dir.path().join("bench-ci-attempt1.json");
    for (codes, exit, attempts) in [
        ("0", 0, 1),
        ("1 0", 1, 1),
        ("2 0", 2, 1),
        ("3 0", 0, 2),
        ("3 3", 3, 2),
        ("3 1", 1, 2),
    ] {
        let _ = std::fs::remove_file(dir.path().join("calls"));
        let _ = std::fs::remove_file(&first);
        let out = Command::new("bash")
            .arg("ci/bench-gate.sh")
            .env("PUSHER_BIN", &stub)
            .env("STUB_DIR", dir.path())
            .env("STUB_CODES", codes)
            .env("BENCH_GATE_JSON", &json)
            .output()
            .unwrap();
        let said = format!(
            "{codes}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.status.code(), Some(exit), "{said}");
        let calls = std::fs::read_to_string(dir.path().join("calls")).unwrap();
        assert_eq!(calls.trim(), attempts.to_string(), "{said}");
        let attempt = |path: &Path| {
            let v: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
            v["attempt"].as_u64().unwrap()
        };
        assert_eq!(attempt(&json), attempts, "{said}");
        if attempts == 2 {
            assert_eq!(attempt(&first), 1, "attempt 1's report is kept: {said}");
        } else {
            assert!(!first.exists(), "{said}");
        }
    }
}

#[test]
fn bad_input_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let corrupt = dir.path().join("corrupt.json");
    std::fs::write(
        &corrupt,
        "{\"schema\": \"pusher-bench/1\", \"throughput\": ",
    )
    .unwrap();
    let cases: &[(&[&str], &str)] = &[
        (&["bench", "--mock", "--count", "0"], "at least 1"),
        (&["bench", "--mock", "--count", "lots"], "count"),
        (
            &[
                "bench",
                "--mock",
                "--sender-only",
                "--profile",
                "no-such-profile",
                "--count",
                "10",
            ],
            "no-such-profile",
        ),
        (
            &[
                "bench",
                "--sender-only",
                "--endpoint",
                "https://127.0.0.1:1",
                "--key-file",
                "fixtures/apns/AuthKey_TESTKEY001.p8",
                "--key-id",
                "TESTKEY001",
                "--team-id",
                "TEAM000001",
                "--count",
                "10",
                "--warmup",
                "0s",
                "--quiet",
            ],
            "cannot reach endpoint",
        ),
        // An endpoint elsewhere refused the key a run makes for the embedded fake: every push
        // was rejected, and the run said nothing of it.
        (
            &[
                "bench",
                "--sender-only",
                "--endpoint",
                "https://127.0.0.1:1",
                "--count",
                "10",
            ],
            "--platform apns with --endpoint: give APNs credentials, --key-file FILE",
        ),
        (
            &[
                "bench",
                "--platform",
                "gcm",
                "--endpoint",
                "https://127.0.0.1:1",
                "--count",
                "10",
            ],
            "--service-account FILE or --api-key KEY",
        ),
        // Every message over APNs' 4096 bytes once the generator's metadata joins the payload:
        // refused up front in both modes, not measured as 100% malformed.
        (
            &["bench", "--mock", "--count", "10", "--payload-size", "4096"],
            "every apns message would be malformed",
        ),
        (
            &[
                "bench",
                "--mock",
                "--sender-only",
                "--count",
                "10",
                "--payload-size",
                "4096",
            ],
            "every apns message would be malformed",
        ),
        (
            &["bench", "--mock", "--count", "10", "--threads", "100000"],
            "at most 1024",
        ),
        (
            &[
                "bench",
                "--mock",
                "--count",
                "10",
                "--baseline",
                corrupt.to_str().unwrap(),
            ],
            "not a pusher bench report",
        ),
        (&["bench", "--count", "10"], "--mock"),
        (
            &["bench", "--mock", "--api", "--repeat", "2", "--count", "10"],
            "--api and --events run once",
        ),
        (
            &[
                "bench", "--mock", "--events", "--repeat", "3", "--count", "10",
            ],
            "--api and --events run once",
        ),
        (
            &["bench", "--mock", "--duration", "0s"],
            "not a length of time above zero",
        ),
        (
            &["bench", "--mock", "--count", "10", "--invalid-ratio", "2"],
            "ratio 2 is not between 0 and 1",
        ),
        (
            &["bench", "--mock", "--count", "10", "--connections", "0"],
            "at least 1",
        ),
        (
            &["bench", "--mock", "--count", "10", "--partitions", "0"],
            "--partitions",
        ),
        (
            &[
                "bench",
                "--mock",
                "--events",
                "--brokers",
                "127.0.0.1:1",
                "--count",
                "10",
            ],
            "embedded broker only",
        ),
        (
            &[
                "bench",
                "--mock",
                "--count",
                "10",
                "--baseline",
                corrupt.to_str().unwrap(),
                "--max-regression",
                "nan",
            ],
            "not a percentage",
        ),
    ];
    for (args, needle) in cases {
        let out = pusher(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} should fail");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
}

/// `pusher bench ARGS` with info logs, watched.
fn bench(args: &[&str]) -> Watched {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pusher"));
    cmd.arg("bench").args(args).env("PUSHER_LOG", "info");
    Watched::spawn(cmd)
}

/// `bench` with `ARGS --quiet --json <dir>/<name>.json`, which must end within `within` with
/// exit code `code`: its stdout, its stderr, and its report checked against the schema.
fn bench_ends(
    dir: &Path,
    name: &str,
    args: &[&str],
    within: Duration,
    code: i32,
) -> (String, String, Value) {
    let json = dir.join(format!("{name}.json"));
    let run = bench(&[args, &["--quiet", "--json", json.to_str().unwrap()]].concat());
    let (exit, stdout, stderr) = run.finish(within);
    assert_eq!(exit, Some(code), "{stdout}\n{stderr}");
    (stdout, stderr, check_report(&json))
}

/// SIGINT (sender-only) or SIGTERM (end to end) once the bench measures: it stops, prints the
/// summary of what ran, writes the reports marked interrupted, and exits 130; every message
/// it started is accounted for, through Kafka and the commit too.
#[test]
fn an_interrupted_bench_reports_what_ran_and_exits_130() {
    let dir = tempfile::tempdir().unwrap();
    for (mode, signal) in [("sender-only", "INT"), ("end-to-end", "TERM")] {
        let json = dir.path().join(format!("{mode}.json"));
        let html = dir.path().join(format!("{mode}.html"));
        let mut args = vec![
            "--mock",
            "--count",
            "100m",
            "--json",
            json.to_str().unwrap(),
            "--html",
            html.to_str().unwrap(),
        ];
        if mode == "sender-only" {
            args.push("--sender-only");
        }
        let mut run = bench(&args);
        run.wait_for(true, "Warm-up over: measuring.", Duration::from_secs(120));
        Watched::signal(run.id(), signal);
        let (code, stdout, stderr) = run.finish(Duration::from_secs(60));
        assert_eq!(code, Some(130), "{mode}\n{stdout}\n{stderr}");
        assert!(
            stdout.contains("INTERRUPTED") && stdout.contains("conservation"),
            "{mode}: the summary of what ran: {stdout}"
        );
        let r = schema::check_report(&json);
        assert_eq!(r["interrupted"], true, "{mode}");
        assert_eq!(r["params"]["mode"], mode);
        let c = &r["conservation"];
        assert_eq!(c["ok"], true, "{mode}: {c}");
        assert_eq!(c["in_flight"], 0, "{mode}: {c}");
        let generated = c["generated"].as_u64().unwrap();
        assert!(generated > 0, "{mode}: the warm-up at least ran: {c}");
        assert!(generated < 100_000_000, "{mode}: stopped early: {c}");
        let stages: &[&str] = if mode == "end-to-end" {
            &["answered", "produced", "consumed", "committed"]
        } else {
            &["answered"]
        };
        for stage in stages {
            assert_eq!(c[*stage].as_u64(), Some(generated), "{mode} {stage}: {c}");
        }
        let page = std::fs::read_to_string(&html).unwrap();
        assert!(page.contains("Interrupted"), "{mode}: the page says so");
    }
}

/// A report that cannot be written fails the bench before it runs, naming the path: a run
/// of 100 million messages ends at once.
#[test]
fn an_unwritable_report_path_fails_before_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no/such/dir/x.json");
    let missing = missing.to_str().unwrap();
    for flag in ["--json", "--html", "--hgrm"] {
        let run = bench(&[
            "--mock",
            "--sender-only",
            "--count",
            "100m",
            "--warmup",
            "0s",
            flag,
            missing,
        ]);
        let (code, stdout, stderr) = run.finish(Duration::from_secs(30));
        assert_eq!(code, Some(2), "{flag}: {stdout}\n{stderr}");
        assert!(
            stderr.contains(&format!("cannot write {missing}")),
            "{flag}: {stderr}"
        );
        assert!(stdout.is_empty(), "{flag}: nothing ran: {stdout}");
    }
}

/// Two runs of the same build back to back differ by noise only: `report compare` marks
/// nothing. A report with a hundredth of the throughput is marked WORSE, and --fail-on-worse
/// exits 1.
#[test]
fn report_compare_marks_only_changes_beyond_the_noise() {
    let dir = tempfile::tempdir().unwrap();
    let run = |name: &str| {
        let args = ["--mock", "--sender-only", "--count", "5k", "--repeat", "3"];
        bench_ok(dir.path(), name, &args);
        dir.path().join(format!("{name}.json"))
    };
    let compare = |a: &Path, b: &Path| {
        pusher(&[
            "report",
            "compare",
            a.to_str().unwrap(),
            b.to_str().unwrap(),
            "--fail-on-worse",
        ])
    };
    let (a, b) = (run("a"), run("b"));
    let out = compare(&a, &b);
    let table = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{table}");
    assert!(table.contains("0 worse, 0 better"), "{table}");
    let r = schema::check_report(&b);
    assert_eq!(
        r["runs_latency"].as_array().unwrap().len(),
        3,
        "per-run figures"
    );

    // A hundredth of the throughput, in every run: beyond any noise (on a 2-core machine
    // shared with two builds, three runs spread by a factor of up to 2.2, a noise of x7.2).
    let mut worse = r.clone();
    worse["throughput"] = Value::from(r["throughput"].as_f64().unwrap() / 100.0);
    worse["runs"] = r["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| Value::from(v.as_f64().unwrap() / 100.0))
        .collect();
    let worse_path = dir.path().join("worse.json");
    std::fs::write(&worse_path, worse.to_string()).unwrap();
    let out = compare(&b, &worse_path);
    let table = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(out.status.code(), Some(1), "{table}");
    let line = table
        .lines()
        .find(|l| l.trim_start().starts_with("throughput"))
        .unwrap();
    assert!(
        line.contains("-99.0%") && line.ends_with("WORSE"),
        "{table}"
    );
    assert!(table.contains("1 worse, 0 better"), "{table}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--fail-on-worse"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Seen: with a service account whose token endpoint cannot be reached, `--count 2000` spun
/// at 100 % CPU for ~24 s and exited 0 with every message `gave_up` (150k ran for over 9
/// minutes). Now the run stops at the first such failure, says why, and exits non-zero; end
/// to end as well as sender-only.
#[test]
fn an_unreachable_token_endpoint_stops_the_bench_with_its_cause() {
    let dir = tempfile::tempdir().unwrap();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let mut account: Value =
        serde_json::from_slice(&std::fs::read("fixtures/fcm/service-account.json").unwrap())
            .unwrap();
    account["token_uri"] = format!("http://127.0.0.1:{port}/token").into();
    let sa = dir.path().join("sa.json");
    std::fs::write(&sa, account.to_string()).unwrap();
    for mode in [&["--sender-only"][..], &[]] {
        let started = std::time::Instant::now();
        let mut args = vec!["bench", "--mock", "--platform", "gcm", "--count", "150000"];
        args.extend_from_slice(mode);
        args.extend(["--quiet", "--service-account", sa.to_str().unwrap()]);
        let out = pusher(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && out.status.code() != Some(130),
            "{mode:?}: {:?}\n{stderr}",
            out.status
        );
        assert!(
            stderr.contains("token endpoint unreachable") && stderr.contains(&port.to_string()),
            "{mode:?}: {stderr}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{mode:?} took {:?}",
            started.elapsed()
        );
    }
}

/// Seen: `--payload-size 4096` end to end ended every message `malformed: payload_too_large`
/// (the sender adds its metadata) and the conservation line said MISMATCH, exit 1: the fake
/// never saw the messages the pipeline refused before sending. They are counted as not sent,
/// as replay counts them; a mix where some sizes fit runs and adds up.
#[test]
fn messages_refused_before_sending_add_up_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "--mock",
        "--count",
        "1000",
        "--payload-size",
        "4090:1,300:1",
        "--warmup",
        "0s",
    ];
    let (stdout, r) = bench_ok(dir.path(), "mixed", &args);
    let c = &r["conservation"];
    let malformed = r["outcomes"]["malformed"].as_u64().unwrap_or(0);
    assert!(malformed > 100, "{}", r["outcomes"]);
    assert_eq!(c["not_sent"].as_u64(), Some(malformed), "{c}");
    assert_eq!(c["ok"], true, "{c}");
    assert_eq!(c["answered"], 1000, "{c}");
    assert!(
        stdout.contains(&format!("{malformed} malformed or expired, not sent): ok")),
        "{stdout}"
    );
}

/// Seen: `--partitions 1 --payload-size 3500 --count 20k` ran 4,000 messages (14 MB) ahead
/// of the answers in one partition of the embedded mock, which keeps 5 MiB and dropped the
/// oldest unread; the run then waited forever for them. The producer now stays within what a
/// partition keeps: every message arrives, and the run ends.
#[test]
fn a_bench_in_one_partition_with_large_messages_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "--mock",
        "--partitions",
        "1",
        "--payload-size",
        "3500",
        "--count",
        "20k",
        "--warmup",
        "0s",
    ];
    // A hang guard, far beyond the few seconds it takes.
    let (_, _, r) = bench_ends(dir.path(), "one", &args, Duration::from_secs(240), 0);
    let c = &r["conservation"];
    assert_eq!(c["ok"], true, "{c}");
    assert_eq!(c["lost"], 0, "{c}");
    for stage in ["generated", "produced", "consumed", "answered", "committed"] {
        assert_eq!(c[stage], 20_000, "{stage}: {c}");
    }
}

/// A broker that drops messages before the pipeline read them (here a mock cluster keeping
/// 5 MiB per partition, fed 70 MB at 20k/s while a slow endpoint answers 1,000/s): the run
/// ends, names the loss, counts it, and exits 1; generated = answered + lost + in flight.
/// Before, it waited for the lost messages forever.
#[test]
fn messages_the_broker_drops_unread_fail_the_bench() {
    use pusher::mock::kafka::KafkaMock;
    let topic = "push-bench_apns".to_string();
    let kafka = KafkaMock::start(1, std::slice::from_ref(&topic), 1).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let profile = dir.path().join("slow.yaml");
    std::fs::write(&profile, "name: slow\nlatency: {dist: fixed, ms: 1000}\n").unwrap();
    let args = [
        "--mock",
        "--brokers",
        kafka.bootstrap(),
        "--profile",
        profile.to_str().unwrap(),
        "--rate",
        "20000",
        "--payload-size",
        "3500",
        "--count",
        "20k",
        "--warmup",
        "0s",
    ];
    let (stdout, stderr, r) = bench_ends(dir.path(), "lost", &args, Duration::from_secs(120), 1);
    let error = stderr
        .lines()
        .find(|l| l.starts_with("error:"))
        .unwrap_or_default();
    assert!(
        error.contains("messages lost")
            && error.contains("Kafka dropped")
            && error.contains("before the pipeline consumed them")
            && error.contains("partition 0"),
        "{stderr}"
    );
    assert!(stdout.contains("LOST"), "{stdout}");
    let c = &r["conservation"];
    assert_eq!(c["ok"], false, "{c}");
    let n = |k: &str| c[k].as_u64().unwrap();
    assert!(n("lost") > 0, "{c}");
    assert_eq!(
        n("generated"),
        n("answered") + n("lost") + n("in_flight"),
        "{c}"
    );
}

/// `--brokers` on a topic that earlier runs filled: each run (and each `--repeat` round)
/// counts its own messages only, its group starting where they begin. Before, every new group
/// read from the topic's start: the second run took the first one's messages for answers,
/// stopped waiting early and failed its conservation check (exit 1).
#[test]
fn runs_on_a_used_topic_count_only_their_own_messages() {
    use pusher::mock::kafka::KafkaMock;
    let topic = "push-bench_apns".to_string();
    let kafka = KafkaMock::start(1, std::slice::from_ref(&topic), 2).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let runs: [(&str, &[&str], u64); 3] = [
        ("first", &["--repeat", "1"], 2000),
        ("again", &["--repeat", "2"], 2000),
        (
            "api",
            &["--api", "--batch", "50", "--concurrency", "8"],
            500,
        ),
    ];
    for (name, extra, count) in runs {
        let count_text = count.to_string();
        let mut args = vec![
            "--mock",
            "--brokers",
            kafka.bootstrap(),
            "--count",
            &count_text,
            "--warmup",
            "0s",
        ];
        args.extend_from_slice(extra);
        let (_, r) = bench_ok(dir.path(), name, &args);
        let c = &r["conservation"];
        assert_eq!(c["ok"], true, "{name}: {c}");
        assert_eq!(c["consumed"], count, "{name}: {c}");
        assert_eq!(c["answered"], count, "{name}: {c}");
        if name != "api" {
            assert_eq!(c["committed"], count, "{name}: {c}");
        }
    }
}

/// An open loop bound by `--duration` ends by its schedule, as the pacer does: every message
/// due in the window is produced and measured, however far the producer falls behind (one
/// partition and large messages: it waits for what the mock keeps). Stopped by the clock, it
/// produced about what the pipeline managed in that second and dropped the rest of the
/// schedule, the latest (and slowest) messages, without a word.
#[test]
fn an_open_loop_with_a_duration_sends_its_whole_schedule() {
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "--mock",
        "--rate",
        "20k",
        "--duration",
        "1s",
        "--warmup",
        "0s",
        "--partitions",
        "1",
        "--payload-size",
        "2000",
    ];
    let (_, _, r) = bench_ends(dir.path(), "open", &args, Duration::from_secs(240), 0);
    let c = &r["conservation"];
    assert_eq!(c["ok"], true, "{c}");
    // 1 s at 20,000/s: 20,000 messages due, every one measured from its due time.
    assert_eq!(c["generated"], 20_000, "{c}");
    let latency = &r["latency"];
    assert_eq!(
        latency["end_to_end_corrected"]["count"], 20_000,
        "{latency}"
    );
    assert_eq!(latency["end_to_end"]["count"], 20_000, "{latency}");
}

/// `--hgrm` holds the round the report keeps, written once: a signal in round 2 of 2 leaves
/// round 1's histogram (the report's count), marked interrupted. Before, every round wrote
/// it, and the file held the interrupted part of round 2, with no mark.
#[test]
fn an_interrupted_repeat_writes_the_kept_rounds_histogram() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("e2e.json");
    let hgrm = dir.path().join("e2e.hgrm");
    let mut run = bench(&[
        "--mock",
        "--count",
        "50k",
        "--repeat",
        "2",
        "--warmup",
        "200ms",
        "--json",
        json.to_str().unwrap(),
        "--hgrm",
        hgrm.to_str().unwrap(),
    ]);
    for _round in 0..2 {
        run.wait_for(true, "Warm-up over: measuring.", Duration::from_secs(120));
    }
    Watched::signal(run.id(), "INT");
    let (code, stdout, stderr) = run.finish(Duration::from_secs(60));
    assert_eq!(code, Some(130), "{stdout}\n{stderr}");
    let r = schema::check_report(&json);
    assert_eq!(r["interrupted"], true);
    assert_eq!(r["runs"].as_array().unwrap().len(), 1, "round 1 kept");
    assert_eq!(r["latency"]["end_to_end"]["count"], 50_000);
    let text = std::fs::read_to_string(&hgrm).unwrap();
    let total: u64 = text
        .lines()
        .find_map(|l| l.split("Total count").nth(1))
        .and_then(|rest| {
            rest.trim_matches(|c: char| !c.is_ascii_digit())
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no total count: {text}"));
    assert_eq!(total, 50_000, "{text}");
    assert!(text.contains("#[Interrupted"), "{text}");
}

/// Messages that stall while many newer ones are answered (0.2 % held 10 s, in a run of
/// 400k at ~30k/s) keep their own end-to-end latency, which holds their send: the end-to-end
/// p99.9 is a stall's, as the send p99.9 is. Produce times were kept in a ring of 131,072 by
/// sequence number: a newer message's overwrote a stalled one's (all but the last 131,072
/// messages' stalls), its latency was counted from it, and the p99.9 read a normal message's.
#[test]
fn stalled_messages_keep_their_end_to_end_latency() {
    let dir = tempfile::tempdir().unwrap();
    let profile = dir.path().join("stall.yaml");
    std::fs::write(
        &profile,
        "name: long-stall\nseed: 7\nstall: {rate: 0.002, ms: 10000}\n",
    )
    .unwrap();
    let args = [
        "--mock",
        "--profile",
        profile.to_str().unwrap(),
        "--transport",
        "h2c",
        "--threads",
        "1",
        // Room for the ~600 stalled at a time beside the others.
        "--concurrency",
        "2000",
        "--count",
        "400k",
        "--warmup",
        "0s",
    ];
    let (stdout, _, r) = bench_ends(dir.path(), "stall", &args, Duration::from_secs(300), 0);
    let p999 = |row: &str| r["latency"][row]["p999_us"].as_u64().unwrap();
    assert!(p999("send") >= 10_000_000, "the stalls: {stdout}");
    assert!(p999("end_to_end") >= 10_000_000, "{stdout}");
    assert_eq!(r["latency"]["end_to_end"]["count"], 400_000, "{stdout}");
}
