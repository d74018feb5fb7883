//! The outcomes a node reports for a request, and how they map to gRPC codes.
//!
//! The mapping carries the promise clients rely on: `Unavailable` means the request surely did
//! not take effect (no leader, no quorum, shutting down, or the leader could not be reached
//! before anything was sent), so it is safe to retry anywhere. When the outcome of a write is
//! unknown, the code is `DeadlineExceeded` or `Unknown`. `ResourceExhausted` means a member's disk
//! is full: nothing was proposed, and a retry succeeds once space is freed. NotFound names a
//! lease that does not exist (a missing key is an empty result, not NotFound).

use keel_proto::wire::Outcome;
use keel_storage::NodeId;
use serde::{Deserialize, Serialize};

/// Why a node could not serve a request. Travels between members when requests are forwarded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum NodeError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    FailedPrecondition(String),
    /// This member is not the leader; nothing was proposed.
    #[error("not the leader (leader: {leader:?})")]
    NotLeader { leader: Option<NodeId> },
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    DeadlineExceeded(String),
    #[error("{0}")]
    Unknown(String),
    #[error("{0}")]
    Internal(String),
    /// A member's disk is full (see `disk/`); nothing was proposed, retry later. Last, so that
    /// the variants before it keep their encoding between members.
    #[error("{0}")]
    ResourceExhausted(String),
    /// FailedPrecondition that names a condition a client acts on (a `keel_proto::wire::Outcome`,
    /// by name, so that this type stays free of the proto crate's types on the wire between
    /// members). Last, like the one before it.
    #[error("{message}")]
    Refused { outcome: String, message: String },
    /// A lease the request names does not exist; nothing was applied. Last, like the ones before.
    #[error("{0}")]
    NotFound(String),
    /// A grant of a lease id in use; nothing was applied.
    #[error("{0}")]
    AlreadyExists(String),
    /// A limit on what a member holds (leases, streams) is reached; nothing was done. Unlike a
    /// full disk, it is lifted by the clients, not the operator: fewer leases or streams.
    #[error("{0}")]
    LimitReached(String),
    /// Refused by the auth rules (see `crate::auth`); nothing was applied. Last, like the ones
    /// before.
    #[error("{0}")]
    Auth(keel_storage::auth::AuthError),
}

impl NodeError {
    pub fn to_status(&self) -> tonic::Status {
        use tonic::Status;
        match self {
            NodeError::InvalidArgument(m) => Status::invalid_argument(m),
            NodeError::FailedPrecondition(m) => Status::failed_precondition(m),
            NodeError::NotLeader { .. } => Status::unavailable(self.to_string()),
            NodeError::Unavailable(m) => Status::unavailable(m),
            NodeError::DeadlineExceeded(m) => Status::deadline_exceeded(m),
            NodeError::Unknown(m) => Status::unknown(m),
            NodeError::Internal(m) => Status::internal(m),
            NodeError::ResourceExhausted(m) => {
                let mut status = Status::resource_exhausted(m);
                Outcome::DiskFull.tag(&mut status);
                status
            }
            NodeError::NotFound(m) => Status::not_found(m),
            NodeError::AlreadyExists(m) => Status::already_exists(m),
            NodeError::LimitReached(m) => Status::resource_exhausted(m),
            NodeError::Auth(e) => crate::auth::status(*e),
            NodeError::Refused { outcome, message } => {
                let mut status = Status::failed_precondition(message);
                if let Some(o) = Outcome::named(outcome) {
                    o.tag(&mut status);
                }
                status
            }
        }
    }

    /// A refusal that names `outcome`.
    pub fn refused(outcome: Outcome, message: impl Into<String>) -> NodeError {
        NodeError::Refused {
            outcome: outcome.name().to_string(),
            message: message.into(),
        }
    }

    /// For reads, an unknown outcome is harmless: a read changes nothing.
    pub fn for_read(self) -> NodeError {
        match self {
            NodeError::Unknown(m) => NodeError::Unavailable(m),
            other => other,
        }
    }
}

impl From<keel_storage::InvalidRequest> for NodeError {
    fn from(e: keel_storage::InvalidRequest) -> Self {
        NodeError::InvalidArgument(e.to_string())
    }
}

impl From<crate::convert::ConvertError> for NodeError {
    fn from(e: crate::convert::ConvertError) -> Self {
        NodeError::InvalidArgument(e.to_string())
    }
}

/// What openraft's "forward to the leader" means for a client. In every case nothing was
/// proposed (openraft 0.10 answers an entry it appended and then lost with `LogEntryDiscarded`,
/// not with this).
pub fn forwarded(f: openraft::errors::ForwardToLeader<keel_storage::TypeConfig>) -> NodeError {
    use openraft::errors::ForwardReason;
    match f.reason {
        ForwardReason::NotLeader => NodeError::NotLeader { leader: f.leader_id },
        // The leader is handing over: wait for the new one, as when there is no leader.
        ForwardReason::LeadershipTransfer => NodeError::NotLeader { leader: None },
        // The leader has no quorum acknowledgement younger than its lease (one election timeout):
        // under load, acknowledgements can lag that much without the quorum being gone. Nothing
        // was proposed; the request waits and tries again (`Node::on_leader`), and a quorum that
        // is really gone is reported by the leader's own check (two election timeouts).
        ForwardReason::LeaseExpired => NodeError::NotLeader { leader: None },
    }
}
