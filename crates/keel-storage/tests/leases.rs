//! Leases in the state machine: grant, attach, renew, checkpoint, expire and revoke as log
//! entries, the same on every replica and through snapshots and restarts (see `sm::leases`).

mod sessions_harness;

use std::sync::{Arc, Mutex};

use keel_storage::codec::StoredLease;
use keel_storage::*;
use sessions_harness::*;

fn grant(id: u64, ttl_ms: u64) -> Request {
    Request::new(Command::LeaseGrant(LeaseGrant { id, ttl_ms }))
}

fn leased(key: &[u8], value: &[u8], lease: u64) -> Request {
    let put = PutOp {
        key: key.to_vec(),
        value: value.to_vec(),
        prev_kv: false,
    };
    Request::new(Command::LeasedPut(LeasedPut { put, lease }))
}

fn revoke(id: u64) -> Request {
    Request::new(Command::LeaseRevoke(LeaseRef { id }))
}

/// What only the leader proposes (clients are refused these by validation).
async fn leader_sends(node: &mut Node, command: Command) -> Response {
    node.apply(vec![EntryPayload::Normal(Request::new(command))])
        .await
        .remove(0)
}

fn lease(node: &Node, id: u64) -> Option<(StoredLease, Vec<Vec<u8>>)> {
    node.store
        .sm
        .reader()
        .lease(id)
        .unwrap()
        .map(|(info, keys)| (info.lease, keys))
}

fn keys(node: &Node, id: u64) -> Vec<Vec<u8>> {
    lease(node, id).map(|(_, k)| k).unwrap_or_default()
}

#[tokio::test]
async fn keys_attach_to_a_lease_and_go_with_it_in_one_revision() {
    let mut n = Node::with_defaults();
    let r = n.send(grant(7, 5000)).await;
    assert_eq!(
        r.result,
        CommandResult::Lease(LeaseResult::Granted { id: 7, ttl_ms: 5000 })
    );
    assert_eq!(r.revision, 0, "a grant changes no key");
    assert_eq!(n.send(grant(7, 9)).await.result, CommandResult::LeaseExists { id: 7 });

    for k in [&b"a"[..], b"b", b"c"] {
        n.send(leased(k, b"v", 7)).await;
    }
    n.send(Request::new(put(b"plain", b"v"))).await;
    assert_eq!(keys(&n, 7), [b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]);
    // A put without a lease detaches; a delete detaches.
    n.send(Request::new(put(b"b", b"v2"))).await;
    n.send(Request::new(Command::Delete(DeleteOp {
        range: KeyRange::Key(b"c".to_vec()),
        prev_kv: false,
    })))
    .await;
    assert_eq!(keys(&n, 7), [b"a".to_vec()]);
    // Re-attach through a txn, and a key that was deleted comes back leased.
    n.send(Request::new(Command::Txn(Txn {
        compares: vec![],
        success: vec![TxnOp::LeasedPut(LeasedPut {
            put: PutOp {
                key: b"c".to_vec(),
                value: b"again".to_vec(),
                prev_kv: false,
            },
            lease: 7,
        })],
        failure: vec![],
    })))
    .await;
    assert_eq!(keys(&n, 7), [b"a".to_vec(), b"c".to_vec()]);

    let before = n.revision();
    let r = n.send(revoke(7)).await;
    assert_eq!(
        r.result,
        CommandResult::Lease(LeaseResult::Revoked { id: 7, deleted: 2 })
    );
    assert_eq!(r.revision, before + 1, "both keys go in one revision");
    assert_eq!((n.get(b"a"), n.get(b"c")), (None, None));
    assert!(n.get(b"b").is_some() && n.get(b"plain").is_some());
    assert_eq!(lease(&n, 7), None);
    let changes = n
        .store
        .sm
        .reader()
        .changes(&KeyRange::Prefix(Vec::new()), before + 1, 100, usize::MAX, false)
        .unwrap();
    let deleted: Vec<(u64, bool, Vec<u8>)> = changes
        .changes
        .iter()
        .map(|c| (c.revision, c.deleted, c.kv.key.clone()))
        .collect();
    assert_eq!(
        deleted,
        [(before + 1, true, b"a".to_vec()), (before + 1, true, b"c".to_vec())]
    );
    // Gone is gone; a lease without keys takes no revision when revoked.
    assert_eq!(n.send(revoke(7)).await.result, CommandResult::LeaseNotFound { id: 7 });
    n.send(grant(8, 1000)).await;
    let r = n.send(revoke(8)).await;
    assert_eq!(
        r.result,
        CommandResult::Lease(LeaseResult::Revoked { id: 8, deleted: 0 })
    );
    assert_eq!(r.revision, before + 1);
}

#[tokio::test]
async fn a_put_or_txn_naming_a_missing_lease_applies_nothing() {
    let mut n = Node::with_defaults();
    n.send(Request::new(put(b"k", b"v"))).await;
    let before = n.revision();
    assert_eq!(
        n.send(leased(b"k", b"w", 3)).await.result,
        CommandResult::LeaseNotFound { id: 3 }
    );
    // Even in the branch that does not run, and beside writes that would succeed.
    let txn = Txn {
        compares: vec![],
        success: vec![TxnOp::Put(PutOp {
            key: b"other".to_vec(),
            value: b"x".to_vec(),
            prev_kv: false,
        })],
        failure: vec![TxnOp::LeasedPut(LeasedPut {
            put: PutOp {
                key: b"k".to_vec(),
                value: b"w".to_vec(),
                prev_kv: false,
            },
            lease: 3,
        })],
    };
    let r = n.send(Request::new(Command::Txn(txn))).await;
    assert_eq!(r.result, CommandResult::LeaseNotFound { id: 3 });
    assert_eq!(n.revision(), before);
    assert_eq!(n.get(b"k").unwrap().value, b"v");
    assert_eq!(n.get(b"other"), None);
}

#[tokio::test]
async fn an_expiry_decided_before_a_renewal_or_checkpoint_is_ignored() {
    let mut n = Node::with_defaults();
    n.send(grant(5, 10_000)).await;
    n.send(leased(b"k", b"v", 5)).await;
    let epoch = |n: &Node| lease(n, 5).unwrap().0.epoch;
    assert_eq!(epoch(&n), 0);
    // The leader saw epoch 0 and decided the lease was up; a renewal got in first.
    let r = n.send(Request::new(Command::LeaseRenew(LeaseRef { id: 5 }))).await;
    assert_eq!(
        r.result,
        CommandResult::Lease(LeaseResult::Renewed { id: 5, ttl_ms: 10_000 })
    );
    let r = leader_sends(&mut n, Command::LeaseExpire(LeaseExpire { id: 5, epoch: 0 })).await;
    assert_eq!(r.result, CommandResult::Lease(LeaseResult::NotExpired { id: 5 }));
    assert!(n.get(b"k").is_some());
    // A checkpoint records the time left (never more than the TTL) and moves the epoch too.
    let points = vec![
        LeaseCheckpoint {
            id: 5,
            remaining_ms: 2500,
            epoch: 1,
        },
        LeaseCheckpoint {
            id: 99,
            remaining_ms: 1,
            epoch: 0,
        },
    ];
    leader_sends(&mut n, Command::LeaseCheckpoint(points)).await;
    let (stored, _) = lease(&n, 5).unwrap();
    assert_eq!((stored.remaining_ms, stored.epoch), (2500, 2));
    leader_sends(
        &mut n,
        Command::LeaseCheckpoint(vec![LeaseCheckpoint {
            id: 5,
            remaining_ms: 99_999,
            epoch: 2,
        }]),
    )
    .await;
    assert_eq!(lease(&n, 5).unwrap().0.remaining_ms, 10_000);
    // An expiry of the current epoch revokes.
    let r = leader_sends(&mut n, Command::LeaseExpire(LeaseExpire { id: 5, epoch: 3 })).await;
    assert_eq!(
        r.result,
        CommandResult::Lease(LeaseResult::Revoked { id: 5, deleted: 1 })
    );
    assert_eq!(n.get(b"k"), None);
    // A renewal of a lease that is gone is refused.
    let r = n.send(Request::new(Command::LeaseRenew(LeaseRef { id: 5 }))).await;
    assert_eq!(r.result, CommandResult::LeaseNotFound { id: 5 });
}

#[test]
fn clients_cannot_send_what_the_leader_decides() {
    let limits = Limits::default();
    for command in [
        Command::LeaseCheckpoint(vec![]),
        Command::LeaseExpire(LeaseExpire { id: 1, epoch: 0 }),
    ] {
        let e = validate_request(&Request::new(command), &limits).unwrap_err();
        assert_eq!(e, InvalidRequest::LeaderOnly);
    }
    for bad in [0, i64::MAX as u64 + 1] {
        let e = validate_request(&grant(bad, 1000), &limits).unwrap_err();
        assert_eq!(e, InvalidRequest::LeaseId(bad));
        let e = validate_request(&leased(b"k", b"v", bad), &limits).unwrap_err();
        assert_eq!(e, InvalidRequest::LeaseId(bad));
    }
    let e = validate_request(&grant(1, 0), &limits).unwrap_err();
    assert_eq!(e, InvalidRequest::LeaseTtl(0));
}

#[derive(Default)]
struct Seen {
    events: Mutex<Vec<LeaseEvent>>,
    reloads: Mutex<Vec<LeaseInfo>>,
}

impl Observer for Seen {
    fn leases_changed(&self, events: &[LeaseEvent]) {
        self.events.lock().unwrap().extend_from_slice(events);
    }
    fn leases_reloaded(&self, leases: &[LeaseInfo]) {
        *self.reloads.lock().unwrap() = leases.to_vec();
    }
}

#[tokio::test]
async fn leases_travel_in_snapshots_and_survive_restarts() {
    let mut src = Node::with_defaults();
    for id in 1..=3 {
        src.send(grant(id, 1000 * id)).await;
    }
    for i in 0..300u32 {
        let id = u64::from(i % 3) + 1;
        src.send(leased(format!("k{i:03}").as_bytes(), b"v", id)).await;
    }
    src.send(Request::new(Command::LeaseRenew(LeaseRef { id: 2 }))).await;
    let (meta, bytes) = build(&mut src.store).await;

    let mut dst = Node::with_defaults();
    let seen = Arc::new(Seen::default());
    dst.store.sm.set_observer(seen.clone());
    install(&mut dst.store, &meta, &bytes).await;
    let all = |n: &Node| n.store.sm.reader().leases().unwrap();
    assert_eq!(
        *seen.reloads.lock().unwrap(),
        all(&src),
        "the observer hears every lease"
    );
    assert_eq!(all(&dst), all(&src));
    for id in 1..=3 {
        assert_eq!(lease(&dst, id), lease(&src, id));
        assert_eq!(keys(&dst, id).len(), 100);
    }
    // The same entry does the same on both, and tells the observer.
    dst.index = src.index;
    let a = src.send(revoke(2)).await;
    let b = dst.send(revoke(2)).await;
    assert_eq!(a, b);
    assert_eq!(all_kvs(&src.store), all_kvs(&dst.store));
    // The lease indexes too, byte for byte: the revoked lease's keys are detached on both.
    for prefix in [
        codec::KEY_LEASE_PREFIX,
        codec::LEASE_KEY_PREFIX,
        codec::LEASE_PREFIX,
        codec::LEASE_OWNER_PREFIX,
    ] {
        assert_eq!(raw_prefix(&src.store, prefix), raw_prefix(&dst.store, prefix));
    }
    assert_eq!(
        *seen.events.lock().unwrap(),
        [LeaseEvent {
            id: 2,
            remaining_ms: None,
            epoch: 0,
            owner: None,
        }]
    );
    // Everything is still there after a restart.
    let dst = dst.reopen().await;
    assert_eq!(all(&dst), all(&src));
    assert_eq!(keys(&dst, 3), keys(&src, 3));
}

/// A checkpoint is computed from the leader's table, which may not have applied a renewal yet
/// (the renewal is proposed, the checkpoint computed, and the renewal applied first). Such a
/// checkpoint must not cut the renewed lease back to the old time left: the chaos runs' lease
/// holders found keys gone ~2.4 s before their keeper's deadline (TTL 3 s) this way.
#[tokio::test]
async fn a_checkpoint_decided_before_a_renewal_does_not_shorten_it() {
    let mut n = Node::with_defaults();
    n.send(grant(5, 3_000)).await;
    // The leader's table, at epoch 0, has 500 ms left; meanwhile a renewal is applied.
    n.send(Request::new(Command::LeaseRenew(LeaseRef { id: 5 }))).await;
    leader_sends(
        &mut n,
        Command::LeaseCheckpoint(vec![LeaseCheckpoint {
            id: 5,
            remaining_ms: 500,
            epoch: 0,
        }]),
    )
    .await;
    assert_eq!(
        lease(&n, 5).unwrap().0.remaining_ms,
        3_000,
        "the stale checkpoint shortened the renewal"
    );
    assert_eq!(lease(&n, 5).unwrap().0.epoch, 1, "and it did not move the epoch");
    // A checkpoint of the current epoch records the time left.
    leader_sends(
        &mut n,
        Command::LeaseCheckpoint(vec![LeaseCheckpoint {
            id: 5,
            remaining_ms: 2_000,
            epoch: 1,
        }]),
    )
    .await;
    assert_eq!(lease(&n, 5).unwrap().0.remaining_ms, 2_000);
}
