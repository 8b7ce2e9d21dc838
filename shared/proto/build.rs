//! Generates the gRPC code from `proto/` with the protoc shipped in the
//! `protoc-bin-vendored` crate, so a build needs nothing but crates.io.

use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let out = PathBuf::from(env::var("OUT_DIR")?);

    // The vendored protoc is named in the build's own configuration, not in
    // the process environment (setting a variable is `unsafe`).
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);

    let proto = root.join("user/v1/user.proto");
    println!("cargo:rerun-if-changed={}", proto.display());
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("callchain_descriptor.bin"))
        .compile_with_config(config, &[proto], &[root])?;
    Ok(())
}
