//! ApiVersions: what a client reads first to pick versions for everything else.

use bytes::Bytes;
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::{ApiKey, ApiVersionsRequest, ApiVersionsResponse};
use kafka_protocol::protocol::Decodable;
use kafka_protocol::ResponseError;

use super::registry::{self, Api, Call, Started};
use super::{RequestError, APIS};

pub struct ApiVersions;

impl Api for ApiVersions {
    type Request = ApiVersionsRequest;
    type Response = ApiVersionsResponse;
    const KEY: ApiKey = ApiKey::ApiVersions;
    const VERSIONS: (i16, i16) = (0, 3);
    const ACCESS: Option<registry::Access> = None;

    async fn handle(call: &Call, request: ApiVersionsRequest) -> ApiVersionsResponse {
        call.session.set_client_software(
            &call.client_id(),
            &request.client_software_name,
            &request.client_software_version,
        );
        ApiVersionsResponse::default().with_api_keys(advertised())
    }

    /// A version newer than we know, or a body we cannot read, is answered in
    /// v0 with UNSUPPORTED_VERSION and our ranges, so the client can retry
    /// with one we speak (KIP-511).
    fn serve(mut call: Call, mut body: Bytes) -> Result<Started, RequestError> {
        let known = super::entry(Self::KEY).is_some_and(|e| e.supports(call.version));
        match known.then(|| ApiVersionsRequest::decode(&mut body, call.version)) {
            Some(Ok(request)) => Ok(registry::run::<Self>(call, request)),
            _ => {
                call.version = 0;
                let refusal = ApiVersionsResponse::default()
                    .with_error_code(ResponseError::UnsupportedVersion.code())
                    .with_api_keys(advertised());
                Ok(registry::answer_with(call, refusal))
            }
        }
    }
}

/// Every registered API with its version range.
fn advertised() -> Vec<ApiVersion> {
    APIS.iter()
        .map(|e| ApiVersion::default().with_api_key(e.key as i16).with_min_version(e.min).with_max_version(e.max))
        .collect()
}
