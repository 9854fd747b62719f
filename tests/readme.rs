//! The README's seed workflow, run as written: the shell blocks marked
//! `<!-- readme-test: NAME -->` are read from README.md (not copied here) and run with bash
//! from the repository root, `pusher` on the PATH, as a newcomer would. Each block ends in a
//! `pusher run` that runs until Ctrl-C: once the group has committed every produced message,
//! the test presses Ctrl-C (SIGINT to that process) and the pusher must exit 0. The fixed
//! ports are the README's (9092, 8443, 8444, 8445, and the pusher's 9091).

mod common;

use common::process::committed_offsets;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The shell block after the marker `<!-- readme-test: name -->`.
fn block(readme: &str, name: &str) -> String {
    let marker = format!("<!-- readme-test: {name} -->");
    let rest = &readme[readme
        .find(&marker)
        .unwrap_or_else(|| panic!("README.md has no {marker}"))..];
    let start = rest
        .find("```sh\n")
        .expect("a ```sh block after the marker")
        + 6;
    let end = rest[start..].find("```").expect("the block's end") + start;
    rest[start..end].to_string()
}

/// Runs `script` with bash in a process group of its own, `pusher` first on the PATH.
fn start(script: &str, log: &Path) -> Child {
    let bin = Path::new(env!("CARGO_BIN_EXE_pusher")).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let log = std::fs::File::create(log).unwrap();
    Command::new("bash")
        .args(["-c", &format!("set -euo pipefail\n{script}")])
        .current_dir(root())
        .env("PATH", path)
        .env("PUSHER_LOG", "warn")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .process_group(0)
        .spawn()
        .expect("bash")
}

/// The block's `pusher run`: the shell itself when bash ran its last command in place
/// (`exec`, as `bash -c` does), else a child of the shell.
fn pusher_run(shell: &Child) -> Option<u32> {
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", shell.id())).unwrap_or_default();
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    if args.get(1) == Some(&&b"run"[..]) {
        return Some(shell.id());
    }
    let out = Command::new("pgrep")
        .args(["-P", &shell.id().to_string(), "-f", "pusher run"])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .and_then(|l| l.trim().parse().ok())
}

/// Runs the block until `group` has committed `expected` messages of `topic`, then Ctrl-C.
fn run_block(
    name: &str,
    group: &str,
    topic: &str,
    expected: i64,
    dir: &Path,
    background: &mut Background,
) {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let log = dir.join(format!("{name}.log"));
    let mut shell = start(&block(&readme, name), &log);
    // Its process group: whatever the block leaves running is stopped at the end, pass or fail.
    background.0.push(shell.id());
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let committed: i64 = committed_offsets("127.0.0.1:9092", group, topic, 4)
            .iter()
            .sum();
        if committed == expected {
            break;
        }
        if let Some(status) = shell.try_wait().unwrap() {
            panic!(
                "{name} ended ({status}) with {committed} committed:\n{}",
                std::fs::read_to_string(&log).unwrap()
            );
        }
        assert!(
            Instant::now() < deadline,
            "{name}: {committed} of {expected} committed after 180 s:\n{}",
            std::fs::read_to_string(&log).unwrap()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let pid = pusher_run(&shell).expect("the block's pusher run");
    Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .unwrap();
    let status = shell.wait().unwrap();
    assert!(
        status.success(),
        "{name}: after Ctrl-C the block ended with {status}:\n{}",
        std::fs::read_to_string(&log).unwrap()
    );
}

/// Stops what a block left in the background (the fakes, the broker).
struct Background(Vec<u32>);

impl Drop for Background {
    fn drop(&mut self) {
        for pgid in &self.0 {
            let _ = Command::new("kill")
                .args(["-TERM", "--", &format!("-{pgid}")])
                .status();
        }
    }
}

#[test]
fn the_seed_workflow_blocks_run_as_written() {
    if Command::new("kcat").arg("-V").output().is_err() {
        // ci/setup.sh installs it; without it the blocks cannot run as written.
        assert!(
            std::env::var_os("CI").is_none(),
            "kcat is missing (ci/setup.sh installs it)"
        );
        eprintln!("skipped: kcat is not installed (ci/setup.sh installs it)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut background = Background(Vec::new());
    let d = dir.path();
    run_block(
        "seed-apns",
        "pusher-apns",
        "push-game_apns",
        10_000,
        d,
        &mut background,
    );
    // The FCM block uses the broker the first one left running.
    run_block(
        "seed-gcm",
        "pusher-gcm",
        "push-game_gcm",
        10_000,
        d,
        &mut background,
    );
    // Browsers: the same broker, the fake push service decrypting one body in ten.
    run_block(
        "seed-webpush",
        "pusher-webpush",
        "push-game_webpush",
        10_000,
        d,
        &mut background,
    );
    // The APNs pusher took nothing of the GCM topic (its own group, its own topics).
    let taken: i64 = committed_offsets("127.0.0.1:9092", "pusher-apns", "push-game_gcm", 4)
        .iter()
        .sum();
    assert_eq!(taken, 0);
}
