//! The crash tests' child process (`keel-storage-torture`) and what they share: spawn it, read
//! what it reports, kill it, and read back a reopened store.

#![allow(dead_code)] // Each test binary uses its own part.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use keel_storage::{KeyRange, RangeOp};
use openraft::storage::RaftStateMachine;
use rand::rngs::StdRng;
use rand::SeedableRng;

const TORTURE: &str = env!("CARGO_BIN_EXE_keel-storage-torture");

pub fn rounds() -> usize {
    std::env::var("KEEL_CRASH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(50)
}

pub fn rng(test: &str) -> StdRng {
    let seed = std::env::var("KEEL_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    eprintln!("{test}: KEEL_CRASH_SEED={seed}");
    StdRng::seed_from_u64(seed)
}

/// A running child and the lines it printed.
pub struct Torture {
    pub child: Child,
    lines: mpsc::Receiver<String>,
    stderr: Option<std::thread::JoinHandle<String>>,
}

impl Torture {
    pub fn spawn(mode: &str, dir: &Path, seed: u64, extra: &[&str]) -> Torture {
        let mut child = Command::new(TORTURE)
            .arg(mode)
            .arg(dir)
            .arg(seed.to_string())
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn keel-storage-torture");
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        // Kept so that a panic in the child (a bug, not a crash we injected) fails the test.
        let stderr = std::thread::spawn(move || {
            BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
                .collect::<Vec<_>>()
                .join("\n")
        });
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Torture {
            child,
            lines,
            stderr: Some(stderr),
        }
    }

    /// After the child has exited: fail if it panicked.
    pub fn check_no_panic(&mut self) {
        let stderr = self.stderr.take().expect("checked once").join().expect("stderr reader");
        assert!(!stderr.contains("panicked"), "torture child panicked:\n{stderr}");
    }

    /// The next line, waiting at most `timeout`.
    pub fn line(&self, timeout: Duration) -> Option<String> {
        self.lines.recv_timeout(timeout).ok()
    }

    /// SIGKILL the child, wait for it, and return every line it printed before dying.
    pub fn kill(mut self, mut seen: impl FnMut(&str)) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("wait");
        // The pipe holds what was printed before the kill; the reader thread ends at EOF.
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(10)) {
            seen(&line);
        }
        self.check_no_panic();
    }

    /// Read lines until `deadline`, passing each to `seen`.
    pub fn run_until(&self, deadline: Instant, seen: &mut impl FnMut(&str)) {
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) => seen(&line),
                Err(mpsc::RecvTimeoutError::Timeout) => return,
                Err(mpsc::RecvTimeoutError::Disconnected) => panic!("torture child exited early"),
            }
        }
    }
}

pub fn field(line: &str, i: usize) -> u64 {
    line.split_whitespace()
        .nth(i)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad line {line:?}"))
}

pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// Reads the whole state machine of the store in `dir`: (applied index, revision, every pair).
pub fn sm_state(store: &mut keel_storage::Store) -> (u64, u64, Vec<keel_storage::KeyValue>) {
    let (applied, _) = rt().block_on(store.sm.applied_state()).expect("applied state");
    let reader = store.sm.reader();
    let (all, rev) = reader
        .range(&RangeOp::new(KeyRange::Prefix(Vec::new())))
        .expect("read all");
    assert_eq!(all.count, reader.key_count(), "key count out of step with the data");
    (applied.map_or(0, |l| l.index), rev, all.kvs)
}
