//! The simulated brokers: the real broker code (actor tree, LMDB storage,
//! Raft, replication, Kafka request handling), one `LocalSet` each, all on
//! the simulation's one thread.
//!
//! A crash drops the broker's `LocalSet`: every actor, Raft task and
//! in-flight request of that broker is gone at once, as in a killed process,
//! and what it committed to LMDB stays on disk for the restart.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use anyhow::Context as _;
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, LocalSet};

use tributary_client::{BrokerAddress, Connector};

use super::connector::SimConnector;
use super::net::SimNetHandle;
use super::world::Shared;
use crate::txn::peers::Dial;
use crate::cluster::metadata::NodeId;
use crate::cluster::Cluster;
use crate::config::BrokerConfig;
use crate::kafka::{RequestContext, Session};

/// Client connections handed to a broker: the broker end of an in-memory stream.
type Accepted = tokio::io::DuplexStream;

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
    /// Client connections to serve; `connection::serve` runs each on this broker's `LocalSet`.
    kafka: mpsc::UnboundedSender<Accepted>,
    ready: Rc<RefCell<Option<Arc<RequestContext>>>>,
}

/// Runs a broker's `LocalSet` with its clock skew in force.
struct Skewed {
    local: Pin<Box<LocalSet>>,
    skew_ms: Rc<Cell<i64>>,
    /// Every log line of this broker's tasks names it.
    span: tracing::Span,
}

impl Future for Skewed {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let previous = tributary_actors::clock::set_skew_ms(self.skew_ms.get());
        let span = self.span.clone();
        let _entered = span.enter();
        let result = self.local.as_mut().poll(cx);
        tributary_actors::clock::set_skew_ms(previous);
        result
    }
}

impl SimBroker {
    /// Broker `id` of `brokers`, with `overlay` over the simulation's settings.
    pub fn new(
        id: NodeId,
        brokers: usize,
        data_dir: PathBuf,
        durability: &str,
        overlay: &toml::Table,
    ) -> anyhow::Result<SimBroker> {
        let voters: Vec<String> = (1..=brokers).map(|n| format!("\"{n}@10.0.0.{n}:9093\"")).collect();
        let text = format!(
            "[broker]\nnode_id = {id}\nlisten = \"10.0.0.{id}:9092\"\ndata_dir = {data_dir:?}\n\
             [storage]\ndurability = \"{durability}\"\n\
             [metrics]\nlisten = \"\"\n\
             [cluster]\nvoters = [{}]\nlisten = \"10.0.0.{id}:9093\"\nkey = \"{SIM_KEY}\"\nrack = \"rack{id}\"\n",
            voters.join(", ")
        );
        let mut table: toml::Table = text.parse()?;
        for (section, values) in overlay {
            match (table.get_mut(section), values) {
                (Some(toml::Value::Table(ours)), toml::Value::Table(theirs)) => ours.extend(theirs.clone()),
                (_, values) => {
                    table.insert(section.clone(), values.clone());
                }
            }
        }
        let config = BrokerConfig::from_table(table).context("the scenario's broker_config")?;
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
    pub fn start(&mut self, world: &Shared) {
        let net = &world.net;
        assert!(self.running.is_none(), "broker {} is already running", self.id);
        self.starts += 1;
        let local = LocalSet::new();
        let (kafka, mut accepted) = mpsc::unbounded_channel::<Accepted>();
        let ready = Rc::new(RefCell::new(None));
        let config = self.config.clone();
        let network = Arc::new(SimNetHandle(net.clone()));
        let stall = self.write_stall_ms.clone();
        let published = ready.clone();
        let id = self.id;
        let dial = dialer(SimConnector::from_broker(world, id));
        local.spawn_local(async move {
            let context = match boot(config, network, stall, dial).await {
                Ok(context) => context,
                Err(e) => {
                    tracing::error!(node_id = id, error = %e, "simulated broker failed to start");
                    return;
                }
            };
            *published.borrow_mut() = Some(context.clone());
            // Never sent: a simulated broker stops by crashing, which drops every connection with it.
            let (_shutdown, running) = watch::channel(false);
            let mut opened = 0u64;
            while let Some(stream) = accepted.recv().await {
                opened += 1;
                let peer = std::net::SocketAddr::from(([10, 0, 0, 100], 1024 + (opened % 60_000) as u16));
                let (read, write) = tokio::io::split(stream);
                let serve = crate::connection::serve(
                    read,
                    write,
                    Arc::new(Session::new(peer, "PLAINTEXT")),
                    context.clone(),
                    running.clone(),
                );
                tokio::task::spawn_local(serve);
            }
        });
        let span = tracing::info_span!("broker", id = self.id);
        let task = tokio::task::spawn_local(Skewed { local: Box::pin(local), skew_ms: self.skew_ms.clone(), span });
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

    /// Hands the broker end of a client connection to the broker, which
    /// serves it with `connection::serve`, the loop every socket runs
    /// (request budget, in-flight cap, pipelining, answers in order).
    /// `false` (refused) unless the broker is up and serving Kafka.
    pub fn accept(&self, stream: tokio::io::DuplexStream) -> bool {
        let Some(running) = self.running.as_ref() else { return false };
        if running.ready.borrow().is_none() {
            return false;
        }
        running.kafka.send(stream).is_ok()
    }
}

/// A broker's way to the others' Kafka ports, for its transaction coordinators.
fn dialer(connector: SimConnector) -> Dial {
    let connector = Rc::new(connector);
    Rc::new(move |address: BrokerAddress| {
        let connector = connector.clone();
        Box::pin(async move { connector.connect(&address).await })
    })
}

/// Starts the actor tree and the cluster side, as `main.rs` does, minus sockets.
async fn boot(
    config: Arc<BrokerConfig>,
    network: Arc<SimNetHandle>,
    write_stall_ms: Arc<AtomicU64>,
    dial: Dial,
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
    let cluster = Cluster::start_simulated(settings, broker.clone(), &data_dir, config.advertised_endpoints(), network).await?;
    crate::cluster::replica_manager::start(cluster.clone(), broker.clone());
    let metrics = Arc::new(crate::metrics::Metrics::new());
    let context = Arc::new(RequestContext::new(broker, config, metrics, cluster));
    context.start_transactions_over(Some(dial));
    Ok(context)
}
