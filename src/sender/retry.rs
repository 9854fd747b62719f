//! When to try a failed push again: a pure policy (no timers, no I/O). Exponential back-off with
//! full jitter, a cap, and the server's `Retry-After` honoured when it asks for longer (read
//! here for every sender).

use rand::Rng;
use std::time::{Duration, SystemTime};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first one included (1 = never retry).
    pub max_attempts: u32,
    /// Back-off ceiling before jitter for the first retry; doubles per retry.
    pub base: Duration,
    /// Largest delay we choose ourselves.
    pub cap: Duration,
    /// Largest `Retry-After` we honour (a server asking for an hour must not park a message
    /// for an hour; the message then counts as given up sooner or later).
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 4,
            base: Duration::from_millis(100),
            cap: Duration::from_secs(10),
            max_retry_after: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    /// No retries at all.
    pub fn never() -> Self {
        RetryPolicy {
            max_attempts: 1,
            ..RetryPolicy::default()
        }
    }

    /// Retries without end, the caller deciding when to stop: for side effects that must
    /// happen (a feedback record, a token's DELETE, renewing credentials before they expire).
    pub fn unbounded(base: Duration, cap: Duration) -> Self {
        RetryPolicy {
            max_attempts: u32::MAX,
            base,
            cap,
            max_retry_after: cap,
        }
    }

    /// May attempt number `attempt + 1` follow a failed attempt number `attempt` (1-based)?
    pub fn should_retry(&self, attempt: u32) -> bool {
        attempt < self.max_attempts
    }

    /// The upper bound of the jittered delay after failed attempt `attempt` (1-based):
    /// `min(cap, base * 2^(attempt-1))`.
    pub fn backoff_ceiling(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1).min(30);
        self.base.saturating_mul(1u32 << doublings).min(self.cap)
    }

    /// How long to wait after failed attempt `attempt`: full jitter in `[0, ceiling]`, but never
    /// less than the server's `Retry-After` (itself capped by `max_retry_after`), plus a jitter
    /// of up to a tenth of it (at most `ceiling`): every message of a burst of 429s or 503s
    /// gets the same `Retry-After`, and without it they all came back at one instant.
    pub fn delay(
        &self,
        attempt: u32,
        retry_after: Option<Duration>,
        rng: &mut impl Rng,
    ) -> Duration {
        let ceiling = self.backoff_ceiling(attempt);
        let mut jitter =
            |up_to: Duration| Duration::from_micros(rng.random_range(0..=up_to.as_micros() as u64));
        let jittered = jitter(ceiling);
        match retry_after {
            Some(after) => {
                let after = after.min(self.max_retry_after);
                jittered.max(after + jitter(ceiling.min(after / 10)))
            }
            None => jittered,
        }
    }
}

/// The `Retry-After` of an answer, as a wait from now; `None` when absent or unreadable (our
/// own back-off applies then).
pub fn retry_after(headers: &http::HeaderMap) -> Option<Duration> {
    let value = headers.get(http::header::RETRY_AFTER)?.to_str().ok()?;
    parse_retry_after(value, SystemTime::now())
}

/// `Retry-After` (RFC 9110 §10.2.3): delay-seconds, or an HTTP-date (any of the three forms
/// RFC 9110 §5.6.7 makes recipients read), as a wait from `now`. A date already past asks for
/// no wait.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        // 2015-10-21 07:28:00 UTC.
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_480);
        let cases = [
            ("120", Some(120)),
            (" 7 ", Some(7)),
            ("0", Some(0)),
            // IMF-fixdate, 90 s ahead.
            ("Wed, 21 Oct 2015 07:29:30 GMT", Some(90)),
            // The obsolete RFC 850 and asctime forms.
            ("Wednesday, 21-Oct-15 07:29:30 GMT", Some(90)),
            ("Wed Oct 21 07:29:30 2015", Some(90)),
            // In the past: now.
            ("Wed, 21 Oct 2015 07:27:00 GMT", Some(0)),
            ("-1", None),
            ("1.5", None),
            ("soon", None),
            ("", None),
        ];
        for (value, expected) in cases {
            assert_eq!(
                parse_retry_after(value, now),
                expected.map(Duration::from_secs),
                "{value:?}"
            );
        }
        let mut headers = http::HeaderMap::new();
        assert_eq!(retry_after(&headers), None);
        headers.insert(http::header::RETRY_AFTER, "3".parse().expect("header"));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(3)));
        let soon = SystemTime::now() + Duration::from_secs(30);
        headers.insert(
            http::header::RETRY_AFTER,
            httpdate::fmt_http_date(soon).parse().expect("header"),
        );
        let wait = retry_after(&headers).expect("a date is read");
        assert!(
            wait > Duration::from_secs(25) && wait <= Duration::from_secs(30),
            "{wait:?}"
        );
    }

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 4,
            base: Duration::from_millis(100),
            cap: Duration::from_secs(1),
            max_retry_after: Duration::from_secs(30),
        }
    }

    #[test]
    fn ceiling_doubles_then_caps() {
        let cases = [
            (1, 100),
            (2, 200),
            (3, 400),
            (4, 800),
            (5, 1000),
            (40, 1000),
        ];
        for (attempt, ms) in cases {
            assert_eq!(
                policy().backoff_ceiling(attempt),
                Duration::from_millis(ms),
                "attempt {attempt}"
            );
        }
    }

    #[test]
    fn jitter_stays_within_bounds_and_spreads() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for attempt in 1..6 {
            let ceiling = policy().backoff_ceiling(attempt);
            let delays: Vec<_> = (0..200)
                .map(|_| policy().delay(attempt, None, &mut rng))
                .collect();
            assert!(delays.iter().all(|d| *d <= ceiling), "attempt {attempt}");
            // Full jitter: both halves of the range are used.
            assert!(
                delays.iter().any(|d| *d < ceiling / 2) && delays.iter().any(|d| *d > ceiling / 2)
            );
        }
    }

    #[test]
    fn retry_after_is_honoured_and_capped() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        // Up to a tenth more, at most the back-off ceiling (100 ms after the first attempt).
        let cases = [
            (
                Some(Duration::from_secs(5)),
                Duration::from_secs(5),
                Duration::from_millis(5100),
            ),
            (
                Some(Duration::from_secs(3600)),
                Duration::from_secs(30),
                Duration::from_millis(30_100),
            ),
            (
                Some(Duration::from_millis(500)),
                Duration::from_millis(500),
                Duration::from_millis(550),
            ),
            (
                Some(Duration::ZERO),
                Duration::ZERO,
                Duration::from_millis(100),
            ),
        ];
        for (after, min, max) in cases {
            for _ in 0..50 {
                let d = policy().delay(1, after, &mut rng);
                assert!(d >= min && d <= max, "{after:?} -> {d:?}");
            }
        }
    }

    #[test]
    fn a_burst_given_one_retry_after_comes_back_spread_out() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let p = RetryPolicy {
            max_attempts: 4,
            base: Duration::from_millis(100),
            cap: Duration::from_secs(10),
            max_retry_after: Duration::from_secs(60),
        };
        let after = Some(Duration::from_secs(30));
        let mut delays: Vec<Duration> = (0..1000).map(|_| p.delay(3, after, &mut rng)).collect();
        delays.sort();
        // Never sooner than asked, at most the ceiling (400 ms at attempt 3) later.
        assert!(delays[0] >= Duration::from_secs(30), "{:?}", delays[0]);
        assert!(
            delays[999] <= Duration::from_millis(30_400),
            "{:?}",
            delays[999]
        );
        // Spread over that range, not at one instant.
        assert!(
            delays[900] - delays[100] >= Duration::from_millis(250),
            "{:?} .. {:?}",
            delays[100],
            delays[900]
        );
    }

    #[test]
    fn attempts_are_bounded() {
        let p = policy();
        assert!(p.should_retry(1) && p.should_retry(3));
        assert!(!p.should_retry(4));
        assert!(!RetryPolicy::never().should_retry(1));
    }
}
