//! # keel-datadir: the files keel keeps beside its database
//!
//! A keel data directory holds a sled database (keel-storage) and a few files that must be read
//! and written without it: by `keelctl`, which links neither Raft nor the database, and by the
//! node before it opens either. This crate owns those files, so each is written one way:
//!
//! - [`snapshot_file`]: the snapshot format, which is what Raft ships to lagging followers and
//!   what backups are made of. Streaming reader and writer, CRC per block, SHA-256 over the file.
//!   Its header's Raft position is keel's own type ([`RaftPosition`]), so a backup's format does
//!   not follow openraft's types around.
//! - [`identity`]: `keel.id` (which node and cluster a directory belongs to, and a bootstrap still
//!   pending), `--initial-cluster` parsing, the cluster id, and the `REMOVED` marker.
//! - [`restore`]: verifying a backup, and staging a restored member (`keelctl snapshot restore`)
//!   for its node to finish at its first start.
//! - [`fs`]: creating and renaming so that the names survive a power cut.
//!
//! ## Layout of a data directory
//! ```text
//! <data-dir>/keel.id            identity (JSON), written atomically at the first start
//! <data-dir>/REMOVED            present once the member was removed from its cluster
//! <data-dir>/restore/           a staged restore, until the node's first start finishes it
//! <data-dir>/db/                the sled database (keel-storage)
//! <data-dir>/snapshots/         the newest snapshot file (keel-storage)
//! ```
//!
//! ## Implementation caveats
//! - Files written before keel-datadir existed read unchanged: the snapshot header's layout is
//!   byte-for-byte what openraft's types produced (keel-storage's tests hold it to that).
//! - A staged restore copies the whole snapshot file into the data directory, so it needs the
//!   file's size in free space twice over until the node's first start has built the database.

pub mod fs;
pub mod identity;
pub mod restore;
pub mod snapshot_file;
mod types;

pub use snapshot_file::{
    SnapshotError, SnapshotHeader, SnapshotLease, SnapshotReader, SnapshotRecord, SnapshotSession, SnapshotWriter, Tee,
    SNAPSHOT_FORMAT,
};
pub use types::{KeyValue, LogPosition, Member, NodeId, RaftPosition};
