//! Tributary's actor tree and the partition storage it owns.
//!
//! The network broker (`tributary` binary) is one user of this crate; an actix
//! application is another. [`Broker::start`] brings the tree up inside the
//! caller's `actix::System`; produce and fetch are then typed calls, no socket
//! involved.
//!
//! ```text
//! System
//! └── Supervisor<TopicRegistry>          topics, metadata store, snapshots
//!     └── Supervisor<PartitionActor> ×N  one per partition, on storage arbiters,
//!                                        each owning <data_dir>/<topic>-<partition>/ (LMDB)
//! ```

pub mod clock;
pub mod config;
pub mod group_coordinator;
pub mod group_registry;
pub mod offset_store;
pub mod partition_actor;
pub mod partition_log;
pub mod producer_state;
pub mod record_batch;
mod record_walk;
pub mod replication;
pub mod stored;
pub mod topic_registry;

use std::collections::BTreeMap;
use std::sync::Arc;

use actix::prelude::*;
use kafka_protocol::records::{Compression, RecordBatchDecoder};
use tokio::sync::watch;

pub use config::{Durability, StorageConfig, TopicConfig};
pub use group_coordinator::{GroupAnswer, GroupRequest, GroupSettings};
pub use group_registry::{ForgetGroup, GroupRegistry, ListGroups, LookupGroup};
pub use kafka_protocol::records::Record;
pub use offset_store::OffsetStore;
pub use partition_actor::{
    Append, AppendWithReply, DeleteRecordsBefore, DescribeProducers, EnforceRetention, ListOffset, OffsetQuery, PartitionActor,
    PartitionError, PartitionSize, Read, TxnVerifier, VerifyTxn, WriteMarker,
};
pub use partition_log::{AbortedTxn, AppendOutcome, LogOffsets, ReadOutcome};
pub use record_batch::{encode_batch, validate_batches, BatchError, Marker, NewRecord, Sequenced, ValidatedBatch};
pub use topic_registry::{
    AllocateProducerId, AlterBrokerConfig, AlterTopicConfig, CreatePartitions, CreateTopic, DeleteTopic,
    MetadataSnapshot, PartitionHandle, SetBrokerOverrides, TopicError, TopicRegistry, TopicView,
};

/// Why an embedded produce or fetch failed.
#[derive(Debug)]
pub enum ClientError {
    UnknownTopicOrPartition {
        topic: String,
        partition: i32,
    },
    Batch(BatchError),
    Partition(PartitionError),
    Topic(TopicError),
    /// The actor's mailbox is closed (the system is shutting down).
    Mailbox(MailboxError),
    /// The records cannot be one batch (none, or too many).
    Encoding(tributary_client::Error),
    /// Stored batches that do not decode.
    Decoding(Source),
}

type Source = Box<dyn std::error::Error + Send + Sync>;

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientError::UnknownTopicOrPartition { topic, partition } => {
                write!(f, "unknown topic or partition {topic}-{partition}")
            }
            ClientError::Batch(e) => write!(f, "{e}"),
            ClientError::Partition(e) => write!(f, "{e}"),
            ClientError::Topic(e) => write!(f, "{e}"),
            ClientError::Mailbox(e) => write!(f, "actor unavailable: {e}"),
            ClientError::Encoding(e) => write!(f, "record encoding: {e}"),
            ClientError::Decoding(e) => write!(f, "stored records do not decode: {e}"),
        }
    }
}

impl std::error::Error for ClientError {}

/// A handle on a running actor tree. Cheap to clone.
#[derive(Clone)]
pub struct Broker {
    config: Arc<StorageConfig>,
    registry: Addr<TopicRegistry>,
    groups: Addr<GroupRegistry>,
    metadata: watch::Receiver<Arc<MetadataSnapshot>>,
}

impl Broker {
    /// Starts the tree in the current actix `System`, loading existing topics from `config.data_dir`.
    pub fn start(config: StorageConfig) -> Result<Broker, TopicError> {
        let config = Arc::new(config);
        let (registry, metadata) = TopicRegistry::open(config.clone())?;
        // The registry is built before the supervisor takes it, so a store
        // that fails to open is reported to the caller instead of looping.
        let mut registry = Some(registry);
        let registry = Supervisor::start(move |_| registry.take().expect("registry is started once"));
        let store = OffsetStore::open(&config.data_dir).map_err(|e| match e {
            offset_store::StoreError::Format { key, error } => TopicError::Format { key, error },
            other => TopicError::Storage(other.to_string()),
        })?;
        let mut groups = Some(GroupRegistry::new(config.groups.clone(), store, config.storage_threads > 0));
        let groups = Supervisor::start(move |_| groups.take().expect("group registry is started once"));
        Ok(Broker { config, registry, groups, metadata })
    }

    /// The topic snapshot as it changes: a waiter wakes on each new one.
    pub fn metadata_watch(&self) -> watch::Receiver<Arc<MetadataSnapshot>> {
        self.metadata.clone()
    }

    pub fn config(&self) -> &StorageConfig {
        &self.config
    }

    pub fn registry(&self) -> &Addr<TopicRegistry> {
        &self.registry
    }

    /// The consumer-group side of the tree.
    pub fn groups(&self) -> &Addr<GroupRegistry> {
        &self.groups
    }

    /// Sends `request` to `group_id`'s coordinator. `None` means the group is
    /// unknown and `create` was false.
    pub async fn group_request(
        &self,
        group_id: &str,
        create: bool,
        request: GroupRequest,
    ) -> Result<Option<GroupAnswer>, i16> {
        let unavailable = kafka_protocol::ResponseError::CoordinatorNotAvailable.code();
        let lookup = LookupGroup { group_id: group_id.to_string(), create };
        let Some(addr) = self.groups.send(lookup).await.map_err(|_| unavailable)?? else {
            return Ok(None);
        };
        addr.send(request).await.map_err(|_| unavailable)?.map(Some)
    }

    /// The current topics and partitions.
    pub fn metadata(&self) -> Arc<MetadataSnapshot> {
        self.metadata.borrow().clone()
    }

    pub async fn create_topic(
        &self,
        name: &str,
        partitions: i32,
        configs: BTreeMap<String, String>,
    ) -> Result<Arc<TopicView>, ClientError> {
        let msg = CreateTopic {
            name: name.to_string(),
            partitions: Some(partitions),
            configs,
            validate_only: false,
            id: None,
        };
        self.registry.send(msg).await.map_err(ClientError::Mailbox)?.map_err(ClientError::Topic)
    }

    pub async fn delete_topic(&self, name: &str) -> Result<(), ClientError> {
        let msg = DeleteTopic { name: name.to_string() };
        self.registry.send(msg).await.map_err(ClientError::Mailbox)?.map_err(ClientError::Topic)
    }

    pub fn partition(&self, topic: &str, partition: i32) -> Result<PartitionHandle, ClientError> {
        self.metadata()
            .partition(topic, partition)
            .cloned()
            .ok_or_else(|| ClientError::UnknownTopicOrPartition { topic: topic.to_string(), partition })
    }

    /// Produces `records` as one batch; returns its offsets once committed.
    pub async fn produce(
        &self,
        topic: &str,
        partition: i32,
        records: &[NewRecord],
    ) -> Result<AppendOutcome, ClientError> {
        let snapshot = self.metadata();
        let unknown = || ClientError::UnknownTopicOrPartition { topic: topic.to_string(), partition };
        let view = snapshot.topic(topic).ok_or_else(unknown)?;
        let handle = usize::try_from(partition).ok().and_then(|i| view.partitions.get(i)).ok_or_else(unknown)?;
        let batch = encode_batch(records, Compression::None, now_ms(), None).map_err(ClientError::Encoding)?;
        let append = view.prepare_append(&batch).map_err(ClientError::Batch)?;
        handle.addr.send(append).await.map_err(ClientError::Mailbox)?.map_err(ClientError::Partition)
    }

    /// Records from `offset` on, up to about `max_bytes` (at least one batch).
    pub async fn fetch(
        &self,
        topic: &str,
        partition: i32,
        offset: i64,
        max_bytes: usize,
    ) -> Result<Vec<Record>, ClientError> {
        let handle = self.partition(topic, partition)?;
        let read = handle
            .addr
            .send(Read { offset, max_bytes, min_one: true, committed: false })
            .await
            .map_err(ClientError::Mailbox)?
            .map_err(ClientError::Partition)?;
        let mut buf = read.records;
        let sets = RecordBatchDecoder::decode_all(&mut buf).map_err(|e| ClientError::Decoding(e.into()))?;
        Ok(sets.into_iter().flat_map(|s| s.records).filter(|r| r.offset >= offset).collect())
    }

    /// Resolves a ListOffsets query for one partition: `(offset, timestamp)`.
    pub async fn list_offset(
        &self,
        topic: &str,
        partition: i32,
        query: OffsetQuery,
    ) -> Result<Option<(i64, i64)>, ClientError> {
        let handle = self.partition(topic, partition)?;
        handle.addr.send(ListOffset(query)).await.map_err(ClientError::Mailbox)?.map_err(ClientError::Partition)
    }
}

/// Wall-clock milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    clock::now_ms()
}
