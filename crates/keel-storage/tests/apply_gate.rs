//! The state machine applies no entry before the log store has written it into sled (see the
//! log store's "Applies wait for the write"): a leader may apply an entry its followers
//! acknowledged before its own flusher has written it, and had a sync persisted that state
//! first, a power cut would leave the state machine ahead of the log.

use keel_storage::testing::torture_entry;
use keel_storage::StoreConfig;
use openraft::storage::{IOFlushed, RaftLogStorage, RaftStateMachine};

fn entry_key(index: u64) -> Vec<u8> {
    let mut k = vec![b'e'];
    k.extend_from_slice(&index.to_be_bytes());
    k
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_is_applied_only_after_the_log_store_wrote_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut store = keel_storage::open(dir.path(), &StoreConfig::default()).expect("open");
    let log_tree = store.durability.db().open_tree("raft").expect("raft tree");
    for i in 1..=300 {
        let entry = torture_entry(i);
        // As on a leader: append (the flusher writes it later), then apply at once, as if the
        // followers had already acknowledged it.
        store
            .log
            .append([entry.clone()], IOFlushed::noop())
            .await
            .expect("append");
        let entries = futures::stream::iter([Ok((entry, None))]);
        store.sm.apply(entries).await.expect("apply");
        assert!(
            log_tree.get(entry_key(i)).expect("read the log").is_some(),
            "entry {i} was applied before the log store wrote it into sled"
        );
    }
}
