//! OffsetFetch: committed offsets of a group (-1 where none was committed).
//! With `require_stable` (v7+, read_committed consumers), a partition whose
//! offset waits for a transaction's marker is UNSTABLE_OFFSET_COMMIT, which
//! the client retries, so it never starts from an offset about to change.

use std::collections::BTreeMap;

use kafka_protocol::messages::offset_fetch_response::{OffsetFetchResponsePartition, OffsetFetchResponseTopic};
use kafka_protocol::messages::{OffsetFetchRequest, OffsetFetchResponse};
use tributary_actors::{GroupAnswer, GroupRequest};

use super::{str_bytes, topic_name, RequestContext};

pub async fn handle(ctx: &RequestContext, req: OffsetFetchRequest, version: i16) -> OffsetFetchResponse {
    let wanted: Option<Vec<(String, i32)>> = req.topics.map(|topics| {
        topics.iter().flat_map(|t| t.partition_indexes.iter().map(move |p| (t.name.0.to_string(), *p))).collect()
    });
    let (error, found) = match ctx.group_request(&req.group_id, false, GroupRequest::Fetch(wanted.clone())).await {
        Ok(Some(GroupAnswer::Fetched(code, found))) => (code, found),
        // An unknown group has no offsets: -1 for every partition asked about.
        Ok(_) => (0, wanted.unwrap_or_default().into_iter().map(|tp| (tp, None)).collect()),
        Err(code) => (code, Vec::new()),
    };
    let unstable = if version >= 7 && req.require_stable {
        let ask = tributary_actors::group_registry::PendingTxnOffsets { group: req.group_id.0.to_string() };
        ctx.broker.groups().send(ask).await.ok().and_then(|r| r.ok()).unwrap_or_default()
    } else {
        Vec::new()
    };
    let mut by_topic: BTreeMap<String, Vec<OffsetFetchResponsePartition>> = BTreeMap::new();
    for ((topic, partition), committed) in found {
        let p = OffsetFetchResponsePartition::default().with_partition_index(partition);
        if unstable.contains(&(topic.clone(), partition)) {
            let code = kafka_protocol::ResponseError::UnstableOffsetCommit.code();
            by_topic.entry(topic).or_default().push(p.with_committed_offset(-1).with_error_code(code));
            continue;
        }
        let p = match committed {
            Some(c) => p
                .with_committed_offset(c.offset)
                .with_committed_leader_epoch(if version >= 5 { c.leader_epoch } else { -1 })
                .with_metadata(Some(str_bytes(c.metadata.unwrap_or_default()))),
            None => p.with_committed_offset(-1).with_metadata(Some(str_bytes(""))),
        };
        by_topic.entry(topic).or_default().push(p);
    }
    let topics = by_topic
        .into_iter()
        .map(|(name, partitions)| {
            OffsetFetchResponseTopic::default().with_name(topic_name(&name)).with_partitions(partitions)
        })
        .collect();
    let response = OffsetFetchResponse::default().with_topics(topics);
    // The top-level error code exists from v2.
    if version >= 2 {
        return response.with_error_code(error);
    }
    response
}

super::registry::api! {
    OffsetFetch: OffsetFetchRequest => OffsetFetchResponse, versions 1..=7, access Group Describe,
    |call, request| handle(&call.ctx, request, call.version).await
}
