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
}

/// Read whole batches starting at the one holding `offset`.
#[derive(Message)]
#[rtype(result = "Result<ReadOutcome, PartitionError>")]
pub struct Read {
    pub offset: i64,
    pub max_bytes: usize,
    pub min_one: bool,
}

/// What ListOffsets asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffsetQuery {
    Earliest,
    Latest,
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
        if let Some(log) = &self.log {
            if let Err(e) = log.sync() {
                tracing::error!(topic = %self.topic, partition = self.partition, error = %e, "flush failed");
            }
        }
    }
}

/// DeleteRecords: make `before` (-1: the high watermark) the log start offset.
#[derive(Message)]
#[rtype(result = "Result<i64, PartitionError>")]
pub struct DeleteRecordsBefore(pub i64);

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

struct PendingAppend {
    batches: Vec<ValidatedBatch>,
    log_append_time: Option<i64>,
    reply: oneshot::Sender<Result<AppendOutcome, PartitionError>>,
}

pub struct PartitionActor {
    topic: Arc<str>,
    partition: i32,
    dir: PathBuf,
    config: Arc<StorageConfig>,
    /// Outlives restarts: fetches waiting for data watch it.
    offsets_tx: Arc<watch::Sender<LogOffsets>>,
    log: Option<PartitionLog>,
    pending: Vec<PendingAppend>,
    pending_batches: usize,
    flush_scheduled: bool,
    removed: bool,
    /// When idle producer ids were last forgotten (checked from `flush`, at most hourly).
    last_producer_expiry: std::time::Instant,
    #[cfg(feature = "fault-injection")]
    panic_next: bool,
}

impl PartitionActor {
    pub fn new(
        topic: Arc<str>,
        partition: i32,
        config: Arc<StorageConfig>,
        offsets_tx: Arc<watch::Sender<LogOffsets>>,
    ) -> PartitionActor {
        let dir = partition_dir(&config, &topic, partition);
        PartitionActor {
            topic,
            partition,
            dir,
            config,
            offsets_tx,
            log: None,
            pending: Vec::new(),
            pending_batches: 0,
            flush_scheduled: false,
            removed: false,
            last_producer_expiry: std::time::Instant::now(),
            #[cfg(feature = "fault-injection")]
            panic_next: false,
        }
    }

    fn open_log(&mut self) {
        match PartitionLog::open(&self.dir, &self.config) {
            Ok(log) => {
                self.offsets_tx.send_replace(log.offsets());
                self.log = Some(log);
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
        self.last_producer_expiry = std::time::Instant::now();
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
    }

    fn flush(&mut self, ctx: &mut Context<Self>) {
        self.flush_scheduled = false;
        let pending = std::mem::take(&mut self.pending);
        self.pending_batches = 0;
        if pending.is_empty() {
            return;
        }
        let groups: Vec<AppendGroup> =
            pending.iter().map(|p| AppendGroup { batches: &p.batches, log_append_time: p.log_append_time }).collect();
        let result = self.guarded(ctx, |log| log.append_groups(&groups));
        match result {
            Ok(outcomes) => {
                assert_eq!(outcomes.len(), pending.len(), "one outcome per append");
                self.expire_producers_hourly();
                if let Some(log) = &self.log {
                    self.offsets_tx.send_replace(log.offsets());
                }
                for (append, outcome) in pending.into_iter().zip(outcomes) {
                    let _ = append.reply.send(outcome.map_err(PartitionError::Sequence));
                }
            }
            Err(e) => {
                for append in pending {
                    let _ = append.reply.send(Err(e.clone()));
                }
            }
        }
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
        self.flush_scheduled = false;
        assert!(self.pending.is_empty(), "pending appends are answered before a stop");
    }
}

impl Handler<Append> for PartitionActor {
    type Result = ResponseFuture<Result<AppendOutcome, PartitionError>>;

    fn handle(&mut self, msg: Append, ctx: &mut Context<Self>) -> Self::Result {
        if self.removed {
            return Box::pin(async { Err(PartitionError::Deleted) });
        }
        // Keep one transaction bounded: commit what is queued before it grows past the limit.
        if self.pending_batches + msg.batches.len() > MAX_BATCHES_PER_COMMIT
            || self.pending.len() >= self.config.max_pending_appends
        {
            self.flush(ctx);
        }
        let (reply, answer) = oneshot::channel();
        self.pending_batches += msg.batches.len();
        self.pending.push(PendingAppend { batches: msg.batches, log_append_time: msg.log_append_time, reply });
        if !self.flush_scheduled {
            self.flush_scheduled = true;
            ctx.notify(Flush);
        }
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
        self.guarded(ctx, |log| log.read(msg.offset, msg.max_bytes, msg.min_one))
    }
}

impl Handler<ListOffset> for PartitionActor {
    type Result = Result<Option<(i64, i64)>, PartitionError>;

    fn handle(&mut self, msg: ListOffset, ctx: &mut Context<Self>) -> Self::Result {
        self.guarded(ctx, |log| {
            let offsets = log.offsets();
            match msg.0 {
                OffsetQuery::Earliest => Ok(Some((offsets.log_start_offset, -1))),
                OffsetQuery::Latest => Ok(Some((offsets.high_watermark(), -1))),
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
                    if let Some(log) = &self.log {
                        self.offsets_tx.send_replace(log.offsets());
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
        if let Some(log) = &self.log {
            self.offsets_tx.send_replace(log.offsets());
        }
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
