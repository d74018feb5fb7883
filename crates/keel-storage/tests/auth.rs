//! Users, roles and permissions in the state machine (see `keel_storage::auth`): checked when an
//! entry is applied, the same on every replica, through snapshots and restarts.

mod sessions_harness;

use keel_storage::auth::{AuthCommand, AuthError, PermKind, Permission, ROOT};
use keel_storage::*;
use sessions_harness::*;

fn auth(cmd: AuthCommand) -> Command {
    Command::Auth(cmd)
}

fn put(key: &str) -> Command {
    Command::Put(PutOp {
        key: key.as_bytes().to_vec(),
        value: b"v".to_vec(),
        prev_kv: false,
    })
}

fn as_user(user: &str, cmd: Command) -> Request {
    Request::new(cmd.as_user(user))
}

fn grant_rw(role: &str, key: &str, end: &str) -> Command {
    auth(AuthCommand::RoleGrantPermission {
        role: role.into(),
        permission: Permission {
            kind: PermKind::ReadWrite,
            key: key.as_bytes().to_vec(),
            range_end: end.as_bytes().to_vec(),
        },
    })
}

/// root (with the root role) and alice (read-write on `[a, m)`), auth enabled.
async fn with_users() -> Node {
    let mut n = Node::with_defaults();
    for cmd in [
        auth(AuthCommand::UserAdd {
            name: ROOT.into(),
            password: Some("$argon2id$root".into()),
        }),
        auth(AuthCommand::UserGrantRole {
            user: ROOT.into(),
            role: ROOT.into(),
        }),
        auth(AuthCommand::UserAdd {
            name: "alice".into(),
            password: Some("$argon2id$alice".into()),
        }),
        auth(AuthCommand::RoleAdd { name: "rw".into() }),
        grant_rw("rw", "a", "m"),
        auth(AuthCommand::UserGrantRole {
            user: "alice".into(),
            role: "rw".into(),
        }),
        auth(AuthCommand::Enable),
    ] {
        let r = n.send(Request::new(cmd)).await;
        assert_eq!(r.result, CommandResult::None, "setup");
    }
    assert!(n.store.sm.reader().auth().state.enabled);
    n
}

/// What the server proposes itself (validation refuses these from clients): batches, tokens.
async fn server_sends(n: &mut Node, req: Request) -> Response {
    n.apply(vec![EntryPayload::Normal(req)]).await.remove(0)
}

fn refused(e: AuthError) -> CommandResult {
    CommandResult::AuthRefused(e)
}

#[tokio::test]
async fn permissions_are_checked_at_apply_and_a_revocation_stops_every_later_write() {
    let mut n = with_users().await;
    let rev = n.revision();
    assert_eq!(
        n.send(Request::new(put("apple"))).await.result,
        refused(AuthError::UserEmpty)
    );
    assert_eq!(
        n.send(as_user("alice", put("zebra"))).await.result,
        refused(AuthError::PermissionDenied)
    );
    assert_eq!(
        n.send(as_user("mallory", put("apple"))).await.result,
        refused(AuthError::PermissionDenied)
    );
    assert_eq!(n.revision(), rev, "refused writes take no revision");
    assert!(matches!(
        n.send(as_user("alice", put("apple"))).await.result,
        CommandResult::Put(_)
    ));
    assert!(matches!(
        n.send(as_user(ROOT, put("zebra"))).await.result,
        CommandResult::Put(_)
    ));
    assert_eq!(n.revision(), rev + 2);

    // alice's write queued behind the revocation, in the same entry, is refused: the check is
    // made against the state its own position in the log sees.
    let revoke = auth(AuthCommand::RoleRevokePermission {
        role: "rw".into(),
        key: b"a".to_vec(),
        range_end: b"m".to_vec(),
    });
    let batch = Command::Batch(vec![
        as_user("alice", put("apple")),
        as_user(ROOT, revoke),
        as_user("alice", put("apple")),
    ]);
    let r = server_sends(&mut n, Request::new(batch)).await;
    let CommandResult::Batch(rs) = r.result else {
        panic!("batch answered {:?}", r.result)
    };
    assert!(matches!(rs[0].result, CommandResult::Put(_)));
    assert_eq!(rs[1].result, CommandResult::None);
    assert_eq!(rs[2].result, refused(AuthError::PermissionDenied));

    // Only root manages auth and compacts.
    assert_eq!(
        n.send(as_user("alice", auth(AuthCommand::Disable))).await.result,
        refused(AuthError::PermissionDenied)
    );
    assert_eq!(
        n.send(as_user("alice", Command::Compact(1))).await.result,
        refused(AuthError::PermissionDenied)
    );
    assert_eq!(
        n.send(as_user(ROOT, auth(AuthCommand::Disable))).await.result,
        CommandResult::None
    );
    assert!(
        matches!(n.send(Request::new(put("zebra"))).await.result, CommandResult::Put(_)),
        "auth off: anyone writes"
    );
}

/// A write refused by the auth rules is not remembered in its client session: the same
/// `(client_id, seq)` sent again once the client may do it is executed (keel-client resends it
/// after logging in).
#[tokio::test]
async fn a_refused_session_write_is_executed_when_sent_again() {
    let mut n = with_users().await;
    let mut req = Request::new(put("apple"));
    req.session = Some(SessionRef { client_id: 9, seq: 1 });
    assert_eq!(n.send(req.clone()).await.result, refused(AuthError::UserEmpty));
    req.command = put("apple").as_user("alice");
    assert!(matches!(n.send(req.clone()).await.result, CommandResult::Put(_)));
    // ... and then remembered, as any write.
    let again = n.send(req).await;
    assert!(matches!(again.result, CommandResult::Put(_)), "{again:?}");
    assert_eq!(n.revision(), again.revision);
}

#[tokio::test]
async fn auth_travels_in_snapshots_survives_restarts_and_a_restore_drops_the_tokens() {
    let mut src = with_users().await;
    let token = AuthCommand::TokenIssue {
        user: "alice".into(),
        token_hash: [7; 32],
        issued_ms: 1_000,
        expires_ms: 100_000,
    };
    assert_eq!(
        server_sends(&mut src, Request::new(auth(token))).await.result,
        CommandResult::None
    );
    let view = src.store.sm.reader().auth();
    assert_eq!(view.tokens.user_of(&[7; 32], 2_000), Some("alice"));

    let (meta, bytes) = build(&mut src.store).await;
    let mut dst = Node::with_defaults();
    install(&mut dst.store, &meta, &bytes).await;
    let got = dst.store.sm.reader().auth();
    assert_eq!(*got.state, *view.state);
    assert_eq!(*got.tokens, *view.tokens);
    // The same entries then do the same on both.
    dst.index = src.index;
    for n in [&mut src, &mut dst] {
        assert_eq!(
            n.send(as_user("alice", put("zebra"))).await.result,
            refused(AuthError::PermissionDenied)
        );
    }
    // A write with a token that is in the table is applied; one whose token has gone is not.
    let with_token = |hash| Request::new(put("apple").as_user_with("alice", Some(hash)));
    assert!(matches!(
        dst.send(with_token([7; 32])).await.result,
        CommandResult::Put(_)
    ));
    assert_eq!(
        dst.send(with_token([8; 32])).await.result,
        refused(AuthError::InvalidAuthToken)
    );
    let dst = dst.reopen().await;
    assert_eq!(*dst.store.sm.reader().auth().state, *view.state, "after a restart");

    // A backup seeded into a new cluster keeps users and roles, not tokens.
    let dir = tempfile::tempdir().unwrap();
    let mut store = keel_storage::open(dir.path(), &StoreConfig::default()).unwrap();
    let membership = StoredMembership::default();
    store.sm.seed_from_snapshot(&bytes[..], membership).unwrap();
    let seeded = store.sm.reader().auth();
    assert_eq!(*seeded.state, *view.state);
    assert!(seeded.tokens.by_hash.is_empty());
}

#[tokio::test]
async fn a_cluster_that_never_configured_auth_writes_no_auth_record() {
    let mut n = Node::with_defaults();
    n.send(Request::new(put("k"))).await;
    let (_, bytes) = build(&mut n.store).await;
    let (mut reader, _) = SnapshotReader::open(&bytes[..]).unwrap();
    while let Some(record) = reader.next_record().unwrap() {
        assert!(
            !matches!(record, SnapshotRecord::Auth(_)),
            "older releases could not read it"
        );
    }
}

#[test]
fn users_commands_do_not_nest() {
    let inner = put("k").as_user("alice");
    let nested = Request::new(inner.clone().as_user("bob"));
    let bytes = codec::encode(&nested);
    assert!(codec::decode::<Request>(&bytes).is_err(), "AsUser inside AsUser");
    let batch = Request::new(Command::Batch(vec![Request::new(put("k"))]).as_user("bob"));
    assert!(
        codec::decode::<Request>(&codec::encode(&batch)).is_err(),
        "a batch inside AsUser"
    );
    // A flat one decodes, inside a batch too.
    let ok = Request::new(Command::Batch(vec![Request::new(inner.clone()), Request::new(inner)]));
    assert_eq!(codec::decode::<Request>(&codec::encode(&ok)).unwrap(), ok);
    // A million levels of AsUser (a few bytes each) fail at the second, without recursing.
    let variant = codec::encode(&Request::new(put("k").as_user("")));
    // [format, session None, Command variant index, user len 0, token None, ...]: repeat the
    // AsUser prefix.
    let prefix = &variant[2..5];
    let mut hostile = vec![variant[0], variant[1]];
    for _ in 0..1_000_000 {
        hostile.extend_from_slice(prefix);
    }
    assert!(codec::decode::<Request>(&hostile).is_err());
}

#[test]
fn validation_refuses_what_clients_must_not_send() {
    let limits = Limits::default();
    let token = Request::new(auth(AuthCommand::TokenIssue {
        user: "alice".into(),
        token_hash: [0; 32],
        issued_ms: 0,
        expires_ms: 1,
    }));
    assert_eq!(validate_request(&token, &limits), Err(InvalidRequest::ServerOnly));
    let long = "x".repeat(validate::MAX_NAME_BYTES + 1);
    let add = Request::new(auth(AuthCommand::RoleAdd { name: long.clone() }));
    assert!(matches!(
        validate_request(&add, &limits),
        Err(InvalidRequest::NameTooLarge { .. })
    ));
    assert!(matches!(
        validate_request(&as_user(&long, put("k")), &limits),
        Err(InvalidRequest::NameTooLarge { .. })
    ));
    let empty_key = as_user("alice", put(""));
    assert_eq!(validate_request(&empty_key, &limits), Err(InvalidRequest::EmptyKey));
    assert!(validate_request(&as_user("alice", put("k")), &limits).is_ok());
}

fn grant(id: u64) -> Command {
    Command::LeaseGrant(LeaseGrant { id, ttl_ms: 60_000 })
}

fn owners(n: &Node) -> Vec<(LeaseId, Option<String>)> {
    let mut all: Vec<_> = n
        .store
        .sm
        .reader()
        .leases()
        .unwrap()
        .into_iter()
        .map(|l| (l.id, l.owner))
        .collect();
    all.sort();
    all
}

/// The per-user lease limit (keel-server) counts the leases each user granted: every member
/// must know them, after snapshots and restarts too, and forget them with the lease.
#[tokio::test]
async fn a_lease_is_recorded_as_its_granters_on_every_replica_until_it_goes() {
    let mut src = with_users().await;
    assert!(matches!(
        src.send(as_user("alice", grant(1))).await.result,
        CommandResult::Lease(LeaseResult::Granted { .. })
    ));
    src.send(as_user(ROOT, grant(2))).await;
    let want = vec![(1, Some("alice".to_string())), (2, Some(ROOT.to_string()))];
    assert_eq!(owners(&src), want);
    let (one, _) = src.store.sm.reader().lease(1).unwrap().expect("lease 1");
    assert_eq!(one.owner.as_deref(), Some("alice"));

    let (meta, bytes) = build(&mut src.store).await;
    let mut dst = Node::with_defaults();
    install(&mut dst.store, &meta, &bytes).await;
    assert_eq!(owners(&dst), want, "after a snapshot install");
    let mut dst = dst.reopen().await;
    assert_eq!(owners(&dst), want, "after a restart");

    // A revoke forgets the owner on both, byte for byte.
    dst.index = src.index;
    for n in [&mut src, &mut dst] {
        let revoke = Command::LeaseRevoke(LeaseRef { id: 1 });
        assert!(matches!(
            n.send(as_user("alice", revoke)).await.result,
            CommandResult::Lease(LeaseResult::Revoked { .. })
        ));
        assert_eq!(owners(n), vec![(2, Some(ROOT.to_string()))]);
        let records = raw_prefix(&n.store, keel_storage::codec::LEASE_OWNER_PREFIX);
        assert_eq!(
            records,
            vec![(codec::lease_owner_key(2).to_vec(), ROOT.as_bytes().to_vec())]
        );
    }
}
