//! The state machine's data model, driven the way openraft drives it: `apply` with log entries,
//! reads through `KvReader` and the responses of `apply`. Every command is first checked with
//! `validate_request`, so the scenarios only contain what the server would really propose.
//!
//! This file: revisions and versions, previous pairs, and what a reopen keeps. Txn compares and
//! branches are in `data_model_txn.rs`, ranges in `data_model_ranges.rs`, history compaction in
//! `data_model_compaction.rs`; the store harness and builders in `data_model_harness/`.

mod data_model_harness;

use data_model_harness::*;
use keel_storage::EntryPayload;
use keel_storage::*;

// ---------------------------------------------------------------------------------------------
// Revisions and versions.

#[tokio::test]
async fn revision_counts_write_commands_not_log_entries() {
    let mut n = Node::new(10_000);
    assert_eq!(n.state(), (0, 0));
    assert_eq!(n.applied().await, (None, StoredMembership::default()));

    assert_eq!(n.run(put(b"a", b"1")).await, resp(1, put_r(None).0));
    assert_eq!(n.put(b"b", b"1").await, 2);

    // A txn with three writes is one revision, shared by all of them.
    let writes = vec![tput(b"c", b"1"), tput(b"a", b"2"), tdel(key(b"b"), false)];
    assert_eq!(n.ops(writes).await.0, 3);
    assert_eq!(n.get(b"a"), Some(kv(b"a", b"2", 1, 3, 2)));
    assert_eq!(n.get(b"c"), Some(kv(b"c", b"1", 3, 3, 1)));
    assert_eq!(n.get(b"b"), None);

    // Commands that change nothing take no revision.
    let r = n.run(del(key(b"missing"), true)).await;
    assert_eq!(r, resp(3, del_r(0, vec![]).0));
    assert_eq!(n.run(del(prefix(b"zz"), true)).await.revision, 3);
    assert_eq!(n.run(del(between(b"d", b"z"), false)).await.revision, 3);
    let everything = ranged(vec![kv(b"a", b"2", 1, 3, 2), kv(b"c", b"1", 3, 3, 1)]);
    let r = n.ops(vec![tget(prefix(b""))]).await;
    assert_eq!(r, (3, txn_r(true, vec![everything])));
    let never = cmp(b"a", CompareOp::Equal, CompareTarget::Version(99));
    let r = n.txn(vec![never], vec![tput(b"x", b"")], vec![]).await;
    assert_eq!(r, (3, txn_r(false, vec![])));
    assert_eq!(n.ops(vec![tdel(key(b"missing"), false)]).await.0, 3);

    // Blank and membership entries advance the applied log id, not the revision.
    assert_eq!(n.blank().await, resp(3, CommandResult::None));
    let mem = EntryPayload::Membership(membership());
    let r = n.apply_payloads(vec![mem]).await;
    assert_eq!(r, [resp(3, CommandResult::None)]);
    assert_eq!((n.index, n.store.sm.reader().applied_index()), (11, 11));
    let mem = StoredMembership::new(Some(log_id(11)), membership());
    assert_eq!(n.applied().await, (Some(log_id(11)), mem));
    assert_eq!(n.state(), (3, 2));

    // Several entries in one apply call: each response carries the revision after its entry.
    let normal = |cmd| EntryPayload::Normal(Request::new(cmd));
    let payloads = vec![
        normal(put(b"d", b"1")),
        EntryPayload::Blank,
        normal(put(b"e", b"1")),
        normal(del(key(b"missing"), false)),
        normal(put(b"d", b"2")),
    ];
    let r = n.apply_payloads(payloads).await;
    let revisions: Vec<u64> = r.iter().map(|r| r.revision).collect();
    assert_eq!(revisions, [4, 4, 5, 5, 6]);
    assert_eq!(n.state(), (6, 4));
    assert_eq!(n.get(b"d"), Some(kv(b"d", b"2", 4, 6, 2)));
    assert_eq!(n.applied().await.0, Some(log_id(16)));
}

#[tokio::test]
async fn key_metadata_across_overwrite_delete_and_recreate() {
    let mut n = Node::new(10_000);
    n.put(b"k", b"v1").await;
    assert_eq!(n.get(b"k"), Some(kv(b"k", b"v1", 1, 1, 1)));
    n.put(b"x", b"x").await;
    n.put(b"k", b"v2").await;
    assert_eq!(n.get(b"k"), Some(kv(b"k", b"v2", 1, 3, 2)));
    // Writing the same value again is still a write: new version, new mod revision.
    n.put(b"k", b"v2").await;
    assert_eq!(n.get(b"k"), Some(kv(b"k", b"v2", 1, 4, 3)));
    assert_eq!(n.state(), (4, 2));

    assert_eq!(n.run(del(key(b"k"), false)).await.revision, 5);
    assert_eq!((n.get(b"k"), n.state()), (None, (5, 1)));
    assert_eq!(n.all(), [kv(b"x", b"x", 2, 2, 1)]);

    // Re-created: a new life, with version 1 and a new create revision.
    n.put(b"k", b"v3").await;
    assert_eq!(n.get(b"k"), Some(kv(b"k", b"v3", 6, 6, 1)));
    // An empty value is a value.
    n.put(b"k", b"").await;
    assert_eq!(n.all(), [kv(b"k", b"", 6, 7, 2), kv(b"x", b"x", 2, 2, 1)]);
    assert_eq!(n.state(), (7, 2));
    // Values are bytes, 0x00 and 0xFF included.
    n.put(b"x", b"\x00\xff\x00").await;
    assert_eq!(n.get(b"x"), Some(kv(b"x", b"\x00\xff\x00", 2, 8, 2)));
}

#[tokio::test]
async fn prev_kv_is_returned_only_when_asked() {
    let mut n = Node::new(10_000);
    assert_eq!(n.run(put_prev(b"a", b"1")).await, resp(1, put_r(None).0));
    assert_eq!(n.run(put(b"a", b"2")).await, resp(2, put_r(None).0));
    let a2 = kv(b"a", b"2", 1, 2, 2);
    let r = n.run(put_prev(b"a", b"3")).await;
    assert_eq!(r, resp(3, put_r(Some(a2)).0));
    n.put(b"p/1", b"x").await; // 4
    n.put(b"p/2", b"y").await; // 5

    let r = n.run(del(key(b"a"), false)).await;
    assert_eq!(r, resp(6, del_r(1, vec![]).0));
    let r = n.run(del(prefix(b"p/"), true)).await;
    let gone = vec![kv(b"p/1", b"x", 4, 4, 1), kv(b"p/2", b"y", 5, 5, 1)];
    assert_eq!(r, resp(7, del_r(2, gone).0));
    // A tombstone is not a previous pair.
    assert_eq!(n.run(put_prev(b"a", b"4")).await, resp(8, put_r(None).0));
    assert_eq!(n.get(b"a"), Some(kv(b"a", b"4", 8, 8, 1)));

    let (rev, t) = n.ops(vec![TxnOp::Put(put_op(b"a", b"5", true))]).await;
    let prev = put_r(Some(kv(b"a", b"4", 8, 8, 1))).1;
    assert_eq!((rev, t), (9, txn_r(true, vec![prev])));
}

// ---------------------------------------------------------------------------------------------
// Reopen.

#[tokio::test]
async fn reopen_keeps_data_revision_and_applied_log_id() {
    let mut n = Node::new(10_000);
    n.put(b"a", b"1").await;
    n.put(b"a", b"2").await;
    n.put(b"gone", b"x").await;
    n.ops(vec![tput(b"b", b"\x00\xff"), tput(b"\xff\x00", b"z")]).await;
    n.run(del(key(b"gone"), false)).await;
    let mem = EntryPayload::Membership(membership());
    n.apply_payloads(vec![mem]).await;
    n.blank().await;
    let data = n.all();
    let a = kv(b"a", b"2", 1, 2, 2);
    let b = kv(b"b", b"\x00\xff", 4, 4, 1);
    assert_eq!(data, [a.clone(), b, kv(b"\xff\x00", b"z", 4, 4, 1)]);
    let applied = n.applied().await;
    let mem = StoredMembership::new(Some(log_id(6)), membership());
    assert_eq!(applied, (Some(log_id(7)), mem));

    let mut n = n.reopen().await;
    assert_eq!(n.all(), data);
    assert_eq!(n.get(b"gone"), None);
    assert_eq!(n.state(), (5, 3));
    assert_eq!(n.store.sm.reader().applied_index(), 7);
    assert_eq!(n.applied().await, applied);

    // Writing goes on where it stopped.
    assert_eq!(n.run(put_prev(b"a", b"3")).await, resp(6, put_r(Some(a)).0));
    assert_eq!(n.get(b"a"), Some(kv(b"a", b"3", 1, 6, 3)));
    n.put(b"gone", b"back").await;
    assert_eq!(n.get(b"gone"), Some(kv(b"gone", b"back", 7, 7, 1)));
    assert_eq!(n.state(), (7, 4));
    assert_eq!(n.applied().await.0, Some(log_id(9)));
}
