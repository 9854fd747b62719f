//! `pusher route`: the consumer group on every app's requests topic (DESIGN.md §10). Login
//! events (Pushkin's 4001) register devices; user-addressed notifications expand to every
//! device of the user, into the push topics with `metadata.notif_id`; other events are counted
//! and committed (event mode is a later step), never dropped silently.
//!
//! Records are handled in batches (`consume::batches`): one registry statement set and one
//! device lookup per app and batch, every push record acknowledged by Kafka, then the batch's
//! offsets committed. A crash redoes the uncommitted batch: registrations are idempotent,
//! pushes may be sent twice (at least once).

use super::consume::{self, GroupSettings};
use super::produce::{ProduceError, Producer, Record};
use super::registry::{platform_of_pushkin_id, Device, Login, Registry};
use super::requests::{app_of, RequestRecord, TOPIC_PATTERN};
use super::store::StoreError;
use crate::push::Platform;
use rdkafka::message::BorrowedMessage;
use rdkafka::Message;
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use tokio_util::sync::CancellationToken;

/// Pushkin's login event.
pub const LOGIN_EVENT: i32 = 4001;

#[derive(Debug, Clone)]
pub struct RouteSettings {
    pub brokers: String,
    pub group: String,
    /// `base://screen` deep links in GCM data; empty: the screen as given.
    pub deeplink_base: String,
    /// Most records handled together.
    pub batch_size: usize,
    /// Where a group without committed offsets starts.
    pub offset_reset: String,
}

#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("cannot create the Kafka consumer: {0}")]
    Consumer(#[source] rdkafka::error::KafkaError),
}

/// What the router did, by kind.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct RouteCounts {
    pub consumed: u64,
    pub logins: u64,
    pub notifications: u64,
    /// Push messages written to the push topics.
    pub pushes: u64,
    /// Notifications for users without a device.
    pub no_devices: u64,
    /// Segment pushes started or resumed.
    pub segments: u64,
    /// Events this router does not act on yet (event mode).
    pub events_unhandled: u64,
    /// Records that could not be read, or logins without a token or a known platform.
    pub malformed: u64,
}

/// One batch's effect, computed before anything is written.
#[derive(Default)]
struct AppBatch {
    devices: Vec<Device>,
    logins: Vec<Login>,
    notifications: Vec<Notification>,
    segments: Vec<Segment>,
}

struct Notification {
    user_id: i64,
    title: String,
    content: String,
    screen: String,
    notif_id: String,
    /// Extra data (segments): top level in the APNs payload, in GCM `data`.
    data: serde_json::Map<String, Value>,
}

/// A segment push: its notification and which devices it reaches.
struct Segment {
    notification: Notification,
    condition: super::requests::Condition,
}

/// Devices read from the registry per page of a segment.
pub const SEGMENT_PAGE: i64 = 1000;

/// Runs until `stop`; returns what it did.
pub async fn run(
    settings: RouteSettings,
    registry: Registry,
    producer: Producer,
    stop: CancellationToken,
) -> Result<RouteCounts, RouteError> {
    let consumer = consume::consumer(&GroupSettings {
        brokers: settings.brokers.clone(),
        group: settings.group.clone(),
        topic: TOPIC_PATTERN.to_owned(),
        batch_size: settings.batch_size,
        offset_reset: settings.offset_reset.clone(),
    })
    .map_err(RouteError::Consumer)?;
    let mut router = Router {
        settings: &settings,
        registry: &registry,
        producer: &producer,
        counts: RouteCounts::default(),
    };
    consume::batches(&consumer, settings.batch_size, "route", &stop, &mut router).await;
    let counts = router.counts;
    tracing::info!(counts = %crate::telemetry::Json(&counts), "Router stopped.");
    Ok(counts)
}

struct Router<'a> {
    settings: &'a RouteSettings,
    registry: &'a Registry,
    producer: &'a Producer,
    counts: RouteCounts,
}

impl consume::Batches for Router<'_> {
    async fn handle(&mut self, batch: &[BorrowedMessage<'_>]) -> Result<(), String> {
        let done = handle(self.settings, self.registry, self.producer, batch).await?;
        add(&mut self.counts, &done);
        Ok(())
    }
}

fn add(total: &mut RouteCounts, batch: &RouteCounts) {
    total.consumed += batch.consumed;
    total.logins += batch.logins;
    total.notifications += batch.notifications;
    total.pushes += batch.pushes;
    total.no_devices += batch.no_devices;
    total.segments += batch.segments;
    total.events_unhandled += batch.events_unhandled;
    total.malformed += batch.malformed;
    for (what, n) in [
        ("login", batch.logins),
        ("notification", batch.notifications),
        ("push", batch.pushes),
        ("no_devices", batch.no_devices),
        ("event_unhandled", batch.events_unhandled),
        ("malformed", batch.malformed),
    ] {
        if n > 0 {
            metrics::counter!(crate::telemetry::names::ROUTED, "what" => what).increment(n);
        }
    }
}

/// Reads a batch, applies it to the registry, produces its pushes. Errors are PostgreSQL's or
/// Kafka's, as text (the batch is retried whole).
async fn handle(
    settings: &RouteSettings,
    registry: &Registry,
    producer: &Producer,
    batch: &[BorrowedMessage<'_>],
) -> Result<RouteCounts, String> {
    let mut counts = RouteCounts {
        consumed: batch.len() as u64,
        ..RouteCounts::default()
    };
    let mut apps: BTreeMap<String, AppBatch> = BTreeMap::new();
    for m in batch {
        let Some(app) = app_of(m.topic()) else {
            counts.malformed += 1;
            continue;
        };
        let record = m
            .payload()
            .and_then(|p| serde_json::from_slice::<RequestRecord>(p).ok());
        let Some(record) = record else {
            tracing::warn!(
                topic = m.topic(),
                offset = m.offset(),
                "Unreadable request record: skipped."
            );
            counts.malformed += 1;
            continue;
        };
        let entry = apps.entry(app.to_owned()).or_default();
        match record {
            RequestRecord::Notification {
                user_id,
                title,
                content,
                screen,
                notif_id,
            } => {
                counts.notifications += 1;
                entry.notifications.push(Notification {
                    user_id,
                    title,
                    content,
                    screen,
                    notif_id,
                    data: Default::default(),
                });
            }
            RequestRecord::Segment {
                notif_id,
                condition,
                title,
                content,
                screen,
                data,
            } => {
                counts.segments += 1;
                entry.segments.push(Segment {
                    notification: Notification {
                        user_id: 0,
                        title,
                        content,
                        screen,
                        notif_id,
                        data,
                    },
                    condition,
                });
            }
            RequestRecord::Event {
                user_id,
                event_id: LOGIN_EVENT,
                timestamp,
                pairs,
                ..
            } => match login(user_id, timestamp, &pairs) {
                Some((device, login)) => {
                    counts.logins += 1;
                    entry.devices.push(device);
                    entry.logins.push(login);
                }
                None => counts.malformed += 1,
            },
            RequestRecord::Event { .. } => counts.events_unhandled += 1,
        }
    }
    for (app, work) in &apps {
        registry
            .register(app, &work.devices, &work.logins)
            .await
            .map_err(|e: StoreError| e.to_string())?;
        for segment in &work.segments {
            counts.pushes += stream_segment(settings, registry, producer, app, segment).await?;
        }
        if work.notifications.is_empty() {
            continue;
        }
        let mut users: Vec<i64> = work.notifications.iter().map(|n| n.user_id).collect();
        users.sort_unstable();
        users.dedup();
        let devices = registry
            .devices_of(app, &users)
            .await
            .map_err(|e| e.to_string())?;
        let mut by_user: HashMap<i64, Vec<&Device>> = HashMap::new();
        for d in &devices {
            by_user.entry(d.user_id).or_default().push(d);
        }
        let mut records = Vec::new();
        for n in &work.notifications {
            let Some(devices) = by_user.get(&n.user_id) else {
                counts.no_devices += 1;
                continue;
            };
            for d in devices {
                records.push(Record {
                    topic: format!("push-{app}_{}", d.platform),
                    key: d.token.clone(),
                    payload: push_message(d, n, &settings.deeplink_base),
                });
            }
        }
        producer
            .produce_all(&records)
            .await
            .map_err(|e: ProduceError| e.to_string())?;
        counts.pushes += records.len() as u64;
    }
    Ok(counts)
}

/// Sends a segment page by page, resuming after the last page a previous router finished.
/// Returns the pushes this call produced.
async fn stream_segment(
    settings: &RouteSettings,
    registry: &Registry,
    producer: &Producer,
    app: &str,
    segment: &Segment,
) -> Result<u64, String> {
    let n = &segment.notification;
    let (mut after, mut produced, done) = registry
        .segment_progress(app, &n.notif_id)
        .await
        .map_err(|e| e.to_string())?
        .unwrap_or_default();
    if done {
        return Ok(0);
    }
    let mut pushed = 0;
    loop {
        let page = registry
            .segment_page(app, &segment.condition, &after, SEGMENT_PAGE)
            .await
            .map_err(|e| e.to_string())?;
        let records: Vec<Record> = page
            .iter()
            .map(|d| Record {
                topic: format!("push-{app}_{}", d.platform),
                key: d.token.clone(),
                payload: push_message(d, n, &settings.deeplink_base),
            })
            .collect();
        producer
            .produce_all(&records)
            .await
            .map_err(|e| e.to_string())?;
        produced += records.len() as i64;
        pushed += records.len() as u64;
        let last = (page.len() as i64) < SEGMENT_PAGE;
        if let Some(d) = page.last() {
            after = d.token.clone();
        }
        registry
            .save_segment_progress(app, &n.notif_id, &after, produced, last)
            .await
            .map_err(|e| e.to_string())?;
        if last {
            tracing::info!(app, notif_id = %n.notif_id, devices = produced, "Segment sent.");
            return Ok(pushed);
        }
    }
}

/// A login event's device and language (Pushkin's pairs), or None when it names no token or
/// no platform this pusher sends to.
fn login(
    user_id: i64,
    timestamp: i64,
    pairs: &BTreeMap<String, String>,
) -> Option<(Device, Login)> {
    let get = |k: &str| pairs.get(k).map(|v| v.trim()).filter(|v| !v.is_empty());
    let token = get("deviceToken")?.to_owned();
    let platform_id: i64 = get("platformId")?.parse().ok()?;
    let platform = platform_of_pushkin_id(platform_id)?;
    let language_id = get("languageId").and_then(|l| l.parse().ok()).unwrap_or(1);
    // Pushkin sends seconds; a value this large is already milliseconds.
    let at_ms = match timestamp {
        t if t <= 0 => {
            use crate::clock::Clock;
            i64::try_from(crate::clock::SystemClock.now().as_millis()).unwrap_or(i64::MAX)
        }
        t if t > 100_000_000_000 => t,
        t => t * 1000,
    };
    Some((
        Device {
            user_id,
            platform,
            token,
            device_id: get("deviceId").unwrap_or_default().to_owned(),
            platform_id: i32::try_from(platform_id).ok(),
            app_version: get("applicationVersion").unwrap_or_default().to_owned(),
            registered_ms: at_ms,
        },
        Login {
            user_id,
            language_id,
            at_ms,
        },
    ))
}

/// The push message for one device, in the Kafka format `pusher run` reads (DESIGN.md §4).
fn push_message(d: &Device, n: &Notification, deeplink_base: &str) -> Vec<u8> {
    let message = match d.platform {
        Platform::Apns => {
            let mut payload = Value::Object(n.data.clone());
            payload["aps"] = json!({"alert": {"title": n.title, "body": n.content}});
            if !n.screen.is_empty() {
                payload["screen"] = Value::String(n.screen.clone());
            }
            json!({"DeviceToken": d.token, "Payload": payload,
                   "metadata": {"notif_id": n.notif_id}})
        }
        Platform::Gcm => {
            let mut message = json!({"to": d.token,
                "notification": {"title": n.title, "body": n.content},
                "metadata": {"notif_id": n.notif_id}});
            let mut data = n.data.clone();
            if !n.screen.is_empty() {
                let link = if deeplink_base.is_empty() {
                    n.screen.clone()
                } else {
                    format!("{deeplink_base}://{}", n.screen)
                };
                data.insert("screen".into(), Value::String(link));
            }
            if !data.is_empty() {
                message["data"] = Value::Object(data);
            }
            message
        }
    };
    serde_json::to_vec(&message).unwrap_or_default()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn pushkin_login_pairs_make_a_device() {
        let pairs = BTreeMap::from([
            ("languageId".to_owned(), "3".to_owned()),
            ("platformId".to_owned(), "5".to_owned()),
            ("deviceId".to_owned(), "ipad-1".to_owned()),
            ("deviceToken".to_owned(), "abc".to_owned()),
            ("applicationVersion".to_owned(), "1.2".to_owned()),
        ]);
        let (device, login) = super::login(7, 1_458_866_235, &pairs).unwrap();
        assert_eq!(device.platform, Platform::Apns);
        assert_eq!(device.registered_ms, 1_458_866_235_000);
        assert_eq!((login.language_id, device.app_version.as_str()), (3, "1.2"));
        let mut no_token = pairs.clone();
        no_token.remove("deviceToken");
        assert!(super::login(7, 0, &no_token).is_none());
        let mut web = pairs;
        web.insert("platformId".into(), "9".into());
        assert!(super::login(7, 0, &web).is_none());
    }

    #[test]
    fn messages_parse_as_the_pusher_reads_them() {
        let n = Notification {
            user_id: 1,
            title: "T".into(),
            content: "C".into(),
            screen: "shop".into(),
            notif_id: "n1".into(),
            data: Default::default(),
        };
        let mut d = Device {
            user_id: 1,
            platform: Platform::Gcm,
            token: "t".into(),
            device_id: String::new(),
            platform_id: None,
            app_version: String::new(),
            registered_ms: 0,
        };
        let gcm = crate::push::message::parse_gcm(&push_message(&d, &n, "game")).unwrap();
        assert_eq!(gcm.data["screen"], "game://shop");
        d.platform = Platform::Apns;
        let apns = crate::push::message::parse_apns(&push_message(&d, &n, "game")).unwrap();
        let payload: Value = serde_json::from_slice(&apns.notification.payload).unwrap();
        assert_eq!(payload["screen"], "shop");
        assert_eq!(payload["M"]["notif_id"], "n1");
    }
}
