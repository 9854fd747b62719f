use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut cli = pusher::cli::Cli::parse();
    cli.global.json = cli.json_logs();
    pusher::telemetry::init(&cli.global);
    match pusher::cli::dispatch(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(2)
        }
    }
}
