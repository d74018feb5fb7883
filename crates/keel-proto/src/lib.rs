//! keel's gRPC API: code generated from `proto/keel/v1`, and the conversions between those
//! messages and keel-storage's types (in [`convert`]).
//!
//! - [`v1`]: the client API (KV, Cluster services).
//! - [`raft`]: the peer service; its messages carry openraft's own types, encoded with
//!   `keel_storage::codec` (a format byte, then postcard).

#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("keel.v1");
}

#[allow(clippy::all, missing_docs)]
pub mod raft {
    tonic::include_proto!("keel.raft.v1");
}

pub mod convert;

/// Encoded descriptors of every keel service, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("keel_descriptor");
