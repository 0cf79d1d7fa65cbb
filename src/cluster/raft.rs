//! The controller quorum's Raft, by openraft: the log, vote and snapshot in
//! LMDB (`<data_dir>/__cluster_raft`), and the state machine, which is the
//! `ClusterMetadata` of `metadata.rs`.
//!
//! Every write transaction commits with fsync: a vote or a log entry a
//! controller has acknowledged survives its crash, which Raft's safety needs.
//! The state machine lives in memory and is rebuilt at start from the last
//! snapshot plus the committed log.

use std::fmt::Debug;
use std::io::Cursor;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::{Arc, Mutex};

use heed::byteorder::BigEndian;
use heed::types::{Bytes as RawBytes, Str, U64};
use heed::{CommitOrAbort, Database, Env, EnvOpenOptions, WithoutTls};
use openraft::storage::{LogFlushed, RaftLogStorage, RaftStateMachine};
use openraft::{
    AnyError, BasicNode, Entry, EntryPayload, LogId, LogState, RaftLogReader, RaftSnapshotBuilder, Snapshot,
    SnapshotMeta, StorageError, StorageIOError, StoredMembership, Vote,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::metadata::{ClusterMetadata, Command, CommandResult, NodeId};

openraft::declare_raft_types!(
    /// Tributary's controller Raft: commands change `ClusterMetadata`.
    pub TypeConfig:
        D = Command,
        R = CommandResult,
        NodeId = NodeId,
        Node = BasicNode,
        AsyncRuntime = super::raft_runtime::ClusterRuntime,
);

pub type Raft = openraft::Raft<TypeConfig>;
type StoreResult<T> = Result<T, StorageError<NodeId>>;

const RAFT_DIR: &str = "__cluster_raft";
const VOTE_KEY: &str = "vote";
const COMMITTED_KEY: &str = "committed";
const PURGED_KEY: &str = "last_purged";
const SNAPSHOT_KEY: &str = "snapshot";
/// Entries one read returns at most: bounds a replication message.
const MAX_ENTRIES_PER_READ: usize = 4096;

fn io_error(e: impl std::fmt::Display) -> StorageError<NodeId> {
    StorageIOError::write(AnyError::error(e.to_string())).into()
}

fn encode<T: Serialize>(value: &T) -> StoreResult<Vec<u8>> {
    postcard::to_stdvec(value).map_err(io_error)
}

fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> StoreResult<T> {
    postcard::from_bytes(bytes).map_err(io_error)
}

/// The LMDB environment holding the Raft log, vote and snapshot. Cheap to clone.
#[derive(Clone)]
pub struct RaftStore {
    env: Env<WithoutTls>,
    log: Database<'static, U64<BigEndian>, RawBytes>,
    meta: Database<'static, Str, RawBytes>,
}

impl RaftStore {
    pub fn open(data_dir: &Path) -> anyhow::Result<RaftStore> {
        let dir = data_dir.join(RAFT_DIR);
        std::fs::create_dir_all(&dir)?;
        let mut options = EnvOpenOptions::new().read_txn_without_tls();
        options.map_size(1 << 30).max_dbs(2);
        // Safety: this directory belongs to the controller's Raft store alone.
        let env = unsafe { options.open(&dir) }?;
        let wtxn = env.write_txn()?;
        let (log, meta) = env
            .create_databases_and_commit(wtxn, |opener, wtxn| -> heed::Result<_> {
                Ok(CommitOrAbort::<_, ()>::Commit((
                    opener.create_database(wtxn, Some("log"))?,
                    opener.create_database(wtxn, Some("meta"))?,
                )))
            })?
            .unwrap_commit();
        Ok(RaftStore { env, log, meta })
    }

    fn get_meta<T: for<'a> Deserialize<'a>>(&self, key: &str) -> StoreResult<Option<T>> {
        let rtxn = self.env.read_txn().map_err(io_error)?;
        match self.meta.get(&rtxn, key).map_err(io_error)? {
            Some(bytes) => Ok(Some(decode(bytes)?)),
            None => Ok(None),
        }
    }

    fn put_meta<T: Serialize>(&self, key: &str, value: &T) -> StoreResult<()> {
        let bytes = encode(value)?;
        let mut wtxn = self.env.write_txn().map_err(io_error)?;
        self.meta.put(&mut wtxn, key, &bytes).map_err(io_error)?;
        wtxn.commit().map_err(io_error)
    }

    fn entries(&self, range: impl RangeBounds<u64>) -> StoreResult<Vec<Entry<TypeConfig>>> {
        let rtxn = self.env.read_txn().map_err(io_error)?;
        let range = (range.start_bound().cloned(), range.end_bound().cloned());
        let mut out = Vec::new();
        for item in self.log.range(&rtxn, &range).map_err(io_error)? {
            let (_, bytes) = item.map_err(io_error)?;
            out.push(decode(bytes)?);
            if out.len() >= MAX_ENTRIES_PER_READ {
                break;
            }
        }
        Ok(out)
    }

    /// Deletes log entries in `range`.
    fn delete(&self, range: (Bound<u64>, Bound<u64>), purged: Option<&LogId<NodeId>>) -> StoreResult<()> {
        let mut wtxn = self.env.write_txn().map_err(io_error)?;
        self.log.delete_range(&mut wtxn, &range).map_err(io_error)?;
        if let Some(purged) = purged {
            self.meta.put(&mut wtxn, PURGED_KEY, &encode(purged)?).map_err(io_error)?;
        }
        wtxn.commit().map_err(io_error)
    }
}

impl RaftLogReader<TypeConfig> for RaftStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> StoreResult<Vec<Entry<TypeConfig>>> {
        self.entries(range)
    }
}

impl RaftLogStorage<TypeConfig> for RaftStore {
    type LogReader = RaftStore;

    async fn get_log_state(&mut self) -> StoreResult<LogState<TypeConfig>> {
        let last_purged_log_id: Option<LogId<NodeId>> = self.get_meta(PURGED_KEY)?;
        let rtxn = self.env.read_txn().map_err(io_error)?;
        let last = match self.log.last(&rtxn).map_err(io_error)? {
            Some((_, bytes)) => Some(decode::<Entry<TypeConfig>>(bytes)?.log_id),
            None => last_purged_log_id,
        };
        Ok(LogState { last_purged_log_id, last_log_id: last })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> StoreResult<()> {
        self.put_meta(VOTE_KEY, vote)
    }

    async fn read_vote(&mut self) -> StoreResult<Option<Vote<NodeId>>> {
        self.get_meta(VOTE_KEY)
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> StoreResult<()> {
        self.put_meta(COMMITTED_KEY, &committed)
    }

    async fn read_committed(&mut self) -> StoreResult<Option<LogId<NodeId>>> {
        Ok(self.get_meta::<Option<LogId<NodeId>>>(COMMITTED_KEY)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StoreResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let mut wtxn = self.env.write_txn().map_err(io_error)?;
        for entry in entries {
            self.log.put(&mut wtxn, &entry.log_id.index, &encode(&entry)?).map_err(io_error)?;
        }
        // Commit is the fsync: only then is the append durable.
        let result = wtxn.commit().map_err(|e| std::io::Error::other(e.to_string()));
        let failed = result.as_ref().err().map(|e| io_error(e));
        callback.log_io_completed(result);
        failed.map_or(Ok(()), Err)
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> StoreResult<()> {
        self.delete((Bound::Included(log_id.index), Bound::Unbounded), None)
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> StoreResult<()> {
        self.delete((Bound::Unbounded, Bound::Included(log_id.index)), Some(&log_id))
    }
}

/// What a snapshot holds: the metadata and where in the log it stands.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct MachineState {
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, BasicNode>,
    metadata: ClusterMetadata,
}

#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, BasicNode>,
    data: Vec<u8>,
}

/// The state machine: applies committed commands and publishes each new
/// `ClusterMetadata` on a watch for the broker to act on. Cheap to clone.
#[derive(Clone)]
pub struct MetadataMachine {
    state: Arc<Mutex<MachineState>>,
    store: RaftStore,
    published: Arc<watch::Sender<Arc<ClusterMetadata>>>,
    snapshot_count: Arc<std::sync::atomic::AtomicU64>,
}

impl MetadataMachine {
    /// Starts from the stored snapshot, if any.
    pub fn open(store: RaftStore) -> anyhow::Result<(MetadataMachine, watch::Receiver<Arc<ClusterMetadata>>)> {
        let mut state = MachineState::default();
        if let Some(snapshot) = store.get_meta::<StoredSnapshot>(SNAPSHOT_KEY).map_err(|e| anyhow::anyhow!("{e}"))? {
            state = postcard::from_bytes(&snapshot.data)?;
        }
        let (tx, rx) = watch::channel(Arc::new(state.metadata.clone()));
        let machine = MetadataMachine {
            state: Arc::new(Mutex::new(state)),
            store,
            published: Arc::new(tx),
            snapshot_count: Default::default(),
        };
        Ok((machine, rx))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MachineState> {
        // A panic while holding this lock would be a bug in `apply`; the state is still consistent
        // (apply mutates a clone-free struct field by field), so keep serving.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl RaftSnapshotBuilder<TypeConfig> for MetadataMachine {
    async fn build_snapshot(&mut self) -> StoreResult<Snapshot<TypeConfig>> {
        let state = self.lock().clone();
        let data = encode(&state)?;
        let n = self.snapshot_count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let snapshot_id = match &state.last_applied {
            Some(id) => format!("{}-{}-{n}", id.leader_id, id.index),
            None => format!("empty-{n}"),
        };
        let meta =
            SnapshotMeta { last_log_id: state.last_applied, last_membership: state.membership.clone(), snapshot_id };
        self.store.put_meta(SNAPSHOT_KEY, &StoredSnapshot { meta: meta.clone(), data: data.clone() })?;
        Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(data)) })
    }
}

impl RaftStateMachine<TypeConfig> for MetadataMachine {
    type SnapshotBuilder = MetadataMachine;

    async fn applied_state(&mut self) -> StoreResult<(Option<LogId<NodeId>>, StoredMembership<NodeId, BasicNode>)> {
        let state = self.lock();
        Ok((state.last_applied, state.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> StoreResult<Vec<CommandResult>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let mut results = Vec::new();
        let metadata = {
            let mut state = self.lock();
            for entry in entries {
                state.last_applied = Some(entry.log_id);
                let result = match &entry.payload {
                    EntryPayload::Blank => CommandResult::default(),
                    EntryPayload::Normal(command) => state.metadata.apply(command),
                    EntryPayload::Membership(membership) => {
                        state.membership = StoredMembership::new(Some(entry.log_id), membership.clone());
                        CommandResult::default()
                    }
                };
                results.push(result);
            }
            Arc::new(state.metadata.clone())
        };
        self.published.send_replace(metadata);
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> StoreResult<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> StoreResult<()> {
        let data = snapshot.into_inner();
        let installed: MachineState = decode(&data)?;
        self.store.put_meta(SNAPSHOT_KEY, &StoredSnapshot { meta: meta.clone(), data })?;
        let metadata = Arc::new(installed.metadata.clone());
        *self.lock() = installed;
        self.published.send_replace(metadata);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> StoreResult<Option<Snapshot<TypeConfig>>> {
        Ok(self
            .store
            .get_meta::<StoredSnapshot>(SNAPSHOT_KEY)?
            .map(|s| Snapshot { meta: s.meta, snapshot: Box::new(Cursor::new(s.data)) }))
    }
}
