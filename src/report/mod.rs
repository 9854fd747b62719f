//! The report of a bench or replay run: its data (JSON, the text summary, .hgrm), the
//! regression gate against a baseline, one run as a self-contained HTML page (`--html`), and
//! two runs side by side (`pusher report compare`). Bench and replay fill it; it sees neither.

pub mod compare;
pub mod data;
pub mod gate;
pub mod html;

use data::{Report, SCHEMA};
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
    #[error("cannot write {path}: it is a directory")]
    IsDir { path: PathBuf },
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

/// Fails, naming the path, when a report cannot be written to `path` (its folder is missing or
/// not writable, or it is a folder): checked before a run, not after it.
pub fn check_writable(path: &Path) -> Result<(), ReportError> {
    if path.is_dir() {
        return Err(ReportError::IsDir {
            path: path.to_path_buf(),
        });
    }
    // The probe is deleted when dropped.
    temp_beside(path)
        .map(drop)
        .map_err(|source| ReportError::Write {
            path: path.to_path_buf(),
            source,
        })
}

/// Writes `contents` to `path` whole or not at all: a temporary file beside it, renamed over
/// it, so an earlier report is never left half-written.
pub fn write_file(path: &Path, contents: &[u8]) -> Result<(), ReportError> {
    use std::io::Write;
    let err = |source| ReportError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut temp = temp_beside(path).map_err(err)?;
    temp.write_all(contents).map_err(err)?;
    temp.persist(path).map_err(|e| err(e.error))?;
    Ok(())
}

/// A temporary file in `path`'s directory (so renaming it over `path` is atomic), removed
/// unless persisted. Also for long writes that must not leave a half file (replay's export).
pub fn temp_beside(path: &Path) -> std::io::Result<tempfile::NamedTempFile> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    tempfile::Builder::new().prefix(".pusher-").tempfile_in(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unwritable_report_paths_are_named_before_anything_runs() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("no/such/dir/x.json");
        let e = check_writable(&missing).unwrap_err().to_string();
        assert!(e.contains(&missing.display().to_string()), "{e}");
        assert!(e.contains("No such file or directory"), "{e}");
        let e = check_writable(dir.path()).unwrap_err().to_string();
        assert!(e.contains("is a directory"), "{e}");
        let ok = dir.path().join("r.json");
        check_writable(&ok).unwrap();
        assert!(!ok.exists(), "the check leaves nothing behind");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        write_file(&ok, b"{}").unwrap();
        write_file(&ok, b"{\"a\":1}").unwrap();
        assert_eq!(std::fs::read_to_string(&ok).unwrap(), "{\"a\":1}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
