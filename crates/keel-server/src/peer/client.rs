//! The Raft network, client side: how this node talks to its peers.
//!
//! One gRPC channel per peer address, created on first use and kept for the life of the node
//! (HTTP/2 multiplexes every replication stream, vote and forwarded request over it), with a
//! connect timeout, TCP_NODELAY and keepalives that notice a dead peer. Every RPC carries the
//! deadline openraft gives it. A peer that cannot be reached is reported as `Unreachable`, so
//! openraft backs off (see [`PeerConn::backoff`]) instead of hammering it.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keel_proto::raft::raft_client::RaftClient;
use keel_proto::raft::{RaftReply, RaftRequest, SnapshotChunk};
use keel_storage::{codec, Member, NodeId, TypeConfig, Vote};
use openraft::error::{
    Fatal, InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError, ReplicationClosed,
    StreamingError, Timeout, Unreachable,
};
use openraft::network::{Backoff, RPCOption, RPCTypes, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, SnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{AnyError, Snapshot};
use serde::de::DeserializeOwned;
use tokio::io::AsyncReadExt;
use tonic::transport::{Channel, Endpoint};

use crate::identity::ClusterId;

/// Snapshot files are streamed in chunks of this size.
const SNAPSHOT_CHUNK: usize = 1024 * 1024;

/// The most entry bytes one AppendEntries carries (a single larger entry still goes alone).
///
/// openraft 0.9 gives every AppendEntries one heartbeat interval (50 ms by default) to be answered,
/// and the follower answers only once the entries are on disk. A follower that fell behind by many
/// large entries would otherwise be sent all of them in one RPC, which times out, is sent again
/// (larger, as new entries arrive) and never completes: replication to it stalls for good, and
/// with two such followers nothing commits.
const APPEND_BATCH_BYTES: usize = 1024 * 1024;

/// For a batch too large to send at once: how many leading entries fit in `budget` bytes (at
/// least one), or None if it is a single entry or they all fit. Stops measuring at the first entry
/// that does not fit: a new leader's first probes of a follower can name hundreds of batch
/// entries (tens of MiB), and encoding them all only to refuse them delayed its first commit.
fn entries_that_fit(entries: &[keel_storage::Entry], budget: usize) -> Option<u64> {
    if entries.len() < 2 {
        return None;
    }
    let mut total = 0;
    for (n, entry) in entries.iter().enumerate() {
        total += codec::encoded_len(entry);
        if total > budget {
            return Some(n.max(1) as u64);
        }
    }
    None
}

/// Cached channels to peers, by address.
#[derive(Default)]
pub struct PeerChannels {
    channels: Mutex<HashMap<String, Channel>>,
    /// The source address of outgoing peer connections (see [`PeerChannels::from_listen_addr`]).
    local_ip: Option<IpAddr>,
}

impl PeerChannels {
    /// Channels whose connections leave from the IP the peer listener is bound to, unless that
    /// is the wildcard address. As with Consul's `bind_addr`, a multi-homed host then talks to
    /// its peers from the address they know it by, and firewall rules or a fault-injecting proxy
    /// can tell the members' connections apart (keel's chaos tests give each node its own
    /// 127.0.0.x).
    pub fn from_listen_addr(addr: SocketAddr) -> PeerChannels {
        PeerChannels {
            channels: Mutex::default(),
            local_ip: (!addr.ip().is_unspecified()).then_some(addr.ip()),
        }
    }

    /// The client for the peer at `addr`, on the one channel kept for it. Message sizes are not
    /// limited: what a peer sends is bounded by keel itself (entries per AppendEntries, value
    /// and txn limits), and a forwarded request's reply can exceed tonic's 4 MiB default.
    pub fn client(&self, addr: &str) -> Result<RaftClient<Channel>, tonic::transport::Error> {
        let unlimited = |ch: Channel| {
            RaftClient::new(ch)
                .max_decoding_message_size(usize::MAX)
                .max_encoding_message_size(usize::MAX)
        };
        let mut channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(ch) = channels.get(addr) {
            return Ok(unlimited(ch.clone()));
        }
        let ch = Endpoint::from_shared(format!("http://{addr}"))?
            .connect_timeout(Duration::from_millis(500))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(5))
            .keep_alive_while_idle(true)
            .local_address(self.local_ip)
            .connect_lazy();
        channels.insert(addr.to_string(), ch.clone());
        Ok(unlimited(ch))
    }
}

/// Does this error mean the request never left this node (so it surely had no effect)?
pub fn never_sent(status: &tonic::Status) -> bool {
    // tonic reports failures to connect as Unavailable with the connect error as message; a
    // connection that broke mid-request is also Unavailable but says so differently.
    let msg = status.message().to_ascii_lowercase();
    status.code() == tonic::Code::Unavailable && (msg.contains("connect") || msg.contains("refused"))
}

/// openraft's network factory: hands out connections that share [`PeerChannels`].
#[derive(Clone)]
pub struct Network {
    pub id: NodeId,
    pub channels: Arc<PeerChannels>,
    pub cluster: Arc<ClusterId>,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerConn;

    async fn new_client(&mut self, target: NodeId, node: &Member) -> PeerConn {
        PeerConn {
            id: self.id,
            cluster: self.cluster.clone(),
            target,
            client: self.channels.client(&node.peer_addr).map_err(|e| e.to_string()),
        }
    }
}

/// openraft's view of one peer.
pub struct PeerConn {
    id: NodeId,
    cluster: Arc<ClusterId>,
    target: NodeId,
    /// An unparsable peer address is reported on every RPC rather than panicking.
    client: Result<RaftClient<Channel>, String>,
}

type RpcResult<T, E> = Result<T, RPCError<NodeId, Member, RaftError<NodeId, E>>>;

impl PeerConn {
    fn client(&self) -> Result<RaftClient<Channel>, Unreachable> {
        self.client
            .clone()
            .map_err(|e| Unreachable::new(&AnyError::error(format!("bad peer address: {e}"))))
    }

    fn status_error<E: std::error::Error>(
        &self,
        status: tonic::Status,
        action: RPCTypes,
        ttl: Duration,
    ) -> RPCError<NodeId, Member, RaftError<NodeId, E>> {
        match status.code() {
            tonic::Code::Unavailable => RPCError::Unreachable(Unreachable::new(&status)),
            tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => RPCError::Timeout(Timeout {
                action,
                id: self.id,
                target: self.target,
                timeout: ttl,
            }),
            _ => RPCError::Network(NetworkError::new(&status)),
        }
    }

    /// Send `data` (an encoded request) and decode the reply.
    async fn unary<Resp, E, F, Fut>(
        &self,
        action: RPCTypes,
        data: Vec<u8>,
        ttl: Duration,
        call: F,
    ) -> RpcResult<Resp, E>
    where
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
        F: FnOnce(RaftClient<Channel>, tonic::Request<RaftRequest>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<RaftReply>, tonic::Status>>,
    {
        let client = self.client().map_err(RPCError::Unreachable)?;
        let mut request = tonic::Request::new(RaftRequest { data });
        request.set_timeout(ttl);
        crate::peer::tag(&mut request, &self.cluster);
        let reply = call(client, request)
            .await
            .map_err(|s| self.status_error(s, action, ttl))?
            .into_inner();
        decode_reply(self.target, reply)
    }
}

/// A conflict cannot answer entries sent from the very start of the log (no `prev_log_id`):
/// nothing precedes them to conflict with. openraft 0.9's replication unwraps the conflicting
/// log id there and would panic, so such a reply (from a confused or forged peer) is a network
/// error instead.
fn check_append_reply(
    from_the_start: bool,
    reply: AppendEntriesResponse<NodeId>,
) -> RpcResult<AppendEntriesResponse<NodeId>, openraft::error::Infallible> {
    if from_the_start && matches!(reply, AppendEntriesResponse::Conflict) {
        return Err(RPCError::Network(NetworkError::new(&AnyError::error(
            "the peer reported a conflict with entries sent from the start of the log",
        ))));
    }
    Ok(reply)
}

/// Decode a peer's reply: its value, or the RaftError it returned.
fn decode_reply<Resp, E>(target: NodeId, reply: RaftReply) -> RpcResult<Resp, E>
where
    Resp: DeserializeOwned,
    E: std::error::Error + DeserializeOwned,
{
    let garbled = |e: codec::DecodeError| RPCError::Network(NetworkError::new(&e));
    if !reply.error.is_empty() {
        let err: RaftError<NodeId, E> = codec::decode(&reply.error).map_err(garbled)?;
        return Err(RPCError::RemoteError(RemoteError::new(target, err)));
    }
    codec::decode(&reply.data).map_err(garbled)
}

impl RaftNetwork<TypeConfig> for PeerConn {
    /// A batch larger than `APPEND_BATCH_BYTES` (1 MiB) is refused with `PayloadTooLarge`, naming how many
    /// entries fit; openraft then sends those at once and the rest after.
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>, openraft::error::Infallible> {
        if let Some(fit) = entries_that_fit(&rpc.entries, APPEND_BATCH_BYTES) {
            return Err(RPCError::PayloadTooLarge(PayloadTooLarge::new_entries_hint(fit)));
        }
        let first = rpc.prev_log_id.is_none();
        let data = codec::encode(&rpc);
        let reply = self
            .unary(
                RPCTypes::AppendEntries,
                data,
                option.hard_ttl(),
                |mut c, r| async move { c.append_entries(r).await },
            )
            .await?;
        check_append_reply(first, reply)
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>, openraft::error::Infallible> {
        self.unary(
            RPCTypes::Vote,
            codec::encode(&rpc),
            option.hard_ttl(),
            |mut c, r| async move { c.vote(r).await },
        )
        .await
    }

    /// Not used: keel sends whole snapshots as one stream ([`Self::full_snapshot`]), and
    /// openraft's replication only calls that.
    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        Err(RPCError::Network(NetworkError::new(&AnyError::error(
            "chunked snapshot RPCs are not supported; keel streams snapshots with full_snapshot",
        ))))
    }

    /// Stream the snapshot file: a first chunk with the vote and metadata, then the file's bytes.
    /// The receiver writes them to disk as they come and verifies the checksums before installing.
    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot<TypeConfig>,
        cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<NodeId>, StreamingError<TypeConfig, Fatal<NodeId>>> {
        let mut client = self.client().map_err(StreamingError::Unreachable)?;
        let first = SnapshotChunk {
            meta: codec::encode(&(vote, snapshot.meta.clone())),
            data: Vec::new(),
        };
        let file = snapshot.snapshot;
        let chunks = futures::stream::unfold(Some(file), |file| async move {
            let mut file = file?;
            let mut buf = vec![0u8; SNAPSHOT_CHUNK];
            match file.read(&mut buf).await {
                Ok(0) => None,
                Ok(n) => {
                    buf.truncate(n);
                    Some((
                        SnapshotChunk {
                            meta: Vec::new(),
                            data: buf,
                        },
                        Some(file),
                    ))
                }
                // Ending the stream early makes the receiver's checksum fail: it will not install.
                Err(e) => {
                    tracing::warn!(error = %e, "reading snapshot file for a peer failed");
                    None
                }
            }
        });
        let stream = futures::StreamExt::chain(futures::stream::iter([first]), chunks);
        let ttl = option.hard_ttl();
        let mut request = tonic::Request::new(stream);
        request.set_timeout(ttl);
        crate::peer::tag(&mut request, &self.cluster);
        let reply = tokio::select! {
            r = client.install_snapshot(request) => r,
            closed = cancel => return Err(StreamingError::Closed(closed)),
        };
        let reply = match reply {
            Ok(r) => r.into_inner(),
            Err(status) => {
                return Err(
                    match self.status_error::<Fatal<NodeId>>(status, RPCTypes::InstallSnapshot, ttl) {
                        RPCError::Unreachable(u) => StreamingError::Unreachable(u),
                        RPCError::Timeout(t) => StreamingError::Timeout(t),
                        RPCError::Network(n) => StreamingError::Network(n),
                        other => StreamingError::Network(NetworkError::new(&other)),
                    },
                )
            }
        };
        if !reply.error.is_empty() {
            let err: Fatal<NodeId> =
                codec::decode(&reply.error).map_err(|e| StreamingError::Network(NetworkError::new(&e)))?;
            return Err(StreamingError::RemoteError(RemoteError::new(self.target, err)));
        }
        codec::decode(&reply.data).map_err(|e| StreamingError::Network(NetworkError::new(&e)))
    }

    /// After an unreachable peer: retry soon, then less often, so a restarted peer is caught up
    /// quickly and a dead one costs little.
    fn backoff(&self) -> Backoff {
        Backoff::new((0..).map(|n: u32| Duration::from_millis(20u64.saturating_mul(1 << n.min(5)))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_conflict_with_entries_from_the_start_is_a_network_error() {
        assert!(matches!(
            check_append_reply(true, AppendEntriesResponse::Conflict),
            Err(RPCError::Network(_))
        ));
        assert!(matches!(
            check_append_reply(false, AppendEntriesResponse::Conflict),
            Ok(AppendEntriesResponse::Conflict)
        ));
        assert!(matches!(
            check_append_reply(true, AppendEntriesResponse::Success),
            Ok(AppendEntriesResponse::Success)
        ));
    }
}
