//! One run's world: the network, the brokers, the history, the seeded
//! generator, and a small Kafka client that speaks to the brokers through
//! the simulated network (request frames over in-memory connections into
//! `connection::serve`, the same loop a socket feeds).

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, MetadataRequest, MetadataResponse, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use rand::rngs::StdRng;
use rand::Rng;
use tokio::time::Instant;

use super::checker::History;
use super::cluster::{SimBroker, CLIENT_TIMEOUT};
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
    correlation: std::cell::Cell<i32>,
    /// Ordered client connections: (connection, broker) -> when its last request arrives.
    connections: RefCell<std::collections::BTreeMap<(u64, NodeId), Instant>>,
}

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
            correlation: std::cell::Cell::new(0),
            connections: RefCell::new(std::collections::BTreeMap::new()),
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

    /// A random running broker, for requests any broker answers.
    pub fn any_running(&self) -> Option<NodeId> {
        let running = self.running_ids();
        if running.is_empty() {
            return None;
        }
        Some(running[self.random(0..=running.len() as u64 - 1) as usize])
    }

    /// The active controller as some running broker sees it.
    pub fn controller(&self) -> Option<NodeId> {
        self.brokers.borrow().iter().filter_map(|b| b.context()).find_map(|c| c.cluster.controller_id())
    }

    /// Sends one Kafka request to broker `node` and waits for its answer, as a
    /// client would: lost messages and dead brokers show as timeouts or refusals.
    pub async fn call<Req: Encodable, Resp: Decodable>(
        &self,
        node: NodeId,
        api: ApiKey,
        version: i16,
        request: &Req,
    ) -> Result<Resp, String> {
        self.call_on(None, node, api, version, request).await
    }

    /// `call` on a client connection: `Some(id)` keeps requests in order (as TCP
    /// does) and never loses them; their answers may still be lost. `None`: a
    /// fresh connection per request, either direction may be lost.
    pub async fn call_on<Req: Encodable, Resp: Decodable>(
        &self,
        connection: Option<u64>,
        node: NodeId,
        api: ApiKey,
        version: i16,
        request: &Req,
    ) -> Result<Resp, String> {
        let correlation = self.correlation.get().wrapping_add(1);
        self.correlation.set(correlation);
        let header = RequestHeader::default()
            .with_request_api_key(api as i16)
            .with_request_api_version(version)
            .with_correlation_id(correlation)
            .with_client_id(Some(StrBytes::from_static_str("simulation")));
        let mut frame = BytesMut::new();
        header.encode(&mut frame, api.request_header_version(version)).map_err(|e| e.to_string())?;
        request.encode(&mut frame, version).map_err(|e| e.to_string())?;
        let deadline = Instant::now() + CLIENT_TIMEOUT;
        let timed_out = || format!("{api:?} to broker {node}: no answer within {CLIENT_TIMEOUT:?}");
        let arrival = match connection {
            Some(id) => {
                let trip = Instant::now() + self.net.ordered_trip();
                let mut connections = self.connections.borrow_mut();
                let last = connections.entry((id, node)).or_insert(trip);
                *last = (*last).max(trip);
                *last
            }
            None => match self.net.client_trip(node, false) {
                Some(trip) => {
                    // A connection of its own: refused if the broker is down when the request gets there.
                    tokio::time::sleep(trip).await;
                    Instant::now()
                }
                None => {
                    tokio::time::sleep_until(deadline).await;
                    return Err(timed_out());
                }
            },
        };
        let answer = {
            let brokers = self.brokers.borrow();
            let broker = brokers.get(node as usize - 1).ok_or_else(|| format!("no broker {node}"))?;
            broker.send_kafka(connection, arrival, frame.freeze())
        };
        let Some(answer) = answer else { return Err(format!("{api:?} to broker {node}: connection refused")) };
        let bytes = match tokio::time::timeout_at(deadline, answer).await {
            Err(_) => return Err(timed_out()),
            Ok(Err(_)) => return Err(format!("{api:?} to broker {node}: connection reset")),
            Ok(Ok(Err(e))) => return Err(format!("{api:?} to broker {node}: {e}")),
            Ok(Ok(Ok(bytes))) => bytes,
        };
        let Some(back) = self.net.client_trip(node, true) else {
            tokio::time::sleep_until(deadline).await;
            return Err(timed_out());
        };
        tokio::time::sleep(back).await;
        decode_response(bytes, api, version, correlation)
    }

    /// Partition leaders of `topics` (or all), as broker `node` sees them.
    pub async fn metadata(&self, node: NodeId, topics: Option<&[String]>) -> Result<MetadataResponse, String> {
        let topics = topics.map(|names| {
            names
                .iter()
                .map(|n| {
                    kafka_protocol::messages::metadata_request::MetadataRequestTopic::default()
                        .with_name(Some(kafka_protocol::messages::TopicName(StrBytes::from_string(n.clone()))))
                })
                .collect()
        });
        let request = MetadataRequest::default().with_topics(topics).with_allow_auto_topic_creation(false);
        self.call(node, ApiKey::Metadata, 9, &request).await
    }

    /// The leader of `topic`-`partition`, asking a random running broker.
    pub async fn leader_of(&self, topic: &str, partition: i32) -> Option<NodeId> {
        let node = self.any_running()?;
        let response = self.metadata(node, Some(&[topic.to_string()])).await.ok()?;
        let t = response.topics.iter().find(|t| t.name.as_ref().is_some_and(|n| n.0.as_str() == topic))?;
        let p = t.partitions.iter().find(|p| p.partition_index == partition)?;
        (p.error_code == 0 && p.leader_id.0 > 0).then_some(p.leader_id.0 as NodeId)
    }
}

fn decode_response<Resp: Decodable>(
    mut bytes: Bytes,
    api: ApiKey,
    version: i16,
    correlation: i32,
) -> Result<Resp, String> {
    if bytes.len() < 4 {
        return Err(format!("{api:?}: short response"));
    }
    bytes.advance(4);
    let header = ResponseHeader::decode(&mut bytes, api.response_header_version(version)).map_err(|e| e.to_string())?;
    if header.correlation_id != correlation {
        return Err(format!("{api:?}: answer to request {} while waiting for {correlation}", header.correlation_id));
    }
    Resp::decode(&mut bytes, version).map_err(|e| format!("decoding {api:?} v{version}: {e}"))
}
