//! THE command layer: every command's clap types (one file each), the flag groups they share
//! (`flags.rs`), dispatch and exit codes. Each command turns its flags (and, for `run`, the
//! config) into the plain settings values the library takes; nothing below this module sees
//! clap.

pub mod api;
pub mod bench;
pub mod flags;
pub mod gen;
pub mod mock;
pub mod replay;
pub mod report;
pub mod run;
pub mod send;

use clap::{ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(
    name = "pusher",
    version,
    about = "Benchmark-first toolkit for mobile push notifications"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Flags for every command: logging only.
#[derive(Debug, Clone, Args)]
pub struct GlobalArgs {
    /// Debug logging (secrets are still never printed).
    #[arg(short = 'd', long, global = true)]
    pub debug: bool,
    /// Log as JSON lines. Given before the command (`pusher -j run gcm`), so that
    /// `bench --json FILE` can keep the report flag's name.
    #[arg(short = 'j', long)]
    pub json: bool,
    /// The seed's place for `run`'s --config: before the command (`pusher --config F apns`).
    #[arg(long, value_name = "FILE", hide = true)]
    pub config: Option<PathBuf>,
    /// The seed's place for -p: before the command (`pusher -p apns`).
    #[arg(short = 'p', long, hide = true)]
    pub production: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Production pusher: Kafka in, APNs or FCM out.
    Run(run::RunArgs),
    /// The seed's spelling of `run apns`.
    #[command(hide = true)]
    Apns(Box<run::ApnsRunArgs>),
    /// The seed's spelling of `run gcm`.
    #[command(hide = true)]
    Gcm(Box<run::GcmRunArgs>),
    /// Send one push to one token and print the outcome as JSON.
    Send(send::SendArgs),
    /// Fake APNs, FCM and web push services, and an embedded Kafka broker.
    Mock(mock::MockArgs),
    /// Generate push messages as JSON lines.
    Gen(Box<gen::GenArgs>),
    /// Load-test the sender or the whole pipeline and report latency and throughput.
    Bench(Box<bench::BenchArgs>),
    /// Replay recorded traffic, or turn a Kafka topic range into a capture.
    Replay(Box<replay::ReplayArgs>),
    /// Compare reports of bench and replay runs.
    Report(report::ReportArgs),
    /// The platform's HTTP API: gorush- and Pushkin-compatible pushes into Kafka, the device
    /// registry.
    Api(api::ApiArgs),
    /// The platform's router: login events into the registry, user-addressed notifications
    /// into pushes.
    Route(api::RouteArgs),
    /// The platform's result writer: every verdict of a tracked notification into PostgreSQL.
    Results(api::ResultsArgs),
    /// Print the version.
    Version,
}

impl Command {
    /// The command's name on the command line.
    fn name(&self) -> &'static str {
        match self {
            Command::Run(_) => "run",
            Command::Apns(_) => "apns",
            Command::Gcm(_) => "gcm",
            Command::Send(_) => "send",
            Command::Mock(_) => "mock",
            Command::Gen(_) => "gen",
            Command::Bench(_) => "bench",
            Command::Replay(_) => "replay",
            Command::Report(_) => "report",
            Command::Api(_) => "api",
            Command::Route(_) => "route",
            Command::Results(_) => "results",
            Command::Version => "version",
        }
    }
}

impl Cli {
    /// Parses the command line, exiting with clap's usage error (exit 2) when it is wrong.
    pub fn parse_args() -> Cli {
        Cli::try_parse_all(std::env::args_os()).unwrap_or_else(|e| e.exit())
    }

    /// Parses `args` (the program's name first): clap's parse, the seed's flags placed, and
    /// the secrets taken from the environment settled.
    pub fn try_parse_all<I, T>(args: I) -> Result<Cli, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let matches = Cli::command().try_get_matches_from(args)?;
        let mut cli = Cli::from_arg_matches(&matches)?;
        cli.place_seed_flags()?;
        cli.settle_env_secrets(&matches)?;
        Ok(cli)
    }

    /// Secrets read from environment variables apply only where the command line leaves room
    /// for them: a credential of another kind typed there wins, and one the command cannot use
    /// is dropped. clap cannot decide this: its `requires` and `conflicts_with` count an
    /// environment value as given (clap #5591), so `PUSHER_GCM_API_KEY=k pusher send gcm
    /// --service-account sa.json` was refused. Those constraints are checked here instead, for
    /// what was typed.
    fn settle_env_secrets(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        let Some((_, m)) = matches.subcommand() else {
            return Ok(());
        };
        match &mut self.command {
            Command::Send(s) => match (&mut s.platform, m.subcommand()) {
                (send::SendPlatform::Apns(a), Some((_, m))) => a.credentials.settle_env(m),
                (send::SendPlatform::Gcm(a), Some((_, m))) => a.credentials.settle_env(m),
                _ => {}
            },
            Command::Bench(b) => b.fcm.settle_env(m),
            Command::Replay(r) => {
                r.fcm.settle_env(m);
                // The key is for an endpoint elsewhere (the embedded fake takes its own).
                if r.endpoint.endpoint.is_none() && r.fcm.api_key.is_some() {
                    if flags::from_env(m, "api_key") {
                        r.fcm.api_key = None;
                    } else {
                        return Err(Cli::command().error(
                            clap::error::ErrorKind::MissingRequiredArgument,
                            "replay --api-key needs --endpoint URL (the embedded fake takes no key)",
                        ));
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// The seed took `--config` and `-p` before the command; they mean something to `run`
    /// (and `-p` to `send apns`) only, so they are handed to it, and refused elsewhere.
    pub fn place_seed_flags(&mut self) -> Result<(), clap::Error> {
        let config = self.global.config.take();
        let production = std::mem::take(&mut self.global.production);
        let (run_config, run_production) = match &mut self.command {
            Command::Run(r) => r.config_and_production(),
            Command::Apns(a) => (&mut a.common.config, Some(&mut a.production)),
            Command::Gcm(a) => (&mut a.common.config, None),
            Command::Send(s) => match &mut s.platform {
                send::SendPlatform::Apns(a) => {
                    a.production |= production;
                    return refuse(config.is_some(), false, "`send apns`");
                }
                send::SendPlatform::Gcm(_) => {
                    return refuse(config.is_some(), production, "`send gcm`")
                }
                send::SendPlatform::Webpush(_) => {
                    return refuse(config.is_some(), production, "`send webpush`")
                }
            },
            // Their own --config goes after the command.
            Command::Api(_) | Command::Route(_) | Command::Results(_) if config.is_some() => {
                let name = self.command.name();
                return Err(Cli::command().error(
                    clap::error::ErrorKind::ArgumentConflict,
                    format!(
                        "--config goes after the command here: `pusher {name} --config FILE` \
                         (only `run` takes it before)"
                    ),
                ));
            }
            other => {
                let name = format!("`{}`", other.name());
                return refuse(config.is_some(), production, &name);
            }
        };
        if let Some(config) = config {
            run_config.get_or_insert(config);
        }
        // The seed accepted -p with gcm too, where it meant nothing.
        if let Some(p) = run_production {
            *p |= production;
        }
        Ok(())
    }

    /// JSON logs: `-j` before the command, or after `run`/`apns`/`gcm` as the seed accepted it.
    pub fn json_logs(&self) -> bool {
        self.global.json
            || match &self.command {
                Command::Apns(a) => a.common.json,
                Command::Gcm(a) => a.common.json,
                Command::Run(r) => r.common().json,
                _ => false,
            }
    }
}

/// A usage error for a seed flag given to a command it means nothing to.
fn refuse(config: bool, production: bool, what: &str) -> Result<(), clap::Error> {
    let flag = match (config, production) {
        (true, _) => "--config",
        (false, true) => "-p/--production",
        (false, false) => return Ok(()),
    };
    Err(Cli::command().error(
        clap::error::ErrorKind::ArgumentConflict,
        format!(
            "{flag} means nothing to {what}: it applies to `pusher run` (and -p to `send apns`)"
        ),
    ))
}

/// Runs one command. Each command builds the runtime it needs.
pub fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run(args) => run::run(args),
        Command::Apns(args) => run::run_apns(*args),
        Command::Gcm(args) => run::run_gcm(*args),
        Command::Send(args) => send::run(args),
        Command::Mock(args) => mock::run(args),
        Command::Gen(args) => gen::run(*args),
        Command::Bench(args) => bench::run(*args),
        Command::Replay(args) => replay::run(*args),
        Command::Report(args) => report::run(args),
        Command::Api(args) => api::run(args),
        Command::Route(args) => api::route(args),
        Command::Results(args) => api::results(args),
        Command::Version => {
            println!("pusher {}", env!("CARGO_PKG_VERSION"));
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The binary's whole life: parse, set up logging, run, print the error chain (exit 2).
pub fn main() -> ExitCode {
    let cli = Cli::parse_args();
    crate::telemetry::init(cli.global.debug, cli.json_logs());
    match dispatch(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {}", error_chain(&err));
            ExitCode::from(2)
        }
    }
}

/// An error and its causes on one line, each said once (`telemetry::with_causes`).
pub fn error_chain(err: &anyhow::Error) -> String {
    crate::telemetry::with_causes(err.as_ref())
}

/// SIGINT or SIGTERM, watched from this call on. Made before a command prints its address
/// line or starts work, never inside a spawned task: a signal before that task's first poll
/// took the default action and killed the process (a script that read the line and stopped the
/// process at once found that out).
fn stop_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use anyhow::Context;
    use tokio::signal::unix::{signal, SignalKind};
    let mut int = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    Ok(async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
    })
}

/// Cancels `stop` at SIGINT or SIGTERM, watched from this call on ([`stop_signal`]).
fn cancel_on_signal(stop: tokio_util::sync::CancellationToken) -> anyhow::Result<()> {
    let signal = stop_signal()?;
    tokio::spawn(async move {
        signal.await;
        tracing::info!("Signal received: stopping.");
        stop.cancel();
    });
    Ok(())
}

/// Serves this process's `/metrics` and `/healthz` on `listen`, the value of the config key
/// `key` (empty: not served); `/metrics` needs `stats.prometheus.token` when one is set.
async fn serve_metrics(
    key: &'static str,
    listen: &str,
    config: &crate::config::Config,
) -> anyhow::Result<()> {
    use anyhow::Context;
    if listen.is_empty() {
        return Ok(());
    }
    let addr = listen
        .parse()
        .with_context(|| format!("{key}: {listen:?} is not host:port"))?;
    let token = config
        .stats
        .prometheus
        .token
        .clone()
        .filter(|t| !t.is_empty());
    crate::telemetry::serve_prometheus(key, addr, token).await?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn causes_are_said_once() {
        let os = std::io::Error::from(std::io::ErrorKind::NotFound);
        let text = os.to_string();
        #[derive(Debug, thiserror::Error)]
        #[error("config file x: {0}")]
        struct Read(#[source] std::io::Error);
        let err = anyhow::Error::new(Read(os)).context("pusher run apns");
        let line = error_chain(&err);
        assert_eq!(line, format!("pusher run apns: config file x: {text}"));
        assert_eq!(line.matches(&text).count(), 1);
    }

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    /// Every argument of every command, hidden ones included, says what it is for.
    #[test]
    fn every_flag_has_help() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                if arg.get_help().is_none() && arg.get_long_help().is_none() {
                    missing.push(format!("{path} {}", arg.get_id()));
                }
            }
            for sub in cmd.get_subcommands() {
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut cmd = Cli::command();
        cmd.build();
        let mut missing = Vec::new();
        walk(&cmd, "pusher", &mut missing);
        assert!(missing.is_empty(), "arguments without help: {missing:?}");
    }

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_all(std::iter::once("pusher").chain(args.iter().copied()))
    }

    /// The long flags `pusher <path> --help` lists.
    fn flags(path: &[&str]) -> Vec<String> {
        let mut cmd = Cli::command();
        cmd.build();
        let mut cmd = &cmd;
        for name in path {
            cmd = cmd.find_subcommand(name).unwrap();
        }
        cmd.get_arguments()
            .filter(|a| !a.is_hide_set())
            .filter_map(|a| a.get_long().map(str::to_owned))
            .collect()
    }

    #[test]
    fn run_help_shows_only_its_platforms_flags() {
        let apns = flags(&["run", "apns"]);
        let gcm = flags(&["run", "gcm"]);
        for f in [
            "key-file",
            "key-id",
            "team-id",
            "certificate",
            "topic",
            "production",
        ] {
            assert!(
                apns.contains(&f.to_string()),
                "run apns lacks --{f}: {apns:?}"
            );
            assert!(
                !gcm.contains(&f.to_string()),
                "run gcm shows --{f}: {gcm:?}"
            );
        }
        for f in [
            "service-account",
            "api-key",
            "sender-id",
            "project",
            "token-uri",
        ] {
            assert!(gcm.contains(&f.to_string()), "run gcm lacks --{f}: {gcm:?}");
            assert!(
                !apns.contains(&f.to_string()),
                "run apns shows --{f}: {apns:?}"
            );
        }
        for both in [&apns, &gcm] {
            for f in [
                "app", "brokers", "endpoint", "ca", "insecure", "config", "threads",
            ] {
                assert!(both.contains(&f.to_string()), "lacks --{f}: {both:?}");
            }
        }
    }

    #[test]
    fn global_flags_only_where_they_mean_something() {
        for path in [
            &["gen"][..],
            &["report", "compare"],
            &["version"],
            &["mock", "apns"],
        ] {
            let shown = flags(path);
            for f in ["production", "config"] {
                assert!(!shown.contains(&f.to_string()), "{path:?} shows --{f}");
            }
        }
        // api, route and results take --config after the command: the error says so.
        for name in ["api", "route", "results"] {
            let err = parse(&["--config", "c.yaml", name])
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(&format!("`pusher {name} --config FILE`"))
                    && !err.contains("means nothing"),
                "{err}"
            );
            let cli = parse(&[name, "--config", "c.yaml"]).unwrap();
            assert!(cli.global.config.is_none());
        }
        for bad in [
            &["gen", "-p"][..],
            &["-p", "gen"],
            &["--config", "c.yaml", "gen"],
            &["gen", "--config", "c.yaml"],
            &["version", "-p"],
            &["-p", "report", "compare", "a", "b"],
            &["mock", "apns", "-p"],
            &["run", "gcm", "-p"],
            &["send", "gcm", "-p", "--token", "t", "--api-key", "k"],
            &["-p", "send", "gcm", "--token", "t", "--api-key", "k"],
            &[
                "--config",
                "c.yaml",
                "send",
                "apns",
                "--token",
                "t",
                "--payload",
                "{}",
            ],
        ] {
            assert!(parse(bad).is_err(), "{bad:?} accepted");
        }
        // The seed's places: before the command, or after it.
        let cli = parse(&["-p", "--config", "c.yaml", "apns"]).unwrap();
        let Command::Apns(a) = &cli.command else {
            panic!()
        };
        assert!(a.production);
        assert_eq!(
            a.common.config.as_deref(),
            Some(std::path::Path::new("c.yaml"))
        );
        let cli = parse(&["--config", "c.yaml", "run", "gcm"]).unwrap();
        let Command::Run(r) = &cli.command else {
            panic!()
        };
        assert_eq!(
            r.common().config.as_deref(),
            Some(std::path::Path::new("c.yaml"))
        );
        parse(&["run", "apns", "-p", "--config", "c.yaml", "-d", "-j"]).unwrap();
        parse(&["-p", "gcm"]).unwrap();
        parse(&["-p", "send", "apns", "--token", "t", "--payload", "{}"]).unwrap();
        parse(&["-d", "gen", "-d"]).unwrap();
    }

    #[test]
    fn seed_spellings_are_aliases() {
        let cli = parse(&["gcm", "--apiKey", "k", "--senderId", "1", "--app", "game"]).unwrap();
        let Command::Gcm(a) = &cli.command else {
            panic!()
        };
        assert_eq!(a.credentials.api_key.as_deref(), Some("k"));
        assert_eq!(a.sender_id.as_deref(), Some("1"));
        let cli = parse(&[
            "run",
            "gcm",
            "--app",
            "game",
            "--api-key",
            "k",
            "--sender-id",
            "1",
        ])
        .unwrap();
        let Command::Run(r) = &cli.command else {
            panic!()
        };
        let run::RunPlatform::Gcm(a) = &r.platform else {
            panic!()
        };
        assert_eq!(a.credentials.api_key.as_deref(), Some("k"));
        let cli = parse(&["gen", "--kafka", "b:9092"]).unwrap();
        let Command::Gen(g) = &cli.command else {
            panic!()
        };
        assert_eq!(g.kafka.brokers.brokers.as_deref(), Some("b:9092"));
        let cli = parse(&["mock", "kafka", "--brokers", "3"]).unwrap();
        let Command::Mock(m) = &cli.command else {
            panic!()
        };
        let mock::MockService::Kafka(k) = &m.service else {
            panic!()
        };
        assert_eq!(k.broker_count, 3);
    }

    /// Every count and rate flag takes `5k` and `5000/s`.
    #[test]
    fn counts_and_rates_take_units() {
        let cli = parse(&["bench", "--mock", "--rate", "5k", "--count", "1m"]).unwrap();
        let Command::Bench(b) = &cli.command else {
            panic!()
        };
        assert_eq!((b.load.rate, b.load.count), (Some(5000.0), Some(1_000_000)));
        let cli = parse(&["replay", "f", "--mock", "--rate", "2k/s", "--count", "5k"]).unwrap();
        let Command::Replay(r) = &cli.command else {
            panic!()
        };
        assert_eq!((r.load.rate, r.load.count), (Some(2000.0), Some(5000)));
        let cli = parse(&["gen", "-n", "5k"]).unwrap();
        let Command::Gen(g) = &cli.command else {
            panic!()
        };
        assert_eq!(g.count, 5000);
        let shaped = ["gen", "--shape", "constant", "--duration", "1s"];
        let cli = parse(&[&shaped[..], &["--peak-rate", "2k/s"]].concat()).unwrap();
        let Command::Gen(g) = &cli.command else {
            panic!()
        };
        assert_eq!(g.peak_rate, Some(2000.0));
        // A shape decides how many: a count beside it would be ignored.
        assert!(parse(&[&shaped[..], &["--peak-rate", "2k/s", "-n", "5k"]].concat()).is_err());
        assert!(parse(&["bench", "--mock", "--rate", "lots"]).is_err());
        assert!(parse(&["bench", "--mock", "--count", "0"]).is_err());
    }

    /// `--idle-timeout 0` is the documented "never close"; `--max-streams 0` would refuse
    /// every stream, and `--threads` past the bound made tokio abort: usage errors instead.
    #[test]
    fn mock_and_thread_flags_take_what_their_help_says() {
        for service in ["apns", "gcm", "webpush", "all"] {
            for zero in ["0", "0s"] {
                let cli = parse(&["mock", service, "--idle-timeout", zero]).unwrap();
                let Command::Mock(m) = &cli.command else {
                    panic!()
                };
                let server = match &m.service {
                    mock::MockService::Apns(a) => &a.server,
                    mock::MockService::Gcm(g) => &g.server,
                    mock::MockService::Webpush(w) => &w.server,
                    mock::MockService::All(a) => &a.apns.server,
                    mock::MockService::Kafka(_) => panic!(),
                };
                assert!(server.idle_timeout.is_zero(), "{service} {zero}");
            }
            let err = parse(&["mock", service, "--max-streams", "0"]).unwrap_err();
            assert!(
                err.to_string().contains("--max-streams"),
                "{service}: {err}"
            );
            parse(&["mock", service, "--max-streams", "1"]).unwrap();
        }
        for args in [
            &["mock", "apns", "--threads", "100000"][..],
            &["bench", "--mock", "--threads", "100000"],
            &["run", "apns", "--threads", "1025"],
        ] {
            let err = parse(args).unwrap_err().to_string();
            assert!(err.contains("at most 1024"), "{args:?}: {err}");
        }
        let cli = parse(&["bench", "--mock", "--threads", "0"]).unwrap();
        let Command::Bench(b) = &cli.command else {
            panic!()
        };
        assert_eq!(b.threads.threads, crate::runtime::Threads::Cores);
    }

    /// The credential rules clap no longer checks (their keys have environment variables)
    /// still hold for what is typed; `run gcm`, with no such variable, keeps clap's.
    #[test]
    fn typed_credential_conflicts_are_refused() {
        let sa = ["--service-account", "sa.json", "--api-key", "k"];
        assert!(parse(&[&["run", "gcm"][..], &sa].concat()).is_err());
        assert!(parse(&[&["gcm"][..], &sa].concat()).is_err());
        let err = parse(&["replay", "f", "--mock", "--api-key", "k"]).unwrap_err();
        assert!(
            err.to_string().contains("--api-key needs --endpoint"),
            "{err}"
        );
        let cli = parse(&["replay", "f", "--endpoint", "http://e", "--api-key", "k"]).unwrap();
        let Command::Replay(r) = &cli.command else {
            panic!()
        };
        assert_eq!(r.fcm.api_key.as_deref(), Some("k"));
    }

    #[test]
    fn run_takes_threads() {
        let cli = parse(&["run", "apns", "--threads", "3"]).unwrap();
        let Command::Run(r) = &cli.command else {
            panic!()
        };
        assert_eq!(
            r.common().threads.threads,
            crate::runtime::Threads::Exactly(3)
        );
        let cli = parse(&["gcm"]).unwrap();
        let Command::Gcm(a) = &cli.command else {
            panic!()
        };
        assert_eq!(a.common.threads.threads, crate::runtime::Threads::Cores);
    }
}
