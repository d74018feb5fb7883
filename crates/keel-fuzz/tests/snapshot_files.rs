//! Snapshot and backup files: keel-datadir's reader (what `keelctl snapshot status` and
//! `restore` verify, what a follower receives from the leader), and the two paths that load a
//! file into a database: installing a received snapshot (keel-storage's `install_snapshot`) and
//! a staged restore at a node's first start (`keel_datadir::restore::stage`, then
//! `keel_storage::restore::open`).
//!
//! Inputs: random bytes, files that are valid but for the values in them (a revision at the end
//! of its range, sessions and leases that contradict each other, a membership whose voter has
//! no address), and valid files with bit flips, truncations, extensions and length fields
//! overwritten with huge numbers. Properties: no panic; what a file claims never allocates more
//! than the file holds (a block length of 60 MiB in a file of 30 bytes is refused before 60 MiB
//! are allocated); every changed byte of a valid file is refused (per-block CRCs, the SHA-256);
//! a valid file reads back exactly what was written.

use std::collections::BTreeMap;

use keel_datadir::{
    KeyValue, LogPosition, Member, RaftPosition, SnapshotError, SnapshotHeader, SnapshotLease, SnapshotReader,
    SnapshotRecord, SnapshotSession, SnapshotWriter,
};
use keel_fuzz::{alloc, check, gen, Cost};
use keel_storage::{codec, CommandResult, KeyRange, RangeOp, Response, StoreConfig};
use openraft::storage::RaftStateMachine;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use tokio::io::AsyncWriteExt;

/// Read a whole file: its header and every record, then the trailer.
fn read_all(bytes: &[u8]) -> Result<(SnapshotHeader, Vec<SnapshotRecord>), SnapshotError> {
    let (mut reader, header) = SnapshotReader::open(bytes)?;
    let mut records = Vec::new();
    while let Some(r) = reader.next_record()? {
        records.push(r);
    }
    reader.finish()?;
    Ok((header, records))
}

fn read_bounded(bytes: &[u8]) -> Result<Result<(SnapshotHeader, Vec<SnapshotRecord>), SnapshotError>, TestCaseError> {
    alloc::bounded("SnapshotReader", bytes.len(), || read_all(bytes))
}

fn position() -> impl Strategy<Value = RaftPosition> {
    fn log() -> impl Strategy<Value = LogPosition> {
        (gen::edge_u64(), 0u64..5, gen::edge_u64()).prop_map(|(term, node_id, index)| LogPosition {
            term,
            node_id,
            index,
        })
    }
    (
        proptest::option::of(log()),
        proptest::option::of(log()),
        vec(proptest::collection::btree_set(0u64..6, 0..4), 0..3),
        proptest::collection::btree_map(0u64..6, ".{0,6}", 0..4),
    )
        .prop_map(|(last_log, membership_log, voter_configs, nodes)| RaftPosition {
            last_log,
            membership_log,
            voter_configs,
            nodes: nodes
                .into_iter()
                .map(|(id, peer_addr)| {
                    (
                        id,
                        Member {
                            peer_addr,
                            client_addr: String::new(),
                        },
                    )
                })
                .collect(),
            reserved: String::new(),
        })
}

fn header() -> impl Strategy<Value = SnapshotHeader> {
    (position(), gen::edge_u64(), gen::edge_u64(), ".{0,8}").prop_map(
        |(raft, revision, created_unix_ms, cluster_id)| SnapshotHeader {
            raft,
            revision,
            created_unix_ms,
            cluster_id,
        },
    )
}

/// Records a writer accepts, valid or contradicting each other (the reader checks framing and
/// the impossible values of one record; the loader checks the rest).
fn record() -> impl Strategy<Value = SnapshotRecord> {
    let response = prop_oneof![
        Just(Vec::new()),
        gen::edge_u64().prop_map(|revision| codec::encode(&Response {
            revision,
            result: CommandResult::None
        })),
        gen::bytes(24),
    ];
    prop_oneof![
        6 => (gen::key(), gen::value(), 0u64..4, 0u64..6, gen::edge_u64()).prop_map(|(key, value, c, m, version)| {
            SnapshotRecord::Kv(KeyValue {
                key,
                value,
                create_revision: c,
                mod_revision: m,
                version,
            })
        }),
        2 => (0u64..4, gen::edge_u64(), gen::edge_u64(), response).prop_map(|(client_id, seq, last_index, response)| {
            SnapshotRecord::Session(SnapshotSession {
                client_id,
                seq,
                last_index,
                response,
            })
        }),
        1 => (0u64..4, gen::edge_u64(), gen::edge_u64(), any::<u64>(), any::<u64>(), prop::option::of("[a-z]{0,3}")).prop_map(|(id, ttl_ms, r, epoch, g, owner)| {
            SnapshotRecord::Lease(SnapshotLease {
                id,
                ttl_ms,
                remaining_ms: r % ttl_ms.max(1),
                epoch,
                granted_revision: g,
                owner,
            })
        }),
        1 => (0u64..4, gen::key()).prop_map(|(lease, key)| SnapshotRecord::LeaseKey { lease, key }),
        1 => prop_oneof![
            Just(codec::encode(&keel_storage::auth::AuthSnapshot::default())),
            gen::bytes(64),
        ]
        .prop_map(SnapshotRecord::Auth),
    ]
}

/// Files a member could have written, with values at the edges (a revision or a version one
/// below the end of its range, leases whose keys are missing): the loader's checks, not the
/// reader's, decide these. Sorted as a writer writes them.
fn loadable_file() -> impl Strategy<Value = (SnapshotHeader, Vec<SnapshotRecord>)> {
    let revision = prop_oneof![4 => 1u64..50, 1 => Just(u64::MAX - 1), 1 => Just(u64::MAX)];
    (revision, 1u64..4, 10u64..100, 1usize..4).prop_flat_map(|(revision, term, index, members)| {
        let kv = (
            gen::value(),
            1u64..=revision.min(60),
            prop_oneof![3 => 1u64..5, 1 => Just(u64::MAX - 1), 1 => Just(u64::MAX)],
        );
        let kvs = proptest::collection::btree_map(
            gen::key().prop_filter("keys are not empty", |k| !k.is_empty()),
            kv,
            0..6,
        );
        let response = prop_oneof![
            Just(Vec::new()),
            any::<u64>().prop_map(|revision| codec::encode(&Response {
                revision,
                result: CommandResult::None
            })),
        ];
        let sessions = proptest::collection::btree_map(any::<u64>(), (1u64..9, 0u64..=index + 1, response), 0..3);
        let leases = proptest::collection::btree_map(1u64..5, (1u64..10_000, any::<u64>(), 0u64..60), 0..3);
        let lease_keys = proptest::collection::btree_map(gen::key(), 1u64..6, 0..3);
        (kvs, sessions, leases, lease_keys).prop_map(move |(kvs, sessions, leases, lease_keys)| {
            let nodes: BTreeMap<u64, Member> = (1..=members as u64)
                .map(|i| {
                    let peer_addr = format!("127.0.0.1:{}", 7100 + i);
                    (
                        i,
                        Member {
                            peer_addr,
                            client_addr: String::new(),
                        },
                    )
                })
                .collect();
            let last = LogPosition {
                term,
                node_id: 1,
                index,
            };
            let header = SnapshotHeader {
                raft: RaftPosition {
                    last_log: Some(last),
                    membership_log: Some(LogPosition { index: 1, ..last }),
                    voter_configs: vec![nodes.keys().copied().collect()],
                    nodes,
                    reserved: String::new(),
                },
                revision,
                created_unix_ms: 0,
                cluster_id: "c".into(),
            };
            let mut records: Vec<SnapshotRecord> = kvs
                .into_iter()
                .map(|(key, (value, m, version))| {
                    SnapshotRecord::Kv(KeyValue {
                        key,
                        value,
                        create_revision: 1,
                        mod_revision: m,
                        version,
                    })
                })
                .collect();
            records.extend(sessions.into_iter().map(|(client_id, (seq, last_index, response))| {
                SnapshotRecord::Session(SnapshotSession {
                    client_id,
                    seq,
                    last_index,
                    response,
                })
            }));
            records.extend(leases.into_iter().map(|(id, (ttl_ms, r, g))| {
                SnapshotRecord::Lease(SnapshotLease {
                    id,
                    ttl_ms,
                    remaining_ms: r % (ttl_ms + 1),
                    epoch: 1,
                    granted_revision: g,
                    owner: g.is_multiple_of(2).then(|| format!("user{}", g % 5)),
                })
            }));
            records.extend(
                lease_keys
                    .into_iter()
                    .map(|(key, lease)| SnapshotRecord::LeaseKey { lease, key }),
            );
            (header, records)
        })
    })
}

fn write(header: &SnapshotHeader, records: &[SnapshotRecord]) -> Vec<u8> {
    let mut w = SnapshotWriter::new(Vec::new(), header).expect("writer");
    for r in records {
        match r {
            SnapshotRecord::Kv(kv) => w.push(kv),
            SnapshotRecord::Session(s) => w.push_session(s),
            SnapshotRecord::Lease(l) => w.push_lease(l),
            SnapshotRecord::LeaseKey { lease, key } => w.push_lease_key(*lease, key),
            SnapshotRecord::Auth(encoded) => w.push_auth(encoded),
        }
        .expect("push");
    }
    w.finish().expect("finish").0
}

fn file() -> impl Strategy<Value = (SnapshotHeader, Vec<SnapshotRecord>)> {
    (header(), vec(record(), 0..12))
}

#[test]
fn snapshot_reader_random_bytes() {
    // Random bytes, and random bytes behind the magic and format byte (so the length fields
    // and the header are what is random).
    let input = prop_oneof![
        gen::bytes(2048),
        gen::bytes(2048).prop_map(|b| [b"KEELSNAP\x01".as_slice(), &b].concat()),
    ];
    check("snapshot_reader_random_bytes", Cost::Cheap, input, |bytes| {
        read_bounded(&bytes)?.ok();
        Ok(())
    });
}

/// Valid files, changed: refused (a changed byte never passes), within the allocation budget.
#[test]
fn snapshot_reader_mutated() {
    let input = file().prop_flat_map(|(h, records)| {
        let bytes = write(&h, &records);
        (Just(bytes), vec(gen::edit(), 1..4))
    });
    check("snapshot_reader_mutated", Cost::Cheap, input, |(valid, edits)| {
        let bytes = gen::apply(valid.clone(), &edits);
        let read = read_bounded(&bytes)?;
        if bytes != valid {
            prop_assert!(read.is_err(), "a changed file was accepted");
        }
        Ok(())
    });
}

/// A valid file reads back what was written, and a length prefix claiming more than the file
/// holds is refused without allocating what it claims.
#[test]
fn snapshot_files_round_trip() {
    check("snapshot_files_round_trip", Cost::Cheap, file(), |(header, records)| {
        // The writer writes what it is given; the reader refuses impossible records (key empty,
        // version 0, create after mod, sequence number 0, lease values).
        let bytes = write(&header, &records);
        match read_bounded(&bytes)? {
            Ok((h, r)) => {
                prop_assert_eq!(h, header);
                prop_assert_eq!(r, records);
            }
            Err(SnapshotError::Corrupt(_)) => {}
            Err(e) => return Err(TestCaseError::fail(format!("a written file is refused: {e}"))),
        }
        // Cut after a block's length and claim more than is there.
        for claim in [u32::MAX, 60 << 20, 15 << 20] {
            let head_len = 13 + u32::from_le_bytes(bytes[9..13].try_into().expect("4")) as usize + 4;
            let mut forged = bytes[..head_len].to_vec();
            forged.push(0x01);
            forged.extend_from_slice(&claim.to_le_bytes());
            forged.extend_from_slice(&[0; 16]);
            prop_assert!(read_bounded(&forged)?.is_err());
            let mut forged = bytes[..9].to_vec();
            forged.extend_from_slice(&claim.to_le_bytes());
            forged.extend_from_slice(&[0; 16]);
            prop_assert!(read_bounded(&forged)?.is_err());
        }
        Ok(())
    });
}

/// The finding this target made: the reader allocated what a header or block length claimed
/// (up to 16 and 64 MiB) before reading it, whatever the file held.
#[test]
fn claimed_lengths_allocate_what_the_file_holds() {
    let bytes = write(
        &SnapshotHeader {
            raft: RaftPosition::default(),
            revision: 1,
            created_unix_ms: 0,
            cluster_id: String::new(),
        },
        &[],
    );
    let header_len = 13 + u32::from_le_bytes(bytes[9..13].try_into().expect("4")) as usize + 4;
    for claim in [16u32 << 20, 64 << 20] {
        let mut header = bytes[..9].to_vec();
        header.extend_from_slice(&claim.to_le_bytes());
        let mut block = bytes[..header_len].to_vec();
        block.push(0x01);
        block.extend_from_slice(&claim.to_le_bytes());
        for forged in [header, block] {
            let (result, peak) = alloc::peak(|| read_all(&forged));
            assert!(
                matches!(result, Err(SnapshotError::Truncated | SnapshotError::Corrupt(_))),
                "{result:?}"
            );
            assert!(
                peak < 64 * 1024,
                "{peak} bytes allocated for a claim of {claim} in {} bytes",
                forged.len()
            );
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// Read every key of a store's state machine and apply nothing: what a node does first with
/// an installed or restored state.
fn read_everything(sm: &keel_storage::StateMachine) -> Result<(), TestCaseError> {
    let reader = sm.reader();
    keel_fuzz::no_panic("range read of a loaded snapshot", || {
        let _ = reader.range(&RangeOp::new(KeyRange::Prefix(Vec::new())));
    })
}

/// Files as a follower receives them: installed into one store, one after the other. A file
/// either installs (and reads back) or is refused with the store unchanged.
#[test]
fn snapshot_install() {
    let input = prop_oneof![
        4 => loadable_file().prop_map(|(h, r)| write(&h, &r)),
        1 => file().prop_map(|(h, r)| write(&h, &r)),
        1 => loadable_file().prop_flat_map(|(h, r)| gen::mutated(Just(write(&h, &r)))),
    ];
    let rt = runtime();
    let dir = tempfile::tempdir().expect("temp dir");
    let store = std::cell::RefCell::new(keel_storage::open(dir.path(), &StoreConfig::default()).expect("open"));
    static INSTALLED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    check("snapshot_install", Cost::Expensive, input, |bytes| {
        // Raft hands install the metadata the sender put in its first chunk; a forged sender
        // makes it agree with the file's header.
        let meta = SnapshotReader::open(&bytes[..])
            .ok()
            .and_then(|(_, h)| keel_storage::raft_position::to_meta(&h.raft).ok())
            .unwrap_or_default();
        let installed = keel_fuzz::no_panic("install_snapshot", || {
            let mut store = store.borrow_mut();
            rt.block_on(async {
                let mut rx = store.sm.snapshot_inbox().create_file().expect("receive file");
                rx.write_all(&bytes).await.expect("write");
                rx.flush().await.expect("flush");
                store.sm.install_snapshot(&meta, rx).await.is_ok()
            })
        })?;
        if installed {
            INSTALLED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            read_everything(&store.borrow().sm)?;
        }
        Ok(())
    });
    println!(
        "keel-fuzz: snapshot_install: {} files installed",
        INSTALLED.load(std::sync::atomic::Ordering::Relaxed)
    );
}

/// `keelctl snapshot restore` (stage) and the node's first start (restore::open) with any
/// file: staged and opened, or refused with a clear error; never a panic.
#[test]
fn snapshot_restore() {
    let input = prop_oneof![
        4 => loadable_file().prop_map(|(h, r)| write(&h, &r)),
        1 => file().prop_map(|(h, r)| write(&h, &r)),
        1 => loadable_file().prop_flat_map(|(h, r)| gen::mutated(Just(write(&h, &r)))),
        1 => gen::bytes(256),
    ];
    let rt = runtime();
    let tmp = tempfile::tempdir().expect("temp dir");
    static RESTORED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    check("snapshot_restore", Cost::Expensive, input, |bytes| {
        let file = tmp.path().join("backup.snap");
        std::fs::write(&file, &bytes).expect("write");
        let dir = tmp.path().join("member");
        let _ = std::fs::remove_dir_all(&dir);
        let peers: BTreeMap<u64, String> = [(1, "127.0.0.1:7101".to_string())].into();
        let verified = keel_fuzz::no_panic("restore::verify", || keel_datadir::restore::verify(&file))?;
        let staged = keel_fuzz::no_panic("restore::stage", || {
            keel_datadir::restore::stage(&dir, &file, 1, &peers, "keel")
        })?;
        prop_assert!(
            staged.is_err() || verified.is_ok(),
            "staged a file that does not verify"
        );
        if staged.is_ok() {
            let opened = keel_fuzz::no_panic("restore::open", || {
                rt.block_on(keel_storage::restore::open(&dir, &StoreConfig::default()))
            })?;
            if let Ok(store) = opened {
                RESTORED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                read_everything(&store.sm)?;
            }
        }
        Ok(())
    });
    println!(
        "keel-fuzz: snapshot_restore: {} files restored and opened",
        RESTORED.load(std::sync::atomic::Ordering::Relaxed)
    );
}
