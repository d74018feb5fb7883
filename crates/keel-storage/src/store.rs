//! Opening a node's storage directory.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::durability::{sled_to_io, Durability};
use crate::log_store::LogStore;
use crate::sm::{SmConfig, StateMachine};

/// Storage tunables.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// sled's page cache, in bytes.
    pub cache_capacity: u64,
    pub sm: SmConfig,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            cache_capacity: 256 * 1024 * 1024,
            sm: SmConfig::default(),
        }
    }
}

/// Why a storage directory could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot open storage at {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

/// A node's opened storage.
pub struct Store {
    pub log: LogStore,
    pub sm: StateMachine,
    pub durability: Arc<Durability>,
}

/// Where the sled database of the storage under `dir` lives.
pub fn db_dir(dir: &Path) -> PathBuf {
    dir.join("db")
}

/// Open (or create) the storage under `dir`: the sled database in `dir/db`, snapshots in
/// `dir/snapshots`.
pub fn open(dir: &Path, config: &StoreConfig) -> Result<Store, OpenError> {
    let err = |source| OpenError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let db_dir = db_dir(dir);
    crate::durability::create_dir_durable(&db_dir).map_err(err)?;
    let sled_config = sled::Config::new()
        .path(&db_dir)
        .cache_capacity(config.cache_capacity)
        // keel syncs explicitly (group commit); sled's periodic background flush would only add
        // unsynchronised I/O next to it.
        .flush_every_ms(None);
    let db = open_locked(&sled_config, &db_dir).map_err(err)?;
    let durability = Arc::new(Durability::new(db, &db_dir).map_err(err)?);
    let mut log = LogStore::open(durability.clone()).map_err(err)?;
    let mut sm = StateMachine::open(durability.clone(), &dir.join("snapshots"), config.sm.clone()).map_err(err)?;
    log.gate_purges_on(sm.progress());
    sm.gate_applies_on(log.written());
    Ok(Store { log, sm, durability })
}

/// Open the database, waiting briefly if its lock is still held. sled releases the lock only
/// when its background I/O threads let go of the file, a moment after the last handle in this
/// process is dropped, so reopening in the same process can find it still locked. Another
/// process holding it for longer gets a clear error.
fn open_locked(config: &sled::Config, dir: &Path) -> io::Result<sled::Db> {
    const WAIT: std::time::Duration = std::time::Duration::from_secs(2);
    let start = std::time::Instant::now();
    loop {
        match config.open() {
            Ok(db) => return Ok(db),
            // sled reports a held lock as ErrorKind::Other with this message.
            Err(sled::Error::Io(e)) if e.to_string().contains("could not acquire lock") => {
                if start.elapsed() >= WAIT {
                    return Err(io::Error::new(
                        io::ErrorKind::WouldBlock,
                        format!("{} is in use by another process (its lock is held)", dir.display()),
                    ));
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => return Err(sled_to_io(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_store_is_refused_and_a_dropped_one_reopens_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let first = open(dir.path(), &StoreConfig::default()).unwrap();
        let err = open(dir.path(), &StoreConfig::default())
            .err()
            .expect("second open refused");
        assert!(err.to_string().contains("in use by another process"), "{err}");
        drop(first);
        // sled's I/O threads may still hold the lock for a moment; open waits for them.
        for _ in 0..20 {
            drop(open(dir.path(), &StoreConfig::default()).expect("reopen after drop"));
        }
    }
}
