//! No secret is kept anywhere (issue 17, item 2): after users are added with known passwords,
//! log in (on the leader and through a follower), fail a login, change a password, write enough
//! for snapshots and take a backup, not one byte sequence of a password or a token is found in
//! any file of any member (the Raft log and state machine in sled, snapshot files), in the
//! backup, or in any member's log output (at debug level), and no error message names one.

use std::path::Path;
use std::time::Duration;

use keel_proto::etcd::etcdserverpb as pb;
use keel_proto::etcd::etcdserverpb::{
    auth_client::AuthClient, kv_client::KvClient, maintenance_client::MaintenanceClient,
};
use keel_testkit::{Backend, Cluster, Options};

const LIMIT: Duration = Duration::from_secs(20);

fn with_token<T>(msg: T, token: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert("token", token.parse().expect("ascii"));
    r
}

/// Every file under `dir` (recursively) that contains `needle`.
fn files_containing(dir: &Path, needle: &[u8], found: &mut Vec<String>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            files_containing(&path, needle, found)?;
        } else if let Ok(bytes) = std::fs::read(&path) {
            if bytes.windows(needle.len()).any(|w| w == needle) {
                found.push(path.display().to_string());
            }
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_password_or_token_is_written_anywhere() -> anyhow::Result<()> {
    let flags = ["--log-level", "debug", "--snapshot-logs", "40"]
        .map(String::from)
        .to_vec();
    let mut cluster = Cluster::start(
        Backend::Process,
        Options {
            flags,
            ..Default::default()
        },
    )
    .await?;
    let leader = cluster.wait_for_leader(LIMIT).await?;
    let follower = *cluster.nodes.keys().find(|id| **id != leader).expect("a follower");
    let root_pw = "R00t-pw-6d1f0e";
    let alice_pw = "Al1ce-pw-93b2aa";
    let alice_new_pw = "Al1ce-new-pw-47c0de";
    let wrong_pw = "Wr0ng-pw-c3d9a1";

    let mut auth = AuthClient::new(cluster.channel(leader));
    for (name, pw) in [("root", root_pw), ("alice", alice_pw)] {
        auth.user_add(pb::AuthUserAddRequest {
            name: name.into(),
            password: pw.into(),
            ..Default::default()
        })
        .await?;
    }
    auth.user_grant_role(pb::AuthUserGrantRoleRequest {
        user: "root".into(),
        role: "root".into(),
    })
    .await?;
    auth.user_grant_role(pb::AuthUserGrantRoleRequest {
        user: "alice".into(),
        role: "root".into(),
    })
    .await?;
    auth.auth_enable(pb::AuthEnableRequest {}).await?;

    let mut tokens = Vec::new();
    for member in [leader, follower] {
        let mut a = AuthClient::new(cluster.channel(member));
        let login = |name: &str, pw: &str| pb::AuthenticateRequest {
            name: name.into(),
            password: pw.into(),
        };
        tokens.push(a.authenticate(login("root", root_pw)).await?.into_inner().token);
        tokens.push(a.authenticate(login("alice", alice_pw)).await?.into_inner().token);
        let failed = a
            .authenticate(login("alice", wrong_pw))
            .await
            .expect_err("a wrong password");
        assert!(
            !failed.message().contains(wrong_pw),
            "the error names the password: {failed:?}"
        );
    }
    let root = tokens[0].clone();
    // Enough writes for every member to build snapshots (--snapshot-logs 40).
    let mut kv = KvClient::new(cluster.channel(follower));
    for i in 0..120 {
        let put = pb::PutRequest {
            key: format!("k{i}").into(),
            value: b"v".to_vec(),
            ..Default::default()
        };
        kv.put(with_token(put, &tokens[1 + i % 3])).await?;
    }
    auth.user_change_password(with_token(
        pb::AuthUserChangePasswordRequest {
            name: "alice".into(),
            password: alice_new_pw.into(),
            ..Default::default()
        },
        &root,
    ))
    .await?;
    // A backup, through etcd's Snapshot, into the cluster's directory.
    let mut maintenance = MaintenanceClient::new(cluster.channel(leader));
    let mut stream = maintenance
        .snapshot(with_token(pb::SnapshotRequest {}, &root))
        .await?
        .into_inner();
    let mut backup = Vec::new();
    while let Some(chunk) = stream.message().await? {
        backup.extend_from_slice(&chunk.blob);
    }
    assert!(backup.len() > 1000, "a backup of {} bytes", backup.len());
    std::fs::write(cluster.dir().join("backup.snap"), &backup)?;

    let ids: Vec<u64> = cluster.nodes.keys().copied().collect();
    for id in ids {
        cluster.stop(id).await?;
    }
    // The search would find nothing in an empty directory: make sure the members wrote their
    // data and logs where it looks, and that a needle that is there is found.
    let mut found = Vec::new();
    files_containing(cluster.dir(), b"authentication failed", &mut found)?;
    assert!(
        !found.is_empty(),
        "the members' logs are not under {}",
        cluster.dir().display()
    );
    for secret in [root_pw, alice_pw, alice_new_pw, wrong_pw]
        .into_iter()
        .chain(tokens.iter().map(String::as_str))
    {
        let mut found = Vec::new();
        files_containing(cluster.dir(), secret.as_bytes(), &mut found)?;
        assert!(found.is_empty(), "a secret is kept in {found:?}");
    }
    cluster.shutdown().await
}
