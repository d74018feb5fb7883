//! keel-bench's coordination workloads (issue 15, item 6) against a cluster of real processes:
//! what they report is what happened. Their speed is not asserted here (scripts/bench-vs-etcd.sh
//! measures it); these check that every watcher saw every acknowledged put and the serving
//! member's memory was read, that lease churn leaves no lease and no key behind, and that the
//! lock workload hands one lock around without an error and cleans up after itself.

use std::process::{Command, Output};
use std::time::Duration;

use keel_proto::v1::lease_client::LeaseClient;
use keel_proto::v1::{LeaseLeasesRequest, RangeRequest};
use keel_testkit::{Backend, Cluster, Options};

/// Run keel-bench against `endpoints`.
async fn run(endpoints: &str, args: &[&str]) -> anyhow::Result<Output> {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_keel-bench"));
    cmd.args(["--system", "keel", "--endpoints", endpoints]).args(args);
    Ok(tokio::task::spawn_blocking(move || cmd.output()).await??)
}

/// Run keel-bench; whether it succeeded, and its last line (one JSON object).
async fn bench(endpoints: &str, args: &[&str]) -> anyhow::Result<(bool, serde_json::Value)> {
    let out = run(endpoints, args).await?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stdout.lines().last().unwrap_or_default();
    let doc = serde_json::from_str(last).map_err(|e| anyhow::anyhow!("{e}: stdout {stdout:?}, stderr {stderr:?}"))?;
    Ok((out.status.success(), doc))
}

/// How many keys start with `prefix`, as node `id` sees them.
async fn count(cluster: &Cluster, id: u64, prefix: &[u8]) -> anyhow::Result<u64> {
    let mut end = prefix.to_vec();
    *end.last_mut().expect("a prefix") += 1;
    let resp = cluster
        .kv(id)
        .range(RangeRequest {
            key: prefix.to_vec(),
            range_end: end,
            count_only: true,
            ..Default::default()
        })
        .await?
        .into_inner();
    Ok(resp.count)
}

/// Node `id` knows of no lease.
async fn assert_no_leases(cluster: &Cluster, id: u64) -> anyhow::Result<()> {
    let leases = LeaseClient::new(cluster.channel(id))
        .leases(LeaseLeasesRequest {})
        .await?
        .into_inner();
    assert!(leases.leases.is_empty(), "{:?}", leases.leases);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_coordination_benchmarks_report_what_happened() -> anyhow::Result<()> {
    let cluster = Cluster::start(Backend::Process, Options::default()).await?;
    let leader = cluster.wait_for_leader(Duration::from_secs(20)).await?;
    let endpoints = cluster.endpoints().join(",");
    let ids: Vec<u64> = cluster.nodes.keys().copied().collect();
    let pids: Vec<String> = ids
        .iter()
        .map(|&id| cluster.pid(id).expect("a process").to_string())
        .collect();

    // Watch fan-out: 20 watchers, 100 puts a second for 2 s. Every watcher sees every put.
    let (ok, doc) = bench(
        &endpoints,
        &[
            "watch",
            "--watchers",
            "20",
            "--conns",
            "3",
            "--rate",
            "100",
            "--duration",
            "2s",
            "--pids",
            &pids.join(","),
        ],
    )
    .await?;
    assert!(ok, "{doc}");
    assert_eq!(doc["put_errors"], 0, "{doc}");
    assert_eq!(doc["puts"], 200, "{doc}");
    assert_eq!(doc["events"], 20 * 200, "{doc}");
    assert_eq!(doc["missing"], 0, "{doc}");
    let serving = doc["serving"].as_str().expect("serving");
    assert_ne!(
        serving,
        cluster.nodes[&leader].client_addr.to_string(),
        "a follower serves: {doc}"
    );
    assert!(doc["rss_mib_watching"].as_f64().is_some_and(|m| m > 1.0), "{doc}");
    assert!(
        doc["rss_mib_peak"].as_f64() >= doc["rss_mib_watching"].as_f64(),
        "{doc}"
    );
    assert!(doc["p50_ms"].as_f64().is_some_and(|ms| ms > 0.0), "{doc}");
    // The puts went to 200 keys under the prefix (keys cycle over 1,000).
    assert_eq!(count(&cluster, leader, b"bench-watch/").await?, 200);

    // A --pids that does not match the endpoints is refused before anything runs.
    let out = run(&endpoints, &["watch", "--pids", "1,2"]).await?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("--pids: 2 given for 3 endpoints"), "{stderr}");

    // Lease churn: 60 rounds of grant + put + revoke, none failed; no lease and no key left.
    let (ok, doc) = bench(
        &endpoints,
        &[
            "lease",
            "--clients",
            "4",
            "--ops",
            "60",
            "--keys",
            "1000",
            "--duration",
            "60s",
        ],
    )
    .await?;
    assert!(ok, "{doc}");
    assert_eq!(
        (doc["ops"].as_u64(), doc["errors"].as_u64()),
        (Some(60), Some(0)),
        "{doc}"
    );
    assert_no_leases(&cluster, leader).await?;
    // The churned keys are 8-digit numbers below 1,000: revoking each lease deleted its key.
    assert_eq!(count(&cluster, leader, b"00000").await?, 0);

    // Lock hand-off: 4 clients, 40 rounds of lock + unlock of one lock; the queue is empty after
    // and the clients' leases are revoked.
    let (ok, doc) = bench(
        &endpoints,
        &["lock", "--clients", "4", "--ops", "40", "--duration", "60s"],
    )
    .await?;
    assert!(ok, "{doc}");
    assert_eq!(
        (doc["ops"].as_u64(), doc["errors"].as_u64()),
        (Some(40), Some(0)),
        "{doc}"
    );
    assert_eq!(count(&cluster, leader, b"bench-lock/").await?, 0);
    assert_no_leases(&cluster, leader).await?;
    cluster.shutdown().await
}
