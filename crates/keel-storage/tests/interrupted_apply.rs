//! Builds e199da9 to a7a455b wrote each entry as a redo record (the whole write set under
//! `m:redo`) and then plain inserts (`sm::writes`); a crash between them left a prefix. Entries
//! are sled batches again, and opening the store still finishes an entry that such a build left
//! half-written, so the state is exactly "after entry N" for some N. Here the crash is made by
//! hand: an entry is applied, its writes are read back as such a build's redo record, then every
//! write is undone in the tree, as if that build had died right after the record reached sled.

mod data_model_harness;

use data_model_harness::*;
use keel_storage::codec;
use serde_bytes::ByteBuf;

/// The redo record's key and format byte in those builds.
const REDO_KEY: &[u8] = b"m:redo";
const REDO_FORMAT: u8 = 0x82;

/// A redo record as those builds wrote it: the entry's log index and its writes.
#[derive(serde::Serialize)]
struct Redo {
    index: u64,
    writes: Vec<(ByteBuf, Option<ByteBuf>)>,
}

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

    // Entry 3's redo record, from what it wrote: its three versions, its history record and the
    // metadata (its log index is the applied one now).
    let mut written: Vec<Vec<u8>> = [&b"a"[..], b"b", b"c"]
        .iter()
        .map(|k| codec::version_key(k, rev))
        .collect();
    written.push(codec::history_key(rev).to_vec());
    written.push(b"m:meta".to_vec());
    let meta_after = tree.get(b"m:meta").expect("read").expect("meta");
    let index = n.index;
    let writes = written
        .iter()
        .map(|k| {
            let v = tree.get(k).expect("read").expect("written by entry 3");
            (ByteBuf::from(k.clone()), Some(ByteBuf::from(v.to_vec())))
        })
        .collect();
    assert_ne!(meta_after, meta_before);
    tree.insert(REDO_KEY, codec::encode_as(REDO_FORMAT, &Redo { index, writes }))
        .expect("insert");

    // Undo everything but the redo record: the new versions go, and the metadata is as before.
    for k in &written[..4] {
        tree.remove(k).expect("remove");
    }
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
    assert_eq!(
        n.sm_tree().get(REDO_KEY).expect("read"),
        None,
        "the record is gone once used"
    );
}

#[tokio::test]
async fn a_finished_entry_is_not_written_again_on_open() {
    let mut n = Node::new(1000);
    n.put(b"a", b"1").await;
    n.put(b"a", b"2").await;
    let tree = n.sm_tree();
    // Entry 2's redo record, left in place as those builds did after finishing the entry. Were
    // it replayed, a's version 2 would come back.
    let index = n.index;
    let writes = vec![(
        ByteBuf::from(codec::version_key(b"a", 2)),
        Some(ByteBuf::from(b"x".to_vec())),
    )];
    tree.insert(REDO_KEY, codec::encode_as(REDO_FORMAT, &Redo { index, writes }))
        .expect("insert");
    tree.remove(codec::version_key(b"a", 2)).expect("remove");
    drop(tree);
    let n = n.reopen().await;
    let versions = n.sm_tree().get(codec::version_key(b"a", 2)).expect("read");
    assert_eq!(versions, None, "nothing was replayed");
    assert_eq!(
        n.sm_tree().get(REDO_KEY).expect("read"),
        None,
        "the stale record is removed"
    );
}
