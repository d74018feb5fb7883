//! The shipped deployment: `scripts/build-image.sh` and `deploy/compose.yaml` give a healthy
//! three-node cluster; killing the leader container leaves writes working; a container cut off
//! from the network refuses writes while the majority serves, and catches up when reconnected.
//! Then a short chaos run (kill, pause, partition through the Docker engine) against the same
//! deployment must pass the linearizability and lost-write checks.
//!
//! Needs a Docker engine and a compose tool (`docker compose` or `docker-compose`); without them
//! the test says SKIPPED and passes. The image is built from this test run's debug binaries.

use std::process::Command;
use std::time::{Duration, Instant};

use keel_testkit::chaos::{self, Fault};
use keel_testkit::compose::{compose_tool, Compose};

async fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn docker(args: &[&str]) {
    let out = Command::new("docker").args(args).output().expect("docker");
    assert!(
        out.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn compose_cluster_survives_leader_kill_partition_and_chaos() -> anyhow::Result<()> {
    let Some(tool) = compose_tool() else {
        eprintln!(
            "SKIPPED compose_cluster_survives_leader_kill_partition_and_chaos: no Docker engine or compose tool reachable"
        );
        return Ok(());
    };
    let bin_dir = keel_testkit::keel_binary()?.parent().unwrap().to_path_buf();
    let mut d = Compose::up(tool, &format!("keeltest{}", std::process::id()), &bin_dir).await?;
    let ctl = |d: &Compose, nodes: &[u64], args: &[&str]| d.keelctl(nodes, args).expect("keelctl");
    let leader = |d: &Compose| -> Option<u64> {
        let out = ctl(d, &[1, 2, 3], &["member", "list", "-o", "json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        v["leader_id"].as_u64().filter(|l| *l > 0)
    };
    assert!(ctl(&d, &[1, 2, 3], &["put", "k0", "v0"]).status.success());

    // Kill the leader's container: writes continue through the others.
    let l = leader(&d).expect("a leader");
    docker(&["kill", &d.container(l)?]);
    let others: Vec<u64> = (1..=3).filter(|n| *n != l).collect();
    wait_until("a write after killing the leader", Duration::from_secs(30), || {
        ctl(&d, &others, &["put", "k1", "v1"]).status.success()
    })
    .await;
    assert!(d.compose(&["start", &format!("node{l}")]).status()?.success());
    wait_until("the killed node back", Duration::from_secs(60), || {
        ctl(&d, &[l], &["get", "k1", "--serializable", "--print-value-only"])
            .stdout
            .starts_with(b"v1")
    })
    .await;

    // Cut one node off the network: the majority serves, the minority refuses writes.
    let cut = (1..=3).find(|n| Some(*n) != leader(&d)).expect("a follower");
    let network = format!("{}_keel", d.project);
    docker(&["network", "disconnect", &network, &d.container(cut)?]);
    let majority: Vec<u64> = (1..=3).filter(|n| *n != cut).collect();
    wait_until("a write on the majority", Duration::from_secs(30), || {
        ctl(&d, &majority, &["put", "k2", "v2"]).status.success()
    })
    .await;
    let refused = ctl(&d, &[cut], &["put", "minority", "x"]);
    assert_eq!(refused.status.code(), Some(1), "the cut-off node accepted a write");
    // Heal: it catches up.
    docker(&["network", "connect", &network, &d.container(cut)?]);
    wait_until("the cut-off node catches up", Duration::from_secs(60), || {
        ctl(&d, &[cut], &["get", "k2", "--serializable", "--print-value-only"])
            .stdout
            .starts_with(b"v2")
    })
    .await;
    let missing = ctl(&d, &[1, 2, 3], &["get", "minority", "-o", "json"]);
    assert!(
        String::from_utf8_lossy(&missing.stdout).contains("\"count\":0"),
        "the refused write applied"
    );

    // A short chaos run through the Docker engine.
    let seed = chaos::seed_from_env();
    let mut config = chaos::Config::new(seed, Duration::from_secs(30));
    config.schedule.faults = vec![Fault::Kill, Fault::Pause, Fault::Partition];
    let report = chaos::run(&mut d, &config).await?;
    println!("{report}");
    assert!(
        report.passed(),
        "docker chaos run failed (KEEL_CHAOS_SEED={seed} replays it):\n{report}"
    );
    Ok(())
}
