//! `keel`: run one node. See `keel --help`, and `deploy/keel.toml` for every setting.

use std::process::ExitCode;

use keel_server::config::{Config, LogFormat};
use keel_server::{start, Listeners};
use tracing_subscriber::EnvFilter;

/// jemalloc rather than glibc's malloc. Measured here (release, 3 members on this machine): a
/// member holding 1M keys of 256 bytes took 508-522 MiB RSS instead of 621-807 MiB (glibc's
/// arenas fragment under many threads allocating small, short-lived buffers), and put at 256
/// clients went 1.11x faster (medians of 3 fresh clusters each, A B / B A order; 1.02x at 1 and
/// 64 clients). On the leader under 64 writing clients, glibc's allocator had taken about 15% of
/// the samples. mimalloc was faster still at 64 and 256 clients (1.15x, 1.19x) but held 57% more
/// memory on an idle cluster and raised p99. Only the binary chooses; the library and its tests
/// keep the system allocator.
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn init_tracing(config: &Config) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.log_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// Wait for SIGTERM or SIGINT. The handlers are installed when this is called (not when it is
/// awaited), so call it before anything slow: a signal during startup must not kill the node
/// with the default action.
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = &'static str>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        }
    })
}

/// Hold (block) or release SIGTERM and SIGINT on the calling thread. `main` holds them from its
/// first line, and every thread it starts inherits that, until `run` has installed their
/// handlers and releases them on its own thread: a stop sent while the node starts is then
/// delivered to the handler, and the node shuts down gracefully. Without this a SIGTERM in the
/// first 20 ms or so after exec (longer on a busy machine) met the default action and killed the
/// process (exit 143; t02 saw it when a test stopped a member it had just restarted).
fn hold_stop_signals(hold: bool) {
    // SAFETY: sigemptyset/sigaddset initialise a local set; pthread_sigmask changes only the
    // calling thread's mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        let how = if hold { libc::SIG_BLOCK } else { libc::SIG_UNBLOCK };
        libc::pthread_sigmask(how, &set, std::ptr::null_mut());
    }
}

async fn run(config: Config) -> anyhow::Result<()> {
    let signal = shutdown_signal()?;
    // `block_on` runs this on main's thread, which takes the signals from here on.
    hold_stop_signals(false);
    let listeners = Listeners::bind(&config).await?;
    let handle = start(config, listeners).await?;
    tokio::select! {
        signal = signal => {
            tracing::info!(signal, "shutting down");
            Ok(handle.shutdown().await?)
        }
        why = handle.failed() => {
            // Best effort: the rest of the cluster carries on either way.
            if let Err(e) = tokio::time::timeout(std::time::Duration::from_secs(10), handle.shutdown()).await {
                tracing::warn!(error = %e, "shutdown after a failure did not finish in 10 s");
            }
            Err(anyhow::anyhow!("stopped: {why}"))
        }
    }
}

fn main() -> ExitCode {
    hold_stop_signals(true);
    use clap::CommandFactory;
    // clap prints --help/--version (exit 0) and flag errors (exit 2) itself.
    let matches = keel_server::config::Settings::command().get_matches();
    let config = match keel_server::config::Settings::from_matches(&matches).and_then(Config::resolve) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("keel: {e}");
            return ExitCode::from(2);
        }
    };
    init_tracing(&config);
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.worker_threads(worker_threads()).enable_all();
    // See `worker_threads`: a task woken into a worker's LIFO slot cannot be stolen, so it waits
    // for whatever that worker is blocked in.
    #[cfg(tokio_unstable)]
    builder.disable_lifo_slot();
    let runtime = match builder.build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("keel: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    #[cfg(not(tokio_unstable))]
    tracing::warn!(
        "built without --cfg tokio_unstable (a RUSTFLAGS variable replaced .cargo/config.toml): \
         tokio's LIFO slot stays on, and Raft's core can wait behind a worker blocked in sled"
    );
    runtime.spawn(watch_for_stalls());
    let result = runtime.block_on(run(config));
    // Dropping the runtime would wait for every blocking task, and one stuck in a failed disk
    // (a flush on a full filesystem) would keep a failed member's process alive for good.
    runtime.shutdown_timeout(std::time::Duration::from_secs(5));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("keel: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runtime worker threads: at least [`MIN_WORKERS`], and one per core beyond that. sled 0.34
/// does its IO in whichever thread touches a tree's node, readers included: a get can split a
/// leaf and write it out, and with 1 MiB values that is a 6-14 MiB blob file (tens to hundreds
/// of milliseconds on a busy disk). openraft's own tasks read the log and apply entries that
/// way. With tokio's default of one worker per core, two such calls on a 2-core machine
/// stopped every task, Raft's core and heartbeats among them, for up to 290 ms (measured by
/// [`watch_for_stalls`] in t30's busy-machine run); with eight, the longest stall seen was
/// about 80 ms. Idle workers cost nothing but a parked thread.
///
/// More workers were not enough: the core still stopped for 200-300 ms now and then while the
/// runtime ran on, because a task woken into a worker's LIFO slot (tokio's "run the task just
/// woken next" heuristic) cannot be stolen by the other workers, and the state machine worker
/// or a replication task that woke the core then blocked that worker in sled. With the slot
/// disabled, t30's busy-machine run (release build) kept its leader in 6 of 6 runs, against
/// about 1 in 2 before.
fn worker_threads() -> usize {
    std::thread::available_parallelism().map_or(MIN_WORKERS, |n| n.get().max(MIN_WORKERS))
}

const MIN_WORKERS: usize = 8;

/// Log when the async runtime falls behind: a task that asks to wake every 10 ms and wakes more
/// than [`STALL_WARNING`] late means that every worker was busy or blocked that long, which
/// delays heartbeats and answers as much (as etcd's "slow fdatasync" points at a slow disk).
async fn watch_for_stalls() {
    const TICK: std::time::Duration = std::time::Duration::from_millis(10);
    loop {
        let started = std::time::Instant::now();
        tokio::time::sleep(TICK).await;
        let late = started.elapsed().saturating_sub(TICK);
        if late > STALL_WARNING {
            tracing::warn!(late_ms = late.as_millis() as u64, "the async runtime stalled");
        }
    }
}

const STALL_WARNING: std::time::Duration = std::time::Duration::from_millis(100);
