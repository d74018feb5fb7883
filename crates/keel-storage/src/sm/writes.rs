//! One applied entry's writes, and how they reach sled: a redo record, then plain inserts.
//!
//! ## Why not a sled batch
//! A sled 0.34 batch is atomic, but it has a fixed cost that dwarfs a small entry: `apply_batch`
//! seals sled's IO buffer twice (`pin_log`), and each sealed buffer is written by sled's IO
//! thread pool with a `pwrite` and a `sync_file_range` that waits for the disk, after a
//! `notify_all` that wakes every idle IO thread (seven) for the one that takes the work. With one
//! batch per entry, that was two of the three buffer writes each member made per write at one
//! client, and most of the leader's CPU went to waking threads (perf: context switches 38%,
//! futex 27%, sled's IO pool 23% of the leader at one client).
//!
//! ## How the entry stays atomic
//! sled recovers a prefix of the operations it was given (see the log store's essay). So an
//! entry's writes are made as:
//! 1. one insert of the whole write set, with the entry's log index, under [`REDO_KEY`];
//! 2. each write of the set, as a plain insert or remove;
//!
//! and the set always holds the state machine's metadata (`m:meta`, with the applied log id).
//! After a crash, sled holds a prefix of that sequence. If the redo record is missing or not
//! newer than the applied log id, the last entry either completed or left nothing (its redo
//! record was not written, so neither was any of its writes). Otherwise [`recover`] writes the
//! whole set again on open: each write is the final value of its key for that entry, so
//! writing it twice is the same as once, and the state becomes exactly "after the entry".
//! Either way, the state is "after entry N" for some N, as with a batch.
//!
//! ## Readers during an apply
//! A batch also hid an entry's writes from concurrent readers until all were in. Key-value
//! reads do not need that: they read at a published revision, and an entry's versions carry
//! revisions above it until the entry is published. The records that are not versioned, the
//! leases, are read by clients (`KvReader::lease*`) under [`SmShared::writing`]'s read lock,
//! which apply holds for writing while it writes a set that touches them. A snapshot build reads
//! session records while applies run (`sessions::sessions_at`): the writes go in key order, so
//! the copy of a superseded record that a build needs (`b'p'…`) is in before the record that
//! replaces it (`b's'…`) is, as the build's two scans (current records, then copies) require.
//!
//! [`SmShared::writing`]: super::SmShared

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sled::IVec;

use super::mvcc::MvccError;
use crate::codec;

/// The key of the redo record: the write set of the newest entry applied.
pub const REDO_KEY: &[u8] = b"m:redo";

/// The format byte of a redo record.
const REDO_FORMAT: u8 = 0x82;

/// A set larger than this goes in as a sled batch instead: the redo record would double its
/// bytes (a 1 MiB value written twice), where a batch's fixed cost is small beside them.
const BATCH_ABOVE_BYTES: usize = 64 * 1024;

/// The writes of one entry: each key's final value (`None`: removed), as a sled batch holds them.
#[derive(Default, Debug, Clone, PartialEq, Eq)]
pub struct WriteSet {
    writes: BTreeMap<IVec, Option<IVec>>,
    /// Key and value bytes of the writes (an upper bound: a key written twice counts twice).
    bytes: usize,
}

/// A redo record as stored: the entry's log index and its writes (read back by [`recover`]).
#[derive(Deserialize)]
struct Redo {
    index: u64,
    writes: Vec<(serde_bytes::ByteBuf, Option<serde_bytes::ByteBuf>)>,
}

/// The same record, encoded from the set's own bytes (apply writes one per entry: no copies).
#[derive(Serialize)]
struct RedoRef<'a> {
    index: u64,
    writes: Vec<(&'a serde_bytes::Bytes, Option<&'a serde_bytes::Bytes>)>,
}

impl WriteSet {
    pub fn insert<K: Into<IVec>, V: Into<IVec>>(&mut self, key: K, value: V) {
        let (key, value) = (key.into(), value.into());
        self.bytes += key.len() + value.len();
        self.writes.insert(key, Some(value));
    }

    pub fn remove<K: Into<IVec>>(&mut self, key: K) {
        let key = key.into();
        self.bytes += key.len();
        self.writes.insert(key, None);
    }

    /// Whether any write falls under one of `prefixes` (first key byte).
    pub fn touches_any(&self, prefixes: &[u8]) -> bool {
        self.writes
            .keys()
            .any(|k| k.first().is_some_and(|b| prefixes.contains(b)))
    }

    /// The redo record of these writes for the entry at `index`.
    fn redo_record(&self, index: u64) -> Vec<u8> {
        let writes = self
            .writes
            .iter()
            .map(|(k, v)| (serde_bytes::Bytes::new(k), v.as_deref().map(serde_bytes::Bytes::new)))
            .collect();
        codec::encode_as(REDO_FORMAT, &RedoRef { index, writes })
    }

    /// Write the set into `tree` as the entry at `index`: its redo record, then each write; or,
    /// for a large set, one sled batch (the redo record left in place is older than the entry,
    /// so [`recover`] ignores it).
    pub fn write(&self, tree: &sled::Tree, index: u64) -> sled::Result<()> {
        if self.bytes > BATCH_ABOVE_BYTES {
            let mut batch = sled::Batch::default();
            for (key, value) in &self.writes {
                match value {
                    Some(v) => batch.insert(key, v.clone()),
                    None => batch.remove(key),
                }
            }
            return tree.apply_batch(batch);
        }
        tree.insert(REDO_KEY, self.redo_record(index))?;
        self.write_each(tree)
    }

    fn write_each(&self, tree: &sled::Tree) -> sled::Result<()> {
        for (key, value) in &self.writes {
            match value {
                Some(v) => tree.insert(key, v.clone())?,
                None => tree.remove(key)?,
            };
        }
        Ok(())
    }
}

/// After a crash: finish the entry whose redo record is newer than `applied_index` (the
/// applied log id's index in `m:meta`; `None`: nothing applied), if any. Returns its index.
pub fn recover(tree: &sled::Tree, applied_index: Option<u64>) -> Result<Option<u64>, MvccError> {
    let Some(bytes) = tree.get(REDO_KEY)? else {
        return Ok(None);
    };
    let redo: Redo = codec::decode_as(REDO_FORMAT, &bytes)?;
    if applied_index.is_some_and(|applied| redo.index <= applied) {
        return Ok(None);
    }
    for (key, value) in redo.writes {
        match value {
            Some(v) => tree.insert(key.into_vec(), v.into_vec())?,
            None => tree.remove(key.into_vec())?,
        };
    }
    Ok(Some(redo.index))
}
