//! `pusher mock apns|gcm|webpush|all|kafka`: run a fake server (or the mock Kafka broker) until
//! SIGINT/SIGTERM, after one JSON line on stdout that says where it listens.

use super::flags::ThreadsFlag;
use crate::mock::apns::ApnsHandler;
use crate::mock::kafka::{KafkaMock, MockOptions, MAX_REQUEST_BYTES};
use crate::mock::server::Handler;
use crate::mock::{
    ApnsOptions, FcmHandler, FcmOptions, JwtKey, MockConfig, MockServer, Profile, ServerCert,
    WebPushHandler, WebPushOptions,
};
use crate::units::{parse_size, show_size};
use anyhow::Context;
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
    /// Fake FCM: HTTP v1 with its own OAuth token endpoint, and legacy /fcm/send (HTTP/2 and
    /// HTTP/1.1, over TLS and cleartext).
    Gcm(Box<GcmArgs>),
    /// Fake web push service, like Mozilla's autopush: POST /wpush/{id} with VAPID checked and
    /// the aes128gcm body decrypted with the keys of the subscriptions `pusher gen` makes
    /// (HTTP/2 and HTTP/1.1, over TLS and cleartext).
    Webpush(Box<WebPushArgs>),
    /// Fake APNs, FCM and web push in one process (the APNs flags, plus --fcm-* for FCM and
    /// --webpush-* for web push).
    All(Box<AllArgs>),
    /// librdkafka's mock cluster as a standalone Kafka broker (prints its bootstrap address).
    Kafka(KafkaMockArgs),
}

/// What every fake server takes: where it listens, its certificate, its behaviour.
#[derive(Debug, Args)]
#[command(mut_arg("threads", |a| a.default_value("1").help(THREADS_HELP)))]
pub struct ServerFlags {
    /// TLS listener (HTTP/2 by ALPN, or with prior knowledge; FCM and web push also
    /// HTTP/1.1); "off" for none.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:0")]
    pub listen: String,
    /// Cleartext listener (HTTP/2 with prior knowledge; FCM and web push also HTTP/1.1); "off"
    /// for none.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:0")]
    pub listen_h2c: String,
    /// Admin HTTP/1.1 endpoint (GET /stats, POST /reset); "off" for none.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:0")]
    pub admin: String,
    /// Require `Authorization: Bearer TOKEN` on the admin endpoint (401 without it).
    #[arg(
        long,
        value_name = "TOKEN",
        env = "PUSHER_MOCK_ADMIN_TOKEN",
        hide_env_values = true
    )]
    pub admin_token: Option<String>,
    /// Server certificate chain (PEM); a certificate is generated when absent.
    #[arg(long, value_name = "FILE", requires = "key")]
    pub cert: Option<PathBuf>,
    /// Server private key (PEM).
    #[arg(long, value_name = "FILE", requires = "cert")]
    pub key: Option<PathBuf>,
    /// Write the CA clients must trust to this file (default: a file in the temp directory).
    #[arg(long, value_name = "FILE")]
    pub ca_out: Option<PathBuf>,
    /// SETTINGS_MAX_CONCURRENT_STREAMS advertised to HTTP/2 clients (at least 1: with 0 every
    /// stream is refused).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_streams: u32,
    /// Behaviour profile: a built-in name (happy, flaky, throttled, outage, goaway, resets,
    /// stall), mock-services/<NAME>.yaml, or a YAML file. For FCM and web push, APNs reason
    /// names in its error mix are mapped to the FCM codes or HTTP statuses that mean the same.
    #[arg(long, value_name = "NAME|FILE", default_value = "happy")]
    pub profile: String,
    /// Seed for the profile's random draws (overrides the profile's own).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Remember up to N distinct delivered tokens (shown as tokens_recorded in /stats).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub record_tokens: usize,
    /// Close a connection with no request in flight for this long (GOAWAY on HTTP/2), a
    /// client that never sends a byte included; 0 never closes one.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = crate::units::parse_duration_or_never)]
    pub idle_timeout: std::time::Duration,
    #[command(flatten)]
    pub threads: ThreadsFlag,
}

impl ServerFlags {
    /// A server's configuration from these flags (APNs specifics at their defaults).
    fn config(&self) -> anyhow::Result<MockConfig> {
        let mut profile = Profile::load(&self.profile)?;
        if self.seed.is_some() {
            profile.seed = self.seed;
        }
        Ok(MockConfig {
            tls_listen: listen_addr("listen", &self.listen)?,
            h2c_listen: listen_addr("listen-h2c", &self.listen_h2c)?,
            admin_listen: listen_addr("admin", &self.admin)?,
            admin_token: match self.admin_token.as_deref() {
                // `--admin-token "$UNSET"`: the admin endpoint would be open with no word.
                Some("") => anyhow::bail!(
                    "--admin-token is empty: give a token, or leave the flag out for an open admin endpoint"
                ),
                token => token.map(str::to_owned),
            },
            server_cert: match (&self.cert, &self.key) {
                (Some(cert), Some(key)) => ServerCert::Files {
                    cert: cert.clone(),
                    key: key.clone(),
                },
                _ => ServerCert::Generate,
            },
            client_ca_pem: None,
            max_streams: self.max_streams,
            profile,
            record_tokens: self.record_tokens,
            apns: ApnsOptions::default(),
            idle_timeout: self.idle_timeout,
        })
    }
}

#[derive(Debug, Args)]
pub struct ApnsArgs {
    #[command(flatten)]
    pub server: ServerFlags,
    /// Require client certificates signed by this CA (mutual TLS), unless a JWT key is set
    /// and the request carries a valid token.
    #[arg(long, value_name = "FILE")]
    pub client_ca: Option<PathBuf>,
    /// Accept JWTs from this key: KEYID:TEAMID:PUBKEY.pem (repeatable). Without any (and
    /// without --client-ca) auth is not checked.
    #[arg(long, value_name = "KEYID:TEAMID:PEM")]
    pub jwt_key: Vec<String>,
    /// Accept requests without `apns-push-type` (by default they get 400 InvalidPushType, as
    /// watchOS and strict APNs servers answer).
    #[arg(long)]
    pub push_type_optional: bool,
}

#[derive(Debug, Args)]
pub struct GcmArgs {
    #[command(flatten)]
    pub server: ServerFlags,
    #[command(flatten)]
    pub fcm: FcmFlags,
}

/// What only the fake FCM has.
#[derive(Debug, Args)]
pub struct FcmFlags {
    /// Lifetime of the access tokens /token issues (expires_in).
    #[arg(long, default_value = "3599s", value_parser = crate::units::parse_duration)]
    pub token_lifetime: std::time::Duration,
    /// Do not require an access token on v1 requests.
    #[arg(long)]
    pub no_auth: bool,
    /// Accept only this legacy server key on /fcm/send (repeatable; default: any key).
    #[arg(long, value_name = "KEY")]
    pub api_key: Vec<String>,
    /// FCM's per-project quota of v1 sends a minute (FCM's default is 600000); off unless set.
    #[arg(long, value_name = "N")]
    pub quota_per_minute: Option<u64>,
}

impl FcmFlags {
    fn options(&self) -> FcmOptions {
        FcmOptions {
            require_auth: !self.no_auth,
            token_lifetime: self.token_lifetime,
            api_keys: self.api_key.clone(),
            quota_per_minute: self.quota_per_minute,
            ..FcmOptions::default()
        }
    }
}

#[derive(Debug, Args)]
pub struct WebPushArgs {
    #[command(flatten)]
    pub server: ServerFlags,
    #[command(flatten)]
    pub webpush: WebPushFlags,
}

/// What only the fake web push service has.
#[derive(Debug, Args)]
pub struct WebPushFlags {
    /// Decrypt every Nth message body with the generated subscription's keys (1: every one;
    /// 0: never, framing is still checked). Decryption costs ~0.1 ms of CPU a message (about
    /// 10,000 a second a core): sample, e.g. 20, when the fake must keep up with a fast pusher.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub decrypt_every: u64,
}

impl WebPushFlags {
    fn options(&self) -> WebPushOptions {
        WebPushOptions {
            decrypt_every: self.decrypt_every,
            ..WebPushOptions::default()
        }
    }
}

#[derive(Debug, Args)]
pub struct AllArgs {
    /// The fake APNs server, and what all three share (certificate, profile, seed, token log).
    #[command(flatten)]
    pub apns: ApnsArgs,
    /// FCM TLS listener; "off" for none.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:0")]
    pub fcm_listen: String,
    /// FCM cleartext listener (h2c and HTTP/1.1); "off" for none.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:0")]
    pub fcm_listen_h2c: String,
    /// FCM admin endpoint; "off" for none.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:0")]
    pub fcm_admin: String,
    /// Write the FCM server's CA to this file (default: a file in the temp directory).
    #[arg(long, value_name = "FILE")]
    pub fcm_ca_out: Option<PathBuf>,
    #[command(flatten)]
    pub fcm: FcmFlags,
    /// Web push TLS listener; "off" for none.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:0")]
    pub webpush_listen: String,
    /// Web push cleartext listener (h2c and HTTP/1.1); "off" for none.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:0")]
    pub webpush_listen_h2c: String,
    /// Web push admin endpoint; "off" for none.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:0")]
    pub webpush_admin: String,
    /// Write the web push server's CA to this file (default: a file in the temp directory).
    #[arg(long, value_name = "FILE")]
    pub webpush_ca_out: Option<PathBuf>,
    #[command(flatten)]
    pub webpush: WebPushFlags,
}

const THREADS_HELP: &str = "Threads serving requests: a number from 1 to 1024 (1: tokio's \
current-thread scheduler, the fastest on a small machine; more on a big one, so that the fake \
never limits a benchmark) or cores (one per core; 0 means the same)";

pub fn run(args: MockArgs) -> anyhow::Result<ExitCode> {
    match args.service {
        MockService::Apns(apns) => run_apns(*apns),
        MockService::Gcm(gcm) => run_gcm(*gcm),
        MockService::Webpush(webpush) => run_webpush(*webpush),
        MockService::All(all) => run_all(*all),
        MockService::Kafka(kafka) => run_kafka(kafka),
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
    let config = apns_config(&args)?;
    let handler = ApnsHandler::new(&config.apns, config.client_ca_pem.is_some())?;
    serve(config, handler, &args.server, "apns", apns_line)
}

/// Runs one fake until a stop signal, after its startup line: `{<service>: line, admin}`.
fn serve<H: Handler>(
    config: MockConfig,
    handler: H,
    flags: &ServerFlags,
    service: &str,
    line: fn(&MockServer, Option<PathBuf>) -> serde_json::Value,
) -> anyhow::Result<ExitCode> {
    runtime(&flags.threads)?.block_on(async move {
        let server = MockServer::start_with(config, handler).await?;
        let stopped = super::stop_signal()?;
        let ca = write_ca(&server, flags.ca_out.as_ref(), service)?;
        let _temp = TempCa(ca.clone().filter(|_| flags.ca_out.is_none()));
        print_line(&serde_json::json!({
            service: line(&server, ca),
            "admin": server.admin_addr().map(|a| a.to_string()),
        }))?;
        stopped.await;
        tracing::info!("mock: shutting down");
        server.shutdown().await;
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// The fake APNs server's configuration from its flags.
fn apns_config(args: &ApnsArgs) -> anyhow::Result<MockConfig> {
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
    Ok(MockConfig {
        client_ca_pem,
        apns: ApnsOptions {
            jwt_keys,
            require_push_type: !args.push_type_optional,
            ..ApnsOptions::default()
        },
        ..args.server.config()?
    })
}

/// Writes the CA a client must trust (when there is a TLS listener) and returns its path.
fn write_ca(
    server: &MockServer,
    out: Option<&PathBuf>,
    service: &str,
) -> anyhow::Result<Option<PathBuf>> {
    if server.tls_addr().is_none() {
        return Ok(None);
    }
    let path = match out {
        Some(path) => path.clone(),
        None => {
            let name = match service {
                "apns" => format!("pusher-mock-ca-{}.pem", std::process::id()),
                other => format!("pusher-mock-{other}-ca-{}.pem", std::process::id()),
            };
            std::env::temp_dir().join(name)
        }
    };
    // Whole or not at all (renamed into place): a pusher started beside the fake that reads
    // the file as it is being written saw "holds no certificate".
    crate::report::write_file(&path, server.ca_pem().as_bytes())
        .with_context(|| format!("cannot write the CA to {}", path.display()))?;
    Ok(Some(path))
}

/// A CA file a fake wrote into the temp dir for itself (no `--ca-out`): removed when the fake
/// stops, so that runs do not leave one behind each.
struct TempCa(Option<PathBuf>);

impl Drop for TempCa {
    fn drop(&mut self) {
        if let Some(path) = &self.0 {
            let _ = std::fs::remove_file(path);
        }
    }
}

fn print_line(line: &serde_json::Value) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{line}")?;
    stdout.flush()?;
    Ok(())
}

/// The `apns` object of the startup line: addresses and CA.
fn apns_line(server: &MockServer, ca: Option<PathBuf>) -> serde_json::Value {
    serde_json::json!({
        "tls": server.tls_addr().map(|a| a.to_string()),
        "h2c": server.h2c_addr().map(|a| a.to_string()),
        "ca": ca.map(|p| p.display().to_string()),
    })
}

/// The `fcm` object of the startup line: addresses, CA, and the token endpoint to put in a
/// service account's `token_uri` (TLS when there is a TLS listener).
fn fcm_line(server: &MockServer, ca: Option<PathBuf>) -> serde_json::Value {
    let token_uri = match (server.tls_addr(), server.h2c_addr()) {
        (Some(tls), _) => Some(format!("https://{tls}/token")),
        (None, Some(h2c)) => Some(format!("http://{h2c}/token")),
        (None, None) => None,
    };
    serde_json::json!({
        "tls": server.tls_addr().map(|a| a.to_string()),
        "h2c": server.h2c_addr().map(|a| a.to_string()),
        "ca": ca.map(|p| p.display().to_string()),
        "token_uri": token_uri,
    })
}

/// The `webpush` object of the startup line: addresses, CA, and the origin to put in
/// subscription endpoints (`<origin>/wpush/<id>`; TLS when there is a TLS listener).
fn webpush_line(server: &MockServer, ca: Option<PathBuf>) -> serde_json::Value {
    let origin = match (server.tls_addr(), server.h2c_addr()) {
        (Some(tls), _) => Some(format!("https://{tls}")),
        (None, Some(h2c)) => Some(format!("http://{h2c}")),
        (None, None) => None,
    };
    serde_json::json!({
        "tls": server.tls_addr().map(|a| a.to_string()),
        "h2c": server.h2c_addr().map(|a| a.to_string()),
        "ca": ca.map(|p| p.display().to_string()),
        "origin": origin,
    })
}

fn runtime(threads: &ThreadsFlag) -> anyhow::Result<tokio::runtime::Runtime> {
    // One thread by default: the fastest layout on a small box (reference/h2-ceiling.md);
    // more on a big one, so that the fake is never what limits a benchmark.
    crate::runtime::build(threads.threads, "pusher-mock").context("cannot start the async runtime")
}

fn run_gcm(args: GcmArgs) -> anyhow::Result<ExitCode> {
    let config = args.server.config()?;
    let handler = FcmHandler::new(args.fcm.options());
    serve(config, handler, &args.server, "fcm", fcm_line)
}

fn run_webpush(args: WebPushArgs) -> anyhow::Result<ExitCode> {
    let config = args.server.config()?;
    let handler = WebPushHandler::new(args.webpush.options());
    serve(config, handler, &args.server, "webpush", webpush_line)
}

fn run_all(args: AllArgs) -> anyhow::Result<ExitCode> {
    let apns = apns_config(&args.apns)?;
    let fcm = MockConfig {
        tls_listen: listen_addr("fcm-listen", &args.fcm_listen)?,
        h2c_listen: listen_addr("fcm-listen-h2c", &args.fcm_listen_h2c)?,
        admin_listen: listen_addr("fcm-admin", &args.fcm_admin)?,
        client_ca_pem: None,
        apns: ApnsOptions::default(),
        ..apns.clone()
    };
    let webpush = MockConfig {
        tls_listen: listen_addr("webpush-listen", &args.webpush_listen)?,
        h2c_listen: listen_addr("webpush-listen-h2c", &args.webpush_listen_h2c)?,
        admin_listen: listen_addr("webpush-admin", &args.webpush_admin)?,
        ..fcm.clone()
    };
    let handler = FcmHandler::new(args.fcm.options());
    let webpush_handler = WebPushHandler::new(args.webpush.options());
    runtime(&args.apns.server.threads)?.block_on(async move {
        let apns_server = MockServer::start(apns).await?;
        let fcm_server = MockServer::start_with(fcm, handler).await?;
        let webpush_server = MockServer::start_with(webpush, webpush_handler).await?;
        let stopped = super::stop_signal()?;
        let apns_ca = write_ca(&apns_server, args.apns.server.ca_out.as_ref(), "apns")?;
        let fcm_ca = write_ca(&fcm_server, args.fcm_ca_out.as_ref(), "fcm")?;
        let webpush_ca = write_ca(&webpush_server, args.webpush_ca_out.as_ref(), "webpush")?;
        let _temp = [
            TempCa(
                apns_ca
                    .clone()
                    .filter(|_| args.apns.server.ca_out.is_none()),
            ),
            TempCa(fcm_ca.clone().filter(|_| args.fcm_ca_out.is_none())),
            TempCa(webpush_ca.clone().filter(|_| args.webpush_ca_out.is_none())),
        ];
        // Each service's object with its admin address.
        let with_admin = |server: &MockServer, mut line: serde_json::Value| {
            line["admin"] = serde_json::json!(server.admin_addr().map(|a| a.to_string()));
            line
        };
        print_line(&serde_json::json!({
            "apns": with_admin(&apns_server, apns_line(&apns_server, apns_ca)),
            "fcm": with_admin(&fcm_server, fcm_line(&fcm_server, fcm_ca)),
            "webpush": with_admin(&webpush_server, webpush_line(&webpush_server, webpush_ca)),
        }))?;
        stopped.await;
        tracing::info!("mock: shutting down");
        tokio::join!(
            apns_server.shutdown(),
            fcm_server.shutdown(),
            webpush_server.shutdown()
        );
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Clone, Args)]
#[command(
    after_help = "Limits: each partition keeps --retention-bytes (librdkafka's mock alone \
keeps 5 MiB or 100,000 message sets), then drops its oldest messages; when it drops messages \
that a consumer group reading the partition had not committed (or that no group read), it \
prints an error naming the topic, the partition and how many. Produce requests over 2 MiB are \
refused: the connection is closed and the producer's messages fail, none is stored (librdkafka \
clients such as kcat send messages of at most 1,000,000 bytes unless told otherwise).\n\n\
Ready line on stdout: {\"kafka\":{\"bootstrap\":\"127.0.0.1:PORT\",\"max_request_bytes\":2097152,\
\"partition_bytes\":134217728,\"partition_message_sets\":1048576}}"
)]
pub struct KafkaMockArgs {
    /// Number of mock brokers (`--brokers` names bootstrap servers everywhere else; it is
    /// kept here as an old spelling).
    #[arg(long, value_name = "N", default_value_t = 1, alias = "brokers")]
    pub broker_count: i32,
    /// Topic to create up front (repeatable). Unknown topics are also created on first use,
    /// with --partitions partitions.
    #[arg(long = "topic")]
    pub topics: Vec<String>,
    /// Partitions of each --topic and of topics created on first use.
    #[arg(long, default_value_t = 8)]
    pub partitions: i32,
    /// Bytes each partition keeps (binary units: 128MiB, 1GiB). Past that the oldest messages
    /// are dropped, and any no consumer group had committed is reported as an error naming
    /// topic, partition and count. librdkafka's mock alone keeps 5 MiB.
    #[arg(long, default_value = "128MiB", value_parser = parse_size)]
    pub retention_bytes: u64,
    /// Listen on this address (broker 1; broker N on the port N-1 above), e.g.
    /// 127.0.0.1:9092, and advertise it to clients. Default: a free port on 127.0.0.1.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
}

/// Runs the mock until SIGINT or SIGTERM; prints
/// `{"kafka":{"bootstrap":"127.0.0.1:PORT","max_request_bytes":..,"partition_bytes":..,"partition_message_sets":..}}`.
fn run_kafka(args: KafkaMockArgs) -> anyhow::Result<ExitCode> {
    let runtime = crate::runtime::build(crate::runtime::Threads::Exactly(1), "pusher-mock")
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let options = MockOptions {
            brokers: args.broker_count,
            topics: args.topics.clone(),
            partitions: args.partitions,
            auto_create_partitions: Some(args.partitions),
            retention_bytes: Some(args.retention_bytes),
            listen: args.listen,
            max_request_bytes: MAX_REQUEST_BYTES,
            watch_losses: true,
        };
        let mock = KafkaMock::start_with(&options)?;
        let stopped = super::stop_signal()?;
        print_line(&serde_json::json!({"kafka": {
            "bootstrap": mock.bootstrap(),
            "max_request_bytes": mock.max_request_bytes(),
            "partition_bytes": mock.retention_bytes(),
            "partition_message_sets": mock.retention_sets(),
        }}))?;
        tracing::info!(
            bootstrap = mock.bootstrap(),
            topics = ?args.topics,
            "mock kafka running: each partition keeps {} (older messages are dropped, and reported when unconsumed), produce requests up to {}; Ctrl-C to stop",
            show_size(mock.retention_bytes()),
            show_size(mock.max_request_bytes())
        );
        stopped.await;
        drop(mock);
        tracing::info!("mock kafka stopped");
        Ok(ExitCode::SUCCESS)
    })
}
