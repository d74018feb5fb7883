//! Backup and restore at scale: load N keys (256-byte values by default) into a three-node
//! cluster of `keel` processes, then time `keelctl snapshot save`, `inspect`, three
//! `keelctl snapshot restore`s and the restored cluster's first leader, and check the key count.
//!
//!   cargo build --release --workspace --bins
//!   KEEL_BIN_DIR=target/release cargo run --release -p keel-testkit --example backup_bench -- 1000000 256
//!
//! Each step is printed with its wall time; the machine is shared, so repeat and take medians.

use std::process::Command;
use std::time::{Duration, Instant};

use keel_proto::v1::{request_op, PutRequest, RangeRequest, RequestOp, TxnRequest};
use keel_testkit::{keelctl_binary, Backend, Cluster, Options};

fn keelctl(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(keelctl_binary()?).args(args).output()?;
    anyhow::ensure!(
        out.status.success(),
        "keelctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

async fn count(cluster: &Cluster, id: u64) -> anyhow::Result<u64> {
    let mut req = tonic::Request::new(RangeRequest {
        key: vec![0],
        range_end: vec![0],
        count_only: true,
        ..Default::default()
    });
    req.set_timeout(Duration::from_secs(120));
    Ok(cluster.kv(id).range(req).await?.into_inner().count)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let keys: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(1_000_000);
    let value_len: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(256);
    let options = Options {
        flags: vec!["--snapshot-logs".into(), "100000".into()],
        ..Options::default()
    };
    let cluster = Cluster::start(Backend::Process, options).await?;
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await?;

    let started = Instant::now();
    let per_txn = 100;
    let mut tasks = Vec::new();
    for t in 0..16usize {
        let mut kv = cluster.kv(leader).max_decoding_message_size(usize::MAX);
        tasks.push(tokio::spawn(async move {
            for chunk in (0..keys.div_ceil(per_txn)).filter(|c| c % 16 == t) {
                let success = (chunk * per_txn..((chunk + 1) * per_txn).min(keys))
                    .map(|i| RequestOp {
                        request: Some(request_op::Request::Put(PutRequest {
                            key: format!("key/{i:08}").into_bytes(),
                            value: vec![b'v'; value_len],
                            prev_kv: false,
                            lease: 0,
                            session: None,
                        })),
                    })
                    .collect();
                let mut req = tonic::Request::new(TxnRequest {
                    success,
                    ..Default::default()
                });
                req.set_timeout(Duration::from_secs(30));
                kv.txn(req).await?;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    println!(
        "load: {keys} keys of {value_len} B in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let work = tempfile::tempdir()?;
    let file = work.path().join("bench.snap");
    let endpoints = cluster.endpoints().join(",");
    let t = Instant::now();
    keelctl(&[
        "--endpoints",
        &endpoints,
        "--timeout",
        "600s",
        "snapshot",
        "save",
        file.to_str().unwrap(),
    ])?;
    let save = t.elapsed();
    let size = std::fs::metadata(&file)?.len();
    let t = Instant::now();
    keelctl(&["snapshot", "inspect", file.to_str().unwrap()])?;
    let inspect = t.elapsed();
    println!(
        "save: {:.1} s, file {:.1} MiB; inspect (full verify): {:.1} s",
        save.as_secs_f64(),
        size as f64 / 1048576.0,
        inspect.as_secs_f64()
    );
    drop(cluster);

    let mut restored = Cluster::prepare(Backend::Process, Options::default()).await?;
    let initial = restored.initial_cluster().to_string();
    let t = Instant::now();
    for (id, node) in &restored.nodes {
        let one = Instant::now();
        keelctl(&[
            "snapshot",
            "restore",
            file.to_str().unwrap(),
            "--data-dir",
            node.data_dir.to_str().unwrap(),
            "--id",
            &id.to_string(),
            "--initial-cluster",
            &initial,
        ])?;
        println!("restore member {id}: {:.1} s", one.elapsed().as_secs_f64());
    }
    let restore_all = t.elapsed();
    let t = Instant::now();
    restored.launch_all().await?;
    let leader = restored.wait_for_leader(Duration::from_secs(120)).await?;
    let start = t.elapsed();
    let n = count(&restored, leader).await?;
    println!(
        "restore x3: {:.1} s; start to first leader: {:.1} s; keys after restore: {n}",
        restore_all.as_secs_f64(),
        start.as_secs_f64()
    );
    anyhow::ensure!(n as usize == keys, "restored {n} keys, expected {keys}");
    restored.shutdown().await
}
