//! Append throughput of the log store alone, next to this disk's raw fdatasync rate.
//!
//! ```text
//! cargo run --release -p keel-storage --example append_bench -- [--secs 3] [--reps 3] [--dir DIR]
//! ```
//! For batch sizes 1, 16 and 256 (256-byte payloads) it runs 1 writer and 4 concurrent writers,
//! each appending one batch and waiting until it is durable, as openraft does. Every setting is
//! repeated `--reps` times; the median is printed, with the number of group commits (syncs) per
//! append call, which shows how much concurrent appends share a sync. The last line is JSON.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_storage::EntryPayload;
use keel_storage::{Command, Entry, PutOp, Request, StoreConfig};
use openraft::storage::RaftLogStorageExt;

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn entry(index: u64) -> Entry {
    Entry {
        log_id: keel_storage::log_id_at(1, 1, index),
        payload: EntryPayload::Normal(Request::new(Command::Put(PutOp {
            key: index.to_be_bytes().to_vec(),
            value: vec![0xAB; 256],
            prev_kv: false,
        }))),
    }
}

/// Raw fdatasync rate: 256-byte appends to a file, each followed by fdatasync.
fn fdatasync_rate(dir: &Path, secs: f64) -> f64 {
    let path = dir.join("fdatasync.probe");
    let mut f = std::fs::File::create(&path).expect("probe file");
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed().as_secs_f64() < secs {
        f.write_all(&[0u8; 256]).expect("write");
        f.sync_data().expect("fdatasync");
        n += 1;
    }
    let _ = std::fs::remove_file(path);
    n as f64 / start.elapsed().as_secs_f64()
}

/// (entries/s, syncs per append call) for one setting.
async fn run(dir: &Path, batch: u64, writers: u64, secs: f64) -> (f64, f64) {
    let store = keel_storage::open(dir, &StoreConfig::default()).expect("open store");
    let stats = store.log.stats();
    let (commits0, next) = (stats.group_commits.load(Ordering::Relaxed), Arc::new(AtomicU64::new(1)));
    let calls = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..writers {
        let (mut log, next, calls) = (store.log.clone(), next.clone(), calls.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                let first = next.fetch_add(batch, Ordering::Relaxed);
                log.blocking_append((first..first + batch).map(entry))
                    .await
                    .expect("append");
                calls.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        t.await.expect("writer");
    }
    let elapsed = start.elapsed().as_secs_f64();
    let calls = calls.load(Ordering::Relaxed);
    let commits = stats.group_commits.load(Ordering::Relaxed) - commits0;
    ((calls * batch) as f64 / elapsed, commits as f64 / calls.max(1) as f64)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let secs: f64 = arg("--secs").and_then(|s| s.parse().ok()).unwrap_or(3.0);
    let reps: usize = arg("--reps").and_then(|s| s.parse().ok()).unwrap_or(3);
    let base = tempfile::Builder::new()
        .prefix("keel-append-bench")
        .tempdir_in(arg("--dir").map(PathBuf::from).unwrap_or_else(std::env::temp_dir))
        .expect("temp dir");
    let fsync = median((0..reps).map(|_| fdatasync_rate(base.path(), secs)).collect());
    println!("fdatasync (256-byte writes): {fsync:.0}/s");
    println!(
        "{:>6} {:>8} {:>14} {:>18} {:>10}",
        "batch", "writers", "entries/s", "syncs/append call", "x fsync"
    );
    let mut json = vec![format!("\"fdatasync_per_s\":{fsync:.0}")];
    for batch in [1u64, 16, 256] {
        for writers in [1u64, 4] {
            let mut rates = Vec::new();
            let mut syncs = Vec::new();
            for rep in 0..reps {
                let dir = base.path().join(format!("b{batch}-w{writers}-r{rep}"));
                let (rate, per_call) = run(&dir, batch, writers, secs).await;
                rates.push(rate);
                syncs.push(per_call);
                let _ = std::fs::remove_dir_all(&dir);
            }
            let (rate, per_call) = (median(rates), median(syncs));
            println!(
                "{batch:>6} {writers:>8} {rate:>14.0} {per_call:>18.2} {:>10.1}",
                rate / fsync
            );
            json.push(format!("\"batch{batch}_writers{writers}_entries_per_s\":{rate:.0}"));
        }
    }
    println!("{{{}}}", json.join(","));
}
