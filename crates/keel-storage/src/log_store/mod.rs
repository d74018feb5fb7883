//! The Raft log store: entries in one sled tree; vote, committed index and purge point in another.
//!
//! Layout: the `raft` tree maps `b'e' ‖ index (u64 BE)` → entry, so index order is byte order and
//! a range of indexes is one range scan; the `raft_meta` tree maps `b"m:vote"`, `b"m:committed"`,
//! `b"m:purged"` → metadata. Data directories written before keel kept the three records in
//! `raft`, after the entries; [`LogStore::open`] moves them.
//!
//! ## Why the records have a tree of their own
//! sled 0.34 keeps values inline in a tree's leaves, splits a leaf once it holds more than 16
//! items, and writes a node larger than its IO buffers as a blob file: whichever call walks to
//! a leaf that needs splitting or consolidating does that write, reader or writer. With 1 MiB
//! entries a leaf holds up to 16 MiB, and the records sat in the leaf after the newest
//! entries. openraft runs `save_committed` on Raft's core task, after every commit: it split
//! those leaves there, writing 6-14 MiB of blobs, 30-100 ms on a busy machine, while the core
//! could neither send heartbeats nor answer votes (`tests/log_meta.rs`; the busy-machine test,
//! now t30, lost its leader this way). The records' tree holds three small values.
//!
//! ## Purging
//! The log is never purged past the state machine's applied index. Had a purge to S landed before
//! the state machine reached S, a member killed while loading a large snapshot (or whose install
//! failed its checksum) would restart with its state machine at A < S and a log that starts after
//! S, and could never start again. openraft 0.9 purged a follower's log up to a received snapshot
//! without waiting for its install; openraft 0.10 orders the purge after the install, and keel
//! keeps its own guard anyway, because the rule is keel's to keep: `purge` first waits until the
//! state machine has applied (or installed) S, then syncs, so that the state machine is durable
//! at S before the purge point is written. If the state machine fails instead (openraft then stops
//! the node), the purge fails and nothing is purged. A member's own snapshots never wait: they
//! cover only what is applied.
//!
//! `purge` then records the new purge point and returns; from then on reads skip the purged entries,
//! and a background thread deletes them, a chunk per sled batch. openraft awaits `purge` inside
//! its core loop, and deleting a snapshot interval's worth of entries (10,000 by default, batch
//! entries of up to 64 KiB each) at once stalled a follower's core for ~300 ms: long enough to
//! miss heartbeats and start an election. Entries left behind by a crash are deleted after the
//! next open.
//!
//! ## Group commit, and the unwritten tail
//! `append` puts the encoded entries into an in-memory tail (`Tail`; from then on readers see
//! them, as openraft requires) and hands them, with the completion callback, to the flusher
//! thread. The flusher writes them into sled, takes every other append waiting, runs one
//! [`Durability::sync`] for all of them, and only then completes them. openraft awaits `append`
//! in its core loop, which also handles heartbeats and election timers: inserting a MiB into sled
//! took hundreds of milliseconds on a saturated machine, long enough for a follower to campaign.
//! Now `append` costs a map insert. openraft 0.10 does not wait for the callback before it
//! replicates, so a leader sends entries to its followers while its own write and sync run, and
//! counts itself toward the quorum only once the callback has fired.
//!
//! Readers take the tail's entries first and then read sled: the flusher inserts an entry into
//! sled before it drops it from the tail, so every appended entry is in one or the other
//! throughout. `truncate_after` drops the truncated entries from the tail at once and has the
//! flusher delete them from sled after any earlier appends are written, then syncs. The flusher takes every callback that
//! is waiting, runs one [`Durability::sync`] for all of them, and only then completes them. While
//! one fdatasync runs, further appends queue up and share the next one, so throughput rises with
//! load instead of being capped by the disk's sync rate. The fsync runs on its own OS thread, never
//! on the async runtime.
//!
//! ## What must be durable when
//! - `append`: its callback is completed only after the flusher has written its entries into
//!   sled and a sync that began after that write has finished. Entries still in the tail when the
//!   process dies were never acknowledged.
//! - `save_vote`: returns only after a sync, so a node never votes twice in one term.
//! - `truncate_after`: returns only after the flusher has deleted the entries (after writing
//!   every earlier append) and synced, so entries a leader overwrote cannot reappear after a crash
//!   and make this node's log look longer than what it acknowledged.
//! - `purge` and `save_committed`: not synced. Losing a purge leaves extra entries that are
//!   purged again; losing the committed index only delays re-applying entries the leader will
//!   report as committed anyway. The next sync of any kind persists both.
//!
//! ## No sled call on Raft's core
//! openraft awaits every log call in its core loop. The vote, committed index and purge point
//! are therefore queued to the flusher too (`Flush::Record`, `Flush::Purge`), which writes them
//! in order with the appends: `save_committed` and `purge` return at once (their values are
//! also kept in memory, for `get_log_state`, `read_committed` and the metrics), and `save_vote`
//! waits for the sync after its record. The flusher writes a purge point before it hands the
//! deletion to the purger, so no deletion is durable without its record (the crash test catches
//! the reverse order: an acknowledged entry went missing). Records alone start no sync.
//!
//! ## Applies wait for the write
//! The state machine lives in the same sled database, and sled recovers a prefix of what it was
//! given, so state N must never reach sled before log entry N does. The flusher writes entries
//! after `append` returns, while a leader commits on its followers' acknowledgements and may
//! apply an entry before its own flusher has written it; a sync between the two, then a power
//! cut, left a member whose state machine was ahead of its log, and openraft refused to start it
//! (its purge point past its snapshot; t31, round 187 of 200). So the flusher publishes the
//! highest index it has written ([`LogStore::written`]) and the state machine waits for it
//! before applying an entry (`StateMachine::gate_applies_on`); followers never wait, since they
//! learn of a commit only after their own write and sync.
//!
//! ## Sled batches
//! sled 0.34's `apply_batch` (and its transactions) begins with `pin_log`, which seals the
//! current IO buffer before and after it reserves the batch's manifest. A sealed buffer is
//! written by one of sled's IO threads with a `pwrite` and a `sync_file_range` that waits for the
//! disk, however little it holds: under put load at 64 clients, each member wrote ~5 buffers
//! (median 380 bytes) per log sync, and those calls were the largest kernel cost on the leader.
//! So the log store uses a batch only where it needs one to be atomic: truncation (a crash
//! halfway must not leave a hole) and purge chunks. Appended entries are plain inserts in index
//! order, since sled recovers a prefix of its operations (see `flusher::Flushing::write`).
//!
//! ## Replication batches
//! Replication reads through [`openraft::RaftLogReader::limited_get_log_entries`], and keel's reader returns
//! at most [`REPLICATION_BATCH_BYTES`] of entries (at least one), so that one AppendEntries stays a
//! bounded amount of work for the follower's disk and for the link, whatever a lagging follower is
//! owed.

use std::fmt::Debug;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};

use openraft::storage::{IOFlushed, RaftLogStorage};
use openraft::{LogState, OptionalSend};
use tokio::sync::{oneshot, watch};

use crate::codec;
use crate::durability::sled_to_io;
use crate::durability::Durability;
use crate::types::{Entry, LogId, TypeConfig, Vote};

mod flusher;
mod read;

use flusher::{flusher, purger, Flush, Flusher, Flushing};
pub use read::LogReader;

/// The most entry bytes one replication read returns (a single larger entry still goes alone):
/// see "Replication batches".
pub const REPLICATION_BATCH_BYTES: usize = 1024 * 1024;

const ENTRY_PREFIX: u8 = b'e';
const VOTE_KEY: &[u8] = b"m:vote";
const COMMITTED_KEY: &[u8] = b"m:committed";
const PURGED_KEY: &[u8] = b"m:purged";

/// The index an entry key names.
fn entry_index(key: &[u8]) -> u64 {
    u64::from_be_bytes(key[1..9].try_into().expect("9-byte entry key"))
}

fn entry_key(index: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = ENTRY_PREFIX;
    k[1..].copy_from_slice(&index.to_be_bytes());
    k
}

/// Appended entries the flusher has not written into sled yet, by index: each with the number
/// of its append (so that the flusher, done writing an entry, does not drop a newer one at the
/// same index) and its log id.
#[derive(Default)]
pub(crate) struct Tail {
    entries: std::collections::BTreeMap<u64, (u64, LogId, sled::IVec)>,
    next: u64,
}

type SharedTail = Arc<std::sync::Mutex<Tail>>;

/// A mutex of this store; a panic while it was held leaves nothing half-done that matters here.
fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Counters for benchmarks and metrics.
#[derive(Debug, Default)]
pub struct LogStats {
    /// Entries appended.
    pub entries: AtomicU64,
    /// Group commits (syncs) run by the flusher.
    pub group_commits: AtomicU64,
    /// Time spent in those syncs, in microseconds.
    pub sync_micros: AtomicU64,
    /// Flush requests (appends and waits) the group commits completed.
    pub synced_requests: AtomicU64,
    /// The highest committed log index openraft has told this store (0: none).
    pub committed: AtomicU64,
    /// The committed index stored when the log was opened: what a restarted node must apply
    /// before it is ready to serve.
    pub committed_at_open: AtomicU64,
}

/// The Raft log store. Cloning is cheap; all clones share the flusher and purger threads, which
/// stop (and are joined) when the last clone is dropped.
#[derive(Clone)]
pub struct LogStore {
    tree: sled::Tree,
    /// The vote, committed index and purge point (see "Why the records have a tree of their own").
    meta: sled::Tree,
    dur: Arc<Durability>,
    flusher: Arc<Flusher>,
    stats: Arc<LogStats>,
    /// The first index that is not purged (entries below it may still await deletion).
    readable_from: Arc<AtomicU64>,
    /// The last purge point, which the flusher may not have recorded yet.
    purged: Arc<std::sync::Mutex<Option<LogId>>>,
    /// The last committed log id saved, which the flusher may not have recorded yet:
    /// `read_committed` answers from here, not from sled.
    committed: Arc<std::sync::Mutex<Option<LogId>>>,
    /// The state machine's progress: a purge waits for it (see "Purging").
    sm_progress: Option<watch::Receiver<crate::sm::Progress>>,
    tail: SharedTail,
    /// The highest index the flusher has written into sled (see "Applies wait for the write").
    written: Arc<watch::Sender<u64>>,
}

impl LogStore {
    /// Open the log store in `dur`'s database and start its flusher thread.
    pub fn open(dur: Arc<Durability>) -> io::Result<Self> {
        let tree = dur.db().open_tree("raft").map_err(crate::durability::sled_to_io)?;
        let meta = dur.db().open_tree("raft_meta").map_err(crate::durability::sled_to_io)?;
        move_records(&tree, &meta)?;
        let (flush_tx, flush_rx) = mpsc::channel();
        let stats = Arc::new(LogStats::default());
        let committed: Option<Option<LogId>> = read_meta_from(&meta, COMMITTED_KEY)?;
        let committed = committed.flatten();
        let committed_index = committed.map_or(0, |l| l.index);
        stats.committed.store(committed_index, Ordering::Relaxed);
        stats.committed_at_open.store(committed_index, Ordering::Relaxed);
        let tail = SharedTail::default();
        let last_written = tree
            .scan_prefix([ENTRY_PREFIX])
            .keys()
            .next_back()
            .transpose()
            .map_err(sled_to_io)?
            .map_or(0, |k| entry_index(&k));
        let written = Arc::new(watch::Sender::new(last_written));
        let purged: Option<LogId> = read_meta_from(&meta, PURGED_KEY)?;
        let (purge_tx, purge_rx) = mpsc::channel();
        if let Some(p) = purged {
            // Entries a crash left behind.
            let _ = purge_tx.send(p.index);
        }
        let flush = Flushing {
            dur: dur.clone(),
            stats: stats.clone(),
            tree: tree.clone(),
            meta: meta.clone(),
            tail: tail.clone(),
            purger: purge_tx,
            written: written.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("keel-log-flush".into())
            .spawn(move || flusher(flush, flush_rx))?;
        let (d, t) = (dur.clone(), tree.clone());
        let purge_thread = std::thread::Builder::new()
            .name("keel-log-purge".into())
            .spawn(move || purger(d, t, purge_rx))?;
        Ok(LogStore {
            tree,
            meta,
            dur,
            flusher: Arc::new(Flusher {
                tx: Some(flush_tx),
                thread: Some(thread),
                purge_thread: Some(purge_thread),
            }),
            stats,
            readable_from: Arc::new(AtomicU64::new(purged.map_or(0, |p| p.index + 1))),
            purged: Arc::new(std::sync::Mutex::new(purged)),
            committed: Arc::new(std::sync::Mutex::new(committed)),
            sm_progress: None,
            tail,
            written,
        })
    }

    /// The highest log index written into sled so far; the state machine applies no entry
    /// above it (see "Applies wait for the write").
    pub fn written(&self) -> watch::Receiver<u64> {
        self.written.subscribe()
    }

    /// From now on, purge only what the state machine behind `progress` has applied (see
    /// "Purging"). [`crate::open`] does this; a log store used alone purges at once.
    pub fn gate_purges_on(&mut self, progress: watch::Receiver<crate::sm::Progress>) {
        self.sm_progress = Some(progress);
    }

    /// Purge at once, whatever the state machine holds: for tests of the log store alone
    /// (openraft's storage suite, the crash torture), which purge without applying anything.
    pub fn without_purge_gate(mut self) -> Self {
        self.sm_progress = None;
        self
    }

    /// Wait until the state machine has applied `index` and that is durable.
    async fn wait_applied(&mut self, index: u64) -> io::Result<()> {
        let Some(progress) = &mut self.sm_progress else {
            return Ok(());
        };
        let ready = |p: &crate::sm::Progress| p.applied >= index || p.failed;
        let applied = match progress.wait_for(ready).await {
            Ok(p) => p.applied,
            Err(_) => return Err(io::Error::other("the state machine is gone")),
        };
        if applied < index {
            return Err(io::Error::other(format!(
                "not purging the log to {index}: the state machine failed at {applied} (a failed snapshot install?)"
            )));
        }
        self.sync().await
    }

    /// Counters of appends and group commits.
    pub fn stats(&self) -> Arc<LogStats> {
        self.stats.clone()
    }

    /// Wait until everything written so far is durable.
    async fn sync(&self) -> io::Result<()> {
        let (tx, rx) = oneshot::channel();
        self.flusher.send(Flush::Notify(tx))?;
        rx.await.map_err(|_| io::Error::other("log flusher has stopped"))?
    }

    fn read_meta<T: serde::de::DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, io::Error> {
        read_meta_from(&self.meta, key)
    }
}

/// Move the records that builds before `raft_meta` kept in the entries' tree. Each is inserted
/// into `meta` before it is removed from `tree` (sled keeps the order through a crash), and a
/// record already in `meta` is newer than any left in `tree`, so a move cut short by a crash is
/// finished at the next open. The next sync makes it durable; until then a crash only undoes it.
fn move_records(tree: &sled::Tree, meta: &sled::Tree) -> io::Result<()> {
    for key in [VOTE_KEY, COMMITTED_KEY, PURGED_KEY] {
        let Some(old) = tree.get(key).map_err(sled_to_io)? else {
            continue;
        };
        if meta.get(key).map_err(sled_to_io)?.is_none() {
            meta.insert(key, old).map_err(sled_to_io)?;
        }
        tree.remove(key).map_err(sled_to_io)?;
    }
    Ok(())
}

fn read_meta_from<T: serde::de::DeserializeOwned>(tree: &sled::Tree, key: &[u8]) -> Result<Option<T>, io::Error> {
    match tree.get(key).map_err(crate::durability::sled_to_io)? {
        None => Ok(None),
        Some(bytes) => codec::decode(&bytes).map(Some).map_err(io::Error::other),
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogReader;

    async fn get_log_state(&mut self) -> io::Result<LogState<TypeConfig>> {
        let last_purged = *lock(&self.purged);
        let last = self
            .tree
            .scan_prefix([ENTRY_PREFIX])
            .next_back()
            .transpose()
            .map_err(sled_to_io)?;
        let written = match last {
            Some((_, v)) => Some(codec::decode::<Entry>(&v).map_err(io::Error::other)?.log_id),
            None => None,
        };
        let unwritten = lock(&self.tail).entries.last_key_value().map(|(_, (_, id, _))| *id);
        // Purged entries may still await deletion.
        let last_log_id = written.max(unwritten).max(last_purged);
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        LogReader {
            tree: self.tree.clone(),
            meta: self.meta.clone(),
            readable_from: self.readable_from.clone(),
            tail: self.tail.clone(),
        }
    }

    async fn save_vote(&mut self, vote: &Vote) -> io::Result<()> {
        self.dur.check()?;
        self.flusher.send(Flush::Record(VOTE_KEY, codec::encode(vote)))?;
        self.sync().await
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> io::Result<()> {
        // Under the lock, so that the flusher receives the records in the order readers see.
        let mut last = lock(&self.committed);
        self.flusher
            .send(Flush::Record(COMMITTED_KEY, codec::encode(&committed)))?;
        *last = committed;
        drop(last);
        if let Some(c) = committed {
            self.stats.committed.fetch_max(c.index, Ordering::Relaxed);
        }
        Ok(())
    }

    async fn read_committed(&mut self) -> io::Result<Option<LogId>> {
        Ok(*lock(&self.committed))
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<TypeConfig>) -> io::Result<()>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        self.dur.check()?;
        let encoded: Vec<(LogId, sled::IVec)> = entries
            .into_iter()
            .map(|e| (e.log_id, sled::IVec::from(codec::encode(&e))))
            .collect();
        let mut items = Vec::with_capacity(encoded.len());
        {
            let mut tail = lock(&self.tail);
            for (id, bytes) in encoded {
                tail.next += 1;
                let number = tail.next;
                tail.entries.insert(id.index, (number, id, bytes.clone()));
                items.push((id.index, number, bytes));
            }
        }
        self.stats.entries.fetch_add(items.len() as u64, Ordering::Relaxed);
        self.flusher.send(Flush::Append(items, callback))
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> io::Result<()> {
        let from = last_log_id.map_or(0, |l| l.index + 1);
        // Readers stop seeing them now; sled's copies go once earlier appends are written.
        drop(lock(&self.tail).entries.split_off(&from));
        let (tx, rx) = oneshot::channel();
        self.flusher.send(Flush::Truncate(from, tx))?;
        rx.await.map_err(|_| io::Error::other("log flusher has stopped"))?
    }

    async fn purge(&mut self, log_id: LogId) -> io::Result<()> {
        self.wait_applied(log_id.index).await?;
        self.flusher.send(Flush::Purge(log_id))?;
        let mut purged = lock(&self.purged);
        *purged = (*purged).max(Some(log_id));
        drop(purged);
        self.readable_from.fetch_max(log_id.index + 1, Ordering::AcqRel);
        Ok(())
    }
}
