//! A disk that fails reads: the member stops, with one line naming its store, instead of serving
//! from a store that may be missing data; the rest of the cluster carries on.
//!
//! Every `pread64` of one follower fails with EIO (strace's fault injection). The follower was
//! restarted with a 1 MiB page cache, so a read of every key must go to the disk. Skipped, loudly,
//! without strace (scripts/install-test-deps.sh installs it).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use keel_proto::v1::{PutRequest, RangeRequest};
use keel_testkit::{Backend, Cluster, Options};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_whose_disk_fails_reads_stops_and_the_cluster_carries_on() -> anyhow::Result<()> {
    if Command::new("strace").arg("-V").output().is_err() {
        eprintln!("SKIPPED a_member_whose_disk_fails_reads_stops: strace is not installed (apt-get install strace)");
        return Ok(());
    }
    let options = Options {
        flags: vec!["--cache-mb".into(), "1".into()],
        ..Options::default()
    };
    let mut cluster = Cluster::start(Backend::Process, options).await?;
    let leader = cluster.wait_for_leader(Duration::from_secs(20)).await?;
    let mut kv = cluster.kv(leader);
    // 3,000 keys of 1 KiB: three times the page cache.
    for i in 0..3_000u32 {
        kv.put(PutRequest {
            key: format!("k{i:05}").into_bytes(),
            value: vec![(i % 251) as u8; 1024],
            ..Default::default()
        })
        .await
        .with_context(|| format!("put {i}"))?;
    }
    let victim = *cluster.nodes.keys().find(|&&id| id != leader).expect("a follower");
    let applied = cluster.status(leader).await.context("leader status")?.applied_index;
    cluster.wait_applied(victim, applied, Duration::from_secs(30)).await?;
    // A cold start: what the victim reads next comes from its disk.
    cluster.stop(victim).await?;
    cluster.restart(victim).await?;
    cluster.wait_applied(victim, applied, Duration::from_secs(60)).await?;

    let pid = cluster.pid(victim).context("victim pid")?;
    let mut strace = Command::new("strace")
        .args([
            "-f",
            "-qq",
            "-e",
            "trace=pread64",
            "-e",
            "inject=pread64:error=EIO",
            "-o",
            "/dev/null",
            "-p",
        ])
        .arg(pid.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("spawn strace")?;
    // strace attaches within a moment; a read before that would simply succeed.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let read = cluster
        .kv(victim)
        .range(RangeRequest {
            key: b"k".to_vec(),
            prefix: true,
            serializable: true,
            ..RangeRequest::default()
        })
        .await;
    let _ = strace.kill();
    let _ = strace.wait();
    let err = match read {
        Ok(r) => anyhow::bail!(
            "a read through a failing disk succeeded ({} keys)",
            r.into_inner().kvs.len()
        ),
        Err(e) => e,
    };
    eprintln!("the read failed as it should: {err}");

    // The member stops by itself, non-zero, saying why.
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = cluster.exit_status(victim) {
            break s;
        }
        ensure!(
            Instant::now() < deadline,
            "member {victim} is still running after its disk failed a read"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    ensure!(!status.success(), "member {victim} exited with {status}");
    let log = cluster.log(victim);
    let line = log
        .lines()
        .find(|l| l.contains("stopping: reading the store in"))
        .with_context(|| format!("no line naming the store in member {victim}'s log:\n{log}"))?;
    ensure!(line.contains("/db"), "the line names the store's directory: {line}");

    // The other two carry on.
    let leader = cluster.wait_for_leader(Duration::from_secs(20)).await?;
    ensure!(leader != victim, "the stopped member cannot lead");
    cluster
        .kv(leader)
        .put(PutRequest {
            key: b"after".to_vec(),
            value: b"v".to_vec(),
            ..Default::default()
        })
        .await
        .context("a write after the member stopped")?;
    Ok(())
}
