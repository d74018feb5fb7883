//! Watch (issue 15): the changes to a prefix arrive in revision order, each once, the events of a
//! txn together, with values before and after; a start in the past replays the history; a start
//! older than the history is refused with the compaction point; a bad range is refused; and a
//! client whose member is stopped carries on at another member from the revision after the last
//! one it saw, with no gap and no repeat.

use std::collections::BTreeSet;
use std::time::Duration;

mod common;

use keel_client::{Client, ClientConfig, Error, Watch};
use keel_proto::v1::{
    event::EventType, request_op, DeleteRangeRequest, PutRequest, RequestOp, TxnRequest, WatchCreateRequest,
};
use keel_testkit::{Backend, Cluster, Options};

/// Every test is bounded: a watch that never delivers fails the test instead of hanging it.
const LIMIT: Duration = Duration::from_secs(20);

fn on_prefix(prefix: &str, start_revision: u64) -> WatchCreateRequest {
    WatchCreateRequest {
        key: prefix.into(),
        prefix: true,
        start_revision,
        prev_kv: true,
        ..Default::default()
    }
}

/// (revision, put or delete, key, value, previous value) of each event, per delivered batch.
type Seen = Vec<Vec<(u64, &'static str, String, String, Option<String>)>>;

/// Read batches with events until `revisions` distinct revisions have arrived.
async fn read(watch: &mut Watch, revisions: usize) -> anyhow::Result<Seen> {
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let mut seen: Seen = Vec::new();
    let mut revs = BTreeSet::new();
    while revs.len() < revisions {
        let batch = tokio::time::timeout(LIMIT, watch.next()).await??;
        if batch.events.is_empty() {
            continue;
        }
        let mut events = Vec::new();
        for e in batch.events {
            let kv = e.kv.unwrap_or_default();
            revs.insert(kv.mod_revision);
            let kind = if e.r#type == EventType::Delete as i32 {
                "delete"
            } else {
                "put"
            };
            events.push((
                kv.mod_revision,
                kind,
                text(&kv.key),
                text(&kv.value),
                e.prev_kv.map(|p| text(&p.value)),
            ));
        }
        seen.push(events);
    }
    Ok(seen)
}

fn put(k: &str, v: &str) -> PutRequest {
    PutRequest {
        key: k.into(),
        value: v.into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_arrive_in_order_once_with_txns_whole() -> anyhow::Result<()> {
    let cluster = Cluster::start(Backend::InProcess, Options::default()).await?;
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await?;
    let follower = *cluster.nodes.keys().find(|id| **id != leader).expect("a follower");
    // The watch is served by a follower; the writes go through the leader.
    let watcher = Client::connect(
        vec![cluster.nodes[&follower].client_addr.to_string()],
        ClientConfig::default(),
    )
    .await?;
    let writer = Client::connect(cluster.endpoints(), ClientConfig::default()).await?;
    let mut watch = watcher.watch(on_prefix("w/", 0)).await?;

    let r1 = writer.put("w/a", "1").await?.header.unwrap_or_default().revision;
    writer.put("elsewhere", "x").await?;
    writer.put("w/b", "2").await?;
    let txn = TxnRequest {
        success: vec![
            RequestOp {
                request: Some(request_op::Request::Put(put("w/a", "3"))),
            },
            RequestOp {
                request: Some(request_op::Request::DeleteRange(DeleteRangeRequest {
                    key: "w/b".into(),
                    ..Default::default()
                })),
            },
        ],
        ..Default::default()
    };
    writer.txn(txn).await?;
    writer
        .delete_range(DeleteRangeRequest {
            key: "w/".into(),
            prefix: true,
            ..Default::default()
        })
        .await?;

    let s = |v: &str| v.to_string();
    let expected = vec![
        (r1, "put", s("w/a"), s("1"), None),
        (r1 + 2, "put", s("w/b"), s("2"), None),
        (r1 + 3, "put", s("w/a"), s("3"), Some(s("1"))),
        (r1 + 3, "delete", s("w/b"), s(""), Some(s("2"))),
        (r1 + 4, "delete", s("w/a"), s(""), Some(s("3"))),
    ];
    let seen = read(&mut watch, 4).await?;
    assert_eq!(seen.concat(), expected, "batches: {seen:?}");
    // The txn's two events came in one batch.
    assert!(
        seen.iter().any(|b| b.iter().filter(|e| e.0 == r1 + 3).count() == 2),
        "{seen:?}"
    );

    // The follower counts its watch and the events it sent.
    let (_, metrics) = common::http_get(cluster.nodes[&follower].metrics_addr, "/metrics").await?;
    let value = |name: &str| {
        let line = metrics.lines().find(|l| l.starts_with(&format!("{name}{{")));
        line.and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
    };
    assert_eq!(value("keel_watch_streams"), Some(1.0), "{metrics}");
    assert_eq!(value("keel_watchers"), Some(1.0), "{metrics}");
    assert_eq!(value("keel_watch_events_sent_total"), Some(5.0), "{metrics}");
    assert_eq!(value("keel_slow_watchers"), Some(0.0), "{metrics}");
    assert_eq!(watcher.status().await?.watchers, 1, "status counts the watch");

    // From the first put's revision, a new watch replays the same history.
    let mut replay = watcher.watch(on_prefix("w/", r1)).await?;
    assert_eq!(read(&mut replay, 4).await?.concat(), expected);

    // Bad ranges are refused.
    let empty = WatchCreateRequest::default();
    assert!(matches!(watcher.watch(empty).await, Err(Error::InvalidArgument(_))));
    let inverted = WatchCreateRequest {
        key: "b".into(),
        range_end: "a".into(),
        ..Default::default()
    };
    assert!(matches!(watcher.watch(inverted).await, Err(Error::InvalidArgument(_))));
    cluster.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_older_than_the_history_is_refused_with_the_compaction_point() -> anyhow::Result<()> {
    let options = Options {
        flags: vec!["--history-revisions".into(), "10".into()],
        ..Options::default()
    };
    let cluster = Cluster::start(Backend::InProcess, options).await?;
    cluster.wait_for_leader(Duration::from_secs(10)).await?;
    let client = Client::connect(cluster.endpoints(), ClientConfig::default()).await?;
    let mut last = 0;
    for i in 0..60 {
        last = client
            .put("c", i.to_string())
            .await?
            .header
            .unwrap_or_default()
            .revision;
    }
    match client.watch(on_prefix("c", 1)).await {
        Err(Error::Compacted(c)) => assert!(c >= 1 && c < last, "compacted up to {c}, last write {last}"),
        Err(e) => anyhow::bail!("expected Compacted, got {e}"),
        Ok(_) => anyhow::bail!("a watch from revision 1 was accepted after compaction"),
    }
    // The last revisions are still there.
    let mut recent = client.watch(on_prefix("c", last)).await?;
    let seen = read(&mut recent, 1).await?;
    assert_eq!(seen[0][0].0, last);
    cluster.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_carries_on_at_another_member_without_gap_or_repeat() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(Backend::InProcess, Options::default()).await?;
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await?;
    // The watcher prefers a follower, so that stopping its member leaves the cluster writable.
    let mut endpoints: Vec<(u64, String)> = cluster
        .nodes
        .iter()
        .map(|(id, n)| (*id, n.client_addr.to_string()))
        .collect();
    endpoints.sort_by_key(|(id, _)| *id == leader);
    let watcher = Client::connect(endpoints.iter().map(|e| e.1.clone()).collect(), ClientConfig::default()).await?;
    let mut watch = watcher.watch(on_prefix("r/", 0)).await?;
    let serving = watch.endpoint().map(String::from).expect("serving");
    let victim = endpoints
        .iter()
        .find(|e| e.1 == serving)
        .map(|e| e.0)
        .expect("a member");
    anyhow::ensure!(victim != leader, "the watch is on the leader");

    let writer = Client::connect(
        vec![cluster.nodes[&leader].client_addr.to_string()],
        ClientConfig::default(),
    )
    .await?;
    const WRITES: usize = 200;
    let writes = tokio::spawn(async move {
        let mut revisions = Vec::new();
        for i in 0..WRITES {
            let r = writer.put(format!("r/{}", i % 7), i.to_string()).await?;
            revisions.push(r.header.unwrap_or_default().revision);
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        anyhow::Ok(revisions)
    });
    let mut got = Vec::new();
    while got.len() < WRITES {
        let batch = tokio::time::timeout(LIMIT, watch.next()).await??;
        got.extend(
            batch
                .events
                .iter()
                .map(|e| e.kv.as_ref().map_or(0, |kv| kv.mod_revision)),
        );
        if got.len() >= WRITES / 3 && cluster.is_running(victim) {
            cluster.kill(victim).await?;
        }
    }
    let written = writes.await??;
    assert!(!cluster.is_running(victim), "the serving member was stopped mid-watch");
    assert_ne!(watch.endpoint(), Some(serving.as_str()), "the watch moved on");
    assert_eq!(got, written, "every write once, in order, across the move");
    cluster.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keelctl_watch_prints_one_line_per_event() -> anyhow::Result<()> {
    let cluster = Cluster::start(Backend::InProcess, Options::default()).await?;
    cluster.wait_for_leader(Duration::from_secs(10)).await?;
    let client = Client::connect(cluster.endpoints(), ClientConfig::default()).await?;
    let first = client.put("x/a", "1").await?.header.unwrap_or_default().revision;
    let endpoints = cluster.endpoints().join(",");
    let rev = first.to_string();
    let args = [
        "--endpoints",
        &endpoints,
        "-o",
        "json",
        "watch",
        "x/",
        "--prefix",
        "--prev-kv",
        "--rev",
        &rev,
        "--max-events",
        "3",
    ];
    let mut child = std::process::Command::new(keel_testkit::keelctl_binary()?)
        .args(args)
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    client.put("x/a", "2").await?;
    client
        .delete_range(DeleteRangeRequest {
            key: "x/a".into(),
            ..Default::default()
        })
        .await?;
    let give_up = std::time::Instant::now() + LIMIT;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if std::time::Instant::now() > give_up {
            child.kill()?;
            anyhow::bail!("keelctl watch did not stop after 3 events");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let mut text = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().expect("stdout"), &mut text)?;
    let out = (status, text);
    assert!(out.0.success(), "{out:?}");
    let lines: Vec<serde_json::Value> = out.1.lines().map(serde_json::from_str).collect::<Result<_, _>>()?;
    let summary: Vec<(String, u64, String, Option<String>)> = lines
        .iter()
        .map(|l| {
            (
                l["type"].as_str().unwrap_or_default().to_string(),
                l["revision"].as_u64().unwrap_or_default(),
                l["kv"]["value"].as_str().unwrap_or("-").to_string(),
                l["prev_kv"]["value"].as_str().map(String::from),
            )
        })
        .collect();
    let s = |v: &str| v.to_string();
    assert_eq!(
        summary,
        vec![
            (s("PUT"), first, s("1"), None),
            (s("PUT"), first + 1, s("2"), Some(s("1"))),
            (s("DELETE"), first + 2, s("-"), Some(s("2"))),
        ],
        "{}",
        out.1
    );
    cluster.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_watcher_waits_and_then_reads_on_from_the_history() -> anyhow::Result<()> {
    use keel_proto::v1::watch_client::WatchClient;
    use keel_proto::v1::{watch_request, WatchRequest};
    let cluster = Cluster::start(Backend::InProcess, Options::default()).await?;
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await?;
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let create = WatchCreateRequest {
        prev_kv: false,
        ..on_prefix("s/", 0)
    };
    tx.send(WatchRequest {
        request: Some(watch_request::Request::Create(create)),
    })
    .await?;
    let mut responses = WatchClient::new(cluster.channel(leader))
        .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    let created = responses.message().await?.expect("an answer");
    assert!(created.created && !created.canceled, "{created:?}");

    // Write without reading the stream until the member says its watcher waits for the client
    // (its buffers are full), bounded in count.
    let client = Client::connect(
        vec![cluster.nodes[&leader].client_addr.to_string()],
        ClientConfig::default(),
    )
    .await?;
    let slow = || async {
        let (_, metrics) = common::http_get(cluster.nodes[&leader].metrics_addr, "/metrics").await?;
        let line = metrics
            .lines()
            .find(|l| l.starts_with("keel_slow_watchers{"))
            .unwrap_or_default()
            .to_string();
        anyhow::Ok(line.ends_with(" 1"))
    };
    let mut written = Vec::new();
    while !slow().await? {
        anyhow::ensure!(written.len() < 5000, "5000 writes and the watcher never had to wait");
        for _ in 0..50 {
            let r = client
                .put(format!("s/{}", written.len() % 10), vec![b'x'; 4096])
                .await?;
            written.push(r.header.unwrap_or_default().revision);
        }
    }
    eprintln!("the watcher waited after {} writes", written.len());
    // Now read: every write arrives, once, in order.
    let mut got = Vec::new();
    while got.len() < written.len() {
        let resp = tokio::time::timeout(LIMIT, responses.message())
            .await??
            .expect("the stream goes on");
        assert!(!resp.canceled, "{resp:?}");
        got.extend(
            resp.events
                .iter()
                .map(|e| e.kv.as_ref().map_or(0, |kv| kv.mod_revision)),
        );
    }
    assert_eq!(got, written);
    cluster.shutdown().await
}

/// A member that caught up from a snapshot holds no history from before it; a watch from
/// earlier is refused there and taken by a member that still has it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_without_the_history_sends_the_watch_to_one_with_it() -> anyhow::Result<()> {
    // A snapshot every 50 entries, one write per entry, and a history longer than the run: the
    // leader purges the entries the stopped follower needs, and it comes back by snapshot.
    let options = Options {
        flags: [
            "--snapshot-logs",
            "50",
            "--max-batch",
            "1",
            "--history-revisions",
            "100000",
        ]
        .map(String::from)
        .to_vec(),
        ..Options::default()
    };
    let mut cluster = Cluster::start(Backend::InProcess, options).await?;
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await?;
    let follower = *cluster.nodes.keys().find(|id| **id != leader).expect("a follower");
    let writer = Client::connect(
        vec![cluster.nodes[&leader].client_addr.to_string()],
        ClientConfig::default(),
    )
    .await?;
    let first = writer.put("h/0", "0").await?.header.unwrap_or_default().revision;
    let needed = cluster.status(follower).await.expect("follower status").last_log_index + 1;
    cluster.kill(follower).await?;
    for i in 1..1300 {
        writer.put(format!("h/{}", i % 50), i.to_string()).await?;
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while cluster.status(leader).await.map_or(0, |s| s.purged_index) <= needed {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "the leader never purged past {needed}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cluster.restart(follower).await?;
    let target = cluster.status(leader).await.expect("leader status").applied_index;
    cluster.wait_applied(follower, target, Duration::from_secs(30)).await?;

    let alone = Client::connect(
        vec![cluster.nodes[&follower].client_addr.to_string()],
        ClientConfig::default(),
    )
    .await?;
    match alone.watch(on_prefix("h/", first)).await {
        Err(Error::Compacted(c)) => assert!(c >= first, "compacted up to {c}"),
        Err(e) => anyhow::bail!("expected Compacted from the restored follower, got {e}"),
        Ok(_) => anyhow::bail!("the restored follower served history from before its snapshot"),
    }
    let restored = cluster.nodes[&follower].client_addr.to_string();
    let mut endpoints = vec![restored.clone()];
    endpoints.extend(cluster.endpoints().into_iter().filter(|e| *e != restored));
    let mut watch = Client::connect(endpoints, ClientConfig::default())
        .await?
        .watch(on_prefix("h/", first))
        .await?;
    let seen = read(&mut watch, 1).await?;
    assert_eq!(seen[0][0].0, first, "the watch starts where it asked");
    assert_ne!(
        watch.endpoint(),
        Some(cluster.nodes[&follower].client_addr.to_string().as_str())
    );
    cluster.shutdown().await
}
