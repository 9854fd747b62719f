//! The capture format: JSON lines, one Kafka message per line, in time order.
//!
//! ```json
//! {"t_us":0,"topic":"push-game_apns","key":"0a0b…","message":{"DeviceToken":"0a0b…","Payload":{…}}}
//! {"t_us":1250,"topic":"push-game_apns","key":"dead…","raw_b64":"bm90IGpzb24="}
//! ```
//!
//! `t_us` is microseconds since the capture started (never decreasing); `key` is the Kafka key
//! (absent when there was none; `key_b64` when it is not UTF-8); `message` is the Kafka value
//! when it is JSON that a line can hold byte for byte, `raw_b64` (base64) otherwise (not JSON,
//! JSON `null`, or JSON with line breaks or surrounding blanks), so every value replays exactly
//! as it was consumed, malformed ones too.

use base64::Engine as _;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("cannot read capture {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot create capture {path}: {source}")]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write capture: {0}")]
    Write(#[from] std::io::Error),
    #[error("capture {path}: line {line} is truncated (the file ends in the middle of a record)")]
    Truncated { path: PathBuf, line: usize },
    #[error("capture {path}: line {line} is not a capture record: {reason}")]
    BadLine {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error(
        "capture {path}: line {line} goes back in time (t_us {t_us} after {previous}): a capture must be in time order"
    )]
    NonMonotonic {
        path: PathBuf,
        line: usize,
        t_us: u64,
        previous: u64,
    },
    #[error("capture {path} holds no messages")]
    Empty { path: PathBuf },
}

/// One recorded Kafka message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Since the start of the capture.
    pub at: Duration,
    pub topic: String,
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
}

/// A line of the file, as serde sees it.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Line<'a> {
    t_us: u64,
    topic: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    key_b64: Option<String>,
    /// `Some` whenever the field is there: plain `Option` reads `"message":null` as absent
    /// (serde turns a JSON null into `None` before `RawValue` sees it).
    #[serde(
        borrow,
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    message: Option<&'a RawValue>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    raw_b64: Option<String>,
}

/// A `message` field that is there, whatever its value (`null` included).
fn present<'de, D>(d: D) -> Result<Option<&'de RawValue>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    <&RawValue>::deserialize(d).map(Some)
}

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Writes one record as one line (with its newline).
pub fn write_entry(
    out: &mut impl Write,
    at: Duration,
    topic: &str,
    key: Option<&[u8]>,
    value: &[u8],
) -> std::io::Result<()> {
    let (key, key_b64) = match key.map(std::str::from_utf8) {
        None => (None, None),
        Some(Ok(k)) => (Some(k.to_string()), None),
        Some(Err(_)) => (None, key.map(|k| B64.encode(k))),
    };
    // A JSON value goes in as it is, when the line gives back exactly its bytes; anything
    // else as base64: not JSON, `null` (a reader may take `"message":null` for no message),
    // or JSON that the line would change (line breaks, which compacting reorders and rounds
    // through `Value`, and blanks around it, which `RawValue` drops).
    let (message, raw_b64) = match serde_json::from_slice::<&RawValue>(value) {
        Ok(raw)
            if raw.get().as_bytes() == value
                && raw.get() != "null"
                && !value.contains(&b'\n')
                && !value.contains(&b'\r') =>
        {
            (Some(raw), None)
        }
        _ => (None, Some(B64.encode(value))),
    };
    let line = Line {
        t_us: at.as_micros() as u64,
        topic: topic.to_string(),
        key,
        key_b64,
        message,
        raw_b64,
    };
    // `From` keeps a write error's kind (a closed pipe stays `BrokenPipe`), which `other` hid.
    serde_json::to_writer(&mut *out, &line).map_err(std::io::Error::from)?;
    out.write_all(b"\n")
}

/// Reads a whole capture, checking every line: a truncated last line, a line that is not a
/// record, or a time that goes backwards is an error naming the line.
pub fn read(path: &Path) -> Result<Vec<Entry>, CaptureError> {
    let file = std::fs::File::open(path).map_err(|source| CaptureError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(std::io::BufReader::new(file), path)
}

/// Reads a capture from any reader; `path` only names it in errors.
pub fn parse(mut reader: impl BufRead, path: &Path) -> Result<Vec<Entry>, CaptureError> {
    let mut entries = Vec::new();
    let mut buf = Vec::new();
    let mut line_no = 0usize;
    let mut previous = 0u64;
    let mut first_t_us = None;
    loop {
        buf.clear();
        let n = reader
            .read_until(b'\n', &mut buf)
            .map_err(|source| CaptureError::Read {
                path: path.to_path_buf(),
                source,
            })?;
        if n == 0 {
            break;
        }
        line_no += 1;
        let complete = buf.ends_with(b"\n");
        let text = buf.trim_ascii();
        if text.is_empty() {
            continue;
        }
        let line: Line<'_> = match serde_json::from_slice(text) {
            Ok(l) => l,
            Err(e) if !complete && (e.is_eof() || e.is_syntax()) => {
                return Err(CaptureError::Truncated {
                    path: path.to_path_buf(),
                    line: line_no,
                })
            }
            Err(e) => {
                return Err(CaptureError::BadLine {
                    path: path.to_path_buf(),
                    line: line_no,
                    reason: e.to_string(),
                })
            }
        };
        let bad = |reason: &str| CaptureError::BadLine {
            path: path.to_path_buf(),
            line: line_no,
            reason: reason.to_string(),
        };
        if line.t_us < previous {
            return Err(CaptureError::NonMonotonic {
                path: path.to_path_buf(),
                line: line_no,
                t_us: line.t_us,
                previous,
            });
        }
        previous = line.t_us;
        // Times count from the first message: a capture that starts elsewhere (absolute
        // times, a slice of a longer capture) is timed from its first line, not from 1970.
        let first = *first_t_us.get_or_insert(line.t_us);
        if line.topic.is_empty() {
            return Err(bad("empty topic"));
        }
        let key = match (line.key, line.key_b64) {
            (Some(k), None) => Some(k.into_bytes()),
            (None, Some(k)) => Some(B64.decode(k).map_err(|e| bad(&format!("key_b64: {e}")))?),
            (None, None) => None,
            (Some(_), Some(_)) => return Err(bad("both key and key_b64")),
        };
        let value = match (line.message, line.raw_b64) {
            (Some(m), None) => m.get().as_bytes().to_vec(),
            (None, Some(r)) => B64.decode(r).map_err(|e| bad(&format!("raw_b64: {e}")))?,
            (None, None) => return Err(bad("no message (give message or raw_b64)")),
            (Some(_), Some(_)) => return Err(bad("both message and raw_b64")),
        };
        entries.push(Entry {
            at: Duration::from_micros(line.t_us - first),
            topic: line.topic,
            key,
            value,
        });
    }
    if entries.is_empty() {
        return Err(CaptureError::Empty {
            path: path.to_path_buf(),
        });
    }
    Ok(entries)
}

/// Records what a running pusher consumes (`pusher run --capture FILE`): one line per message,
/// timed from the first. Shared by the message loop; the first write error is kept and
/// returned by `finish`, so a broken capture is never silent.
#[derive(Debug)]
pub struct CaptureWriter {
    inner: Mutex<WriterState>,
}

#[derive(Debug)]
struct WriterState {
    out: std::io::BufWriter<std::fs::File>,
    start: Option<std::time::Instant>,
    written: u64,
    error: Option<std::io::Error>,
}

impl CaptureWriter {
    pub fn create(path: &Path) -> Result<CaptureWriter, CaptureError> {
        let file = std::fs::File::create(path).map_err(|source| CaptureError::Create {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(CaptureWriter {
            inner: Mutex::new(WriterState {
                out: std::io::BufWriter::new(file),
                start: None,
                written: 0,
                error: None,
            }),
        })
    }

    /// Appends one consumed message (into a buffer: a write to the file every 8 KiB).
    pub fn record(&self, topic: &str, key: Option<&[u8]>, value: Option<&[u8]>) {
        let mut s = self.inner.lock();
        if s.error.is_some() {
            return;
        }
        let now = std::time::Instant::now();
        let at = now - *s.start.get_or_insert(now);
        match write_entry(&mut s.out, at, topic, key, value.unwrap_or_default()) {
            Ok(()) => s.written += 1,
            Err(e) => {
                tracing::error!(error = %e, "Capture write failed; no more messages are recorded.");
                s.error = Some(e);
            }
        }
    }

    /// Flushes; returns the number of records, or the first error.
    pub fn finish(&self) -> Result<u64, CaptureError> {
        let mut s = self.inner.lock();
        if let Some(e) = s.error.take() {
            return Err(CaptureError::Write(e));
        }
        s.out.flush()?;
        Ok(s.written)
    }
}

impl crate::pipeline::run::Capture for CaptureWriter {
    fn record(&self, topic: &str, key: Option<&[u8]>, value: Option<&[u8]>) {
        CaptureWriter::record(self, topic, key, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(entries: &[Entry]) -> Vec<Entry> {
        let mut out = Vec::new();
        for e in entries {
            write_entry(&mut out, e.at, &e.topic, e.key.as_deref(), &e.value).unwrap();
        }
        parse(&out[..], Path::new("mem")).unwrap()
    }

    #[test]
    fn round_trip_keeps_json_raw_bytes_and_keys() {
        let entries = vec![
            Entry {
                at: Duration::ZERO,
                topic: "push-game_apns".into(),
                key: Some(b"0a0b".to_vec()),
                value: br#"{"DeviceToken":"0a0b","Payload":{"aps":{"alert":"hi \u00e9"}}}"#
                    .to_vec(),
            },
            Entry {
                at: Duration::from_micros(1500),
                topic: "push-game_apns".into(),
                key: Some(vec![0xff, 0x00, 0x10]),
                value: b"not json \xff".to_vec(),
            },
            Entry {
                at: Duration::from_micros(1500),
                topic: "push-game_gcm".into(),
                key: None,
                value: b"[1, 2]".to_vec(),
            },
        ];
        assert_eq!(round_trip(&entries), entries);
    }

    /// JSON `null` (a producer that serialised a null object) and JSON a line cannot hold as
    /// it is come back byte for byte, each on one line: before, `null` made a capture that
    /// `replay` refused ("no message"), and multi-line JSON came back compacted, its keys
    /// sorted, its duplicate keys merged and its big integers rounded.
    #[test]
    fn values_a_line_cannot_hold_as_json_come_back_byte_for_byte() {
        let values: [&[u8]; 6] = [
            b"null",
            b"{\n \"b\": 1,\n \"a\": 2, \"a\": 3\n}",
            b"{\"n\":123456789012345678901234567890}\r\n",
            b" {\"a\":1}",
            b"{\"a\":1}\n",
            b"",
        ];
        let entries: Vec<Entry> = values
            .iter()
            .map(|v| Entry {
                at: Duration::ZERO,
                topic: "t".into(),
                key: None,
                value: v.to_vec(),
            })
            .collect();
        let mut out = Vec::new();
        for e in &entries {
            write_entry(&mut out, e.at, &e.topic, None, &e.value).unwrap();
        }
        assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), values.len());
        assert_eq!(parse(&out[..], Path::new("mem")).unwrap(), entries);
    }

    /// A capture written before `null` went as base64 (`"message":null`) replays its `null`.
    #[test]
    fn a_null_message_field_is_the_value_null() {
        let text = "{\"t_us\":0,\"topic\":\"t\",\"message\":null}\n";
        let back = parse(text.as_bytes(), Path::new("c.jsonl")).unwrap();
        assert_eq!(back[0].value, b"null");
    }

    #[test]
    fn bad_captures_are_clear_errors() {
        let good = r#"{"t_us":0,"topic":"t","message":{"a":1}}"#;
        let cases: Vec<(String, &str)> = vec![
            (
                format!("{good}\n{{\"t_us\":5,\"topic\":\"t\",\"mess"),
                "line 2 is truncated",
            ),
            (
                format!("{good}\n{}\n", good.replace("\"t_us\":0", "\"t_us\":9")) + good + "\n",
                "line 3 goes back in time (t_us 0 after 9)",
            ),
            ("\n\n".to_string(), "holds no messages"),
            ("{\"t_us\":0,\"topic\":\"t\"}\n".to_string(), "no message"),
            ("hello\n".to_string(), "line 1 is not a capture record"),
            (
                "{\"t\":0,\"topic\":\"t\",\"message\":1}\n".to_string(),
                "line 1 is not a capture record",
            ),
        ];
        for (text, want) in cases {
            let err = parse(text.as_bytes(), Path::new("c.jsonl"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{text:?}: {err}");
            assert!(err.contains("c.jsonl"), "{err}");
        }
    }

    /// Unix microseconds as `t_us` (seen: a replay that slept ~56 years without a word) are
    /// timed from the first line, gaps kept.
    #[test]
    fn a_capture_not_starting_at_zero_is_timed_from_its_first_line() {
        let t0 = 1_764_000_000_000_000u64;
        let text = format!(
            "{{\"t_us\":{t0},\"topic\":\"t\",\"message\":1}}\n{{\"t_us\":{},\"topic\":\"t\",\"message\":2}}\n",
            t0 + 1500
        );
        let back = parse(text.as_bytes(), Path::new("c.jsonl")).unwrap();
        let at: Vec<Duration> = back.iter().map(|e| e.at).collect();
        assert_eq!(at, [Duration::ZERO, Duration::from_micros(1500)]);
    }

    #[test]
    fn writer_records_in_order_and_reports_count() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.jsonl");
        let w = CaptureWriter::create(&path).unwrap();
        w.record("push-a_apns", Some(b"k1"), Some(br#"{"x":1}"#));
        std::thread::sleep(Duration::from_millis(2));
        w.record("push-a_apns", None, None);
        assert_eq!(w.finish().unwrap(), 2);
        let back = read(&path).unwrap();
        assert_eq!(back.len(), 2);
        assert_eq!(back[0].at, Duration::ZERO);
        assert!(back[1].at >= Duration::from_millis(2));
        assert_eq!(back[1].value, b"");
    }
}
