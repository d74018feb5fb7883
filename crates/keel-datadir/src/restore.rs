//! Backups and restore, the file side: verifying a snapshot file, and staging a member of a new
//! cluster restored from one.
//!
//! A backup is a snapshot file (see [`crate::snapshot_file`]). [`verify`] reads all of it.
//!
//! [`stage`] (`keelctl snapshot restore`) turns an empty directory into the data directory of one
//! member of a *new* cluster. Every member of the new cluster is restored from the same file with
//! the same member list. Staging writes files only, into a sibling directory that is renamed
//! into place once everything in it is synced, so a failure leaves nothing behind:
//! - `keel.id`: this member of the new cluster (its id, token and cluster id, see
//!   [`crate::identity`]);
//! - `restore/snapshot`: a copy of the file, verified while it is copied;
//! - `restore/plan.json`: the member and the new cluster's members.
//!
//! The database is built by the node at its first start (keel-storage's `restore::open`): it
//! finds the [`pending`] restore, loads the snapshot into a fresh database, makes that durable and
//! only then removes `restore/` ([`PendingRestore::done`]). A start interrupted in between finds
//! the restore still pending and builds the database again from scratch. So restoring needs no
//! Raft and no database in `keelctl`, and the state a restored member starts from is exactly the
//! one its node loads and checks itself.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::identity::{cluster_id, write, Identity};
use crate::snapshot_file::{SnapshotError, SnapshotHeader, SnapshotReader, Tee};
use crate::NodeId;

/// The directory of a staged restore, inside the data directory.
pub const PENDING_DIR: &str = "restore";
const SNAPSHOT: &str = "snapshot";
const PLAN: &str = "plan.json";
const PLAN_FORMAT: u32 = 1;

/// What [`verify`] found in a snapshot file.
#[derive(Debug, Clone)]
pub struct Verified {
    pub header: SnapshotHeader,
    /// Records (keys and client sessions).
    pub records: u64,
    pub sha256: [u8; 32],
    pub bytes: u64,
}

/// Why a restore did not happen. Nothing is left in the data directory in any of these cases.
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
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: the staged restore is unreadable: {reason}")]
    BadPlan { path: PathBuf, reason: String },
}

/// Read the whole file and check its header, every block's CRC, and the trailer's record count
/// and SHA-256.
pub fn verify(path: &Path) -> Result<Verified, SnapshotError> {
    let file = File::open(path)?;
    let bytes = file.metadata()?.len();
    Ok(read_through(BufReader::with_capacity(256 * 1024, file), bytes)?.0)
}

/// Read a snapshot file of `bytes` bytes from `input` to its end, checking everything; hands
/// the input back.
fn read_through<R: Read>(input: R, bytes: u64) -> Result<(Verified, R), SnapshotError> {
    let (reader, header) = SnapshotReader::open(input)?;
    let (records, sha256, input) = reader.finish()?;
    let verified = Verified {
        header,
        records,
        sha256,
        bytes,
    };
    Ok((verified, input))
}

/// The staged plan: who this member is and who its new cluster's members are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Plan {
    format: u32,
    node_id: NodeId,
    /// Peer addresses, as given to `--initial-cluster`.
    members: BTreeMap<NodeId, String>,
}

/// Stage `dir` (absent or empty) as the data directory of member `id` of a new cluster of `peers`
/// (`--initial-cluster`, with `token`), restored from the snapshot file `snapshot`.
pub fn stage(
    dir: &Path,
    snapshot: &Path,
    id: NodeId,
    peers: &BTreeMap<NodeId, String>,
    token: &str,
) -> Result<Verified, RestoreError> {
    if !peers.contains_key(&id) {
        return Err(RestoreError::NotAMember(id));
    }
    if fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some()) {
        return Err(RestoreError::NotEmpty(dir.to_path_buf()));
    }
    let staging = PathBuf::from(format!("{}.restoring-{}", dir.display(), std::process::id()));
    let _ = fs::remove_dir_all(&staging);
    let result = stage_into(&staging, dir, snapshot, id, peers, token);
    if result.is_err() {
        let _ = fs::remove_dir_all(&staging);
    }
    result
}

fn stage_into(
    staging: &Path,
    dir: &Path,
    snapshot: &Path,
    id: NodeId,
    peers: &BTreeMap<NodeId, String>,
    token: &str,
) -> Result<Verified, RestoreError> {
    let io_at = |path: &Path| {
        let path = path.to_path_buf();
        move |source| RestoreError::Io { path, source }
    };
    let pending = staging.join(PENDING_DIR);
    fs::create_dir_all(&pending).map_err(io_at(&pending))?;
    let copy_path = pending.join(SNAPSHOT);
    let verified = copy_verified(snapshot, &copy_path)?;
    if verified.header.raft.last_log.is_none() {
        return Err(RestoreError::EmptySnapshot(snapshot.to_path_buf()));
    }
    let plan = Plan {
        format: PLAN_FORMAT,
        node_id: id,
        members: peers.clone(),
    };
    let plan_path = pending.join(PLAN);
    let json = serde_json::to_vec_pretty(&plan).map_err(|e| io_at(&plan_path)(io::Error::other(e)))?;
    write_synced(&plan_path, &json).map_err(io_at(&plan_path))?;
    crate::fs::fsync_dir(&pending).map_err(io_at(&pending))?;
    let identity = Identity::new(id, token, cluster_id(token, peers));
    write(staging, &identity).map_err(io_at(staging))?;
    if dir.exists() {
        fs::remove_dir(dir).map_err(io_at(dir))?;
    }
    fs::rename(staging, dir).map_err(io_at(dir))?;
    let parent = dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    crate::fs::fsync_dir(parent).map_err(io_at(parent))?;
    Ok(verified)
}

/// Copy `from` to `to`, verifying it completely on the way, and sync the copy.
fn copy_verified(from: &Path, to: &Path) -> Result<Verified, RestoreError> {
    let refused = |source| RestoreError::Snapshot {
        path: from.to_path_buf(),
        source,
    };
    let input = File::open(from).map_err(|e| refused(e.into()))?;
    let bytes = input.metadata().map_err(|e| refused(e.into()))?.len();
    let output = File::create(to).map_err(|source| RestoreError::Io {
        path: to.to_path_buf(),
        source,
    })?;
    let tee = Tee {
        input: BufReader::with_capacity(256 * 1024, input),
        copy: BufWriter::with_capacity(256 * 1024, output),
    };
    let (verified, tee) = read_through(tee, bytes).map_err(refused)?;
    let synced = tee
        .copy
        .into_inner()
        .map_err(|e| e.into_error())
        .and_then(|f| f.sync_all());
    synced.map_err(|source| RestoreError::Io {
        path: to.to_path_buf(),
        source,
    })?;
    Ok(verified)
}

fn write_synced(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut f = File::create(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// A restore that `keelctl snapshot restore` staged and no start has finished yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingRestore {
    /// The member this directory was staged for.
    pub node_id: NodeId,
    /// The new cluster's members, by peer address.
    pub members: BTreeMap<NodeId, String>,
    /// The staged copy of the snapshot file.
    pub snapshot: PathBuf,
    dir: PathBuf,
}

impl PendingRestore {
    /// Forget the staged restore: call once the database built from it is durable.
    pub fn done(self) -> io::Result<()> {
        fs::remove_dir_all(self.dir.join(PENDING_DIR))?;
        crate::fs::fsync_dir(&self.dir)
    }
}

/// The restore staged in the data directory `dir`, if one is waiting.
pub fn pending(dir: &Path) -> Result<Option<PendingRestore>, RestoreError> {
    let plan_path = dir.join(PENDING_DIR).join(PLAN);
    let bytes = match fs::read(&plan_path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(RestoreError::Io {
                path: plan_path,
                source,
            })
        }
    };
    let bad = |reason: String| RestoreError::BadPlan {
        path: plan_path.clone(),
        reason,
    };
    let plan: Plan = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
    if plan.format != PLAN_FORMAT {
        return Err(bad(format!("format {} is not supported", plan.format)));
    }
    if !plan.members.contains_key(&plan.node_id) {
        return Err(bad(format!("member {} is not in its own member list", plan.node_id)));
    }
    Ok(Some(PendingRestore {
        node_id: plan.node_id,
        members: plan.members,
        snapshot: dir.join(PENDING_DIR).join(SNAPSHOT),
        dir: dir.to_path_buf(),
    }))
}

#[cfg(test)]
mod tests;
