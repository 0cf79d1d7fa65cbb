//! The Kafka listeners: accept connections up to `limits.max_connections` (over
//! all listeners) and run each on the system's event loop until shutdown. A TLS
//! listener's connections are wrapped in TLS first; a SASL listener's sessions
//! must authenticate before anything else (`Session::gate`).
//!
//! Shutdown is designed in: on SIGINT/SIGTERM the listener stops accepting,
//! every connection finishes the request it is on and closes, and after at
//! most `limits.shutdown_grace_secs` the actor system stops, flushing logs.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::config::Listener;
use crate::connection;
use crate::kafka::{RequestContext, Session};
use crate::log_throttle::Throttle;
use crate::security::tls::Tls;
use crate::security::Principal;
/// A full broker closes its longest-idle connection for a new one, if that
/// one has had no request in hand for this long.
const EVICTABLE_AFTER: Duration = Duration::from_secs(5);

pub struct Server {
    bound: Vec<Bound>,
    tls: Option<Arc<Tls>>,
    ctx: Arc<RequestContext>,
}

/// The open connections: counted per client address (`max_connections_per_ip`)
/// and in all (`max_connections`), each with its session (to find the
/// longest-idle one) and its own close signal.
#[derive(Default)]
struct Open {
    next_id: u64,
    connections: BTreeMap<u64, OpenConnection>,
    per_ip: HashMap<IpAddr, usize>,
}

struct OpenConnection {
    session: Arc<Session>,
    close: watch::Sender<bool>,
    /// Told to close to make room; it no longer counts against `max_connections`.
    evicted: bool,
}

/// Why a new connection was refused.
enum Refused {
    PerIp(usize),
    Full(usize),
}

impl Open {
    /// Admits a connection from `peer`, closing the longest-idle one if the
    /// broker is full; its id and close signal, or why it is refused.
    fn admit(
        &mut self,
        session: &Arc<Session>,
        max_total: usize,
        max_per_ip: usize,
    ) -> Result<(u64, watch::Receiver<bool>), Refused> {
        let ip = session.peer.ip();
        let from_ip = self.per_ip.get(&ip).copied().unwrap_or(0);
        if from_ip >= max_per_ip {
            return Err(Refused::PerIp(max_per_ip));
        }
        let counted = self.connections.values().filter(|c| !c.evicted).count();
        if counted >= max_total && !self.evict_idlest() {
            return Err(Refused::Full(max_total));
        }
        let id = self.next_id;
        self.next_id += 1;
        let (close, closed) = watch::channel(false);
        self.connections.insert(id, OpenConnection { session: session.clone(), close, evicted: false });
        *self.per_ip.entry(ip).or_default() += 1;
        Ok((id, closed))
    }

    /// Tells the connection idle the longest (at least `EVICTABLE_AFTER`) to close.
    fn evict_idlest(&mut self) -> bool {
        let idlest = self
            .connections
            .values_mut()
            .filter(|c| !c.evicted)
            .filter_map(|c| c.session.idle_for().filter(|idle| *idle >= EVICTABLE_AFTER).map(|idle| (idle, c)))
            .max_by_key(|(idle, _)| *idle);
        let Some((idle, victim)) = idlest else { return false };
        tracing::info!(peer = %victim.session.peer, idle_ms = idle.as_millis() as u64, "connection limit reached; closing the longest-idle connection");
        victim.evicted = true;
        let _ = victim.close.send(true);
        true
    }

    fn remove(&mut self, id: u64) {
        let Some(gone) = self.connections.remove(&id) else { return };
        let ip = gone.session.peer.ip();
        if let Some(count) = self.per_ip.get_mut(&ip) {
            *count -= 1;
            if *count == 0 {
                self.per_ip.remove(&ip);
            }
        }
    }

    fn close_all(&self) {
        for connection in self.connections.values() {
            let _ = connection.close.send(true);
        }
    }
}

/// Takes a connection out of the table and the counts when dropped.
struct Gone {
    id: u64,
    open: Arc<Mutex<Open>>,
    count: Arc<watch::Sender<usize>>,
    ctx: Arc<RequestContext>,
}

impl Drop for Gone {
    fn drop(&mut self) {
        self.ctx.metrics.connections.dec();
        // A poisoned lock (a panic while it was held) still holds a consistent table: every change is one call.
        let mut open = self.open.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        open.remove(self.id);
        self.count.send_modify(|n| *n -= 1);
    }
}

/// One bound listener and how its connections are wrapped.
struct Bound {
    listener: Listener,
    socket: TcpListener,
}

/// What every accept loop shares.
struct Shared {
    ctx: Arc<RequestContext>,
    /// The TLS settings, if any listener uses TLS.
    tls: Option<Arc<Tls>>,
    open: Arc<Mutex<Open>>,
    /// How many connections are open, for the drain at shutdown.
    count: Arc<watch::Sender<usize>>,
}

impl Server {
    /// Binds every listener; `tls` serves the TLS ones (`security::tls::needed`).
    pub async fn bind(ctx: RequestContext, tls: Option<Arc<Tls>>) -> anyhow::Result<Server> {
        let mut bound = Vec::new();
        for listener in ctx.listeners.iter().cloned() {
            let addr = listener.addr;
            let socket = TcpListener::bind(addr)
                .await
                .map_err(|e| anyhow::anyhow!("cannot listen on {addr} ({}): {e}", listener.name()))?;
            bound.push(Bound { listener, socket });
        }
        if tls.is_none() && bound.iter().any(|b| b.listener.protocol.tls()) {
            anyhow::bail!("a TLS listener needs the TLS settings loaded");
        }
        let ctx = Arc::new(ctx);
        ctx.start_transactions();
        Ok(Server { bound, tls, ctx })
    }

    /// Each listener's name and bound address.
    pub fn local_addrs(&self) -> std::io::Result<Vec<(&'static str, SocketAddr)>> {
        self.bound.iter().map(|b| Ok((b.listener.name(), b.socket.local_addr()?))).collect()
    }

    /// Serves until `shutdown` resolves, then drains connections.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        let (count_tx, mut count) = watch::channel(0usize);
        let shared = Arc::new(Shared {
            ctx: self.ctx.clone(),
            tls: self.tls,
            open: Arc::new(Mutex::new(Open::default())),
            count: Arc::new(count_tx),
        });
        let (stop, stopped) = watch::channel(false);
        let loops: Vec<_> =
            self.bound.into_iter().map(|b| actix::spawn(accept_loop(b, shared.clone(), stopped.clone()))).collect();
        shutdown.await;
        let _ = stop.send(true);
        for accepting in loops {
            let _ = accepting.await;
        }
        tracing::info!("shutting down: no new connections; draining open ones");
        shared.open.lock().expect("open connections").close_all();
        let limits = &self.ctx.config.limits;
        let grace = Duration::from_secs(limits.shutdown_grace_secs);
        if tokio::time::timeout(grace, count.wait_for(|n| *n == 0)).await.is_err() {
            tracing::warn!(grace_secs = limits.shutdown_grace_secs, "connections still open after the grace period");
        }
    }
}

/// Refusals a client can cause at will, logged once a second at most.
static PER_IP: Throttle = Throttle::new();
static FULL: Throttle = Throttle::new();

/// Accepts connections on one listener until `stopped` turns true.
async fn accept_loop(bound: Bound, shared: Arc<Shared>, mut stopped: watch::Receiver<bool>) {
    let limits = &shared.ctx.config.limits;
    let name = bound.listener.name();
    // Bounded by shutdown: each turn accepts one connection or backs off.
    loop {
        let accepted = tokio::select! {
            accepted = bound.socket.accept() => accepted,
            _ = stopped.wait_for(|stop| *stop) => return,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // Typically EMFILE: back off briefly rather than spin.
                tracing::warn!(listener = name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let protocol = bound.listener.protocol;
        let session = Arc::new(Session::with_security(peer, name, Principal::anonymous(), protocol.sasl()));
        let admitted = shared.open.lock().expect("open connections").admit(
            &session,
            limits.max_connections,
            limits.max_connections_per_ip,
        );
        let (id, closed) = match admitted {
            Ok(admitted) => admitted,
            Err(Refused::PerIp(limit)) => {
                if let Some(skipped) = PER_IP.admit() {
                    tracing::warn!(%peer, limit, skipped, "limits.max_connections_per_ip reached; closing new connection");
                }
                continue;
            }
            Err(Refused::Full(limit)) => {
                if let Some(skipped) = FULL.admit() {
                    tracing::warn!(%peer, limit, skipped, "limits.max_connections reached and none idle; closing new connection");
                }
                continue;
            }
        };
        let ctx = shared.ctx.clone();
        shared.count.send_modify(|n| *n += 1);
        ctx.metrics.connections.inc();
        // Removed from the table when the task ends, even by a panic.
        let gone = Gone { id, open: shared.open.clone(), count: shared.count.clone(), ctx: ctx.clone() };
        let _ = stream.set_nodelay(true);
        let tls = protocol.tls().then(|| shared.tls.clone().expect("TLS is loaded for TLS listeners"));
        actix::spawn(async move {
            let _gone = gone;
            match tls {
                None => {
                    let (read_half, write_half) = stream.into_split();
                    connection::serve(read_half, write_half, session, ctx, closed).await;
                }
                Some(tls) => {
                    let Some(stream) = handshake(stream, &tls, &session, &ctx).await else { return };
                    let (read_half, write_half) = tokio::io::split(stream);
                    connection::serve(read_half, write_half, session, ctx, closed).await;
                }
            }
        });
    }
}

/// The TLS handshake, within `limits.transfer_timeout_ms`. A client that
/// does not start one (a plaintext Kafka client on a TLS port) is named in
/// the log and closed at once. A client certificate names the session's
/// principal.
async fn handshake(
    stream: TcpStream,
    tls: &Tls,
    session: &Session,
    ctx: &RequestContext,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    static PLAINTEXT: Throttle = Throttle::new();
    static SLOW: Throttle = Throttle::new();
    static FAILED: Throttle = Throttle::new();
    let (peer, listener) = (session.peer, session.listener);
    let deadline = Duration::from_millis(ctx.config.limits.transfer_timeout_ms);
    let mut first = [0u8; 1];
    match tokio::time::timeout(deadline, stream.peek(&mut first)).await {
        Ok(Ok(1)) if first[0] == TLS_HANDSHAKE_RECORD => {}
        Ok(Ok(1)) => {
            if let Some(skipped) = PLAINTEXT.admit() {
                tracing::warn!(%peer, listener, skipped, "closing connection: the client did not start TLS on a TLS listener (check its security.protocol and port)");
            }
            return None;
        }
        Ok(_) => return None,
        Err(_) => {
            if let Some(skipped) = SLOW.admit() {
                tracing::warn!(%peer, listener, skipped, "closing connection: no TLS handshake within limits.transfer_timeout_ms");
            }
            return None;
        }
    }
    // SASL names a SASL_SSL client; only SSL listeners ask for certificates (KIP-684).
    let client_certificates = !session.authenticating();
    match tokio::time::timeout(deadline, tls.acceptor(client_certificates).accept(stream)).await {
        Ok(Ok(stream)) => {
            let principal = tls.principal(stream.get_ref().1.peer_certificates());
            session.set_principal(principal);
            Some(stream)
        }
        Ok(Err(e)) => {
            if let Some(skipped) = FAILED.admit() {
                tracing::warn!(%peer, listener, skipped, error = %e, "closing connection: TLS handshake failed");
            }
            None
        }
        Err(_) => {
            if let Some(skipped) = SLOW.admit() {
                tracing::warn!(%peer, listener, skipped, "closing connection: the TLS handshake took longer than limits.transfer_timeout_ms");
            }
            None
        }
    }
}

/// The first byte of a TLS record carrying a handshake (a ClientHello).
const TLS_HANDSHAKE_RECORD: u8 = 0x16;
