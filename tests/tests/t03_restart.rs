//! Restarts: a killed follower catches up from the log, a follower that fell behind the leader's
//! purged log catches up through a snapshot, and a whole cluster stopped and started again keeps
//! every key and revision.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use keel_proto::v1::kv_client::KvClient;
use keel_proto::v1::{DeleteRangeRequest, KeyValue, PutRequest, RangeRequest, RangeResponse};
use keel_storage::NodeId;
use keel_testkit::{Backend, Cluster, Options};
use tokio::task::JoinSet;
use tonic::transport::Channel;

fn put(key: &str, value: &str) -> PutRequest {
    PutRequest {
        key: key.into(),
        value: value.into(),
        prev_kv: false,
        lease: 0,
        session: None,
    }
}

/// Every key, linearizable unless `serializable`.
fn everything(serializable: bool) -> RangeRequest {
    RangeRequest {
        key: Vec::new(),
        prefix: true,
        serializable,
        ..Default::default()
    }
}

/// Put every `(key, value)` through `kv`, a few at a time; each must succeed.
async fn put_all(kv: &KvClient<Channel>, pairs: Vec<(String, String)>) -> anyhow::Result<()> {
    const IN_FLIGHT: usize = 8;
    let mut tasks = JoinSet::new();
    let mut pairs = pairs.into_iter();
    loop {
        while tasks.len() < IN_FLIGHT {
            let Some((k, v)) = pairs.next() else { break };
            let mut kv = kv.clone();
            tasks.spawn(async move { kv.put(put(&k, &v)).await.map_err(|e| anyhow::anyhow!("put {k}: {e}")) });
        }
        match tasks.join_next().await {
            Some(done) => {
                done??;
            }
            None => return Ok(()),
        }
    }
}

fn follower_of(cluster: &Cluster, leader: NodeId) -> NodeId {
    *cluster.nodes.keys().find(|id| **id != leader).expect("a follower")
}

/// Wait until `id` has applied everything the current leader has applied.
async fn catch_up(cluster: &Cluster, id: NodeId, timeout: Duration) -> anyhow::Result<()> {
    let leader = cluster.wait_for_leader(timeout).await?;
    let applied = cluster.status(leader).await.expect("leader status").applied_index;
    cluster.wait_applied(id, applied, timeout).await
}

/// The key → value map of a range response.
fn values(resp: &RangeResponse) -> BTreeMap<String, String> {
    resp.kvs
        .iter()
        .map(|kv| {
            (
                String::from_utf8_lossy(&kv.key).into_owned(),
                String::from_utf8_lossy(&kv.value).into_owned(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_follower_restarts_and_catches_up() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(Backend::Process, Options::default()).await?;
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await?;
    let follower = follower_of(&cluster, leader);
    let key = |i: usize| format!("key{i:03}");
    let value = |i: usize| format!("value-{i}");
    let kv = cluster.kv(leader);
    put_all(&kv, (0..200).map(|i| (key(i), value(i))).collect()).await?;

    cluster.kill(follower).await?;
    put_all(&kv, (200..400).map(|i| (key(i), value(i))).collect()).await?;

    cluster.restart(follower).await?;
    catch_up(&cluster, follower, Duration::from_secs(20)).await?;
    let mut fkv = cluster.kv(follower);
    for i in 0..400 {
        let got = fkv
            .range(RangeRequest {
                key: key(i).into_bytes(),
                serializable: true,
                ..Default::default()
            })
            .await?
            .into_inner();
        assert_eq!(got.header.as_ref().expect("header").member_id, follower);
        assert_eq!(got.kvs.len(), 1, "{} on the restarted follower", key(i));
        assert_eq!(
            got.kvs[0].value,
            value(i).as_bytes(),
            "{} on the restarted follower",
            key(i)
        );
    }
    let all = fkv.range(everything(true)).await?.into_inner();
    assert_eq!(all.count, 400);
    assert_eq!(all.header.expect("header").revision, 400);
    cluster.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_that_was_down_while_the_leader_purged_its_log_catches_up_through_a_snapshot() -> anyhow::Result<()> {
    // A snapshot every 50 entries; the leader keeps 1000 entries behind its snapshot
    // (`max_in_snapshot_log_to_keep` in keel-server's server.rs), so 1300 writes while the
    // follower is down purge entries it still needs. One write per entry (`--max-batch 1`), so
    // that the writes really are 1300 entries however the leader would batch them.
    let options = Options {
        flags: vec!["--snapshot-logs".into(), "50".into(), "--max-batch".into(), "1".into()],
        ..Default::default()
    };
    let mut cluster = Cluster::start(Backend::Process, options).await?;
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await?;
    let follower = follower_of(&cluster, leader);
    let kv = cluster.kv(leader);
    // 400 keys, overwritten over and over: the final state is not the sum of the writes.
    const KEYS: usize = 400;
    let write = |i: usize| (format!("s{:03}", i % KEYS), format!("v{i}"));
    put_all(&kv, (0..100).map(write).collect()).await?;

    let needed = cluster.status(follower).await.expect("follower status").last_log_index;
    cluster.kill(follower).await?;
    const TOTAL: usize = 1400;
    put_all(&kv, (100..TOTAL).map(write).collect()).await?;
    // Deletes travel through the snapshot too.
    let deleted = kv
        .clone()
        .delete_range(DeleteRangeRequest {
            key: b"s00".to_vec(),
            prefix: true,
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(deleted.deleted, 10, "s000..s009");
    let expected: BTreeMap<String, String> = (TOTAL - KEYS..TOTAL)
        .map(write)
        .filter(|(k, _)| !k.starts_with("s00"))
        .collect();

    // The leader builds snapshots and purges behind the writes, on its own time: wait until it
    // has purged entries the follower needs, or the follower would catch up from the log.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let purged = cluster.status(leader).await.expect("leader status").purged_index;
        if purged > needed {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the leader did not purge past {needed} (purged to {purged})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log_before = cluster.log(follower).len();
    cluster.restart(follower).await?;
    catch_up(&cluster, follower, Duration::from_secs(30)).await?;

    let got = cluster.kv(follower).range(everything(true)).await?.into_inner();
    assert_eq!(got.header.as_ref().expect("header").revision, TOTAL as u64 + 1);
    assert_eq!(values(&got), expected, "the restarted follower's data");
    // The follower got there through a snapshot, not the log.
    let log = cluster.log(follower);
    assert!(
        log[log_before..].contains("received snapshot"),
        "node {follower} did not receive a snapshot after its restart:\n{}",
        &log[log_before..]
    );
    let snapshots = cluster.nodes[&follower].data_dir.join("snapshots");
    let snap_files = std::fs::read_dir(&snapshots)?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "snap"))
        .count();
    assert!(snap_files >= 1, "no *.snap file in {}", snapshots.display());
    cluster.shutdown().await
}

/// Every pair with its revisions, and the revision of the response.
async fn dump(cluster: &Cluster, id: NodeId) -> anyhow::Result<(u64, Vec<KeyValue>)> {
    let resp = cluster.kv(id).range(everything(false)).await?.into_inner();
    Ok((resp.header.expect("header").revision, resp.kvs))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_whole_cluster_stopped_and_restarted_keeps_every_key_and_revision() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(Backend::Process, Options::default()).await?;
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await?;
    let mut kv = cluster.kv(leader);
    for i in 0..30 {
        kv.put(put(&format!("k{i:02}"), &format!("first-{i}"))).await?;
    }
    for i in (0..30).step_by(3) {
        kv.put(put(&format!("k{i:02}"), &format!("second-{i}"))).await?;
    }
    for i in (1..30).step_by(5) {
        let resp = kv
            .delete_range(DeleteRangeRequest {
                key: format!("k{i:02}").into_bytes(),
                ..Default::default()
            })
            .await?
            .into_inner();
        assert_eq!(resp.deleted, 1);
    }
    // A key deleted and created again starts a new life: version 1, a new create_revision.
    kv.put(put("k01", "reborn")).await?;

    let (revision, before) = dump(&cluster, leader).await?;
    assert_eq!(revision, 30 + 10 + 6 + 1);
    assert_eq!(before.len(), 30 - 6 + 1);
    let k00 = before.iter().find(|kv| kv.key == b"k00").expect("k00");
    assert_eq!((k00.create_revision, k00.mod_revision, k00.version), (1, 31, 2));

    let ids: Vec<NodeId> = cluster.nodes.keys().copied().collect();
    for id in &ids {
        // `stop` fails unless the node exits successfully after SIGTERM.
        cluster.stop(*id).await?;
    }
    let started = Instant::now();
    for id in &ids {
        cluster.restart(*id).await?;
    }
    let leader = cluster.wait_for_leader(Duration::from_secs(20)).await?;
    eprintln!("cluster restarted, leader {leader} after {:?}", started.elapsed());

    let (revision_after, after) = dump(&cluster, leader).await?;
    assert_eq!(revision_after, revision, "the store revision survives a full restart");
    assert_eq!(
        after, before,
        "every key, value, create/mod revision and version survive"
    );
    for id in &ids {
        catch_up(&cluster, *id, Duration::from_secs(10)).await?;
        let local = cluster.kv(*id).range(everything(true)).await?.into_inner();
        assert_eq!(local.header.expect("header").revision, revision, "member {id}");
        assert_eq!(local.kvs, before, "member {id}");
    }

    let resp = cluster.kv(leader).put(put("after-restart", "x")).await?.into_inner();
    assert_eq!(resp.header.expect("header").revision, revision + 1);
    cluster.shutdown().await
}

/// A stopped in-process member's ports are in the kernel's ephemeral range: while it is down,
/// nothing else may take them (another test's listener, or an outgoing connection's source port,
/// which once made a restart fail with "Address already in use"), yet clients find them closed.
#[tokio::test]
async fn a_stopped_members_ports_stay_its_own_until_it_restarts() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(Backend::InProcess, Options::default()).await?;
    cluster.wait_for_leader(Duration::from_secs(10)).await?;
    let id: NodeId = 1;
    cluster.kill(id).await?;
    let node = &cluster.nodes[&id];
    for addr in [node.client_addr, node.peer_listen, node.metrics_addr] {
        assert!(
            std::net::TcpListener::bind(addr).is_err(),
            "{addr} was free for another socket while its member was down"
        );
        let refused = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1));
        assert!(refused.is_err(), "{addr} accepted a connection with its member down");
    }
    cluster.restart(id).await?;
    let mut kv = KvClient::connect(format!("http://{}", cluster.nodes[&id].client_addr)).await?;
    kv.range(RangeRequest {
        serializable: true,
        ..everything(true)
    })
    .await?;
    Ok(())
}
