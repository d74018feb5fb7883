//! The lazy filesystem's state: two images of one tree, what processes see and what a disk keeps.
//!
//! Every inode carries its *current* state, which every operation changes at once, and its
//! *durable* state, which only a sync advances:
//! - a file's durable contents are its contents as of its last `fsync`/`fdatasync` (the bytes
//!   written since are tracked as dirty ranges, so a sync copies only those);
//! - a directory's durable entries are its entries as of its last `fsync` of the directory
//!   itself. Creating, unlinking or renaming a name changes only the current entries.
//!
//! [`Model::power_cut`] makes every current state its durable one, which is what the disk holds
//! after power returns. Optionally the last write to each file since its last sync survives in
//! part, a random prefix of it ("torn write"), as when a power cut catches a write half done.
//!
//! Inodes are never freed: the kernel may still refer to one after its last name is gone (an open
//! file), and after a power cut to inodes that were never durable. Their numbers stay valid and
//! simply lead nowhere. This is a filesystem for tests: its size is bounded by what a test writes.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::time::SystemTime;

/// The root directory's inode number (FUSE's).
pub const ROOT: u64 = 1;

/// Why an operation failed, as an errno value.
pub type Errno = i32;

/// What kind of inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
}

/// Attributes that are not content: kept current only (a power cut keeps them as they are,
/// which real filesystems also do for mode and owner once the inode itself is durable).
#[derive(Debug, Clone, Copy)]
pub struct Meta {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub atime: SystemTime,
    pub mtime: SystemTime,
    pub ctime: SystemTime,
}

impl Meta {
    fn new(mode: u32, uid: u32, gid: u32) -> Meta {
        let now = SystemTime::now();
        Meta {
            mode,
            uid,
            gid,
            atime: now,
            mtime: now,
            ctime: now,
        }
    }
}

#[derive(Debug, Default)]
struct FileData {
    current: Vec<u8>,
    durable: Vec<u8>,
    /// Byte ranges written since the last sync, sorted and disjoint.
    dirty: Vec<(u64, u64)>,
    /// The last write since the last sync (offset, bytes), for torn writes.
    last_write: Option<(u64, Vec<u8>)>,
}

#[derive(Debug, Default)]
struct DirData {
    current: BTreeMap<OsString, u64>,
    durable: BTreeMap<OsString, u64>,
}

#[derive(Debug)]
enum Body {
    File(FileData),
    Dir(DirData),
}

#[derive(Debug)]
struct Inode {
    meta: Meta,
    body: Body,
}

impl Inode {
    fn kind(&self) -> Kind {
        match self.body {
            Body::File(_) => Kind::File,
            Body::Dir(_) => Kind::Dir,
        }
    }

    fn file(&self) -> Option<&FileData> {
        match &self.body {
            Body::File(f) => Some(f),
            Body::Dir(_) => None,
        }
    }

    fn dir(&self) -> Option<&DirData> {
        match &self.body {
            Body::Dir(d) => Some(d),
            Body::File(_) => None,
        }
    }
}

/// What [`Model::stat`] reports.
#[derive(Debug, Clone, Copy)]
pub struct Stat {
    pub ino: u64,
    pub kind: Kind,
    pub size: u64,
    pub meta: Meta,
}

/// Counters, for tests and reports.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counters {
    pub writes: u64,
    pub file_syncs: u64,
    pub dir_syncs: u64,
    pub power_cuts: u64,
    /// Bytes of unsynced writes the power cuts dropped.
    pub bytes_dropped: u64,
    /// Writes refused for lack of space.
    pub enospc: u64,
}

/// The whole tree. See the module docs.
#[derive(Debug)]
pub struct Model {
    /// By inode number, from [`ROOT`] (number `ROOT + i` at index `i`).
    inodes: Vec<Inode>,
    /// The most bytes of current file contents; writes beyond fail with ENOSPC.
    capacity: Option<u64>,
    used: u64,
    counters: Counters,
}

impl Default for Model {
    fn default() -> Self {
        Self::new()
    }
}

impl Model {
    /// An empty tree: a root directory owned by root, mode 0755, whose (empty) listing is durable.
    pub fn new() -> Model {
        let root = Inode {
            meta: Meta::new(0o755, 0, 0),
            body: Body::Dir(DirData::default()),
        };
        Model {
            inodes: vec![root],
            capacity: None,
            used: 0,
            counters: Counters::default(),
        }
    }

    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// Limit the bytes of file contents (None: no limit). Lowering it below what is used only
    /// refuses further growth.
    pub fn set_capacity(&mut self, capacity: Option<u64>) {
        self.capacity = capacity;
    }

    /// (capacity, bytes used) for statfs.
    pub fn space(&self) -> (Option<u64>, u64) {
        (self.capacity, self.used)
    }

    fn inode(&self, ino: u64) -> Result<&Inode, Errno> {
        let at = ino.checked_sub(ROOT).ok_or(libc::ENOENT)?;
        self.inodes.get(at as usize).ok_or(libc::ENOENT)
    }

    fn inode_mut(&mut self, ino: u64) -> Result<&mut Inode, Errno> {
        let at = ino.checked_sub(ROOT).ok_or(libc::ENOENT)?;
        self.inodes.get_mut(at as usize).ok_or(libc::ENOENT)
    }

    fn dir(&self, ino: u64) -> Result<&DirData, Errno> {
        self.inode(ino)?.dir().ok_or(libc::ENOTDIR)
    }

    fn dir_mut(&mut self, ino: u64) -> Result<&mut DirData, Errno> {
        match &mut self.inode_mut(ino)?.body {
            Body::Dir(d) => Ok(d),
            Body::File(_) => Err(libc::ENOTDIR),
        }
    }

    fn file_mut(&mut self, ino: u64) -> Result<&mut FileData, Errno> {
        match &mut self.inode_mut(ino)?.body {
            Body::File(f) => Ok(f),
            Body::Dir(_) => Err(libc::EISDIR),
        }
    }

    pub fn stat(&self, ino: u64) -> Result<Stat, Errno> {
        let i = self.inode(ino)?;
        let size = match &i.body {
            Body::File(f) => f.current.len() as u64,
            Body::Dir(d) => d.current.len() as u64,
        };
        Ok(Stat {
            ino,
            kind: i.kind(),
            size,
            meta: i.meta,
        })
    }

    pub fn lookup(&self, parent: u64, name: &OsStr) -> Result<Stat, Errno> {
        let ino = *self.dir(parent)?.current.get(name).ok_or(libc::ENOENT)?;
        self.stat(ino)
    }

    /// The current entries of a directory, in name order.
    pub fn list(&self, dir: u64) -> Result<Vec<(OsString, u64, Kind)>, Errno> {
        let d = self.dir(dir)?;
        Ok(d.current
            .iter()
            .filter_map(|(n, &ino)| Some((n.clone(), ino, self.inode(ino).ok()?.kind())))
            .collect())
    }

    /// Create a file or directory `name` in `parent` (current entries only).
    pub fn create(
        &mut self,
        parent: u64,
        name: &OsStr,
        kind: Kind,
        mode: u32,
        uid: u32,
        gid: u32,
    ) -> Result<Stat, Errno> {
        if self.dir(parent)?.current.contains_key(name) {
            return Err(libc::EEXIST);
        }
        let ino = ROOT + self.inodes.len() as u64;
        self.inodes.push(Inode {
            meta: Meta::new(mode & 0o7777, uid, gid),
            body: match kind {
                Kind::File => Body::File(FileData::default()),
                Kind::Dir => Body::Dir(DirData::default()),
            },
        });
        self.dir_mut(parent)?.current.insert(name.to_os_string(), ino);
        self.touch(parent);
        self.stat(ino)
    }

    /// Remove `name` from `parent`: a file (`Kind::File`) or an empty directory (`Kind::Dir`).
    pub fn remove(&mut self, parent: u64, name: &OsStr, kind: Kind) -> Result<(), Errno> {
        let ino = *self.dir(parent)?.current.get(name).ok_or(libc::ENOENT)?;
        match (kind, self.inode(ino)?.kind()) {
            (Kind::File, Kind::Dir) => return Err(libc::EISDIR),
            (Kind::Dir, Kind::File) => return Err(libc::ENOTDIR),
            (Kind::Dir, Kind::Dir) if !self.dir(ino)?.current.is_empty() => return Err(libc::ENOTEMPTY),
            _ => {}
        }
        self.dir_mut(parent)?.current.remove(name);
        self.release_space(ino);
        self.touch(parent);
        Ok(())
    }

    /// A file lost its (only) name: its bytes no longer count. (An open file written after its
    /// unlink is charged again for what it grows; good enough for a test's quota.)
    fn release_space(&mut self, ino: u64) {
        if let Some(f) = self.inode(ino).ok().and_then(Inode::file) {
            self.used = self.used.saturating_sub(f.current.len() as u64);
        }
    }

    /// Move `name` in `parent` to `new_name` in `new_parent`, replacing a file or an empty
    /// directory there. `no_replace`: fail with EEXIST instead.
    pub fn rename(
        &mut self,
        parent: u64,
        name: &OsStr,
        new_parent: u64,
        new_name: &OsStr,
        no_replace: bool,
    ) -> Result<(), Errno> {
        let ino = *self.dir(parent)?.current.get(name).ok_or(libc::ENOENT)?;
        let kind = self.inode(ino)?.kind();
        if let Some(&target) = self.dir(new_parent)?.current.get(new_name) {
            if target == ino {
                return Ok(());
            }
            if no_replace {
                return Err(libc::EEXIST);
            }
            match (kind, self.inode(target)?.kind()) {
                (Kind::File, Kind::Dir) => return Err(libc::EISDIR),
                (Kind::Dir, Kind::File) => return Err(libc::ENOTDIR),
                (Kind::Dir, Kind::Dir) if !self.dir(target)?.current.is_empty() => return Err(libc::ENOTEMPTY),
                _ => {}
            }
        }
        if kind == Kind::Dir && self.is_within(new_parent, ino) {
            return Err(libc::EINVAL);
        }
        self.dir_mut(parent)?.current.remove(name);
        if let Some(replaced) = self.dir_mut(new_parent)?.current.insert(new_name.to_os_string(), ino) {
            self.release_space(replaced);
        }
        self.touch(parent);
        self.touch(new_parent);
        Ok(())
    }

    /// Is `dir` the directory `ancestor` or below it (in the current tree)?
    fn is_within(&self, dir: u64, ancestor: u64) -> bool {
        let mut stack = vec![ancestor];
        while let Some(d) = stack.pop() {
            if d == dir {
                return true;
            }
            if let Ok(data) = self.dir(d) {
                stack.extend(
                    data.current
                        .values()
                        .copied()
                        .filter(|&i| self.inode(i).is_ok_and(|i| i.kind() == Kind::Dir)),
                );
            }
        }
        false
    }

    fn touch(&mut self, ino: u64) {
        if let Ok(i) = self.inode_mut(ino) {
            let now = SystemTime::now();
            i.meta.mtime = now;
            i.meta.ctime = now;
        }
    }

    pub fn read(&self, ino: u64, offset: u64, size: usize) -> Result<Vec<u8>, Errno> {
        let f = self.inode(ino)?.file().ok_or(libc::EISDIR)?;
        let start = (offset as usize).min(f.current.len());
        let end = start.saturating_add(size).min(f.current.len());
        Ok(f.current[start..end].to_vec())
    }

    /// Write `data` at `offset` (current contents only), growing the file as needed.
    pub fn write(&mut self, ino: u64, offset: u64, data: &[u8]) -> Result<usize, Errno> {
        let end = offset.checked_add(data.len() as u64).ok_or(libc::EFBIG)?;
        let old_len = self.file_mut(ino)?.current.len() as u64;
        // A write inside the file does not shrink it.
        self.reserve(old_len, end.max(old_len))?;
        let f = self.file_mut(ino)?;
        if end as usize > f.current.len() {
            f.current.resize(end as usize, 0);
        }
        f.current[offset as usize..end as usize].copy_from_slice(data);
        mark_dirty(&mut f.dirty, offset, end);
        f.last_write = Some((offset, data.to_vec()));
        self.counters.writes += 1;
        self.touch(ino);
        Ok(data.len())
    }

    /// Set the file's length (current contents only).
    pub fn truncate(&mut self, ino: u64, size: u64) -> Result<(), Errno> {
        let old_len = self.file_mut(ino)?.current.len() as u64;
        self.reserve(old_len, size)?;
        let f = self.file_mut(ino)?;
        f.current.resize(size as usize, 0);
        // The length itself changed: a sync must carry it, even with no byte dirty.
        mark_dirty(&mut f.dirty, size, size);
        self.touch(ino);
        Ok(())
    }

    /// Account for a file growing from `old_len` to `new_len` bytes (or shrinking).
    fn reserve(&mut self, old_len: u64, new_len: u64) -> Result<(), Errno> {
        if new_len > old_len {
            let grow = new_len - old_len;
            if self.capacity.is_some_and(|c| self.used + grow > c) {
                self.counters.enospc += 1;
                return Err(libc::ENOSPC);
            }
            self.used += grow;
        } else {
            self.used = self.used.saturating_sub(old_len - new_len);
        }
        Ok(())
    }

    pub fn set_meta(&mut self, ino: u64, set: impl FnOnce(&mut Meta)) -> Result<(), Errno> {
        let i = self.inode_mut(ino)?;
        set(&mut i.meta);
        i.meta.ctime = SystemTime::now();
        Ok(())
    }

    /// `fsync`/`fdatasync` of a file: its current contents become durable. Of a directory: its
    /// current entries become durable.
    pub fn sync(&mut self, ino: u64) -> Result<(), Errno> {
        let f = match &mut self.inode_mut(ino)?.body {
            Body::Dir(d) => {
                d.durable = d.current.clone();
                self.counters.dir_syncs += 1;
                return Ok(());
            }
            Body::File(f) => f,
        };
        let len = f.current.len();
        f.durable.resize(len, 0);
        for (start, end) in std::mem::take(&mut f.dirty) {
            let (s, e) = ((start as usize).min(len), (end as usize).min(len));
            f.durable[s..e].copy_from_slice(&f.current[s..e]);
        }
        f.last_write = None;
        self.counters.file_syncs += 1;
        Ok(())
    }

    /// Power is cut: every inode goes back to its durable state. With `torn`, each file's last
    /// unsynced write leaves a prefix of the length `torn` picks (0..=its length) behind.
    pub fn power_cut(&mut self, mut torn: Option<&mut dyn FnMut(usize) -> usize>) {
        let mut dropped = 0u64;
        let mut used = 0u64;
        for i in self.inodes.iter_mut() {
            match &mut i.body {
                Body::Dir(d) => d.current = d.durable.clone(),
                Body::File(f) => {
                    dropped += f.dirty.drain(..).map(|(s, e)| e - s).sum::<u64>();
                    // A torn write reached the disk in part: that part is durable from now on.
                    if let (Some((offset, data)), Some(pick)) = (f.last_write.take(), torn.as_deref_mut()) {
                        let keep = pick(data.len()).min(data.len());
                        let end = offset as usize + keep;
                        if keep > 0 {
                            if end > f.durable.len() {
                                f.durable.resize(end, 0);
                            }
                            f.durable[offset as usize..end].copy_from_slice(&data[..keep]);
                        }
                    }
                    f.current = f.durable.clone();
                }
            }
        }
        // Only what is reachable from the root takes space.
        let mut stack = vec![ROOT];
        let mut seen = std::collections::HashSet::new();
        while let Some(d) = stack.pop() {
            let Ok(dir) = self.dir(d) else { continue };
            for &ino in dir.current.values() {
                if seen.insert(ino) {
                    match self.inode(ino).map(|i| &i.body) {
                        Ok(Body::File(f)) => used += f.current.len() as u64,
                        Ok(Body::Dir(_)) => stack.push(ino),
                        Err(_) => {}
                    }
                }
            }
        }
        self.used = used;
        self.counters.power_cuts += 1;
        self.counters.bytes_dropped += dropped;
    }
}

/// Add [start, end) to a sorted, disjoint range list, merging what touches it.
fn mark_dirty(dirty: &mut Vec<(u64, u64)>, start: u64, end: u64) {
    let mut s = start;
    let mut e = end;
    let mut out = Vec::with_capacity(dirty.len() + 1);
    let mut placed = false;
    for &(a, b) in dirty.iter() {
        if b < s {
            out.push((a, b));
        } else if a > e {
            if !placed {
                out.push((s, e));
                placed = true;
            }
            out.push((a, b));
        } else {
            s = s.min(a);
            e = e.max(b);
        }
    }
    if !placed {
        out.push((s, e));
    }
    *dirty = out;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> &OsStr {
        OsStr::new(s)
    }

    fn file(m: &mut Model, dir: u64, n: &str) -> u64 {
        m.create(dir, name(n), Kind::File, 0o644, 0, 0).unwrap().ino
    }

    fn contents(m: &Model, dir: u64, n: &str) -> Option<Vec<u8>> {
        let ino = m.lookup(dir, name(n)).ok()?.ino;
        Some(m.read(ino, 0, usize::MAX).unwrap())
    }

    #[test]
    fn an_unsynced_write_vanishes_and_a_synced_one_stays() {
        let mut m = Model::new();
        let f = file(&mut m, ROOT, "f");
        m.sync(ROOT).unwrap();
        m.write(f, 0, b"synced").unwrap();
        m.sync(f).unwrap();
        m.write(f, 6, b" and not").unwrap();
        m.write(f, 0, b"S").unwrap();
        assert_eq!(contents(&m, ROOT, "f").unwrap(), b"Synced and not");
        m.power_cut(None);
        assert_eq!(contents(&m, ROOT, "f").unwrap(), b"synced");
        assert_eq!(m.counters().bytes_dropped, 9);
    }

    #[test]
    fn a_created_file_needs_its_directory_synced() {
        let mut m = Model::new();
        let f = file(&mut m, ROOT, "f");
        m.write(f, 0, b"data").unwrap();
        m.sync(f).unwrap();
        m.power_cut(None);
        assert!(contents(&m, ROOT, "f").is_none(), "the name was never durable");

        let f = file(&mut m, ROOT, "g");
        m.write(f, 0, b"data").unwrap();
        m.sync(f).unwrap();
        m.sync(ROOT).unwrap();
        m.power_cut(None);
        assert_eq!(contents(&m, ROOT, "g").unwrap(), b"data");
    }

    #[test]
    fn a_rename_or_unlink_without_a_directory_sync_is_undone() {
        let mut m = Model::new();
        let f = file(&mut m, ROOT, "old");
        m.write(f, 0, b"v1").unwrap();
        m.sync(f).unwrap();
        m.sync(ROOT).unwrap();
        let g = file(&mut m, ROOT, "tmp");
        m.write(g, 0, b"v2").unwrap();
        m.sync(g).unwrap();
        m.rename(ROOT, name("tmp"), ROOT, name("old"), false).unwrap();
        assert_eq!(contents(&m, ROOT, "old").unwrap(), b"v2");
        m.power_cut(None);
        assert_eq!(contents(&m, ROOT, "old").unwrap(), b"v1", "the rename was not durable");
        assert!(contents(&m, ROOT, "tmp").is_none(), "nor was tmp's creation");

        m.remove(ROOT, name("old"), Kind::File).unwrap();
        assert!(contents(&m, ROOT, "old").is_none());
        m.power_cut(None);
        assert_eq!(contents(&m, ROOT, "old").unwrap(), b"v1", "the unlink was not durable");

        let g = file(&mut m, ROOT, "tmp");
        m.write(g, 0, b"v3").unwrap();
        m.sync(g).unwrap();
        m.rename(ROOT, name("tmp"), ROOT, name("old"), false).unwrap();
        m.sync(ROOT).unwrap();
        m.power_cut(None);
        assert_eq!(contents(&m, ROOT, "old").unwrap(), b"v3");
    }

    #[test]
    fn a_directory_and_its_entries_are_durable_separately() {
        let mut m = Model::new();
        let d = m.create(ROOT, name("d"), Kind::Dir, 0o755, 0, 0).unwrap().ino;
        let f = file(&mut m, d, "f");
        m.write(f, 0, b"x").unwrap();
        m.sync(f).unwrap();
        m.sync(d).unwrap();
        m.power_cut(None);
        assert!(m.lookup(ROOT, name("d")).is_err(), "d's own name was never durable");
        let d = m.create(ROOT, name("d"), Kind::Dir, 0o755, 0, 0).unwrap().ino;
        m.sync(ROOT).unwrap();
        let f = file(&mut m, d, "f");
        m.write(f, 0, b"x").unwrap();
        m.sync(f).unwrap();
        m.power_cut(None);
        assert!(m.lookup(ROOT, name("d")).is_ok());
        assert!(contents(&m, d, "f").is_none(), "d was not synced after f was created");
    }

    #[test]
    fn a_truncation_is_durable_only_after_a_sync() {
        let mut m = Model::new();
        let f = file(&mut m, ROOT, "f");
        m.sync(ROOT).unwrap();
        m.write(f, 0, b"0123456789").unwrap();
        m.sync(f).unwrap();
        m.truncate(f, 4).unwrap();
        m.power_cut(None);
        assert_eq!(contents(&m, ROOT, "f").unwrap(), b"0123456789");
        m.truncate(f, 4).unwrap();
        m.sync(f).unwrap();
        m.power_cut(None);
        assert_eq!(contents(&m, ROOT, "f").unwrap(), b"0123");
    }

    #[test]
    fn a_torn_write_leaves_a_prefix_of_the_last_write() {
        let mut m = Model::new();
        let f = file(&mut m, ROOT, "f");
        m.sync(ROOT).unwrap();
        m.write(f, 0, b"aaaa").unwrap();
        m.sync(f).unwrap();
        m.write(f, 2, b"first").unwrap();
        m.write(f, 4, b"BBBBBB").unwrap();
        let mut pick = |len: usize| {
            assert_eq!(len, 6, "only the last write can tear");
            3
        };
        m.power_cut(Some(&mut pick));
        assert_eq!(contents(&m, ROOT, "f").unwrap(), b"aaaaBBB");
        // What survived is durable now: a second cut keeps it.
        m.power_cut(None);
        assert_eq!(contents(&m, ROOT, "f").unwrap(), b"aaaaBBB");
    }

    #[test]
    fn writes_beyond_the_capacity_fail_with_enospc_and_space_comes_back() {
        let mut m = Model::new();
        m.set_capacity(Some(10));
        let f = file(&mut m, ROOT, "f");
        m.write(f, 0, b"12345678").unwrap();
        assert_eq!(m.write(f, 8, b"abc"), Err(libc::ENOSPC));
        assert_eq!(m.write(f, 0, b"overwrite!!"), Err(libc::ENOSPC));
        m.write(f, 0, b"over").unwrap();
        m.truncate(f, 2).unwrap();
        m.write(f, 2, b"45678901").unwrap();
        assert_eq!(m.space(), (Some(10), 10));
        m.remove(ROOT, name("f"), Kind::File).unwrap();
        assert_eq!(m.space(), (Some(10), 0), "an unlinked file's bytes are free again");
        assert_eq!(m.counters().enospc, 2);
    }

    #[test]
    fn renames_keep_the_tree_a_tree() {
        let mut m = Model::new();
        let a = m.create(ROOT, name("a"), Kind::Dir, 0o755, 0, 0).unwrap().ino;
        let b = m.create(a, name("b"), Kind::Dir, 0o755, 0, 0).unwrap().ino;
        assert_eq!(m.rename(ROOT, name("a"), b, name("a"), false), Err(libc::EINVAL));
        file(&mut m, b, "f");
        assert_eq!(m.rename(a, name("b"), ROOT, name("a"), false), Err(libc::ENOTEMPTY));
        assert_eq!(m.remove(ROOT, name("a"), Kind::Dir), Err(libc::ENOTEMPTY));
        file(&mut m, ROOT, "g");
        assert_eq!(m.rename(ROOT, name("g"), a, name("b"), true), Err(libc::EEXIST));
    }

    #[test]
    fn dirty_ranges_merge() {
        let mut d = vec![];
        mark_dirty(&mut d, 10, 20);
        mark_dirty(&mut d, 30, 40);
        mark_dirty(&mut d, 0, 5);
        assert_eq!(d, vec![(0, 5), (10, 20), (30, 40)]);
        mark_dirty(&mut d, 18, 31);
        assert_eq!(d, vec![(0, 5), (10, 40)]);
        mark_dirty(&mut d, 5, 10);
        assert_eq!(d, vec![(0, 40)]);
    }
}
