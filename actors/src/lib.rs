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

pub mod config;
pub mod partition_actor;
pub mod partition_log;
pub mod record_batch;
pub mod topic_registry;

use std::collections::BTreeMap;
use std::sync::Arc;

use actix::prelude::*;
use kafka_protocol::records::{Compression, RecordBatchDecoder};
use tokio::sync::watch;

pub use config::{Durability, StorageConfig, TopicConfig};
pub use kafka_protocol::records::Record;
pub use partition_actor::{Append, ListOffset, OffsetQuery, PartitionActor, PartitionError, Read};
pub use partition_log::{AppendOutcome, LogOffsets, ReadOutcome};
pub use record_batch::{encode_batch, validate_batches, BatchError, NewRecord, ValidatedBatch};
pub use topic_registry::{
    CreatePartitions, CreateTopic, DeleteTopic, MetadataSnapshot, PartitionHandle, TopicError, TopicRegistry, TopicView,
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
    Encoding(String),
}

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
        }
    }
}

impl std::error::Error for ClientError {}

/// A handle on a running actor tree. Cheap to clone.
#[derive(Clone)]
pub struct Broker {
    config: Arc<StorageConfig>,
    registry: Addr<TopicRegistry>,
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
        Ok(Broker { config, registry, metadata })
    }

    pub fn config(&self) -> &StorageConfig {
        &self.config
    }

    pub fn registry(&self) -> &Addr<TopicRegistry> {
        &self.registry
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
        let msg = CreateTopic { name: name.to_string(), partitions: Some(partitions), configs, validate_only: false };
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
        let handle = self.partition(topic, partition)?;
        let batch = encode_batch(records, Compression::None, now_ms()).map_err(ClientError::Encoding)?;
        let view = self.metadata().topic(topic).cloned();
        let limit = view.as_ref().map_or(usize::MAX, |t| t.config.max_message_bytes.max(0) as usize);
        let batches = validate_batches(&batch, limit).map_err(ClientError::Batch)?;
        let log_append_time = view.as_ref().and_then(|t| t.config.log_append_time(now_ms()));
        handle
            .addr
            .send(Append { batches, log_append_time })
            .await
            .map_err(ClientError::Mailbox)?
            .map_err(ClientError::Partition)
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
            .send(Read { offset, max_bytes, min_one: true })
            .await
            .map_err(ClientError::Mailbox)?
            .map_err(ClientError::Partition)?;
        let mut buf = read.records;
        let sets = RecordBatchDecoder::decode_all(&mut buf).map_err(|e| ClientError::Encoding(e.to_string()))?;
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
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}
