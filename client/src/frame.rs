//! Kafka framing: a 4-byte big-endian length, then a header and a body.
//! Encoding and decoding are pure functions; reading a frame is the one
//! place that bounds a response's size before allocating for it.

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Request, StrBytes};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::error::{Error, Result};

/// The API key of request type `R`.
pub fn api_of<R: Request>() -> ApiKey {
    ApiKey::try_from(R::KEY).expect("kafka-protocol's request types have known keys")
}

/// A whole request frame, length prefix included.
pub fn encode_request<R: Request>(request: &R, version: i16, correlation_id: i32, client_id: &str) -> Result<Bytes> {
    let api = api_of::<R>();
    let fail = |e: anyhow::Error| Error::Encode { api, version, source: e.into() };
    let header = RequestHeader::default()
        .with_request_api_key(R::KEY)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(StrBytes::from_string(client_id.to_string())));
    let header_version = R::header_version(version);
    let size = header.compute_size(header_version).map_err(fail)? + request.compute_size(version).map_err(fail)?;
    let mut frame = BytesMut::with_capacity(4 + size);
    frame.put_i32(i32::try_from(size).map_err(|e| Error::Encode { api, version, source: e.into() })?);
    header.encode(&mut frame, header_version).map_err(fail)?;
    request.encode(&mut frame, version).map_err(fail)?;
    assert_eq!(frame.len(), 4 + size, "a request encodes to its computed size");
    Ok(frame.freeze())
}

/// Decodes a response frame (without its length prefix) to request `R` at `version`.
pub fn decode_response<R: Request>(mut frame: Bytes, version: i16) -> Result<R::Response> {
    let api = api_of::<R>();
    let fail = |e: anyhow::Error| Error::Decode { api, version, source: e.into() };
    ResponseHeader::decode(&mut frame, <R::Response as HeaderVersion>::header_version(version)).map_err(fail)?;
    R::Response::decode(&mut frame, version).map_err(fail)
}

/// The correlation id every response header starts with.
pub fn correlation_id(frame: &[u8]) -> i32 {
    i32::from_be_bytes(frame[..4].try_into().expect("a frame holds a correlation id"))
}

/// Why a response frame could not be read.
#[derive(Debug)]
pub enum ReadError {
    /// The length prefix is under the 4 bytes of a correlation id.
    TooShort(i32),
    TooLarge(usize),
    Io(std::io::Error),
}

/// Reads one frame's body. `Ok(None)`: the stream ended between frames.
pub async fn read_frame<R: AsyncRead + Unpin>(reader: &mut R, limit: usize) -> Result<Option<Bytes>, ReadError> {
    let mut prefix = [0u8; 4];
    match reader.read_exact(&mut prefix).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(ReadError::Io(e)),
    }
    let len = i32::from_be_bytes(prefix);
    if len < 4 {
        return Err(ReadError::TooShort(len));
    }
    let len = len as usize;
    if len > limit {
        return Err(ReadError::TooLarge(len));
    }
    let mut frame = BytesMut::with_capacity(len);
    // Bounded: each turn reads at least one byte or fails.
    while frame.len() < len {
        let remaining = (len - frame.len()) as u64;
        let n = (&mut *reader).take(remaining).read_buf(&mut frame).await.map_err(ReadError::Io)?;
        if n == 0 {
            return Err(ReadError::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
    }
    assert_eq!(frame.len(), len, "a frame is read exactly");
    Ok(Some(frame.freeze()))
}
