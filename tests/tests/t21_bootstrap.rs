//! Bootstrap is not lost to a failure: a node whose first start (with `--initial-cluster`)
//! recorded its identity but stopped before it initialized Raft finishes the bootstrap when it is
//! started again with the same flags, whether every member failed that way or only one did.
//!
//! The failure is real and needs no test hook: a regular file where the node's database directory
//! belongs (`<data-dir>/db`) makes opening the storage fail, which is after `keel.id` is written
//! and before `initialize`. The test then removes the file and starts the nodes as usual.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use keel_client::{Client, ClientConfig};
use keel_proto::v1::RangeRequest;
use keel_storage::NodeId;
use keel_testkit::{keel_binary, Backend, Cluster, Options};

/// Make the storage of `data_dir` impossible to open.
fn block_storage(data_dir: &Path) {
    std::fs::create_dir_all(data_dir).unwrap();
    std::fs::write(data_dir.join("db"), b"not a directory").unwrap();
}

fn unblock_storage(data_dir: &Path) {
    std::fs::remove_file(data_dir.join("db")).unwrap();
}

/// Run node `id`'s first start, with the flags the cluster gives it, while its storage is blocked:
/// it must fail after recording its identity.
fn failed_first_start(cluster: &Cluster, id: NodeId) {
    let n = &cluster.nodes[&id];
    block_storage(&n.data_dir);
    let out = Command::new(keel_binary().expect("keel binary"))
        .args(cluster.args(id).into_iter().skip(1))
        .output()
        .expect("run keel");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "node {id}: {stderr}");
    assert!(
        n.data_dir.join("keel.id").exists(),
        "node {id} failed before recording its identity, which is not the failure under test: {stderr}"
    );
    unblock_storage(&n.data_dir);
}

async fn client(cluster: &Cluster) -> anyhow::Result<Client> {
    Ok(Client::connect(cluster.endpoints(), ClientConfig::with_timeout(Duration::from_secs(10))).await?)
}

fn logs(cluster: &Cluster) -> String {
    cluster
        .nodes
        .keys()
        .map(|id| format!("--- node {id}\n{}", cluster.log(*id)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_member_failed_before_initialize_and_the_restart_bootstraps() -> anyhow::Result<()> {
    let mut cluster = Cluster::prepare(Backend::Process, Options::default()).await?;
    let ids: Vec<NodeId> = cluster.nodes.keys().copied().collect();
    for id in &ids {
        failed_first_start(&cluster, *id);
    }
    // The same flags again.
    cluster.launch_all().await?;
    if let Err(e) = cluster.wait_for_leader(Duration::from_secs(30)).await {
        panic!("{e}\n{}", logs(&cluster));
    }
    let client = client(&cluster).await?;
    client.put("after-failed-bootstrap", "v").await?;
    let got = client
        .range(RangeRequest {
            key: b"after-failed-bootstrap".to_vec(),
            ..Default::default()
        })
        .await?;
    assert_eq!(got.kvs.len(), 1);
    cluster.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_member_failed_before_initialize_and_joins_the_others() -> anyhow::Result<()> {
    let mut cluster = Cluster::prepare(Backend::Process, Options::default()).await?;
    failed_first_start(&cluster, 1);
    // Nodes 2 and 3 bootstrap as usual and form the cluster on their own (a quorum of 3).
    cluster.restart(2).await?;
    cluster.restart(3).await?;
    if let Err(e) = cluster.wait_for_leader(Duration::from_secs(30)).await {
        panic!("{e}\n{}", logs(&cluster));
    }
    let client = client(&cluster).await?;
    let before = client.put("before", "v").await?.header.expect("header");

    // Node 1 comes back with the same flags. It completes its bootstrap with the same initial
    // membership as the others, so its log agrees with theirs, and the leader brings it up to
    // date: it serves what was written while it was down, in the same cluster.
    cluster.restart(1).await?;
    let leader = cluster.wait_for_leader(Duration::from_secs(30)).await?;
    let applied = cluster.status(leader).await.map_or(0, |s| s.applied_index);
    if let Err(e) = cluster.wait_applied(1, applied, Duration::from_secs(30)).await {
        panic!("{e}\n{}", logs(&cluster));
    }
    let mut kv = cluster.kv(1);
    let got = kv
        .range(RangeRequest {
            key: b"before".to_vec(),
            serializable: true,
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(got.kvs.len(), 1, "node 1 does not have what the others wrote");
    assert_eq!(
        got.header.expect("header").cluster_id,
        before.cluster_id,
        "node 1 is not in the others' cluster"
    );
    // All three agree on one leader and take writes.
    cluster.wait_for_leader(Duration::from_secs(30)).await?;
    client.put("after", "v").await?;
    cluster.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_with_raft_state_is_never_initialized_again() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(
        Backend::Process,
        Options {
            nodes: 1,
            ..Options::default()
        },
    )
    .await?;
    let client = client(&cluster).await?;
    let written = client.put("kept", "v").await?.header.expect("header");
    cluster.stop(1).await?;
    // As if the node had been killed after initializing, before it recorded that: the identity
    // still says the bootstrap is pending, while the storage holds the cluster.
    let path = cluster.nodes[&1].data_dir.join("keel.id");
    let mut identity: serde_json::Value = serde_json::from_slice(&std::fs::read(&path)?)?;
    assert!(
        identity.get("bootstrap").is_none(),
        "a finished bootstrap is still pending: {identity}"
    );
    let members: serde_json::Map<String, serde_json::Value> = cluster
        .initial_cluster()
        .split(',')
        .map(|m| {
            let (id, addr) = m.split_once('=').expect("id=addr");
            (id.to_string(), serde_json::Value::from(addr))
        })
        .collect();
    identity["bootstrap"] = members.into();
    std::fs::write(&path, serde_json::to_vec(&identity)?)?;

    cluster.restart(1).await?;
    cluster.wait_for_leader(Duration::from_secs(30)).await?;
    let got = client
        .range(RangeRequest {
            key: b"kept".to_vec(),
            ..Default::default()
        })
        .await?;
    assert_eq!(got.kvs.len(), 1, "the restart lost what the node had");
    let header = got.header.expect("header");
    assert_eq!(header.cluster_id, written.cluster_id);
    assert!(header.revision >= written.revision, "{header:?} after {written:?}");
    let identity: serde_json::Value = serde_json::from_slice(&std::fs::read(&path)?)?;
    assert!(identity.get("bootstrap").is_none(), "still pending: {identity}");
    cluster.shutdown().await
}
