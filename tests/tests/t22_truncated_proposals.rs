//! A write that reached a leader's log and was then overwritten there (the leader lost its
//! leadership before the entry committed) has an unknown outcome: with five or more voters
//! another member may still hold the entry and a later leader may commit it. Its caller must be
//! told Unknown, never Unavailable ("surely not applied"), and the write must not be proposed
//! again on the next leader behind the caller's back.
//!
//! openraft answers such a proposal with ForwardToLeader, the same answer as for a proposal
//! refused because the node was not leader; keel tells the two apart by whether this member's
//! log store appended anything between the proposal and the answer.
//!
//! The setup is the first half of the double apply: leader A and follower D are cut off from
//! B, C and E; a write sent to D is forwarded to A, which appends it and replicates it to D
//! (two of five: it cannot commit). B, C and E elect a leader, whose first entry overwrites the
//! write on A and D when the network heals. (In the full scenario the new leader's entry reaches
//! A only, the new leader dies, and D wins with C and E and commits the write; that needs a
//! vote to reach C and E while the leader's next message does not, which link faults cannot
//! separate.)

use std::time::{Duration, Instant};

use keel_proto::v1::{PutRequest, RangeRequest};
use keel_storage::NodeId;
use keel_testkit::{Backend, Cluster, Options};
use tonic::Code;

fn put(key: &str, value: &str, timeout: Duration) -> tonic::Request<PutRequest> {
    let mut req = tonic::Request::new(PutRequest {
        key: key.into(),
        value: value.into(),
        prev_kv: false,
        lease: 0,
        session: None,
    });
    req.set_timeout(timeout);
    req
}

/// A linearizable read of `key` through member `id`.
async fn get(cluster: &Cluster, id: NodeId, key: &str) -> anyhow::Result<Option<Vec<u8>>> {
    let mut req = tonic::Request::new(RangeRequest {
        key: key.into(),
        ..Default::default()
    });
    req.set_timeout(Duration::from_secs(10));
    let resp = cluster.kv(id).range(req).await?.into_inner();
    Ok(resp.kvs.into_iter().next().map(|kv| kv.value))
}

/// Wait until `cond` holds, polling member statuses, for at most `timeout`.
async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut cond: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !cond().await {
        anyhow::ensure!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_write_overwritten_in_the_old_leaders_log_is_unknown_and_not_retried() -> anyhow::Result<()> {
    // Long election timeouts: the cut-off leader keeps accepting writes for 2 x 1000 ms after it
    // last heard from a quorum (plenty, even on a busy machine), and the majority waits for its
    // lease before it elects a new leader.
    let options = Options {
        nodes: 5,
        flags: vec!["--election-timeout-ms".into(), "500-1000".into()],
        network: Some(22),
        ..Options::default()
    };
    let cluster = Cluster::start(Backend::InProcess, options).await?;
    let old = cluster.wait_for_leader(Duration::from_secs(20)).await?;
    cluster
        .kv(old)
        .put(put("settled", "1", Duration::from_secs(10)))
        .await?;
    let settled = cluster.status(old).await.expect("status").last_log_index;
    for id in cluster.nodes.keys() {
        cluster.wait_applied(*id, settled, Duration::from_secs(20)).await?;
    }
    let others: Vec<NodeId> = cluster.nodes.keys().copied().filter(|id| *id != old).collect();
    let (follower, majority) = (others[0], others[1..].to_vec());
    let net = cluster.net().expect("network");
    net.partition(&[vec![old, follower], majority.clone()]);

    // Through the follower, which forwards it to the old leader.
    let mut kv = cluster.kv(follower);
    let write = tokio::spawn(async move { kv.put(put("doomed", "x", Duration::from_secs(60))).await });
    // Both cut-off members append it.
    let (c, w) = (&cluster, &write);
    wait_until(
        "the write in the old leader's and the follower's logs",
        Duration::from_secs(10),
        || async move {
            assert!(
                !w.is_finished(),
                "the cut-off leader refused the write before appending it"
            );
            let mut appended = true;
            for id in [old, follower] {
                appended &= c.status(id).await.is_some_and(|s| s.last_log_index > settled);
            }
            appended
        },
    )
    .await?;

    let new = cluster
        .wait_for_new_leader(&majority, old, Duration::from_secs(30))
        .await?;
    assert!(
        !write.is_finished(),
        "a write that cannot commit was answered: {write:?}"
    );
    net.heal();
    // The new leader's entry replaces the write in both logs.
    let result = tokio::time::timeout(Duration::from_secs(60), write).await??;
    let new_term = cluster.status(new).await.expect("status").term;
    wait_until(
        "the old leader to follow the new one",
        Duration::from_secs(20),
        || async move {
            c.status(old)
                .await
                .is_some_and(|s| s.leader_id == new && s.term == new_term)
        },
    )
    .await?;

    let status = match result {
        Ok(resp) => panic!(
            "the overwritten write was reported as done: it was proposed again on the new leader {new} behind \
             the caller's back ({resp:?})"
        ),
        Err(status) => status,
    };
    assert_eq!(
        status.code(),
        Code::Unknown,
        "a write that was appended to the old leader's log (and to a follower's) has an unknown outcome; \
         Unavailable says it surely did not apply: {status:?}"
    );
    assert!(status.message().contains("may or may not"), "{status:?}");
    // It did not apply, and nobody proposed it again.
    assert_eq!(get(&cluster, new, "doomed").await?, None);
    assert_eq!(get(&cluster, follower, "doomed").await?, None);
    cluster.shutdown().await
}
