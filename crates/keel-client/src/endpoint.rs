//! Endpoint addresses and the channels to them.

use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity, Uri};

use crate::{ClientConfig, Error};

/// One server address and its channel, created once and shared by every request to it.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    /// `host:port`, lower-cased: the form leader hints are matched against.
    pub(crate) authority: String,
    pub(crate) channel: Channel,
}

/// Turns "host:port" (or "http://host:port", "https://host:port") into a URI and its
/// authority. Without a scheme, the URI is https when `tls` (the client has a TLS
/// configuration), http otherwise.
pub(crate) fn parse(raw: &str, tls: bool) -> Result<(Uri, String), Error> {
    let raw = raw.trim();
    if raw.is_empty() {
        return Err(Error::InvalidArgument("endpoint is empty".into()));
    }
    let with_scheme = if raw.contains("://") {
        raw.to_string()
    } else if tls {
        format!("https://{raw}")
    } else {
        format!("http://{raw}")
    };
    let uri: Uri = with_scheme
        .parse()
        .map_err(|e| Error::InvalidArgument(format!("invalid endpoint {raw:?}: {e}")))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") if tls => {}
        // Failing now beats a confusing error on first use.
        Some("https") => {
            return Err(Error::InvalidArgument(format!(
                "invalid endpoint {raw:?}: https needs a CA to check the server against (keelctl --cacert, ClientConfig::tls)"
            )))
        }
        Some(other) => {
            return Err(Error::InvalidArgument(format!(
                "invalid endpoint {raw:?}: scheme {other:?} is not supported (http or https)"
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
    parse(raw, true).ok().map(|(_, authority)| authority)
}

/// A lazily connecting channel: nothing is dialled until the first request, so a dead endpoint
/// in the list costs nothing until it is used, and it reconnects by itself afterwards.
pub(crate) fn target(raw: &str, config: &ClientConfig) -> Result<Target, Error> {
    let (uri, authority) = parse(raw, config.tls.is_some())?;
    let mut endpoint = Endpoint::from(uri.clone());
    if let (Some(tls), Some("https")) = (&config.tls, uri.scheme_str()) {
        let mut tls_config = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&tls.ca_pem))
            .assume_http2(true);
        if let Some((cert, key)) = &tls.identity {
            tls_config = tls_config.identity(Identity::from_pem(cert, key));
        }
        // The server is checked against the endpoint's host: an IP address or a DNS name.
        if let Some(host) = uri.host() {
            tls_config = tls_config.domain_name(host.trim_start_matches('[').trim_end_matches(']'));
        }
        endpoint = endpoint
            .tls_config(tls_config)
            .map_err(|e| Error::InvalidArgument(format!("TLS settings for {raw:?}: {e}")))?;
    }
    let channel = endpoint
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
        let (uri, authority) = parse("127.0.0.1:7001", false).expect("valid");
        assert_eq!(uri.to_string(), "http://127.0.0.1:7001/");
        assert_eq!(authority, "127.0.0.1:7001");
        assert_eq!(parse(" http://Node-1:7001/ ", false).expect("valid").1, "node-1:7001");
        let (uri, authority) = parse("127.0.0.1:7001", true).expect("valid");
        assert_eq!(uri.to_string(), "https://127.0.0.1:7001/");
        assert_eq!(authority, "127.0.0.1:7001");
        assert_eq!(parse("https://a:1", true).expect("valid").1, "a:1");
        assert_eq!(authority_of("[::1]:7001").as_deref(), Some("[::1]:7001"));
    }

    #[test]
    fn bad_endpoints_are_invalid_arguments() {
        for bad in ["", "   ", "https://a:1", "http://", "a b:1", "http://:7001"] {
            assert!(
                matches!(parse(bad, false), Err(Error::InvalidArgument(_))),
                "{bad:?} accepted"
            );
        }
    }
}
