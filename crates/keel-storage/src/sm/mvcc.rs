//! MVCC reads over a state-machine tree: "the live value of each key as of revision R".
//!
//! Versions are never modified once written, only added (at higher revisions) or removed by
//! compaction (only when superseded at or below the compaction point). So a read at revision R
//! sees exactly the state after R was applied, however many applies run meanwhile, as long as the
//! compaction point stays at or below R. Snapshot builds pin R; short reads check afterwards (see
//! `read.rs`).

use std::ops::Bound;

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

/// The bounds, in sled keys, of every version of every key in `range`.
fn raw_bounds(range: &KeyRange) -> (Bound<Vec<u8>>, Bound<Vec<u8>>) {
    match range {
        KeyRange::Key(k) => prefix_bounds(codec::version_group(k)),
        KeyRange::Prefix(p) => {
            let mut prefix = vec![VERSION_PREFIX];
            codec::escape_body_into(p, &mut prefix);
            prefix_bounds(prefix)
        }
        KeyRange::Between { start, end } => (
            Bound::Included(codec::version_group(start)),
            Bound::Excluded(codec::version_group(end)),
        ),
        KeyRange::From(start) => (
            Bound::Included(codec::version_group(start)),
            Bound::Excluded(vec![VERSION_PREFIX + 1]),
        ),
    }
}

/// Every sled key that starts with `prefix` (which starts with [`VERSION_PREFIX`], so it has a
/// successor).
fn prefix_bounds(prefix: Vec<u8>) -> (Bound<Vec<u8>>, Bound<Vec<u8>>) {
    let mut end = prefix.clone();
    while end.last() == Some(&0xFF) {
        end.pop();
    }
    match end.last_mut() {
        Some(last) => {
            *last += 1;
            (Bound::Included(prefix), Bound::Excluded(end))
        }
        None => (Bound::Included(prefix), Bound::Unbounded),
    }
}

/// Older versions of a key a [`LiveIter`] steps over before it seeks past the rest of them.
const SEEK_AFTER: u32 = 8;

/// Iterates the live key-value pairs of a range at one revision, in key order.
///
/// The work is proportional to what is pulled: each `next` reads the sled entries up to the next
/// live pair and no further, so a caller that stops early (a limit) pays only for what it took.
/// Once a key's version is decided, its older versions are stepped over; past a few of them (a
/// key rewritten often keeps up to `--history-revisions` versions) the iterator seeks to the next
/// key instead, so a range of hot keys costs a seek per key, not a read per version.
pub struct LiveIter {
    tree: sled::Tree,
    iter: sled::Iter,
    /// The upper bound of the range, to seek within it.
    end: Bound<Vec<u8>>,
    at_rev: u64,
    /// The group (escaped key) whose version at `at_rev` was already decided.
    decided: Option<sled::IVec>,
    /// Older versions of the decided group stepped over so far.
    skipped: u32,
    /// The range is one key: once its version is decided there is nothing more to find (the
    /// rest of the group is older versions), so stop without reading them.
    one_key: bool,
    /// Leave values out (empty): keys-only and count-only reads do not copy them.
    values: bool,
}

impl LiveIter {
    pub fn new(tree: &sled::Tree, range: &KeyRange, at_rev: u64) -> Self {
        let (start, end) = raw_bounds(range);
        LiveIter {
            tree: tree.clone(),
            iter: tree.range((start, end.clone())),
            end,
            at_rev,
            decided: None,
            skipped: 0,
            one_key: matches!(range, KeyRange::Key(_)),
            values: true,
        }
    }

    /// Every live pair in the whole tree at `at_rev` (snapshot builds).
    pub fn all(tree: &sled::Tree, at_rev: u64) -> Self {
        Self::new(tree, &KeyRange::Prefix(Vec::new()), at_rev)
    }

    /// The same pairs with empty values (which are then not copied out of the tree).
    pub fn without_values(mut self) -> Self {
        self.values = false;
        self
    }

    fn step(&mut self) -> Result<Option<KeyValue>, MvccError> {
        if self.one_key && self.decided.is_some() {
            return Ok(None);
        }
        while let Some(item) = self.iter.next() {
            let (k, v) = item?;
            let (group, rev) = codec::split_version_key(&k)?;
            if self.decided.as_deref() == Some(group) {
                self.skipped += 1;
                if self.skipped >= SEEK_AFTER {
                    // Past every version of this group: its keys are the group and 8 bytes.
                    let mut past = group.to_vec();
                    past.extend_from_slice(&[0xFF; 8]);
                    self.iter = self.tree.range((Bound::Excluded(past), self.end.clone()));
                    self.skipped = 0;
                }
                continue;
            }
            if rev > self.at_rev {
                continue;
            }
            self.decided = Some(sled::IVec::from(group));
            self.skipped = 0;
            let key = codec::group_user_key(group)?;
            // A stored version is its fixed fields, then the value (see `StoredVersion::encode`):
            // cut off, it decodes to the same version with an empty value.
            let stored = if self.values {
                &v[..]
            } else {
                &v[..v.len().min(VERSION_FIXED_BYTES)]
            };
            if let Some(kv) = StoredVersion::decode(stored)?.into_kv(key, rev) {
                return Ok(Some(kv));
            }
            if self.one_key {
                return Ok(None);
            }
        }
        Ok(None)
    }
}

/// The bytes of a stored live version before its value: format, kind, create revision, version.
const VERSION_FIXED_BYTES: usize = 2 + 8 + 8;

impl Iterator for LiveIter {
    type Item = Result<KeyValue, MvccError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.step().transpose()
    }
}

/// An upper bound of what one pair adds to an encoded response (`repeated KeyValue kvs` of
/// keel.v1.RangeResponse) besides its key and value bytes: the field's tag and length, and in
/// the pair the tags and lengths of key and value and three varint revisions.
pub const KV_ENCODING_OVERHEAD: usize = 64;

/// The bytes `kv` adds to an encoded response, at most (see [`KV_ENCODING_OVERHEAD`]).
pub fn response_bytes(kv: &KeyValue) -> usize {
    kv.key.len() + kv.value.len() + KV_ENCODING_OVERHEAD
}

/// Collect a range result from a stream of live pairs in key order, with no bound on its size
/// in bytes (see [`collect_range_bounded`]).
pub fn collect_range<I>(pairs: I, op: &RangeOp) -> Result<RangeResult, MvccError>
where
    I: Iterator<Item = Result<KeyValue, MvccError>>,
{
    collect_range_bounded(pairs, op, usize::MAX)
}

/// Collect a range result from a stream of live pairs in key order, pulling no more pairs than
/// the answer needs:
///
/// - `count_only`: every pair in the range is counted (the one read that visits the whole
///   range, because it was asked for); no pairs, `more = false`.
/// - otherwise the pairs go into the result until `op.limit` is reached, or until the next one
///   would take the result over `max_bytes` (as counted by [`response_bytes`]); then `more` is
///   set and the scan stops. The first pair always goes in, however large, so a result with
///   `more` is never empty. Reaching the limit costs one pair more than the limit, to tell
///   whether there are more. `count` is the number of pairs returned: the range beyond the
///   limit is not visited, so it is not counted.
pub fn collect_range_bounded<I>(pairs: I, op: &RangeOp, max_bytes: usize) -> Result<RangeResult, MvccError>
where
    I: Iterator<Item = Result<KeyValue, MvccError>>,
{
    let mut out = RangeResult::default();
    if op.count_only {
        for kv in pairs {
            kv?;
            out.count += 1;
        }
        return Ok(out);
    }
    let mut bytes = 0usize;
    for kv in pairs {
        let mut kv = kv?;
        if op.limit > 0 && out.kvs.len() as u64 >= op.limit {
            out.more = true;
            break;
        }
        if op.keys_only {
            kv.value = Vec::new();
        }
        let size = response_bytes(&kv);
        if !out.kvs.is_empty() && bytes.saturating_add(size) > max_bytes {
            out.more = true;
            break;
        }
        bytes = bytes.saturating_add(size);
        out.kvs.push(kv);
    }
    out.count = out.kvs.len() as u64;
    Ok(out)
}
