//! Scheduled backups: every `--backup-interval` the leader writes a snapshot file into
//! `--backup-dir`, verifies it, and keeps the newest `--backup-retain`.
//!
//! A backup is the same file `keelctl snapshot save` writes. It is written as `NAME.tmp`,
//! synced, read back and verified (every block CRC and the SHA-256), then renamed to
//! `keel-<unix seconds>-rev<revision>.snap` and the directory synced, so a file with the final
//! name is always complete. Followers take none: the backup follows leadership. The outcome of
//! each attempt goes to the metrics (`keel_backups_total{result}`,
//! `keel_backup_last_success_timestamp_seconds`, `keel_backup_size_bytes`) and the log.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::config::BackupConfig;
use crate::error::NodeError;
use crate::node::Node;

/// Take backups until `stop` fires.
pub async fn run(node: Arc<Node>, config: BackupConfig, mut stop: tokio::sync::watch::Receiver<bool>) {
    if let Err(e) = keel_storage::durability::create_dir_durable(&config.dir) {
        tracing::error!(dir = %config.dir.display(), error = %e, "cannot create the backup directory; no scheduled backups");
        return;
    }
    node.metrics.backup_interval.set(config.interval.as_secs() as i64);
    let mut tick = tokio::time::interval(config.interval);
    // The first tick fires at once; a fresh leader should not back up before it has settled.
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        if !node.is_leader() {
            continue;
        }
        match backup_once(&node, &config.dir).await {
            Ok((path, bytes)) => {
                // Pruned before it is counted, so that a count seen in the metrics means the
                // directory holds at most `retain` backups.
                if let Err(e) = prune(&config.dir, config.retain) {
                    tracing::warn!(error = %e, "pruning old backups failed");
                }
                node.metrics.backups.with_label_values(&["ok"]).inc();
                node.metrics.backup_bytes.set(bytes as i64);
                let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
                node.metrics.backup_last_success.set(now.as_secs() as i64);
                tracing::info!(file = %path.display(), bytes, "scheduled backup written");
            }
            Err(e) => {
                node.metrics.backups.with_label_values(&["failed"]).inc();
                tracing::error!(error = %e, "scheduled backup failed");
            }
        }
    }
}

/// Why a scheduled backup failed.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// No snapshot could be had (not the leader, no quorum, ...).
    #[error("{0}")]
    Snapshot(#[from] crate::error::NodeError),
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("the backup does not verify: {0}")]
    Verify(#[from] keel_storage::SnapshotError),
    #[error("the backup task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// Write one verified backup into `dir`; returns its path and size.
pub async fn backup_once(node: &Node, dir: &Path) -> Result<(PathBuf, u64), BackupError> {
    let deadline = Instant::now() + Duration::from_secs(600);
    let (revision, mut file) = node.fresh_snapshot(deadline).await?;
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let name = format!("keel-{secs}-rev{revision}.snap");
    let (tmp, path) = (dir.join(format!("{name}.tmp")), dir.join(&name));
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || -> Result<(PathBuf, u64), BackupError> {
        let result = (|| {
            let mut out = fs::File::create(&tmp)?;
            let bytes = io::copy(&mut file, &mut out)?;
            out.sync_all()?;
            drop(out);
            keel_datadir::restore::verify(&tmp)?;
            fs::rename(&tmp, &path)?;
            fs::File::open(&dir)?.sync_all()?;
            Ok((path, bytes))
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    })
    .await?
}

/// Delete all but the newest `retain` backups (by the time in their names), and stale `.tmp`s.
pub fn prune(dir: &Path, retain: usize) -> io::Result<()> {
    let mut backups: Vec<(u64, PathBuf)> = Vec::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if name.starts_with("keel-") && name.ends_with(".snap.tmp") {
            fs::remove_file(&path)?;
            continue;
        }
        let secs = name
            .strip_prefix("keel-")
            .and_then(|rest| rest.split('-').next())
            .and_then(|s| s.parse::<u64>().ok());
        if let (Some(secs), true) = (secs, name.ends_with(".snap")) {
            backups.push((secs, path));
        }
    }
    backups.sort();
    let excess = backups.len().saturating_sub(retain);
    for (_, path) in backups.into_iter().take(excess) {
        fs::remove_file(path)?;
    }
    Ok(())
}

impl Node {
    /// On the leader: build a snapshot of everything applied so far and open it. Returns the
    /// snapshot's revision and the file (which stays readable if a newer snapshot replaces it).
    pub async fn fresh_snapshot(&self, deadline: Instant) -> Result<(u64, std::fs::File), NodeError> {
        self.check_leader_with_quorum()?;
        self.snapshot_here(deadline).await
    }

    /// On any member: build a snapshot of everything this member has applied and open it (as
    /// [`Node::fresh_snapshot`], without asking to be the leader).
    pub async fn snapshot_here(&self, deadline: Instant) -> Result<(u64, std::fs::File), NodeError> {
        let target = self.metrics().last_applied;
        self.raft
            .trigger()
            .snapshot()
            .await
            .map_err(|e| NodeError::Internal(format!("cannot start a snapshot: {e}")))?;
        let left = deadline.saturating_duration_since(Instant::now());
        let wait = self.raft.wait(Some(left));
        match wait.metrics(|m| m.snapshot >= target, "snapshot built").await {
            Ok(_) => {}
            Err(openraft::metrics::WaitError::Timeout(..)) => {
                return Err(NodeError::DeadlineExceeded(
                    "deadline exceeded while the snapshot was being built".into(),
                ))
            }
            Err(e) => return Err(NodeError::Unavailable(format!("raft stopped: {e}"))),
        }
        let (_, file) = self
            .reader
            .current_snapshot()
            .map_err(|e| NodeError::Internal(format!("cannot open the snapshot: {e}")))?
            .ok_or_else(|| NodeError::Internal("no snapshot after building one".into()))?;
        let header = keel_datadir::SnapshotReader::open(std::io::BufReader::new(
            file.try_clone().map_err(|e| NodeError::Internal(e.to_string()))?,
        ))
        .map_err(|e| NodeError::Internal(format!("the snapshot just built does not read back: {e}")))?
        .1;
        use std::io::Seek;
        let mut file = file;
        file.rewind().map_err(|e| NodeError::Internal(e.to_string()))?;
        Ok((header.revision, file))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prune_keeps_the_newest_and_ignores_other_files() {
        let dir = tempfile::tempdir().unwrap();
        for (secs, rev) in [(100, 5), (300, 9), (200, 7), (400, 12)] {
            fs::write(dir.path().join(format!("keel-{secs}-rev{rev}.snap")), b"x").unwrap();
        }
        fs::write(dir.path().join("keel-500-rev13.snap.tmp"), b"partial").unwrap();
        fs::write(dir.path().join("notes.txt"), b"mine").unwrap();
        prune(dir.path(), 2).unwrap();
        let mut left: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, ["keel-300-rev9.snap", "keel-400-rev12.snap", "notes.txt"]);
    }
}
