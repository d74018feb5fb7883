//! Real etcd clients against keel's etcd v3 API (issue 16): etcdctl 3.4 (Debian's etcd-client)
//! runs tests/etcd/etcdctl.sh, which covers every etcdctl command group but auth and checks every
//! output, and the PyPI `etcd3` package runs tests/etcd/etcd3_test.py; each against all three
//! members, then again through one follower alone (every request served or forwarded by it).
//! Both scripts were written and proven against a real etcd 3.4 cluster first
//! (tests/etcd/selfcheck.sh), so a failure here is keel's.
//!
//! scripts/install-test-deps.sh installs the clients; without them the test says SKIPPED.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use keel_testkit::{Backend, Cluster, Options};

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("etcd").join(name)
}

fn venv_python() -> PathBuf {
    let venv = std::env::var("KEEL_TEST_VENV").unwrap_or_else(|_| "/opt/keel-test-venv".into());
    Path::new(&venv).join("bin/python")
}

fn has_etcdctl() -> bool {
    Command::new("etcdctl")
        .arg("version")
        .env("ETCDCTL_API", "3")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Run one client script against `endpoints`; its output is shown on failure.
fn run(what: &str, mut cmd: Command, endpoints: &str, follower_only: bool) {
    cmd.env("ENDPOINTS", endpoints);
    if follower_only {
        cmd.env("FOLLOWER_ONLY", "1");
    }
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let summary = stdout.lines().last().unwrap_or_default().to_string();
    eprintln!("{what} against {endpoints}: {summary}");
    assert!(
        out.status.success(),
        "{what} against {endpoints} failed:\n{}\n{}",
        stdout
            .lines()
            .filter(|l| l.starts_with("FAIL") || l.starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n"),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!stdout.contains("SKIPPED"), "{what} skipped: {stdout}");
}

fn etcdctl_script() -> Command {
    Command::new(script("etcdctl.sh"))
}

fn python_script() -> Command {
    let mut cmd = Command::new(venv_python());
    cmd.arg(script("etcd3_test.py"));
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn etcdctl_and_python_etcd3_work_against_keel_and_through_a_follower() -> anyhow::Result<()> {
    let etcdctl = has_etcdctl();
    let python = venv_python().exists();
    if !etcdctl {
        eprintln!("SKIPPED etcdctl part: etcdctl not installed (scripts/install-test-deps.sh)");
    }
    if !python {
        eprintln!(
            "SKIPPED python-etcd3 part: no venv at {} (scripts/install-test-deps.sh)",
            venv_python().display()
        );
    }
    if !etcdctl && !python {
        return Ok(());
    }
    let cluster = Cluster::start(Backend::Process, Options::default()).await?;
    let all = cluster.endpoints().join(",");
    // The scripts block the thread; the cluster's processes run on their own.
    let run_all = {
        let all = all.clone();
        tokio::task::spawn_blocking(move || {
            if etcdctl {
                run("etcdctl.sh", etcdctl_script(), &all, false);
            }
            if python {
                run("etcd3_test.py", python_script(), &all, false);
            }
        })
    };
    run_all.await?;
    // etcdctl.sh moved the leadership; find a follower now.
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await?;
    let follower = *cluster.nodes.keys().find(|id| **id != leader).expect("a follower");
    let endpoint = cluster.nodes[&follower].client_addr.to_string();
    tokio::task::spawn_blocking(move || {
        if etcdctl {
            run("etcdctl.sh (follower only)", etcdctl_script(), &endpoint, true);
        }
        if python {
            run("etcd3_test.py (follower only)", python_script(), &endpoint, true);
        }
    })
    .await?;
    cluster.shutdown().await
}
