//! History compaction: node-local retention, and the replicated floor etcd's Compact raises.
//!
//! Two things decide how far a member compacts. `history_revisions` is node-local housekeeping:
//! each member keeps that many revisions, whatever the others do. [`crate::Command::Compact`] (etcd's
//! Compact) is replicated: it raises the *floor*, a revision every member must compact up to.
//! The compaction target after each apply is `max(revision - history_revisions, floor)`, held
//! down by running snapshot builds' pins, and reached in the usual steps of at most
//! `COMPACT_PER_APPLY` revisions per apply call, so a floor far ahead costs several apply calls
//! (an idle member makes no progress until its next apply: a server that waits for physical
//! compaction, [`crate::KvReader::compactions`], can propose an empty txn to drive it). The floor never
//! loosens retention: with a floor below `revision - history_revisions` nothing changes.
//!
//! Retention alone waits for a chunk: it compacts only once [`chunk`] revisions (a sixteenth of
//! `history_revisions`, at most `COMPACT_PER_APPLY`) are past it, so a member keeps between
//! `history_revisions` and that much more. Each step is a sled batch of its own, and a sled batch
//! has a fixed cost (sled 0.34 seals and writes its IO buffer twice for one, with a waited
//! `sync_file_range` each); compacting the ~20 revisions that each apply call under load pushed
//! past the line cost the leader about as much CPU as applying the entries themselves (perf, put
//! at 64 clients). A floor above the compaction point is reached without waiting.
//!
//! Compact is answered against the floor alone, never against the member's own compaction
//! point, so the answer is the same on every member that applied the same log: a revision at or
//! below the floor is `Compacted`, one above the current revision `FutureRevision`. The floor is
//! stored in its own record (`m:floor`), so it survives restarts. Snapshots do not carry it: an
//! installed snapshot holds no history at all, so installing one sets the floor to the
//! snapshot's revision (at or above any floor the log had reached there). That member then
//! answers a Compact between the log's floor and the snapshot's revision with `Compacted`, as it
//! should: it no longer has that history. Reads at a revision go by the member's actual
//! compaction point ([`crate::KvReader::compacted`]) and the floor: a read below the floor is refused at
//! once, as in etcd, even while the steps are still catching up.

use std::io;
use std::sync::atomic::Ordering;

use super::{decode_history, io_err, StateMachine, COMPACT_PER_APPLY, FLOOR_KEY, META_KEY};
use crate::codec;
use crate::durability::sled_to_io;

impl StateMachine {
    /// Compact history older than `history_revisions`, and at least up to the floor, whole
    /// records and a bounded number of revisions at a time.
    pub(super) fn compact_step(&mut self, tree: &sled::Tree) -> io::Result<()> {
        let keep = self.shared.config.history_revisions;
        let mut target = self.meta.revision.saturating_sub(keep).max(self.floor);
        if let Some((&(pinned, _), _)) = self.shared.pins().first_key_value() {
            target = target.min(pinned);
        }
        if target <= self.meta.compacted {
            return Ok(());
        }
        if self.floor <= self.meta.compacted && target - self.meta.compacted < chunk(keep) {
            return Ok(());
        }
        let fail = |e: io::Error| io::Error::new(e.kind(), format!("compacting history: {e}"));
        let mut batch = sled::Batch::default();
        let mut compacted = self.meta.compacted;
        let records = tree.range(codec::history_key(compacted + 1)..=codec::history_key(target));
        for record in records {
            if compacted >= self.meta.compacted + COMPACT_PER_APPLY {
                break;
            }
            let (key, bytes) = record.map_err(|e| fail(io_err(e)))?;
            let last = codec::split_history_key(&key).map_err(|e| fail(io_err(e)))?;
            for rev in decode_history(last, &bytes).map_err(|e| fail(io_err(e)))? {
                for ev in rev.events {
                    if ev.prev_revision != 0 {
                        batch.remove(codec::version_key(&ev.key, ev.prev_revision));
                    }
                    if ev.deleted {
                        batch.remove(codec::version_key(&ev.key, rev.revision));
                    }
                }
            }
            batch.remove(key);
            compacted = last;
        }
        if compacted == self.meta.compacted {
            // The next record also holds revisions above the target.
            return Ok(());
        }
        let mut meta = self.meta.clone();
        meta.compacted = compacted;
        batch.insert(META_KEY, codec::encode(&meta));
        // Announce first: a reader that overlaps this batch must see the new compaction point.
        self.shared.compacting.store(compacted, Ordering::Release);
        tree.apply_batch(batch).map_err(|e| fail(io_err(e)))?;
        self.meta = meta;
        self.shared.compactions.send_replace(compacted);
        Ok(())
    }
}

/// Revisions that retention lets pile up past `history_revisions` before it compacts them.
fn chunk(history_revisions: u64) -> u64 {
    (history_revisions / 16).clamp(1, COMPACT_PER_APPLY)
}

/// The floor stored in `tree` (0 if none was ever set).
pub(super) fn read_floor(tree: &sled::Tree) -> io::Result<u64> {
    match tree.get(FLOOR_KEY).map_err(sled_to_io)? {
        Some(bytes) => codec::decode(&bytes).map_err(io_err),
        None => Ok(0),
    }
}
