//! DeleteGroups: only groups with no members; their offsets go with them.

use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use kafka_protocol::messages::{DeleteGroupsRequest, DeleteGroupsResponse};
use kafka_protocol::ResponseError;
use tributary_actors::{ForgetGroup, GroupAnswer, GroupRequest};

use super::RequestContext;

pub async fn handle(ctx: &RequestContext, req: DeleteGroupsRequest) -> DeleteGroupsResponse {
    let mut results = Vec::with_capacity(req.groups_names.len());
    for group_id in req.groups_names {
        let code = match ctx.group_request(&group_id, false, GroupRequest::Delete).await {
            Ok(Some(GroupAnswer::Code(0))) => {
                let _ = ctx.broker.groups().send(ForgetGroup(group_id.to_string())).await;
                0
            }
            Ok(Some(GroupAnswer::Code(code))) => code,
            Ok(_) => ResponseError::GroupIdNotFound.code(),
            Err(code) => code,
        };
        results.push(DeletableGroupResult::default().with_group_id(group_id).with_error_code(code));
    }
    DeleteGroupsResponse::default().with_results(results)
}

super::registry::api! {
    DeleteGroups: DeleteGroupsRequest => DeleteGroupsResponse, versions 0..=2, access Group Delete,
    |call, request| handle(&call.ctx, request).await
}
