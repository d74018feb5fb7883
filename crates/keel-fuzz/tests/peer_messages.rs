//! Peer messages: what another member (or anyone who reaches the peer port) sends, and what a
//! member's peers answer. The gRPC messages (`keel.raft.v1` RaftRequest, RaftReply,
//! SnapshotChunk) carry openraft's types and keel's forwarded work encoded with keel-storage's
//! codec (a format byte, then postcard); keel-server's peer service and peer client decode them
//! (peer/service.rs, peer/client.rs, node/leader.rs). Every type they decode is decoded here from
//! arbitrary bytes and from mutated valid encodings, under the allocation budget, followed by
//! the checks the service makes before anything reaches Raft (a forwarded write is validated
//! again; a snapshot newer than the vote that sends it is refused). Valid encodings round-trip.

use keel_fuzz::model;
use keel_fuzz::{alloc, check, gen, Cost};
use keel_proto::raft::{RaftReply, RaftRequest, SnapshotChunk};
use keel_server::error::NodeError;
use keel_server::forward::{ForwardReply, ForwardRequest};
use keel_storage::{codec, log_id_at, Entry, EntryPayload, Member, Membership, SnapshotMeta, TypeConfig, Vote};
use openraft::error::{Fatal, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest, TransferLeaderResponse,
    VoteRequest, VoteResponse,
};
use openraft::StoredMembership;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use prost::Message;

/// Decode `bytes` as `T` under the allocation budget; `Ok(None)` for a decode error.
fn decode<T: serde::de::DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<Option<T>, TestCaseError> {
    Ok(alloc::bounded(what, bytes.len(), || codec::decode::<T>(bytes))?.ok())
}

/// What the peer service does with a request's bytes before Raft sees them.
fn serve(bytes: &[u8]) -> Result<(), TestCaseError> {
    let _ = decode::<AppendEntriesRequest<TypeConfig>>("AppendEntriesRequest", bytes)?;
    let _ = decode::<VoteRequest<TypeConfig>>("VoteRequest", bytes)?;
    let _ = decode::<TransferLeaderRequest<TypeConfig>>("TransferLeaderRequest", bytes)?;
    if let Some((vote, meta)) = decode::<(Vote, SnapshotMeta)>("snapshot meta", bytes)? {
        // install_snapshot's check before openraft sees the snapshot.
        let _ = meta.last_log_id.is_some_and(|l| l.leader_id > vote.leader_id);
        let _ = keel_storage::sm::snapshot_file_stem(&meta);
    }
    if let Some(ForwardRequest::Write { request, .. }) = decode::<ForwardRequest>("ForwardRequest", bytes)? {
        let _ = keel_fuzz::no_panic("validate a forwarded write", || {
            keel_storage::validate_request(&request, &keel_storage::Limits::default())
        })?;
    }
    Ok(())
}

/// What a member does with a peer's reply.
fn answer(bytes: &[u8]) -> Result<(), TestCaseError> {
    let _ = decode::<AppendEntriesResponse<TypeConfig>>("AppendEntriesResponse", bytes)?;
    let _ = decode::<VoteResponse<TypeConfig>>("VoteResponse", bytes)?;
    let _ = decode::<TransferLeaderResponse<TypeConfig>>("TransferLeaderResponse", bytes)?;
    let _ = decode::<SnapshotResponse<TypeConfig>>("SnapshotResponse", bytes)?;
    let _ = decode::<RaftError<TypeConfig>>("RaftError", bytes)?;
    let _ = decode::<Fatal<TypeConfig>>("Fatal", bytes)?;
    let _ = decode::<ForwardReply>("ForwardReply", bytes)?;
    if let Some(e) = decode::<NodeError>("NodeError", bytes)? {
        let _ = e.to_status();
    }
    Ok(())
}

/// The gRPC layer first: prost decodes the envelope, then its fields are decoded as above.
fn wire(bytes: &[u8]) -> Result<(), TestCaseError> {
    let (request, reply, chunk) = alloc::bounded("prost decode of keel.raft.v1", bytes.len(), || {
        (
            RaftRequest::decode(bytes).ok(),
            RaftReply::decode(bytes).ok(),
            SnapshotChunk::decode(bytes).ok(),
        )
    })?;
    if let Some(r) = request {
        serve(&r.data)?;
    }
    if let Some(r) = reply {
        answer(&r.data)?;
        answer(&r.error)?;
    }
    if let Some(c) = chunk {
        serve(&c.meta)?;
    }
    serve(bytes)?;
    answer(bytes)
}

fn member(i: u64) -> Member {
    Member {
        peer_addr: format!("10.0.0.{i}:7101"),
        client_addr: format!("10.0.0.{i}:7001"),
    }
}

fn log_id() -> impl Strategy<Value = keel_storage::LogId> {
    (gen::edge_u64(), 0u64..8, gen::edge_u64()).prop_map(|(t, n, i)| log_id_at(t, n, i))
}

fn membership() -> impl Strategy<Value = Membership> {
    (1u64..6, any::<bool>()).prop_map(|(n, joint)| {
        let nodes = (1..=n)
            .map(|i| (i, member(i)))
            .collect::<std::collections::BTreeMap<_, _>>();
        let all: std::collections::BTreeSet<u64> = nodes.keys().copied().collect();
        let configs = if joint {
            vec![all.clone(), all.iter().copied().take(1).collect()]
        } else {
            vec![all]
        };
        Membership::new(configs, nodes).expect("voters have addresses")
    })
}

fn entry() -> impl Strategy<Value = Entry> {
    let payload = prop_oneof![
        Just(EntryPayload::Blank),
        model::request().prop_map(EntryPayload::Normal),
        membership().prop_map(EntryPayload::Membership),
    ];
    (log_id(), payload).prop_map(|(log_id, payload)| Entry { log_id, payload })
}

fn vote() -> impl Strategy<Value = Vote> {
    (gen::edge_u64(), 0u64..8, any::<bool>()).prop_map(|(term, node, committed)| {
        let v = Vote::new(term, node);
        if committed {
            Vote::new_committed(term, node)
        } else {
            v
        }
    })
}

/// A valid encoding of one of the requests a member sends its peers.
fn valid_request() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        (
            vote(),
            proptest::option::of(log_id()),
            vec(entry(), 0..4),
            proptest::option::of(log_id())
        )
            .prop_map(
                |(vote, prev_log_id, entries, leader_commit)| codec::encode(&AppendEntriesRequest::<TypeConfig> {
                    vote,
                    prev_log_id,
                    entries,
                    leader_commit,
                })
            ),
        (vote(), proptest::option::of(log_id()), any::<bool>()).prop_map(|(vote, last_log_id, leadership_transfer)| {
            codec::encode(&VoteRequest::<TypeConfig> {
                vote,
                last_log_id,
                leadership_transfer,
            })
        }),
        (vote(), proptest::option::of(log_id()), membership()).prop_map(|(vote, last, m)| {
            let meta = SnapshotMeta {
                last_log_id: last,
                last_membership: StoredMembership::new(last, m),
            };
            codec::encode(&(vote, meta))
        }),
        (model::request(), any::<u64>())
            .prop_map(|(request, timeout_ms)| codec::encode(&ForwardRequest::Write { request, timeout_ms })),
        (0u64..8, gen::edge_u64()).prop_map(|(id, n)| codec::encode(&ForwardRequest::AddLearner {
            id,
            member: member(n % 300)
        })),
    ]
}

#[test]
fn peer_messages_from_random_bytes() {
    check(
        "peer_messages_from_random_bytes",
        Cost::Cheap,
        gen::bytes(2048),
        |bytes| wire(&bytes),
    );
}

#[test]
fn peer_messages_mutated() {
    check(
        "peer_messages_mutated",
        Cost::Cheap,
        gen::mutated(valid_request()),
        |bytes| {
            serve(&bytes)?;
            answer(&bytes)?;
            wire(&RaftRequest { data: bytes }.encode_to_vec())
        },
    );
}

/// Valid peer messages decode to what was encoded.
#[test]
fn peer_messages_round_trip() {
    let append = (
        vote(),
        proptest::option::of(log_id()),
        vec(entry(), 0..4),
        proptest::option::of(log_id()),
    );
    check(
        "peer_messages_round_trip",
        Cost::Cheap,
        append,
        |(vote, prev_log_id, entries, leader_commit)| {
            let rpc = AppendEntriesRequest::<TypeConfig> {
                vote,
                prev_log_id,
                entries,
                leader_commit,
            };
            let well_formed = rpc.entries.iter().all(|e| match &e.payload {
                EntryPayload::Normal(r) => model::well_formed(r),
                _ => true,
            });
            let back = codec::decode::<AppendEntriesRequest<TypeConfig>>(&codec::encode(&rpc));
            match back {
                Ok(back) => prop_assert_eq!(format!("{back:?}"), format!("{rpc:?}")),
                Err(e) => prop_assert!(!well_formed, "a well-formed request does not decode: {e}"),
            }
            for entry in &rpc.entries {
                if let EntryPayload::Normal(r) = &entry.payload {
                    if !model::well_formed(r) {
                        continue;
                    }
                }
                let back: Entry = codec::decode(&codec::encode(entry)).expect("decodes");
                prop_assert_eq!(&back, entry);
            }
            Ok(())
        },
    );
}
