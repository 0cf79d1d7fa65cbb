//! Transactions: the transaction coordinators (Kafka's `TransactionCoordinator`
//! and `__transaction_state`).
//!
//! A transactional id belongs to one partition of the internal, compacted,
//! replicated topic `__transaction_state` (a hash of the id), and that
//! partition's leader coordinates it: the coordinator moves with the
//! partition's leadership, and its state survives the loss of its broker
//! because every state is written there (acks=all) before it is answered.
//! `TxnRegistry` (one per broker) follows the state partitions this broker
//! leads: on taking one up it reads the partition back and starts a
//! `TxnCoordinator` per transactional id in it, whose leader epoch is the
//! coordinator epoch its markers carry; a coordinator loaded at an older
//! epoch stops. All broker-to-broker traffic of transactions is Kafka
//! requests through `tributary-client`, in-process for this broker
//! (`peers::Peers`): WriteTxnMarkers to partition leaders and group
//! coordinators, and the AddPartitionsToTxn verification partition leaders
//! ask before a transactional batch opens a transaction (KIP-890).

pub mod coordinator;
mod markers;
pub mod peers;
pub mod state;

use std::cell::Cell;
use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use bytes::Bytes;
use kafka_protocol::ResponseError as E;
use tributary_actors::{NewRecord, PartitionHandle, Read, VerifyTxn};

use crate::config::BrokerConfig;
use crate::kafka::RequestContext;
use coordinator::{Call, TxnAnswer, TxnCall, TxnCoordinator};
use state::{StoredTxn, TxnMeta};

/// The internal topic of transaction states.
pub const STATE_TOPIC: &str = "__transaction_state";
/// The topic name WriteTxnMarkers gives a group coordinator's offsets (as Kafka).
pub const OFFSETS_TOPIC: &str = "__consumer_offsets";
/// Bytes one read of a state partition takes while loading.
const LOAD_READ_BYTES: usize = 1 << 20;
/// Reads one load takes at most (a compacted partition is small; this bounds a broken one).
const MAX_LOAD_READS: usize = 100_000;
/// How long a new leader of a state partition waits for its high watermark to
/// reach its log end before it loads (the states it must not miss).
const LOAD_WAIT: Duration = Duration::from_secs(30);
/// A load that failed is tried again after this long.
const LOAD_RETRY: Duration = Duration::from_secs(1);
/// One state write waits this long for its replicas.
const WRITE_TIMEOUT: Duration = Duration::from_secs(15);

/// Topics only the broker writes: clients may not produce to them, delete
/// them or delete their records (Kafka's internal topics).
pub fn is_internal(topic: &str) -> bool {
    topic == STATE_TOPIC
}

/// The state partition of `id`: Kafka's `abs(id.hashCode()) % partitions`.
pub fn state_partition(id: &str, partitions: i32) -> i32 {
    let hash = id.encode_utf16().fold(0i32, |h, c| h.wrapping_mul(31).wrapping_add(c as i32));
    (hash.unsigned_abs() % partitions.max(1) as u32) as i32
}

/// What the coordinators of one broker share.
pub struct Shared {
    pub ctx: Arc<RequestContext>,
    pub config: Arc<BrokerConfig>,
    pub client: tributary_client::Client<peers::Peers>,
}

impl Shared {
    /// Writes `meta` as `id`'s latest state and waits for its replicas; only
    /// while `lease` holds (a coordinator of an older load or epoch must not
    /// write over a newer one). A write the lease did not outlast is answered
    /// NOT_COORDINATOR even if it landed: the load that replaced it may not
    /// have read it, so the client asks the new coordinator again.
    pub async fn persist(self: Rc<Self>, lease: Lease, id: Rc<str>, meta: TxnMeta) -> Result<(), i16> {
        if !lease.holds(&self) {
            return Err(E::NotCoordinator.code());
        }
        let written = self.append_state(lease.partition, &id, &meta).await;
        if written.is_ok() && !lease.holds(&self) {
            return Err(E::NotCoordinator.code());
        }
        written
    }

    async fn append_state(&self, partition: i32, id: &str, meta: &TxnMeta) -> Result<(), i16> {
        let snapshot = self.ctx.broker.metadata();
        let view = snapshot.topic(STATE_TOPIC).ok_or(E::CoordinatorNotAvailable.code())?;
        let handle = view.partitions.get(partition as usize).ok_or(E::CoordinatorNotAvailable.code())?;
        let value = tributary_actors::stored::encode::<StoredTxn>(meta).map_err(|e| {
            tracing::error!(error = %e, "cannot encode a transaction state");
            E::UnknownServerError.code()
        })?;
        let record = NewRecord {
            key: Some(Bytes::copy_from_slice(id.as_bytes())),
            value: Some(Bytes::from(value)),
            ..Default::default()
        };
        let batch = tributary_actors::encode_batch(&[record], kafka_protocol::records::Compression::None, tributary_actors::now_ms(), None)
            .map_err(|_| E::UnknownServerError.code())?;
        let mut append = view.prepare_append(&batch).map_err(|e| e.error_code())?;
        append.acks_all = true;
        let written = tokio::time::timeout(WRITE_TIMEOUT, handle.addr.send(append)).await;
        match written {
            Ok(Ok(Ok(_))) => Ok(()),
            Ok(Ok(Err(e))) => {
                tracing::warn!(transactional_id = %id, error = %e, "transaction state not written");
                Err(match e {
                    tributary_actors::PartitionError::NotLeader => E::NotCoordinator.code(),
                    _ => E::CoordinatorNotAvailable.code(),
                })
            }
            Ok(Err(_)) | Err(_) => Err(E::CoordinatorNotAvailable.code()),
        }
    }

    /// A fresh producer id from this broker's range.
    pub async fn allocate_producer_id(&self) -> Result<i64, i16> {
        crate::kafka::allocate_producer_id(&self.ctx).await
    }

    /// Whether this broker still leads `partition` at `epoch`.
    fn leads(&self, partition: i32, epoch: i32) -> bool {
        let snapshot = self.ctx.broker.metadata();
        crate::kafka::leader_epoch(snapshot.partition(STATE_TOPIC, partition)) == Ok(epoch)
    }
}

/// A coordinator's right to act for its state partition: this broker leads
/// it at `epoch` (the coordinator epoch its markers carry), and the load the
/// coordinator came from is still the registry's. Leadership can be lost
/// and regained within one epoch (a lease); the partition is then loaded
/// again, and the coordinators of the earlier load must stop, or two would
/// act for one transactional id.
#[derive(Clone)]
pub struct Lease {
    pub partition: i32,
    pub epoch: i32,
    live: Rc<Cell<bool>>,
}

impl Lease {
    pub fn holds(&self, shared: &Shared) -> bool {
        self.live.get() && shared.leads(self.partition, self.epoch)
    }
}

/// The coordinators of one state partition this broker leads, from one load.
struct Loaded {
    lease: Lease,
    ids: HashMap<Rc<str>, Addr<TxnCoordinator>>,
}

impl Drop for Loaded {
    /// Replaced or unloaded: its coordinators no longer act.
    fn drop(&mut self) {
        self.lease.live.set(false);
    }
}

pub struct TxnRegistry {
    shared: Rc<Shared>,
    loaded: HashMap<i32, Loaded>,
    loading: HashSet<i32>,
    /// Whether the state partitions' offsets are watched yet (once the topic exists).
    watching: bool,
    /// Keeps the in-process connections of the client open until the registry goes.
    _shutdown: tokio::sync::watch::Sender<bool>,
}

/// Starts the registry and points this broker's partitions at it for
/// verification. Called once per broker, on its actix thread; `dial` reaches
/// the other brokers (TCP when `None`).
pub fn start(ctx: &Arc<RequestContext>, dial: Option<peers::Dial>) -> Addr<TxnRegistry> {
    let (shutdown, closed) = tokio::sync::watch::channel(false);
    let own = {
        let (host, port) = ctx.config.advertised();
        tributary_client::BrokerAddress::new(host, u16::try_from(port).unwrap_or(0))
    };
    let connector = peers::Peers::new(own.clone(), crate::in_process::InProcess::new(ctx.clone(), closed), dial);
    let client = tributary_client::Client::new(connector, tributary_client::Config::new(vec![own]));
    let shared = Rc::new(Shared { ctx: ctx.clone(), config: ctx.config.clone(), client });
    let registry = TxnRegistry { shared, loaded: HashMap::new(), loading: HashSet::new(), watching: false, _shutdown: shutdown };
    let addr = registry.start();
    ctx.broker.config().txn_verifier.set(addr.clone().recipient());
    addr
}

/// A request for the coordinator of `id`.
#[derive(Message)]
#[rtype(result = "Result<TxnAnswer, i16>")]
pub struct Route {
    pub id: String,
    pub call: TxnCall,
}

/// Every transactional id this broker coordinates, with its state.
#[derive(Message)]
#[rtype(result = "Vec<(String, TxnMeta)>")]
pub struct ListAll;

/// A state partition's role may have changed.
#[derive(Message)]
#[rtype(result = "()")]
struct Recheck(i32);

impl Actor for TxnRegistry {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        // The state topic may be created later: watch the topics until it is.
        let mut topics = self.shared.ctx.broker.metadata_watch();
        let me = ctx.address();
        actix::spawn(async move {
            loop {
                let exists = topics.borrow_and_update().topic(STATE_TOPIC).is_some();
                if exists {
                    let _ = me.send(WatchStatePartitions).await;
                    return;
                }
                if topics.changed().await.is_err() {
                    return;
                }
            }
        });
    }
}

#[derive(Message)]
#[rtype(result = "()")]
struct WatchStatePartitions;

impl Handler<WatchStatePartitions> for TxnRegistry {
    type Result = ();

    /// One task per state partition wakes the registry when its role changes.
    fn handle(&mut self, _: WatchStatePartitions, ctx: &mut Context<Self>) {
        if std::mem::replace(&mut self.watching, true) {
            return;
        }
        let Some(view) = self.shared.ctx.broker.metadata().topic(STATE_TOPIC).cloned() else { return };
        for handle in &view.partitions {
            let (mut offsets, partition, me) = (handle.offsets.clone(), handle.index, ctx.address());
            actix::spawn(async move {
                let mut epoch = offsets.borrow_and_update().leader_epoch;
                me.do_send(Recheck(partition));
                while offsets.changed().await.is_ok() {
                    let now = offsets.borrow_and_update().leader_epoch;
                    if now != epoch {
                        epoch = now;
                        if me.try_send(Recheck(partition)).is_err() {
                            return;
                        }
                    }
                }
            });
        }
    }
}

impl Handler<Recheck> for TxnRegistry {
    type Result = ();

    fn handle(&mut self, Recheck(partition): Recheck, ctx: &mut Context<Self>) {
        let snapshot = self.shared.ctx.broker.metadata();
        let Some(handle) = snapshot.partition(STATE_TOPIC, partition) else { return };
        match crate::kafka::leader_epoch(Some(handle)) {
            Ok(epoch) if self.loaded.get(&partition).is_some_and(|l| l.lease.epoch == epoch) => {}
            Ok(epoch) => self.load(partition, epoch, handle.clone(), ctx),
            Err(_) => {
                if self.loaded.remove(&partition).is_some() {
                    tracing::info!(partition, "no longer coordinating the transactions of this state partition");
                }
            }
        }
    }
}

impl TxnRegistry {
    /// The coordinator of `id`, started if `create` and it has none.
    fn coordinator(&mut self, id: &str, create: bool, ctx: &mut Context<Self>) -> Result<Addr<TxnCoordinator>, i16> {
        let partition = state_partition(id, self.shared.config.transactions.state_partitions);
        let snapshot = self.shared.ctx.broker.metadata();
        let Some(handle) = snapshot.partition(STATE_TOPIC, partition) else {
            // No state topic: no transactional id exists yet (FindCoordinator creates it).
            return Err(if create { E::CoordinatorNotAvailable.code() } else { E::TransactionalIdNotFound.code() });
        };
        let epoch = crate::kafka::leader_epoch(Some(handle)).map_err(|_| E::NotCoordinator.code())?;
        if !self.loaded.get(&partition).is_some_and(|l| l.lease.epoch == epoch) {
            self.load(partition, epoch, handle.clone(), ctx);
            return Err(E::CoordinatorLoadInProgress.code());
        }
        let count: usize = self.loaded.values().map(|l| l.ids.len()).sum();
        let max = self.shared.config.transactions.max_transactional_ids;
        let loaded = self.loaded.get_mut(&partition).expect("checked above");
        if let Some(addr) = loaded.ids.get(id).filter(|a| a.connected()) {
            return Ok(addr.clone());
        }
        if !create {
            return Err(E::TransactionalIdNotFound.code());
        }
        if count >= max {
            tracing::warn!(max, "refusing a transactional id: transactions.max_transactional_ids reached");
            return Err(E::CoordinatorNotAvailable.code());
        }
        let id: Rc<str> = id.into();
        let addr = spawn_coordinator(id.clone(), self.shared.clone(), loaded.lease.clone(), None);
        loaded.ids.insert(id, addr.clone());
        Ok(addr)
    }

    /// Reads `partition` back and starts its coordinators (at most one load per partition at a time).
    fn load(&mut self, partition: i32, epoch: i32, handle: PartitionHandle, ctx: &mut Context<Self>) {
        if !self.loading.insert(partition) {
            return;
        }
        self.loaded.remove(&partition);
        tracing::info!(partition, epoch, "loading transaction states");
        let work = read_states(handle);
        ctx.spawn(work.into_actor(self).map(move |states, registry, ctx| {
            registry.loading.remove(&partition);
            let states = match states {
                Ok(states) => states,
                Err(why) => {
                    tracing::warn!(partition, reason = %why, "transaction states not loaded; trying again");
                    ctx.notify_later(Recheck(partition), LOAD_RETRY);
                    return;
                }
            };
            let lease = Lease { partition, epoch, live: Rc::new(Cell::new(true)) };
            if !lease.holds(&registry.shared) {
                return;
            }
            let mut ids = HashMap::new();
            for (id, meta) in states {
                let id: Rc<str> = id.into();
                let addr = spawn_coordinator(id.clone(), registry.shared.clone(), lease.clone(), Some(meta));
                ids.insert(id, addr);
            }
            tracing::info!(partition, epoch, ids = ids.len(), "transaction states loaded");
            registry.loaded.insert(partition, Loaded { lease, ids });
        }));
    }
}

fn spawn_coordinator(id: Rc<str>, shared: Rc<Shared>, lease: Lease, meta: Option<TxnMeta>) -> Addr<TxnCoordinator> {
    let mut actor = Some(TxnCoordinator::new(id, shared, lease, meta));
    Supervisor::start(move |_| actor.take().expect("a coordinator is created once"))
}

/// Every transactional id's latest state in a state partition, read up to
/// its log end once that is replicated.
async fn read_states(handle: PartitionHandle) -> Result<HashMap<String, TxnMeta>, String> {
    let mut offsets = handle.offsets.clone();
    let end = offsets.borrow().log_end_offset;
    let caught_up = offsets.wait_for(|o| o.high_watermark >= end);
    tokio::time::timeout(LOAD_WAIT, caught_up)
        .await
        .map_err(|_| "the high watermark did not reach the log end in time".to_string())?
        .map_err(|_| "the partition closed".to_string())?;
    let mut states = HashMap::new();
    let mut offset = handle.offsets.borrow().log_start_offset;
    for _ in 0..MAX_LOAD_READS {
        if offset >= end {
            return Ok(states);
        }
        let read = handle
            .addr
            .send(Read { offset, max_bytes: LOAD_READ_BYTES, min_one: true, committed: false })
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        if read.records.is_empty() {
            return Ok(states);
        }
        let mut records = read.records;
        let batches = kafka_protocol::records::RecordBatchDecoder::decode_all(&mut records).map_err(|e| e.to_string())?;
        for record in batches.iter().flat_map(|b| b.records.iter()) {
            offset = offset.max(record.offset + 1);
            let Some(key) = record.key.as_ref().and_then(|k| std::str::from_utf8(k).ok()) else { continue };
            match &record.value {
                None => {
                    states.remove(key);
                }
                Some(value) => match tributary_actors::stored::decode::<StoredTxn>(value) {
                    Ok(meta) => {
                        states.insert(key.to_string(), meta);
                    }
                    Err(e) => tracing::error!(transactional_id = key, error = %e, "unreadable transaction state skipped"),
                },
            }
        }
    }
    Err("the state partition has more than a load reads".into())
}

impl Handler<Route> for TxnRegistry {
    type Result = ResponseFuture<Result<TxnAnswer, i16>>;

    fn handle(&mut self, msg: Route, ctx: &mut Context<Self>) -> Self::Result {
        let create = matches!(msg.call, TxnCall::Init { .. });
        let addr = match self.coordinator(&msg.id, create, ctx) {
            Ok(addr) => addr,
            Err(code) => {
                // Calls for an id this broker never saw: Kafka's answers.
                let code = match (&msg.call, code) {
                    (TxnCall::Describe, c) => c,
                    (_, c) if c == E::TransactionalIdNotFound.code() => E::InvalidProducerIdMapping.code(),
                    (_, c) => c,
                };
                return Box::pin(async move { Err(code) });
            }
        };
        Box::pin(async move { addr.send(Call(msg.call)).await.unwrap_or(Err(E::CoordinatorNotAvailable.code())) })
    }
}

impl Handler<ListAll> for TxnRegistry {
    type Result = ResponseFuture<Vec<(String, TxnMeta)>>;

    fn handle(&mut self, _: ListAll, _: &mut Context<Self>) -> Self::Result {
        let all: Vec<(Rc<str>, Addr<TxnCoordinator>)> =
            self.loaded.values().flat_map(|l| l.ids.iter().map(|(id, a)| (id.clone(), a.clone()))).collect();
        Box::pin(async move {
            let mut out = Vec::new();
            for (id, addr) in all {
                if let Ok(Ok(TxnAnswer::Described(Some(meta)))) = addr.send(Call(TxnCall::Describe)).await {
                    out.push((id.to_string(), meta));
                }
            }
            out.sort_by(|a, b| a.0.cmp(&b.0));
            out
        })
    }
}

impl Handler<VerifyTxn> for TxnRegistry {
    type Result = ResponseFuture<Result<(), i16>>;

    /// A partition of this broker asks whether it is in a transaction: the
    /// question goes to the id's coordinator as AddPartitionsToTxn (verify only).
    fn handle(&mut self, msg: VerifyTxn, _: &mut Context<Self>) -> Self::Result {
        let shared = self.shared.clone();
        Box::pin(async move { markers::verify(&shared, &msg).await })
    }
}

/// Creates `__transaction_state` if it does not exist yet (compacted,
/// replicated as configured, at most to the live brokers).
pub async fn ensure_state_topic(ctx: &RequestContext) -> Result<(), i16> {
    if ctx.broker.metadata().topic(STATE_TOPIC).is_some() {
        return Ok(());
    }
    let t = &ctx.config.transactions;
    let rf = t.state_replication_factor.min(ctx.cluster.metadata().live_brokers().count().max(1) as i16);
    let configs = [
        ("cleanup.policy".to_string(), "compact".to_string()),
        ("min.insync.replicas".to_string(), rf.clamp(1, 2).to_string()),
    ]
    .into_iter()
    .collect();
    match ctx.cluster.create_topic(&ctx.broker, STATE_TOPIC, t.state_partitions, rf, configs).await {
        Ok(_) => Ok(()),
        Err((code, _)) if code == E::TopicAlreadyExists.code() => {
            ctx.cluster.await_local(&ctx.broker, |m| m.topic(STATE_TOPIC).is_some()).await;
            Ok(())
        }
        Err((code, why)) => {
            tracing::warn!(code, reason = %why, "cannot create {STATE_TOPIC}");
            Err(E::CoordinatorNotAvailable.code())
        }
    }
}

/// The broker that coordinates `id`: its state partition's leader.
pub fn coordinator_of(ctx: &RequestContext, id: &str) -> Result<crate::cluster::metadata::BrokerRecord, i16> {
    let partition = state_partition(id, ctx.config.transactions.state_partitions);
    let metadata = ctx.cluster.metadata();
    let leader = metadata
        .topics
        .get(STATE_TOPIC)
        .and_then(|t| t.partitions.get(partition as usize))
        .and_then(|p| p.leader)
        .ok_or(E::CoordinatorNotAvailable.code())?;
    metadata.brokers.get(&leader).filter(|b| !b.fenced).cloned().ok_or(E::CoordinatorNotAvailable.code())
}

/// The registry of `ctx`'s broker.
pub fn registry(ctx: &RequestContext) -> Result<&Addr<TxnRegistry>, i16> {
    ctx.txn.get().ok_or(E::CoordinatorNotAvailable.code())
}

/// PRODUCER_FENCED (90) as clients of `version` know it: requests older than
/// `since` (Kafka: v2 of EndTxn, AddPartitionsToTxn, AddOffsetsToTxn,
/// TxnOffsetCommit) get INVALID_PRODUCER_EPOCH.
pub fn fenced_for(code: i16, version: i16, since: i16) -> i16 {
    if code == E::ProducerFenced.code() && version < since {
        E::InvalidProducerEpoch.code()
    } else {
        code
    }
}

/// Sends `call` to `id`'s coordinator on this broker.
pub async fn route(ctx: &RequestContext, id: &str, call: TxnCall) -> Result<TxnAnswer, i16> {
    let registry = registry(ctx)?;
    registry.send(Route { id: id.to_string(), call }).await.unwrap_or(Err(E::CoordinatorNotAvailable.code()))
}
