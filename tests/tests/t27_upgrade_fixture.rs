//! Upgrade fixture: data directories written by the release before the openraft 0.10 port, and
//! the check that the current build opens them and serves every key, revision and session
//! unchanged.
//!
//! The procedure under test is a full-cluster restart: every old member is stopped (SIGTERM),
//! then new members start on the same data directories with the same command lines.
//! `fixture_opens_and_serves_everything` does that with `tests/fixtures/openraft-0.9/` and checks
//! every fact the old build recorded in `facts.json` (see the README there); `make_fixture`
//! (ignored) regenerates the fixture, and must be run with the old build.
//!
//! The members listen on fixed addresses, 127.77.0.N:7001 (client), :7101 (peer) and :7201
//! (metrics): the Raft membership in the data directories names the peer addresses, so starting
//! the members elsewhere would be a membership change, not an upgrade. No other test uses
//! 127.77/16, and the ports are outside the testkit's (20000-31999).
//!
//! Only the gRPC API and the `keel` binary are used, so that this file compiles unchanged on both
//! sides of the port.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use keel_proto::v1::cluster_client::ClusterClient;
use keel_proto::v1::compare::{Op, Target};
use keel_proto::v1::kv_client::KvClient;
use keel_proto::v1::request_op::Request;
use keel_proto::v1::{
    Compare, DeleteRangeRequest, KeyValue, MemberListRequest, PutRequest, RangeRequest, RequestOp, ResponseHeader,
    StatusRequest, StatusResponse, TxnRequest, TxnResponse, WriteSession,
};
use keel_testkit::{keel_binary, retried};
use serde_json::{json, Value};
use tonic::transport::Channel;
use tonic::Code;
use tonic_prost::prost::Message;

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/openraft-0.9");
const IDS: [u64; 3] = [1, 2, 3];
/// The old cluster's settings, given to the new build unchanged. A snapshot every 50 entries:
/// every member has snapshots and log entries after the newest, and, with over 1000 entries
/// behind it (the number kept), a purged head of its log.
const FLAGS: [&str; 4] = ["--snapshot-logs", "50", "--election-timeout-ms", "150-300"];
/// Calls that surely did not apply, safe to repeat.
const RETRY: &[Code] = &[Code::Unavailable];
/// An exactly-once write may also be repeated after an unknown outcome: it applies once.
const SESSION_RETRY: &[Code] = &[Code::Unavailable, Code::DeadlineExceeded, Code::Unknown];
/// Session client ids of the data set ("keel" in the high bytes).
const S1: u64 = 0x6b65_656c_0000_0001;
const S2: u64 = 0x6b65_656c_0000_0002;
const S3: u64 = 0x6b65_656c_0000_0003;

/// Both tests use the fixed addresses: never at once (as with `--include-ignored`).
static FIXED_ADDRESSES: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Member `id`'s address on `port`: 7001 client, 7101 peer, 7201 metrics.
fn addr(id: u64, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 77, 0, id as u8)), port)
}

/// Can this machine bind 127.77.0.N? (Linux routes all of 127/8 to lo; some systems only have
/// 127.0.0.1.) An address in use is an error, not a reason to skip.
fn fixed_addresses_usable() -> anyhow::Result<bool> {
    for a in IDS.iter().flat_map(|id| [7001, 7101, 7201].map(|p| addr(*id, p))) {
        match std::net::TcpListener::bind(a) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AddrNotAvailable => return Ok(false),
            Err(e) => bail!("cannot bind {a}: {e} (another cluster on the fixture's addresses?)"),
        }
    }
    Ok(true)
}

extern "C" {
    fn kill(pid: i32, sig: i32) -> i32;
}
const SIGTERM: i32 = 15;

/// One `keel` process of the fixture's cluster; SIGKILLed if dropped while running.
struct Node {
    id: u64,
    data_dir: PathBuf,
    log: PathBuf,
    child: Option<std::process::Child>,
}

impl Node {
    fn all(dir: &Path) -> Vec<Node> {
        let node = |id: u64| Node {
            id,
            data_dir: dir.join(format!("node{id}")),
            log: dir.join(format!("node{id}.log")),
            child: None,
        };
        IDS.map(node).into()
    }

    /// Start with the old cluster's command line (`--initial-cluster` too: an operator's unit
    /// file keeps it, and a bootstrapped data directory ignores it).
    fn start(&mut self) -> anyhow::Result<()> {
        let initial: Vec<String> = IDS.iter().map(|i| format!("{i}={}", addr(*i, 7101))).collect();
        let mut args = vec![
            "--id".to_string(),
            self.id.to_string(),
            "--initial-cluster".into(),
            initial.join(","),
        ];
        for (flag, port) in [("--client-addr", 7001), ("--peer-addr", 7101), ("--metrics-addr", 7201)] {
            args.extend([flag.to_string(), addr(self.id, port).to_string()]);
        }
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log)?;
        let child = Command::new(keel_binary()?)
            .args(args.iter().map(String::as_str).chain(FLAGS))
            .arg("--data-dir")
            .arg(&self.data_dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawn keel")?;
        self.child = Some(child);
        Ok(())
    }

    /// SIGTERM, and the clean exit (status 0) it promises, within 30 s.
    async fn stop(&mut self) -> anyhow::Result<()> {
        let mut child = self.child.take().context("not running")?;
        // SAFETY: kill(2) on the pid of our own child, not reaped yet; no memory is involved.
        unsafe { kill(child.id() as i32, SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait()? {
                ensure!(status.success(), "node {} exited with {status} after SIGTERM", self.id);
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("node {} did not exit within 30 s of SIGTERM", self.id);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The end of every node's log, for failure messages.
fn logs(nodes: &[Node]) -> String {
    let mut out = String::new();
    for n in nodes {
        let log = std::fs::read_to_string(&n.log).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        out += &format!("--- node {} (end of log)\n", n.id);
        out.extend(tail.iter().rev().map(|l| format!("{l}\n")));
    }
    out
}

fn channel(id: u64) -> Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{}", addr(id, 7001)))
        .expect("valid uri")
        .connect_timeout(Duration::from_secs(1))
        .timeout(Duration::from_secs(10))
        .connect_lazy()
}

/// A KV call to member `id`, repeated while it fails with one of `codes` (see `retried`).
macro_rules! call {
    ($id:expr, $codes:expr, $method:ident, $req:expr) => {{
        let req = $req;
        retried($codes, || {
            let (mut c, r) = (KvClient::new(channel($id)), req.clone());
            async move { c.$method(r).await }
        })
        .await
    }};
}

async fn status(id: u64) -> Option<StatusResponse> {
    let mut req = tonic::Request::new(StatusRequest {});
    req.set_timeout(Duration::from_secs(1));
    let mut c = ClusterClient::new(channel(id));
    c.status(req).await.ok().map(tonic::Response::into_inner)
}

/// The membership as member `id` knows it, as the facts keep it.
async fn members(id: u64) -> anyhow::Result<Value> {
    let list = retried(RETRY, || {
        let mut c = ClusterClient::new(channel(id));
        async move { c.member_list(MemberListRequest {}).await }
    })
    .await?;
    let member = |m: &keel_proto::v1::Member| json!({"id": m.id, "peer_addr": m.peer_addr, "client_addr": m.client_addr, "is_learner": m.is_learner});
    Ok(list.members.iter().map(member).collect())
}

/// Wait until every member answers and names the same leader, which says it leads.
async fn wait_for_leader() -> anyhow::Result<u64> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut seen = Vec::new();
        for id in IDS {
            seen.push(status(id).await.map(|s| (s.id, s.role, s.leader_id)));
        }
        let leader = seen.iter().flatten().find(|(_, role, _)| role == "leader").map(|s| s.0);
        if let Some(l) = leader.filter(|l| seen.iter().all(|s| s.as_ref().is_some_and(|s| s.2 == *l))) {
            return Ok(l);
        }
        ensure!(Instant::now() < deadline, "no leader agreed by all in 30 s: {seen:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Wait until member `id` has applied `index`; its status then.
async fn wait_applied(id: u64, index: u64) -> anyhow::Result<StatusResponse> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = status(id).await;
        if let Some(s) = s.as_ref().filter(|s| s.applied_index >= index) {
            return Ok(s.clone());
        }
        ensure!(Instant::now() < deadline, "member {id} did not apply {index}: {s:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
fn unhex(v: &Value) -> anyhow::Result<Vec<u8>> {
    let s = v
        .as_str()
        .filter(|s| s.len() % 2 == 0)
        .with_context(|| format!("not hex: {v}"))?;
    let byte = |i: usize| Ok(u8::from_str_radix(&s[i..i + 2], 16)?);
    (0..s.len()).step_by(2).map(byte).collect()
}
fn num(v: &Value, field: &str) -> anyhow::Result<u64> {
    v[field].as_u64().with_context(|| format!("no number {field} in {v}"))
}

/// Sends an encoded write of `kind` to member `id`; returns the answer, encoded. The facts keep
/// exactly-once writes so, as protobuf: exact, and decodable by any later build of the same API.
async fn send(kind: &str, req: &[u8], id: u64, codes: &[Code]) -> anyhow::Result<Result<Vec<u8>, tonic::Status>> {
    Ok(match kind {
        "put" => call!(id, codes, put, PutRequest::decode(req)?).map(|r| r.encode_to_vec()),
        "delete_range" => call!(id, codes, delete_range, DeleteRangeRequest::decode(req)?).map(|r| r.encode_to_vec()),
        "txn" => call!(id, codes, txn, TxnRequest::decode(req)?).map(|r| r.encode_to_vec()),
        _ => bail!("unknown write kind {kind}"),
    })
}

/// An encoded write answer's header (field 1 of every write response, encoded first) and the rest.
fn split_answer(b: &[u8]) -> anyhow::Result<(ResponseHeader, &[u8])> {
    ensure!(b.first() == Some(&0x0a), "an answer without a header: {}", hex(b));
    let mut rest = &b[1..];
    let len = tonic_prost::prost::encoding::decode_varint(&mut rest)? as usize;
    ensure!(rest.len() >= len, "a cut answer: {}", hex(b));
    Ok((ResponseHeader::decode(&rest[..len])?, &rest[len..]))
}

/// The same answer, but for what names who served it and when (member, term, leader): a
/// remembered answer comes from whichever member gets the retry, in the retry's term.
fn same_answer(a: &[u8], b: &[u8]) -> anyhow::Result<bool> {
    let ((ha, ra), (hb, rb)) = (split_answer(a)?, split_answer(b)?);
    Ok((ha.cluster_id, ha.revision, ra) == (hb.cluster_id, hb.revision, rb))
}

fn put_req(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> PutRequest {
    let (key, value) = (key.into(), value.into());
    PutRequest {
        key,
        value,
        ..Default::default()
    }
}
/// An exactly-once put, asking for the previous pair.
fn session_put(key: &str, value: &str, client_id: u64, seq: u64) -> Vec<u8> {
    let mut req = put_req(key, value);
    (req.prev_kv, req.session) = (true, Some(WriteSession { client_id, seq }));
    req.encode_to_vec()
}
/// A delete of `key`, `[key, range_end)` or the prefix `key`; with a session, exactly once.
fn delete(key: &str, range_end: &str, prefix: bool, session: Option<(u64, u64)>) -> DeleteRangeRequest {
    let mut req = DeleteRangeRequest {
        key: key.into(),
        range_end: range_end.into(),
        prefix,
        ..Default::default()
    };
    req.session = session.map(|(client_id, seq)| WriteSession { client_id, seq });
    req.prev_kv = session.is_some();
    req
}
/// A read of `key`, or of every key (or only their number).
fn range(key: &[u8], prefix: bool, count_only: bool) -> RangeRequest {
    RangeRequest {
        key: key.to_vec(),
        prefix,
        count_only,
        ..Default::default()
    }
}
fn put_op(key: &str, value: &str) -> RequestOp {
    RequestOp {
        request: Some(Request::Put(put_req(key, value))),
    }
}
fn compare(key: &str, target: Target) -> Vec<Compare> {
    vec![Compare {
        key: key.into(),
        op: Op::Equal as i32,
        target: Some(target),
    }]
}
fn new_kv(key: &str, value: &str, revision: u64) -> KeyValue {
    let (key, value) = (key.into(), value.into());
    KeyValue {
        key,
        value,
        create_revision: revision,
        mod_revision: revision,
        version: 1,
    }
}
/// Deterministic bytes of every value, for binary keys and values.
fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let byte = |i: usize| ((i as u64 + seed).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 56) as u8;
    (0..len).map(byte).collect()
}

/// Writes the data set through member `to`, remembering every key it names (so the absent ones
/// can be listed) and every exactly-once write with the answer the cluster gave.
struct Writer {
    to: u64,
    named: BTreeSet<Vec<u8>>,
    sessions: Vec<Value>,
}

impl Writer {
    /// A write of `kind`, encoded. One that carries a session is recorded with its answer, and may
    /// be repeated after an unknown outcome too (it applies once); others only when surely unapplied.
    async fn write(&mut self, kind: &str, req: Vec<u8>) -> anyhow::Result<Vec<u8>> {
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
    async fn put(&mut self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> anyhow::Result<()> {
        self.write("put", put_req(key, value).encode_to_vec()).await.map(drop)
    }
    async fn delete(&mut self, req: DeleteRangeRequest) -> anyhow::Result<()> {
        self.write("delete_range", req.encode_to_vec()).await.map(drop)
    }
}

async fn write_data_set(w: &mut Writer) -> anyhow::Result<()> {
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
fn snapshots(data_dir: &Path) -> anyhow::Result<(Vec<(u64, String)>, bool)> {
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
async fn settle(nodes: &[Node], leader: u64) -> anyhow::Result<Vec<StatusResponse>> {
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

/// Run with the OLD (pre-port) build to regenerate the fixture, in a checkout of the old
/// release (commit d24d6c7) with this file copied in:
///
/// ```text
/// cargo build -p keel-server --bin keel
/// cargo test -p keel-tests --test t27_upgrade_fixture -- --ignored make_fixture
/// ```
///
/// then copy `tests/fixtures/openraft-0.9/` into the new tree. Run with a newer build, it would
/// make a fixture of that build instead, and prove nothing about the upgrade.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "run with the OLD (pre-port) build to regenerate tests/fixtures/openraft-0.9"]
async fn make_fixture() -> anyhow::Result<()> {
    let _fixed = FIXED_ADDRESSES.lock().await;
    ensure!(fixed_addresses_usable()?, "this machine cannot bind 127.77.0.x");
    std::fs::create_dir_all(FIXTURE)?;
    let dir = tempfile::tempdir()?;
    let mut nodes = Node::all(dir.path());
    for n in &mut nodes {
        n.start()?;
    }
    let made = make(&mut nodes, dir.path()).await;
    if made.is_err() {
        eprintln!("{}", logs(&nodes));
    }
    made
}

async fn make(nodes: &mut [Node], dir: &Path) -> anyhow::Result<()> {
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

/// A pair, readably, for failure messages.
fn show(kv: Option<&KeyValue>) -> String {
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
async fn assert_serves(id: u64, expected: &[KeyValue], absent: &[Vec<u8>], revision: u64) -> anyhow::Result<()> {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fixture_opens_and_serves_everything() -> anyhow::Result<()> {
    let _fixed = FIXED_ADDRESSES.lock().await;
    if !fixed_addresses_usable()? {
        eprintln!("SKIPPED fixture_opens_and_serves_everything: this machine cannot bind 127.77.0.x");
        return Ok(());
    }
    let facts: Value = serde_json::from_slice(&std::fs::read(format!("{FIXTURE}/facts.json"))?)?;
    let dir = tempfile::tempdir()?;
    let tarball = format!("{FIXTURE}/cluster.tar.gz");
    let tar = Command::new("tar")
        .arg("-xzf")
        .arg(tarball)
        .arg("-C")
        .arg(dir.path())
        .status()?;
    ensure!(tar.success(), "tar: {tar}");
    // The full-cluster restart: all three members start, with the current build, on the old data.
    let mut nodes = Node::all(dir.path());
    for n in &mut nodes {
        n.start()?;
    }
    let checked = check(&facts, &mut nodes).await;
    if checked.is_err() {
        eprintln!("{}", logs(&nodes));
    }
    checked
}

async fn check(facts: &Value, nodes: &mut [Node]) -> anyhow::Result<()> {
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
