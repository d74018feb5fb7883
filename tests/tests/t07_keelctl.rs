//! keelctl against a real cluster: exit codes and messages for good and bad input.
//! 0 ok, 1 error (one line naming the cause), 2 usage, 3 compare failed.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use keel_testkit::{keelctl_binary, Backend, Cluster, Options};

struct Ctl {
    endpoints: String,
}

impl Ctl {
    fn run(&self, args: &[&str]) -> Output {
        Command::new(keelctl_binary().expect("keelctl binary"))
            .env("KEEL_ENDPOINTS", &self.endpoints)
            .args(args)
            .output()
            .expect("run keelctl")
    }
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn expect(o: &Output, code: i32, stderr_has: &str) {
    assert_eq!(
        o.status.code(),
        Some(code),
        "stdout: {} stderr: {}",
        stdout(o),
        stderr(o)
    );
    assert!(
        stderr(o).contains(stderr_has),
        "stderr {:?} lacks {stderr_has:?}",
        stderr(o)
    );
    if code == 1 {
        assert_eq!(
            stderr(o).trim_end().lines().count(),
            1,
            "one line on stderr: {}",
            stderr(o)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keelctl_exit_codes_and_messages() -> anyhow::Result<()> {
    let cluster = Cluster::start(Backend::InProcess, Options::default()).await?;
    let ctl = Ctl {
        endpoints: cluster.endpoints().join(","),
    };
    // keelctl blocks; run it off the runtime that serves the cluster.
    let run = |args: Vec<&'static str>| {
        let ctl = Ctl {
            endpoints: ctl.endpoints.clone(),
        };
        tokio::task::spawn_blocking(move || ctl.run(&args))
    };

    expect(&run(vec!["put", "k", "v1"]).await?, 0, "");
    let missing = run(vec!["get", "no-such-key", "-o", "json"]).await?;
    expect(&missing, 0, "");
    let v: serde_json::Value = serde_json::from_str(&stdout(&missing))?;
    assert_eq!(
        (v["kvs"].as_array().map(Vec::len), &v["count"]),
        (Some(0), &serde_json::json!(0))
    );
    let missing_table = run(vec!["get", "no-such-key"]).await?;
    assert_eq!(
        (missing_table.status.code(), stdout(&missing_table)),
        (Some(0), String::new())
    );

    // Bad input is refused by the server with InvalidArgument: exit 1, the cause named.
    expect(&run(vec!["put", "", "v"]).await?, 1, "key is empty");
    let long_key: &'static str = Box::leak("x".repeat(4097).into_boxed_str());
    expect(
        &run(vec!["put", long_key, "v"]).await?,
        1,
        "more than the limit of 4096",
    );
    expect(&run(vec!["get", "", "--prefix", "--limit", "1"]).await?, 0, "");

    // cas: 0 when the compare holds, 3 when it fails.
    expect(&run(vec!["cas", "k", "v2", "--expect-value", "v1"]).await?, 0, "");
    expect(&run(vec!["cas", "k", "v3", "--expect-value", "v1"]).await?, 3, "");
    expect(&run(vec!["cas", "new", "n1", "--expect-absent"]).await?, 0, "");
    expect(&run(vec!["cas", "new", "n2", "--expect-absent"]).await?, 3, "");
    expect(&run(vec!["cas", "k", "v4", "--expect-version", "2"]).await?, 0, "");
    let now = run(vec!["get", "k", "--print-value-only"]).await?;
    assert_eq!(stdout(&now).trim(), "v4");

    // Usage errors: exit 2.
    expect(&run(vec!["put", "only-a-key"]).await?, 2, "");
    expect(&run(vec!["get", "k", "--no-such-flag"]).await?, 2, "");
    expect(&run(vec!["cas", "k", "v"]).await?, 2, "");

    // Unknown endpoint: exit 1 with the cause, promptly.
    let start = Instant::now();
    let dead = tokio::task::spawn_blocking(|| {
        Command::new(keelctl_binary().expect("keelctl"))
            .args(["--endpoints", "127.0.0.1:1", "--timeout", "500ms", "get", "k"])
            .output()
            .expect("run keelctl")
    })
    .await?;
    expect(&dead, 1, "127.0.0.1:1");
    assert!(start.elapsed() < Duration::from_secs(5), "took {:?}", start.elapsed());

    // status --watch prints a document per round until stopped; every round names all members
    // with their peer addresses.
    let endpoints = cluster.endpoints().join(",");
    let mut watch = std::process::Command::new(keelctl_binary()?)
        .args(["--endpoints", &endpoints, "-o", "json", "status", "--watch", "200ms"])
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    // One JSON document per line; read two rounds (bounded by a deadline), then stop it.
    let stdout = watch.stdout.take().expect("piped stdout");
    let reader = tokio::task::spawn_blocking(move || {
        use std::io::BufRead;
        std::io::BufReader::new(stdout)
            .lines()
            .take(2)
            .collect::<Result<Vec<String>, _>>()
    });
    let lines = tokio::time::timeout(Duration::from_secs(20), reader).await;
    watch.kill()?;
    watch.wait()?;
    let lines = lines.expect("two rounds within 20 s")??;
    let docs: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l))
        .collect::<Result<_, _>>()?;
    assert_eq!(docs.len(), 2, "{lines:?}");
    for doc in &docs {
        let members = doc["members"].as_array().expect("members");
        assert_eq!(members.len(), 3, "{doc}");
        for m in members {
            let id = m["id"].as_u64().expect("id");
            assert_eq!(m["peer_addr"], cluster.nodes[&id].peer_addr.to_string(), "{m}");
        }
    }
    cluster.shutdown().await
}

/// The lease verbs, end to end: grant, put --lease, timetolive --keys, list, keep-alive --once
/// and the keep-alive loop, revoke (the key goes with it), and the errors of unknown and
/// malformed ids.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keelctl_lease_verbs() -> anyhow::Result<()> {
    let cluster = Cluster::start(Backend::InProcess, Options::default()).await?;
    let endpoints = cluster.endpoints().join(",");
    let run = |args: Vec<String>| {
        let ctl = Ctl {
            endpoints: endpoints.clone(),
        };
        tokio::task::spawn_blocking(move || ctl.run(&args.iter().map(String::as_str).collect::<Vec<_>>()))
    };
    let args = |s: &str| s.split_whitespace().map(String::from).collect::<Vec<_>>();

    let granted = run(args("-o json lease grant 60")).await?;
    expect(&granted, 0, "");
    let doc: serde_json::Value = serde_json::from_str(&stdout(&granted))?;
    let id = doc["id_hex"].as_str().expect("id_hex").to_string();
    assert_eq!(doc["ttl"], 60, "{doc}");
    assert_eq!(i64::from_str_radix(&id, 16)?, doc["id"].as_i64().expect("id"), "{doc}");

    expect(&run(args(&format!("put svc/a on --lease {id}"))).await?, 0, "");
    let ttl = run(args(&format!("-o json lease timetolive {id} --keys"))).await?;
    expect(&ttl, 0, "");
    let doc: serde_json::Value = serde_json::from_str(&stdout(&ttl))?;
    assert_eq!(doc["granted_ttl"], 60, "{doc}");
    assert!(doc["ttl"].as_i64().is_some_and(|t| t > 0 && t <= 60), "{doc}");
    assert_eq!(doc["keys"][0]["key"], "svc/a", "{doc}");
    let table = run(args(&format!("lease timetolive {id} --keys"))).await?;
    assert!(
        stdout(&table).starts_with(&format!("lease {id} granted with TTL(60s), remaining(")),
        "{}",
        stdout(&table)
    );
    assert!(stdout(&table).contains("attached keys([svc/a])"), "{}", stdout(&table));
    let list = run(args("-o simple lease list")).await?;
    assert_eq!(stdout(&list).lines().collect::<Vec<_>>(), [id.as_str()]);
    let once = run(args(&format!("-o simple lease keep-alive --once {id}"))).await?;
    expect(&once, 0, "");
    assert_eq!(stdout(&once).trim(), "60");

    // The loop prints a line per renewal; stopped after the first.
    let mut keeper = Command::new(keelctl_binary()?)
        .args(["--endpoints", &endpoints, "-o", "json", "lease", "keep-alive", &id])
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let out = keeper.stdout.take().expect("piped stdout");
    let reader = tokio::task::spawn_blocking(move || {
        use std::io::BufRead;
        std::io::BufReader::new(out)
            .lines()
            .take(1)
            .collect::<Result<Vec<String>, _>>()
    });
    let lines = tokio::time::timeout(Duration::from_secs(20), reader).await;
    keeper.kill()?;
    keeper.wait()?;
    let lines = lines.expect("a renewal within 20 s")??;
    let doc: serde_json::Value = serde_json::from_str(&lines[0])?;
    assert_eq!(
        (doc["id_hex"].as_str(), doc["ttl"].as_i64()),
        (Some(id.as_str()), Some(60))
    );

    expect(&run(args(&format!("lease revoke {id}"))).await?, 0, "");
    let gone = run(args("get svc/a")).await?;
    assert_eq!((gone.status.code(), stdout(&gone)), (Some(0), String::new()));
    // The lease is gone: each verb says so, exit 1.
    expect(&run(args(&format!("lease timetolive {id}"))).await?, 1, "not found");
    expect(&run(args(&format!("lease revoke {id}"))).await?, 1, "not found");
    expect(&run(args(&format!("lease keep-alive {id}"))).await?, 1, "not found");
    expect(&run(args(&format!("put svc/b x --lease {id}"))).await?, 1, "not found");
    assert_eq!(stdout(&run(args("get svc/b")).await?), "");
    // Malformed ids and TTLs are usage errors.
    expect(&run(args("lease revoke zz")).await?, 2, "hexadecimal");
    expect(&run(args("lease revoke 0")).await?, 2, "greater than zero");
    expect(&run(args("put k v --lease -1")).await?, 2, "");
    expect(&run(args("lease grant 0")).await?, 2, "");
    cluster.shutdown().await
}
