//! `TopicRegistry`: the actor that owns which topics exist.
//!
//! It persists topic records (id, partition count, config overrides) with
//! postcard in a small LMDB environment, `<data_dir>/__tributary_metadata`
//! (versioned, see `stored`: `topics` holds `StoredTopicRecord`s, `counters`
//! the `StoredBrokerConfigs` and the producer-id counter, a raw big-endian i64),
//! spawns one supervised `PartitionActor` per partition on the storage
//! arbiters, and publishes an immutable `MetadataSnapshot` through a `watch`
//! channel. Request handlers read the snapshot without a message round trip;
//! only changes go through the actor, one at a time.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use actix::prelude::*;
use heed::types::{Bytes as RawBytes, Str};
use heed::{CommitOrAbort, Database, Env, EnvOpenOptions, WithoutTls};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use uuid::Uuid;

use crate::config::{check_name_collision, validate_topic_name, ConfigOp, StorageConfig, TopicConfig};
use crate::partition_actor::{partition_dir, Append, EnforceRetention, PartitionActor, Remove, SyncLog};
use crate::partition_log::LogOffsets;
use crate::record_batch::{require_keys, validate_batches, BatchError};
use crate::stored::{self, FormatError, UpgradeError};

const METADATA_DIR: &str = "__tributary_metadata";

/// A partition as request handlers see it: where to send messages, and a
/// watch on its offsets that wakes fetches waiting for data.
#[derive(Clone)]
pub struct PartitionHandle {
    pub index: i32,
    pub addr: Addr<PartitionActor>,
    pub offsets: watch::Receiver<LogOffsets>,
}

/// A topic as request handlers see it.
#[derive(Clone)]
pub struct TopicView {
    pub name: Arc<str>,
    pub id: Uuid,
    pub config: TopicConfig,
    /// Configs set explicitly on this topic (the rest are defaults).
    pub overrides: BTreeMap<String, String>,
    pub partitions: Vec<PartitionHandle>,
}

/// Every topic, immutable: replaced whole on each change.
#[derive(Default, Clone)]
pub struct MetadataSnapshot {
    pub topics: BTreeMap<Arc<str>, Arc<TopicView>>,
    /// Topic-config defaults as changed at runtime (dynamic broker configs), by topic-config name.
    pub broker_overrides: BTreeMap<String, String>,
    /// The defaults every topic starts from: static config plus `broker_overrides`.
    pub defaults: TopicConfig,
    /// Topics gone from `topics` whose partition directories are still being removed.
    pub deleting: std::collections::BTreeSet<Arc<str>>,
}

impl TopicView {
    /// Applies this topic's rules to a produce payload: batch validation within
    /// `max.message.bytes`, keys required on compacted topics, and the append
    /// time for LogAppendTime topics. The wire handler and the embedded API
    /// both produce through here.
    pub fn prepare_append(&self, records: &bytes::Bytes) -> Result<Append, BatchError> {
        let batches = validate_batches(records, self.config.max_message_bytes.max(0) as usize)?;
        if batches.iter().any(|b| b.header.is_control()) {
            return Err(BatchError::ControlBatch);
        }
        if self.config.is_compacted() {
            require_keys(&batches)?;
        }
        Ok(Append {
            batches,
            log_append_time: self.config.log_append_time(crate::now_ms()),
            acks_all: false,
            transactional_id: None,
        })
    }
}

impl MetadataSnapshot {
    pub fn topic(&self, name: &str) -> Option<&Arc<TopicView>> {
        self.topics.get(name)
    }

    pub fn partition(&self, topic: &str, partition: i32) -> Option<&PartitionHandle> {
        let index = usize::try_from(partition).ok()?;
        self.topics.get(topic)?.partitions.get(index)
    }
}

/// Why a topic change was refused. Each maps to one Kafka error code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicError {
    AlreadyExists(String),
    Unknown(String),
    InvalidName(String),
    InvalidPartitions(String),
    InvalidReplicationFactor(String),
    InvalidConfig(String),
    /// A request Kafka refuses as malformed, e.g. APPEND on a config that is not a list.
    InvalidRequest(String),
    Storage(String),
    /// A stored value (at `key`) that this build cannot read.
    Format {
        key: String,
        error: FormatError,
    },
}

impl From<UpgradeError> for TopicError {
    fn from(e: UpgradeError) -> Self {
        match e {
            UpgradeError::Storage(e) => TopicError::Storage(format!("metadata store: {e}")),
            UpgradeError::Store(error) => TopicError::Format { key: stored::FORMAT_KEY.to_string(), error },
            UpgradeError::Format { key, error } => TopicError::Format { key, error },
        }
    }
}

impl From<crate::config::ConfigOpError> for TopicError {
    fn from(e: crate::config::ConfigOpError) -> Self {
        match e {
            crate::config::ConfigOpError::NotAList(m) => TopicError::InvalidRequest(m),
            crate::config::ConfigOpError::Invalid(e) => TopicError::InvalidConfig(e.0),
        }
    }
}

impl TopicError {
    pub fn error_code(&self) -> i16 {
        use kafka_protocol::ResponseError as E;
        match self {
            TopicError::AlreadyExists(_) => E::TopicAlreadyExists.code(),
            TopicError::Unknown(_) => E::UnknownTopicOrPartition.code(),
            TopicError::InvalidName(_) => E::InvalidTopicException.code(),
            TopicError::InvalidPartitions(_) => E::InvalidPartitions.code(),
            TopicError::InvalidReplicationFactor(_) => E::InvalidReplicationFactor.code(),
            TopicError::InvalidConfig(_) => E::InvalidConfig.code(),
            TopicError::InvalidRequest(_) => E::InvalidRequest.code(),
            TopicError::Storage(_) | TopicError::Format { .. } => E::KafkaStorageError.code(),
        }
    }
}

impl std::fmt::Display for TopicError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TopicError::AlreadyExists(t) => write!(f, "topic '{t}' already exists"),
            TopicError::Unknown(t) => write!(f, "topic '{t}' does not exist"),
            TopicError::InvalidName(m)
            | TopicError::InvalidPartitions(m)
            | TopicError::InvalidReplicationFactor(m)
            | TopicError::InvalidConfig(m)
            | TopicError::InvalidRequest(m)
            | TopicError::Storage(m) => f.write_str(m),
            TopicError::Format { key, error } => write!(f, "metadata store, key '{key}': {error}"),
        }
    }
}

impl std::error::Error for TopicError {}

/// What the metadata store keeps per topic. Stored as `StoredTopicRecord::V1`,
/// so this layout is frozen: a new field means a V2.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct TopicRecord {
    id: [u8; 16],
    partitions: i32,
    overrides: BTreeMap<String, String>,
}

crate::stored_v1! {
    /// The format versions of a topic record.
    enum StoredTopicRecord(TopicRecord) = "topic record";
}

crate::stored_v1! {
    /// The format versions of the dynamic broker configs (topic-config name -> value).
    enum StoredBrokerConfigs(BTreeMap<String, String>) = "dynamic broker configs";
}

/// Rewrites a legacy (aaeadfb) metadata store in the current format, in `wtxn`.
fn upgrade_legacy(
    topics: Database<'_, Str, RawBytes>,
    counters: Database<'_, Str, RawBytes>,
    wtxn: &mut heed::RwTxn,
) -> Result<usize, UpgradeError> {
    let topics = stored::upgrade_all::<StoredTopicRecord, _>(topics, wtxn)?;
    Ok(topics + stored::upgrade_one::<StoredBrokerConfigs>(counters, wtxn, BROKER_CONFIG_KEY)?)
}

/// Create a topic. `partitions: None` takes the broker default.
#[derive(Message)]
#[rtype(result = "Result<Arc<TopicView>, TopicError>")]
pub struct CreateTopic {
    pub name: String,
    pub partitions: Option<i32>,
    pub configs: BTreeMap<String, String>,
    pub validate_only: bool,
    /// The id the cluster chose; `None` makes a new one. A topic with an id
    /// is made as the controller decided it, whose checks it passed.
    pub id: Option<Uuid>,
}

/// Delete a topic and its data. Answered once every partition directory is gone.
#[derive(Message)]
#[rtype(result = "Result<(), TopicError>")]
pub struct DeleteTopic {
    pub name: String,
}

/// Grow a topic to `count` partitions.
#[derive(Message)]
#[rtype(result = "Result<(), TopicError>")]
pub struct CreatePartitions {
    pub name: String,
    pub count: i32,
    pub validate_only: bool,
}

pub struct TopicRegistry {
    config: Arc<StorageConfig>,
    env: Env<WithoutTls>,
    store: Database<'static, Str, RawBytes>,
    /// Durable counters (the next producer id, a raw big-endian i64: fixed
    /// width, not versioned) and the dynamic broker configs (versioned).
    counters: Database<'static, Str, RawBytes>,
    broker_overrides: BTreeMap<String, String>,
    topics: BTreeMap<Arc<str>, Arc<TopicView>>,
    /// Deleted topics whose partition directories are not yet gone.
    deleting: std::collections::BTreeSet<Arc<str>>,
    arbiters: Vec<ArbiterHandle>,
    next_arbiter: usize,
    snapshot_tx: watch::Sender<Arc<MetadataSnapshot>>,
}

impl TopicRegistry {
    /// Opens the metadata store and starts every known topic's partitions.
    /// Must be called inside a running actix `System`.
    pub fn open(
        config: Arc<StorageConfig>,
    ) -> Result<(TopicRegistry, watch::Receiver<Arc<MetadataSnapshot>>), TopicError> {
        let storage = |e: &dyn std::fmt::Display| TopicError::Storage(format!("metadata store: {e}"));
        let dir: PathBuf = config.data_dir.join(METADATA_DIR);
        std::fs::create_dir_all(&dir).map_err(|e| storage(&e))?;
        let mut options = EnvOpenOptions::new().read_txn_without_tls();
        options.map_size(64 << 20).max_dbs(4);
        // Safety: this directory belongs to the registry alone.
        let env = unsafe { options.open(&dir) }.map_err(|e| storage(&e))?;
        let wtxn = env.write_txn().map_err(|e| storage(&e))?;
        let (store, counters) = env
            .create_databases_and_commit(wtxn, |opener, wtxn| -> Result<_, UpgradeError> {
                let topics = opener.create_database::<Str, RawBytes>(wtxn, Some("topics"))?;
                let counters = opener.create_database::<Str, RawBytes>(wtxn, Some("counters"))?;
                let format = opener.create_database(wtxn, Some(stored::FORMAT_DB))?;
                stored::ensure_format(format, wtxn, "topic metadata store", |wtxn| {
                    upgrade_legacy(topics, counters, wtxn)
                })?;
                Ok(CommitOrAbort::<_, ()>::Commit((topics, counters)))
            })?
            .unwrap_commit();

        // No threads: partitions run on the caller's thread (the simulation needs one thread).
        let threads = config.storage_threads.min(64);
        let arbiters = (0..threads).map(|_| Arbiter::new().handle()).collect();
        let (snapshot_tx, snapshot_rx) = watch::channel(Arc::new(MetadataSnapshot::default()));
        let mut registry = TopicRegistry {
            config,
            env,
            store,
            counters,
            broker_overrides: BTreeMap::new(),
            topics: BTreeMap::new(),
            deleting: Default::default(),
            arbiters,
            next_arbiter: 0,
            snapshot_tx,
        };
        registry.load()?;
        Ok((registry, snapshot_rx))
    }

    /// Static topic defaults with the dynamic broker configs applied.
    fn defaults(&self) -> TopicConfig {
        TopicConfig::with_overrides(&self.config.topic_defaults, &self.broker_overrides)
            .unwrap_or_else(|_| self.config.topic_defaults.clone())
    }

    fn load(&mut self) -> Result<(), TopicError> {
        let rtxn = self.env.read_txn().map_err(|e| TopicError::Storage(e.to_string()))?;
        if let Some(bytes) =
            self.counters.get(&rtxn, BROKER_CONFIG_KEY).map_err(|e| TopicError::Storage(e.to_string()))?
        {
            self.broker_overrides = stored::decode::<StoredBrokerConfigs>(bytes)
                .map_err(|error| TopicError::Format { key: BROKER_CONFIG_KEY.to_string(), error })?;
        }
        let mut records = Vec::new();
        for entry in self.store.iter(&rtxn).map_err(|e| TopicError::Storage(e.to_string()))? {
            let (name, value) = entry.map_err(|e| TopicError::Storage(e.to_string()))?;
            let record = stored::decode::<StoredTopicRecord>(value)
                .map_err(|error| TopicError::Format { key: name.to_string(), error })?;
            records.push((name.to_string(), record));
        }
        drop(rtxn);
        for (name, record) in records {
            let config = TopicConfig::with_overrides(&self.defaults(), &record.overrides)
                .map_err(|e| TopicError::InvalidConfig(format!("stored config of '{name}': {e}")))?;
            let name: Arc<str> = name.into();
            let partitions = (0..record.partitions).map(|i| self.spawn_partition(&name, i)).collect();
            let view = TopicView {
                name: name.clone(),
                id: Uuid::from_bytes(record.id),
                config,
                overrides: record.overrides,
                partitions,
            };
            self.topics.insert(name, Arc::new(view));
        }
        tracing::info!(topics = self.topics.len(), "loaded topic metadata");
        self.publish();
        Ok(())
    }

    fn spawn_partition(&mut self, topic: &Arc<str>, index: i32) -> PartitionHandle {
        let (offsets_tx, offsets) = watch::channel(LogOffsets::default());
        let offsets_tx = Arc::new(offsets_tx);
        let (config, topic) = (self.config.clone(), topic.clone());
        let actor = move |_: &mut Context<PartitionActor>| PartitionActor::new(topic, index, config, offsets_tx);
        let addr = if self.arbiters.is_empty() {
            Supervisor::start(actor)
        } else {
            let arbiter = &self.arbiters[self.next_arbiter % self.arbiters.len()];
            self.next_arbiter += 1;
            Supervisor::start_in_arbiter(arbiter, actor)
        };
        PartitionHandle { index, addr, offsets }
    }

    fn publish(&self) {
        self.snapshot_tx.send_replace(Arc::new(MetadataSnapshot {
            topics: self.topics.clone(),
            broker_overrides: self.broker_overrides.clone(),
            defaults: self.defaults(),
            deleting: self.deleting.clone(),
        }));
    }

    fn persist(&self, name: &str, record: Option<&TopicRecord>) -> Result<(), TopicError> {
        let storage = |e: &dyn std::fmt::Display| TopicError::Storage(format!("metadata store: {e}"));
        let mut wtxn = self.env.write_txn().map_err(|e| storage(&e))?;
        match record {
            Some(record) => {
                let bytes = stored::encode::<StoredTopicRecord>(record)
                    .map_err(|error| TopicError::Format { key: name.to_string(), error })?;
                self.store.put(&mut wtxn, name, &bytes).map_err(|e| storage(&e))?;
            }
            None => {
                self.store.delete(&mut wtxn, name).map_err(|e| storage(&e))?;
            }
        }
        wtxn.commit().map_err(|e| storage(&e))
    }

    fn check_partition_count(&self, count: i32) -> Result<(), TopicError> {
        if count < 1 || count > self.config.max_partitions_per_topic {
            return Err(TopicError::InvalidPartitions(format!(
                "partition count {count} must be between 1 and {}",
                self.config.max_partitions_per_topic
            )));
        }
        Ok(())
    }

    fn create(&mut self, msg: CreateTopic) -> Result<Arc<TopicView>, TopicError> {
        validate_topic_name(&msg.name).map_err(|e| TopicError::InvalidName(e.0))?;
        if self.topics.contains_key(msg.name.as_str()) {
            return Err(TopicError::AlreadyExists(msg.name));
        }
        // A topic the controller made (it chose the id) was checked there.
        if msg.id.is_none() {
            check_name_collision(&msg.name, self.topics.keys().map(|k| k.as_ref()))
                .map_err(|e| TopicError::InvalidName(e.0))?;
        }
        let count = msg.partitions.unwrap_or(self.config.default_num_partitions);
        self.check_partition_count(count)?;
        let (config, overrides) =
            TopicConfig::for_new_topic(&self.defaults(), msg.configs).map_err(|e| TopicError::InvalidConfig(e.0))?;
        let name: Arc<str> = msg.name.into();
        let id = msg.id.unwrap_or_else(Uuid::new_v4);
        if msg.validate_only {
            return Ok(Arc::new(TopicView { name, id, config, overrides, partitions: Vec::new() }));
        }
        // A crash during an earlier delete may have left files behind: a new
        // topic must never inherit them.
        for index in 0..count {
            remove_stale_dir(&partition_dir(&self.config, &name, index))?;
        }
        let record = TopicRecord { id: *id.as_bytes(), partitions: count, overrides: overrides.clone() };
        self.persist(&name, Some(&record))?;
        let partitions = (0..count).map(|i| self.spawn_partition(&name, i)).collect();
        let view = Arc::new(TopicView { name: name.clone(), id, config, overrides, partitions });
        self.topics.insert(name.clone(), view.clone());
        self.publish();
        tracing::info!(topic = %name, partitions = count, "created topic");
        Ok(view)
    }
}

fn remove_stale_dir(dir: &std::path::Path) -> Result<(), TopicError> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => {
            tracing::warn!(dir = %dir.display(), "removed stale partition directory");
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(TopicError::Storage(format!("removing stale {}: {e}", dir.display()))),
    }
}

/// Hands out a new producer id for an idempotent producer (InitProducerId).
#[derive(Message)]
#[rtype(result = "Result<i64, TopicError>")]
pub struct AllocateProducerId;

const NEXT_PRODUCER_ID: &str = "next_producer_id";
const BROKER_CONFIG_KEY: &str = "broker_config";

/// Change dynamic broker configs (Kafka names, e.g. `log.retention.ms`);
/// `ConfigOp::Delete` returns one to the static default. `replace` drops
/// every dynamic config not named (AlterConfigs). Answers the resulting
/// dynamic configs by topic-config name.
#[derive(Message)]
#[rtype(result = "Result<BTreeMap<String, String>, TopicError>")]
pub struct AlterBrokerConfig {
    pub changes: Vec<(String, ConfigOp)>,
    pub replace: bool,
    pub validate_only: bool,
}

/// Replaces the dynamic broker configs with `overrides`, by topic-config
/// name, as the cluster's metadata has them. Answers as `AlterBrokerConfig`.
#[derive(Message)]
#[rtype(result = "Result<BTreeMap<String, String>, TopicError>")]
pub struct SetBrokerOverrides {
    pub overrides: BTreeMap<String, String>,
    pub validate_only: bool,
}

impl Handler<AlterBrokerConfig> for TopicRegistry {
    type Result = Result<BTreeMap<String, String>, TopicError>;

    fn handle(&mut self, msg: AlterBrokerConfig, ctx: &mut Context<Self>) -> Self::Result {
        self.contained(ctx, |registry| registry.alter_broker_config(msg))
    }
}

impl Handler<SetBrokerOverrides> for TopicRegistry {
    type Result = Result<BTreeMap<String, String>, TopicError>;

    fn handle(&mut self, msg: SetBrokerOverrides, ctx: &mut Context<Self>) -> Self::Result {
        self.contained(ctx, |registry| registry.set_broker_overrides(msg.overrides, msg.validate_only))
    }
}

impl TopicRegistry {
    /// Broker config names (`log.retention.ms`) become topic-config names, then
    /// [`Self::set_broker_overrides`]. Answers the resulting overrides.
    fn alter_broker_config(&mut self, msg: AlterBrokerConfig) -> Result<BTreeMap<String, String>, TopicError> {
        let mut overrides = if msg.replace { BTreeMap::new() } else { self.broker_overrides.clone() };
        let current = self.defaults();
        for (name, op) in msg.changes {
            let Some(topic_name) = crate::config::topic_name_of_broker_config(&name) else {
                let dynamic: Vec<&str> = crate::config::DYNAMIC_BROKER_CONFIGS.iter().map(|(b, _)| *b).collect();
                return Err(TopicError::InvalidConfig(format!(
                    "broker config '{name}' cannot change at runtime (set it in the config file); dynamic ones: {}",
                    dynamic.join(", ")
                )));
            };
            op.apply(topic_name, &mut overrides, &current)?;
        }
        self.set_broker_overrides(overrides, msg.validate_only)
    }

    /// Every topic follows a changed default unless it overrides that config itself.
    fn set_broker_overrides(
        &mut self,
        overrides: BTreeMap<String, String>,
        validate_only: bool,
    ) -> Result<BTreeMap<String, String>, TopicError> {
        let defaults = TopicConfig::with_overrides(&self.config.topic_defaults, &overrides)
            .map_err(|e| TopicError::InvalidConfig(e.0))?;
        let mut recomputed = BTreeMap::new();
        for (name, view) in &self.topics {
            let config =
                TopicConfig::with_overrides(&defaults, &view.overrides).map_err(|e| TopicError::InvalidConfig(e.0))?;
            recomputed.insert(name.clone(), config);
        }
        if validate_only {
            return Ok(overrides);
        }
        let bytes = stored::encode::<StoredBrokerConfigs>(&overrides)
            .map_err(|error| TopicError::Format { key: BROKER_CONFIG_KEY.to_string(), error })?;
        let storage = |e: heed::Error| TopicError::Storage(format!("dynamic broker configs: {e}"));
        let mut wtxn = self.env.write_txn().map_err(storage)?;
        self.counters.put(&mut wtxn, BROKER_CONFIG_KEY, &bytes).map_err(storage)?;
        wtxn.commit().map_err(storage)?;
        self.broker_overrides = overrides.clone();
        for (name, config) in recomputed {
            let updated = TopicView { config, ..(*self.topics[&name]).clone() };
            self.topics.insert(name, Arc::new(updated));
        }
        self.publish();
        tracing::info!("altered dynamic broker configs");
        Ok(overrides)
    }
}

impl Handler<AllocateProducerId> for TopicRegistry {
    type Result = Result<i64, TopicError>;

    /// The counter is committed (fsynced) before the id is handed out, so an id
    /// is never given twice, even across crashes.
    fn handle(&mut self, _: AllocateProducerId, ctx: &mut Context<Self>) -> Self::Result {
        self.contained(ctx, |registry| registry.allocate_producer_id())
    }
}

impl TopicRegistry {
    fn allocate_producer_id(&mut self) -> Result<i64, TopicError> {
        let storage = |e: &dyn std::fmt::Display| TopicError::Storage(format!("producer ids: {e}"));
        let mut wtxn = self.env.write_txn().map_err(|e| storage(&e))?;
        let id = match self.counters.get(&wtxn, NEXT_PRODUCER_ID).map_err(|e| storage(&e))? {
            Some(bytes) => i64::from_be_bytes(bytes.try_into().map_err(|_| storage(&"counter is not 8 bytes"))?),
            None => 0,
        };
        self.counters.put(&mut wtxn, NEXT_PRODUCER_ID, &(id + 1).to_be_bytes()).map_err(|e| storage(&e))?;
        wtxn.commit().map_err(|e| storage(&e))?;
        Ok(id)
    }
}

impl Actor for TopicRegistry {
    type Context = Context<Self>;

    /// Retention ticks come from here (the registry's arbiter), not from
    /// timers in each partition actor: one timer for all partitions.
    fn started(&mut self, ctx: &mut Context<Self>) {
        if let Some(every) = self.config.flush_interval() {
            ctx.run_interval(every, |act, _| {
                for partition in act.topics.values().flat_map(|t| t.partitions.iter()) {
                    // A full mailbox skips this round; the next interval flushes it.
                    let _ = partition.addr.try_send(SyncLog);
                }
            });
        }
        let every = std::time::Duration::from_millis(self.config.retention_check_interval_ms.max(100));
        ctx.run_interval(every, |act, _| {
            for topic in act.topics.values() {
                let policy = &topic.config.cleanup_policy;
                let deletes = policy.contains("delete");
                let msg = EnforceRetention {
                    retention_ms: if deletes { topic.config.retention_ms } else { -1 },
                    retention_bytes: if deletes { topic.config.retention_bytes } else { -1 },
                    compact: policy.contains("compact").then_some(topic.config.delete_retention_ms),
                };
                for partition in &topic.partitions {
                    // A full mailbox skips this round; the next tick tries again.
                    let _ = partition.addr.try_send(msg);
                }
            }
        });
    }
}

/// Change a topic's config overrides (`ConfigOp::Delete` returns one to the
/// default). `replace` drops every override not named (AlterConfigs);
/// otherwise the rest stay (IncrementalAlterConfigs).
#[derive(Message)]
#[rtype(result = "Result<(), TopicError>")]
pub struct AlterTopicConfig {
    pub name: String,
    pub changes: Vec<(String, ConfigOp)>,
    pub replace: bool,
    pub validate_only: bool,
}

impl Handler<AlterTopicConfig> for TopicRegistry {
    type Result = Result<(), TopicError>;

    fn handle(&mut self, msg: AlterTopicConfig, ctx: &mut Context<Self>) -> Self::Result {
        self.contained(ctx, |registry| registry.alter_config(msg))
    }
}

impl TopicRegistry {
    fn alter_config(&mut self, msg: AlterTopicConfig) -> Result<(), TopicError> {
        let Some(view) = self.topics.get(msg.name.as_str()).cloned() else {
            return Err(TopicError::Unknown(msg.name));
        };
        let mut overrides = if msg.replace { BTreeMap::new() } else { view.overrides.clone() };
        for (name, op) in msg.changes {
            op.apply(&name, &mut overrides, &view.config)?;
        }
        let config =
            TopicConfig::with_overrides(&self.defaults(), &overrides).map_err(|e| TopicError::InvalidConfig(e.0))?;
        if msg.validate_only {
            return Ok(());
        }
        let record = TopicRecord {
            id: *view.id.as_bytes(),
            partitions: view.partitions.len() as i32,
            overrides: overrides.clone(),
        };
        self.persist(&view.name, Some(&record))?;
        let altered = TopicView { config, overrides, ..(*view).clone() };
        self.topics.insert(view.name.clone(), Arc::new(altered));
        self.publish();
        tracing::info!(topic = %view.name, "altered topic config");
        Ok(())
    }
}

/// The registry keeps its state across a restart: topics and partition
/// actors stay as they are, so nothing is spawned twice.
impl Supervised for TopicRegistry {}

impl TopicRegistry {
    /// Runs a change under `catch_unwind`: the registry lives on the main
    /// arbiter, so a panic must not unwind through it. The caller gets a
    /// retriable storage error; the supervisor restarts the registry with its
    /// state (the store is written before the snapshot, so it stays the truth).
    fn contained<T>(
        &mut self,
        ctx: &mut Context<Self>,
        f: impl FnOnce(&mut Self) -> Result<T, TopicError>,
    ) -> Result<T, TopicError> {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(self))) {
            Ok(result) => result,
            Err(_) => {
                tracing::error!("topic registry panicked; restarting");
                ctx.stop();
                Err(TopicError::Storage("topic registry restarting after a panic; retry".into()))
            }
        }
    }
}

impl Handler<CreateTopic> for TopicRegistry {
    type Result = Result<Arc<TopicView>, TopicError>;

    fn handle(&mut self, msg: CreateTopic, ctx: &mut Context<Self>) -> Self::Result {
        self.contained(ctx, |registry| registry.create(msg))
    }
}

impl Handler<DeleteTopic> for TopicRegistry {
    /// Atomic: no other change runs until the partition directories are gone,
    /// so a topic re-created at once never meets the old files.
    type Result = AtomicResponse<Self, Result<(), TopicError>>;

    fn handle(&mut self, msg: DeleteTopic, _: &mut Context<Self>) -> Self::Result {
        let Some(view) = self.topics.get(msg.name.as_str()).cloned() else {
            return AtomicResponse::new(Box::pin(fut::ready(Err(TopicError::Unknown(msg.name)))));
        };
        if let Err(e) = self.persist(&msg.name, None) {
            return AtomicResponse::new(Box::pin(fut::ready(Err(e))));
        }
        self.topics.remove(msg.name.as_str());
        self.deleting.insert(view.name.clone());
        self.publish();
        tracing::info!(topic = %msg.name, "deleted topic");
        let removals: Vec<_> = view.partitions.iter().map(|p| p.addr.send(Remove)).collect();
        let name = view.name.clone();
        AtomicResponse::new(Box::pin(
            async move {
                for removal in futures::future::join_all(removals).await {
                    match removal {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => return Err(TopicError::Storage(e.to_string())),
                        Err(e) => return Err(TopicError::Storage(format!("partition actor gone: {e}"))),
                    }
                }
                Ok(())
            }
            .into_actor(self)
            .map(move |removed, registry: &mut TopicRegistry, _| {
                // Published even if a removal failed: the topic is gone from the store either way.
                registry.deleting.remove(&name);
                registry.publish();
                removed
            }),
        ))
    }
}

impl Handler<CreatePartitions> for TopicRegistry {
    type Result = Result<(), TopicError>;

    fn handle(&mut self, msg: CreatePartitions, ctx: &mut Context<Self>) -> Self::Result {
        self.contained(ctx, |registry| registry.grow(msg))
    }
}

impl TopicRegistry {
    fn grow(&mut self, msg: CreatePartitions) -> Result<(), TopicError> {
        let Some(view) = self.topics.get(msg.name.as_str()).cloned() else {
            return Err(TopicError::Unknown(msg.name));
        };
        let current = view.partitions.len() as i32;
        if msg.count <= current {
            return Err(TopicError::InvalidPartitions(format!(
                "topic '{}' has {current} partitions; the new count {} must be larger",
                msg.name, msg.count
            )));
        }
        self.check_partition_count(msg.count)?;
        if msg.validate_only {
            return Ok(());
        }
        for index in current..msg.count {
            remove_stale_dir(&partition_dir(&self.config, &view.name, index))?;
        }
        let record = TopicRecord { id: *view.id.as_bytes(), partitions: msg.count, overrides: view.overrides.clone() };
        self.persist(&view.name, Some(&record))?;
        let mut partitions = view.partitions.clone();
        for index in current..msg.count {
            partitions.push(self.spawn_partition(&view.name, index));
        }
        let grown = TopicView { partitions, ..(*view).clone() };
        self.topics.insert(view.name.clone(), Arc::new(grown));
        self.publish();
        Ok(())
    }
}
