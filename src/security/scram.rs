//! SCRAM credentials (RFC 5802): what a server keeps of a password, and how
//! a password is checked against it. The exchange itself is rsasl's; this is
//! the arithmetic on either side of it that the broker, the admin API and
//! the CLI share.

use rsasl::mechanisms::scram::tools;
use sha2::{Digest, Sha256, Sha512};

use crate::cluster::metadata::{ScramCredential, ScramMechanism};

/// The iterations Kafka accepts for a SCRAM credential (its `ScramMechanism`
/// bounds): fewer is too cheap to guess, more too costly to check.
pub const MIN_ITERATIONS: u32 = 4096;
pub const MAX_ITERATIONS: u32 = 16384;

/// Longest salt and salted password taken from AlterUserScramCredentials.
pub const MAX_SALT_BYTES: usize = 1024;

/// Bytes of a salted password, StoredKey and ServerKey: the hash's output.
pub fn key_len(mechanism: ScramMechanism) -> usize {
    match mechanism {
        ScramMechanism::Sha256 => 32,
        ScramMechanism::Sha512 => 64,
    }
}

/// The PBKDF2 of `password` (Hi() in RFC 5802).
pub fn salted_password(mechanism: ScramMechanism, password: &[u8], salt: &[u8], iterations: u32) -> Vec<u8> {
    assert!(iterations >= 1, "PBKDF2 needs an iteration");
    match mechanism {
        ScramMechanism::Sha256 => {
            let mut out = Default::default();
            tools::hash_password::<Sha256>(password, iterations, salt, &mut out);
            out.to_vec()
        }
        ScramMechanism::Sha512 => {
            let mut out = Default::default();
            tools::hash_password::<Sha512>(password, iterations, salt, &mut out);
            out.to_vec()
        }
    }
}

/// The credential a server keeps for a salted password: StoredKey and ServerKey.
pub fn credential(mechanism: ScramMechanism, salt: &[u8], salted: &[u8], iterations: u32) -> ScramCredential {
    let (stored_key, server_key) = match mechanism {
        ScramMechanism::Sha256 => {
            let (client_key, server_key) = tools::derive_keys::<Sha256>(salted);
            (Sha256::digest(client_key).to_vec(), server_key.to_vec())
        }
        ScramMechanism::Sha512 => {
            let (client_key, server_key) = tools::derive_keys::<Sha512>(salted);
            (Sha512::digest(client_key).to_vec(), server_key.to_vec())
        }
    };
    ScramCredential { salt: salt.to_vec(), stored_key, server_key, iterations }
}

/// The credential for `password` under a fresh random salt.
#[cfg(test)]
pub fn new_credential(mechanism: ScramMechanism, password: &[u8], iterations: u32) -> ScramCredential {
    let salt: [u8; 32] = rand::random();
    let salted = salted_password(mechanism, password, &salt, iterations);
    credential(mechanism, &salt, &salted, iterations)
}

/// Whether `password` is the one `credential` was made from (PLAIN checks
/// the password it is sent this way). Compares without an early exit.
pub fn matches(mechanism: ScramMechanism, credential: &ScramCredential, password: &[u8]) -> bool {
    let salted = salted_password(mechanism, password, &credential.salt, credential.iterations);
    let computed = self::credential(mechanism, &credential.salt, &salted, credential.iterations);
    let differ = computed.stored_key.iter().zip(&credential.stored_key).fold(0u8, |acc, (a, b)| acc | (a ^ b));
    computed.stored_key.len() == credential.stored_key.len() && differ == 0
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

    fn hex(text: &str) -> Vec<u8> {
        (0..text.len()).step_by(2).map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap()).collect()
    }
}
