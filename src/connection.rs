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
//! Memory: once a frame's body starts to arrive, the reader takes the
//! frame's size from the broker-wide request budget
//! (`limits.max_queued_request_bytes`), returned when the request is
//! answered. A full budget stops reading, and TCP's flow control stops the
//! clients. A declared frame whose body does not come holds nothing, and one
//! that comes slowly is cut off ([`Pace`]), so no connection holds the
//! budget for more than a few seconds without sending.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::{FutureExt, StreamExt};
use tokio::io::{
    AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter,
};
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
    /// The body of a `len`-byte frame did not arrive at the pace required.
    TooSlow {
        len: usize,
        received: usize,
    },
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
            FrameError::TooSlow { len, received } => write!(
                f,
                "request body of {len} bytes arrived too slowly ({received} read; \
                 limits.transfer_timeout_ms and limits.min_transfer_bytes_per_sec)"
            ),
            FrameError::Io(e) => write!(f, "{e}"),
        }
    }
}

/// How fast a request body must arrive: its first byte within `grace` of
/// the length prefix, and all of it by `grace` plus its size at
/// `min_bytes_per_sec`. The time spent waiting for the request budget does
/// not count (the broker is the slow one then).
#[derive(Clone, Copy, Debug)]
pub struct Pace {
    pub grace: Duration,
    pub min_bytes_per_sec: u64,
}

impl Pace {
    fn of(limits: &crate::config::LimitsSection) -> Pace {
        Pace {
            grace: Duration::from_millis(limits.transfer_timeout_ms),
            min_bytes_per_sec: limits.min_transfer_bytes_per_sec,
        }
    }

    /// When `received` bytes of a body started at `start` must be in.
    fn due(&self, start: tokio::time::Instant, received: usize) -> tokio::time::Instant {
        let at_floor = Duration::from_secs_f64(received as f64 / self.min_bytes_per_sec as f64);
        start + self.grace + at_floor
    }
}

/// Reads one frame. `Ok(None)` is a clean end of stream between frames.
#[cfg(test)]
async fn read_frame<R: AsyncReadExt + Unpin>(
    reader: &mut R,
    max_frame_bytes: usize,
) -> Result<Option<Bytes>, FrameError> {
    let pace = Pace { grace: Duration::from_secs(60), min_bytes_per_sec: 1 };
    match read_frame_len(reader, max_frame_bytes).await? {
        Some(len) => Ok(Some(read_frame_body(reader, len, pace, tokio::time::Instant::now()).await?)),
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

/// Waits for the first byte of a frame's body, within the pace's grace.
async fn await_body<R: AsyncBufRead + Unpin>(reader: &mut R, len: usize, pace: Pace) -> Result<(), FrameError> {
    match tokio::time::timeout(pace.grace, reader.fill_buf()).await {
        Ok(Ok([])) => Err(FrameError::Io(std::io::ErrorKind::UnexpectedEof.into())),
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(FrameError::Io(e)),
        Err(_) => Err(FrameError::TooSlow { len, received: 0 }),
    }
}

/// Reads a `len`-byte body begun at `start`, at `pace`. Reads into spare
/// capacity: zeroing a buffer the socket then overwrites cost 5% of the
/// broker's CPU under produce load.
async fn read_frame_body<R: AsyncReadExt + Unpin>(
    reader: &mut R,
    len: usize,
    pace: Pace,
    start: tokio::time::Instant,
) -> Result<Bytes, FrameError> {
    let mut frame = BytesMut::with_capacity(len);
    fill_paced(reader, &mut frame, len, len, pace, start).await?;
    assert_eq!(frame.len(), len, "a frame body is read exactly");
    Ok(frame.freeze())
}

/// Reads into `frame` (part of a `len`-byte body begun at `start`) until it
/// holds `target` bytes, each read due by the pace for the bytes before it.
async fn fill_paced<R: AsyncReadExt + Unpin>(
    reader: &mut R,
    frame: &mut BytesMut,
    target: usize,
    len: usize,
    pace: Pace,
    start: tokio::time::Instant,
) -> Result<(), FrameError> {
    // Bounded: each turn reads at least one byte, fails, or is cut off by the pace.
    while frame.len() < target {
        let due = pace.due(start, frame.len());
        let mut limited = (&mut *reader).take((target - frame.len()) as u64);
        let n = match tokio::time::timeout_at(due, limited.read_buf(frame)).await {
            Err(_) => return Err(FrameError::TooSlow { len, received: frame.len() }),
            Ok(read) => read.map_err(FrameError::Io)?,
        };
        if n == 0 {
            return Err(FrameError::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
    }
    Ok(())
}

/// The largest frame a session that has yet to authenticate may send (Kafka's
/// `sasl.server.max.receive.size`): it holds no more of the request budget.
pub const MAX_UNAUTHENTICATED_FRAME: usize = 512 * 1024;

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
    session: Arc<Session>,
    ctx: Arc<RequestContext>,
    mut shutdown: watch::Receiver<bool>,
) where
    R: AsyncRead + Unpin + 'static,
    W: AsyncWrite + Unpin,
{
    let peer = session.peer;
    let mut writer = BufWriter::with_capacity(64 * 1024, write_half);
    let limits = &ctx.config.limits;
    let (frames_tx, mut frames) = tokio::sync::mpsc::channel::<Incoming>(1);
    let budget = Budget { memory: ctx.request_memory.clone(), large_turn: ctx.large_frame_turn.clone() };
    let reading = Reading {
        max_frame_bytes: limits.max_frame_bytes,
        idle: Duration::from_millis(limits.idle_timeout_ms.max(1)),
        pace: Pace::of(limits),
    };
    let reader = actix::spawn(read_frames(read_half, reading, budget, session.clone(), frames_tx));
    let mut in_flight = futures::stream::FuturesOrdered::new();
    // A SASL session that has not authenticated by then is closed.
    let authentication = Duration::from_millis(ctx.config.security.authentication_timeout_ms);
    let unauthenticated = tokio::time::sleep(authentication);
    tokio::pin!(unauthenticated);
    // Bounded by the idle timeout and shutdown: each turn reads one request or answers one.
    loop {
        let incoming = tokio::select! {
            _ = &mut unauthenticated, if session.authenticating() => {
                let (listener, client) = (session.listener, session.client_software());
                tracing::warn!(%peer, listener, %client, "closing connection: not authenticated within security.authentication_timeout_ms");
                break;
            }
            answered = in_flight.next(), if !in_flight.is_empty() => {
                if !write_answer(&mut writer, &session, reading.pace, answered.expect("not empty")).await {
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
                let (listener, client, principal) = (session.listener, session.client_software(), session.principal());
                tracing::warn!(%peer, listener, %client, %principal, reason = %e, "closing connection");
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
            ok = ok && write_answer(&mut writer, &session, reading.pace, answered).await;
        }
        let answered = answer.await;
        drop(permit);
        // After a failed authentication the answer (which says so) is the last.
        if !ok || !write_answer(&mut writer, &session, reading.pace, answered).await || session.failed() {
            break;
        }
    }
    // Nothing more is read: a frame the reader took budget for would never be served.
    reader.abort();
    // Requests already started are answered (their appends are queued anyway),
    // as far as the connection still takes writes.
    let mut writable = true;
    while let Some(answered) = in_flight.next().await {
        writable = writable && write_answer(&mut writer, &session, reading.pace, answered).await;
    }
}

/// The reader's limits.
#[derive(Clone, Copy)]
struct Reading {
    max_frame_bytes: usize,
    /// No frame begun within this long: the connection is idle.
    idle: Duration,
    pace: Pace,
}

/// Reads frames into `frames` until the stream ends, fails, or idles.
async fn read_frames(
    read_half: impl AsyncRead + Unpin,
    limits: Reading,
    budget: Budget,
    session: Arc<Session>,
    frames: tokio::sync::mpsc::Sender<Incoming>,
) {
    let mut reader = BufReader::with_capacity(64 * 1024, read_half);
    // Bounded by the connection: ends at end of stream, an error, or when the request loop is gone.
    loop {
        let max_frame = match session.authenticating() {
            true => limits.max_frame_bytes.min(MAX_UNAUTHENTICATED_FRAME),
            false => limits.max_frame_bytes,
        };
        let incoming = match tokio::time::timeout(limits.idle, read_frame_len(&mut reader, max_frame)).await {
                Ok(Ok(Some(len))) => match {
                    // In hand from its length on, so a connection sending a body is not idle.
                    session.request_started();
                    read_paced(&mut reader, len, limits.pace, &budget).await
                } {
                    Ok(Some(frame)) => frame,
                    Ok(None) => return,
                    Err(e) => Incoming::Failed(e),
                },
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

/// Frames up to this size take their whole size of the budget at their
/// first body byte; larger ones take it as their bytes arrive, one at a time
/// broker-wide (standard clients send requests of about 1 MB).
const LARGE_FRAME: usize = 1 << 20;

/// The request budget and the turn large frames take to read against it.
#[derive(Clone)]
pub struct Budget {
    pub memory: Arc<Semaphore>,
    pub large_turn: Arc<tokio::sync::Mutex<()>>,
}

/// Reads a `len`-byte body once it starts to arrive, holding its share of
/// the budget from then on. `Ok(None)`: the budget is gone (shutdown).
async fn read_paced<R: AsyncBufRead + AsyncRead + Unpin>(
    reader: &mut R,
    len: usize,
    pace: Pace,
    budget: &Budget,
) -> Result<Option<Incoming>, FrameError> {
    await_body(reader, len, pace).await?;
    if len > LARGE_FRAME {
        return read_large(reader, len, pace, budget).await;
    }
    // len <= max_frame_bytes <= the budget (checked at config load), so this is satisfiable.
    let Ok(permit) = budget.memory.clone().acquire_many_owned(len as u32).await else { return Ok(None) };
    let frame = read_frame_body(reader, len, pace, tokio::time::Instant::now()).await?;
    Ok(Some(Incoming::Frame(frame, permit)))
}

/// A large body, read in `LARGE_FRAME` steps, each taken from the budget
/// before it is read: a large frame holds only what it has been sent, so one
/// sent slowly cannot hold the budget it has not used. Only one large frame
/// reads at a time, so partly read frames never wait on each other for the
/// budget (which small requests keep moving). Waiting does not count
/// against the pace.
async fn read_large<R: AsyncRead + Unpin>(
    reader: &mut R,
    len: usize,
    pace: Pace,
    budget: &Budget,
) -> Result<Option<Incoming>, FrameError> {
    let _turn = budget.large_turn.lock().await;
    let mut start = tokio::time::Instant::now();
    let mut frame = BytesMut::with_capacity(len);
    let mut held: Option<OwnedSemaphorePermit> = None;
    // Bounded by the frame: each turn takes and reads one step.
    while frame.len() < len {
        let step = (len - frame.len()).min(LARGE_FRAME);
        let waiting = tokio::time::Instant::now();
        let Ok(more) = budget.memory.clone().acquire_many_owned(step as u32).await else { return Ok(None) };
        start += waiting.elapsed();
        match held.as_mut() {
            Some(held) => held.merge(more),
            None => held = Some(more),
        }
        let target = frame.len() + step;
        fill_paced(reader, &mut frame, target, len, pace, start).await?;
    }
    let held = held.expect("a large frame holds at least one step");
    assert_eq!(held.num_permits(), len, "a frame holds exactly its size");
    Ok(Some(Incoming::Frame(frame.freeze(), held)))
}

/// Bytes written to the stream at a time, each with its own deadline.
const WRITE_CHUNK: usize = 64 << 10;

/// Writes and flushes `response` at `pace`: each chunk must be taken by the
/// time the bytes before it are due. `Ok(false)`: the client fell behind.
async fn write_paced<W: AsyncWriteExt + Unpin>(writer: &mut W, response: &[u8], pace: Pace) -> std::io::Result<bool> {
    let start = tokio::time::Instant::now();
    let mut written = 0;
    // Bounded by the response: each turn writes one chunk or gives up.
    for chunk in response.chunks(WRITE_CHUNK) {
        let due = pace.due(start, written + chunk.len());
        match tokio::time::timeout_at(due, writer.write_all(chunk)).await {
            Ok(result) => result?,
            Err(_) => return Ok(false),
        }
        written += chunk.len();
    }
    match tokio::time::timeout_at(pace.due(start, written), writer.flush()).await {
        Ok(result) => result.map(|()| true),
        Err(_) => Ok(false),
    }
}

/// Marks a request answered when dropped, after its answer is written.
struct Answered<'a>(&'a Session);

impl Drop for Answered<'_> {
    fn drop(&mut self) {
        self.0.request_answered();
    }
}

/// Writes one answer; `false` means the connection must close.
async fn write_answer<W: AsyncWriteExt + Unpin>(
    writer: &mut W,
    session: &Session,
    pace: Pace,
    answer: Result<Option<Bytes>, kafka::RequestError>,
) -> bool {
    // Out of hand once written (or failed), so a client taking a large answer is not idle.
    let _answered = Answered(session);
    match answer {
        Ok(Some(response)) => {
            // A client that does not take its answer at the pace holds its
            // share of the response budget no longer than that.
            match write_paced(writer, &response, pace).await {
                Ok(true) => true,
                Err(e) => {
                    tracing::debug!(peer = %session.peer, error = %e, "write failed");
                    false
                }
                Ok(false) => {
                    let (listener, client) = (session.listener, session.client_software());
                    tracing::warn!(peer = %session.peer, listener, %client, bytes = response.len(),
                        "closing connection: the client did not take its response (limits.transfer_timeout_ms and limits.min_transfer_bytes_per_sec)");
                    false
                }
            }
        }
        Ok(None) => true,
        Err(e) => {
            let (listener, client, principal) = (session.listener, session.client_software(), session.principal());
            tracing::warn!(peer = %session.peer, listener, %client, %principal, reason = %e, "closing connection");
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
        let reading = Reading {
            max_frame_bytes: 16,
            idle: Duration::from_secs(60),
            pace: Pace { grace: Duration::from_secs(60), min_bytes_per_sec: 1 },
        };
        tokio::spawn(read_frames(read_half, reading, shared(&budget), session(), tx));
        let Some(Incoming::Frame(first, permit)) = frames.recv().await else { panic!("first frame") };
        assert_eq!(first.as_ref(), &[1, 2, 3, 4, 5, 6]);
        let waited = tokio::time::timeout(Duration::from_millis(100), frames.recv()).await;
        assert!(waited.is_err(), "second frame read with 4 of its 6 bytes of budget free");
        drop(permit);
        let Some(Incoming::Frame(second, _permit)) = frames.recv().await else { panic!("second frame") };
        assert_eq!(second.as_ref(), &[7, 8, 9, 10, 11, 12]);
    }

    fn shared(memory: &Arc<Semaphore>) -> Budget {
        Budget { memory: memory.clone(), large_turn: Arc::default() }
    }

    fn session() -> Arc<Session> {
        Arc::new(Session::new("127.0.0.1:4000".parse().unwrap(), "PLAINTEXT"))
    }

    /// A large frame takes the budget as its bytes arrive: half sent, it
    /// holds one step, not its size.
    #[tokio::test(start_paused = true)]
    async fn a_large_frame_holds_only_what_it_was_sent() {
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let (read_half, _write_half) = tokio::io::split(server);
        let memory = Arc::new(Semaphore::new(8 << 20));
        let (tx, mut frames) = tokio::sync::mpsc::channel(4);
        let reading = Reading { max_frame_bytes: 8 << 20, ..paced(5_000, 1 << 20) };
        tokio::spawn(read_frames(read_half, reading, shared(&memory), session(), tx));
        let len = 3 << 20;
        client.write_all(&(len as u32).to_be_bytes()).await.unwrap();
        let writer = tokio::spawn(async move {
            let half = vec![9u8; len / 2];
            client.write_all(&half).await.unwrap();
            tokio::time::sleep(Duration::from_secs(2)).await;
            client.write_all(&half).await.unwrap();
            client
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        let held = (8 << 20) - memory.available_permits();
        assert!(held <= 2 << 20, "{held} bytes held for 1.5 MiB sent");
        let Some(Incoming::Frame(frame, permit)) = frames.recv().await else { panic!("the large frame") };
        assert_eq!((frame.len(), permit.num_permits()), (len, len));
        drop(writer);
    }

    fn paced(grace_ms: u64, min_bytes_per_sec: u64) -> Reading {
        Reading {
            max_frame_bytes: 1 << 20,
            idle: Duration::from_secs(600),
            pace: Pace { grace: Duration::from_millis(grace_ms), min_bytes_per_sec },
        }
    }

    /// A declared frame whose body never comes holds none of the budget,
    /// and the connection is cut off after the grace.
    #[tokio::test(start_paused = true)]
    async fn a_declared_frame_without_a_body_holds_no_budget() {
        let (mut client, server) = tokio::io::duplex(1024);
        let (read_half, _write_half) = tokio::io::split(server);
        client.write_all(&(1u32 << 19).to_be_bytes()).await.unwrap();
        let budget = Arc::new(Semaphore::new(1 << 20));
        let (tx, mut frames) = tokio::sync::mpsc::channel(4);
        tokio::spawn(read_frames(read_half, paced(5_000, 1 << 20), shared(&budget), session(), tx));
        tokio::time::sleep(Duration::from_millis(4_900)).await;
        assert_eq!(budget.available_permits(), 1 << 20, "nothing taken before the body comes");
        let started = tokio::time::Instant::now();
        let Some(Incoming::Failed(FrameError::TooSlow { received: 0, .. })) = frames.recv().await else {
            panic!("cut off for sending no body")
        };
        assert!(started.elapsed() <= Duration::from_millis(200), "cut off at the grace");
    }

    /// A body that trickles in is cut off once it falls behind the floor.
    #[tokio::test(start_paused = true)]
    async fn a_trickling_body_is_cut_off() {
        let (mut client, server) = tokio::io::duplex(1024);
        let (read_half, _write_half) = tokio::io::split(server);
        let budget = Arc::new(Semaphore::new(1 << 20));
        let (tx, mut frames) = tokio::sync::mpsc::channel(4);
        tokio::spawn(read_frames(read_half, paced(1_000, 100), shared(&budget), session(), tx));
        client.write_all(&[0, 0, 3, 232, 1]).await.unwrap(); // 1000 bytes declared, one sent
        let sent = tokio::spawn(async move {
            for _ in 0..999 {
                tokio::time::sleep(Duration::from_millis(500)).await;
                if client.write_all(&[1]).await.is_err() {
                    return;
                }
            }
        });
        let started = tokio::time::Instant::now();
        let Some(Incoming::Failed(FrameError::TooSlow { len: 1000, received })) = frames.recv().await else {
            panic!("cut off for trickling")
        };
        assert!(received < 10, "{received} bytes read before the cut");
        assert!(started.elapsed() < Duration::from_secs(5), "cut off after {:?}", started.elapsed());
        sent.abort();
        // A body at the floor's pace or faster is read whole.
        let (mut client, server) = tokio::io::duplex(1024);
        let (read_half, _write_half) = tokio::io::split(server);
        let (tx, mut frames) = tokio::sync::mpsc::channel(4);
        tokio::spawn(read_frames(read_half, paced(1_000, 100), shared(&budget), session(), tx));
        client.write_all(&[0, 0, 0, 200]).await.unwrap();
        for _ in 0..20 {
            client.write_all(&[7; 10]).await.unwrap();
            tokio::time::sleep(Duration::from_millis(90)).await;
        }
        let Some(Incoming::Frame(frame, _permit)) = frames.recv().await else { panic!("read at the floor") };
        assert_eq!(frame.len(), 200);
    }
}
