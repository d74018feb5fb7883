//! member list, status.

use anyhow::anyhow;
use futures::future::join_all;
use keel_client::Client;

use super::{deadline_message, Outcome};
use crate::args::Format;
use crate::output::cluster::{self as out, StatusRow};

pub async fn member_list(client: &Client, format: Format) -> anyhow::Result<Outcome> {
    let resp = client.member_list().await?;
    Ok(Outcome::Done(out::members(&resp, format)))
}

/// Asks every member for its status, in parallel, one attempt each, so a dead member costs one
/// connection attempt rather than a full retry loop. The members come from the member list; if
/// that cannot be read (no leader, say), the endpoints given on the command line stand in, since
/// a member's own status is what tells why.
pub async fn status(client: &Client, format: Format) -> anyhow::Result<Outcome> {
    type Target = (Option<u64>, String, String);
    let (targets, list_error): (Vec<Target>, _) = match client.member_list().await {
        Ok(resp) => {
            let mut members: Vec<Target> = resp
                .members
                .into_iter()
                .map(|m| (Some(m.id), m.client_addr, m.peer_addr))
                .collect();
            members.sort();
            (members, None)
        }
        Err(err) => (
            client
                .endpoints()
                .into_iter()
                .map(|e| (None, e, String::new()))
                .collect(),
            Some(err),
        ),
    };
    let timeout = client.config().timeout;
    let rows: Vec<StatusRow> = join_all(targets.into_iter().map(|(id, client_addr, peer_addr)| async move {
        let result = if client_addr.is_empty() {
            Err("member has no client address".to_string())
        } else {
            client.status_of(&client_addr).await.map_err(|e| match e {
                keel_client::Error::DeadlineExceeded => deadline_message(timeout),
                other => other.to_string(),
            })
        };
        StatusRow {
            id,
            client_addr,
            peer_addr,
            result,
        }
    }))
    .await;
    let mut rows = rows;
    fill_unpublished(client, &mut rows).await;
    if rows.iter().any(|r| r.result.is_ok()) {
        return Ok(Outcome::Done(out::status(&rows, format)));
    }
    Err(match list_error {
        Some(err) => err.into(),
        None => {
            let first = rows.iter().find_map(|r| r.result.as_ref().err());
            anyhow!(
                "no member answered: {}",
                first.map_or("the member list is empty", |e| e.as_str())
            )
        }
    })
}

/// `status` again and again, every `every`, until interrupted (Ctrl-C ends keelctl). A table
/// redraws in place on a terminal; other formats print one document per round. A round that
/// fails prints its error and the watch goes on, since the cluster coming back is what one
/// watches for.
pub async fn watch(client: &Client, format: Format, every: std::time::Duration) -> anyhow::Result<Outcome> {
    use std::io::IsTerminal;
    let redraw = format == Format::Table && std::io::stdout().is_terminal();
    loop {
        let round = status(client, format).await;
        if redraw {
            // Clear the screen and go home.
            print!("\x1b[2J\x1b[H");
        }
        match round {
            Ok(Outcome::Done(text) | Outcome::CompareFailed(text) | Outcome::NotPromoted { output: text, .. }) => {
                print!("{text}")
            }
            Ok(Outcome::Exit(_)) => {}
            Err(e) => println!("{e:#}"),
        }
        if redraw {
            println!("\nevery {} (Ctrl-C to stop)", humantime::format_duration(every));
        }
        tokio::time::sleep(every).await;
    }
}

/// A member that has not yet published its client address (it does so shortly after a leader
/// appears) may still be among the `--endpoints`: ask the endpoints that matched no member, and
/// fill in whichever member answers by id.
async fn fill_unpublished(client: &Client, rows: &mut [StatusRow]) {
    if !rows.iter().any(|r| r.client_addr.is_empty()) {
        return;
    }
    let known: Vec<String> = rows.iter().map(|r| r.client_addr.clone()).collect();
    let spare: Vec<String> = client.endpoints().into_iter().filter(|e| !known.contains(e)).collect();
    let answers = join_all(spare.iter().map(|e| client.status_of(e))).await;
    for (endpoint, answer) in spare.into_iter().zip(answers) {
        let Ok(status) = answer else { continue };
        if let Some(row) = rows
            .iter_mut()
            .find(|r| r.id == Some(status.id) && r.client_addr.is_empty())
        {
            row.client_addr = endpoint;
            row.result = Ok(status);
        }
    }
}
