//! Lifeboat's wire protocol, generated from `proto/lifeboat/v1/*.proto`.

/// Version 1 of the protocol. Generated: its items are documented in the
/// `.proto` files, where not every field needs a comment of its own.
#[allow(missing_docs)]
pub mod v1 {
    tonic::include_proto!("lifeboat.v1");
    include!(concat!(env!("OUT_DIR"), "/lifeboat.v1.serde.rs"));

    /// The encoded descriptors of every message and service, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("lifeboat_descriptor");
}

impl v1::SourceKind {
    /// The kind's name as configured (`files`, `postgres`, `redis`), as a
    /// metric label or a policy names it.
    pub fn name(self) -> &'static str {
        match self {
            v1::SourceKind::Unspecified => "unspecified",
            v1::SourceKind::Files => "files",
            v1::SourceKind::Postgres => "postgres",
            v1::SourceKind::Redis => "redis",
        }
    }
}
