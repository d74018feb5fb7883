//! Making names durable: a file or directory survives a power cut only once the directory that
//! names it is synced, so every creation and rename below the data directory goes through here.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

/// fsync a directory, so the names created, renamed or removed in it are durable.
pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Create `dir` (and any missing parents) so that it survives a power cut: a directory's name is
/// durable only once the directory holding it is synced, and everything a node writes below a
/// name that is not durable goes with it. The parent of `dir` is synced even when `dir` already
/// exists, since the process that created it may have died before syncing it. (The power-cut
/// test, t31, found a restarted member with an empty data directory: its log and vote gone, it
/// bootstrapped anew, and the leader it had acknowledged writes to panicked on the reverted log.)
pub fn create_dir_durable(dir: &Path) -> io::Result<()> {
    if std::fs::metadata(dir).is_ok_and(|m| !m.is_dir()) {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{} exists and is not a directory", dir.display()),
        ));
    }
    let parent_of = |d: &Path| {
        d.parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map_or(PathBuf::from("."), Path::to_path_buf)
    };
    // The levels that do not exist yet, `dir` first; each needs its parent synced.
    let missing: Vec<&Path> = dir
        .ancestors()
        .take_while(|d| !d.as_os_str().is_empty() && !d.exists())
        .collect();
    std::fs::create_dir_all(dir)?;
    let named = if missing.is_empty() { vec![dir] } else { missing };
    for d in named.iter().rev() {
        fsync_dir(&parent_of(d))?;
    }
    fsync_dir(dir)
}
