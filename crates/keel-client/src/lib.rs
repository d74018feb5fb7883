//! A Rust client for keel.
//!
//! ```no_run
//! # async fn demo() -> Result<(), keel_client::Error> {
//! use keel_client::{Client, ClientConfig};
//!
//! let endpoints = vec!["127.0.0.1:7001".to_string(), "127.0.0.1:7002".to_string()];
//! let client = Client::connect(endpoints, ClientConfig::default()).await?;
//! client.put("greeting", "hello").await?;
//! let kv = client.get("greeting").await?;
//! assert_eq!(kv.map(|kv| kv.value), Some(b"hello".to_vec()));
//! # Ok(())
//! # }
//! ```
//!
//! # Endpoints and the leader
//! The client keeps one lazily connected channel per endpoint for its whole life. Every server
//! names the leader (in the response header and in the `keel-leader` response metadata, on errors
//! too); the client sends later requests there first. Followers forward writes and linearizable
//! reads to the leader themselves, so this only saves a hop: correctness does not depend on it.
//!
//! # Retries and deadlines
//! Each request has one deadline ([`ClientConfig::timeout`]), retries included, which is also sent
//! to the server as the gRPC timeout. Within it the client tries each endpoint in turn and then
//! backs off exponentially, with jitter, from 25 ms up to 1 s.
//!
//! | failure                                    | read        | write                          |
//! |--------------------------------------------|-------------|--------------------------------|
//! | server answered `Unavailable`              | retried     | retried (it was not applied)   |
//! | no connection could be made                | retried     | retried (it was never sent)    |
//! | `DeadlineExceeded`, `Unknown`, `Cancelled` | retried     | [`Error::OutcomeUnknown`]      |
//! | connection lost after sending, timeout     | retried     | [`Error::OutcomeUnknown`]      |
//! | any other answer (`InvalidArgument`, ...)  | returned    | returned                       |
//!
//! A write is never retried once its outcome is unknown: doing so could apply it twice. A
//! transaction whose branches only read counts as a read.

mod admin;
mod auth;
mod client;
mod config;
mod endpoint;
mod error;
mod lease;
mod lock;
mod retry;
mod watch;

pub use admin::{AuthStatus, Permission, PermissionKind};
pub use client::{Client, LEADER_METADATA_KEY};
pub use config::{ClientConfig, TlsConfig, MAX_TIMEOUT};
pub use error::Error;
/// The gRPC messages the client sends and returns.
pub use keel_proto::v1 as proto;
/// The conditions an error can name beyond its code ([`Error::Session`], [`Error::Refused`]).
pub use keel_proto::wire::Outcome;
pub use lease::{KeepAlive, LeaseState};
pub use lock::{fenced_put, Observe};
pub use watch::{Watch, WatchBatch};
