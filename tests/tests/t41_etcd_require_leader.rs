//! etcd's `hasleader` metadata (the Go client's `WithRequireLeader`, on every Kubernetes watch):
//! a member cut off from the others refuses such requests with "etcdserver: no leader", and ends
//! such Watch and LeaseKeepAlive streams with it, where without the metadata a serializable read
//! still answers and a watch would wait in silence.

use std::time::Duration;

use keel_proto::etcd::etcdserverpb as pb;
use keel_proto::etcd::etcdserverpb::{
    kv_client::KvClient, lease_client::LeaseClient, watch_client::WatchClient, watch_request,
};
use keel_testkit::{Backend, Cluster, Options};
use tonic::Code;

const LIMIT: Duration = Duration::from_secs(20);
const NO_LEADER: &str = "etcdserver: no leader";

/// `msg` with the metadata etcd's clients send to require a leader.
fn leader_required<T>(msg: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut().insert("hasleader", "true".parse().expect("ascii"));
    req
}

fn serializable(key: &str) -> pb::RangeRequest {
    pb::RangeRequest {
        key: key.into(),
        serializable: true,
        ..Default::default()
    }
}

fn watch_create(key: &str) -> pb::WatchRequest {
    pb::WatchRequest {
        request_union: Some(watch_request::RequestUnion::CreateRequest(pb::WatchCreateRequest {
            key: key.into(),
            ..Default::default()
        })),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_without_a_leader_refuses_and_ends_streams_that_require_one() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(Backend::InProcess, Options::default()).await?;
    let leader = cluster.wait_for_leader(LIMIT).await?;
    let ids: Vec<u64> = cluster.nodes.keys().copied().collect();
    let alone = *ids.iter().find(|id| **id != leader).expect("a follower");
    let mut kv = KvClient::new(cluster.channel(alone));
    kv.put(pb::PutRequest {
        key: "hl/a".into(),
        value: "1".into(),
        ..Default::default()
    })
    .await?;

    // With a leader, the metadata changes nothing. (A linearizable read, so that this member has
    // applied the put before the serializable reads below.)
    let linearizable = pb::RangeRequest {
        serializable: false,
        ..serializable("hl/a")
    };
    let read = kv.range(leader_required(linearizable)).await?.into_inner();
    assert_eq!(read.kvs.len(), 1);
    let read = kv.range(leader_required(serializable("hl/a"))).await?.into_inner();
    assert_eq!(read.kvs.len(), 1);
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tx.send(watch_create("hl/"))?;
    let mut watch = WatchClient::new(cluster.channel(alone))
        .watch(leader_required(tokio_stream::wrappers::UnboundedReceiverStream::new(
            rx,
        )))
        .await?
        .into_inner();
    let created = tokio::time::timeout(LIMIT, watch.message()).await??.expect("created");
    assert!(created.created && !created.canceled, "{created:?}");
    let mut leases = LeaseClient::new(cluster.channel(alone));
    let lease = leases
        .lease_grant(pb::LeaseGrantRequest { ttl: 60, id: 0 })
        .await?
        .into_inner();
    let (ktx, krx) = tokio::sync::mpsc::unbounded_channel();
    ktx.send(pb::LeaseKeepAliveRequest { id: lease.id })?;
    let mut kept = leases
        .lease_keep_alive(leader_required(tokio_stream::wrappers::UnboundedReceiverStream::new(
            krx,
        )))
        .await?
        .into_inner();
    let first = tokio::time::timeout(LIMIT, kept.message()).await??.expect("a renewal");
    assert_eq!((first.id, first.ttl), (lease.id, 60));

    // Cut the member off: the other two stop.
    for id in ids.iter().filter(|id| **id != alone) {
        cluster.kill(*id).await?;
    }

    // Both streams end with etcd's error (bounded wait: a few election timeouts are expected).
    let ended = tokio::time::timeout(LIMIT, async {
        loop {
            match watch.message().await {
                Ok(Some(r)) => assert!(r.events.is_empty(), "events from a cut-off member: {r:?}"),
                other => break other,
            }
        }
    })
    .await?;
    let e = ended.expect_err("the watch ended with an error");
    assert_eq!((e.code(), e.message()), (Code::Unavailable, NO_LEADER));
    let ended = tokio::time::timeout(LIMIT, async {
        loop {
            match kept.message().await {
                Ok(Some(_)) => {}
                other => break other,
            }
        }
    })
    .await?;
    let e = ended.expect_err("the keep-alive stream ended with an error");
    assert_eq!((e.code(), e.message()), (Code::Unavailable, NO_LEADER));

    // Requests that require a leader are refused, streams at their opening; without the
    // metadata, a serializable read still answers from the member's own state.
    let e = kv
        .range(leader_required(serializable("hl/a")))
        .await
        .expect_err("refused");
    assert_eq!((e.code(), e.message()), (Code::Unavailable, NO_LEADER));
    let (_tx2, rx2) = tokio::sync::mpsc::unbounded_channel::<pb::WatchRequest>();
    let e = WatchClient::new(cluster.channel(alone))
        .watch(leader_required(tokio_stream::wrappers::UnboundedReceiverStream::new(
            rx2,
        )))
        .await
        .expect_err("refused");
    assert_eq!((e.code(), e.message()), (Code::Unavailable, NO_LEADER));
    let read = kv.range(serializable("hl/a")).await?.into_inner();
    assert_eq!(read.kvs.len(), 1);
    drop((tx, ktx));
    cluster.shutdown().await
}
