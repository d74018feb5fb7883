//! A full disk (issue 13): a member whose data directory's filesystem runs low stops taking new
//! entries instead of failing inside, says so (`keelctl status` alarms, `/readyz`,
//! `keel_disk_full`), and takes entries again by itself once space is freed. Nothing
//! acknowledged is lost.
//!
//! Each node's data directory is on its own lazy filesystem (keel-testkit's `lazyfs`), whose
//! capacity the test sets just above what the node already uses; the nodes keep
//! `--min-free-mb 4` free. Skipped, loudly, without FUSE.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod common;

use anyhow::{bail, ensure, Context};
use common::http_get;
use keel_proto::v1::kv_client::KvClient;
use keel_proto::v1::{PutRequest, RangeRequest};
use keel_storage::NodeId;
use keel_testkit::{lazyfs, Backend, Cluster, Options};
use tonic::transport::Channel;

const RESERVE_MB: u64 = 4;
const MIB: u64 = 1024 * 1024;

async fn start(test: &str) -> anyhow::Result<Option<Cluster>> {
    start_with_reserve(test, RESERVE_MB).await
}

async fn start_with_reserve(test: &str, reserve_mb: u64) -> anyhow::Result<Option<Cluster>> {
    if let Some(why) = lazyfs::unavailable() {
        eprintln!("SKIPPED {test}: no lazy filesystem here: {why}");
        return Ok(None);
    }
    let options = Options {
        flags: vec!["--min-free-mb".into(), reserve_mb.to_string()],
        lazy_disks: true,
        ..Options::default()
    };
    let cluster = Cluster::start(Backend::Process, options).await?;
    cluster.wait_for_leader(Duration::from_secs(30)).await?;
    Ok(Some(cluster))
}

/// Leave node `id` a disk with `room_mb` MiB free beyond what it uses now.
fn fill(cluster: &Cluster, id: NodeId, room_mb: u64) {
    let disk = cluster.disk(id).expect("lazy disk");
    disk.set_capacity(Some(disk.used() + room_mb * MIB));
}

fn free(cluster: &Cluster, id: NodeId) {
    cluster.disk(id).expect("lazy disk").set_capacity(None);
}

/// Poll `probe` until it returns Some, for at most `limit`.
async fn wait_for<T, F, Fut>(what: &str, limit: Duration, mut probe: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = probe().await {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The alarms node `id` reports in its status.
async fn alarms(cluster: &Cluster, id: NodeId) -> Option<Vec<String>> {
    cluster.status(id).await.map(|s| s.alarms)
}

/// A failed write's code, message and named outcome.
type Failure = (tonic::Code, String, Option<keel_proto::wire::Outcome>);

/// One closed-loop writer of 32 KiB values through one member, until stopped.
struct Writer {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<BTreeMap<String, Vec<u8>>>>,
    /// Every failed write, in order.
    failures: Arc<Mutex<Vec<Failure>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Writer {
    fn start(mut kv: KvClient<Channel>) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(BTreeMap::new()));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let (s, a, f) = (stop.clone(), acked.clone(), failures.clone());
        let task = tokio::spawn(async move {
            // Bounded: at most this many writes, whatever the timing.
            for i in 0..20_000u32 {
                if s.load(Ordering::Relaxed) {
                    return;
                }
                let key = format!("k{i:05}");
                let mut value = key.clone().into_bytes();
                value.resize(32 * 1024, b'.');
                let mut req = tonic::Request::new(PutRequest {
                    key: key.clone().into_bytes(),
                    value: value.clone(),
                    ..Default::default()
                });
                req.set_timeout(Duration::from_secs(3));
                match kv.put(req).await {
                    Ok(_) => {
                        a.lock().unwrap().insert(key, value);
                    }
                    Err(status) => {
                        let outcome = keel_proto::wire::Outcome::of(&status);
                        f.lock()
                            .unwrap()
                            .push((status.code(), status.message().to_string(), outcome));
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
        });
        Writer {
            stop,
            acked,
            failures,
            task,
        }
    }

    fn acked(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    /// Wait until `more` writes beyond those acknowledged now are acknowledged.
    async fn wait_acked(&self, more: usize, limit: Duration) -> anyhow::Result<()> {
        let want = self.acked() + more;
        wait_for(&format!("{want} acknowledged writes"), limit, || async {
            (self.acked() >= want).then_some(())
        })
        .await
        .with_context(|| format!("failures: {:?}", self.failures.lock().unwrap().last()))
    }

    async fn stop(self) -> anyhow::Result<BTreeMap<String, Vec<u8>>> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await?;
        Ok(Arc::try_unwrap(self.acked)
            .map_err(|_| anyhow::anyhow!("shared"))?
            .into_inner()?)
    }
}

/// Every acknowledged write is on every member, with its value (serializable reads, once each
/// member has applied the leader's whole log).
async fn verify(cluster: &Cluster, acked: &BTreeMap<String, Vec<u8>>) -> anyhow::Result<()> {
    let leader = cluster.wait_for_leader(Duration::from_secs(30)).await?;
    let last = cluster.status(leader).await.context("leader status")?.last_log_index;
    for &id in cluster.nodes.keys() {
        cluster.wait_applied(id, last, Duration::from_secs(30)).await?;
        let mut kv = cluster.kv(id);
        for (key, value) in acked {
            let got = kv
                .range(RangeRequest {
                    key: key.clone().into_bytes(),
                    serializable: true,
                    ..Default::default()
                })
                .await?
                .into_inner();
            ensure!(
                got.kvs.first().is_some_and(|kv| &kv.value == value),
                "member {id}: acknowledged write {key} is missing or wrong"
            );
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_leader_hands_over_and_its_member_recovers_when_space_returns() -> anyhow::Result<()> {
    let Some(mut cluster) = start("a_full_leader_hands_over_and_its_member_recovers_when_space_returns").await? else {
        return Ok(());
    };
    let full = cluster.wait_for_leader(Duration::from_secs(30)).await?;
    let via = *cluster.nodes.keys().find(|&&id| id != full).expect("three members");
    let writer = Writer::start(cluster.kv(via));
    writer.wait_acked(20, Duration::from_secs(30)).await?;

    fill(&cluster, full, RESERVE_MB + 2);
    let alarm = wait_for("the full member's alarm", Duration::from_secs(30), || async {
        alarms(&cluster, full).await.and_then(|a| a.into_iter().next())
    })
    .await?;
    ensure!(
        alarm.starts_with(&format!("disk full on member {full}:")) && alarm.contains("--min-free-mb"),
        "{alarm}"
    );
    let (code, body) = http_get(cluster.nodes[&full].metrics_addr, "/readyz").await?;
    ensure!(
        code == 503 && body.contains(&format!("disk full on member {full}")),
        "/readyz: {code} {body}"
    );
    let (_, metrics) = http_get(cluster.nodes[&full].metrics_addr, "/metrics").await?;
    ensure!(
        metrics
            .lines()
            .any(|l| l.starts_with("keel_disk_full{") && l.ends_with(" 1")),
        "keel_disk_full is not 1 on member {full}"
    );

    // It hands leadership to a member with space, and writes go on without it.
    let leader = wait_for("a new leader", Duration::from_secs(15), || async {
        let s = cluster.status(via).await?;
        (s.leader_id != 0 && s.leader_id != full).then_some(s.leader_id)
    })
    .await?;
    writer.wait_acked(40, Duration::from_secs(30)).await?;
    let behind = cluster
        .status(full)
        .await
        .context("full member's status")?
        .last_log_index;
    let ahead = cluster.status(leader).await.context("leader's status")?.last_log_index;
    ensure!(
        ahead >= behind + 40,
        "the full member took entries: its last log index is {behind}, the leader's {ahead}"
    );
    ensure!(cluster.exit_status(full).is_none(), "the full member stopped");

    // Space comes back: the alarm clears by itself, and the member catches up.
    free(&cluster, full);
    wait_for("the alarm to clear", Duration::from_secs(15), || async {
        alarms(&cluster, full).await.filter(|a| a.is_empty())
    })
    .await?;
    writer.wait_acked(20, Duration::from_secs(30)).await?;
    let acked = writer.stop().await?;
    verify(&cluster, &acked).await?;
    wait_for(
        "/readyz 200 on the recovered member",
        Duration::from_secs(15),
        || async {
            let (code, _) = http_get(cluster.nodes[&full].metrics_addr, "/readyz").await.ok()?;
            (code == 200).then_some(())
        },
    )
    .await?;
    println!(
        "disk full: {} writes acknowledged, member {full} full then recovered",
        acked.len()
    );
    cluster.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_are_refused_while_a_majority_is_full_and_resume_when_space_returns() -> anyhow::Result<()> {
    let Some(cluster) = start("writes_are_refused_while_a_majority_is_full_and_resume_when_space_returns").await?
    else {
        return Ok(());
    };
    let leader = cluster.wait_for_leader(Duration::from_secs(30)).await?;
    let followers: Vec<NodeId> = cluster.nodes.keys().copied().filter(|&id| id != leader).collect();
    let writer = Writer::start(cluster.kv(leader));
    writer.wait_acked(20, Duration::from_secs(30)).await?;

    for &f in &followers {
        fill(&cluster, f, RESERVE_MB + 2);
    }
    // Once the leader knows that both followers are full, writes are refused at once, naming them.
    let want = format!("disk full on members {}, {}", followers[0], followers[1]);
    let refused = wait_for("a refused write", Duration::from_secs(60), || async {
        let failures = writer.failures.lock().unwrap();
        failures
            .iter()
            .find(|(code, msg, outcome)| {
                *code == tonic::Code::ResourceExhausted
                    && msg.starts_with(&want)
                    && *outcome == Some(keel_proto::wire::Outcome::DiskFull)
            })
            .cloned()
    })
    .await?;
    println!("refused: {refused:?}");
    for &f in &followers {
        ensure!(
            alarms(&cluster, f).await.is_some_and(|a| a.len() == 1),
            "member {f} shows no alarm"
        );
    }
    ensure!(
        cluster
            .status(leader)
            .await
            .is_some_and(|s| s.leader_id == leader && s.alarms.is_empty()),
        "the leader with space should have stayed leader, without an alarm"
    );

    for &f in &followers {
        free(&cluster, f);
    }
    writer.wait_acked(20, Duration::from_secs(30)).await?;
    let acked = writer.stop().await?;
    verify(&cluster, &acked).await?;
    println!("majority full: {} writes acknowledged", acked.len());
    cluster.shutdown().await
}

/// Without the reserve (`--min-free-mb 0`), or when a burst outruns the alarm, sled's writes fail
/// with ENOSPC: the member must stop with one line naming the error (not stay up with a dead
/// core), its store must open again once there is space, and nothing acknowledged may be lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_that_runs_out_of_space_stops_and_starts_cleanly_once_space_returns() -> anyhow::Result<()> {
    let test = "a_member_that_runs_out_of_space_stops_and_starts_cleanly_once_space_returns";
    let Some(mut cluster) = start_with_reserve(test, 0).await? else {
        return Ok(());
    };
    let leader = cluster.wait_for_leader(Duration::from_secs(30)).await?;
    let full = *cluster.nodes.keys().find(|&&id| id != leader).expect("three members");
    let writer = Writer::start(cluster.kv(leader));
    writer.wait_acked(20, Duration::from_secs(30)).await?;

    fill(&cluster, full, 2);
    let stopped = wait_for("the full member to stop", Duration::from_secs(60), || {
        let status = cluster.exit_status(full);
        async move { status }
    })
    .await;
    let status = match stopped {
        Ok(status) => status,
        Err(e) => {
            cluster.print_log_tails(40);
            return Err(e);
        }
    };
    ensure!(!status.success(), "member {full} exited with {status} on a full disk");
    let log = cluster.log(full);
    ensure!(
        log.contains("No space left on device"),
        "member {full}'s log does not name the error; its end:\n{}",
        log.lines().rev().take(10).collect::<Vec<_>>().join("\n")
    );
    // The others carry on.
    writer.wait_acked(20, Duration::from_secs(30)).await?;

    free(&cluster, full);
    cluster.restart(full).await?;
    writer.wait_acked(20, Duration::from_secs(30)).await?;
    let acked = writer.stop().await?;
    verify(&cluster, &acked).await?;
    println!(
        "ENOSPC: member {full} stopped ({status}) and came back; {} writes acknowledged",
        acked.len()
    );
    cluster.shutdown().await
}
