//! The Kafka listener: accepts connections up to `limits.max_connections` and
//! runs each on the system's event loop until shutdown.
//!
//! Shutdown is designed in: on SIGINT/SIGTERM the listener stops accepting,
//! every connection finishes the request it is on and closes, and after at
//! most `limits.shutdown_grace_secs` the actor system stops, flushing logs.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::connection;
use crate::kafka::{RequestContext, Session};

/// The one listener's name, as Kafka names a plaintext listener.
const LISTENER: &str = "PLAINTEXT";
/// A full broker closes its longest-idle connection for a new one, if that
/// one has had no request in hand for this long.
const EVICTABLE_AFTER: Duration = Duration::from_secs(5);

pub struct Server {
    listener: TcpListener,
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

impl Server {
    pub async fn bind(ctx: RequestContext) -> anyhow::Result<Server> {
        let addr = ctx.config.broker.listen;
        let listener = TcpListener::bind(addr).await.map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
        let ctx = Arc::new(ctx);
        ctx.start_transactions();
        Ok(Server { listener, ctx })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` resolves, then drains connections.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        let limits = &self.ctx.config.limits;
        let open = Arc::new(Mutex::new(Open::default()));
        // How many connections are open, for the drain at shutdown.
        let (count_tx, mut count) = watch::channel(0usize);
        let count_tx = Arc::new(count_tx);
        tokio::pin!(shutdown);
        loop {
            let accepted = tokio::select! {
                accepted = self.listener.accept() => accepted,
                _ = &mut shutdown => break,
            };
            let (stream, peer) = match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Typically EMFILE: back off briefly rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let session = Arc::new(Session::new(peer, LISTENER));
            let admitted = open.lock().expect("open connections").admit(
                &session,
                limits.max_connections,
                limits.max_connections_per_ip,
            );
            let (id, closed) = match admitted {
                Ok(admitted) => admitted,
                Err(Refused::PerIp(limit)) => {
                    tracing::warn!(%peer, limit, "limits.max_connections_per_ip reached; closing new connection");
                    continue;
                }
                Err(Refused::Full(limit)) => {
                    tracing::warn!(%peer, limit, "limits.max_connections reached and none idle; closing new connection");
                    continue;
                }
            };
            let ctx = self.ctx.clone();
            count_tx.send_modify(|n| *n += 1);
            ctx.metrics.connections.inc();
            // Removed from the table when the task ends, even by a panic.
            let gone = Gone { id, open: open.clone(), count: count_tx.clone(), ctx: ctx.clone() };
            let _ = stream.set_nodelay(true);
            let (read_half, write_half) = stream.into_split();
            actix::spawn(async move {
                let _gone = gone;
                connection::serve(read_half, write_half, session, ctx, closed).await;
            });
        }

        tracing::info!("shutting down: no new connections; draining open ones");
        open.lock().expect("open connections").close_all();
        let grace = Duration::from_secs(limits.shutdown_grace_secs);
        if tokio::time::timeout(grace, count.wait_for(|n| *n == 0)).await.is_err() {
            tracing::warn!(grace_secs = limits.shutdown_grace_secs, "connections still open after the grace period");
        }
    }
}
