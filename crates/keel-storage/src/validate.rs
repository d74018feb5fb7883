//! Input validation, run by the server before anything is proposed to Raft.
//!
//! Apply never sees a request that fails these checks, so the state machine does not have to
//! decide what an empty key means. The server maps every [`InvalidRequest`] to gRPC
//! `InvalidArgument`.

use std::collections::BTreeSet;

use thiserror::Error;

use crate::auth::AuthCommand;
use crate::types::{
    Command, Compare, CompareTarget, DeleteOp, KeyRange, PutOp, PutWith, RangeOp, Request, Txn, TxnOp, MAX_TXN_NESTING,
};

/// Size limits on what clients may store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Keys are `1..=max_key_bytes` bytes long.
    pub max_key_bytes: usize,
    /// Values are at most this long.
    pub max_value_bytes: usize,
    /// A txn has at most this many compares, and at most this many ops in each branch.
    pub max_txn_ops: usize,
    /// A whole request (one log entry, when alone) is at most this many bytes encoded, as etcd's
    /// `--max-request-bytes`. Every member sends each entry in one message within one heartbeat
    /// interval, so an entry of many MiB (a txn of several large values) stalls replication and
    /// costs the leader its quorum; it is refused here instead, with InvalidArgument.
    pub max_request_bytes: usize,
}

/// etcd's default `--max-request-bytes`: 1.5 MiB, room for one value at the default limit.
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 3 * 512 * 1024;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_key_bytes: 4096,
            max_value_bytes: 1024 * 1024,
            max_txn_ops: 128,
            max_request_bytes: DEFAULT_MAX_REQUEST_BYTES,
        }
    }
}

/// Why a request was refused. The messages are shown to users as they are.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum InvalidRequest {
    #[error("key is empty")]
    EmptyKey,
    #[error("key is {len} bytes, more than the limit of {max}")]
    KeyTooLarge { len: usize, max: usize },
    #[error("value is {len} bytes, more than the limit of {max}")]
    ValueTooLarge { len: usize, max: usize },
    #[error("range end must be greater than range start")]
    EmptyRange,
    #[error("txn has {len} {what}, more than the limit of {max}")]
    TooManyTxnOps { what: &'static str, len: usize, max: usize },
    #[error("txn writes key {key:?} more than once in one branch")]
    DuplicateTxnKey { key: String },
    #[error("session sequence numbers start at 1")]
    ZeroSessionSeq,
    #[error("batches are built by the leader, not sent by clients")]
    ClientBatch,
    #[error("request is {len} bytes, more than the limit of {max} (--max-request-bytes)")]
    RequestTooLarge { len: usize, max: usize },
    #[error("lease id {0} is out of range (1 to {max})", max = i64::MAX)]
    LeaseId(u64),
    #[error("lease TTL of {0} ms is out of range (1 ms to {max} ms)", max = MAX_LEASE_TTL_MS)]
    LeaseTtl(u64),
    #[error("lease checkpoints and expiries are proposed by the leader, not sent by clients")]
    LeaderOnly,
    #[error("txns are nested more than {max} deep")]
    TxnTooDeep { max: u32 },
    #[error("a range compare cannot hold another range compare")]
    NestedRangeCompare,
    /// etcd: "value is provided".
    #[error("a put that keeps the current value must not provide one")]
    ValueProvided,
    /// etcd: "lease is provided".
    #[error("a put that keeps the current lease must not provide one")]
    LeaseProvided,
    #[error("{what} name is {len} bytes, more than the limit of {max}")]
    NameTooLarge { what: &'static str, len: usize, max: usize },
    #[error("a user's command cannot be a batch or another user's command")]
    NestedUser,
    #[error("tokens are issued by the server, not requested by clients")]
    ServerOnly,
}

/// User and role names are at most this many bytes.
pub const MAX_NAME_BYTES: usize = 256;

fn validate_name(what: &'static str, name: &str) -> Result<(), InvalidRequest> {
    // Empty names are refused at apply, with etcd's own errors ("user name is empty").
    if name.len() > MAX_NAME_BYTES {
        return Err(InvalidRequest::NameTooLarge {
            what,
            len: name.len(),
            max: MAX_NAME_BYTES,
        });
    }
    Ok(())
}

fn validate_auth(cmd: &AuthCommand, limits: &Limits) -> Result<(), InvalidRequest> {
    match cmd {
        AuthCommand::Enable | AuthCommand::Disable => Ok(()),
        AuthCommand::UserAdd { name, .. }
        | AuthCommand::UserDelete { name }
        | AuthCommand::UserChangePassword { name, .. } => validate_name("user", name),
        AuthCommand::UserGrantRole { user, role } | AuthCommand::UserRevokeRole { user, role } => {
            validate_name("user", user)?;
            validate_name("role", role)
        }
        AuthCommand::RoleAdd { name } | AuthCommand::RoleDelete { name } => validate_name("role", name),
        AuthCommand::RoleGrantPermission { role, permission } => {
            validate_name("role", role)?;
            check_len(&permission.key, limits)?;
            check_len(&permission.range_end, limits)
        }
        AuthCommand::RoleRevokePermission { role, key, range_end } => {
            validate_name("role", role)?;
            check_len(key, limits)?;
            check_len(range_end, limits)
        }
        AuthCommand::TokenIssue { .. } => Err(InvalidRequest::ServerOnly),
    }
}

/// The longest lease TTL: etcd's 9,000,000,000 seconds.
pub const MAX_LEASE_TTL_MS: u64 = 9_000_000_000_000;

fn validate_lease_id(id: u64) -> Result<(), InvalidRequest> {
    if id == 0 || id > i64::MAX as u64 {
        return Err(InvalidRequest::LeaseId(id));
    }
    Ok(())
}

/// Check a request before it is proposed.
pub fn validate_request(req: &Request, limits: &Limits) -> Result<(), InvalidRequest> {
    if req.session.is_some_and(|s| s.seq == 0) {
        return Err(InvalidRequest::ZeroSessionSeq);
    }
    validate_command(&req.command, limits)?;
    let len = crate::codec::encoded_len(req);
    if len > limits.max_request_bytes {
        return Err(InvalidRequest::RequestTooLarge {
            len,
            max: limits.max_request_bytes,
        });
    }
    Ok(())
}

fn validate_command(command: &Command, limits: &Limits) -> Result<(), InvalidRequest> {
    match command {
        Command::Put(put) => validate_put(put, limits),
        Command::Delete(del) => validate_delete(del, limits),
        Command::Txn(txn) => validate_txn(txn, limits),
        Command::Batch(_) => Err(InvalidRequest::ClientBatch),
        Command::LeasedPut(p) => {
            validate_lease_id(p.lease)?;
            validate_put(&p.put, limits)
        }
        Command::LeaseGrant(g) => {
            validate_lease_id(g.id)?;
            if g.ttl_ms == 0 || g.ttl_ms > MAX_LEASE_TTL_MS {
                return Err(InvalidRequest::LeaseTtl(g.ttl_ms));
            }
            Ok(())
        }
        Command::LeaseRevoke(r) | Command::LeaseRenew(r) => validate_lease_id(r.id),
        Command::LeaseCheckpoint(_) | Command::LeaseExpire(_) => Err(InvalidRequest::LeaderOnly),
        // Any revision: out-of-range ones are answered by apply, which knows the current one.
        Command::Compact(_) => Ok(()),
        Command::PutWith(p) => validate_put_with(p, limits),
        Command::Auth(a) => validate_auth(a, limits),
        Command::AsUser(a) => {
            validate_name("user", &a.user)?;
            if matches!(*a.command, Command::AsUser(_) | Command::Batch(_)) {
                return Err(InvalidRequest::NestedUser);
            }
            validate_command(&a.command, limits)
        }
    }
}

/// Check a write another member forwarded to the leader: what a client may send, and the token
/// issues that any member proposes for its clients' `Authenticate` (never a client's request).
pub fn validate_forwarded(req: &Request, limits: &Limits) -> Result<(), InvalidRequest> {
    if let Command::Auth(AuthCommand::TokenIssue { user, .. }) = &req.command {
        return validate_name("user", user);
    }
    validate_request(req, limits)
}

/// Check a read before it is served.
pub fn validate_range(op: &RangeOp, limits: &Limits) -> Result<(), InvalidRequest> {
    validate_key_range(&op.range, limits)
}

/// Ops in a txn and all the txns nested in it, both branches counted, at most this many times
/// `max_txn_ops`: each level is bounded as a flat txn is (as etcd does), and this keeps the
/// whole tree's apply work within a small multiple of a flat txn's.
pub const NESTED_TXN_OPS_FACTOR: usize = 8;

fn validate_txn(txn: &Txn, limits: &Limits) -> Result<(), InvalidRequest> {
    let mut total = 0;
    validate_level(txn, 0, limits, &mut total).map(|_| ())
}

/// What a txn nested `depth` deep (0: the outer one) may write, in either branch, after
/// checking it and the txns nested in it.
fn validate_level<'a>(
    txn: &'a Txn,
    depth: u32,
    limits: &Limits,
    total: &mut usize,
) -> Result<Writes<'a>, InvalidRequest> {
    if depth > MAX_TXN_NESTING {
        return Err(InvalidRequest::TxnTooDeep { max: MAX_TXN_NESTING });
    }
    if txn.compares.len() > limits.max_txn_ops {
        return Err(too_many("compares", txn.compares.len(), limits));
    }
    for cmp in &txn.compares {
        validate_compare(cmp, limits)?;
    }
    let mut writes = validate_branch(&txn.success, "success ops", depth, limits, total)?;
    let or = validate_branch(&txn.failure, "failure ops", depth, limits, total)?;
    writes.puts.extend(or.puts);
    writes.deletes.extend(or.deletes);
    Ok(writes)
}

fn validate_compare(cmp: &Compare, limits: &Limits) -> Result<(), InvalidRequest> {
    validate_key(&cmp.key, limits)?;
    let target = match &cmp.target {
        CompareTarget::Range { end, target } => {
            // An end at or below the key is an empty range, which etcd accepts (it compares as
            // a missing key), so only its size is checked.
            check_len(end, limits)?;
            if matches!(**target, CompareTarget::Range { .. }) {
                return Err(InvalidRequest::NestedRangeCompare);
            }
            target
        }
        target => target,
    };
    if let CompareTarget::Value(v) = target {
        validate_value(v, limits)?;
    }
    Ok(())
}

/// What a branch (and the txns nested in it) may write.
#[derive(Default)]
struct Writes<'a> {
    puts: BTreeSet<&'a [u8]>,
    deletes: Vec<&'a KeyRange>,
}

impl Writes<'_> {
    fn deleted(&self, key: &[u8]) -> bool {
        self.deletes.iter().any(|r| r.contains(key))
    }
}

/// Two writes to one key in one revision would make that key's history ambiguous (which one is
/// "the" version at that revision?), so, like etcd, refuse them: on any path through the txn, a
/// key is put at most once and not both put and deleted. A nested txn's two branches exclude each
/// other, so a key may be written in both; each is checked against the writes of the ops around
/// it. (Two deletes of one key are fine: the second finds nothing.)
fn validate_branch<'a>(
    ops: &'a [TxnOp],
    what: &'static str,
    depth: u32,
    limits: &Limits,
    total: &mut usize,
) -> Result<Writes<'a>, InvalidRequest> {
    if ops.len() > limits.max_txn_ops {
        return Err(too_many(what, ops.len(), limits));
    }
    *total += ops.len();
    let max_total = limits.max_txn_ops.saturating_mul(NESTED_TXN_OPS_FACTOR);
    if *total > max_total {
        return Err(InvalidRequest::TooManyTxnOps {
            what: "ops in nested txns",
            len: *total,
            max: max_total,
        });
    }
    let mut writes = Writes::default();
    let mut puts = Vec::new();
    for op in ops {
        match op {
            TxnOp::Put(put) => {
                validate_put(put, limits)?;
                puts.push(put.key.as_slice());
            }
            TxnOp::LeasedPut(p) => {
                validate_lease_id(p.lease)?;
                validate_put(&p.put, limits)?;
                puts.push(p.put.key.as_slice());
            }
            TxnOp::PutWith(p) => {
                validate_put_with(p, limits)?;
                puts.push(p.put.key.as_slice());
            }
            TxnOp::Delete(del) => {
                validate_delete(del, limits)?;
                writes.deletes.push(&del.range);
            }
            TxnOp::Range(r) => validate_range(r, limits)?,
            TxnOp::Txn(_) => {}
        }
    }
    for op in ops {
        let TxnOp::Txn(nested) = op else { continue };
        // Both branches' writes are in `nested`'s, and checked against this branch's alike.
        let nested = validate_level(nested, depth + 1, limits, total)?;
        for key in &nested.puts {
            if writes.puts.contains(key) || writes.deleted(key) {
                return Err(duplicate(key));
            }
        }
        writes.puts.extend(nested.puts);
        writes.deletes.extend(nested.deletes);
    }
    for key in puts {
        if !writes.puts.insert(key) || writes.deleted(key) {
            return Err(duplicate(key));
        }
    }
    Ok(writes)
}

fn validate_put_with(p: &PutWith, limits: &Limits) -> Result<(), InvalidRequest> {
    validate_put(&p.put, limits)?;
    if p.ignore_value && !p.put.value.is_empty() {
        return Err(InvalidRequest::ValueProvided);
    }
    if p.ignore_lease && p.lease != 0 {
        return Err(InvalidRequest::LeaseProvided);
    }
    if p.lease != 0 {
        validate_lease_id(p.lease)?;
    }
    Ok(())
}

fn validate_put(put: &PutOp, limits: &Limits) -> Result<(), InvalidRequest> {
    validate_key(&put.key, limits)?;
    validate_value(&put.value, limits)
}

fn validate_delete(del: &DeleteOp, limits: &Limits) -> Result<(), InvalidRequest> {
    validate_key_range(&del.range, limits)
}

fn validate_key_range(range: &KeyRange, limits: &Limits) -> Result<(), InvalidRequest> {
    match range {
        KeyRange::Key(k) | KeyRange::From(k) => validate_key(k, limits),
        // The empty prefix is "every key", which is a legitimate request.
        KeyRange::Prefix(p) => check_len(p, limits),
        KeyRange::Between { start, end } => {
            validate_key(start, limits)?;
            check_len(end, limits)?;
            if end <= start {
                return Err(InvalidRequest::EmptyRange);
            }
            Ok(())
        }
    }
}

/// Validate a single key: non-empty and within the size limit.
pub fn validate_key(key: &[u8], limits: &Limits) -> Result<(), InvalidRequest> {
    if key.is_empty() {
        return Err(InvalidRequest::EmptyKey);
    }
    check_len(key, limits)
}

fn check_len(key: &[u8], limits: &Limits) -> Result<(), InvalidRequest> {
    if key.len() > limits.max_key_bytes {
        return Err(InvalidRequest::KeyTooLarge {
            len: key.len(),
            max: limits.max_key_bytes,
        });
    }
    Ok(())
}

fn validate_value(value: &[u8], limits: &Limits) -> Result<(), InvalidRequest> {
    if value.len() > limits.max_value_bytes {
        return Err(InvalidRequest::ValueTooLarge {
            len: value.len(),
            max: limits.max_value_bytes,
        });
    }
    Ok(())
}

fn too_many(what: &'static str, len: usize, limits: &Limits) -> InvalidRequest {
    InvalidRequest::TooManyTxnOps {
        what,
        len,
        max: limits.max_txn_ops,
    }
}

fn duplicate(key: &[u8]) -> InvalidRequest {
    InvalidRequest::DuplicateTxnKey {
        key: String::from_utf8_lossy(key).into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::CompareOp;

    fn put(key: &[u8], value: &[u8]) -> PutOp {
        PutOp {
            key: key.to_vec(),
            value: value.to_vec(),
            prev_kv: false,
        }
    }

    fn check(cmd: Command) -> Result<(), InvalidRequest> {
        validate_request(&Request::new(cmd), &Limits::default())
    }

    #[test]
    fn keys_and_values_are_bounded() {
        assert_eq!(check(Command::Put(put(b"", b"v"))), Err(InvalidRequest::EmptyKey));
        assert_eq!(
            check(Command::Put(put(&[b'k'; 4097], b"v"))),
            Err(InvalidRequest::KeyTooLarge { len: 4097, max: 4096 })
        );
        assert_eq!(check(Command::Put(put(&[b'k'; 4096], b"v"))), Ok(()));
        assert_eq!(
            check(Command::Put(put(b"k", &vec![0; 1024 * 1024 + 1]))),
            Err(InvalidRequest::ValueTooLarge {
                len: 1024 * 1024 + 1,
                max: 1024 * 1024
            })
        );
        assert_eq!(check(Command::Put(put(b"k", &vec![0; 1024 * 1024]))), Ok(()));
        assert_eq!(check(Command::Put(put(b"k", b""))), Ok(()), "an empty value is a value");
    }

    #[test]
    fn ranges_must_be_non_empty() {
        let del = |range| Command::Delete(DeleteOp { range, prev_kv: false });
        let between = |s: &[u8], e: &[u8]| KeyRange::Between {
            start: s.to_vec(),
            end: e.to_vec(),
        };
        assert_eq!(check(del(between(b"b", b"a"))), Err(InvalidRequest::EmptyRange));
        assert_eq!(check(del(between(b"a", b"a"))), Err(InvalidRequest::EmptyRange));
        assert_eq!(check(del(between(b"", b"a"))), Err(InvalidRequest::EmptyKey));
        assert_eq!(check(del(between(b"a", b"b"))), Ok(()));
        assert_eq!(check(del(KeyRange::Prefix(vec![]))), Ok(()));
        assert_eq!(check(del(KeyRange::Key(vec![]))), Err(InvalidRequest::EmptyKey));
    }

    #[test]
    fn malformed_txns_are_refused() {
        let txn = |success: Vec<TxnOp>| {
            Command::Txn(Txn {
                compares: vec![],
                success,
                failure: vec![],
            })
        };
        assert!(matches!(
            check(txn(vec![TxnOp::Put(put(b"a", b"1")), TxnOp::Put(put(b"a", b"2"))])),
            Err(InvalidRequest::DuplicateTxnKey { .. })
        ));
        let del_a = TxnOp::Delete(DeleteOp {
            range: KeyRange::Prefix(b"a".to_vec()),
            prev_kv: false,
        });
        assert!(matches!(
            check(txn(vec![TxnOp::Put(put(b"ab", b"1")), del_a.clone()])),
            Err(InvalidRequest::DuplicateTxnKey { .. })
        ));
        assert_eq!(check(txn(vec![TxnOp::Put(put(b"b", b"1")), del_a])), Ok(()));
        let many = (0..129)
            .map(|i| TxnOp::Put(put(format!("k{i}").as_bytes(), b"")))
            .collect();
        assert!(matches!(check(txn(many)), Err(InvalidRequest::TooManyTxnOps { .. })));
        let bad_compare = Command::Txn(Txn {
            compares: vec![Compare {
                key: vec![],
                op: CompareOp::Equal,
                target: CompareTarget::Version(1),
            }],
            success: vec![],
            failure: vec![],
        });
        assert_eq!(check(bad_compare), Err(InvalidRequest::EmptyKey));
    }

    #[test]
    fn session_sequence_numbers_start_at_one() {
        let with_seq = |seq| Request {
            session: Some(crate::types::SessionRef { client_id: 7, seq }),
            command: Command::Put(put(b"k", b"v")),
        };
        let limits = Limits::default();
        assert_eq!(
            validate_request(&with_seq(0), &limits),
            Err(InvalidRequest::ZeroSessionSeq)
        );
        assert_eq!(validate_request(&with_seq(1), &limits), Ok(()));
        assert_eq!(validate_request(&with_seq(u64::MAX), &limits), Ok(()));
    }

    #[test]
    fn clients_cannot_send_batches() {
        let inner = Request::new(Command::Put(put(b"k", b"v")));
        assert_eq!(check(Command::Batch(vec![inner])), Err(InvalidRequest::ClientBatch));
        assert_eq!(check(Command::Batch(vec![])), Err(InvalidRequest::ClientBatch));
    }
}
