//! Compile `imprint/v1/*.proto` into OUT_DIR (never edited, never checked
//! in), with a descriptor set for gRPC server reflection.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    let protos = [
        "imprint/v1/agent.proto",
        "imprint/v1/images.proto",
        "imprint/v1/operations.proto",
    ];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("imprint_descriptor.bin"))
        .compile_protos(&protos, &["."])?;
    Ok(())
}
