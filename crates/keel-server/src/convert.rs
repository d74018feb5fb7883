//! Conversions between the gRPC messages and keel-storage's types.
//!
//! Requests convert with a [`ConvertError`] when they are malformed (a compare without a target, an
//! op without a request, `prefix` together with `range_end`); the server answers those with
//! `InvalidArgument`, like every failed validation. Results convert infallibly.

use keel_storage as st;

use keel_proto::v1;

/// Why a request message could not be turned into a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConvertError {
    #[error("prefix and range_end cannot both be set")]
    PrefixWithRangeEnd,
    #[error("txn compare on key {0:?} has no target")]
    CompareWithoutTarget(String),
    #[error("txn op has no request")]
    EmptyOp,
    #[error("unknown compare operator {0}")]
    UnknownCompareOp(i32),
}

/// The key set addressed by `key`, `range_end` and `prefix` (see kv.proto).
pub fn key_range(key: &[u8], range_end: &[u8], prefix: bool) -> Result<st::KeyRange, ConvertError> {
    Ok(match (prefix, range_end) {
        (true, []) => st::KeyRange::Prefix(key.to_vec()),
        (true, _) => return Err(ConvertError::PrefixWithRangeEnd),
        (false, []) => st::KeyRange::Key(key.to_vec()),
        (false, [0]) => st::KeyRange::From(key.to_vec()),
        (false, end) => st::KeyRange::Between {
            start: key.to_vec(),
            end: end.to_vec(),
        },
    })
}

pub fn range_op(req: &v1::RangeRequest) -> Result<st::RangeOp, ConvertError> {
    Ok(st::RangeOp {
        range: key_range(&req.key, &req.range_end, req.prefix)?,
        limit: req.limit,
        keys_only: req.keys_only,
        count_only: req.count_only,
    })
}

pub fn put_op(req: v1::PutRequest) -> st::PutOp {
    st::PutOp {
        key: req.key,
        value: req.value,
        prev_kv: req.prev_kv,
    }
}

/// A put, with its lease if it names one. A negative lease id is out of range, as validation
/// reports (it becomes a huge unsigned id).
pub fn put_command(req: v1::PutRequest) -> st::Command {
    match req.lease {
        0 => st::Command::Put(put_op(req)),
        lease => st::Command::LeasedPut(st::LeasedPut {
            lease: lease as u64,
            put: put_op(req),
        }),
    }
}

pub fn delete_op(req: &v1::DeleteRangeRequest) -> Result<st::DeleteOp, ConvertError> {
    Ok(st::DeleteOp {
        range: key_range(&req.key, &req.range_end, req.prefix)?,
        prev_kv: req.prev_kv,
    })
}

fn compare(c: v1::Compare) -> Result<st::Compare, ConvertError> {
    use v1::compare::{Op, Target};
    let op = match Op::try_from(c.op).map_err(|_| ConvertError::UnknownCompareOp(c.op))? {
        Op::Equal => st::CompareOp::Equal,
        Op::NotEqual => st::CompareOp::NotEqual,
        Op::Less => st::CompareOp::Less,
        Op::Greater => st::CompareOp::Greater,
    };
    let target = match c.target {
        Some(Target::Value(v)) => st::CompareTarget::Value(v),
        Some(Target::Version(n)) => st::CompareTarget::Version(n),
        Some(Target::CreateRevision(n)) => st::CompareTarget::CreateRevision(n),
        Some(Target::ModRevision(n)) => st::CompareTarget::ModRevision(n),
        None => {
            return Err(ConvertError::CompareWithoutTarget(
                String::from_utf8_lossy(&c.key).into_owned(),
            ))
        }
    };
    Ok(st::Compare { key: c.key, op, target })
}

fn txn_op(op: v1::RequestOp) -> Result<st::TxnOp, ConvertError> {
    use v1::request_op::Request;
    Ok(match op.request.ok_or(ConvertError::EmptyOp)? {
        Request::Range(r) => st::TxnOp::Range(range_op(&r)?),
        Request::Put(p) => match p.lease {
            0 => st::TxnOp::Put(put_op(p)),
            lease => st::TxnOp::LeasedPut(st::LeasedPut {
                lease: lease as u64,
                put: put_op(p),
            }),
        },
        Request::DeleteRange(d) => st::TxnOp::Delete(delete_op(&d)?),
    })
}

pub fn txn(req: v1::TxnRequest) -> Result<st::Txn, ConvertError> {
    Ok(st::Txn {
        compares: req.compare.into_iter().map(compare).collect::<Result<_, _>>()?,
        success: req.success.into_iter().map(txn_op).collect::<Result<_, _>>()?,
        failure: req.failure.into_iter().map(txn_op).collect::<Result<_, _>>()?,
    })
}

pub fn key_value(kv: st::KeyValue) -> v1::KeyValue {
    v1::KeyValue {
        key: kv.key,
        value: kv.value,
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        version: kv.version,
    }
}

pub fn range_response(r: st::RangeResult, header: v1::ResponseHeader) -> v1::RangeResponse {
    v1::RangeResponse {
        header: Some(header),
        kvs: r.kvs.into_iter().map(key_value).collect(),
        count: r.count,
        more: r.more,
    }
}

pub fn put_response(r: st::PutResult, header: v1::ResponseHeader) -> v1::PutResponse {
    v1::PutResponse {
        header: Some(header),
        prev_kv: r.prev_kv.map(key_value),
    }
}

pub fn delete_response(r: st::DeleteResult, header: v1::ResponseHeader) -> v1::DeleteRangeResponse {
    v1::DeleteRangeResponse {
        header: Some(header),
        deleted: r.deleted,
        prev_kvs: r.prev_kvs.into_iter().map(key_value).collect(),
    }
}

pub fn txn_response(r: st::TxnResult, header: v1::ResponseHeader) -> v1::TxnResponse {
    use v1::response_op::Response;
    let responses = r
        .responses
        .into_iter()
        .map(|op| v1::ResponseOp {
            // Nested responses carry no header of their own: the txn's header covers them.
            // keel's API has no nested txns (only etcd's proposes them), so none answers here.
            response: Some(match op {
                st::OpResult::Txn(_) => return v1::ResponseOp { response: None },
                st::OpResult::Range(r) => Response::Range(v1::RangeResponse {
                    header: None,
                    ..range_response(r, v1::ResponseHeader::default())
                }),
                st::OpResult::Put(p) => Response::Put(v1::PutResponse {
                    header: None,
                    ..put_response(p, v1::ResponseHeader::default())
                }),
                st::OpResult::Delete(d) => Response::DeleteRange(v1::DeleteRangeResponse {
                    header: None,
                    ..delete_response(d, v1::ResponseHeader::default())
                }),
            }),
        })
        .collect();
    v1::TxnResponse {
        header: Some(header),
        succeeded: r.succeeded,
        responses,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_ranges_follow_the_proto_rules() {
        assert_eq!(key_range(b"a", b"", false), Ok(st::KeyRange::Key(b"a".to_vec())));
        assert_eq!(key_range(b"a", b"", true), Ok(st::KeyRange::Prefix(b"a".to_vec())));
        assert_eq!(key_range(b"", b"", true), Ok(st::KeyRange::Prefix(vec![])));
        assert_eq!(key_range(b"a", b"\0", false), Ok(st::KeyRange::From(b"a".to_vec())));
        assert_eq!(
            key_range(b"a", b"c", false),
            Ok(st::KeyRange::Between {
                start: b"a".to_vec(),
                end: b"c".to_vec()
            })
        );
        assert_eq!(key_range(b"a", b"c", true), Err(ConvertError::PrefixWithRangeEnd));
    }

    #[test]
    fn malformed_txns_are_named() {
        let no_target = v1::TxnRequest {
            compare: vec![v1::Compare {
                key: b"k".to_vec(),
                op: 0,
                target: None,
            }],
            ..Default::default()
        };
        assert_eq!(txn(no_target), Err(ConvertError::CompareWithoutTarget("k".into())));
        let empty_op = v1::TxnRequest {
            success: vec![v1::RequestOp { request: None }],
            ..Default::default()
        };
        assert_eq!(txn(empty_op), Err(ConvertError::EmptyOp));
        let bad_op = v1::TxnRequest {
            compare: vec![v1::Compare {
                key: b"k".to_vec(),
                op: 42,
                target: Some(v1::compare::Target::Version(1)),
            }],
            ..Default::default()
        };
        assert_eq!(txn(bad_op), Err(ConvertError::UnknownCompareOp(42)));
    }
}
