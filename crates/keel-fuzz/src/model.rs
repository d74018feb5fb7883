//! Structured inputs: keel-storage's commands and records, and keel's and etcd's request
//! messages, valid in shape but with extreme fields (empty and oversized keys, huge limits,
//! negative revisions, unknown enum numbers, txns nested past the limit). Random bytes rarely
//! get past a decoder's first check; these reach validation and the round-trip properties.

use keel_proto::etcd::etcdserverpb as pb;
use keel_proto::v1;
use keel_storage as st;
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;

use crate::gen::{edge_i64, edge_u64, key, value};

fn put_op() -> impl Strategy<Value = st::PutOp> {
    (key(), value(), any::<bool>()).prop_map(|(key, value, prev_kv)| st::PutOp { key, value, prev_kv })
}

fn key_range() -> impl Strategy<Value = st::KeyRange> {
    prop_oneof![
        key().prop_map(st::KeyRange::Key),
        key().prop_map(st::KeyRange::Prefix),
        key().prop_map(st::KeyRange::From),
        (key(), key()).prop_map(|(start, end)| st::KeyRange::Between { start, end }),
    ]
}

fn compare_target() -> impl Strategy<Value = st::CompareTarget> {
    let flat = prop_oneof![
        value().prop_map(st::CompareTarget::Value),
        edge_u64().prop_map(st::CompareTarget::Version),
        edge_u64().prop_map(st::CompareTarget::CreateRevision),
        edge_u64().prop_map(st::CompareTarget::ModRevision),
        edge_u64().prop_map(st::CompareTarget::Lease),
    ];
    // A range compare holds a flat target; validation must refuse one holding another range.
    flat.prop_recursive(2, 3, 1, |inner| {
        (key(), inner).prop_map(|(end, target)| st::CompareTarget::Range {
            end,
            target: Box::new(target),
        })
    })
}

fn compare() -> impl Strategy<Value = st::Compare> {
    let op = prop_oneof![
        Just(st::CompareOp::Equal),
        Just(st::CompareOp::NotEqual),
        Just(st::CompareOp::Less),
        Just(st::CompareOp::Greater),
    ];
    (key(), op, compare_target()).prop_map(|(key, op, target)| st::Compare { key, op, target })
}

fn put_with() -> impl Strategy<Value = st::PutWith> {
    (put_op(), edge_u64(), any::<bool>(), any::<bool>()).prop_map(|(put, lease, ignore_value, ignore_lease)| {
        st::PutWith {
            put,
            lease,
            ignore_value,
            ignore_lease,
        }
    })
}

fn flat_txn_op() -> impl Strategy<Value = st::TxnOp> {
    prop_oneof![
        put_op().prop_map(st::TxnOp::Put),
        (key_range(), any::<bool>()).prop_map(|(range, prev_kv)| st::TxnOp::Delete(st::DeleteOp { range, prev_kv })),
        (key_range(), edge_u64(), any::<bool>(), any::<bool>()).prop_map(|(range, limit, keys_only, count_only)| {
            st::TxnOp::Range(st::RangeOp {
                range,
                limit,
                keys_only,
                count_only,
            })
        }),
        (put_op(), edge_u64()).prop_map(|(put, lease)| st::TxnOp::LeasedPut(st::LeasedPut { put, lease })),
        put_with().prop_map(st::TxnOp::PutWith),
    ]
}

/// Txns, nested a few levels (deep nesting is [`deep_txn`]'s).
pub fn txn() -> impl Strategy<Value = st::Txn> {
    let leaf = (vec(compare(), 0..3), vec(flat_txn_op(), 0..4), vec(flat_txn_op(), 0..3)).prop_map(
        |(compares, success, failure)| st::Txn {
            compares,
            success,
            failure,
        },
    );
    leaf.prop_recursive(3, 24, 3, |inner| {
        (
            vec(compare(), 0..2),
            vec(
                prop_oneof![3 => flat_txn_op(), 1 => inner.clone().prop_map(st::TxnOp::Txn)],
                0..3,
            ),
            vec(
                prop_oneof![3 => flat_txn_op(), 1 => inner.prop_map(st::TxnOp::Txn)],
                0..2,
            ),
        )
            .prop_map(|(compares, success, failure)| st::Txn {
                compares,
                success,
                failure,
            })
    })
}

/// A txn nested `depth` levels below the outer one, around one put.
pub fn deep_txn(depth: u32) -> st::Txn {
    let mut t = st::Txn {
        compares: Vec::new(),
        success: vec![st::TxnOp::Put(st::PutOp {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            prev_kv: false,
        })],
        failure: Vec::new(),
    };
    for _ in 0..depth {
        t = st::Txn {
            compares: Vec::new(),
            success: vec![st::TxnOp::Txn(t)],
            failure: Vec::new(),
        };
    }
    t
}

/// Any command, the ones only the leader proposes included.
pub fn command() -> impl Strategy<Value = st::Command> {
    let simple = prop_oneof![
        put_op().prop_map(st::Command::Put),
        (key_range(), any::<bool>()).prop_map(|(range, prev_kv)| st::Command::Delete(st::DeleteOp { range, prev_kv })),
        txn().prop_map(st::Command::Txn),
        (put_op(), edge_u64()).prop_map(|(put, lease)| st::Command::LeasedPut(st::LeasedPut { put, lease })),
        (edge_u64(), edge_u64()).prop_map(|(id, ttl_ms)| st::Command::LeaseGrant(st::LeaseGrant { id, ttl_ms })),
        edge_u64().prop_map(|id| st::Command::LeaseRevoke(st::LeaseRef { id })),
        edge_u64().prop_map(|id| st::Command::LeaseRenew(st::LeaseRef { id })),
        vec((edge_u64(), edge_u64(), edge_u64()), 0..3).prop_map(|v| st::Command::LeaseCheckpoint(
            v.into_iter()
                .map(|(id, remaining_ms, epoch)| st::LeaseCheckpoint {
                    id,
                    remaining_ms,
                    epoch
                })
                .collect()
        )),
        (edge_u64(), edge_u64()).prop_map(|(id, epoch)| st::Command::LeaseExpire(st::LeaseExpire { id, epoch })),
        edge_u64().prop_map(st::Command::Compact),
        put_with().prop_map(st::Command::PutWith),
    ];
    // A user's command (what the auth gate proposes), sometimes one inside another.
    let token = proptest::option::of(any::<[u8; 32]>());
    let as_user = (".{0,6}", token.clone(), simple.clone()).prop_map(|(user, token, command)| {
        st::Command::AsUser(st::AsUser {
            user,
            token,
            command: Box::new(command),
        })
    });
    let as_user = as_user.prop_recursive(2, 2, 1, move |inner| {
        (".{0,6}", token.clone(), inner).prop_map(|(user, token, command)| {
            st::Command::AsUser(st::AsUser {
                user,
                token,
                command: Box::new(command),
            })
        })
    });
    prop_oneof![
        8 => simple.clone(),
        1 => vec(request_of(simple), 0..3).prop_map(st::Command::Batch),
        1 => as_user,
    ]
}

fn session() -> impl Strategy<Value = Option<st::SessionRef>> {
    option::of((edge_u64(), edge_u64()).prop_map(|(client_id, seq)| st::SessionRef { client_id, seq }))
}

fn request_of(command: impl Strategy<Value = st::Command>) -> impl Strategy<Value = st::Request> {
    (session(), command).prop_map(|(session, command)| st::Request { session, command })
}

/// Any request, as the log holds them.
pub fn request() -> impl Strategy<Value = st::Request> {
    request_of(command())
}

// ---- keel.v1 messages ----

fn v1_compare() -> impl Strategy<Value = v1::Compare> {
    use v1::compare::Target;
    let target = option::of(prop_oneof![
        value().prop_map(Target::Value),
        edge_u64().prop_map(Target::Version),
        edge_u64().prop_map(Target::CreateRevision),
        edge_u64().prop_map(Target::ModRevision),
    ]);
    (key(), prop_oneof![0i32..4, any::<i32>()], target).prop_map(|(key, op, target)| v1::Compare { key, op, target })
}

fn v1_range() -> impl Strategy<Value = v1::RangeRequest> {
    (
        key(),
        prop_oneof![Just(Vec::new()), Just(vec![0]), key()],
        any::<bool>(),
        edge_u64(),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            |(key, range_end, prefix, limit, keys_only, count_only, serializable)| v1::RangeRequest {
                key,
                range_end,
                prefix,
                limit,
                keys_only,
                count_only,
                serializable,
            },
        )
}

fn v1_put() -> impl Strategy<Value = v1::PutRequest> {
    (key(), value(), any::<bool>(), edge_i64()).prop_map(|(key, value, prev_kv, lease)| v1::PutRequest {
        key,
        value,
        prev_kv,
        lease,
        ..Default::default()
    })
}

fn v1_delete() -> impl Strategy<Value = v1::DeleteRangeRequest> {
    (
        key(),
        prop_oneof![Just(Vec::new()), Just(vec![0]), key()],
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(key, range_end, prefix, prev_kv)| v1::DeleteRangeRequest {
            key,
            range_end,
            prefix,
            prev_kv,
            ..Default::default()
        })
}

/// keel's TxnRequest (it has no nested txns).
pub fn v1_txn() -> impl Strategy<Value = v1::TxnRequest> {
    use v1::request_op::Request;
    let op = option::of(prop_oneof![
        v1_range().prop_map(Request::Range),
        v1_put().prop_map(Request::Put),
        v1_delete().prop_map(Request::DeleteRange),
    ])
    .prop_map(|request| v1::RequestOp { request });
    (vec(v1_compare(), 0..4), vec(op.clone(), 0..5), vec(op, 0..3)).prop_map(|(compare, success, failure)| {
        v1::TxnRequest {
            compare,
            success,
            failure,
            ..Default::default()
        }
    })
}

/// One of keel's client requests, as the KV service receives it.
#[derive(Debug, Clone)]
pub enum V1 {
    Range(v1::RangeRequest),
    Put(v1::PutRequest),
    Delete(v1::DeleteRangeRequest),
    Txn(v1::TxnRequest),
}

pub fn v1_request() -> impl Strategy<Value = V1> {
    prop_oneof![
        v1_range().prop_map(V1::Range),
        v1_put().prop_map(V1::Put),
        v1_delete().prop_map(V1::Delete),
        v1_txn().prop_map(V1::Txn),
    ]
}

// ---- etcd messages ----

fn etcd_range() -> impl Strategy<Value = pb::RangeRequest> {
    (
        (
            key(),
            prop_oneof![Just(Vec::new()), Just(vec![0]), key()],
            edge_i64(),
            edge_i64(),
        ),
        (-1i32..7, -1i32..7, any::<bool>(), any::<bool>(), any::<bool>()),
        (edge_i64(), edge_i64(), edge_i64(), edge_i64()),
    )
        .prop_map(
            |((key, range_end, limit, revision), (sort_order, sort_target, serializable, keys_only, count_only), m)| {
                pb::RangeRequest {
                    key,
                    range_end,
                    limit,
                    revision,
                    sort_order,
                    sort_target,
                    serializable,
                    keys_only,
                    count_only,
                    min_mod_revision: m.0,
                    max_mod_revision: m.1,
                    min_create_revision: m.2,
                    max_create_revision: m.3,
                }
            },
        )
}

fn etcd_put() -> impl Strategy<Value = pb::PutRequest> {
    (key(), value(), edge_i64(), any::<bool>(), any::<bool>(), any::<bool>()).prop_map(
        |(key, value, lease, prev_kv, ignore_value, ignore_lease)| pb::PutRequest {
            key,
            value,
            lease,
            prev_kv,
            ignore_value,
            ignore_lease,
        },
    )
}

fn etcd_delete() -> impl Strategy<Value = pb::DeleteRangeRequest> {
    (
        key(),
        prop_oneof![Just(Vec::new()), Just(vec![0]), key()],
        any::<bool>(),
    )
        .prop_map(|(key, range_end, prev_kv)| pb::DeleteRangeRequest {
            key,
            range_end,
            prev_kv,
        })
}

fn etcd_compare() -> impl Strategy<Value = pb::Compare> {
    use pb::compare::TargetUnion;
    let union = option::of(prop_oneof![
        edge_i64().prop_map(TargetUnion::Version),
        edge_i64().prop_map(TargetUnion::CreateRevision),
        edge_i64().prop_map(TargetUnion::ModRevision),
        value().prop_map(TargetUnion::Value),
        edge_i64().prop_map(TargetUnion::Lease),
    ]);
    (
        -1i32..5,
        -1i32..6,
        key(),
        union,
        prop_oneof![Just(Vec::new()), Just(vec![0]), key()],
    )
        .prop_map(|(result, target, key, target_union, range_end)| pb::Compare {
            result,
            target,
            key,
            target_union,
            range_end,
        })
}

/// etcd's TxnRequest, nested a few levels (etcd's clients nest them).
pub fn etcd_txn() -> impl Strategy<Value = pb::TxnRequest> {
    use pb::request_op::Request;
    let flat_op = option::of(prop_oneof![
        etcd_range().prop_map(Request::RequestRange),
        etcd_put().prop_map(Request::RequestPut),
        etcd_delete().prop_map(Request::RequestDeleteRange),
    ])
    .prop_map(|request| pb::RequestOp { request });
    let leaf = (
        vec(etcd_compare(), 0..3),
        vec(flat_op.clone(), 0..4),
        vec(flat_op.clone(), 0..3),
    )
        .prop_map(|(compare, success, failure)| pb::TxnRequest {
            compare,
            success,
            failure,
        });
    leaf.prop_recursive(3, 24, 3, move |inner| {
        let op = prop_oneof![
            3 => flat_op.clone(),
            1 => inner.prop_map(|t| pb::RequestOp {
                request: Some(Request::RequestTxn(t))
            }),
        ];
        (vec(etcd_compare(), 0..2), vec(op.clone(), 0..3), vec(op, 0..2)).prop_map(|(compare, success, failure)| {
            pb::TxnRequest {
                compare,
                success,
                failure,
            }
        })
    })
}

/// One of etcd's KV requests, as keel's etcd KV service receives it.
#[derive(Debug, Clone)]
pub enum Etcd {
    Range(pb::RangeRequest),
    Put(pb::PutRequest),
    Delete(pb::DeleteRangeRequest),
    Txn(pb::TxnRequest),
    Compact(pb::CompactionRequest),
}

pub fn etcd_request() -> impl Strategy<Value = Etcd> {
    prop_oneof![
        etcd_range().prop_map(Etcd::Range),
        etcd_put().prop_map(Etcd::Put),
        etcd_delete().prop_map(Etcd::Delete),
        etcd_txn().prop_map(Etcd::Txn),
        (edge_i64(), any::<bool>())
            .prop_map(|(revision, physical)| Etcd::Compact(pb::CompactionRequest { revision, physical })),
    ]
}

/// Whether the log decoder takes `request` back: no batch inside a batch, no range compare
/// inside a range compare, txns nested at most [`st::MAX_TXN_NESTING`] deep. (Anything
/// [`request`] generates is otherwise what keel could write.)
pub fn well_formed(request: &st::Request) -> bool {
    fn txn_ok(t: &st::Txn, depth: u32) -> bool {
        depth <= st::MAX_TXN_NESTING
            && t.compares.iter().all(|c| match &c.target {
                st::CompareTarget::Range { target, .. } => !matches!(**target, st::CompareTarget::Range { .. }),
                _ => true,
            })
            && t.success.iter().chain(&t.failure).all(|op| match op {
                st::TxnOp::Txn(inner) => txn_ok(inner, depth + 1),
                _ => true,
            })
    }
    fn command_ok(c: &st::Command, in_batch: bool) -> bool {
        match c {
            st::Command::Txn(t) => txn_ok(t, 0),
            st::Command::Batch(requests) => !in_batch && requests.iter().all(|r| command_ok(&r.command, true)),
            st::Command::AsUser(a) => !matches!(*a.command, st::Command::AsUser(_)) && command_ok(&a.command, in_batch),
            _ => true,
        }
    }
    command_ok(&request.command, false)
}
