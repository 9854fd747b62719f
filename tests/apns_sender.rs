//! ApnsSender against the fake APNs server (src/mock) on 127.0.0.1 port 0. Every test checks
//! that our outcomes and the fake's counters add up.

mod common;

use common::*;
use futures_util::future::join_all;
use pusher::clock::ManualClock;
use pusher::push::apns::{ApnsNotification, PushType};
use pusher::push::token_rules::TokenRule;
use pusher::push::Outcome;
use pusher::sender::apns::{load_identity, Delivery, TokenAuth};
use pusher::sender::{ApnsAuth, ApnsSender, RetryPolicy};
use std::sync::Arc;
use std::time::Duration;

const PAYLOAD: &str = r#"{"aps":{"alert":"Helena miss you! come play!"},"M":{"jobId":"00000000-0000-0000-0000-000000000000","padding":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}}"#;

fn push(token: String) -> ApnsNotification {
    ApnsNotification::new(token, PAYLOAD.as_bytes())
}

/// Sends every notification concurrently; returns the deliveries in order.
async fn send_all(sender: &ApnsSender, notifications: Vec<ApnsNotification>) -> Vec<Delivery> {
    join_all(notifications.iter().map(|n| sender.send_with_details(n))).await
}

fn count(deliveries: &[Delivery], class: &str) -> u64 {
    deliveries
        .iter()
        .filter(|d| d.outcome.class() == class)
        .count() as u64
}

fn attempts(deliveries: &[Delivery]) -> u64 {
    deliveries.iter().map(|d| d.attempts as u64).sum()
}

#[tokio::test]
async fn delivered_over_tls_and_h2c() {
    let fake = start_fake(FakeOptions::default()).await;
    for url in [fake.tls_url(), fake.h2c_url()] {
        let sender = sender(config(&fake, url.clone(), token_auth()));
        let deliveries = send_all(&sender, (0..300).map(|i| push(token(i))).collect()).await;
        assert_eq!(count(&deliveries, "delivered"), 300, "{url}");
        assert!(deliveries.iter().all(|d| d.attempts == 1));
        let response = deliveries[0].response.as_ref().unwrap();
        assert_eq!(response.status, 200);
        assert!(
            response.apns_id.is_some(),
            "the fake always sends an apns-id"
        );
        assert_eq!(sender.pool().live_connections(), 2);
    }
    let stats = fake.stats();
    assert_eq!(stats.requests, 600);
    assert_eq!(status_count(&stats, 200), 600);
    assert_eq!(stats.connections_opened, 4);
}

#[tokio::test]
async fn every_header_reaches_the_fake_and_passes_its_checks() {
    let fake = start_fake(FakeOptions::default()).await;
    let sender = sender(config(&fake, fake.h2c_url(), token_auth()));
    let mut n = push(token(1));
    n.topic = Some("com.example.app.voip".into());
    n.push_type = Some(PushType::Voip);
    n.priority = Some(5);
    n.expiration = Some(0);
    n.collapse_id = Some("c".repeat(64));
    n.apns_id = Some("123e4567-e89b-12d3-a456-426614174000".into());
    n.payload = format!(r#"{{"aps":{{}},"pad":"{}"}}"#, "x".repeat(5000)).into();
    let d = sender.send_with_details(&n).await;
    assert_eq!(d.outcome, Outcome::Delivered);
    let response = d.response.unwrap();
    assert_eq!(
        response.apns_id.as_deref(),
        Some("123e4567-e89b-12d3-a456-426614174000")
    );
    assert_eq!(status_count(&fake.stats(), 200), 1);
}

/// Apple wants `<bundle>.voip` for a voip push (and a suffix for five other types); the app's
/// default topic is the bare bundle id. Sent bare, real APNs (and now the fake) answers 400
/// DeviceTokenNotForTopic, which is `token_invalid`: the pusher deleted good voip tokens.
#[tokio::test]
async fn push_types_that_need_a_topic_suffix_get_it_on_the_default_topic() {
    let fake = start_fake(FakeOptions::default()).await;
    let sender = sender(config(&fake, fake.h2c_url(), token_auth()));
    let types = [
        PushType::Voip,
        PushType::Complication,
        PushType::FileProvider,
        PushType::Location,
        PushType::LiveActivity,
        PushType::PushToTalk,
        PushType::Widgets,
        PushType::Controls,
        PushType::Alert,
    ];
    let notifications = types
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let mut n = push(token(i as u64));
            n.push_type = Some(*t);
            n
        })
        .collect();
    let deliveries = send_all(&sender, notifications).await;
    for (t, d) in types.iter().zip(&deliveries) {
        assert_eq!(d.outcome, Outcome::Delivered, "{t:?}");
    }
    // A message's own topic is its producer's choice, sent as it is when it fits the push
    // type; without the suffix it is refused unsent (APNs would answer
    // DeviceTokenNotForTopic, which deletes the token).
    let mut n = push(token(100));
    n.push_type = Some(PushType::Voip);
    n.topic = Some(TOPIC.into());
    let refused = sender.send(&n).await;
    assert!(matches!(refused, Outcome::Malformed { .. }), "{refused:?}");
    assert_eq!(refused.reason(), Some("BadTopic"));
    let stats = fake.stats();
    assert_eq!(status_count(&stats, 200), types.len() as u64);
    assert_eq!(status_count(&stats, 400), 0);
}

#[tokio::test]
async fn token_rules_give_the_reference_outcomes() {
    let fake = start_fake(FakeOptions::default()).await;
    let sender = sender(config(&fake, fake.tls_url(), token_auth()));
    // (rule, expected class, expected reason, attempts)
    let cases = [
        (
            Some(TokenRule::Unregistered),
            "token_invalid",
            Some("Unregistered"),
            1,
        ),
        (
            Some(TokenRule::BadToken),
            "token_invalid",
            Some("BadDeviceToken"),
            1,
        ),
        (
            Some(TokenRule::WrongTopic),
            "token_invalid",
            Some("DeviceTokenNotForTopic"),
            1,
        ),
        (Some(TokenRule::UnavailableOnce), "delivered", None, 2),
        (Some(TokenRule::ThrottledOnce), "delivered", None, 2),
        (None, "delivered", None, 1),
    ];
    let notifications = cases
        .iter()
        .enumerate()
        .map(|(i, (rule, ..))| {
            let t = token(i as u64);
            push(rule.map_or(t.clone(), |r| r.apply(&t)))
        })
        .collect();
    let started = std::time::Instant::now();
    let deliveries = send_all(&sender, notifications).await;
    for ((rule, class, reason, tries), d) in cases.iter().zip(&deliveries) {
        assert_eq!(d.outcome.class(), *class, "{rule:?}: {d:?}");
        assert_eq!(d.outcome.reason(), *reason, "{rule:?}");
        assert_eq!(d.attempts, *tries, "{rule:?}");
    }
    // 410 keeps APNs' timestamp (ms since the epoch).
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    match &deliveries[0].outcome {
        Outcome::TokenInvalid {
            timestamp_ms: Some(ts),
            ..
        } => assert!(now_ms - ts < 60_000, "{ts}"),
        other => panic!("no timestamp: {other:?}"),
    }
    assert_eq!(deliveries[0].response.as_ref().unwrap().status, 410);
    // The throttled token waited out its Retry-After: 1.
    assert!(started.elapsed() >= Duration::from_secs(1));

    let stats = fake.stats();
    assert_eq!(stats.requests, attempts(&deliveries));
    assert_eq!(status_count(&stats, 200), 3);
    assert_eq!(status_count(&stats, 410), 1);
    assert_eq!(status_count(&stats, 400), 2);
    assert_eq!(status_count(&stats, 429), 1);
    assert_eq!(status_count(&stats, 503), 1);
}

#[tokio::test]
async fn auth_and_local_refusals() {
    let fake = start_fake(FakeOptions::default()).await;
    // A key the fake does not know: 403 InvalidProviderToken, not retried.
    let unknown = ApnsAuth::Token(
        TokenAuth::from_file(&fixture("AuthKey_UNKNOWN001.p8"), "UNKNOWN001", TEAM_ID).unwrap(),
    );
    let stranger = sender(config(&fake, fake.h2c_url(), unknown));
    let d = stranger.send_with_details(&push(token(1))).await;
    assert_eq!(
        d.outcome,
        Outcome::Rejected {
            reason: "InvalidProviderToken".into()
        }
    );
    // The credentials, not the message: said so, for the caller to stop (a pipeline waits).
    assert_eq!(d.endpoint_fault.as_deref(), Some("InvalidProviderToken"));
    assert_eq!((d.attempts, d.response.unwrap().status), (1, 403));

    // Refused before sending: nothing reaches the fake.
    let sender = sender(config(&fake, fake.h2c_url(), token_auth()));
    let mut too_big = push(token(2));
    too_big.payload = vec![b' '; 4097].into();
    let mut long_collapse = push(token(3));
    long_collapse.collapse_id = Some("c".repeat(65));
    let deliveries = send_all(
        &sender,
        vec![push("not-hex".into()), too_big, long_collapse],
    )
    .await;
    for d in &deliveries {
        assert_eq!(d.outcome.class(), "malformed", "{d:?}");
    }
    let stats = fake.stats();
    assert_eq!(stats.requests, 1);
    assert_eq!(reason_count(&stats, "InvalidProviderToken"), 1);
}

#[tokio::test]
async fn retryable_errors_are_retried_then_given_up() {
    let cases = [
        (
            "errors: [{reason: InternalServerError, rate: 1.0}]",
            500,
            "InternalServerError",
        ),
        (
            "outages: [{start_ms: 0, duration_ms: 600000}]",
            503,
            "ServiceUnavailable",
        ),
        (
            "throttle: {start_ms: 0, duration_ms: 600000, retry_after_s: 0}",
            429,
            "TooManyRequests",
        ),
    ];
    for (yaml, status, reason) in cases {
        let fake = start_fake(FakeOptions {
            profile: profile(yaml),
            ..FakeOptions::default()
        })
        .await;
        let sender = sender(config(&fake, fake.h2c_url(), token_auth()));
        let deliveries = send_all(&sender, (0..20).map(|i| push(token(i))).collect()).await;
        for d in &deliveries {
            assert_eq!(
                d.outcome,
                Outcome::GaveUp {
                    reason: reason.into()
                },
                "{yaml}"
            );
            assert_eq!(d.attempts, 3);
        }
        let stats = fake.stats();
        assert_eq!(stats.requests, 60, "{yaml}");
        assert_eq!(status_count(&stats, status), 60, "{yaml}");
    }
}

#[tokio::test]
async fn goaway_moves_to_new_connections_without_losing_a_push() {
    let fake = start_fake(FakeOptions {
        profile: profile("goaway_after: 25"),
        ..FakeOptions::default()
    })
    .await;
    let mut config = config(&fake, fake.tls_url(), token_auth());
    config.retry.max_attempts = 5;
    let sender = sender(config);
    // Waves of 20, so that GOAWAYs land between and during waves, not after one huge burst.
    let mut deliveries = Vec::new();
    for wave in 0..25u64 {
        deliveries.extend(
            send_all(
                &sender,
                (0..20).map(|i| push(token(wave * 20 + i))).collect(),
            )
            .await,
        );
    }
    assert_eq!(count(&deliveries, "delivered"), 500);
    let stats = fake.stats();
    assert!(stats.goaways_sent >= 10, "{stats:?}");
    assert!(stats.connections_opened >= 10, "{stats:?}");
    // Every push was accepted exactly once; refused streams were retried elsewhere.
    assert_eq!(status_count(&stats, 200), 500);
    assert!(stats.requests <= attempts(&deliveries));
}

#[tokio::test]
async fn stream_and_connection_resets_are_retried() {
    let fake = start_fake(FakeOptions {
        profile: profile("seed: 42\nresets: {stream_rate: 0.05, connection_rate: 0.005}"),
        ..FakeOptions::default()
    })
    .await;
    let mut config = config(&fake, fake.tls_url(), token_auth());
    config.retry.max_attempts = 8;
    let sender = sender(config);
    let deliveries = send_all(&sender, (0..600).map(|i| push(token(i))).collect()).await;
    assert_eq!(count(&deliveries, "delivered"), 600);
    let stats = fake.stats();
    assert!(
        stats.streams_reset > 0 && stats.connections_dropped > 0,
        "{stats:?}"
    );
    assert!(deliveries.iter().any(|d| d.attempts > 1));
    // A dropped connection can lose a 200 the fake already wrote: never fewer 200s than pushes.
    assert!(status_count(&stats, 200) >= 600);
    assert_eq!(
        stats.requests,
        stats.responses + stats.streams_reset + stats.connections_dropped,
        "{stats:?}"
    );
    assert!(stats.requests <= attempts(&deliveries));
}

#[tokio::test]
async fn a_stalled_server_times_out_and_gives_up() {
    let fake = start_fake(FakeOptions {
        profile: profile("stall: {rate: 1.0, ms: 3000}"),
        ..FakeOptions::default()
    })
    .await;
    let mut config = config(&fake, fake.h2c_url(), token_auth());
    config.pool.request_timeout = Duration::from_millis(200);
    config.pool.connections = 1;
    config.retry.max_attempts = 2;
    let sender = sender(config);
    let deliveries = send_all(&sender, (0..3).map(|i| push(token(i))).collect()).await;
    for d in &deliveries {
        assert_eq!(
            d.outcome,
            Outcome::GaveUp {
                reason: "timeout".into()
            }
        );
        assert_eq!(d.attempts, 2);
    }
    let stats = fake.stats();
    assert_eq!(stats.stalls, 6);
    assert_eq!(stats.requests, 6);
    assert_eq!(status_count(&stats, 200), 0);
    // The connection answered nothing for a whole timeout: the retries went on a new one.
    assert_eq!(stats.connections_opened, 2);
}

#[tokio::test]
async fn expired_provider_token_is_renewed_and_the_push_retried() {
    // The fake's clock runs 61 minutes ahead of ours at the second push: our 21-minute-old
    // token is fresh to us and expired to the fake (clock skew), so APNs' answer must drive
    // the renewal.
    let our_clock = ManualClock::new();
    let fake_clock = ManualClock::new();
    let fake = start_fake(FakeOptions {
        clock: Arc::new(fake_clock.clone()),
        ..FakeOptions::default()
    })
    .await;
    let mut config = config(&fake, fake.h2c_url(), token_auth());
    config.clock = Arc::new(our_clock.clone());
    config.pool.connections = 1;
    let sender = sender(config);
    assert_eq!(sender.send(&push(token(1))).await, Outcome::Delivered);
    our_clock.advance(Duration::from_secs(21 * 60));
    fake_clock.advance(Duration::from_secs(61 * 60));
    let d = sender.send_with_details(&push(token(2))).await;
    assert_eq!(d.outcome, Outcome::Delivered);
    // Two requests (below), one charged: the stale token was ours, not the message's.
    assert_eq!(d.attempts, 1);
    let stats = fake.stats();
    assert_eq!(reason_count(&stats, "ExpiredProviderToken"), 1);
    assert_eq!(status_count(&stats, 200), 2);
    assert_eq!(stats.requests, 3);
    // The connection that saw ExpiredProviderToken was replaced.
    assert_eq!(stats.connections_opened, 2);
}

#[tokio::test]
async fn token_is_renewed_before_apns_would_call_it_expired() {
    let clock = ManualClock::new();
    let fake = start_fake(FakeOptions {
        clock: Arc::new(clock.clone()),
        ..FakeOptions::default()
    })
    .await;
    let mut config = config(&fake, fake.h2c_url(), token_auth());
    config.clock = Arc::new(clock.clone());
    let sender = sender(config);
    for step in 0..4 {
        let d = sender.send_with_details(&push(token(step))).await;
        assert_eq!(
            (d.outcome, d.attempts),
            (Outcome::Delivered, 1),
            "step {step}"
        );
        clock.advance(Duration::from_secs(31 * 60));
    }
    let stats = fake.stats();
    assert_eq!(reason_count(&stats, "ExpiredProviderToken"), 0);
    assert_eq!((stats.requests, status_count(&stats, 200)), (4, 4));
}

#[tokio::test]
async fn certificate_auth_with_pem_and_pkcs12() {
    let fake = start_fake(FakeOptions {
        jwt: false,
        client_ca: true,
        ..FakeOptions::default()
    })
    .await;
    let identities = [
        load_identity(&fixture("client.pem"), Some(&fixture("client.key")), None).unwrap(),
        load_identity(&fixture("client.p12"), None, Some("test")).unwrap(),
        load_identity(&fixture("client-legacy.p12"), None, Some("test")).unwrap(),
    ];
    for identity in identities {
        let mut config = config(&fake, fake.tls_url(), ApnsAuth::Certificate(identity));
        // Certificate auth may leave the topic to the certificate.
        config.default_topic = None;
        let sender = sender(config);
        assert_eq!(sender.send(&push(token(1))).await, Outcome::Delivered);
    }
    // A certificate the fake's CA did not sign: refused, at once and not retried (it is the
    // credentials' fault, said in endpoint_fault), whether at the TLS layer or as 403.
    let stranger = rcgen::generate_simple_self_signed(vec!["provider".to_string()]).unwrap();
    let identity = pusher::sender::tls::ClientIdentity {
        certs: vec![stranger.cert.der().clone()],
        key: rustls::pki_types::PrivateKeyDer::Pkcs8(stranger.signing_key.serialize_der().into()),
    };
    let mut stranger = config(&fake, fake.tls_url(), ApnsAuth::Certificate(identity));
    stranger.default_topic = None;
    let d = sender(stranger).send_with_details(&push(token(3))).await;
    assert_eq!(d.attempts, 1, "{d:?}");
    assert!(d.endpoint_fault.is_some(), "{d:?}");
    assert!(!d.outcome.is_delivered());
    let refused_by_the_fake = fake.stats().requests - 3;
    // Without a certificate the fake refuses the connection's pushes.
    let mut config = config(&fake, fake.tls_url(), token_auth());
    config.retry = RetryPolicy::never();
    let d = sender(config).send_with_details(&push(token(2))).await;
    assert_eq!(d.outcome.class(), "rejected", "{d:?}");
    let stats = fake.stats();
    assert_eq!(status_count(&stats, 200), 3);
    assert_eq!(stats.requests, 4 + refused_by_the_fake);
}

/// Runs `pusher send apns` against the fake; returns (exit code, stdout, stderr).
async fn pusher_send(args: Vec<String>) -> (i32, String, String) {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_pusher"))
        .args(["send", "apns"])
        .args(args)
        .output()
        .await
        .unwrap();
    (
        output.status.code().unwrap(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test]
async fn pusher_send_apns_prints_one_json_line_and_exits_by_outcome() {
    let fake = start_fake(FakeOptions {
        client_ca: true,
        ..FakeOptions::default()
    })
    .await;
    let path = |name: &str| fixture(name).display().to_string();
    let ca = fake.ca_file.display().to_string();
    let token_args = |token: &str| -> Vec<String> {
        [
            "--token",
            token,
            "--payload",
            r#"{"aps":{"alert":"hi"}}"#,
            "--topic",
            TOPIC,
            "--key-file",
            &path("AuthKey_TESTKEY001.p8"),
            "--key-id",
            KEY_ID,
            "--team-id",
            TEAM_ID,
            "--endpoint",
            &fake.tls_url(),
            "--ca",
            &ca,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };

    let (code, out, err) = pusher_send(token_args(&token(1))).await;
    assert_eq!(code, 0, "{out}{err}");
    let line: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(line["outcome"], "delivered");
    assert_eq!(line["status"], 200);
    assert!(line["apns_id"].is_string());

    let dead = TokenRule::Unregistered.apply(&token(2));
    let (code, out, _) = pusher_send(token_args(&dead)).await;
    assert_eq!(code, 1);
    let line: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        (line["outcome"].as_str(), line["status"].as_u64()),
        (Some("token_invalid"), Some(410))
    );
    assert_eq!(line["reason"], "Unregistered");
    assert!(line["timestamp"].as_u64().is_some());

    // Certificate auth, PKCS#12.
    let cert_args: Vec<String> = [
        "--token",
        &token(3),
        "--payload",
        "{}",
        "--certificate",
        &path("client.p12"),
        "--certificate-password",
        "test",
        "--endpoint",
        &fake.tls_url(),
        "--ca",
        &ca,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let (code, out, err) = pusher_send(cert_args.clone()).await;
    assert_eq!(code, 0, "{out}{err}");

    // Usage and configuration errors: exit 2 and a message naming the problem, no panic.
    let mut wrong_password = cert_args.clone();
    wrong_password[7] = "nope".into();
    let mut not_hex = token_args("xyz");
    not_hex[1] = "xyz".into();
    let mut too_big = token_args(&token(4));
    too_big[3] = format!(r#"{{"pad":"{}"}}"#, "x".repeat(4096));
    let mut no_key = token_args(&token(5));
    no_key[7] = "/nonexistent/AuthKey.p8".into();
    let mut bad_ca = token_args(&token(6));
    bad_ca[15] = "/nonexistent/ca.pem".into();
    let mut not_json = token_args(&token(7));
    not_json[3] = "{aps".into();
    let cases = [
        (wrong_password, "wrong password"),
        (not_hex, "not hex"),
        (too_big, "over the 4096-byte limit"),
        (no_key, "/nonexistent/AuthKey.p8"),
        (bad_ca, "/nonexistent/ca.pem"),
        (not_json, "not valid JSON"),
    ];
    for (args, message) in cases {
        let (code, out, err) = pusher_send(args).await;
        assert_eq!(code, 2, "{message}: {out}{err}");
        assert!(err.contains(message), "{message}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }

    // An unreachable endpoint: the push is not delivered (exit 1) and says why.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let mut unreachable = token_args(&token(8));
    unreachable[13] = closed_url;
    unreachable.extend(["--attempts".into(), "1".into()]);
    let (code, out, _) = pusher_send(unreachable).await;
    assert_eq!(code, 1);
    let line: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        (line["outcome"].as_str(), line["reason"].as_str()),
        (Some("gave_up"), Some("connect_error"))
    );
    assert!(
        line["error"].as_str().unwrap().contains("refused"),
        "{line}"
    );

    let stats = fake.stats();
    assert_eq!(stats.requests, 3);
    assert_eq!(status_count(&stats, 200), 2);
}
