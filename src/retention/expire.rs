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
    let previous = repo.latest_expire_record().await?;
    let old_floor = previous.as_ref().and_then(|(_, r)| r.floor_lsn);
    let pins = repo.read_pins().await?;
    // The WAL of each system the repository holds, the current one last
    // (one system unless the cluster was upgraded).
    let mut systems = Vec::new();
    if repo.stored_identity().is_none() {
        repo.open_manifest().await?;
    }
    let held = repo
        .stored_identity()
        .map(crate::format::manifest::RepositoryManifest::systems)
        .unwrap_or_default();
    let count = held.len();
    for (n, (id, _, size)) in held.into_iter().enumerate() {
        let current = n + 1 == count;
        let handle = if current {
            repo.clone()
        } else {
            repo.for_system(&id)?
        };
        let objects = handle.list(layout::WAL_PREFIX).await?;
        // The floor of the expire records is the current system's.
        let inv = WalInventory::from_listing(&objects, old_floor.filter(|_| current), size);
        systems.push(SystemWal {
            id,
            size,
            current,
            handle,
            objects,
            inv,
        });
    }
    let facts: Vec<(usize, BackupFacts)> = backups
        .iter()
        .filter_map(|b| {
            let (n, s) = systems
                .iter()
                .enumerate()
                .find(|(_, s)| s.id == b.system_identifier)?;
            facts_of(b, &s.inv, s.size).map(|f| (n, f))
        })
        .collect();
    let all_facts: Vec<BackupFacts> = facts.iter().map(|(_, f)| f.clone()).collect();
    let decision = retention::decide(&all_facts, &pins, &opts.policy, opts.now);
    let mut removals: Vec<(usize, String, WalRemoval, u64)> = Vec::new();
    let mut horizon = None;
    let mut floor = None;
    for (n, system) in systems.iter().enumerate() {
        let kept_facts: Vec<&BackupFacts> = facts
            .iter()
            .filter(|(s, f)| *s == n && decision.keep.contains_key(&f.id))
            .map(|(_, f)| f)
            .collect();
        // Point-in-time recovery from the oldest backup of this system a
        // policy keeps for it; a system before an upgrade that no such
        // backup needs keeps only the ranges of its kept backups.
        let system_horizon = kept_facts
            .iter()
            .filter(|f| {
                decision.keep[&f.id]
                    .iter()
                    .any(retention::Reason::keeps_recovery)
            })
            .map(|f| f.start_lsn)
            .min()
            .or((!system.current).then_some(Lsn(u64::MAX)));
        let parsed: Vec<(String, WalObject)> = system
            .objects
            .iter()
            .filter_map(|o| layout::parse_wal_key(&o.key, system.size).map(|w| (o.key.clone(), w)))
            .collect();
        let sizes: BTreeMap<&str, u64> = system
            .objects
            .iter()
            .map(|o| (o.key.as_str(), o.size))
            .collect();
        for (key, why) in
            retention::wal_to_remove(&parsed, &kept_facts, system_horizon, system.size)
        {
            removals.push((
                n,
                key.to_string(),
                why,
                sizes.get(key).copied().unwrap_or(0),
            ));
        }
        if system.current {
            horizon = system_horizon;
            floor = match (old_floor, system_horizon) {
                (Some(a), Some(b)) => Some(a.max(b.segment_start(system.size))),
                (a, b) => a.or(b.map(|h| h.segment_start(system.size))),
            };
        }
    }
    report.horizon_lsn = horizon;
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
    for (_, _, why, size) in &removals {
        match why {
            WalRemoval::BelowHorizon => {
                report.wal_objects_removed += 1;
                report.wal_bytes_removed += size;
            }
            WalRemoval::Superseded => report.superseded_deltas_removed += 1,
        }
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
    for (n, system) in systems.iter().enumerate() {
        let keys: Vec<String> = removals
            .iter()
            .filter(|(s, ..)| *s == n)
            .map(|(_, k, ..)| k.clone())
            .collect();
        if !keys.is_empty() {
            info!(
                objects = keys.len(),
                system = system.id,
                floor = ?floor.filter(|_| system.current).map(|l| l.to_string()),
                "removing WAL no kept backup or recovery window needs"
            );
            system.handle.delete_many(&keys).await?;
        }
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
    if let Some((n, current)) = systems.iter().enumerate().find(|(_, s)| s.current) {
        let gone: BTreeSet<&str> = removals
            .iter()
            .filter(|(s, ..)| *s == n)
            .map(|(_, k, ..)| k.as_str())
            .collect();
        let remaining: Vec<storage::ObjectInfo> = current
            .objects
            .iter()
            .filter(|o| !gone.contains(o.key.as_str()))
            .cloned()
            .collect();
        let wal_index = index::build(&remaining, seq, listed_at, segment_size_bytes);
        if let Err(e) = repo.write_wal_index(&wal_index).await {
            warn!(error = %e, "could not store the WAL index: `list` lists every WAL object until the next run stores one");
        }
    }
    Ok(report)
}

/// The WAL one system of the repository holds (see
/// [`Repository::for_system`]).
struct SystemWal {
    id: String,
    size: u64,
    current: bool,
    handle: Repository,
    objects: Vec<storage::ObjectInfo>,
    inv: WalInventory,
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
