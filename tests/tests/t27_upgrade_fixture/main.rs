//! Upgrade fixture: data directories written by the release before the openraft 0.10 port, and
//! the check that the current build opens them and serves every key, revision and session
//! unchanged.
//!
//! The procedure under test is a full-cluster restart: every old member is stopped (SIGTERM),
//! then new members start on the same data directories with the same command lines.
//! `fixture_opens_and_serves_everything` does that with `tests/fixtures/openraft-0.9/` and checks
//! every fact the old build recorded in `facts.json` (see the README there); `make_fixture`
//! (ignored) regenerates the fixture, and must be run with the old build.
//!
//! The members listen on fixed addresses, 127.77.0.N:7001 (client), :7101 (peer) and :7201
//! (metrics): the Raft membership in the data directories names the peer addresses, so starting
//! the members elsewhere would be a membership change, not an upgrade. No other test uses
//! 127.77/16, and the ports are outside the testkit's (20000-31999).
//!
//! Only the gRPC API and the `keel` binary are used, so that these files compile unchanged on both
//! sides of the port.
//!
//! One test binary, in modules: `cluster` (the three `keel` processes at the fixed addresses and
//! what they report), `requests` (the requests sent and the answers recorded), `check` (the new
//! build serves what the facts say) and `make` (the old build writes the data set and records
//! the facts).

#[macro_use]
mod cluster;

mod check;
mod make;
mod requests;

use std::process::Command;

use anyhow::ensure;
use serde_json::Value;
use tonic::Code;

use check::check;
use cluster::{fixed_addresses_usable, logs, Node};
use make::make;

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/openraft-0.9");
const IDS: [u64; 3] = [1, 2, 3];
/// The old cluster's settings, given to the new build unchanged. A snapshot every 50 entries:
/// every member has snapshots and log entries after the newest, and, with over 1000 entries
/// behind it (the number kept), a purged head of its log.
const FLAGS: [&str; 4] = ["--snapshot-logs", "50", "--election-timeout-ms", "150-300"];
/// Calls that surely did not apply, safe to repeat.
const RETRY: &[Code] = &[Code::Unavailable];
/// An exactly-once write may also be repeated after an unknown outcome: it applies once.
const SESSION_RETRY: &[Code] = &[Code::Unavailable, Code::DeadlineExceeded, Code::Unknown];
/// Session client ids of the data set ("keel" in the high bytes).
const S1: u64 = 0x6b65_656c_0000_0001;
const S2: u64 = 0x6b65_656c_0000_0002;
const S3: u64 = 0x6b65_656c_0000_0003;

/// Both tests use the fixed addresses: never at once (as with `--include-ignored`).
static FIXED_ADDRESSES: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fixture_opens_and_serves_everything() -> anyhow::Result<()> {
    let _fixed = FIXED_ADDRESSES.lock().await;
    if !fixed_addresses_usable()? {
        eprintln!("SKIPPED fixture_opens_and_serves_everything: this machine cannot bind 127.77.0.x");
        return Ok(());
    }
    let facts: Value = serde_json::from_slice(&std::fs::read(format!("{FIXTURE}/facts.json"))?)?;
    let dir = tempfile::tempdir()?;
    let tarball = format!("{FIXTURE}/cluster.tar.gz");
    let tar = Command::new("tar")
        .arg("-xzf")
        .arg(tarball)
        .arg("-C")
        .arg(dir.path())
        .status()?;
    ensure!(tar.success(), "tar: {tar}");
    // The full-cluster restart: all three members start, with the current build, on the old data.
    let mut nodes = Node::all(dir.path());
    for n in &mut nodes {
        n.start()?;
    }
    let checked = check(&facts, &mut nodes).await;
    if checked.is_err() {
        eprintln!("{}", logs(&nodes));
    }
    checked
}

/// Run with the OLD (pre-port) build to regenerate the fixture, in a checkout of the old
/// release (commit d24d6c7) with this directory (`tests/tests/t27_upgrade_fixture/`) copied in:
///
/// ```text
/// cargo build -p keel-server --bin keel
/// cargo test -p keel-tests --test t27_upgrade_fixture -- --ignored make_fixture
/// ```
///
/// then copy `tests/fixtures/openraft-0.9/` into the new tree. Run with a newer build, it would
/// make a fixture of that build instead, and prove nothing about the upgrade.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "run with the OLD (pre-port) build to regenerate tests/fixtures/openraft-0.9"]
async fn make_fixture() -> anyhow::Result<()> {
    let _fixed = FIXED_ADDRESSES.lock().await;
    ensure!(fixed_addresses_usable()?, "this machine cannot bind 127.77.0.x");
    std::fs::create_dir_all(FIXTURE)?;
    let dir = tempfile::tempdir()?;
    let mut nodes = Node::all(dir.path());
    for n in &mut nodes {
        n.start()?;
    }
    let made = make(&mut nodes, dir.path()).await;
    if made.is_err() {
        eprintln!("{}", logs(&nodes));
    }
    made
}
