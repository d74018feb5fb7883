//! Reads for the server, concurrent with apply.
//!
//! A read takes the current revision R and reads the MVCC state at R, so it sees exactly the
//! result of some applied prefix of the log, never half of a txn. Two things could pull versions
//! from under a read: compaction past R, and a snapshot install that drops the tree. Both announce
//! themselves (the compaction point, the generation) before they remove anything, so the read
//! checks both afterwards and retries if either moved. With the default history of 10,000
//! revisions a retry needs a read that is slower than 10,000 writes.
//!
//! Whether a read is linearizable is the server's business: it waits for the read index to be
//! applied (openraft's `ensure_linearizable`) and then reads here.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::mvcc::{self, LiveIter, MvccError};
use super::SmShared;
use crate::types::{KeyValue, RangeOp, RangeResult};

const READ_ATTEMPTS: usize = 3;

/// Why a read failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("storage: {0}")]
    Storage(#[from] MvccError),
    #[error("the state was replaced while reading (snapshot install or compaction); try again")]
    Interrupted,
    /// A read at a revision whose state this member no longer holds whole: below `compacted`,
    /// the compaction point (etcd: "required revision has been compacted").
    #[error("required revision has been compacted (compacted up to {compacted})")]
    Compacted { compacted: u64 },
    /// A read at a revision not applied yet on this member (etcd: "required revision is a future
    /// revision").
    #[error("required revision is a future revision (current revision {current})")]
    FutureRevision { current: u64 },
}

/// Read access to the state machine, cheap to clone.
#[derive(Clone)]
pub struct KvReader {
    pub(super) shared: Arc<SmShared>,
}

impl KvReader {
    pub(crate) fn new(shared: Arc<SmShared>) -> Self {
        KvReader { shared }
    }

    /// Is authentication enabled in the applied state? (Without the lock and the copies of
    /// [`KvReader::auth`].)
    pub fn auth_enabled(&self) -> bool {
        self.shared.auth_enabled.load(Ordering::Acquire)
    }

    /// Users, roles and tokens as of the applied state (see [`crate::auth`]).
    pub fn auth(&self) -> super::AuthView {
        self.shared.auth.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The store revision of the last applied write.
    pub fn revision(&self) -> u64 {
        self.shared.revision.load(Ordering::Acquire)
    }

    /// Index of the last applied log entry (0 if none).
    pub fn applied_index(&self) -> u64 {
        self.shared.applied_index.load(Ordering::Acquire)
    }

    /// Number of live keys.
    pub fn key_count(&self) -> u64 {
        self.shared.key_count.load(Ordering::Acquire)
    }

    /// Number of client sessions the state machine remembers.
    pub fn session_count(&self) -> u64 {
        self.shared.session_count.load(Ordering::Acquire)
    }

    /// Bytes on disk of the whole database (log and state).
    /// The newest snapshot file, opened (it stays readable even if a newer one replaces it).
    pub fn current_snapshot(&self) -> std::io::Result<Option<(crate::SnapshotMeta, std::fs::File)>> {
        self.shared.snapshots.open_current()
    }

    pub fn db_size(&self) -> u64 {
        self.shared.dur.size_on_disk()
    }

    /// One key at the current revision. Returns the pair and the revision it was read at.
    pub fn get(&self, key: &[u8]) -> Result<(Option<KeyValue>, u64), ReadError> {
        self.consistent(|tree, rev| mvcc::get(tree, key, rev))
    }

    /// A range at the current revision, however large. Returns the result and the revision it
    /// was read at. The server uses [`KvReader::range_bounded`].
    pub fn range(&self, op: &RangeOp) -> Result<(RangeResult, u64), ReadError> {
        self.range_bounded(op, usize::MAX)
    }

    /// A range at the current revision whose pairs take at most `max_bytes` of an encoded
    /// response (a first pair larger than that comes alone). Returns the result and the revision
    /// it was read at.
    ///
    /// The read visits what it returns (and one pair more, to set `more`), not the rest of the
    /// range: see [`mvcc::collect_range_bounded`] for `limit`, `count` and `more`. Only
    /// `count_only` visits the whole range. It runs on the calling thread and may take long
    /// (a count of millions of keys takes seconds): keep it off an async runtime's workers.
    pub fn range_bounded(&self, op: &RangeOp, max_bytes: usize) -> Result<(RangeResult, u64), ReadError> {
        self.consistent(|tree, rev| range_in(tree, op, rev, max_bytes))
    }

    /// A range as of revision `rev` (0: the current one), bounded as [`KvReader::range_bounded`].
    /// Returns the result and the revision it was read at.
    ///
    /// Readable are the revisions from the compaction point ([`KvReader::compacted`]), or the
    /// history floor ([`crate::Command::Compact`]) if that is higher, up to the current one:
    /// compaction removes only versions superseded at or below the point, so the
    /// state *at* the point is still whole (as in etcd, where a read at the compact revision
    /// succeeds). Below it: [`ReadError::Compacted`]; above the current revision:
    /// [`ReadError::FutureRevision`]. A compaction that passes `rev` while the read runs is
    /// noticed afterwards and also answered with `Compacted`, never with a partial result.
    pub fn range_at(&self, op: &RangeOp, rev: u64, max_bytes: usize) -> Result<(RangeResult, u64), ReadError> {
        if rev == 0 {
            return self.range_bounded(op, max_bytes);
        }
        for _ in 0..READ_ATTEMPTS {
            let (tree, generation, current) = self.shared.tree();
            if rev > current {
                return Err(ReadError::FutureRevision { current });
            }
            self.not_compacted(rev)?;
            let result = range_in(&tree, op, rev, max_bytes);
            if self.shared.generation.load(Ordering::Acquire) != generation {
                // An install replaced the tree: the new one may still hold `rev`, or refuse it.
                continue;
            }
            self.not_compacted(rev)?;
            return Ok((result?, rev));
        }
        Err(ReadError::Interrupted)
    }

    fn not_compacted(&self, rev: u64) -> Result<(), ReadError> {
        // The announced point, not the finished one: a compaction batch landing meanwhile may
        // already have removed versions below it.
        let compacted = self.history_floor();
        match rev < compacted {
            true => Err(ReadError::Compacted { compacted }),
            false => Ok(()),
        }
    }

    /// The compaction point: history up to and including it is gone from this member's store
    /// (reads at it still work, below it not). Node-local; see the module docs of `sm` for how
    /// [`crate::Command::Compact`] and `history_revisions` move it.
    pub fn compacted(&self) -> u64 {
        *self.shared.compactions.borrow()
    }

    /// Follow [`KvReader::compacted`]: it moves after each compaction step (and a snapshot
    /// install). A server that answers a compaction only once it is physically done waits here
    /// for the point to reach its revision.
    pub fn compactions(&self) -> tokio::sync::watch::Receiver<u64> {
        self.shared.compactions.subscribe()
    }

    /// The lease `key` is attached to now, if any (leases are not versioned: there is no lease
    /// "as of" an older revision).
    pub fn lease_of(&self, key: &[u8]) -> Result<Option<crate::LeaseId>, ReadError> {
        self.leases_consistent(|tree| super::leases::key_lease_in(tree, key))
    }

    /// Every lease, by id.
    pub fn leases(&self) -> Result<Vec<super::LeaseInfo>, ReadError> {
        self.leases_consistent(super::leases::all)
    }

    /// Lease `id` with its keys, if it exists.
    pub fn lease(&self, id: crate::LeaseId) -> Result<Option<super::leases::LeaseWithKeys>, ReadError> {
        self.leases_consistent(|tree| super::leases::one(tree, id))
    }

    /// A read of lease records, which are not versioned: between two entries' writes.
    fn leases_consistent<T>(&self, read: impl Fn(&sled::Tree) -> Result<T, MvccError>) -> Result<T, ReadError> {
        let _between = self.shared.writing.read().unwrap_or_else(|e| e.into_inner());
        Ok(self.consistent(|tree, _| read(tree))?.0)
    }

    fn consistent<T>(&self, read: impl Fn(&sled::Tree, u64) -> Result<T, MvccError>) -> Result<(T, u64), ReadError> {
        for _ in 0..READ_ATTEMPTS {
            let (tree, generation, rev) = self.shared.tree();
            let result = read(&tree, rev);
            let moved = self.shared.generation.load(Ordering::Acquire) != generation
                || self.shared.compacting.load(Ordering::Acquire) > rev;
            if !moved {
                return Ok((result?, rev));
            }
        }
        Err(ReadError::Interrupted)
    }
}

fn range_in(tree: &sled::Tree, op: &RangeOp, rev: u64, max_bytes: usize) -> Result<RangeResult, MvccError> {
    let pairs = LiveIter::new(tree, &op.range, rev);
    let pairs = if op.keys_only || op.count_only {
        pairs.without_values()
    } else {
        pairs
    };
    mvcc::collect_range_bounded(pairs, op, max_bytes)
}
