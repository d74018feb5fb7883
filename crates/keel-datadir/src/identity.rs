//! The data directory's identity, owned here so that the node and `keelctl snapshot restore`
//! write it one way: which node and cluster the directory belongs to (`keel.id`), the
//! `--initial-cluster` it was bootstrapped from, and the `REMOVED` marker of a member that was
//! removed from its cluster.
//!
//! `<data-dir>/keel.id` is written atomically (temp file, fsync, rename, fsync of the directory)
//! when a node first starts, before anything else goes into the directory. A later start with
//! another `--id` or `--cluster-token` is refused, so a data directory cannot be taken over by
//! another node by mistake.
//!
//! Bootstrap is committed in two steps, so that a failure or a kill between them is not lost: the
//! first start with `--initial-cluster` records the identity with the members *pending*
//! ([`Identity::bootstrap`]); once Raft is initialized and that is on disk, the identity is
//! rewritten without them ([`ClusterId::bootstrapped`]). A start that finds them still pending
//! initializes again with the recorded members (`--initial-cluster`, if given, must name the same
//! ones). This never re-initializes a node that has Raft state: openraft refuses `initialize` on a
//! node with any vote or log entry (NotAllowed), and that refusal completes the bootstrap too. A
//! node whose first start was `--join`, or a start with `--join`, never initializes; a restart of a
//! bootstrapped node ignores `--initial-cluster`.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::NodeId;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

const FILE: &str = "keel.id";
const FORMAT: u32 = 1;

/// The identity recorded in a data directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub format: u32,
    pub node_id: NodeId,
    pub cluster_token: String,
    /// Derived from the token and the initial members; empty for a node that joined and has not
    /// yet heard from its cluster.
    pub cluster_id: String,
    /// The `--initial-cluster` members while this node's bootstrap is pending: set by its first
    /// start, cleared once Raft is initialized. Absent for joiners, restored nodes, bootstrapped
    /// nodes and identities written before this field existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootstrap: Option<BTreeMap<NodeId, String>>,
}

impl Identity {
    pub fn new(node_id: NodeId, cluster_token: &str, cluster_id: String) -> Identity {
        Identity {
            format: FORMAT,
            node_id,
            cluster_token: cluster_token.to_string(),
            cluster_id,
            bootstrap: None,
        }
    }
}

/// Why a data directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("data dir {dir}: {source}")]
    Io { dir: PathBuf, source: std::io::Error },
    #[error("data dir {dir} has an unreadable {FILE}: {reason}")]
    Corrupt { dir: PathBuf, reason: String },
    #[error("data dir {dir} belongs to node {found}, not to node {wanted} (--id)")]
    OtherNode {
        dir: PathBuf,
        found: NodeId,
        wanted: NodeId,
    },
    #[error("data dir {dir} belongs to cluster {found:?}, not to {wanted:?} (--cluster-token)")]
    OtherCluster {
        dir: PathBuf,
        found: String,
        wanted: String,
    },
    #[error("data dir {dir} is empty: start with --initial-cluster (new cluster) or --join (existing cluster)")]
    Uninitialized { dir: PathBuf },
    #[error(
        "data dir {dir} is bootstrapping a cluster of {recorded} (its first start stopped before it \
         initialized), not of {given} (--initial-cluster); start it with the first --initial-cluster, \
         or with an empty data dir"
    )]
    OtherBootstrap {
        dir: PathBuf,
        recorded: String,
        given: String,
    },
}

fn members_flag(members: &BTreeMap<NodeId, String>) -> String {
    members
        .iter()
        .map(|(id, addr)| format!("{id}={addr}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Parse `--initial-cluster`: `ID=ADDR,ID=ADDR` (peer addresses, ids from 1, each once).
pub fn parse_initial_cluster(s: &str) -> Result<BTreeMap<NodeId, String>, String> {
    let mut members = BTreeMap::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (id, addr) = part
            .split_once('=')
            .ok_or_else(|| format!("--initial-cluster: {part:?} is not ID=PEER_ADDR"))?;
        let id: NodeId = id
            .trim()
            .parse()
            .map_err(|_| format!("--initial-cluster: {id:?} is not a node id"))?;
        if id == 0 {
            return Err("--initial-cluster: node ids start at 1".into());
        }
        let addr = addr.trim();
        if addr.is_empty() || !addr.contains(':') {
            return Err(format!("--initial-cluster: {addr:?} is not HOST:PORT"));
        }
        if members.insert(id, addr.to_string()).is_some() {
            return Err(format!("--initial-cluster: node {id} is listed twice"));
        }
    }
    if members.is_empty() {
        return Err("--initial-cluster is empty".into());
    }
    let mut addrs: Vec<&String> = members.values().collect();
    addrs.sort();
    addrs.dedup();
    if addrs.len() != members.len() {
        return Err("--initial-cluster: two members share a peer address".into());
    }
    Ok(members)
}

/// The marker a member removed from its cluster leaves in its data directory; a start with such
/// a directory is refused.
pub const REMOVED_MARKER: &str = "REMOVED";

/// Leave the [`REMOVED_MARKER`] in `dir`, saying why.
pub fn mark_removed(dir: &Path, text: &str) -> std::io::Result<()> {
    fs::write(dir.join(REMOVED_MARKER), text)
}

/// The [`REMOVED_MARKER`]'s text, if `dir` has one.
pub fn removed(dir: &Path) -> Option<String> {
    fs::read_to_string(dir.join(REMOVED_MARKER)).ok()
}

/// The id of a cluster created from `token` and its initial members.
pub fn cluster_id(token: &str, members: &BTreeMap<NodeId, String>) -> String {
    let mut h = Sha256::new();
    h.update(token.as_bytes());
    for (id, addr) in members {
        h.update(format!("\n{id}={addr}").as_bytes());
    }
    h.finalize()[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// What the node should do after checking its data directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Startup {
    /// First start of a new cluster, or a start that finds the bootstrap of its first start
    /// unfinished: initialize Raft with these members, then [`ClusterId::bootstrapped`].
    Bootstrap(BTreeMap<NodeId, String>),
    /// First start of a node that waits to be added.
    Join,
    /// The data directory already holds this node.
    Restart,
}

/// Check (or create) the identity of `dir` for node `id`. Creates `dir` if needed.
pub fn check_or_create(
    dir: &Path,
    id: NodeId,
    token: &str,
    initial_cluster: Option<&BTreeMap<NodeId, String>>,
    join: bool,
) -> Result<(Identity, Startup), IdentityError> {
    let io = |source| IdentityError::Io {
        dir: dir.to_path_buf(),
        source,
    };
    crate::fs::create_dir_durable(dir).map_err(io)?;
    let path = dir.join(FILE);
    match fs::read(&path) {
        Ok(bytes) => {
            let identity: Identity = serde_json::from_slice(&bytes).map_err(|e| IdentityError::Corrupt {
                dir: dir.to_path_buf(),
                reason: e.to_string(),
            })?;
            if identity.node_id != id {
                return Err(IdentityError::OtherNode {
                    dir: dir.to_path_buf(),
                    found: identity.node_id,
                    wanted: id,
                });
            }
            if identity.cluster_token != token {
                return Err(IdentityError::OtherCluster {
                    dir: dir.to_path_buf(),
                    found: identity.cluster_token.clone(),
                    wanted: token.to_string(),
                });
            }
            let startup = match (&identity.bootstrap, initial_cluster, join) {
                (None, _, _) => Startup::Restart,
                // Told to join: wait for a leader to bring the node in, as a joiner does.
                (Some(_), _, true) => Startup::Restart,
                (Some(recorded), Some(given), false) if recorded != given => {
                    return Err(IdentityError::OtherBootstrap {
                        dir: dir.to_path_buf(),
                        recorded: members_flag(recorded),
                        given: members_flag(given),
                    })
                }
                (Some(recorded), _, false) => Startup::Bootstrap(recorded.clone()),
            };
            Ok((identity, startup))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let (cluster_id, startup) = match (initial_cluster, join) {
                (Some(members), _) => (cluster_id(token, members), Startup::Bootstrap(members.clone())),
                (None, true) => (String::new(), Startup::Join),
                (None, false) => return Err(IdentityError::Uninitialized { dir: dir.to_path_buf() }),
            };
            let mut identity = Identity::new(id, token, cluster_id);
            if let Startup::Bootstrap(members) = &startup {
                identity.bootstrap = Some(members.clone());
            }
            write(dir, &identity).map_err(io)?;
            Ok((identity, startup))
        }
        Err(e) => Err(io(e)),
    }
}

/// The cluster id, shared by a node's services: sent with every peer request and checked on
/// every one received, so that members of different clusters never exchange Raft messages (a
/// stale node of another cluster at an address given to `member add` is refused, not fed a
/// conflicting log). A node that joined learns the id from the first leader that replicates to it
/// and keeps it in `keel.id`.
pub struct ClusterId {
    dir: PathBuf,
    identity: std::sync::Mutex<Identity>,
}

impl ClusterId {
    pub fn new(dir: &Path, identity: Identity) -> Self {
        ClusterId {
            dir: dir.to_path_buf(),
            identity: std::sync::Mutex::new(identity),
        }
    }

    /// Record that Raft is initialized (call once that is on disk): later starts are restarts.
    pub fn bootstrapped(&self) -> std::io::Result<()> {
        let mut identity = self.identity.lock().unwrap_or_else(|e| e.into_inner());
        if identity.bootstrap.is_some() {
            let mut updated = identity.clone();
            updated.bootstrap = None;
            write(&self.dir, &updated)?;
            *identity = updated;
        }
        Ok(())
    }

    /// The id, or "" while a joined node has not heard from its cluster yet.
    pub fn get(&self) -> String {
        self.identity
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .cluster_id
            .clone()
    }

    /// Accept a message from a peer of cluster `theirs` ("" if it does not know its own yet)?
    /// With `adopt` (the message comes from a leader replicating to us), an unknown own id is
    /// set to theirs.
    pub fn check(&self, theirs: &str, adopt: bool) -> Result<(), String> {
        let mut identity = self.identity.lock().unwrap_or_else(|e| e.into_inner());
        if theirs.is_empty() || identity.cluster_id == theirs {
            return Ok(());
        }
        if identity.cluster_id.is_empty() {
            if adopt {
                let mut updated = identity.clone();
                updated.cluster_id = theirs.to_string();
                write(&self.dir, &updated).map_err(|e| format!("cannot record the cluster id: {e}"))?;
                tracing::info!(cluster_id = theirs, "joined cluster");
                *identity = updated;
            }
            return Ok(());
        }
        Err(format!(
            "message from a member of cluster {theirs}; member {} belongs to cluster {}",
            identity.node_id, identity.cluster_id
        ))
    }
}

/// Write the identity atomically.
pub fn write(dir: &Path, identity: &Identity) -> std::io::Result<()> {
    let tmp = dir.join(format!("{FILE}.tmp"));
    let mut f = fs::File::create(&tmp)?;
    f.write_all(&serde_json::to_vec_pretty(identity).map_err(std::io::Error::other)?)?;
    f.sync_all()?;
    fs::rename(&tmp, dir.join(FILE))?;
    crate::fs::fsync_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members() -> BTreeMap<NodeId, String> {
        [(1, "a:1".to_string()), (2, "b:2".to_string())].into()
    }

    #[test]
    fn first_start_then_restart() {
        let dir = tempfile::tempdir().unwrap();
        let (id, startup) = check_or_create(dir.path(), 1, "t", Some(&members()), false).unwrap();
        assert_eq!(startup, Startup::Bootstrap(members()));
        assert_eq!(id.cluster_id, cluster_id("t", &members()));
        // The first start initializes Raft.
        ClusterId::new(dir.path(), id.clone()).bootstrapped().unwrap();
        let id = Identity { bootstrap: None, ..id };
        // A restart ignores --initial-cluster, whatever it says now.
        let other: BTreeMap<NodeId, String> = [(1, "z:9".to_string())].into();
        let (again, startup) = check_or_create(dir.path(), 1, "t", Some(&other), false).unwrap();
        assert_eq!((again, startup), (id, Startup::Restart));
    }

    #[test]
    fn a_bootstrap_that_did_not_finish_is_done_on_the_next_start() {
        let dir = tempfile::tempdir().unwrap();
        // The first start records the identity, then stops before Raft is initialized.
        let (first, _) = check_or_create(dir.path(), 1, "t", Some(&members()), false).unwrap();
        assert_eq!(first.bootstrap, Some(members()));
        // The same flags, or none: bootstrap with the recorded members.
        for flag in [Some(members()), None] {
            let (again, startup) = check_or_create(dir.path(), 1, "t", flag.as_ref(), false).unwrap();
            assert_eq!((&again, startup), (&first, Startup::Bootstrap(members())));
        }
        // Other members would be another cluster (and another cluster id): refused.
        let other: BTreeMap<NodeId, String> = [(1, "a:1".to_string()), (3, "c:3".to_string())].into();
        let e = check_or_create(dir.path(), 1, "t", Some(&other), false).unwrap_err();
        assert!(matches!(e, IdentityError::OtherBootstrap { .. }), "{e}");
        assert!(e.to_string().contains("1=a:1,2=b:2"), "{e}");
        // --join never initializes.
        let (_, startup) = check_or_create(dir.path(), 1, "t", None, true).unwrap();
        assert_eq!(startup, Startup::Restart);
        // Once initialized, the next start is a restart, with the identity no longer pending.
        ClusterId::new(dir.path(), first.clone()).bootstrapped().unwrap();
        let (again, startup) = check_or_create(dir.path(), 1, "t", Some(&members()), false).unwrap();
        assert_eq!((again.bootstrap, startup), (None, Startup::Restart));
        let on_disk = std::fs::read_to_string(dir.path().join(FILE)).unwrap();
        assert!(!on_disk.contains("bootstrap"), "{on_disk}");
    }

    #[test]
    fn a_joiner_or_an_older_identity_never_bootstraps() {
        let dir = tempfile::tempdir().unwrap();
        check_or_create(dir.path(), 1, "t", None, true).unwrap();
        let (_, startup) = check_or_create(dir.path(), 1, "t", Some(&members()), false).unwrap();
        assert_eq!(startup, Startup::Restart);
        // A joiner that has learned its cluster's id looks like a member of it.
        let cluster = ClusterId::new(dir.path(), check_or_create(dir.path(), 1, "t", None, false).unwrap().0);
        cluster.check(&cluster_id("t", &members()), true).unwrap();
        let (_, startup) = check_or_create(dir.path(), 1, "t", Some(&members()), false).unwrap();
        assert_eq!(startup, Startup::Restart);
        // An identity written before bootstraps were recorded as pending: a restart, as it was.
        let old = tempfile::tempdir().unwrap();
        std::fs::write(
            old.path().join(FILE),
            format!(
                r#"{{"format":1,"node_id":1,"cluster_token":"t","cluster_id":"{}"}}"#,
                cluster_id("t", &members())
            ),
        )
        .unwrap();
        let (_, startup) = check_or_create(old.path(), 1, "t", Some(&members()), false).unwrap();
        assert_eq!(startup, Startup::Restart);
    }

    #[test]
    fn another_node_or_cluster_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        check_or_create(dir.path(), 1, "t", Some(&members()), false).unwrap();
        let e = check_or_create(dir.path(), 2, "t", None, false).unwrap_err();
        assert!(
            matches!(
                e,
                IdentityError::OtherNode {
                    found: 1,
                    wanted: 2,
                    ..
                }
            ),
            "{e}"
        );
        let e = check_or_create(dir.path(), 1, "other", None, false).unwrap_err();
        assert!(matches!(e, IdentityError::OtherCluster { .. }), "{e}");
        std::fs::write(dir.path().join(FILE), b"garbage").unwrap();
        assert!(matches!(
            check_or_create(dir.path(), 1, "t", None, false),
            Err(IdentityError::Corrupt { .. })
        ));
    }

    #[test]
    fn empty_dir_needs_a_way_in() {
        let dir = tempfile::tempdir().unwrap();
        let e = check_or_create(dir.path(), 1, "t", None, false).unwrap_err();
        assert!(matches!(e, IdentityError::Uninitialized { .. }));
        let (id, startup) = check_or_create(dir.path(), 1, "t", None, true).unwrap();
        assert_eq!((id.cluster_id.as_str(), startup), ("", Startup::Join));
    }
}
