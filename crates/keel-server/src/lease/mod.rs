//! Lease deadlines on this member, and the leader's part in expiring leases.
//!
//! The state machine holds the leases (keel-storage `sm::leases`, whose essay argues the rules);
//! what it cannot hold is time. [`LeaseTable`] keeps, for every lease, a deadline on this member's
//! monotonic clock: "when the entry that last set the lease's remaining time was applied here,
//! plus that time". It learns of every such entry through the state machine's observer
//! ([`Observers`]), and takes every lease anew at start and after a snapshot install. It holds
//! no reader of the state machine: the state machine holds it (as its observer), and a reader
//! would make that a cycle that keeps the database open after the node stops.
//!
//! Every member keeps the table; only the leader acts on it ([`expiry::run`]): when a deadline
//! passes it proposes an expiry naming the lease's epoch, which the state machine ignores if a
//! renewal got in first. It also proposes checkpoints of every lease's remaining time now and
//! then, so that a member that restarts (and starts every lease at "now + the last recorded
//! remaining time") does not give leases much more than they had.
//!
//! The table also knows who granted each lease (an authenticated user, when auth is enabled),
//! for `--max-leases-per-user`. Like `--max-leases`, that limit is checked by the member that
//! takes the grant, against the leases it has applied, not at apply: a limit is a member's
//! setting, and apply must do the same on every member whatever their settings. Grants racing
//! each other through different members can pass it by a few.

pub mod expiry;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keel_storage::{LeaseCheckpoint, LeaseEvent, LeaseId, LeaseInfo, Observer};

/// One lease's deadline on this member.
#[derive(Debug, Clone)]
struct Deadline {
    at: Instant,
    epoch: u64,
    /// When this member last proposed the lease's expiry (as leader), to propose it once.
    proposed: Option<Instant>,
    /// The user who granted it, if any.
    owner: Option<Arc<str>>,
}

#[derive(Default)]
struct Table {
    deadlines: HashMap<LeaseId, Deadline>,
    /// Leases by owner; users without leases have no entry.
    owned: HashMap<Arc<str>, usize>,
}

impl Table {
    fn insert(&mut self, id: LeaseId, deadline: Deadline) {
        if let Some(owner) = &deadline.owner {
            *self.owned.entry(owner.clone()).or_default() += 1;
        }
        if let Some(old) = self.deadlines.insert(id, deadline) {
            self.disown(&old);
        }
    }

    fn remove(&mut self, id: LeaseId) {
        if let Some(old) = self.deadlines.remove(&id) {
            self.disown(&old);
        }
    }

    fn disown(&mut self, d: &Deadline) {
        let Some(owner) = &d.owner else { return };
        if let Some(n) = self.owned.get_mut(owner) {
            *n -= 1;
            if *n == 0 {
                self.owned.remove(owner);
            }
        }
    }
}

/// Every lease's deadline on this member.
pub struct LeaseTable {
    table: Mutex<Table>,
}

/// An expiry proposed this long ago without effect (the proposal failed, or leadership moved
/// and came back) is proposed again.
const PROPOSE_AGAIN: Duration = Duration::from_secs(2);

impl LeaseTable {
    /// The table of `leases`, each starting now.
    pub fn new(leases: &[LeaseInfo]) -> Arc<Self> {
        let table = Arc::new(LeaseTable {
            table: Mutex::new(Table::default()),
        });
        table.reload(leases);
        table
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Take `leases` as every lease there is; each gets "now + its recorded remaining time".
    pub fn reload(&self, leases: &[LeaseInfo]) {
        let now = Instant::now();
        let mut fresh = Table::default();
        for l in leases {
            let deadline = Deadline {
                at: now + Duration::from_millis(l.lease.remaining_ms),
                epoch: l.lease.epoch,
                proposed: None,
                owner: l.owner.as_deref().map(Arc::from),
            };
            fresh.insert(l.id, deadline);
        }
        *self.lock() = fresh;
    }

    /// Apply what an entry did to leases, at this moment.
    pub fn changed(&self, events: &[LeaseEvent]) {
        let now = Instant::now();
        let mut table = self.lock();
        for e in events {
            match e.remaining_ms {
                Some(ms) => {
                    let at = now + Duration::from_millis(ms);
                    // A renewal or checkpoint moves a known lease's deadline and keeps its owner;
                    // only a grant (of an id not in use) brings a new lease and names its owner.
                    if let Some(d) = table.deadlines.get_mut(&e.id) {
                        (d.at, d.epoch, d.proposed) = (at, e.epoch, None);
                    } else {
                        let deadline = Deadline {
                            at,
                            epoch: e.epoch,
                            proposed: None,
                            owner: e.owner.as_deref().map(Arc::from),
                        };
                        table.insert(e.id, deadline);
                    }
                }
                None => table.remove(e.id),
            }
        }
    }

    /// Time left for lease `id` on this member's clock (zero once its deadline passed), or
    /// `None` if this member does not know the lease.
    pub fn remaining(&self, id: LeaseId) -> Option<Duration> {
        let at = self.lock().deadlines.get(&id)?.at;
        Some(at.saturating_duration_since(Instant::now()))
    }

    /// Whether there are no leases.
    pub fn is_empty(&self) -> bool {
        self.lock().deadlines.is_empty()
    }

    /// How many leases there are.
    pub fn len(&self) -> usize {
        self.lock().deadlines.len()
    }

    /// How many leases `user` granted.
    pub fn owned_by(&self, user: &str) -> usize {
        self.lock().owned.get(user).copied().unwrap_or(0)
    }

    /// The leases whose deadline has passed at `now` and whose expiry is not proposed yet (or was
    /// proposed long ago), with their epochs; marks them proposed.
    pub fn due(&self, now: Instant) -> Vec<(LeaseId, u64)> {
        let mut due = Vec::new();
        for (id, d) in self.lock().deadlines.iter_mut() {
            let fresh = d.proposed.is_none_or(|p| now.duration_since(p) >= PROPOSE_AGAIN);
            if d.at <= now && fresh {
                d.proposed = Some(now);
                due.push((*id, d.epoch));
            }
        }
        due
    }

    /// Every lease's remaining time at `now`, for a checkpoint.
    pub fn checkpoints(&self, now: Instant) -> Vec<LeaseCheckpoint> {
        let mut points: Vec<LeaseCheckpoint> = self
            .lock()
            .deadlines
            .iter()
            .map(|(id, d)| LeaseCheckpoint {
                id: *id,
                epoch: d.epoch,
                remaining_ms: d.at.saturating_duration_since(now).as_millis() as u64,
            })
            .collect();
        points.sort_by_key(|p| p.id);
        points
    }
}

/// The state machine's observer on a member: metrics, and lease deadlines.
pub struct Observers {
    pub metrics: Arc<crate::metrics::Metrics>,
    pub leases: Arc<LeaseTable>,
}

impl Observer for Observers {
    fn applied(&self, entries: usize, took: Duration) {
        self.metrics.applied(entries, took);
    }
    fn snapshot_built(&self, bytes: u64, took: Duration) {
        self.metrics.snapshot_built(bytes, took);
    }
    fn snapshot_installed(&self, took: Duration) {
        self.metrics.snapshot_installed(took);
    }
    fn leases_changed(&self, events: &[LeaseEvent]) {
        self.leases.changed(events);
        self.metrics.leases.set(self.leases.len() as i64);
    }
    fn leases_reloaded(&self, leases: &[LeaseInfo]) {
        self.leases.reload(leases);
        self.metrics.leases.set(self.leases.len() as i64);
    }
}
