//! Disaster recovery, as a drill: 100k keys written to a three-node cluster (some deleted, some
//! overwritten), `keelctl snapshot save`, every node and its data destroyed, three new nodes
//! restored from the file with `keelctl snapshot restore` and started: every key, value, version
//! and the revision match, and writes continue at revision + 1. A corrupt, truncated or foreign
//! file is refused by `inspect` and `restore` with exit 1 and a clear message, and nothing is
//! written into the data directory.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use keel_proto::v1::{request_op, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest};
use keel_testkit::{keelctl_binary, Backend, Cluster, Options};

const KEYS: usize = 100_000;
/// Puts per transaction while loading (the limit is 128 ops).
const PER_TXN: usize = 100;

fn keelctl(args: &[&str]) -> Output {
    Command::new(keelctl_binary().expect("keelctl"))
        .args(args)
        .output()
        .expect("run keelctl")
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn put_op(key: String, value: String) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::Put(PutRequest {
            key: key.into_bytes(),
            value: value.into_bytes(),
            prev_kv: false,
            lease: 0,
            session: None,
        })),
    }
}

/// Every key with its value, version and revisions, and the store revision, read through the
/// leader.
type Dump = (BTreeMap<Vec<u8>, (Vec<u8>, u64, u64, u64)>, u64);

/// Every pair, page by page (a response is bounded in bytes); the cluster must not be written
/// meanwhile, which the pages' revisions confirm.
async fn dump(cluster: &Cluster, id: u64) -> anyhow::Result<Dump> {
    let mut kv = cluster.kv(id).max_decoding_message_size(usize::MAX);
    let mut kvs = BTreeMap::new();
    let mut from = vec![0];
    let mut revision = None;
    loop {
        let mut req = tonic::Request::new(RangeRequest {
            key: from.clone(),
            range_end: vec![0],
            ..Default::default()
        });
        req.set_timeout(Duration::from_secs(60));
        let resp = kv.range(req).await?.into_inner();
        let rev = resp.header.expect("header").revision;
        anyhow::ensure!(
            *revision.get_or_insert(rev) == rev,
            "the cluster was written during the dump"
        );
        if let Some(last) = resp.kvs.last() {
            from = last.key.clone();
            from.push(0);
        }
        kvs.extend(
            resp.kvs
                .into_iter()
                .map(|kv| (kv.key, (kv.value, kv.version, kv.create_revision, kv.mod_revision))),
        );
        if !resp.more {
            return Ok((kvs, rev));
        }
    }
}

/// Load the cluster: KEYS keys in transactions from 8 tasks, then overwrite every 7th key and
/// delete every 11th.
async fn load(cluster: &Cluster, leader: u64) -> anyhow::Result<()> {
    let mut tasks = Vec::new();
    for t in 0..8 {
        let mut kv = cluster.kv(leader);
        tasks.push(tokio::spawn(async move {
            for chunk in (0..KEYS / PER_TXN).filter(|c| c % 8 == t) {
                let success = (chunk * PER_TXN..(chunk + 1) * PER_TXN)
                    .map(|i| put_op(format!("key/{i:06}"), format!("value-{i}-{}", "x".repeat(32))))
                    .collect();
                kv.txn(TxnRequest {
                    success,
                    ..Default::default()
                })
                .await?;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let mut kv = cluster.kv(leader);
    for chunk in (0..KEYS).step_by(7).collect::<Vec<_>>().chunks(PER_TXN) {
        let success = chunk
            .iter()
            .map(|i| put_op(format!("key/{i:06}"), format!("overwritten-{i}")))
            .collect();
        kv.txn(TxnRequest {
            success,
            ..Default::default()
        })
        .await?;
    }
    for i in (0..KEYS).step_by(11).take(2000) {
        kv.delete_range(DeleteRangeRequest {
            key: format!("key/{i:06}").into_bytes(),
            ..Default::default()
        })
        .await?;
    }
    Ok(())
}

fn assert_refused(file: &Path, dir: &Path, initial_cluster: &str, expect: &str) {
    let inspect = keelctl(&["snapshot", "inspect", file.to_str().unwrap()]);
    assert_eq!(inspect.status.code(), Some(1), "{}", text(&inspect));
    assert!(
        String::from_utf8_lossy(&inspect.stderr).contains(expect),
        "{}",
        text(&inspect)
    );
    let restore = keelctl(&[
        "snapshot",
        "restore",
        file.to_str().unwrap(),
        "--data-dir",
        dir.to_str().unwrap(),
        "--id",
        "1",
        "--initial-cluster",
        initial_cluster,
    ]);
    assert_eq!(restore.status.code(), Some(1), "{}", text(&restore));
    assert!(
        String::from_utf8_lossy(&restore.stderr).contains(expect),
        "{}",
        text(&restore)
    );
    assert!(!dir.exists(), "restore of a bad file wrote {}", dir.display());
    let parent = dir.parent().unwrap();
    let leftovers: Vec<_> = std::fs::read_dir(parent)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains("restoring"))
        .collect();
    assert!(leftovers.is_empty(), "staging left behind: {leftovers:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cluster_restored_from_a_backup_has_every_key_and_continues() -> anyhow::Result<()> {
    let work = tempfile::tempdir()?;
    let backup = work.path().join("backup.snap");

    // The cluster that is lost.
    let old = Cluster::start(Backend::Process, Options::default()).await?;
    let leader = old.wait_for_leader(Duration::from_secs(10)).await?;
    load(&old, leader).await?;
    let (expected, revision) = dump(&old, leader).await?;
    assert!(expected.len() > 90_000, "{} keys", expected.len());
    let endpoints = old.endpoints().join(",");
    let save = keelctl(&[
        "--endpoints",
        &endpoints,
        "--timeout",
        "120s",
        "-o",
        "json",
        "snapshot",
        "save",
        backup.to_str().unwrap(),
    ]);
    assert!(save.status.success(), "{}", text(&save));
    let saved: serde_json::Value = serde_json::from_slice(&save.stdout)?;
    assert_eq!(
        saved["revision"], revision,
        "the backup is of the state read just before"
    );
    assert!(!work.path().join("backup.snap.part").exists());
    drop(old); // kills every node and deletes every data directory

    let inspect = keelctl(&["-o", "json", "snapshot", "inspect", backup.to_str().unwrap()]);
    assert!(inspect.status.success(), "{}", text(&inspect));
    let inspected: serde_json::Value = serde_json::from_slice(&inspect.stdout)?;
    assert_eq!(inspected["sha256"], saved["sha256"]);
    assert_eq!(inspected["revision"], revision);
    assert_eq!(inspected["format_version"], 1);
    assert!(inspected["cluster_id"].as_str().is_some_and(|c| !c.is_empty()));

    // Three new nodes, each restored from the file.
    let mut new = Cluster::prepare(Backend::Process, Options::default()).await?;
    let initial = new.initial_cluster().to_string();
    for (id, node) in &new.nodes {
        let restore = keelctl(&[
            "snapshot",
            "restore",
            backup.to_str().unwrap(),
            "--data-dir",
            node.data_dir.to_str().unwrap(),
            "--id",
            &id.to_string(),
            "--initial-cluster",
            &initial,
        ]);
        assert!(restore.status.success(), "{}", text(&restore));
    }
    // A second restore into a used directory is refused.
    let again = keelctl(&[
        "snapshot",
        "restore",
        backup.to_str().unwrap(),
        "--data-dir",
        new.nodes[&1].data_dir.to_str().unwrap(),
        "--id",
        "1",
        "--initial-cluster",
        &initial,
    ]);
    assert_eq!(again.status.code(), Some(1), "{}", text(&again));
    assert!(String::from_utf8_lossy(&again.stderr).contains("not empty"));

    new.launch_all().await?;
    let leader = new.wait_for_leader(Duration::from_secs(30)).await?;
    let (restored, restored_revision) = dump(&new, leader).await?;
    assert_eq!(restored_revision, revision);
    assert_eq!(restored.len(), expected.len());
    assert!(restored == expected, "restored keys differ from the backed-up ones");
    // Writes continue at revision + 1, and every member serves the restored data.
    let put = new
        .kv(leader)
        .put(PutRequest {
            key: b"after-restore".to_vec(),
            value: b"1".to_vec(),
            prev_kv: false,
            lease: 0,
            session: None,
        })
        .await?
        .into_inner();
    assert_eq!(put.header.expect("header").revision, revision + 1);
    let applied = new.status(leader).await.expect("status").applied_index;
    for id in new.nodes.keys() {
        new.wait_applied(*id, applied, Duration::from_secs(30)).await?;
        let count = new
            .kv(*id)
            .range(RangeRequest {
                key: b"key/".to_vec(),
                range_end: b"key0".to_vec(),
                count_only: true,
                serializable: true,
                ..Default::default()
            })
            .await?
            .into_inner()
            .count;
        assert_eq!(count as usize, expected.len(), "member {id}");
    }

    // Bad files are refused, and nothing is written.
    let target = work.path().join("refused");
    let bytes = std::fs::read(&backup)?;
    let corrupt = work.path().join("corrupt.snap");
    let mut flipped = bytes.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x55;
    std::fs::write(&corrupt, &flipped)?;
    assert_refused(&corrupt, &target, &initial, "corrupt");
    let truncated = work.path().join("truncated.snap");
    std::fs::write(&truncated, &bytes[..bytes.len() * 2 / 3])?;
    assert_refused(&truncated, &target, &initial, "truncated");
    let foreign = work.path().join("foreign.snap");
    std::fs::write(&foreign, b"PGDMP this is somebody else's backup\n")?;
    assert_refused(&foreign, &target, &initial, "not a keel snapshot");
    new.shutdown().await
}
