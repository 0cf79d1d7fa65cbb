//! Kafka framing on one TCP connection: a 4-byte big-endian length, then the
//! request. Requests on a connection are handled one at a time and answered in
//! order, as Kafka does; that is what lets clients pipeline produce requests to
//! one partition and still have them appended in order.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::kafka::{self, RequestContext};

/// Why a connection was closed, for the log line that says so.
#[derive(Debug)]
pub enum FrameError {
    TooLarge { size: usize, limit: usize },
    Invalid(i32),
    Io(std::io::Error),
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::TooLarge { size, limit } => {
                write!(f, "request frame of {size} bytes exceeds limits.max_frame_bytes {limit}")
            }
            FrameError::Invalid(len) => write!(f, "request frame length {len} is invalid"),
            FrameError::Io(e) => write!(f, "{e}"),
        }
    }
}

/// Reads one frame. `Ok(None)` is a clean end of stream between frames.
async fn read_frame<R: AsyncReadExt + Unpin>(
    reader: &mut R,
    max_frame_bytes: usize,
) -> Result<Option<Bytes>, FrameError> {
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
        return Err(FrameError::TooLarge { size: len, limit: max_frame_bytes });
    }
    let mut frame = BytesMut::zeroed(len);
    reader.read_exact(&mut frame).await.map_err(FrameError::Io)?;
    Ok(Some(frame.freeze()))
}

/// Serves one client until it disconnects, misbehaves, idles out, or the broker shuts down.
pub async fn serve(stream: TcpStream, peer: SocketAddr, ctx: Arc<RequestContext>, mut shutdown: watch::Receiver<bool>) {
    let _ = stream.set_nodelay(true);
    let (read_half, write_half) = stream.into_split();
    let mut reader = BufReader::with_capacity(64 * 1024, read_half);
    let mut writer = BufWriter::with_capacity(64 * 1024, write_half);
    let limits = &ctx.config.limits;
    let peer_host = peer.ip().to_string();
    let idle = Duration::from_millis(limits.idle_timeout_ms.max(1));
    // Bounded by the idle timeout and shutdown: each turn reads one request or ends.
    loop {
        let frame = tokio::select! {
            frame = read_frame(&mut reader, limits.max_frame_bytes) => frame,
            _ = tokio::time::sleep(idle) => {
                tracing::debug!(%peer, "closing idle connection");
                return;
            }
            _ = shutdown.changed() => return,
        };
        let frame = match frame {
            Ok(Some(frame)) => frame,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(%peer, reason = %e, "closing connection");
                return;
            }
        };
        match kafka::handle_frame(&ctx, frame, &peer_host).await {
            Ok(Some(response)) => {
                let written = async {
                    writer.write_all(&response).await?;
                    writer.flush().await
                };
                if let Err(e) = written.await {
                    tracing::debug!(%peer, error = %e, "write failed");
                    return;
                }
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(%peer, reason = %e, "closing connection");
                return;
            }
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
}
