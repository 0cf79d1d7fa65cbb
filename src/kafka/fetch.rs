//! Fetch with long-poll. If fewer than `min_bytes` are ready, the request
//! waits on the partitions' offset watches: the produce that commits new
//! data wakes it; `max_wait_ms` (capped by limits.max_fetch_wait_ms) ends it.
//! No polling loop.

use std::time::Duration;

use bytes::Bytes;
use futures::future::{select_all, FutureExt};
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::{FetchRequest, FetchResponse, TopicName};
use kafka_protocol::ResponseError;
use tokio::time::Instant;
use tributary_actors::{PartitionHandle, Read};

use super::RequestContext;
use crate::metrics::Metrics;

const READ_COMMITTED: i8 = 1;
/// Rounds of "read, then wait for new data": each ends on new data or the deadline.
const MAX_WAIT_ROUNDS: usize = 10_000;

struct Target {
    topic: TopicName,
    partition: i32,
    offset: i64,
    max_bytes: usize,
    handle: Option<PartitionHandle>,
    /// In a cluster: why this broker may not serve the partition, or the
    /// same-rack follower the consumer should read from instead (KIP-392).
    route: Route,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Route {
    Serve,
    Refuse(i16),
    Preferred(i32),
}

/// Leaders serve; followers serve consumers that know KIP-392 (v11+); a
/// leader sends a consumer with `client.rack` to an in-sync follower in its rack.
fn route(ctx: &RequestContext, topic: &str, partition: i32, version: i16, rack: &str) -> Route {
    let cluster = &ctx.cluster;
    let metadata = cluster.metadata();
    let me = cluster.node_id();
    let Some(p) = metadata.partition(topic, partition) else {
        return Route::Refuse(ResponseError::UnknownTopicOrPartition.code());
    };
    let rack_of = |id: &u64| metadata.brokers.get(id).and_then(|b| b.rack.as_deref());
    if p.leader == Some(me) {
        if version >= 11 && !rack.is_empty() && rack_of(&me) != Some(rack) {
            let live = |id: &u64| metadata.brokers.get(id).is_some_and(|b| !b.fenced);
            if let Some(follower) = p.isr.iter().find(|id| **id != me && live(id) && rack_of(id) == Some(rack)) {
                return Route::Preferred(*follower as i32);
            }
        }
        return Route::Serve;
    }
    if version >= 11 && p.replicas.contains(&me) {
        return Route::Serve;
    }
    Route::Refuse(ResponseError::NotLeaderOrFollower.code())
}

pub async fn handle(ctx: &RequestContext, req: FetchRequest, version: i16) -> FetchResponse {
    let limits = &ctx.config.limits;
    let wait = Duration::from_millis((req.max_wait_ms.max(0) as u64).min(limits.max_fetch_wait_ms));
    let deadline = Instant::now() + wait;
    let max_bytes =
        if req.max_bytes > 0 { (req.max_bytes as usize).min(limits.max_fetch_bytes) } else { limits.max_fetch_bytes };
    let min_bytes = req.min_bytes.max(0) as usize;
    let read_committed = req.isolation_level == READ_COMMITTED;

    let snapshot = ctx.broker.metadata();
    let rack = req.rack_id.to_string();
    let mut targets = Vec::new();
    for topic in req.topics {
        for p in topic.partitions {
            targets.push(Target {
                route: route(ctx, &topic.topic, p.partition, version, &rack),
                handle: snapshot.partition(&topic.topic, p.partition).cloned(),
                topic: topic.topic.clone(),
                partition: p.partition,
                offset: p.fetch_offset,
                max_bytes: p.partition_max_bytes.max(0) as usize,
            });
        }
    }
    drop(snapshot);

    let mut results = Vec::new();
    for _ in 0..MAX_WAIT_ROUNDS {
        // Mark the offsets seen before reading: a commit after this point wakes the wait below.
        for t in targets.iter_mut() {
            if let Some(h) = t.handle.as_mut() {
                h.offsets.borrow_and_update();
            }
        }
        results = read_all(&targets, max_bytes, version, &ctx.metrics).await;
        let total: usize = results.iter().map(|r| r.records.as_ref().map_or(0, Bytes::len)).sum();
        let any_error = results.iter().any(|r| r.error_code != 0);
        if total >= min_bytes || any_error || targets.is_empty() || Instant::now() >= deadline {
            break;
        }
        let mut watches: Vec<_> =
            targets.iter_mut().filter_map(|t| t.handle.as_mut()).map(|h| h.offsets.changed().boxed()).collect();
        if watches.is_empty() {
            break;
        }
        tokio::select! {
            _ = select_all(watches.iter_mut()) => {}
            _ = tokio::time::sleep_until(deadline) => {}
        }
    }

    let mut responses: Vec<FetchableTopicResponse> = Vec::new();
    for (target, mut data) in targets.iter().zip(results) {
        if read_committed {
            data.aborted_transactions = Some(Vec::new());
        }
        match responses.last_mut() {
            Some(last) if last.topic == target.topic => last.partitions.push(data),
            _ => responses
                .push(FetchableTopicResponse::default().with_topic(target.topic.clone()).with_partitions(vec![data])),
        }
    }
    FetchResponse::default().with_responses(responses)
}

/// Reads every partition once, sharing the response's byte budget in order.
/// The first batch of the response is always returned whole so consumers progress.
async fn read_all(targets: &[Target], max_bytes: usize, version: i16, metrics: &Metrics) -> Vec<PartitionData> {
    let mut remaining = max_bytes;
    let mut results = Vec::with_capacity(targets.len());
    for t in targets {
        let data = PartitionData::default()
            .with_partition_index(t.partition)
            .with_high_watermark(-1)
            .with_last_stable_offset(-1)
            .with_log_start_offset(-1);
        match t.route {
            Route::Serve => {}
            Route::Refuse(code) => {
                results.push(data.with_error_code(code));
                continue;
            }
            Route::Preferred(replica) => {
                results.push(data.with_preferred_read_replica(kafka_protocol::messages::BrokerId(replica)));
                continue;
            }
        }
        let Some(handle) = &t.handle else {
            results.push(data.with_error_code(ResponseError::UnknownTopicOrPartition.code()));
            continue;
        };
        let min_one = remaining == max_bytes;
        let read = Read { offset: t.offset, max_bytes: t.max_bytes.min(remaining), min_one };
        let data = match handle.addr.send(read).await {
            Ok(Ok(read)) => {
                remaining = remaining.saturating_sub(read.records.len());
                if !read.records.is_empty() {
                    let label = metrics.topic(&t.topic);
                    metrics.bytes_out.get_or_create(&label).inc_by(read.records.len() as u64);
                    metrics.records_out.get_or_create(&label).inc_by(count_records(&read.records));
                }
                let hw = read.offsets.high_watermark();
                data.with_high_watermark(hw)
                    .with_last_stable_offset(hw)
                    .with_log_start_offset(if version >= 5 { read.offsets.log_start_offset } else { -1 })
                    .with_records(Some(read.records))
            }
            Ok(Err(e)) => data.with_error_code(e.error_code()),
            Err(_) => data.with_error_code(ResponseError::NotLeaderOrFollower.code()),
        };
        results.push(data);
    }
    results
}

/// Records in concatenated stored batches, read from their headers.
fn count_records(mut batches: &[u8]) -> u64 {
    let mut total = 0u64;
    while let Ok(header) = tributary_actors::record_batch::BatchHeader::parse(batches) {
        total += header.record_count.max(0) as u64;
        let len = header.total_len();
        if len == 0 || len > batches.len() {
            break;
        }
        batches = &batches[len..];
    }
    total
}

super::registry::api! {
    Fetch: FetchRequest => FetchResponse, versions 4..=12, access Topic Read,
    |call, request| handle(&call.ctx, request, call.version).await
}
