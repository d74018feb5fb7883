//! The kernel's side: FUSE requests mapped onto the [`Model`].
//!
//! Every reply says "do not cache" (zero TTLs, direct I/O), so that every read, write and sync
//! a process makes reaches the model, and nothing the kernel remembers outlives a power cut.
//! Direct I/O also means `sync_file_range` never reaches us: it flushes page-cache ranges, and
//! there are none. That is the rule we want, since `sync_file_range` does not make data durable.

use std::ffi::OsStr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, FopenFlags, Generation, INodeNo, LockOwner, OpenFlags, RenameFlags,
    ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite,
    Request, TimeOrNow, WriteFlags,
};

use super::model::{Kind, Model, Stat};

const NO_CACHE: Duration = Duration::ZERO;
const BLOCK: u32 = 4096;

/// The filesystem served to the kernel.
pub(super) struct Fs {
    pub(super) model: Arc<Mutex<Model>>,
}

impl Fs {
    fn model(&self) -> MutexGuard<'_, Model> {
        self.model.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn errno(e: i32) -> Errno {
    Errno::from_i32(e)
}

/// Answer an operation that returns nothing.
fn done(reply: ReplyEmpty, result: Result<(), i32>) {
    match result {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(errno(e)),
    }
}

fn file_type(kind: Kind) -> FileType {
    match kind {
        Kind::File => FileType::RegularFile,
        Kind::Dir => FileType::Directory,
    }
}

fn attr(s: &Stat) -> FileAttr {
    FileAttr {
        ino: INodeNo(s.ino),
        size: s.size,
        blocks: s.size.div_ceil(512),
        atime: s.meta.atime,
        mtime: s.meta.mtime,
        ctime: s.meta.ctime,
        crtime: s.meta.ctime,
        kind: file_type(s.kind),
        perm: (s.meta.mode & 0o7777) as u16,
        nlink: if s.kind == Kind::Dir { 2 } else { 1 },
        uid: s.meta.uid,
        gid: s.meta.gid,
        rdev: 0,
        blksize: BLOCK,
        flags: 0,
    }
}

fn time(t: TimeOrNow) -> SystemTime {
    match t {
        TimeOrNow::SpecificTime(t) => t,
        TimeOrNow::Now => SystemTime::now(),
    }
}

impl fuser::Filesystem for Fs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.model().lookup(parent.0, name) {
            Ok(s) => reply.entry(&NO_CACHE, &attr(&s), Generation(0)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.model().stat(ino.0) {
            Ok(s) => reply.attr(&NO_CACHE, &attr(&s)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let mut m = self.model();
        let result = (|| {
            if let Some(size) = size {
                m.truncate(ino.0, size)?;
            }
            m.set_meta(ino.0, |meta| {
                if let Some(mode) = mode {
                    meta.mode = mode & 0o7777;
                }
                if let Some(uid) = uid {
                    meta.uid = uid;
                }
                if let Some(gid) = gid {
                    meta.gid = gid;
                }
                if let Some(t) = atime {
                    meta.atime = time(t);
                }
                if let Some(t) = mtime {
                    meta.mtime = time(t);
                }
            })?;
            m.stat(ino.0)
        })();
        match result {
            Ok(s) => reply.attr(&NO_CACHE, &attr(&s)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn mkdir(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, reply: ReplyEntry) {
        match self
            .model()
            .create(parent.0, name, Kind::Dir, mode & !umask, req.uid(), req.gid())
        {
            Ok(s) => reply.entry(&NO_CACHE, &attr(&s), Generation(0)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        done(reply, self.model().remove(parent.0, name, Kind::File))
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        done(reply, self.model().remove(parent.0, name, Kind::Dir))
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        if flags.contains(RenameFlags::RENAME_EXCHANGE) {
            return reply.error(Errno::EINVAL);
        }
        let no_replace = flags.contains(RenameFlags::RENAME_NOREPLACE);
        done(
            reply,
            self.model().rename(parent.0, name, newparent.0, newname, no_replace),
        )
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.model().stat(ino.0) {
            Ok(s) if s.kind == Kind::File => reply.opened(FileHandle(0), FopenFlags::FOPEN_DIRECT_IO),
            Ok(_) => reply.error(Errno::EISDIR),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.model().read(ino.0, offset, size as usize) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match self.model().write(ino.0, offset, data) {
            Ok(n) => reply.written(n as u32),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn flush(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _lock_owner: LockOwner, reply: ReplyEmpty) {
        // close(2): not a sync.
        reply.ok();
    }

    fn fsync(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        done(reply, self.model().sync(ino.0))
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let entries = match self.model().list(ino.0) {
            Ok(e) => e,
            Err(e) => return reply.error(errno(e)),
        };
        let dots = [
            (OsStr::new(".").to_os_string(), ino.0, Kind::Dir),
            (OsStr::new("..").to_os_string(), ino.0, Kind::Dir),
        ];
        // Offsets are positions in this listing: the kernel asks again from the last it got.
        for (i, (name, child, kind)) in dots.into_iter().chain(entries).enumerate().skip(offset as usize) {
            if reply.add(INodeNo(child), i as u64 + 1, file_type(kind), &name) {
                break;
            }
        }
        reply.ok();
    }

    fn fsyncdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        done(reply, self.model().sync(ino.0))
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let (capacity, used) = self.model().space();
        let total = capacity.unwrap_or(1 << 40).div_ceil(BLOCK as u64);
        let free = total.saturating_sub(used.div_ceil(BLOCK as u64));
        reply.statfs(total, free, free, 1 << 20, 1 << 20, BLOCK, 255, BLOCK);
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        // default_permissions: the kernel checks modes itself.
        reply.ok();
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        match self
            .model()
            .create(parent.0, name, Kind::File, mode & !umask, req.uid(), req.gid())
        {
            Ok(s) => reply.created(
                &NO_CACHE,
                &attr(&s),
                Generation(0),
                FileHandle(0),
                FopenFlags::FOPEN_DIRECT_IO,
            ),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        if mode != 0 {
            return reply.error(Errno::EOPNOTSUPP);
        }
        let mut m = self.model();
        let result = m.stat(ino.0).and_then(|s| {
            let end = offset.saturating_add(length);
            if end > s.size {
                m.truncate(ino.0, end)
            } else {
                Ok(())
            }
        });
        done(reply, result)
    }
}
