//! `--upstream-url` and `--upstream-proxy`, parsed once.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use http::uri::{Authority, Scheme};
use http::{HeaderValue, Uri};

use crate::config::error::ConfigError;

/// The upstream endpoint, parsed once.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// The full URL requests go to, query string included.
    pub uri: Uri,
    pub scheme: Scheme,
    pub authority: Authority,
}

impl Upstream {
    /// The URL of another endpoint beside the upstream's Responses one: the upstream URL's path
    /// with its last `/responses` replaced by `suffix` (`/responses/ID/cancel`, `/models`), its
    /// query kept (Azure's `api-version`), then the client's `query`, less any parameter the
    /// upstream URL sets. `None` when the upstream URL does not end in `/responses`.
    pub fn endpoint(&self, suffix: &str, query: Option<&str>) -> Option<Uri> {
        let base = self.uri.path().trim_end_matches('/');
        let base = base.strip_suffix("/responses")?;
        let own = self.uri.query().filter(|q| !q.is_empty());
        let key = |pair: &str| pair.split('=').next().unwrap_or_default().to_owned();
        let own_keys: Vec<String> = own
            .into_iter()
            .flat_map(|q| q.split('&'))
            .map(key)
            .collect();
        let theirs = query
            .into_iter()
            .flat_map(|q| q.split('&'))
            .filter(|pair| !pair.is_empty() && !own_keys.contains(&key(pair)));
        let pairs: Vec<&str> = own.into_iter().chain(theirs).collect();
        let mut target = format!("{base}{suffix}");
        if !pairs.is_empty() {
            target.push('?');
            target.push_str(&pairs.join("&"));
        }
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(target)
            .build()
            .ok()
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_derived_from_the_upstream_url_with_its_query_first() {
        let openai = parse_upstream("https://api.openai.com/v1/responses").unwrap();
        let url = |up: &Upstream, suffix, query| up.endpoint(suffix, query).map(|u| u.to_string());
        assert_eq!(
            url(
                &openai,
                "/responses/resp_1",
                Some("stream=true&starting_after=3")
            )
            .as_deref(),
            Some("https://api.openai.com/v1/responses/resp_1?stream=true&starting_after=3")
        );
        assert_eq!(
            url(&openai, "/models", None).as_deref(),
            Some("https://api.openai.com/v1/models")
        );
        let azure =
            parse_upstream("https://x.openai.azure.com/openai/v1/responses?api-version=preview")
                .unwrap();
        assert_eq!(
            url(
                &azure,
                "/responses/resp_1/input_items",
                Some("limit=5&api-version=evil")
            )
            .as_deref(),
            Some(
                "https://x.openai.azure.com/openai/v1/responses/resp_1/input_items?api-version=preview&limit=5"
            )
        );
        let elsewhere = parse_upstream("http://127.0.0.1:9/generate").unwrap();
        assert_eq!(url(&elsewhere, "/models", None), None);
    }
}
