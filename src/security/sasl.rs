//! SASL on the broker: PLAIN and SCRAM-SHA-256/512 (`scram.rs`), answered
//! from the cluster metadata: a user's stored SCRAM keys for SCRAM, and for
//! PLAIN a check of the password against the same keys, so there is one set
//! of credentials for both; and OAUTHBEARER (`oauth.rs`), a signed JWT.

use std::sync::Arc;

use tokio::sync::watch;

use super::oauth::OAuth;
use super::scram::{ScramServer, ScramStep};
use crate::cluster::metadata::{ClusterMetadata, ScramCredential, ScramMechanism};

/// Longest SASL message taken (a SCRAM client message is about 200 bytes;
/// Kafka bounds them by its frame limit, which is much larger).
pub const MAX_TOKEN_BYTES: usize = 64 * 1024;

/// The SASL side of the broker: the mechanisms offered and the credentials.
pub struct Sasl {
    /// `security.sasl_mechanisms`, in the order configured.
    pub mechanisms: Vec<String>,
    metadata: watch::Receiver<Arc<ClusterMetadata>>,
    /// OAUTHBEARER's token checks, if offered.
    oauth: Option<Arc<OAuth>>,
    /// Exchange steps running at once, broker-wide: a PLAIN check is a PBKDF2
    /// of up to 16384 rounds, so many connections trying passwords at once
    /// wait their turn instead of taking every core.
    pub steps: Arc<tokio::sync::Semaphore>,
}

/// Exchange steps run at once (`Sasl::steps`).
const CONCURRENT_STEPS: usize = 2;

impl Sasl {
    /// The config was checked at load, JWKS included; a JWKS that no longer
    /// loads now is logged, and OAUTHBEARER then authenticates nobody.
    pub fn new(config: &crate::config::SecuritySection, metadata: watch::Receiver<Arc<ClusterMetadata>>) -> Sasl {
        let oauth = OAuth::load(config).unwrap_or_else(|e| {
            tracing::error!(error = format!("{e:#}"), "OAUTHBEARER's keys do not load; it will refuse every token");
            None
        });
        let steps = Arc::new(tokio::sync::Semaphore::new(CONCURRENT_STEPS));
        Sasl { mechanisms: config.sasl_mechanisms.clone(), metadata, oauth: oauth.map(Arc::new), steps }
    }

    /// An exchange of `mechanism`, if it is offered.
    pub fn start(&self, mechanism: &str) -> Option<Exchange> {
        let offered = self.mechanisms.iter().find(|m| m.eq_ignore_ascii_case(mechanism))?;
        let state = match (ScramMechanism::from_name(offered), offered.as_str()) {
            (Some(scram), _) => Mechanism::Scram(ScramServer::new(scram)),
            (None, "OAUTHBEARER") => Mechanism::OAuthBearer(self.oauth.clone()),
            (None, _) => Mechanism::Plain,
        };
        Some(Exchange { state, mechanism: offered.clone(), metadata: self.metadata.clone(), raw: false })
    }
}

enum Mechanism {
    Plain,
    Scram(ScramServer),
    /// `None`: its keys did not load.
    OAuthBearer(Option<Arc<OAuth>>),
}

/// One client's exchange, from SaslHandshake to its last message.
pub struct Exchange {
    state: Mechanism,
    pub mechanism: String,
    metadata: watch::Receiver<Arc<ClusterMetadata>>,
    /// Its messages are raw frames (after SaslHandshake v0), not SaslAuthenticate requests.
    pub raw: bool,
}

/// Where an exchange stands after a client message.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Send this to the client and wait for its next message.
    Continue(Vec<u8>),
    /// Authenticated as `user`; `reply` is the server's last message (SCRAM's
    /// verifier); the session ends at `expires`, if set (an OAuth token's expiry).
    Done { user: String, reply: Vec<u8>, expires: Option<std::time::SystemTime> },
    /// Wrong credentials, an unknown user, or a malformed message.
    Failed(String),
}

impl Exchange {
    /// Takes the client's next message. Pure computation (PBKDF2 for PLAIN).
    pub fn step(&mut self, input: &[u8]) -> Step {
        if input.len() > MAX_TOKEN_BYTES {
            return Step::Failed(format!("SASL message of {} bytes (at most {MAX_TOKEN_BYTES})", input.len()));
        }
        let metadata = self.metadata.borrow().clone();
        match &mut self.state {
            Mechanism::Plain => plain(&metadata, input),
            Mechanism::OAuthBearer(None) => Step::Failed("OAUTHBEARER's keys did not load".into()),
            Mechanism::OAuthBearer(Some(oauth)) => match oauth.authenticate(input) {
                Ok((user, expires)) => Step::Done { user, reply: Vec::new(), expires: Some(expires) },
                Err(why) => Step::Failed(why),
            },
            Mechanism::Scram(server) => {
                let mechanism = ScramMechanism::from_name(&self.mechanism).expect("a SCRAM exchange's mechanism");
                let lookup = |user: &str| credential(&metadata, user, mechanism).cloned();
                match server.step(input, lookup) {
                    ScramStep::Reply(reply) => Step::Continue(reply),
                    ScramStep::Authenticated { user, reply } => Step::Done { user, reply, expires: None },
                    ScramStep::Failed(why) => Step::Failed(why.to_string()),
                }
            }
        }
    }
}

fn credential<'a>(metadata: &'a ClusterMetadata, user: &str, mechanism: ScramMechanism) -> Option<&'a ScramCredential> {
    metadata.security.scram.get(user)?.get(&mechanism)
}

/// PLAIN (RFC 4616): `authzid NUL authcid NUL password`, checked against
/// the user's SCRAM credential. An authorization id other than the user
/// itself is refused: nobody may act as someone else.
fn plain(metadata: &ClusterMetadata, input: &[u8]) -> Step {
    let parts: Vec<&[u8]> = input.split(|b| *b == 0).collect();
    let [authzid, user, password] = parts[..] else { return Step::Failed("a PLAIN message has three parts".into()) };
    let (Ok(authzid), Ok(user)) = (std::str::from_utf8(authzid), std::str::from_utf8(user)) else {
        return Step::Failed("a PLAIN user name is not UTF-8".into());
    };
    if user.is_empty() || (!authzid.is_empty() && authzid != user) {
        return Step::Failed("an empty user, or acting as another user".into());
    }
    let Some(credentials) = metadata.security.scram.get(user) else {
        // As long as a known user's check, so the time taken does not tell who exists.
        let _ = super::scram::salted_password(ScramMechanism::Sha512, password, b"no such user", 8192);
        return Step::Failed("unknown user".into());
    };
    let matched = credentials
        .iter()
        .next()
        .is_some_and(|(mechanism, credential)| super::scram::matches(*mechanism, credential, password));
    match matched {
        true => Step::Done { user: user.to_string(), reply: Vec::new(), expires: None },
        false => Step::Failed("invalid credentials".into()),
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
        let mut config = crate::config::BrokerConfig::load(None).unwrap().security;
        config.sasl_mechanisms = ["SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN"].map(String::from).to_vec();
        Sasl::new(&config, metadata_with("alice", "s3cret"))
    }

    #[test]
    fn plain_checks_the_password_against_the_scram_credential() {
        let sasl = sasl();
        let step = sasl.start("PLAIN").unwrap().step(b"\0alice\0s3cret");
        assert_eq!(step, Step::Done { user: "alice".into(), reply: Vec::new(), expires: None });
        assert!(matches!(sasl.start("PLAIN").unwrap().step(b"\0alice\0wrong"), Step::Failed(_)));
        assert!(matches!(sasl.start("PLAIN").unwrap().step(b"\0bob\0s3cret"), Step::Failed(_)));
        assert!(
            matches!(sasl.start("PLAIN").unwrap().step(b"mallory\0alice\0s3cret"), Step::Failed(_)),
            "acting as another"
        );
        assert!(matches!(sasl.start("PLAIN").unwrap().step(b"garbage"), Step::Failed(_)));
        assert!(sasl.start("GSSAPI").is_none());
    }

    /// A whole SCRAM exchange against rsasl's own client, both mechanisms.
    #[test]
    fn scram_authenticates_with_the_right_password_only() {
        let sasl = sasl();
        for mechanism in ["SCRAM-SHA-256", "SCRAM-SHA-512"] {
            assert!(
                matches!(scram_exchange(&sasl, mechanism, "alice", "s3cret"), Step::Done { ref user, .. } if user == "alice")
            );
            assert!(matches!(scram_exchange(&sasl, mechanism, "alice", "wrong"), Step::Failed(_)));
            assert!(matches!(scram_exchange(&sasl, mechanism, "nobody", "s3cret"), Step::Failed(_)));
        }
    }

    fn scram_exchange(sasl: &Sasl, mechanism: &str, user: &str, password: &str) -> Step {
        use rsasl::prelude::{Mechname, SASLClient, SASLConfig};
        let config = SASLConfig::with_credentials(None, user.into(), password.into()).unwrap();
        let client = SASLClient::new(config);
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

    /// librdkafka before 2.10 sends the client nonce twice in its final
    /// message; Kafka accepts that, and so does this broker, checking the
    /// proof over the message as sent.
    #[test]
    fn a_final_nonce_ending_with_the_servers_is_accepted_as_kafka_does() {
        let sasl = sasl();
        let password = "s3cret";
        let mut exchange = sasl.start("SCRAM-SHA-256").unwrap();
        let Step::Continue(server_first) = exchange.step(b"n,,n=alice,r=cnonce") else { panic!("server-first") };
        let server_first = String::from_utf8(server_first).unwrap();
        let fields: Vec<&str> = server_first.split(',').collect();
        let nonce = fields[0].strip_prefix("r=").unwrap();
        let salt =
            base64::Engine::decode(&base64::engine::general_purpose::STANDARD, fields[1].strip_prefix("s=").unwrap())
                .unwrap();
        let iterations: u32 = fields[2].strip_prefix("i=").unwrap().parse().unwrap();
        let without_proof = format!("c=biws,r=cnonce{nonce}");
        let auth_message = format!("n=alice,r=cnonce,{server_first},{without_proof}");
        let salted =
            crate::security::scram::salted_password(ScramMechanism::Sha256, password.as_bytes(), &salt, iterations);
        let mac = |key: &[u8], data: &[u8]| {
            use hmac::Mac;
            let mut m = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).unwrap();
            m.update(data);
            m.finalize().into_bytes().to_vec()
        };
        let client_key = mac(&salted, b"Client Key");
        let stored = <sha2::Sha256 as sha2::Digest>::digest(&client_key);
        let signature = mac(&stored, auth_message.as_bytes());
        let proof: Vec<u8> = client_key.iter().zip(&signature).map(|(a, b)| a ^ b).collect();
        let proof = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, proof);
        let step = exchange.step(format!("{without_proof},p={proof}").as_bytes());
        assert!(matches!(step, Step::Done { ref user, .. } if user == "alice"), "{step:?}");
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
        let mechanism = proptest::sample::select(vec!["SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN"]);
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
