//! FindCoordinator: a group's coordinator is one controller voter, by a hash
//! of the group id (`Cluster::coordinator_for`); a transactional id's is the
//! leader of its `__transaction_state` partition, the topic created on the
//! first such request. v4+ batches keys, each answered on its own.

use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::{BrokerId, FindCoordinatorRequest, FindCoordinatorResponse};
use kafka_protocol::ResponseError;

use super::{str_bytes, RequestContext};

const KEY_TYPE_GROUP: i8 = 0;
const KEY_TYPE_TRANSACTION: i8 = 1;
/// Keys one v4+ request may ask for.
const MAX_KEYS: usize = 1_000;

pub async fn handle(call: &super::Call, req: FindCoordinatorRequest) -> FindCoordinatorResponse {
    let (ctx, version): (&RequestContext, i16) = (&call.ctx, call.version);
    let keys: Vec<String> = if version >= 4 {
        req.coordinator_keys.iter().take(MAX_KEYS).map(|k| k.to_string()).collect()
    } else {
        vec![req.key.to_string()]
    };
    let mut created = Ok(());
    if req.key_type == KEY_TYPE_TRANSACTION {
        created = crate::txn::ensure_state_topic(ctx).await;
    }
    let answers: Vec<(String, Result<(i32, String, i32), i16>)> = keys
        .into_iter()
        .map(|key| {
            let found = match req.key_type {
                KEY_TYPE_GROUP => ctx.cluster.coordinator_for(&key),
                KEY_TYPE_TRANSACTION => created.and_then(|()| crate::txn::coordinator_of(ctx, &key)),
                _ => Err(ResponseError::InvalidRequest.code()),
            };
            // A coordinator without the client's listener is one it cannot reach.
            let found = found.and_then(|b| match super::endpoint_for(&b, &call.session) {
                Some(e) => Ok((b.node_id as i32, e.host.clone(), e.port)),
                None => Err(ResponseError::CoordinatorNotAvailable.code()),
            });
            (key, found)
        })
        .collect();
    if version >= 4 {
        let coordinators = answers
            .into_iter()
            .map(|(key, found)| {
                let (node, host, port, error) = match found {
                    Ok((node, host, port)) => (node, host, port, 0),
                    Err(code) => (-1, String::new(), -1, code),
                };
                Coordinator::default()
                    .with_key(str_bytes(key))
                    .with_node_id(BrokerId(node))
                    .with_host(str_bytes(host))
                    .with_port(port)
                    .with_error_code(error)
            })
            .collect();
        return FindCoordinatorResponse::default().with_coordinators(coordinators);
    }
    let (node, host, port, error) = match answers.into_iter().next().map(|(_, found)| found) {
        Some(Ok((node, host, port))) => (node, host, port, 0),
        Some(Err(code)) => (-1, String::new(), -1, code),
        None => (-1, String::new(), -1, ResponseError::InvalidRequest.code()),
    };
    FindCoordinatorResponse::default().with_error_code(error).with_node_id(BrokerId(node)).with_host(str_bytes(host)).with_port(port)
}

super::registry::api! {
    FindCoordinator: FindCoordinatorRequest => FindCoordinatorResponse, versions 0..=4, access Group Describe,
    |call, request| handle(call, request).await
}
