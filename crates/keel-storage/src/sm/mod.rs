//! The key-value state machine, persisted in sled.
//!
//! ## The contract
//! - `apply` is deterministic: the same entries on the same state give the same state and the same
//!   responses on every node, however the entries are grouped into apply calls. It reads nothing
//!   but the tree, the entries and the cluster-wide session limits (no clock, no randomness, no
//!   configuration that may differ between nodes). Node-local housekeeping (history compaction,
//!   preserved session records) runs per apply call and never changes a response.
//! - Each entry is applied as one atomic write set (`writes`) that carries its effects, its
//!   client session record, the sessions it expires, the new revision and the applied log id.
//!   After a crash the state is exactly "after entry N" for some N, and openraft re-applies
//!   N+1.. from the log.
//! - A request with a client session is executed at most once per `(client_id, seq)`: a retry of
//!   the session's newest write is answered with the remembered response, and nothing else
//!   changes but the applied log id (see [`sessions`]).
//! - Applies are not synced one by one. The state machine only has to be durable before the log
//!   entries it depends on are purged, and purges follow snapshots: `build_snapshot` and
//!   `install_snapshot` sync before they return.
//! - An error while applying (I/O, or stored data that does not decode) is returned to openraft,
//!   which stops the node. An entry is never skipped.
//!
//! ## Layout
//! One tree per *generation* (`sm.<n>`), and a `sm_root` tree that names the current one. Installing
//! a snapshot fills a new generation and then switches `sm_root` in one write, so a crash mid-install
//! leaves the old state intact. Inside a generation: MVCC versions (`codec`), history records,
//! client sessions with their expiry index, and `m:meta` / `m:membership`. A snapshot carries the
//! key-value pairs and the sessions, so an install replaces both.
//!
//! ## Revisions and history
//! One store-wide revision counts applied writes (a txn is one). Each entry that wrote has a history
//! record listing its revisions' changes, keyed by its last revision; records and the versions they
//! superseded are compacted once more than `history_revisions` revisions are newer, whole records
//! at a time (so a batch entry's revisions may be kept a little longer), a bounded number per
//! apply call, in chunks of a sixteenth of `history_revisions` (see `compact.rs`). The newest
//! changes are also kept in memory (`recent.rs`), filled by apply after its writes are in sled
//! and before the revision is published, so watchers that keep up read them there; the history
//! in sled stays the record.
//!
//! History compaction, and how etcd's Compact moves it: see `compact.rs`.

mod apply;
mod auth;
mod changes;
mod compact;
mod hash;
pub mod leases;
pub mod mvcc;
mod read;
mod recent;
pub mod sessions;
mod snapshot;
mod txn;
mod writes;

use std::collections::BTreeMap;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use futures::{Stream, TryStreamExt};
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend};
use serde::{Deserialize, Serialize};

pub use apply::{decode_history, HistoryEvent, LeaseEvent, RevisionEvents};
pub use auth::AuthView;
pub use changes::{Change, Changes, ChangesError};
pub use leases::LeaseInfo;
pub use read::{KvReader, ReadError};
use snapshot::SnapshotStore;
pub use snapshot::{file_stem as snapshot_file_stem, read_header as read_snapshot_header, SnapshotBuilder};

use crate::codec;
use crate::durability::{sled_to_io, Durability};
use crate::types::{
    Command, CommandResult, Entry, LogId, Request, Response, SnapshotMeta, StoredMembership, TypeConfig,
};

/// The snapshot of openraft's [`openraft::Snapshot`] type for keel: the file itself.
pub type Snapshot = openraft::Snapshot<crate::types::LeaderId, crate::NodeId, crate::Member, tokio::fs::File>;

const ROOT_CURRENT: &[u8] = b"current";
const META_KEY: &[u8] = b"m:meta";
const MEMBERSHIP_KEY: &[u8] = b"m:membership";
/// The history floor (`u64`), once a [`Command::Compact`] raised it or a snapshot was installed;
/// missing: 0. Its own record because `SmMeta`, a postcard struct, cannot gain a field.
const FLOOR_KEY: &[u8] = b"m:floor";
/// Entries larger than this are applied off the async runtime's own threads.
const LARGE_ENTRY_BYTES: usize = 64 * 1024;
/// At most this many revisions are compacted per apply call, to bound apply latency.
const COMPACT_PER_APPLY: u64 = 256;

/// Tunables of the state machine.
#[derive(Debug, Clone)]
pub struct SmConfig {
    /// Change history kept, in revisions.
    pub history_revisions: u64,
    /// Written into snapshot headers.
    pub cluster_id: String,
    /// A client session unused for this many log entries expires (at least 1). Part of the
    /// replicated apply function: every node of a cluster must use the same value.
    pub session_ttl_entries: u64,
    /// At most this many client sessions are kept; beyond it, the least recently used ones are
    /// evicted (at least 1). Part of the replicated apply function: every node of a cluster must
    /// use the same value.
    pub max_sessions: u64,
}

impl Default for SmConfig {
    fn default() -> Self {
        SmConfig {
            history_revisions: 10_000,
            cluster_id: String::new(),
            session_ttl_entries: 100_000,
            max_sessions: 10_000,
        }
    }
}

impl SmConfig {
    fn session_limits(&self) -> sessions::Limits {
        sessions::Limits {
            ttl_entries: self.session_ttl_entries.max(1),
            max_sessions: self.max_sessions.max(1),
        }
    }
}

/// Persisted bookkeeping, written in the same write set as every applied entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct SmMeta {
    applied: Option<LogId>,
    revision: u64,
    /// History up to and including this revision has been compacted.
    compacted: u64,
    key_count: u64,
    /// Number of client sessions.
    session_count: u64,
}

/// State shared between the apply side and readers.
pub(crate) struct SmShared {
    dur: Arc<Durability>,
    root: sled::Tree,
    /// The current generation's tree.
    data: RwLock<sled::Tree>,
    /// Bumped before a generation is dropped, so concurrent readers and builders notice.
    generation: AtomicU64,
    revision: AtomicU64,
    /// Compaction may remove versions needed by reads at revisions below this; set before the
    /// compaction batch is applied.
    compacting: AtomicU64,
    applied_index: AtomicU64,
    key_count: AtomicU64,
    session_count: AtomicU64,
    /// `(revision, applied index)` pinned by snapshot builds: compaction stays at or below the
    /// smallest revision, and apply preserves the session records the builds need.
    pins: Mutex<BTreeMap<(u64, u64), usize>>,
    snapshots: SnapshotStore,
    config: SmConfig,
    /// Set once, before Raft starts; read on every apply without a lock.
    observer: std::sync::OnceLock<Arc<dyn crate::Observer>>,
    /// What the log store waits on before it purges (see [`Progress`]).
    progress: tokio::sync::watch::Sender<Progress>,
    /// The store revision, for watchers waiting for changes (`changes.rs`).
    revisions: tokio::sync::watch::Sender<u64>,
    /// The newest changes in memory, for watchers that keep up (`recent.rs`).
    recent: recent::Recent,
    /// The compaction point once its batch is in sled (`compacting` is announced before).
    compactions: tokio::sync::watch::Sender<u64>,
    /// The history floor, for reads: refused below it even before compaction got there.
    floor: AtomicU64,
    /// Users, roles and tokens as of the applied state (see [`crate::auth`]).
    auth: RwLock<AuthView>,
    /// Held for writing while apply writes an entry that changes lease records, and for reading
    /// by lease reads, which so never see half an entry (see `writes`).
    writing: RwLock<()>,
    /// `auth.state.enabled`, read without the lock: every client request asks it first.
    auth_enabled: std::sync::atomic::AtomicBool,
}

/// How far the state machine has got, for the log store: it never purges entries the state
/// machine does not hold yet (`log_store/mod.rs`, "Purging").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    /// The applied index (after an install: the snapshot's).
    pub applied: u64,
    /// An apply or install failed: openraft stops the state machine, so `applied` will not
    /// advance again in this process.
    pub failed: bool,
}

impl SmShared {
    fn observer(&self) -> &dyn crate::Observer {
        self.observer.get().map_or(&crate::observe::Ignore, |o| o.as_ref())
    }

    /// The current tree with its generation and revision, read together: an install swaps all
    /// three under the write lock.
    fn tree(&self) -> (sled::Tree, u64, u64) {
        let tree = self.data.read().unwrap_or_else(|e| e.into_inner());
        (
            tree.clone(),
            self.generation.load(Ordering::Acquire),
            self.revision.load(Ordering::Acquire),
        )
    }

    fn publish(&self, meta: &SmMeta) {
        let applied = meta.applied.map_or(0, |l| l.index);
        self.applied_index.store(applied, Ordering::Release);
        self.progress.send_if_modified(|p| {
            let advanced = p.applied != applied;
            p.applied = applied;
            advanced
        });
        self.key_count.store(meta.key_count, Ordering::Release);
        self.session_count.store(meta.session_count, Ordering::Release);
        self.revision.store(meta.revision, Ordering::Release);
        self.revisions
            .send_if_modified(|r| std::mem::replace(r, meta.revision) != meta.revision);
    }

    fn set_auth(&self, view: AuthView) {
        let enabled = view.state.enabled;
        *self.auth.write().unwrap_or_else(|e| e.into_inner()) = view;
        self.auth_enabled.store(enabled, Ordering::Release);
    }

    fn pins(&self) -> std::sync::MutexGuard<'_, BTreeMap<(u64, u64), usize>> {
        self.pins.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn pin(self: &Arc<Self>, revision: u64, applied_index: u64) -> PinGuard {
        let key = (revision, applied_index);
        *self.pins().entry(key).or_default() += 1;
        PinGuard {
            shared: self.clone(),
            key,
        }
    }

    /// The highest applied index pinned by a snapshot build.
    fn max_pinned_index(&self) -> Option<u64> {
        self.pins().keys().map(|&(_, index)| index).max()
    }
}

/// Keeps compaction at or below a revision, and the session records as of an applied index, while
/// alive.
pub(crate) struct PinGuard {
    shared: Arc<SmShared>,
    key: (u64, u64),
}

impl Drop for PinGuard {
    fn drop(&mut self) {
        let mut pins = self.shared.pins();
        if let Some(n) = pins.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                pins.remove(&self.key);
            }
        }
    }
}

/// The state machine handed to openraft. Readers use [`StateMachine::reader`].
pub struct StateMachine {
    shared: Arc<SmShared>,
    meta: SmMeta,
    membership: StoredMembership,
    /// Preserved session records may exist (see [`sessions`]).
    preserved: bool,
    /// Some key may be attached to a lease (see `apply::Apply::leased_keys`).
    leased_keys: bool,
    /// The history floor: see "The history floor" above.
    floor: u64,
    /// Users, roles and tokens (see [`crate::auth`]), as published in `SmShared::auth`.
    auth: AuthView,
    /// The highest index the log store has written into sled: no entry above it is applied (the
    /// log store's "Applies wait for the write"). None: apply at once (tests of the state machine
    /// alone).
    log_written: Option<tokio::sync::watch::Receiver<u64>>,
}

fn io_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

impl StateMachine {
    /// Open (or create) the state machine in `dur`'s database, with snapshots under `snapshot_dir`.
    pub fn open(dur: Arc<Durability>, snapshot_dir: &Path, config: SmConfig) -> io::Result<Self> {
        let db = dur.db();
        let root = db.open_tree("sm_root").map_err(sled_to_io)?;
        let current = match root.get(ROOT_CURRENT).map_err(sled_to_io)? {
            Some(name) => String::from_utf8(name.to_vec()).map_err(io_err)?,
            None => {
                root.insert(ROOT_CURRENT, "sm.0").map_err(sled_to_io)?;
                "sm.0".to_string()
            }
        };
        // Generations other than the current one are leftovers of an interrupted install.
        for name in db.tree_names() {
            if name.starts_with(b"sm.") && name != current.as_bytes() {
                db.drop_tree(&name).map_err(sled_to_io)?;
            }
        }
        let tree = db.open_tree(&current).map_err(sled_to_io)?;
        let read_meta = || -> io::Result<SmMeta> {
            match tree.get(META_KEY).map_err(sled_to_io)? {
                Some(bytes) => codec::decode(&bytes).map_err(io_err),
                None => Ok(SmMeta::default()),
            }
        };
        let mut meta = read_meta()?;
        // An entry that a build with redo records left half-written is finished first (see
        // `writes`).
        if let Some(index) = writes::recover(&tree, meta.applied.map(|l| l.index)).map_err(io_err)? {
            tracing::info!(index, "finished writing an entry that a crash interrupted");
            meta = read_meta()?;
        }
        let membership: StoredMembership = match tree.get(MEMBERSHIP_KEY).map_err(sled_to_io)? {
            Some(bytes) => codec::decode(&bytes).map_err(io_err)?,
            None => StoredMembership::default(),
        };
        let leased_keys = leases::any_leased_key(&tree).map_err(io_err)?;
        let floor = compact::read_floor(&tree)?;
        let auth = auth::load(&tree)?;
        let snapshots = SnapshotStore::open(snapshot_dir)?;
        if let Some(snap) = snapshots.current_meta() {
            if snap.last_log_id > meta.applied {
                return Err(io::Error::other(format!(
                    "state machine (applied {:?}) is behind its own snapshot ({:?}): the data directory is damaged",
                    meta.applied, snap.last_log_id
                )));
            }
        }
        let shared = Arc::new(SmShared {
            dur,
            root,
            data: RwLock::new(tree),
            generation: AtomicU64::new(0),
            revision: AtomicU64::new(0),
            compacting: AtomicU64::new(meta.compacted),
            applied_index: AtomicU64::new(0),
            key_count: AtomicU64::new(0),
            session_count: AtomicU64::new(0),
            pins: Mutex::new(BTreeMap::new()),
            snapshots,
            config,
            observer: std::sync::OnceLock::new(),
            progress: tokio::sync::watch::Sender::new(Progress::default()),
            revisions: tokio::sync::watch::Sender::new(meta.revision),
            recent: recent::Recent::default(),
            compactions: tokio::sync::watch::Sender::new(meta.compacted),
            floor: AtomicU64::new(floor),
            auth_enabled: std::sync::atomic::AtomicBool::new(auth.state.enabled),
            auth: RwLock::new(auth.clone()),
            writing: RwLock::new(()),
        });
        shared.publish(&meta);
        Ok(StateMachine {
            shared,
            meta,
            membership,
            // Left over from a build that a restart interrupted.
            preserved: true,
            leased_keys,
            floor,
            auth,
            log_written: None,
        })
    }

    /// Report apply and snapshot work to `observer` from now on. Only the first call counts.
    pub fn set_observer(&self, observer: Arc<dyn crate::Observer>) {
        let _ = self.shared.observer.set(observer);
    }

    /// Seed this empty state machine from a snapshot (a backup) for a member of a new cluster:
    /// the snapshot's keys, revision and sessions, its last log id as applied, and `membership`
    /// instead of the old cluster's. See [`crate::restore`].
    pub fn seed_from_snapshot(
        &mut self,
        input: impl std::io::Read,
        membership: StoredMembership,
    ) -> io::Result<crate::SnapshotHeader> {
        if self.meta.applied.is_some() {
            return Err(io::Error::other("the state machine is not empty"));
        }
        let (meta, membership, header) = snapshot::seed(&self.shared, input, membership)?;
        self.meta = meta;
        self.membership = membership;
        self.leased_keys = leases::any_leased_key(&self.shared.tree().0).map_err(io_err)?;
        self.floor = compact::read_floor(&self.shared.tree().0)?;
        self.shared.floor.store(self.floor, Ordering::Release);
        self.reload_auth()?;
        self.shared.publish(&self.meta);
        Ok(header)
    }

    /// Read the auth records of the current tree again (after an install) and publish them.
    fn reload_auth(&mut self) -> io::Result<()> {
        self.auth = auth::load(&self.shared.tree().0)?;
        self.shared.set_auth(self.auth.clone());
        Ok(())
    }

    /// Apply no entry before the log store has written it into sled (`written`: see
    /// [`crate::LogStore::written`]). [`crate::open`] does this.
    pub fn gate_applies_on(&mut self, written: tokio::sync::watch::Receiver<u64>) {
        self.log_written = Some(written);
    }

    /// Apply at once, whatever the log store holds: for tests of the state machine alone
    /// (openraft's storage suite applies entries it never appended).
    pub fn without_apply_gate(mut self) -> Self {
        self.log_written = None;
        self
    }

    /// Follow the state machine's progress (the log store's purge waits on it).
    pub fn progress(&self) -> tokio::sync::watch::Receiver<Progress> {
        self.shared.progress.subscribe()
    }

    /// Record that the state machine failed: whoever waits for it to advance must stop waiting.
    fn failed<T>(&self, result: io::Result<T>) -> io::Result<T> {
        if result.is_err() {
            self.shared.progress.send_modify(|p| p.failed = true);
        }
        result
    }

    /// A handle for serving reads concurrently with apply.
    pub fn reader(&self) -> KvReader {
        KvReader::new(self.shared.clone())
    }

    /// A handle that makes files to receive snapshots into, for the peer service: it must exist
    /// before the state machine moves into openraft.
    pub fn snapshot_inbox(&self) -> SnapshotInbox {
        SnapshotInbox(self.shared.clone())
    }

    /// Apply `entries` in order and return their responses: what openraft's `apply` does, without
    /// the responders (for tests and tools that drive the state machine alone).
    pub fn apply_entries<I: IntoIterator<Item = Entry>>(&mut self, entries: I) -> io::Result<Vec<Response>> {
        let result = (|| {
            let mut round = self.begin_apply();
            let mut responses = Vec::new();
            for entry in entries {
                responses.push(self.apply_entry(&round.tree, &entry, round.max_pin)?);
            }
            round.entries = responses.len();
            self.end_apply(round)?;
            Ok(responses)
        })();
        self.failed(result)
    }

    fn begin_apply(&mut self) -> ApplyRound {
        let (tree, _, _) = self.shared.tree();
        let max_pin = self.shared.max_pinned_index();
        self.preserved |= max_pin.is_some();
        ApplyRound {
            tree,
            max_pin,
            started: std::time::Instant::now(),
            entries: 0,
        }
    }

    /// Node-local housekeeping after a round of applies.
    fn end_apply(&mut self, round: ApplyRound) -> io::Result<()> {
        self.compact_step(&round.tree)?;
        self.clean_preserved(&round.tree)?;
        self.shared.observer().applied(round.entries, round.started.elapsed());
        Ok(())
    }

    /// openraft's apply: each response goes to its waiting client as soon as its entry is applied
    /// and published (so a client that has its answer also reads the write on this node).
    async fn apply_stream<S>(&mut self, mut entries: S) -> io::Result<()>
    where
        S: Stream<Item = io::Result<EntryResponder<TypeConfig>>> + Unpin,
    {
        let mut round = self.begin_apply();
        let threaded = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        while let Some((entry, responder)) = entries.try_next().await? {
            let index = entry.log_id.index;
            if let Some(written) = &mut self.log_written {
                if *written.borrow() < index {
                    written.wait_for(|w| *w >= index).await.map_err(|_| {
                        io::Error::other(format!("the log store stopped before entry {index} was written"))
                    })?;
                }
            }
            let response = if threaded && codec::encoded_len(&entry) > LARGE_ENTRY_BYTES {
                // Writing a MiB into sled takes milliseconds: let the runtime move its other
                // tasks (the peer service answering the leader's heartbeats among them) to
                // another thread meanwhile.
                tokio::task::block_in_place(|| self.apply_entry(&round.tree, &entry, round.max_pin))?
            } else {
                self.apply_entry(&round.tree, &entry, round.max_pin)?
            };
            round.entries += 1;
            if let Some(responder) = responder {
                responder.send(response);
            }
        }
        self.end_apply(round)
    }

    /// Apply one entry as one atomic write set (see `writes`).
    fn apply_entry(&mut self, tree: &sled::Tree, entry: &Entry, max_pin: Option<u64>) -> io::Result<Response> {
        let log_id = entry.log_id;
        let fail = |e: io::Error| io::Error::new(e.kind(), format!("applying {log_id}: {e}"));
        let mut meta = self.meta.clone();
        let mut ctx = EntryApply {
            tree,
            scope: sessions::Scope {
                index: log_id.index,
                max_pin,
            },
            apply: apply::Apply::new(tree, meta.revision, self.leased_keys, self.floor),
            sessions: sessions::Written::new(),
            session_count: meta.session_count,
            auth: auth::AuthWork::new(self.auth.clone()),
        };
        let mut membership = None;
        let response = match &entry.payload {
            EntryPayload::Blank => Response {
                revision: meta.revision,
                result: CommandResult::None,
            },
            EntryPayload::Membership(m) => {
                let stored = StoredMembership::new(Some(log_id), m.clone());
                ctx.apply.batch.insert(MEMBERSHIP_KEY, codec::encode(&stored));
                membership = Some(stored);
                Response {
                    revision: meta.revision,
                    result: CommandResult::None,
                }
            }
            EntryPayload::Normal(req) => ctx.request(req).map_err(|e| fail(io_err(e)))?,
        };
        let limits = self.shared.config.session_limits();
        ctx.apply.finish();
        let mut batch = std::mem::take(&mut ctx.apply.batch);
        let auth = ctx.auth.finish(&mut batch);
        ctx.scope
            .expire(tree, &mut batch, &mut ctx.session_count, &ctx.sessions, limits)
            .map_err(|e| fail(io_err(e)))?;
        meta.revision = ctx.apply.revision();
        meta.key_count = meta.key_count.saturating_add_signed(ctx.apply.key_delta);
        meta.session_count = ctx.session_count;
        meta.applied = Some(log_id);
        batch.insert(META_KEY, codec::encode(&meta));
        // Lease records are not versioned: their readers wait for the whole set (see `writes`).
        let touches_leases = batch.touches_any(&[
            codec::LEASE_PREFIX,
            codec::LEASE_KEY_PREFIX,
            codec::KEY_LEASE_PREFIX,
            codec::LEASE_OWNER_PREFIX,
        ]);
        let writing = touches_leases.then(|| self.shared.writing.write().unwrap_or_else(|e| e.into_inner()));
        batch.write(tree).map_err(|e| fail(io_err(e)))?;
        drop(writing);
        // Before the revision is published: a watcher told of it finds its changes there.
        let generation = self.shared.generation.load(Ordering::Acquire);
        self.shared.recent.push(generation, ctx.apply.take_changes());
        self.meta = meta;
        self.leased_keys = ctx.apply.leased_keys;
        self.floor = ctx.apply.floor;
        self.shared.floor.store(self.floor, Ordering::Release);
        if let Some(m) = membership {
            self.membership = m;
        }
        if let Some(view) = auth {
            self.auth = view.clone();
            self.shared.set_auth(view);
        }
        self.shared.publish(&self.meta);
        if !ctx.apply.lease_events.is_empty() {
            self.shared.observer().leases_changed(&ctx.apply.lease_events);
        }
        Ok(response)
    }

    /// Delete preserved session records once no snapshot build needs them (node-local).
    fn clean_preserved(&mut self, tree: &sled::Tree) -> io::Result<()> {
        if !self.preserved || !self.shared.pins().is_empty() {
            return Ok(());
        }
        self.preserved = sessions::clean_preserved(tree).map_err(io_err)?;
        Ok(())
    }
}

/// The effects of one log entry while its requests are applied.
struct EntryApply<'a> {
    tree: &'a sled::Tree,
    scope: sessions::Scope,
    apply: apply::Apply<'a>,
    /// Session records this entry changed so far (and so the sessions it used).
    sessions: sessions::Written,
    session_count: u64,
    auth: auth::AuthWork,
}

impl EntryApply<'_> {
    /// Apply a client request, or each request of a batch in order: execute its command, or
    /// answer it from its session.
    fn request(&mut self, req: &Request) -> Result<Response, mvcc::MvccError> {
        if let Command::Batch(requests) = &req.command {
            // A batch never carries a session itself; its requests do.
            let responses = requests
                .iter()
                .map(|r| self.request(r))
                .collect::<Result<Vec<_>, _>>()?;
            return Ok(Response {
                revision: self.apply.revision(),
                result: CommandResult::Batch(responses),
            });
        }
        let mut prev = None;
        if let Some(session) = req.session {
            match sessions::decide(self.tree, &self.sessions, session, self.apply.revision())? {
                sessions::Decision::Execute { prev: p } => prev = p,
                sessions::Decision::Answer { response, refresh } => {
                    if let Some(cur) = refresh {
                        let batch = &mut self.apply.batch;
                        self.scope.refresh(batch, &mut self.sessions, session.client_id, &cur)?;
                    }
                    return Ok(response);
                }
            }
        }
        let result = self.auth.execute(&mut self.apply, &req.command)?;
        let response = Response {
            revision: self.apply.revision(),
            result,
        };
        // A request refused by the auth rules had no effect: it is not remembered, so that its
        // retry (after the client logged in, or was granted the permission) is executed.
        let refused = matches!(response.result, CommandResult::AuthRefused(_));
        if let Some(session) = req.session.filter(|_| !refused) {
            if prev.is_none() {
                self.session_count += 1;
            }
            let batch = &mut self.apply.batch;
            let (id, seq) = (session.client_id, session.seq);
            self.scope
                .remember(batch, &mut self.sessions, id, seq, prev.as_ref(), &response);
        }
        Ok(response)
    }
}

/// One call of apply: the tree it writes and what it must preserve for snapshot builds.
struct ApplyRound {
    tree: sled::Tree,
    max_pin: Option<u64>,
    started: std::time::Instant,
    entries: usize,
}

/// Makes files to receive snapshots into (see [`StateMachine::snapshot_inbox`]).
#[derive(Clone)]
pub struct SnapshotInbox(Arc<SmShared>);

impl SnapshotInbox {
    /// A new, already unlinked file in the snapshot directory (see `SnapshotStore`).
    pub fn create_file(&self) -> io::Result<tokio::fs::File> {
        Ok(tokio::fs::File::from_std(self.0.snapshots.create_receive_file()?))
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = tokio::fs::File;
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> io::Result<(Option<LogId>, StoredMembership)> {
        Ok((self.meta.applied, self.membership.clone()))
    }

    async fn apply<S>(&mut self, entries: S) -> io::Result<()>
    where
        S: Stream<Item = io::Result<EntryResponder<TypeConfig>>> + Unpin + OptionalSend,
    {
        let result = self.apply_stream(entries).await;
        self.failed(result)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        let (tree, generation, _) = self.shared.tree();
        SnapshotBuilder::new(
            self.shared.clone(),
            tree,
            generation,
            self.meta.revision,
            self.meta.applied,
            self.membership.clone(),
        )
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMeta, snapshot: tokio::fs::File) -> io::Result<()> {
        let result = self.install(meta, snapshot).await;
        self.failed(result)
    }

    async fn get_current_snapshot(&mut self) -> io::Result<Option<Snapshot>> {
        let current = self.shared.snapshots.open_current()?;
        Ok(current.map(|(meta, file)| Snapshot {
            meta,
            snapshot: tokio::fs::File::from_std(file),
        }))
    }
}

impl StateMachine {
    async fn install(&mut self, meta: &SnapshotMeta, snapshot: tokio::fs::File) -> io::Result<()> {
        let started = std::time::Instant::now();
        let file = snapshot.into_std().await;
        let shared = self.shared.clone();
        let expected = meta.clone();
        let context = |e: io::Error| {
            io::Error::new(
                e.kind(),
                format!("installing snapshot {}: {e}", snapshot::file_stem(meta)),
            )
        };
        let (new_meta, membership) = tokio::task::spawn_blocking(move || snapshot::install(&shared, &expected, file))
            .await
            .map_err(|e| context(io_err(e)))?
            .map_err(context)?;
        self.meta = new_meta;
        self.membership = membership;
        self.leased_keys = leases::any_leased_key(&self.shared.tree().0).map_err(io_err)?;
        self.floor = compact::read_floor(&self.shared.tree().0)?;
        self.shared.floor.store(self.floor, Ordering::Release);
        self.reload_auth()?;
        self.shared.publish(&self.meta);
        self.shared.observer().snapshot_installed(started.elapsed());
        match self.reader().leases() {
            Ok(leases) => self.shared.observer().leases_reloaded(&leases),
            Err(e) => tracing::error!(error = %e, "cannot read the installed snapshot's leases"),
        }
        Ok(())
    }
}
