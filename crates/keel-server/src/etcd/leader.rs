//! etcd's "require leader" contract: a request whose metadata carries `hasleader: true` (the Go
//! client's `WithRequireLeader`, which Kubernetes puts on every watch) is refused with "etcdserver:
//! no leader" by a member that has no leader, and such a Watch or LeaseKeepAlive stream is ended
//! with that error once its member has gone without a leader for a while. Without it, a client
//! of a member cut off from the others would wait on a silent watch forever.
//!
//! "Has a leader" is keel's readiness view rather than openraft's `current_leader`: a member cut
//! off from the others keeps naming its old leader (Pre-Vote never changes its vote), so a
//! follower also needs word from that leader lately, and a leader a quorum heard lately.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use openraft::async_runtime::WatchReceiver;
use openraft::ServerState;
use tonic::metadata::MetadataMap;
use tonic::{Code, Status};

use super::error;
use crate::node::Node;

/// The metadata key and value etcd's clients send to require a leader.
const KEY: &str = "hasleader";
const VALUE: &str = "true";

/// How many checks in a row (one per election timeout) must find no leader before a stream that
/// requires one is ended: an election in progress is not a lost leader (etcd waits three too).
const CHECKS: u32 = 3;

/// Does the request ask to be refused without a leader?
pub fn required(metadata: &MetadataMap) -> bool {
    metadata.get(KEY).is_some_and(|v| v.as_bytes() == VALUE.as_bytes())
}

/// Is this member following (or being) a leader it has heard from (or a quorum has heard) lately?
pub fn has_leader(node: &Node) -> bool {
    let rx = node.raft.metrics();
    let m = rx.borrow_watched();
    match m.state {
        ServerState::Leader => node.quorum_unheard(&m).is_none(),
        ServerState::Follower | ServerState::Learner => {
            m.current_leader.is_some()
                && node
                    .since_leader_contact()
                    .is_some_and(|d| d <= node.election_timeout_max * 2)
        }
        ServerState::Candidate | ServerState::Shutdown => false,
    }
}

fn no_leader() -> Status {
    error::status(Code::Unavailable, error::NO_LEADER)
}

/// The interceptor in front of every etcd service: refuses a request that requires a leader when
/// this member has none (for a stream: when it opens).
#[derive(Clone)]
pub struct RequireLeader {
    pub node: Arc<Node>,
}

impl tonic::service::Interceptor for RequireLeader {
    fn call(&mut self, req: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        match required(req.metadata()) && !has_leader(&self.node) {
            true => Err(no_leader()),
            false => Ok(req),
        }
    }
}

/// Resolves once `node` has had no leader for [`CHECKS`] checks in a row.
async fn leader_lost(node: Arc<Node>) {
    let every = node.election_timeout_max.max(Duration::from_millis(50));
    let mut missing = 0;
    while missing < CHECKS {
        tokio::time::sleep(every).await;
        missing = match has_leader(&node) {
            true => 0,
            false => missing + 1,
        };
    }
}

/// `stream`, ended by "etcdserver: no leader" once its member has lost its leader, if the request
/// that opened it required a leader; else `stream` as it is.
pub fn end_without_leader<T, S>(
    node: Arc<Node>,
    metadata: &MetadataMap,
    stream: S,
) -> std::pin::Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>
where
    T: Send + 'static,
    S: Stream<Item = Result<T, Status>> + Send + 'static,
{
    if !required(metadata) {
        return Box::pin(stream);
    }
    let lost = Arc::new(AtomicBool::new(false));
    let watch = {
        let lost = lost.clone();
        async move {
            leader_lost(node).await;
            lost.store(true, Ordering::Release);
        }
    };
    let last = futures::stream::once(async move { lost.load(Ordering::Acquire) })
        .filter_map(|lost| std::future::ready(lost.then(|| Err(no_leader()))));
    Box::pin(stream.take_until(watch).chain(last))
}
