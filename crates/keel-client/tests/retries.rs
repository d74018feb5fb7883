//! The client against scripted fake servers: what it retries, what it refuses to retry, where it
//! sends requests, and that it gives up on time.

use std::sync::atomic::Ordering;
use std::time::Duration;

use keel_client::proto::{request_op, Member, PutRequest, RangeRequest, RequestOp, TxnRequest};
use keel_client::{Client, ClientConfig, Error};
use keel_fake::{always, dead_endpoint, first, start, Options, Reply};
use tokio::io::AsyncReadExt;
use tokio::time::Instant;
use tonic::Code;

/// The fake's store holds `k` = `v`, written at revision 6: the next write is revision 7.
fn seeded() -> Options {
    Options {
        seed: vec![("k".into(), "v".into())],
        revision: 6,
        ..Options::default()
    }
}

/// Every test is bounded, so a client that hangs fails the test instead of stalling the suite.
const TEST_LIMIT: Duration = Duration::from_secs(10);

async fn client(endpoints: Vec<String>, timeout: Duration) -> Client {
    Client::connect(endpoints, ClientConfig::with_timeout(timeout))
        .await
        .expect("client")
}

/// A client that sends writes without sessions: their unknown outcomes must not be retried.
async fn client_without_sessions(endpoints: Vec<String>, timeout: Duration) -> Client {
    let config = ClientConfig {
        exactly_once: false,
        ..ClientConfig::with_timeout(timeout)
    };
    Client::connect(endpoints, config).await.expect("client")
}

async fn bounded<T>(fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(TEST_LIMIT, fut).await.expect("test took too long")
}

#[tokio::test]
async fn unavailable_writes_are_retried_until_they_succeed() {
    let server = start(first(3, Reply::Fail(Code::Unavailable, "no leader")), seeded()).await;
    let client = client(vec![server.endpoint()], Duration::from_secs(5)).await;
    let resp = bounded(client.put("k", "v")).await.expect("put succeeds after retries");
    assert_eq!(resp.header.map(|h| h.revision), Some(7));
    assert_eq!(server.calls(), 4);
}

#[tokio::test]
async fn a_session_write_with_an_unknown_outcome_is_retried() {
    // With a session (the default) the cluster applies the write at most once, so a retry is safe.
    for code in [Code::DeadlineExceeded, Code::Unknown, Code::Cancelled] {
        let server = start(first(1, Reply::Fail(code, "commit not confirmed")), seeded()).await;
        let client = client(vec![server.endpoint()], Duration::from_secs(5)).await;
        bounded(client.put("k", "v")).await.expect("retried put succeeds");
        assert_eq!(server.calls(), 2, "{code:?}");
    }
}

#[tokio::test]
async fn a_write_with_an_unknown_outcome_is_not_retried() {
    for code in [Code::DeadlineExceeded, Code::Unknown, Code::Cancelled] {
        let server = start(always(Reply::Fail(code, "commit not confirmed")), seeded()).await;
        let client = client_without_sessions(vec![server.endpoint()], Duration::from_secs(5)).await;
        let err = bounded(client.put("k", "v")).await.expect_err("put fails");
        assert!(matches!(err, Error::OutcomeUnknown(_)), "{code:?}: {err:?}");
        assert_eq!(server.calls(), 1, "{code:?}");
    }
}

#[tokio::test]
async fn a_write_that_gets_no_answer_has_an_unknown_outcome_at_the_deadline() {
    let server = start(always(Reply::Hang), seeded()).await;
    let client = client_without_sessions(vec![server.endpoint()], Duration::from_millis(400)).await;
    let started = Instant::now();
    let err = bounded(client.put("k", "v")).await.expect_err("put fails");
    assert!(
        matches!(&err, Error::OutcomeUnknown(m) if m.contains("no answer")),
        "{err:?}"
    );
    assert!(
        started.elapsed() < Duration::from_millis(1400),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(server.calls(), 1);
}

#[tokio::test]
async fn a_write_on_a_connection_dropped_mid_request_has_an_unknown_outcome() {
    // A "server" that accepts, reads what the client sends, and hangs up without answering.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            let mut buf = vec![0u8; 64 * 1024];
            // Read until the client has sent its request and gone quiet.
            while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(200), socket.read(&mut buf)).await {
                if n == 0 {
                    break;
                }
            }
        }
    });
    let client = client_without_sessions(vec![addr.to_string()], Duration::from_secs(3)).await;
    let err = bounded(client.put("k", "v")).await.expect_err("put fails");
    assert!(matches!(err, Error::OutcomeUnknown(_)), "{err:?}");
    assert_eq!(accepted.load(Ordering::SeqCst), 1, "the write was sent again");
}

#[tokio::test]
async fn reads_are_retried_on_deadline_exceeded_and_unknown() {
    let server = start(
        first(1, Reply::Fail(Code::DeadlineExceeded, "read index timed out")),
        seeded(),
    )
    .await;
    let client = client(vec![server.endpoint()], Duration::from_secs(5)).await;
    let kv = bounded(client.get("k"))
        .await
        .expect("get succeeds")
        .expect("key exists");
    assert_eq!(kv.value, b"v");
    assert_eq!(server.calls(), 2);

    let server = start(first(2, Reply::Fail(Code::Unknown, "hiccup")), seeded()).await;
    let client = self::client(vec![server.endpoint()], Duration::from_secs(5)).await;
    let read_only = TxnRequest {
        success: vec![RequestOp {
            request: Some(request_op::Request::Range(RangeRequest {
                key: b"k".to_vec(),
                ..RangeRequest::default()
            })),
        }],
        ..TxnRequest::default()
    };
    bounded(client.txn(read_only)).await.expect("read-only txn is retried");
    assert_eq!(server.calls(), 3);
}

#[tokio::test]
async fn always_unavailable_gives_up_at_the_deadline_with_the_server_message() {
    let server = start(always(Reply::Fail(Code::Unavailable, "no leader")), seeded()).await;
    let timeout = Duration::from_millis(500);
    let client = client(vec![server.endpoint()], timeout).await;
    let started = Instant::now();
    let err = bounded(client.put("k", "v")).await.expect_err("put fails");
    let elapsed = started.elapsed();
    assert!(
        matches!(&err, Error::Unavailable(m) if m.contains("no leader")),
        "{err:?}"
    );
    assert!(
        elapsed >= timeout - Duration::from_millis(50),
        "gave up early: {elapsed:?}"
    );
    assert!(
        elapsed < timeout + Duration::from_millis(300),
        "gave up late: {elapsed:?}"
    );
    assert!(server.calls() > 2, "retried only {} times", server.calls());
}

#[tokio::test]
async fn a_dead_first_endpoint_is_skipped() {
    let server = start(always(Reply::Ok), seeded()).await;
    let client = client(vec![dead_endpoint(), server.endpoint()], Duration::from_secs(5)).await;
    let kv = bounded(client.get("k"))
        .await
        .expect("get succeeds via the second endpoint");
    assert!(kv.is_some());
    // A refused connection means the request was never sent, so even a write may move on.
    bounded(client.put("k", "v"))
        .await
        .expect("put succeeds via the second endpoint");
    assert_eq!(server.calls(), 2);
}

#[tokio::test]
async fn no_reachable_endpoint_is_unavailable_and_names_the_endpoints() {
    let dead = dead_endpoint();
    let client = client(vec![dead.clone()], Duration::from_millis(300)).await;
    let started = Instant::now();
    let err = bounded(client.get("k")).await.expect_err("get fails");
    assert!(started.elapsed() < Duration::from_secs(1), "{:?}", started.elapsed());
    match err {
        Error::Unavailable(message) => {
            assert!(message.contains("cannot reach any endpoint"), "{message}");
            assert!(message.contains(&dead), "{message}");
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
}

#[tokio::test]
async fn invalid_argument_is_returned_at_once() {
    let server = start(always(Reply::Fail(Code::InvalidArgument, "key is empty")), seeded()).await;
    let client = client(vec![server.endpoint()], Duration::from_secs(5)).await;
    let err = bounded(client.put("", "v")).await.expect_err("put fails");
    assert!(
        matches!(&err, Error::InvalidArgument(m) if m == "key is empty"),
        "{err:?}"
    );
    assert_eq!(err.to_string(), "key is empty");
    let err = bounded(client.get("")).await.expect_err("get fails");
    assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
    assert_eq!(server.calls(), 2);
}

#[tokio::test]
async fn an_error_naming_the_leader_sends_the_retry_and_later_requests_there() {
    let leader = start(always(Reply::Ok), seeded()).await;
    let follower = start(
        always(Reply::Fail(Code::Unavailable, "not the leader")),
        Options {
            leader_hint: Some(leader.endpoint()),
            ..seeded()
        },
    )
    .await;
    // A third endpoint between them shows the hint is followed rather than plain rotation.
    let other = start(always(Reply::Ok), seeded()).await;
    let client = client(
        vec![follower.endpoint(), other.endpoint(), leader.endpoint()],
        Duration::from_secs(5),
    )
    .await;
    bounded(client.put("k", "v")).await.expect("put");
    assert_eq!((follower.calls(), other.calls(), leader.calls()), (1, 0, 1));
    bounded(client.put("k", "v")).await.expect("put");
    assert_eq!((follower.calls(), other.calls(), leader.calls()), (1, 0, 2));
}

#[tokio::test]
async fn a_success_naming_the_leader_moves_later_requests_there() {
    let leader = start(always(Reply::Ok), seeded()).await;
    let follower = start(
        always(Reply::Ok),
        Options {
            leader_hint: Some(leader.endpoint()),
            ..seeded()
        },
    )
    .await;
    let client = client(vec![follower.endpoint(), leader.endpoint()], Duration::from_secs(5)).await;
    bounded(client.put("k", "v")).await.expect("put");
    bounded(client.put("k", "v")).await.expect("put");
    assert_eq!((follower.calls(), leader.calls()), (1, 1));
}

#[tokio::test]
async fn the_header_leader_id_is_followed_once_members_are_known() {
    let leader = start(always(Reply::Ok), seeded()).await;
    let members = vec![
        Member {
            id: 1,
            client_addr: "127.0.0.1:1".into(),
            ..Member::default()
        },
        Member {
            id: 2,
            client_addr: leader.endpoint(),
            ..Member::default()
        },
    ];
    let follower = start(
        always(Reply::Ok),
        Options {
            member_id: 1,
            leader_id: 2,
            members,
            ..seeded()
        },
    )
    .await;
    let client = client(vec![follower.endpoint(), leader.endpoint()], Duration::from_secs(5)).await;
    bounded(client.member_list()).await.expect("member list");
    bounded(client.put("k", "v")).await.expect("put");
    assert_eq!((follower.calls(), leader.calls()), (2, 0));
    bounded(client.put("k", "v")).await.expect("put");
    assert_eq!((follower.calls(), leader.calls()), (2, 1));
}

#[tokio::test]
async fn one_connection_per_endpoint_serves_every_request() {
    let server = start(always(Reply::Ok), seeded()).await;
    let client = client(vec![server.endpoint()], Duration::from_secs(5)).await;
    for _ in 0..10 {
        bounded(client.get("k")).await.expect("get");
    }
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move { client.put(format!("k{i}"), "v").await })
        })
        .collect();
    for task in tasks {
        bounded(task).await.expect("task").expect("put");
    }
    assert_eq!(server.calls(), 30);
    assert_eq!(server.connections.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn status_of_asks_one_endpoint_once() {
    let server = start(
        always(Reply::Ok),
        Options {
            member_id: 3,
            ..seeded()
        },
    )
    .await;
    let client = client(vec![dead_endpoint()], Duration::from_secs(5)).await;
    // The endpoint is not in the client's list: status_of dials it anyway.
    let status = bounded(client.status_of(&server.endpoint())).await.expect("status");
    assert_eq!(status.id, 3);

    let dead = dead_endpoint();
    let started = Instant::now();
    let err = bounded(client.status_of(&dead)).await.expect_err("dead endpoint");
    assert!(matches!(&err, Error::Unavailable(m) if m.contains(&dead)), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
}

#[tokio::test]
async fn bad_endpoint_lists_are_rejected() {
    let err = Client::connect(vec![], ClientConfig::default())
        .await
        .expect_err("empty");
    assert!(matches!(err, Error::NoEndpoints));
    let err = Client::connect(vec![" ".into()], ClientConfig::default())
        .await
        .expect_err("blank");
    assert!(matches!(err, Error::NoEndpoints));
    let err = Client::connect(vec!["https://a:1".into()], ClientConfig::default())
        .await
        .expect_err("tls");
    assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
}

#[tokio::test]
async fn put_request_passes_options_through() {
    let server = start(always(Reply::Ok), seeded()).await;
    let client = client(vec![server.endpoint()], Duration::from_secs(5)).await;
    let req = PutRequest {
        key: b"k".to_vec(),
        value: b"v".to_vec(),
        prev_kv: true,
        lease: 0,
        session: None,
    };
    bounded(client.put_request(req)).await.expect("put");
    assert_eq!(server.calls(), 1);
}
