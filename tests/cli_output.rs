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

/// Runs `args` with `env` set; returns the exit code and stderr.
fn run_with_env(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let out = pusher()
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let code = out.status.code();
    (code, String::from_utf8_lossy(&out.stderr).into_owned())
}

/// clap counts a value from an environment variable as given (clap #5591): a secret kept in
/// the environment for one kind of credential refused commands that use another kind, or
/// none. Each of these gets past the arguments now; a conflict typed on the command line is
/// still a clear usage error.
#[test]
fn secrets_from_the_environment_do_not_trip_the_flags_rules() {
    let usage = |stderr: &str| {
        stderr.contains("cannot be used with") || stderr.contains("required arguments")
    };
    let dir = std::env::temp_dir();
    let missing = dir.join("pusher-no-such-capture.jsonl");
    let missing = missing.to_str().unwrap();
    let sa = "fixtures/fcm/service-account.json";
    // A service account on the command line wins over an environment server key; the
    // embedded fake takes no key, so one from the environment is left unused there. Both
    // get as far as reading the capture.
    for args in [
        &["--endpoint", "http://127.0.0.1:1", "--service-account", sa][..],
        &["--mock"],
    ] {
        let args = [&["replay", missing][..], args].concat();
        let (code, stderr) = run_with_env(&args, &[("PUSHER_REPLAY_API_KEY", "k")]);
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert!(!usage(&stderr), "{args:?}: {stderr}");
        assert!(
            stderr.contains("pusher-no-such-capture.jsonl"),
            "{args:?}: {stderr}"
        );
    }

    // The same for `send gcm`, which then tries to send.
    let (code, stderr) = run_with_env(
        &[
            "send",
            "gcm",
            "--service-account",
            sa,
            "--token-uri",
            "http://127.0.0.1:1/token",
            "--endpoint",
            "http://127.0.0.1:1",
            "--token",
            "t",
            "--title",
            "hi",
            "--attempts",
            "1",
            "--timeout",
            "2s",
        ],
        &[("PUSHER_GCM_API_KEY", "k")],
    );
    assert!(!usage(&stderr) && !stderr.contains("not both"), "{stderr}");
    assert_eq!(code, Some(1), "tried to send (nothing listens): {stderr}");

    // A certificate password in the environment does not stop token auth.
    let (code, stderr) = run_with_env(
        &[
            "send",
            "apns",
            "--key-file",
            "fixtures/apns/AuthKey_TESTKEY001.p8",
            "--key-id",
            "TESTKEY001",
            "--team-id",
            "TEAM000001",
            "--topic",
            "com.example.app",
            "--endpoint",
            "http://127.0.0.1:1",
            "--token",
            &"ab".repeat(32),
            "--payload",
            r#"{"aps":{"alert":"hi"}}"#,
            "--attempts",
            "1",
            "--timeout",
            "2s",
        ],
        &[("PUSHER_APNS_CERTIFICATE_PASSWORD", "p")],
    );
    assert!(!usage(&stderr) && !stderr.contains("go with"), "{stderr}");
    assert_eq!(code, Some(1), "tried to send (nothing listens): {stderr}");

    // bench: the same for its key; the run then stops at the unwritable report path.
    let (code, stderr) = run_with_env(
        &[
            "bench",
            "--mock",
            "--platform",
            "gcm",
            "--service-account",
            sa,
            "--json",
            "/no/such/dir/r.json",
        ],
        &[("PUSHER_BENCH_API_KEY", "k")],
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(!usage(&stderr), "{stderr}");
    assert!(stderr.contains("/no/such/dir"), "{stderr}");

    // Typed on the command line, the conflicts are still refused, each named.
    let (code, stderr) = run_with_env(&["replay", missing, "--mock", "--api-key", "k"], &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--api-key needs --endpoint"), "{stderr}");
    let (code, stderr) = run_with_env(
        &[
            "send",
            "gcm",
            "--service-account",
            sa,
            "--api-key",
            "k",
            "--token",
            "t",
        ],
        &[],
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("give --service-account or --api-key, not both"),
        "{stderr}"
    );
}

/// A command starts with its soft limit on open files raised to the hard one: a fake's or a
/// results process's sockets ran into systemd's default soft limit (1,024) otherwise.
#[cfg(target_os = "linux")]
#[test]
fn the_open_files_limit_is_raised_to_the_hard_one() {
    use std::os::unix::process::CommandExt;
    let mut cmd = pusher();
    cmd.args([
        "mock",
        "apns",
        "--listen",
        "127.0.0.1:0",
        "--listen-h2c",
        "off",
    ])
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    // SAFETY: only setrlimit, async-signal-safe, between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            let mut limit = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
            limit.rlim_cur = limit.rlim_max.min(512);
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    let limits = format!("/proc/{}/limits", child.id());
    let deadline = Instant::now() + Duration::from_secs(10);
    let (soft, hard) = loop {
        let text = std::fs::read_to_string(&limits).unwrap_or_default();
        let line = text
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .unwrap_or_default()
            .to_owned();
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (soft, hard) = (fields.get(3).copied(), fields.get(4).copied());
        if soft.is_some() && soft == hard || Instant::now() > deadline {
            break (soft.map(str::to_owned), hard.map(str::to_owned));
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(soft, hard, "{limits}");
    assert_ne!(
        soft.as_deref(),
        Some("512"),
        "the hard limit here is 512: nothing to show"
    );
}
