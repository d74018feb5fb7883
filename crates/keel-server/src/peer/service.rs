//! The Raft peer service: what other members call on this node. Kept apart from the client
//! services; it listens on the peer address only.

use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_proto::raft::raft_server::Raft as RaftRpc;
use keel_proto::raft::{RaftReply, RaftRequest, SnapshotChunk};
use keel_storage::{codec, Snapshot, SnapshotMeta, TypeConfig, Vote};
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, TransferLeaderRequest, VoteRequest};
use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tonic::{Request, Response, Status, Streaming};

use crate::error::NodeError;
use crate::forward::{ForwardReply, ForwardRequest};
use crate::node::Node;

pub struct PeerService {
    pub node: Arc<Node>,
    transfers: Transfers,
}

impl PeerService {
    pub fn new(node: Arc<Node>) -> Self {
        PeerService {
            node,
            transfers: Transfers::default(),
        }
    }
}

/// Incoming snapshot transfers: one at a time, and a newer one ends an older one that is still
/// streaming (a new leader, or the same leader trying again after a timeout), so that at most
/// one snapshot's worth of disk is being received. (The received file itself is unlinked from
/// the start, see keel-storage's `create_receive_file`, so it can never be left behind.)
#[derive(Default)]
struct Transfers {
    /// Held while a transfer is received and installed.
    one_at_a_time: tokio::sync::Mutex<()>,
    /// The newest transfer's number, and how to end it.
    newest: std::sync::Mutex<(u64, Option<tokio::sync::oneshot::Sender<()>>)>,
}

impl Transfers {
    /// Register a new transfer: end the one before it, if it is still running. Returns the new
    /// transfer's number and the signal that a newer one has ended it.
    fn begin(&self) -> (u64, tokio::sync::oneshot::Receiver<()>) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let mut newest = self.newest.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(older) = newest.1.replace(tx) {
            let _ = older.send(());
        }
        newest.0 += 1;
        (newest.0, rx)
    }

    fn end(&self, number: u64) {
        let mut newest = self.newest.lock().unwrap_or_else(|e| e.into_inner());
        if newest.0 == number {
            newest.1 = None;
        }
    }
}

/// Ends a transfer's registration however its handler ends (a dropped handler included).
struct TransferGuard<'a> {
    transfers: &'a Transfers,
    number: u64,
}

impl Drop for TransferGuard<'_> {
    fn drop(&mut self) {
        self.transfers.end(self.number);
    }
}

/// Refuse messages from members of another cluster. `adopt`: the message comes from a leader
/// replicating to this node, whose cluster a joining node may take as its own.
fn check_cluster<T>(node: &Node, req: &Request<T>, adopt: bool) -> Result<(), Status> {
    let protocol = crate::peer::protocol_of(req.metadata());
    if protocol != crate::peer::PEER_PROTOCOL {
        let from = req.remote_addr().map_or_else(|| "?".to_string(), |a| a.to_string());
        crate::peer::warn_protocol_mismatch(&from, protocol);
        return Err(Status::failed_precondition(crate::peer::protocol_mismatch(protocol)));
    }
    let theirs = req
        .metadata()
        .get(crate::peer::CLUSTER_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    node.cluster.check(theirs, adopt).map_err(Status::failed_precondition)
}

fn bad_request(e: codec::DecodeError) -> Status {
    Status::invalid_argument(format!("undecodable peer message: {e}"))
}

impl PeerService {
    /// A reply carrying either the value or the error, both encoded, and this member's disk alarm.
    fn reply<T: Serialize, E: Serialize>(&self, result: Result<T, E>) -> Response<RaftReply> {
        let mut response = Response::new(match result {
            Ok(v) => RaftReply {
                data: codec::encode(&v),
                error: Vec::new(),
            },
            Err(e) => RaftReply {
                data: Vec::new(),
                error: codec::encode(&e),
            },
        });
        crate::peer::tag_protocol(response.metadata_mut());
        let full = tonic::metadata::MetadataValue::from_static(if self.node.disk.is_full() { "1" } else { "0" });
        response.metadata_mut().insert(crate::disk::ALARM_HEADER, full);
        response
    }

    /// Refuse what would write new entries or a snapshot here while the disk alarm is raised.
    fn refuse_if_full(&self) -> Result<(), Status> {
        self.node.disk.refuse_if_full().map_err(|e| e.to_status())
    }
}

#[tonic::async_trait]
impl RaftRpc for PeerService {
    async fn append_entries(&self, req: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        check_cluster(&self.node, &req, true)?;
        let rpc: AppendEntriesRequest<TypeConfig> = codec::decode(&req.into_inner().data).map_err(bad_request)?;
        if !rpc.entries.is_empty() {
            self.refuse_if_full()?;
        }
        let (entries, arrived) = (rpc.entries.len(), std::time::Instant::now());
        tracing::debug!(entries, "append_entries arrived");
        // On a task of its own: the leader gives up on a heartbeat after one heartbeat interval,
        // which cancels this handler, but a heartbeat that arrived must still count (it keeps
        // this member from campaigning), however late it is answered.
        let node = self.node.clone();
        let handled = tokio::spawn(async move {
            let result = node.raft.append_entries(rpc).await;
            tracing::debug!(
                entries,
                took_ms = arrived.elapsed().as_millis() as u64,
                "append_entries answered"
            );
            if matches!(&result, Ok(r) if !matches!(r, AppendEntriesResponse::HigherVote(_))) {
                node.heard_from_leader();
            }
            result
        });
        let result = handled
            .await
            .map_err(|e| Status::internal(format!("append_entries task failed: {e}")))?;
        Ok(self.reply(result))
    }

    async fn vote(&self, req: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        check_cluster(&self.node, &req, false)?;
        let rpc: VoteRequest<TypeConfig> = codec::decode(&req.into_inner().data).map_err(bad_request)?;
        Ok(self.reply(self.node.raft.vote(rpc).await))
    }

    async fn pre_vote(&self, req: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        check_cluster(&self.node, &req, false)?;
        let rpc: VoteRequest<TypeConfig> = codec::decode(&req.into_inner().data).map_err(bad_request)?;
        Ok(self.reply(self.node.raft.pre_vote(rpc).await))
    }

    async fn transfer_leader(&self, req: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        check_cluster(&self.node, &req, false)?;
        let rpc: TransferLeaderRequest<TypeConfig> = codec::decode(&req.into_inner().data).map_err(bad_request)?;
        if self.node.is_removed() {
            // A removed member must not campaign, whoever asks.
            return Err(Status::failed_precondition(format!(
                "member {} was removed from the cluster and does not campaign",
                self.node.id
            )));
        }
        Ok(self.reply(self.node.raft.handle_transfer_leader(rpc).await))
    }

    /// Write the streamed file straight to disk, then hand it to Raft, which verifies and installs
    /// it (keel-storage's install checks every block's CRC and the SHA-256). One transfer at a
    /// time; a newer one ends an older one that is still streaming (see `Transfers`).
    async fn install_snapshot(&self, req: Request<Streaming<SnapshotChunk>>) -> Result<Response<RaftReply>, Status> {
        check_cluster(&self.node, &req, true)?;
        self.refuse_if_full()?;
        let mut stream = req.into_inner();
        let first = stream
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("empty snapshot stream"))?;
        let (vote, meta): (Vote, SnapshotMeta) = codec::decode(&first.meta).map_err(bad_request)?;
        // openraft panics on a snapshot whose last log id is of a later leader than the vote that
        // sends it: no leader can send one, so a peer that does is confused or forged.
        if meta.last_log_id.is_some_and(|l| l.leader_id > vote.leader_id) {
            return Err(Status::invalid_argument(format!(
                "snapshot at {:?} is newer than the vote {vote} that sends it",
                meta.last_log_id
            )));
        }
        let (number, mut superseded) = self.transfers.begin();
        let _registered = TransferGuard {
            transfers: &self.transfers,
            number,
        };
        let aborted = || Status::aborted("superseded by a newer snapshot transfer");
        let _one = tokio::select! {
            one = self.transfers.one_at_a_time.lock() => one,
            _ = &mut superseded => return Err(aborted()),
        };
        let mut file = self
            .node
            .inbox
            .create_file()
            .map_err(|e| Status::unavailable(format!("cannot receive snapshot: {e}")))?;
        // t23 follows transfers by this line.
        tracing::info!(snapshot = %keel_storage::sm::snapshot_file_stem(&meta), "begin_receiving_snapshot");
        let mut received = 0u64;
        loop {
            let chunk = tokio::select! {
                chunk = stream.message() => chunk?,
                _ = &mut superseded => return Err(aborted()),
            };
            let Some(chunk) = chunk else { break };
            file.write_all(&chunk.data)
                .await
                .map_err(|e| Status::internal(format!("writing received snapshot: {e}")))?;
            received += chunk.data.len() as u64;
        }
        file.flush()
            .await
            .map_err(|e| Status::internal(format!("writing received snapshot: {e}")))?;
        tracing::info!(bytes = received, snapshot = %keel_storage::sm::snapshot_file_stem(&meta), "received snapshot");
        let snapshot = Snapshot { meta, snapshot: file };
        Ok(self.reply(self.node.raft.install_full_snapshot(vote, snapshot).await))
    }

    async fn forward(&self, req: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        check_cluster(&self.node, &req, false)?;
        let fwd: ForwardRequest = codec::decode(&req.into_inner().data).map_err(bad_request)?;
        let timeout_ms = match &fwd {
            ForwardRequest::Write { timeout_ms, .. }
            | ForwardRequest::ReadIndex { timeout_ms }
            | ForwardRequest::TransferLeader { timeout_ms, .. } => *timeout_ms,
            _ => 5_000,
        };
        // A forwarded write was validated by the member that forwarded it, but this member
        // proposes it: check it again rather than trust the wire (a batch, an empty key or an
        // oversized value must never reach the log).
        if let ForwardRequest::Write { request, .. } = &fwd {
            if let Err(e) = keel_storage::validate_forwarded(request, &self.node.limits) {
                return Ok(self.reply::<ForwardReply, _>(Err(NodeError::from(e))));
            }
        }
        let deadline = crate::service::deadline_in(Duration::from_millis(timeout_ms));
        let result: Result<ForwardReply, NodeError> = dispatch(&self.node, fwd, deadline).await;
        Ok(self.reply(result))
    }
}

/// Serve a request that another member forwarded here. Leader-only requests fail with `NotLeader` here
/// if this member is not the leader; they are never forwarded again.
pub(crate) async fn dispatch(node: &Node, req: ForwardRequest, deadline: Instant) -> Result<ForwardReply, NodeError> {
    match req {
        ForwardRequest::Write { request, .. } => node.write_local(&request, deadline).await.map(ForwardReply::Write),
        ForwardRequest::ReadIndex { .. } => node.read_index_local(deadline).await.map(ForwardReply::ReadIndex),
        ForwardRequest::SetNode { id, member } => node.set_node_local(id, member).await.map(|()| ForwardReply::Done),
        ForwardRequest::AddLearner { id, member } => {
            node.add_learner_local(id, member).await.map(|()| ForwardReply::Done)
        }
        ForwardRequest::Promote { id } => node.promote_local(id).await.map(|()| ForwardReply::Done),
        ForwardRequest::Remove { id, force } => node
            .remove_local(id, force, deadline)
            .await
            .map(|()| ForwardReply::Done),
        ForwardRequest::TransferLeader { to, .. } => node.transfer_local(to, deadline).await.map(ForwardReply::Leader),
        ForwardRequest::Ping => Ok(ForwardReply::Done),
        ForwardRequest::HoldElections { ms } => {
            node.hold_elections(Duration::from_millis(ms));
            Ok(ForwardReply::Done)
        }
        ForwardRequest::Elect => node.elect_now().await.map(|()| ForwardReply::Done),
        ForwardRequest::Removed { by } => {
            node.mark_removed(&format!("removed from the cluster by leader {by}"));
            Ok(ForwardReply::Done)
        }
    }
}
