//! `pusher send apns|gcm|webpush`: one push to one token, printed as one JSON line.
//! Exit codes: 0 delivered, 1 not delivered, 2 usage or configuration error.

use super::flags::{ApnsCredentials, EndpointFlags, FcmCredentials};
use crate::push::apns::{ApnsNotification, PushType};
use crate::push::gcm::GcmMessage;
use crate::push::message::parse_gcm;
use crate::sender::apns::{self, ApnsAuth, ApnsConfig, ApnsSender, Delivery};
use crate::sender::fcm::{FcmConfig, FcmDelivery, FcmSender, HttpVersion};
use crate::sender::{Endpoint, PoolConfig, RetryPolicy};
use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use std::process::ExitCode;
use std::time::Duration;

#[derive(Debug, Args)]
pub struct SendArgs {
    #[command(subcommand)]
    pub platform: SendPlatform,
}

#[derive(Debug, Subcommand)]
pub enum SendPlatform {
    /// Send one APNs push (sandbox unless -p; or --endpoint URL).
    Apns(Box<ApnsSendArgs>),
    /// Send one FCM push (HTTP v1 with a service account, or legacy with --api-key).
    Gcm(Box<GcmSendArgs>),
    /// Send one web push to a browser's subscription (encrypted, VAPID-signed).
    Webpush(Box<WebPushSendArgs>),
}

#[derive(Debug, Args)]
pub struct WebPushSendArgs {
    /// The browser's subscription as `PushSubscription.toJSON()` gives it:
    /// '{"endpoint":"https://...","keys":{"p256dh":"...","auth":"..."}}'.
    #[arg(long)]
    pub subscription: String,
    /// What the service worker receives: JSON or plain text (encrypted; at most 3993 bytes).
    #[arg(long, default_value = "")]
    pub payload: String,
    /// How long the push service keeps the message while the browser is offline: seconds
    /// (`3600`) or a duration (`1h`, `90s`); 0: deliver now or drop.
    #[arg(long, value_name = "SECONDS|DURATION", default_value_t = crate::push::webpush::DEFAULT_TTL, value_parser = ttl_seconds)]
    pub ttl: u32,
    /// very-low, low, normal or high.
    #[arg(long)]
    pub urgency: Option<String>,
    /// Replaces an undelivered message with the same topic (1-32 base64url characters).
    #[arg(long)]
    pub topic: Option<String>,
    /// VAPID private key file (PEM, or the raw key in base64url).
    #[arg(long, value_name = "FILE")]
    pub vapid_key: std::path::PathBuf,
    /// VAPID contact (`mailto:` or `https:`).
    #[arg(long)]
    pub vapid_subject: String,
    /// Accept http:// endpoints and loopback or private hosts (fakes only).
    #[arg(long)]
    pub allow_local_endpoints: bool,
    #[command(flatten)]
    pub endpoint: EndpointFlags,
    /// Speak HTTP/1.1 only (default: HTTP/2, falling back to HTTP/1.1).
    #[arg(long, conflicts_with = "http2")]
    pub http1: bool,
    /// Speak HTTP/2 only (no fallback).
    #[arg(long)]
    pub http2: bool,
    #[command(flatten)]
    pub attempt: AttemptFlags,
}

/// How one send goes: per-attempt timeout and attempts.
#[derive(Debug, Clone, Args)]
pub struct AttemptFlags {
    /// Per-attempt timeout.
    #[arg(long, default_value = "10s", value_parser = crate::units::parse_duration)]
    pub timeout: Duration,
    /// Attempts in all (retries on 429, 5xx and transport failures).
    #[arg(long, default_value_t = 3)]
    pub attempts: u32,
}

#[derive(Debug, Args)]
#[command(
    mut_arg("key_file", |a| a.requires_all(["key_id", "team_id"])),
    mut_arg("key_id", |a| a.requires("key_file")),
    mut_arg("team_id", |a| a.requires("key_file")),
    mut_arg("key", |a| a.requires("certificate")),
    // No `requires("certificate")`: see `ApnsCredentials::settle_env`.
    mut_arg("certificate_password", |a| a
        .env("PUSHER_APNS_CERTIFICATE_PASSWORD")
        .hide_env_values(true)),
)]
pub struct ApnsSendArgs {
    /// Device token (hex).
    #[arg(long)]
    pub token: String,
    /// JSON payload, e.g. '{"aps":{"alert":"hi"}}'.
    #[arg(long)]
    pub payload: String,
    /// apns-topic (the app's bundle id; the push type's suffix, `.voip` and so on, is added
    /// when missing); required with token auth.
    #[arg(long)]
    pub topic: Option<String>,
    /// apns-push-type: alert, background, voip, ...
    #[arg(long, value_parser = parse_push_type)]
    pub push_type: Option<PushType>,
    /// apns-priority: 10, 5 or 1.
    #[arg(long)]
    pub priority: Option<u8>,
    /// apns-expiration, Unix seconds (0 = do not store).
    #[arg(long)]
    pub expiration: Option<u64>,
    /// apns-collapse-id (at most 64 bytes).
    #[arg(long)]
    pub collapse_id: Option<String>,
    /// apns-id (a UUID); APNs makes one when absent.
    #[arg(long)]
    pub apns_id: Option<String>,
    #[command(flatten)]
    pub credentials: ApnsCredentials,
    #[command(flatten)]
    pub endpoint: EndpointFlags,
    /// Use Apple's production host instead of the sandbox (unless --endpoint).
    #[arg(short = 'p', long)]
    pub production: bool,
    #[command(flatten)]
    pub attempt: AttemptFlags,
}

#[derive(Debug, Args)]
#[command(
    mut_arg("api_key", |a| a.env("PUSHER_GCM_API_KEY").hide_env_values(true)),
    mut_arg("token_uri", |a| a.requires("service_account")),
)]
pub struct GcmSendArgs {
    /// Registration token (overrides the message's `to`).
    #[arg(long)]
    pub token: Option<String>,
    /// A whole message in the Kafka format: the seed's legacy fields
    /// ('{"to":"...","notification":{"title":"t"}}') or a v1 envelope ('{"message":{...}}').
    #[arg(long, conflicts_with_all = ["title", "body", "data"])]
    pub message: Option<String>,
    /// Notification title.
    #[arg(long)]
    pub title: Option<String>,
    /// Notification body.
    #[arg(long)]
    pub body: Option<String>,
    /// Data payload, a JSON object ('{"k":"v"}'; non-string values are JSON-encoded for v1).
    #[arg(long)]
    pub data: Option<String>,
    /// Validate only (v1 `validate_only`, legacy `dry_run`): FCM checks but does not deliver.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub credentials: FcmCredentials,
    /// Legacy sender id (accepted for the seed's configuration; not sent).
    #[arg(long, alias = "senderId")]
    pub sender_id: Option<String>,
    #[command(flatten)]
    pub endpoint: EndpointFlags,
    /// Speak HTTP/1.1 only (default: HTTP/2, falling back to HTTP/1.1 when the endpoint
    /// does not speak HTTP/2).
    #[arg(long, conflicts_with = "http2")]
    pub http1: bool,
    /// Speak HTTP/2 only (no fallback).
    #[arg(long)]
    pub http2: bool,
    #[command(flatten)]
    pub attempt: AttemptFlags,
}

fn parse_push_type(s: &str) -> Result<PushType, String> {
    PushType::parse(s).ok_or_else(|| format!("unknown push type {s:?}"))
}

pub fn run(args: SendArgs) -> anyhow::Result<ExitCode> {
    match args.platform {
        SendPlatform::Apns(a) => run_apns(*a),
        SendPlatform::Gcm(a) => run_gcm(*a),
        SendPlatform::Webpush(a) => run_webpush(*a),
    }
}

fn run_webpush(a: WebPushSendArgs) -> anyhow::Result<ExitCode> {
    use crate::sender::webpush::{parse_private_key, WebPushConfig, WebPushSender};
    if a.endpoint.endpoint.is_some() {
        bail!("--endpoint does not apply to web push: the subscription names its push service");
    }
    let subscription: serde_json::Value =
        serde_json::from_str(&a.subscription).context("--subscription is not valid JSON")?;
    // The payload is sent as JSON when it is JSON, else as text.
    let payload = serde_json::from_str::<serde_json::Value>(&a.payload)
        .unwrap_or_else(|_| serde_json::Value::String(a.payload.clone()));
    let message = serde_json::json!({"subscription": subscription, "payload": payload,
        "ttl": a.ttl, "urgency": a.urgency, "topic": a.topic});
    let message = crate::push::message::parse_webpush(message.to_string().as_bytes())
        .context("cannot build the message")?;
    let rules = if a.allow_local_endpoints {
        crate::push::webpush::EndpointRules::LOCAL
    } else {
        crate::push::webpush::EndpointRules::STRICT
    };
    crate::push::webpush::check_subscription(&message.subscription, rules)
        .context("--subscription")?;
    if a.attempt.attempts == 0 {
        bail!("--attempts must be at least 1");
    }
    let key_text = std::fs::read_to_string(&a.vapid_key)
        .with_context(|| format!("--vapid-key: reading {}", a.vapid_key.display()))?;
    let key = parse_private_key(&key_text).context("--vapid-key")?;
    let mut config = WebPushConfig::new(key, a.vapid_subject.clone());
    config.rules = rules;
    config.ca_file = a.endpoint.ca.clone();
    config.insecure = a.endpoint.insecure;
    config.http = http_version(a.http1, a.http2);
    (config.pool, config.retry) = one_shot(&a.attempt);
    let sender = WebPushSender::new(config)?;
    let public_key = sender.public_key().to_string();
    send_and_print(
        async move { sender.send(&message).await },
        |d| {
            serde_json::json!({
                "outcome": d.outcome.class(),
                "status": d.status,
                "reason": d.outcome.reason(),
                "location": d.location,
                "attempts": d.attempts,
                "error": d.transport_error,
                "endpoint_fault": d.endpoint_fault,
                "vapid_public_key": public_key,
            })
        },
        |d| d.outcome.is_delivered(),
    )
}

fn run_apns(a: ApnsSendArgs) -> anyhow::Result<ExitCode> {
    let payload: serde_json::Value =
        serde_json::from_str(&a.payload).context("--payload is not valid JSON")?;
    if !payload.is_object() {
        bail!("--payload must be a JSON object such as '{{\"aps\":{{\"alert\":\"hi\"}}}}'");
    }
    let notification = ApnsNotification {
        token: a.token.clone(),
        // The app's topic, as `run apns` has it: the sender adds the push type's suffix.
        topic: None,
        push_type: a.push_type,
        priority: a.priority,
        expiration: a.expiration,
        collapse_id: a.collapse_id.clone(),
        apns_id: a.apns_id.clone(),
        payload: a.payload.clone().into_bytes().into(),
    };
    // Refuse a bad token or payload before touching the network.
    apns::request::check(&notification).context("cannot send this notification")?;

    let Some(auth) = a.credentials.auth()? else {
        bail!(
            "give token auth (--key-file, --key-id, --team-id) or certificate auth (--certificate)"
        );
    };
    // APNs refuses a token-auth request without a topic (400 MissingTopic): say so before
    // anything is sent. Certificate auth may leave it to the certificate.
    if matches!(auth, ApnsAuth::Token(_)) && a.topic.is_none() {
        bail!("--topic is required with token auth (the app's bundle id, e.g. com.example.app)");
    }
    let endpoint = match &a.endpoint.endpoint {
        Some(url) => Endpoint::Custom(url.clone()),
        None => Endpoint::apple(a.production),
    };
    if a.attempt.attempts == 0 {
        bail!("--attempts must be at least 1");
    }
    let mut config = ApnsConfig::new(endpoint, auth);
    config.default_topic = a.topic.clone();
    config.ca_file = a.endpoint.ca.clone();
    config.insecure = a.endpoint.insecure;
    (config.pool, config.retry) = one_shot(&a.attempt);
    let sender = ApnsSender::new(config)?;
    send_and_print(sender.send_with_details(&notification), apns_line, |d| {
        d.outcome.is_delivered()
    })
}

/// The HTTP version `--http1` and `--http2` ask for (clap keeps them apart).
fn http_version(http1: bool, http2: bool) -> HttpVersion {
    match (http1, http2) {
        (true, _) => HttpVersion::Http1,
        (_, true) => HttpVersion::Http2,
        _ => HttpVersion::Auto,
    }
}

/// Pool and retries of a one-shot `pusher send`: one connection, `timeout` to connect and per
/// attempt, `attempts` in all.
fn one_shot(a: &AttemptFlags) -> (PoolConfig, RetryPolicy) {
    let (timeout, attempts) = (a.timeout, a.attempts);
    let pool = PoolConfig {
        connections: 1,
        request_timeout: timeout,
        connect_timeout: timeout,
        ..PoolConfig::default()
    };
    let retry = RetryPolicy {
        max_attempts: attempts,
        ..RetryPolicy::default()
    };
    (pool, retry)
}

/// Runs one send on a current-thread runtime, prints its JSON line, and exits 0 when it was
/// delivered, 1 otherwise.
fn send_and_print<D>(
    send: impl std::future::Future<Output = D>,
    line: impl Fn(&D) -> serde_json::Value,
    delivered: impl Fn(&D) -> bool,
) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let delivery = runtime.block_on(send);
    println!("{}", line(&delivery));
    Ok(if delivered(&delivery) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// The JSON line `pusher send apns` prints.
fn apns_line(d: &Delivery) -> serde_json::Value {
    let r = d.response.as_ref();
    serde_json::json!({
        "outcome": d.outcome.class(),
        "status": r.map(|r| r.status),
        "reason": d.outcome.reason().map(str::to_owned).or_else(|| r.and_then(|r| r.reason.as_ref()).map(|x| x.to_string())),
        "apns_id": r.and_then(|r| r.apns_id.clone()),
        "timestamp": r.and_then(|r| r.timestamp_ms),
        "attempts": d.attempts,
        "error": d.transport_error,
        "endpoint_fault": d.endpoint_fault,
    })
}

/// Builds the message from the flags; every problem is a usage error.
fn build_message(a: &GcmSendArgs) -> anyhow::Result<GcmMessage> {
    let mut msg = match &a.message {
        Some(text) => {
            let mut value: serde_json::Value =
                serde_json::from_str(text).context("--message is not valid JSON")?;
            // The token may come from --token only.
            if let (Some(token), Some(obj)) = (&a.token, value.as_object_mut()) {
                match obj.get_mut("message").and_then(|m| m.as_object_mut()) {
                    Some(inner) => {
                        inner.insert("token".into(), token.clone().into());
                    }
                    None => {
                        obj.insert("to".into(), token.clone().into());
                    }
                }
            }
            parse_gcm(value.to_string().as_bytes()).context("--message")?
        }
        None => {
            let token = a
                .token
                .clone()
                .filter(|t| !t.is_empty())
                .context("give the registration token (--token)")?;
            let mut raw = serde_json::Map::new();
            raw.insert("to".into(), token.into());
            if a.title.is_some() || a.body.is_some() {
                raw.insert(
                    "notification".into(),
                    serde_json::json!({"title": a.title, "body": a.body}),
                );
            }
            if let Some(data) = &a.data {
                let data: serde_json::Value =
                    serde_json::from_str(data).context("--data is not valid JSON")?;
                if !data.is_object() {
                    bail!("--data must be a JSON object such as '{{\"k\":\"v\"}}'");
                }
                raw.insert("data".into(), data);
            }
            parse_gcm(serde_json::Value::Object(raw).to_string().as_bytes())
                .context("cannot build the message")?
        }
    };
    if msg.to.is_empty() {
        bail!("give the registration token (--token)");
    }
    msg.dry_run |= a.dry_run;
    Ok(msg)
}

fn run_gcm(a: GcmSendArgs) -> anyhow::Result<ExitCode> {
    let msg = build_message(&a)?;
    let Some(auth) = a.credentials.auth()? else {
        bail!("give a service account (--service-account FILE) or a legacy key (--api-key)");
    };
    if a.attempt.attempts == 0 {
        bail!("--attempts must be at least 1");
    }
    let mut config = FcmConfig::new(auth);
    if let Some(url) = &a.endpoint.endpoint {
        config.base_url = url.clone();
    }
    config.project_id = a.credentials.project.clone();
    config.ca_file = a.endpoint.ca.clone();
    config.insecure = a.endpoint.insecure;
    config.http = http_version(a.http1, a.http2);
    (config.pool, config.retry) = one_shot(&a.attempt);
    let sender = FcmSender::new(config)?;
    send_and_print(sender.send_with_details(&msg), gcm_line, |d| {
        d.outcome.is_delivered()
    })
}

/// The JSON line `pusher send gcm` prints.
fn gcm_line(d: &FcmDelivery) -> serde_json::Value {
    serde_json::json!({
        "outcome": d.outcome.class(),
        "status": d.status,
        "reason": d.outcome.reason().map(str::to_owned).or_else(|| d.error_code.clone()),
        "error_code": d.error_code,
        "error_message": d.error_message,
        "message_id": d.message_id,
        "canonical_registration_id": d.canonical_registration_id,
        "attempts": d.attempts,
        "error": d.transport_error,
    })
}

/// Web push's TTL header is whole seconds: a bare number is that, else a duration (`1h`).
fn ttl_seconds(s: &str) -> Result<u32, String> {
    let s = s.trim();
    let secs = match s.parse::<u64>() {
        Ok(n) => n,
        // Rounded up: `500ms` is not 0, "deliver now or drop".
        Err(_) => humantime::parse_duration(s)
            .map_err(|_| format!("{s:?}: expected seconds (3600) or a duration (1h, 90s)"))?
            .as_secs_f64()
            .ceil() as u64,
    };
    u32::try_from(secs).map_err(|_| format!("{s:?}: over {} seconds", u32::MAX))
}

#[cfg(test)]
mod tests {
    #[test]
    fn ttl_takes_seconds_or_a_duration() {
        assert_eq!(super::ttl_seconds("3600"), Ok(3600));
        assert_eq!(super::ttl_seconds("1h"), Ok(3600));
        assert_eq!(super::ttl_seconds("0"), Ok(0));
        assert_eq!(super::ttl_seconds("500ms"), Ok(1));
        assert!(super::ttl_seconds("soon")
            .unwrap_err()
            .contains("a duration"));
        assert!(super::ttl_seconds("5000000000").is_err());
    }
}
