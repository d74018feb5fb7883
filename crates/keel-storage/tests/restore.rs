//! Restore, end to end on one machine: a member staged by `keel_datadir::restore::stage` (what
//! `keelctl snapshot restore` runs) is built by `keel_storage::restore::open` at its first start,
//! holds the backed-up keys, sessions and revision with the new membership and its own vote, and
//! a start killed between loading the snapshot and forgetting the staged files finishes it again.

mod sessions_harness;

use std::collections::BTreeMap;
use std::path::Path;

use keel_datadir::restore::{pending, stage, PENDING_DIR};
use keel_storage::{restore, Request, StoreConfig};
use openraft::storage::{RaftLogReader, RaftLogStorage, RaftStateMachine};
use sessions_harness::*;

fn peers() -> BTreeMap<u64, String> {
    (1..=3).map(|i| (i, format!("10.9.0.{i}:7101"))).collect()
}

/// A store with keys and a remembered session, and a backup file of it in `dir`.
async fn backup(dir: &Path) -> (Node, std::path::PathBuf) {
    let mut src = Node::with_defaults();
    for i in 0..200u32 {
        src.send(Request::new(put(format!("k{i}").as_bytes(), &i.to_le_bytes())))
            .await;
    }
    src.send(with_session(77, 1, put(b"session-key", b"v"))).await;
    let (_, bytes) = build(&mut src.store).await;
    let file = dir.join("backup.snap");
    std::fs::write(&file, bytes).unwrap();
    (src, file)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

#[tokio::test]
async fn a_staged_member_is_built_at_its_first_open_even_if_that_is_cut_short() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut src, file) = backup(tmp.path()).await;
    let dir = tmp.path().join("member-2");
    stage(&dir, &file, 2, &peers(), "restored").unwrap();
    // Keep the staged files, to put them back as if the first open had been killed after
    // loading the snapshot and before forgetting them.
    let kept = tmp.path().join("kept");
    copy_dir(&dir.join(PENDING_DIR), &kept);

    for round in 0..2 {
        let mut store = restore::open(&dir, &StoreConfig::default()).await.unwrap();
        assert_eq!(
            pending(&dir).unwrap(),
            None,
            "round {round}: the staged restore is done"
        );
        assert_eq!(all_kvs(&store), all_kvs(&src.store), "round {round}");
        let (applied, membership) = store.sm.applied_state().await.unwrap();
        let (src_applied, _) = src.store.sm.applied_state().await.unwrap();
        assert_eq!(applied, src_applied);
        assert_eq!(membership.log_id(), &applied);
        let voters: Vec<u64> = membership.voter_ids().collect();
        assert_eq!(voters, [1, 2, 3]);
        assert_eq!(
            membership.get_node(&3).unwrap().peer_addr,
            "10.9.0.3:7101",
            "the new cluster's addresses"
        );
        let vote = store.log.read_vote().await.unwrap().expect("a vote");
        assert_eq!(vote.leader_id().node_id, 2);
        assert_eq!(vote.leader_id().term, applied.unwrap().leader_id.term);
        // The log is empty: openraft sees it as purged up to the snapshot.
        assert_eq!(store.log.get_log_state().await.unwrap().last_log_id, None);
        // The remembered session came along: a retry gets the same response.
        let sessions = snapshot_sessions(&session_state(&store).0);
        assert_eq!(sessions, snapshot_sessions(&session_state(&src.store).0));
        assert_eq!(sessions.len(), 1);
        drop(store);
        if round == 0 {
            copy_dir(&kept, &dir.join(PENDING_DIR));
        }
    }
}

#[tokio::test]
async fn a_staged_restore_over_other_state_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, file) = backup(tmp.path()).await;
    let dir = tmp.path().join("d");
    stage(&dir, &file, 1, &peers(), "t").unwrap();
    let kept = tmp.path().join("kept");
    copy_dir(&dir.join(PENDING_DIR), &kept);
    drop(restore::open(&dir, &StoreConfig::default()).await.unwrap());
    // Another file's restore staged over a store that already holds the first one.
    let other_dir = tmp.path().join("other");
    std::fs::create_dir(&other_dir).unwrap();
    let (_, other) = {
        let mut n = Node::with_defaults();
        n.send(Request::new(put(b"x", b"y"))).await;
        let (_, bytes) = build(&mut n.store).await;
        let f = other_dir.join("other.snap");
        std::fs::write(&f, bytes).unwrap();
        (n, f)
    };
    copy_dir(&kept, &dir.join(PENDING_DIR));
    std::fs::copy(&other, dir.join(PENDING_DIR).join("snapshot")).unwrap();
    let e = restore::open(&dir, &StoreConfig::default())
        .await
        .err()
        .expect("refused");
    assert!(e.to_string().contains("already holds entries"), "{e}");
    // Nothing was forgotten: the operator sees the same refusal until the directory is sorted out.
    assert!(pending(&dir).unwrap().is_some());
}
