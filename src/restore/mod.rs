//! `walvault restore`: plan, fetch and unpack a base backup, and write the
//! recovery configuration that replays the archive to the target.
//!
//! Invariants: nothing is written before the plan holds (empty directory,
//! keys, a backup before the target, WAL without a gap on the timeline);
//! files are synced before success is reported.

pub mod plan;
pub mod spool;
pub mod unpack;

pub use plan::{RecoveryTarget, RestorePlan, TargetAction, TimelineTarget, plan_restore};
