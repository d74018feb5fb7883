//! A saturated machine costs the cluster nothing: two busy-loop processes (one per core) run for
//! the whole test while 4 writers put 1 MiB values and read them back linearizably for 30 s. No
//! request may fail and the term may not change (issue 12, item 4).
//!
//! It used to fail about every second run. Raft's core stopped for 200-300 ms while sled wrote
//! leaves of 1 MiB values in the thread that touched them (the commit index shared a leaf with the
//! newest entries; tokio's LIFO slot kept the core behind a worker that sled blocked), and
//! heartbeats that openraft gave up on after 50 ms were cancelled before a busy follower read them.
//! Alone in its binary, so that no other test shares the saturated cores.

use std::time::{Duration, Instant};

use keel_testkit::{Backend, Cluster, Options};
use tokio::task::JoinSet;

mod common;

use common::stalls::{assert_unchanged, diagnose, BusyLoops};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
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
