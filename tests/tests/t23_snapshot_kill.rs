//! A follower killed (SIGKILL) again and again while it receives or installs a snapshot of
//! several MiB restarts every time and finally catches up.
//!
//! The defect this guards against: openraft 0.9 queues a follower's install of a received
//! snapshot of index S and purges the log up to S without waiting for the install. Had the purge
//! become durable first, a follower killed during the install came back with its state machine at
//! A < S and a log starting after S, and never started again. keel-storage's purge now waits for
//! the state machine (log_store.rs, "Purging"). Without that, this test failed by the second or
//! third round: the restarted follower's Raft core panicked at once ("invalid state: expect:
//! self.purge_upto() <= self.snapshot_last_log_id()"): its log was purged to S, its state machine
//! still where it was before the transfer.
//!
//! Each round restarts the follower and kills it at a point it reaches, polled every few
//! milliseconds: in turn, a point inside the transfer, the moment the transfer is complete, and a
//! point inside the install. Where the kill really landed is then read from what the dead
//! process left:
//! - the transfer: keel logs "begin_receiving_snapshot"; while it runs the process holds the
//!   (unlinked) `snapshots/recv-*.part` file open, and that file grows;
//! - keel logs "received snapshot" when the transfer is complete, just before the install;
//! - the install copies the snapshot to `snapshots/<stem>.snap.tmp` as it loads the state machine;
//! - the install is complete once `snapshots/<stem>.snap` exists (openraft then logs
//!   "Done install complete snapshot").
//!
//! The points inside the transfer and the install are drawn from a seed (printed;
//! `KEEL_SNAPSHOT_KILL_SEED` replays it). A round whose kill came too late (the install was
//! complete) puts the follower behind the leader's purged log again before the next one; at
//! least one kill must land inside an install.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_proto::v1::kv_client::KvClient;
use keel_proto::v1::{PutRequest, RangeRequest, RangeResponse, StatusRequest};
use keel_storage::NodeId;
use keel_testkit::{retried, Backend, Cluster, Options};
use tokio::task::JoinSet;
use tonic::transport::Channel;

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;
/// Distinct keys, each with a value of `VALUE_BYTES`: the state, and so the snapshot, is
/// about `KEYS * VALUE_BYTES` (5.5 MiB) however often the keys are overwritten. The first
/// `WRITES_BEFORE + WRITES_WHILE_DOWN` writes put every key once.
const KEYS: usize = WRITES_BEFORE + WRITES_WHILE_DOWN;
const VALUE_BYTES: usize = 4 * KIB;
/// The leader keeps this many entries behind its snapshot (`max_in_snapshot_log_to_keep` in
/// keel-server's server.rs); a follower missing more than that plus one snapshot interval needs
/// a snapshot.
const KEPT_BEHIND_SNAPSHOT: usize = 1000;
const SNAPSHOT_LOGS: usize = 50;
/// Writes before the follower is killed.
const WRITES_BEFORE: usize = 100;
/// Writes (one entry each, `--max-batch 1`) while the follower is down: more than the leader
/// keeps, so its log is purged past the follower.
const WRITES_WHILE_DOWN: usize = KEPT_BEHIND_SNAPSHOT + SNAPSHOT_LOGS + 250;
/// Restart-and-kill rounds.
const ROUNDS: usize = 6;
/// At most this many more, should none of those have killed the follower in mid-install.
const EXTRA_ROUNDS: usize = 4;
/// How often the follower's files are looked at while waiting for the point to kill it.
const POLL: Duration = Duration::from_millis(2);

fn key(i: usize) -> String {
    format!("k{:04}", i % KEYS)
}

/// A `VALUE_BYTES` value that names its key and the write that put it there.
fn value(i: usize) -> Vec<u8> {
    let mut v = format!("{}@{i}:", key(i)).into_bytes();
    let fill = b"abcdefghijklmnopqrstuvwxyz0123456789";
    while v.len() < VALUE_BYTES {
        v.push(fill[(v.len() + i) % fill.len()]);
    }
    v
}

/// splitmix64: enough randomness for kill points, and replayable.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A fraction in [lo, hi).
    fn fraction(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn seed() -> u64 {
    std::env::var("KEEL_SNAPSHOT_KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos() as u64 ^ d.as_secs());
            nanos % 1_000_000_000
        })
}

async fn put(kv: &KvClient<Channel>, key: String, value: Vec<u8>) -> anyhow::Result<()> {
    retried(&[tonic::Code::Unavailable], || {
        let mut req = tonic::Request::new(PutRequest {
            key: key.clone().into_bytes(),
            value: value.clone(),
            prev_kv: false,
            lease: 0,
            session: None,
        });
        req.set_timeout(Duration::from_secs(10));
        let mut kv = kv.clone();
        async move { kv.put(req).await }
    })
    .await
    .map_err(|e| anyhow::anyhow!("put {key}: {e}"))?;
    Ok(())
}

/// Writes `range` (write i puts `value(i)` at `key(i)`) through `kv`, a few at a time.
async fn write_all(kv: &KvClient<Channel>, range: std::ops::Range<usize>) -> anyhow::Result<()> {
    const IN_FLIGHT: usize = 32;
    let mut tasks = JoinSet::new();
    let mut writes = range;
    loop {
        while tasks.len() < IN_FLIGHT {
            let Some(i) = writes.next() else { break };
            let kv = kv.clone();
            tasks.spawn(async move { put(&kv, key(i), value(i)).await });
        }
        match tasks.join_next().await {
            Some(done) => done??,
            None => return Ok(()),
        }
    }
}

/// Every pair under "k", page by page (a response is bounded to 3 MiB), and the revision of the
/// first page.
async fn read_all(kv: &KvClient<Channel>, serializable: bool) -> anyhow::Result<(u64, BTreeMap<String, Vec<u8>>)> {
    let mut all = BTreeMap::new();
    let mut from = b"k".to_vec();
    let mut revision = None;
    for _ in 0..100 {
        let req = RangeRequest {
            key: from.clone(),
            range_end: b"l".to_vec(),
            serializable,
            ..Default::default()
        };
        let resp: RangeResponse = retried(&[tonic::Code::Unavailable], || {
            let (mut kv, req) = (kv.clone(), req.clone());
            async move { kv.range(req).await }
        })
        .await?;
        revision.get_or_insert(resp.header.as_ref().map_or(0, |h| h.revision));
        let last = resp.kvs.last().map(|kv| kv.key.clone());
        for kv in resp.kvs {
            all.insert(String::from_utf8_lossy(&kv.key).into_owned(), kv.value);
        }
        match (resp.more, last) {
            (true, Some(mut last)) => {
                last.push(0);
                from = last;
            }
            _ => return Ok((revision.unwrap_or(0), all)),
        }
    }
    anyhow::bail!("paging does not end")
}

fn follower_of(cluster: &Cluster, leader: NodeId) -> NodeId {
    *cluster.nodes.keys().find(|id| **id != leader).expect("a follower")
}

/// Wait until `id` has applied everything the current leader has applied.
async fn catch_up(cluster: &Cluster, id: NodeId, timeout: Duration) -> anyhow::Result<()> {
    let leader = cluster.wait_for_leader(timeout).await?;
    let applied = cluster.status(leader).await.expect("leader status").applied_index;
    cluster.wait_applied(id, applied, timeout).await
}

fn log_path(cluster: &Cluster, id: NodeId) -> PathBuf {
    cluster.dir().join(format!("node{id}.log"))
}

fn log_len(cluster: &Cluster, id: NodeId) -> u64 {
    std::fs::metadata(log_path(cluster, id)).map_or(0, |m| m.len())
}

/// What a node logged from byte `from` on, without the terminal colour codes.
fn log_since(cluster: &Cluster, id: NodeId, from: u64) -> String {
    let mut text = Vec::new();
    if let Ok(mut f) = std::fs::File::open(log_path(cluster, id)) {
        if f.seek(SeekFrom::Start(from)).is_ok() {
            let _ = f.read_to_end(&mut text);
        }
    }
    without_ansi(&String::from_utf8_lossy(&text))
}

/// `text` without ANSI escape sequences (ESC '[' ... a letter): the text log colours field names.
fn without_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The last `n` lines of `text`, for failure messages.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The first panic in `log` and the lines after it (the message, the start of a backtrace).
fn panic_in(log: &str) -> Option<String> {
    let lines: Vec<&str> = log.lines().collect();
    let at = lines.iter().position(|l| l.contains("panicked at"))?;
    Some(lines[at..lines.len().min(at + 6)].join("\n"))
}

/// What to show of a node's log when something went wrong: its first panic, if any, and its
/// last lines.
fn show(log: &str) -> String {
    match panic_in(log) {
        Some(panic) => format!("{panic}\n...\n{}", tail(log, 20)),
        None => tail(log, 40),
    }
}

/// The id of the snapshot in the first "received snapshot" line of `log`.
fn received_snapshot(log: &str) -> Option<String> {
    let line = log.lines().find(|l| l.contains("received snapshot"))?;
    let id = line.split_whitespace().find_map(|w| w.strip_prefix("snapshot="))?;
    Some(id.trim_matches('"').to_string())
}

/// The largest file in `dir` whose name ends with `suffix`, and its size.
fn largest(dir: &Path, suffix: &str) -> Option<(PathBuf, u64)> {
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(suffix))
        .filter_map(|e| Some((e.path(), e.metadata().ok()?.len())))
        .max_by_key(|(_, len)| *len)
}

fn size(path: &Path) -> Option<u64> {
    std::fs::metadata(path).ok().map(|m| m.len())
}

/// How many bytes of a snapshot process `pid` has received so far: the size of the
/// `snapshots/recv-*.part` file it has open (keel unlinks that file as soon as it has created
/// it, so it is found through the process's descriptors, not the directory). `None` when no
/// transfer is running.
fn receiving(pid: u32) -> Option<u64> {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
    fds.filter_map(|e| e.ok())
        .filter(|e| {
            std::fs::read_link(e.path()).is_ok_and(|target| {
                let target = target.to_string_lossy();
                target.contains("/snapshots/recv-") && target.contains(".part")
            })
        })
        // The metadata of /proc/PID/fd/N is that of the open file, unlinked or not.
        .filter_map(|e| Some(std::fs::metadata(e.path()).ok()?.len()))
        .max()
}

/// Has the process exited (a zombie not reaped yet, or gone)?
fn exited(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
        Err(_) => true,
    }
}

/// What openraft logs when a transfer begins (the receive file is created).
const RECEIVING: &str = "begin_receiving_snapshot";
/// What openraft logs when a state machine's install of a snapshot has returned.
const INSTALL_DONE: &str = "Done install complete snapshot";

/// Where a round means to kill the follower.
#[derive(Debug, Clone, Copy)]
enum Aim {
    /// When the snapshot being received has this many bytes.
    Transfer(u64),
    /// As soon as the follower logs "received snapshot" (its install is about to start).
    Received,
    /// When the install's copy of the snapshot has this many bytes (it loads as it copies).
    Install(u64),
}

/// Where a kill landed, from the follower's files once it was dead.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Hit {
    /// No transfer had started.
    BeforeTransfer,
    /// The snapshot was still arriving: at least this many bytes of it had.
    Transfer(u64),
    /// Received in full; the install had not created its copy yet.
    ReceivedNotLoading,
    /// The install was loading the state machine: its copy had this many bytes.
    Installing(u64),
    /// The install was complete.
    Installed,
    /// The follower caught up without a snapshot (an earlier install was complete).
    NoSnapshotNeeded,
}

/// Watches a node's applied index from a task of its own (a status call to a node that is still
/// starting can take a while; the loop that looks for the point to kill must not wait for it).
/// Stops when dropped.
struct AppliedWatch {
    applied: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl AppliedWatch {
    fn new(cluster: &Cluster, id: NodeId) -> AppliedWatch {
        let applied = Arc::new(AtomicU64::new(0));
        let client = cluster.cluster_client(id);
        let seen = applied.clone();
        let task = tokio::spawn(async move {
            loop {
                let mut req = tonic::Request::new(StatusRequest {});
                req.set_timeout(Duration::from_secs(1));
                if let Ok(s) = client.clone().status(req).await {
                    seen.fetch_max(s.into_inner().applied_index, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        AppliedWatch { applied, task }
    }

    fn applied(&self) -> u64 {
        self.applied.load(Ordering::Relaxed)
    }
}

impl Drop for AppliedWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Restart the stopped `follower` and SIGKILL it at `aim`. Returns where the kill landed.
async fn restart_and_kill(
    cluster: &mut Cluster,
    follower: NodeId,
    leader_applied: u64,
    aim: Aim,
) -> anyhow::Result<Hit> {
    let snapshots = cluster.nodes[&follower].data_dir.join("snapshots");
    let from = log_len(cluster, follower);
    let started = Instant::now();
    cluster.restart(follower).await?;
    let pid = cluster.pid(follower).expect("a process node");
    let watch = AppliedWatch::new(cluster, follower);
    let deadline = started + Duration::from_secs(30);
    let mut no_snapshot = false;
    // The most of the snapshot seen received.
    let mut seen_receiving = None;
    loop {
        let log = log_since(cluster, follower, from);
        let received = received_snapshot(&log);
        let bytes = receiving(pid);
        seen_receiving = seen_receiving.max(bytes);
        let now = match aim {
            Aim::Transfer(at) => received.is_some() || bytes.is_some_and(|len| len >= at),
            Aim::Received => received.is_some(),
            Aim::Install(at) => match &received {
                Some(id) => {
                    let stem = id;
                    log.contains(INSTALL_DONE)
                        || snapshots.join(format!("{stem}.snap")).exists()
                        || size(&snapshots.join(format!("{stem}.snap.tmp"))).is_some_and(|len| len >= at)
                }
                None => false,
            },
        };
        if now {
            break;
        }
        if exited(pid) || panic_in(&log).is_some() {
            anyhow::bail!(
                "node {follower} exited or panicked after its restart, {:?} in:\n{}",
                started.elapsed(),
                show(&log)
            );
        }
        if watch.applied() >= leader_applied {
            no_snapshot = true;
            break;
        }
        if Instant::now() > deadline {
            anyhow::bail!(
                "node {follower} did not reach {aim:?} within 30 s of its restart:\n{}",
                show(&log)
            );
        }
        tokio::time::sleep(POLL).await;
    }
    cluster.kill(follower).await?;
    let killed_after = started.elapsed();
    drop(watch);
    // The process is dead and reaped: its files no longer change.
    let log = log_since(cluster, follower, from);
    let hit = match received_snapshot(&log) {
        None if log.contains(RECEIVING) => Hit::Transfer(seen_receiving.unwrap_or(0)),
        None if no_snapshot => Hit::NoSnapshotNeeded,
        None => Hit::BeforeTransfer,
        Some(id) => {
            let stem = &id;
            if log.contains(INSTALL_DONE) || snapshots.join(format!("{stem}.snap")).exists() {
                Hit::Installed
            } else if let Some(len) = size(&snapshots.join(format!("{stem}.snap.tmp"))) {
                Hit::Installing(len)
            } else {
                Hit::ReceivedNotLoading
            }
        }
    };
    eprintln!("  aimed at {aim:?}, killed {killed_after:?} after the restart: {hit:?}");
    Ok(hit)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_killed_again_and_again_while_it_receives_and_installs_a_large_snapshot_catches_up(
) -> anyhow::Result<()> {
    let test_started = Instant::now();
    let seed = seed();
    eprintln!("KEEL_SNAPSHOT_KILL_SEED={seed}");
    let mut rng = Rng(seed);
    let options = Options {
        flags: vec![
            "--snapshot-logs".into(),
            SNAPSHOT_LOGS.to_string(),
            "--max-batch".into(),
            "1".into(),
        ],
        ..Default::default()
    };
    let mut cluster = Cluster::start(Backend::Process, options).await?;
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await?;
    let follower = follower_of(&cluster, leader);
    let kv = cluster.kv(leader);
    write_all(&kv, 0..WRITES_BEFORE).await?;
    catch_up(&cluster, follower, Duration::from_secs(20)).await?;

    cluster.kill(follower).await?;
    let mut written = WRITES_BEFORE;
    write_all(&kv, written..written + WRITES_WHILE_DOWN).await?;
    written += WRITES_WHILE_DOWN;
    eprintln!(
        "{WRITES_WHILE_DOWN} writes while node {follower} was down, {:?} into the test",
        test_started.elapsed()
    );

    // The leader's snapshot: about what the follower will receive (the leader may build one more
    // from the last few entries it applies).
    let mut leader_applied = cluster.status(leader).await.expect("leader status").applied_index;
    let leader_snapshots = cluster.nodes[&leader].data_dir.join("snapshots");
    let (snap, snap_bytes) = largest(&leader_snapshots, ".snap").expect("the leader has a snapshot");
    eprintln!(
        "leader {leader} applied {leader_applied}; its snapshot {} has {snap_bytes} bytes",
        snap.display()
    );
    assert!(
        snap_bytes >= 4 * MIB as u64,
        "a snapshot of {snap_bytes} bytes is too small"
    );

    // A kill while the install has loaded part of the snapshot; should every round's kill so far
    // have missed that window (a busy machine), a few more rounds aim at it.
    let mid_install = |hits: &[(Aim, Hit)]| hits.iter().any(|(_, hit)| matches!(hit, Hit::Installing(n) if *n > 0));
    let mut hits = Vec::new();
    for round in 0.. {
        if round >= ROUNDS && (mid_install(&hits) || round >= ROUNDS + EXTRA_ROUNDS) {
            break;
        }
        let aim = match round % 3 {
            _ if round >= ROUNDS => Aim::Install((snap_bytes as f64 * rng.fraction(0.05, 0.9)) as u64),
            0 => Aim::Transfer((snap_bytes as f64 * rng.fraction(0.0, 0.8)) as u64),
            1 => Aim::Received,
            _ => Aim::Install((snap_bytes as f64 * rng.fraction(0.05, 0.9)) as u64),
        };
        eprintln!("round {round}:");
        let hit = restart_and_kill(&mut cluster, follower, leader_applied, aim).await?;
        if matches!(hit, Hit::Installed | Hit::NoSnapshotNeeded) {
            // The follower has the snapshot: put it behind the leader's purged log again.
            write_all(&kv, written..written + WRITES_WHILE_DOWN).await?;
            written += WRITES_WHILE_DOWN;
            let leader = cluster.wait_for_leader(Duration::from_secs(10)).await?;
            leader_applied = cluster.status(leader).await.expect("leader status").applied_index;
            eprintln!("  {WRITES_WHILE_DOWN} more writes, to need a snapshot again");
        }
        hits.push((aim, hit));
    }
    assert!(
        mid_install(&hits),
        "no kill landed while the follower was installing the snapshot: {hits:?}"
    );

    // The last restart: it must come up and catch up.
    let from = log_len(&cluster, follower);
    cluster.restart(follower).await?;
    catch_up(&cluster, follower, Duration::from_secs(60))
        .await
        .map_err(|e| anyhow::anyhow!("{e}:\n{}", show(&log_since(&cluster, follower, from))))?;
    eprintln!("node {follower} caught up, {:?} into the test", test_started.elapsed());

    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await?;
    let (leader_revision, on_leader) = read_all(&cluster.kv(leader), false).await?;
    let (follower_revision, on_follower) = read_all(&cluster.kv(follower), true).await?;
    // Later writes of a key replace earlier ones.
    let expected: BTreeMap<String, Vec<u8>> = (0..written).map(|i| (key(i), value(i))).collect();
    assert_eq!(on_leader.len(), KEYS);
    assert!(on_leader == expected, "the leader's data is not what was written");
    assert_eq!(follower_revision, leader_revision, "revisions of leader and follower");
    assert!(
        on_follower == on_leader,
        "node {follower}'s data differs from the leader's: {} keys against {}",
        on_follower.len(),
        on_leader.len()
    );

    // The cluster takes a write through the follower, and the follower serves it.
    put(&cluster.kv(follower), "k-after".into(), b"after".to_vec()).await?;
    catch_up(&cluster, follower, Duration::from_secs(20)).await?;
    let got = cluster
        .kv(follower)
        .range(RangeRequest {
            key: b"k-after".to_vec(),
            serializable: true,
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(got.kvs.len(), 1);
    assert_eq!(got.kvs[0].value, b"after");

    eprintln!("hits: {hits:?}; {:?} in all", test_started.elapsed());
    cluster.shutdown().await
}
