//! What a person (or a log collector) reads from the binary: errors that say their cause
//! once, no colour codes when stderr is not a terminal, JSON logs with nested values.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn pusher() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pusher"));
    cmd.env_remove("NO_COLOR")
        .env("PUSHER_STATS_REPORTERS", "")
        .env("PUSHER_STATS_PROMETHEUS_LISTEN", "")
        .env("PUSHER_FEEDBACK_REPORTERS", "")
        .env("PUSHER_INVALIDTOKEN_HANDLERS", "");
    cmd
}

#[test]
fn an_os_error_is_said_once() {
    let out = pusher()
        .args(["run", "apns", "--config", "/no/such/pusher.yaml"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("/no/such/pusher.yaml"), "{stderr}");
    assert_eq!(stderr.matches("(os error 2)").count(), 1, "{stderr}");
}

/// `pusher run` for a moment (the broker and endpoint are closed ports), then SIGINT: its
/// stderr, with or without `-j`.
fn run_briefly(json: bool) -> String {
    let mut cmd = pusher();
    if json {
        cmd.arg("-j");
    }
    let mut child = cmd
        .args(["run", "apns", "--app", "game", "--brokers", "127.0.0.1:1"])
        .args(["--key-file", "fixtures/apns/AuthKey_TESTKEY001.p8"])
        .args([
            "--key-id",
            "TESTKEY001",
            "--team-id",
            "TEAM000001",
            "--topic",
            "t",
        ])
        .args(["--endpoint", "http://127.0.0.1:1"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // "Consuming." is logged once the consumer is up; give it that long, then stop it.
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline && child.try_wait().unwrap().is_none() {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn logs_to_a_pipe_carry_no_colour_codes() {
    let stderr = run_briefly(false);
    assert!(stderr.contains("Consuming."), "{stderr}");
    assert!(!stderr.contains('\u{1b}'), "escape codes in: {stderr:?}");
}

#[test]
fn json_logs_keep_nested_values_as_json() {
    let stderr = run_briefly(true);
    let consuming = stderr
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap_or_else(|e| panic!("{e}: {l}"))
        })
        .find(|v| v["fields"]["message"] == "Consuming.")
        .unwrap_or_else(|| panic!("no Consuming. line in {stderr}"));
    let topics = consuming["fields"]["topics"]
        .as_array()
        .unwrap_or_else(|| panic!("topics is not an array: {consuming}"));
    assert!(topics.iter().any(|t| t == "push-game_apns"), "{consuming}");
    assert_eq!(consuming["fields"]["group"], "pusher-apns");
    assert_eq!(consuming["level"], "INFO");
}

/// Token auth without `--topic` is a usage error before anything is sent (exit 2), not a
/// request APNs refuses (exit 1).
#[test]
fn send_apns_with_token_auth_needs_a_topic_before_sending() {
    let out = pusher()
        .args(["send", "apns", "--endpoint", "http://127.0.0.1:1"])
        .args(["--key-file", "fixtures/apns/AuthKey_TESTKEY001.p8"])
        .args(["--key-id", "TESTKEY001", "--team-id", "TEAM000001"])
        .args([
            "--token",
            &"ab".repeat(32),
            "--payload",
            r#"{"aps":{"alert":"hi"}}"#,
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--topic is required"), "{stderr}");
    assert!(out.stdout.is_empty(), "nothing was sent, nothing printed");
}
