//! Committed consumer-group offsets and group records, in one LMDB
//! environment: `<data_dir>/__consumer_offsets`.
//!
//! - `offsets`: `group \0 topic \0 partition(BE i32)` -> `StoredCommittedOffset`
//! - `groups`:  `group` -> `StoredGroupRecord` (protocol type, generation,
//!   when the group last became empty)
//! - `pending`: `producer id(BE i64) group \0 topic \0 partition(BE i32)` ->
//!   `StoredCommittedOffset`: offsets committed in an open transaction
//!   (TxnOffsetCommit), moved to `offsets` or dropped by its marker.
//! - `format`: the storage format marker. Values are versioned postcard (see `stored`).
//!
//! Every commit is its own write transaction, fsynced before the commit is
//! acknowledged: an acknowledged OffsetCommit survives a crash.

use std::path::Path;

use heed::types::{Bytes as RawBytes, Str};
use heed::{CommitOrAbort, Database, Env, EnvOpenOptions, WithoutTls};
use serde::{Deserialize, Serialize};

use crate::stored::{self, FormatError, UpgradeError};

const OFFSETS_DIR: &str = "__consumer_offsets";

/// Stored as `StoredCommittedOffset::V1`, so this layout is frozen: a new field means a V2.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommittedOffset {
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: Option<String>,
    pub commit_time_ms: i64,
}

/// Stored as `StoredGroupRecord::V1`, so this layout is frozen: a new field means a V2.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupRecord {
    pub protocol_type: String,
    pub generation: i32,
    /// When the group last had no members; `None` while it has some.
    pub empty_since_ms: Option<i64>,
}

/// A `(topic, partition)` pair.
pub type TopicPartition = (String, i32);

crate::stored_v1! {
    /// The format versions of a committed offset.
    enum StoredCommittedOffset(CommittedOffset) = "committed offset";
}

crate::stored_v1! {
    /// The format versions of a group record.
    enum StoredGroupRecord(GroupRecord) = "group record";
}

#[derive(Debug)]
pub enum StoreError {
    Storage(heed::Error),
    Io {
        dir: std::path::PathBuf,
        error: std::io::Error,
    },
    /// A stored value (at `key`) in a format this build cannot read.
    Format {
        key: String,
        error: FormatError,
    },
    /// Group ids are stored NUL-separated from topic names, so they cannot hold one.
    NulInGroupId,
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::Storage(e) => write!(f, "offset store: lmdb: {e}"),
            StoreError::Io { dir, error } => write!(f, "offset store: {}: {error}", dir.display()),
            StoreError::Format { key, error } => write!(f, "offset store, key {key}: {error}"),
            StoreError::NulInGroupId => f.write_str("offset store: group id contains a NUL byte"),
        }
    }
}

impl std::error::Error for StoreError {}

impl From<heed::Error> for StoreError {
    fn from(e: heed::Error) -> Self {
        StoreError::Storage(e)
    }
}

impl From<UpgradeError> for StoreError {
    fn from(e: UpgradeError) -> Self {
        match e {
            UpgradeError::Storage(e) => StoreError::Storage(e),
            UpgradeError::Store(error) => StoreError::Format { key: stored::FORMAT_KEY.to_string(), error },
            UpgradeError::Format { key, error } => StoreError::Format { key, error },
        }
    }
}

fn decode_offset(key: &[u8], value: &[u8]) -> Result<CommittedOffset, StoreError> {
    stored::decode::<StoredCommittedOffset>(value)
        .map_err(|error| StoreError::Format { key: stored::describe_key(key), error })
}

fn offset_key(group: &str, topic: &str, partition: i32) -> Vec<u8> {
    let mut key = Vec::with_capacity(group.len() + topic.len() + 6);
    key.extend_from_slice(group.as_bytes());
    key.push(0);
    key.extend_from_slice(topic.as_bytes());
    key.push(0);
    key.extend_from_slice(&partition.to_be_bytes());
    key
}

fn group_prefix(group: &str) -> Vec<u8> {
    let mut key = group.as_bytes().to_vec();
    key.push(0);
    key
}

/// Parses `group \0 topic \0 partition` back. Group ids and topic names
/// contain no NUL (topics by Kafka's rules; group ids are checked on commit).
fn parse_offset_key(key: &[u8]) -> Option<(String, TopicPartition)> {
    let (rest, partition) = key.split_at(key.len().checked_sub(4)?);
    let partition = i32::from_be_bytes(partition.try_into().ok()?);
    let rest = rest.strip_suffix(&[0])?;
    let split = rest.iter().position(|b| *b == 0)?;
    let group = std::str::from_utf8(&rest[..split]).ok()?.to_string();
    let topic = std::str::from_utf8(&rest[split + 1..]).ok()?.to_string();
    Some((group, (topic, partition)))
}

pub struct OffsetStore {
    env: Env<WithoutTls>,
    offsets: Database<'static, RawBytes, RawBytes>,
    groups: Database<'static, Str, RawBytes>,
    pending: Database<'static, RawBytes, RawBytes>,
}

impl OffsetStore {
    pub fn open(data_dir: &Path) -> Result<OffsetStore, StoreError> {
        let dir = data_dir.join(OFFSETS_DIR);
        std::fs::create_dir_all(&dir).map_err(|error| StoreError::Io { dir: dir.clone(), error })?;
        let mut options = EnvOpenOptions::new().read_txn_without_tls();
        options.map_size(1 << 30).max_dbs(4);
        // Safety: this directory belongs to the offset store alone.
        let env = unsafe { options.open(&dir) }?;
        let wtxn = env.write_txn()?;
        let (offsets, groups, pending) = env
            .create_databases_and_commit(wtxn, |opener, wtxn| -> Result<_, UpgradeError> {
                let offsets = opener.create_database::<RawBytes, RawBytes>(wtxn, Some("offsets"))?;
                let groups = opener.create_database::<Str, RawBytes>(wtxn, Some("groups"))?;
                let pending = opener.create_database::<RawBytes, RawBytes>(wtxn, Some("pending"))?;
                let format = opener.create_database(wtxn, Some(stored::FORMAT_DB))?;
                stored::ensure_format(format, wtxn, "offset store", |wtxn| {
                    let offsets = stored::upgrade_all::<StoredCommittedOffset, _>(offsets, wtxn)?;
                    Ok(offsets + stored::upgrade_all::<StoredGroupRecord, _>(groups, wtxn)?)
                })?;
                Ok(CommitOrAbort::<_, ()>::Commit((offsets, groups, pending)))
            })?
            .unwrap_commit();
        Ok(OffsetStore { env, offsets, groups, pending })
    }

    /// Writes all `offsets` of one commit in one fsynced transaction.
    pub fn commit(&self, group: &str, offsets: &[(TopicPartition, CommittedOffset)]) -> Result<(), StoreError> {
        if group.contains('\0') {
            return Err(StoreError::NulInGroupId);
        }
        let mut wtxn = self.env.write_txn()?;
        for ((topic, partition), committed) in offsets {
            let key = offset_key(group, topic, *partition);
            let value = stored::encode::<StoredCommittedOffset>(committed)
                .map_err(|error| StoreError::Format { key: stored::describe_key(&key), error })?;
            self.offsets.put(&mut wtxn, &key, &value)?;
        }
        wtxn.commit()?;
        Ok(())
    }

    /// Offsets `producer_id` commits to `group` in its open transaction:
    /// kept (fsynced) until its marker (`complete_transaction`).
    pub fn commit_pending(
        &self,
        producer_id: i64,
        group: &str,
        offsets: &[(TopicPartition, CommittedOffset)],
    ) -> Result<(), StoreError> {
        if group.contains('\0') {
            return Err(StoreError::NulInGroupId);
        }
        let mut wtxn = self.env.write_txn()?;
        for ((topic, partition), committed) in offsets {
            let mut key = producer_id.to_be_bytes().to_vec();
            key.extend_from_slice(&offset_key(group, topic, *partition));
            let value = stored::encode::<StoredCommittedOffset>(committed)
                .map_err(|error| StoreError::Format { key: stored::describe_key(&key), error })?;
            self.pending.put(&mut wtxn, &key, &value)?;
        }
        wtxn.commit()?;
        Ok(())
    }

    /// Ends `producer_id`'s transaction for every group here: its pending
    /// offsets become committed (`commit`) or are dropped, in one
    /// transaction. Answers how many there were.
    pub fn complete_transaction(&self, producer_id: i64, commit: bool) -> Result<usize, StoreError> {
        let prefix = producer_id.to_be_bytes();
        let mut wtxn = self.env.write_txn()?;
        let found: Vec<(Vec<u8>, Vec<u8>)> = self
            .pending
            .prefix_iter(&wtxn, &prefix)?
            .map(|entry| entry.map(|(key, value)| (key.to_vec(), value.to_vec())))
            .collect::<Result<_, _>>()?;
        for (key, value) in &found {
            self.pending.delete(&mut wtxn, key)?;
            if commit {
                self.offsets.put(&mut wtxn, &key[prefix.len()..], value)?;
            }
        }
        wtxn.commit()?;
        Ok(found.len())
    }

    /// The partitions of `group` with offsets pending in an open transaction
    /// (at most `MAX_PENDING_SCAN` pending entries looked at).
    pub fn pending_partitions(&self, group: &str) -> Result<Vec<TopicPartition>, StoreError> {
        const MAX_PENDING_SCAN: usize = 100_000;
        let rtxn = self.env.read_txn()?;
        let mut out = Vec::new();
        for entry in self.pending.iter(&rtxn)?.take(MAX_PENDING_SCAN) {
            let (key, _) = entry?;
            if let Some((g, tp)) = key.get(8..).and_then(parse_offset_key) {
                if g == group && !out.contains(&tp) {
                    out.push(tp);
                }
            }
        }
        Ok(out)
    }

    /// Every committed offset of `group`.
    pub fn fetch_all(&self, group: &str) -> Result<Vec<(TopicPartition, CommittedOffset)>, StoreError> {
        let rtxn = self.env.read_txn()?;
        let mut out = Vec::new();
        for entry in self.offsets.prefix_iter(&rtxn, &group_prefix(group))? {
            let (key, value) = entry?;
            let Some((_, tp)) = parse_offset_key(key) else { continue };
            out.push((tp, decode_offset(key, value)?));
        }
        Ok(out)
    }

    pub fn fetch(&self, group: &str, topic: &str, partition: i32) -> Result<Option<CommittedOffset>, StoreError> {
        let rtxn = self.env.read_txn()?;
        let key = offset_key(group, topic, partition);
        match self.offsets.get(&rtxn, &key)? {
            Some(value) => Ok(Some(decode_offset(&key, value)?)),
            None => Ok(None),
        }
    }

    /// Removes the given offsets (OffsetDelete); returns how many existed.
    pub fn delete_offsets(&self, group: &str, partitions: &[TopicPartition]) -> Result<usize, StoreError> {
        let mut wtxn = self.env.write_txn()?;
        let mut removed = 0;
        for (topic, partition) in partitions {
            if self.offsets.delete(&mut wtxn, &offset_key(group, topic, *partition))? {
                removed += 1;
            }
        }
        wtxn.commit()?;
        Ok(removed)
    }

    /// Removes a group's record and all its offsets (DeleteGroups, expiry).
    pub fn delete_group(&self, group: &str) -> Result<(), StoreError> {
        let mut wtxn = self.env.write_txn()?;
        let keys: Vec<Vec<u8>> = self
            .offsets
            .prefix_iter(&wtxn, &group_prefix(group))?
            .map(|entry| entry.map(|(key, _)| key.to_vec()))
            .collect::<Result<_, _>>()?;
        for key in keys {
            self.offsets.delete(&mut wtxn, &key)?;
        }
        self.groups.delete(&mut wtxn, group)?;
        wtxn.commit()?;
        Ok(())
    }

    pub fn group(&self, group: &str) -> Result<Option<GroupRecord>, StoreError> {
        let rtxn = self.env.read_txn()?;
        match self.groups.get(&rtxn, group)? {
            Some(value) => Ok(Some(
                stored::decode::<StoredGroupRecord>(value)
                    .map_err(|error| StoreError::Format { key: group.to_string(), error })?,
            )),
            None => Ok(None),
        }
    }

    pub fn put_group(&self, group: &str, record: &GroupRecord) -> Result<(), StoreError> {
        let value = stored::encode::<StoredGroupRecord>(record)
            .map_err(|error| StoreError::Format { key: group.to_string(), error })?;
        let mut wtxn = self.env.write_txn()?;
        self.groups.put(&mut wtxn, group, &value)?;
        wtxn.commit()?;
        Ok(())
    }

    /// Every group that has a record or committed offsets.
    pub fn group_ids(&self) -> Result<Vec<String>, StoreError> {
        let rtxn = self.env.read_txn()?;
        let mut ids = std::collections::BTreeSet::new();
        for entry in self.groups.iter(&rtxn)? {
            ids.insert(entry?.0.to_string());
        }
        for entry in self.offsets.iter(&rtxn)? {
            if let Some((group, _)) = parse_offset_key(entry?.0) {
                ids.insert(group);
            }
        }
        Ok(ids.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn committed(offset: i64) -> CommittedOffset {
        CommittedOffset { offset, leader_epoch: 0, metadata: Some("m".into()), commit_time_ms: 1 }
    }

    #[test]
    fn commits_survive_reopen_and_groups_stay_apart() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = OffsetStore::open(dir.path()).unwrap();
            store.commit("g1", &[(("t".into(), 0), committed(5)), (("t".into(), 1), committed(7))]).unwrap();
            store.commit("g1x", &[(("t".into(), 0), committed(99))]).unwrap();
            store.commit("g1", &[(("t".into(), 0), committed(6))]).unwrap();
            store
                .put_group("g2", &GroupRecord { protocol_type: "consumer".into(), generation: 3, empty_since_ms: None })
                .unwrap();
        }
        let store = OffsetStore::open(dir.path()).unwrap();
        let all = store.fetch_all("g1").unwrap();
        assert_eq!(all.iter().map(|(tp, c)| (tp.1, c.offset)).collect::<Vec<_>>(), vec![(0, 6), (1, 7)]);
        assert_eq!(store.fetch("g1x", "t", 0).unwrap().unwrap().offset, 99);
        assert_eq!(store.group_ids().unwrap(), vec!["g1", "g1x", "g2"]);
        store.delete_group("g1").unwrap();
        assert!(store.fetch_all("g1").unwrap().is_empty());
        assert_eq!(store.fetch("g1x", "t", 0).unwrap().unwrap().offset, 99);
        assert_eq!(store.delete_offsets("g1x", &[("t".into(), 0), ("t".into(), 5)]).unwrap(), 1);
    }

    #[test]
    fn transactional_offsets_wait_for_their_marker() {
        let dir = tempfile::tempdir().unwrap();
        let store = OffsetStore::open(dir.path()).unwrap();
        store.commit("g", &[(("t".into(), 0), committed(1))]).unwrap();
        store.commit_pending(7, "g", &[(("t".into(), 0), committed(10))]).unwrap();
        store.commit_pending(8, "g", &[(("t".into(), 1), committed(20))]).unwrap();
        assert_eq!(store.fetch("g", "t", 0).unwrap().unwrap().offset, 1, "pending is not committed");
        assert_eq!(store.pending_partitions("g").unwrap(), vec![("t".to_string(), 0), ("t".to_string(), 1)]);
        assert!(store.pending_partitions("h").unwrap().is_empty());
        assert_eq!(store.complete_transaction(8, false).unwrap(), 1);
        drop(store);
        let store = OffsetStore::open(dir.path()).unwrap();
        assert_eq!(store.complete_transaction(7, true).unwrap(), 1, "pending survives a reopen");
        assert_eq!(store.fetch("g", "t", 0).unwrap().unwrap().offset, 10);
        assert!(store.fetch("g", "t", 1).unwrap().is_none(), "the aborted one was dropped");
        assert_eq!(store.complete_transaction(7, true).unwrap(), 0);
    }
}
