//! The repository format (v1) and the operations every source shares.
//!
//! Objects in the store:
//! - `config`: format version and tunables, in clear;
//! - `keys/<master key id>`: the keyring wrapped by one master key;
//! - `data/<2 hex>/<pack id>`: packs of sealed file chunks;
//! - `tree/<2 hex>/<pack id>`: packs of sealed directory trees (kept apart
//!   so storage tiers never move what a restore needs to plan);
//! - `index/<id>`: which blob is in which pack;
//! - `snapshots/<id>`: manifests, written last, which make a backup visible.

pub mod cache;
pub mod chunker;
pub mod compress;
pub mod config;
pub mod error;
pub mod id;
pub mod index;
pub mod migrate;
pub mod object;
pub mod open;
pub mod pack;
pub mod packer;
pub mod prune;
pub mod repair;
pub mod replicas;
pub mod repository;
pub mod retention;
pub mod snapshot;
pub mod tree;
pub mod verify;
pub mod writers;

pub use error::RepoError;
pub use id::{BlobId, IndexId, PackId, SnapshotId};
pub use repository::Repository;
