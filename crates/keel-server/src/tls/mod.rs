//! TLS on a node's ports, with rustls (ring provider) through tonic.
//!
//! - The **client** port serves a certificate (`--cert-file`, `--key-file`); with
//!   `--client-cert-auth` it also requires a client certificate that chains to
//!   `--trusted-ca-file`.
//! - The **peer** port is mutual TLS (`--peer-cert-file`, `--peer-key-file`,
//!   `--peer-trusted-ca-file`, all three or none): a member accepts only peers whose certificate
//!   chains to the peer CA, and when it calls a peer it checks, by rustls' ordinary server-name
//!   verification against the member's peer address, that the certificate names that address
//!   (an IP or DNS SAN). A member presents the same certificate both ways.
//! - The **metrics** port (HTTP) serves a certificate when `--metrics-cert-file` and
//!   `--metrics-key-file` are set; no client certificates there (Prometheus scrapers rarely have
//!   one, and the port exposes no data beyond metrics).
//!
//! Why this shape: keel accepts connections itself ([`accept`]) and dials peers itself
//! ([`connect`]), taking the *current* rustls configuration for each new connection. A reload
//! ([`reload`]) builds whole new configurations from the files and swaps them in atomically;
//! connections already open keep the session they negotiated, so rotating certificates drops
//! nothing. That is simpler than swapping a certificate resolver and a verifier separately and
//! cannot mix an old CA with a new certificate halfway through a reload.
//!
//! Plain text stays the default: with no TLS flags nothing here runs.

pub mod accept;
pub mod connect;
pub mod reload;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

pub use reload::Reloadable;

/// The files of one port's TLS, as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Files {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// CA certificates (PEM, several allowed: a bundle of the old and the new CA during a
    /// rotation) that client or peer certificates must chain to.
    pub ca: Option<PathBuf>,
}

/// Every port's TLS settings (None: plain text).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsConfig {
    /// The client port. `ca` is set exactly when client certificates are required.
    pub client: Option<Files>,
    /// The peer port and outgoing peer connections (mutual TLS; `ca` always set).
    pub peer: Option<Files>,
    /// The metrics port (`ca` never set).
    pub metrics: Option<Files>,
}

/// The TLS flags, checked for combinations that cannot work (the files are read at start).
pub fn from_settings(s: &crate::config::Settings) -> Result<TlsConfig, TlsError> {
    let err = |m: &str| TlsError(m.to_string());
    let client = match (&s.cert_file, &s.key_file) {
        (Some(cert), Some(key)) => Some(Files {
            cert: cert.clone(),
            key: key.clone(),
            ca: match (&s.trusted_ca_file, s.client_cert_auth) {
                (Some(ca), true) => Some(ca.clone()),
                (None, true) => return Err(err("--client-cert-auth needs --trusted-ca-file")),
                (_, false) => None,
            },
        }),
        (Some(_), None) => return Err(err("--cert-file needs --key-file")),
        (None, Some(_)) => return Err(err("--key-file needs --cert-file")),
        (None, None) => {
            if s.client_cert_auth || s.trusted_ca_file.is_some() {
                return Err(err(
                    "--client-cert-auth and --trusted-ca-file need --cert-file and --key-file (TLS on the client port)",
                ));
            }
            None
        }
    };
    let peer =
        match (&s.peer_cert_file, &s.peer_key_file, &s.peer_trusted_ca_file) {
            (Some(cert), Some(key), Some(ca)) => Some(Files {
                cert: cert.clone(),
                key: key.clone(),
                ca: Some(ca.clone()),
            }),
            (None, None, None) => None,
            _ => return Err(err(
                "peer TLS is mutual: give all of --peer-cert-file, --peer-key-file and --peer-trusted-ca-file, or none",
            )),
        };
    let metrics = match (&s.metrics_cert_file, &s.metrics_key_file) {
        (Some(cert), Some(key)) => Some(Files {
            cert: cert.clone(),
            key: key.clone(),
            ca: None,
        }),
        (None, None) => None,
        _ => return Err(err("--metrics-cert-file and --metrics-key-file go together")),
    };
    Ok(TlsConfig { client, peer, metrics })
}

/// Why TLS material could not be loaded; one line naming the file.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct TlsError(pub String);

/// The peer port's two configurations, built from the same files: the server side (requires a
/// peer certificate) and the client side (presents it, verifies the peer's against the CA).
pub struct PeerConfigs {
    pub server: Arc<ServerConfig>,
    pub client: Arc<ClientConfig>,
}

/// The node's TLS, loaded and reloadable, per port.
#[derive(Clone, Default)]
pub struct NodeTls {
    pub client: Option<Arc<Reloadable<Arc<ServerConfig>>>>,
    pub peer: Option<Arc<Reloadable<PeerConfigs>>>,
    pub metrics: Option<Arc<Reloadable<Arc<ServerConfig>>>>,
}

impl NodeTls {
    /// Load every configured port's material; any error names the flag's file.
    pub fn load(config: &TlsConfig) -> Result<NodeTls, TlsError> {
        let client = match &config.client {
            Some(files) => Some(Arc::new(Reloadable::load("client", files.clone(), |f, b| {
                server_config(f, b, H2)
            })?)),
            None => None,
        };
        let peer = match &config.peer {
            Some(files) => Some(Arc::new(Reloadable::load("peer", files.clone(), peer_configs)?)),
            None => None,
        };
        let metrics = match &config.metrics {
            Some(files) => Some(Arc::new(Reloadable::load("metrics", files.clone(), |f, b| {
                server_config(f, b, HTTP1)
            })?)),
            None => None,
        };
        Ok(NodeTls { client, peer, metrics })
    }

    /// Re-read every port's files now and then (see [`reload::watch`]) until the task is dropped.
    pub async fn watch(self, metrics: Arc<crate::metrics::Metrics>) {
        reload::watch(self, metrics).await
    }
}

/// The contents of a port's files, as last read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contents {
    pub cert: Vec<u8>,
    pub key: Vec<u8>,
    pub ca: Option<Vec<u8>>,
}

/// The one crypto provider keel uses (ring: aws-lc-rs would need cmake to build).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certs(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError(format!("{}: not a PEM certificate file: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(TlsError(format!("{}: holds no PEM certificate", path.display())));
    }
    Ok(certs)
}

fn key(path: &Path, pem: &[u8]) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem)
        .map_err(|e| TlsError(format!("{}: no PEM private key in it: {e}", path.display())))
}

fn roots(path: &Path, pem: &[u8]) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in certs(path, pem)? {
        roots
            .add(cert)
            .map_err(|e| TlsError(format!("{}: not a usable CA certificate: {e}", path.display())))?;
    }
    Ok(Arc::new(roots))
}

/// The certificate chain and its key, checked to belong together.
fn certified_key(files: &Files, contents: &Contents) -> Result<Arc<rustls::sign::CertifiedKey>, TlsError> {
    let chain = certs(&files.cert, &contents.cert)?;
    let key = key(&files.key, &contents.key)?;
    rustls::sign::CertifiedKey::from_der(chain, key, &provider())
        .map(Arc::new)
        .map_err(|e| {
            TlsError(format!(
                "{} and {}: {e} (does the key belong to the certificate?)",
                files.cert.display(),
                files.key.display()
            ))
        })
}

/// A resolver that always serves one certificate (the configuration is rebuilt on reload).
#[derive(Debug)]
struct Single(Arc<rustls::sign::CertifiedKey>);

impl rustls::server::ResolvesServerCert for Single {
    fn resolve(&self, _: rustls::server::ClientHello<'_>) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// ALPN of the gRPC ports (HTTP/2 only) and of the metrics port (axum serves HTTP/1.1 there).
pub const H2: &[&[u8]] = &[b"h2"];
pub const HTTP1: &[&[u8]] = &[b"http/1.1"];

/// A server configuration offering `alpn`: `files.ca` set means client certificates chaining
/// to it are required.
pub fn server_config(files: &Files, contents: &Contents, alpn: &[&[u8]]) -> Result<Arc<ServerConfig>, TlsError> {
    let key = certified_key(files, contents)?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError(e.to_string()))?;
    let builder = match (&files.ca, &contents.ca) {
        (Some(path), Some(pem)) => {
            let verifier = WebPkiClientVerifier::builder_with_provider(roots(path, pem)?, provider())
                .build()
                .map_err(|e| TlsError(format!("{}: {e}", path.display())))?;
            builder.with_client_cert_verifier(verifier)
        }
        _ => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(Arc::new(Single(key)));
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// The peer port's server and client configurations.
fn peer_configs(files: &Files, contents: &Contents) -> Result<PeerConfigs, TlsError> {
    let server = server_config(files, contents, H2)?;
    let (Some(ca_path), Some(ca)) = (&files.ca, &contents.ca) else {
        return Err(TlsError("peer TLS needs --peer-trusted-ca-file".into()));
    };
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(roots(ca_path, ca)?, provider())
        .build()
        .map_err(|e| TlsError(format!("{}: {e}", ca_path.display())))?;
    let mut client = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError(e.to_string()))?
        .with_webpki_verifier(verifier)
        .with_client_auth_cert(certs(&files.cert, &contents.cert)?, key(&files.key, &contents.key)?)
        .map_err(|e| TlsError(format!("{}: {e}", files.cert.display())))?;
    client.alpn_protocols = vec![b"h2".to_vec()];
    Ok(PeerConfigs {
        server,
        client: Arc::new(client),
    })
}

/// Why a handshake failed, as a metric label: a small, fixed set.
pub fn failure_reason(error: &std::io::Error) -> &'static str {
    use rustls::{AlertDescription, CertificateError, Error};
    if error.kind() == std::io::ErrorKind::TimedOut {
        return "timeout";
    }
    let Some(tls) = error.get_ref().and_then(|e| e.downcast_ref::<Error>()) else {
        return match error.kind() {
            std::io::ErrorKind::UnexpectedEof => "closed",
            _ => "io",
        };
    };
    match tls {
        Error::InvalidCertificate(c) => match c {
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => "expired",
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => "not_yet_valid",
            CertificateError::UnknownIssuer => "unknown_ca",
            CertificateError::BadSignature => "bad_signature",
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => "wrong_name",
            CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => "wrong_purpose",
            _ => "bad_certificate",
        },
        Error::NoCertificatesPresented => "no_certificate",
        Error::InvalidMessage(_) | Error::InappropriateMessage { .. } | Error::InappropriateHandshakeMessage { .. } => {
            "not_tls"
        }
        Error::AlertReceived(AlertDescription::UnknownCA) => "peer_refused_unknown_ca",
        Error::AlertReceived(AlertDescription::CertificateExpired) => "peer_refused_expired",
        Error::AlertReceived(
            AlertDescription::BadCertificate | AlertDescription::CertificateUnknown | AlertDescription::DecryptError,
        ) => "peer_refused_certificate",
        Error::AlertReceived(AlertDescription::CertificateRequired) => "peer_requires_certificate",
        Error::AlertReceived(_) => "peer_alert",
        Error::PeerIncompatible(_) | Error::NoApplicationProtocol => "incompatible",
        _ => "other",
    }
}

/// Log a handshake failure at most once every five seconds per port (a scanner or a member
/// with a bad certificate retries constantly), saying how many were not logged since.
pub fn log_failure(limiter: &RateLimit, port: &str, remote: &str, reason: &str, error: &std::io::Error) {
    if let Some(suppressed) = limiter.allow() {
        tracing::warn!(port, remote, reason, suppressed, "TLS handshake failed: {error}");
    }
}

/// At most one event per interval; counts the ones refused.
#[derive(Debug)]
pub struct RateLimit {
    every: std::time::Duration,
    state: std::sync::Mutex<(Option<std::time::Instant>, u64)>,
}

impl RateLimit {
    pub fn new(every: std::time::Duration) -> RateLimit {
        RateLimit {
            every,
            state: std::sync::Mutex::new((None, 0)),
        }
    }

    /// Some(events refused since the last one allowed), or None when this one is refused.
    pub fn allow(&self) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = std::time::Instant::now();
        match state.0 {
            Some(last) if now.duration_since(last) < self.every => {
                state.1 += 1;
                None
            }
            _ => {
                let suppressed = state.1;
                *state = (Some(now), 0);
                Some(suppressed)
            }
        }
    }
}
