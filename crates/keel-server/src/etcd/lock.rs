//! etcd's Lock (`v3lockpb`) and Election (`v3electionpb`) services over keel's: the same recipe
//! (keys `NAME/LEASE_HEX` created under the caller's lease, turns by create revision), so keys
//! made by clients that run etcd's recipe themselves (etcdctl lock and elect do) interleave with
//! these in one queue.

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use keel_proto::etcd::v3electionpb as el;
use keel_proto::etcd::v3electionpb::election_server::Election;
use keel_proto::etcd::v3lockpb as lk;
use keel_proto::etcd::v3lockpb::lock_server::Lock;
use keel_proto::v1;
use keel_proto::v1::election_server::Election as _;
use keel_proto::v1::lock_server::Lock as _;
use tonic::{Code, Request, Response, Status};

use super::{convert, error, header, keel_request, lease_of};
use crate::node::Node;
use crate::service::election::ElectionService;
use crate::service::lock::LockService;

pub struct EtcdLock {
    keel: LockService,
}

impl EtcdLock {
    pub fn new(node: Arc<Node>) -> Self {
        EtcdLock {
            keel: LockService { node },
        }
    }
}

fn rev(h: &Option<v1::ResponseHeader>) -> u64 {
    h.as_ref().map_or(0, |h| h.revision)
}

#[tonic::async_trait]
impl Lock for EtcdLock {
    async fn lock(&self, req: Request<lk::LockRequest>) -> Result<Response<lk::LockResponse>, Status> {
        let (metadata, _, r) = req.into_parts();
        let msg = v1::LockRequest {
            name: r.name,
            lease: r.lease,
        };
        let l = self
            .keel
            .lock(keel_request(&metadata, msg))
            .await
            .map_err(error::from_keel)?
            .into_inner();
        Ok(Response::new(lk::LockResponse {
            header: Some(header(&self.keel.node, rev(&l.header))),
            key: l.key,
        }))
    }

    async fn unlock(&self, req: Request<lk::UnlockRequest>) -> Result<Response<lk::UnlockResponse>, Status> {
        let (metadata, _, r) = req.into_parts();
        let u = self
            .keel
            .unlock(keel_request(&metadata, v1::UnlockRequest { key: r.key }))
            .await
            .map_err(error::from_keel)?
            .into_inner();
        Ok(Response::new(lk::UnlockResponse {
            header: Some(header(&self.keel.node, rev(&u.header))),
        }))
    }
}

pub struct EtcdElection {
    keel: ElectionService,
}

impl EtcdElection {
    pub fn new(node: Arc<Node>) -> Self {
        EtcdElection {
            keel: ElectionService { node },
        }
    }

    fn node(&self) -> &Arc<Node> {
        &self.keel.node
    }

    fn kv(&self, kv: Option<v1::KeyValue>) -> Option<keel_proto::etcd::mvccpb::KeyValue> {
        kv.map(|kv| {
            let lease = lease_of(self.node(), &kv.key);
            convert::from_keel(kv, lease)
        })
    }
}

/// etcd's election errors are plain texts (gRPC Unknown); keel's say the same with more words.
fn election_error(s: Status) -> Status {
    for text in [error::ELECTION_NOT_LEADER, error::ELECTION_NO_LEADER] {
        if s.message().starts_with(text) {
            return error::status(Code::Unknown, text);
        }
    }
    error::from_keel(s)
}

fn to_keel(k: Option<el::LeaderKey>) -> Result<v1::LeaderKey, Status> {
    let k = k.ok_or_else(|| Status::unknown("\"leader\" field must be provided"))?;
    Ok(v1::LeaderKey {
        name: k.name,
        key: k.key,
        rev: k.rev.max(0) as u64,
        lease: k.lease,
    })
}

fn from_keel(k: v1::LeaderKey) -> el::LeaderKey {
    el::LeaderKey {
        name: k.name,
        key: k.key,
        rev: k.rev as i64,
        lease: k.lease,
    }
}

type ObserveStream = Pin<Box<dyn Stream<Item = Result<el::LeaderResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Election for EtcdElection {
    async fn campaign(&self, req: Request<el::CampaignRequest>) -> Result<Response<el::CampaignResponse>, Status> {
        let (metadata, _, r) = req.into_parts();
        let msg = v1::CampaignRequest {
            name: r.name,
            lease: r.lease,
            value: r.value,
        };
        let c = self
            .keel
            .campaign(keel_request(&metadata, msg))
            .await
            .map_err(election_error)?
            .into_inner();
        Ok(Response::new(el::CampaignResponse {
            header: Some(header(self.node(), rev(&c.header))),
            leader: c.leader.map(from_keel),
        }))
    }

    async fn proclaim(&self, req: Request<el::ProclaimRequest>) -> Result<Response<el::ProclaimResponse>, Status> {
        let (metadata, _, r) = req.into_parts();
        let msg = v1::ProclaimRequest {
            leader: Some(to_keel(r.leader)?),
            value: r.value,
        };
        let p = self
            .keel
            .proclaim(keel_request(&metadata, msg))
            .await
            .map_err(election_error)?
            .into_inner();
        Ok(Response::new(el::ProclaimResponse {
            header: Some(header(self.node(), rev(&p.header))),
        }))
    }

    async fn leader(&self, req: Request<el::LeaderRequest>) -> Result<Response<el::LeaderResponse>, Status> {
        let (metadata, _, r) = req.into_parts();
        let l = self
            .keel
            .leader(keel_request(&metadata, v1::LeaderRequest { name: r.name }))
            .await
            .map_err(election_error)?
            .into_inner();
        Ok(Response::new(el::LeaderResponse {
            header: Some(header(self.node(), rev(&l.header))),
            kv: self.kv(l.kv),
        }))
    }

    type ObserveStream = ObserveStream;

    async fn observe(&self, req: Request<el::LeaderRequest>) -> Result<Response<ObserveStream>, Status> {
        let (metadata, _, r) = req.into_parts();
        let stream = self
            .keel
            .observe(keel_request(&metadata, v1::LeaderRequest { name: r.name }))
            .await
            .map_err(election_error)?
            .into_inner();
        let this = EtcdElection::new(self.node().clone());
        let stream = stream.map(move |item| match item {
            Ok(l) => Ok(el::LeaderResponse {
                header: Some(header(this.node(), rev(&l.header))),
                kv: this.kv(l.kv),
            }),
            Err(e) => Err(election_error(e)),
        });
        Ok(Response::new(Box::pin(stream) as ObserveStream))
    }

    async fn resign(&self, req: Request<el::ResignRequest>) -> Result<Response<el::ResignResponse>, Status> {
        let (metadata, _, r) = req.into_parts();
        let msg = v1::ResignRequest {
            leader: Some(to_keel(r.leader)?),
        };
        let s = self
            .keel
            .resign(keel_request(&metadata, msg))
            .await
            .map_err(election_error)?
            .into_inner();
        Ok(Response::new(el::ResignResponse {
            header: Some(header(self.node(), rev(&s.header))),
        }))
    }
}
