//! The time order of `pusher replay --from-kafka` in bounded memory: an external merge sort.
//!
//! Records are held up to a byte budget; past it they are sorted by (timestamp, partition,
//! offset) and written as a run (length-prefixed records) to a temporary file. At the end the
//! runs are merged on the same key. The key is unique (a partition's offsets are), so the
//! order, and the capture written from it, is the one an in-memory sort gives. A range that fits
//! the budget is sorted in memory and touches no file.
//!
//! At most [`FAN_IN`] runs are merged at once (file descriptors, read buffers): that many runs
//! of one size are merged into one run of the next size as soon as they exist.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::{BufRead, BufReader, BufWriter, Seek, Write};
use std::path::{Path, PathBuf};
use tempfile::NamedTempFile;

/// What `--from-kafka` holds in memory before it spills a sorted run to disk.
pub const DEFAULT_BUDGET: usize = 64 * 1024 * 1024;

/// Runs merged at once.
const FAN_IN: usize = 64;

/// A message of the range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub ts: i64,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
}

impl Record {
    fn sort_key(&self) -> (i64, i32, i64) {
        (self.ts, self.partition, self.offset)
    }

    /// What it costs held in memory.
    fn size(&self) -> usize {
        std::mem::size_of::<Record>() + self.key.as_ref().map_or(0, Vec::len) + self.value.len()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("sorting the range in temporary files in {dir}: {source}")]
pub struct SpillError {
    pub dir: PathBuf,
    #[source]
    pub source: std::io::Error,
}

/// Sorts records pushed in any order; see the module's comment.
pub struct Sorter {
    budget: usize,
    fan_in: usize,
    dir: PathBuf,
    held: Vec<Record>,
    held_bytes: usize,
    /// Spilled runs by level: a run of level k+1 is `fan_in` runs of level k merged.
    levels: Vec<Vec<NamedTempFile>>,
    spilled: usize,
}

impl Sorter {
    /// Holds up to `budget` bytes of records; runs go to temporary files in `dir`.
    pub fn new(budget: usize, dir: &Path) -> Sorter {
        Sorter::with_fan_in(budget, dir, FAN_IN)
    }

    fn with_fan_in(budget: usize, dir: &Path, fan_in: usize) -> Sorter {
        Sorter {
            budget,
            fan_in: fan_in.max(2),
            dir: dir.to_path_buf(),
            held: Vec::new(),
            held_bytes: 0,
            levels: Vec::new(),
            spilled: 0,
        }
    }

    pub fn push(&mut self, record: Record) -> Result<(), SpillError> {
        self.held_bytes += record.size();
        self.held.push(record);
        if self.held_bytes >= self.budget {
            self.spill().map_err(|e| self.error(e))?;
        }
        Ok(())
    }

    /// Runs written to disk so far.
    pub fn spilled_runs(&self) -> usize {
        self.spilled
    }

    /// Calls `each` with every record in order, then removes the temporary files. Returns how
    /// many records there were.
    pub fn finish<E: From<SpillError>>(
        mut self,
        mut each: impl FnMut(&Record) -> Result<(), E>,
    ) -> Result<u64, E> {
        if self.levels.is_empty() {
            self.held.sort_unstable_by_key(Record::sort_key);
            for r in &self.held {
                each(r)?;
            }
            return Ok(self.held.len() as u64);
        }
        if !self.held.is_empty() {
            self.spill().map_err(|e| self.error(e))?;
        }
        // Smallest first: merging the front down to `fan_in` rewrites the least.
        let mut runs: Vec<NamedTempFile> = self.levels.drain(..).flatten().collect();
        while runs.len() > self.fan_in {
            let front: Vec<NamedTempFile> = runs.drain(..self.fan_in).collect();
            let merged = self.merge_to_run(front).map_err(|e| self.error(e))?;
            runs.insert(0, merged);
        }
        let mut n = 0u64;
        let dir = self.dir.clone();
        merge(
            &mut runs,
            |r| {
                n += 1;
                each(r)
            },
            |source| {
                E::from(SpillError {
                    dir: dir.clone(),
                    source,
                })
            },
        )?;
        Ok(n)
    }

    fn error(&self, source: std::io::Error) -> SpillError {
        SpillError {
            dir: self.dir.clone(),
            source,
        }
    }

    /// Writes the held records as a sorted run; merges a level that is full.
    fn spill(&mut self) -> std::io::Result<()> {
        self.held.sort_unstable_by_key(Record::sort_key);
        let file = crate::report::temp_in(&self.dir)?;
        let mut out = BufWriter::with_capacity(64 * 1024, file.as_file());
        for r in &self.held {
            write_record(&mut out, r)?;
        }
        out.flush()?;
        drop(out);
        self.held.clear();
        self.held_bytes = 0;
        self.spilled += 1;
        self.add_run(0, file)
    }

    fn add_run(&mut self, level: usize, file: NamedTempFile) -> std::io::Result<()> {
        if self.levels.len() <= level {
            self.levels.resize_with(level + 1, Vec::new);
        }
        self.levels[level].push(file);
        if self.levels[level].len() >= self.fan_in {
            let full = std::mem::take(&mut self.levels[level]);
            let merged = self.merge_to_run(full)?;
            self.add_run(level + 1, merged)?;
        }
        Ok(())
    }

    fn merge_to_run(&self, mut runs: Vec<NamedTempFile>) -> std::io::Result<NamedTempFile> {
        let file = crate::report::temp_in(&self.dir)?;
        let mut out = BufWriter::with_capacity(64 * 1024, file.as_file());
        merge(&mut runs, |r| write_record(&mut out, r), |e| e)?;
        out.flush()?;
        drop(out);
        Ok(file)
    }
}

/// Calls `each` with the records of `runs` in key order (each run sorted).
fn merge<E>(
    runs: &mut [NamedTempFile],
    mut each: impl FnMut(&Record) -> Result<(), E>,
    io_err: impl Fn(std::io::Error) -> E,
) -> Result<(), E> {
    for run in runs.iter_mut() {
        run.as_file_mut().rewind().map_err(&io_err)?;
    }
    let mut readers: Vec<_> = runs
        .iter()
        .map(|run| BufReader::with_capacity(64 * 1024, run.as_file()))
        .collect();
    let mut heads: Vec<Option<Record>> = Vec::with_capacity(readers.len());
    let mut heap = BinaryHeap::with_capacity(readers.len());
    for (i, reader) in readers.iter_mut().enumerate() {
        let head = read_record(reader).map_err(&io_err)?;
        if let Some(r) = &head {
            heap.push(Reverse((r.sort_key(), i)));
        }
        heads.push(head);
    }
    while let Some(Reverse((_, i))) = heap.pop() {
        if let Some(r) = &heads[i] {
            each(r)?;
        }
        let next = read_record(&mut readers[i]).map_err(&io_err)?;
        if let Some(r) = &next {
            heap.push(Reverse((r.sort_key(), i)));
        }
        heads[i] = next;
    }
    Ok(())
}

/// ts, partition, offset, key length (-1: no key), value length, key, value; little-endian.
fn write_record(out: &mut impl Write, r: &Record) -> std::io::Result<()> {
    let too_long = || std::io::Error::other("a message over 2 GiB");
    let key_len = match &r.key {
        Some(k) => i32::try_from(k.len()).map_err(|_| too_long())?,
        None => -1,
    };
    let value_len = u32::try_from(r.value.len()).map_err(|_| too_long())?;
    out.write_all(&r.ts.to_le_bytes())?;
    out.write_all(&r.partition.to_le_bytes())?;
    out.write_all(&r.offset.to_le_bytes())?;
    out.write_all(&key_len.to_le_bytes())?;
    out.write_all(&value_len.to_le_bytes())?;
    if let Some(k) = &r.key {
        out.write_all(k)?;
    }
    out.write_all(&r.value)
}

/// The next record, or `None` at the run's end.
fn read_record(input: &mut impl BufRead) -> std::io::Result<Option<Record>> {
    if input.fill_buf()?.is_empty() {
        return Ok(None);
    }
    let mut head = [0u8; 28];
    input.read_exact(&mut head)?;
    let field = |at: usize, n: usize| &head[at..at + n];
    let ts = i64::from_le_bytes(array(field(0, 8)));
    let partition = i32::from_le_bytes(array(field(8, 4)));
    let offset = i64::from_le_bytes(array(field(12, 8)));
    let key_len = i32::from_le_bytes(array(field(20, 4)));
    let value_len = u32::from_le_bytes(array(field(24, 4)));
    let key = match usize::try_from(key_len) {
        Ok(n) => {
            let mut k = vec![0; n];
            input.read_exact(&mut k)?;
            Some(k)
        }
        Err(_) => None,
    };
    let mut value = vec![0; value_len as usize];
    input.read_exact(&mut value)?;
    Ok(Some(Record {
        ts,
        partition,
        offset,
        key,
        value,
    }))
}

fn array<const N: usize>(bytes: &[u8]) -> [u8; N] {
    let mut a = [0; N];
    a.copy_from_slice(bytes);
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(n: usize) -> Vec<Record> {
        // Few timestamps (ties broken by partition, then offset), keys absent, binary or
        // empty, values of varied length.
        (0..n)
            .map(|i| Record {
                ts: ((i * 7919) % 13) as i64,
                partition: (i % 3) as i32,
                offset: (n - i) as i64,
                key: match i % 4 {
                    0 => None,
                    1 => Some(Vec::new()),
                    _ => Some(vec![0xff, i as u8]),
                },
                value: vec![i as u8; i % 200],
            })
            .collect()
    }

    fn sorted(sorter: Sorter) -> Vec<Record> {
        let mut got = Vec::new();
        let n = sorter
            .finish(|r| {
                got.push(r.clone());
                Ok::<_, SpillError>(())
            })
            .unwrap();
        assert_eq!(n as usize, got.len());
        got
    }

    fn files_in(dir: &Path) -> usize {
        std::fs::read_dir(dir).unwrap().count()
    }

    /// Spilled in many runs, merged through two levels and a final merge over the fan-in:
    /// the order of an in-memory sort, and no file left.
    #[test]
    fn spilled_runs_merge_to_the_in_memory_order() {
        let dir = tempfile::tempdir().unwrap();
        let input = records(3000);
        let mut want = input.clone();
        want.sort_by_key(Record::sort_key);

        let mut sorter = Sorter::with_fan_in(4096, dir.path(), 3);
        for r in input.iter().cloned() {
            sorter.push(r).unwrap();
        }
        assert!(sorter.spilled_runs() > 20, "{}", sorter.spilled_runs());
        assert!(sorter.levels.len() >= 3, "merged through levels");
        assert!(files_in(dir.path()) > 0);
        assert_eq!(sorted(sorter), want);
        assert_eq!(files_in(dir.path()), 0, "runs removed");

        // Within the budget: sorted in memory, no file at all.
        let mut sorter = Sorter::new(usize::MAX, dir.path());
        for r in input.iter().cloned() {
            sorter.push(r).unwrap();
        }
        assert_eq!(sorter.spilled_runs(), 0);
        assert_eq!(files_in(dir.path()), 0);
        assert_eq!(sorted(sorter), want);
    }

    /// A sorter dropped mid-way (an error, Ctrl-C) leaves no file behind.
    #[test]
    fn a_dropped_sorter_removes_its_runs() {
        let dir = tempfile::tempdir().unwrap();
        let mut sorter = Sorter::new(1024, dir.path());
        for r in records(500) {
            sorter.push(r).unwrap();
        }
        assert!(files_in(dir.path()) > 1);
        drop(sorter);
        assert_eq!(files_in(dir.path()), 0);
    }

    /// `each`'s error stops the merge and is returned as it is.
    #[test]
    fn an_error_of_the_writer_stops_the_merge() {
        #[derive(Debug)]
        enum E {
            Stop,
            Spill,
        }
        impl From<SpillError> for E {
            fn from(_: SpillError) -> E {
                E::Spill
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let mut sorter = Sorter::new(1024, dir.path());
        for r in records(500) {
            sorter.push(r).unwrap();
        }
        let mut seen = 0;
        let err = sorter
            .finish(|_| {
                seen += 1;
                if seen == 10 {
                    Err(E::Stop)
                } else {
                    Ok(())
                }
            })
            .unwrap_err();
        assert!(matches!(err, E::Stop), "{err:?}");
        assert_eq!(files_in(dir.path()), 0);
    }
}
