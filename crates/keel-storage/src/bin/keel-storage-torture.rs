//! Crash-test child for keel-storage: writes to a store and reports on stdout what the store
//! acknowledged, so that a parent can kill it at any moment (SIGKILL) and check, after reopening,
//! that nothing acknowledged is missing. Used by `tests/crash.rs` and `scripts/crash-storage.sh`.
//!
//! ```text
//! keel-storage-torture log DIR SEED [--wait-go]   append entries from 4 concurrent writers
//!     OPEN <last_log_index> <vote_term>              after opening
//!     ACK <first> <last>                            entries first..=last are durable
//!     VOTE <term>                                   vote with this term is durable
//!     PURGING <index>                               about to purge up to index
//!     PURGE <index>                                 purge up to index returned (not synced)
//!     ERR <message>                                 the store refused a write
//! keel-storage-torture sm DIR SEED [--sync-thread]  apply entries to the state machine
//!     OPEN <applied_index>
//!     APPLIED <index>                               apply returned (not necessarily durable)
//!     SNAP <index>                                  snapshot built: state durable up to index
//! ```
//! With `--sync-thread` another thread syncs the database over and over meanwhile, as a node's
//! log flusher does while its state machine applies (so that a power cut finds syncs that ran
//! beside applies). With `--wait-go` the log writer waits for a line on stdin before writing (the parent attaches
//! a fault injector first). Entry contents are a pure function of the index, see
//! `keel_storage::testing::torture_entry`.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use keel_storage::testing::torture_entry;
use keel_storage::{CommandResult, Entry, StoreConfig};
use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::{RaftLogReader, RaftSnapshotBuilder};

/// xorshift64*: enough randomness for batch sizes, without a dependency.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545F4914F6CDD1D) % n
    }
}

fn say(line: String) {
    let mut out = std::io::stdout().lock();
    // The parent may be gone; then there is nobody left to tell.
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn usage() -> ! {
    eprintln!("usage: keel-storage-torture log|sm DIR SEED [--wait-go]");
    std::process::exit(2);
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 4 {
        usage();
    }
    let dir = PathBuf::from(&args[2]);
    let seed: u64 = args[3].parse().unwrap_or_else(|_| usage());
    let wait_go = args.iter().any(|a| a == "--wait-go");
    let sync_thread = args.iter().any(|a| a == "--sync-thread");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let code = match args[1].as_str() {
        "log" => rt.block_on(log_mode(dir, seed | 1, wait_go)),
        "sm" => rt.block_on(sm_mode(dir, seed | 1, sync_thread)),
        _ => usage(),
    };
    std::process::exit(code);
}

async fn log_mode(dir: PathBuf, seed: u64, wait_go: bool) -> i32 {
    let mut store = match keel_storage::open(&dir, &StoreConfig::default()) {
        Ok(s) => s,
        Err(e) => {
            say(format!("ERR open: {e}"));
            return 1;
        }
    };
    // The log alone: nothing is applied, so purges must not wait for the state machine.
    store.log = store.log.without_purge_gate();
    let state = store.log.get_log_state().await.expect("log state");
    let vote = store.log.read_vote().await.expect("read vote");
    let last = state.last_log_id.map_or(0, |l| l.index);
    say(format!("OPEN {last} {}", vote.map_or(0, |v| v.leader_id.term)));
    if wait_go {
        let mut line = String::new();
        let _ = std::io::stdin().lock().read_line(&mut line);
    }
    // Four writers claim consecutive index ranges and append them concurrently, so several
    // appends wait on the same group commit.
    let next = Arc::new(AtomicU64::new(last + 1));
    let failed = Arc::new(Mutex::new(false));
    let mut writers = Vec::new();
    for w in 0..4u64 {
        let mut log = store.log.clone();
        let (next, failed) = (next.clone(), failed.clone());
        writers.push(tokio::spawn(async move {
            let mut rng = Rng(seed.wrapping_add(w.wrapping_mul(0x9E3779B97F4A7C15)));
            loop {
                let n = 1 + rng.below(32);
                let first = next.fetch_add(n, Ordering::SeqCst);
                let entries: Vec<Entry> = (first..first + n).map(torture_entry).collect();
                match log.blocking_append(entries).await {
                    Ok(()) => say(format!("ACK {} {}", first, first + n - 1)),
                    Err(e) => {
                        say(format!("ERR append: {e}"));
                        *failed.lock().expect("lock") = true;
                        return;
                    }
                }
            }
        }));
    }
    let mut term = vote.map_or(0, |v| v.leader_id.term);
    let mut rng = Rng(seed);
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(1 + rng.below(5))).await;
        if *failed.lock().expect("lock") {
            break;
        }
        term += 1;
        match store.log.save_vote(&openraft::Vote::new(term, 1)).await {
            Ok(()) => say(format!("VOTE {term}")),
            Err(e) => {
                say(format!("ERR vote: {e}"));
                break;
            }
        }
        let acked_floor = next.load(Ordering::SeqCst).saturating_sub(2000);
        if rng.below(4) == 0 && acked_floor > 0 {
            // Announced first: the purge may reach the disk even if we are killed before it returns.
            say(format!("PURGING {acked_floor}"));
            let id = keel_storage::log_id_at(1, 1, acked_floor);
            match store.log.purge(id).await {
                Ok(()) => say(format!("PURGE {acked_floor}")),
                Err(e) => say(format!("ERR purge: {e}")),
            }
        }
    }
    for w in writers {
        let _ = w.await;
    }
    3
}

async fn sm_mode(dir: PathBuf, seed: u64, sync_thread: bool) -> i32 {
    let mut store = match keel_storage::open(&dir, &StoreConfig::default()) {
        Ok(s) => s,
        Err(e) => {
            say(format!("ERR open: {e}"));
            return 1;
        }
    };
    let (applied, _) = store.sm.applied_state().await.expect("applied state");
    let mut next = applied.map_or(1, |l| l.index + 1);
    say(format!("OPEN {}", next - 1));
    if sync_thread {
        let dur = store.durability.clone();
        std::thread::spawn(move || loop {
            if let Err(e) = dur.sync() {
                say(format!("ERR sync: {e}"));
                return;
            }
            std::thread::sleep(std::time::Duration::from_micros(300));
        });
    }
    let mut rng = Rng(seed);
    loop {
        let n = 1 + rng.below(50);
        let entries: Vec<Entry> = (next..next + n).map(torture_entry).collect();
        match store.sm.apply_entries(entries) {
            Ok(responses) => {
                assert!(responses.iter().all(|r| r.result != CommandResult::None));
                next += n;
                say(format!("APPLIED {}", next - 1));
            }
            Err(e) => {
                say(format!("ERR apply: {e}"));
                return 1;
            }
        }
        if rng.below(40) == 0 {
            let mut builder = store.sm.get_snapshot_builder().await;
            match builder.build_snapshot().await {
                Ok(s) => say(format!("SNAP {}", s.meta.last_log_id.map_or(0, |l| l.index))),
                Err(e) => {
                    say(format!("ERR snapshot: {e}"));
                    return 1;
                }
            }
        }
    }
}
