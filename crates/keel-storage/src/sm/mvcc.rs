//! MVCC reads over a state-machine tree: "the live value of each key as of revision R".
//!
//! Versions are never modified once written, only added (at higher revisions) or removed by
//! compaction (only when superseded at or below the compaction point). So a read at revision R
//! sees exactly the state after R was applied, however many applies run meanwhile, as long as the
//! compaction point stays at or below R. Snapshot builds pin R; short reads check afterwards (see
//! `read.rs`).

use crate::codec::{self, DecodeError, StoredVersion, VERSION_PREFIX};
use crate::types::{KeyRange, KeyValue, RangeOp, RangeResult};

/// Errors reading the state machine.
#[derive(Debug, thiserror::Error)]
pub enum MvccError {
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    #[error("stored data: {0}")]
    Decode(#[from] DecodeError),
}

/// The newest stored version of `key` at or below `at_rev` (which may be a tombstone), with its
/// revision.
pub fn latest(tree: &sled::Tree, key: &[u8], at_rev: u64) -> Result<Option<(u64, StoredVersion)>, MvccError> {
    let group = codec::version_group(key);
    // Versions sort newest first, so the first entry at or after `!at_rev` is the one we want.
    let mut start = group.clone();
    start.extend_from_slice(&(!at_rev).to_be_bytes());
    let mut end = group;
    end.extend_from_slice(&[0xFF; 8]);
    match tree.range(start..=end).next() {
        None => Ok(None),
        Some(item) => {
            let (k, v) = item?;
            let (_, rev) = codec::split_version_key(&k)?;
            Ok(Some((rev, StoredVersion::decode(&v)?)))
        }
    }
}

/// The live key-value pair of `key` at `at_rev`.
pub fn get(tree: &sled::Tree, key: &[u8], at_rev: u64) -> Result<Option<KeyValue>, MvccError> {
    Ok(latest(tree, key, at_rev)?.and_then(|(rev, v)| v.into_kv(key.to_vec(), rev)))
}

/// The sled iterator over every version of every key in `range`.
fn raw_range(tree: &sled::Tree, range: &KeyRange) -> sled::Iter {
    match range {
        KeyRange::Key(k) => tree.scan_prefix(codec::version_group(k)),
        KeyRange::Prefix(p) => {
            let mut prefix = vec![VERSION_PREFIX];
            codec::escape_body_into(p, &mut prefix);
            tree.scan_prefix(prefix)
        }
        KeyRange::Between { start, end } => tree.range(codec::version_group(start)..codec::version_group(end)),
        KeyRange::From(start) => tree.range(codec::version_group(start)..vec![VERSION_PREFIX + 1]),
    }
}

/// Iterates the live key-value pairs of a range at one revision, in key order.
pub struct LiveIter {
    iter: sled::Iter,
    at_rev: u64,
    /// The group (escaped key) whose version at `at_rev` was already decided.
    decided: Option<sled::IVec>,
}

impl LiveIter {
    pub fn new(tree: &sled::Tree, range: &KeyRange, at_rev: u64) -> Self {
        LiveIter {
            iter: raw_range(tree, range),
            at_rev,
            decided: None,
        }
    }

    /// Every live pair in the whole tree at `at_rev` (snapshot builds).
    pub fn all(tree: &sled::Tree, at_rev: u64) -> Self {
        Self::new(tree, &KeyRange::Prefix(Vec::new()), at_rev)
    }

    fn step(&mut self) -> Result<Option<KeyValue>, MvccError> {
        for item in self.iter.by_ref() {
            let (k, v) = item?;
            let (group, rev) = codec::split_version_key(&k)?;
            if rev > self.at_rev || self.decided.as_deref() == Some(group) {
                continue;
            }
            self.decided = Some(sled::IVec::from(group));
            let key = codec::group_user_key(group)?;
            if let Some(kv) = StoredVersion::decode(&v)?.into_kv(key, rev) {
                return Ok(Some(kv));
            }
        }
        Ok(None)
    }
}

impl Iterator for LiveIter {
    type Item = Result<KeyValue, MvccError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.step().transpose()
    }
}

/// Collect a range result from a stream of live pairs in key order.
pub fn collect_range<I>(pairs: I, op: &RangeOp) -> Result<RangeResult, MvccError>
where
    I: Iterator<Item = Result<KeyValue, MvccError>>,
{
    let mut out = RangeResult::default();
    for kv in pairs {
        let mut kv = kv?;
        out.count += 1;
        if op.count_only {
            continue;
        }
        if op.limit > 0 && out.kvs.len() as u64 >= op.limit {
            out.more = true;
            continue;
        }
        if op.keys_only {
            kv.value = Vec::new();
        }
        out.kvs.push(kv);
    }
    Ok(out)
}
