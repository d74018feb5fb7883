//! The Raft peer network: [`client`] is how this node calls its peers, [`service`] is what they
//! call on it.
//!
//! Every peer request and every reply carries the sender's cluster id and its peer protocol
//! ([`PEER_PROTOCOL`]) as gRPC metadata. Members that speak different protocols refuse each other
//! with one line naming both, instead of failing to decode each other's messages.

pub mod client;
pub mod service;

use std::sync::atomic::{AtomicU64, Ordering};

use keel_datadir::identity::ClusterId;

/// Peer request metadata carrying the sender's cluster id.
pub const CLUSTER_HEADER: &str = "keel-cluster-id";

/// Peer request and reply metadata naming the sender's peer protocol.
pub const PROTOCOL_HEADER: &str = "keel-peer-protocol";

/// The peer protocol this build speaks.
/// - 1: keel before the openraft 0.10 port (openraft 0.9). It sent no protocol header.
/// - 2: openraft 0.10 messages (its vote request has a field more), PreVote and TransferLeader.
pub const PEER_PROTOCOL: u32 = 2;

/// The peer protocol named in `metadata`: 1 where there is none (a build before the header).
pub fn protocol_of(metadata: &tonic::metadata::MetadataMap) -> u32 {
    metadata
        .get(PROTOCOL_HEADER)
        .and_then(|v| v.to_str().ok())
        .map_or(1, |v| v.parse().unwrap_or(0))
}

/// The message for a peer that speaks another protocol.
pub fn protocol_mismatch(theirs: u32) -> String {
    let describe = |p: u32| match p {
        1 => "peer protocol 1 (keel before the openraft 0.10 port)".to_string(),
        2 => "peer protocol 2 (keel on openraft 0.10)".to_string(),
        n => format!("peer protocol {n} (unknown to this build)"),
    };
    format!(
        "peer protocol mismatch: this member runs keel {} with {}, the other member speaks {}; \
         members of one cluster must speak one protocol: stop every member, then start them all \
         on the new release (README, \"Upgrades\")",
        env!("CARGO_PKG_VERSION"),
        describe(PEER_PROTOCOL),
        describe(theirs)
    )
}

/// Log a protocol mismatch at most once every ten seconds: it repeats on every heartbeat.
pub fn warn_protocol_mismatch(peer: &str, theirs: u32) {
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let last = LAST.load(Ordering::Relaxed);
    if now >= last + 10
        && LAST
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        tracing::error!(peer, "{}", protocol_mismatch(theirs));
    }
}

/// Add this node's cluster id (if it knows it) and its peer protocol to a peer request.
pub fn tag<T>(req: &mut tonic::Request<T>, cluster: &ClusterId) {
    let id = cluster.get();
    if let Ok(v) = tonic::metadata::MetadataValue::try_from(id.as_str()) {
        if !id.is_empty() {
            req.metadata_mut().insert(CLUSTER_HEADER, v);
        }
    }
    tag_protocol(req.metadata_mut());
}

/// Name this build's peer protocol in `metadata` (of a request or a reply).
pub fn tag_protocol(metadata: &mut tonic::metadata::MetadataMap) {
    metadata.insert(PROTOCOL_HEADER, tonic::metadata::MetadataValue::from(PEER_PROTOCOL));
}
