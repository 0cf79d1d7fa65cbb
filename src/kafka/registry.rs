//! The API registry: every Kafka request kind is declared once, as an [`Api`]
//! impl in its own file and one line in `registry!` (in `mod.rs`). ApiVersions,
//! version checks, decoding, the authorization hook, per-API metrics, pipelining
//! and response encoding all come from that declaration, so no list is kept in
//! step by hand and every gate (authorization now; quotas and authentication
//! later) is written once, here, for every API.

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;

use super::response_memory::Charge;
use futures::future::LocalBoxFuture;
use kafka_protocol::messages::{ApiKey, RequestHeader};
use kafka_protocol::protocol::{Decodable, Encodable};

use super::session::Session;
use super::{encode_response, RequestContext, RequestError};

/// The kinds of resource Kafka's ACLs name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResourceType {
    Cluster,
    Topic,
    Group,
    TransactionalId,
}

/// The operations Kafka's ACLs grant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    Read,
    Write,
    Create,
    Delete,
    Alter,
    Describe,
    DescribeConfigs,
    AlterConfigs,
    IdempotentWrite,
    ClusterAction,
}

/// What a request needs to be allowed: an operation on a kind of resource
/// (Kafka's per-API authorization table).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Access {
    pub resource: ResourceType,
    pub operation: Operation,
}

impl Access {
    pub const fn new(resource: ResourceType, operation: Operation) -> Access {
        Access { resource, operation }
    }
}

/// The one authorization hook every request passes. Until authentication and
/// ACLs exist every session is allowed everything ([`AllowAll`]).
pub trait Authorizer: Send + Sync {
    fn allows(&self, session: &Session, api: ApiKey, access: Access) -> bool;
}

pub struct AllowAll;

impl Authorizer for AllowAll {
    fn allows(&self, _session: &Session, _api: ApiKey, _access: Access) -> bool {
        true
    }
}

/// Everything a handler may use about the request it answers.
pub struct Call {
    pub ctx: Arc<RequestContext>,
    pub session: Arc<Session>,
    pub header: RequestHeader,
    pub api: ApiKey,
    pub version: i16,
    /// Response bytes the handler reserved before building its answer (a
    /// fetch), charged to the encoded answer instead of a new charge.
    reservation: std::cell::RefCell<Option<Charge>>,
}

impl Call {
    pub fn new(
        ctx: Arc<RequestContext>,
        session: Arc<Session>,
        header: RequestHeader,
        api: ApiKey,
        version: i16,
    ) -> Call {
        Call { ctx, session, header, api, version, reservation: std::cell::RefCell::new(None) }
    }

    /// Hands the answer the response bytes reserved for it.
    pub fn reserve_response(&self, charge: Charge) {
        *self.reservation.borrow_mut() = Some(charge);
    }

    /// The client id the request header carries ("" when absent).
    pub fn client_id(&self) -> String {
        self.header.client_id.as_ref().map(|c| c.to_string()).unwrap_or_default()
    }
}

/// A request's encoded answer (`None`: no response is due, produce acks=0).
pub type Answer = LocalBoxFuture<'static, Result<Option<Bytes>, RequestError>>;

/// How a decoded request runs on its connection.
pub enum Started {
    /// Already started when the frame was read (its effects are queued in
    /// arrival order), so the connection may read and start the next request
    /// while this one is answered.
    Pipelined(Answer),
    /// Runs alone, once every request before it on the connection is answered.
    Serial(Answer),
}

/// One Kafka request kind.
pub trait Api: Sized {
    type Request: Decodable;
    type Response: Encodable;
    const KEY: ApiKey;
    /// Versions advertised in ApiVersions and accepted.
    const VERSIONS: (i16, i16);
    /// What the authorization hook is asked; `None` for requests every client
    /// may send before it is known (ApiVersions).
    const ACCESS: Option<Access>;

    fn handle(call: &Call, request: Self::Request) -> impl Future<Output = Self::Response>;

    /// Whether a response is due (Kafka sends none for produce with acks=0).
    fn answered(_request: &Self::Request) -> bool {
        true
    }

    /// Pipelined kinds start here, at read time, and answer `Ok`; the rest
    /// (and a pipelined kind that must wait for the requests before it) give
    /// the request back to run serially.
    fn start(_call: &Call, request: Self::Request) -> Result<LocalBoxFuture<'static, Self::Response>, Self::Request> {
        Err(request)
    }

    /// Decodes the body and starts or queues the request. ApiVersions
    /// overrides this to answer versions it cannot read (KIP-511).
    fn serve(call: Call, body: Bytes) -> Result<Started, RequestError>
    where
        Self: 'static,
    {
        serve::<Self>(call, body)
    }
}

/// The generic path: decode once, then [`run`].
pub fn serve<A: Api + 'static>(call: Call, mut body: Bytes) -> Result<Started, RequestError> {
    let request = A::Request::decode(&mut body, call.version).map_err(|e| RequestError::Decode {
        api: call.api,
        version: call.version,
        error: e.to_string(),
    })?;
    Ok(run::<A>(call, request))
}

/// Starts a decoded request if its kind pipelines, else queues it; either way
/// the answer is encoded at the request's version and its latency recorded.
pub fn run<A: Api + 'static>(call: Call, request: A::Request) -> Started {
    let answered = A::answered(&request);
    let began = std::time::Instant::now();
    match A::start(&call, request) {
        Ok(started) => Started::Pipelined(Box::pin(async move {
            let response = started.await;
            finish(&call, began, answered.then_some(response))
        })),
        Err(request) => Started::Serial(Box::pin(async move {
            let began = std::time::Instant::now();
            let response = A::handle(&call, request).await;
            finish(&call, began, answered.then_some(response))
        })),
    }
}

/// Answers `call` with `response`, encoded at `call.version`, without a handler.
pub fn answer_with<T: Encodable + 'static>(call: Call, response: T) -> Started {
    Started::Serial(Box::pin(async move { finish(&call, std::time::Instant::now(), Some(response)) }))
}

fn finish<T: Encodable>(
    call: &Call,
    began: std::time::Instant,
    response: Option<T>,
) -> Result<Option<Bytes>, RequestError> {
    let encoded = match response {
        Some(body) => encode_response(call.api, call.header.correlation_id, call.version, &body).map(|bytes| {
            // The answer holds its share of the response budget until the connection drops it.
            let charge = match call.reservation.borrow_mut().take() {
                Some(reserved) => reserved.resize(bytes.len()),
                None => call.ctx.response_memory.charge(bytes.len()),
            };
            Some(charge.attach(bytes))
        }),
        None => Ok(None),
    };
    call.ctx.metrics.observe_request(call.api, began.elapsed());
    encoded
}

/// One registry line: what `ApiVersions` advertises and how to serve the kind.
pub struct Entry {
    pub key: ApiKey,
    pub min: i16,
    pub max: i16,
    pub access: Option<Access>,
    pub serve: fn(Call, Bytes) -> Result<Started, RequestError>,
}

impl Entry {
    pub const fn of<A: Api + 'static>() -> Entry {
        assert!(A::VERSIONS.0 <= A::VERSIONS.1, "a version range is not empty");
        Entry { key: A::KEY, min: A::VERSIONS.0, max: A::VERSIONS.1, access: A::ACCESS, serve: A::serve }
    }

    pub fn supports(&self, version: i16) -> bool {
        (self.min..=self.max).contains(&version)
    }
}

/// Declares the handler modules and the registry from one list: each module
/// with the [`Api`] types it defines.
macro_rules! registry {
    ($($module:ident { $($api:ident),+ $(,)? }),+ $(,)?) => {
        $(mod $module;)+

        /// Every API this broker serves, in the order ApiVersions lists them.
        pub static APIS: &[registry::Entry] = &[$($(registry::Entry::of::<$module::$api>()),+),+];
    };
}
pub(crate) use registry;

/// Declares a request kind's [`Api`] impl in one statement:
/// `api! { Heartbeat: HeartbeatRequest => HeartbeatResponse, versions 0..=4,
/// access Group Read, |call, request| handle(&call.ctx, request).await }`.
/// The type's name is its `ApiKey`; `access none` for requests any client may
/// send unauthenticated.
macro_rules! api {
    ($ty:ident: $req:ident => $resp:ident, versions $lo:literal ..= $hi:literal, access none,
     |$call:ident, $request:ident| $body:expr) => {
        $crate::kafka::registry::api!(@impl $ty, $req, $resp, $lo, $hi, None, |$call, $request| $body);
    };
    ($ty:ident: $req:ident => $resp:ident, versions $lo:literal ..= $hi:literal, access $res:ident $op:ident,
     |$call:ident, $request:ident| $body:expr) => {
        $crate::kafka::registry::api!(@impl $ty, $req, $resp, $lo, $hi,
            Some($crate::kafka::registry::Access::new(
                $crate::kafka::registry::ResourceType::$res,
                $crate::kafka::registry::Operation::$op,
            )),
            |$call, $request| $body);
    };
    (@impl $ty:ident, $req:ident, $resp:ident, $lo:literal, $hi:literal, $access:expr,
     |$call:ident, $request:ident| $body:expr) => {
        pub struct $ty;

        impl $crate::kafka::registry::Api for $ty {
            type Request = kafka_protocol::messages::$req;
            type Response = kafka_protocol::messages::$resp;
            const KEY: kafka_protocol::messages::ApiKey = kafka_protocol::messages::ApiKey::$ty;
            const VERSIONS: (i16, i16) = ($lo, $hi);
            const ACCESS: Option<$crate::kafka::registry::Access> = $access;

            async fn handle($call: &$crate::kafka::Call, $request: Self::Request) -> Self::Response {
                $body
            }
        }
    };
}
pub(crate) use api;
