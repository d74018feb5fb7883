//! Exactly-once writes: a write whose reply is lost is retried with the same client session, and
//! the cluster answers the retry with the remembered result instead of applying it again.
//!
//! The lost reply is simulated by sending the identical request twice (what keel-client does after
//! an unknown outcome) and checking what each answer says and what the store holds.

use keel_proto::wire::Outcome;
use std::time::Duration;

use keel_proto::v1::compare::{Op, Target};
use keel_proto::v1::{request_op, Compare, PutRequest, RangeRequest, RequestOp, TxnRequest, WriteSession};
use keel_testkit::{Backend, Cluster, Options};
use tonic::Code;

fn session(client_id: u64, seq: u64) -> Option<WriteSession> {
    Some(WriteSession { client_id, seq })
}

/// "counter := N + 1 if its version is N": a compare-and-swap increment.
fn increment(n: u64, s: Option<WriteSession>) -> TxnRequest {
    TxnRequest {
        compare: vec![Compare {
            key: b"counter".to_vec(),
            op: Op::Equal as i32,
            target: Some(Target::Version(n)),
        }],
        success: vec![RequestOp {
            request: Some(request_op::Request::Put(PutRequest {
                key: b"counter".to_vec(),
                value: (n + 1).to_string().into_bytes(),
                prev_kv: false,
                lease: 0,
                session: None,
            })),
        }],
        failure: vec![],
        session: s,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retried_write_applies_once_and_gets_the_same_answer() -> anyhow::Result<()> {
    let cluster = Cluster::start(Backend::InProcess, Options::default()).await?;
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await?;
    let follower = *cluster.nodes.keys().find(|id| **id != leader).expect("a follower");
    let client_id = 0x5eed_0001;

    // A put whose reply is "lost", retried through another member.
    let put = PutRequest {
        key: b"k".to_vec(),
        value: b"v".to_vec(),
        prev_kv: true,
        lease: 0,
        session: session(client_id, 1),
    };
    let first = cluster.kv(leader).put(put.clone()).await?.into_inner();
    let retry = cluster.kv(follower).put(put).await?.into_inner();
    assert_eq!(
        first.header.as_ref().map(|h| h.revision),
        retry.header.as_ref().map(|h| h.revision)
    );
    assert_eq!(first.prev_kv, retry.prev_kv);
    let kv = cluster
        .kv(leader)
        .range(RangeRequest {
            key: b"k".to_vec(),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(kv.kvs[0].version, 1, "the retried put applied twice");
    assert_eq!(kv.header.expect("header").revision, 1);

    // A compare-and-swap increment, sent three times: applied once, and every answer says it
    // succeeded (a second apply would have failed its compare and said the opposite).
    for _ in 0..3 {
        let answer = cluster
            .kv(follower)
            .txn(increment(0, session(client_id, 2)))
            .await?
            .into_inner();
        assert!(answer.succeeded, "a retried increment was reported as failed");
        assert_eq!(answer.header.expect("header").revision, 2);
    }
    let counter = cluster
        .kv(leader)
        .range(RangeRequest {
            key: b"counter".to_vec(),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(
        (counter.kvs[0].value.as_slice(), counter.kvs[0].version),
        (&b"1"[..], 1)
    );

    // An older seq is refused; so is an unknown session above seq 1. Neither applies anything.
    let stale = cluster
        .kv(leader)
        .txn(increment(1, session(client_id, 1)))
        .await
        .expect_err("stale");
    assert_eq!(stale.code(), Code::FailedPrecondition, "{stale}");
    assert!(stale.message().starts_with("stale session"), "{stale}");
    assert_eq!(Outcome::of(&stale), Some(Outcome::StaleSession), "{stale:?}");
    let unknown = cluster
        .kv(leader)
        .txn(increment(1, session(0x0dd, 5)))
        .await
        .expect_err("unknown");
    assert_eq!(unknown.code(), Code::FailedPrecondition, "{unknown}");
    assert!(unknown.message().starts_with("session expired"), "{unknown}");
    assert_eq!(Outcome::of(&unknown), Some(Outcome::SessionExpired), "{unknown:?}");
    let counter = cluster
        .kv(leader)
        .range(RangeRequest {
            key: b"counter".to_vec(),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(
        counter.header.expect("header").revision,
        2,
        "a refused session write applied"
    );
    cluster.shutdown().await
}

/// keel-client sends writes with sessions by default; after a member is killed mid-load, writes
/// it retried after an unknown outcome still applied at most once (every key has version 1).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keel_client_retries_unknown_outcomes_without_duplicates() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(Backend::Process, Options::default()).await?;
    let client = keel_client::Client::connect(
        cluster.endpoints(),
        keel_client::ClientConfig::with_timeout(Duration::from_secs(10)),
    )
    .await?;
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await?;
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let client = client.clone();
            tokio::spawn(async move {
                let mut failed = Vec::new();
                for i in 0..150 {
                    if let Err(e) = client.put(format!("eo/{w}/{i:04}"), "v").await {
                        failed.push(e.to_string());
                    }
                }
                failed
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    cluster.kill(leader).await?;
    let mut failed = Vec::new();
    for w in writers {
        failed.extend(w.await?);
    }
    assert!(failed.is_empty(), "writes failed: {failed:?}");
    let all = client
        .range(RangeRequest {
            key: b"eo/".to_vec(),
            prefix: true,
            ..Default::default()
        })
        .await?;
    assert_eq!(all.count, 8 * 150);
    let twice: Vec<_> = all.kvs.iter().filter(|kv| kv.version != 1).collect();
    assert!(twice.is_empty(), "writes applied more than once: {twice:?}");
    cluster.shutdown().await
}
