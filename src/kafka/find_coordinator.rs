//! FindCoordinator: a single broker coordinates every group; in a cluster, one
//! controller voter per group (`Cluster::coordinator_for`). v4+ batches keys.

use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::{BrokerId, FindCoordinatorRequest, FindCoordinatorResponse};
use kafka_protocol::ResponseError;

use super::{str_bytes, RequestContext};

const KEY_TYPE_GROUP: i8 = 0;
const KEY_TYPE_TRANSACTION: i8 = 1;

pub fn handle(ctx: &RequestContext, req: FindCoordinatorRequest, version: i16) -> FindCoordinatorResponse {
    let (mut host, mut port) = ctx.config.advertised();
    let mut node = BrokerId(ctx.node_id());
    // A group lives on one broker, picked by a stable hash of its id (v4+
    // batches are all answered for the first key's broker: clients send one key per group).
    let key =
        if version >= 4 { req.coordinator_keys.first().map(|k| k.to_string()) } else { Some(req.key.to_string()) };
    let mut error = 0;
    if let Some(key) = key {
        match ctx.cluster.coordinator_for(&key) {
            Ok(b) => (host, port, node) = (b.host, b.port, BrokerId(b.node_id as i32)),
            Err(code) => (node, error) = (BrokerId(-1), code),
        }
    }
    let supported = matches!(req.key_type, KEY_TYPE_GROUP | KEY_TYPE_TRANSACTION);
    if !supported {
        error = ResponseError::InvalidRequest.code();
    }
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

super::registry::api! {
    FindCoordinator: FindCoordinatorRequest => FindCoordinatorResponse, versions 0..=4, access Group Describe,
    |call, request| handle(&call.ctx, request, call.version)
}
