//! The plain types that snapshot files and data directories hold: members, key-value pairs, and
//! the Raft position a snapshot was taken at.
//!
//! The Raft position is keel's own type, not openraft's, so that the format of a backup is
//! defined here and stays put when openraft changes its types. Snapshot headers are postcard, which
//! writes a struct as its fields in order with no framing; [`RaftPosition`] therefore lays its
//! fields out exactly as the `SnapshotMeta` of openraft 0.9 and 0.10 (with the "advanced" leader
//! id, a term and a node id) did, and every snapshot file written so far reads unchanged.
//! keel-storage converts between the two and proves the layouts equal in its tests.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

/// A node id, as configured with `keel --id`.
pub type NodeId = u64;

/// What the cluster knows about a member: where its peers and its clients reach it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Address of the Raft peer service (trusted network).
    pub peer_addr: String,
    /// Address of the client service (KV, Cluster, Maintenance).
    pub client_addr: String,
}

impl Member {
    /// The members of a new cluster, known by their peer addresses only: each publishes its
    /// client address itself once a leader exists. Bootstrap and restore both start this way.
    pub fn from_peers(peers: &BTreeMap<NodeId, String>) -> BTreeMap<NodeId, Member> {
        peers
            .iter()
            .map(|(id, peer)| {
                let member = Member {
                    peer_addr: peer.clone(),
                    client_addr: String::new(),
                };
                (*id, member)
            })
            .collect()
    }
}

impl fmt::Display for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "peer={} client={}", self.peer_addr, self.client_addr)
    }
}

/// One key's live version.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyValue {
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
    /// Revision of the write that created this key (since its last deletion).
    pub create_revision: u64,
    /// Revision of the last write to this key.
    pub mod_revision: u64,
    /// Number of writes since creation; 1 after the first put.
    pub version: u64,
}

/// A Raft log position: entry `index`, written by leader `node_id` in `term`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogPosition {
    pub term: u64,
    pub node_id: NodeId,
    pub index: u64,
}

/// The Raft side of a snapshot: the last log entry it includes and the membership in force there.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RaftPosition {
    /// The last log entry the snapshot includes; `None` for a snapshot of nothing.
    pub last_log: Option<LogPosition>,
    /// The log entry that recorded the membership below.
    pub membership_log: Option<LogPosition>,
    /// The voter configurations: one set, or two during a joint change.
    pub voter_configs: Vec<BTreeSet<NodeId>>,
    /// Every member, voters and learners, with addresses.
    pub nodes: BTreeMap<NodeId, Member>,
    /// A slot kept from openraft 0.9's layout (its snapshot id). Written empty, ignored on read.
    pub reserved: String,
}

impl RaftPosition {
    /// Every voter, in any configuration.
    pub fn voters(&self) -> BTreeSet<NodeId> {
        self.voter_configs.iter().flatten().copied().collect()
    }
}
