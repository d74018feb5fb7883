//! The Cluster service: membership and per-member status, from this member's Raft metrics.

use std::sync::Arc;

use keel_proto::v1::cluster_server::Cluster;
use keel_proto::v1::{
    LeaderTransferRequest, LeaderTransferResponse, Member, MemberAddRequest, MemberAddResponse, MemberListRequest,
    MemberListResponse, MemberPromoteRequest, MemberPromoteResponse, MemberRemoveRequest, MemberRemoveResponse,
    ReplicationStatus, StatusRequest, StatusResponse,
};
use tonic::{Request, Response, Status};

use super::{deadline, fail, respond};
use crate::error::NodeError;
use crate::node::Node;
use crate::raft::role_name;

pub struct ClusterService {
    pub node: Arc<Node>,
}

impl ClusterService {
    /// The members as this member knows them.
    fn members(&self) -> Vec<Member> {
        let m = self.node.metrics();
        let membership = m.membership_config.membership();
        let voters: std::collections::BTreeSet<u64> = membership.voter_ids().collect();
        membership
            .nodes()
            .map(|(id, n)| Member {
                id: *id,
                peer_addr: n.peer_addr.clone(),
                client_addr: n.client_addr.clone(),
                is_learner: !voters.contains(id),
            })
            .collect()
    }

    /// Answer a membership change that the leader made (`result`) with the membership
    /// afterwards.
    async fn changed(
        &self,
        metadata: &tonic::metadata::MetadataMap,
        result: Result<(), NodeError>,
    ) -> Result<Vec<Member>, Status> {
        let node = &self.node;
        result.map_err(|e| fail(node, e))?;
        // The change is committed on the leader; a follower may not even have the entry yet (its
        // own last log index says nothing). A read barrier waits until this member has applied
        // everything the leader committed. Best effort: the change is made either way.
        let wait = std::time::Instant::now() + std::time::Duration::from_secs(2);
        if let Err(e) = node.read_barrier(wait.min(deadline(metadata))).await {
            tracing::debug!(error = %e, "answering a membership change with this member's view");
        }
        Ok(self.members())
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_list(&self, _req: Request<MemberListRequest>) -> Result<Response<MemberListResponse>, Status> {
        crate::auth::Caller::current().require_user(&self.node)?;
        let node = &self.node;
        Ok(respond(
            node,
            MemberListResponse {
                header: Some(node.header(node.reader.revision())),
                members: self.members(),
            },
        ))
    }

    async fn member_add(&self, req: Request<MemberAddRequest>) -> Result<Response<MemberAddResponse>, Status> {
        crate::auth::Caller::current().require_root(&self.node)?;
        let (metadata, _, r) = req.into_parts();
        let member = keel_storage::Member {
            peer_addr: r.peer_addr,
            client_addr: r.client_addr,
        };
        let result = self.node.add_learner(r.id, member, deadline(&metadata)).await;
        let members = self.changed(&metadata, result).await?;
        let header = Some(self.node.header(self.node.reader.revision()));
        Ok(respond(&self.node, MemberAddResponse { header, members }))
    }

    async fn member_promote(
        &self,
        req: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        crate::auth::Caller::current().require_root(&self.node)?;
        let (metadata, _, r) = req.into_parts();
        let result = self.node.promote(r.id, deadline(&metadata)).await;
        let members = self.changed(&metadata, result).await?;
        let header = Some(self.node.header(self.node.reader.revision()));
        Ok(respond(&self.node, MemberPromoteResponse { header, members }))
    }

    async fn member_remove(&self, req: Request<MemberRemoveRequest>) -> Result<Response<MemberRemoveResponse>, Status> {
        crate::auth::Caller::current().require_root(&self.node)?;
        let (metadata, _, r) = req.into_parts();
        let result = self.node.remove(r.id, r.force, deadline(&metadata)).await;
        let members = self.changed(&metadata, result).await?;
        let header = Some(self.node.header(self.node.reader.revision()));
        Ok(respond(&self.node, MemberRemoveResponse { header, members }))
    }

    async fn leader_transfer(
        &self,
        req: Request<LeaderTransferRequest>,
    ) -> Result<Response<LeaderTransferResponse>, Status> {
        crate::auth::Caller::current().require_root(&self.node)?;
        let node = &self.node;
        let deadline = deadline(req.metadata());
        let to = req.into_inner().to;
        match node.transfer_leader((to != 0).then_some(to), deadline).await {
            Ok(leader_id) => Ok(respond(
                node,
                LeaderTransferResponse {
                    header: Some(node.header(node.reader.revision())),
                    leader_id,
                },
            )),
            Err(e) => Err(fail(node, e)),
        }
    }

    async fn status(&self, _req: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        crate::auth::Caller::current().require_user(&self.node)?;
        let node = &self.node;
        let m = node.metrics();
        let last_log = m.last_log_index.unwrap_or(0);
        let replication = m
            .replication
            .as_ref()
            .map(|r| {
                r.iter()
                    .filter(|(id, _)| **id != node.id)
                    .map(|(id, matched)| {
                        let matched = matched.map_or(0, |l| l.index);
                        ReplicationStatus {
                            id: *id,
                            matched_index: matched,
                            lag: last_log.saturating_sub(matched),
                        }
                    })
                    .collect()
            })
            .unwrap_or_default();
        Ok(respond(
            node,
            StatusResponse {
                header: Some(node.header(node.reader.revision())),
                id: node.id,
                role: role_name(&m).to_string(),
                term: m.current_term,
                leader_id: m.current_leader.unwrap_or(0),
                last_log_index: last_log,
                applied_index: node.applied_index(&m),
                db_size: node.reader.db_size(),
                key_count: node.reader.key_count(),
                version: env!("CARGO_PKG_VERSION").to_string(),
                replication,
                pid: u64::from(std::process::id()),
                purged_index: m.purged.map_or(0, |l| l.index),
                alarms: node.disk.alarm().into_iter().collect(),
                watchers: node.metrics.watchers.get().max(0) as u64,
                leases: node.leases.len() as u64,
            },
        ))
    }
}
