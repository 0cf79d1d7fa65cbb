//! AddOffsetsToTxn: the transaction will commit offsets of a consumer group
//! (consume-transform-produce); its coordinator writes that group a marker.

use kafka_protocol::messages::{AddOffsetsToTxnRequest, AddOffsetsToTxnResponse};

use super::RequestContext;
use crate::txn::coordinator::TxnCall;

pub async fn handle(ctx: &RequestContext, req: AddOffsetsToTxnRequest, version: i16) -> AddOffsetsToTxnResponse {
    let call = TxnCall::Add {
        producer_id: req.producer_id.0,
        epoch: req.producer_epoch,
        partitions: Vec::new(),
        groups: vec![req.group_id.0.to_string()],
    };
    let code = crate::txn::route(ctx, &req.transactional_id, call).await.err().unwrap_or(0);
    let code = crate::txn::fenced_for(code, version, 2);
    AddOffsetsToTxnResponse::default().with_error_code(code)
}

super::registry::api! {
    AddOffsetsToTxn: AddOffsetsToTxnRequest => AddOffsetsToTxnResponse, versions 0..=3, access TransactionalId Write,
    |call, request| handle(&call.ctx, request, call.version).await
}
