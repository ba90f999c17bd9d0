//! Read-only views of a repository, for the person on call and for
//! monitoring: nothing here writes to the store or the server.
//!
//! - [`check`]: is everything in place (server, settings, slot, store, key,
//!   WAL continuity)? One finding per part, with the fix;
//! - [`info`]: backups, the restorable window per timeline, lag, retention,
//!   pins, marks and drills in one view;
//! - [`verify`]: every object of a backup and of the archive read back and
//!   checked;
//! - [`list`]: backups, timelines and WAL ranges (and `list --json`'s schema).
pub mod check;
pub mod info;
pub mod list;
pub mod verify;
