//! `pusher report compare A.json B.json [--html FILE]`.

use crate::cli::GlobalArgs;
use anyhow::Context;
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
    /// Mark a figure that moved by more than this many percent.
    #[arg(long, default_value_t = 5.0)]
    pub threshold: f64,
    /// Also write the comparison as a self-contained HTML page.
    #[arg(long)]
    pub html: Option<PathBuf>,
}

pub fn run(args: ReportArgs, _g: &GlobalArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        ReportCommand::Compare(c) => compare(c),
    }
}

fn compare(args: CompareArgs) -> anyhow::Result<ExitCode> {
    if !(args.threshold.is_finite() && args.threshold >= 0.0) {
        anyhow::bail!("--threshold must be a percentage >= 0");
    }
    let a = super::load(&args.a)?;
    let b = super::load(&args.b)?;
    let (a_name, b_name) = (args.a.display().to_string(), args.b.display().to_string());
    print!(
        "{}",
        super::compare::text(&a, &b, &a_name, &b_name, args.threshold)
    );
    if let Some(path) = &args.html {
        let page = super::html::render_compare(&a, &b, &a_name, &b_name, args.threshold)?;
        std::fs::write(path, page).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}
