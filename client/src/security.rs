//! The client's side of a secure listener: TLS ([`Transport::Tls`], rustls
//! on ring) and SASL ([`Sasl`]: PLAIN, SCRAM-SHA-256 and SCRAM-SHA-512 from
//! rsasl), run on each new connection after ApiVersions and before anything
//! else, as Kafka's clients do.

use std::io;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use kafka_protocol::messages::{ApiKey, SaslAuthenticateRequest, SaslHandshakeRequest};
use rsasl::prelude::{Mechname, SASLClient, SASLConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};

use crate::client::str_bytes;
use crate::connection::Connection;
use crate::connector::{BrokerAddress, Connector, ReadHalf, Tcp, WriteHalf};
use crate::error::{check_message, Error, Result, Subject};

/// A SASL identity: the mechanism and the user's name and password.
#[derive(Clone)]
pub struct Sasl {
    pub mechanism: String,
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Sasl {
    /// Never the password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sasl {{ mechanism: {:?}, username: {:?} }}", self.mechanism, self.username)
    }
}

/// SASL messages one authentication may take (SCRAM needs two).
const MAX_ROUNDS: usize = 8;

impl Sasl {
    /// SaslHandshake, then SaslAuthenticate until the mechanism is done.
    pub(crate) async fn authenticate(&self, connection: &Connection) -> Result<()> {
        let refused = |why: String| Error::Kafka {
            error: kafka_protocol::ResponseError::SaslAuthenticationFailed,
            subject: Subject::Request(ApiKey::SaslAuthenticate),
            message: Some(why),
        };
        let handshake = SaslHandshakeRequest::default().with_mechanism(str_bytes(&self.mechanism));
        let answer = connection.send(&handshake).await?;
        check_message(answer.error_code, None, || Subject::Request(ApiKey::SaslHandshake))?;
        let config = SASLConfig::with_credentials(None, self.username.clone(), self.password.clone())
            .map_err(|e| refused(format!("SASL configuration: {e}")))?;
        let name = Mechname::parse(self.mechanism.as_bytes()).map_err(|e| refused(format!("mechanism: {e}")))?;
        let mut session = SASLClient::new(config)
            .start_suggested(&[name])
            .map_err(|e| refused(format!("the client cannot run {}: {e}", self.mechanism)))?;
        let mut input: Option<Bytes> = None;
        // Bounded: a mechanism that does not finish in MAX_ROUNDS is refused.
        for _ in 0..MAX_ROUNDS {
            let mut out = Vec::new();
            let state = session.step(input.as_deref(), &mut out).map_err(|e| refused(e.to_string()))?;
            if out.is_empty() && state.is_finished() {
                return Ok(());
            }
            let request = SaslAuthenticateRequest::default().with_auth_bytes(Bytes::from(out));
            let answer = connection.send(&request).await?;
            check_message(answer.error_code, answer.error_message.as_ref(), || {
                Subject::Request(ApiKey::SaslAuthenticate)
            })?;
            if state.is_finished() {
                return Ok(());
            }
            input = Some(answer.auth_bytes);
        }
        Err(refused(format!("{} did not finish in {MAX_ROUNDS} messages", self.mechanism)))
    }
}

/// TCP, or TLS over it.
#[derive(Clone)]
pub enum Transport {
    Tcp,
    Tls(Arc<rustls::ClientConfig>),
}

impl Transport {
    /// TLS trusting the CA certificates of a PEM file (Kafka's `ssl.ca.location`).
    pub fn tls_trusting(ca_file: &Path) -> Result<Transport> {
        let bad = |problem: String| Error::TlsTrust { path: ca_file.to_path_buf(), problem };
        let mut roots = rustls::RootCertStore::empty();
        let certificates = CertificateDer::pem_file_iter(ca_file)
            .map_err(|e| bad(e.to_string()))?
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| bad(e.to_string()))?;
        if certificates.is_empty() {
            return Err(bad("no PEM certificate in it".into()));
        }
        for certificate in certificates {
            roots.add(certificate).map_err(|e| bad(e.to_string()))?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| bad(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Transport::Tls(Arc::new(config)))
    }
}

impl Connector for Transport {
    async fn connect(&self, broker: &BrokerAddress) -> io::Result<(ReadHalf, WriteHalf)> {
        match self {
            Transport::Tcp => Tcp.connect(broker).await,
            Transport::Tls(config) => {
                let stream = Tcp.stream(broker).await?;
                let name = ServerName::try_from(broker.host.clone())
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
                let tls = tokio_rustls::TlsConnector::from(config.clone()).connect(name, stream).await?;
                let (read, write) = tokio::io::split(tls);
                Ok((Box::new(read), Box::new(write)))
            }
        }
    }
}
