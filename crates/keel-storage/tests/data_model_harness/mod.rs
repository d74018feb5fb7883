//! Shared harness of the data model tests (`data_model.rs`, `data_model_txn.rs`,
//! `data_model_ranges.rs`, `data_model_compaction.rs`): one store fed log entries the way openraft
//! feeds them, with increasing indexes, and builders of commands and of their expected results.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_storage::EntryPayload;
use keel_storage::*;
use openraft::storage::RaftStateMachine;
use openraft::Membership;
use tempfile::TempDir;

// ---------------------------------------------------------------------------------------------
// Harness: one store, fed log entries with increasing indexes.

pub struct Node {
    dir: TempDir,
    history: u64,
    pub store: Store,
    /// Index of the last entry applied.
    pub index: u64,
}

pub fn log_id(index: u64) -> LogId {
    keel_storage::log_id_at(1, 1, index)
}

impl Node {
    pub fn new(history: u64) -> Node {
        Node::open(tempfile::tempdir().expect("temp dir"), history, 0)
    }

    pub fn open(dir: TempDir, history: u64, index: u64) -> Node {
        let mut config = StoreConfig::default();
        config.sm.history_revisions = history;
        let store = keel_storage::open(dir.path(), &config).expect("open store");
        Node {
            dir,
            history,
            store,
            index,
        }
    }

    /// Close the store and open the same directory again.
    pub async fn reopen(self) -> Node {
        let db = Arc::downgrade(&self.store.durability);
        let (dir, history, index) = (self.dir, self.history, self.index);
        drop(self.store);
        // The log store's flusher thread keeps the database open until it notices that the
        // store is gone, and sled refuses to open a database that is still open.
        let deadline = Instant::now() + Duration::from_secs(30);
        while db.strong_count() > 0 {
            assert!(Instant::now() < deadline, "the database was never closed");
            std::thread::yield_now();
        }
        Node::open(dir, history, index)
    }

    /// Apply `payloads` as consecutive log entries in one `apply` call.
    pub async fn apply_payloads(&mut self, payloads: Vec<EntryPayload>) -> Vec<Response> {
        let mut entries = Vec::new();
        for payload in payloads {
            self.index += 1;
            let log_id = log_id(self.index);
            entries.push(Entry { log_id, payload });
        }
        let n = entries.len();
        let responses = self.store.sm.apply_entries(entries).expect("apply");
        assert_eq!(responses.len(), n, "one response per entry");
        responses
    }

    /// Apply `cmds`, validated first, as consecutive entries in one `apply` call.
    pub async fn apply_all(&mut self, cmds: Vec<Command>) -> Vec<Response> {
        let mut payloads = Vec::new();
        for cmd in cmds {
            let req = Request::new(cmd);
            let valid = validate_request(&req, &Limits::default());
            assert_eq!(valid, Ok(()), "the server would propose {req:?}");
            payloads.push(EntryPayload::Normal(req));
        }
        self.apply_payloads(payloads).await
    }

    pub async fn run(&mut self, cmd: Command) -> Response {
        self.apply_all(vec![cmd]).await.remove(0)
    }

    /// Run a txn; returns the revision after it and its result.
    pub async fn txn(&mut self, cmps: Vec<Compare>, ok: Vec<TxnOp>, or: Vec<TxnOp>) -> (u64, TxnResult) {
        let r = self.run(txn(cmps, ok, or)).await;
        match r.result {
            CommandResult::Txn(t) => (r.revision, t),
            other => panic!("expected a txn result, got {other:?}"),
        }
    }

    /// A txn without compares.
    pub async fn ops(&mut self, ops: Vec<TxnOp>) -> (u64, TxnResult) {
        self.txn(vec![], ops, vec![]).await
    }

    pub async fn put(&mut self, key: &[u8], value: &[u8]) -> u64 {
        self.run(put(key, value)).await.revision
    }

    pub async fn blank(&mut self) -> Response {
        let mut r = self.apply_payloads(vec![EntryPayload::Blank]).await;
        r.remove(0)
    }

    pub async fn applied(&mut self) -> (Option<LogId>, StoredMembership) {
        self.store.sm.applied_state().await.expect("applied state")
    }

    /// (revision, key count)
    pub fn state(&self) -> (u64, u64) {
        let reader = self.store.sm.reader();
        (reader.revision(), reader.key_count())
    }

    pub fn get(&self, key: &[u8]) -> Option<KeyValue> {
        let (kv, at) = self.store.sm.reader().get(key).expect("get");
        assert_eq!(at, self.state().0, "read at the current revision");
        kv
    }

    pub fn range(&self, op: RangeOp) -> RangeResult {
        assert_eq!(validate_range(&op, &Limits::default()), Ok(()));
        let (res, at) = self.store.sm.reader().range(&op).expect("range");
        assert_eq!(at, self.state().0, "read at the current revision");
        res
    }

    pub fn all(&self) -> Vec<KeyValue> {
        self.range(RangeOp::new(prefix(b""))).kvs
    }

    pub fn sm_tree(&self) -> sled::Tree {
        let db = self.store.durability.db();
        db.open_tree("sm.0").expect("sm tree")
    }
}

// ---------------------------------------------------------------------------------------------
// Command and result builders.

pub fn kv(key: &[u8], value: &[u8], create: u64, modified: u64, version: u64) -> KeyValue {
    KeyValue {
        key: key.to_vec(),
        value: value.to_vec(),
        create_revision: create,
        mod_revision: modified,
        version,
    }
}

pub fn put_op(key: &[u8], value: &[u8], prev_kv: bool) -> PutOp {
    let (key, value) = (key.to_vec(), value.to_vec());
    PutOp { key, value, prev_kv }
}

pub fn put(key: &[u8], value: &[u8]) -> Command {
    Command::Put(put_op(key, value, false))
}

pub fn put_prev(key: &[u8], value: &[u8]) -> Command {
    Command::Put(put_op(key, value, true))
}

pub fn del(range: KeyRange, prev_kv: bool) -> Command {
    Command::Delete(DeleteOp { range, prev_kv })
}

pub fn key(k: &[u8]) -> KeyRange {
    KeyRange::Key(k.to_vec())
}

pub fn prefix(p: &[u8]) -> KeyRange {
    KeyRange::Prefix(p.to_vec())
}

pub fn from(k: &[u8]) -> KeyRange {
    KeyRange::From(k.to_vec())
}

pub fn between(start: &[u8], end: &[u8]) -> KeyRange {
    let (start, end) = (start.to_vec(), end.to_vec());
    KeyRange::Between { start, end }
}

pub fn txn(compares: Vec<Compare>, success: Vec<TxnOp>, failure: Vec<TxnOp>) -> Command {
    let t = Txn {
        compares,
        success,
        failure,
    };
    Command::Txn(t)
}

pub fn cmp(key: &[u8], op: CompareOp, target: CompareTarget) -> Compare {
    let key = key.to_vec();
    Compare { key, op, target }
}

pub fn tput(key: &[u8], value: &[u8]) -> TxnOp {
    TxnOp::Put(put_op(key, value, false))
}

pub fn tdel(range: KeyRange, prev_kv: bool) -> TxnOp {
    TxnOp::Delete(DeleteOp { range, prev_kv })
}

pub fn tget(range: KeyRange) -> TxnOp {
    TxnOp::Range(RangeOp::new(range))
}

pub fn limited(range: KeyRange, limit: u64) -> RangeOp {
    let op = RangeOp::new(range);
    RangeOp { limit, ..op }
}

pub fn resp(revision: u64, result: CommandResult) -> Response {
    Response { revision, result }
}

/// A put's result, as a command's and as a txn op's.
pub fn put_r(prev_kv: Option<KeyValue>) -> (CommandResult, OpResult) {
    let r = PutResult { prev_kv };
    (CommandResult::Put(r.clone()), OpResult::Put(r))
}

/// A delete's result, as a command's and as a txn op's.
pub fn del_r(deleted: u64, prev_kvs: Vec<KeyValue>) -> (CommandResult, OpResult) {
    let r = DeleteResult { deleted, prev_kvs };
    (CommandResult::Delete(r.clone()), OpResult::Delete(r))
}

pub fn range_r(kvs: Vec<KeyValue>, count: u64, more: bool) -> OpResult {
    OpResult::Range(RangeResult { kvs, count, more })
}

/// A complete range result: every matching pair.
pub fn ranged(kvs: Vec<KeyValue>) -> OpResult {
    let count = kvs.len() as u64;
    range_r(kvs, count, false)
}

pub fn txn_r(succeeded: bool, responses: Vec<OpResult>) -> TxnResult {
    TxnResult { succeeded, responses }
}

pub fn keys(kvs: &[KeyValue]) -> Vec<Vec<u8>> {
    kvs.iter().map(|kv| kv.key.clone()).collect()
}

pub fn membership() -> Membership<NodeId, Member> {
    Membership::new_with_defaults(vec![BTreeSet::from([1, 2])], [])
}
