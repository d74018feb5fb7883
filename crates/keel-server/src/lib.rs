//! # keel-server: one keel node
//!
//! A node runs an openraft instance over keel-storage and serves two gRPC ports:
//! - the **peer** port, for other members only: Raft's append-entries, votes and snapshot
//!   streams, plus `Forward`, which carries leader-only work from followers ([`peer`]);
//! - the **client** port: the KV and Cluster services, grpc.health.v1 and server reflection
//!   ([`service`]), and etcd's v3 API over the same core ([`etcd`]).
//!
//! The rooms, from the client port down: [`service`] converts and validates requests; [`node`]
//! is the hub they share, with [`node::leader`] for leadership checks, response headers and
//! running leader-only work on the leader; [`write`](mod@write) and [`read`](mod@read) are the two request paths;
//! [`membership`] changes members and hands leadership over; [`raft`] is the Raft type and its
//! start-up; [`peer`] carries Raft's RPCs and forwarded work between members; [`disk`],
//! [`metrics`], [`backup`] and `health` watch and report; [`server`] starts and stops it all.
//!
//! A put on the leader, top to bottom: `service/kv.rs` validates and converts it;
//! [`node::Node::write`] (`write/mod.rs`) finds this node leading and checks leadership, quorum
//! and disk space; [`write::proposer`] proposes it with `client_write`, in one log entry with the
//! other writes waiting at that moment; keel-storage's log store appends the entry (synced to
//! disk), openraft replicates it, and the call returns once keel-storage's state machine has
//! applied it; the response goes back with a header (cluster id, member id, revision, term,
//! leader) and a `keel-leader` hint. On a follower, `Node::write` sends the same request to the
//! leader over the peer service, whose `Forward` handler runs the leader's write path.
//!
//! ## Implementation caveats
//! - Linearizable reads ask the leader for a read index; there is no leader lease, so reads cost
//!   a round trip to the leader and a quorum check, shared by the reads that arrive meanwhile
//!   ([`read::coalesce`]).
//! - Members publish their own client addresses into the membership after they start; until
//!   that has happened the leader hint and `member list` show an empty client address.
//! - A leader that lost its quorum keeps its role until a new leader is elected elsewhere; it
//!   refuses new requests once it has not heard from a majority for two election timeouts.

pub mod auth;
pub mod backup;
pub mod config;
pub mod convert;
pub mod disk;
pub mod error;
pub mod etcd;
pub mod forward;
mod health;
mod http;
pub mod lease;
pub mod membership;
pub mod metrics;
pub mod node;
pub mod peer;
pub mod raft;
pub mod read;
pub mod server;
pub mod service;
pub mod streams;
pub mod tls;
pub mod write;

pub use config::Config;
pub use server::{start, Listeners, NodeHandle, ServerError};
