//! A node's tasks stop when asked (issue 14): a one-member cluster started and stopped in this
//! process 50 times leaves nothing behind. After each stop its three ports can be bound again at
//! once, the runtime holds no more live tasks than before the first start, and the process has
//! no more open files than after the first round (which also opens what stays open for good,
//! such as the runtime's own descriptors). Every other round drops the handle instead of calling
//! `shutdown`, which must stop the node as well.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use keel_client::{Client, ClientConfig};
use keel_server::{Config, Listeners, NodeHandle};
use tokio::net::TcpListener;

const ROUNDS: usize = 50;

fn open_files() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

fn live_tasks() -> usize {
    tokio::runtime::Handle::current().metrics().num_alive_tasks()
}

/// Wait (bounded) until `measure` is at most `limit`; its last value.
async fn settles(limit: usize, measure: fn() -> usize) -> usize {
    let give_up = Instant::now() + Duration::from_secs(15);
    loop {
        let now = measure();
        if now <= limit || Instant::now() > give_up {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Bind the node's three ports: the same addresses every round, so each bind proves the last
/// round closed them.
async fn bind(addrs: [SocketAddr; 3], round: usize) -> anyhow::Result<Listeners> {
    let bind = |a: SocketAddr| async move {
        TcpListener::bind(a)
            .await
            .map_err(|e| anyhow::anyhow!("round {round}: {a} is still taken: {e}"))
    };
    Ok(Listeners {
        peer: bind(addrs[0]).await?,
        client: bind(addrs[1]).await?,
        metrics: Some(bind(addrs[2]).await?),
    })
}

async fn start(dir: &std::path::Path, addrs: [SocketAddr; 3], round: usize) -> anyhow::Result<NodeHandle> {
    let [peer, client, metrics] = addrs.map(|a| a.to_string());
    let config = Config::from_args([
        "keel".to_string(),
        "--id=1".into(),
        format!("--data-dir={}", dir.display()),
        format!("--peer-addr={peer}"),
        format!("--client-addr={client}"),
        format!("--metrics-addr={metrics}"),
        format!("--initial-cluster=1={peer}"),
        "--heartbeat-ms=20".into(),
        "--election-timeout-ms=60-120".into(),
    ])?;
    Ok(keel_server::start(config, bind(addrs, round).await?).await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_starts_and_stops_leave_no_task_port_or_file_behind() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut addrs = [SocketAddr::from(([127, 0, 0, 1], 0)); 3];
    for a in &mut addrs {
        *a = TcpListener::bind(*a).await?.local_addr()?;
    }
    let tasks_before = live_tasks();
    let mut files_after_first = None;
    for round in 0..ROUNDS {
        let handle = start(dir.path(), addrs, round).await?;
        {
            let client = Client::connect(
                vec![addrs[1].to_string()],
                ClientConfig::with_timeout(Duration::from_secs(10)),
            )
            .await?;
            let key = format!("round{round}");
            client.put(key.clone(), b"v".to_vec()).await?;
            // Every earlier round's write is still there: each stop left a store that opens.
            for earlier in 0..=round {
                let got = client.get(format!("round{earlier}")).await?;
                assert!(got.is_some(), "round {round}: round {earlier}'s key is gone");
            }
        }
        if round % 2 == 0 {
            handle.shutdown().await?;
        } else {
            drop(handle);
        }
        let tasks = settles(tasks_before, live_tasks).await;
        assert!(
            tasks <= tasks_before,
            "round {round}: {tasks} live tasks after the stop, {tasks_before} before the first start"
        );
        let limit = *files_after_first.get_or_insert_with(open_files);
        let files = settles(limit, open_files).await;
        assert!(
            files <= limit,
            "round {round}: {files} open files after the stop, {limit} after the first round"
        );
    }
    Ok(())
}
