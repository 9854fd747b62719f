//! A `pusher` child whose stdout and stderr are read line by line as they come, so a test can
//! wait for what it prints (a log line, a pid) before signalling it, with every wait bounded.
//! Needs `mod common;` in the test crate (the child is killed and reaped when dropped).
#![allow(dead_code)]

use crate::common::process::KillOnDrop;
use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

pub struct Watched {
    child: KillOnDrop,
    lines: Receiver<(bool, String)>,
    pub stdout: String,
    pub stderr: String,
}

fn pump(
    stream: impl Read + Send + 'static,
    is_stderr: bool,
    tx: std::sync::mpsc::Sender<(bool, String)>,
) {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            if tx.send((is_stderr, line)).is_err() {
                break;
            }
        }
    });
}

impl Watched {
    pub fn spawn(mut cmd: Command) -> Watched {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start pusher");
        let (tx, lines) = channel();
        pump(child.stdout.take().unwrap(), false, tx.clone());
        pump(child.stderr.take().unwrap(), true, tx);
        Watched {
            child: KillOnDrop(child),
            lines,
            stdout: String::new(),
            stderr: String::new(),
        }
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Takes the next line, if one comes before `deadline`; `None` at the deadline or when
    /// both streams have ended.
    fn next_line(&mut self, deadline: Instant) -> Option<(bool, String)> {
        let wait = deadline.saturating_duration_since(Instant::now());
        match self.lines.recv_timeout(wait) {
            Ok((is_stderr, line)) => {
                let all = if is_stderr {
                    &mut self.stderr
                } else {
                    &mut self.stdout
                };
                all.push_str(&line);
                all.push('\n');
                Some((is_stderr, line))
            }
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => None,
        }
    }

    /// Waits for a line containing `needle` (on stderr, or stdout) and returns it.
    pub fn wait_for(&mut self, on_stderr: bool, needle: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        while let Some((is_stderr, line)) = self.next_line(deadline) {
            if is_stderr == on_stderr && line.contains(needle) {
                return line;
            }
        }
        panic!(
            "no line with {needle:?} within {within:?}\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
    }

    /// Sends `signal` (`INT`, `TERM`) to `pid` (this child, or one it started).
    pub fn signal(pid: u32, signal: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{signal}"), &pid.to_string()])
            .status()
            .expect("run kill")
            .success();
        assert!(ok, "kill -{signal} {pid}");
    }

    /// Waits for the child to exit and its output to end; returns its exit code. Fails the
    /// test, with what it printed, when that takes longer than `within`.
    pub fn finish(mut self, within: Duration) -> (Option<i32>, String, String) {
        let deadline = Instant::now() + within;
        while self.next_line(deadline).is_some() {}
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for pusher") {
                return (
                    status.code(),
                    std::mem::take(&mut self.stdout),
                    std::mem::take(&mut self.stderr),
                );
            }
            assert!(
                Instant::now() < deadline,
                "pusher still running after {within:?}\nstdout:\n{}\nstderr:\n{}",
                self.stdout,
                self.stderr
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A `pusher` that a watched shell started in the background: killed when dropped (a failing
/// test must not leave it running), if it is still a pusher.
pub struct KillPidOnDrop(pub u32);

impl Drop for KillPidOnDrop {
    fn drop(&mut self) {
        let cmdline = std::fs::read(format!("/proc/{}/cmdline", self.0)).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains("pusher") {
            let _ = Command::new("kill")
                .args(["-KILL", &self.0.to_string()])
                .status();
        }
    }
}
