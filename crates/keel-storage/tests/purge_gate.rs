//! The log is never purged past what the state machine holds durably (issue 11.1).
//!
//! openraft 0.9, on a follower that receives a snapshot covering index S, queues the state
//! machine's install of S and then, without waiting for it, purges the log up to S. If the purge
//! took effect at once, a member killed while it loads a large snapshot, or whose install fails,
//! would restart with its state machine at A < S and a log that starts after S: the entries
//! A+1..=S are gone and it can never start again. These tests run the purge next to the install
//! the way openraft does, and then reopen the store.

use std::path::Path;
use std::time::Duration;

use keel_storage::testing::torture_entry;
use keel_storage::*;
use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftSnapshotBuilder, RaftStateMachine};
use openraft::RaftLogReader;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

fn open(dir: &Path) -> Store {
    keel_storage::open(dir, &StoreConfig::default()).expect("open store")
}

/// A store whose log holds entries `1..=last`, all applied.
async fn store_with_applied(dir: &Path, last: u64) -> Store {
    let mut store = open(dir);
    let entries: Vec<_> = (1..=last).map(torture_entry).collect();
    store.log.blocking_append(entries.clone()).await.expect("append");
    store.sm.apply_entries(entries).expect("apply");
    store
}

/// The purge point and the state machine's applied index after reopening `dir`; also checks
/// that every entry after the applied index is still in the log, as openraft needs to start.
async fn reopen(dir: &Path) -> (Option<u64>, Option<u64>) {
    let mut store = open(dir);
    let state = store.log.get_log_state().await.expect("log state");
    let (applied, _) = store.sm.applied_state().await.expect("applied state");
    let (purged, applied) = (state.last_purged_log_id.map(|l| l.index), applied.map(|l| l.index));
    let from = applied.map_or(1, |a| a + 1);
    if let Some(last) = state.last_log_id.map(|l| l.index) {
        if from <= last {
            let entries = store.log.try_get_log_entries(from..=last).await.expect("read log");
            assert_eq!(
                entries.len() as u64,
                last - from + 1,
                "entries {from}..={last} after the applied index are all present"
            );
        }
    }
    (purged, applied)
}

/// apply 1..5, purge(20) beside an install of 20 that fails: the purge must not land.
/// (Before the fix the purge returned at once and the reopened store had purged 20 > applied 5.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_beside_a_failed_install_does_not_pass_the_applied_index() {
    let dir = tempfile::tempdir().expect("temp dir");
    {
        let mut store = store_with_applied(dir.path(), 5).await;
        let meta = SnapshotMeta {
            last_log_id: Some(keel_storage::log_id_at(1, 1, 20)),
            last_membership: StoredMembership::default(),
        };
        let (log, sm) = (&mut store.log, &mut store.sm);
        let purge = async { log.purge(keel_storage::log_id_at(1, 1, 20)).await };
        let install = async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let mut rx = sm.snapshot_inbox().create_file().expect("receive file");
            rx.write_all(b"KEELSNAP but not really a snapshot")
                .await
                .expect("write");
            rx.flush().await.expect("flush");
            sm.install_snapshot(&meta, rx).await
        };
        let (purged, installed) = tokio::time::timeout(Duration::from_secs(10), async { tokio::join!(purge, install) })
            .await
            .expect("the purge is answered once the install failed");
        assert!(installed.is_err(), "a garbage snapshot is refused");
        assert!(purged.is_err(), "the purge reports that it could not take effect");
        store.durability.sync().expect("sync");
    }
    let (purged, applied) = reopen(dir.path()).await;
    assert_eq!(applied, Some(5));
    assert!(purged <= applied, "purged {purged:?} is beyond applied {applied:?}");
}

/// A purge that waits for an install lands once the install has, and the reopened store is
/// consistent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_beside_an_install_lands_after_it() {
    let src_dir = tempfile::tempdir().expect("temp dir");
    let mut src = store_with_applied(src_dir.path(), 20).await;
    let snapshot = src
        .sm
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .expect("build");
    let mut file = snapshot.snapshot;
    file.seek(std::io::SeekFrom::Start(0)).await.expect("seek");
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).await.expect("read snapshot");
    let meta = snapshot.meta;
    let upto = meta.last_log_id.expect("snapshot of 20 entries");

    let dir = tempfile::tempdir().expect("temp dir");
    {
        let mut store = store_with_applied(dir.path(), 5).await;
        let (log, sm) = (&mut store.log, &mut store.sm);
        let purge = async { log.purge(upto).await };
        let install = async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let mut rx = sm.snapshot_inbox().create_file().expect("receive file");
            rx.write_all(&bytes).await.expect("write");
            rx.flush().await.expect("flush");
            sm.install_snapshot(&meta, rx).await
        };
        let (purged, installed) = tokio::time::timeout(Duration::from_secs(10), async { tokio::join!(purge, install) })
            .await
            .expect("purge and install finish");
        installed.expect("install");
        purged.expect("the purge lands after the install");
        store.durability.sync().expect("sync");
    }
    let (purged, applied) = reopen(dir.path()).await;
    assert_eq!(applied, Some(20));
    assert_eq!(purged, Some(20));
}
