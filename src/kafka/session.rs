//! A connection's session: who is on the other end, as far as the broker
//! knows. Every request on the connection sees it, so what one request learns
//! (the client's software from ApiVersions; later the principal that SASL
//! authenticated) is there for the requests after it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Longest client software name or version kept (KIP-511 allows any string;
/// the broker keeps a bounded copy).
const MAX_SOFTWARE_CHARS: usize = 128;

pub struct Session {
    /// The client's address.
    pub peer: SocketAddr,
    /// The listener the connection came in on.
    pub listener: &'static str,
    client: Mutex<ClientSoftware>,
    opened: Instant,
    /// Requests read and not yet answered.
    busy: AtomicUsize,
    /// When `busy` last fell to zero (or the connection opened), ms after `opened`.
    quiet_since_ms: AtomicU64,
}

/// What the client's ApiVersions told us: the client id of its header, and
/// from v3 on its software name and version (KIP-511).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientSoftware {
    pub client_id: String,
    pub name: String,
    pub version: String,
}

impl std::fmt::Display for ClientSoftware {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "client id {:?}, software {:?} {:?}", self.client_id, self.name, self.version)
    }
}

impl Session {
    pub fn new(peer: SocketAddr, listener: &'static str) -> Session {
        Session {
            peer,
            listener,
            client: Mutex::new(ClientSoftware::default()),
            opened: Instant::now(),
            busy: AtomicUsize::new(0),
            quiet_since_ms: AtomicU64::new(0),
        }
    }

    /// A request was read; the connection is busy until it is answered.
    pub fn request_started(&self) {
        self.busy.fetch_add(1, Ordering::Relaxed);
    }

    /// A request was answered (or dropped with the connection).
    pub fn request_answered(&self) {
        let before = self.busy.fetch_sub(1, Ordering::Relaxed);
        assert!(before > 0, "an answer follows a request");
        if before == 1 {
            let now = u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
            self.quiet_since_ms.store(now, Ordering::Relaxed);
        }
    }

    /// How long the connection has had no request in hand; `None` while it has one.
    pub fn idle_for(&self) -> Option<Duration> {
        if self.busy.load(Ordering::Relaxed) > 0 {
            return None;
        }
        let quiet = Duration::from_millis(self.quiet_since_ms.load(Ordering::Relaxed));
        Some(self.opened.elapsed().saturating_sub(quiet))
    }

    /// The client host as Kafka prints it in group descriptions ("/1.2.3.4").
    pub fn client_host(&self) -> String {
        format!("/{}", self.peer.ip())
    }

    pub fn client_software(&self) -> ClientSoftware {
        self.client.lock().expect("session lock").clone()
    }

    pub fn set_client_software(&self, client_id: &str, name: &str, version: &str) {
        let bounded = |s: &str| s.chars().take(MAX_SOFTWARE_CHARS).collect::<String>();
        let software = ClientSoftware { client_id: bounded(client_id), name: bounded(name), version: bounded(version) };
        *self.client.lock().expect("session lock") = software;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_software_is_bounded() {
        let session = Session::new("127.0.0.1:5000".parse().unwrap(), "plaintext");
        session.set_client_software("c", &"x".repeat(1000), "2.0");
        assert_eq!(session.client_software().name.len(), MAX_SOFTWARE_CHARS);
        assert_eq!(session.client_host(), "/127.0.0.1");
    }
}
