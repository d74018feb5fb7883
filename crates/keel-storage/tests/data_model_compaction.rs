//! The data model's history compaction: a store keeping N revisions of history keeps exactly the
//! versions and history records that reads at retained revisions need (checked against a model of
//! every revision), compacts a bounded step per apply call, and goes on from its persisted
//! compaction point after a reopen. (The store harness: `data_model_harness/`.)

mod data_model_harness;

use std::collections::{BTreeMap, BTreeSet};

use data_model_harness::*;
use keel_storage::codec::{self, HISTORY_PREFIX, VERSION_PREFIX};
use keel_storage::sm::mvcc::{self, LiveIter};
use keel_storage::sm::HistoryEvent;
use keel_storage::*;

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

#[tokio::test]
async fn retention_compacts_in_chunks_of_a_sixteenth() {
    // 160 revisions kept: retention waits until 10 more are past the line, then drops them in
    // one step; a member so keeps between 160 and 169 revisions of history.
    const KEEP: u64 = 160;
    let mut n = Node::new(KEEP);
    let history = |n: &Node| -> Vec<u64> { history_records(&n.sm_tree()).into_keys().collect() };
    for i in 0..KEEP + 9 {
        n.put(format!("k/{}", i % 7).as_bytes(), b"v").await;
    }
    assert_eq!(
        history(&n),
        (1..=KEEP + 9).collect::<Vec<_>>(),
        "9 past the line: not yet"
    );
    n.put(b"k/0", b"v").await;
    assert_eq!(
        history(&n),
        (11..=KEEP + 10).collect::<Vec<_>>(),
        "10 past it: compacted"
    );
    for _ in 0..9 {
        n.put(b"k/1", b"v").await;
    }
    assert_eq!(history(&n).len() as u64, KEEP + 9);
    // The key written last reads at its newest revision.
    assert_eq!(n.get(b"k/1").map(|kv| kv.mod_revision), Some(KEEP + 19));
}
