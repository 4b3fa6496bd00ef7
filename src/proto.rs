//! Generated protobuf and gRPC code of `occupancy.v1`, with relaxed lints.

#![allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]

/// Package `occupancy.v1`.
pub mod v1 {
    tonic::include_proto!("occupancy.v1");

    /// Encoded file descriptor set, served by gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("occupancy_descriptor");
}
