//! ListTransactions: the transactional ids this broker coordinates, filtered
//! by state, producer id and (v1+) how long their transaction has been open.

use kafka_protocol::messages::list_transactions_response::TransactionState;
use kafka_protocol::messages::{ListTransactionsRequest, ListTransactionsResponse, ProducerId, TransactionalId};

use super::{str_bytes, RequestContext};
use crate::txn::state::Status;

const STATES: [Status; 6] = [
    Status::Empty,
    Status::Ongoing,
    Status::PrepareCommit,
    Status::PrepareAbort,
    Status::CompleteCommit,
    Status::CompleteAbort,
];

pub async fn handle(ctx: &RequestContext, req: ListTransactionsRequest) -> ListTransactionsResponse {
    let unknown: Vec<_> =
        req.state_filters.iter().filter(|f| !STATES.iter().any(|s| s.name() == f.as_str())).cloned().collect();
    let all = match crate::txn::registry(ctx) {
        Ok(registry) => registry.send(crate::txn::ListAll).await.unwrap_or_default(),
        Err(code) => return ListTransactionsResponse::default().with_error_code(code),
    };
    let now = tributary_actors::now_ms();
    let states = all
        .into_iter()
        .filter(|(_, m)| req.state_filters.is_empty() || req.state_filters.iter().any(|f| f.as_str() == m.status.name()))
        .filter(|(_, m)| req.producer_id_filters.is_empty() || req.producer_id_filters.contains(&ProducerId(m.producer_id)))
        .filter(|(_, m)| req.duration_filter < 0 || (m.started_ms >= 0 && now - m.started_ms >= req.duration_filter))
        .map(|(id, m)| {
            TransactionState::default()
                .with_transactional_id(TransactionalId(str_bytes(id)))
                .with_producer_id(ProducerId(m.producer_id))
                .with_transaction_state(str_bytes(m.status.name()))
        })
        .collect();
    ListTransactionsResponse::default().with_unknown_state_filters(unknown).with_transaction_states(states)
}

super::registry::api! {
    ListTransactions: ListTransactionsRequest => ListTransactionsResponse, versions 0..=1, access Cluster Describe,
    |call, request| handle(&call.ctx, request).await
}
