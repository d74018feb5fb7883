//! Client requests, from the wire to the command proposed to Raft: keel's own KV messages and
//! etcd's, decoded by prost from arbitrary bytes or generated with extreme fields, then put
//! through the services' conversion (keel-server's `convert` and `etcd::convert`) and
//! validation (keel-storage's `validate_request` / `validate_range`) exactly as the services do.
//!
//! Properties: nothing panics; and a request that validation accepts encodes and decodes back
//! to itself within `max_request_bytes`. The second is what keeps a follower from choking on a
//! log entry the leader accepted: validation and the log decoder must agree on what is
//! well-formed (nesting depth, batches, range compares).

use keel_fuzz::model::{self, Etcd, V1};
use keel_fuzz::{alloc, check, gen, Cost};
use keel_proto::etcd::etcdserverpb as pb;
use keel_proto::v1;
use keel_server::{convert, etcd};
use keel_storage::{codec, validate_range, validate_request, Command, Limits, Request, SessionRef, TxnOp};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use prost::Message;

/// The default limits, and small ones that generated keys, values and txns cross.
fn limits() -> impl Strategy<Value = Limits> {
    prop_oneof![
        Just(Limits::default()),
        Just(Limits {
            max_key_bytes: 8,
            max_value_bytes: 32,
            max_txn_ops: 3,
            max_request_bytes: 400,
        }),
    ]
}

/// Validate `request` as a service does; if it is accepted, it must survive the log.
fn propose(request: Request, limits: &Limits) -> Result<(), TestCaseError> {
    let verdict = keel_fuzz::no_panic("validate_request", || validate_request(&request, limits))?;
    if verdict.is_ok() {
        let bytes = codec::encode(&request);
        prop_assert!(
            bytes.len() <= limits.max_request_bytes,
            "accepted a request of {} bytes",
            bytes.len()
        );
        let back: Request = codec::decode(&bytes)
            .map_err(|e| TestCaseError::fail(format!("an accepted request does not decode from the log: {e}")))?;
        prop_assert_eq!(back, request);
    }
    Ok(())
}

fn session(s: Option<v1::WriteSession>) -> Option<SessionRef> {
    s.map(|s| SessionRef {
        client_id: s.client_id,
        seq: s.seq,
    })
}

/// keel's KV service, from a decoded message to the proposal (service/kv.rs).
fn keel_kv(req: V1, limits: &Limits) -> Result<(), TestCaseError> {
    match req {
        V1::Range(r) => {
            if let Ok(op) = convert::range_op(&r) {
                let _ = validate_range(&op, limits);
            }
            Ok(())
        }
        V1::Put(p) => {
            let session = session(p.session);
            propose(
                Request {
                    session,
                    command: convert::put_command(p),
                },
                limits,
            )
        }
        V1::Delete(d) => match convert::delete_op(&d) {
            Ok(op) => propose(
                Request {
                    session: session(d.session),
                    command: Command::Delete(op),
                },
                limits,
            ),
            Err(_) => Ok(()),
        },
        V1::Txn(t) => {
            let session = session(t.session);
            match convert::txn(t) {
                Ok(txn) => propose(
                    Request {
                        session,
                        command: Command::Txn(txn),
                    },
                    limits,
                ),
                Err(_) => Ok(()),
            }
        }
    }
}

/// keel's etcd KV service, from a decoded message to the proposal (etcd/kv.rs).
fn etcd_kv(req: Etcd, limits: &Limits) -> Result<(), TestCaseError> {
    let command = match req {
        Etcd::Range(r) => {
            if let Ok(plan) = etcd::convert::range_plan(&r) {
                let _ = validate_range(&plan.op, limits);
            }
            return Ok(());
        }
        Etcd::Put(p) => match etcd::convert::put_op(&p) {
            Ok(TxnOp::Put(put)) => Command::Put(put),
            Ok(TxnOp::LeasedPut(put)) => Command::LeasedPut(put),
            Ok(TxnOp::PutWith(put)) => Command::PutWith(put),
            Ok(other) => return Err(TestCaseError::fail(format!("put_op made {other:?}"))),
            Err(_) => return Ok(()),
        },
        Etcd::Delete(d) => match etcd::convert::delete_op(&d) {
            Ok(Some(op)) => Command::Delete(op),
            _ => return Ok(()),
        },
        Etcd::Txn(t) => match etcd::convert::txn_plan(t) {
            Ok(plan) => Command::Txn(plan.txn),
            Err(_) => return Ok(()),
        },
        Etcd::Compact(c) => Command::Compact(c.revision.max(0) as u64),
    };
    propose(Request::new(command), limits)
}

/// Every keel request message prost can make of `bytes`, through the KV service.
fn keel_from_bytes(bytes: &[u8], limits: &Limits) -> Result<(), TestCaseError> {
    let decoded = alloc::bounded("prost decode of keel.v1", bytes.len(), || {
        (
            v1::RangeRequest::decode(bytes).ok().map(V1::Range),
            v1::PutRequest::decode(bytes).ok().map(V1::Put),
            v1::DeleteRangeRequest::decode(bytes).ok().map(V1::Delete),
            v1::TxnRequest::decode(bytes).ok().map(V1::Txn),
        )
    })?;
    for req in [decoded.0, decoded.1, decoded.2, decoded.3].into_iter().flatten() {
        keel_kv(req, limits)?;
    }
    Ok(())
}

fn etcd_from_bytes(bytes: &[u8], limits: &Limits) -> Result<(), TestCaseError> {
    let decoded = alloc::bounded("prost decode of etcdserverpb", bytes.len(), || {
        [
            pb::RangeRequest::decode(bytes).ok().map(Etcd::Range),
            pb::PutRequest::decode(bytes).ok().map(Etcd::Put),
            pb::DeleteRangeRequest::decode(bytes).ok().map(Etcd::Delete),
            pb::TxnRequest::decode(bytes).ok().map(Etcd::Txn),
            pb::CompactionRequest::decode(bytes).ok().map(Etcd::Compact),
        ]
    })?;
    for req in decoded.into_iter().flatten() {
        etcd_kv(req, limits)?;
    }
    Ok(())
}

fn encode_v1(req: &V1) -> Vec<u8> {
    match req {
        V1::Range(r) => r.encode_to_vec(),
        V1::Put(r) => r.encode_to_vec(),
        V1::Delete(r) => r.encode_to_vec(),
        V1::Txn(r) => r.encode_to_vec(),
    }
}

fn encode_etcd(req: &Etcd) -> Vec<u8> {
    match req {
        Etcd::Range(r) => r.encode_to_vec(),
        Etcd::Put(r) => r.encode_to_vec(),
        Etcd::Delete(r) => r.encode_to_vec(),
        Etcd::Txn(r) => r.encode_to_vec(),
        Etcd::Compact(r) => r.encode_to_vec(),
    }
}

#[test]
fn keel_kv_from_random_bytes() {
    check(
        "keel_kv_from_random_bytes",
        Cost::Cheap,
        (gen::bytes(2048), limits()),
        |(bytes, limits)| keel_from_bytes(&bytes, &limits),
    );
}

#[test]
fn keel_kv_structured() {
    check(
        "keel_kv_structured",
        Cost::Cheap,
        (model::v1_request(), limits()),
        |(req, limits)| keel_kv(req, &limits),
    );
}

#[test]
fn keel_kv_mutated() {
    let valid = model::v1_request().prop_map(|r| encode_v1(&r));
    check(
        "keel_kv_mutated",
        Cost::Cheap,
        (gen::mutated(valid), limits()),
        |(bytes, limits)| keel_from_bytes(&bytes, &limits),
    );
}

#[test]
fn etcd_kv_from_random_bytes() {
    check(
        "etcd_kv_from_random_bytes",
        Cost::Cheap,
        (gen::bytes(2048), limits()),
        |(bytes, limits)| etcd_from_bytes(&bytes, &limits),
    );
}

#[test]
fn etcd_kv_structured() {
    check(
        "etcd_kv_structured",
        Cost::Cheap,
        (model::etcd_request(), limits()),
        |(req, limits)| {
            // prost itself round-trips what it encodes.
            let bytes = encode_etcd(&req);
            if let Etcd::Txn(t) = &req {
                prop_assert_eq!(&pb::TxnRequest::decode(&bytes[..]).expect("decodes"), t);
            }
            etcd_kv(req, &limits)
        },
    );
}

#[test]
fn etcd_kv_mutated() {
    let valid = model::etcd_request().prop_map(|r| encode_etcd(&r));
    check(
        "etcd_kv_mutated",
        Cost::Cheap,
        (gen::mutated(valid), limits()),
        |(bytes, limits)| etcd_from_bytes(&bytes, &limits),
    );
}

/// Requests as the log holds them, generated whole (leader-only commands, batches, sessions at
/// seq 0, txns nested and with range compares in range compares): validation refuses or the
/// request round-trips.
#[test]
fn storage_requests_validate_or_round_trip() {
    check(
        "storage_requests_validate_or_round_trip",
        Cost::Cheap,
        (model::request(), limits()),
        |(req, limits)| propose(req, &limits),
    );
}

/// etcd txns nested around the limit (32 below the outer one), and past what prost decodes
/// (its recursion limit is 100 messages): refused or accepted, and an accepted one decodes.
#[test]
fn etcd_txns_nested_deep() {
    fn nested(depth: u32) -> pb::TxnRequest {
        let mut t = pb::TxnRequest {
            compare: Vec::new(),
            success: vec![pb::RequestOp {
                request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
                    key: b"k".to_vec(),
                    value: b"v".to_vec(),
                    ..Default::default()
                })),
            }],
            failure: Vec::new(),
        };
        for _ in 0..depth {
            t = pb::TxnRequest {
                compare: Vec::new(),
                success: vec![pb::RequestOp {
                    request: Some(pb::request_op::Request::RequestTxn(t)),
                }],
                failure: Vec::new(),
            };
        }
        t
    }
    check("etcd_txns_nested_deep", Cost::Cheap, 0u32..120, |depth| {
        let bytes = nested(depth).encode_to_vec();
        let Ok(t) = pb::TxnRequest::decode(&bytes[..]) else {
            prop_assert!(depth > 40, "prost refused a txn nested {depth} deep");
            return Ok(());
        };
        let Ok(plan) = etcd::convert::txn_plan(t) else {
            return Ok(());
        };
        let request = Request::new(Command::Txn(plan.txn));
        let accepted = validate_request(&request, &Limits::default()).is_ok();
        prop_assert_eq!(accepted, depth <= keel_storage::MAX_TXN_NESTING, "depth {}", depth);
        propose(request, &Limits::default())
    });
}

/// keel-storage's own txns at the nesting limit and one past it.
#[test]
fn storage_txns_at_the_nesting_limit() {
    let max = keel_storage::MAX_TXN_NESTING;
    let ok = Request::new(Command::Txn(model::deep_txn(max)));
    assert!(validate_request(&ok, &Limits::default()).is_ok());
    propose(ok, &Limits::default()).expect("a txn at the limit survives the log");
    let deep = Request::new(Command::Txn(model::deep_txn(max + 1)));
    assert!(validate_request(&deep, &Limits::default()).is_err());
    assert!(codec::decode::<Request>(&codec::encode(&deep)).is_err());
}
