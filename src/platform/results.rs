//! `pusher results`: the consumer group on the feedback topics (DESIGN.md §10). Every message
//! carrying `metadata.notif_id` gets a feedback record from `pusher run` (successes too, with
//! `metadata.outcome` and `metadata.reason`); each becomes one row per (notification, token) in
//! `pusher_results`, in batched upserts where an older verdict never overwrites a newer one.
//! Records without a notif_id (the seed's own traffic) are counted and skipped. A
//! `token_invalid` verdict also removes the token from the device registry, unless it was
//! registered again after the message was consumed. An app's webhook is called once per
//! notification when it is complete: at its last verdict, or, for one that reached no device,
//! when the router counted 0, or, for one whose verdicts came before the API had recorded or
//! confirmed it, once it has (both looked for every second).

use super::consume::{self, GroupSettings};
use super::store::{Completed, ResultRow, Store, StoreError, HOOKED_FOR};
use super::webhook::{self, Webhooks};
use parking_lot::Mutex;
use rdkafka::message::BorrowedMessage;
use rdkafka::Message;
use serde::Serialize;
use serde_json::Value;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum ResultsError {
    #[error("cannot create the Kafka consumer: {0}")]
    Consumer(#[source] rdkafka::error::KafkaError),
}

#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct ResultCounts {
    pub consumed: u64,
    /// Rows written (a redelivered record writes its row again).
    pub stored: u64,
    /// Feedback of messages without a notif_id.
    pub untracked: u64,
    /// Records that are not feedback JSON, or whose row PostgreSQL would refuse.
    pub malformed: u64,
    /// Registry devices removed for an invalid-token verdict.
    pub devices_removed: u64,
    /// Webhook calls started (notifications complete).
    pub webhooks: u64,
}

/// The regex of every feedback topic the template `push-{app}-{platform}-feedbacks` makes.
pub fn feedback_pattern(template: &str) -> String {
    let escaped = regex::escape(template)
        .replace(r"\{app\}", "[A-Za-z0-9_-]+")
        .replace(r"\{platform\}", "(apns|gcm|webpush)");
    format!("^{escaped}$")
}

/// A feedback record's result row, if it is about a tracked notification.
pub fn result_of(record: &Value) -> Option<ResultRow> {
    let metadata = record.get("metadata")?;
    let notif_id = metadata.get("notif_id")?.as_str()?.to_owned();
    let app = metadata.get("game")?.as_str()?.to_owned();
    let (platform, token) = match (
        record.get("DeviceToken"),
        record.get("from"),
        record.get("endpoint"),
    ) {
        (Some(t), _, _) => ("apns", t.as_str()?),
        (None, Some(t), _) => ("gcm", t.as_str()?),
        (None, None, Some(t)) => ("webpush", t.as_str()?),
        _ => return None,
    };
    let text = |v: Option<&Value>| v.and_then(Value::as_str).unwrap_or_default().to_owned();
    // Records from before `metadata.outcome` existed: delivered when nothing says otherwise.
    let failed = record.get("error").is_some_and(|e| !e.is_null())
        || record.get("Sent").is_some_and(|s| s == false)
        || record.get("sent").is_some_and(|s| s == false);
    let outcome = metadata
        .get("outcome")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .unwrap_or_else(|| if failed { "failed" } else { "delivered" }.to_owned());
    Some(ResultRow {
        app,
        notif_id,
        token: token.to_owned(),
        platform: platform.to_owned(),
        outcome,
        reason: text(metadata.get("reason")),
        // `consumedAtMs` where the pusher wrote it; other producers' seconds or milliseconds.
        at_ms: verdict_time_ms(
            metadata
                .get("consumedAtMs")
                .or_else(|| metadata.get("timestamp"))
                .and_then(Value::as_i64)
                .unwrap_or_default(),
        ),
        // Unix ms, as APNs wrote it; none at 0 or before (it would keep the token for good),
        // and never after now, as `at_ms`.
        invalid_since_ms: metadata
            .get("invalidSince")
            .and_then(Value::as_i64)
            .filter(|ms| *ms > 0)
            .map(|ms| ms.min(crate::clock::unix_ms())),
    })
}

/// A verdict's time in Unix milliseconds, from any producer of the feedback topics: seconds
/// and milliseconds are both taken, and the time is kept between 0 and now. PostgreSQL
/// refuses a timestamp past 294276 AD (the record failed its batch on every retry), and one
/// from the future would keep every later verdict for the token from replacing it. Not
/// rounded to seconds: of two verdicts within a second, the older won the tie.
fn verdict_time_ms(at: i64) -> i64 {
    let now = crate::clock::unix_ms();
    let ms = if at > 100_000_000_000 {
        at
    } else {
        at.saturating_mul(1000)
    };
    ms.clamp(0, now)
}

/// Runs until `stop`; returns what it did.
pub async fn run(
    settings: GroupSettings,
    store: Store,
    webhooks: Webhooks,
    stop: CancellationToken,
) -> Result<ResultCounts, ResultsError> {
    let consumer = consume::consumer(&settings, consume::Membership::default())
        .map_err(ResultsError::Consumer)?;
    // A process without an app's hook hands the notifications its partitions complete over
    // to one that has it (`Completion::elsewhere`). The log shows which hooks this one has.
    let hooked: Vec<&str> = webhooks.apps().collect();
    tracing::info!(webhook_apps = ?hooked, "Webhooks (results.webhooks).");
    let completion = Completion {
        store: store.clone(),
        webhooks,
        elsewhere: Arc::default(),
        warned: Arc::default(),
    };
    // Before the first batch: a verdict completing another process's app must be handed over.
    completion.share_hooks().await;
    let sweep = tokio::spawn(completion.clone().sweep(stop.clone()));
    let mut writer = Writer {
        store,
        completion,
        counts: ResultCounts::default(),
    };
    consume::batches(
        &consumer,
        settings.batch_size,
        "results",
        &stop,
        &mut writer,
    )
    .await;
    let mut counts = writer.counts;
    counts.webhooks += sweep.await.unwrap_or_default();
    writer
        .completion
        .webhooks
        .stop(&writer.completion.store)
        .await;
    tracing::info!(counts = %crate::telemetry::Json(&counts), "Results stopped.");
    Ok(counts)
}

/// How often the sweep looks for notifications that completed without a verdict to say so.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// The sweep's PostgreSQL errors, logged once every 10 s per kind with the count held back:
/// once a second each, an outage wrote ~2 lines a second.
fn store_errors() -> &'static crate::telemetry::Throttle {
    static ERRORS: std::sync::OnceLock<crate::telemetry::Throttle> = std::sync::OnceLock::new();
    ERRORS.get_or_init(|| crate::telemetry::Throttle::new(Duration::from_secs(10)))
}
/// How often the sweep deletes old tombstones of invalid tokens.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);
/// How long a token refused by its service stays refused to older registrations: far past
/// the requests topic's retention (Kafka's default is 7 days), so that no login still
/// waiting there can be older than a tombstone already deleted.
const DEAD_TOKENS_KEPT: Duration = Duration::from_secs(30 * 24 * 3600);
/// How long a notification whose verdicts came before it was ready waits to be ready, from
/// its latest verdict (`Store::claim_ready`): well past the longest an API request's claim
/// stays pending before it goes stale (its produce timeout plus the statement timeout, ~75 s
/// by default), so a slow confirm still gets its webhook.
const READY_WITHIN: Duration = Duration::from_secs(600);
/// At most this many of those that became ready are looked at a second.
const READY_MAX: i64 = 1_000;
/// At most this many abandoned webhook calls are claimed again a second.
const ABANDONED_MAX: i64 = 1_000;

/// Calls an app's webhook once per notification, when it is complete.
#[derive(Clone)]
struct Completion {
    store: Store,
    webhooks: Webhooks,
    /// Apps that another results process has a hook for and this one has not (its
    /// `results.webhooks` differs): their completed notifications are claimed and released
    /// at once, for that process's sweep to call (as a stopped process's calls are). Before,
    /// they were never called, and nothing said so.
    elsewhere: Arc<parking_lot::RwLock<HashSet<String>>>,
    /// Apps whose hand-over was logged (once each, not each batch).
    warned: Arc<Mutex<HashSet<String>>>,
}

impl Completion {
    /// Calls the webhook of each of `pairs` that is now complete; returns the calls started.
    /// `recount`: those whose running count may be short (`Store::store_results`). Those not
    /// ready yet (no row, or a pending one) were kept in PostgreSQL with their verdicts, for
    /// the sweep (`Store::claim_ready`).
    async fn check(
        &self,
        pairs: Vec<(String, String)>,
        recount: &HashSet<(String, String)>,
    ) -> Result<u64, StoreError> {
        let complete = self.store.claim_completed(&pairs, recount).await?;
        Ok(self.dispatch(complete).await)
    }

    /// Calls the hooks of `complete` (claimed) that this process has, and hands the others
    /// over; returns the calls started.
    async fn dispatch(&self, complete: Vec<Completed>) -> u64 {
        let (complete, handed): (Vec<Completed>, Vec<Completed>) = complete
            .into_iter()
            .partition(|c| self.webhooks.has(&c.app));
        let started = self.call_all(&complete).await;
        self.hand_over(&handed).await;
        started
    }

    /// Announces this process's hooked apps, and reads those hooked elsewhere.
    async fn share_hooks(&self) {
        let apps: Vec<&str> = self.webhooks.apps().collect();
        if let Err(e) = self.store.announce_webhooks(&apps).await {
            if let Some(held_back) = store_errors().allow("announce") {
                tracing::warn!(error = %e, held_back, "Cannot announce this process's webhooks; retrying.");
            }
        }
        match self.store.webhook_apps(HOOKED_FOR).await {
            Ok(hooked) => {
                *self.elsewhere.write() = hooked
                    .into_iter()
                    .filter(|app| !self.webhooks.has(app))
                    .collect();
            }
            Err(e) => {
                if let Some(held_back) = store_errors().allow("webhook apps") {
                    tracing::warn!(error = %e, held_back, "Cannot read which apps have webhooks; retrying.");
                }
            }
        }
    }

    /// How many of `app`'s abandoned calls the sweep takes: no more than it can start now.
    fn abandoned_limit(&self, app: &str) -> i64 {
        i64::try_from(self.webhooks.free_slots(app))
            .unwrap_or(ABANDONED_MAX)
            .min(ABANDONED_MAX)
    }

    /// Whether this process calls, or hands over, `app`'s webhooks.
    fn tracks(&self, app: &str) -> bool {
        if self.webhooks.has(app) || self.elsewhere.read().contains(app) {
            return true;
        }
        // A hook set for the app in another case is never called: said once, not silent.
        if let Some(configured) = self.webhooks.other_case(app) {
            if self.warned.lock().insert(app.to_owned()) {
                tracing::warn!(app, configured,
                    "results.webhooks names this app in another case (environment variables name apps in lower case): its webhook is not called; set it in the config file under the app's exact name.");
            }
        }
        false
    }

    /// Releases the claims of `handed` (complete, with their hook in another process) for
    /// that process's sweep. Claimed and not released (PostgreSQL failing here), they are
    /// called after the lease.
    async fn hand_over(&self, handed: &[Completed]) {
        if handed.is_empty() {
            return;
        }
        let pairs: Vec<(String, String)> = handed
            .iter()
            .map(|c| (c.app.clone(), c.notif_id.clone()))
            .collect();
        match self.store.release_webhooks(&pairs, webhook::LEASE).await {
            Ok(()) => {
                metrics::counter!(crate::telemetry::names::WEBHOOKS, "result" => "handed_over")
                    .increment(handed.len() as u64);
                let mut warned = self.warned.lock();
                for c in handed {
                    if warned.insert(c.app.clone()) {
                        tracing::warn!(app = c.app,
                            "Another results process has this app's webhook and this one has none (results.webhooks should match): its completed notifications are handed over to it (pusher_webhooks_total{{result=\"handed_over\"}}).");
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, notifications = handed.len(),
                "Cannot hand webhook calls over; they are made after the lease."),
        }
    }

    /// Calls the hooks of `complete` (claimed); how many started. Those past the bound on
    /// calls in progress are released for the sweep (not released, PostgreSQL failing: made
    /// after the lease).
    async fn call_all(&self, complete: &[Completed]) -> u64 {
        let mut deferred = Vec::new();
        for c in complete {
            if !self
                .webhooks
                .spawn_call(&self.store, &c.app, &c.notif_id, body(c))
            {
                deferred.push((c.app.clone(), c.notif_id.clone()));
            }
        }
        if !deferred.is_empty() {
            metrics::counter!(crate::telemetry::names::WEBHOOKS, "result" => "deferred")
                .increment(deferred.len() as u64);
            if let Err(e) = self.store.release_webhooks(&deferred, webhook::LEASE).await {
                tracing::warn!(error = %e, notifications = deferred.len(),
                    "Cannot hand webhook calls back; they are made after the lease.");
            }
        }
        (complete.len() - deferred.len()) as u64
    }

    /// Every second until `stop`: this process's hooked apps announced and the others'
    /// read, the notifications that reached no device (complete as soon as the router counted
    /// 0, with no verdict ever to trigger `check`), the notifications whose verdicts came
    /// before they were ready and that are ready now (kept in PostgreSQL, so a restart loses
    /// none), and the calls a process that died or handed them over left. Returns the calls it
    /// started.
    async fn sweep(self, stop: CancellationToken) -> u64 {
        let apps: Vec<&str> = self.webhooks.apps().collect();
        let mut calls = 0;
        // The first prune an hour after start (tests never meet one; a fleet restarting does
        // not prune at each start).
        let mut last_prune = Instant::now();
        loop {
            tokio::select! {
                _ = stop.cancelled() => return calls,
                _ = tokio::time::sleep(SWEEP_EVERY) => {}
            }
            self.share_hooks().await;
            match self.store.claim_reached_none(&apps).await {
                Ok(complete) => calls += self.call_all(&complete).await,
                Err(e) => {
                    if let Some(held_back) = store_errors().allow("reached none") {
                        tracing::warn!(error = %e, held_back, "Cannot look for notifications that reached no device; retrying.");
                    }
                }
            }
            // Those of the apps handed over too: this process hands them over.
            let mut tracked: Vec<String> = self.elsewhere.read().iter().cloned().collect();
            tracked.extend(apps.iter().map(|a| a.to_string()));
            let tracked: Vec<&str> = tracked.iter().map(String::as_str).collect();
            match self
                .store
                .claim_ready(&tracked, READY_WITHIN, READY_MAX)
                .await
            {
                Ok(complete) => calls += self.dispatch(complete).await,
                Err(e) => {
                    if let Some(held_back) = store_errors().allow("ready") {
                        tracing::warn!(error = %e, held_back, "Cannot look for notifications that became ready; retrying.");
                    }
                }
            }
            // App by app, each as far as its own calls allow: one app's hook that is down
            // (its calls deferred, all of them, again and again) takes no other app's turn.
            for app in &apps {
                let limit = self.abandoned_limit(app);
                if limit == 0 {
                    continue;
                }
                match self
                    .store
                    .claim_abandoned_webhooks(app, webhook::LEASE, limit)
                    .await
                {
                    Ok(abandoned) => calls += self.call_all(&abandoned).await,
                    Err(e) => {
                        if let Some(held_back) = store_errors().allow("abandoned") {
                            tracing::warn!(error = %e, held_back, "Cannot look for abandoned webhook calls; retrying.");
                        }
                        break;
                    }
                }
            }
            if last_prune.elapsed() >= PRUNE_EVERY {
                last_prune = Instant::now();
                // On its own: after a mass invalidation it may take a while, and the sweep's
                // webhook calls must not wait for it.
                let store = self.store.clone();
                tokio::spawn(async move {
                    match store.prune_dead_tokens(DEAD_TOKENS_KEPT).await {
                        Ok(0) => {}
                        Ok(n) => {
                            tracing::info!(pruned = n, "Old tombstones of invalid tokens deleted.")
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "Cannot delete old tombstones of invalid tokens; retrying in an hour.")
                        }
                    }
                });
            }
        }
    }
}

/// The webhook's body: the notification, its targets and its verdicts counted by outcome.
fn body(c: &Completed) -> Vec<u8> {
    serde_json::json!({"app": c.app, "notif_id": c.notif_id, "targets": c.targets,
                       "counts": c.counts})
    .to_string()
    .into_bytes()
}

struct Writer {
    store: Store,
    completion: Completion,
    counts: ResultCounts,
}

impl Writer {
    /// Calls the webhook of every notification of `rows` that is now complete; `uncounted`:
    /// those whose running count may be short (`Store::store_results`).
    async fn notify(
        &mut self,
        rows: &[ResultRow],
        uncounted: Vec<(String, String)>,
    ) -> Result<(), String> {
        let mut pairs: Vec<(String, String)> = rows
            .iter()
            .filter(|r| self.completion.tracks(&r.app))
            .map(|r| (r.app.clone(), r.notif_id.clone()))
            .collect();
        pairs.sort();
        pairs.dedup();
        if pairs.is_empty() {
            return Ok(());
        }
        let recount: HashSet<(String, String)> = uncounted.into_iter().collect();
        self.counts.webhooks += self
            .completion
            .check(pairs, &recount)
            .await
            .map_err(|e| e.to_string())?;
        Ok(())
    }
}

impl consume::Batches for Writer {
    type Done = ResultCounts;

    async fn handle(
        &mut self,
        batch: &[BorrowedMessage<'_>],
        _: &consume::Lease<'_>,
    ) -> Result<ResultCounts, String> {
        let (rows, mut done) = read(batch);
        let uncounted = self
            .store
            .store_results(&rows)
            .await
            .map_err(|e| e.to_string())?;
        done.devices_removed = self
            .store
            .forget_invalid_tokens(&rows)
            .await
            .map_err(|e| e.to_string())?;
        // Webhook calls are counted as they start (in `notify`): a redo does not call again.
        self.notify(&rows, uncounted).await?;
        Ok(done)
    }

    fn committed(&mut self, done: ResultCounts) {
        let c = &mut self.counts;
        c.devices_removed += done.devices_removed;
        c.consumed += done.consumed;
        c.stored += done.stored;
        c.untracked += done.untracked;
        c.malformed += done.malformed;
        metrics::counter!(crate::telemetry::names::RESULTS).increment(done.stored);
    }
}

/// Whether PostgreSQL can store the row: no NUL (it refuses one in text, and the record
/// holds any string the message's metadata had) and a key that fits a B-tree entry (~2.7 KB).
/// A row it would refuse would fail its whole batch again on every retry.
fn storable(row: &ResultRow) -> bool {
    let key = [&row.app, &row.notif_id, &row.token];
    key.iter().map(|s| s.len()).sum::<usize>() <= 2400
        && [
            &row.app,
            &row.notif_id,
            &row.token,
            &row.outcome,
            &row.reason,
        ]
        .iter()
        .all(|s| !s.contains('\0'))
}

fn read(batch: &[BorrowedMessage<'_>]) -> (Vec<ResultRow>, ResultCounts) {
    let mut counts = ResultCounts {
        consumed: batch.len() as u64,
        ..ResultCounts::default()
    };
    let mut rows = Vec::with_capacity(batch.len());
    for m in batch {
        let Some(record) = m
            .payload()
            .and_then(|p| serde_json::from_slice::<Value>(p).ok())
        else {
            counts.malformed += 1;
            continue;
        };
        match result_of(&record) {
            Some(row) if storable(&row) => rows.push(row),
            Some(_) => counts.malformed += 1,
            None => counts.untracked += 1,
        }
    }
    counts.stored = rows.len() as u64;
    (rows, counts)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_default_template_matches_every_app() {
        let re = regex::Regex::new(&feedback_pattern("push-{app}-{platform}-feedbacks")).unwrap();
        assert!(re.is_match("push-my_game-apns-feedbacks"));
        assert!(!re.is_match("push-game-requests"));
    }

    #[test]
    fn rows_from_both_platforms() {
        let apns = json!({"Sent": false, "Reason": "Unregistered", "DeviceToken": "t1",
            "metadata": {"notif_id": "n", "game": "g", "timestamp": 5, "outcome": "token_invalid",
                         "reason": "Unregistered"}});
        let row = result_of(&apns).unwrap();
        assert_eq!(
            (
                row.platform.as_str(),
                row.outcome.as_str(),
                row.reason.as_str(),
                row.at_ms
            ),
            ("apns", "token_invalid", "Unregistered", 5_000)
        );
        assert_eq!(row.invalid_since_ms, None);
        // APNs' 410 timestamp, as the pusher's record carries it.
        let mut since = apns.clone();
        since["metadata"]["invalidSince"] = json!(4_500);
        assert_eq!(result_of(&since).unwrap().invalid_since_ms, Some(4_500));
        let gcm = json!({"from": "t2", "metadata": {"notif_id": "n", "game": "g", "timestamp": 6}});
        assert_eq!(result_of(&gcm).unwrap().outcome, "delivered");
        assert!(result_of(&json!({"from": "t", "metadata": {"game": "g"}})).is_none());
        let web = json!({"endpoint": "https://push.example.com/x", "sent": false, "status": 410,
            "outcome": "token_invalid", "metadata": {"notif_id": "n", "game": "g", "timestamp": 7,
            "outcome": "token_invalid", "reason": "gone"}});
        let row = result_of(&web).unwrap();
        assert_eq!(
            (
                row.platform.as_str(),
                row.token.as_str(),
                row.outcome.as_str()
            ),
            ("webpush", "https://push.example.com/x", "token_invalid")
        );
        let re = regex::Regex::new(&feedback_pattern("push-{app}-{platform}-feedbacks")).unwrap();
        assert!(re.is_match("push-site-webpush-feedbacks"));
    }

    #[test]
    fn rows_postgresql_would_refuse_are_not_stored() {
        let row = |notif_id: &str, token: &str| {
            result_of(&json!({"from": token, "metadata": {"notif_id": notif_id, "game": "g"}}))
                .unwrap()
        };
        assert!(storable(&row("n", &"t".repeat(2000))));
        assert!(!storable(&row("n", &"t".repeat(3000))));
        assert!(!storable(&row("n\u{0}", "t")));
    }

    /// A verdict's time comes to the millisecond from the pusher's record: a device
    /// registered 250 ms before the message was consumed, in the same second, is older than
    /// the verdict, and its token deleted (in whole seconds it looked newer, and stayed).
    #[test]
    fn a_pushers_verdict_keeps_its_milliseconds() {
        use crate::pipeline::feedback::{gcm_record, FeedbackRecord, MessageContext};
        let ctx = MessageContext {
            app: "g".into(),
            token: "t".to_owned(),
            metadata: json!({"notif_id": "n-1"})
                .as_object()
                .map(crate::push::message::Metadata::from)
                .unwrap_or_default(),
            consumed_at_ms: 1_731_000_000_750,
            ..Default::default()
        };
        let outcome = crate::push::Outcome::TokenInvalid {
            reason: "NotRegistered".to_owned(),
            timestamp_ms: None,
        };
        let record = FeedbackRecord::Gcm(gcm_record(&outcome, &ctx));
        let value: Value = serde_json::from_slice(&record.to_json()).unwrap();
        let row = result_of(&value).unwrap();
        assert_eq!(
            (row.outcome.as_str(), row.at_ms),
            ("token_invalid", 1_731_000_000_750)
        );
    }

    /// Times PostgreSQL would refuse, seconds, and times from the future are made storable
    /// milliseconds that never outrank a later verdict; milliseconds are kept.
    #[test]
    fn verdict_times_are_milliseconds_up_to_now() {
        let now = crate::clock::unix_ms();
        let at = |timestamp: i64| {
            result_of(
                &json!({"from": "t", "metadata": {"notif_id": "n", "game": "g",
                "timestamp": timestamp}}),
            )
            .unwrap()
            .at_ms
        };
        assert_eq!(at(1_700_000_000), 1_700_000_000_000);
        assert_eq!(at(1_700_000_000_123), 1_700_000_000_123);
        assert_eq!(at(-210_000_000_000), 0);
        for future in [now / 1000 + 86_400, 1_700_000_000_000_000] {
            assert!((now..=now + 5000).contains(&at(future)), "{future}");
        }
    }
}
