//! Shared harness of the client session tests (`sessions.rs`, `session_determinism.rs`): a store
//! fed log entries the way openraft feeds them, request builders, raw views of the session state,
//! snapshot helpers, and a random session workload.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_storage::codec::{self, StoredSession, SESSION_EXPIRY_PREFIX, SESSION_PREFIX};
use keel_storage::EntryPayload;
use keel_storage::*;
use openraft::storage::RaftStateMachine;
use openraft::RaftSnapshotBuilder;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

// ---------------------------------------------------------------------------------------------
// Harness

pub fn log_id(index: u64) -> LogId {
    keel_storage::log_id_at(1, 1, index)
}

pub fn config(ttl: u64, max: u64) -> StoreConfig {
    StoreConfig {
        sm: SmConfig {
            session_ttl_entries: ttl,
            max_sessions: max,
            ..SmConfig::default()
        },
        ..StoreConfig::default()
    }
}

pub struct Node {
    pub dir: TempDir,
    pub config: StoreConfig,
    pub store: Store,
    /// Index of the last entry applied.
    pub index: u64,
}

impl Node {
    pub fn new(config: StoreConfig) -> Node {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = keel_storage::open(dir.path(), &config).expect("open store");
        Node {
            dir,
            config,
            store,
            index: 0,
        }
    }

    pub fn with_defaults() -> Node {
        Node::new(StoreConfig::default())
    }

    /// Close the store and open the same directory again.
    pub async fn reopen(self) -> Node {
        let db = Arc::downgrade(&self.store.durability);
        let Node {
            dir,
            config,
            store,
            index,
        } = self;
        store.durability.sync().expect("sync");
        drop(store);
        // The log store's flusher thread holds the database until it notices the store is gone.
        let deadline = Instant::now() + Duration::from_secs(30);
        while db.strong_count() > 0 {
            assert!(Instant::now() < deadline, "the database was never closed");
            std::thread::yield_now();
        }
        let store = keel_storage::open(dir.path(), &config).expect("reopen store");
        Node {
            dir,
            config,
            store,
            index,
        }
    }

    /// Apply `payloads` as consecutive entries in one apply call.
    pub async fn apply(&mut self, payloads: Vec<EntryPayload>) -> Vec<Response> {
        let entries: Vec<Entry> = payloads
            .into_iter()
            .map(|payload| {
                self.index += 1;
                Entry {
                    log_id: log_id(self.index),
                    payload,
                }
            })
            .collect();
        let n = entries.len();
        let responses = self.store.sm.apply_entries(entries).expect("apply");
        assert_eq!(responses.len(), n);
        responses
    }

    /// One request as one entry.
    pub async fn send(&mut self, req: Request) -> Response {
        let valid = validate_request(&req, &Limits::default());
        assert_eq!(valid, Ok(()), "the server would propose {req:?}");
        self.apply(vec![EntryPayload::Normal(req)]).await.remove(0)
    }

    pub async fn blanks(&mut self, n: usize) {
        self.apply((0..n).map(|_| EntryPayload::Blank).collect()).await;
    }

    pub fn revision(&self) -> u64 {
        self.store.sm.reader().revision()
    }

    pub fn sessions(&self) -> u64 {
        self.store.sm.reader().session_count()
    }

    pub fn get(&self, key: &[u8]) -> Option<KeyValue> {
        self.store.sm.reader().get(key).expect("get").0
    }
}

pub fn with_session(client_id: u64, seq: u64, command: Command) -> Request {
    Request {
        session: Some(SessionRef { client_id, seq }),
        command,
    }
}

pub fn put(key: &[u8], value: &[u8]) -> Command {
    Command::Put(PutOp {
        key: key.to_vec(),
        value: value.to_vec(),
        prev_kv: true,
    })
}

/// "If `key` holds `expected`, set it to `new`; otherwise read it": a compare-and-swap.
pub fn cas(key: &[u8], expected: &[u8], new: &[u8]) -> Command {
    Command::Txn(Txn {
        compares: vec![Compare {
            key: key.to_vec(),
            op: CompareOp::Equal,
            target: CompareTarget::Value(expected.to_vec()),
        }],
        success: vec![TxnOp::Put(PutOp {
            key: key.to_vec(),
            value: new.to_vec(),
            prev_kv: false,
        })],
        failure: vec![TxnOp::Range(RangeOp::new(KeyRange::Key(key.to_vec())))],
    })
}

pub fn stale(client_id: u64, seq: u64, last_seq: u64) -> CommandResult {
    CommandResult::StaleSession {
        client_id,
        seq,
        last_seq,
    }
}

pub fn expired(client_id: u64, seq: u64) -> CommandResult {
    CommandResult::SessionExpired { client_id, seq }
}

/// The state machine's current tree (the generation changes with every install).
pub fn sm_tree(store: &Store) -> sled::Tree {
    let db = store.durability.db();
    let root = db.open_tree("sm_root").expect("sm_root");
    let current = root.get(b"current").expect("root").expect("current generation");
    db.open_tree(current).expect("sm tree")
}

pub type Raw = Vec<(Vec<u8>, Vec<u8>)>;

pub fn raw_prefix(store: &Store, prefix: u8) -> Raw {
    sm_tree(store)
        .scan_prefix([prefix])
        .map(|item| {
            let (k, v) = item.expect("scan");
            (k.to_vec(), v.to_vec())
        })
        .collect()
}

/// The replicated session state, byte for byte: records and expiry index. Also checks that the
/// two agree with each other and with the session count.
pub fn session_state(store: &Store) -> (Raw, Raw) {
    let records = raw_prefix(store, SESSION_PREFIX);
    let index = raw_prefix(store, SESSION_EXPIRY_PREFIX);
    assert_eq!(records.len(), index.len(), "one expiry index entry per session");
    assert_eq!(store.sm.reader().session_count(), records.len() as u64, "session count");
    for (k, v) in &records {
        let client_id = codec::split_session_key(k).unwrap();
        let record = StoredSession::decode(v).unwrap();
        let ix = codec::session_expiry_key(record.last_index, client_id).to_vec();
        assert!(index.iter().any(|(k, _)| *k == ix), "session {client_id} is indexed");
    }
    (records, index)
}

/// The sessions of a store as snapshot records, by client id.
pub fn snapshot_sessions(records: &Raw) -> Vec<SnapshotSession> {
    records
        .iter()
        .map(|(k, v)| {
            let record = StoredSession::decode(v).unwrap();
            SnapshotSession {
                client_id: codec::split_session_key(k).unwrap(),
                seq: record.seq,
                last_index: record.last_index,
                response: record.response,
            }
        })
        .collect()
}

pub fn all_kvs(store: &Store) -> (Vec<KeyValue>, u64) {
    let (res, rev) = store
        .sm
        .reader()
        .range(&RangeOp::new(KeyRange::Prefix(Vec::new())))
        .expect("range");
    (res.kvs, rev)
}

pub async fn build(store: &mut Store) -> (SnapshotMeta, Vec<u8>) {
    let mut builder = store.sm.get_snapshot_builder().await;
    let snapshot = builder.build_snapshot().await.expect("build snapshot");
    (snapshot.meta, read_file(snapshot.snapshot).await)
}

pub async fn read_file(mut file: tokio::fs::File) -> Vec<u8> {
    file.seek(std::io::SeekFrom::Start(0)).await.expect("seek");
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).await.expect("read snapshot");
    bytes
}

pub async fn install(store: &mut Store, meta: &SnapshotMeta, bytes: &[u8]) {
    let mut rx = store.sm.snapshot_inbox().create_file().expect("receive");
    rx.write_all(bytes).await.expect("write");
    rx.flush().await.expect("flush");
    store.sm.install_snapshot(meta, rx).await.expect("install snapshot");
}

/// The session records of a snapshot file, by client id.
pub fn sessions_in_file(bytes: &[u8]) -> Vec<SnapshotSession> {
    let (mut reader, _) = SnapshotReader::open(bytes).expect("snapshot header");
    let mut out = Vec::new();
    while let Some(record) = reader.next_record().expect("snapshot record") {
        if let SnapshotRecord::Session(s) = record {
            out.push(s);
        }
    }
    reader.finish().expect("snapshot trailer");
    out.sort_by_key(|s| s.client_id);
    out
}

// ---------------------------------------------------------------------------------------------
// A random session workload

/// Generates session traffic of `clients` clients: new writes, retries of the last write, stale
/// retries, writes of unknown sessions, clients that restart with a new id (now and then, and as
/// a real client must after `SessionExpired`), plain writes and blank entries. Only puts, so a write was executed exactly when the revision moved. (A stale request
/// never has seq 1: that would restart an evicted session, see the module docs of
/// `sm::sessions`.)
pub struct Workload {
    pub rng: StdRng,
    pub clients: Vec<(u64, u64, Command)>,
    /// Only the first `active` clients send requests.
    pub active: usize,
}

impl Workload {
    pub fn new(seed: u64, clients: usize) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let clients: Vec<_> = (0..clients)
            .map(|_| (rng.random::<u64>(), 0, put(b"unused", b"")))
            .collect();
        let active = clients.len();
        Workload { rng, clients, active }
    }

    pub fn payload(&mut self) -> EntryPayload {
        let rng = &mut self.rng;
        let roll = rng.random_range(0..100);
        if roll < 5 {
            return EntryPayload::Blank;
        }
        if roll < 10 {
            let v = rng.random::<u32>().to_string();
            return EntryPayload::Normal(Request::new(put(b"plain", v.as_bytes())));
        }
        if roll < 12 {
            let id = rng.random::<u64>();
            return EntryPayload::Normal(with_session(id, rng.random_range(2..5), put(b"never", b"")));
        }
        let c = rng.random_range(0..self.active);
        let (id, seq, last) = &mut self.clients[c];
        if roll < 15 {
            (*id, *seq) = (rng.random(), 0);
        }
        let req = match roll {
            15..=49 if *seq > 0 => with_session(*id, *seq, last.clone()),
            50..=54 if *seq > 3 => with_session(*id, *seq - rng.random_range(1..3), put(b"stale", b"")),
            _ => {
                *seq += 1;
                let key = format!("key-{}", rng.random_range(0..20));
                *last = put(key.as_bytes(), format!("{id}:{seq}").as_bytes());
                with_session(*id, *seq, last.clone())
            }
        };
        EntryPayload::Normal(req)
    }

    pub fn entries(&mut self, first_index: u64, n: usize) -> Vec<Entry> {
        (0..n as u64)
            .map(|i| Entry {
                log_id: log_id(first_index + i),
                payload: self.payload(),
            })
            .collect()
    }

    /// A client whose session expired starts a new one.
    pub fn observe(&mut self, response: &Response) {
        if let CommandResult::SessionExpired { client_id, .. } = response.result {
            if let Some(c) = self.clients.iter_mut().find(|c| c.0 == client_id) {
                (c.0, c.1) = (self.rng.random(), 0);
            }
        }
    }

    /// Generate `n` entries from `first_index` on and apply them to `store` in calls of `chunk`
    /// entries (0: 1 to 100 at random), the clients reacting to the responses of each call.
    pub async fn drive(
        &mut self,
        store: &mut Store,
        first_index: u64,
        n: usize,
        chunk: usize,
    ) -> (Vec<Entry>, Vec<Response>) {
        let (mut entries, mut responses) = (Vec::new(), Vec::new());
        while entries.len() < n {
            let size = if chunk == 0 {
                self.rng.random_range(1..=100)
            } else {
                chunk
            }
            .min(n - entries.len());
            let batch = self.entries(first_index + entries.len() as u64, size);
            let got = store.sm.apply_entries(batch.clone()).expect("apply");
            got.iter().for_each(|r| self.observe(r));
            entries.extend(batch);
            responses.extend(got);
        }
        (entries, responses)
    }
}

/// Apply `entries` to `store` in calls of `chunk` entries (0: sizes from 1 to 100 at random).
pub async fn apply_in_chunks(store: &mut Store, entries: &[Entry], chunk: usize, rng: &mut StdRng) -> Vec<Response> {
    let mut out = Vec::new();
    let mut rest = entries;
    while !rest.is_empty() {
        let n = if chunk == 0 { rng.random_range(1..=100) } else { chunk }.min(rest.len());
        let (now, later) = rest.split_at(n);
        out.extend(store.sm.apply_entries(now.to_vec()).expect("apply"));
        rest = later;
    }
    out
}
