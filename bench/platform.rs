//! Routing throughput: user-addressed notifications through `pusher route` (registry lookup,
//! expansion to each user's devices, produce, commit) on librdkafka's mock cluster and the
//! machine's PostgreSQL. Prints users/s and pushes/s; run by hand:
//! `cargo bench --bench platform` (USERS=100000 DEVICES=2 by default). Needs PostgreSQL on
//! 127.0.0.1:5432 (user postgres, database test), as the tests.

use pusher::config::PgConfig;
use pusher::mock::kafka::KafkaMock;
use pusher::platform::produce::{Producer, Record};
use pusher::platform::registry::{Device, Registry};
use pusher::platform::requests::{topic, RequestRecord};
use pusher::platform::route::{run, RouteSettings};
use pusher::platform::store::Store;
use pusher::push::Platform;
use rdkafka::consumer::Consumer;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let users = env("USERS", 100_000) as i64;
    let per_user = env("DEVICES", 2) as i64;
    let app = format!("pb{}", std::process::id());
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let pg = PgConfig {
            user: "postgres".into(),
            host: "127.0.0.1".into(),
            database: "test".into(),
            pool_size: 8,
            connection_timeout: Duration::from_secs(5),
            ..Default::default()
        };
        let store = Store::new(&pg).expect("pool");
        store.init().await.expect("PostgreSQL on 127.0.0.1:5432");
        let registry = Registry::new(store.pool());
        let topics = vec![
            topic(&app),
            format!("push-{app}_apns"),
            format!("push-{app}_gcm"),
        ];
        let kafka = KafkaMock::start(1, &topics, 16).expect("mock cluster");
        let brokers = kafka.bootstrap().to_owned();

        let t = Instant::now();
        for chunk in (0..users).collect::<Vec<_>>().chunks(5000) {
            let devices: Vec<Device> = chunk
                .iter()
                .flat_map(|&u| {
                    (0..per_user).map(move |d| Device {
                        user_id: u + 1,
                        platform: if d % 2 == 0 {
                            Platform::Apns
                        } else {
                            Platform::Gcm
                        },
                        token: format!("{:060x}{d:04x}", u + 1),
                        device_id: format!("d{d}"),
                        platform_id: None,
                        app_version: "1.0".into(),
                        registered_ms: 1_700_000_000_000,
                        keys: None,
                    })
                })
                .collect();
            registry
                .register(&app, &devices, &[])
                .await
                .expect("register");
        }
        let registered = t.elapsed();

        let producer = Producer::new(&brokers, Duration::from_secs(30)).expect("producer");
        let records: Vec<Record> = (0..users)
            .map(|u| {
                let r = RequestRecord::Notification {
                    user_id: u + 1,
                    title: "Hi".into(),
                    content: "You have a gift".into(),
                    screen: "gift".into(),
                    notif_id: format!("n-{u}"),
                };
                Record {
                    topic: topic(&app),
                    key: r.key(),
                    payload: r.to_json(),
                }
            })
            .collect();
        for chunk in records.chunks(10_000) {
            producer.produce_all(chunk).await.expect("produce");
        }

        let stop = CancellationToken::new();
        let settings = RouteSettings {
            brokers: brokers.clone(),
            group: format!("route-{app}"),
            deeplink_base: "game".into(),
            batch_size: 500,
            offset_reset: "earliest".into(),
            events: Default::default(),
            membership: Default::default(),
            consumer_extra: KafkaMock::consumer_tuning(5),
        };
        let router = tokio::spawn(run(
            settings,
            registry.clone(),
            Producer::new(&brokers, Duration::from_secs(30)).expect("producer"),
            stop.clone(),
        ));
        // Time from the first push seen to the last: the router's rate, without its join.
        let expected = (users * per_user) as u64;
        let pushes_topics = [format!("push-{app}_apns"), format!("push-{app}_gcm")];
        let count = || {
            let consumer: rdkafka::consumer::BaseConsumer = rdkafka::ClientConfig::new()
                .set("bootstrap.servers", &brokers)
                .create()
                .expect("side client");
            pushes_topics
                .iter()
                .map(|t| {
                    (0..16)
                        .map(|p| {
                            consumer
                                .fetch_watermarks(t, p, Duration::from_secs(5))
                                .map(|(l, h)| (h - l) as u64)
                                .unwrap_or(0)
                        })
                        .sum::<u64>()
                })
                .sum::<u64>()
        };
        let mut first: Option<Instant> = None;
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            let n = count();
            if n > 0 && first.is_none() {
                first = Some(Instant::now());
            }
            if n >= expected || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let routed = first.map(|f| f.elapsed()).unwrap_or_default();
        stop.cancel();
        let counts = router.await.expect("join").expect("route");
        let secs = routed.as_secs_f64().max(1e-9);
        println!(
            "registry: {} devices registered in {:.2} s ({:.0} devices/s, batches of 5,000)",
            users * per_user,
            registered.as_secs_f64(),
            (users * per_user) as f64 / registered.as_secs_f64()
        );
        println!(
            "route: {} users -> {} pushes in {:.2} s: {:.0} users/s, {:.0} pushes/s ({:?})",
            users,
            counts.pushes,
            secs,
            users as f64 / secs,
            counts.pushes as f64 / secs,
            counts
        );
        assert_eq!(counts.pushes, expected, "every device reached once");
        // Leave the database as it was: the next run's figures must not pay for this one's rows.
        let client = store.pool().get().await.expect("connection");
        for table in ["pusher_devices", "pusher_logins"] {
            client
                .execute(&format!("DELETE FROM {table} WHERE app = $1"), &[&app])
                .await
                .expect("clean up");
        }
    });
}
