//! Lifeboat's shared core: the repository (its formats, the machinery that
//! reads and writes them, and its operations), keys and crypto, the object
//! stores it lives in, the operator's policy types, mutual TLS, and what
//! every process sets up (telemetry).

pub mod audit;
pub mod crypto;
pub mod dirs;
pub mod error_chain;
pub mod invalid;
pub mod policy;
pub mod repo;
pub mod store;
pub mod telemetry;
pub mod tls;
