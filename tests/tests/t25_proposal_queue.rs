//! The leader's proposer holds a bounded number of writes (`--max-queued-writes`): queued, or
//! proposed and not yet answered. When it is full, a write is refused at once with Unavailable
//! (nothing was proposed, so a retry is safe) that names the leader and the limit, and
//! `keel_proposal_queue_requests` shows how many writes it holds.
//!
//! The writes are held by a leader that does not hear its followers' answers: it stays leader
//! (the followers still get its heartbeats) and accepts writes for two election timeouts, but
//! none can commit. When the answers flow again they all commit and the queue empties.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use keel_proto::v1::PutRequest;
use keel_storage::NodeId;
use keel_testkit::{Backend, Cluster, Options};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;

const LIMIT: usize = 4;

fn put(key: &str, timeout: Duration) -> tonic::Request<PutRequest> {
    let mut req = tonic::Request::new(PutRequest {
        key: key.into(),
        value: b"v".to_vec(),
        prev_kv: false,
        lease: 0,
        session: None,
    });
    req.set_timeout(timeout);
    req
}

/// The value of the `keel_proposal_queue_requests` gauge on member `id`.
async fn queued(cluster: &Cluster, id: NodeId) -> anyhow::Result<f64> {
    let addr: SocketAddr = cluster.nodes[&id].metrics_addr;
    let mut s = tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr)).await??;
    s.write_all(format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await??;
    let text = String::from_utf8(buf)?;
    let line = text
        .lines()
        .find(|l| l.starts_with("keel_proposal_queue_requests{"))
        .ok_or_else(|| anyhow::anyhow!("no keel_proposal_queue_requests in /metrics"))?;
    Ok(line.rsplit(' ').next().unwrap_or_default().parse()?)
}

/// Wait (at most `timeout`) until member `id`'s proposer holds `want` writes.
async fn wait_queued(cluster: &Cluster, id: NodeId, want: usize, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let now = queued(cluster, id).await?;
        if now == want as f64 {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "member {id} holds {now} writes, not {want}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_proposal_queue_refuses_writes_with_unavailable() -> anyhow::Result<()> {
    // A write window of 2 x 2000 ms after the leader last heard from a quorum.
    let options = Options {
        nodes: 3,
        flags: vec![
            "--election-timeout-ms".into(),
            "1000-2000".into(),
            "--max-queued-writes".into(),
            LIMIT.to_string(),
        ],
        network: Some(23),
        ..Options::default()
    };
    let cluster = Cluster::start(Backend::InProcess, options).await?;
    let leader = cluster.wait_for_leader(Duration::from_secs(30)).await?;
    cluster.kv(leader).put(put("settled", Duration::from_secs(10))).await?;
    wait_queued(&cluster, leader, 0, Duration::from_secs(5)).await?;

    let net = cluster.net().expect("network");
    let followers: Vec<NodeId> = cluster.nodes.keys().copied().filter(|id| *id != leader).collect();
    for f in &followers {
        net.update(*f, leader, |l| l.blocked = true);
    }
    let held: Vec<_> = (0..LIMIT)
        .map(|i| {
            let mut kv = cluster.kv(leader);
            tokio::spawn(async move { kv.put(put(&format!("held{i}"), Duration::from_secs(60))).await })
        })
        .collect();
    wait_queued(&cluster, leader, LIMIT, Duration::from_secs(3)).await?;
    for (i, h) in held.iter().enumerate() {
        assert!(!h.is_finished(), "write {i} was answered: {h:?}");
    }

    let refused = cluster
        .kv(leader)
        .put(put("one-too-many", Duration::from_secs(60)))
        .await
        .expect_err("a write beyond the queue's limit was accepted");
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    let expected = format!("too many writes queued on leader {leader} (limit {LIMIT}); retry");
    assert!(refused.message().contains(&expected), "{refused:?}");
    assert_eq!(queued(&cluster, leader).await?, LIMIT as f64);

    // The answers flow again: everything held commits, and the queue empties.
    net.heal();
    for (i, h) in held.into_iter().enumerate() {
        let result = tokio::time::timeout(Duration::from_secs(60), h).await??;
        assert!(result.is_ok(), "held write {i}: {result:?}");
    }
    wait_queued(&cluster, leader, 0, Duration::from_secs(5)).await?;
    cluster.kv(leader).put(put("after", Duration::from_secs(10))).await?;
    cluster.shutdown().await
}
