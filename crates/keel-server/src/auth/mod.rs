//! # Who is asking: authentication on the client port, and the checks made before Raft
//!
//! The state (users, roles, permissions, token hashes) and the rules live in
//! [`keel_storage::auth`], where every write is checked when it is applied. This module is the
//! edge: it finds out who sent a request and refuses early what can be refused early.
//!
//! - **The gate** ([`gate::AuthnLayer`]), a tower layer on the client server (so no service can
//!   be added without it), turns a request's credential into a user: etcd's `token` metadata (a
//!   token from `Authenticate`, looked up by its SHA-256 in the replicated token table). The user
//!   is the request's [`Caller`], in a task-local for as long as the service works on the request
//!   ([`Caller::current`]). Work a service does on other tasks (stream handlers) takes its caller
//!   along ([`Caller::scope`]); work that does not has no caller, which while auth is enabled is
//!   refused: a forgotten scope fails closed.
//! - **Writes** carry their caller into the log: [`crate::node::Node::write`] wraps every
//!   client command in `Command::AsUser` ([`Caller::attach`]), and the state machine checks it
//!   at apply. **Reads and watches** are checked here, against the auth state this member has
//!   applied ([`Caller::check`]). **Maintenance and membership** need the root role
//!   ([`Caller::require_root`]).
//! - **Guessing** is slowed per source address ([`throttle`]).
//! - **Secrets** ([`secret`]): passwords are hashed with argon2id on the member that receives them,
//!   before anything is proposed; tokens are random and only their hashes are replicated.
//!
//! ## Implementation caveats
//! - A token names its user until it expires (`--auth-token-ttl`), the user is deleted or its
//!   password changes. Permission changes apply at once, token or not.
//! - While auth is enabled, a request without a credential is refused with etcd's "user name is
//!   empty", except `Authenticate` itself and the health service.

pub mod gate;
pub mod secret;
pub mod throttle;

use keel_storage::auth::check::Need;
use keel_storage::auth::{AuthCommand, AuthError};
use keel_storage::{Command, KeyRange, Request};
use tonic::{Code, Status};

use crate::node::Node;
use keel_storage::sm::AuthView;

tokio::task_local! {
    static CALLER: Caller;
}

/// The user a request was authenticated as, if any, and the hash of the token it presented.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Caller {
    pub user: Option<String>,
    pub token: Option<[u8; 32]>,
}

impl Caller {
    /// The caller of the request this task works on (none outside a request).
    pub fn current() -> Caller {
        CALLER.try_with(Caller::clone).unwrap_or_default()
    }

    /// Run `work` as this caller's.
    pub fn scope<F: std::future::Future>(self, work: F) -> impl std::future::Future<Output = F::Output> {
        CALLER.scope(self, work)
    }

    /// `request` as this caller asks it: its command with the user, for the check at apply.
    /// What the cluster proposes itself (token issues, lease checkpoints and expiries) and what
    /// already names a user stay as they are.
    pub fn attach(&self, mut request: Request) -> Request {
        let Some(user) = &self.user else {
            return request;
        };
        let system = matches!(
            request.command,
            Command::AsUser(_)
                | Command::Batch(_)
                | Command::LeaseCheckpoint(_)
                | Command::LeaseExpire(_)
                | Command::Auth(AuthCommand::TokenIssue { .. })
        );
        if !system {
            request.command = request.command.as_user_with(user.clone(), self.token);
        }
        request
    }

    /// The caller's user as of the auth state this member has applied now (`Ok(None)`: auth is
    /// disabled). The gate found the token earlier; it is looked for again here, so that a read
    /// made after a read barrier does not serve a token ended before it (a password changed).
    fn user<'a>(&'a self, auth: &AuthView) -> Result<Option<&'a str>, Status> {
        if !auth.state.enabled {
            return Ok(None);
        }
        let user = self.user.as_deref().ok_or_else(|| status(AuthError::UserEmpty))?;
        if let Some(token) = &self.token {
            if auth.tokens.user_of(token, secret::now_ms()) != Some(user) {
                return Err(status(AuthError::InvalidAuthToken));
            }
        }
        Ok(Some(user))
    }

    /// May this caller do `need` on `range` now? Always, while auth is disabled.
    pub fn check(&self, node: &Node, need: Need, range: &KeyRange) -> Result<(), Status> {
        if !node.reader.auth_enabled() {
            return Ok(());
        }
        let auth = node.reader.auth();
        match self.user(&auth)? {
            Some(user) => auth.state.require(user, need, range).map_err(status),
            None => Ok(()),
        }
    }

    /// Is this caller root? Always, while auth is disabled.
    pub fn require_root(&self, node: &Node) -> Result<(), Status> {
        if !node.reader.auth_enabled() {
            return Ok(());
        }
        let auth = node.reader.auth();
        match self.user(&auth)? {
            Some(user) => auth.state.require_root(user).map_err(status),
            None => Ok(()),
        }
    }

    /// Is there a caller at all while auth is enabled (what any authenticated user may do)?
    pub fn require_user(&self, node: &Node) -> Result<(), Status> {
        if !node.reader.auth_enabled() {
            return Ok(());
        }
        self.user(&node.reader.auth()).map(|_| ())
    }
}

/// An auth error with etcd's text and code (its clients match both).
pub fn status(e: AuthError) -> Status {
    let code = match e {
        AuthError::UserEmpty | AuthError::RoleEmpty | AuthError::AuthFailed | AuthError::InvalidAuthMgmt => {
            Code::InvalidArgument
        }
        AuthError::PermissionDenied => Code::PermissionDenied,
        AuthError::InvalidAuthToken => Code::Unauthenticated,
        AuthError::UserAlreadyExists
        | AuthError::UserNotFound
        | AuthError::RoleAlreadyExists
        | AuthError::RoleNotFound
        | AuthError::RoleNotGranted
        | AuthError::PermissionNotGranted
        | AuthError::RootUserNotExist
        | AuthError::RootRoleNotExist
        | AuthError::AuthNotEnabled => Code::FailedPrecondition,
    };
    Status::new(code, e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_caller_is_the_requests_and_goes_with_its_writes() {
        assert_eq!(Caller::current(), Caller::default(), "outside a request");
        let alice = Caller {
            user: Some("ålice".into()),
            token: None,
        };
        let seen = alice.clone().scope(async { Caller::current() }).await;
        assert_eq!(seen, alice);
        let put = Request::new(Command::Compact(1));
        assert_eq!(alice.attach(put.clone()).command, Command::Compact(1).as_user("ålice"));
        assert_eq!(Caller::default().attach(put.clone()), put);
        let wrapped = alice.attach(put);
        assert_eq!(alice.attach(wrapped.clone()), wrapped, "never twice");
        let token = Request::new(Command::Auth(AuthCommand::TokenIssue {
            user: "bob".into(),
            token_hash: [0; 32],
            issued_ms: 0,
            expires_ms: 1,
        }));
        assert_eq!(alice.attach(token.clone()), token, "the cluster's own");
    }

    #[test]
    fn errors_carry_etcds_codes() {
        assert_eq!(status(AuthError::PermissionDenied).code(), Code::PermissionDenied);
        assert_eq!(status(AuthError::InvalidAuthToken).code(), Code::Unauthenticated);
        assert_eq!(status(AuthError::UserEmpty).message(), "etcdserver: user name is empty");
        assert_eq!(status(AuthError::RootUserNotExist).code(), Code::FailedPrecondition);
    }
}
