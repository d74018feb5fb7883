//! # keel-server: one keel node
//!
//! A node runs an openraft instance over keel-storage and serves two gRPC ports:
//! - the **peer** port, for other members only: Raft's append-entries, votes and snapshot
//!   streams, plus `Forward`, which carries leader-only work from followers ([`peer`]);
//! - the **client** port: the KV and Cluster services, grpc.health.v1 and server reflection
//!   ([`service`]).
//!
//! A write, top to bottom: the KV service converts and validates the request
//! (`keel_storage::validate_request`); [`node::Node::write`] proposes it if this node leads, or
//! forwards it to the leader; the leader's [`proposer`] proposes it with `client_write`, in one log
//! entry with the other writes waiting at that moment; the entry is appended to the log (synced
//! to disk), replicated, and the call returns once the state machine has applied it; the response goes
//! back with a header (cluster id, member id, revision, term, leader) and a `keel-leader` hint.
//!
//! ## Implementation caveats
//! - Linearizable reads ask the leader for a read index; there is no leader lease, so reads cost
//!   a round trip to the leader and a quorum check, shared by the reads that arrive meanwhile
//!   ([`coalesce`]).
//! - Members publish their own client addresses into the membership after they start; until
//!   that has happened the leader hint and `member list` show an empty client address.
//! - A leader that lost its quorum keeps its role until a new leader is elected elsewhere; it
//!   refuses new requests once it has not heard from a majority for two election timeouts.

pub mod backup;
pub mod coalesce;
pub mod config;
pub mod convert;
pub mod disk;
pub mod error;
pub mod forward;
mod health;
mod http;
pub mod membership;
pub mod metrics;
pub mod node;
pub mod peer;
pub mod proposer;
pub mod raft;
pub mod server;
pub mod service;

pub use config::Config;
pub use server::{start, Listeners, NodeHandle, ServerError};
