//! Endpoint addresses and the channels to them.

use tonic::transport::{Channel, Endpoint, Uri};

use crate::{ClientConfig, Error};

/// One server address and its channel, created once and shared by every request to it.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    /// `host:port`, lower-cased: the form leader hints are matched against.
    pub(crate) authority: String,
    pub(crate) channel: Channel,
}

/// Turns "host:port" (or "http://host:port") into a URI and its authority.
pub(crate) fn parse(raw: &str) -> Result<(Uri, String), Error> {
    let raw = raw.trim();
    if raw.is_empty() {
        return Err(Error::InvalidArgument("endpoint is empty".into()));
    }
    let with_scheme = if raw.contains("://") {
        raw.to_string()
    } else {
        format!("http://{raw}")
    };
    let uri: Uri = with_scheme
        .parse()
        .map_err(|e| Error::InvalidArgument(format!("invalid endpoint {raw:?}: {e}")))?;
    match uri.scheme_str() {
        Some("http") => {}
        // tonic is built without TLS here; failing now beats a confusing error on first use.
        Some(other) => {
            return Err(Error::InvalidArgument(format!(
                "invalid endpoint {raw:?}: scheme {other:?} is not supported (keel serves plaintext gRPC)"
            )))
        }
        None => return Err(Error::InvalidArgument(format!("invalid endpoint {raw:?}"))),
    }
    let authority = match uri.authority() {
        Some(a) if !a.host().is_empty() => a.as_str().to_ascii_lowercase(),
        _ => return Err(Error::InvalidArgument(format!("invalid endpoint {raw:?}: no host"))),
    };
    Ok((uri, authority))
}

/// The authority a leader hint or member address names, if it parses.
pub(crate) fn authority_of(raw: &str) -> Option<String> {
    parse(raw).ok().map(|(_, authority)| authority)
}

/// A lazily connecting channel: nothing is dialled until the first request, so a dead endpoint
/// in the list costs nothing until it is used, and it reconnects by itself afterwards.
pub(crate) fn target(raw: &str, config: &ClientConfig) -> Result<Target, Error> {
    let (uri, authority) = parse(raw)?;
    let channel = Endpoint::from(uri)
        .connect_timeout(config.connect_timeout)
        .timeout(config.timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(config.keepalive_interval)
        .keep_alive_timeout(config.keepalive_timeout)
        .keep_alive_while_idle(true)
        .connect_lazy();
    Ok(Target { authority, channel })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_get_a_scheme_and_compare_by_authority() {
        let (uri, authority) = parse("127.0.0.1:7001").expect("valid");
        assert_eq!(uri.to_string(), "http://127.0.0.1:7001/");
        assert_eq!(authority, "127.0.0.1:7001");
        assert_eq!(parse(" http://Node-1:7001/ ").expect("valid").1, "node-1:7001");
        assert_eq!(authority_of("[::1]:7001").as_deref(), Some("[::1]:7001"));
    }

    #[test]
    fn bad_endpoints_are_invalid_arguments() {
        for bad in ["", "   ", "https://a:1", "http://", "a b:1", "http://:7001"] {
            assert!(matches!(parse(bad), Err(Error::InvalidArgument(_))), "{bad:?} accepted");
        }
    }
}
