//! Client sessions decide whether a command executes, so they are replicated state: the same
//! entries must give the same responses and the same sessions on every node, however the entries
//! are grouped into apply calls, and a snapshot must hold the sessions exactly as of its index
//! while applies keep changing them. Random session workloads, compared byte for byte.

mod sessions_harness;

use std::collections::BTreeMap;

use keel_storage::codec::SESSION_PRESERVED_PREFIX;
use keel_storage::EntryPayload;
use keel_storage::*;
use openraft::storage::RaftStateMachine;
use openraft::RaftSnapshotBuilder;
use rand::rngs::StdRng;
use rand::SeedableRng;
use sessions_harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_and_eviction_do_not_depend_on_apply_batching() {
    const ENTRIES: usize = 3000;
    let mut workload = Workload::new(1, 24);
    let mut rng = StdRng::seed_from_u64(2);
    let mut one_call = Node::new(config(100, 16));
    let mut one_by_one = Node::new(config(100, 16));
    let mut random = Node::new(config(100, 16));

    // One entry per call, the clients reacting to each response; recording which entries
    // executed (only puts: exactly those move the revision).
    let mut entries = Vec::new();
    let mut b = Vec::new();
    let mut executed: BTreeMap<(u64, u64), Response> = BTreeMap::new();
    let mut first_writes_again = 0;
    let mut remembered = 0;
    let (mut most_sessions, mut ttl_expiries) = (0, 0);
    for index in 1..=ENTRIES as u64 {
        if index == 2000 {
            // A quiet phase: most sessions now expire by age.
            workload.active = 3;
        }
        let before = one_by_one.revision();
        let sessions_before = one_by_one.sessions();
        let (mut entry, mut r) = workload.drive(&mut one_by_one.store, index, 1, 1).await;
        let (entry, r) = (entry.remove(0), r.remove(0));
        most_sessions = most_sessions.max(one_by_one.sessions());
        // Below max_sessions, eviction cannot be why a session disappeared: it expired.
        if sessions_before < 16 && one_by_one.sessions() < sessions_before {
            ttl_expiries += 1;
        }
        if let EntryPayload::Normal(Request { session: Some(s), .. }) = &entry.payload {
            let key = (s.client_id, s.seq);
            if one_by_one.revision() != before {
                assert_eq!(r.revision, one_by_one.revision());
                if executed.insert(key, r.clone()).is_some() {
                    assert_eq!(s.seq, 1, "{key:?} executed twice");
                    first_writes_again += 1;
                }
            } else if matches!(r.result, CommandResult::Put(_)) {
                assert_eq!(
                    Some(&r),
                    executed.get(&key),
                    "a remembered response is the original one"
                );
                remembered += 1;
            }
        }
        entries.push(entry);
        b.push(r);
    }
    let a = apply_in_chunks(&mut one_call.store, &entries, ENTRIES, &mut rng).await;
    // Random batching, with a snapshot build pinned from the middle on: the preserved records it
    // causes must not change the replicated state.
    let mut c = apply_in_chunks(&mut random.store, &entries[..ENTRIES / 2], 0, &mut rng).await;
    let builder = random.store.sm.get_snapshot_builder().await;
    c.extend(apply_in_chunks(&mut random.store, &entries[ENTRIES / 2..], 0, &mut rng).await);
    assert!(!raw_prefix(&random.store, SESSION_PRESERVED_PREFIX).is_empty());

    assert_eq!(a, b, "one call vs one entry per call");
    assert_eq!(a, c, "one call vs random calls");
    let state = session_state(&one_call.store);
    assert_eq!(session_state(&one_by_one.store), state);
    assert_eq!(session_state(&random.store), state);
    assert_eq!(all_kvs(&one_by_one.store), all_kvs(&one_call.store));
    assert_eq!(all_kvs(&random.store), all_kvs(&one_call.store));

    // The workload exercised every rule.
    let count = |f: &dyn Fn(&CommandResult) -> bool| a.iter().filter(|r| f(&r.result)).count();
    let stale_n = count(&|r| matches!(r, CommandResult::StaleSession { .. }));
    let expired_n = count(&|r| matches!(r, CommandResult::SessionExpired { .. }));
    eprintln!(
        "{} executed, {remembered} remembered, {stale_n} stale, {expired_n} expired, \
         {first_writes_again} first writes again, {ttl_expiries} entries expired sessions by age, \
         {} sessions at the end",
        executed.len(),
        state.0.len()
    );
    assert!(executed.len() > 500 && remembered > 500 && stale_n > 20 && expired_n > 50);
    assert_eq!(most_sessions, 16, "eviction keeps the count at max_sessions");
    assert!(ttl_expiries > 5, "sessions expired by age");
    assert!(
        state.0.len() < 10,
        "the quiet phase leaves only its clients' recent sessions"
    );

    // With the build gone, the preserved records are cleaned up by later apply calls.
    drop(builder);
    random.index = ENTRIES as u64;
    for _ in 0..3 {
        random.blanks(1).await;
    }
    assert_eq!(raw_prefix(&random.store, SESSION_PRESERVED_PREFIX), vec![]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_sessions_are_consistent_while_writes_continue() {
    let cfg = || config(300, 64);
    let mut workload = Workload::new(3, 120);
    let mut rng = StdRng::seed_from_u64(4);
    let mut src = Node::new(cfg());
    workload.drive(&mut src.store, 1, 2000, 0).await;
    src.index = 2000;
    // Bulk, so that the build takes a while.
    let bulk = (0..80)
        .map(|t| {
            let ops = (0..128)
                .map(|i| {
                    TxnOp::Put(PutOp {
                        key: format!("bulk/{t:03}/{i:03}").into_bytes(),
                        value: vec![b'b'; 2048],
                        prev_kv: false,
                    })
                })
                .collect();
            let txn = Txn {
                compares: vec![],
                success: ops,
                failure: vec![],
            };
            EntryPayload::Normal(Request::new(Command::Txn(txn)))
        })
        .collect();
    src.apply(bulk).await;

    let mut builder = src.store.sm.get_snapshot_builder().await;
    let at_index = src.index;
    let at_builder = snapshot_sessions(&session_state(&src.store).0);
    let kvs_at_builder = all_kvs(&src.store);
    assert!(at_builder.len() > 10, "{} sessions at the builder", at_builder.len());

    // Before the build starts: enough traffic to touch or evict every session at the builder.
    let (mut after, mut responses) = workload.drive(&mut src.store, at_index + 1, 1500, 0).await;
    let now: Vec<u64> = snapshot_sessions(&session_state(&src.store).0)
        .iter()
        .filter(|s| at_builder.contains(s))
        .map(|s| s.client_id)
        .collect();
    assert!(now.is_empty(), "sessions unchanged since the builder: {now:?}");

    // During the build.
    let build = tokio::spawn(async move {
        let snapshot = builder.build_snapshot().await.expect("build snapshot");
        (snapshot.meta, read_file(snapshot.snapshot).await)
    });
    // Until the build is done, so that its session pass runs while sessions change.
    let mut calls = 0;
    while calls < 10 || (!build.is_finished() && calls < 2000) {
        let (e, r) = workload
            .drive(&mut src.store, at_index + 1 + after.len() as u64, 20, 20)
            .await;
        after.extend(e);
        responses.extend(r);
        calls += 1;
    }
    eprintln!("{calls} apply calls of 20 entries while the build was running");
    let (meta, bytes) = build.await.unwrap();
    assert_eq!(meta.last_log_id, Some(log_id(at_index)));
    assert_eq!(sessions_in_file(&bytes), at_builder);

    let mut dst = Node::new(cfg());
    install(&mut dst.store, &meta, &bytes).await;
    assert_eq!(all_kvs(&dst.store), kvs_at_builder);
    assert_eq!(snapshot_sessions(&session_state(&dst.store).0), at_builder);
    let replayed = apply_in_chunks(&mut dst.store, &after, 0, &mut rng).await;
    assert_eq!(replayed, responses);
    assert_eq!(session_state(&dst.store), session_state(&src.store));
    assert_eq!(all_kvs(&dst.store), all_kvs(&src.store));
}
