//! The leader's proposer: concurrent writes share log entries.
//!
//! openraft 0.9 appends a proposed entry to the leader's log and waits until the append is
//! flushed before it takes the next proposal (`RaftCore::append_to_log` awaits the flush inside
//! the core's loop). A leader that proposes one entry per write therefore commits at most one
//! write per log sync, whatever the number of clients: about 1,400 writes/s on the development
//! machine, where a sled flush plus fdatasync takes ~0.7 ms, and the log store's group commit
//! never gets a second append to share a sync with.
//!
//! So writes are queued here and proposed together: whatever has queued becomes one
//! [`Command::Batch`] entry, whose requests the state machine applies one after the other, each
//! with its own revision and session decision (see `keel_storage::sm`). One log append, one sync
//! on each member, one replication round and one apply call serve the whole batch.
//!
//! Batches form by themselves, without timers: at most [`IN_FLIGHT`] proposals are outstanding
//! (proposed but not yet applied), and what arrives meanwhile waits for the next one. A write
//! that finds nothing else queued is proposed as it is, at once, so a lone client sees no added
//! latency. A batch ends at `max_requests` requests or about `max_bytes` bytes, and before a
//! second request of the same client session (a retry racing its original is thus decided
//! against the original's applied record, as it would be without batching).
//!
//! Caveats:
//! - A batch fails or succeeds as one entry: if the leader loses leadership before the entry is
//!   committed, every request in it gets the same outcome (unknown, or not-leader when nothing
//!   was proposed), exactly as each would alone.
//! - openraft 0.10 answers `ForwardToLeader` only to a proposal it refused before appending it
//!   (this node was not leader, or was handing over: retrying on the next leader is safe), and
//!   `LogEntryDiscarded` to one whose entry was appended and then truncated or purged away by a
//!   newer leader's. The latter may still have committed elsewhere (with five or more voters,
//!   another member can hold the entry and a later leader commit it), so its outcome is unknown.
//!   An appended entry that a later leader commits is answered when it is applied, whoever leads.
//! - Requests whose callers have given up (deadline passed) while queued are dropped before they
//!   are proposed; the caller was already told that the outcome is unknown.
//! - The proposer holds at most `max_queued` writes, and [`MAX_QUEUED_BYTES`] of them: from the
//!   moment one is handed over until it is answered, queued or proposed (a proposal that outlives
//!   `SLOT_TIMEOUT` frees its slot but still holds its writes). A write that finds it full is
//!   refused at once with `Unavailable` (nothing was proposed; retry). The number and size of
//!   the writes held are the gauges `keel_proposal_queue_requests` and `_bytes`.
//! - Batch entries are a log format addition: members that predate them cannot apply them. When
//!   upgrading from such a build, run the new build with `--max-batch 1` until every member runs
//!   it.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use keel_storage::{codec, Command, CommandResult, NodeId, Request, Response};
use openraft::errors::{ClientWriteError, RaftError};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::BatchLimits;
use crate::error::NodeError;
use crate::metrics::Metrics;
use crate::raft::Raft;

/// Proposals outstanding at once. Two keep the leader's log busy while the previous entry is
/// replicated and applied; more would only split the queue into smaller entries, each of which
/// costs every member a sync of its own. (Measured with put C=1/64/256: 1, 2 and 4 give the same
/// throughput within noise on the 2-core development machine, where CPU is then the limit; 1
/// costs a lone client ~25% more latency.)
pub const IN_FLIGHT: usize = 2;

/// Encoded bytes of the writes the proposer holds at once (see `max_queued`). A write larger
/// than this is taken when the proposer holds nothing else.
pub const MAX_QUEUED_BYTES: usize = 256 * 1024 * 1024;

/// A write waiting to be proposed.
struct Queued {
    request: Request,
    bytes: usize,
    reply: oneshot::Sender<Result<Response, NodeError>>,
    /// Held until the write is answered (or dropped unproposed).
    place: Place,
}

/// Room for writes in the proposer: one permit per write, and one per byte of them.
struct Room {
    id: NodeId,
    limit: usize,
    writes: Arc<Semaphore>,
    bytes: Arc<Semaphore>,
    metrics: Arc<Metrics>,
}

/// A write's share of the [`Room`]; dropping it frees the share and lowers the gauges.
struct Place {
    _write: OwnedSemaphorePermit,
    _bytes: OwnedSemaphorePermit,
    bytes: usize,
    metrics: Arc<Metrics>,
}

impl Room {
    fn new(id: NodeId, limit: usize, metrics: Arc<Metrics>) -> Room {
        Room {
            id,
            limit,
            writes: Arc::new(Semaphore::new(limit)),
            bytes: Arc::new(Semaphore::new(MAX_QUEUED_BYTES)),
            metrics,
        }
    }

    /// A place for a write of `bytes`, or the refusal if the proposer is full.
    fn take(&self, bytes: usize) -> Result<Place, NodeError> {
        let write = self.writes.clone().try_acquire_owned().map_err(|_| {
            NodeError::Unavailable(format!(
                "too many writes queued on leader {} (limit {}); retry",
                self.id, self.limit
            ))
        })?;
        let share = bytes.min(MAX_QUEUED_BYTES) as u32;
        let bytes_permit = self.bytes.clone().try_acquire_many_owned(share).map_err(|_| {
            NodeError::Unavailable(format!(
                "too many bytes of writes queued on leader {} (limit {} MiB); retry",
                self.id,
                MAX_QUEUED_BYTES >> 20
            ))
        })?;
        self.metrics.proposal_queue_requests.inc();
        self.metrics.proposal_queue_bytes.add(bytes as i64);
        Ok(Place {
            _write: write,
            _bytes: bytes_permit,
            bytes,
            metrics: self.metrics.clone(),
        })
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        self.metrics.proposal_queue_requests.dec();
        self.metrics.proposal_queue_bytes.sub(self.bytes as i64);
    }
}

/// Handle to the proposer task; dropping every handle stops the task once the queue is empty.
pub struct Proposer {
    queue: mpsc::UnboundedSender<Queued>,
    room: Room,
}

impl Proposer {
    /// Start the proposer task for `raft` on member `id`, on `tasks`, until `cancel`. Each
    /// batch is proposed by a task of its own on `tasks`, which ends once Raft answers it (or
    /// stops).
    pub fn spawn(
        id: NodeId,
        raft: Raft,
        limits: BatchLimits,
        metrics: Arc<Metrics>,
        tasks: &TaskTracker,
        cancel: &CancellationToken,
    ) -> Self {
        // Bounded by `room`: every write in the channel holds a place.
        let (queue, rx) = mpsc::unbounded_channel();
        let room = Room::new(id, limits.max_queued, metrics.clone());
        let target = Target { id, raft };
        let run = run(target, rx, limits, metrics, tasks.clone());
        tasks.spawn(cancel.clone().run_until_cancelled_owned(run));
        Proposer { queue, room }
    }

    /// Propose `request` (already validated) and wait until it is applied. The caller bounds the
    /// wait; a caller that stops waiting leaves the outcome unknown. Refused with `Unavailable`
    /// when the proposer already holds as many writes as it may.
    pub async fn propose(&self, request: Request) -> Result<Response, NodeError> {
        let (reply, answer) = oneshot::channel();
        let bytes = codec::encoded_len(&request);
        let place = self.room.take(bytes)?;
        self.queue
            .send(Queued {
                request,
                bytes,
                reply,
                place,
            })
            .map_err(|_| NodeError::Unavailable("the node is stopping".into()))?;
        answer.await.unwrap_or_else(|_| {
            Err(NodeError::Unknown(
                "the proposer stopped before the write was answered; it may or may not have applied".into(),
            ))
        })
    }
}

/// What the proposals go to: this member's Raft.
#[derive(Clone)]
struct Target {
    id: NodeId,
    raft: Raft,
}

async fn run(
    target: Target,
    mut queue: mpsc::UnboundedReceiver<Queued>,
    limits: BatchLimits,
    metrics: Arc<Metrics>,
    tasks: TaskTracker,
) {
    let in_flight = Arc::new(Semaphore::new(IN_FLIGHT));
    let mut carried: Option<Queued> = None;
    loop {
        let first = match carried.take() {
            Some(q) => q,
            None => match queue.recv().await {
                Some(q) => q,
                None => return,
            },
        };
        // Wait for a free slot first: what queues meanwhile joins this batch.
        let permit = in_flight
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let mut batch = Vec::new();
        let mut bytes = 0;
        let mut sessions = HashSet::new();
        let mut next = Some(first);
        while let Some(q) = next.take() {
            if q.reply.is_closed() {
                // Its caller gave up; nothing was proposed for it.
            } else if !batch.is_empty()
                && (bytes + q.bytes > limits.max_bytes
                    || q.request.session.is_some_and(|s| sessions.contains(&s.client_id)))
            {
                carried = Some(q);
                break;
            } else {
                bytes += q.bytes;
                if let Some(s) = q.request.session {
                    sessions.insert(s.client_id);
                }
                batch.push(q);
            }
            if batch.len() < limits.max_requests {
                next = queue.try_recv().ok();
            }
        }
        if batch.is_empty() {
            continue;
        }
        metrics.proposal_batch_requests.observe(batch.len() as f64);
        tasks.spawn(propose(target.clone(), batch, permit));
    }
}

/// How long a proposal may hold its in-flight slot. openraft answers a proposal once it is applied
/// or known lost, but one caught in a leadership change can wait for the next leader to commit
/// it; the slot is freed after this long so that such a proposal never stops the proposer.
const SLOT_TIMEOUT: Duration = Duration::from_secs(1);

/// Propose one entry for `batch` and answer each of its requests.
async fn propose(target: Target, mut batch: Vec<Queued>, permit: OwnedSemaphorePermit) {
    // Each write keeps its place in the proposer until it is answered.
    if batch.len() == 1 {
        let q = batch.pop().expect("one request");
        let _ = q.reply.send(client_write(&target, q.request, permit).await);
        return;
    }
    let n = batch.len();
    let (mut requests, mut replies, mut places) = (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
    for q in batch {
        requests.push(q.request);
        replies.push(q.reply);
        places.push(q.place);
    }
    match client_write(&target, Request::new(Command::Batch(requests)), permit).await {
        Ok(Response {
            result: CommandResult::Batch(responses),
            ..
        }) if responses.len() == n => {
            for (reply, response) in replies.into_iter().zip(responses) {
                let _ = reply.send(Ok(response));
            }
        }
        Ok(other) => {
            let e = NodeError::Internal(format!("a batch of {n} requests was answered with {other:?}"));
            for reply in replies {
                let _ = reply.send(Err(e.clone()));
            }
        }
        Err(e) => {
            for reply in replies {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
    drop(places);
}

/// Propose `request`; the in-flight `slot` is released when the answer comes, or after
/// [`SLOT_TIMEOUT`], whichever is first.
async fn client_write(target: &Target, request: Request, slot: OwnedSemaphorePermit) -> Result<Response, NodeError> {
    let write = target.raft.client_write(request);
    tokio::pin!(write);
    let result = tokio::select! {
        r = &mut write => r,
        _ = tokio::time::sleep(SLOT_TIMEOUT) => {
            drop(slot);
            write.await
        }
    };
    match result {
        Ok(resp) => Ok(resp.data),
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => Err(crate::error::forwarded(f)),
        Err(RaftError::APIError(ClientWriteError::LogEntryDiscarded(f))) => Err(overwritten(target.id, f.leader_id)),
        Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e))) => Err(NodeError::Internal(e.to_string())),
        Err(RaftError::APIError(ClientWriteError::PreconditionFailed(e))) => Err(NodeError::Internal(e.to_string())),
        Err(RaftError::Fatal(f)) => Err(NodeError::Unknown(format!(
            "raft stopped during the write ({f}); it may or may not have applied"
        ))),
    }
}

/// The answer to a proposal whose entry was appended here and then discarded by a newer leader.
fn overwritten(id: NodeId, leader: Option<NodeId>) -> NodeError {
    let leader = leader.map_or("unknown".to_string(), |l| l.to_string());
    NodeError::Unknown(format!(
        "member {id} lost its leadership (leader now: {leader}) after the write may have reached its log; \
         it may or may not have applied (another member may hold it and a later leader commit it)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The room refuses the write beyond its limit, and the bytes beyond [`MAX_QUEUED_BYTES`];
    /// the gauges follow the places taken and freed.
    #[test]
    fn the_room_is_bounded_and_counted() {
        let metrics = Metrics::new(7);
        let room = Room::new(7, 3, metrics.clone());
        let mut places: Vec<Place> = (0..3).map(|_| room.take(100).expect("room")).collect();
        assert_eq!(metrics.proposal_queue_requests.get(), 3);
        assert_eq!(metrics.proposal_queue_bytes.get(), 300);
        let refused = room.take(100).err().expect("a fourth write fits in a room for three");
        assert_eq!(
            refused,
            NodeError::Unavailable("too many writes queued on leader 7 (limit 3); retry".into())
        );
        assert_eq!(refused.to_status().code(), tonic::Code::Unavailable);
        assert_eq!(metrics.proposal_queue_requests.get(), 3);
        places.pop();
        assert_eq!(metrics.proposal_queue_requests.get(), 2);
        assert_eq!(metrics.proposal_queue_bytes.get(), 200);

        // Bytes: one write larger than the whole room is taken alone.
        drop(places);
        let huge = room.take(MAX_QUEUED_BYTES * 2).expect("an empty room takes any write");
        assert_eq!(metrics.proposal_queue_bytes.get(), (MAX_QUEUED_BYTES * 2) as i64);
        let refused = room.take(1).err().expect("a full room took more bytes");
        assert!(
            refused
                .to_string()
                .contains("too many bytes of writes queued on leader 7"),
            "{refused}"
        );
        assert_eq!(
            metrics.proposal_queue_requests.get(),
            1,
            "a refused write holds no place"
        );
        drop(huge);
        assert_eq!(metrics.proposal_queue_requests.get(), 0);
        assert_eq!(metrics.proposal_queue_bytes.get(), 0);
        room.take(1).expect("room again");
    }
}
