//! `ReplicaActor`: keeps one follower partition in step with its leader by
//! pulling, as Kafka's replica fetcher does. One supervised actor per followed
//! partition; the `ReplicaManager` starts it for a (leader, epoch) and stops
//! it (`StopFollowing`, then dropping its address) when either changes. A
//! panic in a round restarts the actor, which resumes from the local log end.
//!
//! Each round asks the local partition where its log ends and the epoch of its
//! last record, fetches from there, and applies the answer: append, truncate
//! to where the logs diverge, or restart at the leader's log start.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use futures::FutureExt;

use tributary_actors::replication::{AppendReplicated, FetchPosition, RestartAt, TruncateDiverged};
use tributary_actors::Broker;

use super::metadata::NodeId;
use super::transport::{ReplicaFetchRequest, ReplicaFetchResponse};
use super::Cluster;

/// Bytes one replica fetch asks for.
const FETCH_MAX_BYTES: u32 = 4 << 20;
/// How long the leader may hold a fetch with nothing new (it answers at once on new data).
const FETCH_MAX_WAIT_MS: u32 = tributary_actors::replication::REPLICA_FETCH_MAX_WAIT.as_millis() as u32;
/// Pause after a failed round, so a down leader is not hammered.
const BACKOFF: Duration = Duration::from_millis(200);

pub struct FetchTarget {
    pub topic: Arc<str>,
    pub partition: i32,
    pub leader: NodeId,
    pub leader_epoch: i32,
}

pub struct ReplicaActor {
    cluster: Cluster,
    broker: Broker,
    target: Arc<FetchTarget>,
}

impl ReplicaActor {
    pub fn new(cluster: Cluster, broker: Broker, target: FetchTarget) -> ReplicaActor {
        ReplicaActor { cluster, broker, target: Arc::new(target) }
    }
}

impl Actor for ReplicaActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let (cluster, broker, target) = (self.cluster.clone(), self.broker.clone(), self.target.clone());
        tracing::info!(topic = %target.topic, partition = target.partition, leader = target.leader, epoch = target.leader_epoch, "following");
        let fetching = async move {
            // Rounds repeat until the actor stops; each is bounded by the transport's timeout.
            loop {
                match AssertUnwindSafe(round(&cluster, &broker, &target)).catch_unwind().await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        tracing::debug!(topic = %target.topic, partition = target.partition, error = %e, "replica fetch round failed");
                        tokio::time::sleep(BACKOFF).await;
                    }
                    Err(_) => return,
                }
            }
        };
        ctx.spawn(fetching.into_actor(self).map(|(), _, ctx| {
            tracing::error!("replica fetch panicked; restarting the replica actor");
            ctx.stop();
        }));
    }
}

impl Supervised for ReplicaActor {}

/// Stop following (the leader or epoch changed). The sender then drops its
/// address, so the supervisor does not restart the actor.
#[derive(Message)]
#[rtype(result = "()")]
pub struct StopFollowing;

impl Handler<StopFollowing> for ReplicaActor {
    type Result = ();

    fn handle(&mut self, _: StopFollowing, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

async fn round(cluster: &Cluster, broker: &Broker, target: &FetchTarget) -> Result<(), String> {
    let handle = broker.partition(&target.topic, target.partition).map_err(|e| e.to_string())?;
    let (fetch_offset, last_fetched_epoch) =
        handle.addr.send(FetchPosition).await.map_err(|e| e.to_string())?.map_err(|e| e.to_string())?;
    let request = ReplicaFetchRequest {
        topic: target.topic.to_string(),
        partition: target.partition,
        follower: cluster.node_id(),
        leader_epoch: target.leader_epoch,
        fetch_offset,
        last_fetched_epoch,
        max_bytes: FETCH_MAX_BYTES,
        max_wait_ms: FETCH_MAX_WAIT_MS,
    };
    match cluster.replica_fetch(target.leader, request).await? {
        ReplicaFetchResponse::Records { records, high_watermark, .. } => {
            let append = AppendReplicated {
                leader_epoch: target.leader_epoch,
                records: records.into(),
                leader_high_watermark: high_watermark,
            };
            handle.addr.send(append).await.map_err(|e| e.to_string())?.map_err(|e| e.to_string())?;
            Ok(())
        }
        ReplicaFetchResponse::Diverging { epoch, end_offset } => {
            tracing::info!(topic = %target.topic, partition = target.partition, epoch, end_offset, "log diverges from the leader's; truncating");
            let truncate = TruncateDiverged { epoch, end_offset };
            handle.addr.send(truncate).await.map_err(|e| e.to_string())?.map_err(|e| e.to_string())
        }
        ReplicaFetchResponse::Behind { log_start_offset } => {
            tracing::info!(topic = %target.topic, partition = target.partition, log_start_offset, "leader no longer has our next offset; restarting the log");
            handle.addr.send(RestartAt(log_start_offset)).await.map_err(|e| e.to_string())?.map_err(|e| e.to_string())
        }
        ReplicaFetchResponse::Error { code, message } => Err(format!("leader answered error {code}: {message}")),
    }
}
