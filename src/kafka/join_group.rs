//! JoinGroup: parked at the group's coordinator until the rebalance completes.

use bytes::Bytes;
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::{JoinGroupRequest, JoinGroupResponse};
use tributary_actors::group_coordinator::JoinGroup as Join;
use tributary_actors::{GroupAnswer, GroupRequest};

use super::{str_bytes, RequestContext};

/// `client_host` as Kafka prints it ("/1.2.3.4").
pub async fn handle(
    ctx: &RequestContext,
    req: JoinGroupRequest,
    version: i16,
    client_id: String,
    client_host: String,
) -> JoinGroupResponse {
    let join = Join {
        member_id: req.member_id.to_string(),
        group_instance_id: req.group_instance_id.map(|s| s.to_string()),
        client_id,
        client_host,
        session_timeout_ms: req.session_timeout_ms,
        rebalance_timeout_ms: if version >= 1 { req.rebalance_timeout_ms } else { req.session_timeout_ms },
        protocol_type: req.protocol_type.to_string(),
        protocols: req.protocols.into_iter().map(|p| (p.name.to_string(), Bytes::from(p.metadata))).collect(),
        require_known_member_id: version >= 4,
    };
    let member_id = join.member_id.clone();
    let answer = match ctx.group_request(&req.group_id, true, GroupRequest::Join(join)).await {
        Ok(Some(GroupAnswer::Join(answer))) => answer,
        Ok(_) => tributary_actors::group_coordinator::JoinAnswer {
            error_code: kafka_protocol::ResponseError::UnknownServerError.code(),
            generation_id: -1,
            member_id,
            ..Default::default()
        },
        Err(code) => tributary_actors::group_coordinator::JoinAnswer {
            error_code: code,
            generation_id: -1,
            member_id,
            ..Default::default()
        },
    };
    let members = answer
        .members
        .into_iter()
        .map(|(id, instance, metadata)| {
            JoinGroupResponseMember::default()
                .with_member_id(str_bytes(id))
                .with_group_instance_id(if version >= 5 { instance.map(str_bytes) } else { None })
                .with_metadata(metadata)
        })
        .collect();
    // Before v7 the protocol name is a non-null string.
    let protocol_name = match (answer.protocol_name, version >= 7) {
        (Some(name), _) => Some(str_bytes(name)),
        (None, true) => None,
        (None, false) => Some(str_bytes("")),
    };
    JoinGroupResponse::default()
        .with_error_code(answer.error_code)
        .with_generation_id(answer.generation_id)
        .with_protocol_type(if version >= 7 { answer.protocol_type.map(str_bytes) } else { None })
        .with_protocol_name(protocol_name)
        .with_leader(str_bytes(answer.leader))
        .with_member_id(str_bytes(answer.member_id))
        .with_members(members)
}

super::registry::api! {
    JoinGroup: JoinGroupRequest => JoinGroupResponse, versions 0..=9, access Group Read,
    |call, request| handle(&call.ctx, request, call.version, call.client_id(), call.session.client_host()).await
}
