//! Tests of membership.rs: when a member counts itself removed.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use keel_storage::log_id_at as log_id;
use keel_storage::{Member, NodeId};
use openraft::{Membership, StoredMembership};

use crate::raft::RaftMetrics;

use super::RemovalWatch;

fn member(id: NodeId) -> Member {
    Member {
        peer_addr: format!("127.0.0.1:{}", 7100 + id),
        client_addr: String::new(),
    }
}

/// Metrics of member `me` whose effective membership (voters `voters`) is the entry at
/// `config_index`, with entries applied up to `applied`.
fn metrics(me: NodeId, voters: &[NodeId], config_index: u64, applied: u64) -> RaftMetrics {
    let ids: BTreeSet<NodeId> = voters.iter().copied().collect();
    let nodes: BTreeMap<NodeId, Member> = ids.iter().map(|id| (*id, member(*id))).collect();
    let mut m = RaftMetrics::new_initial(me);
    m.membership_config = Arc::new(StoredMembership::new(
        Some(log_id(1, 1, config_index)),
        Membership::new(vec![ids], nodes).unwrap(),
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

/// A member of a two-member cluster whose other member never answers: it campaigns every
/// election timeout and never wins, so its term shows whether it is allowed to campaign.
async fn lone_candidate(dir: &std::path::Path) -> anyhow::Result<crate::NodeHandle> {
    let peer = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let client = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    // Bound and closed again: nobody answers there.
    let nobody = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let peer_addr = peer.local_addr()?.to_string();
    let args = [
        "keel".to_string(),
        "--id".into(),
        "1".into(),
        "--data-dir".into(),
        dir.display().to_string(),
        "--peer-addr".into(),
        peer_addr.clone(),
        "--client-addr".into(),
        client.local_addr()?.to_string(),
        "--initial-cluster".into(),
        format!("1={peer_addr},2={nobody}"),
    ];
    let config = crate::Config::from_args(args).map_err(|e| anyhow::anyhow!("{e}"))?;
    let listeners = crate::Listeners {
        peer,
        client,
        metrics: None,
    };
    Ok(crate::start(config, listeners).await?)
}

/// Waits (at most `within`) until `node`'s term reaches `term`; false if it did not.
async fn term_reaches(node: &crate::node::Node, term: u64, within: std::time::Duration) -> bool {
    node.raft
        .wait(Some(within))
        .metrics(|m| m.current_term >= term, "term")
        .await
        .is_ok()
}

/// A removed member must never campaign again: not when an election hold it was given (by a
/// leader transfer) runs out, whether the hold came before or after its removal, and not when
/// asked to campaign. Its stale configuration would otherwise disrupt the cluster that removed it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_member_never_campaigns_again() -> anyhow::Result<()> {
    use std::time::{Duration, Instant};

    use crate::forward::ForwardRequest;

    let dir = tempfile::tempdir()?;
    let handle = lone_candidate(dir.path()).await?;
    let node = handle.node.clone();
    // Campaigns are counted by the terms they start. With a pre-vote, a member that cannot win
    // (its only peer is gone) never starts a term at all, so this member campaigns without one.
    node.raft.runtime_config().pre_vote(false);
    let t = node.election_timeout_max;
    assert!(
        term_reaches(&node, 2, Duration::from_secs(10)).await,
        "the lone member never campaigned"
    );

    let deadline = Instant::now() + Duration::from_secs(5);
    let hold = Duration::from_millis(100);
    let hold_req = || ForwardRequest::HoldElections {
        ms: hold.as_millis() as u64,
    };
    crate::peer::service::dispatch(&node, hold_req(), deadline).await?;
    crate::peer::service::dispatch(&node, ForwardRequest::Removed { by: 2 }, deadline).await?;
    crate::peer::service::dispatch(&node, hold_req(), deadline).await?;
    // An election starting as it was removed may still be under way: allow one more term.
    let term = node.metrics().current_term + 2;
    // Both holds have run out, with time for several election rounds.
    assert!(
        !term_reaches(&node, term, hold + 10 * t).await,
        "the removed member campaigned again once the election hold ran out (term {})",
        node.metrics().current_term
    );

    let refused = crate::peer::service::dispatch(&node, ForwardRequest::Elect, deadline).await;
    assert!(refused.is_err(), "the removed member agreed to campaign: {refused:?}");
    assert!(
        !term_reaches(&node, term, 10 * t).await,
        "the removed member campaigned when asked (term {})",
        node.metrics().current_term
    );
    assert!(dir.path().join(keel_datadir::identity::REMOVED_MARKER).exists());
    Ok(handle.shutdown().await?)
}
