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
    #[error(
        "{first} and {second} name the same file {path}: the later write would replace the earlier"
    )]
    SameFile {
        first: String,
        second: String,
        path: PathBuf,
    },
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

/// Checks a run's outputs before it starts: each writable ([`check_writable`]), no two the
/// same file, and none the baseline (`--baseline`, read, never written). Seen: `--json` naming
/// the baseline replaced it with the regressed run, and the same command then passed.
/// `files`: (flag, path) pairs.
pub fn check_outputs(files: &[(&str, &Path)], baseline: Option<&Path>) -> Result<(), ReportError> {
    for (_, path) in files {
        check_writable(path)?;
    }
    // The folder resolved (it exists: checked above), the name as given.
    let key = |path: &Path| {
        let folder = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        folder
            .canonicalize()
            .unwrap_or(folder)
            .join(path.file_name().unwrap_or_default())
    };
    let all: Vec<(&str, &Path)> = files
        .iter()
        .copied()
        .chain(baseline.map(|b| ("--baseline", b)))
        .collect();
    for (i, (first, a)) in all.iter().enumerate() {
        for (second, b) in &all[i + 1..] {
            if key(a) == key(b) {
                return Err(ReportError::SameFile {
                    first: (*first).to_owned(),
                    second: (*second).to_owned(),
                    path: a.to_path_buf(),
                });
            }
        }
    }
    Ok(())
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
/// unless persisted. Also for long writes that must not leave a half file (replay's export,
/// `pusher gen -o`).
///
/// Named `.pusher-<pid>-<random>`: SIGKILL runs no clean-up, so one left by a killed process
/// is told from a live one's by its pid and removed by the next call for that directory.
pub fn temp_beside(path: &Path) -> std::io::Result<tempfile::NamedTempFile> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    // Made as any new file is (0666 less the umask), not tempfile's private 0600: it becomes
    // the user's report or capture, which a web server or a colleague reads.
    #[cfg(unix)]
    let mode = Some(std::os::unix::fs::PermissionsExt::from_mode(0o666));
    #[cfg(not(unix))]
    let mode = None;
    temp(dir, mode)
}

/// A temporary file in `dir`, named and cleaned up as [`temp_beside`]'s are, readable by its
/// owner only (replay's sorted runs, which no rename follows).
pub fn temp_in(dir: &Path) -> std::io::Result<tempfile::NamedTempFile> {
    temp(dir, None)
}

fn temp(
    dir: &Path,
    mode: Option<std::fs::Permissions>,
) -> std::io::Result<tempfile::NamedTempFile> {
    remove_stale_temps(dir);
    let prefix = format!(".pusher-{}-", std::process::id());
    let mut builder = tempfile::Builder::new();
    builder.prefix(&prefix).rand_bytes(6);
    if let Some(mode) = mode {
        builder.permissions(mode);
    }
    // tempfile's error names the hidden file it tried, where callers name the file the user
    // named: the directory's own error (it is missing), else only the kind (permissions).
    builder
        .tempfile_in(dir)
        .map_err(|e| match std::fs::metadata(dir) {
            Err(missing) => missing,
            Ok(_) => std::io::Error::new(e.kind(), e.kind().to_string()),
        })
}

/// How long a dead process's temporary file must have been unchanged before it is removed: a
/// process in another PID namespace writing to a shared directory looks dead from here, but
/// its file changes while it writes.
const STALE_TEMP: std::time::Duration = std::time::Duration::from_secs(600);

fn remove_stale_temps(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        // Exactly `temp_beside`'s names: a pid (at most Linux's largest), then tempfile's six
        // random letters and digits; nothing a user would name a file.
        let pid = name
            .to_str()
            .and_then(|n| n.strip_prefix(".pusher-"))
            .and_then(|rest| rest.split_once('-'))
            .filter(|(_, random)| {
                random.len() == 6 && random.bytes().all(|b| b.is_ascii_alphanumeric())
            })
            .and_then(|(pid, _)| pid.parse::<u32>().ok())
            .filter(|&pid| pid <= 1 << 22);
        let Some(pid) = pid else { continue };
        if pid == std::process::id() || process_exists(pid) {
            continue;
        }
        let unchanged = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > STALE_TEMP);
        if unchanged && std::fs::remove_file(entry.path()).is_ok() {
            tracing::info!(path = %entry.path().display(), pid, "Removed a temporary file a killed pusher left.");
        }
    }
}

/// Whether a process with this id exists (signal 0 sends nothing; EPERM: it exists, as
/// another user's).
fn process_exists(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return true;
    };
    // SAFETY: kill with signal 0 only checks that the process exists and may be signalled.
    let sent = unsafe { libc::kill(pid, 0) };
    sent == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `--json` naming the baseline replaced it with the regressed run, and the next run
    /// passed against it: refused before the run, as are two outputs in one file.
    #[test]
    fn outputs_are_neither_the_baseline_nor_each_other() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base.json");
        std::fs::write(&base, "{}").unwrap();
        let other = dir.path().join("run.json");
        let spelled_apart = dir.path().join(".").join("base.json");
        let e = check_outputs(&[("--json", &spelled_apart)], Some(&base)).unwrap_err();
        assert!(e.to_string().contains("--json and --baseline"), "{e}");
        let e = check_outputs(&[("--json", &other), ("--html", &other)], None).unwrap_err();
        assert!(e.to_string().contains("--json and --html"), "{e}");
        check_outputs(&[("--json", &other)], Some(&base)).unwrap();
    }

    #[test]
    fn unwritable_report_paths_are_named_before_anything_runs() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("no/such/dir/x.json");
        let e = check_writable(&missing).unwrap_err().to_string();
        assert!(e.contains(&missing.display().to_string()), "{e}");
        assert!(e.contains("No such file or directory"), "{e}");
        // Named as the user named it, not by the hidden temporary file beside it.
        let e = write_file(&missing, b"{}").unwrap_err().to_string();
        assert!(e.contains(&missing.display().to_string()), "{e}");
        assert!(!e.contains(".pusher-"), "{e}");
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
        // A report is made as any new file is (0666 less the umask, 022 in tests and most
        // shells), not private as a temporary file: seen 0600, which a web server could not
        // serve.
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&ok).unwrap().permissions().mode() & 0o777;
        let plain = dir.path().join("plain");
        std::fs::write(&plain, b"").unwrap();
        let umask_mode = std::fs::metadata(&plain).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, umask_mode, "{mode:o} against {umask_mode:o}");
    }

    /// A temporary file whose process is gone (SIGKILL) and that has not changed for 10
    /// minutes is removed by the next write beside it; a live process's, a recent one and
    /// other files stay.
    #[test]
    fn a_killed_process_s_temporary_file_is_removed_by_the_next_write() {
        let dir = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let old = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
        let file = |name: String, modified: Option<std::time::SystemTime>| {
            let path = dir.path().join(name);
            let f = std::fs::File::create(&path).unwrap();
            if let Some(t) = modified {
                f.set_modified(t).unwrap();
            }
            path
        };
        let stale = file(format!(".pusher-{dead}-abc123"), Some(old));
        let users = file(format!(".pusher-{dead}-notes.txt"), Some(old));
        let recent = file(format!(".pusher-{dead}-def456"), None);
        let live = file(
            format!(".pusher-{}-ghi789", std::os::unix::process::parent_id()),
            Some(old),
        );
        let other = file(".pusher-notapid".to_owned(), Some(old));
        write_file(&dir.path().join("r.json"), b"{}").unwrap();
        assert!(!stale.exists(), "the dead process's old file is removed");
        for kept in [recent, live, other, users] {
            assert!(kept.exists(), "{}", kept.display());
        }
    }
}
