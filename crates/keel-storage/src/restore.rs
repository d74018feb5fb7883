//! Restore, the database side: a member that `keelctl snapshot restore` staged (see
//! `keel_datadir::restore`) gets its database when its node first opens the data directory.
//!
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
//!
//! [`open`] finishes a staged restore in steps that can each be repeated: load the snapshot into
//! the state machine (skipped if an interrupted start already switched to it), save the vote,
//! sync, and only then remove the staged files. The load itself switches generations only after
//! the whole file has been read and verified (see `sm::snapshot`), so a kill at any point leaves
//! either the staged restore to do again or a finished one.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{self, BufReader};
use std::path::{Path, PathBuf};

use openraft::storage::{RaftLogStorage, RaftStateMachine};
use openraft::StoredMembership;

use keel_datadir::restore::PendingRestore;
pub use keel_datadir::restore::{verify, Verified};

use crate::types::{Member, Membership, Vote};
use crate::{OpenError, Store, StoreConfig};

/// Why a data directory with a staged restore could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error(transparent)]
    Staged(#[from] keel_datadir::restore::RestoreError),
    #[error(transparent)]
    Open(#[from] OpenError),
    #[error("{path}: restoring from the staged snapshot: {source}")]
    Load { path: PathBuf, source: io::Error },
}

/// Open the store in `dir` (see [`crate::open`]), first building it from the restore staged
/// there, if one waits.
pub async fn open(dir: &Path, config: &StoreConfig) -> Result<Store, RestoreError> {
    let pending = keel_datadir::restore::pending(dir)?;
    let mut store = crate::open(dir, config)?;
    if let Some(pending) = pending {
        let (path, node) = (pending.snapshot.clone(), pending.node_id);
        let load = |source| RestoreError::Load {
            path: path.clone(),
            source,
        };
        finish(&mut store, &pending).await.map_err(load)?;
        pending.done().map_err(load)?;
        tracing::info!(node, "restored from the staged snapshot");
    }
    Ok(store)
}

async fn finish(store: &mut Store, pending: &PendingRestore) -> io::Result<()> {
    let (_, meta) = crate::sm::read_snapshot_header(&pending.snapshot).map_err(io::Error::other)?;
    let Some(last) = meta.last_log_id else {
        return Err(io::Error::other("the snapshot holds no applied entries"));
    };
    let (applied, _) = store.sm.applied_state().await?;
    match applied {
        // A start before this one loaded the snapshot and stopped before it was done.
        Some(applied) if applied == last => {}
        Some(applied) => {
            return Err(io::Error::other(format!(
                "the state machine already holds entries up to {applied}, not the snapshot's {last}"
            )))
        }
        None => {
            let members = Member::from_peers(&pending.members);
            let voters: BTreeSet<_> = members.keys().copied().collect();
            let membership = Membership::new(vec![voters], members).map_err(io::Error::other)?;
            let file = File::open(&pending.snapshot)?;
            store.sm.seed_from_snapshot(
                BufReader::with_capacity(256 * 1024, file),
                StoredMembership::new(Some(last), membership),
            )?;
        }
    }
    store
        .log
        .save_vote(&Vote::new(last.leader_id.term, pending.node_id))
        .await?;
    store.durability.sync()
}
