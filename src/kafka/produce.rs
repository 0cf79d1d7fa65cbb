//! Produce: validate batches on the connection's thread, then hand each
//! partition's batches to its `PartitionActor`, which answers after the group
//! commit. acks=0 gets no response, as in Kafka.
//!
//! Two steps: `start` sends every append at once (queued in the actors in
//! request order), and the future it returns collects the answers. The
//! connection may start the next produce request before this one is answered
//! (pipelining), which keeps order because the appends are already queued.

use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{ProduceRequest, ProduceResponse};
use kafka_protocol::ResponseError;

use tributary_actors::{AppendOutcome, AppendWithReply, PartitionError};

use super::{message_since, RequestContext};

/// Creates missing topics if allowed, then produces.
pub async fn handle(ctx: &RequestContext, req: ProduceRequest, version: i16) -> ProduceResponse {
    if ctx.config.topics.auto_create && matches!(req.acks, -1..=1) && req.transactional_id.is_none() {
        let creations = ctx.config.topics.max_auto_created_per_request;
        // Past its share of creations a topic answers as unknown, and the client retries.
        let unknown = req.topic_data.iter().filter(|t| ctx.broker.metadata().topic(&t.name).is_none());
        for topic in unknown.take(creations) {
            let _ = super::metadata::auto_create(ctx, &topic.name).await;
        }
    }
    start(ctx, req, version).await
}

/// The record bytes a produce request carries.
fn request_bytes(req: &ProduceRequest) -> u64 {
    let partitions = req.topic_data.iter().flat_map(|t| t.partition_data.iter());
    partitions.map(|p| p.records.as_ref().map_or(0, |r| r.len() as u64)).sum()
}

/// Whether `start` can run without creating topics first.
pub fn all_topics_known(ctx: &RequestContext, req: &ProduceRequest) -> bool {
    let snapshot = ctx.broker.metadata();
    req.topic_data.iter().all(|t| snapshot.topic(&t.name).is_some())
}

/// Sends every partition's append now; the returned future gathers the answers.
pub fn start(
    ctx: &RequestContext,
    req: ProduceRequest,
    version: i16,
) -> impl std::future::Future<Output = ProduceResponse> + 'static {
    let acks = req.acks;
    let refusal = if !matches!(acks, -1..=1) {
        Some((ResponseError::InvalidRequiredAcks.code(), format!("acks {acks} is invalid; use -1, 0 or 1")))
    } else if !ctx.disk.admit(request_bytes(&req)) {
        let why = "the broker's disk is nearly full (under storage.min_free_bytes free); delete topics or records to make room";
        Some((ResponseError::KafkaStorageError.code(), why.to_string()))
    } else {
        None
    };

    // Every partition's append is sent before any is awaited, so the
    // partitions of one request commit in parallel.
    let transactional_id: Option<std::sync::Arc<str>> = req.transactional_id.as_ref().map(|id| id.as_str().into());
    let mut pending = Vec::new();
    for topic in req.topic_data {
        let name = topic.name.0.to_string();
        let view = ctx.broker.metadata().topic(&name).cloned();
        for partition in topic.partition_data {
            let index = partition.index;
            let handle = view.as_ref().and_then(|v| usize::try_from(index).ok().and_then(|i| v.partitions.get(i)));
            let outcome = match (&refusal, view.as_ref(), handle) {
                (Some((code, why)), _, _) => Err((*code, why.clone())),
                _ if crate::txn::is_internal(&name) => {
                    Err((ResponseError::InvalidTopicException.code(), format!("{name} is internal: only the broker writes it")))
                }
                (None, Some(view), Some(handle)) => match partition.records.as_ref().map(|r| view.prepare_append(r)) {
                    Some(Ok(mut append)) => {
                        append.acks_all = acks == -1;
                        append.transactional_id = transactional_id.clone();
                        let bytes: usize = append.batches.iter().map(|b| b.bytes.len()).sum();
                        let records: i64 = append.batches.iter().map(|b| b.record_count()).sum();
                        // do_send queues at once (never waits on a full mailbox), so order is kept.
                        let (reply, answer) = tokio::sync::oneshot::channel();
                        handle.addr.do_send(AppendWithReply { append, reply });
                        Ok(Sent { answer, offsets: handle.offsets.clone(), bytes, records })
                    }
                    Some(Err(e)) => Err((e.error_code(), e.to_string())),
                    None => Err((ResponseError::InvalidRecord.code(), "produce request carried null records".into())),
                },
                _ => Err((
                    ResponseError::UnknownTopicOrPartition.code(),
                    format!("unknown topic or partition {name}-{index}"),
                )),
            };
            if let Err((_, why)) = &outcome {
                tracing::debug!(topic = %name, partition = index, reason = %why, "produce refused");
            }
            pending.push((topic.name.clone(), index, outcome));
        }
    }

    // acks=-1 waits for the in-sync replicas at most the request's timeout.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_millis(req.timeout_ms.max(0) as u64);
    let metrics = ctx.metrics.clone();
    async move { answer(pending, deadline, version, &metrics).await }
}

/// An append sent to its partition actor.
struct Sent {
    answer: tokio::sync::oneshot::Receiver<Result<AppendOutcome, PartitionError>>,
    /// The partition's offsets, as its actor last published them.
    offsets: tokio::sync::watch::Receiver<tributary_actors::LogOffsets>,
    bytes: usize,
    records: i64,
}

type Pending = Vec<(kafka_protocol::messages::TopicName, i32, Result<Sent, (i16, String)>)>;

async fn answer(
    pending: Pending,
    deadline: tokio::time::Instant,
    version: i16,
    metrics: &crate::metrics::Metrics,
) -> ProduceResponse {
    let mut responses: Vec<TopicProduceResponse> = Vec::new();
    for (topic, index, outcome) in pending {
        let response = PartitionProduceResponse::default().with_index(index).with_log_append_time_ms(-1);
        let response = match outcome {
            Ok(Sent { answer, offsets, bytes, records }) => match timed(deadline, answer).await {
                Ok(Ok(appended)) => {
                    let label = metrics.topic(&topic);
                    metrics.bytes_in.get_or_create(&label).inc_by(bytes as u64);
                    metrics.records_in.get_or_create(&label).inc_by(records.max(0) as u64);
                    // Appends never move the log start; the actor publishes it when it opens the
                    // log and after every retention or DeleteRecords step, so the watch has it.
                    let log_start = if version >= 5 { offsets.borrow().log_start_offset } else { -1 };
                    response
                        .with_base_offset(appended.base_offset)
                        .with_log_start_offset(log_start)
                        .with_log_append_time_ms(appended.log_append_time)
                }
                Ok(Err(e)) => {
                    tracing::debug!(topic = %topic.0, partition = index, error = %e, "produce failed");
                    response
                    .with_error_code(e.error_code())
                    .with_base_offset(-1)
                    .with_error_message(message_since(version, 8, &e))
                }
                Err(e) => {
                    tracing::debug!(topic = %topic.0, partition = index, code = e.0, reason = %e.1, "produce not answered");
                    response
                    .with_error_code(e.0)
                    .with_base_offset(-1)
                    .with_error_message(message_since(version, 8, e.1))
                }
            },
            Err((code, why)) => {
                response.with_error_code(code).with_base_offset(-1).with_error_message(message_since(version, 8, why))
            }
        };
        match responses.last_mut() {
            Some(last) if last.name == topic => last.partition_responses.push(response),
            _ => responses
                .push(TopicProduceResponse::default().with_name(topic).with_partition_responses(vec![response])),
        }
    }
    // With acks=0 this is built and not sent (`Api::answered`).
    ProduceResponse::default().with_responses(responses)
}

/// An append's answer, or REQUEST_TIMED_OUT at `deadline` (the append may still
/// commit: the producer retries, and idempotence makes the retry harmless).
async fn timed<T>(
    deadline: tokio::time::Instant,
    append: tokio::sync::oneshot::Receiver<T>,
) -> Result<T, (i16, String)> {
    match tokio::time::timeout_at(deadline, append).await {
        Ok(Ok(answer)) => Ok(answer),
        Ok(Err(_)) => Err((ResponseError::NotLeaderOrFollower.code(), "partition restarted before commit".into())),
        Err(_) => Err((ResponseError::RequestTimedOut.code(), "not replicated to the in-sync replicas in time".into())),
    }
}

/// Produce pipelines: a request whose topics all exist has its appends queued
/// at read time, so the connection reads the next produce while this one
/// commits. One that must create topics first runs alone.
pub struct Produce;

impl super::registry::Api for Produce {
    type Request = ProduceRequest;
    type Response = ProduceResponse;
    const KEY: kafka_protocol::messages::ApiKey = kafka_protocol::messages::ApiKey::Produce;
    const VERSIONS: (i16, i16) = (3, 9);
    const ACCESS: Option<super::registry::Access> =
        Some(super::registry::Access::new(super::registry::ResourceType::Topic, super::registry::Operation::Write));

    async fn handle(call: &super::Call, request: ProduceRequest) -> ProduceResponse {
        handle(&call.ctx, request, call.version).await
    }

    fn answered(request: &ProduceRequest) -> bool {
        request.acks != 0
    }

    fn start(
        call: &super::Call,
        request: ProduceRequest,
    ) -> Result<futures::future::LocalBoxFuture<'static, ProduceResponse>, ProduceRequest> {
        if !all_topics_known(&call.ctx, &request) {
            return Err(request);
        }
        let answer = start(&call.ctx, request, call.version);
        Ok(Box::pin(answer))
    }
}
