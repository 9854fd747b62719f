//! `pusher route`: the consumer group on every app's requests topic (DESIGN.md §10). Login
//! events (Pushkin's 4001) register devices, opt-out events (4006) set what a user does not
//! want; other events become the notifications of the messages they trigger (`events`);
//! user-addressed notifications and segments expand to devices, into the push topics with
//! `metadata.notif_id`. What sends nothing is counted by reason, never dropped silently.
//!
//! Records are handled in batches (`consume::batches`): one registry statement set and one
//! device lookup per app and batch, every push record acknowledged by Kafka, then the batch's
//! offsets committed. A crash redoes the uncommitted batch: registrations are idempotent,
//! pushes may be sent twice (at least once).

use super::claims::Claims;
use super::consume::{self, GroupSettings};
use super::events::{self, Event, EventCounts, EventSettings, EventStores};
use super::messages::{Messages, OPT_OUT_EVENT};
use super::outbound::{self, push_message, Notification, Outgoing};
use super::produce::{ProduceError, Producer, Record};
use super::registry::{login_of, Device, Login, Registry, LOGIN_EVENT};
use super::requests::{app_of, is_valid_notif_id, RequestRecord, TOPIC_PATTERN};
use super::store::StoreError;
use crate::push::Platform;
use crate::sender::retry::RetryPolicy;
use rdkafka::message::BorrowedMessage;
use rdkafka::Message;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

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
    /// Event mode: languages, limits, where `rate_limited` verdicts go.
    pub events: EventSettings,
    /// This router's share of the group (each router its own).
    pub membership: consume::Membership,
    /// librdkafka properties for its consumer (`GroupSettings::consumer_extra`).
    pub consumer_extra: Vec<(String, String)>,
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
    /// Opt-out events (4006) applied.
    pub opt_outs: u64,
    /// Event mode: events routed to messages, and what they sent or why not.
    pub events: EventCounts,
    /// Records that could not be read, logins without a token or a known platform,
    /// notifications and segments no push could carry, and segments whose condition
    /// PostgreSQL refuses (all written past the API's checks).
    pub malformed: u64,
}

/// One batch's effect, computed before anything is written.
#[derive(Default)]
struct AppBatch {
    devices: Vec<Device>,
    logins: Vec<Login>,
    notifications: Vec<Notification>,
    /// The notif_ids in `notifications`: a keyed request retried after Kafka's answer was
    /// lost writes its record twice, routed once (and a statement may set a row once).
    notif_ids: HashSet<String>,
    /// The API's ids of the events in `phases`: an event written twice (a request's retry
    /// took over its claims while it ran, a record rewritten after an unknown produce) is
    /// routed once. Both copies own the same claims, so the claims alone let both through.
    event_ids: HashSet<String>,
    segments: Vec<Segment>,
    /// Opt-outs and events in record order: a user's opt-out applies to their events after it
    /// and not to those before it.
    phases: Vec<Phase>,
}

/// Opt-outs applied before the events of the same phase; an opt-out of a user who already
/// has events in the phase starts the next one.
#[derive(Default)]
struct Phase {
    /// Per user, the newest opt-out list.
    opt_outs: BTreeMap<i64, Vec<String>>,
    events: Vec<Event>,
}

impl AppBatch {
    fn phase(&mut self) -> &mut Phase {
        if self.phases.is_empty() {
            self.phases.push(Phase::default());
        }
        let last = self.phases.len() - 1;
        &mut self.phases[last]
    }

    fn opt_out(&mut self, user_id: i64, list: Vec<String>) {
        if self.phase().events.iter().any(|e| e.user_id == user_id) {
            self.phases.push(Phase::default());
        }
        self.phase().opt_outs.insert(user_id, list);
    }
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
    let consumer = consume::consumer(
        &GroupSettings {
            brokers: settings.brokers.clone(),
            group: settings.group.clone(),
            topic: TOPIC_PATTERN.to_owned(),
            batch_size: settings.batch_size,
            offset_reset: settings.offset_reset.clone(),
            // A segment streams within its batch for minutes, polling between pages
            // (`consume::Lease`: a rebalance is served at once). One step can still be slow
            // (a page of a selective condition over a big app, a produce waiting out its
            // timeout): past this bound the group would give the partition to another router
            // while this one goes on, and both would send.
            consumer_extra: [(
                "max.poll.interval.ms".to_owned(),
                SEGMENT_POLL_INTERVAL_MS.to_string(),
            )]
            .into_iter()
            .chain(settings.consumer_extra.iter().cloned())
            .collect(),
        },
        settings.membership.clone(),
    )
    .map_err(RouteError::Consumer)?;
    let messages = Messages::new(registry.pool());
    let claims = Claims::new(registry.pool());
    let notifications = super::store::Store::with_pool(registry.pool());
    let mut router = Router {
        settings: &settings,
        stores: EventStores {
            notifications: &notifications,
            messages: &messages,
            registry: &registry,
            claims: &claims,
        },
        written: Written::new(&producer),
        counts: RouteCounts::default(),
    };
    consume::batches(&consumer, settings.batch_size, "route", &stop, &mut router).await;
    let counts = router.counts;
    tracing::info!(counts = %crate::telemetry::Json(&counts), "Router stopped.");
    Ok(counts)
}

struct Router<'a> {
    settings: &'a RouteSettings,
    stores: EventStores<'a>,
    written: Written<'a>,
    counts: RouteCounts,
}

/// A record's place: topic, partition, offset.
type Place = (String, i32, i64);

/// What the batch being handled already has in Kafka, by (topic, key, notif_id). A batch that
/// fails partway (an app's statement after another app's pushes, one record of many not
/// acknowledged) is redone whole; without this, each retry sent again every push Kafka had
/// acknowledged, once per retry for as long as the fault lasted. Kept for one batch (its first
/// record's place names it); a segment's page leaves it once the segment's progress is past it.
struct Written<'a> {
    producer: &'a Producer,
    batch: Option<Place>,
    /// The batch's last record and length: a phase is a place in the batch, so a batch that
    /// starts at the same record but holds more (fetched again after a rebalance) is another
    /// batch for `phases`. The pushes of `ids` are the same pushes in any batch.
    shape: Option<(Place, usize)>,
    ids: events::Produced,
    /// This attempt redoes the batch `ids` belongs to. On a first attempt `ids` holds only
    /// this attempt's records, none of them a later phase's, so event routing is given none.
    retry: bool,
    /// The event phases an earlier attempt finished (produced and marked sent), by (app,
    /// phase), with what they counted: a retry skips them and counts the same (routed again,
    /// their claims are found sent, and their notifications counted `already_sent`).
    phases: HashMap<(String, usize), EventCounts>,
}

impl<'a> Written<'a> {
    fn new(producer: &'a Producer) -> Written<'a> {
        Written {
            producer,
            batch: None,
            shape: None,
            ids: HashSet::new(),
            retry: false,
            phases: HashMap::new(),
        }
    }

    /// Starts handling `batch`: a retry of the same batch keeps what it wrote.
    fn begin(&mut self, batch: &[BorrowedMessage<'_>]) {
        let place = |m: &BorrowedMessage<'_>| (m.topic().to_owned(), m.partition(), m.offset());
        self.begin_at(
            batch.first().map(place),
            batch.last().map(|m| (place(m), batch.len())),
        );
    }

    fn begin_at(&mut self, first: Option<Place>, shape: Option<(Place, usize)>) {
        self.retry = first == self.batch;
        if !self.retry {
            self.ids.clear();
            self.phases.clear();
            self.batch = first;
        }
        if shape != self.shape {
            self.phases.clear();
            self.shape = shape;
        }
    }

    fn id(o: &Outgoing) -> (String, String, String) {
        (
            o.record.topic.clone(),
            o.record.key.clone(),
            o.notif_id.clone(),
        )
    }

    /// Produces each record Kafka does not have from an earlier attempt, and remembers those
    /// it acknowledges; the first failure, once every record was tried.
    async fn produce(&mut self, out: &[Outgoing]) -> Result<(), ProduceError> {
        let todo: Vec<&Outgoing> = out
            .iter()
            .filter(|o| self.ids.is_empty() || !self.ids.contains(&Self::id(o)))
            .collect();
        let answers = self
            .producer
            .produce_each(todo.iter().map(|o| &o.record))
            .await;
        let mut failed = None;
        for (o, answer) in todo.into_iter().zip(answers) {
            match answer {
                Ok(()) => {
                    self.ids.insert(Self::id(o));
                }
                Err(e) => {
                    failed.get_or_insert(e);
                }
            }
        }
        failed.map_or(Ok(()), Err)
    }

    /// Forgets `out`: what a redo will not produce again anyway (a segment's saved pages).
    fn forget(&mut self, out: &[Outgoing]) {
        for o in out {
            self.ids.remove(&Self::id(o));
        }
    }
}

impl consume::Batches for Router<'_> {
    type Done = RouteCounts;

    async fn handle(
        &mut self,
        batch: &[BorrowedMessage<'_>],
        lease: &consume::Lease<'_>,
    ) -> Result<RouteCounts, String> {
        self.written.begin(batch);
        handle(self.settings, &self.stores, &mut self.written, batch, lease).await
    }

    fn committed(&mut self, done: RouteCounts) {
        add(&mut self.counts, &done);
    }
}

fn add(total: &mut RouteCounts, batch: &RouteCounts) {
    total.consumed += batch.consumed;
    total.logins += batch.logins;
    total.notifications += batch.notifications;
    total.pushes += batch.pushes;
    total.no_devices += batch.no_devices;
    total.segments += batch.segments;
    total.opt_outs += batch.opt_outs;
    total.events.add(&batch.events);
    total.malformed += batch.malformed;
    let e = &batch.events;
    for (what, n) in [
        ("login", batch.logins),
        ("opt_out", batch.opt_outs),
        ("notification", batch.notifications),
        ("push", batch.pushes),
        ("no_devices", batch.no_devices),
        ("event", e.events),
        ("event_notification", e.notifications),
        ("event_push", e.pushes),
        // Per push (a redelivery's device already sent to); `event_already_sent` below counts
        // notifications.
        ("event_push_already_sent", e.already_sent),
        ("rate_limited", e.rate_limited),
        ("malformed", batch.malformed),
    ] {
        if n > 0 {
            metrics::counter!(crate::telemetry::names::ROUTED, "what" => what).increment(n);
        }
    }
    for (reason, n) in &e.skipped {
        metrics::counter!(crate::telemetry::names::ROUTED, "what" => format!("event_{reason}"))
            .increment(*n);
    }
}

/// Reads a batch, applies it to the registry, produces its pushes. Errors are PostgreSQL's or
/// Kafka's, as text (the batch is retried whole).
async fn handle(
    settings: &RouteSettings,
    stores: &EventStores<'_>,
    written: &mut Written<'_>,
    batch: &[BorrowedMessage<'_>],
    lease: &consume::Lease<'_>,
) -> Result<RouteCounts, String> {
    let registry = stores.registry;
    let now_ms = crate::clock::unix_ms();
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
        // When the API wrote the record: the time of an event or login that names none.
        let written_ms = m.timestamp().to_millis().unwrap_or(now_ms).min(now_ms);
        let record = m
            .payload()
            .and_then(|p| serde_json::from_slice::<RequestRecord>(p).ok());
        let Some(record) = record else {
            skip_malformed(&mut counts, m, "unreadable");
            continue;
        };
        // A notification id PostgreSQL refuses (written past the API) would fail its batch on
        // every retry.
        if let RequestRecord::Notification { notif_id, .. }
        | RequestRecord::Segment { notif_id, .. } = &record
        {
            if !is_valid_notif_id(notif_id) {
                skip_malformed(&mut counts, m, "an unusable notif_id");
                continue;
            }
        }
        let entry = apps.entry(app.to_owned()).or_default();
        match record {
            RequestRecord::Notification {
                user_id,
                title,
                content,
                screen,
                notif_id,
            } => {
                let n = Notification {
                    user_id,
                    title,
                    content,
                    screen,
                    notif_id,
                    ..Notification::default()
                };
                if let Some(why) =
                    unsendable_why(&n, &settings.deeplink_base, &outbound::ALL_PLATFORMS)
                {
                    skip_malformed(&mut counts, m, &why);
                    continue;
                }
                counts.notifications += 1;
                if !entry.notif_ids.insert(n.notif_id.clone()) {
                    continue;
                }
                entry.notifications.push(n);
            }
            RequestRecord::Segment {
                notif_id,
                condition,
                title,
                content,
                screen,
                data,
            } => {
                let notification = Notification {
                    title,
                    content,
                    screen,
                    notif_id,
                    data,
                    ..Notification::default()
                };
                // Checked for the platforms it can reach, as the API checks it.
                let platforms = condition
                    .platform
                    .map_or(outbound::ALL_PLATFORMS.to_vec(), |p| vec![p]);
                if let Some(why) =
                    unsendable_why(&notification, &settings.deeplink_base, &platforms)
                {
                    skip_malformed(&mut counts, m, &why);
                    continue;
                }
                entry.segments.push(Segment {
                    notification,
                    condition,
                });
            }
            RequestRecord::Event {
                user_id,
                event_id: LOGIN_EVENT,
                timestamp,
                pairs,
                ..
            } => match login_of(user_id, event_time(timestamp, written_ms, now_ms), &pairs) {
                Ok((device, login)) => {
                    counts.logins += 1;
                    entry.devices.push(device);
                    entry.logins.push(login);
                }
                Err(unusable) => {
                    let why = format!("a login without a usable {}", unusable.pair);
                    skip_malformed(&mut counts, m, &why);
                }
            },
            RequestRecord::Event {
                user_id,
                event_id: OPT_OUT_EVENT,
                pairs,
                ..
            } => {
                counts.opt_outs += 1;
                entry.opt_out(user_id, events::opt_out_list(&pairs));
            }
            RequestRecord::Event {
                id,
                user_id,
                event_id,
                timestamp,
                pairs,
                ..
            } => {
                // Records from before the API gave events ids, or written past it with an id
                // PostgreSQL would refuse (claims name their owner by it): their place in Kafka.
                let uid = if !is_valid_notif_id(&id) {
                    format!("{}-{}-{}", m.topic(), m.partition(), m.offset())
                } else if !entry.event_ids.insert(id.clone()) {
                    counts.events.events += 1;
                    counts.events.skip("duplicate_event");
                    continue;
                } else {
                    id
                };
                entry.phase().events.push(Event {
                    uid,
                    user_id,
                    event_id,
                    pairs,
                    at_ms: event_time(timestamp, written_ms, now_ms),
                });
            }
        }
    }
    // Registrations first, then every app's segments, then the rest: a segment may drop the
    // batch between pages (a rebalance: `stream_segment`) for the partition's new owner to
    // redo, so nothing a redo would send twice (a user's notification has no claim) may come
    // before it. Registering again, and a segment's saved progress, make the redo harmless.
    for (app, work) in &apps {
        registry
            .register(app, &work.devices, &work.logins)
            .await
            .map_err(|e: StoreError| e.to_string())?;
    }
    for (app, work) in &apps {
        for segment in &work.segments {
            match stream_segment(settings, stores, written, app, segment, now_ms, lease).await? {
                Some(pushes) => {
                    counts.segments += 1;
                    counts.pushes += pushes;
                }
                None => counts.malformed += 1,
            }
        }
    }
    for (app, work) in &apps {
        for (i, phase) in work.phases.iter().enumerate() {
            if let Some(done) = written.phases.get(&(app.clone(), i)) {
                counts.events.add(done);
                continue;
            }
            let unknown = stores
                .messages
                .set_opt_outs(app, &phase.opt_outs)
                .await
                .map_err(|e| e.to_string())?;
            if !unknown.is_empty() {
                tracing::warn!(
                    app,
                    ?unknown,
                    "Opt-out events name messages that do not exist."
                );
            }
            // The clock read now, not at the batch's start: segments before may have streamed
            // for minutes, and an event whose message's life ended meanwhile is expired, not
            // claimed and sent with an expiry already past (`pusher run` would drop it, and the
            // cooldown hold).
            let routed_at = crate::clock::unix_ms();
            // What an earlier attempt got into Kafka is sent: nothing claimed for it is given
            // back, though its event may have expired since. A first attempt has no earlier
            // one: nothing to look through.
            let none = events::Produced::new();
            let produced = if written.retry { &written.ids } else { &none };
            let routed = events::route(
                &settings.events,
                stores,
                app,
                &phase.events,
                routed_at,
                produced,
            )
            .await
            .map_err(|e| e.to_string())?;
            lease.confirm().await?;
            written
                .produce(&routed.records)
                .await
                .map_err(|e: ProduceError| e.to_string())?;
            mark_sent(stores, app, &routed, lease).await?;
            counts.events.add(&routed.counts);
            written.phases.insert((app.clone(), i), routed.counts);
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
        // Each notification is complete at a verdict per device: recorded before its pushes
        // exist, so no verdict can come before the count it completes. By notif_id: each row
        // once, locked in one order.
        let reached: BTreeMap<&str, u32> = work
            .notifications
            .iter()
            .map(|n| {
                let devices = by_user.get(&n.user_id).map_or(0, Vec::len);
                (
                    n.notif_id.as_str(),
                    u32::try_from(devices).unwrap_or(u32::MAX),
                )
            })
            .collect();
        let reached: Vec<(&str, u32)> = reached.into_iter().collect();
        stores
            .notifications
            .set_targets(app, &reached)
            .await
            .map_err(|e| e.to_string())?;
        for n in &work.notifications {
            let Some(devices) = by_user.get(&n.user_id) else {
                counts.no_devices += 1;
                continue;
            };
            for d in devices {
                records.push(Outgoing {
                    notif_id: n.notif_id.clone(),
                    record: Record {
                        topic: format!("push-{app}_{}", d.platform),
                        key: d.token.clone(),
                        payload: push_message(d, n, &settings.deeplink_base, now_ms),
                    },
                });
            }
        }
        written
            .produce(&records)
            .await
            .map_err(|e: ProduceError| e.to_string())?;
        counts.pushes += records.len() as u64;
    }
    Ok(counts)
}

/// Why no push of `n` could be sent to one of `platforms`, for a request written past the
/// API's checks: its pushes would each fail `payload_too_large`, or, past what Kafka takes,
/// fail the produce and with it the batch on every retry (the router stalled on one such
/// record).
fn unsendable_why(n: &Notification, deeplink_base: &str, platforms: &[Platform]) -> Option<String> {
    let strings = [
        n.title.as_str(),
        &n.content,
        &n.screen,
        deeplink_base,
        &n.notif_id,
    ];
    if n.data.is_empty() && outbound::surely_fits(strings) {
        return None;
    }
    outbound::unsendable(n, deeplink_base, platforms)
        .map(|(platform, e)| format!("a push that could never be sent to {platform}: {e}"))
}

/// Counts a record the router cannot use (written past the API's checks) and says which.
fn skip_malformed(counts: &mut RouteCounts, m: &BorrowedMessage<'_>, why: &str) {
    tracing::warn!(
        topic = m.topic(),
        offset = m.offset(),
        why,
        "Request record skipped."
    );
    counts.malformed += 1;
}

/// How long a batch may go without a poll before the group takes the router's partitions: 30
/// minutes, for a slow step of a segment (the 60 s of the other groups).
const SEGMENT_POLL_INTERVAL_MS: u32 = 30 * 60 * 1000;

/// Attempts at marking a phase's claims sent before the batch fails (about a minute).
const MARK_SENT_ATTEMPTS: u32 = 16;

/// Marks a phase's claims sent, retrying in place: its pushes are in Kafka already, and a
/// failed batch is redone whole, which wins the same claims again (they are still unsent and
/// the events' own) and sends every push of the phase twice. A PostgreSQL failover was enough
/// for that. Gives up only when a rebalance took the batch, or after [`MARK_SENT_ATTEMPTS`],
/// as a crash there would (the one window left: `docs/platform.md`).
async fn mark_sent(
    stores: &EventStores<'_>,
    app: &str,
    routed: &events::Routed,
    lease: &consume::Lease<'_>,
) -> Result<(), String> {
    let backoff = RetryPolicy::unbounded(Duration::from_millis(100), Duration::from_secs(5));
    let mut failed = 0;
    loop {
        match stores
            .claims
            .mark_sent(
                app,
                &routed.cooldown_sent,
                &routed.dedup_sent,
                &routed.limit_sent,
            )
            .await
        {
            Ok(()) => return Ok(()),
            Err(e) if failed + 1 >= MARK_SENT_ATTEMPTS => return Err(e.to_string()),
            Err(e) => {
                failed += 1;
                tracing::warn!(app, error = %e, attempt = failed, "Cannot mark event pushes sent; retrying (they are in Kafka).");
                lease.keep(backoff.backoff_ceiling(failed)).await?;
            }
        }
    }
}

/// Sends a segment page by page, resuming after the last page a previous router finished.
/// Returns the pushes this call produced; None for a condition PostgreSQL refuses.
async fn stream_segment(
    settings: &RouteSettings,
    stores: &EventStores<'_>,
    written: &mut Written<'_>,
    app: &str,
    segment: &Segment,
    now_ms: i64,
    lease: &consume::Lease<'_>,
) -> Result<Option<u64>, String> {
    let registry = stores.registry;
    let n = &segment.notification;
    let (mut after, mut produced, done) = registry
        .segment_progress(app, &n.notif_id)
        .await
        .map_err(|e| e.to_string())?
        .unwrap_or_default();
    if done {
        return Ok(Some(0));
    }
    let mut pushed = 0;
    let mut page = match registry
        .segment_page(
            app,
            &segment.condition,
            settings.events.default_language,
            &after,
            SEGMENT_PAGE,
        )
        .await
    {
        Ok(page) => page,
        // The condition's own fault (a value PostgreSQL refuses, in a request accepted before
        // the API checked conditions): it would be refused again, and retrying it would stop
        // the partition for good. The segment ends having reached no device.
        Err(StoreError::Refused(reason)) => {
            tracing::warn!(app, notif_id = %n.notif_id, %reason, "Segment condition refused: it reaches no device.");
            stores
                .notifications
                .set_targets(app, &[(n.notif_id.as_str(), 0)])
                .await
                .map_err(|e| e.to_string())?;
            registry
                .save_segment_progress(app, &n.notif_id, "", 0, true)
                .await
                .map_err(|e| e.to_string())?;
            return Ok(None);
        }
        Err(e) => return Err(e.to_string()),
    };
    loop {
        // The next page is read before this one is produced, so the last page that has
        // devices is known as the last: the segment's size is set before its last pushes
        // exist (as above). Set after them, at an empty page, all their verdicts could be in
        // before the count they complete, and the webhook would never be called.
        let next = match page.last() {
            Some(d) if page.len() as i64 == SEGMENT_PAGE => registry
                .segment_page(
                    app,
                    &segment.condition,
                    settings.events.default_language,
                    &d.token,
                    SEGMENT_PAGE,
                )
                .await
                .map_err(|e| e.to_string())?,
            _ => Vec::new(),
        };
        let last = next.is_empty();
        let records: Vec<Outgoing> = page
            .iter()
            .map(|d| Outgoing {
                notif_id: n.notif_id.clone(),
                record: Record {
                    topic: format!("push-{app}_{}", d.platform),
                    key: d.token.clone(),
                    payload: push_message(d, n, &settings.deeplink_base, now_ms),
                },
            })
            .collect();
        if last {
            let total = u32::try_from(produced + records.len() as i64).unwrap_or(u32::MAX);
            stores
                .notifications
                .set_targets(app, &[(n.notif_id.as_str(), total)])
                .await
                .map_err(|e| e.to_string())?;
        }
        written.produce(&records).await.map_err(|e| e.to_string())?;
        produced += records.len() as i64;
        pushed += records.len() as u64;
        if let Some(d) = page.last() {
            after = d.token.clone();
        }
        registry
            .save_segment_progress(app, &n.notif_id, &after, produced, last)
            .await
            .map_err(|e| e.to_string())?;
        // A redo resumes after this page: what it wrote need not be kept.
        written.forget(&records);
        if last {
            tracing::info!(app, notif_id = %n.notif_id, devices = produced, "Segment sent.");
            return Ok(Some(pushed));
        }
        // Between pages, with this one's progress saved: a rebalance is served now, not when
        // the segment ends (the whole group would wait for it), and the partition's new owner
        // resumes after this page; a stop ends here too.
        if lease.stopping() {
            return Err(format!(
                "stopping: segment {} resumes after its {produced} devices sent",
                n.notif_id
            ));
        }
        lease.keep(Duration::ZERO).await?;
        page = next;
    }
}

/// When an event (or a login) happened, in Unix ms: its `timestamp` (Pushkin's seconds; a
/// value this large is already milliseconds), else when the API wrote its record; never later
/// than now (a sender's clock ahead, microseconds sent as seconds). Every registry rule is "the
/// newest login wins", so a login from the future would keep its token from moving to another
/// user, its language and its place among the user's 10 devices until then, and a verdict
/// would never delete its token; an event's expiry runs from it.
fn event_time(timestamp: i64, written_ms: i64, now_ms: i64) -> i64 {
    let at_ms = match timestamp {
        t if t <= 0 => written_ms,
        t if t > 100_000_000_000 => t,
        t => t.saturating_mul(1000),
    };
    at_ms.min(now_ms)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::push::Platform;

    /// A batch fetched again after a rebalance may start at the same record and hold more:
    /// its phases are other events, so none counts as done (they were skipped, and the events
    /// past the first fetch's end never routed); the pushes Kafka has stay skipped.
    #[test]
    fn a_longer_batch_from_the_same_record_redoes_its_phases() {
        let producer = Producer::new("127.0.0.1:9", Duration::from_secs(1)).unwrap();
        let mut written = Written::new(&producer);
        let at = |offset: i64| ("push-game-requests".to_owned(), 0, offset);
        written.begin_at(Some(at(100)), Some((at(150), 51)));
        assert!(!written.retry);
        written.ids.insert(("t".into(), "k".into(), "n".into()));
        written
            .phases
            .insert(("game".into(), 0), EventCounts::default());
        // A retry of the same batch keeps both.
        written.begin_at(Some(at(100)), Some((at(150), 51)));
        assert_eq!((written.ids.len(), written.phases.len()), (1, 1));
        assert!(written.retry);
        // The same first record, more records: the phases are redone.
        written.begin_at(Some(at(100)), Some((at(400), 301)));
        assert_eq!((written.ids.len(), written.phases.len()), (1, 0));
        assert!(written.retry, "its pushes in Kafka are looked for");
        // Another first record: a new batch.
        written.begin_at(Some(at(401)), Some((at(450), 50)));
        assert_eq!((written.ids.len(), written.phases.len()), (0, 0));
        assert!(!written.retry);
    }

    /// A segment for one platform is checked against that platform only, as the API checks
    /// it: a `data` that fits FCM but not a browser's smaller payload is routed to Android.
    #[test]
    fn a_segment_is_checked_for_the_platforms_it_reaches() {
        let with = |len: usize| Notification {
            content: "c".into(),
            notif_id: "n".into(),
            data: serde_json::json!({"blob": "x".repeat(len)})
                .as_object()
                .cloned()
                .unwrap(),
            ..Notification::default()
        };
        let between = (3000..4096).find(|&len| {
            unsendable_why(&with(len), "", &[Platform::Gcm]).is_none()
                && unsendable_why(&with(len), "", &outbound::ALL_PLATFORMS).is_some()
        });
        assert!(between.is_some(), "no size fits FCM and not every platform");
    }

    #[test]
    fn pushkin_login_pairs_make_a_device() {
        let pairs = BTreeMap::from([
            ("languageId".to_owned(), "3".to_owned()),
            ("platformId".to_owned(), "5".to_owned()),
            ("deviceId".to_owned(), "ipad-1".to_owned()),
            ("deviceToken".to_owned(), "abc".to_owned()),
            ("applicationVersion".to_owned(), "1.2".to_owned()),
        ]);
        let (device, login) = login_of(7, 1_458_866_235_000, &pairs).unwrap();
        assert_eq!(device.platform, Platform::Apns);
        assert_eq!(device.registered_ms, 1_458_866_235_000);
        assert_eq!(
            (login.language_id, device.app_version.as_str()),
            (Some(3), "1.2")
        );
        let mut no_token = pairs.clone();
        no_token.remove("deviceToken");
        assert!(login_of(7, 0, &no_token).is_err());
        let mut web = pairs.clone();
        web.insert("platformId".into(), "9".into());
        assert!(login_of(7, 0, &web).is_err());
        // An Android phone's token that is an FCM topic would make its pushes broadcasts.
        let mut topic = pairs.clone();
        topic.insert("platformId".into(), "1".into());
        topic.insert("deviceToken".into(), "/topics/all".into());
        assert_eq!(login_of(7, 0, &topic).unwrap_err().pair, "deviceToken");
        let mut ios = topic.clone();
        ios.insert("platformId".into(), "2".into());
        assert!(login_of(7, 0, &ios).is_ok());
        // Values PostgreSQL would refuse are none.
        let mut nul = pairs.clone();
        nul.insert("deviceToken".into(), "ab\u{0}c".into());
        assert!(login_of(7, 0, &nul).is_err());
    }

    /// An event's time: Pushkin's seconds, or milliseconds; none given, when the API wrote
    /// it; never later than now (a clock ahead, the year 2286, nanoseconds as seconds): the
    /// newest login wins every registry rule, and one from the future would win them until
    /// then.
    #[test]
    fn event_times_are_milliseconds_up_to_now() {
        let now = 1_800_000_000_000;
        let written = now - 5_000;
        assert_eq!(event_time(1_458_866_235, written, now), 1_458_866_235_000);
        assert_eq!(
            event_time(1_458_866_235_123, written, now),
            1_458_866_235_123
        );
        assert_eq!(event_time(0, written, now), written);
        assert_eq!(event_time(-5, written, now), written);
        for future in [
            9_999_999_999,
            now / 1000 + 86_400,
            1_700_000_000_000_000_000,
        ] {
            assert_eq!(event_time(future, written, now), now, "{future}");
        }
    }
}
