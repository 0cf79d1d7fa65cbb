//! InitProducerId: a producer id for an idempotent producer, from this
//! broker's range; for a transactional producer, from its transactional id's
//! coordinator, which bumps the epoch (fencing older producers of the id) and
//! aborts the id's open transaction first.

use kafka_protocol::messages::{InitProducerIdRequest, InitProducerIdResponse, ProducerId};
use kafka_protocol::ResponseError;

use super::RequestContext;
use crate::txn::coordinator::{TxnAnswer, TxnCall};

pub async fn handle(ctx: &RequestContext, req: InitProducerIdRequest, version: i16) -> InitProducerIdResponse {
    let fail = |code: i16| {
        InitProducerIdResponse::default().with_error_code(code).with_producer_id(ProducerId(-1)).with_producer_epoch(-1)
    };
    let answer = |id: i64, epoch: i16| InitProducerIdResponse::default().with_producer_id(ProducerId(id)).with_producer_epoch(epoch);
    // v3+ (KIP-360): a producer that knows its id and epoch sends them.
    let expected = if version >= 3 { (req.producer_id.0, req.producer_epoch) } else { (-1, -1) };
    if let Some(id) = req.transactional_id.as_ref() {
        if id.is_empty() {
            return fail(ResponseError::InvalidRequest.code());
        }
        // As FindCoordinator does: a client that skipped it still finds the state topic.
        if let Err(code) = crate::txn::ensure_state_topic(ctx).await {
            return fail(code);
        }
        // A fresh id in case the coordinator needs one (a new transactional id, or its epochs ran out).
        let new_producer_id = match super::allocate_producer_id(ctx).await {
            Ok(id) => id,
            Err(code) => return fail(code),
        };
        let call = TxnCall::Init { timeout_ms: req.transaction_timeout_ms, expected, new_producer_id };
        return match crate::txn::route(ctx, id, call).await {
            Ok(TxnAnswer::Producer { id, epoch }) => answer(id, epoch),
            Ok(_) => fail(ResponseError::UnknownServerError.code()),
            Err(code) => fail(code),
        };
    }
    if expected.0 >= 0 && expected.1 >= 0 && expected.1 < i16::MAX - 1 {
        return answer(expected.0, expected.1 + 1);
    }
    match super::allocate_producer_id(ctx).await {
        Ok(id) => answer(id, 0),
        Err(code) => fail(code),
    }
}

super::registry::api! {
    InitProducerId: InitProducerIdRequest => InitProducerIdResponse, versions 0..=4, access Cluster IdempotentWrite,
    |call, request| handle(&call.ctx, request, call.version).await
}
