//! Counters of a fake server, shared by the protocol handlers, the admin endpoint and tests.
//!
//! The hot path (a 200) touches only atomics and one uncontended mutex (the latency
//! histogram); per-reason counts take a lock, but only on error answers.

use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// HTTP statuses are counted in a flat array indexed by the status code.
const STATUS_SLOTS: usize = 600;
/// Decrypted web push payloads kept for tests and debugging (the most recent ones).
const RECENT_PLAINTEXTS: usize = 16;

/// Live counters. Cheap to update from many connections at once.
#[derive(Debug)]
pub struct Stats {
    requests: AtomicU64,
    responses: AtomicU64,
    by_status: Box<[AtomicU64]>,
    by_reason: Mutex<BTreeMap<String, u64>>,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    connections_opened: AtomicU64,
    connections_active: AtomicU64,
    streams_reset: AtomicU64,
    connections_dropped: AtomicU64,
    goaways_sent: AtomicU64,
    idle_closed: AtomicU64,
    stalls: AtomicU64,
    protocol_errors: AtomicU64,
    decrypted: AtomicU64,
    decrypted_bytes: AtomicU64,
    token_requests: AtomicU64,
    recent_plaintexts: Mutex<VecDeque<Vec<u8>>>,
    /// Microseconds from request head received to response ready.
    latency_us: Mutex<Histogram<u64>>,
    /// Delivered tokens (off when `None`): token -> number of 200s.
    tokens: Option<Mutex<TokenLog>>,
}

#[derive(Debug)]
struct TokenLog {
    counts: HashMap<String, u64>,
    limit: usize,
    /// Deliveries not recorded because `limit` distinct tokens were already held.
    overflow: u64,
}

/// A point-in-time copy of the counters, as served by `GET /stats`.
///
/// Counts add up: `requests = responses + streams_reset + connections_dropped + in-flight`,
/// and `responses` is the sum of `by_status`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StatsSnapshot {
    pub requests: u64,
    pub responses: u64,
    pub by_status: BTreeMap<u16, u64>,
    pub by_reason: BTreeMap<String, u64>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub connections_opened: u64,
    pub connections_active: u64,
    /// Requests answered with RST_STREAM by a profile's `resets.stream_rate`.
    pub streams_reset: u64,
    /// Requests whose connection a profile's `resets.connection_rate` dropped.
    pub connections_dropped: u64,
    /// Graceful GOAWAYs sent by a profile's `goaway_after`.
    pub goaways_sent: u64,
    /// Connections closed for idleness (`MockConfig::idle_timeout` without a request in
    /// flight), silent ones included.
    pub idle_closed: u64,
    /// Requests a profile's `stall` held back.
    pub stalls: u64,
    /// Connections that ended with an error: a malformed or hostile client (oversize
    /// frames, header lists over the limit, floods) or one that vanished mid-exchange.
    /// Requests refused at that level never reach a handler, so they are not in `requests`.
    pub protocol_errors: u64,
    /// Web push bodies the fake decrypted with the subscription's keys (0 for APNs and FCM).
    pub decrypted: u64,
    /// Plaintext bytes of those bodies.
    pub decrypted_bytes: u64,
    /// Requests to the fake FCM's OAuth `POST /token`: answered (in `responses`), but no push.
    pub token_requests: u64,
    pub latency_us: LatencySummary,
    /// Distinct delivered tokens held (0 when `record_tokens` is off).
    pub tokens_recorded: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LatencySummary {
    pub count: u64,
    pub min: u64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    pub mean: f64,
}

impl StatsSnapshot {
    /// Pushes answered: every response but those to OAuth token requests.
    pub fn pushes_answered(&self) -> u64 {
        self.responses.saturating_sub(self.token_requests)
    }
}

impl Stats {
    /// `record_tokens`: hold up to this many distinct delivered tokens (0 = off).
    pub fn new(record_tokens: usize) -> Result<Stats, hdrhistogram::CreationError> {
        // 1 us .. 1 h, 3 significant digits.
        let latency = Histogram::new_with_bounds(1, 3_600_000_000, 3)?;
        Ok(Stats {
            requests: AtomicU64::new(0),
            responses: AtomicU64::new(0),
            by_status: (0..STATUS_SLOTS).map(|_| AtomicU64::new(0)).collect(),
            by_reason: Mutex::new(BTreeMap::new()),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            connections_opened: AtomicU64::new(0),
            connections_active: AtomicU64::new(0),
            streams_reset: AtomicU64::new(0),
            connections_dropped: AtomicU64::new(0),
            goaways_sent: AtomicU64::new(0),
            idle_closed: AtomicU64::new(0),
            stalls: AtomicU64::new(0),
            protocol_errors: AtomicU64::new(0),
            decrypted: AtomicU64::new(0),
            decrypted_bytes: AtomicU64::new(0),
            token_requests: AtomicU64::new(0),
            recent_plaintexts: Mutex::new(VecDeque::new()),
            latency_us: Mutex::new(latency),
            tokens: (record_tokens > 0).then(|| {
                Mutex::new(TokenLog {
                    counts: HashMap::new(),
                    limit: record_tokens,
                    overflow: 0,
                })
            }),
        })
    }

    pub(crate) fn request(&self) {
        self.requests.fetch_add(1, Relaxed);
    }

    pub(crate) fn response(&self, status: u16, body_bytes: usize, latency: Duration) {
        self.responses.fetch_add(1, Relaxed);
        if let Some(slot) = self.by_status.get(status as usize) {
            slot.fetch_add(1, Relaxed);
        }
        self.bytes_out.fetch_add(body_bytes as u64, Relaxed);
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.latency_us.lock().saturating_record(us.max(1));
    }

    /// Counts one error answer by its protocol reason (`BadDeviceToken`, `UNAVAILABLE`...).
    pub fn reason(&self, reason: &str) {
        let mut map = self.by_reason.lock();
        match map.get_mut(reason) {
            Some(n) => *n += 1,
            None => {
                map.insert(reason.to_string(), 1);
            }
        }
    }

    pub fn bytes_in(&self, n: usize) {
        self.bytes_in.fetch_add(n as u64, Relaxed);
    }

    /// Records one delivery to `token` when `record_tokens` is on.
    pub fn delivered(&self, token: &str) {
        let Some(log) = &self.tokens else { return };
        let mut log = log.lock();
        if let Some(n) = log.counts.get_mut(token) {
            *n += 1;
        } else if log.counts.len() < log.limit {
            log.counts.insert(token.to_string(), 1);
        } else {
            log.overflow += 1;
        }
    }

    /// Counts one request for an OAuth token (FCM's `POST /token`).
    pub(crate) fn token_request(&self) {
        self.token_requests.fetch_add(1, Relaxed);
    }

    /// Counts one decrypted web push body and keeps its plaintext among the recent ones.
    pub fn decrypted(&self, plaintext: &[u8]) {
        self.decrypted.fetch_add(1, Relaxed);
        self.decrypted_bytes
            .fetch_add(plaintext.len() as u64, Relaxed);
        let mut recent = self.recent_plaintexts.lock();
        if recent.len() >= RECENT_PLAINTEXTS {
            recent.pop_front();
        }
        recent.push_back(plaintext.to_vec());
    }

    /// The last few decrypted web push payloads, oldest first.
    pub fn recent_plaintexts(&self) -> Vec<Vec<u8>> {
        self.recent_plaintexts.lock().iter().cloned().collect()
    }

    pub(crate) fn connection_opened(&self) {
        self.connections_opened.fetch_add(1, Relaxed);
        self.connections_active.fetch_add(1, Relaxed);
    }
    pub(crate) fn connection_closed(&self) {
        self.connections_active.fetch_sub(1, Relaxed);
    }
    pub(crate) fn stream_reset(&self) {
        self.streams_reset.fetch_add(1, Relaxed);
    }
    pub(crate) fn connection_dropped(&self) {
        self.connections_dropped.fetch_add(1, Relaxed);
    }
    pub(crate) fn goaway_sent(&self) {
        self.goaways_sent.fetch_add(1, Relaxed);
    }
    pub(crate) fn idle_closed(&self) {
        self.idle_closed.fetch_add(1, Relaxed);
    }
    pub(crate) fn stall(&self) {
        self.stalls.fetch_add(1, Relaxed);
    }
    pub(crate) fn protocol_error(&self) {
        self.protocol_errors.fetch_add(1, Relaxed);
    }

    /// Delivered tokens and how many 200s each got (empty when `record_tokens` is off).
    pub fn delivered_tokens(&self) -> HashMap<String, u64> {
        self.tokens
            .as_ref()
            .map(|log| log.lock().counts.clone())
            .unwrap_or_default()
    }

    /// Deliveries not recorded because the token log was full.
    pub fn tokens_overflow(&self) -> u64 {
        self.tokens
            .as_ref()
            .map(|log| log.lock().overflow)
            .unwrap_or(0)
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        let by_status = self
            .by_status
            .iter()
            .enumerate()
            .filter_map(|(status, n)| {
                let n = n.load(Relaxed);
                (n > 0).then_some((status as u16, n))
            })
            .collect();
        let latency_us = {
            let h = self.latency_us.lock();
            LatencySummary {
                count: h.len(),
                min: h.min(),
                p50: h.value_at_quantile(0.50),
                p90: h.value_at_quantile(0.90),
                p99: h.value_at_quantile(0.99),
                p999: h.value_at_quantile(0.999),
                max: h.max(),
                mean: h.mean(),
            }
        };
        StatsSnapshot {
            requests: self.requests.load(Relaxed),
            responses: self.responses.load(Relaxed),
            by_status,
            by_reason: self.by_reason.lock().clone(),
            bytes_in: self.bytes_in.load(Relaxed),
            bytes_out: self.bytes_out.load(Relaxed),
            connections_opened: self.connections_opened.load(Relaxed),
            connections_active: self.connections_active.load(Relaxed),
            streams_reset: self.streams_reset.load(Relaxed),
            connections_dropped: self.connections_dropped.load(Relaxed),
            goaways_sent: self.goaways_sent.load(Relaxed),
            idle_closed: self.idle_closed.load(Relaxed),
            stalls: self.stalls.load(Relaxed),
            protocol_errors: self.protocol_errors.load(Relaxed),
            decrypted: self.decrypted.load(Relaxed),
            decrypted_bytes: self.decrypted_bytes.load(Relaxed),
            token_requests: self.token_requests.load(Relaxed),
            latency_us,
            tokens_recorded: self
                .tokens
                .as_ref()
                .map(|log| log.lock().counts.len() as u64)
                .unwrap_or(0),
        }
    }

    /// Zeroes every counter except `connections_active` (those connections are still open).
    pub fn reset(&self) {
        for counter in [
            &self.requests,
            &self.responses,
            &self.bytes_in,
            &self.bytes_out,
            &self.connections_opened,
            &self.streams_reset,
            &self.connections_dropped,
            &self.goaways_sent,
            &self.idle_closed,
            &self.stalls,
            &self.protocol_errors,
            &self.decrypted,
            &self.decrypted_bytes,
            &self.token_requests,
        ] {
            counter.store(0, Relaxed);
        }
        for slot in self.by_status.iter() {
            slot.store(0, Relaxed);
        }
        self.by_reason.lock().clear();
        self.recent_plaintexts.lock().clear();
        self.latency_us.lock().reset();
        if let Some(log) = &self.tokens {
            let mut log = log.lock();
            log.counts.clear();
            log.overflow = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_add_up_and_reset_clears_them() {
        let stats = Stats::new(2).unwrap();
        stats.connection_opened();
        for status in [200, 200, 410] {
            stats.request();
            stats.response(status, 0, Duration::from_micros(50));
        }
        stats.reason("Unregistered");
        stats.delivered("aa");
        stats.delivered("aa");
        stats.delivered("bb");
        stats.delivered("cc");
        let s = stats.snapshot();
        assert_eq!(s.requests, 3);
        assert_eq!(s.by_status.values().sum::<u64>(), 3);
        assert_eq!(s.by_status.get(&410), Some(&1));
        assert_eq!(s.by_reason.get("Unregistered"), Some(&1));
        assert_eq!(s.latency_us.count, 3);
        assert_eq!(stats.delivered_tokens().get("aa"), Some(&2));
        assert_eq!(stats.tokens_overflow(), 1);
        stats.reset();
        let s = stats.snapshot();
        assert_eq!(
            (
                s.requests,
                s.responses,
                s.latency_us.count,
                s.tokens_recorded
            ),
            (0, 0, 0, 0)
        );
        assert!(s.by_status.is_empty() && s.by_reason.is_empty());
        assert_eq!(s.connections_active, 1);
    }
}
