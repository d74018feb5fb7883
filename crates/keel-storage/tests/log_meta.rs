//! The log's small records (vote, committed index, purge point) are written apart from its
//! entries. sled 0.34 keeps values inline in a tree's leaves and rewrites a whole leaf, as one
//! blob file, when it consolidates it; with the records in the entries' tree, every
//! `save_committed` (which openraft runs on Raft's core task) touched the leaf that held the
//! newest entries, and with 1 MiB values sled wrote blobs of 6-11 MiB right there: the core (or
//! a runtime thread) stalled for 50-100 ms on a busy machine, and followers campaigned.

use keel_storage::*;
use openraft::storage::{RaftLogStorage, RaftLogStorageExt};
use openraft::EntryPayload;
use openraft::RaftLogReader;

/// Blob files sled has written so far (it names them by log sequence number and deletes them
/// only when the space is reclaimed, so the count only grows within this test).
fn blobs(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir.join("db").join("blobs")).map_or(0, |d| d.count())
}

fn large_entry(index: u64) -> Entry {
    let value = vec![(index % 251) as u8; 1024 * 1024];
    Entry {
        log_id: log_id_at(1, 1, index),
        payload: EntryPayload::Normal(Request::new(Command::Put(PutOp {
            key: format!("large-{index}").into_bytes(),
            value,
            prev_kv: false,
        }))),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recording_the_commit_index_writes_no_entry_data() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut store = keel_storage::open(dir.path(), &StoreConfig::default()).expect("open");
    // As on a member: append an entry, then record it as committed; sled splits a leaf of more
    // than 16 items in whichever call walks to it next.
    let mut written_by_records = 0;
    for i in 1..=48u64 {
        store.log.blocking_append([large_entry(i)]).await.expect("append");
        let before = blobs(dir.path());
        store
            .log
            .save_committed(Some(log_id_at(1, 1, i)))
            .await
            .expect("save committed");
        written_by_records += blobs(dir.path()) - before;
    }
    assert_eq!(
        written_by_records, 0,
        "recording the commit index made sled write {written_by_records} blob files (leaves of 1 MiB entries)"
    );
    store.durability.sync().expect("sync");
    assert_eq!(
        store.log.read_committed().await.expect("read committed"),
        Some(log_id_at(1, 1, 48))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_kept_among_the_entries_by_older_builds_are_moved_on_open() {
    let dir = tempfile::tempdir().expect("temp dir");
    let vote = Vote::new_committed(3, 2);
    {
        let mut store = keel_storage::open(dir.path(), &StoreConfig::default()).expect("open");
        store.log.blocking_append([large_entry(1)]).await.expect("append");
        // As an older build left them: in the entries' tree, none in `raft_meta`.
        let db = store.durability.db();
        let (tree, meta) = (db.open_tree("raft").unwrap(), db.open_tree("raft_meta").unwrap());
        meta.clear().unwrap();
        tree.insert(b"m:vote", codec::encode(&vote)).unwrap();
        tree.insert(b"m:committed", codec::encode(&Some(log_id_at(3, 2, 1))))
            .unwrap();
        store.durability.sync().expect("sync");
        let closed = std::sync::Arc::downgrade(&store.durability);
        drop((tree, meta));
        drop(store);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while closed.strong_count() > 0 {
            assert!(std::time::Instant::now() < deadline, "the store did not close");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
    let mut store = keel_storage::open(dir.path(), &StoreConfig::default()).expect("reopen");
    assert_eq!(store.log.read_vote().await.expect("read vote"), Some(vote));
    assert_eq!(
        store.log.read_committed().await.expect("read committed"),
        Some(log_id_at(3, 2, 1))
    );
    let tree = store.durability.db().open_tree("raft").unwrap();
    assert!(tree.get(b"m:vote").unwrap().is_none(), "the old record stays behind");
    assert_eq!(
        store.log.get_log_state().await.unwrap().last_log_id,
        Some(log_id_at(1, 1, 1))
    );
}

/// openraft's storage contract: `read_committed` returns what `save_committed` last saved. The
/// record reaches sled later, on the flusher thread (see "No sled call on Raft's core"), so a
/// read straight from sled could return an older index: this test's predecessor above saw 47
/// after saving 48 on a busy machine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_committed_index_reads_back_at_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut store = keel_storage::open(dir.path(), &StoreConfig::default()).expect("open");
    let mut stale = Vec::new();
    for i in 1..=2000u64 {
        store
            .log
            .save_committed(Some(log_id_at(1, 1, i)))
            .await
            .expect("save committed");
        let read = store.log.read_committed().await.expect("read committed");
        if read != Some(log_id_at(1, 1, i)) {
            stale.push((i, read.map(|l| l.index)));
        }
    }
    assert!(
        stale.is_empty(),
        "{} stale reads, the first: {:?}",
        stale.len(),
        stale.first()
    );
}
