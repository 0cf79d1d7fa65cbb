//! DeleteRecords: move partitions' log start offsets forward; the batches
//! wholly below go at once.

use kafka_protocol::messages::delete_records_response::{DeleteRecordsPartitionResult, DeleteRecordsTopicResult};
use kafka_protocol::messages::{DeleteRecordsRequest, DeleteRecordsResponse};
use kafka_protocol::ResponseError;
use tributary_actors::DeleteRecordsBefore;

use super::RequestContext;

pub async fn handle(ctx: &RequestContext, req: DeleteRecordsRequest) -> DeleteRecordsResponse {
    let snapshot = ctx.broker.metadata();
    let mut topics = Vec::with_capacity(req.topics.len());
    for topic in req.topics {
        let mut partitions = Vec::with_capacity(topic.partitions.len());
        for p in topic.partitions {
            let result =
                DeleteRecordsPartitionResult::default().with_partition_index(p.partition_index).with_low_watermark(-1);
            if crate::txn::is_internal(&topic.name) {
                partitions.push(result.with_error_code(ResponseError::InvalidTopicException.code()));
                continue;
            }
            let Some(handle) = snapshot.partition(&topic.name, p.partition_index) else {
                partitions.push(result.with_error_code(ResponseError::UnknownTopicOrPartition.code()));
                continue;
            };
            partitions.push(match handle.addr.send(DeleteRecordsBefore(p.offset)).await {
                Ok(Ok(start)) => result.with_low_watermark(start),
                Ok(Err(e)) => result.with_error_code(e.error_code()),
                Err(_) => result.with_error_code(ResponseError::NotLeaderOrFollower.code()),
            });
        }
        topics.push(DeleteRecordsTopicResult::default().with_name(topic.name).with_partitions(partitions));
    }
    DeleteRecordsResponse::default().with_topics(topics)
}

super::registry::api! {
    DeleteRecords: DeleteRecordsRequest => DeleteRecordsResponse, versions 0..=2, access Topic Delete,
    |call, request| handle(&call.ctx, request).await
}
