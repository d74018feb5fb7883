//! A hash of the key-value history, for etcd's HashKV: members compare theirs to find one whose
//! state went astray.
//!
//! The hash covers every stored version of every key (live values and tombstones alike) with a
//! revision at or below the one asked for: each key's versions from the compaction point up
//! (including, per key, the newest version at or below the point, which reads at the point
//! need). Compaction removes whole history records, so two members compacted to the same point
//! hold the same versions, whether they got there by compaction steps or by installing a
//! snapshot of that revision (which holds exactly each key's live version, no tombstones). Equal
//! state therefore hashes equal at the same revision *and* compaction point; the point is
//! returned with the hash (as etcd returns `compact_revision`) so that only comparable hashes are
//! compared. The hash is keel's own (CRC-32 over the decoded versions, not their stored bytes,
//! so a change of the storage format does not change it); it is never equal to etcd's.

use std::sync::atomic::Ordering;

use super::mvcc::MvccError;
use super::read::{KvReader, ReadError};
use crate::codec::{self, StoredVersion, VERSION_PREFIX};

impl KvReader {
    /// The hash of the history up to `rev` (0: the current revision), with the compaction point
    /// it covers from: see the module docs. [`ReadError::Compacted`] below the compaction point,
    /// [`ReadError::FutureRevision`] above the current revision. It reads every stored version
    /// on the calling thread: seconds for millions of keys.
    pub fn hash_kv(&self, rev: u64) -> Result<(u32, u64), ReadError> {
        for _ in 0..3 {
            let (tree, generation, current) = self.shared.tree();
            let rev = if rev == 0 { current } else { rev };
            if rev > current {
                return Err(ReadError::FutureRevision { current });
            }
            let compacted = self.shared.compacting.load(Ordering::Acquire);
            if rev < compacted {
                return Err(ReadError::Compacted { compacted });
            }
            let hash = hash_versions(&tree, rev);
            // Unlike a read, the hash depends on the compaction point itself, not just on the
            // state at `rev`: any step during the scan makes it a mix of two points.
            let moved = self.shared.generation.load(Ordering::Acquire) != generation
                || self.shared.compacting.load(Ordering::Acquire) != compacted
                || *self.shared.compactions.borrow() != compacted;
            if !moved {
                return Ok((hash?, compacted));
            }
        }
        Err(ReadError::Interrupted)
    }
}

fn hash_versions(tree: &sled::Tree, rev: u64) -> Result<u32, MvccError> {
    let mut h = crc32fast::Hasher::new();
    for item in tree.scan_prefix([VERSION_PREFIX]) {
        let (k, v) = item?;
        let (group, at) = codec::split_version_key(&k)?;
        if at > rev {
            continue;
        }
        let key = codec::group_user_key(group)?;
        // Lengths first, so that no two sequences of versions hash the same bytes.
        h.update(&(key.len() as u64).to_be_bytes());
        h.update(&key);
        h.update(&at.to_be_bytes());
        match StoredVersion::decode(&v)? {
            StoredVersion::Tombstone => h.update(&[0]),
            StoredVersion::Live {
                create_revision,
                version,
                value,
            } => {
                h.update(&[1]);
                h.update(&create_revision.to_be_bytes());
                h.update(&version.to_be_bytes());
                h.update(&(value.len() as u64).to_be_bytes());
                h.update(&value);
            }
        }
    }
    Ok(h.finalize())
}
