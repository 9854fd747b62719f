//! pusher's web push sender against the fake push service (on port 0, HTTP/2 over TLS and h2c,
//! HTTP/1.1), and its encryption against a third party: Mozilla's Python `http_ece` decrypts
//! what we encrypt (skipped, with a message, where it is not installed).

use base64::Engine;
use pusher::mock::{MockConfig, MockServer, WebPushHandler, WebPushOptions};
use pusher::push::webpush::{
    generated_subscription, key_slot, slot_keys, EndpointRules, Keys, Subscription, WebPushMessage,
    MAX_PLAINTEXT,
};
use pusher::push::Outcome;
use pusher::sender::transport::HttpVersion;
use pusher::sender::webpush::{encrypt, WebPushConfig, WebPushSender};
use pusher::sender::{OnFault, RetryPolicy};
use std::io::Write;
use std::time::Duration;

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn message(subscription: Subscription, payload: &[u8]) -> WebPushMessage {
    WebPushMessage {
        subscription,
        payload: payload.to_vec(),
        ttl: 60,
        urgency: None,
        topic: Some("news".into()),
        metadata: Default::default(),
        push_expiry: 0,
    }
}

struct Fake {
    server: MockServer,
    _ca: tempfile::NamedTempFile,
    ca_path: std::path::PathBuf,
}

async fn fake() -> Fake {
    let server = MockServer::start_with(
        MockConfig::default(),
        WebPushHandler::new(WebPushOptions::default()),
    )
    .await
    .expect("fake web push service");
    let mut ca = tempfile::NamedTempFile::new().expect("temp file");
    ca.write_all(server.ca_pem().as_bytes())
        .expect("CA written");
    let ca_path = ca.path().to_path_buf();
    Fake {
        server,
        _ca: ca,
        ca_path,
    }
}

fn sender(fake: &Fake, http: HttpVersion) -> WebPushSender {
    let (key, _) = slot_keys(7);
    let mut config = WebPushConfig::new(key, "mailto:ops@example.com");
    config.rules = EndpointRules::LOCAL;
    // With their ports: a push service's host on another port is not trusted.
    config.push_services = [fake.server.tls_addr(), fake.server.h2c_addr()]
        .into_iter()
        .flatten()
        .map(|addr| addr.to_string())
        .collect();
    config.ca_file = Some(fake.ca_path.clone());
    config.http = http;
    config.retry = RetryPolicy {
        max_attempts: 3,
        base: Duration::from_millis(5),
        cap: Duration::from_millis(20),
        max_retry_after: Duration::from_secs(2),
    };
    WebPushSender::new(config).expect("sender")
}

#[tokio::test]
async fn pushes_reach_the_fake_over_every_transport_and_verdicts_map() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let fake = fake().await;
        let tls = format!("https://{}", fake.server.tls_addr().expect("tls"));
        let h2c = format!("http://{}", fake.server.h2c_addr().expect("h2c"));
        for (origin, http) in [
            (&tls, HttpVersion::Http2),
            (&h2c, HttpVersion::Http2),
            (&tls, HttpVersion::Http1),
            (&tls, HttpVersion::Auto),
        ] {
            let sender = sender(&fake, http);
            let id = |rule: &str| format!("{rule}{:060x}", key_slot(origin) as u64 + http as u64);
            let send = |id: String| {
                let sender = sender.clone();
                let m = message(generated_subscription(origin, &id), b"{\"title\":\"hi\"}");
                async move { sender.send(&m).await }
            };
            let d = send(id("a000")).await;
            assert_eq!(d.outcome, Outcome::Delivered, "{origin} {http:?}: {d:?}");
            assert_eq!((d.status, d.attempts), (Some(201), 1));
            assert!(d.location.is_some_and(|l| !l.is_empty()));
            for gone in ["dead", "gone", "bad0"] {
                let d = send(id(gone)).await;
                assert!(
                    matches!(d.outcome, Outcome::TokenInvalid { .. }),
                    "{gone}: {d:?}"
                );
            }
            // 429 with Retry-After, and 503: retried, then delivered.
            for once in ["4290", "5030"] {
                let d = send(id(once)).await;
                assert_eq!(
                    (d.outcome.clone(), d.attempts),
                    (Outcome::Delivered, 2),
                    "{once}: {d:?}"
                );
            }
        }
        let stats = fake.server.stats().snapshot();
        // Per transport: one plain and two retried pushes answered 201, every body decrypted
        // by the fake with the subscription's keys.
        assert_eq!(stats.by_status.get(&201).copied(), Some(4 * 3), "{stats:?}");
        assert_eq!(stats.decrypted, stats.requests, "{stats:?}");
        fake.server.shutdown().await;
    })
    .await
    .expect("bounded");
}

#[tokio::test]
async fn hostile_subscriptions_are_refused_before_any_connection() {
    let fake = fake().await;
    let origin = format!("https://{}", fake.server.tls_addr().expect("tls"));
    let good = generated_subscription(&origin, "a1");
    let mut config = WebPushConfig::new(slot_keys(1).0, "mailto:ops@example.com");
    config.ca_file = Some(fake.ca_path.clone());
    // Production rules: https only, no private hosts.
    let strict = WebPushSender::new(config).expect("sender");
    let with = |endpoint: &str, keys: Keys| Subscription {
        endpoint: endpoint.into(),
        keys,
    };
    let keys = |p256dh: &str, auth: &str| Keys {
        p256dh: p256dh.into(),
        auth: auth.into(),
    };
    // Refused by our endpoint rules (that other rules allow): the message is rejected, the
    // subscription kept. Refused for its own sake: deleted as a dead token.
    let ours = |reason: &str| Outcome::Rejected {
        reason: reason.into(),
    };
    let its = |reason: &str| Outcome::TokenInvalid {
        reason: reason.into(),
        timestamp_ms: None,
    };
    let cases = [
        (good.clone(), ours("endpoint_private_address")),
        (
            with("http://push.example.com/x", good.keys.clone()),
            ours("endpoint_not_https"),
        ),
        (
            with(
                "https://169.254.169.254/latest/meta-data",
                good.keys.clone(),
            ),
            ours("endpoint_private_address"),
        ),
        (
            with("ftp://push.example.com/x", good.keys.clone()),
            its("endpoint_not_https"),
        ),
        (
            with(
                "https://push.example.com/x",
                keys("not base64!", &good.keys.auth),
            ),
            its("bad_subscription_key"),
        ),
        (
            with(
                "https://push.example.com/x",
                keys(&b64(&[4; 33]), &good.keys.auth),
            ),
            its("bad_subscription_key"),
        ),
        (
            with(
                "https://push.example.com/x",
                keys(&good.keys.p256dh, &b64(&[1; 15])),
            ),
            its("bad_subscription_key"),
        ),
        (with("::::", good.keys.clone()), its("bad_endpoint")),
    ];
    for (subscription, want) in cases {
        let d = strict.send(&message(subscription.clone(), b"x")).await;
        assert_eq!(d.outcome, want, "{subscription:?}");
        assert_eq!(d.attempts, 0);
    }
    // Too large to encrypt into one 4096-byte message: the message's fault.
    let local = sender(&fake, HttpVersion::Auto);
    let d = local
        .send(&message(good, &vec![b'x'; MAX_PLAINTEXT + 1]))
        .await;
    assert!(matches!(d.outcome, Outcome::Malformed { .. }), "{d:?}");
    assert_eq!(fake.server.stats().snapshot().requests, 0);
    fake.server.shutdown().await;
}

/// A retry budget of two attempts, milliseconds apart: a message's own failures end it fast.
fn two_quick_attempts() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 2,
        base: Duration::from_millis(1),
        cap: Duration::from_millis(2),
        max_retry_after: Duration::from_millis(5),
    }
}

/// A port nothing listens on.
/// Sends `lone` while pushes to `others` keep being delivered, as in a running pusher: how
/// `lone` ended (within 20 s: it must end, not wait for the app to resume).
async fn beside_deliveries(
    sender: &WebPushSender,
    lone: WebPushMessage,
    others: &str,
) -> pusher::sender::webpush::WebPushDelivery {
    let lone = sender.send(&lone);
    let others = async {
        for i in 0.. {
            let m = message(generated_subscription(others, &format!("b{i}")), b"x");
            assert_eq!(sender.send(&m).await.outcome, Outcome::Delivered);
        }
    };
    tokio::time::timeout(Duration::from_secs(20), async {
        tokio::select! {
            d = lone => d,
            _ = others => unreachable!(),
        }
    })
    .await
    .expect("one subscription's failure ends, the app not paused")
}

/// Four pushes to `origin` at once, every one failing there: the app pauses (within 20 s)
/// and none of them ends meanwhile (they wait for it to resume). Their tasks.
async fn pushes_pausing_the_app(
    sender: &std::sync::Arc<WebPushSender>,
    origin: &str,
) -> Vec<tokio::task::JoinHandle<pusher::sender::webpush::WebPushDelivery>> {
    let sends: Vec<_> = (0..4)
        .map(|i| {
            let sender = sender.clone();
            let m = message(generated_subscription(origin, &format!("a{i}")), b"x");
            tokio::spawn(async move { sender.send(&m).await })
        })
        .collect();
    let mut health = sender.gate_for(origin).health();
    tokio::time::timeout(Duration::from_secs(20), health.wait_for(|h| !h.is_up()))
        .await
        .expect("the app pauses")
        .unwrap();
    assert!(
        sends.iter().all(|s| !s.is_finished()),
        "nothing ends while every push to {origin} fails"
    );
    sends
}

fn dead_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

#[tokio::test]
async fn a_dead_origin_that_is_no_push_service_fails_the_message_not_the_app() {
    // Nothing listens on this port: a hostile or stale subscription, not a push service. A
    // push service's host on a port that is not its own (`fcm.googleapis.com:9`) is none
    // either.
    let port = dead_port();
    for push_services in [vec![], vec!["127.0.0.1".to_string()]] {
        let mut config = WebPushConfig::new(slot_keys(2).0, "mailto:ops@example.com");
        config.rules = EndpointRules::LOCAL;
        config.push_services = push_services;
        config.on_fault = OnFault::Wait;
        config.retry = two_quick_attempts();
        let sender = WebPushSender::new(config).expect("sender");
        let m = message(
            generated_subscription(&format!("http://127.0.0.1:{port}"), "a2"),
            b"x",
        );
        let d = tokio::time::timeout(Duration::from_secs(20), sender.send(&m))
            .await
            .expect("ends: not parked at the gate");
        assert!(matches!(d.outcome, Outcome::GaveUp { .. }), "{d:?}");
        assert!(sender.gates().iter().all(|g| g.health().borrow().is_up()));
    }
}

/// An HTTP/1.1 push service on port 0: 503 while `down` is set, else 201; it counts both.
async fn push_service(down: bool) -> (String, std::sync::Arc<PushServiceCounts>) {
    use axum::response::IntoResponse;
    use std::sync::atomic::Ordering;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let counts = std::sync::Arc::new(PushServiceCounts::default());
    counts.down.store(down, Ordering::SeqCst);
    let seen = counts.clone();
    let app = axum::Router::new().fallback(move || {
        let seen = seen.clone();
        async move {
            if seen.down.load(Ordering::SeqCst) {
                seen.unavailable.fetch_add(1, Ordering::SeqCst);
                axum::http::StatusCode::SERVICE_UNAVAILABLE.into_response()
            } else {
                seen.created.fetch_add(1, Ordering::SeqCst);
                (
                    axum::http::StatusCode::CREATED,
                    [(axum::http::header::LOCATION, "/m/1")],
                )
                    .into_response()
            }
        }
    });
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, counts)
}

#[derive(Default)]
struct PushServiceCounts {
    down: std::sync::atomic::AtomicBool,
    unavailable: std::sync::atomic::AtomicUsize,
    created: std::sync::atomic::AtomicUsize,
}

/// Pushes to `origin`, each delivered, until `until` holds (within 20 s): another push
/// service answering meanwhile, as in a running pusher. How many were delivered.
async fn delivering_until(sender: &WebPushSender, origin: &str, until: impl Fn() -> bool) -> usize {
    tokio::time::timeout(Duration::from_secs(20), async {
        let mut delivered = 0;
        while !until() || delivered == 0 {
            let m = message(
                generated_subscription(origin, &format!("b{delivered}")),
                b"x",
            );
            let d = sender.send(&m).await;
            assert_eq!(d.outcome, Outcome::Delivered, "{d:?}");
            delivered += 1;
        }
        delivered
    })
    .await
    .expect("the condition holds while the other push service answers")
}

/// A push service that takes no connection is failing, whatever the other push services do:
/// its gate closes (the app pauses) while another push service's pushes are delivered, and
/// its pushes wait and are delivered once it answers again. (With one gate for all push
/// services, another's deliveries made each of its pushes look like its own bad luck: they
/// spent their retries and ended `gave_up`, committed and lost.)
#[tokio::test]
async fn a_push_service_taking_no_connection_pauses_its_pushes_while_another_answers() {
    let (good, good_counts) = push_service(false).await;
    let good_origin = format!("http://{good}");
    let dead = dead_port();
    let dead_origin = format!("http://127.0.0.1:{dead}");
    let mut config = WebPushConfig::new(slot_keys(6).0, "mailto:ops@example.com");
    config.rules = EndpointRules::LOCAL;
    config.push_services = vec![good, format!("127.0.0.1:{dead}")];
    config.http = HttpVersion::Http1;
    config.on_fault = OnFault::Wait;
    config.retry = two_quick_attempts();
    let sender = std::sync::Arc::new(WebPushSender::new(config).expect("sender"));

    // One push to the dead push service, beside deliveries to the other: it waits.
    let lone = {
        let sender = sender.clone();
        let m = message(generated_subscription(&dead_origin, "lone"), b"x");
        tokio::spawn(async move { sender.send(&m).await })
    };
    let dead_gate = sender.gate_for(&dead_origin).clone();
    let delivered = delivering_until(&sender, &good_origin, || {
        !dead_gate.health().borrow().is_up()
    })
    .await;
    assert!(!lone.is_finished(), "the push waits, it does not give up");
    assert!(sender.gate_for(&good_origin).health().borrow().is_up());

    // More pushes to it wait too, until it takes connections again.
    let mut sends = pushes_pausing_the_app(&sender, &dead_origin).await;
    sends.push(lone);
    let (back, back_counts) = {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", dead))
            .await
            .expect("the dead port is free again");
        let counts = std::sync::Arc::new(PushServiceCounts::default());
        let seen = counts.clone();
        let app = axum::Router::new().fallback(move || {
            seen.created
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async {
                (
                    axum::http::StatusCode::CREATED,
                    [(axum::http::header::LOCATION, "/m/1")],
                )
            }
        });
        (
            tokio::spawn(async move { axum::serve(listener, app).await }),
            counts,
        )
    };
    for s in sends {
        let d = tokio::time::timeout(Duration::from_secs(20), s)
            .await
            .expect("delivered once the push service answers again")
            .unwrap();
        assert_eq!((d.outcome, d.status), (Outcome::Delivered, Some(201)));
    }
    // Counts add up: every push delivered once, at its own push service.
    use std::sync::atomic::Ordering::SeqCst;
    assert_eq!(back_counts.created.load(SeqCst), 5);
    assert_eq!(good_counts.created.load(SeqCst), delivered);
    back.abort();
}

/// One push service's outage (503 to everything) while another answers 201: its pushes are
/// not `gave_up` after their retries; they wait at its gate (the app pauses) and are
/// delivered once it answers 201 again, and the other's pushes are delivered meanwhile.
#[tokio::test]
async fn one_push_service_s_outage_waits_while_another_answers() {
    use std::sync::atomic::Ordering::SeqCst;
    let (a, a_counts) = push_service(true).await;
    let (b, b_counts) = push_service(false).await;
    let (a_origin, b_origin) = (format!("http://{a}"), format!("http://{b}"));
    let mut config = WebPushConfig::new(slot_keys(8).0, "mailto:ops@example.com");
    config.rules = EndpointRules::LOCAL;
    config.push_services = vec![a, b];
    config.http = HttpVersion::Http1;
    config.on_fault = OnFault::Wait;
    // Retries spread over tens of milliseconds, while B answers all along.
    config.retry = RetryPolicy {
        max_attempts: 3,
        base: Duration::from_millis(20),
        cap: Duration::from_millis(50),
        max_retry_after: Duration::from_millis(50),
    };
    let sender = std::sync::Arc::new(WebPushSender::new(config).expect("sender"));

    // B answers throughout: a steady stream of its pushes, each delivered.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stream = {
        let (sender, stop, b_origin) = (sender.clone(), stop.clone(), b_origin.clone());
        tokio::spawn(async move {
            let mut delivered = 0;
            while !stop.load(SeqCst) {
                let id = format!("b{delivered}");
                let d = sender
                    .send(&message(generated_subscription(&b_origin, &id), b"x"))
                    .await;
                assert_eq!(d.outcome, Outcome::Delivered, "{d:?}");
                delivered += 1;
            }
            delivered
        })
    };
    // Let B's stream start first, so that its answers land within A's retries.
    let b_gate = sender.gate_for(&b_origin).clone();
    tokio::time::timeout(Duration::from_secs(10), async {
        while b_counts.created.load(SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("B answers");
    let a_pushes = 6;
    let sends: Vec<_> = (0..a_pushes)
        .map(|i| {
            let sender = sender.clone();
            let m = message(generated_subscription(&a_origin, &format!("a{i}")), b"x");
            tokio::spawn(async move { sender.send(&m).await })
        })
        .collect();
    let mut a_health = sender.gate_for(&a_origin).health();
    tokio::time::timeout(Duration::from_secs(20), a_health.wait_for(|h| !h.is_up()))
        .await
        .expect("A's outage closes its gate")
        .unwrap();
    // Past their retry budget (three attempts, under 0.2 s), and a probe of A's (after 1 s).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let ended: Vec<_> = sends.iter().filter(|s| s.is_finished()).collect();
    assert!(
        ended.is_empty(),
        "{} of A's pushes ended during its outage",
        ended.len()
    );
    assert!(b_gate.health().borrow().is_up(), "B is not paused");
    // The gate closed only once a push had spent its three attempts on 503s (the others may
    // have parked after fewer: how many depends on the machine's timing).
    assert!(a_counts.unavailable.load(SeqCst) >= 3);
    let b_during = b_counts.created.load(SeqCst);
    assert!(b_during > 0);

    a_counts.down.store(false, SeqCst);
    for s in sends {
        let d = tokio::time::timeout(Duration::from_secs(20), s)
            .await
            .expect("delivered once A answers again")
            .unwrap();
        assert_eq!(
            (d.outcome.clone(), d.status),
            (Outcome::Delivered, Some(201)),
            "{d:?}"
        );
    }
    stop.store(true, SeqCst);
    let b_pushes = stream.await.unwrap();
    // Counts add up: each push delivered once, at its own push service; every 503 was A's.
    assert_eq!(a_counts.created.load(SeqCst), a_pushes);
    assert_eq!(b_counts.created.load(SeqCst), b_pushes);
    assert!(b_pushes >= b_during);
    assert_eq!(b_counts.unavailable.load(SeqCst), 0);
}

/// A message whose `push_expiry` passes while its push service is down is not sent when the
/// service is back: it ends `expired`. One with time left is sent with `TTL` at most that.
#[tokio::test]
async fn a_push_expiring_while_its_push_service_is_down_ends_expired_unsent() {
    let started = tokio::time::Instant::now();
    let port = dead_port();
    let origin = format!("http://127.0.0.1:{port}");
    let mut config = WebPushConfig::new(slot_keys(10).0, "mailto:ops@example.com");
    config.rules = EndpointRules::LOCAL;
    config.push_services = vec![format!("127.0.0.1:{port}")];
    config.http = HttpVersion::Http1;
    config.on_fault = OnFault::Wait;
    config.retry = two_quick_attempts();
    let sender = std::sync::Arc::new(WebPushSender::new(config).expect("sender"));
    let now_ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64
    };
    let mut m = message(generated_subscription(&origin, "soon"), b"x");
    m.push_expiry = now_ms() + 1000;
    let send = {
        let sender = sender.clone();
        tokio::spawn(async move { sender.send(&m).await })
    };
    // The push service comes up after 3 s, recording each request's TTL.
    tokio::time::sleep_until(started + Duration::from_secs(3)).await;
    let ttls = std::sync::Arc::new(parking_lot::Mutex::new(Vec::<String>::new()));
    let seen = ttls.clone();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("the port is free");
    let app = axum::Router::new().fallback(move |headers: axum::http::HeaderMap| {
        let ttl = headers
            .get("ttl")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("none");
        seen.lock().push(ttl.to_string());
        async {
            (
                axum::http::StatusCode::CREATED,
                [(axum::http::header::LOCATION, "/m/1")],
            )
        }
    });
    tokio::spawn(async move { axum::serve(listener, app).await });
    let d = tokio::time::timeout(Duration::from_secs(20), send)
        .await
        .expect("ends")
        .unwrap();
    assert_eq!(d.outcome, Outcome::Expired, "{d:?}");
    // Up for a while: still nothing was sent to it.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(ttls.lock().is_empty(), "{:?}", ttls.lock());

    // Time left: sent, with TTL no longer than what is left (60 s), not the message's hour.
    let mut m = message(generated_subscription(&origin, "later"), b"x");
    m.ttl = 3600;
    m.push_expiry = now_ms() + 60_000;
    let d = sender.send(&m).await;
    assert_eq!(d.outcome, Outcome::Delivered, "{d:?}");
    let ttl: u32 = ttls.lock()[0].parse().expect("a TTL");
    assert!((55..=60).contains(&ttl), "TTL {ttl}");
}

#[tokio::test]
async fn origins_are_bounded() {
    let fake = fake().await;
    let port = fake.server.h2c_addr().expect("h2c").port();
    let (key, _) = slot_keys(3);
    let mut config = WebPushConfig::new(key, "mailto:ops@example.com");
    config.rules = EndpointRules::LOCAL;
    config.max_origins = 4;
    let sender = WebPushSender::new(config).expect("sender");
    // 127.0.0.1 .. 127.0.0.10 are ten origins on one fake (the fake listens on 127.0.0.1
    // only, so only the first delivers; the point is the bound).
    for i in 1..=10 {
        let m = message(
            generated_subscription(&format!("http://127.0.0.{i}:{port}"), "a3"),
            b"x",
        );
        let _ = sender.send(&m).await;
    }
    let (live, opened) = sender.origins();
    assert_eq!((live, opened), (4, 10));
    fake.server.shutdown().await;
}

/// Mozilla's `http_ece` (Python) decrypts our bodies: the RFC 8291 construction as a third
/// party reads it, for payloads from empty to the largest that fits.
#[test]
fn a_third_party_decrypts_what_we_encrypt() {
    let available = std::process::Command::new("python3")
        .args(["-c", "import http_ece, cryptography"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !available {
        eprintln!(
            "skipped: Python's http_ece is not installed (pip install http_ece; ci/setup.sh does)"
        );
        return;
    }
    use p256::elliptic_curve::sec1::ToEncodedPoint;
    let rng = ring::rand::SystemRandom::new();
    let mut input = String::new();
    let mut expected = Vec::new();
    for (i, len) in [0, 1, 57, 1000, MAX_PLAINTEXT].into_iter().enumerate() {
        let (secret, auth) = slot_keys(i as u32 * 97);
        let public: [u8; 65] = secret
            .public_key()
            .to_encoded_point(false)
            .as_bytes()
            .try_into()
            .expect("65 bytes");
        let plain: Vec<u8> = (0..len).map(|j| (j * 7 + i) as u8).collect();
        let body = encrypt(&plain, &public, &auth, &rng).expect("encrypts");
        input.push_str(
            &serde_json::json!({"private_key": b64(&secret.to_bytes()), "auth": b64(&auth),
                "body": b64(&body)})
            .to_string(),
        );
        input.push('\n');
        expected.push(b64(&plain));
    }
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/support/webpush_decrypt.py"
    );
    let mut child = std::process::Command::new("python3")
        .arg(script)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("written");
    let out = child.wait_with_output().expect("python3 ends");
    let lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(lines, expected);
}

/// A 401 from a host that is no push service is that message's: rejected at once, named by
/// its status. From a push service it is retried (it counts toward an outage, below), and a
/// one-shot send gives up after its retries without calling the endpoint failing: autopush
/// answers 401 to one subscription made for another key. So is a local fake's where local
/// endpoints are allowed (a wrong key rejected the README's seed backlog); a host by name is
/// someone's (the machine's own name, which /etc/hosts resolves to 127.0.0.1).
#[tokio::test]
async fn a_401_is_retried_at_a_push_service_and_rejected_elsewhere() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let origin = format!("http://{addr}");
    let app = axum::Router::new().fallback(|| async {
        (
            axum::http::StatusCode::UNAUTHORIZED,
            r#"{"code":401,"errno":109,"error":"Unauthorized","message":"VAPID public key mismatch"}"#,
        )
    });
    tokio::spawn(async move { axum::serve(listener, app).await });
    let name = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
    let port = addr.rsplit(':').next().unwrap();
    let named = format!("http://{}:{port}", name.trim());
    // A host that is no push service is named by its status: its words would be metric
    // labels of its choosing.
    let gave_up = |reason: &str| Outcome::GaveUp {
        reason: reason.into(),
    };
    for (push_services, origin, attempts, expected) in [
        (
            vec![addr.clone()],
            &origin,
            2,
            gave_up("VAPID public key mismatch"),
        ),
        (vec![], &origin, 2, gave_up("unauthorized")),
        (
            vec![],
            &named,
            1,
            Outcome::Rejected {
                reason: "unauthorized".into(),
            },
        ),
    ] {
        let mut config = WebPushConfig::new(slot_keys(4).0, "mailto:ops@example.com");
        config.rules = EndpointRules::LOCAL;
        config.push_services = push_services;
        config.http = HttpVersion::Http1;
        config.retry = two_quick_attempts();
        let sender = WebPushSender::new(config).expect("sender");
        let d = sender
            .send(&message(generated_subscription(origin, "a4"), b"x"))
            .await;
        assert_eq!(
            (d.status, d.attempts),
            (Some(401), attempts),
            "{origin}: {d:?}"
        );
        assert_eq!(d.endpoint_fault, None, "{d:?}");
        assert_eq!(d.outcome, expected, "{origin}");
    }
}

/// A push service answering 401 or 403 refuses our token: when it refuses every push (a
/// rotated key, a skewed clock), the app pauses, nothing is rejected, and the pushes are
/// delivered once it accepts them again; when it refuses one subscription's only (made for
/// another key), that push gives up after its retries and the app goes on.
#[tokio::test]
async fn a_push_service_refusing_every_push_with_401_or_403_pauses_the_app_one_subscription_gives_up(
) {
    for status in [401, 403] {
        refusing_every_push_pauses_the_app_one_subscription_gives_up(status, "key mismatch").await;
    }
}

/// Apple's 400 `VapidPkHashMismatch` (a subscription made for another VAPID key) is a key
/// refusal too: every push answered so pauses the app. Seen: a whole backlog rejected after a
/// key change. And a 404 that is a web page (a proxy's, a wrong URL's) is no push service's
/// verdict: every push answered so pauses the app, and one subscription's alone gives up,
/// kept. Seen: nginx's 404 page deleted every subscription of the app.
#[tokio::test]
async fn a_key_mismatch_or_a_web_page_for_every_push_pauses_the_app() {
    refusing_every_push_pauses_the_app_one_subscription_gives_up(
        400,
        r#"{"reason":"VapidPkHashMismatch"}"#,
    )
    .await;
    refusing_every_push_pauses_the_app_one_subscription_gives_up(
        404,
        "<html>\r\n<head><title>404 Not Found</title></head>\r\n<body>nginx</body></html>",
    )
    .await;
}

async fn refusing_every_push_pauses_the_app_one_subscription_gives_up(
    status: u16,
    body: &'static str,
) {
    use axum::response::IntoResponse;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let origin = format!("http://{addr}");
    let refuse_all = Arc::new(AtomicBool::new(true));
    let refusing = refuse_all.clone();
    let refusal = axum::http::StatusCode::from_u16(status).unwrap();
    let app = axum::Router::new().fallback(move |uri: axum::http::Uri| {
        let refusing = refusing.load(Ordering::SeqCst);
        async move {
            if refusing || uri.path().ends_with("/other-key") {
                (refusal, body).into_response()
            } else {
                (
                    axum::http::StatusCode::CREATED,
                    [(axum::http::header::LOCATION, "/m/1")],
                )
                    .into_response()
            }
        }
    });
    tokio::spawn(async move { axum::serve(listener, app).await });
    let mut config = WebPushConfig::new(slot_keys(5).0, "mailto:ops@example.com");
    config.rules = EndpointRules::LOCAL;
    config.push_services = vec![addr];
    config.http = HttpVersion::Http1;
    config.on_fault = OnFault::Wait;
    config.retry = two_quick_attempts();
    let sender = Arc::new(WebPushSender::new(config).expect("sender"));
    let sends = pushes_pausing_the_app(&sender, &origin).await;
    refuse_all.store(false, Ordering::SeqCst);
    for s in sends {
        let d = tokio::time::timeout(Duration::from_secs(20), s)
            .await
            .expect("delivered once the push service accepts again")
            .unwrap();
        assert_eq!((d.outcome, d.status), (Outcome::Delivered, Some(201)));
    }
    // Others are delivered meanwhile, as in a running pusher.
    let lone = message(generated_subscription(&origin, "other-key"), b"x");
    let d = beside_deliveries(&sender, lone, &origin).await;
    assert!(matches!(d.outcome, Outcome::GaveUp { .. }), "{d:?}");
    assert_eq!(d.status, Some(status));
}
