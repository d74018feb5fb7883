//! The requests of the data set and of the checks, and the encoded answers the facts keep: hex
//! and JSON helpers, writes sent encoded, and the comparison of answers.

use anyhow::{bail, ensure, Context};
use keel_proto::v1::compare::Target;
use keel_proto::v1::request_op::Request;
use keel_proto::v1::{
    compare::Op, Compare, DeleteRangeRequest, KeyValue, PutRequest, RangeRequest, RequestOp, ResponseHeader,
    TxnRequest, WriteSession,
};
use serde_json::Value;
use tonic::Code;
use tonic_prost::prost::Message;

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
pub fn unhex(v: &Value) -> anyhow::Result<Vec<u8>> {
    let s = v
        .as_str()
        .filter(|s| s.len() % 2 == 0)
        .with_context(|| format!("not hex: {v}"))?;
    let byte = |i: usize| Ok(u8::from_str_radix(&s[i..i + 2], 16)?);
    (0..s.len()).step_by(2).map(byte).collect()
}
pub fn num(v: &Value, field: &str) -> anyhow::Result<u64> {
    v[field].as_u64().with_context(|| format!("no number {field} in {v}"))
}

/// Sends an encoded write of `kind` to member `id`; returns the answer, encoded. The facts keep
/// exactly-once writes so, as protobuf: exact, and decodable by any later build of the same API.
pub async fn send(kind: &str, req: &[u8], id: u64, codes: &[Code]) -> anyhow::Result<Result<Vec<u8>, tonic::Status>> {
    Ok(match kind {
        "put" => call!(id, codes, put, PutRequest::decode(req)?).map(|r| r.encode_to_vec()),
        "delete_range" => call!(id, codes, delete_range, DeleteRangeRequest::decode(req)?).map(|r| r.encode_to_vec()),
        "txn" => call!(id, codes, txn, TxnRequest::decode(req)?).map(|r| r.encode_to_vec()),
        _ => bail!("unknown write kind {kind}"),
    })
}

/// An encoded write answer's header (field 1 of every write response, encoded first) and the rest.
pub fn split_answer(b: &[u8]) -> anyhow::Result<(ResponseHeader, &[u8])> {
    ensure!(b.first() == Some(&0x0a), "an answer without a header: {}", hex(b));
    let mut rest = &b[1..];
    let len = tonic_prost::prost::encoding::decode_varint(&mut rest)? as usize;
    ensure!(rest.len() >= len, "a cut answer: {}", hex(b));
    Ok((ResponseHeader::decode(&rest[..len])?, &rest[len..]))
}

/// The same answer, but for what names who served it and when (member, term, leader): a
/// remembered answer comes from whichever member gets the retry, in the retry's term.
pub fn same_answer(a: &[u8], b: &[u8]) -> anyhow::Result<bool> {
    let ((ha, ra), (hb, rb)) = (split_answer(a)?, split_answer(b)?);
    Ok((ha.cluster_id, ha.revision, ra) == (hb.cluster_id, hb.revision, rb))
}

pub fn put_req(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> PutRequest {
    let (key, value) = (key.into(), value.into());
    PutRequest {
        key,
        value,
        ..Default::default()
    }
}
/// An exactly-once put, asking for the previous pair.
pub fn session_put(key: &str, value: &str, client_id: u64, seq: u64) -> Vec<u8> {
    let mut req = put_req(key, value);
    (req.prev_kv, req.session) = (true, Some(WriteSession { client_id, seq }));
    req.encode_to_vec()
}
/// A delete of `key`, `[key, range_end)` or the prefix `key`; with a session, exactly once.
pub fn delete(key: &str, range_end: &str, prefix: bool, session: Option<(u64, u64)>) -> DeleteRangeRequest {
    let mut req = DeleteRangeRequest {
        key: key.into(),
        range_end: range_end.into(),
        prefix,
        ..Default::default()
    };
    req.session = session.map(|(client_id, seq)| WriteSession { client_id, seq });
    req.prev_kv = session.is_some();
    req
}
/// A read of `key`, or of every key (or only their number).
pub fn range(key: &[u8], prefix: bool, count_only: bool) -> RangeRequest {
    RangeRequest {
        key: key.to_vec(),
        prefix,
        count_only,
        ..Default::default()
    }
}
pub fn put_op(key: &str, value: &str) -> RequestOp {
    RequestOp {
        request: Some(Request::Put(put_req(key, value))),
    }
}
pub fn compare(key: &str, target: Target) -> Vec<Compare> {
    vec![Compare {
        key: key.into(),
        op: Op::Equal as i32,
        target: Some(target),
    }]
}
pub fn new_kv(key: &str, value: &str, revision: u64) -> KeyValue {
    let (key, value) = (key.into(), value.into());
    KeyValue {
        key,
        value,
        create_revision: revision,
        mod_revision: revision,
        version: 1,
    }
}
/// Deterministic bytes of every value, for binary keys and values.
pub fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let byte = |i: usize| ((i as u64 + seed).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 56) as u8;
    (0..len).map(byte).collect()
}
