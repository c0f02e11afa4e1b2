//! Which headers cross keyward, in each direction.

use http::header::{self, HeaderMap, HeaderName};

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1), plus the proxy
/// credentials a client might send. Never forwarded in either direction. (These lists are
/// statics: a `const` array is built and dropped again at every use.)
static HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
    HeaderName::from_static("proxy-connection"),
];

/// Client headers keyward replaces or handles itself, whatever the credential, endpoint or
/// transport. `Host` is set from the upstream URL; the credential headers are keyward's own;
/// the client's own identity with the upstream (`Cookie`, `ChatGPT-Account-ID`,
/// `X-OpenAI-Fedramp`) never passes: a browser sends the cookies of every local web app to every
/// port of 127.0.0.1, and an account is the credential's to name; `Expect: 100-continue` is
/// answered by keyward's HTTP server; and `Accept-Encoding` is keyward's: it asks for answers it
/// can read the usage of.
static REPLACED: [HeaderName; 8] = [
    header::HOST,
    header::AUTHORIZATION,
    HeaderName::from_static("api-key"),
    header::COOKIE,
    HeaderName::from_static("chatgpt-account-id"),
    HeaderName::from_static("x-openai-fedramp"),
    header::EXPECT,
    header::ACCEPT_ENCODING,
];

/// Headers whose values are credentials: redacted wherever keyward writes headers down.
pub static CREDENTIALS: [HeaderName; 6] = [
    header::AUTHORIZATION,
    header::PROXY_AUTHORIZATION,
    header::COOKIE,
    header::SET_COOKIE,
    HeaderName::from_static("api-key"),
    HeaderName::from_static("x-api-key"),
];

/// The headers sent upstream for a client's request, on every path (HTTP or a WebSocket
/// handshake) and with every credential: everything the client sent except hop-by-hop headers
/// (including those its `Connection` header names) and the replaced ones, and
/// `Accept-Encoding: identity`. The credential adds its own afterwards
/// ([`crate::proxy::credential::Credential::authorize`]). An uncompressed answer is one whose usage keyward can read
/// (a client asking for gzip would otherwise go uncounted); the client gets it uncompressed,
/// which on loopback costs nothing.
pub fn upstream_request_headers(client: &HeaderMap) -> HeaderMap {
    let mut headers = filter(client, &REPLACED, None);
    headers.insert(
        header::ACCEPT_ENCODING,
        http::HeaderValue::from_static("identity"),
    );
    headers
}

/// The headers sent to the client for the upstream's response: everything but hop-by-hop ones
/// and CORS headers (keyward never lets a web page read its answers).
pub fn client_response_headers(upstream: &HeaderMap) -> HeaderMap {
    filter(upstream, &[], Some("access-control-"))
}

fn filter(from: &HeaderMap, also_drop: &[HeaderName], drop_prefix: Option<&str>) -> HeaderMap {
    let named_by_connection: Vec<HeaderName> = from
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    let mut out = HeaderMap::with_capacity(from.len());
    for (name, value) in from {
        if HOP_BY_HOP.contains(name)
            || also_drop.contains(name)
            || named_by_connection.contains(name)
            || drop_prefix.is_some_and(|prefix| name.as_str().starts_with(prefix))
        {
            continue;
        }
        out.append(name.clone(), value.clone());
    }
    out
}

pub fn is_credential(name: &HeaderName) -> bool {
    CREDENTIALS.contains(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn map(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        m
    }

    #[test]
    fn request_keeps_identity_headers_and_drops_the_rest() {
        let client = map(&[
            ("host", "127.0.0.1:1"),
            ("authorization", "Bearer client"),
            ("api-key", "client"),
            ("connection", "keep-alive, x-secret-hop"),
            ("x-secret-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("proxy-authorization", "Basic eA=="),
            ("proxy-connection", "keep-alive"),
            ("upgrade", "websocket"),
            ("session-id", "s1"),
            ("x-codex-window-id", "w1"),
            ("originator", "codex_exec"),
            ("accept", "text/event-stream"),
            ("cookie", "a=b"),
            ("chatgpt-account-id", "acct_client"),
            ("x-openai-fedramp", "true"),
            ("accept-encoding", "gzip, br"),
        ]);
        let out = upstream_request_headers(&client);
        // The answer comes back plain, so its usage can be read, whatever the client asked for.
        assert_eq!(out["accept-encoding"], "identity");
        let names: Vec<_> = out.keys().map(|k| k.as_str()).collect();
        assert_eq!(
            names,
            [
                "session-id",
                "x-codex-window-id",
                "originator",
                "accept",
                "accept-encoding"
            ]
        );
    }

    #[test]
    fn response_drops_hop_by_hop_and_cors_headers() {
        let upstream = map(&[
            ("content-type", "text/event-stream"),
            ("access-control-allow-origin", "*"),
            ("access-control-allow-headers", "authorization"),
            ("connection", "close"),
            ("transfer-encoding", "chunked"),
            ("x-request-id", "req_1"),
            ("openai-processing-ms", "12"),
        ]);
        let out = client_response_headers(&upstream);
        let names: Vec<_> = out.keys().map(|k| k.as_str()).collect();
        assert_eq!(
            names,
            ["content-type", "x-request-id", "openai-processing-ms"]
        );
    }
}
