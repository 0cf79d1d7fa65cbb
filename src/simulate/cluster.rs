//! The simulated brokers: the real broker code (actor tree, LMDB storage,
//! Raft, replication, Kafka request handling), one `LocalSet` each, all on
//! the simulation's one thread.
//!
//! A crash drops the broker's `LocalSet`: every actor, Raft task and
//! in-flight request of that broker is gone at once, as in a killed process,
//! and what it committed to LMDB stays on disk for the restart.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::{JoinHandle, LocalSet};
use tokio::time::Instant;

use super::net::{SimNet, SimNetHandle};
use crate::cluster::metadata::NodeId;
use crate::cluster::Cluster;
use crate::config::BrokerConfig;
use crate::kafka::{RequestContext, Session};

type Reply = oneshot::Sender<Result<Bytes, String>>;
/// A request frame to write at an instant, and where its response goes.
type Outgoing = (Instant, Bytes, Reply);
/// A request on client connection `.0` (`None`: a connection of its own).
type KafkaCall = (Option<u64>, Outgoing);

/// Bytes an in-memory client connection buffers each way before a writer waits.
const PIPE_BYTES: usize = 1 << 20;
/// Largest response a simulated client reads.
const MAX_RESPONSE_BYTES: usize = 128 << 20;

/// The shared key of simulated clusters (the network is simulated; it only has to match).
const SIM_KEY: &str = "51ab51ab51ab51ab51ab51ab51ab51ab51ab51ab51ab51ab51ab51ab51ab51ab";

pub struct SimBroker {
    pub id: NodeId,
    config: Arc<BrokerConfig>,
    /// This broker's wall-clock skew, applied while its tasks run.
    pub skew_ms: Rc<Cell<i64>>,
    /// Its partitions' write stall (a slow disk), ms.
    pub write_stall_ms: Arc<AtomicU64>,
    running: Option<Running>,
    pub starts: u32,
}

struct Running {
    task: JoinHandle<()>,
    kafka: mpsc::UnboundedSender<KafkaCall>,
    ready: Rc<RefCell<Option<Arc<RequestContext>>>>,
}

/// Runs a broker's `LocalSet` with its clock skew in force.
struct Skewed {
    local: Pin<Box<LocalSet>>,
    skew_ms: Rc<Cell<i64>>,
}

impl Future for Skewed {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let previous = tributary_actors::clock::set_skew_ms(self.skew_ms.get());
        let result = self.local.as_mut().poll(cx);
        tributary_actors::clock::set_skew_ms(previous);
        result
    }
}

impl SimBroker {
    pub fn new(id: NodeId, brokers: usize, data_dir: PathBuf, durability: &str) -> anyhow::Result<SimBroker> {
        let voters: Vec<String> = (1..=brokers).map(|n| format!("\"{n}@10.0.0.{n}:9093\"")).collect();
        let text = format!(
            "[broker]\nnode_id = {id}\nlisten = \"10.0.0.{id}:9092\"\ndata_dir = {data_dir:?}\n\
             [storage]\ndurability = \"{durability}\"\n\
             [metrics]\nlisten = \"\"\n\
             [cluster]\nvoters = [{}]\nlisten = \"10.0.0.{id}:9093\"\nkey = \"{SIM_KEY}\"\nrack = \"rack{id}\"\n",
            voters.join(", ")
        );
        let config = BrokerConfig::load(Some(&text))?;
        Ok(SimBroker {
            id,
            config: Arc::new(config),
            skew_ms: Rc::new(Cell::new(0)),
            write_stall_ms: Arc::default(),
            running: None,
            starts: 0,
        })
    }

    pub fn is_running(&self) -> bool {
        self.running.is_some()
    }

    /// The broker's request context once it has started (its Kafka side is up).
    pub fn context(&self) -> Option<Arc<RequestContext>> {
        self.running.as_ref().and_then(|r| r.ready.borrow().clone())
    }

    /// Starts (or restarts) the broker on its own `LocalSet`.
    pub fn start(&mut self, net: &Arc<SimNet>) {
        assert!(self.running.is_none(), "broker {} is already running", self.id);
        self.starts += 1;
        let local = LocalSet::new();
        let (kafka, mut calls) = mpsc::unbounded_channel::<KafkaCall>();
        let ready = Rc::new(RefCell::new(None));
        let config = self.config.clone();
        let network = Arc::new(SimNetHandle(net.clone()));
        let stall = self.write_stall_ms.clone();
        let published = ready.clone();
        let id = self.id;
        local.spawn_local(async move {
            let context = match boot(config, network, stall).await {
                Ok(context) => context,
                Err(e) => {
                    tracing::error!(node_id = id, error = %e, "simulated broker failed to start");
                    return;
                }
            };
            *published.borrow_mut() = Some(context.clone());
            // Never sent: a simulated broker stops by crashing, which drops every connection with it.
            let (_shutdown, running) = watch::channel(false);
            let mut connections: BTreeMap<u64, mpsc::UnboundedSender<Outgoing>> = BTreeMap::new();
            let mut opened = 0u64;
            while let Some((connection, outgoing)) = calls.recv().await {
                opened += 1;
                let queue = match connection {
                    Some(id) => connections.entry(id).or_insert_with(|| connect(&context, &running, opened)),
                    // A connection of its own, closed once its one request is written.
                    None => &connect(&context, &running, opened),
                };
                let _ = queue.send(outgoing);
            }
        });
        let task = tokio::task::spawn_local(Skewed { local: Box::pin(local), skew_ms: self.skew_ms.clone() });
        self.running = Some(Running { task, kafka, ready });
    }

    /// Kills the broker. Its `LocalSet` (every actor, Raft task and LMDB
    /// environment of it) is dropped when the caller awaits the returned task,
    /// which it must do before starting the broker again.
    pub fn kill(&mut self) -> Option<JoinHandle<()>> {
        let running = self.running.take()?;
        running.ready.borrow_mut().take();
        running.task.abort();
        Some(running.task)
    }

    pub fn set_write_stall(&self, ms: u64) {
        self.write_stall_ms.store(ms, Ordering::Relaxed);
    }

    /// Hands a Kafka request frame (without its length prefix), sent on client
    /// connection `connection`, to the broker, to arrive at `arrival`. The
    /// answer is the response frame with its length prefix.
    pub fn send_kafka(
        &self,
        connection: Option<u64>,
        arrival: Instant,
        frame: Bytes,
    ) -> Option<oneshot::Receiver<Result<Bytes, String>>> {
        let running = self.running.as_ref()?;
        running.ready.borrow().as_ref()?;
        let (tx, rx) = oneshot::channel();
        running.kafka.send((connection, (arrival, frame, tx))).ok()?;
        Some(rx)
    }
}

/// Opens a client connection to this broker: an in-memory pipe whose broker
/// end runs `connection::serve`, the loop every socket runs (request budget,
/// in-flight cap, pipelining, answers in order). The client end writes each
/// request at its arrival instant, in the order they were sent, and hands
/// responses back in order. Every simulated request expects a response.
fn connect(context: &Arc<RequestContext>, shutdown: &watch::Receiver<bool>, n: u64) -> mpsc::UnboundedSender<Outgoing> {
    let (client, server) = tokio::io::duplex(PIPE_BYTES);
    let (server_read, server_write) = tokio::io::split(server);
    let peer = std::net::SocketAddr::from(([10, 0, 0, 100], 1024 + (n % 60_000) as u16));
    let session = Session::new(peer, "PLAINTEXT");
    tokio::task::spawn_local(crate::connection::serve(
        server_read,
        server_write,
        session,
        context.clone(),
        shutdown.clone(),
    ));
    let (client_read, client_write) = tokio::io::split(client);
    let waiting: Rc<RefCell<VecDeque<Reply>>> = Rc::default();
    let (queue, requests) = mpsc::unbounded_channel();
    tokio::task::spawn_local(write_requests(client_write, requests, waiting.clone()));
    tokio::task::spawn_local(read_responses(client_read, waiting));
    queue
}

/// Writes each request, length-prefixed, at its arrival instant. Ends when
/// the connection's sender is dropped, which closes the pipe.
async fn write_requests(
    mut pipe: tokio::io::WriteHalf<tokio::io::DuplexStream>,
    mut requests: mpsc::UnboundedReceiver<Outgoing>,
    waiting: Rc<RefCell<VecDeque<Reply>>>,
) {
    while let Some((arrival, frame, reply)) = requests.recv().await {
        tokio::time::sleep_until(arrival).await;
        waiting.borrow_mut().push_back(reply);
        let mut bytes = BytesMut::with_capacity(4 + frame.len());
        bytes.extend_from_slice(&(frame.len() as u32).to_be_bytes());
        bytes.extend_from_slice(&frame);
        if pipe.write_all(&bytes).await.is_err() {
            return;
        }
    }
}

/// Hands each response frame to the oldest request waiting for one. Ends
/// when the broker closes the connection; requests still waiting then see
/// their reply dropped, as a client sees a reset.
async fn read_responses(mut pipe: tokio::io::ReadHalf<tokio::io::DuplexStream>, waiting: Rc<RefCell<VecDeque<Reply>>>) {
    loop {
        let mut len = [0u8; 4];
        if pipe.read_exact(&mut len).await.is_err() {
            return;
        }
        let size = u32::from_be_bytes(len) as usize;
        let Some(reply) = waiting.borrow_mut().pop_front() else { return };
        if size > MAX_RESPONSE_BYTES {
            let _ = reply.send(Err(format!("response of {size} bytes is over {MAX_RESPONSE_BYTES}")));
            return;
        }
        let mut frame = vec![0u8; 4 + size];
        frame[..4].copy_from_slice(&len);
        if pipe.read_exact(&mut frame[4..]).await.is_err() {
            return;
        }
        let _ = reply.send(Ok(Bytes::from(frame)));
    }
}

/// Starts the actor tree and the cluster side, as `main.rs` does, minus sockets.
async fn boot(
    config: Arc<BrokerConfig>,
    network: Arc<SimNetHandle>,
    write_stall_ms: Arc<AtomicU64>,
) -> anyhow::Result<Arc<RequestContext>> {
    let data_dir = config.broker.data_dir.clone();
    std::fs::create_dir_all(&data_dir)?;
    let mut storage = config.storage_config();
    storage.storage_threads = 0;
    storage.write_stall_ms = write_stall_ms;
    // Small maps: a simulated partition holds little, and many are opened per run.
    storage.initial_map_bytes = 16 << 20;
    let broker = tributary_actors::Broker::start(storage).map_err(|e| anyhow::anyhow!("{e}"))?;
    let settings = config.cluster_settings()?;
    let cluster = Cluster::start_simulated(settings, broker.clone(), &data_dir, config.advertised(), network).await?;
    crate::cluster::replica_manager::start(cluster.clone(), broker.clone());
    let metrics = Arc::new(crate::metrics::Metrics::new());
    Ok(Arc::new(RequestContext::new(broker, config, metrics, cluster)))
}

/// How long a simulated client waits for any answer.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(8);
