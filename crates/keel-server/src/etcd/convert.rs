//! Conversions between etcd's messages and keel-storage's commands and results.
//!
//! Range options keel's state machine does not have (sorting, the min/max revision filters) are
//! carried out here on what it returns: the read runs without a limit, then [`Post`] filters,
//! sorts and cuts it, as etcd's own applier does for sorted or filtered reads.

use keel_proto::etcd::etcdserverpb as pb;
use keel_proto::etcd::mvccpb;
use keel_storage as st;
use tonic::Status;

use super::error;

/// A read as keel's state machine runs it, plus what is left to do on its result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangePlan {
    pub op: st::RangeOp,
    /// Sorting and filters, done on the whole result.
    pub post: Option<Post>,
    /// etcd reads a range whose end is at or before its start as empty; keel refuses it.
    pub empty: bool,
    /// Read as of this revision (0: the current one).
    pub revision: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Post {
    order: pb::range_request::SortOrder,
    target: pb::range_request::SortTarget,
    min_mod: i64,
    max_mod: i64,
    min_create: i64,
    max_create: i64,
    limit: usize,
}

/// The keys `key` and `range_end` address, by etcd's rules: an empty end is `key` alone, "\0" is
/// every key from `key` on, anything else is `[key, end)`. An empty range is `None`.
pub fn key_range(key: &[u8], range_end: &[u8]) -> Option<st::KeyRange> {
    match range_end {
        [] => Some(st::KeyRange::Key(key.to_vec())),
        [0] => Some(st::KeyRange::From(key.to_vec())),
        end if end <= key => None,
        end => Some(st::KeyRange::Between {
            start: key.to_vec(),
            end: end.to_vec(),
        }),
    }
}

pub fn range_plan(r: &pb::RangeRequest) -> Result<RangePlan, Status> {
    use pb::range_request::{SortOrder, SortTarget};
    if r.key.is_empty() {
        return Err(error::empty_key());
    }
    let order = SortOrder::try_from(r.sort_order).unwrap_or(SortOrder::None);
    let target = SortTarget::try_from(r.sort_target).unwrap_or(SortTarget::Key);
    let limit = r.limit.max(0) as u64;
    // keel returns keys in ascending order: that sort is free, as etcd's client knows. Another
    // target without an order sorts ascending, as etcd does.
    let sorted = target != SortTarget::Key || order == SortOrder::Descend;
    let filtered =
        r.min_mod_revision > 0 || r.max_mod_revision > 0 || r.min_create_revision > 0 || r.max_create_revision > 0;
    let post = (sorted || filtered) && !r.count_only;
    let range = key_range(&r.key, &r.range_end);
    Ok(RangePlan {
        empty: range.is_none(),
        op: st::RangeOp {
            range: range.unwrap_or(st::KeyRange::Key(r.key.clone())),
            limit: if post { 0 } else { limit },
            keys_only: r.keys_only,
            count_only: r.count_only,
        },
        post: post.then_some(Post {
            order: if order == SortOrder::None {
                SortOrder::Ascend
            } else {
                order
            },
            target,
            min_mod: r.min_mod_revision,
            max_mod: r.max_mod_revision,
            min_create: r.min_create_revision,
            max_create: r.max_create_revision,
            limit: limit as usize,
        }),
        revision: r.revision.max(0) as u64,
    })
}

impl Post {
    /// Filter, sort and cut a whole range result. `count` stays the number of keys in the range,
    /// as etcd reports it (before filters and limit).
    pub fn apply(&self, mut r: st::RangeResult) -> st::RangeResult {
        use pb::range_request::{SortOrder, SortTarget};
        let within = |v: u64, min: i64, max: i64| (min <= 0 || v as i64 >= min) && (max <= 0 || v as i64 <= max);
        r.kvs.retain(|kv| {
            within(kv.mod_revision, self.min_mod, self.max_mod)
                && within(kv.create_revision, self.min_create, self.max_create)
        });
        // Stable sorts, either way: pairs that compare equal stay in key order (etcd leaves
        // their order open).
        fn sort_key(target: SortTarget, kv: &st::KeyValue) -> (u64, &[u8]) {
            match target {
                SortTarget::Key => (0, &kv.key),
                SortTarget::Version => (kv.version, &[]),
                SortTarget::Create => (kv.create_revision, &[]),
                SortTarget::Mod => (kv.mod_revision, &[]),
                SortTarget::Value => (0, &kv.value),
            }
        }
        let t = self.target;
        if self.order == SortOrder::Descend {
            r.kvs.sort_by(|a, b| sort_key(t, b).cmp(&sort_key(t, a)));
        } else {
            r.kvs.sort_by(|a, b| sort_key(t, a).cmp(&sort_key(t, b)));
        }
        r.more = false;
        if self.limit > 0 && r.kvs.len() > self.limit {
            r.kvs.truncate(self.limit);
            r.more = true;
        }
        r
    }
}

pub fn header(h: keel_proto::v1::ResponseHeader, cluster_id: u64) -> pb::ResponseHeader {
    pb::ResponseHeader {
        cluster_id,
        member_id: h.member_id,
        revision: h.revision as i64,
        raft_term: h.raft_term,
    }
}

/// etcd's cluster id is a number; keel's is a string, named by its first 8 bytes of SHA-256.
pub fn cluster_number(id: &str) -> u64 {
    use sha2::Digest;
    let d = sha2::Sha256::digest(id.as_bytes());
    u64::from_be_bytes(d[..8].try_into().expect("8 bytes"))
}

pub fn key_value(kv: st::KeyValue, lease: u64) -> mvccpb::KeyValue {
    mvccpb::KeyValue {
        key: kv.key,
        create_revision: kv.create_revision as i64,
        mod_revision: kv.mod_revision as i64,
        version: kv.version as i64,
        value: kv.value,
        lease: lease as i64,
    }
}

/// A pair as keel's own API carries it (its services that etcd's reuse answer so).
pub fn from_keel(kv: keel_proto::v1::KeyValue, lease: u64) -> mvccpb::KeyValue {
    mvccpb::KeyValue {
        key: kv.key,
        create_revision: kv.create_revision as i64,
        mod_revision: kv.mod_revision as i64,
        version: kv.version as i64,
        value: kv.value,
        lease: lease as i64,
    }
}

pub fn put_op(p: &pb::PutRequest) -> Result<st::TxnOp, Status> {
    if p.key.is_empty() {
        return Err(error::empty_key());
    }
    if p.ignore_value && !p.value.is_empty() {
        return Err(error::status(tonic::Code::InvalidArgument, error::VALUE_PROVIDED));
    }
    if p.ignore_lease && p.lease != 0 {
        return Err(error::status(tonic::Code::InvalidArgument, error::LEASE_PROVIDED));
    }
    if p.lease < 0 {
        return Err(error::status(tonic::Code::NotFound, error::LEASE_NOT_FOUND));
    }
    let put = st::PutOp {
        key: p.key.clone(),
        value: p.value.clone(),
        prev_kv: p.prev_kv,
    };
    Ok(match (p.ignore_value || p.ignore_lease, p.lease) {
        (true, lease) => st::TxnOp::PutWith(st::PutWith {
            put,
            lease: lease as u64,
            ignore_value: p.ignore_value,
            ignore_lease: p.ignore_lease,
        }),
        (false, 0) => st::TxnOp::Put(put),
        (false, lease) => st::TxnOp::LeasedPut(st::LeasedPut {
            put,
            lease: lease as u64,
        }),
    })
}

/// A delete; `None` for a range that is empty by etcd's rules (it deletes nothing).
pub fn delete_op(d: &pb::DeleteRangeRequest) -> Result<Option<st::DeleteOp>, Status> {
    if d.key.is_empty() {
        return Err(error::empty_key());
    }
    Ok(key_range(&d.key, &d.range_end).map(|range| st::DeleteOp {
        range,
        prev_kv: d.prev_kv,
    }))
}

fn compare(c: pb::Compare) -> Result<st::Compare, Status> {
    use pb::compare::{CompareResult, CompareTarget, TargetUnion};
    if c.key.is_empty() {
        return Err(error::empty_key());
    }
    let op = match CompareResult::try_from(c.result) {
        Ok(CompareResult::Equal) => st::CompareOp::Equal,
        Ok(CompareResult::NotEqual) => st::CompareOp::NotEqual,
        Ok(CompareResult::Less) => st::CompareOp::Less,
        Ok(CompareResult::Greater) => st::CompareOp::Greater,
        Err(_) => return Err(Status::invalid_argument(format!("unknown compare result {}", c.result))),
    };
    // A member of the oneof that is absent compares as zero: some clients leave a zero out.
    let number = |n: i64| n.max(0) as u64;
    let target = match (CompareTarget::try_from(c.target), c.target_union) {
        (Ok(CompareTarget::Version), u) => st::CompareTarget::Version(match u {
            Some(TargetUnion::Version(n)) => number(n),
            _ => 0,
        }),
        (Ok(CompareTarget::Create), u) => st::CompareTarget::CreateRevision(match u {
            Some(TargetUnion::CreateRevision(n)) => number(n),
            _ => 0,
        }),
        (Ok(CompareTarget::Mod), u) => st::CompareTarget::ModRevision(match u {
            Some(TargetUnion::ModRevision(n)) => number(n),
            _ => 0,
        }),
        (Ok(CompareTarget::Value), u) => st::CompareTarget::Value(match u {
            Some(TargetUnion::Value(v)) => v,
            _ => Vec::new(),
        }),
        (Ok(CompareTarget::Lease), u) => st::CompareTarget::Lease(match u {
            Some(TargetUnion::Lease(n)) => number(n),
            _ => 0,
        }),
        (Err(_), _) => return Err(Status::invalid_argument(format!("unknown compare target {}", c.target))),
    };
    // Over a range: etcd's "\0" (every key from `key` on) is keel's empty end.
    let target = match c.range_end.as_slice() {
        [] => target,
        [0] => st::CompareTarget::Range {
            end: Vec::new(),
            target: Box::new(target),
        },
        end => st::CompareTarget::Range {
            end: end.to_vec(),
            target: Box::new(target),
        },
    };
    Ok(st::Compare { key: c.key, op, target })
}

/// One op of a txn branch as keel runs it, with what its response needs afterwards.
pub enum PlannedOp {
    Op(st::TxnOp),
    /// A range, run as `plan.op` in the txn and finished by `plan.post`.
    Range(RangePlan),
    /// A delete of an empty range: deletes nothing, takes no part in the txn.
    NoDelete,
    /// A nested txn, with the plans of its own ops.
    Txn(TxnPlan),
}

fn plan_op(op: pb::RequestOp) -> Result<PlannedOp, Status> {
    use pb::request_op::Request;
    Ok(match op.request {
        None => return Err(error::status(tonic::Code::InvalidArgument, error::KEY_NOT_FOUND)),
        Some(Request::RequestRange(r)) => {
            let plan = range_plan(&r)?;
            if plan.revision != 0 {
                return Err(Status::unimplemented(
                    "keel does not support reads at a past revision inside a txn",
                ));
            }
            PlannedOp::Range(plan)
        }
        Some(Request::RequestPut(p)) => PlannedOp::Op(put_op(&p)?),
        Some(Request::RequestDeleteRange(d)) => match delete_op(&d)? {
            Some(op) => PlannedOp::Op(st::TxnOp::Delete(op)),
            None => PlannedOp::NoDelete,
        },
        Some(Request::RequestTxn(t)) => PlannedOp::Txn(txn_plan(t)?),
    })
}

/// A txn as keel runs it, with the plans of its ops for the response.
pub struct TxnPlan {
    pub txn: st::Txn,
    success: Vec<PlannedOp>,
    failure: Vec<PlannedOp>,
}

pub fn txn_plan(t: pb::TxnRequest) -> Result<TxnPlan, Status> {
    let compares = t.compare.into_iter().map(compare).collect::<Result<Vec<_>, _>>()?;
    let success = t.success.into_iter().map(plan_op).collect::<Result<Vec<_>, _>>()?;
    let failure = t.failure.into_iter().map(plan_op).collect::<Result<Vec<_>, _>>()?;
    fn ops(plans: &[PlannedOp]) -> Vec<st::TxnOp> {
        plans
            .iter()
            .filter_map(|p| match p {
                PlannedOp::Op(op) => Some(op.clone()),
                // An empty range reads nothing; keel's validation would refuse it.
                PlannedOp::Range(plan) if plan.empty => None,
                PlannedOp::Range(plan) => Some(st::TxnOp::Range(plan.op.clone())),
                PlannedOp::NoDelete => None,
                PlannedOp::Txn(plan) => Some(st::TxnOp::Txn(plan.txn.clone())),
            })
            .collect()
    }
    Ok(TxnPlan {
        txn: st::Txn {
            compares,
            success: ops(&success),
            failure: ops(&failure),
        },
        success,
        failure,
    })
}

impl TxnPlan {
    /// The etcd response of the branch that ran: the state machine's results, in order, with
    /// the ops it did not run (empty ranges) answered here. `lease_of` names a key's lease.
    pub fn responses(self, r: st::TxnResult, lease_of: &dyn Fn(&[u8]) -> u64) -> Result<Vec<pb::ResponseOp>, Status> {
        use pb::response_op::Response;
        let plans = if r.succeeded { self.success } else { self.failure };
        let mut results = r.responses.into_iter();
        let mut out = Vec::with_capacity(plans.len());
        let mismatch = || Status::internal("txn results do not match its ops");
        for plan in plans {
            let response = match plan {
                PlannedOp::NoDelete => Response::ResponseDeleteRange(pb::DeleteRangeResponse::default()),
                PlannedOp::Range(p) if p.empty => Response::ResponseRange(pb::RangeResponse::default()),
                PlannedOp::Range(p) => match results.next() {
                    Some(st::OpResult::Range(rr)) => Response::ResponseRange(range_response(&p, rr, None, lease_of)),
                    _ => return Err(mismatch()),
                },
                PlannedOp::Txn(nested) => match results.next() {
                    Some(st::OpResult::Txn(t)) => {
                        let succeeded = t.succeeded;
                        Response::ResponseTxn(pb::TxnResponse {
                            header: None,
                            succeeded,
                            responses: nested.responses(t, lease_of)?,
                        })
                    }
                    _ => return Err(mismatch()),
                },
                PlannedOp::Op(_) => match results.next() {
                    Some(st::OpResult::Put(p)) => Response::ResponsePut(pb::PutResponse {
                        header: None,
                        // The key's lease before the put is not known after it.
                        prev_kv: p.prev_kv.map(|kv| key_value(kv, 0)),
                    }),
                    Some(st::OpResult::Delete(d)) => Response::ResponseDeleteRange(delete_response(d, None)),
                    _ => return Err(mismatch()),
                },
            };
            out.push(pb::ResponseOp {
                response: Some(response),
            });
        }
        Ok(out)
    }
}

/// The etcd response of a read. `total`: the number of keys in the range when the read was cut
/// by its limit (counted apart).
pub fn range_response(
    plan: &RangePlan,
    r: st::RangeResult,
    header: Option<pb::ResponseHeader>,
    lease_of: &dyn Fn(&[u8]) -> u64,
) -> pb::RangeResponse {
    let r = match &plan.post {
        Some(post) => post.apply(r),
        None => r,
    };
    let count = r.count as i64;
    pb::RangeResponse {
        header,
        more: r.more,
        count,
        kvs: r
            .kvs
            .into_iter()
            .map(|kv| {
                let lease = lease_of(&kv.key);
                key_value(kv, lease)
            })
            .collect(),
    }
}

pub fn delete_response(d: st::DeleteResult, header: Option<pb::ResponseHeader>) -> pb::DeleteRangeResponse {
    pb::DeleteRangeResponse {
        header,
        deleted: d.deleted as i64,
        // A deleted key's lease is gone with it.
        prev_kvs: d.prev_kvs.into_iter().map(|kv| key_value(kv, 0)).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(key: &str, create: u64, m: u64) -> st::KeyValue {
        st::KeyValue {
            key: key.as_bytes().to_vec(),
            value: Vec::new(),
            create_revision: create,
            mod_revision: m,
            version: 1,
        }
    }

    #[test]
    fn ranges_follow_etcds_rules() {
        assert_eq!(key_range(b"a", b""), Some(st::KeyRange::Key(b"a".to_vec())));
        assert_eq!(key_range(b"a", b"\0"), Some(st::KeyRange::From(b"a".to_vec())));
        assert_eq!(key_range(b"b", b"a"), None);
        assert_eq!(key_range(b"a", b"a"), None);
    }

    #[test]
    fn sorted_reads_filter_then_sort_then_cut() {
        // The lock recipe's "newest waiter created before me": max_create_revision, sorted by
        // create revision descending, limit 1.
        let req = pb::RangeRequest {
            key: b"l/".to_vec(),
            range_end: b"l0".to_vec(),
            limit: 1,
            sort_order: pb::range_request::SortOrder::Descend as i32,
            sort_target: pb::range_request::SortTarget::Create as i32,
            max_create_revision: 7,
            ..Default::default()
        };
        let plan = range_plan(&req).unwrap();
        assert_eq!(plan.op.limit, 0, "the state machine reads the whole range");
        let r = st::RangeResult {
            kvs: vec![kv("l/a", 9, 9), kv("l/b", 5, 5), kv("l/c", 7, 8), kv("l/d", 3, 3)],
            count: 4,
            more: false,
        };
        let out = range_response(&plan, r, None, &|_| 0);
        assert_eq!(out.kvs.len(), 1);
        assert_eq!(out.kvs[0].key, b"l/c");
        assert!(out.more);
        assert_eq!(out.count, 4, "count is the whole range's");
    }

    #[test]
    fn a_sort_target_without_an_order_sorts_ascending() {
        let req = pb::RangeRequest {
            key: b"a".to_vec(),
            range_end: b"z".to_vec(),
            sort_target: pb::range_request::SortTarget::Value as i32,
            ..Default::default()
        };
        let plan = range_plan(&req).unwrap();
        let mut a = kv("a", 1, 1);
        a.value = b"2".to_vec();
        let mut b = kv("b", 2, 2);
        b.value = b"1".to_vec();
        let r = st::RangeResult {
            kvs: vec![a, b],
            count: 2,
            more: false,
        };
        let out = range_response(&plan, r, None, &|_| 0);
        assert_eq!(
            out.kvs.iter().map(|kv| kv.key.as_slice()).collect::<Vec<_>>(),
            [b"b", b"a"]
        );
    }

    #[test]
    fn ascending_key_order_needs_no_work() {
        let req = pb::RangeRequest {
            key: b"a".to_vec(),
            range_end: b"z".to_vec(),
            limit: 3,
            sort_order: pb::range_request::SortOrder::Ascend as i32,
            ..Default::default()
        };
        let plan = range_plan(&req).unwrap();
        assert!(plan.post.is_none());
        assert_eq!(plan.op.limit, 3);
    }

    #[test]
    fn malformed_requests_are_refused_in_etcds_words() {
        let s = range_plan(&pb::RangeRequest::default()).unwrap_err();
        let lease_and_value = pb::PutRequest {
            key: b"k".to_vec(),
            lease: 7,
            ignore_lease: true,
            ..Default::default()
        };
        assert_eq!(put_op(&lease_and_value).unwrap_err().message(), error::LEASE_PROVIDED);
        assert_eq!(s.message(), error::EMPTY_KEY);
        let put = pb::PutRequest {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            ignore_value: true,
            ..Default::default()
        };
        assert_eq!(put_op(&put).unwrap_err().message(), error::VALUE_PROVIDED);
        let txn = pb::TxnRequest {
            success: vec![pb::RequestOp { request: None }],
            ..Default::default()
        };
        assert_eq!(txn_plan(txn).err().unwrap().message(), error::KEY_NOT_FOUND);
    }
}
