//! The `keel` binary answers --help and --version with exit 0. (Having an integration test here
//! also makes `cargo test --workspace` build `keel`, which the process-backend tests run.)

use std::process::Command;

const KEEL: &str = env!("CARGO_BIN_EXE_keel");

#[test]
fn help_and_version_exit_0() {
    let help = Command::new(KEEL).arg("--help").output().expect("run keel --help");
    assert_eq!(help.status.code(), Some(0));
    let text = String::from_utf8_lossy(&help.stdout);
    for flag in [
        "--id",
        "--data-dir",
        "--initial-cluster",
        "--join",
        "--heartbeat-ms",
        "--config",
    ] {
        assert!(text.contains(flag), "--help does not mention {flag}");
    }
    let version = Command::new(KEEL)
        .arg("--version")
        .output()
        .expect("run keel --version");
    assert_eq!(version.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&version.stdout).contains(env!("CARGO_PKG_VERSION")));
}
