//! The gate on the client port: every request's credential becomes a user (or a refusal) before
//! any service sees it. A tower layer rather than one interceptor per service, so that no service
//! can be added without it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use keel_storage::auth::AuthError;
use tonic::codegen::http;

use super::{secret, status, Caller};
use crate::node::Node;

/// etcd's metadata key for the token from `Authenticate`.
const TOKEN: &str = "token";
/// What the HTTP gateway and some clients send instead: `authorization: <token>`, with or
/// without "Bearer ".
const AUTHORIZATION: &str = "authorization";

/// The caller a request's credential (in its `headers`) names now: nobody while auth is
/// disabled or without a credential, an error for a token that is unknown or expired.
pub fn authenticate(node: &Node, headers: &http::HeaderMap) -> Result<Caller, tonic::Status> {
    let auth = node.reader.auth();
    if !auth.state.enabled {
        return Ok(Caller::default());
    }
    let raw = headers.get(TOKEN).or_else(|| headers.get(AUTHORIZATION));
    let Some(raw) = raw else {
        return Ok(Caller::default());
    };
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
        match authenticate(&self.node, req.headers()) {
            Ok(caller) => Box::pin(caller.scope(self.inner.call(req))),
            Err(refused) => Box::pin(std::future::ready(Ok(refused.into_http()))),
        }
    }
}
