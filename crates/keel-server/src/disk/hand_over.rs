//! What a member does about its own disk alarm: read the free space on a schedule, and, as a
//! full leader, hand leadership to a voter that can still take entries (see the module above).

use std::sync::Arc;
use std::time::Duration;

use super::INTERVAL;
use crate::node::Node;

/// Read the free space every 100 ms until `node` stops. When the alarm rises on the leader,
/// hand leadership to a voter with space.
pub async fn watch(node: Arc<Node>) {
    /// A full leader whose hand-over failed (no voter with space had caught up) tries again.
    const RETRY: Duration = Duration::from_secs(2);
    let mut tick = tokio::time::interval(INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_try: Option<std::time::Instant> = None;
    while !node.is_shutting_down() {
        tick.tick().await;
        let disk = node.disk.clone();
        // statvfs can block on a stalled filesystem: not on a runtime worker.
        let _ = tokio::task::spawn_blocking(move || disk.check()).await;
        if !node.disk.is_full() {
            last_try = None;
        } else if node.is_leader() && last_try.is_none_or(|t| t.elapsed() >= RETRY) {
            last_try = Some(std::time::Instant::now());
            hand_over(&node).await;
        }
    }
}

/// Hand leadership to the most up-to-date voter whose disk is not full, if there is one.
async fn hand_over(node: &Node) {
    let view = node.view();
    let full = node.disk.full_voters(&view.voters);
    let Some(target) = view
        .voters
        .iter()
        .copied()
        .filter(|v| !full.contains(v))
        .max_by_key(|v| view.matched.get(v).copied().unwrap_or(0))
    else {
        tracing::warn!("every voter's disk is full: leadership stays here, and writes are refused");
        return;
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    match node.transfer_local(Some(target), deadline).await {
        Ok(leader) => tracing::warn!(leader, "disk full: handed leadership to member {leader}"),
        Err(e) => tracing::warn!(error = %e, "disk full: could not hand leadership over"),
    }
}
