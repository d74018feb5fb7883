//! The nemesis: faults drawn from a seed, each held for a while and then undone. One at a time,
//! or with [`Schedule::overlap`] up to [`MAX_OVERLAP`] at once: a kill during a partition, a
//! pause on a slow network, a power cut while another member is cut off. Faults that cannot
//! stack are not drawn together: one network fault at a time (healing the network undoes them
//! all), a node is hit by one fault at a time, and a membership change only when nothing else is
//! in force (it needs the whole cluster).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_storage::NodeId;
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use tokio::sync::watch;

use super::target::{Fault, Target};
use crate::net::LinkFault;

/// One line of the fault timeline.
#[derive(Debug, Clone)]
pub struct Event {
    pub at: Duration,
    pub what: String,
}

/// Which faults to draw, and how long to keep each.
#[derive(Debug, Clone)]
pub struct Schedule {
    pub faults: Vec<Fault>,
    /// Quiet time between two faults.
    pub gap: (Duration, Duration),
    /// How long a fault is held.
    pub hold: (Duration, Duration),
    /// Start new faults while others are held (up to [`MAX_OVERLAP`] at once).
    pub overlap: bool,
}

/// Faults in force at once with [`Schedule::overlap`]. Two of three members down (or cut off)
/// already stops the cluster; a third would only lengthen the outage.
pub const MAX_OVERLAP: usize = 2;

impl Default for Schedule {
    fn default() -> Self {
        Schedule {
            faults: Fault::ALL.to_vec(),
            gap: (Duration::from_millis(500), Duration::from_secs(2)),
            hold: (Duration::from_secs(1), Duration::from_secs(5)),
            overlap: false,
        }
    }
}

/// A fault in force, to be undone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Active {
    Killed(NodeId),
    Paused(NodeId),
    Network,
}

/// A fault in force: what to undo, when, and what the workload had acknowledged when it began.
struct Held {
    active: Active,
    until: Instant,
    acked_before: u64,
}

pub struct Nemesis {
    rng: StdRng,
    /// Torn writes of power cuts draw from their own generator: how many files a cut tears
    /// depends on timing, and must not shift the faults drawn after it.
    tear: StdRng,
    start: Instant,
    /// Writes acknowledged so far (kept by the workload), to report progress under each fault.
    acked: Arc<AtomicU64>,
    pub timeline: Vec<Event>,
    /// Each member's memory and open files, read every [`SAMPLE_EVERY`].
    pub resources: super::Resources,
}

/// How often the members' memory and open files are read.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(10);

fn between(rng: &mut StdRng, (lo, hi): (Duration, Duration)) -> Duration {
    if hi <= lo {
        return lo;
    }
    lo + (hi - lo).mul_f64(rng.random())
}

impl Nemesis {
    pub fn new(seed: u64, start: Instant, acked: Arc<AtomicU64>) -> Nemesis {
        Nemesis {
            rng: StdRng::seed_from_u64(seed),
            tear: StdRng::seed_from_u64(seed.rotate_left(32)),
            start,
            acked,
            timeline: Vec::new(),
            resources: super::Resources::default(),
        }
    }

    pub fn log(&mut self, what: impl Into<String>) {
        let event = Event {
            at: self.start.elapsed(),
            what: what.into(),
        };
        tracing::info!(at = ?event.at, "{}", event.what);
        self.timeline.push(event);
    }

    /// Inject faults until `until`, then undo the last one. Membership changes publish the new
    /// client endpoints on `endpoints`.
    pub async fn run<T: Target>(
        &mut self,
        target: &mut T,
        schedule: &Schedule,
        until: Instant,
        endpoints: &watch::Sender<Vec<String>>,
    ) {
        let faults: Vec<Fault> = schedule
            .faults
            .iter()
            .copied()
            .filter(|f| target.supports(*f))
            .collect();
        for f in &schedule.faults {
            if !target.supports(*f) {
                self.log(format!("{} is not supported by this backend; skipped", f.name()));
            }
        }
        let most = if schedule.overlap { MAX_OVERLAP } else { 1 };
        let mut held: Vec<Held> = Vec::new();
        let mut sampled = Instant::now();
        self.resources.sample(target, self.start.elapsed());
        loop {
            if sampled.elapsed() >= SAMPLE_EVERY {
                sampled = Instant::now();
                self.resources.sample(target, self.start.elapsed());
            }
            if !schedule.overlap {
                // One at a time: the gap begins when the fault in force ends.
                self.undo_due(target, &mut held, until).await;
            }
            let gap = between(&mut self.rng, schedule.gap);
            let next = Instant::now() + gap;
            if next >= until {
                break;
            }
            self.undo_due(target, &mut held, next).await;
            tokio::time::sleep_until(next.into()).await;
            if held.len() >= most {
                continue;
            }
            let in_force: Vec<Active> = held.iter().map(|h| h.active).collect();
            let choices: Vec<Fault> = faults.iter().copied().filter(|f| stacks(*f, &in_force)).collect();
            let Some(&fault) = choices.choose(&mut self.rng) else {
                continue;
            };
            let hold = between(&mut self.rng, schedule.hold).min(until.saturating_duration_since(Instant::now()));
            let acked_before = self.acked.load(Ordering::Relaxed);
            match self.inject(target, fault, &in_force, endpoints).await {
                Ok(Some(active)) => held.push(Held {
                    active,
                    until: (Instant::now() + hold).min(until),
                    acked_before,
                }),
                Ok(None) => {}
                Err(e) => self.log(format!("{} failed: {e:#}", fault.name())),
            }
        }
        self.undo_due(target, &mut held, until).await;
    }

    /// Undo each held fault as its time comes, up to `deadline`; those held beyond it stay.
    async fn undo_due<T: Target>(&mut self, target: &mut T, held: &mut Vec<Held>, deadline: Instant) {
        loop {
            let next = held
                .iter()
                .enumerate()
                .filter(|(_, h)| h.until <= deadline)
                .min_by_key(|(_, h)| h.until)
                .map(|(i, _)| i);
            let Some(i) = next else { break };
            tokio::time::sleep_until(held[i].until.into()).await;
            let h = held.remove(i);
            let during = self.acked.load(Ordering::Relaxed) - h.acked_before;
            self.log(format!("  ({during} writes acknowledged during the fault)"));
            self.undo(target, h.active).await;
        }
    }

    /// A member to hit, other than those a fault in force already hits: the leader half the
    /// time (the interesting case), else anyone. None if every member is hit already.
    async fn victim<T: Target>(&mut self, target: &T, in_force: &[Active]) -> Option<(NodeId, &'static str)> {
        let leader = target.leader().await;
        let members: Vec<NodeId> = target.members().into_iter().filter(|m| !hits(in_force, *m)).collect();
        match leader {
            Some(l) if members.contains(&l) && self.rng.random_bool(0.5) => Some((l, " (leader)")),
            _ => {
                let id = *members.choose(&mut self.rng)?;
                Some((id, if Some(id) == leader { " (leader)" } else { "" }))
            }
        }
    }

    async fn inject<T: Target>(
        &mut self,
        target: &mut T,
        fault: Fault,
        in_force: &[Active],
        endpoints: &watch::Sender<Vec<String>>,
    ) -> anyhow::Result<Option<Active>> {
        let Some((id, role)) = self.victim(target, in_force).await else {
            self.log(format!("{}: every member is hit already; skipped", fault.name()));
            return Ok(None);
        };
        let others: Vec<NodeId> = target.members().into_iter().filter(|m| *m != id).collect();
        match fault {
            Fault::Kill => {
                self.log(format!("kill -9 node {id}{role}"));
                target.kill(id).await?;
                Ok(Some(Active::Killed(id)))
            }
            Fault::Power => {
                let torn = self.rng.random_bool(0.5);
                self.log(format!(
                    "power cut of node {id}{role}{}",
                    if torn { ", torn writes" } else { "" }
                ));
                target.power_cut(id, torn.then_some(&mut self.tear)).await?;
                Ok(Some(Active::Killed(id)))
            }
            Fault::Pause => {
                self.log(format!("pause node {id}{role}"));
                target.pause(id, true).await?;
                Ok(Some(Active::Paused(id)))
            }
            Fault::Partition => {
                let kinds = if target.one_way() { 3 } else { 1 };
                match self.rng.random_range(0..kinds) {
                    0 => {
                        self.log(format!("partition: isolate node {id}{role} from {others:?}"));
                        target.partition(&[vec![id], others]).await?;
                    }
                    1 => {
                        self.log(format!(
                            "partition: node {id}{role} cannot send to {others:?} (one way)"
                        ));
                        for &o in &others {
                            target.block_one_way(id, o).await?;
                        }
                    }
                    _ => {
                        self.log(format!(
                            "partition: node {id}{role} cannot receive from {others:?} (one way)"
                        ));
                        for &o in &others {
                            target.block_one_way(o, id).await?;
                        }
                    }
                }
                Ok(Some(Active::Network))
            }
            Fault::Delay => {
                let fault = LinkFault {
                    blocked: false,
                    delay: Duration::from_millis(self.rng.random_range(10..=150)),
                    jitter: Duration::from_millis(self.rng.random_range(0..=50)),
                    drop_rate: [0.0, 0.001, 0.01][self.rng.random_range(0..3)],
                };
                self.log(format!(
                    "degrade every link: delay {:?} + jitter {:?}, drop rate {}",
                    fault.delay, fault.jitter, fault.drop_rate
                ));
                target.degrade(fault).await?;
                Ok(Some(Active::Network))
            }
            Fault::Transfer => self.transfer_to_a_lost_member(target, in_force).await,
            Fault::Membership => {
                self.log(format!("membership: replace node {id}{role}"));
                let new = target.replace(id).await?;
                endpoints.send_replace(target.endpoints());
                self.log(format!("membership: node {new} replaced node {id}"));
                Ok(None)
            }
        }
    }

    /// Ask the leader to hand over to a member that cannot take it: one paused just as the
    /// transfer starts, or one cut off beforehand. The leader must give up, or another member
    /// must take over, and writes must go on either way (openraft issue 2088).
    async fn transfer_to_a_lost_member<T: Target>(
        &mut self,
        target: &mut T,
        in_force: &[Active],
    ) -> anyhow::Result<Option<Active>> {
        let Some(leader) = target.leader().await else {
            self.log("transfer: no leader right now; skipped");
            return Ok(None);
        };
        let rest: Vec<NodeId> = target
            .members()
            .into_iter()
            .filter(|m| *m != leader && !hits(in_force, *m))
            .collect();
        let Some(&to) = rest.choose(&mut self.rng) else {
            self.log("transfer: no member left to hand over to; skipped");
            return Ok(None);
        };
        let client = super::target::admin_with_timeout(target.endpoints(), Duration::from_secs(3)).await?;
        let pause = target.supports(Fault::Pause) && (self.rng.random_bool(0.5) || !target.supports(Fault::Partition));
        let active = if pause {
            self.log(format!(
                "transfer: leader {leader} hands over to node {to}, paused as it starts"
            ));
            let call = tokio::spawn(async move { client.leader_transfer(Some(to)).await });
            tokio::time::sleep(Duration::from_millis(self.rng.random_range(0..20))).await;
            target.pause(to, true).await?;
            let outcome = call.await.map_err(|e| anyhow::anyhow!("transfer task: {e}"))?;
            self.log(format!("  transfer: {}", describe(outcome)));
            Active::Paused(to)
        } else {
            let others: Vec<NodeId> = target.members().into_iter().filter(|m| *m != to).collect();
            self.log(format!(
                "transfer: node {to} is cut off, then leader {leader} hands over to it"
            ));
            target.partition(&[vec![to], others]).await?;
            let outcome = client.leader_transfer(Some(to)).await;
            self.log(format!("  transfer: {}", describe(outcome)));
            Active::Network
        };
        Ok(Some(active))
    }

    async fn undo<T: Target>(&mut self, target: &mut T, active: Active) {
        let result = match active {
            Active::Killed(id) => {
                self.log(format!("restart node {id}"));
                target.restart(id).await
            }
            Active::Paused(id) => {
                self.log(format!("resume node {id}"));
                target.pause(id, false).await
            }
            Active::Network => {
                self.log("heal the network");
                target.heal_network().await
            }
        };
        if let Err(e) = result {
            self.log(format!("undo failed: {e:#}"));
        }
    }
}

/// Whether a fault in force already hits member `id`.
fn hits(in_force: &[Active], id: NodeId) -> bool {
    in_force
        .iter()
        .any(|a| matches!(a, Active::Killed(n) | Active::Paused(n) if *n == id))
}

/// Can `fault` be drawn while `in_force` is held? Healing the network undoes every network fault,
/// so there is one at a time (a transfer may cut its target off); a membership change needs the
/// whole cluster.
fn stacks(fault: Fault, in_force: &[Active]) -> bool {
    let network = in_force.contains(&Active::Network);
    match fault {
        Fault::Membership => in_force.is_empty(),
        Fault::Partition | Fault::Delay | Fault::Transfer => !network,
        Fault::Kill | Fault::Pause | Fault::Power => true,
    }
}

/// A transfer's outcome, for the log.
fn describe(outcome: Result<keel_proto::v1::LeaderTransferResponse, keel_client::Error>) -> String {
    match outcome {
        Ok(r) => format!("leader is now node {}", r.leader_id),
        Err(e) => format!("refused: {e}"),
    }
}
