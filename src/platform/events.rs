//! Event mode (Pushkin's events, done right): an event "this happened to this user" becomes a
//! notification of every message its event id triggers, in the user's language, with its
//! parameters filled, at most once per cooldown, not to users who opted out, and within each
//! device's limits. Everything not sent is counted by reason; a push a limit stopped ends as
//! `rate_limited` with a feedback record (so a result row), never silently.
//!
//! One call takes a batch of one app's events and costs a fixed number of statements: the
//! messages, languages, opt-outs and devices read once, then the claims (cooldown, dedup,
//! limit) each as one batched statement (`claims`).

use super::claims::{Claim, Claimed, Claims, Limit};
use super::messages::{self, Message, Messages};
use super::outbound::{self, Notification, Outgoing};
use super::produce::Record;
use super::registry::{Device, Registry};
use super::store::StoreError;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, HashSet};

/// One event as the router read it.
#[derive(Debug, Clone)]
pub struct Event {
    /// Unique per event (the API's id for it, else its Kafka coordinates): the owner of the
    /// claims it takes, and the prefix of its notifications' ids (`<uid>.<message>`).
    pub uid: String,
    pub user_id: i64,
    pub event_id: i32,
    pub pairs: BTreeMap<String, String>,
    /// When it happened (Unix ms, never later than its routing): a message's `expiry_s`
    /// runs from here, not from when a router got to it.
    pub at_ms: i64,
}

/// Per-app limits on what reaches one device.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct DeviceLimits {
    /// At most this many pushes per window (GCRA); None: no limit.
    pub limit: Option<Limit>,
    /// The same message to the same device at most once per this many seconds (0: off).
    pub dedup_window_s: f64,
}

#[derive(Debug, Clone)]
pub struct EventSettings {
    /// The language whose localization is used when the user's own is missing.
    pub default_language: i32,
    pub deeplink_base: String,
    /// Where a `rate_limited` verdict goes (`push-{app}-{platform}-feedbacks`).
    pub feedback_template: String,
    /// Per app; apps not named get `default_limits`.
    pub limits: HashMap<String, DeviceLimits>,
    pub default_limits: DeviceLimits,
}

impl Default for EventSettings {
    fn default() -> Self {
        EventSettings {
            default_language: 1,
            deeplink_base: String::new(),
            feedback_template: "push-{app}-{platform}-feedbacks".to_owned(),
            limits: HashMap::new(),
            default_limits: DeviceLimits::default(),
        }
    }
}

/// What event routing did. `skipped` counts (event, message) pairs that sent nothing, by
/// reason: `no_message` (the event id triggers none; counted per event), `duplicate_event` (a
/// second record of one event in a batch; counted per event), `opted_out`,
/// `no_localization`, `missing_parameter`, `expired`, `too_long`, `no_devices`, `cooldown`,
/// `already_sent` (a redelivered event whose notification was sent).
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct EventCounts {
    pub events: u64,
    /// (event, message) pairs that produced pushes.
    pub notifications: u64,
    pub pushes: u64,
    /// Pushes stopped by a device limit or as duplicates (each with a feedback record).
    pub rate_limited: u64,
    /// Pushes of a redelivered event that an earlier delivery sent (not sent again; that
    /// delivery counted them). A push an earlier attempt of the same batch got into Kafka
    /// counts in `pushes` instead: no completed count holds it, and `pushes` counts each push
    /// in Kafka once.
    pub already_sent: u64,
    pub skipped: BTreeMap<String, u64>,
}

impl EventCounts {
    pub(super) fn skip(&mut self, reason: &str) {
        *self.skipped.entry(reason.to_owned()).or_default() += 1;
    }

    pub fn add(&mut self, other: &EventCounts) {
        self.events += other.events;
        self.notifications += other.notifications;
        self.pushes += other.pushes;
        self.rate_limited += other.rate_limited;
        self.already_sent += other.already_sent;
        for (reason, n) in &other.skipped {
            *self.skipped.entry(reason.clone()).or_default() += n;
        }
    }
}

/// The stores event routing reads and claims in.
pub struct EventStores<'a> {
    /// Accepted notifications: the router sets what each reached.
    pub notifications: &'a super::store::Store,
    pub messages: &'a Messages,
    pub registry: &'a Registry,
    pub claims: &'a Claims,
}

/// A notification that passed every check before the claims.
struct Candidate<'a> {
    event: &'a Event,
    message: &'a Message,
    title: String,
    text: String,
    /// What is left of the message's `expiry_s` (0: none set).
    expiry_s: i64,
}

/// A filled message's push fits every platform's payload, escapes included. The quick
/// bound answers nearly always; near it, the push is built and read as `pusher run` reads it.
fn fits(event: &Event, message: &Message, title: &str, text: &str, deeplink_base: &str) -> bool {
    let strings: [&str; 7] = [
        title,
        text,
        &message.screen,
        deeplink_base,
        &event.uid,
        &message.name,
        &message.name,
    ];
    if outbound::surely_fits(strings) {
        return true;
    }
    let push = Notification {
        user_id: event.user_id,
        title: title.to_owned(),
        content: text.to_owned(),
        screen: message.screen.clone(),
        notif_id: format!("{}.{}", event.uid, message.name),
        message: message.name.clone(),
        priority: Some(message.priority),
        ..Notification::default()
    };
    outbound::unsendable(&push, deeplink_base, &outbound::ALL_PLATFORMS).is_none()
}

/// What routing a batch of events decided.
#[derive(Debug, Default)]
pub struct Routed {
    /// Pushes and `rate_limited` feedback records, to produce.
    pub records: Vec<Outgoing>,
    pub counts: EventCounts,
    /// The claims to mark sent once `records` are in Kafka (`Claims::mark_sent`).
    pub cooldown_sent: Vec<Claim>,
    pub dedup_sent: Vec<Claim>,
    /// The per-device limit's charges of the pushes sent (subjects are tokens).
    pub limit_sent: Vec<Claim>,
}

/// What Kafka already has from earlier attempts of the batch, by (topic, key, notif_id): the
/// router's record of what it acknowledged (`route::Written`).
pub type Produced = HashSet<(String, String, String)>;

/// Routes one app's events. Claims are taken here: produce the records, then mark the claims
/// sent, then commit the batch. A redelivered event wins its own unsent claims again (nothing
/// lost) and skips those already sent (nothing twice). A push in `produced` (an earlier
/// attempt of the batch got it into Kafka, then failed before marking it sent) is sent: what
/// was claimed and charged for it is kept and marked sent, whatever this attempt decides.
pub async fn route(
    settings: &EventSettings,
    stores: &EventStores<'_>,
    app: &str,
    events: &[Event],
    now_ms: i64,
    produced: &Produced,
) -> Result<Routed, StoreError> {
    let mut counts = EventCounts {
        events: events.len() as u64,
        ..EventCounts::default()
    };
    let mut records = Vec::new();
    if events.is_empty() {
        return Ok(Routed::default());
    }
    let mut event_ids: Vec<i32> = events.iter().map(|e| e.event_id).collect();
    event_ids.sort_unstable();
    event_ids.dedup();
    let triggered = stores.messages.triggered_by(app, &event_ids).await?;
    let mut users: Vec<i64> = events
        .iter()
        .filter(|e| triggered.contains_key(&e.event_id))
        .map(|e| e.user_id)
        .collect();
    users.sort_unstable();
    users.dedup();
    if users.is_empty() {
        counts
            .skipped
            .insert("no_message".into(), events.len() as u64);
        return Ok(Routed {
            counts,
            ..Routed::default()
        });
    }
    // Three reads on three connections at once: a batch waits for one round trip, not three.
    let (languages, opt_outs, devices) = tokio::try_join!(
        stores.messages.languages(app, &users),
        stores.messages.opt_outs(app, &users),
        stores.registry.devices_of(app, &users),
    )?;

    let mut candidates = Vec::new();
    // (event, message) pairs skipped before the claims, then those inside another event's
    // cooldown: a claim an earlier attempt of this batch won for one of them is given back
    // below.
    let mut unclaimed: Vec<(&Event, &Message)> = Vec::new();
    for event in events {
        let Some(list) = triggered.get(&event.event_id) else {
            counts.skip("no_message");
            continue;
        };
        for message in list {
            // Looked up by reference: this runs per event and message.
            if opt_outs
                .get(&event.user_id)
                .is_some_and(|names| names.contains(&message.name))
            {
                counts.skip("opted_out");
                unclaimed.push((event, message));
                continue;
            }
            let language = languages
                .get(&event.user_id)
                .copied()
                .unwrap_or(settings.default_language);
            let Some(l) = message.localization(language, settings.default_language) else {
                counts.skip("no_localization");
                unclaimed.push((event, message));
                continue;
            };
            // The expiry runs from the event: one that waited out its message's life in a
            // backlog (routers down, PostgreSQL down) is not sent with a fresh one.
            let expiry_s = if message.expiry_s > 0 {
                // As the API bounds it (a row written by hand may hold more).
                let life_s = message.expiry_s.min(messages::MAX_EXPIRY_S);
                let left_ms = event
                    .at_ms
                    .saturating_add(life_s.saturating_mul(1000))
                    .saturating_sub(now_ms);
                if left_ms <= 0 {
                    counts.skip("expired");
                    unclaimed.push((event, message));
                    continue;
                }
                (left_ms + 999) / 1000
            } else {
                0
            };
            let filled = messages::fill(&l.title, &event.pairs)
                .and_then(|title| Ok((title, messages::fill(&l.text, &event.pairs)?)));
            match filled {
                // Parameters can grow a text past what a push carries (and past what Kafka
                // takes, which failed the batch for good): not sent, counted. Counted as the
                // push carries it: JSON's escapes can double a text within MAX_TEXT.
                Ok((title, text))
                    if title.len() + text.len() > outbound::MAX_TEXT
                        || !fits(event, message, &title, &text, &settings.deeplink_base) =>
                {
                    tracing::debug!(app, message = %message.name, "The filled message is too long for a push.");
                    counts.skip("too_long");
                    unclaimed.push((event, message));
                }
                Ok((title, text)) => candidates.push(Candidate {
                    event,
                    message,
                    title,
                    text,
                    expiry_s,
                }),
                Err(missing) => {
                    tracing::debug!(app, message = %message.name, parameter = %missing,
                        "A parameter the message needs is not in the event.");
                    counts.skip("missing_parameter");
                    unclaimed.push((event, message));
                }
            }
        }
    }

    let mut by_user: HashMap<i64, Vec<&Device>> = HashMap::new();
    for d in &devices {
        by_user.entry(d.user_id).or_default().push(d);
    }
    let earlier = pushes_in_kafka(produced, app);
    let in_kafka = |notif_id: &str, token: &str| {
        !earlier.is_empty()
            && earlier
                .get(notif_id)
                .is_some_and(|tokens| tokens.contains(token))
    };
    candidates.retain(|c| {
        let has = by_user.contains_key(&c.event.user_id);
        if !has {
            counts.skip("no_devices");
            unclaimed.push((c.event, c.message));
        }
        has
    });
    // Matched as the config's other per-app keys are: exactly, else ignoring case (an
    // environment variable names the app in capitals, and the config keeps it lower-case).
    let limits = settings
        .limits
        .get(app)
        .or_else(|| {
            let mut other_case = settings.limits.iter();
            other_case
                .find(|(k, _)| k.eq_ignore_ascii_case(app))
                .map(|(_, v)| v)
        })
        .copied()
        .unwrap_or(settings.default_limits);
    // A pair skipped now whose pushes an earlier attempt got into Kafka keeps its cooldown
    // claim: the user got the notification. Marked sent with this attempt's claims.
    let (sent_pairs, released): (Vec<(&Event, &Message)>, Vec<_>) = unclaimed
        .iter()
        .partition(|(e, m)| !earlier.is_empty() && earlier.contains_key(notif_id(e, m).as_str()));
    let kept_cooldowns: Vec<Claim> = sent_pairs
        .iter()
        .filter(|(_, m)| m.cooldown_s > 0)
        .map(|(e, m)| cooldown_claim(e, m))
        .collect();
    give_back_cooldowns(stores.claims, app, &released).await?;

    // Cooldown: one claim per (user, message) and batch; a second event for the same pair in
    // the same batch is inside the cooldown by definition.
    let mut first: HashSet<(i64, &str)> = HashSet::new();
    let mut claims = Vec::new();
    let mut claimed = Vec::new();
    let mut sending = Vec::new();
    for (i, c) in candidates.iter().enumerate() {
        if c.message.cooldown_s == 0 {
            sending.push(i);
        } else if first.insert((c.event.user_id, c.message.name.as_str())) {
            claims.push((cooldown_claim(c.event, c.message), c.message.cooldown_s));
            claimed.push(i);
        } else {
            counts.skip("cooldown");
            unclaimed.push((c.event, c.message));
        }
    }
    let found = stores.claims.cooldown(app, &claims).await?;
    let mut routed = Routed::default();
    for ((i, found), (claim, _)) in claimed.into_iter().zip(found).zip(claims) {
        match found {
            Claimed::Won => {
                sending.push(i);
                routed.cooldown_sent.push(claim);
            }
            Claimed::Lost => {
                counts.skip("cooldown");
                unclaimed.push((candidates[i].event, candidates[i].message));
            }
            // Redelivered (a crash or a rebalance after its pushes were in Kafka).
            Claimed::Sent => counts.skip("already_sent"),
        }
    }
    sending.sort_unstable();
    // What an earlier attempt claimed for pushes this one does not send, given back before
    // this attempt's claims on the same devices (`give_back_cooldowns`, why). Only claims still
    // the event's own and unsent, or charges still its own, are touched: on a first attempt
    // there are none. A device that left the user since keeps its claim and its charge until
    // they run out: both are found by device, and the user's devices are all this attempt knows.
    // A push an earlier attempt got into Kafka keeps both: it is sent (`sent_earlier`).
    let unsent: Vec<Claim> = device_claims(&unclaimed, &by_user)
        .into_iter()
        .filter(|c| !in_kafka(&c.owner, &c.subject))
        .collect();
    if limits.dedup_window_s > 0.0 {
        stores.claims.release_dedup(app, &unsent).await?;
    }

    // Every device of every notification that may send, then the per-device checks.
    let mut pushes: Vec<(Notification, &Device)> = Vec::new();
    for i in sending {
        let c = &candidates[i];
        let notification = Notification {
            user_id: c.event.user_id,
            title: c.title.clone(),
            content: c.text.clone(),
            screen: c.message.screen.clone(),
            notif_id: notif_id(c.event, c.message),
            message: c.message.name.clone(),
            expiry_s: c.expiry_s,
            priority: Some(c.message.priority),
            ..Notification::default()
        };
        counts.notifications += 1;
        for d in by_user.get(&c.event.user_id).into_iter().flatten() {
            pushes.push((notification.clone(), d));
        }
    }
    // Every push an earlier attempt got into Kafka for this phase's pairs that this attempt
    // does not make: its pair is skipped now, or its device left the user since (feedback
    // deleted the token, or another user registered it). Sent: its dedup claim and its charge
    // are marked sent with this attempt's, and it counts as a push (no completed count holds it).
    let mut sent_earlier: Vec<Claim> = Vec::new();
    if !earlier.is_empty() {
        let made: HashSet<(&str, &str)> = pushes
            .iter()
            .map(|(n, d)| (n.notif_id.as_str(), d.token.as_str()))
            .collect();
        // Each notification once, should an event come twice.
        let mut seen: HashSet<&str> = HashSet::new();
        for e in events {
            for m in triggered.get(&e.event_id).into_iter().flatten() {
                let id = notif_id(e, m);
                let Some((&id, tokens)) = earlier.get_key_value(id.as_str()) else {
                    continue;
                };
                if !seen.insert(id) {
                    continue;
                }
                for &token in tokens {
                    if !made.contains(&(id, token)) {
                        sent_earlier.push(Claim {
                            subject: token.to_owned(),
                            message: m.name.clone(),
                            owner: id.to_owned(),
                        });
                    }
                }
            }
        }
    }
    counts.pushes += sent_earlier.len() as u64;
    // None: send; Some(reason): rate_limited; Some("") already sent (a redelivery).
    let mut verdict: Vec<Option<&str>> = vec![None; pushes.len()];
    // In Kafka from an earlier attempt: sent, whatever the checks say now (its record is not
    // produced again).
    let pushed: Vec<bool> = pushes
        .iter()
        .map(|(n, d)| in_kafka(&n.notif_id, &d.token))
        .collect();
    let claim_of = |(n, d): &(Notification, &Device)| Claim {
        subject: d.token.clone(),
        message: n.message.clone(),
        owner: n.notif_id.clone(),
    };
    let mut dedup_won: Vec<(usize, Claim)> = Vec::new();
    if limits.dedup_window_s > 0.0 {
        let claims: Vec<Claim> = pushes.iter().map(claim_of).collect();
        let found = stores
            .claims
            .dedup(app, &claims, limits.dedup_window_s)
            .await?;
        for (i, ((v, found), claim)) in verdict.iter_mut().zip(found).zip(claims).enumerate() {
            match found {
                Claimed::Won => dedup_won.push((i, claim)),
                // Its claim ran out since, and another push took it.
                Claimed::Lost if pushed[i] => {}
                Claimed::Lost => *v = Some("duplicate"),
                Claimed::Sent => *v = Some(""),
            }
        }
    }
    if let Some(limit) = limits.limit {
        // The charges of an earlier attempt for pushes this one does not send: those above,
        // and those that are duplicates now (its dedup claim ran out and another push took it).
        let mut charged = unsent;
        charged.extend(
            (0..pushes.len())
                .filter(|&i| verdict[i] == Some("duplicate"))
                .map(|i| claim_of(&pushes[i])),
        );
        stores
            .claims
            .give_back_charges(app, &charged, limit)
            .await?;
        // Those in Kafka were charged by the attempt that sent them.
        let open: Vec<usize> = (0..pushes.len())
            .filter(|&i| verdict[i].is_none() && !pushed[i])
            .collect();
        let claims: Vec<Claim> = open.iter().map(|&i| claim_of(&pushes[i])).collect();
        let won = stores.claims.limit(app, &claims, limit).await?;
        for (i, won) in open.into_iter().zip(won) {
            if !won {
                verdict[i] = Some("device_limit");
            }
        }
    }
    // A dedup claim stands for a push sent; those the limit refused are given back.
    let (sent, refused): (Vec<_>, Vec<_>) = dedup_won
        .into_iter()
        .partition(|(i, _)| verdict[*i].is_none());
    routed.dedup_sent = sent.into_iter().map(|(_, c)| c).collect();
    if limits.dedup_window_s > 0.0 {
        routed.dedup_sent.extend(sent_earlier.iter().cloned());
    }
    let refused: Vec<Claim> = refused.into_iter().map(|(_, c)| c).collect();
    stores.claims.release_dedup(app, &refused).await?;
    // The charges of every push sent, now or before: a redelivery gives none of them back.
    if limits.limit.is_some() {
        routed.limit_sent = (0..pushes.len())
            .filter(|&i| matches!(verdict[i], None | Some("")))
            .map(|i| claim_of(&pushes[i]))
            .chain(sent_earlier)
            .collect();
    }
    // So is a cooldown whose notification reached no device (every push refused by the
    // limits): held, the user would get nothing of that message for the whole cooldown. One
    // with a push in Kafka from an earlier attempt reached a device, though that device may
    // have left the user since and the rest be refused now.
    let reached: HashSet<&str> = pushes
        .iter()
        .zip(&verdict)
        .filter(|(_, v)| matches!(v, None | Some("")))
        .map(|((n, _), _)| n.notif_id.as_str())
        .collect();
    let (kept, unsent): (Vec<Claim>, Vec<Claim>) = std::mem::take(&mut routed.cooldown_sent)
        .into_iter()
        .partition(|c| {
            let id = format!("{}.{}", c.owner, c.message);
            reached.contains(id.as_str()) || earlier.contains_key(id.as_str())
        });
    routed.cooldown_sent = kept;
    routed.cooldown_sent.extend(kept_cooldowns);
    stores.claims.release_cooldowns(app, &unsent).await?;
    for (((n, d), verdict), pushed) in pushes.iter().zip(verdict).zip(pushed) {
        match verdict {
            None => {
                counts.pushes += 1;
                records.push(Outgoing {
                    notif_id: n.notif_id.clone(),
                    record: Record {
                        topic: format!("push-{app}_{}", d.platform),
                        key: d.token.clone(),
                        payload: outbound::push_message(d, n, &settings.deeplink_base, now_ms),
                    },
                });
            }
            // An earlier attempt of this batch got it into Kafka, and its counts were never
            // kept: a push. Else an earlier delivery sent it and counted it.
            Some("") if pushed => counts.pushes += 1,
            Some("") => counts.already_sent += 1,
            Some(reason) => {
                counts.rate_limited += 1;
                records.push(Outgoing {
                    notif_id: n.notif_id.clone(),
                    record: Record {
                        topic: outbound::feedback_topic(
                            &settings.feedback_template,
                            app,
                            d.platform,
                        ),
                        key: d.token.clone(),
                        payload: outbound::not_sent_feedback(app, d, n, reason, now_ms),
                    },
                });
            }
        }
    }
    routed.records = records;
    routed.counts = counts;
    Ok(routed)
}

/// Gives back the unsent cooldown claims an earlier attempt of the batch won for (event,
/// message) pairs that this attempt skipped before the claims: the attempt failed after the
/// claims (Kafka down, a later statement), and by the retry the event expired, the user lost
/// their last device, opted out, or the message changed. Held, the user would get nothing of
/// that message for the whole cooldown, although nothing was sent. Only claims still the
/// event's own and unsent are touched: on a first attempt there are none. Before the claims,
/// so that another event of the batch for the same pair may win it now; the same holds for
/// each device's dedup claims and limit charges, given back before theirs.
async fn give_back_cooldowns(
    claims: &Claims,
    app: &str,
    unclaimed: &[(&Event, &Message)],
) -> Result<(), StoreError> {
    let cooldowns: Vec<Claim> = unclaimed
        .iter()
        .filter(|(_, m)| m.cooldown_s > 0)
        .map(|(e, m)| cooldown_claim(e, m))
        .collect();
    claims.release_cooldowns(app, &cooldowns).await
}

/// The cooldown claim of an event's notification of a message.
fn cooldown_claim(event: &Event, message: &Message) -> Claim {
    Claim {
        subject: event.user_id.to_string(),
        message: message.name.clone(),
        owner: event.uid.clone(),
    }
}

/// The id of an event's notification of a message.
fn notif_id(event: &Event, message: &Message) -> String {
    format!("{}.{}", event.uid, message.name)
}

/// The pushes of `produced` (not its `rate_limited` feedback records), by notif_id: the
/// tokens each reached. Nothing on a batch's first attempt but the app's earlier phases.
fn pushes_in_kafka<'p>(produced: &'p Produced, app: &str) -> HashMap<&'p str, HashSet<&'p str>> {
    let mut pushes: HashMap<&str, HashSet<&str>> = HashMap::new();
    if produced.is_empty() {
        return pushes;
    }
    let topics = outbound::ALL_PLATFORMS.map(|p| format!("push-{app}_{p}"));
    for (topic, token, notif_id) in produced {
        if topics.contains(topic) {
            pushes
                .entry(notif_id.as_str())
                .or_default()
                .insert(token.as_str());
        }
    }
    pushes
}

/// The (device, message) claims the notifications of `pairs` would take on the user's devices.
fn device_claims(pairs: &[(&Event, &Message)], by_user: &HashMap<i64, Vec<&Device>>) -> Vec<Claim> {
    pairs
        .iter()
        .flat_map(|(e, m)| {
            by_user
                .get(&e.user_id)
                .into_iter()
                .flatten()
                .map(move |d| Claim {
                    subject: d.token.clone(),
                    message: m.name.clone(),
                    owner: notif_id(e, m),
                })
        })
        .collect()
}

/// Pushkin's opt-out event (4006): each pair's value names a message (its numeric id or its
/// name); the event's list replaces the user's. The lists of a batch, newest event last.
pub fn opt_out_list(pairs: &BTreeMap<String, String>) -> Vec<String> {
    pairs
        .values()
        .map(|v| v.trim().to_owned())
        // Only what can be a message's name: anything else opts out of nothing.
        .filter(|v| super::messages::valid_name(v))
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A filled text within MAX_TEXT bytes whose quotes JSON escapes past every payload limit
    /// is too long to send (`pusher run` would fail it on every device); the same length of
    /// plain text fits.
    #[test]
    fn a_filled_text_is_measured_as_the_push_carries_it() {
        let event = Event {
            uid: "0192e4a0-0000-7000-8000-000000000000".into(),
            user_id: 7,
            event_id: 1,
            pairs: BTreeMap::new(),
            at_ms: 0,
        };
        let message: Message = serde_json::from_value(serde_json::json!({
            "name": "gift", "event_id": 1, "screen": "shop",
            "localizations": [{"language_id": 1, "title": "t", "text": "x"}]
        }))
        .unwrap();
        let quotes = "\"".repeat(2500);
        assert!(quotes.len() <= outbound::MAX_TEXT);
        assert!(!fits(&event, &message, "t", &quotes, "game"));
        assert!(fits(&event, &message, "t", &"x".repeat(2500), "game"));
        assert!(fits(&event, &message, "t", "\"quoted\"", "game"));
        // Past the quick bound, built and read: 3,802 bytes escaped still fit.
        let near = format!("{}{}", "x".repeat(3000), "\n".repeat(400));
        assert!(!outbound::surely_fits([near.as_str()]));
        assert!(fits(&event, &message, "t", &near, "game"));
    }
}
