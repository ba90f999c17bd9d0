//! Choosing the backup and checking the WAL path before anything is written.

use chrono::{DateTime, Utc};

use crate::format::backup::BackupMetadata;
use crate::lsn::{Lsn, SegmentName, TimelineId};
use crate::storage::{self, Repository};
use crate::wal::archive::WalInventory;

/// Where recovery stops.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecoveryTarget {
    /// The end of the archive.
    End,
    /// A commit timestamp.
    Time(DateTime<Utc>),
    /// An LSN.
    Lsn(Lsn),
    /// A transaction id.
    Xid(String),
    /// A restore point name.
    Name(String),
}

/// What PostgreSQL does at the target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum TargetAction {
    /// End recovery and open for writes.
    Promote,
    /// Stay paused in recovery.
    Pause,
    /// Shut down at the target.
    Shutdown,
}

/// A checked restore plan.
#[derive(Clone, Debug)]
pub struct RestorePlan {
    /// The backup to unpack.
    pub backup: BackupMetadata,
    /// The timeline recovery follows.
    pub timeline: TimelineId,
    /// First WAL segment recovery needs.
    pub first_segment: String,
    /// Last WAL segment held without a gap on the path.
    pub last_segment: String,
    /// End of the WAL held on the path.
    pub wal_end: Lsn,
}

/// Why a restore is refused before anything is written.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// The repository has no backup.
    #[error("the repository holds no backup; take one with walvault backup")]
    NoBackup,
    /// No backup with this id.
    #[error("no backup {0} in the repository (see walvault list)")]
    UnknownBackup(String),
    /// The target is before every backup.
    #[error(
        "the target {target} is before the oldest backup, which ends at {oldest}; nothing can be restored to it"
    )]
    TargetBeforeOldestBackup {
        /// The target.
        target: String,
        /// Where the oldest backup ends.
        oldest: String,
    },
    /// A WAL segment is missing.
    #[error(
        "WAL segment {segment} is missing from the archive (timeline {timeline}): recovery from backup {backup} cannot pass it"
    )]
    WalGap {
        /// The missing segment.
        segment: String,
        /// Its timeline.
        timeline: TimelineId,
        /// The backup.
        backup: String,
    },
    /// The archive ends before the target LSN.
    #[error("the archive on timeline {timeline} ends at {end}, before the target {target}")]
    TargetAfterArchive {
        /// Timeline.
        timeline: TimelineId,
        /// End of the archive.
        end: Lsn,
        /// The target.
        target: Lsn,
    },
    /// Store errors.
    #[error(transparent)]
    Storage(#[from] storage::Error),
}

fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// Chooses the backup and checks the WAL from its start on its timeline.
///
/// # Errors
/// [`PlanError`] naming why the restore cannot work.
pub async fn plan_restore(
    repo: &Repository,
    backups: Vec<BackupMetadata>,
    backup_id: Option<&str>,
    target: &RecoveryTarget,
) -> Result<RestorePlan, PlanError> {
    if backups.is_empty() {
        return Err(PlanError::NoBackup);
    }
    let backup = match backup_id {
        Some(id) => backups
            .into_iter()
            .find(|b| b.id == id)
            .ok_or_else(|| PlanError::UnknownBackup(id.to_string()))?,
        None => {
            let oldest = backups[0].clone();
            let fits = |b: &BackupMetadata| match target {
                RecoveryTarget::Time(t) => parse_time(&b.stop_time).is_some_and(|stop| stop < *t),
                RecoveryTarget::Lsn(l) => b.stop_lsn.parse::<Lsn>().is_ok_and(|stop| stop <= *l),
                _ => true,
            };
            match backups.into_iter().rev().find(|b| fits(b)) {
                Some(b) => b,
                None => {
                    return Err(PlanError::TargetBeforeOldestBackup {
                        target: match target {
                            RecoveryTarget::Time(t) => t.to_rfc3339(),
                            RecoveryTarget::Lsn(l) => l.to_string(),
                            other => format!("{other:?}"),
                        },
                        oldest: format!("{} ({})", oldest.stop_time, oldest.stop_lsn),
                    });
                }
            }
        }
    };
    let size = backup.wal_segment_size;
    let timeline = backup.timeline;
    let start: Lsn = backup.start_lsn.parse().unwrap_or_default();
    let inv = WalInventory::scan(repo, size).await?;
    let held = inv.timelines.get(&timeline);
    let first = start.segment_number(size);
    let mut n = first;
    let end = loop {
        let complete = held.is_some_and(|t| t.complete.contains(&n));
        if complete {
            n += 1;
            continue;
        }
        let partial = held.map_or(0, |t| t.delta_chain_end(n));
        break Lsn(n * size + partial);
    };
    let stop: Lsn = backup.stop_lsn.parse().unwrap_or_default();
    // The run of WAL must reach the backup's stop, and nothing may lie
    // beyond a hole (WAL after a gap cannot be replayed).
    let beyond_hole = held.is_some_and(|t| {
        t.max_segment()
            .is_some_and(|max| max > end.segment_number(size))
    });
    if end < stop || beyond_hole {
        return Err(PlanError::WalGap {
            segment: SegmentName {
                timeline,
                number: end.segment_number(size),
            }
            .to_file_name(size),
            timeline,
            backup: backup.id.clone(),
        });
    }
    if let RecoveryTarget::Lsn(l) = target
        && *l > end
    {
        return Err(PlanError::TargetAfterArchive {
            timeline,
            end,
            target: *l,
        });
    }
    let name = |lsn: Lsn| SegmentName::from_lsn(timeline, lsn, size).to_file_name(size);
    Ok(RestorePlan {
        first_segment: name(start),
        last_segment: name(Lsn(end.0.saturating_sub(1)).max(start)),
        wal_end: end,
        timeline,
        backup,
    })
}
