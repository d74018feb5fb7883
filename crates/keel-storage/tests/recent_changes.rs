//! The window of recent changes in memory (`sm/recent.rs`) answers exactly as the history in sled
//! does: for random workloads of puts, deletes, txns that touch one key twice, leased keys and
//! their revocation, applied one entry or several at a time or as batch entries, every read the window answers equals
//! the read of sled, for every start, several ranges, limits and with and without previous
//! values. The window forgets, and says so, what it was not given: revisions from before a
//! restart, or older than its byte budget.

use keel_storage::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tempfile::TempDir;

struct Node {
    dir: TempDir,
    store: Store,
    index: u64,
}

impl Node {
    fn new() -> Node {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = keel_storage::open(dir.path(), &config()).expect("open store");
        Node { dir, store, index: 0 }
    }

    fn reopen(self) -> Node {
        let Node { dir, store, index } = self;
        drop(store);
        let store = keel_storage::open(dir.path(), &config()).expect("reopen store");
        Node { dir, store, index }
    }

    /// Apply `commands` as one batch entry (as the leader's proposer groups them).
    fn apply_batch(&mut self, commands: Vec<Command>) {
        let requests = commands.into_iter().map(Request::new).collect::<Vec<_>>();
        for req in &requests {
            assert_eq!(validate_request(req, &Limits::default()), Ok(()), "{req:?}");
        }
        self.index += 1;
        let entry = Entry {
            log_id: keel_storage::log_id_at(1, 1, self.index),
            payload: EntryPayload::Normal(Request::new(Command::Batch(requests))),
        };
        self.store.sm.apply_entries(vec![entry]).expect("apply");
    }

    /// Apply each of `commands` as an entry, all in one apply call.
    fn apply(&mut self, commands: Vec<Command>) {
        let entries = commands
            .into_iter()
            .map(|cmd| {
                let req = Request::new(cmd);
                assert_eq!(validate_request(&req, &Limits::default()), Ok(()), "{req:?}");
                self.index += 1;
                Entry {
                    log_id: keel_storage::log_id_at(1, 1, self.index),
                    payload: EntryPayload::Normal(req),
                }
            })
            .collect::<Vec<_>>();
        self.store.sm.apply_entries(entries).expect("apply");
    }

    fn revision(&self) -> u64 {
        self.store.sm.reader().revision()
    }
}

fn config() -> StoreConfig {
    let mut config = StoreConfig::default();
    config.sm.history_revisions = 100_000;
    config
}

fn put(key: String, value: String) -> PutOp {
    PutOp {
        key: key.into_bytes(),
        value: value.into_bytes(),
        prev_kv: false,
    }
}

fn delete(range: KeyRange) -> DeleteOp {
    DeleteOp { range, prev_kv: false }
}

/// One random command over keys k/0..k/9 and j/0..j/4.
fn command(rng: &mut StdRng, step: u64, lease: u64) -> Command {
    let key = |rng: &mut StdRng| match rng.random_range(0..3) {
        0 => format!("j/{}", rng.random_range(0..5)),
        _ => format!("k/{}", rng.random_range(0..10)),
    };
    match rng.random_range(0..10) {
        0..=4 => Command::Put(put(key(rng), format!("v{step}"))),
        5 => Command::Delete(delete(KeyRange::Key(key(rng).into_bytes()))),
        6 => Command::Delete(delete(KeyRange::Prefix(b"j/".to_vec()))),
        7 => {
            // Two keys in one revision (a txn may not name one key twice).
            let k = key(rng);
            let other = match k.starts_with("k/") {
                true => format!("j/{}", rng.random_range(0..5)),
                false => format!("k/{}", rng.random_range(0..10)),
            };
            Command::Txn(Txn {
                compares: vec![],
                success: vec![
                    TxnOp::Put(put(k.clone(), format!("t{step}"))),
                    TxnOp::Put(put(other, format!("u{step}"))),
                ],
                failure: vec![TxnOp::Delete(delete(KeyRange::Key(k.into_bytes())))],
            })
        }
        8 => Command::LeasedPut(LeasedPut {
            put: put(key(rng), format!("l{step}")),
            lease,
        }),
        _ => Command::Txn(Txn {
            compares: vec![Compare {
                key: b"k/0".to_vec(),
                op: CompareOp::Greater,
                target: CompareTarget::Version(1),
            }],
            success: vec![TxnOp::Delete(delete(KeyRange::Prefix(b"k/".to_vec())))],
            failure: vec![TxnOp::Put(put("k/0".into(), format!("f{step}")))],
        }),
    }
}

/// Compare the window's reads with sled's from every start; returns how many the window answered.
fn same_answers(node: &Node, from_floor: u64) -> usize {
    let reader = node.store.sm.reader();
    let current = node.revision();
    let ranges = [
        KeyRange::Prefix(b"".to_vec()),
        KeyRange::Prefix(b"k/".to_vec()),
        KeyRange::Key(b"j/3".to_vec()),
        KeyRange::Between {
            start: b"j/2".to_vec(),
            end: b"k/5".to_vec(),
        },
    ];
    let mut answered = 0;
    for from in from_floor..=current + 1 {
        for range in &ranges {
            for (limit, bytes) in [(usize::MAX, usize::MAX), (3, usize::MAX), (usize::MAX, 10)] {
                for prev_kv in [false, true] {
                    let Some(memory) = reader.recent_changes(range, from, limit, bytes, prev_kv) else {
                        continue;
                    };
                    let memory = memory.expect("window read");
                    let sled = reader
                        .history_changes(range, from, limit, bytes, prev_kv)
                        .expect("history read");
                    if memory != sled {
                        let first = memory.changes.iter().zip(&sled.changes).position(|(m, s)| m != s);
                        let at = first.unwrap_or(memory.changes.len().min(sled.changes.len()));
                        panic!(
                            "from {from}, {range:?}, limit {limit}, bytes {bytes}, prev {prev_kv}: they differ at change {at}: memory {:?}, sled {:?} (next {} / {}, revision {} / {})",
                            memory.changes.get(at),
                            sled.changes.get(at),
                            memory.next,
                            sled.next,
                            memory.revision,
                            sled.revision
                        );
                    }
                    answered += 1;
                }
            }
        }
    }
    answered
}

#[test]
fn the_window_answers_as_the_history_does() {
    for seed in 0..4 {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut node = Node::new();
        node.apply(vec![Command::LeaseGrant(LeaseGrant { id: 7, ttl_ms: 60_000 })]);
        for step in 0..150 {
            // One entry, several applied together, or one batch entry of several commands.
            let n = if rng.random_bool(0.4) {
                rng.random_range(2..5)
            } else {
                1
            };
            let commands = (0..n).map(|i| command(&mut rng, step * 10 + i, 7)).collect();
            match n > 1 && rng.random_bool(0.5) {
                true => node.apply_batch(commands),
                false => node.apply(commands),
            }
            if step == 100 {
                // Revoking the lease deletes its keys, in one revision.
                node.apply(vec![Command::LeaseRevoke(LeaseRef { id: 7 })]);
                node.apply(vec![Command::LeaseGrant(LeaseGrant { id: 7, ttl_ms: 60_000 })]);
            }
        }
        let current = node.revision();
        assert!(current > 150, "seed {seed}: {current} revisions");
        let answered = same_answers(&node, 1);
        // Every start from the first revision on fits in the window.
        assert_eq!(answered as u64, (current + 1) * 4 * 3 * 2, "seed {seed}");
    }
}

#[test]
fn after_a_restart_the_window_holds_only_what_was_applied_since() {
    let mut rng = StdRng::seed_from_u64(99);
    let mut node = Node::new();
    node.apply(vec![Command::LeaseGrant(LeaseGrant { id: 7, ttl_ms: 60_000 })]);
    for step in 0..40 {
        node.apply(vec![command(&mut rng, step, 7)]);
    }
    let before = node.revision();
    let node_before = node.reopen();
    let mut node = node_before;
    let reader = node.store.sm.reader();
    let all = KeyRange::Prefix(Vec::new());
    assert!(reader.recent_changes(&all, 1, usize::MAX, usize::MAX, true).is_none());
    assert_eq!(
        reader
            .changes(&all, before + 1, usize::MAX, usize::MAX, true)
            .expect("read")
            .changes,
        vec![],
        "nothing after the last revision"
    );
    for step in 40..80 {
        node.apply(vec![command(&mut rng, step, 7)]);
    }
    // From before the restart: sled only; from after it: the window, the same as sled.
    assert!(reader
        .recent_changes(&all, before, usize::MAX, usize::MAX, true)
        .is_none());
    assert!(reader
        .recent_changes(&all, before + 1, usize::MAX, usize::MAX, true)
        .is_some());
    assert!(same_answers(&node, before + 1) > 0);
    let full = reader.changes(&all, 1, usize::MAX, usize::MAX, true).expect("read");
    assert_eq!(full.changes.first().map(|c| c.revision), Some(1));
    assert_eq!(full.next, node.revision() + 1);
}

#[test]
fn the_window_forgets_the_oldest_past_its_budget() {
    let mut node = Node::new();
    let big = "x".repeat(256 * 1024);
    // 80 values of 256 KiB: 20 MiB, more than the window's 16.
    for i in 0..80 {
        node.apply(vec![Command::Put(put(format!("big/{i}"), big.clone()))]);
    }
    let reader = node.store.sm.reader();
    let all = KeyRange::Prefix(Vec::new());
    assert!(reader.recent_changes(&all, 1, usize::MAX, usize::MAX, false).is_none());
    let newest = reader
        .recent_changes(&all, 70, usize::MAX, usize::MAX, false)
        .expect("the newest are held")
        .expect("read");
    assert_eq!(
        newest,
        reader
            .history_changes(&all, 70, usize::MAX, usize::MAX, false)
            .expect("read")
    );
    assert_eq!(newest.changes.len(), 11);
    // Whatever the window forgot, changes() still reads, from sled.
    let all_changes = reader.changes(&all, 1, usize::MAX, usize::MAX, false).expect("read");
    assert_eq!(all_changes.changes.len(), 80);
}
