//! Whether recovery can reach the target at all, checked before anything
//! is written. PostgreSQL stops a time target at the first commit after
//! it, and an xid target at that transaction's commit or abort; a name
//! target at its restore point. When the WAL ends first, recovery fails
//! with a FATAL after the whole restore ("recovery ended before configured
//! recovery target was reached"). So the archive is read back: its last
//! segments for the newest commit and transaction id, and for a name that
//! no `walvault mark` has, the planned WAL for the restore point.
//!
//! Chosen: a time after the archive's newest commit is refused, however
//! little after (PostgreSQL could not stop there), with that commit's time
//! in the message; when the last segments hold no commit at all (an idle
//! server), the target is let through with a warning.

use chrono::{DateTime, Utc};

use super::plan::{PlanError, RecoveryTarget, RestorePlan};
use crate::lsn::{SegmentName, WalFileName};
use crate::storage::Repository;
use crate::wal::fetch::{FetchedWal, fetch_wal_file};
use crate::wal::inventory::step_at;
use crate::wal::records::{WalFacts, scan_segment, xid_follows};

/// Segments read back from the archive's end to find its newest commit.
const END_SEGMENTS_READ: u64 = 4;

/// Checks that recovery along `plan` can reach `target`.
///
/// # Errors
/// [`PlanError::TargetPastArchive`] or [`PlanError::NoSuchRestorePoint`]
/// naming the archive's end; store errors.
pub async fn check_reachable(
    repo: &Repository,
    plan: &RestorePlan,
    target: &RecoveryTarget,
) -> Result<(), PlanError> {
    match target {
        RecoveryTarget::Time(t) => {
            let facts = end_facts(repo, plan, |f| f.last_end_time().is_some()).await?;
            match facts.last_end_time() {
                Some(last) if *t > last => {
                    Err(past(plan, format!("time {}", t.to_rfc3339()), last))
                }
                Some(_) => Ok(()),
                None => {
                    tracing::warn!(
                        target = %t.to_rfc3339(),
                        "no commit in the archive's last segments: recovery fails (FATAL) unless a commit comes after the target"
                    );
                    Ok(())
                }
            }
        }
        RecoveryTarget::Xid(x) => {
            let xid = *x as u32;
            let facts = end_facts(repo, plan, |f| f.newest_xid.is_some()).await?;
            match facts.newest_xid {
                Some(newest) if xid_follows(xid, newest) => Err(PlanError::TargetPastArchive {
                    target: format!("xid {x}"),
                    end: plan.wal_end,
                    newest: format!("the newest transaction id in the archive is {newest}"),
                }),
                _ => Ok(()),
            }
        }
        RecoveryTarget::Name(name) => {
            if repo.read_marks().await?.iter().any(|m| &m.name == name) {
                return Ok(());
            }
            if has_restore_point(repo, plan, name).await? {
                Ok(())
            } else {
                Err(PlanError::NoSuchRestorePoint {
                    name: name.clone(),
                    first: plan.first_segment.clone(),
                    last: plan.last_segment.clone(),
                })
            }
        }
        RecoveryTarget::End | RecoveryTarget::Lsn(_) | RecoveryTarget::Immediate => Ok(()),
    }
}

fn past(plan: &RestorePlan, target: String, last: DateTime<Utc>) -> PlanError {
    PlanError::TargetPastArchive {
        target,
        end: plan.wal_end,
        newest: format!(
            "the newest commit in the archive is at {} (a target after it cannot be reached; recover to the end of the archive with no target instead)",
            last.to_rfc3339()
        ),
    }
}

/// The segments of the plan, oldest first, each on the timeline recovery
/// reads it from.
fn planned_segments(plan: &RestorePlan) -> Vec<SegmentName> {
    let size = plan.backup.wal_segment_size;
    let (Ok(first), Ok(last)) = (
        SegmentName::parse(&plan.first_segment, size),
        SegmentName::parse(&plan.last_segment, size),
    ) else {
        return Vec::new();
    };
    (first.number..=last.number)
        .map(|number| SegmentName {
            timeline: step_at(&plan.path, number, size).timeline,
            number,
        })
        .collect()
}

async fn read_segment(
    repo: &Repository,
    segment: SegmentName,
    size: u64,
) -> Result<Option<WalFacts>, PlanError> {
    let Some(FetchedWal::Complete(bytes) | FetchedWal::Partial { bytes, .. }) =
        fetch_wal_file(repo, WalFileName::Segment(segment), size).await?
    else {
        return Ok(None);
    };
    Ok(Some(
        tokio::task::spawn_blocking(move || scan_segment(&bytes))
            .await
            .expect("scanning does not panic"),
    ))
}

/// What the archive's last segments say, read from the end back until
/// `enough` holds (at most [`END_SEGMENTS_READ`] segments).
async fn end_facts(
    repo: &Repository,
    plan: &RestorePlan,
    enough: impl Fn(&WalFacts) -> bool,
) -> Result<WalFacts, PlanError> {
    let size = plan.backup.wal_segment_size;
    let mut all = WalFacts::default();
    for segment in planned_segments(plan)
        .into_iter()
        .rev()
        .take(END_SEGMENTS_READ as usize)
    {
        let Some(facts) = read_segment(repo, segment, size).await? else {
            continue;
        };
        all.ends.extend(facts.ends);
        if let Some(x) = facts.newest_xid
            && all.newest_xid.is_none_or(|n| xid_follows(x, n))
        {
            all.newest_xid = Some(x);
        }
        if enough(&all) {
            break;
        }
    }
    Ok(all)
}

/// Whether a restore point `name` lies in the planned WAL.
async fn has_restore_point(
    repo: &Repository,
    plan: &RestorePlan,
    name: &str,
) -> Result<bool, PlanError> {
    let size = plan.backup.wal_segment_size;
    for segment in planned_segments(plan) {
        if let Some(facts) = read_segment(repo, segment, size).await?
            && facts.restore_points.iter().any(|(n, _)| n == name)
        {
            return Ok(true);
        }
    }
    Ok(false)
}
