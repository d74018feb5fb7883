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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpSocket;
    use tokio::sync::mpsc::UnboundedReceiver;

    /// An upstream that echoes everything and reports what it received.
    async fn echo_server() -> (SocketAddr, UnboundedReceiver<Vec<u8>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let tx = tx.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    while let Ok(n @ 1..) = s.read(&mut buf).await {
                        let _ = tx.send(buf[..n].to_vec());
                        if s.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (addr, rx)
    }

    /// Node 1 (at its own IP) connected through node 2's proxy to an echo server.
    async fn setup() -> (Net, Proxy, TcpStream, UnboundedReceiver<Vec<u8>>) {
        let net = Net::new(7);
        net.register(1, node_ip(1));
        net.register(2, node_ip(2));
        let (upstream, received) = echo_server().await;
        let proxy = net.proxy(2, SocketAddr::new(node_ip(2), 0), upstream).await.unwrap();
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::new(node_ip(1), 0)).unwrap();
        let stream = socket.connect(proxy.addr).await.unwrap();
        (net, proxy, stream, received)
    }

    async fn round_trip(s: &mut TcpStream, msg: &[u8]) -> Option<Vec<u8>> {
        s.write_all(msg).await.ok()?;
        let mut buf = vec![0u8; msg.len()];
        match tokio::time::timeout(Duration::from_millis(300), s.read_exact(&mut buf)).await {
            Ok(Ok(_)) => Some(buf),
            _ => None,
        }
    }

    /// Waits for the proxy to close the connection (EOF or reset), up to 5 s.
    async fn closed(s: &mut TcpStream) -> bool {
        let mut buf = [0u8; 64];
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => continue,
                Err(_) => return false,
            }
        }
    }

    #[test]
    fn node_ips_are_distinct_loopback_addresses() {
        let ips: std::collections::HashSet<IpAddr> = (1..=600).map(node_ip).collect();
        assert_eq!(ips.len(), 600);
        assert!(ips
            .iter()
            .all(|ip| ip.is_loopback() && *ip != IpAddr::V4(Ipv4Addr::LOCALHOST)));
    }

    #[tokio::test]
    async fn a_healthy_link_carries_bytes_both_ways() {
        let (_net, _proxy, mut s, _) = setup().await;
        assert_eq!(round_trip(&mut s, b"ping").await.as_deref(), Some(&b"ping"[..]));
    }

    #[tokio::test]
    async fn a_blocked_link_loses_bytes_and_its_connections_close_on_heal() {
        let (net, proxy, mut s, mut received) = setup().await;
        assert!(round_trip(&mut s, b"one").await.is_some());
        assert_eq!(received.recv().await.unwrap(), b"one");
        net.partition(&[vec![1], vec![2]]);
        assert_eq!(round_trip(&mut s, b"two").await, None);
        assert!(received.try_recv().is_err(), "bytes crossed a blocked link");
        net.heal();
        assert!(
            closed(&mut s).await,
            "a connection that lost bytes must be closed at the heal"
        );
        // New connections work again.
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::new(node_ip(1), 0)).unwrap();
        let mut s = socket.connect(proxy.addr).await.unwrap();
        assert_eq!(round_trip(&mut s, b"three").await.as_deref(), Some(&b"three"[..]));
    }

    #[tokio::test]
    async fn a_one_way_block_stops_only_that_direction() {
        let (net, _proxy, mut s, mut received) = setup().await;
        net.update(2, 1, |f| f.blocked = true);
        // 1 → 2 still arrives, but the echo (2 → 1) is lost.
        assert_eq!(round_trip(&mut s, b"hello").await, None);
        assert_eq!(received.recv().await.unwrap(), b"hello");
        assert_eq!(net.fault(1, 2), LinkFault::default());
        assert!(net.fault(2, 1).blocked);
    }

    #[tokio::test]
    async fn delay_holds_every_chunk_back_in_order() {
        let (net, _proxy, mut s, _) = setup().await;
        net.set(
            1,
            2,
            LinkFault {
                delay: Duration::from_millis(150),
                jitter: Duration::from_millis(50),
                ..LinkFault::default()
            },
        );
        let start = Instant::now();
        s.write_all(b"a").await.unwrap();
        s.write_all(b"b").await.unwrap();
        s.write_all(b"c").await.unwrap();
        let mut buf = [0u8; 3];
        s.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"abc");
        assert!(start.elapsed() >= Duration::from_millis(150), "{:?}", start.elapsed());
    }

    #[tokio::test]
    async fn a_lossy_link_breaks_connections() {
        let (net, _proxy, mut s, _) = setup().await;
        net.set(
            1,
            2,
            LinkFault {
                drop_rate: 1.0,
                ..LinkFault::default()
            },
        );
        let _ = s.write_all(b"x").await;
        assert!(closed(&mut s).await);
    }

    #[tokio::test]
    async fn unknown_callers_are_not_faulted() {
        let (net, proxy, _s, _) = setup().await;
        net.partition(&[vec![1], vec![2]]);
        // From 127.0.0.1, which no node uses.
        let mut s = TcpStream::connect(proxy.addr).await.unwrap();
        assert_eq!(round_trip(&mut s, b"client").await.as_deref(), Some(&b"client"[..]));
    }
}
