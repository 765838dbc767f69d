fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    // The descriptors, for gRPC server reflection (grpcurl and the like).
    tonic_prost_build::configure().file_descriptor_set_path(out.join("lifeboat_descriptor.bin")).compile_protos(
        &["proto/lifeboat/v1/progress.proto", "proto/lifeboat/v1/control.proto", "proto/lifeboat/v1/admin.proto"],
        &["proto"],
    )?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
