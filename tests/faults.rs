//! Faults at the far end (issue 7 §2): each of the fake's fault profiles (mock-services/*.yaml)
//! end to end, Kafka -> `run` pipeline -> fake APNs over TLS, with messages offered at a fixed
//! rate while the fault plays out. For every profile:
//! - counts add up: produced = consumed = outcomes = committed, nothing abandoned;
//! - every message ends `delivered` (the fake saw its 200), or `gave_up` after the retry
//!   budget with exactly one feedback record;
//! - retries honour `Retry-After` (the fake logs when it answered each token) and back off
//!   with jitter (the retry delays spread out);
//! - throughput recovers after the fault: in the seconds after it ends, at least half the
//!   offered rate is delivered (a ratio to what we offer, not a speed figure).
//!
//! CI runs scaled-down timings (the outage lasts 3 s, not the issue's 30 s); the full-length
//! outage is `cargo test --test faults -- --ignored`.
//!
//! Also: the feedback topic's broker goes down (librdkafka's mock broker set down and up
//! again) while failures need feedback: no offset is committed past an unacknowledged
//! feedback record, and once the broker is back every record arrives and all is committed.

mod common;

use common::recording::{start_recording_fake, Answer};
use common::{config, token_auth, Fake};
use pusher::mock::kafka::KafkaMock;
use pusher::mock::Profile;
use pusher::pipeline::feedback::FeedbackProducer;
use pusher::pipeline::run::{run, AppSender, Observer, OutcomeEvent, Outputs, RunSpec, RunSummary};
use pusher::push::Platform;
use pusher::sender::gate::OnFault;
use pusher::sender::{ApnsSender, RetryPolicy};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::Message;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Final outcome class per token, as the pipeline reports it.
#[derive(Default)]
struct Outcomes {
    by_token: Mutex<HashMap<String, &'static str>>,
    count: AtomicU64,
}

impl Observer for Outcomes {
    fn on_outcome(&self, e: &OutcomeEvent<'_>) {
        self.by_token
            .lock()
            .unwrap()
            .insert(e.token.to_string(), e.outcome.class());
        self.count.fetch_add(1, Ordering::Relaxed);
    }
}

/// A 64-hex token under no token rule, distinct per `i`.
fn token(i: u64) -> String {
    format!("{:064x}", 0xf1a0_0000_0000_0000u64 + i)
}

/// An FCM token, not hex: an APNs sender refuses it before sending.
fn junk_token(i: u64) -> String {
    format!("dXk0:APA91b{i:08}")
}

fn is_junk(token: &str) -> bool {
    token.starts_with("dXk0:")
}

fn message(token: &str) -> Vec<u8> {
    format!(r#"{{"DeviceToken":"{token}","Payload":{{"aps":{{"alert":"fault test"}}}}}}"#)
        .into_bytes()
}

/// Produces `tokens` at `rate` per second (in 10 ms slices), waiting for every delivery.
async fn produce_paced(brokers: String, topic: String, tokens: Vec<String>, rate: u64) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("linger.ms", "2")
        .create()
        .unwrap();
    let started = tokio::time::Instant::now();
    let mut pending = Vec::with_capacity(tokens.len());
    for (i, t) in tokens.iter().enumerate() {
        let due = started + Duration::from_secs_f64(i as f64 / rate as f64);
        if due > tokio::time::Instant::now() + Duration::from_millis(10) {
            tokio::time::sleep_until(due).await;
        }
        let producer = producer.clone();
        let (topic, payload, key) = (topic.clone(), message(t), i.to_string());
        pending.push(tokio::spawn(async move {
            producer
                .send(
                    FutureRecord::to(&topic).key(&key).payload(&payload),
                    Duration::from_secs(30),
                )
                .await
                .map_err(|(e, _)| e)
                .unwrap();
        }));
    }
    for p in pending {
        p.await.unwrap();
    }
}

/// One fault run: what to offer and how the pusher is set up.
struct Scenario {
    profile: Profile,
    rate: u64,
    messages: u64,
    retry: RetryPolicy,
    request_timeout: Duration,
    /// What the sender does on an endpoint fault: `Fail` unless a test says (the scenarios
    /// below measure the retries themselves); `pusher run` waits.
    on_fault: OnFault,
    /// Every this many messages, a token that is not hex (another platform's), which the
    /// sender refuses before sending: `malformed`.
    junk_every: Option<u64>,
}

/// A fake's profile: down (503) from its start for `outage`.
fn down_from_the_start(outage: Duration) -> Profile {
    let yaml = format!(
        "outages: [{{start_ms: 0, duration_ms: {}}}]",
        outage.as_millis()
    );
    Profile::from_yaml(&format!("down{}ms", outage.as_millis()), &yaml).unwrap()
}

impl Scenario {
    /// A built-in profile at `rate` messages a second for `seconds`: four tries 50 ms to 2 s
    /// apart, a 5 s request timeout, failing on a fault, no junk.
    fn built_in(name: &str, rate: u64, seconds: u64) -> Scenario {
        Scenario {
            profile: built_in(name),
            rate,
            messages: seconds * rate,
            retry: retry(4, 50, 2000),
            request_timeout: Duration::from_secs(5),
            on_fault: OnFault::Fail,
            junk_every: None,
        }
    }
}

/// What came out of a run.
struct Run {
    summary: RunSummary,
    answers: Vec<Answer>,
    outcomes: HashMap<String, &'static str>,
    feedback: Vec<Value>,
    fake: Fake,
    tokens: Vec<String>,
}

async fn run_scenario(name: &str, s: Scenario) -> Run {
    let app = format!("flt{name}{}", std::process::id());
    let topic = format!("push-{app}_apns");
    let kafka = KafkaMock::start(1, std::slice::from_ref(&topic), 4).unwrap();
    let brokers = kafka.bootstrap().to_string();
    let (fake, log) = start_recording_fake(s.profile, 0).await;

    let mut apns = config(&fake, fake.tls_url(), token_auth());
    apns.retry = s.retry;
    apns.pool.request_timeout = s.request_timeout;
    apns.on_fault = s.on_fault;
    let apps = HashMap::from([(app.clone(), AppSender::apns(ApnsSender::new(apns).unwrap()))]);
    let feedback =
        Arc::new(FeedbackProducer::new(&brokers, "push-{app}-{platform}-feedbacks").unwrap());
    let seen = Arc::new(Outcomes::default());
    let outputs = Outputs {
        feedback: Some(feedback),
        tokens: None,
        observer: Some(seen.clone()),
    };
    let mut spec = RunSpec::new(
        Platform::Apns,
        brokers.clone(),
        format!("g-{app}"),
        vec![topic.clone()],
    );
    spec.offset_reset = "earliest".into();
    spec.max_in_flight = 2000;
    spec.commit_interval = Duration::from_millis(100);
    // The mock answers an empty fetch only after fetch.wait.max.ms: keep the pipe short.
    spec.consumer_extra = vec![("fetch.wait.max.ms".into(), "10".into())];
    let stop = CancellationToken::new();
    let pipeline = tokio::spawn(run(spec, apps, outputs, stop.clone()));

    let tokens: Vec<String> = (0..s.messages)
        .map(|i| match s.junk_every {
            Some(n) if i % n == n - 1 => junk_token(i),
            _ => token(i),
        })
        .collect();
    let producer = tokio::spawn(produce_paced(
        brokers.clone(),
        topic,
        tokens.clone(),
        s.rate,
    ));
    let offered_for = Duration::from_secs_f64(s.messages as f64 / s.rate as f64);
    let deadline = Instant::now() + offered_for + Duration::from_secs(60);
    while seen.count.load(Ordering::Relaxed) < s.messages && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    producer.await.unwrap();
    // A graceful stop finishes and commits what is in flight before it returns.
    stop.cancel();
    let summary = pipeline.await.unwrap().unwrap();
    let outcomes = seen.by_token.lock().unwrap().clone();
    let reported = outcomes
        .values()
        .filter(|c| matches!(**c, "gave_up" | "malformed"))
        .count() as u64;
    let feedback = common::feedback::read_feedback_json(
        &brokers,
        &format!("push-{app}-apns-feedbacks"),
        reported,
        Duration::from_secs(20),
    );
    Run {
        summary,
        answers: log.answers(),
        outcomes,
        feedback,
        fake,
        tokens,
    }
}

/// The answers to each token, in time order.
fn by_token(answers: &[Answer]) -> HashMap<&str, Vec<&Answer>> {
    let mut map: HashMap<&str, Vec<&Answer>> = HashMap::new();
    for a in answers {
        map.entry(a.token.as_str()).or_default().push(a);
    }
    for list in map.values_mut() {
        list.sort_by_key(|a| a.at);
    }
    map
}

/// The checks every profile must pass; returns the outcome counts.
fn check_common(name: &str, r: &Run, max_attempts: u32) -> BTreeMap<&'static str, u64> {
    let n = r.tokens.len() as u64;
    let s = &r.summary;
    assert_eq!(s.consumed, n, "{name}: {s:?}");
    assert_eq!(s.finished, n, "{name}: {s:?}");
    assert_eq!(s.outcomes.values().sum::<u64>(), n, "{name}: {s:?}");
    assert_eq!(s.committed_total(), n as i64, "{name}: {:?}", s.committed);
    assert_eq!(s.abandoned, 0, "{name}");

    let answers = by_token(&r.answers);
    let mut counts = BTreeMap::new();
    for t in &r.tokens {
        let class = r.outcomes.get(t).copied().unwrap_or("none");
        *counts.entry(class).or_insert(0) += 1;
        let tried = answers.get(t.as_str()).map(Vec::as_slice).unwrap_or(&[]);
        match class {
            // Delivered means the fake said 200 (twice only if the first 200 was lost on
            // the way back, e.g. its connection dropped: then it was retried).
            "delivered" => {
                let oks = tried.iter().filter(|a| a.status == 200).count() as u64;
                assert!(oks >= 1, "{name}: {t} delivered without a 200: {tried:?}");
                assert_eq!(tried.last().map(|a| a.status), Some(200), "{name}: {t}");
                *counts.entry("extra_200s").or_insert(0) += oks - 1;
            }
            // Given up only after the retry budget, never after a 200.
            "gave_up" => {
                assert!(
                    tried.iter().all(|a| a.status != 200),
                    "{name}: {t}: {tried:?}"
                );
                assert!(tried.len() as u32 <= max_attempts, "{name}: {t}: {tried:?}");
            }
            // Refused before sending: only a token that is not hex, never sent.
            "malformed" => {
                assert!(is_junk(t), "{name}: {t} malformed");
                assert!(tried.is_empty(), "{name}: {t} was sent: {tried:?}");
            }
            other => panic!("{name}: {t} ended {other}"),
        }
    }
    // One feedback record per message given up or malformed, naming its token.
    let gave_up: Vec<&String> = r
        .tokens
        .iter()
        .filter(|t| matches!(r.outcomes.get(*t), Some(&"gave_up" | &"malformed")))
        .collect();
    assert_eq!(r.feedback.len(), gave_up.len(), "{name}: feedback records");
    let reported: HashMap<&str, usize> = r
        .feedback
        .iter()
        .filter_map(|v| v["DeviceToken"].as_str())
        .fold(HashMap::new(), |mut m, t| {
            *m.entry(t).or_default() += 1;
            m
        });
    for t in gave_up {
        assert_eq!(
            reported.get(t.as_str()),
            Some(&1),
            "{name}: feedback for {t}"
        );
    }
    // The fake's own counters agree with its log (an answer whose stream the client reset
    // during the response latency is logged but not counted as a response).
    let stats = r.fake.stats();
    assert!(
        stats.responses <= r.answers.len() as u64,
        "{name}: {stats:?}"
    );
    println!(
        "{name}: {n} messages, outcomes {counts:?}; fake: {} requests, by status {:?}, resets {}, drops {}, goaways {}, stalls {}",
        stats.requests,
        stats.by_status,
        stats.streams_reset,
        stats.connections_dropped,
        stats.goaways_sent,
        stats.stalls
    );
    counts
}

/// Delays between an answer with `status` and the next request for the same token (the next
/// answer's time bounds it from above, so these are at least the real delays).
fn retry_gaps(answers: &[Answer], status: u16) -> Vec<Duration> {
    gaps(answers, status, usize::MAX)
}

/// The same, after each token's first attempt only: every such delay is drawn under the same
/// back-off ceiling (`base`), so without jitter they would all be equal.
fn first_retry_gaps(answers: &[Answer], status: u16) -> Vec<Duration> {
    gaps(answers, status, 1)
}

fn gaps(answers: &[Answer], status: u16, first_attempts: usize) -> Vec<Duration> {
    let mut gaps = Vec::new();
    for list in by_token(answers).values() {
        for pair in list.windows(2).take(first_attempts) {
            if pair[0].status == status {
                gaps.push(pair[1].at - pair[0].at);
            }
        }
    }
    gaps.sort();
    gaps
}

/// Full jitter: the delays after a failure are spread out, not all equal.
fn assert_jittered(name: &str, gaps: &[Duration], base: Duration) {
    assert!(gaps.len() >= 10, "{name}: only {} retries seen", gaps.len());
    let p10 = gaps[gaps.len() / 10];
    let p90 = gaps[gaps.len() * 9 / 10];
    println!(
        "{name}: {} retry delays, p10 {p10:?}, p50 {:?}, p90 {p90:?}",
        gaps.len(),
        gaps[gaps.len() / 2]
    );
    assert!(
        p90 - p10 >= base / 4,
        "{name}: retry delays not jittered: p10 {p10:?}, p90 {p90:?}"
    );
}

/// 200s answered in `[from, from + len)` since the fake started.
fn delivered_between(answers: &[Answer], from: Duration, len: Duration) -> u64 {
    answers
        .iter()
        .filter(|a| a.status == 200 && a.at >= from && a.at < from + len)
        .count() as u64
}

/// After the fault ends, at least half the offered rate gets through.
fn assert_recovers(name: &str, answers: &[Answer], rate: u64, fault_end: Duration, len: Duration) {
    let got = delivered_between(answers, fault_end, len);
    let offered = (rate as f64 * len.as_secs_f64()) as u64;
    println!("{name}: {got} delivered in the {len:?} after the fault ended at {fault_end:?} (offered {offered})");
    assert!(
        got * 2 >= offered,
        "{name}: throughput did not recover: {got} delivered in {len:?} after {fault_end:?}, {offered} offered"
    );
}

fn built_in(name: &str) -> Profile {
    let mut p = Profile::built_in(name).unwrap().unwrap();
    // Reproducible draws (resets, stalls, error mix).
    p.seed = Some(7);
    p
}

fn retry(max_attempts: u32, base_ms: u64, cap_ms: u64) -> RetryPolicy {
    RetryPolicy {
        max_attempts,
        base: Duration::from_millis(base_ms),
        cap: Duration::from_millis(cap_ms),
        max_retry_after: Duration::from_secs(5),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttled_retries_honour_retry_after_and_recover() {
    // 429 with Retry-After: 1 for the first 500 ms of every 2 s.
    let rate = 1000;
    let r = run_scenario("throttled", Scenario::built_in("throttled", rate, 5)).await;
    let counts = check_common("throttled", &r, 4);
    // A throttled message waits its second and then goes through: nothing is given up.
    assert_eq!(counts.get("gave_up"), None);
    let gaps = retry_gaps(&r.answers, 429);
    assert!(gaps.len() >= 100, "only {} throttled retries", gaps.len());
    // Retry-After: 1 is honoured by every retry, and not overshot by much (jitter ceiling).
    println!(
        "throttled: {} retries after a 429, {:?} .. {:?}",
        gaps.len(),
        gaps[0],
        gaps[gaps.len() - 1]
    );
    assert!(
        gaps[0] >= Duration::from_secs(1),
        "a retry came {:?} after a 429 with Retry-After: 1",
        gaps[0]
    );
    // The window [2.0 s, 2.5 s) closes: the next 1.5 s carry the offered load again.
    assert_recovers(
        "throttled",
        &r.answers,
        rate,
        Duration::from_millis(2500),
        Duration::from_millis(1500),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flaky_errors_are_retried_with_jittered_backoff() {
    // Log-normal latency, 1 % 500, 2 % 503, 1 % 429 (no Retry-After).
    let rate = 1500;
    let r = run_scenario("flaky", Scenario::built_in("flaky", rate, 3)).await;
    check_common("flaky", &r, 4);
    let mut gaps = first_retry_gaps(&r.answers, 503);
    gaps.extend(first_retry_gaps(&r.answers, 500));
    gaps.extend(first_retry_gaps(&r.answers, 429));
    gaps.sort();
    assert_jittered("flaky", &gaps, Duration::from_millis(50));
}

/// An outage of `outage` from 1.5 s: every request gets 503. Messages retry with back-off
/// and either get through after it or give up with feedback; delivery resumes after it.
async fn outage(name: &str, outage: Duration, messages_per_s: u64, run_for: Duration) {
    let start = Duration::from_millis(1500);
    let profile = Profile::from_yaml(
        name,
        &format!(
            "outages: [{{start_ms: {}, duration_ms: {}}}]",
            start.as_millis(),
            outage.as_millis()
        ),
    )
    .unwrap();
    let base = Duration::from_millis(250);
    let r = run_scenario(
        name,
        Scenario {
            profile,
            rate: messages_per_s,
            messages: (messages_per_s as f64 * run_for.as_secs_f64()) as u64,
            retry: retry(5, 250, 4000),
            request_timeout: Duration::from_secs(5),
            on_fault: OnFault::Fail,
            junk_every: None,
        },
    )
    .await;
    let counts = check_common(name, &r, 5);
    let end = start + outage;
    // The outage happened: 503s, and no 200 inside it.
    assert!(r.fake.stats().by_status.get(&503).copied().unwrap_or(0) > 0);
    let inside = delivered_between(
        &r.answers,
        start + Duration::from_millis(20),
        outage - Duration::from_millis(40),
    );
    assert_eq!(inside, 0, "{name}: 200s during the outage");
    // Given up only by messages whose every attempt met the outage.
    for t in r
        .tokens
        .iter()
        .filter(|t| r.outcomes.get(*t) == Some(&"gave_up"))
    {
        let tried: Vec<_> = r.answers.iter().filter(|a| &a.token == t).collect();
        assert_eq!(tried.len(), 5, "{name}: {t} gave up after {tried:?}");
        assert!(tried.iter().all(|a| a.status == 503));
    }
    println!("{name}: outcomes {counts:?}");
    assert_jittered(name, &first_retry_gaps(&r.answers, 503), base);
    assert_recovers(
        name,
        &r.answers,
        messages_per_s,
        end,
        Duration::from_secs(2),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_scaled_to_3s_recovers() {
    outage(
        "outage3s",
        Duration::from_secs(3),
        500,
        Duration::from_secs(7),
    )
    .await;
}

/// The same outage as `pusher run` meets it (the sender waits on endpoint faults): once a
/// message has spent its retries with no final answer from anyone, the endpoint is failing, the
/// gate closes, and every message waits for it: none gives up, all are delivered, and while
/// it waits the endpoint sees one probe at a time, not every message's retries.
async fn pause(name: &str, outage: Duration, rate: u64, run_for: Duration) {
    pause_with(name, outage, rate, run_for, None).await
}

async fn pause_with(
    name: &str,
    outage: Duration,
    rate: u64,
    run_for: Duration,
    junk_every: Option<u64>,
) {
    let start = Duration::from_millis(1500);
    let profile = Profile::from_yaml(
        name,
        &format!(
            "outages: [{{start_ms: {}, duration_ms: {}}}]",
            start.as_millis(),
            outage.as_millis()
        ),
    )
    .unwrap();
    let messages = (rate as f64 * run_for.as_secs_f64()) as u64;
    let r = run_scenario(
        name,
        Scenario {
            profile,
            rate,
            messages,
            retry: retry(5, 250, 4000),
            request_timeout: Duration::from_secs(5),
            on_fault: OnFault::Wait,
            junk_every,
        },
    )
    .await;
    let counts = check_common(name, &r, 5);
    let junk = junk_every.map_or(0, |n| messages / n);
    assert_eq!(counts.get("gave_up"), None, "{counts:?}");
    assert_eq!(
        counts.get("malformed").copied().unwrap_or(0),
        junk,
        "{counts:?}"
    );
    assert_eq!(
        counts.get("delivered"),
        Some(&(messages - junk)),
        "{counts:?}"
    );
    let refused = r.fake.stats().by_status.get(&503).copied().unwrap_or(0);
    assert!(refused > 0, "the outage happened");
    // Without the pause each message offered in the outage retried up to 5 times; with it,
    // the first few spend their retries and the rest wait.
    let offered_in_outage = rate * outage.as_secs();
    assert!(
        refused < offered_in_outage,
        "{name}: {refused} answers of 503 for {offered_in_outage} messages offered in the outage: the endpoint was not left alone"
    );
    let end = start + outage;
    let resumed = r
        .answers
        .iter()
        .filter(|a| a.status == 200 && a.at >= end)
        .map(|a| a.at - end)
        .min();
    println!("{name}: {refused} answers of 503; the first 200 {resumed:?} after the outage");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_pauses_the_production_pusher_and_ends_nothing() {
    pause(
        "pause3s",
        Duration::from_secs(3),
        500,
        Duration::from_secs(7),
    )
    .await;
}

/// The same outage with a token of another platform every 20 messages (an FCM token produced
/// to the APNs topic), which the sender refuses before sending (`malformed`). Seen: each such
/// refusal counted as the endpoint's answer, so a message that spent its retries always saw "a
/// final answer meanwhile", the gate never closed, and the outage drained as `gave_up` again;
/// a closed gate also reopened when a refused message had the turn to probe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_refused_before_sending_do_not_hide_an_outage() {
    pause_with(
        "pausejunk",
        Duration::from_secs(3),
        500,
        Duration::from_secs(7),
        Some(20),
    )
    .await;
}

/// The same with the issue's 30-second outage, by hand.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long: a 30 s outage (run by hand)"]
async fn an_outage_of_30s_pauses_the_production_pusher() {
    pause(
        "pause30s",
        Duration::from_secs(30),
        200,
        Duration::from_secs(40),
    )
    .await;
}

/// The issue's 30-second outage, by hand: `cargo test --test faults -- --ignored`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long: a 30 s outage (run by hand)"]
async fn outage_of_30s_recovers() {
    outage(
        "outage30s",
        Duration::from_secs(30),
        200,
        Duration::from_secs(40),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn goaway_every_1000_streams_loses_nothing() {
    let rate = 1500;
    let r = run_scenario("goaway", Scenario::built_in("goaway", rate, 3)).await;
    let counts = check_common("goaway", &r, 4);
    let stats = r.fake.stats();
    assert!(stats.goaways_sent >= 2, "{stats:?}");
    assert!(
        stats.connections_opened > 2,
        "reconnected after GOAWAY: {stats:?}"
    );
    assert_eq!(
        counts.get("gave_up"),
        None,
        "a GOAWAY is retried, never fatal"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_resets_are_retried() {
    let rate = 1500;
    let r = run_scenario("resets", Scenario::built_in("resets", rate, 3)).await;
    let counts = check_common("resets", &r, 4);
    let stats = r.fake.stats();
    assert!(stats.streams_reset > 0, "{stats:?}");
    // Each reset or dropped request was tried again: more requests than messages.
    assert!(
        stats.requests >= r.tokens.len() as u64 + stats.streams_reset,
        "{stats:?}"
    );
    assert_eq!(counts.get("gave_up"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalls_longer_than_the_timeout_are_retried() {
    // 0.1 % of requests hang 30 s; the pusher's request timeout is 1 s.
    let rate = 1500;
    let r = run_scenario(
        "stall",
        Scenario {
            request_timeout: Duration::from_secs(1),
            ..Scenario::built_in("stall", rate, 3)
        },
    )
    .await;
    let counts = check_common("stall", &r, 4);
    let stats = r.fake.stats();
    assert!(stats.stalls > 0, "{stats:?}");
    assert_eq!(counts.get("gave_up"), None);
}

// ---- The feedback topic unavailable ----

#[derive(Default)]
struct Count(AtomicU64);
impl Observer for Count {
    fn on_outcome(&self, _: &OutcomeEvent<'_>) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feedback_broker_down_holds_commits_and_loses_nothing() {
    const N: u64 = 400;
    let app = format!("fbdown{}", std::process::id());
    let topic = format!("push-{app}_apns");
    let kafka = KafkaMock::start(1, std::slice::from_ref(&topic), 4).unwrap();
    let brokers = kafka.bootstrap().to_string();
    // Feedback goes to its own broker, which is down from the start.
    let feedback_cluster = rdkafka::mocking::MockCluster::new(1).unwrap();
    let feedback_brokers = feedback_cluster.bootstrap_servers();
    feedback_cluster.broker_down(1).unwrap();

    let (fake, log) = start_recording_fake(Profile::default(), 0).await;
    let apps = HashMap::from([(
        app.clone(),
        AppSender::apns(ApnsSender::new(config(&fake, fake.tls_url(), token_auth())).unwrap()),
    )]);
    let feedback = Arc::new(
        FeedbackProducer::new(&feedback_brokers, "push-{app}-{platform}-feedbacks").unwrap(),
    );
    let seen = Arc::new(Count::default());
    let outputs = Outputs {
        feedback: Some(feedback),
        tokens: None,
        observer: Some(seen.clone()),
    };
    let group = format!("g-{app}");
    let mut spec = RunSpec::new(
        Platform::Apns,
        brokers.clone(),
        group.clone(),
        vec![topic.clone()],
    );
    spec.offset_reset = "earliest".into();
    spec.max_in_flight = 1000;
    spec.commit_interval = Duration::from_millis(100);
    let stop = CancellationToken::new();
    let pipeline = tokio::spawn(run(spec, apps, outputs, stop.clone()));

    // Unregistered tokens: each one's outcome needs a feedback record before its offset may go.
    let tokens: Vec<String> = (0..N).map(|i| format!("dead{:060x}", i)).collect();
    let messages: Vec<Vec<u8>> = tokens.iter().map(|t| message(t)).collect();
    common::process::produce_all(&brokers, &topic, &messages).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while (log.answers().len() as u64) < N && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        log.answers().len() as u64,
        N,
        "the fake answered every message"
    );
    // Ten commit intervals with the feedback broker down: nothing is final, nothing committed.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        seen.0.load(Ordering::Relaxed),
        0,
        "outcomes final without feedback"
    );
    let committed = common::process::committed_offsets(&brokers, &group, &topic, 4);
    assert_eq!(
        committed.iter().sum::<i64>(),
        0,
        "committed past unacknowledged feedback: {committed:?}"
    );

    // The broker comes back: every record is delivered, every offset committed.
    feedback_cluster.broker_up(1).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.0.load(Ordering::Relaxed) < N && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A graceful stop finishes and commits what is in flight before it returns.
    stop.cancel();
    let summary = pipeline.await.unwrap().unwrap();
    assert_eq!(
        summary.outcomes.get("token_invalid"),
        Some(&N),
        "{summary:?}"
    );
    assert_eq!(summary.committed_total(), N as i64, "{summary:?}");
    let committed = common::process::committed_offsets(&brokers, &group, &topic, 4);
    assert_eq!(committed.iter().sum::<i64>(), N as i64);

    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &feedback_brokers)
        .set("group.id", "fb-check")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer
        .subscribe(&[&format!("push-{app}-apns-feedbacks")])
        .unwrap();
    let mut reported = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while (reported.len() as u64) < N && Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            let v: Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
            let t = v["DeviceToken"].as_str().unwrap().to_string();
            *reported.entry(t).or_insert(0u64) += 1;
        }
    }
    assert!(
        tokens.iter().all(|t| reported.contains_key(t)),
        "feedback lost: {} of {N}",
        reported.len()
    );
    println!(
        "feedback broker down then up: {N} outcomes, {} feedback records ({} tokens), committed {}",
        reported.values().sum::<u64>(),
        reported.len(),
        summary.committed_total()
    );
    fake.server.shutdown().await;
}

// ---- One app's endpoint hangs ----

#[derive(Default)]
struct PerApp(Mutex<BTreeMap<String, u64>>);
impl Observer for PerApp {
    fn on_outcome(&self, e: &OutcomeEvent<'_>) {
        *self.0.lock().unwrap().entry(e.app.to_string()).or_default() += 1;
    }
}

/// An endpoint that accepts connections and never answers holds every slot of its app. Seen:
/// the loop then waited for one of them, and every other app of the process stopped with it
/// (no message started, no commit, and past `max.poll.interval.ms` the group dropped it). Now
/// the app is paused with what it had consumed set aside, and the others go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_app_whose_endpoint_hangs_does_not_stop_the_others() {
    const N: u64 = 50;
    let pid = std::process::id();
    let (hung, fine) = (format!("hung{pid}"), format!("fine{pid}"));
    let topics = [format!("push-{hung}_apns"), format!("push-{fine}_apns")];
    let kafka = KafkaMock::start(1, &topics, 1).unwrap();
    let brokers = kafka.bootstrap().to_string();
    let (fake, _log) = start_recording_fake(Profile::default(), 0).await;
    // Accepts, holds the connections, answers nothing (not even the TLS handshake); once
    // `open`, it closes them and relays new ones to the fake.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_url = format!("https://{}", silent.local_addr().unwrap());
    let connections = Arc::new(AtomicU64::new(0));
    let open = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let held: Arc<Mutex<Vec<tokio::net::TcpStream>>> = Arc::default();
    let fake_addr = fake.tls_url().trim_start_matches("https://").to_owned();
    tokio::spawn({
        let (accepted, open, held) = (connections.clone(), open.clone(), held.clone());
        async move {
            while let Ok((mut socket, _)) = silent.accept().await {
                accepted.fetch_add(1, Ordering::Relaxed);
                if !open.load(Ordering::Relaxed) {
                    held.lock().unwrap().push(socket);
                    continue;
                }
                let fake_addr = fake_addr.clone();
                tokio::spawn(async move {
                    if let Ok(mut up) = tokio::net::TcpStream::connect(fake_addr).await {
                        let _ = tokio::io::copy_bidirectional(&mut socket, &mut up).await;
                    }
                });
            }
        }
    });
    let mut hung_config = config(&fake, silent_url, token_auth());
    hung_config.pool.connect_timeout = Duration::from_secs(60);
    hung_config.pool.request_timeout = Duration::from_secs(60);
    hung_config.on_fault = OnFault::Wait;
    let mut fine_config = config(&fake, fake.tls_url(), token_auth());
    fine_config.on_fault = OnFault::Wait;
    let apps = HashMap::from([
        (
            hung.clone(),
            AppSender::apns(ApnsSender::new(hung_config).unwrap()),
        ),
        (
            fine.clone(),
            AppSender::apns(ApnsSender::new(fine_config).unwrap()),
        ),
    ]);
    let seen = Arc::new(PerApp::default());
    let outputs = Outputs {
        feedback: None,
        tokens: None,
        observer: Some(seen.clone()),
    };
    let group = format!("g-hung{pid}");
    let mut spec = RunSpec::new(
        Platform::Apns,
        brokers.clone(),
        group.clone(),
        topics.to_vec(),
    );
    spec.offset_reset = "earliest".into();
    spec.max_in_flight = 5;
    spec.commit_interval = Duration::from_millis(100);
    spec.shutdown_timeout = Duration::from_secs(1);
    spec.consumer_extra = vec![("fetch.wait.max.ms".into(), "10".into())];
    // The hung app's messages first: its slots are full, and the loop at its sixth message,
    // once its sender connects; only then the other app's.
    let tokens: Vec<Vec<u8>> = (0..N).map(|i| message(&token(i))).collect();
    common::process::produce_all(&brokers, &topics[0], &tokens).await;
    let stop = CancellationToken::new();
    let pipeline = tokio::spawn(run(spec, apps, outputs, stop.clone()));
    let deadline = Instant::now() + Duration::from_secs(30);
    while connections.load(Ordering::Relaxed) == 0 {
        assert!(
            Instant::now() < deadline,
            "the hung app's sender never connected"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    common::process::produce_all(&brokers, &topics[1], &tokens).await;

    let deadline = Instant::now() + Duration::from_secs(30);
    let delivered = || seen.0.lock().unwrap().get(&fine).copied().unwrap_or(0);
    while delivered() < N && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        delivered(),
        N,
        "the other app's messages while one app hangs"
    );
    // Its offsets are committed meanwhile; the hung app's are not.
    wait_committed(&brokers, &group, &topics[1], N, "the other app's offsets").await;
    assert_eq!(
        common::process::committed_offsets(&brokers, &group, &topics[0], 1),
        [0]
    );
    assert_eq!(seen.0.lock().unwrap().get(&hung), None);

    // The endpoint answers again: what was set aside starts, the app's partition resumes (most
    // of its messages were not fetched before the pause), each message is delivered once.
    open.store(true, Ordering::Relaxed);
    held.lock().unwrap().clear();
    let deadline = Instant::now() + Duration::from_secs(60);
    let recovered = || seen.0.lock().unwrap().get(&hung).copied().unwrap_or(0);
    while recovered() < N && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        recovered(),
        N,
        "the hung app's messages once its endpoint answers"
    );
    wait_committed(&brokers, &group, &topics[0], N, "the hung app's offsets").await;
    stop.cancel();
    let summary = pipeline.await.unwrap().unwrap();
    // Counts add up: consumed = delivered = committed = 2 x N, each push answered once.
    assert_eq!(summary.consumed, 2 * N, "{summary:?}");
    assert_eq!(
        summary.outcomes.get("delivered"),
        Some(&(2 * N)),
        "{summary:?}"
    );
    assert_eq!(summary.committed_total(), 2 * N as i64, "{summary:?}");
    let stats = fake.stats();
    assert_eq!(
        (stats.requests, common::status_count(&stats, 200)),
        (2 * N, 2 * N)
    );
    fake.server.shutdown().await;
}

/// Messages that expire while their endpoint is down leave nobody at its gate to probe it, and
/// a gate opens only on an answer to a send. Seen: the app stayed paused for good, and what was
/// produced after the outage was never read. Now the app resumes once nothing waits at the
/// gate, and the next message probes the endpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_that_outlives_every_waiting_message_still_ends() {
    const N: u64 = 10;
    let app = format!("expiring{}", std::process::id());
    let topic = format!("push-{app}_apns");
    let kafka = KafkaMock::start(1, std::slice::from_ref(&topic), 1).unwrap();
    let brokers = kafka.bootstrap().to_string();
    let outage = Duration::from_secs(4);
    let profile = down_from_the_start(outage);
    let fake_started = Instant::now();
    let (fake, _log) = start_recording_fake(profile, 0).await;
    let mut apns = config(&fake, fake.tls_url(), token_auth());
    apns.retry = retry(2, 50, 100);
    apns.on_fault = OnFault::Wait;
    let apps = HashMap::from([(app.clone(), AppSender::apns(ApnsSender::new(apns).unwrap()))]);
    let seen = Arc::new(Outcomes::default());
    let outputs = Outputs {
        feedback: None,
        tokens: None,
        observer: Some(seen.clone()),
    };
    let group = format!("g-{app}");
    let mut spec = RunSpec::new(
        Platform::Apns,
        brokers.clone(),
        group.clone(),
        vec![topic.clone()],
    );
    spec.offset_reset = "earliest".into();
    spec.commit_interval = Duration::from_millis(100);
    spec.consumer_extra = vec![("fetch.wait.max.ms".into(), "10".into())];
    // Expiring a second from now: they meet the outage, close the gate and expire there.
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    let expiring: Vec<Vec<u8>> = (0..N)
        .map(|i| {
            format!(
                r#"{{"DeviceToken":"{}","Payload":{{"aps":{{"alert":"x"}}}},"push_expiry":{}}}"#,
                token(i),
                now_ms + 1000
            )
            .into_bytes()
        })
        .collect();
    common::process::produce_all(&brokers, &topic, &expiring).await;
    let stop = CancellationToken::new();
    let pipeline = tokio::spawn(run(spec, apps, outputs, stop.clone()));
    let outcomes = |n: u64, within: Duration| {
        let deadline = Instant::now() + within;
        let seen = seen.clone();
        async move {
            while seen.count.load(Ordering::Relaxed) < n && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            seen.count.load(Ordering::Relaxed)
        }
    };
    assert_eq!(
        outcomes(N, Duration::from_secs(20)).await,
        N,
        "the first messages end"
    );
    // After the outage, more messages: read, and delivered once the endpoint is probed.
    tokio::time::sleep(
        (fake_started + outage + Duration::from_millis(500))
            .saturating_duration_since(Instant::now()),
    )
    .await;
    let later: Vec<Vec<u8>> = (N..2 * N).map(|i| message(&token(i))).collect();
    common::process::produce_all(&brokers, &topic, &later).await;
    assert_eq!(
        outcomes(2 * N, Duration::from_secs(30)).await,
        2 * N,
        "what came after the outage is read and sent"
    );
    wait_committed(&brokers, &group, &topic, 2 * N, "the offsets").await;
    stop.cancel();
    let summary = pipeline.await.unwrap().unwrap();
    // Counts add up: consumed = expired + delivered = committed.
    assert_eq!(summary.consumed, 2 * N, "{summary:?}");
    assert_eq!(summary.outcomes.get("expired"), Some(&N), "{summary:?}");
    assert_eq!(summary.outcomes.get("delivered"), Some(&N), "{summary:?}");
    assert_eq!(summary.committed_total(), 2 * N as i64, "{summary:?}");
    let by_token = seen.by_token.lock().unwrap().clone();
    assert!(
        (0..N).all(|i| by_token[&token(i)] == "expired"),
        "{by_token:?}"
    );
    assert!(
        (N..2 * N).all(|i| by_token[&token(i)] == "delivered"),
        "{by_token:?}"
    );
}

/// During an outage a second pusher joins the group and takes partitions from the first, whose
/// messages of them wait at the failing endpoint's gate. Seen: they kept waiting there, holding
/// their slots, and once APNs answered they were sent as well as the new owner's copies: every
/// message of a moved partition pushed twice. Now a message of a revoked partition stops where it
/// is, unfinished; the new owner's copy is the one sent. Counts add up: each message delivered
/// once, finished once, committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_of_a_revoked_partition_stop_waiting_at_a_failing_endpoint() {
    const N: u64 = 40;
    let app = format!("moved{}", std::process::id());
    let topic = format!("push-{app}_apns");
    let kafka = KafkaMock::start(1, std::slice::from_ref(&topic), 2).unwrap();
    let brokers = kafka.bootstrap().to_string();
    let outage = Duration::from_secs(12);
    let profile = down_from_the_start(outage);
    let fake_started = Instant::now();
    let (fake, log) = start_recording_fake(profile, 0).await;
    let sender = || {
        let mut apns = config(&fake, fake.tls_url(), token_auth());
        apns.retry = retry(2, 50, 100);
        apns.on_fault = OnFault::Wait;
        ApnsSender::new(apns).unwrap()
    };
    let tokens: Vec<String> = (0..N).map(token).collect();
    let messages: Vec<Vec<u8>> = tokens.iter().map(|t| message(t)).collect();
    common::process::produce_all(&brokers, &topic, &messages).await;
    let group = format!("g-{app}");
    let member = |sender: &ApnsSender, seen: &Arc<Outcomes>, stop: &CancellationToken| {
        let mut spec = RunSpec::new(
            Platform::Apns,
            brokers.clone(),
            group.clone(),
            vec![topic.clone()],
        );
        spec.offset_reset = "earliest".into();
        spec.commit_interval = Duration::from_millis(100);
        spec.session_timeout = Duration::from_secs(3);
        spec.consumer_extra = vec![("fetch.wait.max.ms".into(), "10".into())];
        let outputs = Outputs {
            feedback: None,
            tokens: None,
            observer: Some(seen.clone()),
        };
        let apps = HashMap::from([(app.clone(), AppSender::apns(sender.clone()))]);
        tokio::spawn(run(spec, apps, outputs, stop.clone()))
    };

    // The first member takes both partitions; what it reads meets the outage and waits (the
    // app pauses once the gate closes).
    let (first, first_seen, first_stop) = (
        sender(),
        Arc::new(Outcomes::default()),
        CancellationToken::new(),
    );
    let first_run = member(&first, &first_seen, &first_stop);
    until("messages wait at the gate", Duration::from_secs(20), || {
        first.gate().parked() >= 10
    })
    .await;
    // The second joins: the partitions are dealt again, and the second's messages meet the
    // outage too, while it lasts.
    let (second, second_seen, second_stop) = (
        sender(),
        Arc::new(Outcomes::default()),
        CancellationToken::new(),
    );
    let second_run = member(&second, &second_seen, &second_stop);
    until(
        "the second member's messages wait too",
        Duration::from_secs(30),
        || second.gate().parked() > 0,
    )
    .await;
    assert!(
        fake_started.elapsed() < outage,
        "the rebalance came after the outage: nothing tested"
    );
    // After the outage: everything delivered and committed.
    let seen =
        || first_seen.count.load(Ordering::Relaxed) + second_seen.count.load(Ordering::Relaxed);
    until(
        "every message ends",
        outage + Duration::from_secs(30),
        || seen() >= N,
    )
    .await;
    until("the offsets are committed", Duration::from_secs(10), || {
        common::process::committed_offsets(&brokers, &group, &topic, 2)
            .iter()
            .sum::<i64>()
            == N as i64
    })
    .await;
    // A stale copy would go with its gate's opening, as the first member's own did.
    tokio::time::sleep(Duration::from_millis(500)).await;
    first_stop.cancel();
    second_stop.cancel();
    let (a, b) = (
        first_run.await.unwrap().unwrap(),
        second_run.await.unwrap().unwrap(),
    );
    assert!(b.finished > 0, "the second member sent none: {b:?}");
    assert_eq!(a.finished + b.finished, N, "{a:?} {b:?}");
    assert_eq!(seen(), N, "an outcome per message, once");
    let oks = by_token(&log.answers())
        .into_iter()
        .map(|(t, tried)| {
            (
                t.to_string(),
                tried.iter().filter(|a| a.status == 200).count(),
            )
        })
        .collect::<BTreeMap<_, _>>();
    for t in &tokens {
        assert_eq!(oks.get(t), Some(&1), "{t} delivered {:?} times", oks.get(t));
    }
}

/// Waits up to `within` for `done`.
async fn until(what: &str, within: Duration, done: impl Fn() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits up to 10 s for `group`'s committed offset on `topic` (one partition) to reach `n`.
async fn wait_committed(brokers: &str, group: &str, topic: &str, n: u64, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while common::process::committed_offsets(brokers, group, topic, 1) != [n as i64] {
        assert!(Instant::now() < deadline, "{what} were not committed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
