//! Broker-to-broker transport: one libp2p swarm per broker (TCP, a private
//! network key, noise, yamux), with identify, gossipsub for membership and
//! liveness, and request-response for Raft, controller and replication
//! traffic. Messages are postcard, length-prefixed and bounded.
//!
//! Identity: a broker's libp2p key is derived from the cluster key and its
//! node id, so every broker knows every other broker's PeerId from its id
//! alone. The cluster key is also the private-network key (libp2p pnet): a
//! peer without it fails the handshake before any protocol runs.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use futures::future::BoxFuture;
use futures::StreamExt;
use libp2p::core::upgrade::Version;
use libp2p::futures::{AsyncReadExt, AsyncWriteExt};
use libp2p::pnet::{PnetConfig, PreSharedKey};
use libp2p::request_response::{self, OutboundRequestId, ProtocolSupport, ResponseChannel};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{
    gossipsub, identify, identity, noise, tcp, yamux, Multiaddr, PeerId, StreamProtocol, Swarm, Transport as _,
};
use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};

use super::metadata::{Command, CommandResult, NodeId};
use super::raft::TypeConfig;

const RPC_PROTOCOL: StreamProtocol = StreamProtocol::new("/tributary/rpc/1");
const MEMBERS_TOPIC: &str = "tributary/members/1";
/// Largest inter-broker message (a replica fetch is bounded well below this).
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;
/// How often a broker announces itself and redials peers it lost.
pub const HEARTBEAT: Duration = Duration::from_millis(500);
/// Requests the swarm task holds unanswered; more wait in the channel.
const COMMAND_QUEUE: usize = 4096;

/// A follower's fetch from a partition leader (Kafka's replica Fetch).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReplicaFetchRequest {
    pub topic: String,
    pub partition: i32,
    pub follower: NodeId,
    pub leader_epoch: i32,
    pub fetch_offset: i64,
    pub last_fetched_epoch: i32,
    pub max_bytes: u32,
    pub max_wait_ms: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ReplicaFetchResponse {
    Records {
        /// As one byte string: serde's default for `Vec<u8>` is a sequence, one call per byte.
        #[serde(with = "serde_bytes")]
        records: Vec<u8>,
        high_watermark: i64,
        log_start_offset: i64,
        log_end_offset: i64,
    },
    Diverging {
        epoch: i32,
        end_offset: i64,
    },
    Behind {
        log_start_offset: i64,
    },
    /// A Kafka error code (not leader, fenced epoch, unknown partition) and why.
    Error {
        code: i16,
        message: String,
    },
}

#[derive(Debug, Serialize, Deserialize)]
pub enum Request {
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<NodeId>),
    InstallSnapshot(InstallSnapshotRequest<TypeConfig>),
    /// A command for the controller, from a broker that is not the Raft leader.
    ControllerWrite(Command),
    ReplicaFetch(ReplicaFetchRequest),
    /// A broker to the controller: "I am alive", renewing its leadership lease.
    BrokerHeartbeat(MemberInfo),
}

#[derive(Debug, Serialize, Deserialize)]
pub enum Response {
    AppendEntries(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    InstallSnapshot(Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>),
    ControllerWrite(Result<CommandResult, String>),
    ReplicaFetch(ReplicaFetchResponse),
    /// The controller's commit index when it confirmed the heartbeat.
    BrokerHeartbeat(Result<u64, String>),
}

/// What a broker gossips about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberInfo {
    pub node_id: NodeId,
    /// Where clients reach it, per listener.
    pub listeners: Vec<super::metadata::Endpoint>,
    pub rack: Option<String>,
    pub region: Option<String>,
    /// Where its swarm listens.
    pub cluster_addr: String,
    /// Start time: a new value means the broker restarted.
    pub incarnation: u64,
}

#[derive(Debug, Clone)]
pub struct Member {
    pub info: MemberInfo,
    pub last_seen: Instant,
}

/// Every broker this one has heard from, and when.
#[derive(Default)]
pub struct Membership {
    pub members: BTreeMap<NodeId, Member>,
}

pub type SharedMembership = Arc<Mutex<Membership>>;

/// Answers inbound requests. Runs on the cluster runtime; one task per request.
pub trait Inbound: Send + Sync + 'static {
    fn handle(&self, request: Request) -> futures::future::BoxFuture<'static, Response>;
}

/// The 32-byte cluster key, from 64 hex digits.
pub fn parse_key(hex: &str) -> anyhow::Result<[u8; 32]> {
    let hex = hex.trim();
    anyhow::ensure!(hex.len() == 64, "cluster key must be 64 hex digits (32 bytes), got {} characters", hex.len());
    let mut key = [0u8; 32];
    for (i, byte) in key.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)
            .map_err(|_| anyhow::anyhow!("cluster key has a non-hex digit near position {}", 2 * i))?;
    }
    Ok(key)
}

/// A broker's libp2p identity: an ed25519 key derived from the cluster key and its node id.
pub fn node_keypair(cluster_key: &[u8; 32], node_id: NodeId) -> identity::Keypair {
    let mut hasher = Sha256::new();
    hasher.update(b"tributary node identity v1");
    hasher.update(cluster_key);
    hasher.update(node_id.to_be_bytes());
    let seed: [u8; 32] = hasher.finalize().into();
    identity::Keypair::ed25519_from_bytes(seed).expect("32 bytes make an ed25519 key")
}

pub fn peer_id(cluster_key: &[u8; 32], node_id: NodeId) -> PeerId {
    node_keypair(cluster_key, node_id).public().to_peer_id()
}

/// `ip:port` as a TCP multiaddr.
pub fn multiaddr(addr: &std::net::SocketAddr) -> Multiaddr {
    let proto = match addr.ip() {
        std::net::IpAddr::V4(ip) => libp2p::multiaddr::Protocol::Ip4(ip),
        std::net::IpAddr::V6(ip) => libp2p::multiaddr::Protocol::Ip6(ip),
    };
    Multiaddr::empty().with(proto).with(libp2p::multiaddr::Protocol::Tcp(addr.port()))
}

#[derive(Clone, Default)]
struct PostcardCodec;

async fn read_message<T, M>(io: &mut T) -> std::io::Result<M>
where
    T: libp2p::futures::AsyncRead + Unpin + Send,
    M: for<'a> Deserialize<'a>,
{
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_MESSAGE_BYTES {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("message of {len} bytes over the limit"),
        ));
    }
    let mut buf = vec![0u8; len];
    io.read_exact(&mut buf).await?;
    postcard::from_bytes(&buf).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

async fn write_message<T, M>(io: &mut T, message: &M) -> std::io::Result<()>
where
    T: libp2p::futures::AsyncWrite + Unpin + Send,
    M: Serialize,
{
    let bytes = postcard::to_stdvec(message).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "message over the limit"));
    }
    io.write_all(&(bytes.len() as u32).to_be_bytes()).await?;
    io.write_all(&bytes).await?;
    io.close().await
}

impl request_response::Codec for PostcardCodec {
    type Protocol = StreamProtocol;
    type Request = Request;
    type Response = Response;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> std::io::Result<Request>
    where
        T: libp2p::futures::AsyncRead + Unpin + Send,
    {
        read_message(io).await
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> std::io::Result<Response>
    where
        T: libp2p::futures::AsyncRead + Unpin + Send,
    {
        read_message(io).await
    }

    async fn write_request<T>(&mut self, _: &StreamProtocol, io: &mut T, req: Request) -> std::io::Result<()>
    where
        T: libp2p::futures::AsyncWrite + Unpin + Send,
    {
        write_message(io, &req).await
    }

    async fn write_response<T>(&mut self, _: &StreamProtocol, io: &mut T, res: Response) -> std::io::Result<()>
    where
        T: libp2p::futures::AsyncWrite + Unpin + Send,
    {
        write_message(io, &res).await
    }
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    identify: identify::Behaviour,
    gossip: gossipsub::Behaviour,
    rpc: request_response::Behaviour<PostcardCodec>,
}

enum TransportCommand {
    Request { node: NodeId, request: Request, reply: oneshot::Sender<Result<Response, String>> },
}

/// Sends requests to other brokers. Cheap to clone; usable from any runtime.
#[derive(Clone)]
pub struct Transport {
    link: Link,
}

#[derive(Clone)]
enum Link {
    /// The libp2p swarm task.
    Swarm(mpsc::Sender<TransportCommand>),
    /// A network the simulation controls.
    Simulated(Arc<dyn SimulatedLink>),
    /// No network: this broker is the whole cluster (a lone voter).
    Alone,
}

/// One broker's way out into a simulated network: the simulation decides
/// whether, when and how often a request arrives, and the same for its answer.
pub trait SimulatedLink: Send + Sync + 'static {
    fn request(
        &self,
        node: NodeId,
        request: Request,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<Response, String>>;
}

/// A network the simulation controls, standing in for libp2p (`simulate/net.rs`).
pub trait SimulatedNetwork: Send + Sync + 'static {
    /// The outbound link of broker `node`.
    fn link(&self, node: NodeId) -> Arc<dyn SimulatedLink>;
    /// Connects a started broker: requests to it go to `inbound`, and what it
    /// hears of others' gossip lands in `membership`. Its tasks run on the
    /// current `LocalSet`, so they end when the broker crashes.
    fn serve(&self, me: MemberInfo, inbound: Arc<dyn Inbound>, membership: SharedMembership);
}

impl Transport {
    pub fn simulated(link: Arc<dyn SimulatedLink>) -> Transport {
        Transport { link: Link::Simulated(link) }
    }

    /// The transport of a broker that is the whole cluster: there is no one to ask.
    pub fn alone() -> Transport {
        Transport { link: Link::Alone }
    }

    /// Sends `request` to `node` and waits at most `timeout` for its answer.
    pub async fn request(&self, node: NodeId, request: Request, timeout: Duration) -> Result<Response, String> {
        let commands = match &self.link {
            Link::Swarm(commands) => commands,
            Link::Simulated(link) => return link.request(node, request, timeout).await,
            Link::Alone => return Err(format!("broker {node} is not in this one-broker cluster")),
        };
        let (reply, answer) = oneshot::channel();
        commands
            .send(TransportCommand::Request { node, request, reply })
            .await
            .map_err(|_| "cluster transport stopped".to_string())?;
        match tokio::time::timeout(timeout, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err("cluster transport dropped the request".into()),
            Err(_) => Err(format!("no answer from broker {node} within {timeout:?}")),
        }
    }
}

pub struct TransportSettings {
    pub node_id: NodeId,
    pub cluster_key: [u8; 32],
    pub listen: std::net::SocketAddr,
    /// Known addresses of other brokers (voters and seeds), by node id where known.
    pub peers: BTreeMap<NodeId, std::net::SocketAddr>,
    pub seeds: Vec<std::net::SocketAddr>,
    pub me: MemberInfo,
    pub request_timeout: Duration,
}

/// The swarm's half: create with `channel`, then `run` on the cluster runtime.
pub struct SwarmTask {
    settings: TransportSettings,
    commands: mpsc::Receiver<TransportCommand>,
}

pub fn channel(settings: TransportSettings) -> (Transport, SwarmTask) {
    let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
    (Transport { link: Link::Swarm(tx) }, SwarmTask { settings, commands: rx })
}

fn build_swarm(settings: &TransportSettings) -> anyhow::Result<Swarm<Behaviour>> {
    let keypair = node_keypair(&settings.cluster_key, settings.node_id);
    let psk = PreSharedKey::new(settings.cluster_key);
    let timeout = settings.request_timeout;
    let swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_other_transport(|key| -> Result<_, Box<dyn std::error::Error + Send + Sync>> {
            let noise = noise::Config::new(key)?;
            Ok(tcp::tokio::Transport::new(tcp::Config::default().nodelay(true))
                .and_then(move |socket, _| PnetConfig::new(psk).handshake(socket))
                .upgrade(Version::V1)
                .authenticate(noise)
                .multiplex(yamux::Config::default())
                .timeout(Duration::from_secs(10)))
        })?
        .with_behaviour(|key| -> Result<_, Box<dyn std::error::Error + Send + Sync>> {
            let gossip_config = gossipsub::ConfigBuilder::default()
                .heartbeat_interval(Duration::from_millis(500))
                .validation_mode(gossipsub::ValidationMode::Strict)
                .max_transmit_size(64 * 1024)
                .build()?;
            let gossip = gossipsub::Behaviour::new(gossipsub::MessageAuthenticity::Signed(key.clone()), gossip_config)?;
            let identify = identify::Behaviour::new(identify::Config::new("/tributary/1".into(), key.public()));
            let rpc = request_response::Behaviour::with_codec(
                PostcardCodec,
                [(RPC_PROTOCOL, ProtocolSupport::Full)],
                request_response::Config::default().with_request_timeout(timeout).with_max_concurrent_streams(1024),
            );
            Ok(Behaviour { identify, gossip, rpc })
        })?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build();
    Ok(swarm)
}

impl SwarmTask {
    /// Runs the swarm until the command channel closes (every `Transport` dropped).
    pub async fn run(mut self, inbound: Arc<dyn Inbound>, membership: SharedMembership) -> anyhow::Result<()> {
        let s = &self.settings;
        let mut swarm = build_swarm(s)?;
        swarm.listen_on(multiaddr(&s.listen))?;
        let topic = gossipsub::IdentTopic::new(MEMBERS_TOPIC);
        swarm.behaviour_mut().gossip.subscribe(&topic)?;
        let key = s.cluster_key;
        let mut addresses: HashMap<PeerId, Multiaddr> = HashMap::new();
        for (node, addr) in &s.peers {
            if *node != s.node_id {
                addresses.insert(peer_id(&key, *node), multiaddr(addr));
            }
        }
        for (peer, addr) in &addresses {
            swarm.add_peer_address(*peer, addr.clone());
        }
        for seed in &s.seeds {
            if *seed != s.listen {
                let _ = swarm.dial(multiaddr(seed));
            }
        }
        let (answers_tx, mut answers_rx) = mpsc::unbounded_channel::<(ResponseChannel<Response>, Response)>();
        let mut pending: HashMap<OutboundRequestId, oneshot::Sender<Result<Response, String>>> = HashMap::new();
        let mut heartbeat = tokio::time::interval(HEARTBEAT);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let me = s.me.clone();
        let my_peer = *swarm.local_peer_id();
        tracing::info!(node_id = s.node_id, peer = %my_peer, listen = %s.listen, "cluster transport started");
        loop {
            tokio::select! {
                command = self.commands.recv() => {
                    let Some(TransportCommand::Request { node, request, reply }) = command else { break };
                    let peer = peer_id(&key, node);
                    if peer == my_peer {
                        let _ = reply.send(Err("request addressed to this broker".into()));
                        continue;
                    }
                    let id = swarm.behaviour_mut().rpc.send_request(&peer, request);
                    pending.insert(id, reply);
                }
                Some((channel, response)) = answers_rx.recv() => {
                    let _ = swarm.behaviour_mut().rpc.send_response(channel, response);
                }
                _ = heartbeat.tick() => {
                    membership.lock().expect("membership lock").members.insert(me.node_id, Member { info: me.clone(), last_seen: Instant::now() });
                    if let Ok(bytes) = postcard::to_stdvec(&me) {
                        // Fails only while no peer is subscribed yet: nothing to tell anyone.
                        let _ = swarm.behaviour_mut().gossip.publish(topic.clone(), bytes);
                    }
                    for (peer, addr) in &addresses {
                        if !swarm.is_connected(peer) {
                            let opts = libp2p::swarm::dial_opts::DialOpts::peer_id(*peer).addresses(vec![addr.clone()]).build();
                            let _ = swarm.dial(opts);
                        }
                    }
                }
                event = swarm.select_next_some() => match event {
                    SwarmEvent::Behaviour(BehaviourEvent::Rpc(request_response::Event::Message { message, .. })) => match message {
                        request_response::Message::Request { request, channel, .. } => {
                            let answers = answers_tx.clone();
                            let answer = inbound.handle(request);
                            tokio::task::spawn_local(async move {
                                let _ = answers.send((channel, answer.await));
                            });
                        }
                        request_response::Message::Response { request_id, response } => {
                            if let Some(reply) = pending.remove(&request_id) {
                                let _ = reply.send(Ok(response));
                            }
                        }
                    },
                    SwarmEvent::Behaviour(BehaviourEvent::Rpc(request_response::Event::OutboundFailure { request_id, error, peer, .. })) => {
                        tracing::debug!(%peer, %error, "cluster request failed");
                        if let Some(reply) = pending.remove(&request_id) {
                            let _ = reply.send(Err(error.to_string()));
                        }
                    }
                    SwarmEvent::Behaviour(BehaviourEvent::Gossip(gossipsub::Event::Message { message, .. })) => {
                        let Ok(info) = postcard::from_bytes::<MemberInfo>(&message.data) else {
                            tracing::warn!("undecodable membership message");
                            continue;
                        };
                        let peer = peer_id(&key, info.node_id);
                        if message.source != Some(peer) {
                            tracing::warn!(node_id = info.node_id, source = ?message.source, "membership message for another broker's id; ignored");
                            continue;
                        }
                        if let Ok(addr) = info.cluster_addr.parse::<std::net::SocketAddr>() {
                            let addr = multiaddr(&addr);
                            if addresses.insert(peer, addr.clone()).is_none() {
                                swarm.add_peer_address(peer, addr);
                            }
                        }
                        let mut members = membership.lock().expect("membership lock");
                        if members.members.get(&info.node_id).is_none_or(|m| m.info != info) {
                            tracing::info!(node_id = info.node_id, kafka = ?info.listeners, "broker seen");
                        }
                        members.members.insert(info.node_id, Member { info, last_seen: Instant::now() });
                    }
                    SwarmEvent::ConnectionEstablished { peer_id, endpoint, .. } => {
                        tracing::debug!(%peer_id, addr = %endpoint.get_remote_address(), "cluster connection up");
                    }
                    SwarmEvent::ConnectionClosed { peer_id, cause, .. } => {
                        tracing::debug!(%peer_id, ?cause, "cluster connection closed");
                    }
                    SwarmEvent::IncomingConnectionError { send_back_addr, error, .. } => {
                        tracing::warn!(from = %send_back_addr, %error, "refused a cluster connection (wrong cluster key?)");
                    }
                    _ => {}
                },
            }
        }
        Ok(())
    }
}
