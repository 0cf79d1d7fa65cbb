//! AddPartitionsToTxn: a transactional producer names the partitions it is
//! about to write (v0-3, one transaction); partition leaders ask, for
//! KIP-890, whether a partition is in a transaction (v4+, batched,
//! `verify_only`). Either way, the id's coordinator answers.

use kafka_protocol::messages::add_partitions_to_txn_request::AddPartitionsToTxnTopic;
use kafka_protocol::messages::add_partitions_to_txn_response::{
    AddPartitionsToTxnPartitionResult, AddPartitionsToTxnResult, AddPartitionsToTxnTopicResult,
};
use kafka_protocol::messages::{AddPartitionsToTxnRequest, AddPartitionsToTxnResponse, TransactionalId};
use kafka_protocol::ResponseError as E;

use super::RequestContext;
use crate::txn::coordinator::TxnCall;

/// Partitions one transaction may name in one request.
const MAX_PARTITIONS: usize = 10_000;

pub async fn handle(ctx: &RequestContext, req: AddPartitionsToTxnRequest, version: i16) -> AddPartitionsToTxnResponse {
    if version <= 3 {
        let id = req.v3_and_below_transactional_id.clone();
        let mut results = add(ctx, &id, req.v3_and_below_producer_id.0, req.v3_and_below_producer_epoch, false, &req.v3_and_below_topics).await;
        for p in results.iter_mut().flat_map(|t| t.results_by_partition.iter_mut()) {
            p.partition_error_code = crate::txn::fenced_for(p.partition_error_code, version, 2);
        }
        return AddPartitionsToTxnResponse::default().with_results_by_topic_v3_and_below(results);
    }
    let mut out = Vec::with_capacity(req.transactions.len());
    for txn in &req.transactions {
        let results = add(ctx, &txn.transactional_id, txn.producer_id.0, txn.producer_epoch, txn.verify_only, &txn.topics).await;
        out.push(AddPartitionsToTxnResult::default().with_transactional_id(txn.transactional_id.clone()).with_topic_results(results));
    }
    AddPartitionsToTxnResponse::default().with_results_by_transaction(out)
}

/// One transaction's partitions: added (or verified) together, one code for all.
async fn add(
    ctx: &RequestContext,
    id: &TransactionalId,
    producer_id: i64,
    epoch: i16,
    verify_only: bool,
    topics: &[AddPartitionsToTxnTopic],
) -> Vec<AddPartitionsToTxnTopicResult> {
    let snapshot = ctx.broker.metadata();
    let wanted: Vec<(String, i32)> =
        topics.iter().flat_map(|t| t.partitions.iter().map(move |p| (t.name.0.to_string(), *p))).collect();
    // Unknown partitions fail alone; the others are not attempted (as Kafka).
    let unknown: Vec<bool> = wanted.iter().map(|(t, p)| snapshot.partition(t, *p).is_none()).collect();
    let code = if wanted.len() > MAX_PARTITIONS {
        E::InvalidRequest.code()
    } else if unknown.iter().any(|u| *u) {
        E::OperationNotAttempted.code()
    } else if verify_only {
        let mut code = 0;
        for partition in &wanted {
            let call = TxnCall::Verify { producer_id, epoch, partition: partition.clone() };
            if let Err(c) = crate::txn::route(ctx, id, call).await {
                code = c;
                break;
            }
        }
        code
    } else {
        let call = TxnCall::Add { producer_id, epoch, partitions: wanted.clone(), groups: Vec::new() };
        crate::txn::route(ctx, id, call).await.err().unwrap_or(0)
    };
    let mut results: Vec<AddPartitionsToTxnTopicResult> = Vec::new();
    for ((topic, partition), unknown) in wanted.iter().zip(unknown) {
        let code = if unknown { E::UnknownTopicOrPartition.code() } else { code };
        let result = AddPartitionsToTxnPartitionResult::default().with_partition_index(*partition).with_partition_error_code(code);
        match results.last_mut() {
            Some(last) if last.name.0.as_str() == topic => last.results_by_partition.push(result),
            _ => results.push(
                AddPartitionsToTxnTopicResult::default().with_name(super::topic_name(topic)).with_results_by_partition(vec![result]),
            ),
        }
    }
    results
}

super::registry::api! {
    AddPartitionsToTxn: AddPartitionsToTxnRequest => AddPartitionsToTxnResponse, versions 0..=4, access TransactionalId Write,
    |call, request| handle(&call.ctx, request, call.version).await
}
