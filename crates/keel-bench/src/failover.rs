//! `keel-bench failover`: SIGKILL the leader's process and time how long until a write succeeds
//! again, N rounds, restarting the killed member between rounds with a command the caller gives
//! (the bench only kills processes the caller started and named by their endpoints).
//!
//! keel's leader says its PID in its status. etcd's is found from the endpoint's listening
//! socket (`/proc/net/tcp` inode → the process holding it).

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::target::{keel_leader, keel_statuses, Target};

pub struct Failover {
    pub system: String,
    pub endpoints: Vec<String>,
    pub rounds: usize,
    /// Run after each round to bring the killed member back: `{id}` is its 1-based position in
    /// the endpoint list, `{endpoint}` its endpoint.
    pub restart_cmd: String,
}

/// Kill the leader, time the first successful write. Returns the time.
async fn round(f: &Failover) -> anyhow::Result<(usize, Duration)> {
    let (index, pid) = leader(f).await?;
    // Keep one connection per survivor ready, so the measurement is not a connect.
    let survivors: Vec<String> = f
        .endpoints
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != index)
        .map(|(_, e)| e.clone())
        .collect();
    let mut targets = Vec::new();
    for e in &survivors {
        targets.push(Target::connect_to(&f.system, e, 1).await?);
    }
    let killed = Instant::now();
    // SAFETY: kill(2) on the process that serves the endpoint the caller gave us.
    if unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) } != 0 {
        bail!("kill {pid}: {}", std::io::Error::last_os_error());
    }
    let mut n = 0usize;
    loop {
        let t = &targets[n % targets.len()];
        n += 1;
        let put = t.put(0, b"failover-probe".to_vec(), n.to_string().into_bytes());
        if let Ok(Ok(())) = tokio::time::timeout(Duration::from_millis(200), put).await {
            return Ok((index, killed.elapsed()));
        }
        if killed.elapsed() > Duration::from_secs(30) {
            bail!("no write succeeded within 30 s of killing the leader");
        }
    }
}

/// The leader's position in the endpoint list and its PID.
async fn leader(f: &Failover) -> anyhow::Result<(usize, u32)> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let found = match f.system.as_str() {
            "keel" | "keel-etcd" => keel_leader(&f.endpoints).await.and_then(|(e, s)| {
                let i = f.endpoints.iter().position(|x| *x == e)?;
                Some((i, s.pid as u32))
            }),
            #[cfg(feature = "etcd")]
            _ => etcd_leader(&f.endpoints).await,
            #[cfg(not(feature = "etcd"))]
            _ => None,
        };
        if let Some(found) = found.filter(|(_, pid)| *pid != 0) {
            return Ok(found);
        }
        if Instant::now() > deadline {
            bail!("no leader found within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(feature = "etcd")]
async fn etcd_leader(endpoints: &[String]) -> Option<(usize, u32)> {
    for (i, e) in endpoints.iter().enumerate() {
        let Ok(mut c) = etcd_client::Client::connect([e.as_str()], None).await else {
            continue;
        };
        let Ok(status) = c.status().await else { continue };
        if status.header().map(|h| h.member_id()) == Some(status.leader()) {
            let port: u16 = e.rsplit(':').next()?.parse().ok()?;
            return Some((i, pid_listening_on(port)?));
        }
    }
    None
}

/// The process listening on TCP `port` (IPv4), from /proc.
#[cfg(feature = "etcd")]
fn pid_listening_on(port: u16) -> Option<u32> {
    let tcp = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let inode = tcp.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let local_port = u16::from_str_radix(f.get(1)?.rsplit(':').next()?, 16).ok()?;
        // State 0A is LISTEN.
        (local_port == port && *f.get(3)? == "0A").then(|| f.get(9).map(|s| s.to_string()))?
    })?;
    let needle = format!("socket:[{inode}]");
    for proc_entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = proc_entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(proc_entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if std::fs::read_link(fd.path()).is_ok_and(|l| l.to_string_lossy() == needle) {
                return Some(pid);
            }
        }
    }
    None
}

/// Wait until every endpoint answers again (the restarted member is back).
async fn wait_all_up(f: &Failover) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let up = match f.system.as_str() {
            "keel" | "keel-etcd" => keel_statuses(&f.endpoints).await.len(),
            #[cfg(not(feature = "etcd"))]
            _ => 0,
            #[cfg(feature = "etcd")]
            _ => {
                let mut n = 0;
                for e in &f.endpoints {
                    if let Ok(mut c) = etcd_client::Client::connect([e.as_str()], None).await {
                        n += usize::from(c.status().await.is_ok());
                    }
                }
                n
            }
        };
        if up == f.endpoints.len() && leader(f).await.is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{up} of {} members up 60 s after the restart", f.endpoints.len());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Run the rounds; returns each round's time to the first successful write.
pub async fn run(f: &Failover) -> anyhow::Result<Vec<Duration>> {
    let mut times = Vec::new();
    for r in 0..f.rounds {
        wait_all_up(f).await?;
        // Let the new term settle (leases, heartbeats) before the next kill.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (index, took) = round(f).await?;
        eprintln!("failover round {}: {} ms", r + 1, took.as_millis());
        times.push(took);
        let cmd = f
            .restart_cmd
            .replace("{id}", &(index + 1).to_string())
            .replace("{endpoint}", &f.endpoints[index]);
        let status = Command::new("sh")
            .args(["-c", &cmd])
            .status()
            .with_context(|| format!("restart command {cmd:?}"))?;
        if !status.success() {
            bail!("restart command {cmd:?} failed: {status}");
        }
    }
    wait_all_up(f).await?;
    Ok(times)
}
