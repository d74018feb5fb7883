//! Planned changes to a running cluster, run on the leader: adding, promoting and removing
//! members, handing leadership to another voter, and each member publishing its own addresses.
//!
//! Every change is checked before it is proposed, and refused with `FailedPrecondition` and a
//! message naming the reason: a duplicate id or address, promoting a learner that is far behind,
//! removing the last voter, or a removal that would leave the remaining voters without a
//! reachable majority (unless forced; reachability is probed over the peer port).
//!
//! The leader makes one change at a time (`Node::membership_turn`), from its checks to its
//! commit, hand-offs included: a voter change is two entries, and anything proposed between
//! them made openraft refuse the second.
//!
//! ## Leader transfer
//! A transfer stops proposing here (new writes and read indexes wait, server-side, for the next
//! leader), waits until the target has every entry, and then uses openraft's transfer
//! (`trigger().transfer_leader`): every voter drops its lease of this leader, and the target
//! campaigns at once with a vote request the voters grant despite a lease. Clients see a pause of
//! about one round trip and one log sync, not a lease.
//!
//! openraft keeps a transfer in force for the rest of this leader's term: it refuses writes and
//! sends no heartbeats until a new leader is elected (openraft issue 2088). So if the target has
//! not won within an election timeout (it is paused, or cut off), keel asks another voter to
//! campaign; that voter's log is as long as the target's, and no lease stands in its way.

use openraft::async_runtime::WatchReceiver;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_proto::wire::Outcome;
use keel_storage::{Member, NodeId};
use openraft::errors::{ChangeMembershipError, ClientWriteError, RaftError};
use openraft::raft::Precondition;
use openraft::ChangeMembers;

use crate::error::NodeError;
use crate::forward::{ForwardReply, ForwardRequest};
use crate::node::leader::millis_until;
use crate::node::Node;

/// A learner more than this many entries behind the leader is not promoted.
pub const PROMOTE_MAX_LAG: u64 = 100;

fn precondition(msg: impl Into<String>) -> NodeError {
    NodeError::FailedPrecondition(msg.into())
}

type ChangeError = RaftError<keel_storage::TypeConfig, ClientWriteError<keel_storage::TypeConfig>>;
type ChangeResult = Result<openraft::raft::ClientWriteResponse<keel_storage::TypeConfig>, ChangeError>;

/// Propose a membership change, waiting out what makes openraft refuse one for a moment: a
/// change not yet committed that this leader did not make (a previous leader's, which it
/// inherited), or a new leader whose first entry is not committed yet. Both pass within
/// a round trip or two: waiting a bounded while beats failing with openraft's message.
pub(crate) async fn change_patiently<F, Fut>(node: &Node, change: F) -> ChangeResult
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = ChangeResult>,
{
    let deadline = Instant::now() + 4 * node.election_timeout_max;
    loop {
        match change().await {
            Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(
                e @ (ChangeMembershipError::InProgress(_) | ChangeMembershipError::UncommittedLeaderLog(_)),
            ))) if Instant::now() < deadline => {
                tracing::debug!(%e, "membership changes must wait a moment; waiting to propose");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            other => return other,
        }
    }
}

/// How long a membership change waits for the one before it on this leader to finish.
const TURN_WAIT: Duration = Duration::from_secs(10);

impl Node {
    /// Take this leader's turn to change the membership; hold it from the checks that decide a
    /// change until the change is committed. openraft makes a voter change in two entries (a
    /// joint configuration, then the final one) and proposes the second only if the membership
    /// is still the joint one: a change proposed between them (an operator's, or a member
    /// publishing its addresses after an election) made it refuse the second step with "last
    /// membership log id mismatch", failing a change that had in fact been made. Taking turns
    /// also keeps a check (is the id new? is a majority reachable?) true until its change is
    /// proposed. The lock is fair, so no change starves, as changes retrying on their own did.
    /// Waits at most [`TURN_WAIT`], and not past `deadline`.
    pub(crate) async fn membership_turn(
        &self,
        deadline: Option<Instant>,
    ) -> Result<tokio::sync::MutexGuard<'_, ()>, NodeError> {
        let started = Instant::now();
        let until = deadline.map_or(started + TURN_WAIT, |d| d.min(started + TURN_WAIT));
        tokio::time::timeout_at(until.into(), self.membership_turn.lock())
            .await
            .map_err(|_| {
                NodeError::Unavailable(format!(
                    "another membership change was still in progress on the leader after {:?}; try again",
                    started.elapsed()
                ))
            })
    }
}

/// What a failed membership change means for the client.
pub(crate) fn change_error(e: ChangeError) -> NodeError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => crate::error::forwarded(f),
        RaftError::APIError(ClientWriteError::LogEntryDiscarded(f)) => NodeError::Unknown(format!(
            "the membership change was appended but a leader change discarded it (leader now: {:?}); \
             check the membership before repeating it",
            f.leader_id
        )),
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => precondition(e.to_string()),
        RaftError::APIError(ClientWriteError::PreconditionFailed(e)) => precondition(e.to_string()),
        RaftError::Fatal(f) => NodeError::Unavailable(format!("raft stopped: {f}")),
    }
}

/// Map the outcome of a membership change.
fn membership_result<T>(r: Result<T, ChangeError>) -> Result<(), NodeError> {
    r.map(|_| ()).map_err(change_error)
}

/// The leader's view of the membership and of each member's replication.
pub(crate) struct View {
    pub(crate) voters: BTreeSet<NodeId>,
    nodes: BTreeMap<NodeId, Member>,
    last_log: u64,
    /// Last index each member acknowledged (0 if none).
    pub(crate) matched: BTreeMap<NodeId, u64>,
    /// Members that acknowledged at least one entry.
    acked: BTreeMap<NodeId, u64>,
}

/// Clears a transfer's effects on this node however it ends.
struct TransferGuard<'a>(&'a Node);

impl Drop for TransferGuard<'_> {
    fn drop(&mut self) {
        self.0.transferring.store(false, Ordering::Release);
    }
}

impl Node {
    /// Add `id` as a learner, through whichever member leads.
    pub async fn add_learner(&self, id: NodeId, member: Member, deadline: Instant) -> Result<(), NodeError> {
        let remote = || ForwardRequest::AddLearner {
            id,
            member: member.clone(),
        };
        let local = || self.add_learner_local(id, member.clone());
        self.on_leader(deadline, local, remote, ForwardReply::into_done).await
    }

    /// Make learner `id` a voter, through whichever member leads.
    pub async fn promote(&self, id: NodeId, deadline: Instant) -> Result<(), NodeError> {
        let remote = || ForwardRequest::Promote { id };
        self.on_leader(deadline, || self.promote_local(id), remote, ForwardReply::into_done)
            .await
    }

    /// Remove member `id`, through whichever member leads.
    pub async fn remove(&self, id: NodeId, force: bool, deadline: Instant) -> Result<(), NodeError> {
        let remote = || ForwardRequest::Remove { id, force };
        let local = || self.remove_local(id, force, deadline);
        self.on_leader(deadline, local, remote, ForwardReply::into_done).await
    }

    /// Hand leadership to `to` (None: the most up-to-date other voter), through whichever member
    /// leads; returns the new leader.
    pub async fn transfer_leader(&self, to: Option<NodeId>, deadline: Instant) -> Result<NodeId, NodeError> {
        let remote = || ForwardRequest::TransferLeader {
            to,
            timeout_ms: millis_until(deadline),
        };
        let local = || self.transfer_local(to, deadline);
        self.on_leader(deadline, local, remote, ForwardReply::into_leader).await
    }

    /// Record member `id`'s addresses, through whichever member leads.
    pub(crate) async fn set_node(&self, id: NodeId, member: Member, deadline: Instant) -> Result<(), NodeError> {
        let remote = || ForwardRequest::SetNode {
            id,
            member: member.clone(),
        };
        let local = || self.set_node_local(id, member.clone());
        self.on_leader(deadline, local, remote, ForwardReply::into_done).await
    }

    pub(crate) fn view(&self) -> View {
        let m = self.metrics();
        let membership = m.membership_config.membership();
        let last_log = m.last_log_index.unwrap_or(0);
        let mut acked: BTreeMap<NodeId, u64> = m
            .replication
            .as_ref()
            .map(|r| r.iter().filter_map(|(id, l)| Some((*id, l.as_ref()?.index))).collect())
            .unwrap_or_default();
        acked.insert(self.id, last_log);
        let matched: BTreeMap<NodeId, u64> = membership
            .nodes()
            .map(|(id, _)| (*id, acked.get(id).copied().unwrap_or(0)))
            .collect();
        View {
            voters: membership.voter_ids().collect(),
            nodes: membership.nodes().map(|(id, n)| (*id, n.clone())).collect(),
            last_log,
            matched,
            acked,
        }
    }

    /// Add `id` as a learner; it then receives the log or a snapshot.
    pub(crate) async fn add_learner_local(&self, id: NodeId, member: Member) -> Result<(), NodeError> {
        let _turn = self.membership_turn(None).await?;
        self.check_leader_with_quorum()?;
        if id == 0 {
            return Err(NodeError::InvalidArgument("member ids start at 1".into()));
        }
        if member.peer_addr.is_empty() {
            return Err(NodeError::InvalidArgument("a new member needs a peer address".into()));
        }
        let view = self.view();
        if view.nodes.contains_key(&id) {
            return Err(NodeError::refused(
                Outcome::MemberExists,
                format!("member {id} already exists"),
            ));
        }
        for (other, n) in &view.nodes {
            if n.peer_addr == member.peer_addr {
                return Err(precondition(format!(
                    "peer address {} is already member {other}'s",
                    member.peer_addr
                )));
            }
            if !member.client_addr.is_empty() && n.client_addr == member.client_addr {
                return Err(precondition(format!(
                    "client address {} is already member {other}'s",
                    member.client_addr
                )));
            }
        }
        membership_result(change_patiently(self, || self.raft.add_learner(id, member.clone(), false)).await)
    }

    /// Make the learner `id` a voter, if it has caught up.
    pub(crate) async fn promote_local(&self, id: NodeId) -> Result<(), NodeError> {
        let _turn = self.membership_turn(None).await?;
        self.check_leader_with_quorum()?;
        let view = self.view();
        if !view.nodes.contains_key(&id) {
            return Err(precondition(format!("there is no member {id}")));
        }
        if view.voters.contains(&id) {
            return Ok(());
        }
        // A learner that has acknowledged nothing (unreachable, or a member of another cluster
        // refusing our messages) is never promoted, however short the log.
        let Some(matched) = view.acked.get(&id).copied() else {
            return Err(NodeError::refused(
                Outcome::LearnerCatchingUp,
                format!("learner {id} has not acknowledged any entries yet; is it running, and is it this cluster's?"),
            ));
        };
        let lag = view.last_log.saturating_sub(matched);
        if lag > PROMOTE_MAX_LAG {
            return Err(NodeError::refused(
                Outcome::LearnerCatchingUp,
                format!("learner {id} is {lag} entries behind the leader; promote it once it has caught up"),
            ));
        }
        membership_result(
            change_patiently(self, || {
                self.raft
                    .change_membership(ChangeMembers::AddVoterIds([id].into()), false)
            })
            .await,
        )
    }

    /// Remove member `id`.
    pub(crate) async fn remove_local(&self, id: NodeId, force: bool, deadline: Instant) -> Result<(), NodeError> {
        let turn = self.membership_turn(Some(deadline)).await?;
        self.check_leader_with_quorum()?;
        let view = self.view();
        if !view.nodes.contains_key(&id) {
            return Err(precondition(format!("there is no member {id}")));
        }
        let addr = view.nodes.get(&id).map(|n| n.peer_addr.clone()).unwrap_or_default();
        if !view.voters.contains(&id) {
            let change = ChangeMembers::RemoveNodes([id].into());
            membership_result(change_patiently(self, || self.raft.change_membership(change.clone(), false)).await)?;
            drop(turn);
            self.tell_removed(id, &addr, deadline).await;
            return Ok(());
        }
        let remaining: Vec<NodeId> = view.voters.iter().copied().filter(|v| *v != id).collect();
        if remaining.is_empty() {
            return Err(precondition(format!(
                "member {id} is the last voter; the cluster cannot lose it"
            )));
        }
        if !force {
            let probe_deadline = (Instant::now() + Duration::from_secs(1)).min(deadline);
            let mut reachable = 0;
            for v in &remaining {
                if *v == self.id || self.forward(*v, &ForwardRequest::Ping, probe_deadline).await.is_ok() {
                    reachable += 1;
                }
            }
            if reachable * 2 <= remaining.len() {
                return Err(precondition(format!(
                    "removing member {id} would leave {reachable} of {} remaining voters reachable, not a majority \
                     (use --force to remove it anyway)",
                    remaining.len()
                )));
            }
        }
        let change = ChangeMembers::RemoveVoters([id].into());
        membership_result(change_patiently(self, || self.raft.change_membership(change.clone(), false)).await)?;
        drop(turn);
        self.tell_removed(id, &addr, deadline).await;
        Ok(())
    }

    /// The removed member may never receive the configuration without it (replication to it
    /// stops): tell it directly. Best effort: a member that is down is not told; if it comes back
    /// it may campaign with its stale configuration, and members refuse its votes while they hear
    /// from their leader (openraft's leader lease). Do not restart a removed member.
    async fn tell_removed(&self, id: NodeId, addr: &str, deadline: Instant) {
        if id == self.id {
            self.mark_removed("removed itself from the cluster");
        } else if let Err(e) = self
            .forward_to_addr(id, addr, &ForwardRequest::Removed { by: self.id }, deadline)
            .await
        {
            tracing::warn!(member = id, error = %e, "could not tell the removed member");
        }
    }

    /// This member is no longer part of the cluster: stop serving, stop campaigning, and leave a
    /// marker so that a restart with this data directory is refused instead of rejoining with a
    /// stale configuration.
    pub(crate) fn mark_removed(&self, why: &str) {
        if self.removed.swap(true, Ordering::AcqRel) {
            return;
        }
        tracing::error!(id = self.id, why, "this member no longer serves requests");
        // Under the hold's lock, so that a hold running out right now cannot turn elections
        // back on after this.
        let mut hold = self.election_hold.lock().unwrap_or_else(|e| e.into_inner());
        *hold = None;
        self.raft.runtime_config().elect(false);
        drop(hold);
        if let Err(e) = keel_datadir::identity::mark_removed(&self.data_dir, &format!("member {} {why}\n", self.id)) {
            tracing::warn!(error = %e, dir = %self.data_dir.display(), "could not write the removal marker");
        }
    }

    /// Hand leadership to `to` (None: the most up-to-date other voter). Returns the new leader.
    pub(crate) async fn transfer_local(&self, to: Option<NodeId>, deadline: Instant) -> Result<NodeId, NodeError> {
        // A hand-off between the two steps of a voter change would leave the joint configuration.
        let _turn = self.membership_turn(Some(deadline)).await?;
        self.check_leader_with_quorum()?;
        let view = self.view();
        let target = match to {
            Some(t) if t == self.id => return Ok(self.id),
            Some(t) if view.voters.contains(&t) => t,
            Some(t) => return Err(precondition(format!("member {t} is not a voter"))),
            None => view
                .voters
                .iter()
                .copied()
                .filter(|v| *v != self.id)
                .max_by_key(|v| view.matched.get(v).copied().unwrap_or(0))
                .ok_or_else(|| precondition("there is no other voter to hand leadership to"))?,
        };
        self.transferring.store(true, Ordering::Release);
        let _guard = TransferGuard(self);
        // In-flight writes finish; new ones wait. Wait until the target has everything, but not
        // for long: a target that does not catch up within a few round trips is stopped or cut
        // off, and the writes waiting here would wait for it.
        let catch_up = (Instant::now() + (self.election_timeout_max * 4).max(Duration::from_secs(1))).min(deadline);
        loop {
            let view = self.view();
            if self.current_leader() != Some(self.id) {
                return Err(NodeError::NotLeader { leader: None });
            }
            if view.matched.get(&target).copied().unwrap_or(0) >= view.last_log {
                break;
            }
            if Instant::now() >= catch_up {
                return Err(NodeError::Unavailable(format!(
                    "member {target} did not catch up with the leader in time; leadership stays with member {}",
                    self.id
                )));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        self.raft
            .trigger()
            .transfer_leader(target)
            .await
            .map_err(|f| NodeError::Unavailable(format!("raft stopped: {f}")))?;
        let changed = |m: &crate::raft::RaftMetrics| m.current_leader.is_some() && m.current_leader != Some(self.id);
        // The target campaigns as soon as it has the entries it was sent: an election timeout is
        // ample. If it has not won by then, it cannot (paused, cut off, or stopped): another
        // voter campaigns instead (see the module doc).
        let first = (Instant::now() + self.election_timeout_max * 2).min(deadline);
        let left = first.saturating_duration_since(Instant::now());
        let mut won = self.raft.wait(Some(left)).metrics(changed, "leader transfer").await;
        if won.is_err() && Instant::now() < deadline {
            let others: Vec<NodeId> = view
                .voters
                .iter()
                .copied()
                .filter(|v| *v != target && *v != self.id)
                .collect();
            tracing::warn!(
                target,
                ?others,
                "transfer target did not take over; asking another voter to campaign"
            );
            for v in others {
                match self.forward(v, &ForwardRequest::Elect, deadline).await {
                    Ok(_) => break,
                    Err(e) => tracing::warn!(member = v, error = %e, "could not ask a voter to campaign"),
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            won = self.raft.wait(Some(left)).metrics(changed, "leader transfer").await;
        }
        let m = won.map_err(|e| NodeError::Unavailable(format!("no new leader after the transfer: {e}")))?;
        let leader = m.current_leader.unwrap_or(target);
        if leader == target {
            tracing::info!(from = self.id, to = leader, "leadership transferred");
        } else {
            tracing::warn!(
                from = self.id,
                to = leader,
                target,
                "leadership went to another member than the target"
            );
        }
        Ok(leader)
    }

    /// Do not start elections for `d` (they resume by themselves afterwards, unless this member
    /// has been removed meanwhile: a removed member campaigning with its stale configuration
    /// would disrupt the cluster that removed it).
    pub(crate) fn hold_elections(&self, d: Duration) {
        // A transfer asks for three election timeouts; a peer's request for more (a stale or
        // hostile one) must not keep this member from ever campaigning.
        let until = Instant::now() + d.min(self.election_timeout_max * 10);
        {
            let mut hold = self.election_hold.lock().unwrap_or_else(|e| e.into_inner());
            let Some(end) = hold.as_mut() else {
                return;
            };
            *end = until;
            self.raft.runtime_config().elect(false);
        }
        let (raft, hold) = (self.raft.clone(), self.election_hold.clone());
        self.spawn(async move {
            tokio::time::sleep_until(until.into()).await;
            // A later hold extends this one; a removal ends elections for good. Both are decided
            // under this lock, as is this.
            let hold = hold.lock().unwrap_or_else(|e| e.into_inner());
            if matches!(*hold, Some(end) if Instant::now() >= end) {
                raft.runtime_config().elect(true);
            }
        });
    }

    /// Campaign now (the transfer target).
    pub(crate) async fn elect_now(&self) -> Result<(), NodeError> {
        {
            let hold = self.election_hold.lock().unwrap_or_else(|e| e.into_inner());
            if hold.is_none() {
                // Unavailable, like every request to a removed member.
                return Err(NodeError::Unavailable(format!(
                    "member {} was removed from the cluster and does not campaign",
                    self.id
                )));
            }
            self.raft.runtime_config().elect(true);
        }
        self.raft
            .trigger()
            .elect(false)
            .await
            .map_err(|f| NodeError::Unavailable(format!("raft stopped: {f}")))
    }

    /// Notice when this member is removed from the cluster (by a committed change): from then on
    /// it refuses requests, saying why. Runs until the node stops.
    pub async fn watch_removal(self: std::sync::Arc<Self>) {
        let mut metrics = self.raft.metrics();
        let mut watch = RemovalWatch::default();
        loop {
            let removed = watch.removed(self.id, &metrics.borrow_and_update());
            if removed {
                self.mark_removed("is not in the committed membership any more");
            }
            if metrics.changed().await.is_err() {
                return;
            }
        }
    }

    /// On the leader: record a member's addresses.
    pub(crate) async fn set_node_local(&self, id: NodeId, member: Member) -> Result<(), NodeError> {
        let _turn = self.membership_turn(None).await?;
        self.check_running()?;
        // openraft's SetNodes adds a node it does not know, as a learner: a member that read its
        // entry just before its removal committed would put itself back. So the change is made
        // only on the membership read here, from the Raft core itself (the metrics may lag it),
        // and only if the member is still in it.
        let (membership_id, published) = self
            .raft
            .with_raft_state(move |st| {
                let effective = st.membership_state.effective();
                (*effective.log_id(), effective.membership().get_node(&id).cloned())
            })
            .await
            .map_err(|f| NodeError::Unavailable(format!("raft stopped: {f}")))?;
        match published {
            None => return Err(precondition(format!("there is no member {id}"))),
            Some(published) if published == member => return Ok(()),
            Some(_) => {}
        }
        let change = ChangeMembers::SetNodes(BTreeMap::from([(id, member)]));
        let unchanged = Precondition::LastMembershipLogId {
            last_membership_log_id: membership_id,
        };
        membership_result(
            change_patiently(self, || {
                self.raft
                    .change_membership_if(change.clone(), true, [unchanged.clone()])
            })
            .await,
        )
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
                let result = self
                    .set_node(self.id, self.advertise.clone(), Instant::now() + Duration::from_secs(5))
                    .await;
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

/// Follows one member's place in the committed membership, one metrics update at a time.
///
/// openraft's metrics show the *effective* membership: the last one in the log, in force as soon
/// as it is appended, committed or not. A leader removing itself sees the configuration without
/// it at once, and the change may still be lost (the leader is cut off, and the next leader
/// truncates it); a joiner may likewise see, and then lose, an uncommitted addition. Acting on
/// those (refusing requests, writing `REMOVED`) would retire a member that is still one. The
/// effective membership is known committed once its entry is applied; until then the last
/// decision stands.
#[derive(Debug, Default)]
struct RemovalWatch {
    was_member: bool,
}

impl RemovalWatch {
    /// Is `id` no longer in the committed membership, having been in it?
    fn removed(&mut self, id: NodeId, m: &crate::raft::RaftMetrics) -> bool {
        // Indexes suffice: an applied entry is committed and never replaced.
        let config_index = m.membership_config.log_id().as_ref().map(|l| l.index);
        let applied_index = m.last_applied.as_ref().map(|l| l.index);
        if config_index > applied_index {
            return false;
        }
        let is_member = m.membership_config.membership().get_node(&id).is_some();
        if is_member {
            self.was_member = true;
        }
        !is_member && self.was_member
    }
}

#[cfg(test)]
#[path = "membership_tests.rs"]
mod tests;
