//! Parsing of Kafka message values (the pipeline's hot path): messages per second for
//! `parse_apns` / `parse_gcm` on the generator's output at two payload sizes.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use pusher::gen::{GenConfig, Generator, Mix};
use pusher::push::message::{parse_apns, parse_gcm};
use pusher::push::Platform;
use std::hint::black_box;

fn messages(platform: Platform, payload_size: Option<usize>) -> Vec<Vec<u8>> {
    let mut config = GenConfig::new(platform);
    config.count = 1000;
    config.payload_size = payload_size.map(Mix::single);
    Generator::new(config)
        .map(|g| g.map(|m| m.bytes).collect())
        .unwrap_or_default()
}

fn bench_parse(c: &mut Criterion) {
    let mut group = c.benchmark_group("parse");
    for (label, size) in [("natural", None), ("3000B", Some(3000))] {
        let apns = messages(Platform::Apns, size);
        group.throughput(Throughput::Elements(apns.len() as u64));
        group.bench_function(format!("apns/{label}"), |b| {
            b.iter(|| {
                for m in &apns {
                    let _ = black_box(parse_apns(black_box(m)));
                }
            })
        });
        let gcm = messages(Platform::Gcm, size);
        group.throughput(Throughput::Elements(gcm.len() as u64));
        group.bench_function(format!("gcm/{label}"), |b| {
            b.iter(|| {
                for m in &gcm {
                    let _ = black_box(parse_gcm(black_box(m)));
                }
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_parse);
criterion_main!(benches);
