//! A cluster keeps its leader through a follower that stops for a second (SIGSTOP): it used to
//! campaign with a higher term when it resumed, and the healthy leader stepped down (openraft
//! 0.9 had no pre-vote). The test asserts that no request fails and that the term does not
//! change. The busy machine, the other stall that is not a failure, is t30.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use keel_proto::v1::PutRequest;
use keel_testkit::{Backend, Cluster, Options};
use tokio::task::JoinSet;

mod common;

use common::stalls::assert_unchanged;

fn put(key: String, value: Vec<u8>) -> tonic::Request<PutRequest> {
    let mut req = tonic::Request::new(PutRequest {
        key: key.into_bytes(),
        value,
        prev_kv: false,
        lease: 0,
        session: None,
    });
    req.set_timeout(Duration::from_secs(5));
    req
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_paused_for_a_second_does_not_unseat_the_leader() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(Backend::Process, Options::default()).await?;
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await?;
    let follower = cluster
        .nodes
        .keys()
        .copied()
        .find(|id| *id != leader)
        .expect("a follower");
    let term = cluster.status(leader).await.expect("leader status").term;

    // 16 closed-loop writers on the leader, for as long as the pause and its aftermath last.
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let mut writers = JoinSet::new();
    for w in 0..16 {
        let (mut kv, stop, written) = (cluster.kv(leader), stop.clone(), written.clone());
        writers.spawn(async move {
            // Bounded: at most this many writes, whatever the timing.
            for i in 0..20_000u32 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                kv.put(put(format!("w{w}-{i}"), b"v".to_vec()))
                    .await
                    .map_err(|e| anyhow::anyhow!("writer {w}, write {i}: {e:?}"))?;
                written.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(())
        });
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster.pause(follower, true)?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    cluster.pause(follower, false)?;
    // Long enough for the resumed member's election timer to fire, with or without a pre-vote.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);
    while let Some(done) = writers.join_next().await {
        done??;
    }
    eprintln!("{} writes, none failed", written.load(Ordering::Relaxed));
    assert!(written.load(Ordering::Relaxed) > 0);
    assert_unchanged(&cluster, term, leader).await?;
    let applied = cluster.status(leader).await.expect("leader status").applied_index;
    cluster.wait_applied(follower, applied, Duration::from_secs(20)).await?;
    cluster.shutdown().await
}
