//! `--upstream-url` and `--upstream-proxy`, parsed once.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use http::uri::{Authority, Scheme};
use http::{HeaderValue, Uri};

use crate::config::ConfigError;

/// The upstream endpoint, parsed once.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// The full URL requests go to, query string included.
    pub uri: Uri,
    pub scheme: Scheme,
    pub authority: Authority,
}

/// An HTTP proxy on the way to the upstream.
#[derive(Clone)]
pub struct UpstreamProxy {
    /// `http://host:port`, without credentials.
    pub uri: Uri,
    /// `Basic ...` from the URL's user and password, if any.
    pub authorization: Option<HeaderValue>,
}

impl std::fmt::Debug for UpstreamProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamProxy")
            .field("uri", &self.uri)
            .field(
                "authorization",
                &self.authorization.as_ref().map(|_| "[redacted]"),
            )
            .finish()
    }
}

pub(crate) fn parse_upstream(text: &str) -> Result<Upstream, ConfigError> {
    let bad = |why: &str| ConfigError::BadUpstream {
        url: text.to_owned(),
        why: why.to_owned(),
    };
    let url = url::Url::parse(text).map_err(|e| bad(&e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad("the scheme must be http or https"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad("credentials in the URL are not supported"));
    }
    if url.fragment().is_some() {
        return Err(bad("a #fragment has no meaning here"));
    }
    let uri: Uri = url
        .as_str()
        .parse()
        .map_err(|e: http::uri::InvalidUri| bad(&e.to_string()))?;
    let (Some(scheme), Some(authority)) = (uri.scheme().cloned(), uri.authority().cloned()) else {
        return Err(bad("it needs a scheme and a host"));
    };
    Ok(Upstream {
        uri,
        scheme,
        authority,
    })
}

pub fn parse_proxy(text: &str) -> Result<UpstreamProxy, ConfigError> {
    let url = url::Url::parse(text).map_err(|e| ConfigError::BadProxy(e.to_string()))?;
    if url.scheme() != "http" {
        return Err(ConfigError::BadProxy(format!(
            "only http:// proxies are supported (the tunnel to the upstream is still TLS), not {}://",
            url.scheme()
        )));
    }
    let host = url
        .host_str()
        .ok_or_else(|| ConfigError::BadProxy("it has no host".into()))?;
    let port = url.port_or_known_default().unwrap_or(80);
    let host = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_owned()
    };
    let uri: Uri = format!("http://{host}:{port}")
        .parse()
        .map_err(|e: http::uri::InvalidUri| ConfigError::BadProxy(e.to_string()))?;
    let authorization = if url.username().is_empty() {
        None
    } else {
        let user = percent_decode(url.username());
        let pass = percent_decode(url.password().unwrap_or(""));
        let mut value =
            HeaderValue::try_from(format!("Basic {}", BASE64.encode(format!("{user}:{pass}"))))
                .map_err(|_| ConfigError::BadProxy("the proxy credentials are not valid".into()))?;
        value.set_sensitive(true);
        Some(value)
    };
    Ok(UpstreamProxy { uri, authorization })
}

fn percent_decode(text: &str) -> String {
    url::form_urlencoded::parse(format!("x={}", text.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}
