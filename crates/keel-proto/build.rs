//! Generates the gRPC code from `proto/keel/v1` and `proto/etcd` (etcd's v3 API) with a vendored protoc, so no system protoc is
//! needed, and writes the descriptor set that server reflection serves.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // prost-build finds protoc through this variable; build scripts run single-threaded.
    std::env::set_var("PROTOC", protoc);
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let protos: Vec<PathBuf> = ["kv", "cluster", "maintenance", "watch", "lease", "lock", "raft"]
        .iter()
        .map(|p| root.join(format!("keel/v1/{p}.proto")))
        .collect();
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("keel_descriptor.bin"))
        .compile_protos(&protos, std::slice::from_ref(&root))?;
    // etcd's v3 API, with its own include root: its files import each other as
    // "etcdserverpb/rpc.proto", "mvccpb/kv.proto", as etcd's own do.
    let etcd = root.join("etcd");
    let etcd_protos: Vec<PathBuf> = [
        "mvccpb/kv.proto",
        "authpb/auth.proto",
        "etcdserverpb/rpc.proto",
        "v3lockpb/v3lock.proto",
        "v3electionpb/v3election.proto",
    ]
    .iter()
    .map(|p| etcd.join(p))
    .collect();
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("etcd_descriptor.bin"))
        .compile_protos(&etcd_protos, std::slice::from_ref(&etcd))?;
    println!("cargo:rerun-if-changed={}", root.display());
    Ok(())
}
