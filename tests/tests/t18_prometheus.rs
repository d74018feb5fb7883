//! The shipped monitoring configuration with a real Prometheus (Debian's `prometheus`, installed
//! by scripts/install-test-deps.sh): `promtool` accepts deploy/prometheus's config and rules and
//! passes the rules' unit tests, and Prometheus, run with the shipped config (its targets pointed
//! at a test cluster's metrics ports), scrapes all three members and loads every rule. Without
//! prometheus/promtool the tests say SKIPPED and pass.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use keel_testkit::{Backend, Cluster, Options};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus")
}

fn tool(name: &str) -> bool {
    Command::new(name)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn promtool_accepts_the_shipped_config_and_rules() {
    if !tool("promtool") {
        eprintln!("SKIPPED promtool_accepts_the_shipped_config_and_rules: promtool not installed");
        return;
    }
    for args in [
        vec!["check", "config", "prometheus.yml"],
        vec!["check", "rules", "keel-rules.yml"],
        vec!["test", "rules", "keel-rules.test.yml"],
    ] {
        let out = Command::new("promtool")
            .args(&args)
            .current_dir(deploy())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool {args:?}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

async fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await??;
    let text = String::from_utf8(buf)?;
    Ok(text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default())
}

/// Kills Prometheus when the test ends, however it ends.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn prometheus_scrapes_every_member_with_the_shipped_config() -> anyhow::Result<()> {
    if !tool("prometheus") {
        eprintln!("SKIPPED prometheus_scrapes_every_member_with_the_shipped_config: prometheus not installed");
        return Ok(());
    }
    let cluster = Cluster::start(Backend::Process, Options::default()).await?;
    let work = tempfile::tempdir()?;
    // The shipped config, with the targets of the test cluster instead of 127.0.0.1:9001-9003.
    let shipped = std::fs::read_to_string(deploy().join("prometheus.yml"))?;
    let targets: Vec<String> = cluster
        .nodes
        .values()
        .map(|n| format!("\"{}\"", n.metrics_addr))
        .collect();
    let default_targets = r#"["127.0.0.1:9001", "127.0.0.1:9002", "127.0.0.1:9003"]"#;
    assert!(shipped.contains(default_targets), "the shipped targets changed");
    let config = shipped.replace(default_targets, &format!("[{}]", targets.join(", ")));
    std::fs::write(work.path().join("prometheus.yml"), config)?;
    std::fs::copy(deploy().join("keel-rules.yml"), work.path().join("keel-rules.yml"))?;
    let web: SocketAddr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let _prometheus = Child(
        Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                work.path().join("prometheus.yml").display()
            ))
            .arg(format!("--storage.tsdb.path={}", work.path().join("data").display()))
            .arg(format!("--web.listen-address={web}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(work.path().join("prometheus.log"))?)
            .spawn()?,
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let result = async {
            let targets: serde_json::Value =
                serde_json::from_str(&http_get(web, "/api/v1/targets?state=active").await?)?;
            let up = targets["data"]["activeTargets"]
                .as_array()
                .map_or(0, |t| t.iter().filter(|t| t["health"] == "up").count());
            let terms: serde_json::Value =
                serde_json::from_str(&http_get(web, "/api/v1/query?query=keel_raft_term").await?)?;
            let series = terms["data"]["result"].as_array().map_or(0, Vec::len);
            let rules: serde_json::Value = serde_json::from_str(&http_get(web, "/api/v1/rules").await?)?;
            let loaded = rules["data"]["groups"][0]["rules"].as_array().map_or(0, Vec::len);
            anyhow::Ok((up, series, loaded))
        }
        .await;
        if let Ok((3, 3, loaded)) = result {
            assert!(loaded >= 10, "{loaded} rules loaded");
            break;
        }
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(work.path().join("prometheus.log")).unwrap_or_default();
            anyhow::bail!("Prometheus did not scrape all three members within 60 s: {result:?}\n{log}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    cluster.shutdown().await
}
