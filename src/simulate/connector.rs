//! The simulation's client seam: a `tributary_client::Connector` whose byte
//! streams cross the simulated network. The workload runs the real client
//! library (metadata, leader routing, retries, pipelining, timeouts) and the
//! brokers run the real `connection::serve`; only the wire between them is
//! simulated.
//!
//! A connection is two in-memory pipes with a relay between them, one task
//! per direction. Each write arrives at the far end after a one-way trip
//! drawn from the simulated network, in order, as TCP delivers it. A lost
//! segment (a cut link, random loss) is sent again after a retransmission
//! timeout, so faults stall a stream rather than corrupt it, and a stream
//! that cannot get through after `MAX_RETRANSMITS` is reset. A crashed
//! broker drops its ends, which the client sees as the connection closing.
//!
//! Brokers dial each other the same way (the transaction coordinators'
//! markers and verifications): such a stream crosses the links between
//! brokers, so partitions, delay and reordering faults apply to it.

use std::io;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, ReadHalf, WriteHalf};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tributary_client::{BrokerAddress, Connector};

use super::net::{SimNet, CLIENT};
use super::world::{Shared, World};
use crate::cluster::metadata::NodeId;

/// Bytes a pipe buffers each way before its writer waits.
const PIPE_BYTES: usize = 1 << 20;
/// Largest segment the relay reads at once.
const SEGMENT_BYTES: usize = 64 << 10;
/// Segments read and not yet delivered, per direction (then the sender waits).
const SEGMENTS_IN_FLIGHT: usize = 64;
/// TCP's first retransmission timeout, doubled each time up to `MAX_RTO`.
const RTO: Duration = Duration::from_millis(200);
const MAX_RTO: Duration = Duration::from_secs(2);
/// Retransmissions of one segment before the stream is reset (about 20 s).
const MAX_RETRANSMITS: u32 = 12;
/// SYNs sent before a connect attempt fails (TCP resends one after 1 s).
const MAX_SYNS: u32 = 4;
const SYN_RETRY: Duration = Duration::from_secs(1);
/// The Kafka port every simulated broker listens on (`10.0.0.<id>:9092`).
pub const KAFKA_PORT: u16 = 9092;

/// Connects clients (or a broker) to the simulated brokers.
pub struct SimConnector {
    /// Weak: a broker's connector lives in the broker, which the world holds.
    world: Weak<World>,
    /// Where the streams start: `CLIENT`, or a broker.
    origin: NodeId,
}

impl SimConnector {
    /// A client's connector.
    pub fn new(world: &Shared) -> SimConnector {
        SimConnector { world: Rc::downgrade(world), origin: CLIENT }
    }

    /// Broker `id`'s connector, for its streams to the other brokers.
    pub fn from_broker(world: &Shared, id: NodeId) -> SimConnector {
        SimConnector { world: Rc::downgrade(world), origin: id }
    }
}

/// The address broker `id` listens on.
pub fn address_of(id: NodeId) -> BrokerAddress {
    BrokerAddress::new(format!("10.0.0.{id}"), KAFKA_PORT)
}

/// The broker at `address`, if one of the simulated brokers listens there.
fn node_of(address: &BrokerAddress, brokers: usize) -> Option<NodeId> {
    let id: NodeId = address.host.strip_prefix("10.0.0.")?.parse().ok()?;
    (address.port == KAFKA_PORT && (1..=brokers as NodeId).contains(&id)).then_some(id)
}

impl Connector for SimConnector {
    async fn connect(
        &self,
        address: &BrokerAddress,
    ) -> io::Result<(tributary_client::ReadHalf, tributary_client::WriteHalf)> {
        let world = self.world.upgrade().ok_or(io::ErrorKind::ConnectionRefused)?;
        let brokers = world.scenario.brokers;
        let node = node_of(address, brokers).ok_or_else(|| {
            io::Error::new(io::ErrorKind::AddrNotAvailable, format!("no simulated broker listens on {address}"))
        })?;
        let net = world.net.clone();
        drop(world);
        let (there, back) = (Link { from: self.origin, to: node }, Link { from: node, to: self.origin });
        syn(&net, there).await?;
        let (client, relay_client) = tokio::io::duplex(PIPE_BYTES);
        let (relay_broker, broker) = tokio::io::duplex(PIPE_BYTES);
        let world = self.world.upgrade().ok_or(io::ErrorKind::ConnectionRefused)?;
        if !world.accept(node, broker) {
            return Err(io::ErrorKind::ConnectionRefused.into());
        }
        drop(world);
        syn(&net, back).await?;
        let (from_client, to_client) = tokio::io::split(relay_client);
        let (from_broker, to_broker) = tokio::io::split(relay_broker);
        tokio::task::spawn_local(carry(net.clone(), there, from_client, to_broker));
        tokio::task::spawn_local(carry(net, back, from_broker, to_client));
        let (read, write) = tokio::io::split(client);
        Ok((Box::new(read), Box::new(write)))
    }
}

/// One direction of a stream.
#[derive(Clone, Copy)]
struct Link {
    from: NodeId,
    to: NodeId,
}

/// One way of the handshake: a SYN (or its answer) that gets through, resent
/// after `SYN_RETRY` while lost.
async fn syn(net: &SimNet, link: Link) -> io::Result<()> {
    for _ in 0..MAX_SYNS {
        match net.stream_trip(link.from, link.to) {
            Some(trip) => {
                tokio::time::sleep(trip).await;
                return Ok(());
            }
            None => tokio::time::sleep(SYN_RETRY).await,
        }
    }
    Err(io::ErrorKind::TimedOut.into())
}

/// Carries one direction of a connection until its sender closes it (or
/// the stream is reset), then closes the far end's reading side.
async fn carry(
    net: Arc<SimNet>,
    link: Link,
    mut from: ReadHalf<DuplexStream>,
    mut to: WriteHalf<DuplexStream>,
) {
    let (segments, mut queued) = mpsc::channel::<(Instant, Bytes)>(SEGMENTS_IN_FLIGHT);
    // Segments are stamped when written, so pipelined writes travel together.
    let read = async move {
        loop {
            let mut segment = BytesMut::with_capacity(SEGMENT_BYTES);
            match from.read_buf(&mut segment).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            if segments.send((Instant::now(), segment.freeze())).await.is_err() {
                return;
            }
        }
    };
    let deliver = async move {
        while let Some((sent, segment)) = queued.recv().await {
            let Some(arrival) = arrival(&net, link, sent).await else { break };
            tokio::time::sleep_until(arrival).await;
            if to.write_all(&segment).await.is_err() {
                break;
            }
        }
        let _ = to.shutdown().await;
    };
    // The reader ending (the sender closed) lets the rest be delivered; the
    // delivery ending (a reset, or the far end gone) stops the reader.
    tokio::pin!(deliver);
    tokio::select! {
        biased;
        () = &mut deliver => {}
        () = read => deliver.await,
    }
}

/// When a segment sent at `sent` arrives: after one trip that is not lost,
/// retransmitted while lost; `None` once `MAX_RETRANSMITS` are used up.
async fn arrival(net: &SimNet, link: Link, sent: Instant) -> Option<Instant> {
    let mut at = sent;
    let mut rto = RTO;
    for _ in 0..=MAX_RETRANSMITS {
        if let Some(trip) = net.stream_trip(link.from, link.to) {
            return Some(at + trip);
        }
        at = Instant::now().max(at) + rto;
        rto = (rto * 2).min(MAX_RTO);
        tokio::time::sleep_until(at).await;
    }
    None
}
