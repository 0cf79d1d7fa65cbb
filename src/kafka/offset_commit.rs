//! OffsetCommit: validated against the topic metadata here, stored by the
//! group's coordinator (fsynced) before the answer.

use kafka_protocol::messages::offset_commit_response::{OffsetCommitResponsePartition, OffsetCommitResponseTopic};
use kafka_protocol::messages::{OffsetCommitRequest, OffsetCommitResponse, TopicName};
use kafka_protocol::ResponseError;
use tributary_actors::group_coordinator::CommitOffsets;
use tributary_actors::{GroupAnswer, GroupRequest};

use super::RequestContext;

pub async fn handle(ctx: &RequestContext, req: OffsetCommitRequest) -> OffsetCommitResponse {
    let snapshot = ctx.broker.metadata();
    // Every partition, in request order, with Some(code) if refused here.
    let mut entries: Vec<(TopicName, i32, Option<i16>)> = Vec::new();
    let mut offsets = Vec::new();
    for topic in &req.topics {
        for p in &topic.partitions {
            if snapshot.partition(&topic.name, p.partition_index).is_none() {
                entries.push((
                    topic.name.clone(),
                    p.partition_index,
                    Some(ResponseError::UnknownTopicOrPartition.code()),
                ));
                continue;
            }
            entries.push((topic.name.clone(), p.partition_index, None));
            let metadata = p.committed_metadata.as_ref().map(|m| m.to_string());
            offsets.push((
                (topic.name.0.to_string(), p.partition_index),
                p.committed_offset,
                p.committed_leader_epoch,
                metadata,
            ));
        }
    }
    drop(snapshot);
    let count = offsets.len();
    let commit = CommitOffsets {
        generation_id: req.generation_id_or_member_epoch,
        member_id: req.member_id.to_string(),
        group_instance_id: req.group_instance_id.map(|s| s.to_string()),
        offsets,
    };
    // A standalone commit (generation -1) may create the group, as in Kafka.
    let codes = match ctx.group_request(&req.group_id, true, GroupRequest::Commit(commit)).await {
        Ok(Some(GroupAnswer::Codes(codes))) => codes,
        Ok(_) => vec![ResponseError::UnknownServerError.code(); count],
        Err(code) => vec![code; count],
    };
    let mut codes = codes.into_iter();
    let mut topics: Vec<OffsetCommitResponseTopic> = Vec::new();
    for (name, partition, refused) in entries {
        let code = refused.unwrap_or_else(|| codes.next().unwrap_or(ResponseError::UnknownServerError.code()));
        let response = OffsetCommitResponsePartition::default().with_partition_index(partition).with_error_code(code);
        match topics.last_mut() {
            Some(last) if last.name == name => last.partitions.push(response),
            _ => topics.push(OffsetCommitResponseTopic::default().with_name(name).with_partitions(vec![response])),
        }
    }
    OffsetCommitResponse::default().with_topics(topics)
}

super::registry::api! {
    OffsetCommit: OffsetCommitRequest => OffsetCommitResponse, versions 2..=8, access Group Read,
    |call, request| handle(&call.ctx, request).await
}
