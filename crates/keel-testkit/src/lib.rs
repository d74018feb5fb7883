//! # keel-testkit: clusters for tests
//!
//! One interface, [`Cluster`], over two backends:
//! - [`Backend::InProcess`]: every node runs in the test's own tokio runtime, over real gRPC on
//!   `127.0.0.1:0`. Fast to start; "killing" a node stops it abruptly but within the process.
//! - [`Backend::Process`]: every node is a `keel` process (the built binary). `kill` is SIGKILL,
//!   `pause` is SIGSTOP: real crashes and stalls.
//!
//! With [`Options::network`], every node gets its own loopback address and its peer port is
//! fronted by a proxy of [`net::Net`], so tests can cut, slow or break any link between nodes
//! ([`Cluster::net`]).
//!
//! Nodes keep their data directories across stop/start, so a restarted node recovers from disk.
//! Everything lives in one temporary directory, removed when the cluster is dropped; processes
//! are killed on drop.

pub mod chaos;
pub mod compose;
pub mod history;
pub mod lazyfs;
pub mod net;
mod process;
pub mod tls;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use keel_proto::v1::cluster_client::ClusterClient;
use keel_proto::v1::kv_client::KvClient;
use keel_proto::v1::{StatusRequest, StatusResponse};
use keel_server::{Config, Listeners, NodeHandle};
use keel_storage::NodeId;
use tonic::transport::Channel;

pub use process::{keel_binary, keelctl_binary};

/// Call `call` again (for up to 20 s) while it fails with one of `codes`: a test machine busy
/// with several clusters may see an election, which clients see as Unavailable (and, for a
/// write, maybe an unknown outcome). Only for calls that are safe to repeat.
pub async fn retried<T, F, Fut>(codes: &[tonic::Code], mut call: F) -> Result<T, tonic::Status>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match call().await {
            Err(e) if codes.contains(&e.code()) && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => return other.map(tonic::Response::into_inner),
        }
    }
}

/// How nodes run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    InProcess,
    Process,
}

/// Settings for a test cluster.
#[derive(Debug, Clone)]
pub struct Options {
    pub nodes: usize,
    /// Extra `keel` flags for every node, e.g. `["--snapshot-logs", "100"]`.
    pub flags: Vec<String>,
    /// Put every peer link behind the fault-injecting proxy (see [`net`]), seeded with this.
    pub network: Option<u64>,
    /// Give every node a disk of its own that forgets unsynced writes (a [`lazyfs::LazyFs`]
    /// mount), so that [`Cluster::power_cut`] can cut its power. Needs FUSE: check
    /// [`lazyfs::unavailable`] first.
    pub lazy_disks: bool,
    /// TLS on every member's client and peer ports, with certificates made for the test (see
    /// [`tls`]).
    pub tls: Option<tls::TlsOptions>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            nodes: 3,
            flags: Vec::new(),
            network: None,
            lazy_disks: false,
            tls: None,
        }
    }
}

enum Running {
    InProcess(NodeHandle),
    Process(process::Child),
}

/// One member of a test cluster.
pub struct TestNode {
    pub id: NodeId,
    /// Started with `--join` (added later with `member add`) rather than `--initial-cluster`.
    pub joined: bool,
    /// The peer address the node advertises (the proxy's, with [`Options::network`]).
    pub peer_addr: SocketAddr,
    /// Where the node's peer listener really is.
    pub peer_listen: SocketAddr,
    pub client_addr: SocketAddr,
    /// HTTP: /metrics, /livez, /readyz.
    pub metrics_addr: SocketAddr,
    pub data_dir: PathBuf,
    running: Option<Running>,
    /// A stopped in-process node's addresses (peer, client, metrics), bound again at once and
    /// held until it restarts: they are in the kernel's ephemeral range, and a free one can
    /// become another socket's source port meanwhile (t35 failed to restart a follower with
    /// "Address already in use"). Bound, not listening: a client still finds the port closed.
    parked: Option<[tokio::net::TcpSocket; 3]>,
    _proxy: Option<net::Proxy>,
}

impl TestNode {
    /// Hold the addresses of this node, just stopped in process (see `parked`). A port taken in
    /// the instant since is left to the restart, which then reports it.
    fn park(&mut self) {
        let bind = |addr: SocketAddr| -> std::io::Result<tokio::net::TcpSocket> {
            let socket = match addr {
                SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
                SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
            };
            // Without SO_REUSEADDR: a socket that sets it may share a port only with others
            // that do, so this one keeps even those out.
            socket.bind(addr)?;
            Ok(socket)
        };
        if let (Ok(peer), Ok(client), Ok(metrics)) =
            (bind(self.peer_listen), bind(self.client_addr), bind(self.metrics_addr))
        {
            self.parked = Some([peer, client, metrics]);
        }
    }

    /// The parked addresses as listeners, for the restart.
    fn unpark(&mut self) -> std::io::Result<Option<Listeners>> {
        let Some([peer, client, metrics]) = self.parked.take() else {
            return Ok(None);
        };
        Ok(Some(Listeners {
            peer: peer.listen(1024)?,
            client: client.listen(1024)?,
            metrics: Some(metrics.listen(1024)?),
        }))
    }
}

/// A cluster of keel nodes for a test.
pub struct Cluster {
    pub backend: Backend,
    pub nodes: BTreeMap<NodeId, TestNode>,
    initial_cluster: String,
    flags: Vec<String>,
    net: Option<net::Net>,
    /// Ids are never reused, as in etcd: a removed member's id stays retired.
    next_id: NodeId,
    /// In-process listeners bound by [`Cluster::prepare`], not yet launched.
    pending: BTreeMap<NodeId, Listeners>,
    /// Lazy disks by node ([`Options::lazy_disks`]). Declared after `nodes`, before `dir`: the
    /// processes die (dropped), then the disks are unmounted, then the directory goes.
    disks: BTreeMap<NodeId, lazyfs::LazyFs>,
    /// Joiners get lazy disks too.
    pub(crate) lazy_disks: bool,
    /// TLS files ([`Options::tls`]).
    tls: Option<tls::TestTls>,
    dir: tempfile::TempDir,
    /// Set by [`Cluster::shutdown`]; a cluster dropped without it belongs to a test that failed
    /// (or gave up early), and its drop prints the members' logs.
    shut_down: bool,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Captured by the test harness and shown only when the test fails: the members' own
        // account (elections, slow storage) of what the test's error message summarises.
        if !self.shut_down && self.backend == Backend::Process {
            self.print_log_tails(60);
        }
    }
}

/// Node `id`'s data directory under `dir`: on a lazy disk of its own (mounted and added to
/// `disks`) when `disks` is given.
fn data_dir(dir: &Path, id: NodeId, disks: Option<&mut BTreeMap<NodeId, lazyfs::LazyFs>>) -> anyhow::Result<PathBuf> {
    let Some(disks) = disks else {
        return Ok(dir.join(format!("node{id}")));
    };
    let mountpoint = dir.join(format!("disk{id}"));
    std::fs::create_dir(&mountpoint)?;
    disks.insert(id, lazyfs::LazyFs::mount(&mountpoint)?);
    Ok(mountpoint.join("data"))
}

/// A port on `ip` that is free now, for a process that binds it itself a moment later.
///
/// Not from the kernel's ephemeral range (32768-60999 on Linux): the kernel hands those ports to
/// outgoing connections too (this test's clients, the nodes' peer channels), and one could take
/// the port between this check and the child's bind, leaving a node that exits at once with
/// "address in use" (seen: a node of a fresh cluster refusing connections). Ports are taken in
/// turn from 20000-31999, from a per-process random start, so concurrent tests in this process
/// never pick the same one and other test processes rarely do.
pub fn free_port(ip: IpAddr) -> anyhow::Result<SocketAddr> {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    if NEXT.load(Ordering::Relaxed) == u32::MAX {
        let seed = std::process::id().wrapping_mul(2_654_435_761)
            ^ std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos());
        let _ = NEXT.compare_exchange(u32::MAX, seed % SPAN, Ordering::Relaxed, Ordering::Relaxed);
    }
    for _ in 0..SPAN {
        let port = FIRST + NEXT.fetch_add(1, Ordering::Relaxed) % SPAN;
        if let Ok(l) = std::net::TcpListener::bind((ip, port as u16)) {
            return Ok(l.local_addr()?);
        }
    }
    anyhow::bail!("no free port on {ip} in {FIRST}..{}", FIRST + SPAN)
}

/// Where a new node listens, and the listeners already bound for in-process nodes.
struct Addresses {
    peer_addr: SocketAddr,
    peer_listen: SocketAddr,
    client_addr: SocketAddr,
    metrics_addr: SocketAddr,
    listeners: Option<Listeners>,
    proxy: Option<net::Proxy>,
}

impl Addresses {
    async fn new(backend: Backend, net: Option<&net::Net>, id: NodeId) -> anyhow::Result<Addresses> {
        let ip = match net {
            Some(_) => net::node_ip(id),
            None => IpAddr::V4(Ipv4Addr::LOCALHOST),
        };
        let (peer_listen, client_addr, metrics_addr, listeners) = match backend {
            Backend::InProcess => {
                let peer = tokio::net::TcpListener::bind((ip, 0)).await?;
                let client = tokio::net::TcpListener::bind((ip, 0)).await?;
                let metrics = tokio::net::TcpListener::bind((ip, 0)).await?;
                let addrs = (peer.local_addr()?, client.local_addr()?, metrics.local_addr()?);
                let listeners = Listeners {
                    peer,
                    client,
                    metrics: Some(metrics),
                };
                (addrs.0, addrs.1, addrs.2, Some(listeners))
            }
            Backend::Process => (free_port(ip)?, free_port(ip)?, free_port(ip)?, None),
        };
        let proxy = match net {
            Some(net) => {
                net.register(id, ip);
                Some(net.proxy(id, SocketAddr::new(ip, 0), peer_listen).await?)
            }
            None => None,
        };
        Ok(Addresses {
            peer_addr: proxy.as_ref().map_or(peer_listen, |p| p.addr),
            peer_listen,
            client_addr,
            metrics_addr,
            listeners,
            proxy,
        })
    }

    fn node(self, id: NodeId, joined: bool, data_dir: PathBuf) -> (TestNode, Option<Listeners>) {
        let node = TestNode {
            id,
            joined,
            peer_addr: self.peer_addr,
            peer_listen: self.peer_listen,
            client_addr: self.client_addr,
            metrics_addr: self.metrics_addr,
            data_dir,
            running: None,
            parked: None,
            _proxy: self.proxy,
        };
        (node, self.listeners)
    }
}

impl Cluster {
    /// Start a new cluster and wait until it has a leader.
    pub async fn start(backend: Backend, options: Options) -> anyhow::Result<Cluster> {
        let mut cluster = Cluster::prepare(backend, options).await?;
        cluster.launch_all().await?;
        cluster.wait_for_leader(Duration::from_secs(20)).await?;
        // A leader needs only a majority: make sure every member is up too (bounded: a slow
        // start on a busy machine is fine), and show why if one is not (it died: a port taken
        // between its choice and the bind, say).
        let deadline = Instant::now() + Duration::from_secs(15);
        for id in cluster.nodes.keys().copied().collect::<Vec<_>>() {
            while cluster.status(id).await.is_none() {
                if Instant::now() > deadline {
                    let log = cluster.log(id);
                    let mut tail: Vec<&str> = log.lines().rev().take(20).collect();
                    tail.reverse();
                    anyhow::bail!(
                        "member {id} of the new cluster does not answer; the end of its log:\n{}",
                        tail.join("\n")
                    );
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(cluster)
    }

    /// Choose addresses and data directories for a new cluster without starting it, so that a
    /// test can seed the data directories first (a restore from backup); then
    /// [`Cluster::launch_all`].
    pub async fn prepare(backend: Backend, options: Options) -> anyhow::Result<Cluster> {
        let dir = tempfile::Builder::new().prefix("keel-test").tempdir()?;
        let tls = match options.tls.clone() {
            Some(o) => Some(tls::TestTls::new(dir.path(), o)?),
            None => None,
        };
        let net = options.network.map(net::Net::new);
        let mut nodes = BTreeMap::new();
        let mut listeners = BTreeMap::new();
        let mut disks = BTreeMap::new();
        for i in 1..=options.nodes as NodeId {
            let addrs = Addresses::new(backend, net.as_ref(), i).await?;
            let data_dir = data_dir(dir.path(), i, options.lazy_disks.then_some(&mut disks))?;
            let (node, l) = addrs.node(i, false, data_dir);
            if let Some(tls) = &tls {
                tls.issue_node(&tls.ca()?, i, node.client_addr.ip())?;
            }
            nodes.insert(i, node);
            if let Some(l) = l {
                listeners.insert(i, l);
            }
        }
        let initial_cluster = nodes
            .values()
            .map(|n| format!("{}={}", n.id, n.peer_addr))
            .collect::<Vec<_>>()
            .join(",");
        let cluster = Cluster {
            backend,
            nodes,
            initial_cluster,
            flags: options.flags,
            net,
            next_id: options.nodes as NodeId + 1,
            pending: listeners,
            lazy_disks: options.lazy_disks,
            tls,
            disks,
            dir,
            shut_down: false,
        };
        Ok(cluster)
    }

    /// Start every node of a prepared cluster (does not wait for a leader).
    pub async fn launch_all(&mut self) -> anyhow::Result<()> {
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for id in ids {
            let l = self.pending.remove(&id);
            self.launch(id, l).await?;
        }
        Ok(())
    }

    /// `--initial-cluster` of this cluster: `1=addr,2=addr,...` (advertised peer addresses).
    pub fn initial_cluster(&self) -> &str {
        &self.initial_cluster
    }

    /// The fault-injecting network, if the cluster was started with [`Options::network`].
    pub fn net(&self) -> Option<&net::Net> {
        self.net.as_ref()
    }

    /// The directory holding every node's data.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The command line node `id` is started with, program name first.
    pub fn args(&self, id: NodeId) -> Vec<String> {
        let n = &self.nodes[&id];
        let mut args = vec![
            "keel".to_string(),
            "--id".into(),
            id.to_string(),
            "--data-dir".into(),
            n.data_dir.display().to_string(),
            "--peer-addr".into(),
            n.peer_listen.to_string(),
            "--advertise-peer-addr".into(),
            n.peer_addr.to_string(),
            "--client-addr".into(),
            n.client_addr.to_string(),
            "--metrics-addr".into(),
            n.metrics_addr.to_string(),
        ];
        if n.joined {
            args.push("--join".into());
        } else {
            args.extend(["--initial-cluster".into(), self.initial_cluster.clone()]);
        }
        if let Some(tls) = &self.tls {
            args.extend(tls.flags(id));
        }
        args.extend(self.flags.iter().cloned());
        args
    }

    /// The cluster's TLS files, if it runs with TLS ([`Options::tls`]).
    pub fn tls(&self) -> Option<&tls::TestTls> {
        self.tls.as_ref()
    }

    async fn launch(&mut self, id: NodeId, listeners: Option<Listeners>) -> anyhow::Result<()> {
        let args = self.args(id);
        let running = match self.backend {
            Backend::InProcess => {
                let config = Config::from_args(&args).map_err(|e| anyhow::anyhow!("{e}"))?;
                let parked = match self.nodes.get_mut(&id) {
                    Some(node) => node.unpark()?,
                    None => None,
                };
                let listeners = match listeners.or(parked) {
                    Some(l) => l,
                    None => Listeners::bind(&config).await?,
                };
                Running::InProcess(keel_server::start(config, listeners).await?)
            }
            Backend::Process => {
                let log = self.dir.path().join(format!("node{id}.log"));
                Running::Process(process::Child::spawn(&args[1..], &log)?)
            }
        };
        self.nodes.get_mut(&id).context("no such node")?.running = Some(running);
        Ok(())
    }

    /// Start a new, empty node with `--join` and the next id never used in this cluster; it waits until a member add
    /// brings it in. Returns its id.
    pub async fn start_joiner(&mut self) -> anyhow::Result<NodeId> {
        let id = self.next_id;
        self.next_id += 1;
        let addrs = Addresses::new(self.backend, self.net.as_ref(), id).await?;
        let data_dir = data_dir(self.dir.path(), id, self.lazy_disks.then_some(&mut self.disks))?;
        let (node, listeners) = addrs.node(id, true, data_dir);
        if let Some(tls) = &self.tls {
            tls.issue_node(&tls.ca()?, id, node.client_addr.ip())?;
        }
        self.nodes.insert(id, node);
        self.launch(id, listeners).await?;
        Ok(id)
    }

    /// Forget a stopped node (after it was removed from the cluster).
    pub fn forget(&mut self, id: NodeId) {
        self.nodes.remove(&id);
    }

    /// Is the node running?
    /// Whether node `id` was started and not stopped or killed since (a process that exited by
    /// itself still counts: see [`Cluster::exit_status`]).
    pub fn is_running(&self, id: NodeId) -> bool {
        self.nodes.get(&id).is_some_and(|n| n.running.is_some())
    }

    /// How process node `id` ended, if it exited by itself (None while it runs, and for
    /// in-process nodes).
    pub fn exit_status(&mut self, id: NodeId) -> Option<std::process::ExitStatus> {
        match self.nodes.get_mut(&id)?.running.as_mut()? {
            Running::Process(child) => child.exited(),
            Running::InProcess(_) => None,
        }
    }

    /// Stop a node abruptly: SIGKILL for processes; for in-process nodes, Raft and servers are
    /// stopped without waiting for in-flight requests.
    pub async fn kill(&mut self, id: NodeId) -> anyhow::Result<()> {
        let node = self.nodes.get_mut(&id).context("no such node")?;
        match node.running.take() {
            Some(Running::Process(mut child)) => child.kill(),
            Some(Running::InProcess(handle)) => {
                handle.shutdown().await?;
                node.park();
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// Cut node `id`'s power: SIGKILL it, then drop every write its disk had not made durable
    /// (with `torn`, a random prefix of each file's last such write survives). Needs
    /// [`Options::lazy_disks`]; [`Cluster::restart`] brings the node back on what survived.
    pub async fn power_cut(&mut self, id: NodeId, torn: Option<&mut rand::rngs::StdRng>) -> anyhow::Result<()> {
        if !self.disks.contains_key(&id) {
            bail!("node {id} has no lazy disk (Options::lazy_disks)");
        }
        self.kill(id).await?;
        let disk = &self.disks[&id];
        match torn {
            Some(rng) => disk.power_cut_torn(rng),
            None => disk.power_cut(),
        }
        Ok(())
    }

    /// Node `id`'s lazy disk, to fill it up ([`lazyfs::LazyFs::set_capacity`]).
    pub fn disk(&self, id: NodeId) -> Option<&lazyfs::LazyFs> {
        self.disks.get(&id)
    }

    /// What node `id`'s lazy disk has seen: writes, syncs, cuts and the bytes they dropped.
    pub fn disk_counters(&self, id: NodeId) -> Option<lazyfs::Counters> {
        self.disks.get(&id).map(|d| d.counters())
    }

    /// Stop a node gracefully: SIGTERM and wait, or an in-process shutdown.
    pub async fn stop(&mut self, id: NodeId) -> anyhow::Result<()> {
        let node = self.nodes.get_mut(&id).context("no such node")?;
        match node.running.take() {
            Some(Running::Process(mut child)) => {
                let status = child.terminate(Duration::from_secs(30))?;
                if !status.success() {
                    bail!("node {id} exited with {status} after SIGTERM");
                }
                Ok(())
            }
            Some(Running::InProcess(handle)) => {
                handle.shutdown().await?;
                node.park();
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// Start a stopped node again on its old addresses and data.
    pub async fn restart(&mut self, id: NodeId) -> anyhow::Result<()> {
        // A process that exited by itself (a failed member) can be started again.
        if self.is_running(id) && self.exit_status(id).is_none() {
            bail!("node {id} is running");
        }
        self.launch(id, None).await
    }

    /// SIGSTOP / SIGCONT a process node.
    pub fn pause(&mut self, id: NodeId, paused: bool) -> anyhow::Result<()> {
        match self.nodes.get_mut(&id).and_then(|n| n.running.as_mut()) {
            Some(Running::Process(child)) => child.signal(if paused { libc::SIGSTOP } else { libc::SIGCONT }),
            Some(Running::InProcess(_)) => bail!("pause needs the process backend"),
            None => bail!("node {id} is not running"),
        }
    }

    /// The OS process id of a process node.
    pub fn pid(&self, id: NodeId) -> Option<u32> {
        match self.nodes.get(&id)?.running.as_ref()? {
            Running::Process(child) => Some(child.pid()),
            Running::InProcess(_) => None,
        }
    }

    /// Client endpoints of every node, `host:port`, in id order.
    pub fn endpoints(&self) -> Vec<String> {
        self.nodes.values().map(|n| n.client_addr.to_string()).collect()
    }

    /// A channel to a node's client port.
    pub fn channel(&self, id: NodeId) -> Channel {
        let addr = self.nodes[&id].client_addr;
        if let Some(tls) = &self.tls {
            return tls.channel(addr);
        }
        tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .expect("valid uri")
            .connect_timeout(Duration::from_secs(1))
            .connect_lazy()
    }

    pub fn kv(&self, id: NodeId) -> KvClient<Channel> {
        KvClient::new(self.channel(id))
    }

    pub fn cluster_client(&self, id: NodeId) -> ClusterClient<Channel> {
        ClusterClient::new(self.channel(id))
    }

    /// A node's status, if it answers within a second.
    pub async fn status(&self, id: NodeId) -> Option<StatusResponse> {
        let mut c = self.cluster_client(id);
        let mut req = tonic::Request::new(StatusRequest {});
        req.set_timeout(Duration::from_secs(1));
        c.status(req).await.ok().map(|r| r.into_inner())
    }

    /// Wait until every member of `among` names the same leader, one of `among`, other than
    /// `not` (a leader elected on one side of a partition, say); return it.
    pub async fn wait_for_new_leader(
        &self,
        among: &[NodeId],
        not: NodeId,
        timeout: Duration,
    ) -> anyhow::Result<NodeId> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut named = Vec::new();
            for id in among {
                named.push(self.status(*id).await.map(|s| s.leader_id));
            }
            if let Some(Some(l)) = named.first().copied() {
                if l != not && among.contains(&l) && named.iter().all(|n| *n == Some(l)) {
                    return Ok(l);
                }
            }
            anyhow::ensure!(Instant::now() < deadline, "no new leader among {among:?}: {named:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Wait until running nodes agree on a leader that is itself running; return it.
    pub async fn wait_for_leader(&self, timeout: Duration) -> anyhow::Result<NodeId> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut leaders = Vec::new();
            for id in self.nodes.keys().filter(|id| self.is_running(**id)) {
                if let Some(s) = self.status(*id).await {
                    leaders.push((s.leader_id, s.role == "leader" && s.id == *id));
                }
            }
            let claimed: Vec<NodeId> = leaders.iter().filter(|(_, me)| *me).map(|(l, _)| *l).collect();
            if let [leader] = claimed[..] {
                if leaders.iter().all(|(l, _)| *l == leader) {
                    return Ok(leader);
                }
            }
            if Instant::now() > deadline {
                bail!("no agreed leader within {timeout:?}: {leaders:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Wait until a node has applied at least `index`.
    pub async fn wait_applied(&self, id: NodeId, index: u64, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.status(id).await {
                if s.applied_index >= index {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!("node {id} did not apply index {index} within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Wait until `leader` has seen member `id` acknowledge at least `index` (its replication
    /// status). A member can have applied an entry before its answer reaches the leader, so tests
    /// that depend on the leader's view wait for this, not for [`Cluster::wait_applied`].
    pub async fn wait_matched(&self, leader: NodeId, id: NodeId, index: u64, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let matched = self
                .status(leader)
                .await
                .and_then(|s| s.replication.iter().find(|r| r.id == id).map(|r| r.matched_index));
            if matched.is_some_and(|m| m >= index) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "leader {leader} did not see member {id} reach index {index} within {timeout:?} (saw {matched:?})"
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The log of a process node (for failure messages).
    pub fn log(&self, id: NodeId) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("node{id}.log"))).unwrap_or_default()
    }

    /// Print the last `lines` lines of every node's log, removed nodes' too, to stderr: the
    /// post-mortem of a failed run.
    pub fn print_log_tails(&self, lines: usize) {
        for id in 1..self.next_id {
            let log = self.log(id);
            let all: Vec<&str> = log.lines().collect();
            eprintln!("--- node {id} log (tail)");
            for line in &all[all.len().saturating_sub(lines)..] {
                eprintln!("{line}");
            }
        }
    }

    /// Stop every node gracefully.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for id in ids {
            self.stop(id).await?;
        }
        self.shut_down = true;
        Ok(())
    }
}
