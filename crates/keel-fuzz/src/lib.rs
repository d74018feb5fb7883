//! # keel-fuzz: fuzz targets for every decoder that reads bytes from outside
//!
//! A keel member reads bytes that it did not write itself from five places: client requests
//! (keel's own gRPC API and etcd's), peer messages (Raft's RPCs, forwarded work, snapshot
//! streams), snapshot and backup files, its own sled records (which a damaged disk or a forged
//! data directory can change), and its configuration (a TOML file and the command line). Each
//! decoder must answer any input with a value or an error: never a panic, a hang, or an
//! allocation out of proportion to the input. The targets in `tests/` hold them to that, one file
//! per source of input, with [`proptest`] on stable Rust (no libFuzzer, no nightly), so that
//! `cargo test --workspace` runs every target for a bounded number of cases and
//! `scripts/fuzz.sh --minutes N` runs them for longer with fresh seeds.
//!
//! What this library gives the targets:
//! - [`check`]: runs one target with the case count of the run ([`cases`], from
//!   `KEEL_FUZZ_CASES`), fails a case that panics or runs longer than [`SLOW_CASE`], keeps
//!   every failure's seed in `regressions/<target>.txt` (replayed first by every later run, so
//!   CI replays each finding for good), and reports the cases it ran.
//! - [`alloc`]: a counting global allocator, so a target can bound what one decode allocates
//!   ([`alloc::bounded`]): a length prefix that claims 2^60 bytes must be refused before
//!   anything is allocated for it.
//! - [`bytes_target!`]: the one-line target for a decoder of arbitrary bytes. A decoder added
//!   later (an auth token, say) gets its target as one line in `tests/tokens.rs`.

pub mod alloc;
pub mod gen;
pub mod model;

use std::fs::OpenOptions;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub use proptest;
use proptest::strategy::Strategy;
use proptest::test_runner::{Config, FileFailurePersistence, TestCaseError, TestError, TestRunner};

/// Cases per target when `KEEL_FUZZ_CASES` is not set: what `cargo test --workspace` runs.
pub const DEFAULT_CASES: u32 = 256;

/// A case that takes longer than this (in a debug build) is a finding: a decoder that is slow
/// on some input is one an attacker can keep busy.
pub const SLOW_CASE: Duration = Duration::from_secs(5);

/// How much one case of a target costs, relative to a plain decode: targets that open a
/// database or start a runtime run a fraction of the cases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cost {
    /// A decode in memory: all the cases.
    Cheap,
    /// Files on disk, or a parser as heavy as clap's: a quarter.
    Moderate,
    /// A sled database per case or more: a sixteenth.
    Expensive,
}

/// The number of cases of the run, for a target of cost `cost`: `KEEL_FUZZ_CASES` (or
/// [`DEFAULT_CASES`]), divided by the cost's factor, at least 1.
pub fn cases(cost: Cost) -> u32 {
    let base = std::env::var("KEEL_FUZZ_CASES")
        .ok()
        .and_then(|v| v.trim().parse::<u32>().ok())
        .unwrap_or(DEFAULT_CASES);
    let divisor = match cost {
        Cost::Cheap => 1,
        Cost::Moderate => 4,
        Cost::Expensive => 16,
    };
    (base / divisor).max(1)
}

/// Where the seeds of `target`'s failures are kept (and replayed from).
pub fn regression_file(target: &str) -> String {
    format!("{}/regressions/{target}.txt", env!("CARGO_MANIFEST_DIR"))
}

/// Run `target`: `test` on [`cases`] values drawn from `strategy`, after every seed kept in its
/// regression file. Panics (failing the test) with the minimized input if a case fails, panics or
/// is slow. On success prints `keel-fuzz: TARGET: N cases in S s`, and appends `TARGET N S` to
/// the file named by `KEEL_FUZZ_STATS` if set (scripts/fuzz.sh adds them up).
pub fn check<S, F>(target: &str, cost: Cost, strategy: S, test: F)
where
    S: Strategy + 'static,
    S::Value: std::fmt::Debug,
    F: Fn(S::Value) -> Result<(), TestCaseError>,
{
    let config = Config {
        cases: cases(cost),
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(leak(regression_file(target))))),
        // Shrinking a slow case can take long; a minute is plenty for what these inputs are.
        max_shrink_time: 60_000,
        ..Config::default()
    };
    // Boxed: the runner's frames for a deeply nested strategy type, unoptimized, overflowed a
    // test thread's 2 MiB stack before any decoder ran.
    let strategy = strategy.boxed();
    let mut runner = TestRunner::new(config);
    let ran = AtomicU64::new(0);
    let started = Instant::now();
    let result = runner.run(&strategy, |value| {
        ran.fetch_add(1, Ordering::Relaxed);
        let case = Instant::now();
        test(value)?;
        let took = case.elapsed();
        if took > SLOW_CASE {
            return Err(TestCaseError::fail(format!(
                "a case took {took:?} (more than {SLOW_CASE:?})"
            )));
        }
        Ok(())
    });
    let secs = started.elapsed().as_secs_f64();
    let ran = ran.load(Ordering::Relaxed);
    match result {
        Ok(()) => {
            println!("keel-fuzz: {target}: {ran} cases in {secs:.1} s");
            if let Ok(path) = std::env::var("KEEL_FUZZ_STATS") {
                if let Ok(mut f) = OpenOptions::new().create(true).append(true).open(path) {
                    let _ = writeln!(f, "{target} {ran} {secs:.1}");
                }
            }
        }
        Err(TestError::Fail(why, value)) => {
            panic!(
                "keel-fuzz: {target} FAILED: {why}\nminimal failing input: {value:#?}\n(seed kept in {})",
                regression_file(target)
            )
        }
        Err(TestError::Abort(why)) => panic!("keel-fuzz: {target} aborted: {why}"),
    }
}

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

/// Turn a panic inside `f` into an ordinary error naming `what`, so that a target can run a
/// decoder and assert it did not panic with `?`. (The runner also catches panics; this keeps
/// the message short and names the decoder.)
pub fn no_panic<R>(what: &str, f: impl FnOnce() -> R) -> Result<R, TestCaseError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|p| {
        let msg = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "(no message)".into());
        TestCaseError::fail(format!("{what} panicked: {msg}"))
    })
}

/// A target for a decoder of arbitrary bytes, in one line: `bytes_target!(name, |bytes| ...)`
/// defines the test `name`, which hands the decoder arbitrary byte strings (up to 4 KiB, and
/// some that start like a format byte, a length prefix or a varint), and fails if it panics, is
/// slow, or allocates beyond [`alloc::bounded`]'s budget for the input. The decoder's result is
/// ignored: any value or error is fine.
///
/// ```ignore
/// keel_fuzz::bytes_target!(auth_token, |bytes| keel_server::auth::decode_token(bytes));
/// ```
#[macro_export]
macro_rules! bytes_target {
    ($name:ident, $decode:expr) => {
        #[test]
        fn $name() {
            let decode = $decode;
            $crate::check(
                stringify!($name),
                $crate::Cost::Cheap,
                $crate::gen::bytes(4096),
                |bytes: Vec<u8>| {
                    let _ = $crate::alloc::bounded(stringify!($name), bytes.len(), || decode(&bytes[..]))?;
                    Ok(())
                },
            );
        }
    };
}
