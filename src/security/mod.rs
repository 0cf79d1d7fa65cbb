//! Security: who is on the other end of a connection, and how it proved it.
//! TLS ([`tls`]) wraps a listener's connections and may name the client by
//! its certificate; SASL ([`sasl`]) names it by the user it authenticated as,
//! against the SCRAM credentials ([`scram`]) the cluster metadata keeps.

pub mod oauth;
pub mod sasl;
pub mod scram;
pub mod tls;

/// The SASL mechanisms the broker can offer (`security.sasl_mechanisms` picks).
pub const MECHANISMS: &[&str] = &["SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN", "OAUTHBEARER"];

/// Whether two secrets (keys, tokens) are equal, compared without an early
/// exit so the time taken does not tell how much of a guess was right.
pub fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A Kafka principal, as ACLs name it: "User:alice".
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Principal(String);

impl Principal {
    /// Who an unauthenticated client is.
    pub fn anonymous() -> Principal {
        Principal::user("ANONYMOUS")
    }

    pub fn user(name: &str) -> Principal {
        Principal(format!("User:{name}"))
    }
}

impl std::fmt::Display for Principal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
