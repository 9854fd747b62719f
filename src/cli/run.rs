//! `pusher run apns|gcm` (and the seed's `pusher apns|gcm`): load and check the config, build
//! one sender per app, start the outcome handlers, run until SIGINT/SIGTERM.

use super::flags::{ApnsCredentials, BrokersFlag, EndpointFlags, FcmCredentials, ThreadsFlag};
use crate::config::{
    app_entry, ApnsCert, Config, FeedbackReporter, Secret, StatsReporter, TokenHandler, Validated,
    ENV_PREFIX,
};
use crate::pipeline::feedback::FeedbackProducer;
use crate::pipeline::run::{run as run_loop, AppSender, Outputs, RunSpec};
use crate::pipeline::tokens::{pg_pool, DeleterSettings, TokenDeleter};
use crate::push::webpush::EndpointRules;
use crate::push::Platform;
use crate::sender::apns::{load_identity, ApnsAuth, ApnsConfig, ApnsSender, TokenAuth};
use crate::sender::endpoint::Endpoint;
use crate::sender::fcm::{FcmAuth, FcmConfig, FcmSender, ServiceAccount};
use crate::sender::gate::OnFault;
use crate::sender::pool::PoolConfig;
use crate::sender::webpush::{parse_private_key, WebPushConfig, WebPushSender};
use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(subcommand)]
    pub platform: RunPlatform,
}

#[derive(Debug, Subcommand)]
pub enum RunPlatform {
    /// Consume APNs pushes from Kafka.
    Apns(Box<ApnsRunArgs>),
    /// Consume GCM/FCM pushes from Kafka.
    Gcm(Box<GcmRunArgs>),
    /// Consume web pushes (browsers: RFC 8030 with VAPID) from Kafka.
    Webpush(Box<WebPushRunArgs>),
}

impl RunArgs {
    pub fn common(&self) -> &RunFlags {
        match &self.platform {
            RunPlatform::Apns(a) => &a.common,
            RunPlatform::Gcm(a) => &a.common,
            RunPlatform::Webpush(a) => &a.common,
        }
    }

    /// Where the seed's `--config` and `-p` before the command go (no `-p` for gcm).
    pub(super) fn config_and_production(&mut self) -> (&mut Option<PathBuf>, Option<&mut bool>) {
        match &mut self.platform {
            RunPlatform::Apns(a) => (&mut a.common.config, Some(&mut a.production)),
            RunPlatform::Gcm(a) => (&mut a.common.config, None),
            RunPlatform::Webpush(a) => (&mut a.common.config, None),
        }
    }
}

/// What `run apns` and `run gcm` share. Each flag is also a config key (flags win over the
/// file and the environment).
#[derive(Debug, Clone, Args)]
pub struct RunFlags {
    /// Config file [default: ./config/default.yaml when it exists, else built-in defaults].
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// One app (the seed's single-app flag): adds it to `<platform>.apps`, with the
    /// credentials given here.
    #[arg(long)]
    pub app: Option<String>,
    #[command(flatten)]
    pub brokers: BrokersFlag,
    #[command(flatten)]
    pub endpoint: EndpointFlags,
    /// Record every consumed message to this capture file (JSON lines, for `pusher replay`).
    #[arg(long, value_name = "FILE")]
    pub capture: Option<PathBuf>,
    #[command(flatten)]
    pub threads: ThreadsFlag,
    /// Log as JSON lines (the seed's -j, also accepted after the command).
    #[arg(short = 'j', long)]
    pub json: bool,
}

/// `run apns`: the shared flags, APNs credentials for --app, and the APNs host. The
/// credentials are --app's: without it they would be dropped. No environment variable here, so
/// clap may check `requires` and `conflicts_with` (only typed values count).
#[derive(Debug, Clone, Args)]
#[command(
    mut_arg("brokers", |a| a.help(BROKERS_HELP)),
    mut_arg("key_file", |a| a.requires("app")),
    mut_arg("key_id", |a| a.requires("app").conflicts_with("certificate")),
    mut_arg("team_id", |a| a.requires("app").conflicts_with("certificate")),
    mut_arg("certificate", |a| a.requires("app")),
    mut_arg("key", |a| a.requires("app").conflicts_with("key_file")),
    mut_arg("certificate_password", |a| a.requires("app").conflicts_with("key_file"))
)]
pub struct ApnsRunArgs {
    #[command(flatten)]
    pub common: RunFlags,
    #[command(flatten)]
    pub credentials: ApnsCredentials,
    /// apns-topic for --app (the app's bundle id).
    #[arg(long, requires = "app")]
    pub topic: Option<String>,
    /// Use Apple's production host instead of the sandbox (unless --endpoint or the config
    /// names one).
    #[arg(short = 'p', long)]
    pub production: bool,
}

/// `run gcm`: the shared flags and FCM credentials for --app.
#[derive(Debug, Clone, Args)]
#[command(
    mut_arg("brokers", |a| a.help(BROKERS_HELP)),
    mut_arg("api_key", |a| a.alias("apiKey").requires("app")),
    // No environment variable here: clap may check the conflict.
    mut_arg("service_account", |a| a.conflicts_with("api_key").requires("app")),
    mut_arg("project", |a| a.requires("app")),
    mut_arg("token_uri", |a| a.requires("app"))
)]
pub struct GcmRunArgs {
    #[command(flatten)]
    pub common: RunFlags,
    #[command(flatten)]
    pub credentials: FcmCredentials,
    /// GCM legacy sender id for --app (accepted for the seed's configuration; not sent).
    #[arg(long, alias = "senderId", requires = "app")]
    pub sender_id: Option<String>,
}

/// `run webpush`: the shared flags and the VAPID identity for --app.
#[derive(Debug, Clone, Args)]
#[command(mut_arg("brokers", |a| a.help(BROKERS_HELP)))]
pub struct WebPushRunArgs {
    #[command(flatten)]
    pub common: RunFlags,
    /// VAPID private key file for --app (PEM, or the raw key in base64url).
    #[arg(long, value_name = "FILE", requires = "app")]
    pub vapid_key: Option<PathBuf>,
    /// VAPID contact for --app (`mailto:` or `https:`).
    #[arg(long, requires = "app")]
    pub vapid_subject: Option<String>,
    /// Accept http:// endpoints and loopback or private hosts (fakes only).
    #[arg(long)]
    pub allow_local_endpoints: bool,
}

const BROKERS_HELP: &str =
    "Kafka bootstrap servers (host:port,...): queue.brokers and feedback.kafka.brokers";

pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    match args.platform {
        RunPlatform::Apns(a) => run_apns(*a),
        RunPlatform::Gcm(a) => run_gcm(*a),
        RunPlatform::Webpush(a) => run_webpush(*a),
    }
}

pub fn run_webpush(a: WebPushRunArgs) -> anyhow::Result<ExitCode> {
    if a.common.endpoint.endpoint.is_some() {
        bail!("run webpush: --endpoint does not apply (each subscription names its push service)");
    }
    let config = config_env().and_then(|env| webpush_config(&a, env));
    run_platform(Platform::WebPush, &a.common, false, config)
}

pub fn run_apns(a: ApnsRunArgs) -> anyhow::Result<ExitCode> {
    let config = config_env().and_then(|env| apns_config(&a, env));
    run_platform(Platform::Apns, &a.common, a.production, config)
}

pub fn run_gcm(a: GcmRunArgs) -> anyhow::Result<ExitCode> {
    let config = config_env().and_then(|env| gcm_config(&a, env));
    run_platform(Platform::Gcm, &a.common, false, config)
}

/// `run webpush`'s config: the file, `env`, then the flags.
fn webpush_config(a: &WebPushRunArgs, env: Vec<(String, String)>) -> anyhow::Result<Validated> {
    let mut o = overrides(Platform::WebPush, &a.common);
    let app = app_flag(&a.common)?;
    if let Some(app) = app {
        if let Some(file) = path(&a.vapid_key) {
            o.push((format!("webpush.vapid.{app}.privateKeyFile"), file));
        }
        if let Some(subject) = &a.vapid_subject {
            o.push((format!("webpush.vapid.{app}.subject"), subject.clone()));
        }
    }
    if a.allow_local_endpoints {
        o.push(("webpush.allowLocalEndpoints".into(), "true".into()));
    }
    load_settled(a.common.config.as_deref(), env, &o, |c| {
        let Some(app) = app else { return };
        add_app(&mut c.webpush.apps, app);
        // A key file typed for the app replaces a key the file or environment gave it.
        if a.vapid_key.is_some() {
            for vapid in entries(&mut c.webpush.vapid, app) {
                vapid.private_key = None;
            }
        }
    })
}

/// `run apns`'s config: the file, `env`, then the flags.
fn apns_config(a: &ApnsRunArgs, env: Vec<(String, String)>) -> anyhow::Result<Validated> {
    let mut o = overrides(Platform::Apns, &a.common);
    let app = app_flag(&a.common)?;
    if let Some(app) = app {
        let c = &a.credentials;
        let mut cert = cert_overrides(Platform::Apns, app, &mut o);
        cert("certificate", path(&c.certificate));
        cert("certificateKey", path(&c.key));
        cert("password", c.certificate_password.clone());
        cert("authKeyPath", path(&c.key_file));
        cert("keyID", c.key_id.clone());
        cert("teamID", c.team_id.clone());
        cert("topic", a.topic.clone());
    }
    load_settled(a.common.config.as_deref(), env, &o, |c| {
        let Some(app) = app else { return };
        add_app(&mut c.apns.apps, app);
        // One kind of credential typed for the app replaces the other kind that the file or
        // environment gave it (token auth would otherwise win over a typed certificate).
        let flags = &a.credentials;
        for cert in entries(&mut c.apns.certs, app) {
            if flags.key_file.is_some() {
                cert.certificate = None;
                cert.certificate_key = None;
                cert.password = None;
            }
            if flags.certificate.is_some() {
                cert.auth_key_path = None;
                cert.key_id = None;
                cert.team_id = None;
            }
        }
    })
}

/// `run gcm`'s config: the file, `env`, then the flags.
fn gcm_config(a: &GcmRunArgs, env: Vec<(String, String)>) -> anyhow::Result<Validated> {
    let mut o = overrides(Platform::Gcm, &a.common);
    let app = app_flag(&a.common)?;
    if let Some(app) = app {
        let c = &a.credentials;
        let mut cert = cert_overrides(Platform::Gcm, app, &mut o);
        cert("serviceAccountFile", path(&c.service_account));
        cert("apiKey", c.api_key.clone());
        cert("projectID", c.project.clone());
        cert("tokenURI", c.token_uri.clone());
        cert("senderID", a.sender_id.clone());
    }
    load_settled(a.common.config.as_deref(), env, &o, |c| {
        let Some(app) = app else { return };
        add_app(&mut c.gcm.apps, app);
        // As for APNs: a service account (file or firebaseCredentials) would win over a
        // typed --api-key, and a configured key is no use beside a typed --service-account.
        let flags = &a.credentials;
        if flags.service_account.is_some() || flags.api_key.is_some() {
            c.gcm
                .firebase_credentials
                .retain(|name, _| !name.eq_ignore_ascii_case(app));
        }
        for cert in entries(&mut c.gcm.certs, app) {
            if flags.service_account.is_some() {
                cert.api_key = None;
            }
            if flags.api_key.is_some() {
                cert.service_account_file = None;
            }
        }
    })
}

/// The shared flags as config overrides (dotted keys), the last layer. `--app` is added to
/// the platform's apps after loading ([`add_app`]).
fn overrides(platform: Platform, a: &RunFlags) -> Vec<(String, String)> {
    let p = platform.as_str();
    let mut o = Vec::new();
    if let Some(b) = &a.brokers.brokers {
        o.push(("queue.brokers".into(), b.clone()));
        o.push(("feedback.kafka.brokers".into(), b.clone()));
    }
    if let Some(e) = &a.endpoint.endpoint {
        o.push((format!("{p}.endpoint"), e.clone()));
    }
    o
}

/// `--app`, checked before it becomes part of a dotted key (`--app my.game` would name the
/// key `certs.my.game.keyID`).
fn app_flag(a: &RunFlags) -> anyhow::Result<Option<&str>> {
    match a.app.as_deref() {
        Some(app) if !crate::push::app::is_valid_name(app) => {
            bail!("--app: app name {app:?} may hold only letters, digits, '_' and '-'")
        }
        app => Ok(app),
    }
}

/// `--app` adds its app to the configured ones (the seed's single-app flag).
fn add_app(apps: &mut Vec<String>, app: &str) {
    if apps.iter().any(|a| a == app) {
        return;
    }
    // Said at start: before 2026-12-06 `--app` replaced the list, and a fleet that ran one
    // process per app from a shared config would now serve every app in each.
    if !apps.is_empty() {
        tracing::warn!(app, configured = %apps.join(","), "--app adds its app to the configured ones: this process serves them all.");
    }
    apps.push(app.to_owned());
}

/// The app's entries in a per-app map: every key that matches it case-insensitively, as
/// [`app_entry`] finds them.
fn entries<'a, T>(
    map: &'a mut std::collections::BTreeMap<String, T>,
    app: &'a str,
) -> impl Iterator<Item = &'a mut T> + 'a {
    map.iter_mut()
        .filter(move |(name, _)| name.eq_ignore_ascii_case(app))
        .map(|(_, v)| v)
}

/// Adds `<platform>.certs.<app>.<key>` overrides for the flags given.
fn cert_overrides<'a>(
    platform: Platform,
    app: &'a str,
    o: &'a mut Vec<(String, String)>,
) -> impl FnMut(&str, Option<String>) + 'a {
    move |key, value| {
        if let Some(v) = value {
            o.push((format!("{platform}.certs.{app}.{key}"), v));
        }
    }
}

fn path(p: &Option<PathBuf>) -> Option<String> {
    p.as_ref().map(|p| p.display().to_string())
}

fn run_platform(
    platform: Platform,
    flags: &RunFlags,
    production: bool,
    config: anyhow::Result<Validated>,
) -> anyhow::Result<ExitCode> {
    // Sentry first, so that a failure to start is reported too; when the config itself is bad,
    // its URL can only come from the environment.
    let dsn = match &config {
        Ok(c) => c.sentry.url.clone(),
        Err(_) => std::env::var("PUSHER_SENTRY_URL").ok().map(Secret::new),
    };
    let _sentry = crate::telemetry::init_sentry(dsn.as_ref())?;
    let result = config.and_then(|config| run_configured(platform, flags, production, config));
    if let Err(e) = &result {
        crate::telemetry::report_error(&format!("pusher run {platform}: {e:#}"));
    }
    result
}

/// The config: `file` (which must exist), else `./config/default.yaml` when it is there (the
/// seed's default path), else the built-in defaults; then the environment and `overrides`.
pub(super) fn load_config(
    file: Option<&std::path::Path>,
    overrides: &[(String, String)],
) -> anyhow::Result<Validated> {
    load_settled(file, config_env()?, overrides, |_| {})
}

/// [`load_config`] with the environment given, and `settle` applied to the loaded config
/// before it is validated (what the flags do that no override can: add an app, clear a
/// credential).
fn load_settled(
    file: Option<&std::path::Path>,
    env: Vec<(String, String)>,
    overrides: &[(String, String)],
    settle: impl FnOnce(&mut Config),
) -> anyhow::Result<Validated> {
    let default = PathBuf::from("./config/default.yaml");
    let path = file
        .map(std::path::Path::to_path_buf)
        .or_else(|| default.is_file().then_some(default));
    let mut config = Config::load_with(path.as_deref(), env.into_iter(), overrides)?;
    settle(&mut config);
    Ok(config.validate()?)
}

/// The process's environment for the config. `std::env::vars` panics on a variable that is
/// not UTF-8 (exit 101): one that is not `PUSHER_` is none of the config's business and
/// skipped; a `PUSHER_` one is an error naming it, its value unprinted.
fn config_env() -> anyhow::Result<Vec<(String, String)>> {
    let mut vars = Vec::new();
    for (name, value) in std::env::vars_os() {
        match (name.to_str(), value.to_str()) {
            (Some(name), Some(value)) => vars.push((name.to_owned(), value.to_owned())),
            _ if name
                .as_encoded_bytes()
                .get(..ENV_PREFIX.len())
                .is_some_and(|p| p.eq_ignore_ascii_case(ENV_PREFIX.as_bytes())) =>
            {
                bail!(
                    "{}: the environment variable is not UTF-8 text",
                    name.to_string_lossy()
                )
            }
            _ => {}
        }
    }
    Ok(vars)
}

fn run_configured(
    platform: Platform,
    flags: &RunFlags,
    production: bool,
    config: Validated,
) -> anyhow::Result<ExitCode> {
    tracing::debug!(config = ?config, "Configuration loaded.");
    if !config.seed_keys.is_empty() {
        let keys: Vec<String> = config
            .seed_keys
            .iter()
            .map(|k| format!("{} (now: {})", k.key, k.now))
            .collect();
        tracing::warn!(keys = keys.join(", "), "Ignoring config keys of the seed.");
    }
    let apps = match platform {
        Platform::Apns => apns_senders(&config, &flags.endpoint, production)?,
        Platform::Gcm => gcm_senders(&config, &flags.endpoint)?,
        Platform::WebPush => webpush_senders(&config, &flags.endpoint)?,
    };
    let mut app_names: Vec<String> = apps.keys().cloned().collect();
    app_names.sort();
    let mut spec = spec(platform, &config, &app_names)?;
    let capture = match &flags.capture {
        Some(path) => Some(Arc::new(crate::replay::capture::CaptureWriter::create(
            path,
        )?)),
        None => None,
    };
    if let Some(capture) = &capture {
        let tap: Arc<dyn crate::pipeline::run::Capture> = capture.clone();
        spec.capture = Some(tap);
    }

    let runtime = crate::runtime::build(flags.threads.threads, "pusher-run")
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let stop = CancellationToken::new();
        super::cancel_on_signal(stop.clone())?;
        let outputs = outputs(platform, &config)?;
        let listen = &config.stats.prometheus.listen;
        super::serve_metrics("stats.prometheus.listen", listen, &config).await?;
        let summary = run_loop(spec, apps, Outputs { ..outputs.0 }, stop).await?;
        if let Some(deleter) = outputs.1.deleter {
            let stats = deleter.shutdown(Duration::from_secs(10)).await;
            tracing::info!(stats = %crate::telemetry::Json(&stats), "Token deleter stopped.");
        }
        if let Some(capture) = capture {
            let n = capture.finish()?;
            tracing::info!(records = n, "Capture written.");
        }
        tracing::info!(
            consumed = summary.consumed,
            finished = summary.finished,
            abandoned = summary.abandoned,
            outcomes = %crate::telemetry::Json(&summary.outcomes),
            "Stopped."
        );
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// One APNs sender per configured app.
fn apns_senders(
    config: &Validated,
    endpoint_flags: &EndpointFlags,
    production: bool,
) -> anyhow::Result<HashMap<String, AppSender>> {
    let mut senders = HashMap::new();
    for (app, c) in apns_configs(config, endpoint_flags, production)? {
        let sender = ApnsSender::new(c).with_context(|| format!("apns.certs.{app}"))?;
        senders.insert(app, AppSender::apns(sender));
    }
    if senders.is_empty() {
        bail!("apns.apps: no app configured (set PUSHER_APNS_APPS, apns.apps, or --app)");
    }
    Ok(senders)
}

/// Each configured app's sender configuration; apps with the same token key share its signer.
fn apns_configs(
    config: &Validated,
    endpoint_flags: &EndpointFlags,
    production: bool,
) -> anyhow::Result<Vec<(String, ApnsConfig)>> {
    let endpoint = match &config.apns.endpoint {
        Some(url) => Endpoint::Custom(url.clone()),
        None => Endpoint::apple(production),
    };
    let mut configs = Vec::new();
    let mut signers = crate::sender::apns::Signers::default();
    for app in &config.apns.apps {
        let cert = app_entry(&config.apns.certs, app)
            .cloned()
            .unwrap_or_default();
        let auth = apns_auth(app, &cert)?;
        if cert.topic.is_none() && matches!(auth, ApnsAuth::Token(_)) {
            // APNs requires apns-topic with token auth (a certificate names its own).
            tracing::warn!(
                app,
                "No topic configured (apns.certs.<app>.topic, --topic): with token auth, each message must carry its own `topic`, or it ends malformed (MissingTopic)."
            );
        }
        let mut c = ApnsConfig::new(endpoint.clone(), auth);
        c.default_topic = cert.topic.clone();
        c.ca_file = endpoint_flags.ca.clone();
        c.insecure = endpoint_flags.insecure;
        c.pool = PoolConfig {
            connections: config.apns.connection_pool_size.max(1),
            ..PoolConfig::default()
        };
        c.retry.max_attempts = config.apns.retry.max_retry_attempts.max(1);
        c.retry.base = config.apns.retry.interval;
        // A failing endpoint or refused credentials pause the app's messages, never end them.
        c.on_fault = OnFault::Wait;
        c.name = format!("apns {app}");
        if let ApnsAuth::Token(auth) = &c.auth {
            c.signer = Some(
                signers
                    .get(auth, &c.clock)
                    .with_context(|| format!("apns.certs.{app}"))?,
            );
        }
        configs.push((app.clone(), c));
    }
    let mut keys_of_team: HashMap<&str, std::collections::BTreeSet<&str>> = HashMap::new();
    for (_, c) in &configs {
        if let ApnsAuth::Token(auth) = &c.auth {
            keys_of_team
                .entry(&auth.team_id)
                .or_default()
                .insert(&auth.key_id);
        }
    }
    for (team, keys) in keys_of_team.iter().filter(|(_, keys)| keys.len() > 1) {
        tracing::warn!(
            team,
            ?keys,
            "Apps of one team with different keys: each key mints its own token, and Apple counts token changes per team (TooManyProviderTokenUpdates); give the team's apps one key."
        );
    }
    Ok(configs)
}

/// One FCM sender per configured app: HTTP v1 with a service account (a file, or the seed's
/// `firebaseCredentials` JSON string), or legacy HTTP with an API key.
fn gcm_senders(
    config: &Validated,
    endpoint_flags: &EndpointFlags,
) -> anyhow::Result<HashMap<String, AppSender>> {
    let mut senders = HashMap::new();
    for app in &config.gcm.apps {
        let key = format!("gcm.certs.{app}");
        let cert = app_entry(&config.gcm.certs, app)
            .cloned()
            .unwrap_or_default();
        let account = if let Some(path) = &cert.service_account_file {
            Some(
                ServiceAccount::from_file(path)
                    .with_context(|| format!("{key}.serviceAccountFile"))?,
            )
        } else if let Some(json) =
            app_entry(&config.gcm.firebase_credentials, app).filter(|json| !json.is_empty())
        {
            Some(
                ServiceAccount::from_json(json.expose().as_bytes())
                    .with_context(|| format!("gcm.firebaseCredentials.{app}"))?,
            )
        } else {
            None
        };
        let auth = if let Some(mut account) = account {
            if let Some(uri) = &cert.token_uri {
                account = account.with_token_uri(uri.clone());
            }
            FcmAuth::ServiceAccount(account)
        } else if let Some(api_key) = &cert.api_key {
            FcmAuth::ApiKey(api_key.expose().to_string())
        } else {
            bail!("{key}: give serviceAccountFile (FCM HTTP v1), gcm.firebaseCredentials.{app}, or apiKey (legacy)");
        };
        let mut c = FcmConfig::new(auth);
        if let Some(url) = &config.gcm.endpoint {
            c.base_url = url.clone();
        }
        c.project_id = cert.project_id.clone();
        c.ca_file = endpoint_flags.ca.clone();
        c.insecure = endpoint_flags.insecure;
        c.on_fault = OnFault::Wait;
        c.name = format!("gcm {app}");
        let sender = FcmSender::new(c).with_context(|| key.clone())?;
        senders.insert(app.clone(), AppSender::gcm(sender));
    }
    if senders.is_empty() {
        bail!("gcm.apps: no app configured (set PUSHER_GCM_APPS, gcm.apps, or --app)");
    }
    Ok(senders)
}

/// One web push sender per configured app.
fn webpush_senders(
    config: &Validated,
    endpoint_flags: &EndpointFlags,
) -> anyhow::Result<HashMap<String, AppSender>> {
    let w = &config.webpush;
    let mut senders = HashMap::new();
    for app in &w.apps {
        let key = format!("webpush.vapid.{app}");
        let vapid = app_entry(&w.vapid, app).cloned().unwrap_or_default();
        let text = match (&vapid.private_key, &vapid.private_key_file) {
            (Some(secret), _) => secret.expose().to_string(),
            (None, Some(path)) => std::fs::read_to_string(path)
                .with_context(|| format!("{key}.privateKeyFile: reading {}", path.display()))?,
            (None, None) => bail!("{key}: give privateKey or privateKeyFile"),
        };
        let private = parse_private_key(&text).with_context(|| key.clone())?;
        let mut c = WebPushConfig::new(private, vapid.subject.clone().unwrap_or_default());
        c.rules = if w.allow_local_endpoints {
            EndpointRules::LOCAL
        } else {
            EndpointRules::STRICT
        };
        c.push_services = w.push_services.clone();
        c.ca_file = endpoint_flags.ca.clone();
        c.insecure = endpoint_flags.insecure;
        c.max_origins = w.max_origins;
        c.pool.connections = w.connections_per_origin.max(1);
        c.retry.max_attempts = w.retry.max_retry_attempts.max(1);
        c.retry.base = w.retry.interval;
        c.on_fault = OnFault::Wait;
        c.name = format!("webpush {app}");
        let sender = WebPushSender::new(c).with_context(|| key.clone())?;
        tracing::info!(app = %app, public_key = sender.public_key(), "Web push VAPID key loaded.");
        senders.insert(app.clone(), AppSender::webpush(sender));
    }
    if senders.is_empty() {
        bail!("webpush.apps: no app configured (set PUSHER_WEBPUSH_APPS, webpush.apps, or --app)");
    }
    Ok(senders)
}

fn apns_auth(app: &str, cert: &ApnsCert) -> anyhow::Result<ApnsAuth> {
    let key = format!("apns.certs.{app}");
    if let Some(path) = &cert.auth_key_path {
        let (Some(kid), Some(team)) = (&cert.key_id, &cert.team_id) else {
            bail!("{key}: authKeyPath needs keyID and teamID");
        };
        return Ok(ApnsAuth::Token(
            TokenAuth::from_file(path, kid.clone(), team.clone())
                .with_context(|| format!("{key}.authKeyPath"))?,
        ));
    }
    if let Some(path) = &cert.certificate {
        let password = cert.password.as_ref().map(|p| p.expose().to_string());
        let identity = load_identity(path, cert.certificate_key.as_deref(), password.as_deref())
            .with_context(|| format!("{key}.certificate"))?;
        return Ok(ApnsAuth::Certificate(identity));
    }
    bail!("{key}: give authKeyPath + keyID + teamID (token auth) or certificate (+ password)")
}

/// How the loop consumes: this platform's topics only, in this platform's group.
fn spec(platform: Platform, config: &Validated, apps: &[String]) -> anyhow::Result<RunSpec> {
    let topics = config.topics(platform, apps)?;
    let mut spec = RunSpec::new(
        platform,
        config.queue.brokers.clone(),
        config.group(platform),
        topics,
    );
    spec.session_timeout = config.queue.session_timeout;
    spec.offset_reset = config.queue.offset_reset_strategy.as_str().to_owned();
    spec.max_in_flight = config.in_flight.max(1);
    spec.include_success_feedback = config.feedback.include_success;
    spec.shutdown_timeout = if config.queue.handle_all_messages_before_exiting {
        config.graceful_shutdown_timeout
    } else {
        Duration::ZERO
    };
    spec.log_interval = config.stats.log_interval;
    Ok(spec)
}

/// What the outputs leave running beside the loop: stopped after it.
struct Background {
    deleter: Option<TokenDeleter>,
    /// Sends StatsD's last interval when dropped.
    _statsd: Option<crate::telemetry::FlushOnDrop>,
}

/// Feedback producer, token deleter and stats, as configured.
fn outputs(platform: Platform, config: &Validated) -> anyhow::Result<(Outputs, Background)> {
    let feedback = if config.feedback.reporters.contains(&FeedbackReporter::Kafka) {
        Some(Arc::new(
            FeedbackProducer::from_config(&config.feedback.kafka).context("feedback.kafka")?,
        ))
    } else {
        None
    };
    let statsd = if config.stats.reporters.contains(&StatsReporter::Statsd) {
        let client =
            crate::telemetry::statsd(&config.stats.statsd.host, &config.stats.statsd.prefix)?;
        Some(Arc::new(crate::telemetry::StatsdBatch::new(client)))
    } else {
        None
    };
    let deleter = if config.invalid_token.handlers.contains(&TokenHandler::Pg) {
        let pool = pg_pool(&config.invalid_token.pg).context("invalidToken.pg")?;
        let settings = DeleterSettings::from_config(&config.invalid_token);
        Some(TokenDeleter::spawn_reporting(
            pool,
            settings,
            statsd.clone(),
        ))
    } else {
        None
    };
    let background = Background {
        // Counters are summed and sent once per flushIntervalInMs.
        _statsd: statsd
            .as_ref()
            .map(|s| s.spawn_flusher(config.stats.statsd.flush_interval)),
        deleter,
    };
    let observer: Arc<dyn crate::pipeline::run::Observer> =
        Arc::new(crate::pipeline::stats::StatsObserver::new(platform, statsd));
    let outputs = Outputs {
        feedback,
        tokens: background.deleter.as_ref().map(TokenDeleter::queue),
        observer: Some(observer),
    };
    Ok((outputs, background))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use std::io::Write;

    const P8: &str = "fixtures/apns/AuthKey_TESTKEY001.p8";
    const P12: &str = "fixtures/apns/client.p12";
    const SA: &str = "fixtures/fcm/service-account.json";

    fn file(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::Builder::new().suffix(".yaml").tempfile().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn parse(args: &[&str]) -> Result<RunPlatform, clap::Error> {
        let cli = Cli::try_parse_all(std::iter::once("pusher").chain(args.iter().copied()))?;
        let Command::Run(r) = cli.command else {
            panic!("not run: {args:?}")
        };
        Ok(r.platform)
    }

    fn apns(args: &[&str], pairs: &[(&str, &str)]) -> anyhow::Result<Validated> {
        let RunPlatform::Apns(a) = parse(&[&["run", "apns"][..], args].concat()).unwrap() else {
            panic!()
        };
        apns_config(&a, env(pairs))
    }

    fn gcm(args: &[&str], pairs: &[(&str, &str)]) -> anyhow::Result<Validated> {
        let RunPlatform::Gcm(a) = parse(&[&["run", "gcm"][..], args].concat()).unwrap() else {
            panic!()
        };
        gcm_config(&a, env(pairs))
    }

    /// `--app` adds its app to the configured ones, as the README says; it replaced them.
    #[test]
    fn app_adds_to_the_configured_apps() {
        let yaml = file(&format!(
            "apns:\n  apps: game,other\n  certs:\n    game: &c\n      authKeyPath: {P8}\n      keyID: TESTKEY001\n      teamID: TEAM000001\n      topic: com.example.game\n    other: *c\n"
        ));
        let path = yaml.path().to_str().unwrap();
        let token = [
            "--key-file",
            P8,
            "--key-id",
            "K",
            "--team-id",
            "T",
            "--topic",
            "t",
        ];
        let c = apns(
            &[&["--config", path, "--app", "third"][..], &token].concat(),
            &[],
        )
        .unwrap();
        assert_eq!(c.apns.apps, ["game", "other", "third"]);
        let topics = c.topics(Platform::Apns, &c.apns.apps).unwrap();
        for app in ["game", "other", "third"] {
            assert!(topics.contains(&format!("push-{app}_apns")), "{topics:?}");
        }
        // An app already configured is not added twice; its credentials are the flags'.
        let c = apns(
            &[&["--config", path, "--app", "other"][..], &token].concat(),
            &[],
        )
        .unwrap();
        assert_eq!(c.apns.apps, ["game", "other"]);
        assert_eq!(c.apns.certs["other"].key_id.as_deref(), Some("K"));
        // From the environment too.
        let c = apns(
            &[&["--app", "third"][..], &token].concat(),
            &[("PUSHER_APNS_APPS", "game")],
        );
        // game has no credentials here: the error names it, so it was kept.
        let e = c.unwrap_err().to_string();
        assert!(e.starts_with("apns.certs.game"), "{e}");
    }

    /// Apps configured with the same .p8 key share one signer, and so one token of the team
    /// (Apple counts token changes per team); an app with another team has its own.
    #[test]
    fn apps_with_one_key_share_its_signer() {
        let yaml = file(&format!(
            "apns:\n  apps: game,other,third\n  certs:\n    game: &c\n      authKeyPath: {P8}\n      keyID: TESTKEY001\n      teamID: TEAM000001\n      topic: com.example.game\n    other: *c\n    third:\n      authKeyPath: {P8}\n      keyID: TESTKEY001\n      teamID: TEAM000002\n      topic: com.example.third\n"
        ));
        let c = apns(&["--config", yaml.path().to_str().unwrap()], &[]).unwrap();
        let configs = apns_configs(&c, &EndpointFlags::default(), false).unwrap();
        let signer = |app: &str| {
            let (_, c) = configs.iter().find(|(a, _)| a == app).unwrap();
            c.signer.clone().unwrap()
        };
        assert!(Arc::ptr_eq(&signer("game"), &signer("other")));
        assert!(!Arc::ptr_eq(&signer("game"), &signer("third")));
    }

    /// A credential flag without `--app` was dropped without a word: a usage error now.
    #[test]
    fn credential_flags_need_app() {
        for args in [
            &["run", "apns", "--key-file", P8][..],
            &["run", "apns", "--key-id", "K"],
            &["run", "apns", "--team-id", "T"],
            &["run", "apns", "--certificate", P12],
            &["run", "apns", "--key", "k.pem"],
            &["run", "apns", "--certificate-password", "p"],
            &["run", "apns", "--topic", "t"],
            &["apns", "--certificate", P12],
            &["run", "gcm", "--service-account", SA],
            &["run", "gcm", "--api-key", "k"],
            &["run", "gcm", "--project", "p"],
            &["run", "gcm", "--token-uri", "http://t"],
            &["run", "gcm", "--sender-id", "1"],
            &["gcm", "--apiKey", "k"],
            &["run", "webpush", "--vapid-key", "v.pem"],
            &["run", "webpush", "--vapid-subject", "mailto:a@b"],
        ] {
            let err = Cli::try_parse_all(std::iter::once("pusher").chain(args.iter().copied()))
                .unwrap_err();
            assert_eq!(err.exit_code(), 2, "{args:?}");
            assert!(err.to_string().contains("--app"), "{args:?}: {err}");
        }
        // Both kinds typed for one app: refused.
        for args in [
            &["--app", "g", "--certificate", P12, "--key-id", "K"][..],
            &[
                "--app",
                "g",
                "--key-file",
                P8,
                "--certificate-password",
                "p",
            ],
        ] {
            assert!(
                parse(&[&["run", "apns"][..], args].concat()).is_err(),
                "{args:?}"
            );
        }
    }

    /// A credential typed for the app replaces the other kind from the file or environment:
    /// the environment's token key won over a typed certificate, a configured service account
    /// over a typed server key.
    #[test]
    fn a_typed_credential_replaces_the_other_kind() {
        let token_env = [
            ("PUSHER_APNS_CERTS_G_AUTHKEYPATH", P8),
            ("PUSHER_APNS_CERTS_G_KEYID", "TESTKEY001"),
            ("PUSHER_APNS_CERTS_G_TEAMID", "TEAM000001"),
            ("PUSHER_APNS_CERTS_G_TOPIC", "com.example.app"),
        ];
        let cert = ["--certificate", P12, "--certificate-password", "test"];
        let c = apns(&[&["--app", "g"][..], &cert].concat(), &token_env).unwrap();
        let g = app_entry(&c.apns.certs, "g").unwrap();
        assert!(g.auth_key_path.is_none() && g.key_id.is_none(), "{g:?}");
        assert!(matches!(
            apns_auth("g", g).unwrap(),
            ApnsAuth::Certificate(_)
        ));
        // The other way round, the configured certificate and its password go.
        let cert_env = [
            ("PUSHER_APNS_CERTS_G_CERTIFICATE", P12),
            ("PUSHER_APNS_CERTS_G_PASSWORD", "test"),
            ("PUSHER_APNS_CERTS_G_TOPIC", "com.example.app"),
        ];
        let token = ["--key-file", P8, "--key-id", "TESTKEY001", "--team-id", "T"];
        let c = apns(&[&["--app", "G"][..], &token].concat(), &cert_env).unwrap();
        let g = app_entry(&c.apns.certs, "G").unwrap();
        assert!(g.certificate.is_none() && g.password.is_none(), "{g:?}");
        assert!(matches!(apns_auth("G", g).unwrap(), ApnsAuth::Token(_)));

        // FCM: a typed server key over a configured service account (file or JSON).
        let yaml = file(&format!(
            "gcm:\n  certs:\n    game:\n      serviceAccountFile: {SA}\n  firebaseCredentials:\n    game: '{{}}'\n"
        ));
        let path = yaml.path().to_str().unwrap();
        let args = ["--config", path, "--app", "game", "--api-key", "k"];
        let c = gcm(&args, &[]).unwrap();
        assert!(c.gcm.certs["game"].service_account_file.is_none());
        assert!(c.gcm.firebase_credentials.is_empty());
        // And a typed service account over a configured key.
        let c = gcm(
            &["--app", "game", "--service-account", SA],
            &[("PUSHER_GCM_CERTS_GAME_APIKEY", "k")],
        )
        .unwrap();
        assert!(c.gcm.certs["game"].api_key.is_none());

        // Web push: a typed key file over a configured key (it was "needs exactly one").
        let RunPlatform::Webpush(a) = parse(&[
            "run",
            "webpush",
            "--app",
            "web",
            "--vapid-key",
            P8,
            "--vapid-subject",
            "mailto:ops@example.com",
        ])
        .unwrap() else {
            panic!()
        };
        let c = webpush_config(
            &a,
            env(&[(
                "PUSHER_WEBPUSH_VAPID_WEB_PRIVATEKEY",
                "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE",
            )]),
        )
        .unwrap();
        let w = &c.webpush.vapid["web"];
        assert!(w.private_key.is_none() && w.private_key_file.is_some());
    }

    /// `--app my.game` became the key `apns.certs.my.game.keyID`: "unknown key". The app name
    /// is checked first.
    #[test]
    fn app_names_are_checked_before_they_become_keys() {
        let e = apns(&["--app", "my.game", "--key-id", "K"], &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("--app: app name \"my.game\" may hold only letters"),
            "{e}"
        );
    }
}
