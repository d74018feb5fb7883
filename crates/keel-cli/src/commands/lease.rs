//! `keelctl lease`: grant, revoke, keep alive, time to live, list.

use std::io::Write;

use anyhow::anyhow;
use keel_client::{Client, LeaseState};

use super::Outcome;
use crate::args::Format;
use crate::output::lease as out;

pub async fn grant(client: &Client, ttl: i64, format: Format) -> anyhow::Result<Outcome> {
    let resp = client.lease_grant(ttl).await?;
    Ok(Outcome::Done(out::granted(&resp, format)))
}

pub async fn revoke(client: &Client, id: i64, format: Format) -> anyhow::Result<Outcome> {
    let resp = client.lease_revoke(id).await?;
    Ok(Outcome::Done(out::revoked(id, &resp, format)))
}

pub async fn time_to_live(client: &Client, id: i64, keys: bool, format: Format) -> anyhow::Result<Outcome> {
    let resp = client.lease_time_to_live(id, keys).await?;
    if resp.ttl < 0 {
        return Err(anyhow!("lease {} not found (expired or revoked)", out::hex(id)));
    }
    Ok(Outcome::Done(out::time_to_live(&resp, keys, format)))
}

pub async fn list(client: &Client, format: Format) -> anyhow::Result<Outcome> {
    let resp = client.leases().await?;
    Ok(Outcome::Done(out::list(&resp, format)))
}

/// Renew until interrupted, one line per renewal; the client moves between members as they
/// fail. Ends with an error once the lease is gone or ran out unrenewed.
pub async fn keep_alive(client: &Client, id: i64, once: bool, format: Format) -> anyhow::Result<Outcome> {
    if once {
        let ttl = client.lease_keep_alive_once(id).await?;
        if ttl <= 0 {
            return Err(gone(id));
        }
        return Ok(Outcome::Done(out::renewed(id, ttl, format)));
    }
    let mut keeper = client.keep_alive(id);
    let mut stdout = std::io::stdout().lock();
    let mut state = keeper.state();
    loop {
        match &state {
            LeaseState::Starting => {}
            LeaseState::Alive { ttl, .. } => {
                stdout
                    .write_all(out::renewed(id, ttl.as_secs() as i64, format).as_bytes())
                    .and_then(|()| stdout.flush())
                    .map_err(|e| anyhow!("writing to stdout: {e}"))?;
            }
            LeaseState::Gone => return Err(gone(id)),
            LeaseState::Lost(why) => return Err(anyhow!("lease {} ran out unrenewed: {why}", out::hex(id))),
        }
        state = keeper.changed().await;
    }
}

fn gone(id: i64) -> anyhow::Error {
    anyhow!("lease {} not found (expired or revoked)", out::hex(id))
}
