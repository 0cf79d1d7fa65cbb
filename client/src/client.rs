//! The cluster-aware client: bootstrap, a metadata cache, one connection per
//! broker, leader and coordinator routing, and bounded retries.
//!
//! Routing never trusts the cache after a failure: every retriable error
//! drops the cached topics and coordinators, so the next attempt asks the
//! cluster again (a moved leader, a topic another broker has not applied yet,
//! a coordinator that moved). Retries are bounded in count and time
//! ([`Retry`]) and back off deterministically, which keeps simulated runs
//! reproducible.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::future::Future;
use std::rc::Rc;
use std::time::Duration;

use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{FindCoordinatorRequest, FindCoordinatorResponse, MetadataRequest, TopicName};
use kafka_protocol::protocol::StrBytes;
use tokio::time::Instant;

use crate::connection::{Connection, ConnectionSettings};
use crate::connector::{BrokerAddress, Connector};
use crate::error::{check_message, Error, Result, Subject};
use crate::metadata::{Metadata, TopicInfo};

/// How often and for how long a failed request is retried.
#[derive(Clone, Debug)]
pub struct Retry {
    /// Tries in all, the first included.
    pub attempts: u32,
    /// No retry starts later than this after the first try.
    pub within: Duration,
    /// The wait before the first retry; it doubles up to `max_backoff`.
    pub backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for Retry {
    fn default() -> Retry {
        Retry {
            attempts: 10,
            within: Duration::from_secs(30),
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
        }
    }
}

impl Retry {
    /// The wait after failed try `attempt` (1-based).
    fn delay(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1).min(16);
        self.backoff.saturating_mul(1 << doublings).min(self.max_backoff)
    }
}

#[derive(Clone, Debug)]
pub struct Config {
    /// Brokers to ask first; the rest are learned from Metadata.
    pub bootstrap: Vec<BrokerAddress>,
    pub connection: ConnectionSettings,
    pub connect_timeout: Duration,
    pub retry: Retry,
    /// A topic's cached metadata is asked for again after this long even
    /// without an error (new partitions; Kafka's `metadata.max.age.ms`).
    pub metadata_max_age: Duration,
    /// Milliseconds since the epoch, for records produced without a
    /// timestamp (the simulation passes its virtual clock).
    pub clock: fn() -> i64,
}

impl Config {
    pub fn new(bootstrap: Vec<BrokerAddress>) -> Config {
        Config {
            bootstrap,
            connection: ConnectionSettings::default(),
            connect_timeout: Duration::from_secs(10),
            retry: Retry::default(),
            metadata_max_age: Duration::from_secs(300),
            clock: system_now_ms,
        }
    }
}

fn system_now_ms() -> i64 {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
}

/// A handle on a cluster; clones share connections and metadata. Not `Send`:
/// it lives on one thread's `LocalSet`.
pub struct Client<C: Connector> {
    inner: Rc<Inner<C>>,
}

impl<C: Connector> Clone for Client<C> {
    fn clone(&self) -> Self {
        Client { inner: self.inner.clone() }
    }
}

struct Inner<C> {
    connector: Rc<C>,
    config: Config,
    cache: RefCell<Cache>,
    /// One connection per broker address. A slot's lock is held while its
    /// connection opens, so callers that want the same broker at once share
    /// one connection. Ordered, so the choice of "any open connection" is
    /// the same on every run (the simulation replays runs by seed).
    pool: RefCell<BTreeMap<BrokerAddress, Slot>>,
}

type Slot = Rc<tokio::sync::Mutex<Option<Rc<Connection>>>>;

/// What the client last heard of the cluster.
#[derive(Default)]
struct Cache {
    brokers: BTreeMap<i32, BrokerAddress>,
    controller: Option<i32>,
    /// Each with when it was learned, for `Config::metadata_max_age`.
    topics: BTreeMap<String, (TopicInfo, Instant)>,
    coordinators: BTreeMap<String, BrokerAddress>,
}

impl<C: Connector> Client<C> {
    pub fn new(connector: C, config: Config) -> Client<C> {
        assert!(!config.bootstrap.is_empty(), "a client needs at least one bootstrap broker");
        assert!(config.retry.attempts > 0, "a request is tried at least once");
        let inner =
            Inner { connector: Rc::new(connector), config, cache: RefCell::default(), pool: RefCell::default() };
        Client { inner: Rc::new(inner) }
    }

    /// A client with the same connector and config but connections (and
    /// metadata) of its own. A broker answers one connection's requests one
    /// after another (only produce pipelines), so a request the broker holds
    /// (a join waiting for the rebalance, a long-polling fetch) holds up
    /// everything behind it: group members and long polls get their own.
    pub fn detached(&self) -> Client<C> {
        let config = self.inner.config.clone();
        let inner = Inner {
            connector: self.inner.connector.clone(),
            config,
            cache: RefCell::default(),
            pool: RefCell::default(),
        };
        Client { inner: Rc::new(inner) }
    }

    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// The open connection to `address`, opened on first use or after it closed.
    pub async fn connection(&self, address: &BrokerAddress) -> Result<Rc<Connection>> {
        let slot = self.inner.pool.borrow_mut().entry(address.clone()).or_default().clone();
        let mut slot = slot.lock().await;
        if let Some(open) = slot.as_ref().filter(|c| !c.is_closed()) {
            return Ok(open.clone());
        }
        let connection = self.open(address).await?;
        *slot = Some(connection.clone());
        Ok(connection)
    }

    async fn open(&self, address: &BrokerAddress) -> Result<Rc<Connection>> {
        let config = &self.inner.config;
        let connect_failed = |source| Error::Connect { address: address.clone(), source };
        let streams = match tokio::time::timeout(config.connect_timeout, self.inner.connector.connect(address)).await {
            Ok(streams) => streams.map_err(connect_failed)?,
            Err(_) => return Err(connect_failed(std::io::ErrorKind::TimedOut.into())),
        };
        Ok(Rc::new(Connection::open(address.clone(), streams, config.connection.clone()).await?))
    }

    /// A connection to any broker: one already open, else the known brokers
    /// and then the bootstrap list in turn. [`Error::Unreachable`] if none answers.
    pub async fn any_broker(&self) -> Result<Rc<Connection>> {
        // A slot being opened right now is passed over (its lock is taken).
        let open = self
            .inner
            .pool
            .borrow()
            .values()
            .find_map(|slot| slot.try_lock().ok().and_then(|c| c.as_ref().filter(|c| !c.is_closed()).cloned()));
        if let Some(open) = open {
            return Ok(open);
        }
        let mut candidates: Vec<BrokerAddress> = self.inner.cache.borrow().brokers.values().cloned().collect();
        for address in &self.inner.config.bootstrap {
            if !candidates.contains(address) {
                candidates.push(address.clone());
            }
        }
        let mut last = None;
        for address in &candidates {
            match self.connection(address).await {
                Ok(connection) => return Ok(connection),
                Err(e) => last = Some(e),
            }
        }
        Err(Error::Unreachable(Box::new(last.expect("the bootstrap list is not empty"))))
    }

    /// The connection to broker `id`, its address from metadata.
    pub async fn broker(&self, id: i32) -> Result<Rc<Connection>> {
        let known = self.inner.cache.borrow().brokers.get(&id).cloned();
        let address = match known {
            Some(address) => address,
            None => {
                self.metadata(Some(&[])).await?;
                self.inner.cache.borrow().brokers.get(&id).cloned().ok_or(Error::UnknownBroker(id))?
            }
        };
        self.connection(&address).await
    }

    /// Asks any broker for metadata of `topics` (`None`: all) and caches it.
    /// Topic errors are in the answer, not raised.
    pub async fn metadata(&self, topics: Option<&[&str]>) -> Result<Metadata> {
        let topics = topics.map(|names| {
            names.iter().map(|n| MetadataRequestTopic::default().with_name(Some(topic_name(n)))).collect()
        });
        let request = MetadataRequest::default().with_topics(topics).with_allow_auto_topic_creation(false);
        let metadata = Metadata::from_response(self.any_broker().await?.send(&request).await?)?;
        self.remember(&metadata);
        Ok(metadata)
    }

    fn remember(&self, metadata: &Metadata) {
        let mut cache = self.inner.cache.borrow_mut();
        cache.brokers = metadata.brokers.iter().map(|b| (b.id, b.address.clone())).collect();
        cache.controller = metadata.controller;
        for topic in &metadata.topics {
            match topic.error {
                None => cache.topics.insert(topic.name.clone(), (topic.clone(), Instant::now())),
                Some(_) => cache.topics.remove(&topic.name),
            };
        }
    }

    /// The topic as metadata last described it, asked for if not cached or
    /// older than `Config::metadata_max_age`.
    /// Its error (UNKNOWN_TOPIC_OR_PARTITION, ...) is raised.
    pub async fn topic(&self, name: &str) -> Result<TopicInfo> {
        let max_age = self.inner.config.metadata_max_age;
        let cached =
            self.inner.cache.borrow().topics.get(name).filter(|(_, at)| at.elapsed() < max_age).map(|(t, _)| t.clone());
        if let Some(topic) = cached {
            return Ok(topic);
        }
        let metadata = self.metadata(Some(&[name])).await?;
        let topic = metadata.topics.into_iter().find(|t| t.name == name);
        let unknown = || {
            crate::error::kafka_error(
                kafka_protocol::ResponseError::UnknownTopicOrPartition,
                Subject::Topic(name.to_string()),
            )
        };
        let topic = topic.ok_or_else(unknown)?;
        topic.check()?;
        Ok(topic)
    }

    /// The connection to the leader of `topic`-`partition`.
    pub async fn leader(&self, topic: &str, partition: i32) -> Result<Rc<Connection>> {
        let leader = self.topic(topic).await?.leader(partition)?;
        self.broker(leader).await
    }

    /// `partitions` of `topic` grouped by their leader's id.
    pub async fn by_leader(&self, topic: &str, partitions: &[i32]) -> Result<BTreeMap<i32, Vec<i32>>> {
        let info = self.topic(topic).await?;
        let mut groups: BTreeMap<i32, Vec<i32>> = BTreeMap::new();
        for partition in partitions {
            groups.entry(info.leader(*partition)?).or_default().push(*partition);
        }
        Ok(groups)
    }

    /// The controller (for topic changes), or any broker if metadata names none.
    pub async fn controller(&self) -> Result<Rc<Connection>> {
        let known = self.inner.cache.borrow().controller;
        let controller = match known {
            Some(id) => Some(id),
            None => self.metadata(Some(&[])).await?.controller,
        };
        match controller {
            Some(id) => self.broker(id).await,
            None => self.any_broker().await,
        }
    }

    /// The connection to the coordinator of `group` (FindCoordinator, cached).
    pub async fn coordinator(&self, group: &str) -> Result<Rc<Connection>> {
        let cached = self.inner.cache.borrow().coordinators.get(group).cloned();
        if let Some(address) = cached {
            return self.connection(&address).await;
        }
        let request =
            FindCoordinatorRequest::default().with_key(StrBytes::from_string(group.to_string())).with_key_type(0);
        let response: FindCoordinatorResponse = self.any_broker().await?.send(&request).await?;
        check_message(response.error_code, response.error_message.as_ref(), || Subject::Group(group.to_string()))?;
        let port = u16::try_from(response.port)
            .map_err(|_| Error::BadAddress { input: format!("{}:{}", response.host, response.port) })?;
        let address = BrokerAddress::new(response.host.to_string(), port);
        self.inner.cache.borrow_mut().coordinators.insert(group.to_string(), address.clone());
        self.connection(&address).await
    }

    /// Drops cached topics, coordinators and the controller, so the next
    /// request asks the cluster again.
    pub fn forget(&self) {
        let mut cache = self.inner.cache.borrow_mut();
        cache.topics.clear();
        cache.coordinators.clear();
        cache.controller = None;
    }

    /// Runs `attempt` until it succeeds, fails with an error that is not
    /// retriable, or `Config::retry` is used up; the cache is dropped before
    /// each retry. The last error is returned as it is.
    pub async fn retrying<T, F, Fut>(&self, mut attempt: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let retry = &self.inner.config.retry;
        let started = Instant::now();
        // Bounded by retry.attempts.
        for tried in 1..=retry.attempts {
            let error = match attempt().await {
                Ok(value) => return Ok(value),
                Err(error) => error,
            };
            let delay = retry.delay(tried);
            if !error.is_retriable() || tried == retry.attempts || started.elapsed() + delay > retry.within {
                return Err(error);
            }
            self.forget();
            tokio::time::sleep(delay).await;
        }
        unreachable!("the last attempt returns")
    }

    /// The record timestamp for now, by `Config::clock`.
    pub fn now_ms(&self) -> i64 {
        (self.inner.config.clock)()
    }
}

pub fn topic_name(name: &str) -> TopicName {
    TopicName(StrBytes::from_string(name.to_string()))
}

pub fn str_bytes(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}
