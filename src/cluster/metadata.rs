//! `ClusterMetadata`: what the controller quorum decides (brokers, topics,
//! replica placement, leaders, leader epochs, ISR, topic configs), and the
//! commands that change it.
//!
//! `apply` is the Raft state machine's transition function. It must be
//! deterministic: every controller applies the same commands in the same
//! order and must reach the same state, so it reads no clock, no randomness
//! and no local state (a new topic's id is chosen by the proposer).

use std::collections::BTreeMap;

use kafka_protocol::ResponseError;
use serde::{Deserialize, Serialize};

pub type NodeId = u64;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokerRecord {
    pub node_id: NodeId,
    /// Where clients reach it, per listener: a client is told the addresses
    /// of the listener its request came in on (Kafka's advertised.listeners).
    pub listeners: Vec<Endpoint>,
    pub rack: Option<String>,
    /// Replicas spread over regions first, then over racks within a region.
    pub region: Option<String>,
    /// Fenced brokers lead nothing and are left out of Metadata responses.
    pub fenced: bool,
    /// Which start of the broker process registered (its start time in ms).
    /// A new one means the broker restarted and is fenced once first, as
    /// KRaft does: its leaderships move, and whatever it leads again starts
    /// a new epoch from the log it has now.
    pub incarnation: u64,
}

/// One listener's advertised address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// The listener's name (its security protocol: PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL).
    pub listener: String,
    pub host: String,
    pub port: i32,
}

impl BrokerRecord {
    /// Its address on `listener`, if it has that listener.
    pub fn endpoint(&self, listener: &str) -> Option<&Endpoint> {
        self.listeners.iter().find(|e| e.listener == listener)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionRecord {
    /// Preferred order: the first is the preferred leader.
    pub replicas: Vec<NodeId>,
    /// In-sync replicas; always contains the leader while there is one.
    pub isr: Vec<NodeId>,
    pub leader: Option<NodeId>,
    /// Bumped on every leader change (Kafka's leader epoch).
    pub leader_epoch: i32,
    /// Bumped on every change of this record, so stale AlterPartition requests are refused.
    pub partition_epoch: i32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicRecord {
    pub id: [u8; 16],
    /// Topic config overrides (Kafka names), validated by the proposer.
    pub configs: BTreeMap<String, String>,
    pub partitions: Vec<PartitionRecord>,
}

/// Stored in Raft snapshots as V2 of `raft::StoredMachineState`, and
/// `Command` in log entries as V1 of `raft::StoredEntry`: these types (and the
/// records in them) keep their layout; a new field means a new version there,
/// and a new command is a new variant at the end.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterMetadata {
    pub brokers: BTreeMap<NodeId, BrokerRecord>,
    pub topics: BTreeMap<String, TopicRecord>,
    /// Dynamic broker configs: the cluster-wide topic-config defaults changed
    /// at runtime, by topic-config name (`retention.ms` for `log.retention.ms`),
    /// validated by the proposer.
    pub topic_defaults: BTreeMap<String, String>,
    /// Users' SCRAM credentials and the ACLs: replicated, so every broker
    /// authenticates and authorizes alike, and a restart or a new controller
    /// keeps them.
    pub security: SecurityMetadata,
}

/// Credentials and ACLs, as the controller quorum decided them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecurityMetadata {
    /// By user name, then mechanism: salted and iterated (RFC 5802), never the password.
    pub scram: BTreeMap<String, BTreeMap<ScramMechanism, ScramCredential>>,
    /// Kafka's ACL bindings, each once.
    pub acls: Vec<AclBinding>,
}

/// The SCRAM mechanisms Kafka offers (its codes in AlterUserScramCredentials).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ScramMechanism {
    Sha256,
    Sha512,
}

impl ScramMechanism {
    pub const ALL: [ScramMechanism; 2] = [ScramMechanism::Sha256, ScramMechanism::Sha512];

    /// Kafka's code for it (ScramMechanism in the admin APIs).
    pub fn code(self) -> i8 {
        match self {
            ScramMechanism::Sha256 => 1,
            ScramMechanism::Sha512 => 2,
        }
    }

    pub fn from_code(code: i8) -> Option<ScramMechanism> {
        ScramMechanism::ALL.into_iter().find(|m| m.code() == code)
    }

    /// Its SASL name.
    pub fn name(self) -> &'static str {
        match self {
            ScramMechanism::Sha256 => "SCRAM-SHA-256",
            ScramMechanism::Sha512 => "SCRAM-SHA-512",
        }
    }

    pub fn from_name(name: &str) -> Option<ScramMechanism> {
        ScramMechanism::ALL.into_iter().find(|m| m.name().eq_ignore_ascii_case(name))
    }
}

/// What a server keeps of a SCRAM password (RFC 5802 section 3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScramCredential {
    #[serde(with = "serde_bytes")]
    pub salt: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub stored_key: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub server_key: Vec<u8>,
    pub iterations: u32,
}

/// One Kafka ACL: a principal is allowed or denied an operation on the
/// resources a pattern names, from a host (`*` for any).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct AclBinding {
    /// Kafka's resource type code (2 topic, 3 group, 4 cluster, 5 transactional id).
    pub resource_type: i8,
    pub resource_name: String,
    /// Kafka's pattern type code (3 literal, 4 prefixed).
    pub pattern_type: i8,
    /// "User:alice", or "User:*".
    pub principal: String,
    pub host: String,
    /// Kafka's operation code (2 ALL, 3 READ, 4 WRITE, ...).
    pub operation: i8,
    /// Kafka's permission type code (2 DENY, 3 ALLOW).
    pub permission: i8,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// A broker (re)joined: record where clients reach it and unfence it.
    RegisterBroker {
        node_id: NodeId,
        host: String,
        port: i32,
        rack: Option<String>,
        region: Option<String>,
        incarnation: u64,
    },
    /// The controller lost a broker: move its leaderships to in-sync replicas.
    FenceBroker {
        node_id: NodeId,
    },
    CreateTopic {
        name: String,
        id: [u8; 16],
        partitions: i32,
        replication_factor: i16,
        configs: BTreeMap<String, String>,
    },
    DeleteTopic {
        name: String,
    },
    CreatePartitions {
        name: String,
        count: i32,
    },
    /// Replaces the topic's config overrides.
    AlterTopicConfig {
        name: String,
        configs: BTreeMap<String, String>,
    },
    /// A partition leader changes its ISR (KIP-497).
    AlterPartition {
        topic: String,
        partition: i32,
        leader: NodeId,
        leader_epoch: i32,
        partition_epoch: i32,
        isr: Vec<NodeId>,
    },
    /// Replaces the dynamic broker configs (`ClusterMetadata::topic_defaults`).
    SetTopicDefaults {
        configs: BTreeMap<String, String>,
    },
    /// As `RegisterBroker`, with an address per listener (the old variant
    /// stays for log entries written before listeners: one PLAINTEXT address).
    RegisterBrokerListeners {
        node_id: NodeId,
        listeners: Vec<Endpoint>,
        rack: Option<String>,
        region: Option<String>,
        incarnation: u64,
    },
    /// Sets (or replaces) a user's credential for one mechanism.
    UpsertScramCredential {
        user: String,
        mechanism: ScramMechanism,
        credential: ScramCredential,
    },
    /// Removes a user's credential for one mechanism.
    DeleteScramCredential {
        user: String,
        mechanism: ScramMechanism,
    },
}

/// What applying a command answered: 0 or a Kafka error code with a reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct CommandResult {
    pub error_code: i16,
    pub message: String,
}

impl CommandResult {
    fn ok() -> CommandResult {
        CommandResult::default()
    }

    fn error(error: ResponseError, message: impl Into<String>) -> CommandResult {
        CommandResult { error_code: error.code(), message: message.into() }
    }
}

impl std::fmt::Display for CommandResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "error {}: {}", self.error_code, self.message)
    }
}

impl ClusterMetadata {
    pub fn partition(&self, topic: &str, partition: i32) -> Option<&PartitionRecord> {
        self.topics.get(topic)?.partitions.get(usize::try_from(partition).ok()?)
    }

    pub fn live_brokers(&self) -> impl Iterator<Item = &BrokerRecord> {
        self.brokers.values().filter(|b| !b.fenced)
    }

    pub fn apply(&mut self, command: &Command) -> CommandResult {
        match command {
            Command::RegisterBroker { node_id, host, port, rack, region, incarnation } => {
                let listeners = vec![Endpoint { listener: "PLAINTEXT".into(), host: host.clone(), port: *port }];
                self.register(*node_id, listeners, rack, region, *incarnation)
            }
            Command::RegisterBrokerListeners { node_id, listeners, rack, region, incarnation } => {
                self.register(*node_id, listeners.clone(), rack, region, *incarnation)
            }
            Command::UpsertScramCredential { user, mechanism, credential } => {
                self.security.scram.entry(user.clone()).or_default().insert(*mechanism, credential.clone());
                CommandResult::ok()
            }
            Command::DeleteScramCredential { user, mechanism } => {
                let Some(credentials) = self.security.scram.get_mut(user) else {
                    return CommandResult::error(ResponseError::ResourceNotFound, format!("user {user:?} has no credentials"));
                };
                if credentials.remove(mechanism).is_none() {
                    return CommandResult::error(
                        ResponseError::ResourceNotFound,
                        format!("user {user:?} has no {} credential", mechanism.name()),
                    );
                }
                if credentials.is_empty() {
                    self.security.scram.remove(user);
                }
                CommandResult::ok()
            }
            Command::FenceBroker { node_id } => {
                let Some(broker) = self.brokers.get_mut(node_id) else {
                    return CommandResult::error(
                        ResponseError::BrokerNotAvailable,
                        format!("broker {node_id} is not registered"),
                    );
                };
                broker.fenced = true;
                self.fence(*node_id);
                CommandResult::ok()
            }
            Command::CreateTopic { name, id, partitions, replication_factor, configs } => {
                if self.topics.contains_key(name) {
                    return CommandResult::error(
                        ResponseError::TopicAlreadyExists,
                        format!("topic '{name}' already exists"),
                    );
                }
                let existing = self.topics.keys().map(String::as_str);
                if let Err(e) = tributary_actors::config::check_name_collision(name, existing) {
                    return CommandResult::error(ResponseError::InvalidTopicException, e.0);
                }
                let placed = match self.place(name, 0, *partitions, *replication_factor) {
                    Ok(placed) => placed,
                    Err(e) => return e,
                };
                self.topics.insert(name.clone(), TopicRecord { id: *id, configs: configs.clone(), partitions: placed });
                CommandResult::ok()
            }
            Command::DeleteTopic { name } => match self.topics.remove(name) {
                Some(_) => CommandResult::ok(),
                None => CommandResult::error(
                    ResponseError::UnknownTopicOrPartition,
                    format!("topic '{name}' does not exist"),
                ),
            },
            Command::CreatePartitions { name, count } => {
                let Some(topic) = self.topics.get(name) else {
                    return CommandResult::error(
                        ResponseError::UnknownTopicOrPartition,
                        format!("topic '{name}' does not exist"),
                    );
                };
                let current = topic.partitions.len() as i32;
                if *count <= current {
                    return CommandResult::error(
                        ResponseError::InvalidPartitions,
                        format!("topic '{name}' has {current} partitions; the new count {count} must be larger"),
                    );
                }
                let rf = topic.partitions.first().map_or(1, |p| p.replicas.len()) as i16;
                let placed = match self.place(name, current, count - current, rf) {
                    Ok(placed) => placed,
                    Err(e) => return e,
                };
                self.topics.get_mut(name).expect("checked above").partitions.extend(placed);
                CommandResult::ok()
            }
            Command::SetTopicDefaults { configs } => {
                self.topic_defaults = configs.clone();
                CommandResult::ok()
            }
            Command::AlterTopicConfig { name, configs } => match self.topics.get_mut(name) {
                Some(topic) => {
                    topic.configs = configs.clone();
                    CommandResult::ok()
                }
                None => CommandResult::error(
                    ResponseError::UnknownTopicOrPartition,
                    format!("topic '{name}' does not exist"),
                ),
            },
            Command::AlterPartition { topic, partition, leader, leader_epoch, partition_epoch, isr } => {
                let fenced: Vec<NodeId> =
                    isr.iter().copied().filter(|id| self.brokers.get(id).is_none_or(|b| b.fenced)).collect();
                let Some(record) = self.topics.get_mut(topic).and_then(|t| t.partitions.get_mut(*partition as usize))
                else {
                    return CommandResult::error(
                        ResponseError::UnknownTopicOrPartition,
                        format!("{topic}-{partition} does not exist"),
                    );
                };
                if record.leader != Some(*leader) || record.leader_epoch != *leader_epoch {
                    return CommandResult::error(
                        ResponseError::FencedLeaderEpoch,
                        format!("{topic}-{partition}: not the leader at epoch {leader_epoch}"),
                    );
                }
                if record.partition_epoch != *partition_epoch {
                    return CommandResult::error(
                        ResponseError::InvalidUpdateVersion,
                        format!("{topic}-{partition}: partition epoch is {}", record.partition_epoch),
                    );
                }
                if !isr.contains(leader) || isr.iter().any(|id| !record.replicas.contains(id)) {
                    return CommandResult::error(
                        ResponseError::InvalidRequest,
                        format!("{topic}-{partition}: ISR {isr:?} must hold the leader and only replicas"),
                    );
                }
                // KIP-841: a fenced broker never joins the ISR.
                if fenced.iter().any(|id| !record.isr.contains(id)) {
                    return CommandResult::error(
                        ResponseError::IneligibleReplica,
                        format!("{topic}-{partition}: fenced brokers {fenced:?} cannot join the ISR"),
                    );
                }
                record.isr = isr.clone();
                record.partition_epoch += 1;
                CommandResult::ok()
            }
        }
    }

    fn register(
        &mut self,
        node_id: NodeId,
        listeners: Vec<Endpoint>,
        rack: &Option<String>,
        region: &Option<String>,
        incarnation: u64,
    ) -> CommandResult {
        let record =
            BrokerRecord { node_id, listeners, rack: rack.clone(), region: region.clone(), fenced: false, incarnation };
        self.brokers.insert(node_id, record);
        self.unfence(node_id);
        CommandResult::ok()
    }

    /// Leaders move off `node_id` to the first other unfenced in-sync replica.
    /// If it was the last in-sync replica the partition goes offline (no
    /// unclean election) and keeps it in the ISR, as KRaft does.
    fn fence(&mut self, node_id: NodeId) {
        let unfenced: Vec<NodeId> = self.live_brokers().map(|b| b.node_id).collect();
        for topic in self.topics.values_mut() {
            for p in topic.partitions.iter_mut() {
                let mut changed = false;
                if p.isr.contains(&node_id) && p.isr.len() > 1 {
                    p.isr.retain(|id| *id != node_id);
                    changed = true;
                }
                if p.leader == Some(node_id) {
                    p.leader = p.isr.iter().copied().find(|id| *id != node_id && unfenced.contains(id));
                    p.leader_epoch += 1;
                    changed = true;
                }
                if changed {
                    p.partition_epoch += 1;
                }
            }
        }
    }

    /// Offline partitions whose ISR holds `node_id` get it as their leader.
    fn unfence(&mut self, node_id: NodeId) {
        for topic in self.topics.values_mut() {
            for p in topic.partitions.iter_mut() {
                if p.leader.is_none() && p.isr.contains(&node_id) {
                    p.leader = Some(node_id);
                    p.leader_epoch += 1;
                    p.partition_epoch += 1;
                }
            }
        }
    }

    /// Replica lists for partitions `first..first+count`: brokers interleaved
    /// by rack so consecutive replicas sit in different racks, rotated per
    /// partition so leaders spread evenly.
    fn place(
        &self,
        topic: &str,
        first: i32,
        count: i32,
        replication_factor: i16,
    ) -> Result<Vec<PartitionRecord>, CommandResult> {
        // Per region, brokers interleaved by rack; then the regions interleaved.
        let mut by_region: BTreeMap<Option<&str>, BTreeMap<Option<&str>, Vec<NodeId>>> = BTreeMap::new();
        for broker in self.live_brokers() {
            let racks = by_region.entry(broker.region.as_deref()).or_default();
            racks.entry(broker.rack.as_deref()).or_default().push(broker.node_id);
        }
        let regions: Vec<Vec<NodeId>> = by_region.values().map(|racks| interleave(racks.values())).collect();
        let order = interleave(regions.iter());
        let rf = replication_factor as usize;
        if replication_factor < 1 || rf > order.len() {
            return Err(CommandResult::error(
                ResponseError::InvalidReplicationFactor,
                format!(
                    "replication factor {replication_factor} needs that many live brokers; {} are live",
                    order.len()
                ),
            ));
        }
        // A per-topic start keeps every topic's partition 0 from landing on the same broker.
        let seed = topic.bytes().fold(0usize, |h, b| h.wrapping_mul(31).wrapping_add(b as usize));
        let n = order.len();
        Ok((first..first + count)
            .map(|p| {
                let start = seed.wrapping_add(p as usize) % n;
                let replicas: Vec<NodeId> = (0..rf).map(|i| order[(start + i) % n]).collect();
                PartitionRecord {
                    leader: Some(replicas[0]),
                    isr: replicas.clone(),
                    replicas,
                    leader_epoch: 0,
                    partition_epoch: 0,
                }
            })
            .collect())
    }
}

/// Round-robin over `lists`: the first of each, then the second of each, and so on.
fn interleave<'a>(lists: impl Iterator<Item = &'a Vec<NodeId>> + Clone) -> Vec<NodeId> {
    let longest = lists.clone().map(Vec::len).max().unwrap_or(0);
    (0..longest).flat_map(|i| lists.clone().filter_map(move |l| l.get(i).copied())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(racks: &[Option<&str>]) -> ClusterMetadata {
        let mut m = ClusterMetadata::default();
        for (i, rack) in racks.iter().enumerate() {
            let id = i as u64 + 1;
            m.apply(&Command::RegisterBroker {
                node_id: id,
                host: "h".into(),
                port: 9092,
                rack: rack.map(String::from),
                region: None,
                incarnation: 1,
            });
        }
        m
    }

    fn create(m: &mut ClusterMetadata, name: &str, partitions: i32, rf: i16) -> CommandResult {
        m.apply(&Command::CreateTopic {
            name: name.into(),
            id: [1; 16],
            partitions,
            replication_factor: rf,
            configs: BTreeMap::new(),
        })
    }

    #[test]
    fn a_name_colliding_in_metric_names_is_refused() {
        let mut m = cluster(&[None]);
        assert_eq!(create(&mut m, "foo.bar", 1, 1).error_code, 0);
        assert_eq!(create(&mut m, "foo_bar", 1, 1).error_code, ResponseError::InvalidTopicException.code());
        assert_eq!(create(&mut m, "foo.bar", 1, 1).error_code, ResponseError::TopicAlreadyExists.code());
        assert!(!m.topics.contains_key("foo_bar"));
    }

    #[test]
    fn replicas_spread_over_racks_and_leaders_rotate() {
        let mut m = cluster(&[Some("a"), Some("a"), Some("b"), Some("b")]);
        assert_eq!(create(&mut m, "t", 8, 2).error_code, 0);
        let rack = |id: &u64| m.brokers[id].rack.clone();
        let mut leaders = BTreeMap::new();
        for p in &m.topics["t"].partitions {
            assert_eq!(p.replicas.len(), 2);
            assert_ne!(rack(&p.replicas[0]), rack(&p.replicas[1]), "replicas of {p:?} share a rack");
            *leaders.entry(p.leader.unwrap()).or_insert(0) += 1;
        }
        assert_eq!(leaders.len(), 4, "every broker leads some partition: {leaders:?}");
        assert_eq!(create(&mut m, "big", 1, 5).error_code, ResponseError::InvalidReplicationFactor.code());
    }

    #[test]
    fn replicas_spread_over_regions_before_racks() {
        let mut m = ClusterMetadata::default();
        let brokers = [("eu", "a"), ("eu", "b"), ("eu", "c"), ("us", "a"), ("us", "b"), ("us", "c")];
        for (i, (region, rack)) in brokers.iter().enumerate() {
            m.apply(&Command::RegisterBroker {
                node_id: i as u64 + 1,
                host: "h".into(),
                port: 1,
                rack: Some(rack.to_string()),
                region: Some(region.to_string()),
                incarnation: 1,
            });
        }
        assert_eq!(create(&mut m, "t", 12, 2).error_code, 0);
        for p in &m.topics["t"].partitions {
            let regions: Vec<_> = p.replicas.iter().map(|id| m.brokers[id].region.clone()).collect();
            assert_ne!(regions[0], regions[1], "both replicas of {p:?} in one region");
        }
        assert_eq!(create(&mut m, "t3", 12, 3).error_code, 0);
        for p in &m.topics["t3"].partitions {
            let mut places: Vec<_> =
                p.replicas.iter().map(|id| (m.brokers[id].region.clone(), m.brokers[id].rack.clone())).collect();
            places.sort();
            places.dedup();
            assert_eq!(places.len(), 3, "three replicas in three distinct places: {p:?}");
        }
    }

    #[test]
    fn fencing_moves_leaders_to_the_isr_and_never_elects_outside_it() {
        let mut m = cluster(&[None, None, None]);
        create(&mut m, "t", 3, 3);
        let before = m.topics["t"].partitions.clone();
        m.apply(&Command::FenceBroker { node_id: 1 });
        for (old, new) in before.iter().zip(&m.topics["t"].partitions) {
            assert!(!new.isr.contains(&1));
            if old.leader == Some(1) {
                assert_eq!(new.leader_epoch, old.leader_epoch + 1);
                assert!(new.leader.is_some_and(|l| l != 1 && new.isr.contains(&l)));
            } else {
                assert_eq!(new.leader, old.leader);
                assert_eq!(new.leader_epoch, old.leader_epoch);
            }
        }
        // Fence the rest: the last ISR member stays in the ISR and the partition goes offline.
        m.apply(&Command::FenceBroker { node_id: 2 });
        m.apply(&Command::FenceBroker { node_id: 3 });
        for p in &m.topics["t"].partitions {
            assert_eq!(p.leader, None);
            assert_eq!(p.isr.len(), 1);
        }
        // Broker 1 is not in any ISR: its return elects nothing (no unclean election).
        m.apply(&Command::RegisterBroker {
            node_id: 1,
            host: "h".into(),
            port: 1,
            rack: None,
            region: None,
            incarnation: 1,
        });
        assert!(m.topics["t"].partitions.iter().all(|p| p.leader.is_none()));
        let last = m.topics["t"].partitions[0].isr[0];
        m.apply(&Command::RegisterBroker {
            node_id: last,
            host: "h".into(),
            port: 1,
            rack: None,
            region: None,
            incarnation: 1,
        });
        assert_eq!(m.topics["t"].partitions[0].leader, Some(last));
    }

    #[test]
    fn alter_partition_checks_leader_epoch_and_version() {
        let mut m = cluster(&[None, None, None]);
        create(&mut m, "t", 1, 3);
        let p = m.topics["t"].partitions[0].clone();
        let leader = p.leader.unwrap();
        let shrink = |isr: Vec<u64>, leader_epoch, partition_epoch| Command::AlterPartition {
            topic: "t".into(),
            partition: 0,
            leader,
            leader_epoch,
            partition_epoch,
            isr,
        };
        assert_eq!(
            m.apply(&shrink(vec![leader], p.leader_epoch + 1, 0)).error_code,
            ResponseError::FencedLeaderEpoch.code()
        );
        assert_eq!(m.apply(&shrink(vec![leader], 0, 0)).error_code, 0);
        assert_eq!(m.apply(&shrink(vec![leader], 0, 0)).error_code, ResponseError::InvalidUpdateVersion.code());
        assert_eq!(m.apply(&shrink(vec![], 0, 1)).error_code, ResponseError::InvalidRequest.code());
        assert_eq!(m.topics["t"].partitions[0].isr, vec![leader]);
    }
}
