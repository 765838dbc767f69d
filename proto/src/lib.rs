//! Lifeboat's wire protocol, generated from `proto/lifeboat/v1/*.proto`.

/// Version 1 of the protocol.
pub mod v1 {
    tonic::include_proto!("lifeboat.v1");
}
