//! What lies in the store, object by object: the clear `config`, sealed
//! objects and their framing, packs of blobs, indexes, trees, snapshot
//! manifests, WAL file names and drill reports, each parsed and written in one place.
//! (The keyring's format is in `crate::crypto::keyring`.)

pub mod compress;
pub mod config;
pub mod drill;
pub mod id;
pub mod index;
pub mod layout;
pub mod object;
pub mod pack;
pub mod snapshot;
pub mod tree;
pub mod wal;
