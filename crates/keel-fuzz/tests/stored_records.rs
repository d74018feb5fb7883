//! Stored records: what a member reads back from sled (keel-storage's `codec`, the log store, the
//! state machine's meta, history and lease records) and the files beside the database
//! (`keel.id`, a staged restore's `plan.json`). sled checksums its own records, so these
//! decoders see damage only when the disk lies or a data directory is forged or copied from
//! another release; either way they must answer with an error that names the record, never
//! panic or allocate out of proportion. Every record type round-trips.

use std::collections::BTreeMap;

use keel_fuzz::{alloc, check, gen, model, Cost};
use keel_storage::codec::{self, StoredLease, StoredSession, StoredVersion};
use keel_storage::sm::{decode_history, HistoryEvent, RevisionEvents};
use keel_storage::{Entry, LogId, Request, Response, StoredMembership, Vote};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

fn decode<T: serde::de::DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<(), TestCaseError> {
    alloc::bounded(what, bytes.len(), || codec::decode::<T>(bytes).map(drop)).map(drop)
}

/// Every record decoder of the store, on one input.
fn every_decoder(bytes: &[u8]) -> Result<(), TestCaseError> {
    let n = bytes.len();
    decode::<Entry>("log entry", bytes)?;
    decode::<Vote>("vote", bytes)?;
    decode::<Option<LogId>>("committed log id", bytes)?;
    decode::<LogId>("purged log id", bytes)?;
    decode::<Request>("request", bytes)?;
    decode::<Response>("response", bytes)?;
    decode::<StoredLease>("lease", bytes)?;
    decode::<StoredMembership>("membership", bytes)?;
    decode::<u64>("history floor", bytes)?;
    // Auth: the users and roles record, the token table, and a snapshot's auth record.
    decode::<keel_storage::auth::AuthState>("auth state", bytes)?;
    decode::<keel_storage::auth::Tokens>("auth tokens", bytes)?;
    decode::<keel_storage::auth::AuthSnapshot>("auth snapshot record", bytes)?;
    // The state machine's meta record: (applied, revision, compacted, key count, session count).
    decode::<(Option<LogId>, u64, u64, u64, u64)>("state machine meta", bytes)?;
    alloc::bounded("StoredVersion::decode", n, || StoredVersion::decode(bytes).map(drop))?.ok();
    alloc::bounded("StoredSession::decode", n, || {
        StoredSession::decode(bytes).map(|s| s.response().map(drop))
    })?
    .ok();
    alloc::bounded("decode_history", n, || decode_history(7, bytes).map(drop))?.ok();
    alloc::bounded("key splitting", n, || {
        let _ = codec::split_version_key(bytes).map(|(group, _)| codec::group_user_key(group));
        let _ = codec::group_user_key(bytes);
        let _ = codec::unescape(bytes);
        let _ = codec::split_history_key(bytes);
        let _ = codec::split_session_key(bytes);
        let _ = codec::split_session_expiry_key(bytes);
        let _ = codec::split_preserved_session_key(bytes);
        let _ = codec::split_lease_key(bytes);
    })?;
    Ok(())
}

#[test]
fn stored_records_from_random_bytes() {
    check(
        "stored_records_from_random_bytes",
        Cost::Cheap,
        gen::bytes(1024),
        |bytes| {
            every_decoder(&bytes)?;
            // The same bytes behind each format byte a record may start with.
            for format in [codec::FORMAT_V1, codec::HISTORY_MULTI] {
                let mut framed = vec![format];
                framed.extend_from_slice(&bytes);
                every_decoder(&framed)?;
            }
            Ok(())
        },
    );
}

fn valid_record() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        model::request().prop_map(|r| codec::encode(&r)),
        (any::<u64>(), any::<u64>(), gen::value()).prop_map(|(c, v, value)| StoredVersion::Live {
            create_revision: c,
            version: v,
            value
        }
        .encode()),
        (any::<u64>(), any::<u64>(), proptest::option::of(any::<u64>())).prop_map(|(seq, last_index, rev)| {
            StoredSession {
                seq,
                last_index,
                response: rev
                    .map(|revision| {
                        codec::encode(&Response {
                            revision,
                            result: keel_storage::CommandResult::None,
                        })
                    })
                    .unwrap_or_default(),
            }
            .encode()
        }),
        history().prop_map(|h| codec::encode_as(codec::HISTORY_MULTI, &h)),
    ]
}

fn history() -> impl Strategy<Value = Vec<RevisionEvents>> {
    let event = (gen::key(), any::<bool>(), any::<u64>()).prop_map(|(key, deleted, prev_revision)| HistoryEvent {
        key,
        deleted,
        prev_revision,
    });
    vec(
        (any::<u64>(), vec(event, 0..4)).prop_map(|(revision, events)| RevisionEvents { revision, events }),
        0..3,
    )
}

#[test]
fn stored_records_mutated() {
    check(
        "stored_records_mutated",
        Cost::Cheap,
        gen::mutated(valid_record()),
        |bytes| every_decoder(&bytes),
    );
}

/// Every record type decodes to what was encoded; MVCC keys split back into key and revision.
#[test]
fn stored_records_round_trip() {
    let version = prop_oneof![
        Just(StoredVersion::Tombstone),
        (any::<u64>(), any::<u64>(), gen::value()).prop_map(|(create_revision, version, value)| StoredVersion::Live {
            create_revision,
            version,
            value
        }),
    ];
    let session = (any::<u64>(), any::<u64>(), gen::value()).prop_map(|(seq, last_index, response)| StoredSession {
        seq,
        last_index,
        response,
    });
    let lease = (any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(a, b, c, d)| StoredLease {
        ttl_ms: a,
        remaining_ms: b,
        epoch: c,
        granted_revision: d,
    });
    let input = (version, session, lease, gen::key(), any::<u64>(), history());
    check(
        "stored_records_round_trip",
        Cost::Cheap,
        input,
        |(version, session, lease, key, revision, history)| {
            prop_assert_eq!(StoredVersion::decode(&version.encode()).expect("version"), version);
            prop_assert_eq!(
                StoredSession::decode(&session.encode()).expect("session"),
                session.clone()
            );
            prop_assert_eq!(
                StoredSession::decode_head(&session.encode()).expect("head"),
                (session.seq, session.last_index)
            );
            prop_assert_eq!(
                codec::decode::<StoredLease>(&codec::encode(&lease)).expect("lease"),
                lease
            );
            let vk = codec::version_key(&key, revision);
            let (group, rev) = codec::split_version_key(&vk).expect("version key");
            prop_assert_eq!(rev, revision);
            prop_assert_eq!(codec::group_user_key(group).expect("user key"), key);
            prop_assert_eq!(
                codec::split_history_key(&codec::history_key(revision)).expect("history key"),
                revision
            );
            let record = codec::encode_as(codec::HISTORY_MULTI, &history);
            prop_assert_eq!(decode_history(revision, &record).expect("history"), history);
            Ok(())
        },
    );
}

/// `keel.id` and a staged restore's `plan.json`, as a node reads them at its start: any bytes
/// give an error that names the file, or an identity.
#[test]
fn data_dir_files() {
    let json_ish = prop_oneof![
        gen::bytes(512),
        (any::<u64>(), ".{0,12}", any::<u64>()).prop_map(|(id, token, other)| format!(
            r#"{{"format":1,"node_id":{id},"cluster_token":{token:?},"cluster_id":"c","bootstrap":{{"{other}":"a:1"}}}}"#
        )
        .into_bytes()),
        (any::<u64>(), any::<u32>()).prop_map(|(id, format)| format!(
            r#"{{"format":{format},"node_id":{id},"members":{{"{id}":"a:1"}}}}"#
        )
        .into_bytes()),
    ];
    let dir = tempfile::tempdir().expect("temp dir");
    check("data_dir_files", Cost::Moderate, json_ish, |bytes| {
        let data = dir.path().join("node");
        let _ = std::fs::remove_dir_all(&data);
        std::fs::create_dir_all(data.join(keel_datadir::restore::PENDING_DIR)).expect("mkdir");
        std::fs::write(data.join("keel.id"), &bytes).expect("write");
        std::fs::write(data.join(keel_datadir::restore::PENDING_DIR).join("plan.json"), &bytes).expect("write");
        let members: BTreeMap<u64, String> = [(1, "a:1".to_string())].into();
        keel_fuzz::no_panic("identity::check_or_create", || {
            keel_datadir::identity::check_or_create(&data, 1, "keel", Some(&members), false).map(drop)
        })?
        .ok();
        keel_fuzz::no_panic("restore::pending", || keel_datadir::restore::pending(&data).map(drop))?.ok();
        Ok(())
    });
}
