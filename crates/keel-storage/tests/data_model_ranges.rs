//! The data model's range reads on byte keys: prefixes, single keys, `[start, end)` and
//! `from` ranges at the 0x00 and 0xFF edges, empty results, limit, keys_only and count_only, and
//! only each key's live version listed; through the reader and inside a read-only txn.
//! (The store harness: `data_model_harness/`.)

mod data_model_harness;

use data_model_harness::*;
use keel_storage::*;

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

/// Keys rewritten many times keep many versions (up to the history kept); a range read seeks
/// past a key's older versions instead of reading each. Whatever it skips, every range kind
/// lists exactly each key's live version, at the byte edges too, with tombstones newest for
/// some keys: checked against a model after every 50 writes, through the reader and in a txn.
#[tokio::test]
async fn ranges_over_keys_with_many_versions_list_each_live_version_once() {
    use std::collections::BTreeMap;
    let keys: [&[u8]; 9] = [
        b"\x00",
        b"\x00\x00",
        b"a",
        b"a\x00",
        b"a\x00b",
        b"ab",
        b"b",
        b"\xff",
        b"\xff\xff",
    ];
    let mut n = Node::new(10_000);
    let mut model: BTreeMap<Vec<u8>, KeyValue> = BTreeMap::new();
    let mut x = 7u64;
    for step in 0..600u64 {
        // A small LCG: deterministic, no dependency.
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let k = keys[(x >> 33) as usize % keys.len()];
        if (x >> 20).is_multiple_of(5) {
            let r = n.run(del(key(k), false)).await;
            if model.remove(k).is_some() {
                assert_eq!(r.revision, n.state().0);
            }
        } else {
            let value = [k, b"\x00\xff"].concat();
            let rev = n.put(k, &value).await;
            let (create, version) = model.get(k).map_or((rev, 1), |kv| (kv.create_revision, kv.version + 1));
            model.insert(k.to_vec(), kv(k, &value, create, rev, version));
        }
        if step % 50 != 49 {
            continue;
        }
        let expect = |pick: &dyn Fn(&[u8]) -> bool| -> Vec<KeyValue> {
            model
                .iter()
                .filter(|(k, _)| pick(k))
                .map(|(_, kv)| kv.clone())
                .collect()
        };
        let cases: Vec<(KeyRange, Vec<KeyValue>)> = vec![
            (prefix(b""), expect(&|_| true)),
            (prefix(b"a"), expect(&|k| k.starts_with(b"a"))),
            (prefix(b"\x00"), expect(&|k| k.starts_with(b"\x00"))),
            (prefix(b"\xff"), expect(&|k| k.starts_with(b"\xff"))),
            (
                between(b"a\x00", b"b"),
                expect(&|k| k >= &b"a\x00"[..] && k < &b"b"[..]),
            ),
            (from(b"ab"), expect(&|k| k >= &b"ab"[..])),
            (key(b"a"), expect(&|k| k == b"a")),
        ];
        for (range, expected) in cases {
            let res = n.range(RangeOp::new(range.clone()));
            assert_eq!(res.kvs, expected, "step {step}, {range:?}");
            let counted = n.range(RangeOp {
                count_only: true,
                ..RangeOp::new(range.clone())
            });
            assert_eq!(counted.count, expected.len() as u64, "step {step}, {range:?}");
            let (_, t) = n.ops(vec![tget(range.clone())]).await;
            assert_eq!(t.responses, [OpResult::Range(res)], "step {step}, {range:?}");
        }
    }
}
