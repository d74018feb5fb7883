//! The check of the upgrade: after the full-cluster restart, every member serves every key,
//! revision and session the old build recorded in `facts.json`; new writes and an old session
//! go on where they stopped; a restart of one member changes nothing.

use anyhow::{bail, ensure, Context};
use keel_proto::v1::KeyValue;
use serde_json::Value;
use tonic::Code;

use crate::cluster::{members, status, wait_applied, wait_for_leader, Node};
use crate::requests::{hex, new_kv, num, put_req, range, same_answer, send, session_put, split_answer, unhex};
use crate::{IDS, RETRY, S1, SESSION_RETRY};

/// A pair, readably, for failure messages.
pub fn show(kv: Option<&KeyValue>) -> String {
    kv.map_or("nothing".into(), |kv| {
        let (key, value) = (String::from_utf8_lossy(&kv.key), String::from_utf8_lossy(&kv.value));
        let value: String = value.chars().take(40).collect();
        let (c, m, v) = (kv.create_revision, kv.mod_revision, kv.version);
        format!(
            "{key:?} = {value:?} ({} bytes; create {c}, mod {m}, version {v})",
            kv.value.len()
        )
    })
}

/// Member `id` serves exactly `expected`, linearizably, at store revision `revision`: every key,
/// value, create and mod revision and version, no other key, and none of `absent`.
pub async fn assert_serves(id: u64, expected: &[KeyValue], absent: &[Vec<u8>], revision: u64) -> anyhow::Result<()> {
    let all = call!(id, RETRY, range, range(b"", true, false))?;
    let at = all.header.as_ref().map_or(0, |h| h.revision);
    ensure!(at == revision, "member {id} is at revision {at}, not {revision}");
    ensure!(!all.more, "member {id} cut the response");
    if all.kvs != expected {
        let i = expected.iter().zip(&all.kvs).take_while(|(e, g)| e == g).count();
        let (e, g) = (show(expected.get(i)), show(all.kvs.get(i)));
        bail!(
            "member {id}: {} pairs, {} expected; at #{i} {e} expected, {g} served",
            all.kvs.len(),
            expected.len()
        );
    }
    let count = call!(id, RETRY, range, range(b"", true, true))?.count;
    ensure!(count == expected.len() as u64, "member {id} counts {count} keys");
    for key in absent {
        let got = call!(id, RETRY, range, range(key, false, false))?;
        ensure!(
            got.kvs.is_empty(),
            "member {id} serves deleted {}",
            show(got.kvs.first())
        );
    }
    Ok(())
}

pub async fn check(facts: &Value, nodes: &mut [Node]) -> anyhow::Result<()> {
    let leader = wait_for_leader().await?;
    let revision = num(facts, "revision")?;
    let cluster_id = facts["cluster_id"].as_str().context("cluster_id")?;
    // Each member has at least what it had applied, in the same cluster, in no older term.
    for old in facts["nodes"].as_array().context("nodes")? {
        let id = num(old, "id")?;
        let s = wait_applied(id, num(old, "applied_index")?).await?;
        let same_cluster = s.header.as_ref().is_some_and(|h| h.cluster_id == cluster_id);
        let not_older = s.term >= num(old, "term")? && s.last_log_index >= num(old, "last_log_index")?;
        ensure!(same_cluster && not_older, "member {id}: {s:?}, the old build's {old}");
    }
    let members = members(leader).await?;
    ensure!(
        members == facts["members"],
        "members {members}, the old build's {}",
        facts["members"]
    );
    let mut expected = Vec::new();
    for k in facts["keys"].as_array().context("keys")? {
        let (key, value, version) = (unhex(&k["key"])?, unhex(&k["value"])?, num(k, "version")?);
        let (create_revision, mod_revision) = (num(k, "create_revision")?, num(k, "mod_revision")?);
        expected.push(KeyValue {
            key,
            value,
            create_revision,
            mod_revision,
            version,
        });
    }
    let absent = facts["absent"]
        .as_array()
        .context("absent")?
        .iter()
        .map(|a| unhex(&a["key"]));
    let absent = absent.collect::<anyhow::Result<Vec<_>>>()?;
    for id in IDS {
        assert_serves(id, &expected, &absent, revision).await?;
    }

    // Every recorded exactly-once write, sent again through a follower: the newest of each session
    // gets the old build's answer from the session table and applies nothing; older ones are stale.
    let follower = IDS.into_iter().find(|id| *id != leader).context("no follower")?;
    let mut newest_s1 = 0;
    for s in facts["sessions"].as_array().context("sessions")? {
        let (client, seq, old) = (num(s, "client_id")?, num(s, "seq")?, unhex(&s["answer"])?);
        let kind = s["kind"].as_str().context("kind")?;
        let got = send(kind, &unhex(&s["request"])?, follower, SESSION_RETRY).await?;
        let what = format!("session {client:x} seq {seq}, sent again");
        match (got, s["newest_of_session"].as_bool()) {
            (Ok(got), Some(true)) => ensure!(same_answer(&got, &old)?, "{what}: {}, not {}", hex(&got), hex(&old)),
            (Err(e), Some(false)) if e.code() == Code::FailedPrecondition && e.message().starts_with("stale") => {}
            (got, newest) => bail!("{what} (newest of its session: {newest:?}): {got:?}"),
        }
        if client == S1 {
            newest_s1 = newest_s1.max(seq);
        }
    }
    assert_serves(leader, &expected, &absent, revision).await?;

    // New writes take the next revisions; an old session goes on where it stopped.
    let put = call!(leader, RETRY, put, put_req("upgrade/after", "new"))?;
    let at = put.header.map(|h| h.revision);
    ensure!(at == Some(revision + 1), "the first new write is at revision {at:?}");
    expected.push(new_kv("upgrade/after", "new", revision + 1));
    let next = session_put("upgrade/session", "s1", S1, newest_s1 + 1);
    let first = send("put", &next, follower, SESSION_RETRY).await??;
    ensure!(
        split_answer(&first)?.0.revision == revision + 2,
        "new session write: {}",
        hex(&first)
    );
    let again = send("put", &next, leader, SESSION_RETRY).await??;
    ensure!(
        same_answer(&first, &again)?,
        "a retry of a new session write: {}",
        hex(&again)
    );
    expected.push(new_kv("upgrade/session", "s1", revision + 2));
    expected.sort_by(|a, b| a.key.cmp(&b.key));
    assert_serves(follower, &expected, &absent, revision + 2).await?;

    // A restart of one member (the leader: it hands over first) keeps every member serving it all.
    let old_leader = nodes.iter_mut().find(|n| n.id == leader).context("leader")?;
    old_leader.stop().await?;
    old_leader.start()?;
    let new_leader = wait_for_leader().await?;
    let last = status(new_leader).await.context("leader down")?.last_log_index;
    for id in IDS {
        wait_applied(id, last).await?;
        assert_serves(id, &expected, &absent, revision + 2).await?;
    }
    let put = call!(leader, RETRY, put, put_req("upgrade/after-restart", "v"))?;
    let at = put.header.map(|h| h.revision);
    ensure!(
        at == Some(revision + 3),
        "the write after the restart is at revision {at:?}"
    );
    for n in nodes.iter_mut() {
        n.stop().await?;
    }
    Ok(())
}
