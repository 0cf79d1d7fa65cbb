//! The workload: producers (idempotent and not, acks=-1), consumers in groups
//! committing offsets, topics created during faults, and an observer of who
//! leads each partition. Each is a `tributary-client` of its own (as a
//! separate process would be) talking to the brokers through the simulated
//! network.

use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::{produce_request, InitProducerIdRequest, ProduceRequest, ProducerId, TopicName};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::Compression;
use tokio::sync::watch;
use tributary_actors::replication::{DescribeRole, Role};
use tributary_actors::{encode_batch, NewRecord, Sequenced};
use tributary_client::{
    ApiKey, Client, Error, FetchOptions, GroupConfig, GroupMember, NewTopic, PartitionOffset, Producer, ProducerConfig,
    ResponseError, Retry,
};

use super::checker::{Ack, PartitionKey, RecordId};
use super::connector::SimConnector;
use super::world::Shared;

/// Bounds on one batch's retries: a producer gives up on a batch after this many
/// sends (it is then neither acknowledged nor checked, like a client's delivery timeout).
const MAX_SENDS_PER_BATCH: u32 = 200;
const RETRY_BACKOFF_MS: std::ops::RangeInclusive<u64> = 50..=300;
const OBSERVE_EVERY: Duration = Duration::from_millis(200);
/// How long a produce request lets the leader wait for its replicas.
pub(super) const ACK_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a consumer's fetch lets the broker wait for data.
pub(super) const FETCH_WAIT: Duration = Duration::from_millis(50);

/// A flag the run raises once (stop making work; stop retrying): tasks check
/// it between steps, or wait for it while a request is out.
#[derive(Clone)]
pub struct Flag(Rc<watch::Sender<bool>>);

impl Flag {
    pub fn new() -> Flag {
        Flag(Rc::new(watch::channel(false).0))
    }

    pub fn raise(&self) {
        self.0.send_replace(true);
    }

    pub fn is_raised(&self) -> bool {
        *self.0.borrow()
    }

    pub async fn raised(&self) {
        let mut flag = self.0.subscribe();
        // The sender lives as long as `self`, so this returns only once raised.
        let _ = flag.wait_for(|raised| *raised).await;
    }
}

/// Runs `work` unless `flag` is raised first.
pub(super) async fn unless<T>(flag: &Flag, work: impl std::future::Future<Output = T>) -> Option<T> {
    tokio::select! {
        biased;
        () = flag.raised() => None,
        done = work => Some(done),
    }
}

/// Retries as a producer's client makes them: many, for a producer keeps
/// going through faults until it is told to give up.
pub(super) fn producer_retry() -> Retry {
    Retry {
        attempts: MAX_SENDS_PER_BATCH,
        within: Duration::from_secs(120),
        backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(500),
    }
}

/// A few quick retries: the caller goes round again anyway.
pub(super) fn brief_retry() -> Retry {
    Retry {
        attempts: 3,
        within: Duration::from_secs(5),
        backoff: Duration::from_millis(100),
        max_backoff: Duration::from_millis(400),
    }
}

/// One try: the caller retries, and must know whether a retry answered.
fn single_try() -> Retry {
    Retry { attempts: 1, ..brief_retry() }
}

fn topic_name(name: &str) -> TopicName {
    TopicName(StrBytes::from_string(name.to_string()))
}

pub(super) fn records_of(ids: &[RecordId]) -> Vec<NewRecord> {
    ids.iter().map(|r| NewRecord::keyed(format!("p{}", r.producer), r.value())).collect()
}

/// Encodes one v2 batch of workload records with the producer id, epoch and base sequence.
fn encode(records: &[RecordId], producer: Sequenced, timestamp: i64) -> Result<Bytes, Error> {
    encode_batch(&records_of(records), Compression::None, timestamp, Some(producer))
}

pub(super) async fn backoff(world: &Shared) {
    tokio::time::sleep(Duration::from_millis(world.random(RETRY_BACKOFF_MS))).await;
}

/// An idempotent producer's id and epoch, from any broker (retried).
async fn init_producer_id(client: &Client<SimConnector>) -> Result<(i64, i16), Error> {
    // The default transactional id is Some(""), which asks for a transaction.
    let request = InitProducerIdRequest::default()
        .with_transactional_id(None)
        .with_transaction_timeout_ms(60_000)
        .with_producer_id(ProducerId(-1))
        .with_producer_epoch(-1);
    client
        .retrying(|| async {
            let response = client.any_broker().await?.send(&request).await?;
            match ResponseError::try_from_code(response.error_code) {
                None => Ok((response.producer_id.0, response.producer_epoch)),
                Some(error) => Err(tributary_client::Error::Kafka {
                    error,
                    subject: tributary_client::Subject::Request(ApiKey::InitProducerId),
                    message: None,
                }),
            }
        })
        .await
}

/// A record batch to a random partition of a random scenario topic.
pub(super) fn pick_partition(world: &Shared) -> PartitionKey {
    let topics = &world.scenario.topics;
    let topic = &topics[world.random(0..=topics.len() as u64 - 1) as usize];
    (topic.name.clone(), world.random(0..=topic.partitions as u64 - 1) as i32)
}

/// The next `records_per_batch` record ids of producer `id`.
pub(super) fn next_records(world: &Shared, id: u32, next_seq: &mut u64) -> Vec<RecordId> {
    let count = world.scenario.workload.records_per_batch as u64;
    let records = (0..count).map(|i| RecordId { producer: id, seq: *next_seq + i }).collect();
    *next_seq += count;
    records
}

/// One producer, its own client. Stops making batches once `stop` is
/// raised and stops retrying once `give_up` is.
pub async fn producer(world: Shared, id: u32, idempotent: bool, stop: Flag, give_up: Flag) {
    let client = world.client(&format!("producer-{id}"), producer_retry());
    if idempotent {
        idempotent_producer(world, client, id, stop, give_up).await
    } else {
        plain_producer(world, client, id, stop, give_up).await
    }
}

/// A plain producer: the client library's `Producer`, one batch at a time,
/// retried by the client through leader changes (a retry may write a batch twice).
async fn plain_producer(world: Shared, client: Client<SimConnector>, id: u32, stop: Flag, give_up: Flag) {
    let producer = Producer::new(client, ProducerConfig { ack_timeout: ACK_TIMEOUT, ..ProducerConfig::default() });
    let mut next_seq = 0u64;
    while !stop.is_raised() {
        let partition = pick_partition(&world);
        let records = next_records(&world, id, &mut next_seq);
        world.history.borrow_mut().produce_attempts += 1;
        match unless(&give_up, producer.send(&partition.0, partition.1, &records_of(&records))).await {
            None => return,
            Some(Ok(Some(base_offset))) => {
                let ack = Ack { at: world.now(), partition, base_offset, records, idempotent: false };
                world.history.borrow_mut().acks.push(ack);
            }
            // Only acks=0 answers no offset.
            Some(Ok(None)) => {}
            Some(Err(e)) => {
                world.event(format!("producer {id} gave up a batch for {}-{}: {e}", partition.0, partition.1))
            }
        }
        tokio::time::sleep(Duration::from_millis(world.scenario.workload.produce_every_ms)).await;
    }
}

/// One batch of a producer, sent until acknowledged.
struct InFlight {
    records: Vec<RecordId>,
    base_sequence: i32,
    request: ProduceRequest,
    acked: Option<i64>,
}

/// An idempotent producer: windows of batches of its own numbered records
/// to random partitions, sent to the partition's leader until each is
/// acknowledged. It keeps up to `max_in_flight` batches in flight on its
/// client's one connection to the leader, as librdkafka does (the client
/// library's `Producer` sends one at a time); its retries resend every
/// batch not yet acknowledged, in order, with the same sequences.
async fn idempotent_producer(world: Shared, client: Client<SimConnector>, id: u32, stop: Flag, give_up: Flag) {
    let producer = match unless(&stop, init_producer_id(&client)).await {
        Some(Ok(producer)) => producer,
        Some(Err(e)) => {
            world.event(format!("producer {id} got no producer id ({e}); it stops"));
            return;
        }
        None => return,
    };
    let window = world.scenario.workload.max_in_flight;
    let mut sequences: BTreeMap<PartitionKey, i32> = BTreeMap::new();
    let mut next_seq = 0u64;
    while !stop.is_raised() {
        let key = pick_partition(&world);
        let mut base_sequence = *sequences.get(&key).unwrap_or(&0);
        // A full window, as a client under load keeps it.
        let mut batches = Vec::with_capacity(window);
        for _ in 0..window {
            let records = next_records(&world, id, &mut next_seq);
            let sequenced = Sequenced { producer_id: producer.0, producer_epoch: producer.1, base_sequence };
            let batch = match encode(&records, sequenced, tributary_actors::now_ms()) {
                Ok(batch) => batch,
                Err(e) => {
                    world.history.borrow_mut().fatal.push(format!("producer {id} cannot encode a batch: {e}"));
                    return;
                }
            };
            let request = ProduceRequest::default()
                .with_acks(-1)
                .with_timeout_ms(ACK_TIMEOUT.as_millis() as i32)
                .with_topic_data(vec![produce_request::TopicProduceData::default()
                    .with_name(topic_name(&key.0))
                    .with_partition_data(vec![produce_request::PartitionProduceData::default()
                        .with_index(key.1)
                        .with_records(Some(batch))])]);
            let count = records.len() as i32;
            batches.push(InFlight { records, base_sequence, request, acked: None });
            base_sequence += count;
        }
        for _ in 0..MAX_SENDS_PER_BATCH {
            if give_up.is_raised() || batches.iter().all(|b| b.acked.is_some()) {
                break;
            }
            match unless(&give_up, send_window(&world, &client, id, &key, &mut batches)).await {
                None => break,
                Some(Sent::Fatal) => return,
                Some(Sent::Failed) => {
                    client.forget();
                    backoff(&world).await;
                }
                Some(Sent::Answered) => {}
            }
        }
        // Acknowledgements are delivered in batch order, as a client delivers them.
        let mut acked_batches = 0;
        for batch in &batches {
            let Some(base_offset) = batch.acked else { break };
            let ack = Ack {
                at: world.now(),
                partition: key.clone(),
                base_offset,
                records: batch.records.clone(),
                idempotent: true,
            };
            world.history.borrow_mut().acks.push(ack);
            acked_batches += 1;
        }
        if acked_batches < batches.len() {
            // A batch may or may not be written; a new sequence after it would be out of order.
            world.event(format!("producer {id} gave up on a batch; it stops"));
            return;
        }
        sequences.insert(key, base_sequence);
        tokio::time::sleep(Duration::from_millis(world.scenario.workload.produce_every_ms)).await;
    }
}

/// How one round of a window's sends went.
enum Sent {
    /// Every batch sent was acknowledged.
    Answered,
    /// Some batch failed: the leader may have moved.
    Failed,
    /// The broker broke the idempotence rules; the run's history says how.
    Fatal,
}

/// Sends every unacknowledged batch of the window, in order, pipelined on
/// the client's connection to the partition's leader.
async fn send_window(
    world: &Shared,
    client: &Client<SimConnector>,
    id: u32,
    key: &PartitionKey,
    batches: &mut [InFlight],
) -> Sent {
    let leader = match client.leader(&key.0, key.1).await {
        Ok(leader) => leader,
        Err(e) => {
            world.event(format!("producer {id}: no leader for {}-{}: {e}", key.0, key.1));
            return Sent::Failed;
        }
    };
    let version = match leader.version(ApiKey::Produce) {
        Ok(version) => version,
        Err(e) => {
            world.history.borrow_mut().fatal.push(format!("producer {id}: {e}"));
            return Sent::Fatal;
        }
    };
    let unacked: Vec<usize> = (0..batches.len()).filter(|i| batches[*i].acked.is_none()).collect();
    world.history.borrow_mut().produce_attempts += unacked.len() as u64;
    let sends = unacked.iter().map(|i| leader.send_at(version, &batches[*i].request, ACK_TIMEOUT));
    let answers = futures::future::join_all(sends).await;
    let broker = leader.address().to_string();
    let mut failed = false;
    for (i, answer) in unacked.into_iter().zip(answers) {
        let sequence = batches[i].base_sequence;
        let part = match answer {
            Ok(response) => {
                response.responses.into_iter().flat_map(|t| t.partition_responses).find(|p| p.index == key.1)
            }
            Err(e) => {
                failed = true;
                world.event(format!("producer {id}: {e}"));
                continue;
            }
        };
        let Some(p) = part else {
            failed = true;
            world.event(format!("producer {id}: {broker} did not answer for {}-{}", key.0, key.1));
            continue;
        };
        let sequence_error = p.error_code == ResponseError::OutOfOrderSequenceNumber.code()
            || p.error_code == ResponseError::UnknownProducerId.code();
        if p.error_code == 0 {
            batches[i].acked = Some(p.base_offset);
        } else if sequence_error && !failed && batches[..i].iter().all(|b| b.acked.is_some()) {
            // Everything before this batch was acknowledged (so committed):
            // the leader should know the sequence that precedes it.
            let what = format!(
                "{:?}: producer {id} got error {} for {}-{} at sequence {sequence}, every earlier batch acknowledged, from {broker}",
                world.now(),
                p.error_code,
                key.0,
                key.1
            );
            world.history.borrow_mut().fatal.push(what);
            return Sent::Fatal;
        } else {
            failed = true;
            world.event(format!(
                "producer {id}: error {} from {broker} for {}-{} at sequence {sequence}",
                p.error_code, key.0, key.1
            ));
        }
    }
    if failed {
        Sent::Failed
    } else {
        Sent::Answered
    }
}

/// A consumer group member (the client's `GroupMember`: join, range
/// assignment, sync, heartbeat, commit as a member of its generation) that
/// reads its partitions of the first topic from their leaders and commits
/// its positions; it also reads its committed offsets back, which must
/// never be below an acknowledged commit. A generation error means join again.
pub async fn consumer(world: Shared, group: String, stop: Flag) {
    let client = world.client(&format!("consumer-{group}"), brief_retry());
    let topic = world.scenario.topics[0].clone();
    let member = GroupMember::new(&client, &group, &[topic.name.as_str()], member_config());
    let options = FetchOptions { max_wait: FETCH_WAIT, min_bytes: 1, max_bytes: 1 << 20, partition_max_bytes: 1 << 20, ..FetchOptions::default() };
    let mut positions: BTreeMap<i32, i64> = (0..topic.partitions).map(|p| (p, 0)).collect();
    let mut round = 0u64;
    // Bounded by `stop`: each turn joins once and reads until the generation ends.
    while !stop.is_raised() {
        let mine = match join(&world, &member, &topic.name, &stop, &format!("consumer of group {group}")).await {
            None => return,
            Some(None) => continue,
            Some(Some(mine)) => mine,
        };
        let mut beat = tokio::time::Instant::now();
        // Bounded by `stop`: each turn reads each partition once, commits, and heartbeats when due.
        while !stop.is_raised() {
            round += 1;
            for &partition in &mine {
                let key: PartitionKey = (topic.name.clone(), partition);
                let position = positions[&partition];
                let Some(fetched) = unless(&stop, client.fetch(&topic.name, &[(partition, position)], &options)).await
                else {
                    return;
                };
                let fetched = match fetched {
                    Ok(fetched) => fetched,
                    Err(e @ (Error::Records { .. } | Error::Decode { .. })) => {
                        world.history.borrow_mut().fatal.push(format!("consumer of group {group}: {e}"));
                        continue;
                    }
                    Err(_) => continue,
                };
                for record in fetched.into_iter().flat_map(|p| p.records) {
                    if record.offset < positions[&partition] {
                        continue;
                    }
                    if let Some(id) = record.value.as_deref().and_then(RecordId::parse) {
                        world.history.borrow_mut().read(world.now(), &key, record.offset, id);
                    }
                    positions.insert(partition, record.offset + 1);
                }
            }
            let offsets: Vec<PartitionOffset> =
                mine.iter().map(|p| PartitionOffset::new(&topic.name, *p, positions[p])).collect();
            let Some(committed) = unless(&stop, member.commit(&offsets)).await else { return };
            match committed {
                Ok(()) => {
                    for offset in offsets {
                        world.history.borrow_mut().commit_acked(
                            &group,
                            &(offset.topic, offset.partition),
                            offset.offset,
                        );
                    }
                }
                Err(e) if rejoin(&e) => break,
                Err(_) => {}
            }
            if round % 3 == 0
                && unless(&stop, read_commits(&world, &client, &group, &topic.name, topic.partitions)).await.is_none()
            {
                return;
            }
            match heartbeat_if_due(&member, &mut beat, &stop).await {
                None => return,
                Some(true) => break,
                Some(false) => {}
            }
            tokio::time::sleep(Duration::from_millis(world.scenario.workload.commit_every_ms)).await;
        }
    }
    // Leaving lets the group rebalance now; a failure only means its session times out.
    let _ = tokio::time::timeout(Duration::from_secs(2), member.leave()).await;
}

/// Joins the group: the member's partitions of `topic`; `Some(None)` after a
/// failed join (logged, and backed off from); `None` if `stop` was raised.
pub(super) async fn join(
    world: &Shared,
    member: &GroupMember<SimConnector>,
    topic: &str,
    stop: &Flag,
    who: &str,
) -> Option<Option<Vec<i32>>> {
    match unless(stop, member.join()).await? {
        Ok(assignment) => Some(Some(assignment.partitions.get(topic).cloned().unwrap_or_default())),
        Err(e) => {
            world.event(format!("{who}: join failed: {e}"));
            backoff(world).await;
            Some(None)
        }
    }
}

/// Heartbeats if one is due: `None` if `stop` was raised meanwhile,
/// `Some(true)` if the member's generation is over (rejoin).
pub(super) async fn heartbeat_if_due(
    member: &GroupMember<SimConnector>,
    beat: &mut tokio::time::Instant,
    stop: &Flag,
) -> Option<bool> {
    if beat.elapsed() < member.config().heartbeat_interval {
        return Some(false);
    }
    *beat = tokio::time::Instant::now();
    Some(matches!(unless(stop, member.heartbeat()).await?, Err(e) if rejoin(&e)))
}

/// The member's timeouts: a session long enough to ride out most faults.
pub(super) fn member_config() -> GroupConfig {
    GroupConfig {
        session_timeout: Duration::from_secs(10),
        rebalance_timeout: Duration::from_secs(10),
        heartbeat_interval: Duration::from_secs(1),
    }
}

/// Whether a member's request failed because its generation is over.
pub(super) fn rejoin(error: &Error) -> bool {
    matches!(
        error.kafka(),
        Some(ResponseError::RebalanceInProgress | ResponseError::IllegalGeneration | ResponseError::UnknownMemberId)
    )
}

/// Reads the group's committed offsets back (OffsetFetch) into the history.
pub async fn read_commits(
    world: &Shared,
    client: &Client<SimConnector>,
    group: &str,
    topic: &str,
    partitions: i32,
) -> bool {
    let asked = BTreeMap::from([(topic.to_string(), (0..partitions).collect())]);
    let Ok(offsets) = client.fetch_offsets(group, Some(&asked)).await else { return false };
    for offset in offsets {
        world.history.borrow_mut().commit_seen(world.now(), group, &(offset.topic, offset.partition), offset.offset);
    }
    true
}

/// Creates a topic with `client` (whose requests are tried once), retrying
/// timeouts itself: an acknowledged creation, or "already exists" after a
/// retry, must survive. Whether it was created, after `tries`.
pub async fn create(world: &Shared, client: &Client<SimConnector>, topic: &NewTopic, tries: u32) -> bool {
    for attempt in 0..tries {
        match client.create_topics(std::slice::from_ref(topic)).await {
            Ok(()) => return true,
            Err(e) if e.kafka() == Some(ResponseError::TopicAlreadyExists) && attempt > 0 => return true,
            Err(e) => world.event(format!("creating topic {}: {e}", topic.name)),
        }
        backoff(world).await;
    }
    false
}

/// A client whose requests are tried once, for callers that retry themselves.
pub fn admin_client(world: &Shared, name: &str) -> Client<SimConnector> {
    world.client(name, single_try())
}

/// Creates topic `name` during the run.
pub async fn create_topic(world: Shared, name: String, replication_factor: i16) {
    let client = admin_client(&world, &format!("admin-{name}"));
    let topic = NewTopic { name: name.clone(), partitions: 2, replication_factor, configs: Vec::new() };
    if create(&world, &client, &topic, 20).await {
        world.event(format!("topic {name} created"));
        world.history.borrow_mut().topics_created.insert(name);
    }
}

/// Every few hundred ms, asks every running broker's partition actors which
/// of them lead, and in which epoch.
pub async fn observe_leaders(world: Shared, stop: Flag) {
    while !stop.is_raised() {
        let contexts: Vec<_> = world.brokers.borrow().iter().filter_map(|b| Some((b.id, b.context()?))).collect();
        for (id, context) in contexts {
            let snapshot = context.broker.metadata();
            let partitions: Vec<_> = snapshot
                .topics
                .iter()
                .flat_map(|(name, t)| t.partitions.iter().map(move |p| (name.to_string(), p.index, p.addr.clone())))
                .collect();
            for (topic, index, addr) in partitions {
                if let Ok((Role::Leader(role), _)) = addr.send(DescribeRole).await {
                    world.history.borrow_mut().leader_seen(world.now(), &(topic, index), role.epoch, id);
                }
            }
        }
        tokio::time::sleep(OBSERVE_EVERY).await;
    }
}
