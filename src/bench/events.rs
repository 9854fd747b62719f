//! `pusher bench --events`: Pushkin's event mode end to end. HTTP clients post batches of
//! events to `pusher api` (in this process, on its own runtime thread); two `pusher route`s in
//! one group turn them into notifications (message lookup, language, parameters, the cooldown
//! claim in PostgreSQL, the user's devices); the `pusher run` pipeline delivers them to the
//! embedded fake. Every event is sent twice (two requests), so the cooldown is checked under
//! load: each user must get the message exactly once. Measured: events routed per second and
//! event-to-delivery latency (the first of the two requests sent -> the pipeline's verdict).
//! Conservation is over pushes: users reached = pushes produced = consumed = verdicts.

use super::api::{
    load, pipeline_spec, records_in, spawn_pipeline, start_servers, ApiBench, Delivery,
};
use super::driver::{Load, LoadPlan};
use super::interrupt::Interrupt;
use super::sender_only::target;
use super::{base_report, write_hgrm, Settings};
use crate::mock::kafka::KafkaMock;
use crate::platform::consume::Membership;
use crate::platform::events::EventSettings;
use crate::platform::messages::{Localization, Message, Messages, Priority};
use crate::platform::produce::Producer;
use crate::platform::registry::{Device, Login, Registry};
use crate::platform::route::{self, RouteCounts, RouteSettings};
use crate::platform::store::Store;
use crate::progress::Progress;
use crate::report::data::{peak_rss_bytes, Conservation, EventFigures, Percentiles, Report};
use anyhow::{bail, Context};
use hyper::body::Bytes;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// The event that triggers the bench's message.
const EVENT_ID: i32 = 17;
/// Routers in the group (the cooldown must hold across them).
const ROUTERS: usize = 2;
/// Every event is sent this many times.
const REPEATS: u64 = 2;

/// The body of request `i`: events for users `(i / 2) * batch + 1 ..` (user ids start at 1),
/// so consecutive requests carry the same events.
fn body(i: u64, batch: u64, users: u64) -> Bytes {
    let first = (i / REPEATS) * batch + 1;
    let events: Vec<serde_json::Value> = (first..=(first + batch - 1).min(users))
        .map(|u| {
            serde_json::json!({"user_id": u, "event_id": EVENT_ID,
                "pairs": {"name": "Helena", "coins": (u % 1000).to_string()}})
        })
        .collect();
    Bytes::from(serde_json::to_vec(&serde_json::json!({ "events": events })).unwrap_or_default())
}

/// Registers one device per user (token = the user id - 1 as 64 hex digits, which the fakes
/// accept and the delivery observer maps back) and the bench's message with a long cooldown.
async fn prepare(
    pool: deadpool_postgres::Pool,
    app: &str,
    users: u64,
    platform: crate::push::Platform,
    stop: &CancellationToken,
) -> anyhow::Result<()> {
    let registry = Registry::new(pool.clone());
    let now_ms = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis(),
    )?;
    let mut start = 0;
    while start < users {
        if stop.is_cancelled() {
            bail!("interrupted while registering the bench's users: nothing was measured");
        }
        let end = (start + 5000).min(users);
        let devices: Vec<Device> = (start..end)
            .map(|n| Device {
                user_id: n as i64 + 1,
                platform,
                token: format!("{n:064x}"),
                device_id: String::new(),
                platform_id: None,
                app_version: String::new(),
                registered_ms: now_ms,
                keys: None,
            })
            .collect();
        let logins: Vec<Login> = (start..end)
            .map(|n| Login {
                user_id: n as i64 + 1,
                language_id: Some(1 + (n % 2) as i32),
                at_ms: now_ms,
            })
            .collect();
        registry.register(app, &devices, &logins).await?;
        start = end;
    }
    let l = |language_id, title: &str, text: &str| Localization {
        language_id,
        title: title.into(),
        text: text.into(),
    };
    Messages::new(pool)
        .put(
            app,
            &Message {
                name: "bench-reward".into(),
                id: 0,
                event_id: EVENT_ID,
                cooldown_s: 3600,
                screen: "rewards".into(),
                expiry_s: 0,
                priority: Priority::Normal,
                localizations: vec![
                    l(1, "Reward", "{name}, {coins} coins are waiting"),
                    l(2, "Belohnung", "{name}, {coins} Münzen warten"),
                ],
            },
        )
        .await?;
    Ok(())
}

/// Removes the run's rows (its app is its own).
async fn clean_up(store: &Store, app: &str) -> anyhow::Result<()> {
    let client = store.pool().get().await?;
    for table in [
        "pusher_devices",
        "pusher_logins",
        "pusher_notifications",
        "pusher_localizations",
        "pusher_messages",
        "pusher_cooldowns",
        "pusher_dedup",
        "pusher_device_limits",
        "pusher_optouts",
    ] {
        client
            .execute(&format!("DELETE FROM {table} WHERE app = $1"), &[&app])
            .await?;
    }
    Ok(())
}

pub fn run(args: &Settings, api: &ApiBench, interrupt: &Interrupt) -> anyhow::Result<Report> {
    if api.batch == 0 {
        bail!("--batch must be >= 1");
    }
    if args.brokers.is_some() {
        bail!("bench --events runs on the embedded broker only: leave out --brokers");
    }
    let platform = args.target.platform;
    // --count counts events (each is sent twice); --duration is not a plan here: the users
    // must be registered before the run.
    if args.duration.is_some() {
        bail!("bench --events takes --count (events), not --duration");
    }
    let events = args.count.unwrap_or(100_000).max(REPEATS);
    let users = events / REPEATS;
    let batch = api.batch as u64;
    let requests = users.div_ceil(batch) * REPEATS;
    let app = format!("bev{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let requests_topic = crate::platform::requests::topic(&app);
    let push_topic = format!("push-{app}_{platform}");
    let mock = KafkaMock::start(
        1,
        &[requests_topic.clone(), push_topic.clone()],
        args.partitions,
    )?;
    let brokers = mock.bootstrap().to_owned();

    // One runtime for the setup, the run and the clean-up: the pool's connections are driven
    // by the runtime that opened them.
    let rt = crate::runtime::build(args.threads, "bench-clients")?;
    let store = Store::new(&api.pg)?;
    rt.block_on(async {
        store
            .init()
            .await
            .context("bench --events keeps its state in PostgreSQL (--pg): cannot reach it")
    })?;

    let servers = start_servers(args, api, &brokers, &app)?;
    let plan = LoadPlan {
        count: Some(requests),
        duration: None,
        warmup: Duration::ZERO,
        load: match args.rate {
            Some(rate) => Load::Open {
                rate: rate / batch as f64,
            },
            None => Load::Closed {
                concurrency: args.concurrency,
            },
        },
    };
    let delivery = Arc::new(Delivery::new(
        batch,
        REPEATS,
        requests as usize + 16,
        users as usize,
    )?);
    let (fake, sender_config, profile_name) = target(&args.target)?;
    let spec = pipeline_spec(platform, &brokers, "events", &push_topic, true);
    let route_settings = RouteSettings {
        brokers: brokers.clone(),
        group: format!("bench-route-{app}"),
        deeplink_base: "bench".into(),
        batch_size: 500,
        offset_reset: "earliest".into(),
        events: EventSettings::default(),
        membership: Default::default(),
        consumer_extra: KafkaMock::consumer_tuning(5),
    };

    let stop = interrupt.token().clone();
    let inner_stop = CancellationToken::new();
    let ran = rt.block_on(async {
        let run = spawn_pipeline(spec, &app, sender_config, &delivery, &inner_stop)?;
        let members: Vec<Membership> = (0..ROUTERS).map(|_| Membership::default()).collect();
        let routers: Vec<_> = members
            .iter()
            .map(|membership| {
                let producer = Producer::new(&brokers, Duration::from_secs(30))?;
                Ok(tokio::spawn(route::run(
                    RouteSettings {
                        membership: membership.clone(),
                        ..route_settings.clone()
                    },
                    Registry::new(store.pool()),
                    producer,
                    inner_stop.clone(),
                )))
            })
            .collect::<anyhow::Result<_>>()?;
        // The routers' group forms (a join, then a rebalance for the second member) while
        // the users are registered, and the load starts once every router holds partitions
        // and together they hold all: production routers run before the events arrive, and
        // the latency measured is not the group's start-up.
        prepare(store.pool(), &app, users, platform, &stop).await?;
        let deadline = Instant::now() + Duration::from_secs(60);
        let partitions = usize::try_from(args.partitions).unwrap_or(1);
        let formed = || {
            let holding = members.iter().filter(|m| m.partitions() > 0).count();
            let held: usize = members.iter().map(Membership::partitions).sum();
            holding >= ROUTERS.min(partitions) && held >= partitions
        };
        while !formed() {
            if stop.is_cancelled() {
                bail!("interrupted before the routers' group formed: nothing was measured");
            }
            if Instant::now() > deadline {
                bail!("the routers' group did not form within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let progress =
            Progress::for_run("events", Some(requests), None, Duration::ZERO, args.quiet);
        let body_of = move |i: u64| body(i, batch, users);
        // Routed events per second count from the first request, not from the set-up.
        let load_started = delivery.start.elapsed();
        let driven = load(
            servers.api,
            "/api/v1/events",
            &plan,
            &body_of,
            &stop,
            &progress,
            Some(&delivery),
        )
        .await;
        progress.finish_and_clear();
        // The routers are done when their group has committed every request record.
        let deadline = Instant::now() + Duration::from_secs(120);
        let group = route_settings.group.clone();
        let topics = vec![requests_topic.clone()];
        loop {
            let (b, g, t) = (brokers.clone(), group.clone(), topics.clone());
            let backlog = tokio::task::spawn_blocking(move || {
                crate::platform::lag::backlog(&b, &g, &t, Duration::from_secs(5))
            })
            .await
            .context("lag")?;
            if matches!(backlog, Ok(0)) || Instant::now() > deadline || stop.is_cancelled() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let routed_in = delivery.start.elapsed().saturating_sub(load_started);
        // Every push's verdict, for at most 60 s more.
        delivery.wait_for(users, &stop).await;
        inner_stop.cancel();
        let mut counts = RouteCounts::default();
        for r in routers {
            let c = r.await.context("a router panicked")??;
            counts.consumed += c.consumed;
            counts.events.add(&c.events);
        }
        let summary = run.await.context("the pipeline panicked")??;
        anyhow::Ok((driven, summary, counts, routed_in))
    });
    // The run's rows go whether it ran or not.
    inner_stop.cancel();
    rt.block_on(clean_up(&store, &app))?;
    let (driven, summary, counts, routed_in) = ran?;
    drop(rt);
    if let Some(fake) = fake {
        fake.stop();
    }
    servers.shut_down()?;
    let produced = records_in(&brokers, &push_topic)?;
    drop(mock);

    write_hgrm(args, &driven.recorder.send, driven.interrupted)?;
    let accepted_events = driven
        .recorder
        .outcomes
        .get("delivered")
        .copied()
        .unwrap_or(0)
        * batch;
    let sent_events = driven.sent * batch;
    let secs = routed_in.as_secs_f64().max(1e-9);
    let mut report = base_report(args, "events", &profile_name);
    report.params.transport = "http".into();
    report.params.count = Some(events);
    report.duration_secs = secs;
    report.throughput = counts.events.events as f64 / secs;
    report.runs = vec![report.throughput];
    report.interrupted = driven.interrupted;
    super::measurements(&mut report, &driven.recorder);
    report.latency.end_to_end = Percentiles::of(&delivery.latency.lock());
    super::count_items(&mut report, batch);
    let reached = delivery
        .per_token
        .iter()
        .filter(|n| n.load(Ordering::Relaxed) > 0)
        .count() as u64;
    let sent_twice = delivery
        .per_token
        .iter()
        .filter(|n| n.load(Ordering::Relaxed) > 1)
        .count() as u64;
    report.events = Some(EventFigures {
        batch: api.batch,
        routers: ROUTERS,
        users,
        events: accepted_events.min(sent_events),
        routed_per_s: report.throughput,
        pushes: counts.events.pushes,
        cooldown_skipped: counts.events.skipped.get("cooldown").copied().unwrap_or(0),
        sent_twice,
    });
    // Over pushes: every user reached once, each push in Kafka, consumed and answered.
    let answered = delivery.answered.load(Ordering::Relaxed);
    report.conservation = Conservation {
        generated: if driven.interrupted { reached } else { users },
        produced: Some(produced),
        consumed: Some(summary.consumed),
        answered,
        // Interrupted: pushes produced without a verdict yet.
        in_flight: if driven.interrupted {
            produced.saturating_sub(answered)
        } else {
            0
        },
        ..Default::default()
    }
    .check();
    report.peak_rss_bytes = peak_rss_bytes();
    Ok(report)
}
