//! # keel-storage: the deterministic core of keel
//!
//! A keel node is a Raft replica of a key-value state machine. This crate is everything in that
//! sentence except the networking: the openraft type configuration ([`types`]), the one request
//! union proposed to Raft, the Raft log store ([`LogStore`]), the key-value state machine
//! ([`StateMachine`]) and its snapshots, all kept in one sled database per node.
//!
//! ## One write, top to bottom
//! 1. The server validates a [`Request`] ([`validate_request`]) and proposes it to openraft.
//! 2. openraft calls [`LogStore`]'s `append`: the entry joins the log's in-memory tail (readable
//!    at once), and the flusher thread writes it into the `raft` tree and completes it at its next
//!    group commit (sled flush, then fdatasync, see [`durability`]). Only then does openraft count
//!    this node's copy toward a quorum; meanwhile the leader already replicates it.
//! 3. Once a quorum has the entry, openraft hands it to [`StateMachine`]'s `apply`, which executes
//!    the command against the MVCC tree and writes its new versions, the revision's history
//!    record, the new revision and the applied log id as one atomic write set (one sled batch:
//!    see `sm::writes`).
//! 4. The [`Response`] (revision, per-op results) goes back to the waiting client request. If the
//!    request carries a client session ([`SessionRef`]), the response is also remembered in the
//!    same write set, and a retry of the same `(client_id, seq)` gets it back instead of
//!    applying the command twice.
//!
//! Reads go through [`KvReader`]: the live value of each key at the current revision, read
//! concurrently with apply and never half of a txn.
//!
//! ## The data model
//! Keys and values are bytes. One store-wide revision counts applied writes; each key has
//! `create_revision`, `mod_revision` and `version`, as in etcd. The state is multi-versioned:
//! every write adds a version, so a snapshot at revision R is simply "every key's newest version at
//! or below R", and it stays consistent while applies continue. History older than
//! `history_revisions` is compacted.
//!
//! ## On disk
//! `<dir>/db/` is the sled database (trees `raft`, `sm_root`, `sm.<n>`); `<dir>/snapshots/` holds
//! the newest snapshot file. Every stored value starts with a format byte; snapshot files carry
//! CRCs per block and a SHA-256. The snapshot format, the directory's identity (`keel.id`) and
//! restore staging belong to the `keel-datadir` crate, which `keelctl` uses without this one;
//! [`raft_position`] converts between openraft's snapshot metadata and the files' own, and
//! [`restore::open`] builds a restored member's database at its first start.
//!
//! ## Implementation caveats
//! - sled 0.34's own flush is not durable against power loss (sled#1452); [`durability`] explains
//!   what keel adds. Crash tests (SIGKILL) prove the ordering; they cannot prove power-loss
//!   durability, which rests on fdatasync doing its job.
//! - After a failed fsync the store refuses all further writes until the process restarts.
//! - Compaction is node-local housekeeping: it never changes what a read at a retained revision
//!   returns, but two nodes may have compacted to different points. Only the floor that etcd's
//!   Compact ([`Command::Compact`]) raises is replicated (see `sm::compact`).
//! - The whole value of every version is stored; there is no delta encoding, so a hot key with
//!   large values costs `history_revisions` copies until compaction catches up.
//! - Exactly-once writes ([`Request::session`], see [`sm::sessions`]) hold only while the client's
//!   session is remembered. Sessions are bounded (`max_sessions`, `session_ttl_entries`, counted in
//!   log entries, never wall-clock time); after expiry the state machine refuses the session's
//!   writes (`SessionExpired`) rather than risk applying one twice, except for a retry of a
//!   session's first write, which is executed again. Responses larger than 64 KiB are not
//!   remembered: a retry learns that the write was applied, not its result.

pub mod auth;
pub mod codec;
pub mod durability;
pub mod log_store;
pub mod observe;
pub mod raft_position;
pub mod restore;
pub mod sm;
mod store;
pub mod testing;
pub mod types;
pub mod validate;

pub use keel_datadir::{
    SnapshotError, SnapshotHeader, SnapshotReader, SnapshotRecord, SnapshotSession, SnapshotWriter,
};
pub use log_store::{LogReader, LogStats, LogStore};
pub use observe::Observer;
pub use sm::{
    Change, Changes, ChangesError, KvReader, LeaseEvent, LeaseInfo, ReadError, SmConfig, Snapshot, SnapshotInbox,
    StateMachine,
};
pub use store::{db_dir, open, OpenError, Store, StoreConfig};
pub use types::*;
pub use validate::{validate_forwarded, validate_key, validate_range, validate_request, InvalidRequest, Limits};
