//! SCRAM (RFC 5802, RFC 7677) on the broker: the credential a server keeps
//! for a password, and the server side of the exchange.
//!
//! The exchange is written here rather than taken from rsasl because Kafka's
//! clients need one tolerance a strict server lacks: librdkafka before 2.10
//! sends the client nonce twice in its final message (its nonce, then the
//! whole combined nonce the server sent). Apache Kafka accepts a final nonce
//! that ends with the combined one (`ScramSaslServer`), and so does this;
//! the proof is checked over the message exactly as the client sent it.

use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256, Sha512};

use crate::cluster::metadata::{ScramCredential, ScramMechanism};

/// The iterations Kafka accepts for a SCRAM credential (its `ScramMechanism`
/// bounds): fewer is too cheap to guess, more too costly to check.
pub const MIN_ITERATIONS: u32 = 4096;
pub const MAX_ITERATIONS: u32 = 16384;

/// Longest salt and salted password taken from AlterUserScramCredentials.
pub const MAX_SALT_BYTES: usize = 1024;

/// Characters of the server's part of the nonce.
const SERVER_NONCE_CHARS: usize = 32;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Bytes of a salted password, StoredKey and ServerKey: the hash's output.
pub fn key_len(mechanism: ScramMechanism) -> usize {
    match mechanism {
        ScramMechanism::Sha256 => 32,
        ScramMechanism::Sha512 => 64,
    }
}

fn hmac(mechanism: ScramMechanism, key: &[u8], data: &[u8]) -> Vec<u8> {
    match mechanism {
        ScramMechanism::Sha256 => {
            let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
            mac.update(data);
            mac.finalize().into_bytes().to_vec()
        }
        ScramMechanism::Sha512 => {
            let mut mac = Hmac::<Sha512>::new_from_slice(key).expect("HMAC takes any key length");
            mac.update(data);
            mac.finalize().into_bytes().to_vec()
        }
    }
}

fn hash(mechanism: ScramMechanism, data: &[u8]) -> Vec<u8> {
    match mechanism {
        ScramMechanism::Sha256 => Sha256::digest(data).to_vec(),
        ScramMechanism::Sha512 => Sha512::digest(data).to_vec(),
    }
}

/// The PBKDF2 of `password` (Hi() in RFC 5802).
pub fn salted_password(mechanism: ScramMechanism, password: &[u8], salt: &[u8], iterations: u32) -> Vec<u8> {
    assert!(iterations >= 1, "PBKDF2 needs an iteration");
    let mut out = vec![0u8; key_len(mechanism)];
    match mechanism {
        ScramMechanism::Sha256 => pbkdf2::pbkdf2_hmac::<Sha256>(password, salt, iterations, &mut out),
        ScramMechanism::Sha512 => pbkdf2::pbkdf2_hmac::<Sha512>(password, salt, iterations, &mut out),
    }
    out
}

/// The credential a server keeps for a salted password: StoredKey and ServerKey.
pub fn credential(mechanism: ScramMechanism, salt: &[u8], salted: &[u8], iterations: u32) -> ScramCredential {
    let client_key = hmac(mechanism, salted, b"Client Key");
    ScramCredential {
        salt: salt.to_vec(),
        stored_key: hash(mechanism, &client_key),
        server_key: hmac(mechanism, salted, b"Server Key"),
        iterations,
    }
}

/// The credential for `password` under a fresh random salt.
#[cfg(test)]
pub fn new_credential(mechanism: ScramMechanism, password: &[u8], iterations: u32) -> ScramCredential {
    let salt: [u8; 32] = rand::random();
    let salted = salted_password(mechanism, password, &salt, iterations);
    credential(mechanism, &salt, &salted, iterations)
}

/// Whether `password` is the one `credential` was made from (PLAIN checks
/// the password it is sent this way).
pub fn matches(mechanism: ScramMechanism, credential: &ScramCredential, password: &[u8]) -> bool {
    let salted = salted_password(mechanism, password, &credential.salt, credential.iterations);
    super::same_secret(
        &self::credential(mechanism, &credential.salt, &salted, credential.iterations).stored_key,
        &credential.stored_key,
    )
}

/// The server side of one SCRAM exchange: client-first, then client-final.
pub enum ScramServer {
    /// Waiting for client-first-message.
    Start {
        mechanism: ScramMechanism,
    },
    /// server-first-message sent; waiting for client-final-message.
    Challenged {
        mechanism: ScramMechanism,
        user: String,
        credential: ScramCredential,
        gs2_header: String,
        client_first_bare: String,
        server_first: String,
        nonce: String,
    },
    Ended,
}

/// What one client message led to.
#[derive(Debug, PartialEq, Eq)]
pub enum ScramStep {
    Reply(Vec<u8>),
    Authenticated { user: String, reply: Vec<u8> },
    Failed(&'static str),
}

impl ScramServer {
    pub fn new(mechanism: ScramMechanism) -> ScramServer {
        ScramServer::Start { mechanism }
    }

    /// Takes the client's next message; `lookup` finds a user's credential.
    pub fn step(&mut self, input: &[u8], lookup: impl Fn(&str) -> Option<ScramCredential>) -> ScramStep {
        let Ok(text) = std::str::from_utf8(input) else { return ScramStep::Failed("a SCRAM message is not UTF-8") };
        match std::mem::replace(self, ScramServer::Ended) {
            ScramServer::Start { mechanism } => match client_first(text) {
                Err(why) => ScramStep::Failed(why),
                Ok((gs2_header, client_first_bare, user, client_nonce)) => {
                    let Some(credential) = lookup(&user) else { return ScramStep::Failed("unknown user") };
                    let nonce = format!("{client_nonce}{}", server_nonce());
                    let salt = B64.encode(&credential.salt);
                    let server_first = format!("r={nonce},s={salt},i={}", credential.iterations);
                    let reply = server_first.clone().into_bytes();
                    *self = ScramServer::Challenged {
                        mechanism,
                        user,
                        credential,
                        gs2_header,
                        client_first_bare,
                        server_first,
                        nonce,
                    };
                    ScramStep::Reply(reply)
                }
            },
            ScramServer::Challenged {
                mechanism,
                user,
                credential,
                gs2_header,
                client_first_bare,
                server_first,
                nonce,
            } => {
                let Some((without_proof, proof)) = text.rsplit_once(",p=") else {
                    return ScramStep::Failed("the client-final message has no proof");
                };
                let attribute = |name: &str| without_proof.split(',').find_map(|a| a.strip_prefix(name));
                if attribute("c=") != Some(B64.encode(&gs2_header).as_str()) {
                    return ScramStep::Failed("the channel binding does not match the client-first header");
                }
                // Kafka's tolerance: librdkafka before 2.10 prefixes the client nonce once more.
                if !attribute("r=").is_some_and(|r| r.ends_with(&nonce)) {
                    return ScramStep::Failed("the client-final nonce is not the server's");
                }
                let Ok(proof) = B64.decode(proof) else { return ScramStep::Failed("the proof is not base64") };
                let auth_message = format!("{client_first_bare},{server_first},{without_proof}");
                let signature = hmac(mechanism, &credential.stored_key, auth_message.as_bytes());
                if proof.len() != signature.len() {
                    return ScramStep::Failed("invalid credentials");
                }
                let client_key: Vec<u8> = proof.iter().zip(&signature).map(|(p, s)| p ^ s).collect();
                if !super::same_secret(&hash(mechanism, &client_key), &credential.stored_key) {
                    return ScramStep::Failed("invalid credentials");
                }
                let verifier = hmac(mechanism, &credential.server_key, auth_message.as_bytes());
                ScramStep::Authenticated { user, reply: format!("v={}", B64.encode(verifier)).into_bytes() }
            }
            ScramServer::Ended => ScramStep::Failed("the SCRAM exchange is over"),
        }
    }
}

/// A client-first-message: its GS2 header, its bare part, the user and the client nonce.
fn client_first(text: &str) -> Result<(String, String, String, String), &'static str> {
    let mut parts = text.splitn(3, ',');
    let (Some(binding), Some(authzid), Some(bare)) = (parts.next(), parts.next(), parts.next()) else {
        return Err("the client-first message has no GS2 header");
    };
    if !matches!(binding, "n" | "y") {
        return Err("channel binding is not supported (SCRAM-...-PLUS)");
    }
    let mut attributes = bare.split(',');
    let (Some(user), Some(nonce)) =
        (attributes.next().and_then(|a| a.strip_prefix("n=")), attributes.next().and_then(|a| a.strip_prefix("r=")))
    else {
        return Err("the client-first message needs n= and r=");
    };
    // Kafka's only extension is tokenauth (delegation tokens, not offered); m= is mandatory-unknown.
    if bare.split(',').any(|a| a.starts_with("m=")) {
        return Err("an unknown mandatory SCRAM extension");
    }
    let user = user.replace("=2C", ",").replace("=3D", "=");
    if let Some(authzid) = authzid.strip_prefix("a=") {
        if authzid.replace("=2C", ",").replace("=3D", "=") != user {
            return Err("acting as another user is not allowed");
        }
    }
    if user.is_empty() || nonce.is_empty() || nonce.contains(|c: char| !c.is_ascii_graphic()) {
        return Err("an empty user or nonce, or a nonce of unprintable characters");
    }
    Ok((format!("{binding},{authzid},"), bare.to_string(), user, nonce.to_string()))
}

fn server_nonce() -> String {
    use rand::Rng;
    let mut rng = rand::thread_rng();
    (0..SERVER_NONCE_CHARS).map(|_| rng.sample(rand::distributions::Alphanumeric) as char).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7677's SCRAM-SHA-256 example: password "pencil" and its salt. The
    /// keys were computed with Python's hashlib and hmac, an implementation
    /// of its own.
    #[test]
    fn the_rfc_7677_example_credential() {
        let salt = hex("5b6d99689d12358eeca04b141236fa81");
        let salted = salted_password(ScramMechanism::Sha256, b"pencil", &salt, 4096);
        let credential = credential(ScramMechanism::Sha256, &salt, &salted, 4096);
        assert_eq!(credential.stored_key, hex("586e5df283e6dceb5c3e791d8b8528ec191e664045ce971792e2e6b5bb13e2a6"));
        assert_eq!(credential.server_key, hex("c1f3cbc1c13a9d35a14c0990eed97629ea225863e566a4314ab99f3f00e5d9d5"));
        assert!(matches(ScramMechanism::Sha256, &credential, b"pencil"));
        assert!(!matches(ScramMechanism::Sha256, &credential, b"pencil "));
        assert!(!matches(ScramMechanism::Sha512, &new_credential(ScramMechanism::Sha512, b"a", 4096), b"b"));
    }

    /// RFC 7677's whole exchange, with its server nonce: the client's proof
    /// is accepted and the server's verifier is the RFC's.
    #[test]
    fn the_rfc_7677_example_exchange() {
        let salt = hex("5b6d99689d12358eeca04b141236fa81");
        let salted = salted_password(ScramMechanism::Sha256, b"pencil", &salt, 4096);
        let stored = credential(ScramMechanism::Sha256, &salt, &salted, 4096);
        let client_first_bare = "n=user,r=rOprNGfwEbeRWgbNEkqO".to_string();
        let nonce = "rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0".to_string();
        let server_first = format!("r={nonce},s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096");
        let mut server = ScramServer::Challenged {
            mechanism: ScramMechanism::Sha256,
            user: "user".into(),
            credential: stored,
            gs2_header: "n,,".into(),
            client_first_bare,
            server_first,
            nonce,
        };
        let client_final = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
        let step = server.step(client_final.as_bytes(), |_| None);
        let reply = b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=".to_vec();
        assert_eq!(step, ScramStep::Authenticated { user: "user".into(), reply });
    }

    #[test]
    fn malformed_first_messages_are_refused() {
        let lookup = |_: &str| Some(new_credential(ScramMechanism::Sha256, b"pw", 4096));
        for bad in
            ["", "n,,", "p=tls-unique,,n=a,r=x", "n,,n=a", "n,,r=x", "n,,n=,r=x", "n,a=b,n=a,r=x", "n,,n=a,r=x,m=ext"]
        {
            let step = ScramServer::new(ScramMechanism::Sha256).step(bad.as_bytes(), lookup);
            assert!(matches!(step, ScramStep::Failed(_)), "{bad:?} refused: {step:?}");
        }
        let ok = ScramServer::new(ScramMechanism::Sha256).step(b"n,,n=a,r=abc", lookup);
        assert!(matches!(ok, ScramStep::Reply(ref r) if r.starts_with(b"r=abc")), "{ok:?}");
    }

    fn hex(text: &str) -> Vec<u8> {
        (0..text.len()).step_by(2).map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap()).collect()
    }
}
