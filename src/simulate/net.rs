//! The simulated network between brokers (and from clients to brokers).
//!
//! It stands in for libp2p: a request is encoded with postcard as on the
//! wire, waits its latency in virtual time, and is handed to the target
//! broker's inbox, which runs on that broker's `LocalSet`. Faults are rules
//! the harness sets: cut links (partitions, one-way, bridge), loss,
//! duplication, extra delay and jitter (which reorders). Every random choice
//! comes from one seeded generator, so a seed replays the same deliveries.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::cluster::metadata::NodeId;
use crate::cluster::transport::{
    Inbound, Member, MemberInfo, Request, Response, SharedMembership, SimulatedLink, SimulatedNetwork,
};

/// The node id clients use: links from it are never cut by partitions.
pub const CLIENT: NodeId = 0;
/// How often a broker tells the others it is alive (as the swarm's gossip does).
const GOSSIP_EVERY: Duration = Duration::from_millis(500);

/// What the harness can change while a run goes on.
#[derive(Debug, Default, Clone)]
pub struct Rules {
    /// (from, to): messages on this link are lost.
    pub cut: BTreeSet<(NodeId, NodeId)>,
    /// Loss, in thousandths, of inter-broker and client messages.
    pub drop_per_mille: u32,
    /// Inter-broker requests delivered a second time, in thousandths.
    pub duplicate_per_mille: u32,
    /// Extra one-way latency of inter-broker messages, drawn from [0, this] ms.
    pub jitter_ms: u64,
    /// Extra one-way latency of every inter-broker message, ms.
    pub delay_ms: u64,
}

#[derive(Debug, Default, Clone, Copy)]
pub struct NetStats {
    pub messages: u64,
    pub lost: u64,
    pub duplicated: u64,
}

enum Delivery {
    Request { request: Request, reply: Option<oneshot::Sender<Response>> },
    Gossip(MemberInfo),
}

struct NetState {
    rng: StdRng,
    latency_ms: [u64; 2],
    rules: Rules,
    inboxes: BTreeMap<NodeId, mpsc::UnboundedSender<Delivery>>,
    stats: NetStats,
}

pub struct SimNet {
    state: Mutex<NetState>,
}

/// How one message fares.
enum Route {
    Lost,
    Deliver { delay: Duration, copy_after: Option<Duration> },
}

impl SimNet {
    pub fn new(seed: u64, latency_ms: [u64; 2]) -> Arc<SimNet> {
        Arc::new(SimNet {
            state: Mutex::new(NetState {
                rng: StdRng::seed_from_u64(seed),
                latency_ms,
                rules: Rules::default(),
                inboxes: BTreeMap::new(),
                stats: NetStats::default(),
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, NetState> {
        self.state.lock().expect("simulated network lock")
    }

    pub fn set_rules(&self, rules: Rules) {
        self.lock().rules = rules;
    }

    pub fn stats(&self) -> NetStats {
        self.lock().stats
    }

    /// Decides the fate of one message from `from` to `to`.
    fn route(&self, from: NodeId, to: NodeId, may_duplicate: bool) -> Route {
        let mut s = self.lock();
        s.stats.messages += 1;
        let between_brokers = from != CLIENT && to != CLIENT;
        let [min, max] = s.latency_ms;
        let mut delay = s.rng.gen_range(min..=max);
        let (drop, dup, jitter, extra) =
            (s.rules.drop_per_mille, s.rules.duplicate_per_mille, s.rules.jitter_ms, s.rules.delay_ms);
        if s.rules.cut.contains(&(from, to)) || (drop > 0 && s.rng.gen_range(0..1000) < drop) {
            s.stats.lost += 1;
            return Route::Lost;
        }
        let mut copy_after = None;
        if between_brokers {
            delay += extra;
            if jitter > 0 {
                delay += s.rng.gen_range(0..=jitter);
            }
            if may_duplicate && dup > 0 && s.rng.gen_range(0..1000) < dup {
                s.stats.duplicated += 1;
                copy_after = Some(Duration::from_millis(delay + s.rng.gen_range(1..=50 + jitter)));
            }
        }
        Route::Deliver { delay: Duration::from_millis(delay), copy_after }
    }

    /// One segment's one-way trip on a stream from `from` to `to` (a broker,
    /// or `CLIENT`): `None` if it is lost.
    pub fn stream_trip(&self, from: NodeId, to: NodeId) -> Option<Duration> {
        match self.route(from, to, false) {
            Route::Lost => None,
            Route::Deliver { delay, .. } => Some(delay),
        }
    }

    fn inbox(&self, node: NodeId) -> Option<mpsc::UnboundedSender<Delivery>> {
        self.lock().inboxes.get(&node).cloned()
    }

    /// A request's round trip; runs on the sender's `LocalSet`.
    async fn request(
        self: Arc<Self>,
        from: NodeId,
        to: NodeId,
        request: Request,
        timeout: Duration,
    ) -> Result<Response, String> {
        let deadline = Instant::now() + timeout;
        let timed_out = || format!("no answer from broker {to} within {timeout:?}");
        let bytes = postcard::to_stdvec(&request).map_err(|e| format!("encoding a cluster request: {e}"))?;
        let Route::Deliver { delay, copy_after } = self.route(from, to, true) else {
            tokio::time::sleep_until(deadline).await;
            return Err(timed_out());
        };
        if tokio::time::timeout_at(deadline, tokio::time::sleep(delay)).await.is_err() {
            return Err(timed_out());
        }
        let decode = |bytes: &[u8]| postcard::from_bytes::<Request>(bytes).map_err(|e| format!("decoding: {e}"));
        let Some(inbox) = self.inbox(to) else { return Err(format!("broker {to} unknown")) };
        let (reply, answer) = oneshot::channel();
        if inbox.send(Delivery::Request { request: decode(&bytes)?, reply: Some(reply) }).is_err() {
            return Err(format!("connection to broker {to} refused"));
        }
        if let Some(after) = copy_after {
            let net = self.clone();
            let copy = decode(&bytes)?;
            tokio::task::spawn_local(async move {
                tokio::time::sleep(after.saturating_sub(delay)).await;
                if let Some(inbox) = net.inbox(to) {
                    let _ = inbox.send(Delivery::Request { request: copy, reply: None });
                }
            });
        }
        let response = match tokio::time::timeout_at(deadline, answer).await {
            Err(_) => return Err(timed_out()),
            Ok(Err(_)) => return Err(format!("connection to broker {to} reset")),
            Ok(Ok(response)) => response,
        };
        let bytes = postcard::to_stdvec(&response).map_err(|e| format!("encoding a cluster response: {e}"))?;
        let Route::Deliver { delay, .. } = self.route(to, from, false) else {
            tokio::time::sleep_until(deadline).await;
            return Err(timed_out());
        };
        if tokio::time::timeout_at(deadline, tokio::time::sleep(delay)).await.is_err() {
            return Err(timed_out());
        }
        postcard::from_bytes::<Response>(&bytes).map_err(|e| format!("decoding a cluster response: {e}"))
    }
}

struct NodeLink {
    net: Arc<SimNet>,
    from: NodeId,
}

impl SimulatedLink for NodeLink {
    fn request(
        &self,
        node: NodeId,
        request: Request,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<Response, String>> {
        self.net.clone().request(self.from, node, request, timeout).boxed()
    }
}

/// The network as one broker's cluster layer sees it.
pub struct SimNetHandle(pub Arc<SimNet>);

impl SimulatedNetwork for SimNetHandle {
    fn link(&self, node: NodeId) -> Arc<dyn SimulatedLink> {
        Arc::new(NodeLink { net: self.0.clone(), from: node })
    }

    fn serve(&self, me: MemberInfo, inbound: Arc<dyn Inbound>, membership: SharedMembership) {
        let (tx, mut rx) = mpsc::unbounded_channel::<Delivery>();
        let node = me.node_id;
        self.0.lock().inboxes.insert(node, tx);
        // Inbound requests and gossip, served on this broker's LocalSet.
        let heard = membership.clone();
        tokio::task::spawn_local(async move {
            while let Some(delivery) = rx.recv().await {
                match delivery {
                    Delivery::Request { request, reply } => {
                        let answer = inbound.handle(request);
                        tokio::task::spawn_local(async move {
                            let response = answer.await;
                            if let Some(reply) = reply {
                                let _ = reply.send(response);
                            }
                        });
                    }
                    Delivery::Gossip(info) => {
                        let member = Member { info, last_seen: Instant::now() };
                        heard.lock().expect("membership lock").members.insert(member.info.node_id, member);
                    }
                }
            }
        });
        // Gossip: tell every other broker this one is alive.
        let net = self.0.clone();
        tokio::task::spawn_local(async move {
            let mut tick = tokio::time::interval(GOSSIP_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let me_now = Member { info: me.clone(), last_seen: Instant::now() };
                membership.lock().expect("membership lock").members.insert(node, me_now);
                let peers: Vec<NodeId> = net.lock().inboxes.keys().copied().filter(|id| *id != node).collect();
                for peer in peers {
                    let Route::Deliver { delay, .. } = net.route(node, peer, false) else { continue };
                    let (net, info) = (net.clone(), me.clone());
                    tokio::task::spawn_local(async move {
                        tokio::time::sleep(delay).await;
                        if let Some(inbox) = net.inbox(peer) {
                            let _ = inbox.send(Delivery::Gossip(info));
                        }
                    });
                }
            }
        });
    }
}
