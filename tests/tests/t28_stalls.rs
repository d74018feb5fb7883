//! A cluster keeps its leader through stalls that are not failures: a follower that stops for a
//! second (SIGSTOP), and a machine whose every core is busy with something else.
//!
//! Both used to cost the leader its place. A follower that missed heartbeats campaigned with a
//! higher term when it resumed, and the healthy leader stepped down (openraft 0.9 had no
//! pre-vote); and on a saturated machine, AppendEntries of 1 MiB values missed their one heartbeat
//! interval, replication stalled and the leader lost its quorum. Each test asserts that no
//! request fails and that the term does not change: the leader never changed.

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_proto::v1::PutRequest;
use keel_storage::NodeId;
use keel_testkit::{Backend, Cluster, Options};
use tokio::task::JoinSet;

mod common;

/// Every member's term, or an error naming the member that did not answer.
async fn terms(cluster: &Cluster) -> anyhow::Result<Vec<(NodeId, u64, u64)>> {
    let mut out = Vec::new();
    for id in cluster.nodes.keys().copied() {
        let s = cluster
            .status(id)
            .await
            .ok_or_else(|| anyhow::anyhow!("member {id} did not answer Status"))?;
        out.push((id, s.term, s.leader_id));
    }
    Ok(out)
}

/// Print what each member said about elections and slow storage.
fn diagnose(cluster: &Cluster) {
    for id in cluster.nodes.keys().copied() {
        let log = cluster.log(id);
        let words = [
            "slow log",
            "pre-vote",
            "vote is changing",
            "becomes",
            "timeout",
            "Elapsed",
        ];
        let lines: Vec<&str> = log.lines().filter(|l| words.iter().any(|w| l.contains(w))).collect();
        eprintln!("member {id}:\n{}", lines[lines.len().saturating_sub(40)..].join("\n"));
    }
}

/// Assert that every member is still in `term` under `leader`.
async fn assert_unchanged(cluster: &Cluster, term: u64, leader: NodeId) -> anyhow::Result<()> {
    // A resumed member may take a moment to hear from the leader again.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let now = terms(cluster).await?;
        if now.iter().all(|&(_, t, l)| t == term && l == leader) {
            return Ok(());
        }
        if now.iter().any(|&(_, t, _)| t != term) {
            diagnose(cluster);
            panic!("the term changed (was {term}, leader {leader}): {now:?} (id, term, leader)");
        }
        assert!(Instant::now() < deadline, "members do not all follow {leader}: {now:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn put(key: String, value: Vec<u8>) -> tonic::Request<PutRequest> {
    let mut req = tonic::Request::new(PutRequest {
        key: key.into_bytes(),
        value,
        prev_kv: false,
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

/// Processes that keep every core busy while they live (killed on drop: only these, by PID).
struct BusyLoops(Vec<Child>);

impl BusyLoops {
    fn start(n: usize) -> anyhow::Result<BusyLoops> {
        let mut children = Vec::new();
        for _ in 0..n {
            let child = Command::new("sh")
                .args(["-c", "while :; do :; done"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?;
            children.push(child);
        }
        Ok(BusyLoops(children))
    }
}

impl Drop for BusyLoops {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "issue 12 item 4, not met yet: no request fails beside two busy loops, but now and then \
            the leader's Raft core stops for 200-300 ms (its runtime does not) and a follower wins a \
            pre-vote; run with --ignored"]
async fn a_saturated_machine_keeps_its_leader_with_large_values() -> anyhow::Result<()> {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let _busy = BusyLoops::start(cores)?;
    let cluster = Cluster::start(Backend::Process, Options::default()).await?;
    let leader = cluster.wait_for_leader(Duration::from_secs(20)).await?;
    let term = cluster.status(leader).await.expect("leader status").term;
    let started = Instant::now();
    let run_for = Duration::from_secs(30);
    let mut writers = JoinSet::new();
    for w in 0..4 {
        let mut kv = cluster.kv(leader);
        writers.spawn(async move {
            let mut n = 0u32;
            // Bounded in time and count.
            while started.elapsed() < run_for && n < 10_000 {
                common::put_and_read_mib(&mut kv, format!("busy{w}-{n:05}")).await?;
                n += 1;
            }
            anyhow::Ok(n)
        });
    }
    let mut total = 0;
    while let Some(done) = writers.join_next().await {
        match done? {
            Ok(n) => total += n,
            Err(e) => {
                diagnose(&cluster);
                return Err(e);
            }
        }
    }
    eprintln!(
        "{total} MiB written and read back in {:?} beside {cores} busy loops",
        started.elapsed()
    );
    assert!(total > 0);
    assert_unchanged(&cluster, term, leader).await?;
    cluster.shutdown().await
}
