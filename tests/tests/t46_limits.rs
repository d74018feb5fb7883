//! Limits against abuse (issue 17, item 3) that t44 does not cover: calls in progress on one
//! client connection (`--max-concurrent-streams`) and leases per user (`--max-leases-per-user`).
//! Each refusal is ResourceExhausted with a message naming the limit, and is counted in
//! `keel_limit_refusals_total{limit}`; each limit frees its places again.

use std::time::Duration;

mod common;

use keel_proto::etcd::etcdserverpb as pb;
use keel_proto::etcd::etcdserverpb::{
    auth_client::AuthClient, kv_client::KvClient, lease_client::LeaseClient, watch_client::WatchClient,
};
use keel_testkit::{Backend, Cluster, Options};
use tonic::transport::Channel;
use tonic::Code;

const LIMIT: Duration = Duration::from_secs(20);

/// The member's count of refusals by `limit`.
async fn refusals(cluster: &Cluster, id: u64, limit: &str) -> anyhow::Result<u64> {
    let (status, text) = common::http_get(cluster.nodes[&id].metrics_addr, "/metrics").await?;
    anyhow::ensure!(status == 200, "/metrics: {status}");
    let label = format!("limit=\"{limit}\"");
    Ok(text
        .lines()
        .filter(|l| l.starts_with("keel_limit_refusals_total{") && l.contains(&label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum())
}

fn range() -> pb::RangeRequest {
    pb::RangeRequest {
        key: b"k".to_vec(),
        ..Default::default()
    }
}

/// A watch stream on `channel`, held open until the returned sender is dropped.
async fn open_watch(
    channel: Channel,
) -> anyhow::Result<(
    tokio::sync::mpsc::Sender<pb::WatchRequest>,
    tonic::Streaming<pb::WatchResponse>,
)> {
    use pb::watch_request::RequestUnion;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(pb::WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(pb::WatchCreateRequest {
            key: b"w".to_vec(),
            ..Default::default()
        })),
    })
    .await?;
    let mut events = WatchClient::new(channel)
        .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    let created = tokio::time::timeout(LIMIT, events.message()).await??;
    assert!(created.is_some_and(|r| r.created), "the watch was created");
    Ok((tx, events))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn calls_in_progress_on_one_connection_are_bounded() -> anyhow::Result<()> {
    let options = Options {
        nodes: 1,
        flags: vec!["--max-concurrent-streams".into(), "3".into()],
        ..Default::default()
    };
    let cluster = Cluster::start(Backend::InProcess, options).await?;
    let id = cluster.wait_for_leader(LIMIT).await?;
    // One connection (clones of a channel share it), three watches on it: its limit.
    let conn = cluster.channel(id);
    let mut watches = Vec::new();
    for _ in 0..3 {
        watches.push(open_watch(conn.clone()).await?);
    }
    let before = refusals(&cluster, id, "streams_per_connection").await?;
    let over = KvClient::new(conn.clone()).range(range()).await;
    let status = over.expect_err("a fourth call on the connection");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("--max-concurrent-streams"), "{status:?}");
    assert_eq!(
        refusals(&cluster, id, "streams_per_connection").await?,
        before + 1,
        "the refusal is counted"
    );
    // Another connection has its own places.
    KvClient::new(cluster.channel(id)).range(range()).await?;
    // A watch that ends frees its place: the first connection serves again.
    drop(watches.pop());
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        match KvClient::new(conn.clone()).range(range()).await {
            Ok(_) => break,
            Err(s) if s.code() == Code::ResourceExhausted && tokio::time::Instant::now() < deadline => {
                // The server learns of the ended stream when the client's reset arrives.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(s) => panic!("the freed place was not given back: {s:?}"),
        }
    }
    drop(watches);
    cluster.shutdown().await
}

/// root and `app` (read-write on `app/`), auth enabled; their tokens.
async fn users(channel: Channel) -> anyhow::Result<(String, String)> {
    let mut auth = AuthClient::new(channel);
    for (name, password) in [("root", "rootpw"), ("app", "apppw")] {
        auth.user_add(pb::AuthUserAddRequest {
            name: name.into(),
            password: password.into(),
            ..Default::default()
        })
        .await?;
    }
    auth.role_add(pb::AuthRoleAddRequest { name: "app".into() }).await?;
    auth.role_grant_permission(pb::AuthRoleGrantPermissionRequest {
        name: "app".into(),
        perm: Some(keel_proto::etcd::authpb::Permission {
            perm_type: keel_proto::etcd::authpb::permission::Type::Readwrite as i32,
            key: b"app/".to_vec(),
            range_end: b"app0".to_vec(),
        }),
    })
    .await?;
    for (user, role) in [("root", "root"), ("app", "app")] {
        auth.user_grant_role(pb::AuthUserGrantRoleRequest {
            user: user.into(),
            role: role.into(),
        })
        .await?;
    }
    auth.auth_enable(pb::AuthEnableRequest {}).await?;
    let mut token = async |name: &str, password: &str| -> anyhow::Result<String> {
        let r = auth
            .authenticate(pb::AuthenticateRequest {
                name: name.into(),
                password: password.into(),
            })
            .await?;
        Ok(r.into_inner().token)
    };
    Ok((token("root", "rootpw").await?, token("app", "apppw").await?))
}

fn with_token<T>(msg: T, token: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert("token", token.parse().expect("ascii token"));
    r
}

/// `--max-leases-per-user`: counted by the leases each user granted, which every member knows
/// (the owner is replicated), so a follower refuses the grant over the limit as the leader does.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_users_leases_are_bounded_on_every_member() -> anyhow::Result<()> {
    let options = Options {
        flags: vec!["--max-leases-per-user".into(), "2".into()],
        ..Default::default()
    };
    let cluster = Cluster::start(Backend::InProcess, options).await?;
    let leader = cluster.wait_for_leader(LIMIT).await?;
    let follower = *cluster.nodes.keys().find(|id| **id != leader).expect("a follower");
    let (root, app) = users(cluster.channel(leader)).await?;
    let grant = |token: &str| with_token(pb::LeaseGrantRequest { ttl: 60, id: 0 }, token);
    let mut at_leader = LeaseClient::new(cluster.channel(leader));
    let mut at_follower = LeaseClient::new(cluster.channel(follower));
    let first = at_leader.lease_grant(grant(&app)).await?.into_inner().id;
    at_follower.lease_grant(grant(&app)).await?;
    // A linearizable read through the follower: it has applied both grants once it answers.
    let read = pb::RangeRequest {
        key: b"app/x".to_vec(),
        ..Default::default()
    };
    KvClient::new(cluster.channel(follower))
        .range(with_token(read, &app))
        .await?;
    for (client, member) in [(&mut at_leader, leader), (&mut at_follower, follower)] {
        let status = client
            .lease_grant(grant(&app))
            .await
            .expect_err("a third lease for app");
        assert_eq!(status.code(), Code::ResourceExhausted, "member {member}: {status:?}");
        assert_eq!(status.message(), "etcdserver: too many requests", "member {member}");
        assert_eq!(refusals(&cluster, member, "leases_per_user").await?, 1, "counted");
    }
    // Other users are not held to app's leases.
    at_leader.lease_grant(grant(&root)).await?;
    // A revoked lease frees its place.
    at_leader
        .lease_revoke(with_token(pb::LeaseRevokeRequest { id: first }, &app))
        .await?;
    at_leader.lease_grant(grant(&app)).await?;
    cluster.shutdown().await
}
