//! Criterion micro-benchmarks of the sender's hot path: APNs request building, the JWT cache,
//! response mapping, and whole sends into the in-process fake APNs (h2c and TLS).
//! End-to-end throughput belongs to `pusher bench`; the `send_fake` group is a quick check of
//! the sender alone. The `webpush` group times one message's encryption (a fresh key pair,
//! ECDH, HKDF, AES-GCM) on ring beside the `web-push-native` crate (RustCrypto) on the same
//! payload, and the fake's decryption. Run: `cargo bench --bench sender`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use futures_util::stream::{self, StreamExt};
use http::uri::{Authority, Scheme};
use http::{HeaderMap, HeaderValue};
use pusher::clock::ManualClock;
use pusher::mock::{MockConfig, MockServer};
use pusher::push::apns::{ApnsNotification, PushType};
use pusher::sender::apns::{build_request, ApnsResponse, JwtSigner, RequestContext, TokenAuth};
use pusher::sender::{ApnsAuth, ApnsConfig, ApnsSender, Endpoint, PoolConfig};
use std::hint::black_box;
use std::path::PathBuf;
use std::sync::Arc;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/apns")
        .join(name)
}

fn token_auth() -> TokenAuth {
    TokenAuth::from_file(
        &fixture("AuthKey_TESTKEY001.p8"),
        "TESTKEY001",
        "TEAM000001",
    )
    .expect("test key")
}

/// A ~300-byte payload, the size the h2 ceiling was measured with.
fn notification() -> ApnsNotification {
    let payload = format!(
        r#"{{"aps":{{"alert":"Helena miss you! come play!"}},"M":{{"pad":"{}"}}}}"#,
        "x".repeat(240)
    );
    let mut n = ApnsNotification::new("0a".repeat(32), payload.into_bytes());
    n.push_type = Some(PushType::Alert);
    n.priority = Some(10);
    n
}

fn request_and_auth(c: &mut Criterion) {
    let mut group = c.benchmark_group("apns");
    group.throughput(Throughput::Elements(1));
    let ctx = RequestContext {
        scheme: Scheme::HTTPS,
        authority: Authority::from_static("api.push.apple.com"),
        default_topic: Some(HeaderValue::from_static("com.example.app")),
        topic_required: true,
    };
    let signer = JwtSigner::new(&token_auth(), Arc::new(ManualClock::new())).expect("signer");
    let n = notification();
    group.bench_function("build_request", |b| {
        b.iter(|| {
            let (auth, _) = signer.current().expect("jwt");
            build_request(black_box(&n), &ctx, Some(auth)).expect("request")
        })
    });
    group.bench_function("jwt_cached", |b| b.iter(|| signer.current().expect("jwt")));
    group.bench_function("jwt_mint", |b| {
        b.iter(|| {
            let (_, generation) = signer.current().expect("jwt");
            signer.invalidate(generation);
        })
    });
    let empty = HeaderMap::new();
    group.bench_function("response_200", |b| {
        b.iter(|| ApnsResponse::from_parts(200, &empty, b""))
    });
    let body = br#"{"reason":"Unregistered","timestamp":1700000000000}"#;
    group.bench_function("response_410", |b| {
        b.iter(|| ApnsResponse::from_parts(410, &empty, black_box(body)))
    });
    group.finish();
}

/// Sends `count` pushes, at most `in_flight` at a time, on a current_thread runtime (the
/// fake runs on its own thread: both ends get a core, as in production).
fn send_fake(c: &mut Criterion) {
    const COUNT: u64 = 20_000;
    let (fake_tx, fake_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let server = MockServer::start(MockConfig::default())
                .await
                .expect("fake");
            fake_tx
                .send((
                    server.tls_addr(),
                    server.h2c_addr(),
                    server.ca_pem().to_string(),
                ))
                .expect("send");
            std::future::pending::<()>().await;
        });
    });
    let (tls, h2c, ca_pem) = fake_rx.recv().expect("fake started");
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca_pem).expect("ca");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");

    let mut group = c.benchmark_group("send_fake");
    group.throughput(Throughput::Elements(COUNT));
    group.sample_size(10);
    let endpoints = [
        ("h2c", format!("http://{}", h2c.expect("h2c"))),
        ("tls", format!("https://{}", tls.expect("tls"))),
    ];
    for (name, url) in endpoints {
        let mut config = ApnsConfig::new(Endpoint::Custom(url), ApnsAuth::Token(token_auth()));
        config.ca_file = Some(ca_file.clone());
        config.default_topic = Some("com.example.app".into());
        config.pool = PoolConfig {
            connections: 2,
            ..PoolConfig::default()
        };
        let sender = ApnsSender::new(config).expect("sender");
        let n = notification();
        group.bench_with_input(
            BenchmarkId::new("in_flight_1000", name),
            &sender,
            |b, sender| {
                b.iter(|| {
                    runtime.block_on(async {
                        let delivered = stream::iter(0..COUNT)
                            .map(|_| sender.send(&n))
                            .buffer_unordered(1000)
                            .filter(|o| std::future::ready(o.is_delivered()))
                            .count()
                            .await;
                        assert_eq!(delivered as u64, COUNT);
                    })
                })
            },
        );
    }
    group.finish();
}

/// One web push message's encryption: ours (ring) and the peer crate's (RustCrypto).
fn webpush_encrypt(c: &mut Criterion) {
    use p256::elliptic_curve::sec1::ToEncodedPoint;
    let mut group = c.benchmark_group("webpush");
    group.throughput(Throughput::Elements(1));
    let (secret, auth) = pusher::push::webpush::slot_keys(1);
    let public = secret.public_key();
    let point: [u8; 65] = public
        .to_encoded_point(false)
        .as_bytes()
        .try_into()
        .expect("65 bytes");
    let payload =
        br#"{"title":"Come play!","body":"Helena miss you! come play!","data":{"level":3}}"#;
    let rng = ring::rand::SystemRandom::new();
    group.bench_function("encrypt_ring", |b| {
        b.iter(|| pusher::sender::webpush::encrypt(black_box(payload), &point, &auth, &rng))
    });
    let peer_auth = web_push_native::Auth::from(auth);
    group.bench_function("encrypt_web_push_native", |b| {
        b.iter(|| web_push_native::encrypt(black_box(payload.to_vec()), &public, &peer_auth))
    });
    // What the fake pays per body it decrypts (RustCrypto, the subscription's public key
    // cached): why it samples (`--decrypt-every`).
    let body = pusher::sender::webpush::encrypt(payload, &point, &auth, &rng).expect("encrypts");
    group.bench_function("decrypt_fake", |b| {
        b.iter(|| pusher::push::webpush::decrypt_with(black_box(&body), &secret, &point, &auth))
    });
    group.finish();
}

criterion_group!(benches, request_and_auth, send_fake, webpush_encrypt);
criterion_main!(benches);
