//! The record of a restore drill (`walvault drill`), stored at
//! `drills/{id}.json`: what was restored, whether it worked, how long it took.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The drill record version this code writes.
pub const DRILL_VERSION: u32 = 1;

/// One drill.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrillRecord {
    /// Format version.
    pub version: u32,
    /// When it ended.
    #[serde(with = "super::time")]
    pub time: DateTime<Utc>,
    /// The backup restored (`None` when none could be chosen).
    pub backup_id: Option<String>,
    /// The recovery target, in words.
    pub target: String,
    /// Whether the restore, recovery and the check all succeeded.
    pub success: bool,
    /// Seconds to fetch, unpack and sync the backup.
    pub restore_seconds: f64,
    /// Seconds from starting PostgreSQL to the end of recovery.
    pub recovery_seconds: f64,
    /// Restore plus recovery: the measured recovery time objective.
    pub rto_seconds: f64,
    /// The check that ran on the recovered cluster.
    pub check: String,
    /// What happened, in words (the failure's reason).
    pub message: String,
}
