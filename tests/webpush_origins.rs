//! Memory stays flat however many push-service origins the subscriptions name: the sender
//! keeps at most `max_origins` transports and drops the least recently used. Ten thousand
//! distinct origins (127.0.0.0/8 addresses where nothing listens: each push is refused at
//! once) grow the resident set by under 3 MB (0.5 MB measured; 6.7 MB while the VAPID token
//! cache still kept a token per origin ever seen). Alone in its test binary, so no other test
//! moves the process's memory meanwhile.

use pusher::push::webpush::{generated_subscription, slot_keys, EndpointRules, WebPushMessage};
use pusher::sender::webpush::{WebPushConfig, WebPushSender};
use pusher::sender::{PoolConfig, RetryPolicy};
use std::time::Duration;

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

#[tokio::test]
async fn ten_thousand_origins_keep_memory_flat() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let mut config = WebPushConfig::new(slot_keys(9).0, "mailto:ops@example.com");
    config.rules = EndpointRules::LOCAL;
    config.max_origins = 1000;
    config.retry = RetryPolicy::never();
    config.pool = PoolConfig {
        connections: 1,
        connect_timeout: Duration::from_secs(2),
        ..PoolConfig::default()
    };
    let sender = WebPushSender::new(config).expect("sender");
    let origin = |i: u32| {
        format!(
            "http://127.{}.{}.{}:{port}",
            i >> 16 & 255,
            i >> 8 & 255,
            i & 255
        )
    };
    let send_to = |range: std::ops::Range<u32>| {
        let sender = sender.clone();
        async move {
            for i in range {
                let m = WebPushMessage {
                    subscription: generated_subscription(&origin(i + 2), "a1"),
                    payload: b"x".to_vec(),
                    ttl: 60,
                    urgency: None,
                    topic: None,
                    metadata: Default::default(),
                    push_expiry: 0,
                };
                let d = sender.send(&m).await;
                assert!(!d.outcome.is_delivered(), "nothing listens there");
            }
        }
    };
    send_to(0..1000).await;
    let (live, opened) = sender.origins();
    assert_eq!((live, opened), (1000, 1000));
    let after_1k = rss_bytes();
    send_to(1000..10_000).await;
    let (live, opened) = sender.origins();
    assert_eq!((live, opened), (1000, 10_000));
    let after_10k = rss_bytes();
    let grown = after_10k.saturating_sub(after_1k);
    eprintln!(
        "RSS after 1,000 origins {:.1} MB, after 10,000 {:.1} MB",
        after_1k as f64 / 1e6,
        after_10k as f64 / 1e6
    );
    assert!(
        grown < 3 << 20,
        "9,000 more origins grew RSS by {grown} bytes"
    );
}
