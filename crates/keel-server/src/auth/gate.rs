//! The gate on the client port: every request's credential becomes a user (or a refusal) before
//! any service sees it. A tower layer rather than one interceptor per service, so that no service
//! can be added without it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use keel_storage::auth::AuthError;
use tonic::codegen::http;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

use super::{secret, status, Caller};
use crate::node::Node;

/// etcd's metadata key for the token from `Authenticate`.
const TOKEN: &str = "token";
/// What the HTTP gateway and some clients send instead: `authorization: <token>`, with or
/// without "Bearer ".
const AUTHORIZATION: &str = "authorization";

/// The caller a request's credential names now: its token (in `headers`), else `cert_user` (the
/// common name of the client certificate the TLS handshake verified, looked up only then);
/// nobody while auth is disabled or without either; an error for a token that is unknown or
/// expired.
pub fn authenticate(
    node: &Node,
    headers: &http::HeaderMap,
    cert_user: impl FnOnce() -> Option<String>,
) -> Result<Caller, tonic::Status> {
    // Every client request passes here: with auth disabled, one atomic load and nothing else.
    if !node.reader.auth_enabled() {
        return Ok(Caller::default());
    }
    let raw = headers.get(TOKEN).or_else(|| headers.get(AUTHORIZATION));
    let Some(raw) = raw else {
        // No token: the common name of a client certificate that the client port verified
        // (`--client-cert-auth`), as etcd does.
        return Ok(Caller {
            user: cert_user(),
            token: None,
        });
    };
    let auth = node.reader.auth();
    let token = raw.to_str().map_err(|_| status(AuthError::InvalidAuthToken))?;
    let token = token.strip_prefix("Bearer ").unwrap_or(token);
    let hash = secret::token_hash(token);
    match auth.tokens.user_of(&hash, secret::now_ms()) {
        Some(user) => Ok(Caller {
            user: Some(user.to_string()),
            token: Some(hash),
        }),
        None => Err(status(AuthError::InvalidAuthToken)),
    }
}

/// The common name of a certificate (DER), if it has one that is UTF-8.
pub fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_string)
}

/// The layer (see the module docs).
#[derive(Clone)]
pub struct AuthnLayer(pub Arc<Node>);

impl<S> tower_layer::Layer<S> for AuthnLayer {
    type Service = Authn<S>;

    fn layer(&self, inner: S) -> Authn<S> {
        Authn {
            inner,
            node: self.0.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Authn<S> {
    inner: S,
    node: Arc<Node>,
}

impl<S, B, RB> tower_service::Service<http::Request<B>> for Authn<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    RB: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let cert_user = || {
            req.extensions()
                .get::<TlsConnectInfo<TcpConnectInfo>>()
                .and_then(|info| info.peer_certs())
                .and_then(|certs| certs.first().and_then(|leaf| common_name(leaf)))
        };
        match authenticate(&self.node, req.headers(), cert_user) {
            Ok(caller) => Box::pin(caller.scope(self.inner.call(req))),
            Err(refused) => Box::pin(std::future::ready(Ok(refused.into_http()))),
        }
    }
}
