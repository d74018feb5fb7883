//! The auth records of a generation tree (see [`crate::auth`]): loading them, applying auth
//! commands and authorizing users' commands in an entry, and carrying them in snapshots.

use std::io;
use std::sync::Arc;

use super::apply::Apply;
use super::io_err;
use super::mvcc::MvccError;
use crate::auth::{AuthCommand, AuthError, AuthSnapshot, AuthState, Tokens, AUTH_KEY, TOKENS_KEY};
use crate::codec;
use crate::durability::sled_to_io;
use crate::types::{Command, CommandResult};

/// The auth state and tokens as of an applied entry, shared with readers.
#[derive(Debug, Clone, Default)]
pub struct AuthView {
    pub state: Arc<AuthState>,
    pub tokens: Arc<Tokens>,
}

/// The auth records of `tree` (defaults where missing).
pub(super) fn load(tree: &sled::Tree) -> io::Result<AuthView> {
    let read = |key: &[u8]| tree.get(key).map_err(sled_to_io);
    let state = match read(AUTH_KEY)? {
        Some(bytes) => codec::decode(&bytes).map_err(io_err)?,
        None => AuthState::default(),
    };
    let tokens = match read(TOKENS_KEY)? {
        Some(bytes) => codec::decode(&bytes).map_err(io_err)?,
        None => Tokens::default(),
    };
    Ok(AuthView {
        state: Arc::new(state),
        tokens: Arc::new(tokens),
    })
}

/// The snapshot record of `tree`'s auth state: `None` when auth was never configured (so such
/// snapshots stay readable by releases without auth).
pub(super) fn capture(tree: &sled::Tree) -> io::Result<Option<Vec<u8>>> {
    let view = load(tree)?;
    if view.state.is_pristine() && view.tokens.by_hash.is_empty() {
        return Ok(None);
    }
    let snapshot = AuthSnapshot {
        state: (*view.state).clone(),
        tokens: (*view.tokens).clone(),
    };
    Ok(Some(codec::encode(&snapshot)))
}

/// Write a snapshot's auth record into `batch`; the tokens only with `keep_tokens` (a backup
/// restored into a new cluster starts without them).
pub(super) fn restore(batch: &mut sled::Batch, encoded: &[u8], keep_tokens: bool) -> io::Result<()> {
    let snapshot: AuthSnapshot =
        codec::decode(encoded).map_err(|e| io::Error::other(format!("snapshot auth record: {e}")))?;
    batch.insert(AUTH_KEY, codec::encode(&snapshot.state));
    if keep_tokens {
        batch.insert(TOKENS_KEY, codec::encode(&snapshot.tokens));
    }
    Ok(())
}

/// The auth state while one entry is applied.
pub(super) struct AuthWork {
    pub view: AuthView,
    state_changed: bool,
    tokens_changed: bool,
}

impl AuthWork {
    pub fn new(view: AuthView) -> Self {
        AuthWork {
            view,
            state_changed: false,
            tokens_changed: false,
        }
    }

    /// Run `command` (not a batch): authorize it if auth is enabled, then apply it to the auth
    /// state or hand it to `apply`.
    pub fn execute(&mut self, apply: &mut Apply<'_>, command: &Command) -> Result<CommandResult, MvccError> {
        let (user, cmd) = command.unwrap_user();
        if self.view.state.enabled {
            // A token that is gone (its user deleted, its password changed) speaks for no one.
            if let (Some(user), Some(token)) = (user, command.user_token()) {
                let live = self.view.tokens.by_hash.get(token).is_some_and(|t| t.user == user);
                if !live {
                    return Ok(CommandResult::AuthRefused(AuthError::InvalidAuthToken));
                }
            }
            let lease_keys = |id| apply.lease_keys(id).map(|keys| keys.into_iter().collect());
            if let Err(e) = self.view.state.authorize(user, cmd, lease_keys)? {
                return Ok(CommandResult::AuthRefused(e));
            }
        }
        match cmd {
            Command::Auth(a) => Ok(self.auth(a)),
            // Neither decodes inside `AsUser`; refused should one be built in memory.
            Command::AsUser(_) | Command::Batch(_) => Ok(CommandResult::AuthRefused(AuthError::PermissionDenied)),
            other => apply.execute(other, user),
        }
    }

    fn auth(&mut self, cmd: &AuthCommand) -> CommandResult {
        let mut state = (*self.view.state).clone();
        let mut tokens = (*self.view.tokens).clone();
        match state.apply(cmd, &mut tokens) {
            Ok(changed) => {
                if changed.state {
                    self.view.state = Arc::new(state);
                    self.state_changed = true;
                }
                if changed.tokens {
                    self.view.tokens = Arc::new(tokens);
                    self.tokens_changed = true;
                }
                CommandResult::None
            }
            Err(e) => CommandResult::AuthRefused(e),
        }
    }

    /// Add the changed records to the entry's batch. Returns the view if anything changed.
    pub fn finish(&self, batch: &mut super::writes::WriteSet) -> Option<AuthView> {
        if self.state_changed {
            batch.insert(AUTH_KEY, codec::encode(&*self.view.state));
        }
        if self.tokens_changed {
            batch.insert(TOKENS_KEY, codec::encode(&*self.view.tokens));
        }
        (self.state_changed || self.tokens_changed).then(|| self.view.clone())
    }
}
