//! Snapshots of the state machine, driven through openraft's storage traits the way openraft drives
//! them: a build while applies continue holds exactly the state at its revision and installs into
//! a fresh store, which then goes on applying at the next revision; a builder pins its revision
//! against compaction. Restarts and damaged files are in `snapshot_files.rs`, a build racing an
//! install in `snapshot_races.rs`.
//!
//! Every test keeps an in-memory model of the key-value state (a `BTreeMap` updated from the same
//! commands that are applied) and compares the store against it key by key, including
//! `create_revision`, `mod_revision` and `version`. The model, the driver and the workloads are in
//! `snapshot_harness/`.

mod snapshot_harness;

use keel_storage::EntryPayload;
use keel_storage::{Entry, KeyRange, SnapshotReader};
use openraft::storage::RaftStateMachine;
use openraft::RaftSnapshotBuilder;
use rand::rngs::StdRng;
use rand::SeedableRng;
use snapshot_harness::*;
use tokio::io::{AsyncSeekExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_while_writes_continue() {
    const KEYS: u64 = 200_000;
    const MORE: usize = 15_000;
    let mut rng = StdRng::seed_from_u64(1);
    let dir = tempfile::tempdir().unwrap();
    let mut d = Driver::new(open(dir.path()));
    load(&mut d, &mut rng, KEYS).await;
    assert!(d.model.revision != KEYS && d.model.revision != d.index);
    assert!(d.model.kvs.len() < KEYS as usize);

    // openraft calls get_snapshot_builder between applies: it captures R and the applied log id.
    let mut builder = d.store.sm.get_snapshot_builder().await;
    let at_builder = d.model.clone();
    let applied_at_builder = d.last_log_id();
    let (applied, membership) = d.store.sm.applied_state().await.unwrap();
    assert_eq!(applied, Some(applied_at_builder));
    assert_eq!(membership.membership(), &members());
    assert!(membership.log_id().is_some());

    // Writes after the builder was created and before the build starts must not be in it.
    let mut after: Vec<Entry> = churn(&mut d, &mut rng, KEYS, KEYS, 1000);
    d.flush().await;

    // Then the build runs concurrently with more writes to the same keys.
    let build = tokio::spawn(async move {
        let snapshot = builder.build_snapshot().await;
        drop(builder);
        snapshot
    });
    let mut overlapped = 0;
    let mut n = 0;
    while after.len() < MORE {
        after.extend(churn(&mut d, &mut rng, KEYS, KEYS + 1000 + n, 250));
        n += 250;
        d.flush().await;
        if !build.is_finished() {
            overlapped += 1;
        }
    }
    let snapshot = build.await.unwrap().expect("build snapshot");
    eprintln!(
        "{overlapped} of {} apply calls completed while the build was running",
        (MORE - 1000) / 250
    );

    assert_eq!(snapshot.meta.last_log_id, Some(applied_at_builder));
    assert_eq!(snapshot.meta.last_membership, membership);
    // The source store kept every write, before, during and after the build.
    assert_matches(&d.store, &d.model, "source after the build");

    // The file itself holds exactly the state at R, in key order.
    let mut source = snapshot.snapshot;
    let bytes = read_all(&mut source).await;
    let (mut reader, header) = SnapshotReader::open(&bytes[..]).expect("snapshot header");
    assert_eq!(
        keel_storage::raft_position::to_meta(&header.raft).unwrap(),
        snapshot.meta
    );
    assert_eq!(header.revision, at_builder.revision);
    let mut want = at_builder.kvs.values();
    while let Some(kv) = reader.next_kv().expect("snapshot record") {
        assert_eq!(Some(&kv), want.next(), "snapshot record");
    }
    assert_eq!(want.next(), None, "snapshot is missing records");
    let (count, _, _) = reader.finish().expect("snapshot trailer");
    assert_eq!(count, at_builder.kvs.len() as u64);

    // A fresh node receives the snapshot through openraft's interface.
    let fresh_dir = tempfile::tempdir().unwrap();
    let mut fresh = open(fresh_dir.path());
    let mut rx = fresh.sm.snapshot_inbox().create_file().unwrap();
    source.seek(std::io::SeekFrom::Start(0)).await.unwrap();
    let copied = tokio::io::copy(&mut source, &mut rx).await.unwrap();
    rx.flush().await.unwrap();
    assert_eq!(copied, source.metadata().await.unwrap().len());
    fresh
        .sm
        .install_snapshot(&snapshot.meta, rx)
        .await
        .expect("install snapshot");

    // Exactly the state at revision R, not one write later.
    assert_matches(&fresh, &at_builder, "fresh store after install");
    assert_eq!(fresh.sm.reader().applied_index(), applied_at_builder.index);
    let (applied, m) = fresh.sm.applied_state().await.unwrap();
    assert_eq!(applied, snapshot.meta.last_log_id);
    assert_eq!(m, membership);
    let (meta, _) = current_snapshot(&mut fresh)
        .await
        .expect("installed snapshot is current");
    assert_eq!(meta, snapshot.meta);

    // openraft then applies the entries after the snapshot: the fresh node converges on the
    // source, revision for revision.
    let mut expected_revision = at_builder.revision;
    let mut replay = at_builder.clone();
    for chunk in after.chunks(APPLY_BATCH) {
        let want: Vec<u64> = chunk
            .iter()
            .map(|e| match &e.payload {
                EntryPayload::Normal(req) => {
                    expected_revision = replay.apply(&req.command);
                    expected_revision
                }
                _ => expected_revision,
            })
            .collect();
        let got: Vec<u64> = fresh
            .sm
            .apply_entries(chunk.to_vec())
            .unwrap()
            .iter()
            .map(|r| r.revision)
            .collect();
        assert_eq!(got, want);
    }
    assert_eq!(replay.kvs, d.model.kvs);
    assert_matches(&fresh, &d.model, "fresh store after replaying the later entries");
    assert_eq!(contents(&fresh), contents(&d.store));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applies_continue_at_next_revision_after_install() {
    let mut rng = StdRng::seed_from_u64(2);
    let dir = tempfile::tempdir().unwrap();
    let mut d = Driver::new(open(dir.path()));
    load(&mut d, &mut rng, 3_000).await;
    let snapshot = build(&mut d.store).await;
    let r = d.model.revision;

    // Little history on the new node, so compaction soon works on the installed versions.
    let fresh_dir = tempfile::tempdir().unwrap();
    let mut f = Driver::new(open_with_history(fresh_dir.path(), 100));
    let mut file = snapshot.snapshot;
    let bytes = read_all(&mut file).await;
    receive_and_install(&mut f.store, &snapshot.meta, &bytes)
        .await
        .expect("install");
    f.model = d.model.clone();
    f.index = d.index;
    assert_matches(&f.store, &f.model, "after install");

    // The next write takes revision R+1, and keys from the snapshot keep their history.
    let (old_key, old) = f
        .model
        .kvs
        .iter()
        .find(|(_, kv)| kv.version > 1)
        .map(|(k, kv)| (k.clone(), kv.clone()))
        .expect("an overwritten key");
    let gone = f.model.kvs.keys().find(|k| **k != old_key).unwrap().clone();
    f.push(put(b"brand-new", b"1"));
    f.push(put(&old_key, b"2"));
    f.push(delete(KeyRange::Key(b"not-there".to_vec())));
    f.push(delete(KeyRange::Key(gone.clone())));
    f.push(put(&gone, b"again"));
    f.flush().await;
    assert_eq!(f.model.revision, r + 4);

    let reader = f.store.sm.reader();
    let (new, rev) = reader.get(b"brand-new").unwrap();
    assert_eq!(rev, r + 4);
    let new = new.unwrap();
    assert_eq!((new.create_revision, new.mod_revision, new.version), (r + 1, r + 1, 1));
    let updated = reader.get(&old_key).unwrap().0.unwrap();
    assert_eq!(
        (updated.create_revision, updated.mod_revision, updated.version),
        (old.create_revision, r + 2, old.version + 1)
    );
    let recreated = reader.get(&gone).unwrap().0.unwrap();
    assert_eq!(
        (recreated.create_revision, recreated.mod_revision, recreated.version),
        (r + 4, r + 4, 1)
    );
    drop(reader);
    assert_matches(&f.store, &f.model, "after more applies");

    // Plenty more, enough for compaction to run over the installed versions.
    churn(&mut f, &mut rng, 3_000, 10_000, 3_000);
    f.flush().await;
    assert_matches(&f.store, &f.model, "after many more applies");
    // And the same holds after a restart.
    f.store.durability.sync().unwrap();
    drop(f.store);
    let store = open_with_history(fresh_dir.path(), 100);
    assert_matches(&store, &f.model, "after restart");
}

/// A builder pins its revision: compaction that would otherwise remove versions visible at R
/// waits until the build is done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builder_pins_its_revision_against_compaction() {
    let mut rng = StdRng::seed_from_u64(3);
    let dir = tempfile::tempdir().unwrap();
    let mut d = Driver::new(open_with_history(dir.path(), 10));
    load(&mut d, &mut rng, 2_000).await;
    let mut builder = d.store.sm.get_snapshot_builder().await;
    let at_builder = d.model.clone();
    // Overwrite and delete every key, in many small apply calls: without the pin, compaction
    // would catch up to within 10 revisions of the head and remove every version visible at R.
    let keys: Vec<Vec<u8>> = at_builder.kvs.keys().cloned().collect();
    for (i, k) in keys.iter().enumerate() {
        if i % 3 == 0 {
            d.push(delete(KeyRange::Key(k.clone())));
        } else {
            d.push(put(k, b"later"));
        }
        d.flush_if_full(20).await;
    }
    d.flush().await;
    let snapshot = builder.build_snapshot().await.unwrap();
    drop(builder);
    let fresh_dir = tempfile::tempdir().unwrap();
    let mut fresh = open(fresh_dir.path());
    let mut file = snapshot.snapshot;
    let bytes = read_all(&mut file).await;
    receive_and_install(&mut fresh, &snapshot.meta, &bytes).await.unwrap();
    assert_matches(&fresh, &at_builder, "snapshot built after compaction ran");
    assert_matches(&d.store, &d.model, "source");
}
