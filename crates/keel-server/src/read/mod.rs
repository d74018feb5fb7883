//! The read path.
//!
//! **Linearizable reads** use the read index: the leader confirms with a quorum that it is still
//! leader (`get_read_log_id`) and names the log index the read must see; the serving node, leader
//! or follower, waits until it has applied that index and reads its local state. Followers thus
//! serve linearizable reads themselves, with one small round trip to the leader. Reads that
//! arrive together share one read index, and the leader shares one confirmation among the
//! requests that arrive together ([`coalesce`]).
//!
//! **Serializable reads** read the local state directly (`keel_storage::KvReader`).

pub mod coalesce;

use std::time::{Duration, Instant};

use openraft::errors::{LinearizableReadError, RaftError};
use openraft::LinearizerOption;

use crate::error::NodeError;
use crate::forward::{ForwardReply, ForwardRequest};
use crate::node::leader::millis_until;
use crate::node::Node;
use crate::raft::RaftMetrics;

impl Node {
    /// The highest applied index: the state machine's own count, or openraft's metric if that is
    /// ahead. openraft answers each write as soon as its entry is applied but reports the apply
    /// round's progress after the round, so its metric alone could lag writes clients already
    /// have answers for (a follower "at" it would not yet hold them).
    pub fn applied_index(&self, m: &RaftMetrics) -> u64 {
        self.reader.applied_index().max(m.last_applied.map_or(0, |l| l.index))
    }

    /// Make a following local read linearizable: wait until this node has applied everything
    /// committed before the call. Concurrent reads share one read index, fetched after the last
    /// of them arrived (`read/coalesce.rs`); each waits for it until its own deadline.
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
        let remote = || ForwardRequest::ReadIndex {
            timeout_ms: millis_until(deadline),
        };
        self.on_leader(
            deadline,
            || self.read_index_local(deadline),
            remote,
            ForwardReply::into_read_index,
        )
        .await
        .map_err(NodeError::for_read)
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
}
