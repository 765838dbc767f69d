//! Generates the gRPC code and its JSON mapping from `lifeboat/v1/*.proto`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    let descriptors = out.join("lifeboat_descriptor.bin");
    // The descriptors, for gRPC server reflection (grpcurl and the like).
    tonic_prost_build::configure().file_descriptor_set_path(&descriptors).compile_protos(
        &["proto/lifeboat/v1/progress.proto", "proto/lifeboat/v1/control.proto", "proto/lifeboat/v1/admin.proto"],
        &["proto"],
    )?;
    // serde in the proto3 JSON mapping, for the CLI's `--json`.
    pbjson_build::Builder::new().register_descriptors(&std::fs::read(&descriptors)?)?.build(&[".lifeboat.v1"])?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
