//! `pusher send gcm`: one FCM push to one token, printed as one JSON line.
//! Exit codes: 0 delivered, 1 not delivered, 2 usage or configuration error.

use super::{FcmAuth, FcmConfig, FcmDelivery, FcmSender, HttpVersion, ServiceAccount};
use crate::push::gcm::GcmMessage;
use crate::push::message::parse_gcm;
use anyhow::{bail, Context};
use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Debug, Args)]
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

    /// HTTP v1: the service-account JSON file (project id and token endpoint from it).
    #[arg(long, conflicts_with = "api_key")]
    pub service_account: Option<PathBuf>,
    /// HTTP v1: the project to send as (default: the service account's project_id).
    #[arg(long)]
    pub project: Option<String>,
    /// HTTP v1: use this token endpoint instead of the service account's token_uri.
    #[arg(long, requires = "service_account")]
    pub token_uri: Option<String>,
    /// Legacy HTTP API (/fcm/send) with this server key (Google shut the real one down in
    /// 2024; for fakes and old setups).
    #[arg(long, env = "PUSHER_GCM_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Legacy sender id (accepted for the seed's configuration; not sent).
    #[arg(long)]
    pub sender_id: Option<String>,

    /// Base URL, e.g. https://127.0.0.1:8443 or http://127.0.0.1:8080 (h2c) (default:
    /// https://fcm.googleapis.com).
    #[arg(long)]
    pub endpoint: Option<String>,
    /// Trust only this CA (PEM) for the endpoint's and the token endpoint's certificates.
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// Do not verify certificates (self-signed fakes only).
    #[arg(long)]
    pub insecure: bool,
    /// Speak HTTP/1.1 only (default: HTTP/2, falling back to HTTP/1.1 when the endpoint
    /// does not speak HTTP/2).
    #[arg(long, conflicts_with = "http2")]
    pub http1: bool,
    /// Speak HTTP/2 only (no fallback).
    #[arg(long)]
    pub http2: bool,
    /// Per-attempt timeout.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Attempts in all (retries on 429, 5xx and transport failures).
    #[arg(long, default_value_t = 3)]
    pub attempts: u32,
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

pub fn run(a: GcmSendArgs) -> anyhow::Result<ExitCode> {
    let msg = build_message(&a)?;
    let auth = match (&a.service_account, &a.api_key) {
        (Some(path), None) => {
            let mut account = ServiceAccount::from_file(path)?;
            if let Some(uri) = &a.token_uri {
                account = account.with_token_uri(uri.clone());
            }
            FcmAuth::ServiceAccount(account)
        }
        (None, Some(key)) => FcmAuth::ApiKey(key.clone()),
        _ => bail!("give a service account (--service-account FILE) or a legacy key (--api-key)"),
    };
    if a.attempts == 0 {
        bail!("--attempts must be at least 1");
    }
    let mut config = FcmConfig::new(auth);
    if let Some(url) = &a.endpoint {
        config.base_url = url.clone();
    }
    config.project_id = a.project.clone();
    config.ca_file = a.ca.clone();
    config.insecure = a.insecure;
    config.http = match (a.http1, a.http2) {
        (true, _) => HttpVersion::Http1,
        (_, true) => HttpVersion::Http2,
        _ => HttpVersion::Auto,
    };
    (config.pool, config.retry) = crate::sender::cli::one_shot(a.timeout, a.attempts);
    let sender = FcmSender::new(config)?;
    crate::sender::cli::send_and_print(sender.send_with_details(&msg), report_line, |d| {
        d.outcome.is_delivered()
    })
}

/// The JSON line `pusher send gcm` prints.
pub fn report_line(d: &FcmDelivery) -> serde_json::Value {
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
