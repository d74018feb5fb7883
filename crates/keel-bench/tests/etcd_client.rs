//! The Rust `etcd-client` crate (the one keel-bench drives etcd with) against keel's etcd v3 API,
//! on three members and through one follower alone: KV with its options, txns, watches, leases
//! with keep-alive, the Lock and Election services, and the Cluster and Maintenance calls an
//! operator's tooling makes. Built with keel-bench's `etcd` feature (etcd-client needs a system
//! protoc); scripts/test.sh runs it: `cargo test -p keel-bench --features etcd --test etcd_client`.
#![cfg(feature = "etcd")]

use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, EventType, GetOptions, LeaseTimeToLiveOptions, LockOptions, ProclaimOptions,
    PutOptions, ResignOptions, Txn, TxnOp, WatchOptions,
};
use keel_testkit::{Backend, Cluster, Options};

async fn timed<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(20), f)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within 20 s"))
}

/// Everything the test does, against `endpoints`, under `prefix`.
async fn exercise(endpoints: &[String], prefix: &str) -> anyhow::Result<()> {
    let mut c = Client::connect(endpoints, None).await?;
    let k = |s: &str| format!("{prefix}/{s}");

    // KV: put, get with its options, prev_kv, delete.
    let put = c.put(k("a"), "1", Some(PutOptions::new().with_prev_key())).await?;
    assert!(put.prev_key().is_none());
    let rev_a = put.header().expect("header").revision();
    assert!(rev_a > 0);
    c.put(k("b"), "2", None).await?;
    let put = c.put(k("a"), "3", Some(PutOptions::new().with_prev_key())).await?;
    assert_eq!(put.prev_key().expect("prev kv").value(), b"1");
    let got = c.get(k("a"), None).await?;
    let kv = &got.kvs()[0];
    assert_eq!((kv.value(), kv.version(), kv.create_revision()), (&b"3"[..], 2, rev_a));
    let all = c
        .get(format!("{prefix}/"), Some(GetOptions::new().with_prefix()))
        .await?;
    assert_eq!(all.count(), 2);
    assert_eq!(
        all.kvs().iter().map(|kv| kv.key()).collect::<Vec<_>>(),
        [k("a").as_bytes(), k("b").as_bytes()]
    );
    let limited = c
        .get(
            format!("{prefix}/"),
            Some(GetOptions::new().with_prefix().with_limit(1)),
        )
        .await?;
    assert_eq!((limited.kvs().len(), limited.more(), limited.count()), (1, true, 2));
    let old = c.get(k("a"), Some(GetOptions::new().with_revision(rev_a))).await?;
    assert_eq!(old.kvs()[0].value(), b"1", "a read in the past");
    let serial = c.get(k("b"), Some(GetOptions::new().with_serializable())).await?;
    assert_eq!(serial.kvs()[0].value(), b"2");
    let del = c
        .delete(k("b"), Some(etcd_client::DeleteOptions::new().with_prev_key()))
        .await?;
    assert_eq!((del.deleted(), del.prev_kvs()[0].value()), (1, &b"2"[..]));

    // Txn: a compare on the version, both branches.
    let txn = Txn::new()
        .when([Compare::version(k("a"), CompareOp::Equal, 2)])
        .and_then([TxnOp::put(k("t"), "yes", None)])
        .or_else([TxnOp::put(k("t"), "no", None)]);
    assert!(c.txn(txn).await?.succeeded());
    let txn = Txn::new()
        .when([Compare::value(k("a"), CompareOp::Equal, "nope")])
        .and_then([TxnOp::put(k("t"), "yes", None)])
        .or_else([TxnOp::get(k("t"), None)]);
    let resp = c.txn(txn).await?;
    assert!(!resp.succeeded());
    match &resp.op_responses()[0] {
        etcd_client::TxnOpResponse::Get(g) => assert_eq!(g.kvs()[0].value(), b"yes"),
        other => panic!("expected a get, got {other:?}"),
    }

    // Watch: from a past revision, a put and a delete in order.
    let start = c.put(k("w"), "x", None).await?.header().expect("header").revision();
    c.delete(k("w"), None).await?;
    let mut stream = c
        .watch(k("w"), Some(WatchOptions::new().with_start_revision(start)))
        .await?;
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let resp = timed("watch", stream.message()).await?.expect("watch stream open");
        for e in resp.events() {
            seen.push((e.event_type(), e.kv().expect("kv").mod_revision()));
        }
    }
    assert_eq!(seen, [(EventType::Put, start), (EventType::Delete, start + 1)]);

    // Leases: grant, attach, keep alive, time to live, revoke (the key goes with it).
    let lease = c.lease_grant(30, None).await?.id();
    c.put(k("leased"), "v", Some(PutOptions::new().with_lease(lease)))
        .await?;
    let (mut keeper, mut answers) = c.lease_keep_alive(lease).await?;
    keeper.keep_alive().await?;
    let answer = timed("keep-alive", answers.message())
        .await?
        .expect("keep-alive answer");
    assert_eq!((answer.id(), answer.ttl()), (lease, 30));
    let ttl = c
        .lease_time_to_live(lease, Some(LeaseTimeToLiveOptions::new().with_keys()))
        .await?;
    assert_eq!(ttl.keys(), [k("leased").into_bytes()]);
    assert!(c.leases().await?.leases().iter().any(|l| l.id() == lease));
    c.lease_revoke(lease).await?;
    assert!(c.get(k("leased"), None).await?.kvs().is_empty());
    let gone = c.lease_time_to_live(lease, None).await?;
    assert_eq!(gone.ttl(), -1);

    // The Lock service: a second locker waits until the first unlocks.
    let l1 = c.lease_grant(30, None).await?.id();
    let l2 = c.lease_grant(30, None).await?.id();
    let held = c.lock(k("lock"), Some(LockOptions::new().with_lease(l1))).await?;
    let mut c2 = Client::connect(endpoints, None).await?;
    let name = k("lock");
    let waiter = tokio::spawn(async move { c2.lock(name, Some(LockOptions::new().with_lease(l2))).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiter.is_finished(), "the second locker got a held lock");
    c.unlock(held.key()).await?;
    let second = timed("second lock", waiter).await??;
    assert!(second.key().starts_with(k("lock/").as_bytes()));
    c.unlock(second.key()).await?;

    // The Election service: campaign, leader, proclaim, resign.
    let won = c.campaign(k("elect"), "alice", l1).await?;
    let leader_key = won.leader().expect("leader key").clone();
    assert_eq!(c.leader(k("elect")).await?.kv().expect("leader").value(), b"alice");
    c.proclaim("bob", Some(ProclaimOptions::new().with_leader(leader_key.clone())))
        .await?;
    assert_eq!(c.leader(k("elect")).await?.kv().expect("leader").value(), b"bob");
    c.resign(Some(ResignOptions::new().with_leader(leader_key))).await?;
    let err = c.leader(k("elect")).await.expect_err("no leader after the resign");
    assert!(err.to_string().contains("election: no leader"), "{err}");
    c.lease_revoke(l1).await?;
    c.lease_revoke(l2).await?;

    // Errors in etcd's words.
    let err = c.get("", None).await.expect_err("an empty key");
    assert!(err.to_string().contains("etcdserver: key is not provided"), "{err}");
    let err = c.lease_revoke(0x7fff_0000).await.expect_err("an unknown lease");
    assert!(
        err.to_string().contains("etcdserver: requested lease not found"),
        "{err}"
    );

    // Cluster and Maintenance.
    let members = c.member_list().await?;
    assert_eq!(members.members().len(), 3);
    let status = c.status().await?;
    assert!(status.db_size() > 0);
    assert!(status.version().starts_with("3."));
    assert!(c
        .alarm(etcd_client::AlarmAction::Get, etcd_client::AlarmType::None, None)
        .await?
        .alarms()
        .is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_rust_etcd_client_works_against_keel_and_through_a_follower() -> anyhow::Result<()> {
    let cluster = Cluster::start(Backend::Process, Options::default()).await?;
    exercise(&cluster.endpoints(), "all").await?;
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await?;
    let follower = *cluster.nodes.keys().find(|id| **id != leader).expect("a follower");
    let endpoint = cluster.nodes[&follower].client_addr.to_string();
    exercise(&[endpoint], "follower").await?;
    cluster.shutdown().await
}
