//! keel's gRPC API: code generated from `proto/keel/v1`, and the few names client and server
//! share beside it ([`wire`]). The conversions to keel-storage's types live in keel-server,
//! beside the services that use them.
//!
//! - [`v1`]: the client API (KV, Cluster services).
//! - [`raft`]: the peer service; its messages carry openraft's own types, encoded with
//!   keel-storage's codec (a format byte, then postcard).

#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("keel.v1");
}

#[allow(clippy::all, missing_docs)]
pub mod raft {
    tonic::include_proto!("keel.raft.v1");
}

pub mod wire;

/// Encoded descriptors of every keel service, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("keel_descriptor");
