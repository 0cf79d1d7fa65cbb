//! EndTxn: commit or abort. Answered once the coordinator has written the
//! prepared state; the markers follow, and the next transaction of the id
//! waits for them (CONCURRENT_TRANSACTIONS).

use kafka_protocol::messages::{EndTxnRequest, EndTxnResponse};

use super::RequestContext;
use crate::txn::coordinator::TxnCall;

pub async fn handle(ctx: &RequestContext, req: EndTxnRequest, version: i16) -> EndTxnResponse {
    let call = TxnCall::End { producer_id: req.producer_id.0, epoch: req.producer_epoch, commit: req.committed };
    let code = crate::txn::route(ctx, &req.transactional_id, call).await.err().unwrap_or(0);
    let code = crate::txn::fenced_for(code, version, 2);
    EndTxnResponse::default().with_error_code(code)
}

super::registry::api! {
    EndTxn: EndTxnRequest => EndTxnResponse, versions 0..=4, access TransactionalId Write,
    |call, request| handle(&call.ctx, request, call.version).await
}
