//! `pusher replay`, `gen --shape`, `run --capture` and `report compare` as a user runs them,
//! against real parts: the fake APNs server, librdkafka's mock cluster over TCP, the pipeline,
//! and headless Chromium for the HTML report.

mod common;
#[path = "support/schema.rs"]
mod schema;
#[path = "support/watched.rs"]
mod watched;

use pusher::mock::kafka::KafkaMock;
use pusher::pipeline::run::{run, AppSender, Observer, OutcomeEvent, Outputs, RunSpec};
use pusher::push::Platform;
use pusher::replay::capture::{self, CaptureWriter};
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

fn pusher(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pusher"))
        .args(args)
        .env("PUSHER_LOG", "warn")
        .output()
        .expect("run pusher")
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// A shaped capture: `gen --shape constant --duration 2s --peak-rate 300`.
fn shaped_capture(dir: &Path) -> PathBuf {
    let cap = dir.join("cap.jsonl");
    let o = pusher(&[
        "gen",
        "--seed",
        "7",
        "--shape",
        "constant",
        "--duration",
        "2s",
        "--peak-rate",
        "300",
        "--invalid-ratio",
        "0.1",
        "-o",
        p(&cap),
        "-q",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    cap
}

#[test]
fn gen_shape_writes_a_capture_with_the_shape() {
    let dir = tempfile::tempdir().unwrap();
    let cap = shaped_capture(dir.path());
    let entries = capture::read(&cap).unwrap();
    assert!(entries.len().abs_diff(600) <= 1, "{}", entries.len());
    let first_second = entries
        .iter()
        .filter(|e| e.at < Duration::from_secs(1))
        .count();
    assert!(first_second.abs_diff(300) <= 1, "{first_second}");
    assert!(entries.iter().all(|e| e.topic == "push-game_apns"));
    // Each value is a generated APNs message, keyed by its token.
    let v: Value = serde_json::from_slice(&entries[0].value).unwrap();
    assert_eq!(
        v["DeviceToken"].as_str().unwrap().as_bytes(),
        entries[0].key.as_deref().unwrap()
    );
    // Reproducible with the same seed.
    let again = dir.path().join("again.jsonl");
    let o = pusher(&[
        "gen",
        "--seed",
        "7",
        "--shape",
        "constant",
        "--duration",
        "2s",
        "--peak-rate",
        "300",
        "--invalid-ratio",
        "0.1",
        "-o",
        p(&again),
        "-q",
    ]);
    assert!(o.status.success());
    assert_eq!(std::fs::read(&cap).unwrap(), std::fs::read(&again).unwrap());

    let o = pusher(&[
        "gen",
        "--shape",
        "sine",
        "--duration",
        "1s",
        "--peak-rate",
        "10",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("unknown shape \"sine\""), "{}", text(&o));
    let o = pusher(&["gen", "--shape", "ramp"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    // Fewer than one message in all: before, an empty capture (which replay refuses), exit 0.
    let empty = dir.path().join("empty.jsonl");
    let o = pusher(&[
        "gen",
        "--shape",
        "constant",
        "--duration",
        "1s",
        "--peak-rate",
        "0.5",
        "-o",
        p(&empty),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("--duration 1s × --peak-rate 0.5/s"),
        "{}",
        text(&o)
    );
    assert!(!empty.exists(), "no capture is written");
}

/// Replay at 10x into the embedded fake: every message answered, the fake saw them all, the
/// schedule was kept, and the JSON and HTML reports are written. Then the report is doctored
/// and compared, and the HTML is rendered by Chromium.
#[test]
fn replay_to_the_mock_reports_like_bench_and_compares() {
    let dir = tempfile::tempdir().unwrap();
    let cap = shaped_capture(dir.path());
    let json = dir.path().join("r.json");
    let html = dir.path().join("r.html");
    let started = Instant::now();
    let o = pusher(&[
        "replay",
        p(&cap),
        "--mock",
        "--speed",
        "10x",
        "--json",
        p(&json),
        "--html",
        p(&html),
        "-q",
    ]);
    let took = started.elapsed();
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.starts_with("pusher replay: replay apns"), "{out}");
    assert!(out.contains("schedule lag p50"), "{out}");
    // 2 s of capture at 10x cannot take less than 0.2 s.
    assert!(took >= Duration::from_millis(200), "{took:?}");

    let r = schema::check_report(&json);
    assert_eq!(r["schema"], "pusher-bench/1");
    assert_eq!(r["params"]["mode"], "replay");
    let n = r["replay"]["capture_messages"].as_u64().unwrap();
    let c = &r["conservation"];
    assert_eq!(c["generated"].as_u64(), Some(n));
    assert_eq!(c["answered"].as_u64(), Some(n));
    assert!(c["server_answered"].as_u64().unwrap() >= n);
    assert_eq!(c["ok"], true);
    let outcomes: u64 = r["outcomes"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(outcomes, n);
    // 10 % invalid tokens: the fake rejects them.
    assert!(
        r["outcomes"]["token_invalid"].as_u64().unwrap() > 20,
        "{}",
        r["outcomes"]
    );
    assert_eq!(r["replay"]["pace"], "10x");
    assert_eq!(r["replay"]["schedule_lag"]["count"].as_u64(), Some(n));
    assert!(r["latency"]["send_corrected"]["count"].as_u64() == Some(n));
    assert!(!r["series"]["distribution"].as_array().unwrap().is_empty());
    // The run in fine intervals (a short run still draws a curve): every message offered by
    // the schedule and answered, latency percentiles in each interval that had answers.
    let intervals = r["series"]["intervals"].as_array().unwrap();
    assert!(intervals.len() >= 3, "{} intervals", intervals.len());
    assert!(intervals.iter().all(|i| i["secs"].as_f64() == Some(0.05)));
    let sum = |k: &str| {
        intervals
            .iter()
            .map(|i| i[k].as_u64().unwrap())
            .sum::<u64>()
    };
    assert_eq!((sum("offered"), sum("done")), (n, n));
    assert!(intervals
        .iter()
        .filter(|i| i["done"].as_u64() > Some(0))
        .all(|i| i["send_p99_us"].as_u64() >= i["send_p50_us"].as_u64()));

    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.starts_with("<!DOCTYPE html>"));
    assert_eq!(
        page.matches("<svg").count(),
        6,
        "distribution, throughput, latency and errors over time, offered vs achieved, lag"
    );
    for caption in [
        "Latency by percentile",
        "Throughput over time (per 50 ms)",
        "Latency over time (p50 and p99 of each 50 ms)",
        "Errors over time",
        "Offered against achieved rate",
    ] {
        assert!(page.contains(caption), "no chart {caption:?}");
    }
    assert!(
        !page.contains("http://")
            || page
                .matches("http://")
                .all(|_| page.contains("xmlns=\"http://www.w3.org/2000/svg\""))
    );
    assert!(
        !page.contains("<script") && !page.contains("src="),
        "no external assets"
    );

    // compare: the same report twice is all unmarked; a doctored one is marked worse.
    let o = pusher(&["report", "compare", p(&json), p(&json)]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("0 worse, 0 better"),
        "{}",
        text(&o)
    );
    let mut worse = r.clone();
    worse["throughput"] = (r["throughput"].as_f64().unwrap() / 2.0).into();
    worse["latency"]["send"]["p99_us"] =
        (r["latency"]["send"]["p99_us"].as_u64().unwrap() * 3).into();
    worse["conservation"]["ok"] = false.into();
    let worse_path = dir.path().join("worse.json");
    std::fs::write(&worse_path, worse.to_string()).unwrap();
    let cmp_html = dir.path().join("cmp.html");
    let o = pusher(&[
        "report",
        "compare",
        p(&json),
        p(&worse_path),
        "--html",
        p(&cmp_html),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let table = String::from_utf8_lossy(&o.stdout).to_string();
    let line = |name: &str| {
        table
            .lines()
            .find(|l| l.trim_start().starts_with(name))
            .unwrap_or_default()
            .to_string()
    };
    assert!(
        line("throughput").contains("-50.0%") && line("throughput").ends_with("WORSE"),
        "{table}"
    );
    assert!(
        line("send p99 ").contains("+200.0%") && line("send p99 ").ends_with("WORSE"),
        "{table}"
    );
    assert!(line("conservation").ends_with("WORSE"), "{table}");
    assert!(
        line("send p50").trim_end().ends_with("×1.50"),
        "unchanged: no mark after its noise: {table}"
    );
    assert!(table.contains("3 worse, 0 better"), "{table}");
    let cmp = std::fs::read_to_string(&cmp_html).unwrap();
    assert!(cmp.contains("class=\"worse\"") && cmp.contains("<svg"));
    // ... and the other way round, better.
    let o = pusher(&["report", "compare", p(&worse_path), p(&json)]);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("0 worse, 3 better"),
        "{}",
        text(&o)
    );

    // The bench's gate: the run's own report as the baseline passes; a baseline ten times as
    // fast fails the run.
    let o = pusher(&[
        "replay",
        p(&cap),
        "--mock",
        "--speed",
        "10x",
        "--baseline",
        p(&json),
        "--max-regression",
        "900",
        "-q",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("gate: passed"),
        "{}",
        text(&o)
    );
    let mut fast = r.clone();
    fast["throughput"] = (r["throughput"].as_f64().unwrap() * 10.0).into();
    let fast_path = dir.path().join("fast.json");
    std::fs::write(&fast_path, fast.to_string()).unwrap();
    let o = pusher(&[
        "replay",
        p(&cap),
        "--mock",
        "--speed",
        "10x",
        "--baseline",
        p(&fast_path),
        "--max-regression",
        "30",
        "-q",
    ]);
    // A regression's own exit status, as bench's.
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(text(&o).contains("regression beyond 30%"), "{}", text(&o));

    // Not a report: a clear error.
    let bogus = dir.path().join("bogus.json");
    std::fs::write(&bogus, "{\"hello\":1}").unwrap();
    let o = pusher(&["report", "compare", p(&json), p(&bogus)]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o).contains("bogus.json is not a pusher report"),
        "{}",
        text(&o)
    );

    browser_renders(&html, dir.path());
}

/// Headless Chromium renders the page to a PNG without errors (ci/setup.sh installs it).
fn browser_renders(html: &Path, dir: &Path) {
    let Some(chromium) = ["chromium", "chromium-browser"].into_iter().find(|c| {
        Command::new(c)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    }) else {
        assert!(
            std::env::var_os("PUSHER_SKIP_BROWSER").is_some(),
            "chromium is not installed (ci/setup.sh installs it; PUSHER_SKIP_BROWSER=1 skips this check)"
        );
        return;
    };
    let png = dir.join("report.png");
    let profile = dir.join("chromium-profile");
    let o = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--enable-logging=stderr",
            &format!("--user-data-dir={}", profile.display()),
            &format!("--screenshot={}", png.display()),
            "--window-size=1200,2000",
            &format!("file://{}", html.display()),
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "chromium: {}", text(&o));
    // Page problems show as console errors or failed loads (logged with --enable-logging);
    // Chromium's own start-up chatter without a desktop session (dbus) is not about the page.
    for bad in [
        "Uncaught",
        "net::ERR_",
        "Failed to load",
        "Not allowed to load",
        "SyntaxError",
    ] {
        assert!(!stderr.contains(bad), "chromium reported {bad}: {stderr}");
    }
    assert!(stderr.contains("bytes written to file"), "{stderr}");
    let bytes = std::fs::read(&png).expect("chromium wrote no screenshot");
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "not a PNG");
    assert_eq!(&bytes[12..16], b"IHDR");
    let width = u32::from_be_bytes(bytes[16..20].try_into().unwrap());
    let height = u32::from_be_bytes(bytes[20..24].try_into().unwrap());
    assert_eq!((width, height), (1200, 2000));
    assert!(
        bytes.len() > 40_000,
        "a blank page compresses to a few KB: {} bytes",
        bytes.len()
    );
    if let Ok(keep) = std::env::var("PUSHER_KEEP_PNG") {
        std::fs::copy(&png, keep).unwrap();
    }
}

/// Replay into Kafka, then read the topic's time range back into a capture: the same
/// messages come back. Against librdkafka's mock cluster over TCP.
#[test]
fn replay_into_kafka_and_back_from_a_topic_range() {
    let dir = tempfile::tempdir().unwrap();
    let cap = shaped_capture(dir.path());
    let sent = capture::read(&cap).unwrap();
    let topic = "push-replayed_apns".to_string();
    let kafka = KafkaMock::start(1, std::slice::from_ref(&topic), 4).unwrap();
    let brokers = kafka.bootstrap().to_string();
    let since = now_ms();
    let json = dir.path().join("k.json");
    let o = pusher(&[
        "replay",
        p(&cap),
        "--brokers",
        &brokers,
        "--topic",
        &topic,
        "--speed",
        "20x",
        "--json",
        p(&json),
        "-q",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let r = schema::check_report(&json);
    let n = sent.len() as u64;
    assert_eq!(
        r["conservation"]["produced"].as_u64(),
        Some(n),
        "{}",
        r["conservation"]
    );
    assert_eq!(r["conservation"]["ok"], true);
    assert_eq!(r["params"]["transport"], "kafka");

    let back = dir.path().join("back.jsonl");
    let o = pusher(&[
        "replay",
        "--from-kafka",
        &topic,
        "--brokers",
        &brokers,
        "--since",
        &since.to_string(),
        "-o",
        p(&back),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let got = capture::read(&back).unwrap();
    assert_eq!(got.len(), sent.len());
    assert!(got.iter().all(|e| e.topic == topic));
    assert!(
        got.last().unwrap().at <= Duration::from_secs(2),
        "20x of 2 s, in Kafka timestamps"
    );
    let mut a: Vec<_> = sent.iter().map(|e| (&e.key, &e.value)).collect();
    let mut b: Vec<_> = got.iter().map(|e| (&e.key, &e.value)).collect();
    a.sort();
    b.sort();
    assert_eq!(a, b, "the same keys and values");

    // Ranges with nothing in them are clear errors.
    let future = (now_ms() + 3_600_000).to_string();
    let o = pusher(&[
        "replay",
        "--from-kafka",
        &topic,
        "--brokers",
        &brokers,
        "--since",
        &future,
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o).contains("no messages in topic push-replayed_apns between"),
        "{}",
        text(&o)
    );
    let o = pusher(&[
        "replay",
        "--from-kafka",
        &topic,
        "--brokers",
        &brokers,
        "--since",
        "2026-11-29T10:00:00Z",
        "--until",
        "2026-11-29T09:00:00Z",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("empty time range"), "{}", text(&o));
    drop(kafka);
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

#[test]
fn bad_input_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let good = r#"{"t_us":0,"topic":"push-game_apns","message":{"DeviceToken":"00"}}"#;
    let cases = [
        (
            "truncated.jsonl",
            format!("{good}\n{{\"t_us\":10,\"topic\":\"push-g"),
            "line 2 is truncated",
        ),
        (
            "backwards.jsonl",
            format!("{}\n{good}\n", good.replace("\"t_us\":0", "\"t_us\":500")),
            "line 2 goes back in time",
        ),
        ("empty.jsonl", String::new(), "holds no messages"),
    ];
    for (name, content, want) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, content).unwrap();
        let o = pusher(&["replay", p(&path), "--mock"]);
        assert_eq!(o.status.code(), Some(2), "{name}: {}", text(&o));
        assert!(text(&o).contains(want), "{name}: {}", text(&o));
    }
    let path = dir.path().join("ok.jsonl");
    std::fs::write(&path, format!("{good}\n")).unwrap();
    for (args, want) in [
        (vec!["--mock", "--speed", "fast"], "unknown speed \"fast\""),
        (vec!["--mock", "--speed", "10"], "unknown speed \"10\""),
        (vec!["--mock", "--rate", "lots"], "unknown rate"),
        // Slower than one message in ~17 minutes: a schedule past what a Duration holds.
        (vec!["--mock", "--rate", "1e-20"], "at least 0.001"),
        (vec!["--mock", "--speed", "1e-21x"], "at least 0.001"),
        (
            vec!["--mock", "--loop"],
            "--loop needs --count or --duration",
        ),
        (vec![], "say where to replay"),
    ] {
        let mut argv = vec!["replay", p(&path)];
        argv.extend(args.iter().copied());
        let o = pusher(&argv);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", text(&o));
        assert!(text(&o).contains(want), "{args:?}: {}", text(&o));
    }
}

struct Count(AtomicU64);
impl Observer for Count {
    fn on_outcome(&self, _e: &OutcomeEvent<'_>) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

/// `run --capture`: the pipeline records every message it consumes, and the capture replays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pipeline_captures_what_it_consumes() {
    let dir = tempfile::tempdir().unwrap();
    let topic = "push-cap_apns".to_string();
    let kafka = KafkaMock::start(1, std::slice::from_ref(&topic), 2).unwrap();
    let brokers = kafka.bootstrap().to_string();
    let fake = common::start_fake(common::FakeOptions::default()).await;
    let url = format!("https://{}", fake.server.tls_addr().unwrap());
    let sender = common::sender(common::config(&fake, url, common::token_auth()));

    let n = 200u64;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .unwrap();
    let values: Vec<String> = (0..n)
        .map(|i| {
            format!(
                r#"{{"DeviceToken":"{}","Payload":{{"aps":{{"alert":"m{i}"}}}}}}"#,
                common::token(i)
            )
        })
        .collect();
    futures_util::future::join_all(values.iter().enumerate().map(|(i, v)| {
        let producer = &producer;
        let topic = &topic;
        async move {
            let key = i.to_string();
            producer
                .send(
                    FutureRecord::to(topic).key(&key).payload(v),
                    Duration::from_secs(10),
                )
                .await
                .unwrap();
        }
    }))
    .await;

    let path = dir.path().join("consumed.jsonl");
    let writer = Arc::new(CaptureWriter::create(&path).unwrap());
    let mut spec = RunSpec::new(
        Platform::Apns,
        brokers.clone(),
        "cap-group",
        vec![topic.clone()],
    );
    spec.offset_reset = "earliest".into();
    spec.commit_interval = Duration::from_millis(100);
    spec.capture = Some(writer.clone());
    let seen = Arc::new(Count(AtomicU64::new(0)));
    let outputs = Outputs {
        observer: Some(seen.clone()),
        ..Outputs::default()
    };
    let apps = HashMap::from([("cap".to_string(), AppSender::apns(sender))]);
    let stop = CancellationToken::new();
    let pipeline = tokio::spawn(run(spec, apps, outputs, stop.clone()));
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.0.load(Ordering::Relaxed) < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.cancel();
    let summary = pipeline.await.unwrap().unwrap();
    assert_eq!(summary.consumed, n);
    assert_eq!(writer.finish().unwrap(), n);

    let got = capture::read(&path).unwrap();
    assert_eq!(got.len() as u64, n);
    let mut keys: Vec<u64> = got
        .iter()
        .map(|e| {
            std::str::from_utf8(e.key.as_deref().unwrap())
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    keys.sort_unstable();
    assert_eq!(keys, (0..n).collect::<Vec<_>>());
    for e in &got {
        let i: usize = std::str::from_utf8(e.key.as_deref().unwrap())
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(e.value, values[i].as_bytes());
        assert_eq!(e.topic, topic);
    }
    drop(kafka);
}

/// The user's loop: `pusher run apns --capture FILE` records what it consumes; stopped with
/// SIGTERM, the capture holds every message; `pusher replay FILE --endpoint` sends them again
/// to the same fake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_capture_then_replay_to_an_endpoint() {
    use std::process::Stdio;
    let dir = tempfile::tempdir().unwrap();
    let topic = "push-rc_apns".to_string();
    let kafka = KafkaMock::start(1, std::slice::from_ref(&topic), 2).unwrap();
    let brokers = kafka.bootstrap().to_string();
    let fake = common::start_fake(common::FakeOptions::default()).await;
    let n = 100u64;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .unwrap();
    futures_util::future::join_all((0..n).map(|i| {
        let producer = &producer;
        let topic = &topic;
        async move {
            let v = format!(
                r#"{{"DeviceToken":"{}","Payload":{{"aps":{{"alert":"m{i}"}}}}}}"#,
                common::token(i)
            );
            let key = i.to_string();
            producer
                .send(
                    FutureRecord::to(topic).key(&key).payload(&v),
                    Duration::from_secs(10),
                )
                .await
                .unwrap();
        }
    }))
    .await;

    let cap = dir.path().join("run.jsonl");
    let key_file = common::fixture("AuthKey_TESTKEY001.p8");
    let mut child = common::process::KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_pusher"))
            .args([
                "run",
                "apns",
                "--app",
                "rc",
                "--brokers",
                &brokers,
                "--capture",
                p(&cap),
            ])
            .args([
                "--key-file",
                p(&key_file),
                "--key-id",
                common::KEY_ID,
                "--team-id",
                common::TEAM_ID,
            ])
            .args([
                "--topic",
                common::TOPIC,
                "--endpoint",
                &fake.tls_url(),
                "--ca",
                p(&fake.ca_file),
            ])
            .env("PUSHER_QUEUE_GROUP", "rc")
            .env("PUSHER_QUEUE_OFFSETRESETSTRATEGY", "earliest")
            .env("PUSHER_FEEDBACK_REPORTERS", "")
            .env("PUSHER_INVALIDTOKEN_HANDLERS", "")
            .env("PUSHER_STATS_REPORTERS", "")
            .env("PUSHER_STATS_PROMETHEUS_LISTEN", "")
            .env("PUSHER_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while fake.stats().responses < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(fake.stats().responses, n);
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("pusher run did not stop on SIGTERM");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status:?}");
    let entries = capture::read(&cap).unwrap();
    assert_eq!(entries.len() as u64, n);

    let o = tokio::task::spawn_blocking({
        let (cap, key_file, url, ca) = (
            cap.clone(),
            key_file.clone(),
            fake.tls_url(),
            fake.ca_file.clone(),
        );
        move || {
            pusher(&[
                "replay",
                p(&cap),
                "--speed",
                "10x",
                "--endpoint",
                &url,
                "--ca",
                p(&ca),
                "--key-file",
                p(&key_file),
                "--key-id",
                common::KEY_ID,
                "--team-id",
                common::TEAM_ID,
                "-q",
            ])
        }
    })
    .await
    .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains(&format!("delivered {n}")) && out.contains(": ok"),
        "{out}"
    );
    assert_eq!(
        fake.stats().responses,
        2 * n,
        "every captured message was sent again"
    );
    drop(kafka);
}

/// A GCM capture replayed straight to the embedded fake FCM (HTTP v1, OAuth at its /token),
/// and a web push capture to the fake push service (each subscription moved to the fake's
/// origin, its keys still the generator's, so every body decrypts): every message answered,
/// invalid tokens reported, counts add up.
#[test]
fn replay_gcm_and_webpush_captures_to_their_fakes() {
    for platform in ["gcm", "webpush"] {
        replay_to_its_fake(platform);
    }
}

fn replay_to_its_fake(platform: &str) {
    let dir = tempfile::tempdir().unwrap();
    let cap = dir.path().join("cap.jsonl");
    let o = pusher(&[
        "gen",
        "--platform",
        platform,
        "--seed",
        "5",
        "--shape",
        "constant",
        "--duration",
        "1s",
        "--peak-rate",
        "300",
        "--invalid-ratio",
        "0.1",
        "-o",
        p(&cap),
        "-q",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let json = dir.path().join("replay.json");
    let o = pusher(&[
        "replay",
        p(&cap),
        "--mock",
        "--speed",
        "10x",
        "--json",
        p(&json),
        "-q",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let r = schema::check_report(&json);
    // Named by its platform (a web push replay was once labelled "fake fcm").
    let fake = if platform == "gcm" { "fcm" } else { platform };
    assert_eq!(
        r["replay"]["target"],
        format!("fake {fake} (embedded)"),
        "{}",
        r["replay"]
    );
    let n = r["replay"]["capture_messages"].as_u64().unwrap();
    assert!(n >= 290, "{n}");
    let c = &r["conservation"];
    assert_eq!(c["generated"].as_u64(), Some(n), "{c}");
    assert_eq!(c["answered"].as_u64(), Some(n), "{c}");
    assert_eq!(c["ok"], true, "{c}");
    let outcomes = r["outcomes"].as_object().unwrap();
    let total: u64 = outcomes.values().map(|v| v.as_u64().unwrap()).sum();
    assert_eq!(total, n, "{outcomes:?}");
    let invalid = outcomes["token_invalid"].as_u64().unwrap();
    assert!(invalid > 10, "{outcomes:?}");
    assert_eq!(outcomes["delivered"].as_u64().unwrap() + invalid, n);
}

/// A capture records what the pipeline consumed, malformed messages too; replayed, they end
/// `malformed` without reaching the server, and the counts still add up (before, the run
/// said messages were lost and exited 1).
#[test]
fn a_capture_with_a_malformed_message_replays_and_adds_up() {
    let dir = tempfile::tempdir().unwrap();
    let cap = shaped_capture(dir.path());
    let mut text_of = std::fs::read_to_string(&cap).unwrap();
    let last: serde_json::Value = serde_json::from_str(text_of.lines().last().unwrap()).unwrap();
    let t = last["t_us"].as_u64().unwrap() + 1000;
    // "not json", base64.
    text_of.push_str(&format!(
        "{{\"t_us\":{t},\"topic\":\"push-game_apns\",\"raw_b64\":\"bm90IGpzb24=\"}}\n"
    ));
    // A JSON `null` value (a producer that serialised a null object), as `run --capture`
    // and `--from-kafka` write it: before, the capture was written and then refused.
    let mut out = text_of.into_bytes();
    capture::write_entry(
        &mut out,
        Duration::from_micros(t + 1000),
        "push-game_apns",
        None,
        b"null",
    )
    .unwrap();
    std::fs::write(&cap, out).unwrap();
    let json = dir.path().join("replay.json");
    let o = pusher(&[
        "replay",
        p(&cap),
        "--mock",
        "--speed",
        "10x",
        "--json",
        p(&json),
        "-q",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("2 malformed or expired, not sent"),
        "{}",
        text(&o)
    );
    let r = schema::check_report(&json);
    let c = &r["conservation"];
    assert_eq!(
        (c["ok"].as_bool(), c["not_sent"].as_u64()),
        (Some(true), Some(2)),
        "{c}"
    );
    assert_eq!(
        r["outcomes"]["malformed"].as_u64(),
        Some(2),
        "{}",
        r["outcomes"]
    );
}

/// Seen: a replay to an `--endpoint` that could not answer (a `--ca` that does not sign its
/// certificate, a key APNs refuses) ended every message `gave_up` or `rejected` and exited 0;
/// without credentials it signed with a key made for the run, refused the same way. Now, as
/// `pusher bench` does: the endpoint's fault stops the replay with its cause (exit 2), and
/// missing credentials are a usage error before anything is sent, naming the flags replay has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_to_an_endpoint_that_cannot_answer_stops_with_its_cause() {
    let dir = tempfile::tempdir().unwrap();
    let cap = shaped_capture(dir.path());
    let fake = common::start_fake(common::FakeOptions::default()).await;
    // Another fake's CA: it signs nothing of this fake's.
    let other = common::start_fake(common::FakeOptions::default()).await;
    let url = fake.tls_url();
    let (good_ca, wrong_ca) = (p(&fake.ca_file).to_owned(), p(&other.ca_file).to_owned());
    let (good_key, wrong_key) = (
        common::fixture("AuthKey_TESTKEY001.p8"),
        common::fixture("AuthKey_UNKNOWN001.p8"),
    );
    let replay = |args: Vec<String>| {
        tokio::task::spawn_blocking(move || {
            let mut argv = vec!["replay".to_owned()];
            argv.extend(args);
            argv.extend(["--speed", "10x", "-q"].map(str::to_owned));
            pusher(&argv.iter().map(String::as_str).collect::<Vec<_>>())
        })
    };
    let creds = |key: &Path| {
        [
            "--key-file",
            p(key),
            "--key-id",
            common::KEY_ID,
            "--team-id",
            common::TEAM_ID,
        ]
        .map(str::to_owned)
        .to_vec()
    };
    for (what, ca, key, cause) in [
        ("wrong CA", &wrong_ca, &good_key, "certificate"),
        ("wrong key", &good_ca, &wrong_key, "InvalidProviderToken"),
    ] {
        let mut args: Vec<String> = [p(&cap), "--endpoint", &url, "--ca", ca]
            .map(str::to_owned)
            .to_vec();
        args.extend(creds(key));
        let o = replay(args).await.unwrap();
        let said = text(&o);
        assert_eq!(o.status.code(), Some(2), "{what}: {said}");
        assert!(
            said.contains("the endpoint failed, not the messages") && said.contains(cause),
            "{what}: {said}"
        );
    }

    // No credentials: refused before a request is made.
    let before = fake.stats().requests;
    let args = [p(&cap), "--endpoint", &url, "--ca", &good_ca].map(str::to_owned);
    let o = replay(args.to_vec()).await.unwrap();
    let said = text(&o);
    assert_eq!(o.status.code(), Some(2), "{said}");
    assert!(
        said.contains("give APNs credentials") && said.contains("--key-file"),
        "{said}"
    );
    assert_eq!(fake.stats().requests, before, "nothing sent: {said}");
    // FCM: the error names replay's flags, not bench's --platform.
    let gcm = dir.path().join("gcm.jsonl");
    let o = pusher(&[
        "gen",
        "--platform",
        "gcm",
        "--shape",
        "constant",
        "--duration",
        "1s",
        "--peak-rate",
        "10",
        "-o",
        p(&gcm),
        "-q",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let args = [p(&gcm), "--endpoint", &url, "--ca", &good_ca].map(str::to_owned);
    let o = replay(args.to_vec()).await.unwrap();
    let said = text(&o);
    assert_eq!(o.status.code(), Some(2), "{said}");
    assert!(
        said.contains("--service-account FILE or --api-key KEY") && !said.contains("--platform"),
        "{said}"
    );
}

/// A replay started in the background of a non-interactive shell (`pusher replay ... &`: the
/// shell makes it ignore SIGINT) still stops on `kill -INT`: it prints the summary of what
/// ran, writes the report marked interrupted, and exits 130.
#[test]
fn a_backgrounded_replay_stops_on_sigint() {
    let dir = tempfile::tempdir().unwrap();
    let cap = shaped_capture(dir.path());
    let json = dir.path().join("bg.json");
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "\"$@\" & echo \"pid $!\"; wait $!", "sh"])
        .arg(env!("CARGO_BIN_EXE_pusher"))
        .args(["replay", p(&cap), "--mock", "--rate", "200/s", "--loop"])
        .args(["--duration", "10m", "-q", "--json", p(&json)])
        .env("PUSHER_LOG", "info");
    let mut sh = watched::Watched::spawn(cmd);
    let pid: u32 = sh
        .wait_for(false, "pid ", Duration::from_secs(10))
        .trim_start_matches("pid ")
        .parse()
        .unwrap();
    let _reaper = watched::KillPidOnDrop(pid);
    sh.wait_for(true, "Replaying", Duration::from_secs(60));
    watched::Watched::signal(pid, "INT");
    let (code, stdout, stderr) = sh.finish(Duration::from_secs(60));
    assert_eq!(code, Some(130), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("pusher replay:") && stdout.contains("INTERRUPTED"),
        "{stdout}"
    );
    let r = schema::check_report(&json);
    assert_eq!(r["interrupted"], true);
    let c = &r["conservation"];
    assert_eq!(c["ok"], true, "{c}");
    assert_eq!(c["generated"], c["answered"], "{c}");
    assert!(
        c["generated"].as_u64().unwrap() < 120_000,
        "stopped long before the 10 minutes: {c}"
    );
}

/// Captures whose times were mistaken: every message at one time, looped (before: a period
/// of 0, so `--duration` never ended the replay), and Unix microseconds as `t_us` (before: a
/// silent sleep of ~56 years). Both replay and end; the hang guard is far beyond their second.
#[test]
fn odd_capture_times_replay_and_end() {
    let dir = tempfile::tempdir().unwrap();
    let line = |t: u64| {
        format!("{{\"t_us\":{t},\"topic\":\"push-game_apns\",\"message\":{{\"DeviceToken\":\"00\"}}}}\n")
    };
    let same = dir.path().join("same.jsonl");
    std::fs::write(&same, line(0) + &line(0) + &line(0)).unwrap();
    let epoch = dir.path().join("epoch.jsonl");
    let t0 = 1_764_000_000_000_000u64;
    std::fs::write(&epoch, line(t0) + &line(t0 + 1000) + &line(t0 + 2000)).unwrap();
    // 1 µs per message, slowed 1000 times: a round of 3 every 3 ms, 334 rounds in 1 s.
    let cases: [(&Path, &[&str], u64); 2] = [
        (
            &same,
            &["--loop", "--duration", "1s", "--speed", "0.001x"],
            1002,
        ),
        (&epoch, &[], 3),
    ];
    for (cap, extra, want) in cases {
        let json = dir.path().join("r.json");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_pusher"));
        cmd.args(["replay", p(cap), "--mock", "-q", "--json", p(&json)])
            .args(extra)
            .env("PUSHER_LOG", "warn");
        let run = watched::Watched::spawn(cmd);
        let (code, stdout, stderr) = run.finish(Duration::from_secs(60));
        assert_eq!(code, Some(0), "{cap:?}\n{stdout}\n{stderr}");
        let r = schema::check_report(&json);
        assert_eq!(r["conservation"]["generated"], want, "{cap:?}: {r}");
        assert_eq!(r["conservation"]["ok"], true, "{cap:?}");
    }
}

/// Messages with few distinct timestamps (ties across and within partitions), keys absent,
/// text or binary, values JSON or not: what the sort must order, to `topic` at `brokers`.
async fn produce_tied_messages(brokers: &str, topic: &str, partitions: i32, n: usize, t0: i64) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "5")
        .create()
        .unwrap();
    let mut deliveries = Vec::new();
    for i in 0..n {
        let value = if i % 10 == 0 {
            vec![0xfe, i as u8, 0x00]
        } else {
            format!(
                "{{\"DeviceToken\":\"{i:064x}\",\"Payload\":{{\"aps\":{{\"alert\":\"{}\"}}}}}}",
                "x".repeat(i % 700)
            )
            .into_bytes()
        };
        let key: Option<Vec<u8>> = match i % 3 {
            0 => None,
            1 => Some(format!("{i:064x}").into_bytes()),
            _ => Some(vec![0xff, (i % 251) as u8]),
        };
        let mut record = FutureRecord::<[u8], [u8]>::to(topic)
            .partition((i % partitions as usize) as i32)
            .timestamp(t0 + (i % 37) as i64)
            .payload(&value);
        if let Some(k) = &key {
            record = record.key(k);
        }
        deliveries.push(producer.send_result(record).map_err(|(e, _)| e).unwrap());
    }
    for d in deliveries {
        d.await.unwrap().unwrap();
    }
}

/// `--from-kafka` in bounded memory: a budget that makes it spill many sorted runs writes the
/// same bytes as the in-memory sort, and leaves no temporary file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn from_kafka_spills_sorted_runs_and_writes_the_same_bytes() {
    use pusher::bench::interrupt::Interrupt;
    use pusher::progress::Progress;
    use pusher::replay::kafka::{read_range, Range};
    let topic = "push-sorted_apns".to_string();
    let kafka = KafkaMock::start(1, std::slice::from_ref(&topic), 3).unwrap();
    let brokers = kafka.bootstrap().to_string();
    const N: usize = 1500;
    let t0 = 1_700_000_000_000;
    produce_tied_messages(&brokers, &topic, 3, N, t0).await;

    let read = |budget: usize| {
        let (brokers, topic) = (brokers.clone(), topic.clone());
        async move {
            tokio::task::spawn_blocking(move || {
                let dir = tempfile::tempdir().unwrap();
                let range = Range {
                    brokers: &brokers,
                    topic: &topic,
                    since_ms: t0,
                    until_ms: None,
                    timeout: Duration::from_secs(10),
                    sort_budget: budget,
                };
                let mut out = Vec::new();
                let (bar, stop) = (Progress::hidden(), Interrupt::manual());
                let written = read_range(&range, dir.path(), &mut out, &bar, &stop).unwrap();
                let left = std::fs::read_dir(dir.path()).unwrap().count();
                (written, out, left)
            })
            .await
            .unwrap()
        }
    };
    let (whole, in_memory, _) = read(usize::MAX).await;
    let (spilled, merged, left) = read(64 * 1024).await;
    assert_eq!(whole.messages, N as u64);
    assert_eq!(whole.spilled_runs, 0);
    assert!(spilled.spilled_runs >= 5, "{spilled:?}");
    assert_eq!(spilled.messages, N as u64);
    assert_eq!(left, 0, "no temporary file left");
    assert!(in_memory == merged, "the spilled sort wrote other bytes");

    // The order is (timestamp, partition, offset): within one timestamp, partitions ascend.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.jsonl");
    std::fs::write(&path, &merged).unwrap();
    let entries = capture::read(&path).unwrap();
    assert_eq!(entries.len(), N);
    assert!(entries.windows(2).all(|w| w[0].at <= w[1].at));
    assert_eq!(entries.last().unwrap().at, Duration::from_millis(36));
    drop(kafka);
}

/// Ctrl-C during `--from-kafka` (here: a leader that refuses every fetch, so the read waits)
/// stops it at once, exit 130, and leaves the folder as it was: the earlier FILE untouched, no
/// temporary file. Before, the signal killed it and the temporary file stayed.
#[test]
fn from_kafka_stops_on_sigint_and_leaves_no_file() {
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
    let cluster = rdkafka::mocking::MockCluster::new(1).unwrap();
    let topic = "push-stuck_apns";
    cluster.create_topic(topic, 1, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(produce_tied_messages(&brokers, topic, 1, 20, now_ms()));
    cluster.request_errors(
        RDKafkaApiKey::Fetch,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION; 2000],
    );
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.jsonl");
    std::fs::write(&out, "earlier\n").unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pusher"));
    cmd.args(["replay", "--from-kafka", topic, "--brokers", &brokers])
        .args(["--since", "1h", "--kafka-timeout", "60s", "-o", p(&out)])
        .env("PUSHER_LOG", "info");
    let mut run = watched::Watched::spawn(cmd);
    run.wait_for(true, "Reading the topic range", Duration::from_secs(30));
    let started = Instant::now();
    watched::Watched::signal(run.id(), "INT");
    let (code, stdout, stderr) = run.finish(Duration::from_secs(30));
    assert_eq!(code, Some(130), "{stdout}\n{stderr}");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(stderr.contains("interrupted"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "earlier\n");
    let files: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(files, vec![std::ffi::OsString::from("out.jsonl")]);
}

/// CRC-32C (Castagnoli), the checksum of a Kafka record batch.
fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82f6_3b78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// Appends a transaction's commit marker (a control batch of one record, what a broker writes
/// when a transaction commits) to `topic`'s `partition`, with a raw Produce request (v3).
/// A transactional producer cannot do it here: librdkafka's mock cluster takes transactions
/// but writes no markers.
fn append_commit_marker(broker: &str, topic: &str, partition: i32) {
    use std::io::{Read, Write};
    // The record: attributes, timestamp delta, offset delta, key (version 0, type 1: commit),
    // value (version 0, coordinator epoch 0), no headers; lengths as zigzag varints.
    let record_body: Vec<u8> = [&[0u8, 0, 0, 8][..], &[0, 0, 0, 1], &[12], &[0; 6], &[0]].concat();
    let mut record = vec![(record_body.len() as u8) << 1];
    record.extend_from_slice(&record_body);
    let now = now_ms();
    // From the attributes on: what the CRC covers.
    let mut tail = Vec::new();
    tail.extend_from_slice(&0x30i16.to_be_bytes()); // control, transactional
    tail.extend_from_slice(&0i32.to_be_bytes()); // last offset delta
    tail.extend_from_slice(&now.to_be_bytes());
    tail.extend_from_slice(&now.to_be_bytes());
    tail.extend_from_slice(&7i64.to_be_bytes()); // producer id
    tail.extend_from_slice(&0i16.to_be_bytes()); // producer epoch
    tail.extend_from_slice(&(-1i32).to_be_bytes()); // base sequence
    tail.extend_from_slice(&1i32.to_be_bytes()); // records
    tail.extend_from_slice(&record);
    let mut batch = Vec::new();
    batch.extend_from_slice(&0i64.to_be_bytes()); // base offset (the broker sets it)
    batch.extend_from_slice(&((4 + 1 + 4 + tail.len()) as i32).to_be_bytes());
    batch.extend_from_slice(&0i32.to_be_bytes()); // partition leader epoch
    batch.push(2); // magic
    batch.extend_from_slice(&crc32c(&tail).to_be_bytes());
    batch.extend_from_slice(&tail);

    let mut req = Vec::new();
    req.extend_from_slice(&0i16.to_be_bytes()); // Produce
    req.extend_from_slice(&3i16.to_be_bytes());
    req.extend_from_slice(&1i32.to_be_bytes()); // correlation id
    req.extend_from_slice(&4i16.to_be_bytes());
    req.extend_from_slice(b"test");
    req.extend_from_slice(&(-1i16).to_be_bytes()); // no transactional id
    req.extend_from_slice(&1i16.to_be_bytes()); // acks
    req.extend_from_slice(&5000i32.to_be_bytes());
    req.extend_from_slice(&1i32.to_be_bytes());
    req.extend_from_slice(&(topic.len() as i16).to_be_bytes());
    req.extend_from_slice(topic.as_bytes());
    req.extend_from_slice(&1i32.to_be_bytes());
    req.extend_from_slice(&partition.to_be_bytes());
    req.extend_from_slice(&(batch.len() as i32).to_be_bytes());
    req.extend_from_slice(&batch);

    let mut conn = std::net::TcpStream::connect(broker).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    conn.write_all(&(req.len() as i32).to_be_bytes()).unwrap();
    conn.write_all(&req).unwrap();
    let mut len = [0u8; 4];
    conn.read_exact(&mut len).unwrap();
    let mut resp = vec![0u8; i32::from_be_bytes(len) as usize];
    conn.read_exact(&mut resp).unwrap();
    // correlation id, topics, name, partitions, partition, then the error code.
    let at = 4 + 4 + 2 + topic.len() + 4 + 4;
    let err = i16::from_be_bytes([resp[at], resp[at + 1]]);
    assert_eq!(err, 0, "the mock refused the marker");
}

/// A partition whose range ends in a transaction marker (which no consumer is given) ends at
/// the partition's end: before, `--from-kafka` waited for the marker's offset and failed
/// "no progress" after --kafka-timeout. One partition ends in a marker after messages, the
/// other holds only a marker.
#[test]
fn from_kafka_ends_a_partition_that_ends_in_a_transaction_marker() {
    let topic = "push-txn_apns".to_string();
    let kafka = KafkaMock::start(1, std::slice::from_ref(&topic), 2).unwrap();
    let brokers = kafka.bootstrap().to_string();
    let since = now_ms() - 60_000;
    let rt = tokio::runtime::Runtime::new().unwrap();
    // Partition 0 only: `produce_tied_messages` with one partition.
    rt.block_on(produce_tied_messages(&brokers, &topic, 1, 30, now_ms()));
    append_commit_marker(&brokers, &topic, 0);
    append_commit_marker(&brokers, &topic, 1);

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("txn.jsonl");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pusher"));
    cmd.args(["replay", "--from-kafka", &topic, "--brokers", &brokers])
        .args(["--since", &since.to_string(), "--kafka-timeout", "5s"])
        .args(["-o", p(&out)])
        .env("PUSHER_LOG", "warn");
    let (code, stdout, stderr) = watched::Watched::spawn(cmd).finish(Duration::from_secs(60));
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert_eq!(capture::read(&out).unwrap().len(), 30);
    drop(kafka);
}

/// A replay into a topic the cluster does not have (and does not create: librdkafka's mock is
/// told to answer "unknown topic", as a broker without auto-creation does) is refused before
/// anything is sent, naming the topic; before, every message waited 30 s and the run ended
/// "conservation check failed", exit 1. Both for --topic and for the capture's own topics.
#[test]
fn replay_into_a_topic_kafka_does_not_have_is_refused() {
    use rdkafka::types::RDKafkaRespErr;
    let dir = tempfile::tempdir().unwrap();
    let cap = shaped_capture(dir.path());
    let cluster = rdkafka::mocking::MockCluster::new(1).unwrap();
    cluster.create_topic("push-test_apns", 1, 1).unwrap();
    for missing in ["push-tset_apns", "push-game_apns"] {
        cluster
            .topic_error(
                missing,
                RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART,
            )
            .unwrap();
    }
    let brokers = cluster.bootstrap_servers();
    for (extra, missing) in [
        (vec!["--topic", "push-tset_apns"], "push-tset_apns"),
        (vec![], "push-game_apns"),
    ] {
        let started = Instant::now();
        let mut argv = vec![
            "replay",
            p(&cap),
            "--brokers",
            &brokers,
            "--speed",
            "20x",
            "-q",
        ];
        argv.extend(extra);
        let o = pusher(&argv);
        assert_eq!(o.status.code(), Some(2), "{}", text(&o));
        assert!(
            text(&o).contains(&format!("Kafka has no topic {missing:?}")),
            "{}",
            text(&o)
        );
        assert!(started.elapsed() < Duration::from_secs(20));
    }
    // The topic that exists still takes the replay.
    let o = pusher(&[
        "replay",
        p(&cap),
        "--brokers",
        &brokers,
        "--topic",
        "push-test_apns",
        "--speed",
        "20x",
        "-q",
    ]);
    assert!(o.status.success(), "{}", text(&o));
}

/// The flags of a replay mean nothing to `--from-kafka`: refused by name, not ignored.
#[test]
fn from_kafka_refuses_replay_flags() {
    let flags: [&[&str]; 9] = [
        &["--json", "r.json"],
        &["--html", "r.html"],
        &["--count", "10"],
        &["--speed", "2x"],
        &["--mock"],
        &["--rate", "5/s"],
        &["--duration", "5s"],
        &["--loop"],
        &["--topic", "push-other_apns"],
    ];
    for flag in flags {
        let mut argv = vec!["replay", "--from-kafka", "t", "--brokers", "127.0.0.1:1"];
        argv.extend(["--since", "15m", "--kafka-timeout", "1s"]);
        argv.extend(flag);
        let o = pusher(&argv);
        assert_eq!(o.status.code(), Some(2), "{flag:?}: {}", text(&o));
        assert!(
            text(&o).contains("cannot be used with"),
            "{flag:?}: {}",
            text(&o)
        );
    }
}
