//! FcmSender (v1 and legacy) against the fake FCM server (src/mock/fcm.rs) on 127.0.0.1 port 0,
//! and the OAuth token cache against wiremock token endpoints. Every test checks that our
//! outcomes and the fake's (or the stub's) counters add up.

mod fcm_support;

use fcm_support::*;
use futures_util::future::join_all;
use pusher::clock::ManualClock;
use pusher::push::gcm::GcmMessage;
use pusher::push::message::parse_gcm;
use pusher::push::token_rules::TokenRule;
use pusher::push::Outcome;
use pusher::sender::fcm::{FcmAuth, FcmConfig, FcmDelivery, FcmSender, HttpVersion};
use pusher::sender::{Health, OnFault};
use std::sync::Arc;
use std::time::{Duration, Instant};
use wiremock::matchers::{body_string_contains, method, path, path_regex};
use wiremock::{Mock, MockServer as Stub, ResponseTemplate};

fn count(deliveries: &[FcmDelivery], class: &str) -> usize {
    deliveries
        .iter()
        .filter(|d| d.outcome.class() == class)
        .count()
}

async fn send_all(sender: &FcmSender, messages: Vec<GcmMessage>) -> Vec<FcmDelivery> {
    join_all(messages.iter().map(|m| sender.send_with_details(m))).await
}

fn token_invalid(reason: &str) -> Outcome {
    Outcome::TokenInvalid {
        reason: reason.into(),
        timestamp_ms: None,
    }
}

#[tokio::test]
async fn v1_delivered_over_tls_h2c_and_http1_with_one_token_per_sender() {
    bounded(async {
        let fake = start_fake(FakeOptions::default()).await;
        let cases = [
            (fake.tls_url(), HttpVersion::Http2),
            (fake.h2c_url(), HttpVersion::Http2),
            (fake.tls_url(), HttpVersion::Http1),
        ];
        for (url, http) in &cases {
            let mut config = v1_config(&fake, url);
            config.http = *http;
            let sender = sender(config);
            let deliveries =
                send_all(&sender, (0..100).map(|i| message(&token(i))).collect()).await;
            assert_eq!(count(&deliveries, "delivered"), 100, "{url} {http:?}");
            let d = &deliveries[0];
            assert_eq!((d.status, d.attempts), (Some(200), 1));
            assert!(d
                .message_id
                .as_deref()
                .unwrap()
                .starts_with("projects/pusher-test/messages/0:"));
            // 100 concurrent sends, one OAuth token.
            assert_eq!(sender.token_source().unwrap().stats().renewals, 1);
            if *http == HttpVersion::Http2 {
                assert_eq!(sender.pool().unwrap().live_connections(), 2);
            }
        }
        let stats = fake.stats();
        // 300 sends + 3 token requests, all 200.
        assert_eq!(stats.requests, 303);
        assert_eq!(status_count(&stats, 200), 303);
    })
    .await
}

#[tokio::test]
async fn token_rules_give_the_reference_outcomes_v1() {
    bounded(async {
        let fake = start_fake(FakeOptions::default()).await;
        let sender = sender(v1_config(&fake, &fake.h2c_url()));
        let cases = [
            (
                TokenRule::Unregistered,
                token_invalid("UNREGISTERED"),
                1,
                404,
            ),
            (
                TokenRule::BadToken,
                token_invalid("INVALID_ARGUMENT"),
                1,
                400,
            ),
            (
                TokenRule::WrongTopic,
                token_invalid("SENDER_ID_MISMATCH"),
                1,
                403,
            ),
            (TokenRule::UnavailableOnce, Outcome::Delivered, 2, 200),
            (TokenRule::ThrottledOnce, Outcome::Delivered, 2, 200),
        ];
        for (rule, outcome, attempts, status) in cases {
            let d = sender
                .send_with_details(&message(&rule.apply(&token(7))))
                .await;
            assert_eq!(d.outcome, outcome, "{rule:?}");
            assert_eq!((d.attempts, d.status), (attempts, Some(status)), "{rule:?}");
        }
        let stats = fake.stats();
        for (reason, n) in [
            ("UNREGISTERED", 1),
            ("INVALID_ARGUMENT", 1),
            ("SENDER_ID_MISMATCH", 1),
            ("UNAVAILABLE", 1),
            ("QUOTA_EXCEEDED", 1),
        ] {
            assert_eq!(reason_count(&stats, reason), n, "{reason}");
        }
        // 7 sends + 1 token request.
        assert_eq!(stats.requests, 8);
    })
    .await
}

#[tokio::test]
async fn retry_after_is_honoured() {
    bounded(async {
        let fake = start_fake(FakeOptions::default()).await;
        let mut config = v1_config(&fake, &fake.h2c_url());
        config.retry.max_retry_after = Duration::from_secs(5);
        let sender = sender(config);
        // Get the OAuth token first, so only the push is timed.
        assert!(sender.send(&message(&token(1))).await.is_delivered());
        let started = Instant::now();
        let d = sender
            .send_with_details(&message(&TokenRule::ThrottledOnce.apply(&token(2))))
            .await;
        assert_eq!((d.outcome.class(), d.attempts), ("delivered", 2));
        // The fake sends `Retry-After: 1` with its 429.
        assert!(
            started.elapsed() >= Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
    })
    .await
}

#[tokio::test]
async fn retryable_and_permanent_errors_from_the_profile() {
    bounded(async {
        let cases = [
            (
                "errors: [{reason: UNAVAILABLE, rate: 1.0}]",
                "gave_up",
                "UNAVAILABLE",
                3,
            ),
            (
                "errors: [{reason: INTERNAL, rate: 1.0}]",
                "gave_up",
                "INTERNAL",
                3,
            ),
            // APNs names in a shared profile mean the same FCM code.
            (
                "errors: [{reason: TooManyRequests, rate: 1.0}]",
                "gave_up",
                "QUOTA_EXCEEDED",
                3,
            ),
            (
                "outages: [{start_ms: 0, duration_ms: 600000}]",
                "gave_up",
                "UNAVAILABLE",
                3,
            ),
            (
                "throttle: {start_ms: 0, duration_ms: 600000, retry_after_s: 1}",
                "gave_up",
                "QUOTA_EXCEEDED",
                3,
            ),
            (
                "errors: [{reason: THIRD_PARTY_AUTH_ERROR, rate: 1.0}]",
                "rejected",
                "THIRD_PARTY_AUTH_ERROR",
                1,
            ),
            (
                "errors: [{reason: UNSPECIFIED_ERROR, rate: 1.0}]",
                "rejected",
                "UNSPECIFIED_ERROR",
                1,
            ),
        ];
        for (yaml, class, reason, attempts) in cases {
            let fake = start_fake(FakeOptions {
                profile: profile(yaml),
                ..FakeOptions::default()
            })
            .await;
            let sender = sender(v1_config(&fake, &fake.h2c_url()));
            let d = sender.send_with_details(&message(&token(1))).await;
            assert_eq!(
                (d.outcome.class(), d.outcome.reason(), d.attempts),
                (class, Some(reason), attempts),
                "{yaml}"
            );
            assert_eq!(d.error_code.as_deref(), Some(reason));
            assert_eq!(
                reason_count(&fake.stats(), reason),
                attempts as u64,
                "{yaml}"
            );
        }
    })
    .await
}

/// THIRD_PARTY_AUTH_ERROR is FCM's verdict on one message (to an Apple or web target, when
/// the project's credential for it is bad), while Android tokens still deliver: the production
/// pusher (`OnFault::Wait`) must end such a message `rejected`, not pause the app and send it
/// again until it happens to pass (it once flapped the gate and never finished the hit ones).
#[tokio::test]
async fn third_party_auth_error_is_a_final_rejection_even_when_waiting_on_faults() {
    bounded(async {
        let fake = start_fake(FakeOptions {
            profile: profile("seed: 7\nerrors: [{reason: THIRD_PARTY_AUTH_ERROR, rate: 0.5}]"),
            ..FakeOptions::default()
        })
        .await;
        let mut config = v1_config(&fake, &fake.h2c_url());
        config.on_fault = OnFault::Wait;
        let sender = sender(config);
        let mut health = sender.gate().health();
        health.borrow_and_update();
        let n = 200;
        // A bound well under `bounded`'s: the old code waited at the gate for 1 s to 5 s
        // probes, message after message.
        let deliveries = tokio::time::timeout(
            Duration::from_secs(20),
            send_all(&sender, (0..n).map(|i| message(&token(i))).collect()),
        )
        .await
        .expect("every message ends within 20 s");
        let rejected = count(&deliveries, "rejected");
        assert_eq!(rejected + count(&deliveries, "delivered"), n as usize);
        assert!(rejected > 0 && rejected < n as usize, "{rejected}");
        for d in deliveries
            .iter()
            .filter(|d| d.outcome.class() == "rejected")
        {
            assert_eq!(d.outcome.reason(), Some("THIRD_PARTY_AUTH_ERROR"));
            assert_eq!(d.attempts, 1);
        }
        // Each hit message was answered once and not sent again; the app never paused.
        assert_eq!(
            reason_count(&fake.stats(), "THIRD_PARTY_AUTH_ERROR"),
            rejected as u64
        );
        assert!(!health.has_changed().unwrap(), "the gate moved");
        assert!(health.borrow().is_up());
    })
    .await
}

/// A token endpoint, and `answer` to every push.
async fn stub_fcm(stub: &Stub, answer: ResponseTemplate) {
    Mock::given(method("POST"))
        .and(path("/token"))
        .respond_with(token_reply("t1"))
        .mount(stub)
        .await;
    Mock::given(method("POST"))
        .and(path_regex("messages:send$"))
        .respond_with(answer)
        .mount(stub)
        .await;
}

/// Answers that are no verdict of FCM's on the message, and would come alike for every message:
/// a proxy's 400 page (nginx answering `http://` on its TLS port), a 200 without the message's
/// name (a stub answering anything), a 403 with an error code our table does not know. They
/// were final (`rejected`, or `delivered`), so `pusher run gcm` ended and committed a whole
/// backlog; now the gate closes (the app pauses) with the cause, the push waits, and it is
/// delivered once FCM answers.
#[tokio::test]
async fn answers_that_are_no_verdict_of_fcm_pause_instead_of_ending_the_push() {
    bounded(async {
        let unknown_code = serde_json::json!({"error": {"code": 403, "status": "PERMISSION_DENIED",
            "message": "Permission 'cloudmessaging.messages.create' denied on resource",
            "details": [{"@type": pusher::push::fcm::FCM_ERROR_TYPE,
            "errorCode": "BRAND_NEW_AUTH_ERROR"}]}});
        let cases = [
            (
                ResponseTemplate::new(400).set_body_string(
                    "<html><center>The plain HTTP request was sent to HTTPS port</center></html>",
                ),
                "HTTP 400 without a Google error",
            ),
            (
                ResponseTemplate::new(200).set_body_string("{}"),
                "HTTP 200 without a message name",
            ),
            // With Google's words: which permission, on what.
            (
                ResponseTemplate::new(403).set_body_json(unknown_code),
                "PERMISSION_DENIED: Permission 'cloudmessaging.messages.create' denied",
            ),
        ];
        for (answer, cause) in cases {
            let stub = Stub::start().await;
            stub_fcm(&stub, answer).await;
            let mut config = FcmConfig::new(FcmAuth::ServiceAccount(account(format!(
                "{}/token",
                stub.uri()
            ))));
            config.base_url = stub.uri();
            config.on_fault = OnFault::Wait;
            let sender = sender(config);
            let mut health = sender.gate().health();
            let push = tokio::spawn({
                let sender = sender.clone();
                async move { sender.send_with_details(&message(&token(1))).await }
            });
            tokio::time::timeout(Duration::from_secs(5), health.wait_for(|h| !h.is_up()))
                .await
                .unwrap_or_else(|_| panic!("{cause}: the gate stayed open"))
                .unwrap();
            match &*health.borrow() {
                Health::Down { cause: c, .. } => assert!(c.contains(cause), "{c}"),
                Health::Up => unreachable!(),
            }
            assert!(!push.is_finished(), "{cause}: the push ended");
            // FCM answers: the probe is delivered, the gate opens.
            stub.reset().await;
            let name = serde_json::json!({"name": "projects/p/messages/0:1"});
            stub_fcm(&stub, ResponseTemplate::new(200).set_body_json(name)).await;
            let d = push.await.unwrap();
            assert_eq!(d.outcome, Outcome::Delivered, "{cause}");
            assert_eq!(d.attempts, 1, "{cause}: the wait is not charged");
            assert!(health.borrow().is_up());
        }
    })
    .await
}

/// A legacy `to: "/topics/<name>"` is a topic, which v1 names `message.topic: "<name>"` (sent
/// as a token it was refused as a bad token, `token_invalid`); and a v1 envelope may target a
/// Firebase Installation ID (`message.fid`), which was refused as malformed.
#[tokio::test]
async fn topics_and_fids_are_v1_targets() {
    bounded(async {
        let fake = start_fake(FakeOptions::default()).await;
        let sender = sender(v1_config(&fake, &fake.h2c_url()));
        let d = sender.send_with_details(&message("/topics/news")).await;
        assert_eq!(d.outcome, Outcome::Delivered, "{:?}", d.error_message);
        let fid = parse_gcm(br#"{"message":{"fid":"fid-0001","data":{"k":"v"}}}"#)
            .expect("a fid is a target");
        assert_eq!(fid.to, "fid-0001");
        assert_eq!(sender.send(&fid).await, Outcome::Delivered);
        // Fanned out, each copy targets one fid (not a fid and a token).
        let fanned = sender
            .send_multicast(&fid, &["fid-0002".into(), "fid-0003".into()])
            .await;
        assert_eq!(count(&fanned, "delivered"), 2);
        // 4 sends + 1 token request, all 200.
        let stats = fake.stats();
        assert_eq!((stats.requests, status_count(&stats, 200)), (5, 5));
    })
    .await
}

/// A v1 envelope with two targets is refused by `parse_gcm` (the pipeline's way in); sent
/// anyway, FCM's oneof refusal names no token, so the token is never called invalid (it was,
/// and deleted, while the fake's refusal said "message.token").
#[tokio::test]
async fn two_targets_are_the_message_s_fault_never_the_token_s() {
    bounded(async {
        let fake = start_fake(FakeOptions::default()).await;
        let sender = sender(v1_config(&fake, &fake.h2c_url()));
        for second in [
            r#""topic":"news""#,
            r#""condition":"'a' in topics""#,
            r#""fid":"fid-1""#,
        ] {
            let inner = format!(r#"{{"token":"{}",{second},"data":{{"k":"v"}}}}"#, token(1));
            let kafka = format!(r#"{{"message":{inner}}}"#);
            let refused = parse_gcm(kafka.as_bytes()).expect_err(&kafka);
            assert_eq!(refused.reason(), "invalid_value");
            let msg = GcmMessage {
                to: token(1),
                v1_message: Some(inner.into_bytes().into()),
                ..Default::default()
            };
            let d = sender.send_with_details(&msg).await;
            assert_eq!(
                d.outcome,
                Outcome::Rejected {
                    reason: "INVALID_ARGUMENT".into()
                },
                "{second}: {d:?}"
            );
            assert!(
                d.error_message.as_deref().unwrap().contains("oneof"),
                "{d:?}"
            );
        }
    })
    .await
}

/// A service account of another Firebase project gets SENDER_ID_MISMATCH for every token,
/// which is `token_invalid`: the production pusher deleted every token and drained the backlog.
/// Before any delivery, 20 of them are the credentials' fault: the gate closes and the rest
/// wait, so at most 19 tokens are reported invalid.
#[tokio::test]
async fn sender_id_mismatch_before_any_delivery_closes_the_gate() {
    bounded(async {
        let fake = start_fake(FakeOptions {
            profile: profile("errors: [{reason: SENDER_ID_MISMATCH, rate: 1.0}]"),
            ..FakeOptions::default()
        })
        .await;
        let mut config = v1_config(&fake, &fake.h2c_url());
        config.on_fault = OnFault::Wait;
        let sender = sender(config);
        let n = 60;
        let sends: Vec<_> = (0..n)
            .map(|i| {
                let sender = sender.clone();
                tokio::spawn(async move { sender.send_with_details(&message(&token(i))).await })
            })
            .collect();
        // Settled: every send has either ended or is waiting at the gate.
        wait_until("every send to end or wait", || {
            sends.iter().filter(|h| h.is_finished()).count() + sender.gate().parked() == n as usize
        })
        .await;
        let health = sender.gate().health().borrow().clone();
        let cause = match health {
            Health::Down { cause, .. } => cause,
            Health::Up => panic!("the gate stayed up"),
        };
        assert!(
            cause.starts_with("SENDER_ID_MISMATCH for 20 or more tokens against 0 delivered"),
            "{cause}"
        );
        let mut invalid = 0;
        for h in sends {
            if h.is_finished() {
                let d = h.await.unwrap();
                assert_eq!(d.outcome, token_invalid("SENDER_ID_MISMATCH"));
                invalid += 1;
            } else {
                h.abort();
            }
        }
        assert!(invalid <= 19, "{invalid} tokens reported invalid");
    })
    .await
}

#[tokio::test]
async fn quota_and_goaway() {
    bounded(async {
        // A quota of 10 sends a minute: the 11th gets 429 until the window refills.
        let clock = ManualClock::new();
        let fake = start_fake(FakeOptions {
            quota_per_minute: Some(10),
            clock: Arc::new(clock.clone()),
            ..FakeOptions::default()
        })
        .await;
        let mut config = v1_config(&fake, &fake.h2c_url());
        config.retry.max_attempts = 2;
        let sender = sender(config);
        let deliveries = send_all(&sender, (0..10).map(|i| message(&token(i))).collect()).await;
        assert_eq!(count(&deliveries, "delivered"), 10);
        let d = sender.send_with_details(&message(&token(10))).await;
        assert_eq!(
            (d.outcome.reason(), d.status, d.attempts),
            (Some("QUOTA_EXCEEDED"), Some(429), 2)
        );
        // 429s do not count: after the refill, 10 more go through.
        clock.advance(Duration::from_secs(60));
        let deliveries = send_all(&sender, (0..10).map(|i| message(&token(i))).collect()).await;
        assert_eq!(count(&deliveries, "delivered"), 10);
        assert_eq!(reason_count(&fake.stats(), "QUOTA_EXCEEDED"), 2);

        // GOAWAY after 50 streams a connection: nothing lost.
        let fake = start_fake(FakeOptions {
            profile: profile("goaway_after: 50"),
            ..FakeOptions::default()
        })
        .await;
        let sender = fcm_support::sender(v1_config(&fake, &fake.tls_url()));
        for round in 0..4 {
            let deliveries =
                send_all(&sender, (0..100).map(|i| message(&token(i))).collect()).await;
            assert_eq!(count(&deliveries, "delivered"), 100, "round {round}");
        }
        assert!(fake.stats().goaways_sent > 0);
    })
    .await
}

#[tokio::test]
async fn bad_messages_are_refused_locally_or_by_the_fake() {
    bounded(async {
        let fake = start_fake(FakeOptions::default()).await;
        let sender = sender(v1_config(&fake, &fake.h2c_url()));
        // Oversize after translation: refused before any request.
        let mut big = message(&token(1));
        big.data
            .insert("pad".into(), serde_json::Value::String("x".repeat(4096)));
        let d = sender.send_with_details(&big).await;
        assert_eq!(d.outcome.class(), "malformed");
        assert!(d
            .outcome
            .reason()
            .unwrap()
            .contains("over FCM's limit of 4096"));
        assert_eq!(d.attempts, 0);
        assert_eq!(fake.stats().requests, 0);

        // v1 envelopes pass through as they are: the fake judges them.
        let cases = [
            (
                r#"{"message":{"token":"TOK","data":{"n":12}}}"#,
                "Invalid value at 'message.data[0].value' (TYPE_STRING), 12",
            ),
            (
                r#"{"message":{"token":"TOK","android":{"ttl":"10"}}}"#,
                "message.android.ttl",
            ),
            (
                r#"{"message":{"token":"TOK","android":{"priority":"high"}}}"#,
                "message.android.priority",
            ),
        ];
        for (kafka, want) in cases {
            let msg = parse_gcm(kafka.replace("TOK", &token(2)).as_bytes()).unwrap();
            let d = sender.send_with_details(&msg).await;
            assert_eq!(
                d.outcome,
                Outcome::Rejected {
                    reason: "INVALID_ARGUMENT".into()
                },
                "{kafka}"
            );
            assert!(d.error_message.as_deref().unwrap().contains(want), "{d:?}");
            assert_eq!((d.status, d.attempts), (Some(400), 1));
        }
        // The same non-string data in the seed's format is encoded, and delivered.
        let d = sender
            .send_with_details(
                &parse_gcm(format!(r#"{{"to":"{}","data":{{"n":12}}}}"#, token(3)).as_bytes())
                    .unwrap(),
            )
            .await;
        assert!(d.outcome.is_delivered(), "{d:?}");
    })
    .await
}

#[tokio::test]
async fn dry_run_is_validated_not_delivered() {
    bounded(async {
        let fake = start_fake(FakeOptions {
            record_tokens: 10,
            ..FakeOptions::default()
        })
        .await;
        for legacy in [false, true] {
            let config = if legacy {
                legacy_config(&fake, &fake.h2c_url(), "k")
            } else {
                v1_config(&fake, &fake.h2c_url())
            };
            let sender = sender(config);
            let mut msg = message(&token(1));
            msg.dry_run = true;
            let d = sender.send_with_details(&msg).await;
            assert!(d.outcome.is_delivered());
            assert!(d.message_id.unwrap().ends_with("fake_message_id"));
            // Dry runs still meet the token rules.
            let mut dead = message(&TokenRule::Unregistered.apply(&token(1)));
            dead.dry_run = true;
            assert_eq!(
                sender.send(&dead).await.class(),
                "token_invalid",
                "legacy: {legacy}"
            );
        }
        assert!(fake.server.stats().delivered_tokens().is_empty());
        assert_eq!(reason_count(&fake.stats(), "validate_only"), 1);
    })
    .await
}

#[tokio::test]
async fn expired_access_token_is_renewed_and_the_push_retried() {
    bounded(async {
        // The fake judges expiry by its own clock; ours does not move.
        let fake_clock = ManualClock::new();
        let fake = start_fake(FakeOptions {
            clock: Arc::new(fake_clock.clone()),
            ..FakeOptions::default()
        })
        .await;
        let sender = sender(v1_config(&fake, &fake.tls_url()));
        assert!(sender.send(&message(&token(1))).await.is_delivered());
        fake_clock.advance(Duration::from_secs(2 * 3600));
        let deliveries = send_all(&sender, (0..20).map(|i| message(&token(i))).collect()).await;
        assert_eq!(count(&deliveries, "delivered"), 20);
        assert!(deliveries.iter().all(|d| d.attempts <= 2));
        let stats = fake.stats();
        // Every 401 carried ACCESS_TOKEN_EXPIRED; 20 concurrent 401s renewed the token once.
        assert!(reason_count(&stats, "ACCESS_TOKEN_EXPIRED") >= 1);
        assert_eq!(
            status_count(&stats, 401),
            reason_count(&stats, "ACCESS_TOKEN_EXPIRED")
        );
        let renewals = sender.token_source().unwrap().stats().renewals;
        assert_eq!(renewals, 2, "one token at start, one after expiry");
    })
    .await
}

#[tokio::test]
async fn token_is_renewed_in_the_background_before_it_expires() {
    bounded(async {
        let clock = ManualClock::new();
        let fake = start_fake(FakeOptions {
            clock: Arc::new(clock.clone()),
            ..FakeOptions::default()
        })
        .await;
        let mut config = v1_config(&fake, &fake.h2c_url());
        config.clock = Arc::new(clock.clone());
        config.renew_before = Duration::from_secs(300);
        let sender = sender(config);
        let tokens = sender.token_source().unwrap().clone();
        assert!(sender.send(&message(&token(1))).await.is_delivered());
        assert_eq!(tokens.stats().renewals, 1);
        // Inside the renewal window: the old token is used, a new one fetched meanwhile.
        clock.advance(Duration::from_secs(3400));
        assert!(sender.send(&message(&token(2))).await.is_delivered());
        wait_until("the background renewal", || tokens.stats().renewals >= 2).await;
        // Past the first token's expiry: the second one is in use, no 401 ever seen.
        clock.advance(Duration::from_secs(400));
        let d = sender.send_with_details(&message(&token(3))).await;
        assert_eq!((d.outcome.class(), d.attempts), ("delivered", 1));
        assert_eq!(status_count(&fake.stats(), 401), 0);
        assert_eq!(tokens.stats().renewals, 2);
    })
    .await
}

/// A fake FCM that checks no tokens, and a sender whose token endpoint is the wiremock `stub`.
async fn fake_with_stub_tokens(stub: &Stub) -> (Fake, FcmSender, Arc<ManualClock>) {
    let fake = start_fake(FakeOptions {
        require_auth: false,
        ..FakeOptions::default()
    })
    .await;
    let clock = Arc::new(ManualClock::new());
    let mut config = v1_config(&fake, &fake.h2c_url());
    config.auth = FcmAuth::ServiceAccount(account(format!("{}/token", stub.uri())));
    config.clock = clock.clone();
    let sender = FcmSender::new(config).unwrap();
    (fake, sender, clock)
}

fn token_reply(token: &str) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(serde_json::json!({
        "access_token": token, "expires_in": 3599, "token_type": "Bearer"}))
}

#[tokio::test]
async fn token_endpoint_sees_a_proper_jwt_bearer_grant_and_a_slow_one_is_asked_once() {
    bounded(async {
        let stub = Stub::start().await;
        Mock::given(method("POST"))
            .and(path("/token"))
            .and(body_string_contains(
                "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer",
            ))
            .and(body_string_contains("assertion=ey"))
            .respond_with(token_reply("t1").set_delay(Duration::from_millis(300)))
            .expect(1)
            .mount(&stub)
            .await;
        let (_fake, sender, _clock) = fake_with_stub_tokens(&stub).await;
        let deliveries = send_all(&sender, (0..50).map(|i| message(&token(i))).collect()).await;
        assert_eq!(count(&deliveries, "delivered"), 50);
        // The assertion: RS256 with the key id, our account, FCM's scope, Google's audience.
        let requests = stub.received_requests().await.unwrap();
        assert_eq!(requests.len(), 1);
        let form = String::from_utf8(requests[0].body.clone()).unwrap();
        let jwt = form.split("assertion=").nth(1).unwrap();
        let part = |i: usize| -> serde_json::Value {
            use base64::Engine;
            let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(jwt.split('.').nth(i).unwrap())
                .unwrap();
            serde_json::from_slice(&bytes).unwrap()
        };
        let (head, claims) = (part(0), part(1));
        assert_eq!(head["alg"], "RS256");
        assert_eq!(head["kid"], "0123456789abcdef0123456789abcdef01234567");
        assert_eq!(claims["iss"], "pusher@pusher-test.iam.gserviceaccount.com");
        assert_eq!(
            claims["scope"],
            "https://www.googleapis.com/auth/firebase.messaging"
        );
        assert_eq!(claims["aud"], "https://oauth2.googleapis.com/token");
        assert_eq!(
            claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
            3600
        );
    })
    .await
}

#[tokio::test]
async fn token_endpoint_failures_are_outcomes_never_crashes() {
    bounded(async {
        // Down: retried, then given up; back up: the next push goes through.
        let stub = Stub::start().await;
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(503))
            .up_to_n_times(3)
            .mount(&stub)
            .await;
        Mock::given(method("POST"))
            .respond_with(token_reply("t1"))
            .mount(&stub)
            .await;
        let (fake, sender, _clock) = fake_with_stub_tokens(&stub).await;
        let d = sender.send_with_details(&message(&token(1))).await;
        assert_eq!(
            d.outcome,
            Outcome::GaveUp {
                reason: "oauth_token_unavailable".into()
            }
        );
        assert!(d.transport_error.unwrap().contains("HTTP 503"));
        assert_eq!(fake.stats().requests, 0);
        assert!(sender.send(&message(&token(2))).await.is_delivered());
        let stats = sender.token_source().unwrap().stats();
        assert_eq!((stats.failures, stats.renewals), (3, 1));

        // Refused (a bad key): rejected at once, no retry.
        let stub = Stub::start().await;
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(400).set_body_json(serde_json::json!({
                "error": "invalid_grant", "error_description": "Invalid JWT Signature."})))
            .mount(&stub)
            .await;
        let (_fake, sender, _clock) = fake_with_stub_tokens(&stub).await;
        let d = sender.send_with_details(&message(&token(1))).await;
        assert_eq!(
            (d.outcome.reason(), d.attempts),
            (Some("oauth_token_refused"), 1)
        );
        assert!(d.transport_error.unwrap().contains("invalid_grant"));
        assert_eq!(stub.received_requests().await.unwrap().len(), 1);
    })
    .await
}

/// Pushes that queue behind a failing token request take its answer: the endpoint is asked
/// once, not once per push in flight. Seen: a refusing token endpoint got 201 requests in 9 s
/// from 200 messages in flight, one after another, and again at each restart.
#[tokio::test]
async fn pushes_waiting_on_a_failed_token_request_share_its_answer() {
    bounded(async {
        let stub = Stub::start().await;
        Mock::given(method("POST"))
            .respond_with(
                ResponseTemplate::new(400)
                    .set_body_json(serde_json::json!({"error": "invalid_grant",
                        "error_description": "Invalid JWT Signature."}))
                    .set_delay(Duration::from_millis(200)),
            )
            .mount(&stub)
            .await;
        let (_fake, sender, _clock) = fake_with_stub_tokens(&stub).await;
        let messages: Vec<_> = (0..50).map(|i| message(&token(i))).collect();
        let outcomes = join_all(messages.iter().map(|m| sender.send(m))).await;
        assert!(
            outcomes
                .iter()
                .all(|o| o.reason() == Some("oauth_token_refused")),
            "{outcomes:?}"
        );
        let asked = stub.received_requests().await.unwrap().len();
        assert!(asked <= 2, "the token endpoint was asked {asked} times");
    })
    .await
}

#[tokio::test]
async fn a_failed_background_renewal_is_retried_while_the_old_token_serves() {
    bounded(async {
        let stub = Stub::start().await;
        Mock::given(method("POST"))
            .respond_with(token_reply("first"))
            .up_to_n_times(1)
            .mount(&stub)
            .await;
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(500))
            .up_to_n_times(2)
            .mount(&stub)
            .await;
        Mock::given(method("POST"))
            .respond_with(token_reply("second"))
            .mount(&stub)
            .await;
        let (_fake, sender, clock) = fake_with_stub_tokens(&stub).await;
        let tokens = sender.token_source().unwrap().clone();
        assert!(sender.send(&message(&token(1))).await.is_delivered());
        clock.advance(Duration::from_secs(3599 - 60));
        // Each push in the window is delivered with the old token while renewal fails twice
        // (back-off 0.5 s, then 1 s) and then succeeds.
        for i in 0..3 {
            assert!(sender.send(&message(&token(i))).await.is_delivered());
        }
        wait_until("two renewals", || tokens.stats().renewals >= 2).await;
        let stats = tokens.stats();
        assert_eq!(stats.failures, 2);
        assert!(stats.last_error.unwrap().contains("HTTP 500"));
        assert_eq!(stub.received_requests().await.unwrap().len(), 4);
    })
    .await
}

#[tokio::test]
async fn unknown_access_token_is_renewed_once_then_rejected() {
    bounded(async {
        // Tokens from the stub are unknown to a fake that checks its own.
        let stub = Stub::start().await;
        Mock::given(method("POST"))
            .respond_with(token_reply("not-from-the-fake"))
            .mount(&stub)
            .await;
        let fake = start_fake(FakeOptions::default()).await;
        let mut config = v1_config(&fake, &fake.h2c_url());
        config.auth = FcmAuth::ServiceAccount(account(format!("{}/token", stub.uri())));
        let sender = sender(config);
        let d = sender.send_with_details(&message(&token(1))).await;
        // Two requests, one attempt charged: the retry after renewing our own token is free.
        assert_eq!(
            (d.outcome.class(), d.outcome.reason(), d.attempts),
            ("rejected", Some("UNAUTHENTICATED"), 1)
        );
        assert_eq!(sender.token_source().unwrap().stats().renewals, 2);
        assert_eq!(status_count(&fake.stats(), 401), 2);
    })
    .await
}

#[tokio::test]
async fn legacy_token_rules_canonical_ids_and_auth() {
    bounded(async {
        let fake = start_fake(FakeOptions {
            api_keys: vec!["server-key".into()],
            ..FakeOptions::default()
        })
        .await;
        for http in [HttpVersion::Http2, HttpVersion::Http1] {
            let mut config = legacy_config(&fake, &fake.tls_url(), "server-key");
            config.http = http;
            let sender = sender(config);
            let cases = [
                (
                    TokenRule::Unregistered.apply(&token(1)),
                    token_invalid("NotRegistered"),
                    1,
                ),
                (
                    TokenRule::BadToken.apply(&token(1)),
                    token_invalid("InvalidRegistration"),
                    1,
                ),
                (
                    TokenRule::WrongTopic.apply(&token(1)),
                    token_invalid("MismatchSenderId"),
                    1,
                ),
                (
                    TokenRule::UnavailableOnce.apply(&token(9 + http as u64)),
                    Outcome::Delivered,
                    2,
                ),
                (
                    "bad token!".to_string(),
                    token_invalid("InvalidRegistration"),
                    1,
                ),
            ];
            for (tok, outcome, attempts) in cases {
                let d = sender.send_with_details(&message(&tok)).await;
                assert_eq!(
                    (&d.outcome, d.attempts),
                    (&outcome, attempts),
                    "{tok} {http:?}"
                );
                assert_eq!(d.status, Some(200), "legacy errors come in a 200");
            }
            let d = sender.send_with_details(&message("ca11-old-token")).await;
            assert!(d.outcome.is_delivered());
            assert_eq!(
                d.canonical_registration_id.as_deref(),
                Some("c0de-old-token")
            );
            // A topic message's answer has no `results`: it was read as an endpoint that is
            // not FCM (a fault, which pauses the app).
            let d = sender.send_with_details(&message("/topics/news")).await;
            assert_eq!(
                (&d.outcome, d.attempts),
                (&Outcome::Delivered, 1),
                "{http:?}"
            );
        }
        let wrong = sender(legacy_config(&fake, &fake.h2c_url(), "wrong-key"));
        let d = wrong.send_with_details(&message(&token(1))).await;
        assert_eq!(
            (d.outcome.class(), d.outcome.reason(), d.status),
            ("rejected", Some("HTTP 401"), Some(401))
        );
    })
    .await
}

#[tokio::test]
async fn legacy_multicast_fans_out_and_retries_only_what_failed() {
    bounded(async {
        let fake = start_fake(FakeOptions {
            record_tokens: 5000,
            ..FakeOptions::default()
        })
        .await;
        let sender = sender(legacy_config(&fake, &fake.h2c_url(), "k"));
        // 1500 tokens: two requests of 1000 and 500; a few tokens fail once or for good.
        let mut tokens: Vec<String> = (0..1500).map(token).collect();
        tokens[3] = TokenRule::Unregistered.apply(&tokens[3]);
        tokens[1200] = TokenRule::UnavailableOnce.apply(&tokens[1200]);
        tokens[1300] = TokenRule::ThrottledOnce.apply(&tokens[1300]);
        tokens[7] = format!("{}{}", "ca11", &tokens[7][4..]);
        let deliveries = sender.send_multicast(&message("ignored"), &tokens).await;
        assert_eq!(deliveries.len(), 1500);
        assert_eq!(count(&deliveries, "delivered"), 1499);
        assert_eq!(deliveries[3].outcome, token_invalid("NotRegistered"));
        assert_eq!(deliveries[1200].attempts, 2);
        assert_eq!(deliveries[1300].attempts, 2);
        assert_eq!(deliveries[0].attempts, 1);
        assert_eq!(
            deliveries[7].canonical_registration_id.as_deref(),
            Some(format!("c0de{}", &tokens[7][4..]).as_str())
        );
        let stats = fake.stats();
        // 1000 + 500 + a retry carrying only the two tokens that failed once.
        assert_eq!(stats.requests, 3);
        assert_eq!(fake.server.stats().delivered_tokens().len(), 1499);
    })
    .await
}

#[tokio::test]
async fn v1_multicast_sends_each_token() {
    bounded(async {
        let fake = start_fake(FakeOptions::default()).await;
        let sender = sender(v1_config(&fake, &fake.h2c_url()));
        let mut tokens: Vec<String> = (0..200).map(token).collect();
        tokens[5] = TokenRule::WrongTopic.apply(&tokens[5]);
        let envelope = parse_gcm(br#"{"message":{"token":"x","data":{"k":"v"}}}"#).unwrap();
        for msg in [message("ignored"), envelope] {
            let deliveries = sender.send_multicast(&msg, &tokens).await;
            assert_eq!(count(&deliveries, "delivered"), 199);
            assert_eq!(deliveries[5].outcome, token_invalid("SENDER_ID_MISMATCH"));
        }
        assert_eq!(reason_count(&fake.stats(), "SENDER_ID_MISMATCH"), 2);
    })
    .await
}

#[tokio::test]
async fn transport_faults_are_retried() {
    bounded(async {
        let fake = start_fake(FakeOptions {
            profile: profile("seed: 7\nresets: {stream_rate: 0.2}"),
            ..FakeOptions::default()
        })
        .await;
        let mut config = v1_config(&fake, &fake.h2c_url());
        config.retry.max_attempts = 6;
        let sender = sender(config);
        let deliveries = send_all(&sender, (0..200).map(|i| message(&token(i))).collect()).await;
        let stats = fake.stats();
        assert!(stats.streams_reset > 0);
        // Every reset stream was tried again; nothing was lost.
        let attempts: u64 = deliveries.iter().map(|d| d.attempts as u64).sum();
        assert_eq!(
            count(&deliveries, "delivered") + count(&deliveries, "gave_up"),
            200
        );
        assert_eq!(
            count(&deliveries, "delivered") as u64,
            status_count(&stats, 200) - sender.token_source().unwrap().stats().renewals
        );
        assert!(attempts > 200);
    })
    .await
}

#[test]
fn configuration_errors_are_clear() {
    let with_project = |project: Option<&str>| {
        let mut account = account("http://127.0.0.1:9/token".into());
        account.project_id = None;
        let mut config = FcmConfig::new(FcmAuth::ServiceAccount(account));
        config.project_id = project.map(str::to_owned);
        FcmSender::new(config).map(|_| ()).unwrap_err().to_string()
    };
    assert!(with_project(None).contains("no FCM project id"));
    assert!(with_project(Some("a/b")).contains("may hold only"));
    let err = FcmSender::new(FcmConfig::new(FcmAuth::ApiKey(" ".into())))
        .unwrap_err()
        .to_string();
    assert!(err.contains("API key"), "{err}");
    let mut config = FcmConfig::new(FcmAuth::ApiKey("secret-server-key".into()));
    assert!(!format!("{config:?}").contains("secret-server-key"));
    let sa = FcmConfig::new(FcmAuth::ServiceAccount(account("http://x/token".into())));
    assert!(!format!("{sa:?}").contains("PRIVATE KEY"));
    config.base_url = "ftp://x".into();
    assert!(FcmSender::new(config)
        .unwrap_err()
        .to_string()
        .contains("endpoint"));
}

// ---------------------------------------------------------------------------------------
// `pusher send gcm`

async fn pusher_send(args: &[&str]) -> (i32, String, String) {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_pusher"))
        .args(["send", "gcm"])
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
async fn pusher_send_gcm_prints_one_json_line_and_exits_by_outcome() {
    bounded(async {
        let fake = start_fake(FakeOptions::default()).await;
        let sa = fixture("service-account.json").display().to_string();
        let ca = fake.ca_file.display().to_string();
        let url = fake.tls_url();
        let token_uri = format!("{url}/token");
        let v1 = |tok: String, extra: &[&str]| -> Vec<String> {
            let mut v: Vec<String> = [
                "--service-account",
                &sa,
                "--token-uri",
                &token_uri,
                "--endpoint",
                &url,
                "--ca",
                &ca,
                "--token",
                &tok,
                "--title",
                "hi",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            v.extend(extra.iter().map(|s| s.to_string()));
            v
        };
        let run = |args: Vec<String>| async move {
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            pusher_send(&refs).await
        };

        let (code, out, err) = run(v1(token(1), &["--data", r#"{"n":1}"#])).await;
        assert_eq!(code, 0, "{out}{err}");
        let line: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        assert_eq!(
            (line["outcome"].as_str(), line["status"].as_u64()),
            (Some("delivered"), Some(200))
        );
        assert!(line["message_id"]
            .as_str()
            .unwrap()
            .starts_with("projects/pusher-test/"));

        let (code, out, _) = run(v1(TokenRule::Unregistered.apply(&token(2)), &[])).await;
        assert_eq!(code, 1);
        let line: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        assert_eq!(line["outcome"], "token_invalid");
        assert_eq!(line["reason"], "UNREGISTERED");
        assert_eq!(line["status"], 404);

        let (code, out, _) = run(v1(token(3), &["--dry-run", "--http1"])).await;
        assert_eq!(code, 0, "{out}");
        assert!(out.contains("fake_message_id"));

        // Legacy, with a canonical id.
        let (code, out, _) = pusher_send(&[
            "--api-key",
            "k",
            "--endpoint",
            &fake.h2c_url(),
            "--token",
            "ca11abc",
            "--message",
            r#"{"to":"x","data":{"k":"v"}}"#,
        ])
        .await;
        assert_eq!(code, 0, "{out}");
        let line: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        assert_eq!(line["canonical_registration_id"], "c0deabc");
    })
    .await
}

#[tokio::test]
async fn pusher_send_gcm_bad_input_is_exit_2_with_a_clear_error() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            p.display().to_string()
        };
        let good: serde_json::Value =
            serde_json::from_slice(&std::fs::read(fixture("service-account.json")).unwrap())
                .unwrap();
        let mut no_project = good.clone();
        no_project.as_object_mut().unwrap().remove("project_id");
        let malformed = write("malformed.json", "{\"type\": \"service_account\", ");
        let no_project = write("no-project.json", &no_project.to_string());
        let sa = fixture("service-account.json").display().to_string();
        let big = format!(r#"{{"pad":"{}"}}"#, "x".repeat(5000));
        let cases: Vec<(Vec<&str>, &str)> = vec![
            (
                vec!["--service-account", &malformed, "--token", "t"],
                "not valid JSON",
            ),
            (
                vec!["--service-account", "/nonexistent.json", "--token", "t"],
                "cannot read service-account file",
            ),
            (
                vec!["--service-account", &no_project, "--token", "t"],
                "no FCM project id",
            ),
            (
                vec!["--service-account", &sa, "--token", "t", "--data", "[1,2]"],
                "--data must be a JSON object",
            ),
            (
                vec!["--service-account", &sa, "--token", "t", "--data", "{"],
                "--data is not valid JSON",
            ),
            (
                vec!["--service-account", &sa, "--token", "t", "--data", &big],
                "over the limit of 4096",
            ),
            (vec!["--service-account", &sa, "--title", "x"], "--token"),
            (vec!["--token", "t"], "--service-account FILE"),
            (
                vec![
                    "--service-account",
                    &sa,
                    "--token",
                    "t",
                    "--message",
                    r#"{"to":"t","data":"x"}"#,
                ],
                "\"data\"",
            ),
        ];
        for (args, want) in cases {
            let (code, out, err) = pusher_send(&args).await;
            assert_eq!(code, 2, "{args:?}: {out}{err}");
            assert!(err.contains(want), "{args:?}: {err}");
            assert!(!err.contains("panicked"), "{err}");
            assert!(!err.contains("BEGIN PRIVATE KEY"), "{err}");
        }
    })
    .await
}

/// A cleartext HTTP/1.1-only server (hyper's http1 builder): `/token` gives `t1`, any other
/// POST gets a v1 success. Stands in for an FCM behind an HTTP/1.1-only proxy. Returns its URL
/// and a count of the requests it served.
async fn http1_only_fcm() -> (String, Arc<std::sync::atomic::AtomicUsize>) {
    use http_body_util::Full;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let served = Arc::new(AtomicUsize::new(0));
    let counter = served.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        counter.fetch_add(1, Ordering::Relaxed);
                        let body = if req.uri().path() == "/token" {
                            r#"{"access_token":"t1","expires_in":3599,"token_type":"Bearer"}"#
                        } else {
                            r#"{"name":"projects/pusher-test/messages/1"}"#
                        };
                        async move {
                            Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                                bytes::Bytes::from_static(body.as_bytes()),
                            )))
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    (url, served)
}

#[tokio::test]
async fn falls_back_to_http1_when_the_endpoint_does_not_speak_http2() {
    bounded(async {
        let (url, served) = http1_only_fcm().await;
        let fake = start_fake(FakeOptions::default()).await;
        let build = |http: HttpVersion| {
            let mut config = v1_config(&fake, &url);
            config.http = http;
            sender(config)
        };
        let auto = build(HttpVersion::Auto);
        assert!(!auto.uses_http1());
        let deliveries = send_all(&auto, (0..20).map(|i| message(&token(i))).collect()).await;
        assert_eq!(count(&deliveries, "delivered"), 20);
        assert!(auto.uses_http1());
        assert_eq!(
            deliveries[0].message_id.as_deref(),
            Some("projects/pusher-test/messages/1")
        );
        // One token request and 20 sends reached it over HTTP/1.1.
        assert_eq!(served.load(std::sync::atomic::Ordering::Relaxed), 21);

        let h2_only = build(HttpVersion::Http2);
        let d = h2_only.send_with_details(&message(&token(1))).await;
        assert_eq!(d.outcome.class(), "gave_up");
        assert!(d.transport_error.is_some());
        assert!(!h2_only.uses_http1());

        // An HTTP/2 endpoint keeps HTTP/2 in auto mode.
        let sender = sender(v1_config(&fake, &fake.tls_url()));
        assert!(sender.send(&message(&token(1))).await.is_delivered());
        assert!(!sender.uses_http1());
        assert_eq!(sender.pool().unwrap().live_connections(), 1);
    })
    .await
}

/// Polls `done` every 5 ms; fails the test after 10 s.
async fn wait_until(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Unix milliseconds `ahead` from now, for a `push_expiry`.
fn expiry_in(ahead: Duration) -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    i64::try_from((now + ahead).as_millis()).unwrap()
}

/// Whole seconds of a v1 `android.ttl` (`"60s"`) or a legacy `time_to_live` (`60`).
fn ttl_seconds(ttl: &serde_json::Value) -> u64 {
    match ttl {
        serde_json::Value::String(s) => s.trim_end_matches('s').parse().unwrap(),
        other => other.as_u64().unwrap(),
    }
}

/// FCM keeps a message for its TTL (four weeks without one), but the pusher drops it at its
/// `push_expiry`: a message a minute from it was sent with `time_to_live` 3600, or none, and
/// FCM delivered it up to four weeks late. The TTL sent is now at most the seconds left, v1
/// (a translated message and an envelope) and legacy alike.
#[tokio::test]
async fn the_ttl_sent_never_outlives_the_push_expiry() {
    bounded(async {
        let stub = Stub::start().await;
        Mock::given(method("POST"))
            .and(path("/token"))
            .respond_with(token_reply("t1"))
            .mount(&stub)
            .await;
        Mock::given(method("POST"))
            .and(path("/v1/projects/pusher-test/messages:send"))
            .respond_with(ResponseTemplate::new(200).set_body_json(
                serde_json::json!({"name": "projects/pusher-test/messages/1"}),
            ))
            .mount(&stub)
            .await;
        Mock::given(method("POST"))
            .and(path("/fcm/send"))
            .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
                "multicast_id": 1, "success": 1, "failure": 0, "canonical_ids": 0,
                "results": [{"message_id": "0:1"}]})))
            .mount(&stub)
            .await;
        let fake = start_fake(FakeOptions::default()).await;
        let mut v1 = v1_config(&fake, &stub.uri());
        v1.http = HttpVersion::Http1;
        let mut legacy = legacy_config(&fake, &stub.uri(), "k");
        legacy.http = HttpVersion::Http1;
        let (v1, legacy) = (sender(v1), sender(legacy));
        let expiry = expiry_in(Duration::from_secs(60));
        let kafka = [
            format!(r#"{{"to":"tok","data":{{"k":"v"}},"time_to_live":3600,"push_expiry":{expiry}}}"#),
            format!(r#"{{"to":"tok","data":{{"k":"v"}},"push_expiry":{expiry}}}"#),
            format!(
                r#"{{"message":{{"token":"tok","android":{{"ttl":"3600s"}}}},"push_expiry":{expiry}}}"#
            ),
        ];
        for text in &kafka {
            let msg = parse_gcm(text.as_bytes()).unwrap();
            assert!(v1.send(&msg).await.is_delivered(), "{text}");
            assert!(legacy.send(&msg).await.is_delivered(), "{text}");
        }
        let mut seen = 0;
        for request in stub.received_requests().await.unwrap() {
            let body: serde_json::Value = match request.url.path() {
                "/token" => continue,
                _ => serde_json::from_slice(&request.body).unwrap(),
            };
            let ttl = if request.url.path() == "/fcm/send" {
                &body["time_to_live"]
            } else {
                &body["message"]["android"]["ttl"]
            };
            assert!(!ttl.is_null(), "no TTL: {body}");
            let seconds = ttl_seconds(ttl);
            assert!((55..=60).contains(&seconds), "{seconds} s: {body}");
            seen += 1;
        }
        assert_eq!(seen, 2 * kafka.len());
    })
    .await
}

/// Legacy multicast had no deadline: a message past its `push_expiry` was retried until its
/// budget ran out and ended `gave_up`. Now the retries stop at the deadline: `expired`.
#[tokio::test]
async fn legacy_multicast_past_its_push_expiry_ends_expired() {
    bounded(async {
        let fake = start_fake(FakeOptions::default()).await;
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let dead = format!("http://{}", closed.local_addr().unwrap());
        drop(closed);
        let mut config = legacy_config(&fake, &dead, "k");
        config.retry = pusher::sender::RetryPolicy {
            max_attempts: 50,
            base: Duration::from_millis(100),
            cap: Duration::from_millis(400),
            max_retry_after: Duration::from_millis(400),
        };
        let sender = sender(config);
        let mut msg = message("ignored");
        msg.push_expiry = expiry_in(Duration::from_millis(500));
        let started = Instant::now();
        let deliveries = sender.send_multicast(&msg, &[token(1), token(2)]).await;
        let outcomes: Vec<_> = deliveries.iter().map(|d| d.outcome.clone()).collect();
        assert_eq!(outcomes, vec![Outcome::Expired, Outcome::Expired]);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    })
    .await
}

/// A token endpoint answering `expires_in` 2^64-1: adding it to the clock overflowed, a panic
/// in the send. Now a token is believed for an hour at most, then renewed.
#[tokio::test]
async fn a_huge_expires_in_is_believed_for_an_hour_at_most() {
    bounded(async {
        let stub = Stub::start().await;
        Mock::given(method("POST"))
            .and(path("/token"))
            .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
                "access_token": "t1", "expires_in": u64::MAX, "token_type": "Bearer"})))
            .mount(&stub)
            .await;
        let (_fake, sender, clock) = fake_with_stub_tokens(&stub).await;
        assert!(sender.send(&message(&token(1))).await.is_delivered());
        clock.advance(Duration::from_secs(3601));
        assert!(sender.send(&message(&token(2))).await.is_delivered());
        assert_eq!(sender.token_source().unwrap().stats().renewals, 2);
    })
    .await
}
