//! Client tunables.

use std::time::Duration;

/// How the client talks to the cluster. [`ClientConfig::default`] suits most callers.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The deadline of one request, retries included. It is also sent as the gRPC timeout, so the
    /// server stops working on a request nobody waits for. At most [`MAX_TIMEOUT`]; a longer one
    /// is shortened to it.
    pub timeout: Duration,
    /// How long to wait for a TCP connection to one endpoint before trying the next.
    pub connect_timeout: Duration,
    /// First pause between retry rounds; it doubles (with jitter) up to `backoff_max`.
    pub backoff_initial: Duration,
    /// Longest pause between retry rounds.
    pub backoff_max: Duration,
    /// HTTP/2 ping interval. Pings find a dead or frozen server (SIGSTOP, a cut cable) that TCP
    /// alone would not notice for minutes.
    pub keepalive_interval: Duration,
    /// A connection whose ping is not answered in this time is closed.
    pub keepalive_timeout: Duration,
    /// Largest response accepted. tonic's default (4 MiB) is too small for ranges over many keys.
    pub max_response_bytes: usize,
    /// Send writes with a client session, so that a write whose outcome is unknown (a timeout
    /// during failover, a connection cut mid-request) can be retried: the cluster applies each
    /// session write at most once. With `false`, such writes fail with `OutcomeUnknown`.
    pub exactly_once: bool,
    /// Log in as this user with this password (`(name, password)`) when the cluster has
    /// authentication enabled; `None`: send requests without credentials.
    pub user: Option<(String, String)>,
    /// TLS: endpoints without a scheme, and `https://` ones, are reached over TLS with this.
    /// None: plain text (and `https://` endpoints are refused).
    pub tls: Option<TlsConfig>,
}

/// How the client reaches TLS servers: the CA that signed their certificates, and optionally a
/// certificate of its own for servers that require one (`--client-cert-auth`). PEM throughout.
#[derive(Clone, Default)]
pub struct TlsConfig {
    /// CA certificates (PEM) a server's certificate must chain to. Servers are checked to be
    /// the host named in the endpoint (IP address or DNS name SAN).
    pub ca_pem: Vec<u8>,
    /// This client's certificate chain and private key (PEM).
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for TlsConfig {
    // Never the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConfig")
            .field("ca_pem_bytes", &self.ca_pem.len())
            .field("identity", &self.identity.is_some())
            .finish()
    }
}

impl TlsConfig {
    /// Read the CA bundle, and the client certificate and key if given (both or neither).
    pub fn from_files(
        ca: &std::path::Path,
        cert: Option<&std::path::Path>,
        key: Option<&std::path::Path>,
    ) -> Result<TlsConfig, crate::Error> {
        let read = |path: &std::path::Path| {
            std::fs::read(path)
                .map_err(|e| crate::Error::InvalidArgument(format!("cannot read {}: {e}", path.display())))
        };
        let identity = match (cert, key) {
            (Some(c), Some(k)) => Some((read(c)?, read(k)?)),
            (None, None) => None,
            _ => {
                return Err(crate::Error::InvalidArgument(
                    "a client certificate needs its key, and a key its certificate (--cert and --key)".into(),
                ))
            }
        };
        let ca_pem = read(ca)?;
        if !String::from_utf8_lossy(&ca_pem).contains("-----BEGIN CERTIFICATE-----") {
            return Err(crate::Error::InvalidArgument(format!(
                "{}: holds no PEM certificate",
                ca.display()
            )));
        }
        Ok(TlsConfig { ca_pem, identity })
    }
}

/// The longest request deadline a client uses.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(1),
            backoff_initial: Duration::from_millis(25),
            backoff_max: Duration::from_secs(1),
            keepalive_interval: Duration::from_secs(5),
            keepalive_timeout: Duration::from_secs(3),
            max_response_bytes: 256 * 1024 * 1024,
            exactly_once: true,
            user: None,
            tls: None,
        }
    }
}

impl ClientConfig {
    /// The default configuration with another request deadline.
    pub fn with_timeout(timeout: Duration) -> Self {
        ClientConfig {
            timeout,
            ..ClientConfig::default()
        }
    }
}
