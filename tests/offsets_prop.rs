//! Property test of the offset tracker (issue 7 §1) against a model of what the consumer loop
//! does with it: messages start in offset order on several partitions of several topics,
//! finish in any order, commits are taken at any moment, partitions are revoked and assigned
//! again (the new fetch resumes at the last committed offset), and a full window pushes back.
//!
//! Whatever the interleaving: no committed offset ever passes a message that has no final
//! outcome, commits never go backwards, and once everything is finished the commit reaches
//! one past the last message.

use proptest::prelude::*;
use proptest::sample::Index;
use pusher::pipeline::offsets::{OffsetError, OffsetTracker};
use std::collections::{BTreeMap, BTreeSet};

const TOPICS: [&str; 2] = ["push-game_apns", "push-other_apns-single"];
const PARTITIONS: i32 = 3;

#[derive(Debug, Clone)]
enum Op {
    /// Consume the next message of a partition.
    Start {
        part: usize,
    },
    /// An in-flight message of a partition gets its final outcome.
    Finish {
        part: usize,
        which: Index,
    },
    /// The commit timer fires.
    Commit,
    /// A rebalance takes the partition away, then gives it back.
    Revoke {
        part: usize,
    },
    Assign {
        part: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let part = 0..TOPICS.len() * PARTITIONS as usize;
    prop_oneof![
        6 => part.clone().prop_map(|part| Op::Start { part }),
        6 => (part.clone(), any::<Index>()).prop_map(|(part, which)| Op::Finish { part, which }),
        2 => Just(Op::Commit),
        1 => part.clone().prop_map(|part| Op::Revoke { part }),
        1 => part.prop_map(|part| Op::Assign { part }),
    ]
}

/// What the consumer knows about one partition.
#[derive(Debug, Default)]
struct Model {
    /// Assigned to this consumer (messages arrive only then).
    assigned: bool,
    /// The next offset the fetch returns.
    next: i64,
    /// Started in the current assignment and not finished.
    in_flight: BTreeSet<i64>,
    /// Every offset ever consumed, and whether it has had a final outcome (in any assignment).
    consumed: BTreeMap<i64, bool>,
    /// The last commit the tracker handed out.
    committed: Option<i64>,
    /// The last offset started in the current assignment.
    last_started: Option<i64>,
}

/// The partition's log has gaps (compaction, transaction markers): some offsets hold no
/// message. Fixed per partition, so a re-fetch after a rebalance sees the same offsets.
fn in_log(part: usize, offset: i64) -> bool {
    (offset * 7 + part as i64) % 5 != 3
}

/// The first offset at or after `from` that holds a message.
fn next_in_log(part: usize, from: i64) -> i64 {
    (from..).find(|&o| in_log(part, o)).unwrap_or(from)
}

fn key(part: usize) -> (&'static str, i32) {
    (
        TOPICS[part / PARTITIONS as usize],
        (part % PARTITIONS as usize) as i32,
    )
}

fn check_commits(tracker: &mut OffsetTracker, models: &mut [Model]) -> Result<(), TestCaseError> {
    for (topic, partition, offset) in tracker.take_commits() {
        let part = models
            .iter()
            .enumerate()
            .position(|(i, _)| key(i) == (topic.as_str(), partition))
            .ok_or_else(|| {
                TestCaseError::fail(format!("commit for unknown {topic}[{partition}]"))
            })?;
        let m = &mut models[part];
        prop_assert!(m.assigned, "commit for revoked {}[{}]", topic, partition);
        // The heart of at-least-once: nothing below a commit is without an outcome.
        if let Some((&o, _)) = m.consumed.range(..offset).find(|(_, done)| !**done) {
            return Err(TestCaseError::fail(format!(
                "{topic}[{partition}]: commit {offset} passes offset {o}, which has no outcome"
            )));
        }
        if let Some(before) = m.committed {
            prop_assert!(
                offset >= before,
                "commit went back from {} to {}",
                before,
                offset
            );
        }
        m.committed = Some(offset);
    }
    Ok(())
}

fn run(ops: &[Op], capacity: usize) -> Result<(), TestCaseError> {
    let mut tracker = OffsetTracker::new(capacity);
    let mut models: Vec<Model> = (0..TOPICS.len() * PARTITIONS as usize)
        .map(|_| Model {
            assigned: true,
            ..Model::default()
        })
        .collect();
    for (part, _) in models.iter().enumerate() {
        let (topic, partition) = key(part);
        tracker.assign(topic, partition);
    }
    for op in ops {
        match op.clone() {
            Op::Start { part } => {
                let (topic, partition) = key(part);
                let m = &mut models[part];
                if !m.assigned {
                    continue;
                }
                m.next = next_in_log(part, m.next);
                match tracker.start(topic, partition, m.next) {
                    Ok(()) => {
                        m.in_flight.insert(m.next);
                        m.consumed.entry(m.next).or_insert(false);
                        m.last_started = Some(m.next);
                        m.next += 1;
                    }
                    // Backpressure: the loop waits and starts the same offset again later.
                    Err(OffsetError::Full { .. }) => {
                        prop_assert!(m.in_flight.len() <= capacity);
                    }
                    Err(e) => return Err(TestCaseError::fail(format!("start: {e}"))),
                }
            }
            Op::Finish { part, which } => {
                let (topic, partition) = key(part);
                let m = &mut models[part];
                if m.in_flight.is_empty() {
                    continue;
                }
                let offset = *m
                    .in_flight
                    .iter()
                    .nth(which.index(m.in_flight.len()))
                    .ok_or_else(|| TestCaseError::fail("index out of range"))?;
                m.in_flight.remove(&offset);
                m.consumed.insert(offset, true);
                prop_assert_eq!(tracker.finish(topic, partition, offset), Ok(()));
            }
            Op::Commit => check_commits(&mut tracker, &mut models)?,
            Op::Revoke { part } => {
                let (topic, partition) = key(part);
                // As the rebalance callback does: commit what is done, then forget it.
                check_commits(&mut tracker, &mut models)?;
                tracker.revoke(topic, partition);
                let m = &mut models[part];
                m.assigned = false;
                // Late outcomes of its messages arrive after the revocation: refused, and the
                // messages stay without an outcome until the next owner redoes them.
                for offset in std::mem::take(&mut m.in_flight) {
                    let late = tracker.finish(topic, partition, offset);
                    let refused = matches!(late, Err(OffsetError::NotInFlight { .. }));
                    prop_assert!(refused, "late finish after revoke: {:?}", late);
                }
            }
            Op::Assign { part } => {
                let (topic, partition) = key(part);
                let m = &mut models[part];
                if m.assigned {
                    continue;
                }
                tracker.assign(topic, partition);
                m.assigned = true;
                m.last_started = None;
                // The fetch resumes at the committed offset (or the start, with none).
                m.next = m.committed.unwrap_or(0);
            }
        }
        let unfinished: usize = models.iter().map(|m| m.in_flight.len()).sum();
        prop_assert_eq!(tracker.in_flight(), unfinished);
    }
    // Everything still in flight finishes: each assigned partition's commit reaches one past
    // its last consumed message.
    for (part, m) in models.iter_mut().enumerate() {
        let (topic, partition) = key(part);
        for offset in std::mem::take(&mut m.in_flight) {
            prop_assert_eq!(tracker.finish(topic, partition, offset), Ok(()));
            m.consumed.insert(offset, true);
        }
    }
    check_commits(&mut tracker, &mut models)?;
    for (part, m) in models.iter().enumerate() {
        let (topic, partition) = key(part);
        if m.assigned {
            let want = m.last_started.map(|last| last + 1);
            prop_assert_eq!(tracker.committable(topic, partition), want);
            if want.is_some() {
                prop_assert_eq!(m.committed, want);
            }
        }
    }
    prop_assert_eq!(tracker.in_flight(), 0);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// A roomy window: no backpressure.
    #[test]
    fn commits_never_pass_a_message_without_outcome(ops in proptest::collection::vec(op(), 1..400)) {
        run(&ops, 10_000)?;
    }

    /// A window of 4 per partition: `Full` pushes back and the same offset starts later.
    #[test]
    fn backpressure_keeps_the_guarantee(ops in proptest::collection::vec(op(), 1..400)) {
        run(&ops, 4)?;
    }
}

/// The model's own check can fail: a tracker that committed everything it was told about,
/// finished or not, is caught (this is what the property guards against).
#[test]
fn the_property_catches_a_premature_commit() {
    let mut models: Vec<Model> = (0..TOPICS.len() * PARTITIONS as usize)
        .map(|_| Model {
            assigned: true,
            ..Model::default()
        })
        .collect();
    let (topic, partition) = key(0);
    models[0].consumed.insert(0, false);
    models[0].consumed.insert(1, true);
    // A tracker whose window started at 2 has never heard of 0 and 1: it would commit 3.
    let mut wrong = OffsetTracker::new(10);
    wrong.start(topic, partition, 2).unwrap();
    wrong.finish(topic, partition, 2).unwrap();
    assert!(check_commits(&mut wrong, &mut models).is_err());
}
