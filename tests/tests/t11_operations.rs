//! Planned operations under load, with real processes: replacing a node, a rolling restart and
//! a leader transfer cost the clients no failed operation and lose no acknowledged write.
//!
//! Prints the figures for the notes (longest single operation, transfer unavailability); speed
//! is not asserted here.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keel_client::{Client, ClientConfig};
use keel_proto::v1::MemberAddRequest;
use keel_testkit::{Backend, Cluster, Options};

mod common;

#[derive(Default)]
struct Outcomes {
    acked: Mutex<BTreeMap<String, String>>,
    failed: Mutex<Vec<String>>,
    /// (start, end) of every acknowledged write.
    spans: Mutex<Vec<(Instant, Instant)>>,
}

struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    out: Arc<Outcomes>,
}

fn start_load(client: &Client, writers: usize, prefix: &str) -> Load {
    let stop = Arc::new(AtomicBool::new(false));
    let out = Arc::new(Outcomes::default());
    let tasks = (0..writers)
        .map(|w| {
            let (client, stop, out, prefix) = (client.clone(), stop.clone(), out.clone(), prefix.to_string());
            tokio::spawn(async move {
                // Bounded: the test stops the writers; the cap guards against a runaway loop.
                for i in 0..200_000u64 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let (key, value) = (format!("{prefix}/w{w}/{i:06}"), format!("{w}-{i}"));
                    let start = Instant::now();
                    match client.put(key.clone(), value.clone()).await {
                        Ok(_) => {
                            out.spans.lock().unwrap().push((start, Instant::now()));
                            out.acked.lock().unwrap().insert(key, value);
                        }
                        Err(e) => out.failed.lock().unwrap().push(format!("{key}: {e}")),
                    }
                }
            })
        })
        .collect();
    Load { stop, tasks, out }
}

impl Load {
    fn acked(&self) -> usize {
        self.out.acked.lock().unwrap().len()
    }

    async fn wait_for(&self, more: usize) -> anyhow::Result<()> {
        let target = self.acked() + more;
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.acked() < target {
            anyhow::ensure!(
                Instant::now() < deadline,
                "load made no progress: {} acked",
                self.acked()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }

    async fn finish(self) -> anyhow::Result<Arc<Outcomes>> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await?;
        }
        Ok(self.out)
    }
}

/// Every acknowledged write is readable with its value; no operation failed.
async fn check(client: &Client, out: &Outcomes, prefix: &str) -> anyhow::Result<Duration> {
    let failed = out.failed.lock().unwrap().clone();
    assert!(
        failed.is_empty(),
        "{} client operations failed, e.g. {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    let acked = out.acked.lock().unwrap().clone();
    common::assert_acknowledged_present(client, prefix, &acked).await?;
    Ok(out
        .spans
        .lock()
        .unwrap()
        .iter()
        .map(|(s, e)| *e - *s)
        .max()
        .unwrap_or_default())
}

/// `member list` shows exactly these (id, learner?) members, and every one of them answers
/// `status` with its role and the same leader (what `keelctl member list` and `keelctl status`
/// print). A member just added learns the leader with its first append, so this waits (bounded).
async fn assert_membership(client: &Client, expected: &[(u64, bool)]) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let members = client.member_list().await?.members;
        let got: Vec<(u64, bool)> = members.iter().map(|m| (m.id, m.is_learner)).collect();
        let mut seen = Vec::new();
        for m in &members {
            match client.status_of(&m.client_addr).await {
                Ok(s) => seen.push((s.id == m.id && (s.role == "learner") == m.is_learner, s.leader_id)),
                Err(_) => seen.push((false, 0)),
            }
        }
        let leaders: std::collections::BTreeSet<u64> = seen.iter().map(|(_, l)| *l).collect();
        let agree = got == expected && seen.iter().all(|(ok, _)| *ok) && leaders.len() == 1 && !leaders.contains(&0);
        if agree {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "membership did not settle: list {got:?} (want {expected:?}), status {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn client(cluster: &Cluster) -> anyhow::Result<Client> {
    Ok(Client::connect(cluster.endpoints(), ClientConfig::with_timeout(Duration::from_secs(10))).await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replace_a_node_under_load() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(Backend::Process, Options::default()).await?;
    let client = client(&cluster).await?;
    let load = start_load(&client, 16, "replace");
    load.wait_for(200).await?;
    assert_membership(&client, &[(1, false), (2, false), (3, false)]).await?;
    let new = cluster.start_joiner().await?;
    client
        .member_add(MemberAddRequest {
            id: new,
            peer_addr: cluster.nodes[&new].peer_addr.to_string(),
            client_addr: cluster.nodes[&new].client_addr.to_string(),
        })
        .await?;
    assert_membership(&client, &[(1, false), (2, false), (3, false), (new, true)]).await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match client.member_promote(new).await {
            Ok(_) => break,
            Err(keel_client::Error::Refused(keel_client::Outcome::LearnerCatchingUp, m))
                if Instant::now() < deadline =>
            {
                eprintln!("promote {new}: {m}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
    load.wait_for(200).await?;
    assert_membership(&client, &[(1, false), (2, false), (3, false), (new, false)]).await?;
    client.member_remove(1, false).await?;
    load.wait_for(200).await?;
    // The removed member refuses requests and says why (Unavailable: clients move on).
    let err = cluster
        .kv(1)
        .put(keel_proto::v1::PutRequest {
            key: b"to-removed".to_vec(),
            value: Vec::new(),
            prev_kv: false,
            lease: 0,
            session: None,
        })
        .await
        .expect_err("a removed member refuses writes");
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err}");
    assert!(err.message().contains("removed"), "{err}");
    assert!(cluster.nodes[&1].data_dir.join("REMOVED").exists(), "no REMOVED marker");
    cluster.kill(1).await?;
    cluster.forget(1);
    assert_membership(&client, &[(2, false), (3, false), (new, false)]).await?;
    load.wait_for(200).await?;
    let out = load.finish().await?;
    let longest = check(&client, &out, "replace").await?;
    let members = client.member_list().await?.members;
    let ids: Vec<u64> = members.iter().map(|m| m.id).collect();
    assert_eq!(ids, vec![2, 3, new], "{members:?}");
    assert!(members.iter().all(|m| !m.is_learner));
    eprintln!(
        "replace: {} writes acknowledged, 0 failed; longest single write {longest:?}",
        out.acked.lock().unwrap().len()
    );
    cluster.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rolling_restart_under_load() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(Backend::Process, Options::default()).await?;
    let client = client(&cluster).await?;
    let load = start_load(&client, 16, "rolling");
    load.wait_for(200).await?;
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await?;
    let mut order: Vec<u64> = cluster.nodes.keys().copied().filter(|id| *id != leader).collect();
    order.push(leader);
    for id in order {
        cluster.stop(id).await?;
        load.wait_for(50).await?;
        cluster.restart(id).await?;
        let target = cluster
            .status(cluster.wait_for_leader(Duration::from_secs(20)).await?)
            .await;
        let index = target.map_or(0, |s| s.applied_index);
        cluster.wait_applied(id, index, Duration::from_secs(30)).await?;
        load.wait_for(100).await?;
    }
    let out = load.finish().await?;
    let longest = check(&client, &out, "rolling").await?;
    eprintln!(
        "rolling restart: {} writes acknowledged, 0 failed; longest single write {longest:?}",
        out.acked.lock().unwrap().len()
    );
    cluster.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_transfer_under_load() -> anyhow::Result<()> {
    let cluster = Cluster::start(Backend::Process, Options::default()).await?;
    let client = client(&cluster).await?;
    let load = start_load(&client, 4, "transfer");
    load.wait_for(200).await?;
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await?;
    let target = *cluster.nodes.keys().find(|id| **id != leader).expect("a follower");
    let started = Instant::now();
    let resp = client.leader_transfer(Some(target)).await?;
    let ended = Instant::now();
    assert_eq!(resp.leader_id, target);
    load.wait_for(200).await?;
    let out = load.finish().await?;
    check(&client, &out, "transfer").await?;
    // The unavailability window: the longest stretch around the transfer with no write completing.
    let mut ends: Vec<Instant> = out.spans.lock().unwrap().iter().map(|(_, e)| *e).collect();
    ends.sort();
    let window = ends
        .windows(2)
        .filter(|w| w[1] >= started && w[0] <= ended + Duration::from_secs(1))
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default();
    assert_eq!(cluster.wait_for_leader(Duration::from_secs(10)).await?, target);
    eprintln!(
        "leader transfer {leader} → {target}: call took {:?}; longest gap between acknowledged writes {window:?}",
        ended - started
    );
    cluster.shutdown().await
}
