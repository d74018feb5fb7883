//! etcd's KV service on keel's write and read paths.
//!
//! Each request is checked and converted here (etcd's texts for etcd's refusals), then takes the
//! same path as keel's own KV service: `Node::write` for writes, on the leader or forwarded to
//! it, and the read barrier plus a read of the local state machine for linearizable reads.

use std::sync::Arc;

use keel_proto::etcd::etcdserverpb as pb;
use keel_proto::etcd::etcdserverpb::kv_server::Kv;
use keel_storage::{validate_range, validate_request, Command, CommandResult, RangeOp, Request, TxnOp};
use tonic::{Code, Response, Status};

use super::convert::{self, RangePlan};
use super::{error, header, lease_of};
use crate::auth::Caller;
use crate::node::Node;
use crate::service::deadline;
use crate::service::kv::read_range_at;
use keel_storage::auth::check::Need;

/// The most bytes of pairs one etcd range response carries. etcd has no such bound below its
/// 2 GiB message limit, and its Go client accepts that much; keel stops here and sets `more`, so
/// that one read cannot take a member's memory.
pub const MAX_ETCD_RANGE_BYTES: usize = 64 * 1024 * 1024;

pub struct EtcdKv {
    pub node: Arc<Node>,
}

impl EtcdKv {
    async fn write(
        &self,
        command: Command,
        metadata: &tonic::metadata::MetadataMap,
    ) -> Result<keel_storage::Response, Status> {
        let request = Request::new(command);
        validate_request(&request, &self.node.limits).map_err(|e| error::invalid(&e))?;
        self.node.write(request, deadline(metadata)).await.map_err(error::node)
    }

    /// Read `op` as of `rev` (0: now), with etcd's errors for a revision out of reach.
    async fn read_at(
        &self,
        op: RangeOp,
        rev: u64,
        deadline: std::time::Instant,
    ) -> Result<(keel_storage::RangeResult, u64), Status> {
        use keel_storage::ReadError;
        let node = &self.node;
        match read_range_at(node, op, rev, deadline, MAX_ETCD_RANGE_BYTES)
            .await
            .map_err(error::node)?
        {
            Ok(read) => Ok(read),
            Err(ReadError::Compacted { .. }) => Err(error::status(Code::OutOfRange, error::COMPACTED)),
            Err(ReadError::FutureRevision { .. }) => Err(error::status(Code::OutOfRange, error::FUTURE_REV)),
            Err(e) => Err(error::node(crate::service::kv::read_failed(node, e))),
        }
    }

    async fn read(&self, plan: &RangePlan, deadline: std::time::Instant) -> Result<pb::RangeResponse, Status> {
        let node = &self.node;
        if plan.empty {
            return Ok(pb::RangeResponse {
                header: Some(header(node, node.reader.revision())),
                ..Default::default()
            });
        }
        validate_range(&plan.op, &node.limits).map_err(|e| error::invalid(&e))?;
        let (mut result, rev) = self.read_at(plan.op.clone(), plan.revision, deadline).await?;
        if plan.post.is_none() && result.more {
            // etcd's count is the whole range's, not what the limit let through.
            let count = RangeOp {
                count_only: true,
                limit: 0,
                ..plan.op.clone()
            };
            result.count = self.read_at(count, rev, deadline).await?.0.count;
        }
        Ok(convert::range_response(plan, result, Some(header(node, rev)), &|k| {
            lease_of(node, k)
        }))
    }
}

impl EtcdKv {
    /// Wait until this member's compaction point has reached `rev`. A member compacts a bounded
    /// step at each apply, so an idle one is given empty txns to apply (they take no revision).
    async fn compacted_here(&self, rev: u64, deadline: std::time::Instant) -> Result<(), Status> {
        let empty = || {
            Command::Txn(keel_storage::Txn {
                compares: Vec::new(),
                success: Vec::new(),
                failure: Vec::new(),
            })
        };
        while self.node.reader.compacted() < rev {
            if std::time::Instant::now() >= deadline {
                return Err(error::status(Code::Unavailable, error::TIMEOUT));
            }
            let request = Request::new(empty());
            self.node.write(request, deadline).await.map_err(error::node)?;
        }
        Ok(())
    }
}

/// A result that is not the command's own: refused by the state machine, or a bug.
pub(crate) fn unexpected(r: &CommandResult) -> Status {
    match r {
        CommandResult::LeaseNotFound { .. } => error::status(Code::NotFound, error::LEASE_NOT_FOUND),
        CommandResult::LeaseExists { .. } => error::status(Code::FailedPrecondition, error::LEASE_EXISTS),
        CommandResult::KeyNotFound { .. } => error::status(Code::InvalidArgument, error::KEY_NOT_FOUND),
        CommandResult::Compacted { .. } => error::status(Code::OutOfRange, error::COMPACTED),
        CommandResult::FutureRevision { .. } => error::status(Code::OutOfRange, error::FUTURE_REV),
        CommandResult::AuthRefused(e) => crate::auth::status(*e),
        other => Status::internal(format!("state machine returned {other:?} for this command")),
    }
}

#[tonic::async_trait]
impl Kv for EtcdKv {
    async fn range(&self, req: tonic::Request<pb::RangeRequest>) -> Result<Response<pb::RangeResponse>, Status> {
        let deadline = deadline(req.metadata());
        let r = req.into_inner();
        let plan = convert::range_plan(&r)?;
        if !r.serializable {
            self.node.read_barrier(deadline).await.map_err(error::node)?;
        }
        Caller::current().check(&self.node, Need::Read, &plan.op.range)?;
        Ok(Response::new(self.read(&plan, deadline).await?))
    }

    async fn put(&self, req: tonic::Request<pb::PutRequest>) -> Result<Response<pb::PutResponse>, Status> {
        let (metadata, _, p) = req.into_parts();
        let command = match convert::put_op(&p)? {
            TxnOp::Put(put) => Command::Put(put),
            TxnOp::LeasedPut(put) => Command::LeasedPut(put),
            TxnOp::PutWith(put) => Command::PutWith(put),
            _ => unreachable!("put_op makes puts"),
        };
        let resp = self.write(command, &metadata).await?;
        match resp.result {
            CommandResult::Put(put) => Ok(Response::new(pb::PutResponse {
                header: Some(header(&self.node, resp.revision)),
                prev_kv: put.prev_kv.map(|kv| convert::key_value(kv, 0)),
            })),
            other => Err(unexpected(&other)),
        }
    }

    async fn delete_range(
        &self,
        req: tonic::Request<pb::DeleteRangeRequest>,
    ) -> Result<Response<pb::DeleteRangeResponse>, Status> {
        let (metadata, _, d) = req.into_parts();
        let Some(op) = convert::delete_op(&d)? else {
            let rev = self.node.reader.revision();
            return Ok(Response::new(pb::DeleteRangeResponse {
                header: Some(header(&self.node, rev)),
                ..Default::default()
            }));
        };
        let resp = self.write(Command::Delete(op), &metadata).await?;
        match resp.result {
            CommandResult::Delete(del) => Ok(Response::new(convert::delete_response(
                del,
                Some(header(&self.node, resp.revision)),
            ))),
            other => Err(unexpected(&other)),
        }
    }

    async fn txn(&self, req: tonic::Request<pb::TxnRequest>) -> Result<Response<pb::TxnResponse>, Status> {
        let (metadata, _, t) = req.into_parts();
        let plan = convert::txn_plan(t)?;
        let resp = self.write(Command::Txn(plan.txn.clone()), &metadata).await?;
        match resp.result {
            CommandResult::Txn(result) => {
                let succeeded = result.succeeded;
                let node = &self.node;
                let responses = plan.responses(result, &|k| lease_of(node, k))?;
                Ok(Response::new(pb::TxnResponse {
                    header: Some(header(node, resp.revision)),
                    succeeded,
                    responses,
                }))
            }
            other => Err(unexpected(&other)),
        }
    }

    async fn compact(
        &self,
        req: tonic::Request<pb::CompactionRequest>,
    ) -> Result<Response<pb::CompactionResponse>, Status> {
        let (metadata, _, c) = req.into_parts();
        let deadline = deadline(&metadata);
        let rev = c.revision.max(0) as u64;
        let resp = self.write(Command::Compact(rev), &metadata).await?;
        match resp.result {
            CommandResult::None => {}
            other => return Err(unexpected(&other)),
        }
        if c.physical {
            self.compacted_here(rev, deadline).await?;
        }
        Ok(Response::new(pb::CompactionResponse {
            header: Some(header(&self.node, resp.revision)),
        }))
    }
}
