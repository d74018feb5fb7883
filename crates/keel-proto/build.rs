//! Generates the gRPC code from `proto/keel/v1` with a vendored protoc, so no system protoc is
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
    println!("cargo:rerun-if-changed={}", root.display());
    Ok(())
}
