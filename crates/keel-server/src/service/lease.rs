//! The Lease service: grant, revoke, keep alive, and look at leases (see `lease.proto`, and
//! keel-storage's `sm::leases` for the rules).
//!
//! Every change is a write through the leader, so a keep-alive is answered only once its renewal
//! is applied. TimeToLive and Leases read after a read barrier, so a lease granted or revoked
//! before the call is seen; the time left is the serving member's own count (see `lease`).

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use keel_proto::v1::lease_server::Lease;
use keel_proto::v1::{
    LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse, LeaseLeasesRequest,
    LeaseLeasesResponse, LeaseRevokeRequest, LeaseRevokeResponse, LeaseStatus, LeaseTimeToLiveRequest,
    LeaseTimeToLiveResponse,
};
use keel_storage::{
    validate_request, Command, CommandResult, LeaseGrant, LeaseId, LeaseRef, LeaseResult, Request, Response,
};
use tonic::{Status, Streaming};

use super::kv::unexpected;
use super::{deadline, deadline_in, fail, respond};
use crate::error::NodeError;
use crate::metrics::Gauge;
use crate::node::Node;

/// Keep-alive requests one stream may have waiting for their renewals.
const KEEP_ALIVE_BUFFER: usize = 16;
/// The longest TTL granted, in seconds (etcd's limit).
pub const MAX_TTL_SECS: i64 = 9_000_000_000;

/// How long one renewal may take (a stream carries no deadline of its own).
const RENEW_TIMEOUT: Duration = Duration::from_secs(5);

pub struct LeaseService {
    pub node: Arc<Node>,
}

/// The shortest TTL granted, in seconds: one and a half election timeouts, rounded up (etcd's
/// rule), so that a lease outlives the election that follows a leader's death.
pub fn min_ttl_secs(node: &Node) -> i64 {
    let ms = node.election_timeout_max.as_millis() as i64 * 3 / 2;
    ((ms + 999) / 1000).max(1)
}

/// A lease id as the wire carries it (etcd's are signed); negative ids are out of range.
fn lease_id(id: i64) -> Result<LeaseId, NodeError> {
    u64::try_from(id)
        .ok()
        .filter(|&id| id > 0)
        .ok_or_else(|| NodeError::InvalidArgument(format!("lease id {id} is out of range (1 to {})", i64::MAX)))
}

/// An unused-looking id: random, positive. A grant of an id in use is refused by the state
/// machine, and then another is drawn.
fn random_id() -> LeaseId {
    loop {
        let id = rand::random::<u64>() >> 1;
        if id != 0 {
            return id;
        }
    }
}

impl LeaseService {
    async fn propose(&self, command: Command, deadline: std::time::Instant) -> Result<Response, NodeError> {
        let request = Request::new(command);
        validate_request(&request, &self.node.limits)?;
        self.node.write(request, deadline).await
    }
}

pub(crate) type KeepAliveStream = Pin<Box<dyn Stream<Item = Result<LeaseKeepAliveResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Lease for LeaseService {
    async fn grant(
        &self,
        req: tonic::Request<LeaseGrantRequest>,
    ) -> Result<tonic::Response<LeaseGrantResponse>, Status> {
        let node = &self.node;
        let deadline = deadline(req.metadata());
        let req = req.into_inner();
        if req.ttl <= 0 || req.ttl > MAX_TTL_SECS {
            return Err(fail(
                node,
                NodeError::InvalidArgument(format!(
                    "lease TTL {} is out of range (1 to {MAX_TTL_SECS} seconds)",
                    req.ttl
                )),
            ));
        }
        // Counted as this member has applied them: each costs the leader a look every expiry
        // tick, and every member a deadline.
        let max = node.service_limits.max_leases;
        if node.leases.len() >= max {
            let e = NodeError::LimitReached(format!(
                "the cluster holds {max} leases, its limit (--max-leases); revoke some, or share one lease among keys"
            ));
            return Err(fail(node, node.metrics.refused("leases", e)));
        }
        if let Some(user) = crate::auth::Caller::current().user {
            let max = node.service_limits.max_leases_per_user;
            if node.leases.owned_by(&user) >= max {
                let e = NodeError::LimitReached(format!(
                    "user {user} holds {max} leases, its limit (--max-leases-per-user); revoke some, or share one lease among keys"
                ));
                return Err(fail(node, node.metrics.refused("leases_per_user", e)));
            }
        }
        let ttl = req.ttl.max(min_ttl_secs(node));
        let ttl_ms = (ttl as u64).saturating_mul(1000);
        let chosen = req.id != 0;
        for _ in 0..8 {
            let id = if chosen {
                lease_id(req.id).map_err(|e| fail(node, e))?
            } else {
                random_id()
            };
            let resp = self
                .propose(Command::LeaseGrant(LeaseGrant { id, ttl_ms }), deadline)
                .await
                .map_err(|e| fail(node, e))?;
            match resp.result {
                CommandResult::Lease(LeaseResult::Granted { id, .. }) => {
                    let msg = LeaseGrantResponse {
                        header: Some(node.header(resp.revision)),
                        id: id as i64,
                        ttl,
                    };
                    return Ok(respond(node, msg));
                }
                CommandResult::LeaseExists { .. } if !chosen => continue,
                other => return Err(unexpected(node, &other)),
            }
        }
        Err(fail(
            node,
            NodeError::Unavailable("no unused lease id was found; try again".into()),
        ))
    }

    async fn revoke(
        &self,
        req: tonic::Request<LeaseRevokeRequest>,
    ) -> Result<tonic::Response<LeaseRevokeResponse>, Status> {
        let node = &self.node;
        let deadline = deadline(req.metadata());
        let id = lease_id(req.into_inner().id).map_err(|e| fail(node, e))?;
        let resp = self
            .propose(Command::LeaseRevoke(LeaseRef { id }), deadline)
            .await
            .map_err(|e| fail(node, e))?;
        match resp.result {
            CommandResult::Lease(LeaseResult::Revoked { .. }) => {
                let msg = LeaseRevokeResponse {
                    header: Some(node.header(resp.revision)),
                };
                Ok(respond(node, msg))
            }
            other => Err(unexpected(node, &other)),
        }
    }

    type KeepAliveStream = KeepAliveStream;

    async fn keep_alive(
        &self,
        req: tonic::Request<Streaming<LeaseKeepAliveRequest>>,
    ) -> Result<tonic::Response<Self::KeepAliveStream>, Status> {
        keep_alive_stream(self.node.clone(), req.into_inner())
            .map(|stream| respond(&self.node, stream))
            .map_err(|e| fail(&self.node, e))
    }

    async fn time_to_live(
        &self,
        req: tonic::Request<LeaseTimeToLiveRequest>,
    ) -> Result<tonic::Response<LeaseTimeToLiveResponse>, Status> {
        crate::auth::Caller::current().require_user(&self.node)?;
        let node = &self.node;
        let deadline = deadline(req.metadata());
        let req = req.into_inner();
        let id = lease_id(req.id).map_err(|e| fail(node, e))?;
        node.read_barrier(deadline).await.map_err(|e| fail(node, e))?;
        let read = node
            .reader
            .lease(id)
            .map_err(|e| fail(node, NodeError::Unavailable(e.to_string())))?;
        let mut msg = LeaseTimeToLiveResponse {
            header: Some(node.header(node.reader.revision())),
            id: req.id,
            ttl: -1,
            granted_ttl: 0,
            keys: Vec::new(),
        };
        if let Some((info, keys)) = read {
            let left = node.leases.remaining(id).unwrap_or(Duration::ZERO);
            msg.ttl = left.as_secs_f64().ceil() as i64;
            msg.granted_ttl = (info.lease.ttl_ms / 1000) as i64;
            if req.keys {
                msg.keys = keys;
            }
        }
        Ok(respond(node, msg))
    }

    async fn leases(
        &self,
        req: tonic::Request<LeaseLeasesRequest>,
    ) -> Result<tonic::Response<LeaseLeasesResponse>, Status> {
        crate::auth::Caller::current().require_user(&self.node)?;
        let node = &self.node;
        node.read_barrier(deadline(req.metadata()))
            .await
            .map_err(|e| fail(node, e))?;
        let leases = node
            .reader
            .leases()
            .map_err(|e| fail(node, NodeError::Unavailable(e.to_string())))?;
        let msg = LeaseLeasesResponse {
            header: Some(node.header(node.reader.revision())),
            leases: leases.into_iter().map(|l| LeaseStatus { id: l.id as i64 }).collect(),
        };
        Ok(respond(node, msg))
    }
}

/// One keep-alive: renew through Raft; TTL 0 if the lease does not exist.
async fn renew(node: &Node, id: i64) -> Result<LeaseKeepAliveResponse, Status> {
    let lease = lease_id(id).map_err(|e| fail(node, e))?;
    let request = Request::new(Command::LeaseRenew(LeaseRef { id: lease }));
    let resp = node
        .write(request, deadline_in(RENEW_TIMEOUT))
        .await
        .map_err(|e| fail(node, e))?;
    let ttl = match resp.result {
        CommandResult::Lease(LeaseResult::Renewed { ttl_ms, .. }) => {
            node.metrics.lease_renewals.inc();
            (ttl_ms / 1000) as i64
        }
        CommandResult::LeaseNotFound { .. } => 0,
        other => return Err(unexpected(node, &other)),
    };
    Ok(LeaseKeepAliveResponse {
        header: Some(node.header(resp.revision)),
        id,
        ttl,
    })
}

/// Serve a stream of keep-alives: one renewal through Raft per request, one answer each, in
/// order. Shared by keel's Lease service and etcd's (which maps the messages on either side).
pub(crate) fn keep_alive_stream<S>(node: Arc<Node>, mut requests: S) -> Result<KeepAliveStream, NodeError>
where
    S: Stream<Item = Result<LeaseKeepAliveRequest, Status>> + Send + Unpin + 'static,
{
    let max = node.service_limits.max_keepalive_streams;
    let open = Gauge::up_within(&node.metrics.lease_keepalive_streams, max).ok_or_else(|| {
        node.metrics.refused(
            "keepalive_streams",
            NodeError::LimitReached(format!(
                "member {} serves {max} keep-alive streams already (--max-keepalive-streams); keep many leases alive over one stream, or use another member",
                node.id
            )),
        )
    })?;
    let (tx, rx) = tokio::sync::mpsc::channel(KEEP_ALIVE_BUFFER);
    let stopping = node.stopping.clone();
    let task_node = node.clone();
    // On the node's tracker, as every task is: it ends when the stream does, when shutdown
    // begins, or when the node stops. Its renewals are the caller's (see `crate::auth`).
    node.spawn(crate::auth::Caller::current().scope(async move {
        let node = task_node;
        let _open = open;
        loop {
            let next = tokio::select! {
                _ = stopping.cancelled() => break,
                next = requests.next() => next,
            };
            let req = match next {
                Some(Ok(req)) => req,
                Some(Err(_)) | None => break,
            };
            let answer = renew(&node, req.id).await;
            if tx.send(answer).await.is_err() {
                break;
            }
        }
    }));
    Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)) as KeepAliveStream)
}
