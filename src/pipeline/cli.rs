use crate::cli::GlobalArgs;
use crate::push::Platform;
use clap::{Args, Subcommand};
use std::process::ExitCode;

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(subcommand)]
    pub platform: RunPlatform,
}

#[derive(Debug, Subcommand)]
pub enum RunPlatform {
    /// Consume APNs pushes from Kafka.
    Apns(PlatformRunArgs),
    /// Consume GCM/FCM pushes from Kafka.
    Gcm(PlatformRunArgs),
}

#[derive(Debug, Args)]
pub struct PlatformRunArgs {}

pub fn run(args: RunArgs, g: &GlobalArgs) -> anyhow::Result<ExitCode> {
    match args.platform {
        RunPlatform::Apns(a) => run_platform(Platform::Apns, a, g),
        RunPlatform::Gcm(a) => run_platform(Platform::Gcm, a, g),
    }
}

pub fn run_platform(
    platform: Platform,
    _args: PlatformRunArgs,
    _g: &GlobalArgs,
) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`pusher run {platform}` is not built yet (issue 4)")
}
