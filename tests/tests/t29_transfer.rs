//! Leader transfer with openraft's transfer: a hand-off under load keeps writes flowing, and a
//! transfer to a member that cannot win (it is paused) gives up, and writes resume within a second.
//!
//! openraft keeps a transfer in force for the rest of the leader's term: the leader refuses writes
//! and stops its heartbeats until someone else is elected (openraft issue 2088). A target that
//! never campaigns would leave the cluster without a writable leader for an election timeout
//! plus a lease at best; keel asks another voter to campaign instead.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keel_proto::v1::{LeaderTransferRequest, PutRequest};
use keel_storage::NodeId;
use keel_testkit::{Backend, Cluster, Options};
use tokio::task::JoinSet;

fn put(key: String) -> tonic::Request<PutRequest> {
    let mut req = tonic::Request::new(PutRequest {
        key: key.into_bytes(),
        value: b"v".to_vec(),
        prev_kv: false,
        lease: 0,
        session: None,
    });
    req.set_timeout(Duration::from_secs(5));
    req
}

/// Closed-loop writers, each on its own member (never `skip`), that record when each write was
/// acknowledged. A write that fails is retried (writes go to whichever member the writer talks
/// to, which forwards them): the test asserts on the gaps between acknowledgements.
struct Writers {
    stop: Arc<AtomicBool>,
    acks: Arc<Mutex<Vec<Instant>>>,
    tasks: JoinSet<anyhow::Result<()>>,
}

impl Writers {
    fn start(cluster: &Cluster, n: usize, skip: NodeId) -> Writers {
        let stop = Arc::new(AtomicBool::new(false));
        let acks = Arc::new(Mutex::new(Vec::new()));
        let members: Vec<NodeId> = cluster.nodes.keys().copied().filter(|id| *id != skip).collect();
        let mut tasks = JoinSet::new();
        for w in 0..n {
            let mut kv = cluster.kv(members[w % members.len()]);
            let (stop, acks) = (stop.clone(), acks.clone());
            tasks.spawn(async move {
                // Bounded in count; the test stops them long before.
                for i in 0..100_000u32 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    if kv.put(put(format!("w{w}-{i}"))).await.is_ok() {
                        acks.lock().unwrap().push(Instant::now());
                    }
                }
                anyhow::Ok(())
            });
        }
        Writers { stop, acks, tasks }
    }

    /// Stop, and return the acknowledgement times in order.
    async fn finish(mut self) -> anyhow::Result<Vec<Instant>> {
        self.stop.store(true, Ordering::Relaxed);
        while let Some(done) = self.tasks.join_next().await {
            done??;
        }
        let mut acks = std::mem::take(&mut *self.acks.lock().unwrap());
        acks.sort();
        Ok(acks)
    }
}

/// The first acknowledgement at or after `t`.
fn first_ack_after(acks: &[Instant], t: Instant) -> Option<Instant> {
    acks.iter().copied().find(|a| *a >= t)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hand_off_under_load_keeps_writes_flowing() -> anyhow::Result<()> {
    let cluster = Cluster::start(Backend::Process, Options::default()).await?;
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await?;
    let target = cluster
        .nodes
        .keys()
        .copied()
        .find(|id| *id != leader)
        .expect("a follower");
    let writers = Writers::start(&cluster, 16, 0);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    let mut request = tonic::Request::new(LeaderTransferRequest { to: target });
    request.set_timeout(Duration::from_secs(5));
    let new = cluster
        .cluster_client(leader)
        .leader_transfer(request)
        .await?
        .into_inner();
    let took = started.elapsed();
    assert_eq!(new.leader_id, target);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let acks = writers.finish().await?;
    let around: Vec<Instant> = acks
        .iter()
        .copied()
        .filter(|a| *a >= started - Duration::from_millis(200))
        .collect();
    let gap = around.windows(2).map(|w| w[1] - w[0]).max().unwrap_or_default();
    eprintln!(
        "transfer took {took:?}; longest gap between acknowledged writes around it {gap:?} ({} writes)",
        acks.len()
    );
    // A hand-off is a round trip and a log sync; even on a busy test machine it is far below
    // the election timeout plus lease (~300 ms) that an election without a transfer costs.
    assert!(
        gap < Duration::from_secs(1),
        "writes stopped for {gap:?} across the transfer"
    );
    assert_eq!(cluster.status(target).await.expect("status").leader_id, target);
    cluster.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_transfer_to_a_paused_member_gives_up_and_writes_resume() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(Backend::Process, Options::default()).await?;
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await?;
    let target = cluster
        .nodes
        .keys()
        .copied()
        .find(|id| *id != leader)
        .expect("a follower");
    let writers = Writers::start(&cluster, 4, target);
    tokio::time::sleep(Duration::from_millis(300)).await;
    cluster.pause(target, true)?;
    let started = Instant::now();
    let mut request = tonic::Request::new(LeaderTransferRequest { to: target });
    request.set_timeout(Duration::from_secs(10));
    let outcome = cluster.cluster_client(leader).leader_transfer(request).await;
    let gave_up = Instant::now();
    eprintln!(
        "transfer to the paused member {target}: {outcome:?} after {:?}",
        gave_up - started
    );
    // Bounded: well within the request's deadline.
    assert!(
        gave_up - started < Duration::from_secs(3),
        "the transfer took {:?}",
        gave_up - started
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let acks = writers.finish().await?;
    let resumed = first_ack_after(&acks, gave_up).expect("no write was acknowledged after the transfer");
    assert!(
        resumed - gave_up < Duration::from_secs(1),
        "writes resumed {:?} after the transfer gave up",
        resumed - gave_up
    );
    let now_leader = cluster.wait_for_leader(Duration::from_secs(5)).await?;
    assert_ne!(now_leader, target, "a paused member cannot lead");
    cluster.pause(target, false)?;
    let applied = cluster.status(now_leader).await.expect("status").applied_index;
    cluster.wait_applied(target, applied, Duration::from_secs(20)).await?;
    cluster.shutdown().await
}
