//! `pusher bench --sender-only`: the sender core straight into a fake (embedded) or an external
//! endpoint, no Kafka. The fake runs on its own thread and runtime so that sender and server
//! each get a core, as they would on two machines.

use super::calibrate::calibrate;
use super::driver::{drive, Driven, Load, LoadPlan};
use super::fake::{FakeKind, FakeThread};
use super::interrupt::Interrupt;
use super::{base_report, write_hgrm, Settings, Target, Transport};
use crate::gen::{GenConfig, Generator, Mix};
use crate::mock::{JwtKey, Profile};
use crate::progress::Progress;
use crate::push::apns::ApnsNotification;
use crate::push::gcm::GcmMessage;
use crate::push::message::{parse_apns, parse_gcm, parse_webpush};
use crate::push::webpush::{EndpointRules, WebPushMessage};
use crate::push::Platform;
use crate::report::data::{peak_rss_bytes, Conservation, Latencies, Report};
use crate::report::gate::median;
use crate::sender::apns::{ApnsAuth, ApnsConfig, ApnsSender, TokenAuth};
use crate::sender::endpoint::Endpoint;
use crate::sender::fcm::{FcmAuth, FcmConfig, FcmSender, ServiceAccount};
use crate::sender::pool::PoolConfig;
use crate::sender::webpush::{parse_private_key, WebPushConfig, WebPushSender};
use anyhow::{bail, Context};
use std::sync::Arc;
use std::time::Duration;

/// Distinct notifications cycled through: enough variety for HPACK and the fake, without
/// holding a million payloads in memory.
const POOL: u64 = 20_000;
const BENCH_KEY_ID: &str = "BENCHKEY01";
/// The embedded web push fake decrypts one body in this many (each an ECDH on its one core).
pub const WEBPUSH_DECRYPT_EVERY: u64 = 16;
const BENCH_TEAM_ID: &str = "BENCHTEAM1";
/// A test-only service account (its key belongs to no Google project) for the embedded fake FCM.
const BENCH_SERVICE_ACCOUNT: &[u8] = include_bytes!("../../fixtures/fcm/service-account.json");

pub fn run(args: &Settings, interrupt: &Interrupt) -> anyhow::Result<Report> {
    let count = args.count.or(if args.duration.is_some() {
        None
    } else {
        Some(100_000)
    });
    let pool = count.unwrap_or(POOL).min(POOL);
    // The generator's default app, as `generated` makes the messages.
    super::check_payload_size(args, &GenConfig::new(args.target.platform).app)?;
    let (fake, config, profile_name) = target(&args.target)?;

    let plan = LoadPlan {
        count,
        duration: args.duration,
        warmup: args.warmup,
        load: match args.rate {
            Some(rate) => Load::Open { rate },
            None => Load::Closed {
                concurrency: args.concurrency,
            },
        },
    };

    // The sender side on the runtime `pusher run` would use (`--threads`; 1 is tokio's
    // current-thread scheduler, which h2-ceiling.md found 2x cheaper on 2 cores).
    let rt = crate::runtime::build(args.threads, "pusher-bench")?;
    let server_before = fake.as_ref().map(|f| f.stats.snapshot().pushes_answered());
    let rounds = rt.block_on(async {
        match config {
            SenderConfig::Apns(config) => {
                let items = generated(args, Platform::Apns, pool, |m| {
                    parse_apns(m).map(|m| m.notification)
                })?;
                let sender = ApnsSender::new(*config)?;
                let (interrupt, fault) =
                    interrupt.or_endpoint_fault(std::slice::from_ref(sender.gate()));
                let send = |n: Arc<ApnsNotification>| {
                    let sender = sender.clone();
                    async move { sender.send(&n).await }
                };
                let rounds = rounds(args, &plan, count, &items, send, &interrupt).await;
                fault.check()?;
                Ok::<_, anyhow::Error>(rounds)
            }
            SenderConfig::Fcm(config) => {
                let items = generated(args, Platform::Gcm, pool, parse_gcm)?;
                let sender = FcmSender::new(*config)?;
                let (interrupt, fault) =
                    interrupt.or_endpoint_fault(std::slice::from_ref(sender.gate()));
                let send = |m: Arc<GcmMessage>| {
                    let sender = sender.clone();
                    async move { sender.send(&m).await }
                };
                let rounds = rounds(args, &plan, count, &items, send, &interrupt).await;
                fault.check()?;
                Ok(rounds)
            }
            SenderConfig::WebPush(config, origin) => {
                let items = generated_at(args, Platform::WebPush, pool, &origin, parse_webpush)?;
                let sender = WebPushSender::new(*config)?;
                let (interrupt, fault) = interrupt.or_endpoint_fault(sender.gates());
                let send = |m: Arc<WebPushMessage>| {
                    let sender = sender.clone();
                    async move { sender.send(&m).await.outcome }
                };
                let rounds = rounds(args, &plan, count, &items, send, &interrupt).await;
                fault.check()?;
                Ok(rounds)
            }
        }
    });
    let server_answered = fake
        .as_ref()
        .map(|f| f.stats.snapshot().pushes_answered() - server_before.unwrap_or(0));
    drop(rt);
    if let Some(fake) = fake {
        fake.stop();
    }
    let Rounds {
        runs,
        runs_p99,
        runs_latency,
        best,
        generated,
        answered,
        interrupted,
        in_flight,
        calibrations,
    } = rounds?;

    let driven = best.context("no run completed")?;
    write_hgrm(args, &driven.recorder.send, interrupted)?;
    let mut report = base_report(args, "sender-only", &profile_name);
    report.duration_secs = driven.elapsed.as_secs_f64();
    report.throughput = median(&runs);
    report.runs = runs;
    report.runs_p99_us = runs_p99;
    report.runs_latency = runs_latency;
    report.interrupted = interrupted;
    // None with one round: the caller's before and after are all there is.
    report.calibration = median(&calibrations);
    super::measurements(&mut report, &driven.recorder);
    report.conservation = Conservation {
        generated,
        answered,
        server_answered,
        in_flight,
        ..Default::default()
    }
    .check();
    report.peak_rss_bytes = peak_rss_bytes();
    Ok(report)
}

/// What the repetitions of one bench measured.
struct Rounds {
    runs: Vec<f64>,
    runs_p99: Vec<u64>,
    runs_latency: Vec<Latencies>,
    /// The run closest to the median throughput, kept for the latency figures.
    best: Option<Driven>,
    generated: u64,
    answered: u64,
    /// An interrupt ended the rounds early.
    interrupted: bool,
    /// Sends without an answer when the interrupted round stopped waiting.
    in_flight: u64,
    /// The calibration measured between rounds: within the run, so that load from elsewhere
    /// during a long run is sampled too.
    calibrations: Vec<f64>,
}

/// Drives `--repeat` rounds of the plan through `send`, cycling through `items`; an interrupt
/// ends the round under way (kept, as the report's run when it is the only one) and the rest.
async fn rounds<M, F, Fut>(
    args: &Settings,
    plan: &LoadPlan,
    count: Option<u64>,
    items: &[Arc<M>],
    send: F,
    interrupt: &Interrupt,
) -> Rounds
where
    F: Fn(Arc<M>) -> Fut,
    Fut: std::future::Future<Output = crate::push::Outcome>,
{
    let mut out = Rounds {
        runs: Vec::new(),
        runs_p99: Vec::new(),
        runs_latency: Vec::new(),
        best: None,
        generated: 0,
        answered: 0,
        interrupted: false,
        in_flight: 0,
        calibrations: Vec::new(),
    };
    let mut best_throughput = 0.0;
    for round in 0..args.repeat {
        if interrupt.is_set() && round > 0 {
            break;
        }
        if round > 0 {
            out.calibrations
                .push(calibrate(5, Duration::from_millis(40)));
        }
        let bar = Progress::for_run(
            &format!("run {}/{}", round + 1, args.repeat),
            count,
            args.duration,
            args.warmup,
            args.quiet,
        );
        let driven = drive(
            plan,
            |i| Some(Arc::clone(&items[(i % items.len() as u64) as usize])),
            &send,
            interrupt.token(),
            &bar,
        )
        .await;
        drop(bar);
        out.generated += driven.sent;
        out.answered += driven.answered;
        out.in_flight += driven.in_flight;
        if driven.interrupted {
            out.interrupted = true;
            // Part of a round after whole ones: its messages count, its figures do not.
            if out.best.is_some() {
                break;
            }
        }
        let throughput =
            driven.recorder.completed() as f64 / driven.elapsed.as_secs_f64().max(1e-9);
        out.runs.push(throughput);
        out.runs_p99
            .push(driven.recorder.send.value_at_quantile(0.99));
        out.runs_latency.push(driven.recorder.latencies());
        let m = median(&out.runs);
        if out.best.is_none() || (throughput - m).abs() < (best_throughput - m).abs() {
            out.best = Some(driven);
            best_throughput = throughput;
        }
    }
    out
}

/// The messages the run cycles through, made by the generator and parsed back exactly as the
/// pipeline would (`parse` turns one generated Kafka message into what the sender takes).
fn generated<M>(
    args: &Settings,
    platform: Platform,
    n: u64,
    parse: impl Fn(&[u8]) -> Result<M, crate::push::message::MessageError>,
) -> anyhow::Result<Vec<Arc<M>>> {
    generated_at(args, platform, n, crate::gen::DEFAULT_WEBPUSH_ORIGIN, parse)
}

/// `generated`, with web push subscriptions pointing at `origin`.
fn generated_at<M>(
    args: &Settings,
    platform: Platform,
    n: u64,
    origin: &str,
    parse: impl Fn(&[u8]) -> Result<M, crate::push::message::MessageError>,
) -> anyhow::Result<Vec<Arc<M>>> {
    let mut config = GenConfig::new(platform);
    config.webpush_origin = origin.to_string();
    config.count = n.max(1);
    config.seed = args.seed;
    config.invalid_ratio = args.invalid_ratio;
    config.payload_size = Some(args.payload_size.parse::<Mix<usize>>()?);
    let mut generator = Generator::new(config)?;
    let mut out = Vec::with_capacity(n as usize);
    let mut buf = Vec::with_capacity(4096);
    while generator.write_next(&mut buf).is_some() {
        out.push(Arc::new(parse(&buf).context(
            "a generated message does not parse (sender-only sends parsed messages only; \
                 end to end counts such messages as malformed)",
        )?));
        buf.clear();
    }
    Ok(out)
}

/// The sender configuration for the platform under test.
pub enum SenderConfig {
    Apns(Box<ApnsConfig>),
    Fcm(Box<FcmConfig>),
    /// With the origin the generated subscriptions point at.
    WebPush(Box<WebPushConfig>, String),
}

impl SenderConfig {
    /// The sender `pusher run` would hold for this configuration.
    pub fn build(self) -> anyhow::Result<crate::pipeline::run::AppSender> {
        use crate::pipeline::run::AppSender;
        Ok(match self {
            SenderConfig::Apns(config) => AppSender::apns(ApnsSender::new(*config)?),
            SenderConfig::Fcm(config) => AppSender::gcm(FcmSender::new(*config)?),
            SenderConfig::WebPush(config, _) => AppSender::webpush(WebPushSender::new(*config)?),
        })
    }

    /// Where generated messages must point: the web push fake's origin (the other platforms
    /// take the endpoint from the sender, not the message).
    pub fn webpush_origin(&self) -> &str {
        match self {
            SenderConfig::WebPush(_, origin) => origin,
            _ => crate::gen::DEFAULT_WEBPUSH_ORIGIN,
        }
    }
}

/// Where the pushes go: the embedded fake (started here) or the external endpoint; and the
/// sender configuration for it.
pub fn target(t: &Target) -> anyhow::Result<(Option<FakeThread>, SenderConfig, String)> {
    let profile_name = match &t.external {
        Some(_) => "external".to_string(),
        None => t.profile.clone(),
    };
    // Each of its errors names the profile already.
    let profile = || Profile::load(&t.profile);
    if let Some(external) = &t.external {
        reachable(&external.url)?;
    }
    let pool = PoolConfig {
        connections: t.connections.max(1),
        ..PoolConfig::default()
    };
    match t.platform {
        Platform::WebPush => {
            let fake = match &t.external {
                Some(_) => None,
                None => Some(FakeThread::start(
                    profile()?,
                    FakeKind::WebPush {
                        decrypt_every: WEBPUSH_DECRYPT_EVERY,
                    },
                )?),
            };
            let (endpoint, ca_file, insecure) = endpoint(t, fake.as_ref())?;
            // A fresh VAPID key per run: the fake checks every token's signature.
            let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
                .context("generating the bench's VAPID key")?;
            let key = parse_private_key(&key.serialize_pem())?;
            let mut config = WebPushConfig::new(key, "mailto:bench@pusher.invalid");
            config.rules = EndpointRules::LOCAL;
            // With its port: a push service's host on another port is not trusted.
            let target = Endpoint::Custom(endpoint.clone()).target()?;
            config.push_services = vec![if target.host.contains(':') {
                format!("[{}]:{}", target.host, target.port)
            } else {
                format!("{}:{}", target.host, target.port)
            }];
            config.ca_file = ca_file;
            config.insecure = insecure;
            config.pool = pool;
            Ok((
                fake,
                SenderConfig::WebPush(Box::new(config), endpoint),
                profile_name,
            ))
        }
        Platform::Apns => {
            // A fresh provider key per run: the fake verifies every JWT, as APNs would.
            let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
                .context("generating the bench's provider key")?;
            let key_pem = key.serialize_pem();
            let fake = match &t.external {
                Some(_) => None,
                None => {
                    let jwt = JwtKey::from_pem(BENCH_KEY_ID, BENCH_TEAM_ID, &key_pem)?;
                    Some(FakeThread::start(profile()?, FakeKind::Apns(jwt))?)
                }
            };
            let (endpoint, ca_file, insecure) = endpoint(t, fake.as_ref())?;
            // The run's own key is for the embedded fake alone: an endpoint elsewhere refused
            // every push signed with it.
            let auth = match (&t.external, &t.apns) {
                (Some(_), Some(auth)) => auth.clone(),
                (Some(_), None) => bail!(
                    "an external APNs endpoint needs credentials (token auth or a certificate)"
                ),
                (None, _) => ApnsAuth::Token(TokenAuth::new(
                    key_pem.into_bytes(),
                    BENCH_KEY_ID,
                    BENCH_TEAM_ID,
                )),
            };
            let mut config = ApnsConfig::new(Endpoint::Custom(endpoint), auth);
            config.default_topic = Some(t.topic.clone());
            config.ca_file = ca_file;
            config.insecure = insecure;
            config.pool = pool;
            Ok((fake, SenderConfig::Apns(Box::new(config)), profile_name))
        }
        Platform::Gcm => {
            let fake = match &t.external {
                Some(_) => None,
                None => Some(FakeThread::start(profile()?, FakeKind::Fcm)?),
            };
            let (endpoint, ca_file, insecure) = endpoint(t, fake.as_ref())?;
            let auth = match (&t.fcm, &t.external) {
                (Some(auth), _) => auth.clone(),
                (None, Some(_)) => {
                    bail!("an external FCM endpoint needs credentials (a service account or a server key)")
                }
                // The embedded fake issues OAuth tokens at its own /token and accepts
                // assertions signed by any key: a fixed test account is enough.
                (None, None) => FcmAuth::ServiceAccount(
                    ServiceAccount::from_json(BENCH_SERVICE_ACCOUNT)?
                        .with_token_uri(format!("{endpoint}/token")),
                ),
            };
            let mut config = FcmConfig::new(auth);
            config.base_url = endpoint;
            config.project_id = Some(t.project.clone().unwrap_or_else(|| "pusher-bench".into()));
            config.ca_file = ca_file;
            config.insecure = insecure;
            config.pool = pool;
            Ok((fake, SenderConfig::Fcm(Box::new(config)), profile_name))
        }
    }
}

/// The base URL to send to, the CA to trust and whether to verify: the external endpoint's,
/// or the embedded fake's over the chosen transport.
fn endpoint(
    t: &Target,
    fake: Option<&FakeThread>,
) -> anyhow::Result<(String, Option<std::path::PathBuf>, bool)> {
    match (&t.external, fake) {
        (Some(e), _) => Ok((
            e.url.trim_end_matches('/').to_string(),
            e.ca.clone(),
            e.insecure,
        )),
        (None, Some(fake)) => Ok(match t.transport {
            Transport::Tls => (
                format!("https://{}", fake.tls),
                Some(fake.ca_file.clone()),
                false,
            ),
            Transport::H2c => (format!("http://{}", fake.h2c), None, false),
        }),
        (None, None) => bail!("no endpoint"),
    }
}

/// Fails early, with the reason, when an external endpoint does not accept connections: a
/// bench of nothing but connection errors would otherwise report "all gave up" after retries.
fn reachable(url: &str) -> anyhow::Result<()> {
    use std::net::ToSocketAddrs;
    let target = Endpoint::Custom(url.to_string()).target()?;
    let addrs: Vec<_> = (target.host.as_str(), target.port)
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve endpoint {url}"))?
        .collect();
    let mut last = None;
    for addr in addrs {
        match std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(3)) {
            Ok(_) => return Ok(()),
            Err(e) => last = Some(e),
        }
    }
    match last {
        Some(e) => bail!("cannot reach endpoint {url}: {e}"),
        None => bail!("endpoint {url} resolves to no address"),
    }
}
