//! `PartitionActor`: owns one partition's `PartitionLog` and serialises every
//! write to it.
//!
//! Group commit: `Append` only queues the batches and schedules a `Flush` on
//! the actor's own context. Appends that arrive before the flush runs join
//! it, so concurrent producers share one LMDB write transaction and one fsync.
//!
//! Supervision: storage calls run under `catch_unwind`. A panic fails the
//! appends of that commit (their transaction was aborted, so nothing of them
//! is visible), then stops the actor; its `actix::Supervisor` restarts it,
//! and `started` reopens the log from LMDB. Queued messages stay in the
//! mailbox across the restart. Acknowledged data is committed data, so a
//! restart loses none of it.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::Arc;

use actix::prelude::*;
use tokio::sync::{oneshot, watch};

use crate::config::StorageConfig;
use crate::partition_log::{
    AppendGroup, AppendOutcome, LogError, LogOffsets, PartitionLog, ReadOutcome, MAX_BATCHES_PER_COMMIT,
    MAX_BATCHES_PER_DELETE,
};
use crate::record_batch::ValidatedBatch;
use crate::replication::{
    AppendReplicated, CheckIsr, DescribeRole, FetchPosition, IsrChange, ReplicaRead, ReplicaReadOutcome, ReplicaSet,
    RestartAt, Role, SetRole, TruncateDiverged,
};

/// How often a partition forgets idle producer ids.
const PRODUCER_EXPIRY_CHECK: std::time::Duration = std::time::Duration::from_secs(3600);

/// Messages a partition mailbox holds before senders wait.
const MAILBOX_CAPACITY: usize = 1024;

/// Why a partition request failed. Each maps to one Kafka error code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartitionError {
    /// Restarting after a panic, or closed: retry shortly.
    Unavailable(String),
    Storage(String),
    OffsetOutOfRange {
        requested: i64,
        offsets: LogOffsets,
    },
    /// The partition's topic was deleted.
    Deleted,
    /// An idempotent producer's batch out of sequence, or from a fenced epoch.
    Sequence(crate::producer_state::SeqError),
    /// This replica does not lead the partition (now).
    NotLeader,
    /// acks=-1 with fewer in-sync replicas than `min.insync.replicas`.
    NotEnoughReplicas {
        isr: usize,
        min: i32,
    },
    /// A replica request from an older leader epoch.
    FencedLeaderEpoch {
        current: i32,
        got: i32,
    },
    /// A replica request from a newer leader epoch than this replica knows.
    UnknownLeaderEpoch {
        current: i32,
        got: i32,
    },
    /// The transaction coordinator did not confirm the transaction: its Kafka error code.
    Refused(i16),
}

impl PartitionError {
    pub fn error_code(&self) -> i16 {
        use kafka_protocol::ResponseError as E;
        match self {
            // Clients refresh metadata and retry on this one, which is what a
            // restarting partition needs.
            PartitionError::Unavailable(_) => E::NotLeaderOrFollower.code(),
            PartitionError::Storage(_) => E::KafkaStorageError.code(),
            PartitionError::OffsetOutOfRange { .. } => E::OffsetOutOfRange.code(),
            PartitionError::Deleted => E::UnknownTopicOrPartition.code(),
            PartitionError::Sequence(e) => e.error_code(),
            PartitionError::NotLeader => E::NotLeaderOrFollower.code(),
            PartitionError::NotEnoughReplicas { .. } => E::NotEnoughReplicas.code(),
            PartitionError::FencedLeaderEpoch { .. } => E::FencedLeaderEpoch.code(),
            PartitionError::UnknownLeaderEpoch { .. } => E::UnknownLeaderEpoch.code(),
            PartitionError::Refused(code) => *code,
        }
    }
}

impl std::fmt::Display for PartitionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PartitionError::Unavailable(why) => write!(f, "partition unavailable: {why}"),
            PartitionError::Storage(why) => write!(f, "storage error: {why}"),
            PartitionError::OffsetOutOfRange { requested, offsets } => {
                write!(f, "offset {requested} out of range [{}, {}]", offsets.log_start_offset, offsets.log_end_offset)
            }
            PartitionError::Deleted => write!(f, "partition was deleted"),
            PartitionError::Sequence(e) => write!(f, "{e}"),
            PartitionError::NotLeader => write!(f, "this broker does not lead the partition"),
            PartitionError::NotEnoughReplicas { isr, min } => {
                write!(f, "{isr} in-sync replicas, fewer than min.insync.replicas={min}")
            }
            PartitionError::FencedLeaderEpoch { current, got } => {
                write!(f, "leader epoch {got} is older than the current {current}")
            }
            PartitionError::UnknownLeaderEpoch { current, got } => {
                write!(f, "leader epoch {got} is newer than the known {current}")
            }
            PartitionError::Refused(code) => write!(
                f,
                "the transaction coordinator did not confirm this partition is in the transaction: {:?}",
                kafka_protocol::ResponseError::try_from_code(*code)
            ),
        }
    }
}

impl std::error::Error for PartitionError {}

impl From<LogError> for PartitionError {
    fn from(e: LogError) -> Self {
        match e {
            LogError::OffsetOutOfRange { requested, offsets } => {
                PartitionError::OffsetOutOfRange { requested, offsets }
            }
            other => PartitionError::Storage(other.to_string()),
        }
    }
}

/// Append validated batches; answered once they are committed (and fsynced
/// under `Durability::Fsync`).
#[derive(Message)]
#[rtype(result = "Result<AppendOutcome, PartitionError>")]
pub struct Append {
    pub batches: Vec<ValidatedBatch>,
    /// `Some(now)` for topics with `message.timestamp.type=LogAppendTime`.
    pub log_append_time: Option<i64>,
    /// acks=-1: answered only once every in-sync replica has the batches.
    pub acks_all: bool,
    /// The produce request's transactional id: a transactional batch that
    /// would open a transaction here is first verified with its coordinator.
    pub transactional_id: Option<Arc<str>>,
}

/// Read whole batches starting at the one holding `offset`.
#[derive(Message)]
#[rtype(result = "Result<ReadOutcome, PartitionError>")]
pub struct Read {
    pub offset: i64,
    pub max_bytes: usize,
    pub min_one: bool,
    /// read_committed: stop at the last stable offset and name the aborted
    /// transactions the records hold.
    pub committed: bool,
}

/// Ends `producer_id`'s transaction on this partition with a marker
/// (WriteTxnMarkers); answered once the marker is committed (and, in a
/// cluster, on every in-sync replica).
#[derive(Message, Clone, Copy)]
#[rtype(result = "Result<AppendOutcome, PartitionError>")]
pub struct WriteMarker(pub crate::record_batch::Marker);

/// Asks a transaction coordinator whether `topic`-`partition` is in the
/// producer's open transaction (KIP-890's verification): `Ok` if it is, else
/// the Kafka error code the produce gets.
#[derive(Message, Clone, Debug)]
#[rtype(result = "Result<(), i16>")]
pub struct VerifyTxn {
    pub transactional_id: Arc<str>,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub topic: Arc<str>,
    pub partition: i32,
}

/// Where partitions send `VerifyTxn`: set once by whoever runs the
/// transaction coordinators (the network broker); without it, transactional
/// batches that would open a transaction are refused.
#[derive(Clone, Default)]
pub struct TxnVerifier(Arc<std::sync::OnceLock<Recipient<VerifyTxn>>>);

impl TxnVerifier {
    pub fn set(&self, recipient: Recipient<VerifyTxn>) {
        let _ = self.0.set(recipient);
    }

    fn get(&self) -> Option<&Recipient<VerifyTxn>> {
        self.0.get()
    }
}

impl std::fmt::Debug for TxnVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TxnVerifier({})", if self.0.get().is_some() { "set" } else { "unset" })
    }
}

/// What ListOffsets asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffsetQuery {
    Earliest,
    Latest,
    /// The last stable offset (ListOffsets latest for read_committed).
    LastStable,
    MaxTimestamp,
    AtOrAfter(i64),
}

/// Resolve an offset query: `(offset, timestamp)`, or `None` if no record matches.
#[derive(Message)]
#[rtype(result = "Result<Option<(i64, i64)>, PartitionError>")]
pub struct ListOffset(pub OffsetQuery);

/// Apply the topic's retention now (-1 disables either limit). Deletes in
/// bounded steps, yielding to produce and fetch between them.
#[derive(Message, Clone, Copy)]
#[rtype(result = "()")]
pub struct EnforceRetention {
    pub retention_ms: i64,
    pub retention_bytes: i64,
    /// `Some(delete.retention.ms)` for `cleanup.policy` with `compact`.
    pub compact: Option<i64>,
}

/// Interval durability: fsync what was committed without it. Sent by the
/// registry every `flush_interval_ms` (partition actors keep no timers).
#[derive(Message, Clone, Copy)]
#[rtype(result = "()")]
pub struct SyncLog;

impl Handler<SyncLog> for PartitionActor {
    type Result = ();

    fn handle(&mut self, _: SyncLog, _: &mut Context<Self>) {
        let Some(log) = &self.log else { return };
        let (syncer, topic, partition) = (log.syncer(), self.topic.clone(), self.partition);
        let flush = move || {
            if let Err(e) = syncer.sync() {
                tracing::error!(topic = %topic, partition, error = %e, "flush failed");
            }
        };
        if self.config.storage_threads == 0 {
            // The simulation's single thread: flush in place, deterministically.
            flush();
            return;
        }
        // Off this thread: in place, a second's worth of commits held every
        // append behind one fsync (acks p99 65 ms at 20 MB/s; 25 ms off-thread).
        // At most one flush per partition runs; a tick that finds one skips.
        if self.flushing.swap(true, std::sync::atomic::Ordering::AcqRel) {
            return;
        }
        let flushing = self.flushing.clone();
        tokio::task::spawn_blocking(move || {
            flush();
            flushing.store(false, std::sync::atomic::Ordering::Release);
        });
    }
}

/// DeleteRecords: make `before` (-1: the high watermark) the log start offset.
#[derive(Message)]
#[rtype(result = "Result<i64, PartitionError>")]
pub struct DeleteRecordsBefore(pub i64);

/// The producers this partition remembers (DescribeProducers), leaders only.
#[derive(Message)]
#[rtype(result = "Result<Vec<(i64, crate::producer_state::ProducerState)>, PartitionError>")]
pub struct DescribeProducers;

impl Handler<DescribeProducers> for PartitionActor {
    type Result = Result<Vec<(i64, crate::producer_state::ProducerState)>, PartitionError>;

    fn handle(&mut self, _: DescribeProducers, ctx: &mut Context<Self>) -> Self::Result {
        if matches!(self.role, Role::Follower { .. }) {
            return Err(PartitionError::NotLeader);
        }
        self.guarded(ctx, |log| Ok(log.producers()))
    }
}

/// Bytes of stored batches (DescribeLogDirs).
#[derive(Message)]
#[rtype(result = "Result<u64, PartitionError>")]
pub struct PartitionSize;

impl Handler<PartitionSize> for PartitionActor {
    type Result = Result<u64, PartitionError>;

    fn handle(&mut self, _: PartitionSize, ctx: &mut Context<Self>) -> Self::Result {
        self.guarded(ctx, |log| Ok(log.log_bytes()))
    }
}

/// Close the log and delete its directory (topic deletion).
#[derive(Message)]
#[rtype(result = "Result<(), PartitionError>")]
pub struct Remove;

/// Makes the next storage call panic, to exercise supervision in tests.
#[cfg(feature = "fault-injection")]
#[derive(Message)]
#[rtype(result = "()")]
pub struct InjectPanic;

#[derive(Message)]
#[rtype(result = "()")]
struct Flush;

pub type AppendReply = oneshot::Sender<Result<AppendOutcome, PartitionError>>;

struct PendingAppend {
    batches: Vec<ValidatedBatch>,
    log_append_time: Option<i64>,
    acks_all: bool,
    /// Its coordinator confirmed the transaction includes this partition.
    verified: bool,
    reply: AppendReply,
}

/// A producer's appends waiting for its coordinator's answer, in order.
struct Verifying {
    /// Which question this is, so an answer to an earlier one (asked before a
    /// demotion that failed its appends) is not taken for this one's.
    asked: u64,
    epoch: i16,
    parked: Vec<(Append, AppendReply)>,
    /// A marker for the producer was queued meanwhile: the answer is stale.
    stale: bool,
}

/// Producers one partition verifies at once; more are refused (retriable).
const MAX_VERIFYING: usize = 10_000;

/// acks=-1 appends waiting for the high watermark; more are refused.
const MAX_COMMIT_WAITERS: usize = 100_000;

pub struct PartitionActor {
    topic: Arc<str>,
    partition: i32,
    dir: PathBuf,
    config: Arc<StorageConfig>,
    /// Outlives restarts: fetches waiting for data watch it.
    offsets_tx: Arc<watch::Sender<LogOffsets>>,
    log: Option<PartitionLog>,
    /// Interval durability: a flush is running on the blocking pool.
    flushing: Arc<std::sync::atomic::AtomicBool>,
    pending: Vec<PendingAppend>,
    pending_batches: usize,
    flush_scheduled: bool,
    removed: bool,
    /// When idle producer ids were last forgotten (checked from `flush`, at most hourly).
    last_producer_expiry: tokio::time::Instant,
    /// Survives restarts of the actor only through `SetRole`, which the cluster layer repeats.
    role: Role,
    /// The leader's view of its followers (leaders only).
    replica_set: Option<ReplicaSet>,
    /// Records below this are on every in-sync replica (replicated roles only).
    high_watermark: i64,
    /// acks=-1 appends written but not yet below the high watermark, oldest first.
    commit_waiters: std::collections::VecDeque<(AppendOutcome, AppendReply)>,
    /// When a failed append was last logged, and how many failed since (see `append_failed`).
    append_failures: (Option<tokio::time::Instant>, u64),
    /// Producers whose transactional appends wait for verification.
    verifying: std::collections::HashMap<i64, Verifying>,
    /// Verifications asked so far (`Verifying::asked`).
    verifications: u64,
    #[cfg(feature = "fault-injection")]
    panic_next: bool,
}

/// Appends that failed on storage (a full disk, a map that cannot grow), over
/// every partition of the process, for the broker's metrics.
pub static STORAGE_ERRORS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
/// A partition logs its failed appends at most this often (with the count since).
const APPEND_FAILURE_LOG_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

impl PartitionActor {
    pub fn new(
        topic: Arc<str>,
        partition: i32,
        config: Arc<StorageConfig>,
        offsets_tx: Arc<watch::Sender<LogOffsets>>,
    ) -> PartitionActor {
        let dir = partition_dir(&config, &topic, partition);
        let replicated = config.replicated;
        PartitionActor {
            topic,
            partition,
            dir,
            config,
            offsets_tx,
            log: None,
            flushing: Default::default(),
            pending: Vec::new(),
            pending_batches: 0,
            flush_scheduled: false,
            removed: false,
            last_producer_expiry: tokio::time::Instant::now(),
            role: if replicated { Role::Follower { leader: None, epoch: -1 } } else { Role::Standalone },
            replica_set: None,
            high_watermark: 0,
            commit_waiters: Default::default(),
            append_failures: (None, 0),
            verifying: Default::default(),
            verifications: 0,
            #[cfg(feature = "fault-injection")]
            panic_next: false,
        }
    }

    /// What readers may see: everything committed on one broker, the high watermark in a cluster.
    fn visible_end(&self) -> i64 {
        let end = self.log.as_ref().map_or(0, |l| l.offsets().log_end_offset);
        match self.role {
            Role::Standalone => end,
            _ => self.high_watermark.min(end),
        }
    }

    /// What read_committed readers may see: below the visible end and below
    /// the first open transaction.
    fn last_stable(&self) -> i64 {
        let visible = self.visible_end();
        let Some(log) = self.log.as_ref() else { return visible };
        // Retention or DeleteRecords may have removed an open transaction's start.
        let start = log.offsets().log_start_offset;
        log.first_unstable_offset().map_or(visible, |first| first.max(start).min(visible))
    }

    /// Publishes the offsets (waking long-poll fetches) with the visible high
    /// watermark; transactions whose markers it passed become stable.
    fn publish_offsets(&mut self) {
        let visible = self.visible_end();
        if let Some(log) = self.log.as_mut() {
            log.settle(visible);
        }
        if let Some(log) = &self.log {
            let offsets = LogOffsets {
                high_watermark: self.visible_end(),
                leader_epoch: self.role.leading_epoch(),
                last_stable_offset: self.last_stable(),
                epoch_start_offset: self.replica_set.as_ref().map_or(-1, |set| set.lead_start_end),
                ..log.offsets()
            };
            // Only a change wakes the fetches waiting on this watch.
            self.offsets_tx.send_if_modified(|current| {
                let changed = *current != offsets;
                *current = offsets;
                changed
            });
        }
    }

    /// Leader: recompute the high watermark from the ISR, answer the acks=-1
    /// appends it now covers, and publish.
    fn advance_high_watermark(&mut self) {
        if let (Role::Leader(role), Some(set), Some(log)) = (&self.role, &self.replica_set, &self.log) {
            let computed = set.high_watermark(role, log.offsets().log_end_offset);
            self.high_watermark = self.high_watermark.max(computed);
        }
        let visible = self.visible_end();
        while let Some((outcome, _)) = self.commit_waiters.front() {
            if outcome.last_offset >= visible {
                break;
            }
            let (outcome, reply) = self.commit_waiters.pop_front().expect("front exists");
            let _ = reply.send(Ok(outcome));
        }
        self.publish_offsets();
    }

    fn fail_waiters(&mut self, error: PartitionError) {
        for (_, reply) in self.commit_waiters.drain(..) {
            let _ = reply.send(Err(error.clone()));
        }
    }

    /// Leader: propose the ISR it wants, if that differs from the committed one.
    fn propose_isr(&mut self, shrink: bool) {
        let (Role::Leader(role), Some(set), Some(log)) = (&self.role, self.replica_set.as_mut(), &self.log) else {
            return;
        };
        let epoch_start = log.end_offset_for_epoch(role.epoch - 1).1;
        let now = tokio::time::Instant::now();
        if let Some(isr) = set.wanted_isr(role, self.high_watermark, epoch_start, shrink, now) {
            tracing::info!(topic = %self.topic, partition = self.partition, from = ?role.isr, to = ?isr, "proposing ISR change");
            let change = IsrChange {
                topic: self.topic.clone(),
                partition: self.partition,
                leader: role.node_id,
                leader_epoch: role.epoch,
                partition_epoch: role.partition_epoch,
                isr,
            };
            let _ = role.isr_changes.send(change);
        }
    }

    fn open_log(&mut self) {
        match PartitionLog::open(&self.dir, &self.config) {
            Ok(mut log) => {
                log.set_leader_epoch(self.role.epoch());
                self.high_watermark = self.high_watermark.min(log.offsets().log_end_offset);
                self.log = Some(log);
                self.publish_offsets();
            }
            Err(e) => {
                tracing::error!(topic = %self.topic, partition = self.partition, error = %e, "cannot open partition log");
            }
        }
    }

    /// Runs `f` on the log. A panic inside is contained here: the actor stops
    /// and its supervisor restarts it from disk.
    fn guarded<T>(
        &mut self,
        ctx: &mut Context<Self>,
        f: impl FnOnce(&mut PartitionLog) -> Result<T, LogError>,
    ) -> Result<T, PartitionError> {
        if self.removed {
            return Err(PartitionError::Deleted);
        }
        if self.log.is_none() {
            self.open_log();
        }
        #[cfg(feature = "fault-injection")]
        let inject = std::mem::take(&mut self.panic_next);
        let Some(log) = self.log.as_mut() else {
            return Err(PartitionError::Unavailable("partition log could not be opened".into()));
        };
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            #[cfg(feature = "fault-injection")]
            if inject {
                panic!("injected fault in partition actor");
            }
            f(log)
        }));
        match outcome {
            Ok(result) => result.map_err(PartitionError::from),
            Err(_) => {
                tracing::error!(topic = %self.topic, partition = self.partition, "partition actor panicked; restarting");
                let error = PartitionError::Unavailable("partition restarting after a panic".into());
                self.fail_pending(&error);
                self.log = None;
                ctx.stop();
                Err(error)
            }
        }
    }

    /// Producer state only grows on appends, so appends are where it is pruned.
    fn expire_producers_hourly(&mut self) {
        if self.last_producer_expiry.elapsed() < PRODUCER_EXPIRY_CHECK {
            return;
        }
        self.last_producer_expiry = tokio::time::Instant::now();
        let (expiration, max) = (self.config.producer_id_expiration_ms, self.config.max_producers_per_partition);
        if let Some(log) = self.log.as_mut() {
            if let Err(e) = log.expire_producers(crate::now_ms(), expiration, max) {
                tracing::error!(topic = %self.topic, partition = self.partition, error = %e, "producer expiry failed");
            }
        }
    }

    /// Answers every queued append with `error` (their batches were never written).
    fn fail_pending(&mut self, error: &PartitionError) {
        for append in self.pending.drain(..) {
            let _ = append.reply.send(Err(error.clone()));
        }
        self.pending_batches = 0;
        for (_, verifying) in self.verifying.drain() {
            for (_, reply) in verifying.parked {
                let _ = reply.send(Err(error.clone()));
            }
        }
    }

    fn flush(&mut self, ctx: &mut Context<Self>) {
        self.flush_scheduled = false;
        if matches!(self.role, Role::Follower { .. }) {
            // Demoted since these were queued: a follower writes only what its leader sends.
            self.fail_pending(&PartitionError::NotLeader);
            return;
        }
        let pending = std::mem::take(&mut self.pending);
        self.pending_batches = 0;
        if pending.is_empty() {
            return;
        }
        let groups: Vec<AppendGroup> = pending
            .iter()
            .map(|p| AppendGroup { batches: &p.batches, log_append_time: p.log_append_time, verified: p.verified })
            .collect();
        let result = self.guarded(ctx, |log| log.append_groups(&groups));
        self.stall_after_write(ctx);
        match result {
            Ok(outcomes) => {
                assert_eq!(outcomes.len(), pending.len(), "one outcome per append");
                self.expire_producers_hourly();
                let replicated = matches!(self.role, Role::Leader(_));
                for (append, outcome) in pending.into_iter().zip(outcomes) {
                    match outcome {
                        Ok(outcome) if append.acks_all && replicated => {
                            if self.commit_waiters.len() >= MAX_COMMIT_WAITERS {
                                let error =
                                    PartitionError::Unavailable("too many appends waiting for replication".into());
                                let _ = append.reply.send(Err(error));
                            } else {
                                self.commit_waiters.push_back((outcome, append.reply));
                            }
                        }
                        other => {
                            let _ = append.reply.send(other.map_err(PartitionError::Sequence));
                        }
                    }
                }
                self.advance_high_watermark();
            }
            Err(e) => {
                self.append_failed(&e, pending.len() as u64);
                for append in pending {
                    let _ = append.reply.send(Err(e.clone()));
                }
            }
        }
    }

    /// Counts and logs (at most every `APPEND_FAILURE_LOG_EVERY`) appends
    /// that failed: clients such as librdkafka only report a timeout, so the
    /// broker's log and metrics are where a full disk shows.
    fn append_failed(&mut self, error: &PartitionError, appends: u64) {
        if !matches!(error, PartitionError::Storage(_)) {
            return;
        }
        STORAGE_ERRORS.fetch_add(appends, std::sync::atomic::Ordering::Relaxed);
        let (last, since) = &mut self.append_failures;
        *since += appends;
        let now = tokio::time::Instant::now();
        if last.is_some_and(|at| now.duration_since(at) < APPEND_FAILURE_LOG_EVERY) {
            return;
        }
        tracing::error!(topic = %self.topic, partition = self.partition, failed_appends = *since, error = %error,
            "appends failed on storage");
        *last = Some(now);
        *since = 0;
    }
}

/// `<data_dir>/<topic>-<partition>`, as Kafka lays out its log directories.
pub fn partition_dir(config: &StorageConfig, topic: &str, partition: i32) -> PathBuf {
    config.data_dir.join(format!("{topic}-{partition}"))
}

impl Actor for PartitionActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(MAILBOX_CAPACITY);
        if self.removed {
            return;
        }
        self.open_log();
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        // Interval durability: a clean stop still flushes what was committed.
        if let Some(log) = &self.log {
            let _ = log.sync();
        }
    }
}

impl Supervised for PartitionActor {
    fn restarting(&mut self, _: &mut Context<Self>) {
        tracing::warn!(topic = %self.topic, partition = self.partition, "partition actor restarting");
        self.log = None;
        self.fail_waiters(PartitionError::Unavailable("partition restarted".into()));
        self.flush_scheduled = false;
        assert!(self.pending.is_empty(), "pending appends are answered before a stop");
    }
}

/// An `Append` answered through `reply`. Sent with `do_send`, it is queued
/// the moment it is sent, so appends sent in order are applied in order even
/// when the sender does not wait for each answer (pipelined produce requests).
#[derive(Message)]
#[rtype(result = "()")]
pub struct AppendWithReply {
    pub append: Append,
    pub reply: AppendReply,
}

impl Handler<AppendWithReply> for PartitionActor {
    type Result = ();

    fn handle(&mut self, msg: AppendWithReply, ctx: &mut Context<Self>) {
        self.enqueue_append(msg.append, msg.reply, ctx);
    }
}

impl Handler<Append> for PartitionActor {
    type Result = ResponseFuture<Result<AppendOutcome, PartitionError>>;

    fn handle(&mut self, msg: Append, ctx: &mut Context<Self>) -> Self::Result {
        let (reply, answer) = oneshot::channel();
        self.enqueue_append(msg, reply, ctx);
        Box::pin(async move {
            answer
                .await
                .unwrap_or_else(|_| Err(PartitionError::Unavailable("partition restarted before commit".into())))
        })
    }
}

impl PartitionActor {
    /// Queues `msg` for the next group commit; `reply` gets its outcome.
    /// A transactional append that would open a transaction here waits for
    /// its coordinator's confirmation first, and so does every later append
    /// of the same producer, so their order is kept.
    fn enqueue_append(&mut self, msg: Append, reply: AppendReply, ctx: &mut Context<Self>) {
        self.enqueue_checked(msg, false, reply, ctx);
    }

    fn enqueue_checked(&mut self, msg: Append, verified: bool, reply: AppendReply, ctx: &mut Context<Self>) {
        if self.removed {
            let _ = reply.send(Err(PartitionError::Deleted));
            return;
        }
        if !verified {
            let Some(first) = msg.batches.first().map(|b| b.header) else {
                let _ = reply.send(Err(PartitionError::Unavailable("an append without batches".into())));
                return;
            };
            let (producer, epoch) = (first.producer_id, first.producer_epoch);
            // One batch per transactional append (as Kafka asks of produce v3+): a second
            // one, of another producer, would open a transaction nobody verified.
            if msg.batches.len() > 1 && msg.batches.iter().any(|b| b.header.is_transactional()) {
                let _ = reply.send(Err(PartitionError::Refused(kafka_protocol::ResponseError::InvalidRecord.code())));
                return;
            }
            if let Some(verifying) = self.verifying.get_mut(&producer) {
                verifying.parked.push((msg, reply));
                return;
            }
            let open = self.log.as_ref().is_some_and(|l| l.in_transaction(producer, epoch));
            if first.is_transactional() && !first.is_control() && !open {
                if self.config.verify_transactions {
                    self.verify(msg, reply, ctx);
                } else {
                    self.enqueue_checked(msg, true, reply, ctx);
                }
                return;
            }
        }
        // Keep one transaction bounded: commit what is queued before it grows past the limit.
        if self.pending_batches + msg.batches.len() > MAX_BATCHES_PER_COMMIT
            || self.pending.len() >= self.config.max_pending_appends
        {
            self.flush(ctx);
        }
        match &self.role {
            Role::Standalone => {}
            Role::Follower { .. } => {
                let _ = reply.send(Err(PartitionError::NotLeader));
                return;
            }
            Role::Leader(role) => {
                if msg.acks_all && (role.isr.len() as i32) < role.min_insync_replicas {
                    let error =
                        PartitionError::NotEnoughReplicas { isr: role.isr.len(), min: role.min_insync_replicas };
                    let _ = reply.send(Err(error));
                    return;
                }
            }
        }
        self.pending_batches += msg.batches.len();
        let acks_all = msg.acks_all;
        self.pending.push(PendingAppend {
            batches: msg.batches,
            log_append_time: msg.log_append_time,
            acks_all,
            verified,
            reply,
        });
        if !self.flush_scheduled {
            self.flush_scheduled = true;
            ctx.notify(Flush);
        }
    }
}

impl PartitionActor {
    /// Parks `msg` and asks the producer's coordinator whether this partition
    /// is in its transaction.
    fn verify(&mut self, msg: Append, reply: AppendReply, ctx: &mut Context<Self>) {
        let header = msg.batches[0].header;
        let (Some(verifier), Some(transactional_id)) = (self.config.txn_verifier.get(), msg.transactional_id.clone())
        else {
            let error = crate::producer_state::SeqError::NotInTransaction { producer_id: header.producer_id };
            let _ = reply.send(Err(PartitionError::Sequence(error)));
            return;
        };
        if self.verifying.len() >= MAX_VERIFYING {
            let _ = reply.send(Err(PartitionError::Unavailable("too many transactions being verified".into())));
            return;
        }
        let ask = VerifyTxn {
            transactional_id,
            producer_id: header.producer_id,
            producer_epoch: header.producer_epoch,
            topic: self.topic.clone(),
            partition: self.partition,
        };
        let producer = header.producer_id;
        self.verifications += 1;
        let asked = self.verifications;
        let verifying = Verifying { asked, epoch: header.producer_epoch, parked: vec![(msg, reply)], stale: false };
        self.verifying.insert(producer, verifying);
        let answer = verifier.send(ask);
        ctx.spawn(actix::fut::wrap_future(answer).map(move |answer, actor: &mut Self, ctx| {
            let answer = answer.unwrap_or(Err(kafka_protocol::ResponseError::NotEnoughReplicas.code()));
            actor.verified(producer, asked, answer, ctx);
        }));
    }

    /// The coordinator answered for `producer`: its parked appends go on, verified, or fail.
    fn verified(&mut self, producer: i64, asked: u64, answer: Result<(), i16>, ctx: &mut Context<Self>) {
        if self.verifying.get(&producer).is_none_or(|v| v.asked != asked) {
            return;
        }
        let Some(verifying) = self.verifying.remove(&producer) else { return };
        let answer = match answer {
            Ok(()) if verifying.stale => Err(kafka_protocol::ResponseError::InvalidTxnState.code()),
            other => other,
        };
        if let Err(code) = answer {
            tracing::debug!(topic = %self.topic, partition = self.partition, producer, code, "transaction not verified");
        }
        for (append, reply) in verifying.parked {
            let same_epoch = append.batches.first().is_some_and(|b| b.header.producer_epoch == verifying.epoch);
            match answer {
                Ok(()) => self.enqueue_checked(append, same_epoch, reply, ctx),
                Err(code) => {
                    let _ = reply.send(Err(PartitionError::Refused(code)));
                }
            }
        }
    }

    /// A simulated slow disk: the mailbox waits as a busy device would.
    fn stall_after_write(&self, ctx: &mut Context<Self>) {
        let stall = self.config.write_stall_ms.load(std::sync::atomic::Ordering::Relaxed);
        if stall > 0 {
            ctx.wait(actix::fut::wrap_future(tokio::time::sleep(std::time::Duration::from_millis(stall))));
        }
    }
}

impl Handler<WriteMarker> for PartitionActor {
    type Result = ResponseFuture<Result<AppendOutcome, PartitionError>>;

    fn handle(&mut self, msg: WriteMarker, ctx: &mut Context<Self>) -> Self::Result {
        let marker = msg.0;
        if let Some(verifying) = self.verifying.get_mut(&marker.producer_id) {
            verifying.stale = true;
        }
        let append = Append {
            batches: vec![marker.batch(crate::now_ms())],
            log_append_time: None,
            acks_all: true,
            transactional_id: None,
        };
        let (reply, answer) = oneshot::channel();
        // Straight to the queue: a marker is never parked behind a verification.
        self.enqueue_checked(append, true, reply, ctx);
        Box::pin(async move {
            answer
                .await
                .unwrap_or_else(|_| Err(PartitionError::Unavailable("partition restarted before commit".into())))
        })
    }
}

impl Handler<Flush> for PartitionActor {
    type Result = ();

    fn handle(&mut self, _: Flush, ctx: &mut Context<Self>) {
        self.flush(ctx);
    }
}

impl Handler<Read> for PartitionActor {
    type Result = Result<ReadOutcome, PartitionError>;

    fn handle(&mut self, msg: Read, ctx: &mut Context<Self>) -> Self::Result {
        if self.log.is_none() && !self.removed {
            self.open_log();
            if self.log.is_none() {
                // The visible end is unknown without the log: retriable, never an empty read.
                return Err(PartitionError::Unavailable("partition log could not be opened".into()));
            }
        }
        let visible = self.visible_end();
        let stable = self.last_stable();
        let upper = if msg.committed { stable } else { visible };
        let mut read = self.guarded(ctx, |log| {
            let mut read = log.read_below(msg.offset, msg.max_bytes, msg.min_one, upper)?;
            if msg.committed && !read.records.is_empty() {
                read.aborted = log.aborted_between(msg.offset, crate::record_batch::end_of(&read.records))?;
            }
            Ok(read)
        })?;
        read.offsets.high_watermark = visible;
        read.offsets.last_stable_offset = stable;
        Ok(read)
    }
}

impl Handler<ListOffset> for PartitionActor {
    type Result = Result<Option<(i64, i64)>, PartitionError>;

    fn handle(&mut self, msg: ListOffset, ctx: &mut Context<Self>) -> Self::Result {
        if self.log.is_none() && !self.removed {
            self.open_log();
            if self.log.is_none() {
                // The visible end is unknown without the log: retriable, never an empty read.
                return Err(PartitionError::Unavailable("partition log could not be opened".into()));
            }
        }
        let visible = self.visible_end();
        let stable = self.last_stable();
        self.guarded(ctx, |log| {
            let offsets = log.offsets();
            match msg.0 {
                OffsetQuery::Earliest => Ok(Some((offsets.log_start_offset, -1))),
                OffsetQuery::Latest => Ok(Some((visible, -1))),
                OffsetQuery::LastStable => Ok(Some((stable, -1))),
                OffsetQuery::MaxTimestamp => log.max_timestamp_offset(),
                OffsetQuery::AtOrAfter(ts) => log.offset_for_timestamp(ts),
            }
        })
    }
}

impl Handler<Remove> for PartitionActor {
    type Result = Result<(), PartitionError>;

    fn handle(&mut self, _: Remove, _: &mut Context<Self>) -> Self::Result {
        self.removed = true;
        self.fail_pending(&PartitionError::Deleted);
        // Dropping the log closes the LMDB environment before its files go.
        self.log = None;
        match std::fs::remove_dir_all(&self.dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(PartitionError::Storage(format!("removing {}: {e}", self.dir.display()))),
        }
    }
}

impl Handler<EnforceRetention> for PartitionActor {
    type Result = ();

    fn handle(&mut self, msg: EnforceRetention, ctx: &mut Context<Self>) {
        if let Some(delete_retention_ms) = msg.compact {
            match self.guarded(ctx, |log| log.compact(crate::now_ms(), delete_retention_ms)) {
                Ok(0) | Err(PartitionError::Deleted) => {}
                Ok(removed) => tracing::info!(topic = %self.topic, partition = self.partition, removed, "compacted"),
                Err(e) => {
                    tracing::error!(topic = %self.topic, partition = self.partition, error = %e, "compaction failed")
                }
            }
        }
        if msg.retention_ms < 0 && msg.retention_bytes < 0 {
            return;
        }
        let step = MAX_BATCHES_PER_DELETE;
        let outcome = self
            .guarded(ctx, |log| log.enforce_retention(crate::now_ms(), msg.retention_ms, msg.retention_bytes, step));
        match outcome {
            Ok((deleted, more)) => {
                if deleted > 0 {
                    self.publish_offsets();
                    if let Some(log) = &self.log {
                        tracing::info!(topic = %self.topic, partition = self.partition, deleted,
                            log_start = log.offsets().log_start_offset, "retention deleted batches");
                    }
                }
                if more {
                    // Continue after whatever else is queued (compaction already ran this turn).
                    ctx.notify(EnforceRetention { compact: None, ..msg });
                }
            }
            Err(PartitionError::Deleted) => {}
            Err(e) => tracing::error!(topic = %self.topic, partition = self.partition, error = %e, "retention failed"),
        }
    }
}

impl Handler<DeleteRecordsBefore> for PartitionActor {
    type Result = Result<i64, PartitionError>;

    fn handle(&mut self, msg: DeleteRecordsBefore, ctx: &mut Context<Self>) -> Self::Result {
        let start = self.guarded(ctx, |log| log.delete_records_before(msg.0))?;
        self.publish_offsets();
        Ok(start)
    }
}

#[cfg(feature = "fault-injection")]
impl Handler<InjectPanic> for PartitionActor {
    type Result = ();

    fn handle(&mut self, _: InjectPanic, _: &mut Context<Self>) {
        self.panic_next = true;
    }
}

impl Handler<SetRole> for PartitionActor {
    type Result = ();

    fn handle(&mut self, msg: SetRole, ctx: &mut Context<Self>) {
        if self.removed || msg.0.same_as(&self.role) {
            return;
        }
        if self.log.is_none() {
            self.open_log();
        }
        let end = self.log.as_ref().map_or(0, |l| l.offsets().log_end_offset);
        let new = msg.0;
        let continuing = matches!((&self.role, &new), (Role::Leader(a), Role::Leader(b)) if a.epoch == b.epoch);
        tracing::info!(topic = %self.topic, partition = self.partition, epoch = new.epoch(), role = ?RoleName(&new), "partition role");
        match &new {
            Role::Leader(role) if continuing => {
                // Same leadership, new committed ISR: changes proposed at older epochs are answered.
                if let Some(set) = self.replica_set.as_mut() {
                    set.committed(role.partition_epoch);
                    for id in &role.replicas {
                        if *id != role.node_id && !set.followers.contains_key(id) {
                            set.followers = ReplicaSet::new(role, end, tokio::time::Instant::now()).followers;
                            break;
                        }
                    }
                }
            }
            Role::Leader(role) => {
                // A leadership taken up again at the same epoch (after a lost lease, or a
                // restart of this actor) may have ISR changes of its own still in flight.
                self.replica_set = Some(ReplicaSet::taking_over(role, end, tokio::time::Instant::now()));
            }
            Role::Follower { .. } | Role::Standalone => {
                self.replica_set = None;
                self.fail_waiters(PartitionError::NotLeader);
                self.fail_pending(&PartitionError::NotLeader);
            }
        }
        if let Some(log) = self.log.as_mut() {
            log.set_leader_epoch(new.epoch());
        }
        self.role = new;
        self.advance_high_watermark();
        let _ = ctx;
    }
}

/// Logs a role without its channel.
struct RoleName<'a>(&'a Role);

impl std::fmt::Debug for RoleName<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Role::Standalone => write!(f, "standalone"),
            Role::Leader(l) => write!(f, "leader isr={:?}", l.isr),
            Role::Follower { leader, .. } => write!(f, "follower of {leader:?}"),
        }
    }
}

impl PartitionActor {
    /// Refuses replica traffic from another epoch than this replica's.
    fn check_epoch(&self, got: i32) -> Result<(), PartitionError> {
        let current = self.role.epoch();
        if got < current {
            return Err(PartitionError::FencedLeaderEpoch { current, got });
        }
        if got > current {
            return Err(PartitionError::UnknownLeaderEpoch { current, got });
        }
        Ok(())
    }
}

impl Handler<ReplicaRead> for PartitionActor {
    type Result = Result<ReplicaReadOutcome, PartitionError>;

    fn handle(&mut self, msg: ReplicaRead, ctx: &mut Context<Self>) -> Self::Result {
        if !matches!(self.role, Role::Leader(_)) {
            return Err(PartitionError::NotLeader);
        }
        self.check_epoch(msg.leader_epoch)?;
        let offsets = self.guarded(ctx, |log| Ok(log.offsets()))?;
        if msg.fetch_offset < offsets.log_start_offset {
            return Ok(ReplicaReadOutcome::Behind { log_start_offset: offsets.log_start_offset });
        }
        if msg.last_fetched_epoch >= 0 || msg.fetch_offset > offsets.log_end_offset {
            let log = self.log.as_ref().expect("opened by guarded");
            let asked = if msg.last_fetched_epoch >= 0 { msg.last_fetched_epoch } else { i32::MAX };
            let (epoch, end_offset) = log.end_offset_for_epoch(asked);
            let diverged =
                (msg.last_fetched_epoch >= 0 && epoch != msg.last_fetched_epoch) || end_offset < msg.fetch_offset;
            if diverged {
                return Ok(ReplicaReadOutcome::Diverging { epoch, end_offset: end_offset.min(offsets.log_end_offset) });
            }
        }
        if let Some(set) = self.replica_set.as_mut() {
            set.on_fetch(msg.follower, msg.fetch_offset, offsets.log_end_offset, tokio::time::Instant::now());
        }
        self.advance_high_watermark();
        self.propose_isr(false);
        let read = self.guarded(ctx, |log| log.read(msg.fetch_offset, msg.max_bytes, true))?;
        Ok(ReplicaReadOutcome::Records {
            records: read.records,
            high_watermark: self.high_watermark,
            log_start_offset: read.offsets.log_start_offset,
            log_end_offset: read.offsets.log_end_offset,
        })
    }
}

impl Handler<DescribeRole> for PartitionActor {
    type Result = MessageResult<DescribeRole>;

    fn handle(&mut self, _: DescribeRole, _: &mut Context<Self>) -> Self::Result {
        MessageResult((self.role.clone(), self.high_watermark))
    }
}

impl Handler<AppendReplicated> for PartitionActor {
    type Result = Result<i64, PartitionError>;

    fn handle(&mut self, msg: AppendReplicated, ctx: &mut Context<Self>) -> Self::Result {
        if !matches!(self.role, Role::Follower { .. }) {
            return Err(PartitionError::NotLeader);
        }
        self.check_epoch(msg.leader_epoch)?;
        let end = self.guarded(ctx, |log| {
            log.append_replicated(&msg.records)?;
            Ok(log.offsets().log_end_offset)
        })?;
        self.stall_after_write(ctx);
        self.high_watermark = msg.leader_high_watermark.min(end);
        self.publish_offsets();
        Ok(end)
    }
}

impl Handler<FetchPosition> for PartitionActor {
    type Result = Result<(i64, i32), PartitionError>;

    fn handle(&mut self, _: FetchPosition, ctx: &mut Context<Self>) -> Self::Result {
        self.guarded(ctx, |log| Ok((log.offsets().log_end_offset, log.latest_epoch().unwrap_or(-1))))
    }
}

impl Handler<TruncateDiverged> for PartitionActor {
    type Result = Result<(), PartitionError>;

    fn handle(&mut self, msg: TruncateDiverged, ctx: &mut Context<Self>) -> Self::Result {
        if !matches!(self.role, Role::Follower { .. }) {
            return Err(PartitionError::NotLeader);
        }
        self.guarded(ctx, |log| {
            let own = if msg.epoch >= 0 { log.end_offset_for_epoch(msg.epoch).1 } else { msg.end_offset };
            log.truncate_to(msg.end_offset.min(own))
        })?;
        let end = self.log.as_ref().map_or(0, |l| l.offsets().log_end_offset);
        self.high_watermark = self.high_watermark.min(end);
        self.publish_offsets();
        Ok(())
    }
}

impl Handler<RestartAt> for PartitionActor {
    type Result = Result<(), PartitionError>;

    fn handle(&mut self, msg: RestartAt, ctx: &mut Context<Self>) -> Self::Result {
        if !matches!(self.role, Role::Follower { .. }) {
            return Err(PartitionError::NotLeader);
        }
        self.guarded(ctx, |log| log.restart_at(msg.0))?;
        self.high_watermark = msg.0;
        self.publish_offsets();
        Ok(())
    }
}

impl Handler<CheckIsr> for PartitionActor {
    type Result = ();

    fn handle(&mut self, _: CheckIsr, _: &mut Context<Self>) {
        self.propose_isr(true);
    }
}
