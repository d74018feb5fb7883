//! The README quickstart: `scripts/cluster.sh up`, a put and a get with keelctl, and
//! `scripts/cluster.sh down`, with the debug binaries this test run built.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("run command");
    eprintln!(
        "$ {cmd:?}\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A base port whose nine ports (clients +1..3, peers +101..103, metrics +2001..2003) are free.
fn free_base() -> u16 {
    for attempt in 0..200u16 {
        let base = 20_000 + (std::process::id() as u16 % 100) * 100 + attempt * 37 % 9000;
        let ports = [1, 2, 3, 101, 102, 103, 2001, 2002, 2003].map(|o| base + o);
        if ports
            .iter()
            .all(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
        {
            return base;
        }
    }
    panic!("no free port range found");
}

#[test]
fn cluster_sh_up_put_get_down() {
    let bin_dir = keel_testkit::keel_binary()
        .expect("keel binary")
        .parent()
        .unwrap()
        .to_path_buf();
    let data = tempfile::tempdir().expect("tempdir");
    let base = free_base();
    let script = repo().join("scripts/cluster.sh");
    let env = |cmd: &mut Command| {
        cmd.env("KEEL_BIN_DIR", &bin_dir)
            .env("KEEL_CLUSTER_DIR", data.path())
            .env("KEEL_BASE_PORT", base.to_string());
    };
    let mut up = Command::new(&script);
    up.arg("up");
    env(&mut up);
    let out = run(&mut up);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    // Stop the nodes whatever happens below.
    struct Down<'a>(&'a dyn Fn());
    impl Drop for Down<'_> {
        fn drop(&mut self) {
            (self.0)()
        }
    }
    let down = || {
        let mut c = Command::new(&script);
        c.arg("down");
        env(&mut c);
        let out = run(&mut c);
        assert!(out.status.success(), "cluster.sh down failed");
    };
    let _down = Down(&down);
    assert!(out.status.success(), "cluster.sh up failed");
    let endpoints = format!("127.0.0.1:{},127.0.0.1:{},127.0.0.1:{}", base + 1, base + 2, base + 3);
    assert!(stdout.contains(&endpoints), "up does not print the endpoints: {stdout}");

    let keelctl = |args: &[&str]| {
        run(Command::new(bin_dir.join("keelctl"))
            .env("KEEL_ENDPOINTS", &endpoints)
            .args(args))
    };
    let put = keelctl(&["put", "hello", "world"]);
    assert!(put.status.success());
    assert_eq!(String::from_utf8_lossy(&put.stdout).trim(), "OK");
    let get = keelctl(&["get", "hello", "--print-value-only"]);
    assert!(get.status.success());
    assert_eq!(String::from_utf8_lossy(&get.stdout).trim(), "world");
    let json = keelctl(&["get", "hello", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).expect("json output");
    assert_eq!(v["kvs"][0]["value"], "world");
    assert_eq!(v["count"], 1);
    let status = keelctl(&["status", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&status.stdout).expect("status json");
    let members = v["members"].as_array().expect("members");
    assert_eq!(members.len(), 3);
    assert!(members.iter().all(|m| m["reachable"] == true), "{v}");
    assert_eq!(members.iter().filter(|m| m["role"] == "leader").count(), 1, "{v}");
}
