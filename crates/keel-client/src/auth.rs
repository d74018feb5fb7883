//! Logging in: with [`crate::ClientConfig::user`] set, the client asks the cluster for a token
//! (etcd's `Authenticate`, which keel serves) before its first request, sends it with every
//! request as etcd's clients do (`token` metadata), and logs in again when a member answers
//! "invalid auth token" (the token expired, or the member has not applied it yet).

use keel_proto::etcd::etcdserverpb::{auth_client::AuthClient, AuthenticateRequest};
use tonic::transport::Channel;
use tonic::{Code, Status};

/// A user's name and password, and the token they were last given.
pub(crate) struct Login {
    user: String,
    password: String,
    token: tokio::sync::Mutex<State>,
}

/// What the client knows of its login.
#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Log in before the next request.
    Unknown,
    Token(String),
    /// The cluster said authentication is not enabled: send requests without a token (as etcd's
    /// clients do) until a member asks for a user.
    Off,
}

impl std::fmt::Debug for Login {
    // Never the password or the token.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Login")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

/// The metadata key etcd's clients send their token in.
pub(crate) const TOKEN_METADATA: &str = "token";

/// Is this the answer to a token the member does not (or no longer) know?
pub(crate) fn is_invalid_token(status: &Status) -> bool {
    status.code() == Code::Unauthenticated
}

/// Is this the answer to a request without a token while authentication is enabled?
pub(crate) fn is_missing_user(status: &Status) -> bool {
    status.code() == Code::InvalidArgument && status.message() == "etcdserver: user name is empty"
}

const NOT_ENABLED: &str = "etcdserver: authentication is not enabled";

impl Login {
    pub(crate) fn new(user: String, password: String) -> Login {
        Login {
            user,
            password,
            token: tokio::sync::Mutex::new(State::Unknown),
        }
    }

    /// The current token, logging in through `channel` if there is none (`None`: the cluster has
    /// authentication disabled).
    pub(crate) async fn token(&self, channel: &Channel) -> Result<Option<String>, Status> {
        let mut state = self.token.lock().await;
        match &*state {
            State::Token(t) => return Ok(Some(t.clone())),
            State::Off => return Ok(None),
            State::Unknown => {}
        }
        let answer = AuthClient::new(channel.clone())
            .authenticate(AuthenticateRequest {
                name: self.user.clone(),
                password: self.password.clone(),
            })
            .await;
        match answer {
            Ok(answer) => {
                let token = answer.into_inner().token;
                *state = State::Token(token.clone());
                Ok(Some(token))
            }
            Err(status) if status.code() == Code::FailedPrecondition && status.message() == NOT_ENABLED => {
                *state = State::Off;
                Ok(None)
            }
            Err(status) => Err(status),
        }
    }

    /// Forget what was sent with a request that a member refused for its credential (`sent`:
    /// the token, or `None` for none), so that the next request logs in again (unless another
    /// already did).
    pub(crate) async fn forget(&self, sent: Option<&str>) {
        let mut state = self.token.lock().await;
        let stale = match (&*state, sent) {
            (State::Token(t), Some(s)) => t == s,
            (State::Off, None) => true,
            _ => false,
        };
        if stale {
            *state = State::Unknown;
        }
    }

    /// Add the token to `request`'s metadata.
    pub(crate) async fn authorize<T>(
        &self,
        channel: &Channel,
        request: &mut tonic::Request<T>,
    ) -> Result<Option<String>, Status> {
        let token = self.token(channel).await?;
        if let Some(token) = &token {
            let value = token
                .parse()
                .map_err(|_| Status::internal("the cluster gave a token that is not ASCII"))?;
            request.metadata_mut().insert(TOKEN_METADATA, value);
        }
        Ok(token)
    }
}
