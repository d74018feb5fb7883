//! A batch inside a batch is refused when it is decoded (sweep of issue 11.11): `Command::Batch`
//! holds requests, which hold commands, so a message nested a million levels deep (3 bytes a
//! level) recursed through the decoder until the stack overflowed and the process aborted.
//! Such messages come from the peer port (Forward, AppendEntries) and from snapshot files.

use keel_storage::{codec, Command, PutOp, Request};

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
    let bytes = std::thread::Builder::new()
        .stack_size(256 * 1024 * 1024)
        .spawn(move || {
            let bytes = codec::encode(&inner);
            // Dropping a deep value recurses as well.
            std::mem::forget(inner);
            bytes
        })
        .expect("thread")
        .join()
        .expect("encode");
    bytes
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
