//! The config as the binary reads it: a bad key stops `pusher run` before it starts (exit 2,
//! the key and its nearest valid one named), the seed's ignored keys are named in one warning,
//! `stats.logInterval` paces the status line, `--app` adds an app and its credential flags need
//! it, and a variable that is not UTF-8 is no panic.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

fn pusher() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pusher"));
    cmd.env("NO_COLOR", "1")
        .env("PUSHER_STATS_REPORTERS", "")
        .env("PUSHER_STATS_PROMETHEUS_LISTEN", "")
        .env("PUSHER_FEEDBACK_REPORTERS", "")
        .env("PUSHER_INVALIDTOKEN_HANDLERS", "");
    cmd
}

/// The child's stderr, line by line, as it comes (the channel closes when the process does).
fn stderr_lines(child: &mut std::process::Child) -> mpsc::Receiver<String> {
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Lines from `rx` until one holds `needle`, within `within` in all: that line (`None` when
/// the process ended or the time ran out first) and the lines before it.
fn line_with(
    rx: &mpsc::Receiver<String>,
    needle: &str,
    within: Duration,
) -> (Option<String>, Vec<String>) {
    let deadline = Instant::now() + within;
    let mut seen = Vec::new();
    while let Ok(line) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        if line.contains(needle) {
            return (Some(line), seen);
        }
        seen.push(line);
    }
    (None, seen)
}

fn config_file(text: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::Builder::new().suffix(".yaml").tempfile().unwrap();
    f.write_all(text.as_bytes()).unwrap();
    f
}

/// Exit status and stderr of a run that must end by itself within 20 s (killed after: then
/// the status is `None`).
fn fails(cmd: &mut Command) -> (Option<i32>, String) {
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn an_unknown_key_in_the_file_stops_run_naming_the_nearest() {
    let bad = config_file("inFligth: 10\nqueue:\n  brokers: 127.0.0.1:1\n");
    let path = bad.path().to_str().unwrap();
    let (code, stderr) = fails(pusher().args(["run", "apns", "--config", path]));
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "config file {path}: inFligth: unknown key; did you mean inFlight?"
        )),
        "{stderr}"
    );
    // Nothing started: the error is the first and only thing said.
    assert!(!stderr.contains("Consuming."), "{stderr}");
}

#[test]
fn an_unknown_environment_name_stops_run_naming_the_nearest() {
    let (code, stderr) = fails(
        pusher()
            .env("PUSHER_QUEUE_BROKER", "127.0.0.1:1")
            .args(["run", "gcm"]),
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("PUSHER_QUEUE_BROKER: unknown key; did you mean PUSHER_QUEUE_BROKERS?"),
        "{stderr}"
    );
}

#[test]
fn the_seeds_ignored_keys_are_named_in_one_warning() {
    let seed = config_file("apns:\n  concurrentWorkers: 300\ngcm:\n  maxPendingMessages: 100\n");
    let (code, stderr) = fails(
        pusher()
            .env("PUSHER_INVALIDTOKEN_PG_MAXRETRIES", "3")
            .args(["run", "apns", "--config", seed.path().to_str().unwrap()]),
    );
    // No app configured: it stops, after the warning.
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("apns.apps: no app configured"), "{stderr}");
    let warnings: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("Ignoring config keys of the seed."))
        .collect();
    assert_eq!(warnings.len(), 1, "{stderr}");
    for named in [
        "apns.concurrentWorkers (now: inFlight bounds concurrency)",
        "gcm.maxPendingMessages (now: inFlight bounds concurrency)",
        "PUSHER_INVALIDTOKEN_PG_MAXRETRIES (now: a failed DELETE is retried",
    ] {
        assert!(warnings[0].contains(named), "{named} in {}", warnings[0]);
    }
}

/// With `stats.logInterval: 300ms` the status line comes within a second (the default is 10 s).
#[test]
fn log_interval_paces_the_status_line() {
    let config = config_file("stats:\n  logInterval: 300ms\n");
    let mut child = pusher()
        .args(["run", "apns", "--config", config.path().to_str().unwrap()])
        .args(["--app", "game", "--brokers", "127.0.0.1:1"])
        .args(["--key-file", "fixtures/apns/AuthKey_TESTKEY001.p8"])
        .args(["--key-id", "TESTKEY001", "--team-id", "TEAM000001"])
        .args(["--topic", "t", "--endpoint", "http://127.0.0.1:1"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let rx = stderr_lines(&mut child);
    let started = Instant::now();
    let (line, seen) = line_with(&rx, "Status.", Duration::from_secs(8));
    let status = line.map(|_| started.elapsed());
    let _ = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let _ = child.wait();
    let status = status.unwrap_or_else(|| panic!("no status line in: {}", seen.join("\n")));
    assert!(
        status < Duration::from_secs(5),
        "first status after {status:?}"
    );
}

/// Whether `pusher run` starts consuming (within 20 s), and what it logged until then (its
/// `Consuming.` line included); the process is killed either way.
fn starts(cmd: &mut Command) -> (bool, String) {
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let rx = stderr_lines(&mut child);
    let (line, mut seen) = line_with(&rx, "Consuming.", Duration::from_secs(20));
    let started = line.is_some();
    seen.extend(line);
    let _ = child.kill();
    let _ = child.wait();
    (started, seen.join("\n"))
}

/// An app named in mixed case (`MyGame`) with its keys from the environment, whose names are
/// upper case (the keys they make, lower case): what validates, starts, on every platform.
/// (It validated, then `pusher run` found no credentials: "give privateKey or privateKeyFile".)
#[test]
fn an_app_named_in_mixed_case_starts_with_its_keys_from_the_environment() {
    let config = config_file("queue:\n  brokers: 127.0.0.1:1\n");
    let path = config.path().to_str().unwrap();
    let cases: [(&str, &[(&str, &str)]); 3] = [
        (
            "webpush",
            &[
                ("PUSHER_WEBPUSH_APPS", "MyGame"),
                (
                    "PUSHER_WEBPUSH_VAPID_MYGAME_PRIVATEKEY",
                    "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE",
                ),
                (
                    "PUSHER_WEBPUSH_VAPID_MYGAME_SUBJECT",
                    "mailto:ops@example.com",
                ),
            ],
        ),
        (
            "apns",
            &[
                ("PUSHER_APNS_APPS", "MyGame"),
                (
                    "PUSHER_APNS_CERTS_MYGAME_AUTHKEYPATH",
                    "fixtures/apns/AuthKey_TESTKEY001.p8",
                ),
                ("PUSHER_APNS_CERTS_MYGAME_KEYID", "TESTKEY001"),
                ("PUSHER_APNS_CERTS_MYGAME_TEAMID", "TEAM000001"),
                ("PUSHER_APNS_CERTS_MYGAME_TOPIC", "com.example.game"),
                ("PUSHER_APNS_ENDPOINT", "http://127.0.0.1:1"),
            ],
        ),
        (
            "gcm",
            &[
                ("PUSHER_GCM_APPS", "MyGame"),
                ("PUSHER_GCM_CERTS_MYGAME_APIKEY", "legacy-server-key"),
                ("PUSHER_GCM_ENDPOINT", "http://127.0.0.1:1"),
            ],
        ),
    ];
    let failed: Vec<String> = cases
        .into_iter()
        .filter_map(|(platform, env)| {
            let (started, stderr) = starts(
                pusher()
                    .args(["run", platform, "--config", path])
                    .envs(env.iter().copied()),
            );
            (!started).then(|| format!("{platform}: {stderr}"))
        })
        .collect();
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}

/// `--app` adds its app to the configured ones (it replaced them): the pusher consumes every
/// app's topics.
#[test]
fn app_adds_to_the_configured_apps() {
    let config = config_file(
        "queue:\n  brokers: 127.0.0.1:1\ngcm:\n  apps: game,other\n  endpoint: http://127.0.0.1:1\n  certs:\n    game:\n      apiKey: k1\n    other:\n      apiKey: k2\n",
    );
    let path = config.path().to_str().unwrap();
    let (started, stderr) = starts(pusher().args([
        "run",
        "gcm",
        "--config",
        path,
        "--app",
        "third",
        "--api-key",
        "k3",
    ]));
    assert!(started, "{stderr}");
    let consuming = stderr
        .lines()
        .find(|l| l.contains("Consuming."))
        .unwrap_or_else(|| panic!("{stderr}"));
    for app in ["game", "other", "third"] {
        assert!(
            consuming.contains(&format!("push-{app}_gcm")),
            "{consuming}"
        );
    }
}

/// A credential flag without `--app` was dropped without a word; now a usage error.
#[test]
fn credential_flags_without_app_are_refused() {
    let (code, stderr) = fails(pusher().args([
        "run",
        "apns",
        "--key-file",
        "fixtures/apns/AuthKey_TESTKEY001.p8",
    ]));
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("required arguments were not provided") && stderr.contains("--app <APP>"),
        "{stderr}"
    );
}

/// A variable that is not UTF-8 made `std::env::vars` panic (exit 101) in every command that
/// reads the config; one that is not `PUSHER_` is skipped, a `PUSHER_` one named (its value
/// never printed).
#[test]
fn a_variable_that_is_not_utf8_is_no_panic() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    let bad = OsStr::from_bytes(b"secret\xff");
    for args in [&["run", "gcm"][..], &["api"], &["route"], &["results"]] {
        // A config error after the environment is read: each command stops there (exit 2).
        let (code, stderr) = fails(
            pusher()
                .env("X", bad)
                .env("PUSHER_RESULTS_BATCHSIZE", "0")
                .args(args),
        );
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains("results.batchSize: must be >= 1"),
            "{args:?}: {stderr}"
        );
    }
    let (code, stderr) = fails(
        pusher()
            .env("PUSHER_QUEUE_BROKERS", bad)
            .args(["run", "gcm"]),
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("PUSHER_QUEUE_BROKERS: the environment variable is not UTF-8"),
        "{stderr}"
    );
    assert!(!stderr.contains("secret"), "{stderr}");
}

/// A PostgreSQL that refuses the connection is named with its reason: the text was
/// "Error occurred while creating a new object: db error", hiding a role or database that
/// does not exist.
#[test]
fn a_refused_database_connection_says_why() {
    let (status, stderr) = fails(
        pusher()
            .args(["api", "--init-db"])
            .env("PUSHER_INVALIDTOKEN_PG_HOST", "127.0.0.1")
            .env("PUSHER_INVALIDTOKEN_PG_PORT", "5432")
            .env("PUSHER_INVALIDTOKEN_PG_DATABASE", "test")
            .env("PUSHER_INVALIDTOKEN_PG_USER", "no_such_role_4711"),
    );
    assert!(status.is_some_and(|s| s != 0), "{status:?} {stderr}");
    assert!(
        stderr.contains(r#"role "no_such_role_4711" does not exist"#),
        "{stderr}"
    );
}

/// `pusher route` and `pusher results` serve `/metrics` and `/healthz` on `route.listen` and
/// `results.listen`, as `pusher run` does on `stats.prometheus.listen`. Seen: run as their own
/// processes (the production layout) they served neither, so a stalled router showed only in
/// its log.
#[test]
fn route_and_results_serve_metrics_and_health() {
    let address = regex::Regex::new(r"addr=(127\.0\.0\.1:\d+)").unwrap();
    for (command, var) in [
        ("route", "PUSHER_ROUTE_LISTEN"),
        ("results", "PUSHER_RESULTS_LISTEN"),
    ] {
        let mut child = pusher()
            .args([command, "--brokers", "127.0.0.1:9"])
            .env(var, "127.0.0.1:0")
            .env("PUSHER_LOG", "info")
            .env("PUSHER_INVALIDTOKEN_PG_HOST", "127.0.0.1")
            .env("PUSHER_INVALIDTOKEN_PG_USER", "postgres")
            .env("PUSHER_INVALIDTOKEN_PG_DATABASE", "test")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let rx = stderr_lines(&mut child);
        let (line, seen) = line_with(&rx, "Serving /metrics", Duration::from_secs(20));
        let Some(line) = line else {
            let _ = child.kill();
            panic!("{command}: no metrics listener in: {}", seen.join("\n"));
        };
        let addr = address
            .captures(&line)
            .map(|c| c[1].to_owned())
            .unwrap_or_else(|| panic!("{command}: no address in {line}"));
        let get = |path: &str| {
            use std::io::Read;
            let mut s = std::net::TcpStream::connect(&addr).unwrap();
            write!(
                s,
                "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            )
            .unwrap();
            let mut answer = String::new();
            s.read_to_string(&mut answer).unwrap();
            answer
        };
        let metrics = get("/metrics");
        let health = get("/healthz");
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let _ = child.wait();
        assert!(metrics.starts_with("HTTP/1.1 200"), "{command}: {metrics}");
        assert!(
            health.starts_with("HTTP/1.1 200") || health.starts_with("HTTP/1.1 503"),
            "{command}: {health}"
        );
    }
}
