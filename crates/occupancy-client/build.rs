//! Code generation only: the service's contract, client side, compiled with
//! protox (no system protoc). The proto is a copy of the repository's
//! `proto/occupancy/v1/occupancy.proto` kept inside the crate, so the
//! published crate builds on its own; a test keeps the two identical.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/occupancy/v1/occupancy.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile([proto], ["proto"])?;
    tonic_prost_build::configure().build_server(false).compile_fds(fds)?;
    Ok(())
}
