//! Replication: a write reaches every member; a write sent to a follower is forwarded.

use std::time::Duration;

use keel_proto::v1::{PutRequest, RangeRequest};
use keel_testkit::{Backend, Cluster, Options};

fn put(key: &str, value: &str) -> PutRequest {
    PutRequest {
        key: key.into(),
        value: value.into(),
        prev_kv: false,
        lease: 0,
        session: None,
    }
}

fn serializable_get(key: &str) -> RangeRequest {
    RangeRequest {
        key: key.into(),
        serializable: true,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_write_on_the_leader_is_readable_on_every_member() -> anyhow::Result<()> {
    let cluster = Cluster::start(Backend::InProcess, Options::default()).await?;
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await?;
    let resp = cluster.kv(leader).put(put("greeting", "hello")).await?.into_inner();
    let header = resp.header.expect("header");
    assert_eq!(
        (header.member_id, header.revision, header.leader_id),
        (leader, 1, leader)
    );
    let applied = cluster.status(leader).await.expect("leader status").applied_index;
    for id in cluster.nodes.keys().copied() {
        cluster.wait_applied(id, applied, Duration::from_secs(5)).await?;
        let got = cluster.kv(id).range(serializable_get("greeting")).await?.into_inner();
        assert_eq!(got.kvs.len(), 1, "member {id}");
        assert_eq!(got.kvs[0].value, b"hello", "member {id}");
        assert_eq!(got.header.expect("header").member_id, id);
    }
    cluster.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_write_sent_to_a_follower_is_forwarded() -> anyhow::Result<()> {
    let cluster = Cluster::start(Backend::InProcess, Options::default()).await?;
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await?;
    let follower = *cluster.nodes.keys().find(|id| **id != leader).expect("a follower");
    for i in 0..20 {
        let resp = cluster
            .kv(follower)
            .put(put(&format!("k{i}"), &format!("v{i}")))
            .await?
            .into_inner();
        assert_eq!(resp.header.expect("header").revision, i + 1);
    }
    // A linearizable read on another follower sees every write, without waiting by hand.
    let other = *cluster
        .nodes
        .keys()
        .find(|id| **id != leader && **id != follower)
        .expect("another follower");
    let all = cluster
        .kv(other)
        .range(RangeRequest {
            key: b"k".to_vec(),
            prefix: true,
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(all.count, 20);
    assert_eq!(all.header.expect("header").revision, 20);
    cluster.shutdown().await
}
