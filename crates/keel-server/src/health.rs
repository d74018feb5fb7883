//! grpc.health.v1 serving status that follows the node's state: SERVING while the node is a voter
//! (leader or follower) that knows a leader, NOT_SERVING otherwise (no leader, candidate, learner,
//! shutting down).

use std::sync::Arc;

use keel_proto::v1::kv_server::KvServer;
use openraft::ServerState;
use tonic_health::server::HealthReporter;

use crate::node::Node;
use crate::service::kv::KvService;

pub async fn follow_readiness(node: Arc<Node>, health: HealthReporter) {
    let mut metrics = node.raft.metrics();
    let mut last = None;
    loop {
        let ready = {
            let m = metrics.borrow_and_update();
            m.current_leader.is_some()
                && matches!(m.state, ServerState::Leader | ServerState::Follower)
                && !node.removed.load(std::sync::atomic::Ordering::Acquire)
        };
        if last != Some(ready) {
            if ready {
                health.set_serving::<KvServer<KvService>>().await;
                health
                    .set_service_status("", tonic_health::ServingStatus::Serving)
                    .await;
            } else {
                health.set_not_serving::<KvServer<KvService>>().await;
                health
                    .set_service_status("", tonic_health::ServingStatus::NotServing)
                    .await;
            }
            last = Some(ready);
        }
        if metrics.changed().await.is_err() {
            return;
        }
    }
}
