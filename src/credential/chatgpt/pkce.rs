//! PKCE (RFC 7636, S256) and random state, from ring's SHA-256 and system CSPRNG.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

use crate::secret::SecretString;

pub struct Pkce {
    pub verifier: SecretString,
    pub challenge: String,
}

#[derive(Debug, thiserror::Error)]
#[error("the system's random number generator failed")]
pub struct RandomUnavailable;

impl Pkce {
    pub fn new() -> Result<Self, RandomUnavailable> {
        let verifier = random_token(64)?;
        Ok(Self {
            challenge: challenge_for(&verifier),
            verifier,
        })
    }
}

/// `BASE64URL(SHA256(verifier))`.
pub fn challenge_for(verifier: &SecretString) -> String {
    URL_SAFE_NO_PAD.encode(ring::digest::digest(
        &ring::digest::SHA256,
        verifier.expose().as_bytes(),
    ))
}

/// `bytes` random bytes, base64url-encoded.
pub fn random_token(bytes: usize) -> Result<SecretString, RandomUnavailable> {
    let mut buf = Zeroizing::new(vec![0u8; bytes]);
    SystemRandom::new()
        .fill(&mut buf)
        .map_err(|_| RandomUnavailable)?;
    Ok(SecretString::new(URL_SAFE_NO_PAD.encode(&*buf)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s256_matches_rfc7636_appendix_b() {
        let verifier = SecretString::new("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk".into());
        assert_eq!(
            challenge_for(&verifier),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }

    #[test]
    fn verifiers_are_long_random_and_distinct() {
        let (a, b) = (Pkce::new().unwrap(), Pkce::new().unwrap());
        assert_eq!(a.verifier.expose().len(), 86);
        assert_ne!(a.verifier, b.verifier);
        assert_ne!(a.challenge, b.challenge);
    }
}
