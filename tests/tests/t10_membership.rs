//! Membership changes that must be refused, with their documented errors, and a member of
//! another cluster that must never be fed this cluster's log.

use std::time::Duration;

mod common;

use common::put;
use keel_proto::v1::{MemberAddRequest, MemberListRequest, MemberRemoveRequest, RangeRequest};
use keel_proto::wire::Outcome;
use keel_testkit::{keelctl_binary, Backend, Cluster, Options};
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
    // A duplicate id is named in the metadata (keelctl's `member add`, run again, goes on from
    // there); a duplicate address is not a condition anyone acts on.
    for (req, expect, outcome) in [
        (
            add(leader, "127.0.0.1:1"),
            "already exists",
            Some(Outcome::MemberExists),
        ),
        (add(9, &taken), "already member", None),
    ] {
        let err = c.member_add(req).await.expect_err("refused");
        assert_eq!(err.code(), Code::FailedPrecondition, "{err}");
        assert!(err.message().contains(expect), "{err}");
        assert_eq!(Outcome::of(&err), outcome, "{err}");
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
    assert_eq!(Outcome::of(&err), Some(Outcome::LearnerCatchingUp), "{err}");
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

/// `keelctl -o json member add ID --peer-addr .. --client-addr ..` plus `extra`, against the
/// initial members; run off the runtime that serves the cluster.
async fn keelctl_member_add(cluster: &Cluster, id: u64, extra: &[&str]) -> anyhow::Result<std::process::Output> {
    let endpoints: Vec<String> = (1..=3).map(|i| cluster.nodes[&i].client_addr.to_string()).collect();
    let node = &cluster.nodes[&id];
    let mut args: Vec<String> = vec![
        "--endpoints".into(),
        endpoints.join(","),
        "-o".into(),
        "json".into(),
        "member".into(),
        "add".into(),
        id.to_string(),
        "--peer-addr".into(),
        node.peer_addr.to_string(),
        "--client-addr".into(),
        node.client_addr.to_string(),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    let bin = keelctl_binary()?;
    Ok(tokio::task::spawn_blocking(move || std::process::Command::new(bin).args(args).output()).await??)
}

/// keelctl's printed membership: (id, role) of each member.
fn roles(out: &std::process::Output) -> Vec<(u64, String)> {
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    v["members"]
        .as_array()
        .map(|ms| {
            ms.iter()
                .map(|m| {
                    (
                        m["id"].as_u64().unwrap_or(0),
                        m["role"].as_str().unwrap_or("").to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn describe(out: &std::process::Output) -> String {
    format!(
        "exit {:?}, stdout {:?}, stderr {:?}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// An operator starts a node with `--join` and runs `keelctl member add` at once, before the new
/// member has acknowledged anything (it may not even listen yet): keelctl waits for it and
/// promotes it. Twenty times in a row; each new member is removed again, so the cluster stays
/// three voters and one joiner.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keelctl_member_add_right_after_the_start_promotes_the_new_member() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(Backend::Process, Options::default()).await?;
    let endpoints: Vec<String> = (1..=3).map(|i| cluster.nodes[&i].client_addr.to_string()).collect();
    let client = keel_client::Client::connect(endpoints, keel_client::ClientConfig::default()).await?;
    for round in 0..20 {
        let id = cluster.start_joiner().await?;
        let out = keelctl_member_add(&cluster, id, &["--catch-up-timeout", "30s"]).await?;
        assert_eq!(out.status.code(), Some(0), "round {round}: {}", describe(&out));
        assert!(
            roles(&out).contains(&(id, "voter".to_string())),
            "round {round}: member {id} is not a voter: {}",
            describe(&out)
        );
        client.member_remove(id, false).await?;
        cluster.kill(id).await?;
        cluster.forget(id);
    }
    cluster.shutdown().await
}

/// A member that never acknowledges anything (here: nothing listens at its address) is added as
/// a learner and not promoted: keelctl says so plainly, with exit code 4, and prints the
/// membership. Running the same command again, once the member is up, finishes the job.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keelctl_member_add_says_when_it_added_a_learner_but_did_not_promote_it() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(Backend::InProcess, Options::default()).await?;
    let id = cluster.start_joiner().await?;
    // Its addresses, kept while it is down.
    cluster.kill(id).await?;
    let out = keelctl_member_add(&cluster, id, &["--catch-up-timeout", "1s"]).await?;
    assert_eq!(out.status.code(), Some(4), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("has not acknowledged"),
        "no progress: {}",
        describe(&out)
    );
    let last = stderr.trim_end().lines().last().unwrap_or("");
    assert!(
        last.starts_with(&format!("added as learner {id}; not promoted: ")),
        "{}",
        describe(&out)
    );
    assert!(roles(&out).contains(&(id, "learner".to_string())), "{}", describe(&out));

    cluster.restart(id).await?;
    let out = keelctl_member_add(&cluster, id, &["--catch-up-timeout", "30s"]).await?;
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(roles(&out).contains(&(id, "voter".to_string())), "{}", describe(&out));
    cluster.shutdown().await
}

/// A membership change answers with the membership after it, whichever member was asked: a
/// follower that forwarded the change may not have received the entry yet when the leader
/// answers. (It did answer without the new member, about one time in seven.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_membership_change_answers_with_the_membership_after_it() -> anyhow::Result<()> {
    let cluster = Cluster::start(Backend::InProcess, Options::default()).await?;
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await?;
    let followers: Vec<u64> = cluster.nodes.keys().copied().filter(|id| *id != leader).collect();
    for round in 0..20u64 {
        let asked = followers[round as usize % followers.len()];
        let id = 100 + round;
        // Nothing listens there; a learner need not answer to be added.
        let nobody = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let added = cluster
            .cluster_client(asked)
            .member_add(MemberAddRequest {
                id,
                peer_addr: nobody.to_string(),
                client_addr: String::new(),
            })
            .await?
            .into_inner();
        assert!(
            added.members.iter().any(|m| m.id == id && m.is_learner),
            "round {round}: member {asked} answered the addition of {id} with {:?}",
            added.members
        );
        let removed = cluster
            .cluster_client(asked)
            .member_remove(MemberRemoveRequest { id, force: false })
            .await?
            .into_inner();
        assert!(
            !removed.members.iter().any(|m| m.id == id),
            "round {round}: member {asked} answered the removal of {id} with {:?}",
            removed.members
        );
    }
    cluster.shutdown().await
}

/// A voter change takes two entries (a joint configuration, then the final one). Another change
/// landing between them (an operator's, or a member publishing its addresses after an election)
/// made openraft refuse the second step ("last membership log id mismatch"), failing the
/// operator's removal and leaving the joint configuration in place. The leader takes changes one
/// at a time: here learners come and go as fast as they can while two voters are removed, and
/// every change succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_voter_change_is_not_split_by_another_change() -> anyhow::Result<()> {
    let cluster = Cluster::start(
        Backend::InProcess,
        Options {
            nodes: 5,
            ..Default::default()
        },
    )
    .await?;
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await?;
    let others: Vec<u64> = cluster.nodes.keys().copied().filter(|id| *id != leader).collect();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let churn = |first: u64| {
        let mut c = cluster.cluster_client(leader);
        let stop = stop.clone();
        async move {
            let mut changes = 0u32;
            // Nothing listens on these ports: the learners never catch up, and need not.
            for id in first..first + 1000 {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                c.member_add(MemberAddRequest {
                    id,
                    peer_addr: format!("127.0.0.1:{}", id),
                    client_addr: String::new(),
                })
                .await
                .map_err(|e| anyhow::anyhow!("adding learner {id}: {e}"))?;
                c.member_remove(MemberRemoveRequest { id, force: false })
                    .await
                    .map_err(|e| anyhow::anyhow!("removing learner {id}: {e}"))?;
                changes += 2;
            }
            anyhow::Ok(changes)
        }
    };
    let removals = async {
        let mut c = cluster.cluster_client(leader);
        let mut result = Ok(());
        for id in &others[..2] {
            if let Err(e) = c.member_remove(MemberRemoveRequest { id: *id, force: false }).await {
                result = Err(anyhow::anyhow!("removing voter {id}: {e}"));
                break;
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        result
    };
    let mut churners = tokio::task::JoinSet::new();
    for i in 0..16 {
        churners.spawn(churn(100 + 1000 * i));
    }
    removals.await?;
    let mut changes = 0;
    for c in churners.join_all().await {
        changes += c?;
    }
    assert!(changes > 0, "the learner churn made no change");
    let members = cluster
        .cluster_client(leader)
        .member_list(MemberListRequest {})
        .await?
        .into_inner()
        .members;
    let voters: Vec<u64> = members.iter().filter(|m| !m.is_learner).map(|m| m.id).collect();
    assert_eq!(voters.len(), 3, "{members:?}");
    assert!(members.iter().all(|m| !others[..2].contains(&m.id)), "{members:?}");
    cluster.kv(leader).put(put("after")).await?;
    cluster.shutdown().await
}
