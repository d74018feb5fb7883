//! Who leads, and what a request needs of the leader: the leadership checks that every
//! leader-only path makes first, the response header that names the leader, and
//! `Node::on_leader`, which runs leader-only work here or sends it to the leader.
//!
//! A leader that has not heard from a quorum for `quorum_silence_limit` refuses new work with
//! `Unavailable` rather than letting it hang; nothing was proposed. With no leader at all, work
//! waits (at most a couple of election timeouts) for one.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use keel_proto::raft::RaftRequest;
use keel_proto::v1::ResponseHeader;
use keel_storage::{codec, NodeId};
use openraft::async_runtime::WatchReceiver;
use openraft::Instant as _;

use super::Node;
use crate::error::NodeError;
use crate::forward::{ForwardReply, ForwardRequest};
use crate::peer::client::never_sent;
use crate::raft::RaftMetrics;

impl Node {
    /// The leader as this node knows it.
    pub fn current_leader(&self) -> Option<NodeId> {
        self.raft.metrics().borrow_watched().current_leader
    }

    /// Is this node the leader right now (by its own metrics)?
    pub fn is_leader(&self) -> bool {
        self.current_leader() == Some(self.id)
    }

    /// The header of a response reflecting `revision`.
    pub fn header(&self, revision: u64) -> ResponseHeader {
        let m = self.raft.metrics();
        let m = m.borrow_watched();
        ResponseHeader {
            cluster_id: self.cluster.get(),
            member_id: self.id,
            revision,
            raft_term: m.current_term,
            leader_id: m.current_leader.unwrap_or(0),
        }
    }

    /// The leader's client address, if known: a hint for clients to go there directly.
    pub fn leader_client_addr(&self) -> Option<String> {
        let m = self.raft.metrics();
        let m = m.borrow_watched();
        let leader = m.current_leader?;
        let node = m.membership_config.membership().get_node(&leader)?;
        (!node.client_addr.is_empty()).then(|| node.client_addr.clone())
    }

    /// How long a request waits for a leader to appear before giving up with Unavailable.
    fn leader_wait(&self) -> Duration {
        self.election_timeout_max * 2 + Duration::from_millis(100)
    }

    /// How long a leader may go without hearing from a quorum before it refuses requests: eight
    /// election timeouts, at least a second (etcd's check-quorum allows one election timeout,
    /// a second by default). Followers that write large entries on a saturated machine answer
    /// hundreds of milliseconds late; a leader really cut off is replaced by the others after an
    /// election timeout or two anyway, and clients waiting on it then move on.
    pub fn quorum_silence_limit(&self) -> Duration {
        (self.election_timeout_max * 8).max(Duration::from_secs(1))
    }

    /// Has this leader gone without a quorum's acknowledgement for too long?
    ///
    /// Lost only if neither measure has seen a quorum within `quorum_silence_limit`: openraft's
    /// (the sending time of the newest RPC a quorum acknowledged; None right after an election)
    /// nor keel's (the time answers arrived, `PeerChannels::since_answer`). A leader whose
    /// followers answer slowly, because they write large entries on a busy machine, is not
    /// without a quorum. A lone voter is its own quorum.
    pub(crate) fn quorum_lost(&self, m: &RaftMetrics) -> Option<u64> {
        let acked = m.last_quorum_acked.map(|t| t.elapsed())?;
        self.quorum_silence(acked, m)
    }

    /// [`Node::quorum_lost`], where openraft's "no quorum has acknowledged this leader yet"
    /// counts as not heard rather than as just elected: for `hasleader` (etcd's leader
    /// requirement), which waits several election timeouts before it ends a stream. A leader
    /// elected just before the others died was "with a quorum" for good otherwise (t41 under
    /// load: a watch that required a leader was never ended). Writes keep the lenient form, so
    /// that a leader does not refuse them in the moments between its election and the first
    /// answers.
    pub(crate) fn quorum_unheard(&self, m: &RaftMetrics) -> Option<u64> {
        let acked = m.last_quorum_acked.map_or(Duration::MAX, |t| t.elapsed());
        self.quorum_silence(acked, m)
    }

    fn quorum_silence(&self, acked: Duration, m: &RaftMetrics) -> Option<u64> {
        let limit = self.quorum_silence_limit();
        if acked <= limit {
            return None;
        }
        let voters: Vec<NodeId> = m.membership_config.membership().voter_ids().collect();
        // Each voter's silence (this leader's own is none), freshest first: the quorum was last
        // heard when the majority-th freshest voter answered.
        let mut silence: Vec<Duration> = voters
            .iter()
            .map(|v| match *v == self.id {
                true => Duration::ZERO,
                false => self.channels.since_answer(*v).unwrap_or(Duration::MAX),
            })
            .collect();
        silence.sort();
        let heard = silence.get(voters.len() / 2).copied().unwrap_or(Duration::MAX);
        (heard > limit).then_some(acked.min(heard).as_millis() as u64)
    }

    /// The precondition of leader-only work: running, leader, and heard from a quorum lately.
    pub(crate) fn check_leader_with_quorum(&self) -> Result<(), NodeError> {
        self.check_running()?;
        if self.transferring.load(Ordering::Acquire) {
            // Nothing is proposed: the request waits for the next leader (`on_leader`).
            return Err(NodeError::NotLeader { leader: None });
        }
        // Borrowed, not cloned: this runs for every write and read index.
        let rx = self.raft.metrics();
        let m = rx.borrow_watched();
        if m.current_leader != Some(self.id) {
            return Err(NodeError::NotLeader {
                leader: m.current_leader,
            });
        }
        if let Some(ms) = self.quorum_lost(&m) {
            return Err(NodeError::Unavailable(format!(
                "no quorum: leader {} has not heard from a majority for {ms} ms",
                self.id
            )));
        }
        Ok(())
    }

    fn no_leader(&self) -> NodeError {
        let m = self.metrics();
        let voters = m.membership_config.membership().voter_ids().count();
        NodeError::Unavailable(format!(
            "no leader: member {} (term {}, {:?}) has not seen a leader among {voters} voters",
            self.id, m.current_term, m.state
        ))
    }

    /// Wait until the known leader is different from `prev` (or a short while has passed), but
    /// not past `limit`.
    async fn await_leader_change(&self, prev: Option<NodeId>, limit: Instant) {
        let left = limit.saturating_duration_since(Instant::now());
        let wait = left.min(Duration::from_millis(50).max(self.election_timeout_max / 4));
        let _ = self
            .raft
            .wait(Some(wait))
            .metrics(
                |m| m.current_leader.is_some() && m.current_leader != prev,
                "leader change",
            )
            .await;
    }

    /// Run leader-only work on whichever member leads: `local` here if this node is the leader,
    /// otherwise `remote()` sent to the leader over the peer service, whose reply `reply` takes
    /// apart (it hands back a reply of the wrong kind). When there is no leader, or the leader
    /// cannot be reached before anything was sent, wait (bounded) for the next one; then
    /// `Unavailable`.
    pub(crate) async fn on_leader<T, Fut>(
        &self,
        deadline: Instant,
        local: impl Fn() -> Fut,
        remote: impl Fn() -> ForwardRequest,
        reply: fn(ForwardReply) -> Result<T, ForwardReply>,
    ) -> Result<T, NodeError>
    where
        Fut: Future<Output = Result<T, NodeError>>,
    {
        self.check_running()?;
        let give_up = (Instant::now() + self.leader_wait()).min(deadline);
        loop {
            let leader = self.current_leader();
            let result = match leader {
                Some(l) if l == self.id => local().await,
                Some(l) => self.forward(l, &remote(), deadline).await.and_then(|r| {
                    reply(r).map_err(|other| NodeError::Internal(format!("leader {l} answered with {other:?}")))
                }),
                None => Err(NodeError::NotLeader { leader: None }),
            };
            match result {
                // Nothing was proposed: wait for a (new) leader and try again, within bounds.
                Err(NodeError::NotLeader { .. }) if Instant::now() < give_up => {
                    self.await_leader_change(leader, give_up).await;
                }
                Err(NodeError::NotLeader { .. }) => return Err(self.no_leader()),
                other => return other,
            }
        }
    }

    /// Send a leader-only operation to `leader`.
    pub(crate) async fn forward(
        &self,
        leader: NodeId,
        req: &ForwardRequest,
        deadline: Instant,
    ) -> Result<ForwardReply, NodeError> {
        let addr = {
            let m = self.raft.metrics();
            let m = m.borrow_watched();
            match m.membership_config.membership().get_node(&leader) {
                Some(node) => node.peer_addr.clone(),
                None => return Err(NodeError::NotLeader { leader: None }),
            }
        };
        self.forward_to_addr(leader, &addr, req, deadline).await
    }

    /// Send `req` to member `leader` at peer address `addr`.
    pub(crate) async fn forward_to_addr(
        &self,
        leader: NodeId,
        addr: &str,
        req: &ForwardRequest,
        deadline: Instant,
    ) -> Result<ForwardReply, NodeError> {
        let mut client = self
            .channels
            .client(addr)
            .map_err(|e| NodeError::Unavailable(format!("leader {leader} has a bad address {addr:?}: {e}")))?;
        let mut request = tonic::Request::new(RaftRequest {
            data: codec::encode(req),
        });
        request.set_timeout(deadline.saturating_duration_since(Instant::now()));
        crate::peer::tag(&mut request, &self.cluster);
        match client.forward(request).await {
            Ok(reply) => {
                let reply = reply.into_inner();
                if !reply.error.is_empty() {
                    let err: NodeError = codec::decode(&reply.error)
                        .map_err(|e| NodeError::Unknown(format!("leader {leader} sent an undecodable error: {e}")))?;
                    return Err(err);
                }
                codec::decode(&reply.data)
                    .map_err(|e| NodeError::Unknown(format!("leader {leader} sent an undecodable reply: {e}")))
            }
            // The leader could not be reached at all: nothing was proposed. Treat it as "no leader
            // right now", so the caller waits for the next one.
            Err(status) if never_sent(&status) => {
                tracing::debug!(leader, %status, "leader unreachable");
                Err(NodeError::NotLeader { leader: None })
            }
            Err(status) if status.code() == tonic::Code::DeadlineExceeded => Err(NodeError::DeadlineExceeded(format!(
                "leader {leader} did not answer before the deadline; the request may still take effect"
            ))),
            Err(status) => Err(NodeError::Unknown(format!(
                "connection to leader {leader} failed mid-request ({status}); the request may or may not have taken effect"
            ))),
        }
    }
}

/// What is left of `deadline`, in milliseconds, for a forwarded request.
pub(crate) fn millis_until(deadline: Instant) -> u64 {
    deadline.saturating_duration_since(Instant::now()).as_millis() as u64
}
