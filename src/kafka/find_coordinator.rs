//! FindCoordinator: this broker coordinates every group (and, later, every
//! transactional id). v4+ batches keys.

use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::{BrokerId, FindCoordinatorRequest, FindCoordinatorResponse};
use kafka_protocol::ResponseError;

use super::{str_bytes, RequestContext};

const KEY_TYPE_GROUP: i8 = 0;
const KEY_TYPE_TRANSACTION: i8 = 1;

pub fn handle(ctx: &RequestContext, req: FindCoordinatorRequest, version: i16) -> FindCoordinatorResponse {
    let (host, port) = ctx.config.advertised();
    let node = BrokerId(ctx.node_id());
    let supported = matches!(req.key_type, KEY_TYPE_GROUP | KEY_TYPE_TRANSACTION);
    let error = if supported { 0 } else { ResponseError::InvalidRequest.code() };
    if version >= 4 {
        let coordinators = req
            .coordinator_keys
            .into_iter()
            .map(|key| {
                Coordinator::default()
                    .with_key(key)
                    .with_node_id(node)
                    .with_host(str_bytes(host.clone()))
                    .with_port(port)
                    .with_error_code(error)
            })
            .collect();
        return FindCoordinatorResponse::default().with_coordinators(coordinators);
    }
    FindCoordinatorResponse::default()
        .with_error_code(error)
        .with_node_id(node)
        .with_host(str_bytes(host))
        .with_port(port)
}
