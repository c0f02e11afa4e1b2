//! Secret custody: types that never print their contents and wipe themselves on drop, and the
//! process hardening that keeps them from being read ([`hardening`]: no core dumps, no ptrace,
//! locked memory, a scrubbed environment), sockets inherited at exec ([`inherited`]) and the
//! sandbox `serve` puts itself in ([`sandbox`]). The lowest layer: it uses no other.

pub mod hardening;
pub mod inherited;
pub mod private_file;
pub mod sandbox;

use std::fmt;

use bytes::Bytes;
use http::HeaderValue;
use zeroize::Zeroize;

/// Bytes of a secret held in memory that is locked against swapping (when the kernel allows it)
/// and zeroized before it is freed.
pub struct LockedSecret {
    bytes: Box<[u8]>,
    locked: bool,
}

impl LockedSecret {
    /// Copies `src` into a fresh exact-size allocation and locks it. The caller wipes `src`.
    pub fn copy_from(src: &[u8]) -> Self {
        let bytes: Box<[u8]> = src.into();
        let locked = match hardening::lock_memory(&bytes) {
            Ok(()) => true,
            Err(err) => {
                tracing::warn!(error = %err, "could not lock the secret's memory (mlock); it may be swapped to disk");
                false
            }
        };
        Self { bytes, locked }
    }

    /// The secret itself. Every use is a deliberate, greppable call.
    pub fn expose(&self) -> &[u8] {
        &self.bytes
    }

    pub fn is_locked(&self) -> bool {
        self.locked
    }
}

impl AsRef<[u8]> for LockedSecret {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

impl Drop for LockedSecret {
    fn drop(&mut self) {
        self.bytes.zeroize();
        if self.locked {
            hardening::unlock_memory(&self.bytes);
        }
    }
}

impl fmt::Debug for LockedSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// A credential header value built once from a [`LockedSecret`], shared without copying.
///
/// Cloning it clones a reference to the locked buffer, never the bytes; the value is marked
/// sensitive so HTTP/2 never puts it in a compression table and `Debug` hides it.
#[derive(Clone)]
pub struct SecretHeader(HeaderValue);

impl SecretHeader {
    /// Wraps an already validated header value. Fails only if `secret` holds bytes that are not
    /// valid in a header, which the key reader has already ruled out.
    pub fn new(secret: LockedSecret) -> Result<Self, http::header::InvalidHeaderValue> {
        let mut value = HeaderValue::from_maybe_shared(Bytes::from_owner(secret))?;
        value.set_sensitive(true);
        Ok(Self(value))
    }

    /// The header value, to be placed in an outgoing request.
    pub fn expose(&self) -> HeaderValue {
        self.0.clone()
    }
}

impl fmt::Debug for SecretHeader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretHeader([redacted])")
    }
}

/// A secret string (a token, a PKCE verifier): `Debug` and `Display` print `[redacted]`, the
/// bytes are zeroized on drop, and it (de)serializes as a plain string for the login store.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct SecretString(zeroize::Zeroizing<String>);

impl SecretString {
    pub fn new(value: String) -> Self {
        Self(zeroize::Zeroizing::new(value))
    }

    /// The secret itself. Every use is a deliberate, greppable call.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// A short, non-reversible tag telling two secrets apart in logs and comparisons.
    pub fn fingerprint(&self) -> String {
        let digest = ring::digest::digest(&ring::digest::SHA256, self.0.as_bytes());
        digest.as_ref()[..6]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

impl From<String> for SecretString {
    fn from(value: String) -> Self {
        Self::new(value)
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl serde::Serialize for SecretString {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for SecretString {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Self::new)
    }
}

/// Builds `Bearer TOKEN` in locked memory, for a header sent upstream.
pub fn bearer_header(
    token: &SecretString,
) -> Result<SecretHeader, http::header::InvalidHeaderValue> {
    let mut value = zeroize::Zeroizing::new(Vec::with_capacity(7 + token.0.len()));
    value.extend_from_slice(b"Bearer ");
    value.extend_from_slice(token.0.as_bytes());
    SecretHeader::new(LockedSecret::copy_from(&value))
}

#[cfg(test)]
mod tests {
    #[test]
    fn secret_strings_never_print() {
        let s = super::SecretString::new("tok-canary".into());
        assert_eq!(format!("{s:?} {s}"), "[redacted] [redacted]");
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"tok-canary\"");
        assert_eq!(s.fingerprint().len(), 12);
    }

    use super::*;

    #[test]
    fn debug_never_shows_the_secret() {
        let secret = LockedSecret::copy_from(b"Bearer sk-canary-123");
        assert_eq!(format!("{secret:?}"), "[redacted]");
        let header = SecretHeader::new(secret).unwrap();
        let shown = format!("{header:?} {:?}", header.expose());
        assert!(!shown.contains("canary"), "{shown}");
    }

    #[test]
    fn header_shares_the_locked_bytes() {
        let secret = LockedSecret::copy_from(b"Bearer abc");
        let ptr = secret.expose().as_ptr();
        let header = SecretHeader::new(secret).unwrap();
        assert_eq!(header.expose().as_bytes().as_ptr(), ptr, "no copy was made");
        assert!(header.expose().is_sensitive());
    }

    #[test]
    fn secrets_are_wiped_before_their_memory_is_freed() {
        use crate::secret::hardening::freed_watch::{hits, watch};
        const CANARY: &[u8] = b"wipe-canary-5c1e0d7a9b3f4e2d8a6c";
        let text = || String::from_utf8(CANARY.to_vec()).unwrap_or_default();
        watch(CANARY);
        // The watcher sees a plain copy freed...
        drop(text());
        assert_eq!(hits(), 1, "the watcher sees a freed copy");
        // ...and none of the secret types.
        drop(SecretString::new(text()));
        drop(LockedSecret::copy_from(CANARY));
        drop(SecretHeader::new(LockedSecret::copy_from(CANARY)).unwrap());
        drop(bearer_header(&SecretString::new(text())).unwrap());
        assert_eq!(hits(), 1, "a secret's memory was freed unwiped");
    }
}
