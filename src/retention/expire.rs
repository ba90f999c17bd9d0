//! `expire`: applies a retention policy to a repository. It gathers the
//! facts (backups, pins, WAL objects), asks [`super::policy`] what goes,
//! records the decision (with the new retention floor) and deletes.
//!
//! Order matters for a run that is cut short: the expire record (and its
//! floor) is stored before any WAL is deleted, so gap checks never take
//! removed WAL for a lost upload; a backup's `backup.json` goes before its
//! parts, so a half-removed backup is an interrupted one that the next run
//! collects.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tracing::{info, warn};

use super::policy::{self as retention, BackupFacts, Policy, WalRemoval};
use crate::backup::unfinished;
use crate::format::backup::BackupMetadata;
use crate::format::retention::{EXPIRE_RECORD_VERSION, ExpireRecord, PolicyRecord};
use crate::lsn::{Lsn, SegmentName};
use crate::storage::layout::{self, WalObject};
use crate::storage::{self, Repository};
use crate::wal::index;
use crate::wal::inventory::WalInventory;

/// How one run goes.
#[derive(Clone, Debug)]
pub struct ExpireOptions {
    /// What to keep.
    pub policy: Policy,
    /// The time the policy is applied at.
    pub now: DateTime<Utc>,
    /// Decide and report only.
    pub dry_run: bool,
    /// Backups without `backup.json` with an object newer than this are running.
    pub orphan_grace: Duration,
}

/// A kept backup and why.
#[derive(Clone, Debug, Serialize)]
pub struct KeptBackup {
    /// Backup id.
    pub id: String,
    /// Every reason that keeps it.
    pub reasons: Vec<String>,
}

/// A removed backup.
#[derive(Clone, Debug, Serialize)]
pub struct RemovedBackup {
    /// Backup id.
    pub id: String,
    /// When it stopped.
    pub stop_time: String,
    /// Stored bytes of its objects.
    pub stored_bytes: u64,
}

/// What a run decided (and, unless a dry run, did). `expire --json`, version 1.
#[derive(Clone, Debug, Serialize)]
pub struct ExpireReport {
    /// Schema version.
    pub version: u32,
    /// Nothing was deleted.
    pub dry_run: bool,
    /// Why the run did nothing, if it did nothing.
    pub skipped: Option<String>,
    /// The time the policy was applied at.
    pub time: String,
    /// The policy.
    pub policy: PolicyRecord,
    /// Backups kept.
    pub kept: Vec<KeptBackup>,
    /// Backups removed.
    pub removed: Vec<RemovedBackup>,
    /// Point-in-time recovery stays possible from here on.
    pub horizon_lsn: Option<Lsn>,
    /// The retention floor after the run.
    pub floor_lsn: Option<Lsn>,
    /// WAL segments and deltas below the horizon outside kept backups' ranges.
    pub wal_objects_removed: u64,
    /// Their stored bytes.
    pub wal_bytes_removed: u64,
    /// Deltas of segments stored whole.
    pub superseded_deltas_removed: u64,
    /// Interrupted backups whose leftovers were collected.
    pub interrupted_backups_removed: Vec<String>,
    /// Pins removed: lapsed, or of a backup that no longer exists.
    pub pins_removed: Vec<String>,
}

/// Applies `opts.policy` to the repository.
///
/// # Errors
/// Store and integrity errors, naming the object. A run that fails part way
/// leaves a state the next run completes.
pub async fn run(
    repo: &Repository,
    segment_size_bytes: u64,
    opts: &ExpireOptions,
) -> Result<ExpireReport, storage::Error> {
    let result = apply(repo, segment_size_bytes, opts).await;
    // A dry run, and a run skipped while a backup runs, change nothing.
    let outcome = match &result {
        _ if opts.dry_run => None,
        Ok(r) if r.skipped.is_some() => None,
        Ok(r) => Some(Ok(format!(
            "removed {} backups ({}), {} WAL objects, {} interrupted backups, {} pins; kept {} backups",
            r.removed.len(),
            r.removed
                .iter()
                .map(|b| b.id.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            r.wal_objects_removed,
            r.interrupted_backups_removed.len(),
            r.pins_removed.len(),
            r.kept.len()
        ))),
        Err(e) => Some(Err(crate::error::chain(e))),
    };
    if let Some(outcome) = outcome {
        repo.audit("expire", None, outcome).await;
    }
    result
}

async fn apply(
    repo: &Repository,
    segment_size_bytes: u64,
    opts: &ExpireOptions,
) -> Result<ExpireReport, storage::Error> {
    let mut report = ExpireReport {
        version: 1,
        dry_run: opts.dry_run,
        skipped: None,
        time: crate::format::time::to_text(&opts.now),
        policy: opts.policy.to_record(),
        kept: Vec::new(),
        removed: Vec::new(),
        horizon_lsn: None,
        floor_lsn: None,
        wal_objects_removed: 0,
        wal_bytes_removed: 0,
        superseded_deltas_removed: 0,
        interrupted_backups_removed: Vec::new(),
        pins_removed: Vec::new(),
    };
    let backup_objects = repo.list(layout::BACKUPS_PREFIX).await?;
    // Ages on the store's clock; a dry run may hold read-only credentials
    // and reads this host's clock instead (it deletes nothing).
    let now = match repo.store_now().await {
        Ok(now) => now,
        Err(_) if opts.dry_run => Utc::now(),
        Err(e) => return Err(e),
    };
    let unfinished = unfinished(&backup_objects, opts.orphan_grace, now);
    if let Some(id) = unfinished.running.first() {
        report.skipped = Some(format!(
            "backup {id} is running (an object of it is newer than {}): nothing is removed while a backup runs",
            humantime::format_duration(opts.orphan_grace)
        ));
        return Ok(report);
    }
    let backups = repo.list_backups().await?;
    let listed_at = Utc::now();
    let wal_objects = repo.list(layout::WAL_PREFIX).await?;
    let previous = repo.latest_expire_record().await?;
    let old_floor = previous.as_ref().and_then(|(_, r)| r.floor_lsn);
    let inv = WalInventory::from_listing(&wal_objects, old_floor, segment_size_bytes);
    let pins = repo.read_pins().await?;

    let facts: Vec<BackupFacts> = backups
        .iter()
        .filter_map(|b| facts_of(b, &inv, segment_size_bytes))
        .collect();
    let decision = retention::decide(&facts, &pins, &opts.policy, opts.now);
    let kept_facts: Vec<&BackupFacts> = facts
        .iter()
        .filter(|f| decision.keep.contains_key(&f.id))
        .collect();
    let parsed: Vec<(String, WalObject)> = wal_objects
        .iter()
        .filter_map(|o| {
            layout::parse_wal_key(&o.key, segment_size_bytes).map(|w| (o.key.clone(), w))
        })
        .collect();
    let sizes: BTreeMap<&str, u64> = wal_objects
        .iter()
        .map(|o| (o.key.as_str(), o.size))
        .collect();
    let wal_gone =
        retention::wal_to_remove(&parsed, &kept_facts, decision.horizon, segment_size_bytes);
    let floor = match (old_floor, decision.horizon) {
        (Some(a), Some(b)) => Some(a.max(b.segment_start(segment_size_bytes))),
        (a, b) => a.or(b.map(|h| h.segment_start(segment_size_bytes))),
    };
    report.horizon_lsn = decision.horizon;
    report.floor_lsn = floor;
    report.kept = decision
        .keep
        .iter()
        .map(|(id, reasons)| KeptBackup {
            id: id.clone(),
            reasons: reasons.iter().map(ToString::to_string).collect(),
        })
        .collect();
    let by_id: BTreeMap<&str, &BackupMetadata> =
        backups.iter().map(|b| (b.id.as_str(), b)).collect();
    report.removed = decision
        .remove
        .iter()
        .map(|id| RemovedBackup {
            id: id.clone(),
            stop_time: crate::format::time::to_text(&by_id[id.as_str()].stop_time),
            stored_bytes: by_id[id.as_str()].stored_bytes,
        })
        .collect();
    let mut wal_keys = Vec::new();
    for (key, why) in &wal_gone {
        match why {
            WalRemoval::BelowHorizon => {
                report.wal_objects_removed += 1;
                report.wal_bytes_removed += sizes.get(key).copied().unwrap_or(0);
            }
            WalRemoval::Superseded => report.superseded_deltas_removed += 1,
        }
        wal_keys.push((*key).to_string());
    }
    report.interrupted_backups_removed = unfinished.dead.iter().map(|(id, _)| id.clone()).collect();
    report.pins_removed = pins
        .iter()
        .filter(|p| {
            !p.holds_at(opts.now)
                || decision.remove.contains(&p.backup_id)
                || !by_id.contains_key(p.backup_id.as_str())
        })
        .map(|p| p.backup_id.clone())
        .collect();
    if opts.dry_run {
        return Ok(report);
    }

    let seq = previous.map_or(1, |(seq, _)| seq + 1);
    let record = ExpireRecord {
        version: EXPIRE_RECORD_VERSION,
        time: opts.now,
        policy: opts.policy.to_record(),
        floor_lsn: floor,
        removed_backups: decision.remove.clone(),
        removed_wal_objects: report.wal_objects_removed,
        removed_bytes: report.wal_bytes_removed
            + report.removed.iter().map(|r| r.stored_bytes).sum::<u64>(),
    };
    repo.write_expire_record(seq, &record).await?;
    for id in &decision.remove {
        info!(backup = id, "removing backup");
        repo.delete(&layout::backup_json_key(id)).await?;
        let keys: Vec<String> = backup_objects
            .iter()
            .filter(|o| layout::backup_id_of(&o.key) == Some(id.as_str()))
            .map(|o| o.key.clone())
            .collect();
        repo.delete_many(&keys).await?;
    }
    if !wal_keys.is_empty() {
        info!(
            objects = wal_keys.len(),
            floor = ?floor.map(|l| l.to_string()),
            "removing WAL no kept backup or recovery window needs"
        );
        repo.delete_many(&wal_keys).await?;
    }
    for (id, keys) in &unfinished.dead {
        info!(
            backup = id,
            objects = keys.len(),
            "removing an interrupted backup's leftovers"
        );
        repo.delete_many(keys).await?;
    }
    for id in &report.pins_removed {
        repo.delete_pin(id).await?;
    }
    // The listing as it stands now, for `list`. Without it (a failed write),
    // `list` lists every object, as it does before the first run.
    let gone: BTreeSet<&str> = wal_keys.iter().map(String::as_str).collect();
    let remaining: Vec<storage::ObjectInfo> = wal_objects
        .iter()
        .filter(|o| !gone.contains(o.key.as_str()))
        .cloned()
        .collect();
    let wal_index = index::build(&remaining, seq, listed_at, segment_size_bytes);
    if let Err(e) = repo.write_wal_index(&wal_index).await {
        warn!(error = %e, "could not store the WAL index: `list` lists every WAL object until the next run stores one");
    }
    Ok(report)
}

/// What retention needs of a backup: `None` for metadata whose segment
/// names do not parse (such a backup is never removed by policy).
fn facts_of(
    b: &BackupMetadata,
    inv: &WalInventory,
    segment_size_bytes: u64,
) -> Option<BackupFacts> {
    let first = SegmentName::parse(&b.wal_range.first_segment, segment_size_bytes).ok()?;
    let last = SegmentName::parse(&b.wal_range.last_segment, segment_size_bytes).ok()?;
    let restorable = inv
        .first_missing(
            b.wal_range.timeline,
            b.wal_range.start_lsn,
            b.wal_range.stop_lsn,
            segment_size_bytes,
        )
        .is_none();
    Some(BackupFacts {
        id: b.id.clone(),
        stop_time: b.stop_time,
        start_lsn: b.wal_range.start_lsn,
        first_segment: first,
        last_segment: last,
        restorable,
    })
}
