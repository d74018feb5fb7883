//! Snapshot build and install: time, file size and memory, for a state of N keys.
//!
//! ```text
//! cargo run --release -p keel-storage --example snapshot_bench -- [--keys 200000] [--dir DIR] [--cache-mb 256]
//! ```
//! Loads N keys (8 to 16 bytes, 256-byte values, in scattered order) into a store through
//! `apply`, 1000 single-put entries per call as openraft hands them over; builds a snapshot with
//! `get_snapshot_builder` + `build_snapshot`; copies it into a fresh store's
//! `begin_receiving_snapshot` file and installs it there. It prints the times, the snapshot's
//! size and the process's resident memory (VmRSS, and VmHWM, the peak, reset before each phase
//! where the kernel allows it) before the build, after the build and after the install. Build and
//! install stream the snapshot, so their memory deltas should not grow with the number of keys.
//!
//! What can grow is sled's page cache, and with glibc the way it is allocated: build and install
//! run on blocking threads, which get their own malloc arenas, so pages sled evicts and reloads
//! there leave free but resident memory behind in other arenas. A control phase (a count-only read
//! of every key on a blocking thread, which buffers nothing) shows that share. Run with
//! `MALLOC_ARENA_MAX=1` to see the snapshot code's own footprint. The last line is JSON.

use std::path::PathBuf;
use std::time::Instant;

use keel_storage::EntryPayload;
use keel_storage::{Command, Entry, KeyRange, KvReader, PutOp, RangeOp, Request, StoreConfig};
use openraft::storage::RaftStateMachine;
use openraft::RaftSnapshotBuilder;
use tokio::io::{AsyncSeekExt, AsyncWriteExt};

const VALUE_BYTES: usize = 256;
const APPLY_BATCH: u64 = 1000;

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

/// A bijection on u32, so keys are unique but arrive in scattered order.
fn scatter(i: u32) -> u32 {
    let mut x = i.wrapping_mul(0x9E37_79B1);
    x ^= x >> 16;
    x = x.wrapping_mul(0x85EB_CA6B);
    x ^= x >> 13;
    x
}

/// Key `i`: 8 unique hex bytes, then 0 to 8 filler bytes.
fn key(i: u64) -> Vec<u8> {
    let s = scatter(i as u32);
    let mut k = format!("{s:08x}").into_bytes();
    k.extend(std::iter::repeat_n(b'.', (s % 9) as usize));
    k
}

fn value(i: u64) -> Vec<u8> {
    (0..VALUE_BYTES as u64)
        .map(|j| (i.wrapping_mul(31).wrapping_add(j) % 251) as u8)
        .collect()
}

fn entry(index: u64, i: u64) -> Entry {
    Entry {
        log_id: keel_storage::log_id_at(1, 1, index),
        payload: EntryPayload::Normal(Request::new(Command::Put(PutOp {
            key: key(i),
            value: value(i),
            prev_kv: false,
        }))),
    }
}

/// (VmRSS, VmHWM) of this process, in KiB.
fn memory_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Reset VmHWM to the current RSS (Linux: "5" > /proc/self/clear_refs). False if not allowed.
fn reset_peak() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn delta_mib(after: u64, before: u64) -> f64 {
    (after as f64 - before as f64) / 1024.0
}

fn count_all(reader: &KvReader) -> u64 {
    let op = RangeOp {
        count_only: true,
        ..RangeOp::new(KeyRange::Prefix(Vec::new()))
    };
    reader.range(&op).expect("count every key").0.count
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let keys: u64 = arg("--keys").and_then(|s| s.parse().ok()).unwrap_or(200_000);
    assert!(keys <= u32::MAX as u64, "--keys must fit in 32 bits");
    let mut config = StoreConfig::default();
    if let Some(mb) = arg("--cache-mb").and_then(|s| s.parse::<u64>().ok()) {
        config.cache_capacity = mb * 1024 * 1024;
    }
    let base = tempfile::Builder::new()
        .prefix("keel-snapshot-bench")
        .tempdir_in(arg("--dir").map(PathBuf::from).unwrap_or_else(std::env::temp_dir))
        .expect("temp dir");
    println!(
        "{keys} keys (8..16 bytes), {VALUE_BYTES}-byte values, sled cache {} MiB per store, in {}",
        config.cache_capacity / (1024 * 1024),
        base.path().display()
    );
    let (rss_start, _) = memory_kib();

    // Load.
    let mut src = keel_storage::open(&base.path().join("src"), &config).expect("open source store");
    let start = Instant::now();
    let mut next = 0;
    while next < keys {
        let end = (next + APPLY_BATCH).min(keys);
        let entries: Vec<Entry> = (next..end).map(|i| entry(i + 1, i)).collect();
        src.sm.apply_entries(entries).expect("apply");
        next = end;
    }
    src.durability.sync().expect("sync");
    let load_s = start.elapsed().as_secs_f64();
    let reader = src.sm.reader();
    assert_eq!(reader.key_count(), keys);
    let revision = reader.revision();
    println!(
        "load:     {load_s:>8.2} s  ({:.0} puts/s), database {:.1} MiB on disk",
        keys as f64 / load_s,
        reader.db_size() as f64 / (1024.0 * 1024.0)
    );

    // Control: a plain full read of the source (count only), which pulls every page of the state
    // through sled's cache just as the build will, but buffers nothing. It runs on a blocking
    // thread like the build (and the install), so both see the same allocator behaviour (glibc
    // gives new threads their own malloc arenas).
    let (rss_before_scan, _) = memory_kib();
    let peak_reset = reset_peak();
    let start = Instant::now();
    let scan_reader = reader.clone();
    let scanned = tokio::task::spawn_blocking(move || count_all(&scan_reader))
        .await
        .expect("scan");
    assert_eq!(scanned, keys);
    let scan_s = start.elapsed().as_secs_f64();
    let (rss_after_scan, peak_scan) = memory_kib();
    println!("scan:     {scan_s:>8.2} s  (control: count-only range read of every key, no snapshot)");

    // Build.
    let (rss_before_build, _) = memory_kib();
    reset_peak();
    let start = Instant::now();
    let mut builder = src.sm.get_snapshot_builder().await;
    let snapshot = builder.build_snapshot().await.expect("build snapshot");
    drop(builder);
    let build_s = start.elapsed().as_secs_f64();
    let (rss_after_build, peak_build) = memory_kib();
    let mut file = snapshot.snapshot;
    let snapshot_bytes = file.metadata().await.expect("snapshot metadata").len();
    println!(
        "build:    {build_s:>8.2} s  ({:.0} keys/s), snapshot file {:.1} MiB ({:.0} bytes/key)",
        keys as f64 / build_s,
        snapshot_bytes as f64 / (1024.0 * 1024.0),
        snapshot_bytes as f64 / keys as f64
    );

    // Transfer into a fresh store, as openraft's receiving side does, then install.
    let mut dst = keel_storage::open(&base.path().join("dst"), &config).expect("open fresh store");
    let start = Instant::now();
    let mut rx = dst.sm.snapshot_inbox().create_file().expect("begin receiving");
    file.seek(std::io::SeekFrom::Start(0)).await.expect("seek");
    let copied = tokio::io::copy(&mut file, &mut rx).await.expect("copy snapshot");
    rx.flush().await.expect("flush");
    assert_eq!(copied, snapshot_bytes);
    drop(file);
    let transfer_s = start.elapsed().as_secs_f64();
    let (rss_before_install, _) = memory_kib();
    reset_peak();
    let start = Instant::now();
    dst.sm
        .install_snapshot(&snapshot.meta, rx)
        .await
        .expect("install snapshot");
    let install_s = start.elapsed().as_secs_f64();
    let (rss_after_install, peak_install) = memory_kib();
    println!(
        "copy:     {transfer_s:>8.2} s  (into the begin_receiving_snapshot file)\ninstall:  {install_s:>8.2} s  ({:.0} keys/s)",
        keys as f64 / install_s
    );

    // The fresh store holds the same state.
    let fresh = dst.sm.reader();
    assert_eq!(fresh.key_count(), keys);
    assert_eq!(fresh.revision(), revision);
    for i in (0..keys).step_by((keys as usize / 1000).max(1)) {
        let (got, _) = fresh.get(&key(i)).expect("read fresh store");
        let (want, _) = reader.get(&key(i)).expect("read source store");
        assert_eq!(got, want, "key {i}");
        assert_eq!(got.map(|kv| kv.value), Some(value(i)));
    }
    assert_eq!(count_all(&fresh), keys);

    println!(
        "memory (VmRSS; peak = VmHWM, {}):",
        if peak_reset {
            "reset before build and before install"
        } else {
            "process lifetime: reset not allowed"
        }
    );
    println!("  at start           {:>8.1} MiB", mib(rss_start));
    println!(
        "  before scan        {:>8.1} MiB  (after the load)",
        mib(rss_before_scan)
    );
    println!(
        "  after scan         {:>8.1} MiB  (delta {:+.1} MiB, peak {:.1} MiB: sled's cache, the control)",
        mib(rss_after_scan),
        delta_mib(rss_after_scan, rss_before_scan),
        mib(peak_scan)
    );
    println!("  before build       {:>8.1} MiB", mib(rss_before_build));
    println!(
        "  after build        {:>8.1} MiB  (delta {:+.1} MiB, peak {:.1} MiB, peak - before {:+.1} MiB)",
        mib(rss_after_build),
        delta_mib(rss_after_build, rss_before_build),
        mib(peak_build),
        delta_mib(peak_build, rss_before_build)
    );
    println!(
        "  before install     {:>8.1} MiB  (a second store is open now)",
        mib(rss_before_install)
    );
    println!(
        "  after install      {:>8.1} MiB  (delta {:+.1} MiB, peak {:.1} MiB, peak - before {:+.1} MiB)",
        mib(rss_after_install),
        delta_mib(rss_after_install, rss_before_install),
        mib(peak_install),
        delta_mib(peak_install, rss_before_install)
    );

    let json = [
        format!("\"keys\":{keys}"),
        format!("\"value_bytes\":{VALUE_BYTES}"),
        format!("\"cache_mib\":{}", config.cache_capacity / (1024 * 1024)),
        format!("\"load_s\":{load_s:.3}"),
        format!("\"scan_s\":{scan_s:.3}"),
        format!("\"build_s\":{build_s:.3}"),
        format!("\"snapshot_bytes\":{snapshot_bytes}"),
        format!("\"copy_s\":{transfer_s:.3}"),
        format!("\"install_s\":{install_s:.3}"),
        format!("\"rss_kib_start\":{rss_start}"),
        format!("\"rss_kib_before_scan\":{rss_before_scan}"),
        format!("\"rss_kib_after_scan\":{rss_after_scan}"),
        format!("\"hwm_kib_scan\":{peak_scan}"),
        format!("\"rss_kib_before_build\":{rss_before_build}"),
        format!("\"rss_kib_after_build\":{rss_after_build}"),
        format!("\"hwm_reset_per_phase\":{peak_reset}"),
        format!("\"hwm_kib_build\":{peak_build}"),
        format!(
            "\"rss_delta_kib_build\":{}",
            rss_after_build as i64 - rss_before_build as i64
        ),
        format!("\"rss_kib_before_install\":{rss_before_install}"),
        format!("\"rss_kib_after_install\":{rss_after_install}"),
        format!("\"hwm_kib_install\":{peak_install}"),
        format!(
            "\"rss_delta_kib_install\":{}",
            rss_after_install as i64 - rss_before_install as i64
        ),
    ];
    println!("{{{}}}", json.join(","));
}
