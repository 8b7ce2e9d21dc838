//! The code generated from `proto/user/v1/user.proto`.
//!
//! - [`user::v1`]: messages, the `UserService` client and server.
//! - [`FILE_DESCRIPTOR_SET`]: the encoded descriptors, for gRPC reflection.
//! - `convert`: the one translation between these messages and the domain
//!   types of `callchain-domain` (`From` into protobuf, `TryFrom` out of it),
//!   for roles, users (with their timestamps) and changes.
//!
//! Generated types stop at the handlers: services convert them into domain
//! types at the edge, with these conversions.

mod convert;

pub mod user {
    pub mod v1 {
        tonic::include_proto!("user.v1");
    }
}

/// Encoded `FileDescriptorSet` of every file in `proto/`, served by gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("callchain_descriptor");
