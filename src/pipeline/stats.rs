//! Stats for every final outcome: StatsD with the seed's names (`sent`, `ack`, `failed` with
//! `reason`; tags platform and game) and the Prometheus metrics (telemetry::names).

use super::run::{Observer, OutcomeEvent};
use crate::push::{Outcome, Platform};
use crate::telemetry::{names, StatsdBatch};
use foldhash::HashMap; // Hashed per outcome: see pipeline::message.
use metrics::{Counter, Histogram};
use parking_lot::Mutex;
use std::sync::{Arc, OnceLock};

/// One app's `pusher_outcomes_total` handles: by outcome (its [`Outcome::index`]), then reason.
type AppOutcomes = [HashMap<String, Counter>; Outcome::CLASSES.len()];

/// Distinct reasons an app's outcome class is labelled with; later ones count as
/// [`OTHER_REASON`]. Reasons are mostly the vendors' fixed codes, but some carry values (a
/// payload's size), and each label value is a series kept for the life of the process.
const MAX_REASONS: usize = 64;
const OTHER_REASON: &str = "other";

pub struct StatsObserver {
    platform: Platform,
    statsd: Option<Arc<StatsdBatch>>,
    // Prometheus handles, made on first use and kept: building a labelled handle per message
    // (its labels allocated, a registry lookup) took ~5 % of `pusher run`'s CPU. On first use
    // the recorder is installed: the pipeline starts after `/metrics`.
    send_latency: OnceLock<Histogram>,
    outcomes: Mutex<HashMap<String, AppOutcomes>>,
}

impl StatsObserver {
    pub fn new(platform: Platform, statsd: Option<Arc<StatsdBatch>>) -> Self {
        StatsObserver {
            platform,
            statsd,
            send_latency: OnceLock::new(),
            outcomes: Mutex::default(),
        }
    }

    /// Counts the outcome; returns the reason label it was counted under (`reason`, or
    /// `other` once the app's outcome class has [`MAX_REASONS`] of them).
    fn count_outcome<'a>(&self, app: &str, outcome: &Outcome, reason: &'a str) -> &'a str {
        let mut apps = self.outcomes.lock();
        if !apps.contains_key(app) {
            apps.insert(app.to_string(), AppOutcomes::default());
        }
        let Some(by_class) = apps.get_mut(app) else {
            return reason;
        };
        let by_reason = &mut by_class[outcome.index()];
        let label = if by_reason.contains_key(reason) || by_reason.len() < MAX_REASONS {
            reason
        } else {
            OTHER_REASON
        };
        if let Some(counter) = by_reason.get(label) {
            counter.increment(1);
            return label;
        }
        let counter = metrics::counter!(names::OUTCOMES,
            "platform" => self.platform.as_str(), "game" => app.to_string(),
            "outcome" => outcome.class(), "reason" => label.to_string());
        counter.increment(1);
        by_reason.insert(label.to_string(), counter);
        label
    }
}

impl Observer for StatsObserver {
    fn on_outcome(&self, e: &OutcomeEvent<'_>) {
        let platform = self.platform.as_str();
        let reason = self.count_outcome(e.app, e.outcome, e.outcome.reason().unwrap_or(""));
        if let Some(latency) = e.send_latency {
            self.send_latency
                .get_or_init(|| metrics::histogram!(names::SEND_LATENCY, "platform" => platform))
                .record(latency.as_secs_f64());
        }
        let Some(statsd) = &self.statsd else { return };
        let tags = || {
            vec![
                ("platform", platform.to_string()),
                ("game", e.app.to_string()),
            ]
        };
        // The seed counted `sent` for what reached the sender; malformed and expired messages
        // never do.
        let sent = !matches!(e.outcome, Outcome::Malformed { .. } | Outcome::Expired);
        if sent {
            statsd.count(names::STATSD_SENT, tags());
        }
        if e.outcome.is_delivered() {
            statsd.count(names::STATSD_ACK, tags());
        } else {
            let reason = if reason.is_empty() {
                e.outcome.class()
            } else {
                reason
            };
            let mut tags = tags();
            tags.push(("reason", reason.to_string()));
            statsd.count(names::STATSD_FAILED, tags);
        }
        if let Some(latency) = e.send_latency {
            let mut tags = tags();
            tags.push(("client", platform.to_string()));
            statsd.time(names::STATSD_LATENCY, tags, latency.as_millis() as u64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn reasons_with_values_do_not_grow_the_series_without_bound() {
        let observer = StatsObserver::new(Platform::Gcm, None);
        for size in 0..1000 {
            let reason = format!("payload is {size} bytes");
            let outcome = Outcome::Malformed { reason };
            observer.count_outcome("game", &outcome, outcome.reason().unwrap());
        }
        let rejected = Outcome::Rejected {
            reason: "BadTopic".into(),
        };
        assert_eq!(
            observer.count_outcome("game", &rejected, "BadTopic"),
            "BadTopic",
            "another outcome class has its own reasons"
        );
        let apps = observer.outcomes.lock();
        let malformed = &apps["game"][Outcome::Malformed {
            reason: String::new(),
        }
        .index()];
        assert_eq!(malformed.len(), MAX_REASONS + 1);
        assert!(malformed.contains_key(OTHER_REASON));
        assert!(malformed.contains_key("payload is 0 bytes"));
    }

    #[test]
    fn statsd_lines_use_the_seed_names_and_tags() {
        let server = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        server
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let client =
            crate::telemetry::statsd(&server.local_addr().unwrap().to_string(), "push").unwrap();
        let batch = Arc::new(StatsdBatch::new(client));
        let observer = StatsObserver::new(Platform::Apns, Some(batch.clone()));
        let event = |outcome: &Outcome| {
            observer.on_outcome(&OutcomeEvent {
                topic: "push-game_apns",
                partition: 0,
                offset: 0,
                app: "game",
                token: "t",
                outcome,
                produced_at_ms: None,
                key: None,
                send_latency: Some(Duration::from_millis(2)),
            })
        };
        for _ in 0..500 {
            event(&Outcome::Delivered);
        }
        event(&Outcome::TokenInvalid {
            reason: "Unregistered".into(),
            timestamp_ms: None,
        });
        event(&Outcome::Malformed {
            reason: "invalid_json".into(),
        });
        // Nothing goes out until the flush: then one line per series, and at most
        // StatsdBatch::TIMINGS timer samples with their rate.
        batch.flush();
        drop(observer);
        drop(batch); // flushes the buffered sink
        let want = 4 + StatsdBatch::TIMINGS;
        let mut lines = Vec::new();
        let mut buf = [0u8; 65536];
        while lines.len() < want {
            let n = server.recv(&mut buf).unwrap();
            lines.extend(
                String::from_utf8_lossy(&buf[..n])
                    .lines()
                    .map(str::to_string),
            );
        }
        lines.sort();
        let (timings, counters): (Vec<_>, Vec<_>) = lines.iter().partition(|l| l.contains("|ms"));
        assert_eq!(
            counters,
            vec![
                "push.ack:500|c|#platform:apns,game:game",
                "push.failed:1|c|#platform:apns,game:game,reason:Unregistered",
                "push.failed:1|c|#platform:apns,game:game,reason:invalid_json",
                "push.sent:501|c|#platform:apns,game:game",
            ]
        );
        // 502 timings (every event here carries a send latency), 100 of them sent, each with
        // the rate that scales them back: 100 / 502.
        assert_eq!(timings.len(), StatsdBatch::TIMINGS);
        assert!(
            timings.iter().all(
                |l| l.starts_with("push.send_notification_latency:2|ms|@0.199")
                    && l.ends_with("|#platform:apns,game:game,client:apns")
            ),
            "{timings:?}"
        );
    }
}
