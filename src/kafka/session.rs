//! A connection's session: who is on the other end, as far as the broker
//! knows. Every request on the connection sees it, so what one request learns
//! (the client's software from ApiVersions, the principal that SASL
//! authenticated) is there for the requests after it.
//!
//! On a SASL listener the session holds the exchange too: until it has
//! authenticated, the one gate of `kafka::dispatch` ([`Session::gate`]) lets
//! nothing through but ApiVersions and the SASL requests.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use kafka_protocol::messages::ApiKey;
use tokio::time::Instant;

use crate::security::sasl::Exchange;
use crate::security::Principal;

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
    /// Who the client is: ANONYMOUS until a certificate or SASL says otherwise.
    principal: Mutex<Principal>,
    /// Where authentication stands.
    auth: Mutex<Auth>,
}

/// Where a session's authentication stands.
pub enum Auth {
    /// Not a SASL listener: there is nothing to prove.
    NotRequired,
    /// A SASL listener, before SaslHandshake.
    AwaitingHandshake,
    /// Between SaslHandshake and the end of the exchange (`None` while a step runs).
    Exchanging(Option<Box<Exchange>>),
    /// Authenticated with `mechanism`, until `expires` (KIP-368 re-authentication) if set.
    Authenticated { expires: Option<Instant>, mechanism: String },
    /// Re-authenticating (KIP-368): the old principal holds until the new
    /// exchange ends, and only while the old session has not expired.
    Reauthenticating { exchange: Option<Box<Exchange>>, expires: Option<Instant> },
    /// Authentication failed; nothing more is served.
    Failed,
}

/// Why the gate refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// On a SASL listener before authenticating.
    Unauthenticated,
    /// The session outlived `security.max_reauth_ms` without re-authenticating.
    Expired,
    /// After a failed authentication.
    Failed,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Refusal::Unauthenticated => "request before SASL authentication on a SASL listener",
            Refusal::Expired => "session expired (security.max_reauth_ms) without re-authenticating",
            Refusal::Failed => "request after a failed SASL authentication",
        })
    }
}

/// What a session may send before it has authenticated.
fn before_authentication(api: ApiKey) -> bool {
    matches!(api, ApiKey::ApiVersions | ApiKey::SaslHandshake | ApiKey::SaslAuthenticate)
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
    /// A session with nothing to prove (PLAINTEXT; in-process), as ANONYMOUS.
    pub fn new(peer: SocketAddr, listener: &'static str) -> Session {
        Session::with_security(peer, listener, Principal::anonymous(), false)
    }

    /// A session as `principal` (a client certificate's); `sasl`: it must
    /// authenticate before anything else.
    pub fn with_security(peer: SocketAddr, listener: &'static str, principal: Principal, sasl: bool) -> Session {
        Session {
            peer,
            listener,
            client: Mutex::new(ClientSoftware::default()),
            opened: Instant::now(),
            busy: AtomicUsize::new(0),
            quiet_since_ms: AtomicU64::new(0),
            principal: Mutex::new(principal),
            auth: Mutex::new(if sasl { Auth::AwaitingHandshake } else { Auth::NotRequired }),
        }
    }

    pub fn principal(&self) -> Principal {
        self.principal.lock().expect("session lock").clone()
    }

    /// The principal a TLS client certificate names.
    pub fn set_principal(&self, principal: Principal) {
        *self.principal.lock().expect("session lock") = principal;
    }

    /// The one authentication gate: whether `api` may be served now.
    pub fn gate(&self, api: ApiKey) -> Result<(), Refusal> {
        match &*self.auth.lock().expect("session lock") {
            Auth::NotRequired => Ok(()),
            Auth::Authenticated { expires, .. } | Auth::Reauthenticating { expires, .. } => match expires {
                Some(at) if Instant::now() >= *at && !before_authentication(api) => Err(Refusal::Expired),
                _ => Ok(()),
            },
            Auth::AwaitingHandshake | Auth::Exchanging(_) if before_authentication(api) => Ok(()),
            Auth::AwaitingHandshake | Auth::Exchanging(_) => Err(Refusal::Unauthenticated),
            Auth::Failed => Err(Refusal::Failed),
        }
    }

    /// Whether the session has yet to authenticate (the connection closes it
    /// if that takes longer than `security.authentication_timeout_ms`; its
    /// frames are held to `MAX_UNAUTHENTICATED_FRAME`).
    pub fn authenticating(&self) -> bool {
        matches!(&*self.auth.lock().expect("session lock"), Auth::AwaitingHandshake | Auth::Exchanging(_))
    }

    /// Whether authentication failed: the connection closes once the answer is written.
    pub fn failed(&self) -> bool {
        matches!(&*self.auth.lock().expect("session lock"), Auth::Failed)
    }

    /// Runs `change` on the authentication state (the SASL handlers).
    pub fn with_auth<T>(&self, change: impl FnOnce(&mut Auth) -> T) -> T {
        change(&mut self.auth.lock().expect("session lock"))
    }

    /// Authenticated as `principal`, until `lifetime` is over if set. A
    /// re-authentication must keep the principal (KIP-368): `false` if it did not.
    pub fn authenticated(&self, principal: Principal, mechanism: &str, lifetime: Option<Duration>) -> bool {
        let mut auth = self.auth.lock().expect("session lock");
        let mut current = self.principal.lock().expect("session lock");
        if matches!(&*auth, Auth::Reauthenticating { .. }) && *current != principal {
            *auth = Auth::Failed;
            return false;
        }
        *current = principal;
        *auth = Auth::Authenticated { expires: lifetime.map(|l| Instant::now() + l), mechanism: mechanism.to_string() };
        true
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
