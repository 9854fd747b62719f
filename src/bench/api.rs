//! `pusher bench --api`: HTTP clients post gorush batches to `pusher api` (in this process, on
//! its own runtime thread, as a second machine would have it), which records each
//! notification in PostgreSQL and answers only once Kafka acknowledged every record; the
//! `pusher run` pipeline consumes them into the embedded fake meanwhile. Measured: request
//! latency, notifications/s, and HTTP-to-delivery latency (request sent -> the pipeline's
//! verdict for each token); beside it, in the same run, the same HTTP stack (axum on hyper)
//! with a trivial handler, so the ratio says what the API's work costs on this machine.
//! Conservation: notifications accepted = records in the push topic = consumed = verdicts.

use super::driver::{drive_marked, Driven, Load, LoadPlan};
use super::interrupt::{Interrupt, DRAIN};
use super::sender_only::{target, SenderConfig};
use super::{base_report, write_hgrm, Settings};
use crate::config::PgConfig;
use crate::mock::kafka::KafkaMock;
use crate::pipeline::run::{
    run as pipeline, Observer, OutcomeEvent, Outputs, PipelineError, RunSpec, RunSummary,
};
use crate::platform::api::{serve, ApiKey, ApiSettings, ApiState, Queues};
use crate::platform::produce::Producer;
use crate::platform::store::Store;
use crate::progress::Progress;
use crate::push::{Outcome, Platform};
use crate::report::data::Percentiles;
use crate::report::data::{peak_rss_bytes, ApiFigures, Conservation, Report};
use anyhow::{bail, Context};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use parking_lot::Mutex;
use rdkafka::consumer::{BaseConsumer, Consumer};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;
use tokio_util::sync::CancellationToken;

const APP: &str = "bench";
pub(super) const KEY: &str = "bench-api-key-0123456789";

/// What `--api` adds to the bench settings.
#[derive(Debug, Clone)]
pub struct ApiBench {
    /// Notifications per request (one token each).
    pub batch: usize,
    /// Where the API keeps its claims.
    pub pg: PgConfig,
}

/// The two servers of the run, on their own thread.
pub(super) struct Servers {
    pub api: SocketAddr,
    pub trivial: SocketAddr,
    pub stop: CancellationToken,
    pub thread: std::thread::JoinHandle<anyhow::Result<()>>,
}

impl Servers {
    /// Stops both servers and waits for their thread.
    pub fn shut_down(self) -> anyhow::Result<()> {
        self.stop.cancel();
        self.thread
            .join()
            .map_err(|_| anyhow::anyhow!("the API thread panicked"))?
    }
}

/// `pusher api` for `app` (key [`KEY`]) and the trivial baseline, on their own runtime thread.
pub(super) fn start_servers(
    args: &Settings,
    api: &ApiBench,
    brokers: &str,
    app: &str,
) -> anyhow::Result<Servers> {
    let stop = CancellationToken::new();
    let (tx, rx) = std::sync::mpsc::channel();
    let (threads, pg, brokers, batch, app) = (
        args.threads,
        api.pg.clone(),
        brokers.to_owned(),
        api.batch,
        app.to_owned(),
    );
    let server_stop = stop.clone();
    let thread = std::thread::Builder::new().name("bench-api".into()).spawn(
        move || -> anyhow::Result<()> {
            let rt = crate::runtime::build(threads, "bench-api")?;
            rt.block_on(async move {
                let started = async {
                    let store = Store::new(&pg)?;
                    store.init().await.context(
                        "bench --api keeps its claims in PostgreSQL (--pg): cannot reach it",
                    )?;
                    let settings = ApiSettings {
                        keys: vec![ApiKey {
                            name: "bench".into(),
                            app,
                            key: crate::config::Secret::new(KEY),
                        }],
                        max_body_bytes: 64 << 20,
                        max_notifications: batch,
                        max_tokens: batch,
                        rate_per_second: u32::MAX,
                        burst: u32::MAX,
                        produce_timeout: Duration::from_secs(30),
                        sync_timeout: Duration::from_secs(10),
                        metrics_token: None,
                        queues: Queues::default(),
                        webpush_rules: crate::push::webpush::EndpointRules::LOCAL,
                        deeplink_base: String::new(),
                        max_connections: 10_000,
                        body_timeout: Duration::from_secs(30),
                        write_timeout: Duration::from_secs(30),
                        // The bench measures the API's throughput, not this bound.
                        max_in_flight_bytes: usize::MAX,
                    };
                    let producer = Producer::new(&brokers, settings.produce_timeout)?;
                    let api = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
                    let trivial = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
                    anyhow::Ok((ApiState::new(settings, producer, store), api, trivial))
                };
                let (state, api, trivial) = match started.await {
                    Ok(s) => s,
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return Ok(());
                    }
                };
                let _ = tx.send(Ok((api.local_addr()?, trivial.local_addr()?)));
                // The baseline: the same stack, a handler that reads the body and answers.
                let router = axum::Router::new().route(
                    "/api/push",
                    axum::routing::post(|body: Bytes| async move {
                        axum::Json(serde_json::json!({"success": "ok", "counts": body.len()}))
                    }),
                );
                let stop2 = server_stop.clone();
                let baseline = tokio::spawn(async move {
                    axum::serve(trivial, router)
                        .with_graceful_shutdown(stop2.cancelled_owned())
                        .await
                });
                serve(api, state.clone(), server_stop).await?;
                let _ = baseline.await;
                state.flush(Duration::from_secs(10));
                Ok(())
            })
        },
    )?;
    let (api, trivial) = rx
        .recv()
        .context("the API thread stopped before it listened")??;
    Ok(Servers {
        api,
        trivial,
        stop,
        thread,
    })
}

/// The body of request `i`: `batch` notifications, one fresh token each (for browsers, a
/// fresh subscription at the fake's `webpush_origin`, the token its id).
fn body(i: u64, batch: usize, platform: Platform, webpush_origin: &str) -> Bytes {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let notifications: Vec<serde_json::Value> = (0..batch as u64)
        .map(|j| {
            let token = format!("{:064x}", i * batch as u64 + j);
            let n = serde_json::json!({"message": "bench", "title": "pusher"});
            let (number, addressed) = match platform {
                Platform::Apns => (1, serde_json::json!({ "tokens": [token] })),
                Platform::Gcm => (2, serde_json::json!({ "tokens": [token] })),
                Platform::WebPush => {
                    // The slot's keys, computed once: a subscription per token would cost a
                    // scalar multiplication each in the load generator.
                    let keys = crate::push::webpush::generated_slot_keys(&token);
                    let endpoint =
                        format!("{webpush_origin}{}{token}", crate::push::webpush::FAKE_PATH);
                    let s = serde_json::json!({"endpoint": endpoint, "keys": {
                        "p256dh": b64.encode(keys.public), "auth": b64.encode(keys.auth)}});
                    (4, serde_json::json!({ "subscriptions": [s] }))
                }
            };
            let mut n = n;
            n["platform"] = serde_json::Value::from(number);
            if let (Some(n), Some(a)) = (n.as_object_mut(), addressed.as_object()) {
                n.extend(a.clone());
            }
            n
        })
        .collect();
    Bytes::from(
        serde_json::to_vec(&serde_json::json!({ "notifications": notifications }))
            .unwrap_or_default(),
    )
}

/// When each request was sent, for the HTTP-to-delivery latency of its tokens.
pub(super) struct Delivery {
    pub start: Instant,
    pub batch: u64,
    /// Each block of `batch` tokens is in this many requests in a row (`bench --events`
    /// sends every event twice); its latency counts from the first sent.
    pub repeats: u64,
    /// Request `i` (its tokens are `(i / repeats) * batch + j`) was sent at this many ns
    /// after `start`; 0 for a request not measured (the warm-up's), whose tokens are not
    /// in the latency.
    pub sent_ns: Vec<AtomicU64>,
    /// Requests the API accepted (2xx), warm-up included: only theirs are in Kafka.
    pub accepted: AtomicU64,
    /// Verdicts of the pipeline.
    pub answered: AtomicU64,
    pub delivered: AtomicU64,
    pub latency: Mutex<hdrhistogram::Histogram<u64>>,
    /// Verdicts per token, where counted (token n at index n).
    pub per_token: Vec<std::sync::atomic::AtomicU32>,
}

impl Delivery {
    /// Waits until `n` verdicts have come, for at most 60 s; once `stop` is set (the run was
    /// interrupted), for at most the drain time from then: what is left is reported in flight.
    pub async fn wait_for(&self, n: u64, stop: &CancellationToken) {
        let mut deadline = Instant::now() + Duration::from_secs(60);
        let mut draining = false;
        while self.answered.load(Ordering::Relaxed) < n && Instant::now() < deadline {
            if stop.is_cancelled() && !draining {
                draining = true;
                deadline = deadline.min(Instant::now() + DRAIN);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn new(batch: u64, repeats: u64, slots: usize, tokens: usize) -> anyhow::Result<Delivery> {
        Ok(Delivery {
            start: Instant::now(),
            batch,
            repeats,
            sent_ns: (0..slots).map(|_| AtomicU64::new(0)).collect(),
            accepted: AtomicU64::new(0),
            answered: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            latency: Mutex::new(super::recorder::histogram()),
            per_token: (0..tokens)
                .map(|_| std::sync::atomic::AtomicU32::new(0))
                .collect(),
        })
    }
}

impl Observer for Delivery {
    fn on_outcome(&self, e: &OutcomeEvent<'_>) {
        self.answered.fetch_add(1, Ordering::Relaxed);
        if e.outcome.is_delivered() {
            self.delivered.fetch_add(1, Ordering::Relaxed);
        }
        // A browser's token is its endpoint; the generated id is its last segment.
        let id = crate::push::webpush::subscription_id(e.token);
        let Ok(n) = u64::from_str_radix(id, 16) else {
            return;
        };
        if let Some(count) = self.per_token.get(n as usize) {
            count.fetch_add(1, Ordering::Relaxed);
        }
        let first = (n / self.batch) * self.repeats;
        let sent = (first..first + self.repeats)
            .filter_map(|i| self.sent_ns.get(i as usize))
            .map(|s| s.load(Ordering::Relaxed))
            .filter(|&s| s > 0)
            .min();
        let Some(sent) = sent else {
            return;
        };
        let now = self.start.elapsed().as_nanos() as u64;
        // The histogram grows to fit: a latency is never dropped (past 1 h it was, silently).
        let _ = self
            .latency
            .lock()
            .record((now.saturating_sub(sent) / 1000).max(1));
    }
}

/// The pipeline of an HTTP bench (`--api`, `--events`): its own group, from the start of its
/// own topic, and (on the mock cluster) a short fetch wait.
pub(super) fn pipeline_spec(
    platform: Platform,
    brokers: &str,
    mode: &str,
    topic: &str,
    mock: bool,
) -> RunSpec {
    let mut spec = RunSpec::new(
        platform,
        brokers.to_owned(),
        format!("pusher-bench-{mode}-{}", std::process::id()),
        vec![topic.to_owned()],
    );
    // A fresh topic from its start; on a topic used before, the caller commits where the
    // run's messages begin (`end_to_end::start_group_at`).
    spec.offset_reset = "earliest".into();
    spec.max_in_flight = 1000;
    spec.commit_interval = Duration::from_millis(200);
    spec.shutdown_timeout = Duration::from_secs(10);
    if mock {
        spec.consumer_extra = KafkaMock::consumer_tuning(5);
    }
    spec
}

/// Starts `pusher run`'s pipeline for `app` on the current runtime, each verdict reported to
/// `delivery`.
pub(super) fn spawn_pipeline(
    spec: RunSpec,
    app: &str,
    sender_config: SenderConfig,
    delivery: &Arc<Delivery>,
    stop: &CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<Result<RunSummary, PipelineError>>> {
    let sender = sender_config.build()?;
    let outputs = Outputs {
        observer: Some(delivery.clone() as Arc<dyn Observer>),
        ..Outputs::default()
    };
    Ok(tokio::spawn(pipeline(
        spec,
        HashMap::from([(app.to_owned(), sender)]),
        outputs,
        stop.clone(),
    )))
}

/// Runs the plan against `addr` with `concurrency` keep-alive connections: request `i` posts
/// `body(i)` to `path`.
pub(super) async fn load(
    addr: SocketAddr,
    path: &str,
    plan: &LoadPlan,
    body: &(dyn Fn(u64) -> Bytes + Sync),
    stop: &CancellationToken,
    progress: &Progress,
    delivery: Option<&Delivery>,
) -> Driven {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(usize::MAX)
        .build_http();
    let uri = format!("http://{addr}{path}");
    let send = |i: u64, measured: bool| {
        let client = client.clone();
        let uri = uri.clone();
        // Only measured requests are timed: a warm-up request's tokens (cold connections and
        // caches) were in the end-to-end latency, beyond the notifications measured.
        if let Some(d) = delivery.filter(|_| measured) {
            if let Some(slot) = d.sent_ns.get(i as usize) {
                slot.store(
                    d.start.elapsed().as_nanos().max(1) as u64,
                    Ordering::Relaxed,
                );
            }
        }
        async move {
            let request = hyper::Request::post(&uri)
                .header("authorization", format!("Bearer {KEY}"))
                .header("content-type", "application/json")
                .body(Full::new(body(i)));
            let request = match request {
                Ok(r) => r,
                Err(e) => {
                    return Outcome::Malformed {
                        reason: e.to_string(),
                    }
                }
            };
            match client.request(request).await {
                Ok(response) => {
                    let status = response.status();
                    // Read the whole answer: the request is done when the client has it.
                    let _ = response.into_body().collect().await;
                    if status.is_success() {
                        if let Some(d) = delivery {
                            d.accepted.fetch_add(1, Ordering::Relaxed);
                        }
                        Outcome::Delivered
                    } else {
                        Outcome::Rejected {
                            reason: format!("HTTP {}", status.as_u16()),
                        }
                    }
                }
                Err(e) => Outcome::GaveUp {
                    reason: e.to_string(),
                },
            }
        }
    };
    drive_marked(plan, Some, send, stop, progress).await
}

/// Records ever written to `topic`: the sum of its partitions' high watermarks (not minus the
/// low ones: the mock cluster drops old data past its retention, nobody consuming here).
pub(super) fn records_in(brokers: &str, topic: &str) -> anyhow::Result<u64> {
    let side: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()?;
    let metadata = side.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let mut total = 0;
    for t in metadata.topics() {
        for p in t.partitions() {
            let (_, high) = side.fetch_watermarks(topic, p.id(), Duration::from_secs(10))?;
            total += high.max(0) as u64;
        }
    }
    Ok(total)
}

/// Notifications that reach Kafka: those of the requests the API accepted, and (interrupted)
/// of those still unanswered, which it may have taken. A refused request (5xx, a connection
/// error) produced nothing and is not lost.
fn expected_notifications(delivery: &Delivery, driven: &Driven, batch: u64) -> u64 {
    (delivery.accepted.load(Ordering::Relaxed) + driven.in_flight) * batch
}

pub fn run(args: &Settings, api: &ApiBench, interrupt: &Interrupt) -> anyhow::Result<Report> {
    if api.batch == 0 {
        bail!("--batch must be >= 1");
    }
    let platform = args.target.platform;
    let topic = format!("push-{APP}_{platform}");
    // --count counts notifications; a request carries --batch of them.
    let notifications = args.count.or(if args.duration.is_some() {
        None
    } else {
        Some(100_000)
    });
    let requests = notifications.map(|n| n.div_ceil(api.batch as u64));
    let mock = match &args.brokers {
        Some(_) => None,
        None => Some(KafkaMock::start(
            1,
            std::slice::from_ref(&topic),
            args.partitions,
        )?),
    };
    let brokers = match (&args.brokers, &mock) {
        (Some(b), _) => b.clone(),
        (None, Some(m)) => m.bootstrap().to_owned(),
        (None, None) => bail!("no Kafka"),
    };
    let before = records_in(&brokers, &topic).unwrap_or(0);
    // `--brokers`: the topic may hold earlier runs' messages; the run's group starts after them.
    let start = match &mock {
        Some(_) => HashMap::new(),
        None => super::end_to_end::end_offsets(&brokers, &topic),
    };
    let servers = start_servers(args, api, &brokers, APP)?;
    let plan = LoadPlan {
        count: requests,
        duration: args.duration,
        warmup: args.warmup,
        load: match args.rate {
            Some(rate) => Load::Open {
                rate: rate / api.batch as f64,
            },
            None => Load::Closed {
                concurrency: args.concurrency,
            },
        },
    };
    // Requests the ring can time: a --count run's, or (a --duration run) up to 10M.
    let slots = requests.map_or(10_000_000, |r| r + r / 2 + 10_000) as usize;
    let delivery = Arc::new(Delivery::new(api.batch as u64, 1, slots, 0)?);
    let (fake, sender_config, profile_name) = target(&args.target)?;
    let origin = sender_config.webpush_origin().to_string();
    let spec = pipeline_spec(platform, &brokers, "api", &topic, mock.is_some());
    super::end_to_end::start_group_at(&brokers, &spec.group, &topic, &start)?;
    // The clients and the pipeline on the --threads runtime; the API on its own.
    let rt = crate::runtime::build(args.threads, "bench-clients")?;
    let stop = interrupt.token().clone();
    let pipeline_stop = CancellationToken::new();
    let (baseline, driven, summary) = rt.block_on(async {
        let run = spawn_pipeline(spec, APP, sender_config, &delivery, &pipeline_stop)?;
        let quiet = Progress::hidden();
        let batch = api.batch;
        let body_of = move |i: u64| body(i, batch, platform, &origin);
        let baseline = load(
            servers.trivial,
            "/api/push",
            &plan,
            &body_of,
            &stop,
            &quiet,
            None,
        )
        .await;
        let progress = Progress::for_run("api", requests, args.duration, args.warmup, args.quiet);
        let driven = load(
            servers.api,
            "/api/push",
            &plan,
            &body_of,
            &stop,
            &progress,
            Some(&delivery),
        )
        .await;
        progress.finish_and_clear();
        // Every accepted notification's verdict, for at most 60 s more.
        delivery
            .wait_for(
                expected_notifications(&delivery, &driven, api.batch as u64),
                &stop,
            )
            .await;
        pipeline_stop.cancel();
        let summary = run.await.context("the pipeline panicked")??;
        anyhow::Ok((baseline, driven, summary))
    })?;
    drop(rt);
    if let Some(fake) = fake {
        fake.stop();
    }
    servers.shut_down()?;
    let produced = records_in(&brokers, &topic)?.saturating_sub(before);
    drop(mock);

    write_hgrm(args, &driven.recorder.send, driven.interrupted)?;
    let secs = driven.elapsed.as_secs_f64().max(1e-9);
    let measured_requests = driven.recorder.outcomes.values().sum::<u64>();
    let rps = measured_requests as f64 / secs;
    let baseline_rps = baseline.recorder.outcomes.values().sum::<u64>() as f64
        / baseline.elapsed.as_secs_f64().max(1e-9);
    let accepted = driven
        .recorder
        .outcomes
        .get("delivered")
        .copied()
        .unwrap_or(0);
    let mut report = base_report(args, "api", &profile_name);
    report.params.transport = "http".into();
    report.duration_secs = secs;
    report.throughput = rps * api.batch as f64;
    report.runs = vec![report.throughput];
    report.interrupted = driven.interrupted;
    super::measurements(&mut report, &driven.recorder);
    report.latency.end_to_end = Percentiles::of(&delivery.latency.lock());
    super::count_items(&mut report, api.batch as u64);
    let baseline_p99 = baseline.recorder.latencies().send.map(|q| q.p99_us);
    report.api = Some(ApiFigures {
        batch: api.batch,
        requests_per_s: rps,
        baseline_requests_per_s: baseline_rps,
        baseline_p99_us: baseline_p99,
        ratio_to_baseline: rps / baseline_rps.max(1e-9),
        accepted_measured: accepted * api.batch as u64,
    });
    // Every accepted request, warm-up included: its notifications are in Kafka and got a
    // verdict from the pipeline.
    let batch = api.batch as u64;
    let (generated, answered) = (
        expected_notifications(&delivery, &driven, batch),
        delivery.answered.load(Ordering::Relaxed),
    );
    report.conservation = Conservation {
        generated,
        produced: Some(produced),
        consumed: Some(summary.consumed),
        answered,
        // Interrupted: requests unanswered, and accepted notifications without a verdict yet.
        in_flight: if driven.interrupted {
            generated.saturating_sub(answered)
        } else {
            0
        },
        ..Default::default()
    }
    .check();
    report.peak_rss_bytes = peak_rss_bytes();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A request the API refuses (here every second one, 503) put nothing into Kafka: the
    /// conservation expects the accepted ones' notifications only, warm-up included.
    #[tokio::test]
    async fn refused_requests_are_not_expected_in_kafka() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(AtomicU64::new(0));
        let router = axum::Router::new().route(
            "/api/push",
            axum::routing::post(move || {
                let n = seen.fetch_add(1, Ordering::Relaxed);
                async move {
                    if n % 2 == 0 {
                        http::StatusCode::OK
                    } else {
                        http::StatusCode::SERVICE_UNAVAILABLE
                    }
                }
            }),
        );
        tokio::spawn(async move { axum::serve(listener, router).await });
        let plan = LoadPlan {
            count: Some(10),
            duration: None,
            warmup: Duration::from_millis(50),
            load: Load::Closed { concurrency: 1 },
        };
        let delivery = Delivery::new(5, 1, 1 << 16, 0).unwrap();
        let body = |_: u64| Bytes::from_static(b"{}");
        let driven = load(
            addr,
            "/api/push",
            &plan,
            &body,
            &CancellationToken::new(),
            &Progress::hidden(),
            Some(&delivery),
        )
        .await;
        // One at a time: the 1st, 3rd, ... were accepted.
        assert!(driven.sent > 10, "the warm-up sent some: {}", driven.sent);
        assert_eq!(
            expected_notifications(&delivery, &driven, 5),
            driven.sent.div_ceil(2) * 5
        );
    }
}
