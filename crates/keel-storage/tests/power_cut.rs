//! Power cuts under the store: as `crash.rs`, but the store lives on a lazy filesystem
//! (keel-testkit's `lazyfs`) and every kill is followed by a power cut, which drops whatever the
//! disk had not been told to keep. A SIGKILL leaves the page cache; this leaves only what was
//! synced, which is what a machine that lost power comes back with.
//!
//! `KEEL_CRASH_ROUNDS` and `KEEL_CRASH_SEED` work as in `crash.rs`. Skipped, loudly, without FUSE.

mod torture;

use std::time::{Duration, Instant};

use keel_storage::testing::torture_entry;
use keel_storage::StoreConfig;
use keel_testkit::lazyfs::{self, LazyFs};
use rand::Rng;
use torture::{field, rng, rounds, sm_state, Torture};

/// The state machine applies while another thread syncs (as a node's log flusher does); after
/// each cut the reopened state must be exactly a clean application of entries 1..=applied, and
/// never behind the last snapshot.
#[test]
fn state_machine_is_a_prefix_after_a_power_cut_mid_apply() {
    if let Some(why) = lazyfs::unavailable() {
        eprintln!("SKIPPED state_machine_is_a_prefix_after_a_power_cut_mid_apply: no lazy filesystem: {why}");
        return;
    }
    let mut rng = rng("sm power cut");
    let mount = tempfile::tempdir().expect("tempdir");
    let disk = LazyFs::mount(mount.path()).expect("mount a lazy filesystem");
    let dir = mount.path().join("store");
    let reference_dir = tempfile::tempdir().expect("tempdir");
    let mut reference = keel_storage::open(reference_dir.path(), &StoreConfig::default()).expect("open reference");
    let mut reference_applied = 0u64;
    let mut durable = 0u64;
    for round in 0..rounds().min(30) {
        let child = Torture::spawn("sm", &dir, rng.random(), &["--sync-thread"]);
        let open = child.line(Duration::from_secs(60)).expect("child opened the store");
        assert!(open.starts_with("OPEN "), "{open}");
        let mut seen = |l: &str| match l.split_whitespace().next() {
            Some("SNAP") => durable = durable.max(field(l, 1)),
            Some("ERR") => panic!("torture child reported an error: {l}"),
            _ => {}
        };
        let deadline = Instant::now() + Duration::from_millis(rng.random_range(20..300));
        child.run_until(deadline, &mut seen);
        child.kill(&mut seen);
        disk.power_cut();

        let mut store = keel_storage::open(&dir, &StoreConfig::default()).expect("store reopens after a power cut");
        let (applied, rev, kvs) = sm_state(&mut store);
        assert!(
            applied >= durable,
            "round {round}: the state machine lost applies covered by a snapshot ({applied} < {durable})"
        );
        if applied > reference_applied {
            reference
                .sm
                .apply_entries((reference_applied + 1..=applied).map(torture_entry))
                .expect("reference apply");
            reference_applied = applied;
        }
        assert_eq!(
            applied, reference_applied,
            "round {round}: the state went back past what an earlier round verified and synced"
        );
        let (_, ref_rev, ref_kvs) = sm_state(&mut reference);
        assert_eq!(
            rev, ref_rev,
            "round {round}: revision differs from a clean apply of 1..={applied}"
        );
        assert!(
            kvs == ref_kvs,
            "round {round}: data differs from a clean apply of 1..={applied}: {} keys, {} expected",
            kvs.len(),
            ref_kvs.len()
        );
        // What was verified is durable before the next child starts from it.
        store.durability.sync().expect("sync");
        drop(store);
        eprintln!(
            "round {round}: applied {applied}, revision {rev}, {} keys, snapshot-durable {durable}, {} bytes dropped so far",
            kvs.len(),
            disk.counters().bytes_dropped
        );
    }
    assert!(reference_applied > 0, "the children applied nothing");
}
