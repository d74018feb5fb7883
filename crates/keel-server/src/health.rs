//! Readiness, and the grpc.health.v1 serving status that follows it.
//!
//! A member is ready when it can serve linearizable requests itself: it is a voter (not a
//! learner, not removed, not shutting down), it knows a leader (a leader: one that a quorum has
//! acknowledged within the last election timeout), and it has applied everything that was
//! committed when it started, so a restarted member does not serve while it replays its log.
//! A member whose disk alarm is raised (see `disk/`) is not ready either: it takes no writes.
//! `/readyz` answers with the reason when it is not; grpc.health.v1 reports SERVING or
//! NOT_SERVING for the whole server and for `keel.v1.KV`.

use openraft::async_runtime::WatchReceiver;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use keel_proto::v1::kv_server::KvServer;
use openraft::ServerState;
use tonic_health::server::HealthReporter;

use crate::node::Node;
use crate::service::kv::KvService;

/// Ok if `node` is ready to serve, else why not.
pub fn readiness(node: &Node) -> Result<(), String> {
    if node.is_shutting_down() {
        return Err("shutting down".into());
    }
    if node.removed.load(Ordering::Acquire) {
        return Err("removed from the cluster".into());
    }
    if let Some(alarm) = node.disk.alarm() {
        return Err(alarm);
    }
    // Borrowed, not cloned: this runs on every metrics change (every apply) and every scrape.
    let rx = node.raft.metrics();
    let m = rx.borrow_watched();
    match m.state {
        ServerState::Learner => return Err("a learner: not a voter yet".into()),
        ServerState::Candidate => return Err("no leader: an election is under way".into()),
        ServerState::Shutdown => return Err("raft has stopped".into()),
        ServerState::Leader => {
            if let Some(ms) = node.quorum_lost(&m) {
                return Err(format!("leader without a quorum: no majority has answered for {ms} ms"));
            }
        }
        ServerState::Follower => {
            let Some(leader) = m.current_leader else {
                return Err("no leader".into());
            };
            let limit = node.quorum_silence_limit();
            match node.since_leader_contact() {
                Some(d) if d <= limit => {}
                Some(d) => return Err(format!("no word from leader {leader} for {} ms", d.as_millis())),
                None => return Err(format!("no word from leader {leader} since this member started")),
            }
        }
    }
    let applied = m.last_applied.map_or(0, |l| l.index);
    let needed = node.log_stats.committed_at_open.load(Ordering::Relaxed);
    if applied < needed {
        return Err(format!(
            "catching up: applied {applied} of the {needed} entries committed when it started"
        ));
    }
    Ok(())
}

/// Keep the grpc.health.v1 status equal to [`readiness`] until Raft stops.
pub async fn follow_readiness(node: Arc<Node>, health: HealthReporter) {
    let mut metrics = node.raft.metrics();
    let mut last = None;
    // Readiness also changes without a metrics event (a leader's quorum acknowledgements age).
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        let ready = readiness(&node).is_ok();
        if last != Some(ready) {
            let status = if ready {
                tonic_health::ServingStatus::Serving
            } else {
                tonic_health::ServingStatus::NotServing
            };
            health.set_service_status("", status).await;
            if ready {
                health.set_serving::<KvServer<KvService>>().await;
            } else {
                health.set_not_serving::<KvServer<KvService>>().await;
            }
            last = Some(ready);
        }
        tokio::select! {
            changed = metrics.changed() => if changed.is_err() { return },
            _ = tick.tick() => {}
        }
    }
}
