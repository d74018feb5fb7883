//! Leases: keys that live only as long as their holder keeps asking.
//!
//! ## What is replicated, and what is not
//! A lease is a record in the state machine (`codec::StoredLease`: its TTL, the time it had left
//! as of the last entry that touched it, and an epoch), plus two indexes: the keys attached to
//! each lease, and the lease of each key. Every change to them is a log entry (grant, revoke,
//! renew, checkpoint, expire, put with a lease), so every member applies it at the same place in
//! the log and, for a revoke or an expiry, deletes the lease's keys at the same revision.
//!
//! Time is not replicated. Each member turns the `remaining_ms` of the entry it applies into a
//! local deadline, "now + remaining" on its own monotonic clock, through the [`crate::Observer`]
//! (`lease_set`, `lease_gone`); at start and after a snapshot install it reads every lease again
//! (`leases_reloaded`) and starts each at "now + remaining". Only the leader acts on deadlines:
//! when one passes it proposes [`crate::Command::LeaseExpire`] with the epoch it saw.
//!
//! ## Why that is exact
//! - **Never early.** A keep-alive is acknowledged only once its renewal is applied on the
//!   leader, which was after the client sent it. Every member applies that renewal after it was
//!   proposed, so each member's deadline is at least "the client's send time + TTL". A leader that
//!   decides an expiry on a stale table (it has not applied a renewal yet) names an old epoch,
//!   and the expiry is ignored where it is applied: after the renewal, in log order. A checkpoint
//!   names the epochs it was computed at in the same way, and a point older than the lease is
//!   skipped: otherwise a checkpoint computed just before a renewal was applied would give the
//!   renewed lease its old time left back (the chaos runs' lease holders caught that).
//! - **Not extended by leader changes.** A new leader's deadlines come from the entries it
//!   applied as a follower, not from the moment it was elected: a lease whose holder died expires
//!   at its old deadline (plus the new leader's replication lag), or as soon as the new leader
//!   leads, whichever is later.
//! - **Bounded across restarts.** A restarted member starts every lease at "now + remaining as
//!   of the last entry"; the leader's periodic checkpoints keep that close to the truth.
//!
//! ## Rules (etcd's, where etcd has one)
//! - A put with a lease attaches the key to it; a put without one detaches it; a delete detaches.
//! - A put naming a lease that does not exist is refused (`LeaseNotFound`), and so is a txn with
//!   such a put in either branch; nothing is applied.
//! - Revoke and expiry delete every attached key in one revision (none if it has no keys).
//! - A grant, renewal or checkpoint changes no key and takes no revision.

use std::collections::BTreeSet;

use super::apply::{Apply, LeaseEvent};
use super::mvcc::MvccError;
use crate::codec::{self, StoredLease};
use crate::types::{
    CommandResult, DeleteOp, KeyRange, LeaseCheckpoint, LeaseExpire, LeaseGrant, LeaseId, LeaseResult, Txn, TxnOp,
};

impl Apply<'_> {
    /// The lease record of `id`, as this entry left it so far.
    pub(super) fn lease(&self, id: LeaseId) -> Result<Option<StoredLease>, MvccError> {
        if let Some(state) = self.leases.get(&id) {
            return Ok(*state);
        }
        match self.tree.get(codec::lease_key(id)).map_err(MvccError::Sled)? {
            Some(bytes) => Ok(Some(codec::decode(&bytes)?)),
            None => Ok(None),
        }
    }

    fn set_lease(&mut self, id: LeaseId, lease: Option<StoredLease>) {
        self.set_lease_owned(id, lease, None);
    }

    /// [`Self::set_lease`], recording `owner` as the lease's owner (a grant only). A lease that
    /// goes loses its owner record.
    fn set_lease_owned(&mut self, id: LeaseId, lease: Option<StoredLease>, owner: Option<&str>) {
        match lease {
            Some(l) => self.batch.insert(&codec::lease_key(id), codec::encode(&l)),
            None => {
                self.batch.remove(&codec::lease_key(id));
                self.batch.remove(&codec::lease_owner_key(id));
            }
        }
        if let Some(user) = owner {
            self.batch.insert(&codec::lease_owner_key(id), user.as_bytes());
        }
        self.leases.insert(id, lease);
        self.lease_events.push(LeaseEvent {
            id,
            remaining_ms: lease.map(|l| l.remaining_ms),
            epoch: lease.map_or(0, |l| l.epoch),
            owner: owner.map(str::to_string),
        });
    }

    /// The lease `key` is attached to (0: none), as this entry left it so far.
    pub(super) fn key_lease(&self, key: &[u8]) -> Result<LeaseId, MvccError> {
        if let Some(&id) = self.key_leases.get(key) {
            return Ok(id);
        }
        Ok(key_lease_in(self.tree, key)?.unwrap_or(0))
    }

    /// Attach `key` to lease `id` (0: to none). Called for every put and every deleted key.
    pub(super) fn attach(&mut self, key: &[u8], id: LeaseId) -> Result<(), MvccError> {
        if id == 0 && !self.leased_keys {
            return Ok(());
        }
        self.leased_keys = true;
        let old = self.key_lease(key)?;
        if old == id {
            return Ok(());
        }
        if old != 0 {
            self.batch.remove(codec::lease_key_entry(old, key));
        }
        if id == 0 {
            self.batch.remove(codec::key_lease_key(key));
        } else {
            self.batch.insert(codec::lease_key_entry(id, key), &[]);
            self.batch.insert(codec::key_lease_key(key), &id.to_be_bytes());
        }
        self.key_leases.insert(key.to_vec(), id);
        Ok(())
    }

    /// The keys attached to lease `id`, as this entry left them so far.
    pub(super) fn lease_keys(&self, id: LeaseId) -> Result<BTreeSet<Vec<u8>>, MvccError> {
        let prefix = codec::lease_key_prefix(id);
        let mut candidates = BTreeSet::new();
        for item in self.tree.scan_prefix(prefix) {
            let (k, _) = item.map_err(MvccError::Sled)?;
            candidates.insert(k[prefix.len()..].to_vec());
        }
        candidates.extend(self.key_leases.iter().filter(|(_, &l)| l == id).map(|(k, _)| k.clone()));
        let mut keys = BTreeSet::new();
        for key in candidates {
            if self.key_lease(&key)? == id {
                keys.insert(key);
            }
        }
        Ok(keys)
    }

    /// The first lease a txn's puts name that does not exist, in either branch, nested txns'
    /// included.
    pub(super) fn missing_txn_lease(&self, txn: &Txn) -> Result<Option<LeaseId>, MvccError> {
        for op in txn.success.iter().chain(&txn.failure) {
            let lease = match op {
                // Checked even for 0, as it always was: old entries must apply as they did.
                TxnOp::LeasedPut(p) if self.lease(p.lease)?.is_none() => return Ok(Some(p.lease)),
                TxnOp::PutWith(p) if !p.ignore_lease => p.lease,
                TxnOp::Txn(nested) => match self.missing_txn_lease(nested)? {
                    Some(id) => return Ok(Some(id)),
                    None => continue,
                },
                _ => continue,
            };
            if lease != 0 && self.lease(lease)?.is_none() {
                return Ok(Some(lease));
            }
        }
        Ok(None)
    }

    pub(super) fn lease_grant(&mut self, g: &LeaseGrant, owner: Option<&str>) -> Result<CommandResult, MvccError> {
        if self.lease(g.id)?.is_some() {
            return Ok(CommandResult::LeaseExists { id: g.id });
        }
        let lease = StoredLease {
            ttl_ms: g.ttl_ms,
            remaining_ms: g.ttl_ms,
            epoch: 0,
            granted_revision: self.revision(),
        };
        self.set_lease_owned(g.id, Some(lease), owner);
        Ok(CommandResult::Lease(LeaseResult::Granted {
            id: g.id,
            ttl_ms: g.ttl_ms,
        }))
    }

    /// Revoke `id`: delete its keys in this command's revision and forget it.
    pub(super) fn lease_revoke(&mut self, id: LeaseId) -> Result<CommandResult, MvccError> {
        if self.lease(id)?.is_none() {
            return Ok(CommandResult::LeaseNotFound { id });
        }
        let mut deleted = 0;
        for key in self.lease_keys(id)? {
            let del = DeleteOp {
                range: KeyRange::Key(key),
                prev_kv: false,
            };
            // Detaches the key too.
            deleted += self.delete(&del)?.deleted;
        }
        self.set_lease(id, None);
        Ok(CommandResult::Lease(LeaseResult::Revoked { id, deleted }))
    }

    pub(super) fn lease_renew(&mut self, id: LeaseId) -> Result<CommandResult, MvccError> {
        let Some(mut lease) = self.lease(id)? else {
            return Ok(CommandResult::LeaseNotFound { id });
        };
        lease.remaining_ms = lease.ttl_ms;
        lease.epoch += 1;
        self.set_lease(id, Some(lease));
        Ok(CommandResult::Lease(LeaseResult::Renewed {
            id,
            ttl_ms: lease.ttl_ms,
        }))
    }

    pub(super) fn lease_checkpoint(&mut self, points: &[LeaseCheckpoint]) -> Result<CommandResult, MvccError> {
        for p in points {
            // A point computed before a renewal (or another checkpoint) was applied would give
            // the lease back its old time left: skipped, as a stale expiry is.
            if let Some(mut lease) = self.lease(p.id)?.filter(|l| l.epoch == p.epoch) {
                lease.remaining_ms = p.remaining_ms.min(lease.ttl_ms);
                lease.epoch += 1;
                self.set_lease(p.id, Some(lease));
            }
        }
        Ok(CommandResult::Lease(LeaseResult::Checkpointed))
    }

    pub(super) fn lease_expire(&mut self, e: &LeaseExpire) -> Result<CommandResult, MvccError> {
        match self.lease(e.id)? {
            Some(lease) if lease.epoch == e.epoch => self.lease_revoke(e.id),
            _ => Ok(CommandResult::Lease(LeaseResult::NotExpired { id: e.id })),
        }
    }
}

/// The lease `key` is attached to in `tree`, if any.
pub(super) fn key_lease_in(tree: &sled::Tree, key: &[u8]) -> Result<Option<LeaseId>, MvccError> {
    match tree.get(codec::key_lease_key(key)).map_err(MvccError::Sled)? {
        Some(bytes) => {
            let id: [u8; 8] = bytes
                .as_ref()
                .try_into()
                .map_err(|_| codec::DecodeError::Malformed("bad key lease record".into()))?;
            Ok(Some(u64::from_be_bytes(id)))
        }
        None => Ok(None),
    }
}

/// Whether any key in `tree` is attached to a lease.
pub(super) fn any_leased_key(tree: &sled::Tree) -> Result<bool, MvccError> {
    Ok(tree
        .scan_prefix([codec::KEY_LEASE_PREFIX])
        .keys()
        .next()
        .transpose()
        .map_err(MvccError::Sled)?
        .is_some())
}

/// A lease as a reader sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseInfo {
    pub id: LeaseId,
    pub lease: StoredLease,
    /// The user who granted it, if an authenticated user did.
    pub owner: Option<String>,
}

/// The owner of lease `id` in `tree`, if it has one.
fn owner_in(tree: &sled::Tree, id: LeaseId) -> Result<Option<String>, MvccError> {
    match tree.get(codec::lease_owner_key(id)).map_err(MvccError::Sled)? {
        Some(bytes) => Ok(Some(decode_owner(&bytes)?)),
        None => Ok(None),
    }
}

fn decode_owner(bytes: &[u8]) -> Result<String, MvccError> {
    match std::str::from_utf8(bytes) {
        Ok(o) if !o.is_empty() => Ok(o.to_string()),
        _ => Err(codec::DecodeError::Malformed("bad lease owner record".into()).into()),
    }
}

/// Every lease in `tree`, by id.
pub(super) fn all(tree: &sled::Tree) -> Result<Vec<LeaseInfo>, MvccError> {
    let mut owners = std::collections::HashMap::new();
    for item in tree.scan_prefix([codec::LEASE_OWNER_PREFIX]) {
        let (k, v) = item.map_err(MvccError::Sled)?;
        owners.insert(codec::split_lease_owner_key(&k)?, decode_owner(&v)?);
    }
    let mut out = Vec::new();
    for item in tree.scan_prefix([codec::LEASE_PREFIX]) {
        let (k, v) = item.map_err(MvccError::Sled)?;
        let id = codec::split_lease_key(&k)?;
        out.push(LeaseInfo {
            id,
            lease: codec::decode(&v)?,
            owner: owners.remove(&id),
        });
    }
    Ok(out)
}

/// A lease and the keys attached to it, in key order.
pub type LeaseWithKeys = (LeaseInfo, Vec<Vec<u8>>);

/// Lease `id` and its keys, if it exists.
pub(super) fn one(tree: &sled::Tree, id: LeaseId) -> Result<Option<LeaseWithKeys>, MvccError> {
    let Some(bytes) = tree.get(codec::lease_key(id)).map_err(MvccError::Sled)? else {
        return Ok(None);
    };
    let prefix = codec::lease_key_prefix(id);
    let mut keys = Vec::new();
    for item in tree.scan_prefix(prefix) {
        let (k, _) = item.map_err(MvccError::Sled)?;
        keys.push(k[prefix.len()..].to_vec());
    }
    let info = LeaseInfo {
        id,
        lease: codec::decode(&bytes)?,
        owner: owner_in(tree, id)?,
    };
    Ok(Some((info, keys)))
}

/// Every lease and every key's lease, read at once between applies: what a snapshot build
/// writes. Leases are not multi-versioned, so the build takes them in memory at its start rather
/// than reading them while applies go on.
#[derive(Debug, Clone, Default)]
pub(super) struct Captured {
    pub leases: Vec<keel_datadir::SnapshotLease>,
    pub keys: Vec<(LeaseId, Vec<u8>)>,
}

pub(super) fn capture(tree: &sled::Tree) -> Result<Captured, MvccError> {
    let leases = all(tree)?
        .into_iter()
        .map(|l| keel_datadir::SnapshotLease {
            id: l.id,
            ttl_ms: l.lease.ttl_ms,
            remaining_ms: l.lease.remaining_ms,
            epoch: l.lease.epoch,
            granted_revision: l.lease.granted_revision,
            owner: l.owner,
        })
        .collect();
    let mut keys = Vec::new();
    for item in tree.scan_prefix([codec::LEASE_KEY_PREFIX]) {
        let (k, _) = item.map_err(MvccError::Sled)?;
        if k.len() <= 9 {
            return Err(codec::DecodeError::Malformed("bad lease key entry".into()).into());
        }
        let id = u64::from_be_bytes(k[1..9].try_into().expect("8 bytes"));
        keys.push((id, k[9..].to_vec()));
    }
    Ok(Captured { leases, keys })
}

/// Add a lease from a snapshot to an install batch.
pub(super) fn restore_lease(batch: &mut sled::Batch, l: &keel_datadir::SnapshotLease) {
    let lease = StoredLease {
        ttl_ms: l.ttl_ms,
        remaining_ms: l.remaining_ms,
        epoch: l.epoch,
        granted_revision: l.granted_revision,
    };
    batch.insert(&codec::lease_key(l.id), codec::encode(&lease));
    if let Some(owner) = &l.owner {
        batch.insert(&codec::lease_owner_key(l.id), owner.as_bytes());
    }
}

/// Add a key's lease from a snapshot to an install batch.
pub(super) fn restore_lease_key(batch: &mut sled::Batch, lease: LeaseId, key: &[u8]) {
    batch.insert(codec::lease_key_entry(lease, key), &[]);
    batch.insert(codec::key_lease_key(key), &lease.to_be_bytes());
}
