//! InitProducerId: a producer id for an idempotent producer. Transactions
//! (a transactional id) are not supported yet.

use kafka_protocol::messages::{InitProducerIdRequest, InitProducerIdResponse, ProducerId};
use kafka_protocol::ResponseError;
use tributary_actors::AllocateProducerId;

use super::RequestContext;

pub async fn handle(ctx: &RequestContext, req: InitProducerIdRequest, version: i16) -> InitProducerIdResponse {
    let fail = |code: i16| {
        InitProducerIdResponse::default().with_error_code(code).with_producer_id(ProducerId(-1)).with_producer_epoch(-1)
    };
    if req.transactional_id.as_ref().is_some_and(|id| id.is_empty()) {
        return fail(ResponseError::InvalidRequest.code());
    }
    if req.transactional_id.is_some() {
        tracing::debug!("InitProducerId with a transactional id: transactions are not supported yet");
        return fail(ResponseError::TransactionalIdAuthorizationFailed.code());
    }
    // v3+ (KIP-360): a producer that knows its id asks for the next epoch instead of a new id.
    if version >= 3 && req.producer_id.0 >= 0 && req.producer_epoch >= 0 && req.producer_epoch < i16::MAX - 1 {
        return InitProducerIdResponse::default()
            .with_producer_id(req.producer_id)
            .with_producer_epoch(req.producer_epoch + 1);
    }
    match ctx.broker.registry().send(AllocateProducerId).await {
        Ok(Ok(id)) => {
            // Each broker hands out ids in its own range: node id in the high bits.
            let id = ((ctx.node_id() as i64) << 40) | (id & ((1 << 40) - 1));
            InitProducerIdResponse::default().with_producer_id(ProducerId(id)).with_producer_epoch(0)
        }
        Ok(Err(e)) => {
            tracing::error!(error = %e, "cannot allocate a producer id");
            fail(ResponseError::CoordinatorNotAvailable.code())
        }
        Err(_) => fail(ResponseError::CoordinatorNotAvailable.code()),
    }
}

super::registry::api! {
    InitProducerId: InitProducerIdRequest => InitProducerIdResponse, versions 0..=4, access Cluster IdempotentWrite,
    |call, request| handle(&call.ctx, request, call.version).await
}
