//! `pusher report compare A.json B.json [--html FILE]`.

use crate::report::{check_writable, compare, html, load, write_file};
use clap::{Args, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Args)]
pub struct ReportArgs {
    #[command(subcommand)]
    pub command: ReportCommand,
}

#[derive(Debug, Subcommand)]
pub enum ReportCommand {
    /// Two JSON reports (bench or replay) side by side, with the changes marked.
    Compare(CompareArgs),
}

#[derive(Debug, Args)]
pub struct CompareArgs {
    /// The report before the change (A).
    pub a: PathBuf,
    /// The report after the change (B).
    pub b: PathBuf,
    /// The least change marked, in percent: a figure is marked only beyond both this and
    /// its noise (from the spread of --repeat runs, or the drift assumed for a single run,
    /// widened by the factor the calibration moved between the reports).
    #[arg(long, default_value_t = 5.0, value_parser = crate::units::parse_percent)]
    pub threshold: f64,
    /// Also write the comparison as a self-contained HTML page.
    #[arg(long)]
    pub html: Option<PathBuf>,
    /// Exit 1 when any figure is marked WORSE (a CI check).
    #[arg(long)]
    pub fail_on_worse: bool,
}

pub fn run(args: ReportArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        ReportCommand::Compare(c) => compare(c),
    }
}

fn compare(args: CompareArgs) -> anyhow::Result<ExitCode> {
    if let Some(path) = &args.html {
        check_writable(path)?;
    }
    let a = load(&args.a)?;
    let b = load(&args.b)?;
    let (a_name, b_name) = (args.a.display().to_string(), args.b.display().to_string());
    print!(
        "{}",
        compare::text(&a, &b, &a_name, &b_name, args.threshold)
    );
    if let Some(path) = &args.html {
        let page = html::render_compare(&a, &b, &a_name, &b_name, args.threshold)?;
        write_file(path, page.as_bytes())?;
    }
    let worse = compare::rows(&a, &b, args.threshold)
        .iter()
        .any(|r| r.mark == compare::Mark::Worse);
    if args.fail_on_worse && worse {
        eprintln!("error: B is worse than A beyond the noise (--fail-on-worse)");
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}
