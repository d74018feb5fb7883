//! The HTTP listener on `--metrics-addr`: `/metrics` (Prometheus text format), `/livez` (the
//! process runs and answers) and `/readyz` (see [`crate::health::readiness`]; 503 with the reason
//! when not ready).

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;

use crate::metrics::Metrics;
use crate::node::Node;

#[derive(Clone)]
struct Ctx {
    node: Arc<Node>,
    metrics: Arc<Metrics>,
}

/// Serve until `shutdown` completes; over TLS when `tls` is given (`--metrics-cert-file`).
pub async fn serve(
    listener: TcpListener,
    tls: Option<crate::tls::accept::Port>,
    node: Arc<Node>,
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics_text))
        .route("/livez", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(Ctx { node, metrics });
    match tls {
        None => axum::serve(listener, app).with_graceful_shutdown(shutdown).await,
        Some(port) => {
            let local = listener.local_addr()?;
            let listener = TlsListener {
                local,
                incoming: Box::pin(crate::tls::accept::incoming(listener, port)),
            };
            axum::serve(listener, app).with_graceful_shutdown(shutdown).await
        }
    }
}

/// HTTPS connections for axum: the TLS accept loop's streams.
struct TlsListener {
    local: std::net::SocketAddr,
    incoming: std::pin::Pin<
        Box<dyn futures::Stream<Item = std::io::Result<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>> + Send>,
    >,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        use futures::StreamExt;
        loop {
            match self.incoming.next().await {
                Some(Ok(stream)) => {
                    let remote = stream.get_ref().0.peer_addr().unwrap_or(self.local);
                    return (stream, remote);
                }
                Some(Err(e)) => tracing::debug!(error = %e, "metrics port: accept failed"),
                // The accept loop never ends by itself while its listener lives.
                None => std::future::pending::<()>().await,
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

async fn metrics_text(State(ctx): State<Ctx>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        ctx.metrics.render(&ctx.node),
    )
}

async fn readyz(State(ctx): State<Ctx>) -> impl IntoResponse {
    match crate::health::readiness(&ctx.node) {
        Ok(()) => (StatusCode::OK, "ok\n".to_string()),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}\n")),
    }
}
