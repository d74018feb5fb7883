//! Between openraft's snapshot metadata and keel's own [`RaftPosition`], the form snapshot files
//! hold (see `keel_datadir::types`). The two lay out the same bytes under postcard; the tests
//! below hold them to that, so files written before the split, and any a later openraft writes
//! differently, read the same.

use keel_datadir::{LogPosition, RaftPosition};

use crate::types::{log_id_at, LogId, Membership, SnapshotMeta, StoredMembership};

fn position(log: &Option<LogId>) -> Option<LogPosition> {
    log.map(|l| LogPosition {
        term: l.leader_id.term,
        node_id: l.leader_id.node_id,
        index: l.index,
    })
}

fn log_id(p: &Option<LogPosition>) -> Option<LogId> {
    p.map(|p| log_id_at(p.term, p.node_id, p.index))
}

/// The Raft position a snapshot with `meta` is taken at.
pub fn to_position(meta: &SnapshotMeta) -> RaftPosition {
    let membership = meta.last_membership.membership();
    RaftPosition {
        last_log: position(&meta.last_log_id),
        membership_log: position(meta.last_membership.log_id()),
        voter_configs: membership.get_joint_config().clone(),
        nodes: membership.nodes().map(|(id, m)| (*id, m.clone())).collect(),
        reserved: String::new(),
    }
}

/// openraft's metadata for a snapshot file's position; an error if its membership names a voter
/// without an address (only a damaged or forged file does).
pub fn to_meta(p: &RaftPosition) -> Result<SnapshotMeta, String> {
    let membership = Membership::new(p.voter_configs.clone(), p.nodes.clone())
        .map_err(|e| format!("snapshot membership is invalid: {e}"))?;
    Ok(SnapshotMeta {
        last_log_id: log_id(&p.last_log),
        last_membership: StoredMembership::new(log_id(&p.membership_log), membership),
    })
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;
    use crate::Member;

    fn member(i: u64) -> Member {
        Member {
            peer_addr: format!("10.0.0.{i}:7101"),
            client_addr: if i.is_multiple_of(2) {
                String::new()
            } else {
                format!("10.0.0.{i}:7100")
            },
        }
    }

    fn metas() -> Vec<SnapshotMeta> {
        let nodes: BTreeMap<u64, Member> = (1..=5).map(|i| (i, member(i))).collect();
        let one: BTreeSet<u64> = [1, 2, 3].into();
        let joint = vec![one.clone(), [3, 4, 5].into()];
        vec![
            SnapshotMeta::default(),
            SnapshotMeta {
                last_log_id: Some(log_id_at(7, 2, 1234)),
                last_membership: StoredMembership::new(
                    Some(log_id_at(3, 1, 10)),
                    Membership::new(vec![one], nodes.clone()).unwrap(),
                ),
            },
            SnapshotMeta {
                last_log_id: Some(log_id_at(u64::MAX, u64::MAX, u64::MAX)),
                last_membership: StoredMembership::new(None, Membership::new(joint, nodes).unwrap()),
            },
        ]
    }

    #[test]
    fn a_position_has_the_bytes_of_openrafts_metadata() {
        for meta in metas() {
            let theirs = postcard::to_stdvec(&meta).unwrap();
            let ours = postcard::to_stdvec(&to_position(&meta)).unwrap();
            assert_eq!(ours, theirs, "{meta:?}");
            // Either reads the other's bytes.
            let read: RaftPosition = postcard::from_bytes(&theirs).unwrap();
            assert_eq!(to_meta(&read).unwrap(), meta);
            let read: SnapshotMeta = postcard::from_bytes(&ours).unwrap();
            assert_eq!(read, meta);
        }
    }

    #[test]
    fn a_voter_without_an_address_is_refused() {
        let p = RaftPosition {
            voter_configs: vec![[1, 9].into()],
            nodes: [(1, member(1))].into(),
            ..RaftPosition::default()
        };
        assert!(to_meta(&p).unwrap_err().contains("invalid"));
    }
}
