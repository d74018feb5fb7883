//! One node's request paths: where a write or a linearizable read goes, and what the client is
//! told when it cannot be served.
//!
//! **Writes.** On the leader, a write is handed to the proposer (`proposer.rs`), which proposes it
//! with `client_write`, together with whatever other writes are waiting, and answers it once
//! applied.
//! On a follower it is forwarded to the leader over the peer service; the leader proposes it. If
//! there is no leader, the node waits (at most a couple of election timeouts) for one, then answers
//! `Unavailable`. A leader that has not heard from a quorum for a while (`quorum_silence_limit`) refuses new
//! writes with `Unavailable` instead of letting them hang: nothing was proposed.
//!
//! **Linearizable reads** use the read index: the leader confirms with a quorum that it is still
//! leader (`get_read_log_id`) and names the log index the read must see; the serving node, leader
//! or follower, waits until it has applied that index and reads its local state. Followers thus
//! serve linearizable reads themselves, with one small round trip to the leader.
//!
//! **Serializable reads** read the local state directly.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_proto::raft::RaftRequest;
use keel_proto::v1::ResponseHeader;
use keel_storage::{codec, KvReader, Limits, Member, NodeId, Request, Response};
use openraft::async_runtime::WatchReceiver;
use openraft::errors::{LinearizableReadError, RaftError};
use openraft::{ChangeMembers, Instant as _, LinearizerOption};

use crate::coalesce::Coalescer;
use crate::error::NodeError;
use crate::forward::{ForwardReply, ForwardRequest};
use crate::peer::client::{never_sent, PeerChannels};

pub use crate::raft::{Raft, RaftMetrics};

/// A running node, shared by its services.
pub struct Node {
    pub id: NodeId,
    pub raft: Raft,
    pub reader: KvReader,
    /// Where received snapshots are written before openraft installs them.
    pub inbox: keel_storage::SnapshotInbox,
    pub channels: Arc<PeerChannels>,
    pub limits: Limits,
    pub cluster: Arc<keel_storage::datadir::ClusterId>,
    /// This node's addresses as it publishes them in the membership.
    pub advertise: Member,
    pub election_timeout_max: Duration,
    pub data_dir: std::path::PathBuf,
    /// The disk alarm (see `disk.rs`).
    pub disk: Arc<crate::disk::DiskSpace>,
    shutting_down: AtomicBool,
    /// A leader transfer is under way: refuse new writes and read indexes.
    pub(crate) transferring: AtomicBool,
    /// This member was removed from the cluster.
    pub(crate) removed: AtomicBool,
    /// When this member last accepted replication from a current leader, in milliseconds since
    /// `started` (0: never). openraft's metrics keep naming the last leader while a member that
    /// is cut off asks in vain for votes (a pre-vote changes nothing), so readiness asks this.
    leader_contact: std::sync::atomic::AtomicU64,
    started: Instant,
    /// Elections are held (not started) until this instant; None: for good (removed).
    pub(crate) election_hold: Arc<std::sync::Mutex<Option<Instant>>>,
    pub metrics: Arc<crate::metrics::Metrics>,
    pub log_stats: Arc<keel_storage::LogStats>,
    proposer: crate::proposer::Proposer,
    /// Read indexes fetched for this node's linearizable reads (from the leader, maybe itself).
    read_barriers: Coalescer<Result<u64, NodeError>>,
    /// Leadership confirmations by quorum, as leader.
    read_indexes: Coalescer<Result<u64, NodeError>>,
    /// This node, for the rounds of work that run on tasks of their own (`coalesce.rs`).
    this: std::sync::Weak<Node>,
    /// Why this node must stop (see [`Node::fail`]); the binary exits non-zero on it.
    failed: tokio::sync::watch::Sender<Option<String>>,
}

impl Node {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: NodeId,
        raft: Raft,
        reader: KvReader,
        inbox: keel_storage::SnapshotInbox,
        channels: Arc<PeerChannels>,
        limits: Limits,
        cluster: Arc<keel_storage::datadir::ClusterId>,
        advertise: Member,
        election_timeout_max: Duration,
        data_dir: std::path::PathBuf,
        disk: Arc<crate::disk::DiskSpace>,
        metrics: Arc<crate::metrics::Metrics>,
        log_stats: Arc<keel_storage::LogStats>,
        batch: crate::proposer::BatchLimits,
    ) -> Arc<Self> {
        let proposer = crate::proposer::Proposer::spawn(id, raft.clone(), batch, metrics.clone());
        Arc::new_cyclic(|this| Node {
            id,
            raft,
            reader,
            inbox,
            channels,
            limits,
            cluster,
            advertise,
            election_timeout_max,
            data_dir,
            disk,
            shutting_down: AtomicBool::new(false),
            transferring: AtomicBool::new(false),
            removed: AtomicBool::new(false),
            leader_contact: std::sync::atomic::AtomicU64::new(0),
            started: Instant::now(),
            election_hold: Arc::new(std::sync::Mutex::new(Some(Instant::now()))),
            metrics,
            log_stats,
            proposer,
            read_barriers: Coalescer::default(),
            read_indexes: Coalescer::default(),
            this: this.clone(),
            failed: tokio::sync::watch::Sender::new(None),
        })
    }

    /// This node cannot go on (its storage failed a read, Raft stopped on an error): say why in
    /// one line and have the process stop, so that a supervisor sees a dead member and restarts
    /// it, rather than a process that answers health checks with nothing working inside. The
    /// first reason is kept.
    pub fn fail(&self, why: String) {
        self.failed.send_if_modified(|f| {
            if f.is_some() {
                return false;
            }
            tracing::error!(member = self.id, "stopping: {why}");
            *f = Some(why);
            true
        });
    }

    /// Resolves with the reason once [`Node::fail`] was called.
    pub fn failed(&self) -> impl std::future::Future<Output = String> + Send + 'static {
        let mut rx = self.failed.subscribe();
        async move {
            let why = rx
                .wait_for(|f| f.is_some())
                .await
                .map(|f| f.clone().unwrap_or_default());
            match why {
                Ok(why) => why,
                // The node is gone, and with it whoever could fail it.
                Err(_) => std::future::pending().await,
            }
        }
    }

    /// Where the store's database lives, for messages about it.
    pub fn db_path(&self) -> std::path::PathBuf {
        keel_storage::db_dir(&self.data_dir)
    }

    /// This node as a shared handle (for work that outlives the caller's future).
    pub(crate) fn shared(&self) -> Result<Arc<Node>, NodeError> {
        self.this
            .upgrade()
            .ok_or_else(|| NodeError::Unavailable("node is shutting down".into()))
    }

    pub fn metrics(&self) -> RaftMetrics {
        self.raft.metrics().borrow_watched().clone()
    }

    /// Refuse new requests from now on; those in flight finish.
    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::Release);
    }

    /// A leader's AppendEntries was just accepted here.
    pub fn heard_from_leader(&self) {
        let ms = self.started.elapsed().as_millis() as u64;
        self.leader_contact.fetch_max(ms.max(1), Ordering::Relaxed);
    }

    /// How long ago this member last accepted a leader's AppendEntries (None: never).
    pub fn since_leader_contact(&self) -> Option<Duration> {
        let ms = self.leader_contact.load(Ordering::Relaxed);
        (ms > 0).then(|| self.started.elapsed().saturating_sub(Duration::from_millis(ms)))
    }

    /// Was this member removed from the cluster?
    pub fn is_removed(&self) -> bool {
        self.removed.load(Ordering::Acquire)
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }

    fn check_running(&self) -> Result<(), NodeError> {
        if self.shutting_down.load(Ordering::Acquire) {
            return Err(NodeError::Unavailable("node is shutting down".into()));
        }
        if self.removed.load(Ordering::Acquire) {
            // Unavailable, so that clients move on to another member.
            return Err(NodeError::Unavailable(format!(
                "member {} was removed from the cluster and no longer serves requests",
                self.id
            )));
        }
        Ok(())
    }

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
        let limit = self.quorum_silence_limit();
        let acked = m.last_quorum_acked.map(|t| t.elapsed())?;
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

    /// Run a leader-only operation on whichever member is leader: here, or forwarded. When there
    /// is no leader, or the leader cannot be reached before anything was sent, wait (bounded)
    /// for the next one; then `Unavailable`.
    pub async fn on_leader(&self, req: ForwardRequest, deadline: Instant) -> Result<ForwardReply, NodeError> {
        self.check_running()?;
        let give_up = (Instant::now() + self.leader_wait()).min(deadline);
        loop {
            let leader = self.current_leader();
            let result = match leader {
                Some(l) if l == self.id => self.serve(req.clone(), deadline).await,
                Some(l) => self.forward(l, &req, deadline).await,
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

    /// Serve a forwarded request on this member. Leader-only requests fail with `NotLeader` here
    /// if this member is not the leader; they are never forwarded again.
    pub async fn serve(&self, req: ForwardRequest, deadline: Instant) -> Result<ForwardReply, NodeError> {
        match req {
            ForwardRequest::Write { request, .. } => self.write_local(request, deadline).await.map(ForwardReply::Write),
            ForwardRequest::ReadIndex { .. } => self.read_index_local(deadline).await.map(ForwardReply::ReadIndex),
            ForwardRequest::SetNode { id, member } => {
                self.set_node_local(id, member).await.map(|()| ForwardReply::Done)
            }
            ForwardRequest::AddLearner { id, member } => {
                self.add_learner_local(id, member).await.map(|()| ForwardReply::Done)
            }
            ForwardRequest::Promote { id } => self.promote_local(id).await.map(|()| ForwardReply::Done),
            ForwardRequest::Remove { id, force } => self
                .remove_local(id, force, deadline)
                .await
                .map(|()| ForwardReply::Done),
            ForwardRequest::TransferLeader { to, .. } => {
                self.transfer_local(to, deadline).await.map(ForwardReply::Leader)
            }
            ForwardRequest::Ping => Ok(ForwardReply::Done),
            ForwardRequest::HoldElections { ms } => {
                self.hold_elections(Duration::from_millis(ms));
                Ok(ForwardReply::Done)
            }
            ForwardRequest::Elect => self.elect_now().await.map(|()| ForwardReply::Done),
            ForwardRequest::Removed { by } => {
                self.mark_removed(&format!("removed from the cluster by leader {by}"));
                Ok(ForwardReply::Done)
            }
        }
    }

    /// Apply a write through whichever member is leader.
    pub async fn write(&self, req: Request, deadline: Instant) -> Result<Response, NodeError> {
        let fwd = ForwardRequest::Write {
            request: req,
            timeout_ms: millis_until(deadline),
        };
        match self.on_leader(fwd, deadline).await? {
            ForwardReply::Write(resp) => Ok(resp),
            other => Err(NodeError::Internal(format!("leader answered a write with {other:?}"))),
        }
    }

    /// Propose a write on this node, which must be the leader.
    ///
    /// openraft refuses a proposal (before appending it) while it hands leadership over, and
    /// while its lease has lapsed: no quorum acknowledged an RPC sent within the last election
    /// timeout, which on a saturated machine, with large entries, happens while the followers
    /// answer all along. The write then waits here and is proposed again, for as long as this
    /// member still leads with a quorum heard lately, until its deadline.
    pub async fn write_local(&self, req: Request, deadline: Instant) -> Result<Response, NodeError> {
        const PAUSE: Duration = Duration::from_millis(5);
        let started = Instant::now();
        let result = loop {
            self.check_leader_with_quorum()?;
            self.check_disk_space()?;
            match self.propose(req.clone(), deadline).await {
                Err(NodeError::NotLeader { leader: None }) if Instant::now() + PAUSE < deadline => {
                    tokio::time::sleep(PAUSE).await;
                }
                other => break other,
            }
        };
        self.metrics.proposal(result.is_ok(), started.elapsed());
        result
    }

    /// The highest applied index: the state machine's own count, or openraft's metric if that is
    /// ahead. openraft answers each write as soon as its entry is applied but reports the apply
    /// round's progress after the round, so its metric alone could lag writes clients already
    /// have answers for (a follower "at" it would not yet hold them).
    pub fn applied_index(&self, m: &RaftMetrics) -> u64 {
        self.reader.applied_index().max(m.last_applied.map_or(0, |l| l.index))
    }

    /// Refuse a write that could not commit for want of disk space (see `disk.rs`).
    fn check_disk_space(&self) -> Result<(), NodeError> {
        if !self.disk.any_alarm() {
            return Ok(());
        }
        let voters = {
            let rx = self.raft.metrics();
            let m = rx.borrow_watched();
            m.membership_config.membership().voter_ids().collect()
        };
        self.disk.check_write(&voters)
    }

    /// Hand the write to the proposer (which shares log entries among concurrent writes).
    async fn propose(&self, req: Request, deadline: Instant) -> Result<Response, NodeError> {
        match tokio::time::timeout_at(deadline.into(), self.proposer.propose(req)).await {
            Err(_) => Err(NodeError::DeadlineExceeded(
                "deadline exceeded before the write committed; it may still apply".into(),
            )),
            Ok(result) => result,
        }
    }

    /// On the leader: build a snapshot of everything applied so far and open it. Returns the
    /// snapshot's revision and the file (which stays readable if a newer snapshot replaces it).
    pub async fn fresh_snapshot(&self, deadline: Instant) -> Result<(u64, std::fs::File), NodeError> {
        self.check_leader_with_quorum()?;
        let target = self.metrics().last_applied;
        self.raft
            .trigger()
            .snapshot()
            .await
            .map_err(|e| NodeError::Internal(format!("cannot start a snapshot: {e}")))?;
        let left = deadline.saturating_duration_since(Instant::now());
        let wait = self.raft.wait(Some(left));
        match wait.metrics(|m| m.snapshot >= target, "snapshot built").await {
            Ok(_) => {}
            Err(openraft::metrics::WaitError::Timeout(..)) => {
                return Err(NodeError::DeadlineExceeded(
                    "deadline exceeded while the snapshot was being built".into(),
                ))
            }
            Err(e) => return Err(NodeError::Unavailable(format!("raft stopped: {e}"))),
        }
        let (_, file) = self
            .reader
            .current_snapshot()
            .map_err(|e| NodeError::Internal(format!("cannot open the snapshot: {e}")))?
            .ok_or_else(|| NodeError::Internal("no snapshot after building one".into()))?;
        let header = keel_storage::SnapshotReader::open(std::io::BufReader::new(
            file.try_clone().map_err(|e| NodeError::Internal(e.to_string()))?,
        ))
        .map_err(|e| NodeError::Internal(format!("the snapshot just built does not read back: {e}")))?
        .1;
        use std::io::Seek;
        let mut file = file;
        file.rewind().map_err(|e| NodeError::Internal(e.to_string()))?;
        Ok((header.revision, file))
    }

    /// Make a following local read linearizable: wait until this node has applied everything
    /// committed before the call. Concurrent reads share one read index, fetched after the last
    /// of them arrived (`coalesce.rs`); each waits for it until its own deadline.
    pub async fn read_barrier(&self, deadline: Instant) -> Result<(), NodeError> {
        let node = self.shared()?;
        let round = move |d| async move { node.fetch_read_index(d).await };
        let index = self.read_barriers.run(deadline, round).await.unwrap_or_else(|| {
            Err(NodeError::DeadlineExceeded(
                "deadline exceeded before a read index was obtained".into(),
            ))
        })?;
        let left = deadline.saturating_duration_since(Instant::now());
        self.raft
            .wait(Some(left))
            .applied_index_at_least(Some(index), "linearizable read")
            .await
            .map_err(|e| NodeError::DeadlineExceeded(format!("waiting to apply index {index}: {e}")))?;
        Ok(())
    }

    /// Ask the leader (maybe this node) for a read index.
    async fn fetch_read_index(&self, deadline: Instant) -> Result<u64, NodeError> {
        let fwd = ForwardRequest::ReadIndex {
            timeout_ms: millis_until(deadline),
        };
        match self.on_leader(fwd, deadline).await.map_err(NodeError::for_read)? {
            ForwardReply::ReadIndex(i) => Ok(i),
            other => Err(NodeError::Internal(format!(
                "leader answered a read index with {other:?}"
            ))),
        }
    }

    /// On the leader: confirm leadership with a quorum and return the read index. Concurrent
    /// requests (this node's reads, and the followers' forwarded ones) share confirmations.
    pub async fn read_index_local(&self, deadline: Instant) -> Result<u64, NodeError> {
        let node = self.shared()?;
        let round = move |d| async move { node.confirm_leadership(d).await };
        self.read_indexes.run(deadline, round).await.unwrap_or_else(|| {
            Err(NodeError::Unavailable(
                "no quorum confirmed leadership before the deadline".into(),
            ))
        })
    }

    /// One leadership confirmation by a quorum: a read index (ReadIndex, not a lease read). The
    /// read waits for the first quorum acknowledgement of a heartbeat or AppendEntries sent after
    /// it arrived, from whichever round brings it; a healthy but busy follower that misses one
    /// round confirms in the next. The wait is bounded by the deadline and by
    /// `quorum_silence_limit`, after which a quorum that is really gone shows in `quorum_lost`.
    async fn confirm_leadership(&self, deadline: Instant) -> Result<u64, NodeError> {
        // Stop waiting this long before the deadline, so the answer still reaches the caller.
        const MARGIN: Duration = Duration::from_millis(100);
        loop {
            self.check_leader_with_quorum()?;
            let left = deadline.saturating_duration_since(Instant::now() + MARGIN);
            if left.is_zero() {
                return Err(NodeError::Unavailable(
                    "no quorum confirmed leadership before the deadline".into(),
                ));
            }
            let wait = left.min(self.quorum_silence_limit());
            let option = LinearizerOption::new(Some(Duration::ZERO), true).with_wait_timeout(wait);
            match tokio::time::timeout_at(deadline.into(), self.raft.get_read_log_id(option)).await {
                Err(_) => {
                    return Err(NodeError::Unavailable(
                        "no quorum confirmed leadership before the deadline".into(),
                    ))
                }
                Ok(Ok((read_log_id, _))) => return Ok(read_log_id.index()),
                Ok(Err(RaftError::APIError(LinearizableReadError::ForwardToLeader(f)))) => {
                    return Err(crate::error::forwarded(f))
                }
                Ok(Err(RaftError::APIError(LinearizableReadError::QuorumNotEnough(e)))) => {
                    tracing::debug!(error = %e, "leadership not confirmed by a quorum in time; checking again");
                }
                Ok(Err(RaftError::Fatal(f))) => return Err(NodeError::Unavailable(format!("raft stopped: {f}"))),
            }
        }
    }

    /// On the leader: record a member's addresses.
    pub async fn set_node_local(&self, id: NodeId, member: Member) -> Result<(), NodeError> {
        self.check_running()?;
        let change = ChangeMembers::SetNodes(BTreeMap::from([(id, member)]));
        match crate::membership::change_patiently(self, || self.raft.change_membership(change.clone(), true)).await {
            Ok(_) => Ok(()),
            Err(e) => Err(crate::membership::change_error(e)),
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

    /// Keep this node's advertised addresses in the membership up to date (etcd "publishes" its
    /// client URLs the same way): the initial membership knows only peer addresses, and a restart
    /// may change them. Runs until the node stops.
    pub async fn publish_addresses(self: Arc<Self>) {
        let mut metrics = self.raft.metrics();
        loop {
            let (published, leader) = {
                let m = metrics.borrow_and_update();
                (
                    m.membership_config.membership().get_node(&self.id).cloned(),
                    m.current_leader,
                )
            };
            let stale = published.as_ref().is_some_and(|p| *p != self.advertise);
            if let (true, Some(_)) = (stale, leader) {
                let req = ForwardRequest::SetNode {
                    id: self.id,
                    member: self.advertise.clone(),
                };
                let result = self
                    .on_leader(req, Instant::now() + Duration::from_secs(5))
                    .await
                    .map(|_| ());
                match result {
                    Ok(()) => tracing::info!(member = %self.advertise, "published this node's addresses"),
                    Err(e) => {
                        tracing::debug!(error = %e, "publishing addresses failed; will retry");
                        // Usually another membership change (the initial one, or another
                        // member's publish) is in progress: it commits within a heartbeat or two.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                }
            }
            if metrics.changed().await.is_err() {
                return;
            }
        }
    }
}

fn millis_until(deadline: Instant) -> u64 {
    deadline.saturating_duration_since(Instant::now()).as_millis() as u64
}
