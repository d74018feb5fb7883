//! Values at the size limit (1 MiB) replicate, commit and read back linearizably, one after
//! another and concurrently.
//!
//! Regression test for two stalls: openraft 0.9 gives every AppendEntries and every leadership
//! confirmation only one heartbeat interval (50 ms) to be answered. A follower behind by several
//! large entries used to be sent all of them at once, time out, and be sent them again forever
//! (writes stopped committing after a dozen 1 MiB puts); and a linearizable read right after a
//! large write was refused with Unavailable when the busy followers missed the 50 ms.

use std::time::{Duration, Instant};

use keel_proto::v1::kv_client::KvClient;
use keel_proto::v1::{PutRequest, RangeRequest};
use keel_testkit::{Backend, Cluster, Options};
use tokio::task::JoinSet;
use tonic::transport::Channel;

const MIB: usize = 1024 * 1024;

/// A 1 MiB value that names its key, so a mixed-up value is caught.
fn value(key: &str) -> Vec<u8> {
    let mut v = key.as_bytes().to_vec();
    v.resize(MIB, b'.');
    v
}

/// Put `key` and read it back linearizably (a few seconds of deadline for each).
async fn put_and_read(kv: &mut KvClient<Channel>, key: String) -> anyhow::Result<()> {
    let mut put = tonic::Request::new(PutRequest {
        key: key.clone().into_bytes(),
        value: value(&key),
        prev_kv: false,
        session: None,
    });
    put.set_timeout(Duration::from_secs(5));
    kv.put(put).await.map_err(|e| anyhow::anyhow!("put {key}: {e:?}"))?;
    let mut get = tonic::Request::new(RangeRequest {
        key: key.clone().into_bytes(),
        ..Default::default()
    });
    get.set_timeout(Duration::from_secs(5));
    let got = kv.range(get).await.map_err(|e| anyhow::anyhow!("read {key}: {e:?}"))?;
    let got = got.into_inner();
    assert_eq!(got.kvs.len(), 1, "{key}");
    assert!(got.kvs[0].value == value(&key), "{key}: wrong value");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_mib_values_replicate_and_read_back() -> anyhow::Result<()> {
    let cluster = Cluster::start(Backend::Process, Options::default()).await?;
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await?;
    let started = Instant::now();

    let mut kv = cluster.kv(leader);
    for i in 0..20 {
        put_and_read(&mut kv, format!("seq{i:02}")).await?;
    }
    let mut writers = JoinSet::new();
    for w in 0..4 {
        let mut kv = cluster.kv(leader);
        writers.spawn(async move {
            for i in 0..5 {
                put_and_read(&mut kv, format!("con{w}-{i}")).await?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(done) = writers.join_next().await {
        done??;
    }
    eprintln!("40 MiB written and read back in {:?}", started.elapsed());

    // Every member has every value.
    let applied = cluster.status(leader).await.expect("leader status").applied_index;
    for id in cluster.nodes.keys().copied() {
        cluster.wait_applied(id, applied, Duration::from_secs(20)).await?;
        // 40 MiB: more than one response carries (each is bounded in bytes), so page through
        // it, each page after the last key of the one before.
        let mut kv = cluster.kv(id);
        let mut all = Vec::new();
        let mut from = vec![0];
        loop {
            let page = kv
                .range(RangeRequest {
                    key: from,
                    range_end: vec![0],
                    serializable: true,
                    ..Default::default()
                })
                .await?
                .into_inner();
            all.extend(page.kvs);
            if !page.more {
                break;
            }
            from = all.last().expect("a page with more is not empty").key.clone();
            from.push(0);
        }
        assert_eq!(all.len(), 40, "member {id}");
        for kv in &all {
            assert!(
                kv.value == value(&String::from_utf8_lossy(&kv.key)),
                "member {id}: {:?}",
                kv.key
            );
        }
    }
    cluster.shutdown().await
}
