//! The workload: producers (idempotent and not, acks=-1), consumers in groups
//! committing offsets, topics created during faults, and an observer of who
//! leads each partition. All talk to the brokers through the simulated network.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Duration;

use bytes::{Buf, Bytes};
use kafka_protocol::messages::{
    create_topics_request, fetch_request, offset_commit_request, offset_fetch_request, produce_request, ApiKey,
    BrokerId, CreateTopicsRequest, CreateTopicsResponse, FetchRequest, FetchResponse, FindCoordinatorRequest,
    FindCoordinatorResponse, GroupId, InitProducerIdRequest, InitProducerIdResponse, OffsetCommitRequest,
    OffsetCommitResponse, OffsetFetchRequest, OffsetFetchResponse, ProduceRequest, ProduceResponse, ProducerId,
    TopicName,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{Compression, RecordBatchDecoder};
use kafka_protocol::ResponseError;
use tributary_actors::replication::{DescribeRole, Role};
use tributary_actors::{encode_idempotent_batch, NewRecord};

use super::checker::{Ack, PartitionKey, RecordId};
use super::world::Shared;
use crate::cluster::metadata::NodeId;

/// Bounds on one batch's retries: a producer gives up on a batch after this many
/// sends (it is then neither acknowledged nor checked, like a client's delivery timeout).
const MAX_SENDS_PER_BATCH: u32 = 200;
const RETRY_BACKOFF_MS: std::ops::RangeInclusive<u64> = 50..=300;
const OBSERVE_EVERY: Duration = Duration::from_millis(200);

fn topic_name(name: &str) -> TopicName {
    TopicName(StrBytes::from_string(name.to_string()))
}

/// Encodes one v2 batch of workload records; idempotent batches carry the
/// producer id, epoch and base sequence.
fn encode(records: &[RecordId], producer: Option<(i64, i16, i32)>, timestamp: i64) -> Result<Bytes, String> {
    let records: Vec<NewRecord> =
        records.iter().map(|r| NewRecord::keyed(format!("p{}", r.producer), r.value())).collect();
    encode_idempotent_batch(&records, Compression::None, timestamp, producer)
}

/// Decodes fetched batches into (offset, record id) pairs.
pub fn decode(records: &Bytes) -> Result<Vec<(i64, Option<RecordId>)>, String> {
    let mut buf = records.clone();
    let mut out = Vec::new();
    while buf.has_remaining() {
        let set = RecordBatchDecoder::decode(&mut buf).map_err(|e| format!("decoding fetched records: {e}"))?;
        for r in set.records {
            out.push((r.offset, r.value.as_ref().and_then(|v| RecordId::parse(v))));
        }
    }
    Ok(out)
}

async fn backoff(world: &Shared) {
    tokio::time::sleep(Duration::from_millis(world.random(RETRY_BACKOFF_MS))).await;
}

/// An idempotent producer's id and epoch, from any broker (retried).
async fn init_producer_id(world: &Shared, stop: &Cell<bool>) -> Option<(i64, i16)> {
    for _ in 0..MAX_SENDS_PER_BATCH {
        if stop.get() {
            return None;
        }
        if let Some(node) = world.any_running() {
            // The default transactional id is Some(""), which asks for a transaction.
            let request = InitProducerIdRequest::default()
                .with_transactional_id(None)
                .with_transaction_timeout_ms(60_000)
                .with_producer_id(ProducerId(-1))
                .with_producer_epoch(-1);
            match world.call::<_, InitProducerIdResponse>(node, ApiKey::InitProducerId, 4, &request).await {
                Ok(r) if r.error_code == 0 => return Some((r.producer_id.0, r.producer_epoch)),
                Ok(r) => world.event(format!("InitProducerId through broker {node}: error {}", r.error_code)),
                Err(e) => world.event(format!("InitProducerId: {e}")),
            }
        }
        backoff(world).await;
    }
    None
}

/// One batch of a producer, sent until acknowledged.
struct InFlight {
    records: Vec<RecordId>,
    base_sequence: i32,
    request: ProduceRequest,
    acked: Option<i64>,
}

/// One producer: windows of batches of its own numbered records to random
/// partitions, sent to the partition's leader until each is acknowledged.
/// An idempotent producer keeps up to `max_in_flight` batches in flight on one
/// ordered connection, as librdkafka does; its retries resend every batch
/// not yet acknowledged, in order, with the same sequences. `stop` ends new
/// windows; `give_up` ends retries.
pub async fn producer(world: Shared, id: u32, idempotent: bool, stop: Rc<Cell<bool>>, give_up: Rc<Cell<bool>>) {
    let scenario = world.scenario.clone();
    let producer = if idempotent {
        match init_producer_id(&world, &stop).await {
            Some(p) => Some(p),
            None => {
                world.event(format!("producer {id} got no producer id; it stops"));
                return;
            }
        }
    } else {
        None
    };
    let window = if idempotent { scenario.workload.max_in_flight } else { 1 };
    let connection = id as u64;
    let mut sequences: BTreeMap<PartitionKey, i32> = BTreeMap::new();
    let mut leaders: BTreeMap<PartitionKey, NodeId> = BTreeMap::new();
    let mut next_seq = 0u64;
    while !stop.get() {
        let topic = &scenario.topics[world.random(0..=scenario.topics.len() as u64 - 1) as usize];
        let partition = world.random(0..=topic.partitions as u64 - 1) as i32;
        let key: PartitionKey = (topic.name.clone(), partition);
        let mut batches = Vec::new();
        let mut base_sequence = *sequences.get(&key).unwrap_or(&0);
        // A full window, as a client under load keeps it.
        for _ in 0..window {
            let records: Vec<RecordId> = (0..scenario.workload.records_per_batch as u64)
                .map(|i| RecordId { producer: id, seq: next_seq + i })
                .collect();
            next_seq += records.len() as u64;
            let ids = producer.map(|(pid, epoch)| (pid, epoch, base_sequence));
            let batch = match encode(&records, ids, tributary_actors::now_ms()) {
                Ok(batch) => batch,
                Err(e) => {
                    world.history.borrow_mut().fatal.push(format!("producer {id} cannot encode a batch: {e}"));
                    return;
                }
            };
            let request = ProduceRequest::default().with_acks(-1).with_timeout_ms(5000).with_topic_data(vec![
                produce_request::TopicProduceData::default().with_name(topic_name(&topic.name)).with_partition_data(
                    vec![produce_request::PartitionProduceData::default()
                        .with_index(partition)
                        .with_records(Some(batch))],
                ),
            ]);
            batches.push(InFlight { records: records.clone(), base_sequence, request, acked: None });
            base_sequence += records.len() as i32;
        }
        for _ in 0..MAX_SENDS_PER_BATCH {
            if give_up.get() || batches.iter().all(|b| b.acked.is_some()) {
                break;
            }
            let leader = match leaders.get(&key) {
                Some(leader) => *leader,
                None => match world.leader_of(&topic.name, partition).await {
                    Some(leader) => *leaders.entry(key.clone()).or_insert(leader),
                    None => {
                        backoff(&world).await;
                        continue;
                    }
                },
            };
            // Every unacknowledged batch, in order, on the one connection.
            let unacked: Vec<usize> = (0..batches.len()).filter(|i| batches[*i].acked.is_none()).collect();
            world.history.borrow_mut().produce_attempts += unacked.len() as u64;
            let sends = unacked.iter().map(|i| {
                world.call_on::<_, ProduceResponse>(Some(connection), leader, ApiKey::Produce, 8, &batches[*i].request)
            });
            let answers = futures::future::join_all(sends).await;
            let mut failed = false;
            for (i, answer) in unacked.into_iter().zip(answers) {
                let part = answer.as_ref().ok().and_then(|r| r.responses.first()?.partition_responses.first().cloned());
                let sequence = batches[i].base_sequence;
                match (answer, part) {
                    (Ok(_), Some(p)) if p.error_code == 0 => batches[i].acked = Some(p.base_offset),
                    (Ok(_), Some(p))
                        if (p.error_code == ResponseError::OutOfOrderSequenceNumber.code()
                            || p.error_code == ResponseError::UnknownProducerId.code())
                            && !failed
                            && batches[..i].iter().all(|b| b.acked.is_some()) =>
                    {
                        // Everything before this batch was acknowledged (so committed):
                        // the leader should know the sequence that precedes it.
                        let what = format!(
                            "{:?}: producer {id} got error {} for {}-{} at sequence {sequence}, every earlier batch acknowledged, from broker {leader}",
                            world.now(),
                            p.error_code,
                            key.0,
                            key.1
                        );
                        world.history.borrow_mut().fatal.push(what);
                        return;
                    }
                    (Ok(_), Some(p)) => {
                        failed = true;
                        leaders.remove(&key);
                        world.event(format!(
                            "producer {id}: error {} from broker {leader} for {}-{} at sequence {sequence}",
                            p.error_code, key.0, key.1
                        ));
                    }
                    (Ok(_), None) => {
                        failed = true;
                        leaders.remove(&key);
                    }
                    (Err(e), _) => {
                        failed = true;
                        leaders.remove(&key);
                        world.event(format!("producer {id}: {e}"));
                    }
                }
            }
            if failed {
                backoff(&world).await;
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
                idempotent,
            };
            world.history.borrow_mut().acks.push(ack);
            acked_batches += 1;
        }
        if acked_batches < batches.len() {
            if idempotent {
                // A batch may or may not be written; a new sequence after it would be out of order.
                world.event(format!("producer {id} gave up on a batch; it stops"));
                return;
            }
        } else {
            sequences.insert(key, base_sequence);
        }
        tokio::time::sleep(Duration::from_millis(scenario.workload.produce_every_ms)).await;
    }
}

/// A consumer group member that reads every partition of the first topic
/// from its leaders and commits its position; it also reads its committed
/// offsets back, which must never be below an acknowledged commit.
pub async fn consumer(world: Shared, group: String, stop: Rc<Cell<bool>>) {
    let topic = world.scenario.topics[0].clone();
    let mut positions: BTreeMap<i32, i64> = (0..topic.partitions).map(|p| (p, 0)).collect();
    let mut round = 0u64;
    while !stop.get() {
        round += 1;
        for partition in 0..topic.partitions {
            let key: PartitionKey = (topic.name.clone(), partition);
            let Some(leader) = world.leader_of(&topic.name, partition).await else { continue };
            let request = FetchRequest::default()
                .with_replica_id(BrokerId(-1))
                .with_max_wait_ms(50)
                .with_min_bytes(1)
                .with_max_bytes(1 << 20)
                .with_topics(vec![fetch_request::FetchTopic::default()
                    .with_topic(topic_name(&topic.name))
                    .with_partitions(vec![fetch_request::FetchPartition::default()
                        .with_partition(partition)
                        .with_fetch_offset(positions[&partition])
                        .with_partition_max_bytes(1 << 20)])]);
            let Ok(response) = world.call::<_, FetchResponse>(leader, ApiKey::Fetch, 11, &request).await else {
                continue;
            };
            for p in response.responses.iter().flat_map(|t| t.partitions.iter()) {
                if p.error_code != 0 {
                    continue;
                }
                let Some(records) = &p.records else { continue };
                match decode(records) {
                    Ok(read) => {
                        for (offset, record) in read {
                            if offset < positions[&partition] {
                                continue;
                            }
                            if let Some(record) = record {
                                world.history.borrow_mut().read(world.now(), &key, offset, record);
                            }
                            positions.insert(partition, offset + 1);
                        }
                    }
                    Err(e) => world.history.borrow_mut().fatal.push(format!("consumer of group {group}: {e}")),
                }
            }
        }
        commit(&world, &group, &topic.name, &positions).await;
        if round % 3 == 0 {
            read_commits(&world, &group, &topic.name, topic.partitions).await;
        }
        tokio::time::sleep(Duration::from_millis(world.scenario.workload.commit_every_ms)).await;
    }
}

async fn coordinator(world: &Shared, group: &str) -> Option<NodeId> {
    let node = world.any_running()?;
    let request = FindCoordinatorRequest::default().with_key(StrBytes::from_string(group.to_string())).with_key_type(0);
    let r: FindCoordinatorResponse = world.call(node, ApiKey::FindCoordinator, 3, &request).await.ok()?;
    (r.error_code == 0 && r.node_id.0 >= 0).then_some(r.node_id.0 as NodeId)
}

async fn commit(world: &Shared, group: &str, topic: &str, positions: &BTreeMap<i32, i64>) {
    let Some(node) = coordinator(world, group).await else { return };
    let partitions = positions
        .iter()
        .map(|(p, offset)| {
            offset_commit_request::OffsetCommitRequestPartition::default()
                .with_partition_index(*p)
                .with_committed_offset(*offset)
                .with_committed_leader_epoch(-1)
        })
        .collect();
    let request = OffsetCommitRequest::default()
        .with_group_id(GroupId(StrBytes::from_string(group.to_string())))
        .with_generation_id_or_member_epoch(-1)
        .with_topics(vec![offset_commit_request::OffsetCommitRequestTopic::default()
            .with_name(topic_name(topic))
            .with_partitions(partitions)]);
    let Ok(response) = world.call::<_, OffsetCommitResponse>(node, ApiKey::OffsetCommit, 8, &request).await else {
        return;
    };
    for p in response.topics.iter().flat_map(|t| t.partitions.iter()) {
        if p.error_code == 0 {
            let key = (topic.to_string(), p.partition_index);
            world.history.borrow_mut().commit_acked(group, &key, positions[&p.partition_index]);
        }
    }
}

/// Reads the group's committed offsets back (OffsetFetch) into the history.
pub async fn read_commits(world: &Shared, group: &str, topic: &str, partitions: i32) -> bool {
    let Some(node) = coordinator(world, group).await else { return false };
    let request = OffsetFetchRequest::default()
        .with_group_id(GroupId(StrBytes::from_string(group.to_string())))
        .with_topics(Some(vec![offset_fetch_request::OffsetFetchRequestTopic::default()
            .with_name(topic_name(topic))
            .with_partition_indexes((0..partitions).collect())]));
    let Ok(response) = world.call::<_, OffsetFetchResponse>(node, ApiKey::OffsetFetch, 7, &request).await else {
        return false;
    };
    if response.error_code != 0 {
        return false;
    }
    for p in response.topics.iter().flat_map(|t| t.partitions.iter()) {
        if p.error_code == 0 {
            let key = (topic.to_string(), p.partition_index);
            world.history.borrow_mut().commit_seen(world.now(), group, &key, p.committed_offset);
        }
    }
    true
}

/// Creates topic `name` through random brokers, retrying timeouts; an
/// acknowledged creation (or "already exists" after a retry) must survive.
pub async fn create_topic(world: Shared, name: String, replication_factor: i16) {
    for attempt in 0..20 {
        let Some(node) = world.any_running() else {
            backoff(&world).await;
            continue;
        };
        let request = CreateTopicsRequest::default().with_timeout_ms(5000).with_topics(vec![
            create_topics_request::CreatableTopic::default()
                .with_name(topic_name(&name))
                .with_num_partitions(2)
                .with_replication_factor(replication_factor),
        ]);
        match world.call::<_, CreateTopicsResponse>(node, ApiKey::CreateTopics, 5, &request).await {
            Ok(r) => {
                let code = r.topics.first().map_or(-1, |t| t.error_code);
                let exists = code == ResponseError::TopicAlreadyExists.code() && attempt > 0;
                if code == 0 || exists {
                    world.event(format!("topic {name} created through broker {node}"));
                    world.history.borrow_mut().topics_created.insert(name);
                    return;
                }
                world.event(format!("creating topic {name} through broker {node}: error {code}"));
            }
            Err(e) => world.event(format!("creating topic {name}: {e}")),
        }
        backoff(&world).await;
    }
}

/// Every few hundred ms, asks every running broker's partition actors which
/// of them lead, and in which epoch.
pub async fn observe_leaders(world: Shared, stop: Rc<Cell<bool>>) {
    while !stop.get() {
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
