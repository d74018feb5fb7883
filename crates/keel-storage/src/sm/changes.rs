//! The changes to a range of keys since a revision, read from the change history: what a watch
//! sends.
//!
//! Every applied entry left one history record listing its revisions and, for each, the keys it
//! put or deleted with the revision each superseded (`apply.rs`). A change at revision R > the
//! compaction point still has its version at R (compaction removes only versions superseded at
//! or below that point) and the version it superseded, so the events of the retained history
//! are exact: each key's value after the change and, if asked, before it. A read that starts at
//! or below the compaction point is refused with the point, as etcd refuses a watch on a
//! compacted revision. As for `read.rs`, a compaction or snapshot install during the read is
//! noticed afterwards.
//!
//! Watchers do not hold events: each reads the history from its next revision when told that the
//! store revision moved ([`KvReader::revisions`]), so a slow watcher costs nothing but the
//! history it has yet to read. The newest changes are also kept in memory by apply
//! (`recent.rs`), and a watcher that keeps up reads them from there.

use std::sync::atomic::Ordering;

use super::mvcc::{self, MvccError};
use super::read::KvReader;
use super::{decode_history, ReadError};
use crate::codec;
use crate::types::{KeyRange, KeyValue};

/// One change to one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub revision: u64,
    pub deleted: bool,
    /// The key after the change: its new version, or for a delete the key alone with
    /// `mod_revision` the deleting revision.
    pub kv: KeyValue,
    /// The version the change superseded, if asked for and live.
    pub prev_kv: Option<KeyValue>,
}

/// The changes of whole revisions, in revision order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    pub changes: Vec<Change>,
    /// The first revision these changes do not cover: where the next read starts.
    pub next: u64,
    /// The store revision when the read began (every revision up to it was read, unless the
    /// read stopped at its limit).
    pub revision: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ChangesError {
    /// The history at and below this revision is gone.
    #[error("required revision has been compacted (compacted up to {0})")]
    Compacted(u64),
    #[error(transparent)]
    Read(#[from] ReadError),
}

impl KvReader {
    /// Follow the store revision: it changes after every apply that wrote something, and after
    /// a snapshot install.
    pub fn revisions(&self) -> tokio::sync::watch::Receiver<u64> {
        self.shared.revisions.subscribe()
    }

    /// The oldest revision whose changes the history still holds.
    pub fn oldest_change(&self) -> u64 {
        self.history_floor() + 1
    }

    /// The history at and below this revision is gone, or going: the compaction point as
    /// announced, or the floor etcd's Compact set if that is higher (see `compact.rs`).
    pub(super) fn history_floor(&self) -> u64 {
        let compacting = self.shared.compacting.load(Ordering::Acquire);
        compacting.max(self.shared.floor.load(Ordering::Acquire))
    }

    /// The changes to `range` from revision `from` (at least 1) up to the current revision,
    /// stopping after the first revision that takes the count of changes to `limit`, or their
    /// keys and values to `max_bytes`. With `prev_kv`, each change also carries the version it
    /// superseded. Read from memory when the window of recent changes holds them, else from the
    /// history in sled; runs on the calling thread.
    pub fn changes(
        &self,
        range: &KeyRange,
        from: u64,
        limit: usize,
        max_bytes: usize,
        prev_kv: bool,
    ) -> Result<Changes, ChangesError> {
        match self.recent_changes(range, from, limit, max_bytes, prev_kv) {
            Some(read) => read,
            None => self.history_changes(range, from, limit, max_bytes, prev_kv),
        }
    }

    /// [`KvReader::changes`] from the window of recent changes in memory alone (`recent.rs`):
    /// `None` when the window does not hold them all, and the history in sled must be read.
    /// Never waits for IO, so an async task may call it.
    pub fn recent_changes(
        &self,
        range: &KeyRange,
        from: u64,
        limit: usize,
        max_bytes: usize,
        prev_kv: bool,
    ) -> Option<Result<Changes, ChangesError>> {
        let from = from.max(1);
        let (_, generation, current) = match self.begin(from) {
            Ok(Begin::Read(view)) => view,
            Ok(Begin::Done(out)) => return Some(Ok(out)),
            Err(e) => return Some(Err(e)),
        };
        let out = self
            .shared
            .recent
            .read((generation, current), range, from, limit, max_bytes, prev_kv)?;
        // The window is of one generation, so only a compaction can have moved under the read.
        Some(self.held(from).map(|()| out))
    }

    /// [`KvReader::changes`] from the history in sled alone.
    pub fn history_changes(
        &self,
        range: &KeyRange,
        from: u64,
        limit: usize,
        max_bytes: usize,
        prev_kv: bool,
    ) -> Result<Changes, ChangesError> {
        let from = from.max(1);
        let (tree, generation, current) = match self.begin(from)? {
            Begin::Read(view) => view,
            Begin::Done(out) => return Ok(out),
        };
        let mut out = Changes {
            changes: Vec::new(),
            next: current + 1,
            revision: current,
        };
        let mut taken = 0;
        let mut read = || -> Result<Option<u64>, MvccError> {
            for record in tree.range(codec::history_key(from)..=codec::history_key(current)) {
                let (key, bytes) = record?;
                let last = codec::split_history_key(&key)?;
                for rev in decode_history(last, &bytes)? {
                    if rev.revision < from || rev.revision > current {
                        continue;
                    }
                    for ev in rev.events.into_iter().filter(|e| range.contains(&e.key)) {
                        // A delete's version is a tombstone: nothing to read for it.
                        let put = match ev.deleted {
                            true => None,
                            false => mvcc::get(&tree, &ev.key, rev.revision)?,
                        };
                        let kv = put.unwrap_or_else(|| KeyValue {
                            key: ev.key.clone(),
                            mod_revision: rev.revision,
                            ..KeyValue::default()
                        });
                        let prev = match (prev_kv, ev.prev_revision) {
                            (true, p) if p > 0 => mvcc::get(&tree, &ev.key, p)?,
                            _ => None,
                        };
                        taken += kv.key.len() + kv.value.len() + prev.as_ref().map_or(0, |p| p.value.len());
                        out.changes.push(Change {
                            revision: rev.revision,
                            deleted: ev.deleted,
                            kv,
                            prev_kv: prev,
                        });
                    }
                    if out.changes.len() >= limit || taken >= max_bytes {
                        return Ok(Some(rev.revision + 1));
                    }
                }
            }
            Ok(None)
        };
        let stopped_at = read().map_err(ReadError::from)?;
        if self.shared.generation.load(Ordering::Acquire) != generation {
            return Err(ReadError::Interrupted.into());
        }
        self.held(from)?;
        if let Some(next) = stopped_at {
            out.next = next;
        }
        Ok(out)
    }

    /// The start of a read of the changes from `from`: refused if they have been compacted,
    /// answered at once if there are none yet, else the tree, its generation and the current
    /// revision, read together.
    fn begin(&self, from: u64) -> Result<Begin, ChangesError> {
        let (tree, generation, current) = self.shared.tree();
        self.held(from)?;
        if from > current {
            return Ok(Begin::Done(Changes {
                changes: Vec::new(),
                next: from,
                revision: current,
            }));
        }
        Ok(Begin::Read((tree, generation, current)))
    }

    /// Refused if the history from `from` on has been compacted. Checked before a read and again
    /// after it, so that a compaction that overlapped the read is noticed.
    fn held(&self, from: u64) -> Result<(), ChangesError> {
        let compacted = self.history_floor();
        match from <= compacted {
            true => Err(ChangesError::Compacted(compacted)),
            false => Ok(()),
        }
    }
}

/// Where a read of the changes starts (`KvReader::begin`).
enum Begin {
    Read((sled::Tree, u64, u64)),
    Done(Changes),
}
