//! The cluster: brokers that find each other over libp2p, a Raft quorum of
//! controllers that decides the metadata, and replicated partitions.
//!
//! ```text
//! cluster thread (tokio runtime + LocalSet)   actix system (the broker)
//!   SwarmTask: gossip, Raft RPC, fetch  <---   ReplicaManager: metadata -> roles,
//!   openraft: log + state machine              local topics, ReplicaActors
//!   controller loop: register/fence     --->   (metadata watch)
//! ```
//!
//! The Raft state machine publishes `ClusterMetadata` on a watch. The
//! `ReplicaManager` makes the local actor tree follow it: it creates and
//! deletes local topics, gives every partition its role (leader, follower) and
//! runs a `ReplicaActor` per followed partition.

pub mod metadata;
mod network;
pub mod raft;
pub mod raft_runtime;
pub mod replica_actor;
pub mod replica_manager;
pub mod transport;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use futures::FutureExt;
use openraft::error::{ClientWriteError, RaftError};
use openraft::BasicNode;
use tokio::sync::watch;
use tributary_actors::replication::{ReplicaRead, ReplicaReadOutcome};
use tributary_actors::Broker;

use self::metadata::{ClusterMetadata, Command, CommandResult, Endpoint, NodeId};
use self::raft::{MetadataMachine, Raft, RaftStore};
use self::transport::{
    Inbound, MemberInfo, ReplicaFetchRequest, ReplicaFetchResponse, Request, Response, SharedMembership,
    SimulatedNetwork, Transport,
};

/// The `[cluster]` config, resolved.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    pub node_id: NodeId,
    pub listen: SocketAddr,
    /// The controller quorum: node id -> its cluster address.
    pub voters: BTreeMap<NodeId, SocketAddr>,
    pub seeds: Vec<SocketAddr>,
    pub key: [u8; 32],
    pub rack: Option<String>,
    pub region: Option<String>,
    /// A broker not heard from for this long is fenced; one that hears no
    /// quorum for this long stops leading (broker.session.timeout.ms).
    pub session_timeout: Duration,
    /// replica.lag.time.max.ms
    pub replica_lag: Duration,
    pub request_timeout: Duration,
    /// A broker with no `[cluster] voters` is a cluster of one: the only
    /// voter, with no network (KRaft's combined mode on one node).
    pub alone: bool,
}

impl ClusterSettings {
    pub fn quorum(&self) -> usize {
        self.voters.len() / 2 + 1
    }
}

struct ClusterInner {
    settings: ClusterSettings,
    raft: Raft,
    transport: Transport,
    metadata: watch::Receiver<Arc<ClusterMetadata>>,
    membership: SharedMembership,
    /// This broker's leadership lease: when it sent the last heartbeat the
    /// controller confirmed, and the controller's commit index then.
    lease: Mutex<Option<(Instant, u64)>>,
    /// As the controller: each broker's last heartbeat (what it said, when it arrived).
    heartbeats: Mutex<BTreeMap<NodeId, (MemberInfo, Instant)>>,
}

/// A handle on this broker's part of the cluster. Cheap to clone, usable from any thread.
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<ClusterInner>,
}

/// Attempts at a controller write (each waits for a leader if there is none).
const PROPOSE_ATTEMPTS: usize = 20;
const PROPOSE_RETRY: Duration = Duration::from_millis(250);

impl Cluster {
    /// Starts the cluster thread: transport, Raft, controller loop. Returns once Raft is up.
    pub async fn start(
        settings: ClusterSettings,
        broker: Broker,
        data_dir: std::path::PathBuf,
        kafka: Vec<Endpoint>,
    ) -> anyhow::Result<Cluster> {
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        std::thread::Builder::new().name("cluster".into()).spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(runtime) => runtime,
                Err(e) => {
                    let _ = ready_tx.send(Err(anyhow::anyhow!("cluster runtime: {e}")));
                    return;
                }
            };
            // Raft's tasks are spawned locally (see raft_runtime.rs), hence the LocalSet.
            let local = tokio::task::LocalSet::new();
            local.block_on(&runtime, async move {
                let network = if settings.alone { Network::Alone } else { Network::Libp2p };
                match start_here(settings, broker, &data_dir, kafka, network).await {
                    Ok(cluster) => {
                        let _ = ready_tx.send(Ok(cluster));
                        // The runtime serves the swarm, Raft and controller tasks for the life of the process.
                        std::future::pending::<()>().await;
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                }
            });
        })?;
        ready_rx.await.map_err(|_| anyhow::anyhow!("cluster thread ended during start"))?
    }

    /// Starts this broker's cluster side on the current thread's `LocalSet`,
    /// over a simulated network. Dropping that `LocalSet` is a crash.
    pub async fn start_simulated(
        settings: ClusterSettings,
        broker: Broker,
        data_dir: &std::path::Path,
        kafka: Vec<Endpoint>,
        network: Arc<dyn SimulatedNetwork>,
    ) -> anyhow::Result<Cluster> {
        start_here(settings, broker, data_dir, kafka, Network::Simulated(network)).await
    }

    pub fn node_id(&self) -> NodeId {
        self.inner.settings.node_id
    }

    /// Stops this broker's Raft (a leader hands over by timing out; followers
    /// just stop voting). Bounded: the process exits after it either way.
    pub async fn shutdown(&self) {
        match tokio::time::timeout(Duration::from_secs(5), self.inner.raft.shutdown()).await {
            Ok(Ok(())) => tracing::info!("controller quorum member stopped"),
            Ok(Err(e)) => tracing::warn!(error = %e, "raft shutdown failed"),
            Err(_) => tracing::warn!("raft did not stop within 5 s"),
        }
    }

    pub fn settings(&self) -> &ClusterSettings {
        &self.inner.settings
    }

    pub fn metadata(&self) -> Arc<ClusterMetadata> {
        self.inner.metadata.borrow().clone()
    }

    pub fn metadata_watch(&self) -> watch::Receiver<Arc<ClusterMetadata>> {
        self.inner.metadata.clone()
    }

    /// The Raft leader, which is the active controller.
    pub fn controller_id(&self) -> Option<NodeId> {
        self.inner.raft.metrics().borrow().current_leader
    }

    /// Whether this broker's state machine has applied all it has of the log,
    /// with a known leader: its metadata is current enough to delete by.
    pub fn caught_up(&self) -> bool {
        let metrics = self.inner.raft.metrics().borrow().clone();
        let applied = metrics.last_applied.map(|l| l.index);
        metrics.current_leader.is_some() && applied.is_some() && applied >= metrics.last_log_index
    }

    /// Whether this broker may lead partitions: it hears a majority of the
    /// controller quorum and holds a lease. A lease is a heartbeat the
    /// controller confirmed (as still the Raft leader, by a quorum round)
    /// within `lease_duration` of when it was sent, and it holds only once
    /// this broker has applied the metadata the controller had committed then.
    /// The controller fences a broker only a session timeout after the last
    /// heartbeat *arrived*, which is later than it was sent, so a lease ends
    /// before the broker's leaderships can move (found by the simulation: a
    /// broker whose gossip was cut one way was fenced while it still believed
    /// it led, and refused an idempotent producer's batch as out of order; and
    /// a broker back from a partition led for a moment by stale metadata).
    pub fn may_lead(&self) -> bool {
        if !self.has_quorum() {
            return false;
        }
        if self.inner.settings.voters.len() == 1 {
            return true;
        }
        let lease = *self.inner.lease.lock().expect("lease lock");
        let Some((sent, committed)) = lease else { return false };
        if sent.elapsed() >= lease_duration(&self.inner.settings) {
            return false;
        }
        let applied = self.inner.raft.metrics().borrow().last_applied.map_or(0, |l| l.index);
        applied >= committed
    }

    /// As the controller: records a broker's heartbeat and confirms, by a
    /// quorum round, that this broker still leads the controller quorum.
    /// Answers the commit index the broker must apply before it leads.
    async fn confirm_heartbeat(&self, info: MemberInfo) -> Result<u64, String> {
        if self.controller_id() != Some(self.node_id()) {
            return Err("not the controller".into());
        }
        let arrived = Instant::now();
        let node_id = info.node_id;
        let confirm = self.inner.raft.get_read_log_id();
        let read = match tokio::time::timeout(self.heartbeat_timeout(), confirm).await {
            Ok(Ok((read, _applied))) => read.map_or(0, |l| l.index),
            Ok(Err(e)) => return Err(e.to_string()),
            Err(_) => return Err("the controller quorum did not confirm in time".into()),
        };
        self.inner.heartbeats.lock().expect("heartbeats lock").insert(node_id, (info, arrived));
        Ok(read)
    }

    fn heartbeat_timeout(&self) -> Duration {
        heartbeat_every(&self.inner.settings)
            .max(self.inner.settings.request_timeout.min(lease_duration(&self.inner.settings) / 2))
    }

    /// Whether this broker hears a majority of the controller quorum (itself included).
    pub fn has_quorum(&self) -> bool {
        let settings = &self.inner.settings;
        let members = self.inner.membership.lock().expect("membership lock");
        let alive = settings
            .voters
            .keys()
            .filter(|id| {
                **id == settings.node_id
                    || members.members.get(id).is_some_and(|m| m.last_seen.elapsed() < settings.session_timeout)
            })
            .count();
        alive >= settings.quorum()
    }

    /// Commits `command` through the controller quorum (forwarding to the
    /// Raft leader if this broker is not it) and returns what applying it answered.
    pub async fn propose(&self, command: Command) -> Result<CommandResult, String> {
        let mut last_error = String::from("no controller");
        // Bounded in count and in time: a controller cut off from its quorum never commits.
        let deadline = tokio::time::Instant::now() + 2 * self.inner.settings.request_timeout;
        for _ in 0..PROPOSE_ATTEMPTS {
            let write = self.inner.raft.client_write(command.clone());
            let Ok(written) = tokio::time::timeout_at(deadline, write).await else {
                last_error = "no commit before the deadline".into();
                break;
            };
            match written {
                Ok(answer) => return Ok(answer.data),
                Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward))) => match forward.leader_id {
                    Some(leader) if leader != self.node_id() => {
                        let request = Request::ControllerWrite(command.clone());
                        match self.inner.transport.request(leader, request, self.inner.settings.request_timeout).await {
                            Ok(Response::ControllerWrite(Ok(answer))) => return Ok(answer),
                            Ok(Response::ControllerWrite(Err(e))) => last_error = e,
                            Ok(_) => last_error = "mismatched controller answer".into(),
                            Err(e) => last_error = e,
                        }
                    }
                    _ => last_error = "no controller elected".into(),
                },
                Err(e) => last_error = e.to_string(),
            }
            if tokio::time::Instant::now() + PROPOSE_RETRY >= deadline {
                break;
            }
            tokio::time::sleep(PROPOSE_RETRY).await;
        }
        Err(format!("controller write failed: {last_error}"))
    }

    pub async fn replica_fetch(
        &self,
        leader: NodeId,
        request: ReplicaFetchRequest,
    ) -> Result<ReplicaFetchResponse, String> {
        let timeout = self.inner.settings.request_timeout + Duration::from_millis(request.max_wait_ms as u64);
        match self.inner.transport.request(leader, Request::ReplicaFetch(request), timeout).await? {
            Response::ReplicaFetch(answer) => Ok(answer),
            _ => Err("mismatched answer to a replica fetch".into()),
        }
    }
}

/// How brokers reach each other.
enum Network {
    Libp2p,
    Simulated(Arc<dyn SimulatedNetwork>),
    Alone,
}

/// Starts the cluster side on the current thread, inside a `LocalSet`.
async fn start_here(
    settings: ClusterSettings,
    broker: Broker,
    data_dir: &std::path::Path,
    kafka: Vec<Endpoint>,
    network: Network,
) -> anyhow::Result<Cluster> {
    let store = RaftStore::open(data_dir)?;
    let (machine, metadata) = MetadataMachine::open(store.clone())?;
    let incarnation = tributary_actors::now_ms().max(0) as u64;
    let me = MemberInfo {
        node_id: settings.node_id,
        listeners: kafka,
        rack: settings.rack.clone(),
        region: settings.region.clone(),
        cluster_addr: settings.listen.to_string(),
        incarnation,
    };
    let (transport, swarm_task) = match &network {
        Network::Libp2p => {
            let (transport, swarm_task) = transport::channel(transport::TransportSettings {
                node_id: settings.node_id,
                cluster_key: settings.key,
                listen: settings.listen,
                peers: settings.voters.clone(),
                seeds: settings.seeds.clone(),
                me: me.clone(),
                request_timeout: settings.request_timeout,
            });
            (transport, Some(swarm_task))
        }
        Network::Simulated(net) => (Transport::simulated(net.link(settings.node_id)), None),
        Network::Alone => (Transport::alone(), None),
    };
    let config = openraft::Config {
        cluster_name: "tributary".into(),
        heartbeat_interval: 250,
        election_timeout_min: 1000,
        election_timeout_max: 2000,
        ..Default::default()
    };
    let config = Arc::new(config.validate().map_err(|e| anyhow::anyhow!("raft config: {e}"))?);
    let raft_network = network::RaftNetworkOverTransport { transport: transport.clone() };
    let raft = Raft::new(settings.node_id, config, raft_network, store, machine)
        .await
        .map_err(|e| anyhow::anyhow!("raft: {e}"))?;
    let membership: SharedMembership = Arc::new(Mutex::new(Default::default()));
    let cell: Arc<std::sync::OnceLock<Cluster>> = Arc::new(std::sync::OnceLock::new());
    let inbound = Arc::new(Dispatcher { raft: raft.clone(), broker, cluster: cell.clone() });
    match (network, swarm_task) {
        (Network::Simulated(net), _) => net.serve(me.clone(), inbound, membership.clone()),
        (Network::Libp2p, Some(swarm_task)) => {
            let membership = membership.clone();
            tokio::task::spawn_local(async move {
                if let Err(e) = swarm_task.run(inbound, membership).await {
                    tracing::error!(error = %e, "cluster transport failed");
                }
            });
        }
        (Network::Libp2p, None) => unreachable!("a libp2p network has a swarm task"),
        (Network::Alone, _) => {}
    }
    if settings.voters.contains_key(&settings.node_id) {
        let nodes: BTreeMap<NodeId, BasicNode> =
            settings.voters.iter().map(|(id, addr)| (*id, BasicNode { addr: addr.to_string() })).collect();
        // Every voter initializes with the same membership; on a store that already has a log
        // this is refused, which is the restart case.
        if let Err(e) = raft.initialize(nodes).await {
            tracing::debug!(error = %e, "raft already initialized");
        }
    }
    let inner = ClusterInner {
        settings,
        raft,
        transport,
        metadata,
        membership,
        lease: Mutex::new(None),
        heartbeats: Mutex::new(BTreeMap::new()),
    };
    let cluster = Cluster { inner: Arc::new(inner) };
    let _ = cell.set(cluster.clone());
    tokio::task::spawn_local(controller_loop(cluster.clone()));
    tokio::task::spawn_local(heartbeat_loop(cluster.clone(), me));
    Ok(cluster)
}

/// The active controller's duties: register brokers it hears, fence those it
/// stops hearing. Runs on every broker; acts only on the Raft leader.
async fn controller_loop(cluster: Cluster) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut leading_since: Option<Instant> = None;
    let timeout = cluster.settings().session_timeout;
    loop {
        tick.tick().await;
        if cluster.controller_id() != Some(cluster.node_id()) {
            leading_since = None;
            continue;
        }
        // Brokers heartbeat the controller; a new controller gives every
        // broker a full session from when it took over (a lease granted by
        // the previous controller ends within that).
        let since = *leading_since.get_or_insert_with(|| {
            cluster.inner.heartbeats.lock().expect("heartbeats lock").clear();
            Instant::now()
        });
        let metadata = cluster.metadata();
        let members: BTreeMap<NodeId, (MemberInfo, Instant)> =
            cluster.inner.heartbeats.lock().expect("heartbeats lock").clone();
        let mut commands = Vec::new();
        for (id, (info, last_seen)) in &members {
            if last_seen.elapsed() >= timeout {
                continue;
            }
            let registered = metadata.brokers.get(id);
            // A restarted broker is fenced first (its leaderships move, as in
            // KRaft) and registered on the next tick. The controller itself just
            // registers again; the partition leader's ISR guard covers what it leads.
            if registered.is_some_and(|b| !b.fenced && b.incarnation != info.incarnation) && *id != cluster.node_id() {
                tracing::warn!(node_id = id, "broker restarted; fencing it before it registers again");
                commands.push(Command::FenceBroker { node_id: *id });
                continue;
            }
            let current = registered.is_some_and(|b| {
                !b.fenced
                    && b.listeners == info.listeners
                    && b.rack == info.rack
                    && b.region == info.region
                    && b.incarnation == info.incarnation
            });
            if !current {
                commands.push(Command::RegisterBrokerListeners {
                    node_id: *id,
                    listeners: info.listeners.clone(),
                    rack: info.rack.clone(),
                    region: info.region.clone(),
                    incarnation: info.incarnation,
                });
            }
        }
        for broker in metadata.live_brokers() {
            let heard = members.get(&broker.node_id).map_or(since, |(_, arrived)| (*arrived).max(since));
            if heard.elapsed() >= timeout && broker.node_id != cluster.node_id() {
                tracing::warn!(node_id = broker.node_id, "broker lost; fencing it");
                commands.push(Command::FenceBroker { node_id: broker.node_id });
            }
        }
        for command in commands {
            match cluster.inner.raft.client_write(command.clone()).await {
                Ok(answer) if answer.data.error_code != 0 => {
                    tracing::warn!(?command, answer = %answer.data, "controller command refused")
                }
                Ok(_) => tracing::info!(?command, "controller command committed"),
                Err(e) => tracing::warn!(?command, error = %e, "controller command failed"),
            }
        }
    }
}

/// How often a broker heartbeats the controller.
fn heartbeat_every(settings: &ClusterSettings) -> Duration {
    settings.session_timeout / 8
}

/// How long a confirmed heartbeat lets a broker lead, counted from when it was
/// sent. Shorter than the session timeout by enough that the `ReplicaManager`,
/// which applies `may_lead` on its reconcile tick (at most session/8), steps
/// down before the controller could fence the broker and move its leaderships.
pub fn lease_duration(settings: &ClusterSettings) -> Duration {
    settings.session_timeout * 3 / 4
}

/// Heartbeats the controller (itself included, through the same quorum
/// check) and keeps this broker's lease.
async fn heartbeat_loop(cluster: Cluster, me: MemberInfo) {
    let mut tick = tokio::time::interval(heartbeat_every(cluster.settings()));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let sent = Instant::now();
        let answer = match cluster.controller_id() {
            None => Err("no controller".to_string()),
            Some(id) if id == cluster.node_id() => cluster.confirm_heartbeat(me.clone()).await,
            Some(id) => {
                let request = Request::BrokerHeartbeat(me.clone());
                match cluster.inner.transport.request(id, request, cluster.heartbeat_timeout()).await {
                    Ok(Response::BrokerHeartbeat(answer)) => answer,
                    Ok(_) => Err("mismatched answer to a heartbeat".into()),
                    Err(e) => Err(e),
                }
            }
        };
        match answer {
            Ok(committed) => *cluster.inner.lease.lock().expect("lease lock") = Some((sent, committed)),
            Err(e) => tracing::debug!(error = %e, "heartbeat not confirmed"),
        }
    }
}

/// Answers inbound cluster requests.
struct Dispatcher {
    raft: Raft,
    broker: Broker,
    /// Set once the cluster handle exists (requests arrive only after that).
    cluster: Arc<std::sync::OnceLock<Cluster>>,
}

impl Inbound for Dispatcher {
    fn handle(&self, request: Request) -> futures::future::BoxFuture<'static, Response> {
        let raft = self.raft.clone();
        let broker = self.broker.clone();
        let cluster = self.cluster.get().cloned();
        async move {
            match request {
                Request::AppendEntries(rpc) => Response::AppendEntries(raft.append_entries(rpc).await),
                Request::Vote(rpc) => Response::Vote(raft.vote(rpc).await),
                Request::InstallSnapshot(rpc) => Response::InstallSnapshot(raft.install_snapshot(rpc).await),
                Request::ControllerWrite(command) => {
                    Response::ControllerWrite(match raft.client_write(command).await {
                        Ok(answer) => Ok(answer.data),
                        Err(e) => Err(e.to_string()),
                    })
                }
                Request::ReplicaFetch(fetch) => Response::ReplicaFetch(serve_replica_fetch(&broker, fetch).await),
                Request::BrokerHeartbeat(info) => Response::BrokerHeartbeat(match cluster {
                    Some(cluster) => cluster.confirm_heartbeat(info).await,
                    None => Err("starting".into()),
                }),
            }
        }
        .boxed()
    }
}

/// Upper bound on a replica fetch's long-poll. Appends and high-watermark
/// moves end the wait early, so this only sets the idle cost: one round trip
/// per followed partition per this period. Well under replica.lag.time.max.ms.
const MAX_REPLICA_WAIT: Duration = tributary_actors::replication::REPLICA_FETCH_MAX_WAIT;
/// Upper bound on a replica fetch's size.
const MAX_REPLICA_FETCH_BYTES: usize = 8 << 20;

/// A follower's fetch on this (leader) broker: read, and if there is nothing
/// new, wait for the next append up to the fetch's max wait.
async fn serve_replica_fetch(broker: &Broker, fetch: ReplicaFetchRequest) -> ReplicaFetchResponse {
    let Some(mut handle) = broker.metadata().partition(&fetch.topic, fetch.partition).cloned() else {
        return ReplicaFetchResponse::Error {
            code: kafka_protocol::ResponseError::UnknownTopicOrPartition.code(),
            message: format!("{}-{} is not on this broker", fetch.topic, fetch.partition),
        };
    };
    let deadline = tokio::time::Instant::now() + Duration::from_millis(fetch.max_wait_ms as u64).min(MAX_REPLICA_WAIT);
    let read = ReplicaRead {
        follower: fetch.follower,
        leader_epoch: fetch.leader_epoch,
        fetch_offset: fetch.fetch_offset,
        last_fetched_epoch: fetch.last_fetched_epoch,
        max_bytes: (fetch.max_bytes as usize).min(MAX_REPLICA_FETCH_BYTES),
    };
    // Two rounds at most: read; if empty, wait for an append (or the deadline) and read again.
    for round in 0..2 {
        handle.offsets.borrow_and_update();
        let outcome = match handle.addr.send(read.clone()).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(e)) => return ReplicaFetchResponse::Error { code: e.error_code(), message: e.to_string() },
            Err(e) => {
                return ReplicaFetchResponse::Error {
                    code: kafka_protocol::ResponseError::NotLeaderOrFollower.code(),
                    message: format!("partition actor unavailable: {e}"),
                }
            }
        };
        match outcome {
            ReplicaReadOutcome::Records { records, high_watermark, log_start_offset, log_end_offset } => {
                if records.is_empty() && round == 0 {
                    let _ = tokio::time::timeout_at(deadline, handle.offsets.changed()).await;
                    continue;
                }
                return ReplicaFetchResponse::Records {
                    records: records.to_vec(),
                    high_watermark,
                    log_start_offset,
                    log_end_offset,
                };
            }
            ReplicaReadOutcome::Diverging { epoch, end_offset } => {
                return ReplicaFetchResponse::Diverging { epoch, end_offset }
            }
            ReplicaReadOutcome::Behind { log_start_offset } => {
                return ReplicaFetchResponse::Behind { log_start_offset }
            }
        }
    }
    unreachable!("the second round always returns")
}

/// How long an admin request waits for this broker to apply what the controller committed.
const APPLY_WAIT: Duration = Duration::from_secs(10);

impl Cluster {
    /// Commits `command`; a refusal becomes its Kafka error code and reason.
    pub async fn commit(&self, command: Command) -> Result<(), (i16, String)> {
        match self.propose(command).await {
            Ok(answer) if answer.error_code == 0 => Ok(()),
            Ok(answer) => Err((answer.error_code, answer.message)),
            Err(e) => Err((kafka_protocol::ResponseError::RequestTimedOut.code(), e)),
        }
    }

    /// Waits (bounded) until this broker's actor tree satisfies `applied`,
    /// woken by each new topic snapshot.
    pub async fn await_local(
        &self,
        broker: &Broker,
        applied: impl Fn(&tributary_actors::MetadataSnapshot) -> bool,
    ) -> bool {
        let mut snapshots = broker.metadata_watch();
        let waited = tokio::time::timeout(APPLY_WAIT, snapshots.wait_for(|m| applied(m))).await;
        matches!(waited, Ok(Ok(_)))
    }

    /// Waits (bounded) until the partitions of `name` that the metadata says
    /// this broker leads have taken the leader role, so a topic is answered
    /// created only once it takes produce here. Woken by the partitions' watches.
    async fn await_leading(&self, broker: &Broker, name: &str) {
        let (Some(view), metadata) = (broker.metadata().topic(name).cloned(), self.metadata()) else { return };
        let Some(topic) = metadata.topics.get(name) else { return };
        let deadline = tokio::time::Instant::now() + APPLY_WAIT;
        for (record, handle) in topic.partitions.iter().zip(view.partitions.iter()) {
            if record.leader != Some(self.node_id()) {
                continue;
            }
            let mut offsets = handle.offsets.clone();
            let _ = tokio::time::timeout_at(deadline, offsets.wait_for(|o| o.leader_epoch.is_some())).await;
        }
    }

    /// Waits until the metadata lists this broker as registered and unfenced:
    /// what a cluster of one needs before it answers clients.
    pub async fn registered(&self, timeout: Duration) -> anyhow::Result<()> {
        let me = self.node_id();
        let mut metadata = self.metadata_watch();
        let listed = metadata.wait_for(|m| m.brokers.get(&me).is_some_and(|b| !b.fenced));
        let waited = tokio::time::timeout(timeout, listed).await.map(|r| r.map(|_| ()));
        match waited {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => anyhow::bail!("the metadata stopped before broker {me} was registered"),
            Err(_) => anyhow::bail!("broker {me} was not registered within {timeout:?}"),
        }
    }

    /// A topic's replication factor when the request leaves it open: 3, or
    /// fewer if fewer brokers are live.
    pub fn default_replication_factor(&self) -> i16 {
        self.metadata().live_brokers().count().clamp(1, 3) as i16
    }

    /// Creates a topic through the controller and waits until it exists here.
    pub async fn create_topic(
        &self,
        broker: &Broker,
        name: &str,
        partitions: i32,
        replication_factor: i16,
        configs: BTreeMap<String, String>,
    ) -> Result<Arc<tributary_actors::TopicView>, (i16, String)> {
        let id = uuid::Uuid::new_v4();
        let rf = if replication_factor == -1 { self.default_replication_factor() } else { replication_factor };
        let command = Command::CreateTopic {
            name: name.to_string(),
            id: *id.as_bytes(),
            partitions,
            replication_factor: rf,
            configs,
        };
        self.commit(command).await?;
        let here = |m: &tributary_actors::MetadataSnapshot| m.topic(name).is_some_and(|t| t.id == id);
        if !self.await_local(broker, here).await {
            return Err((
                kafka_protocol::ResponseError::RequestTimedOut.code(),
                format!("topic '{name}' was created but is not yet on this broker"),
            ));
        }
        self.await_leading(broker, name).await;
        broker
            .metadata()
            .topic(name)
            .cloned()
            .ok_or((kafka_protocol::ResponseError::UnknownTopicOrPartition.code(), format!("topic '{name}' vanished")))
    }

    /// The broker that coordinates `group`, if it is up: one of the controller
    /// voters, by a stable hash of the group id. A group's offsets live on that
    /// broker's disk only (they are not replicated yet), so the group never moves:
    /// while its broker is down it is unavailable rather than started over
    /// elsewhere, which would make its committed offsets go back.
    pub fn coordinator_for(&self, group: &str) -> Result<metadata::BrokerRecord, i16> {
        let voters: Vec<NodeId> = self.inner.settings.voters.keys().copied().collect();
        assert!(!voters.is_empty(), "a cluster has voters");
        let hash = group.bytes().fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(b as u32));
        let id = voters[hash as usize % voters.len()];
        match self.metadata().brokers.get(&id) {
            Some(broker) if !broker.fenced => Ok(broker.clone()),
            _ => Err(kafka_protocol::ResponseError::CoordinatorNotAvailable.code()),
        }
    }
}
