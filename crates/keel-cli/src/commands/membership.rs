//! member add / promote / remove, leader transfer.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use keel_client::proto::{Member, MemberAddRequest, MemberListResponse, ResponseHeader};
use keel_client::{Client, Error};

use super::Outcome;
use crate::args::{Format, MemberAddArgs};
use crate::output::cluster as out;

/// Print a membership the way `member list` does.
fn members(header: Option<ResponseHeader>, members: Vec<Member>, format: Format) -> String {
    out::members(&MemberListResponse { header, members }, format)
}

pub async fn add(client: &Client, args: &MemberAddArgs, format: Format) -> anyhow::Result<Outcome> {
    let added = client
        .member_add(MemberAddRequest {
            id: args.id,
            peer_addr: args.peer_addr.clone(),
            client_addr: args.client_addr.clone(),
        })
        .await?;
    if args.learner {
        return Ok(Outcome::Done(members(added.header, added.members, format)));
    }
    // Promote once caught up: no window in which an empty voter counts toward the quorum.
    let deadline = Instant::now() + args.catch_up_timeout;
    let mut last_report = None;
    loop {
        match client.member_promote(args.id).await {
            Ok(resp) => {
                eprintln!("member {}: caught up and promoted to voter", args.id);
                return Ok(Outcome::Done(members(resp.header, resp.members, format)));
            }
            Err(Error::FailedPrecondition(msg)) if msg.contains("behind") => {
                if last_report.as_ref() != Some(&msg) {
                    eprintln!("member {}: {msg}", args.id);
                    last_report = Some(msg);
                }
            }
            Err(e) => return Err(e.into()),
        }
        if Instant::now() >= deadline {
            bail!(
                "member {} is still a learner: it did not catch up within {:?}; promote it later with \
                 `keelctl member promote {}`",
                args.id,
                args.catch_up_timeout,
                args.id
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub async fn promote(client: &Client, id: u64, format: Format) -> anyhow::Result<Outcome> {
    let resp = client.member_promote(id).await?;
    Ok(Outcome::Done(members(resp.header, resp.members, format)))
}

pub async fn remove(client: &Client, id: u64, force: bool, format: Format) -> anyhow::Result<Outcome> {
    let resp = client.member_remove(id, force).await?;
    Ok(Outcome::Done(members(resp.header, resp.members, format)))
}

pub async fn transfer(client: &Client, to: Option<u64>, format: Format) -> anyhow::Result<Outcome> {
    let resp = client.leader_transfer(to).await?;
    if let Some(want) = to {
        if resp.leader_id != want {
            return Err(anyhow!(
                "leadership went to member {} instead of {want}",
                resp.leader_id
            ));
        }
    }
    Ok(Outcome::Done(match format {
        Format::Json => serde_json::json!({
            "leader_id": resp.leader_id,
            "header": resp.header.map(|h| serde_json::json!({
                "cluster_id": h.cluster_id, "member_id": h.member_id, "revision": h.revision,
                "raft_term": h.raft_term, "leader_id": h.leader_id,
            })),
        })
        .to_string(),
        _ => format!("OK: member {} is the leader", resp.leader_id),
    }))
}
