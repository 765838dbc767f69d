//! What lies in the store, object by object: the clear `config`, sealed
//! objects and their framing, packs of blobs, indexes, trees, snapshot
//! manifests and WAL file names, each parsed and written in one place.
//! (The keyring's format is in `crate::crypto::keyring`.)

pub mod compress;
pub mod config;
pub mod id;
pub mod index;
pub mod layout;
pub mod object;
pub mod pack;
pub mod snapshot;
pub mod tree;
pub mod wal;
