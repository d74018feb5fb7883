//! A snapshot build that races an install, as openraft lets it: a build overtaken by an install
//! returns the installed snapshot, and a build concurrent with an install never fails.
//!
//! Every test keeps an in-memory model of the key-value state (a `BTreeMap` updated from the same
//! commands that are applied) and compares the store against it key by key, including
//! `create_revision`, `mod_revision` and `version`. The model, the driver and the workloads are in
//! `snapshot_harness/`.

mod snapshot_harness;

use openraft::storage::RaftStateMachine;
use openraft::RaftSnapshotBuilder;
use rand::rngs::StdRng;
use rand::SeedableRng;
use snapshot_harness::*;

/// openraft spawns `build_snapshot` and goes on with the next state-machine command, which may be
/// installing a snapshot from the leader: the build then finds its tree dropped. It must not fail
/// (openraft treats a failed build as fatal); the installed snapshot is newer anyway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn build_overtaken_by_an_install_returns_the_installed_snapshot() {
    let mut rng = StdRng::seed_from_u64(7);
    let leader_dir = tempfile::tempdir().unwrap();
    let mut leader = Driver::new(open(leader_dir.path()));
    load(&mut leader, &mut rng, 3_000).await;
    let snapshot = build(&mut leader.store).await;
    let mut file = snapshot.snapshot;
    let bytes = read_all(&mut file).await;

    let dir = tempfile::tempdir().unwrap();
    let mut follower = Driver::new(open(dir.path()));
    load(&mut follower, &mut rng, 1_000).await;
    assert!(follower.last_log_id() < snapshot.meta.last_log_id.unwrap());
    let mut builder = follower.store.sm.get_snapshot_builder().await;
    receive_and_install(&mut follower.store, &snapshot.meta, &bytes)
        .await
        .expect("install");
    let built = builder.build_snapshot().await.expect("build overtaken by an install");
    drop(builder);
    assert_eq!(built.meta, snapshot.meta);
    let mut file = built.snapshot;
    assert_eq!(read_all(&mut file).await, bytes);
    assert_matches(&follower.store, &leader.model, "after install");
    assert_eq!(
        snapshot_files(dir.path()),
        vec![format!("{}.snap", keel_storage::sm::snapshot_file_stem(&snapshot.meta))]
    );
}

/// The same race with real concurrency: a follower without any snapshot yet builds its first one
/// while the leader's (small) snapshot is installed. Whichever way the two interleave, the build
/// must succeed and hand back either its own snapshot or the installed one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn build_concurrent_with_an_install_never_fails() {
    let mut rng = StdRng::seed_from_u64(8);
    let leader_dir = tempfile::tempdir().unwrap();
    let mut leader = Driver::new(open(leader_dir.path()));
    // The leader is far ahead in the log but holds few keys, so its snapshot installs quickly.
    leader.index = 1_000_000;
    load(&mut leader, &mut rng, 500).await;
    let snapshot = build(&mut leader.store).await;
    let mut file = snapshot.snapshot;
    let bytes = read_all(&mut file).await;

    let dir = tempfile::tempdir().unwrap();
    let mut follower = Driver::new(open(dir.path()));
    load(&mut follower, &mut rng, 30_000).await;
    let mut builder = follower.store.sm.get_snapshot_builder().await;
    let own_log_id = Some(follower.last_log_id());
    let build = tokio::spawn(async move { builder.build_snapshot().await });
    receive_and_install(&mut follower.store, &snapshot.meta, &bytes)
        .await
        .expect("install");
    let built = build.await.unwrap().expect("build concurrent with an install");
    assert!(
        built.meta.last_log_id == own_log_id || built.meta == snapshot.meta,
        "build returned {:?}",
        built.meta
    );
    eprintln!(
        "the build returned {}",
        if built.meta == snapshot.meta {
            "the installed snapshot"
        } else {
            "its own snapshot"
        }
    );
    assert_matches(&follower.store, &leader.model, "after install");
    let current = current_snapshot(&mut follower.store).await.unwrap();
    assert_eq!(current.0, snapshot.meta);
    assert_eq!(current.1, bytes);
    assert_eq!(
        snapshot_files(dir.path()),
        vec![format!("{}.snap", keel_storage::sm::snapshot_file_stem(&snapshot.meta))]
    );
}
