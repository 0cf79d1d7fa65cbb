//! The transactional workload: transactional producers that commit and
//! abort transactions of batches to random partitions, and a
//! consume-transform-produce copier (a read_committed group member that
//! copies the first topic, each round one transaction with its input
//! offsets). Both are `tributary-client`'s `TransactionalProducer` over the
//! simulated network; what they were told goes to the history for
//! `checker::check_transactions`.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use tributary_client::{
    Client, FetchOptions, GroupMember, Isolation, NewRecord, PartitionOffset, ProducerConfig, TransactionConfig,
    TransactionalProducer,
};

use super::checker::{Ack, PartitionKey, RecordId, Txn, TxnEnd};
use super::connector::SimConnector;
use super::workload::{
    backoff, brief_retry, heartbeat_if_due, join, member_config, next_records, pick_partition, producer_retry,
    records_of, rejoin, unless, Flag, ACK_TIMEOUT, FETCH_WAIT,
};
use super::world::Shared;

/// The coordinator aborts a transaction open longer than this, well within a run's settling time.
const TXN_TIMEOUT: Duration = Duration::from_secs(10);
/// InitProducerId attempts before a producer stops (each retried by the client).
const MAX_INITS: u32 = 50;
/// The copier's consumer group.
pub const COPIER_GROUP: &str = "copier";
/// Records the copier copies in one transaction at most.
const COPY_BATCH_BYTES: i32 = 64 << 10;

/// The topic the copier writes: `<first topic>-copy`.
pub fn copy_topic(world: &Shared) -> String {
    format!("{}-copy", world.scenario.topics[0].name)
}

/// A copied record's value: the input's with `x` for its `p`, so the copy
/// never passes for a producer's record.
fn copy_value(record: &RecordId) -> String {
    format!("x{}-{}", record.producer, record.seq)
}

pub fn parse_copy(value: &[u8]) -> Option<RecordId> {
    let text = std::str::from_utf8(value).ok()?;
    RecordId::parse(format!("p{}", text.strip_prefix('x')?).as_bytes())
}

fn config(id: &str) -> TransactionConfig {
    TransactionConfig {
        transactional_id: id.to_string(),
        timeout: TXN_TIMEOUT,
        producer: ProducerConfig { ack_timeout: ACK_TIMEOUT, ..ProducerConfig::default() },
    }
}

/// A producer for `id`, asked for until it comes or `stop` is raised.
async fn init(
    world: &Shared,
    client: &Client<SimConnector>,
    id: &str,
    stop: &Flag,
) -> Option<TransactionalProducer<SimConnector>> {
    for _ in 0..MAX_INITS {
        match unless(stop, TransactionalProducer::init(client.clone(), config(id))).await? {
            Ok(producer) => return Some(producer),
            Err(e) => world.event(format!("{id}: InitProducerId failed: {e}")),
        }
        backoff(world).await;
    }
    world.event(format!("{id}: no producer id after {MAX_INITS} tries; it stops"));
    None
}

/// Transactional producer `id` (its records are `p<id>-<n>`): transactions of
/// `batches_per_transaction` batches, `abort_percent` of them aborted on
/// purpose and every one with a failed send aborted. A commit or abort that
/// is not answered, or a fenced producer, starts a new producer for the same
/// transactional id, which ends what the old one left.
pub async fn transactional_producer(world: Shared, id: u32, stop: Flag, give_up: Flag) {
    let name = format!("txn-{id}");
    let client = world.client(&format!("producer-{name}"), producer_retry());
    let Some(mut producer) = init(&world, &client, &name, &stop).await else { return };
    let w = world.scenario.workload.clone();
    let mut next_seq = 0u64;
    while !stop.is_raised() {
        producer.begin().expect("no transaction is open between turns");
        let mut txn = Txn { producer: id, acked: Vec::new(), unacked: Vec::new(), end: TxnEnd::Abort };
        let mut failed = false;
        for _ in 0..w.batches_per_transaction {
            let key = pick_partition(&world);
            let records = next_records(&world, id, &mut next_seq);
            world.history.borrow_mut().produce_attempts += 1;
            match unless(&give_up, producer.send(&key.0, key.1, &records_of(&records))).await {
                None => {
                    // Left open: the coordinator aborts it when it times out.
                    txn.unacked.extend(records.into_iter().map(|r| (key.clone(), r)));
                    world.history.borrow_mut().txns.push(txn);
                    return;
                }
                Some(Ok(base_offset)) => {
                    let at = world.now();
                    txn.acked
                        .extend(records.iter().enumerate().map(|(i, r)| (key.clone(), base_offset + i as i64, *r)));
                    let ack = Ack { at, partition: key, base_offset, records, idempotent: true };
                    world.history.borrow_mut().acks.push(ack);
                }
                Some(Err(e)) => {
                    world.event(format!("{name}: send to {}-{} failed: {e}", key.0, key.1));
                    txn.unacked.extend(records.into_iter().map(|r| (key.clone(), r)));
                    failed = true;
                    break;
                }
            }
        }
        let commit = !failed && world.random(0..=99) >= w.abort_percent;
        if commit {
            txn.end = TxnEnd::Commit { asked: world.now(), answered: false };
        }
        let ended =
            if commit { unless(&give_up, producer.commit()).await } else { unless(&give_up, producer.abort()).await };
        let ok = matches!(ended, Some(Ok(())));
        if let (true, TxnEnd::Commit { asked, .. }) = (ok, txn.end) {
            txn.end = TxnEnd::Commit { asked, answered: true };
        }
        world.history.borrow_mut().txns.push(txn);
        match ended {
            None => return,
            Some(Ok(())) => {}
            Some(Err(e)) => {
                world.event(format!(
                    "{name}: {} failed: {e}; a new producer takes over",
                    if commit { "commit" } else { "abort" }
                ));
                let Some(fresh) = init(&world, &client, &name, &give_up).await else { return };
                producer = fresh;
            }
        }
        tokio::time::sleep(Duration::from_millis(w.produce_every_ms)).await;
    }
}

/// The copier: a member of `COPIER_GROUP` reading the first topic
/// read_committed from the group's committed offsets, copying each round's
/// records to the same partition of the copy topic in one transaction with
/// the offsets past them. A failed round is aborted and read again from the
/// committed offsets, so each input record is copied exactly once.
pub async fn copier(world: Shared, stop: Flag) {
    let client = world.client("copier", brief_retry());
    let topic = world.scenario.topics[0].clone();
    let output = copy_topic(&world);
    let member = GroupMember::new(&client, COPIER_GROUP, &[topic.name.as_str()], member_config());
    let Some(mut producer) = init(&world, &client, "copier", &stop).await else { return };
    let options = FetchOptions {
        max_wait: FETCH_WAIT,
        min_bytes: 1,
        max_bytes: COPY_BATCH_BYTES,
        partition_max_bytes: COPY_BATCH_BYTES,
        isolation: Isolation::ReadCommitted,
    };
    // Bounded by `stop`: each turn joins once and copies until the generation ends or a round fails.
    while !stop.is_raised() {
        let mine = match join(&world, &member, &topic.name, &stop, "copier").await {
            None => return,
            Some(None) => continue,
            Some(Some(mine)) => mine,
        };
        let mut positions = match unless(&stop, committed(&client, &topic.name, &mine)).await {
            None => return,
            Some(Some(positions)) => {
                world.event(format!("copier joined generation {} at {positions:?}", member.generation()));
                positions
            }
            Some(None) => {
                backoff(&world).await;
                continue;
            }
        };
        let mut beat = tokio::time::Instant::now();
        // Bounded by `stop`: a round per turn.
        while !stop.is_raised() {
            let round =
                copy_round(&world, &client, &member, &mut producer, &topic.name, &output, &mut positions, &options);
            match unless(&stop, round).await {
                None => return,
                Some(Round::Copied) => {}
                Some(Round::Failed(e)) => {
                    world.event(format!("copier: a round failed: {e}"));
                    if producer.in_transaction() && unless(&stop, producer.abort()).await.is_none() {
                        return;
                    }
                    if producer.in_transaction() {
                        // Its outcome is unknown: a new producer for the id ends it either way.
                        match init(&world, &client, "copier", &stop).await {
                            Some(fresh) => producer = fresh,
                            None => return,
                        }
                    }
                    if rejoin(&e) {
                        break;
                    }
                    // Again from what is committed, whichever way the round ended.
                    match unless(&stop, committed(&client, &topic.name, &mine)).await {
                        None => return,
                        Some(Some(reread)) => {
                            world.event(format!("copier reread {reread:?}"));
                            positions = reread
                        }
                        Some(None) => break,
                    }
                }
            }
            match heartbeat_if_due(&member, &mut beat, &stop).await {
                None => return,
                Some(true) => break,
                Some(false) => {}
            }
            tokio::time::sleep(Duration::from_millis(world.scenario.workload.commit_every_ms)).await;
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), member.leave()).await;
}

enum Round {
    Copied,
    Failed(tributary_client::Error),
}

/// The group's committed offsets of `partitions` (0 where none), waiting out
/// pending transactional commits; `None` if they cannot be read now.
async fn committed(client: &Client<SimConnector>, topic: &str, partitions: &[i32]) -> Option<BTreeMap<i32, i64>> {
    let asked = BTreeMap::from([(topic.to_string(), partitions.to_vec())]);
    let offsets = client.fetch_stable_offsets(COPIER_GROUP, Some(&asked)).await.ok()?;
    let mut positions: BTreeMap<i32, i64> = partitions.iter().map(|p| (*p, 0)).collect();
    for o in offsets.into_iter().filter(|o| o.topic == topic && o.offset >= 0) {
        positions.insert(o.partition, o.offset);
    }
    Some(positions)
}

/// Reads each partition once and, if anything came, copies it in one
/// transaction with the offsets past it; `positions` move only once it commits.
#[allow(clippy::too_many_arguments)]
async fn copy_round(
    world: &Shared,
    client: &Client<SimConnector>,
    member: &GroupMember<SimConnector>,
    producer: &mut TransactionalProducer<SimConnector>,
    topic: &str,
    output: &str,
    positions: &mut BTreeMap<i32, i64>,
    options: &FetchOptions,
) -> Round {
    let at: Vec<(i32, i64)> = positions.iter().map(|(p, o)| (*p, *o)).collect();
    if at.is_empty() {
        return Round::Copied;
    }
    let fetched = match client.fetch(topic, &at, options).await {
        Ok(fetched) => fetched,
        Err(e) => return Round::Failed(e),
    };
    let mut copies: Vec<(i32, Vec<NewRecord>)> = Vec::new();
    let mut next = positions.clone();
    for part in fetched {
        let key: PartitionKey = (topic.to_string(), part.partition);
        world.history.borrow_mut().stable_seen(world.now(), &key, part.last_stable_offset);
        let from = positions[&part.partition];
        let mut records = Vec::new();
        for record in part.records.iter().filter(|r| r.offset >= from) {
            if let Some(id) = record.value.as_deref().and_then(RecordId::parse) {
                let mut history = world.history.borrow_mut();
                history.read(world.now(), &key, record.offset, id);
                history.committed_reads.push((world.now(), key.clone(), record.offset, id));
                records.push(NewRecord {
                    key: record.key.clone(),
                    value: Some(Bytes::from(copy_value(&id))),
                    ..NewRecord::default()
                });
            }
        }
        next.insert(part.partition, part.next_offset.max(from));
        if !records.is_empty() {
            copies.push((part.partition, records));
        }
    }
    if copies.is_empty() {
        *positions = next;
        return Round::Copied;
    }
    if let Err(e) = producer.begin() {
        return Round::Failed(e);
    }
    for (partition, records) in &copies {
        if let Err(e) = producer.send(output, *partition, records).await {
            return Round::Failed(e);
        }
    }
    let offsets: Vec<PartitionOffset> = next.iter().map(|(p, o)| PartitionOffset::new(topic, *p, *o)).collect();
    let generation = (member.member_id(), member.generation());
    if let Err(e) = producer.send_offsets(COPIER_GROUP, &offsets, Some((generation.0.as_str(), generation.1))).await {
        return Round::Failed(e);
    }
    if let Err(e) = producer.commit().await {
        return Round::Failed(e);
    }
    let mut history = world.history.borrow_mut();
    for (p, o) in &next {
        let best = history.copier_commits.entry((topic.to_string(), *p)).or_insert(*o);
        *best = (*best).max(*o);
    }
    drop(history);
    *positions = next;
    Round::Copied
}
