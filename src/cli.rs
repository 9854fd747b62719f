//! The command line: clap derive and dispatch only. Each command's arguments and entry point
//! live beside the code they drive (`<module>::cli`).

use clap::{Args, Parser, Subcommand};
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

/// Flags every command accepts (the seed system's root flags).
#[derive(Debug, Clone, Args)]
pub struct GlobalArgs {
    /// Config file [default: ./config/default.yaml when it exists, else built-in defaults].
    #[arg(long, global = true)]
    pub config: Option<PathBuf>,
    /// Debug logging (secrets are still never printed).
    #[arg(short = 'd', long, global = true)]
    pub debug: bool,
    /// Log as JSON lines. Given before the command (`pusher -j run gcm`), so that
    /// `bench --json FILE` can keep the report flag's name.
    #[arg(short = 'j', long)]
    pub json: bool,
    /// Use the vendors' production endpoints (APNs production host instead of sandbox).
    #[arg(short = 'p', long, global = true)]
    pub production: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Production pusher: Kafka in, APNs or FCM out.
    Run(crate::pipeline::cli::RunArgs),
    /// The seed's spelling of `run apns`.
    #[command(hide = true)]
    Apns(crate::pipeline::cli::PlatformRunArgs),
    /// The seed's spelling of `run gcm`.
    #[command(hide = true)]
    Gcm(crate::pipeline::cli::PlatformRunArgs),
    /// Send one push to one token and print the outcome as JSON.
    Send(crate::sender::cli::SendArgs),
    /// Fake APNs / FCM servers and an embedded Kafka broker.
    Mock(crate::mock::cli::MockArgs),
    /// Generate push messages as JSON lines.
    Gen(Box<crate::gen::cli::GenArgs>),
    /// Load-test the sender or the whole pipeline and report latency and throughput.
    Bench(crate::bench::cli::BenchArgs),
    /// Replay recorded traffic, or turn a Kafka topic range into a capture.
    Replay(Box<crate::replay::cli::ReplayArgs>),
    /// Compare reports of bench and replay runs.
    Report(crate::report::cli::ReportArgs),
    /// Print the version.
    Version,
}

impl Cli {
    /// JSON logs: `-j` before the command, or after `run`/`apns`/`gcm` as the seed accepted it.
    pub fn json_logs(&self) -> bool {
        use crate::pipeline::cli::RunPlatform;
        self.global.json
            || match &self.command {
                Command::Apns(a) | Command::Gcm(a) => a.json,
                Command::Run(r) => match &r.platform {
                    RunPlatform::Apns(a) | RunPlatform::Gcm(a) => a.json,
                },
                _ => false,
            }
    }
}

/// Runs one command. Each command builds the runtime it needs.
pub fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    let g = &cli.global;
    match cli.command {
        Command::Run(args) => crate::pipeline::cli::run(args, g),
        Command::Apns(args) => {
            crate::pipeline::cli::run_platform(crate::push::Platform::Apns, args, g)
        }
        Command::Gcm(args) => {
            crate::pipeline::cli::run_platform(crate::push::Platform::Gcm, args, g)
        }
        Command::Send(args) => crate::sender::cli::run(args, g),
        Command::Mock(args) => crate::mock::cli::run(args, g),
        Command::Gen(args) => crate::gen::cli::run(*args, g),
        Command::Bench(args) => crate::bench::cli::run(args, g),
        Command::Replay(args) => crate::replay::cli::run(*args, g),
        Command::Report(args) => crate::report::cli::run(args, g),
        Command::Version => {
            println!("pusher {}", env!("CARGO_PKG_VERSION"));
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// An error and its causes on one line, each said once: an error whose message already
/// holds its source's (`config file x: No such file or directory (os error 2)`) would
/// otherwise print the OS cause twice.
pub fn error_chain(err: &anyhow::Error) -> String {
    let mut line = err.to_string();
    for cause in err.chain().skip(1) {
        let cause = cause.to_string();
        if !line.contains(&cause) {
            line.push_str(": ");
            line.push_str(&cause);
        }
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

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
}
