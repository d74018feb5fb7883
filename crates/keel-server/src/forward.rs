//! Leader-only operations that a member sends to the leader on a client's behalf, over the peer
//! service's `Forward` RPC, and the few node-to-node requests of leader transfer. Encoded with
//! `keel_storage::codec` (format byte + postcard); variants are only ever added at the end.

use keel_storage::{Member, NodeId, Request, Response};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ForwardRequest {
    /// Propose a write; the leader answers when it is applied.
    Write { request: Request, timeout_ms: u64 },
    /// Confirm leadership with a quorum and return the index a linearizable read must wait for.
    ReadIndex { timeout_ms: u64 },
    /// Record a member's advertised addresses in the membership.
    SetNode { id: NodeId, member: Member },
    /// Add a learner.
    AddLearner { id: NodeId, member: Member },
    /// Make a caught-up learner a voter.
    Promote { id: NodeId },
    /// Remove a member.
    Remove { id: NodeId, force: bool },
    /// Hand leadership to `to` (None: the most up-to-date other voter).
    TransferLeader { to: Option<NodeId>, timeout_ms: u64 },
    /// To any member: answer, to show it is reachable.
    Ping,
    /// To a member: do not start elections for `ms` milliseconds (a transfer is under way).
    HoldElections { ms: u64 },
    /// To the transfer target: campaign now.
    Elect,
    /// To a member that was just removed from the membership (it may never receive the final
    /// configuration): stop serving and never rejoin with this data.
    Removed { by: NodeId },
}

impl ForwardRequest {
    /// Requests that only the leader can serve (the others are for one particular member).
    pub fn needs_leader(&self) -> bool {
        !matches!(
            self,
            ForwardRequest::Ping
                | ForwardRequest::HoldElections { .. }
                | ForwardRequest::Elect
                | ForwardRequest::Removed { .. }
        )
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ForwardReply {
    Write(Response),
    ReadIndex(u64),
    Done,
    /// The leader after a transfer.
    Leader(NodeId),
}

/// Each takes apart the reply its request expects, or hands the reply back (for the error).
impl ForwardReply {
    pub fn into_write(self) -> Result<Response, ForwardReply> {
        match self {
            ForwardReply::Write(r) => Ok(r),
            other => Err(other),
        }
    }

    pub fn into_read_index(self) -> Result<u64, ForwardReply> {
        match self {
            ForwardReply::ReadIndex(i) => Ok(i),
            other => Err(other),
        }
    }

    pub fn into_done(self) -> Result<(), ForwardReply> {
        match self {
            ForwardReply::Done => Ok(()),
            other => Err(other),
        }
    }

    pub fn into_leader(self) -> Result<NodeId, ForwardReply> {
        match self {
            ForwardReply::Leader(id) => Ok(id),
            other => Err(other),
        }
    }
}
