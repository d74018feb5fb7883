//! The leader's lease duties: propose the expiry of every lease whose deadline passed, and
//! checkpoint every lease's remaining time now and then.
//!
//! A member acts only while it leads and has applied an entry of its own term: by then it has
//! applied every entry committed before it led, so its table holds every renewal it must honour
//! (and an expiry decided on an older table names an old epoch and is ignored anyway).

use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_storage::{Command, CommandResult, LeaseExpire, LeaseResult, Request};

use super::LeaseTable;
use crate::node::Node;

/// How often the leader looks for leases whose time is up: the delay an expiry may add.
pub const TICK: Duration = Duration::from_millis(100);
/// How often the leader records every lease's remaining time.
pub const CHECKPOINT_EVERY: Duration = Duration::from_secs(30);
/// Leases per checkpoint entry.
const CHECKPOINT_CHUNK: usize = 1000;
/// How long one proposal may take.
const PROPOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether `node` may act on its lease table: it leads, and has applied an entry of its term.
fn in_charge(node: &Node) -> bool {
    let m = node.metrics();
    m.current_leader == Some(node.id) && m.last_applied.is_some_and(|l| l.leader_id.term == m.current_term)
}

/// Run until the node stops (the node runs it as a background task).
pub async fn run(node: Arc<Node>, table: Arc<LeaseTable>) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_checkpoint = Instant::now();
    loop {
        tick.tick().await;
        if !in_charge(&node) {
            last_checkpoint = Instant::now();
            continue;
        }
        let now = Instant::now();
        for (id, epoch) in table.due(now) {
            let proposer = node.clone();
            // Each on its own: the proposer batches them with whatever else is waiting.
            node.spawn(async move {
                let expire = Request::new(Command::LeaseExpire(LeaseExpire { id, epoch }));
                match proposer.write(expire, Instant::now() + PROPOSE_TIMEOUT).await {
                    Ok(resp) => {
                        if let CommandResult::Lease(LeaseResult::Revoked { deleted, .. }) = resp.result {
                            proposer.metrics.lease_expiries.inc();
                            tracing::debug!(lease = id, keys = deleted, "lease expired");
                        }
                    }
                    Err(e) => {
                        tracing::debug!(lease = id, error = %e, "proposing a lease expiry failed; it is tried again")
                    }
                }
            });
        }
        if now.duration_since(last_checkpoint) >= CHECKPOINT_EVERY && !table.is_empty() {
            last_checkpoint = now;
            for chunk in table.checkpoints(now).chunks(CHECKPOINT_CHUNK) {
                let checkpoint = Request::new(Command::LeaseCheckpoint(chunk.to_vec()));
                if let Err(e) = node.write(checkpoint, Instant::now() + PROPOSE_TIMEOUT).await {
                    tracing::debug!(error = %e, "proposing a lease checkpoint failed");
                    break;
                }
            }
        }
    }
}
