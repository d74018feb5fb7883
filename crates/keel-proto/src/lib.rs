//! keel's gRPC API: code generated from `proto/keel/v1`, and the few names client and server
//! share beside it ([`wire`]). The conversions to keel-storage's types live in keel-server,
//! beside the services that use them.
//!
//! - [`v1`]: the client API (KV, Cluster services).
//! - [`etcd`]: etcd's v3 API (etcdserverpb, mvccpb, authpb, v3lockpb, v3electionpb).
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

/// etcd's v3 API, as keel serves it beside [`v1`] (see keel-server's `etcd` module). The
/// modules keep etcd's package names, which are on the wire in method paths.
pub mod etcd {
    #[allow(clippy::all, missing_docs)]
    pub mod mvccpb {
        tonic::include_proto!("mvccpb");
    }
    #[allow(clippy::all, missing_docs)]
    pub mod authpb {
        tonic::include_proto!("authpb");
    }
    #[allow(clippy::all, missing_docs)]
    pub mod etcdserverpb {
        tonic::include_proto!("etcdserverpb");
    }
    #[allow(clippy::all, missing_docs)]
    pub mod v3lockpb {
        tonic::include_proto!("v3lockpb");
    }
    #[allow(clippy::all, missing_docs)]
    pub mod v3electionpb {
        tonic::include_proto!("v3electionpb");
    }

    /// Encoded descriptors of etcd's services, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("etcd_descriptor");
}

pub mod wire;

/// Encoded descriptors of every keel service, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("keel_descriptor");
