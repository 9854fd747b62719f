//! `pusher mock apns|gcm|all`: run a fake server until SIGINT/SIGTERM.

use super::{ApnsOptions, JwtKey, MockConfig, MockServer, Profile, ServerCert};
use crate::cli::GlobalArgs;
use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Args)]
pub struct MockArgs {
    #[command(subcommand)]
    pub service: MockService,
}

#[derive(Debug, Subcommand)]
pub enum MockService {
    /// Fake APNs (HTTP/2 over TLS and h2c).
    Apns(Box<ApnsArgs>),
    /// Fake FCM (not built yet).
    Gcm,
    /// Fake APNs and FCM together (not built yet).
    All,
}

#[derive(Debug, Args)]
pub struct ApnsArgs {
    /// TLS listener (HTTP/2, with or without ALPN); "off" for none.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:0")]
    pub listen: String,
    /// Cleartext HTTP/2 (prior knowledge) listener; "off" for none.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:0")]
    pub listen_h2c: String,
    /// Admin HTTP/1.1 endpoint (GET /stats, POST /reset); "off" for none.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:0")]
    pub admin: String,
    /// Server certificate chain (PEM); a certificate is generated when absent.
    #[arg(long, value_name = "FILE", requires = "key")]
    pub cert: Option<PathBuf>,
    /// Server private key (PEM).
    #[arg(long, value_name = "FILE", requires = "cert")]
    pub key: Option<PathBuf>,
    /// Write the CA clients must trust to this file (default: a file in the temp directory).
    #[arg(long, value_name = "FILE")]
    pub ca_out: Option<PathBuf>,
    /// Require client certificates signed by this CA (mutual TLS), unless a JWT key is set
    /// and the request carries a valid token.
    #[arg(long, value_name = "FILE")]
    pub client_ca: Option<PathBuf>,
    /// Accept JWTs from this key: KEYID:TEAMID:PUBKEY.pem (repeatable). Without any (and
    /// without --client-ca) auth is not checked.
    #[arg(long, value_name = "KEYID:TEAMID:PEM")]
    pub jwt_key: Vec<String>,
    /// SETTINGS_MAX_CONCURRENT_STREAMS advertised to clients.
    #[arg(long, default_value_t = 1000)]
    pub max_streams: u32,
    /// Behaviour profile: a built-in name (happy, flaky, throttled, outage, goaway, resets,
    /// stall), mock-services/<NAME>.yaml, or a YAML file.
    #[arg(long, value_name = "NAME|FILE", default_value = "happy")]
    pub profile: String,
    /// Seed for the profile's random draws (overrides the profile's own).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Remember up to N distinct delivered tokens (shown as tokens_recorded in /stats).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub record_tokens: usize,
}

pub fn run(args: MockArgs, _g: &GlobalArgs) -> anyhow::Result<ExitCode> {
    match args.service {
        MockService::Apns(apns) => run_apns(*apns),
        MockService::Gcm => bail!("`pusher mock gcm` is not built yet"),
        MockService::All => bail!("`pusher mock all` is not built yet"),
    }
}

fn listen_addr(flag: &str, value: &str) -> anyhow::Result<Option<SocketAddr>> {
    if value.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    value
        .parse()
        .map(Some)
        .with_context(|| format!("--{flag} {value:?}: expected IP:PORT or off"))
}

fn run_apns(args: ApnsArgs) -> anyhow::Result<ExitCode> {
    let mut profile = Profile::load(&args.profile)?;
    if args.seed.is_some() {
        profile.seed = args.seed;
    }
    let jwt_keys = args
        .jwt_key
        .iter()
        .map(|spec| JwtKey::from_spec(spec))
        .collect::<Result<Vec<_>, _>>()?;
    let client_ca_pem = match &args.client_ca {
        Some(path) => {
            Some(std::fs::read(path).with_context(|| format!("--client-ca {}", path.display()))?)
        }
        None => None,
    };
    let server_cert = match (&args.cert, &args.key) {
        (Some(cert), Some(key)) => ServerCert::Files {
            cert: cert.clone(),
            key: key.clone(),
        },
        _ => ServerCert::Generate,
    };
    let config = MockConfig {
        tls_listen: listen_addr("listen", &args.listen)?,
        h2c_listen: listen_addr("listen-h2c", &args.listen_h2c)?,
        admin_listen: listen_addr("admin", &args.admin)?,
        server_cert,
        client_ca_pem,
        max_streams: args.max_streams,
        profile,
        record_tokens: args.record_tokens,
        apns: ApnsOptions {
            jwt_keys,
            ..ApnsOptions::default()
        },
    };
    // One thread: the fastest layout on a small box (reference/h2-ceiling.md).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let server = MockServer::start(config).await?;
        let ca_path = match (&args.ca_out, server.tls_addr()) {
            (_, None) => None,
            (Some(path), _) => Some(path.clone()),
            (None, _) => Some(
                std::env::temp_dir().join(format!("pusher-mock-ca-{}.pem", std::process::id())),
            ),
        };
        if let Some(path) = &ca_path {
            std::fs::write(path, server.ca_pem())
                .with_context(|| format!("cannot write the CA to {}", path.display()))?;
        }
        let line = serde_json::json!({
            "apns": {
                "tls": server.tls_addr().map(|a| a.to_string()),
                "h2c": server.h2c_addr().map(|a| a.to_string()),
                "ca": ca_path.map(|p| p.display().to_string()),
            },
            "admin": server.admin_addr().map(|a| a.to_string()),
        });
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "{line}")?;
        stdout.flush()?;
        drop(stdout);
        wait_for_signal().await?;
        tracing::info!("mock: shutting down");
        server.shutdown().await;
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("cannot watch SIGINT")?,
        _ = term.recv() => {}
    }
    Ok(())
}
