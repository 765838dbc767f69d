//! The machinery that writes and reads the formats: opening a repository
//! from its settings, the chunker, the packer, the metadata cache, and the
//! markers of writers in progress.

pub mod cache;
pub mod chunker;
pub mod open;
pub mod packer;
pub mod repository;
pub mod settings;
pub mod writers;
