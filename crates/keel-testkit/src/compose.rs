//! The shipped compose deployment (`deploy/compose.yaml`) as a test cluster.
//!
//! [`Compose::up`] builds the `FROM scratch` image from a directory of binaries with
//! `scripts/build-image.sh`, starts the three containers under a project name of its own, with
//! free host ports, and waits until they are healthy. Faults go through the Docker engine:
//! `docker kill` / `start`, `docker pause` / `unpause`, `docker network disconnect` / `connect`.
//! Dropping it removes the containers, volumes, network and image.
//!
//! Node n is the compose service `node{n}` with member id n.
//!
//! A [`Variant`] adds override files and settings, e.g. [`Variant::tls`] for
//! `deploy/compose.tls.yaml`. The [`Target`] implementation (chaos runs) speaks plain text.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use keel_client::{Client, ClientConfig};
use keel_storage::NodeId;

use crate::chaos::{Fault, Target};
use crate::net::LinkFault;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn run(cmd: &mut Command) -> anyhow::Result<Output> {
    cmd.output().with_context(|| format!("{cmd:?}"))
}

/// Run and require success; returns stdout.
fn ok(cmd: &mut Command) -> anyhow::Result<String> {
    let out = run(cmd)?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `docker compose` if the plugin exists, else `docker-compose`; None if there is no reachable
/// engine or no compose tool (callers skip, saying so).
pub fn compose_tool() -> Option<Vec<&'static str>> {
    let works = |args: &[&str]| {
        Command::new(args[0])
            .args(&args[1..])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !works(&["docker", "info"]) {
        return None;
    }
    if works(&["docker", "compose", "version"]) {
        Some(vec!["docker", "compose"])
    } else if works(&["docker-compose", "version"]) {
        Some(vec!["docker-compose"])
    } else {
        None
    }
}

/// What a deployment adds to `deploy/compose.yaml`.
#[derive(Debug, Clone, Default)]
pub struct Variant {
    /// Override files, given after `deploy/compose.yaml`.
    pub files: Vec<PathBuf>,
    /// Variables the compose files interpolate.
    pub env: Vec<(String, String)>,
    /// Arguments [`Compose::keelctl`] puts first (e.g. `--cacert`).
    pub keelctl_args: Vec<String>,
}

impl Variant {
    /// `deploy/compose.tls.yaml` with certificates made by `scripts/compose-certs.sh` into
    /// `cert_dir` with the keelctl in `bin_dir`. With `client_cert_auth` the nodes require client
    /// certificates and keelctl presents `cert_dir/client`'s.
    pub fn tls(bin_dir: &Path, cert_dir: &Path, client_cert_auth: bool) -> anyhow::Result<Variant> {
        let printed = ok(Command::new(repo().join("scripts/compose-certs.sh"))
            .arg(cert_dir)
            .env("KEEL_BIN_DIR", bin_dir))?;
        let mut env = vec![
            ("KEEL_COMPOSE_CERT_DIR".to_string(), cert_dir.display().to_string()),
            ("KEEL_CLIENT_CERT_AUTH".to_string(), client_cert_auth.to_string()),
        ];
        // Run by a user other than root, the script hands over the group to add to keel.
        for line in printed.lines() {
            if let Some((k, v)) = line.strip_prefix("export ").and_then(|l| l.split_once('=')) {
                env.push((k.to_string(), v.to_string()));
            }
        }
        let file = |f: &str| cert_dir.join(f).display().to_string();
        let mut keelctl_args = vec!["--cacert".to_string(), file("ca/ca.pem")];
        if client_cert_auth {
            keelctl_args.extend(["--cert".to_string(), file("client/cert.pem")]);
            keelctl_args.extend(["--key".to_string(), file("client/key.pem")]);
        }
        Ok(Variant {
            files: vec![repo().join("deploy/compose.tls.yaml")],
            env,
            keelctl_args,
        })
    }
}

/// A running compose deployment of three nodes.
pub struct Compose {
    tool: Vec<&'static str>,
    variant: Variant,
    pub project: String,
    image: String,
    /// Host ports of nodes 1..=3's client listeners.
    pub ports: [u16; 3],
    /// Host ports of nodes 1..=3's metrics listeners.
    pub metrics_ports: [u16; 3],
    /// Nodes whose container is disconnected from the project network.
    cut: Vec<NodeId>,
    paused: Vec<NodeId>,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(crate::free_port(std::net::Ipv4Addr::LOCALHOST.into())?.port())
}

impl Compose {
    /// Build the image from the binaries in `bin_dir`, start the deployment as project `name`,
    /// and wait until every container is healthy.
    pub async fn up(tool: Vec<&'static str>, name: &str, bin_dir: &Path) -> anyhow::Result<Compose> {
        Compose::up_variant(tool, name, bin_dir, Variant::default()).await
    }

    /// [`Compose::up`] with `variant`'s override files and settings.
    pub async fn up_variant(
        tool: Vec<&'static str>,
        name: &str,
        bin_dir: &Path,
        variant: Variant,
    ) -> anyhow::Result<Compose> {
        let d = Compose {
            tool,
            variant,
            project: name.to_string(),
            image: format!("keel:{name}"),
            ports: [free_port()?, free_port()?, free_port()?],
            metrics_ports: [free_port()?, free_port()?, free_port()?],
            cut: Vec::new(),
            paused: Vec::new(),
        };
        ok(Command::new(repo().join("scripts/build-image.sh"))
            .env("KEEL_BIN_DIR", bin_dir)
            .env("KEEL_IMAGE", &d.image))?;
        ok(&mut d.compose(&["up", "-d"]))?;
        d.wait_healthy(Duration::from_secs(90)).await?;
        Ok(d)
    }

    /// A compose command for this project.
    pub fn compose(&self, args: &[&str]) -> Command {
        let mut c = Command::new(self.tool[0]);
        c.args(&self.tool[1..])
            .args(["-p", &self.project, "-f"])
            .arg(repo().join("deploy/compose.yaml"));
        for f in &self.variant.files {
            c.arg("-f").arg(f);
        }
        // The deployment is what the variant says, whatever the caller's shell exports.
        for k in [
            "KEEL_CONTAINER_USER",
            "KEEL_COMPOSE_CERT_DIR",
            "KEEL_COMPOSE_CERT_GID",
            "KEEL_CLIENT_CERT_AUTH",
        ] {
            c.env_remove(k);
        }
        c.args(args)
            .envs(self.variant.env.iter().map(|(k, v)| (k, v)))
            .env("KEEL_IMAGE", &self.image)
            .env("KEEL_CLUSTER_TOKEN", &self.project);
        for (i, p) in self.ports.iter().enumerate() {
            c.env(format!("KEEL_PORT_{}", i + 1), p.to_string());
        }
        for (i, p) in self.metrics_ports.iter().enumerate() {
            c.env(format!("KEEL_METRICS_PORT_{}", i + 1), p.to_string());
        }
        c
    }

    /// The container id of node `n`.
    pub fn container(&self, n: NodeId) -> anyhow::Result<String> {
        Ok(ok(&mut self.compose(&["ps", "-q", &format!("node{n}")]))?
            .trim()
            .to_string())
    }

    pub fn endpoint(&self, n: NodeId) -> String {
        format!("127.0.0.1:{}", self.ports[n as usize - 1])
    }

    fn network(&self) -> String {
        // Compose names networks <project>_<network>.
        format!("{}_keel", self.project)
    }

    fn docker(&self, args: &[&str]) -> anyhow::Result<String> {
        ok(Command::new("docker").args(args))
    }

    /// Run keelctl against nodes `nodes`.
    pub fn keelctl(&self, nodes: &[NodeId], args: &[&str]) -> anyhow::Result<Output> {
        let eps: Vec<String> = nodes.iter().map(|n| self.endpoint(*n)).collect();
        run(Command::new(crate::keelctl_binary()?)
            .args(&self.variant.keelctl_args)
            .args(["--endpoints", &eps.join(","), "--timeout", "3s"])
            .args(args))
    }

    /// Wait until every container reports healthy.
    pub async fn wait_healthy(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut healthy = 0;
            for n in 1..=3 {
                let id = self.container(n)?;
                if !id.is_empty() {
                    let status = run(Command::new("docker").args(["inspect", "-f", "{{.State.Health.Status}}", &id]))?;
                    healthy += usize::from(status.stdout.starts_with(b"healthy"));
                }
            }
            if healthy == 3 {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{healthy} of 3 containers healthy after {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    async fn status(&self, n: NodeId) -> Option<keel_client::proto::StatusResponse> {
        let client = Client::connect(
            vec![self.endpoint(n)],
            ClientConfig::with_timeout(Duration::from_secs(1)),
        )
        .await
        .ok()?;
        client.status_of(&self.endpoint(n)).await.ok()
    }
}

impl Drop for Compose {
    fn drop(&mut self) {
        let _ = run(&mut self.compose(&["down", "-v", "--remove-orphans", "-t", "5"]));
        let _ = run(Command::new("docker").args(["image", "rm", "-f", &self.image]));
    }
}

impl Target for Compose {
    fn supports(&self, fault: Fault) -> bool {
        // No proxy sits between containers (no slow links, no one-way cuts), and the compose
        // file has exactly three services (no replacement).
        matches!(fault, Fault::Kill | Fault::Pause | Fault::Partition | Fault::Transfer)
    }

    fn one_way(&self) -> bool {
        false
    }

    fn members(&self) -> Vec<NodeId> {
        vec![1, 2, 3]
    }

    fn endpoints(&self) -> Vec<String> {
        (1..=3).map(|n| self.endpoint(n)).collect()
    }

    async fn kill(&mut self, id: NodeId) -> anyhow::Result<()> {
        self.docker(&["kill", &self.container(id)?]).map(drop)
    }

    async fn restart(&mut self, id: NodeId) -> anyhow::Result<()> {
        ok(&mut self.compose(&["start", &format!("node{id}")])).map(drop)
    }

    async fn pause(&mut self, id: NodeId, paused: bool) -> anyhow::Result<()> {
        let container = self.container(id)?;
        if paused {
            self.docker(&["pause", &container])?;
            self.paused.push(id);
        } else {
            self.docker(&["unpause", &container])?;
            self.paused.retain(|p| *p != id);
        }
        Ok(())
    }

    /// Disconnects every node outside the largest group from the network. With three nodes the
    /// nemesis only isolates one node, which this models exactly (the container also loses its
    /// published client port, as a host that lost its network would).
    async fn partition(&mut self, groups: &[Vec<NodeId>]) -> anyhow::Result<()> {
        let largest = groups.iter().max_by_key(|g| g.len()).cloned().unwrap_or_default();
        for g in groups {
            for &n in g {
                if !largest.contains(&n) && !self.cut.contains(&n) {
                    self.docker(&["network", "disconnect", &self.network(), &self.container(n)?])?;
                    self.cut.push(n);
                }
            }
        }
        Ok(())
    }

    async fn block_one_way(&mut self, _from: NodeId, _to: NodeId) -> anyhow::Result<()> {
        bail!("the docker backend cannot cut one direction of a link")
    }

    async fn degrade(&mut self, _fault: LinkFault) -> anyhow::Result<()> {
        bail!("the docker backend cannot slow links")
    }

    async fn heal_network(&mut self) -> anyhow::Result<()> {
        for n in std::mem::take(&mut self.cut) {
            self.docker(&["network", "connect", &self.network(), &self.container(n)?])?;
        }
        Ok(())
    }

    async fn replace(&mut self, _id: NodeId) -> anyhow::Result<NodeId> {
        bail!("the docker backend cannot replace members")
    }

    async fn heal_all(&mut self) -> anyhow::Result<()> {
        self.heal_network().await?;
        for n in std::mem::take(&mut self.paused) {
            self.docker(&["unpause", &self.container(n)?])?;
        }
        // Starting a running service is a no-op; a killed one comes back.
        ok(&mut self.compose(&["start"]))?;
        Ok(())
    }

    async fn leader(&self) -> Option<NodeId> {
        for n in 1..=3 {
            if let Some(s) = self.status(n).await {
                if s.leader_id != 0 {
                    return Some(s.leader_id);
                }
            }
        }
        None
    }

    async fn wait_recovered(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        let leader = loop {
            if let Some(l) = self.leader().await {
                if let Some(s) = self.status(l).await.filter(|s| s.role == "leader") {
                    break s;
                }
            }
            if Instant::now() > deadline {
                bail!("no leader within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        for n in 1..=3 {
            loop {
                if self
                    .status(n)
                    .await
                    .is_some_and(|s| s.applied_index >= leader.applied_index)
                {
                    break;
                }
                if Instant::now() > deadline {
                    bail!("node {n} did not catch up with the leader within {timeout:?}");
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        Ok(())
    }
}
