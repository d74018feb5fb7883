//! Forged input from a peer or a snapshot file is refused, never a crash (sweep of issue 11.11).
//!
//! A batch inside a batch is refused when it is decoded: `Command::Batch` holds requests, which
//! hold commands, so a message nested a million levels deep (3 bytes a level) recursed through
//! the decoder until the stack overflowed and the process aborted. Such messages come from the
//! peer port (Forward, AppendEntries) and from snapshot files. And a snapshot whose revision or
//! versions sit at the end of their range is refused, since the next write would overflow them.

use keel_storage::{
    codec, Command, KeyValue, PutOp, Request, SnapshotHeader, SnapshotMeta, SnapshotWriter, StoreConfig,
};
use openraft::storage::RaftStateMachine;
use openraft::StoredMembership;
use tokio::io::AsyncWriteExt;

/// The encoding of a batch nested `depth` levels deep around one put.
fn nested(depth: usize) -> Vec<u8> {
    let mut inner = Request::new(Command::Put(PutOp {
        key: b"k".to_vec(),
        value: b"v".to_vec(),
        prev_kv: false,
    }));
    for _ in 0..depth {
        inner = Request::new(Command::Batch(vec![inner]));
    }
    // Encoding recurses too; do it on a thread with room for it. (The decoder is what a peer
    // reaches; encoding only happens for what keel built itself.)
    std::thread::Builder::new()
        .stack_size(256 * 1024 * 1024)
        .spawn(move || {
            let bytes = codec::encode(&inner);
            // Dropping a deep value recurses as well.
            std::mem::forget(inner);
            bytes
        })
        .expect("thread")
        .join()
        .expect("encode")
}

#[test]
fn a_batch_inside_a_batch_is_a_decode_error() {
    // One level is what the proposer builds.
    let one = nested(1);
    let decoded: Request = codec::decode(&one).expect("a batch of requests decodes");
    assert!(matches!(decoded.command, Command::Batch(ref r) if r.len() == 1));
    // Two levels never come from keel.
    assert!(codec::decode::<Request>(&nested(2)).is_err(), "a nested batch decoded");
    // Deep nesting fails fast, on an ordinary 2 MiB thread stack, instead of overflowing it.
    let deep = nested(200_000);
    let result = std::thread::Builder::new()
        .stack_size(2 * 1024 * 1024)
        .spawn(move || codec::decode::<Request>(&deep).is_err())
        .expect("thread")
        .join();
    assert_eq!(result.ok(), Some(true), "decoding a deeply nested batch");
}

/// A well-formed snapshot file (valid checksums) with the given revision and one pair.
fn forged_snapshot(revision: u64, kv: KeyValue) -> (SnapshotMeta, Vec<u8>) {
    let meta = SnapshotMeta {
        last_log_id: Some(keel_storage::log_id_at(1, 1, 10)),
        last_membership: StoredMembership::default(),
    };
    let header = SnapshotHeader {
        raft: keel_storage::raft_position::to_position(&meta),
        revision,
        created_unix_ms: 0,
        cluster_id: String::new(),
    };
    let mut w = SnapshotWriter::new(Vec::new(), &header).expect("writer");
    w.push(&kv).expect("push");
    let (bytes, _, _) = w.finish().expect("finish");
    (meta, bytes)
}

#[tokio::test]
async fn snapshots_at_the_end_of_the_revision_or_version_range_are_refused() {
    let kv = |mod_revision: u64, version: u64| KeyValue {
        key: b"k".to_vec(),
        value: b"v".to_vec(),
        create_revision: 1,
        mod_revision,
        version,
    };
    let cases = [
        ("revision u64::MAX", forged_snapshot(u64::MAX, kv(5, 1))),
        ("version u64::MAX", forged_snapshot(5, kv(5, u64::MAX))),
    ];
    for (what, (meta, bytes)) in cases {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut store = keel_storage::open(dir.path(), &StoreConfig::default()).expect("open");
        let mut rx = store.sm.snapshot_inbox().create_file().expect("receive");
        rx.write_all(&bytes).await.expect("write");
        rx.flush().await.expect("flush");
        assert!(
            store.sm.install_snapshot(&meta, rx).await.is_err(),
            "{what} was installed"
        );
        let (applied, _) = store.sm.applied_state().await.expect("applied");
        assert_eq!(applied, None, "{what}: nothing changed");
    }
    // The same file with sane values installs.
    let (meta, bytes) = forged_snapshot(5, kv(5, 1));
    let dir = tempfile::tempdir().expect("temp dir");
    let mut store = keel_storage::open(dir.path(), &StoreConfig::default()).expect("open");
    let mut rx = store.sm.snapshot_inbox().create_file().expect("receive");
    rx.write_all(&bytes).await.expect("write");
    rx.flush().await.expect("flush");
    store
        .sm
        .install_snapshot(&meta, rx)
        .await
        .expect("a sane snapshot installs");
}
