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
use std::sync::RwLock;

use super::changes::{Change, Changes};
use crate::types::KeyRange;

/// Bytes of keys and values the window holds at most.
pub const MAX_BYTES: usize = 16 << 20;
/// Bookkeeping counted per change, on top of its keys and values.
const CHANGE_OVERHEAD: usize = 96;

/// Empty until the first apply: it holds no revision, so it answers no read.
#[derive(Default)]
pub(crate) struct Recent {
    window: RwLock<Window>,
}

#[derive(Default)]
struct Window {
    generation: u64,
    /// The revision of `revisions[0]`; the next one to push is `first + revisions.len()`.
    first: u64,
    /// Each revision's changes, with the bytes they count for.
    revisions: VecDeque<(usize, Vec<Change>)>,
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
    /// Add the changes an entry applied, in revision order. A revision that does not follow the
    /// window's last, or of another generation, starts the window afresh.
    pub fn push(&self, generation: u64, changes: Vec<Change>) {
        if changes.is_empty() {
            return;
        }
        let mut guard = self.window.write().unwrap_or_else(|e| e.into_inner());
        let w = &mut *guard;
        for c in changes {
            let bytes = size(&c);
            match w.revisions.back_mut() {
                Some((b, last)) if w.generation == generation && last[0].revision == c.revision => {
                    *b += bytes;
                    last.push(c);
                }
                _ => {
                    if w.generation != generation || w.next() != c.revision {
                        *w = Window {
                            generation,
                            first: c.revision,
                            ..Window::default()
                        };
                    }
                    w.revisions.push_back((bytes, vec![c]));
                }
            }
            w.bytes += bytes;
        }
        while w.bytes > MAX_BYTES {
            let Some((bytes, _)) = w.revisions.pop_front() else {
                break;
            };
            w.bytes -= bytes;
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
            let (_, changes) = &w.revisions[(revision - w.first) as usize];
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
