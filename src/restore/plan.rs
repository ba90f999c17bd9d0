//! Choosing the backup and checking the WAL path before anything is written.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use crate::format::backup::BackupMetadata;
use crate::lsn::{Lsn, SegmentName, TimelineId};
use crate::storage::{self, Repository, layout};
use crate::wal::history::{HistoryEntry, ParseHistoryError, parse_history};
pub use crate::wal::inventory::PathStep;
use crate::wal::inventory::{WalInventory, step_at};

/// Where recovery stops.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecoveryTarget {
    /// The end of the archive.
    End,
    /// A commit timestamp.
    Time(DateTime<Utc>),
    /// An LSN.
    Lsn(Lsn),
    /// A transaction id (an `xid8` value works too: PostgreSQL keeps its
    /// low 32 bits).
    Xid(u64),
    /// A restore point name.
    Name(String),
    /// The backup's consistency point, and no further (`recovery_target =
    /// 'immediate'`): restores a backup kept without the WAL after it.
    Immediate,
}

impl std::fmt::Display for RecoveryTarget {
    /// How the target reads in a plan, a report or a drill record.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RecoveryTarget::End => f.write_str("end of the archive"),
            RecoveryTarget::Time(t) => write!(f, "time {}", t.to_rfc3339()),
            RecoveryTarget::Lsn(l) => write!(f, "LSN {l}"),
            RecoveryTarget::Xid(x) => write!(f, "xid {x}"),
            RecoveryTarget::Name(n) => write!(f, "restore point {n:?}"),
            RecoveryTarget::Immediate => f.write_str("the backup's consistency point"),
        }
    }
}

/// Parses a target time: `2026-11-21 10:15:00+00` (PostgreSQL's form) or
/// RFC 3339; the UTC offset is required.
///
/// # Errors
/// Why the text is not such a time.
pub fn parse_target_time(text: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f%#z")
        .or_else(|_| DateTime::parse_from_rfc3339(text))
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("{e}; give a time with its UTC offset, e.g. 2026-11-21 10:15:00+00"))
}

/// What PostgreSQL does at the target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TargetAction {
    /// End recovery and open for writes.
    Promote,
    /// Stay paused in recovery.
    Pause,
    /// Shut down at the target.
    Shutdown,
}

/// Which timeline recovery follows (`recovery_target_timeline`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimelineTarget {
    /// The newest timeline reachable through stored history files.
    Latest,
    /// The backup's own timeline.
    Current,
    /// This timeline.
    Number(TimelineId),
}

impl std::fmt::Display for TimelineTarget {
    /// As `recovery_target_timeline` takes it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TimelineTarget::Latest => f.write_str("latest"),
            TimelineTarget::Current => f.write_str("current"),
            TimelineTarget::Number(t) => write!(f, "{t}"),
        }
    }
}

impl std::str::FromStr for TimelineTarget {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "latest" => Ok(Self::Latest),
            "current" => Ok(Self::Current),
            n => n
                .parse::<TimelineId>()
                .ok()
                .map(Self::Number)
                .ok_or_else(|| "use latest, current or a timeline number".to_string()),
        }
    }
}

/// A checked restore plan.
#[derive(Clone, Debug)]
pub struct RestorePlan {
    /// The backup to unpack.
    pub backup: BackupMetadata,
    /// The timeline recovery ends on.
    pub timeline: TimelineId,
    /// The timelines replay crosses, from the backup's to the target's.
    pub path: Vec<PathStep>,
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
    /// The target lies before the end of the backup asked for.
    #[error(
        "the target is before backup {backup} ends at {end}: recovery from it cannot stop there; choose an older backup or leave out --backup"
    )]
    TargetBeforeBackupEnd {
        /// The backup.
        backup: String,
        /// Where it ends.
        end: String,
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
    /// The archive ends before a time or xid target can be reached.
    #[error("the target {target} cannot be reached: the archive ends at {end}, and {newest}")]
    TargetPastArchive {
        /// The target.
        target: String,
        /// The end of the archive.
        end: Lsn,
        /// What the archive's newest WAL holds.
        newest: String,
    },
    /// No mark and no restore point has the name.
    #[error(
        "no mark and no restore point named {name:?} in the WAL from {first} to {last} (walvault info lists the marks)"
    )]
    NoSuchRestorePoint {
        /// The name.
        name: String,
        /// The first segment read.
        first: String,
        /// The last segment read.
        last: String,
    },
    /// The requested timeline is not in the archive.
    #[error(
        "timeline {0} is not in the archive (no history file and no WAL); see walvault list for the timelines held"
    )]
    TimelineNotInArchive(TimelineId),
    /// The target timeline does not descend from the backup's.
    #[error(
        "timeline {target} does not lead to the target from backup {backup} (timeline {backup_timeline}): {reason}; \
choose another --target-timeline or --backup"
    )]
    TimelineDoesNotLead {
        /// The target timeline.
        target: TimelineId,
        /// The backup.
        backup: String,
        /// The backup's timeline.
        backup_timeline: TimelineId,
        /// Why.
        reason: String,
    },
    /// A stored history file does not parse.
    #[error("the history file of timeline {timeline} in the archive is damaged: {source}")]
    BadHistory {
        /// Its timeline.
        timeline: TimelineId,
        /// The parse error.
        source: ParseHistoryError,
    },
    /// Store errors.
    #[error(transparent)]
    Storage(#[from] storage::Error),
}

impl PlanError {
    /// Whether the request itself cannot be met (exit code 2) rather than
    /// the archive being incomplete.
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            Self::UnknownBackup(_)
                | Self::TargetBeforeOldestBackup { .. }
                | Self::TargetBeforeBackupEnd { .. }
                | Self::TimelineNotInArchive(_)
                | Self::TimelineDoesNotLead { .. }
                | Self::TargetPastArchive { .. }
                | Self::NoSuchRestorePoint { .. }
        )
    }
}

/// Chooses the backup and checks the WAL from its start along the timeline
/// path to the target.
///
/// # Errors
/// [`PlanError`] naming why the restore cannot work.
pub async fn plan_restore(
    repo: &Repository,
    backups: Vec<BackupMetadata>,
    backup_id: Option<&str>,
    target: &RecoveryTarget,
    timeline: TimelineTarget,
) -> Result<RestorePlan, PlanError> {
    if backups.is_empty() {
        return Err(PlanError::NoBackup);
    }
    // A restore point recorded by `walvault mark` has a known LSN: the
    // backup and the WAL are chosen for it as for an LSN target.
    let placed = match target {
        RecoveryTarget::Name(name) => repo
            .read_marks()
            .await?
            .into_iter()
            .find(|m| &m.name == name)
            .map_or_else(|| target.clone(), |m| RecoveryTarget::Lsn(m.lsn)),
        other => other.clone(),
    };
    let target = &placed;
    let candidates: Vec<BackupMetadata> = match backup_id {
        Some(id) => {
            let b = backups
                .into_iter()
                .find(|b| b.id == id)
                .ok_or_else(|| PlanError::UnknownBackup(id.to_string()))?;
            if !ends_before(&b, target) {
                return Err(PlanError::TargetBeforeBackupEnd {
                    backup: b.id.clone(),
                    end: format!(
                        "{} ({})",
                        crate::format::time::to_text(&b.stop_time),
                        b.stop_lsn
                    ),
                });
            }
            vec![b]
        }
        None => {
            let oldest = backups[0].clone();
            let fitting: Vec<_> = backups
                .into_iter()
                .rev()
                .filter(|b| ends_before(b, target))
                .collect();
            if fitting.is_empty() {
                return Err(PlanError::TargetBeforeOldestBackup {
                    target: match target {
                        RecoveryTarget::Time(t) => t.to_rfc3339(),
                        RecoveryTarget::Lsn(l) => l.to_string(),
                        other => format!("{other:?}"),
                    },
                    oldest: format!(
                        "{} ({})",
                        crate::format::time::to_text(&oldest.stop_time),
                        oldest.stop_lsn
                    ),
                });
            }
            fitting
        }
    };
    // The candidates of one system, the newest one's: a system held before
    // an upgrade has its own WAL, under its own prefix.
    let system = candidates[0].system_identifier.clone();
    let candidates: Vec<BackupMetadata> = candidates
        .into_iter()
        .filter(|b| b.system_identifier == system)
        .collect();
    let system_repo = repo.for_system(&system)?;
    let repo = &system_repo;
    let size = candidates[0].wal_segment_size;
    // The WAL from the newest candidate on; the whole archive only when an
    // older candidate has to be tried.
    let newest_start = SegmentName::from_lsn(candidates[0].timeline, candidates[0].start_lsn, size);
    let mut inv = WalInventory::scan_from(repo, size, newest_start).await?;
    let mut scanned_whole = false;
    let mut histories = BTreeMap::new();
    // The newest backup that lies on the path to the target timeline; a
    // backup of a timeline the target did not come from is passed over.
    let mut first_refusal = None;
    for backup in candidates {
        if !scanned_whole
            && SegmentName::from_lsn(backup.timeline, backup.start_lsn, size) != newest_start
        {
            inv = WalInventory::scan(repo, size).await?;
            scanned_whole = true;
        }
        match timeline_path(repo, &inv, &mut histories, &backup, timeline).await {
            Ok(path) => return check_wal(&inv, backup, path, target, size),
            Err(e @ PlanError::TimelineDoesNotLead { .. }) => {
                first_refusal.get_or_insert(e);
            }
            Err(e) => return Err(e),
        }
    }
    Err(first_refusal.expect("at least one candidate was refused"))
}

/// Whether `b` is consistent before `target`, so recovery from it can stop
/// there. Stored stop times are whole seconds, cut down: the backup may
/// have ended up to a second later, so a time target must be at least a
/// second past it. Targets without a time or LSN cannot be placed before
/// replay and fit every backup.
fn ends_before(b: &BackupMetadata, target: &RecoveryTarget) -> bool {
    match target {
        RecoveryTarget::Time(t) => b.stop_time + chrono::Duration::seconds(1) <= *t,
        RecoveryTarget::Lsn(l) => b.stop_lsn <= *l,
        _ => true,
    }
}

/// Reads (once) the history of `tli` from the archive.
async fn history<'a>(
    repo: &Repository,
    cache: &'a mut BTreeMap<TimelineId, Option<Vec<HistoryEntry>>>,
    tli: TimelineId,
) -> Result<Option<&'a Vec<HistoryEntry>>, PlanError> {
    if let std::collections::btree_map::Entry::Vacant(slot) = cache.entry(tli) {
        let parsed = match repo.get_opened(&layout::history_key(tli)).await? {
            Some(bytes) => Some(parse_history(&String::from_utf8_lossy(&bytes)).map_err(
                |source| PlanError::BadHistory {
                    timeline: tli,
                    source,
                },
            )?),
            None => None,
        };
        slot.insert(parsed);
    }
    Ok(cache[&tli].as_ref())
}

/// The timelines replay crosses from `backup` to the target timeline, the
/// way PostgreSQL resolves `recovery_target_timeline`.
async fn timeline_path(
    repo: &Repository,
    inv: &WalInventory,
    cache: &mut BTreeMap<TimelineId, Option<Vec<HistoryEntry>>>,
    backup: &BackupMetadata,
    choice: TimelineTarget,
) -> Result<Vec<PathStep>, PlanError> {
    let own = backup.timeline;
    let (start, stop) = (backup.start_lsn, backup.stop_lsn);
    let target = match choice {
        TimelineTarget::Current => own,
        TimelineTarget::Number(n) => n,
        TimelineTarget::Latest => {
            // PostgreSQL probes history files upwards from the backup's timeline.
            let mut t = own;
            while let Some(next) = t.next().filter(|n| inv.histories.contains(n)) {
                t = next;
            }
            t
        }
    };
    if target == own {
        return Ok(vec![PathStep {
            timeline: own,
            begin: start,
            end: None,
        }]);
    }
    let refuse = |reason: String| PlanError::TimelineDoesNotLead {
        target,
        backup: backup.id.clone(),
        backup_timeline: own,
        reason,
    };
    let Some(entries) = history(repo, cache, target).await? else {
        if inv.timelines.contains_key(&target) {
            return Err(refuse(format!(
                "the history file of timeline {target} is not in the archive"
            )));
        }
        return Err(PlanError::TimelineNotInArchive(target));
    };
    let Some(idx) = entries.iter().position(|e| e.timeline == own) else {
        return Err(refuse(format!(
            "timeline {own} is not among its ancestors ({})",
            entries
                .iter()
                .map(|e| e.timeline.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    };
    if entries[idx].switch_lsn < stop {
        return Err(refuse(format!(
            "it forked from timeline {own} at {}, before the backup ended at {stop}",
            entries[idx].switch_lsn
        )));
    }
    let mut path = Vec::new();
    let mut begin = start;
    for e in &entries[idx..] {
        path.push(PathStep {
            timeline: e.timeline,
            begin,
            end: Some(e.switch_lsn),
        });
        begin = e.switch_lsn;
    }
    path.push(PathStep {
        timeline: target,
        begin,
        end: None,
    });
    Ok(path)
}

/// Walks the segments from the backup's start along `path` and checks that
/// no segment is missing up to the end of the archive (or the target LSN).
fn check_wal(
    inv: &WalInventory,
    backup: BackupMetadata,
    path: Vec<PathStep>,
    target: &RecoveryTarget,
    size: u64,
) -> Result<RestorePlan, PlanError> {
    let (start, stop) = (backup.start_lsn, backup.stop_lsn);
    let last = *path.last().expect("a path has a step");
    let reached = inv.walk(&path, start, size);
    let (end, end_step) = (reached.end, reached.step);
    let gap = |segment: u64, timeline: TimelineId| PlanError::WalGap {
        segment: SegmentName {
            timeline,
            number: segment,
        }
        .to_file_name(size),
        timeline,
        backup: backup.id.clone(),
    };
    let target_lsn = match target {
        RecoveryTarget::Lsn(l) => Some(*l),
        RecoveryTarget::Immediate => Some(stop),
        _ => None,
    };
    let reaches_target = target_lsn.is_some_and(|l| end >= l && end >= stop);
    if !reaches_target {
        // The WAL must run past the backup's stop and through every earlier
        // timeline to the target's, and nothing may lie beyond a hole on the
        // target timeline (WAL after a gap cannot be replayed).
        if end < stop || end_step.timeline != last.timeline {
            return Err(gap(end.segment_number(size), end_step.timeline));
        }
        let beyond_hole = inv.timelines.get(&last.timeline).is_some_and(|t| {
            t.max_segment()
                .is_some_and(|max| max > end.segment_number(size))
        });
        if beyond_hole {
            return Err(gap(end.segment_number(size), last.timeline));
        }
        if let Some(l) = target_lsn {
            return Err(PlanError::TargetAfterArchive {
                timeline: last.timeline,
                end,
                target: l,
            });
        }
    }
    let name = |lsn: Lsn| {
        let n = lsn.segment_number(size);
        SegmentName {
            timeline: step_at(&path, n, size).timeline,
            number: n,
        }
        .to_file_name(size)
    };
    Ok(RestorePlan {
        first_segment: name(start),
        last_segment: name(Lsn(end.0.saturating_sub(1)).max(start)),
        wal_end: end,
        timeline: last.timeline,
        path,
        backup,
    })
}
