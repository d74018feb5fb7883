//! Locks and elections served by the cluster (issue 15, item 3): one holder at a time, in queue
//! order; a holder's fencing token stops its writes once it has lost the lock; a holder whose
//! lease ends releases the lock; a waiter that gives up leaves the queue; elections lead, proclaim,
//! resign and are observed; keelctl holds a lock while a command runs.

use std::time::{Duration, Instant};

use keel_client::proto::LeaderKey;
use keel_client::{fenced_put, Client, ClientConfig, Error};
use keel_testkit::{keelctl_binary, Backend, Cluster, Options};

async fn client(cluster: &Cluster) -> anyhow::Result<Client> {
    Ok(Client::connect(cluster.endpoints(), ClientConfig::default()).await?)
}

/// The keys of queue `name`.
async fn queue(client: &Client, name: &str) -> anyhow::Result<Vec<Vec<u8>>> {
    let resp = client
        .range(keel_client::proto::RangeRequest {
            key: format!("{name}/").into_bytes(),
            prefix: true,
            keys_only: true,
            ..Default::default()
        })
        .await?;
    Ok(resp.kvs.into_iter().map(|kv| kv.key).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_holder_at_a_time_fenced_and_released_with_its_lease() -> anyhow::Result<()> {
    let flags = ["--max-lock-waiters", "2"];
    let cluster = Cluster::start(
        Backend::InProcess,
        Options {
            flags: flags.iter().map(|f| f.to_string()).collect(),
            ..Default::default()
        },
    )
    .await?;
    cluster.wait_for_leader(Duration::from_secs(20)).await?;
    let c = client(&cluster).await?;
    let wait = Duration::from_secs(30);
    let (a, b) = (c.lease_grant(60).await?.id, c.lease_grant(60).await?.id);

    let held_a = c.lock("jobs", a, wait).await?;
    assert!(held_a.key.starts_with(b"jobs/"), "{held_a:?}");
    // Locking again with the same lease finds the same key and token.
    let again = c.lock("jobs", a, wait).await?;
    assert_eq!(
        (again.key.as_slice(), again.fencing_token),
        (held_a.key.as_slice(), held_a.fencing_token)
    );
    // B queues behind A.
    let waiter = {
        let c = c.clone();
        tokio::spawn(async move { c.lock("jobs", b, Duration::from_secs(30)).await })
    };
    let queued = Instant::now();
    while queue(&c, "jobs").await?.len() < 2 {
        assert!(queued.elapsed() < Duration::from_secs(10), "B never queued");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A's fenced write applies while it holds the lock.
    let write = c
        .txn(fenced_put(&held_a.key, held_a.fencing_token, "counter", "1"))
        .await?;
    assert!(write.succeeded);
    let released = c.unlock(held_a.key.clone()).await?;
    let held_b = waiter.await??;
    let released_at = released.header.expect("header").revision;
    assert!(
        held_b.header.as_ref().expect("header").revision >= released_at,
        "B held the lock at revision {:?}, before A released it at {released_at}",
        held_b.header
    );
    assert!(held_b.fencing_token > held_a.fencing_token);
    // A, no longer the holder, writes nothing with its old token; B does with its own.
    let stale = c
        .txn(fenced_put(&held_a.key, held_a.fencing_token, "counter", "stale"))
        .await?;
    assert!(!stale.succeeded, "a stale holder's fenced write applied");
    assert!(
        c.txn(fenced_put(&held_b.key, held_b.fencing_token, "counter", "2"))
            .await?
            .succeeded
    );
    assert_eq!(c.get("counter").await?.expect("counter").value, b"2");

    // A waiter that gives up (its deadline passes) leaves the queue.
    let e = c.lease_grant(60).await?.id;
    let gave_up = c.lock("jobs", e, Duration::from_millis(500)).await.unwrap_err();
    assert!(gave_up.is_transient(), "{gave_up:?}");
    let left = Instant::now();
    while queue(&c, "jobs").await?.len() > 1 {
        assert!(
            left.elapsed() < Duration::from_secs(10),
            "the abandoned waiter's key stayed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Waiters are limited per member: two wait; a third is refused.
    let mut waiting = Vec::new();
    for _ in 0..2 {
        let lease = c.lease_grant(60).await?.id;
        let c = c.clone();
        waiting.push(tokio::spawn(async move {
            c.lock("jobs", lease, Duration::from_secs(30)).await
        }));
    }
    let lease = c.lease_grant(60).await?.id;
    let counted = Instant::now();
    let refused = loop {
        // Each waiter is counted on the member that serves it; all go to the leader here (the
        // client's preferred endpoint), so the third finds two there once both are queued.
        if queue(&c, "jobs").await?.len() == 3 {
            break c.lock("jobs", lease, Duration::from_secs(5)).await.unwrap_err();
        }
        assert!(counted.elapsed() < Duration::from_secs(10), "the waiters never queued");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        matches!(&refused, Error::Other(s) if s.code() == tonic::Code::ResourceExhausted),
        "{refused:?}"
    );
    for w in waiting {
        w.abort();
    }

    // A holder whose lease ends releases the lock: B's lease is revoked (as if it expired).
    c.lease_revoke(b).await?;
    let (f, g) = (c.lease_grant(60).await?.id, c.lease_grant(60).await?.id);
    let held_f = c.lock("solo", f, wait).await?;
    let waiter = {
        let c = c.clone();
        tokio::spawn(async move { c.lock("solo", g, Duration::from_secs(30)).await })
    };
    c.lease_revoke(f).await?;
    let held_g = waiter.await??;
    assert!(held_g.fencing_token > held_f.fencing_token);
    assert!(
        !c.txn(fenced_put(&held_f.key, held_f.fencing_token, "solo-counter", "x"))
            .await?
            .succeeded
    );

    // Bad input: precise codes, nothing applied.
    let empty = c.lock("", a, wait).await.unwrap_err();
    assert!(matches!(empty, Error::InvalidArgument(_)), "{empty:?}");
    let zero = c.lock("jobs", 0, wait).await.unwrap_err();
    assert!(matches!(zero, Error::InvalidArgument(_)), "{zero:?}");
    let unknown = c.lock("nolease", 0x7777, wait).await.unwrap_err();
    assert!(matches!(unknown, Error::NotFound(_)), "{unknown:?}");
    assert!(queue(&c, "nolease").await?.is_empty());
    cluster.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_election_leads_proclaims_resigns_and_is_observed() -> anyhow::Result<()> {
    let cluster = Cluster::start(Backend::InProcess, Options::default()).await?;
    cluster.wait_for_leader(Duration::from_secs(20)).await?;
    let c = client(&cluster).await?;
    let wait = Duration::from_secs(30);
    let none = c.election_leader("svc").await.unwrap_err();
    assert!(
        matches!(&none, Error::FailedPrecondition(m) if m.contains("no leader")),
        "{none:?}"
    );

    let mut observe = c.observe("svc");
    let (a, b) = (c.lease_grant(60).await?.id, c.lease_grant(60).await?.id);
    let led_a = c.campaign("svc", a, "a", wait).await?;
    let leader_a: LeaderKey = led_a.leader.expect("leader key");
    assert_eq!(observe.next().await?.kv.expect("kv").value, b"a");
    let waiter = {
        let c = c.clone();
        tokio::spawn(async move { c.campaign("svc", b, "b", Duration::from_secs(30)).await })
    };
    c.proclaim(leader_a.clone(), "a2").await?;
    assert_eq!(observe.next().await?.kv.expect("kv").value, b"a2");
    assert_eq!(c.election_leader("svc").await?.kv.expect("kv").value, b"a2");
    c.resign(leader_a.clone()).await?;
    let led_b = waiter.await??;
    assert!(led_b.leader.expect("leader key").rev > leader_a.rev);
    assert_eq!(observe.next().await?.kv.expect("kv").value, b"b");
    // The old leader's key is gone: it can no longer proclaim.
    let stale = c.proclaim(leader_a, "late").await.unwrap_err();
    assert!(
        matches!(&stale, Error::FailedPrecondition(m) if m.contains("not leader")),
        "{stale:?}"
    );
    assert_eq!(c.election_leader("svc").await?.kv.expect("kv").value, b"b");
    cluster.shutdown().await
}

/// keelctl lock runs a command while holding the lock: two at once never overlap (each writes
/// start and end markers around a pause), each gets its own token, and keelctl exits with the
/// command's code.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keelctl_lock_holds_the_lock_while_its_command_runs() -> anyhow::Result<()> {
    let cluster = Cluster::start(Backend::InProcess, Options::default()).await?;
    cluster.wait_for_leader(Duration::from_secs(20)).await?;
    let dir = tempfile::tempdir()?;
    let log = dir.path().join("log");
    let endpoints = cluster.endpoints().join(",");
    let script = format!(
        "echo start $KEEL_LOCK_TOKEN >> {0}; sleep 0.3; echo end $KEEL_LOCK_TOKEN >> {0}; exit 3",
        log.display()
    );
    let run = |script: String| {
        let endpoints = endpoints.clone();
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(keelctl_binary().expect("keelctl"))
                .args([
                    "--endpoints",
                    &endpoints,
                    "-o",
                    "simple",
                    "lock",
                    "batch",
                    "--",
                    "sh",
                    "-c",
                    &script,
                ])
                .output()
                .expect("run keelctl")
        })
    };
    let (one, two) = tokio::join!(run(script.clone()), run(script.clone()));
    let (one, two) = (one?, two?);
    let mut tokens = Vec::new();
    for out in [&one, &two] {
        assert_eq!(out.status.code(), Some(3), "{out:?}");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let lines: Vec<&str> = stdout.lines().collect();
        assert!(lines[0].starts_with("batch/"), "{stdout}");
        tokens.push(lines[1].to_string());
    }
    assert_ne!(tokens[0], tokens[1]);
    let written = std::fs::read_to_string(&log)?;
    let lines: Vec<&str> = written.lines().collect();
    assert_eq!(lines.len(), 4, "{written}");
    for pair in lines.chunks(2) {
        let (start, end) = (pair[0].strip_prefix("start "), pair[1].strip_prefix("end "));
        assert!(start.is_some() && start == end, "two holders overlapped: {written}");
    }
    // Both released: the queue is empty.
    let c = client(&cluster).await?;
    assert!(queue(&c, "batch").await?.is_empty());
    cluster.shutdown().await
}
