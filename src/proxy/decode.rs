//! Request bodies a client compressed (`Content-Encoding: gzip`, `deflate` or `zstd`; Codex sends
//! zstd with a ChatGPT sign-in), decoded where keyward must read or change them: the ChatGPT
//! backend's rules, and a usage estimate. A body keyward changed always goes on plain, never
//! under the encoding it came in.

use std::io::Read;
use std::sync::Arc;

use parking_lot::Mutex;

use bytes::Bytes;
use http::HeaderMap;
use http::header::CONTENT_ENCODING;

use crate::telemetry::charge::PlainSize;

/// Why a body could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("the request body's Content-Encoding `{0}` is not one keyward can read")]
    Unsupported(String),
    #[error("the request body is larger than {0} bytes once decoded")]
    TooLarge(u64),
    #[error("the request body is not valid {encoding} (Content-Encoding): {why}")]
    Invalid { encoding: String, why: String },
}

/// The body's encodings, in the order they were applied; empty for a plain body.
pub fn encodings(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(CONTENT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|e| e.trim().to_ascii_lowercase())
        .filter(|e| !e.is_empty() && e != "identity")
        .collect()
}

/// `body` decoded as `headers` say it was encoded, at most `limit` bytes of it.
pub fn decode(headers: &HeaderMap, body: Bytes, limit: u64) -> Result<Bytes, DecodeError> {
    decode_all(&encodings(headers), body, limit)
}

fn decode_all(encodings: &[String], body: Bytes, limit: u64) -> Result<Bytes, DecodeError> {
    let mut body = body;
    for encoding in encodings.iter().rev() {
        body = decode_one(encoding, &body, limit)?;
    }
    Ok(body)
}

/// The bytes of an encoded body forwarded as it came (API key), kept as they pass so that its
/// plain size can be learnt afterwards, for the usage estimate of an answer that reported no
/// usage. Nothing is decoded unless that estimate is needed.
#[derive(Clone, Default)]
pub struct Kept(Arc<Mutex<Vec<u8>>>);

impl Kept {
    /// For an encoded body: where its bytes go, and how to learn its plain size from them.
    /// `None` for a plain body.
    pub fn new(headers: &HeaderMap, limit: u64) -> Option<(Self, PlainSize)> {
        let encodings = encodings(headers);
        if encodings.is_empty() {
            return None;
        }
        let kept = Self::default();
        let bytes = kept.0.clone();
        let size: PlainSize = Box::new(move || {
            let body = std::mem::take(&mut *bytes.lock());
            decode_all(&encodings, Bytes::from(body), limit)
                .ok()
                .map(|plain| plain.len() as u64)
        });
        Some((kept, size))
    }

    pub fn keep(&self, data: &[u8]) {
        self.0.lock().extend_from_slice(data);
    }
}

fn decode_one(encoding: &str, body: &[u8], limit: u64) -> Result<Bytes, DecodeError> {
    let reader: Box<dyn Read + '_> = match encoding {
        "gzip" | "x-gzip" => Box::new(flate2::read::MultiGzDecoder::new(body)),
        "deflate" => Box::new(flate2::read::ZlibDecoder::new(body)),
        "zstd" => Box::new(
            ruzstd::decoding::StreamingDecoder::new(body)
                .map_err(|e| bad(encoding, &e.to_string()))?,
        ),
        other => return Err(DecodeError::Unsupported(other.to_owned())),
    };
    let mut out = Vec::new();
    // One byte past the limit tells a body that is too large from one that just fits.
    reader
        .take(limit.saturating_add(1))
        .read_to_end(&mut out)
        .map_err(|e| bad(encoding, &e.to_string()))?;
    if out.len() as u64 > limit {
        return Err(DecodeError::TooLarge(limit));
    }
    Ok(Bytes::from(out))
}

fn bad(encoding: &str, why: &str) -> DecodeError {
    DecodeError::Invalid {
        encoding: encoding.to_owned(),
        why: why.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn headers(encoding: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_ENCODING, encoding.parse().unwrap());
        headers
    }

    fn gzip(data: &[u8]) -> Bytes {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(data).unwrap();
        Bytes::from(encoder.finish().unwrap())
    }

    #[test]
    fn gzip_is_decoded_within_the_limit_and_unknown_encodings_are_refused() {
        let plain = br#"{"model":"gpt-5","input":"hi"}"#;
        assert_eq!(
            decode(&headers("gzip"), gzip(plain), 1024).unwrap(),
            &plain[..]
        );
        assert_eq!(
            decode(&HeaderMap::new(), Bytes::from_static(plain), 1024).unwrap(),
            &plain[..]
        );
        let bomb = gzip(&vec![b' '; 1 << 20]);
        assert!(matches!(
            decode(&headers("gzip"), bomb, 4096),
            Err(DecodeError::TooLarge(4096))
        ));
        assert!(matches!(
            decode(&headers("br"), Bytes::from_static(b"x"), 10),
            Err(DecodeError::Unsupported(e)) if e == "br"
        ));
        assert!(decode(&headers("zstd"), Bytes::from_static(b"not zstd"), 10).is_err());
    }
}
