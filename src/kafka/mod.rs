//! Kafka request handling: decode a frame with `kafka-protocol`, route it to
//! the handler for its API (one file each), encode the response at the
//! version the client asked for.

mod alter_configs;
mod api_versions;
mod create_partitions;
mod create_topics;
mod delete_groups;
mod delete_records;
mod delete_topics;
mod describe_cluster;
mod describe_configs;
mod describe_groups;
mod describe_log_dirs;
mod fetch;
mod find_coordinator;
mod heartbeat;
mod init_producer_id;
mod join_group;
mod leave_group;
mod list_groups;
mod list_offsets;
mod metadata;
mod offset_commit;
mod offset_delete;
mod offset_fetch;
mod produce;
mod sync_group;

#[cfg(test)]
mod fuzz_tests;
#[cfg(test)]
mod version_tests;

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use tributary_actors::Broker;

use crate::config::BrokerConfig;

/// What every handler may use.
pub struct RequestContext {
    pub broker: Broker,
    pub config: Arc<BrokerConfig>,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// `Some` when this broker is part of a cluster.
    pub cluster: Option<crate::cluster::Cluster>,
    /// Bytes of request frames read and not yet answered, over all connections
    /// (limits.max_queued_request_bytes): a reader waits for room before it
    /// reads a frame's body, so many pipelining producers cannot grow memory.
    pub request_memory: Arc<tokio::sync::Semaphore>,
}

impl RequestContext {
    pub fn new(
        broker: Broker,
        config: Arc<BrokerConfig>,
        metrics: Arc<crate::metrics::Metrics>,
        cluster: Option<crate::cluster::Cluster>,
    ) -> RequestContext {
        let request_memory = Arc::new(tokio::sync::Semaphore::new(config.limits.max_queued_request_bytes));
        RequestContext { broker, config, metrics, cluster, request_memory }
    }

    pub fn node_id(&self) -> i32 {
        self.config.broker.node_id
    }

    /// Sends a group request to the local coordinator, after checking (in a
    /// cluster) that this broker coordinates the group: NOT_COORDINATOR if
    /// another does, so a client with a stale answer asks again.
    pub async fn group_request(
        &self,
        group_id: &str,
        create: bool,
        request: tributary_actors::GroupRequest,
    ) -> Result<Option<tributary_actors::GroupAnswer>, i16> {
        if let Some(cluster) = &self.cluster {
            let coordinator = cluster.coordinator_for(group_id)?;
            if coordinator.node_id != cluster.node_id() {
                return Err(kafka_protocol::ResponseError::NotCoordinator.code());
            }
        }
        self.broker.group_request(group_id, create, request).await
    }

    /// In a cluster: `Err(NOT_LEADER_OR_FOLLOWER)` unless this broker leads the
    /// partition (`UNKNOWN_TOPIC_OR_PARTITION` if the cluster has no such partition).
    pub fn check_leader(&self, topic: &str, partition: i32) -> Result<(), i16> {
        let Some(cluster) = &self.cluster else { return Ok(()) };
        match cluster.metadata().partition(topic, partition) {
            None => Err(kafka_protocol::ResponseError::UnknownTopicOrPartition.code()),
            Some(p) if p.leader == Some(cluster.node_id()) => Ok(()),
            Some(_) => Err(kafka_protocol::ResponseError::NotLeaderOrFollower.code()),
        }
    }
}

/// The APIs and version ranges this broker serves, as ApiVersions advertises
/// them. Each is within what `kafka-protocol` can encode; the upper bounds
/// stop before versions that address topics by id only.
pub const SUPPORTED_APIS: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 3, 9),
    (ApiKey::Fetch, 4, 12),
    (ApiKey::ListOffsets, 1, 7),
    (ApiKey::Metadata, 0, 12),
    (ApiKey::ApiVersions, 0, 3),
    (ApiKey::CreateTopics, 2, 7),
    (ApiKey::DeleteTopics, 1, 5),
    (ApiKey::DescribeConfigs, 1, 4),
    (ApiKey::CreatePartitions, 0, 3),
    (ApiKey::FindCoordinator, 0, 4),
    (ApiKey::JoinGroup, 0, 9),
    (ApiKey::SyncGroup, 0, 5),
    (ApiKey::Heartbeat, 0, 4),
    (ApiKey::LeaveGroup, 0, 5),
    (ApiKey::OffsetCommit, 2, 8),
    (ApiKey::OffsetFetch, 1, 7),
    (ApiKey::ListGroups, 0, 4),
    (ApiKey::DescribeGroups, 0, 5),
    (ApiKey::DeleteGroups, 0, 2),
    (ApiKey::OffsetDelete, 0, 0),
    (ApiKey::InitProducerId, 0, 4),
    (ApiKey::AlterConfigs, 0, 2),
    (ApiKey::IncrementalAlterConfigs, 0, 1),
    (ApiKey::DeleteRecords, 0, 2),
    (ApiKey::DescribeCluster, 0, 1),
    (ApiKey::DescribeLogDirs, 1, 4),
];

pub fn supported_range(key: ApiKey) -> Option<(i16, i16)> {
    SUPPORTED_APIS.iter().find(|(k, _, _)| *k == key).map(|(_, min, max)| (*min, *max))
}

/// Why a request could not be answered; the connection is closed with this reason.
#[derive(Debug)]
pub enum RequestError {
    TooShort(usize),
    UnknownApiKey(i16),
    UnsupportedVersion { api: ApiKey, version: i16 },
    Decode { api: ApiKey, version: i16, error: String },
    Encode { api: ApiKey, version: i16, error: String },
}

impl std::fmt::Display for RequestError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RequestError::TooShort(n) => {
                write!(f, "request of {n} bytes is shorter than a request header")
            }
            RequestError::UnknownApiKey(k) => write!(f, "unknown API key {k}"),
            RequestError::UnsupportedVersion { api, version } => {
                write!(f, "{api:?} v{version} is not supported (see ApiVersions)")
            }
            RequestError::Decode { api, version, error } => write!(f, "cannot decode {api:?} v{version}: {error}"),
            RequestError::Encode { api, version, error } => {
                write!(f, "cannot encode {api:?} v{version} response: {error}")
            }
        }
    }
}

/// A decoded request header and the rest of the frame.
pub struct DecodedRequest {
    pub api: ApiKey,
    pub version: i16,
    pub header: RequestHeader,
    pub body: Bytes,
}

/// Reads the request header. ApiVersions at an unknown version is let through
/// (the handler answers it in v0, as Kafka does); other unsupported versions are errors.
pub fn decode_header(mut frame: Bytes) -> Result<DecodedRequest, RequestError> {
    if frame.len() < 8 {
        return Err(RequestError::TooShort(frame.len()));
    }
    let key = i16::from_be_bytes([frame[0], frame[1]]);
    let version = i16::from_be_bytes([frame[2], frame[3]]);
    let api = ApiKey::try_from(key).map_err(|_| RequestError::UnknownApiKey(key))?;
    let supported = supported_range(api).is_some_and(|(min, max)| (min..=max).contains(&version));
    if !supported && api != ApiKey::ApiVersions {
        return Err(RequestError::UnsupportedVersion { api, version });
    }
    // ApiVersions beyond what we know is read with the newest header we know.
    let header_version = api.request_header_version(if supported { version } else { 0 });
    let header = RequestHeader::decode(&mut frame, header_version).map_err(|e| RequestError::Decode {
        api,
        version,
        error: format!("header: {e}"),
    })?;
    Ok(DecodedRequest { api, version, header, body: frame })
}

fn decode_body<T: Decodable>(req: &mut DecodedRequest) -> Result<T, RequestError> {
    T::decode(&mut req.body, req.version).map_err(|e| RequestError::Decode {
        api: req.api,
        version: req.version,
        error: e.to_string(),
    })
}

/// Encodes length prefix, response header and body in one buffer.
fn encode_response<T: Encodable>(req: &DecodedRequest, version: i16, body: &T) -> Result<Bytes, RequestError> {
    let fail = |e: anyhow::Error| RequestError::Encode { api: req.api, version, error: e.to_string() };
    let header = ResponseHeader::default().with_correlation_id(req.header.correlation_id);
    let header_version = req.api.response_header_version(version);
    let size = header.compute_size(header_version).map_err(fail)? + body.compute_size(version).map_err(fail)?;
    let mut buf = BytesMut::with_capacity(4 + size);
    buf.put_i32(size as i32);
    header.encode(&mut buf, header_version).map_err(fail)?;
    body.encode(&mut buf, version).map_err(fail)?;
    debug_assert_eq!(buf.len(), 4 + size, "computed size matches encoded size");
    Ok(buf.freeze())
}

/// Who sent a request, as group membership records it.
pub struct ClientInfo {
    pub client_id: String,
    /// Kafka prints client hosts as "/1.2.3.4".
    pub host: String,
}

/// What `dispatch` made of a frame.
pub enum Dispatch {
    /// A produce request whose appends are already queued in the partition
    /// actors; the future answers it (`None`: acks=0, no response).
    Started(futures::future::LocalBoxFuture<'static, Result<Option<Bytes>, RequestError>>),
    /// Any other request: handle it with `handle_frame` once the requests
    /// before it are answered.
    Serial(Bytes),
}

/// Starts a produce request at once, so the connection can read the next
/// request while this one waits for its commit and replication. Appends are
/// queued in the order the requests arrive, which is what keeps pipelined
/// produce requests in order; responses are written in order by the caller.
pub fn dispatch(ctx: &Arc<RequestContext>, frame: Bytes) -> Dispatch {
    let is_produce = frame.len() >= 2 && i16::from_be_bytes([frame[0], frame[1]]) == ApiKey::Produce as i16;
    if !is_produce {
        return Dispatch::Serial(frame);
    }
    let Ok(mut req) = decode_header(frame.clone()) else { return Dispatch::Serial(frame) };
    let Ok(body) = decode_body::<ProduceRequest>(&mut req) else { return Dispatch::Serial(frame) };
    // Creating a topic waits on the registry (or the controller): take the ordinary path.
    if !produce::all_topics_known(ctx, &body) {
        return Dispatch::Serial(frame);
    }
    let started = std::time::Instant::now();
    let version = req.version;
    let answer = produce::start(ctx, body, version);
    let ctx = ctx.clone();
    Dispatch::Started(Box::pin(async move {
        let response = match answer.await {
            Some(body) => encode_response(&req, version, &body).map(Some),
            None => Ok(None),
        };
        let label = crate::metrics::ApiLabel { api: "Produce".to_string() };
        ctx.metrics.request_seconds.get_or_create(&label).observe(started.elapsed().as_secs_f64());
        response
    }))
}

/// Handles one request frame from `peer_host`. `Ok(None)` means no response is due (produce with acks=0).
pub async fn handle_frame(ctx: &RequestContext, frame: Bytes, peer_host: &str) -> Result<Option<Bytes>, RequestError> {
    let mut req = decode_header(frame)?;
    let started = std::time::Instant::now();
    let api = req.api;
    let answer = route(ctx, &mut req, peer_host).await;
    let label = crate::metrics::ApiLabel { api: format!("{api:?}") };
    ctx.metrics.request_seconds.get_or_create(&label).observe(started.elapsed().as_secs_f64());
    answer
}

async fn route(ctx: &RequestContext, req: &mut DecodedRequest, peer_host: &str) -> Result<Option<Bytes>, RequestError> {
    let v = req.version;
    let response = match req.api {
        ApiKey::ApiVersions => {
            let (version, body) = api_versions::handle(req);
            return encode_response(req, version, &body).map(Some);
        }
        ApiKey::Metadata => {
            let body = metadata::handle(ctx, decode_body(req)?, v).await;
            encode_response(req, v, &body)?
        }
        ApiKey::Produce => match produce::handle(ctx, decode_body(req)?, v).await {
            Some(body) => encode_response(req, v, &body)?,
            None => return Ok(None),
        },
        ApiKey::Fetch => {
            let body = fetch::handle(ctx, decode_body(req)?, v).await;
            encode_response(req, v, &body)?
        }
        ApiKey::ListOffsets => {
            let body = list_offsets::handle(ctx, decode_body(req)?, v).await;
            encode_response(req, v, &body)?
        }
        ApiKey::CreateTopics => {
            let body = create_topics::handle(ctx, decode_body(req)?, v).await;
            encode_response(req, v, &body)?
        }
        ApiKey::DeleteTopics => {
            let body = delete_topics::handle(ctx, decode_body(req)?, v).await;
            encode_response(req, v, &body)?
        }
        ApiKey::CreatePartitions => {
            let body = create_partitions::handle(ctx, decode_body(req)?).await;
            encode_response(req, v, &body)?
        }
        ApiKey::DescribeConfigs => {
            let body = describe_configs::handle(ctx, decode_body(req)?);
            encode_response(req, v, &body)?
        }
        ApiKey::FindCoordinator => {
            let body = find_coordinator::handle(ctx, decode_body(req)?, v);
            encode_response(req, v, &body)?
        }
        ApiKey::JoinGroup => {
            let client = ClientInfo {
                client_id: req.header.client_id.as_ref().map(|c| c.to_string()).unwrap_or_default(),
                host: format!("/{peer_host}"),
            };
            let body = join_group::handle(ctx, decode_body(req)?, v, &client).await;
            encode_response(req, v, &body)?
        }
        ApiKey::SyncGroup => {
            let body = sync_group::handle(ctx, decode_body(req)?, v).await;
            encode_response(req, v, &body)?
        }
        ApiKey::Heartbeat => {
            let body = heartbeat::handle(ctx, decode_body(req)?).await;
            encode_response(req, v, &body)?
        }
        ApiKey::LeaveGroup => {
            let body = leave_group::handle(ctx, decode_body(req)?, v).await;
            encode_response(req, v, &body)?
        }
        ApiKey::OffsetCommit => {
            let body = offset_commit::handle(ctx, decode_body(req)?).await;
            encode_response(req, v, &body)?
        }
        ApiKey::OffsetFetch => {
            let body = offset_fetch::handle(ctx, decode_body(req)?, v).await;
            encode_response(req, v, &body)?
        }
        ApiKey::ListGroups => {
            let body = list_groups::handle(ctx, decode_body(req)?, v).await;
            encode_response(req, v, &body)?
        }
        ApiKey::DescribeGroups => {
            let body = describe_groups::handle(ctx, decode_body(req)?, v).await;
            encode_response(req, v, &body)?
        }
        ApiKey::DeleteGroups => {
            let body = delete_groups::handle(ctx, decode_body(req)?).await;
            encode_response(req, v, &body)?
        }
        ApiKey::OffsetDelete => {
            let body = offset_delete::handle(ctx, decode_body(req)?).await;
            encode_response(req, v, &body)?
        }
        ApiKey::InitProducerId => {
            let body = init_producer_id::handle(ctx, decode_body(req)?, v).await;
            encode_response(req, v, &body)?
        }
        ApiKey::AlterConfigs => {
            let body = alter_configs::handle(ctx, decode_body(req)?).await;
            encode_response(req, v, &body)?
        }
        ApiKey::IncrementalAlterConfigs => {
            let body = alter_configs::handle_incremental(ctx, decode_body(req)?).await;
            encode_response(req, v, &body)?
        }
        ApiKey::DeleteRecords => {
            let body = delete_records::handle(ctx, decode_body(req)?).await;
            encode_response(req, v, &body)?
        }
        ApiKey::DescribeCluster => {
            let body = describe_cluster::handle(ctx, decode_body(req)?, v);
            encode_response(req, v, &body)?
        }
        ApiKey::DescribeLogDirs => {
            let body = describe_log_dirs::handle(ctx, decode_body(req)?, v).await;
            encode_response(req, v, &body)?
        }
        api => return Err(RequestError::UnsupportedVersion { api, version: v }),
    };
    Ok(Some(response))
}

pub fn str_bytes(s: impl Into<String>) -> StrBytes {
    StrBytes::from_string(s.into())
}

pub fn topic_name(s: &str) -> TopicName {
    TopicName(str_bytes(s))
}

/// An error message for responses whose every version carries one.
pub fn message(text: impl std::fmt::Display) -> Option<StrBytes> {
    Some(str_bytes(text.to_string()))
}

/// An error message only where `version >= since`: `kafka-protocol` refuses to
/// encode a field that the chosen version does not have.
pub fn message_since(version: i16, since: i16, text: impl std::fmt::Display) -> Option<StrBytes> {
    (version >= since).then(|| str_bytes(text.to_string()))
}

/// A request context over a fresh actor tree in `data_dir`, for tests. Must be
/// called inside a running actix `System`.
#[cfg(test)]
pub(crate) fn test_context(data_dir: &std::path::Path) -> Arc<RequestContext> {
    test_context_with(data_dir, "")
}

/// As `test_context`, with `overlay` (TOML) over the default config.
#[cfg(test)]
pub(crate) fn test_context_with(data_dir: &std::path::Path, overlay: &str) -> Arc<RequestContext> {
    let mut config = BrokerConfig::load(Some(overlay)).expect("test config");
    config.broker.data_dir = data_dir.to_path_buf();
    let broker = Broker::start(config.storage_config()).expect("actor tree starts");
    Arc::new(RequestContext::new(broker, Arc::new(config), Default::default(), None))
}
