//! Batch entries (`Command::Batch`, built by the leader's proposer) against their definition: a
//! batch of requests must do exactly what the same requests do as consecutive entries of their
//! own. Two stores get the same random requests, one request per entry and grouped into random
//! batches; every request's response and the stored MVCC data (every version and history record,
//! byte for byte) must agree. The requests include conditional txns on keys written earlier in
//! the same batch, range deletes, the same key written by several requests of one batch, and
//! client sessions: new ones, retries of a session's newest write (also inside the same batch as
//! the original), stale and unknown sequence numbers.

use std::collections::BTreeMap;

use keel_storage::codec::{self, HISTORY_PREFIX, VERSION_PREFIX};
use keel_storage::sm::HistoryEvent;
use keel_storage::EntryPayload;
use keel_storage::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Stored versions (key → value bytes) and history (revision → changes).
type MvccData = (BTreeMap<Vec<u8>, Vec<u8>>, BTreeMap<u64, Vec<HistoryEvent>>);

struct Node {
    _dir: tempfile::TempDir,
    store: Store,
    index: u64,
}

impl Node {
    /// A store that keeps every revision, so that the whole history is compared.
    fn new() -> Node {
        Node::with_history(u64::MAX / 2)
    }

    fn with_history(history_revisions: u64) -> Node {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = StoreConfig::default();
        config.sm.history_revisions = history_revisions;
        let store = keel_storage::open(dir.path(), &config).expect("open store");
        Node {
            _dir: dir,
            store,
            index: 0,
        }
    }

    async fn apply(&mut self, requests: Vec<Request>) -> Vec<Response> {
        let entries = requests
            .into_iter()
            .map(|req| {
                self.index += 1;
                Entry {
                    log_id: keel_storage::log_id_at(1, 1, self.index),
                    payload: EntryPayload::Normal(req),
                }
            })
            .collect::<Vec<_>>();
        self.store.sm.apply_entries(entries).expect("apply")
    }

    /// Every stored version (key and value bytes), and the history by revision (a batch entry
    /// stores its revisions' changes in one record, so records themselves differ).
    fn mvcc_data(&self) -> MvccData {
        let tree = self.store.durability.db().open_tree("sm.0").expect("sm tree");
        let versions = tree
            .scan_prefix([VERSION_PREFIX])
            .map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec())).expect("scan"))
            .collect();
        let mut history = BTreeMap::new();
        for r in tree.scan_prefix([HISTORY_PREFIX]) {
            let (k, v) = r.expect("scan");
            let last = codec::split_history_key(&k).expect("history key");
            for rev in keel_storage::sm::decode_history(last, &v).expect("history record") {
                assert!(
                    history.insert(rev.revision, rev.events).is_none(),
                    "one record per revision"
                );
            }
        }
        (versions, history)
    }
}

fn key(rng: &mut StdRng) -> Vec<u8> {
    format!("k/{}", rng.random_range(0..12)).into_bytes()
}

fn put(key: Vec<u8>, rng: &mut StdRng) -> Command {
    let value = format!("v{}", rng.random::<u32>()).into_bytes();
    Command::Put(PutOp {
        key,
        value,
        prev_kv: rng.random_bool(0.5),
    })
}

/// One random client command (never a batch).
fn command(rng: &mut StdRng) -> Command {
    match rng.random_range(0..10) {
        0..=4 => {
            let k = key(rng);
            put(k, rng)
        }
        5 => Command::Delete(DeleteOp {
            range: KeyRange::Key(key(rng)),
            prev_kv: true,
        }),
        6 => Command::Delete(DeleteOp {
            range: KeyRange::Prefix(format!("k/{}", rng.random_range(0..2)).into_bytes()),
            prev_kv: true,
        }),
        _ => {
            // Compare a key's version, then write another and read a range: the outcome depends
            // on what earlier requests (of the same batch, too) did.
            let (a, b) = (key(rng), key(rng));
            let cmp = Compare {
                key: a.clone(),
                op: [CompareOp::Equal, CompareOp::Greater, CompareOp::Less][rng.random_range(0..3)],
                target: CompareTarget::Version(rng.random_range(0..3)),
            };
            let read = TxnOp::Range(RangeOp::new(KeyRange::Prefix(b"k/".to_vec())));
            let write = match put(b, rng) {
                Command::Put(p) => TxnOp::Put(p),
                _ => unreachable!(),
            };
            Command::Txn(Txn {
                compares: vec![cmp],
                success: vec![write, read.clone()],
                failure: vec![read],
            })
        }
    }
}

/// A random stream of requests; about half carry one of a few client sessions, with mostly the
/// next sequence number, sometimes a repeat of the newest one (a retry), an older one, or one
/// far ahead for a client that has none yet.
fn requests(rng: &mut StdRng, n: usize) -> Vec<Request> {
    let mut seqs: BTreeMap<u64, u64> = BTreeMap::new();
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let mut req = Request::new(command(rng));
        if rng.random_bool(0.5) {
            let client_id = rng.random_range(1..6);
            let last = seqs.get(&client_id).copied().unwrap_or(0);
            let seq = match rng.random_range(0..10) {
                0 if last > 0 => last,
                1 if last > 1 => last - 1,
                2 if last == 0 => 5,
                _ => last + 1,
            };
            if seq == last + 1 && (last > 0 || seq == 1) {
                seqs.insert(client_id, seq);
            }
            req.session = Some(SessionRef { client_id, seq });
        }
        assert_eq!(validate_request(&req, &Limits::default()), Ok(()));
        out.push(req);
    }
    out
}

/// The responses of a batch entry, flattened into one per request.
fn flatten(responses: Vec<Response>) -> Vec<Response> {
    responses
        .into_iter()
        .flat_map(|r| match r.result {
            CommandResult::Batch(inner) => inner,
            _ => vec![r],
        })
        .collect()
}

#[tokio::test]
async fn a_batch_does_what_its_requests_do_one_entry_each() {
    for seed in 0..8u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let reqs = requests(&mut rng, 400);
        let mut single = Node::new();
        let mut batched = Node::new();

        let mut expected = Vec::new();
        for chunk in reqs.chunks(25) {
            expected.extend(single.apply(chunk.to_vec()).await);
        }

        let mut got = Vec::new();
        let mut rest = &reqs[..];
        let mut batches = 0;
        while !rest.is_empty() {
            let n = rng.random_range(1..=8).min(rest.len());
            let (head, tail) = rest.split_at(n);
            rest = tail;
            let entry = Request::new(Command::Batch(head.to_vec()));
            let responses = batched.apply(vec![entry]).await;
            assert_eq!(responses.len(), 1, "one response per entry");
            assert!(matches!(responses[0].result, CommandResult::Batch(_)), "{responses:?}");
            let now = batched.store.sm.reader().revision();
            assert_eq!(responses[0].revision, now, "a batch's revision is the store's after it");
            got.extend(flatten(responses));
            batches += 1;
        }
        assert!(batches < reqs.len(), "seed {seed}: the requests were really batched");

        assert_eq!(got.len(), expected.len(), "seed {seed}: one response per request");
        for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
            assert_eq!(g, e, "seed {seed}: request {i} ({:?})", reqs[i]);
        }
        let (a, b) = (single.store.sm.reader(), batched.store.sm.reader());
        assert_eq!(a.revision(), b.revision(), "seed {seed}: revision");
        assert_eq!(a.key_count(), b.key_count(), "seed {seed}: key count");
        assert_eq!(a.session_count(), b.session_count(), "seed {seed}: session count");
        assert!(a.revision() > 100, "seed {seed}: the workload wrote");
        assert_eq!(
            single.mvcc_data(),
            batched.mvcc_data(),
            "seed {seed}: stored versions and history"
        );
    }
}

/// A retry that lands in the same batch as its original (a client gave up on a forwarded write
/// and sent it again to the leader) is answered from the session, not executed twice.
#[tokio::test]
async fn a_retry_in_the_same_batch_as_its_original_applies_once() {
    let mut node = Node::new();
    let session = Some(SessionRef { client_id: 9, seq: 1 });
    let write = Request {
        session,
        command: Command::Put(PutOp {
            key: b"x".to_vec(),
            value: b"1".to_vec(),
            prev_kv: false,
        }),
    };
    let batch = Request::new(Command::Batch(vec![write.clone(), write.clone()]));
    let responses = flatten(node.apply(vec![batch]).await);
    assert_eq!(responses.len(), 2);
    assert_eq!(responses[0], responses[1], "the retry gets the original's response");
    assert_eq!(responses[0].revision, 1);
    let (kv, revision) = node.store.sm.reader().get(b"x").expect("get");
    assert_eq!(revision, 1, "one revision: applied once");
    assert_eq!(kv.expect("x is there").version, 1);
    assert_eq!(node.store.sm.reader().session_count(), 1);
}

fn plain_put(key: &str, value: &str) -> Request {
    Request::new(Command::Put(PutOp {
        key: key.as_bytes().to_vec(),
        value: value.as_bytes().to_vec(),
        prev_kv: false,
    }))
}

/// Compaction removes batch entries' history records whole: once it has moved past them, a store
/// fed batches holds exactly the versions and history of one fed one request per entry.
#[tokio::test]
async fn compaction_drops_batch_records_whole() {
    const KEEP: u64 = 20;
    let mut rng = StdRng::seed_from_u64(99);
    let reqs: Vec<Request> = requests(&mut rng, 400)
        .into_iter()
        .map(|mut r| {
            r.session = None;
            r
        })
        .collect();
    let mut single = Node::with_history(KEEP);
    let mut batched = Node::with_history(KEEP);
    for r in &reqs {
        single.apply(vec![r.clone()]).await;
    }
    for chunk in reqs.chunks(7) {
        batched.apply(vec![Request::new(Command::Batch(chunk.to_vec()))]).await;
    }
    // Then single-request entries, more than KEEP of them, so that both compact to the same point.
    for i in 0..2 * KEEP {
        let r = plain_put(&format!("tail/{i}"), "t");
        single.apply(vec![r.clone()]).await;
        batched.apply(vec![r]).await;
    }
    let revision = single.store.sm.reader().revision();
    assert_eq!(revision, batched.store.sm.reader().revision());
    let (versions, history) = batched.mvcc_data();
    assert_eq!(
        (versions, history.clone()),
        single.mvcc_data(),
        "versions and history after compaction"
    );
    let oldest = *history.keys().next().expect("recent history is kept");
    assert_eq!(
        oldest,
        revision - KEEP + 1,
        "exactly the last {KEEP} revisions are kept"
    );
}

/// History records written by builds before batch entries (one revision each, in the plain
/// record format) are still compacted.
#[tokio::test]
async fn compaction_reads_single_revision_records_of_earlier_builds() {
    let mut node = Node::with_history(1);
    node.apply(vec![plain_put("a", "1"), plain_put("b", "1")]).await;
    let tree = node.store.durability.db().open_tree("sm.0").expect("sm tree");
    // Rewrite the record of revision 2 as an earlier build wrote it.
    let key = codec::history_key(2);
    let old = keel_storage::sm::decode_history(2, &tree.get(key).unwrap().expect("record of revision 2")).unwrap();
    assert_eq!(old.len(), 1);
    tree.insert(key, codec::encode(&old[0].events)).unwrap();
    node.apply(vec![plain_put("b", "2"), plain_put("c", "1")]).await;
    let (versions, history) = node.mvcc_data();
    assert_eq!(
        history.keys().copied().collect::<Vec<_>>(),
        vec![4],
        "revisions 1-3 compacted"
    );
    let user_key = |k: &Vec<u8>| codec::group_user_key(codec::split_version_key(k).unwrap().0).unwrap();
    let b_versions = versions.keys().filter(|k| user_key(k) == b"b").count();
    assert_eq!(b_versions, 1, "the version of b superseded at revision 3 is gone");
}
