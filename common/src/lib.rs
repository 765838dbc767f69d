//! Lifeboat's shared core: the repository format (chunking, packs, indexes,
//! snapshots, keys and crypto), the object stores it lives in, and the
//! operator's policy types.

pub mod audit;
pub mod crypto;
pub mod dirs;
pub mod policy;
pub mod repo;
pub mod store;
pub mod tls;
