//! A plain HTTP/1.1 client for talking to keyward, on hyper.

use std::net::SocketAddr;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends one request on a fresh connection and returns the response with its body unread. Fails
/// the test when no response head comes within [`super::SOON`].
pub async fn send(addr: SocketAddr, req: Request<Full<Bytes>>) -> Response<Incoming> {
    super::within("a response head", async {
        let stream = TcpStream::connect(addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        let (mut sender, conn) = http1::handshake(TokioIo::new(stream)).await.unwrap();
        tokio::spawn(conn);
        sender.send_request(req).await.unwrap()
    })
    .await
}

/// Reads the whole body; fails the test when it does not end within [`super::SOON`].
pub async fn read(response: Response<Incoming>) -> Reply {
    let (parts, body) = response.into_parts();
    let body = super::within("a response body", body.collect())
        .await
        .unwrap()
        .to_bytes();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

/// `POST /v1/responses` with a small JSON body.
pub async fn post_responses(addr: SocketAddr, body: &str) -> Reply {
    let req = Request::post("/v1/responses")
        .header("host", addr.to_string())
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap();
    read(send(addr, req).await).await
}

pub async fn get(addr: SocketAddr, path: &str) -> Reply {
    let req = Request::get(path)
        .header("host", addr.to_string())
        .body(Full::new(Bytes::new()))
        .unwrap();
    read(send(addr, req).await).await
}

/// `GET path` with `Accept: application/json`.
pub async fn get_json(addr: SocketAddr, path: &str) -> Reply {
    let req = Request::get(path)
        .header("host", addr.to_string())
        .header("accept", "application/json")
        .body(Full::new(Bytes::new()))
        .unwrap();
    read(send(addr, req).await).await
}

/// The next data frame of a streamed body, or `None` at its end.
pub async fn next_chunk(body: &mut Incoming) -> Option<Bytes> {
    loop {
        let frame = super::within("the next chunk", body.frame()).await?;
        match frame.unwrap().into_data() {
            Ok(data) => return Some(data),
            Err(_) => continue,
        }
    }
}

/// Writes `request` on a raw TCP connection and reads one response (head and, if it has a
/// Content-Length, its body). For requests a well-behaved client would not send.
pub async fn raw(addr: SocketAddr, request: &[u8]) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = TcpStream::connect(addr).await.unwrap();
    // The server may answer and close before all of a large request is written.
    let _ = stream.write_all(request).await;
    let mut buf = Vec::new();
    super::within("a raw response", async {
        let mut chunk = [0u8; 8192];
        loop {
            if let Some(end) = find(&buf, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                let len = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map_or(0, |v| v.trim().parse::<usize>().unwrap());
                if buf.len() >= end + 4 + len {
                    break;
                }
            }
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP response: {text:?}"));
    (status, text)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A request as an SDK makes it: `token` as its bearer key (keyward's client token).
pub async fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: &str,
    body: Option<serde_json::Value>,
) -> Reply {
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string())
        .header("authorization", format!("Bearer {token}"));
    if body.is_some() {
        req = req.header("content-type", "application/json");
    }
    let body = body.map_or_else(Bytes::new, |b| Bytes::from(b.to_string()));
    read(send(addr, req.body(Full::new(body)).unwrap()).await).await
}
