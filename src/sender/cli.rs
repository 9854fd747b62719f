//! `pusher send apns|gcm`: one push to one token, printed as one JSON line.
//! Exit codes: 0 delivered, 1 not delivered, 2 usage or configuration error.

use crate::cli::GlobalArgs;
use crate::push::apns::{ApnsNotification, PushType};
use crate::sender::apns::{self, ApnsAuth, ApnsConfig, ApnsSender, Delivery, TokenAuth};
use crate::sender::{Endpoint, PoolConfig, RetryPolicy};
use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use std::path::PathBuf;
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
    Gcm(Box<crate::sender::fcm::cli::GcmSendArgs>),
}

#[derive(Debug, Args)]
pub struct ApnsSendArgs {
    /// Device token (hex).
    #[arg(long)]
    pub token: String,
    /// JSON payload, e.g. '{"aps":{"alert":"hi"}}'.
    #[arg(long)]
    pub payload: String,
    /// apns-topic (the app's bundle id); required with token auth.
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

    /// Token auth: the .p8 key file (with --key-id and --team-id).
    #[arg(long, requires_all = ["key_id", "team_id"], conflicts_with = "certificate")]
    pub key_file: Option<PathBuf>,
    /// Token auth: the key's 10-character id.
    #[arg(long, requires = "key_file")]
    pub key_id: Option<String>,
    /// Token auth: the team id.
    #[arg(long, requires = "key_file")]
    pub team_id: Option<String>,
    /// Certificate auth: PEM certificate (with its key, or the key in --key) or a .p12 file.
    #[arg(long)]
    pub certificate: Option<PathBuf>,
    /// Certificate auth: the PEM private key when not in the certificate file.
    #[arg(long, requires = "certificate")]
    pub key: Option<PathBuf>,
    /// Certificate auth: the .p12 password.
    #[arg(
        long,
        requires = "certificate",
        env = "PUSHER_APNS_CERTIFICATE_PASSWORD",
        hide_env_values = true
    )]
    pub certificate_password: Option<String>,

    /// Custom endpoint, e.g. https://127.0.0.1:8443 or http://127.0.0.1:8080 (h2c).
    #[arg(long)]
    pub endpoint: Option<String>,
    /// Trust only this CA (PEM) for the endpoint's certificate.
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// Do not verify the endpoint's certificate (self-signed fakes only).
    #[arg(long)]
    pub insecure: bool,
    /// Per-attempt timeout.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Attempts in all (retries on 429, 5xx and transport failures).
    #[arg(long, default_value_t = 3)]
    pub attempts: u32,
}

fn parse_push_type(s: &str) -> Result<PushType, String> {
    PushType::parse(s).ok_or_else(|| format!("unknown push type {s:?}"))
}

pub fn run(args: SendArgs, g: &GlobalArgs) -> anyhow::Result<ExitCode> {
    match args.platform {
        SendPlatform::Apns(a) => run_apns(*a, g),
        SendPlatform::Gcm(a) => crate::sender::fcm::cli::run(*a),
    }
}

fn run_apns(a: ApnsSendArgs, g: &GlobalArgs) -> anyhow::Result<ExitCode> {
    let payload: serde_json::Value =
        serde_json::from_str(&a.payload).context("--payload is not valid JSON")?;
    if !payload.is_object() {
        bail!("--payload must be a JSON object such as '{{\"aps\":{{\"alert\":\"hi\"}}}}'");
    }
    let notification = ApnsNotification {
        token: a.token.clone(),
        topic: a.topic.clone(),
        push_type: a.push_type,
        priority: a.priority,
        expiration: a.expiration,
        collapse_id: a.collapse_id.clone(),
        apns_id: a.apns_id.clone(),
        payload: a.payload.clone().into_bytes().into(),
    };
    // Refuse a bad token or payload before touching the network.
    apns::request::check(&notification).context("cannot send this notification")?;

    let auth = match (&a.key_file, &a.certificate) {
        (Some(key_file), None) => ApnsAuth::Token(TokenAuth::from_file(
            key_file,
            a.key_id.clone().unwrap_or_default(),
            a.team_id.clone().unwrap_or_default(),
        )?),
        (None, Some(cert)) => ApnsAuth::Certificate(apns::load_identity(
            cert,
            a.key.as_deref(),
            a.certificate_password.as_deref(),
        )?),
        _ => bail!(
            "give token auth (--key-file, --key-id, --team-id) or certificate auth (--certificate)"
        ),
    };
    // APNs refuses a token-auth request without a topic (400 MissingTopic): say so before
    // anything is sent. Certificate auth may leave it to the certificate.
    if matches!(auth, ApnsAuth::Token(_)) && a.topic.is_none() {
        bail!("--topic is required with token auth (the app's bundle id, e.g. com.example.app)");
    }
    let endpoint = match &a.endpoint {
        Some(url) => Endpoint::Custom(url.clone()),
        None => Endpoint::apple(g.production),
    };
    if a.attempts == 0 {
        bail!("--attempts must be at least 1");
    }
    let mut config = ApnsConfig::new(endpoint, auth);
    config.ca_file = a.ca.clone();
    config.insecure = a.insecure;
    (config.pool, config.retry) = one_shot(a.timeout, a.attempts);
    let sender = ApnsSender::new(config)?;
    send_and_print(sender.send_with_details(&notification), report_line, |d| {
        d.outcome.is_delivered()
    })
}

/// Pool and retries of a one-shot `pusher send`: one connection, `timeout` to connect and per
/// attempt, `attempts` in all.
pub(crate) fn one_shot(timeout: std::time::Duration, attempts: u32) -> (PoolConfig, RetryPolicy) {
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
pub(crate) fn send_and_print<D>(
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
pub fn report_line(d: &Delivery) -> serde_json::Value {
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
