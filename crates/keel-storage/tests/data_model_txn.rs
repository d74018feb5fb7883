//! The data model's txns, applied the way openraft applies them: every compare operator and
//! target on a present, a missing and a deleted key, exactly one branch taken, and reads inside a
//! txn that see its own earlier writes. (The store harness: `data_model_harness/`.)

mod data_model_harness;

use data_model_harness::*;
use keel_storage::*;

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
