//! Snapshot files on disk, driven through openraft's storage traits the way openraft drives them:
//! the current snapshot survives a restart (and what a crash leaves in `snapshots/` is cleared
//! away), and a received snapshot that is damaged, or does not match what Raft announced, is
//! refused and changes nothing.
//!
//! Every test keeps an in-memory model of the key-value state (a `BTreeMap` updated from the same
//! commands that are applied) and compares the store against it key by key, including
//! `create_revision`, `mod_revision` and `version`. The model, the driver and the workloads are in
//! `snapshot_harness/`.

mod snapshot_harness;

use openraft::storage::RaftStateMachine;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use snapshot_harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn current_snapshot_survives_restart() {
    let mut rng = StdRng::seed_from_u64(4);
    let dir = tempfile::tempdir().unwrap();
    let mut d = Driver::new(open(dir.path()));
    assert!(d.store.sm.get_current_snapshot().await.unwrap().is_none());
    load(&mut d, &mut rng, 3_000).await;

    let first = build(&mut d.store).await;
    let mut first_file = first.snapshot;
    let first_bytes = read_all(&mut first_file).await;
    drop(first_file);
    let (meta, bytes) = current_snapshot(&mut d.store).await.unwrap();
    assert_eq!(meta, first.meta);
    assert_eq!(bytes, first_bytes);
    assert_eq!(
        snapshot_files(dir.path()),
        vec![format!("{}.snap", keel_storage::sm::snapshot_file_stem(&first.meta))]
    );

    churn(&mut d, &mut rng, 3_000, 5_000, 1_000);
    d.flush().await;
    let second = build(&mut d.store).await;
    assert_eq!(second.meta.last_log_id, Some(d.last_log_id()));
    assert_ne!(second.meta.last_log_id, first.meta.last_log_id);
    let mut second_file = second.snapshot;
    let second_bytes = read_all(&mut second_file).await;
    drop(second_file);
    assert_ne!(second_bytes, first_bytes);
    let (meta, bytes) = current_snapshot(&mut d.store).await.unwrap();
    assert_eq!(meta, second.meta);
    assert_eq!(bytes, second_bytes);
    // The older file is gone.
    let only = vec![format!("{}.snap", keel_storage::sm::snapshot_file_stem(&second.meta))];
    assert_eq!(snapshot_files(dir.path()), only);

    // Restart. Plant what a crash could leave behind: the older snapshot (as if its removal was
    // lost), an unreadable .snap, a half-written build and a half-received transfer.
    let model = d.model.clone();
    drop(d);
    let snaps = dir.path().join("snapshots");
    std::fs::write(
        snaps.join(format!("{}.snap", keel_storage::sm::snapshot_file_stem(&first.meta))),
        &first_bytes,
    )
    .unwrap();
    std::fs::write(snaps.join("garbage.snap"), b"not a snapshot").unwrap();
    std::fs::write(snaps.join("9-9-9-9.snap.tmp"), &second_bytes[..second_bytes.len() / 2]).unwrap();
    std::fs::write(snaps.join("recv-1-1.part"), &first_bytes[..100]).unwrap();

    let mut store = open(dir.path());
    let (meta, bytes) = current_snapshot(&mut store).await.expect("snapshot after restart");
    assert_eq!(meta, second.meta);
    assert_eq!(bytes, second_bytes);
    assert_eq!(snapshot_files(dir.path()), only);
    // Builds sync the state machine, and nothing was applied after the second one.
    assert_matches(&store, &model, "after restart");
    let (applied, _) = store.sm.applied_state().await.unwrap();
    assert_eq!(applied, second.meta.last_log_id);

    // And a snapshot built after the restart replaces it.
    let third = build(&mut store).await;
    assert_eq!(third.meta.last_log_id, second.meta.last_log_id);
    drop(third);
    let (meta, _) = current_snapshot(&mut store).await.unwrap();
    assert_eq!(
        snapshot_files(dir.path()),
        vec![format!("{}.snap", keel_storage::sm::snapshot_file_stem(&meta))]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_snapshots_are_refused_and_change_nothing() {
    // The snapshot to send, from another node.
    let mut rng = StdRng::seed_from_u64(5);
    let src_dir = tempfile::tempdir().unwrap();
    let mut src = Driver::new(open(src_dir.path()));
    load(&mut src, &mut rng, 4_000).await;
    let snapshot = build(&mut src.store).await;
    let mut file = snapshot.snapshot;
    let good = read_all(&mut file).await;
    drop(file);
    assert!(good.len() > 3 * 64 * 1024, "the snapshot spans several blocks");

    // The target has its own, different state and snapshot.
    let dir = tempfile::tempdir().unwrap();
    let mut t = Driver::new(open(dir.path()));
    let mut rng_t = StdRng::seed_from_u64(6);
    load(&mut t, &mut rng_t, 1_500).await;
    let own = build(&mut t.store).await;
    drop(own.snapshot);
    t.push(put(b"after-own-snapshot", b"x"));
    t.flush().await;
    let own_state = t.store.sm.applied_state().await.unwrap();
    let own_current = current_snapshot(&mut t.store).await.unwrap();
    assert_eq!(own_current.0, own.meta);
    let own_files = snapshot_files(dir.path());

    let mut flipped = good.clone();
    flipped[good.len() / 2] ^= 0x01;
    let mut garbage = vec![0u8; 200_000];
    rng.fill(&mut garbage[..]);
    let mut trailing = good.clone();
    trailing.push(0);
    let mut wrong_magic = good.clone();
    wrong_magic[0] = b'X';
    let cases: Vec<(&str, &[u8])> = vec![
        ("truncated to half", &good[..good.len() / 2]),
        ("missing the last byte", &good[..good.len() - 1]),
        ("cut inside the header", &good[..20]),
        ("empty", &[]),
        ("one flipped bit in the middle", &flipped),
        ("one byte after the trailer", &trailing),
        ("bad magic", &wrong_magic),
        ("random garbage", &garbage),
    ];
    for (what, bytes) in cases {
        let result = receive_and_install(&mut t.store, &snapshot.meta, bytes).await;
        assert!(result.is_err(), "{what}: install accepted a damaged snapshot");
        assert_matches(&t.store, &t.model, what);
        assert_eq!(t.store.sm.applied_state().await.unwrap(), own_state, "{what}");
        assert_eq!(
            current_snapshot(&mut t.store).await.as_ref(),
            Some(&own_current),
            "{what}"
        );
        // No .snap or .tmp left behind. (The refused received file stays until the next install
        // or restart; openraft stops the node when an install fails, so that is the restart.)
        let files: Vec<String> = snapshot_files(dir.path())
            .into_iter()
            .filter(|f| !f.ends_with(".part"))
            .collect();
        assert_eq!(files, own_files, "{what}");
    }

    // A snapshot whose file does not match what Raft announced is refused too.
    let mut other_meta = snapshot.meta.clone();
    other_meta.last_log_id = Some(log_id(snapshot.meta.last_log_id.unwrap().index + 1));
    assert!(receive_and_install(&mut t.store, &other_meta, &good).await.is_err());
    assert_matches(&t.store, &t.model, "mismatched meta");

    // The target still works: it applies, survives a restart, and then accepts the good file.
    t.push(put(b"after-refusals", b"y"));
    t.flush().await;
    assert_matches(&t.store, &t.model, "apply after refusals");
    t.store.durability.sync().unwrap();
    let model = t.model.clone();
    drop(t);
    let mut store = open(dir.path());
    assert_matches(&store, &model, "restart after refusals");
    assert_eq!(current_snapshot(&mut store).await.map(|(m, _)| m), Some(own.meta));
    receive_and_install(&mut store, &snapshot.meta, &good)
        .await
        .expect("install the intact snapshot");
    assert_matches(&store, &src.model, "after installing the intact snapshot");
    assert_eq!(
        snapshot_files(dir.path()),
        vec![format!("{}.snap", keel_storage::sm::snapshot_file_stem(&snapshot.meta))]
    );
}
