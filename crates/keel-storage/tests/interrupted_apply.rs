//! An entry's writes reach sled as a redo record and then plain inserts (`sm::writes`): a crash
//! between them leaves a prefix, and opening the store finishes the entry, so the state is
//! exactly "after entry N" for some N. Here the crash is made by hand: an entry is applied, then
//! every write it made after its redo record is undone in the tree, as if the process had died
//! right after the redo record reached sled.

mod data_model_harness;

use data_model_harness::*;
use keel_storage::codec;

#[tokio::test]
async fn an_entry_cut_short_after_its_redo_record_is_finished_on_open() {
    let mut n = Node::new(1000);
    n.put(b"a", b"1").await;
    n.put(b"b", b"1").await;
    let tree = n.sm_tree();
    let meta_before = tree.get(b"m:meta").expect("read").expect("meta");
    let (rev_before, keys_before) = n.state();

    // Entry 3: a txn that overwrites a, deletes b and creates c (one revision, several writes).
    let (rev, result) = n
        .ops(vec![tput(b"a", b"2"), tdel(key(b"b"), false), tput(b"c", b"1")])
        .await;
    assert!(result.succeeded);
    assert_eq!(rev, rev_before + 1);
    let after: Vec<_> = n.all();

    // Undo everything but the redo record: the new versions go, and the metadata is as before.
    for k in [&b"a"[..], b"b", b"c"] {
        tree.remove(codec::version_key(k, rev)).expect("remove");
    }
    tree.remove(codec::history_key(rev)).expect("remove");
    tree.insert(b"m:meta", meta_before).expect("insert");
    tree.flush().expect("flush");
    drop(tree);

    let n = n.reopen().await;
    assert_eq!(
        n.state(),
        (rev, keys_before),
        "revision and key count (a, c) after entry 3"
    );
    assert_eq!(n.all(), after, "the pairs after entry 3");
    assert_eq!(n.get(b"b"), None);
    let history = n.sm_tree().get(codec::history_key(rev)).expect("read");
    assert!(history.is_some(), "entry 3's history record was written again");
}

#[tokio::test]
async fn a_finished_entry_is_not_written_again_on_open() {
    let mut n = Node::new(1000);
    n.put(b"a", b"1").await;
    n.put(b"a", b"2").await;
    let tree = n.sm_tree();
    // Were the redo record (entry 2's) replayed, a's version 2 would come back.
    tree.remove(codec::version_key(b"a", 2)).expect("remove");
    drop(tree);
    let n = n.reopen().await;
    let versions = n.sm_tree().get(codec::version_key(b"a", 2)).expect("read");
    assert_eq!(versions, None, "nothing was replayed");
}
