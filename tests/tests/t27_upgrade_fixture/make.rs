//! The making of the fixture, run with the old build: the data set written through the leader
//! (every exactly-once write recorded with its answer), the members settled with snapshots and
//! a log tail after them, the facts read back, and the stopped cluster's data directories packed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use keel_proto::v1::compare::Target;
use keel_proto::v1::request_op::Request;
use keel_proto::v1::{
    DeleteRangeRequest, PutRequest, RequestOp, StatusResponse, TxnRequest, TxnResponse, WriteSession,
};
use serde_json::{json, Value};
use tonic_prost::prost::Message;

use crate::cluster::{members, status, wait_applied, wait_for_leader, Node};
use crate::requests::{bytes, compare, delete, hex, num, put_op, put_req, range, send, session_put, split_answer};
use crate::{FIXTURE, FLAGS, IDS, RETRY, S1, S2, S3, SESSION_RETRY};

/// Writes the data set through member `to`, remembering every key it names (so the absent ones
/// can be listed) and every exactly-once write with the answer the cluster gave.
pub struct Writer {
    pub to: u64,
    pub named: BTreeSet<Vec<u8>>,
    pub sessions: Vec<Value>,
}

impl Writer {
    /// A write of `kind`, encoded. One that carries a session is recorded with its answer, and may
    /// be repeated after an unknown outcome too (it applies once); others only when surely unapplied.
    pub async fn write(&mut self, kind: &str, req: Vec<u8>) -> anyhow::Result<Vec<u8>> {
        let (session, puts) = match kind {
            "put" => {
                let p = PutRequest::decode(&req[..])?;
                (p.session, vec![p])
            }
            "txn" => {
                let t = TxnRequest::decode(&req[..])?;
                let ops = t.success.into_iter().chain(t.failure).filter_map(|o| o.request);
                (
                    t.session,
                    ops.filter_map(|o| if let Request::Put(p) = o { Some(p) } else { None })
                        .collect(),
                )
            }
            _ => (DeleteRangeRequest::decode(&req[..])?.session, vec![]),
        };
        self.named.extend(puts.into_iter().map(|p| p.key));
        let answer = send(
            kind,
            &req,
            self.to,
            if session.is_some() { SESSION_RETRY } else { RETRY },
        )
        .await??;
        if let Some(s) = session {
            self.sessions.push(json!({
                "client_id": s.client_id, "seq": s.seq, "kind": kind, "revision": split_answer(&answer)?.0.revision,
                "request": hex(&req), "answer": hex(&answer),
            }));
        }
        Ok(answer)
    }
    pub async fn put(&mut self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> anyhow::Result<()> {
        self.write("put", put_req(key, value).encode_to_vec()).await.map(drop)
    }
    pub async fn delete(&mut self, req: DeleteRangeRequest) -> anyhow::Result<()> {
        self.write("delete_range", req.encode_to_vec()).await.map(drop)
    }
}

pub async fn write_data_set(w: &mut Writer) -> anyhow::Result<()> {
    // Plain puts over several prefixes; binary (non-UTF-8) keys and values, a 6 KB value, an
    // empty value, a UTF-8 key beyond ASCII.
    for i in 0..120 {
        w.put(format!("user/{i:03}"), format!("user-{i}")).await?;
    }
    for c in 'a'..='z' {
        w.put(format!("cfg/{c}-setting"), format!("{c}1")).await?;
    }
    for i in 0..40 {
        w.put(format!("tmp/{i:02}"), "scratch").await?;
    }
    for i in 0..16u8 {
        let key = [b"bin/".as_slice(), &[0xff, i, 0x00, 0xfe - i]].concat();
        w.put(key, bytes(u64::from(i), 64)).await?;
    }
    w.put("big/blob", bytes(42, 6000)).await?;
    w.put("empty/value", "").await?;
    w.put("utf8/ключ-🔑", "значение").await?;
    w.write("put", session_put("sess/a", "first", S1, 1)).await?;
    // Overwrites: versions 2 and 3, create_revision != mod_revision.
    for i in (0..120).step_by(3) {
        w.put(format!("user/{i:03}"), format!("user-{i}-v2")).await?;
    }
    for i in (0..120).step_by(9) {
        w.put(format!("user/{i:03}"), format!("user-{i}-v3")).await?;
    }
    // An exactly-once put over an existing key, answered with its previous pair.
    w.write("put", session_put("cfg/c-setting", "c2", S2, 1)).await?;
    // Deletes of single keys, of a range and of a prefix; one key created again after its delete.
    for i in (5..120).step_by(10) {
        w.delete(delete(&format!("user/{i:03}"), "", false, None)).await?;
    }
    w.delete(delete("cfg/m", "cfg/p", false, None)).await?;
    w.delete(delete("tmp/", "", true, None)).await?;
    w.put("user/015", "user-15-reborn").await?;
    // An exactly-once compare-and-swap txn: two keys in one revision, and a read.
    let read = RequestOp {
        request: Some(Request::Range(range(b"user/000", false, false))),
    };
    let txn = TxnRequest {
        compare: compare("cfg/a-setting", Target::Version(1)),
        success: vec![put_op("cfg/a-setting", "a2"), put_op("txn/by-session", "yes"), read],
        failure: vec![put_op("txn/never", "x")],
        session: Some(WriteSession { client_id: S1, seq: 2 }),
    };
    w.write("txn", txn.encode_to_vec()).await?;
    // A txn whose compare fails runs its failure branch.
    let delete_z = Request::DeleteRange(delete("cfg/z-setting", "", false, None));
    let txn = TxnRequest {
        compare: compare("cfg/b-setting", Target::Value(b"wrong".to_vec())),
        success: vec![put_op("txn/never-either", "x")],
        failure: vec![
            put_op("txn/failure-branch", "ran"),
            RequestOp {
                request: Some(delete_z),
            },
        ],
        session: None,
    };
    let failed = TxnResponse::decode(&w.write("txn", txn.encode_to_vec()).await?[..])?;
    ensure!(!failed.succeeded, "the compare should have failed");
    // Hot keys, written 55 times each: high versions, and over a thousand log entries, so every
    // member snapshots many times and purges the head of its log.
    for round in 0..55 {
        for j in 0..20 {
            w.put(format!("hot/{j:02}"), format!("round-{round}")).await?;
        }
    }
    // An exactly-once delete, answered with the deleted pair.
    let req = delete("sess/a", "", false, Some((S1, 3)));
    w.write("delete_range", req.encode_to_vec()).await.map(drop)
}

/// The `.snap` files in a data directory (named TERM-INDEX-REVISION-SUFFIX), and whether a build
/// is still writing one.
pub fn snapshots(data_dir: &Path) -> anyhow::Result<(Vec<(u64, String)>, bool)> {
    let (mut done, mut building) = (Vec::new(), false);
    for e in std::fs::read_dir(data_dir.join("snapshots"))? {
        let name = e?.file_name().to_string_lossy().into_owned();
        building |= name.ends_with(".tmp");
        if let Some(stem) = name.strip_suffix(".snap") {
            let index = stem.split('-').nth(1).and_then(|i| i.parse().ok());
            done.push((index.with_context(|| format!("snapshot name {name}"))?, name));
        }
    }
    done.sort();
    Ok((done, building))
}

/// Wait until every member has applied the leader's whole log and finished the snapshot its
/// policy asks for (built in the background), so what is recorded is what stays on disk.
pub async fn settle(nodes: &[Node], leader: u64) -> anyhow::Result<Vec<StatusResponse>> {
    let last = status(leader).await.context("leader down")?.last_log_index;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut out = Vec::new();
    for n in nodes {
        let s = wait_applied(n.id, last).await?;
        loop {
            let (done, building) = snapshots(&n.data_dir)?;
            if !building && done.last().is_some_and(|d| d.0 + 50 > s.applied_index) {
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "node {}: {done:?} at {}",
                n.id,
                s.applied_index
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        out.push(s);
    }
    Ok(out)
}

pub async fn make(nodes: &mut [Node], dir: &Path) -> anyhow::Result<()> {
    let leader = wait_for_leader().await?;
    // Members publish their client addresses into the membership once there is a leader; wait
    // for that, so the membership recorded below is final.
    let deadline = Instant::now() + Duration::from_secs(30);
    let members = loop {
        let list = members(leader).await?;
        if list
            .as_array()
            .is_some_and(|l| l.len() == 3 && l.iter().all(|m| m["client_addr"] != ""))
        {
            break list;
        }
        ensure!(Instant::now() < deadline, "client addresses not published: {list}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut w = Writer {
        to: leader,
        named: BTreeSet::new(),
        sessions: Vec::new(),
    };
    write_data_set(&mut w).await?;
    settle(nodes, leader).await?;
    // The last writes come after the newest snapshot, so they are in the log only (more of them
    // until one lands after the newest snapshot on every member).
    let mut seq = 0;
    let statuses = loop {
        seq += 1;
        w.write("put", session_put("tail/s3", &format!("tail-{seq}"), S3, seq))
            .await?;
        let statuses = settle(nodes, leader).await?;
        let mut after = true;
        for (n, s) in nodes.iter().zip(&statuses) {
            after &= snapshots(&n.data_dir)?.0.last().is_some_and(|d| d.0 < s.last_log_index);
        }
        if seq >= 2 && after {
            break statuses;
        }
    };

    // Everything, read back linearizably: what the new build must serve.
    let all = call!(leader, RETRY, range, range(b"", true, false))?;
    ensure!(!all.more, "the data set does not fit one response");
    let header = all.header.context("no header")?;
    let text = |b: &[u8]| std::str::from_utf8(b).map_or(Value::Null, |s| json!(s));
    let keys: Vec<Value> = all
        .kvs
        .iter()
        .map(|kv| {
            json!({"key": hex(&kv.key), "value": hex(&kv.value), "create_revision": kv.create_revision,
               "mod_revision": kv.mod_revision, "version": kv.version, "key_text": text(&kv.key),
               "value_text": if kv.value.len() <= 64 { text(&kv.value) } else { Value::Null }})
        })
        .collect();
    let live: BTreeSet<&Vec<u8>> = all.kvs.iter().map(|kv| &kv.key).collect();
    let absent = w.named.iter().filter(|k| !live.contains(k));
    let absent: Vec<Value> = absent.map(|k| json!({"key": hex(k), "key_text": text(k)})).collect();
    ensure!(absent.len() > 50, "the data set lost its deletes: {absent:?}");
    let mut newest_seq = BTreeMap::new();
    for s in &w.sessions {
        newest_seq.insert(num(s, "client_id")?, num(s, "seq")?);
    }
    for s in &mut w.sessions {
        s["newest_of_session"] = json!(newest_seq[&num(s, "client_id")?] == num(s, "seq")?);
    }
    let mut node_facts = Vec::new();
    for (n, s) in nodes.iter().zip(&statuses) {
        let (snaps, _) = snapshots(&n.data_dir)?;
        node_facts.push(json!({"id": n.id, "role": s.role, "term": s.term, "last_log_index": s.last_log_index,
            "applied_index": s.applied_index, "key_count": s.key_count,
            "snapshots": snaps.iter().map(|s| &s.1).collect::<Vec<_>>(), "newest_snapshot_index": snaps.last().map(|s| s.0)}));
    }
    let git = Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(FIXTURE)
        .output()?;
    let lock = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.lock"))?;
    let openraft = lock.split("[[package]]").find(|p| p.contains("name = \"openraft\"\n"));
    let openraft = openraft.and_then(|p| p.lines().find_map(|l| l.strip_prefix("version = ")));
    let facts = json!({
        "made_by": {"commit": String::from_utf8_lossy(&git.stdout).trim(), "openraft": openraft.map(|v| v.trim_matches('"')),
                    "keel_version": statuses[0].version, "flags": FLAGS},
        "cluster_id": header.cluster_id, "revision": header.revision, "members": members, "nodes": node_facts,
        "keys": keys, "absent": absent, "sessions": w.sessions,
    });

    // A clean stop, followers first: the leader then cannot hand over (no quorum) and stops as it
    // is, so nothing is written after what was recorded.
    let leader = wait_for_leader().await?;
    nodes.sort_by_key(|n| n.id == leader);
    for n in nodes.iter_mut() {
        n.stop().await?;
    }
    let tarball = Path::new(FIXTURE).join("cluster.tar.gz");
    let reproducible = ["--sort=name", "--owner=0", "--group=0", "--numeric-owner", "--mtime=@0"];
    let nodes = IDS.map(|id| format!("node{id}"));
    let tar = Command::new("tar")
        .args(reproducible)
        .arg("-czf")
        .arg(&tarball)
        .arg("-C")
        .arg(dir)
        .args(nodes)
        .status()?;
    ensure!(tar.success(), "tar: {tar}");
    let size = std::fs::metadata(&tarball)?.len();
    ensure!(size < 1 << 20, "the fixture is {size} bytes");
    std::fs::write(
        Path::new(FIXTURE).join("facts.json"),
        serde_json::to_string_pretty(&facts)? + "\n",
    )?;
    eprintln!(
        "fixture: {} ({size} bytes), revision {}",
        tarball.display(),
        header.revision
    );
    Ok(())
}
