//! Fetch with long-poll. The partitions of a request are read concurrently,
//! sharing the response's byte budget in request order. If fewer than
//! `min_bytes` are ready, the request waits on the partitions' offset
//! watches: the produce that commits new data wakes it; `max_wait_ms`
//! (capped by limits.max_fetch_wait_ms) ends it. No polling loop. After a
//! wake-up nothing is read twice: each partition is read on from where its
//! last read ended, so the response grows by the new batches only.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::future::{select_all, FutureExt};
use futures::stream::{FuturesUnordered, StreamExt};
use kafka_protocol::messages::fetch_response::{AbortedTransaction, FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::{FetchRequest, FetchResponse, ProducerId, TopicName};
use kafka_protocol::ResponseError;
use tokio::time::Instant;
use tributary_actors::record_batch::BatchHeader;
use tributary_actors::{LogOffsets, PartitionError, PartitionHandle, Read, ReadOutcome};

use super::response_memory::Charge;
use super::RequestContext;
use crate::metrics::Metrics;

const READ_COMMITTED: i8 = 1;
/// Rounds of "read, then wait for new data": each ends on new data or the deadline.
const MAX_WAIT_ROUNDS: usize = 10_000;
/// Reads of one request sent to partition actors and not yet answered.
const MAX_READS_IN_FLIGHT: usize = 64;

struct Target {
    topic: TopicName,
    partition: i32,
    offset: i64,
    max_bytes: usize,
    /// read_committed: read up to the last stable offset, skipping aborted transactions.
    committed: bool,
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

/// Leaders serve (by the partition's own role: `super::leader_epoch`);
/// followers serve consumers that know KIP-392 (v11+); a leader sends a
/// consumer with `client.rack` to an in-sync follower in its rack.
fn route(
    ctx: &RequestContext,
    handle: Option<&PartitionHandle>,
    (topic, partition): (&str, i32),
    version: i16,
    rack: &str,
) -> Route {
    let cluster = &ctx.cluster;
    let metadata = cluster.metadata();
    let me = cluster.node_id();
    let Some(p) = metadata.partition(topic, partition) else {
        return Route::Refuse(ResponseError::UnknownTopicOrPartition.code());
    };
    let rack_of = |id: &u64| metadata.brokers.get(id).and_then(|b| b.rack.as_deref());
    match super::readable_epoch(handle) {
        Err(code) if code == ResponseError::OffsetNotAvailable.code() => return Route::Refuse(code),
        Err(_) => {}
        Ok(_) => {
            if version >= 11 && !rack.is_empty() && rack_of(&me) != Some(rack) {
                let live = |id: &u64| metadata.brokers.get(id).is_some_and(|b| !b.fenced);
                if let Some(follower) = p.isr.iter().find(|id| **id != me && live(id) && rack_of(id) == Some(rack)) {
                    return Route::Preferred(*follower as i32);
                }
            }
            return Route::Serve;
        }
    }
    if version >= 11 && !rack.is_empty() && p.replicas.contains(&me) {
        return Route::Serve;
    }
    Route::Refuse(ResponseError::NotLeaderOrFollower.code())
}

pub async fn handle(call: &super::Call, req: FetchRequest, version: i16) -> FetchResponse {
    let ctx = &call.ctx;
    let limits = &ctx.config.limits;
    let wait = Duration::from_millis((req.max_wait_ms.max(0) as u64).min(limits.max_fetch_wait_ms));
    let deadline = Instant::now() + wait;
    let max_bytes =
        if req.max_bytes > 0 { (req.max_bytes as usize).min(limits.max_fetch_bytes) } else { limits.max_fetch_bytes };
    let min_bytes = req.min_bytes.max(0) as usize;

    let mut targets = resolve(ctx, req, version);
    let mut parts: Vec<Part> = targets.iter().map(Part::new).collect();
    // Response bytes held: what has been read so far, so a long poll waiting
    // for data holds none. Each round reserves room before it reads.
    let mut held: Option<Charge> = None;
    for _ in 0..MAX_WAIT_ROUNDS {
        // Mark the offsets seen before reading: a commit after this point wakes the wait below.
        for (t, _) in targets.iter_mut().zip(&parts).filter(|(_, p)| !p.done) {
            if let Some(h) = t.handle.as_mut() {
                h.offsets.borrow_and_update();
            }
        }
        let left = max_bytes.saturating_sub(total(&parts));
        // No room before the deadline: answer with what has been read.
        let Some(room) = ctx.response_memory.reserve(left, deadline).await else { break };
        read_round(&targets, &mut parts, room.bytes()).await;
        // The first batch is read even past the room (KIP-74), but nothing more.
        let full = ensure_progress(&targets, &mut parts, max_bytes, room.bytes()).await;
        held = Some(match held {
            Some(held) => held.absorb(room),
            None => room,
        });
        held = held.map(|h| h.resize(total(&parts)));
        let any_error = parts.iter().any(|p| p.error != 0);
        if full || total(&parts) >= min_bytes.min(max_bytes) || any_error || Instant::now() >= deadline {
            break;
        }
        if !wait_for_data(&mut targets, &parts, deadline).await {
            break;
        }
    }
    if let Some(held) = held {
        call.reserve_response(held);
    }
    respond(&targets, parts, version, &ctx.metrics)
}

/// The requested partitions, in request order, with where each is served.
fn resolve(ctx: &RequestContext, req: FetchRequest, version: i16) -> Vec<Target> {
    let snapshot = ctx.broker.metadata();
    let rack = req.rack_id.to_string();
    let committed = req.isolation_level == READ_COMMITTED;
    let mut targets = Vec::new();
    for topic in req.topics {
        for p in topic.partitions {
            let handle = snapshot.partition(&topic.topic, p.partition).cloned();
            targets.push(Target {
                route: route(ctx, handle.as_ref(), (&topic.topic, p.partition), version, &rack),
                handle,
                topic: topic.topic.clone(),
                partition: p.partition,
                offset: p.fetch_offset,
                max_bytes: p.partition_max_bytes.max(0) as usize,
                committed,
            });
        }
    }
    targets
}

/// Waits until a partition still being read gets new offsets, or the
/// deadline. False if none is being read (nothing to wait for).
async fn wait_for_data(targets: &mut [Target], parts: &[Part], deadline: Instant) -> bool {
    let mut watches: Vec<_> = targets
        .iter_mut()
        .zip(parts)
        .filter(|(_, p)| !p.done)
        .filter_map(|(t, _)| t.handle.as_mut())
        .map(|h| h.offsets.changed().boxed())
        .collect();
    if watches.is_empty() {
        return false;
    }
    tokio::select! {
        _ = select_all(watches.iter_mut()) => {}
        _ = tokio::time::sleep_until(deadline) => {}
    }
    true
}

/// Partitions in request order, grouped under their topic as they come.
fn respond(
    targets: &[Target],
    parts: Vec<Part>,
    version: i16,
    metrics: &Metrics,
) -> FetchResponse {
    let mut responses: Vec<FetchableTopicResponse> = Vec::new();
    for (target, part) in targets.iter().zip(parts) {
        let data = part.into_response(version, &target.topic, metrics);
        match responses.last_mut() {
            Some(last) if last.topic == target.topic => last.partitions.push(data),
            _ => responses
                .push(FetchableTopicResponse::default().with_topic(target.topic.clone()).with_partitions(vec![data])),
        }
    }
    FetchResponse::default().with_responses(responses)
}

/// One partition's part of the response, built over the rounds of a long poll.
struct Part {
    partition: i32,
    /// Where the next read starts: the fetch offset, then just past the batches read.
    offset: i64,
    /// What `partition_max_bytes` still allows.
    budget: usize,
    /// Whole stored batches, in offset order, one `Bytes` per read that returned some.
    batches: Vec<Bytes>,
    bytes: usize,
    /// From the partition's latest answer.
    offsets: Option<LogOffsets>,
    error: i16,
    preferred_replica: Option<i32>,
    /// Read no more: refused, failed, blocked, or `partition_max_bytes` used up.
    done: bool,
    /// The last read stopped before a batch larger than its budget.
    blocked: bool,
    /// read_committed: the aborted transactions the batches read overlap.
    aborted: Vec<tributary_actors::AbortedTxn>,
    committed: bool,
}

impl Part {
    /// Partitions this broker does not serve are answered at once, without a read.
    fn new(t: &Target) -> Part {
        let mut part = Part {
            partition: t.partition,
            offset: t.offset,
            budget: t.max_bytes,
            batches: Vec::new(),
            bytes: 0,
            offsets: None,
            error: 0,
            preferred_replica: None,
            done: true,
            blocked: false,
            aborted: Vec::new(),
            committed: t.committed,
        };
        match (t.route, &t.handle) {
            (Route::Refuse(code), _) => part.error = code,
            (Route::Preferred(replica), _) => part.preferred_replica = Some(replica),
            (Route::Serve, None) => part.error = ResponseError::UnknownTopicOrPartition.code(),
            (Route::Serve, Some(_)) => part.done = false,
        }
        part
    }

    /// Takes a read's answer; returns the bytes it added.
    fn take(&mut self, answer: Result<Result<ReadOutcome, PartitionError>, actix::MailboxError>) -> usize {
        let read = match answer {
            Ok(Ok(read)) => read,
            Ok(Err(e)) => return self.fail(e.error_code()),
            Err(_) => return self.fail(ResponseError::NotLeaderOrFollower.code()),
        };
        let len = read.records.len();
        let readable = if self.committed { read.offsets.last_stable_offset } else { read.offsets.high_watermark() };
        self.blocked = len == 0 && self.offset < readable;
        for txn in read.aborted {
            if !self.aborted.contains(&txn) {
                self.aborted.push(txn);
            }
        }
        self.offsets = Some(read.offsets);
        if len > 0 {
            if let Some(last) = batch_spans(&read.records).last() {
                self.offset = self.offset.max(last.last_offset + 1);
            }
            self.budget = self.budget.saturating_sub(len);
            self.bytes += len;
            self.batches.push(read.records);
        }
        // A blocked partition stays blocked: its budget only shrinks.
        self.done |= self.blocked || self.budget == 0;
        len
    }

    /// Batches read in earlier rounds were valid when read: they are
    /// answered, and the error only if there are none.
    fn fail(&mut self, code: i16) -> usize {
        self.done = true;
        self.blocked = false;
        if self.bytes == 0 {
            self.error = code;
        }
        0
    }

    fn into_response(self, version: i16, topic: &str, metrics: &Metrics) -> PartitionData {
        let data = PartitionData::default()
            .with_partition_index(self.partition)
            .with_error_code(self.error)
            .with_high_watermark(-1)
            .with_last_stable_offset(-1)
            .with_log_start_offset(-1);
        if let Some(replica) = self.preferred_replica {
            return data.with_preferred_read_replica(kafka_protocol::messages::BrokerId(replica));
        }
        let Some(offsets) = self.offsets.filter(|_| self.error == 0) else { return data };
        let records = match self.batches.len() {
            0 => Bytes::new(),
            1 => self.batches.into_iter().next().unwrap_or_default(),
            _ => self
                .batches
                .iter()
                .fold(BytesMut::with_capacity(self.bytes), |mut all, b| {
                    all.extend_from_slice(b);
                    all
                })
                .freeze(),
        };
        if !records.is_empty() {
            let label = metrics.topic(topic);
            metrics.bytes_out.get_or_create(&label).inc_by(records.len() as u64);
            let count = batch_spans(&records).iter().map(|b| b.records).sum();
            metrics.records_out.get_or_create(&label).inc_by(count);
        }
        let hw = offsets.high_watermark();
        let aborted = (self.committed && version >= 4).then(|| {
            let mut aborted: Vec<AbortedTransaction> = self
                .aborted
                .iter()
                .map(|t| AbortedTransaction::default().with_producer_id(ProducerId(t.producer_id)).with_first_offset(t.first_offset))
                .collect();
            aborted.sort_by_key(|t| t.first_offset);
            aborted
        });
        data.with_high_watermark(hw)
            .with_last_stable_offset(offsets.last_stable_offset)
            .with_aborted_transactions(aborted)
            .with_log_start_offset(if version >= 5 { offsets.log_start_offset } else { -1 })
            .with_records(Some(records))
    }
}

fn total(parts: &[Part]) -> usize {
    parts.iter().map(|p| p.bytes).sum()
}

async fn read(
    t: &Target,
    offset: i64,
    max_bytes: usize,
    min_one: bool,
) -> Result<Result<ReadOutcome, PartitionError>, actix::MailboxError> {
    match &t.handle {
        Some(handle) => handle.addr.send(Read { offset, max_bytes, min_one, committed: t.committed }).await,
        None => Ok(Err(PartitionError::NotLeader)),
    }
}

/// Reads every partition that is not done once, concurrently (at most
/// `MAX_READS_IN_FLIGHT` at a time), within `budget` bytes in all. A read
/// reserves its share of the budget when it is sent and gives back what it
/// did not use when answered; one whose full share is not free waits for
/// the reads sent before it, so the budget goes to partitions in request
/// order, as if they were read one after another.
async fn read_round(targets: &[Target], parts: &mut [Part], budget: usize) {
    let mut unreserved = budget;
    let mut queue = (0..parts.len()).filter(|&i| !parts[i].done).collect::<Vec<_>>().into_iter().peekable();
    let mut in_flight = FuturesUnordered::new();
    loop {
        while in_flight.len() < MAX_READS_IN_FLIGHT {
            let Some(&i) = queue.peek() else { break };
            let share = parts[i].budget.min(budget);
            if share > unreserved && !in_flight.is_empty() {
                break;
            }
            queue.next();
            let reserved = share.min(unreserved);
            unreserved -= reserved;
            let offset = parts[i].offset;
            in_flight.push(read(&targets[i], offset, reserved, false).map(move |answer| (i, reserved, answer)));
        }
        let Some((i, reserved, answer)) = in_flight.next().await else { break };
        let used = parts[i].take(answer);
        unreserved = (unreserved + reserved).saturating_sub(used);
    }
}

/// As in Kafka, the first batch of a response is returned whole even if it
/// is larger than its budget, so a consumer always progresses: if the first
/// partition (in request order) that has data was blocked by a batch too large,
/// it is read again for that batch. Concurrent reads after it were given
/// budget as if it had none, so the response is then cut back to `max_bytes`.
/// Returns whether batches were dropped to fit (the response is full).
async fn ensure_progress(targets: &[Target], parts: &mut [Part], max_bytes: usize, room: usize) -> bool {
    let Some(first) = parts.iter().position(|p| p.bytes > 0 || p.blocked) else { return false };
    if parts[first].bytes == 0 {
        let part = &mut parts[first];
        let answer = read(&targets[first], part.offset, part.budget.min(max_bytes).min(room), true).await;
        part.take(answer);
        part.done = true;
    }
    total(parts) > max_bytes && cut_to(parts, max_bytes)
}

/// Keeps whole batches in request order while they fit in `max_bytes`
/// (the response's first batch always); drops the rest. Returns whether
/// anything was dropped.
fn cut_to(parts: &mut [Part], max_bytes: usize) -> bool {
    let mut left = max_bytes;
    let mut first = true;
    let mut cut = false;
    for part in parts.iter_mut() {
        let mut kept = Vec::new();
        for chunk in std::mem::take(&mut part.batches) {
            let mut end = 0;
            for Span { len, .. } in batch_spans(&chunk) {
                if cut || (len > left && !first) {
                    cut = true;
                    break;
                }
                left = left.saturating_sub(len);
                first = false;
                end += len;
            }
            if end > 0 {
                kept.push(chunk.slice(..end));
            }
        }
        part.bytes = kept.iter().map(Bytes::len).sum();
        part.batches = kept;
        part.done = true;
    }
    cut
}

/// One stored batch in a read's bytes, from its header.
struct Span {
    len: usize,
    last_offset: i64,
    records: u64,
}

/// The stored batches in `bytes`. A header that does not parse ends the
/// walk, with the rest as one span of no records.
fn batch_spans(mut bytes: &[u8]) -> Vec<Span> {
    let mut spans = Vec::new();
    while !bytes.is_empty() {
        let Ok(header) = BatchHeader::parse(bytes) else {
            spans.push(Span { len: bytes.len(), last_offset: -1, records: 0 });
            break;
        };
        let len = header.total_len().clamp(1, bytes.len());
        spans.push(Span { len, last_offset: header.last_offset(), records: header.record_count.max(0) as u64 });
        bytes = &bytes[len..];
    }
    spans
}

super::registry::api! {
    Fetch: FetchRequest => FetchResponse, versions 4..=12, access Topic Read,
    |call, request| handle(call, request, call.version).await
}
