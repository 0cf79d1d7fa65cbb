//! ApiVersions: what a client reads first to pick versions for everything else.

use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::{ApiVersionsRequest, ApiVersionsResponse};
use kafka_protocol::protocol::Decodable;
use kafka_protocol::ResponseError;

use super::{DecodedRequest, SUPPORTED_APIS};

/// Returns the version to answer with and the body. A version newer than we
/// know is answered in v0 with UNSUPPORTED_VERSION and our ranges, so the
/// client can retry with one we speak (KIP-511).
pub fn handle(req: &mut DecodedRequest) -> (i16, ApiVersionsResponse) {
    let api_keys: Vec<ApiVersion> = SUPPORTED_APIS
        .iter()
        .map(|(key, min, max)| {
            ApiVersion::default().with_api_key(*key as i16).with_min_version(*min).with_max_version(*max)
        })
        .collect();
    let (_, max) = super::supported_range(req.api).expect("ApiVersions is always supported");
    let readable = req.version <= max && ApiVersionsRequest::decode(&mut req.body, req.version).is_ok();
    if !readable {
        let body = ApiVersionsResponse::default()
            .with_error_code(ResponseError::UnsupportedVersion.code())
            .with_api_keys(api_keys);
        return (0, body);
    }
    (req.version, ApiVersionsResponse::default().with_api_keys(api_keys))
}
