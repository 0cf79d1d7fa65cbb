//! Kafka framing on one connection: a 4-byte big-endian length, then the
//! request. Requests are answered in order, as Kafka does.
//!
//! The loop is generic over the byte stream's two halves, so a TCP socket, a
//! TLS stream, an in-process pipe and the simulation's network all run this
//! same code, with its budget, limits and ordering rules. Each connection has
//! a [`Session`] that every request on it sees.
//!
//! Pipelined kinds (produce) are started as soon as they are read (their
//! appends queued in the partition actors, in arrival order) and the next
//! request is read while they wait for commit and replication, up to
//! `MAX_IN_FLIGHT`. Any other request waits until those before it are
//! answered, then is handled alone. A reader task owns the socket's read half,
//! so no frame is ever half-read when the loop turns to a finished response.
//!
//! Memory: before reading a frame's body the reader takes its size from the
//! broker-wide request budget (`limits.max_queued_request_bytes`), returned
//! when the request is answered. A full budget stops reading, and TCP's flow
//! control stops the clients.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::{FutureExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

use crate::kafka::{self, RequestContext, Session, Started};

/// Why a connection was closed, for the log line that says so.
#[derive(Debug)]
pub enum FrameError {
    TooLarge {
        size: usize,
        limit: usize,
    },
    /// A length prefix that is really the start of a TLS ClientHello or an
    /// HTTP request: a client pointed at the wrong port or protocol.
    WrongProtocol(&'static str),
    Invalid(i32),
    Io(std::io::Error),
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::TooLarge { size, limit } => {
                write!(f, "request frame of {size} bytes exceeds limits.max_frame_bytes {limit}")
            }
            FrameError::WrongProtocol(what) => {
                write!(f, "the client sent {what} on a plaintext Kafka listener (check its security.protocol and port)")
            }
            FrameError::Invalid(len) => write!(f, "request frame length {len} is invalid"),
            FrameError::Io(e) => write!(f, "{e}"),
        }
    }
}

/// Reads one frame. `Ok(None)` is a clean end of stream between frames.
#[cfg(test)]
async fn read_frame<R: AsyncReadExt + Unpin>(
    reader: &mut R,
    max_frame_bytes: usize,
) -> Result<Option<Bytes>, FrameError> {
    match read_frame_len(reader, max_frame_bytes).await? {
        Some(len) => Ok(Some(read_frame_body(reader, len).await?)),
        None => Ok(None),
    }
}

/// Reads a frame's length prefix and checks it. `Ok(None)` is a clean end of stream.
async fn read_frame_len<R: AsyncReadExt + Unpin>(
    reader: &mut R,
    max_frame_bytes: usize,
) -> Result<Option<usize>, FrameError> {
    let mut len_buf = [0u8; 4];
    match reader.read_exact(&mut len_buf).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(FrameError::Io(e)),
    }
    let len = i32::from_be_bytes(len_buf);
    if len <= 0 {
        return Err(FrameError::Invalid(len));
    }
    let len = len as usize;
    if len > max_frame_bytes {
        return Err(wrong_protocol(len_buf).unwrap_or(FrameError::TooLarge { size: len, limit: max_frame_bytes }));
    }
    Ok(Some(len))
}

/// What an oversized length prefix really is, when it is another protocol's
/// first bytes: a TLS handshake record (0x16, version 3.x) or an HTTP method.
fn wrong_protocol(prefix: [u8; 4]) -> Option<FrameError> {
    match prefix {
        [0x16, 0x03, minor, _] if minor <= 0x04 => Some(FrameError::WrongProtocol("a TLS handshake")),
        [b'G', b'E', b'T', b' '] | [b'P', b'O', b'S', b'T'] | [b'H', b'E', b'A', b'D'] | [b'P', b'U', b'T', b' '] => {
            Some(FrameError::WrongProtocol("an HTTP request"))
        }
        _ => None,
    }
}

/// Reads into spare capacity: zeroing a buffer the socket then overwrites cost
/// 5% of the broker's CPU under produce load.
async fn read_frame_body<R: AsyncReadExt + Unpin>(reader: &mut R, len: usize) -> Result<Bytes, FrameError> {
    let mut frame = BytesMut::with_capacity(len);
    // Bounded: each turn reads at least one byte or fails.
    while frame.len() < len {
        let remaining = (len - frame.len()) as u64;
        let n = (&mut *reader).take(remaining).read_buf(&mut frame).await.map_err(FrameError::Io)?;
        if n == 0 {
            return Err(FrameError::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
    }
    assert_eq!(frame.len(), len, "a frame body is read exactly");
    Ok(frame.freeze())
}

/// Produce requests one connection may have started and not yet answered
/// (librdkafka sends up to 5 by default).
const MAX_IN_FLIGHT: usize = 16;

/// What the reader task hands the request loop.
enum Incoming {
    /// A request and its share of the request budget, held until it is answered.
    Frame(Bytes, OwnedSemaphorePermit),
    Closed,
    Idle,
    Failed(FrameError),
}

/// Serves one client until it disconnects, misbehaves, idles out, or the broker shuts down.
pub async fn serve<R, W>(
    read_half: R,
    write_half: W,
    session: Session,
    ctx: Arc<RequestContext>,
    mut shutdown: watch::Receiver<bool>,
) where
    R: AsyncRead + Unpin + 'static,
    W: AsyncWrite + Unpin,
{
    let session = Arc::new(session);
    let peer = session.peer;
    let mut writer = BufWriter::with_capacity(64 * 1024, write_half);
    let limits = &ctx.config.limits;
    let (frames_tx, mut frames) = tokio::sync::mpsc::channel::<Incoming>(1);
    let budget = ctx.request_memory.clone();
    let reader =
        actix::spawn(read_frames(read_half, limits.max_frame_bytes, limits.idle_timeout_ms, budget, frames_tx));
    let mut in_flight = futures::stream::FuturesOrdered::new();
    // Bounded by the idle timeout and shutdown: each turn reads one request or answers one.
    loop {
        let incoming = tokio::select! {
            answered = in_flight.next(), if !in_flight.is_empty() => {
                if !write_answer(&mut writer, &session, answered.expect("not empty")).await {
                    break;
                }
                continue;
            }
            incoming = frames.recv(), if in_flight.len() < MAX_IN_FLIGHT => incoming.unwrap_or(Incoming::Closed),
            _ = shutdown.changed(), if in_flight.is_empty() => break,
        };
        let (frame, permit) = match incoming {
            Incoming::Frame(frame, permit) => (frame, permit),
            Incoming::Closed => break,
            Incoming::Idle => {
                if !in_flight.is_empty() {
                    continue;
                }
                tracing::debug!(%peer, "closing idle connection");
                break;
            }
            Incoming::Failed(e) => {
                let (listener, client) = (session.listener, session.client_software());
                tracing::warn!(%peer, listener, %client, reason = %e, "closing connection");
                break;
            }
        };
        let answer = match kafka::dispatch(&ctx, &session, frame) {
            Ok(Started::Pipelined(answer)) => {
                in_flight.push_back(
                    async move {
                        let answered = answer.await;
                        drop(permit);
                        answered
                    }
                    .boxed_local(),
                );
                continue;
            }
            Ok(Started::Serial(answer)) => answer,
            Err(e) => async move { Err(e) }.boxed_local(),
        };
        // Everything before this request is answered first, in order.
        let mut ok = true;
        while let Some(answered) = in_flight.next().await {
            ok = ok && write_answer(&mut writer, &session, answered).await;
        }
        let answered = answer.await;
        drop(permit);
        if !ok || !write_answer(&mut writer, &session, answered).await {
            break;
        }
    }
    // Requests already started are answered (their appends are queued anyway),
    // as far as the connection still takes writes.
    let mut writable = true;
    while let Some(answered) = in_flight.next().await {
        writable = writable && write_answer(&mut writer, &session, answered).await;
    }
    reader.abort();
}

/// Reads frames into `frames` until the stream ends, fails, or idles.
async fn read_frames(
    read_half: impl AsyncRead + Unpin,
    max_frame_bytes: usize,
    idle_timeout_ms: u64,
    budget: Arc<Semaphore>,
    frames: tokio::sync::mpsc::Sender<Incoming>,
) {
    let mut reader = BufReader::with_capacity(64 * 1024, read_half);
    let idle = Duration::from_millis(idle_timeout_ms.max(1));
    // Bounded by the connection: ends at end of stream, an error, or when the request loop is gone.
    loop {
        let incoming = match tokio::time::timeout(idle, read_frame_len(&mut reader, max_frame_bytes)).await {
            Ok(Ok(Some(len))) => {
                // len <= max_frame_bytes <= the budget (checked at config load), so this is satisfiable.
                let Ok(permit) = budget.clone().acquire_many_owned(len as u32).await else { return };
                match tokio::time::timeout(idle, read_frame_body(&mut reader, len)).await {
                    Ok(Ok(frame)) => Incoming::Frame(frame, permit),
                    Ok(Err(e)) => Incoming::Failed(e),
                    Err(_) => Incoming::Failed(FrameError::Io(std::io::ErrorKind::TimedOut.into())),
                }
            }
            Ok(Ok(None)) => Incoming::Closed,
            Ok(Err(e)) => Incoming::Failed(e),
            Err(_) => Incoming::Idle,
        };
        let last = matches!(incoming, Incoming::Closed | Incoming::Failed(_));
        if frames.send(incoming).await.is_err() || last {
            return;
        }
    }
}

/// Writes one answer; `false` means the connection must close.
async fn write_answer<W: AsyncWriteExt + Unpin>(
    writer: &mut W,
    session: &Session,
    answer: Result<Option<Bytes>, kafka::RequestError>,
) -> bool {
    match answer {
        Ok(Some(response)) => {
            let written = async {
                writer.write_all(&response).await?;
                writer.flush().await
            };
            if let Err(e) = written.await {
                tracing::debug!(peer = %session.peer, error = %e, "write failed");
                return false;
            }
            true
        }
        Ok(None) => true,
        Err(e) => {
            let (listener, client) = (session.listener, session.client_software());
            tracing::warn!(peer = %session.peer, listener, %client, reason = %e, "closing connection");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_are_bounded_and_validated() {
        let mut ok: &[u8] = &[0, 0, 0, 2, 7, 8];
        assert_eq!(read_frame(&mut ok, 16).await.unwrap().unwrap().as_ref(), &[7, 8]);
        let mut big: &[u8] = &[0, 0, 1, 0];
        assert!(matches!(read_frame(&mut big, 16).await, Err(FrameError::TooLarge { size: 256, limit: 16 })));
        let mut negative: &[u8] = &[0xff, 0xff, 0xff, 0xff];
        assert!(matches!(read_frame(&mut negative, 16).await, Err(FrameError::Invalid(-1))));
        let mut truncated: &[u8] = &[0, 0, 0, 9, 1];
        assert!(matches!(read_frame(&mut truncated, 16).await, Err(FrameError::Io(_))));
        let mut empty: &[u8] = &[];
        assert!(read_frame(&mut empty, 16).await.unwrap().is_none());
    }

    /// A TLS ClientHello read as a length is 369 MB; say what it really is.
    #[tokio::test]
    async fn other_protocols_are_named() {
        let mut hello: &[u8] = &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01];
        assert!(matches!(read_frame(&mut hello, 1 << 20).await, Err(FrameError::WrongProtocol("a TLS handshake"))));
        let mut http: &[u8] = b"GET /metrics HTTP/1.1\r\n";
        assert!(matches!(read_frame(&mut http, 1 << 20).await, Err(FrameError::WrongProtocol("an HTTP request"))));
        // Under the frame limit the same bytes are an ordinary length.
        let mut small: &[u8] = &[0x16, 0x03, 0x01, 0x02];
        assert!(matches!(read_frame(&mut small, 1 << 30).await, Err(FrameError::Io(_))));
    }

    /// The second frame's body is not read while the first holds the budget.
    #[tokio::test]
    async fn a_full_request_budget_stops_reading() {
        let (mut client, server) = tokio::io::duplex(1024);
        let (read_half, _write_half) = tokio::io::split(server);
        client.write_all(&[0, 0, 0, 6, 1, 2, 3, 4, 5, 6, 0, 0, 0, 6, 7, 8, 9, 10, 11, 12]).await.unwrap();
        let budget = Arc::new(Semaphore::new(10));
        let (tx, mut frames) = tokio::sync::mpsc::channel(4);
        tokio::spawn(read_frames(read_half, 16, 60_000, budget.clone(), tx));
        let Some(Incoming::Frame(first, permit)) = frames.recv().await else { panic!("first frame") };
        assert_eq!(first.as_ref(), &[1, 2, 3, 4, 5, 6]);
        let waited = tokio::time::timeout(Duration::from_millis(100), frames.recv()).await;
        assert!(waited.is_err(), "second frame read with 4 of its 6 bytes of budget free");
        drop(permit);
        let Some(Incoming::Frame(second, _permit)) = frames.recv().await else { panic!("second frame") };
        assert_eq!(second.as_ref(), &[7, 8, 9, 10, 11, 12]);
    }
}
