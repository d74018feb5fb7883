//! The KV service: validate, route through the node (leader or forward), convert the result.
//!
//! Range reads other than one-key reads run off the async runtime, on tokio's blocking threads,
//! at most [`scan_slots`] of them at once (more wait for a slot until their deadline). A range
//! read may be long (a `count_only` read of a million keys takes seconds), and on a runtime
//! worker it would hold up every task queued behind it, the Raft core's heartbeats among them.
//! A read stops at its limit and at [`MAX_RANGE_RESPONSE_BYTES`] (see
//! [`keel_storage::sm::mvcc::collect_range_bounded`]).

use std::sync::{Arc, LazyLock};
use std::time::Instant;

use crate::convert;
use keel_proto::v1::kv_server::Kv;
use keel_proto::v1::{
    DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse, RangeRequest, RangeResponse, TxnRequest,
    TxnResponse,
};
use keel_proto::wire::Outcome;
use keel_storage::{
    validate_range, validate_request, Command, CommandResult, KeyRange, RangeOp, RangeResult, Request, Response,
    SessionRef,
};
use tokio::sync::Semaphore;
use tonic::Status;

use super::{deadline, fail, respond};
use crate::auth::Caller;
use crate::error::NodeError;
use crate::node::Node;
use keel_storage::auth::check::Need;

/// The most bytes of pairs that one range response carries (as counted by
/// [`keel_storage::sm::mvcc::response_bytes`], an upper bound of their encoded size). The read
/// stops before the pair that would go over it and sets `more`; a first pair larger than this
/// comes alone. 3 MiB leaves room under gRPC's default 4 MiB limit on a message a client
/// decodes (tonic's, grpc-go's, grpc-java's) for the header and for a first pair of the largest
/// default size (1 MiB value, 4 KiB key): with the default limits every response fits every
/// client. keel-client accepts up to 256 MiB (`ClientConfig::max_response_bytes`), for values
/// made larger with `--max-value-bytes`.
pub const MAX_RANGE_RESPONSE_BYTES: usize = 3 * 1024 * 1024;

/// How many range reads run at once, each on a blocking thread: half the cores, at least 2 (so
/// one long count does not hold up every other range read) and at most 8.
pub fn scan_slots() -> usize {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    (cores / 2).clamp(2, 8)
}

static SCAN_SLOTS: LazyLock<Semaphore> = LazyLock::new(|| Semaphore::new(scan_slots()));

/// What a failed read of the local state machine means for the client, and for the member.
pub(crate) fn read_failed(node: &Node, e: keel_storage::ReadError) -> NodeError {
    if let keel_storage::ReadError::Storage(e) = &e {
        // The disk failed a read (or returned what its checksums reject): stop rather than serve
        // from a store that may be missing data. The cluster carries on.
        node.fail(format!("reading the store in {} failed: {e}", node.db_path().display()));
    }
    NodeError::Unavailable(format!("read failed on member {}: {e}", node.id))
}

/// Read `op` from the local state machine, at most `max_bytes` of pairs. A one-key read is one
/// lookup and runs here; any other waits (until `deadline`) for one of the [`scan_slots`] and
/// runs on a blocking thread, which keeps the slot until the read is done, even when the client
/// has gone.
pub(crate) async fn read_range(
    node: &Node,
    op: RangeOp,
    deadline: Instant,
    max_bytes: usize,
) -> Result<(RangeResult, u64), NodeError> {
    read_range_at(node, op, 0, deadline, max_bytes)
        .await?
        .map_err(|e| read_failed(node, e))
}

/// [`read_range`] as of revision `rev` (0: the current one). The read's own error comes back
/// as it is (a compacted or future revision is the client's to hear of); waiting for a slot
/// fails with the node's.
pub(crate) async fn read_range_at(
    node: &Node,
    op: RangeOp,
    rev: u64,
    deadline: Instant,
    max_bytes: usize,
) -> Result<Result<(RangeResult, u64), keel_storage::ReadError>, NodeError> {
    let read = move |node: &Node, op: &RangeOp| node.reader.range_at(op, rev, max_bytes);
    if matches!(op.range, KeyRange::Key(_)) {
        return Ok(read(node, &op));
    }
    let slot = tokio::time::timeout_at(deadline.into(), SCAN_SLOTS.acquire())
        .await
        .map_err(|_| {
            NodeError::DeadlineExceeded(format!(
                "the deadline passed while the read waited for one of the {} range-read slots (all busy \
                 with other range reads)",
                scan_slots()
            ))
        })?
        .map_err(|_| NodeError::Internal("the range-read slots were closed".into()))?;
    let node = node.shared()?;
    tokio::task::spawn_blocking(move || {
        let _slot = slot;
        read(&node, &op)
    })
    .await
    .map_err(|e| NodeError::Internal(format!("range read failed: {e}")))
}

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

/// The answer to a write whose result is not the command's own: a session outcome (named in the
/// status's metadata, see `keel_proto::wire::Outcome`, which keel-client tells apart), or a bug.
pub(crate) fn unexpected(node: &Node, r: &CommandResult) -> Status {
    if let CommandResult::AuthRefused(e) = r {
        return crate::auth::status(*e);
    }
    let outcome = match r {
        CommandResult::SessionExpired { .. } => Some(Outcome::SessionExpired),
        CommandResult::StaleSession { seq, last_seq, .. } if last_seq == seq => Some(Outcome::SessionResultDropped),
        CommandResult::StaleSession { .. } => Some(Outcome::StaleSession),
        _ => None,
    };
    let mut status = fail(node, unexpected_error(r));
    if let Some(outcome) = outcome {
        outcome.tag(&mut status);
    }
    status
}

fn unexpected_error(r: &CommandResult) -> NodeError {
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
        CommandResult::LeaseNotFound { id } => NodeError::NotFound(format!("lease {id} not found")),
        CommandResult::LeaseExists { id } => NodeError::AlreadyExists(format!("lease {id} already exists")),
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
        Caller::current().check(node, Need::Read, &op.range)?;
        let (result, revision) = read_range(node, op, deadline, MAX_RANGE_RESPONSE_BYTES)
            .await
            .map_err(|e| fail(node, e))?;
        Ok(respond(node, convert::range_response(result, node.header(revision))))
    }

    async fn put(&self, req: tonic::Request<PutRequest>) -> Result<tonic::Response<PutResponse>, Status> {
        let node = &self.node;
        let (metadata, _, mut req) = req.into_parts();
        let session = req.session.take();
        let resp = self
            .write(convert::put_command(req), session, &metadata)
            .await
            .map_err(|e| fail(node, e))?;
        match resp.result {
            CommandResult::Put(p) => Ok(respond(node, convert::put_response(p, node.header(resp.revision)))),
            other => Err(unexpected(node, &other)),
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
            other => Err(unexpected(node, &other)),
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
            other => Err(unexpected(node, &other)),
        }
    }
}
