//! A hint for the errors a TLS mismatch gives. A client speaking plain text to a TLS port (or
//! TLS to a plain one) does not get "TLS needed" from either side: it gets whatever the bytes
//! it did not expect look like to HTTP/2 ("frame with invalid size") or to rustls ("connection
//! closed"), which names neither TLS nor the flag that fixes it.

/// The hint for `message`, given whether keelctl spoke TLS (`--cacert` or `https://`).
pub fn hint(message: &str, tls: bool) -> Option<&'static str> {
    let m = message.to_ascii_lowercase();
    let has = |needle: &str| m.contains(needle);
    // The member answers a plain-text HTTP/2 preface with a TLS alert (read as a frame of
    // invalid size) and closes; a client still writing sees the close instead.
    let plain_refused = [
        "frame with invalid size",
        "invalid http version",
        "broken pipe",
        "connection reset",
    ];
    if !tls && plain_refused.iter().any(|n| has(n)) {
        return Some(
            "the member may serve TLS: pass --cacert FILE (KEEL_CACERT) with the CA that signed its certificate",
        );
    }
    if has("unknownissuer") || has("unknown issuer") || has("badsignature") {
        return Some("the member's certificate is not signed by the CA in --cacert");
    }
    if has("notvalidforname") || has("not valid for name") {
        return Some("the member's certificate does not name this endpoint: use an address or name in its SAN");
    }
    if has("expired") && has("certificate") {
        return Some("a certificate has expired (the member's, or the one in --cert)");
    }
    if has("certificaterequired") || has("certificate required") {
        return Some("the member asks for a client certificate: pass --cert FILE and --key FILE");
    }
    if tls && (has("connection closed") || has("corrupt message") || has("invalidcontenttype")) {
        return Some("the member may not serve TLS: drop --cacert and use http:// endpoints");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::hint;

    #[test]
    fn each_mismatch_gets_its_hint_and_other_errors_none() {
        // As keelctl printed them against a TLS member and a plain one.
        let plain_to_tls = "transport error: 127.0.0.1:27001: h2 protocol error: http2 error: connection error \
                            detected: frame with invalid size";
        assert!(hint(plain_to_tls, false).unwrap().contains("--cacert"));
        let plain_to_tls = "transport error: 127.0.0.1:27001: transport error: connection error: stream closed \
                            because of a broken pipe";
        assert!(hint(plain_to_tls, false).unwrap().contains("--cacert"));
        let tls_to_plain = "cannot reach any endpoint (127.0.0.1:28001: received corrupt message of type \
                            InvalidContentType)";
        assert!(hint(tls_to_plain, true).unwrap().contains("drop --cacert"));
        let closed = "transport error: 127.0.0.1:27101: operation was canceled: connection closed";
        assert!(hint(closed, true).unwrap().contains("drop --cacert"));
        assert_eq!(hint(closed, false), None, "plain text to a member that went away");
        let wrong_ca = "cannot reach any endpoint (127.0.0.1:27001: invalid peer certificate: UnknownIssuer)";
        assert!(hint(wrong_ca, true).unwrap().contains("not signed"));
        let no_cert = "transport error: received fatal alert: CertificateRequired";
        assert!(hint(no_cert, true).unwrap().contains("--cert"));
        assert_eq!(hint("key not found", true), None);
        assert_eq!(hint("permission denied", false), None);
    }
}
