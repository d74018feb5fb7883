//! Shared harness of the snapshot tests (`snapshot.rs`, `snapshot_files.rs`,
//! `snapshot_races.rs`): an in-memory model of the key-value state, a driver that feeds a store's
//! state machine entries in batches and keeps the model in step, the random workloads (`load`,
//! `churn`), the check of a store against the model, and the snapshot calls made the way openraft
//! makes them.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use keel_storage::EntryPayload;
use keel_storage::{
    Command, DeleteOp, Entry, KeyRange, KeyValue, LogId, Member, PutOp, RangeOp, Request, SmConfig, SnapshotMeta,
    Store, StoreConfig, Txn, TxnOp,
};
use openraft::storage::RaftStateMachine;
use openraft::{Membership, RaftSnapshotBuilder};
use rand::rngs::StdRng;
use rand::Rng;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

/// Entries per `apply` call while loading.
pub const APPLY_BATCH: usize = 1000;

pub fn log_id(index: u64) -> LogId {
    keel_storage::log_id_at(1, 1, index)
}

pub fn open(dir: &Path) -> Store {
    keel_storage::open(dir, &StoreConfig::default()).expect("open store")
}

/// A store that keeps only `history` revisions of history, so compaction runs often.
pub fn open_with_history(dir: &Path, history: u64) -> Store {
    let config = StoreConfig {
        sm: SmConfig {
            history_revisions: history,
            ..SmConfig::default()
        },
        ..StoreConfig::default()
    };
    keel_storage::open(dir, &config).expect("open store")
}

pub fn members() -> Membership<u64, Member> {
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

pub fn put(key: &[u8], value: &[u8]) -> Command {
    Command::Put(PutOp {
        key: key.to_vec(),
        value: value.to_vec(),
        prev_kv: false,
    })
}

pub fn delete(range: KeyRange) -> Command {
    Command::Delete(DeleteOp { range, prev_kv: false })
}

/// The key-value state the store should have, maintained independently of the store.
#[derive(Clone, Default)]
pub struct Model {
    pub kvs: BTreeMap<Vec<u8>, KeyValue>,
    pub revision: u64,
}

impl Model {
    /// Apply `cmd` as keel does; returns the revision after it.
    pub fn apply(&mut self, cmd: &Command) -> u64 {
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
                TxnOp::Range(_) | TxnOp::LeasedPut(_) | TxnOp::Txn(_) | TxnOp::PutWith(_) => {
                    unreachable!("these tests do not read, lease or nest in txns")
                }
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
pub struct Driver {
    pub store: Store,
    pub model: Model,
    /// Index of the last entry handed out.
    pub index: u64,
    pending: Vec<Entry>,
    expected_revisions: Vec<u64>,
}

impl Driver {
    pub fn new(store: Store) -> Self {
        Driver {
            store,
            model: Model::default(),
            index: 0,
            pending: Vec::new(),
            expected_revisions: Vec::new(),
        }
    }

    pub fn push_payload(&mut self, payload: EntryPayload, expected_revision: u64) -> Entry {
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
    pub fn push(&mut self, cmd: Command) -> Entry {
        let rev = self.model.apply(&cmd);
        self.push_payload(EntryPayload::Normal(Request::new(cmd)), rev)
    }

    pub fn push_membership(&mut self, m: Membership<u64, Member>) {
        let rev = self.model.revision;
        self.push_payload(EntryPayload::Membership(m), rev);
    }

    pub fn push_blank(&mut self) {
        let rev = self.model.revision;
        self.push_payload(EntryPayload::Blank, rev);
    }

    /// Apply everything queued, in one `apply` call.
    pub async fn flush(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let entries = std::mem::take(&mut self.pending);
        let expected = std::mem::take(&mut self.expected_revisions);
        let responses = self.store.sm.apply_entries(entries).expect("apply");
        let got: Vec<u64> = responses.iter().map(|r| r.revision).collect();
        assert_eq!(got, expected, "response revisions");
    }

    pub async fn flush_if_full(&mut self, batch: usize) {
        if self.pending.len() >= batch {
            self.flush().await;
        }
    }

    pub fn last_log_id(&self) -> LogId {
        log_id(self.index)
    }
}

pub fn key(i: u64) -> Vec<u8> {
    let mut k = format!("key/{:03}/{i:07}", i % 1000).into_bytes();
    if i.is_multiple_of(97) {
        // Exercise the key escaping on the way into and out of snapshots.
        k.extend_from_slice(&[0x00, 0xFF, 0x00]);
    }
    k
}

pub fn value(rng: &mut StdRng, index: u64) -> Vec<u8> {
    if rng.random_ratio(1, 200) {
        return Vec::new();
    }
    let mut v = format!("v{index}:").into_bytes();
    let pad = rng.random_range(0..48);
    v.extend((0..pad).map(|j| (index as u8).wrapping_add(j)));
    v
}

pub fn txn(ops: Vec<TxnOp>) -> Command {
    Command::Txn(Txn {
        compares: Vec::new(),
        success: ops,
        failure: Vec::new(),
    })
}

/// `count` distinct keys below `below`, none of them in `taken`; adds them to `taken`.
pub fn pick(rng: &mut StdRng, below: u64, count: usize, taken: &mut BTreeSet<u64>) -> Vec<u64> {
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
pub async fn load(d: &mut Driver, rng: &mut StdRng, n: u64) {
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
pub fn churn(d: &mut Driver, rng: &mut StdRng, loaded: u64, fresh_from: u64, count: usize) -> Vec<Entry> {
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
pub fn contents(store: &Store) -> (Vec<KeyValue>, u64) {
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
pub fn assert_matches(store: &Store, model: &Model, what: &str) {
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

pub async fn build(store: &mut Store) -> keel_storage::sm::Snapshot {
    let mut builder = store.sm.get_snapshot_builder().await;
    builder.build_snapshot().await.expect("build snapshot")
}

pub async fn read_all(file: &mut tokio::fs::File) -> Vec<u8> {
    file.seek(std::io::SeekFrom::Start(0)).await.expect("seek");
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).await.expect("read snapshot");
    bytes
}

/// Send `bytes` the way openraft receives a snapshot: into the box from
/// `begin_receiving_snapshot`, then `install_snapshot` with that box.
pub async fn receive_and_install(store: &mut Store, meta: &SnapshotMeta, bytes: &[u8]) -> std::io::Result<()> {
    let mut rx = store.sm.snapshot_inbox().create_file()?;
    rx.write_all(bytes).await.expect("write received bytes");
    rx.flush().await.expect("flush received bytes");
    store.sm.install_snapshot(meta, rx).await
}

/// Names of the files in `<dir>/snapshots`.
pub fn snapshot_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir.join("snapshots"))
        .expect("snapshot dir")
        .map(|e| e.expect("dir entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

pub async fn current_snapshot(store: &mut Store) -> Option<(SnapshotMeta, Vec<u8>)> {
    let snap = store.sm.get_current_snapshot().await.expect("get_current_snapshot")?;
    let mut file = snap.snapshot;
    Some((snap.meta, read_all(&mut file).await))
}
