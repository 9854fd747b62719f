//! Shared helpers for integration tests: a fake APNs server on 127.0.0.1 port 0, the test
//! credentials in fixtures/, and senders pointed at the fake.
#![allow(dead_code)]

use pusher::clock::SharedClock;
use pusher::mock::{ApnsOptions, JwtKey, MockConfig, MockServer, Profile, StatsSnapshot};
use pusher::sender::apns::TokenAuth;
use pusher::sender::{ApnsAuth, ApnsConfig, ApnsSender, Endpoint, PoolConfig, RetryPolicy};
use std::path::PathBuf;
use std::time::Duration;

mod fake;
pub mod feedback;
pub mod http;
pub mod platform;
pub mod process;
pub mod recording;
pub use fake::Fake;

pub const KEY_ID: &str = "TESTKEY001";
pub const TEAM_ID: &str = "TEAM000001";
pub const TOPIC: &str = "com.example.app";

pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/apns")
        .join(name)
}

/// A 64-hex token, distinct per `i`, under no token rule.
pub fn token(i: u64) -> String {
    format!("{:064x}", 0xa000_0000_0000_0000u64 + i)
}

pub struct FakeOptions {
    pub profile: Profile,
    /// Verify JWTs signed by the TESTKEY001 key (token auth).
    pub jwt: bool,
    /// Accept provider certificates signed by fixtures' client CA (certificate auth).
    pub client_ca: bool,
    pub clock: SharedClock,
    pub max_streams: u32,
    /// Remember up to this many distinct delivered tokens (0 = off).
    pub record_tokens: usize,
}

impl Default for FakeOptions {
    fn default() -> Self {
        FakeOptions {
            profile: Profile::default(),
            jwt: true,
            client_ca: false,
            clock: pusher::clock::system(),
            max_streams: 1000,
            record_tokens: 0,
        }
    }
}

/// A profile from YAML text (the same format as mock-services/*.yaml).
pub fn profile(yaml: &str) -> Profile {
    Profile::from_yaml("test", yaml).unwrap()
}

pub async fn start_fake(options: FakeOptions) -> Fake {
    let jwt_keys = if options.jwt {
        let pem = std::fs::read_to_string(fixture("AuthKey_TESTKEY001.pub.pem")).unwrap();
        vec![JwtKey::from_pem(KEY_ID, TEAM_ID, &pem).unwrap()]
    } else {
        Vec::new()
    };
    let config = MockConfig {
        profile: options.profile,
        max_streams: options.max_streams,
        record_tokens: options.record_tokens,
        client_ca_pem: options
            .client_ca
            .then(|| std::fs::read(fixture("client-ca.pem")).unwrap()),
        apns: ApnsOptions {
            jwt_keys,
            clock: options.clock,
            ..ApnsOptions::default()
        },
        ..MockConfig::default()
    };
    let server = MockServer::start(config).await.unwrap();
    Fake::new(server)
}

pub fn token_auth() -> ApnsAuth {
    ApnsAuth::Token(
        TokenAuth::from_file(&fixture("AuthKey_TESTKEY001.p8"), KEY_ID, TEAM_ID).unwrap(),
    )
}

/// A sender config for the fake at `url`: token auth, the fake's CA, fast retries.
pub fn config(fake: &Fake, url: String, auth: ApnsAuth) -> ApnsConfig {
    let mut config = ApnsConfig::new(Endpoint::Custom(url), auth);
    config.ca_file = Some(fake.ca_file.clone());
    config.default_topic = Some(TOPIC.into());
    config.pool = PoolConfig {
        connections: 2,
        connect_timeout: Duration::from_secs(5),
        request_timeout: Duration::from_secs(5),
        reconnect_backoff: Duration::from_millis(5),
    };
    config.retry = RetryPolicy {
        max_attempts: 3,
        base: Duration::from_millis(5),
        cap: Duration::from_millis(50),
        max_retry_after: Duration::from_secs(2),
    };
    config
}

pub fn sender(config: ApnsConfig) -> ApnsSender {
    ApnsSender::new(config).unwrap()
}

/// The fake's count of answers with `status`.
pub fn status_count(stats: &StatsSnapshot, status: u16) -> u64 {
    stats.by_status.get(&status).copied().unwrap_or(0)
}

/// The fake's count of answers with `reason`.
pub fn reason_count(stats: &StatsSnapshot, reason: &str) -> u64 {
    stats.by_reason.get(reason).copied().unwrap_or(0)
}
