//! etcd's Cluster service on keel's membership changes.
//!
//! etcd names members by URLs (`http://host:port`), keel by addresses (`host:port`); etcd picks a
//! new member's id, and so does keel here (one more than the largest). A member keel adds is a
//! learner until it has caught up: `MemberAdd` without `isLearner` adds a learner and promotes it
//! in the background once it runs and has caught up (for at most [`PROMOTE_FOR`]), instead of
//! adding a voter that does not run yet and counts against the quorum, as etcd does.
//!
//! `MemberUpdate` records a member's new peer address, for a member that is to be started
//! there (moved). A member that runs publishes the addresses it was started with
//! (`Node::publish_addresses`), so one still running at its old address puts that back.

use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_proto::etcd::etcdserverpb as pb;
use keel_proto::etcd::etcdserverpb::cluster_server::Cluster;
use tonic::{Code, Request, Response, Status};

use super::{error, header};
use crate::error::NodeError;
use crate::node::Node;
use crate::service::deadline;

/// How long a member added as a voter may take to start and catch up before it is promoted.
pub const PROMOTE_FOR: Duration = Duration::from_secs(600);

pub struct EtcdCluster {
    pub node: Arc<Node>,
}

fn url(addr: &str) -> Vec<String> {
    if addr.is_empty() {
        Vec::new()
    } else {
        vec![format!("http://{addr}")]
    }
}

/// Client URLs go without their scheme. etcdctl's `endpoint status` and `hashkv` (and every
/// `--cluster` command, which dials the client URLs) send the whole URL as the HTTP/2
/// `:authority`, which Rust's HTTP/2 server rejects as malformed (a stream reset with
/// PROTOCOL_ERROR); a bare `host:port` is an endpoint to every etcd client.
fn client_url(addr: &str) -> Vec<String> {
    if addr.is_empty() {
        Vec::new()
    } else {
        vec![addr.to_string()]
    }
}

/// The address in a peer URL: `http://host:port` or `host:port`.
fn address(url: &str) -> Result<String, Status> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .unwrap_or(url);
    let rest = rest.trim_end_matches('/');
    match rest.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() && !rest.contains('/') => {
            Ok(rest.to_string())
        }
        _ => Err(error::status(Code::InvalidArgument, error::MEMBER_BAD_URLS)),
    }
}

/// A membership refusal in etcd's words.
fn refused(e: NodeError) -> Status {
    match &e {
        NodeError::FailedPrecondition(m) if m.starts_with("there is no member") => {
            error::status(Code::NotFound, error::MEMBER_NOT_FOUND)
        }
        NodeError::FailedPrecondition(m) if m.starts_with("peer address") => {
            error::status(Code::FailedPrecondition, error::PEER_URL_EXISTS)
        }
        NodeError::FailedPrecondition(m) if m.contains("not a majority") => error::status(
            Code::FailedPrecondition,
            "etcdserver: re-configuration failed due to not enough started members",
        ),
        NodeError::Refused { outcome, .. } if outcome == keel_proto::wire::Outcome::LearnerCatchingUp.name() => {
            error::status(Code::FailedPrecondition, error::LEARNER_NOT_READY)
        }
        _ => error::node(e),
    }
}

impl EtcdCluster {
    fn members(&self) -> Vec<pb::Member> {
        let m = self.node.metrics();
        let membership = m.membership_config.membership();
        let voters: std::collections::BTreeSet<u64> = membership.voter_ids().collect();
        membership
            .nodes()
            .map(|(id, n)| pb::Member {
                id: *id,
                // Empty until the member has started and published its client address, as
                // etcd's name is empty until the member starts.
                name: if n.client_addr.is_empty() {
                    String::new()
                } else {
                    format!("keel-{id}")
                },
                peer_ur_ls: url(&n.peer_addr),
                client_ur_ls: client_url(&n.client_addr),
                is_learner: !voters.contains(id),
            })
            .collect()
    }

    /// The membership after a change this member asked the leader for; waits (briefly) until
    /// this member has applied it.
    async fn after_change(&self, deadline: Instant) -> (Option<pb::ResponseHeader>, Vec<pb::Member>) {
        let wait = (Instant::now() + Duration::from_secs(2)).min(deadline);
        if let Err(e) = self.node.read_barrier(wait).await {
            tracing::debug!(error = %e, "answering a membership change with this member's view");
        }
        (Some(header(&self.node, self.node.reader.revision())), self.members())
    }
}

/// Promote learner `id` once it has caught up, trying every second for [`PROMOTE_FOR`]; stops
/// early if the member is removed or the node stops.
async fn promote_when_ready(node: Arc<Node>, id: u64) {
    let until = Instant::now() + PROMOTE_FOR;
    while Instant::now() < until && !node.cancel.is_cancelled() {
        let present = node.metrics().membership_config.membership().get_node(&id).is_some();
        if !present {
            return;
        }
        match node.promote(id, Instant::now() + Duration::from_secs(5)).await {
            Ok(()) => {
                tracing::info!(member = id, "promoted the member added as a voter through etcd's API");
                return;
            }
            Err(e) => tracing::debug!(member = id, error = %e, "member not promoted yet"),
        }
        tokio::select! {
            _ = node.cancel.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
    tracing::warn!(
        member = id,
        "the member added as a voter did not catch up in time; it stays a learner"
    );
}

#[tonic::async_trait]
impl Cluster for EtcdCluster {
    async fn member_add(&self, req: Request<pb::MemberAddRequest>) -> Result<Response<pb::MemberAddResponse>, Status> {
        crate::auth::Caller::current().require_root(&self.node)?;
        let deadline = deadline(req.metadata());
        let r = req.into_inner();
        let [peer] = r.peer_ur_ls.as_slice() else {
            return Err(error::status(Code::InvalidArgument, error::MEMBER_BAD_URLS));
        };
        let peer_addr = address(peer)?;
        let id = self.members().iter().map(|m| m.id).max().unwrap_or(0) + 1;
        let member = keel_storage::Member {
            peer_addr,
            client_addr: String::new(),
        };
        self.node.add_learner(id, member, deadline).await.map_err(refused)?;
        if !r.is_learner {
            let node = self.node.clone();
            self.node.spawn(promote_when_ready(node, id));
        }
        let (header, members) = self.after_change(deadline).await;
        let member = members.iter().find(|m| m.id == id).cloned();
        Ok(Response::new(pb::MemberAddResponse {
            header,
            member,
            members,
        }))
    }

    async fn member_remove(
        &self,
        req: Request<pb::MemberRemoveRequest>,
    ) -> Result<Response<pb::MemberRemoveResponse>, Status> {
        crate::auth::Caller::current().require_root(&self.node)?;
        let deadline = deadline(req.metadata());
        let id = req.into_inner().id;
        self.node.remove(id, false, deadline).await.map_err(refused)?;
        let (header, members) = self.after_change(deadline).await;
        Ok(Response::new(pb::MemberRemoveResponse { header, members }))
    }

    async fn member_update(
        &self,
        req: Request<pb::MemberUpdateRequest>,
    ) -> Result<Response<pb::MemberUpdateResponse>, Status> {
        crate::auth::Caller::current().require_root(&self.node)?;
        let deadline = deadline(req.metadata());
        let r = req.into_inner();
        let [peer] = r.peer_ur_ls.as_slice() else {
            return Err(error::status(Code::InvalidArgument, error::MEMBER_BAD_URLS));
        };
        let peer_addr = address(peer)?;
        let membership = self.node.metrics().membership_config.membership().clone();
        let Some(current) = membership.get_node(&r.id).cloned() else {
            return Err(error::status(Code::NotFound, error::MEMBER_NOT_FOUND));
        };
        if membership
            .nodes()
            .any(|(id, n)| *id != r.id && n.peer_addr == peer_addr)
        {
            return Err(error::status(Code::FailedPrecondition, error::PEER_URL_EXISTS));
        }
        let member = keel_storage::Member {
            peer_addr,
            client_addr: current.client_addr,
        };
        self.node.set_node(r.id, member, deadline).await.map_err(refused)?;
        let (header, members) = self.after_change(deadline).await;
        Ok(Response::new(pb::MemberUpdateResponse { header, members }))
    }

    async fn member_list(
        &self,
        _req: Request<pb::MemberListRequest>,
    ) -> Result<Response<pb::MemberListResponse>, Status> {
        crate::auth::Caller::current().require_user(&self.node)?;
        Ok(Response::new(pb::MemberListResponse {
            header: Some(header(&self.node, self.node.reader.revision())),
            members: self.members(),
        }))
    }

    async fn member_promote(
        &self,
        req: Request<pb::MemberPromoteRequest>,
    ) -> Result<Response<pb::MemberPromoteResponse>, Status> {
        crate::auth::Caller::current().require_root(&self.node)?;
        let deadline = deadline(req.metadata());
        let id = req.into_inner().id;
        // keel's promote of a voter is a no-op; etcd's is an error.
        if let Some(m) = self.members().iter().find(|m| m.id == id) {
            if !m.is_learner {
                return Err(error::status(Code::FailedPrecondition, error::MEMBER_NOT_LEARNER));
            }
        }
        self.node.promote(id, deadline).await.map_err(refused)?;
        let (header, members) = self.after_change(deadline).await;
        Ok(Response::new(pb::MemberPromoteResponse { header, members }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_urls_become_addresses() {
        assert_eq!(address("http://127.0.0.1:2380").unwrap(), "127.0.0.1:2380");
        assert_eq!(address("127.0.0.1:2380").unwrap(), "127.0.0.1:2380");
        assert_eq!(address("https://node-4:2380/").unwrap(), "node-4:2380");
        for bad in ["", "http://", "http://host", "http://host:port", "http://host:1/x"] {
            assert_eq!(address(bad).unwrap_err().message(), error::MEMBER_BAD_URLS, "{bad}");
        }
    }
}
