//! The Raft type and its start-up: the openraft settings keel runs with, and the first
//! membership of a new cluster.
//!
//! Everything else reaches openraft through [`Raft`]: the request paths (`write`, `read`,
//! `membership`) and the peer service, which hands Raft's RPCs to it.

use std::collections::BTreeMap;

use keel_storage::{Member, NodeId, TypeConfig};
use openraft::{ServerState, SnapshotPolicy};

use crate::config::Config;

pub type Raft = openraft::Raft<TypeConfig, keel_storage::StateMachine>;
pub type RaftMetrics = openraft::RaftMetrics<TypeConfig>;

/// openraft's settings for this node (or why they are invalid).
pub fn config(config: &Config) -> Result<openraft::Config, String> {
    openraft::Config {
        cluster_name: config.cluster_token.clone(),
        heartbeat_interval: config.heartbeat.as_millis() as u64,
        election_timeout_min: config.election_timeout.0.as_millis() as u64,
        election_timeout_max: config.election_timeout.1.as_millis() as u64,
        // Snapshots stream over one RPC; give large ones time.
        install_snapshot_timeout: 10 * 60 * 1000,
        // Entries are up to a 64 KiB batch each, and the log reader returns at most 1 MiB per
        // AppendEntries anyway (keel-storage's REPLICATION_BATCH_BYTES); this bounds the reads
        // of a new leader's first probes of its followers.
        max_payload_entries: 256,
        // A member that stalled (paused, overloaded) and missed heartbeats first asks whether it
        // could win; members that still hear from the leader say no, so it does not disrupt the
        // leader with a higher term. Peers carry the PreVote RPC (peer/client.rs).
        enable_pre_vote: Some(true),
        // A restarted leader campaigns like everyone else. openraft 0.10 lets it resume in the
        // same term by default, but its log lost whatever it had not synced when the power went
        // (the pipelined leader commits on its followers' acknowledgements before its own flush),
        // and as leader of the same term it wrote new entries under those lost entries' log ids:
        // followers kept the old ones, which matched by term and index, and applied different
        // writes (t31_power_loss: an acknowledged write missing on one member, a different one
        // in its place). A new term gives every new entry a log id no one has seen.
        enable_leader_restore: Some(false),
        snapshot_policy: SnapshotPolicy::LogsSinceLast(config.snapshot_logs),
        max_in_snapshot_log_to_keep: 1000,
        ..Default::default()
    }
    .validate()
    .map_err(|e| e.to_string())
}

/// Propose the initial membership of a new cluster (peer addresses only). Every initial member
/// proposes the same one; their index-0 entries differ only in the log id's node (openraft 0.10
/// names the member that wrote it), and the first leader's replaces the others'. Each member then
/// publishes its client address itself (`membership.rs`). The error is openraft's.
pub async fn initialize(raft: &Raft, members: &BTreeMap<NodeId, String>, cluster_id: &str) -> Result<(), String> {
    match raft.initialize(Member::from_peers(members)).await {
        Ok(()) => tracing::info!(%cluster_id, "initialized a new cluster"),
        Err(openraft::errors::RaftError::APIError(openraft::errors::InitializeError::NotAllowed(e))) => {
            tracing::info!(reason = %e, "cluster already initialized")
        }
        Err(e) => return Err(e.to_string()),
    }
    Ok(())
}

/// A short name for a server state, as shown by `keelctl status`.
pub fn role_name(m: &RaftMetrics) -> &'static str {
    match m.state {
        ServerState::Leader => "leader",
        ServerState::Follower => "follower",
        ServerState::Candidate => "candidate",
        ServerState::Learner => "learner",
        ServerState::Shutdown => "shutdown",
    }
}
