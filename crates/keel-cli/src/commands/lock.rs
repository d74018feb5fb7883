//! `keelctl lock` and `keelctl elect`: a lease kept alive, and a lock held (or a campaign run)
//! on it, until the command ends or keelctl is interrupted.

use std::io::Write;
use std::time::Duration;

use anyhow::{anyhow, Context};
use keel_client::{Client, KeepAlive, LeaseState};

use super::Outcome;
use crate::args::{ElectArgs, Format, LockArgs};
use crate::output::lock as out;

/// How long a lock or a campaign may be waited for when no limit is given.
const FOR_EVER: Duration = Duration::from_secs(24 * 3600);

/// A lease granted and kept alive for as long as this lives; revoked at the end.
struct Session {
    client: Client,
    id: i64,
    keeper: KeepAlive,
}

impl Session {
    async fn start(client: &Client, ttl: i64) -> anyhow::Result<Session> {
        let id = client.lease_grant(ttl).await?.id;
        let mut keeper = client.keep_alive(id);
        keeper.started().await?;
        Ok(Session {
            client: client.clone(),
            id,
            keeper,
        })
    }

    /// Waits until the lease is gone or lost, and says so.
    async fn lost(&mut self) -> anyhow::Error {
        match self.keeper.ended().await {
            LeaseState::Lost(why) => anyhow!("lost the lease, and with it the lock: {why}"),
            _ => anyhow!("the lease expired or was revoked, and with it the lock"),
        }
    }

    async fn end(self) {
        drop(self.keeper);
        // Best effort: an unrevoked lease ends by itself within its TTL.
        let _ = self.client.lease_revoke(self.id).await;
    }
}

async fn interrupted() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = ctrl_c.await;
}

fn print(text: &str) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
        .map_err(|e| anyhow!("writing to stdout: {e}"))
}

pub async fn lock(client: &Client, args: &LockArgs, format: Format) -> anyhow::Result<Outcome> {
    if args.name.is_empty() {
        return Err(anyhow!("the lock name is empty"));
    }
    let mut session = Session::start(client, args.ttl).await?;
    let wait = args.wait.unwrap_or(FOR_EVER);
    let held = tokio::select! {
        held = client.lock(args.name.as_bytes(), session.id, wait) => held,
        e = session.lost() => return Err(e),
        _ = interrupted() => {
            session.end().await;
            return Err(anyhow!("interrupted while waiting for the lock"));
        }
    };
    let held = match held {
        Ok(held) => held,
        Err(e) => {
            session.end().await;
            return Err(e.into());
        }
    };
    print(&out::locked(&held, format))?;
    let result = if args.command.is_empty() {
        tokio::select! {
            e = session.lost() => Err(e),
            _ = interrupted() => Ok(Outcome::Done(String::new())),
        }
    } else {
        run_holding(&mut session, &args.command, &held).await
    };
    let _ = client.unlock(held.key.clone()).await;
    session.end().await;
    result
}

/// Run `command` while the lock is held; kill it if the lease is lost.
async fn run_holding(
    session: &mut Session,
    command: &[String],
    held: &keel_client::proto::LockResponse,
) -> anyhow::Result<Outcome> {
    let (program, rest) = command.split_first().context("no command given")?;
    let mut child = std::process::Command::new(program)
        .args(rest)
        .env("KEEL_LOCK_KEY", String::from_utf8_lossy(&held.key).as_ref())
        .env("KEEL_LOCK_TOKEN", held.fencing_token.to_string())
        .spawn()
        .with_context(|| format!("cannot run {program}"))?;
    loop {
        if let Some(status) = child.try_wait()? {
            // A command killed by a signal has no code: 1, as for any failure.
            let code = status.code().map_or(1, |c| u8::try_from(c).unwrap_or(1));
            return Ok(Outcome::Exit(code));
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            e = session.lost() => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(e);
            }
            _ = interrupted() => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(anyhow!("interrupted; {program} was stopped and the lock released"));
            }
        }
    }
}

pub async fn elect(client: &Client, args: &ElectArgs, format: Format) -> anyhow::Result<Outcome> {
    if args.name.is_empty() {
        return Err(anyhow!("the election name is empty"));
    }
    let mut observe = client.observe(args.name.as_bytes());
    if args.listen {
        loop {
            tokio::select! {
                leader = observe.next() => print(&out::leader(&leader?, format))?,
                _ = interrupted() => return Ok(Outcome::Done(String::new())),
            }
        }
    }
    let proposal = args.proposal.clone().unwrap_or_default();
    let mut session = Session::start(client, args.ttl).await?;
    let campaign = tokio::select! {
        led = client.campaign(args.name.as_bytes(), session.id, proposal.as_bytes(), FOR_EVER) => led,
        e = session.lost() => return Err(e),
        _ = interrupted() => {
            session.end().await;
            return Err(anyhow!("interrupted while campaigning"));
        }
    };
    let leader = match campaign {
        Ok(resp) => resp.leader.context("the server named no leader key")?,
        Err(e) => {
            session.end().await;
            return Err(e.into());
        }
    };
    // Leading: print the leaders as they change (this one first) until interrupted.
    let result = loop {
        tokio::select! {
            next = observe.next() => match next {
                Ok(l) => print(&out::leader(&l, format))?,
                Err(e) => break Err(e.into()),
            },
            e = session.lost() => break Err(e),
            _ = interrupted() => break Ok(Outcome::Done(String::new())),
        }
    };
    let _ = client.resign(leader).await;
    session.end().await;
    result
}
