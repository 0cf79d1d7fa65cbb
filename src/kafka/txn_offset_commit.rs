//! TxnOffsetCommit: offsets committed inside a transaction. The group's
//! coordinator keeps them pending (durably) until the transaction's marker
//! arrives: then they become the group's committed offsets, or are dropped.

use kafka_protocol::messages::txn_offset_commit_response::{TxnOffsetCommitResponsePartition, TxnOffsetCommitResponseTopic};
use kafka_protocol::messages::{TxnOffsetCommitRequest, TxnOffsetCommitResponse};
use kafka_protocol::ResponseError as E;
use tributary_actors::group_coordinator::CommitOffsets;
use tributary_actors::{GroupAnswer, GroupRequest};

use super::RequestContext;

pub async fn handle(ctx: &RequestContext, req: TxnOffsetCommitRequest) -> TxnOffsetCommitResponse {
    let snapshot = ctx.broker.metadata();
    let mut entries = Vec::new();
    let mut offsets = Vec::new();
    for topic in &req.topics {
        for p in &topic.partitions {
            let known = snapshot.partition(&topic.name, p.partition_index).is_some();
            entries.push((topic.name.clone(), p.partition_index, (!known).then_some(E::UnknownTopicOrPartition.code())));
            if known {
                let metadata = p.committed_metadata.as_ref().map(|m| m.to_string());
                offsets.push(((topic.name.0.to_string(), p.partition_index), p.committed_offset, p.committed_leader_epoch, metadata));
            }
        }
    }
    drop(snapshot);
    let count = offsets.len();
    let commit = CommitOffsets {
        generation_id: req.generation_id,
        member_id: req.member_id.to_string(),
        group_instance_id: req.group_instance_id.map(|s| s.to_string()),
        offsets,
    };
    let request = GroupRequest::TxnCommit { producer_id: req.producer_id.0, commit };
    let codes = match ctx.group_request(&req.group_id, true, request).await {
        Ok(Some(GroupAnswer::Codes(codes))) => codes,
        Ok(_) => vec![E::UnknownServerError.code(); count],
        Err(code) => vec![code; count],
    };
    let mut codes = codes.into_iter();
    let mut topics: Vec<TxnOffsetCommitResponseTopic> = Vec::new();
    for (name, partition, refused) in entries {
        let code = refused.unwrap_or_else(|| codes.next().unwrap_or(E::UnknownServerError.code()));
        let response = TxnOffsetCommitResponsePartition::default().with_partition_index(partition).with_error_code(code);
        match topics.last_mut() {
            Some(last) if last.name == name => last.partitions.push(response),
            _ => topics.push(TxnOffsetCommitResponseTopic::default().with_name(name).with_partitions(vec![response])),
        }
    }
    TxnOffsetCommitResponse::default().with_topics(topics)
}

super::registry::api! {
    TxnOffsetCommit: TxnOffsetCommitRequest => TxnOffsetCommitResponse, versions 0..=4, access Group Read,
    |call, request| handle(&call.ctx, request).await
}
