//! Reports people look at: one run as a self-contained HTML page (`--html` on bench and
//! replay), and two runs side by side (`pusher report compare`).

pub mod cli;
pub mod compare;
pub mod html;

use crate::bench::report::{Report, SCHEMA};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("cannot read report {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a pusher report: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{path} has schema {found:?}, expected {SCHEMA:?}")]
    Schema { path: PathBuf, found: String },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("drawing a chart: {0}")]
    Chart(String),
}

/// Reads a JSON report written by `bench --json` or `replay --json`.
pub fn load(path: &Path) -> Result<Report, ReportError> {
    let text = std::fs::read_to_string(path).map_err(|source| ReportError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let report: Report = serde_json::from_str(&text).map_err(|source| ReportError::Parse {
        path: path.to_path_buf(),
        source,
    })?;
    if report.schema != SCHEMA {
        return Err(ReportError::Schema {
            path: path.to_path_buf(),
            found: report.schema,
        });
    }
    Ok(report)
}
