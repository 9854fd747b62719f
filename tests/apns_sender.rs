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
    assert_eq!(d.attempts, 2);
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
    // Without a certificate the fake refuses the connection's pushes.
    let mut config = config(&fake, fake.tls_url(), token_auth());
    config.retry = RetryPolicy::never();
    let d = sender(config).send_with_details(&push(token(2))).await;
    assert_eq!(d.outcome.class(), "rejected", "{d:?}");
    let stats = fake.stats();
    assert_eq!(status_count(&stats, 200), 3);
    assert_eq!(stats.requests, 4);
}
