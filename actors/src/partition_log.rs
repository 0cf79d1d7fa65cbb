//! One partition's log, in an LMDB environment of its own.
//!
//! Layout (all keys big-endian so LMDB's byte order is numeric order):
//! - `batches`: base offset -> the record batch as the producer sent it, with
//!   the base offset rewritten. One value per batch: a fetch copies whole
//!   batches out, never re-encodes them.
//! - `time_index`: running maximum timestamp (sign bit flipped) -> base offset
//!   of the first batch that reached it. Monotonic, so "first offset with
//!   timestamp >= t" is one lookup, as Kafka's time index.
//! - `meta`: `log_start_offset`, `log_bytes`.
//! - `producers`: producer id -> its idempotence state, a versioned
//!   `StoredProducerState` (see `stored`).
//! - `epochs`: leader epoch -> the first offset written in it.
//! - `aborted`: offset of an abort marker -> the aborted transaction (its
//!   producer and first offset), a versioned `StoredAbortedTxn`: Kafka's
//!   aborted-transaction index, for `read_committed` fetches and compaction.
//! - `format`: the storage format marker (`stored::ensure_format`).
//!
//! Only producer states and aborted transactions are versioned postcard values: batches are Kafka's
//! own format (magic byte inside), and every other key and value is a
//! fixed-width big-endian integer, whose width is its format.
//!
//! Invariants: batch keys are contiguous (each key is the previous key plus
//! its record count); the log end offset is the last batch's last offset + 1;
//! nothing becomes visible to readers before its write transaction commits.

use std::io::Write;
use std::ops::Bound;
use std::path::{Path, PathBuf};

use bytes::{Bytes, BytesMut};
use heed::byteorder::BigEndian;
use heed::types::{Bytes as RawBytes, Str, U64};
use heed::{CommitOrAbort, Database, Env, EnvFlags, EnvOpenOptions, MdbError, WithoutTls};
use kafka_protocol::records::{Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions};

use crate::config::StorageConfig;
use std::collections::HashMap;

use crate::producer_state::{self, ProducerState, ProducerStateV1, SeqCheck, SeqEntry, SeqError};
use crate::record_batch::{after_prefix, stamp_log_append_time, stored_prefix, BatchHeader, Marker, ValidatedBatch};
use crate::stored::{self, FormatError, UpgradeError};

type OffsetKey = U64<BigEndian>;
/// Databases outlive the transaction that created them once it commits.
type Db<K, V> = Database<'static, K, V>;

/// Batches read back at most when a truncation rebuilds producer states.
const MAX_PRODUCER_SCAN: usize = 1_000_000;
const LOG_START_KEY: &str = "log_start_offset";
const LOG_BYTES_KEY: &str = "log_bytes";
/// Batches one retention or deletion transaction removes at most, so it never
/// holds the partition for long; the caller continues in another turn.
pub const MAX_BATCHES_PER_DELETE: usize = 10_000;
/// Batches a single group commit may carry; a bound on one transaction's size.
pub const MAX_BATCHES_PER_COMMIT: usize = 65_536;
/// Aborted transactions one read_committed read or compaction looks at, at most.
const MAX_ABORTED_SCAN: usize = 10_000;

/// The offsets a reader needs. On a single broker the high watermark is the
/// log end offset: a record is visible once its transaction commits. In a
/// cluster the partition actor sets it: the offset every in-sync replica has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LogOffsets {
    pub log_start_offset: i64,
    pub log_end_offset: i64,
    pub high_watermark: i64,
    /// The leader epoch this replica leads the partition in, `None` while it
    /// does not lead. Set by the partition actor from its role (the log itself
    /// knows no roles), so every request kind checks leadership one way.
    pub leader_epoch: Option<i32>,
    /// Below this, every transaction has ended (Kafka's last stable offset):
    /// what `read_committed` consumers may read. The high watermark when no
    /// transaction is open.
    pub last_stable_offset: i64,
    /// A leader's log end when it took up its leadership (Kafka's leader epoch
    /// start offset), -1 otherwise. Until the high watermark reaches it, the
    /// leader may know less of it than the previous leader showed clients.
    pub epoch_start_offset: i64,
}

impl LogOffsets {
    pub fn high_watermark(&self) -> i64 {
        self.high_watermark
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendOutcome {
    pub base_offset: i64,
    pub last_offset: i64,
    /// The time stamped on the batches (LogAppendTime topics), else -1.
    pub log_append_time: i64,
}

/// One producer's batches for a group commit.
#[derive(Debug, Clone, Copy)]
pub struct AppendGroup<'a> {
    pub batches: &'a [ValidatedBatch],
    /// `Some(now)` for topics with `message.timestamp.type=LogAppendTime`.
    pub log_append_time: Option<i64>,
    /// The transaction coordinator confirmed this partition is in the
    /// producer's open transaction, and no marker for the producer came since
    /// (KIP-890): a transactional batch may open the transaction here.
    pub verified: bool,
}

impl<'a> AppendGroup<'a> {
    pub fn new(batches: &'a [ValidatedBatch]) -> AppendGroup<'a> {
        AppendGroup { batches, log_append_time: None, verified: false }
    }
}

/// What a group commit does with one batch (`PartitionLog::plan_group`).
struct Planned {
    decision: SeqCheck,
    /// The producer's state after the batch.
    state: Option<(i64, ProducerState)>,
    /// The transaction this batch (an abort marker) ends.
    aborted: Option<AbortedTxn>,
    /// A marker that ends a transaction: (its offset, the transaction's first offset).
    ended: Option<(i64, i64)>,
}

/// A transaction that ended in an abort: its data from `first_offset` up to
/// its marker is skipped by read_committed consumers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AbortedTxn {
    pub producer_id: i64,
    pub first_offset: i64,
}

#[derive(Debug, Clone)]
pub struct ReadOutcome {
    /// Whole batches, concatenated, starting with the one holding the fetch offset.
    pub records: Bytes,
    pub offsets: LogOffsets,
    /// read_committed: the aborted transactions the records overlap, as
    /// (producer id, first offset), for the consumer to skip.
    pub aborted: Vec<AbortedTxn>,
}

#[derive(Debug)]
pub enum LogError {
    Storage(heed::Error),
    Io(std::io::Error),
    /// The map reached `max_map_bytes`.
    Full {
        map_bytes: usize,
    },
    OffsetOutOfRange {
        requested: i64,
        offsets: LogOffsets,
    },
    /// Stored bytes that do not parse: never expected, reported loudly.
    Corrupt(String),
    /// A stored value (at `key`) in a format this build cannot read.
    Format {
        key: String,
        error: FormatError,
    },
}

impl std::fmt::Display for LogError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LogError::Storage(e) => write!(f, "lmdb: {e}"),
            LogError::Io(e) => write!(f, "io: {e}"),
            LogError::Full { map_bytes } => {
                write!(f, "partition storage is full at its {map_bytes} byte limit")
            }
            LogError::OffsetOutOfRange { requested, offsets } => write!(
                f,
                "offset {requested} is outside the log [{}, {}]",
                offsets.log_start_offset, offsets.log_end_offset
            ),
            LogError::Corrupt(m) => write!(f, "stored data is corrupt: {m}"),
            LogError::Format { key, error } => write!(f, "key {key}: {error}"),
        }
    }
}

impl std::error::Error for LogError {}

impl From<heed::Error> for LogError {
    fn from(e: heed::Error) -> Self {
        LogError::Storage(e)
    }
}

impl From<UpgradeError> for LogError {
    fn from(e: UpgradeError) -> Self {
        match e {
            UpgradeError::Storage(e) => LogError::Storage(e),
            UpgradeError::Store(error) => LogError::Format { key: stored::FORMAT_KEY.to_string(), error },
            UpgradeError::Format { key, error } => LogError::Format { key, error },
        }
    }
}

/// The format versions of a producer's state: V2 added transactions.
#[derive(serde::Serialize, serde::Deserialize)]
enum StoredProducerState {
    V1(ProducerStateV1),
    V2(ProducerState),
}

impl stored::Versioned for StoredProducerState {
    const RECORD: &'static str = "producer state";
    const NEWEST: u32 = 2;
    type Current = ProducerState;

    fn from_current(value: &ProducerState) -> Self {
        StoredProducerState::V2(value.clone())
    }

    fn into_current(self) -> ProducerState {
        match self {
            StoredProducerState::V1(v1) => v1.into(),
            StoredProducerState::V2(state) => state,
        }
    }

    fn from_legacy(bytes: &[u8]) -> Result<Self, postcard::Error> {
        stored::postcard_decode(bytes).map(StoredProducerState::V1)
    }
}

crate::stored_v1! {
    /// The format versions of an aborted transaction's index entry.
    enum StoredAbortedTxn(AbortedTxn) = "aborted transaction";
}

impl From<std::io::Error> for LogError {
    fn from(e: std::io::Error) -> Self {
        LogError::Io(e)
    }
}

/// Decodes a stored batch's records (decompressing if needed).
fn decode_stored(value: &[u8]) -> Result<Vec<Record>, LogError> {
    let mut buf = Bytes::copy_from_slice(value);
    RecordBatchDecoder::decode(&mut buf).map(|set| set.records).map_err(|e| LogError::Corrupt(e.to_string()))
}

/// Maps an i64 timestamp to a u64 whose unsigned order is the signed order.
fn timestamp_key(ts: i64) -> u64 {
    (ts as u64) ^ (1 << 63)
}

fn key_timestamp(key: u64) -> i64 {
    (key ^ (1 << 63)) as i64
}

/// Drops this process's mapping of the whole pages inside `bytes`, a value
/// just copied out of LMDB's read-only shared map. The file and the page cache
/// keep the data (a later read faults it back in); the broker's RSS then shows
/// memory it uses, not every batch a consumer has read.
fn release_mapped_pages(bytes: &[u8]) {
    const PAGE: usize = 4096;
    let start = (bytes.as_ptr() as usize).next_multiple_of(PAGE);
    let end = (bytes.as_ptr() as usize + bytes.len()) & !(PAGE - 1);
    if end > start {
        // Safety: the range lies inside a live shared file mapping that is only
        // read; MADV_DONTNEED on it discards page-table entries, never data.
        unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED) };
    }
}

/// Flushes a log's environment; `Send`, so the fsync can run off the actor's
/// thread. An fsync concurrent with a commit is safe in LMDB: it flushes what
/// is written by then, and the next flush takes the rest.
#[derive(Clone)]
pub struct LogSyncer(Env<WithoutTls>);

impl LogSyncer {
    pub fn sync(&self) -> Result<(), LogError> {
        self.0.force_sync()?;
        Ok(())
    }
}

pub struct PartitionLog {
    dir: PathBuf,
    env: Env<WithoutTls>,
    batches: Db<OffsetKey, RawBytes>,
    time_index: Db<OffsetKey, OffsetKey>,
    meta: Db<Str, OffsetKey>,
    /// Producer id -> idempotence state, written with the batches it describes.
    producers: Db<OffsetKey, RawBytes>,
    producer_states: HashMap<i64, ProducerState>,
    /// Leader epoch -> the first offset written in it (Kafka's leader-epoch
    /// cache, KIP-101), for truncating a returning replica to its leader's log.
    epochs: Db<OffsetKey, OffsetKey>,
    /// Abort marker offset -> the aborted transaction.
    aborted: Db<OffsetKey, RawBytes>,
    /// The same, in memory, oldest first.
    epoch_starts: Vec<(i32, i64)>,
    /// Transactions ended by a marker the high watermark has not passed yet,
    /// as (marker offset, first offset), oldest first: they stay unstable
    /// until then, so the last stable offset never steps back when a leader
    /// that wrote the marker alone is replaced. In memory (a restarted
    /// replica's high watermark starts below them).
    ended: Vec<(i64, i64)>,
    /// The epoch stamped on appended batches (0 on a single broker).
    leader_epoch: i32,
    offsets: LogOffsets,
    /// Largest timestamp in the log, `i64::MIN` when empty.
    max_timestamp: i64,
    /// Bytes of all stored batches, for `retention.bytes`.
    log_bytes: u64,
    map_bytes: usize,
    max_map_bytes: usize,
}

impl PartitionLog {
    /// Opens (or creates) the log in `dir`, recovering offsets from what is committed.
    pub fn open(dir: &Path, config: &StorageConfig) -> Result<PartitionLog, LogError> {
        std::fs::create_dir_all(dir)?;
        let mut options = EnvOpenOptions::new().read_txn_without_tls();
        options.map_size(config.initial_map_bytes).max_dbs(7).max_readers(126);
        if config.flush_interval().is_some() {
            // Safety: NO_SYNC trades the last un-flushed commits on a machine
            // crash for speed; the actor calls force_sync every interval.
            unsafe { options.flags(EnvFlags::NO_SYNC) };
        }
        // Safety: the directory is owned by this partition actor alone; no
        // other process or code path opens or modifies these files.
        let env = unsafe { options.open(dir) }?;
        let wtxn = env.write_txn()?;
        let (batches, time_index, meta, producers, epochs, aborted) = env
            .create_databases_and_commit(wtxn, |opener, wtxn| -> Result<_, UpgradeError> {
                let producers = opener.create_database(wtxn, Some("producers"))?;
                let format = opener.create_database(wtxn, Some(stored::FORMAT_DB))?;
                stored::ensure_format(format, wtxn, "partition log", |wtxn| {
                    stored::upgrade_all::<StoredProducerState, OffsetKey>(producers, wtxn)
                })?;
                Ok(CommitOrAbort::<_, ()>::Commit((
                    opener.create_database(wtxn, Some("batches"))?,
                    opener.create_database(wtxn, Some("time_index"))?,
                    opener.create_database(wtxn, Some("meta"))?,
                    producers,
                    opener.create_database(wtxn, Some("epochs"))?,
                    opener.create_database(wtxn, Some("aborted"))?,
                )))
            })?
            .unwrap_commit();

        let map_bytes = env.info().map_size;
        let mut log = PartitionLog {
            dir: dir.to_path_buf(),
            env,
            batches,
            time_index,
            meta,
            producers,
            producer_states: HashMap::new(),
            epochs,
            aborted,
            epoch_starts: Vec::new(),
            ended: Vec::new(),
            leader_epoch: 0,
            offsets: LogOffsets::default(),
            max_timestamp: i64::MIN,
            log_bytes: 0,
            map_bytes,
            max_map_bytes: config.max_map_bytes.max(map_bytes),
        };
        log.recover()?;
        Ok(log)
    }

    /// Reads the log's offsets back from what the last commit left.
    fn recover(&mut self) -> Result<(), LogError> {
        let rtxn = self.env.read_txn()?;
        let log_start = self.meta.get(&rtxn, LOG_START_KEY)?.unwrap_or(0) as i64;
        let log_end = match self.batches.last(&rtxn)? {
            Some((_, value)) => {
                let header = BatchHeader::parse(value).map_err(|e| LogError::Corrupt(e.to_string()))?;
                header.last_offset() + 1
            }
            None => log_start,
        };
        self.max_timestamp = match self.time_index.last(&rtxn)? {
            Some((key, _)) => key_timestamp(key),
            None => i64::MIN,
        };
        self.log_bytes = match self.meta.get(&rtxn, LOG_BYTES_KEY)? {
            Some(bytes) => bytes,
            // Logs written before the size was kept: count once.
            None => self.batches.iter(&rtxn)?.map(|e| e.map(|(_, v)| v.len() as u64)).sum::<Result<u64, _>>()?,
        };
        for entry in self.producers.iter(&rtxn)? {
            let (producer_id, value) = entry?;
            let state = stored::decode::<StoredProducerState>(value)
                .map_err(|error| LogError::Format { key: format!("producer {producer_id}"), error })?;
            self.producer_states.insert(producer_id as i64, state);
        }
        for entry in self.epochs.iter(&rtxn)? {
            let (epoch, start) = entry?;
            self.epoch_starts.push((epoch as i32, start as i64));
        }
        assert!(log_start <= log_end, "log start {log_start} beyond log end {log_end}");
        self.offsets = LogOffsets {
            log_start_offset: log_start,
            log_end_offset: log_end,
            high_watermark: log_end,
            leader_epoch: None,
            last_stable_offset: log_end,
            epoch_start_offset: -1,
        };
        Ok(())
    }

    /// The first offset of the oldest transaction that is open, or ended by a
    /// marker not yet below the high watermark (`settle`).
    pub fn first_unstable_offset(&self) -> Option<i64> {
        let open = self.producer_states.values().filter_map(|s| s.txn_first_offset).min();
        let ended = self.ended.iter().map(|(_, first)| *first).min();
        open.into_iter().chain(ended).min()
    }

    /// The high watermark reached `high_watermark`: transactions whose markers
    /// are below it are stable.
    pub fn settle(&mut self, high_watermark: i64) {
        self.ended.retain(|(marker, _)| *marker >= high_watermark);
    }

    fn note_ended(&mut self, ended: Vec<(i64, i64)>) {
        self.ended.extend(ended);
        // Bounded: past this many unreplicated ends the oldest count as stable.
        let over = self.ended.len().saturating_sub(MAX_ABORTED_SCAN);
        self.ended.drain(..over);
    }

    /// Every producer this partition remembers, by id.
    pub fn producers(&self) -> Vec<(i64, ProducerState)> {
        let mut all: Vec<(i64, ProducerState)> = self.producer_states.iter().map(|(id, s)| (*id, s.clone())).collect();
        all.sort_by_key(|(id, _)| *id);
        all
    }

    /// Whether `producer_id` has a transaction open here at `epoch`.
    pub fn in_transaction(&self, producer_id: i64, epoch: i16) -> bool {
        self.producer_states.get(&producer_id).is_some_and(|s| s.txn_first_offset.is_some() && s.epoch == epoch)
    }

    /// The aborted transactions whose data lies in `[from, to)`: those whose
    /// marker is at or after `from` and whose first offset is before `to`
    /// (at most `MAX_ABORTED_SCAN` looked at).
    pub fn aborted_between(&self, from: i64, to: i64) -> Result<Vec<AbortedTxn>, LogError> {
        let rtxn = self.env.read_txn()?;
        let found = self.aborted_from(&rtxn, from.max(0) as u64)?;
        Ok(found.into_iter().map(|(_, txn)| txn).filter(|txn| txn.first_offset < to).collect())
    }

    /// The aborted transactions whose marker is at or after `from`, with the
    /// marker's offset, in marker order (at most `MAX_ABORTED_SCAN`).
    fn aborted_from(&self, txn: &heed::RoTxn<WithoutTls>, from: u64) -> Result<Vec<(i64, AbortedTxn)>, LogError> {
        let mut found = Vec::new();
        for entry in self.aborted.range(txn, &(from..))?.take(MAX_ABORTED_SCAN) {
            let (offset, value) = entry?;
            let aborted = stored::decode::<StoredAbortedTxn>(value)
                .map_err(|error| LogError::Format { key: format!("aborted transaction {offset}"), error })?;
            found.push((offset as i64, aborted));
        }
        Ok(found)
    }

    fn put_aborted(&self, wtxn: &mut heed::RwTxn, marker_offset: i64, txn: &AbortedTxn) -> Result<(), LogError> {
        let value = stored::encode::<StoredAbortedTxn>(txn)
            .map_err(|error| LogError::Format { key: format!("aborted transaction {marker_offset}"), error })?;
        self.aborted.put(wtxn, &(marker_offset as u64), &value)?;
        Ok(())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn offsets(&self) -> LogOffsets {
        self.offsets
    }

    /// Appends every group in one write transaction (one fsync for all), in order.
    /// Each group gets the offsets of its batches, contiguous.
    pub fn append_groups(&mut self, groups: &[AppendGroup]) -> Result<Vec<Result<AppendOutcome, SeqError>>, LogError> {
        let total: usize = groups.iter().map(|g| g.batches.len()).sum();
        assert!(total <= MAX_BATCHES_PER_COMMIT, "group commit of {total} batches over the bound");
        // Bounded: each retry doubles the map, and the map is capped.
        for _ in 0..64 {
            match self.try_append(groups) {
                Err(LogError::Storage(heed::Error::Mdb(MdbError::MapFull))) => self.grow_map()?,
                other => return other,
            }
        }
        Err(LogError::Full { map_bytes: self.map_bytes })
    }

    fn try_append(&mut self, groups: &[AppendGroup]) -> Result<Vec<Result<AppendOutcome, SeqError>>, LogError> {
        let mut wtxn = self.env.write_txn()?;
        let mut next = self.offsets.log_end_offset;
        let mut max_timestamp = self.max_timestamp;
        // Producer states as this transaction leaves them; applied after the commit.
        let mut touched: HashMap<i64, ProducerState> = HashMap::new();
        let mut ended = Vec::new();
        let mut log_bytes = self.log_bytes;
        let mut outcomes = Vec::with_capacity(groups.len());
        for group in groups {
            // Decide the whole group before writing any of it, so a refused group writes nothing.
            let plan = match self.plan_group(group, &touched, next) {
                Ok(plan) => plan,
                Err(e) => {
                    outcomes.push(Err(e));
                    continue;
                }
            };
            let (mut first, mut last) = (None, None);
            for (batch, planned) in group.batches.iter().zip(plan) {
                touched.extend(planned.state);
                if let Some(txn) = planned.aborted {
                    self.put_aborted(&mut wtxn, next, &txn)?;
                }
                ended.extend(planned.ended);
                if let SeqCheck::Duplicate(dup) = planned.decision {
                    first.get_or_insert(dup.base_offset);
                    last = Some(dup.last_offset);
                    continue;
                }
                let prefix = stored_prefix(&batch.bytes, next, self.leader_epoch);
                let rest = after_prefix(&batch.bytes);
                let key = next as u64;
                self.batches.put_reserved(&mut wtxn, &key, batch.bytes.len(), |space| {
                    space.write_all(&prefix)?;
                    space.write_all(rest)?;
                    if let Some(time) = group.log_append_time {
                        stamp_log_append_time(space.written_mut(), time);
                    }
                    Ok(())
                })?;
                let batch_max = group.log_append_time.unwrap_or(batch.header.max_timestamp);
                if batch_max > max_timestamp {
                    max_timestamp = batch_max;
                    self.time_index.put(&mut wtxn, &timestamp_key(max_timestamp), &key)?;
                }
                first.get_or_insert(next);
                log_bytes += batch.bytes.len() as u64;
                next += batch.record_count();
                last = Some(next - 1);
            }
            let log_append_time = group.log_append_time.unwrap_or(-1);
            let (base_offset, last_offset) = (first.unwrap_or(next), last.unwrap_or(next - 1));
            outcomes.push(Ok(AppendOutcome { base_offset, last_offset, log_append_time }));
        }
        for (producer_id, state) in &touched {
            self.put_producer(&mut wtxn, *producer_id, state)?;
        }
        self.meta.put(&mut wtxn, LOG_BYTES_KEY, &log_bytes)?;
        let new_epoch = next > self.offsets.log_end_offset && self.latest_epoch() < Some(self.leader_epoch);
        if new_epoch {
            let start = self.offsets.log_end_offset;
            self.epochs.put(&mut wtxn, &(self.leader_epoch as u64), &(start as u64))?;
        }
        wtxn.commit()?;
        if new_epoch {
            self.epoch_starts.push((self.leader_epoch, self.offsets.log_end_offset));
        }
        self.offsets.log_end_offset = next;
        self.offsets.high_watermark = next;
        self.max_timestamp = max_timestamp;
        self.log_bytes = log_bytes;
        self.producer_states.extend(touched);
        self.note_ended(ended);
        Ok(outcomes)
    }

    /// Writes one producer's state in its current format.
    fn put_producer(&self, wtxn: &mut heed::RwTxn, producer_id: i64, state: &ProducerState) -> Result<(), LogError> {
        let value = stored::encode::<StoredProducerState>(state)
            .map_err(|error| LogError::Format { key: format!("producer {producer_id}"), error })?;
        self.producers.put(wtxn, &(producer_id as u64), &value)?;
        Ok(())
    }

    /// For each batch of `group`: append or duplicate, the producer state
    /// after it, and the transaction a marker aborts. Offsets are those the
    /// batches will get if written from `next`.
    fn plan_group(
        &self,
        group: &AppendGroup,
        touched: &HashMap<i64, ProducerState>,
        mut next: i64,
    ) -> Result<Vec<Planned>, SeqError> {
        let mut scratch: HashMap<i64, ProducerState> = HashMap::new();
        let mut plan = Vec::with_capacity(group.batches.len());
        for batch in group.batches {
            let h = &batch.header;
            if h.producer_id < 0 {
                plan.push(Planned { decision: SeqCheck::Append, state: None, aborted: None, ended: None });
                next += batch.record_count();
                continue;
            }
            let current = scratch
                .get(&h.producer_id)
                .or_else(|| touched.get(&h.producer_id))
                .or_else(|| self.producer_states.get(&h.producer_id));
            if let Some(marker) = Marker::parse(h, &batch.bytes) {
                producer_state::check_marker(current, h.producer_id, h.producer_epoch, marker.coordinator_epoch)?;
                let mut state = current.cloned().unwrap_or_default();
                let first = producer_state::apply_marker(
                    &mut state,
                    h.producer_epoch,
                    marker.coordinator_epoch,
                    next,
                );
                state.last_append_ms = crate::now_ms();
                let ended = first.map(|first_offset| (next, first_offset));
                let aborted = first
                    .filter(|_| !marker.commit)
                    .map(|first_offset| AbortedTxn { producer_id: h.producer_id, first_offset });
                next += batch.record_count();
                scratch.insert(h.producer_id, state.clone());
                plan.push(Planned { decision: SeqCheck::Append, state: Some((h.producer_id, state)), aborted, ended });
                continue;
            }
            let last = producer_state::last_seq(h.base_sequence, batch.record_count());
            let decision = producer_state::check(current, h.producer_id, h.producer_epoch, h.base_sequence, last)?;
            if decision != SeqCheck::Append {
                plan.push(Planned { decision, state: None, aborted: None, ended: None });
                continue;
            }
            producer_state::check_txn(current, h.producer_id, h.producer_epoch, h.is_transactional(), group.verified)?;
            let mut state = current.cloned().unwrap_or_default();
            let entry = SeqEntry {
                first_seq: h.base_sequence,
                last_seq: last,
                base_offset: next,
                last_offset: next + batch.record_count() - 1,
            };
            producer_state::record(&mut state, h.producer_epoch, entry);
            if h.is_transactional() {
                producer_state::record_txn(&mut state, next);
            }
            state.last_append_ms = crate::now_ms();
            next += batch.record_count();
            scratch.insert(h.producer_id, state.clone());
            plan.push(Planned { decision, state: Some((h.producer_id, state)), aborted: None, ended: None });
        }
        Ok(plan)
    }

    fn grow_map(&mut self) -> Result<(), LogError> {
        if self.map_bytes >= self.max_map_bytes {
            return Err(LogError::Full { map_bytes: self.map_bytes });
        }
        let new_size = (self.map_bytes * 2).min(self.max_map_bytes);
        // Safety: only this actor touches the env, and no transaction is open
        // here (the failed write transaction was dropped, which aborted it).
        unsafe { self.env.resize(new_size) }?;
        self.map_bytes = self.env.info().map_size;
        tracing::info!(dir = %self.dir.display(), map_bytes = self.map_bytes, "grew partition map");
        Ok(())
    }

    pub fn log_bytes(&self) -> u64 {
        self.log_bytes
    }

    /// Applies `retention.ms` and `retention.bytes` (-1 disables either):
    /// deletes whole batches from the start while the oldest is older than the
    /// retention or the log is larger than allowed. Returns the batches
    /// deleted and whether more are due (at most `max_batches` per call).
    pub fn enforce_retention(
        &mut self,
        now_ms: i64,
        retention_ms: i64,
        retention_bytes: i64,
        max_batches: usize,
    ) -> Result<(usize, bool), LogError> {
        let cutoff = now_ms.saturating_sub(retention_ms);
        self.delete_front(self.offsets.log_start_offset, max_batches, |header, bytes| {
            (retention_ms >= 0 && header.max_timestamp < cutoff)
                || (retention_bytes >= 0 && bytes > retention_bytes as u64)
        })
    }

    /// DeleteRecords: makes `offset` the log start offset (-1: the high
    /// watermark) and deletes the batches wholly below it. Returns the new log start.
    pub fn delete_records_before(&mut self, offset: i64) -> Result<i64, LogError> {
        let offsets = self.offsets;
        let target = if offset == -1 { offsets.high_watermark() } else { offset };
        if target < 0 || target > offsets.high_watermark() {
            return Err(LogError::OffsetOutOfRange { requested: offset, offsets });
        }
        // Bounded: each round deletes up to MAX_BATCHES_PER_DELETE; the log has finitely many.
        loop {
            let (_, more) = self.delete_front(target, MAX_BATCHES_PER_DELETE, |_, _| false)?;
            if !more {
                return Ok(self.offsets.log_start_offset);
            }
        }
    }

    /// Deletes batches from the front while they end below `start_at_least` or
    /// `expired(header, log bytes before deleting it)` holds, and moves the log
    /// start offset to at least `start_at_least`. One transaction.
    fn delete_front(
        &mut self,
        start_at_least: i64,
        max_batches: usize,
        mut expired: impl FnMut(&BatchHeader, u64) -> bool,
    ) -> Result<(usize, bool), LogError> {
        let mut wtxn = self.env.write_txn()?;
        let mut bytes = self.log_bytes;
        let mut start = self.offsets.log_start_offset.max(start_at_least);
        let mut doomed = Vec::new();
        let mut more = false;
        for entry in self.batches.iter(&wtxn)? {
            let (key, value) = entry?;
            let header = BatchHeader::parse(value).map_err(|e| LogError::Corrupt(e.to_string()))?;
            if header.last_offset() >= start_at_least && !expired(&header, bytes) {
                break;
            }
            if doomed.len() == max_batches {
                more = true;
                break;
            }
            doomed.push(key);
            bytes -= value.len() as u64;
            start = start.max(header.last_offset() + 1);
        }
        if doomed.is_empty() && start == self.offsets.log_start_offset {
            return Ok((0, false));
        }
        for key in &doomed {
            self.batches.delete(&mut wtxn, key)?;
        }
        // Index entries name batches in offset order too: the stale ones, naming
        // deleted batches, are a prefix.
        let first_kept = self.batches.first(&wtxn)?.map_or(u64::MAX, |(key, _)| key);
        let stale: Vec<u64> = self
            .time_index
            .iter(&wtxn)?
            .take_while(|e| e.as_ref().map_or(false, |(_, batch)| *batch < first_kept))
            .map(|e| e.map(|(ts_key, _)| ts_key))
            .collect::<Result<_, _>>()?;
        for ts_key in &stale {
            self.time_index.delete(&mut wtxn, ts_key)?;
        }
        // Aborted transactions whose marker is gone: nothing of them is left to skip.
        let first_kept_offset = first_kept.min(i64::MAX as u64);
        self.aborted.delete_range(&mut wtxn, &(..first_kept_offset))?;
        // The batch holding `start` stays even when `start` is inside it (DeleteRecords);
        // reads and timestamp lookups skip its records below `start`.
        assert!(start <= self.offsets.log_end_offset, "log start {start} beyond log end");
        self.meta.put(&mut wtxn, LOG_START_KEY, &(start as u64))?;
        self.meta.put(&mut wtxn, LOG_BYTES_KEY, &bytes)?;
        wtxn.commit()?;
        self.offsets.log_start_offset = start;
        self.log_bytes = bytes;
        Ok((doomed.len(), more))
    }

    /// `cleanup.policy=compact`: keeps only the latest record of each key in
    /// every batch but the last (the active one), drops tombstones older than
    /// `delete_retention_ms`, and preserves every kept record's offset. A
    /// rewritten batch keeps its codec and is stored under its new base offset.
    /// Records without a key are kept. Transactions: only the log below the
    /// first open transaction is compacted (an open one may still abort);
    /// aborted records are removed and never count as a key's latest; markers
    /// are kept, so read_committed consumers still skip what is left of an
    /// aborted transaction. Returns the records removed.
    pub fn compact(&mut self, now_ms: i64, delete_retention_ms: i64) -> Result<usize, LogError> {
        let rtxn = self.env.read_txn()?;
        let Some((active_key, _)) = self.batches.last(&rtxn)? else { return Ok(0) };
        // Records at or past the first open transaction may still abort: they neither count nor change.
        let stable = self.first_unstable_offset().map_or(u64::MAX, |o| o.max(0) as u64);
        let upper = active_key.min(stable);
        // Aborted transactions that began below the compacted range's end (their
        // markers may lie past it): (producer, first, marker offset).
        let aborted: Vec<(i64, i64, i64)> = self
            .aborted_from(&rtxn, 0)?
            .into_iter()
            .filter(|(_, txn)| (txn.first_offset.max(0) as u64) < stable)
            .map(|(marker, txn)| (txn.producer_id, txn.first_offset, marker))
            .collect();
        let is_aborted =
            |r: &Record| r.transactional && aborted.iter().any(|(p, f, l)| *p == r.producer_id && (*f..=*l).contains(&r.offset));
        // Latest committed offset of every key below `stable`.
        let mut latest: HashMap<Bytes, i64> = HashMap::new();
        for entry in self.batches.range(&rtxn, &(..stable))? {
            let (_, value) = entry?;
            let header = BatchHeader::parse(value).map_err(|e| LogError::Corrupt(e.to_string()))?;
            if header.is_control() {
                continue;
            }
            for record in decode_stored(value)? {
                if is_aborted(&record) {
                    continue;
                }
                if let Some(key) = record.key {
                    latest.insert(key, record.offset);
                }
            }
        }
        // What to do with each older batch: keep, delete, or replace.
        let mut changes: Vec<(u64, Option<(u64, Vec<u8>)>)> = Vec::new();
        let mut removed = 0usize;
        for entry in self.batches.range(&rtxn, &(..upper))? {
            let (key, value) = entry?;
            if BatchHeader::parse(value).map_err(|e| LogError::Corrupt(e.to_string()))?.is_control() {
                continue;
            }
            let mut buf = Bytes::copy_from_slice(value);
            let set =
                RecordBatchDecoder::decode(&mut buf).map_err(|e| LogError::Corrupt(format!("batch {key}: {e}")))?;
            let total = set.records.len();
            let kept: Vec<Record> = set
                .records
                .into_iter()
                .filter(|r| !is_aborted(r))
                .filter(|r| match &r.key {
                    None => true,
                    Some(k) => {
                        let newest = latest.get(k).is_none_or(|o| *o <= r.offset);
                        let expired_tombstone = r.value.is_none() && now_ms - r.timestamp > delete_retention_ms;
                        newest && !expired_tombstone
                    }
                })
                .collect();
            if kept.len() == total {
                continue;
            }
            removed += total - kept.len();
            if kept.is_empty() {
                changes.push((key, None));
                continue;
            }
            let mut out = bytes::BytesMut::new();
            let options = RecordEncodeOptions { version: 2, compression: set.compression };
            RecordBatchEncoder::encode(&mut out, kept.iter(), &options)
                .map_err(|e| LogError::Corrupt(format!("re-encoding batch {key}: {e}")))?;
            changes.push((key, Some((kept[0].offset as u64, out.to_vec()))));
        }
        drop(rtxn);
        if changes.is_empty() {
            return Ok(0);
        }
        let mut wtxn = self.env.write_txn()?;
        let mut bytes = self.log_bytes;
        let mut moved: HashMap<u64, Option<u64>> = HashMap::new();
        for (old_key, replacement) in &changes {
            let old_len = self.batches.get(&wtxn, old_key)?.map_or(0, |v| v.len() as u64);
            self.batches.delete(&mut wtxn, old_key)?;
            bytes -= old_len;
            match replacement {
                Some((new_key, batch)) => {
                    self.batches.put(&mut wtxn, new_key, batch)?;
                    bytes += batch.len() as u64;
                    moved.insert(*old_key, Some(*new_key));
                }
                None => {
                    moved.insert(*old_key, None);
                }
            }
        }
        let index: Vec<(u64, u64)> = self.time_index.iter(&wtxn)?.collect::<Result<_, _>>()?;
        for (ts_key, batch_key) in index {
            match moved.get(&batch_key) {
                Some(Some(new_key)) => self.time_index.put(&mut wtxn, &ts_key, new_key)?,
                Some(None) => {
                    self.time_index.delete(&mut wtxn, &ts_key)?;
                }
                None => {}
            }
        }
        self.meta.put(&mut wtxn, LOG_BYTES_KEY, &bytes)?;
        wtxn.commit()?;
        self.log_bytes = bytes;
        Ok(removed)
    }

    /// Forgets producers idle since before `now_ms - expiration_ms`, and the
    /// least recently used beyond `max_producers`. A forgotten producer that
    /// comes back mid-sequence gets OUT_OF_ORDER_SEQUENCE_NUMBER and starts over.
    pub fn expire_producers(
        &mut self,
        now_ms: i64,
        expiration_ms: i64,
        max_producers: usize,
    ) -> Result<usize, LogError> {
        // A producer with an open transaction holds the last stable offset: it stays until its marker.
        let mut by_age: Vec<(i64, i64)> = self
            .producer_states
            .iter()
            .filter(|(_, s)| s.txn_first_offset.is_none())
            .map(|(id, s)| (s.last_append_ms, *id))
            .collect();
        by_age.sort_unstable();
        let over = by_age.len().saturating_sub(max_producers);
        let doomed: Vec<i64> = by_age
            .iter()
            .enumerate()
            .filter(|(i, (last, _))| *i < over || now_ms - *last > expiration_ms)
            .map(|(_, (_, id))| *id)
            .collect();
        if doomed.is_empty() {
            return Ok(0);
        }
        let mut wtxn = self.env.write_txn()?;
        for id in &doomed {
            self.producers.delete(&mut wtxn, &(*id as u64))?;
        }
        wtxn.commit()?;
        for id in &doomed {
            self.producer_states.remove(id);
        }
        Ok(doomed.len())
    }

    /// The newest leader epoch this log has records of.
    pub fn latest_epoch(&self) -> Option<i32> {
        self.epoch_starts.last().map(|(epoch, _)| *epoch)
    }

    /// Batches appended from now on carry `epoch` (this replica leads in it).
    pub fn set_leader_epoch(&mut self, epoch: i32) {
        self.leader_epoch = epoch;
    }

    /// KIP-101's OffsetsForLeaderEpoch: the largest epoch <= `epoch` this log
    /// knows and the offset where it ended (the next epoch's start, or the log
    /// end for the latest). `(-1, log start)` if the log knows no such epoch.
    pub fn end_offset_for_epoch(&self, epoch: i32) -> (i32, i64) {
        let known = self.epoch_starts.iter().rposition(|(e, _)| *e <= epoch);
        match known {
            None => (-1, self.offsets.log_start_offset),
            Some(i) => {
                let end = self.epoch_starts.get(i + 1).map_or(self.offsets.log_end_offset, |(_, start)| *start);
                (self.epoch_starts[i].0, end)
            }
        }
    }

    /// A follower's append: batches exactly as the leader stored them (offsets
    /// and epochs kept), which must start at this log's end. The producer
    /// state follows them, so this replica can dedupe retries if it leads later.
    pub fn append_replicated(&mut self, mut records: &[u8]) -> Result<usize, LogError> {
        let mut batches = Vec::new();
        let mut next = self.offsets.log_end_offset;
        while !records.is_empty() {
            let header =
                BatchHeader::parse(records).map_err(|e| LogError::Corrupt(format!("replicated batch: {e}")))?;
            let len = header.total_len();
            if len > records.len() || header.base_offset != next {
                return Err(LogError::Corrupt(format!(
                    "replicated batch at {} of {len} bytes does not continue the log at {next}",
                    header.base_offset
                )));
            }
            let crc = crc32c::crc32c(&records[crate::record_batch::CRC_COVERS_FROM..len]);
            if crc != header.crc {
                return Err(LogError::Corrupt(format!("replicated batch at {next} fails its CRC")));
            }
            next = header.last_offset() + 1;
            batches.push((header, &records[..len]));
            records = &records[len..];
        }
        if batches.is_empty() {
            return Ok(0);
        }
        for _ in 0..64 {
            match self.try_append_replicated(&batches) {
                Err(LogError::Storage(heed::Error::Mdb(MdbError::MapFull))) => self.grow_map()?,
                other => return other.map(|()| batches.len()),
            }
        }
        Err(LogError::Full { map_bytes: self.map_bytes })
    }

    fn try_append_replicated(&mut self, batches: &[(BatchHeader, &[u8])]) -> Result<(), LogError> {
        let mut wtxn = self.env.write_txn()?;
        let mut max_timestamp = self.max_timestamp;
        let mut log_bytes = self.log_bytes;
        let mut touched: HashMap<i64, ProducerState> = HashMap::new();
        let mut ended = Vec::new();
        let mut new_epochs = Vec::new();
        let mut latest = self.latest_epoch();
        let mut next = self.offsets.log_end_offset;
        for (header, bytes) in batches {
            let key = header.base_offset as u64;
            self.batches.put(&mut wtxn, &key, bytes)?;
            if header.max_timestamp > max_timestamp {
                max_timestamp = header.max_timestamp;
                self.time_index.put(&mut wtxn, &timestamp_key(max_timestamp), &key)?;
            }
            if latest < Some(header.partition_leader_epoch) {
                latest = Some(header.partition_leader_epoch);
                self.epochs.put(&mut wtxn, &(header.partition_leader_epoch as u64), &key)?;
                new_epochs.push((header.partition_leader_epoch, header.base_offset));
            }
            if header.producer_id >= 0 {
                let mut state = touched
                    .get(&header.producer_id)
                    .or_else(|| self.producer_states.get(&header.producer_id))
                    .cloned()
                    .unwrap_or_default();
                if let Some(marker) = Marker::parse(header, bytes) {
                    // The leader decided it; the follower keeps the same state.
                    let first = producer_state::apply_marker(
                        &mut state,
                        header.producer_epoch,
                        marker.coordinator_epoch,
                        header.base_offset,
                    );
                    if let Some(first_offset) = first {
                        ended.push((header.base_offset, first_offset));
                        if !marker.commit {
                            let txn = AbortedTxn { producer_id: header.producer_id, first_offset };
                            self.put_aborted(&mut wtxn, header.base_offset, &txn)?;
                        }
                    }
                    touched.insert(header.producer_id, state);
                    log_bytes += bytes.len() as u64;
                    next = header.last_offset() + 1;
                    continue;
                }
                if header.is_transactional() {
                    producer_state::record_txn(&mut state, header.base_offset);
                }
                let count = i64::from(header.last_offset_delta) + 1;
                let entry = SeqEntry {
                    first_seq: header.base_sequence,
                    last_seq: producer_state::last_seq(header.base_sequence, count),
                    base_offset: header.base_offset,
                    last_offset: header.last_offset(),
                };
                producer_state::record(&mut state, header.producer_epoch, entry);
                state.last_append_ms = crate::now_ms();
                touched.insert(header.producer_id, state);
            }
            log_bytes += bytes.len() as u64;
            next = header.last_offset() + 1;
        }
        for (producer_id, state) in &touched {
            self.put_producer(&mut wtxn, *producer_id, state)?;
        }
        self.meta.put(&mut wtxn, LOG_BYTES_KEY, &log_bytes)?;
        wtxn.commit()?;
        self.offsets.log_end_offset = next;
        self.offsets.high_watermark = next;
        self.max_timestamp = max_timestamp;
        self.log_bytes = log_bytes;
        self.producer_states.extend(touched);
        self.epoch_starts.extend(new_epochs);
        self.note_ended(ended);
        Ok(())
    }

    /// Removes every record at or above `offset` (a whole batch if `offset`
    /// falls inside one): a replica dropping what its new leader does not
    /// have. Below the log start, the log is emptied and restarts at `offset`.
    pub fn truncate_to(&mut self, offset: i64) -> Result<(), LogError> {
        if offset >= self.offsets.log_end_offset {
            return Ok(());
        }
        self.cut(offset, offset < self.offsets.log_start_offset)
    }

    /// Empties the log and starts it again at `offset`: a replica so far
    /// behind that its leader no longer has the records it needs next.
    pub fn restart_at(&mut self, offset: i64) -> Result<(), LogError> {
        self.cut(offset, true)
    }

    fn cut(&mut self, offset: i64, restart: bool) -> Result<(), LogError> {
        let mut wtxn = self.env.write_txn()?;
        let mut cut = offset.max(self.offsets.log_start_offset) as u64;
        if let Some((key, value)) = self.batches.get_lower_than_or_equal_to(&wtxn, &cut)? {
            let header = BatchHeader::parse(value).map_err(|e| LogError::Corrupt(e.to_string()))?;
            if header.last_offset() >= cut as i64 {
                cut = key;
            }
        }
        let cut = if restart { 0 } else { cut };
        let mut freed = 0u64;
        for entry in self.batches.range(&wtxn, &(cut..))? {
            freed += entry?.1.len() as u64;
        }
        self.batches.delete_range(&mut wtxn, &(cut..))?;
        let stale: Vec<u64> = self
            .time_index
            .iter(&wtxn)?
            .filter(|e| e.as_ref().map_or(false, |(_, batch)| *batch >= cut))
            .map(|e| e.map(|(ts_key, _)| ts_key))
            .collect::<Result<_, _>>()?;
        for ts_key in &stale {
            self.time_index.delete(&mut wtxn, ts_key)?;
        }
        self.epochs_delete_from(&mut wtxn, cut as i64)?;
        self.aborted.delete_range(&mut wtxn, &(cut..))?;
        // Producers whose remembered batches were cut: their state is rebuilt
        // from what the log keeps (else one that lost all five would be
        // expected to start again at sequence 0, and its retries refused).
        let affected: Vec<i64> = self
            .producer_states
            .iter()
            .filter(|(_, state)| {
                state.batches.iter().any(|b| b.last_offset >= cut as i64)
                    || state.last_marker_offset.is_some_and(|o| o >= cut as i64)
                    || state.txn_first_offset.is_some_and(|o| o >= cut as i64)
            })
            .map(|(id, _)| *id)
            .collect();
        let rebuilt = self.producer_states_before(&wtxn, cut, &affected)?;
        let mut touched = Vec::new();
        let mut forgotten = Vec::new();
        for producer_id in affected {
            match rebuilt.get(&producer_id) {
                Some(state) => {
                    self.put_producer(&mut wtxn, producer_id, state)?;
                    touched.push((producer_id, state.clone()));
                }
                None => {
                    self.producers.delete(&mut wtxn, &(producer_id as u64))?;
                    forgotten.push(producer_id);
                }
            }
        }
        let log_bytes = self.log_bytes.saturating_sub(freed);
        self.meta.put(&mut wtxn, LOG_BYTES_KEY, &log_bytes)?;
        let (start, end) = if restart { (offset, offset) } else { (self.offsets.log_start_offset, cut as i64) };
        self.meta.put(&mut wtxn, LOG_START_KEY, &(start as u64))?;
        wtxn.commit()?;
        self.producer_states.extend(touched);
        for producer_id in forgotten {
            self.producer_states.remove(&producer_id);
        }
        self.epoch_starts.retain(|(_, s)| *s < cut as i64);
        self.ended.retain(|(marker, _)| *marker < cut as i64);
        self.log_bytes = log_bytes;
        let rtxn = self.env.read_txn()?;
        self.max_timestamp = self.time_index.last(&rtxn)?.map_or(i64::MIN, |(k, _)| key_timestamp(k));
        drop(rtxn);
        self.offsets = LogOffsets {
            log_start_offset: start,
            log_end_offset: end,
            high_watermark: end,
            leader_epoch: None,
            last_stable_offset: end,
            epoch_start_offset: -1,
        };
        tracing::info!(dir = %self.dir.display(), log_start = start, log_end = end, "truncated log");
        Ok(())
    }

    /// The state of each of `producers` as of the batches below `cut`: up to
    /// `BATCHES_KEPT` of its latest batches there, found by reading the log
    /// backwards (at most `MAX_PRODUCER_SCAN` batches). A producer with none
    /// in that reach is left out: to this log it is unknown.
    fn producer_states_before(
        &self,
        txn: &heed::RoTxn<WithoutTls>,
        cut: u64,
        producers: &[i64],
    ) -> Result<HashMap<i64, ProducerState>, LogError> {
        let mut found: HashMap<i64, ProducerState> = HashMap::new();
        if producers.is_empty() {
            return Ok(found);
        }
        // Per producer: whether the scan still looks for the start of its open
        // transaction (the newest thing below the cut was transactional data).
        let mut txn_open: HashMap<i64, bool> = HashMap::new();
        let mut done: std::collections::HashSet<i64> = std::collections::HashSet::new();
        for entry in self.batches.rev_range(txn, &(..cut))?.take(MAX_PRODUCER_SCAN) {
            let (_, bytes) = entry?;
            let header = BatchHeader::parse(bytes).map_err(|e| LogError::Corrupt(e.to_string()))?;
            if !producers.contains(&header.producer_id) || done.contains(&header.producer_id) {
                continue;
            }
            let previous = self.producer_states.get(&header.producer_id);
            let marker = Marker::parse(&header, bytes);
            let newest = !found.contains_key(&header.producer_id);
            let state = found.entry(header.producer_id).or_insert_with(|| ProducerState {
                epoch: header.producer_epoch,
                last_append_ms: previous.map_or(0, |p| p.last_append_ms),
                ..Default::default()
            });
            let open = txn_open.entry(header.producer_id).or_insert(newest && marker.is_none() && header.is_transactional());
            if let Some(marker) = marker {
                *open = false;
                state.last_marker_offset.get_or_insert(header.base_offset);
                state.coordinator_epoch = state.coordinator_epoch.max(marker.coordinator_epoch);
            } else if *open {
                if header.is_transactional() && header.producer_epoch == state.epoch {
                    state.txn_first_offset = Some(header.base_offset);
                } else {
                    *open = false;
                }
            }
            if marker.is_none() && state.batches.len() < producer_state::BATCHES_KEPT && header.producer_epoch == state.epoch {
                let count = i64::from(header.last_offset_delta) + 1;
                state.batches.insert(
                    0,
                    SeqEntry {
                        first_seq: header.base_sequence,
                        last_seq: producer_state::last_seq(header.base_sequence, count),
                        base_offset: header.base_offset,
                        last_offset: header.last_offset(),
                    },
                );
            }
            // Done once its transaction is settled and it has all the batches it keeps (a
            // marker ends what matters: retries of batches before it are moot).
            if !*open && (state.batches.len() >= producer_state::BATCHES_KEPT || marker.is_some()) {
                done.insert(header.producer_id);
                if done.len() == producers.len() {
                    break;
                }
            }
        }
        Ok(found)
    }

    fn epochs_delete_from(&self, wtxn: &mut heed::RwTxn, offset: i64) -> Result<(), LogError> {
        for (epoch, start) in &self.epoch_starts {
            if *start >= offset {
                self.epochs.delete(wtxn, &(*epoch as u64))?;
            }
        }
        Ok(())
    }

    /// Flushes commits made without fsync (interval durability).
    pub fn sync(&self) -> Result<(), LogError> {
        self.syncer().sync()
    }

    /// A handle that flushes this log from another thread while appends go on.
    pub fn syncer(&self) -> LogSyncer {
        LogSyncer(self.env.clone())
    }

    /// Whole batches from the one holding `offset`, up to `max_bytes`. With
    /// `min_one`, the first batch is returned even if larger, so a consumer
    /// can always make progress (as Kafka does).
    pub fn read(&self, offset: i64, max_bytes: usize, min_one: bool) -> Result<ReadOutcome, LogError> {
        self.read_below(offset, max_bytes, min_one, self.offsets.log_end_offset)
    }

    /// As `read`, returning only batches that start below `upper` (the high
    /// watermark, for consumers of a replicated partition).
    pub fn read_below(
        &self,
        offset: i64,
        max_bytes: usize,
        min_one: bool,
        upper: i64,
    ) -> Result<ReadOutcome, LogError> {
        let offsets = self.offsets;
        if offset < offsets.log_start_offset || offset > offsets.log_end_offset {
            return Err(LogError::OffsetOutOfRange { requested: offset, offsets });
        }
        let mut out = BytesMut::new();
        if offset >= upper {
            return Ok(ReadOutcome { records: out.freeze(), offsets, aborted: Vec::new() });
        }
        let rtxn = self.env.read_txn()?;
        let start = match self.batches.get_lower_than_or_equal_to(&rtxn, &(offset as u64))? {
            Some((key, value)) => {
                let header = BatchHeader::parse(value).map_err(|e| LogError::Corrupt(e.to_string()))?;
                if header.last_offset() < offset {
                    key + 1
                } else {
                    key
                }
            }
            None => offset as u64,
        };
        let range = (Bound::Included(start), Bound::Excluded(upper.max(0) as u64));
        for entry in self.batches.range(&rtxn, &range)? {
            let (_, value) = entry?;
            let fits = out.len() + value.len() <= max_bytes;
            if !fits && !(min_one && out.is_empty()) {
                break;
            }
            out.extend_from_slice(value);
            release_mapped_pages(value);
            if !fits {
                break;
            }
        }
        Ok(ReadOutcome { records: out.freeze(), offsets, aborted: Vec::new() })
    }

    /// The first record with timestamp >= `timestamp`: (offset, its timestamp).
    pub fn offset_for_timestamp(&self, timestamp: i64) -> Result<Option<(i64, i64)>, LogError> {
        let rtxn = self.env.read_txn()?;
        let Some((_, base)) = self.time_index.get_greater_than_or_equal_to(&rtxn, &timestamp_key(timestamp))? else {
            return Ok(None);
        };
        self.find_in_batch(&rtxn, base, |ts| ts >= timestamp)
    }

    /// The record with the largest timestamp (the first if several): (offset, timestamp).
    pub fn max_timestamp_offset(&self) -> Result<Option<(i64, i64)>, LogError> {
        let rtxn = self.env.read_txn()?;
        let Some((key, base)) = self.time_index.last(&rtxn)? else {
            return Ok(None);
        };
        let max = key_timestamp(key);
        self.find_in_batch(&rtxn, base, |ts| ts == max)
    }

    /// Decodes the batch at `base` (decompressing if needed) and returns the
    /// first record whose timestamp matches.
    fn find_in_batch(
        &self,
        rtxn: &heed::RoTxn<WithoutTls>,
        base: u64,
        matches: impl Fn(i64) -> bool,
    ) -> Result<Option<(i64, i64)>, LogError> {
        let Some(value) = self.batches.get(rtxn, &base)? else {
            return Err(LogError::Corrupt(format!("time index names missing batch {base}")));
        };
        let mut buf = Bytes::copy_from_slice(value);
        let set = RecordBatchDecoder::decode(&mut buf).map_err(|e| LogError::Corrupt(format!("batch {base}: {e}")))?;
        let start = self.offsets.log_start_offset;
        Ok(set.records.iter().find(|r| r.offset >= start && matches(r.timestamp)).map(|r| (r.offset, r.timestamp)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record_batch::{encode_batch, validate_batches, NewRecord};
    use kafka_protocol::records::Compression;

    fn batch(n: usize, first_ts: i64, compression: Compression) -> Vec<ValidatedBatch> {
        let records: Vec<NewRecord> = (0..n)
            .map(|i| NewRecord {
                timestamp: Some(first_ts + i as i64),
                value: Some(Bytes::from(vec![7u8; 50])),
                ..Default::default()
            })
            .collect();
        validate_batches(&encode_batch(&records, compression, 0, None).unwrap(), 1 << 20).unwrap()
    }

    /// A leader's log: `epochs` as (epoch, batches of 2 records) in order.
    fn leader_log(path: &Path, config: &StorageConfig, epochs: &[(i32, usize)]) -> PartitionLog {
        let mut log = PartitionLog::open(path, config).unwrap();
        for (epoch, batches) in epochs {
            log.set_leader_epoch(*epoch);
            for _ in 0..*batches {
                log.append_groups(&[AppendGroup::new(&batch(2, 100, Compression::None))]).unwrap();
            }
        }
        log
    }

    #[test]
    fn leader_epochs_are_stamped_and_answer_where_each_ended() {
        let dir = tempfile::tempdir().unwrap();
        let config = StorageConfig::new(dir.path());
        let path = dir.path().join("t-0");
        {
            let log = leader_log(&path, &config, &[(0, 2), (3, 1), (5, 2)]);
            assert_eq!(log.end_offset_for_epoch(0), (0, 4));
            assert_eq!(log.end_offset_for_epoch(2), (0, 4), "an unknown epoch answers the largest below it");
            assert_eq!(log.end_offset_for_epoch(3), (3, 6));
            assert_eq!(log.end_offset_for_epoch(9), (5, 10));
            let read = log.read(4, 1 << 20, true).unwrap();
            assert_eq!(BatchHeader::parse(&read.records).unwrap().partition_leader_epoch, 3);
        }
        let log = PartitionLog::open(&path, &config).unwrap();
        assert_eq!(log.latest_epoch(), Some(5), "the epoch cache survives a reopen");
        assert_eq!(log.end_offset_for_epoch(3), (3, 6));
    }

    #[test]
    fn a_follower_copies_the_leaders_batches_and_truncates_where_they_diverge() {
        let dir = tempfile::tempdir().unwrap();
        let config = StorageConfig::new(dir.path());
        let leader = leader_log(&dir.path().join("leader"), &config, &[(0, 2), (1, 2)]);
        let mut follower = PartitionLog::open(&dir.path().join("follower"), &config).unwrap();
        let all = leader.read(0, 1 << 20, true).unwrap().records;
        assert_eq!(follower.append_replicated(&all).unwrap(), 4);
        assert_eq!(follower.offsets().log_end_offset, 8);
        assert_eq!(follower.read(0, 1 << 20, true).unwrap().records, all, "byte for byte the leader's batches");
        assert_eq!(follower.end_offset_for_epoch(0), (0, 4));
        // A batch that does not continue the log is refused and nothing is written.
        let again = leader.read(2, 1 << 20, true).unwrap().records;
        assert!(matches!(follower.append_replicated(&again), Err(LogError::Corrupt(_))));
        let mut corrupt = all.to_vec();
        corrupt[70] ^= 1;
        let mut other = PartitionLog::open(&dir.path().join("other"), &config).unwrap();
        assert!(matches!(other.append_replicated(&corrupt), Err(LogError::Corrupt(_))), "CRC checked");
        assert_eq!(other.offsets().log_end_offset, 0);

        // The new leader never had epoch 1's records past offset 6: the follower drops them.
        follower.truncate_to(6).unwrap();
        assert_eq!(follower.offsets().log_end_offset, 6);
        assert_eq!(follower.end_offset_for_epoch(1), (1, 6));
        follower.truncate_to(4).unwrap();
        assert_eq!(follower.latest_epoch(), Some(0), "epoch 1 started at 4 and is gone");
        assert_eq!(
            follower.read(0, 1 << 20, true).unwrap().records,
            leader.read(0, 1 << 20, true).unwrap().records.slice(..all.len() / 2)
        );
        // Far behind a leader whose log now starts at 100: empty, and restart there.
        follower.restart_at(100).unwrap();
        assert_eq!(
            follower.offsets(),
            LogOffsets { log_start_offset: 100, log_end_offset: 100, high_watermark: 100, leader_epoch: None, last_stable_offset: 100, epoch_start_offset: -1 }
        );
        assert!(follower.read(100, 1 << 20, true).unwrap().records.is_empty());
    }

    #[test]
    fn a_replicated_idempotent_batch_is_a_duplicate_on_the_follower_too() {
        let dir = tempfile::tempdir().unwrap();
        let config = StorageConfig::new(dir.path());
        let mut leader = PartitionLog::open(&dir.path().join("leader"), &config).unwrap();
        let first = idempotent_batch(7, 0, 0, 3);
        leader.append_groups(&[AppendGroup::new(&first)]).unwrap();
        let mut follower = PartitionLog::open(&dir.path().join("follower"), &config).unwrap();
        follower.append_replicated(&leader.read(0, 1 << 20, true).unwrap().records).unwrap();
        // The follower leads now, and the producer retries its batch.
        let out = follower.append_groups(&[AppendGroup::new(&first)]).unwrap();
        assert_eq!(out[0].as_ref().unwrap().base_offset, 0, "answered with the original offsets");
        assert_eq!(follower.offsets().log_end_offset, 3, "not written twice");
    }

    #[test]
    fn truncating_a_producers_last_batches_rebuilds_its_state_from_the_log() {
        // Found by the Jepsen-style test: a replica that truncated more than the
        // five batches it remembers of a producer expected sequence 0 next, and
        // refused that producer's retries once it led (OUT_OF_ORDER_SEQUENCE_NUMBER).
        let dir = tempfile::tempdir().unwrap();
        let config = StorageConfig::new(dir.path());
        let path = dir.path().join("t-0");
        let mut log = PartitionLog::open(&path, &config).unwrap();
        for (i, other) in (0..4).zip([8, 9, 8, 9]) {
            log.append_groups(&[AppendGroup::new(&idempotent_batch(7, 0, i * 2, 2))]).unwrap();
            log.append_groups(&[AppendGroup::new(&idempotent_batch(other, 0, i / 2, 1))]).unwrap();
        }
        let kept = log.offsets().log_end_offset;
        for i in 4..10 {
            log.append_groups(&[AppendGroup::new(&idempotent_batch(7, 0, i * 2, 2))]).unwrap();
        }
        log.truncate_to(kept).unwrap();
        let retry = idempotent_batch(7, 0, 8, 2);
        let out = log.append_groups(&[AppendGroup::new(&retry)]).unwrap();
        assert_eq!(out[0].as_ref().unwrap().base_offset, kept, "the next sequence after the cut is taken");
        let duplicate = idempotent_batch(7, 0, 6, 2);
        let out = log.append_groups(&[AppendGroup::new(&duplicate)]).unwrap();
        assert_eq!(out[0].as_ref().unwrap().base_offset, 9, "an older batch is still known as a duplicate");
        // The rebuilt state is what a reopen sees.
        drop(log);
        let mut log = PartitionLog::open(&path, &config).unwrap();
        let out = log.append_groups(&[AppendGroup::new(&idempotent_batch(7, 0, 10, 1))]).unwrap();
        assert_eq!(out[0].as_ref().unwrap().base_offset, kept + 2);
        // A producer with nothing left below the cut is unknown again.
        log.truncate_to(0).unwrap();
        let out = log.append_groups(&[AppendGroup::new(&idempotent_batch(9, 0, 0, 1))]).unwrap();
        assert_eq!(out[0].as_ref().unwrap().base_offset, 0);
    }

    #[test]
    fn appends_reads_and_recovers_offsets() {
        let dir = tempfile::tempdir().unwrap();
        let config = StorageConfig::new(dir.path());
        let path = dir.path().join("t-0");
        {
            let mut log = PartitionLog::open(&path, &config).unwrap();
            let a = batch(3, 100, Compression::None);
            let b = batch(2, 200, Compression::Zstd);
            let out = log.append_groups(&[AppendGroup::new(&a), AppendGroup::new(&b)]).unwrap();
            assert_eq!(
                out.iter().map(|o| o.as_ref().map(|o| (o.base_offset, o.last_offset)).unwrap()).collect::<Vec<_>>(),
                vec![(0, 2), (3, 4)]
            );
            let read = log.read(4, 1 << 20, true).unwrap();
            let sets = RecordBatchDecoder::decode_all(&mut read.records.clone()).unwrap();
            assert_eq!(sets[0].records.iter().map(|r| r.offset).collect::<Vec<_>>(), vec![3, 4]);
            assert!(matches!(log.read(6, 100, true), Err(LogError::OffsetOutOfRange { .. })));
            assert!(log.read(5, 100, true).unwrap().records.is_empty());
        }
        let log = PartitionLog::open(&path, &config).unwrap();
        assert_eq!(
            log.offsets(),
            LogOffsets { log_start_offset: 0, log_end_offset: 5, high_watermark: 5, leader_epoch: None, last_stable_offset: 5, epoch_start_offset: -1 }
        );
        assert_eq!(log.offset_for_timestamp(101).unwrap(), Some((1, 101)));
        assert_eq!(log.offset_for_timestamp(150).unwrap(), Some((3, 200)));
        assert_eq!(log.offset_for_timestamp(999).unwrap(), None);
        assert_eq!(log.max_timestamp_offset().unwrap(), Some((4, 201)));
    }

    #[test]
    fn read_honours_max_bytes_but_returns_at_least_one_batch() {
        let dir = tempfile::tempdir().unwrap();
        let config = StorageConfig::new(dir.path());
        let mut log = PartitionLog::open(&dir.path().join("t-0"), &config).unwrap();
        for i in 0..10 {
            let b = batch(5, i * 10, Compression::None);
            log.append_groups(&[AppendGroup::new(&b)]).unwrap();
        }
        let one = log.read(0, 1, true).unwrap();
        assert_eq!(RecordBatchDecoder::decode_all(&mut one.records.clone()).unwrap().len(), 1);
        assert!(log.read(0, 1, false).unwrap().records.is_empty());
        let all = log.read(7, 1 << 20, true).unwrap();
        assert_eq!(RecordBatchDecoder::decode_all(&mut all.records.clone()).unwrap().len(), 9);
    }

    fn idempotent_batch(producer_id: i64, epoch: i16, first_seq: i32, n: usize) -> Vec<ValidatedBatch> {
        producer_batch(producer_id, epoch, first_seq, n, false)
    }

    fn producer_batch(producer_id: i64, epoch: i16, first_seq: i32, n: usize, transactional: bool) -> Vec<ValidatedBatch> {
        use kafka_protocol::records::{Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType};
        let records: Vec<Record> = (0..n)
            .map(|i| Record {
                transactional,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: 0,
                producer_id,
                producer_epoch: epoch,
                timestamp_type: TimestampType::Creation,
                offset: i as i64,
                sequence: first_seq + i as i32,
                timestamp: 1,
                key: None,
                value: Some(Bytes::from_static(b"v")),
                headers: Default::default(),
            })
            .collect();
        let mut buf = bytes::BytesMut::new();
        RecordBatchEncoder::encode(
            &mut buf,
            records.iter(),
            &RecordEncodeOptions { version: 2, compression: Compression::None },
        )
        .unwrap();
        validate_batches(&buf.freeze(), 1 << 20).unwrap()
    }

    fn marker(producer_id: i64, epoch: i16, commit: bool, coordinator_epoch: i32) -> Vec<ValidatedBatch> {
        vec![Marker { producer_id, producer_epoch: epoch, commit, coordinator_epoch }.batch(1)]
    }

    fn verified(batches: &[ValidatedBatch]) -> AppendGroup<'_> {
        AppendGroup { verified: true, ..AppendGroup::new(batches) }
    }

    #[test]
    fn transactions_hold_the_stable_offset_and_aborts_are_indexed_replicated_and_truncated() {
        let dir = tempfile::tempdir().unwrap();
        let config = StorageConfig::new(dir.path());
        let path = dir.path().join("t-0");
        let mut log = PartitionLog::open(&path, &config).unwrap();
        log.append_groups(&[AppendGroup::new(&batch(2, 0, Compression::None))]).unwrap(); // 0..2 plain
        let unverified = producer_batch(7, 0, 0, 2, true);
        let out = log.append_groups(&[AppendGroup::new(&unverified)]).unwrap();
        assert!(matches!(out[0], Err(SeqError::NotInTransaction { .. })), "KIP-890: not verified, not written");
        log.append_groups(&[verified(&unverified)]).unwrap(); // 2..4, producer 7 opens
        log.append_groups(&[verified(&producer_batch(8, 0, 0, 1, true))]).unwrap(); // 4, producer 8 opens
        log.append_groups(&[AppendGroup::new(&producer_batch(7, 0, 2, 1, true))]).unwrap(); // 5, continues
        assert_eq!(log.first_unstable_offset(), Some(2));
        let plain_inside = idempotent_batch(7, 0, 3, 1);
        assert!(matches!(log.append_groups(&[AppendGroup::new(&plain_inside)]).unwrap()[0], Err(_)));
        log.append_groups(&[AppendGroup::new(&marker(7, 0, false, 0))]).unwrap(); // 6: 7 aborts
        log.settle(6);
        assert_eq!(log.first_unstable_offset(), Some(2), "ended, but its marker is not below the high watermark");
        log.settle(7);
        assert_eq!(log.first_unstable_offset(), Some(4), "producer 8 is still open");
        assert_eq!(log.aborted_between(0, 100).unwrap(), vec![AbortedTxn { producer_id: 7, first_offset: 2 }]);
        assert!(log.aborted_between(7, 100).unwrap().is_empty(), "the marker is before 7");
        let late = producer_batch(7, 0, 3, 1, true);
        assert!(matches!(log.append_groups(&[AppendGroup::new(&late)]).unwrap()[0], Err(SeqError::NotInTransaction { .. })));
        assert!(matches!(
            log.append_groups(&[AppendGroup::new(&marker(7, 0, true, -5))]).unwrap()[0],
            Err(SeqError::CoordinatorFenced { .. })
        ));
        log.append_groups(&[AppendGroup::new(&marker(8, 0, true, 0))]).unwrap(); // 7: 8 commits
        log.settle(8);
        assert_eq!(log.first_unstable_offset(), None);
        assert_eq!(log.offsets().log_end_offset, 8);

        // A follower copies it all and ends in the same state.
        let mut follower = PartitionLog::open(&dir.path().join("f-0"), &config).unwrap();
        follower.append_replicated(&log.read(0, 1 << 20, true).unwrap().records).unwrap();
        assert_eq!(follower.aborted_between(0, 100).unwrap(), log.aborted_between(0, 100).unwrap());
        assert_eq!(follower.first_unstable_offset(), Some(2), "the leader's high watermark has not come yet");
        follower.settle(8);
        assert_eq!(follower.first_unstable_offset(), None);
        // Cutting producer 8's commit marker reopens its transaction; cutting 7's abort removes the entry.
        follower.truncate_to(7).unwrap();
        assert_eq!(follower.first_unstable_offset(), Some(4));
        follower.truncate_to(6).unwrap();
        assert_eq!(follower.first_unstable_offset(), Some(2), "7's transaction is open again from 2");
        assert!(follower.aborted_between(0, 100).unwrap().is_empty());
        assert!(follower.in_transaction(7, 0));

        // Reopened, the leader still knows the aborted transaction and that nothing is open.
        drop(log);
        let log = PartitionLog::open(&path, &config).unwrap();
        assert_eq!(log.aborted_between(0, 100).unwrap().len(), 1);
        assert_eq!(log.first_unstable_offset(), None);
        assert!(!log.in_transaction(7, 0));
    }

    #[test]
    fn compaction_drops_aborted_records_keeps_markers_and_stops_at_open_transactions() {
        let dir = tempfile::tempdir().unwrap();
        let config = StorageConfig::new(dir.path());
        let mut log = PartitionLog::open(&dir.path().join("t-0"), &config).unwrap();
        let keyed = |k: &str, producer: i64, seq: i32, transactional: bool| {
            use kafka_protocol::records::{Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType};
            let record = Record {
                transactional,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: 0,
                producer_id: producer,
                producer_epoch: 0,
                timestamp_type: TimestampType::Creation,
                offset: 0,
                sequence: seq,
                timestamp: 1,
                key: Some(Bytes::from(k.to_string())),
                value: Some(Bytes::from_static(b"v")),
                headers: Default::default(),
            };
            let mut buf = bytes::BytesMut::new();
            let options = RecordEncodeOptions { version: 2, compression: Compression::None };
            RecordBatchEncoder::encode(&mut buf, std::iter::once(&record), &options).unwrap();
            validate_batches(&buf.freeze(), 1 << 20).unwrap()
        };
        log.append_groups(&[AppendGroup::new(&keyed("a", -1, -1, false))]).unwrap(); // 0: a committed
        log.append_groups(&[verified(&keyed("a", 7, 0, true))]).unwrap(); // 1: a in 7's transaction
        log.append_groups(&[AppendGroup::new(&marker(7, 0, false, 0))]).unwrap(); // 2: aborted
        log.append_groups(&[verified(&keyed("b", 8, 0, true))]).unwrap(); // 3: b open
        log.append_groups(&[AppendGroup::new(&keyed("b", -1, -1, false))]).unwrap(); // 4
        log.append_groups(&[AppendGroup::new(&keyed("c", -1, -1, false))]).unwrap(); // 5 active
        let end = log.offsets().log_end_offset;
        log.settle(end);
        assert_eq!(log.compact(1_000, 100).unwrap(), 1, "only the aborted a goes");
        let read = log.read(0, 1 << 20, true).unwrap();
        let offsets: Vec<i64> = RecordBatchDecoder::decode_all(&mut read.records.clone())
            .unwrap()
            .iter()
            .flat_map(|s| s.records.iter().map(|r| r.offset))
            .collect();
        assert_eq!(offsets, vec![0, 2, 3, 4, 5], "a's committed value stays; the marker and the open part stay");

        // An abort whose marker lies past the first open transaction still hides its records:
        // x committed at 6, x in 9's transaction at 7, 10 opens at 8, 9 aborts at 9.
        log.append_groups(&[AppendGroup::new(&marker(8, 0, true, 0))]).unwrap(); // 6: b's transaction commits
        log.append_groups(&[AppendGroup::new(&keyed("x", -1, -1, false))]).unwrap(); // 7
        log.append_groups(&[verified(&keyed("x", 9, 0, true))]).unwrap(); // 8
        log.append_groups(&[verified(&keyed("y", 10, 0, true))]).unwrap(); // 9: open
        log.append_groups(&[AppendGroup::new(&marker(9, 0, false, 0))]).unwrap(); // 10
        log.append_groups(&[AppendGroup::new(&keyed("z", -1, -1, false))]).unwrap(); // 11 active
        let end = log.offsets().log_end_offset;
        log.settle(end);
        log.compact(1_000, 100).unwrap();
        let read = log.read(0, 1 << 20, true).unwrap();
        let kept: Vec<i64> = RecordBatchDecoder::decode_all(&mut read.records.clone())
            .unwrap()
            .iter()
            .flat_map(|s| s.records.iter().map(|r| r.offset))
            .collect();
        assert!(kept.contains(&7), "x's committed value is not replaced by its aborted one: {kept:?}");
    }

    #[test]
    fn idempotent_retries_are_answered_with_their_first_offsets_even_after_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let config = StorageConfig::new(dir.path());
        let path = dir.path().join("t-0");
        let first = idempotent_batch(7, 0, 0, 3);
        let second = idempotent_batch(7, 0, 3, 2);
        {
            let mut log = PartitionLog::open(&path, &config).unwrap();
            let plain = batch(4, 0, Compression::None);
            let out = log.append_groups(&[AppendGroup::new(&plain), AppendGroup::new(&first)]).unwrap();
            assert_eq!(out[1].as_ref().unwrap().base_offset, 4);
            // The retry of `first` in the same commit as `second`: only `second` is written.
            let out = log.append_groups(&[AppendGroup::new(&first), AppendGroup::new(&second)]).unwrap();
            assert_eq!(out[0].as_ref().unwrap().base_offset, 4, "duplicate gets its original offset");
            assert_eq!(out[1].as_ref().unwrap().base_offset, 7);
            assert_eq!(log.offsets().log_end_offset, 9);
        }
        let mut log = PartitionLog::open(&path, &config).unwrap();
        let out = log.append_groups(&[AppendGroup::new(&second)]).unwrap();
        assert_eq!(out[0].as_ref().unwrap().base_offset, 7, "producer state survived the reopen");
        let gap = idempotent_batch(7, 0, 9, 1);
        let fenced = idempotent_batch(7, -1, 5, 1);
        let out = log.append_groups(&[AppendGroup::new(&gap), AppendGroup::new(&fenced)]).unwrap();
        assert!(matches!(out[0], Err(SeqError::OutOfOrder { expected: 5, got: 9, .. })));
        assert!(matches!(out[1], Err(SeqError::Fenced { .. })));
        assert_eq!(log.offsets().log_end_offset, 9, "refused batches are not written");
    }

    #[test]
    fn idle_and_surplus_producers_are_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let config = StorageConfig::new(dir.path());
        let mut log = PartitionLog::open(&dir.path().join("t-0"), &config).unwrap();
        for producer in [1, 2, 3] {
            let b = idempotent_batch(producer, 0, 0, 1);
            log.append_groups(&[AppendGroup::new(&b)]).unwrap();
        }
        let now = crate::now_ms();
        assert_eq!(log.expire_producers(now, 3_600_000, 10).unwrap(), 0);
        assert_eq!(log.expire_producers(now, 3_600_000, 2).unwrap(), 1, "one over the cap");
        assert_eq!(log.expire_producers(now + 7_200_000, 3_600_000, 10).unwrap(), 2, "both idle");
        let resumed = idempotent_batch(3, 0, 1, 1);
        assert!(matches!(
            log.append_groups(&[AppendGroup::new(&resumed)]).unwrap()[0],
            Err(SeqError::OutOfOrder { .. })
        ));
        drop(log);
        let log = PartitionLog::open(&dir.path().join("t-0"), &config).unwrap();
        assert!(log.producer_states.is_empty(), "expiry is persisted");
    }

    #[test]
    fn retention_by_time_and_size_and_delete_records_move_the_log_start() {
        let dir = tempfile::tempdir().unwrap();
        let config = StorageConfig::new(dir.path());
        let path = dir.path().join("t-0");
        let mut log = PartitionLog::open(&path, &config).unwrap();
        for i in 0..10 {
            let b = batch(10, 1_000 * i, Compression::None); // batch i: timestamps 1000*i ..
            log.append_groups(&[AppendGroup::new(&b)]).unwrap();
        }
        let per_batch = log.log_bytes() / 10;
        // Time: cutoff 8000 - 3995 = 4005. Batches 0..=3 end before it; batch 4 ends at 4009 and stays.
        assert_eq!(log.enforce_retention(8_000, 3_995, -1, 100).unwrap(), (4, false));
        assert_eq!(log.offsets().log_start_offset, 40);
        assert!(matches!(log.read(39, 1 << 20, true), Err(LogError::OffsetOutOfRange { .. })));
        assert_eq!(log.offset_for_timestamp(0).unwrap(), Some((40, 4_000)), "lookups start at the log start");
        // Size: keep at most three batches' worth, two batches per call.
        assert_eq!(log.enforce_retention(8_000, -1, (per_batch * 3) as i64, 2).unwrap(), (2, true));
        assert_eq!(log.enforce_retention(8_000, -1, (per_batch * 3) as i64, 2).unwrap(), (1, false));
        assert_eq!(log.offsets().log_start_offset, 70);
        // DeleteRecords inside a batch: the start moves there, the batch stays readable from it.
        assert_eq!(log.delete_records_before(75).unwrap(), 75);
        assert_eq!(log.offset_for_timestamp(0).unwrap(), Some((75, 7_005)));
        assert!(matches!(log.delete_records_before(101), Err(LogError::OffsetOutOfRange { .. })));
        drop(log);
        let mut log = PartitionLog::open(&path, &config).unwrap();
        assert_eq!(
            log.offsets(),
            LogOffsets { log_start_offset: 75, log_end_offset: 100, high_watermark: 100, leader_epoch: None, last_stable_offset: 100, epoch_start_offset: -1 }
        );
        assert_eq!(log.log_bytes(), per_batch * 3);
        // Everything: the log is empty and continues at the same offsets.
        assert_eq!(log.delete_records_before(-1).unwrap(), 100);
        assert_eq!(log.log_bytes(), 0);
        let b = batch(1, 9_999, Compression::None);
        assert_eq!(log.append_groups(&[AppendGroup::new(&b)]).unwrap()[0].as_ref().unwrap().base_offset, 100);
    }

    #[test]
    fn compaction_keeps_the_latest_per_key_with_offsets_and_codec() {
        let dir = tempfile::tempdir().unwrap();
        let config = StorageConfig::new(dir.path());
        let mut log = PartitionLog::open(&dir.path().join("t-0"), &config).unwrap();
        let record = |k: &str, v: Option<&str>, ts: i64| NewRecord {
            key: Some(Bytes::from(k.to_string())),
            value: v.map(|v| Bytes::from(v.to_string())),
            headers: vec![("h".into(), Some(Bytes::from_static(b"x")))],
            timestamp: Some(ts),
        };
        let rounds = [
            vec![record("a", Some("a1"), 10), record("b", Some("b1"), 11), record("c", Some("c1"), 12)],
            vec![record("a", Some("a2"), 20), record("c", None, 21)],
            vec![record("b", Some("b2"), 30), record("d", None, 10_000)],
            vec![record("a", Some("a3"), 40)],
        ];
        for (i, records) in rounds.iter().enumerate() {
            let codec = if i % 2 == 0 { Compression::Lz4 } else { Compression::None };
            let b = validate_batches(&encode_batch(records, codec, 0, None).unwrap(), 1 << 20).unwrap();
            log.append_groups(&[AppendGroup::new(&b)]).unwrap();
        }
        // Offsets: a1 0, b1 1, c1 2 | a2 3, c-tombstone 4 | b2 5, d-tombstone 6 | a3 7 (active).
        assert_eq!(log.compact(1_000, 100).unwrap(), 5, "a1 b1 c1 a2 go; c's tombstone is old enough to go");
        let read = log.read(0, 1 << 20, true).unwrap();
        let sets = RecordBatchDecoder::decode_all(&mut read.records.clone()).unwrap();
        let kept: Vec<(i64, String, Option<String>)> = sets
            .iter()
            .flat_map(|s| s.records.iter())
            .map(|r| {
                let text = |b: &Option<Bytes>| b.as_ref().map(|b| String::from_utf8(b.to_vec()).unwrap());
                (r.offset, text(&r.key).unwrap(), text(&r.value))
            })
            .collect();
        assert_eq!(
            kept,
            vec![(5, "b".into(), Some("b2".into())), (6, "d".into(), None), (7, "a".into(), Some("a3".into()))],
            "latest per key, offsets kept; d's tombstone is recent and stays"
        );
        assert_eq!(sets[0].compression, Compression::Lz4, "codec kept");
        assert_eq!(log.offset_for_timestamp(0).unwrap().map(|(o, _)| o), Some(5));
        assert_eq!(log.compact(1_000, 100).unwrap(), 0, "compacting again changes nothing");
        assert_eq!(log.offsets().log_end_offset, 8);
    }

    #[test]
    fn map_grows_when_full() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = StorageConfig::new(dir.path());
        config.initial_map_bytes = 256 * 1024;
        config.max_map_bytes = 64 << 20;
        let mut log = PartitionLog::open(&dir.path().join("t-0"), &config).unwrap();
        for i in 0..200 {
            let b = batch(100, i * 100, Compression::None);
            log.append_groups(&[AppendGroup::new(&b)]).unwrap();
        }
        assert_eq!(log.offsets().log_end_offset, 20_000);
        assert!(log.map_bytes > 256 * 1024);
    }
}
