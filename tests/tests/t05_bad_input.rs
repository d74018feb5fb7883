//! Bad input is refused with InvalidArgument before it reaches Raft, on every member; a missing
//! key is an empty answer, never NotFound; an endpoint nobody listens on is Unavailable.

use std::time::Duration;

use keel_proto::v1::compare::{Op, Target};
use keel_proto::v1::kv_client::KvClient;
use keel_proto::v1::request_op::Request;
use keel_proto::v1::{Compare, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest};
use keel_testkit::{Backend, Cluster, Options};
use tonic::transport::Channel;
use tonic::{Code, Status};

const MIB: usize = 1024 * 1024;

fn put(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> PutRequest {
    PutRequest {
        key: key.into(),
        value: value.into(),
        prev_kv: false,
        lease: 0,
        session: None,
    }
}

fn get(key: &str, range_end: &str, serializable: bool) -> RangeRequest {
    RangeRequest {
        key: key.into(),
        range_end: range_end.into(),
        serializable,
        ..Default::default()
    }
}

fn put_op(key: &str, value: &str) -> RequestOp {
    RequestOp {
        request: Some(Request::Put(put(key, value))),
    }
}

fn txn(compare: Vec<Compare>, success: Vec<RequestOp>) -> TxnRequest {
    TxnRequest {
        compare,
        success,
        failure: Vec::new(),
        session: None,
    }
}

/// Every malformed txn we know of, with what is wrong with it.
fn bad_txns() -> Vec<(&'static str, TxnRequest)> {
    let compare = |key: &str, target| Compare {
        key: key.into(),
        op: Op::Equal as i32,
        target,
    };
    let range_op = |r: RangeRequest| RequestOp {
        request: Some(Request::Range(r)),
    };
    vec![
        ("compare without target", txn(vec![compare("a", None)], vec![])),
        (
            "compare on an empty key",
            txn(vec![compare("", Some(Target::Version(0)))], vec![]),
        ),
        (
            "unknown compare operator",
            txn(
                vec![Compare {
                    op: 42,
                    ..compare("a", Some(Target::Version(0)))
                }],
                vec![],
            ),
        ),
        ("op without request", txn(vec![], vec![RequestOp { request: None }])),
        (
            "the same key put twice in one branch",
            txn(vec![], vec![put_op("a", "1"), put_op("a", "2")]),
        ),
        (
            "a put and a delete of the same key in one branch",
            txn(
                vec![],
                vec![
                    put_op("ab", "1"),
                    RequestOp {
                        request: Some(Request::DeleteRange(DeleteRangeRequest {
                            key: b"a".to_vec(),
                            prefix: true,
                            ..Default::default()
                        })),
                    },
                ],
            ),
        ),
        (
            "prefix with range_end",
            txn(
                vec![],
                vec![range_op(RangeRequest {
                    prefix: true,
                    ..get("a", "b", false)
                })],
            ),
        ),
        (
            "range end before key",
            txn(vec![], vec![range_op(get("b", "a", false))]),
        ),
        ("put of an empty key", txn(vec![], vec![put_op("", "v")])),
        (
            "too many ops",
            txn(vec![], (0..129).map(|i| put_op(&format!("k{i}"), "")).collect()),
        ),
    ]
}

fn invalid<T: std::fmt::Debug>(what: &str, result: Result<tonic::Response<T>, Status>) -> Status {
    match result {
        Err(status) => {
            assert_eq!(status.code(), Code::InvalidArgument, "{what}: {status:?}");
            status
        }
        Ok(resp) => panic!("{what}: accepted: {:?}", resp.into_inner()),
    }
}

/// The current revision, by a linearizable read.
async fn revision(kv: &mut KvClient<Channel>) -> anyhow::Result<u64> {
    let resp = kv.range(get("no-such-key", "", false)).await?.into_inner();
    Ok(resp.header.expect("header").revision)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_input_is_refused_with_invalid_argument_and_changes_nothing() -> anyhow::Result<()> {
    let cluster = Cluster::start(Backend::InProcess, Options::default()).await?;
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await?;
    let mut kv = cluster.kv(leader);

    // The limits themselves are fine: a 4096-byte key, a 1 MiB value, an empty value.
    let long_key = vec![b'k'; 4096];
    kv.put(put(long_key.clone(), "v")).await?;
    kv.put(put("big", vec![b'v'; MIB])).await?;
    kv.put(put("empty-value", "")).await?;
    let got = kv.range(get("big", "", false)).await?.into_inner();
    assert_eq!(got.kvs[0].value.len(), MIB);
    let got = kv
        .range(RangeRequest {
            key: long_key.clone(),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(got.kvs[0].value, b"v");
    let before = revision(&mut kv).await?;
    assert_eq!(before, 3);

    // Followers validate before forwarding, so every member refuses the same way.
    for id in cluster.nodes.keys().copied() {
        // Explicit, though tonic clients encode without a limit by default: the server must see it.
        let mut kv = cluster.kv(id).max_encoding_message_size(4 * MIB);
        invalid("put of an empty key", kv.put(put("", "v")).await);
        invalid("put of a 4097-byte key", kv.put(put(vec![b'k'; 4097], "v")).await);
        let big = kv.put(put("big", vec![b'v'; MIB + 1])).await;
        let status = invalid("put of a 1 MiB + 1 value", big);
        // Refused by keel's validation, not by a transport limit on either side.
        assert!(status.message().contains("value is 1048577 bytes"), "{status:?}");
        invalid("range of an empty key", kv.range(get("", "", false)).await);
        let long = RangeRequest {
            key: vec![b'k'; 4097],
            ..Default::default()
        };
        invalid("range of a 4097-byte key", kv.range(long).await);
        invalid("range with range_end < key", kv.range(get("b", "a", false)).await);
        invalid("range with range_end = key", kv.range(get("b", "b", false)).await);
        invalid(
            "range with prefix and range_end",
            kv.range(RangeRequest {
                prefix: true,
                ..get("a", "b", false)
            })
            .await,
        );
        invalid(
            "delete of an empty key",
            kv.delete_range(DeleteRangeRequest::default()).await,
        );
        invalid(
            "delete with range_end < key",
            kv.delete_range(DeleteRangeRequest {
                key: b"b".to_vec(),
                range_end: b"a".to_vec(),
                ..Default::default()
            })
            .await,
        );
        for (what, t) in bad_txns() {
            invalid(&format!("member {id}: txn with {what}"), kv.txn(t).await);
        }
    }

    let after = revision(&mut kv).await?;
    assert_eq!(after, before, "a refused request must not be written");
    let all = kv
        .range(RangeRequest {
            key: Vec::new(),
            prefix: true,
            keys_only: true,
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(all.count, 3, "only the three valid puts exist: {:?}", all.kvs);
    let big = kv.range(get("big", "", false)).await?.into_inner();
    assert_eq!(big.kvs[0].value.len(), MIB, "the refused put did not overwrite it");
    cluster.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_missing_key_is_an_empty_answer_not_not_found() -> anyhow::Result<()> {
    let cluster = Cluster::start(Backend::InProcess, Options::default()).await?;
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await?;
    cluster.kv(leader).put(put("present", "v")).await?;
    let applied = cluster.status(leader).await.expect("leader status").applied_index;
    for id in cluster.nodes.keys().copied() {
        cluster.wait_applied(id, applied, Duration::from_secs(5)).await?;
        let mut kv = cluster.kv(id);
        for serializable in [false, true] {
            for (key, end) in [("absent", ""), ("absent", "absent0"), ("q", "\0")] {
                let resp = kv.range(get(key, end, serializable)).await?.into_inner();
                let what = format!("member {id}, serializable {serializable}, [{key:?}, {end:?})");
                assert_eq!((resp.count, resp.kvs.len(), resp.more), (0, 0, false), "{what}");
                assert_eq!(resp.header.expect("header").revision, 1, "{what}");
            }
        }
        // Deleting nothing is not an error either.
        let del = kv
            .delete_range(DeleteRangeRequest {
                key: b"absent".to_vec(),
                ..Default::default()
            })
            .await?
            .into_inner();
        assert_eq!(del.deleted, 0);
        // It changed nothing, so it took no revision.
        assert_eq!(del.header.expect("header").revision, 1);
    }
    cluster.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_endpoint_nobody_listens_on_is_unavailable() -> anyhow::Result<()> {
    let channel = tonic::transport::Endpoint::from_static("http://127.0.0.1:1")
        .connect_timeout(Duration::from_secs(1))
        .connect_lazy();
    let mut kv = KvClient::new(channel);
    let mut req = tonic::Request::new(put("k", "v"));
    req.set_timeout(Duration::from_secs(3));
    let err = kv.put(req).await.expect_err("nobody listens on port 1");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    let err = kv
        .range(get("k", "", true))
        .await
        .expect_err("nobody listens on port 1");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    Ok(())
}

/// Absurd `grpc-timeout` headers (more digits than the 8 gRPC allows, overflowing any clock) are
/// clamped, never a panic in the handler: every request is answered and the member keeps
/// serving. (Issue 11.11: `9999999999999999999S` overflowed `Instant + Duration`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn absurd_grpc_timeouts_are_clamped_not_a_panic() -> anyhow::Result<()> {
    let cluster = Cluster::start(Backend::Process, Options::default()).await?;
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await?;
    for id in cluster.nodes.keys().copied().collect::<Vec<_>>() {
        let mut kv = cluster.kv(id);
        for (i, timeout) in ["9999999999999999999S", "18446744073709551615H", "99999999M", "0n"]
            .into_iter()
            .enumerate()
        {
            let key = format!("timeout-{id}-{i}");
            let mut req = tonic::Request::new(put(key.clone(), "v"));
            req.metadata_mut().insert("grpc-timeout", timeout.parse()?);
            let put = tokio::time::timeout(Duration::from_secs(20), kv.put(req)).await?;
            let mut req = tonic::Request::new(get(&key, "", false));
            req.metadata_mut().insert("grpc-timeout", timeout.parse()?);
            let got = tokio::time::timeout(Duration::from_secs(20), kv.range(req)).await?;
            if timeout == "0n" {
                // Nothing can be done in no time: a deadline error (or, for a write that was
                // forwarded when the deadline hit, an unknown outcome), not a crash.
                for code in [put.err().map(|s| s.code()), got.err().map(|s| s.code())]
                    .into_iter()
                    .flatten()
                {
                    assert!(
                        matches!(
                            code,
                            Code::DeadlineExceeded | Code::Unavailable | Code::Cancelled | Code::Unknown
                        ),
                        "member {id}, grpc-timeout {timeout}: {code:?}"
                    );
                }
                continue;
            }
            put.map_err(|e| anyhow::anyhow!("member {id}, grpc-timeout {timeout}: put: {e:?}"))?;
            let got = got.map_err(|e| anyhow::anyhow!("member {id}, grpc-timeout {timeout}: get: {e:?}"))?;
            assert_eq!(got.into_inner().kvs.len(), 1, "member {id}, grpc-timeout {timeout}");
        }
    }
    // Every member is still up and answering.
    for id in cluster.nodes.keys() {
        assert!(cluster.status(*id).await.is_some(), "member {id} stopped answering");
    }
    let _ = leader;
    cluster.shutdown().await
}
