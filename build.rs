//! Code generation only: compiles the protobuf contract with a pure-Rust
//! compiler (protox), so no system `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/occupancy/v1/occupancy.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile([proto], ["proto"])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("occupancy_descriptor.bin"))
        .compile_fds(fds)?;
    Ok(())
}
