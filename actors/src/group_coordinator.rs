//! `GroupCoordinator`: one actor per consumer group, running Kafka's classic
//! group protocol: Empty -> PreparingRebalance -> CompletingRebalance -> Stable,
//! and Dead once deleted.
//!
//! The broker relays each member's protocol metadata and the leader's
//! assignments without interpreting them (range, roundrobin, cooperative-sticky
//! are all client-side). JoinGroup and SyncGroup answers are parked as oneshot
//! senders until the rebalance step they wait for completes. A 100 ms tick
//! expires sessions, rebalance timeouts and the initial rebalance delay; it
//! runs only while the group has members (or ids handed out, or a
//! rebalance), so the thousands of groups that only commit offsets cost no
//! CPU while idle.
//!
//! Invariants: a member id is in `members` at most once; a static instance id
//! maps to exactly one live member; every parked answer is sent exactly once
//! (dropping a sender answers its receiver with COORDINATOR_NOT_AVAILABLE);
//! the generation only grows, and is persisted with each completed join.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use bytes::Bytes;
use kafka_protocol::ResponseError as E;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::offset_store::{CommittedOffset, GroupRecord, OffsetStore, TopicPartition};

const TICK: Duration = Duration::from_millis(100);

/// Broker-wide group settings (Kafka's `group.*` and `offsets.*` configs);
/// the broker reads them from the `[groups]` section of its config.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupSettings {
    pub min_session_timeout_ms: i32,
    pub max_session_timeout_ms: i32,
    pub initial_rebalance_delay_ms: u64,
    pub max_members: usize,
    pub max_groups: usize,
    pub offset_metadata_max_bytes: usize,
    pub offsets_retention_ms: i64,
    pub offsets_retention_check_interval_ms: u64,
}

impl Default for GroupSettings {
    fn default() -> Self {
        GroupSettings {
            min_session_timeout_ms: 6_000,
            max_session_timeout_ms: 1_800_000,
            initial_rebalance_delay_ms: 3_000,
            max_members: 1_000,
            max_groups: 100_000,
            offset_metadata_max_bytes: 4_096,
            offsets_retention_ms: 7 * 24 * 3600 * 1000,
            offsets_retention_check_interval_ms: 600_000,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupState {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
    Dead,
}

impl GroupState {
    /// The name Kafka's DescribeGroups and ListGroups use.
    pub fn name(&self) -> &'static str {
        match self {
            GroupState::Empty => "Empty",
            GroupState::PreparingRebalance => "PreparingRebalance",
            GroupState::CompletingRebalance => "CompletingRebalance",
            GroupState::Stable => "Stable",
            GroupState::Dead => "Dead",
        }
    }
}

#[derive(Debug, Clone)]
pub struct JoinGroup {
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout_ms: i32,
    pub rebalance_timeout_ms: i32,
    pub protocol_type: String,
    pub protocols: Vec<(String, Bytes)>,
    /// JoinGroup v4+: a new member first gets MEMBER_ID_REQUIRED and its id (KIP-394).
    pub require_known_member_id: bool,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct JoinAnswer {
    pub error_code: i16,
    pub generation_id: i32,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub leader: String,
    pub member_id: String,
    /// Only the leader gets the members: `(member id, instance id, metadata)`.
    pub members: Vec<(String, Option<String>, Bytes)>,
}

impl JoinAnswer {
    fn error(code: i16, member_id: &str) -> JoinAnswer {
        JoinAnswer { error_code: code, generation_id: -1, member_id: member_id.to_string(), ..JoinAnswer::default() }
    }
}

#[derive(Debug, Clone)]
pub struct SyncGroup {
    pub generation_id: i32,
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub assignments: Vec<(String, Bytes)>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct SyncAnswer {
    pub error_code: i16,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub assignment: Bytes,
}

#[derive(Debug, Clone)]
pub struct Heartbeat {
    pub generation_id: i32,
    pub member_id: String,
    pub group_instance_id: Option<String>,
}

/// Members leaving: `(member id, instance id)`; one may name only its instance id.
#[derive(Debug, Clone)]
pub struct LeaveGroup {
    pub members: Vec<(String, Option<String>)>,
}

#[derive(Debug, Clone)]
pub struct CommitOffsets {
    pub generation_id: i32,
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub offsets: Vec<(TopicPartition, i64, i32, Option<String>)>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MemberDescription {
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub metadata: Bytes,
    pub assignment: Bytes,
}

#[derive(Debug, Clone, PartialEq)]
pub struct GroupDescription {
    pub state: GroupState,
    pub protocol_type: String,
    pub protocol: String,
    pub members: Vec<MemberDescription>,
}

/// Every request a coordinator handles. One message type keeps the registry's
/// routing simple; each variant has its own answer type in `GroupAnswer`.
#[derive(Message)]
#[rtype(result = "Result<GroupAnswer, i16>")]
pub enum GroupRequest {
    Join(JoinGroup),
    Sync(SyncGroup),
    Heartbeat(Heartbeat),
    Leave(LeaveGroup),
    Commit(CommitOffsets),
    /// TxnOffsetCommit: offsets pending until `producer_id`'s transaction ends.
    TxnCommit {
        producer_id: i64,
        commit: CommitOffsets,
    },
    /// `None` fetches every committed offset of the group.
    Fetch(Option<Vec<TopicPartition>>),
    Describe,
    Delete,
    DeleteOffsets(Vec<TopicPartition>),
    /// Deletes the group if it has been empty longer than the retention.
    Expire {
        now_ms: i64,
    },
    /// Panics inside the actor, to exercise supervision in tests.
    #[cfg(feature = "fault-injection")]
    InjectPanic,
}

#[derive(Debug, Clone, PartialEq)]
pub enum GroupAnswer {
    Join(JoinAnswer),
    Sync(SyncAnswer),
    /// Heartbeat, Delete, Expire(0 = expired): one error code.
    Code(i16),
    /// Leave: top-level error and one code per member.
    Leave(i16, Vec<i16>),
    /// Commit and DeleteOffsets: one code per partition, in request order.
    Codes(Vec<i16>),
    Fetched(i16, Vec<(TopicPartition, Option<CommittedOffset>)>),
    Described(GroupDescription),
}

struct Member {
    instance_id: Option<String>,
    client_id: String,
    client_host: String,
    session_timeout: Duration,
    rebalance_timeout: Duration,
    protocols: Vec<(String, Bytes)>,
    assignment: Bytes,
    deadline: Instant,
    join_order: u64,
    pending_join: Option<oneshot::Sender<JoinAnswer>>,
    pending_sync: Option<oneshot::Sender<SyncAnswer>>,
}

pub struct GroupCoordinator {
    group_id: String,
    settings: Arc<GroupSettings>,
    store: Arc<OffsetStore>,
    state: GroupState,
    generation: i32,
    protocol_type: Option<String>,
    protocol: Option<String>,
    leader: Option<String>,
    members: BTreeMap<String, Member>,
    static_members: HashMap<String, String>,
    /// Ids handed out with MEMBER_ID_REQUIRED, valid until their deadline.
    pending_members: HashMap<String, Instant>,
    rebalance_deadline: Option<Instant>,
    initial_join_until: Option<Instant>,
    next_join_order: u64,
    empty_since_ms: Option<i64>,
    /// The tick's interval while it runs (`schedule_ticks`).
    ticking: Option<SpawnHandle>,
}

impl GroupCoordinator {
    pub fn new(group_id: String, settings: Arc<GroupSettings>, store: Arc<OffsetStore>) -> GroupCoordinator {
        GroupCoordinator {
            group_id,
            settings,
            store,
            state: GroupState::Empty,
            generation: 0,
            protocol_type: None,
            protocol: None,
            leader: None,
            members: BTreeMap::new(),
            static_members: HashMap::new(),
            pending_members: HashMap::new(),
            rebalance_deadline: None,
            initial_join_until: None,
            next_join_order: 0,
            empty_since_ms: None,
            ticking: None,
        }
    }

    fn persist(&self) {
        let record = GroupRecord {
            protocol_type: self.protocol_type.clone().unwrap_or_default(),
            generation: self.generation,
            empty_since_ms: self.empty_since_ms,
        };
        if let Err(e) = self.store.put_group(&self.group_id, &record) {
            tracing::error!(group = %self.group_id, error = %e, "cannot persist group record");
        }
    }

    /// Checks a member id (and static instance id) against the group.
    fn check_member(&self, member_id: &str, instance_id: &Option<String>) -> Result<(), i16> {
        if let Some(instance) = instance_id {
            match self.static_members.get(instance) {
                Some(current) if current != member_id => return Err(E::FencedInstanceId.code()),
                _ => {}
            }
        }
        if !self.members.contains_key(member_id) {
            return Err(E::UnknownMemberId.code());
        }
        Ok(())
    }

    fn refresh(&mut self, member_id: &str) {
        if let Some(m) = self.members.get_mut(member_id) {
            m.deadline = Instant::now() + m.session_timeout;
        }
    }

    /// Protocols every member supports, each member voting for its first.
    fn select_protocol(&self) -> Option<String> {
        let mut candidates: Vec<&str> =
            self.members.values().next()?.protocols.iter().map(|(n, _)| n.as_str()).collect();
        for m in self.members.values() {
            candidates.retain(|c| m.protocols.iter().any(|(n, _)| n == c));
        }
        let mut votes: Vec<(&str, usize)> = candidates.iter().map(|c| (*c, 0)).collect();
        for m in self.members.values() {
            if let Some((name, _)) = m.protocols.iter().find(|(n, _)| candidates.contains(&n.as_str())) {
                if let Some(v) = votes.iter_mut().find(|(c, _)| c == name) {
                    v.1 += 1;
                }
            }
        }
        // Most votes wins; ties go to the earlier candidate in the first member's order.
        let best = votes.iter().map(|(_, n)| *n).max()?;
        votes.into_iter().find(|(_, n)| *n == best).map(|(c, _)| c.to_string())
    }

    fn protocols_compatible(&self, protocol_type: &str, protocols: &[(String, Bytes)]) -> bool {
        if protocol_type.is_empty() || protocols.is_empty() {
            return false;
        }
        if self.members.is_empty() {
            return true;
        }
        if self.protocol_type.as_deref() != Some(protocol_type) {
            return false;
        }
        // At least one protocol every current member also supports.
        protocols.iter().any(|(name, _)| self.members.values().all(|m| m.protocols.iter().any(|(n, _)| n == name)))
    }

    fn prepare_rebalance(&mut self) {
        if self.state == GroupState::PreparingRebalance || self.state == GroupState::Dead {
            return;
        }
        let now = Instant::now();
        for m in self.members.values_mut() {
            if let Some(sync) = m.pending_sync.take() {
                let _ = sync.send(SyncAnswer { error_code: E::RebalanceInProgress.code(), ..SyncAnswer::default() });
            }
        }
        if self.state == GroupState::Empty {
            self.initial_join_until = Some(now + Duration::from_millis(self.settings.initial_rebalance_delay_ms));
        }
        let longest = self.members.values().map(|m| m.rebalance_timeout).max().unwrap_or(Duration::ZERO);
        self.rebalance_deadline = Some(now + longest);
        self.state = GroupState::PreparingRebalance;
        tracing::debug!(group = %self.group_id, "preparing rebalance");
    }

    fn maybe_complete_join(&mut self) {
        if self.state != GroupState::PreparingRebalance {
            return;
        }
        let now = Instant::now();
        if self.initial_join_until.is_some_and(|until| now < until) {
            return;
        }
        let all_joined = self.members.values().all(|m| m.pending_join.is_some());
        let timed_out = self.rebalance_deadline.is_some_and(|d| now >= d);
        if !all_joined && !timed_out {
            return;
        }
        // Members that did not rejoin in time are out.
        let late: Vec<String> =
            self.members.iter().filter(|(_, m)| m.pending_join.is_none()).map(|(id, _)| id.clone()).collect();
        for id in late {
            self.forget_member(&id);
        }
        self.complete_join();
    }

    fn complete_join(&mut self) {
        self.generation += 1;
        self.rebalance_deadline = None;
        self.initial_join_until = None;
        if self.members.is_empty() {
            self.state = GroupState::Empty;
            self.protocol = None;
            self.leader = None;
            self.empty_since_ms = Some(crate::now_ms());
            self.persist();
            tracing::info!(group = %self.group_id, generation = self.generation, "group is empty");
            return;
        }
        self.empty_since_ms = None;
        self.protocol = self.select_protocol();
        let leader_present = self.leader.as_ref().is_some_and(|l| self.members.contains_key(l));
        if !leader_present {
            self.leader = self.members.iter().min_by_key(|(_, m)| m.join_order).map(|(id, _)| id.clone());
        }
        let leader = self.leader.clone().expect("a non-empty group has a leader");
        let protocol = self.protocol.clone();
        let member_list: Vec<(String, Option<String>, Bytes)> = self
            .members
            .iter()
            .map(|(id, m)| (id.clone(), m.instance_id.clone(), metadata_for(&m.protocols, protocol.as_deref())))
            .collect();
        self.state = GroupState::CompletingRebalance;
        let now = Instant::now();
        for (id, m) in self.members.iter_mut() {
            m.deadline = now + m.session_timeout;
            m.assignment = Bytes::new();
            if let Some(join) = m.pending_join.take() {
                let members = if *id == leader { member_list.clone() } else { Vec::new() };
                let _ = join.send(JoinAnswer {
                    error_code: 0,
                    generation_id: self.generation,
                    protocol_type: self.protocol_type.clone(),
                    protocol_name: protocol.clone(),
                    leader: leader.clone(),
                    member_id: id.clone(),
                    members,
                });
            }
        }
        self.persist();
        tracing::info!(group = %self.group_id, generation = self.generation, members = self.members.len(), "rebalance joined");
    }

    /// Removes a member without changing state; callers decide what follows.
    fn forget_member(&mut self, member_id: &str) {
        if let Some(m) = self.members.remove(member_id) {
            if let Some(instance) = &m.instance_id {
                if self.static_members.get(instance).is_some_and(|id| id == member_id) {
                    self.static_members.remove(instance);
                }
            }
            if let Some(join) = m.pending_join {
                let _ = join.send(JoinAnswer::error(E::UnknownMemberId.code(), member_id));
            }
            if let Some(sync) = m.pending_sync {
                let _ = sync.send(SyncAnswer { error_code: E::UnknownMemberId.code(), ..SyncAnswer::default() });
            }
        }
    }

    /// A member left or expired: the others rebalance without it.
    fn remove_member(&mut self, member_id: &str) {
        self.forget_member(member_id);
        match self.state {
            GroupState::Stable | GroupState::CompletingRebalance => self.prepare_rebalance(),
            _ => {}
        }
        self.maybe_complete_join();
    }

    fn add_member(&mut self, member_id: &str, req: &JoinGroup, join: oneshot::Sender<JoinAnswer>) {
        let session = Duration::from_millis(req.session_timeout_ms.max(0) as u64);
        let rebalance = Duration::from_millis(req.rebalance_timeout_ms.max(req.session_timeout_ms).max(0) as u64);
        self.next_join_order += 1;
        self.members.insert(
            member_id.to_string(),
            Member {
                instance_id: req.group_instance_id.clone(),
                client_id: req.client_id.clone(),
                client_host: req.client_host.clone(),
                session_timeout: session,
                rebalance_timeout: rebalance,
                protocols: req.protocols.clone(),
                assignment: Bytes::new(),
                deadline: Instant::now() + session,
                join_order: self.next_join_order,
                pending_join: Some(join),
                pending_sync: None,
            },
        );
        if let Some(instance) = &req.group_instance_id {
            self.static_members.insert(instance.clone(), member_id.to_string());
        }
        if self.protocol_type.is_none() || self.members.len() == 1 {
            self.protocol_type = Some(req.protocol_type.clone());
        }
    }

    /// The current generation as seen by `member_id`, for a rejoin that changes nothing.
    fn current_join_answer(&self, member_id: &str) -> JoinAnswer {
        let leader = self.leader.clone().unwrap_or_default();
        let members = if leader == member_id {
            self.members
                .iter()
                .map(|(id, m)| {
                    (id.clone(), m.instance_id.clone(), metadata_for(&m.protocols, self.protocol.as_deref()))
                })
                .collect()
        } else {
            Vec::new()
        };
        JoinAnswer {
            error_code: 0,
            generation_id: self.generation,
            protocol_type: self.protocol_type.clone(),
            protocol_name: self.protocol.clone(),
            leader,
            member_id: member_id.to_string(),
            members,
        }
    }

    fn join(&mut self, req: JoinGroup) -> Result<oneshot::Receiver<JoinAnswer>, JoinAnswer> {
        let fail = |code: i16| Err(JoinAnswer::error(code, &req.member_id));
        if self.state == GroupState::Dead {
            return fail(E::CoordinatorNotAvailable.code());
        }
        let s = &self.settings;
        if req.session_timeout_ms < s.min_session_timeout_ms || req.session_timeout_ms > s.max_session_timeout_ms {
            return fail(E::InvalidSessionTimeout.code());
        }
        if !self.protocols_compatible(&req.protocol_type, &req.protocols) {
            return fail(E::InconsistentGroupProtocol.code());
        }
        let (tx, rx) = oneshot::channel();

        if req.member_id.is_empty() {
            let new_id = format!("{}-{}", req.client_id, uuid::Uuid::new_v4());
            if let Some(instance) = req.group_instance_id.clone() {
                if let Some(old_id) = self.static_members.get(&instance).cloned() {
                    return self.static_rejoin(&old_id, &new_id, req, tx).map(|_| rx);
                }
            } else if req.require_known_member_id {
                if self.pending_members.len() >= self.settings.max_members {
                    return fail(E::GroupMaxSizeReached.code());
                }
                let deadline = Instant::now() + Duration::from_millis(req.session_timeout_ms as u64);
                self.pending_members.insert(new_id.clone(), deadline);
                return Err(JoinAnswer::error(E::MemberIdRequired.code(), &new_id));
            }
            return self.admit(&new_id, &req, tx).map(|_| rx);
        }

        let member_id = req.member_id.clone();
        if !self.members.contains_key(&member_id) {
            if self.pending_members.remove(&member_id).is_none() {
                return fail(E::UnknownMemberId.code());
            }
            return self.admit(&member_id, &req, tx).map(|_| rx);
        }
        if let Err(code) = self.check_member(&member_id, &req.group_instance_id) {
            return fail(code);
        }
        let member = self.members.get_mut(&member_id).expect("checked above");
        let unchanged = member.protocols == req.protocols;
        member.protocols = req.protocols.clone();
        member.session_timeout = Duration::from_millis(req.session_timeout_ms as u64);
        member.rebalance_timeout = Duration::from_millis(req.rebalance_timeout_ms.max(req.session_timeout_ms) as u64);
        member.deadline = Instant::now() + member.session_timeout;
        let is_leader = self.leader.as_deref() == Some(member_id.as_str());
        match self.state {
            GroupState::CompletingRebalance if unchanged => Err(self.current_join_answer(&member_id)),
            GroupState::Stable if unchanged && !is_leader => Err(self.current_join_answer(&member_id)),
            _ => {
                let member = self.members.get_mut(&member_id).expect("checked above");
                if let Some(old) = member.pending_join.replace(tx) {
                    let _ = old.send(JoinAnswer::error(E::UnknownMemberId.code(), &member_id));
                }
                self.prepare_rebalance();
                self.maybe_complete_join();
                Ok(rx)
            }
        }
    }

    /// A new member joins, within `max_members`, and the group rebalances for it.
    fn admit(&mut self, member_id: &str, req: &JoinGroup, join: oneshot::Sender<JoinAnswer>) -> Result<(), JoinAnswer> {
        if self.members.len() >= self.settings.max_members {
            return Err(JoinAnswer::error(E::GroupMaxSizeReached.code(), member_id));
        }
        self.add_member(member_id, req, join);
        self.prepare_rebalance();
        self.maybe_complete_join();
        Ok(())
    }

    /// A static member came back with a new member id (KIP-345): the old id is
    /// fenced; if nothing else changed, no rebalance happens.
    fn static_rejoin(
        &mut self,
        old_id: &str,
        new_id: &str,
        req: JoinGroup,
        tx: oneshot::Sender<JoinAnswer>,
    ) -> Result<(), JoinAnswer> {
        let mut member = self.members.remove(old_id).expect("static map points at a member");
        if let Some(join) = member.pending_join.take() {
            let _ = join.send(JoinAnswer::error(E::FencedInstanceId.code(), old_id));
        }
        if let Some(sync) = member.pending_sync.take() {
            let _ = sync.send(SyncAnswer { error_code: E::FencedInstanceId.code(), ..SyncAnswer::default() });
        }
        let unchanged = member.protocols == req.protocols;
        member.protocols = req.protocols.clone();
        member.client_id = req.client_id.clone();
        member.client_host = req.client_host.clone();
        member.session_timeout = Duration::from_millis(req.session_timeout_ms as u64);
        member.deadline = Instant::now() + member.session_timeout;
        self.members.insert(new_id.to_string(), member);
        self.static_members.insert(req.group_instance_id.clone().expect("static rejoin"), new_id.to_string());
        if self.leader.as_deref() == Some(old_id) {
            self.leader = Some(new_id.to_string());
        }
        tracing::info!(group = %self.group_id, old = old_id, new = new_id, "static member rejoined");
        if self.state == GroupState::Stable && unchanged {
            let _ = tx.send(self.current_join_answer(new_id));
            return Ok(());
        }
        self.members.get_mut(new_id).expect("just inserted").pending_join = Some(tx);
        self.prepare_rebalance();
        self.maybe_complete_join();
        Ok(())
    }

    fn sync(&mut self, req: SyncGroup) -> Result<oneshot::Receiver<SyncAnswer>, SyncAnswer> {
        let fail = |code: i16| Err(SyncAnswer { error_code: code, ..SyncAnswer::default() });
        if let Err(code) = self.check_member(&req.member_id, &req.group_instance_id) {
            return fail(code);
        }
        if req.generation_id != self.generation {
            return fail(E::IllegalGeneration.code());
        }
        let type_mismatch = req.protocol_type.as_ref().is_some_and(|t| Some(t) != self.protocol_type.as_ref());
        let name_mismatch = req.protocol_name.as_ref().is_some_and(|n| Some(n) != self.protocol.as_ref());
        if type_mismatch || name_mismatch {
            return fail(E::InconsistentGroupProtocol.code());
        }
        self.refresh(&req.member_id);
        match self.state {
            GroupState::PreparingRebalance => fail(E::RebalanceInProgress.code()),
            GroupState::Empty | GroupState::Dead => fail(E::UnknownMemberId.code()),
            GroupState::Stable => Err(self.sync_answer(&req.member_id)),
            GroupState::CompletingRebalance => {
                let (tx, rx) = oneshot::channel();
                self.members.get_mut(&req.member_id).expect("checked").pending_sync = Some(tx);
                if self.leader.as_deref() == Some(req.member_id.as_str()) {
                    let assignments: HashMap<String, Bytes> = req.assignments.into_iter().collect();
                    for (id, m) in self.members.iter_mut() {
                        m.assignment = assignments.get(id).cloned().unwrap_or_default();
                    }
                    self.state = GroupState::Stable;
                    let ids: Vec<String> = self.members.keys().cloned().collect();
                    for id in ids {
                        let answer = self.sync_answer(&id);
                        if let Some(sync) = self.members.get_mut(&id).and_then(|m| m.pending_sync.take()) {
                            let _ = sync.send(answer);
                        }
                    }
                    tracing::info!(group = %self.group_id, generation = self.generation, "group stable");
                }
                Ok(rx)
            }
        }
    }

    fn sync_answer(&self, member_id: &str) -> SyncAnswer {
        SyncAnswer {
            error_code: 0,
            protocol_type: self.protocol_type.clone(),
            protocol_name: self.protocol.clone(),
            assignment: self.members.get(member_id).map(|m| m.assignment.clone()).unwrap_or_default(),
        }
    }

    fn heartbeat(&mut self, req: Heartbeat) -> i16 {
        if let Err(code) = self.check_member(&req.member_id, &req.group_instance_id) {
            return code;
        }
        if req.generation_id != self.generation {
            return E::IllegalGeneration.code();
        }
        self.refresh(&req.member_id);
        match self.state {
            GroupState::PreparingRebalance => E::RebalanceInProgress.code(),
            GroupState::Stable | GroupState::CompletingRebalance => 0,
            GroupState::Empty | GroupState::Dead => E::UnknownMemberId.code(),
        }
    }

    fn leave(&mut self, req: LeaveGroup) -> (i16, Vec<i16>) {
        let mut codes = Vec::with_capacity(req.members.len());
        for (member_id, instance_id) in req.members {
            let member_id = match (&instance_id, member_id.is_empty()) {
                (Some(instance), true) => self.static_members.get(instance).cloned().unwrap_or_default(),
                _ => member_id,
            };
            match self.check_member(&member_id, &instance_id) {
                Ok(()) => {
                    tracing::info!(group = %self.group_id, member = %member_id, "member left");
                    self.remove_member(&member_id);
                    codes.push(0);
                }
                Err(code) => codes.push(code),
            }
        }
        // Before LeaveGroup v3 there is one member and its error is the top-level one.
        let top = if codes.len() == 1 { codes[0] } else { 0 };
        (top, codes)
    }

    /// OffsetCommit, or with `transaction` TxnOffsetCommit (pending until its marker).
    fn commit(&mut self, req: CommitOffsets, transaction: Option<i64>) -> Vec<i16> {
        let all = |code: i16| vec![code; req.offsets.len()];
        let standalone = req.generation_id < 0 && req.member_id.is_empty();
        if self.state == GroupState::Dead {
            return all(E::CoordinatorNotAvailable.code());
        }
        if standalone {
            // A transactional commit without a generation is not checked (as Kafka: old producers send none).
            if self.state != GroupState::Empty && transaction.is_none() {
                return all(E::IllegalGeneration.code());
            }
        } else {
            if let Err(code) = self.check_member(&req.member_id, &req.group_instance_id) {
                return all(code);
            }
            if self.state == GroupState::CompletingRebalance {
                return all(E::RebalanceInProgress.code());
            }
            if req.generation_id != self.generation {
                return all(E::IllegalGeneration.code());
            }
            self.refresh(&req.member_id);
        }
        let now = crate::now_ms();
        let mut codes = Vec::with_capacity(req.offsets.len());
        let mut to_store = Vec::with_capacity(req.offsets.len());
        for (tp, offset, leader_epoch, metadata) in req.offsets {
            if metadata.as_ref().is_some_and(|m| m.len() > self.settings.offset_metadata_max_bytes) {
                codes.push(E::OffsetMetadataTooLarge.code());
                continue;
            }
            codes.push(0);
            to_store.push((tp, CommittedOffset { offset, leader_epoch, metadata, commit_time_ms: now }));
        }
        if !to_store.is_empty() {
            let stored = match transaction {
                None => self.store.commit(&self.group_id, &to_store),
                Some(producer_id) => self.store.commit_pending(producer_id, &self.group_id, &to_store),
            };
            if let Err(e) = stored {
                tracing::error!(group = %self.group_id, error = %e, "offset commit failed");
                return codes.into_iter().map(|c| if c == 0 { E::CoordinatorNotAvailable.code() } else { c }).collect();
            }
        }
        codes
    }

    fn fetch(&self, partitions: Option<Vec<TopicPartition>>) -> GroupAnswer {
        let result = match partitions {
            None => {
                self.store.fetch_all(&self.group_id).map(|all| all.into_iter().map(|(tp, c)| (tp, Some(c))).collect())
            }
            Some(wanted) => wanted
                .into_iter()
                .map(|(topic, p)| self.store.fetch(&self.group_id, &topic, p).map(|c| ((topic, p), c)))
                .collect(),
        };
        match result {
            Ok(offsets) => GroupAnswer::Fetched(0, offsets),
            Err(e) => {
                tracing::error!(group = %self.group_id, error = %e, "offset fetch failed");
                GroupAnswer::Fetched(E::CoordinatorNotAvailable.code(), Vec::new())
            }
        }
    }

    fn describe(&self) -> GroupDescription {
        let protocol = self.protocol.clone().unwrap_or_default();
        let members = self
            .members
            .iter()
            .map(|(id, m)| MemberDescription {
                member_id: id.clone(),
                group_instance_id: m.instance_id.clone(),
                client_id: m.client_id.clone(),
                client_host: m.client_host.clone(),
                metadata: metadata_for(&m.protocols, self.protocol.as_deref()),
                assignment: m.assignment.clone(),
            })
            .collect();
        GroupDescription {
            state: self.state,
            protocol_type: self.protocol_type.clone().unwrap_or_default(),
            protocol,
            members,
        }
    }

    /// Topics the members subscribe to, read from the consumer protocol's
    /// subscription (the one piece of member metadata the broker reads, for OffsetDelete).
    fn subscribed_topics(&self) -> Vec<String> {
        if self.protocol_type.as_deref() != Some("consumer") {
            return Vec::new();
        }
        let mut topics = Vec::new();
        for m in self.members.values() {
            topics.extend(consumer_subscription_topics(&metadata_for(&m.protocols, self.protocol.as_deref())));
        }
        topics
    }

    /// Whether anything in the group waits on time: a member's session, an
    /// id handed out, a rebalance.
    fn needs_ticks(&self) -> bool {
        !self.members.is_empty() || !self.pending_members.is_empty() || self.state == GroupState::PreparingRebalance
    }

    /// Starts the tick if the group needs it and it is not running.
    fn schedule_ticks(&mut self, ctx: &mut Context<Self>) {
        if self.ticking.is_none() && self.needs_ticks() {
            self.ticking = Some(ctx.run_interval(TICK, |act, ctx| act.tick(ctx)));
        }
    }

    fn tick(&mut self, ctx: &mut Context<Self>) {
        self.expire();
        if !self.needs_ticks() {
            if let Some(handle) = self.ticking.take() {
                ctx.cancel_future(handle);
            }
        }
    }

    fn expire(&mut self) {
        let now = Instant::now();
        self.pending_members.retain(|_, deadline| *deadline > now);
        // Members waiting in a join are bounded by the rebalance timeout, not the session.
        let expired: Vec<String> = self
            .members
            .iter()
            .filter(|(_, m)| m.pending_join.is_none() && m.deadline <= now)
            .map(|(id, _)| id.clone())
            .collect();
        for id in expired {
            tracing::info!(group = %self.group_id, member = %id, "member session expired");
            self.remove_member(&id);
        }
        self.maybe_complete_join();
    }
}

/// The metadata a member sent for `protocol` (or its first, before one is chosen).
fn metadata_for(protocols: &[(String, Bytes)], protocol: Option<&str>) -> Bytes {
    match protocol {
        Some(name) => protocols.iter().find(|(n, _)| n == name).map(|(_, m)| m.clone()).unwrap_or_default(),
        None => protocols.first().map(|(_, m)| m.clone()).unwrap_or_default(),
    }
}

/// Topic names of a ConsumerProtocolSubscription (version i16, then an i16-length string array).
pub fn consumer_subscription_topics(metadata: &[u8]) -> Vec<String> {
    let mut topics = Vec::new();
    let Some(count) = metadata.get(2..6).map(|b| i32::from_be_bytes(b.try_into().expect("4 bytes"))) else {
        return topics;
    };
    let mut at = 6;
    for _ in 0..count.clamp(0, 100_000) {
        let Some(len) = metadata.get(at..at + 2).map(|b| i16::from_be_bytes([b[0], b[1]])) else { break };
        let Some(name) = metadata.get(at + 2..at + 2 + len.max(0) as usize) else { break };
        topics.push(String::from_utf8_lossy(name).into_owned());
        at += 2 + len.max(0) as usize;
    }
    topics
}

impl Actor for GroupCoordinator {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(1024);
        match self.store.group(&self.group_id) {
            Ok(Some(record)) => {
                self.generation = record.generation;
                self.protocol_type = (!record.protocol_type.is_empty()).then_some(record.protocol_type);
                self.empty_since_ms = record.empty_since_ms.or(Some(crate::now_ms()));
            }
            Ok(None) => self.empty_since_ms = Some(crate::now_ms()),
            Err(e) => tracing::error!(group = %self.group_id, error = %e, "cannot load group record"),
        }
        self.ticking = None;
        self.schedule_ticks(ctx);
    }
}

/// Restarted after a panic, a coordinator starts over as an Empty group:
/// members rejoin (their heartbeats get UNKNOWN_MEMBER_ID); offsets are on disk.
impl Supervised for GroupCoordinator {
    fn restarting(&mut self, _: &mut Context<Self>) {
        let (settings, store, group_id) = (self.settings.clone(), self.store.clone(), self.group_id.clone());
        *self = GroupCoordinator::new(group_id, settings, store);
    }
}

type Answer = std::pin::Pin<Box<dyn std::future::Future<Output = GroupAnswer>>>;

impl Handler<GroupRequest> for GroupCoordinator {
    type Result = ResponseFuture<Result<GroupAnswer, i16>>;

    /// A panic while handling is contained here: the request gets
    /// COORDINATOR_NOT_AVAILABLE (retriable), parked answers are dropped (their
    /// receivers get the same), and the supervisor restarts the coordinator.
    fn handle(&mut self, msg: GroupRequest, ctx: &mut Context<Self>) -> Self::Result {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.dispatch(msg))) {
            Ok(answer) => {
                self.schedule_ticks(ctx);
                Box::pin(async move { Ok(answer.await) })
            }
            Err(_) => {
                tracing::error!(group = %self.group_id, "group coordinator panicked; restarting");
                ctx.stop();
                Box::pin(async { Err(E::CoordinatorNotAvailable.code()) })
            }
        }
    }
}

impl GroupCoordinator {
    fn dispatch(&mut self, msg: GroupRequest) -> Answer {
        let ready = |answer: GroupAnswer| -> Answer { Box::pin(async move { answer }) };
        match msg {
            GroupRequest::Join(req) => {
                let member_id = req.member_id.clone();
                match self.join(req) {
                    Err(answer) => ready(GroupAnswer::Join(answer)),
                    Ok(rx) => Box::pin(async move {
                        GroupAnswer::Join(
                            rx.await
                                .unwrap_or_else(|_| JoinAnswer::error(E::CoordinatorNotAvailable.code(), &member_id)),
                        )
                    }),
                }
            }
            GroupRequest::Sync(req) => match self.sync(req) {
                Err(answer) => ready(GroupAnswer::Sync(answer)),
                Ok(rx) => Box::pin(async move {
                    GroupAnswer::Sync(rx.await.unwrap_or_else(|_| SyncAnswer {
                        error_code: E::CoordinatorNotAvailable.code(),
                        ..SyncAnswer::default()
                    }))
                }),
            },
            GroupRequest::Heartbeat(req) => ready(GroupAnswer::Code(self.heartbeat(req))),
            GroupRequest::Leave(req) => {
                let (top, codes) = self.leave(req);
                ready(GroupAnswer::Leave(top, codes))
            }
            GroupRequest::Commit(req) => ready(GroupAnswer::Codes(self.commit(req, None))),
            GroupRequest::TxnCommit { producer_id, commit } => {
                ready(GroupAnswer::Codes(self.commit(commit, Some(producer_id))))
            }
            GroupRequest::Fetch(partitions) => ready(self.fetch(partitions)),
            GroupRequest::Describe => ready(GroupAnswer::Described(self.describe())),
            GroupRequest::Delete => {
                let code = if self.state == GroupState::Dead {
                    E::GroupIdNotFound.code()
                } else if !self.members.is_empty() {
                    E::NonEmptyGroup.code()
                } else {
                    match self.store.delete_group(&self.group_id) {
                        Ok(()) => {
                            self.state = GroupState::Dead;
                            0
                        }
                        Err(_) => E::CoordinatorNotAvailable.code(),
                    }
                };
                ready(GroupAnswer::Code(code))
            }
            GroupRequest::DeleteOffsets(partitions) => {
                let subscribed = self.subscribed_topics();
                let (free, codes): (Vec<_>, Vec<_>) = partitions
                    .into_iter()
                    .map(|tp| {
                        let code = if subscribed.contains(&tp.0) { E::GroupSubscribedToTopic.code() } else { 0 };
                        (tp, code)
                    })
                    .unzip();
                let deletable: Vec<TopicPartition> =
                    free.into_iter().zip(&codes).filter(|(_, c)| **c == 0).map(|(tp, _)| tp).collect();
                match self.store.delete_offsets(&self.group_id, &deletable) {
                    Ok(_) => ready(GroupAnswer::Codes(codes)),
                    Err(_) => ready(GroupAnswer::Codes(vec![E::CoordinatorNotAvailable.code(); codes.len()])),
                }
            }
            #[cfg(feature = "fault-injection")]
            GroupRequest::InjectPanic => panic!("injected fault in group coordinator"),
            GroupRequest::Expire { now_ms } => {
                let expired = self.state == GroupState::Empty
                    && self.empty_since_ms.is_some_and(|since| now_ms - since >= self.settings.offsets_retention_ms);
                if expired && self.store.delete_group(&self.group_id).is_ok() {
                    tracing::info!(group = %self.group_id, "expired group offsets");
                    self.state = GroupState::Dead;
                    return ready(GroupAnswer::Code(0));
                }
                ready(GroupAnswer::Code(E::NonEmptyGroup.code()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_topics_from_a_consumer_subscription() {
        let mut m = vec![0, 1, 0, 0, 0, 2];
        for t in ["orders", "audit"] {
            m.extend_from_slice(&(t.len() as i16).to_be_bytes());
            m.extend_from_slice(t.as_bytes());
        }
        m.extend_from_slice(&[0xff, 0xff, 0xff, 0xff]);
        assert_eq!(consumer_subscription_topics(&m), vec!["orders", "audit"]);
        assert!(consumer_subscription_topics(&[0, 1]).is_empty());
        assert_eq!(consumer_subscription_topics(&[0, 1, 0x7f, 0xff, 0xff, 0xff, 0, 9]), Vec::<String>::new());
    }
}
