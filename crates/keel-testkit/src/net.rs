//! # A user-space network between test nodes
//!
//! Every node's peer port is fronted by a TCP proxy: the address a node advertises to its peers
//! is the proxy's, which forwards to the node's real listener. The proxy knows who is calling from
//! the source IP of the connection: each test node has its own loopback address (127.0.0.x), and
//! keel makes its peer connections from the IP its peer listener is bound to. So every directed
//! link `a → b` (the bytes `a` sends to `b`, whichever side opened the connection) can be given a
//! [`LinkFault`]:
//!
//! - `blocked`: a black hole. Bytes are read and thrown away, so the sender sees nothing but
//!   silence, as with a cut cable; a blocked direction on one side only is a one-way partition.
//!   A connection that lost bytes is broken for good (an HTTP/2 stream cannot skip bytes), so once
//!   the link is healed the proxy closes it and the nodes reconnect, as they would after a real
//!   partition outlasted their TCP timeouts.
//! - `delay` and `jitter`: each chunk is delivered `delay + U(0, jitter)` after it was read, in
//!   order (a chunk never overtakes the one before it).
//! - `drop_rate`: TCP never loses bytes, so a lossy link is modelled by what loss does to the
//!   application: each chunk has this probability of breaking the connection it travels on.
//!
//! Connections from unknown addresses (clients, the test harness) pass untouched. Nothing here
//! needs root, and everything stays on 127.0.0.0/8.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use keel_storage::NodeId;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// The loopback address test node `id` uses for all its listeners and peer connections.
pub fn node_ip(id: NodeId) -> IpAddr {
    // 127.0.0.1 stays free for everything else; ids above 240 wrap into 127.0.1.x.
    let n = id + 10;
    IpAddr::V4(Ipv4Addr::new(127, 0, (n / 250) as u8, (n % 250) as u8 + 1))
}

/// What happens to the bytes one node sends another.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LinkFault {
    pub blocked: bool,
    pub delay: Duration,
    pub jitter: Duration,
    /// Probability (0..=1) that a chunk breaks its connection.
    pub drop_rate: f64,
}

impl LinkFault {
    fn is_healthy(&self) -> bool {
        *self == LinkFault::default()
    }
}

/// The fault table and the proxies that apply it. Cloning is cheap; clones share the table.
#[derive(Clone)]
pub struct Net {
    inner: Arc<Inner>,
}

struct Inner {
    state: Mutex<State>,
    /// Bumped on every change, so idle connections notice a heal.
    version: watch::Sender<u64>,
}

struct State {
    nodes: HashMap<IpAddr, NodeId>,
    links: HashMap<(NodeId, NodeId), LinkFault>,
    rng: StdRng,
}

impl Net {
    /// A network with no faults; `seed` drives jitter and drops.
    pub fn new(seed: u64) -> Net {
        Net {
            inner: Arc::new(Inner {
                state: Mutex::new(State {
                    nodes: HashMap::new(),
                    links: HashMap::new(),
                    rng: StdRng::seed_from_u64(seed),
                }),
                version: watch::channel(0).0,
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // The table is only ever replaced entry by entry; a panicking holder leaves it usable.
        self.inner.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn changed(&self) {
        self.inner.version.send_modify(|v| *v += 1);
    }

    /// Connections from `ip` are node `id`'s.
    pub fn register(&self, id: NodeId, ip: IpAddr) {
        self.state().nodes.insert(ip, id);
    }

    /// Set the fault on the link `from → to` (one direction only).
    pub fn set(&self, from: NodeId, to: NodeId, fault: LinkFault) {
        {
            let mut state = self.state();
            if fault.is_healthy() {
                state.links.remove(&(from, to));
            } else {
                state.links.insert((from, to), fault);
            }
        }
        self.changed();
    }

    /// Change the fault on `from → to` in place.
    pub fn update(&self, from: NodeId, to: NodeId, f: impl FnOnce(&mut LinkFault)) {
        let mut fault = self.fault(from, to);
        f(&mut fault);
        self.set(from, to, fault);
    }

    /// The fault on `from → to`.
    pub fn fault(&self, from: NodeId, to: NodeId) -> LinkFault {
        self.state().links.get(&(from, to)).cloned().unwrap_or_default()
    }

    /// Black-hole every link between different groups, both ways. Links within a group, and of
    /// nodes in no group, are left as they are.
    pub fn partition(&self, groups: &[Vec<NodeId>]) {
        for (i, a) in groups.iter().enumerate() {
            for (j, b) in groups.iter().enumerate() {
                if i == j {
                    continue;
                }
                for &x in a {
                    for &y in b {
                        self.update(x, y, |f| f.blocked = true);
                    }
                }
            }
        }
    }

    /// Remove every fault.
    pub fn heal(&self) {
        self.state().links.clear();
        self.changed();
    }

    /// Every faulty link, for reports.
    pub fn faults(&self) -> Vec<((NodeId, NodeId), LinkFault)> {
        let mut v: Vec<_> = self.state().links.iter().map(|(k, f)| (*k, f.clone())).collect();
        v.sort_by_key(|(k, _)| *k);
        v
    }

    /// Front node `to`'s listener at `upstream` with a proxy listening on `listen`.
    pub async fn proxy(&self, to: NodeId, listen: SocketAddr, upstream: SocketAddr) -> std::io::Result<Proxy> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let net = self.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((inbound, peer)) = listener.accept().await else {
                    continue;
                };
                let from = net.state().nodes.get(&peer.ip()).copied();
                let net = net.clone();
                tokio::spawn(async move {
                    // A refused upstream (the node is down) just closes the caller's connection,
                    // as the node itself would.
                    let Ok(outbound) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    net.carry(from, to, inbound, outbound).await;
                });
            }
        });
        Ok(Proxy { addr, task })
    }

    /// Pump both directions of one connection until either ends or a fault breaks it.
    async fn carry(&self, from: Option<NodeId>, to: NodeId, inbound: TcpStream, outbound: TcpStream) {
        let _ = inbound.set_nodelay(true);
        let _ = outbound.set_nodelay(true);
        let (in_read, in_write) = inbound.into_split();
        let (out_read, out_write) = outbound.into_split();
        let link = |a: Option<NodeId>, b: Option<NodeId>| a.zip(b);
        let forward = self.pump(link(from, Some(to)), in_read, out_write);
        let backward = self.pump(link(Some(to), from), out_read, in_write);
        // Whichever direction ends first ends the connection: dropping both halves closes it.
        tokio::select! {
            _ = forward => {}
            _ = backward => {}
        }
    }

    /// Copy one direction, applying the fault of `link` (None: no faults) to every chunk.
    async fn pump(
        &self,
        link: Option<(NodeId, NodeId)>,
        read: tokio::net::tcp::OwnedReadHalf,
        mut write: tokio::net::tcp::OwnedWriteHalf,
    ) {
        let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(256);
        let writer = async move {
            while let Some((at, chunk)) = rx.recv().await {
                tokio::time::sleep_until(at).await;
                if write.write_all(&chunk).await.is_err() {
                    return;
                }
            }
            let _ = write.shutdown().await;
        };
        tokio::pin!(writer);
        let broken = tokio::select! {
            broken = self.read_side(link, read, tx) => broken,
            _ = &mut writer => return,
        };
        // After an orderly end the writer delivers what is still delayed, then closes.
        if !broken {
            writer.await;
        }
    }

    /// Read chunks and queue them with their delivery times. Returns true if a fault broke the
    /// connection, false when the sender closed it.
    async fn read_side(
        &self,
        link: Option<(NodeId, NodeId)>,
        mut read: tokio::net::tcp::OwnedReadHalf,
        tx: mpsc::Sender<(Instant, Vec<u8>)>,
    ) -> bool {
        let mut version = self.inner.version.subscribe();
        let mut buf = vec![0u8; 64 * 1024];
        let mut lost_bytes = false;
        let mut last = Instant::now();
        loop {
            let n = tokio::select! {
                n = read.read(&mut buf) => match n {
                    Ok(0) | Err(_) => return false,
                    Ok(n) => n,
                },
                changed = version.changed() => {
                    if changed.is_err() {
                        return true;
                    }
                    // A healed link closes the connections that lost bytes while it was down.
                    if lost_bytes && link.is_some_and(|(a, b)| !self.fault(a, b).blocked) {
                        return true;
                    }
                    continue;
                }
            };
            let Some((a, b)) = link else {
                if tx.send((Instant::now(), buf[..n].to_vec())).await.is_err() {
                    return true;
                }
                continue;
            };
            let (fault, roll, extra) = {
                let mut state = self.state();
                let fault = state.links.get(&(a, b)).cloned().unwrap_or_default();
                let roll: f64 = state.rng.random();
                let extra = fault.jitter.mul_f64(state.rng.random());
                (fault, roll, extra)
            };
            if fault.blocked {
                lost_bytes = true;
                continue;
            }
            if lost_bytes || roll < fault.drop_rate {
                return true;
            }
            // Never before the previous chunk: delay reorders nothing.
            let at = (Instant::now() + fault.delay + extra).max(last);
            last = at;
            if tx.send((at, buf[..n].to_vec())).await.is_err() {
                return true;
            }
        }
    }
}

/// A running proxy; stopped when dropped (open connections are left to end on their own).
pub struct Proxy {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
