use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = pusher::cli::Cli::parse();
    pusher::telemetry::init(&cli.global);
    match pusher::cli::dispatch(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(2)
        }
    }
}
