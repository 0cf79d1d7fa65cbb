//! A transactional id's state and the rules that move it (Kafka's
//! `TransactionMetadata` and `TransactionCoordinator`, version 1 of the
//! transaction protocol): pure functions from a state and a request to the
//! next state or a Kafka error code. The coordinator actor persists each new
//! state in `__transaction_state` before it answers, so the log and the
//! answer never disagree.

use std::collections::BTreeSet;

use kafka_protocol::ResponseError as E;
use serde::{Deserialize, Serialize};

/// Where a transaction is (Kafka's `TransactionState`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Status {
    /// No transaction since the producer id was handed out.
    Empty,
    Ongoing,
    /// EndTxn was accepted: markers are being written.
    PrepareCommit,
    PrepareAbort,
    CompleteCommit,
    CompleteAbort,
}

impl Status {
    pub fn name(self) -> &'static str {
        match self {
            Status::Empty => "Empty",
            Status::Ongoing => "Ongoing",
            Status::PrepareCommit => "PrepareCommit",
            Status::PrepareAbort => "PrepareAbort",
            Status::CompleteCommit => "CompleteCommit",
            Status::CompleteAbort => "CompleteAbort",
        }
    }

    fn preparing(self) -> bool {
        matches!(self, Status::PrepareCommit | Status::PrepareAbort)
    }
}

/// One transactional id's state, as stored (a versioned `StoredTxn`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnMeta {
    pub producer_id: i64,
    pub producer_epoch: i16,
    /// The epoch before the last bump (-1: none), so that a retried
    /// InitProducerId whose answer was lost is answered again, not fenced.
    pub last_producer_epoch: i16,
    pub timeout_ms: i32,
    pub status: Status,
    /// The partitions the open transaction wrote to (or may write to).
    pub partitions: BTreeSet<(String, i32)>,
    /// The consumer groups whose offsets it commits.
    pub groups: BTreeSet<String>,
    /// When the open transaction began (its first AddPartitions/AddOffsets).
    pub started_ms: i64,
    pub updated_ms: i64,
}

tributary_actors::stored_v1! {
    /// The format versions of a transactional id's state in `__transaction_state`.
    pub enum StoredTxn(TxnMeta) = "transaction state";
}

/// Partitions and groups one transaction may name: its state is one record of
/// `__transaction_state`, which must stay well under a batch's size limit.
pub const MAX_PARTITIONS: usize = 10_000;
pub const MAX_GROUPS: usize = 1_000;

/// Epochs go up to here; the next bump takes a new producer id (KIP-360).
const MAX_EPOCH: i16 = i16::MAX - 1;

/// What InitProducerId does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Init {
    /// Persist this state and answer with its id and epoch.
    Ready(TxnMeta),
    /// The producer's open transaction is aborted first (persist, write the
    /// markers); the client retries on CONCURRENT_TRANSACTIONS meanwhile.
    AbortFirst(TxnMeta),
}

/// InitProducerId for a transactional id: a new id, or the next epoch of its
/// id, fencing any older producer of it. `expected` is the id and epoch a
/// producer that knows them sends (KIP-360, v3+), `(-1, -1)` otherwise.
pub fn init(
    meta: Option<&TxnMeta>,
    expected: (i64, i16),
    timeout_ms: i32,
    now_ms: i64,
    new_producer_id: impl FnOnce() -> Result<i64, i16>,
) -> Result<Init, i16> {
    let Some(meta) = meta else {
        return Ok(Init::Ready(TxnMeta {
            producer_id: new_producer_id()?,
            producer_epoch: 0,
            last_producer_epoch: -1,
            timeout_ms,
            status: Status::Empty,
            partitions: BTreeSet::new(),
            groups: BTreeSet::new(),
            started_ms: -1,
            updated_ms: now_ms,
        }));
    };
    if meta.status.preparing() {
        return Err(E::ConcurrentTransactions.code());
    }
    let retried = expected.0 == meta.producer_id && expected.1 >= 0 && expected.1 == meta.last_producer_epoch;
    if retried && meta.status != Status::Ongoing {
        return Ok(Init::Ready(TxnMeta { timeout_ms, ..meta.clone() }));
    }
    if expected.0 >= 0 && (expected.0 != meta.producer_id || expected.1 != meta.producer_epoch) {
        // A producer that is not the latest of this id asks to go on.
        return Err(E::ProducerFenced.code());
    }
    let bumped = bump(meta, now_ms, new_producer_id)?;
    if meta.status == Status::Ongoing {
        let mut aborting = bumped;
        aborting.status = Status::PrepareAbort;
        return Ok(Init::AbortFirst(aborting));
    }
    Ok(Init::Ready(TxnMeta { timeout_ms, status: Status::Empty, ..bumped }))
}

/// The next epoch, or a new producer id once the epochs run out.
fn bump(meta: &TxnMeta, now_ms: i64, new_producer_id: impl FnOnce() -> Result<i64, i16>) -> Result<TxnMeta, i16> {
    let mut next = meta.clone();
    if meta.producer_epoch >= MAX_EPOCH {
        next.producer_id = new_producer_id()?;
        next.producer_epoch = 0;
        next.last_producer_epoch = -1;
    } else {
        next.last_producer_epoch = meta.producer_epoch;
        next.producer_epoch += 1;
    }
    next.updated_ms = now_ms;
    Ok(next)
}

/// Checks that a request comes from the current producer of the id.
fn current(meta: Option<&TxnMeta>, producer_id: i64, epoch: i16) -> Result<&TxnMeta, i16> {
    let meta = meta.ok_or(E::InvalidProducerIdMapping.code())?;
    if meta.producer_id != producer_id {
        return Err(E::InvalidProducerIdMapping.code());
    }
    if epoch != meta.producer_epoch {
        return Err(E::ProducerFenced.code());
    }
    Ok(meta)
}

/// AddPartitionsToTxn / AddOffsetsToTxn: the transaction (begun by its first
/// addition) now includes `partitions` and `groups`. `None`: nothing new.
pub fn add(
    meta: Option<&TxnMeta>,
    producer_id: i64,
    epoch: i16,
    partitions: &[(String, i32)],
    groups: &[String],
    now_ms: i64,
) -> Result<Option<TxnMeta>, i16> {
    let meta = current(meta, producer_id, epoch)?;
    if meta.status.preparing() {
        return Err(E::ConcurrentTransactions.code());
    }
    let known = meta.status == Status::Ongoing
        && partitions.iter().all(|p| meta.partitions.contains(p))
        && groups.iter().all(|g| meta.groups.contains(g));
    if known {
        return Ok(None);
    }
    let mut next = meta.clone();
    if meta.status != Status::Ongoing {
        next.status = Status::Ongoing;
        next.partitions.clear();
        next.groups.clear();
        next.started_ms = now_ms;
    }
    next.partitions.extend(partitions.iter().cloned());
    next.groups.extend(groups.iter().cloned());
    if next.partitions.len() > MAX_PARTITIONS || next.groups.len() > MAX_GROUPS {
        return Err(E::InvalidRequest.code());
    }
    next.updated_ms = now_ms;
    Ok(Some(next))
}

/// KIP-890's check a partition leader makes before a transactional batch
/// opens a transaction there: the partition is in the open transaction.
pub fn verify(meta: Option<&TxnMeta>, producer_id: i64, epoch: i16, partition: &(String, i32)) -> Result<(), i16> {
    let meta = current(meta, producer_id, epoch)?;
    if meta.status == Status::Ongoing && meta.partitions.contains(partition) {
        Ok(())
    } else {
        Err(E::InvalidTxnState.code())
    }
}

/// What EndTxn does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// Persist this Prepare state, answer, then write the markers.
    Prepare(TxnMeta),
    /// A retry of an EndTxn that already completed: answer success.
    Done,
}

pub fn end(meta: Option<&TxnMeta>, producer_id: i64, epoch: i16, commit: bool, now_ms: i64) -> Result<End, i16> {
    let meta = current(meta, producer_id, epoch)?;
    match (meta.status, commit) {
        (Status::Ongoing, _) => {
            let mut next = meta.clone();
            next.status = if commit { Status::PrepareCommit } else { Status::PrepareAbort };
            next.updated_ms = now_ms;
            Ok(End::Prepare(next))
        }
        (Status::CompleteCommit, true) | (Status::CompleteAbort, false) => Ok(End::Done),
        (Status::PrepareCommit, true) | (Status::PrepareAbort, false) => Err(E::ConcurrentTransactions.code()),
        _ => Err(E::InvalidTxnState.code()),
    }
}

/// The coordinator's abort of a transaction open past its timeout: with the
/// epoch bumped, so the producer that went quiet is fenced.
pub fn expire(meta: &TxnMeta, now_ms: i64, new_producer_id: impl FnOnce() -> Result<i64, i16>) -> Option<TxnMeta> {
    let overdue = meta.status == Status::Ongoing && now_ms - meta.started_ms > i64::from(meta.timeout_ms);
    if !overdue {
        return None;
    }
    // Out of epochs and ids: abort at the same epoch rather than leave it hanging.
    let mut next = bump(meta, now_ms, new_producer_id).unwrap_or_else(|_| meta.clone());
    next.status = Status::PrepareAbort;
    next.updated_ms = now_ms;
    Some(next)
}

/// The state once every marker of a Prepare state is written.
pub fn complete(meta: &TxnMeta, now_ms: i64) -> TxnMeta {
    assert!(meta.status.preparing(), "only a prepared transaction completes");
    let mut next = meta.clone();
    next.status = if meta.status == Status::PrepareCommit { Status::CompleteCommit } else { Status::CompleteAbort };
    next.partitions.clear();
    next.groups.clear();
    next.started_ms = -1;
    next.updated_ms = now_ms;
    next
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tp(t: &str, p: i32) -> (String, i32) {
        (t.to_string(), p)
    }

    #[test]
    fn a_transaction_goes_from_init_through_commit_and_fences_older_producers() {
        let Ok(Init::Ready(meta)) = init(None, (-1, -1), 60_000, 1, || Ok(7)) else { panic!("a new id") };
        assert_eq!((meta.producer_id, meta.producer_epoch, meta.status), (7, 0, Status::Empty));
        assert_eq!(end(Some(&meta), 7, 0, true, 2), Err(E::InvalidTxnState.code()), "nothing to end");
        let meta = add(Some(&meta), 7, 0, &[tp("a", 0)], &[], 3).unwrap().unwrap();
        assert_eq!((meta.status, meta.started_ms), (Status::Ongoing, 3));
        assert_eq!(add(Some(&meta), 7, 0, &[tp("a", 0)], &[], 4), Ok(None), "already in");
        assert_eq!(verify(Some(&meta), 7, 0, &tp("a", 0)), Ok(()));
        assert_eq!(verify(Some(&meta), 7, 0, &tp("a", 1)), Err(E::InvalidTxnState.code()));
        assert_eq!(add(Some(&meta), 8, 0, &[tp("a", 1)], &[], 4), Err(E::InvalidProducerIdMapping.code()));
        let End::Prepare(prepared) = end(Some(&meta), 7, 0, true, 5).unwrap() else { panic!("prepares") };
        assert_eq!(prepared.status, Status::PrepareCommit);
        assert_eq!(add(Some(&prepared), 7, 0, &[tp("a", 0)], &[], 6), Err(E::ConcurrentTransactions.code()));
        assert_eq!(init(Some(&prepared), (-1, -1), 1, 6, || Ok(9)), Err(E::ConcurrentTransactions.code()));
        let done = complete(&prepared, 7);
        assert!(done.partitions.is_empty());
        assert_eq!(end(Some(&done), 7, 0, true, 8), Ok(End::Done), "a retried commit");
        assert_eq!(end(Some(&done), 7, 0, false, 8), Err(E::InvalidTxnState.code()));
        let Ok(Init::Ready(next)) = init(Some(&done), (-1, -1), 60_000, 9, || Ok(9)) else { panic!("bumps") };
        assert_eq!((next.producer_id, next.producer_epoch), (7, 1));
        assert_eq!(add(Some(&next), 7, 0, &[tp("a", 0)], &[], 10), Err(E::ProducerFenced.code()), "the zombie");
        let Ok(Init::Ready(again)) = init(Some(&next), (7, 0), 60_000, 10, || Ok(9)) else { panic!("a retry") };
        assert_eq!((again.producer_id, again.producer_epoch), (7, 1), "a retried bump is answered, not bumped again");
        assert_eq!(init(Some(&next), (7, 5), 1, 10, || Ok(9)), Err(E::ProducerFenced.code()), "KIP-360 stale");
    }

    #[test]
    fn an_open_transaction_is_aborted_on_init_and_on_timeout_and_epochs_roll_over() {
        let mut meta = TxnMeta {
            producer_id: 7,
            producer_epoch: MAX_EPOCH,
            last_producer_epoch: -1,
            timeout_ms: 100,
            status: Status::Empty,
            partitions: BTreeSet::new(),
            groups: BTreeSet::new(),
            started_ms: -1,
            updated_ms: 0,
        };
        meta = add(Some(&meta), 7, MAX_EPOCH, &[tp("a", 0)], &["g".into()], 1_000).unwrap().unwrap();
        assert_eq!(expire(&meta, 1_050, || Ok(8)), None, "within its timeout");
        let aborting = expire(&meta, 1_101, || Ok(8)).unwrap();
        assert_eq!((aborting.status, aborting.producer_id, aborting.producer_epoch), (Status::PrepareAbort, 8, 0));
        assert_eq!(aborting.partitions, meta.partitions, "the markers go where the transaction wrote");
        let Ok(Init::AbortFirst(fenced)) = init(Some(&meta), (-1, -1), 100, 1_050, || Ok(9)) else { panic!() };
        assert_eq!(fenced.status, Status::PrepareAbort);
    }
}
