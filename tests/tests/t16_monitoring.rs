//! Monitoring: every member serves Prometheus metrics, /livez and /readyz on `--metrics-addr`.
//! The text is parsed with a Prometheus parser; the key series exist and move with the load.
//! /readyz is 503 on a member cut off from the majority and on a learner, 200 on healthy members.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

mod common;

use common::{http_get, put};
use keel_proto::v1::MemberAddRequest;
use keel_storage::NodeId;
use keel_testkit::{Backend, Cluster, Options};

/// Every sample of a scrape, by metric name and labels rendered as `k=v,...`.
async fn scrape(cluster: &Cluster, id: NodeId) -> anyhow::Result<BTreeMap<String, f64>> {
    let (code, body) = http_get(cluster.nodes[&id].metrics_addr, "/metrics").await?;
    anyhow::ensure!(code == 200, "/metrics answered {code}");
    let lines = body.lines().map(|l| Ok(l.to_string()));
    let parsed = prometheus_parse::Scrape::parse(lines)?;
    let mut out = BTreeMap::new();
    for s in parsed.samples {
        let value = match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            prometheus_parse::Value::Histogram(h) => h.iter().map(|b| b.count).fold(0.0, f64::max),
            prometheus_parse::Value::Summary(_) => continue,
        };
        let mut labels: Vec<String> = s
            .labels
            .iter()
            .filter(|(k, _)| k.as_str() != "member")
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        labels.sort();
        let key = if labels.is_empty() {
            s.metric.clone()
        } else {
            format!("{}{{{}}}", s.metric, labels.join(","))
        };
        out.insert(key, value);
    }
    Ok(out)
}

async fn ready(cluster: &Cluster, id: NodeId) -> anyhow::Result<(bool, String)> {
    let (code, body) = http_get(cluster.nodes[&id].metrics_addr, "/readyz").await?;
    Ok((code == 200, body))
}

/// Wait until /readyz of `id` says `want`.
async fn wait_ready(cluster: &Cluster, id: NodeId, want: bool) -> anyhow::Result<String> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (is, body) = ready(cluster, id).await?;
        if is == want {
            return Ok(body);
        }
        anyhow::ensure!(Instant::now() < deadline, "node {id}: /readyz stayed {body:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_exist_and_move_with_the_load() -> anyhow::Result<()> {
    let cluster = Cluster::start(Backend::Process, Options::default()).await?;
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await?;
    let before = scrape(&cluster, leader).await?;
    for name in [
        "keel_raft_term",
        "keel_is_leader",
        "keel_raft_commit_index",
        "keel_raft_applied_index",
        "keel_raft_last_log_index",
        "keel_db_size_bytes",
        "keel_keys",
        "keel_proposals_committed_total",
        "keel_log_syncs_total",
        "keel_log_sync_seconds_total",
        "keel_log_synced_requests_total",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
    ] {
        assert!(before.contains_key(name), "{name} missing: {:?}", before.keys());
    }
    assert!(before["keel_raft_term"] >= 1.0);
    let followers: Vec<NodeId> = cluster.nodes.keys().copied().filter(|id| *id != leader).collect();
    for f in &followers {
        assert!(before.contains_key(&format!("keel_raft_replication_lag_entries{{follower={f}}}")));
    }
    let mut leaders = 0.0;
    for id in cluster.nodes.keys() {
        leaders += scrape(&cluster, *id).await?["keel_is_leader"];
    }
    assert_eq!(leaders, 1.0, "exactly one member reports itself leader");

    let mut kv = cluster.kv(leader);
    for i in 0..20 {
        kv.put(put(&format!("m{i}"))).await?;
    }
    let after = scrape(&cluster, leader).await?;
    assert!(after["keel_raft_applied_index"] >= before["keel_raft_applied_index"] + 20.0);
    assert!(after["keel_raft_commit_index"] >= before["keel_raft_commit_index"] + 20.0);
    assert!(after["keel_proposals_committed_total"] >= before["keel_proposals_committed_total"] + 20.0);
    assert_eq!(after["keel_keys"], before["keel_keys"] + 20.0);
    // Each acknowledged write waited for a log sync on the leader.
    assert!(after["keel_log_syncs_total"] > before["keel_log_syncs_total"]);
    assert!(after["keel_log_synced_requests_total"] >= before["keel_log_synced_requests_total"] + 20.0);
    let puts = "keel_grpc_requests_total{code=Ok,method=Put,service=keel.v1.KV}";
    assert!(after.get(puts).copied().unwrap_or(0.0) >= 20.0, "{:?}", after.get(puts));
    assert!(after.contains_key("keel_grpc_request_duration_seconds_count{method=Put,service=keel.v1.KV}"));
    // A refused request is counted under its code.
    let bad = kv.put(put("")).await.expect_err("empty key");
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    let after_bad = scrape(&cluster, leader).await?;
    assert_eq!(
        after_bad.get("keel_grpc_requests_total{code=InvalidArgument,method=Put,service=keel.v1.KV}"),
        Some(&1.0)
    );
    for id in cluster.nodes.keys() {
        let (code, body) = http_get(cluster.nodes[id].metrics_addr, "/livez").await?;
        assert_eq!((code, body.as_str()), (200, "ok\n"));
        assert!(ready(&cluster, *id).await?.0);
    }
    cluster.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readiness_is_false_on_a_cut_off_member_and_on_a_learner() -> anyhow::Result<()> {
    let options = Options {
        network: Some(3),
        ..Options::default()
    };
    let mut cluster = Cluster::start(Backend::Process, options).await?;
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await?;
    let cut = *cluster.nodes.keys().find(|id| **id != leader).expect("a follower");
    let rest: Vec<NodeId> = cluster.nodes.keys().copied().filter(|id| *id != cut).collect();
    cluster.net().expect("network").partition(&[vec![cut], rest.clone()]);
    let why = wait_ready(&cluster, cut, false).await?;
    assert!(why.contains("not ready"), "{why}");
    for id in &rest {
        assert!(ready(&cluster, *id).await?.0, "majority member {id} not ready");
    }
    cluster.net().expect("network").heal();
    wait_ready(&cluster, cut, true).await?;

    // A learner is not ready until it is promoted.
    let learner = cluster.start_joiner().await?;
    let node = &cluster.nodes[&learner];
    cluster
        .cluster_client(leader)
        .member_add(MemberAddRequest {
            id: learner,
            peer_addr: node.peer_addr.to_string(),
            client_addr: node.client_addr.to_string(),
        })
        .await?;
    let applied = cluster.status(leader).await.expect("status").applied_index;
    cluster.wait_applied(learner, applied, Duration::from_secs(20)).await?;
    let (is, why) = ready(&cluster, learner).await?;
    assert!(!is && why.contains("learner"), "{why}");
    cluster.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_leader_takes_verified_scheduled_backups_and_prunes_them() -> anyhow::Result<()> {
    let backups = tempfile::tempdir()?;
    let options = Options {
        flags: vec![
            "--backup-dir".into(),
            backups.path().display().to_string(),
            "--backup-interval".into(),
            "1s".into(),
            "--backup-retain".into(),
            "2".into(),
        ],
        ..Options::default()
    };
    let cluster = Cluster::start(Backend::Process, options).await?;
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await?;
    cluster.kv(leader).put(put("backed-up")).await?;
    let ok = "keel_backups_total{result=ok}";
    let deadline = Instant::now() + Duration::from_secs(30);
    let metrics = loop {
        let m = scrape(&cluster, leader).await?;
        if m.get(ok).copied().unwrap_or(0.0) >= 3.0 {
            break m;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "fewer than 3 backups in 30 s: {:?}",
            m.get(ok)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(metrics["keel_backup_last_success_timestamp_seconds"] > 1.6e9);
    assert!(metrics["keel_backup_size_bytes"] > 0.0);
    // Followers take none.
    for id in cluster.nodes.keys().filter(|id| **id != leader) {
        let m = scrape(&cluster, *id).await?;
        assert_eq!(m.get(ok).copied().unwrap_or(0.0), 0.0, "follower {id} took a backup");
    }
    // Only the newest two are kept (pruning precedes the count), each complete and verifiable.
    // A later one may be in progress as .tmp; it is not a backup until renamed, and a third
    // renamed one may appear before its own pruning, so at most three.
    let files: Vec<std::path::PathBuf> = std::fs::read_dir(backups.path())?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    let snaps: Vec<&std::path::PathBuf> = files
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "snap"))
        .collect();
    assert!((2..=3).contains(&snaps.len()), "{files:?}");
    for snap in snaps {
        let out = std::process::Command::new(keel_testkit::keelctl_binary()?)
            .args(["-o", "json", "snapshot", "inspect"])
            .arg(snap)
            .output()?;
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        assert!(doc["revision"].as_u64().is_some_and(|r| r >= 1), "{doc}");
    }
    cluster.shutdown().await
}

/// Calls to paths that name no gRPC method are counted under one `unknown` label: a label per
/// made-up path would let any client grow the metrics without bound (sweep of issue 11.11).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn made_up_grpc_paths_do_not_grow_the_metrics() -> anyhow::Result<()> {
    use keel_proto::v1::{RangeRequest, RangeResponse};
    let cluster = Cluster::start(Backend::InProcess, Options::default()).await?;
    let id = cluster.wait_for_leader(Duration::from_secs(10)).await?;
    let mut grpc = tonic::client::Grpc::new(cluster.channel(id));
    for i in 0..20 {
        grpc.ready().await?;
        let path: tonic::codegen::http::uri::PathAndQuery = format!("/made.up.Service{i}/Method{i}").parse()?;
        let codec = tonic_prost::ProstCodec::<RangeRequest, RangeResponse>::default();
        let status = grpc
            .unary(tonic::Request::new(RangeRequest::default()), path, codec)
            .await
            .expect_err("no such method");
        assert_eq!(status.code(), tonic::Code::Unimplemented);
    }
    let metrics = scrape(&cluster, id).await?;
    let made_up: Vec<_> = metrics.keys().filter(|k| k.contains("made.up")).collect();
    assert!(made_up.is_empty(), "series per made-up path: {made_up:?}");
    let unknown = metrics
        .iter()
        .filter(|(k, _)| k.starts_with("keel_grpc_requests_total") && k.contains("service=unknown"))
        .map(|(_, v)| *v)
        .sum::<f64>();
    assert_eq!(unknown, 20.0, "the calls are counted under unknown");
    cluster.shutdown().await
}
