//! The repository: what lies in the store (`format`), the machinery that
//! writes and reads it (`engine`), and what an operator or a coordinator
//! does with it (`ops`). Which key holds what is in [`format::layout`].

pub mod engine;
pub mod error;
pub mod format;
pub mod ops;

pub use engine::repository::Repository;
pub use error::RepoError;
pub use format::id::{BlobId, IndexId, PackId, SnapshotId};
