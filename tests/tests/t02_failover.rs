//! Failover: SIGKILL the leader of a three-process cluster while clients write; a new leader is
//! elected, writes succeed again through keel-client, and no acknowledged write is lost.
//!
//! Prints, per round, the time from the kill to the first write acknowledged after it, and the
//! median: a figure for the notes, not an assertion (speed is measured in benchmarks).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keel_client::{Client, ClientConfig, Error};
use keel_testkit::{Backend, Cluster, Options};

mod common;

const ROUNDS: usize = 5;
const WRITERS: usize = 4;

/// What the writers saw.
#[derive(Default)]
struct Outcomes {
    acked: Mutex<BTreeMap<String, String>>,
    unknown: AtomicU64,
    failed: Mutex<Vec<String>>,
    /// (invoke, completion) of acknowledged writes, for the failover measurement.
    ack_times: Mutex<Vec<(Instant, Instant)>>,
}

async fn writer(client: Client, w: usize, round: usize, stop: Arc<AtomicBool>, out: Arc<Outcomes>) {
    let mut i = 0u64;
    // Bounded: the round stops the writers; this cap only guards against a runaway loop.
    while !stop.load(Ordering::Relaxed) && i < 100_000 {
        let (key, value) = (format!("w{w}/r{round}/{i:06}"), format!("value-{w}-{round}-{i}"));
        let invoked = Instant::now();
        match client.put(key.clone(), value.clone()).await {
            Ok(_) => {
                out.acked.lock().unwrap().insert(key, value);
                out.ack_times.lock().unwrap().push((invoked, Instant::now()));
            }
            Err(Error::OutcomeUnknown(_)) | Err(Error::DeadlineExceeded) => {
                out.unknown.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => out.failed.lock().unwrap().push(format!("{key}: {e}")),
        }
        i += 1;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_sigkill_under_load_loses_no_acknowledged_write() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(Backend::Process, Options::default()).await?;
    let client = Client::connect(cluster.endpoints(), ClientConfig::with_timeout(Duration::from_secs(5))).await?;
    let out = Arc::new(Outcomes::default());
    let mut failovers = Vec::new();
    for round in 0..ROUNDS {
        let leader = cluster.wait_for_leader(Duration::from_secs(20)).await?;
        let stop = Arc::new(AtomicBool::new(false));
        let writers: Vec<_> = (0..WRITERS)
            .map(|w| tokio::spawn(writer(client.clone(), w, round, stop.clone(), out.clone())))
            .collect();
        // Let the load settle, then kill the leader.
        let before = out.acked.lock().unwrap().len();
        wait_until(
            &format!("round {round}: 100 writes before the kill"),
            Duration::from_secs(20),
            || out.acked.lock().unwrap().len() >= before + 100,
        )
        .await?;
        let killed_at = Instant::now();
        cluster.kill(leader).await?;
        // Writes succeed again once a new leader is elected: the first write *issued* after the
        // kill to be acknowledged (one issued before may complete just after, from the old term).
        wait_until(
            &format!("round {round}: a write after the kill"),
            Duration::from_secs(20),
            || {
                out.ack_times
                    .lock()
                    .unwrap()
                    .iter()
                    .any(|(start, _)| *start > killed_at)
            },
        )
        .await?;
        let first_ack = out
            .ack_times
            .lock()
            .unwrap()
            .iter()
            .filter(|(start, _)| *start > killed_at)
            .map(|(_, end)| *end)
            .min()
            .expect("an ack");
        let failover = first_ack - killed_at;
        let after = out.acked.lock().unwrap().len();
        wait_until(
            &format!("round {round}: 100 writes after the failover"),
            Duration::from_secs(20),
            || out.acked.lock().unwrap().len() >= after + 100,
        )
        .await?;
        stop.store(true, Ordering::Relaxed);
        for w in writers {
            w.await?;
        }
        let new_leader = cluster.wait_for_leader(Duration::from_secs(10)).await?;
        assert_ne!(new_leader, leader, "round {round}: the killed node cannot still lead");
        eprintln!("round {round}: killed leader {leader}; first write acknowledged {failover:?} later; new leader {new_leader}");
        failovers.push(failover);
        cluster.restart(leader).await?;
    }

    let failed = out.failed.lock().unwrap().clone();
    assert!(
        failed.is_empty(),
        "writes failed outright (not just unknown): {failed:?}"
    );
    // Every acknowledged write is there, with its value.
    let acked = out.acked.lock().unwrap().clone();
    let stored = common::assert_acknowledged_present(&client, "w", &acked).await?;
    let unknown = out.unknown.load(Ordering::Relaxed);
    assert!(
        stored.len() as u64 <= acked.len() as u64 + unknown,
        "writes appeared that nobody made"
    );
    failovers.sort();
    eprintln!(
        "failover (kill → first acknowledged write) over {ROUNDS} rounds: median {:?}, min {:?}, max {:?}; {} writes acknowledged, {unknown} with unknown outcome",
        failovers[ROUNDS / 2],
        failovers[0],
        failovers[ROUNDS - 1],
        acked.len()
    );
    cluster.shutdown().await
}

/// Poll `cond` every 10 ms until it holds, failing after `timeout`.
async fn wait_until(what: &str, timeout: Duration, cond: impl Fn() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while !cond() {
        if Instant::now() > deadline {
            anyhow::bail!("{what}: not reached within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}
