//! A short chaos run on the process backend: keel processes behind the fault-injecting proxy
//! network and on lazy disks, with every fault kind (power cuts included) mixed from a random
//! seed, up to two at once (printed; `KEEL_CHAOS_SEED` replays it). The history must be linearizable, no acknowledged write may be lost, every replica must
//! end with the same data, and writes must succeed again once the faults end. Long soaks are
//! `scripts/chaos.sh`; the docker backend's run is part of t13.

use std::time::Duration;

use keel_testkit::chaos;
use keel_testkit::{lazyfs, Backend, Cluster, Options};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_chaos_run_on_processes_is_linearizable_and_loses_nothing() -> anyhow::Result<()> {
    let seed = chaos::seed_from_env();
    let secs = std::env::var("KEEL_CHAOS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(45);
    let lazy_disks = match lazyfs::unavailable() {
        None => true,
        Some(why) => {
            eprintln!("power cuts are SKIPPED in this run: no lazy filesystem here: {why}");
            false
        }
    };
    let options = Options {
        flags: vec!["--snapshot-logs".into(), "500".into()],
        network: Some(seed),
        lazy_disks,
        ..Options::default()
    };
    let mut cluster = Cluster::start(Backend::Process, options).await?;
    // Every fault kind, up to two at once: leader transfers to members that cannot take over
    // joined after two soaks of `scripts/chaos.sh --duration 60 --runs 20` passed 20 of 20, power
    // cuts and overlaps after `scripts/chaos.sh --overlap --duration 60 --runs 20` did.
    let mut config = chaos::Config::new(seed, Duration::from_secs(secs));
    config.schedule.overlap = true;
    let report = chaos::run(&mut cluster, &config).await?;
    println!("{report}");
    if !report.passed() {
        cluster.print_log_tails(40);
    }
    assert!(
        report.passed(),
        "chaos run failed (KEEL_CHAOS_SEED={seed} replays it):\n{report}"
    );
    cluster.shutdown().await
}
