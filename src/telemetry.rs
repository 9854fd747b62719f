//! Logging (tracing) set-up; metric names and exporters join here with the pipeline.

use crate::cli::GlobalArgs;
use tracing_subscriber::EnvFilter;

/// Logs go to stderr so stdout stays clean for JSON output (`send`, `mock`, `gen`).
pub fn init(global: &GlobalArgs) {
    let default = if global.debug { "debug" } else { "info" };
    let filter = EnvFilter::try_from_env("PUSHER_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A second init (tests) is harmless: keep the first subscriber.
    let _ = if global.json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
