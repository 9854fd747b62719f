//! Shared helpers for the FCM tests: a fake FCM server on 127.0.0.1 port 0, the test service
//! account (fixtures/fcm), and senders pointed at the fake.
#![allow(dead_code)]

use pusher::clock::SharedClock;
use pusher::mock::{FcmHandler, FcmOptions, MockConfig, MockServer, Profile, StatsSnapshot};
use pusher::push::gcm::GcmMessage;
use pusher::push::message::parse_gcm;
use pusher::sender::fcm::{FcmAuth, FcmConfig, FcmSender, ServiceAccount};
use pusher::sender::{PoolConfig, RetryPolicy};
use std::path::PathBuf;
use std::time::Duration;

#[path = "../common/fake.rs"]
mod fake;
pub use fake::Fake;

pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/fcm")
        .join(name)
}

/// A registration-token-like string, distinct per `i`, under no token rule.
pub fn token(i: u64) -> String {
    format!("a{i:015x}:APA91bHtestTOKEN_{i}-x")
}

pub struct FakeOptions {
    pub profile: Profile,
    pub require_auth: bool,
    pub token_lifetime: Duration,
    pub api_keys: Vec<String>,
    pub clock: SharedClock,
    pub record_tokens: usize,
    pub quota_per_minute: Option<u64>,
}

impl Default for FakeOptions {
    fn default() -> Self {
        FakeOptions {
            profile: Profile::default(),
            require_auth: true,
            token_lifetime: Duration::from_secs(3600),
            api_keys: Vec::new(),
            clock: pusher::clock::system(),
            record_tokens: 0,
            quota_per_minute: None,
        }
    }
}

pub fn profile(yaml: &str) -> Profile {
    Profile::from_yaml("test", yaml).unwrap()
}

pub async fn start_fake(options: FakeOptions) -> Fake {
    let config = MockConfig {
        profile: options.profile,
        record_tokens: options.record_tokens,
        ..MockConfig::default()
    };
    let handler = FcmHandler::new(FcmOptions {
        require_auth: options.require_auth,
        token_lifetime: options.token_lifetime,
        api_keys: options.api_keys,
        quota_per_minute: options.quota_per_minute,
        clock: options.clock,
    });
    let server = MockServer::start_with(config, handler).await.unwrap();
    Fake::new(server)
}

/// The fixture service account with its `token_uri` at `token_uri`.
pub fn account(token_uri: String) -> ServiceAccount {
    ServiceAccount::from_file(&fixture("service-account.json"))
        .unwrap()
        .with_token_uri(token_uri)
}

/// A v1 sender config for the fake at `url` (token endpoint on the same URL), the fake's CA,
/// fast retries (Retry-After capped at 50 ms so throttled tests stay quick).
pub fn v1_config(fake: &Fake, url: &str) -> FcmConfig {
    let mut config = FcmConfig::new(FcmAuth::ServiceAccount(account(format!("{url}/token"))));
    quick(&mut config, fake, url);
    config
}

pub fn legacy_config(fake: &Fake, url: &str, key: &str) -> FcmConfig {
    let mut config = FcmConfig::new(FcmAuth::ApiKey(key.into()));
    quick(&mut config, fake, url);
    config
}

fn quick(config: &mut FcmConfig, fake: &Fake, url: &str) {
    config.base_url = url.to_string();
    config.ca_file = Some(fake.ca_file.clone());
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
        max_retry_after: Duration::from_millis(50),
    };
}

pub fn sender(config: FcmConfig) -> FcmSender {
    FcmSender::new(config).unwrap()
}

/// A message in the seed's format to `to`.
pub fn message(to: &str) -> GcmMessage {
    parse_gcm(
        format!(
            r#"{{"to":"{to}","notification":{{"title":"Come play!","body":"Helena miss you! come play!"}},"data":{{"n":1}},"metadata":{{"jobId":"j1"}}}}"#
        )
        .as_bytes(),
    )
    .unwrap()
}

pub fn status_count(stats: &StatsSnapshot, status: u16) -> u64 {
    stats.by_status.get(&status).copied().unwrap_or(0)
}

pub fn reason_count(stats: &StatsSnapshot, reason: &str) -> u64 {
    stats.by_reason.get(reason).copied().unwrap_or(0)
}

/// Runs a future with a time bound, so a hung test fails instead of hanging CI.
pub async fn bounded<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(60), f)
        .await
        .expect("test took longer than 60 s")
}
