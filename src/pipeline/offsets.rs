//! Per-partition offset tracking for concurrent completion (DESIGN.md §5, at-least-once).
//!
//! Messages of one partition are started in offset order and finish in any order. The offset we
//! may commit is one past the highest offset below which every started message is finished, so
//! a commit never passes a message without a final outcome. Offsets may have gaps (compaction,
//! transaction markers): only started offsets count.
//!
//! Memory is bounded: each partition keeps only its in-flight window, and `start` refuses to grow
//! it past the tracker's capacity (the caller bounds in-flight work anyway; this makes a bug loud).

use foldhash::HashMap; // Hashed twice a message: see pipeline::message.
use std::collections::VecDeque;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OffsetError {
    #[error("{topic}[{partition}]: offset {offset} started after offset {last}: messages must start in offset order")]
    OutOfOrder {
        topic: String,
        partition: i32,
        offset: i64,
        last: i64,
    },
    #[error("{topic}[{partition}]: offset {offset} is not in flight (finished twice, or its partition was revoked)")]
    NotInFlight {
        topic: String,
        partition: i32,
        offset: i64,
    },
    #[error("{topic}[{partition}]: {capacity} messages already in flight")]
    Full {
        topic: String,
        partition: i32,
        capacity: usize,
    },
}

/// One partition's in-flight window.
#[derive(Debug, Default)]
struct PartitionWindow {
    /// Started offsets not yet released, ascending, with "finished" flags.
    in_flight: VecDeque<(i64, bool)>,
    /// One past the highest released offset: what may be committed. `None` until the first start.
    committable: Option<i64>,
    /// The last offset handed out by `take_commit`, so a commit is not repeated.
    last_taken: Option<i64>,
    /// Highest offset ever started, for the ordering check.
    last_started: Option<i64>,
    /// Which assignment of the partition this window is: a new one on every assignment.
    epoch: u64,
    /// Cancelled when the partition is revoked: its messages still being sent stop.
    revoked: CancellationToken,
}

impl PartitionWindow {
    fn unfinished(&self) -> usize {
        self.in_flight.iter().filter(|(_, done)| !done).count()
    }

    /// Releases the finished prefix of the window.
    fn advance(&mut self) {
        while let Some(&(offset, true)) = self.in_flight.front() {
            self.in_flight.pop_front();
            self.committable = Some(offset + 1);
        }
        // Across a gap, the first unfinished message is the exact limit.
        if let Some(&(offset, _)) = self.in_flight.front() {
            self.committable = Some(offset);
        }
    }
}

/// Offset tracker for every partition assigned to this consumer.
#[derive(Debug)]
pub struct OffsetTracker {
    /// By topic, then partition: looked up with a `&str`, without allocating per message.
    partitions: HashMap<String, HashMap<i32, PartitionWindow>>,
    capacity: usize,
    /// Started and not finished, over all partitions (kept, not recounted: asked per message).
    unfinished: usize,
    /// The last window's epoch.
    epochs: u64,
}

impl OffsetTracker {
    /// `capacity`: the most messages one partition may have in flight.
    pub fn new(capacity: usize) -> Self {
        OffsetTracker {
            partitions: HashMap::default(),
            capacity: capacity.max(1),
            unfinished: 0,
            epochs: 0,
        }
    }

    /// Records that `offset` was consumed and its work has begun.
    pub fn start(&mut self, topic: &str, partition: i32, offset: i64) -> Result<(), OffsetError> {
        let capacity = self.capacity;
        if !self.partitions.contains_key(topic) {
            self.partitions.insert(topic.to_owned(), HashMap::default());
        }
        let epochs = &mut self.epochs;
        let window = self
            .partitions
            .get_mut(topic)
            .map(|windows| {
                windows.entry(partition).or_insert_with(|| {
                    *epochs += 1;
                    PartitionWindow {
                        epoch: *epochs,
                        ..PartitionWindow::default()
                    }
                })
            })
            // Cannot happen (inserted just above); an error rather than a panic.
            .ok_or_else(|| OffsetError::NotInFlight {
                topic: topic.to_owned(),
                partition,
                offset,
            })?;
        if let Some(last) = window.last_started {
            if offset <= last {
                return Err(OffsetError::OutOfOrder {
                    topic: topic.to_owned(),
                    partition,
                    offset,
                    last,
                });
            }
        }
        if window.in_flight.len() >= capacity {
            return Err(OffsetError::Full {
                topic: topic.to_owned(),
                partition,
                capacity,
            });
        }
        if window.in_flight.is_empty() {
            // Nothing before it is pending: committing up to it is already safe.
            window.committable = Some(offset);
        }
        window.in_flight.push_back((offset, false));
        window.last_started = Some(offset);
        self.unfinished += 1;
        Ok(())
    }

    /// Records that `offset` has its final outcome and its side effects are handed off.
    pub fn finish(&mut self, topic: &str, partition: i32, offset: i64) -> Result<(), OffsetError> {
        let not_in_flight = || OffsetError::NotInFlight {
            topic: topic.to_owned(),
            partition,
            offset,
        };
        let window = self
            .partitions
            .get_mut(topic)
            .and_then(|windows| windows.get_mut(&partition))
            .ok_or_else(not_in_flight)?;
        let index = window
            .in_flight
            .binary_search_by_key(&offset, |&(o, _)| o)
            .map_err(|_| not_in_flight())?;
        if window.in_flight[index].1 {
            return Err(not_in_flight());
        }
        window.in_flight[index].1 = true;
        window.advance();
        self.unfinished -= 1;
        Ok(())
    }

    /// The next offset to commit for a partition (Kafka commits "the next message to read"),
    /// or `None` when nothing was started on it since it was assigned.
    pub fn committable(&self, topic: &str, partition: i32) -> Option<i64> {
        self.partitions
            .get(topic)
            .and_then(|windows| windows.get(&partition))
            .and_then(|w| w.committable)
    }

    /// Every partition whose committable offset moved since the last call, to pass to a commit.
    pub fn take_commits(&mut self) -> Vec<(String, i32, i64)> {
        self.commits(false)
    }

    /// Every partition's committable offset, moved or not: an asynchronous commit can fail
    /// unseen (a commit during a rebalance is refused, and rdkafka reports no async failure),
    /// so the synchronous commits (revocation, shutdown) and a periodic one send them all.
    pub fn all_commits(&mut self) -> Vec<(String, i32, i64)> {
        self.commits(true)
    }

    fn commits(&mut self, all: bool) -> Vec<(String, i32, i64)> {
        let mut commits = Vec::new();
        for (topic, partition, window) in self
            .partitions
            .iter_mut()
            .flat_map(|(topic, windows)| windows.iter_mut().map(move |(p, w)| (topic, *p, w)))
        {
            if let Some(offset) = window.committable {
                if all || window.last_taken != Some(offset) {
                    window.last_taken = Some(offset);
                    commits.push((topic.clone(), partition, offset));
                }
            }
        }
        commits.sort();
        commits
    }

    /// Messages started and not yet finished, over all partitions.
    pub fn in_flight(&self) -> usize {
        self.unfinished
    }

    /// The partition was revoked: forget it. Late `finish` calls for it get `NotInFlight`,
    /// which the caller ignores (the new owner will redo those messages: at-least-once).
    pub fn revoke(&mut self, topic: &str, partition: i32) {
        let removed = self
            .partitions
            .get_mut(topic)
            .and_then(|windows| windows.remove(&partition));
        if let Some(window) = removed {
            self.unfinished -= window.unfinished();
            window.revoked.cancel();
        }
    }

    /// Cancelled when the partition is revoked (or assigned anew): a message of it still
    /// being sent stops then, leaving it to the new owner, which reads it again from the
    /// committed offset. `None` when the partition is not in flight here.
    pub fn revocation(&self, topic: &str, partition: i32) -> Option<CancellationToken> {
        self.partitions
            .get(topic)
            .and_then(|windows| windows.get(&partition))
            .map(|w| w.revoked.clone())
    }

    /// The partition was (re)assigned: start clean, whatever was known about it before.
    pub fn assign(&mut self, topic: &str, partition: i32) {
        self.revoke(topic, partition);
        self.epochs += 1;
        self.partitions.entry(topic.to_owned()).or_default().insert(
            partition,
            PartitionWindow {
                epoch: self.epochs,
                ..PartitionWindow::default()
            },
        );
    }

    /// Which assignment of the partition is current (`None`: not assigned). A message read
    /// under one epoch and not started may not start under another: the partition was revoked
    /// meanwhile, and whoever holds it now reads it again from the committed offset.
    pub fn epoch(&self, topic: &str, partition: i32) -> Option<u64> {
        self.partitions
            .get(topic)
            .and_then(|windows| windows.get(&partition))
            .map(|w| w.epoch)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const T: &str = "push-game_apns";

    #[test]
    fn every_assignment_is_a_new_epoch() {
        let mut t = OffsetTracker::new(10);
        assert_eq!(t.epoch(T, 0), None);
        t.assign(T, 0);
        let first = t.epoch(T, 0);
        assert!(first.is_some());
        t.start(T, 0, 5).unwrap();
        assert_eq!(t.epoch(T, 0), first, "starting keeps the epoch");
        let revoked = t.revocation(T, 0).unwrap();
        assert!(!revoked.is_cancelled());
        t.revoke(T, 0);
        assert!(revoked.is_cancelled(), "its messages in flight are told");
        assert_eq!(t.epoch(T, 0), None);
        t.assign(T, 0);
        assert!(t.epoch(T, 0).is_some() && t.epoch(T, 0) != first);
        // A window made by a start without an assignment has its own epoch too.
        t.start(T, 1, 0).unwrap();
        assert!(t.epoch(T, 1).is_some() && t.epoch(T, 1) != t.epoch(T, 0));
    }

    #[test]
    fn commits_only_past_a_finished_prefix() {
        let mut t = OffsetTracker::new(10);
        for o in 5..9 {
            t.start(T, 0, o).unwrap();
        }
        assert_eq!(t.committable(T, 0), Some(5));
        t.finish(T, 0, 6).unwrap();
        t.finish(T, 0, 8).unwrap();
        assert_eq!(t.committable(T, 0), Some(5), "5 is still in flight");
        t.finish(T, 0, 5).unwrap();
        assert_eq!(t.committable(T, 0), Some(7), "7 is still in flight");
        t.finish(T, 0, 7).unwrap();
        assert_eq!(t.committable(T, 0), Some(9));
        assert_eq!(t.in_flight(), 0);
    }

    #[test]
    fn gaps_in_offsets_are_fine() {
        let mut t = OffsetTracker::new(10);
        t.start(T, 1, 10).unwrap();
        t.start(T, 1, 20).unwrap();
        t.finish(T, 1, 10).unwrap();
        assert_eq!(t.committable(T, 1), Some(20));
        t.finish(T, 1, 20).unwrap();
        assert_eq!(t.committable(T, 1), Some(21));
    }

    #[test]
    fn bad_calls_are_errors_not_panics() {
        let mut t = OffsetTracker::new(2);
        t.start(T, 0, 3).unwrap();
        assert!(matches!(
            t.start(T, 0, 3),
            Err(OffsetError::OutOfOrder { .. })
        ));
        assert!(matches!(
            t.finish(T, 0, 4),
            Err(OffsetError::NotInFlight { .. })
        ));
        assert!(matches!(
            t.finish(T, 9, 4),
            Err(OffsetError::NotInFlight { .. })
        ));
        t.start(T, 0, 4).unwrap();
        assert!(matches!(
            t.start(T, 0, 5),
            Err(OffsetError::Full { capacity: 2, .. })
        ));
        t.finish(T, 0, 4).unwrap();
        assert!(matches!(
            t.finish(T, 0, 4),
            Err(OffsetError::NotInFlight { .. })
        ));
    }

    #[test]
    fn take_commits_reports_each_move_once() {
        let mut t = OffsetTracker::new(10);
        t.start(T, 0, 0).unwrap();
        t.start(T, 1, 0).unwrap();
        t.finish(T, 0, 0).unwrap();
        assert_eq!(
            t.take_commits(),
            vec![(T.to_owned(), 0, 1), (T.to_owned(), 1, 0)]
        );
        assert!(t.take_commits().is_empty());
        // All of them again on request, moved or not (a failed async commit is healed).
        assert_eq!(t.all_commits().len(), 2);
        t.finish(T, 1, 0).unwrap();
        assert_eq!(t.take_commits(), vec![(T.to_owned(), 1, 1)]);
    }

    #[test]
    fn revocation_drops_state_and_reassignment_starts_clean() {
        let mut t = OffsetTracker::new(10);
        t.start(T, 0, 100).unwrap();
        t.start(T, 0, 101).unwrap();
        t.start(T, 1, 5).unwrap();
        assert_eq!(t.in_flight(), 3);
        t.revoke(T, 0);
        assert_eq!(
            t.in_flight(),
            1,
            "the revoked partition's work no longer counts"
        );
        assert_eq!(t.committable(T, 0), None);
        assert!(matches!(
            t.finish(T, 0, 100),
            Err(OffsetError::NotInFlight { .. })
        ));
        // Re-assigned, and the new fetch starts again from the committed offset (100).
        t.assign(T, 0);
        t.start(T, 0, 100).unwrap();
        t.finish(T, 0, 100).unwrap();
        assert_eq!(t.committable(T, 0), Some(101));
        assert_eq!(t.in_flight(), 1);
    }

    proptest! {
        /// Whatever order outcomes arrive in, the committable offset never passes a message
        /// without a final outcome, and it reaches the end once all are done.
        #[test]
        fn never_commits_past_an_unfinished_message(
            gaps in proptest::collection::vec(1i64..4, 1..200),
            order_seed in proptest::collection::vec(any::<proptest::sample::Index>(), 200),
        ) {
            let mut offsets = Vec::new();
            let mut next = 7i64;
            for gap in &gaps {
                offsets.push(next);
                next += gap;
            }
            let mut t = OffsetTracker::new(offsets.len());
            for &o in &offsets {
                t.start(T, 3, o).unwrap();
            }
            let mut pending = offsets.clone();
            let mut finished = std::collections::BTreeSet::new();
            for index in order_seed.iter().take(offsets.len()) {
                let o = pending.swap_remove(index.index(pending.len()));
                t.finish(T, 3, o).unwrap();
                finished.insert(o);
                let c = t.committable(T, 3).unwrap();
                // Every started offset below the committable one is finished...
                for &s in offsets.iter().filter(|&&s| s < c) {
                    prop_assert!(finished.contains(&s), "committable {} passes unfinished {}", c, s);
                }
                // ...and the committable offset is as far as it may go.
                if let Some(&first_unfinished) = offsets.iter().find(|o| !finished.contains(o)) {
                    prop_assert_eq!(c, first_unfinished);
                }
            }
            prop_assert!(pending.is_empty());
            prop_assert_eq!(t.committable(T, 3), Some(offsets[offsets.len() - 1] + 1));
            prop_assert_eq!(t.in_flight(), 0);
        }
    }
}
