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
