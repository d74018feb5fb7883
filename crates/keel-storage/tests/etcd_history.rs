//! Reads at past revisions and compaction through Raft (`KvReader::range_at`,
//! `Command::Compact`), as etcd's Range with `revision` and its Compact need them.

mod data_model_harness;

use data_model_harness::*;
use keel_storage::*;

fn at(n: &Node, rev: u64) -> Result<Vec<KeyValue>, ReadError> {
    let op = RangeOp::new(prefix(b""));
    n.store.sm.reader().range_at(&op, rev, usize::MAX).map(|(r, read_at)| {
        let expected = if rev == 0 { n.state().0 } else { rev };
        assert_eq!(read_at, expected, "read at the revision asked for");
        r.kvs
    })
}

#[tokio::test]
async fn range_at_reads_the_state_as_of_each_revision() {
    let mut n = Node::new(10_000);
    n.put(b"a", b"1").await;
    n.put(b"a", b"2").await;
    n.put(b"b", b"1").await;
    n.run(del(key(b"a"), false)).await;
    assert_eq!(at(&n, 1).unwrap(), vec![kv(b"a", b"1", 1, 1, 1)]);
    assert_eq!(at(&n, 2).unwrap(), vec![kv(b"a", b"2", 1, 2, 2)]);
    assert_eq!(
        at(&n, 3).unwrap(),
        vec![kv(b"a", b"2", 1, 2, 2), kv(b"b", b"1", 3, 3, 1)]
    );
    assert_eq!(at(&n, 4).unwrap(), vec![kv(b"b", b"1", 3, 3, 1)]);
    assert_eq!(at(&n, 0).unwrap(), at(&n, 4).unwrap(), "0 is the current revision");
    assert!(matches!(at(&n, 5), Err(ReadError::FutureRevision { current: 4 })));
    // Limits and keys-only apply as to a current read.
    let op = RangeOp {
        limit: 1,
        keys_only: true,
        ..RangeOp::new(prefix(b""))
    };
    let (r, _) = n.store.sm.reader().range_at(&op, 3, usize::MAX).unwrap();
    assert_eq!((r.kvs.len(), r.more, r.kvs[0].value.len()), (1, true, 0));
}

#[tokio::test]
async fn range_at_refuses_revisions_below_the_compaction_point() {
    let mut n = Node::new(3);
    for i in 0..10u8 {
        n.put(&[b'k', i % 3], &[i]).await;
    }
    n.blank().await;
    let reader = n.store.sm.reader();
    assert_eq!(reader.compacted(), 7, "history of 3 revisions at revision 10");
    assert!(matches!(at(&n, 6), Err(ReadError::Compacted { compacted: 7 })));
    assert!(matches!(at(&n, 1), Err(ReadError::Compacted { compacted: 7 })));
    // The state at the compaction point itself is whole.
    let at7 = at(&n, 7).unwrap();
    assert_eq!(
        at7,
        vec![
            kv(b"k\0", &[6], 1, 7, 3),
            kv(b"k\x01", &[4], 2, 5, 2),
            kv(b"k\x02", &[5], 3, 6, 2)
        ]
    );
    assert_eq!(at(&n, 10).unwrap().len(), 3);
}

#[tokio::test]
async fn compact_raises_the_floor_on_every_member_alike() {
    let mut n = Node::new(10_000);
    for i in 0..10u8 {
        n.put(&[b'k', i % 4], &[i]).await;
    }
    assert_eq!(
        n.run(Command::Compact(11)).await,
        resp(10, CommandResult::FutureRevision { current: 10 })
    );
    assert_eq!(
        n.run(Command::Compact(0)).await,
        resp(10, CommandResult::Compacted { compacted: 0 })
    );
    assert_eq!(n.run(Command::Compact(5)).await, resp(10, CommandResult::None));
    assert_eq!(
        n.store.sm.reader().compacted(),
        5,
        "compacted in the apply call of the Compact"
    );
    assert_eq!(
        n.run(Command::Compact(5)).await,
        resp(10, CommandResult::Compacted { compacted: 5 })
    );
    assert_eq!(
        n.run(Command::Compact(3)).await,
        resp(10, CommandResult::Compacted { compacted: 5 })
    );
    assert!(matches!(at(&n, 4), Err(ReadError::Compacted { compacted: 5 })));
    let at5 = at(&n, 5).unwrap();
    assert_eq!(at5.len(), 4);
    assert_eq!(
        n.store.sm.reader().oldest_change(),
        6,
        "watches from 5 on are refused too"
    );

    // The floor survives a restart, for reads and for the next Compact.
    let mut n = n.reopen().await;
    assert_eq!(n.store.sm.reader().compacted(), 5);
    assert!(matches!(at(&n, 4), Err(ReadError::Compacted { compacted: 5 })));
    assert_eq!(at(&n, 5).unwrap(), at5);
    assert_eq!(
        n.run(Command::Compact(5)).await,
        resp(10, CommandResult::Compacted { compacted: 5 })
    );
    assert_eq!(n.run(Command::Compact(8)).await, resp(10, CommandResult::None));
    assert!(matches!(at(&n, 7), Err(ReadError::Compacted { compacted: 8 })));
}

#[tokio::test]
async fn a_far_floor_is_reached_in_bounded_steps_and_refuses_reads_at_once() {
    let mut n = Node::new(10_000);
    let cmds = (0..600u32)
        .map(|i| put(format!("k{}", i % 50).as_bytes(), b"v"))
        .collect();
    n.apply_all(cmds).await;
    let mut compactions = n.store.sm.reader().compactions();
    assert_eq!(n.run(Command::Compact(600)).await.result, CommandResult::None);
    let reader = n.store.sm.reader();
    assert!(
        reader.compacted() < 600,
        "one step per apply call: {}",
        reader.compacted()
    );
    assert!(compactions.has_changed().unwrap());
    assert!(matches!(at(&n, 599), Err(ReadError::Compacted { compacted: 600 })));
    let mut applies = 0;
    while reader.compacted() < 600 {
        // An empty txn takes no revision; its apply call drives the compaction on.
        n.ops(vec![]).await;
        applies += 1;
        assert!(applies < 10, "compaction does not progress");
    }
    assert_eq!(*compactions.borrow_and_update(), 600);
    assert_eq!(at(&n, 600).unwrap().len(), 50);
}

#[tokio::test]
async fn lease_of_names_the_lease_a_key_is_attached_to_now() {
    let mut n = Node::new(10_000);
    n.run(Command::LeaseGrant(LeaseGrant { id: 7, ttl_ms: 5000 })).await;
    let leased = LeasedPut {
        put: put_op(b"k", b"v", false),
        lease: 7,
    };
    n.run(Command::LeasedPut(leased)).await;
    let reader = n.store.sm.reader();
    assert_eq!(reader.lease_of(b"k").unwrap(), Some(7));
    assert_eq!(reader.lease_of(b"missing").unwrap(), None);
    n.put(b"k", b"w").await;
    assert_eq!(reader.lease_of(b"k").unwrap(), None, "a plain put detaches");
}
