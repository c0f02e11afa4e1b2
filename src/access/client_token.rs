//! A client token: made here, shown once, and kept only as its SHA-256 (a token is 256 random
//! bits, so a plain hash cannot be reversed or guessed).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::digest::{SHA256, digest};
use ring::rand::{SecureRandom, SystemRandom};

use crate::secret::SecretString;

/// Tokens start with this, so that they are recognisable in a config file or a secret scanner.
const TOKEN_PREFIX: &str = "kw-";

/// A new token, and the hex SHA-256 that is all keyward keeps of it.
pub fn new_token() -> Result<(SecretString, String), String> {
    let mut random = zeroize::Zeroizing::new([0u8; 32]);
    SystemRandom::new()
        .fill(&mut random[..])
        .map_err(|e| e.to_string())?;
    let token = SecretString::new(format!(
        "{TOKEN_PREFIX}{}",
        URL_SAFE_NO_PAD.encode(&random[..])
    ));
    let hash = hash_hex(token.expose().as_bytes());
    Ok((token, hash))
}

/// Whether `name` can name a client: 1 to 64 letters, digits, `.`, `_` or `-`, starting with a
/// letter or digit.
pub fn is_client_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

fn hash_hex(bytes: &[u8]) -> String {
    digest(&SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
