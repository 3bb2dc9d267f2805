//! Device API keys: `iotk_<key id>_<secret>`.
//!
//! The key id (12 hex characters, public) lets a gateway find the one candidate record with a
//! hash-map lookup instead of scanning; the secret (256 random bits, 64 hex characters) is only
//! ever stored as its SHA-256. A fast hash is right here: the secret is random, not a human
//! password, so there is nothing for a slow hash like argon2 to protect against, and ingest must
//! verify a key on every request.

use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use uuid::Uuid;

const PREFIX: &str = "iotk_";
const KEY_ID_HEX: usize = 12;
const SECRET_HEX: usize = 64;

/// A freshly generated key: the full text is shown to the user once and then forgotten.
pub struct NewKey {
    pub key_id: String,
    pub secret_sha256: String,
    /// The whole key as the device must send it.
    pub full: Secret,
}

/// A secret string whose `Debug` never prints it, so it cannot leak through a log line.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Self(s)
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

/// Generates a new key from the operating system's CSPRNG.
pub fn generate() -> NewKey {
    let mut id = [0u8; KEY_ID_HEX / 2];
    let mut secret = [0u8; SECRET_HEX / 2];
    let mut rng = rand::rng();
    rng.fill_bytes(&mut id);
    rng.fill_bytes(&mut secret);
    let key_id = hex::encode(id);
    let secret = hex::encode(secret);
    NewKey {
        secret_sha256: hash_secret(&secret),
        full: Secret(format!("{PREFIX}{key_id}_{secret}")),
        key_id,
    }
}

pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// The two parts of a presented key; `None` when it is not in the key format at all.
pub fn split(presented: &str) -> Option<(&str, &str)> {
    let rest = presented.strip_prefix(PREFIX)?;
    let (key_id, secret) = rest.split_once('_')?;
    let hex = |s: &str, len| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
    (hex(key_id, KEY_ID_HEX) && hex(secret, SECRET_HEX)).then_some((key_id, secret))
}

/// What the processor mirrors into the KV bucket for each device (KV key = device id), and what
/// every gateway keeps in memory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceKeyRecord {
    pub device_id: Uuid,
    pub key_id: String,
    pub secret_sha256: String,
    pub enabled: bool,
}

impl DeviceKeyRecord {
    /// Whether `secret` is this record's secret, in constant time so that response timing tells
    /// an attacker nothing about how much of a guess was right.
    pub fn verify(&self, secret: &str) -> bool {
        let presented = hash_secret(secret);
        presented
            .as_bytes()
            .ct_eq(self.secret_sha256.as_bytes())
            .into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_key_splits_and_verifies_against_its_own_record_only() {
        let k = generate();
        let (key_id, secret) = split(k.full.expose()).unwrap();
        assert_eq!(key_id, k.key_id);
        let rec = DeviceKeyRecord {
            device_id: Uuid::new_v4(),
            key_id: k.key_id.clone(),
            secret_sha256: k.secret_sha256.clone(),
            enabled: true,
        };
        assert!(rec.verify(secret));
        let other = generate();
        let (_, other_secret) = split(other.full.expose()).unwrap();
        assert!(!rec.verify(other_secret));
    }

    #[test]
    fn keys_carry_at_least_256_random_bits_and_differ() {
        let a = generate();
        let b = generate();
        assert_ne!(a.full, b.full);
        let (_, secret) = split(a.full.expose()).unwrap();
        assert_eq!(secret.len() * 4, 256);
    }

    #[test]
    fn malformed_keys_do_not_split() {
        let k = generate();
        let full = k.full.expose();
        for bad in [
            "",
            "iotk_",
            "Bearer x",
            &full[..full.len() - 1],
            &full.replacen("iotk_", "iotx_", 1),
            &format!("{full}0"),
            &full.replace('_', "-"),
        ] {
            assert!(split(bad).is_none(), "{bad:?} split");
        }
    }

    #[test]
    fn debug_of_a_secret_never_prints_it() {
        let k = generate();
        assert_eq!(format!("{:?}", k.full), "[redacted]");
    }
}
