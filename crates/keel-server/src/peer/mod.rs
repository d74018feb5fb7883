//! The Raft peer network: [`client`] is how this node calls its peers, [`service`] is what they
//! call on it.

pub mod client;
pub mod service;

use crate::identity::ClusterId;

/// Peer request metadata carrying the sender's cluster id.
pub const CLUSTER_HEADER: &str = "keel-cluster-id";

/// Add this node's cluster id (if it knows it) to a peer request.
pub fn tag<T>(req: &mut tonic::Request<T>, cluster: &ClusterId) {
    let id = cluster.get();
    if let Ok(v) = tonic::metadata::MetadataValue::try_from(id.as_str()) {
        if !id.is_empty() {
            req.metadata_mut().insert(CLUSTER_HEADER, v);
        }
    }
}
