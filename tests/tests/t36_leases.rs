//! Leases (issue 15): keys put with a lease live while the lease is kept alive, across a leader
//! change, and go, all in one revision, when the keep-alives stop (not before the last
//! acknowledged keep-alive's TTL is up, and within TTL + an election + a bounded delay after it)
//! or when the lease is revoked; unknown leases are refused with NotFound and nothing applied.

use std::time::{Duration, Instant};

mod common;

use keel_proto::v1::lease_client::LeaseClient;
use keel_proto::v1::watch_client::WatchClient;
use keel_proto::v1::{
    LeaseGrantRequest, LeaseKeepAliveRequest, LeaseLeasesRequest, LeaseRevokeRequest, LeaseTimeToLiveRequest,
    PutRequest, RangeRequest, WatchRequest,
};
use keel_testkit::{Backend, Cluster, Options};
use tonic::transport::Channel;

const TTL: i64 = 2;

fn leased_put(key: &str, lease: i64) -> PutRequest {
    PutRequest {
        key: key.into(),
        value: b"v".to_vec(),
        lease,
        ..Default::default()
    }
}

async fn exists(cluster: &Cluster, id: u64, key: &str) -> anyhow::Result<bool> {
    let resp = cluster
        .kv(id)
        .range(RangeRequest {
            key: key.into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    Ok(!resp.kvs.is_empty())
}

async fn lease_client(cluster: &Cluster, id: u64) -> LeaseClient<Channel> {
    LeaseClient::new(cluster.channel(id))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_kept_lease_outlives_a_leader_change_and_an_abandoned_one_expires_in_time() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(Backend::InProcess, Options::default()).await?;
    let leader = cluster.wait_for_leader(Duration::from_secs(20)).await?;
    let follower = *cluster.nodes.keys().find(|&&id| id != leader).expect("a follower");
    // Everything through a follower, which forwards to whichever member leads.
    let mut leases = lease_client(&cluster, follower).await;
    let granted = leases.grant(LeaseGrantRequest { ttl: TTL, id: 0 }).await?.into_inner();
    assert!(granted.id > 0);
    assert_eq!(granted.ttl, TTL);
    let mut kv = cluster.kv(follower);
    for key in ["svc/a", "svc/b"] {
        kv.put(leased_put(key, granted.id)).await?;
    }

    // Keep alive for three TTLs; stop the leader one TTL in.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut answers = leases
        .keep_alive(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    let started = Instant::now();
    let mut stopped_leader = false;
    let mut last_acked_send = started;
    while started.elapsed() < Duration::from_secs(3 * TTL as u64) {
        let sent = Instant::now();
        tx.send(LeaseKeepAliveRequest { id: granted.id }).await?;
        let answer = tokio::time::timeout(Duration::from_secs(10), answers.message())
            .await??
            .expect("an answer per keep-alive");
        assert_eq!((answer.id, answer.ttl), (granted.id, TTL), "kept alive");
        last_acked_send = sent;
        for key in ["svc/a", "svc/b"] {
            assert!(
                exists(&cluster, follower, key).await?,
                "{key} vanished while its lease was kept alive"
            );
        }
        if !stopped_leader && started.elapsed() >= Duration::from_secs(TTL as u64) {
            cluster.stop(leader).await?;
            stopped_leader = true;
        }
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    assert!(stopped_leader);
    drop(tx);

    // Abandoned: gone no sooner than TTL after the last acknowledged keep-alive was sent, and
    // within TTL + an election + a bounded delay (generous here: the machine may be busy).
    let gone_at = loop {
        if !exists(&cluster, follower, "svc/a").await? {
            break Instant::now();
        }
        assert!(
            last_acked_send.elapsed() < Duration::from_secs(TTL as u64 + 10),
            "the lease outlived its TTL by far"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        gone_at >= last_acked_send + Duration::from_secs(TTL as u64),
        "expired {:?} after the last acknowledged keep-alive, before its TTL",
        gone_at - last_acked_send
    );
    assert!(!exists(&cluster, follower, "svc/b").await?, "both keys go together");
    let ttl = leases
        .time_to_live(LeaseTimeToLiveRequest {
            id: granted.id,
            keys: true,
        })
        .await?
        .into_inner();
    assert_eq!(ttl.ttl, -1, "the lease is gone");
    cluster.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn revoke_and_unknown_leases() -> anyhow::Result<()> {
    let cluster = Cluster::start(Backend::InProcess, Options::default()).await?;
    let leader = cluster.wait_for_leader(Duration::from_secs(20)).await?;
    let mut leases = lease_client(&cluster, leader).await;
    let mut kv = cluster.kv(leader);
    // A TTL below the minimum is raised to it; a chosen id is kept.
    let granted = leases.grant(LeaseGrantRequest { ttl: 1, id: 42 }).await?.into_inner();
    assert_eq!(granted.id, 42);
    assert!(granted.ttl >= 1);
    let again = leases.grant(LeaseGrantRequest { ttl: 60, id: 42 }).await.unwrap_err();
    assert_eq!(again.code(), tonic::Code::AlreadyExists, "{again:?}");
    let long = leases.grant(LeaseGrantRequest { ttl: 600, id: 0 }).await?.into_inner();
    for key in ["a", "b", "c"] {
        kv.put(leased_put(key, long.id)).await?;
    }
    kv.put(PutRequest {
        key: b"plain".to_vec(),
        value: b"v".to_vec(),
        ..Default::default()
    })
    .await?;
    let listed = leases.leases(LeaseLeasesRequest {}).await?.into_inner();
    let mut ids: Vec<i64> = listed.leases.iter().map(|l| l.id).collect();
    ids.sort();
    let mut want = vec![42, long.id];
    want.sort();
    assert_eq!(ids, want);
    let ttl = leases
        .time_to_live(LeaseTimeToLiveRequest {
            id: long.id,
            keys: true,
        })
        .await?
        .into_inner();
    assert_eq!(ttl.granted_ttl, 600);
    assert!(ttl.ttl > 500 && ttl.ttl <= 600, "{ttl:?}");
    assert_eq!(ttl.keys, [b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]);

    // Revoke: the three keys go in one revision.
    let before = kv
        .range(RangeRequest {
            key: b"plain".to_vec(),
            ..Default::default()
        })
        .await?
        .into_inner();
    let revoked = leases.revoke(LeaseRevokeRequest { id: long.id }).await?.into_inner();
    let before_rev = before.header.unwrap().revision;
    assert_eq!(revoked.header.unwrap().revision, before_rev + 1);
    for key in ["a", "b", "c"] {
        assert!(!exists(&cluster, leader, key).await?);
    }
    assert!(exists(&cluster, leader, "plain").await?);
    let e = leases.revoke(LeaseRevokeRequest { id: long.id }).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");

    // A put naming an unknown lease: NotFound, nothing applied.
    let e = kv.put(leased_put("d", long.id)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");
    assert!(!exists(&cluster, leader, "d").await?);
    let e = kv.put(leased_put("d", -5)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    // A keep-alive of an unknown lease answers TTL 0.
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let mut answers = leases
        .keep_alive(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    tx.send(LeaseKeepAliveRequest { id: long.id }).await?;
    let answer = answers.message().await?.expect("an answer");
    assert_eq!((answer.id, answer.ttl), (long.id, 0));
    cluster.shutdown().await
}

/// keel-client's keeper keeps a lease alive while the members it talks to are killed one after
/// another (SIGKILL, then a restart), and the deadline it reports is safe: the lease's keys are
/// never gone before the last deadline reported. Once the keeper is dropped they go within TTL +
/// an election + a bounded delay.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_client_keeper_moves_between_members_and_its_deadline_holds() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(Backend::Process, Options::default()).await?;
    cluster.wait_for_leader(Duration::from_secs(20)).await?;
    let client = keel_client::Client::connect(cluster.endpoints(), keel_client::ClientConfig::default()).await?;
    let granted = client.lease_grant(TTL).await?;
    client.put_request(leased_put("svc/kept", granted.id)).await?;
    let mut keeper = client.keep_alive(granted.id);
    let (ttl, mut deadline) = keeper.started().await?;
    assert_eq!(ttl, Duration::from_secs(TTL as u64));

    // Kill whichever member leads, twice, restarting each: the keeper's stream breaks (or its
    // renewals stall on a dead leader) and it carries on at another member.
    let started = Instant::now();
    let mut killed = 0;
    while started.elapsed() < Duration::from_secs(5 * TTL as u64) {
        match keeper.state() {
            keel_client::LeaseState::Alive { deadline: d, .. } => deadline = d,
            other => panic!("the kept lease is {other:?}"),
        }
        assert!(
            client.get("svc/kept").await?.is_some(),
            "the key vanished while its lease was kept alive"
        );
        if killed < 2 && started.elapsed() >= Duration::from_secs(TTL as u64 * (2 * killed + 1)) {
            let leader = cluster.wait_for_leader(Duration::from_secs(20)).await?;
            cluster.kill(leader).await?;
            cluster.restart(leader).await?;
            killed += 1;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(killed, 2);
    if let keel_client::LeaseState::Alive { deadline: d, .. } = keeper.state() {
        deadline = d;
    }
    drop(keeper);
    let gone_at = loop {
        if client.get("svc/kept").await?.is_none() {
            break tokio::time::Instant::now();
        }
        assert!(
            tokio::time::Instant::now() < deadline + Duration::from_secs(10),
            "the abandoned lease outlived its deadline by far"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        gone_at >= deadline,
        "the lease expired {:?} before the deadline the keeper reported",
        deadline - gone_at
    );
    cluster.shutdown().await
}

/// Limits on leases and streams refuse with ResourceExhausted naming the limit, nothing done,
/// and lift once the clients hold less; a TTL past etcd's maximum is InvalidArgument. Leases,
/// renewals, expiries and keep-alive streams are in the metrics, and leases in the status.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lease_and_stream_limits_refuse_precisely_and_metrics_count() -> anyhow::Result<()> {
    let flags = [
        "--max-leases",
        "3",
        "--max-keepalive-streams",
        "2",
        "--max-watch-streams",
        "2",
    ];
    let cluster = Cluster::start(
        Backend::InProcess,
        Options {
            flags: flags.iter().map(|f| f.to_string()).collect(),
            ..Default::default()
        },
    )
    .await?;
    let leader = cluster.wait_for_leader(Duration::from_secs(20)).await?;
    let mut leases = lease_client(&cluster, leader).await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(
            leases
                .grant(LeaseGrantRequest { ttl: TTL, id: 0 })
                .await?
                .into_inner()
                .id,
        );
    }
    let full = leases.grant(LeaseGrantRequest { ttl: 60, id: 0 }).await.unwrap_err();
    assert_eq!(full.code(), tonic::Code::ResourceExhausted, "{full:?}");
    assert!(full.message().contains("--max-leases"), "{full:?}");
    let listed = leases.leases(LeaseLeasesRequest {}).await?.into_inner();
    assert_eq!(listed.leases.len(), 3, "the refused grant applied nothing");
    let too_long = leases
        .grant(LeaseGrantRequest {
            ttl: 9_000_000_001,
            id: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(too_long.code(), tonic::Code::InvalidArgument, "{too_long:?}");
    leases
        .revoke(LeaseRevokeRequest {
            id: ids.pop().expect("an id"),
        })
        .await?;
    ids.push(
        leases
            .grant(LeaseGrantRequest { ttl: TTL, id: 0 })
            .await?
            .into_inner()
            .id,
    );

    // Two keep-alive streams, each proven open by an answer; the third is refused.
    let mut streams = Vec::new();
    for id in &ids[..2] {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let mut answers = leases
            .keep_alive(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await?
            .into_inner();
        tx.send(LeaseKeepAliveRequest { id: *id }).await?;
        assert!(answers.message().await?.expect("an answer").ttl > 0);
        streams.push((tx, answers));
    }
    let (_tx3, rx3) = tokio::sync::mpsc::channel::<LeaseKeepAliveRequest>(1);
    let third = leases
        .keep_alive(tokio_stream::wrappers::ReceiverStream::new(rx3))
        .await
        .unwrap_err();
    assert_eq!(third.code(), tonic::Code::ResourceExhausted, "{third:?}");
    assert!(third.message().contains("--max-keepalive-streams"), "{third:?}");

    // The same for watch streams.
    let mut watches = Vec::new();
    for _ in 0..2 {
        let (tx, rx) = tokio::sync::mpsc::channel::<WatchRequest>(1);
        let stream = WatchClient::new(cluster.channel(leader))
            .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await?;
        watches.push((tx, stream));
    }
    let (_wtx, wrx) = tokio::sync::mpsc::channel::<WatchRequest>(1);
    let refused = WatchClient::new(cluster.channel(leader))
        .watch(tokio_stream::wrappers::ReceiverStream::new(wrx))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted, "{refused:?}");
    assert!(refused.message().contains("--max-watch-streams"), "{refused:?}");

    // The metrics count leases, keep-alive streams and renewals; the status counts leases.
    let (_, metrics) = common::http_get(cluster.nodes[&leader].metrics_addr, "/metrics").await?;
    let value = |name: &str| {
        let line = metrics.lines().find(|l| l.starts_with(&format!("{name}{{")));
        line.and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
    };
    assert_eq!(value("keel_leases"), Some(3.0), "{metrics}");
    assert_eq!(value("keel_lease_keepalive_streams"), Some(2.0), "{metrics}");
    assert_eq!(value("keel_lease_renewals_total"), Some(2.0), "{metrics}");
    assert_eq!(cluster.status(leader).await.expect("status").leases, 3);

    // Closing a stream frees its place once the member sees it close.
    drop(streams.pop());
    let freed = Instant::now();
    loop {
        let (_tx, rx) = tokio::sync::mpsc::channel::<LeaseKeepAliveRequest>(1);
        match leases.keep_alive(tokio_stream::wrappers::ReceiverStream::new(rx)).await {
            Ok(_) => break,
            Err(e) if e.code() == tonic::Code::ResourceExhausted && freed.elapsed() < Duration::from_secs(10) => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("a closed stream's place was not freed: {e:?}"),
        }
    }
    drop(streams);

    // Abandoned, the leases expire: the leader counts each expiry.
    let expired = Instant::now();
    loop {
        let (_, metrics) = common::http_get(cluster.nodes[&leader].metrics_addr, "/metrics").await?;
        let count = metrics
            .lines()
            .find(|l| l.starts_with("keel_lease_expiries_total{"))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok());
        if count == Some(3.0) {
            break;
        }
        assert!(expired.elapsed() < Duration::from_secs(20), "{count:?}: {metrics}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(cluster.status(leader).await.expect("status").leases, 0);
    drop(watches);
    cluster.shutdown().await
}
