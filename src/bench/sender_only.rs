//! `pusher bench --sender-only`: the sender core straight into a fake (embedded) or an external
//! endpoint, no Kafka. The fake runs on its own thread and runtime so that sender and server
//! each get a core, as they would on two machines.

use super::calibrate::calibrate;
use super::cli::{base_report, write_hgrm, BenchArgs, Transport};
use super::driver::{drive, Driven, Load, LoadPlan};
use super::fake::FakeThread;
use super::gate::median;
use super::report::{peak_rss_bytes, Conservation, Latencies, Report};
use crate::gen::{GenConfig, Generator, Mix};
use crate::mock::{JwtKey, Profile};
use crate::push::apns::ApnsNotification;
use crate::push::message::parse_apns;
use crate::push::Platform;
use crate::sender::apns::{ApnsAuth, ApnsConfig, ApnsSender, TokenAuth};
use crate::sender::endpoint::Endpoint;
use crate::sender::pool::PoolConfig;
use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::sync::Arc;
use std::time::Duration;

/// Distinct notifications cycled through: enough variety for HPACK and the fake, without
/// holding a million payloads in memory.
const POOL: u64 = 20_000;
const BENCH_KEY_ID: &str = "BENCHKEY01";
const BENCH_TEAM_ID: &str = "BENCHTEAM1";

pub fn run(args: &BenchArgs) -> anyhow::Result<Report> {
    if args.platform != Platform::Apns {
        bail!("--sender-only supports --platform apns so far (FCM comes with issue 3)");
    }
    let count = args.count.or(if args.duration.is_some() {
        None
    } else {
        Some(100_000)
    });
    let items = notifications(args, count.unwrap_or(POOL).min(POOL))?;

    let (fake, config, profile_name) = target(args)?;

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

    // The sender side: one thread, a current_thread runtime (h2-ceiling.md: the multi-thread
    // scheduler costs 2x on 2 cores).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut runs = Vec::new();
    let mut runs_p99 = Vec::new();
    let mut best: Option<(Driven, f64)> = None;
    let mut generated = 0u64;
    let mut answered = 0u64;
    let server_before = fake.as_ref().map(|f| f.stats.snapshot().responses);
    let result: anyhow::Result<()> = rt.block_on(async {
        let sender = ApnsSender::new(config)?;
        for round in 0..args.repeat {
            let bar = progress(args, count, round);
            let items = &items;
            let driven = drive(
                &plan,
                |i| Some(Arc::clone(&items[(i % items.len() as u64) as usize])),
                |n: Arc<ApnsNotification>| {
                    let sender = sender.clone();
                    async move { sender.send(&n).await }
                },
                |done| {
                    if done % 1024 == 0 {
                        bar.set_position(done);
                    }
                },
            )
            .await;
            bar.finish_and_clear();
            generated += driven.sent;
            answered += driven.answered;
            let throughput =
                driven.recorder.completed() as f64 / driven.elapsed.as_secs_f64().max(1e-9);
            runs.push(throughput);
            runs_p99.push(driven.recorder.send.value_at_quantile(0.99));
            // Keep the run closest to the median for the latency figures.
            let keep = match &best {
                None => true,
                Some((_, t)) => (throughput - median(&runs)).abs() < (t - median(&runs)).abs(),
            };
            if keep {
                best = Some((driven, throughput));
            }
        }
        Ok(())
    });
    result?;
    let server_answered = fake
        .as_ref()
        .map(|f| f.stats.snapshot().responses - server_before.unwrap_or(0));
    drop(rt);
    if let Some(fake) = fake {
        fake.stop();
    }

    let (driven, _) = best.context("no run completed")?;
    write_hgrm(args, &driven.recorder.send)?;
    let mut report = base_report(args, "sender-only", &profile_name);
    report.duration_secs = driven.elapsed.as_secs_f64();
    report.throughput = median(&runs);
    report.runs = runs;
    report.runs_p99_us = runs_p99;
    report.calibration = calibrate(5, Duration::from_millis(40));
    report.latency = Latencies::from_recorder(&driven.recorder);
    report.outcomes = driven.recorder.outcomes.clone();
    report.reasons = driven.recorder.reasons.clone();
    report.timeline = driven.recorder.timeline.clone();
    report.series = Some(super::report::Series::of(&driven.recorder));
    report.conservation = Conservation {
        generated,
        answered,
        server_answered,
        ..Default::default()
    }
    .check();
    report.peak_rss_bytes = peak_rss_bytes();
    Ok(report)
}

/// The notifications the run cycles through, made by the generator and parsed back exactly
/// as the pipeline would.
fn notifications(args: &BenchArgs, n: u64) -> anyhow::Result<Vec<Arc<ApnsNotification>>> {
    let mut config = GenConfig::new(Platform::Apns);
    config.count = n.max(1);
    config.seed = args.seed;
    config.invalid_ratio = args.invalid_ratio;
    config.payload_size = Some(args.payload_size.parse::<Mix<usize>>()?);
    let mut generator = Generator::new(config)?;
    let mut out = Vec::with_capacity(n as usize);
    let mut buf = Vec::with_capacity(4096);
    while generator.write_next(&mut buf).is_some() {
        let message = parse_apns(&buf).context("generated message does not parse")?;
        out.push(Arc::new(message.notification));
        buf.clear();
    }
    Ok(out)
}

fn progress(args: &BenchArgs, count: Option<u64>, round: usize) -> ProgressBar {
    if args.quiet {
        return ProgressBar::hidden();
    }
    let bar = match count {
        Some(n) => ProgressBar::with_draw_target(Some(n), ProgressDrawTarget::stderr()),
        None => ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()),
    };
    let style = ProgressStyle::with_template(
        "{prefix} [{elapsed_precise}] {wide_bar} {pos}/{len} ({per_sec})",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar.set_prefix(format!("run {}/{}", round + 1, args.repeat));
    bar
}

/// Where the pushes go: the embedded fake (started here, with a fresh provider key it
/// verifies) or `--endpoint`; and the sender configuration for it.
pub(crate) fn target(args: &BenchArgs) -> anyhow::Result<(Option<FakeThread>, ApnsConfig, String)> {
    // A fresh provider key per run: the fake verifies every JWT, as APNs would.
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .context("generating the bench's provider key")?;
    let key_pem = key.serialize_pem();

    let profile_name = if args.endpoint.is_some() {
        "external".to_string()
    } else {
        args.profile.clone()
    };
    let fake = match &args.endpoint {
        Some(_) => None,
        None => {
            let profile = Profile::load(&args.profile)
                .with_context(|| format!("profile {:?}", args.profile))?;
            let jwt = JwtKey::from_pem(BENCH_KEY_ID, BENCH_TEAM_ID, &key_pem)?;
            Some(FakeThread::start(profile, jwt)?)
        }
    };

    let (endpoint, ca_file, auth) = match (&args.endpoint, &fake) {
        (Some(url), _) => {
            let auth = match (&args.key_file, &args.key_id, &args.team_id) {
                (Some(path), Some(kid), Some(team)) => {
                    TokenAuth::from_file(path, kid.clone(), team.clone())?
                }
                _ => TokenAuth::new(key_pem.clone().into_bytes(), BENCH_KEY_ID, BENCH_TEAM_ID),
            };
            reachable(url)?;
            (Endpoint::Custom(url.clone()), args.ca.clone(), auth)
        }
        (None, Some(fake)) => {
            let url = match args.transport {
                Transport::Tls => format!("https://{}", fake.tls),
                Transport::H2c => format!("http://{}", fake.h2c),
            };
            let auth = TokenAuth::new(key_pem.clone().into_bytes(), BENCH_KEY_ID, BENCH_TEAM_ID);
            (Endpoint::Custom(url), Some(fake.ca_file.clone()), auth)
        }
        (None, None) => bail!("no endpoint"),
    };
    let mut config = ApnsConfig::new(endpoint, ApnsAuth::Token(auth));
    config.default_topic = Some(args.topic.clone());
    config.ca_file = ca_file;
    config.insecure = args.insecure;
    config.pool = PoolConfig {
        connections: args.connections.max(1),
        ..PoolConfig::default()
    };

    Ok((fake, config, profile_name))
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
