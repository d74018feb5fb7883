//! `keel-chaos`: chaos runs against a local cluster, for soaks (`scripts/chaos.sh`) and CI.
//!
//! Each run starts a fresh three-node cluster of `keel` processes behind the proxy network,
//! drives the workload under the nemesis, checks the history, prints the report and, after
//! several runs, a summary table. Exit status: 0 if every run passed, 1 if any failed, 2 for bad
//! flags. Node logs and the history of a failed run are kept under `--artifacts`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use keel_testkit::chaos::{self, Fault, Report, Target};
use keel_testkit::compose::{self, Compose};
use keel_testkit::history::{check_linearizable_with, CheckOptions, History};
use keel_testkit::{Backend, Cluster, Options};

#[derive(Parser, Debug)]
#[command(
    name = "keel-chaos",
    about = "Fault-injection runs against a local keel cluster, checked for linearizability"
)]
struct Args {
    /// Length of one run, in seconds.
    #[arg(long, default_value_t = 60)]
    duration: u64,
    /// Seed of the first run (later runs add 1 each); random if not given.
    #[arg(long)]
    seed: Option<u64>,
    /// Comma-separated faults: kill, pause, partition, delay, membership, transfer, power (power
    /// cuts put every node on a lazy filesystem; skipped without FUSE).
    #[arg(long, default_value = "kill,pause,partition,delay,membership,transfer,power", value_delimiter = ',', value_parser = parse_faults)]
    faults: Vec<Fault>,
    /// Hold up to two faults at once (a kill during a partition, a power cut while another node
    /// is paused, ...).
    #[arg(long)]
    overlap: bool,
    /// process: keel processes behind the proxy network; in-process: nodes inside this program
    /// (no pause); docker: the compose deployment, image built from the binaries next to this
    /// one (kill, pause and partition only).
    #[arg(long, default_value = "process", value_parser = ["process", "in-process", "docker"])]
    backend: String,
    /// Number of consecutive runs.
    #[arg(long, default_value_t = 1)]
    runs: u32,
    /// Concurrent clients.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Keys the clients share.
    #[arg(long, default_value_t = 8)]
    keys: usize,
    /// Where failed runs leave their node logs and history.
    #[arg(long, default_value = "target/chaos")]
    artifacts: PathBuf,
    /// Run nothing: check a history that a failed run kept (its `history.jsonl`) again, with
    /// `--max-steps` search steps per key.
    #[arg(long, value_name = "FILE")]
    check: Option<PathBuf>,
    /// Search steps per key for `--check`.
    #[arg(long, default_value_t = CheckOptions::default().max_steps_per_key)]
    max_steps: u64,
}

fn parse_faults(s: &str) -> Result<Fault, String> {
    let names: Vec<&str> = Fault::ALL.iter().map(|f| f.name()).collect();
    Fault::parse(s.trim()).ok_or_else(|| format!("unknown fault {s:?} ({})", names.join(", ")))
}

fn random_seed() -> u64 {
    rand::random::<u64>() % 1_000_000_000
}

fn config(args: &Args, seed: u64) -> chaos::Config {
    let mut config = chaos::Config::new(seed, Duration::from_secs(args.duration));
    config.schedule.faults = args.faults.clone();
    config.schedule.overlap = args.overlap;
    config.load.clients = args.clients;
    config.load.keys = args.keys;
    config
}

/// One run; a failed run's node logs and report are kept under `--artifacts`.
async fn one_run(args: &Args, seed: u64) -> anyhow::Result<Report> {
    let config = config(args, seed);
    if args.backend == "docker" {
        let Some(tool) = compose::compose_tool() else {
            anyhow::bail!("no Docker engine or compose tool reachable");
        };
        let bin_dir = keel_testkit::keel_binary()?
            .parent()
            .map(PathBuf::from)
            .unwrap_or_default();
        let mut d = Compose::up(tool, &format!("keelchaos{}", std::process::id()), &bin_dir).await?;
        let report = chaos::run(&mut d, &config).await?;
        if !report.passed() {
            let logs = (1..=3)
                .map(|n| {
                    let out = d.compose(&["logs", "--no-color", &format!("node{n}")]).output();
                    let text = out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
                    (format!("node{n}.log"), text.unwrap_or_default())
                })
                .collect();
            keep_artifacts(args, &report, logs);
        }
        return Ok(report);
    }
    let backend = match args.backend.as_str() {
        "in-process" => Backend::InProcess,
        _ => Backend::Process,
    };
    let options = Options {
        nodes: 3,
        // Frequent snapshots, so that restarted and new members are also caught up by
        // snapshot installation, not only by the log.
        flags: vec!["--snapshot-logs".into(), "500".into()],
        network: Some(seed),
        lazy_disks: backend == Backend::Process && args.faults.contains(&Fault::Power) && lazy_disks_here(),
        ..Options::default()
    };
    let mut cluster = Cluster::start(backend, options).await?;
    let report = chaos::run(&mut cluster, &config).await?;
    if !report.passed() {
        let ids: Vec<u64> = (1..=cluster.members().into_iter().max().unwrap_or(3)).collect();
        let logs = ids
            .into_iter()
            .map(|id| (format!("node{id}.log"), cluster.log(id)))
            .collect();
        keep_artifacts(args, &report, logs);
    }
    if let Err(e) = cluster.shutdown().await {
        println!("shutdown after the run failed: {e:#}");
    }
    Ok(report)
}

/// Whether power cuts can run here (FUSE); says why not, once.
fn lazy_disks_here() -> bool {
    static WHY: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    let why = WHY.get_or_init(|| {
        let why = keel_testkit::lazyfs::unavailable();
        if let Some(why) = &why {
            println!("power cuts are skipped: no lazy filesystem here: {why}");
        }
        why
    });
    why.is_none()
}

/// Keep what a failed run leaves behind: every node's log, the report and the history.
fn keep_artifacts(args: &Args, report: &Report, logs: Vec<(String, String)>) {
    let dir = args.artifacts.join(format!("seed-{}", report.seed));
    let result = std::fs::create_dir_all(&dir).and_then(|()| {
        for (name, text) in &logs {
            std::fs::write(dir.join(name), text)?;
        }
        let history = std::fs::File::create(dir.join("history.jsonl"))?;
        report.history.write_jsonl(std::io::BufWriter::new(history))?;
        std::fs::File::create(dir.join("report.txt"))?.write_all(report.to_string().as_bytes())
    });
    match result {
        Ok(()) => println!("artifacts: {}", dir.display()),
        Err(e) => println!("could not keep artifacts in {}: {e}", dir.display()),
    }
}

/// `--check FILE`: the linearizability verdict on a kept history. Exit status 0 if it holds, 1
/// if not (or the search gave up), 2 if the file cannot be read.
fn check_file(path: &std::path::Path, max_steps: u64) -> ExitCode {
    let history = std::fs::File::open(path)
        .map_err(|e| e.to_string())
        .and_then(|f| History::read_jsonl(std::io::BufReader::new(f)));
    let history = match history {
        Ok(h) => h,
        Err(e) => {
            eprintln!("keel-chaos: cannot read {}: {e}", path.display());
            return ExitCode::from(2);
        }
    };
    let started = std::time::Instant::now();
    let verdict = check_linearizable_with(
        &history,
        &CheckOptions {
            max_steps_per_key: max_steps,
        },
    );
    let took = started.elapsed().as_secs_f64();
    println!("{} operations checked in {took:.2} s", history.ops.len());
    match verdict {
        Ok(()) => {
            println!("linearizable: yes");
            ExitCode::SUCCESS
        }
        Err(v) => {
            println!("linearizable: NO: {v}");
            ExitCode::from(1)
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(path) = &args.check {
        return check_file(path, args.max_steps);
    }
    let first = args.seed.unwrap_or_else(random_seed);
    let mut summary = Vec::new();
    for run in 0..args.runs {
        let seed = if args.seed.is_some() {
            first + u64::from(run)
        } else {
            random_seed()
        };
        println!("=== run {}/{} seed {seed}", run + 1, args.runs);
        match one_run(&args, seed).await {
            Ok(report) => {
                println!("{report}");
                summary.push((seed, Some(report)));
            }
            Err(e) => {
                println!("run could not be carried out: {e:#}");
                summary.push((seed, None));
            }
        }
    }
    println!("\n| run | seed | ops ok / failed / unknown | writes acked | after heal | recovery | linearizable | lost writes | replicas agree | watchers agree | locks: increments = counter, fenced off | leases kept / lost, expired | verdict |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    let mut all_passed = true;
    for (i, (seed, report)) in summary.iter().enumerate() {
        let Some(r) = report else {
            all_passed = false;
            println!("| {} | {seed} | - | - | - | - | - | - | - | - | - | - | ERROR |", i + 1);
            continue;
        };
        all_passed &= r.passed();
        let ok = r.puts.ok + r.gets.ok + r.cases.ok;
        let failed = r.puts.failed + r.gets.failed + r.cases.failed;
        let unknown = r.puts.unknown + r.gets.unknown + r.cases.unknown;
        let yes = |b: bool| if b { "yes" } else { "NO" };
        println!(
            "| {} | {seed} | {ok} / {failed} / {unknown} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            i + 1,
            r.acknowledged_writes(),
            r.writes_after_heal,
            r.recovery
                .as_ref()
                .map_or("NO".to_string(), |d| format!("{:.1} s", d.as_secs_f64())),
            yes(r.linearizable.is_ok()),
            if r.no_lost_writes.is_ok() { "0" } else { "SOME" },
            yes(r.replicas_agree.is_ok()),
            r.watches
                .as_ref()
                .map_or("NO".to_string(), |(n, moves)| format!("yes ({n}, {moves} moves)")),
            r.coordination.as_ref().map_or("NO".to_string(), |c| format!(
                "{} = {}, {}",
                c.increments, c.counter, c.fenced_off
            )),
            r.coordination.as_ref().map_or("NO".to_string(), |c| format!(
                "{} / {}, {} all",
                c.leases_kept, c.leases_lost, c.abandoned
            )),
            if r.passed() { "PASS" } else { "FAIL" },
        );
    }
    if all_passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
