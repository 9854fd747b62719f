//! Secrets never reach the output, at any log level: a debug run of `pusher run apns` with
//! secrets in its configuration, and `pusher send` with a .p12 password, are grepped for them.

use std::process::{Command, Stdio};
use std::time::Duration;

const PG_PASS: &str = "pg-secret-7f3a9c";
const P12_PASS: &str = "test"; // the fixture's password: too short to grep for alone
const SENTRY: &str = "https://sentrykey-51d2@sentry.example/1";
const API_KEY: &str = "fcm-server-key-88e1b2";

fn key_material() -> Vec<String> {
    // A distinctive line of the .p8 key: it must never be printed either.
    let p8 = std::fs::read_to_string("fixtures/apns/AuthKey_TESTKEY001.p8").unwrap();
    p8.lines()
        .filter(|l| !l.starts_with("-----"))
        .map(str::to_string)
        .collect()
}

#[test]
fn a_debug_run_prints_no_secret() {
    let child = Command::new(env!("CARGO_BIN_EXE_pusher"))
        .args([
            "-d",
            "run",
            "apns",
            "--app",
            "game",
            "--brokers",
            "127.0.0.1:1",
        ])
        .args([
            "--key-file",
            "fixtures/apns/AuthKey_TESTKEY001.p8",
            "--key-id",
            "TESTKEY001",
            "--team-id",
            "TEAM000001",
        ])
        .args(["--topic", "com.example.app"])
        .env("PUSHER_INVALIDTOKEN_PG_PASS", PG_PASS)
        .env("PUSHER_SENTRY_URL", SENTRY)
        .env("PUSHER_GCM_CERTS_OTHER_APIKEY", API_KEY)
        .env("PUSHER_STATS_PROMETHEUS_LISTEN", "")
        .env("PUSHER_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("Configuration loaded"),
        "not a debug run:\n{text}"
    );
    assert!(
        text.contains("<redacted>"),
        "secrets are not shown as <redacted>:\n{text}"
    );
    for secret in [PG_PASS, SENTRY, "sentrykey-51d2", API_KEY]
        .iter()
        .map(|s| s.to_string())
        .chain(key_material())
    {
        assert!(
            !text.contains(&secret),
            "secret {secret:?} printed:\n{text}"
        );
    }
}

#[test]
fn send_with_a_p12_password_prints_no_secret() {
    let out = Command::new(env!("CARGO_BIN_EXE_pusher"))
        .args([
            "-d",
            "send",
            "apns",
            "--endpoint",
            "https://127.0.0.1:1",
            "--certificate",
            "fixtures/apns/client.p12",
        ])
        .args([
            "--certificate-password",
            P12_PASS,
            "--token",
            &"ab".repeat(32),
            "--payload",
            r#"{"aps":{}}"#,
        ])
        .args(["--attempts", "1", "--timeout", "1s"])
        .env("PUSHER_LOG", "debug")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let key = std::fs::read_to_string("fixtures/apns/client.key").unwrap();
    for line in key.lines().filter(|l| !l.starts_with("-----")) {
        assert!(!text.contains(line), "private key printed:\n{text}");
    }
    assert!(!text.contains("--certificate-password test"), "{text}");
}
