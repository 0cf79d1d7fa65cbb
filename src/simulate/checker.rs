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
    /// Every transaction a transactional producer began, in the order they ended.
    pub txns: Vec<Txn>,
    /// Records read by read_committed consumers: (when, partition, offset, record).
    pub committed_reads: Vec<(Duration, PartitionKey, i64, RecordId)>,
    /// The highest last stable offset a read_committed fetch saw, per partition.
    pub stable_offsets: BTreeMap<PartitionKey, i64>,
    pub stable_regressions: Vec<String>,
    /// The copier's acknowledged transactional offset commits, highest per input partition.
    pub copier_commits: BTreeMap<PartitionKey, i64>,
}

/// One transaction of a transactional producer, as the producer saw it.
#[derive(Debug, Clone)]
pub struct Txn {
    pub producer: u32,
    /// Records whose send was answered with an offset.
    pub acked: Vec<(PartitionKey, i64, RecordId)>,
    /// Records whose send failed: they may or may not be in the log.
    pub unacked: Vec<(PartitionKey, RecordId)>,
    pub end: TxnEnd,
}

/// How a transaction ended, as its producer knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxnEnd {
    /// EndTxn(commit) was asked at this time; `answered` if it succeeded.
    Commit { asked: Duration, answered: bool },
    /// Aborted, or asked to be, or left open for the coordinator to abort.
    Abort,
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

    /// A read_committed fetch of `partition` answered `stable` as its last stable offset.
    pub fn stable_seen(&mut self, at: Duration, partition: &PartitionKey, stable: i64) {
        let best = self.stable_offsets.entry(partition.clone()).or_insert(stable);
        if stable < *best {
            self.stable_regressions.push(format!(
                "{at:?}: {}-{} answered last stable offset {stable} after {best}",
                partition.0, partition.1
            ));
        }
        *best = (*best).max(stable);
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

/// The transactional checks, against the partitions read read_committed
/// after healing (`committed`; the copier's output in `copies`) and the
/// copier group's committed offsets then (`copier_offsets`):
/// - no aborted read (G1a): a read_committed reader never sees a record of
///   a transaction that was aborted, nor one before its commit was asked (a
///   marker of an earlier transaction that landed in a later one);
/// - no torn transaction: all of a committed transaction is visible, or,
///   if its commit was never answered, all or none;
/// - the last stable offset never goes back;
/// - consume-transform-produce is exactly once: the copies are the input
///   records below the committed offsets, each once.
pub fn check_transactions(
    history: &History,
    committed: &FinalLogs,
    copies: &FinalLogs,
    copier_offsets: &BTreeMap<PartitionKey, i64>,
) -> Vec<Violation> {
    let mut out = Vec::new();
    let mut push = |invariant, detail: String, partition: Option<PartitionKey>| {
        if out.len() < 50 {
            out.push(Violation { invariant, detail, partition });
        }
    };
    let mut owner: BTreeMap<RecordId, usize> = BTreeMap::new();
    for (i, txn) in history.txns.iter().enumerate() {
        for (_, _, record) in &txn.acked {
            owner.insert(*record, i);
        }
        for (_, record) in &txn.unacked {
            owner.insert(*record, i);
        }
    }
    for (at, partition, offset, record) in &history.committed_reads {
        let Some(txn) = owner.get(record).map(|i| &history.txns[*i]) else { continue };
        match txn.end {
            TxnEnd::Abort => push(
                "aborted read (G1a)",
                format!(
                    "{} of an aborted transaction was read read_committed at offset {offset} of {}-{} at {at:?}",
                    record.value(),
                    partition.0,
                    partition.1
                ),
                Some(partition.clone()),
            ),
            TxnEnd::Commit { asked, .. } if *at < asked => push(
                "read before its transaction committed",
                format!(
                    "{} was read read_committed at offset {offset} of {}-{} at {at:?}, before its commit was asked at {asked:?}",
                    record.value(),
                    partition.0,
                    partition.1
                ),
                Some(partition.clone()),
            ),
            TxnEnd::Commit { .. } => {}
        }
    }
    let visible: BTreeMap<RecordId, (PartitionKey, i64)> = committed
        .iter()
        .flat_map(|(p, log)| log.iter().filter_map(move |(o, r)| r.map(|r| (r, (p.clone(), *o)))))
        .collect();
    for txn in &history.txns {
        let seen = txn.acked.iter().filter(|(_, _, r)| visible.contains_key(r)).count();
        let shown = txn.unacked.iter().filter(|(_, r)| visible.contains_key(r)).count();
        let name = || txn.acked.first().map(|(_, _, r)| r.value()).unwrap_or_default();
        match txn.end {
            TxnEnd::Abort if seen + shown > 0 => push(
                "aborted read (G1a)",
                format!(
                    "{} records of producer {}'s aborted transaction (from {}) are visible read_committed after healing",
                    seen + shown,
                    txn.producer,
                    name()
                ),
                txn.acked.first().map(|(p, _, _)| p.clone()),
            ),
            TxnEnd::Commit { answered, .. } if seen < txn.acked.len() && (answered || seen > 0) => {
                let missing = txn.acked.iter().find(|(_, _, r)| !visible.contains_key(r)).expect("one is missing");
                push(
                    "torn transaction",
                    format!(
                        "producer {}'s transaction{} from {}: {seen} of its {} records are visible read_committed, not {} (at offset {} of {}-{})",
                        txn.producer,
                        if answered { " (commit acknowledged)" } else { "" },
                        name(),
                        txn.acked.len(),
                        missing.2.value(),
                        missing.1,
                        missing.0 .0,
                        missing.0 .1
                    ),
                    Some(missing.0.clone()),
                )
            }
            _ => {}
        }
    }
    for regression in &history.stable_regressions {
        push("last stable offset went back", regression.clone(), None);
    }
    // Exactly once: each input record below the committed offset copied once, and nothing else.
    for (partition, upto) in copier_offsets {
        let copied: Vec<RecordId> = copies
            .iter()
            .filter(|((_, p), _)| *p == partition.1)
            .flat_map(|(_, log)| log.values().flatten().copied())
            .collect();
        let mut counts: BTreeMap<RecordId, usize> = BTreeMap::new();
        for record in &copied {
            *counts.entry(*record).or_default() += 1;
        }
        let input = committed.get(partition).into_iter().flat_map(|log| log.range(..*upto));
        let expected: BTreeSet<RecordId> = input.filter_map(|(_, r)| *r).collect();
        for record in &expected {
            match counts.get(record).copied().unwrap_or(0) {
                1 => {}
                n => push(
                    "consume-transform-produce not exactly once",
                    format!(
                        "{} (below the copier's committed offset {upto} of {}-{}) was copied {n} times",
                        record.value(),
                        partition.0,
                        partition.1
                    ),
                    Some(partition.clone()),
                ),
            }
        }
        if let Some(extra) = counts.keys().find(|r| !expected.contains(r)) {
            push(
                "consume-transform-produce not exactly once",
                format!(
                    "{} was copied from {}-{} but is not a visible input record below the committed offset {upto}",
                    extra.value(),
                    partition.0,
                    partition.1
                ),
                Some(partition.clone()),
            );
        }
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

    fn txn(producer: u32, acked: &[(i64, RecordId)], end: TxnEnd) -> Txn {
        Txn { producer, acked: acked.iter().map(|(o, r)| (p(), *o, *r)).collect(), unacked: Vec::new(), end }
    }

    #[test]
    fn transactions_are_checked() {
        let committed = TxnEnd::Commit { asked: Duration::from_secs(5), answered: true };
        let mut h = History::default();
        h.txns.push(txn(1, &[(0, rid(1, 0)), (1, rid(1, 1))], committed));
        h.txns.push(txn(1, &[(2, rid(1, 2))], TxnEnd::Abort));
        let faithful = logs(&[(0, rid(1, 0)), (1, rid(1, 1))]);
        let none = BTreeMap::new();
        assert!(check_transactions(&h, &faithful, &FinalLogs::new(), &none).is_empty());
        let aborted_seen = logs(&[(0, rid(1, 0)), (1, rid(1, 1)), (2, rid(1, 2))]);
        let v = check_transactions(&h, &aborted_seen, &FinalLogs::new(), &none);
        assert!(v.iter().any(|v| v.invariant == "aborted read (G1a)"), "{v:?}");
        let torn = logs(&[(0, rid(1, 0))]);
        let v = check_transactions(&h, &torn, &FinalLogs::new(), &none);
        assert!(v.iter().any(|v| v.invariant == "torn transaction"), "{v:?}");
        // A read before the commit was asked: a marker that landed early.
        h.committed_reads.push((Duration::from_secs(4), p(), 0, rid(1, 0)));
        h.stable_seen(Duration::ZERO, &p(), 10);
        h.stable_seen(Duration::ZERO, &p(), 7);
        let v = check_transactions(&h, &faithful, &FinalLogs::new(), &none);
        assert!(v.iter().any(|v| v.invariant == "read before its transaction committed"), "{v:?}");
        assert!(v.iter().any(|v| v.invariant == "last stable offset went back"), "{v:?}");
    }

    #[test]
    fn consume_transform_produce_is_exactly_once() {
        let h = History::default();
        let input = logs(&[(0, rid(1, 0)), (1, rid(1, 1)), (2, rid(1, 2))]);
        let upto = BTreeMap::from([(p(), 2)]);
        let copies = |records: &[RecordId]| {
            let mut out = FinalLogs::new();
            out.insert(("t-copy".to_string(), 0), records.iter().enumerate().map(|(i, r)| (i as i64, Some(*r))).collect());
            out
        };
        assert!(check_transactions(&h, &input, &copies(&[rid(1, 0), rid(1, 1)]), &upto).is_empty());
        let twice = check_transactions(&h, &input, &copies(&[rid(1, 0), rid(1, 1), rid(1, 1)]), &upto);
        assert!(twice.iter().any(|v| v.detail.contains("copied 2 times")), "{twice:?}");
        let lost = check_transactions(&h, &input, &copies(&[rid(1, 0)]), &upto);
        assert!(lost.iter().any(|v| v.detail.contains("copied 0 times")), "{lost:?}");
        let beyond = check_transactions(&h, &input, &copies(&[rid(1, 0), rid(1, 1), rid(1, 2)]), &upto);
        assert!(beyond.iter().any(|v| v.detail.contains("not a visible input record")), "{beyond:?}");
    }
}
