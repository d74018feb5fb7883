//! Network faults between members, through the testkit's proxy network (each node on its own
//! 127.0.0.x, every peer link behind a proxy): an isolated leader is replaced and cannot write;
//! a leader that can receive but not send is replaced too; after the heal both catch up, and a
//! write refused by the cut-off side never appears. Delay slows commits by at least the added
//! round trip, but they still succeed, and a round trip of twice the heartbeat interval costs
//! neither progress nor the leader.

use std::time::{Duration, Instant};

use keel_proto::v1::{PutRequest, RangeRequest};
use keel_storage::NodeId;
use keel_testkit::net::LinkFault;
use keel_testkit::{Backend, Cluster, Options};
use tonic::Code;

fn put(key: &str, value: &str, timeout: Duration) -> tonic::Request<PutRequest> {
    let mut req = tonic::Request::new(PutRequest {
        key: key.into(),
        value: value.into(),
        prev_kv: false,
        lease: 0,
        session: None,
    });
    req.set_timeout(timeout);
    req
}

async fn get(cluster: &Cluster, id: NodeId, key: &str, serializable: bool) -> anyhow::Result<Option<Vec<u8>>> {
    let mut req = tonic::Request::new(RangeRequest {
        key: key.into(),
        serializable,
        ..Default::default()
    });
    req.set_timeout(Duration::from_secs(5));
    let resp = cluster.kv(id).range(req).await?.into_inner();
    Ok(resp.kvs.into_iter().next().map(|kv| kv.value))
}

async fn start() -> anyhow::Result<(Cluster, NodeId, Vec<NodeId>)> {
    let options = Options {
        network: Some(1),
        ..Options::default()
    };
    let cluster = Cluster::start(Backend::Process, options).await?;
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await?;
    let others = cluster.nodes.keys().copied().filter(|id| *id != leader).collect();
    Ok((cluster, leader, others))
}

/// Cut the old leader off (however `cut` does it), check the majority takes over and the old
/// leader cannot write, heal, and check it catches up and its refused write never applied.
async fn leader_cut_off(cut: impl FnOnce(&Cluster, NodeId, &[NodeId])) -> anyhow::Result<()> {
    let (cluster, old, others) = start().await?;
    cluster.kv(old).put(put("before", "1", Duration::from_secs(5))).await?;
    cut(&cluster, old, &others);
    let leader = cluster
        .wait_for_new_leader(&others, old, Duration::from_secs(15))
        .await?;
    cluster
        .kv(leader)
        .put(put("during", "2", Duration::from_secs(5)))
        .await?;
    // The old leader cannot commit: it answers Unavailable (no quorum) or runs out of time.
    let refused = cluster.kv(old).put(put("refused", "x", Duration::from_secs(2))).await;
    let code = refused.expect_err("a cut-off leader accepted a write").code();
    assert!(
        matches!(code, Code::Unavailable | Code::DeadlineExceeded | Code::Unknown),
        "{code:?}"
    );
    cluster.net().expect("network").heal();
    let applied = cluster.status(leader).await.expect("status").applied_index;
    cluster.wait_applied(old, applied, Duration::from_secs(20)).await?;
    assert_eq!(get(&cluster, old, "during", true).await?, Some(b"2".to_vec()));
    assert_eq!(cluster.status(old).await.expect("status").leader_id, leader);
    // The refused write is not in the log anywhere (read through the leader, after the heal).
    assert_eq!(get(&cluster, leader, "refused", false).await?, None);
    cluster.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_isolated_leader_is_replaced_and_catches_up() -> anyhow::Result<()> {
    leader_cut_off(|cluster, old, others| {
        cluster.net().expect("network").partition(&[vec![old], others.to_vec()]);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_that_cannot_send_is_replaced() -> anyhow::Result<()> {
    leader_cut_off(|cluster, old, others| {
        let net = cluster.net().expect("network");
        for &o in others {
            net.update(old, o, |f| f.blocked = true);
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn delayed_links_slow_commits_by_the_round_trip() -> anyhow::Result<()> {
    let (cluster, leader, _) = start().await?;
    let net = cluster.net().expect("network");
    let delay = Duration::from_millis(20);
    for a in cluster.nodes.keys() {
        for b in cluster.nodes.keys() {
            if a != b {
                let fault = LinkFault {
                    delay,
                    ..LinkFault::default()
                };
                net.set(*a, *b, fault);
            }
        }
    }
    // A commit needs the leader's entries to reach a follower and its answer to come back.
    let mut kv = cluster.kv(leader);
    for i in 0..5 {
        let start = Instant::now();
        kv.put(put(&format!("slow{i}"), "v", Duration::from_secs(5))).await?;
        assert!(start.elapsed() >= 2 * delay, "put {i} took {:?}", start.elapsed());
    }
    net.heal();
    kv.put(put("fast", "v", Duration::from_secs(5))).await?;
    cluster.shutdown().await
}

/// With 50 ms of delay each way on every peer link (a 100 ms round trip, twice the heartbeat
/// interval), writes keep committing at a rate set by the round trip, and the leader keeps its
/// place. openraft 0.9 gave each AppendEntries one heartbeat interval, so on such links replication
/// all but stopped; keel now sizes replication deadlines itself (peer/client.rs).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_links_keep_committing_and_keep_the_leader() -> anyhow::Result<()> {
    let (cluster, leader, _) = start().await?;
    let term = cluster.status(leader).await.expect("status").term;
    let net = cluster.net().expect("network");
    let delay = Duration::from_millis(50);
    for a in cluster.nodes.keys() {
        for b in cluster.nodes.keys() {
            if a != b {
                net.set(
                    *a,
                    *b,
                    LinkFault {
                        delay,
                        ..LinkFault::default()
                    },
                );
            }
        }
    }
    let run_for = Duration::from_secs(6);
    let started = Instant::now();
    let mut writers = tokio::task::JoinSet::new();
    for w in 0..32 {
        let mut kv = cluster.kv(leader);
        writers.spawn(async move {
            let mut n = 0u32;
            // Bounded in time and count; every write must succeed.
            while started.elapsed() < run_for && n < 10_000 {
                kv.put(put(&format!("w{w}-{n}"), "v", Duration::from_secs(5)))
                    .await
                    .map_err(|e| anyhow::anyhow!("writer {w}, write {n}: {e:?}"))?;
                n += 1;
            }
            anyhow::Ok(n)
        });
    }
    let mut total = 0;
    while let Some(done) = writers.join_next().await {
        total += done??;
    }
    let rate = f64::from(total) / started.elapsed().as_secs_f64();
    // 32 writers over a 100 ms round trip allow at most ~320 writes/s (one round trip each);
    // the bar is half of 32 / 0.2 s. Printed, not asserted: speed is a benchmark's job.
    eprintln!(
        "{total} writes in {:?} over 50 ms links: {rate:.0} writes/s",
        started.elapsed()
    );
    assert!(total >= 32, "writes did not commit: {total}");
    for id in cluster.nodes.keys().copied() {
        let s = cluster.status(id).await.expect("status");
        assert_eq!((s.term, s.leader_id), (term, leader), "member {id} saw an election");
    }
    net.heal();
    cluster.shutdown().await
}
