//! `keel-bench`: closed-loop load against keel or etcd with the same workload code, failover
//! timing, and leader transfers under load. Prints a human summary and, as its last line, one
//! JSON object.
//!
//!   keel-bench put --clients 64 --duration 10s
//!   keel-bench get --clients 64 [--serializable]
//!   keel-bench get --prefix '' --limit 1          (range reads; --all-pages: read whole ranges)
//!   keel-bench mixed --read-percent 90 --clients 64
//!   keel-bench txn --clients 16
//!   keel-bench lease --clients 64                  (grant + put with the lease + revoke)
//!   keel-bench lock --clients 8                    (lock hand-off: lock + unlock, one lock)
//!   keel-bench watch --watchers 1000 --rate 1000 --pids P1,P2,P3   (watch fan-out)
//!   keel-bench --system etcd --endpoints 127.0.0.1:2379,... put --clients 256
//!   keel-bench failover --rounds 5 --restart-cmd 'scripts/cluster.sh start {id}'
//!   keel-bench transfer --rounds 10 --clients 16   (leader transfers under writes; keel only)

mod coord;
mod failover;
mod fanout;
mod load;
mod stats;
mod target;
mod transfer;

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use load::{Shape, Workload};
use stats::{round1, Spread};
use target::{Scan, Target};

#[derive(Parser, Debug)]
#[command(
    name = "keel-bench",
    about = "Load generator for keel and etcd, failover and leader-transfer timing"
)]
struct Cli {
    /// keel, etcd, or keel-etcd: keel driven through its etcd API with the code that drives etcd
    /// (the etcd-client crate's requests, over plain channels to keel's leader, as keel's own
    /// go; etcd's go over etcd-client's balanced channel to all endpoints).
    #[arg(long, global = true, default_value = "keel", value_parser = ["keel", "etcd", "keel-etcd"])]
    system: String,
    /// Comma-separated client endpoints (host:port).
    #[arg(
        long,
        global = true,
        env = "KEEL_ENDPOINTS",
        value_delimiter = ',',
        default_value = "127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003"
    )]
    endpoints: Vec<String>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Puts of random keys.
    Put(LoadArgs),
    /// Gets of random keys (linearizable unless --serializable); with --prefix, range reads.
    Get(LoadArgs),
    /// Gets and puts, --read-percent of them gets.
    Mixed(LoadArgs),
    /// Transactions: compare version, put.
    Txn(LoadArgs),
    /// Lease churn: grant a lease, put a key attached to it, revoke it.
    Lease(LoadArgs),
    /// Lock hand-off: all clients lock one lock (each with its own lease) and unlock it at once.
    Lock(LoadArgs),
    /// Watch fan-out: watchers on one prefix of one member while puts under it arrive at a
    /// fixed rate; delivery latency, events/s, the member's RSS.
    Watch(WatchArgs),
    /// Kill the leader, time the first successful write; N rounds.
    Failover(FailoverArgs),
    /// Hand leadership to the next voter under a write load, N rounds: the longest write gap
    /// around each transfer, and the transfer call's time (keel only).
    Transfer(TransferArgs),
}

#[derive(Args, Debug)]
struct LoadArgs {
    /// Concurrent clients (each waits for its answer before sending the next request).
    #[arg(long, default_value_t = 1)]
    clients: usize,
    /// Connections they share (default: min(clients, 16)).
    #[arg(long)]
    conns: Option<usize>,
    /// Keys are drawn uniformly from this many.
    #[arg(long, default_value_t = 100_000)]
    keys: u64,
    #[arg(long, default_value_t = 8)]
    key_size: usize,
    #[arg(long, default_value_t = 256)]
    value_size: usize,
    /// How long to run.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Stop after this many operations.
    #[arg(long, default_value_t = 10_000_000)]
    ops: u64,
    #[arg(long)]
    serializable: bool,
    /// For mixed: percentage of gets.
    #[arg(long, default_value_t = 90)]
    read_percent: u32,
    /// Before measuring, write every key once (for gets of existing keys).
    #[arg(long)]
    preload: bool,
    /// For get: range reads of the keys that start with PREFIX ('' for every key) instead of
    /// gets of random keys.
    #[arg(long, value_name = "PREFIX")]
    prefix: Option<String>,
    /// With --prefix: at most N pairs per request (0: no limit; the server also bounds each
    /// response in bytes).
    #[arg(long, value_name = "N", default_value_t = 0, requires = "prefix")]
    limit: u64,
    /// With --prefix: read keys and revisions, not values.
    #[arg(long, requires = "prefix")]
    keys_only: bool,
    /// With --prefix: only count the keys in the range.
    #[arg(long, requires = "prefix", conflicts_with = "keys_only")]
    count_only: bool,
    /// With --prefix: each operation reads the whole range, page after page while the
    /// response says there is more.
    #[arg(long, requires = "prefix", conflicts_with = "count_only")]
    all_pages: bool,
}

#[derive(Args, Debug)]
struct WatchArgs {
    /// Watchers, each with its own watch stream.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    watchers: u32,
    /// Connections the watchers share.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=4096))]
    conns: u32,
    /// Puts per second under the prefix.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    rate: u64,
    /// How long to write.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Bytes per value (at least 8: the send time).
    #[arg(long, default_value_t = 16)]
    value_size: usize,
    #[arg(long, default_value = "bench-watch/")]
    prefix: String,
    /// The member that serves the watchers (default: the first follower).
    #[arg(long)]
    serving: Option<String>,
    /// The members' process ids, in the order of --endpoints, to read the serving member's RSS.
    #[arg(long, value_delimiter = ',')]
    pids: Vec<u32>,
}

#[derive(Args, Debug)]
struct FailoverArgs {
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Brings the killed member back: `{id}` is its 1-based position among the endpoints,
    /// `{endpoint}` its endpoint.
    #[arg(long)]
    restart_cmd: String,
}

#[derive(Args, Debug)]
struct TransferArgs {
    /// Transfers to make (one per round).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1000))]
    rounds: u32,
    /// Closed-loop writers running throughout, spread over the endpoints.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=4096))]
    clients: u32,
    /// Wait this long before each transfer (for the new term to settle).
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    settle: Duration,
}

fn name(cmd: &Cmd, a: &LoadArgs) -> &'static str {
    match (cmd, a.serializable) {
        (Cmd::Put(_), _) => "put",
        (Cmd::Get(_), false) if a.prefix.is_some() => "range-linearizable",
        (Cmd::Get(_), true) if a.prefix.is_some() => "range-serializable",
        (Cmd::Get(_), false) => "get-linearizable",
        (Cmd::Get(_), true) => "get-serializable",
        (Cmd::Mixed(_), _) => "mixed",
        (Cmd::Lease(_), _) => "lease-churn",
        (Cmd::Lock(_), _) => "lock",
        _ => "txn",
    }
}

async fn load(cli: &Cli, a: &LoadArgs) -> anyhow::Result<()> {
    let conns = a.conns.unwrap_or(a.clients.min(16)).max(1);
    let target = Target::connect(&cli.system, &cli.endpoints, conns).await?;
    let workload = match &cli.command {
        Cmd::Put(_) => Workload::Put,
        Cmd::Get(_) if a.prefix.is_some() => Workload::Scan {
            scan: Scan {
                prefix: a.prefix.clone().unwrap_or_default().into_bytes(),
                limit: a.limit,
                keys_only: a.keys_only,
                count_only: a.count_only,
                all_pages: a.all_pages,
            },
            serializable: a.serializable,
        },
        Cmd::Get(_) => Workload::Get {
            serializable: a.serializable,
        },
        Cmd::Mixed(_) => Workload::Mixed {
            read_percent: a.read_percent.min(100),
            serializable: a.serializable,
        },
        Cmd::Lease(_) => Workload::LeaseChurn,
        Cmd::Lock(_) => Workload::Lock {
            name: b"bench-lock".to_vec(),
        },
        _ => Workload::Txn,
    };
    if a.preload {
        let pre = Shape {
            workload: Workload::Fill,
            clients: 64.min(a.keys as usize).max(1),
            key_space: a.keys,
            key_size: a.key_size,
            value_size: a.value_size,
            duration: Duration::from_secs(1800),
            max_ops: a.keys,
        };
        let filled = load::run(&target, &pre, |_| {}).await;
        eprintln!(
            "preload: {} keys written in {:.1} s, {} errors",
            filled.ops,
            filled.elapsed.as_secs_f64(),
            filled.errors
        );
        if let Some(e) = &filled.first_error {
            anyhow::bail!("preload: not every key was written; first error: {e}");
        }
    }
    let shape = Shape {
        workload,
        clients: a.clients.max(1),
        key_space: a.keys.max(1),
        key_size: a.key_size,
        value_size: a.value_size,
        duration: a.duration,
        max_ops: a.ops,
    };
    let bar = if std::io::stderr().is_terminal() {
        ProgressBar::new_spinner()
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("{spinner} {elapsed} {msg}").unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    let before = raft_state(cli).await;
    let outcome = load::run(&target, &shape, |n| bar.set_message(format!("{n} ops"))).await;
    bar.finish_and_clear();
    let after = raft_state(cli).await;
    let secs = outcome.elapsed.as_secs_f64().max(1e-9);
    let rate = outcome.ops as f64 / secs;
    let h = &outcome.latency_us;
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let name = name(&cli.command, a);
    println!(
        "{} {name} clients={} conns={conns}: {} ops in {:.1} s = {rate:.0} ops/s; latency ms p50 {:.2} p90 {:.2} p99 {:.2} p99.9 {:.2} max {:.2}; errors {}",
        cli.system,
        a.clients,
        outcome.ops,
        secs,
        ms(0.5),
        ms(0.9),
        ms(0.99),
        ms(0.999),
        h.max() as f64 / 1000.0,
        outcome.errors
    );
    if let Some(e) = &outcome.first_error {
        println!("first error: {e}");
    }
    let elections = match (before, after) {
        (Some(b), Some(a)) => {
            let changed = a.leader != b.leader || a.term != b.term;
            println!(
                "raft: leader {} term {} before, leader {} term {} after: {}",
                b.leader,
                b.term,
                a.leader,
                a.term,
                if changed { "LEADERSHIP CHANGED" } else { "no election" }
            );
            json!({"leader_before": b.leader, "term_before": b.term, "leader_after": a.leader, "term_after": a.term})
        }
        _ => serde_json::Value::Null,
    };
    println!(
        "{}",
        json!({
            "system": cli.system, "workload": name, "clients": a.clients, "conns": conns,
            "key_size": a.key_size, "value_size": a.value_size, "ops": outcome.ops,
            "errors": outcome.errors, "seconds": secs, "ops_per_sec": rate,
            "p50_ms": ms(0.5), "p90_ms": ms(0.9), "p99_ms": ms(0.99), "p999_ms": ms(0.999),
            "max_ms": h.max() as f64 / 1000.0, "raft": elections,
        })
    );
    Ok(())
}

/// The leader and the highest term among the members (keel only): an election in between
/// shows as a higher term, whether or not the leader changed.
struct RaftState {
    leader: u64,
    term: u64,
}

async fn raft_state(cli: &Cli) -> Option<RaftState> {
    if !cli.system.starts_with("keel") {
        return None;
    }
    let statuses = target::keel_statuses(&cli.endpoints).await;
    let (_, leader) = statuses
        .iter()
        .find(|(_, s)| s.role == "leader" && s.leader_id == s.id)?;
    Some(RaftState {
        leader: leader.id,
        term: statuses.iter().map(|(_, s)| s.term).max().unwrap_or(0),
    })
}

async fn watch(cli: &Cli, a: &WatchArgs) -> anyhow::Result<()> {
    if !a.pids.is_empty() && a.pids.len() != cli.endpoints.len() {
        anyhow::bail!(
            "--pids: {} given for {} endpoints (one per endpoint, in their order)",
            a.pids.len(),
            cli.endpoints.len()
        );
    }
    let serving = match &a.serving {
        Some(e) => cli
            .endpoints
            .iter()
            .position(|x| x == e)
            .with_context(|| format!("--serving {e} is not one of --endpoints"))?,
        None => fanout::first_follower(&cli.system, &cli.endpoints).await?,
    };
    let f = fanout::FanOut {
        system: cli.system.clone(),
        endpoints: cli.endpoints.clone(),
        serving: cli.endpoints[serving].clone(),
        pid: a.pids.get(serving).copied(),
        watchers: a.watchers as usize,
        conns: a.conns as usize,
        rate: a.rate,
        duration: a.duration,
        value_size: a.value_size,
        prefix: a.prefix.clone().into_bytes(),
    };
    let out = fanout::run(&f).await?;
    let h = &out.latency_us;
    let ms = |q: f64| (h.value_at_quantile(q) as f64 / 10.0).round() / 100.0;
    let put_rate = out.puts as f64 / out.put_seconds.max(1e-9);
    let events_rate = out.delivered as f64 / out.delivery_seconds.max(1e-9);
    let mib = |kib: u64| round1(kib as f64 / 1024.0);
    println!(
        "{} watch fan-out: {} watchers on {} (created in {:.1} s), {} puts at {put_rate:.0}/s ({} failed); {} events at {events_rate:.0}/s, {} missing; delivery ms p50 {:.2} p99 {:.2} max {:.2}{}",
        cli.system,
        a.watchers,
        f.serving,
        out.setup_seconds,
        out.puts,
        out.put_errors,
        out.delivered,
        out.missing,
        ms(0.5),
        ms(0.99),
        h.max() as f64 / 1000.0,
        match out.rss {
            Some(r) => format!(
                "; RSS MiB {} before, {} watching, {} peak",
                mib(r.before),
                mib(r.watching),
                mib(r.peak)
            ),
            None => String::new(),
        }
    );
    if let Some(e) = &out.first_error {
        println!("first error: {e}");
    }
    println!(
        "{}",
        json!({
            "system": cli.system, "workload": "watch", "watchers": a.watchers, "serving": f.serving,
            "rate": a.rate, "puts": out.puts, "put_errors": out.put_errors, "puts_per_sec": put_rate,
            "events": out.delivered, "events_per_sec": events_rate, "missing": out.missing,
            "setup_seconds": out.setup_seconds, "p50_ms": ms(0.5), "p99_ms": ms(0.99),
            "max_ms": h.max() as f64 / 1000.0,
            "rss_mib_before": out.rss.map(|r| mib(r.before)), "rss_mib_watching": out.rss.map(|r| mib(r.watching)),
            "rss_mib_peak": out.rss.map(|r| mib(r.peak)),
        })
    );
    if out.missing > 0 {
        anyhow::bail!("{} acknowledged events never reached their watchers", out.missing);
    }
    Ok(())
}

async fn failover(cli: &Cli, a: &FailoverArgs) -> anyhow::Result<()> {
    let f = failover::Failover {
        system: cli.system.clone(),
        endpoints: cli.endpoints.clone(),
        rounds: a.rounds,
        restart_cmd: a.restart_cmd.clone(),
    };
    let times = failover::run(&f).await?;
    let mut ms: Vec<f64> = times.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    ms.sort_by(f64::total_cmp);
    let median = Spread::of(&ms).median;
    println!(
        "{} failover: {} rounds, median {median:.0} ms, all {ms:.0?}",
        cli.system,
        ms.len()
    );
    println!(
        "{}",
        json!({"system": cli.system, "workload": "failover", "rounds": ms.len(), "median_ms": median, "ms": ms})
    );
    Ok(())
}

async fn transfer(cli: &Cli, a: &TransferArgs) -> anyhow::Result<()> {
    if cli.system != "keel" {
        anyhow::bail!("transfer is keel only (--system {} given)", cli.system);
    }
    if let Some(bad) = cli.endpoints.iter().find(|e| e.trim().is_empty() || !e.contains(':')) {
        anyhow::bail!("--endpoints: {bad:?} is not host:port");
    }
    if a.settle > Duration::from_secs(600) {
        anyhow::bail!("--settle: at most 10m");
    }
    let t = transfer::Transfer {
        endpoints: cli.endpoints.clone(),
        rounds: a.rounds as usize,
        clients: a.clients as usize,
        settle: a.settle,
    };
    let out = transfer::run(&t).await?;
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let gaps: Vec<f64> = out.rounds.iter().map(|r| ms(r.gap)).collect();
    let rpcs: Vec<f64> = out.rounds.iter().map(|r| ms(r.rpc)).collect();
    let (gap, rpc) = (Spread::of(&gaps), Spread::of(&rpcs));
    let failed = out.rounds.iter().filter(|r| r.error.is_some()).count();
    let missed = out.rounds.iter().filter(|r| r.new_leader != Some(r.to)).count();
    println!(
        "keel transfer: {} rounds, clients={}: longest write gap ms min {:.1} median {:.1} max {:.1}; transfer rpc ms min {:.1} median {:.1} max {:.1}; {} writes, errors {}; {failed} transfers failed, {missed} ended with another leader than the target",
        out.rounds.len(),
        a.clients,
        gap.min,
        gap.median,
        gap.max,
        rpc.min,
        rpc.median,
        rpc.max,
        out.writes,
        out.errors,
    );
    if let Some(e) = &out.first_error {
        println!("first write error: {e}");
    }
    let per_round: Vec<serde_json::Value> = out
        .rounds
        .iter()
        .map(|r| {
            json!({"from": r.from, "to": r.to, "rpc_ms": round1(ms(r.rpc)), "gap_ms": round1(ms(r.gap)),
                   "gap_at_ms": round1(r.gap_at_ms), "writes_in_window": r.acks,
                   "new_leader": r.new_leader, "error": r.error})
        })
        .collect();
    println!(
        "{}",
        json!({
            "bench": "transfer", "system": "keel", "workload": "transfer", "rounds": out.rounds.len(),
            "clients": a.clients, "settle_ms": a.settle.as_millis() as u64, "gap_ms": gap.json(),
            "rpc_ms": rpc.json(), "writes": out.writes, "errors": out.errors,
            "failed_transfers": failed, "per_round": per_round,
        })
    );
    if failed > 0 {
        anyhow::bail!("{failed} of {} transfers failed", out.rounds.len());
    }
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    // Die quietly when stdout is closed (`keel-bench ... | head -1`), as command-line tools do,
    // instead of panicking in println!.
    // SAFETY: restoring the default disposition of a signal, before any other thread runs code
    // of ours.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let cli = Cli::parse();
    let result = match &cli.command {
        Cmd::Failover(a) => failover(&cli, a).await,
        Cmd::Transfer(a) => transfer(&cli, a).await,
        Cmd::Watch(a) => watch(&cli, a).await,
        Cmd::Put(a) | Cmd::Get(a) | Cmd::Mixed(a) | Cmd::Txn(a) | Cmd::Lease(a) | Cmd::Lock(a) => load(&cli, a).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
