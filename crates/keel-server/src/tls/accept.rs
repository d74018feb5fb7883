//! Accepting TLS connections on a listener: TCP accept, TCP_NODELAY, then the TLS handshake
//! with the port's *current* configuration, for tonic's `serve_with_incoming` (and the metrics
//! server).
//!
//! Handshakes run side by side (a client that connects and says nothing holds up no one) and
//! are given [`HANDSHAKE_TIMEOUT`]. A failed one is counted in
//! `keel_tls_handshake_failures_total{port,reason}` and logged at most every five seconds per
//! port. The stream owns the listener: when the server drops it, the port closes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use futures::Stream;
use rustls::ServerConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;

use super::RateLimit;
use crate::metrics::Metrics;

/// How long a client may take to complete the handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the accept loop needs to know about its port.
#[derive(Clone)]
pub struct Port {
    /// `client`, `peer` or `metrics`: the metric's and the log's label.
    pub name: &'static str,
    /// The configuration to use for the next handshake.
    pub config: Arc<dyn Fn() -> Arc<ServerConfig> + Send + Sync>,
    pub metrics: Arc<Metrics>,
    pub limiter: Arc<RateLimit>,
}

type Handshake = futures::future::BoxFuture<'static, Option<TlsStream<TcpStream>>>;

/// Connections on `listener` that completed a TLS handshake.
pub fn incoming(listener: TcpListener, port: Port) -> impl Stream<Item = std::io::Result<TlsStream<TcpStream>>> {
    let handshakes: FuturesUnordered<Handshake> = FuturesUnordered::new();
    futures::stream::unfold(
        (listener, handshakes, port),
        |(listener, mut handshakes, port)| async move {
            loop {
                tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok((tcp, remote)) => {
                            // See server.rs: without it, small responses wait for a delayed ACK.
                            if let Err(e) = tcp.set_nodelay(true) {
                                tracing::debug!(error = %e, "cannot set TCP_NODELAY");
                            }
                            handshakes.push(Box::pin(handshake(tcp, remote, port.clone())));
                        }
                        // tonic skips errors (EMFILE, a connection reset before accept); a short
                        // pause keeps a persistent one from spinning.
                        Err(e) => {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            return Some((Err(e), (listener, handshakes, port)));
                        }
                    },
                    Some(done) = handshakes.next(), if !handshakes.is_empty() => {
                        if let Some(stream) = done {
                            return Some((Ok(stream), (listener, handshakes, port)));
                        }
                    }
                }
            }
        },
    )
}

async fn handshake(tcp: TcpStream, remote: SocketAddr, port: Port) -> Option<TlsStream<TcpStream>> {
    let acceptor = tokio_rustls::TlsAcceptor::from((port.config)());
    let result = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(r) => r,
        Err(_) => Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "handshake timed out")),
    };
    match result {
        Ok(stream) => Some(stream),
        Err(e) => {
            let reason = super::failure_reason(&e);
            port.metrics
                .tls_handshake_failures
                .with_label_values(&[port.name, reason])
                .inc();
            super::log_failure(&port.limiter, port.name, &remote.to_string(), reason, &e);
            None
        }
    }
}
