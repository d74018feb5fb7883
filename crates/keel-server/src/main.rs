//! `keel`: run one node. See `keel --help`, and `deploy/keel.toml` for every setting.

use std::process::ExitCode;

use keel_server::config::{Config, LogFormat};
use keel_server::{start, Listeners};
use tracing_subscriber::EnvFilter;

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

async fn run(config: Config) -> anyhow::Result<()> {
    let signal = shutdown_signal()?;
    let listeners = Listeners::bind(&config).await?;
    let handle = start(config, listeners).await?;
    let signal = signal.await;
    tracing::info!(signal, "shutting down");
    handle.shutdown().await
}

fn main() -> ExitCode {
    use clap::Parser;
    // clap prints --help/--version (exit 0) and flag errors (exit 2) itself.
    let flags = keel_server::config::Flags::parse();
    let file = match &flags.config {
        Some(path) => keel_server::config::read_file(path),
        None => Ok(Default::default()),
    };
    let config = match file.and_then(|file| Config::resolve(flags, file)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("keel: {e}");
            return ExitCode::from(2);
        }
    };
    init_tracing(&config);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("keel: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("keel: {e:#}");
            ExitCode::FAILURE
        }
    }
}
