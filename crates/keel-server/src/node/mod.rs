//! # A node: the hub the services share
//!
//! [`Node`] holds what one member's request paths need: the Raft handle, the local state
//! machine's reader, the peer channels, the limits, the disk alarm and the metrics. The paths
//! themselves live in rooms of their own, each an `impl Node` block:
//! - [`leader`]: who leads, the checks leader-only work makes first, the response header, and
//!   `Node::on_leader`, which runs leader-only work here or on the leader;
//! - `write` (with its proposer): a write from the KV service to the applied state machine;
//! - `read` (with its coalescer): read indexes and the wait that makes a local read
//!   linearizable;
//! - `membership`: membership changes, leader transfer, removal and address publishing.
//!
//! This file keeps the node's life: construction, failure (a node that cannot go on stops, so a
//! supervisor sees it), shutdown, removal, and when a leader was last heard from.

pub mod leader;

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_storage::{KvReader, Limits, Member, NodeId};
use openraft::async_runtime::WatchReceiver;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::error::NodeError;
use crate::peer::client::PeerChannels;
use crate::read::coalesce::Coalescer;

pub use crate::raft::{Raft, RaftMetrics};

/// A running node, shared by its services.
pub struct Node {
    pub id: NodeId,
    pub raft: Raft,
    pub reader: KvReader,
    /// Where received snapshots are written before openraft installs them.
    pub inbox: keel_storage::SnapshotInbox,
    pub channels: Arc<PeerChannels>,
    pub limits: Limits,
    /// Limits on leases and streams (see `config.rs`).
    pub service_limits: crate::config::ServiceLimits,
    pub cluster: Arc<keel_datadir::identity::ClusterId>,
    /// This node's addresses as it publishes them in the membership.
    pub advertise: Member,
    pub election_timeout_max: Duration,
    pub data_dir: std::path::PathBuf,
    /// The disk alarm (see `disk/`).
    pub disk: Arc<crate::disk::DiskSpace>,
    shutting_down: AtomicBool,
    /// A leader transfer is under way: refuse new writes and read indexes.
    pub(crate) transferring: AtomicBool,
    /// This member was removed from the cluster.
    pub(crate) removed: AtomicBool,
    /// Held by each membership change this node makes as leader, from its checks to its commit
    /// (see `membership.rs`, `Node::membership_turn`).
    pub(crate) membership_turn: tokio::sync::Mutex<()>,
    /// When this member last accepted replication from a current leader, in milliseconds since
    /// `started` (0: never). openraft's metrics keep naming the last leader while a member that
    /// is cut off asks in vain for votes (a pre-vote changes nothing), so readiness asks this.
    leader_contact: std::sync::atomic::AtomicU64,
    started: Instant,
    /// Elections are held (not started) until this instant; None: for good (removed).
    pub(crate) election_hold: Arc<std::sync::Mutex<Option<Instant>>>,
    pub metrics: Arc<crate::metrics::Metrics>,
    pub log_stats: Arc<keel_storage::LogStats>,
    /// Lease deadlines on this member (see `lease`).
    pub leases: Arc<crate::lease::LeaseTable>,
    pub(crate) proposer: crate::write::proposer::Proposer,
    /// Read indexes fetched for this node's linearizable reads (from the leader, maybe itself).
    pub(crate) read_barriers: Coalescer<Result<u64, NodeError>>,
    /// Leadership confirmations by quorum, as leader.
    pub(crate) read_indexes: Coalescer<Result<u64, NodeError>>,
    /// This node, for the rounds of work that run on tasks of their own (`read/coalesce.rs`).
    this: std::sync::Weak<Node>,
    /// Why this node must stop (see [`Node::fail`]); the binary exits non-zero on it.
    failed: tokio::sync::watch::Sender<Option<String>>,
    /// Cancelled when the node stops: every background task ends at its next await.
    pub(crate) cancel: CancellationToken,
    /// Cancelled when shutdown begins: requests that would otherwise never end (watch streams)
    /// end then, so that the client server can finish the others.
    pub(crate) stopping: CancellationToken,
    /// Every background task, so that shutdown can wait for them all to end.
    pub(crate) tasks: TaskTracker,
    /// Lockers and campaigners waiting on this member, by user (`--max-lock-waiters-per-user`).
    pub(crate) waiters_by_user: std::sync::Mutex<std::collections::HashMap<String, u32>>,
}

/// What a node is built from: its storage, its peers and its settings, each made by `server.rs`.
pub struct Parts {
    pub id: NodeId,
    pub raft: Raft,
    pub reader: KvReader,
    pub inbox: keel_storage::SnapshotInbox,
    pub log_stats: Arc<keel_storage::LogStats>,
    pub channels: Arc<PeerChannels>,
    pub cluster: Arc<keel_datadir::identity::ClusterId>,
    /// This node's addresses as it publishes them in the membership.
    pub advertise: Member,
    pub limits: Limits,
    pub service_limits: crate::config::ServiceLimits,
    pub election_timeout_max: Duration,
    pub data_dir: std::path::PathBuf,
    pub batch: crate::config::BatchLimits,
    pub disk: Arc<crate::disk::DiskSpace>,
    pub metrics: Arc<crate::metrics::Metrics>,
    pub leases: Arc<crate::lease::LeaseTable>,
}

impl Node {
    /// Build the node and start its proposer.
    pub fn new(parts: Parts) -> Arc<Self> {
        let Parts {
            id,
            raft,
            reader,
            inbox,
            log_stats,
            channels,
            cluster,
            advertise,
            limits,
            service_limits,
            election_timeout_max,
            data_dir,
            batch,
            disk,
            metrics,
            leases,
        } = parts;
        let (cancel, tasks) = (CancellationToken::new(), TaskTracker::new());
        let proposer =
            crate::write::proposer::Proposer::spawn(id, raft.clone(), batch, metrics.clone(), &tasks, &cancel);
        Arc::new_cyclic(|this| Node {
            id,
            raft,
            reader,
            inbox,
            channels,
            limits,
            service_limits,
            cluster,
            advertise,
            election_timeout_max,
            data_dir,
            disk,
            shutting_down: AtomicBool::new(false),
            transferring: AtomicBool::new(false),
            membership_turn: tokio::sync::Mutex::new(()),
            removed: AtomicBool::new(false),
            leader_contact: std::sync::atomic::AtomicU64::new(0),
            started: Instant::now(),
            election_hold: Arc::new(std::sync::Mutex::new(Some(Instant::now()))),
            metrics,
            log_stats,
            leases,
            proposer,
            read_barriers: Coalescer::default(),
            read_indexes: Coalescer::default(),
            this: this.clone(),
            failed: tokio::sync::watch::Sender::new(None),
            cancel,
            stopping: CancellationToken::new(),
            tasks,
            waiters_by_user: Default::default(),
        })
    }

    /// This node cannot go on (its storage failed a read, Raft stopped on an error): say why in
    /// one line and have the process stop, so that a supervisor sees a dead member and restarts
    /// it, rather than a process that answers health checks with nothing working inside. The
    /// first reason is kept.
    pub fn fail(&self, why: String) {
        self.failed.send_if_modified(|f| {
            if f.is_some() {
                return false;
            }
            tracing::error!(member = self.id, "stopping: {why}");
            *f = Some(why);
            true
        });
    }

    /// Resolves with the reason once [`Node::fail`] was called.
    pub fn failed(&self) -> impl std::future::Future<Output = String> + Send + 'static {
        let mut rx = self.failed.subscribe();
        async move {
            let why = rx
                .wait_for(|f| f.is_some())
                .await
                .map(|f| f.clone().unwrap_or_default());
            match why {
                Ok(why) => why,
                // The node is gone, and with it whoever could fail it.
                Err(_) => std::future::pending().await,
            }
        }
    }

    /// Where the store's database lives, for messages about it.
    pub fn db_path(&self) -> std::path::PathBuf {
        keel_storage::db_dir(&self.data_dir)
    }

    /// This node as a shared handle (for work that outlives the caller's future).
    pub(crate) fn shared(&self) -> Result<Arc<Node>, NodeError> {
        self.this
            .upgrade()
            .ok_or_else(|| NodeError::Unavailable("node is shutting down".into()))
    }

    pub fn metrics(&self) -> RaftMetrics {
        self.raft.metrics().borrow_watched().clone()
    }

    /// Run `task` in the background until it ends or the node stops, whichever comes first;
    /// shutdown waits for it (see `server.rs`).
    pub(crate) fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        let cancel = self.cancel.clone();
        self.tasks.spawn(async move {
            cancel.run_until_cancelled_owned(task).await;
        });
    }

    /// Ask every background task to stop, and wait (at most `limit`) until they have. False if
    /// some were still running at the limit.
    pub(crate) async fn stop_tasks(&self, limit: Duration) -> bool {
        self.cancel.cancel();
        self.tasks.close();
        tokio::time::timeout(limit, self.tasks.wait()).await.is_ok()
    }

    /// Refuse new requests from now on; those in flight finish.
    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::Release);
        self.stopping.cancel();
    }

    /// A leader's AppendEntries was just accepted here.
    pub fn heard_from_leader(&self) {
        let ms = self.started.elapsed().as_millis() as u64;
        self.leader_contact.fetch_max(ms.max(1), Ordering::Relaxed);
    }

    /// How long ago this member last accepted a leader's AppendEntries (None: never).
    pub fn since_leader_contact(&self) -> Option<Duration> {
        let ms = self.leader_contact.load(Ordering::Relaxed);
        (ms > 0).then(|| self.started.elapsed().saturating_sub(Duration::from_millis(ms)))
    }

    /// Was this member removed from the cluster?
    pub fn is_removed(&self) -> bool {
        self.removed.load(Ordering::Acquire)
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }

    pub(crate) fn check_running(&self) -> Result<(), NodeError> {
        if self.shutting_down.load(Ordering::Acquire) {
            return Err(NodeError::Unavailable("node is shutting down".into()));
        }
        if self.removed.load(Ordering::Acquire) {
            // Unavailable, so that clients move on to another member.
            return Err(NodeError::Unavailable(format!(
                "member {} was removed from the cluster and no longer serves requests",
                self.id
            )));
        }
        Ok(())
    }
}
