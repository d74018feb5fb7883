//! The built keelctl binary: exit codes, stderr, and output against an in-memory fake member.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use keel_client::proto::Member;
use keel_fake::{always, dead_endpoint, start_on, Options, Reply};
use serde_json::Value;

/// Runs keelctl with a hard limit, so a hanging client fails the test instead of stalling it.
fn keelctl(args: &[&str]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_keelctl"))
        .args(args)
        .env_remove("KEEL_ENDPOINTS")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn keelctl");
    let started = Instant::now();
    loop {
        match child.try_wait().expect("wait") {
            Some(_) => return child.wait_with_output().expect("output"),
            None if started.elapsed() > Duration::from_secs(20) => {
                let _ = child.kill();
                panic!("keelctl {args:?} did not finish");
            }
            None => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", stdout(out)))
}

/// The fake (member 1, the leader) on its own address, listing a second member that is not
/// running (at `dead`).
async fn fake_member(dead: &str) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let member = |id, client_addr: &str| Member {
        id,
        peer_addr: "127.0.0.1:1".into(),
        client_addr: client_addr.into(),
        is_learner: false,
    };
    let options = Options {
        member_id: 1,
        leader_id: 1,
        role: "leader".into(),
        members: vec![member(2, dead), member(1, &addr)],
        ..Options::default()
    };
    start_on(listener, always(Reply::Ok), options);
    addr
}

#[test]
fn an_unreachable_cluster_is_exit_1_with_one_clear_line() {
    let started = Instant::now();
    let out = keelctl(&["--endpoints", "127.0.0.1:1", "--timeout", "300ms", "get", "k"]);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("error: cannot reach any endpoint"), "{err}");
    assert!(err.contains("127.0.0.1:1"), "{err}");
    assert!(out.stdout.is_empty());
}

#[test]
fn usage_errors_are_exit_2() {
    let out = keelctl(&["get", "k", "--no-such-flag"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let out = keelctl(&["cas", "k", "v"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verbs_against_a_fake_member() {
    let dead = dead_endpoint();
    let addr = fake_member(&dead).await;
    // The dead endpoint first: every verb must get past it.
    let endpoints = format!("{dead},{addr}");
    let run = move |args: &[&str]| {
        let mut all = vec!["--endpoints", endpoints.as_str()];
        all.extend_from_slice(args);
        let all: Vec<String> = all.into_iter().map(String::from).collect();
        async move {
            tokio::task::spawn_blocking(move || keelctl(&all.iter().map(String::as_str).collect::<Vec<_>>()))
                .await
                .expect("join")
        }
    };

    let out = run(&["put", "app/a", "1"]).await;
    assert_eq!((out.status.code(), stdout(&out).as_str()), (Some(0), "OK\n"), "{out:?}");
    let out = run(&["-o", "json", "put", "app/b", "two"]).await;
    assert_eq!(json(&out)["revision"], 2, "{out:?}");
    assert_eq!(json(&out)["header"]["member_id"], 1, "{out:?}");

    let out = run(&["get", "app/a", "-o", "json"]).await;
    let doc = json(&out);
    assert_eq!(doc["count"], 1);
    assert_eq!(doc["kvs"][0]["key"], "app/a");
    assert_eq!(doc["kvs"][0]["value"], "1");
    assert_eq!(doc["kvs"][0]["value_encoding"], "utf8");
    assert_eq!(doc["kvs"][0]["version"], 1);

    // A missing key is not an error.
    let out = run(&["get", "nope", "-o", "json"]).await;
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(json(&out)["kvs"], Value::Array(vec![]));
    assert_eq!(json(&out)["count"], 0);
    let out = run(&["get", "nope"]).await;
    assert_eq!((out.status.code(), stdout(&out).as_str()), (Some(0), ""), "{out:?}");

    let out = run(&["get", "app/", "--prefix", "-o", "simple"]).await;
    assert_eq!(stdout(&out), "app/a\n1\napp/b\ntwo\n");
    let out = run(&["get", "app/", "--prefix", "--print-value-only", "--limit", "1"]).await;
    assert_eq!(stdout(&out), "1\n");
    let out = run(&["get", "app/", "--prefix", "--count-only"]).await;
    assert_eq!(stdout(&out), "2\n");
    let out = run(&["get", "app/b", "--from-key", "--keys-only", "-o", "simple"]).await;
    assert_eq!(stdout(&out), "app/b\n");

    // Compare-and-swap: success, then a failed compare that reports the current state.
    let out = run(&["cas", "app/a", "2", "--expect-value", "1"]).await;
    assert_eq!((out.status.code(), stdout(&out).as_str()), (Some(0), "OK\n"), "{out:?}");
    let out = run(&["cas", "app/a", "3", "--expect-version", "1"]).await;
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert!(
        stdout(&out).contains("version 2") && stdout(&out).contains("\"2\""),
        "{out:?}"
    );
    let out = run(&["-o", "json", "cas", "app/new", "x", "--expect-absent"]).await;
    assert_eq!(
        (out.status.code(), json(&out)["succeeded"].clone()),
        (Some(0), Value::Bool(true))
    );
    let out = run(&["-o", "json", "cas", "app/new", "y", "--expect-absent"]).await;
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert_eq!(json(&out)["current"]["value"], "x");
    let out = run(&["cas", "app/none", "y", "--expect-value", "z"]).await;
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert!(stdout(&out).contains("does not exist"), "{out:?}");

    let out = run(&["del", "app/", "--prefix"]).await;
    assert_eq!((out.status.code(), stdout(&out).as_str()), (Some(0), "3\n"), "{out:?}");
    let out = run(&["-o", "json", "del", "app/a"]).await;
    assert_eq!(json(&out)["deleted"], 0);

    let out = run(&["put", "", "v"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stderr(&out), "error: key is empty\n");

    let out = run(&["member", "list"]).await;
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let table = stdout(&out);
    assert!(
        table
            .lines()
            .nth(1)
            .is_some_and(|l| l.starts_with("1 ") && l.ends_with('*')),
        "{table}"
    );

    // One member answers, one does not: still exit 0, with the dead one shown.
    let out = run(&["status", "--timeout", "2s"]).await;
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let table = stdout(&out);
    assert!(table.contains("leader") && table.contains("3.0 MiB"), "{table}");
    assert!(
        table.lines().any(|l| l.starts_with("2 ") && l.contains("unreachable")),
        "{table}"
    );
    let out = run(&["status", "-o", "json"]).await;
    let doc = json(&out);
    assert_eq!(doc["members"][0]["reachable"], true, "{doc}");
    assert_eq!(doc["members"][0]["lag"], 0, "{doc}");
    assert_eq!(doc["members"][1]["reachable"], false, "{doc}");
    assert_eq!(doc["members"][1]["client_addr"], dead.as_str(), "{doc}");
}
