//! The flusher and purger threads: every write to the log's sled trees, in order, with one sync
//! per group of appends (see "Group commit, and the unwritten tail" and "Purging" in the module
//! essay).

use std::io;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};

use openraft::storage::IOFlushed;
use tokio::sync::{oneshot, watch};

use super::{entry_index, entry_key, lock, LogStats, SharedTail, ENTRY_PREFIX, PURGED_KEY};
use crate::codec;
use crate::durability::{sled_to_io, Durability};
use crate::types::{LogId, TypeConfig};

/// Work for the flusher thread, in the order it was sent: complete each once a sync has covered it.
pub(super) enum Flush {
    /// Write these entries (index, tail number, encoded entry), then report.
    Append(Vec<(u64, u64, sled::IVec)>, IOFlushed<TypeConfig>),
    /// Write this record (key, encoded value) into `raft_meta`; synced with whatever comes next.
    Record(&'static [u8], Vec<u8>),
    /// Record this purge point, then have the purger delete the entries up to it. In this
    /// order: sled keeps it through a crash, so no deletion is ever durable without its record.
    Purge(LogId),
    /// Delete every entry from this index on.
    Truncate(u64, oneshot::Sender<io::Result<()>>),
    Notify(oneshot::Sender<io::Result<()>>),
}

/// Log appends and syncs slower than this are logged.
const SLOW: std::time::Duration = std::time::Duration::from_millis(100);

/// Entries deleted per sled batch by the purger.
const PURGE_CHUNK: u64 = 256;

pub(super) struct Flusher {
    pub(super) tx: Option<mpsc::Sender<Flush>>,
    pub(super) thread: Option<std::thread::JoinHandle<()>>,
    pub(super) purge_thread: Option<std::thread::JoinHandle<()>>,
}

impl Flusher {
    pub(super) fn send(&self, req: Flush) -> io::Result<()> {
        self.tx
            .as_ref()
            .and_then(|tx| tx.send(req).ok())
            .ok_or_else(|| io::Error::other("log flusher has stopped"))
    }
}

impl Drop for Flusher {
    /// Close the channels and wait for the threads, so the database is closed when the store is.
    fn drop(&mut self) {
        drop(self.tx.take());
        for t in [self.thread.take(), self.purge_thread.take()].into_iter().flatten() {
            let _ = t.join();
        }
    }
}

/// The purger: delete entries up to each purge point it is sent, a chunk per batch. Entries are
/// dense, so it deletes by index from the first one left, without reading them.
pub(super) fn purger(dur: Arc<Durability>, tree: sled::Tree, rx: mpsc::Receiver<u64>) {
    while let Ok(upto) = rx.recv() {
        let upto = rx.try_iter().fold(upto, u64::max);
        let first = match tree.range(entry_key(0)..=entry_key(upto)).keys().next() {
            None => continue,
            Some(Ok(k)) => entry_index(&k),
            Some(Err(e)) => {
                tracing::warn!(error = %e, "cannot read the log to purge it; purged entries stay on disk");
                continue;
            }
        };
        let mut next = first;
        while next <= upto {
            let end = upto.min(next.saturating_add(PURGE_CHUNK - 1));
            let mut batch = sled::Batch::default();
            for i in next..=end {
                batch.remove(&entry_key(i));
            }
            if let Err(e) = tree.apply_batch(batch) {
                tracing::warn!(error = %e, "deleting purged log entries failed; they stay on disk");
                break;
            }
            next = end + 1;
        }
    }
    // Held so that the database outlives this thread's last write.
    drop(dur);
}

/// What the flusher works on.
pub(super) struct Flushing {
    pub(super) dur: Arc<Durability>,
    pub(super) stats: Arc<LogStats>,
    pub(super) tree: sled::Tree,
    pub(super) meta: sled::Tree,
    pub(super) tail: SharedTail,
    /// The purger's queue.
    pub(super) purger: mpsc::Sender<u64>,
    pub(super) written: Arc<watch::Sender<u64>>,
}

impl Flushing {
    /// Write appended entries into sled, then drop them from the tail (in this order: see
    /// "Group commit, and the unwritten tail").
    ///
    /// One plain insert per entry, in index order, not a sled batch: every `apply_batch` seals
    /// sled's IO buffer twice (sled 0.34's `pin_log`), and each sealed buffer is written with its
    /// own `pwrite` and a waited `sync_file_range` on sled's IO threads. Batches made about half
    /// of each member's buffer writes under load (see "Sled batches" in the module essay). The
    /// atomicity they gave is not needed here: sled recovers a prefix of the operations it was
    /// given, so a crash before the sync leaves the log with a prefix of these entries, which is
    /// what an unsynced append may leave.
    fn write(&self, items: &[(u64, u64, sled::IVec)]) -> io::Result<()> {
        let started = std::time::Instant::now();
        for (index, _, bytes) in items {
            self.tree.insert(entry_key(*index), bytes.clone()).map_err(sled_to_io)?;
        }
        let mut tail = lock(&self.tail);
        for (index, number, _) in items {
            if tail.entries.get(index).is_some_and(|(n, _, _)| n == number) {
                tail.entries.remove(index);
            }
        }
        drop(tail);
        if let Some((last, _, _)) = items.last() {
            self.written.send_modify(|w| *w = (*w).max(*last));
        }
        if started.elapsed() > SLOW {
            let took_ms = started.elapsed().as_millis() as u64;
            let bytes: usize = items.iter().map(|(_, _, b)| b.len()).sum();
            tracing::warn!(took_ms, entries = items.len(), bytes, "slow log write");
        }
        Ok(())
    }

    /// Record a purge point, then queue the deletion of the entries up to it.
    fn purge(&self, log_id: LogId) -> io::Result<()> {
        self.meta
            .insert(PURGED_KEY, codec::encode(&log_id))
            .map_err(sled_to_io)?;
        // A stopped purger only leaves entries on disk, to be deleted after the next open.
        let _ = self.purger.send(log_id.index);
        Ok(())
    }

    /// Delete every entry from index `from` on.
    fn truncate(&self, from: u64) -> io::Result<()> {
        self.written.send_modify(|w| *w = (*w).min(from.saturating_sub(1)));
        let mut batch = sled::Batch::default();
        for item in self.tree.range(entry_key(from)..[ENTRY_PREFIX + 1; 9]) {
            let (k, _) = item.map_err(sled_to_io)?;
            batch.remove(k);
        }
        self.tree.apply_batch(batch).map_err(sled_to_io)
    }
}

/// The flusher: writes and truncations in order, then one sync per batch of waiting requests.
pub(super) fn flusher(f: Flushing, rx: mpsc::Receiver<Flush>) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        batch.extend(rx.try_iter());
        // After a failed write nothing later is written: its callers, and every later one, are
        // told (openraft then stops), and no later entry lands after a hole.
        let mut failed: Option<io::Error> = None;
        for req in &batch {
            let done = match req {
                _ if failed.is_some() => Ok(()),
                Flush::Append(items, _) => f.write(items),
                Flush::Record(key, value) => f.meta.insert(key, value.as_slice()).map(drop).map_err(sled_to_io),
                Flush::Purge(log_id) => f.purge(*log_id),
                Flush::Truncate(from, _) => f.truncate(*from),
                Flush::Notify(_) => Ok(()),
            };
            if let Err(e) = done {
                failed = Some(e);
            }
        }
        if batch.iter().all(|r| matches!(r, Flush::Record(..) | Flush::Purge(_))) {
            // Records alone wait for nobody: the next sync persists them (see "What must be
            // durable when"). A failed one leaves sled failing every later write, which the
            // next append reports.
            if let Some(e) = failed {
                tracing::error!(error = %e, "writing a log record (commit index or purge point) failed");
            }
            continue;
        }
        let started = std::time::Instant::now();
        let result = match failed {
            Some(e) => Err(e),
            None => f.dur.sync(),
        };
        let took = started.elapsed();
        if took > SLOW {
            // As etcd's "slow fdatasync": followers answer only after this, so a slow disk shows
            // as a slow cluster.
            tracing::warn!(
                took_ms = took.as_millis() as u64,
                requests = batch.len(),
                "slow log sync"
            );
        }
        let stats = &f.stats;
        stats.sync_micros.fetch_add(took.as_micros() as u64, Ordering::Relaxed);
        stats.group_commits.fetch_add(1, Ordering::Relaxed);
        stats.synced_requests.fetch_add(batch.len() as u64, Ordering::Relaxed);
        for req in batch {
            // io::Error is not Clone; each waiter gets its own copy of the failure.
            let res = match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
            };
            match req {
                Flush::Append(_, cb) => cb.io_completed(res),
                Flush::Truncate(_, tx) | Flush::Notify(tx) => {
                    let _ = tx.send(res);
                }
                Flush::Record(..) | Flush::Purge(_) => {}
            }
        }
    }
}
