//! Stalls that are not failures: the cluster's terms, what members logged about elections, and
//! processes that keep every core busy (t28, t30).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use keel_storage::NodeId;
use keel_testkit::Cluster;

/// Every member's term, or an error naming the member that did not answer.
pub async fn terms(cluster: &Cluster) -> anyhow::Result<Vec<(NodeId, u64, u64)>> {
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
pub fn diagnose(cluster: &Cluster) {
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
pub async fn assert_unchanged(cluster: &Cluster, term: u64, leader: NodeId) -> anyhow::Result<()> {
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

/// Processes that keep every core busy while they live (killed on drop: only these, by PID).
pub struct BusyLoops(Vec<Child>);

impl BusyLoops {
    pub fn start(n: usize) -> anyhow::Result<BusyLoops> {
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
