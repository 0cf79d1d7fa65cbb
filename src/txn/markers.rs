//! The coordinators' requests to other brokers (and, in-process, to this
//! one): transaction markers to every partition leader and group coordinator
//! of a prepared transaction, and KIP-890's verification for a partition leader.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use kafka_protocol::messages::add_partitions_to_txn_request::{
    AddPartitionsToTxnTopic, AddPartitionsToTxnTransaction,
};
use kafka_protocol::messages::write_txn_markers_request::{WritableTxnMarker, WritableTxnMarkerTopic};
use kafka_protocol::messages::{
    AddPartitionsToTxnRequest, AddPartitionsToTxnResponse, ProducerId, TransactionalId, WriteTxnMarkersRequest,
    WriteTxnMarkersResponse,
};
use kafka_protocol::ResponseError as E;
use tributary_actors::VerifyTxn;
use crate::kafka::{str_bytes, topic_name};

use super::state::{Status, TxnMeta};
use super::{Lease, Shared, OFFSETS_TOPIC};

/// Rounds of marker writes one prepared transaction gets from this coordinator
/// (each waits at most the backoff between them).
const MAX_ROUNDS: usize = 2_000;
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Writes the markers of `meta` (a prepared state) until every partition and
/// group has it; answers `meta` once all do. Stops when `lease` no longer
/// holds (the next coordinator takes over); markers carry its epoch.
pub async fn write_all(shared: &Shared, lease: &Lease, meta: &TxnMeta) -> Result<TxnMeta, String> {
    let coordinator_epoch = lease.epoch;
    let commit = meta.status == Status::PrepareCommit;
    assert!(commit || meta.status == Status::PrepareAbort, "markers are for a prepared transaction");
    let mut partitions: BTreeMap<String, BTreeSet<i32>> = BTreeMap::new();
    for (topic, index) in &meta.partitions {
        partitions.entry(topic.clone()).or_default().insert(*index);
    }
    let mut groups = meta.groups.clone();
    let mut backoff = Duration::from_millis(20);
    for _ in 0..MAX_ROUNDS {
        if partitions.is_empty() && groups.is_empty() {
            return Ok(meta.clone());
        }
        if !lease.holds(shared) {
            return Err("this broker no longer coordinates the transaction".into());
        }
        tracing::debug!(
            producer_id = meta.producer_id,
            epoch = meta.producer_epoch,
            coordinator_epoch,
            commit,
            partitions = ?partitions,
            groups = ?groups,
            "writing markers"
        );
        let marker = |topics: Vec<WritableTxnMarkerTopic>| {
            WritableTxnMarker::default()
                .with_producer_id(ProducerId(meta.producer_id))
                .with_producer_epoch(meta.producer_epoch)
                .with_transaction_result(commit)
                .with_coordinator_epoch(coordinator_epoch)
                .with_topics(topics)
        };
        // Partitions, grouped by leader.
        let mut by_leader: BTreeMap<i32, Vec<(String, Vec<i32>)>> = BTreeMap::new();
        for (topic, indexes) in &partitions {
            let indexes: Vec<i32> = indexes.iter().copied().collect();
            let began = std::time::Instant::now();
            let leaders = shared.client.by_leader(topic, &indexes).await;
            tracing::debug!(topic = %topic, elapsed_ms = began.elapsed().as_millis() as u64, ?leaders, "marker leaders");
            match leaders {
                Ok(leaders) => {
                    for (leader, parts) in leaders {
                        by_leader.entry(leader).or_default().push((topic.clone(), parts));
                    }
                }
                Err(e) if e.kafka() == Some(E::UnknownTopicOrPartition) => {
                    tracing::info!(topic = %topic, "no marker for a deleted topic");
                    by_leader.entry(-1).or_default().push((topic.clone(), indexes));
                }
                Err(_) => {}
            }
        }
        if let Some(deleted) = by_leader.remove(&-1) {
            for (topic, _) in deleted {
                partitions.remove(&topic);
            }
        }
        for (leader, topics) in by_leader {
            let request_topics = topics
                .iter()
                .map(|(t, p)| WritableTxnMarkerTopic::default().with_name(topic_name(t)).with_partition_indexes(p.clone()))
                .collect();
            let request = WriteTxnMarkersRequest::default().with_markers(vec![marker(request_topics)]);
            let began = std::time::Instant::now();
            let sent = match shared.client.broker(leader).await {
                Ok(connection) => connection.send(&request).await,
                Err(e) => Err(e),
            };
            tracing::debug!(leader, elapsed_ms = began.elapsed().as_millis() as u64, ok = sent.is_ok(), "markers sent");
            let Ok(response) = sent else { continue };
            for written in done(&response) {
                if let Some(set) = partitions.get_mut(&written.0) {
                    set.remove(&written.1);
                    if set.is_empty() {
                        partitions.remove(&written.0);
                    }
                }
            }
        }
        for group in groups.clone() {
            let Ok(node) = shared.ctx.cluster.coordinator_for(&group) else { continue };
            let topic = WritableTxnMarkerTopic::default().with_name(topic_name(OFFSETS_TOPIC)).with_partition_indexes(vec![0]);
            let request = WriteTxnMarkersRequest::default().with_markers(vec![marker(vec![topic])]);
            let Ok(connection) = shared.client.broker(node.node_id as i32).await else { continue };
            if let Ok(response) = connection.send(&request).await {
                if !done(&response).is_empty() {
                    groups.remove(&group);
                }
            }
        }
        if partitions.is_empty() && groups.is_empty() {
            return Ok(meta.clone());
        }
        shared.client.forget();
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
    Err(format!("markers not written after {MAX_ROUNDS} rounds"))
}

/// The partitions a WriteTxnMarkers answer says have the marker. A deleted
/// topic is found from the cluster's metadata (`by_leader`), not from one
/// broker's answer, whose view of the topics may lag.
fn done(response: &WriteTxnMarkersResponse) -> Vec<(String, i32)> {
    let mut out = Vec::new();
    for marker in &response.markers {
        for topic in &marker.topics {
            for p in &topic.partitions {
                if p.error_code == 0 {
                    out.push((topic.name.to_string(), p.partition_index));
                } else {
                    let (topic, partition, code) = (&topic.name.0, p.partition_index, p.error_code);
                    tracing::debug!(producer_id = marker.producer_id.0, %topic, partition, code, "marker not written");
                }
            }
        }
    }
    out
}

/// Asks `msg.transactional_id`'s coordinator whether the partition is in the
/// producer's open transaction (AddPartitionsToTxn v4, verify only).
pub async fn verify(shared: &Shared, msg: &VerifyTxn) -> Result<(), i16> {
    let began = std::time::Instant::now();
    let answer = verify_once(shared, msg).await;
    tracing::debug!(producer_id = msg.producer_id, topic = %msg.topic, partition = msg.partition, ?answer,
        elapsed_ms = began.elapsed().as_millis() as u64, "verified a transaction");
    answer
}

async fn verify_once(shared: &Shared, msg: &VerifyTxn) -> Result<(), i16> {
    let retriable = E::NotEnoughReplicas.code();
    let leader = super::coordinator_of(&shared.ctx, &msg.transactional_id).map_err(|_| retriable)?.node_id;
    let topic = AddPartitionsToTxnTopic::default().with_name(topic_name(msg.topic.as_ref())).with_partitions(vec![msg.partition]);
    let transaction = AddPartitionsToTxnTransaction::default()
        .with_transactional_id(TransactionalId(str_bytes(msg.transactional_id.as_ref())))
        .with_producer_id(ProducerId(msg.producer_id))
        .with_producer_epoch(msg.producer_epoch)
        .with_verify_only(true)
        .with_topics(vec![topic]);
    let request = AddPartitionsToTxnRequest::default().with_transactions(vec![transaction]);
    let connection = shared.client.broker(leader as i32).await.map_err(|_| retriable)?;
    let response: AddPartitionsToTxnResponse = connection.send(&request).await.map_err(|_| retriable)?;
    if response.error_code != 0 {
        return Err(produce_code(response.error_code));
    }
    let code = response
        .results_by_transaction
        .iter()
        .flat_map(|t| t.topic_results.iter())
        .flat_map(|t| t.results_by_partition.iter())
        .map(|p| p.partition_error_code)
        .find(|c| *c != 0)
        .unwrap_or(0);
    if code == 0 {
        Ok(())
    } else {
        Err(produce_code(code))
    }
}

/// A coordinator's answer as a produce error: coordinator trouble is
/// retriable for every client as NOT_ENOUGH_REPLICAS (as Kafka does).
fn produce_code(code: i16) -> i16 {
    let retriable = [
        E::NotCoordinator.code(),
        E::CoordinatorNotAvailable.code(),
        E::CoordinatorLoadInProgress.code(),
        E::ConcurrentTransactions.code(),
    ];
    if retriable.contains(&code) {
        E::NotEnoughReplicas.code()
    } else {
        code
    }
}
