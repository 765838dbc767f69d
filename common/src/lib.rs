//! Lifeboat's shared core: the repository format (chunking, packs, indexes,
//! snapshots, keys and crypto) and the object stores it lives in.

pub mod crypto;
pub mod repo;
pub mod store;
