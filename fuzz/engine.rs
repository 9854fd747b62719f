//! A small coverage-free fuzzer that runs on the stable toolchain: replays a target's corpus,
//! then mutates it (seeded, reproducible) for a bounded time. What it checks: no panic
//! anywhere on the target's thread (also inside tasks of a current-thread tokio runtime, which
//! tokio would otherwise swallow), plus whatever the target asserts itself.
//!
//! Instead of coverage it keeps, in memory, every input that produced a new *signature* (the
//! target's short description of what happened: an error label, a status). With `--grow` /
//! `FUZZ_GROW=1` those inputs are also written into the corpus directory.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::cell::Cell;
use std::collections::{HashMap, HashSet};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::Once;
use std::time::{Duration, Instant};

/// One fuzz target.
pub trait Target {
    fn name(&self) -> &'static str;
    /// Runs one input; panics (or asserts) on a bug. Returns a short signature of what
    /// happened, e.g. `err:invalid_json` or `status:400`.
    fn run(&mut self, data: &[u8]) -> String;
    /// Byte strings worth inserting (keys, delimiters, numbers at the edges).
    fn dictionary(&self) -> &'static [&'static [u8]] {
        &[]
    }
    /// Inputs to start from besides the corpus files.
    fn seeds(&self) -> Vec<Vec<u8>> {
        Vec::new()
    }
    /// Longest input generated (the corpus may hold longer ones).
    fn max_len(&self) -> usize {
        16 * 1024
    }
    /// Called after the run: a last check (the server still answers, counters add up).
    fn finish(&mut self) {}
}

#[derive(Debug, Clone)]
pub struct Options {
    /// Mutation time after the replay; zero = replay only.
    pub duration: Duration,
    pub seed: u64,
    /// Write inputs with new signatures into the corpus directory.
    pub grow: bool,
    pub corpus_root: PathBuf,
    /// Where a failing input is written.
    pub failures_root: PathBuf,
}

#[derive(Debug, Default)]
pub struct Report {
    pub replayed: usize,
    pub execs: u64,
    pub signatures: usize,
    pub grown: usize,
    pub slowest: Duration,
}

thread_local! {
    static PANICS: Cell<u64> = const { Cell::new(0) };
}

/// Counts panics per thread, then lets the default hook print them.
fn install_panic_counter() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.with(|p| p.set(p.get() + 1));
            previous(info);
        }));
    });
}

fn panics() -> u64 {
    PANICS.with(Cell::get)
}

/// Replays the corpus and fuzzes for `options.duration`. Panics, naming the saved input, on
/// the first failure.
pub fn run(target: &mut dyn Target, options: &Options) -> Report {
    install_panic_counter();
    let name = target.name();
    let dir = options.corpus_root.join(name);
    let mut pool = load_corpus(&dir);
    let mut report = Report {
        replayed: pool.len(),
        ..Report::default()
    };
    pool.extend(target.seeds());
    if pool.is_empty() {
        pool.push(Vec::new());
    }
    let mut seen: HashSet<String> = HashSet::new();
    let mut by_signature: HashMap<String, usize> = HashMap::new();
    for input in pool.clone() {
        let sig = exec(target, &input, options, &mut report);
        *by_signature.entry(sig.clone()).or_default() += 1;
        seen.insert(sig);
    }
    let mut rng = StdRng::seed_from_u64(options.seed);
    let deadline = Instant::now() + options.duration;
    let dict = target.dictionary();
    let max_len = target.max_len();
    while Instant::now() < deadline {
        let input = mutate(&mut rng, &pool, dict, max_len);
        let sig = exec(target, &input, options, &mut report);
        if seen.insert(sig.clone()) {
            if options.grow {
                save(&dir, &input);
                report.grown += 1;
            }
            pool.push(input);
        }
        *by_signature.entry(sig).or_default() += 1;
    }
    target.finish();
    report.signatures = seen.len();
    let mut sigs: Vec<_> = by_signature.into_iter().collect();
    sigs.sort_by_key(|s| std::cmp::Reverse(s.1));
    eprintln!(
        "fuzz {name}: {} corpus inputs replayed, {} execs, {} signatures, {} saved, slowest {:?}; top: {:?}",
        report.replayed,
        report.execs,
        report.signatures,
        report.grown,
        report.slowest,
        &sigs[..sigs.len().min(8)]
    );
    report
}

fn exec(target: &mut dyn Target, input: &[u8], options: &Options, report: &mut Report) -> String {
    let before = panics();
    let started = Instant::now();
    let result = catch_unwind(AssertUnwindSafe(|| target.run(input)));
    let took = started.elapsed();
    report.execs += 1;
    report.slowest = report.slowest.max(took);
    let panicked = panics() != before;
    match result {
        Ok(sig) if !panicked => sig,
        _ => {
            let path = save(&options.failures_root.join(target.name()), input);
            panic!(
                "fuzz target {} failed on a {}-byte input, saved to {} (preview {:?}). Fix it, \
                 then move the file into fixtures/fuzz/{}/ so the replay keeps checking it.",
                target.name(),
                input.len(),
                path.display(),
                String::from_utf8_lossy(&input[..input.len().min(200)]),
                target.name()
            );
        }
    }
}

fn load_corpus(dir: &Path) -> Vec<Vec<u8>> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files.iter().filter_map(|p| std::fs::read(p).ok()).collect()
}

/// Writes `input` under a name made from its hash; returns the path.
fn save(dir: &Path, input: &[u8]) -> PathBuf {
    let mut h = DefaultHasher::new();
    input.hash(&mut h);
    let path = dir.join(format!("{:016x}", h.finish()));
    if let Err(e) = std::fs::create_dir_all(dir).and_then(|()| std::fs::write(&path, input)) {
        eprintln!("fuzz: cannot save {}: {e}", path.display());
    }
    path
}

/// Bytes that break parsers: delimiters, escapes, bad UTF-8 (a lone continuation byte, an
/// overlong form, a surrogate), and the edges of integer types.
const GENERIC: &[&[u8]] = &[
    b"{",
    b"}",
    b"[",
    b"]",
    b"\"",
    b"\\",
    b":",
    b",",
    b"\n",
    b"\r\n",
    b"\0",
    b"\x80",
    b"\xc0\xaf",
    b"\xed\xa0\x80",
    b"\xff",
    b"\\u0000",
    b"\\ud800",
    b"-1",
    b"0",
    b"1e999",
    b"-0.0",
    b"18446744073709551616",
    b"9223372036854775807",
    b"-9223372036854775808",
    b"4294967296",
    b"65536",
    b"null",
    b"true",
    b"\"\"",
    b"{}",
    b"[]",
];

fn mutate(rng: &mut StdRng, pool: &[Vec<u8>], dict: &[&[u8]], max_len: usize) -> Vec<u8> {
    let mut data = pool[rng.random_range(0..pool.len())].clone();
    let rounds = 1 + rng.random_range(0..4);
    for _ in 0..rounds {
        let len = data.len();
        match rng.random_range(0..10) {
            // Flip a bit.
            0 if len > 0 => {
                let i = rng.random_range(0..len);
                data[i] ^= 1 << rng.random_range(0..8);
            }
            // Overwrite a byte.
            1 if len > 0 => {
                let i = rng.random_range(0..len);
                data[i] = rng.random();
            }
            // Insert a dictionary word (the target's or a generic one).
            2 | 3 => {
                let word = if !dict.is_empty() && rng.random_bool(0.6) {
                    dict[rng.random_range(0..dict.len())]
                } else {
                    GENERIC[rng.random_range(0..GENERIC.len())]
                };
                let at = rng.random_range(0..=len);
                data.splice(at..at, word.iter().copied());
            }
            // Delete a range.
            4 if len > 0 => {
                let at = rng.random_range(0..len);
                let n = rng.random_range(1..=(len - at).min(64));
                data.drain(at..at + n);
            }
            // Copy a range elsewhere (grows nesting and repetition).
            5 if len > 0 => {
                let at = rng.random_range(0..len);
                let n = rng.random_range(1..=(len - at).min(256));
                let chunk = data[at..at + n].to_vec();
                let to = rng.random_range(0..=len);
                data.splice(to..to, chunk);
            }
            // Splice with another input.
            6 => {
                let other = &pool[rng.random_range(0..pool.len())];
                let cut = rng.random_range(0..=len);
                let from = rng.random_range(0..=other.len());
                data.truncate(cut);
                data.extend_from_slice(&other[from..]);
            }
            // A long run of one delimiter: deep nesting, huge numbers, long strings.
            7 => {
                let runs = b"[{9a\" -";
                let byte = runs[rng.random_range(0..runs.len())];
                let n = rng.random_range(1..2000);
                let at = rng.random_range(0..=len);
                data.splice(at..at, std::iter::repeat_n(byte, n));
            }
            // Truncate.
            8 if len > 0 => data.truncate(rng.random_range(0..len)),
            _ => {
                let at = rng.random_range(0..=len);
                let n = rng.random_range(1..16);
                let bytes: Vec<u8> = (0..n).map(|_| rng.random()).collect();
                data.splice(at..at, bytes);
            }
        }
    }
    data.truncate(max_len);
    data
}
