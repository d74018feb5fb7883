use super::*;
use crate::snapshot_file::SnapshotWriter;
use crate::types::{KeyValue, LogPosition, RaftPosition};

fn peers() -> BTreeMap<NodeId, String> {
    [(1, "a:1".to_string()), (2, "b:2".to_string()), (3, "c:3".to_string())].into()
}

/// A snapshot file of `keys` pairs at log index 9 (or of nothing, with `keys` = None).
fn snapshot_file(dir: &Path, keys: Option<u64>) -> PathBuf {
    let header = SnapshotHeader {
        raft: RaftPosition {
            last_log: keys.map(|_| LogPosition {
                term: 2,
                node_id: 1,
                index: 9,
            }),
            ..RaftPosition::default()
        },
        revision: keys.unwrap_or(0),
        created_unix_ms: 1,
        cluster_id: "old".into(),
    };
    let path = dir.join("backup.snap");
    let mut w = SnapshotWriter::new(File::create(&path).unwrap(), &header).unwrap();
    for i in 0..keys.unwrap_or(0) {
        w.push(&KeyValue {
            key: format!("k{i}").into_bytes(),
            value: vec![7; 100],
            create_revision: i + 1,
            mod_revision: i + 1,
            version: 1,
        })
        .unwrap();
    }
    w.finish().unwrap();
    path
}

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn a_staged_restore_is_pending_until_done() {
    let tmp = tempfile::tempdir().unwrap();
    let file = snapshot_file(tmp.path(), Some(1000));
    let dir = tmp.path().join("member-2");
    let verified = stage(&dir, &file, 2, &peers(), "new").unwrap();
    assert_eq!((verified.records, verified.header.revision), (1000, 1000));
    // Only the data directory is left beside the file: the staging directory was renamed.
    assert_eq!(names(tmp.path()), ["backup.snap", "member-2"]);
    assert_eq!(names(&dir), ["keel.id", "restore"]);
    // The identity is this member of the new cluster; a start sees a restart.
    let (identity, startup) = crate::identity::check_or_create(&dir, 2, "new", None, false).unwrap();
    assert_eq!(startup, crate::identity::Startup::Restart);
    assert_eq!(identity.cluster_id, cluster_id("new", &peers()));
    // The pending restore names the member, the members and an exact copy of the file.
    let p = pending(&dir).unwrap().expect("a pending restore");
    assert_eq!((p.node_id, &p.members), (2, &peers()));
    assert_eq!(fs::read(&p.snapshot).unwrap(), fs::read(&file).unwrap());
    p.done().unwrap();
    assert_eq!(pending(&dir).unwrap(), None);
    assert_eq!(names(&dir), ["keel.id"]);
}

#[test]
fn refusals_leave_nothing_behind() {
    let tmp = tempfile::tempdir().unwrap();
    let good = snapshot_file(tmp.path(), Some(10));
    let dir = tmp.path().join("d");
    assert!(matches!(
        stage(&dir, &good, 4, &peers(), "t"),
        Err(RestoreError::NotAMember(4))
    ));
    // A damaged copy: refused as corrupt, having been copied halfway.
    let mut bytes = fs::read(&good).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x40;
    let bad = tmp.path().join("bad.snap");
    fs::write(&bad, &bytes).unwrap();
    let e = stage(&dir, &bad, 1, &peers(), "t").unwrap_err();
    assert!(e.to_string().contains("corrupt"), "{e}");
    let cut = tmp.path().join("cut.snap");
    fs::write(&cut, &bytes[..at]).unwrap();
    let e = stage(&dir, &cut, 1, &peers(), "t").unwrap_err();
    assert!(e.to_string().contains("truncated"), "{e}");
    let empty = tmp.path().join("empty");
    fs::create_dir(&empty).unwrap();
    let nothing = snapshot_file(&empty, None);
    assert!(matches!(
        stage(&dir, &nothing, 1, &peers(), "t"),
        Err(RestoreError::EmptySnapshot(_))
    ));
    assert_eq!(names(tmp.path()), ["backup.snap", "bad.snap", "cut.snap", "empty"]);
    // A directory in use is refused and left as it was.
    fs::create_dir(&dir).unwrap();
    fs::write(dir.join("mine"), b"x").unwrap();
    assert!(matches!(
        stage(&dir, &good, 1, &peers(), "t"),
        Err(RestoreError::NotEmpty(_))
    ));
    assert_eq!(names(&dir), ["mine"]);
}

#[test]
fn a_damaged_plan_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let file = snapshot_file(tmp.path(), Some(1));
    let dir = tmp.path().join("d");
    stage(&dir, &file, 1, &peers(), "t").unwrap();
    let plan = dir.join(PENDING_DIR).join(PLAN);
    fs::write(&plan, b"{").unwrap();
    assert!(matches!(pending(&dir), Err(RestoreError::BadPlan { .. })));
    fs::write(&plan, br#"{"format":1,"node_id":9,"members":{"1":"a:1"}}"#).unwrap();
    let e = pending(&dir).unwrap_err();
    assert!(e.to_string().contains("member 9"), "{e}");
}
