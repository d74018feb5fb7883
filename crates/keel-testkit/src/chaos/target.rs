//! What the nemesis can do to a cluster, whatever runs it.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use keel_client::{Client, ClientConfig};
use keel_proto::v1::MemberAddRequest;
use keel_storage::NodeId;

use crate::net::LinkFault;
use crate::{Backend, Cluster};

/// The kinds of fault a chaos run can mix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Fault {
    /// SIGKILL (or `docker kill`) a node, restart it later.
    Kill,
    /// SIGSTOP (or `docker pause`) a node, resume it later.
    Pause,
    /// Cut the network: isolate a node, or one direction of its links.
    Partition,
    /// Slow and lossy links: delay with jitter, connections broken at random.
    Delay,
    /// Remove a voter and add a fresh node in its place.
    Membership,
    /// Hand leadership to a member that cannot take it: paused just as the transfer starts, or
    /// cut off beforehand.
    Transfer,
    /// Cut a node's power: SIGKILL, and its disk forgets what was not synced (half the time
    /// leaving a torn write); restart it later. Needs lazy disks (FUSE).
    Power,
}

impl Fault {
    pub const ALL: [Fault; 7] = [
        Fault::Kill,
        Fault::Pause,
        Fault::Partition,
        Fault::Delay,
        Fault::Membership,
        Fault::Transfer,
        Fault::Power,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Fault::Kill => "kill",
            Fault::Pause => "pause",
            Fault::Partition => "partition",
            Fault::Delay => "delay",
            Fault::Membership => "membership",
            Fault::Transfer => "transfer",
            Fault::Power => "power",
        }
    }

    pub fn parse(s: &str) -> Option<Fault> {
        Fault::ALL.into_iter().find(|f| f.name() == s)
    }
}

/// A cluster under test, as the nemesis and the workload see it. Implemented by [`Cluster`]
/// (in-process or process nodes, faults through the proxy network) and by the compose
/// deployment (containers, faults through the Docker engine).
#[allow(async_fn_in_trait)] // used generically, never as a trait object
pub trait Target {
    /// Which faults this backend can inject.
    fn supports(&self, fault: Fault) -> bool;
    /// Whether [`Target::block_one_way`] works (otherwise partitions only isolate).
    fn one_way(&self) -> bool {
        true
    }
    /// Every member's id, running or not.
    fn members(&self) -> Vec<NodeId>;
    /// Client endpoints (`host:port`) of every member.
    fn endpoints(&self) -> Vec<String>;
    /// The operating-system process of member `id`, where the backend has one here.
    fn pid(&self, id: NodeId) -> Option<u32> {
        let _ = id;
        None
    }
    async fn kill(&mut self, id: NodeId) -> anyhow::Result<()>;
    /// Cut `id`'s power (see [`Fault::Power`]); `torn` leaves a random prefix of each file's
    /// last unsynced write.
    async fn power_cut(&mut self, id: NodeId, torn: Option<&mut rand::rngs::StdRng>) -> anyhow::Result<()> {
        let _ = (id, torn);
        bail!("power cuts are not supported by this backend")
    }
    async fn restart(&mut self, id: NodeId) -> anyhow::Result<()>;
    async fn pause(&mut self, id: NodeId, paused: bool) -> anyhow::Result<()>;
    /// Black-hole every link between the groups.
    async fn partition(&mut self, groups: &[Vec<NodeId>]) -> anyhow::Result<()>;
    /// Black-hole the bytes `from` sends `to`, only that way.
    async fn block_one_way(&mut self, from: NodeId, to: NodeId) -> anyhow::Result<()>;
    /// Put `fault` on every link.
    async fn degrade(&mut self, fault: LinkFault) -> anyhow::Result<()>;
    /// Undo every network fault.
    async fn heal_network(&mut self) -> anyhow::Result<()>;
    /// Remove member `id` and add a fresh, empty node as a voter in its place; returns the new
    /// member's id.
    async fn replace(&mut self, id: NodeId) -> anyhow::Result<NodeId>;
    /// Undo every fault: heal the network, resume paused members, restart stopped ones.
    async fn heal_all(&mut self) -> anyhow::Result<()>;
    /// The member a majority follows, if any answers.
    async fn leader(&self) -> Option<NodeId>;
    /// Wait until every member is running, a leader is agreed and every member has applied what
    /// the leader had when this was called.
    async fn wait_recovered(&mut self, timeout: Duration) -> anyhow::Result<()>;
}

/// An administrative client for membership changes.
async fn admin(endpoints: Vec<String>) -> anyhow::Result<Client> {
    admin_with_timeout(endpoints, Duration::from_secs(10)).await
}

/// A client for administrative calls, retrying each for at most `timeout`.
pub(crate) async fn admin_with_timeout(endpoints: Vec<String>, timeout: Duration) -> anyhow::Result<Client> {
    Ok(Client::connect(endpoints, ClientConfig::with_timeout(timeout)).await?)
}

impl Target for Cluster {
    fn supports(&self, fault: Fault) -> bool {
        match fault {
            Fault::Pause => self.backend == Backend::Process,
            Fault::Transfer => self.backend == Backend::Process || self.net.is_some(),
            Fault::Partition | Fault::Delay => self.net.is_some(),
            Fault::Kill | Fault::Membership => true,
            Fault::Power => self.backend == Backend::Process && self.lazy_disks,
        }
    }

    fn members(&self) -> Vec<NodeId> {
        self.nodes.keys().copied().collect()
    }

    fn endpoints(&self) -> Vec<String> {
        Cluster::endpoints(self)
    }

    fn pid(&self, id: NodeId) -> Option<u32> {
        Cluster::pid(self, id)
    }

    async fn kill(&mut self, id: NodeId) -> anyhow::Result<()> {
        Cluster::kill(self, id).await
    }

    async fn power_cut(&mut self, id: NodeId, torn: Option<&mut rand::rngs::StdRng>) -> anyhow::Result<()> {
        Cluster::power_cut(self, id, torn).await
    }

    async fn restart(&mut self, id: NodeId) -> anyhow::Result<()> {
        Cluster::restart(self, id).await
    }

    async fn pause(&mut self, id: NodeId, paused: bool) -> anyhow::Result<()> {
        Cluster::pause(self, id, paused)
    }

    async fn partition(&mut self, groups: &[Vec<NodeId>]) -> anyhow::Result<()> {
        self.net.as_ref().context("no proxy network")?.partition(groups);
        Ok(())
    }

    async fn block_one_way(&mut self, from: NodeId, to: NodeId) -> anyhow::Result<()> {
        let net = self.net.as_ref().context("no proxy network")?;
        net.update(from, to, |f| f.blocked = true);
        Ok(())
    }

    async fn degrade(&mut self, fault: LinkFault) -> anyhow::Result<()> {
        let net = self.net.as_ref().context("no proxy network")?;
        for &a in self.nodes.keys() {
            for &b in self.nodes.keys() {
                if a != b {
                    net.set(a, b, fault.clone());
                }
            }
        }
        Ok(())
    }

    async fn heal_network(&mut self) -> anyhow::Result<()> {
        if let Some(net) = &self.net {
            net.heal();
        }
        Ok(())
    }

    async fn replace(&mut self, id: NodeId) -> anyhow::Result<NodeId> {
        let admin = admin(Cluster::endpoints(self)).await?;
        admin.member_remove(id, false).await.context("member remove")?;
        // A removed node stops serving on its own; stopping it here keeps its port from being
        // reused while it still runs.
        Cluster::kill(self, id).await?;
        self.forget(id);
        let new = self.start_joiner().await?;
        let node = &self.nodes[&new];
        let add = MemberAddRequest {
            id: new,
            peer_addr: node.peer_addr.to_string(),
            client_addr: node.client_addr.to_string(),
        };
        let admin = self::admin(Cluster::endpoints(self)).await?;
        admin.member_add(add).await.context("member add")?;
        // Promotion is refused until the learner has caught up; keep asking.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match admin.member_promote(new).await {
                Ok(_) => return Ok(new),
                Err(e) if Instant::now() < deadline => {
                    tracing::debug!(%e, "promote {new}: retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => bail!("promote {new}: {e}"),
            }
        }
    }

    async fn heal_all(&mut self) -> anyhow::Result<()> {
        self.heal_network().await?;
        for id in self.members() {
            if self.is_running(id) {
                if self.backend == Backend::Process {
                    Cluster::pause(self, id, false)?;
                }
            } else {
                Cluster::restart(self, id).await?;
            }
        }
        Ok(())
    }

    async fn leader(&self) -> Option<NodeId> {
        self.wait_for_leader(Duration::from_millis(500)).await.ok()
    }

    async fn wait_recovered(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        let left = || deadline.saturating_duration_since(Instant::now());
        let leader = self.wait_for_leader(left()).await?;
        let applied = self.status(leader).await.context("leader status")?.applied_index;
        for id in self.members() {
            self.wait_applied(id, applied, left()).await?;
        }
        Ok(())
    }
}
