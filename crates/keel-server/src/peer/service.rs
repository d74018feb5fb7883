//! The Raft peer service: what other members call on this node. Kept apart from the client
//! services; it listens on the peer address only.

use std::sync::Arc;
use std::time::Duration;

use keel_proto::raft::raft_server::Raft as RaftRpc;
use keel_proto::raft::{RaftReply, RaftRequest, SnapshotChunk};
use keel_storage::{codec, SnapshotMeta, TypeConfig, Vote};
use openraft::raft::{AppendEntriesRequest, VoteRequest};
use openraft::Snapshot;
use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tonic::{Request, Response, Status, Streaming};

use crate::error::NodeError;
use crate::forward::{ForwardReply, ForwardRequest};
use crate::node::Node;

pub struct PeerService {
    pub node: Arc<Node>,
}

/// Refuse messages from members of another cluster. `adopt`: the message comes from a leader
/// replicating to this node, whose cluster a joining node may take as its own.
fn check_cluster<T>(node: &Node, req: &Request<T>, adopt: bool) -> Result<(), Status> {
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

/// A reply carrying either the value or the error, both encoded.
fn reply<T: Serialize, E: Serialize>(result: Result<T, E>) -> Response<RaftReply> {
    Response::new(match result {
        Ok(v) => RaftReply {
            data: codec::encode(&v),
            error: Vec::new(),
        },
        Err(e) => RaftReply {
            data: Vec::new(),
            error: codec::encode(&e),
        },
    })
}

#[tonic::async_trait]
impl RaftRpc for PeerService {
    async fn append_entries(&self, req: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        check_cluster(&self.node, &req, true)?;
        let rpc: AppendEntriesRequest<TypeConfig> = codec::decode(&req.into_inner().data).map_err(bad_request)?;
        Ok(reply(self.node.raft.append_entries(rpc).await))
    }

    async fn vote(&self, req: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        check_cluster(&self.node, &req, false)?;
        let rpc: VoteRequest<u64> = codec::decode(&req.into_inner().data).map_err(bad_request)?;
        Ok(reply(self.node.raft.vote(rpc).await))
    }

    /// Write the streamed file straight to disk, then hand it to Raft, which verifies and installs
    /// it (keel-storage's install checks every block's CRC and the SHA-256).
    async fn install_snapshot(&self, req: Request<Streaming<SnapshotChunk>>) -> Result<Response<RaftReply>, Status> {
        check_cluster(&self.node, &req, true)?;
        let mut stream = req.into_inner();
        let first = stream
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("empty snapshot stream"))?;
        let (vote, meta): (Vote, SnapshotMeta) = codec::decode(&first.meta).map_err(bad_request)?;
        let mut file = self
            .node
            .raft
            .begin_receiving_snapshot()
            .await
            .map_err(|e| Status::unavailable(format!("cannot receive snapshot: {e}")))?;
        let mut received = 0u64;
        while let Some(chunk) = stream.message().await? {
            file.write_all(&chunk.data)
                .await
                .map_err(|e| Status::internal(format!("writing received snapshot: {e}")))?;
            received += chunk.data.len() as u64;
        }
        file.flush()
            .await
            .map_err(|e| Status::internal(format!("writing received snapshot: {e}")))?;
        tracing::info!(bytes = received, snapshot = %meta.snapshot_id, "received snapshot");
        let snapshot = Snapshot { meta, snapshot: file };
        Ok(reply(self.node.raft.install_full_snapshot(vote, snapshot).await))
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
        let deadline = crate::service::deadline_in(Duration::from_millis(timeout_ms));
        let result: Result<ForwardReply, NodeError> = self.node.serve(fwd, deadline).await;
        Ok(reply(result))
    }
}
