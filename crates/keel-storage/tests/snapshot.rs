//! Snapshots of the state machine, driven through openraft's storage traits the way openraft drives
//! them: build while applies continue, install into a fresh store, survive restarts, refuse damaged
//! files.
//!
//! Every test keeps an in-memory model of the key-value state (a `BTreeMap` updated from the same
//! commands that are applied) and compares the store against it key by key, including
//! `create_revision`, `mod_revision` and `version`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use keel_storage::EntryPayload;
use keel_storage::{
    Command, DeleteOp, Entry, KeyRange, KeyValue, LogId, Member, PutOp, RangeOp, Request, SmConfig, SnapshotMeta,
    SnapshotReader, Store, StoreConfig, Txn, TxnOp,
};
use openraft::storage::RaftStateMachine;
use openraft::{Membership, RaftSnapshotBuilder};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

/// Entries per `apply` call while loading.
const APPLY_BATCH: usize = 1000;

fn log_id(index: u64) -> LogId {
    keel_storage::log_id_at(1, 1, index)
}

fn open(dir: &Path) -> Store {
    keel_storage::open(dir, &StoreConfig::default()).expect("open store")
}

/// A store that keeps only `history` revisions of history, so compaction runs often.
fn open_with_history(dir: &Path, history: u64) -> Store {
    let config = StoreConfig {
        sm: SmConfig {
            history_revisions: history,
            ..SmConfig::default()
        },
        ..StoreConfig::default()
    };
    keel_storage::open(dir, &config).expect("open store")
}

fn members() -> Membership<u64, Member> {
    let nodes: BTreeMap<u64, Member> = (1..=3)
        .map(|id| {
            let member = Member {
                peer_addr: format!("10.0.0.{id}:7000"),
                client_addr: format!("10.0.0.{id}:7001"),
            };
            (id, member)
        })
        .collect();
    Membership::new(vec![BTreeSet::from([1, 2, 3])], nodes).unwrap()
}

fn put(key: &[u8], value: &[u8]) -> Command {
    Command::Put(PutOp {
        key: key.to_vec(),
        value: value.to_vec(),
        prev_kv: false,
    })
}

fn delete(range: KeyRange) -> Command {
    Command::Delete(DeleteOp { range, prev_kv: false })
}

/// The key-value state the store should have, maintained independently of the store.
#[derive(Clone, Default)]
struct Model {
    kvs: BTreeMap<Vec<u8>, KeyValue>,
    revision: u64,
}

impl Model {
    /// Apply `cmd` as keel does; returns the revision after it.
    fn apply(&mut self, cmd: &Command) -> u64 {
        let ops: Vec<TxnOp> = match cmd {
            Command::Put(p) => vec![TxnOp::Put(p.clone())],
            Command::Delete(d) => vec![TxnOp::Delete(d.clone())],
            Command::Txn(txn) => {
                assert!(txn.compares.is_empty(), "these tests only use unconditional txns");
                txn.success.clone()
            }
            // Each request of a batch is applied as if it were its own entry.
            Command::Batch(requests) => {
                for r in requests {
                    self.apply(&r.command);
                }
                return self.revision;
            }
            _ => unreachable!("these tests use no leases"),
        };
        // One command is one revision, whatever it writes; a command that changes nothing takes
        // none. (No key is written twice by one command.)
        let rev = self.revision + 1;
        let mut changed = false;
        for op in ops {
            match op {
                TxnOp::Put(p) => {
                    let (create_revision, version) = match self.kvs.get(&p.key) {
                        Some(old) => (old.create_revision, old.version + 1),
                        None => (rev, 1),
                    };
                    let kv = KeyValue {
                        key: p.key.clone(),
                        value: p.value,
                        create_revision,
                        mod_revision: rev,
                        version,
                    };
                    self.kvs.insert(p.key, kv);
                    changed = true;
                }
                TxnOp::Delete(d) => {
                    let victims: Vec<Vec<u8>> = match &d.range {
                        KeyRange::Key(k) => self.kvs.get_key_value(k).map(|(k, _)| k.clone()).into_iter().collect(),
                        KeyRange::Prefix(p) => self
                            .kvs
                            .range(p.clone()..)
                            .map(|(k, _)| k)
                            .take_while(|k| k.starts_with(p))
                            .cloned()
                            .collect(),
                        _ => unreachable!("these tests delete single keys and prefixes"),
                    };
                    for k in victims {
                        self.kvs.remove(&k);
                        changed = true;
                    }
                }
                TxnOp::Range(_) | TxnOp::LeasedPut(_) => unreachable!("these tests do not read in txns or use leases"),
            }
        }
        if changed {
            self.revision = rev;
        }
        self.revision
    }
}

/// Feeds entries to a store's state machine in batches, keeping the model in step and checking
/// every response's revision against it.
struct Driver {
    store: Store,
    model: Model,
    /// Index of the last entry handed out.
    index: u64,
    pending: Vec<Entry>,
    expected_revisions: Vec<u64>,
}

impl Driver {
    fn new(store: Store) -> Self {
        Driver {
            store,
            model: Model::default(),
            index: 0,
            pending: Vec::new(),
            expected_revisions: Vec::new(),
        }
    }

    fn push_payload(&mut self, payload: EntryPayload, expected_revision: u64) -> Entry {
        self.index += 1;
        let entry = Entry {
            log_id: log_id(self.index),
            payload,
        };
        self.pending.push(entry.clone());
        self.expected_revisions.push(expected_revision);
        entry
    }

    /// Queue `cmd`; returns the queued entry.
    fn push(&mut self, cmd: Command) -> Entry {
        let rev = self.model.apply(&cmd);
        self.push_payload(EntryPayload::Normal(Request::new(cmd)), rev)
    }

    fn push_membership(&mut self, m: Membership<u64, Member>) {
        let rev = self.model.revision;
        self.push_payload(EntryPayload::Membership(m), rev);
    }

    fn push_blank(&mut self) {
        let rev = self.model.revision;
        self.push_payload(EntryPayload::Blank, rev);
    }

    /// Apply everything queued, in one `apply` call.
    async fn flush(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let entries = std::mem::take(&mut self.pending);
        let expected = std::mem::take(&mut self.expected_revisions);
        let responses = self.store.sm.apply_entries(entries).expect("apply");
        let got: Vec<u64> = responses.iter().map(|r| r.revision).collect();
        assert_eq!(got, expected, "response revisions");
    }

    async fn flush_if_full(&mut self, batch: usize) {
        if self.pending.len() >= batch {
            self.flush().await;
        }
    }

    fn last_log_id(&self) -> LogId {
        log_id(self.index)
    }
}

fn key(i: u64) -> Vec<u8> {
    let mut k = format!("key/{:03}/{i:07}", i % 1000).into_bytes();
    if i.is_multiple_of(97) {
        // Exercise the key escaping on the way into and out of snapshots.
        k.extend_from_slice(&[0x00, 0xFF, 0x00]);
    }
    k
}

fn value(rng: &mut StdRng, index: u64) -> Vec<u8> {
    if rng.random_ratio(1, 200) {
        return Vec::new();
    }
    let mut v = format!("v{index}:").into_bytes();
    let pad = rng.random_range(0..48);
    v.extend((0..pad).map(|j| (index as u8).wrapping_add(j)));
    v
}

fn txn(ops: Vec<TxnOp>) -> Command {
    Command::Txn(Txn {
        compares: Vec::new(),
        success: ops,
        failure: Vec::new(),
    })
}

/// `count` distinct keys below `below`, none of them in `taken`; adds them to `taken`.
fn pick(rng: &mut StdRng, below: u64, count: usize, taken: &mut BTreeSet<u64>) -> Vec<u64> {
    let mut out = Vec::new();
    for _ in 0..count {
        let j = rng.random_range(0..below);
        if taken.insert(j) {
            out.push(j);
        }
    }
    out
}

/// Load keys `0..n`: mostly in txns of 50 new keys plus a few overwrites and deletes of older
/// keys (a txn applies much faster per key than single puts, which matters in debug builds), and
/// between them single puts and deletes (of one key, a missing key, or a whole key group), one
/// membership entry and one blank entry. So revisions, versions and log indexes all differ.
async fn load(d: &mut Driver, rng: &mut StdRng, n: u64) {
    let mut next = 0;
    while next < n {
        let fresh = next..(next + 50).min(n);
        let mut taken: BTreeSet<u64> = fresh.clone().collect();
        let mut ops = Vec::new();
        for i in fresh {
            ops.push(TxnOp::Put(PutOp {
                key: key(i),
                value: value(rng, d.index + 1),
                prev_kv: false,
            }));
        }
        if next > 0 {
            for j in pick(rng, next, 4, &mut taken) {
                ops.push(TxnOp::Put(PutOp {
                    key: key(j),
                    value: value(rng, d.index + 1),
                    prev_kv: false,
                }));
            }
            for j in pick(rng, next, 2, &mut taken) {
                ops.push(TxnOp::Delete(DeleteOp {
                    range: KeyRange::Key(key(j)),
                    prev_kv: false,
                }));
            }
        }
        d.push(txn(ops));
        next = (next + 50).min(n);
        if rng.random_ratio(1, 2) {
            let v = value(rng, d.index + 1);
            d.push(put(&key(rng.random_range(0..next)), &v));
        }
        if rng.random_ratio(1, 4) {
            d.push(delete(KeyRange::Key(key(rng.random_range(0..next)))));
        }
        if rng.random_ratio(1, 50) {
            d.push(delete(KeyRange::Key(b"never-written".to_vec())));
        }
        if next % 10_000 == 5_000 {
            // Every key in one of the 1000 key groups: one revision, many keys.
            d.push(delete(KeyRange::Prefix(format!("key/{:03}/", next % 997).into_bytes())));
        }
        if next == (n / 2).next_multiple_of(50) {
            d.push_membership(members());
        }
        if next == (n / 3).next_multiple_of(50) {
            d.push_blank();
        }
        d.flush_if_full(APPLY_BATCH).await;
    }
    d.flush().await;
}

/// `count` entries that overwrite and delete keys below `loaded` and create keys from
/// `fresh_from` on; one in ten is a txn of several such writes.
fn churn(d: &mut Driver, rng: &mut StdRng, loaded: u64, fresh_from: u64, count: usize) -> Vec<Entry> {
    let mut entries = Vec::with_capacity(count);
    let mut fresh = fresh_from;
    for _ in 0..count {
        let entry = match rng.random_range(0..11) {
            // A batch entry, as the leader's proposer builds: puts and deletes, one key possibly
            // written twice (by two of its requests), each request its own revision.
            10 => {
                let j = rng.random_range(0..loaded);
                let mut requests = Vec::new();
                for _ in 0..rng.random_range(2..6) {
                    let k = if rng.random_ratio(1, 3) {
                        j
                    } else {
                        rng.random_range(0..loaded)
                    };
                    let cmd = if rng.random_ratio(1, 4) {
                        delete(KeyRange::Key(key(k)))
                    } else {
                        put(&key(k), &value(rng, d.index + 1))
                    };
                    requests.push(Request::new(cmd));
                }
                d.push(Command::Batch(requests))
            }
            0..=3 => {
                let v = value(rng, d.index + 1);
                d.push(put(&key(rng.random_range(0..loaded)), &v))
            }
            4..=5 => d.push(delete(KeyRange::Key(key(rng.random_range(0..loaded))))),
            6..=8 => {
                let v = value(rng, d.index + 1);
                fresh += 1;
                d.push(put(&key(fresh), &v))
            }
            _ => {
                let mut taken = BTreeSet::new();
                let mut ops = Vec::new();
                for j in pick(rng, loaded, 6, &mut taken) {
                    ops.push(TxnOp::Put(PutOp {
                        key: key(j),
                        value: value(rng, d.index + 1),
                        prev_kv: false,
                    }));
                }
                for j in pick(rng, loaded, 3, &mut taken) {
                    ops.push(TxnOp::Delete(DeleteOp {
                        range: KeyRange::Key(key(j)),
                        prev_kv: false,
                    }));
                }
                fresh += 1;
                ops.push(TxnOp::Put(PutOp {
                    key: key(fresh),
                    value: value(rng, d.index + 1),
                    prev_kv: false,
                }));
                d.push(txn(ops))
            }
        };
        entries.push(entry);
    }
    entries
}

/// Every live pair of the store, and the revision it was read at.
fn contents(store: &Store) -> (Vec<KeyValue>, u64) {
    let (result, rev) = store
        .sm
        .reader()
        .range(&RangeOp::new(KeyRange::Prefix(Vec::new())))
        .expect("range read");
    assert!(!result.more);
    assert_eq!(result.count as usize, result.kvs.len());
    (result.kvs, rev)
}

/// The store holds exactly the model's state: every key with its value, create_revision,
/// mod_revision and version, and the model's revision.
fn assert_matches(store: &Store, model: &Model, what: &str) {
    let (kvs, rev) = contents(store);
    assert_eq!(rev, model.revision, "{what}: revision");
    assert_eq!(store.sm.reader().revision(), model.revision, "{what}: revision");
    assert_eq!(
        kvs.len(),
        model.kvs.len(),
        "{what}: number of live keys in a full range read"
    );
    assert_eq!(
        store.sm.reader().key_count(),
        model.kvs.len() as u64,
        "{what}: key_count"
    );
    for (got, want) in kvs.iter().zip(model.kvs.values()) {
        assert_eq!(got, want, "{what}: pair differs");
    }
}

async fn build(store: &mut Store) -> keel_storage::sm::Snapshot {
    let mut builder = store.sm.get_snapshot_builder().await;
    builder.build_snapshot().await.expect("build snapshot")
}

async fn read_all(file: &mut tokio::fs::File) -> Vec<u8> {
    file.seek(std::io::SeekFrom::Start(0)).await.expect("seek");
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).await.expect("read snapshot");
    bytes
}

/// Send `bytes` the way openraft receives a snapshot: into the box from
/// `begin_receiving_snapshot`, then `install_snapshot` with that box.
async fn receive_and_install(store: &mut Store, meta: &SnapshotMeta, bytes: &[u8]) -> std::io::Result<()> {
    let mut rx = store.sm.snapshot_inbox().create_file()?;
    rx.write_all(bytes).await.expect("write received bytes");
    rx.flush().await.expect("flush received bytes");
    store.sm.install_snapshot(meta, rx).await
}

/// Names of the files in `<dir>/snapshots`.
fn snapshot_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir.join("snapshots"))
        .expect("snapshot dir")
        .map(|e| e.expect("dir entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

async fn current_snapshot(store: &mut Store) -> Option<(SnapshotMeta, Vec<u8>)> {
    let snap = store.sm.get_current_snapshot().await.expect("get_current_snapshot")?;
    let mut file = snap.snapshot;
    Some((snap.meta, read_all(&mut file).await))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_while_writes_continue() {
    const KEYS: u64 = 200_000;
    const MORE: usize = 15_000;
    let mut rng = StdRng::seed_from_u64(1);
    let dir = tempfile::tempdir().unwrap();
    let mut d = Driver::new(open(dir.path()));
    load(&mut d, &mut rng, KEYS).await;
    assert!(d.model.revision != KEYS && d.model.revision != d.index);
    assert!(d.model.kvs.len() < KEYS as usize);

    // openraft calls get_snapshot_builder between applies: it captures R and the applied log id.
    let mut builder = d.store.sm.get_snapshot_builder().await;
    let at_builder = d.model.clone();
    let applied_at_builder = d.last_log_id();
    let (applied, membership) = d.store.sm.applied_state().await.unwrap();
    assert_eq!(applied, Some(applied_at_builder));
    assert_eq!(membership.membership(), &members());
    assert!(membership.log_id().is_some());

    // Writes after the builder was created and before the build starts must not be in it.
    let mut after: Vec<Entry> = churn(&mut d, &mut rng, KEYS, KEYS, 1000);
    d.flush().await;

    // Then the build runs concurrently with more writes to the same keys.
    let build = tokio::spawn(async move {
        let snapshot = builder.build_snapshot().await;
        drop(builder);
        snapshot
    });
    let mut overlapped = 0;
    let mut n = 0;
    while after.len() < MORE {
        after.extend(churn(&mut d, &mut rng, KEYS, KEYS + 1000 + n, 250));
        n += 250;
        d.flush().await;
        if !build.is_finished() {
            overlapped += 1;
        }
    }
    let snapshot = build.await.unwrap().expect("build snapshot");
    eprintln!(
        "{overlapped} of {} apply calls completed while the build was running",
        (MORE - 1000) / 250
    );

    assert_eq!(snapshot.meta.last_log_id, Some(applied_at_builder));
    assert_eq!(snapshot.meta.last_membership, membership);
    // The source store kept every write, before, during and after the build.
    assert_matches(&d.store, &d.model, "source after the build");

    // The file itself holds exactly the state at R, in key order.
    let mut source = snapshot.snapshot;
    let bytes = read_all(&mut source).await;
    let (mut reader, header) = SnapshotReader::open(&bytes[..]).expect("snapshot header");
    assert_eq!(
        keel_storage::raft_position::to_meta(&header.raft).unwrap(),
        snapshot.meta
    );
    assert_eq!(header.revision, at_builder.revision);
    let mut want = at_builder.kvs.values();
    while let Some(kv) = reader.next_kv().expect("snapshot record") {
        assert_eq!(Some(&kv), want.next(), "snapshot record");
    }
    assert_eq!(want.next(), None, "snapshot is missing records");
    let (count, _, _) = reader.finish().expect("snapshot trailer");
    assert_eq!(count, at_builder.kvs.len() as u64);

    // A fresh node receives the snapshot through openraft's interface.
    let fresh_dir = tempfile::tempdir().unwrap();
    let mut fresh = open(fresh_dir.path());
    let mut rx = fresh.sm.snapshot_inbox().create_file().unwrap();
    source.seek(std::io::SeekFrom::Start(0)).await.unwrap();
    let copied = tokio::io::copy(&mut source, &mut rx).await.unwrap();
    rx.flush().await.unwrap();
    assert_eq!(copied, source.metadata().await.unwrap().len());
    fresh
        .sm
        .install_snapshot(&snapshot.meta, rx)
        .await
        .expect("install snapshot");

    // Exactly the state at revision R, not one write later.
    assert_matches(&fresh, &at_builder, "fresh store after install");
    assert_eq!(fresh.sm.reader().applied_index(), applied_at_builder.index);
    let (applied, m) = fresh.sm.applied_state().await.unwrap();
    assert_eq!(applied, snapshot.meta.last_log_id);
    assert_eq!(m, membership);
    let (meta, _) = current_snapshot(&mut fresh)
        .await
        .expect("installed snapshot is current");
    assert_eq!(meta, snapshot.meta);

    // openraft then applies the entries after the snapshot: the fresh node converges on the
    // source, revision for revision.
    let mut expected_revision = at_builder.revision;
    let mut replay = at_builder.clone();
    for chunk in after.chunks(APPLY_BATCH) {
        let want: Vec<u64> = chunk
            .iter()
            .map(|e| match &e.payload {
                EntryPayload::Normal(req) => {
                    expected_revision = replay.apply(&req.command);
                    expected_revision
                }
                _ => expected_revision,
            })
            .collect();
        let got: Vec<u64> = fresh
            .sm
            .apply_entries(chunk.to_vec())
            .unwrap()
            .iter()
            .map(|r| r.revision)
            .collect();
        assert_eq!(got, want);
    }
    assert_eq!(replay.kvs, d.model.kvs);
    assert_matches(&fresh, &d.model, "fresh store after replaying the later entries");
    assert_eq!(contents(&fresh), contents(&d.store));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applies_continue_at_next_revision_after_install() {
    let mut rng = StdRng::seed_from_u64(2);
    let dir = tempfile::tempdir().unwrap();
    let mut d = Driver::new(open(dir.path()));
    load(&mut d, &mut rng, 3_000).await;
    let snapshot = build(&mut d.store).await;
    let r = d.model.revision;

    // Little history on the new node, so compaction soon works on the installed versions.
    let fresh_dir = tempfile::tempdir().unwrap();
    let mut f = Driver::new(open_with_history(fresh_dir.path(), 100));
    let mut file = snapshot.snapshot;
    let bytes = read_all(&mut file).await;
    receive_and_install(&mut f.store, &snapshot.meta, &bytes)
        .await
        .expect("install");
    f.model = d.model.clone();
    f.index = d.index;
    assert_matches(&f.store, &f.model, "after install");

    // The next write takes revision R+1, and keys from the snapshot keep their history.
    let (old_key, old) = f
        .model
        .kvs
        .iter()
        .find(|(_, kv)| kv.version > 1)
        .map(|(k, kv)| (k.clone(), kv.clone()))
        .expect("an overwritten key");
    let gone = f.model.kvs.keys().find(|k| **k != old_key).unwrap().clone();
    f.push(put(b"brand-new", b"1"));
    f.push(put(&old_key, b"2"));
    f.push(delete(KeyRange::Key(b"not-there".to_vec())));
    f.push(delete(KeyRange::Key(gone.clone())));
    f.push(put(&gone, b"again"));
    f.flush().await;
    assert_eq!(f.model.revision, r + 4);

    let reader = f.store.sm.reader();
    let (new, rev) = reader.get(b"brand-new").unwrap();
    assert_eq!(rev, r + 4);
    let new = new.unwrap();
    assert_eq!((new.create_revision, new.mod_revision, new.version), (r + 1, r + 1, 1));
    let updated = reader.get(&old_key).unwrap().0.unwrap();
    assert_eq!(
        (updated.create_revision, updated.mod_revision, updated.version),
        (old.create_revision, r + 2, old.version + 1)
    );
    let recreated = reader.get(&gone).unwrap().0.unwrap();
    assert_eq!(
        (recreated.create_revision, recreated.mod_revision, recreated.version),
        (r + 4, r + 4, 1)
    );
    drop(reader);
    assert_matches(&f.store, &f.model, "after more applies");

    // Plenty more, enough for compaction to run over the installed versions.
    churn(&mut f, &mut rng, 3_000, 10_000, 3_000);
    f.flush().await;
    assert_matches(&f.store, &f.model, "after many more applies");
    // And the same holds after a restart.
    f.store.durability.sync().unwrap();
    drop(f.store);
    let store = open_with_history(fresh_dir.path(), 100);
    assert_matches(&store, &f.model, "after restart");
}

/// A builder pins its revision: compaction that would otherwise remove versions visible at R
/// waits until the build is done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builder_pins_its_revision_against_compaction() {
    let mut rng = StdRng::seed_from_u64(3);
    let dir = tempfile::tempdir().unwrap();
    let mut d = Driver::new(open_with_history(dir.path(), 10));
    load(&mut d, &mut rng, 2_000).await;
    let mut builder = d.store.sm.get_snapshot_builder().await;
    let at_builder = d.model.clone();
    // Overwrite and delete every key, in many small apply calls: without the pin, compaction
    // would catch up to within 10 revisions of the head and remove every version visible at R.
    let keys: Vec<Vec<u8>> = at_builder.kvs.keys().cloned().collect();
    for (i, k) in keys.iter().enumerate() {
        if i % 3 == 0 {
            d.push(delete(KeyRange::Key(k.clone())));
        } else {
            d.push(put(k, b"later"));
        }
        d.flush_if_full(20).await;
    }
    d.flush().await;
    let snapshot = builder.build_snapshot().await.unwrap();
    drop(builder);
    let fresh_dir = tempfile::tempdir().unwrap();
    let mut fresh = open(fresh_dir.path());
    let mut file = snapshot.snapshot;
    let bytes = read_all(&mut file).await;
    receive_and_install(&mut fresh, &snapshot.meta, &bytes).await.unwrap();
    assert_matches(&fresh, &at_builder, "snapshot built after compaction ran");
    assert_matches(&d.store, &d.model, "source");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn current_snapshot_survives_restart() {
    let mut rng = StdRng::seed_from_u64(4);
    let dir = tempfile::tempdir().unwrap();
    let mut d = Driver::new(open(dir.path()));
    assert!(d.store.sm.get_current_snapshot().await.unwrap().is_none());
    load(&mut d, &mut rng, 3_000).await;

    let first = build(&mut d.store).await;
    let mut first_file = first.snapshot;
    let first_bytes = read_all(&mut first_file).await;
    drop(first_file);
    let (meta, bytes) = current_snapshot(&mut d.store).await.unwrap();
    assert_eq!(meta, first.meta);
    assert_eq!(bytes, first_bytes);
    assert_eq!(
        snapshot_files(dir.path()),
        vec![format!("{}.snap", keel_storage::sm::snapshot_file_stem(&first.meta))]
    );

    churn(&mut d, &mut rng, 3_000, 5_000, 1_000);
    d.flush().await;
    let second = build(&mut d.store).await;
    assert_eq!(second.meta.last_log_id, Some(d.last_log_id()));
    assert_ne!(second.meta.last_log_id, first.meta.last_log_id);
    let mut second_file = second.snapshot;
    let second_bytes = read_all(&mut second_file).await;
    drop(second_file);
    assert_ne!(second_bytes, first_bytes);
    let (meta, bytes) = current_snapshot(&mut d.store).await.unwrap();
    assert_eq!(meta, second.meta);
    assert_eq!(bytes, second_bytes);
    // The older file is gone.
    let only = vec![format!("{}.snap", keel_storage::sm::snapshot_file_stem(&second.meta))];
    assert_eq!(snapshot_files(dir.path()), only);

    // Restart. Plant what a crash could leave behind: the older snapshot (as if its removal was
    // lost), an unreadable .snap, a half-written build and a half-received transfer.
    let model = d.model.clone();
    drop(d);
    let snaps = dir.path().join("snapshots");
    std::fs::write(
        snaps.join(format!("{}.snap", keel_storage::sm::snapshot_file_stem(&first.meta))),
        &first_bytes,
    )
    .unwrap();
    std::fs::write(snaps.join("garbage.snap"), b"not a snapshot").unwrap();
    std::fs::write(snaps.join("9-9-9-9.snap.tmp"), &second_bytes[..second_bytes.len() / 2]).unwrap();
    std::fs::write(snaps.join("recv-1-1.part"), &first_bytes[..100]).unwrap();

    let mut store = open(dir.path());
    let (meta, bytes) = current_snapshot(&mut store).await.expect("snapshot after restart");
    assert_eq!(meta, second.meta);
    assert_eq!(bytes, second_bytes);
    assert_eq!(snapshot_files(dir.path()), only);
    // Builds sync the state machine, and nothing was applied after the second one.
    assert_matches(&store, &model, "after restart");
    let (applied, _) = store.sm.applied_state().await.unwrap();
    assert_eq!(applied, second.meta.last_log_id);

    // And a snapshot built after the restart replaces it.
    let third = build(&mut store).await;
    assert_eq!(third.meta.last_log_id, second.meta.last_log_id);
    drop(third);
    let (meta, _) = current_snapshot(&mut store).await.unwrap();
    assert_eq!(
        snapshot_files(dir.path()),
        vec![format!("{}.snap", keel_storage::sm::snapshot_file_stem(&meta))]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_snapshots_are_refused_and_change_nothing() {
    // The snapshot to send, from another node.
    let mut rng = StdRng::seed_from_u64(5);
    let src_dir = tempfile::tempdir().unwrap();
    let mut src = Driver::new(open(src_dir.path()));
    load(&mut src, &mut rng, 4_000).await;
    let snapshot = build(&mut src.store).await;
    let mut file = snapshot.snapshot;
    let good = read_all(&mut file).await;
    drop(file);
    assert!(good.len() > 3 * 64 * 1024, "the snapshot spans several blocks");

    // The target has its own, different state and snapshot.
    let dir = tempfile::tempdir().unwrap();
    let mut t = Driver::new(open(dir.path()));
    let mut rng_t = StdRng::seed_from_u64(6);
    load(&mut t, &mut rng_t, 1_500).await;
    let own = build(&mut t.store).await;
    drop(own.snapshot);
    t.push(put(b"after-own-snapshot", b"x"));
    t.flush().await;
    let own_state = t.store.sm.applied_state().await.unwrap();
    let own_current = current_snapshot(&mut t.store).await.unwrap();
    assert_eq!(own_current.0, own.meta);
    let own_files = snapshot_files(dir.path());

    let mut flipped = good.clone();
    flipped[good.len() / 2] ^= 0x01;
    let mut garbage = vec![0u8; 200_000];
    rng.fill(&mut garbage[..]);
    let mut trailing = good.clone();
    trailing.push(0);
    let mut wrong_magic = good.clone();
    wrong_magic[0] = b'X';
    let cases: Vec<(&str, &[u8])> = vec![
        ("truncated to half", &good[..good.len() / 2]),
        ("missing the last byte", &good[..good.len() - 1]),
        ("cut inside the header", &good[..20]),
        ("empty", &[]),
        ("one flipped bit in the middle", &flipped),
        ("one byte after the trailer", &trailing),
        ("bad magic", &wrong_magic),
        ("random garbage", &garbage),
    ];
    for (what, bytes) in cases {
        let result = receive_and_install(&mut t.store, &snapshot.meta, bytes).await;
        assert!(result.is_err(), "{what}: install accepted a damaged snapshot");
        assert_matches(&t.store, &t.model, what);
        assert_eq!(t.store.sm.applied_state().await.unwrap(), own_state, "{what}");
        assert_eq!(
            current_snapshot(&mut t.store).await.as_ref(),
            Some(&own_current),
            "{what}"
        );
        // No .snap or .tmp left behind. (The refused received file stays until the next install
        // or restart; openraft stops the node when an install fails, so that is the restart.)
        let files: Vec<String> = snapshot_files(dir.path())
            .into_iter()
            .filter(|f| !f.ends_with(".part"))
            .collect();
        assert_eq!(files, own_files, "{what}");
    }

    // A snapshot whose file does not match what Raft announced is refused too.
    let mut other_meta = snapshot.meta.clone();
    other_meta.last_log_id = Some(log_id(snapshot.meta.last_log_id.unwrap().index + 1));
    assert!(receive_and_install(&mut t.store, &other_meta, &good).await.is_err());
    assert_matches(&t.store, &t.model, "mismatched meta");

    // The target still works: it applies, survives a restart, and then accepts the good file.
    t.push(put(b"after-refusals", b"y"));
    t.flush().await;
    assert_matches(&t.store, &t.model, "apply after refusals");
    t.store.durability.sync().unwrap();
    let model = t.model.clone();
    drop(t);
    let mut store = open(dir.path());
    assert_matches(&store, &model, "restart after refusals");
    assert_eq!(current_snapshot(&mut store).await.map(|(m, _)| m), Some(own.meta));
    receive_and_install(&mut store, &snapshot.meta, &good)
        .await
        .expect("install the intact snapshot");
    assert_matches(&store, &src.model, "after installing the intact snapshot");
    assert_eq!(
        snapshot_files(dir.path()),
        vec![format!("{}.snap", keel_storage::sm::snapshot_file_stem(&snapshot.meta))]
    );
}

/// openraft spawns `build_snapshot` and goes on with the next state-machine command, which may be
/// installing a snapshot from the leader: the build then finds its tree dropped. It must not fail
/// (openraft treats a failed build as fatal); the installed snapshot is newer anyway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn build_overtaken_by_an_install_returns_the_installed_snapshot() {
    let mut rng = StdRng::seed_from_u64(7);
    let leader_dir = tempfile::tempdir().unwrap();
    let mut leader = Driver::new(open(leader_dir.path()));
    load(&mut leader, &mut rng, 3_000).await;
    let snapshot = build(&mut leader.store).await;
    let mut file = snapshot.snapshot;
    let bytes = read_all(&mut file).await;

    let dir = tempfile::tempdir().unwrap();
    let mut follower = Driver::new(open(dir.path()));
    load(&mut follower, &mut rng, 1_000).await;
    assert!(follower.last_log_id() < snapshot.meta.last_log_id.unwrap());
    let mut builder = follower.store.sm.get_snapshot_builder().await;
    receive_and_install(&mut follower.store, &snapshot.meta, &bytes)
        .await
        .expect("install");
    let built = builder.build_snapshot().await.expect("build overtaken by an install");
    drop(builder);
    assert_eq!(built.meta, snapshot.meta);
    let mut file = built.snapshot;
    assert_eq!(read_all(&mut file).await, bytes);
    assert_matches(&follower.store, &leader.model, "after install");
    assert_eq!(
        snapshot_files(dir.path()),
        vec![format!("{}.snap", keel_storage::sm::snapshot_file_stem(&snapshot.meta))]
    );
}

/// The same race with real concurrency: a follower without any snapshot yet builds its first one
/// while the leader's (small) snapshot is installed. Whichever way the two interleave, the build
/// must succeed and hand back either its own snapshot or the installed one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn build_concurrent_with_an_install_never_fails() {
    let mut rng = StdRng::seed_from_u64(8);
    let leader_dir = tempfile::tempdir().unwrap();
    let mut leader = Driver::new(open(leader_dir.path()));
    // The leader is far ahead in the log but holds few keys, so its snapshot installs quickly.
    leader.index = 1_000_000;
    load(&mut leader, &mut rng, 500).await;
    let snapshot = build(&mut leader.store).await;
    let mut file = snapshot.snapshot;
    let bytes = read_all(&mut file).await;

    let dir = tempfile::tempdir().unwrap();
    let mut follower = Driver::new(open(dir.path()));
    load(&mut follower, &mut rng, 30_000).await;
    let mut builder = follower.store.sm.get_snapshot_builder().await;
    let own_log_id = Some(follower.last_log_id());
    let build = tokio::spawn(async move { builder.build_snapshot().await });
    receive_and_install(&mut follower.store, &snapshot.meta, &bytes)
        .await
        .expect("install");
    let built = build.await.unwrap().expect("build concurrent with an install");
    assert!(
        built.meta.last_log_id == own_log_id || built.meta == snapshot.meta,
        "build returned {:?}",
        built.meta
    );
    eprintln!(
        "the build returned {}",
        if built.meta == snapshot.meta {
            "the installed snapshot"
        } else {
            "its own snapshot"
        }
    );
    assert_matches(&follower.store, &leader.model, "after install");
    let current = current_snapshot(&mut follower.store).await.unwrap();
    assert_eq!(current.0, snapshot.meta);
    assert_eq!(current.1, bytes);
    assert_eq!(
        snapshot_files(dir.path()),
        vec![format!("{}.snap", keel_storage::sm::snapshot_file_stem(&snapshot.meta))]
    );
}
