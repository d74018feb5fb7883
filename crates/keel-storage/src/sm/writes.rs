//! One applied entry's writes, and how they reach sled: one sled batch.
//!
//! A sled 0.34 batch is atomic through a crash (sled recovers it whole or not at all), so the
//! state is always "after entry N" for some N, and the set always holds the state machine's
//! metadata (`m:meta`, with the applied log id) that says which N.
//!
//! ## A redo record instead of the batch: tried, measured, undone
//! A batch has a fixed cost that is large beside a small entry: `apply_batch` seals sled's IO
//! buffer twice (`pin_log`), and each sealed buffer is a `pwrite` and a waited
//! `sync_file_range` on sled's IO pool, whose hand-off wakes all seven of its idle threads. For a
//! while (commits e199da9 to a7a455b) an entry went in as a redo record, the whole set under
//! [`REDO_KEY`], followed by plain inserts, finished on open after a crash. It cut the members'
//! CPU per put by a fifth at 64 clients, but it wrote every entry's bytes twice, and sled 0.34
//! reclaims the space of superseded records slowly: a million 256-byte puts left a 1,716 MiB
//! database per member instead of 924 MiB (`scripts/bench-scale-vs-etcd.sh`; etcd: 786 MiB).
//! Disk per key is a goal of its own, so entries are batches again. [`recover`] still finishes
//! a redo record that such a build left behind when it crashed mid-entry.
//!
//! ## Readers during an apply
//! A batch does not hide its writes from concurrent readers: sled's `get` and range reads take
//! no lock, so a reader may see part of a batch. Key-value reads do not mind: they read at a
//! published revision, and an entry's versions carry revisions above it until the entry is
//! published. The records that are not versioned, the leases, are read by clients
//! (`KvReader::lease*`) under [`SmShared::writing`]'s read lock, which apply holds for writing
//! while it writes a set that touches them. A snapshot build reads session records while
//! applies run (`sessions::sessions_at`): a batch applies its writes in key order, so the copy of
//! a superseded record that a build needs (`b'p'…`) is in before the record that replaces it
//! (`b's'…`) is, as the build's two scans (current records, then copies) require.
//!
//! [`SmShared::writing`]: super::SmShared

use serde::Deserialize;
use sled::IVec;

use super::mvcc::MvccError;
use crate::codec;

/// The key of the redo record that builds e199da9 to a7a455b wrote before each entry's writes.
const REDO_KEY: &[u8] = b"m:redo";

/// The format byte of a redo record.
const REDO_FORMAT: u8 = 0x82;

/// The writes of one entry, as the sled batch that applies them, with the first bytes of the
/// keys written (for [`WriteSet::touches_any`]; sled's batch does not show its keys).
#[derive(Default, Debug, Clone)]
pub struct WriteSet {
    batch: sled::Batch,
    /// Bit `b` is set if a key starting with byte `b` was written.
    first_bytes: [u64; 4],
}

/// A redo record as stored: the entry's log index and its writes.
#[derive(Deserialize)]
struct Redo {
    index: u64,
    writes: Vec<(serde_bytes::ByteBuf, Option<serde_bytes::ByteBuf>)>,
}

impl WriteSet {
    pub fn insert<K: Into<IVec>, V: Into<IVec>>(&mut self, key: K, value: V) {
        let key = key.into();
        self.note(&key);
        self.batch.insert(key, value);
    }

    pub fn remove<K: Into<IVec>>(&mut self, key: K) {
        let key = key.into();
        self.note(&key);
        self.batch.remove(key);
    }

    fn note(&mut self, key: &[u8]) {
        if let Some(&b) = key.first() {
            self.first_bytes[usize::from(b / 64)] |= 1 << (b % 64);
        }
    }

    /// Whether any write falls under one of `prefixes` (first key byte).
    pub fn touches_any(&self, prefixes: &[u8]) -> bool {
        prefixes
            .iter()
            .any(|&b| self.first_bytes[usize::from(b / 64)] & (1 << (b % 64)) != 0)
    }

    /// Write the set into `tree` as one sled batch.
    pub fn write(self, tree: &sled::Tree) -> sled::Result<()> {
        tree.apply_batch(self.batch)
    }
}

/// After a crash of a build that wrote redo records: finish the entry whose redo record is newer
/// than `applied_index` (the applied log id's index in `m:meta`; `None`: nothing applied), if
/// any, and remove the record. Returns the entry's index.
///
/// Such a build wrote the record, then each write of the set as a plain insert or remove; sled
/// recovers a prefix of that sequence. Each write is the final value of its key for the entry,
/// so writing the whole set again makes the state exactly "after the entry".
pub fn recover(tree: &sled::Tree, applied_index: Option<u64>) -> Result<Option<u64>, MvccError> {
    let Some(bytes) = tree.get(REDO_KEY)? else {
        return Ok(None);
    };
    let redo: Redo = codec::decode_as(REDO_FORMAT, &bytes)?;
    let mut batch = sled::Batch::default();
    batch.remove(REDO_KEY);
    let finished = if applied_index.is_some_and(|applied| redo.index <= applied) {
        None
    } else {
        for (key, value) in redo.writes {
            match value {
                Some(v) => batch.insert(key.into_vec(), v.into_vec()),
                None => batch.remove(key.into_vec()),
            }
        }
        Some(redo.index)
    };
    tree.apply_batch(batch)?;
    Ok(finished)
}

#[cfg(test)]
mod tests {
    use super::WriteSet;

    #[test]
    fn touches_any_knows_the_first_byte_of_every_key_inserted_or_removed() {
        let mut set = WriteSet::default();
        assert!(!set.touches_any(&[0, b'l', 255]));
        set.insert(&b"l1"[..], &b"v"[..]);
        set.remove(vec![255u8, 1]);
        set.insert(&b""[..], &b"v"[..]);
        assert!(set.touches_any(b"l"));
        assert!(set.touches_any(&[0, 255]));
        assert!(!set.touches_any(&[0, b'k', b'm', 63, 64, 127, 128, 191, 192, 254]));
    }
}
