//! OffsetDelete: drop committed offsets of topics the group no longer consumes.

use kafka_protocol::messages::offset_delete_response::{OffsetDeleteResponsePartition, OffsetDeleteResponseTopic};
use kafka_protocol::messages::{OffsetDeleteRequest, OffsetDeleteResponse};
use kafka_protocol::ResponseError;
use tributary_actors::{GroupAnswer, GroupRequest};

use super::RequestContext;

pub async fn handle(ctx: &RequestContext, req: OffsetDeleteRequest) -> OffsetDeleteResponse {
    let partitions: Vec<(String, i32)> = req
        .topics
        .iter()
        .flat_map(|t| t.partitions.iter().map(move |p| (t.name.0.to_string(), p.partition_index)))
        .collect();
    let codes = match ctx.group_request(&req.group_id, false, GroupRequest::DeleteOffsets(partitions)).await {
        Ok(Some(GroupAnswer::Codes(codes))) => codes,
        Ok(_) => return OffsetDeleteResponse::default().with_error_code(ResponseError::GroupIdNotFound.code()),
        Err(code) => return OffsetDeleteResponse::default().with_error_code(code),
    };
    let mut codes = codes.into_iter();
    let topics = req
        .topics
        .into_iter()
        .map(|t| {
            let partitions = t
                .partitions
                .iter()
                .map(|p| {
                    OffsetDeleteResponsePartition::default()
                        .with_partition_index(p.partition_index)
                        .with_error_code(codes.next().unwrap_or(0))
                })
                .collect();
            OffsetDeleteResponseTopic::default().with_name(t.name).with_partitions(partitions)
        })
        .collect();
    OffsetDeleteResponse::default().with_topics(topics)
}

super::registry::api! {
    OffsetDelete: OffsetDeleteRequest => OffsetDeleteResponse, versions 0..=0, access Group Delete,
    |call, request| handle(&call.ctx, request).await
}
