//! The KV service: validate, route through the node (leader or forward), convert the result.

use std::sync::Arc;

use keel_proto::convert;
use keel_proto::v1::kv_server::Kv;
use keel_proto::v1::{
    DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse, RangeRequest, RangeResponse, TxnRequest,
    TxnResponse,
};
use keel_storage::{validate_range, validate_request, Command, CommandResult, Request, Response, SessionRef};
use tonic::Status;

use super::{deadline, fail, respond};
use crate::error::NodeError;
use crate::node::Node;

pub struct KvService {
    pub node: Arc<Node>,
}

impl KvService {
    async fn write(
        &self,
        command: Command,
        session: Option<keel_proto::v1::WriteSession>,
        metadata: &tonic::metadata::MetadataMap,
    ) -> Result<Response, NodeError> {
        let request = Request {
            session: session.map(|s| SessionRef {
                client_id: s.client_id,
                seq: s.seq,
            }),
            command,
        };
        validate_request(&request, &self.node.limits)?;
        self.node.write(request, deadline(metadata)).await
    }
}

/// The answer to a write whose result is not the command's own: a session outcome, or a bug.
/// The message prefixes ("session expired", "session result dropped", "stale session") are what
/// keel-client tells apart.
fn unexpected(r: &CommandResult) -> NodeError {
    match r {
        CommandResult::SessionExpired { client_id, seq } => NodeError::FailedPrecondition(format!(
            "session expired: client {client_id} seq {seq} is unknown to the cluster (nothing was applied); \
             start a new session at seq 1"
        )),
        CommandResult::StaleSession {
            client_id,
            seq,
            last_seq,
        } if last_seq == seq => NodeError::FailedPrecondition(format!(
            "session result dropped: client {client_id} seq {seq} was applied once, but its result was too \
                 large to remember"
        )),
        CommandResult::StaleSession {
            client_id,
            seq,
            last_seq,
        } => NodeError::FailedPrecondition(format!(
            "stale session: client {client_id} seq {seq} is older than its last applied seq {last_seq}"
        )),
        other => NodeError::Internal(format!("state machine returned {other:?} for this command")),
    }
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn range(&self, req: tonic::Request<RangeRequest>) -> Result<tonic::Response<RangeResponse>, Status> {
        let node = &self.node;
        let deadline = deadline(req.metadata());
        let req = req.into_inner();
        let op = convert::range_op(&req).map_err(|e| fail(node, e.into()))?;
        validate_range(&op, &node.limits).map_err(|e| fail(node, e.into()))?;
        if !req.serializable {
            node.read_barrier(deadline).await.map_err(|e| fail(node, e))?;
        }
        let (result, revision) = node
            .reader
            .range(&op)
            .map_err(|e| fail(node, NodeError::Unavailable(format!("read failed: {e}"))))?;
        Ok(respond(node, convert::range_response(result, node.header(revision))))
    }

    async fn put(&self, req: tonic::Request<PutRequest>) -> Result<tonic::Response<PutResponse>, Status> {
        let node = &self.node;
        let (metadata, _, mut req) = req.into_parts();
        let session = req.session.take();
        let resp = self
            .write(Command::Put(convert::put_op(req)), session, &metadata)
            .await
            .map_err(|e| fail(node, e))?;
        match resp.result {
            CommandResult::Put(p) => Ok(respond(node, convert::put_response(p, node.header(resp.revision)))),
            other => Err(fail(node, unexpected(&other))),
        }
    }

    async fn delete_range(
        &self,
        req: tonic::Request<DeleteRangeRequest>,
    ) -> Result<tonic::Response<DeleteRangeResponse>, Status> {
        let node = &self.node;
        let (metadata, _, req) = req.into_parts();
        let op = convert::delete_op(&req).map_err(|e| fail(node, e.into()))?;
        let resp = self
            .write(Command::Delete(op), req.session, &metadata)
            .await
            .map_err(|e| fail(node, e))?;
        match resp.result {
            CommandResult::Delete(d) => Ok(respond(node, convert::delete_response(d, node.header(resp.revision)))),
            other => Err(fail(node, unexpected(&other))),
        }
    }

    async fn txn(&self, req: tonic::Request<TxnRequest>) -> Result<tonic::Response<TxnResponse>, Status> {
        let node = &self.node;
        let (metadata, _, mut req) = req.into_parts();
        let session = req.session.take();
        let txn = convert::txn(req).map_err(|e| fail(node, e.into()))?;
        let resp = self
            .write(Command::Txn(txn), session, &metadata)
            .await
            .map_err(|e| fail(node, e))?;
        match resp.result {
            CommandResult::Txn(t) => Ok(respond(node, convert::txn_response(t, node.header(resp.revision)))),
            other => Err(fail(node, unexpected(&other))),
        }
    }
}
