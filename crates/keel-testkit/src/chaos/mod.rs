//! # Chaos runs: a workload under a nemesis, checked for linearizability
//!
//! A run, in the manner of etcd's robustness tests and Jepsen:
//! 1. clients ([`workload`]) put, read (linearizably) and compare-and-swap unique values on a few
//!    keys, and every operation's invocation, return and outcome (ok, failed, unknown) goes into a
//!    [`Recorder`];
//! 2. meanwhile the [`nemesis`] draws faults from the seed (one at a time, or overlapping): kill -9
//!    and restart, power cuts on lazy disks, pause and resume,
//!    partitions (isolation and one-way), slow and lossy links, replacing a member;
//! 3. some seconds before the end every fault is undone, and the clients must make progress again;
//! 4. the clients stop, the run waits for every member to catch up, reads the final state, and
//!    checks that the history is linearizable per key, that the final state lost no acknowledged
//!    write, and that every replica holds the same data;
//! 5. meanwhile one [`watchers`] task per member watched every key from revision 1, moving to
//!    another member whenever its own went away: each must have seen the same changes, in order,
//!    once each, ending in the final state;
//! 6. meanwhile [`coordination`] lock users increment a counter under a lock, fenced by their
//!    token, and lease holders keep leases alive and then abandon them: the counter must equal
//!    the acknowledged increments, no two holders may overlap, no lease may expire before its
//!    keeper's deadline, and every abandoned lease must expire.
//!
//! The seed decides the faults and their timing and the clients' choices; the interleaving is up
//! to the machine, so a seed reproduces the scenario, not the exact history.

pub mod coordination;
pub mod nemesis;
pub mod resources;
pub mod target;
pub mod watchers;
pub mod workload;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_client::proto::RangeRequest;
use keel_client::{Client, ClientConfig};
use tokio::sync::watch;

use crate::history::{check_linearizable_with, check_no_lost_writes, CheckOptions, History, Op, Outcome, Recorder};
pub use nemesis::{Event, Schedule};
pub use resources::Resources;
pub use target::{Fault, Target};
pub use workload::Load;

/// A chaos run's settings.
#[derive(Debug, Clone)]
pub struct Config {
    pub seed: u64,
    pub duration: Duration,
    /// Faults stop this long before the end, so that recovery is part of the run; the clients
    /// run at least this long after the heal, even when the heal finishes late.
    pub settle: Duration,
    pub schedule: Schedule,
    pub load: Load,
}

impl Config {
    pub fn new(seed: u64, duration: Duration) -> Config {
        Config {
            seed,
            duration,
            settle: Duration::from_secs(6).min(duration / 3),
            schedule: Schedule::default(),
            load: Load {
                // Runs longer than two minutes move to fresh keys every minute (see
                // `Load::rotate_keys`).
                rotate_keys: (duration > Duration::from_secs(120)).then_some(Duration::from_secs(60)),
                ..Load::default()
            },
        }
    }
}

/// The seed for a test's chaos run: `KEEL_CHAOS_SEED` if set (to replay a failure), else a
/// random one. Tests print it with their report.
pub fn seed_from_env() -> u64 {
    std::env::var("KEEL_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::random::<u64>() % 1_000_000_000)
}

/// Counts of one operation type's outcomes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    pub ok: u64,
    pub failed: u64,
    pub unknown: u64,
}

/// What a run did and found.
#[derive(Debug, Clone)]
pub struct Report {
    pub seed: u64,
    pub duration: Duration,
    pub faults: Vec<Fault>,
    /// Faults overlapped ([`Schedule::overlap`]).
    pub overlap: bool,
    pub timeline: Vec<Event>,
    pub puts: Tally,
    pub gets: Tally,
    pub cases: Tally,
    /// Writes acknowledged among the operations invoked after every fault was undone.
    pub writes_after_heal: u64,
    /// Time from the end of the workload until every member had caught up.
    pub recovery: Result<Duration, String>,
    /// Linearizability of the history (Err: the violation).
    pub linearizable: Result<(), String>,
    /// The final-state check: no acknowledged write lost.
    pub no_lost_writes: Result<(), String>,
    /// Every replica holds the final state.
    pub replicas_agree: Result<(), String>,
    /// Every member's watcher saw the same changes, in order, once each, ending in the final
    /// state (Ok: how many changes, and how often the watches moved between members).
    pub watches: Result<(usize, u64), String>,
    /// The lock users' and lease holders' checks.
    pub coordination: Result<coordination::Summary, String>,
    pub check_time: Duration,
    /// Each member's memory and open files over the run.
    pub resources: Resources,
    /// Every operation the clients recorded, for `keel-chaos --check` after a failed run.
    pub history: History,
}

impl Report {
    /// Did the run pass every check, and prove anything (writes were acknowledged, also after
    /// the faults ended)?
    pub fn passed(&self) -> bool {
        self.linearizable.is_ok()
            && self.no_lost_writes.is_ok()
            && self.watches.is_ok()
            && self.coordination.as_ref().is_ok_and(|c| c.increments > 0)
            && self.replicas_agree.is_ok()
            && self.recovery.is_ok()
            && self.puts.ok + self.cases.ok > 0
            && self.writes_after_heal > 0
    }

    /// Total acknowledged writes (puts, and compare-and-swaps that answered).
    pub fn acknowledged_writes(&self) -> u64 {
        self.puts.ok + self.cases.ok
    }
}

fn tally(history: &History) -> (Tally, Tally, Tally) {
    let (mut puts, mut gets, mut cases) = (Tally::default(), Tally::default(), Tally::default());
    for o in &history.ops {
        let t = match o.op {
            Op::Put(_) => &mut puts,
            Op::Get => &mut gets,
            Op::Cas { .. } => &mut cases,
        };
        match o.outcome {
            Outcome::Failed => t.failed += 1,
            Outcome::Unknown => t.unknown += 1,
            _ => t.ok += 1,
        }
    }
    (puts, gets, cases)
}

/// Run the workload and the nemesis against `target`, then check.
pub async fn run<T: Target>(target: &mut T, config: &Config) -> anyhow::Result<Report> {
    let start = Instant::now();
    let recorder = Recorder::new();
    let (endpoints_tx, endpoints_rx) = watch::channel(target.endpoints());
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let mut clients = tokio::task::JoinSet::new();
    for p in 0..config.load.clients as u64 {
        clients.spawn(workload::client(
            p,
            config.seed,
            config.load.clone(),
            recorder.clone(),
            endpoints_rx.clone(),
            stop.clone(),
            acked.clone(),
        ));
    }

    // One watcher per member, each starting at its own member, through every fault.
    let (stop_at_tx, stop_at) = watch::channel(None);
    let mut watch_tasks = tokio::task::JoinSet::new();
    for i in 0..target.endpoints().len() {
        watch_tasks.spawn(watchers::run(i, endpoints_rx.clone(), stop.clone(), stop_at.clone()));
    }

    // Lock users and lease holders, through every fault.
    let mut lock_users = tokio::task::JoinSet::new();
    for _ in 0..3 {
        lock_users.spawn(coordination::lock_user(endpoints_rx.clone(), stop.clone()));
    }
    let mut lease_holders = tokio::task::JoinSet::new();
    for h in 0..2 {
        lease_holders.spawn(coordination::lease_holder(
            h,
            config.seed,
            endpoints_rx.clone(),
            stop.clone(),
        ));
    }

    let mut nemesis = nemesis::Nemesis::new(config.seed, start, acked);
    let faults_end = start + config.duration.saturating_sub(config.settle);
    nemesis.run(target, &config.schedule, faults_end, &endpoints_tx).await;
    nemesis.log("heal everything");
    if let Err(e) = target.heal_all().await {
        nemesis.log(format!("heal failed: {e:#}"));
    }
    let healed_from = recorder.history().ops.len();
    // The clients get `settle` after the heal has finished, however late that is: the last fault
    // may outlast `faults_end` by its own length, and healing through a loaded Docker engine took
    // seconds (a CI run beside a release build healed 0.6 s before the end, and no write had
    // time to succeed). Without the full window, "clients write again" would be a coin toss.
    let end = (start + config.duration).max(Instant::now() + config.settle);
    tokio::time::sleep_until(end.into()).await;
    stop.store(true, Ordering::Relaxed);
    // Each client finishes its operation in flight, bounded by the request deadline.
    while clients.join_next().await.is_some() {}
    let (mut lock_logs, mut lease_logs) = (Vec::new(), Vec::new());
    while let Some(log) = lock_users.join_next().await {
        lock_logs.extend(log.ok());
    }
    while let Some(log) = lease_holders.join_next().await {
        lease_logs.extend(log.ok());
    }
    nemesis.log("workload stopped");

    let waited = Instant::now();
    let recovery = match target.wait_recovered(Duration::from_secs(60)).await {
        Ok(()) => Ok(waited.elapsed()),
        Err(e) => Err(format!("{e:#}")),
    };
    nemesis.resources.sample(target, start.elapsed());
    let history = recorder.history();
    let (puts, gets, cases) = tally(&history);
    let writes_after_heal = history.ops[healed_from..]
        .iter()
        .filter(|o| matches!(o.outcome, Outcome::PutOk | Outcome::CasOk(_)))
        .count() as u64;

    let checked = Instant::now();
    let linearizable = check_linearizable_with(&history, &CheckOptions::default()).map_err(|v| v.to_string());
    // Every key the clients used (with rotating keys, more than `load.keys`), and the first set
    // even if no operation reached it.
    let mut keys: std::collections::BTreeSet<String> = history.ops.iter().map(|o| o.key.clone()).collect();
    keys.extend(workload::key_names(config.load.keys, 0));
    let (no_lost_writes, replicas_agree, state) =
        match workload::final_state(target.endpoints(), keys, Duration::from_secs(30)).await {
            Ok(state) => (
                check_no_lost_writes(&history, &state).map_err(|v| v.to_string()),
                replicas_agree(target.endpoints(), &state).await,
                Some(state),
            ),
            Err(e) => (Err(format!("{e:#}")), Err("no final state".into()), None),
        };
    // The watchers stop once they have delivered the revision of the final state.
    let final_revision = final_revision(target.endpoints()).await;
    let _ = stop_at_tx.send(Some(final_revision.as_ref().map_or(u64::MAX, |r| *r)));
    let mut logs = Vec::new();
    while let Some(log) = watch_tasks.join_next().await {
        logs.push(log.unwrap_or_else(|e| watchers::Log {
            error: Some(format!("watcher task failed: {e}")),
            ..Default::default()
        }));
    }
    let coordination = coordination::check(&lock_logs, &lease_logs, target.endpoints(), Duration::from_secs(30)).await;
    let watches = match (state, final_revision) {
        (Some(state), Ok(_)) => watchers::check(&logs, &state),
        (None, _) => Err("no final state".into()),
        (_, Err(e)) => Err(format!("no final revision: {e}")),
    };
    Ok(Report {
        seed: config.seed,
        duration: config.duration,
        faults: config.schedule.faults.clone(),
        overlap: config.schedule.overlap,
        timeline: nemesis.timeline,
        puts,
        gets,
        cases,
        writes_after_heal,
        recovery,
        linearizable,
        no_lost_writes,
        replicas_agree,
        watches,
        coordination,
        check_time: checked.elapsed(),
        resources: nemesis.resources,
        history,
    })
}

/// The store revision, read linearizably (after the run: everything the watchers must have).
async fn final_revision(endpoints: Vec<String>) -> Result<u64, String> {
    let client = Client::connect(endpoints, ClientConfig::with_timeout(Duration::from_secs(10)))
        .await
        .map_err(|e| e.to_string())?;
    let req = RangeRequest {
        key: b"chaos/".to_vec(),
        prefix: true,
        count_only: true,
        ..Default::default()
    };
    let resp = client.range(req).await.map_err(|e| e.to_string())?;
    Ok(resp.header.map_or(0, |h| h.revision))
}

/// Read the keys of the run from every replica's own state (serializable reads), and compare
/// with the final state read through the leader.
async fn replicas_agree(endpoints: Vec<String>, state: &BTreeMap<String, Option<String>>) -> Result<(), String> {
    let expected: BTreeMap<&str, &str> = state
        .iter()
        .filter_map(|(k, v)| Some((k.as_str(), v.as_deref()?)))
        .collect();
    for endpoint in endpoints {
        let client = Client::connect(
            vec![endpoint.clone()],
            ClientConfig::with_timeout(Duration::from_secs(5)),
        )
        .await
        .map_err(|e| e.to_string())?;
        let req = RangeRequest {
            key: b"chaos/".to_vec(),
            range_end: b"chaos0".to_vec(),
            serializable: true,
            ..Default::default()
        };
        let resp = client.range(req).await.map_err(|e| format!("{endpoint}: {e}"))?;
        let got: BTreeMap<String, String> = resp
            .kvs
            .iter()
            .map(|kv| {
                (
                    String::from_utf8_lossy(&kv.key).into_owned(),
                    String::from_utf8_lossy(&kv.value).into_owned(),
                )
            })
            .collect();
        let got: BTreeMap<&str, &str> = got.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        if got != expected {
            return Err(format!("{endpoint} holds {got:?}, the leader {expected:?}"));
        }
    }
    Ok(())
}

fn verdict<T>(r: &Result<T, String>, yes: &str) -> String {
    match r {
        Ok(_) => yes.to_string(),
        Err(e) => format!("NO: {e}"),
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let faults: Vec<&str> = self.faults.iter().map(|f| f.name()).collect();
        writeln!(
            f,
            "chaos run: seed {}, {} s, faults {}{}",
            self.seed,
            self.duration.as_secs(),
            faults.join(","),
            if self.overlap { " (overlapping)" } else { "" }
        )?;
        writeln!(f, "timeline:")?;
        for e in &self.timeline {
            writeln!(f, "  {:>7.2}s  {}", e.at.as_secs_f64(), e.what)?;
        }
        writeln!(f, "operations        ok   failed  unknown")?;
        for (name, t) in [("put", self.puts), ("get", self.gets), ("cas", self.cases)] {
            writeln!(f, "  {name:<8} {:>8} {:>8} {:>8}", t.ok, t.failed, t.unknown)?;
        }
        writeln!(f, "writes acknowledged after the heal: {}", self.writes_after_heal)?;
        match &self.recovery {
            Ok(d) => writeln!(f, "recovery (every member caught up): {:.1} s", d.as_secs_f64())?,
            Err(e) => writeln!(f, "recovery: NO: {e}")?,
        }
        writeln!(f, "linearizable: {}", verdict(&self.linearizable, "yes"))?;
        writeln!(f, "acknowledged writes lost: {}", verdict(&self.no_lost_writes, "0"))?;
        writeln!(f, "replicas agree: {}", verdict(&self.replicas_agree, "yes"))?;
        match &self.watches {
            Ok((n, moves)) => writeln!(
                f,
                "watchers (one per member) agree with each other and the store: yes, {n} changes each; \
                 their watches moved between members {moves} times"
            )?,
            Err(e) => writeln!(f, "watchers: NO: {e}")?,
        }
        match &self.coordination {
            Ok(c) => writeln!(
                f,
                "locks: {} acquisitions, {} fenced increments = counter {} ({} refused by the fence, {} unknown), \
                 no overlap; leases: {} kept, {} lost, {} reads in time found every key, {} abandoned all expired",
                c.acquisitions,
                c.increments,
                c.counter,
                c.fenced_off,
                c.unknown,
                c.leases_kept,
                c.leases_lost,
                c.lease_checks,
                c.abandoned
            )?,
            Err(e) => writeln!(f, "locks and leases: NO: {e}")?,
        }
        writeln!(f, "checked in {:.2} s", self.check_time.as_secs_f64())?;
        if !self.resources.samples.is_empty() {
            writeln!(f, "memory (RSS) and open files per member:")?;
            write!(f, "{}", self.resources)?;
        }
        write!(f, "verdict: {}", if self.passed() { "PASS" } else { "FAIL" })
    }
}
