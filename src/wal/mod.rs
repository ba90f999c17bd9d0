//! WAL archiving.
//!
//! - [`receiver`]: the stream loop (connect, resume, copy, drain), the only
//!   place that decides the flush position reported to PostgreSQL;
//! - [`segmenter`] (pure): the replication stream cut into segments and
//!   delta ranges;
//! - [`history`] (pure): timeline history files and switches;
//! - [`inventory`]: what WAL a repository holds and the one walk that finds
//!   where it stops;
//! - [`fetch`]: reading segments and history files back;
//! - [`summary`]: the WAL part of `walvault list`;
//! - [`index`]: the WAL index expire writes and `list` reads;
//! - [`push`]: `wal-push`, one file of `archive_command`.

pub mod fetch;
pub mod history;
pub mod index;
pub mod inventory;
pub mod mark;
pub mod push;
pub mod receiver;
pub mod records;
pub mod segmenter;
pub mod summary;
