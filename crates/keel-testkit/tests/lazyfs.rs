//! The lazy filesystem's rules, seen through the kernel: plain `std::fs` calls on a mount.
//! Skipped, with a line saying so, where FUSE is missing.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::io::AsRawFd;
use std::path::Path;

use keel_testkit::lazyfs::{self, LazyFs};
use rand::SeedableRng;

/// A mounted lazy filesystem; unmounted before its directory is removed (fields drop in order).
struct Mounted {
    fs: LazyFs,
    _dir: tempfile::TempDir,
}

fn mounted(test: &str) -> Option<Mounted> {
    if let Some(why) = lazyfs::unavailable() {
        eprintln!("SKIPPED {test}: no lazy filesystem on this machine: {why}");
        return None;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let fs = LazyFs::mount(dir.path()).expect("mount a lazy filesystem");
    Some(Mounted { fs, _dir: dir })
}

fn sync_dir(dir: &Path) {
    File::open(dir).expect("open dir").sync_all().expect("fsync dir");
}

fn read(path: &Path) -> Option<Vec<u8>> {
    let mut f = File::open(path).ok()?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf).expect("read");
    Some(buf)
}

/// Create `name` with `data`, synced; its name is not (the directory is not synced).
fn synced_file(root: &Path, name: &str, data: &[u8]) -> File {
    let mut f = File::create(root.join(name)).expect("create");
    f.write_all(data).expect("write");
    f.sync_all().expect("fsync");
    f
}

/// Create `name` with `data`, synced, its name durable.
fn durable_file(root: &Path, name: &str, data: &[u8]) -> File {
    let f = synced_file(root, name, data);
    sync_dir(root);
    f
}

#[test]
fn an_unsynced_write_is_lost_and_synced_ones_stay() {
    let Some(m) = mounted("an_unsynced_write_is_lost_and_synced_ones_stay") else {
        return;
    };
    let root = m.fs.path();
    let mut a = durable_file(root, "a", b"fsynced;");
    a.write_all(b"lost").unwrap();
    let mut b = durable_file(root, "b", b"");
    b.write_all(b"fdatasynced").unwrap();
    b.sync_data().unwrap();
    assert_eq!(read(&root.join("a")).unwrap(), b"fsynced;lost");
    drop((a, b));
    m.fs.power_cut();
    assert_eq!(read(&root.join("a")).unwrap(), b"fsynced;");
    assert_eq!(read(&root.join("b")).unwrap(), b"fdatasynced");
    assert_eq!(m.fs.counters().power_cuts, 1);
}

#[test]
fn sync_file_range_does_not_make_data_durable() {
    let Some(m) = mounted("sync_file_range_does_not_make_data_durable") else {
        return;
    };
    let root = m.fs.path();
    let mut f = durable_file(root, "f", b"");
    f.write_all(b"only range-synced").unwrap();
    let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE | libc::SYNC_FILE_RANGE_WRITE | libc::SYNC_FILE_RANGE_WAIT_AFTER;
    // SAFETY: a valid open descriptor; the call reads no memory of ours.
    let rc = unsafe { libc::sync_file_range(f.as_raw_fd(), 0, 0, flags) };
    assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
    drop(f);
    m.fs.power_cut();
    assert_eq!(read(&root.join("f")).unwrap(), b"");
}

#[test]
fn a_new_name_needs_its_directory_synced() {
    let Some(m) = mounted("a_new_name_needs_its_directory_synced") else {
        return;
    };
    let root = m.fs.path();
    fs::create_dir(root.join("d")).unwrap();
    durable_file(&root.join("d"), "f", b"synced data, unsynced name");
    m.fs.power_cut();
    assert!(!root.join("d").exists(), "d's own name was never synced");

    fs::create_dir(root.join("d")).unwrap();
    sync_dir(root);
    durable_file(&root.join("d"), "f", b"both synced");
    m.fs.power_cut();
    assert_eq!(read(&root.join("d/f")).unwrap(), b"both synced");
    let names: Vec<_> = fs::read_dir(root).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, ["d"]);
}

#[test]
fn a_rename_or_unlink_without_a_directory_sync_is_undone() {
    let Some(m) = mounted("a_rename_or_unlink_without_a_directory_sync_is_undone") else {
        return;
    };
    let root = m.fs.path();
    durable_file(root, "current", b"v1");
    drop(synced_file(root, "tmp", b"v2"));
    fs::rename(root.join("tmp"), root.join("current")).unwrap();
    assert_eq!(read(&root.join("current")).unwrap(), b"v2");
    m.fs.power_cut();
    assert_eq!(read(&root.join("current")).unwrap(), b"v1", "the rename was undone");
    assert!(!root.join("tmp").exists());

    fs::remove_file(root.join("current")).unwrap();
    m.fs.power_cut();
    assert_eq!(read(&root.join("current")).unwrap(), b"v1", "the unlink was undone");

    drop(synced_file(root, "tmp", b"v3"));
    fs::rename(root.join("tmp"), root.join("current")).unwrap();
    sync_dir(root);
    m.fs.power_cut();
    assert_eq!(read(&root.join("current")).unwrap(), b"v3", "a synced rename stays");
}

#[test]
fn a_torn_write_leaves_a_prefix_of_itself() {
    let Some(m) = mounted("a_torn_write_leaves_a_prefix_of_itself") else {
        return;
    };
    let root = m.fs.path();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let page: Vec<u8> = (0..4096u32).map(|i| (i % 251) as u8).collect();
    let mut kept = Vec::new();
    for round in 0..8 {
        let name = format!("f{round}");
        let mut f = durable_file(root, &name, b"head:");
        f.write_all(&page).unwrap();
        drop(f);
        m.fs.power_cut_torn(&mut rng);
        let got = read(&root.join(&name)).unwrap();
        assert!(got.starts_with(b"head:"), "round {round}: the synced part stays");
        let tail = &got[5..];
        assert_eq!(tail, &page[..tail.len()], "round {round}: a prefix of the write");
        kept.push(tail.len());
    }
    assert!(
        kept.iter().any(|&k| k > 0 && k < page.len()),
        "some writes tore: {kept:?}"
    );
}

#[test]
fn a_full_filesystem_refuses_writes_with_enospc() {
    let Some(m) = mounted("a_full_filesystem_refuses_writes_with_enospc") else {
        return;
    };
    let root = m.fs.path();
    m.fs.set_capacity(Some(64 * 1024));
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(root.join("big"))
        .unwrap();
    f.write_all(&[1u8; 60 * 1024]).unwrap();
    let err = f.write_all(&[2u8; 8 * 1024]).expect_err("past capacity");
    assert_eq!(err.kind(), ErrorKind::StorageFull, "{err}");
    let stat = nix_statvfs(root);
    assert!(stat < 8 * 1024, "statfs reports the space left: {stat}");
    drop(f);
    fs::remove_file(root.join("big")).unwrap();
    fs::write(root.join("small"), [3u8; 32 * 1024]).expect("space is back after the unlink");
    assert!(m.fs.counters().enospc >= 1);
}

/// Bytes free, from statvfs.
fn nix_statvfs(path: &Path) -> u64 {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a zeroed statvfs is a valid out-parameter; the path is NUL-terminated.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut s) };
    assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
    s.f_bavail * s.f_frsize
}
