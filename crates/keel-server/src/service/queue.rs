//! Queues of keys under a name: the recipe behind locks and elections (etcd's, served here so
//! that any gRPC client can use it).
//!
//! Each participant puts the key `NAME/LEASE_HEX`, attached to its lease, unless it exists; the
//! key's create revision is its place in the queue, and the participant whose key has the lowest
//! create revision holds the lock (or leads). A participant waits for the key just before its
//! own to go, then looks again, until none is before it. Keys go when their holder deletes them
//! (unlock, resign) or when their lease ends, so a participant that dies leaves the queue within
//! its lease's TTL.
//!
//! Why waiting on a member's applied state is right, even on a follower that lags: the state at
//! any applied revision `R` is committed. If at `R` (at or after the participant's own key) no
//! key before it exists, none ever will again (create revisions only grow), so the participant
//! holds from `R` on, for as long as its key lives. A lagging member only decides later.
//!
//! The holder's key's create revision is its fencing token: a write guarded by
//! `create_revision(KEY) == TOKEN` in a txn applies only while the holder's key lives.

use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_storage::{
    Command, CommandResult, Compare, CompareOp, CompareTarget, DeleteOp, KeyRange, KeyValue, LeasedPut, OpResult,
    PutOp, RangeOp, Request, Txn, TxnOp, TxnResult,
};
use tonic::metadata::MetadataMap;

use super::kv::read_failed;
use crate::error::NodeError;
use crate::node::Node;

/// How long one write of the recipe may take, when the caller gave no deadline.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// The queue key of `lease` under `name`: `NAME/LEASE_HEX`, as etcd spells it.
pub fn key_of(name: &[u8], lease: i64) -> Vec<u8> {
    let mut key = prefix_of(name);
    key.extend_from_slice(format!("{lease:x}").as_bytes());
    key
}

/// Every key of the queue `name` starts with this.
pub fn prefix_of(name: &[u8]) -> Vec<u8> {
    let mut prefix = name.to_vec();
    prefix.push(b'/');
    prefix
}

/// Check a name and a lease id as a request carries them.
pub fn check(name: &[u8], lease: i64) -> Result<(), NodeError> {
    if name.is_empty() {
        return Err(NodeError::InvalidArgument("the name is empty".into()));
    }
    if lease <= 0 {
        return Err(NodeError::InvalidArgument(format!(
            "lease id {lease} is out of range (1 to {}): grant a lease first",
            i64::MAX
        )));
    }
    Ok(())
}

/// The caller's deadline, if it sent one: waiting for a lock may take as long as the caller
/// wants, so the default deadline of other requests does not apply.
pub fn wait_deadline(metadata: &MetadataMap) -> Option<Instant> {
    metadata.get("grpc-timeout").map(|_| super::deadline(metadata))
}

/// The deadline of one write within a wait that may have none.
fn write_deadline(deadline: Option<Instant>) -> Instant {
    let default = Instant::now() + WRITE_TIMEOUT;
    deadline.map_or(default, |d| d.min(default))
}

async fn txn(node: &Node, txn: Txn, deadline: Option<Instant>) -> Result<(TxnResult, u64), NodeError> {
    let request = Request::new(Command::Txn(txn));
    keel_storage::validate_request(&request, &node.limits)?;
    let resp = node.write(request, write_deadline(deadline)).await?;
    match resp.result {
        CommandResult::Txn(t) => Ok((t, resp.revision)),
        CommandResult::LeaseNotFound { id } => Err(NodeError::NotFound(format!("lease {id:x} not found"))),
        CommandResult::AuthRefused(e) => Err(NodeError::Auth(e)),
        other => Err(NodeError::Internal(format!(
            "state machine returned {other:?} for a txn"
        ))),
    }
}

fn created_at(key: &[u8], rev: u64) -> Compare {
    Compare {
        key: key.to_vec(),
        op: CompareOp::Equal,
        target: CompareTarget::CreateRevision(rev),
    }
}

fn leased_put(key: &[u8], value: &[u8], lease: i64) -> TxnOp {
    TxnOp::LeasedPut(LeasedPut {
        lease: lease as u64,
        put: PutOp {
            key: key.to_vec(),
            value: value.to_vec(),
            prev_kv: false,
        },
    })
}

/// A participant's place: its key, and the key's create revision.
#[derive(Debug, Clone)]
pub struct Place {
    pub key: Vec<u8>,
    pub rev: u64,
    /// This call put the key (it was not there already).
    pub created: bool,
    /// The key's value as it stands.
    pub value: Vec<u8>,
}

/// Put `key` = `value` attached to `lease` unless it exists (then read it): one txn, so joining
/// again with the same lease finds the same place.
pub async fn join(
    node: &Node,
    key: &[u8],
    value: &[u8],
    lease: i64,
    deadline: Option<Instant>,
) -> Result<Place, NodeError> {
    let (result, revision) = txn(
        node,
        Txn {
            compares: vec![created_at(key, 0)],
            success: vec![leased_put(key, value, lease)],
            failure: vec![TxnOp::Range(RangeOp::new(KeyRange::Key(key.to_vec())))],
        },
        deadline,
    )
    .await?;
    if result.succeeded {
        return Ok(Place {
            key: key.to_vec(),
            rev: revision,
            created: true,
            value: value.to_vec(),
        });
    }
    match result.responses.into_iter().next() {
        Some(OpResult::Range(r)) => match r.kvs.into_iter().next() {
            Some(kv) => Ok(Place {
                key: key.to_vec(),
                rev: kv.create_revision,
                created: false,
                value: kv.value,
            }),
            // Deleted between the compare and the read cannot happen in one txn.
            None => Err(NodeError::Internal("the queue key vanished inside one txn".into())),
        },
        other => Err(NodeError::Internal(format!("unexpected txn result {other:?}"))),
    }
}

/// Put `value` into `key` if it is still the key created at `rev`; false if it is not.
pub async fn update(
    node: &Node,
    key: &[u8],
    rev: u64,
    value: &[u8],
    lease: i64,
    deadline: Option<Instant>,
) -> Result<(bool, u64), NodeError> {
    let (result, revision) = txn(
        node,
        Txn {
            compares: vec![created_at(key, rev)],
            success: vec![leased_put(key, value, lease)],
            failure: vec![],
        },
        deadline,
    )
    .await?;
    Ok((result.succeeded, revision))
}

/// Delete `key` if it is still the key created at `rev` (0: whatever it is).
pub async fn leave(node: &Node, key: &[u8], rev: u64, deadline: Option<Instant>) -> Result<u64, NodeError> {
    let delete = TxnOp::Delete(DeleteOp {
        range: KeyRange::Key(key.to_vec()),
        prev_kv: false,
    });
    let compares = if rev == 0 { vec![] } else { vec![created_at(key, rev)] };
    let (_, revision) = txn(
        node,
        Txn {
            compares,
            success: vec![delete],
            failure: vec![],
        },
        deadline,
    )
    .await?;
    Ok(revision)
}

/// Every key of queue `name` (keys only), in create order, and the revision read at.
pub fn members(node: &Node, name: &[u8]) -> Result<(Vec<KeyValue>, u64), NodeError> {
    let op = RangeOp {
        keys_only: true,
        ..RangeOp::new(KeyRange::Prefix(prefix_of(name)))
    };
    let (result, revision) = node.reader.range(&op).map_err(|e| read_failed(node, e))?;
    let mut kvs = result.kvs;
    kvs.sort_by_key(|kv| kv.create_revision);
    Ok((kvs, revision))
}

/// The first key of queue `name` with its value (the holder, the leader), and the revision.
pub fn first(node: &Node, name: &[u8]) -> Result<(Option<KeyValue>, u64), NodeError> {
    let (kvs, revision) = members(node, name)?;
    let Some(first) = kvs.into_iter().next() else {
        return Ok((None, revision));
    };
    let (kv, revision) = node.reader.get(&first.key).map_err(|e| read_failed(node, e))?;
    Ok((kv, revision))
}

fn get(node: &Node, key: &[u8]) -> Result<Option<KeyValue>, NodeError> {
    node.reader.get(key).map(|(kv, _)| kv).map_err(|e| read_failed(node, e))
}

/// Wait until `place` is first in queue `name`; returns the revision at which it is. Fails if
/// the place's key goes meanwhile (its lease ended, or someone deleted it), if the deadline
/// passes, or if the node stops.
pub async fn wait_turn(
    node: &Arc<Node>,
    name: &[u8],
    place: &Place,
    deadline: Option<Instant>,
) -> Result<u64, NodeError> {
    let mut revisions = node.reader.revisions();
    // This member must have applied the place's key before it can judge what is before it.
    advance(node, &mut revisions, place.rev, deadline).await?;
    loop {
        let (kvs, at) = members(node, name)?;
        if !kvs
            .iter()
            .any(|kv| kv.key == place.key && kv.create_revision == place.rev)
        {
            return Err(NodeError::FailedPrecondition(format!(
                "the key {} was deleted while waiting (its lease ended, or it was unlocked)",
                String::from_utf8_lossy(&place.key)
            )));
        }
        let Some(before) = kvs.iter().rev().find(|kv| kv.create_revision < place.rev) else {
            return Ok(at);
        };
        // Wait for the key just before this one to go, watching this one too; then look at the
        // whole queue again (there may be another before it).
        let (key, rev) = (before.key.clone(), before.create_revision);
        let mut next = at + 1;
        loop {
            advance(node, &mut revisions, next, deadline).await?;
            next = node.reader.revision() + 1;
            let gone = |k: &[u8], r: u64| get(node, k).map(|kv| kv.is_none_or(|kv| kv.create_revision != r));
            if gone(&key, rev)? || gone(&place.key, place.rev)? {
                break;
            }
        }
    }
}

/// Wait until this member has applied revision `next`.
async fn advance(
    node: &Node,
    revisions: &mut tokio::sync::watch::Receiver<u64>,
    next: u64,
    deadline: Option<Instant>,
) -> Result<(), NodeError> {
    let stopping = || NodeError::Unavailable(format!("member {} is stopping", node.id));
    let expired = async {
        match deadline {
            Some(d) => tokio::time::sleep_until(d.into()).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        moved = revisions.wait_for(|r| *r >= next) => moved.map(|_| ()).map_err(|_| stopping()),
        _ = node.stopping.cancelled() => Err(stopping()),
        _ = expired => Err(NodeError::DeadlineExceeded(
            "the deadline passed while waiting for the lock (or leadership); the wait is abandoned".into(),
        )),
    }
}

/// Deletes a participant's key if the call that put it ends before its turn came (the client
/// went away, the deadline passed): a waiter nobody waits for would hold up the queue until its
/// lease ended.
pub struct LeaveOnDrop {
    node: Arc<Node>,
    place: Option<Place>,
}

impl LeaveOnDrop {
    pub fn new(node: &Arc<Node>, place: &Place) -> Self {
        LeaveOnDrop {
            node: node.clone(),
            place: place.created.then(|| place.clone()),
        }
    }

    /// The turn came: keep the key.
    pub fn keep(mut self) {
        self.place = None;
    }
}

impl Drop for LeaveOnDrop {
    fn drop(&mut self) {
        let Some(place) = self.place.take() else {
            return;
        };
        let node = self.node.clone();
        // Dropped while serving a request: the delete is that request's caller's.
        self.node.spawn(crate::auth::Caller::current().scope(async move {
            if let Err(e) = leave(&node, &place.key, place.rev, None).await {
                tracing::debug!(error = %e, "could not delete an abandoned queue key; its lease will");
            }
        }));
    }
}
