//! Reading the API key from stdin or a file, straight into a fixed buffer that is wiped after.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::AsFd;

use zeroize::Zeroizing;

use crate::config::values::{AuthHeader, KeySource};
use crate::secret::{LockedSecret, SecretHeader};

/// The longest key accepted, in bytes (after CR/LF are trimmed).
pub const MAX_KEY_LEN: usize = 16 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(
        "no API key was given on {from}: pipe it in (`printenv OPENAI_API_KEY | keyward serve`) or pass --api-key-file PATH"
    )]
    Empty { from: KeySource },
    #[error("the API key on {from} is longer than {MAX_KEY_LEN} bytes; is this the right input?")]
    TooLong { from: KeySource },
    #[error(
        "the API key on {from} has {what} at byte {position}; a key may hold only letters, digits, \
         `-._~+/` and trailing `=` (RFC 6750), on a single line"
    )]
    BadByte {
        from: KeySource,
        what: &'static str,
        position: usize,
    },
    #[error("could not read the API key from {from}: {error}")]
    Io { from: KeySource, error: io::Error },
}

/// Reads the key from its source and builds the upstream credential header from it.
pub fn load(source: &KeySource, style: AuthHeader) -> Result<SecretHeader, KeyError> {
    let io_err = |error| KeyError::Io {
        from: source.clone(),
        error,
    };
    let secret = match source {
        KeySource::Stdin => {
            // A duplicate of fd 0 as a plain `File`: reads are raw read(2) calls, so no std
            // buffer ever holds a copy of the key.
            let fd = io::stdin().as_fd().try_clone_to_owned().map_err(io_err)?;
            let mut file = File::from(fd);
            read_key(|buf| file.read(buf), source, style.prefix())?
        }
        KeySource::File(path) => {
            let mut file = File::open(path).map_err(io_err)?;
            read_key(|buf| file.read(buf), source, style.prefix())?
        }
    };
    // The reader accepted only visible ASCII, which is always a valid header value.
    SecretHeader::new(secret).map_err(|_| KeyError::BadByte {
        from: source.clone(),
        what: "a character not allowed in a header",
        position: 0,
    })
}

/// Reads everything `read` yields into a fixed buffer, checks it is one bearer token, and returns
/// `prefix` + token in locked memory. The buffer is wiped on every path out.
pub fn read_key(
    mut read: impl FnMut(&mut [u8]) -> io::Result<usize>,
    source: &KeySource,
    prefix: &[u8],
) -> Result<LockedSecret, KeyError> {
    // One spare byte tells "exactly full" from "too long".
    let mut buf = Zeroizing::new([0u8; MAX_KEY_LEN + 2 + 1]);
    let mut len = 0;
    loop {
        if len == buf.len() {
            return Err(KeyError::TooLong {
                from: source.clone(),
            });
        }
        match read(&mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => {
                return Err(KeyError::Io {
                    from: source.clone(),
                    error,
                });
            }
        }
    }

    let mut end = len;
    while end > 0 && matches!(buf[end - 1], b'\n' | b'\r') {
        end -= 1;
    }
    let key = &buf[..end];
    if key.is_empty() {
        return Err(KeyError::Empty {
            from: source.clone(),
        });
    }
    if key.len() > MAX_KEY_LEN {
        return Err(KeyError::TooLong {
            from: source.clone(),
        });
    }
    check_token(key).map_err(|(position, what)| KeyError::BadByte {
        from: source.clone(),
        what,
        position,
    })?;

    let mut header = Zeroizing::new(Vec::with_capacity(prefix.len() + key.len()));
    header.extend_from_slice(prefix);
    header.extend_from_slice(key);
    Ok(LockedSecret::copy_from(&header))
}

/// RFC 6750 `b64token`: `1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="`.
/// On failure, returns the byte's position and a description that does not reveal it.
fn check_token(key: &[u8]) -> Result<(), (usize, &'static str)> {
    let body_len = key.len() - key.iter().rev().take_while(|&&b| b == b'=').count();
    if body_len == 0 {
        return Err((0, "only `=` padding"));
    }
    for (i, &b) in key[..body_len].iter().enumerate() {
        let ok = b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/');
        if !ok {
            let what = match b {
                b'=' => "`=` before the end",
                b'\n' | b'\r' => "a line break (more than one line)",
                b' ' | b'\t' => "whitespace",
                0..=31 | 127 => "a control character",
                128.. => "a non-ASCII byte",
                _ => "a punctuation character",
            };
            return Err((i, what));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `read` that yields `chunks` in order, each split further if the buffer is shorter.
    fn feed(chunks: Vec<io::Result<Vec<u8>>>) -> impl FnMut(&mut [u8]) -> io::Result<usize> {
        let mut chunks: std::collections::VecDeque<_> = chunks.into();
        move |buf| match chunks.pop_front() {
            None => Ok(0),
            Some(Err(e)) => Err(e),
            Some(Ok(mut bytes)) => {
                let n = bytes.len().min(buf.len());
                buf[..n].copy_from_slice(&bytes[..n]);
                if n < bytes.len() {
                    chunks.push_front(Ok(bytes.split_off(n)));
                }
                Ok(n)
            }
        }
    }

    fn read(chunks: Vec<io::Result<Vec<u8>>>) -> Result<Vec<u8>, KeyError> {
        read_key(feed(chunks), &KeySource::Stdin, b"Bearer ").map(|s| s.expose().to_vec())
    }

    #[test]
    fn short_reads_and_interrupts_are_joined() {
        let got = read(vec![
            Ok(b"sk-".to_vec()),
            Err(io::ErrorKind::Interrupted.into()),
            Ok(b"abc".to_vec()),
            Ok(b"123\n".to_vec()),
        ])
        .unwrap();
        assert_eq!(got, b"Bearer sk-abc123");
    }

    #[test]
    fn crlf_is_trimmed() {
        assert_eq!(read(vec![Ok(b"key\r\n".to_vec())]).unwrap(), b"Bearer key");
    }

    #[test]
    fn jwt_and_base64_keys_are_accepted() {
        let jwt = b"eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiIxIn0.c2ln-_~+/ab==";
        assert_eq!(read(vec![Ok(jwt.to_vec())]).unwrap()[7..], jwt[..]);
    }

    #[test]
    fn a_key_of_the_maximum_length_fits_and_one_more_byte_does_not() {
        let key = vec![b'a'; MAX_KEY_LEN];
        assert_eq!(
            read(vec![Ok(key.clone()), Ok(b"\n".to_vec())])
                .unwrap()
                .len(),
            7 + MAX_KEY_LEN
        );
        let chunks = (0..=MAX_KEY_LEN / 1000)
            .map(|_| Ok(vec![b'a'; 1000]))
            .collect();
        assert!(matches!(read(chunks), Err(KeyError::TooLong { .. })));
    }

    #[test]
    fn empty_input_names_stdin_and_the_file_flag() {
        for input in [vec![], vec![Ok(b"\n".to_vec())]] {
            let err = read(input).unwrap_err();
            let msg = err.to_string();
            assert!(matches!(err, KeyError::Empty { .. }));
            assert!(
                msg.contains("stdin") && msg.contains("--api-key-file"),
                "{msg}"
            );
        }
    }

    #[test]
    fn bad_bytes_are_named_without_printing_the_key() {
        for (input, what) in [
            (&b"sk-secret key"[..], "whitespace"),
            (b"sk-secret\nsecond", "line break"),
            (b"sk-secr=et", "`=` before the end"),
            (b"sk-secr\xc3\xa9t", "non-ASCII"),
            (b"sk-secr%et", "punctuation"),
            (b"sk-secr\x01et", "control"),
            (b"===", "padding"),
        ] {
            let msg = read(vec![Ok(input.to_vec())]).unwrap_err().to_string();
            assert!(msg.contains(what), "{msg}");
            assert!(!msg.contains("secr"), "the key leaked into: {msg}");
        }
    }

    #[test]
    fn read_errors_are_reported() {
        let err = read(vec![Err(io::Error::other("boom"))]).unwrap_err();
        assert!(err.to_string().contains("boom"));
    }

    #[test]
    fn azure_style_has_no_prefix() {
        let got = read_key(
            feed(vec![Ok(b"abc".to_vec())]),
            &KeySource::Stdin,
            AuthHeader::ApiKey.prefix(),
        );
        assert_eq!(got.unwrap().expose(), b"abc");
    }
}
