//! The controller quorum's Raft, by openraft: the log, vote and snapshot in
//! LMDB (`<data_dir>/__cluster_raft`), and the state machine, which is the
//! `ClusterMetadata` of `metadata.rs`.
//!
//! Every write transaction commits with fsync: a vote or a log entry a
//! controller has acknowledged survives its crash, which Raft's safety needs.
//! The state machine lives in memory and is rebuilt at start from the last
//! snapshot plus the committed log.
//!
//! Every value is a versioned postcard enum (`tributary_actors::stored`): log
//! entries (`StoredEntry`), the vote, the committed and purged log ids, the
//! snapshot and, inside it, the metadata it holds (`StoredMachineState`, the
//! bytes openraft also sends to followers). Log keys are raw big-endian
//! indexes. A store written before versioning is upgraded in place at open.

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
use tributary_actors::stored::{self, UpgradeError, Versioned};

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

fn encode<T: Versioned>(value: &T::Current) -> StoreResult<Vec<u8>> {
    stored::encode::<T>(value).map_err(io_error)
}

fn decode<T: Versioned>(bytes: &[u8]) -> StoreResult<T::Current> {
    stored::decode::<T>(bytes).map_err(io_error)
}

tributary_actors::stored_v1! {
    /// The format versions of a Raft log entry.
    enum StoredEntry(Entry<TypeConfig>) = "raft log entry";
}
tributary_actors::stored_v1! {
    /// The format versions of the vote.
    enum StoredVote(Vote<NodeId>) = "raft vote";
}
tributary_actors::stored_v1! {
    /// The format versions of the committed log id.
    enum StoredCommitted(Option<LogId<NodeId>>) = "raft committed log id";
}
tributary_actors::stored_v1! {
    /// The format versions of the last purged log id.
    enum StoredPurged(LogId<NodeId>) = "raft purged log id";
}
tributary_actors::stored_v1! {
    /// The format versions of the stored snapshot.
    enum StoredSnapshot(SnapshotRecord) = "raft snapshot";
}
/// The format versions of a snapshot's data: what followers install, too.
#[derive(Serialize, Deserialize)]
enum StoredMachineState {
    /// Before listeners and security: brokers with one address, no credentials or ACLs.
    V1(MachineStateV1),
    V2(MachineState),
}

impl Versioned for StoredMachineState {
    const RECORD: &'static str = "raft snapshot data";
    const NEWEST: u32 = 2;
    type Current = MachineState;

    fn from_current(value: &MachineState) -> Self {
        StoredMachineState::V2(value.clone())
    }

    fn into_current(self) -> MachineState {
        match self {
            StoredMachineState::V1(v1) => MachineState {
                last_applied: v1.last_applied,
                membership: v1.membership,
                metadata: ClusterMetadata {
                    brokers: v1.metadata.brokers.into_iter().map(|(id, b)| (id, b.into_current())).collect(),
                    topics: v1.metadata.topics,
                    topic_defaults: v1.metadata.topic_defaults,
                    security: Default::default(),
                },
            },
            StoredMachineState::V2(state) => state,
        }
    }

    /// Release aaeadfb's snapshot data predates the dynamic broker configs in
    /// the metadata: its layout is [`LegacyMachineState`].
    fn from_legacy(bytes: &[u8]) -> Result<Self, tributary_actors::stored::PostcardError> {
        let legacy: LegacyMachineState = tributary_actors::stored::postcard_decode(bytes)?;
        let metadata = ClusterMetadataV1 {
            brokers: legacy.metadata.brokers,
            topics: legacy.metadata.topics,
            topic_defaults: Default::default(),
        };
        Ok(StoredMachineState::V1(MachineStateV1 {
            last_applied: legacy.last_applied,
            membership: legacy.membership,
            metadata,
        }))
    }
}

/// `MachineState` as V1 stored it (frozen).
#[derive(Serialize, Deserialize)]
struct MachineStateV1 {
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, BasicNode>,
    metadata: ClusterMetadataV1,
}

/// `ClusterMetadata` as V1 stored it: brokers with one address, no security (frozen).
#[derive(Serialize, Deserialize)]
struct ClusterMetadataV1 {
    brokers: std::collections::BTreeMap<NodeId, BrokerRecordV1>,
    topics: std::collections::BTreeMap<String, super::metadata::TopicRecord>,
    topic_defaults: std::collections::BTreeMap<String, String>,
}

/// `BrokerRecord` as V1 stored it: the one (PLAINTEXT) listener's address (frozen).
#[derive(Serialize, Deserialize)]
struct BrokerRecordV1 {
    node_id: NodeId,
    host: String,
    port: i32,
    rack: Option<String>,
    region: Option<String>,
    fenced: bool,
    incarnation: u64,
}

impl BrokerRecordV1 {
    fn into_current(self) -> super::metadata::BrokerRecord {
        let plaintext = super::metadata::Endpoint { listener: "PLAINTEXT".into(), host: self.host, port: self.port };
        super::metadata::BrokerRecord {
            node_id: self.node_id,
            listeners: vec![plaintext],
            rack: self.rack,
            region: self.region,
            fenced: self.fenced,
            incarnation: self.incarnation,
        }
    }
}

/// `MachineState` as release aaeadfb stored it (frozen).
#[derive(Deserialize)]
struct LegacyMachineState {
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, BasicNode>,
    metadata: LegacyClusterMetadata,
}

/// `ClusterMetadata` as release aaeadfb stored it: no dynamic broker configs (frozen).
#[derive(Deserialize)]
struct LegacyClusterMetadata {
    brokers: std::collections::BTreeMap<NodeId, BrokerRecordV1>,
    topics: std::collections::BTreeMap<String, super::metadata::TopicRecord>,
}

/// Rewrites a legacy (aaeadfb) Raft store in the current format, in `wtxn`.
fn upgrade_legacy(
    log: Database<'_, U64<BigEndian>, RawBytes>,
    meta: Database<'_, Str, RawBytes>,
    wtxn: &mut heed::RwTxn,
) -> Result<usize, UpgradeError> {
    let mut rewritten = stored::upgrade_all::<StoredEntry, _>(log, wtxn)?;
    rewritten += stored::upgrade_one::<StoredVote>(meta, wtxn, VOTE_KEY)?;
    rewritten += stored::upgrade_one::<StoredCommitted>(meta, wtxn, COMMITTED_KEY)?;
    rewritten += stored::upgrade_one::<StoredPurged>(meta, wtxn, PURGED_KEY)?;
    Ok(rewritten + upgrade_legacy_snapshot(meta, wtxn)?)
}

/// A legacy snapshot's data is a legacy `MachineState`: both are rewritten.
fn upgrade_legacy_snapshot(meta: Database<'_, Str, RawBytes>, wtxn: &mut heed::RwTxn) -> Result<usize, UpgradeError> {
    let Some(legacy) = meta.get(wtxn, SNAPSHOT_KEY)? else { return Ok(0) };
    let format = |error| UpgradeError::Format { key: SNAPSHOT_KEY.to_string(), error };
    let mut snapshot = stored::decode_legacy::<StoredSnapshot>(legacy).map_err(format)?;
    snapshot.data = stored::upgrade::<StoredMachineState>(&snapshot.data).map_err(format)?;
    let value = stored::encode::<StoredSnapshot>(&snapshot).map_err(format)?;
    meta.put(wtxn, SNAPSHOT_KEY, &value)?;
    Ok(1)
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
        options.map_size(1 << 30).max_dbs(3);
        // Safety: this directory belongs to the controller's Raft store alone.
        let env = unsafe { options.open(&dir) }?;
        let wtxn = env.write_txn()?;
        let (log, meta) = env
            .create_databases_and_commit(wtxn, |opener, wtxn| -> Result<_, UpgradeError> {
                let log = opener.create_database(wtxn, Some("log"))?;
                let meta = opener.create_database(wtxn, Some("meta"))?;
                let format = opener.create_database(wtxn, Some(stored::FORMAT_DB))?;
                stored::ensure_format(format, wtxn, "raft store", |wtxn| upgrade_legacy(log, meta, wtxn))?;
                Ok(CommitOrAbort::<_, ()>::Commit((log, meta)))
            })?
            .unwrap_commit();
        Ok(RaftStore { env, log, meta })
    }

    fn get_meta<T: Versioned>(&self, key: &str) -> StoreResult<Option<T::Current>> {
        let rtxn = self.env.read_txn().map_err(io_error)?;
        match self.meta.get(&rtxn, key).map_err(io_error)? {
            Some(bytes) => Ok(Some(decode::<T>(bytes)?)),
            None => Ok(None),
        }
    }

    fn put_meta<T: Versioned>(&self, key: &str, value: &T::Current) -> StoreResult<()> {
        let bytes = encode::<T>(value)?;
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
            out.push(decode::<StoredEntry>(bytes)?);
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
            self.meta.put(&mut wtxn, PURGED_KEY, &encode::<StoredPurged>(purged)?).map_err(io_error)?;
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
        let last_purged_log_id = self.get_meta::<StoredPurged>(PURGED_KEY)?;
        let rtxn = self.env.read_txn().map_err(io_error)?;
        let last = match self.log.last(&rtxn).map_err(io_error)? {
            Some((_, bytes)) => Some(decode::<StoredEntry>(bytes)?.log_id),
            None => last_purged_log_id,
        };
        Ok(LogState { last_purged_log_id, last_log_id: last })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> StoreResult<()> {
        self.put_meta::<StoredVote>(VOTE_KEY, vote)
    }

    async fn read_vote(&mut self) -> StoreResult<Option<Vote<NodeId>>> {
        self.get_meta::<StoredVote>(VOTE_KEY)
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> StoreResult<()> {
        self.put_meta::<StoredCommitted>(COMMITTED_KEY, &committed)
    }

    async fn read_committed(&mut self) -> StoreResult<Option<LogId<NodeId>>> {
        Ok(self.get_meta::<StoredCommitted>(COMMITTED_KEY)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StoreResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let mut wtxn = self.env.write_txn().map_err(io_error)?;
        for entry in entries {
            self.log.put(&mut wtxn, &entry.log_id.index, &encode::<StoredEntry>(&entry)?).map_err(io_error)?;
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
/// Stored as `StoredMachineState::V2`, so this layout (and `ClusterMetadata`'s)
/// is frozen: a new field means a V3.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct MachineState {
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, BasicNode>,
    metadata: ClusterMetadata,
}

/// The snapshot as stored: openraft's meta and the `StoredMachineState` bytes.
#[derive(Clone, Serialize, Deserialize)]
struct SnapshotRecord {
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
            state = stored::decode::<StoredMachineState>(&snapshot.data)?;
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
        let data = encode::<StoredMachineState>(&state)?;
        let n = self.snapshot_count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let snapshot_id = match &state.last_applied {
            Some(id) => format!("{}-{}-{n}", id.leader_id, id.index),
            None => format!("empty-{n}"),
        };
        let meta =
            SnapshotMeta { last_log_id: state.last_applied, last_membership: state.membership.clone(), snapshot_id };
        self.store
            .put_meta::<StoredSnapshot>(SNAPSHOT_KEY, &SnapshotRecord { meta: meta.clone(), data: data.clone() })?;
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
        let installed = decode::<StoredMachineState>(&data)?;
        self.store.put_meta::<StoredSnapshot>(SNAPSHOT_KEY, &SnapshotRecord { meta: meta.clone(), data })?;
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::cluster::metadata::BrokerRecord;

    /// Node 1's Raft store from a three-broker cluster of release aaeadfb
    /// (scripts/make_storage_fixtures.py): node 3 led term 1; topic
    /// `replicated` was created, then its retention.ms changed 5,201 times.
    const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/storage-aaeadfb");
    /// openraft's default policy: a snapshot after 5,000 applied entries (0 to 4,999),
    /// keeping the 1,000 entries before it in the log.
    const SNAPSHOT_INDEX: u64 = 4_999;
    const LAST_PURGED_INDEX: u64 = 3_999;

    fn legacy_store() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let raft = dir.path().join(RAFT_DIR);
        std::fs::create_dir(&raft).unwrap();
        std::fs::copy(Path::new(FIXTURE).join("cluster").join(RAFT_DIR).join("data.mdb"), raft.join("data.mdb"))
            .unwrap();
        dir
    }

    fn replicated_topic_id() -> [u8; 16] {
        let ids = std::fs::read_to_string(Path::new(FIXTURE).join("topic-ids.txt")).unwrap();
        let hex = ids.lines().find_map(|l| l.strip_prefix("cluster replicated ")).unwrap();
        *uuid::Uuid::parse_str(hex).unwrap().as_bytes()
    }

    fn configs(retention_ms: &str) -> BTreeMap<String, String> {
        [("min.insync.replicas", "2"), ("retention.ms", retention_ms)]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn term_node_index(log_id: &LogId<NodeId>) -> (u64, NodeId, u64) {
        (log_id.leader_id.term, log_id.leader_id.node_id, log_id.index)
    }

    /// The log kept after the snapshot: `retention.ms` changes of `replicated`, the last to 86400000.
    async fn check_log(store: &mut RaftStore) -> LogId<NodeId> {
        assert_eq!(store.read_vote().await.unwrap(), Some(Vote::new_committed(1, 3)));
        let state = store.get_log_state().await.unwrap();
        let purged = state.last_purged_log_id.unwrap();
        let last = state.last_log_id.unwrap();
        assert_eq!(term_node_index(&purged), (1, 3, LAST_PURGED_INDEX));
        assert_eq!(store.read_committed().await.unwrap(), Some(last));
        let entries = store.try_get_log_entries(purged.index + 1..=last.index).await.unwrap();
        let indexes: Vec<u64> = entries.iter().map(|e| e.log_id.index).collect();
        assert_eq!(indexes, (purged.index + 1..=last.index).collect::<Vec<_>>());
        assert!(last.index > 5_200, "at least the 5,201 config changes: {}", last.index);
        for entry in &entries {
            assert_eq!((entry.log_id.leader_id.term, entry.log_id.leader_id.node_id), (1, 3));
            let EntryPayload::Normal(Command::AlterTopicConfig { name, configs: set }) = &entry.payload else {
                panic!("entry {} is {:?}", entry.log_id.index, entry.payload)
            };
            assert_eq!(name, "replicated");
            if entry.log_id == last {
                assert_eq!(set, &configs("86400000"));
            } else {
                let retention: i64 = set["retention.ms"].parse().unwrap();
                assert!((1_000_000..1_005_200).contains(&retention), "entry {}: {set:?}", entry.log_id.index);
                assert_eq!(set, &configs(&retention.to_string()));
            }
        }
        last
    }

    /// What the snapshot holds: three registered brokers and the topic, RF=3.
    fn check_metadata(metadata: &ClusterMetadata, retention_ms: Option<&str>) {
        let brokers: Vec<&BrokerRecord> = metadata.brokers.values().collect();
        assert_eq!(brokers.len(), 3);
        for (i, broker) in (1..).zip(brokers) {
            assert_eq!(broker.node_id, i);
            let plaintext = crate::cluster::metadata::Endpoint {
                listener: "PLAINTEXT".into(),
                host: format!("127.0.0.{i}"),
                port: 39192,
            };
            assert_eq!(broker.listeners, vec![plaintext], "the one listener of a V1 record");
            assert_eq!((broker.rack.clone(), broker.region.clone()), (Some(format!("rack{i}")), None));
            assert!(!broker.fenced && broker.incarnation > 1_790_000_000_000, "{broker:?}");
        }
        let topic = &metadata.topics["replicated"];
        assert_eq!(topic.id, replicated_topic_id());
        assert_eq!(topic.configs["min.insync.replicas"], "2");
        if let Some(retention_ms) = retention_ms {
            assert_eq!(topic.configs, configs(retention_ms));
        }
        assert_eq!(topic.partitions.len(), 2);
        for partition in &topic.partitions {
            let mut replicas = partition.replicas.clone();
            replicas.sort_unstable();
            assert_eq!(replicas, [1, 2, 3]);
            assert_eq!(partition.isr.len(), 3);
            assert!(partition.leader.is_some_and(|l| partition.isr.contains(&l)), "{partition:?}");
        }
    }

    async fn check_machine(store: &mut RaftStore, last: LogId<NodeId>) {
        let (mut machine, metadata) = MetadataMachine::open(store.clone()).unwrap();
        let snapshot = machine.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(snapshot.meta.last_log_id.map(|id| term_node_index(&id)), Some((1, 3, SNAPSHOT_INDEX)));
        let (applied, membership) = machine.applied_state().await.unwrap();
        assert_eq!(applied.map(|id| id.index), Some(SNAPSHOT_INDEX));
        assert_eq!(membership.membership().voter_ids().collect::<Vec<_>>(), [1, 2, 3]);
        check_metadata(&metadata.borrow(), None);
        // Replaying the log after the snapshot reaches the last config change.
        let after = store.try_get_log_entries(SNAPSHOT_INDEX + 1..=last.index).await.unwrap();
        machine.apply(after).await.unwrap();
        check_metadata(&metadata.borrow(), Some("86400000"));
    }

    #[tokio::test]
    async fn a_legacy_raft_store_is_upgraded_with_its_log_vote_and_snapshot_intact() {
        let dir = legacy_store();
        for _pass in ["legacy", "upgraded"] {
            let mut store = RaftStore::open(dir.path()).unwrap();
            let last = check_log(&mut store).await;
            check_machine(&mut store, last).await;
        }
        // Upgraded, the store takes new writes and reads them back.
        {
            let mut store = RaftStore::open(dir.path()).unwrap();
            store.save_vote(&Vote::new_committed(2, 1)).await.unwrap();
            let (mut machine, _) = MetadataMachine::open(store.clone()).unwrap();
            let entries = store.try_get_log_entries(SNAPSHOT_INDEX + 1..).await.unwrap();
            machine.apply(entries).await.unwrap();
            machine.build_snapshot().await.unwrap();
        }
        let mut store = RaftStore::open(dir.path()).unwrap();
        assert_eq!(store.read_vote().await.unwrap(), Some(Vote::new_committed(2, 1)));
        let (_, metadata) = MetadataMachine::open(store).unwrap();
        check_metadata(&metadata.borrow(), Some("86400000"));
    }

    #[tokio::test]
    async fn a_raft_value_of_an_unknown_version_is_a_storage_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = RaftStore::open(dir.path()).unwrap();
        let mut wtxn = store.env.write_txn().unwrap();
        // Variant index 1: format version 2 of the vote, which this build does not know.
        store.meta.put(&mut wtxn, VOTE_KEY, &[1, 0, 0, 0]).unwrap();
        wtxn.commit().unwrap();
        let error = store.read_vote().await.unwrap_err().to_string();
        assert!(error.contains("raft vote is format version 2, but this build reads versions 1 to 1"), "{error}");
    }
}
