//! ListOffsets: earliest (-2), latest (-1), max timestamp (-3, v7+), or the
//! first offset at or after a timestamp.

use kafka_protocol::messages::list_offsets_response::{ListOffsetsPartitionResponse, ListOffsetsTopicResponse};
use kafka_protocol::messages::{ListOffsetsRequest, ListOffsetsResponse};
use kafka_protocol::ResponseError;
use tributary_actors::{ListOffset, OffsetQuery, PartitionHandle};

use super::RequestContext;

const LATEST: i64 = -1;
const EARLIEST: i64 = -2;
const MAX_TIMESTAMP: i64 = -3;
const READ_COMMITTED: i8 = 1;

pub async fn handle(ctx: &RequestContext, req: ListOffsetsRequest, version: i16) -> ListOffsetsResponse {
    let snapshot = ctx.broker.metadata();
    let mut topics = Vec::with_capacity(req.topics.len());
    for topic in req.topics {
        let mut partitions = Vec::with_capacity(topic.partitions.len());
        for p in topic.partitions {
            let response = ListOffsetsPartitionResponse::default().with_partition_index(p.partition_index);
            let handle = snapshot.partition(&topic.name, p.partition_index);
            let leading = super::readable_epoch(handle);
            // The leader epoch field exists from v4 on; -1 is its absent value.
            let epoch = match leading {
                Ok(epoch) if version >= 4 => epoch,
                _ => -1,
            };
            let answer = match leading {
                Ok(_) => resolve(handle, p.timestamp, version, req.isolation_level == READ_COMMITTED).await,
                Err(code) => Err(code),
            };
            partitions.push(match answer {
                Ok(Some((offset, timestamp))) => {
                    response.with_offset(offset).with_timestamp(timestamp).with_leader_epoch(epoch)
                }
                // Kafka answers "no such record" with offset and timestamp -1.
                Ok(None) => response.with_offset(-1).with_timestamp(-1).with_leader_epoch(epoch),
                Err(code) => response.with_error_code(code).with_offset(-1).with_timestamp(-1),
            });
        }
        topics.push(ListOffsetsTopicResponse::default().with_name(topic.name).with_partitions(partitions));
    }
    ListOffsetsResponse::default().with_topics(topics)
}

/// One partition's answer: `(offset, timestamp)`, none, or a Kafka error code.
async fn resolve(
    handle: Option<&PartitionHandle>,
    timestamp: i64,
    version: i16,
    committed: bool,
) -> Result<Option<(i64, i64)>, i16> {
    let query = match timestamp {
        // read_committed consumers see up to the last stable offset (v2+ carries the level).
        LATEST if committed => OffsetQuery::LastStable,
        LATEST => OffsetQuery::Latest,
        EARLIEST => OffsetQuery::Earliest,
        MAX_TIMESTAMP if version >= 7 => OffsetQuery::MaxTimestamp,
        ts if ts >= 0 => OffsetQuery::AtOrAfter(ts),
        _ => return Err(ResponseError::InvalidRequest.code()),
    };
    let handle = handle.ok_or(ResponseError::UnknownTopicOrPartition.code())?;
    match handle.addr.send(ListOffset(query)).await {
        Ok(answer) => answer.map_err(|e| e.error_code()),
        Err(_) => Err(ResponseError::NotLeaderOrFollower.code()),
    }
}

super::registry::api! {
    ListOffsets: ListOffsetsRequest => ListOffsetsResponse, versions 1..=7, access Topic Describe,
    |call, request| handle(&call.ctx, request, call.version).await
}
