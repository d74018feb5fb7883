//! keelctl: the command-line client for keel. The verbs, flags, exit codes and JSON output are a
//! contract (see the README): 0 ok, 1 error (one line on stderr), 2 usage, 3 compare failed, 4
//! `member add` added a learner but did not promote it (one line on stderr saying so).

mod args;
mod commands;
mod output;
mod tls_hint;

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;

use commands::Outcome;

fn main() -> ExitCode {
    let cli = args::Cli::parse();
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| anyhow::anyhow!("cannot start the async runtime: {e}"))
        .and_then(|runtime| runtime.block_on(commands::run(&cli)));
    match result {
        Ok(Outcome::Done(text)) => {
            print_stdout(&text);
            ExitCode::SUCCESS
        }
        Ok(Outcome::CompareFailed(text)) => {
            print_stdout(&text);
            ExitCode::from(3)
        }
        Ok(Outcome::Exit(code)) => ExitCode::from(code),
        Ok(Outcome::NotPromoted { output, message }) => {
            print_stdout(&output);
            let _ = writeln!(std::io::stderr(), "{}", message.replace('\n', " "));
            ExitCode::from(4)
        }
        Err(err) => {
            // One line, whatever the error chain holds, so scripts can log it as is.
            let mut message = format!("{err:#}").replace('\n', " ");
            if let Some(hint) = tls_hint::hint(&message, cli.speaks_tls()) {
                message = format!("{message} (hint: {hint})");
            }
            let _ = writeln!(std::io::stderr(), "error: {message}");
            ExitCode::from(1)
        }
    }
}

/// Writes without print!'s panic when stdout is a closed pipe (`keelctl get ... | head`).
fn print_stdout(text: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush());
}
