//! etcd's Lease service over keel's: each call is keel's, with etcd's messages and texts on the
//! outside. keel's leases already have etcd's shape (signed ids, TTLs in seconds, a keep-alive
//! stream answering each request with the renewed TTL, 0 for a lease that is gone).

use std::sync::Arc;

use futures::StreamExt;
use keel_proto::etcd::etcdserverpb as pb;
use keel_proto::etcd::etcdserverpb::lease_server::Lease;
use keel_proto::v1;
use keel_proto::v1::lease_server::Lease as _;
use tonic::{Code, Request, Response, Status, Streaming};

use super::{error, header, keel_request};
use crate::node::Node;
use crate::service::lease::{keep_alive_stream, LeaseService, MAX_TTL_SECS};

/// etcd's largest TTL.
const ETCD_MAX_TTL_SECS: i64 = 9_000_000_000;

pub struct EtcdLease {
    keel: LeaseService,
}

impl EtcdLease {
    pub fn new(node: Arc<Node>) -> Self {
        EtcdLease {
            keel: LeaseService { node },
        }
    }

    fn node(&self) -> &Arc<Node> {
        &self.keel.node
    }

    fn header(&self, h: Option<v1::ResponseHeader>) -> Option<pb::ResponseHeader> {
        let rev = h.map_or_else(|| self.node().reader.revision(), |h| h.revision);
        Some(header(self.node(), rev))
    }
}

type KeepAliveStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<pb::LeaseKeepAliveResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Lease for EtcdLease {
    async fn lease_grant(
        &self,
        req: Request<pb::LeaseGrantRequest>,
    ) -> Result<Response<pb::LeaseGrantResponse>, Status> {
        let (metadata, _, r) = req.into_parts();
        if r.ttl > ETCD_MAX_TTL_SECS.min(MAX_TTL_SECS) {
            return Err(error::status(Code::OutOfRange, error::LEASE_TTL_TOO_LARGE));
        }
        if r.id < 0 {
            return Err(Status::invalid_argument(format!("lease id {} is negative", r.id)));
        }
        // etcd grants its shortest TTL to a request for none; so does keel, for any below it.
        let msg = v1::LeaseGrantRequest {
            ttl: r.ttl.max(1),
            id: r.id,
        };
        let resp = self
            .keel
            .grant(keel_request(&metadata, msg))
            .await
            .map_err(error::from_keel)?;
        let g = resp.into_inner();
        Ok(Response::new(pb::LeaseGrantResponse {
            header: self.header(g.header),
            id: g.id,
            ttl: g.ttl,
            error: String::new(),
        }))
    }

    async fn lease_revoke(
        &self,
        req: Request<pb::LeaseRevokeRequest>,
    ) -> Result<Response<pb::LeaseRevokeResponse>, Status> {
        let (metadata, _, r) = req.into_parts();
        if r.id <= 0 {
            return Err(error::status(Code::NotFound, error::LEASE_NOT_FOUND));
        }
        let msg = v1::LeaseRevokeRequest { id: r.id };
        let resp = self
            .keel
            .revoke(keel_request(&metadata, msg))
            .await
            .map_err(error::from_keel)?;
        Ok(Response::new(pb::LeaseRevokeResponse {
            header: self.header(resp.into_inner().header),
        }))
    }

    type LeaseKeepAliveStream = KeepAliveStream;

    async fn lease_keep_alive(
        &self,
        req: Request<Streaming<pb::LeaseKeepAliveRequest>>,
    ) -> Result<Response<KeepAliveStream>, Status> {
        let metadata = req.metadata().clone();
        let requests = req
            .into_inner()
            .map(|r| r.map(|r| v1::LeaseKeepAliveRequest { id: r.id }));
        let node = self.node().clone();
        let answers = keep_alive_stream(node.clone(), Box::pin(requests)).map_err(error::node)?;
        let answers = answers.map(move |a| match a {
            Ok(a) => Ok(pb::LeaseKeepAliveResponse {
                header: Some(header(&node, a.header.map_or(0, |h| h.revision))),
                id: a.id,
                ttl: a.ttl,
            }),
            Err(e) => Err(error::from_keel(e)),
        });
        Ok(Response::new(super::leader::end_without_leader(
            self.node().clone(),
            &metadata,
            answers,
        )))
    }

    async fn lease_time_to_live(
        &self,
        req: Request<pb::LeaseTimeToLiveRequest>,
    ) -> Result<Response<pb::LeaseTimeToLiveResponse>, Status> {
        let (metadata, _, r) = req.into_parts();
        if r.id <= 0 {
            // etcd answers a lease that does not exist with TTL -1, not an error.
            return Ok(Response::new(pb::LeaseTimeToLiveResponse {
                header: self.header(None),
                id: r.id,
                ttl: -1,
                ..Default::default()
            }));
        }
        let msg = v1::LeaseTimeToLiveRequest { id: r.id, keys: r.keys };
        let t = self
            .keel
            .time_to_live(keel_request(&metadata, msg))
            .await
            .map_err(error::from_keel)?
            .into_inner();
        Ok(Response::new(pb::LeaseTimeToLiveResponse {
            header: self.header(t.header),
            id: t.id,
            ttl: t.ttl,
            granted_ttl: t.granted_ttl,
            keys: t.keys,
        }))
    }

    async fn lease_leases(
        &self,
        req: Request<pb::LeaseLeasesRequest>,
    ) -> Result<Response<pb::LeaseLeasesResponse>, Status> {
        let (metadata, _, _) = req.into_parts();
        let l = self
            .keel
            .leases(keel_request(&metadata, v1::LeaseLeasesRequest {}))
            .await
            .map_err(error::from_keel)?
            .into_inner();
        Ok(Response::new(pb::LeaseLeasesResponse {
            header: self.header(l.header),
            leases: l.leases.into_iter().map(|s| pb::LeaseStatus { id: s.id }).collect(),
        }))
    }
}
