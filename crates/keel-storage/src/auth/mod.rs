//! # Users, roles and permissions: etcd's model, replicated, with no secret in the log
//!
//! etcd's access control, as its clients know it: users with passwords and roles; roles with
//! read, write or read-write permissions on a key, a prefix or a range; a `root` user with the
//! `root` role, which may do anything; `auth enable` and `auth disable`. All of it is state of
//! the replicated state machine, changed only by log entries ([`AuthCommand`]), so every member
//! decides alike.
//!
//! ## What reaches the log
//! - **Password hashes, never passwords.** The member that receives a password hashes it
//!   (argon2id, a fresh salt) before it proposes anything: the log, snapshots, backups and the
//!   state machine hold PHC strings only. (etcd 3.4 writes the password itself into its WAL.)
//! - **Token hashes, never tokens.** `Authenticate` checks the password on the member that
//!   receives it, picks a random token and proposes [`AuthCommand::TokenIssue`] with the token's
//!   SHA-256 and its expiry (the proposer's wall clock: data in the entry, so apply stays
//!   deterministic). Any member can then tell the token's user from the hash, and no one who
//!   reads the log or a backup can use a token. Deleting a user or changing its password drops
//!   its tokens; disabling auth drops all of them.
//! - **Who asked.** A client request is proposed inside [`crate::Command::AsUser`], which names
//!   the user its member authenticated. Permissions are checked when the entry is applied,
//!   against the auth state of that moment ([`check`]), so a permission revoked by an earlier
//!   entry refuses every later write, whichever member took it and however long it waited in a
//!   proposal queue. A client command that reaches apply without a user while auth is enabled is
//!   refused (it was taken while auth was off, and auth went on before it was applied).
//!
//! ## Where it is kept
//! Two records in the state machine's generation tree: [`AUTH_KEY`] (users, roles, the enabled
//! flag and the auth revision) and [`TOKENS_KEY`]. Both are small and rewritten whole when they
//! change, in the batch of the entry that changed them; both are held in memory as well
//! ([`AuthState`], [`Tokens`]) and published to readers after each apply. A snapshot carries them
//! as one record ([`AuthSnapshot`]), written only once auth has been configured.
//!
//! ## Implementation caveats
//! - Tokens are bounded: [`MAX_TOKENS_PER_USER`] per user and [`MAX_TOKENS`] in all; beyond
//!   them the oldest goes. Expired tokens are dropped when a new one is issued.
//! - Reads are checked on the member that serves them, against the auth state it has applied
//!   (after the read barrier for a linearizable read), as etcd does.
//! - `Compact` needs the root role here (any user may compact in etcd 3.4): it destroys the
//!   history that every watcher depends on.

mod apply;
pub mod check;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

/// The user and the role that may do anything.
pub const ROOT: &str = "root";
/// The record of [`AuthState`] in a generation tree.
pub const AUTH_KEY: &[u8] = b"m:auth";
/// The record of [`Tokens`] in a generation tree.
pub const TOKENS_KEY: &[u8] = b"m:tokens";
/// Live tokens per user, at most; a new one replaces the user's oldest.
pub const MAX_TOKENS_PER_USER: usize = 64;
/// Live tokens in all, at most; a new one replaces the oldest.
pub const MAX_TOKENS: usize = 4096;

/// Users, roles and whether they are enforced.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthState {
    pub enabled: bool,
    /// Goes up by one with every change of users, roles, permissions or `enabled` (etcd's auth
    /// revision, reported by `AuthStatus`).
    pub revision: u64,
    pub users: BTreeMap<String, User>,
    pub roles: BTreeMap<String, Role>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// The password's hash as a PHC string; `None` for a user without a password (etcd's
    /// `--no-password`), who can only authenticate by client certificate.
    pub password: Option<String>,
    pub roles: BTreeSet<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Role {
    pub permissions: Vec<Permission>,
}

/// etcd's `authpb.Permission`: `kind` on `key` alone (`range_end` empty), on every key `>= key`
/// (`range_end` is `"\0"`), or on `[key, range_end)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Permission {
    pub kind: PermKind,
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub range_end: Vec<u8>,
}

/// etcd's permission types, with etcd's numbers (`READ` 0, `WRITE` 1, `READWRITE` 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PermKind {
    Read,
    Write,
    ReadWrite,
}

impl PermKind {
    pub fn allows_read(self) -> bool {
        matches!(self, PermKind::Read | PermKind::ReadWrite)
    }
    pub fn allows_write(self) -> bool {
        matches!(self, PermKind::Write | PermKind::ReadWrite)
    }
}

/// The live tokens, by the SHA-256 of the token.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tokens {
    pub by_hash: BTreeMap<[u8; 32], TokenRecord>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub user: String,
    /// Wall-clock milliseconds since the Unix epoch, as the issuing member saw them.
    pub issued_ms: u64,
    pub expires_ms: u64,
}

impl Tokens {
    /// The user of the token whose hash is `hash`, if it is live at `now_ms`.
    pub fn user_of(&self, hash: &[u8; 32], now_ms: u64) -> Option<&str> {
        self.by_hash
            .get(hash)
            .filter(|t| t.expires_ms > now_ms)
            .map(|t| t.user.as_str())
    }

    fn drop_user(&mut self, user: &str) -> bool {
        let before = self.by_hash.len();
        self.by_hash.retain(|_, t| t.user != user);
        before != self.by_hash.len()
    }
}

/// What a snapshot carries of auth. Tokens are left out of backups restored into a new cluster
/// (see `sm::snapshot::seed`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthSnapshot {
    pub state: AuthState,
    pub tokens: Tokens,
}

/// The changes of auth state, proposed as [`crate::Command::Auth`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuthCommand {
    /// Needs the `root` user with the `root` role.
    Enable,
    Disable,
    UserAdd {
        name: String,
        /// A PHC hash; `None`: a user without a password.
        password: Option<String>,
    },
    UserDelete {
        name: String,
    },
    UserChangePassword {
        name: String,
        password: String,
    },
    UserGrantRole {
        user: String,
        role: String,
    },
    UserRevokeRole {
        user: String,
        role: String,
    },
    RoleAdd {
        name: String,
    },
    RoleDelete {
        name: String,
    },
    /// Adds the permission, or changes the kind of one on the same key and range end.
    RoleGrantPermission {
        role: String,
        permission: Permission,
    },
    RoleRevokePermission {
        role: String,
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        #[serde(with = "serde_bytes")]
        range_end: Vec<u8>,
    },
    /// A token for `user`, issued after its password was checked (see the module docs).
    TokenIssue {
        user: String,
        token_hash: [u8; 32],
        issued_ms: u64,
        expires_ms: u64,
    },
}

impl AuthCommand {
    /// The name of the command for log lines (never its arguments: they may hold hashes).
    pub fn kind(&self) -> &'static str {
        match self {
            AuthCommand::Enable => "auth enable",
            AuthCommand::Disable => "auth disable",
            AuthCommand::UserAdd { .. } => "user add",
            AuthCommand::UserDelete { .. } => "user delete",
            AuthCommand::UserChangePassword { .. } => "user passwd",
            AuthCommand::UserGrantRole { .. } => "user grant-role",
            AuthCommand::UserRevokeRole { .. } => "user revoke-role",
            AuthCommand::RoleAdd { .. } => "role add",
            AuthCommand::RoleDelete { .. } => "role delete",
            AuthCommand::RoleGrantPermission { .. } => "role grant-permission",
            AuthCommand::RoleRevokePermission { .. } => "role revoke-permission",
            AuthCommand::TokenIssue { .. } => "token issue",
        }
    }
}

/// Why an auth command or an authorization failed. `Display` is etcd's text for it, which etcd's
/// clients match (the server maps each to etcd's gRPC code).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuthError {
    UserEmpty,
    UserAlreadyExists,
    UserNotFound,
    RoleEmpty,
    RoleAlreadyExists,
    RoleNotFound,
    RoleNotGranted,
    PermissionNotGranted,
    PermissionDenied,
    RootUserNotExist,
    RootRoleNotExist,
    AuthNotEnabled,
    AuthFailed,
    InvalidAuthToken,
    InvalidAuthMgmt,
}

impl fmt::Display for AuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AuthError::UserEmpty => "etcdserver: user name is empty",
            AuthError::UserAlreadyExists => "etcdserver: user name already exists",
            AuthError::UserNotFound => "etcdserver: user name not found",
            AuthError::RoleEmpty => "etcdserver: role name is empty",
            AuthError::RoleAlreadyExists => "etcdserver: role name already exists",
            AuthError::RoleNotFound => "etcdserver: role name not found",
            AuthError::RoleNotGranted => "etcdserver: role is not granted to the user",
            AuthError::PermissionNotGranted => "etcdserver: permission is not granted to the role",
            AuthError::PermissionDenied => "etcdserver: permission denied",
            AuthError::RootUserNotExist => "etcdserver: root user does not exist",
            AuthError::RootRoleNotExist => "etcdserver: root user does not have root role",
            AuthError::AuthNotEnabled => "etcdserver: authentication is not enabled",
            AuthError::AuthFailed => "etcdserver: authentication failed, invalid user ID or password",
            AuthError::InvalidAuthToken => "etcdserver: invalid auth token",
            AuthError::InvalidAuthMgmt => "etcdserver: invalid auth management",
        })
    }
}

impl std::error::Error for AuthError {}

impl AuthState {
    /// Does `user` exist and hold the `root` role?
    pub fn is_root(&self, user: &str) -> bool {
        self.users.get(user).is_some_and(|u| u.roles.contains(ROOT))
    }

    /// Nothing was ever configured: snapshots then carry no auth record.
    pub fn is_pristine(&self) -> bool {
        self == &AuthState::default()
    }
}
