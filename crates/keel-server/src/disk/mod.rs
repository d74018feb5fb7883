//! Free disk space: a member whose data directory runs low stops taking new entries, says so,
//! and takes them again by itself once space comes back.
//!
//! sled fails every write with "No space left on device" once the filesystem is full, and a
//! storage error stops openraft's core for good (the member then exits, see `Node::fail`). So
//! the member must stop *before* the disk is full, while it still has room to apply what is
//! already in its log: it keeps `--min-free-mb` free as a reserve. A task reads the free space
//! of the data directory's filesystem ten times a second ([`hand_over::watch`]). When it drops below the
//! reserve, the member raises its alarm:
//! - As a follower, it refuses AppendEntries that carry entries, and snapshots, with
//!   `ResourceExhausted` (heartbeats still count, so it does not campaign). The leader backs
//!   off and retries; the other members carry on without it.
//! - As the leader, it refuses client writes, and hands leadership to the most up-to-date voter
//!   that has space (the cluster then carries on without it).
//! - Every peer reply carries the alarm ([`ALARM_HEADER`]), so a leader knows which of its
//!   followers are full. It refuses writes with `ResourceExhausted` ("disk full on member N")
//!   when fewer than a majority of the voters have space, since none could commit; while a
//!   majority has space, writes go on.
//! - `/readyz`, `keelctl status` (its alarms) and the metrics `keel_disk_full` and
//!   `keel_disk_free_bytes` show it.
//!
//! The alarm clears by itself once the free space is back above twice the reserve (the gap keeps
//! it from flapping); the leader then replicates what the member missed. Unlike etcd's NOSPACE
//! alarm, no command is needed, and the alarm is per member: one full member does not stop the
//! cluster's writes.
//!
//! Caveats:
//! - Space is read, not reserved: a burst of writes larger than the reserve within one reading
//!   (100 ms) can still fill the disk. sled's error then stops the member (it exits with one line
//!   naming the error, and a supervisor restarts it once there is space); nothing acknowledged is
//!   lost, because an entry counts as written only after its sync succeeded. t33 runs this case
//!   with the reserve off.
//! - Snapshots the member builds itself, and applies of entries it already logged, still write:
//!   that is what the reserve is for.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keel_storage::NodeId;

use crate::error::NodeError;

pub mod hand_over;

/// Peer reply metadata: "1" while the replying member's disk alarm is raised, else "0".
pub const ALARM_HEADER: &str = "keel-disk-full";

/// How often the free space is read.
const INTERVAL: Duration = Duration::from_millis(100);

/// One member's disk alarm, and what it has heard of its peers' alarms.
pub struct DiskSpace {
    id: NodeId,
    dir: PathBuf,
    /// Bytes to keep free; 0 turns the alarm off.
    reserve: u64,
    full: AtomicBool,
    /// Free bytes at the last reading (u64::MAX before the first).
    free: AtomicU64,
    /// Peers' alarms as their latest replies to this member said.
    peers: Mutex<HashMap<NodeId, bool>>,
    /// How many of `peers` are full, so that the write path asks without a lock.
    full_peers: AtomicUsize,
}

impl DiskSpace {
    pub fn new(id: NodeId, dir: &Path, reserve: u64) -> Arc<DiskSpace> {
        let disk = DiskSpace {
            id,
            dir: dir.to_path_buf(),
            reserve,
            full: AtomicBool::new(false),
            free: AtomicU64::new(u64::MAX),
            peers: Mutex::default(),
            full_peers: AtomicUsize::new(0),
        };
        disk.check();
        Arc::new(disk)
    }

    pub fn is_full(&self) -> bool {
        self.full.load(Ordering::Acquire)
    }

    /// Free bytes at the last reading (None before one succeeded).
    pub fn free_bytes(&self) -> Option<u64> {
        Some(self.free.load(Ordering::Relaxed)).filter(|f| *f != u64::MAX)
    }

    /// The alarm's message while it is raised.
    pub fn alarm(&self) -> Option<String> {
        self.is_full().then(|| {
            format!(
                "disk full on member {}: {} free in {}, below the reserve of {} (--min-free-mb)",
                self.id,
                mib(self.free_bytes().unwrap_or(0)),
                self.dir.display(),
                mib(self.reserve)
            )
        })
    }

    /// Read the free space and raise or clear the alarm. Returns the alarm's new state if it
    /// changed.
    pub fn check(&self) -> Option<bool> {
        if self.reserve == 0 {
            return None;
        }
        let free = match fs2::available_space(&self.dir) {
            Ok(free) => free,
            Err(e) => {
                tracing::warn!(error = %e, dir = %self.dir.display(), "cannot read the free disk space");
                return None;
            }
        };
        self.free.store(free, Ordering::Relaxed);
        let was = self.is_full();
        let now = if was {
            free < self.reserve.saturating_mul(2)
        } else {
            free < self.reserve
        };
        if now == was {
            return None;
        }
        self.full.store(now, Ordering::Release);
        if now {
            tracing::error!(
                alarm = self.alarm().unwrap_or_default(),
                "disk alarm raised: this member takes no new entries"
            );
        } else {
            tracing::warn!(free = %mib(free), "disk alarm cleared: this member takes entries again");
        }
        Some(now)
    }

    /// Refuse what would write new entries here while the alarm is raised.
    pub fn refuse_if_full(&self) -> Result<(), NodeError> {
        match self.alarm() {
            Some(alarm) => Err(NodeError::ResourceExhausted(alarm)),
            None => Ok(()),
        }
    }

    /// Is this member's alarm, or any peer's it heard of, raised?
    pub fn any_alarm(&self) -> bool {
        self.is_full() || self.full_peers.load(Ordering::Acquire) > 0
    }

    /// A peer's reply said whether its alarm is raised.
    pub fn record_peer(&self, id: NodeId, full: bool) {
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        let was = peers.insert(id, full).unwrap_or(false);
        if was != full {
            if full {
                self.full_peers.fetch_add(1, Ordering::AcqRel);
                tracing::warn!(member = id, "member {id} reports a full disk");
            } else {
                self.full_peers.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }

    /// The voters among `voters` whose alarm is raised, this member included.
    pub fn full_voters(&self, voters: &BTreeSet<NodeId>) -> BTreeSet<NodeId> {
        let peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        voters
            .iter()
            .copied()
            .filter(|v| {
                if *v == self.id {
                    self.is_full()
                } else {
                    peers.get(v).copied().unwrap_or(false)
                }
            })
            .collect()
    }

    /// As leader of `voters`: may a write be proposed? Not while this member is full (it hands
    /// leadership over), nor while fewer than a majority have space (nothing could commit).
    pub fn check_write(&self, voters: &BTreeSet<NodeId>) -> Result<(), NodeError> {
        self.refuse_if_full()?;
        let full = self.full_voters(voters);
        if voters.len() - full.len() > voters.len() / 2 {
            return Ok(());
        }
        let names: Vec<String> = full.iter().map(u64::to_string).collect();
        Err(NodeError::ResourceExhausted(format!(
            "disk full on member{} {}: fewer than a majority of the {} voters can take new entries",
            if full.len() == 1 { "" } else { "s" },
            names.join(", "),
            voters.len()
        )))
    }
}

/// Bytes as MiB with one decimal.
pub(crate) fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(id: NodeId, dir: &Path, reserve: u64, full: bool) -> DiskSpace {
        DiskSpace {
            id,
            dir: dir.to_path_buf(),
            reserve,
            full: AtomicBool::new(full),
            free: AtomicU64::new(0),
            peers: Mutex::default(),
            full_peers: AtomicUsize::new(0),
        }
    }

    #[test]
    fn a_leader_with_space_writes_while_a_majority_has_space() {
        let voters: BTreeSet<NodeId> = [1, 2, 3].into();
        let d = disk(1, Path::new("/data"), 1 << 20, false);
        assert_eq!(d.check_write(&voters), Ok(()));
        d.record_peer(2, false);
        assert!(!d.any_alarm());
        d.record_peer(2, true);
        assert_eq!(d.check_write(&voters), Ok(()));
        d.record_peer(3, true);
        assert_eq!(
            d.check_write(&voters),
            Err(NodeError::ResourceExhausted(
                "disk full on members 2, 3: fewer than a majority of the 3 voters can take new entries".into()
            ))
        );
        assert!(d.any_alarm());
        d.record_peer(3, false);
        assert_eq!(d.check_write(&voters), Ok(()));
        // A full peer that is not a voter does not count.
        d.record_peer(3, true);
        assert_eq!(d.check_write(&[1, 4, 5].into()), Ok(()));
    }

    #[test]
    fn a_full_leader_refuses_writes_naming_itself() {
        let d = disk(2, Path::new("/data"), 1 << 20, true);
        let Err(NodeError::ResourceExhausted(msg)) = d.check_write(&[1, 2, 3].into()) else {
            panic!("a full leader took a write");
        };
        assert!(
            msg.starts_with("disk full on member 2: 0.0 MiB free in /data, below the reserve of 1.0 MiB"),
            "{msg}"
        );
    }

    #[test]
    fn the_alarm_rises_below_the_reserve_and_clears_above_twice_it() {
        let dir = tempfile::tempdir().unwrap();
        let free = fs2::available_space(dir.path()).unwrap();
        // A reserve above the free space raises the alarm at once.
        let d = DiskSpace::new(1, dir.path(), free * 2);
        assert!(d.is_full());
        // With the free space between the reserve and twice it, the alarm stays as it is.
        let between = free * 2 / 3;
        let d = disk(1, dir.path(), between, true);
        assert_eq!(d.check(), None);
        assert!(d.is_full());
        let d = disk(1, dir.path(), between, false);
        assert_eq!(d.check(), None);
        assert!(!d.is_full());
        // Above twice the reserve, a raised alarm clears.
        let d = disk(1, dir.path(), free / 4, true);
        assert_eq!(d.check(), Some(false));
        assert_eq!(d.alarm(), None);
        // A reserve of 0 turns the check off.
        assert!(!DiskSpace::new(1, dir.path(), 0).is_full());
    }
}
