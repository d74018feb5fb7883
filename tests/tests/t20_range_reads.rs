//! Range reads over gRPC: a limit is a limit (and `count` is a full count only when asked for,
//! with `count_only`), and every response is bounded in bytes, so it fits a client with gRPC's
//! default 4 MiB decode limit: a range larger than that comes in pages (`more = true`, continue
//! after the last key), and a page is never empty, even when its first pair alone is over the
//! bound.

use std::time::Duration;

use keel_proto::v1::kv_client::KvClient;
use keel_proto::v1::{PutRequest, RangeRequest, RangeResponse};
use keel_testkit::{retried, Backend, Cluster, Options};
use tonic::transport::Channel;

const MIB: usize = 1024 * 1024;

/// gRPC's default limit on a message a client decodes (tonic's, grpc-go's, grpc-java's).
const DEFAULT_DECODE_LIMIT: usize = 4 * MIB;

/// A value of `len` bytes that names its key, so a mixed-up value is caught.
fn value(key: &str, len: usize) -> Vec<u8> {
    let mut v = key.as_bytes().to_vec();
    v.resize(len, b'.');
    v
}

/// Put `key`; a put whose outcome is unknown (an election meanwhile) is sent again: writing
/// the same value twice changes nothing that these tests look at.
async fn put(kv: &mut KvClient<Channel>, key: &str, value: Vec<u8>) -> anyhow::Result<()> {
    use tonic::Code;
    retried(&[Code::Unavailable, Code::Unknown, Code::DeadlineExceeded], || {
        let mut req = tonic::Request::new(PutRequest {
            key: key.into(),
            value: value.clone(),
            prev_kv: false,
            lease: 0,
            session: None,
        });
        req.set_timeout(Duration::from_secs(10));
        let mut kv = kv.clone();
        async move { kv.put(req).await }
    })
    .await?;
    Ok(())
}

async fn range(kv: &mut KvClient<Channel>, req: RangeRequest) -> anyhow::Result<RangeResponse> {
    Ok(retried(&[tonic::Code::Unavailable], || {
        let (mut kv, req) = (kv.clone(), req.clone());
        async move { kv.range(req).await }
    })
    .await?)
}

/// The end of the range of keys that start with `prefix` (no 0xFF bytes in our prefixes).
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    *end.last_mut().expect("non-empty prefix") += 1;
    end
}

/// Read every key under `prefix` page by page, the way a client continues after `more`: from
/// just after the last key it got. Returns the pages' keys, and every pair.
async fn pages(
    kv: &mut KvClient<Channel>,
    prefix: &str,
    serializable: bool,
) -> anyhow::Result<(Vec<Vec<String>>, Vec<(String, Vec<u8>)>)> {
    let (mut pages, mut all) = (Vec::new(), Vec::new());
    let mut from = prefix.as_bytes().to_vec();
    loop {
        let req = RangeRequest {
            key: from.clone(),
            range_end: prefix_end(prefix),
            serializable,
            ..Default::default()
        };
        let resp = range(kv, req).await?;
        let size: usize = resp.kvs.iter().map(|kv| kv.key.len() + kv.value.len()).sum();
        assert!(size <= DEFAULT_DECODE_LIMIT, "a page of {size} bytes");
        assert!(!resp.kvs.is_empty() || !resp.more, "an empty page with more = true");
        // Without count_only, `count` is what the page holds.
        assert_eq!(resp.count, resp.kvs.len() as u64);
        let keys: Vec<String> = resp
            .kvs
            .iter()
            .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
            .collect();
        pages.push(keys);
        for kv in resp.kvs {
            all.push((String::from_utf8_lossy(&kv.key).into_owned(), kv.value));
        }
        if !resp.more {
            return Ok((pages, all));
        }
        assert!(pages.len() < 100, "paging does not end");
        from = all
            .last()
            .expect("a page with more is not empty")
            .0
            .clone()
            .into_bytes();
        from.push(0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn responses_are_bounded_in_bytes() -> anyhow::Result<()> {
    // Values up to 4,000,000 bytes (the largest whose put still fits the server's 4 MiB
    // request limit), so that one value can be larger than a response's byte bound.
    let options = Options {
        flags: vec!["--max-value-bytes".into(), "4000000".into()],
        ..Options::default()
    };
    let cluster = Cluster::start(Backend::InProcess, options).await?;
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await?;
    // Clients with gRPC's default decode limit: every response must fit.
    let mut kv = cluster.kv(leader);

    // --- 6 MiB under one prefix: more than one response may carry.
    let keys: Vec<String> = (0..6).map(|i| format!("big/{i}")).collect();
    for k in &keys {
        put(&mut kv, k, value(k, MIB)).await?;
    }
    for (id, serializable) in cluster.nodes.keys().map(|&id| (id, id != leader)) {
        let mut kv = cluster.kv(id);
        if serializable {
            let applied = cluster.status(leader).await.expect("leader status").applied_index;
            cluster.wait_applied(id, applied, Duration::from_secs(20)).await?;
        }
        let (pages, all) = pages(&mut kv, "big/", serializable).await?;
        assert!(pages.len() >= 2, "member {id}: 6 MiB in one response: {pages:?}");
        let got: Vec<&String> = all.iter().map(|(k, _)| k).collect();
        assert_eq!(got, keys.iter().collect::<Vec<_>>(), "member {id}: {pages:?}");
        for (k, v) in &all {
            assert!(*v == value(k, MIB), "member {id}: wrong value for {k}");
        }
    }
    // Without values, the same range is small: one response.
    let req = RangeRequest {
        key: b"big/".to_vec(),
        prefix: true,
        keys_only: true,
        ..Default::default()
    };
    let r = range(&mut kv, req).await?;
    assert_eq!((r.kvs.len(), r.more), (6, false));

    // --- A single pair larger than the bound still comes, alone.
    let huge = value("huge/a", 3_900_000);
    put(&mut kv, "huge/a", huge.clone()).await?;
    put(&mut kv, "huge/b", b"small".to_vec()).await?;
    let (pages, all) = pages(&mut kv, "huge/", false).await?;
    assert_eq!(pages, [vec!["huge/a".to_string()], vec!["huge/b".to_string()]]);
    assert!(all[0].1 == huge);
    let req = RangeRequest {
        key: b"huge/a".to_vec(),
        ..Default::default()
    };
    let r = range(&mut kv, req).await?;
    assert_eq!((r.kvs.len(), r.more), (1, false));
    assert!(r.kvs[0].value == huge);

    cluster.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_limit_stops_the_read_and_count_is_full_only_with_count_only() -> anyhow::Result<()> {
    let cluster = Cluster::start(Backend::InProcess, Options::default()).await?;
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await?;
    let mut kv = cluster.kv(leader);
    for i in 0..100 {
        put(&mut kv, &format!("n/{i:03}"), b"v".to_vec()).await?;
    }
    let read = |limit, count_only| RangeRequest {
        key: b"n/".to_vec(),
        prefix: true,
        limit,
        count_only,
        ..Default::default()
    };
    let r = range(&mut kv, read(1, false)).await?;
    assert_eq!((r.kvs.len(), r.count, r.more), (1, 1, true), "limit 1");
    assert_eq!(r.kvs[0].key, b"n/000");
    let r = range(&mut kv, read(30, false)).await?;
    assert_eq!((r.kvs.len(), r.count, r.more), (30, 30, true), "limit 30");
    for limit in [100, 101, 0] {
        let r = range(&mut kv, read(limit, false)).await?;
        assert_eq!((r.kvs.len(), r.count, r.more), (100, 100, false), "limit {limit}");
    }
    for limit in [0, 1] {
        let r = range(&mut kv, read(limit, true)).await?;
        assert_eq!(
            (r.kvs.len(), r.count, r.more),
            (0, 100, false),
            "count_only, limit {limit}"
        );
    }

    cluster.shutdown().await
}
