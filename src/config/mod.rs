//! Configuration: built-in defaults < YAML file < PUSHER_* environment < CLI overrides,
//! validated before anything starts (DESIGN.md §7).
//!
//! - `schema`: the tree as types, with defaults; the seed's keys that are ignored.
//! - `keys`: the keys derived from the schema (what the unknown-key check and the
//!   environment names use).
//! - `env`: the seed's environment names (viper's rule, `PUSHER_QUEUE_BROKERS`).
//! - `raw`: the YAML file as a tree, text keys as written.
//! - `load`: layering.
//! - `validate`: checks, giving the [`Validated`] config that `pusher run` takes.
//!
//! Unknown keys are errors that name the nearest valid key. Durations take units as on the
//! command line (`30s`, `250ms`); a bare number keeps the unit the seed gave the key. Secrets
//! are [`Secret`]s: their `Debug` prints `<redacted>`, so `{:?}` of a whole config is safe to
//! log.

mod env;
mod keys;
mod load;
mod raw;
mod schema;
mod validate;

pub use env::ENV_PREFIX;
pub use schema::*;
pub use validate::{app_entry, Validated};

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: String, message: String },
    /// A key in the file that the schema does not have; `hint` names the nearest.
    #[error("config file {path}: {key}: unknown key{hint}")]
    UnknownKey {
        path: String,
        key: String,
        hint: String,
    },
    /// An environment name or CLI override that is no key.
    #[error("{name}: unknown key{hint}")]
    UnknownVariable { name: String, hint: String },
    /// An environment variable or CLI override that cannot be used.
    #[error("{name}: {problem}")]
    Override { name: String, problem: String },
    /// A value that parsed but makes no sense; `key` is the dotted config key.
    #[error("{key}: {problem}")]
    Invalid { key: String, problem: String },
    /// The schema could not be serialized into its key tree: a bug.
    #[error("config schema: {0}")]
    Schema(String),
}

fn invalid(key: impl Into<String>, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        problem: problem.into(),
    }
}

impl Config {
    /// The environment names of the fixed keys, the seed's spellings included (for docs and
    /// tests; per-app names are `PUSHER_APNS_CERTS_<APP>_<FIELD>`).
    pub fn env_names() -> Result<Vec<String>, ConfigError> {
        Ok(env::fixed_names(&keys::Keys::new()?))
    }
}

#[cfg(test)]
mod tests;
