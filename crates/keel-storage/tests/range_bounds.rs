//! A range read does work in proportion to what it returns, not to the size of the range: it
//! stops at `limit` (and at the byte bound of a response), and pays for a full count only when
//! the caller asks for one (`count_only`).
//!
//! The work is observed through the iterator that feeds [`mvcc::collect_range`] (the function
//! both the server's reads and txn reads collect with): the test counts how many live pairs it
//! pulls.

use std::cell::Cell;

use keel_storage::sm::mvcc::{self, LiveIter, MvccError};
use keel_storage::EntryPayload;
use keel_storage::*;
use tempfile::TempDir;

const KEYS: u64 = 2_000;

/// A store holding `k0000..k1999` (value: the key), at revision `KEYS`.
async fn filled() -> (TempDir, Store) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut store = keel_storage::open(dir.path(), &StoreConfig::default()).expect("open store");
    let entries = (1..=KEYS)
        .map(|i| {
            let key = format!("k{:04}", i - 1).into_bytes();
            let request = Request::new(Command::Put(PutOp {
                value: key.clone(),
                key,
                prev_kv: false,
            }));
            Entry {
                log_id: keel_storage::log_id_at(1, 1, i),
                payload: EntryPayload::Normal(request),
            }
        })
        .collect::<Vec<_>>();
    store.sm.apply_entries(entries).expect("apply");
    assert_eq!(store.sm.reader().key_count(), KEYS);
    (dir, store)
}

fn sm_tree(store: &Store) -> sled::Tree {
    store.durability.db().open_tree("sm.0").expect("sm tree")
}

/// Counts the pairs pulled out of the wrapped iterator.
struct Counting<'a, I> {
    inner: I,
    pulled: &'a Cell<u64>,
}

impl<I: Iterator<Item = Result<KeyValue, MvccError>>> Iterator for Counting<'_, I> {
    type Item = I::Item;
    fn next(&mut self) -> Option<I::Item> {
        let item = self.inner.next();
        if item.is_some() {
            self.pulled.set(self.pulled.get() + 1);
        }
        item
    }
}

/// Collect `op` over every key of the store; returns the result and how many pairs were pulled.
fn collect(tree: &sled::Tree, op: &RangeOp) -> (RangeResult, u64) {
    let pulled = Cell::new(0);
    let pairs = Counting {
        inner: LiveIter::new(tree, &op.range, KEYS),
        pulled: &pulled,
    };
    let result = mvcc::collect_range(pairs, op).expect("collect");
    (result, pulled.get())
}

fn everything(limit: u64) -> RangeOp {
    RangeOp {
        limit,
        ..RangeOp::new(KeyRange::Prefix(Vec::new()))
    }
}

fn key(i: u64) -> Vec<u8> {
    format!("k{i:04}").into_bytes()
}

#[tokio::test]
async fn a_limited_range_stops_at_the_limit() {
    let (_dir, store) = filled().await;
    let tree = sm_tree(&store);
    for limit in [1, 2, 10, 500] {
        let (r, pulled) = collect(&tree, &everything(limit));
        let keys: Vec<Vec<u8>> = r.kvs.iter().map(|kv| kv.key.clone()).collect();
        assert_eq!(keys, (0..limit).map(key).collect::<Vec<_>>(), "limit {limit}");
        assert!(r.more, "limit {limit}: more keys exist");
        // The limit, and one more pair to tell whether there are more.
        assert!(pulled <= limit + 1, "limit {limit}: {pulled} pairs visited of {KEYS}");
    }
    // A limit that the range does not reach: everything, no more.
    for limit in [KEYS, KEYS + 1, 0] {
        let (r, pulled) = collect(&tree, &everything(limit));
        assert_eq!(
            (r.kvs.len() as u64, r.count, r.more),
            (KEYS, KEYS, false),
            "limit {limit}"
        );
        assert_eq!(pulled, KEYS);
    }
    // A narrower range with a limit: stops inside it.
    let op = RangeOp {
        limit: 3,
        ..RangeOp::new(KeyRange::Prefix(b"k01".to_vec()))
    };
    let (r, pulled) = collect(&tree, &op);
    assert_eq!(
        r.kvs.iter().map(|kv| kv.key.clone()).collect::<Vec<_>>(),
        [key(100), key(101), key(102)]
    );
    assert!(r.more && pulled <= 4, "{pulled} pairs visited");

    // The reader (what the server calls) agrees.
    let (r, _) = store.sm.reader().range(&everything(1)).expect("range");
    assert_eq!((r.kvs.len(), r.more), (1, true));
    assert_eq!(r.kvs[0].key, key(0));
}

#[tokio::test]
async fn a_full_count_is_paid_only_when_asked_for() {
    let (_dir, store) = filled().await;
    let tree = sm_tree(&store);
    // Without count_only, a limit that cuts the range leaves `count` at what was returned
    // (with `more` set): counting the rest would mean visiting it.
    let (r, pulled) = collect(&tree, &everything(1));
    assert_eq!((r.kvs.len(), r.count, r.more, pulled), (1, 1, true, 2));
    let (r, _) = store.sm.reader().range(&everything(5)).expect("range");
    assert_eq!((r.kvs.len(), r.count, r.more), (5, 5, true));
    // keys_only is no different.
    let keys_only = RangeOp {
        keys_only: true,
        ..everything(7)
    };
    let (r, pulled) = collect(&tree, &keys_only);
    assert_eq!((r.kvs.len(), r.count, r.more, pulled), (7, 7, true, 8));
    assert!(r.kvs.iter().all(|kv| kv.value.is_empty()));
    // count_only asks for the count of the whole range, whatever the limit: that one visits
    // every key, and returns none.
    for limit in [0, 1, 10] {
        let count_only = RangeOp {
            count_only: true,
            ..everything(limit)
        };
        let (r, pulled) = collect(&tree, &count_only);
        assert_eq!((r.kvs.len() as u64, r.count, r.more, pulled), (0, KEYS, false, KEYS));
        let (r, _) = store.sm.reader().range(&count_only).expect("range");
        assert_eq!((r.kvs.len() as u64, r.count, r.more), (0, KEYS, false));
    }
}

/// Like [`collect`], with a byte bound.
fn collect_bounded(tree: &sled::Tree, op: &RangeOp, max_bytes: usize) -> (RangeResult, u64) {
    let pulled = Cell::new(0);
    let pairs = Counting {
        inner: LiveIter::new(tree, &op.range, KEYS),
        pulled: &pulled,
    };
    let result = mvcc::collect_range_bounded(pairs, op, max_bytes).expect("collect");
    (result, pulled.get())
}

#[tokio::test]
async fn a_result_is_bounded_in_bytes_and_never_empty_with_more() {
    let (_dir, store) = filled().await;
    let tree = sm_tree(&store);
    // Every pair here is the same size: a 5-byte key and the same as value.
    let (first, _) = collect(&tree, &everything(1));
    let pair = mvcc::response_bytes(&first.kvs[0]);
    assert_eq!(pair, 10 + mvcc::KV_ENCODING_OVERHEAD);

    // Room for exactly 10 pairs, or one byte less.
    let (r, pulled) = collect_bounded(&tree, &everything(0), 10 * pair);
    assert_eq!((r.kvs.len(), r.count, r.more, pulled), (10, 10, true, 11));
    let (r, _) = collect_bounded(&tree, &everything(0), 10 * pair - 1);
    assert_eq!((r.kvs.len(), r.count, r.more), (9, 9, true));
    // The limit, when it comes first.
    let (r, _) = collect_bounded(&tree, &everything(4), 10 * pair);
    assert_eq!((r.kvs.len(), r.count, r.more), (4, 4, true));
    // A bound smaller than any pair: the first pair still comes, alone.
    for max in [0, 1, pair - 1, pair] {
        let (r, pulled) = collect_bounded(&tree, &everything(0), max);
        assert_eq!((r.kvs.len(), r.more, pulled), (1, true, 2), "max {max}");
        assert_eq!(r.kvs[0], first.kvs[0]);
    }
    // keys_only pairs are smaller, so more fit.
    let keys_only = RangeOp {
        keys_only: true,
        ..everything(0)
    };
    let (r, _) = collect_bounded(&tree, &keys_only, 10 * pair);
    assert_eq!(r.kvs.len(), 10 * pair / (5 + mvcc::KV_ENCODING_OVERHEAD));
    // count_only returns no pairs: the bound does not apply.
    let count_only = RangeOp {
        count_only: true,
        ..everything(0)
    };
    let (r, _) = collect_bounded(&tree, &count_only, 1);
    assert_eq!((r.kvs.len() as u64, r.count, r.more), (0, KEYS, false));

    // Through the reader: page through the whole store, continuing after each page's last key;
    // every pair comes exactly once, in order, and no page is empty.
    let reader = store.sm.reader();
    let mut from = Vec::new();
    let mut got = Vec::new();
    let mut pages = 0;
    loop {
        let op = RangeOp::new(match from.is_empty() {
            true => KeyRange::Prefix(Vec::new()),
            false => KeyRange::From(from.clone()),
        });
        let (r, _) = reader.range_bounded(&op, 300 * pair + 17).expect("range");
        pages += 1;
        assert!(!r.kvs.is_empty(), "page {pages} is empty");
        assert!(r.more || r.kvs.len() <= 300);
        got.extend(r.kvs.iter().map(|kv| kv.key.clone()));
        if !r.more {
            break;
        }
        assert_eq!(r.kvs.len(), 300, "page {pages}");
        from = got.last().expect("not empty").clone();
        from.push(0);
    }
    assert_eq!(pages, KEYS.div_ceil(300));
    assert_eq!(got, (0..KEYS).map(key).collect::<Vec<_>>());
}

#[tokio::test]
async fn keys_only_and_count_only_reads_leave_values_out() {
    let (_dir, store) = filled().await;
    let reader = store.sm.reader();
    let op = |keys_only, count_only| RangeOp {
        keys_only,
        count_only,
        limit: 3,
        ..RangeOp::new(KeyRange::Prefix(b"k00".to_vec()))
    };
    let (full, _) = reader.range(&op(false, false)).expect("range");
    let (keys, _) = reader.range(&op(true, false)).expect("range");
    assert_eq!(full.kvs.len(), 3);
    for (f, k) in full.kvs.iter().zip(&keys.kvs) {
        assert_eq!(f.value, f.key);
        assert_eq!(
            *k,
            KeyValue {
                value: Vec::new(),
                ..f.clone()
            }
        );
    }
    let (count, _) = reader.range(&op(false, true)).expect("range");
    assert_eq!((count.kvs.len(), count.count, count.more), (0, 100, false));
    // A one-key range, live and missing.
    let (r, _) = reader.range(&RangeOp::new(KeyRange::Key(key(7)))).expect("range");
    assert_eq!((r.kvs.len(), r.count, r.more), (1, 1, false));
    assert_eq!(r.kvs[0].value, key(7));
    let (r, _) = reader
        .range(&RangeOp::new(KeyRange::Key(b"k".to_vec())))
        .expect("range");
    assert_eq!(r, RangeResult::default());
}
