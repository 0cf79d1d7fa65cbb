//! One run's world: the network, the brokers, the history, the seeded
//! generator, and the clients the workload makes (`tributary-client` over
//! the simulated network into `connection::serve`, the loop a socket feeds).

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::Rng;
use tokio::time::Instant;
use tributary_client::{Client, Config, Retry};

use super::checker::History;
use super::cluster::SimBroker;
use super::connector::{address_of, SimConnector};
use super::net::SimNet;
use super::scenario::Scenario;
use crate::cluster::metadata::NodeId;

pub struct World {
    pub scenario: Scenario,
    pub net: Arc<SimNet>,
    /// Broker `id` is at index `id - 1`.
    pub brokers: RefCell<Vec<SimBroker>>,
    pub history: RefCell<History>,
    pub rng: RefCell<StdRng>,
    pub start: Instant,
}

/// How long a simulated client waits for an answer (beyond any wait it asks the broker for).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(8);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Clients ask for metadata again this often even without errors (new topics' leaders).
const METADATA_MAX_AGE: Duration = Duration::from_secs(10);

pub type Shared = Rc<World>;

impl World {
    pub fn new(scenario: Scenario, net: Arc<SimNet>, brokers: Vec<SimBroker>, rng: StdRng) -> Shared {
        Rc::new(World {
            scenario,
            net,
            brokers: RefCell::new(brokers),
            history: RefCell::new(History::default()),
            rng: RefCell::new(rng),
            start: Instant::now(),
        })
    }

    /// Virtual time since the run began.
    pub fn now(&self) -> Duration {
        self.start.elapsed()
    }

    pub fn event(&self, what: impl Into<String>) {
        self.history.borrow_mut().event(self.now(), what);
    }

    pub fn random(&self, range: std::ops::RangeInclusive<u64>) -> u64 {
        self.rng.borrow_mut().gen_range(range)
    }

    pub fn broker_ids(&self) -> Vec<NodeId> {
        self.brokers.borrow().iter().map(|b| b.id).collect()
    }

    pub fn running_ids(&self) -> Vec<NodeId> {
        self.brokers.borrow().iter().filter(|b| b.is_running()).map(|b| b.id).collect()
    }

    /// The active controller as some running broker sees it.
    pub fn controller(&self) -> Option<NodeId> {
        self.brokers.borrow().iter().filter_map(|b| b.context()).find_map(|c| c.cluster.controller_id())
    }

    /// Hands the broker end of a client connection to broker `node`;
    /// `false` if it is down (the connection is refused).
    pub fn accept(&self, node: NodeId, stream: tokio::io::DuplexStream) -> bool {
        let brokers = self.brokers.borrow();
        brokers.get(node as usize - 1).is_some_and(|broker| broker.accept(stream))
    }

    /// A client of the cluster, as a separate process would have: its own
    /// connections and metadata, every broker in its bootstrap list (from a
    /// random one on), the run's virtual clock, and `retry` for its requests.
    pub fn client(self: &Rc<Self>, name: &str, retry: Retry) -> Client<SimConnector> {
        let ids = self.broker_ids();
        let first = self.random(0..=ids.len() as u64 - 1) as usize;
        let bootstrap = ids.iter().cycle().skip(first).take(ids.len()).map(|id| address_of(*id)).collect();
        let mut config = Config::new(bootstrap);
        config.connection.client_id = name.to_string();
        config.connection.request_timeout = REQUEST_TIMEOUT;
        config.connect_timeout = CONNECT_TIMEOUT;
        config.metadata_max_age = METADATA_MAX_AGE;
        config.retry = retry;
        config.clock = tributary_actors::now_ms;
        Client::new(SimConnector::new(self), config)
    }
}
