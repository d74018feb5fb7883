//! Dialling peers over mutual TLS, with the *current* peer configuration for each new
//! connection (a tonic connector for `Endpoint::connect_with_connector_lazy`).
//!
//! The server name checked is the host of the member's peer address (an IP address or a DNS
//! name), so a member only talks to a peer whose certificate names the address it was told to
//! reach: a certificate from the right CA issued to another machine is refused. As tonic applies
//! `tcp_nodelay` and `local_address` only to the connector it builds itself, this one does both.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tonic::transport::Uri;

use super::{PeerConfigs, RateLimit, Reloadable};
use crate::metrics::Metrics;

/// Makes TLS connections to peers.
#[derive(Clone)]
pub struct PeerConnector {
    pub tls: Arc<Reloadable<PeerConfigs>>,
    /// Outgoing connections leave from this IP (see `PeerChannels::from_listen_addr`).
    pub local_ip: Option<IpAddr>,
    pub metrics: Arc<Metrics>,
    pub limiter: Arc<RateLimit>,
}

impl PeerConnector {
    pub fn new(tls: Arc<Reloadable<PeerConfigs>>, metrics: Arc<Metrics>) -> PeerConnector {
        PeerConnector {
            tls,
            local_ip: None,
            metrics,
            limiter: Arc::new(RateLimit::new(std::time::Duration::from_secs(5))),
        }
    }

    async fn connect(self, uri: Uri) -> std::io::Result<TokioIo<TlsStream<TcpStream>>> {
        let invalid = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{what}: {uri}"));
        let host = uri.host().ok_or_else(|| invalid("no host in the peer address"))?;
        let port = uri.port_u16().ok_or_else(|| invalid("no port in the peer address"))?;
        // An IPv6 host comes in brackets.
        let name = host.trim_start_matches('[').trim_end_matches(']').to_string();
        let server_name = ServerName::try_from(name.clone()).map_err(|_| invalid("not a server name"))?;
        let mut last = None;
        let mut tcp = None;
        for addr in tokio::net::lookup_host((name.as_str(), port)).await? {
            match self.dial(addr).await {
                Ok(s) => {
                    tcp = Some(s);
                    break;
                }
                Err(e) => last = Some(e),
            }
        }
        let tcp = tcp.ok_or_else(|| last.unwrap_or_else(|| invalid("the peer address resolves to nothing")))?;
        let connector = tokio_rustls::TlsConnector::from(self.tls.current().client.clone());
        match connector.connect(server_name, tcp).await {
            Ok(stream) => Ok(TokioIo::new(stream)),
            Err(e) => {
                let reason = super::failure_reason(&e);
                self.metrics
                    .tls_handshake_failures
                    .with_label_values(&["peer_outgoing", reason])
                    .inc();
                super::log_failure(&self.limiter, "peer_outgoing", &format!("{name}:{port}"), reason, &e);
                // "connect" in the message tells `peer::client::never_sent` that no request left
                // this node (a forwarded write can then be retried safely).
                Err(std::io::Error::new(
                    e.kind(),
                    format!("cannot connect to {name}:{port} over TLS: {e}"),
                ))
            }
        }
    }

    async fn dial(&self, addr: SocketAddr) -> std::io::Result<TcpStream> {
        let socket = match addr {
            SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
            SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
        };
        if let Some(ip) = self.local_ip.filter(|ip| ip.is_ipv4() == addr.is_ipv4()) {
            socket.bind(SocketAddr::new(ip, 0))?;
        }
        let tcp = socket.connect(addr).await?;
        tcp.set_nodelay(true)?;
        Ok(tcp)
    }
}

impl tower_service::Service<Uri> for PeerConnector {
    type Response = TokioIo<TlsStream<TcpStream>>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        Box::pin(self.clone().connect(uri))
    }
}
