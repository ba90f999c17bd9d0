//! Retention: what a repository keeps and what goes.
//!
//! - [`policy`] (pure): backups and WAL objects in, decisions out; no
//!   store, no clock;
//! - [`expire`]: gathers the facts from a repository, records the decision
//!   and deletes;
//! - [`pins`]: backups pinned against every policy (`walvault keep`).
pub mod expire;
pub mod pins;
pub mod policy;
