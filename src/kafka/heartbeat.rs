//! Heartbeat: keeps a member's session alive; tells it when to rejoin.

use kafka_protocol::messages::{HeartbeatRequest, HeartbeatResponse};
use kafka_protocol::ResponseError;
use tributary_actors::group_coordinator::Heartbeat as Beat;
use tributary_actors::{GroupAnswer, GroupRequest};

use super::RequestContext;

pub async fn handle(ctx: &RequestContext, req: HeartbeatRequest) -> HeartbeatResponse {
    let beat = Beat {
        generation_id: req.generation_id,
        member_id: req.member_id.to_string(),
        group_instance_id: req.group_instance_id.map(|s| s.to_string()),
    };
    let code = match ctx.group_request(&req.group_id, false, GroupRequest::Heartbeat(beat)).await {
        Ok(Some(GroupAnswer::Code(code))) => code,
        Ok(_) => ResponseError::UnknownMemberId.code(),
        Err(code) => code,
    };
    HeartbeatResponse::default().with_error_code(code)
}

super::registry::api! {
    Heartbeat: HeartbeatRequest => HeartbeatResponse, versions 0..=4, access Group Read,
    |call, request| handle(&call.ctx, request).await
}
