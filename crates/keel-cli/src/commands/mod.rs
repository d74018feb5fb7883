//! The verbs: each turns parsed arguments into requests and the response into printed output.

mod auth;
mod cert;
mod cluster;
mod kv;
mod lease;
mod lock;
mod membership;
mod snapshot;
mod watch;

use std::time::Duration;

use anyhow::anyhow;
use keel_client::{Client, ClientConfig};

use crate::args::{Cli, Command, KeyRangeArgs, LeaderCommand, LeaseCommand, MemberCommand, SnapshotCommand};

/// What a verb printed, and how keelctl should exit.
#[derive(Debug)]
pub enum Outcome {
    /// Exit 0.
    Done(String),
    /// A compare-and-swap found the key not as expected: exit 3.
    CompareFailed(String),
    /// `member add` added the learner but did not promote it: exit 4. `output` (the membership)
    /// goes to stdout, `message` (one line saying so, and why) to stderr.
    NotPromoted { output: String, message: String },
    /// `lock -- COMMAND` ran COMMAND: exit with its code.
    Exit(u8),
}

pub async fn run(cli: &Cli) -> anyhow::Result<Outcome> {
    if let Command::Cert(command) = &cli.command {
        return cert::run(command);
    }
    let mut config = ClientConfig::with_timeout(cli.timeout);
    if let Some(user) = &cli.user {
        config.user = Some(auth::credentials(user)?);
    }
    if let Some(ca) = &cli.cacert {
        config.tls = Some(
            keel_client::TlsConfig::from_files(ca, cli.cert.as_deref(), cli.key.as_deref())
                .map_err(|e| client_error(e, cli.timeout))?,
        );
    } else if cli.cert.is_some() {
        return Err(anyhow!(
            "--cert and --key need --cacert (the CA to check the servers against)"
        ));
    }
    let client = Client::connect(cli.endpoints.clone(), config)
        .await
        .map_err(|e| client_error(e, cli.timeout))?;
    let format = cli.output;
    match &cli.command {
        Command::Put(args) => kv::put(&client, args, format).await,
        Command::Get(args) => kv::get(&client, args, format).await,
        Command::Del(args) => kv::del(&client, args, format).await,
        Command::Cas(args) => kv::cas(&client, args, format).await,
        Command::Watch(args) => watch::watch(&client, args, format).await,
        Command::Member(MemberCommand::List) => cluster::member_list(&client, format).await,
        Command::Status(args) => match args.watch {
            Some(every) => cluster::watch(&client, format, every).await,
            None => cluster::status(&client, format).await,
        },
        Command::Member(MemberCommand::Add(args)) => membership::add(&client, args, format).await,
        Command::Member(MemberCommand::Promote { id }) => membership::promote(&client, *id, format).await,
        Command::Member(MemberCommand::Remove { id, force }) => membership::remove(&client, *id, *force, format).await,
        Command::Leader(LeaderCommand::Transfer { to }) => membership::transfer(&client, *to, format).await,
        Command::Snapshot(SnapshotCommand::Save { file }) => snapshot::save(&client, file, format).await,
        Command::Snapshot(SnapshotCommand::Inspect { file }) => snapshot::inspect(file, format),
        Command::Snapshot(SnapshotCommand::Restore(args)) => snapshot::restore(args, format),
        Command::Lease(LeaseCommand::Grant { ttl }) => lease::grant(&client, *ttl, format).await,
        Command::Lease(LeaseCommand::Revoke { id }) => lease::revoke(&client, *id, format).await,
        Command::Lease(LeaseCommand::KeepAlive { id, once }) => lease::keep_alive(&client, *id, *once, format).await,
        Command::Lease(LeaseCommand::Timetolive { id, keys }) => lease::time_to_live(&client, *id, *keys, format).await,
        Command::Lease(LeaseCommand::List) => lease::list(&client, format).await,
        Command::Lock(args) => lock::lock(&client, args, format).await,
        Command::Elect(args) => lock::elect(&client, args, format).await,
        Command::User(cmd) => auth::user(&client, cmd, format).await,
        Command::Role(cmd) => auth::role(&client, cmd, format).await,
        Command::Auth(cmd) => auth::auth(&client, cmd, format).await,
        Command::Cert(_) => unreachable!("handled above"),
    }
    .map_err(|e| match e.downcast::<keel_client::Error>() {
        Ok(e) => client_error(e, cli.timeout),
        Err(e) => e,
    })
}

/// A client error as one line for people. Most client errors already name their cause; a bare
/// deadline gets the deadline added.
fn client_error(err: keel_client::Error, timeout: Duration) -> anyhow::Error {
    match err {
        keel_client::Error::DeadlineExceeded => anyhow!("{}", deadline_message(timeout)),
        keel_client::Error::NoEndpoints => anyhow!("no endpoints given (--endpoints or KEEL_ENDPOINTS)"),
        other => anyhow!(other),
    }
}

fn deadline_message(timeout: Duration) -> String {
    format!(
        "deadline exceeded: no answer within {} (--timeout)",
        humantime::format_duration(timeout)
    )
}

/// Rejects an empty key before it reaches the server, where it would be rejected anyway.
fn require_key(key: &str) -> anyhow::Result<()> {
    if key.is_empty() {
        Err(anyhow!("key is empty"))
    } else {
        Ok(())
    }
}

/// The key, range end and prefix flag a request carries for `args`. An empty key means "from the
/// start" for a range, but names no key on its own.
fn key_range(args: &KeyRangeArgs) -> anyhow::Result<(Vec<u8>, Vec<u8>, bool)> {
    let ranged = args.prefix || args.from_key || args.range_end.is_some();
    if !ranged {
        require_key(&args.key)?;
    }
    let range_end = if args.from_key {
        // "\0" is the proto's spelling of "to the end of the key space".
        vec![0]
    } else {
        args.range_end.as_deref().unwrap_or_default().as_bytes().to_vec()
    };
    Ok((args.key.as_bytes().to_vec(), range_end, args.prefix))
}
