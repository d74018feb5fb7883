//! Building, installing and keeping snapshot files.
//!
//! Build: `get_snapshot_builder` runs between applies and captures the applied log id (index A),
//! membership and revision R, and pins R against compaction and A for the client sessions. The
//! build then runs on a blocking thread while applies continue: it syncs the database (so the state
//! machine is durable at least up to R before any log is purged), streams every live pair at R (an
//! MVCC read, see `mvcc.rs`) and then every client session as of A (see `sessions.rs` for how
//! records replaced meanwhile are found) into a `.snap.tmp` file, fsyncs it and renames it into
//! place.
//!
//! Files are named after the snapshot's last log id ([`file_stem`]), so every member names the
//! snapshot of one log position alike. Two snapshots of one log position hold the same state, so
//! a newer file of the same name may replace an older one. (Before the openraft 0.10 port, names
//! came from openraft's snapshot ids; such files still open, whatever their names.)
//!
//! Install: the received file is read once, verified block by block, copied to a local `.snap.tmp`
//! and loaded into a fresh generation tree in batches of bounded size, pairs and sessions alike. Only after the trailer has
//! been verified does the root switch to the new generation (one durable write); then the old
//! generation is dropped and the copy renamed into place. Memory stays at one block and one batch,
//! whatever the snapshot's size.
//!
//! Only the newest snapshot file is kept.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use openraft::RaftSnapshotBuilder;

use super::mvcc::LiveIter;
use super::{
    auth, io_err, leases, sessions, PinGuard, SmMeta, SmShared, Snapshot, FLOOR_KEY, MEMBERSHIP_KEY, META_KEY,
    ROOT_CURRENT,
};
use crate::codec::{self, StoredVersion};
use crate::durability::{fsync_dir, sled_to_io};
use crate::raft_position::{to_meta, to_position};
use crate::types::{LogId, SnapshotMeta, StoredMembership, TypeConfig};
use keel_datadir::{SnapshotError, SnapshotHeader, SnapshotReader, SnapshotRecord, SnapshotWriter, Tee};

/// Records per sled batch during install.
const INSTALL_BATCH: usize = 1024;

/// The directory of snapshot files, and which one is current.
pub(crate) struct SnapshotStore {
    dir: PathBuf,
    current: Mutex<Option<(SnapshotMeta, PathBuf)>>,
    /// Held for the whole of an install, so a build that finds its tree replaced can wait for the
    /// installed snapshot to become current.
    installing: Mutex<()>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl SnapshotStore {
    /// Open `dir`: keep the newest valid snapshot, remove temporary and older files.
    pub fn open(dir: &Path) -> io::Result<Self> {
        crate::durability::create_dir_durable(dir)?;
        let mut best: Option<(SnapshotMeta, PathBuf)> = None;
        for entry in fs::read_dir(dir)? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "snap") {
                match read_header(&path) {
                    Ok((_, meta)) => {
                        let newer = best.as_ref().is_none_or(|(m, _)| meta.last_log_id > m.last_log_id);
                        if newer {
                            if let Some((_, old)) = best.replace((meta, path)) {
                                fs::remove_file(old)?;
                            }
                        } else {
                            fs::remove_file(&path)?;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(path = %path.display(), error = %e, "removing unreadable snapshot file");
                        fs::remove_file(&path)?;
                    }
                }
            } else {
                // *.tmp, and received files of earlier builds (which named them): leftovers of
                // an interrupted build or transfer.
                fs::remove_file(&path)?;
            }
        }
        fsync_dir(dir)?;
        Ok(SnapshotStore {
            dir: dir.to_path_buf(),
            current: Mutex::new(best),
            installing: Mutex::new(()),
        })
    }

    pub fn current_meta(&self) -> Option<SnapshotMeta> {
        self.current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|(m, _)| m.clone())
    }

    pub fn open_current(&self) -> io::Result<Option<(SnapshotMeta, File)>> {
        let current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        match &*current {
            None => Ok(None),
            Some((meta, path)) => Ok(Some((meta.clone(), File::open(path)?))),
        }
    }

    /// Where an install copies snapshot `meta` while it loads it. Installs run one at a time.
    fn install_tmp_path(&self, meta: &SnapshotMeta) -> PathBuf {
        self.dir.join(format!("{}.snap.tmp", file_stem(meta)))
    }

    /// Where a build writes snapshot `meta`: unique, since a build may run while an install of
    /// the same log position does.
    fn build_tmp_path(&self, meta: &SnapshotMeta) -> PathBuf {
        self.dir
            .join(format!("{}-build-{}.snap.tmp", file_stem(meta), unique_suffix()))
    }

    /// Make a finished temporary file the current snapshot (unless a newer one already is).
    /// Returns the current snapshot afterwards, meta and path together.
    fn commit(&self, meta: &SnapshotMeta, tmp: &Path) -> io::Result<(SnapshotMeta, PathBuf)> {
        let path = self.dir.join(format!("{}.snap", file_stem(meta)));
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((cur_meta, cur_path)) = &*current {
            if cur_meta.last_log_id > meta.last_log_id {
                fs::remove_file(tmp)?;
                return Ok((cur_meta.clone(), cur_path.clone()));
            }
        }
        fs::rename(tmp, &path)?;
        fsync_dir(&self.dir)?;
        if let Some((_, old)) = current.replace((meta.clone(), path.clone())) {
            if old != path {
                fs::remove_file(old)?;
            }
        }
        Ok((meta.clone(), path))
    }

    /// A new file to receive a snapshot into. It is unlinked at once: its space goes back when
    /// its last handle closes, however the transfer ends (a broken stream, an install Raft
    /// refuses, a failed install, a newer transfer, a crash). A named file would have to be
    /// removed on each of those paths, and every path missed leaks a whole snapshot of disk.
    pub fn create_receive_file(&self) -> io::Result<File> {
        let path = self.dir.join(format!("recv-{}.part", unique_suffix()));
        let file = OpenOptions::new().read(true).write(true).create_new(true).open(&path)?;
        fs::remove_file(&path)?;
        Ok(file)
    }
}

/// The stem of the files of snapshot `meta` in the snapshot directory: `<stem>.snap`, and
/// `<stem>.snap.tmp` while it is installed. It is `<term>-<leader node>-<index>` of the last log
/// id the snapshot holds (`0-0-0` for none): numbers only, so a peer cannot name a path.
pub fn file_stem(meta: &SnapshotMeta) -> String {
    match meta.last_log_id {
        Some(l) => format!("{}-{}-{}", l.leader_id.term, l.leader_id.node_id, l.index),
        None => "0-0-0".to_string(),
    }
}

fn unique_suffix() -> String {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    format!("{nanos}-{}", COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// Read only the header of a snapshot file, with its Raft position as openraft's metadata.
pub fn read_header(path: &Path) -> Result<(SnapshotHeader, SnapshotMeta), SnapshotError> {
    let (_, header) = SnapshotReader::open(BufReader::new(File::open(path)?))?;
    let meta = to_meta(&header.raft).map_err(SnapshotError::Corrupt)?;
    Ok((header, meta))
}

/// Builds a snapshot of the state at one revision while applies continue.
pub struct SnapshotBuilder {
    shared: Arc<SmShared>,
    tree: sled::Tree,
    generation: u64,
    meta: SnapshotMeta,
    header: SnapshotHeader,
    /// The leases as of the build's start (or why they could not be read).
    leases: Arc<Result<leases::Captured, String>>,
    /// The auth record as of the build's start, if auth was ever configured (or why it could
    /// not be read).
    auth: Arc<Result<Option<Vec<u8>>, String>>,
    _pin: PinGuard,
}

impl SnapshotBuilder {
    pub(crate) fn new(
        shared: Arc<SmShared>,
        tree: sled::Tree,
        generation: u64,
        revision: u64,
        applied: Option<LogId>,
        membership: StoredMembership,
    ) -> Self {
        let meta = SnapshotMeta {
            last_log_id: applied,
            last_membership: membership,
        };
        let header = SnapshotHeader {
            raft: to_position(&meta),
            revision,
            created_unix_ms: now_ms(),
            cluster_id: shared.config.cluster_id.clone(),
        };
        let pin = shared.pin(revision, applied.map_or(0, |l| l.index));
        let leases = Arc::new(leases::capture(&tree).map_err(|e| e.to_string()));
        let auth = Arc::new(auth::capture(&tree).map_err(|e| e.to_string()));
        SnapshotBuilder {
            shared,
            tree,
            generation,
            meta,
            header,
            leases,
            auth,
            _pin: pin,
        }
    }

    /// The applied index the snapshot holds.
    fn applied_index(&self) -> u64 {
        self.meta.last_log_id.map_or(0, |l| l.index)
    }

    fn build_blocking(&self) -> io::Result<(SnapshotMeta, File)> {
        let shared = &self.shared;
        // The state machine must be durable at least up to this snapshot before openraft purges
        // the log entries it covers.
        shared.dur.sync()?;
        let tmp = shared.snapshots.build_tmp_path(&self.meta);
        let written = (|| -> io::Result<(u64, u64)> {
            let file = File::create(&tmp)?;
            let mut writer = SnapshotWriter::new(BufWriter::with_capacity(256 * 1024, file), &self.header)?;
            for kv in LiveIter::all(&self.tree, self.header.revision) {
                writer.push(&kv.map_err(io_err)?)?;
            }
            let sessions = sessions::sessions_at(&self.tree, self.applied_index(), |s| writer.push_session(s))?;
            let captured = self.leases.as_ref().as_ref().map_err(|e| io::Error::other(e.clone()))?;
            for lease in &captured.leases {
                writer.push_lease(lease)?;
            }
            for (lease, key) in &captured.keys {
                writer.push_lease_key(*lease, key)?;
            }
            let mut other_records = (captured.leases.len() + captured.keys.len()) as u64;
            if let Some(encoded) = self.auth.as_ref().as_ref().map_err(|e| io::Error::other(e.clone()))? {
                writer.push_auth(encoded)?;
                other_records += 1;
            }
            let (out, count, _) = writer.finish()?;
            let file = out.into_inner().map_err(|e| e.into_error())?;
            file.sync_all()?;
            Ok((count - sessions - other_records, sessions))
        })();
        let installed = shared.generation.load(Ordering::Acquire) != self.generation;
        if installed || written.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        if installed {
            // A snapshot was installed meanwhile and our tree is gone: what we read may be partial,
            // or reading failed because the tree was dropped. The installed snapshot is newer than
            // ours anyway. It becomes current when the install is done.
            let _installed = shared.snapshots.installing.lock().unwrap_or_else(|e| e.into_inner());
            return shared
                .snapshots
                .open_current()?
                .ok_or_else(|| io::Error::other("snapshot install raced with build and left no snapshot"));
        }
        let (keys, sessions) = written?;
        let (meta, path) = shared.snapshots.commit(&self.meta, &tmp)?;
        tracing::info!(snapshot = %file_stem(&meta), revision = self.header.revision, keys, sessions, "built snapshot");
        Ok((meta, File::open(path)?))
    }
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    type SnapshotData = tokio::fs::File;

    async fn build_snapshot(&mut self) -> io::Result<Snapshot> {
        let this = SnapshotBuilder {
            shared: self.shared.clone(),
            tree: self.tree.clone(),
            generation: self.generation,
            meta: self.meta.clone(),
            header: self.header.clone(),
            leases: self.leases.clone(),
            auth: self.auth.clone(),
            _pin: self.shared.pin(self.header.revision, self.applied_index()),
        };
        let stem = file_stem(&self.meta);
        let context = |e: io::Error| io::Error::new(e.kind(), format!("building snapshot {stem}: {e}"));
        let started = std::time::Instant::now();
        let (meta, file) = tokio::task::spawn_blocking(move || this.build_blocking())
            .await
            .map_err(|e| context(io_err(e)))?
            .map_err(context)?;
        let bytes = file.metadata().map(|m| m.len()).unwrap_or(0);
        self.shared.observer().snapshot_built(bytes, started.elapsed());
        Ok(Snapshot {
            meta,
            snapshot: tokio::fs::File::from_std(file),
        })
    }
}

/// Replace the state with the snapshot in `file`. Returns the new metadata.
pub(crate) fn install(
    shared: &SmShared,
    expected: &SnapshotMeta,
    mut file: File,
) -> io::Result<(SmMeta, StoredMembership)> {
    let _installing = shared.snapshots.installing.lock().unwrap_or_else(|e| e.into_inner());
    file.seek(SeekFrom::Start(0))?;
    let tmp = shared.snapshots.install_tmp_path(expected);
    let copy = BufWriter::with_capacity(256 * 1024, File::create(&tmp)?);
    let tee = Tee {
        input: BufReader::with_capacity(256 * 1024, file),
        copy,
    };
    let (meta, copy) = match load_generation(shared, Some(expected), tee, None) {
        Ok((meta, tee)) => (meta, tee.copy),
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
    };
    let copy = copy.into_inner().map_err(|e| e.into_error())?;
    copy.sync_all()?;
    drop(copy);
    shared.snapshots.commit(expected, &tmp)?;
    Ok(meta)
}

/// Seed an empty state machine from the snapshot in `input` for a member of a new cluster:
/// the snapshot's data, revision and sessions, its last log id as applied, but `membership`
/// instead of the old cluster's. Returns the snapshot's header.
pub(crate) fn seed(
    shared: &SmShared,
    input: impl Read,
    membership: StoredMembership,
) -> io::Result<(SmMeta, StoredMembership, SnapshotHeader)> {
    let _installing = shared.snapshots.installing.lock().unwrap_or_else(|e| e.into_inner());
    let mut header = None;
    let ((meta, membership), _) = load_generation(shared, None, input, Some((membership, &mut header)))?;
    Ok((meta, membership, header.expect("load_generation reports the header")))
}

/// Load a verified snapshot into a new generation and switch to it. With `expected`, the file
/// must describe that snapshot; with `seed`, its membership is replaced by the given one (and
/// its header handed back).
fn load_generation<R: Read>(
    shared: &SmShared,
    expected: Option<&SnapshotMeta>,
    input: R,
    seed: Option<(StoredMembership, &mut Option<SnapshotHeader>)>,
) -> io::Result<((SmMeta, StoredMembership), R)> {
    let db = shared.dur.db();
    let (mut reader, header) = SnapshotReader::open(input).map_err(io_err)?;
    // The next write adds one to the revision, and a put one to its key's version: values at
    // the end of their range (a damaged or forged file) would overflow them.
    if header.revision == u64::MAX {
        return Err(io::Error::other("snapshot revision is out of range"));
    }
    let raft = to_meta(&header.raft).map_err(io::Error::other)?;
    if let Some(expected) = expected {
        if raft != *expected {
            return Err(io::Error::other(format!(
                "snapshot file describes {:?}, Raft expected {:?}",
                raft.last_log_id, expected.last_log_id
            )));
        }
    }
    let old_name = shared.root.get(ROOT_CURRENT).map_err(sled_to_io)?.map(|n| n.to_vec());
    let next = old_name
        .as_deref()
        .and_then(|n| std::str::from_utf8(n).ok())
        .and_then(|n| n.strip_prefix("sm."))
        .and_then(|n| n.parse::<u64>().ok())
        .map_or(1, |n| n + 1);
    let new_name = format!("sm.{next}");
    db.drop_tree(&new_name).map_err(sled_to_io)?;
    let tree = db.open_tree(&new_name).map_err(sled_to_io)?;

    let applied_index = raft.last_log_id.map_or(0, |l| l.index);
    let mut key_count = 0u64;
    let mut clients = std::collections::HashSet::new();
    let mut lease_ids = std::collections::HashSet::new();
    let mut leased_keys = std::collections::HashSet::new();
    let mut batch = sled::Batch::default();
    let mut in_batch = 0;
    let mut auth_seen = false;
    // A backup restored into a new cluster keeps its users and roles but not their tokens.
    let keep_tokens = seed.is_none();
    let loaded = (|| -> io::Result<()> {
        while let Some(record) = reader.next_record().map_err(io_err)? {
            match record {
                SnapshotRecord::Kv(kv) => {
                    if kv.mod_revision > header.revision {
                        return Err(io::Error::other("snapshot record is newer than the snapshot"));
                    }
                    if kv.version == u64::MAX {
                        return Err(io::Error::other("snapshot record's version is out of range"));
                    }
                    let version = StoredVersion::Live {
                        create_revision: kv.create_revision,
                        version: kv.version,
                        value: kv.value,
                    };
                    batch.insert(codec::version_key(&kv.key, kv.mod_revision), version.encode());
                    key_count += 1;
                }
                SnapshotRecord::Session(session) => {
                    if session.last_index > applied_index {
                        return Err(io::Error::other("snapshot session is newer than the snapshot"));
                    }
                    if !clients.insert(session.client_id) {
                        return Err(io::Error::other("snapshot has two sessions of one client"));
                    }
                    sessions::restore(&mut batch, session).map_err(io_err)?;
                }
                SnapshotRecord::Lease(lease) => {
                    if !lease_ids.insert(lease.id) {
                        return Err(io::Error::other("snapshot has a lease twice"));
                    }
                    leases::restore_lease(&mut batch, &lease);
                }
                SnapshotRecord::LeaseKey { lease, key } => {
                    if !lease_ids.contains(&lease) || !leased_keys.insert(key.clone()) {
                        return Err(io::Error::other("snapshot attaches a key to no lease, or to two"));
                    }
                    leases::restore_lease_key(&mut batch, lease, &key);
                }
                SnapshotRecord::Auth(encoded) => {
                    if std::mem::replace(&mut auth_seen, true) {
                        return Err(io::Error::other("snapshot has two auth records"));
                    }
                    auth::restore(&mut batch, &encoded, keep_tokens)?;
                }
            }
            in_batch += 1;
            if in_batch == INSTALL_BATCH {
                tree.apply_batch(std::mem::take(&mut batch)).map_err(sled_to_io)?;
                in_batch = 0;
            }
        }
        Ok(())
    })();
    if let Err(e) = loaded {
        drop(tree);
        db.drop_tree(&new_name).map_err(sled_to_io)?;
        return Err(e);
    }
    let meta = SmMeta {
        applied: raft.last_log_id,
        revision: header.revision,
        compacted: header.revision,
        key_count,
        session_count: clients.len() as u64,
    };
    let membership = match seed {
        Some((membership, out)) => {
            *out = Some(header.clone());
            membership
        }
        None => raft.last_membership,
    };
    batch.insert(META_KEY, codec::encode(&meta));
    // No history below the snapshot's revision is left to compact (see `sm`, "The history floor").
    batch.insert(FLOOR_KEY, codec::encode(&header.revision));
    batch.insert(MEMBERSHIP_KEY, codec::encode(&membership));
    tree.apply_batch(batch).map_err(sled_to_io)?;
    // next_kv returned None, so the trailer is verified; this only hands back the input.
    let (_, _, input) = reader.finish().map_err(io_err)?;

    // Durable new generation first, then the switch, then the cleanup.
    shared.dur.sync()?;
    shared
        .root
        .insert(ROOT_CURRENT, new_name.as_bytes())
        .map_err(sled_to_io)?;
    shared.dur.sync()?;
    {
        // Readers take tree, generation and revision together under the read lock; the old tree
        // is dropped only after the generation moved, which is what readers and builders check.
        let mut data = shared.data.write().unwrap_or_else(|e| e.into_inner());
        *data = tree;
        shared.revision.store(header.revision, Ordering::Release);
        shared.compacting.store(header.revision, Ordering::Release);
        shared.generation.fetch_add(1, Ordering::AcqRel);
    }
    shared.compactions.send_replace(header.revision);
    if let Some(old) = old_name {
        if old != new_name.as_bytes() {
            db.drop_tree(&old).map_err(sled_to_io)?;
        }
    }
    Ok(((meta, membership), input))
}

#[cfg(test)]
mod tests {
    use super::file_stem;
    use crate::types::{log_id_at, SnapshotMeta};

    #[test]
    fn snapshot_files_are_named_by_log_position() {
        let meta = |l| SnapshotMeta {
            last_log_id: l,
            last_membership: Default::default(),
        };
        assert_eq!(file_stem(&meta(Some(log_id_at(7, 2, 1042)))), "7-2-1042");
        assert_eq!(file_stem(&meta(None)), "0-0-0");
    }
}
