//! Retention: what a repository keeps and what goes.
//!
//! - [`policy`] (pure): backups and WAL objects in, decisions out; no
//!   store, no clock;
//! - [`expire`]: gathers the facts from a repository, records the decision
//!   and deletes.
pub mod expire;
pub mod policy;
