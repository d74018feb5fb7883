//! `KvReader::hash_kv` (etcd's HashKV) and the history floor across snapshot installs.

mod snapshot_harness;

use keel_storage::{Command, CommandResult, Entry, EntryPayload, KeyRange, RangeOp, ReadError, Request};
use snapshot_harness::*;

/// The same writes on every member: puts and deletes over a few keys, `n` revisions.
fn write_load(d: &mut Driver, n: u64) {
    for i in 0..n {
        let k = format!("k{}", i % 7).into_bytes();
        if i % 5 == 4 {
            d.push(delete(KeyRange::Key(k)));
        } else {
            d.push(put(&k, format!("v{i}").as_bytes()));
        }
    }
}

/// Propose `Compact(rev)` and apply until the member has compacted that far.
async fn compact(d: &mut Driver, rev: u64) {
    let current = d.model.revision;
    d.push_payload(EntryPayload::Normal(Request::new(Command::Compact(rev))), current);
    d.flush().await;
    while d.store.sm.reader().compacted() < rev {
        d.push_blank();
        d.flush().await;
    }
}

#[tokio::test]
async fn members_with_the_same_history_hash_alike() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut a = Driver::new(open(da.path()));
    let mut b = Driver::new(open(db.path()));
    for d in [&mut a, &mut b] {
        write_load(d, 40);
        d.flush().await;
    }
    let rev = a.model.revision;
    let (ra, rb) = (a.store.sm.reader(), b.store.sm.reader());
    assert_eq!(ra.hash_kv(0).unwrap(), rb.hash_kv(0).unwrap());
    assert_eq!(ra.hash_kv(0).unwrap(), ra.hash_kv(rev).unwrap());
    assert_eq!(ra.hash_kv(10).unwrap(), rb.hash_kv(10).unwrap());
    assert_ne!(ra.hash_kv(10).unwrap().0, ra.hash_kv(11).unwrap().0);
    assert!(matches!(ra.hash_kv(rev + 1), Err(ReadError::FutureRevision { .. })));

    // A write one member did not make shows.
    b.push(put(b"extra", b"1"));
    b.flush().await;
    assert_ne!(ra.hash_kv(0).unwrap().0, rb.hash_kv(0).unwrap().0);
    assert_eq!(
        ra.hash_kv(rev).unwrap(),
        rb.hash_kv(rev).unwrap(),
        "at the common revision"
    );

    for d in [&mut a, &mut b] {
        compact(d, 20).await;
    }
    let (ha, hb) = (ra.hash_kv(rev).unwrap(), rb.hash_kv(rev).unwrap());
    assert_eq!((ha, ha.1), (hb, 20));
    assert!(matches!(ra.hash_kv(19), Err(ReadError::Compacted { compacted: 20 })));
    assert_eq!(ra.hash_kv(20).unwrap().1, 20);
}

#[tokio::test]
async fn an_installed_snapshot_sets_the_floor_and_hashes_as_a_compacted_member() {
    let (da, dc) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut a = Driver::new(open(da.path()));
    write_load(&mut a, 30);
    a.flush().await;
    compact(&mut a, 10).await;
    let rev = a.model.revision;
    let mut snapshot = build(&mut a.store).await;
    let bytes = read_all(&mut snapshot.snapshot).await;

    let mut c = open(dc.path());
    receive_and_install(&mut c, &snapshot.meta, &bytes).await.unwrap();
    let reader = c.sm.reader();
    assert_eq!(reader.compacted(), rev);
    let op = RangeOp::new(KeyRange::Prefix(vec![]));
    assert!(matches!(
        reader.range_at(&op, rev - 1, usize::MAX),
        Err(ReadError::Compacted { compacted }) if compacted == rev
    ));
    // The installed member has no history below the snapshot: a Compact there is refused.
    let entry = Entry {
        log_id: log_id(a.index + 1),
        payload: EntryPayload::Normal(Request::new(Command::Compact(15))),
    };
    let r = c.sm.apply_entries(vec![entry]).unwrap();
    assert_eq!(r[0].result, CommandResult::Compacted { compacted: rev });

    // The member that compacted to the snapshot's revision by steps holds the same versions.
    compact(&mut a, rev).await;
    assert_eq!(a.store.sm.reader().hash_kv(rev).unwrap(), reader.hash_kv(rev).unwrap());
}
