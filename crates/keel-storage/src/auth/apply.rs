//! Applying [`AuthCommand`]s: etcd's rules for users, roles and permissions, and the token table.

use super::{
    AuthCommand, AuthError, AuthState, Role, TokenRecord, Tokens, User, MAX_TOKENS, MAX_TOKENS_PER_USER, ROOT,
};

/// Which records an applied command changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Changed {
    pub state: bool,
    pub tokens: bool,
}

impl AuthState {
    /// Apply `cmd` to this state and `tokens`. On an error nothing changed.
    pub fn apply(&mut self, cmd: &AuthCommand, tokens: &mut Tokens) -> Result<Changed, AuthError> {
        let mut changed = Changed {
            state: true,
            tokens: false,
        };
        match cmd {
            AuthCommand::Enable => {
                if self.enabled {
                    return Ok(Changed::default());
                }
                let root = self.users.get(ROOT).ok_or(AuthError::RootUserNotExist)?;
                if !root.roles.contains(ROOT) {
                    return Err(AuthError::RootRoleNotExist);
                }
                self.enabled = true;
            }
            AuthCommand::Disable => {
                if !self.enabled {
                    return Ok(Changed::default());
                }
                self.enabled = false;
                changed.tokens = !tokens.by_hash.is_empty();
                tokens.by_hash.clear();
            }
            AuthCommand::UserAdd { name, password } => {
                if name.is_empty() {
                    return Err(AuthError::UserEmpty);
                }
                if self.users.contains_key(name) {
                    return Err(AuthError::UserAlreadyExists);
                }
                let user = User {
                    password: password.clone(),
                    roles: Default::default(),
                };
                self.users.insert(name.clone(), user);
            }
            AuthCommand::UserDelete { name } => {
                if self.enabled && name == ROOT {
                    return Err(AuthError::InvalidAuthMgmt);
                }
                self.users.remove(name).ok_or(AuthError::UserNotFound)?;
                changed.tokens = tokens.drop_user(name);
            }
            AuthCommand::UserChangePassword { name, password } => {
                let user = self.users.get_mut(name).ok_or(AuthError::UserNotFound)?;
                user.password = Some(password.clone());
                changed.tokens = tokens.drop_user(name);
            }
            AuthCommand::UserGrantRole { user, role } => {
                // The root role need not be created to be granted (as in etcd).
                if role != ROOT && !self.roles.contains_key(role) {
                    return Err(AuthError::RoleNotFound);
                }
                let u = self.users.get_mut(user).ok_or(AuthError::UserNotFound)?;
                if !u.roles.insert(role.clone()) {
                    return Ok(Changed::default());
                }
            }
            AuthCommand::UserRevokeRole { user, role } => {
                if self.enabled && user == ROOT && role == ROOT {
                    return Err(AuthError::InvalidAuthMgmt);
                }
                let u = self.users.get_mut(user).ok_or(AuthError::UserNotFound)?;
                if !u.roles.remove(role) {
                    return Err(AuthError::RoleNotGranted);
                }
            }
            AuthCommand::RoleAdd { name } => {
                if name.is_empty() {
                    return Err(AuthError::RoleEmpty);
                }
                if self.roles.contains_key(name) {
                    return Err(AuthError::RoleAlreadyExists);
                }
                self.roles.insert(name.clone(), Role::default());
            }
            AuthCommand::RoleDelete { name } => {
                if self.enabled && name == ROOT {
                    return Err(AuthError::InvalidAuthMgmt);
                }
                self.roles.remove(name).ok_or(AuthError::RoleNotFound)?;
                for user in self.users.values_mut() {
                    user.roles.remove(name);
                }
            }
            AuthCommand::RoleGrantPermission { role, permission } => {
                let r = self.roles.get_mut(role).ok_or(AuthError::RoleNotFound)?;
                let same = |p: &&mut super::Permission| p.key == permission.key && p.range_end == permission.range_end;
                match r.permissions.iter_mut().find(same) {
                    Some(p) if p.kind == permission.kind => return Ok(Changed::default()),
                    Some(p) => p.kind = permission.kind,
                    None => {
                        r.permissions.push(permission.clone());
                        r.permissions
                            .sort_by(|a, b| (&a.key, &a.range_end).cmp(&(&b.key, &b.range_end)));
                    }
                }
            }
            AuthCommand::RoleRevokePermission { role, key, range_end } => {
                let r = self.roles.get_mut(role).ok_or(AuthError::RoleNotFound)?;
                let before = r.permissions.len();
                r.permissions.retain(|p| !(&p.key == key && &p.range_end == range_end));
                if r.permissions.len() == before {
                    return Err(AuthError::PermissionNotGranted);
                }
            }
            AuthCommand::TokenIssue {
                user,
                token_hash,
                issued_ms,
                expires_ms,
            } => {
                if !self.enabled {
                    return Err(AuthError::AuthNotEnabled);
                }
                if !self.users.contains_key(user) {
                    return Err(AuthError::AuthFailed);
                }
                tokens.issue(*token_hash, user, *issued_ms, *expires_ms);
                return Ok(Changed {
                    state: false,
                    tokens: true,
                });
            }
        }
        if changed.state {
            self.revision += 1;
        }
        Ok(changed)
    }
}

impl Tokens {
    /// Add a token, dropping the expired ones and, past the bounds, the oldest.
    fn issue(&mut self, hash: [u8; 32], user: &str, issued_ms: u64, expires_ms: u64) {
        self.by_hash.retain(|_, t| t.expires_ms > issued_ms);
        let oldest = |tokens: &Tokens, of: Option<&str>| {
            tokens
                .by_hash
                .iter()
                .filter(|(_, t)| of.is_none_or(|u| t.user == u))
                .min_by_key(|(h, t)| (t.issued_ms, **h))
                .map(|(h, _)| *h)
        };
        while self.by_hash.values().filter(|t| t.user == user).count() >= MAX_TOKENS_PER_USER {
            let Some(h) = oldest(self, Some(user)) else { break };
            self.by_hash.remove(&h);
        }
        while self.by_hash.len() >= MAX_TOKENS {
            let Some(h) = oldest(self, None) else { break };
            self.by_hash.remove(&h);
        }
        let record = TokenRecord {
            user: user.to_string(),
            issued_ms,
            expires_ms,
        };
        self.by_hash.insert(hash, record);
    }
}

#[cfg(test)]
mod tests {
    use super::super::{PermKind, Permission};
    use super::*;

    fn cmd(state: &mut AuthState, tokens: &mut Tokens, c: AuthCommand) -> Result<Changed, AuthError> {
        state.apply(&c, tokens)
    }

    fn add_user(name: &str) -> AuthCommand {
        AuthCommand::UserAdd {
            name: name.into(),
            password: Some(format!("$argon2id$hash-of-{name}")),
        }
    }

    fn grant(user: &str, role: &str) -> AuthCommand {
        AuthCommand::UserGrantRole {
            user: user.into(),
            role: role.into(),
        }
    }

    #[test]
    fn enable_needs_root_with_the_root_role_and_root_is_then_protected() {
        let (mut s, mut t) = (AuthState::default(), Tokens::default());
        assert_eq!(
            cmd(&mut s, &mut t, AuthCommand::Enable),
            Err(AuthError::RootUserNotExist)
        );
        cmd(&mut s, &mut t, add_user(ROOT)).unwrap();
        assert_eq!(
            cmd(&mut s, &mut t, AuthCommand::Enable),
            Err(AuthError::RootRoleNotExist)
        );
        cmd(&mut s, &mut t, grant(ROOT, ROOT)).unwrap();
        let rev = s.revision;
        cmd(&mut s, &mut t, AuthCommand::Enable).unwrap();
        assert!(s.enabled);
        assert_eq!(s.revision, rev + 1);
        assert_eq!(cmd(&mut s, &mut t, AuthCommand::Enable), Ok(Changed::default()));
        let delete_root = AuthCommand::UserDelete { name: ROOT.into() };
        assert_eq!(
            cmd(&mut s, &mut t, delete_root.clone()),
            Err(AuthError::InvalidAuthMgmt)
        );
        let revoke = AuthCommand::UserRevokeRole {
            user: ROOT.into(),
            role: ROOT.into(),
        };
        assert_eq!(cmd(&mut s, &mut t, revoke.clone()), Err(AuthError::InvalidAuthMgmt));
        cmd(&mut s, &mut t, AuthCommand::Disable).unwrap();
        cmd(&mut s, &mut t, revoke).unwrap();
        cmd(&mut s, &mut t, delete_root).unwrap();
        assert!(s.users.is_empty());
    }

    #[test]
    fn users_and_roles_follow_etcds_rules() {
        let (mut s, mut t) = (AuthState::default(), Tokens::default());
        assert_eq!(cmd(&mut s, &mut t, add_user("")), Err(AuthError::UserEmpty));
        cmd(&mut s, &mut t, add_user("alice")).unwrap();
        assert_eq!(
            cmd(&mut s, &mut t, add_user("alice")),
            Err(AuthError::UserAlreadyExists)
        );
        assert_eq!(cmd(&mut s, &mut t, grant("alice", "dev")), Err(AuthError::RoleNotFound));
        assert_eq!(cmd(&mut s, &mut t, grant("bob", ROOT)), Err(AuthError::UserNotFound));
        let role_add = AuthCommand::RoleAdd { name: "dev".into() };
        cmd(&mut s, &mut t, role_add.clone()).unwrap();
        assert_eq!(cmd(&mut s, &mut t, role_add), Err(AuthError::RoleAlreadyExists));
        cmd(&mut s, &mut t, grant("alice", "dev")).unwrap();
        let rev = s.revision;
        assert_eq!(cmd(&mut s, &mut t, grant("alice", "dev")), Ok(Changed::default()));
        assert_eq!(s.revision, rev, "a no-op leaves the auth revision");
        let perm = |kind| Permission {
            kind,
            key: b"a".to_vec(),
            range_end: b"b".to_vec(),
        };
        let grant_perm = |kind| AuthCommand::RoleGrantPermission {
            role: "dev".into(),
            permission: perm(kind),
        };
        cmd(&mut s, &mut t, grant_perm(PermKind::Read)).unwrap();
        cmd(&mut s, &mut t, grant_perm(PermKind::ReadWrite)).unwrap();
        assert_eq!(
            s.roles["dev"].permissions,
            vec![perm(PermKind::ReadWrite)],
            "same range: kind replaced"
        );
        let revoke_perm = AuthCommand::RoleRevokePermission {
            role: "dev".into(),
            key: b"a".to_vec(),
            range_end: b"b".to_vec(),
        };
        cmd(&mut s, &mut t, revoke_perm.clone()).unwrap();
        assert_eq!(cmd(&mut s, &mut t, revoke_perm), Err(AuthError::PermissionNotGranted));
        cmd(&mut s, &mut t, AuthCommand::RoleDelete { name: "dev".into() }).unwrap();
        assert!(s.users["alice"].roles.is_empty(), "a deleted role leaves its users");
        let revoke = AuthCommand::UserRevokeRole {
            user: "alice".into(),
            role: "dev".into(),
        };
        assert_eq!(cmd(&mut s, &mut t, revoke), Err(AuthError::RoleNotGranted));
    }

    #[test]
    fn tokens_expire_are_bounded_and_die_with_their_user_or_password() {
        let (mut s, mut t) = (AuthState::default(), Tokens::default());
        for c in [add_user(ROOT), grant(ROOT, ROOT), add_user("alice")] {
            cmd(&mut s, &mut t, c).unwrap();
        }
        let issue = |n: u8, user: &str, at: u64| AuthCommand::TokenIssue {
            user: user.into(),
            token_hash: [n; 32],
            issued_ms: at,
            expires_ms: at + 100_000,
        };
        assert_eq!(
            cmd(&mut s, &mut t, issue(1, "alice", 0)),
            Err(AuthError::AuthNotEnabled)
        );
        cmd(&mut s, &mut t, AuthCommand::Enable).unwrap();
        assert_eq!(cmd(&mut s, &mut t, issue(1, "bob", 0)), Err(AuthError::AuthFailed));
        cmd(&mut s, &mut t, issue(1, "alice", 0)).unwrap();
        assert_eq!(t.user_of(&[1; 32], 99_999), Some("alice"));
        assert_eq!(t.user_of(&[1; 32], 100_000), None, "expired");
        cmd(&mut s, &mut t, issue(2, "alice", 200_000)).unwrap();
        assert!(
            !t.by_hash.contains_key(&[1; 32]),
            "expired tokens go when one is issued"
        );
        for n in 0..MAX_TOKENS_PER_USER as u8 {
            cmd(&mut s, &mut t, issue(10 + n, ROOT, 250_000 + u64::from(n))).unwrap();
        }
        assert_eq!(t.by_hash.len(), MAX_TOKENS_PER_USER + 1);
        cmd(&mut s, &mut t, issue(200, ROOT, 250_500)).unwrap();
        assert!(!t.by_hash.contains_key(&[10; 32]), "root's oldest token made room");
        assert!(t.by_hash.contains_key(&[2; 32]), "alice's token stays");
        let passwd = AuthCommand::UserChangePassword {
            name: "alice".into(),
            password: "$argon2id$new".into(),
        };
        assert!(cmd(&mut s, &mut t, passwd).unwrap().tokens);
        assert_eq!(t.user_of(&[2; 32], 250_600), None, "a new password ends the old tokens");
        cmd(&mut s, &mut t, AuthCommand::Disable).unwrap();
        assert!(t.by_hash.is_empty(), "disabling auth ends every token");
    }
}
