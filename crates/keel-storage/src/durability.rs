//! Making sled's writes durable.
//!
//! sled 0.34's `flush()` writes its in-memory IO buffers to the `db` file and then calls
//! `sync_file_range(WAIT_BEFORE | WRITE | WAIT_AFTER)` on the written range (sled#1452). That
//! syscall starts and waits for write-back of the data pages, but it does not write the file's
//! metadata (its size, after the file grew) and does not issue a cache flush to the device, so a
//! power loss can still lose what `flush()` reported as done. sled also writes values that are too
//! large for a log segment ("blobs", above ~128 KiB) to separate files under `blobs/` without
//! syncing them at all.
//!
//! [`Durability::sync`] therefore does, in this order:
//! 1. `db.flush()`: everything sled has accepted is written to the `db` file (and blob files).
//! 2. `fsync` of every blob file created since the last sync, then of the `blobs/` directory, so
//!    the new names are durable too.
//! 3. `fdatasync(db)`: data, size and a device cache flush for the one file that holds the log.
//!
//! The blobs come first because the `db` file refers to them: had the `db` file been synced
//! first, a power loss before the blobs were would leave a durable record (a commit index, say)
//! whose blob holding the entries is gone, and sled could not recover it.
//!
//! Caveats that keel cannot close from outside sled: sled deletes a blob as soon as the page
//! replacing it is written, before that page is durable, so a power loss right then can leave
//! the old page pointing at a deleted blob if the deletion reached the disk first; and a record
//! sled writes to the `db` file while a sync runs (after its listing of `blobs/`) may be
//! persisted by that sync's `fdatasync` without its blob. Neither loses an acknowledged write,
//! but either could keep sled from opening after a power cut; the power-cut tests (a lazy
//! filesystem) are where they would show.
//!
//! When `sync` returns `Ok`, everything inserted into any tree of this database before `sync`
//! was called survives a crash or power loss. One call covers every concurrent writer, which is
//! what makes group commit work: the log store calls it once per batch of appends.
//!
//! Directories: a new file or directory is durable only once the directory holding its name is
//! synced, whatever was synced inside it. keel creates its data directory and the `db/` and
//! `snapshots/` directories below it with [`create_dir_durable`], which syncs each parent, and
//! syncs a directory after every create, rename or delete in it that a restart depends on. The
//! power-cut test (t31, on keel-testkit's lazy filesystem, which forgets everything a power cut
//! would) found the gap this closes: a member whose data directory had never been made durable
//! came back empty, bootstrapped anew, and the leader it had acknowledged writes to panicked on
//! its reverted log.
//!
//! A failed sync poisons the database for good: after `fsync` reports EIO the kernel may already
//! have dropped the dirty pages and a later `fsync` can succeed without them ("fsyncgate"), so no
//! later success may be trusted. Every later call returns an error, and the node has to restart,
//! which re-reads what is really on disk.

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

/// Flushes and syncs one sled database. Shared by the log store and the state machine.
pub struct Durability {
    db: sled::Db,
    dir: PathBuf,
    db_file: File,
    /// Serialises syncs, and remembers which blob files are already durable.
    synced_blobs: Mutex<HashSet<OsString>>,
    poisoned: AtomicBool,
    syncs: AtomicU64,
}

impl Durability {
    /// Wrap a database opened at `dir`. Makes the directory entries of sled's own files durable.
    pub fn new(db: sled::Db, dir: &Path) -> io::Result<Self> {
        let db_file = File::open(dir.join("db"))?;
        // sled writes `conf` once, without syncing it; without it the database does not open.
        if let Ok(conf) = File::open(dir.join("conf")) {
            conf.sync_all()?;
        }
        fsync_dir(dir)?;
        let dur = Durability {
            db,
            dir: dir.to_path_buf(),
            db_file,
            synced_blobs: Mutex::new(HashSet::new()),
            poisoned: AtomicBool::new(false),
            syncs: AtomicU64::new(0),
        };
        dur.sync()?;
        Ok(dur)
    }

    /// Make every write accepted by the database so far durable. See the module docs.
    pub fn sync(&self) -> io::Result<()> {
        let mut synced_blobs = self.synced_blobs.lock().unwrap_or_else(|e| e.into_inner());
        if self.poisoned.load(Ordering::Acquire) {
            return Err(poisoned_error());
        }
        let result = self.sync_locked(&mut synced_blobs);
        if let Err(e) = &result {
            tracing::error!(error = %e, dir = %self.dir.display(), "sync failed; storage is now read-only until restart");
            self.poisoned.store(true, Ordering::Release);
        }
        self.syncs.fetch_add(1, Ordering::Relaxed);
        result
    }

    fn sync_locked(&self, synced_blobs: &mut HashSet<OsString>) -> io::Result<()> {
        self.db.flush().map_err(sled_to_io)?;
        // Blobs first: the database file refers to them, so they (and their names) must be
        // durable before it is (see the module docs).
        self.sync_new_blobs(synced_blobs)?;
        step(|| "fdatasync db".into());
        self.db_file.sync_data()?;
        Ok(())
    }

    /// fsync every blob file not yet synced, then `blobs/` if a name appeared or went.
    fn sync_new_blobs(&self, synced_blobs: &mut HashSet<OsString>) -> io::Result<()> {
        let blobs = self.dir.join("blobs");
        let mut new_blob = false;
        let mut present = HashSet::new();
        match std::fs::read_dir(&blobs) {
            Ok(entries) => {
                for entry in entries {
                    let entry = entry?;
                    let name = entry.file_name();
                    if synced_blobs.contains(&name) {
                        present.insert(name);
                    } else if sync_blob(&entry.path())? {
                        new_blob = true;
                        present.insert(name);
                    } else {
                        // Deleted meanwhile: its removal is a directory change to sync.
                        new_blob = true;
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        if new_blob {
            step(|| "fsync blobs/".into());
            fsync_dir(&blobs)?;
        }
        *synced_blobs = present;
        Ok(())
    }

    /// Has a sync failed? Then nothing may be acknowledged any more.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned.load(Ordering::Acquire)
    }

    /// Fail fast when poisoned, before doing work that could never be acknowledged.
    pub fn check(&self) -> io::Result<()> {
        if self.is_poisoned() {
            return Err(poisoned_error());
        }
        Ok(())
    }

    /// Number of syncs so far (each one is one fdatasync of the database file).
    pub fn sync_count(&self) -> u64 {
        self.syncs.load(Ordering::Relaxed)
    }

    /// The database.
    pub fn db(&self) -> &sled::Db {
        &self.db
    }

    /// Size of the database directory's files on disk, in bytes.
    pub fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }
}

fn poisoned_error() -> io::Error {
    io::Error::other("an earlier fsync failed; refusing further writes until the node restarts")
}

/// Convert a sled error into an io::Error, keeping the OS error where there is one.
pub fn sled_to_io(e: sled::Error) -> io::Error {
    match e {
        sled::Error::Io(e) => e,
        other => io::Error::other(other.to_string()),
    }
}

pub use keel_datadir::fs::{create_dir_durable, fsync_dir};

/// fsync a new blob file; `false` if it no longer exists. sled deletes a blob once no page refers
/// to it any more, that is after the page that replaced it was written (and, in the same
/// [`Durability::sync`], flushed and fdatasync'ed): a blob deleted between the listing and the
/// open holds nothing a restart could need. (With batch log entries, sled's log pages outgrow the
/// blob threshold and blobs come and go constantly; treating the vanished file as a sync failure
/// poisoned healthy stores under load.)
fn sync_blob(path: &Path) -> io::Result<bool> {
    step(|| format!("fsync blob {}", path.display()));
    match File::open(path).and_then(|f| f.sync_all()) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
thread_local! {
    /// The steps of the syncs run on this thread, for the test of their order.
    static STEPS: std::cell::RefCell<Vec<String>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Record a step of a sync (tests only).
fn step(_what: impl FnOnce() -> String) {
    #[cfg(test)]
    STEPS.with(|s| s.borrow_mut().push(_what()));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 11.12: a new blob file, and its name in `blobs/`, are durable before the database
    /// file that refers to them, so that a power loss between the two never leaves a durable
    /// record whose blob is gone.
    #[test]
    fn blobs_and_their_directory_are_synced_before_the_database() {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = sled::Config::new()
            .path(dir.path())
            .flush_every_ms(None)
            .open()
            .expect("open sled");
        let dur = Durability::new(db.clone(), dir.path()).expect("durability");
        // Far above sled's blob threshold (~128 KiB): stored as a file of its own.
        db.insert(b"big", vec![7u8; 1024 * 1024]).expect("insert");
        STEPS.with(|s| s.borrow_mut().clear());
        dur.sync().expect("sync");
        let steps = STEPS.with(|s| s.borrow().clone());
        let at = |what: &str| steps.iter().position(|s| s.starts_with(what));
        let blob = at("fsync blob ").unwrap_or_else(|| panic!("no blob synced: {steps:?}"));
        let blobs_dir = at("fsync blobs/").unwrap_or_else(|| panic!("blobs/ not synced: {steps:?}"));
        let db_file = at("fdatasync db").unwrap_or_else(|| panic!("db not synced: {steps:?}"));
        assert!(blob < blobs_dir && blobs_dir < db_file, "sync order: {steps:?}");
    }

    #[test]
    fn create_dir_durable_makes_missing_levels_and_refuses_a_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let deep = dir.path().join("a/b/c");
        create_dir_durable(&deep).expect("create");
        assert!(deep.is_dir());
        create_dir_durable(&deep).expect("an existing directory is fine");
        std::fs::write(dir.path().join("f"), b"").expect("write");
        let err = create_dir_durable(&dir.path().join("f")).expect_err("a file");
        assert!(err.to_string().contains("not a directory"), "{err}");
        // Which names a power cut keeps is shown on a lazy filesystem: tests/tests/t31_power_loss.rs.
    }

    #[test]
    fn a_blob_deleted_before_its_sync_is_skipped() {
        let dir = tempfile::tempdir().expect("temp dir");
        let present = dir.path().join("1");
        std::fs::write(&present, b"blob").expect("write");
        assert!(sync_blob(&present).expect("sync"), "an existing blob is synced");
        assert!(!sync_blob(&dir.path().join("2")).expect("a vanished blob is not an error"));
        let not_a_file = dir.path().join("3/4");
        std::fs::create_dir_all(dir.path().join("3")).expect("mkdir");
        std::fs::write(dir.path().join("3/x"), b"").expect("write");
        assert!(!sync_blob(&not_a_file).expect("missing"));
    }
}
