//! `pusher gen` and `pusher replay` against Kafka and files, as a user runs them: a broker
//! that cannot be reached is one error within `--kafka-timeout`, a failed export leaves the
//! file it would have replaced alone, a message over the producer limit is named, and
//! `gen --shape` writes a whole capture timed from 0.

use pusher::mock::kafka::KafkaMock;
use pusher::replay::capture;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn pusher(args: &[&str]) -> (Output, Duration) {
    let start = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_pusher"))
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .expect("run pusher");
    (out, start.elapsed())
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

/// A loopback port nothing listens on: bound, noted, released.
fn closed_port() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    drop(l);
    addr
}

/// What a user sees against a dead broker: a failure, within the flag's 2 s (plus start-up),
/// ending in one error that names the wait, and a few throttled librdkafka lines, not the
/// hundreds it logs unthrottled.
fn assert_one_clear_error(o: &Output, took: Duration) {
    assert!(!o.status.success(), "{}", text(o));
    assert!(took < Duration::from_secs(8), "took {took:?}: {}", text(o));
    let stderr = String::from_utf8_lossy(&o.stderr);
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{}", text(o));
    assert!(
        errors[0].contains("no answer from Kafka") && errors[0].contains("within 2s"),
        "{}",
        text(o)
    );
    assert!(stderr.lines().count() <= 6, "{}", text(o));
}

#[test]
fn gen_kafka_to_a_closed_port_is_one_error_within_the_timeout() {
    let broker = closed_port();
    let (o, took) = pusher(&[
        "gen",
        "--seed",
        "1",
        "-n",
        "100",
        "--kafka",
        &broker,
        "--kafka-timeout",
        "2s",
        "-q",
    ]);
    assert_one_clear_error(&o, took);
}

#[test]
fn replay_into_a_closed_port_is_one_error_within_the_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let cap = dir.path().join("cap.jsonl");
    std::fs::write(
        &cap,
        "{\"t_us\":0,\"topic\":\"push-game_apns\",\"message\":{\"DeviceToken\":\"00\"}}\n",
    )
    .unwrap();
    let broker = closed_port();
    let (o, took) = pusher(&[
        "replay",
        p(&cap),
        "--brokers",
        &broker,
        "--kafka-timeout",
        "2s",
        "-q",
    ]);
    assert_one_clear_error(&o, took);
}

/// An export that fails leaves the file it was to replace byte for byte, and no temporary
/// file behind; one that succeeds replaces it.
#[test]
fn replay_from_kafka_replaces_the_file_only_on_success() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("incident.jsonl");
    let before = b"{\"t_us\":0,\"topic\":\"push-game_apns\",\"message\":{}}\nprecious bytes\n";
    std::fs::write(&out, before).unwrap();
    let broker = closed_port();
    let (o, took) = pusher(&[
        "replay",
        "--from-kafka",
        "push-game_apns",
        "--brokers",
        &broker,
        "--since",
        "1h",
        "--kafka-timeout",
        "2s",
        "-o",
        p(&out),
    ]);
    assert_one_clear_error(&o, took);
    assert_eq!(std::fs::read(&out).unwrap(), before);
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");

    // With a broker and messages: the file is replaced by the capture.
    let kafka = KafkaMock::start(1, &["push-game_apns".to_string()], 2).unwrap();
    let (o, _) = pusher(&[
        "gen",
        "--seed",
        "2",
        "-n",
        "50",
        "--kafka",
        kafka.bootstrap(),
        "-q",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let (o, _) = pusher(&[
        "replay",
        "--from-kafka",
        "push-game_apns",
        "--brokers",
        kafka.bootstrap(),
        "--since",
        "1h",
        "-o",
        p(&out),
        "-q",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(capture::read(&out).unwrap().len(), 50);
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    // A partition's end is no error (every export logged one); the capture is made as any
    // new file is, as the file it replaced was (it was private: 0600).
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!stderr.contains("ERROR"), "{stderr}");
    use std::os::unix::fs::PermissionsExt;
    let mode = |path: &std::path::Path| std::fs::metadata(path).unwrap().permissions().mode();
    let plain = dir.path().join("plain");
    std::fs::write(&plain, b"").unwrap();
    assert_eq!(mode(&out) & 0o777, mode(&plain) & 0o777);
}

/// librdkafka refuses a message over its 1 MB `message.max.bytes` before sending it: gen
/// says which message and how big, at once.
#[test]
fn gen_kafka_names_a_message_over_the_limit() {
    let kafka = KafkaMock::start(1, &["push-game_apns".to_string()], 1).unwrap();
    let (o, took) = pusher(&[
        "gen",
        "--seed",
        "1",
        "-n",
        "3",
        "--payload-size",
        "1000000",
        "--kafka",
        kafka.bootstrap(),
        "-q",
    ]);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(took < Duration::from_secs(10), "{took:?}");
    let t = text(&o);
    assert!(
        t.contains("message 0 is")
            && t.contains("over a Kafka producer's limit of 1,000,000 bytes"),
        "{t}"
    );
}

/// `gen --shape` to a file: the same bytes as to stdout (nothing lost to the buffer), and
/// the first record at `t_us` 0.
#[test]
fn gen_shape_capture_is_whole_and_starts_at_zero() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("spike.jsonl");
    let args = [
        "gen",
        "--seed",
        "5",
        "--shape",
        "spike",
        "--duration",
        "4s",
        "--peak-rate",
        "2000",
        "-q",
    ];
    let (o, _) = pusher(&[&args[..], &["-o", p(&file)]].concat());
    assert!(o.status.success(), "{}", text(&o));
    let (stdout, _) = pusher(&args);
    assert!(stdout.status.success(), "{}", text(&stdout));
    let written = std::fs::read(&file).unwrap();
    assert_eq!(written, stdout.stdout, "file and stdout differ");
    let entries = capture::read(&file).unwrap();
    // 4 s at a tenth of 2000/s, with 0.4 s at 2000/s: 720 + 800.
    assert!(entries.len().abs_diff(1520) <= 2, "{}", entries.len());
    assert!(
        written.starts_with(b"{\"t_us\":0,"),
        "{}",
        String::from_utf8_lossy(&written[..60])
    );
    assert_eq!(entries[0].at, Duration::ZERO);
}
