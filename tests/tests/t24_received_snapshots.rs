//! Snapshot files a member receives never outlive their transfer (issue 11.4): a stream that
//! breaks off, an install Raft refuses, and a transfer superseded by a newer one each remove the
//! `recv-*.part` file at once, and a member receives one snapshot at a time.
//!
//! The tests talk to a follower's peer service directly, as a leader would. A received file is
//! unlinked as soon as it is created, so "removed" means: no such file in the directory, and
//! none still open.

use std::path::Path;
use std::time::{Duration, Instant};

use keel_proto::raft::raft_client::RaftClient;
use keel_proto::raft::SnapshotChunk;
use keel_storage::{codec, NodeId, SnapshotMeta, StoredMembership, Vote};
use keel_testkit::{Backend, Cluster, Options};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// The first message of a transfer: a stale vote and a snapshot at index 1, which Raft refuses.
fn header() -> SnapshotChunk {
    let meta = SnapshotMeta {
        // Of the same (stale) leader as the vote: a later one is refused before anything is received.
        last_log_id: Some(keel_storage::log_id_at(0, 0, 1)),
        last_membership: StoredMembership::default(),
    };
    SnapshotChunk {
        meta: codec::encode(&(Vote::new(0, 0), meta)),
        data: Vec::new(),
    }
}

fn chunk() -> SnapshotChunk {
    SnapshotChunk {
        meta: Vec::new(),
        data: vec![7u8; 1024 * 1024],
    }
}

/// Received snapshot files that still take disk space: `recv-*.part` files in the member's
/// snapshot directory, and such files (unlinked or not) that are still open. The cluster runs
/// in this process, so its open files are this process's.
fn received_files(data_dir: &Path) -> Vec<String> {
    let snapshots = data_dir.join("snapshots");
    let is_received = |name: &str| name.contains("recv-") && name.contains(".part");
    let mut found: Vec<String> = std::fs::read_dir(&snapshots)
        .map(|dir| {
            dir.filter_map(|e| e.ok())
                .map(|e| e.path().to_string_lossy().into_owned())
                .filter(|name| is_received(name))
                .collect()
        })
        .unwrap_or_default();
    let open = std::fs::read_dir("/proc/self/fd").expect("/proc/self/fd");
    for fd in open.filter_map(|e| e.ok()) {
        if let Ok(target) = std::fs::read_link(fd.path()) {
            let target = target.to_string_lossy().into_owned();
            if target.starts_with(&*snapshots.to_string_lossy()) && is_received(&target) {
                found.push(format!("open: {target}"));
            }
        }
    }
    found
}

async fn wait_until(what: &str, mut done: impl FnMut() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        anyhow::ensure!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

type Tagger = fn(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status>;

/// A peer client that speaks this build's peer protocol (members refuse requests without it).
async fn peer_client(cluster: &Cluster, id: NodeId) -> anyhow::Result<RaftClient<InterceptedService<Channel, Tagger>>> {
    let addr = cluster.nodes[&id].peer_addr;
    let channel = Channel::from_shared(format!("http://{addr}"))?.connect().await?;
    let tag: Tagger = |mut req| {
        keel_server::peer::tag_protocol(req.metadata_mut());
        Ok(req)
    };
    Ok(RaftClient::with_interceptor(channel, tag))
}

/// A transfer that sends `chunks` and then stalls until it is dropped.
fn stalled(chunks: Vec<SnapshotChunk>) -> impl tokio_stream::Stream<Item = SnapshotChunk> + Send + 'static {
    tokio_stream::StreamExt::chain(tokio_stream::iter(chunks), tokio_stream::pending())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn received_snapshot_files_are_removed_however_the_transfer_ends() -> anyhow::Result<()> {
    let cluster = Cluster::start(Backend::InProcess, Options::default()).await?;
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await?;
    let follower = *cluster.nodes.keys().find(|id| **id != leader).expect("a follower");
    let dir = cluster.nodes[&follower].data_dir.clone();
    let mut peer = peer_client(&cluster, follower).await?;

    // 1. A whole transfer that Raft refuses (stale vote, index at or below committed).
    let stream = tokio_stream::iter(vec![header(), chunk(), chunk()]);
    let answer = peer.install_snapshot(stream).await;
    assert!(answer.is_ok(), "a refused install is answered, not failed: {answer:?}");
    assert_eq!(received_files(&dir), Vec::<String>::new(), "after a refused install");

    // 2. A transfer that breaks off mid-stream (the sender goes away).
    let mut p = peer.clone();
    let sender = tokio::spawn(async move { p.install_snapshot(stalled(vec![header(), chunk()])).await });
    wait_until("the follower receives into a file", || !received_files(&dir).is_empty()).await?;
    sender.abort();
    wait_until("the broken-off transfer's file is removed", || {
        received_files(&dir).is_empty()
    })
    .await?;

    // 3. A transfer superseded by a newer one: the older is ended, the newer is answered, and
    // neither leaves a file.
    let mut p = peer.clone();
    let older = tokio::spawn(async move { p.install_snapshot(stalled(vec![header(), chunk()])).await });
    wait_until("the older transfer receives", || !received_files(&dir).is_empty()).await?;
    let newer = tokio::time::timeout(
        Duration::from_secs(10),
        peer.install_snapshot(tokio_stream::iter(vec![header(), chunk()])),
    )
    .await
    .expect("the newer transfer is not held up by the stalled one");
    assert!(newer.is_ok(), "the newer transfer is answered: {newer:?}");
    let older = tokio::time::timeout(Duration::from_secs(10), older)
        .await
        .expect("the superseded transfer is ended")?;
    let status = older.expect_err("the superseded transfer fails");
    assert_eq!(status.code(), tonic::Code::Aborted, "{status:?}");
    assert_eq!(
        received_files(&dir),
        Vec::<String>::new(),
        "after a superseded transfer"
    );

    // The follower still follows.
    assert!(cluster.status(follower).await.is_some());
    cluster.shutdown().await
}

/// A write forwarded over the peer port is validated again by the member that proposes it: a
/// batch, an empty key or an oversized value never reaches the log, whoever sends it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_forwarded_write_is_validated_by_the_leader() -> anyhow::Result<()> {
    use keel_proto::raft::RaftRequest;
    use keel_server::error::NodeError;
    use keel_server::forward::ForwardRequest;
    use keel_storage::{Command, PutOp, Request};

    let cluster = Cluster::start(Backend::InProcess, Options::default()).await?;
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await?;
    let mut peer = peer_client(&cluster, leader).await?;
    let put = |key: &[u8], value: Vec<u8>| {
        Request::new(Command::Put(PutOp {
            key: key.to_vec(),
            value,
            prev_kv: false,
        }))
    };
    let bad = [
        ("an empty key", put(b"", b"v".to_vec())),
        ("a value over 1 MiB", put(b"k", vec![0; 1024 * 1024 + 1])),
        (
            "a client batch",
            Request::new(Command::Batch(vec![put(b"k", b"v".to_vec())])),
        ),
    ];
    let revision = || async {
        let got = cluster
            .kv(leader)
            .range(keel_proto::v1::RangeRequest {
                key: b"k".to_vec(),
                ..Default::default()
            })
            .await?
            .into_inner();
        anyhow::Ok(got.header.expect("header").revision)
    };
    let before = revision().await?;
    for (what, request) in bad {
        let fwd = ForwardRequest::Write {
            request,
            timeout_ms: 5_000,
        };
        let reply = peer
            .forward(RaftRequest {
                data: codec::encode(&fwd),
            })
            .await?
            .into_inner();
        assert!(!reply.error.is_empty(), "{what} was accepted");
        let err: NodeError = codec::decode(&reply.error)?;
        assert!(matches!(err, NodeError::InvalidArgument(_)), "{what}: {err:?}");
    }
    assert_eq!(revision().await?, before, "nothing was applied");
    cluster.shutdown().await
}
