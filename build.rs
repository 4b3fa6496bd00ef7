//! Code generation only: compiles the protobuf contract with a pure-Rust
//! compiler (protox), so no system `protoc` is needed, and writes the
//! descriptor set that gRPC reflection serves.

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/occupancy/v1/occupancy.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile([proto], ["proto"])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("occupancy_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        // hand-written so that an event is encoded once for all subscribers
        .extern_path(
            ".occupancy.v1.SubscribeOccupancyResponse",
            "crate::fanout::wire::SubscribeOccupancyResponse",
        )
        .compile_fds(fds)?;
    Ok(())
}
