//! What every Lifeboat process sets up around its work: the entry point
//! with its runtime and logging (metrics and traces join here).

pub mod entry;
