//! ListGroups, with the v4 state filter.

use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::{GroupId, ListGroupsRequest, ListGroupsResponse};
use kafka_protocol::ResponseError;
use tributary_actors::ListGroups as AllGroups;

use super::{str_bytes, RequestContext};

pub async fn handle(ctx: &RequestContext, req: ListGroupsRequest, version: i16) -> ListGroupsResponse {
    let Ok(groups) = ctx.broker.groups().send(AllGroups).await else {
        return ListGroupsResponse::default().with_error_code(ResponseError::CoordinatorNotAvailable.code());
    };
    let states: Vec<String> = req.states_filter.iter().map(|s| s.to_string()).collect();
    let listed = groups
        .into_iter()
        .filter(|(_, _, state)| states.is_empty() || states.iter().any(|s| s.eq_ignore_ascii_case(state)))
        .map(|(id, protocol_type, state)| {
            let group = ListedGroup::default()
                .with_group_id(GroupId(str_bytes(id)))
                .with_protocol_type(str_bytes(protocol_type));
            if version >= 4 {
                return group.with_group_state(str_bytes(state));
            }
            group
        })
        .collect();
    ListGroupsResponse::default().with_groups(listed)
}

super::registry::api! {
    ListGroups: ListGroupsRequest => ListGroupsResponse, versions 0..=4, access Cluster Describe,
    |call, request| handle(&call.ctx, request, call.version).await
}
