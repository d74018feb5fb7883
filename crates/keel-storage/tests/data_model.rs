//! The state machine's data model, driven the way openraft drives it: `apply` with log entries,
//! reads through `KvReader` and the responses of `apply`. Every command is first checked with
//! `validate_request`, so the scenarios only contain what the server would really propose.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_storage::codec::{self, HISTORY_PREFIX, VERSION_PREFIX};
use keel_storage::sm::mvcc::{self, LiveIter};
use keel_storage::sm::HistoryEvent;
use keel_storage::EntryPayload;
use keel_storage::*;
use openraft::storage::RaftStateMachine;
use openraft::Membership;
use tempfile::TempDir;

// ---------------------------------------------------------------------------------------------
// Harness: one store, fed log entries with increasing indexes.

struct Node {
    dir: TempDir,
    history: u64,
    store: Store,
    /// Index of the last entry applied.
    index: u64,
}

fn log_id(index: u64) -> LogId {
    keel_storage::log_id_at(1, 1, index)
}

impl Node {
    fn new(history: u64) -> Node {
        Node::open(tempfile::tempdir().expect("temp dir"), history, 0)
    }

    fn open(dir: TempDir, history: u64, index: u64) -> Node {
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
    async fn reopen(self) -> Node {
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
    async fn apply_payloads(&mut self, payloads: Vec<EntryPayload>) -> Vec<Response> {
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
    async fn apply_all(&mut self, cmds: Vec<Command>) -> Vec<Response> {
        let mut payloads = Vec::new();
        for cmd in cmds {
            let req = Request::new(cmd);
            let valid = validate_request(&req, &Limits::default());
            assert_eq!(valid, Ok(()), "the server would propose {req:?}");
            payloads.push(EntryPayload::Normal(req));
        }
        self.apply_payloads(payloads).await
    }

    async fn run(&mut self, cmd: Command) -> Response {
        self.apply_all(vec![cmd]).await.remove(0)
    }

    /// Run a txn; returns the revision after it and its result.
    async fn txn(&mut self, cmps: Vec<Compare>, ok: Vec<TxnOp>, or: Vec<TxnOp>) -> (u64, TxnResult) {
        let r = self.run(txn(cmps, ok, or)).await;
        match r.result {
            CommandResult::Txn(t) => (r.revision, t),
            other => panic!("expected a txn result, got {other:?}"),
        }
    }

    /// A txn without compares.
    async fn ops(&mut self, ops: Vec<TxnOp>) -> (u64, TxnResult) {
        self.txn(vec![], ops, vec![]).await
    }

    async fn put(&mut self, key: &[u8], value: &[u8]) -> u64 {
        self.run(put(key, value)).await.revision
    }

    async fn blank(&mut self) -> Response {
        let mut r = self.apply_payloads(vec![EntryPayload::Blank]).await;
        r.remove(0)
    }

    async fn applied(&mut self) -> (Option<LogId>, StoredMembership) {
        self.store.sm.applied_state().await.expect("applied state")
    }

    /// (revision, key count)
    fn state(&self) -> (u64, u64) {
        let reader = self.store.sm.reader();
        (reader.revision(), reader.key_count())
    }

    fn get(&self, key: &[u8]) -> Option<KeyValue> {
        let (kv, at) = self.store.sm.reader().get(key).expect("get");
        assert_eq!(at, self.state().0, "read at the current revision");
        kv
    }

    fn range(&self, op: RangeOp) -> RangeResult {
        assert_eq!(validate_range(&op, &Limits::default()), Ok(()));
        let (res, at) = self.store.sm.reader().range(&op).expect("range");
        assert_eq!(at, self.state().0, "read at the current revision");
        res
    }

    fn all(&self) -> Vec<KeyValue> {
        self.range(RangeOp::new(prefix(b""))).kvs
    }

    fn sm_tree(&self) -> sled::Tree {
        let db = self.store.durability.db();
        db.open_tree("sm.0").expect("sm tree")
    }
}

// ---------------------------------------------------------------------------------------------
// Command and result builders.

fn kv(key: &[u8], value: &[u8], create: u64, modified: u64, version: u64) -> KeyValue {
    KeyValue {
        key: key.to_vec(),
        value: value.to_vec(),
        create_revision: create,
        mod_revision: modified,
        version,
    }
}

fn put_op(key: &[u8], value: &[u8], prev_kv: bool) -> PutOp {
    let (key, value) = (key.to_vec(), value.to_vec());
    PutOp { key, value, prev_kv }
}

fn put(key: &[u8], value: &[u8]) -> Command {
    Command::Put(put_op(key, value, false))
}

fn put_prev(key: &[u8], value: &[u8]) -> Command {
    Command::Put(put_op(key, value, true))
}

fn del(range: KeyRange, prev_kv: bool) -> Command {
    Command::Delete(DeleteOp { range, prev_kv })
}

fn key(k: &[u8]) -> KeyRange {
    KeyRange::Key(k.to_vec())
}

fn prefix(p: &[u8]) -> KeyRange {
    KeyRange::Prefix(p.to_vec())
}

fn from(k: &[u8]) -> KeyRange {
    KeyRange::From(k.to_vec())
}

fn between(start: &[u8], end: &[u8]) -> KeyRange {
    let (start, end) = (start.to_vec(), end.to_vec());
    KeyRange::Between { start, end }
}

fn txn(compares: Vec<Compare>, success: Vec<TxnOp>, failure: Vec<TxnOp>) -> Command {
    let t = Txn {
        compares,
        success,
        failure,
    };
    Command::Txn(t)
}

fn cmp(key: &[u8], op: CompareOp, target: CompareTarget) -> Compare {
    let key = key.to_vec();
    Compare { key, op, target }
}

fn tput(key: &[u8], value: &[u8]) -> TxnOp {
    TxnOp::Put(put_op(key, value, false))
}

fn tdel(range: KeyRange, prev_kv: bool) -> TxnOp {
    TxnOp::Delete(DeleteOp { range, prev_kv })
}

fn tget(range: KeyRange) -> TxnOp {
    TxnOp::Range(RangeOp::new(range))
}

fn limited(range: KeyRange, limit: u64) -> RangeOp {
    let op = RangeOp::new(range);
    RangeOp { limit, ..op }
}

fn resp(revision: u64, result: CommandResult) -> Response {
    Response { revision, result }
}

/// A put's result, as a command's and as a txn op's.
fn put_r(prev_kv: Option<KeyValue>) -> (CommandResult, OpResult) {
    let r = PutResult { prev_kv };
    (CommandResult::Put(r.clone()), OpResult::Put(r))
}

/// A delete's result, as a command's and as a txn op's.
fn del_r(deleted: u64, prev_kvs: Vec<KeyValue>) -> (CommandResult, OpResult) {
    let r = DeleteResult { deleted, prev_kvs };
    (CommandResult::Delete(r.clone()), OpResult::Delete(r))
}

fn range_r(kvs: Vec<KeyValue>, count: u64, more: bool) -> OpResult {
    OpResult::Range(RangeResult { kvs, count, more })
}

/// A complete range result: every matching pair.
fn ranged(kvs: Vec<KeyValue>) -> OpResult {
    let count = kvs.len() as u64;
    range_r(kvs, count, false)
}

fn txn_r(succeeded: bool, responses: Vec<OpResult>) -> TxnResult {
    TxnResult { succeeded, responses }
}

fn keys(kvs: &[KeyValue]) -> Vec<Vec<u8>> {
    kvs.iter().map(|kv| kv.key.clone()).collect()
}

fn membership() -> Membership<NodeId, Member> {
    Membership::new_with_defaults(vec![BTreeSet::from([1, 2])], [])
}

// ---------------------------------------------------------------------------------------------
// 1. Revisions and versions.

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
// 2. Txn compares and branches.

/// Run a txn with the single compare `k op target` for each operator, `expected` holding the
/// outcomes for [Equal, NotEqual, Less, Greater], and check that exactly that branch ran.
async fn check_compare(n: &mut Node, k: &[u8], target: &CompareTarget, expected: [bool; 4]) {
    use CompareOp::*;
    for (op, want) in [Equal, NotEqual, Less, Greater].into_iter().zip(expected) {
        let c = cmp(k, op, target.clone());
        let (yes, no) = (vec![tput(b"~yes", b"")], vec![tput(b"~no", b"")]);
        let (rev, t) = n.txn(vec![c], yes, no).await;
        let what = format!("{k:?} {op:?} {target:?}");
        assert_eq!(t, txn_r(want, vec![put_r(None).1]), "{what}");
        let written_now = |k: &[u8]| n.get(k).map(|kv| kv.mod_revision) == Some(rev);
        let written = (written_now(b"~yes"), written_now(b"~no"));
        assert_eq!(written, (want, !want), "{what}");
    }
}

#[tokio::test]
async fn compare_every_operator_and_target_on_a_present_key() {
    let mut n = Node::new(10_000);
    n.put(b"k", b"a").await;
    n.put(b"other", b"").await;
    n.put(b"k", b"m").await;
    let k = kv(b"k", b"m", 1, 3, 2);
    assert_eq!(n.get(b"k"), Some(k.clone()));

    // [Equal, NotEqual, Less, Greater] of the key's field against the operand.
    const BELOW: [bool; 4] = [false, true, false, true]; // operand < field
    const SAME: [bool; 4] = [true, false, false, false];
    const ABOVE: [bool; 4] = [false, true, true, false]; // operand > field
    use CompareTarget::*;
    let rows = [
        (Value(b"".to_vec()), BELOW),
        (Value(b"a".to_vec()), BELOW),
        (Value(b"m".to_vec()), SAME),
        (Value(b"m\x00".to_vec()), ABOVE), // byte order: a proper prefix is smaller
        (Value(b"z".to_vec()), ABOVE),
        (Version(1), BELOW),
        (Version(2), SAME),
        (Version(3), ABOVE),
        (CreateRevision(0), BELOW),
        (CreateRevision(1), SAME),
        (CreateRevision(2), ABOVE),
        (ModRevision(2), BELOW),
        (ModRevision(3), SAME),
        (ModRevision(4), ABOVE),
    ];
    for (target, expected) in &rows {
        check_compare(&mut n, b"k", target, *expected).await;
    }
    assert_eq!(n.get(b"k"), Some(k), "compares do not touch the key");
}

#[tokio::test]
async fn compare_on_a_missing_or_deleted_key() {
    let mut n = Node::new(10_000);
    n.put(b"gone", b"x").await;
    n.run(del(key(b"gone"), false)).await;
    use CompareTarget::*;
    const ZERO: [bool; 4] = [true, false, false, false]; // field and operand both 0
    const ABOVE: [bool; 4] = [false, true, true, false];
    let rows = [
        // etcd: a value compare on a missing key is false, whatever the operator.
        (Value(b"".to_vec()), [false; 4]),
        (Value(b"x".to_vec()), [false; 4]),
        // A missing key has version, create revision and mod revision 0.
        (Version(0), ZERO),
        (Version(1), ABOVE),
        (CreateRevision(0), ZERO),
        (CreateRevision(1), ABOVE),
        (ModRevision(0), ZERO),
        (ModRevision(2), ABOVE),
    ];
    for k in [&b"never"[..], b"gone"] {
        for (target, expected) in &rows {
            check_compare(&mut n, k, target, *expected).await;
        }
    }
}

#[tokio::test]
async fn txn_takes_exactly_one_branch() {
    let mut n = Node::new(10_000);
    n.put(b"a", b"1").await;
    n.put(b"b", b"1").await;
    let a_is_1 = cmp(b"a", CompareOp::Equal, CompareTarget::Value(b"1".to_vec()));
    let b_is_new = cmp(b"b", CompareOp::Equal, CompareTarget::Version(1));
    let compares = vec![a_is_1, b_is_new];
    let success = vec![tput(b"c", b"s"), tdel(key(b"b"), true), tget(prefix(b""))];
    let failure = vec![tput(b"f", b"1"), tget(key(b"c"))];

    let (cmps, ok, or) = (compares.clone(), success.clone(), failure.clone());
    let r = n.txn(cmps, ok, or).await;
    let b = kv(b"b", b"1", 2, 2, 1);
    let (a, c) = (kv(b"a", b"1", 1, 1, 1), kv(b"c", b"s", 3, 3, 1));
    let ops = vec![put_r(None).1, del_r(1, vec![b]).1, ranged(vec![a, c.clone()])];
    assert_eq!(r, (3, txn_r(true, ops)));
    assert_eq!(n.get(b"f"), None, "the failure branch did not run");

    // Now b is gone (version 0): the first compare holds, the second does not.
    let r = n.txn(compares, success, failure).await;
    let ops = vec![put_r(None).1, ranged(vec![c.clone()])];
    assert_eq!(r, (4, txn_r(false, ops)));
    assert_eq!(n.get(b"f"), Some(kv(b"f", b"1", 4, 4, 1)));
    assert_eq!(n.get(b"c"), Some(c), "the success branch did not run");
    assert_eq!((n.get(b"b"), n.state()), (None, (4, 3)));

    // No compares: success.
    let (_, t) = n.txn(vec![], vec![tput(b"g", b"")], vec![tput(b"h", b"")]).await;
    assert!(t.succeeded);
    assert_eq!((n.get(b"g").is_some(), n.get(b"h").is_some()), (true, false));
}

#[tokio::test]
async fn txn_reads_see_the_txns_own_earlier_writes() {
    let mut n = Node::new(10_000);
    for k in [&b"a/1"[..], b"a/2", b"a/3", b"b/1", b"b/2"] {
        n.put(k, b"old").await;
    }
    let a1 = kv(b"a/1", b"old", 1, 1, 1);
    let a2 = kv(b"a/2", b"old", 2, 2, 1);
    let a3 = kv(b"a/3", b"old", 3, 3, 1);
    let count_only = RangeOp {
        count_only: true,
        ..RangeOp::new(prefix(b"a/"))
    };
    let ops = vec![
        tget(prefix(b"a/")),
        TxnOp::Put(put_op(b"a/1", b"new", true)),
        tput(b"a/4", b"new"),
        tdel(key(b"a/2"), true),
        tget(prefix(b"a/")),
        tget(key(b"a/2")),
        TxnOp::Range(limited(prefix(b"a/"), 2)),
        TxnOp::Range(count_only),
        tdel(prefix(b"b/"), false),
        tdel(key(b"b/1"), true),
        tget(prefix(b"")),
    ];
    let (rev, t) = n.ops(ops).await;
    assert_eq!((rev, t.succeeded), (6, true));
    let new_a1 = kv(b"a/1", b"new", 1, 6, 2);
    let after = vec![new_a1.clone(), a3.clone(), kv(b"a/4", b"new", 6, 6, 1)];
    let expected = vec![
        ranged(vec![a1.clone(), a2.clone(), a3.clone()]),
        put_r(Some(a1)).1,
        put_r(None).1,
        del_r(1, vec![a2]).1,
        ranged(after.clone()),
        ranged(vec![]),
        // Cut by its limit: `count` is what was returned (the rest is not visited).
        range_r(vec![new_a1, a3], 2, true),
        range_r(vec![], 3, false),
        del_r(2, vec![]).1,
        del_r(0, vec![]).1, // already deleted by this txn: not deleted, or counted, twice
        ranged(after.clone()),
    ];
    assert_eq!(t.responses.len(), expected.len());
    for (i, (got, want)) in t.responses.iter().zip(&expected).enumerate() {
        assert_eq!(got, want, "response {i}");
    }
    assert_eq!(n.all(), after);
    assert_eq!(n.state(), (6, 3));
}

// ---------------------------------------------------------------------------------------------
// 3. Ranges.

/// Check a plain read of `range`, through the reader and inside a read-only txn (the apply-side
/// read path): exactly `expected`, in this order, with their values (key ‖ 00 FF).
async fn check_range(n: &mut Node, range: KeyRange, expected: &[&[u8]]) {
    let res = n.range(RangeOp::new(range.clone()));
    assert_eq!(keys(&res.kvs), expected, "{range:?}");
    let count = expected.len() as u64;
    assert_eq!((res.count, res.more), (count, false), "{range:?}");
    for kv in &res.kvs {
        assert_eq!(kv.value, [&kv.key[..], b"\x00\xff"].concat());
    }
    let (_, t) = n.ops(vec![tget(range)]).await;
    assert_eq!(t.responses, [OpResult::Range(res)]);
}

#[tokio::test]
async fn range_edge_cases_on_byte_keys() {
    let mut n = Node::new(10_000);
    let zero: [&[u8]; 3] = [b"\x00", b"\x00\x00", b"\x00\x01"];
    let a: [&[u8]; 5] = [b"a", b"a\x00", b"a\x00b", b"a\x01", b"ab"];
    let ff: [&[u8]; 4] = [b"\xff", b"\xff\x00", b"\xff\xff", b"\xff\xff\x00"];
    // Every key, in byte order.
    let all: Vec<&[u8]> = [&zero[..], &a, &[b"b", b"\xfe"], &ff].concat();
    let total = all.len() as u64;
    assert_eq!(total, 14);
    // Written out of order: the i-th put writes all[5 * i % 14], at revision i + 1.
    for i in 0..all.len() {
        let k = all[5 * i % all.len()];
        n.put(k, &[k, b"\x00\xff"].concat()).await;
    }
    assert_eq!(n.state(), (total, total));

    check_range(&mut n, prefix(b"\xff"), &ff).await;
    check_range(&mut n, prefix(b"\xff\xff"), &ff[2..]).await;
    check_range(&mut n, prefix(b"\xff\xff\x00"), &ff[3..]).await;
    check_range(&mut n, prefix(b"\xfe"), &[b"\xfe"]).await;
    check_range(&mut n, prefix(b"\x00"), &zero).await;
    check_range(&mut n, prefix(b"\x00\x00"), &zero[1..2]).await;
    check_range(&mut n, prefix(b"a"), &a).await;
    check_range(&mut n, prefix(b"a\x00"), &a[1..3]).await;
    check_range(&mut n, key(b"a"), &a[..1]).await;
    check_range(&mut n, key(b"\x00"), &zero[..1]).await;
    check_range(&mut n, key(b"\xff"), &ff[..1]).await;
    check_range(&mut n, between(b"a", b"b"), &a).await;
    check_range(&mut n, between(b"a\x00", b"a\x01"), &a[1..3]).await;
    check_range(&mut n, between(b"\x00", b"\x00\x00"), &zero[..1]).await;
    check_range(&mut n, between(b"\xff", b"\xff\xff"), &ff[..2]).await;
    let b_to_ffff00: [&[u8]; 5] = [b"b", b"\xfe", ff[0], ff[1], ff[2]];
    check_range(&mut n, between(b"b", b"\xff\xff\x00"), &b_to_ffff00).await;
    check_range(&mut n, from(b"\xff\xff"), &ff[2..]).await;
    assert_eq!(all[6], b"a\x01");
    check_range(&mut n, from(b"a\x01"), &all[6..]).await;
    check_range(&mut n, prefix(b""), &all).await;
    check_range(&mut n, from(b"\x00"), &all).await;
    // Empty results are results, not errors.
    let empties = [
        prefix(b"zz"),
        prefix(b"\xff\xff\x00\x00"),
        key(b"nope"),
        key(b"\xff\xff\xff"),
        between(b"c", b"d"),
        between(b"a\x00\x00", b"a\x00a"),
        from(b"\xff\xff\x01"),
    ];
    for empty in empties {
        check_range(&mut n, empty, &[]).await;
    }

    // limit, keys_only, count_only. A range cut by its limit is not visited beyond it, so its
    // `count` is what was returned, and `more` says there is more; only count_only counts all.
    let r = n.range(limited(prefix(b""), 3));
    assert_eq!(keys(&r.kvs), &all[..3]);
    assert_eq!((r.count, r.more), (3, true));
    let r = n.range(limited(prefix(b""), total));
    assert_eq!((r.kvs.len() as u64, r.count, r.more), (total, total, false));
    let r = n.range(limited(prefix(b"\xff"), 100));
    assert_eq!((r.kvs.len(), r.count, r.more), (4, 4, false));
    let r = n.range(RangeOp {
        keys_only: true,
        ..limited(prefix(b"a"), 2)
    });
    let kvs = vec![kv(b"a", b"", 10, 10, 1), kv(b"a\x00", b"", 13, 13, 1)];
    assert_eq!(OpResult::Range(r), range_r(kvs, 2, true));
    let r = n.range(RangeOp {
        count_only: true,
        ..limited(prefix(b""), 2)
    });
    assert_eq!(OpResult::Range(r), range_r(vec![], total, false));

    // Tombstones and old versions: only each key's live version is listed.
    n.run(del(key(b"a"), false)).await;
    for v in [b"1", b"2", b"3"] {
        n.put(b"ab", v).await;
    }
    let r = n.range(RangeOp::new(prefix(b"a")));
    assert_eq!(keys(&r.kvs), &a[1..]);
    assert_eq!(r.kvs[3], kv(b"ab", b"3", 8, 18, 4)); // first written at revision 8
    assert_eq!(n.range(RangeOp::new(key(b"a"))), RangeResult::default());
    assert_eq!(n.state(), (18, total - 1));
}

// ---------------------------------------------------------------------------------------------
// 4. History compaction.

/// The expected state: every revision's pairs, and every version ever written.
struct Model {
    /// `states[r]`: the pairs after revision r.
    states: Vec<BTreeMap<Vec<u8>, KeyValue>>,
    /// Per key, the revisions it was written at, oldest first, with "was a delete".
    versions: BTreeMap<Vec<u8>, Vec<(u64, bool)>>,
}

impl Model {
    fn rev(&self) -> u64 {
        self.states.len() as u64 - 1
    }

    fn current(&self) -> &BTreeMap<Vec<u8>, KeyValue> {
        self.states.last().expect("state 0")
    }

    /// One command's writes: `Some(value)` puts, `None` deletes.
    fn write(&mut self, writes: &[(Vec<u8>, Option<Vec<u8>>)]) {
        let rev = self.rev() + 1;
        let mut state = self.current().clone();
        for (k, v) in writes {
            let deleted = match v {
                Some(v) => {
                    let prev = state.get(k).map(|p| (p.create_revision, p.version));
                    let (create, version) = prev.map_or((rev, 1), |(c, v)| (c, v + 1));
                    state.insert(k.clone(), kv(k, v, create, rev, version));
                    false
                }
                None if state.remove(k).is_some() => true,
                None => continue,
            };
            self.versions.entry(k.clone()).or_default().push((rev, deleted));
        }
        if self.versions.values().flatten().any(|&(r, _)| r == rev) {
            self.states.push(state);
        }
    }

    /// The versions a store compacted up to `compacted` must keep, and no more: those that a
    /// read at a revision >= `compacted` can see.
    fn retained(&self, compacted: u64) -> BTreeSet<(Vec<u8>, u64)> {
        let mut out = BTreeSet::new();
        for (k, vs) in &self.versions {
            for (i, &(rev, deleted)) in vs.iter().enumerate() {
                let superseded = vs.get(i + 1).is_some_and(|&(next, _)| next <= compacted);
                let dropped = superseded || (deleted && rev <= compacted);
                if !dropped {
                    out.insert((k.clone(), rev));
                }
            }
        }
        out
    }
}

type Item = sled::Result<(sled::IVec, sled::IVec)>;

/// The MVCC version records in the tree, as (user key, revision).
fn version_records(tree: &sled::Tree) -> BTreeSet<(Vec<u8>, u64)> {
    let parse = |item: Item| {
        let (k, _) = item.expect("scan");
        let (group, rev) = codec::split_version_key(&k).expect("version key");
        (codec::group_user_key(group).expect("group"), rev)
    };
    tree.scan_prefix([VERSION_PREFIX]).map(parse).collect()
}

/// The history in the tree: revision -> its events (records list one entry's revisions each).
fn history_records(tree: &sled::Tree) -> BTreeMap<u64, Vec<HistoryEvent>> {
    let parse = |item: Item| {
        let (k, v) = item.expect("scan");
        let last = codec::split_history_key(&k).expect("history key");
        let revisions = keel_storage::sm::decode_history(last, &v).expect("history record");
        assert_eq!(
            revisions.last().map(|r| r.revision),
            Some(last),
            "a record is keyed by its last revision"
        );
        revisions.into_iter().map(|r| (r.revision, r.events))
    };
    tree.scan_prefix([HISTORY_PREFIX]).flat_map(parse).collect()
}

/// A small deterministic generator: a failing run replays exactly.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) % n as u64) as usize
    }
}

#[tokio::test]
async fn compaction_keeps_exactly_what_retained_reads_need() {
    const KEEP: u64 = 10;
    let hot: [&[u8]; 6] = [b"p/1", b"p/2", b"p/\x00", b"q", b"q\x00", b"\xff"];
    let mut n = Node::new(KEEP);
    let mut model = Model {
        states: vec![BTreeMap::new()],
        versions: BTreeMap::new(),
    };
    let tree = n.sm_tree();
    let mut rng = Lcg(7);

    n.put(b"cold", b"c").await;
    model.write(&[(b"cold".to_vec(), Some(b"c".to_vec()))]);

    for step in 0..400 {
        let i = rng.below(hot.len());
        let k = hot[i].to_vec();
        let value = format!("v{step}").into_bytes();
        let (cmd, writes) = match rng.below(20) {
            0..=9 => (put(&k, &value), vec![(k, Some(value))]),
            10..=13 => (del(key(&k), false), vec![(k, None)]),
            14..=16 => {
                // Two puts and a delete of a third key, in one revision.
                let j = hot[(i + 1 + rng.below(4)) % hot.len()].to_vec();
                let d = hot[(i + 5) % hot.len()].to_vec();
                let ops = vec![tput(&k, &value), tput(&j, &value), tdel(key(&d), false)];
                let writes = vec![(k, Some(value.clone())), (j, Some(value)), (d, None)];
                (txn(vec![], ops, vec![]), writes)
            }
            17 => {
                let live = model.current().keys();
                let gone = live.filter(|k| k.starts_with(b"p/")).map(|k| (k.clone(), None));
                (del(prefix(b"p/"), false), gone.collect())
            }
            _ => {
                n.blank().await;
                continue;
            }
        };
        let r = n.run(cmd).await;
        model.write(&writes);
        let rev = model.rev();
        assert_eq!((r.revision, n.state().0), (rev, rev), "step {step}");

        // Current reads are exact.
        let current: Vec<KeyValue> = model.current().values().cloned().collect();
        assert_eq!(n.all(), current, "step {step}");
        assert_eq!(n.state().1, current.len() as u64, "step {step}");
        for k in hot.iter().chain(&[&b"cold"[..]]) {
            let want = model.current().get(*k);
            assert_eq!(n.get(k).as_ref(), want, "step {step} key {k:?}");
        }

        // One command per apply call, so compaction keeps up: exactly KEEP history records
        // remain, and exactly the versions that reads at retained revisions need.
        let compacted = rev.saturating_sub(KEEP);
        let history = history_records(&tree);
        let retained: Vec<u64> = (compacted + 1..=rev).collect();
        let history_revs: Vec<u64> = history.keys().copied().collect();
        assert_eq!(history_revs, retained, "step {step}");
        let versions = version_records(&tree);
        assert_eq!(versions, model.retained(compacted), "step {step}");
        // So they are bounded by live keys plus retained history: each retained event keeps the
        // version it superseded, and a delete also its tombstone.
        let events = history.values().flatten();
        let events: usize = events.map(|ev| 1 + ev.deleted as usize).sum();
        assert!(versions.len() <= current.len() + events, "step {step}");
    }

    let rev = model.rev();
    let written: usize = model.versions.values().map(Vec::len).sum();
    assert!(rev > 300 && written > 400, "{written} writes, {rev} revisions");
    // An old key that was never written again survives compaction.
    assert_eq!(n.get(b"cold"), Some(kv(b"cold", b"c", 1, 1, 1)));

    // Every retained revision, the compaction point included, still reads exactly.
    for at in rev - KEEP..=rev {
        let want = &model.states[at as usize];
        let got: Result<Vec<KeyValue>, _> = LiveIter::all(&tree, at).collect();
        let want_all: Vec<KeyValue> = want.values().cloned().collect();
        assert_eq!(got.expect("read"), want_all, "read at {at}");
        for k in hot {
            let got = mvcc::get(&tree, k, at).expect("get");
            assert_eq!(got.as_ref(), want.get(k), "{k:?} at {at}");
        }
    }
}

#[tokio::test]
async fn compaction_is_a_bounded_step_per_apply_call_and_survives_reopen() {
    let mut n = Node::new(10);
    // 600 puts over three keys in ONE apply call: revision i + 1 writes r/{i % 3} = "i".
    let cmds = (0..600).map(|i| put(format!("r/{}", i % 3).as_bytes(), format!("{i}").as_bytes()));
    let responses = n.apply_all(cmds.collect()).await;
    let revisions: Vec<u64> = responses.iter().map(|r| r.revision).collect();
    assert_eq!(revisions, (1..=600).collect::<Vec<_>>());

    let counts = |n: &Node| {
        let tree = n.sm_tree();
        (history_records(&tree).len(), version_records(&tree).len())
    };
    let expect_reads = |n: &Node| {
        assert_eq!(n.state(), (600, 3));
        let r0 = kv(b"r/0", b"597", 1, 598, 200);
        let r1 = kv(b"r/1", b"598", 2, 599, 200);
        let r2 = kv(b"r/2", b"599", 3, 600, 200);
        assert_eq!(n.all(), [r0, r1, r2]);
    };
    // Compaction ran once, after the whole batch, and advanced 256 revisions at most: to 256.
    // Revisions 257..=600 keep their history; every version r <= 253 was superseded by
    // r + 3 <= 256, so versions 254..=600 remain.
    assert_eq!(counts(&n), (600 - 256, 600 - 253));
    expect_reads(&n);

    // The compaction point is persisted: after a reopen, compaction goes on from 256.
    let mut n = n.reopen().await;
    expect_reads(&n);
    assert_eq!(counts(&n), (344, 347));
    n.blank().await; // compacts to 512
    assert_eq!(counts(&n), (600 - 512, 600 - 509));
    n.blank().await; // compacts to 590 = 600 - 10: caught up
    assert_eq!(counts(&n), (10, 13));
    let tree = n.sm_tree();
    let history: Vec<u64> = history_records(&tree).into_keys().collect();
    assert_eq!(history, (591..=600).collect::<Vec<_>>());
    let versions: BTreeSet<u64> = version_records(&tree).into_iter().map(|(_, r)| r).collect();
    assert_eq!(versions, (588..=600).collect());
    n.blank().await;
    assert_eq!(counts(&n), (10, 13), "nothing more to compact");
    expect_reads(&n);
}

// ---------------------------------------------------------------------------------------------
// 5. Reopen.

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
