//! Idempotent-producer bookkeeping for one partition (Kafka's rules, KIP-98):
//! per producer id, the current epoch and the sequence ranges of the last five
//! batches with their offsets. A retried batch that matches one of them is a
//! duplicate and gets its original offsets; any other gap is refused.
//!
//! Transactions add, per producer, the first offset of its open transaction
//! here (which holds the last stable offset back) and the coordinator epoch
//! of the last marker (a marker from an older coordinator is refused). A
//! transactional batch may open a transaction only once the coordinator has
//! confirmed this partition is in it (KIP-890: `verified`); a late batch of a
//! finished transaction is refused instead of opening one nobody will end.
//!
//! Pure functions over `ProducerState`; `PartitionLog` persists the states in
//! the same LMDB transaction as the batches they describe.

use serde::{Deserialize, Serialize};

/// Batches remembered per producer: clients keep at most 5 requests in flight.
pub const BATCHES_KEPT: usize = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeqEntry {
    pub first_seq: i32,
    pub last_seq: i32,
    pub base_offset: i64,
    pub last_offset: i64,
}

/// Format version 1 of `ProducerState` (before transactions); frozen.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProducerStateV1 {
    pub epoch: i16,
    pub batches: Vec<SeqEntry>,
    pub last_append_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProducerState {
    pub epoch: i16,
    /// Oldest first, at most `BATCHES_KEPT`.
    pub batches: Vec<SeqEntry>,
    /// Wall-clock time of the last append, for expiry (`producer.id.expiration.ms`).
    pub last_append_ms: i64,
    /// The first offset of this producer's open transaction in this partition.
    pub txn_first_offset: Option<i64>,
    /// The coordinator epoch of the last transaction marker written (-1: none).
    pub coordinator_epoch: i32,
    /// The offset of the last transaction marker written, for truncation.
    pub last_marker_offset: Option<i64>,
}

impl Default for ProducerState {
    fn default() -> Self {
        ProducerState {
            epoch: 0,
            batches: Vec::new(),
            last_append_ms: 0,
            txn_first_offset: None,
            coordinator_epoch: -1,
            last_marker_offset: None,
        }
    }
}

impl From<ProducerStateV1> for ProducerState {
    fn from(v1: ProducerStateV1) -> Self {
        ProducerState { epoch: v1.epoch, batches: v1.batches, last_append_ms: v1.last_append_ms, ..Default::default() }
    }
}

impl ProducerState {
    /// The last offset this producer wrote here (a batch or a marker).
    pub fn last_offset(&self) -> Option<i64> {
        self.batches.last().map(|b| b.last_offset).max(self.last_marker_offset)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqCheck {
    Append,
    Duplicate(SeqEntry),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SeqError {
    OutOfOrder { producer_id: i64, expected: i32, got: i32 },
    Fenced { producer_id: i64, current: i16, got: i16 },
    /// A transactional batch for a transaction this partition is not (or no
    /// longer) part of, or a plain batch while the producer's transaction is open.
    NotInTransaction { producer_id: i64 },
    /// A marker from a coordinator older than the last one.
    CoordinatorFenced { producer_id: i64, current: i32, got: i32 },
}

impl SeqError {
    pub fn error_code(&self) -> i16 {
        use kafka_protocol::ResponseError as E;
        match self {
            SeqError::OutOfOrder { .. } => E::OutOfOrderSequenceNumber.code(),
            SeqError::Fenced { .. } => E::InvalidProducerEpoch.code(),
            SeqError::NotInTransaction { .. } => E::InvalidTxnState.code(),
            SeqError::CoordinatorFenced { .. } => E::TransactionCoordinatorFenced.code(),
        }
    }
}

impl std::fmt::Display for SeqError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SeqError::OutOfOrder { producer_id, expected, got } => {
                write!(f, "producer {producer_id}: sequence {got} out of order, expected {expected}")
            }
            SeqError::Fenced { producer_id, current, got } => {
                write!(f, "producer {producer_id}: epoch {got} is fenced by epoch {current}")
            }
            SeqError::NotInTransaction { producer_id } => {
                write!(f, "producer {producer_id}: batch is not part of an open transaction on this partition")
            }
            SeqError::CoordinatorFenced { producer_id, current, got } => {
                write!(f, "producer {producer_id}: marker from coordinator epoch {got}, older than {current}")
            }
        }
    }
}

/// The sequence after `seq`: sequences wrap from i32::MAX to 0.
pub fn next_seq(seq: i32) -> i32 {
    if seq == i32::MAX {
        0
    } else {
        seq + 1
    }
}

/// Last sequence of a batch starting at `first_seq` with `count` records.
pub fn last_seq(first_seq: i32, count: i64) -> i32 {
    let span = (count - 1).clamp(0, i32::MAX as i64) as i32;
    if first_seq > i32::MAX - span {
        span - (i32::MAX - first_seq) - 1
    } else {
        first_seq + span
    }
}

/// Decides what to do with a batch from `producer_id` at `epoch` covering `first..=last`.
pub fn check(
    state: Option<&ProducerState>,
    producer_id: i64,
    epoch: i16,
    first: i32,
    last: i32,
) -> Result<SeqCheck, SeqError> {
    let Some(state) = state else {
        // A producer this partition has not seen must start at sequence 0.
        return if first == 0 {
            Ok(SeqCheck::Append)
        } else {
            Err(SeqError::OutOfOrder { producer_id, expected: 0, got: first })
        };
    };
    if epoch < state.epoch {
        return Err(SeqError::Fenced { producer_id, current: state.epoch, got: epoch });
    }
    if epoch > state.epoch {
        return if first == 0 {
            Ok(SeqCheck::Append)
        } else {
            Err(SeqError::OutOfOrder { producer_id, expected: 0, got: first })
        };
    }
    if let Some(dup) = state.batches.iter().find(|b| b.first_seq == first && b.last_seq == last) {
        return Ok(SeqCheck::Duplicate(*dup));
    }
    let expected = state.batches.last().map_or(0, |b| next_seq(b.last_seq));
    if first == expected {
        Ok(SeqCheck::Append)
    } else {
        Err(SeqError::OutOfOrder { producer_id, expected, got: first })
    }
}

/// Records an appended batch, starting over on a new epoch.
pub fn record(state: &mut ProducerState, epoch: i16, entry: SeqEntry) {
    if epoch != state.epoch {
        state.epoch = epoch;
        state.batches.clear();
    }
    state.batches.push(entry);
    if state.batches.len() > BATCHES_KEPT {
        state.batches.remove(0);
    }
    assert!(state.batches.len() <= BATCHES_KEPT, "at most {BATCHES_KEPT} batches per producer");
}

/// Whether a data batch may be written, as far as transactions go: a
/// transactional batch continues the producer's open transaction, or opens one
/// if `verified`; a plain batch may not interleave with an open transaction.
pub fn check_txn(
    state: Option<&ProducerState>,
    producer_id: i64,
    epoch: i16,
    transactional: bool,
    verified: bool,
) -> Result<(), SeqError> {
    let open = state.and_then(|s| s.txn_first_offset.map(|_| s.epoch));
    match (transactional, open) {
        (true, Some(open_epoch)) if open_epoch == epoch => Ok(()),
        (true, None) if verified => Ok(()),
        (false, None) => Ok(()),
        _ => Err(SeqError::NotInTransaction { producer_id }),
    }
}

/// Records that a transactional batch starting at `base_offset` was written.
pub fn record_txn(state: &mut ProducerState, base_offset: i64) {
    state.txn_first_offset.get_or_insert(base_offset);
}

/// Decides a transaction marker from `epoch` and `coordinator_epoch`.
pub fn check_marker(
    state: Option<&ProducerState>,
    producer_id: i64,
    epoch: i16,
    coordinator_epoch: i32,
) -> Result<(), SeqError> {
    let Some(state) = state else { return Ok(()) };
    if epoch < state.epoch {
        return Err(SeqError::Fenced { producer_id, current: state.epoch, got: epoch });
    }
    if coordinator_epoch < state.coordinator_epoch {
        return Err(SeqError::CoordinatorFenced { producer_id, current: state.coordinator_epoch, got: coordinator_epoch });
    }
    Ok(())
}

/// Applies a marker written at `offset`; answers the first offset of the
/// transaction it ends, if one was open. A newer epoch starts the sequences
/// over, as a data batch of that epoch would.
pub fn apply_marker(
    state: &mut ProducerState,
    epoch: i16,
    coordinator_epoch: i32,
    offset: i64,
) -> Option<i64> {
    if epoch != state.epoch {
        state.epoch = epoch;
        state.batches.clear();
    }
    state.coordinator_epoch = state.coordinator_epoch.max(coordinator_epoch);
    state.last_marker_offset = Some(offset);
    state.txn_first_offset.take()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(first: i32, last: i32, base: i64) -> SeqEntry {
        SeqEntry { first_seq: first, last_seq: last, base_offset: base, last_offset: base + (last - first) as i64 }
    }

    #[test]
    fn in_order_duplicate_gap_and_fencing() {
        assert_eq!(check(None, 7, 0, 0, 4), Ok(SeqCheck::Append));
        assert!(matches!(check(None, 7, 0, 5, 9), Err(SeqError::OutOfOrder { expected: 0, .. })));
        let mut s = ProducerState::default();
        record(&mut s, 0, entry(0, 4, 100));
        record(&mut s, 0, entry(5, 9, 105));
        assert_eq!(check(Some(&s), 7, 0, 10, 14), Ok(SeqCheck::Append));
        assert_eq!(check(Some(&s), 7, 0, 5, 9), Ok(SeqCheck::Duplicate(entry(5, 9, 105))));
        assert!(matches!(check(Some(&s), 7, 0, 12, 14), Err(SeqError::OutOfOrder { expected: 10, got: 12, .. })));
        assert_eq!(check(Some(&s), 7, 1, 0, 3), Ok(SeqCheck::Append));
        assert!(matches!(check(Some(&s), 7, 1, 10, 14), Err(SeqError::OutOfOrder { .. })));
        record(&mut s, 1, entry(0, 3, 110));
        assert!(matches!(check(Some(&s), 7, 0, 4, 4), Err(SeqError::Fenced { current: 1, got: 0, .. })));
        assert_eq!(s.batches.len(), 1, "a new epoch starts over");
    }

    #[test]
    fn keeps_five_batches_and_wraps_sequences() {
        let mut s = ProducerState::default();
        assert_eq!(s.coordinator_epoch, -1);
        for i in 0..8 {
            record(&mut s, 0, entry(i * 10, i * 10 + 9, i as i64 * 10));
        }
        assert_eq!(s.batches.len(), BATCHES_KEPT);
        assert!(matches!(check(Some(&s), 1, 0, 0, 9), Err(SeqError::OutOfOrder { .. })), "forgotten batch");
        assert_eq!(last_seq(i32::MAX - 1, 4), 1);
        assert_eq!(next_seq(i32::MAX), 0);
        assert_eq!(last_seq(5, 1), 5);
    }

    #[test]
    fn transactions_open_only_when_verified_and_end_with_a_marker() {
        let mut s = ProducerState::default();
        assert!(matches!(check_txn(Some(&s), 7, 0, true, false), Err(SeqError::NotInTransaction { .. })));
        assert_eq!(check_txn(Some(&s), 7, 0, true, true), Ok(()));
        record_txn(&mut s, 10);
        record_txn(&mut s, 12);
        assert_eq!(s.txn_first_offset, Some(10), "the first batch opens it");
        assert_eq!(check_txn(Some(&s), 7, 0, true, false), Ok(()), "an open transaction continues");
        assert!(check_txn(Some(&s), 7, 0, false, false).is_err(), "no plain batch inside a transaction");
        assert!(check_txn(Some(&s), 7, 1, true, false).is_err(), "another epoch is not this transaction");
        assert_eq!(check_marker(Some(&s), 7, 0, 3), Ok(()));
        assert_eq!(apply_marker(&mut s, 0, 3, 15), Some(10), "the marker names the first offset it ends");
        assert_eq!(s.txn_first_offset, None);
        assert!(check_txn(Some(&s), 7, 0, true, false).is_err(), "a late batch cannot reopen it");
        assert!(matches!(check_marker(Some(&s), 7, 0, 2), Err(SeqError::CoordinatorFenced { .. })));
        assert_eq!(apply_marker(&mut s, 1, 3, 16), None);
        assert!(matches!(check_marker(Some(&s), 7, 0, 3), Err(SeqError::Fenced { .. })));
        assert_eq!(s.last_offset(), Some(16));
    }
}
