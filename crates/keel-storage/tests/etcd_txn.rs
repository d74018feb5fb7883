//! etcd's txn extensions: lease compares, range compares, nested txns and puts that keep the
//! value or lease (see `sm::txn` for the semantics and where they follow etcd).

mod data_model_harness;

use data_model_harness::*;
use keel_storage::*;

fn grant(id: u64) -> Command {
    Command::LeaseGrant(LeaseGrant { id, ttl_ms: 60_000 })
}

fn with(key: &[u8], value: &[u8], lease: u64, ignore_value: bool, ignore_lease: bool) -> PutWith {
    PutWith {
        put: put_op(key, value, true),
        lease,
        ignore_value,
        ignore_lease,
    }
}

fn ranged_cmp(k: &[u8], end: &[u8], op: CompareOp, target: CompareTarget) -> Compare {
    let target = CompareTarget::Range {
        end: end.to_vec(),
        target: Box::new(target),
    };
    cmp(k, op, target)
}

fn nested(compares: Vec<Compare>, success: Vec<TxnOp>, failure: Vec<TxnOp>) -> TxnOp {
    TxnOp::Txn(Txn {
        compares,
        success,
        failure,
    })
}

fn check(cmd: Command) -> Result<(), InvalidRequest> {
    validate_request(&Request::new(cmd), &Limits::default())
}

async fn holds(n: &mut Node, c: Compare) -> bool {
    n.txn(vec![c], vec![], vec![]).await.1.succeeded
}

#[tokio::test]
async fn lease_compares_see_the_key_lease_and_zero_for_none() {
    let mut n = Node::new(10_000);
    n.run(grant(7)).await;
    n.run(Command::PutWith(with(b"a", b"1", 7, false, false))).await;
    n.put(b"c", b"1").await;
    use CompareOp::*;
    use CompareTarget::Lease;
    assert!(holds(&mut n, cmp(b"a", Equal, Lease(7))).await);
    assert!(holds(&mut n, cmp(b"a", Greater, Lease(6))).await);
    assert!(!holds(&mut n, cmp(b"a", Equal, Lease(0))).await);
    assert!(holds(&mut n, cmp(b"c", Equal, Lease(0))).await, "a key without a lease");
    assert!(holds(&mut n, cmp(b"missing", Equal, Lease(0))).await, "a missing key");
    assert!(holds(&mut n, cmp(b"missing", Less, Lease(7))).await);
}

#[tokio::test]
async fn range_compares_hold_for_every_key_and_an_empty_range_is_a_missing_key() {
    let mut n = Node::new(10_000);
    n.put(b"a1", b"x").await;
    n.put(b"a2", b"x").await;
    n.put(b"b1", b"y").await;
    use CompareOp::*;
    use CompareTarget::*;
    assert!(holds(&mut n, ranged_cmp(b"a", b"b", Equal, Value(b"x".to_vec()))).await);
    assert!(!holds(&mut n, ranged_cmp(b"a", b"c", Equal, Value(b"x".to_vec()))).await);
    assert!(
        holds(&mut n, ranged_cmp(b"a", b"", Greater, CreateRevision(0))).await,
        "empty end: every key >= a"
    );
    assert!(
        !holds(&mut n, ranged_cmp(b"a", b"", Less, ModRevision(3))).await,
        "b1 has mod revision 3"
    );
    assert!(holds(&mut n, ranged_cmp(b"a", b"", Less, ModRevision(4))).await);
    // No key in the range: compared as one missing key.
    assert!(holds(&mut n, ranged_cmp(b"q", b"r", Equal, Version(0))).await);
    assert!(holds(&mut n, ranged_cmp(b"q", b"r", Equal, Lease(0))).await);
    assert!(
        !holds(&mut n, ranged_cmp(b"q", b"r", NotEqual, Value(vec![]))).await,
        "a value compare fails"
    );
    assert!(
        holds(&mut n, ranged_cmp(b"b", b"a", Equal, Version(0))).await,
        "an inverted range is empty"
    );
    // A range compare sees a batch entry's earlier writes, as every compare does.
    let ok = txn(
        vec![ranged_cmp(b"a", b"b", Equal, Value(b"x".to_vec()))],
        vec![],
        vec![],
    );
    let r = n.apply_all(vec![put(b"a3", b"z"), ok]).await;
    assert_eq!(r[1].result, CommandResult::Txn(txn_r(false, vec![])));
}

#[tokio::test]
async fn nested_txns_decide_up_front_and_write_at_one_revision() {
    let mut n = Node::new(10_000);
    n.put(b"x", b"0").await;
    use CompareOp::*;
    use CompareTarget::*;
    let inner = nested(
        // The state before the outer txn: "a" is missing although the outer branch puts it first.
        vec![cmp(b"a", Equal, Version(0))],
        vec![tput(b"b", b"then"), tget(prefix(b""))],
        vec![tput(b"b", b"else")],
    );
    let outer = txn(
        vec![cmp(b"x", Equal, Value(b"0".to_vec()))],
        vec![tput(b"a", b"1"), inner, tdel(key(b"x"), false)],
        vec![],
    );
    let r = n.run(outer).await;
    assert_eq!(r.revision, 2, "every write of the tree at the outer txn's one revision");
    let seen = vec![
        kv(b"a", b"1", 2, 2, 1),
        kv(b"b", b"then", 2, 2, 1),
        kv(b"x", b"0", 1, 1, 1),
    ];
    let expected = txn_r(
        true,
        vec![
            put_r(None).1,
            OpResult::Txn(txn_r(true, vec![put_r(None).1, ranged(seen)])),
            del_r(1, vec![]).1,
        ],
    );
    assert_eq!(r.result, CommandResult::Txn(expected));
    // Watches see the nested writes as any others, from sled and from the window in memory.
    let reader = n.store.sm.reader();
    let from_sled = reader.history_changes(&prefix(b""), 2, 100, usize::MAX, false).unwrap();
    let from_memory = reader
        .recent_changes(&prefix(b""), 2, 100, usize::MAX, false)
        .unwrap()
        .unwrap();
    assert_eq!(from_sled.changes, from_memory.changes);
    let changed: Vec<_> = from_sled
        .changes
        .iter()
        .map(|c| (c.revision, c.kv.key.clone(), c.deleted))
        .collect();
    assert_eq!(
        changed,
        vec![
            (2, b"a".to_vec(), false),
            (2, b"b".to_vec(), false),
            (2, b"x".to_vec(), true)
        ]
    );

    // The failure branch of a nested txn, inside a failed outer txn.
    let inner = nested(vec![cmp(b"a", Equal, Version(5))], vec![], vec![tput(b"c", b"1")]);
    let (rev, t) = n.txn(vec![cmp(b"x", Equal, Version(1))], vec![], vec![inner]).await;
    assert_eq!(rev, 3);
    assert_eq!(t, txn_r(false, vec![OpResult::Txn(txn_r(false, vec![put_r(None).1]))]));
    // A nested txn that writes nothing takes no revision.
    let (rev, _) = n.ops(vec![nested(vec![], vec![tget(key(b"a"))], vec![])]).await;
    assert_eq!(rev, 3);
}

#[tokio::test]
async fn puts_keep_the_value_or_lease_of_an_existing_key() {
    let mut n = Node::new(10_000);
    n.run(grant(7)).await;
    n.run(grant(8)).await;
    let r = n.run(Command::PutWith(with(b"k", b"", 0, true, false))).await;
    assert_eq!(r, resp(0, CommandResult::KeyNotFound { key: b"k".to_vec() }));
    let r = n.run(Command::PutWith(with(b"k", b"v", 0, false, true))).await;
    assert_eq!(r.result, CommandResult::KeyNotFound { key: b"k".to_vec() });
    let r = n.run(Command::PutWith(with(b"k", b"v", 9, false, false))).await;
    assert_eq!(r.result, CommandResult::LeaseNotFound { id: 9 });

    n.run(Command::PutWith(with(b"k", b"v", 7, false, false))).await;
    let reader = n.store.sm.reader();
    assert_eq!(reader.lease_of(b"k").unwrap(), Some(7));
    // Keep the value, move to lease 8.
    let r = n.run(Command::PutWith(with(b"k", b"", 8, true, false))).await;
    assert_eq!(r.revision, 2);
    assert_eq!(r.result, put_r(Some(kv(b"k", b"v", 1, 1, 1))).0);
    assert_eq!(
        (n.get(b"k").unwrap(), reader.lease_of(b"k").unwrap()),
        (kv(b"k", b"v", 1, 2, 2), Some(8))
    );
    // Keep the lease, new value.
    n.run(Command::PutWith(with(b"k", b"w", 0, false, true))).await;
    assert_eq!(
        (n.get(b"k").unwrap(), reader.lease_of(b"k").unwrap()),
        (kv(b"k", b"w", 1, 3, 3), Some(8))
    );
    // Keep both: a new version of the same thing.
    n.run(Command::PutWith(with(b"k", b"", 0, true, true))).await;
    assert_eq!(
        (n.get(b"k").unwrap(), reader.lease_of(b"k").unwrap()),
        (kv(b"k", b"w", 1, 4, 4), Some(8))
    );
    // Revoking lease 8 takes the key with it.
    n.run(Command::LeaseRevoke(LeaseRef { id: 8 })).await;
    assert_eq!(n.get(b"k"), None);
}

#[tokio::test]
async fn in_a_txn_a_kept_value_needs_the_key_before_the_txn_on_the_taken_path() {
    let mut n = Node::new(10_000);
    n.put(b"k", b"v").await;
    use CompareOp::*;
    use CompareTarget::*;
    let keep = |k: &[u8]| TxnOp::PutWith(with(k, b"", 0, true, false));
    // On the path not taken, a missing key does not matter.
    let (rev, t) = n
        .txn(
            vec![cmp(b"k", Equal, Version(1))],
            vec![keep(b"k")],
            vec![keep(b"missing")],
        )
        .await;
    assert_eq!((rev, t.succeeded), (2, true));
    assert_eq!(n.get(b"k").unwrap(), kv(b"k", b"v", 1, 2, 2));
    // On the taken path (nested too), it refuses the whole txn.
    let inner = nested(vec![], vec![keep(b"missing")], vec![]);
    let r = n.run(txn(vec![], vec![tput(b"other", b"1"), inner], vec![])).await;
    assert_eq!(
        r,
        resp(
            2,
            CommandResult::KeyNotFound {
                key: b"missing".to_vec()
            }
        )
    );
    assert_eq!(n.get(b"other"), None, "nothing applied");
    // A key the txn itself creates first does not count: etcd checks the state before it.
    let r = n
        .run(txn(
            vec![],
            vec![tput(b"new", b"1"), nested(vec![], vec![], vec![])],
            vec![],
        ))
        .await;
    assert_eq!(r.revision, 3);
    let inner = nested(vec![], vec![keep(b"new2")], vec![]);
    let r = n
        .run(txn(vec![cmp(b"new2", Equal, Version(0))], vec![inner], vec![]))
        .await;
    assert_eq!(r.result, CommandResult::KeyNotFound { key: b"new2".to_vec() });
    // A missing lease anywhere in the tree refuses it, as for flat txns.
    let leased = TxnOp::PutWith(with(b"z", b"1", 9, false, false));
    let r = n
        .run(txn(vec![], vec![], vec![nested(vec![], vec![], vec![leased])]))
        .await;
    assert_eq!(r.result, CommandResult::LeaseNotFound { id: 9 });
}

#[test]
fn validation_follows_etcd_for_put_options_and_nested_txns() {
    let pw = |p: PutWith| Command::PutWith(p);
    assert_eq!(
        check(pw(with(b"k", b"v", 0, true, false))),
        Err(InvalidRequest::ValueProvided)
    );
    assert_eq!(
        check(pw(with(b"k", b"", 7, false, true))),
        Err(InvalidRequest::LeaseProvided)
    );
    assert_eq!(check(pw(with(b"", b"", 0, true, true))), Err(InvalidRequest::EmptyKey));
    assert_eq!(check(pw(with(b"k", b"", 0, true, true))), Ok(()));
    assert_eq!(check(pw(with(b"k", b"v", 0, false, false))), Ok(()));

    let ops = |success: Vec<TxnOp>| txn(vec![], success, vec![]);
    let is_dup = |r: Result<(), InvalidRequest>| matches!(r, Err(InvalidRequest::DuplicateTxnKey { .. }));
    // A key in both branches of a nested txn is fine, twice on one path is not.
    assert_eq!(
        check(ops(vec![nested(
            vec![],
            vec![tput(b"a", b"1")],
            vec![tput(b"a", b"2")]
        )])),
        Ok(())
    );
    assert_eq!(
        check(ops(vec![nested(
            vec![],
            vec![tput(b"a", b"1")],
            vec![tdel(key(b"a"), false)]
        )])),
        Ok(())
    );
    assert!(is_dup(check(ops(vec![
        tput(b"a", b"1"),
        nested(vec![], vec![], vec![tput(b"a", b"2")])
    ]))));
    assert!(is_dup(check(ops(vec![
        tdel(prefix(b""), false),
        nested(vec![], vec![tput(b"a", b"2")], vec![])
    ]))));
    assert!(is_dup(check(ops(vec![
        nested(vec![], vec![tdel(prefix(b"a"), false)], vec![]),
        tput(b"ab", b"1")
    ]))));
    let twice = || nested(vec![], vec![tput(b"a", b"1")], vec![]);
    assert!(is_dup(check(ops(vec![twice(), twice()]))));
    assert!(is_dup(check(ops(vec![
        TxnOp::PutWith(with(b"a", b"", 0, true, false)),
        tput(b"a", b"1")
    ]))));
    // Nested parts are validated like the outer ones.
    assert_eq!(
        check(ops(vec![nested(vec![], vec![tput(b"", b"1")], vec![])])),
        Err(InvalidRequest::EmptyKey)
    );
    let bad_cmp = cmp(
        b"k",
        CompareOp::Equal,
        CompareTarget::Range {
            end: vec![],
            target: Box::new(CompareTarget::Range {
                end: vec![],
                target: Box::new(CompareTarget::Version(1)),
            }),
        },
    );
    assert_eq!(
        check(txn(vec![bad_cmp], vec![], vec![])),
        Err(InvalidRequest::NestedRangeCompare)
    );

    // Depth and total size are bounded.
    let deep = |levels: u32| {
        let mut t = nested(vec![], vec![], vec![]);
        for _ in 1..levels {
            t = nested(vec![], vec![t], vec![]);
        }
        ops(vec![t])
    };
    assert_eq!(check(deep(MAX_TXN_NESTING)), Ok(()));
    assert_eq!(
        check(deep(MAX_TXN_NESTING + 1)),
        Err(InvalidRequest::TxnTooDeep { max: MAX_TXN_NESTING })
    );
    let wide = |prefix: &str| {
        nested(
            vec![],
            (0..128).map(|i| tget(key(format!("{prefix}{i}").as_bytes()))).collect(),
            vec![],
        )
    };
    let r = check(ops((0..9).map(|i| wide(&i.to_string())).collect()));
    assert!(
        matches!(
            r,
            Err(InvalidRequest::TooManyTxnOps {
                what: "ops in nested txns",
                ..
            })
        ),
        "{r:?}"
    );
}
