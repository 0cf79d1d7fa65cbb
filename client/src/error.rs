//! One error type for everything the client does. Each variant is a kind of
//! failure a caller may act on differently (retry, reconnect, give up), so
//! none of them is a string; `is_retriable` is the one place that decides
//! which failures the client retries by itself.

use std::io;
use std::time::Duration;

use kafka_protocol::messages::ApiKey;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use crate::connector::BrokerAddress;

/// A boxed error from `kafka-protocol` (its encoders and decoders return `anyhow`).
pub type Source = Box<dyn std::error::Error + Send + Sync>;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What a Kafka error code was about, so its message can name it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Subject {
    Request(ApiKey),
    Topic(String),
    Partition(String, i32),
    Group(String),
    /// A config resource, as `topic 'orders'` or `broker 1`.
    Config(String),
    /// A transactional id.
    Transaction(String),
    /// A user's SCRAM credentials.
    User(String),
}

impl std::fmt::Display for Subject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Subject::Request(api) => write!(f, "{api:?}"),
            Subject::Topic(topic) => write!(f, "topic '{topic}'"),
            Subject::Partition(topic, partition) => write!(f, "{topic}-{partition}"),
            Subject::Group(group) => write!(f, "group '{group}'"),
            Subject::Config(resource) => write!(f, "configs of {resource}"),
            Subject::Transaction(id) => write!(f, "transactional id '{id}'"),
            Subject::User(user) => write!(f, "user '{user}'"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `host:port` could not be parsed.
    #[error("'{input}' is not a broker address (host:port)")]
    BadAddress { input: String },
    /// A connection to one broker could not be opened (or timed out opening).
    #[error("cannot connect to {address}")]
    Connect {
        address: BrokerAddress,
        #[source]
        source: io::Error,
    },
    /// A TLS trust file that cannot be used.
    #[error("TLS trust file {}: {problem}", path.display())]
    TlsTrust { path: std::path::PathBuf, problem: String },
    /// No broker the client knows (bootstrap or from metadata) could be reached.
    #[error("no broker reachable")]
    Unreachable(#[source] Box<Error>),
    /// Reading or writing an open connection failed.
    #[error("I/O error on the connection to {address}")]
    Io {
        address: BrokerAddress,
        #[source]
        source: io::Error,
    },
    /// The connection closed (by the broker, an error, or a timed-out request
    /// on it) before this request was answered.
    #[error("the connection to {address} closed before {api:?} was answered")]
    Closed { api: ApiKey, address: BrokerAddress },
    /// No answer within the request timeout; the connection is closed, since
    /// what the broker did with the request is unknown.
    #[error("{api:?} to {address}: no answer within {after:?}")]
    Timeout { api: ApiKey, address: BrokerAddress, after: Duration },
    /// A response frame over `Config::max_response_bytes`; the connection is closed.
    #[error("{api:?} response of {size} bytes from {address} is over the limit of {limit} bytes")]
    ResponseTooLarge { api: ApiKey, address: BrokerAddress, size: usize, limit: usize },
    /// A response frame shorter than its header, or answering another request.
    #[error("{api:?} to {address}: response frame is malformed ({problem})")]
    BadFrame { api: ApiKey, address: BrokerAddress, problem: FrameProblem },
    #[error("cannot encode {api:?} v{version}")]
    Encode {
        api: ApiKey,
        version: i16,
        #[source]
        source: Source,
    },
    #[error("cannot decode {api:?} v{version} response")]
    Decode {
        api: ApiKey,
        version: i16,
        #[source]
        source: Source,
    },
    /// A batch to produce must hold at least one record and at most `MAX_BATCH_RECORDS`.
    #[error("a record batch holds 1 to {} records, not {records}", crate::records::MAX_BATCH_RECORDS)]
    BatchSize { records: usize },
    /// A record batch in a fetch response could not be decoded.
    #[error("cannot decode the records of {topic}-{partition}")]
    Records {
        topic: String,
        partition: i32,
        #[source]
        source: Source,
    },
    /// No version of `api` is spoken by both this client and the broker.
    #[error("{address} does not speak {api:?} in versions {client_min}..={client_max} (it has {broker:?})")]
    Unsupported { api: ApiKey, address: BrokerAddress, client_min: i16, client_max: i16, broker: Option<(i16, i16)> },
    /// Metadata names a broker id the client has no address for.
    #[error("metadata names no address for broker {0}")]
    UnknownBroker(i32),
    /// A transactional producer was asked for a step its transaction's state does not allow.
    #[error("transactional id '{id}': {misuse}")]
    Transaction { id: String, misuse: TxnMisuse },
    /// The broker answered with a Kafka error code.
    #[error("{subject}: {error} (Kafka error {}){}", .error.code(), suffix(.message))]
    Kafka { error: ResponseError, subject: Subject, message: Option<String> },
}

/// A step a transactional producer cannot take now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxnMisuse {
    /// `begin` while a transaction is open.
    AlreadyOpen,
    /// A send, offsets or end without an open transaction.
    NotOpen,
    /// `commit` after a send of this transaction failed: only `abort` may end it.
    MustAbort,
}

impl std::fmt::Display for TxnMisuse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TxnMisuse::AlreadyOpen => "a transaction is already open",
            TxnMisuse::NotOpen => "no transaction is open",
            TxnMisuse::MustAbort => "a send of this transaction failed, so it can only be aborted",
        })
    }
}

/// How a response frame was malformed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameProblem {
    /// A length prefix below the 4 bytes of a correlation id.
    TooShort(i32),
    /// The answer carries another correlation id than the oldest request waiting.
    Correlation { expected: i32, got: i32 },
}

impl std::fmt::Display for FrameProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameProblem::TooShort(len) => write!(f, "length {len}"),
            FrameProblem::Correlation { expected, got } => {
                write!(f, "correlation id {got} while {expected} was due")
            }
        }
    }
}

fn suffix(message: &Option<String>) -> String {
    match message {
        Some(m) if !m.is_empty() => format!(": {m}"),
        _ => String::new(),
    }
}

/// Kafka errors after which refreshed metadata (a new leader, a new
/// coordinator, a topic that every broker now knows) may well succeed, or
/// that say to come back shortly (a transaction still completing, an offset
/// commit still pending in one), as Kafka's `RetriableException`s do.
const RETRIABLE: [ResponseError; 14] = [
    ResponseError::OffsetNotAvailable,
    ResponseError::ConcurrentTransactions,
    ResponseError::UnstableOffsetCommit,
    ResponseError::NotLeaderOrFollower,
    ResponseError::LeaderNotAvailable,
    ResponseError::UnknownTopicOrPartition,
    ResponseError::NotCoordinator,
    ResponseError::CoordinatorLoadInProgress,
    ResponseError::CoordinatorNotAvailable,
    ResponseError::RequestTimedOut,
    ResponseError::NotController,
    ResponseError::NotEnoughReplicas,
    ResponseError::FencedLeaderEpoch,
    ResponseError::UnknownLeaderEpoch,
];

impl Error {
    /// Whether the client retries this failure itself (after refreshing
    /// metadata), within `Config::retry`.
    pub fn is_retriable(&self) -> bool {
        match self {
            Error::Connect { .. } | Error::Io { .. } | Error::Closed { .. } | Error::Timeout { .. } => true,
            Error::UnknownBroker(_) => true,
            Error::Kafka { error, .. } => RETRIABLE.contains(error),
            _ => false,
        }
    }

    /// The Kafka error code this failure carries, if it is one.
    pub fn kafka(&self) -> Option<ResponseError> {
        match self {
            Error::Kafka { error, .. } => Some(*error),
            _ => None,
        }
    }
}

/// `Ok` for error code 0, else the Kafka error about `subject`.
pub fn check(code: i16, subject: impl FnOnce() -> Subject) -> Result<()> {
    check_message(code, None, subject)
}

/// As [`check`], with the broker's error message.
pub fn check_message(code: i16, message: Option<&StrBytes>, subject: impl FnOnce() -> Subject) -> Result<()> {
    match ResponseError::try_from_code(code) {
        None => Ok(()),
        Some(error) => Err(Error::Kafka { error, subject: subject(), message: message.map(|m| m.to_string()) }),
    }
}

/// The Kafka error `error` about `subject`, raised by the client itself (a
/// partition metadata does not list, a partition without a leader).
pub fn kafka_error(error: ResponseError, subject: Subject) -> Error {
    Error::Kafka { error, subject, message: None }
}
