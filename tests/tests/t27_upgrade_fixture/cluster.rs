//! The fixture's cluster: three `keel` processes on the fixed addresses, started with the old
//! cluster's command line and stopped with SIGTERM, and what they report (status, membership,
//! leader, applied index).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use keel_proto::v1::cluster_client::ClusterClient;
use keel_proto::v1::{MemberListRequest, StatusRequest, StatusResponse};
use keel_testkit::{keel_binary, retried};
use serde_json::{json, Value};
use tonic::transport::Channel;

use crate::{FLAGS, IDS, RETRY};

/// Member `id`'s address on `port`: 7001 client, 7101 peer, 7201 metrics.
pub fn addr(id: u64, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 77, 0, id as u8)), port)
}

/// Can this machine bind 127.77.0.N? (Linux routes all of 127/8 to lo; some systems only have
/// 127.0.0.1.) An address in use is an error, not a reason to skip.
pub fn fixed_addresses_usable() -> anyhow::Result<bool> {
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
pub struct Node {
    pub id: u64,
    pub data_dir: PathBuf,
    log: PathBuf,
    child: Option<std::process::Child>,
}

impl Node {
    pub fn all(dir: &Path) -> Vec<Node> {
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
    pub fn start(&mut self) -> anyhow::Result<()> {
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
    pub async fn stop(&mut self) -> anyhow::Result<()> {
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
pub fn logs(nodes: &[Node]) -> String {
    let mut out = String::new();
    for n in nodes {
        let log = std::fs::read_to_string(&n.log).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        out += &format!("--- node {} (end of log)\n", n.id);
        out.extend(tail.iter().rev().map(|l| format!("{l}\n")));
    }
    out
}

pub fn channel(id: u64) -> Channel {
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
        ::keel_testkit::retried($codes, || {
            let (mut c, r) = (
                ::keel_proto::v1::kv_client::KvClient::new($crate::cluster::channel($id)),
                req.clone(),
            );
            async move { c.$method(r).await }
        })
        .await
    }};
}

pub async fn status(id: u64) -> Option<StatusResponse> {
    let mut req = tonic::Request::new(StatusRequest {});
    req.set_timeout(Duration::from_secs(1));
    let mut c = ClusterClient::new(channel(id));
    c.status(req).await.ok().map(tonic::Response::into_inner)
}

/// The membership as member `id` knows it, as the facts keep it.
pub async fn members(id: u64) -> anyhow::Result<Value> {
    let list = retried(RETRY, || {
        let mut c = ClusterClient::new(channel(id));
        async move { c.member_list(MemberListRequest {}).await }
    })
    .await?;
    let member = |m: &keel_proto::v1::Member| json!({"id": m.id, "peer_addr": m.peer_addr, "client_addr": m.client_addr, "is_learner": m.is_learner});
    Ok(list.members.iter().map(member).collect())
}

/// Wait until every member answers and names the same leader, which says it leads.
pub async fn wait_for_leader() -> anyhow::Result<u64> {
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
pub async fn wait_applied(id: u64, index: u64) -> anyhow::Result<StatusResponse> {
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
