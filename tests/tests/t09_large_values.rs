//! Values at the size limit (1 MiB) replicate, commit and read back linearizably, one after
//! another and concurrently.
//!
//! Regression test for two stalls of the openraft 0.9 days, when every AppendEntries and every
//! leadership confirmation had one heartbeat interval (50 ms) to be answered: a follower behind by
//! several large entries was sent all of them at once, timed out, and was sent them again forever
//! (writes stopped committing after a dozen 1 MiB puts); and a linearizable read right after a
//! large write was refused with Unavailable when the busy followers missed the 50 ms. keel now
//! sends at most 1 MiB of entries per AppendEntries and gives it time by its size.

use std::time::{Duration, Instant};

use keel_proto::v1::RangeRequest;
use keel_testkit::{Backend, Cluster, Options};
use tokio::task::JoinSet;

use common::{mib_value as value, put_and_read_mib as put_and_read};

mod common;

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
