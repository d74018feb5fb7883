//! Executing commands against the state machine: the deterministic heart of keel.
//!
//! An [`Apply`] covers one log entry. Each command in it (one, or several for a batch entry) runs
//! against the tree as of the last applied entry plus the entry's earlier commands, and takes its
//! own revision if it changes anything. Every change goes into one write set (new versions, and
//! one history record listing the entry's revisions and their changes, keyed by the last), and the
//! caller adds the metadata (applied log id, revision, client sessions) to the same set before
//! writing it atomically (see `writes`). One record per entry rather than per revision halves
//! the sled writes of a batch entry, and compaction's reads and deletes with it. Either all of
//! an entry's effects and its applied log id become visible, or none do.
//!
//! The entry's own writes are visible to its later reads through `overlay`: within a txn, and
//! from one command of a batch to the next. Validation guarantees that no key is written twice in
//! one command, so every key has at most one version at each revision.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::changes::Change;
use super::mvcc::{self, LiveIter, MvccError};
use crate::codec::{self, StoredLease, StoredVersion};
use crate::types::{
    Command, CommandResult, DeleteOp, DeleteResult, KeyRange, KeyValue, LeaseId, PutOp, PutResult, RangeOp, RangeResult,
};

/// One change in the history record of a revision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEvent {
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    pub deleted: bool,
    /// Revision of the version this change superseded (live or tombstone); 0 if none.
    pub prev_revision: u64,
}

/// The changes of one revision, as a history record lists them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevisionEvents {
    pub revision: u64,
    pub events: Vec<HistoryEvent>,
}

/// Encode the history record of an entry.
pub fn encode_history(revisions: &[RevisionEvents]) -> Vec<u8> {
    codec::encode_as(codec::HISTORY_MULTI, &revisions)
}

/// Decode a history record stored under `history_key(key_revision)`: a record of this release
/// (several revisions), or of an earlier one (the changes of `key_revision` alone).
pub fn decode_history(key_revision: u64, bytes: &[u8]) -> Result<Vec<RevisionEvents>, codec::DecodeError> {
    match bytes.split_first() {
        Some((&codec::HISTORY_MULTI, _)) => codec::decode_as(codec::HISTORY_MULTI, bytes),
        _ => Ok(vec![RevisionEvents {
            revision: key_revision,
            events: codec::decode(bytes)?,
        }]),
    }
}

/// A key as this entry left it so far: the revision of its newest version (live or tombstone),
/// and its value (`None`: deleted).
#[derive(Debug, Clone)]
struct KeyState {
    revision: u64,
    kv: Option<KeyValue>,
}

/// A lease's remaining time as an applied entry set it (`None`: the lease is gone), for the
/// members' deadlines (see `sm::leases`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseEvent {
    pub id: LeaseId,
    pub remaining_ms: Option<u64>,
    /// The lease's epoch after the entry (an expiry must name it).
    pub epoch: u64,
    /// For a grant by an authenticated user: that user (for the per-user lease limit). Other
    /// events leave the owner as it was.
    pub owner: Option<String>,
}

/// The pending effects of one log entry.
pub struct Apply<'a> {
    pub(super) tree: &'a sled::Tree,
    /// The store revision after the commands executed so far.
    revision: u64,
    /// The revision the running command writes at, if it changes anything: `revision + 1`.
    write_revision: u64,
    pub batch: super::writes::WriteSet,
    overlay: BTreeMap<Vec<u8>, KeyState>,
    /// The running command's changes.
    events: Vec<HistoryEvent>,
    /// The changes of the entry's earlier commands, by revision.
    history: Vec<RevisionEvents>,
    /// The same changes in full (each key's new version and the one it superseded), in revision
    /// order, for the in-memory window of recent changes (`recent.rs`).
    changes: Vec<Change>,
    /// Change in the number of live keys.
    pub key_delta: i64,
    /// Lease records this entry changed (`None`: revoked).
    pub(super) leases: BTreeMap<LeaseId, Option<StoredLease>>,
    /// Keys whose lease this entry changed (0: none).
    pub(super) key_leases: BTreeMap<Vec<u8>, LeaseId>,
    /// What to tell the observer once the entry is applied.
    pub lease_events: Vec<LeaseEvent>,
    /// Some key may be attached to a lease. While none can be, a put or delete skips the lookup
    /// of the key's lease (see `sm::leases`), so the write path pays nothing for leases unused.
    pub leased_keys: bool,
    /// The history floor (see `sm`, "The history floor"), as this entry left it so far.
    pub floor: u64,
}

impl<'a> Apply<'a> {
    /// Prepare an entry on top of `current_revision`; `leased_keys`: see the field.
    pub fn new(tree: &'a sled::Tree, current_revision: u64, leased_keys: bool, floor: u64) -> Self {
        Apply {
            tree,
            revision: current_revision,
            write_revision: current_revision + 1,
            batch: super::writes::WriteSet::default(),
            overlay: BTreeMap::new(),
            events: Vec::new(),
            history: Vec::new(),
            changes: Vec::new(),
            key_delta: 0,
            leases: BTreeMap::new(),
            key_leases: BTreeMap::new(),
            lease_events: Vec::new(),
            leased_keys,
            floor,
        }
    }

    /// The store revision after the commands executed so far.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// Run `cmd` (not a batch: the caller walks those) as `user` (the authenticated user, if
    /// any: a lease it grants is recorded as theirs) and add its effects to the entry's batch;
    /// if it changed anything, it took a new revision. Call [`Apply::finish`] after the last.
    pub fn execute(&mut self, cmd: &Command, user: Option<&str>) -> Result<CommandResult, MvccError> {
        self.write_revision = self.revision + 1;
        self.events.clear();
        let result = match cmd {
            Command::Put(put) => CommandResult::Put(self.put(put, 0)?),
            Command::Delete(del) => CommandResult::Delete(self.delete(del)?),
            Command::Txn(txn) => self.txn(txn)?,
            Command::LeasedPut(p) => match self.lease(p.lease)? {
                Some(_) => CommandResult::Put(self.put(&p.put, p.lease)?),
                None => CommandResult::LeaseNotFound { id: p.lease },
            },
            Command::LeaseGrant(g) => self.lease_grant(g, user)?,
            Command::LeaseRevoke(r) => self.lease_revoke(r.id)?,
            Command::LeaseRenew(r) => self.lease_renew(r.id)?,
            Command::LeaseCheckpoint(points) => self.lease_checkpoint(points)?,
            Command::LeaseExpire(e) => self.lease_expire(e)?,
            Command::Compact(rev) => self.compact(*rev),
            Command::PutWith(p) => self.put_with_command(p)?,
            Command::Batch(_) | Command::Auth(_) | Command::AsUser(_) => {
                return Err(MvccError::Decode(codec::DecodeError::Malformed(format!(
                    "a {} reached Apply::execute; the caller runs those",
                    cmd.kind()
                ))))
            }
        };
        if !self.events.is_empty() {
            let events = std::mem::take(&mut self.events);
            self.history.push(RevisionEvents {
                revision: self.write_revision,
                events,
            });
            self.revision = self.write_revision;
        }
        Ok(result)
    }

    /// Raise the history floor: a replicated decision, so it is checked against the replicated
    /// floor and never against this member's own compaction point (which `history_revisions`
    /// and snapshot pins move differently on each member).
    fn compact(&mut self, rev: u64) -> CommandResult {
        if rev <= self.floor {
            return CommandResult::Compacted { compacted: self.floor };
        }
        if rev > self.revision {
            return CommandResult::FutureRevision { current: self.revision };
        }
        self.floor = rev;
        self.batch.insert(super::FLOOR_KEY, codec::encode(&rev));
        CommandResult::None
    }

    /// The full changes of the entry's revisions, in revision order, for `recent.rs`.
    pub(super) fn take_changes(&mut self) -> Vec<Change> {
        std::mem::take(&mut self.changes)
    }

    /// Add the entry's history record, if it changed anything, to the batch.
    pub fn finish(&mut self) {
        if !self.history.is_empty() {
            let record = encode_history(&self.history);
            self.batch.insert(&codec::history_key(self.revision), record);
        }
    }

    pub(super) fn get(&self, key: &[u8]) -> Result<Option<KeyValue>, MvccError> {
        match self.overlay.get(key) {
            Some(state) => Ok(state.kv.clone()),
            None => mvcc::get(self.tree, key, u64::MAX),
        }
    }

    /// Put, attaching the key to `lease` (0: to none).
    pub(super) fn put(&mut self, op: &PutOp, lease: LeaseId) -> Result<PutResult, MvccError> {
        let (prev_revision, prev_kv) = match self.overlay.get(&op.key) {
            Some(state) => (state.revision, state.kv.clone()),
            None => {
                let prev = mvcc::latest(self.tree, &op.key, u64::MAX)?;
                let prev_revision = prev.as_ref().map_or(0, |(rev, _)| *rev);
                (prev_revision, prev.and_then(|(rev, v)| v.into_kv(op.key.clone(), rev)))
            }
        };
        let (create_revision, version) = match &prev_kv {
            Some(kv) => (kv.create_revision, kv.version + 1),
            None => {
                self.key_delta += 1;
                (self.write_revision, 1)
            }
        };
        let stored = StoredVersion::Live {
            create_revision,
            version,
            value: op.value.clone(),
        };
        self.batch
            .insert(codec::version_key(&op.key, self.write_revision), stored.encode());
        let kv = KeyValue {
            key: op.key.clone(),
            value: op.value.clone(),
            create_revision,
            mod_revision: self.write_revision,
            version,
        };
        let state = KeyState {
            revision: self.write_revision,
            kv: Some(kv.clone()),
        };
        self.overlay.insert(op.key.clone(), state);
        self.events.push(HistoryEvent {
            key: op.key.clone(),
            deleted: false,
            prev_revision,
        });
        let answer = if op.prev_kv { prev_kv.clone() } else { None };
        self.changes.push(Change {
            revision: self.write_revision,
            deleted: false,
            kv,
            prev_kv,
        });
        self.attach(&op.key, lease)?;
        Ok(PutResult { prev_kv: answer })
    }

    pub(super) fn delete(&mut self, op: &DeleteOp) -> Result<DeleteResult, MvccError> {
        let victims = self.read(&RangeOp::new(op.range.clone()))?.kvs;
        for kv in &victims {
            self.batch.insert(
                codec::version_key(&kv.key, self.write_revision),
                StoredVersion::Tombstone.encode(),
            );
            let state = KeyState {
                revision: self.write_revision,
                kv: None,
            };
            self.overlay.insert(kv.key.clone(), state);
            self.events.push(HistoryEvent {
                key: kv.key.clone(),
                deleted: true,
                prev_revision: kv.mod_revision,
            });
            self.changes.push(Change {
                revision: self.write_revision,
                deleted: true,
                kv: KeyValue {
                    key: kv.key.clone(),
                    mod_revision: self.write_revision,
                    ..KeyValue::default()
                },
                prev_kv: Some(kv.clone()),
            });
            self.key_delta -= 1;
            self.attach(&kv.key, 0)?;
        }
        Ok(DeleteResult {
            deleted: victims.len() as u64,
            prev_kvs: if op.prev_kv { victims } else { Vec::new() },
        })
    }

    /// A range read that sees this command's own earlier writes.
    pub(super) fn read(&self, op: &RangeOp) -> Result<RangeResult, MvccError> {
        mvcc::collect_range(self.live(&op.range), op)
    }

    /// The live pairs of `range` as this entry left them so far, in key order.
    pub(super) fn live<'s>(&'s self, range: &KeyRange) -> Box<dyn Iterator<Item = Result<KeyValue, MvccError>> + 's> {
        let tree_pairs = LiveIter::new(self.tree, range, u64::MAX);
        if self.overlay.is_empty() {
            return Box::new(tree_pairs);
        }
        let overlay: Vec<(&Vec<u8>, &Option<KeyValue>)> = self
            .overlay
            .iter()
            .filter(|(k, _)| range.contains(k))
            .map(|(k, state)| (k, &state.kv))
            .collect();
        Box::new(merge(tree_pairs, overlay))
    }
}

/// Merge the tree's live pairs with the overlay's (both in key order); the overlay wins, and an
/// overlay `None` hides the key.
fn merge<'o, I>(
    tree: I,
    overlay: Vec<(&'o Vec<u8>, &'o Option<KeyValue>)>,
) -> impl Iterator<Item = Result<KeyValue, MvccError>> + 'o
where
    I: Iterator<Item = Result<KeyValue, MvccError>> + 'o,
{
    let mut tree = tree.peekable();
    let mut overlay = overlay.into_iter().peekable();
    std::iter::from_fn(move || loop {
        let take_overlay = match (tree.peek(), overlay.peek()) {
            (None, None) => return None,
            (Some(Err(_)), _) => return tree.next(),
            (None, Some(_)) => true,
            (Some(_), None) => false,
            (Some(Ok(t)), Some((k, _))) => match k.as_slice().cmp(t.key.as_slice()) {
                std::cmp::Ordering::Less => true,
                std::cmp::Ordering::Equal => {
                    tree.next(); // shadowed by the overlay
                    true
                }
                std::cmp::Ordering::Greater => false,
            },
        };
        if take_overlay {
            let (_, state) = overlay.next().expect("peeked");
            if let Some(kv) = state {
                return Some(Ok(kv.clone()));
            }
        } else {
            return tree.next();
        }
    })
}
