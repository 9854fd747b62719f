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
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
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
    std::fs::write(&cap, text_of).unwrap();
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
        text(&o).contains("1 malformed or expired, not sent"),
        "{}",
        text(&o)
    );
    let r = schema::check_report(&json);
    let c = &r["conservation"];
    assert_eq!(
        (c["ok"].as_bool(), c["not_sent"].as_u64()),
        (Some(true), Some(1)),
        "{c}"
    );
    assert_eq!(
        r["outcomes"]["malformed"].as_u64(),
        Some(1),
        "{}",
        r["outcomes"]
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
