//! Users, roles and permissions on every path (issue 17, item 2), through etcd's v3 API and
//! keel's own: the README's authorization table, one row per test case. For each row, a user
//! without the permission is refused with etcd's code and text, and a user with it is served.
//! Requests go to a follower as well as the leader, so forwarded writes carry their user.

use std::time::Duration;

use keel_proto::etcd::authpb;
use keel_proto::etcd::etcdserverpb as pb;
use keel_proto::etcd::etcdserverpb::{
    auth_client::AuthClient, cluster_client::ClusterClient, kv_client::KvClient, lease_client::LeaseClient,
    maintenance_client::MaintenanceClient, watch_client::WatchClient,
};
use keel_testkit::{Backend, Cluster, Options};
use tonic::transport::Channel;
use tonic::Code;

const LIMIT: Duration = Duration::from_secs(20);

/// A request carrying `token` as etcd's clients send it.
fn req<T>(msg: T, token: Option<&str>) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    if let Some(t) = token {
        r.metadata_mut().insert("token", t.parse().expect("ascii token"));
    }
    r
}

fn put(key: &str) -> pb::PutRequest {
    pb::PutRequest {
        key: key.into(),
        value: b"v".to_vec(),
        ..Default::default()
    }
}

fn range(key: &str) -> pb::RangeRequest {
    pb::RangeRequest {
        key: key.into(),
        ..Default::default()
    }
}

fn refused<T: std::fmt::Debug>(r: Result<T, tonic::Status>, code: Code, text: &str, what: &str) {
    match r {
        Ok(v) => panic!("{what}: allowed ({v:?}), expected {code:?}"),
        Err(s) => {
            assert_eq!(s.code(), code, "{what}: {s:?}");
            assert_eq!(s.message(), text, "{what}");
        }
    }
}

fn denied<T: std::fmt::Debug>(r: Result<T, tonic::Status>, what: &str) {
    refused(r, Code::PermissionDenied, "etcdserver: permission denied", what);
}

fn allowed<T>(r: Result<tonic::Response<T>, tonic::Status>, what: &str) -> T {
    match r {
        Ok(v) => v.into_inner(),
        Err(s) => panic!("{what}: refused: {s:?}"),
    }
}

struct Tokens {
    root: String,
    /// read-write on `app/`.
    rw: String,
    /// read only on `app/`.
    ro: String,
}

/// root, `rw` (read-write on the prefix `app/`) and `ro` (read on `app/`), auth enabled through
/// `admin`; their tokens from `login` (a follower: its token is issued through the leader).
async fn set_up(admin: Channel, login: Channel) -> anyhow::Result<Tokens> {
    let mut auth = AuthClient::new(admin);
    for (name, password) in [("root", "rootpw"), ("rw", "rwpw"), ("ro", "ropw")] {
        auth.user_add(pb::AuthUserAddRequest {
            name: name.into(),
            password: password.into(),
            ..Default::default()
        })
        .await?;
    }
    for role in ["app-rw", "app-ro"] {
        auth.role_add(pb::AuthRoleAddRequest { name: role.into() }).await?;
    }
    for (role, kind) in [
        ("app-rw", authpb::permission::Type::Readwrite),
        ("app-ro", authpb::permission::Type::Read),
    ] {
        auth.role_grant_permission(pb::AuthRoleGrantPermissionRequest {
            name: role.into(),
            perm: Some(authpb::Permission {
                perm_type: kind as i32,
                key: b"app/".to_vec(),
                range_end: b"app0".to_vec(),
            }),
        })
        .await?;
    }
    for (user, role) in [("root", "root"), ("rw", "app-rw"), ("ro", "app-ro")] {
        auth.user_grant_role(pb::AuthUserGrantRoleRequest {
            user: user.into(),
            role: role.into(),
        })
        .await?;
    }
    auth.auth_enable(pb::AuthEnableRequest {}).await?;
    let mut auth = AuthClient::new(login);
    let mut token = async |name: &str, password: &str| -> anyhow::Result<String> {
        let r = auth
            .authenticate(pb::AuthenticateRequest {
                name: name.into(),
                password: password.into(),
            })
            .await?;
        Ok(r.into_inner().token)
    };
    Ok(Tokens {
        root: token("root", "rootpw").await?,
        rw: token("rw", "rwpw").await?,
        ro: token("ro", "ropw").await?,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_rpc_needs_its_permission() -> anyhow::Result<()> {
    let cluster = Cluster::start(Backend::InProcess, Options::default()).await?;
    let leader = cluster.wait_for_leader(LIMIT).await?;
    let follower = *cluster.nodes.keys().find(|id| **id != leader).expect("a follower");
    let t = set_up(cluster.channel(leader), cluster.channel(follower)).await?;
    let (root, rw, ro) = (Some(t.root.as_str()), Some(t.rw.as_str()), Some(t.ro.as_str()));

    for member in [leader, follower] {
        let ch = cluster.channel(member);
        let mut kv = KvClient::new(ch.clone());
        let at = |what: &str| format!("{what} on member {member}");

        // Without a credential, or with a bad one.
        refused(
            kv.put(req(put("app/a"), None)).await,
            Code::InvalidArgument,
            "etcdserver: user name is empty",
            &at("anonymous put"),
        );
        refused(
            kv.range(req(range("app/a"), Some("keel.forged"))).await,
            Code::Unauthenticated,
            "etcdserver: invalid auth token",
            &at("forged token"),
        );

        // KV Put: write on the key.
        denied(kv.put(req(put("app/a"), ro)).await, &at("put by ro"));
        denied(kv.put(req(put("other"), rw)).await, &at("put outside the prefix"));
        allowed(kv.put(req(put("app/a"), rw)).await, &at("put by rw"));
        // KV Range: read on the range.
        allowed(kv.range(req(range("app/a"), ro)).await, &at("get by ro"));
        let all = pb::RangeRequest {
            key: b"\0".to_vec(),
            range_end: b"\0".to_vec(),
            ..Default::default()
        };
        denied(kv.range(req(all.clone(), rw)).await, &at("get of every key by rw"));
        allowed(kv.range(req(all, root)).await, &at("get of every key by root"));
        // KV DeleteRange: write on the range.
        let del = pb::DeleteRangeRequest {
            key: b"app/".to_vec(),
            range_end: b"app0".to_vec(),
            ..Default::default()
        };
        denied(kv.delete_range(req(del.clone(), ro)).await, &at("delete by ro"));
        allowed(kv.delete_range(req(del, rw)).await, &at("delete by rw"));
        // KV Txn: read on compares, each op of both branches.
        let txn = |failure_key: &str| pb::TxnRequest {
            compare: vec![],
            success: vec![pb::RequestOp {
                request: Some(pb::request_op::Request::RequestPut(put("app/t"))),
            }],
            failure: vec![pb::RequestOp {
                request: Some(pb::request_op::Request::RequestPut(put(failure_key))),
            }],
        };
        denied(
            kv.txn(req(txn("other"), rw)).await,
            &at("txn with a failure op outside"),
        );
        denied(kv.txn(req(txn("app/f"), ro)).await, &at("txn by ro"));
        allowed(kv.txn(req(txn("app/f"), rw)).await, &at("txn by rw"));
        // KV Compact: root.
        let rev = allowed(kv.range(req(range("app/t"), ro)).await, "rev")
            .header
            .expect("header")
            .revision;
        let compact = pb::CompactionRequest {
            revision: rev,
            physical: false,
        };
        denied(kv.compact(req(compact, rw)).await, &at("compact by rw"));
        if member == leader {
            allowed(kv.compact(req(compact, root)).await, &at("compact by root"));
        }

        // Watch: read on the range, checked when it is created.
        let mut watch = WatchClient::new(ch.clone());
        for (token, ok) in [(rw, true), (ro, true)] {
            let create = pb::WatchRequest {
                request_union: Some(pb::watch_request::RequestUnion::CreateRequest(pb::WatchCreateRequest {
                    key: b"app/".to_vec(),
                    range_end: b"app0".to_vec(),
                    ..Default::default()
                })),
            };
            let (tx, rx) = tokio::sync::mpsc::channel(1);
            tx.send(create).await?;
            let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
            let mut replies = allowed(watch.watch(req(stream, token)).await, &at("watch"));
            let first = tokio::time::timeout(LIMIT, replies.message()).await??.expect("a reply");
            assert_eq!(
                first.created && !first.canceled,
                ok,
                "{}: {first:?}",
                at("watch of app/")
            );
            drop(tx);
        }
        let outside = pb::WatchRequest {
            request_union: Some(pb::watch_request::RequestUnion::CreateRequest(pb::WatchCreateRequest {
                key: b"other".to_vec(),
                ..Default::default()
            })),
        };
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tx.send(outside).await?;
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
        let mut replies = allowed(watch.watch(req(stream, rw)).await, &at("watch"));
        let first = tokio::time::timeout(LIMIT, replies.message()).await??.expect("a reply");
        assert!(first.canceled, "{}: {first:?}", at("watch outside the prefix"));
        assert_eq!(first.cancel_reason, "etcdserver: permission denied");

        // Lease: any user grants; revoke needs write on every attached key.
        let mut lease = LeaseClient::new(ch.clone());
        refused(
            lease
                .lease_grant(req(pb::LeaseGrantRequest { ttl: 60, id: 0 }, None))
                .await,
            Code::InvalidArgument,
            "etcdserver: user name is empty",
            &at("anonymous grant"),
        );
        let granted = allowed(
            lease
                .lease_grant(req(pb::LeaseGrantRequest { ttl: 60, id: 0 }, ro))
                .await,
            &at("grant by ro"),
        );
        let mut leased = put("app/leased");
        leased.lease = granted.id;
        allowed(kv.put(req(leased, rw)).await, &at("put with a lease"));
        let revoke = pb::LeaseRevokeRequest { id: granted.id };
        denied(
            lease.lease_revoke(req(revoke, ro)).await,
            &at("revoke by ro of a lease on app/"),
        );
        allowed(lease.lease_revoke(req(revoke, rw)).await, &at("revoke by rw"));
        allowed(
            lease
                .lease_time_to_live(req(pb::LeaseTimeToLiveRequest { id: 1, keys: false }, ro))
                .await,
            &at("time to live by ro"),
        );

        // Cluster: listing is any user's; changes are root's.
        let mut cluster_api = ClusterClient::new(ch.clone());
        allowed(
            cluster_api
                .member_list(req(pb::MemberListRequest { linearizable: false }, ro))
                .await,
            &at("member list by ro"),
        );
        let remove = pb::MemberRemoveRequest { id: 99 };
        denied(
            cluster_api.member_remove(req(remove, rw)).await,
            &at("member remove by rw"),
        );
        refused(
            cluster_api.member_remove(req(remove, root)).await,
            Code::NotFound,
            "etcdserver: member not found",
            &at("member remove of an unknown member by root (allowed, then not found)"),
        );

        // Maintenance: status is any user's; the rest are root's.
        let mut maintenance = MaintenanceClient::new(ch.clone());
        allowed(
            maintenance.status(req(pb::StatusRequest {}, ro)).await,
            &at("status by ro"),
        );
        denied(
            maintenance.hash_kv(req(pb::HashKvRequest { revision: 0 }, rw)).await,
            &at("hashkv by rw"),
        );
        allowed(
            maintenance.hash_kv(req(pb::HashKvRequest { revision: 0 }, root)).await,
            &at("hashkv by root"),
        );
        denied(
            maintenance.defragment(req(pb::DefragmentRequest {}, rw)).await,
            &at("defragment by rw"),
        );
        denied(
            maintenance.snapshot(req(pb::SnapshotRequest {}, rw)).await,
            &at("snapshot by rw"),
        );

        // Auth: root's, except AuthStatus and Authenticate.
        let mut auth = AuthClient::new(ch.clone());
        denied(
            auth.user_list(req(pb::AuthUserListRequest {}, rw)).await,
            &at("user list by rw"),
        );
        let users = allowed(
            auth.user_list(req(pb::AuthUserListRequest {}, root)).await,
            &at("user list"),
        );
        assert_eq!(users.users, ["ro", "root", "rw"]);
        let add = pb::AuthRoleAddRequest {
            name: format!("new-{member}"),
        };
        denied(auth.role_add(req(add.clone(), rw)).await, &at("role add by rw"));
        allowed(auth.role_add(req(add, root)).await, &at("role add by root"));
        refused(
            auth.authenticate(pb::AuthenticateRequest {
                name: "rw".into(),
                password: "wrong".into(),
            })
            .await,
            Code::InvalidArgument,
            "etcdserver: authentication failed, invalid user ID or password",
            &at("a wrong password"),
        );
    }
    cluster.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_revoked_permission_or_a_new_password_takes_effect_at_once() -> anyhow::Result<()> {
    let cluster = Cluster::start(Backend::InProcess, Options::default()).await?;
    let leader = cluster.wait_for_leader(LIMIT).await?;
    let follower = *cluster.nodes.keys().find(|id| **id != leader).expect("a follower");
    let t = set_up(cluster.channel(leader), cluster.channel(follower)).await?;
    let mut kv = KvClient::new(cluster.channel(follower));
    allowed(
        kv.put(req(put("app/x"), Some(&t.rw))).await,
        "put before the revocation",
    );
    let mut auth = AuthClient::new(cluster.channel(leader));
    auth.role_revoke_permission(req(
        pb::AuthRoleRevokePermissionRequest {
            role: "app-rw".into(),
            key: b"app/".to_vec(),
            range_end: b"app0".to_vec(),
        },
        Some(&t.root),
    ))
    .await?;
    // The very next write through the follower, with the same token, is refused.
    denied(kv.put(req(put("app/x"), Some(&t.rw))).await, "put after the revocation");
    // A new password ends the old tokens.
    auth.user_change_password(req(
        pb::AuthUserChangePasswordRequest {
            name: "ro".into(),
            password: "new".into(),
            ..Default::default()
        },
        Some(&t.root),
    ))
    .await?;
    refused(
        kv.range(req(range("app/x"), Some(&t.ro))).await,
        Code::Unauthenticated,
        "etcdserver: invalid auth token",
        "the old token after a password change",
    );
    // Disabling auth lets everyone in again.
    auth.auth_disable(req(pb::AuthDisableRequest {}, Some(&t.root))).await?;
    allowed(kv.put(req(put("anything"), None)).await, "anonymous put with auth off");
    cluster.shutdown().await
}

/// keel-client (and so keelctl) with `ClientConfig::user`: it logs in, sends its token on every
/// request and stream (watch, lease keep-alive, lock), and carries on without one while auth is
/// disabled. Its endpoint is a follower.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keel_client_logs_in_and_is_held_to_its_permissions() -> anyhow::Result<()> {
    use keel_client::{Client, ClientConfig, Error};
    let cluster = Cluster::start(Backend::InProcess, Options::default()).await?;
    let leader = cluster.wait_for_leader(LIMIT).await?;
    let follower = *cluster.nodes.keys().find(|id| **id != leader).expect("a follower");
    let endpoint = vec![cluster.nodes[&follower].client_addr.to_string()];
    let as_user = |name: &str, password: &str| ClientConfig {
        user: Some((name.to_string(), password.to_string())),
        ..ClientConfig::default()
    };
    // Auth still off: a client with a user works without a token.
    let rw = Client::connect(endpoint.clone(), as_user("rw", "rwpw")).await?;
    rw.put("before", "1").await?;

    set_up(cluster.channel(leader), cluster.channel(follower)).await?;
    let denied_client = |e: Error, what: &str| match e {
        Error::Other(s) if s.code() == Code::PermissionDenied => {}
        other => panic!("{what}: {other:?}"),
    };
    // The client that started with auth off logs in once a member asks for a user.
    rw.put("app/a", "1").await.expect("the first put after auth enable");
    denied_client(rw.put("other", "1").await.expect_err("outside"), "put outside");
    let mut watch = rw
        .watch(keel_client::proto::WatchCreateRequest {
            key: b"app/".to_vec(),
            range_end: b"app0".to_vec(),
            ..Default::default()
        })
        .await?;
    rw.put("app/b", "2").await?;
    let batch = tokio::time::timeout(LIMIT, watch.next()).await??;
    assert_eq!(batch.events.len(), 1, "{batch:?}");
    let lease = rw.lease_grant(60).await?.id;
    let keeper = rw.keep_alive(lease);
    rw.lock("app/lock", lease, LIMIT).await?;
    let ro = Client::connect(endpoint.clone(), as_user("ro", "ropw")).await?;
    assert!(ro.get("app/a").await?.is_some());
    denied_client(
        ro.lock("app/lock2", lease, LIMIT).await.expect_err("ro locks"),
        "lock by ro",
    );
    drop(keeper);
    let wrong = Client::connect(endpoint, as_user("rw", "wrong")).await?;
    match wrong.get("app/a").await {
        Err(Error::InvalidArgument(m)) => {
            assert_eq!(m, "etcdserver: authentication failed, invalid user ID or password")
        }
        other => panic!("a wrong password: {other:?}"),
    }
    cluster.shutdown().await
}

/// With `--client-cert-auth`, a request without a token is its client certificate's common name
/// (as etcd): "test-client", the test cluster's client certificate. A token, when sent, wins.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_certificates_common_name_is_its_user() -> anyhow::Result<()> {
    let options = Options {
        tls: Some(keel_testkit::tls::TlsOptions {
            client_cert_auth: true,
            ..Default::default()
        }),
        ..Default::default()
    };
    let cluster = Cluster::start(Backend::InProcess, options).await?;
    let leader = cluster.wait_for_leader(LIMIT).await?;
    let follower = *cluster.nodes.keys().find(|id| **id != leader).expect("a follower");
    let tokens = set_up(cluster.channel(leader), cluster.channel(follower)).await?;
    let mut auth = AuthClient::new(cluster.channel(leader));
    let root = Some(tokens.root.as_str());
    let add = pb::AuthUserAddRequest {
        name: "test-client".into(),
        options: Some(authpb::UserAddOptions { no_password: true }),
        ..Default::default()
    };
    allowed(auth.user_add(req(add, root)).await, "user add without a password");
    let grant = pb::AuthUserGrantRoleRequest {
        user: "test-client".into(),
        role: "app-rw".into(),
    };
    allowed(auth.user_grant_role(req(grant, root)).await, "grant");
    let mut kv = KvClient::new(cluster.channel(follower));
    allowed(
        kv.put(req(put("app/cert"), None)).await,
        "put as the certificate's user",
    );
    denied(kv.put(req(put("other"), None)).await, "put outside its permission");
    allowed(
        kv.put(req(put("other"), root)).await,
        "root's token over the certificate",
    );
    refused(
        auth.authenticate(pb::AuthenticateRequest {
            name: "test-client".into(),
            password: String::new(),
        })
        .await,
        Code::InvalidArgument,
        "etcdserver: authentication failed, invalid user ID or password",
        "a user without a password cannot log in with one",
    );
    cluster.shutdown().await
}

/// Password guessing is slowed, then refused for a while, per source address (and counted).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn repeated_failed_logins_are_slowed_then_refused() -> anyhow::Result<()> {
    let cluster = Cluster::start(Backend::InProcess, Options::default()).await?;
    let leader = cluster.wait_for_leader(LIMIT).await?;
    let follower = *cluster.nodes.keys().find(|id| **id != leader).expect("a follower");
    set_up(cluster.channel(leader), cluster.channel(follower)).await?;
    let mut auth = AuthClient::new(cluster.channel(leader));
    let login = |password: &str| pb::AuthenticateRequest {
        name: "rw".into(),
        password: password.into(),
    };
    let started = std::time::Instant::now();
    let mut failures = 0;
    let refused_at = loop {
        let r = auth.authenticate(login("guess")).await.expect_err("a wrong password");
        if r.code() == Code::ResourceExhausted {
            assert_eq!(r.message(), "etcdserver: too many requests");
            break failures;
        }
        assert_eq!(r.code(), Code::InvalidArgument, "{r:?}");
        failures += 1;
        assert!(failures <= 20, "never refused");
    };
    assert!(refused_at >= 3, "refused after {refused_at} failures");
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "failures were answered at once ({:?})",
        started.elapsed()
    );
    // Even the right password is refused now, unchecked, from this address.
    let right = auth.authenticate(login("rwpw")).await.expect_err("throttled");
    assert_eq!(right.code(), Code::ResourceExhausted);
    // Another member keeps its own count: the right password works there.
    let mut other = AuthClient::new(cluster.channel(follower));
    other.authenticate(login("rwpw")).await?;
    let metrics = metrics_text(&cluster, leader).await?;
    assert!(
        metrics.contains("keel_auth_attempts_total{") && metrics.contains("result=\"throttled\""),
        "metrics"
    );
    cluster.shutdown().await
}

/// The member's /metrics text.
async fn metrics_text(cluster: &Cluster, id: u64) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = cluster.nodes[&id].metrics_addr;
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n").await?;
    let mut body = String::new();
    s.read_to_string(&mut body).await?;
    Ok(body)
}

/// Elections (etcd's v3election): campaigning writes the election's key (write permission, at
/// apply); Leader shows the election's keys (read permission).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn elections_need_write_to_campaign_and_read_to_see_the_leader() -> anyhow::Result<()> {
    use keel_proto::etcd::v3electionpb::{election_client::ElectionClient, CampaignRequest, LeaderRequest};
    let cluster = Cluster::start(Backend::InProcess, Options::default()).await?;
    let leader = cluster.wait_for_leader(LIMIT).await?;
    let follower = *cluster.nodes.keys().find(|id| **id != leader).expect("a follower");
    let t = set_up(cluster.channel(leader), cluster.channel(follower)).await?;
    let (root, rw, ro) = (Some(t.root.as_str()), Some(t.rw.as_str()), Some(t.ro.as_str()));
    let mut lease = LeaseClient::new(cluster.channel(follower));
    let id = allowed(
        lease
            .lease_grant(req(pb::LeaseGrantRequest { ttl: 60, id: 0 }, rw))
            .await,
        "grant",
    )
    .id;
    let mut election = ElectionClient::new(cluster.channel(follower));
    let campaign = |name: &str| CampaignRequest {
        name: name.into(),
        lease: id,
        value: b"me".to_vec(),
    };
    denied(election.campaign(req(campaign("app/el"), ro)).await, "campaign by ro");
    allowed(election.campaign(req(campaign("app/el"), rw)).await, "campaign by rw");
    allowed(
        election.campaign(req(campaign("other/el"), root)).await,
        "campaign by root",
    );
    let leader_of = |name: &str| LeaderRequest { name: name.into() };
    allowed(election.leader(req(leader_of("app/el"), ro)).await, "leader by ro");
    denied(
        election.leader(req(leader_of("other/el"), ro)).await,
        "leader outside ro's keys",
    );
    cluster.shutdown().await
}

/// `--max-lock-waiters-per-user`: one user's waiting lockers are bounded on a member (etcd's
/// "too many requests", counted in `keel_limit_refusals_total`); another user still waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_users_waiting_lockers_are_bounded() -> anyhow::Result<()> {
    use keel_proto::etcd::v3lockpb::{lock_client::LockClient, LockRequest};
    let options = Options {
        flags: vec!["--max-lock-waiters-per-user".into(), "1".into()],
        ..Default::default()
    };
    let cluster = Cluster::start(Backend::InProcess, options).await?;
    let leader = cluster.wait_for_leader(LIMIT).await?;
    let follower = *cluster.nodes.keys().find(|id| **id != leader).expect("a follower");
    let t = set_up(cluster.channel(leader), cluster.channel(follower)).await?;
    let mut lease = LeaseClient::new(cluster.channel(leader));
    let mut grant = async |token: &str| -> anyhow::Result<i64> {
        let r = lease
            .lease_grant(req(pb::LeaseGrantRequest { ttl: 60, id: 0 }, Some(token)))
            .await?;
        Ok(r.into_inner().id)
    };
    let (l1, l2, l3, l4) = (
        grant(&t.rw).await?,
        grant(&t.rw).await?,
        grant(&t.rw).await?,
        grant(&t.root).await?,
    );
    let lock = |lease: i64| LockRequest {
        name: b"app/l".to_vec(),
        lease,
    };
    let mut locks = LockClient::new(cluster.channel(leader));
    allowed(locks.lock(req(lock(l1), Some(&t.rw))).await, "the first lock is held");
    // rw's second locker waits (its one allowed waiter) ...
    let waiting = {
        let mut locks = locks.clone();
        let token = t.rw.clone();
        tokio::spawn(async move { locks.lock(req(lock(l2), Some(&token))).await })
    };
    let deadline = std::time::Instant::now() + LIMIT;
    loop {
        let text = metrics_text(&cluster, leader).await?;
        if text
            .lines()
            .any(|l| l.starts_with("keel_lock_waiters{") && l.ends_with(" 1"))
        {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the second locker never waited");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // ... its third is refused ...
    let third = tokio::time::timeout(LIMIT, locks.lock(req(lock(l3), Some(&t.rw))))
        .await
        .expect("the third locker was made to wait, not refused");
    refused(
        third,
        Code::ResourceExhausted,
        "etcdserver: too many requests",
        "a second waiting locker of one user",
    );
    // ... while root may still wait.
    let root_waits = {
        let mut locks = locks.clone();
        let token = t.root.clone();
        tokio::spawn(async move { locks.lock(req(lock(l4), Some(&token))).await })
    };
    let deadline = std::time::Instant::now() + LIMIT;
    loop {
        let text = metrics_text(&cluster, leader).await?;
        if text
            .lines()
            .any(|l| l.starts_with("keel_lock_waiters{") && l.ends_with(" 2"))
        {
            let counted = text
                .lines()
                .any(|l| l.starts_with("keel_limit_refusals_total{") && l.contains("lock_waiters_per_user"));
            assert!(counted, "the refusal is counted");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "root's locker never waited");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    waiting.abort();
    root_waits.abort();
    cluster.shutdown().await
}
