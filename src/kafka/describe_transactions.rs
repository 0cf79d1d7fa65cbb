//! DescribeTransactions: the state of transactional ids this broker coordinates.

use kafka_protocol::messages::describe_transactions_response::{TopicData, TransactionState};
use kafka_protocol::messages::{DescribeTransactionsRequest, DescribeTransactionsResponse, ProducerId};
use kafka_protocol::ResponseError as E;

use super::{str_bytes, RequestContext};
use crate::txn::coordinator::{TxnAnswer, TxnCall};

pub async fn handle(ctx: &RequestContext, req: DescribeTransactionsRequest) -> DescribeTransactionsResponse {
    let mut states = Vec::with_capacity(req.transactional_ids.len());
    for id in req.transactional_ids {
        let state = TransactionState::default().with_transactional_id(id.clone()).with_producer_id(ProducerId(-1)).with_producer_epoch(-1);
        let state = match crate::txn::route(ctx, &id, TxnCall::Describe).await {
            Ok(TxnAnswer::Described(Some(meta))) => {
                let mut topics: Vec<TopicData> = Vec::new();
                for (topic, partition) in &meta.partitions {
                    match topics.last_mut() {
                        Some(last) if last.topic.0.as_str() == topic => last.partitions.push(*partition),
                        _ => topics.push(TopicData::default().with_topic(super::topic_name(topic)).with_partitions(vec![*partition])),
                    }
                }
                state
                    .with_transaction_state(str_bytes(meta.status.name()))
                    .with_transaction_timeout_ms(meta.timeout_ms)
                    .with_transaction_start_time_ms(meta.started_ms)
                    .with_producer_id(ProducerId(meta.producer_id))
                    .with_producer_epoch(meta.producer_epoch)
                    .with_topics(topics)
            }
            Ok(_) => state.with_error_code(E::TransactionalIdNotFound.code()),
            Err(code) => state.with_error_code(code),
        };
        states.push(state);
    }
    DescribeTransactionsResponse::default().with_transaction_states(states)
}

super::registry::api! {
    DescribeTransactions: DescribeTransactionsRequest => DescribeTransactionsResponse, versions 0..=0, access TransactionalId Describe,
    |call, request| handle(&call.ctx, request).await
}
