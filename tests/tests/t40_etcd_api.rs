//! keel's etcd v3 API at the wire (issue 16, item 2): the behaviour etcd's clients depend on,
//! each asserted on the raw gRPC messages. The real clients (etcdctl, python-etcd3, the Rust
//! etcd-client crate) run in t39 and keel-bench's etcd_client test.

use std::time::Duration;

use keel_proto::etcd::etcdserverpb as pb;
use keel_proto::etcd::etcdserverpb::{
    cluster_client::ClusterClient, compare, kv_client::KvClient, lease_client::LeaseClient,
    maintenance_client::MaintenanceClient, range_request, request_op, response_op, watch_client::WatchClient,
    watch_request,
};
use keel_testkit::{Backend, Cluster, Options};
use tonic::transport::Channel;
use tonic::Code;

const LIMIT: Duration = Duration::from_secs(20);

fn kv(cluster: &Cluster, id: u64) -> KvClient<Channel> {
    KvClient::new(cluster.channel(id))
}

fn put(key: &str, value: &str) -> pb::PutRequest {
    pb::PutRequest {
        key: key.into(),
        value: value.into(),
        ..Default::default()
    }
}

fn range(key: &str, end: &str) -> pb::RangeRequest {
    pb::RangeRequest {
        key: key.into(),
        range_end: end.into(),
        ..Default::default()
    }
}

fn op_put(key: &str, value: &str) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(request_op::Request::RequestPut(put(key, value))),
    }
}

fn cmp(key: &str, result: compare::CompareResult, target: compare::TargetUnion) -> pb::Compare {
    let t = match &target {
        compare::TargetUnion::Version(_) => compare::CompareTarget::Version,
        compare::TargetUnion::CreateRevision(_) => compare::CompareTarget::Create,
        compare::TargetUnion::ModRevision(_) => compare::CompareTarget::Mod,
        compare::TargetUnion::Value(_) => compare::CompareTarget::Value,
        compare::TargetUnion::Lease(_) => compare::CompareTarget::Lease,
    };
    pb::Compare {
        result: result as i32,
        target: t as i32,
        key: key.into(),
        target_union: Some(target),
        range_end: Vec::new(),
    }
}

fn keys(r: &pb::RangeResponse) -> Vec<String> {
    r.kvs
        .iter()
        .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
        .collect()
}

/// The header every response carries: this cluster, the member asked, a revision, the term.
fn check_header(h: Option<&pb::ResponseHeader>, member: u64, what: &str) -> i64 {
    let h = h.unwrap_or_else(|| panic!("{what}: no header"));
    assert_ne!(h.cluster_id, 0, "{what}: cluster id");
    assert_eq!(h.member_id, member, "{what}: member id");
    assert!(h.raft_term > 0, "{what}: raft term");
    assert!(h.revision > 0, "{what}: revision");
    h.revision
}

fn assert_status(r: Result<impl std::fmt::Debug, tonic::Status>, code: Code, text: &str) {
    let s = r.expect_err(text);
    assert_eq!((s.code(), s.message()), (code, text));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kv_requests_behave_as_etcds() -> anyhow::Result<()> {
    let cluster = Cluster::start(Backend::InProcess, Options::default()).await?;
    let leader = cluster.wait_for_leader(LIMIT).await?;
    let follower = *cluster.nodes.keys().find(|id| **id != leader).expect("a follower");
    let mut c = kv(&cluster, follower);

    // Headers, and one revision per write txn.
    let r1 = check_header(
        c.put(put("k/a", "1")).await?.into_inner().header.as_ref(),
        follower,
        "put",
    );
    let txn = pb::TxnRequest {
        success: vec![op_put("k/b", "2"), op_put("k/c", "3"), op_put("k/d", "4")],
        ..Default::default()
    };
    let t = c.txn(txn).await?.into_inner();
    let r2 = check_header(t.header.as_ref(), follower, "txn");
    assert_eq!(r2, r1 + 1, "a txn of three puts takes one revision");
    let all = c.range(range("k/", "k0")).await?.into_inner();
    check_header(all.header.as_ref(), follower, "range");
    assert_eq!(keys(&all), ["k/a", "k/b", "k/c", "k/d"]);
    assert!(all.kvs[1..].iter().all(|kv| kv.mod_revision == r2));

    // Range options.
    let limited = c
        .range(pb::RangeRequest {
            limit: 2,
            ..range("k/", "k0")
        })
        .await?
        .into_inner();
    assert_eq!(
        (keys(&limited), limited.more, limited.count),
        (vec!["k/a".into(), "k/b".into()], true, 4)
    );
    let desc = c
        .range(pb::RangeRequest {
            sort_order: range_request::SortOrder::Descend as i32,
            sort_target: range_request::SortTarget::Create as i32,
            limit: 2,
            ..range("k/", "k0")
        })
        .await?
        .into_inner();
    assert_eq!(
        keys(&desc),
        ["k/b", "k/c"],
        "newest creations first, ties in key order, then the limit"
    );
    let filtered = c
        .range(pb::RangeRequest {
            max_create_revision: r1,
            ..range("k/", "k0")
        })
        .await?
        .into_inner();
    assert_eq!(keys(&filtered), ["k/a"]);
    let filtered = c
        .range(pb::RangeRequest {
            min_mod_revision: r2,
            ..range("k/", "k0")
        })
        .await?
        .into_inner();
    assert_eq!(filtered.kvs.len(), 3);
    let only_keys = c
        .range(pb::RangeRequest {
            keys_only: true,
            ..range("k/", "k0")
        })
        .await?
        .into_inner();
    assert!(only_keys.kvs.iter().all(|kv| kv.value.is_empty()) && only_keys.kvs.len() == 4);
    let counted = c
        .range(pb::RangeRequest {
            count_only: true,
            ..range("k/", "k0")
        })
        .await?
        .into_inner();
    assert_eq!((counted.count, counted.kvs.len()), (4, 0));
    let serial = c
        .range(pb::RangeRequest {
            serializable: true,
            ..range("k/a", "")
        })
        .await?
        .into_inner();
    assert_eq!(serial.kvs[0].value, b"1");
    c.put(put("k/a", "changed")).await?;
    let past = c
        .range(pb::RangeRequest {
            revision: r1,
            ..range("k/", "k0")
        })
        .await?
        .into_inner();
    assert_eq!(
        (keys(&past), past.kvs[0].value.as_slice()),
        (vec!["k/a".to_string()], &b"1"[..])
    );
    assert_status(
        c.range(pb::RangeRequest {
            revision: 1 << 40,
            ..range("k/a", "")
        })
        .await,
        Code::OutOfRange,
        "etcdserver: mvcc: required revision is a future revision",
    );
    let empty = c.range(range("k/z", "k/a")).await?.into_inner();
    assert!(empty.kvs.is_empty(), "a range that ends before it starts is empty");

    // prev_kv, ignore_value, ignore_lease, and a key's lease.
    let mut leases = LeaseClient::new(cluster.channel(follower));
    let lease = leases
        .lease_grant(pb::LeaseGrantRequest { ttl: 60, id: 0 })
        .await?
        .into_inner()
        .id;
    let p = c
        .put(pb::PutRequest {
            lease,
            prev_kv: true,
            ..put("k/a", "leased")
        })
        .await?
        .into_inner();
    assert_eq!(p.prev_kv.expect("prev kv").value, b"changed");
    c.put(pb::PutRequest {
        ignore_lease: true,
        ..put("k/a", "new value")
    })
    .await?;
    let got = c.range(range("k/a", "")).await?.into_inner().kvs.remove(0);
    assert_eq!(
        (got.value.as_slice(), got.lease),
        (&b"new value"[..], lease),
        "ignore_lease keeps the lease"
    );
    c.put(pb::PutRequest {
        ignore_value: true,
        lease,
        ..put("k/a", "")
    })
    .await?;
    let got = c.range(range("k/a", "")).await?.into_inner().kvs.remove(0);
    assert_eq!(got.value, b"new value", "ignore_value keeps the value");
    assert_status(
        c.put(pb::PutRequest {
            ignore_value: true,
            ..put("k/missing", "")
        })
        .await,
        Code::InvalidArgument,
        "etcdserver: key not found",
    );
    assert_status(
        c.put(pb::PutRequest {
            ignore_value: true,
            ..put("k/a", "v")
        })
        .await,
        Code::InvalidArgument,
        "etcdserver: value is provided",
    );
    assert_status(
        c.put(pb::PutRequest {
            ignore_lease: true,
            lease,
            ..put("k/a", "v")
        })
        .await,
        Code::InvalidArgument,
        "etcdserver: lease is provided",
    );
    assert_status(
        c.put(pb::PutRequest {
            lease: 12345,
            ..put("k/a", "v")
        })
        .await,
        Code::NotFound,
        "etcdserver: requested lease not found",
    );

    // Compares: each target, a range compare, and a nested txn.
    use compare::{CompareResult as R, TargetUnion as T};
    let a = c.range(range("k/a", "")).await?.into_inner().kvs.remove(0);
    let holds = [
        cmp("k/a", R::Equal, T::Version(a.version)),
        cmp("k/a", R::Equal, T::CreateRevision(a.create_revision)),
        cmp("k/a", R::Equal, T::ModRevision(a.mod_revision)),
        cmp("k/a", R::Equal, T::Value(a.value.clone())),
        cmp("k/a", R::Equal, T::Lease(lease)),
        cmp("k/missing", R::Equal, T::CreateRevision(0)),
        pb::Compare {
            range_end: b"k0".to_vec(),
            ..cmp("k/", R::Greater, T::CreateRevision(0))
        },
    ];
    for c1 in holds {
        let t = c
            .txn(pb::TxnRequest {
                compare: vec![c1.clone()],
                ..Default::default()
            })
            .await?
            .into_inner();
        assert!(t.succeeded, "{c1:?} holds");
    }
    let nested = pb::TxnRequest {
        compare: vec![cmp("k/b", R::Equal, T::Value(b"2".to_vec()))],
        success: vec![pb::RequestOp {
            request: Some(request_op::Request::RequestTxn(pb::TxnRequest {
                compare: vec![cmp("k/c", R::Equal, T::Value(b"nope".to_vec()))],
                success: vec![op_put("k/n", "inner-success")],
                failure: vec![op_put("k/n", "inner-failure")],
            })),
        }],
        ..Default::default()
    };
    let t = c.txn(nested).await?.into_inner();
    match &t.responses[0].response {
        Some(response_op::Response::ResponseTxn(inner)) => assert!(!inner.succeeded),
        other => panic!("a nested txn's response: {other:?}"),
    }
    assert_eq!(
        c.range(range("k/n", "")).await?.into_inner().kvs[0].value,
        b"inner-failure"
    );

    // Refusals in etcd's words.
    assert_status(
        c.range(range("", "")).await,
        Code::InvalidArgument,
        "etcdserver: key is not provided",
    );
    let many = pb::TxnRequest {
        success: (0..200).map(|i| op_put(&format!("k/many{i}"), "x")).collect(),
        ..Default::default()
    };
    assert_status(
        c.txn(many).await,
        Code::InvalidArgument,
        "etcdserver: too many operations in txn request",
    );
    let twice = pb::TxnRequest {
        success: vec![op_put("k/dup", "1"), op_put("k/dup", "2")],
        ..Default::default()
    };
    assert_status(
        c.txn(twice).await,
        Code::InvalidArgument,
        "etcdserver: duplicate key given in txn request",
    );
    assert_status(
        leases.lease_revoke(pb::LeaseRevokeRequest { id: 424242 }).await,
        Code::NotFound,
        "etcdserver: requested lease not found",
    );

    // Compact: reads below the floor fail, at it they work; physical answers once done here.
    let now = c
        .put(put("k/e", "5"))
        .await?
        .into_inner()
        .header
        .expect("header")
        .revision;
    let compacted = c
        .compact(pb::CompactionRequest {
            revision: now,
            physical: true,
        })
        .await?
        .into_inner();
    check_header(compacted.header.as_ref(), follower, "compact");
    assert_status(
        c.range(pb::RangeRequest {
            revision: r1,
            ..range("k/a", "")
        })
        .await,
        Code::OutOfRange,
        "etcdserver: mvcc: required revision has been compacted",
    );
    let at = c
        .range(pb::RangeRequest {
            revision: now,
            ..range("k/e", "")
        })
        .await?
        .into_inner();
    assert_eq!(at.kvs[0].value, b"5");
    assert_status(
        c.compact(pb::CompactionRequest {
            revision: now - 1,
            physical: false,
        })
        .await,
        Code::OutOfRange,
        "etcdserver: mvcc: required revision has been compacted",
    );
    cluster.shutdown().await
}

/// The next response on a watch stream, within the limit.
async fn next(stream: &mut tonic::Streaming<pb::WatchResponse>) -> pb::WatchResponse {
    tokio::time::timeout(LIMIT, stream.message())
        .await
        .expect("a watch response in time")
        .expect("the stream is fine")
        .expect("the stream is open")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn watch_streams_answer_as_etcds() -> anyhow::Result<()> {
    let cluster = Cluster::start(Backend::InProcess, Options::default()).await?;
    let leader = cluster.wait_for_leader(LIMIT).await?;
    let mut c = kv(&cluster, leader);
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let mut out = WatchClient::new(cluster.channel(leader))
        .watch(tokio_stream::wrappers::UnboundedReceiverStream::new(rx))
        .await?
        .into_inner();
    let create = |key: &str, end: &str, start: i64| pb::WatchRequest {
        request_union: Some(watch_request::RequestUnion::CreateRequest(pb::WatchCreateRequest {
            key: key.into(),
            range_end: end.into(),
            start_revision: start,
            prev_kv: true,
            ..Default::default()
        })),
    };
    let progress = || pb::WatchRequest {
        request_union: Some(watch_request::RequestUnion::ProgressRequest(
            pb::WatchProgressRequest {},
        )),
    };

    // Progress on a stream without watches: one answer, watch id -1, the current revision.
    let now = c
        .put(put("w/x", "0"))
        .await?
        .into_inner()
        .header
        .expect("header")
        .revision;
    tx.send(progress())?;
    let p = next(&mut out).await;
    assert_eq!((p.watch_id, p.created, p.canceled), (-1, false, false));
    assert!(p.header.expect("header").revision >= now);

    // Create: the reply comes first, with the revision the watch starts after; events follow.
    tx.send(create("w/", "w0", 0))?;
    let created = next(&mut out).await;
    assert!(created.created && !created.canceled);
    let id = created.watch_id;
    assert!(created.header.expect("header").revision >= now);
    let r = c
        .put(put("w/a", "1"))
        .await?
        .into_inner()
        .header
        .expect("header")
        .revision;
    let ev = next(&mut out).await;
    assert_eq!((ev.watch_id, ev.events.len()), (id, 1));
    assert_eq!(ev.events[0].kv.as_ref().expect("kv").mod_revision, r);
    assert_eq!(ev.header.expect("header").revision, r);

    // A range that ends before it starts: refused with watch id -1 and etcd's reason.
    tx.send(create("w/z", "w/a", 0))?;
    let refused = next(&mut out).await;
    assert_eq!(
        (
            refused.watch_id,
            refused.created,
            refused.canceled,
            refused.cancel_reason.as_str()
        ),
        (-1, true, true, "mvcc: watcher range is empty")
    );

    // Cancel: answered with canceled and no reason; a cancel of an unknown watch is not answered
    // (the progress reply that follows comes next).
    tx.send(pb::WatchRequest {
        request_union: Some(watch_request::RequestUnion::CancelRequest(pb::WatchCancelRequest {
            watch_id: id,
        })),
    })?;
    let cancelled = next(&mut out).await;
    assert_eq!(
        (cancelled.watch_id, cancelled.canceled, cancelled.cancel_reason.as_str()),
        (id, true, "")
    );
    tx.send(pb::WatchRequest {
        request_union: Some(watch_request::RequestUnion::CancelRequest(pb::WatchCancelRequest {
            watch_id: 999,
        })),
    })?;
    tx.send(progress())?;
    let p = next(&mut out).await;
    assert_eq!(
        (p.watch_id, p.canceled),
        (-1, false),
        "the unknown cancel went unanswered"
    );

    // A start below the compaction: created, then canceled with the compaction revision.
    let top = c
        .put(put("w/b", "2"))
        .await?
        .into_inner()
        .header
        .expect("header")
        .revision;
    c.compact(pb::CompactionRequest {
        revision: top,
        physical: true,
    })
    .await?;
    tx.send(create("w/", "w0", 1))?;
    let first = next(&mut out).await;
    assert!(first.created && !first.canceled, "{first:?}");
    let second = next(&mut out).await;
    assert!(second.canceled && second.compact_revision > 0, "{second:?}");
    assert_eq!(
        second.cancel_reason,
        "etcdserver: mvcc: required revision has been compacted"
    );
    // compact_revision is "the minimum index" a watch may start at (etcd's API reference); clients
    // watch again from there (the Go client's users on ErrCompacted), and that watch must hold,
    // or they loop on the refusal.
    let again = second.compact_revision;
    tx.send(create("w/", "w0", again))?;
    let created = next(&mut out).await;
    assert!(created.created && !created.canceled, "watch from {again}: {created:?}");
    let after = c
        .put(put("w/c", "3"))
        .await?
        .into_inner()
        .header
        .expect("header")
        .revision;
    let got = next(&mut out).await;
    assert_eq!(
        (got.watch_id, got.canceled, got.events.len()),
        (created.watch_id, false, 1),
        "{got:?}"
    );
    assert_eq!(got.events[0].kv.as_ref().map(|kv| kv.mod_revision), Some(after as i64));
    drop(tx);
    cluster.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn maintenance_answers_for_keel() -> anyhow::Result<()> {
    let cluster = Cluster::start(Backend::InProcess, Options::default()).await?;
    let leader = cluster.wait_for_leader(LIMIT).await?;
    let mut c = kv(&cluster, leader);
    for i in 0..20 {
        c.put(put(&format!("h/{i}"), &i.to_string())).await?;
    }
    let top = c
        .put(put("h/last", "x"))
        .await?
        .into_inner()
        .header
        .expect("header")
        .revision;
    // HashKV: the same hash on every member at the same revision.
    let mut hashes = Vec::new();
    for id in cluster.nodes.keys().copied().collect::<Vec<_>>() {
        let mut m = MaintenanceClient::new(cluster.channel(id));
        let deadline = tokio::time::Instant::now() + LIMIT;
        loop {
            // A member that has not applied `top` yet says so; ask again.
            match m.hash_kv(pb::HashKvRequest { revision: top }).await {
                Ok(h) => {
                    let h = h.into_inner();
                    check_header(h.header.as_ref(), id, "hash_kv");
                    hashes.push(h.hash);
                    break;
                }
                Err(e) => assert_eq!(e.message(), "etcdserver: mvcc: required revision is a future revision"),
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "member {id} did not reach revision {top}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert!(hashes.windows(2).all(|w| w[0] == w[1]), "{hashes:?}");
    // Status: a database size, a version etcd's clients accept, the leader.
    let mut m = MaintenanceClient::new(cluster.channel(leader));
    let s = m.status(pb::StatusRequest {}).await?.into_inner();
    check_header(s.header.as_ref(), leader, "status");
    assert!(s.db_size > 0);
    let mut version = s.version.split('.').map(|p| p.parse::<u32>().expect("a number"));
    assert!((version.next(), version.next()) >= (Some(3), Some(4)), "{}", s.version);
    assert_eq!(s.leader, leader);
    // Alarms: none; Defragment: answers.
    let alarms = m.alarm(pb::AlarmRequest::default()).await?.into_inner();
    assert!(alarms.alarms.is_empty());
    m.defragment(pb::DefragmentRequest {}).await?;
    // Members: add a learner that never starts, move it (MemberUpdate), remove it.
    let mut members = ClusterClient::new(cluster.channel(leader));
    let added = members
        .member_add(pb::MemberAddRequest {
            peer_ur_ls: vec!["http://127.0.0.77:2380".into()],
            is_learner: true,
        })
        .await?
        .into_inner();
    let new = added.member.expect("the new member");
    assert!(
        new.is_learner && new.name.is_empty() && new.client_ur_ls.is_empty(),
        "{new:?}"
    );
    assert_status(
        members.member_promote(pb::MemberPromoteRequest { id: new.id }).await,
        Code::FailedPrecondition,
        "etcdserver: can only promote a learner member which is in sync with leader",
    );
    assert_status(
        members.member_promote(pb::MemberPromoteRequest { id: leader }).await,
        Code::FailedPrecondition,
        "etcdserver: can only promote a learner member",
    );
    let updated = members
        .member_update(pb::MemberUpdateRequest {
            id: new.id,
            peer_ur_ls: vec!["http://127.0.0.78:2390".into()],
        })
        .await?
        .into_inner();
    let moved = updated.members.iter().find(|m| m.id == new.id).expect("still a member");
    assert_eq!(moved.peer_ur_ls, ["http://127.0.0.78:2390"]);
    assert_status(
        members
            .member_update(pb::MemberUpdateRequest {
                id: 999,
                peer_ur_ls: vec!["http://127.0.0.79:1".into()],
            })
            .await,
        Code::NotFound,
        "etcdserver: member not found",
    );
    let left = members
        .member_remove(pb::MemberRemoveRequest { id: new.id })
        .await?
        .into_inner();
    assert!(left.members.iter().all(|m| m.id != new.id));
    assert_status(
        members.member_remove(pb::MemberRemoveRequest { id: new.id }).await,
        Code::NotFound,
        "etcdserver: member not found",
    );

    // MoveLeader: to another voter; to a non-member, etcd's refusal.
    assert_status(
        m.move_leader(pb::MoveLeaderRequest { target_id: 77 }).await,
        Code::FailedPrecondition,
        "etcdserver: bad leader transferee",
    );
    let target = *cluster.nodes.keys().find(|id| **id != leader).expect("another member");
    m.move_leader(pb::MoveLeaderRequest { target_id: target }).await?;
    assert_eq!(cluster.wait_for_leader(LIMIT).await?, target);
    cluster.shutdown().await
}
