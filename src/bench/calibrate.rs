//! A fixed CPU workload measured in the same run as the bench, so the gate can tell "pusher got
//! slower" from "this machine is slower or busier right now". It mixes what the pusher's hot
//! path does: JSON encoding and parsing, and hashing.
//!
//! It runs on every core at once: the bench uses all of them (pipeline, broker, fake server),
//! so a build busy on the other core must lower the calibration too, not only the bench.

use std::hash::{BuildHasher, Hasher};
use std::time::{Duration, Instant};

/// Operations per second of the workload on all cores together: the median of `rounds`
/// samples of `each`.
pub fn calibrate(rounds: usize, each: Duration) -> f64 {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut samples: Vec<f64> = (0..rounds.max(1))
        .map(|_| {
            std::thread::scope(|s| {
                let workers: Vec<_> = (0..cores).map(|_| s.spawn(|| sample(each))).collect();
                workers.into_iter().filter_map(|w| w.join().ok()).sum()
            })
        })
        .collect();
    samples.sort_by(|a, b| a.total_cmp(b));
    samples[samples.len() / 2]
}

fn sample(each: Duration) -> f64 {
    let start = Instant::now();
    let mut ops = 0u64;
    let hasher = std::collections::hash_map::RandomState::new();
    let mut sink = 0u64;
    while start.elapsed() < each {
        for i in 0..64u64 {
            let v = serde_json::json!({"aps": {"alert": "Helena miss you! come play!", "badge": i}, "M": {"jobId": i}});
            let bytes = serde_json::to_vec(&v).unwrap_or_default();
            let back: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
            let mut h = hasher.build_hasher();
            h.write(&bytes);
            sink = sink
                .wrapping_add(h.finish())
                .wrapping_add(back.is_object() as u64);
        }
        ops += 64;
    }
    std::hint::black_box(sink);
    ops as f64 / start.elapsed().as_secs_f64()
}

#[cfg(test)]
mod tests {
    #[test]
    fn calibration_is_positive() {
        assert!(super::calibrate(3, std::time::Duration::from_millis(5)) > 0.0);
    }
}
