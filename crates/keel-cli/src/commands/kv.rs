//! put, get, del, cas.

use keel_client::proto::{compare, request_op, response_op, Compare, DeleteRangeRequest, PutRequest, RangeRequest};
use keel_client::proto::{RequestOp, TxnRequest};
use keel_client::Client;

use super::{key_range, require_key, Outcome};
use crate::args::{CasArgs, DelArgs, Format, GetArgs, PutArgs};
use crate::output::kv::{self as out, CasResult, GetView};

pub async fn put(client: &Client, args: &PutArgs, format: Format) -> anyhow::Result<Outcome> {
    require_key(&args.key)?;
    let resp = client
        .put_request(PutRequest {
            key: args.key.as_bytes().to_vec(),
            value: args.value.as_bytes().to_vec(),
            prev_kv: false,
            lease: args.lease.unwrap_or(0),
            session: None,
        })
        .await?;
    Ok(Outcome::Done(out::put(&resp, format)))
}

pub async fn get(client: &Client, args: &GetArgs, format: Format) -> anyhow::Result<Outcome> {
    let (key, range_end, prefix) = key_range(&args.range)?;
    let req = RangeRequest {
        key,
        range_end,
        prefix,
        limit: args.limit,
        serializable: args.serializable,
        keys_only: args.keys_only,
        count_only: args.count_only,
    };
    let resp = client.range(req).await?;
    let view = GetView {
        print_value_only: args.print_value_only,
        keys_only: args.keys_only,
        count_only: args.count_only,
    };
    Ok(Outcome::Done(out::get(&resp, view, format)))
}

pub async fn del(client: &Client, args: &DelArgs, format: Format) -> anyhow::Result<Outcome> {
    if !args.prefix {
        require_key(&args.key)?;
    }
    let req = DeleteRangeRequest {
        key: args.key.as_bytes().to_vec(),
        range_end: vec![],
        prefix: args.prefix,
        prev_kv: false,
        session: None,
    };
    let resp = client.delete_range(req).await?;
    Ok(Outcome::Done(out::del(&resp, format)))
}

/// One transaction: if the key is as expected, write it; otherwise read it, so the failure can
/// say what the key is now without a second, racing request.
pub async fn cas(client: &Client, args: &CasArgs, format: Format) -> anyhow::Result<Outcome> {
    require_key(&args.key)?;
    let key = args.key.as_bytes().to_vec();
    let target = match (&args.expect_value, args.expect_version) {
        (Some(value), _) => compare::Target::Value(value.as_bytes().to_vec()),
        (None, Some(version)) => compare::Target::Version(version),
        // --expect-absent: a missing key has version 0.
        (None, None) => compare::Target::Version(0),
    };
    let req = TxnRequest {
        compare: vec![Compare {
            key: key.clone(),
            op: compare::Op::Equal as i32,
            target: Some(target),
        }],
        success: vec![RequestOp {
            request: Some(request_op::Request::Put(PutRequest {
                key: key.clone(),
                value: args.new.as_bytes().to_vec(),
                prev_kv: false,
                lease: 0,
                // Inside a txn the txn's own session applies.
                session: None,
            })),
        }],
        failure: vec![RequestOp {
            request: Some(request_op::Request::Range(RangeRequest {
                key: key.clone(),
                ..RangeRequest::default()
            })),
        }],
        // keel-client attaches a session.
        session: None,
    };
    let resp = client.txn(req).await?;
    let current = if resp.succeeded {
        None
    } else {
        resp.responses.iter().find_map(|op| match &op.response {
            Some(response_op::Response::Range(range)) => range.kvs.first().cloned(),
            _ => None,
        })
    };
    let result = CasResult {
        key,
        succeeded: resp.succeeded,
        header: resp.header,
        current,
    };
    let text = out::cas(&result, format);
    Ok(if result.succeeded {
        Outcome::Done(text)
    } else {
        Outcome::CompareFailed(text)
    })
}
