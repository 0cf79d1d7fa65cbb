//! What a run saw, and the invariants it must satisfy.
//!
//! The history is written by the workload, the leader observer and the fault
//! injector as the run goes; `check` reads it after healing, against the
//! partitions' final contents.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// A record's identity: which producer wrote it and its place in that producer's stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RecordId {
    pub producer: u32,
    pub seq: u64,
}

impl RecordId {
    pub fn value(&self) -> String {
        format!("p{}-{}", self.producer, self.seq)
    }

    pub fn parse(value: &[u8]) -> Option<RecordId> {
        let text = std::str::from_utf8(value).ok()?;
        let (producer, seq) = text.strip_prefix('p')?.split_once('-')?;
        Some(RecordId { producer: producer.parse().ok()?, seq: seq.parse().ok()? })
    }
}

pub type PartitionKey = (String, i32);

/// One acknowledged produce: these records at these offsets.
#[derive(Debug, Clone)]
pub struct Ack {
    pub at: Duration,
    pub partition: PartitionKey,
    pub base_offset: i64,
    pub records: Vec<RecordId>,
    pub idempotent: bool,
}

#[derive(Debug, Default)]
pub struct History {
    /// (virtual time, what happened): faults, crashes, elections, errors.
    pub events: Vec<(Duration, String)>,
    pub acks: Vec<Ack>,
    /// Every (partition, offset) -> record read by consumers during the run.
    pub reads: BTreeMap<(PartitionKey, i64), RecordId>,
    /// Reads that contradicted an earlier read of the same offset.
    pub read_conflicts: Vec<String>,
    /// (partition, epoch) -> the broker seen leading it.
    pub leaders: BTreeMap<(PartitionKey, i32), u64>,
    pub leader_conflicts: Vec<String>,
    /// (group, partition) -> the highest acknowledged commit.
    pub commits: BTreeMap<(String, PartitionKey), i64>,
    /// Partition offsets whose commit was acknowledged, counted each time.
    pub commits_acked: u64,
    pub commit_regressions: Vec<String>,
    pub topics_created: BTreeSet<String>,
    /// Errors that must not happen (an idempotent producer told its sequence is out of order...).
    pub fatal: Vec<String>,
    pub produce_attempts: u64,
}

impl History {
    pub fn event(&mut self, at: Duration, what: impl Into<String>) {
        self.events.push((at, what.into()));
    }

    pub fn read(&mut self, at: Duration, partition: &PartitionKey, offset: i64, record: RecordId) {
        match self.reads.insert((partition.clone(), offset), record) {
            Some(earlier) if earlier != record => self.read_conflicts.push(format!(
                "{:?}: offset {offset} of {}-{} was read as {} and later as {}",
                at,
                partition.0,
                partition.1,
                earlier.value(),
                record.value()
            )),
            _ => {}
        }
    }

    pub fn leader_seen(&mut self, at: Duration, partition: &PartitionKey, epoch: i32, broker: u64) {
        match self.leaders.insert((partition.clone(), epoch), broker) {
            Some(other) if other != broker => {
                let conflict = format!(
                    "{at:?}: brokers {other} and {broker} both led {}-{} in epoch {epoch}",
                    partition.0, partition.1
                );
                self.leader_conflicts.push(conflict);
            }
            None => self.event(at, format!("broker {broker} leads {}-{} in epoch {epoch}", partition.0, partition.1)),
            _ => {}
        }
    }

    pub fn commit_acked(&mut self, group: &str, partition: &PartitionKey, offset: i64) {
        self.commits_acked += 1;
        let best = self.commits.entry((group.to_string(), partition.clone())).or_insert(offset);
        *best = (*best).max(offset);
    }

    /// A committed offset read back (OffsetFetch): never below what was acknowledged before.
    pub fn commit_seen(&mut self, at: Duration, group: &str, partition: &PartitionKey, offset: i64) {
        if let Some(acked) = self.commits.get(&(group.to_string(), partition.clone())) {
            if offset < *acked {
                self.commit_regressions.push(format!(
                    "{at:?}: group {group} read committed offset {offset} for {}-{} after a commit of {acked} was acknowledged",
                    partition.0, partition.1
                ));
            }
        }
    }
}

/// One violated invariant, with the partition it concerns (for the trace).
#[derive(Debug, Clone)]
pub struct Violation {
    pub invariant: &'static str,
    pub detail: String,
    pub partition: Option<PartitionKey>,
}

/// The partitions' contents after healing: offset -> record (None: not a workload record).
pub type FinalLogs = BTreeMap<PartitionKey, BTreeMap<i64, Option<RecordId>>>;

/// Checks the history against the final logs.
pub fn check(history: &History, logs: &FinalLogs, existing_topics: &BTreeSet<String>) -> Vec<Violation> {
    let mut out = Vec::new();
    let mut push = |invariant, detail: String, partition: Option<PartitionKey>| {
        if out.len() < 50 {
            out.push(Violation { invariant, detail, partition });
        }
    };
    // Acknowledged records are readable at their acknowledged offsets.
    for ack in &history.acks {
        let log = logs.get(&ack.partition);
        for (i, record) in ack.records.iter().enumerate() {
            let offset = ack.base_offset + i as i64;
            match log.and_then(|l| l.get(&offset)) {
                Some(Some(found)) if found == record => {}
                Some(Some(found)) => push(
                    "acknowledged offset holds another record",
                    format!(
                        "{} was acknowledged at {:?} at offset {offset} of {}-{}, which now holds {}",
                        record.value(),
                        ack.at,
                        ack.partition.0,
                        ack.partition.1,
                        found.value()
                    ),
                    Some(ack.partition.clone()),
                ),
                _ => push(
                    "acknowledged record lost",
                    format!(
                        "{} was acknowledged at offset {offset} of {}-{} (at {:?}) and is not there after healing",
                        record.value(),
                        ack.partition.0,
                        ack.partition.1,
                        ack.at
                    ),
                    Some(ack.partition.clone()),
                ),
            }
        }
    }
    // Exactly once, in order, for idempotent producers; acknowledged order for all.
    let idempotent: BTreeSet<u32> =
        history.acks.iter().filter(|a| a.idempotent).flat_map(|a| a.records.iter().map(|r| r.producer)).collect();
    for (partition, log) in logs {
        let mut last_seq: BTreeMap<u32, (u64, i64)> = BTreeMap::new();
        let mut seen: BTreeMap<RecordId, i64> = BTreeMap::new();
        for (offset, record) in log {
            let Some(record) = record else { continue };
            if !idempotent.contains(&record.producer) {
                continue;
            }
            if let Some(first) = seen.insert(*record, *offset) {
                push(
                    "idempotent record written twice",
                    format!("{} is at offsets {first} and {offset} of {}-{}", record.value(), partition.0, partition.1),
                    Some(partition.clone()),
                );
            }
            if let Some((seq, at)) = last_seq.get(&record.producer) {
                if record.seq <= *seq {
                    push(
                        "idempotent records out of order",
                        format!(
                            "p{}-{} at offset {offset} follows p{}-{seq} at offset {at} in {}-{}",
                            record.producer, record.seq, record.producer, partition.0, partition.1
                        ),
                        Some(partition.clone()),
                    );
                }
            }
            last_seq.insert(record.producer, (record.seq, *offset));
        }
    }
    let mut acked_order: BTreeMap<(u32, PartitionKey), (i64, RecordId)> = BTreeMap::new();
    for ack in &history.acks {
        for (i, record) in ack.records.iter().enumerate() {
            let offset = ack.base_offset + i as i64;
            let key = (record.producer, ack.partition.clone());
            if let Some((before, earlier)) = acked_order.get(&key) {
                if offset <= *before {
                    push(
                        "acknowledged out of order",
                        format!(
                            "{} was acknowledged at offset {offset} of {}-{}, not after {} at {before}",
                            record.value(),
                            ack.partition.0,
                            ack.partition.1,
                            earlier.value()
                        ),
                        Some(ack.partition.clone()),
                    );
                }
            }
            acked_order.insert(key, (offset, *record));
        }
    }
    // Offsets are never reused: what consumers read during the run is what is there now.
    for conflict in &history.read_conflicts {
        push("offset reused for another record", conflict.clone(), None);
    }
    for ((partition, offset), record) in &history.reads {
        if let Some(Some(now)) = logs.get(partition).and_then(|l| l.get(offset)) {
            if now != record {
                push(
                    "offset reused for another record",
                    format!(
                        "offset {offset} of {}-{} was read as {} during the run and holds {} after healing",
                        partition.0,
                        partition.1,
                        record.value(),
                        now.value()
                    ),
                    Some(partition.clone()),
                );
            }
        } else if logs.contains_key(partition) {
            push(
                "consumed record lost",
                format!(
                    "offset {offset} of {}-{} was consumed ({}) and is gone after healing",
                    partition.0,
                    partition.1,
                    record.value()
                ),
                Some(partition.clone()),
            );
        }
    }
    for conflict in &history.leader_conflicts {
        push("two leaders in one epoch", conflict.clone(), None);
    }
    for regression in &history.commit_regressions {
        push("committed offset went backwards", regression.clone(), None);
    }
    for topic in &history.topics_created {
        if !existing_topics.contains(topic) {
            push(
                "created topic lost",
                format!("topic {topic} was created (acknowledged) and does not exist after healing"),
                None,
            );
        }
    }
    for fatal in &history.fatal {
        push("producer fenced by lost state", fatal.clone(), None);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p() -> PartitionKey {
        ("t".to_string(), 0)
    }

    fn rid(producer: u32, seq: u64) -> RecordId {
        RecordId { producer, seq }
    }

    fn history_with(acks: Vec<(i64, Vec<RecordId>)>) -> History {
        let mut h = History::default();
        for (base_offset, records) in acks {
            h.acks.push(Ack { at: Duration::ZERO, partition: p(), base_offset, records, idempotent: true });
        }
        h
    }

    fn logs(entries: &[(i64, RecordId)]) -> FinalLogs {
        let mut logs = FinalLogs::new();
        logs.insert(p(), entries.iter().map(|(o, r)| (*o, Some(*r))).collect());
        logs
    }

    #[test]
    fn a_faithful_log_passes() {
        let h = history_with(vec![(0, vec![rid(1, 0), rid(1, 1)]), (2, vec![rid(1, 2)])]);
        let v = check(&h, &logs(&[(0, rid(1, 0)), (1, rid(1, 1)), (2, rid(1, 2))]), &BTreeSet::new());
        assert!(v.is_empty(), "{v:?}");
    }

    #[test]
    fn lost_duplicated_reordered_and_reused_are_caught() {
        let h = history_with(vec![(0, vec![rid(1, 0)]), (1, vec![rid(1, 1)])]);
        let lost = check(&h, &logs(&[(0, rid(1, 0))]), &BTreeSet::new());
        assert!(lost.iter().any(|v| v.invariant == "acknowledged record lost"));
        let twice = check(&h, &logs(&[(0, rid(1, 0)), (1, rid(1, 1)), (2, rid(1, 1))]), &BTreeSet::new());
        assert!(twice.iter().any(|v| v.invariant == "idempotent record written twice"));
        let swapped = check(&h, &logs(&[(0, rid(1, 1)), (1, rid(1, 0))]), &BTreeSet::new());
        assert!(swapped.iter().any(|v| v.invariant == "acknowledged offset holds another record"));
        assert!(swapped.iter().any(|v| v.invariant == "idempotent records out of order"));
        let mut reread = history_with(vec![]);
        reread.read(Duration::ZERO, &p(), 0, rid(2, 0));
        let reused = check(&reread, &logs(&[(0, rid(2, 5))]), &BTreeSet::new());
        assert!(reused.iter().any(|v| v.invariant == "offset reused for another record"));
    }

    #[test]
    fn leaders_and_commits_are_checked() {
        let mut h = History::default();
        h.leader_seen(Duration::ZERO, &p(), 3, 1);
        h.leader_seen(Duration::ZERO, &p(), 3, 1);
        h.leader_seen(Duration::ZERO, &p(), 4, 2);
        assert!(h.leader_conflicts.is_empty());
        h.leader_seen(Duration::ZERO, &p(), 4, 3);
        h.commit_acked("g", &p(), 10);
        h.commit_seen(Duration::ZERO, "g", &p(), 10);
        h.commit_seen(Duration::ZERO, "g", &p(), 4);
        let v = check(&h, &FinalLogs::new(), &BTreeSet::new());
        assert!(v.iter().any(|v| v.invariant == "two leaders in one epoch"));
        assert_eq!(v.iter().filter(|v| v.invariant == "committed offset went backwards").count(), 1);
        assert_eq!(RecordId::parse(b"p3-17"), Some(rid(3, 17)));
    }
}
