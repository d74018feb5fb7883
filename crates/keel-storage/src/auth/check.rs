//! Who may do what: a user's permissions against the keys a command touches.
//!
//! A request is allowed when the union of the ranges its user's roles grant (with the kind it
//! needs) covers every key it reads or writes, as in etcd: two roles granting `[a, m)` and
//! `[m, z)` together allow a range read of `[a, z)`. The `root` role allows everything.
//!
//! What each command needs (etcd's rules, and where keel is stricter, said so):
//! - put: write on the key, and read too with `prev_kv`; delete: write on the range, read too
//!   with `prev_kv`;
//! - txn: read on every compared key or range, and what each op of *both* branches needs,
//!   nested txns included (the branch taken is not known before apply);
//! - lease grant and keep-alive: any user; lease revoke: write on every key attached to the
//!   lease (as etcd);
//! - compact and every auth command: root (etcd 3.4 lets any user compact);
//! - the leader's own lease checkpoints and expiries, and token issues, come without a user.

use super::{AuthError, AuthState, ROOT};
use crate::types::{Command, CompareTarget, KeyRange, LeaseId, Txn, TxnOp};

/// What an operation needs on a range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    Read,
    Write,
}

/// `[start, end)`, where `None` is past every key.
type Span = (Vec<u8>, Option<Vec<u8>>);

/// The smallest key after every key that starts with `prefix`; `None` when there is none (an
/// empty prefix, or all 0xFF).
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xFF {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

fn single(key: &[u8]) -> Span {
    let mut end = key.to_vec();
    end.push(0);
    (key.to_vec(), Some(end))
}

fn span_of(range: &KeyRange) -> Span {
    match range {
        KeyRange::Key(k) => single(k),
        KeyRange::Prefix(p) => (p.clone(), prefix_end(p)),
        KeyRange::Between { start, end } => (start.clone(), Some(end.clone())),
        KeyRange::From(start) => (start.clone(), None),
    }
}

/// etcd's permission ranges: an empty `range_end` is the key alone, `"\0"` every key from it.
fn span_of_permission(key: &[u8], range_end: &[u8]) -> Span {
    match range_end {
        [] => single(key),
        [0] => (key.to_vec(), None),
        end => (key.to_vec(), Some(end.to_vec())),
    }
}

fn is_empty((start, end): &Span) -> bool {
    end.as_ref().is_some_and(|e| e <= start)
}

/// Do `spans` together cover `want`?
fn covers(mut spans: Vec<Span>, want: &Span) -> bool {
    if is_empty(want) {
        return true;
    }
    spans.retain(|s| !is_empty(s));
    spans.sort();
    let mut reached = want.0.clone();
    for (start, end) in spans {
        if start > reached {
            return false;
        }
        match end {
            None => return true,
            Some(end) if end > reached => reached = end,
            Some(_) => {}
        }
        if want.1.as_ref().is_some_and(|w| &reached >= w) {
            return true;
        }
    }
    false
}

impl AuthState {
    /// May `user` do `need` on every key of `range`? (Whether auth is enabled is the caller's
    /// business.)
    pub fn allows(&self, user: &str, need: Need, range: &KeyRange) -> bool {
        let Some(u) = self.users.get(user) else {
            return false;
        };
        if u.roles.contains(ROOT) {
            return true;
        }
        let spans = u
            .roles
            .iter()
            .filter_map(|r| self.roles.get(r))
            .flat_map(|r| &r.permissions)
            .filter(|p| match need {
                Need::Read => p.kind.allows_read(),
                Need::Write => p.kind.allows_write(),
            })
            .map(|p| span_of_permission(&p.key, &p.range_end))
            .collect();
        covers(spans, &span_of(range))
    }

    /// Is `user` allowed `need` on `range`, as an error for the client if not.
    pub fn require(&self, user: &str, need: Need, range: &KeyRange) -> Result<(), AuthError> {
        if self.allows(user, need, range) {
            Ok(())
        } else {
            Err(AuthError::PermissionDenied)
        }
    }

    /// Is `user` root, as an error for the client if not?
    pub fn require_root(&self, user: &str) -> Result<(), AuthError> {
        if self.is_root(user) {
            Ok(())
        } else {
            Err(AuthError::PermissionDenied)
        }
    }

    /// May `cmd`, proposed for `user` (`None`: by the cluster itself), be applied? Call only while
    /// auth is enabled. `lease_keys` lists the keys attached to a lease now.
    pub fn authorize<E>(
        &self,
        user: Option<&str>,
        cmd: &Command,
        lease_keys: impl FnOnce(LeaseId) -> Result<Vec<Vec<u8>>, E>,
    ) -> Result<Result<(), AuthError>, E> {
        let Some(user) = user else {
            let system = matches!(
                cmd,
                Command::LeaseCheckpoint(_)
                    | Command::LeaseExpire(_)
                    | Command::Auth(super::AuthCommand::TokenIssue { .. })
            );
            return Ok(if system { Ok(()) } else { Err(AuthError::UserEmpty) });
        };
        if !self.users.contains_key(user) {
            return Ok(Err(AuthError::PermissionDenied));
        }
        if self.is_root(user) {
            return Ok(Ok(()));
        }
        Ok(match cmd {
            Command::Put(p) => self.put(user, &p.key, p.prev_kv),
            Command::LeasedPut(p) => self.put(user, &p.put.key, p.put.prev_kv),
            Command::PutWith(p) => self.put(user, &p.put.key, p.put.prev_kv),
            Command::Delete(d) => self.delete(user, &d.range, d.prev_kv),
            Command::Txn(txn) => self.txn(user, txn),
            Command::LeaseGrant(_) | Command::LeaseRenew(_) => Ok(()),
            Command::LeaseRevoke(r) => {
                for key in lease_keys(r.id)? {
                    if let Err(e) = self.require(user, Need::Write, &KeyRange::Key(key)) {
                        return Ok(Err(e));
                    }
                }
                Ok(())
            }
            Command::Compact(_)
            | Command::Auth(_)
            | Command::LeaseCheckpoint(_)
            | Command::LeaseExpire(_)
            | Command::Batch(_)
            | Command::AsUser(_) => Err(AuthError::PermissionDenied),
        })
    }

    fn put(&self, user: &str, key: &[u8], prev_kv: bool) -> Result<(), AuthError> {
        let range = KeyRange::Key(key.to_vec());
        self.require(user, Need::Write, &range)?;
        if prev_kv {
            self.require(user, Need::Read, &range)?;
        }
        Ok(())
    }

    fn delete(&self, user: &str, range: &KeyRange, prev_kv: bool) -> Result<(), AuthError> {
        self.require(user, Need::Write, range)?;
        if prev_kv {
            self.require(user, Need::Read, range)?;
        }
        Ok(())
    }

    fn txn(&self, user: &str, txn: &Txn) -> Result<(), AuthError> {
        for c in &txn.compares {
            let range = match &c.target {
                CompareTarget::Range { end, .. } if end.is_empty() => KeyRange::From(c.key.clone()),
                CompareTarget::Range { end, .. } => KeyRange::Between {
                    start: c.key.clone(),
                    end: end.clone(),
                },
                _ => KeyRange::Key(c.key.clone()),
            };
            self.require(user, Need::Read, &range)?;
        }
        for op in txn.success.iter().chain(&txn.failure) {
            match op {
                TxnOp::Put(p) => self.put(user, &p.key, p.prev_kv)?,
                TxnOp::LeasedPut(p) => self.put(user, &p.put.key, p.put.prev_kv)?,
                TxnOp::PutWith(p) => self.put(user, &p.put.key, p.put.prev_kv)?,
                TxnOp::Delete(d) => self.delete(user, &d.range, d.prev_kv)?,
                TxnOp::Range(r) => self.require(user, Need::Read, &r.range)?,
                TxnOp::Txn(inner) => self.txn(user, inner)?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::{AuthCommand, PermKind, Permission, Tokens};
    use super::*;
    use crate::types::{Compare, CompareOp, DeleteOp, PutOp, RangeOp};

    /// alice: read-write on `a`..`m`, read on `m`..`z` and on the key `0solo`; bob: two roles whose
    /// write ranges meet at `k`; root.
    fn state() -> AuthState {
        let (mut s, mut t) = (AuthState::default(), Tokens::default());
        let perm = |role: &str, kind, key: &[u8], end: &[u8]| AuthCommand::RoleGrantPermission {
            role: role.into(),
            permission: Permission {
                kind,
                key: key.to_vec(),
                range_end: end.to_vec(),
            },
        };
        let user = |name: &str| AuthCommand::UserAdd {
            name: name.into(),
            password: None,
        };
        let grant = |user: &str, role: &str| AuthCommand::UserGrantRole {
            user: user.into(),
            role: role.into(),
        };
        let role = |name: &str| AuthCommand::RoleAdd { name: name.into() };
        for c in [
            user("root"),
            grant("root", "root"),
            user("alice"),
            user("bob"),
            role("rw"),
            role("ro"),
            role("low"),
            role("high"),
            perm("rw", PermKind::ReadWrite, b"a", b"m"),
            perm("ro", PermKind::Read, b"m", b"z"),
            perm("ro", PermKind::Read, b"0solo", b""),
            perm("low", PermKind::Write, b"c", b"k"),
            perm("high", PermKind::Write, b"k", b"\0"),
            grant("alice", "rw"),
            grant("alice", "ro"),
            grant("bob", "low"),
            grant("bob", "high"),
            AuthCommand::Enable,
        ] {
            s.apply(&c, &mut t).unwrap();
        }
        s
    }

    fn key(k: &[u8]) -> KeyRange {
        KeyRange::Key(k.to_vec())
    }

    fn between(a: &[u8], b: &[u8]) -> KeyRange {
        KeyRange::Between {
            start: a.to_vec(),
            end: b.to_vec(),
        }
    }

    #[test]
    fn ranges_are_covered_by_the_union_of_a_users_roles() {
        let s = state();
        assert!(s.allows("alice", Need::Write, &key(b"apple")));
        assert!(!s.allows("alice", Need::Write, &key(b"melon")), "m.. is read only");
        assert!(
            s.allows("alice", Need::Read, &between(b"b", b"y")),
            "rw and ro meet at m"
        );
        assert!(!s.allows("alice", Need::Read, &between(b"b", b"zz")));
        assert!(s.allows("alice", Need::Read, &key(b"0solo")));
        assert!(
            !s.allows("alice", Need::Read, &key(b"0solo2")),
            "an empty range_end is one key"
        );
        assert!(s.allows("alice", Need::Read, &KeyRange::Prefix(b"b".to_vec())));
        assert!(
            !s.allows("alice", Need::Read, &KeyRange::Prefix(Vec::new())),
            "everything"
        );
        assert!(
            s.allows("bob", Need::Write, &KeyRange::From(b"d".to_vec())),
            "[c,k) + [k,∞)"
        );
        assert!(!s.allows("bob", Need::Write, &KeyRange::From(b"b".to_vec())));
        assert!(!s.allows("bob", Need::Read, &key(b"d")), "write is not read");
        assert!(s.allows("root", Need::Write, &KeyRange::Prefix(Vec::new())));
        assert!(!s.allows("carol", Need::Read, &key(b"a")), "no such user");
        assert!(
            s.allows("alice", Need::Write, &between(b"x", b"a")),
            "an empty range needs nothing"
        );
    }

    #[test]
    fn commands_need_what_etcd_says_and_compact_and_auth_need_root() {
        let s = state();
        let no_leases = |_| Ok::<_, ()>(Vec::new());
        let allowed = |user: Option<&str>, cmd: &Command| s.authorize(user, cmd, no_leases).unwrap();
        let put = |k: &[u8], prev_kv| {
            Command::Put(PutOp {
                key: k.to_vec(),
                value: b"v".to_vec(),
                prev_kv,
            })
        };
        assert_eq!(allowed(Some("alice"), &put(b"a1", true)), Ok(()));
        assert_eq!(allowed(Some("bob"), &put(b"d", false)), Ok(()));
        assert_eq!(
            allowed(Some("bob"), &put(b"d", true)),
            Err(AuthError::PermissionDenied),
            "prev_kv reads"
        );
        assert_eq!(allowed(None, &put(b"a1", false)), Err(AuthError::UserEmpty));
        assert_eq!(
            allowed(Some("carol"), &put(b"a1", false)),
            Err(AuthError::PermissionDenied)
        );
        let delete = Command::Delete(DeleteOp {
            range: between(b"a", b"n"),
            prev_kv: false,
        });
        assert_eq!(allowed(Some("alice"), &delete), Err(AuthError::PermissionDenied));
        assert_eq!(allowed(Some("root"), &delete), Ok(()));
        assert_eq!(
            allowed(Some("alice"), &Command::Compact(5)),
            Err(AuthError::PermissionDenied)
        );
        assert_eq!(allowed(Some("root"), &Command::Compact(5)), Ok(()));
        assert_eq!(
            allowed(Some("alice"), &Command::Auth(AuthCommand::Disable)),
            Err(AuthError::PermissionDenied)
        );
        // A txn needs its compares read and both branches' ops, however deep.
        let txn = |compare_key: &[u8], failure: Vec<TxnOp>| {
            Command::Txn(Txn {
                compares: vec![Compare {
                    key: compare_key.to_vec(),
                    op: CompareOp::Equal,
                    target: CompareTarget::Version(0),
                }],
                success: vec![TxnOp::Put(PutOp {
                    key: b"a2".to_vec(),
                    value: vec![],
                    prev_kv: false,
                })],
                failure,
            })
        };
        assert_eq!(allowed(Some("alice"), &txn(b"melon", vec![])), Ok(()));
        assert_eq!(
            allowed(Some("alice"), &txn(b"zebra", vec![])),
            Err(AuthError::PermissionDenied)
        );
        let deep_write = TxnOp::Txn(Txn {
            compares: vec![],
            success: vec![],
            failure: vec![TxnOp::Put(PutOp {
                key: b"melon".to_vec(),
                value: vec![],
                prev_kv: false,
            })],
        });
        assert_eq!(
            allowed(Some("alice"), &txn(b"a", vec![deep_write])),
            Err(AuthError::PermissionDenied)
        );
        let read_op = TxnOp::Range(RangeOp::new(between(b"m", b"n")));
        assert_eq!(allowed(Some("alice"), &txn(b"a", vec![read_op])), Ok(()));
    }

    #[test]
    fn a_lease_revoke_needs_write_on_every_attached_key() {
        let s = state();
        let revoke = Command::LeaseRevoke(crate::types::LeaseRef { id: 7 });
        fn attached(keys: &[&str]) -> impl FnOnce(LeaseId) -> Result<Vec<Vec<u8>>, &'static str> {
            let keys: Vec<Vec<u8>> = keys.iter().map(|k| k.as_bytes().to_vec()).collect();
            move |_| Ok(keys)
        }
        assert_eq!(s.authorize(Some("alice"), &revoke, attached(&["a1", "b"])), Ok(Ok(())));
        assert_eq!(
            s.authorize(Some("alice"), &revoke, attached(&["a1", "melon"])),
            Ok(Err(AuthError::PermissionDenied))
        );
        assert_eq!(
            s.authorize(Some("alice"), &revoke, |_| Err("sled failed")),
            Err("sled failed")
        );
    }

    #[test]
    fn prefix_ends() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"\xff\xff"), None);
        assert_eq!(prefix_end(b""), None);
    }
}
