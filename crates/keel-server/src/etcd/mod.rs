//! # etcd's v3 API on keel's client port
//!
//! Every etcd client (etcdctl, the Go, Python, Java and Rust libraries and what is built on
//! them) speaks `etcdserverpb`, `v3lockpb` and `v3electionpb` over gRPC. keel serves those
//! services beside `keel.v1` on the same port and maps each onto the same core: the write path
//! (`Node::write`, forwarded to the leader from a follower), the read barrier for linearizable
//! reads, and keel's own watch, lease, lock, election, membership and backup code. Nothing here
//! keeps state of its own; a request in etcd's words becomes a request in keel's, and the answer
//! goes back in etcd's words ([`convert`], [`error`]).
//!
//! One file per service: [`kv`], [`watch`], [`lease`], [`cluster`], [`maintenance`], [`lock`]
//! (v3lock and v3election), [`auth`].
//!
//! ## Implementation caveats
//! - etcd's cluster id is a number; keel's is a string, so the header carries the first 8
//!   bytes of its SHA-256 ([`convert::cluster_number`]). Member ids are keel's.
//! - A key's `lease` field is read beside the key, not in the same read: a read that races a
//!   lease change may name the lease before or after it. `prev_kv` carries no lease (0).
//! - Range responses stop at [`kv::MAX_ETCD_RANGE_BYTES`] of pairs and set `more`; etcd sends
//!   up to its 2 GiB message limit.
//! - Watch events carry no lease in their key-values, and `fragment` is never needed: keel
//!   sends a watch's changes in responses of at most about 64 KiB of pairs (one revision's
//!   changes always in one response).
//! - `Auth` is not there yet: `AuthStatus` says disabled, `Authenticate` answers "authentication
//!   is not enabled" (which etcd's clients accept and carry on without a token), the rest are
//!   refused.

pub mod auth;
pub mod cluster;
pub mod convert;
pub mod error;
pub mod kv;
pub mod leader;
pub mod lease;
pub mod lock;
pub mod maintenance;
pub mod watch;

use std::sync::Arc;

use keel_proto::etcd::etcdserverpb as pb;

use crate::node::Node;

/// The etcd version keel reports: clients that check it want 3.4 or later (3.4 is the API
/// keel implements; see docs/etcd-v3-wire.md).
pub const ETCD_VERSION: &str = "3.4.99";

/// The header of an etcd response reflecting `revision`.
pub fn header(node: &Node, revision: u64) -> pb::ResponseHeader {
    convert::header(node.header(revision), convert::cluster_number(&node.cluster.get()))
}

/// The lease `key` is attached to now (0: none).
pub fn lease_of(node: &Node, key: &[u8]) -> u64 {
    // Without leases no key has one: skip a lookup per pair read. (The table follows what this
    // member has applied, as the read does.)
    if node.leases.is_empty() {
        return 0;
    }
    // A failed lookup reads as no lease: the pair itself was read, and is what the client asked.
    node.reader.lease_of(key).ok().flatten().unwrap_or(0)
}

/// A keel request carrying an etcd request's metadata (deadline, leader hints) and `msg`.
pub(crate) fn keel_request<T>(metadata: &tonic::metadata::MetadataMap, msg: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    *req.metadata_mut() = metadata.clone();
    req
}

/// Every etcd service over `node`, to add to the client server, each behind the interceptor of
/// etcd's `hasleader` metadata ([`leader`]).
pub struct Services {
    pub kv: Guarded<pb::kv_server::KvServer<kv::EtcdKv>>,
    pub watch: Guarded<pb::watch_server::WatchServer<watch::EtcdWatch>>,
    pub lease: Guarded<pb::lease_server::LeaseServer<lease::EtcdLease>>,
    pub cluster: Guarded<pb::cluster_server::ClusterServer<cluster::EtcdCluster>>,
    pub maintenance: Guarded<pb::maintenance_server::MaintenanceServer<maintenance::EtcdMaintenance>>,
    pub auth: Guarded<pb::auth_server::AuthServer<auth::EtcdAuth>>,
    pub lock: Guarded<keel_proto::etcd::v3lockpb::lock_server::LockServer<lock::EtcdLock>>,
    pub election: Guarded<keel_proto::etcd::v3electionpb::election_server::ElectionServer<lock::EtcdElection>>,
}

/// A service behind [`leader::RequireLeader`].
pub type Guarded<S> = tonic::service::interceptor::InterceptedService<S, leader::RequireLeader>;

impl Services {
    /// `max_request`: the largest request message accepted (as for keel's KV service).
    pub fn new(node: &Arc<Node>, max_request: usize) -> Self {
        let guard = leader::RequireLeader { node: node.clone() };
        let node = || node.clone();
        Services {
            kv: Guarded::new(
                pb::kv_server::KvServer::new(kv::EtcdKv { node: node() })
                    .max_decoding_message_size(max_request)
                    .max_encoding_message_size(usize::MAX),
                guard.clone(),
            ),
            watch: Guarded::new(
                pb::watch_server::WatchServer::new(watch::EtcdWatch { node: node() })
                    .max_encoding_message_size(usize::MAX),
                guard.clone(),
            ),
            lease: Guarded::new(
                pb::lease_server::LeaseServer::new(lease::EtcdLease::new(node())),
                guard.clone(),
            ),
            cluster: Guarded::new(
                pb::cluster_server::ClusterServer::new(cluster::EtcdCluster { node: node() }),
                guard.clone(),
            ),
            maintenance: Guarded::new(
                pb::maintenance_server::MaintenanceServer::new(maintenance::EtcdMaintenance::new(node()))
                    .max_encoding_message_size(usize::MAX),
                guard.clone(),
            ),
            auth: Guarded::new(
                pb::auth_server::AuthServer::new(auth::EtcdAuth {
                    node: node(),
                    throttle: Default::default(),
                }),
                guard.clone(),
            ),
            lock: Guarded::new(
                keel_proto::etcd::v3lockpb::lock_server::LockServer::new(lock::EtcdLock::new(node())),
                guard.clone(),
            ),
            election: Guarded::new(
                keel_proto::etcd::v3electionpb::election_server::ElectionServer::new(lock::EtcdElection::new(node())),
                guard,
            ),
        }
    }
}
