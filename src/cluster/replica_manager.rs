//! `ReplicaManager`: makes this broker's actor tree follow the controller's
//! metadata. On every metadata change (and every second, which also repairs
//! partition actors restarted by their supervisors) it:
//! - creates, grows, re-configures and deletes local topics;
//! - gives each partition its role: leader (with ISR), follower, or none;
//! - runs one supervised `ReplicaActor` per partition this broker follows;
//! - forwards the ISR changes partition leaders ask for to the controller.
//!
//! A broker that cannot hear a quorum of controllers leads nothing: its
//! leaderships may already have moved, and it must not acknowledge writes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use actix::{Addr, Supervisor};
use tokio::sync::mpsc;
use tributary_actors::config::ConfigOp;
use tributary_actors::replication::{CheckIsr, IsrChange, LeaderRole, Role, SetRole};
use tributary_actors::{AlterTopicConfig, Broker, CreatePartitions, CreateTopic, DeleteTopic, SetBrokerOverrides};
use uuid::Uuid;

use super::metadata::{ClusterMetadata, Command, NodeId};
use super::replica_actor::{FetchTarget, ReplicaActor, StopFollowing};
use super::Cluster;

const RECONCILE_EVERY: Duration = Duration::from_secs(1);
/// ISR changes this broker has proposed and not yet seen answered.
const MAX_ISR_CHANGES_IN_FLIGHT: usize = 64;

async fn propose_isr_change(cluster: &Cluster, change: IsrChange) {
    let command = Command::AlterPartition {
        topic: change.topic.to_string(),
        partition: change.partition,
        leader: change.leader,
        leader_epoch: change.leader_epoch,
        partition_epoch: change.partition_epoch,
        isr: change.isr.clone(),
    };
    match cluster.propose(command).await {
        Ok(answer) if answer.error_code == 0 => {
            tracing::info!(topic = %change.topic, partition = change.partition, isr = ?change.isr, "ISR changed")
        }
        Ok(answer) => {
            tracing::info!(topic = %change.topic, partition = change.partition, %answer, "ISR change refused")
        }
        Err(e) => tracing::warn!(topic = %change.topic, partition = change.partition, error = %e, "ISR change failed"),
    }
}

struct Fetcher {
    leader: NodeId,
    epoch: i32,
    replica: Addr<ReplicaActor>,
}

pub struct ReplicaManager {
    cluster: Cluster,
    broker: Broker,
    isr_changes: mpsc::UnboundedSender<IsrChange>,
    fetchers: BTreeMap<(Arc<str>, i32), Fetcher>,
}

/// Starts the manager (and its ISR-change forwarder) on the current actix system.
pub fn start(cluster: Cluster, broker: Broker) {
    let (isr_changes, mut requests) = mpsc::unbounded_channel::<IsrChange>();
    let forwarder = cluster.clone();
    actix::spawn(async move {
        // Changes of different partitions are independent: commit up to this many at once.
        let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_ISR_CHANGES_IN_FLIGHT));
        while let Some(change) = requests.recv().await {
            let Ok(slot) = slots.clone().acquire_owned().await else { return };
            let forwarder = forwarder.clone();
            actix::spawn(async move {
                propose_isr_change(&forwarder, change).await;
                drop(slot);
            });
        }
    });
    let manager = ReplicaManager { cluster, broker, isr_changes, fetchers: BTreeMap::new() };
    actix::spawn(manager.run());
}

impl ReplicaManager {
    async fn run(mut self) {
        let mut watch = self.cluster.metadata_watch();
        // Often enough that a lapsed lease is noticed well within the session timeout.
        let settings = self.cluster.settings();
        let every = RECONCILE_EVERY.min(settings.session_timeout / 8);
        // A lapsed lease must end leadership before the controller may fence.
        assert!(crate::cluster::lease_duration(settings) + every < settings.session_timeout);
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                changed = watch.changed() => if changed.is_err() { return },
                _ = tick.tick() => {}
            }
            let metadata = watch.borrow_and_update().clone();
            self.reconcile(&metadata).await;
        }
    }

    async fn reconcile(&mut self, metadata: &ClusterMetadata) {
        self.sync_topics(metadata).await;
        let me = self.cluster.node_id();
        let quorum = self.cluster.may_lead();
        let local = self.broker.metadata();
        let mut wanted_fetchers: BTreeMap<(Arc<str>, i32), (NodeId, i32)> = BTreeMap::new();
        for (name, topic) in &metadata.topics {
            let Some(view) = local.topic(name) else { continue };
            for (index, p) in topic.partitions.iter().enumerate() {
                let Some(handle) = view.partitions.get(index) else { continue };
                let role = if p.leader == Some(me) && quorum {
                    Role::Leader(LeaderRole {
                        node_id: me,
                        epoch: p.leader_epoch,
                        partition_epoch: p.partition_epoch,
                        replicas: p.replicas.clone(),
                        isr: p.isr.clone(),
                        min_insync_replicas: view.config.min_insync_replicas,
                        replica_lag: self.cluster.settings().replica_lag,
                        isr_changes: self.isr_changes.clone(),
                    })
                } else {
                    let leader = if quorum && p.replicas.contains(&me) { p.leader.filter(|l| *l != me) } else { None };
                    if let Some(leader) = leader {
                        wanted_fetchers.insert((view.name.clone(), index as i32), (leader, p.leader_epoch));
                    }
                    Role::Follower { leader, epoch: p.leader_epoch }
                };
                let leading = matches!(role, Role::Leader(_));
                handle.addr.do_send(SetRole(role));
                if leading {
                    handle.addr.do_send(CheckIsr);
                }
            }
        }
        self.fetchers.retain(|key, fetcher| {
            let keep = wanted_fetchers.get(key) == Some(&(fetcher.leader, fetcher.epoch));
            if !keep {
                fetcher.replica.do_send(StopFollowing);
            }
            keep
        });
        for (key, (leader, epoch)) in wanted_fetchers {
            if self.fetchers.contains_key(&key) {
                continue;
            }
            let target = FetchTarget { topic: key.0.clone(), partition: key.1, leader, leader_epoch: epoch };
            let (cluster, broker) = (self.cluster.clone(), self.broker.clone());
            let replica = Supervisor::start(move |_| ReplicaActor::new(cluster, broker, target));
            self.fetchers.insert(key, Fetcher { leader, epoch, replica });
        }
    }

    /// Local topics as the metadata has them. Deletes only once this broker's
    /// metadata is current, so a restart never deletes a topic it has not yet replayed.
    async fn sync_topics(&mut self, metadata: &ClusterMetadata) {
        let registry = self.broker.registry().clone();
        let local = self.broker.metadata();
        let caught_up = self.cluster.caught_up();
        if metadata.topic_defaults != local.broker_overrides {
            let set = SetBrokerOverrides { overrides: metadata.topic_defaults.clone(), validate_only: false };
            log_failure("*", "setting the dynamic broker configs of", registry.send(set).await.map(|r| r.map(|_| ())));
        }
        for (name, topic) in &metadata.topics {
            let id = Uuid::from_bytes(topic.id);
            let count = topic.partitions.len() as i32;
            match local.topic(name) {
                Some(view) if view.id != id => {
                    if caught_up {
                        tracing::info!(topic = %name, "local topic is an older one of the same name; replacing it");
                        let _ = registry.send(DeleteTopic { name: name.clone() }).await;
                    }
                    continue;
                }
                Some(view) => {
                    if (view.partitions.len() as i32) < count {
                        let grow = CreatePartitions { name: name.clone(), count, validate_only: false };
                        log_failure(name, "growing", registry.send(grow).await);
                    }
                    if view.overrides != topic.configs {
                        let changes =
                            topic.configs.iter().map(|(k, v)| (k.clone(), ConfigOp::Set(v.clone()))).collect();
                        let alter =
                            AlterTopicConfig { name: name.clone(), changes, replace: true, validate_only: false };
                        log_failure(name, "configuring", registry.send(alter).await);
                    }
                }
                None => {
                    let create = CreateTopic {
                        name: name.clone(),
                        partitions: Some(count),
                        configs: topic.configs.clone(),
                        validate_only: false,
                        id: Some(id),
                    };
                    log_failure(name, "creating", registry.send(create).await.map(|r| r.map(|_| ())));
                }
            }
        }
        if caught_up {
            for name in local.topics.keys() {
                if !metadata.topics.contains_key(name.as_ref()) {
                    tracing::info!(topic = %name, "topic deleted by the controller");
                    let _ = registry.send(DeleteTopic { name: name.to_string() }).await;
                }
            }
        }
    }
}

fn log_failure<E: std::fmt::Display>(topic: &str, what: &str, result: Result<Result<(), E>, actix::MailboxError>) {
    match result {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::error!(topic, error = %e, "{what} local topic failed"),
        Err(e) => tracing::error!(topic, error = %e, "{what} local topic failed: registry unavailable"),
    }
}
