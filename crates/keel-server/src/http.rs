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

/// Serve until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    node: Arc<Node>,
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics_text))
        .route("/livez", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(Ctx { node, metrics });
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
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
