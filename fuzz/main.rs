//! Fuzzing on the stable toolchain (no nightly here, so no cargo-fuzz/libFuzzer sanitizers):
//! a seeded, coverage-free mutation fuzzer (fuzz/engine.rs) over the targets in
//! fuzz/targets.rs. Each test replays its corpus (fixtures/fuzz/<target>/) as a regression
//! test, then fuzzes for FUZZ_SECONDS (default 4) seconds.
//!
//! Built as a test target of the main package so it reuses the warm build; `ci/fuzz.sh
//! --seconds N` runs it longer. Env: FUZZ_SECONDS, FUZZ_SEED (default: the clock, printed),
//! FUZZ_GROW=1 (save inputs with new signatures into the corpus), FUZZ_TARGETS=a,b (ci/fuzz.sh).

mod engine;
#[path = "../tests/common/h2raw.rs"]
mod h2raw;
mod targets;

use std::path::PathBuf;
use std::time::Duration;

fn fuzz(name: &str) {
    if let Some(only) = std::env::var("FUZZ_TARGETS")
        .ok()
        .filter(|t| !t.trim().is_empty())
    {
        if !only.split(',').any(|t| t.trim() == name) {
            return;
        }
    }
    let seconds: f64 = std::env::var("FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4.0);
    let seed = std::env::var("FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    eprintln!("fuzz {name}: seed {seed} (FUZZ_SEED={seed} repeats this run)");
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let options = engine::Options {
        duration: Duration::from_secs_f64(seconds.max(0.0)),
        seed,
        grow: std::env::var("FUZZ_GROW").is_ok_and(|v| v == "1"),
        corpus_root: root.join("fixtures/fuzz"),
        failures_root: root.join("target/fuzz-failures"),
    };
    let mut target = targets::make(name);
    let report = engine::run(target.as_mut(), &options);
    assert!(report.execs > 0);
}

#[test]
fn names_match_the_tests() {
    // Every target has a test below and a corpus directory.
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/fuzz");
    for name in targets::all() {
        assert!(root.join(name).is_dir(), "fixtures/fuzz/{name}/ is missing");
    }
}

#[test]
fn kafka_apns() {
    fuzz("kafka_apns");
}

#[test]
fn kafka_gcm() {
    fuzz("kafka_gcm");
}

#[test]
fn apns_response() {
    fuzz("apns_response");
}

#[test]
fn fcm_response() {
    fuzz("fcm_response");
}

#[test]
fn config() {
    fuzz("config");
}

#[test]
fn mock_apns() {
    fuzz("mock_apns");
}

#[test]
fn mock_fcm() {
    fuzz("mock_fcm");
}

#[test]
fn mock_raw() {
    fuzz("mock_raw");
}

/// The engine itself: a planted bug that mutation must reach is found and its input saved,
/// and a panic inside a tokio task (which tokio would swallow) counts too.
#[test]
fn the_engine_finds_planted_bugs() {
    struct Planted {
        rt: tokio::runtime::Runtime,
        in_task: bool,
    }
    impl engine::Target for Planted {
        fn name(&self) -> &'static str {
            "planted"
        }
        fn run(&mut self, data: &[u8]) -> String {
            if self.in_task {
                if data.contains(&b'!') {
                    // Swallowed by tokio: only the panic counter sees it.
                    let task = self.rt.spawn(async { panic!("planted task bug") });
                    let _ = self.rt.block_on(task);
                }
            } else if data.windows(2).any(|w| w == b"]{") {
                panic!("planted bug");
            }
            "ok".into()
        }
        fn seeds(&self) -> Vec<Vec<u8>> {
            vec![b"[1,2]".to_vec()]
        }
        fn dictionary(&self) -> &'static [&'static [u8]] {
            &[b"!"]
        }
    }
    for in_task in [false, true] {
        let dir = tempfile::tempdir().expect("a temp dir");
        let options = engine::Options {
            duration: Duration::from_secs(20),
            seed: 1,
            grow: false,
            corpus_root: dir.path().join("corpus"),
            failures_root: dir.path().join("failures"),
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime");
        let found = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            engine::run(&mut Planted { rt, in_task }, &options)
        }));
        assert!(
            found.is_err(),
            "planted bug (in task: {in_task}) not found in 20 s"
        );
        let saved = std::fs::read_dir(dir.path().join("failures/planted"))
            .expect("the failing input is saved")
            .count();
        assert_eq!(saved, 1);
    }
}
