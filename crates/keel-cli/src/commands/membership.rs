//! member add / promote / remove, leader transfer.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use keel_client::proto::{Member, MemberAddRequest, MemberListResponse, ResponseHeader};
use keel_client::{Client, Error, Outcome as WireOutcome};

use super::Outcome;
use crate::args::{Format, MemberAddArgs};
use crate::output::cluster as out;

/// Print a membership the way `member list` does.
fn members(header: Option<ResponseHeader>, members: Vec<Member>, format: Format) -> String {
    out::members(&MemberListResponse { header, members }, format)
}

pub async fn add(client: &Client, args: &MemberAddArgs, format: Format) -> anyhow::Result<Outcome> {
    let request = MemberAddRequest {
        id: args.id,
        peer_addr: args.peer_addr.clone(),
        client_addr: args.client_addr.clone(),
    };
    let added = match client.member_add(request).await {
        Ok(added) => MemberListResponse {
            header: added.header,
            members: added.members,
        },
        // Running the command again (after exit 4, say) carries on where it stopped.
        Err(Error::Refused(WireOutcome::MemberExists, msg)) => {
            let list = client.member_list().await?;
            match list.members.iter().find(|m| m.id == args.id) {
                Some(m) if m.peer_addr == args.peer_addr && m.is_learner => {
                    eprintln!("member {} is already a learner at {}", args.id, args.peer_addr);
                    list
                }
                Some(m) if m.peer_addr == args.peer_addr => {
                    eprintln!("member {} is already a voter at {}", args.id, args.peer_addr);
                    return Ok(Outcome::Done(out::members(&list, format)));
                }
                _ => bail!(msg),
            }
        }
        Err(e) => return Err(e.into()),
    };
    if args.learner {
        return Ok(Outcome::Done(out::members(&added, format)));
    }
    // Promote once caught up: no window in which an empty voter counts toward the quorum.
    // Promoting is idempotent, so a promotion whose outcome is unknown is simply asked again.
    let deadline = Instant::now() + args.catch_up_timeout;
    let mut last_report = None;
    let give_up = |why: String| {
        Ok(Outcome::NotPromoted {
            output: out::members(&added, format),
            message: format!(
                "added as learner {id}; not promoted: {why}; promote it with `keelctl member promote {id}` \
                 once it has caught up, or run this command again",
                id = args.id
            ),
        })
    };
    loop {
        let waiting_on = match client.member_promote(args.id).await {
            Ok(resp) => {
                eprintln!("member {}: caught up and promoted to voter", args.id);
                return Ok(Outcome::Done(members(resp.header, resp.members, format)));
            }
            // A learner that is behind, or that has acknowledged nothing yet: a node started just
            // before `member add` may not even listen yet, and the leader hears from a new learner
            // only after its first append round trip. Waiting cures both.
            Err(Error::Refused(WireOutcome::LearnerCatchingUp, msg)) => msg,
            Err(e) if e.is_transient() => e.to_string(),
            Err(e) => return give_up(e.to_string()),
        };
        if Instant::now() >= deadline {
            return give_up(format!(
                "still not caught up after {} (--catch-up-timeout): {waiting_on}",
                humantime::format_duration(args.catch_up_timeout)
            ));
        }
        if last_report.as_ref() != Some(&waiting_on) {
            eprintln!("member {}: waiting to promote it: {waiting_on}", args.id);
            last_report = Some(waiting_on);
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
