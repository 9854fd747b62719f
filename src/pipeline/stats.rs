//! Stats for every final outcome: StatsD with the seed's names (`sent`, `ack`, `failed` with
//! `reason`; tags platform and game) and the Prometheus metrics (telemetry::names).

use super::run::{Observer, OutcomeEvent};
use crate::push::{Outcome, Platform};
use crate::telemetry::names;
use cadence::prelude::*;

pub struct StatsObserver {
    platform: Platform,
    statsd: Option<cadence::StatsdClient>,
}

impl StatsObserver {
    pub fn new(platform: Platform, statsd: Option<cadence::StatsdClient>) -> Self {
        StatsObserver { platform, statsd }
    }
}

impl Observer for StatsObserver {
    fn on_outcome(&self, e: &OutcomeEvent<'_>) {
        let platform = self.platform.as_str();
        let reason = e.outcome.reason().unwrap_or("");
        metrics::counter!(names::OUTCOMES,
            "platform" => platform, "game" => e.app.to_string(),
            "outcome" => e.outcome.class(), "reason" => reason.to_string())
        .increment(1);
        if let Some(latency) = e.send_latency {
            metrics::histogram!(names::SEND_LATENCY, "platform" => platform)
                .record(latency.as_secs_f64());
        }
        let Some(statsd) = &self.statsd else { return };
        // The seed counted `sent` for what reached the sender; malformed and expired messages
        // never do.
        let sent = !matches!(e.outcome, Outcome::Malformed { .. } | Outcome::Expired);
        if sent {
            statsd
                .count_with_tags(names::STATSD_SENT, 1)
                .with_tag("platform", platform)
                .with_tag("game", e.app)
                .send();
        }
        if e.outcome.is_delivered() {
            statsd
                .count_with_tags(names::STATSD_ACK, 1)
                .with_tag("platform", platform)
                .with_tag("game", e.app)
                .send();
        } else {
            statsd
                .count_with_tags(names::STATSD_FAILED, 1)
                .with_tag("platform", platform)
                .with_tag("game", e.app)
                .with_tag(
                    "reason",
                    if reason.is_empty() {
                        e.outcome.class()
                    } else {
                        reason
                    },
                )
                .send();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn statsd_lines_use_the_seed_names_and_tags() {
        let server = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        server
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let client =
            crate::telemetry::statsd(&server.local_addr().unwrap().to_string(), "push").unwrap();
        let observer = StatsObserver::new(Platform::Apns, Some(client));
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
        event(&Outcome::Delivered);
        event(&Outcome::TokenInvalid {
            reason: "Unregistered".into(),
            timestamp_ms: None,
        });
        event(&Outcome::Malformed {
            reason: "invalid_json".into(),
        });
        drop(observer); // flushes the buffered sink
        let mut lines = Vec::new();
        let mut buf = [0u8; 4096];
        while lines.len() < 5 {
            let n = server.recv(&mut buf).unwrap();
            lines.extend(
                String::from_utf8_lossy(&buf[..n])
                    .lines()
                    .map(str::to_string),
            );
        }
        lines.sort();
        assert_eq!(
            lines,
            vec![
                "push.ack:1|c|#platform:apns,game:game",
                "push.failed:1|c|#platform:apns,game:game,reason:Unregistered",
                "push.failed:1|c|#platform:apns,game:game,reason:invalid_json",
                "push.sent:1|c|#platform:apns,game:game",
                "push.sent:1|c|#platform:apns,game:game",
            ]
        );
    }
}
