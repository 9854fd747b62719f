//! `pusher results`: the consumer group on the feedback topics (DESIGN.md §10). Every message
//! carrying `metadata.notif_id` gets a feedback record from `pusher run` (successes too, with
//! `metadata.outcome` and `metadata.reason`); each becomes one row per (notification, token) in
//! `pusher_results`, in batched upserts where an older verdict never overwrites a newer one.
//! Records without a notif_id (the seed's own traffic) are counted and skipped. A
//! `token_invalid` verdict also removes the token from the device registry, unless it was
//! registered again after the message was consumed.

use super::consume::{self, GroupSettings};
use super::store::{ResultRow, Store};
use super::webhook::Webhooks;
use rdkafka::message::BorrowedMessage;
use rdkafka::Message;
use serde::Serialize;
use serde_json::Value;
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
    /// Records that are not feedback JSON.
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
        at: metadata
            .get("timestamp")
            .and_then(Value::as_i64)
            .unwrap_or_default(),
    })
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
    let mut writer = Writer {
        store,
        webhooks,
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
    let counts = writer.counts;
    tracing::info!(counts = %crate::telemetry::Json(&counts), "Results stopped.");
    Ok(counts)
}

struct Writer {
    store: Store,
    webhooks: Webhooks,
    counts: ResultCounts,
}

impl Writer {
    /// Calls the webhook of every notification of `rows` that is now complete.
    async fn notify(&mut self, rows: &[ResultRow]) -> Result<(), String> {
        if self.webhooks.is_empty() {
            return Ok(());
        }
        let mut pairs: Vec<(String, String)> = rows
            .iter()
            .filter(|r| self.webhooks.has(&r.app))
            .map(|r| (r.app.clone(), r.notif_id.clone()))
            .collect();
        pairs.sort();
        pairs.dedup();
        let complete = self
            .store
            .claim_completed(&pairs)
            .await
            .map_err(|e| e.to_string())?;
        for (app, notif_id, targets) in complete {
            let counts = self
                .store
                .result_counts(&app, &notif_id)
                .await
                .map_err(|e| e.to_string())?;
            let body = serde_json::json!({"app": app, "notif_id": notif_id,
                "targets": targets, "counts": counts});
            self.counts.webhooks += 1;
            self.webhooks
                .spawn_call(&app, &notif_id, body.to_string().into_bytes());
        }
        Ok(())
    }
}

impl consume::Batches for Writer {
    async fn handle(&mut self, batch: &[BorrowedMessage<'_>]) -> Result<(), String> {
        let (rows, done) = read(batch);
        self.store
            .store_results(&rows)
            .await
            .map_err(|e| e.to_string())?;
        let forgotten = self
            .store
            .forget_invalid_tokens(&rows)
            .await
            .map_err(|e| e.to_string())?;
        self.notify(&rows).await?;
        let c = &mut self.counts;
        c.devices_removed += forgotten;
        c.consumed += done.consumed;
        c.stored += done.stored;
        c.untracked += done.untracked;
        c.malformed += done.malformed;
        metrics::counter!(crate::telemetry::names::RESULTS).increment(done.stored);
        Ok(())
    }
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
            Some(row) => rows.push(row),
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
                row.at
            ),
            ("apns", "token_invalid", "Unregistered", 5)
        );
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
}
