//! The newest changes, kept in memory as well as in the history, so that watches that keep up
//! read them without touching sled.
//!
//! A watch reads the history from its next revision each time the store revision moves
//! (`changes.rs`). From sled that costs a range scan, a decode and a version lookup per change,
//! per watch: with a thousand watches of one prefix, a thousand times the same work for every
//! write. Apply already holds every change it makes (the key's new version and the one it
//! superseded), so it hands them here after its batch is in sled and before the new revision is
//! published; a watch that is caught up then reads them from memory, on its own task.
//!
//! The window holds whole revisions, consecutive, up to the newest applied, and at most
//! [`MAX_BYTES`] of keys and values (the oldest go first). It belongs to one generation of the
//! state machine's tree: a snapshot install starts a new generation, and until the next apply
//! refills it the window answers nothing. A read it cannot answer whole (a start older than the
//! window, another generation, a revision it has not been given) is left to the history in sled,
//! which holds the same changes: the window is a cache, never the record.

use std::collections::VecDeque;
use std::sync::{Arc, RwLock};

use super::changes::{Change, Changes};
use crate::types::KeyRange;

/// Bytes of keys and values the window holds at most.
pub const MAX_BYTES: usize = 16 << 20;
/// Bookkeeping counted per change, on top of its keys and values.
const CHANGE_OVERHEAD: usize = 96;

/// The changes of one revision, each with the version it superseded (if live).
pub type RevisionChanges = (u64, Vec<Change>);

pub(crate) struct Recent {
    window: RwLock<Window>,
    max_bytes: usize,
}

struct Window {
    generation: u64,
    /// The revision of `revisions[0]`; the next one to push is `first + revisions.len()`.
    first: u64,
    revisions: VecDeque<Arc<[Change]>>,
    bytes: usize,
}

impl Window {
    fn next(&self) -> u64 {
        self.first + self.revisions.len() as u64
    }
}

fn size(c: &Change) -> usize {
    CHANGE_OVERHEAD + c.kv.key.len() + c.kv.value.len() + c.prev_kv.as_ref().map_or(0, |p| p.key.len() + p.value.len())
}

impl Recent {
    /// An empty window whose first revision will be `next`.
    pub fn new(generation: u64, next: u64, max_bytes: usize) -> Recent {
        Recent {
            window: RwLock::new(Window {
                generation,
                first: next,
                revisions: VecDeque::new(),
                bytes: 0,
            }),
            max_bytes,
        }
    }

    /// Add the revisions an entry applied (consecutive, ascending). Revisions that do not follow
    /// the window's last, or of another generation, start it afresh.
    pub fn push(&self, generation: u64, revisions: Vec<RevisionChanges>) {
        let Some(&(start, _)) = revisions.first() else {
            return;
        };
        let mut w = self.window.write().unwrap_or_else(|e| e.into_inner());
        if w.generation != generation || w.next() != start {
            *w = Window {
                generation,
                first: start,
                revisions: VecDeque::new(),
                bytes: 0,
            };
        }
        for (revision, changes) in revisions {
            if revision != w.next() {
                // Not consecutive within one entry: cannot happen; hold nothing rather than a gap.
                let next = revision + 1;
                *w = Window {
                    generation,
                    first: next,
                    revisions: VecDeque::new(),
                    bytes: 0,
                };
                continue;
            }
            w.bytes += changes.iter().map(size).sum::<usize>();
            w.revisions.push_back(changes.into());
        }
        while w.bytes > self.max_bytes {
            let Some(oldest) = w.revisions.pop_front() else { break };
            w.bytes -= oldest.iter().map(size).sum::<usize>();
            w.first += 1;
        }
    }

    /// The changes to `range` from revision `from` up to `current`, as
    /// [`KvReader::history_changes`](super::KvReader::history_changes) reads them from sled, or
    /// `None` when the window does not hold all of them. `view`: the reader's tree generation
    /// and store revision, read together.
    pub fn read(
        &self,
        view: (u64, u64),
        range: &KeyRange,
        from: u64,
        limit: usize,
        max_bytes: usize,
        prev_kv: bool,
    ) -> Option<Changes> {
        let (generation, current) = view;
        let w = self.window.read().unwrap_or_else(|e| e.into_inner());
        if w.generation != generation || from < w.first || current >= w.next() {
            return None;
        }
        let mut out = Changes {
            changes: Vec::new(),
            next: from.max(current + 1),
            revision: current,
        };
        let mut taken = 0;
        for revision in from..=current {
            let changes = &w.revisions[(revision - w.first) as usize];
            for c in changes.iter().filter(|c| range.contains(&c.kv.key)) {
                let prev = if prev_kv { c.prev_kv.clone() } else { None };
                taken += c.kv.key.len() + c.kv.value.len() + prev.as_ref().map_or(0, |p| p.value.len());
                out.changes.push(Change {
                    revision,
                    deleted: c.deleted,
                    kv: c.kv.clone(),
                    prev_kv: prev,
                });
            }
            if out.changes.len() >= limit || taken >= max_bytes {
                out.next = revision + 1;
                break;
            }
        }
        Some(out)
    }
}
