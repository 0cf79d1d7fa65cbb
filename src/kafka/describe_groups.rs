//! DescribeGroups: state, protocol and members. Unknown groups are "Dead", as in Kafka.

use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::{DescribeGroupsRequest, DescribeGroupsResponse};
use tributary_actors::{GroupAnswer, GroupRequest};

use super::{str_bytes, RequestContext};

pub async fn handle(ctx: &RequestContext, req: DescribeGroupsRequest, version: i16) -> DescribeGroupsResponse {
    let mut groups = Vec::with_capacity(req.groups.len());
    for group_id in req.groups {
        let described = DescribedGroup::default().with_group_id(group_id.clone());
        let described = match ctx.group_request(&group_id, false, GroupRequest::Describe).await {
            Ok(Some(GroupAnswer::Described(d))) => {
                let members = d
                    .members
                    .into_iter()
                    .map(|m| {
                        DescribedGroupMember::default()
                            .with_member_id(str_bytes(m.member_id))
                            .with_group_instance_id(if version >= 4 {
                                m.group_instance_id.map(str_bytes)
                            } else {
                                None
                            })
                            .with_client_id(str_bytes(m.client_id))
                            .with_client_host(str_bytes(m.client_host))
                            .with_member_metadata(m.metadata)
                            .with_member_assignment(m.assignment)
                    })
                    .collect();
                described
                    .with_group_state(str_bytes(d.state.name()))
                    .with_protocol_type(str_bytes(d.protocol_type))
                    .with_protocol_data(str_bytes(d.protocol))
                    .with_members(members)
            }
            Ok(_) => described.with_group_state(str_bytes("Dead")),
            Err(code) => described.with_error_code(code).with_group_state(str_bytes("Dead")),
        };
        groups.push(described);
    }
    DescribeGroupsResponse::default().with_groups(groups)
}

super::registry::api! {
    DescribeGroups: DescribeGroupsRequest => DescribeGroupsResponse, versions 0..=5, access Group Describe,
    |call, request| handle(&call.ctx, request, call.version).await
}
