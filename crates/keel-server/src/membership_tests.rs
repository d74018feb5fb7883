//! Tests of membership.rs: when a member counts itself removed.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use keel_storage::{Member, NodeId};
use openraft::testing::log_id;
use openraft::{Membership, RaftMetrics, StoredMembership};

use super::RemovalWatch;

fn member(id: NodeId) -> Member {
    Member {
        peer_addr: format!("127.0.0.1:{}", 7100 + id),
        client_addr: String::new(),
    }
}

/// Metrics of member `me` whose effective membership (voters `voters`) is the entry at
/// `config_index`, with entries applied up to `applied`.
fn metrics(me: NodeId, voters: &[NodeId], config_index: u64, applied: u64) -> RaftMetrics<NodeId, Member> {
    let ids: BTreeSet<NodeId> = voters.iter().copied().collect();
    let nodes: BTreeMap<NodeId, Member> = ids.iter().map(|id| (*id, member(*id))).collect();
    let mut m = RaftMetrics::new_initial(me);
    m.membership_config = Arc::new(StoredMembership::new(
        Some(log_id(1, 1, config_index)),
        Membership::new(vec![ids], nodes),
    ));
    m.last_log_index = Some(config_index.max(applied));
    m.last_applied = Some(log_id(1, 1, applied));
    m
}

/// A leader removing itself makes the configuration without it effective as soon as it is
/// appended. The change may still be lost (the leader is cut off before it commits, and the next
/// leader truncates it): the member must not count itself removed, write `REMOVED` and refuse to
/// start, until the change is committed.
#[test]
fn an_uncommitted_removal_is_not_acted_on() {
    let mut watch = RemovalWatch::default();
    assert!(!watch.removed(3, &metrics(3, &[1, 2, 3], 5, 5)));
    // Appended, not yet committed (applied is behind the configuration's entry).
    assert!(
        !watch.removed(3, &metrics(3, &[1, 2], 8, 7)),
        "member 3 acted on a membership that is not committed"
    );
    // Truncated by the next leader: member 3 is a voter again.
    assert!(!watch.removed(3, &metrics(3, &[1, 2, 3], 5, 7)));
    // Committed (and applied): now it is removed.
    assert!(!watch.removed(3, &metrics(3, &[1, 2], 8, 7)));
    assert!(watch.removed(3, &metrics(3, &[1, 2], 8, 8)));
    assert!(watch.removed(3, &metrics(3, &[1, 2], 8, 20)));
}

/// A joining member that receives the configuration adding it, which is then truncated, was
/// never a member: losing that configuration is not a removal.
#[test]
fn a_joiner_whose_addition_is_truncated_is_not_removed() {
    let mut watch = RemovalWatch::default();
    let mut empty = RaftMetrics::new_initial(4);
    empty.membership_config = Arc::new(StoredMembership::default());
    assert!(!watch.removed(4, &empty));
    assert!(!watch.removed(4, &metrics(4, &[1, 2, 3, 4], 9, 6)));
    assert!(
        !watch.removed(4, &metrics(4, &[1, 2, 3], 5, 6)),
        "member 4 counted the loss of an uncommitted addition as its removal"
    );
    // Added for real, then removed for real.
    assert!(!watch.removed(4, &metrics(4, &[1, 2, 3, 4], 10, 10)));
    assert!(watch.removed(4, &metrics(4, &[1, 2, 3], 12, 12)));
}
