//! Reading the log: entries from the unwritten tail and from sled, for openraft's core and its
//! replication tasks (see "Replication batches" in the module essay).

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use openraft::{OptionalSend, RaftLogReader};

use super::{
    entry_index, entry_key, lock, read_meta_from, LogStore, SharedTail, ENTRY_PREFIX, REPLICATION_BATCH_BYTES, VOTE_KEY,
};
use crate::codec;
use crate::durability::sled_to_io;
use crate::types::{Entry, TypeConfig, Vote};

/// Reads log entries; handed to openraft's replication tasks.
#[derive(Clone)]
pub struct LogReader {
    pub(super) tree: sled::Tree,
    pub(super) meta: sled::Tree,
    pub(super) readable_from: Arc<AtomicU64>,
    pub(super) tail: SharedTail,
}

/// The sled key range of the log indexes in `range`, starting no lower than `from`.
fn key_range<RB: RangeBounds<u64>>(from: u64, range: &RB) -> (Bound<[u8; 9]>, Bound<[u8; 9]>) {
    let start = match range.start_bound() {
        Bound::Included(&i) => i,
        Bound::Excluded(&i) => i.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let start = Bound::Included(entry_key(start.max(from)));
    let end = match range.end_bound() {
        Bound::Included(&i) => Bound::Included(entry_key(i)),
        Bound::Excluded(&i) => Bound::Excluded(entry_key(i)),
        Bound::Unbounded => Bound::Excluded([ENTRY_PREFIX + 1; 9]),
    };
    (start, end)
}

/// The entries in `range` that are not purged, from the tail and from sled, stopping before the
/// first entry that would take their encoded size past `budget` bytes (but always with the first
/// one).
fn read_entries<RB: RangeBounds<u64>>(
    tree: &sled::Tree,
    tail: &SharedTail,
    from: u64,
    range: RB,
    budget: usize,
) -> io::Result<Vec<Entry>> {
    let (start, end) = key_range(from, &range);
    let as_index = |b: Bound<[u8; 9]>| match b {
        Bound::Included(k) => Bound::Included(entry_index(&k)),
        Bound::Excluded(k) => Bound::Excluded(entry_index(&k)),
        Bound::Unbounded => Bound::Unbounded,
    };
    let (first, last) = (as_index(start), as_index(end));
    let empty = match (first, last) {
        (Bound::Included(a), Bound::Excluded(b)) => a >= b,
        (Bound::Included(a), Bound::Included(b)) => a > b,
        _ => false,
    };
    if empty {
        // BTreeMap::range panics on a reversed range (sled's returns nothing).
        return Ok(Vec::new());
    }
    // The tail first (see "Group commit, and the unwritten tail").
    let unwritten: Vec<(u64, sled::IVec)> = lock(tail)
        .entries
        .range((first, last))
        .map(|(i, (_, _, bytes))| (*i, bytes.clone()))
        .collect();
    let mut unwritten = unwritten.into_iter().peekable();
    // Fused: a sled iterator asked again after its end may find entries the flusher wrote since,
    // which the tail already gave.
    let mut written = tree
        .range::<[u8; 9], _>((start, end))
        .map(|item| {
            let (k, v) = item.map_err(sled_to_io)?;
            Ok::<_, io::Error>((entry_index(&k), v))
        })
        .fuse();
    let mut next_written = written.next().transpose()?;
    let mut out = Vec::new();
    let mut bytes = 0usize;
    let mut emitted: Option<u64> = None;
    loop {
        // In index order; where both hold an index, the tail's entry is the newer one.
        let next = match (next_written.as_ref(), unwritten.peek()) {
            (None, None) => break,
            (Some((w, _)), Some((u, _))) if w < u => next_written.take(),
            (Some((w, _)), Some((u, _))) if w == u => {
                next_written = None;
                unwritten.next()
            }
            (Some(_), None) => next_written.take(),
            _ => unwritten.next(),
        };
        if next_written.is_none() {
            next_written = written.next().transpose()?;
        }
        let (at, value) = next.expect("one side had an entry");
        // Strictly ascending, whatever the two sources did meanwhile.
        if emitted.is_some_and(|l| at <= l) {
            continue;
        }
        emitted = Some(at);
        bytes = bytes.saturating_add(value.len());
        if bytes > budget && !out.is_empty() {
            break;
        }
        out.push(codec::decode::<Entry>(&value).map_err(io::Error::other)?);
    }
    Ok(out)
}

impl LogReader {
    fn entries<RB: RangeBounds<u64>>(&self, range: RB, budget: usize) -> io::Result<Vec<Entry>> {
        let from = self.readable_from.load(Ordering::Acquire);
        read_entries(&self.tree, &self.tail, from, range, budget)
    }
}

impl RaftLogReader<TypeConfig> for LogReader {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> io::Result<Vec<Entry>> {
        self.entries(range, usize::MAX)
    }

    async fn read_vote(&mut self) -> io::Result<Option<Vote>> {
        read_meta_from(&self.meta, VOTE_KEY)
    }

    async fn limited_get_log_entries(&mut self, start: u64, end: u64) -> io::Result<Vec<Entry>> {
        self.entries(start..end, REPLICATION_BATCH_BYTES)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> io::Result<Vec<Entry>> {
        let from = self.readable_from.load(Ordering::Acquire);
        read_entries(&self.tree, &self.tail, from, range, usize::MAX)
    }

    async fn read_vote(&mut self) -> io::Result<Option<Vote>> {
        self.read_meta(VOTE_KEY)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{log_id_at, EntryPayload};

    fn entry(term: u64, index: u64) -> Entry {
        Entry {
            log_id: log_id_at(term, 1, index),
            payload: EntryPayload::Blank,
        }
    }

    /// Readers merge the unwritten tail with sled in index order, the tail's entry winning where
    /// both hold one (an entry rewritten after a truncation, its old copy not yet deleted).
    #[test]
    fn readers_see_the_tail_over_sled() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let tree = db.open_tree("raft").unwrap();
        for i in 1..=5 {
            tree.insert(entry_key(i), codec::encode(&entry(1, i))).unwrap();
        }
        let tail = SharedTail::default();
        for i in 4..=7 {
            let e = entry(2, i);
            let bytes = sled::IVec::from(codec::encode(&e));
            lock(&tail).entries.insert(i, (i, e.log_id, bytes));
        }
        let ids = |v: Vec<Entry>| {
            v.into_iter()
                .map(|e| (e.log_id.leader_id.term, e.log_id.index))
                .collect::<Vec<_>>()
        };
        let all = read_entries(&tree, &tail, 0, .., usize::MAX).unwrap();
        assert_eq!(ids(all), vec![(1, 1), (1, 2), (1, 3), (2, 4), (2, 5), (2, 6), (2, 7)]);
        let from_three = read_entries(&tree, &tail, 3, 2..6, usize::MAX).unwrap();
        assert_eq!(ids(from_three), vec![(1, 3), (2, 4), (2, 5)]);
        let one = read_entries(&tree, &tail, 0, 1.., 1).unwrap();
        assert_eq!(ids(one), vec![(1, 1)], "a budget below one entry still returns one");
        assert!(read_entries(&tree, &tail, 9, 2..5, usize::MAX).unwrap().is_empty());
        assert!(read_entries(&tree, &tail, 0, 5..5, usize::MAX).unwrap().is_empty());
    }
}
