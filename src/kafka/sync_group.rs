//! SyncGroup: the leader hands in assignments; everyone gets theirs.

use bytes::Bytes;
use kafka_protocol::messages::{SyncGroupRequest, SyncGroupResponse};
use kafka_protocol::ResponseError;
use tributary_actors::group_coordinator::SyncGroup as Sync;
use tributary_actors::{GroupAnswer, GroupRequest};

use super::{str_bytes, RequestContext};

pub async fn handle(ctx: &RequestContext, req: SyncGroupRequest, version: i16) -> SyncGroupResponse {
    let sync = Sync {
        generation_id: req.generation_id,
        member_id: req.member_id.to_string(),
        group_instance_id: req.group_instance_id.map(|s| s.to_string()),
        protocol_type: req.protocol_type.map(|s| s.to_string()),
        protocol_name: req.protocol_name.map(|s| s.to_string()),
        assignments: req
            .assignments
            .into_iter()
            .map(|a| (a.member_id.to_string(), Bytes::from(a.assignment)))
            .collect(),
    };
    match ctx.group_request(&req.group_id, false, GroupRequest::Sync(sync)).await {
        Ok(Some(GroupAnswer::Sync(answer))) => {
            let response =
                SyncGroupResponse::default().with_error_code(answer.error_code).with_assignment(answer.assignment);
            if version >= 5 {
                return response
                    .with_protocol_type(answer.protocol_type.map(str_bytes))
                    .with_protocol_name(answer.protocol_name.map(str_bytes));
            }
            response
        }
        Ok(_) => SyncGroupResponse::default().with_error_code(ResponseError::UnknownMemberId.code()),
        Err(code) => SyncGroupResponse::default().with_error_code(code),
    }
}

super::registry::api! {
    SyncGroup: SyncGroupRequest => SyncGroupResponse, versions 0..=5, access Group Read,
    |call, request| handle(&call.ctx, request, call.version).await
}
