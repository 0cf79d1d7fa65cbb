//! Consumer-group membership (Kafka's classic protocol): join, let the leader
//! assign partitions with the range assignor, sync, heartbeat, commit, leave.
//!
//! A member loop: `join` (which returns this member's partitions), read them
//! from `committed` offsets, `heartbeat` every `heartbeat_interval` and
//! `commit` as it goes; a heartbeat or commit that fails with
//! REBALANCE_IN_PROGRESS, ILLEGAL_GENERATION or UNKNOWN_MEMBER_ID means
//! `join` again. The member's id and generation live here and nowhere else.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::consumer_protocol_assignment::TopicPartition as AssignedPartitions;
use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::leave_group_request::MemberIdentity;
use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use kafka_protocol::ResponseError;

use crate::admin::{group_id, PartitionOffset};
use crate::client::{str_bytes, topic_name, Client};
use crate::connector::Connector;
use crate::error::{check, kafka_error, Error, Result, Subject};

/// The one assignor this client runs, under its Kafka name.
const RANGE: &str = "range";
/// The consumer protocol version this client writes (v0: topics and user data).
const CONSUMER_PROTOCOL_VERSION: i16 = 0;
/// Join rounds one `join` may take: a member id to learn, a rebalance that
/// restarts while syncing.
const MAX_JOIN_ROUNDS: usize = 8;

#[derive(Clone, Debug)]
pub struct GroupConfig {
    pub session_timeout: Duration,
    /// How long the coordinator waits for every member to rejoin.
    pub rebalance_timeout: Duration,
    pub heartbeat_interval: Duration,
}

impl Default for GroupConfig {
    fn default() -> GroupConfig {
        GroupConfig {
            session_timeout: Duration::from_secs(10),
            rebalance_timeout: Duration::from_secs(30),
            heartbeat_interval: Duration::from_secs(3),
        }
    }
}

/// The partitions a generation gave this member, by topic.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Assignment {
    pub generation: i32,
    pub partitions: BTreeMap<String, Vec<i32>>,
}

pub struct GroupMember<C: Connector> {
    client: Client<C>,
    group: String,
    topics: Vec<String>,
    config: GroupConfig,
    member_id: RefCell<String>,
    generation: Cell<i32>,
}

/// What JoinGroup told this member.
struct Joined {
    generation: i32,
    leader: bool,
    /// (member id, subscribed topics), for the leader only.
    members: Vec<(String, Vec<String>)>,
}

impl<C: Connector> GroupMember<C> {
    /// A member on connections of its own ([`Client::detached`]): the
    /// coordinator holds a join until the rebalance completes, which must not
    /// hold up other members or requests sharing a connection.
    pub fn new(client: &Client<C>, group: &str, topics: &[&str], config: GroupConfig) -> GroupMember<C> {
        assert!(!topics.is_empty(), "a member subscribes to at least one topic");
        assert!(config.heartbeat_interval < config.session_timeout, "heartbeats come within a session");
        GroupMember {
            client: client.detached(),
            group: group.to_string(),
            topics: topics.iter().map(|t| t.to_string()).collect(),
            config,
            member_id: RefCell::new(String::new()),
            generation: Cell::new(-1),
        }
    }

    pub fn member_id(&self) -> String {
        self.member_id.borrow().clone()
    }

    pub fn generation(&self) -> i32 {
        self.generation.get()
    }

    pub fn config(&self) -> &GroupConfig {
        &self.config
    }

    /// Joins (or rejoins) the group and returns this member's partitions.
    pub async fn join(&self) -> Result<Assignment> {
        let mut last = None;
        // Bounded by MAX_JOIN_ROUNDS.
        for _ in 0..MAX_JOIN_ROUNDS {
            let error = match self.join_round().await {
                Ok(assignment) => return Ok(assignment),
                Err(error) => error,
            };
            match error.kafka() {
                // The member id is in the answer: join again with it (KIP-394).
                Some(ResponseError::MemberIdRequired) => {}
                Some(ResponseError::UnknownMemberId) => self.member_id.borrow_mut().clear(),
                Some(ResponseError::RebalanceInProgress | ResponseError::IllegalGeneration) => {}
                _ => return Err(error),
            }
            last = Some(error);
        }
        Err(last.expect("a round ran"))
    }

    async fn join_round(&self) -> Result<Assignment> {
        let joined = self.join_group().await?;
        let assignments = if joined.leader { self.assign(&joined.members).await? } else { Vec::new() };
        let partitions = self.sync_group(joined.generation, assignments).await?;
        self.generation.set(joined.generation);
        Ok(Assignment { generation: joined.generation, partitions })
    }

    async fn join_group(&self) -> Result<Joined> {
        let subscription = encode_subscription(&self.topics)?;
        let request = JoinGroupRequest::default()
            .with_group_id(group_id(&self.group))
            .with_session_timeout_ms(millis(self.config.session_timeout))
            .with_rebalance_timeout_ms(millis(self.config.rebalance_timeout))
            .with_member_id(str_bytes(&self.member_id.borrow()))
            .with_protocol_type(StrBytes::from_static_str("consumer"))
            .with_protocols(vec![JoinGroupRequestProtocol::default()
                .with_name(StrBytes::from_static_str(RANGE))
                .with_metadata(subscription)]);
        let response: JoinGroupResponse =
            self.on_coordinator(|_| request.clone(), self.config.rebalance_timeout).await?;
        if !response.member_id.is_empty() {
            *self.member_id.borrow_mut() = response.member_id.to_string();
        }
        check(response.error_code, || Subject::Group(self.group.clone()))?;
        let protocol = response.protocol_name.as_ref().map(|p| p.to_string()).unwrap_or_default();
        if protocol != RANGE {
            return Err(kafka_error(ResponseError::InconsistentGroupProtocol, Subject::Group(self.group.clone())));
        }
        let members = response
            .members
            .iter()
            .map(|m| Ok((m.member_id.to_string(), decode_subscription(&m.metadata)?)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Joined { generation: response.generation_id, leader: response.leader == response.member_id, members })
    }

    /// The leader's part: the range assignment of every member's topics.
    async fn assign(&self, members: &[(String, Vec<String>)]) -> Result<Vec<SyncGroupRequestAssignment>> {
        let mut counts = BTreeMap::new();
        for topic in members.iter().flat_map(|(_, topics)| topics) {
            if !counts.contains_key(topic) {
                let partitions =
                    self.client.retrying(|| async { self.client.topic(topic).await }).await?.partitions.len();
                counts.insert(topic.clone(), i32::try_from(partitions).expect("partition counts fit an i32"));
            }
        }
        range_assign(members, &counts)
            .into_iter()
            .map(|(member, partitions)| {
                Ok(SyncGroupRequestAssignment::default()
                    .with_member_id(str_bytes(&member))
                    .with_assignment(encode_assignment(&partitions)?))
            })
            .collect()
    }

    async fn sync_group(
        &self,
        generation: i32,
        assignments: Vec<SyncGroupRequestAssignment>,
    ) -> Result<BTreeMap<String, Vec<i32>>> {
        let member_id = self.member_id();
        let request = |version: i16| {
            // Protocol type and name are in SyncGroup from v5 on.
            let named = |name: &'static str| (version >= 5).then(|| StrBytes::from_static_str(name));
            SyncGroupRequest::default()
                .with_group_id(group_id(&self.group))
                .with_generation_id(generation)
                .with_member_id(str_bytes(&member_id))
                .with_protocol_type(named("consumer"))
                .with_protocol_name(named(RANGE))
                .with_assignments(assignments.clone())
        };
        let response: SyncGroupResponse = self.on_coordinator(request, self.config.rebalance_timeout).await?;
        check(response.error_code, || Subject::Group(self.group.clone()))?;
        decode_assignment(&response.assignment)
    }

    /// Tells the coordinator this member is alive; REBALANCE_IN_PROGRESS
    /// (and the other generation errors) mean: join again.
    pub async fn heartbeat(&self) -> Result<()> {
        let request = HeartbeatRequest::default()
            .with_group_id(group_id(&self.group))
            .with_generation_id(self.generation.get())
            .with_member_id(str_bytes(&self.member_id.borrow()));
        let response: HeartbeatResponse = self.on_coordinator(|_| request.clone(), Duration::ZERO).await?;
        check(response.error_code, || Subject::Group(self.group.clone()))
    }

    /// Commits `offsets` as this member of its current generation.
    pub async fn commit(&self, offsets: &[PartitionOffset]) -> Result<()> {
        let member_id = self.member_id();
        self.client.commit_as(&self.group, self.generation.get(), &member_id, offsets).await
    }

    /// The group's committed offsets of `partitions` (-1: none yet).
    pub async fn committed(&self, partitions: &BTreeMap<String, Vec<i32>>) -> Result<Vec<PartitionOffset>> {
        self.client.fetch_offsets(&self.group, Some(partitions)).await
    }

    /// Leaves the group, so it rebalances now rather than after a session timeout.
    pub async fn leave(&self) -> Result<()> {
        let request = LeaveGroupRequest::default()
            .with_group_id(group_id(&self.group))
            .with_members(vec![MemberIdentity::default().with_member_id(str_bytes(&self.member_id.borrow()))]);
        let response: LeaveGroupResponse = self.on_coordinator(|_| request.clone(), Duration::ZERO).await?;
        check(response.error_code, || Subject::Group(self.group.clone()))?;
        for m in &response.members {
            check(m.error_code, || Subject::Group(self.group.clone()))?;
        }
        self.member_id.borrow_mut().clear();
        self.generation.set(-1);
        Ok(())
    }

    /// Sends the request `build` makes for the negotiated version to the
    /// coordinator, retried through its moves; `server_wait` is how long the
    /// coordinator may hold it.
    async fn on_coordinator<R, F>(&self, build: F, server_wait: Duration) -> Result<R::Response>
    where
        R: kafka_protocol::protocol::Request,
        R::Response: ErrorCode,
        F: Fn(i16) -> R,
    {
        let build = &build;
        self.client
            .retrying(|| async move {
                let connection = self.client.coordinator(&self.group).await?;
                let version = connection.version(crate::frame::api_of::<R>())?;
                let response = connection.send_at(version, &build(version), server_wait).await?;
                // Coordinator moves are retried here; every other code is the caller's.
                match ResponseError::try_from_code(response.error_code()) {
                    Some(
                        e @ (ResponseError::NotCoordinator
                        | ResponseError::CoordinatorNotAvailable
                        | ResponseError::CoordinatorLoadInProgress),
                    ) => Err(kafka_error(e, Subject::Group(self.group.clone()))),
                    _ => Ok(response),
                }
            })
            .await
    }
}

/// Responses whose top-level error code tells whether the coordinator moved.
pub trait ErrorCode {
    fn error_code(&self) -> i16;
}

macro_rules! error_code {
    ($($response:ty),+) => {
        $(impl ErrorCode for $response {
            fn error_code(&self) -> i16 {
                self.error_code
            }
        })+
    };
}
error_code!(JoinGroupResponse, SyncGroupResponse, HeartbeatResponse, LeaveGroupResponse);

fn millis(d: Duration) -> i32 {
    i32::try_from(d.as_millis()).unwrap_or(i32::MAX)
}

/// Kafka's range assignor: for each topic, its partitions in order split
/// into contiguous ranges over the members subscribed to it (sorted by member
/// id), the first `partitions % members` ranges one longer.
pub fn range_assign(
    members: &[(String, Vec<String>)],
    partitions: &BTreeMap<String, i32>,
) -> BTreeMap<String, BTreeMap<String, Vec<i32>>> {
    let mut out: BTreeMap<String, BTreeMap<String, Vec<i32>>> =
        members.iter().map(|(m, _)| (m.clone(), BTreeMap::new())).collect();
    for (topic, count) in partitions {
        let mut subscribed: Vec<&String> = members.iter().filter(|(_, t)| t.contains(topic)).map(|(m, _)| m).collect();
        subscribed.sort();
        if subscribed.is_empty() {
            continue;
        }
        let n = subscribed.len() as i32;
        let (each, extra) = (count / n, count % n);
        for (i, member) in subscribed.into_iter().enumerate() {
            let i = i as i32;
            let start = i * each + i.min(extra);
            let len = each + i32::from(i < extra);
            if len > 0 {
                out.get_mut(member)
                    .expect("every member is in out")
                    .insert(topic.clone(), (start..start + len).collect());
            }
        }
    }
    out
}

/// A ConsumerProtocolSubscription, prefixed with its version as Kafka writes it.
fn encode_subscription(topics: &[String]) -> Result<Bytes> {
    let subscription =
        ConsumerProtocolSubscription::default().with_topics(topics.iter().map(|t| str_bytes(t)).collect());
    encode_versioned(&subscription)
}

fn decode_subscription(data: &Bytes) -> Result<Vec<String>> {
    let subscription: ConsumerProtocolSubscription = decode_versioned(data)?;
    Ok(subscription.topics.iter().map(|t| t.to_string()).collect())
}

fn encode_assignment(partitions: &BTreeMap<String, Vec<i32>>) -> Result<Bytes> {
    let assigned = partitions
        .iter()
        .map(|(t, parts)| AssignedPartitions::default().with_topic(topic_name(t)).with_partitions(parts.clone()))
        .collect();
    encode_versioned(&ConsumerProtocolAssignment::default().with_assigned_partitions(assigned))
}

/// An empty assignment (a member with nothing to read) decodes as no partitions.
fn decode_assignment(data: &Bytes) -> Result<BTreeMap<String, Vec<i32>>> {
    if data.is_empty() {
        return Ok(BTreeMap::new());
    }
    let assignment: ConsumerProtocolAssignment = decode_versioned(data)?;
    Ok(assignment.assigned_partitions.into_iter().map(|tp| (tp.topic.0.to_string(), tp.partitions)).collect())
}

fn encode_versioned<T: Encodable>(message: &T) -> Result<Bytes> {
    let fail = |e: anyhow::Error| Error::Encode {
        api: ApiKey::JoinGroup,
        version: CONSUMER_PROTOCOL_VERSION,
        source: e.into(),
    };
    let mut buf = BytesMut::new();
    buf.put_i16(CONSUMER_PROTOCOL_VERSION);
    message.encode(&mut buf, CONSUMER_PROTOCOL_VERSION).map_err(fail)?;
    Ok(buf.freeze())
}

/// Decodes at the version written, or the newest this crate knows for a newer
/// one (later versions only append fields).
fn decode_versioned<T: Decodable + kafka_protocol::protocol::Message>(data: &Bytes) -> Result<T> {
    let mut buf = data.clone();
    let fail = |version, e: anyhow::Error| Error::Decode { api: ApiKey::SyncGroup, version, source: e.into() };
    if buf.remaining() < 2 {
        return Err(fail(-1, anyhow::anyhow!("consumer protocol data of {} bytes", buf.remaining())));
    }
    let version = buf.get_i16().min(T::VERSIONS.max);
    T::decode(&mut buf, version).map_err(|e| fail(version, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: &str, topics: &[&str]) -> (String, Vec<String>) {
        (id.to_string(), topics.iter().map(|t| t.to_string()).collect())
    }

    #[test]
    fn range_assignment_splits_each_topic_in_contiguous_ranges() {
        let members = vec![member("b", &["t", "u"]), member("a", &["t"]), member("c", &["t"])];
        let counts = BTreeMap::from([("t".to_string(), 7), ("u".to_string(), 2)]);
        let got = range_assign(&members, &counts);
        assert_eq!(got["a"]["t"], vec![0, 1, 2]);
        assert_eq!(got["b"]["t"], vec![3, 4]);
        assert_eq!(got["c"]["t"], vec![5, 6]);
        assert_eq!(got["b"]["u"], vec![0, 1]);
        assert!(!got["a"].contains_key("u"));
        let few = range_assign(&members, &BTreeMap::from([("t".to_string(), 1)]));
        assert_eq!(
            (few["a"].len(), few["b"].len(), few["c"].len()),
            (1, 0, 0),
            "members beyond the partitions get none"
        );
    }

    #[test]
    fn consumer_protocol_data_round_trips() {
        let topics = vec!["t".to_string(), "u".to_string()];
        assert_eq!(decode_subscription(&encode_subscription(&topics).unwrap()).unwrap(), topics);
        let partitions = BTreeMap::from([("t".to_string(), vec![0, 2])]);
        assert_eq!(decode_assignment(&encode_assignment(&partitions).unwrap()).unwrap(), partitions);
        assert!(decode_assignment(&Bytes::new()).unwrap().is_empty());
        assert!(decode_subscription(&Bytes::from_static(&[0])).is_err());
    }
}
