//! The changes a watch reads (`KvReader::changes`): every change of the retained history, in
//! revision order, with the value after and (if asked) before it; the events of one revision
//! together; a start below the retained history refused with the compaction point.

use keel_storage::*;
use tempfile::TempDir;

struct Node {
    _dir: TempDir,
    store: Store,
    index: u64,
}

impl Node {
    fn new(history: u64) -> Node {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = StoreConfig::default();
        config.sm.history_revisions = history;
        let store = keel_storage::open(dir.path(), &config).expect("open store");
        Node {
            _dir: dir,
            store,
            index: 0,
        }
    }

    fn run(&mut self, cmd: Command) -> u64 {
        let req = Request::new(cmd);
        assert_eq!(validate_request(&req, &Limits::default()), Ok(()));
        self.index += 1;
        let entry = Entry {
            log_id: keel_storage::log_id_at(1, 1, self.index),
            payload: EntryPayload::Normal(req),
        };
        self.store
            .sm
            .apply_entries(vec![entry])
            .expect("apply")
            .remove(0)
            .revision
    }

    fn put(&mut self, k: &str, v: &str) -> u64 {
        self.run(Command::Put(PutOp {
            key: k.into(),
            value: v.into(),
            prev_kv: false,
        }))
    }

    fn changes(&self, range: KeyRange, from: u64, limit: usize) -> Result<Changes, ChangesError> {
        self.store.sm.reader().changes(&range, from, limit, usize::MAX, true)
    }
}

fn prefix(p: &str) -> KeyRange {
    KeyRange::Prefix(p.into())
}

/// (revision, deleted, key, value, previous value) of each change.
fn summary(c: &Changes) -> Vec<(u64, bool, String, String, Option<String>)> {
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    c.changes
        .iter()
        .map(|c| {
            (
                c.revision,
                c.deleted,
                text(&c.kv.key),
                text(&c.kv.value),
                c.prev_kv.as_ref().map(|p| text(&p.value)),
            )
        })
        .collect()
}

fn ch(rev: u64, deleted: bool, k: &str, v: &str, prev: Option<&str>) -> (u64, bool, String, String, Option<String>) {
    (rev, deleted, k.into(), v.into(), prev.map(String::from))
}

#[test]
fn every_change_in_order_with_values_before_and_after() {
    let mut n = Node::new(1000);
    assert_eq!(n.put("a/1", "x"), 1);
    assert_eq!(n.put("b/1", "elsewhere"), 2);
    let put = |k: &str, v: &str| {
        TxnOp::Put(PutOp {
            key: k.into(),
            value: v.into(),
            prev_kv: false,
        })
    };
    let txn = Command::Txn(Txn {
        compares: vec![],
        success: vec![put("a/1", "y"), put("a/2", "z")],
        failure: vec![],
    });
    assert_eq!(n.run(txn), 3);
    let del = Command::Delete(DeleteOp {
        range: prefix("a/"),
        prev_kv: false,
    });
    assert_eq!(n.run(del), 4);

    let all = n.changes(prefix("a/"), 1, usize::MAX).unwrap();
    assert_eq!(
        summary(&all),
        vec![
            ch(1, false, "a/1", "x", None),
            ch(3, false, "a/1", "y", Some("x")),
            ch(3, false, "a/2", "z", None),
            ch(4, true, "a/1", "", Some("y")),
            ch(4, true, "a/2", "", Some("z")),
        ]
    );
    assert_eq!((all.next, all.revision), (5, 4));
    let deleted = &all.changes[3].kv;
    assert_eq!((deleted.mod_revision, deleted.version), (4, 0));
    let created = &all.changes[2].kv;
    assert_eq!(
        (created.create_revision, created.mod_revision, created.version),
        (3, 3, 1)
    );

    // From the middle, and one key only.
    let one = n.changes(KeyRange::Key("a/2".into()), 4, usize::MAX).unwrap();
    assert_eq!(summary(&one), vec![ch(4, true, "a/2", "", Some("z"))]);
    // Nothing new yet: the next read starts where this one asked.
    let none = n.changes(prefix(""), 9, usize::MAX).unwrap();
    assert_eq!((none.changes.len(), none.next, none.revision), (0, 9, 4));
}

#[test]
fn a_limit_stops_after_a_whole_revision() {
    let mut n = Node::new(1000);
    n.put("k", "1");
    let txn = Command::Txn(Txn {
        compares: vec![],
        success: (0..3)
            .map(|i| {
                TxnOp::Put(PutOp {
                    key: format!("t{i}").into_bytes(),
                    value: b"v".to_vec(),
                    prev_kv: false,
                })
            })
            .collect(),
        failure: vec![],
    });
    n.run(txn);
    n.put("k", "3");
    let first = n.changes(prefix(""), 1, 2).unwrap();
    // Revision 1 alone is under the limit, so revision 2 comes too, whole.
    assert_eq!(
        first.changes.iter().map(|c| c.revision).collect::<Vec<_>>(),
        [1, 2, 2, 2]
    );
    assert_eq!(first.next, 3);
    let rest = n.changes(prefix(""), first.next, 2).unwrap();
    assert_eq!(summary(&rest), vec![ch(3, false, "k", "3", Some("1"))]);
    assert_eq!(rest.next, 4);
    // A byte limit stops the same way: revision 1's key and value (2 bytes) reach it.
    let small = n
        .store
        .sm
        .reader()
        .changes(&prefix(""), 1, usize::MAX, 2, false)
        .unwrap();
    assert_eq!((small.changes.len(), small.next), (1, 2));
}

#[test]
fn a_start_below_the_retained_history_is_refused_with_the_compaction_point() {
    let mut n = Node::new(5);
    let mut revisions = n.store.sm.reader().revisions();
    for i in 0..40 {
        n.put("k", &i.to_string());
    }
    assert!(revisions.has_changed().unwrap(), "watchers are told the revision moved");
    assert_eq!(*revisions.borrow_and_update(), 40);
    let oldest = n.store.sm.reader().oldest_change();
    assert!(
        oldest > 1 && oldest <= 36,
        "history of 5 revisions kept, oldest {oldest}"
    );
    match n.changes(prefix(""), oldest - 1, usize::MAX) {
        Err(ChangesError::Compacted(c)) => assert_eq!(c, oldest - 1),
        other => panic!("expected Compacted, got {other:?}"),
    }
    let kept = n.changes(prefix(""), oldest, usize::MAX).unwrap();
    assert_eq!(kept.changes.first().map(|c| c.revision), Some(oldest));
    assert_eq!(kept.changes.len() as u64, 40 - oldest + 1);
    // Every retained change still has its previous value.
    assert!(kept.changes.iter().all(|c| c.prev_kv.is_some()));
}
