//! Flag groups that several commands share, each defined once and flattened where it applies.
//! A command that gives a flag a narrower meaning (its help, a constraint, an environment
//! variable, an old spelling) says so with `#[command(mut_arg(...))]` on its own arguments.

use crate::bench::Transport;
use crate::runtime::Threads;
use crate::sender::apns::{load_identity, ApnsAuth, TokenAuth};
use crate::sender::fcm::{FcmAuth, ServiceAccount};
use crate::units::{parse_count, parse_rate};
use anyhow::bail;
use clap::parser::ValueSource;
use clap::{ArgMatches, Args};
use std::path::PathBuf;
use std::time::Duration;

/// Where to send instead of Apple's or Google's hosts.
#[derive(Debug, Clone, Default, Args)]
pub struct EndpointFlags {
    /// Send to this base URL instead of Apple's or Google's hosts: a fake server
    /// (https://127.0.0.1:8443, or http://127.0.0.1:8080 for cleartext HTTP/2) or a sandbox.
    #[arg(long, value_name = "URL")]
    pub endpoint: Option<String>,
    /// Trust only this CA (PEM) for the endpoint's certificate (and FCM's token endpoint's).
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// Do not verify the endpoint's certificate (self-signed fakes only).
    #[arg(long)]
    pub insecure: bool,
}

/// APNs credentials: token auth (a .p8 key) or a provider certificate.
#[derive(Debug, Clone, Default, Args)]
pub struct ApnsCredentials {
    /// Token auth: the .p8 key file (with --key-id and --team-id).
    #[arg(long, value_name = "FILE", conflicts_with = "certificate")]
    pub key_file: Option<PathBuf>,
    /// Token auth: the key's 10-character id.
    #[arg(long)]
    pub key_id: Option<String>,
    /// Token auth: the team id.
    #[arg(long)]
    pub team_id: Option<String>,
    /// Certificate auth: PEM certificate (with its key, or the key in --key) or a .p12 file.
    #[arg(long, value_name = "FILE")]
    pub certificate: Option<PathBuf>,
    /// Certificate auth: the PEM private key when it is not in the certificate file.
    #[arg(long, value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// Certificate auth: the .p12 password.
    #[arg(long, value_name = "PASSWORD")]
    pub certificate_password: Option<String>,
}

impl ApnsCredentials {
    pub fn is_empty(&self) -> bool {
        self.key_file.is_none()
            && self.key_id.is_none()
            && self.team_id.is_none()
            && self.certificate.is_none()
            && self.key.is_none()
            && self.certificate_password.is_none()
    }

    /// A certificate password from the environment applies to a --certificate only: token
    /// auth, or none, leaves it unused (clap's `requires` would refuse the run).
    pub fn settle_env(&mut self, matches: &ArgMatches) {
        if from_env(matches, "certificate_password") && self.certificate.is_none() {
            self.certificate_password = None;
        }
    }

    /// The auth these flags give, their files read; `None` when none is given.
    pub fn auth(&self) -> anyhow::Result<Option<ApnsAuth>> {
        if self.key_file.is_none() && (self.key_id.is_some() || self.team_id.is_some()) {
            bail!("--key-id and --team-id go with --key-file (token auth)");
        }
        if self.certificate.is_none() && (self.key.is_some() || self.certificate_password.is_some())
        {
            bail!("--key and --certificate-password go with --certificate (certificate auth)");
        }
        match (&self.key_file, &self.certificate) {
            (Some(path), None) => {
                let (Some(kid), Some(team)) = (&self.key_id, &self.team_id) else {
                    bail!("--key-file needs --key-id and --team-id");
                };
                let auth = TokenAuth::from_file(path, kid.clone(), team.clone())?;
                Ok(Some(ApnsAuth::Token(auth)))
            }
            (None, Some(cert)) => Ok(Some(ApnsAuth::Certificate(load_identity(
                cert,
                self.key.as_deref(),
                self.certificate_password.as_deref(),
            )?))),
            (None, None) => Ok(None),
            (Some(_), Some(_)) => {
                bail!("give token auth (--key-file) or certificate auth (--certificate), not both")
            }
        }
    }
}

/// FCM credentials: a service account (HTTP v1) or a legacy server key.
#[derive(Debug, Clone, Default, Args)]
pub struct FcmCredentials {
    /// HTTP v1: the service-account JSON file (project id and token endpoint from it).
    // Not `conflicts_with = "api_key"`: where the key has an environment variable, clap would
    // count it as given (clap #5591); `auth` refuses both given, `settle_env` the rest.
    #[arg(long, value_name = "FILE")]
    pub service_account: Option<PathBuf>,
    /// Legacy HTTP API (/fcm/send) with this server key (Google shut the real one down in
    /// 2024; for fakes and old setups).
    #[arg(long, value_name = "KEY")]
    pub api_key: Option<String>,
    /// HTTP v1: the project to send as (default: the service account's project_id).
    #[arg(long)]
    pub project: Option<String>,
    /// HTTP v1: use this token endpoint instead of the service account's token_uri.
    #[arg(long, value_name = "URL")]
    pub token_uri: Option<String>,
}

impl FcmCredentials {
    pub fn is_empty(&self) -> bool {
        self.service_account.is_none()
            && self.api_key.is_none()
            && self.project.is_none()
            && self.token_uri.is_none()
    }

    /// A server key from the environment yields to a --service-account on the command line.
    pub fn settle_env(&mut self, matches: &ArgMatches) {
        if from_env(matches, "api_key") && self.service_account.is_some() {
            self.api_key = None;
        }
    }

    /// The auth these flags give, the service account read; `None` when none is given.
    pub fn auth(&self) -> anyhow::Result<Option<FcmAuth>> {
        if self.token_uri.is_some() && self.service_account.is_none() {
            bail!("--token-uri goes with --service-account");
        }
        match (&self.service_account, &self.api_key) {
            (Some(path), None) => {
                let mut account = ServiceAccount::from_file(path)?;
                if let Some(uri) = &self.token_uri {
                    account = account.with_token_uri(uri.clone());
                }
                Ok(Some(FcmAuth::ServiceAccount(account)))
            }
            (None, Some(key)) => Ok(Some(FcmAuth::ApiKey(key.clone()))),
            (None, None) => Ok(None),
            (Some(_), Some(_)) => bail!("give --service-account or --api-key, not both"),
        }
    }
}

/// Whether argument `id` took its value from its environment variable. Such a value must not
/// trip `requires`/`conflicts_with`, which clap checks for it as for a typed one (clap #5591):
/// commands settle it after parsing (`Cli::settle_env_secrets`).
pub fn from_env(matches: &ArgMatches, id: &str) -> bool {
    matches.value_source(id) == Some(ValueSource::EnvVariable)
}

/// Kafka bootstrap servers: one name for them in every command.
#[derive(Debug, Clone, Default, Args)]
pub struct BrokersFlag {
    /// Kafka bootstrap servers (host:port,...).
    #[arg(long, value_name = "HOST:PORT,...")]
    pub brokers: Option<String>,
}

/// A Kafka client that gives up with one error when the brokers do not answer.
#[derive(Debug, Clone, Args)]
pub struct KafkaFlags {
    #[command(flatten)]
    pub brokers: BrokersFlag,
    /// How long to wait for the brokers' answers before giving up with one error.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = crate::units::parse_duration)]
    pub kafka_timeout: Duration,
}

/// What bench and replay write, and the regression gate.
#[derive(Debug, Clone, Default, Args)]
pub struct ReportFlags {
    /// Write the report as JSON (schema pusher-bench/1, see README).
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Write the report as one self-contained HTML page with SVG charts.
    #[arg(long, value_name = "FILE")]
    pub html: Option<PathBuf>,
    /// Compare with this baseline report and fail on a regression.
    #[arg(long, value_name = "FILE")]
    pub baseline: Option<PathBuf>,
    /// Allowed regression in percent (throughput drop or p99 rise, calibration-normalised).
    #[arg(
        long,
        value_name = "PERCENT",
        default_value_t = 10.0,
        requires = "baseline",
        value_parser = crate::units::parse_percent
    )]
    pub max_regression: f64,
    /// No progress bar.
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

/// How much load and for how long.
#[derive(Debug, Clone, Default, Args)]
pub struct LoadFlags {
    /// Messages to send (5000, 10k, 1m).
    #[arg(long, value_name = "N", value_parser = parse_count)]
    pub count: Option<u64>,
    /// Stop after this long (30s, 5m); with --count, whichever comes first.
    #[arg(long, value_name = "DURATION", value_parser = crate::units::parse_duration)]
    pub duration: Option<Duration>,
    /// Open loop: this many messages per second (5000, 5000/s, 2k/s, 5k), whatever the
    /// target does.
    #[arg(long, value_name = "N/s", value_parser = parse_rate)]
    pub rate: Option<f64>,
}

/// The threads a command's runtime runs on (`crate::runtime`).
#[derive(Debug, Clone, Args)]
pub struct ThreadsFlag {
    /// Threads to run on: a number from 1 to 1024 (1: tokio's current-thread scheduler, the
    /// cheapest on a small machine) or `cores` (one per core; 0 means the same).
    #[arg(long, value_name = "N|cores", default_value = "cores")]
    pub threads: Threads,
}

/// The embedded fake server of bench and replay, and the sender's pool towards it.
#[derive(Debug, Clone, Args)]
pub struct FakeFlags {
    /// The fake server's behaviour: a built-in profile name or a YAML file (see
    /// mock-services/).
    #[arg(long, value_name = "NAME|FILE", default_value = "happy")]
    pub profile: String,
    /// The fake server's transport: tls (HTTP/2 over TLS, as production) or h2c (cleartext
    /// HTTP/2 with prior knowledge).
    #[arg(long, default_value = "tls", value_parser = transport)]
    pub transport: Transport,
    /// HTTP/2 connections in the sender's pool.
    #[arg(long, default_value_t = 2, value_parser = at_least_one)]
    pub connections: usize,
}

fn transport(s: &str) -> Result<Transport, String> {
    match s {
        "tls" => Ok(Transport::Tls),
        "h2c" => Ok(Transport::H2c),
        other => Err(format!("{other:?}: expected tls or h2c")),
    }
}

/// A count of things that cannot be none (connections, repeats).
pub fn at_least_one(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("{s:?}: expected a whole number of at least 1")),
    }
}
