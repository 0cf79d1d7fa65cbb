//! Kafka request handling: decode a frame's header with `kafka-protocol`, find
//! its API in the registry (one file per request kind, one line each in
//! `registry!` below), pass the authorization hook, and let the registry
//! decode, run and encode it at the version the client asked for.

pub mod capacity;
mod registry;
pub mod response_memory;
mod session;

registry::registry! {
    produce { Produce },
    fetch { Fetch },
    list_offsets { ListOffsets },
    metadata { Metadata },
    api_versions { ApiVersions },
    create_topics { CreateTopics },
    delete_topics { DeleteTopics },
    describe_configs { DescribeConfigs },
    create_partitions { CreatePartitions },
    find_coordinator { FindCoordinator },
    join_group { JoinGroup },
    sync_group { SyncGroup },
    heartbeat { Heartbeat },
    leave_group { LeaveGroup },
    offset_commit { OffsetCommit },
    offset_fetch { OffsetFetch },
    list_groups { ListGroups },
    describe_groups { DescribeGroups },
    delete_groups { DeleteGroups },
    offset_delete { OffsetDelete },
    init_producer_id { InitProducerId },
    alter_configs { AlterConfigs, IncrementalAlterConfigs },
    delete_records { DeleteRecords },
    describe_cluster { DescribeCluster },
    describe_log_dirs { DescribeLogDirs },
    add_partitions_to_txn { AddPartitionsToTxn },
    add_offsets_to_txn { AddOffsetsToTxn },
    end_txn { EndTxn },
    txn_offset_commit { TxnOffsetCommit },
    write_txn_markers { WriteTxnMarkers },
    describe_transactions { DescribeTransactions },
    list_transactions { ListTransactions },
    describe_producers { DescribeProducers },
    sasl_handshake { SaslHandshake },
    sasl_authenticate { SaslAuthenticate },
    describe_user_scram_credentials { DescribeUserScramCredentials },
    alter_user_scram_credentials { AlterUserScramCredentials },
}

pub use registry::{Call, Started};
pub use session::Session;

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
    /// The control plane: every broker is part of a cluster, of one or more.
    pub cluster: crate::cluster::Cluster,
    /// Bytes of request frames read and not yet answered, over all connections
    /// (limits.max_queued_request_bytes): a reader waits for room before it
    /// reads a frame's body, so many pipelining producers cannot grow memory.
    pub request_memory: Arc<tokio::sync::Semaphore>,
    /// The one turn that frames over 1 MiB take to read against `request_memory` (`connection::read_large`).
    pub large_frame_turn: Arc<tokio::sync::Mutex<()>>,
    /// The one authorization hook (`registry::Authorizer`) every request passes.
    pub authorizer: Arc<dyn registry::Authorizer>,
    /// Partition replicas this broker takes (`capacity::partition_cap`).
    pub partition_cap: usize,
    /// Response bytes encoded and not yet taken by clients
    /// (limits.max_queued_response_bytes); a fetch is sized to what is left.
    pub response_memory: Arc<response_memory::ResponseMemory>,
    /// Produce's share of the disk: refused while less than storage.min_free_bytes would be left.
    pub disk: Arc<crate::disk::DiskReserve>,
    /// The transaction coordinators of this broker (`txn::start`, once the context is shared).
    pub txn: std::sync::OnceLock<actix::Addr<crate::txn::TxnRegistry>>,
    /// The SASL mechanisms, answered from the cluster metadata's credentials.
    pub sasl: Arc<crate::security::sasl::Sasl>,
    /// `config.listeners()`, resolved once (the config was checked at load).
    pub listeners: Vec<crate::config::Listener>,
}

impl RequestContext {
    pub fn new(
        broker: Broker,
        config: Arc<BrokerConfig>,
        metrics: Arc<crate::metrics::Metrics>,
        cluster: crate::cluster::Cluster,
    ) -> RequestContext {
        let request_memory = Arc::new(tokio::sync::Semaphore::new(config.limits.max_queued_request_bytes));
        let authorizer = Arc::new(registry::AllowAll);
        let partition_cap = capacity::partition_cap(&config.limits, capacity::fd_limit());
        let response_memory = response_memory::ResponseMemory::new(
            config.limits.max_queued_response_bytes,
            metrics.response_bytes_queued.clone(),
        );
        // The simulation's brokers keep no reserve (their disk is a scratch dir, and the run must replay).
        let disk = crate::disk::DiskReserve::new(0);
        let sasl = crate::security::sasl::Sasl::new(&config.security, cluster.metadata_watch());
        let listeners = config.listeners().expect("listeners are checked at load");
        RequestContext {
            broker,
            config,
            metrics,
            cluster,
            request_memory,
            large_frame_turn: Arc::default(),
            authorizer,
            partition_cap,
            response_memory,
            disk,
            txn: std::sync::OnceLock::new(),
            sasl: Arc::new(sasl),
            listeners,
        }
    }

    /// Starts this broker's transaction coordinators; once, after the context is shared.
    pub fn start_transactions(self: &Arc<Self>) {
        self.start_transactions_over(None);
    }

    /// As `start_transactions`, reaching the other brokers through `dial` (the simulation's network).
    pub fn start_transactions_over(self: &Arc<Self>, dial: Option<crate::txn::peers::Dial>) {
        if self.txn.get().is_none() {
            let registry = crate::txn::start(self, dial);
            let _ = self.txn.set(registry);
        }
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
        let coordinator = self.cluster.coordinator_for(group_id)?;
        if coordinator.node_id != self.cluster.node_id() {
            return Err(kafka_protocol::ResponseError::NotCoordinator.code());
        }
        self.broker.group_request(group_id, create, request).await
    }
}

/// A fresh producer id from this broker's range: node id in the high bits.
pub async fn allocate_producer_id(ctx: &RequestContext) -> Result<i64, i16> {
    match ctx.broker.registry().send(tributary_actors::AllocateProducerId).await {
        Ok(Ok(id)) => Ok(((ctx.node_id() as i64) << 40) | (id & ((1 << 40) - 1))),
        Ok(Err(e)) => {
            tracing::error!(error = %e, "cannot allocate a producer id");
            Err(kafka_protocol::ResponseError::CoordinatorNotAvailable.code())
        }
        Err(_) => Err(kafka_protocol::ResponseError::CoordinatorNotAvailable.code()),
    }
}

/// The one leadership check: a partition's own role, as its actor publishes
/// it with its offsets. The role follows the controller's metadata and this
/// broker's lease, and the actor refuses produce by the same role, so produce,
/// fetch and list offsets agree on who leads. Answers the leader epoch.
pub fn leader_epoch(handle: Option<&tributary_actors::PartitionHandle>) -> Result<i32, i16> {
    let Some(handle) = handle else { return Err(kafka_protocol::ResponseError::UnknownTopicOrPartition.code()) };
    handle.offsets.borrow().leader_epoch.ok_or(kafka_protocol::ResponseError::NotLeaderOrFollower.code())
}

/// As `leader_epoch`, for a client's reads (Fetch, ListOffsets): a leader
/// whose high watermark has not yet reached the log end it took up its
/// leadership at answers OFFSET_NOT_AVAILABLE, as Kafka does (KIP-207). It
/// might otherwise answer a high watermark, and a last stable offset, below
/// what the previous leader already showed (a restarted leader's starts at
/// 0), and a read_committed consumer would see the last stable offset go back.
pub fn readable_epoch(handle: Option<&tributary_actors::PartitionHandle>) -> Result<i32, i16> {
    let epoch = leader_epoch(handle)?;
    let offsets = *handle.expect("leader_epoch checked it").offsets.borrow();
    if offsets.epoch_start_offset > offsets.high_watermark {
        return Err(kafka_protocol::ResponseError::OffsetNotAvailable.code());
    }
    Ok(epoch)
}

/// Where the client of `session` reaches `broker`: its address on the
/// listener the session came in on. In-process and simulated sessions see the
/// first listener's, the one brokers reach each other on.
pub fn endpoint_for<'a>(
    broker: &'a crate::cluster::metadata::BrokerRecord,
    session: &Session,
) -> Option<&'a crate::cluster::metadata::Endpoint> {
    match broker.endpoint(session.listener) {
        Some(endpoint) => Some(endpoint),
        None if !crate::config::SecurityProtocol::ALL.iter().any(|p| p.name() == session.listener) => {
            broker.listeners.first()
        }
        None => None,
    }
}

/// The registry line of `key`, if this broker serves it.
pub fn entry(key: ApiKey) -> Option<&'static registry::Entry> {
    APIS.iter().find(|e| e.key == key)
}

/// Why a request could not be answered; the connection is closed with this reason.
#[derive(Debug)]
pub enum RequestError {
    TooShort(usize),
    UnknownApiKey(i16),
    UnsupportedVersion { api: ApiKey, version: i16 },
    Unauthorized { api: ApiKey },
    /// The authentication gate refused it (`Session::gate`).
    Refused { api: ApiKey, why: session::Refusal },
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
            RequestError::Unauthorized { api } => write!(f, "{api:?} is not authorized for this session"),
            RequestError::Refused { api, why } => write!(f, "{api:?}: {why}"),
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
/// (its handler answers it in v0, as Kafka does); other unsupported versions are errors.
pub fn decode_header(mut frame: Bytes) -> Result<DecodedRequest, RequestError> {
    if frame.len() < 8 {
        return Err(RequestError::TooShort(frame.len()));
    }
    let key = i16::from_be_bytes([frame[0], frame[1]]);
    let version = i16::from_be_bytes([frame[2], frame[3]]);
    let api = ApiKey::try_from(key).map_err(|_| RequestError::UnknownApiKey(key))?;
    let supported = entry(api).is_some_and(|e| e.supports(version));
    if !supported && api != ApiKey::ApiVersions {
        return Err(RequestError::UnsupportedVersion { api, version });
    }
    // ApiVersions beyond what we know is read with the oldest header, which every version starts with.
    let header_version = api.request_header_version(if supported { version } else { 0 });
    let header = RequestHeader::decode(&mut frame, header_version).map_err(|e| RequestError::Decode {
        api,
        version,
        error: format!("header: {e}"),
    })?;
    Ok(DecodedRequest { api, version, header, body: frame })
}

#[cfg(test)]
fn decode_body<T: Decodable>(req: &mut DecodedRequest) -> Result<T, RequestError> {
    T::decode(&mut req.body, req.version).map_err(|e| RequestError::Decode {
        api: req.api,
        version: req.version,
        error: e.to_string(),
    })
}

/// Encodes length prefix, response header and body in one buffer.
fn encode_response<T: Encodable>(
    api: ApiKey,
    correlation_id: i32,
    version: i16,
    body: &T,
) -> Result<Bytes, RequestError> {
    let fail = |e: anyhow::Error| RequestError::Encode { api, version, error: e.to_string() };
    let header = ResponseHeader::default().with_correlation_id(correlation_id);
    let header_version = api.response_header_version(version);
    let size = header.compute_size(header_version).map_err(fail)? + body.compute_size(version).map_err(fail)?;
    let mut buf = BytesMut::with_capacity(4 + size);
    buf.put_i32(size as i32);
    header.encode(&mut buf, header_version).map_err(fail)?;
    body.encode(&mut buf, version).map_err(fail)?;
    debug_assert_eq!(buf.len(), 4 + size, "computed size matches encoded size");
    Ok(buf.freeze())
}

/// The one entry point for a request frame (without its length prefix):
/// header, version check, the authorization hook, then the registry entry,
/// which decodes the body once and starts the request (pipelined kinds) or
/// queues it to run alone. Every transport (sockets, the simulation, tests)
/// comes through here.
pub fn dispatch(ctx: &Arc<RequestContext>, session: &Arc<Session>, frame: Bytes) -> Result<Started, RequestError> {
    // After a SaslHandshake v0 the client's frames are raw SASL tokens.
    if let Some(started) = sasl_authenticate::raw_token(ctx, session, &frame) {
        return Ok(started);
    }
    let req = decode_header(frame)?;
    let entry = entry(req.api).ok_or(RequestError::UnsupportedVersion { api: req.api, version: req.version })?;
    session.gate(req.api).map_err(|why| RequestError::Refused { api: req.api, why })?;
    if let Some(access) = entry.access {
        if !ctx.authorizer.allows(session, req.api, access) {
            return Err(RequestError::Unauthorized { api: req.api });
        }
    }
    let call = Call::new(ctx.clone(), session.clone(), req.header, req.api, req.version);
    (entry.serve)(call, req.body)
}

/// Dispatches one frame and waits for its answer: a connection with a single
/// request in flight (tests).
#[cfg(test)]
pub async fn handle_frame(
    ctx: &Arc<RequestContext>,
    session: &Arc<Session>,
    frame: Bytes,
) -> Result<Option<Bytes>, RequestError> {
    match dispatch(ctx, session, frame)? {
        Started::Pipelined(answer) | Started::Serial(answer) => answer.await,
    }
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

/// A request context over a fresh broker (a cluster of one) in `data_dir`,
/// for tests. Must be called inside a running actix `System`.
#[cfg(test)]
pub(crate) async fn test_context(data_dir: &std::path::Path) -> Arc<RequestContext> {
    test_context_with(data_dir, "").await
}

/// As `test_context`, with `overlay` (TOML) over the default config.
#[cfg(test)]
pub(crate) async fn test_context_with(data_dir: &std::path::Path, overlay: &str) -> Arc<RequestContext> {
    let mut config = BrokerConfig::load(Some(overlay)).expect("test config");
    config.broker.data_dir = data_dir.to_path_buf();
    config.metrics.listen = String::new();
    let ctx = Arc::new(crate::node::start(config, Default::default()).await.expect("broker starts"));
    ctx.start_transactions();
    ctx
}
