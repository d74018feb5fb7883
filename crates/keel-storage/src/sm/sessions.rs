//! Client sessions: exactly-once writes across client retries.
//!
//! ## The protocol
//! A client that wants its writes applied exactly once picks a random `client_id` and numbers its
//! writes 1, 2, 3, … ([`SessionRef`]); a retry of a write whose outcome it does not know carries
//! the same `seq`. Per client, the state machine keeps one record: the newest `seq` it executed,
//! that write's [`Response`], and `last_index`, the log index of the entry that last used the
//! session. A request with a session is decided against that record:
//!
//! | the client's record         | effect                                   | response                  |
//! |-----------------------------|------------------------------------------|---------------------------|
//! | none, `seq == 1`            | executed; record created                 | the command's             |
//! | none, `seq != 1`            | nothing                                  | `SessionExpired`          |
//! | `seq > record.seq`          | executed; record replaced                | the command's             |
//! | `seq == record.seq`         | not executed; only `last_index` moves    | the remembered response   |
//! | `seq < record.seq`          | nothing                                  | `StaleSession`            |
//!
//! The remembered response is returned unchanged (same revision, same results), and the store
//! revision does not move. A response whose encoding is larger than [`MAX_REMEMBERED_RESPONSE`] is
//! not remembered; a retry of that write is answered with `StaleSession { last_seq: seq }`, which
//! still tells the client that the write was applied exactly once. A session's record and the
//! command's effects are written in the same atomic write set (`writes`), so a crash can never
//! separate them.
//!
//! Why `SessionExpired`: records are bounded, so they expire. If a request without a record were
//! simply executed, a retry that arrives after its session expired would be applied a second time,
//! silently. Instead only `seq == 1` starts a session; any other `seq` without a record is refused,
//! and the client knows that it must not assume anything about an earlier attempt. The one gap
//! left is seq 1 itself: a late copy of a session's first write that arrives after the session was
//! evicted is executed again, and it starts the session afresh at seq 1, so a later retry of the
//! write the client was really waiting on (seq > 1) would be executed too. It takes a duplicate of
//! seq 1 delayed past `max_sessions` other sessions or `session_ttl_entries` entries. Closing it
//! needs sessions registered through the log (the client learns its id from the registering
//! entry's index), which `SessionRef` does not have yet.
//!
//! ## Expiry, deterministically
//! Whether a record exists decides whether a command executes, so expiry is part of the replicated
//! state and must be identical on every node: it depends only on log indexes and on the entries,
//! never on clocks, and it runs once per *entry*, never per apply call (nodes batch the same
//! entries into apply calls differently). After entry `i` is applied, in the same write set,
//! sessions are removed in order of `(last_index, client_id)` while the oldest one is unused for
//! `session_ttl_entries` entries (`last_index + ttl <= i`) or there are more than `max_sessions`,
//! at most [`EVICT_PER_ENTRY`] per entry, plus one for each session a batch entry used beyond
//! its first. An entry adds at most one session per request in it, so this keeps the count at
//! `max_sessions` and catches up with any backlog. The sessions the entry itself used are never removed by it (a
//! batch entry may use several; its requests' session records are decided in order, each seeing
//! the ones before it). The limits come from [`SmConfig`](super::SmConfig) and so must be the same
//! on every node of a cluster.
//!
//! Layout (see `codec`): the record under `b's' ‖ client_id`, and an expiry index
//! `b'x' ‖ last_index ‖ client_id` (empty value) updated in the same write set; `SmMeta` counts
//! the sessions.
//!
//! ## Sessions in snapshots
//! A snapshot holds the sessions as of its applied index `A`. Key-value pairs are multi-versioned,
//! session records are not: they are replaced in place while the build runs. So while a build has
//! `A` pinned, apply keeps every record it supersedes (replaces, or removes on expiry) whose
//! `last_index <= A` under `b'p' ‖ client_id ‖ last_index`, together with the index that superseded
//! it. A version with `last_index = j` superseded at `s` is the client's record for exactly the
//! applied indexes `[j, s)` (a current record: `[j, ∞)`). The build reads the current records and
//! keeps those with `last_index <= A`, then the preserved ones with `j <= A < s` for clients it has
//! not written yet. Each sled read sees whole batches, and a version is preserved in the batch
//! that supersedes it, so a version the first pass missed because it was superseded meanwhile is
//! found by the second. Preserved records are node-local (they never affect a response, and are
//! never in a snapshot as such); once no build is running, apply deletes them, a bounded number
//! per apply call.

use std::collections::HashSet;
use std::io;

use super::io_err;
use super::mvcc::MvccError;
use crate::codec::{self, DecodeError, StoredSession, SESSION_EXPIRY_PREFIX, SESSION_PREFIX, SESSION_PRESERVED_PREFIX};
use crate::types::{CommandResult, Response, SessionRef};
use keel_datadir::SnapshotSession;

/// The sequence number of a session's first write.
pub const FIRST_SEQ: u64 = 1;
/// Responses whose encoding is larger than this many bytes are not remembered. Part of the
/// replicated apply function: it must not differ between the nodes of a cluster.
pub const MAX_REMEMBERED_RESPONSE: usize = 64 * 1024;
/// At most this many sessions are expired or evicted per log entry.
pub const EVICT_PER_ENTRY: usize = 16;
/// At most this many preserved records are deleted per apply call.
const CLEAN_PER_APPLY: usize = 1024;

/// The session limits of a cluster.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub ttl_entries: u64,
    pub max_sessions: u64,
}

/// A client's current record: as read from the tree, or as an earlier request of the same log
/// entry (a batch) left it.
#[derive(Clone)]
pub(crate) struct Current {
    seq: u64,
    last_index: u64,
    raw: sled::IVec,
}

/// What to do with a request that carries a session.
pub(crate) enum Decision {
    /// Execute the command and remember its response; `prev` is the client's record, if any.
    Execute { prev: Option<Current> },
    /// Do not execute; answer with `response`. `refresh`: the record whose `last_index` moves to
    /// this entry (a retry of the session's newest write).
    Answer {
        response: Response,
        refresh: Option<Current>,
    },
}

fn lookup(tree: &sled::Tree, client_id: u64) -> Result<Option<Current>, MvccError> {
    let Some(raw) = tree.get(codec::session_key(client_id))? else {
        return Ok(None);
    };
    let (seq, last_index) = StoredSession::decode_head(&raw)?;
    Ok(Some(Current { seq, last_index, raw }))
}

/// The records written by the log entry being applied, newer than the tree's.
pub(crate) type Written = std::collections::HashMap<u64, Current>;

/// Decide on a request of `session`, with the store at `revision`; `written` holds the records
/// the entry's earlier requests changed.
pub(crate) fn decide(
    tree: &sled::Tree,
    written: &Written,
    session: SessionRef,
    revision: u64,
) -> Result<Decision, MvccError> {
    let SessionRef { client_id, seq } = session;
    let refuse = |result| Response { revision, result };
    let stale = |last_seq| {
        refuse(CommandResult::StaleSession {
            client_id,
            seq,
            last_seq,
        })
    };
    let current = match written.get(&client_id) {
        Some(cur) => Some(cur.clone()),
        None => lookup(tree, client_id)?,
    };
    Ok(match current {
        None if seq == FIRST_SEQ => Decision::Execute { prev: None },
        None => Decision::Answer {
            response: refuse(CommandResult::SessionExpired { client_id, seq }),
            refresh: None,
        },
        Some(cur) if seq > cur.seq => Decision::Execute { prev: Some(cur) },
        Some(cur) if seq == cur.seq => {
            let remembered = StoredSession::decode(&cur.raw)?.response()?;
            Decision::Answer {
                response: remembered.unwrap_or_else(|| stale(cur.seq)),
                refresh: Some(cur),
            }
        }
        Some(cur) => Decision::Answer {
            response: stale(cur.seq),
            refresh: None,
        },
    })
}

/// The session changes of the log entry at `index`, added to that entry's batch.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Scope {
    pub index: u64,
    /// The highest applied index pinned by a snapshot build when the apply call started (pins are
    /// only added between apply calls, and one removed meanwhile only makes this conservative).
    pub max_pin: Option<u64>,
}

impl Scope {
    /// The record `(client_id, last_index)` stops being current at this entry: drop its expiry
    /// index entry, and keep a copy if a build may still need it.
    fn supersede(self, batch: &mut super::writes::WriteSet, client_id: u64, last_index: u64, raw: &[u8]) {
        batch.remove(&codec::session_expiry_key(last_index, client_id));
        if self.max_pin.is_some_and(|pin| pin >= last_index) {
            let mut value = Vec::with_capacity(8 + raw.len());
            value.extend_from_slice(&self.index.to_be_bytes());
            value.extend_from_slice(raw);
            batch.insert(&codec::preserved_session_key(client_id, last_index), value);
        }
    }

    /// Write `record` as the client's current one, and note it in `written`. A `prev` written
    /// by this same entry has no copy to keep (no build pins this entry's index) and its expiry
    /// index entry is the one re-inserted here.
    fn store(
        self,
        batch: &mut super::writes::WriteSet,
        written: &mut Written,
        client_id: u64,
        prev: Option<&Current>,
        record: &StoredSession,
    ) {
        if let Some(prev) = prev {
            self.supersede(batch, client_id, prev.last_index, &prev.raw);
        }
        let raw = sled::IVec::from(record.encode());
        batch.insert(&codec::session_key(client_id), raw.clone());
        batch.insert(&codec::session_expiry_key(self.index, client_id), &[]);
        let current = Current {
            seq: record.seq,
            last_index: self.index,
            raw,
        };
        written.insert(client_id, current);
    }

    /// Remember `response` as the result of `(client_id, seq)`, executed at this entry.
    pub fn remember(
        self,
        batch: &mut super::writes::WriteSet,
        written: &mut Written,
        client_id: u64,
        seq: u64,
        prev: Option<&Current>,
        response: &Response,
    ) {
        let mut encoded = codec::encode(response);
        if encoded.len() > MAX_REMEMBERED_RESPONSE {
            encoded = Vec::new();
        }
        let record = StoredSession {
            seq,
            last_index: self.index,
            response: encoded,
        };
        self.store(batch, written, client_id, prev, &record);
    }

    /// A retry of the session's newest write: the record is unchanged but for `last_index`.
    pub fn refresh(
        self,
        batch: &mut super::writes::WriteSet,
        written: &mut Written,
        client_id: u64,
        cur: &Current,
    ) -> Result<(), DecodeError> {
        let mut record = StoredSession::decode(&cur.raw)?;
        record.last_index = self.index;
        self.store(batch, written, client_id, Some(cur), &record);
        Ok(())
    }

    /// Expire and evict sessions after this entry (see the module docs). `count` is the number of
    /// sessions including this entry's changes; `keep` holds the sessions this entry used.
    pub fn expire(
        self,
        tree: &sled::Tree,
        batch: &mut super::writes::WriteSet,
        count: &mut u64,
        keep: &Written,
        limits: Limits,
    ) -> Result<(), MvccError> {
        if *count == 0 {
            return Ok(());
        }
        let mut removed = 0;
        // The tree does not have this entry's batch yet: a session in `keep` may appear under its
        // old last_index, and is skipped.
        for key in tree.scan_prefix([SESSION_EXPIRY_PREFIX]).keys() {
            if removed == EVICT_PER_ENTRY + keep.len().saturating_sub(1) {
                break;
            }
            let key = key?;
            let (last_index, client_id) = codec::split_session_expiry_key(&key)?;
            if keep.contains_key(&client_id) {
                continue;
            }
            let expired = last_index.saturating_add(limits.ttl_entries) <= self.index;
            if !expired && *count <= limits.max_sessions {
                break;
            }
            let raw = tree.get(codec::session_key(client_id))?.ok_or_else(|| {
                DecodeError::Malformed(format!("the session expiry index names a missing session {client_id}"))
            })?;
            self.supersede(batch, client_id, last_index, &raw);
            batch.remove(&codec::session_key(client_id));
            *count -= 1;
            removed += 1;
        }
        Ok(())
    }
}

/// Delete preserved records, a bounded number; call only while no build is running. Returns
/// whether any may be left.
pub(crate) fn clean_preserved(tree: &sled::Tree) -> Result<bool, MvccError> {
    let mut batch = sled::Batch::default();
    let mut n = 0;
    for key in tree
        .scan_prefix([SESSION_PRESERVED_PREFIX])
        .keys()
        .take(CLEAN_PER_APPLY)
    {
        batch.remove(key?);
        n += 1;
    }
    if n > 0 {
        tree.apply_batch(batch)?;
    }
    Ok(n == CLEAN_PER_APPLY)
}

/// A stored session as a snapshot record: the response goes as stored (encoded, or empty).
fn snapshot_session(client_id: u64, record: StoredSession) -> SnapshotSession {
    SnapshotSession {
        client_id,
        seq: record.seq,
        last_index: record.last_index,
        response: record.response,
    }
}

/// Hand every session as of applied index `at` to `push`, while applies continue (the build has
/// `at` pinned). Returns the number of sessions.
pub(crate) fn sessions_at(
    tree: &sled::Tree,
    at: u64,
    mut push: impl FnMut(&SnapshotSession) -> io::Result<()>,
) -> io::Result<u64> {
    let mut written = HashSet::new();
    for item in tree.scan_prefix([SESSION_PREFIX]) {
        let (key, value) = item.map_err(io_err)?;
        let client_id = codec::split_session_key(&key).map_err(io_err)?;
        let record = StoredSession::decode(&value).map_err(io_err)?;
        if record.last_index <= at {
            written.insert(client_id);
            push(&snapshot_session(client_id, record))?;
        }
    }
    for item in tree.scan_prefix([SESSION_PRESERVED_PREFIX]) {
        let (key, value) = item.map_err(io_err)?;
        let (client_id, last_index) = codec::split_preserved_session_key(&key).map_err(io_err)?;
        let Some((superseded_at, raw)) = value.split_first_chunk::<8>() else {
            return Err(io_err("bad preserved session record"));
        };
        if last_index <= at && at < u64::from_be_bytes(*superseded_at) && written.insert(client_id) {
            let record = StoredSession::decode(raw).map_err(io_err)?;
            push(&snapshot_session(client_id, record))?;
        }
    }
    Ok(written.len() as u64)
}

/// Add a session from a snapshot to an install batch. Its response must decode: a retry would
/// otherwise find a record it cannot answer with, long after the install.
pub(crate) fn restore(batch: &mut sled::Batch, session: SnapshotSession) -> Result<(), DecodeError> {
    let record = StoredSession {
        seq: session.seq,
        last_index: session.last_index,
        response: session.response,
    };
    record.response()?;
    batch.insert(&codec::session_key(session.client_id), record.encode());
    batch.insert(&codec::session_expiry_key(session.last_index, session.client_id), &[]);
    Ok(())
}
