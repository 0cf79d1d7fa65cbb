//! The Kafka listener: accepts connections up to `limits.max_connections` and
//! runs each on the system's event loop until shutdown.
//!
//! Shutdown is designed in: on SIGINT/SIGTERM the listener stops accepting,
//! every connection finishes the request it is on and closes, and after at
//! most `limits.shutdown_grace_secs` the actor system stops, flushing logs.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

use crate::connection;
use crate::kafka::{RequestContext, Session};

/// The one listener's name, as Kafka names a plaintext listener.
const LISTENER: &str = "PLAINTEXT";

pub struct Server {
    listener: TcpListener,
    ctx: Arc<RequestContext>,
}

impl Server {
    pub async fn bind(ctx: RequestContext) -> anyhow::Result<Server> {
        let addr = ctx.config.broker.listen;
        let listener = TcpListener::bind(addr).await.map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
        Ok(Server { listener, ctx: Arc::new(ctx) })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` resolves, then drains connections.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        let limits = &self.ctx.config.limits;
        let slots = Arc::new(Semaphore::new(limits.max_connections));
        let (stop_tx, stop_rx) = watch::channel(false);
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
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                tracing::warn!(%peer, limit = limits.max_connections, "connection limit reached; closing new connection");
                continue;
            };
            let (ctx, stop) = (self.ctx.clone(), stop_rx.clone());
            ctx.metrics.connections.inc();
            let _ = stream.set_nodelay(true);
            let (read_half, write_half) = stream.into_split();
            let session = Session::new(peer, LISTENER);
            actix::spawn(async move {
                connection::serve(read_half, write_half, session, ctx.clone(), stop).await;
                ctx.metrics.connections.dec();
                drop(slot);
            });
        }

        tracing::info!("shutting down: no new connections; draining open ones");
        let _ = stop_tx.send(true);
        let grace = Duration::from_secs(limits.shutdown_grace_secs);
        let all = limits.max_connections as u32;
        if tokio::time::timeout(grace, slots.acquire_many(all)).await.is_err() {
            tracing::warn!(grace_secs = limits.shutdown_grace_secs, "connections still open after the grace period");
        }
    }
}
