//! A minority cannot write or serve linearizable reads: with 2 of 3 members down, the survivor
//! answers Unavailable promptly (the write surely did not apply), yet still serves serializable
//! reads of what it has. When a second member returns, writes succeed again.
//!
//! Both ways a survivor can be left alone are covered: it was the leader (it keeps its role but
//! has lost its quorum), or it was a follower (it has no leader at all).

use std::time::{Duration, Instant};

use keel_proto::v1::{PutRequest, RangeRequest};
use keel_storage::NodeId;
use keel_testkit::{Backend, Cluster, Options};
use tonic::Code;

/// The client's deadline for requests the survivor must refuse.
const DEADLINE: Duration = Duration::from_secs(3);

/// "Well within the deadline": the server refuses on its own, it does not run into the deadline
/// (its own cut-off is at 95% of it).
const PROMPTLY: Duration = Duration::from_secs(2);

/// A leader refuses writes once it has not heard from a quorum for two election timeouts (2 × 120
/// ms by default, see keel-server's node/leader.rs); a follower gives up waiting for a leader after about
/// as long. This is that threshold plus a wide margin, counted from the kills.
const NOTICE_LOST_QUORUM: Duration = Duration::from_millis(1500);

fn put(key: &str, value: &str) -> tonic::Request<PutRequest> {
    let mut req = tonic::Request::new(PutRequest {
        key: key.into(),
        value: value.into(),
        prev_kv: false,
        lease: 0,
        session: None,
    });
    req.set_timeout(DEADLINE);
    req
}

fn range(serializable: bool) -> tonic::Request<RangeRequest> {
    let mut req = tonic::Request::new(RangeRequest {
        key: b"k".to_vec(),
        prefix: true,
        serializable,
        ..Default::default()
    });
    req.set_timeout(DEADLINE);
    req
}

/// Kill every member but `survivor`, check what it answers, then bring one member back.
async fn minority(survive_leader: bool) -> anyhow::Result<()> {
    let mut cluster = Cluster::start(Backend::Process, Options::default()).await?;
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await?;
    let survivor = if survive_leader {
        leader
    } else {
        *cluster.nodes.keys().find(|id| **id != leader).expect("a follower")
    };
    let mut kv = cluster.kv(survivor);
    for i in 0..10 {
        kv.put(put(&format!("k{i}"), &format!("v{i}"))).await?;
    }
    // The survivor has applied every write before the others go (a follower applies a little
    // after the leader answers).
    let applied = cluster.status(leader).await.expect("leader status").applied_index;
    cluster.wait_applied(survivor, applied, Duration::from_secs(5)).await?;

    let victims: Vec<NodeId> = cluster.nodes.keys().copied().filter(|id| *id != survivor).collect();
    for id in &victims {
        cluster.kill(*id).await?;
    }
    tokio::time::sleep(NOTICE_LOST_QUORUM).await;

    // A write is refused, not left hanging until the deadline.
    let started = Instant::now();
    let err = kv
        .put(put("lost", "x"))
        .await
        .expect_err("a minority must not accept a write");
    let elapsed = started.elapsed();
    assert_eq!(err.code(), Code::Unavailable, "write on member {survivor}: {err:?}");
    assert!(
        elapsed < PROMPTLY,
        "the write took {elapsed:?}, not well within the deadline"
    );
    eprintln!("write refused after {elapsed:?}: {}", err.message());

    let started = Instant::now();
    let err = kv
        .range(range(false))
        .await
        .expect_err("no linearizable read without a quorum");
    let elapsed = started.elapsed();
    assert_eq!(
        err.code(),
        Code::Unavailable,
        "linearizable read on member {survivor}: {err:?}"
    );
    assert!(
        elapsed < PROMPTLY,
        "the read took {elapsed:?}, not well within the deadline"
    );
    eprintln!("linearizable read refused after {elapsed:?}: {}", err.message());

    // Serializable reads still answer, from the survivor's own state.
    let local = kv.range(range(true)).await?.into_inner();
    let header = local.header.expect("header");
    assert_eq!((header.member_id, header.revision), (survivor, 10));
    assert_eq!(local.count, 10);
    for (i, pair) in local.kvs.iter().enumerate() {
        assert_eq!(pair.key, format!("k{i}").as_bytes());
        assert_eq!(pair.value, format!("v{i}").as_bytes());
    }

    // One member back makes a majority: writes succeed again. Until the members have found
    // each other, Unavailable (which guarantees nothing was applied) is the only acceptable
    // failure, and the write is simply sent again. (A restarted member reports the leader of its
    // persisted vote at once, so `wait_for_leader` can return before the leader has heard from it;
    // the leader's replication to it is still backing off, up to 640 ms between attempts.)
    cluster.restart(victims[0]).await?;
    cluster.wait_for_leader(Duration::from_secs(20)).await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut refused = 0;
    let resp = loop {
        match kv.put(put("back", "again")).await {
            Ok(resp) => break resp.into_inner(),
            Err(e) if e.code() == Code::Unavailable && Instant::now() < deadline => {
                refused += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => anyhow::bail!("write after the restart of member {}: {e:?}", victims[0]),
        }
    };
    eprintln!("after the restart, {refused} writes were refused before one succeeded");
    // The refused write did not apply: this is the 11th write.
    assert_eq!(resp.header.expect("header").revision, 11);
    let mut everything = range(false);
    everything.get_mut().key = Vec::new();
    let all = kv.range(everything).await?.into_inner();
    let keys: Vec<String> = all
        .kvs
        .iter()
        .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
        .collect();
    assert_eq!(
        keys,
        ["back", "k0", "k1", "k2", "k3", "k4", "k5", "k6", "k7", "k8", "k9"]
    );
    cluster.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_that_lost_its_quorum_refuses_writes_and_linearizable_reads() -> anyhow::Result<()> {
    minority(true).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_left_alone_refuses_writes_and_linearizable_reads() -> anyhow::Result<()> {
    minority(false).await
}
