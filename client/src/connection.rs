//! One connection to one broker: requests pipelined, answers matched in order.
//!
//! Kafka answers the requests of a connection in the order they were sent,
//! so a queue of waiters is all the matching needed; the correlation id of
//! each answer is checked against the oldest waiter, and a mismatch closes the
//! connection. Two tasks own the stream's halves: a writer that queues each
//! request's waiter and then writes its frame, and a reader that hands each
//! frame to the oldest waiter. Callers never touch the stream, so a caller
//! that gives up (a timeout, a dropped future) cannot leave a frame half
//! written or half read.
//!
//! Limits: at most `max_in_flight` requests written and not answered (a
//! semaphore slot travels with each waiter), no response frame over
//! `max_response_bytes` (read from its length prefix before allocating), and
//! every request bounded by `request_timeout` (plus the time the broker is
//! asked to wait, for long polls and joins). A timed-out request closes the
//! connection, as Kafka's Java client does: what the broker did with it is
//! unknown, and later answers would be late for their callers too.
//!
//! The tasks are spawned with `spawn_local`, so a connection lives on a tokio
//! `LocalSet` and its streams need not be `Send`.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::{ApiKey, ApiVersionsRequest};
use kafka_protocol::protocol::{Request, StrBytes};
use kafka_protocol::ResponseError;
use tokio::io::{AsyncWriteExt, BufReader, BufWriter};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio::task::AbortHandle;

use crate::connector::{BrokerAddress, ReadHalf, WriteHalf};
use crate::error::{check, Error, FrameProblem, Result, Subject};
use crate::frame::{self, ReadError};
use crate::versions::{Versions, API_VERSIONS_VERSION};

/// What every connection of a client is bounded by.
#[derive(Clone, Debug)]
pub struct ConnectionSettings {
    /// Sent in every request header.
    pub client_id: String,
    /// How long a request may wait for its answer (beyond any wait the
    /// request itself asks the broker for).
    pub request_timeout: Duration,
    /// Requests written and not yet answered, per connection.
    pub max_in_flight: usize,
    /// Largest response frame read.
    pub max_response_bytes: usize,
    /// Highest versions to speak, per API, below what both sides support
    /// (to pin versions, or to test the oldest ones the client implements).
    pub max_versions: Vec<(ApiKey, i16)>,
    /// Authenticate every connection with this, after ApiVersions.
    pub sasl: Option<crate::security::Sasl>,
}

impl Default for ConnectionSettings {
    fn default() -> ConnectionSettings {
        ConnectionSettings {
            client_id: "tributary-client".to_string(),
            request_timeout: Duration::from_secs(30),
            max_in_flight: 16,
            max_response_bytes: 128 << 20,
            max_versions: Vec::new(),
            sasl: None,
        }
    }
}

/// An open connection. Dropping it stops its tasks and fails what is in flight.
pub struct Connection {
    address: BrokerAddress,
    settings: ConnectionSettings,
    versions: Versions,
    next_correlation_id: Cell<i32>,
    /// One permit per request that may be in flight.
    slots: std::sync::Arc<Semaphore>,
    requests: mpsc::Sender<Outgoing>,
    shared: Rc<Shared>,
    tasks: [AbortHandle; 2],
}

/// What the writer and reader tasks share.
#[derive(Default)]
struct Shared {
    /// Written requests that expect an answer, oldest first.
    waiting: RefCell<VecDeque<Waiter>>,
    closed: Cell<bool>,
}

impl Shared {
    /// Marks the connection closed; every waiter still queued sees its reply
    /// dropped, which its caller reports as [`Error::Closed`].
    fn close(&self) {
        self.closed.set(true);
        self.waiting.borrow_mut().clear();
    }
}

/// Why a request got no answer, before the caller adds which API it was.
enum Failure {
    Closed,
    Io(std::io::Error),
    TooLarge(usize),
    Frame(FrameProblem),
}

struct Waiter {
    correlation_id: i32,
    reply: oneshot::Sender<Result<Bytes, Failure>>,
    /// Held until the answer is read: the in-flight limit.
    _slot: OwnedSemaphorePermit,
}

struct Outgoing {
    frame: Bytes,
    /// `false` for produce with acks=0: the reply is sent once it is written.
    answered: bool,
    waiter: Waiter,
}

impl Connection {
    /// Starts the connection's tasks on `streams` and negotiates versions
    /// (ApiVersions), within `settings.request_timeout`.
    pub async fn open(
        address: BrokerAddress,
        (read, write): (ReadHalf, WriteHalf),
        settings: ConnectionSettings,
    ) -> Result<Connection> {
        assert!(settings.max_in_flight > 0, "a connection allows at least one request in flight");
        assert!(settings.max_response_bytes >= 8, "a response holds at least a header");
        let shared = Rc::new(Shared::default());
        let (requests, outgoing) = mpsc::channel(settings.max_in_flight);
        let writer = tokio::task::spawn_local(write_frames(write, outgoing, shared.clone()));
        let reader = tokio::task::spawn_local(read_frames(read, settings.max_response_bytes, shared.clone()));
        let mut connection = Connection {
            address,
            slots: std::sync::Arc::new(Semaphore::new(settings.max_in_flight)),
            settings,
            versions: Versions::default(),
            next_correlation_id: Cell::new(0),
            requests,
            shared,
            tasks: [writer.abort_handle(), reader.abort_handle()],
        };
        connection.versions = connection.negotiate().await?;
        if let Some(sasl) = connection.settings.sasl.clone() {
            sasl.authenticate(&connection).await?;
        }
        Ok(connection)
    }

    pub fn address(&self) -> &BrokerAddress {
        &self.address
    }

    /// Whether the connection can take no more requests (the broker closed
    /// it, it failed, or a request on it timed out).
    pub fn is_closed(&self) -> bool {
        self.shared.closed.get()
    }

    /// The version this connection speaks `api` at.
    pub fn version(&self, api: ApiKey) -> Result<i16> {
        self.versions.get(api, &self.address)
    }

    /// Sends `request` at the negotiated version and waits for its answer.
    pub async fn send<R: Request>(&self, request: &R) -> Result<R::Response> {
        let version = self.version(frame::api_of::<R>())?;
        self.send_at(version, request, Duration::ZERO).await
    }

    /// Sends `request` at `version`; `server_wait` is how long the request
    /// asks the broker to hold it (a fetch's max wait, a join's rebalance
    /// timeout), added to the request timeout.
    pub async fn send_at<R: Request>(&self, version: i16, request: &R, server_wait: Duration) -> Result<R::Response> {
        let frame = self.exchange(version, request, true, server_wait).await?;
        frame::decode_response::<R>(frame, version)
    }

    /// Sends a request the broker does not answer (produce with acks=0);
    /// returns once it is written.
    pub async fn send_unanswered<R: Request>(&self, version: i16, request: &R) -> Result<()> {
        self.exchange(version, request, false, Duration::ZERO).await.map(drop)
    }

    /// Closes the connection: its tasks stop and requests in flight fail.
    pub fn close(&self) {
        self.shared.close();
        self.tasks.iter().for_each(AbortHandle::abort);
    }

    /// ApiVersions at the highest version this client knows; a broker that
    /// lacks it answers in v0 with UNSUPPORTED_VERSION and its ranges (KIP-511).
    async fn negotiate(&self) -> Result<Versions> {
        let request = ApiVersionsRequest::default()
            .with_client_software_name(StrBytes::from_static_str("tributary-client"))
            .with_client_software_version(StrBytes::from_static_str(env!("CARGO_PKG_VERSION")));
        let frame = self.exchange(API_VERSIONS_VERSION, &request, true, Duration::ZERO).await?;
        // The response header is always v0 (a correlation id), and every version's body starts with its error code.
        let code = frame.get(4..6).map_or(0, |b| i16::from_be_bytes([b[0], b[1]]));
        let version = if code == ResponseError::UnsupportedVersion.code() { 0 } else { API_VERSIONS_VERSION };
        let response = frame::decode_response::<ApiVersionsRequest>(frame, version)?;
        check(response.error_code, || Subject::Request(ApiKey::ApiVersions))?;
        Ok(Versions::new(&response.api_keys, &self.settings.max_versions))
    }

    /// Encodes, queues and awaits one request, within its timeout.
    async fn exchange<R: Request>(
        &self,
        version: i16,
        request: &R,
        answered: bool,
        server_wait: Duration,
    ) -> Result<Bytes> {
        let api = frame::api_of::<R>();
        if self.is_closed() {
            return Err(Error::Closed { api, address: self.address.clone() });
        }
        let correlation_id = self.next_correlation_id.get();
        self.next_correlation_id.set(correlation_id.wrapping_add(1));
        let frame = frame::encode_request(request, version, correlation_id, &self.settings.client_id)?;
        let after = self.settings.request_timeout + server_wait;
        match tokio::time::timeout(after, self.round_trip(frame, correlation_id, answered)).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(failure)) => Err(self.error(api, failure)),
            Err(_) => {
                self.close();
                Err(Error::Timeout { api, address: self.address.clone(), after })
            }
        }
    }

    async fn round_trip(&self, frame: Bytes, correlation_id: i32, answered: bool) -> Result<Bytes, Failure> {
        let slot = self.slots.clone().acquire_owned().await.map_err(|_| Failure::Closed)?;
        let (reply, answer) = oneshot::channel();
        let waiter = Waiter { correlation_id, reply, _slot: slot };
        self.requests.send(Outgoing { frame, answered, waiter }).await.map_err(|_| Failure::Closed)?;
        answer.await.unwrap_or(Err(Failure::Closed))
    }

    fn error(&self, api: ApiKey, failure: Failure) -> Error {
        let address = self.address.clone();
        match failure {
            Failure::Closed => Error::Closed { api, address },
            Failure::Io(source) => Error::Io { address, source },
            Failure::TooLarge(size) => {
                Error::ResponseTooLarge { api, address, size, limit: self.settings.max_response_bytes }
            }
            Failure::Frame(problem) => Error::BadFrame { api, address, problem },
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.close();
    }
}

/// Writes queued requests in order, flushing when the queue runs dry. A
/// waiter is queued before its frame is written, so the reader always finds
/// it. Ends when the connection closes or a write fails.
async fn write_frames(write: WriteHalf, mut requests: mpsc::Receiver<Outgoing>, shared: Rc<Shared>) {
    let mut writer = BufWriter::with_capacity(64 * 1024, write);
    // Bounded by the connection: each turn writes one request.
    while let Some(Outgoing { frame, answered, waiter }) = requests.recv().await {
        if shared.closed.get() {
            return;
        }
        let unanswered = if answered {
            shared.waiting.borrow_mut().push_back(waiter);
            None
        } else {
            Some(waiter)
        };
        let mut written = writer.write_all(&frame).await;
        if written.is_ok() && requests.is_empty() {
            written = writer.flush().await;
        }
        if let Err(e) = written {
            let failed = unanswered.or_else(|| shared.waiting.borrow_mut().pop_back());
            if let Some(waiter) = failed {
                let _ = waiter.reply.send(Err(Failure::Io(e)));
            }
            shared.close();
            return;
        }
        if let Some(waiter) = unanswered {
            let _ = waiter.reply.send(Ok(Bytes::new()));
        }
    }
}

/// Hands each response frame to the oldest waiter. Ends when the stream
/// ends or fails, or an answer is malformed, too large, or unasked for;
/// the oldest waiter gets the reason and the connection closes.
async fn read_frames(read: ReadHalf, limit: usize, shared: Rc<Shared>) {
    let mut reader = BufReader::with_capacity(64 * 1024, read);
    // Bounded by the connection: each turn reads one frame.
    loop {
        let read = frame::read_frame(&mut reader, limit).await;
        let Some(waiter) = shared.waiting.borrow_mut().pop_front() else {
            shared.close();
            return;
        };
        let answer = match read {
            Ok(Some(frame)) => match frame::correlation_id(&frame) {
                got if got == waiter.correlation_id => Ok(frame),
                got => Err(Failure::Frame(FrameProblem::Correlation { expected: waiter.correlation_id, got })),
            },
            Ok(None) => Err(Failure::Closed),
            Err(ReadError::Io(e)) => Err(Failure::Io(e)),
            Err(ReadError::TooLarge(size)) => Err(Failure::TooLarge(size)),
            Err(ReadError::TooShort(len)) => Err(Failure::Frame(FrameProblem::TooShort(len))),
        };
        let failed = answer.is_err();
        let _ = waiter.reply.send(answer);
        if failed {
            shared.close();
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::{BufMut, BytesMut};
    use kafka_protocol::messages::api_versions_response::ApiVersion;
    use kafka_protocol::messages::metadata_response::MetadataResponseTopic;
    use kafka_protocol::messages::{
        ApiVersionsResponse, MetadataRequest, MetadataResponse, RequestHeader, ResponseHeader, TopicName,
    };
    use kafka_protocol::protocol::{Decodable, Encodable};
    use tokio::io::{AsyncReadExt, DuplexStream};

    const LIMIT: usize = 4096;

    fn settings() -> ConnectionSettings {
        ConnectionSettings { max_response_bytes: LIMIT, max_in_flight: 4, ..ConnectionSettings::default() }
    }

    /// Reads one request from the broker end: its header and body.
    async fn read_request(broker: &mut DuplexStream) -> (RequestHeader, Bytes) {
        let len = broker.read_i32().await.expect("a request") as usize;
        let mut frame = vec![0u8; len];
        broker.read_exact(&mut frame).await.unwrap();
        let mut frame = Bytes::from(frame);
        let api = ApiKey::try_from(i16::from_be_bytes([frame[0], frame[1]])).unwrap();
        let version = i16::from_be_bytes([frame[2], frame[3]]);
        let header = RequestHeader::decode(&mut frame, api.request_header_version(version)).unwrap();
        (header, frame)
    }

    fn response<T: Encodable>(header: &RequestHeader, correlation_id: i32, body: &T) -> Bytes {
        let api = ApiKey::try_from(header.request_api_key).unwrap();
        let version = header.request_api_version;
        let mut buf = BytesMut::new();
        buf.put_i32(0);
        ResponseHeader::default()
            .with_correlation_id(correlation_id)
            .encode(&mut buf, api.response_header_version(version))
            .unwrap();
        body.encode(&mut buf, version).unwrap();
        let len = (buf.len() - 4) as i32;
        buf[..4].copy_from_slice(&len.to_be_bytes());
        buf.freeze()
    }

    /// Opens a connection over a pipe; the broker end answers ApiVersions.
    async fn open() -> (Connection, DuplexStream) {
        let (client, mut broker) = tokio::io::duplex(1 << 16);
        let (read, write) = tokio::io::split(client);
        let handshake = async {
            let (header, _) = read_request(&mut broker).await;
            assert_eq!(header.request_api_key, ApiKey::ApiVersions as i16);
            let keys = vec![
                ApiVersion::default().with_api_key(ApiKey::ApiVersions as i16).with_max_version(3),
                ApiVersion::default().with_api_key(ApiKey::Metadata as i16).with_max_version(12),
            ];
            let answer = response(&header, header.correlation_id, &ApiVersionsResponse::default().with_api_keys(keys));
            broker.write_all(&answer).await.unwrap();
        };
        let address = BrokerAddress::new("pipe", 1);
        let (connection, ()) =
            tokio::join!(Connection::open(address, (Box::new(read), Box::new(write)), settings()), handshake);
        (connection.expect("connection opens"), broker)
    }

    fn metadata_for(topic: &str) -> MetadataRequest {
        let name = TopicName(StrBytes::from_string(topic.to_string()));
        MetadataRequest::default().with_topics(Some(vec![
            kafka_protocol::messages::metadata_request::MetadataRequestTopic::default().with_name(Some(name)),
        ]))
    }

    fn answered_topic(response: &MetadataResponse) -> String {
        response.topics[0].name.as_ref().unwrap().0.to_string()
    }

    /// Echoes the request's topic name, with `correlation` chosen by the caller.
    fn echo(header: &RequestHeader, mut body: Bytes, correlation_id: i32) -> Bytes {
        let request = MetadataRequest::decode(&mut body, header.request_api_version).unwrap();
        let name = request.topics.unwrap()[0].name.clone();
        let topic = MetadataResponseTopic::default().with_name(name);
        response(header, correlation_id, &MetadataResponse::default().with_topics(vec![topic]))
    }

    #[tokio::test]
    async fn pipelined_requests_are_answered_in_order() {
        tokio::task::LocalSet::new()
            .run_until(async {
                let (connection, mut broker) = open().await;
                assert_eq!(connection.version(ApiKey::Metadata).unwrap(), 12);
                let broker_side = async {
                    // All four are in flight before any is answered.
                    let mut requests = Vec::new();
                    for _ in 0..4 {
                        requests.push(read_request(&mut broker).await);
                    }
                    for (header, body) in requests {
                        broker.write_all(&echo(&header, body, header.correlation_id)).await.unwrap();
                    }
                };
                let requests: Vec<MetadataRequest> = (0..4).map(|i| metadata_for(&format!("t{i}"))).collect();
                let calls = futures::future::join_all(requests.iter().map(|r| connection.send(r)));
                let (answers, ()) = tokio::join!(calls, broker_side);
                let topics: Vec<String> = answers.iter().map(|a| answered_topic(a.as_ref().unwrap())).collect();
                assert_eq!(topics, ["t0", "t1", "t2", "t3"]);
            })
            .await;
    }

    #[tokio::test]
    async fn a_response_over_the_limit_is_a_clear_error_and_closes_the_connection() {
        tokio::task::LocalSet::new()
            .run_until(async {
                let (connection, mut broker) = open().await;
                let broker_side = async {
                    read_request(&mut broker).await;
                    broker.write_all(&((LIMIT + 1) as i32).to_be_bytes()).await.unwrap();
                };
                let request = metadata_for("t");
                let (answer, ()) = tokio::join!(connection.send(&request), broker_side);
                match answer {
                    Err(Error::ResponseTooLarge { api: ApiKey::Metadata, size, limit: LIMIT, .. }) => {
                        assert_eq!(size, LIMIT + 1)
                    }
                    other => panic!("expected ResponseTooLarge, got {other:?}"),
                }
                assert!(connection.is_closed());
                assert!(matches!(connection.send(&request).await, Err(Error::Closed { .. })));
            })
            .await;
    }

    #[tokio::test]
    async fn an_answer_to_another_request_closes_the_connection() {
        tokio::task::LocalSet::new()
            .run_until(async {
                let (connection, mut broker) = open().await;
                let broker_side = async {
                    let (header, body) = read_request(&mut broker).await;
                    broker.write_all(&echo(&header, body, header.correlation_id + 7)).await.unwrap();
                };
                let request = metadata_for("t");
                let (answer, ()) = tokio::join!(connection.send(&request), broker_side);
                assert!(
                    matches!(answer, Err(Error::BadFrame { problem: FrameProblem::Correlation { .. }, .. })),
                    "{answer:?}"
                );
                assert!(connection.is_closed());
            })
            .await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_without_an_answer_times_out_and_closes_the_connection() {
        tokio::task::LocalSet::new()
            .run_until(async {
                let (connection, _broker) = open().await;
                let answer = connection.send(&metadata_for("t")).await;
                assert!(matches!(answer, Err(Error::Timeout { api: ApiKey::Metadata, .. })), "{answer:?}");
                assert!(connection.is_closed());
            })
            .await;
    }
}
