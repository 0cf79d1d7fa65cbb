//! SASL on the broker. rsasl runs the mechanisms (PLAIN, SCRAM-SHA-256,
//! SCRAM-SHA-512); the callback here answers them from the cluster metadata:
//! a user's stored SCRAM keys for SCRAM, and for PLAIN a check of the password
//! against the same keys, so there is one set of credentials for both.

use std::sync::Arc;

use rsasl::callback::{Context, Request, SessionCallback, SessionData};
use rsasl::mechanisms::scram::properties::ScramStoredPassword;
use rsasl::mechname::Mechname;
use rsasl::prelude::{SASLConfig, SASLServer, SessionError, State};
use rsasl::property::{AuthId, AuthzId, Password};
use rsasl::validate::{Validate, Validation, ValidationError};
use tokio::sync::watch;

use crate::cluster::metadata::{ClusterMetadata, ScramMechanism};

/// Longest SASL message taken (a SCRAM client message is about 200 bytes;
/// Kafka bounds them by its frame limit, which is much larger).
pub const MAX_TOKEN_BYTES: usize = 64 * 1024;

/// What a finished exchange yields: the user it authenticated.
pub struct Authenticated;

impl Validation for Authenticated {
    type Value = String;
}

/// Finds credentials in the cluster metadata as rsasl asks for them.
struct Credentials {
    metadata: watch::Receiver<Arc<ClusterMetadata>>,
}

impl SessionCallback for Credentials {
    /// SCRAM asks for the user's stored keys; none given means no such user.
    fn callback(&self, session: &SessionData, context: &Context, request: &mut Request) -> Result<(), SessionError> {
        let Some(mechanism) = ScramMechanism::from_name(session.mechanism().mechanism.as_str()) else { return Ok(()) };
        let Some(user) = context.get_ref::<AuthId>() else { return Ok(()) };
        let metadata = self.metadata.borrow().clone();
        if let Some(c) = metadata.security.scram.get(user).and_then(|by_mechanism| by_mechanism.get(&mechanism)) {
            let stored = ScramStoredPassword::new(c.iterations, &c.salt, &c.stored_key, &c.server_key);
            request.satisfy::<ScramStoredPassword>(&stored)?;
        }
        Ok(())
    }

    /// Called once the mechanism has done its part (SCRAM: the proof checked).
    /// PLAIN's password is checked here. An authorization id other than the
    /// user itself is refused: nobody may act as someone else.
    fn validate(&self, session: &SessionData, context: &Context, validate: &mut Validate<'_>) -> Result<(), ValidationError> {
        let Some(user) = context.get_ref::<AuthId>() else { return Ok(()) };
        if context.get_ref::<AuthzId>().is_some_and(|authz| !authz.is_empty() && authz != user) {
            return Ok(());
        }
        let accepted = match session.mechanism().mechanism.as_str() {
            "PLAIN" => context.get_ref::<Password>().is_some_and(|password| self.plain_matches(user, password)),
            _ => true,
        };
        if accepted {
            validate.with::<Authenticated, _>(|| Ok(user.to_string()))?;
        }
        Ok(())
    }
}

impl Credentials {
    /// Whether `password` is `user`'s, by any of its SCRAM credentials.
    fn plain_matches(&self, user: &str, password: &[u8]) -> bool {
        let metadata = self.metadata.borrow().clone();
        let Some(credentials) = metadata.security.scram.get(user) else { return false };
        credentials.iter().next().is_some_and(|(mechanism, credential)| super::scram::matches(*mechanism, credential, password))
    }
}

/// The SASL side of the broker: the mechanisms offered and how to start one.
pub struct Sasl {
    config: Arc<SASLConfig>,
    /// `security.sasl_mechanisms`, in the order configured.
    pub mechanisms: Vec<String>,
}

impl Sasl {
    pub fn new(mechanisms: Vec<String>, metadata: watch::Receiver<Arc<ClusterMetadata>>) -> anyhow::Result<Sasl> {
        let config = SASLConfig::builder()
            .with_defaults()
            .with_callback(Credentials { metadata })
            .map_err(|e| anyhow::anyhow!("SASL configuration: {e}"))?;
        Ok(Sasl { config, mechanisms })
    }

    /// An exchange of `mechanism`, if it is offered.
    pub fn start(&self, mechanism: &str) -> Option<Exchange> {
        let offered = self.mechanisms.iter().find(|m| m.eq_ignore_ascii_case(mechanism))?;
        let name = Mechname::parse(offered.as_bytes()).ok()?;
        let session = SASLServer::<Authenticated>::new(self.config.clone()).start_suggested(name).ok()?;
        Some(Exchange { session, mechanism: offered.clone(), messages: 0 })
    }
}

/// One client's exchange, from SaslHandshake to its last SaslAuthenticate.
pub struct Exchange {
    session: rsasl::prelude::Session<Authenticated>,
    pub mechanism: String,
    /// Client messages taken so far.
    messages: u32,
}

/// Where an exchange stands after a client message.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Send this to the client and wait for its next message.
    Continue(Vec<u8>),
    /// Authenticated as `user`; `reply` is the server's last message (SCRAM's verifier).
    Done { user: String, reply: Vec<u8> },
    /// Wrong credentials, an unknown user, or a malformed message.
    Failed(String),
}

impl Exchange {
    /// Takes the client's next message. Pure computation (PBKDF2 for PLAIN).
    pub fn step(&mut self, input: &[u8]) -> Step {
        if input.len() > MAX_TOKEN_BYTES {
            return Step::Failed(format!("SASL message of {} bytes (at most {MAX_TOKEN_BYTES})", input.len()));
        }
        self.messages += 1;
        // rsasl 2.3.1 slices a SCRAM client-final message's first two bytes
        // unchecked (a panic on one byte): such a message is refused first.
        let scram_final = self.messages == 2 && self.mechanism.starts_with("SCRAM-");
        if scram_final && !input.starts_with(b"c=") {
            return Step::Failed("a SCRAM client-final message must start with c=".into());
        }
        let mut reply = Vec::new();
        // A panic in the mechanism ends this exchange, not the broker's thread.
        let stepped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let state = self.session.step(Some(input), &mut reply);
            state.map(|state| (state, self.session.validation()))
        }));
        match stepped {
            Ok(Ok((State::Running, _))) => Step::Continue(reply),
            Ok(Ok((State::Finished(_), Some(user)))) => Step::Done { user, reply },
            Ok(Ok((State::Finished(_), None))) => Step::Failed("invalid credentials".into()),
            Ok(Err(e)) => Step::Failed(e.to_string()),
            Err(_) => Step::Failed("the SASL mechanism panicked on this message".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::metadata::Command;

    fn metadata_with(user: &str, password: &str) -> watch::Receiver<Arc<ClusterMetadata>> {
        let mut m = ClusterMetadata::default();
        for mechanism in ScramMechanism::ALL {
            let credential = crate::security::scram::new_credential(mechanism, password.as_bytes(), 4096);
            m.apply(&Command::UpsertScramCredential { user: user.into(), mechanism, credential });
        }
        let (tx, rx) = watch::channel(Arc::new(m));
        std::mem::forget(tx);
        rx
    }

    fn sasl() -> Sasl {
        let mechanisms = crate::security::MECHANISMS.iter().map(|m| m.to_string()).collect();
        Sasl::new(mechanisms, metadata_with("alice", "s3cret")).unwrap()
    }

    #[test]
    fn plain_checks_the_password_against_the_scram_credential() {
        let sasl = sasl();
        let step = sasl.start("PLAIN").unwrap().step(b"\0alice\0s3cret");
        assert_eq!(step, Step::Done { user: "alice".into(), reply: Vec::new() });
        assert!(matches!(sasl.start("PLAIN").unwrap().step(b"\0alice\0wrong"), Step::Failed(_)));
        assert!(matches!(sasl.start("PLAIN").unwrap().step(b"\0bob\0s3cret"), Step::Failed(_)));
        assert!(matches!(sasl.start("PLAIN").unwrap().step(b"mallory\0alice\0s3cret"), Step::Failed(_)), "acting as another");
        assert!(matches!(sasl.start("PLAIN").unwrap().step(b"garbage"), Step::Failed(_)));
        assert!(sasl.start("GSSAPI").is_none());
    }

    /// A whole SCRAM exchange against rsasl's own client, both mechanisms.
    #[test]
    fn scram_authenticates_with_the_right_password_only() {
        let sasl = sasl();
        for mechanism in ["SCRAM-SHA-256", "SCRAM-SHA-512"] {
            assert!(matches!(scram_exchange(&sasl, mechanism, "alice", "s3cret"), Step::Done { ref user, .. } if user == "alice"));
            assert!(matches!(scram_exchange(&sasl, mechanism, "alice", "wrong"), Step::Failed(_)));
            assert!(matches!(scram_exchange(&sasl, mechanism, "nobody", "s3cret"), Step::Failed(_)));
        }
    }

    fn scram_exchange(sasl: &Sasl, mechanism: &str, user: &str, password: &str) -> Step {
        let config = SASLConfig::with_credentials(None, user.into(), password.into()).unwrap();
        let client = rsasl::prelude::SASLClient::new(config);
        let name = Mechname::parse(mechanism.as_bytes()).unwrap();
        let mut client = client.start_suggested(&[name]).unwrap();
        let mut server = sasl.start(mechanism).unwrap();
        let mut to_server = Vec::new();
        client.step(None, &mut to_server).unwrap();
        // Bounded: SCRAM is two client messages.
        for _ in 0..4 {
            match server.step(&to_server) {
                Step::Continue(to_client) => {
                    to_server.clear();
                    if client.step(Some(&to_client), &mut to_server).is_err() {
                        return Step::Failed("client refused the server's message".into());
                    }
                }
                done => return done,
            }
        }
        panic!("the exchange did not end")
    }

    /// The SASL exchange as a fuzz target: arbitrary client messages, and
    /// well-formed SCRAM first messages followed by arbitrary final ones,
    /// never panic and never authenticate.
    #[test]
    fn arbitrary_sasl_messages_never_panic_or_authenticate() {
        use proptest::prelude::*;
        use proptest::test_runner::{Config, TestRunner};
        let sasl = sasl();
        let message = || proptest::collection::vec(any::<u8>(), 0..300);
        let scram_first = "[a-z]{0,8}".prop_map(|nonce| format!("n,,n=alice,r={nonce}").into_bytes());
        let first = prop_oneof![message(), scram_first];
        let mechanism = proptest::sample::select(crate::security::MECHANISMS.to_vec());
        let mut runner = TestRunner::new(Config { cases: 2_000, failure_persistence: None, ..Config::default() });
        runner
            .run(&(mechanism, first, proptest::collection::vec(message(), 0..3)), |(mechanism, first, rest)| {
                let mut exchange = sasl.start(mechanism).expect("offered");
                // Bounded: at most four messages.
                for input in std::iter::once(&first).chain(rest.iter()) {
                    match exchange.step(input) {
                        Step::Continue(_) => continue,
                        Step::Done { user, .. } => panic!("{mechanism} authenticated {user:?} from noise"),
                        Step::Failed(_) => break,
                    }
                }
                Ok(())
            })
            .unwrap();
    }
}
