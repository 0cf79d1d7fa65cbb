//! LeaveGroup: one member (v0-2) or a batch by member or instance id (v3+).

use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::{LeaveGroupRequest, LeaveGroupResponse};
use kafka_protocol::ResponseError;
use tributary_actors::group_coordinator::LeaveGroup as Leave;
use tributary_actors::{GroupAnswer, GroupRequest};

use super::RequestContext;

pub async fn handle(ctx: &RequestContext, req: LeaveGroupRequest, version: i16) -> LeaveGroupResponse {
    let identities: Vec<_> = if version >= 3 {
        req.members.iter().map(|m| (m.member_id.clone(), m.group_instance_id.clone())).collect()
    } else {
        vec![(req.member_id.clone(), None)]
    };
    let leave = Leave {
        members: identities
            .iter()
            .map(|(id, instance)| (id.to_string(), instance.as_ref().map(|s| s.to_string())))
            .collect(),
    };
    let (top, codes) = match ctx.group_request(&req.group_id, false, GroupRequest::Leave(leave)).await {
        Ok(Some(GroupAnswer::Leave(top, codes))) => (top, codes),
        Ok(_) => (ResponseError::UnknownMemberId.code(), vec![ResponseError::UnknownMemberId.code(); identities.len()]),
        Err(code) => (code, vec![code; identities.len()]),
    };
    if version < 3 {
        return LeaveGroupResponse::default().with_error_code(top);
    }
    let members = identities
        .into_iter()
        .zip(codes)
        .map(|((id, instance), code)| {
            MemberResponse::default().with_member_id(id).with_group_instance_id(instance).with_error_code(code)
        })
        .collect();
    LeaveGroupResponse::default().with_members(members)
}

super::registry::api! {
    LeaveGroup: LeaveGroupRequest => LeaveGroupResponse, versions 0..=5, access Group Read,
    |call, request| handle(&call.ctx, request, call.version).await
}
