//! Purging the log: reads skip purged entries at once, the entries are deleted in the
//! background, and entries a crash (or a stopped purger) left behind are deleted after reopening.

use std::time::{Duration, Instant};

use keel_storage::testing::torture_entry;
use keel_storage::*;
use openraft::storage::{RaftLogStorage, RaftLogStorageExt};
use openraft::RaftLogReader;

/// Entries physically in the log tree, by index.
fn stored_indexes(store: &Store) -> Vec<u64> {
    let tree = store.durability.db().open_tree("raft").expect("raft tree");
    tree.scan_prefix([b'e'])
        .keys()
        .map(|k| u64::from_be_bytes(k.expect("scan")[1..].try_into().expect("9-byte key")))
        .collect()
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A store in `dir` whose log holds entries `1..=last`, all applied (the log is never purged
/// past the state machine, see purge_gate.rs).
async fn store_with_entries(dir: &std::path::Path, last: u64) -> Store {
    let mut store = keel_storage::open(dir, &StoreConfig::default()).expect("open");
    let entries: Vec<_> = (1..=last).map(torture_entry).collect();
    store.log.blocking_append(entries.clone()).await.expect("append");
    store.sm.apply_entries(entries).expect("apply");
    store
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purged_entries_are_unreadable_at_once_and_deleted_in_the_background() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut store = store_with_entries(dir.path(), 1000).await;

    let upto = torture_entry(700).log_id;
    store.log.purge(upto).await.expect("purge");
    let state = store.log.get_log_state().await.expect("log state");
    assert_eq!(state.last_purged_log_id, Some(upto));
    assert_eq!(state.last_log_id, Some(torture_entry(1000).log_id));
    let read = store.log.try_get_log_entries(1..=1000).await.expect("read");
    assert_eq!(
        read.first().map(|e| e.log_id.index),
        Some(701),
        "purged entries are not read"
    );
    assert_eq!(read.len(), 300);
    wait_until("entries up to 700 are deleted", || {
        stored_indexes(&store) == (701..=1000).collect::<Vec<_>>()
    });

    // Everything purged: the last log id is the purge point, even before the deletion.
    let all = torture_entry(1000).log_id;
    store.log.purge(all).await.expect("purge all");
    let state = store.log.get_log_state().await.expect("log state");
    assert_eq!(state.last_log_id, Some(all));
    assert!(store.log.try_get_log_entries(..).await.expect("read").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_left_behind_are_deleted_after_reopening() {
    let dir = tempfile::tempdir().expect("temp dir");
    {
        let store = store_with_entries(dir.path(), 300).await;
        // As if a crash came between the purge point and the deletion: record it by hand.
        let tree = store.durability.db().open_tree("raft_meta").expect("raft_meta tree");
        tree.insert(b"m:purged", codec::encode(&torture_entry(200).log_id))
            .expect("insert");
        store.durability.sync().expect("sync");
        let db = std::sync::Arc::downgrade(&store.durability);
        drop(tree);
        drop(store);
        wait_until("the store is closed", || db.strong_count() == 0);
    }
    let mut store = keel_storage::open(dir.path(), &StoreConfig::default()).expect("reopen");
    let read = store.log.try_get_log_entries(..).await.expect("read");
    assert_eq!(read.first().map(|e| e.log_id.index), Some(201));
    wait_until("entries up to 200 are deleted", || {
        stored_indexes(&store) == (201..=300).collect::<Vec<_>>()
    });
}
