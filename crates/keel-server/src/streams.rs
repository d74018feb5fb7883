//! Concurrent streams per client connection (`--max-concurrent-streams`).
//!
//! Every gRPC call is an HTTP/2 stream, and one connection can carry any number of them: without
//! a bound, a single client could hold thousands of watch or keep-alive streams, each with its
//! buffers, on one socket. etcd bounds them through HTTP/2's SETTINGS, so a client over the
//! limit queues its next call until one ends. keel refuses it instead, with ResourceExhausted
//! naming the limit (and counts it in `keel_limit_refusals_total{limit="streams_per_connection"}`):
//! watches and keep-alives never end on their own, so a call queued behind them would hang
//! without a word, where an error says what to do (end some streams, or open another
//! connection).
//!
//! A stream is counted from the moment its request arrives until its response body is done or
//! dropped (the client reset it, or the connection closed), so a long watch holds its place for
//! its whole life. Connections are told apart by their remote address: on one listening socket,
//! no two open connections share it.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tonic::body::Body;
use tonic::codegen::http;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

use crate::metrics::Metrics;

/// Open streams by connection.
#[derive(Default)]
struct Counts(Mutex<HashMap<SocketAddr, u32>>);

impl Counts {
    /// Count one more stream on `conn`, unless it has `max` already.
    fn enter(self: &Arc<Self>, conn: SocketAddr, max: u32) -> Option<Slot> {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let n = map.entry(conn).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(Slot {
            counts: self.clone(),
            conn,
        })
    }

    #[cfg(test)]
    fn open(&self, conn: SocketAddr) -> u32 {
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.get(&conn).copied().unwrap_or(0)
    }
}

/// One counted stream; dropping it frees the place.
struct Slot {
    counts: Arc<Counts>,
    conn: SocketAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut map = self.counts.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get_mut(&self.conn) {
            *n -= 1;
            // Without this, every connection ever made would keep an entry.
            if *n == 0 {
                map.remove(&self.conn);
            }
        }
    }
}

/// The layer on the client server.
#[derive(Clone)]
pub struct StreamLimitLayer {
    max: u32,
    counts: Arc<Counts>,
    metrics: Arc<Metrics>,
}

impl StreamLimitLayer {
    pub fn new(max: u32, metrics: Arc<Metrics>) -> Self {
        StreamLimitLayer {
            max,
            counts: Arc::default(),
            metrics,
        }
    }
}

impl<S> tower_layer::Layer<S> for StreamLimitLayer {
    type Service = StreamLimit<S>;

    fn layer(&self, inner: S) -> StreamLimit<S> {
        StreamLimit {
            inner,
            limit: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct StreamLimit<S> {
    inner: S,
    limit: StreamLimitLayer,
}

/// The connection a request came on.
fn connection<B>(req: &http::Request<B>) -> Option<SocketAddr> {
    let ext = req.extensions();
    ext.get::<TcpConnectInfo>().and_then(|i| i.remote_addr()).or_else(|| {
        ext.get::<TlsConnectInfo<TcpConnectInfo>>()
            .and_then(|i| i.get_ref().remote_addr())
    })
}

impl<S, B> tower_service::Service<http::Request<B>> for StreamLimit<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<http::Response<Body>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        // Only in-process test servers lack an address; they have nothing to limit.
        let Some(conn) = connection(&req) else {
            return Box::pin(self.inner.call(req));
        };
        let max = self.limit.max;
        let Some(slot) = self.limit.counts.enter(conn, max) else {
            let status = tonic::Status::resource_exhausted(format!(
                "this connection has {max} calls in progress, its limit (--max-concurrent-streams); end some \
                 streams or open another connection"
            ));
            let status = self.limit.metrics.refused("streams_per_connection", status);
            return Box::pin(std::future::ready(Ok(status.into_http())));
        };
        let fut = self.inner.call(req);
        Box::pin(async move {
            let resp = fut.await?;
            Ok(resp.map(|body| Body::new(Counted { body, _slot: slot })))
        })
    }
}

/// A response body that holds its stream's place until it is done or dropped.
struct Counted {
    body: Body,
    _slot: Slot,
}

impl http_body::Body for Counted {
    type Data = tonic::codegen::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_are_counted_per_connection_and_freed_on_drop() {
        let counts = Arc::new(Counts::default());
        let a: SocketAddr = "127.0.0.1:1000".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:1001".parse().unwrap();
        let first = counts.enter(a, 2).expect("first");
        let second = counts.enter(a, 2).expect("second");
        assert!(counts.enter(a, 2).is_none(), "a third on the same connection");
        let other = counts.enter(b, 2).expect("another connection has its own places");
        drop(first);
        assert_eq!(counts.open(a), 1);
        let third = counts.enter(a, 2).expect("a freed place is taken again");
        drop((second, third, other));
        assert!(counts.0.lock().unwrap().is_empty(), "no entry outlives its streams");
    }
}
