//! Backups and restore: verifying a snapshot file, and seeding a new cluster's member from it.
//!
//! A backup is a snapshot file (the format of [`crate::SnapshotWriter`]): header (Raft metadata,
//! revision, creation time, cluster id), CRC-checked blocks, and a trailer with the record count
//! and a SHA-256 of everything before it. [`verify`] reads all of it.
//!
//! [`restore`] turns an empty directory into the data directory of one member of a *new* cluster.
//! Every member of the new cluster is restored from the same file with the same member list, so
//! all of them start with identical state:
//! - the state machine holds the snapshot's keys, revision and client sessions, and its applied
//!   log id is the snapshot's last log id `(T, I)`;
//! - its membership is the new member list (voters), recorded at `(T, I)`;
//! - the Raft log is empty and the vote is this member's own in term `T`.
//!
//! On start openraft sees a state machine ahead of an empty log, treats the log as purged up to
//! `I` and builds a snapshot from the state machine for followers that need one; the members
//! elect a leader in term `T + 1`, and the next write gets revision `R + 1`. The snapshot's own
//! membership (the old cluster's) is never used, and the file is not kept as the current
//! snapshot, since its header names the old members.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{self, BufReader};
use std::path::{Path, PathBuf};

use openraft::storage::RaftLogStorage;
use openraft::{Membership, StoredMembership};

use crate::{Member, NodeId, SnapshotError, SnapshotHeader, SnapshotReader, StoreConfig, Vote};

/// What [`verify`] found in a snapshot file.
#[derive(Debug, Clone)]
pub struct Verified {
    pub header: SnapshotHeader,
    /// Records (keys and client sessions).
    pub records: u64,
    pub sha256: [u8; 32],
    pub bytes: u64,
}

/// Why a restore did not happen. Nothing is left in the data directory in any of these cases,
/// except for [`RestoreError::Storage`] after the directory was created.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("{path}: {source}")]
    Snapshot { path: PathBuf, source: SnapshotError },
    #[error("{0}: the data directory is not empty; restore only into a new, empty directory")]
    NotEmpty(PathBuf),
    #[error("{0}: the snapshot holds no applied entries; there is nothing to restore")]
    EmptySnapshot(PathBuf),
    #[error("member {0} is not in the new member list")]
    NotAMember(NodeId),
    #[error("{path}: {source}")]
    Storage { path: PathBuf, source: io::Error },
}

/// Read the whole file and check its header, every block's CRC, and the trailer's record count
/// and SHA-256.
pub fn verify(path: &Path) -> Result<Verified, SnapshotError> {
    let file = File::open(path)?;
    let bytes = file.metadata()?.len();
    let (reader, header) = SnapshotReader::open(BufReader::with_capacity(256 * 1024, file))?;
    let (records, sha256, _) = reader.finish()?;
    Ok(Verified {
        header,
        records,
        sha256,
        bytes,
    })
}

/// Seed the empty directory `dir` as member `id` of a new cluster of `members`, from the
/// snapshot file `snapshot`. The file is verified completely before anything is written.
pub async fn restore(
    dir: &Path,
    snapshot: &Path,
    id: NodeId,
    members: BTreeMap<NodeId, Member>,
    config: &StoreConfig,
) -> Result<Verified, RestoreError> {
    let verified = verify(snapshot).map_err(|source| RestoreError::Snapshot {
        path: snapshot.to_path_buf(),
        source,
    })?;
    let Some(last) = verified.header.meta.last_log_id else {
        return Err(RestoreError::EmptySnapshot(snapshot.to_path_buf()));
    };
    if !members.contains_key(&id) {
        return Err(RestoreError::NotAMember(id));
    }
    let storage = |source| RestoreError::Storage {
        path: dir.to_path_buf(),
        source,
    };
    match std::fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(RestoreError::NotEmpty(dir.to_path_buf()));
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(storage(e)),
    }
    let mut store = crate::open(dir, config).map_err(|e| storage(io::Error::other(e)))?;
    let voters: BTreeSet<NodeId> = members.keys().copied().collect();
    let membership = Membership::new(vec![voters], members).map_err(|e| storage(io::Error::other(e)))?;
    let membership = StoredMembership::new(Some(last), membership);
    let file = File::open(snapshot).map_err(storage)?;
    store
        .sm
        .seed_from_snapshot(BufReader::with_capacity(256 * 1024, file), membership)
        .map_err(storage)?;
    let vote = Vote::new(last.leader_id.term, id);
    store.log.save_vote(&vote).await.map_err(storage)?;
    store.durability.sync().map_err(storage)?;
    Ok(verified)
}
