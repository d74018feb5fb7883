//! The write path. On the leader a write is handed to the [`proposer`], which proposes it with
//! `client_write` together with whatever other writes are waiting, and answers it once the
//! state machine has applied it. On a follower it is sent to the leader over the peer service
//! (`Node::on_leader`), and the leader proposes it the same way.
//!
//! A put on the leader, top to bottom: `service/kv.rs` validates and converts it,
//! [`Node::write`] finds this node leading and calls [`Node::write_local`], which checks
//! leadership, quorum and disk space and hands it to the proposer; the proposer's batch goes
//! through `Raft::client_write` to keel-storage's log store (appended and synced) and state
//! machine (applied), and the response comes back the same way.

pub mod proposer;

use std::time::{Duration, Instant};

use keel_storage::{Request, Response};
use openraft::async_runtime::WatchReceiver;

use crate::error::NodeError;
use crate::forward::{ForwardReply, ForwardRequest};
use crate::node::leader::millis_until;
use crate::node::Node;

impl Node {
    /// Apply a write through whichever member is leader, as the current request's caller's (see
    /// `crate::auth`).
    pub async fn write(&self, req: Request, deadline: Instant) -> Result<Response, NodeError> {
        let req = crate::auth::Caller::current().attach(req);
        let remote = || ForwardRequest::Write {
            request: req.clone(),
            timeout_ms: millis_until(deadline),
        };
        self.on_leader(
            deadline,
            || self.write_local(&req, deadline),
            remote,
            ForwardReply::into_write,
        )
        .await
    }

    /// Propose a write on this node, which must be the leader.
    ///
    /// openraft refuses a proposal (before appending it) while it hands leadership over, and
    /// while its lease has lapsed: no quorum acknowledged an RPC sent within the last election
    /// timeout, which on a saturated machine, with large entries, happens while the followers
    /// answer all along. The write then waits here and is proposed again, for as long as this
    /// member still leads with a quorum heard lately, until its deadline.
    pub async fn write_local(&self, req: &Request, deadline: Instant) -> Result<Response, NodeError> {
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

    /// Refuse a write that could not commit for want of disk space (see `disk/`).
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
}
