//! Criterion micro-benchmark of the bench harness's own hot path: recording one completed
//! send (HdrHistogram record + outcome count + timeline), so the harness is never what a
//! `pusher bench` run measures. Run: `cargo bench --bench recorder`.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use pusher::bench::recorder::Recorder;
use pusher::push::Outcome;
use std::hint::black_box;
use std::time::Duration;

fn record(c: &mut Criterion) {
    let mut group = c.benchmark_group("recorder");
    group.throughput(Throughput::Elements(1));
    let delivered = Outcome::Delivered;
    let mut recorder = Recorder::new();
    let mut i = 0u64;
    group.bench_function("record_send_and_outcome", |b| {
        b.iter(|| {
            i += 1;
            let latency = Duration::from_micros(100 + (i * 7919) % 20_000);
            let at = Duration::from_millis(i % 60_000);
            recorder.record_send(black_box(latency), None, at);
            recorder.record_outcome(black_box(&delivered), at);
        })
    });
    let mut corrected = Recorder::new();
    group.bench_function("record_send_open_loop", |b| {
        b.iter(|| {
            i += 1;
            let latency = Duration::from_micros(100 + (i * 7919) % 20_000);
            let at = Duration::from_millis(i % 60_000);
            corrected.record_send(black_box(latency), Some(latency * 2), at);
        })
    });
    group.finish();
}

criterion_group!(benches, record);
criterion_main!(benches);
