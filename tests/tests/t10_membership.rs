//! Membership changes that must be refused, with their documented errors, and a member of
//! another cluster that must never be fed this cluster's log.

use std::time::Duration;

mod common;

use common::put;
use keel_proto::v1::{MemberAddRequest, MemberListRequest, MemberRemoveRequest, RangeRequest};
use keel_testkit::{Backend, Cluster, Options};
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refused_membership_changes_name_their_reason() -> anyhow::Result<()> {
    let cluster = Cluster::start(Backend::InProcess, Options::default()).await?;
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await?;
    let follower = *cluster.nodes.keys().find(|id| **id != leader).expect("a follower");
    let mut c = cluster.cluster_client(follower);
    let add = |id: u64, peer: &str| MemberAddRequest {
        id,
        peer_addr: peer.into(),
        client_addr: String::new(),
    };
    let taken = cluster.nodes[&leader].peer_addr.to_string();
    for (req, expect) in [
        (add(leader, "127.0.0.1:1"), "already exists"),
        (add(9, &taken), "already member"),
    ] {
        let err = c.member_add(req).await.expect_err("refused");
        assert_eq!(err.code(), Code::FailedPrecondition, "{err}");
        assert!(err.message().contains(expect), "{err}");
    }
    let err = c.member_add(add(0, "127.0.0.1:1")).await.expect_err("refused");
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    let err = c
        .member_remove(MemberRemoveRequest { id: 42, force: false })
        .await
        .expect_err("refused");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err}");
    assert!(err.message().contains("no member 42"), "{err}");
    let members = c.member_list(MemberListRequest {}).await?.into_inner().members;
    assert_eq!(members.len(), 3, "nothing changed: {members:?}");
    cluster.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_last_voter_cannot_be_removed() -> anyhow::Result<()> {
    let cluster = Cluster::start(
        Backend::InProcess,
        Options {
            nodes: 1,
            ..Default::default()
        },
    )
    .await?;
    let err = cluster
        .cluster_client(1)
        .member_remove(MemberRemoveRequest { id: 1, force: true })
        .await
        .expect_err("refused");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err}");
    assert!(err.message().contains("last voter"), "{err}");
    cluster.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_removal_that_leaves_no_reachable_majority_needs_force() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(
        Backend::InProcess,
        Options {
            nodes: 5,
            ..Default::default()
        },
    )
    .await?;
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await?;
    let others: Vec<u64> = cluster.nodes.keys().copied().filter(|id| *id != leader).collect();
    // Two of five down: a quorum remains, but removing a live voter would leave 2 of 4 reachable.
    cluster.kill(others[0]).await?;
    cluster.kill(others[1]).await?;
    let mut c = cluster.cluster_client(leader);
    let err = c
        .member_remove(MemberRemoveRequest {
            id: others[2],
            force: false,
        })
        .await
        .expect_err("refused");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err}");
    assert!(err.message().contains("not a majority"), "{err}");
    // Removing a dead voter leaves 3 of 3 remaining... minus the dead one: allowed.
    c.member_remove(MemberRemoveRequest {
        id: others[0],
        force: false,
    })
    .await?;
    let members = c.member_list(MemberListRequest {}).await?.into_inner().members;
    assert!(!members.iter().any(|m| m.id == others[0]), "{members:?}");
    cluster.kv(leader).put(put("after")).await?;
    cluster.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_of_another_cluster_is_never_fed_this_clusters_log() -> anyhow::Result<()> {
    let a = Cluster::start(Backend::InProcess, Options::default()).await?;
    let b = Cluster::start(
        Backend::InProcess,
        Options {
            nodes: 1,
            ..Default::default()
        },
    )
    .await?;
    b.kv(1).put(put("b-only")).await?;
    let leader = a.wait_for_leader(Duration::from_secs(10)).await?;
    for i in 0..20 {
        a.kv(leader).put(put(&format!("a{i}"))).await?;
    }
    // An operator mistake: add cluster B's node to cluster A.
    let mut c = a.cluster_client(leader);
    c.member_add(MemberAddRequest {
        id: 7,
        peer_addr: b.nodes[&1].peer_addr.to_string(),
        client_addr: String::new(),
    })
    .await?;
    // It is a learner that never catches up, so it is never promoted.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let err = c
        .member_promote(keel_proto::v1::MemberPromoteRequest { id: 7 })
        .await
        .expect_err("refused");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err}");
    // B is untouched: its own key, none of A's, still writable.
    let all = b
        .kv(1)
        .range(RangeRequest {
            key: Vec::new(),
            prefix: true,
            ..Default::default()
        })
        .await?
        .into_inner();
    let keys: Vec<String> = all
        .kvs
        .iter()
        .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
        .collect();
    assert_eq!(keys, vec!["b-only".to_string()]);
    b.kv(1).put(put("b-still-writable")).await?;
    // A carries on, and the mistake can be undone.
    a.kv(leader).put(put("a-after")).await?;
    c.member_remove(MemberRemoveRequest { id: 7, force: false }).await?;
    a.shutdown().await?;
    b.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_learner_far_behind_is_not_promoted() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(Backend::Process, Options::default()).await?;
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await?;
    let learner = cluster.start_joiner().await?;
    let mut c = cluster.cluster_client(leader);
    c.member_add(MemberAddRequest {
        id: learner,
        peer_addr: cluster.nodes[&learner].peer_addr.to_string(),
        client_addr: cluster.nodes[&learner].client_addr.to_string(),
    })
    .await?;
    let applied = cluster.status(leader).await.expect("leader status").applied_index;
    // The leader must have seen the learner's acknowledgement before it is frozen: a learner
    // paused between applying and answering has, from the leader's side, acknowledged nothing.
    cluster
        .wait_matched(leader, learner, applied, Duration::from_secs(20))
        .await?;
    // Freeze the learner, then move the log 200 entries past it.
    cluster.pause(learner, true)?;
    for i in 0..200 {
        cluster.kv(leader).put(put(&format!("k{i}"))).await?;
    }
    let err = c
        .member_promote(keel_proto::v1::MemberPromoteRequest { id: learner })
        .await
        .expect_err("refused");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err}");
    assert!(err.message().contains("entries behind"), "{err}");
    let members = c.member_list(MemberListRequest {}).await?.into_inner().members;
    assert!(members.iter().any(|m| m.id == learner && m.is_learner), "{members:?}");
    // Once it has caught up, it is promoted.
    cluster.pause(learner, false)?;
    let applied = cluster.status(leader).await.expect("leader status").applied_index;
    cluster
        .wait_matched(leader, learner, applied, Duration::from_secs(20))
        .await?;
    c.member_promote(keel_proto::v1::MemberPromoteRequest { id: learner })
        .await?;
    let members = c.member_list(MemberListRequest {}).await?.into_inner().members;
    assert!(members.iter().all(|m| !m.is_learner), "{members:?}");
    cluster.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_membership_changes_wait_for_each_other() -> anyhow::Result<()> {
    // openraft takes one membership change at a time; keel waits out one in progress rather
    // than refusing the next (members also publish their addresses right after an election).
    let mut cluster = Cluster::start(Backend::InProcess, Options::default()).await?;
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await?;
    let a = cluster.start_joiner().await?;
    let b = cluster.start_joiner().await?;
    let add = |id: u64| {
        let mut c = cluster.cluster_client(leader);
        let node = &cluster.nodes[&id];
        let req = MemberAddRequest {
            id,
            peer_addr: node.peer_addr.to_string(),
            client_addr: node.client_addr.to_string(),
        };
        async move { c.member_add(req).await }
    };
    let (ra, rb) = tokio::join!(add(a), add(b));
    ra?;
    rb?;
    let members = cluster
        .cluster_client(leader)
        .member_list(MemberListRequest {})
        .await?
        .into_inner()
        .members;
    for id in [a, b] {
        assert!(members.iter().any(|m| m.id == id && m.is_learner), "{members:?}");
    }
    cluster.shutdown().await
}
