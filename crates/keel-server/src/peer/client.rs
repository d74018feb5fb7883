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
use keel_storage::{codec, Member, NodeId, Snapshot, TypeConfig, Vote};
use openraft::errors::{
    Fatal, NetworkError, RPCError, RaftError, ReplicationClosed, StreamingError, Timeout, Unreachable,
};
use openraft::network::{Backoff, RPCOption, RPCTypes, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest, TransferLeaderResponse,
    VoteRequest, VoteResponse,
};
use openraft::RaftNetworkV2;
use serde::de::DeserializeOwned;
use tokio::io::AsyncReadExt;
use tonic::transport::{Channel, Endpoint};

use keel_datadir::identity::ClusterId;

/// Snapshot files are streamed in chunks of this size.
const SNAPSHOT_CHUNK: usize = 1024 * 1024;

/// How long an AppendEntries that carries entries may take: at least this, plus
/// [`APPEND_TIME_PER_MIB`] per MiB it carries.
///
/// openraft 0.10 leaves the deadline of replication requests to the network (its `soft_ttl`, one
/// heartbeat interval, is advice). One heartbeat interval is too short for a follower that must
/// write a MiB and sync it on a busy machine, or for a slow link: the request would time out, be
/// sent again (larger) and never complete, and replication to that follower would stall. A request
/// that takes long delays only its own follower's replication, so the bound is generous: a
/// follower that is really gone is noticed by its broken connection or by this deadline.
const APPEND_TIMEOUT_MIN: Duration = Duration::from_millis(1000);
const APPEND_TIME_PER_MIB: Duration = Duration::from_millis(1000);

/// The deadline of an AppendEntries of `bytes` encoded bytes (see above). Heartbeats get it too:
/// openraft abandons those itself after one heartbeat interval, while an empty AppendEntries of
/// the replication stream (one that only carries the commit index) waits behind the follower's
/// pending log sync like any other, and timing it out would restart replication.
fn append_timeout(bytes: usize, ttl: Duration) -> Duration {
    let per_byte = APPEND_TIME_PER_MIB.as_secs_f64() / (1024.0 * 1024.0);
    ttl.max(APPEND_TIMEOUT_MIN) + Duration::from_secs_f64(bytes as f64 * per_byte)
}

/// HTTP/2 flow-control windows of peer connections, both ways. Every RPC to a peer shares one
/// connection; with HTTP/2's default 64 KiB window, a MiB of entries needs sixteen window updates
/// from the receiver, and a heartbeat behind it waits for them: on a saturated machine, long
/// enough for a follower to miss its leader and campaign.
pub const PEER_STREAM_WINDOW: u32 = 8 * 1024 * 1024;
pub const PEER_CONNECTION_WINDOW: u32 = 32 * 1024 * 1024;

/// Cached channels to peers, by address.
#[derive(Default)]
pub struct PeerChannels {
    channels: Mutex<HashMap<String, Channel>>,
    /// The source address of outgoing peer connections (see [`PeerChannels::from_listen_addr`]).
    local_ip: Option<IpAddr>,
    /// When each peer last answered an AppendEntries as a follower of this node.
    answered: Mutex<HashMap<NodeId, std::time::Instant>>,
    /// Mutual TLS to peers (`--peer-cert-file` ...), or plain text.
    tls: Option<crate::tls::connect::PeerConnector>,
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
            answered: Mutex::default(),
            tls: None,
        }
    }

    /// Dial peers over mutual TLS with `tls` (None: plain text).
    pub fn with_tls(mut self, tls: Option<crate::tls::connect::PeerConnector>) -> PeerChannels {
        self.tls = tls.map(|mut c| {
            c.local_ip = self.local_ip;
            c
        });
        self
    }

    /// Peer `id` just answered an AppendEntries (a heartbeat or entries) as this leader's follower.
    fn record_answer(&self, id: NodeId) {
        let mut answered = self.answered.lock().unwrap_or_else(|e| e.into_inner());
        answered.insert(id, std::time::Instant::now());
    }

    /// How long ago peer `id` last answered an AppendEntries of this node (None: never).
    ///
    /// openraft's own measure of a quorum's liveness is the *sending* time of the newest RPC a
    /// quorum acknowledged, and it stops counting heartbeats that take longer than a heartbeat
    /// interval; on a saturated machine, with large entries, that ages past the lease while
    /// followers answer all along. This is the time answers *arrive*.
    pub fn since_answer(&self, id: NodeId) -> Option<Duration> {
        let answered = self.answered.lock().unwrap_or_else(|e| e.into_inner());
        answered.get(&id).map(|t| t.elapsed())
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
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))?
            .connect_timeout(Duration::from_millis(500))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(5))
            .initial_stream_window_size(PEER_STREAM_WINDOW)
            .initial_connection_window_size(PEER_CONNECTION_WINDOW)
            .keep_alive_timeout(Duration::from_secs(5))
            .keep_alive_while_idle(true)
            .local_address(self.local_ip);
        // The URI stays http://: the connector does TLS itself, with the configuration current
        // when each connection is made (tonic's own TLS would fix it at channel creation).
        let ch = match &self.tls {
            None => endpoint.connect_lazy(),
            Some(tls) => endpoint.connect_with_connector_lazy(tls.clone()),
        };
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
    /// Where peers' disk alarms are noted (see `disk/`).
    pub disk: Arc<crate::disk::DiskSpace>,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerConn;

    async fn new_client(&mut self, target: NodeId, node: &Member) -> PeerConn {
        PeerConn {
            id: self.id,
            cluster: self.cluster.clone(),
            target,
            addr: node.peer_addr.clone(),
            client: self.channels.client(&node.peer_addr).map_err(|e| e.to_string()),
            channels: self.channels.clone(),
            disk: self.disk.clone(),
        }
    }
}

/// openraft's view of one peer.
#[derive(Clone)]
pub struct PeerConn {
    id: NodeId,
    cluster: Arc<ClusterId>,
    target: NodeId,
    addr: String,
    /// An unparsable peer address is reported on every RPC rather than panicking.
    client: Result<RaftClient<Channel>, String>,
    /// Where answers are recorded (see [`PeerChannels::since_answer`]).
    channels: Arc<PeerChannels>,
    disk: Arc<crate::disk::DiskSpace>,
}

type RpcResult<T> = Result<T, RPCError<TypeConfig>>;

impl PeerConn {
    fn client(&self) -> Result<RaftClient<Channel>, Unreachable<TypeConfig>> {
        self.client
            .clone()
            .map_err(|e| Unreachable::from_string(format!("bad peer address: {e}")))
    }

    fn status_error(&self, status: tonic::Status, action: RPCTypes, ttl: Duration) -> RPCError<TypeConfig> {
        match status.code() {
            // Its disk is full (see `disk/`): back off, as from a member that is down.
            tonic::Code::ResourceExhausted => {
                self.disk.record_peer(self.target, true);
                RPCError::Unreachable(Unreachable::new(&status))
            }
            tonic::Code::Unavailable => RPCError::Unreachable(Unreachable::new(&status)),
            tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => RPCError::Timeout(Timeout {
                action,
                id: self.id,
                target: self.target,
                timeout: ttl,
            }),
            // A member that refuses us (another cluster, another protocol) will go on refusing:
            // back off rather than retry at once.
            tonic::Code::FailedPrecondition => RPCError::Unreachable(Unreachable::new(&status)),
            _ => RPCError::Network(NetworkError::new(&status)),
        }
    }

    /// A reply from a member that speaks another peer protocol is refused (see `peer/mod.rs`).
    fn check_protocol<T>(&self, reply: &tonic::Response<T>) -> Result<(), Unreachable<TypeConfig>> {
        let theirs = super::protocol_of(reply.metadata());
        if theirs == super::PEER_PROTOCOL {
            return Ok(());
        }
        super::warn_protocol_mismatch(&self.addr, theirs);
        Err(Unreachable::from_string(super::protocol_mismatch(theirs)))
    }

    /// Send `data` (an encoded request) and decode the reply.
    async fn unary<Resp, E, F, Fut>(
        &self,
        action: RPCTypes,
        data: Vec<u8>,
        ttl: Duration,
        call: F,
    ) -> RpcResult<Result<Resp, E>>
    where
        Resp: DeserializeOwned,
        E: DeserializeOwned,
        F: FnOnce(RaftClient<Channel>, tonic::Request<RaftRequest>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<RaftReply>, tonic::Status>>,
    {
        let client = self.client().map_err(RPCError::Unreachable)?;
        let mut request = tonic::Request::new(RaftRequest { data });
        request.set_timeout(ttl);
        crate::peer::tag(&mut request, &self.cluster);
        let reply = call(client, request)
            .await
            .map_err(|s| self.status_error(s, action, ttl))?;
        self.check_protocol(&reply).map_err(RPCError::Unreachable)?;
        if let Some(full) = reply.metadata().get(crate::disk::ALARM_HEADER) {
            self.disk.record_peer(self.target, full.as_bytes() == b"1");
        }
        decode_reply(reply.into_inner())
    }

    /// Send an encoded AppendEntries and note when the peer answered (see
    /// [`PeerChannels::since_answer`]).
    async fn send_append(&self, data: Vec<u8>, ttl: Duration) -> RpcResult<AppendEntriesResponse<TypeConfig>> {
        let reply = self
            .raft_rpc(RPCTypes::AppendEntries, data, ttl, |mut c, r| async move {
                c.append_entries(r).await
            })
            .await?;
        if !matches!(reply, AppendEntriesResponse::HigherVote(_)) {
            self.channels.record_answer(self.target);
        }
        Ok(reply)
    }

    /// A Raft RPC whose only error is the peer's fatal one: a stopped peer is unreachable.
    async fn raft_rpc<Resp, F, Fut>(&self, action: RPCTypes, data: Vec<u8>, ttl: Duration, call: F) -> RpcResult<Resp>
    where
        Resp: DeserializeOwned,
        F: FnOnce(RaftClient<Channel>, tonic::Request<RaftRequest>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<RaftReply>, tonic::Status>>,
    {
        match self
            .unary::<Resp, RaftError<TypeConfig>, _, _>(action, data, ttl, call)
            .await?
        {
            Ok(resp) => Ok(resp),
            Err(e) => Err(RPCError::Unreachable(Unreachable::from_string(format!(
                "member {} answered with an error: {e}",
                self.target
            )))),
        }
    }
}

/// A conflict cannot answer entries sent from the very start of the log (no `prev_log_id`):
/// nothing precedes them to conflict with. openraft's replication unwraps the conflicting log id
/// there and would panic, so such a reply (from a confused or forged peer) is a network error
/// instead.
fn check_append_reply(
    from_the_start: bool,
    reply: AppendEntriesResponse<TypeConfig>,
) -> RpcResult<AppendEntriesResponse<TypeConfig>> {
    if from_the_start && matches!(reply, AppendEntriesResponse::Conflict) {
        return Err(RPCError::Network(NetworkError::from_string(
            "the peer reported a conflict with entries sent from the start of the log",
        )));
    }
    Ok(reply)
}

/// Decode a peer's reply: its value, or the error it returned.
fn decode_reply<Resp, E>(reply: RaftReply) -> RpcResult<Result<Resp, E>>
where
    Resp: DeserializeOwned,
    E: DeserializeOwned,
{
    let garbled = |e: codec::DecodeError| RPCError::Network(NetworkError::new(&e));
    if !reply.error.is_empty() {
        return Ok(Err(codec::decode(&reply.error).map_err(garbled)?));
    }
    Ok(Ok(codec::decode(&reply.data).map_err(garbled)?))
}

impl RaftNetworkV2<TypeConfig> for PeerConn {
    type SnapshotData = tokio::fs::File;

    /// Entries arrive at most 1 MiB at a time (keel-storage's `REPLICATION_BATCH_BYTES`, applied
    /// by the log reader openraft replicates from), with a deadline sized to them.
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<TypeConfig>> {
        let first = rpc.prev_log_id.is_none();
        let heartbeat = rpc.entries.is_empty();
        let data = codec::encode(&rpc);
        let ttl = append_timeout(data.len(), option.hard_ttl());
        let reply = if heartbeat {
            // openraft gives up on a heartbeat after one heartbeat interval (50 ms), and dropping
            // the request then cancelled it on the wire: a follower whose runtime had not read
            // it in time never saw it, and after a few such misses it campaigned although the
            // leader was sending (t30's busy machine, debug build). Sent from a task of its own,
            // the heartbeat still arrives and renews the follower's lease; its late answer still
            // counts in `since_answer`, and only openraft stops waiting for it.
            let conn = self.clone();
            tokio::spawn(async move { conn.send_append(data, ttl).await })
                .await
                .map_err(|e| RPCError::Network(NetworkError::new(&e)))??
        } else {
            self.send_append(data, ttl).await?
        };
        check_append_reply(first, reply)
    }

    async fn vote(&mut self, rpc: VoteRequest<TypeConfig>, option: RPCOption) -> RpcResult<VoteResponse<TypeConfig>> {
        self.raft_rpc(
            RPCTypes::Vote,
            codec::encode(&rpc),
            option.hard_ttl(),
            |mut c, r| async move { c.vote(r).await },
        )
        .await
    }

    /// Without this, openraft grants every pre-vote and pre-vote does nothing.
    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<TypeConfig>> {
        self.raft_rpc(
            RPCTypes::Vote,
            codec::encode(&rpc),
            option.hard_ttl(),
            |mut c, r| async move { c.pre_vote(r).await },
        )
        .await
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<TransferLeaderResponse<TypeConfig>> {
        let reply = self
            .unary::<TransferLeaderResponse<TypeConfig>, Fatal<TypeConfig>, _, _>(
                RPCTypes::TransferLeader,
                codec::encode(&req),
                option.hard_ttl(),
                |mut c, r| async move { c.transfer_leader(r).await },
            )
            .await?;
        reply.map_err(|f| {
            RPCError::Unreachable(Unreachable::from_string(format!("member {} stopped: {f}", self.target)))
        })
    }

    /// Stream the snapshot file: a first chunk with the vote and metadata, then the file's bytes.
    /// The receiver writes them to disk as they come and verifies the checksums before installing.
    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
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
        let streaming = |e: RPCError<TypeConfig>| match e {
            RPCError::Unreachable(u) => StreamingError::Unreachable(u),
            RPCError::Timeout(t) => StreamingError::Timeout(t),
            RPCError::Network(n) => StreamingError::Network(n),
            other => StreamingError::Network(NetworkError::new(&other)),
        };
        let reply = reply.map_err(|s| streaming(self.status_error(s, RPCTypes::InstallSnapshot, ttl)))?;
        self.check_protocol(&reply).map_err(StreamingError::Unreachable)?;
        match decode_reply::<SnapshotResponse<TypeConfig>, Fatal<TypeConfig>>(reply.into_inner()).map_err(streaming)? {
            Ok(resp) => Ok(resp),
            // The peer stopped: back off, as from a peer that cannot be reached.
            Err(f) => Err(StreamingError::Unreachable(Unreachable::from_string(format!(
                "member {} could not install the snapshot: {f}",
                self.target
            )))),
        }
    }

    /// After an unreachable peer: retry soon, then less often, so a restarted peer is caught up
    /// quickly and a dead one costs little.
    fn backoff(&self) -> Option<Backoff> {
        Some(Backoff::new((0..).map(|n: u32| {
            Duration::from_millis(20u64.saturating_mul(1 << n.min(5)))
        })))
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

    #[test]
    fn appends_get_time_by_size() {
        let hb = Duration::from_millis(37);
        assert_eq!(append_timeout(0, hb), APPEND_TIMEOUT_MIN);
        let mib = append_timeout(1024 * 1024, hb);
        assert_eq!(mib, APPEND_TIMEOUT_MIN + APPEND_TIME_PER_MIB);
        assert!(append_timeout(2 * 1024 * 1024, hb) > mib);
        assert_eq!(append_timeout(0, Duration::from_secs(5)), Duration::from_secs(5));
    }
}
