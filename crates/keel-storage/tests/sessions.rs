//! Exactly-once writes across client retries: the rules of client sessions one at a time, their
//! persistence, and sessions in snapshots, driven the way openraft drives the state machine.

mod sessions_harness;

use std::collections::HashMap;

use keel_storage::sm::sessions::MAX_REMEMBERED_RESPONSE;
use keel_storage::EntryPayload;
use keel_storage::*;
use openraft::storage::RaftStateMachine;
use sessions_harness::*;
use tokio::io::AsyncWriteExt;

// ---------------------------------------------------------------------------------------------
// The rules, one at a time

#[tokio::test]
async fn a_retried_put_applies_once_and_gets_the_same_response() {
    let mut n = Node::with_defaults();
    n.send(Request::new(put(b"k", b"old"))).await;
    let first = n.send(with_session(7, 1, put(b"k", b"new"))).await;
    let kv = n.get(b"k").unwrap();
    assert_eq!((first.revision, kv.version, kv.mod_revision), (2, 2, 2));
    let CommandResult::Put(PutResult { prev_kv: Some(prev) }) = &first.result else {
        panic!("expected a put result with prev_kv, got {:?}", first.result);
    };
    assert_eq!(prev.value, b"old");

    // The retry: same response (revision 2 and the prev_kv "old"), nothing applied again.
    let applied_before = n.store.sm.reader().applied_index();
    let retry = n.send(with_session(7, 1, put(b"k", b"new"))).await;
    assert_eq!(retry, first);
    assert_eq!(n.revision(), 2, "a retry takes no revision");
    assert_eq!(n.get(b"k").unwrap(), kv);
    assert_eq!(
        n.store.sm.reader().applied_index(),
        applied_before + 1,
        "the retry was applied as an entry"
    );

    // Later: other writes move the revision; a retry still answers with the original response.
    n.send(Request::new(put(b"other", b"x"))).await;
    assert_eq!(n.send(with_session(7, 1, put(b"k", b"new"))).await, first);
    assert_eq!(n.revision(), 3);

    // A retry in the same apply call as the original.
    let both = n
        .apply(vec![
            EntryPayload::Normal(with_session(7, 2, put(b"k", b"newer"))),
            EntryPayload::Normal(with_session(7, 2, put(b"k", b"newer"))),
        ])
        .await;
    assert_eq!(both[0], both[1]);
    assert_eq!(both[0].revision, 4);
    assert_eq!(n.get(b"k").unwrap().version, 3);
    assert_eq!(n.sessions(), 1);

    // Without a session a repeated write applies twice, as before.
    let a = n.send(Request::new(put(b"plain", b"v"))).await;
    let b = n.send(Request::new(put(b"plain", b"v"))).await;
    assert_eq!((a.revision, b.revision), (5, 6));
    assert_eq!(n.get(b"plain").unwrap().version, 2);
    assert_eq!(n.sessions(), 1);
}

#[tokio::test]
async fn a_retried_compare_and_swap_increment_applies_once() {
    let mut n = Node::with_defaults();
    let client = 0xC0FFEE;
    n.send(Request::new(put(b"counter", b"0"))).await;
    for i in 0..10u64 {
        let (old, new) = (i.to_string(), (i + 1).to_string());
        let seq = i + 1;
        let req = with_session(client, seq, cas(b"counter", old.as_bytes(), new.as_bytes()));
        let first = n.send(req.clone()).await;
        let CommandResult::Txn(t) = &first.result else {
            panic!("expected a txn result, got {:?}", first.result);
        };
        assert!(t.succeeded, "increment {i}");
        // Every increment's outcome is "unknown" to the client twice over.
        assert_eq!(n.send(req.clone()).await, first);
        assert_eq!(n.send(req).await, first);
    }
    let counter = n.get(b"counter").unwrap();
    assert_eq!(counter.value, b"10");
    assert_eq!(counter.version, 11);
    assert_eq!(n.revision(), 11);

    // Without the session, the retry of the last increment would have run the CAS again; it fails
    // (the counter moved) and reports the current value instead of the increment's success.
    let plain = n.send(Request::new(cas(b"counter", b"9", b"10"))).await;
    let CommandResult::Txn(t) = plain.result else { panic!() };
    assert!(!t.succeeded);
}

#[tokio::test]
async fn an_older_seq_is_stale_and_changes_nothing() {
    let mut n = Node::with_defaults();
    let mut responses = Vec::new();
    for seq in 1..=3 {
        responses.push(
            n.send(with_session(5, seq, put(b"k", format!("v{seq}").as_bytes())))
                .await,
        );
    }
    let before = (n.revision(), n.get(b"k"), session_state(&n.store).0);
    for seq in [1, 2] {
        let r = n.send(with_session(5, seq, put(b"k", b"late"))).await;
        assert_eq!(r.result, stale(5, seq, 3));
        assert_eq!(r.revision, 3, "answered at the current revision");
    }
    assert_eq!(
        (n.revision(), n.get(b"k"), session_state(&n.store).0),
        before,
        "nothing changed"
    );
    // The newest write's response is still remembered.
    assert_eq!(n.send(with_session(5, 3, put(b"k", b"v3"))).await, responses[2]);
    // And the session goes on; a skipped seq is fine.
    let r = n.send(with_session(5, 9, put(b"k", b"v9"))).await;
    assert_eq!(r.revision, 4);
}

#[tokio::test]
async fn an_unknown_session_starts_only_at_seq_one() {
    let mut n = Node::with_defaults();
    let r = n.send(with_session(42, 2, put(b"k", b"v"))).await;
    assert_eq!(r.result, expired(42, 2));
    assert_eq!((r.revision, n.revision(), n.get(b"k"), n.sessions()), (0, 0, None, 0));
    let r = n.send(with_session(42, 1, put(b"k", b"v"))).await;
    assert_eq!((r.revision, n.sessions()), (1, 1));
    let r = n.send(with_session(42, 2, put(b"k", b"w"))).await;
    assert_eq!(r.revision, 2);
}

#[tokio::test]
async fn clients_are_independent() {
    let mut n = Node::with_defaults();
    let a1 = n.send(with_session(1, 1, put(b"a", b"1"))).await;
    let b1 = n.send(with_session(2, 1, put(b"b", b"1"))).await;
    let b2 = n.send(with_session(2, 2, put(b"b", b"2"))).await;
    assert_eq!((a1.revision, b1.revision, b2.revision), (1, 2, 3));
    // Client 1 is still at seq 1, whatever client 2 did with the same numbers.
    assert_eq!(n.send(with_session(1, 1, put(b"a", b"1"))).await, a1);
    let a2 = n.send(with_session(1, 2, put(b"a", b"2"))).await;
    assert_eq!(a2.revision, 4);
    assert_eq!(n.send(with_session(2, 1, put(b"b", b"1"))).await.result, stale(2, 1, 2));
    assert_eq!(n.send(with_session(2, 2, put(b"b", b"2"))).await, b2);
    assert_eq!(n.sessions(), 2);
}

#[tokio::test]
async fn a_response_too_large_to_remember_still_applies_once() {
    let mut n = Node::with_defaults();
    let big = vec![b'x'; MAX_REMEMBERED_RESPONSE + 1];
    n.send(Request::new(put(b"big", &big))).await;
    let first = n.send(with_session(3, 1, put(b"big", b"small"))).await;
    let CommandResult::Put(p) = &first.result else { panic!() };
    assert_eq!(p.prev_kv.as_ref().unwrap().value, big);
    // The retry learns that seq 1 was applied, not its result; nothing is applied again.
    let retry = n.send(with_session(3, 1, put(b"big", b"small"))).await;
    assert_eq!(retry.result, stale(3, 1, 1));
    assert_eq!(n.revision(), 2);
    assert_eq!(n.get(b"big").unwrap().version, 2);
}

#[tokio::test]
async fn sessions_expire_after_ttl_entries_of_disuse() {
    let mut n = Node::new(config(10, 1000));
    let a = n.send(with_session(1, 1, put(b"a", b"1"))).await;
    let b = n.send(with_session(2, 1, put(b"b", b"1"))).await;
    let (la, lb) = (n.index - 1, n.index);
    // Entries count, not revisions: blanks age sessions too. Up to la + 9, both are alive.
    n.blanks((la + 9 - n.index) as usize).await;
    assert_eq!(n.sessions(), 2);
    // A retry at la + 10 (the entry at which `a` would expire) is still answered, and refreshes
    // `a`; the entry after it expires nothing.
    assert_eq!(n.index + 1, la + 10);
    assert_eq!(n.send(with_session(1, 1, put(b"a", b"1"))).await, a);
    assert_eq!(n.sessions(), 2);
    // At lb + 10, `b` expires.
    n.blanks((lb + 10 - n.index) as usize).await;
    assert_eq!(n.sessions(), 1);
    let r = n.send(with_session(2, 1, put(b"b", b"1"))).await;
    assert_ne!(
        r, b,
        "b expired: its first write is executed again (the documented gap)"
    );
    let r = n.send(with_session(2, 2, put(b"b", b"2"))).await;
    assert_eq!(r.revision, n.revision(), "b restarted its session");
    // A session that continues past its expiry point is refused, not executed.
    n.blanks(10).await;
    let rev = n.revision();
    let r = n.send(with_session(2, 3, put(b"b", b"3"))).await;
    assert_eq!((r.result, n.revision()), (expired(2, 3), rev));
    assert_eq!(n.sessions(), 0);
    assert_eq!(session_state(&n.store), (vec![], vec![]));
}

#[tokio::test]
async fn beyond_max_sessions_the_least_recently_used_is_evicted() {
    let mut n = Node::new(config(1_000_000, 3));
    let mut first = HashMap::new();
    for c in 1..=3 {
        first.insert(c, n.send(with_session(c, 1, put(b"k", &[c as u8]))).await);
    }
    // Client 1 retries, so client 2 is now the least recently used.
    assert_eq!(n.send(with_session(1, 1, put(b"k", &[1]))).await, first[&1]);
    n.send(with_session(4, 1, put(b"k", &[4]))).await;
    assert_eq!(n.sessions(), 3);
    assert_eq!(n.send(with_session(2, 2, put(b"k", &[2]))).await.result, expired(2, 2));
    assert_eq!(n.send(with_session(1, 1, put(b"k", &[1]))).await, first[&1]);
    assert_eq!(n.send(with_session(3, 1, put(b"k", &[3]))).await, first[&3]);
    assert_eq!(n.sessions(), 3);
}

#[tokio::test]
async fn sessions_survive_a_restart() {
    let mut n = Node::new(config(50, 100));
    let r1 = n.send(with_session(11, 1, put(b"k", b"1"))).await;
    let r2 = n.send(with_session(12, 1, cas(b"k", b"1", b"2"))).await;
    let state = session_state(&n.store);
    let mut n = n.reopen().await;
    assert_eq!(session_state(&n.store), state);
    assert_eq!(n.sessions(), 2);
    assert_eq!(n.send(with_session(11, 1, put(b"k", b"1"))).await, r1);
    assert_eq!(n.send(with_session(12, 1, cas(b"k", b"1", b"2"))).await, r2);
    assert_eq!(n.revision(), 2);
    // Expiry continues from the persisted last indexes.
    n.blanks(50).await;
    assert_eq!(n.sessions(), 0);
}

// ---------------------------------------------------------------------------------------------
// Snapshots

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_travel_in_snapshots() {
    let mut src = Node::new(config(100, 50));
    let r1 = src.send(with_session(1, 1, put(b"k", b"1"))).await;
    src.send(with_session(2, 1, cas(b"k", b"1", b"2"))).await;
    let r3 = src.send(with_session(2, 2, cas(b"k", b"1", b"3"))).await;
    let CommandResult::Txn(TxnResult { succeeded: false, .. }) = r3.result else {
        panic!("the compare fails: {r3:?}");
    };
    let (meta, bytes) = build(&mut src.store).await;
    assert_eq!(
        sessions_in_file(&bytes),
        snapshot_sessions(&session_state(&src.store).0)
    );

    let mut dst = Node::new(config(100, 50));
    install(&mut dst.store, &meta, &bytes).await;
    dst.index = src.index;
    assert_eq!(session_state(&dst.store), session_state(&src.store));
    assert_eq!(dst.sessions(), 2);
    // A retry on the new node gets the response remembered on the old one.
    assert_eq!(dst.send(with_session(1, 1, put(b"k", b"1"))).await, r1);
    assert_eq!(
        dst.send(with_session(2, 1, put(b"k", b"1"))).await.result,
        stale(2, 1, 2)
    );
    assert_eq!(dst.revision(), 2);
    // Remembered: the failed compare and the value it read, not a new attempt (which would
    // succeed now that k holds "1" again).
    dst.send(Request::new(put(b"k", b"1"))).await;
    assert_eq!(dst.send(with_session(2, 2, cas(b"k", b"1", b"3"))).await, r3);
    assert_eq!((dst.revision(), dst.get(b"k").unwrap().value), (3, b"1".to_vec()));
    // And expiry continues where the source left it.
    dst.blanks(100).await;
    assert_eq!(dst.sessions(), 0);

    // Installing replaces the sessions too: a snapshot without sessions removes them.
    let mut empty = Node::new(config(100, 50));
    empty.index = dst.index + 10;
    empty.blanks(1).await;
    let mut with = Node::new(config(100, 50));
    with.send(with_session(9, 1, put(b"z", b"1"))).await;
    let (meta, bytes) = build(&mut empty.store).await;
    assert!(sessions_in_file(&bytes).is_empty());
    install(&mut with.store, &meta, &bytes).await;
    assert_eq!(with.sessions(), 0);
    assert_eq!(session_state(&with.store), (vec![], vec![]));
}

/// A one-session node's snapshot with its session record changed by `forge`, and the node that
/// installs it: the install must fail and leave no session.
async fn install_forged_session(forge: impl Fn(SnapshotSession) -> SnapshotSession) {
    let mut src = Node::with_defaults();
    src.send(with_session(1, 1, put(b"k", b"v"))).await;
    let (meta, bytes) = build(&mut src.store).await;
    let (mut reader, header) = SnapshotReader::open(&bytes[..]).unwrap();
    let mut writer = SnapshotWriter::new(Vec::new(), &header).unwrap();
    let mut forged = 0;
    while let Some(record) = reader.next_record().unwrap() {
        match record {
            SnapshotRecord::Kv(kv) => writer.push(&kv).unwrap(),
            SnapshotRecord::Session(s) => {
                forged += 1;
                writer.push_session(&forge(s)).unwrap()
            }
            other => panic!("no leases here: {other:?}"),
        }
    }
    assert_eq!(forged, 1);
    let bad = writer.finish().unwrap().0;
    let mut dst = Node::with_defaults();
    let mut rx = dst.store.sm.snapshot_inbox().create_file().unwrap();
    rx.write_all(&bad).await.unwrap();
    rx.flush().await.unwrap();
    assert!(dst.store.sm.install_snapshot(&meta, rx).await.is_err());
    assert_eq!(dst.sessions(), 0);
}

#[tokio::test]
async fn a_snapshot_with_a_session_from_after_its_index_is_refused() {
    install_forged_session(|s| SnapshotSession {
        last_index: s.last_index + 1,
        ..s
    })
    .await;
}

/// A session record whose remembered response does not decode (a forged file: the CRCs match) is
/// refused when the snapshot is installed, not found later by a retry that needs the response.
#[tokio::test]
async fn a_snapshot_session_whose_response_does_not_decode_is_refused() {
    install_forged_session(|s| {
        assert!(!s.response.is_empty(), "the put's response is remembered");
        SnapshotSession {
            response: vec![0xEE; 9],
            ..s
        }
    })
    .await;
}
