//! A filesystem that forgets what was not synced: power cuts for tests.
//!
//! A SIGKILL keeps every write the process made: the page cache still holds it, and the disk gets
//! it later. A power cut does not: whatever was not made durable is gone, and that is where
//! storage engines lose acknowledged writes (Jepsen's lazyfs found etcd's this way). [`LazyFs`]
//! mounts a FUSE filesystem (the `fuser` crate, in a thread of the test process) that keeps two
//! images of every file and directory: what processes see, and what a disk would keep. Processes
//! read and write the first; only these calls advance the second:
//! - `fsync`/`fdatasync` of a file: its contents and length, as they are now;
//! - `fsync` of a directory: its entries, as they are now. Creating, unlinking and renaming a
//!   name is durable only after the directory holding it is synced, as POSIX requires (a file
//!   that was synced but whose name never was is lost whole).
//!
//! `sync_file_range` is not a sync here: it never reaches a FUSE filesystem with direct I/O, and
//! on a real disk it neither writes metadata nor flushes the device cache (sled#1452 is why keel
//! follows sled's flush with `fdatasync`).
//!
//! [`LazyFs::power_cut`] turns every image into its durable one. Kill the processes that use the
//! mount first (SIGKILL): a cut is the moment the machine stopped. With
//! [`LazyFs::power_cut_torn`], the last unsynced write of each file survives in part, a random
//! prefix of it, as a write that the power cut caught halfway. [`LazyFs::set_capacity`] makes a
//! small disk: writes past it fail with ENOSPC.
//!
//! The durable image lives in memory, not in a backing directory: a disk's state after a cut is
//! exactly that image, and a backing directory would need names of its own for files whose
//! names are not durable yet. The mount lives as long as the [`LazyFs`]; a cut keeps it mounted,
//! so nodes restart on what survived. The rules are in [`model`], tested there without FUSE;
//! `tests/lazyfs.rs` shows them through the kernel.
//!
//! Caveats: one model lock serves every request (a test filesystem); inodes are never freed;
//! a rename between two directories is durable in each as that directory is synced, so a cut
//! can leave it in both; there are no hard links, symlinks or extended attributes.

mod fuse;
pub mod model;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use anyhow::{bail, Context};
use fuser::{Config, MountOption};

pub use model::Counters;
use model::Model;

/// Why lazy filesystems cannot be mounted here, or None if they can: tests skip (loudly) on
/// machines without FUSE. `scripts/install-test-deps.sh` installs fuse3.
pub fn unavailable() -> Option<String> {
    if let Err(e) = std::fs::OpenOptions::new().read(true).write(true).open("/dev/fuse") {
        return Some(format!("/dev/fuse cannot be opened: {e}"));
    }
    if !["fusermount3", "fusermount"].iter().any(|b| on_path(b)) {
        return Some("fusermount3 is not installed (apt-get install fuse3)".into());
    }
    None
}

fn on_path(bin: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|paths| std::env::split_paths(&paths).any(|p| p.join(bin).is_file()))
}

/// A mounted lazy filesystem; unmounted when dropped.
pub struct LazyFs {
    model: Arc<Mutex<Model>>,
    mountpoint: PathBuf,
    session: Option<fuser::BackgroundSession>,
}

impl LazyFs {
    /// Mount an empty lazy filesystem on `mountpoint` (an existing, empty directory). Its root
    /// directory is durable from the start, as a freshly made filesystem's is.
    pub fn mount(mountpoint: &Path) -> anyhow::Result<LazyFs> {
        if let Some(why) = unavailable() {
            bail!("cannot mount a lazy filesystem: {why}");
        }
        let model = Arc::new(Mutex::new(Model::new()));
        let mut config = Config::default();
        // No auto_unmount: fusermount's watcher kept the mount alive past the session's end, so
        // that unmounting hung. Root mounts directly; a test process that dies leaves a dead
        // mount on its temporary directory, which `umount -l` removes.
        config.mount_options = vec![
            MountOption::FSName("keel-lazyfs".into()),
            MountOption::DefaultPermissions,
        ];
        let fs = fuse::Fs { model: model.clone() };
        let session = fuser::spawn_mount(fs, mountpoint, &config)
            .with_context(|| format!("mounting a lazy filesystem on {}", mountpoint.display()))?;
        Ok(LazyFs {
            model,
            mountpoint: mountpoint.to_path_buf(),
            session: Some(session),
        })
    }

    /// Where it is mounted.
    pub fn path(&self) -> &Path {
        &self.mountpoint
    }

    fn model(&self) -> MutexGuard<'_, Model> {
        self.model.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Cut the power: everything not made durable is gone (see the module docs).
    pub fn power_cut(&self) {
        self.model().power_cut(None);
    }

    /// Cut the power, leaving a prefix of each file's last unsynced write, its length drawn
    /// from `rng`.
    pub fn power_cut_torn(&self, rng: &mut impl rand::Rng) {
        let mut pick = |len: usize| rng.random_range(0..=len);
        self.model().power_cut(Some(&mut pick));
    }

    /// Limit the bytes of file contents (None: unlimited); writes past it fail with ENOSPC.
    pub fn set_capacity(&self, bytes: Option<u64>) {
        self.model().set_capacity(bytes);
    }

    /// Bytes of file contents now (what [`LazyFs::set_capacity`] limits).
    pub fn used(&self) -> u64 {
        self.model().space().1
    }

    /// Writes, syncs, cuts and what they dropped so far.
    pub fn counters(&self) -> Counters {
        self.model().counters()
    }
}

impl Drop for LazyFs {
    fn drop(&mut self) {
        if let Some(session) = self.session.take() {
            if let Err(e) = session.umount_and_join() {
                eprintln!("lazyfs: unmounting {} failed: {e}", self.mountpoint.display());
            }
        }
    }
}
