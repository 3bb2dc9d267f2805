//! HS256, the one token algorithm the hub signs and accepts, as jsonwebtoken's crypto provider.
//!
//! jsonwebtoken needs a crypto backend. Its RustCrypto one links RSA (with an advisory that has
//! no fix, RUSTSEC-2023-0071), ECDSA and EdDSA code the hub never runs; its aws-lc one builds a
//! C library. A provider that knows HS256 alone keeps all of that out of the binary and out of
//! `cargo audit`, and refuses every other algorithm in the crypto layer as well as in
//! `Validation`. The MAC itself is the RustCrypto `hmac` crate, which compares in constant time.

use hmac::{Hmac, KeyInit, Mac};
use jsonwebtoken::crypto::{CryptoProvider, JwtSigner, JwtVerifier, KeyUtils};
use jsonwebtoken::errors::{ErrorKind, Result};
use jsonwebtoken::signature::{self, Signer, Verifier};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, EncodingKey};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// A keyed HMAC-SHA256, cloned per token so that the key schedule is computed once.
struct Hs256(HmacSha256);

impl Hs256 {
    fn new(algorithm: &Algorithm, family: AlgorithmFamily, key: &[u8]) -> Result<Self> {
        if *algorithm != Algorithm::HS256 || family != AlgorithmFamily::Hmac {
            return Err(ErrorKind::InvalidAlgorithm.into());
        }
        HmacSha256::new_from_slice(key)
            .map(Self)
            .map_err(|_| ErrorKind::InvalidKeyFormat.into())
    }
}

impl Signer<Vec<u8>> for Hs256 {
    fn try_sign(&self, msg: &[u8]) -> std::result::Result<Vec<u8>, signature::Error> {
        let mut mac = self.0.clone();
        mac.update(msg);
        Ok(mac.finalize().into_bytes().to_vec())
    }
}

impl Verifier<Vec<u8>> for Hs256 {
    fn verify(&self, msg: &[u8], sig: &Vec<u8>) -> std::result::Result<(), signature::Error> {
        let mut mac = self.0.clone();
        mac.update(msg);
        mac.verify_slice(sig).map_err(|_| signature::Error::new())
    }
}

impl JwtSigner for Hs256 {
    fn algorithm(&self) -> Algorithm {
        Algorithm::HS256
    }
}

impl JwtVerifier for Hs256 {
    fn algorithm(&self) -> Algorithm {
        Algorithm::HS256
    }
}

fn signer(algorithm: &Algorithm, key: &EncodingKey) -> Result<Box<dyn JwtSigner>> {
    Ok(Box::new(Hs256::new(
        algorithm,
        key.family(),
        key.as_bytes(),
    )?))
}

fn verifier(algorithm: &Algorithm, key: &DecodingKey) -> Result<Box<dyn JwtVerifier>> {
    Ok(Box::new(Hs256::new(
        algorithm,
        key.family(),
        key.try_get_as_bytes()?,
    )?))
}

/// The hub uses no JWKs; these answer an error where the library's placeholders would panic.
static PROVIDER: CryptoProvider = CryptoProvider {
    signer_factory: signer,
    verifier_factory: verifier,
    key_utils: KeyUtils {
        rsa_pub_components_from_private_key: |_| Err(ErrorKind::InvalidAlgorithm.into()),
        rsa_pub_components_from_public_key: |_| Err(ErrorKind::InvalidAlgorithm.into()),
        ec_pub_components_from_private_key: |_, _| Err(ErrorKind::InvalidAlgorithm.into()),
        ed_pub_components_from_private_key: |_, _| Err(ErrorKind::InvalidAlgorithm.into()),
        compute_digest: |_, _| Err(ErrorKind::InvalidAlgorithm.into()),
    },
};

/// Makes HS256 the process's token crypto; idempotent. Fails only if another provider was
/// installed first, which would mean someone else decides what tokens are accepted.
pub fn install() -> anyhow::Result<()> {
    let _ = PROVIDER.install_default();
    match CryptoProvider::try_get_default() {
        Some(p) if std::ptr::eq(p, &PROVIDER) => Ok(()),
        _ => anyhow::bail!("another JWT crypto provider is installed in this process"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::crypto::{sign, verify};

    // The example token of jwt.io (RFC 7519 style HS256 with the secret "your-256-bit-secret"):
    // a signature any other JWT library computes the same way.
    const MESSAGE: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ";
    const SIGNATURE: &str = "SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c";
    const SECRET: &[u8] = b"your-256-bit-secret";

    #[test]
    fn hs256_signs_and_verifies_as_every_other_implementation_does() {
        install().unwrap();
        let enc = EncodingKey::from_secret(SECRET).unwrap();
        let dec = DecodingKey::from_secret(SECRET).unwrap();
        assert_eq!(
            sign(MESSAGE.as_bytes(), &enc, Algorithm::HS256).unwrap(),
            SIGNATURE
        );
        assert!(verify(SIGNATURE, MESSAGE.as_bytes(), &dec, Algorithm::HS256).unwrap());

        let mut tampered = SIGNATURE.to_owned();
        tampered.replace_range(0..1, "T");
        assert!(!verify(&tampered, MESSAGE.as_bytes(), &dec, Algorithm::HS256).unwrap());
        let other = DecodingKey::from_secret(b"another-256-bit-secret").unwrap();
        assert!(!verify(SIGNATURE, MESSAGE.as_bytes(), &other, Algorithm::HS256).unwrap());
    }

    #[test]
    fn every_other_algorithm_is_an_error_not_a_panic() {
        install().unwrap();
        let enc = EncodingKey::from_secret(SECRET).unwrap();
        let dec = DecodingKey::from_secret(SECRET).unwrap();
        for alg in [
            Algorithm::HS384,
            Algorithm::HS512,
            Algorithm::RS256,
            Algorithm::PS256,
            Algorithm::ES256,
            Algorithm::EdDSA,
        ] {
            assert!(
                sign(MESSAGE.as_bytes(), &enc, alg).is_err(),
                "{alg:?} signed"
            );
            assert!(
                verify(SIGNATURE, MESSAGE.as_bytes(), &dec, alg).is_err(),
                "{alg:?} verified"
            );
        }
        // A non-HMAC key (the family comes from the key type) is refused even for HS256.
        let rsa = DecodingKey::from_rsa_raw_components(&[1, 2, 3], &[1, 0, 1]);
        assert!(verify(SIGNATURE, MESSAGE.as_bytes(), &rsa, Algorithm::HS256).is_err());
    }
}
