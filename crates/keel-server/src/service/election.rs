//! The Election service (`lock.proto`): an election is a queue of keys under its name (see
//! `queue`); the oldest key leads, and its value is the leader's proposal.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use keel_proto::v1::election_server::Election;
use keel_proto::v1::{
    CampaignRequest, CampaignResponse, LeaderKey, LeaderRequest, LeaderResponse, ProclaimRequest, ProclaimResponse,
    ResignRequest, ResignResponse,
};
use tonic::Status;

use super::lock::waiter;
use super::queue::{self, LeaveOnDrop};
use super::{deadline, fail, respond};
use crate::convert;
use crate::error::NodeError;
use crate::node::Node;

/// Leader changes one Observe stream may have waiting for its client.
const OBSERVE_BUFFER: usize = 16;

pub struct ElectionService {
    pub node: Arc<Node>,
}

/// The leader key a request names, checked.
fn leader_key(leader: Option<LeaderKey>) -> Result<LeaderKey, NodeError> {
    let leader = leader.ok_or_else(|| NodeError::InvalidArgument("no leader key given".into()))?;
    queue::check(&leader.name, leader.lease)?;
    if leader.key.is_empty() || leader.rev == 0 {
        return Err(NodeError::InvalidArgument(
            "the leader key needs the key and revision Campaign returned".into(),
        ));
    }
    Ok(leader)
}

fn not_leader() -> NodeError {
    NodeError::FailedPrecondition("election: not leader (the key is gone: resigned, or its lease ended)".into())
}

type ObserveStream = Pin<Box<dyn Stream<Item = Result<LeaderResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Election for ElectionService {
    async fn campaign(
        &self,
        req: tonic::Request<CampaignRequest>,
    ) -> Result<tonic::Response<CampaignResponse>, Status> {
        let node = &self.node;
        let deadline = queue::wait_deadline(req.metadata());
        let req = req.into_inner();
        let led = async {
            queue::check(&req.name, req.lease)?;
            let _waiting = waiter(node)?;
            let key = queue::key_of(&req.name, req.lease);
            let place = queue::join(node, &key, &req.value, req.lease, deadline).await?;
            let leave = LeaveOnDrop::new(node, &place);
            // Campaigning again with the same lease keeps the place and updates the proposal.
            if !place.created && place.value != req.value {
                let (still, _) = queue::update(node, &key, place.rev, &req.value, req.lease, deadline).await?;
                if !still {
                    return Err(not_leader());
                }
            }
            let at = queue::wait_turn(node, &req.name, &place, deadline).await?;
            leave.keep();
            Ok::<_, NodeError>((place, at))
        };
        let (place, at) = led.await.map_err(|e| fail(node, e))?;
        Ok(respond(
            node,
            CampaignResponse {
                header: Some(node.header(at)),
                leader: Some(LeaderKey {
                    name: req.name,
                    key: place.key,
                    rev: place.rev,
                    lease: req.lease,
                }),
            },
        ))
    }

    async fn proclaim(
        &self,
        req: tonic::Request<ProclaimRequest>,
    ) -> Result<tonic::Response<ProclaimResponse>, Status> {
        let node = &self.node;
        let deadline = deadline(req.metadata());
        let req = req.into_inner();
        let leader = leader_key(req.leader).map_err(|e| fail(node, e))?;
        let (still, revision) = queue::update(node, &leader.key, leader.rev, &req.value, leader.lease, Some(deadline))
            .await
            .map_err(|e| fail(node, e))?;
        if !still {
            return Err(fail(node, not_leader()));
        }
        Ok(respond(
            node,
            ProclaimResponse {
                header: Some(node.header(revision)),
            },
        ))
    }

    async fn leader(&self, req: tonic::Request<LeaderRequest>) -> Result<tonic::Response<LeaderResponse>, Status> {
        let node = &self.node;
        let deadline = deadline(req.metadata());
        let req = req.into_inner();
        if req.name.is_empty() {
            return Err(fail(node, NodeError::InvalidArgument("the name is empty".into())));
        }
        node.read_barrier(deadline).await.map_err(|e| fail(node, e))?;
        may_read(node, &req.name)?;
        let (kv, revision) = queue::first(node, &req.name).map_err(|e| fail(node, e))?;
        let kv = kv.ok_or_else(|| fail(node, NodeError::FailedPrecondition("election: no leader".into())))?;
        Ok(respond(
            node,
            LeaderResponse {
                header: Some(node.header(revision)),
                kv: Some(convert::key_value(kv)),
            },
        ))
    }

    type ObserveStream = ObserveStream;

    async fn observe(&self, req: tonic::Request<LeaderRequest>) -> Result<tonic::Response<ObserveStream>, Status> {
        let node = self.node.clone();
        let name = req.into_inner().name;
        if name.is_empty() {
            return Err(fail(&node, NodeError::InvalidArgument("the name is empty".into())));
        }
        may_read(&node, &name)?;
        let (tx, rx) = tokio::sync::mpsc::channel(OBSERVE_BUFFER);
        let stopping = node.stopping.clone();
        self.node.spawn(async move {
            let mut revisions = node.reader.revisions();
            // (key, mod revision) of the leader last sent: a new leader or a proclamation.
            let mut sent: Option<(Vec<u8>, u64)> = None;
            loop {
                let answer = match queue::first(&node, &name) {
                    Ok((Some(kv), revision)) => {
                        let now = (kv.key.clone(), kv.mod_revision);
                        if sent.as_ref() != Some(&now) {
                            sent = Some(now);
                            Some(Ok(LeaderResponse {
                                header: Some(node.header(revision)),
                                kv: Some(convert::key_value(kv)),
                            }))
                        } else {
                            None
                        }
                    }
                    Ok((None, _)) => None,
                    Err(e) => Some(Err(fail(&node, e))),
                };
                if let Some(answer) = answer {
                    let failed = answer.is_err();
                    if tx.send(answer).await.is_err() || failed {
                        return;
                    }
                }
                let seen = node.reader.revision();
                tokio::select! {
                    _ = stopping.cancelled() => return,
                    _ = tx.closed() => return,
                    moved = revisions.wait_for(|r| *r > seen) => if moved.is_err() { return },
                }
            }
        });
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
        Ok(respond(&self.node, Box::pin(stream) as ObserveStream))
    }

    async fn resign(&self, req: tonic::Request<ResignRequest>) -> Result<tonic::Response<ResignResponse>, Status> {
        let node = &self.node;
        let deadline = deadline(req.metadata());
        let leader = leader_key(req.into_inner().leader).map_err(|e| fail(node, e))?;
        let revision = queue::leave(node, &leader.key, leader.rev, Some(deadline))
            .await
            .map_err(|e| fail(node, e))?;
        Ok(respond(
            node,
            ResignResponse {
                header: Some(node.header(revision)),
            },
        ))
    }
}

/// Leader and Observe show the election's keys: the caller needs read on them (see
/// `crate::auth`).
fn may_read(node: &Node, name: &[u8]) -> Result<(), Status> {
    let keys = keel_storage::KeyRange::Prefix(queue::prefix_of(name));
    crate::auth::Caller::current().check(node, keel_storage::auth::check::Need::Read, &keys)
}
