//! The shipped deployment: `scripts/build-image.sh` and `deploy/compose.yaml` give a healthy
//! three-node cluster; killing the leader container leaves writes working; a container cut off
//! from the network refuses writes while the majority serves, and catches up when reconnected.
//! Then a short chaos run (kill, pause, partition through the Docker engine) against the same
//! deployment must pass the linearizability and lost-write checks. In every container keel runs
//! as uid 65532, not root, and still writes its data.
//!
//! The TLS variant (`deploy/compose.tls.yaml`, certificates from `scripts/compose-certs.sh`, client
//! certificates required) serves a write and a linearizable read to keelctl over TLS and refuses
//! plain-text clients and clients without a certificate.
//!
//! Needs a Docker engine and a compose tool (`docker compose` or `docker-compose`); without them
//! the test says SKIPPED and passes. The image is built from this test run's debug binaries.

use std::process::Command;
use std::time::{Duration, Instant};

use keel_testkit::chaos::{self, Fault};
use keel_testkit::compose::{compose_tool, Compose, Variant};

/// The tests share two cores with everything else: one deployment at a time.
static ONE_DEPLOYMENT: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// keel's uid:gid in the image (deploy/Dockerfile).
const KEEL_UID: &str = "65532";

async fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn docker(args: &[&str]) -> String {
    let out = Command::new("docker").args(args).output().expect("docker");
    assert!(
        out.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every node's container is configured to run as keel's uid, and its keel process does (as the
/// engine's host sees it: `docker top` runs ps there).
fn assert_keel_not_root(d: &Compose) -> anyhow::Result<()> {
    for n in 1..=3 {
        let id = d.container(n)?;
        let user = docker(&["inspect", "-f", "{{.Config.User}}", &id]);
        assert_eq!(
            user.trim(),
            format!("{KEEL_UID}:{KEEL_UID}"),
            "node {n}'s container user"
        );
        let top = docker(&["top", &id, "-o", "pid,uid,gid,comm"]);
        let keel: Vec<Vec<&str>> = top
            .lines()
            .skip(1)
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .filter(|cols| cols.get(3) == Some(&"keel"))
            .collect();
        assert_eq!(keel.len(), 1, "node {n}: one keel process in\n{top}");
        assert_eq!(keel[0][1..3], [KEEL_UID, KEEL_UID], "node {n}'s keel runs as\n{top}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn compose_cluster_survives_leader_kill_partition_and_chaos() -> anyhow::Result<()> {
    let Some(tool) = compose_tool() else {
        eprintln!(
            "SKIPPED compose_cluster_survives_leader_kill_partition_and_chaos: no Docker engine or compose tool reachable"
        );
        return Ok(());
    };
    let _one = ONE_DEPLOYMENT.lock().await;
    let bin_dir = keel_testkit::keel_binary()?.parent().unwrap().to_path_buf();
    let mut d = Compose::up(tool, &format!("keeltest{}", std::process::id()), &bin_dir).await?;
    let ctl = |d: &Compose, nodes: &[u64], args: &[&str]| d.keelctl(nodes, args).expect("keelctl");
    let leader = |d: &Compose| -> Option<u64> {
        let out = ctl(d, &[1, 2, 3], &["member", "list", "-o", "json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        v["leader_id"].as_u64().filter(|l| *l > 0)
    };
    assert!(ctl(&d, &[1, 2, 3], &["put", "k0", "v0"]).status.success());
    assert_keel_not_root(&d)?;

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compose_tls_cluster_serves_tls_clients_only() -> anyhow::Result<()> {
    let Some(tool) = compose_tool() else {
        eprintln!("SKIPPED compose_tls_cluster_serves_tls_clients_only: no Docker engine or compose tool reachable");
        return Ok(());
    };
    let _one = ONE_DEPLOYMENT.lock().await;
    let bin_dir = keel_testkit::keel_binary()?.parent().unwrap().to_path_buf();
    let certs = tempfile::tempdir()?;
    let variant = Variant::tls(&bin_dir, certs.path(), true)?;
    let started = Instant::now();
    let d = Compose::up_variant(tool, &format!("keeltls{}", std::process::id()), &bin_dir, variant).await?;
    println!("TLS deployment healthy after {:?}", started.elapsed());
    assert_keel_not_root(&d)?;

    let put = d.keelctl(&[1, 2, 3], &["put", "tls-key", "tls-value"])?;
    assert!(
        put.status.success(),
        "put over TLS: {}",
        String::from_utf8_lossy(&put.stderr)
    );
    // A linearizable read (keelctl's default) on each node: every one serves TLS.
    for n in 1..=3 {
        let got = d.keelctl(&[n], &["get", "tls-key", "--print-value-only"])?;
        assert!(
            got.stdout.starts_with(b"tls-value"),
            "node {n}: read over TLS: {}{}",
            String::from_utf8_lossy(&got.stdout),
            String::from_utf8_lossy(&got.stderr)
        );
    }

    // Without --cacert keelctl speaks plain text: refused. With it but no client certificate:
    // refused too, since the variant requires them.
    let keelctl = keel_testkit::keelctl_binary()?;
    let without = |args: &[&str]| {
        let mut c = Command::new(&keelctl);
        // Only the flags given here: no TLS settings from the environment.
        for k in ["KEEL_CACERT", "KEEL_CERT", "KEEL_KEY"] {
            c.env_remove(k);
        }
        c.args(args)
            .args(["--endpoints", &d.endpoint(1), "--timeout", "2s", "get", "tls-key"]);
        c.output().expect("keelctl")
    };
    let plain = without(&[]);
    assert!(!plain.status.success(), "a plain-text client was served");
    assert!(
        !String::from_utf8_lossy(&plain.stdout).contains("tls-value"),
        "a plain-text client read the value"
    );
    let ca = certs.path().join("ca/ca.pem");
    let no_cert = without(&["--cacert", ca.to_str().unwrap()]);
    assert!(!no_cert.status.success(), "a client without a certificate was served");
    Ok(())
}
