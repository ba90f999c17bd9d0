//! `info`: the repository in one screen for the person on call: backups,
//! what can be restored (per timeline, from when to when), the archive's
//! end and its lag behind the server, retention in force, pins and marks.

use serde::Serialize;

use crate::format::KeyId;
use crate::format::time::to_text;
use crate::lsn::Lsn;
use crate::protocol::ConnInfo;
use crate::restore::plan::{RecoveryTarget, TimelineTarget, plan_restore};
use crate::storage::{self, Repository, layout};
use crate::wal::inventory::WalInventory;

/// The `info --json` schema version (docs/operations.md).
pub const INFO_VERSION: u32 = 2;

/// `info --json`, schema version [`INFO_VERSION`].
#[derive(Clone, Debug, Serialize)]
pub struct Info {
    /// Schema version.
    pub version: u32,
    /// The repository, without credentials.
    pub repository: String,
    /// The first moment a restore can reach: the earliest restorable time
    /// over all timelines (`None`: nothing is restorable).
    pub first_recoverable_time: Option<String>,
    /// The backup a restore to that moment starts from.
    pub first_recoverable_backup: Option<String>,
    /// The newest backup in the repository.
    pub last_successful_backup: Option<BackupEvent>,
    /// The newest failed backup in the audit trail, if any.
    pub last_failed_backup: Option<BackupEvent>,
    /// Seconds since the newest WAL object was stored (this host's clock
    /// against the store's times), `None` without WAL: how far behind
    /// the archive is when nothing newer reaches it.
    pub wal_age_seconds: Option<i64>,
    /// The cluster's system identifier.
    pub system_identifier: String,
    /// PostgreSQL major.
    pub pg_major: u32,
    /// `aes-256-gcm` or `none`.
    pub encryption: String,
    /// Backups, oldest first.
    pub backups: Vec<BackupInfo>,
    /// Backups sealed with a key the reader lacks, with the key each needs.
    pub locked_backups: Vec<crate::storage::LockedBackup>,
    /// What can be restored, per timeline with WAL.
    pub timelines: Vec<TimelineInfo>,
    /// The server, when `--pg` reached it.
    pub server: Option<ServerLag>,
    /// The newest expire run, if any.
    pub retention: Option<RetentionInfo>,
    /// Pinned backups.
    pub pins: Vec<PinInfo>,
    /// Marks (named restore points), oldest first.
    pub marks: Vec<MarkInfo>,
    /// The newest restore drill.
    pub last_drill: Option<crate::format::drill::DrillRecord>,
    /// The keys `walvault.json` lists, with what each seals when counted.
    pub keys: Vec<KeyInfo>,
    /// The systems the repository held before upgrades, oldest first
    /// (empty unless the cluster was upgraded).
    pub earlier_systems: Vec<EarlierSystemInfo>,
}

/// A system the repository held before an upgrade.
#[derive(Clone, Debug, Serialize)]
pub struct EarlierSystemInfo {
    /// Its system identifier.
    pub system_identifier: String,
    /// Its major version.
    pub pg_major: u32,
    /// When the next system was recorded.
    pub until: String,
    /// Where its WAL is stored.
    pub wal_prefix: String,
    /// Its backups in the repository.
    pub backups: usize,
    /// The oldest moment restorable within it (its oldest restorable backup's end).
    pub earliest_restorable_time: Option<String>,
    /// That backup.
    pub earliest_backup: Option<String>,
    /// When its newest WAL was stored.
    pub latest_wal_time: Option<String>,
}

/// One key.
#[derive(Clone, Debug, Serialize)]
pub struct KeyInfo {
    /// Its id.
    pub id: KeyId,
    /// Whether it seals new objects (first in the key file).
    pub seals_new_objects: bool,
    /// Objects sealed with it (`None` unless counted, `info --keys`).
    pub objects: Option<u64>,
    /// Their stored bytes.
    pub bytes: Option<u64>,
}

/// One backup.
#[derive(Clone, Debug, Serialize)]
pub struct BackupInfo {
    /// Id.
    pub id: String,
    /// The system it is a backup of (an earlier one's after an upgrade).
    pub system_identifier: String,
    /// Its PostgreSQL major: restore it with that major's binaries.
    pub pg_major: u32,
    /// Start and stop (RFC 3339 UTC).
    pub start_time: String,
    /// Stop time: restorable from here.
    pub stop_time: String,
    /// Seconds it took.
    pub duration_seconds: f64,
    /// Database size (plaintext bytes of its tar streams).
    pub size_bytes: u64,
    /// Stored bytes.
    pub stored_bytes: u64,
    /// Timeline.
    pub timeline: u32,
    /// Whether its WAL range is whole in the archive.
    pub restorable: bool,
    /// Pinned by `keep`.
    pub pinned: bool,
    /// The label given to BASE_BACKUP.
    pub label: String,
    /// `backup --annotate` metadata (empty when none).
    pub annotations: std::collections::BTreeMap<String, String>,
}

/// A backup that ended, as `info` reports the last success and failure.
#[derive(Clone, Debug, Serialize)]
pub struct BackupEvent {
    /// When it ended (the stop time of a stored backup).
    pub time: String,
    /// The backup's id (`None` for a failure before it had one).
    pub backup_id: Option<String>,
    /// Where it ran (failures: the audit record's host).
    pub host: Option<String>,
    /// Why it failed (`None` for a success).
    pub error: Option<String>,
}

/// What can be restored on one timeline.
#[derive(Clone, Debug, Serialize)]
pub struct TimelineInfo {
    /// Timeline.
    pub timeline: u32,
    /// The stop time of the oldest backup from which recovery reaches this
    /// timeline's archive end without a gap (`None`: nothing restorable).
    pub earliest_restorable_time: Option<String>,
    /// When the newest WAL object of the timeline was stored: commits up to
    /// about then are restorable.
    pub latest_restorable_time: Option<String>,
    /// The backup recovery would start from for the earliest time.
    pub earliest_backup: Option<String>,
    /// The first WAL held on the timeline: its LSN and segment file.
    pub first_lsn: Option<Lsn>,
    /// The first segment file held.
    pub first_segment: Option<String>,
    /// The last segment file held (complete or as deltas).
    pub last_segment: Option<String>,
    /// End of the WAL held without a hole.
    pub archive_end_lsn: Option<Lsn>,
    /// Stored bytes of its WAL.
    pub stored_bytes: u64,
}

/// The server and how far the archive is behind it.
#[derive(Clone, Debug, Serialize)]
pub struct ServerLag {
    /// Where it is.
    pub target: String,
    /// Its timeline and WAL position (flush position on a primary).
    pub timeline: u32,
    /// Its WAL position.
    pub wal_lsn: Lsn,
    /// Bytes of WAL on the server that the archive does not hold yet.
    pub lag_bytes: Option<u64>,
}

/// Retention in force, as the newest expire run applied it.
#[derive(Clone, Debug, Serialize)]
pub struct RetentionInfo {
    /// When it ran.
    pub last_run: String,
    /// The policy.
    pub policy: crate::format::retention::PolicyRecord,
    /// WAL below this was removed (except kept backups' ranges).
    pub floor_lsn: Option<Lsn>,
}

/// A pin.
#[derive(Clone, Debug, Serialize)]
pub struct PinInfo {
    /// The backup.
    pub backup_id: String,
    /// Why.
    pub reason: Option<String>,
    /// When it lapses.
    pub until: Option<String>,
}

/// A mark.
#[derive(Clone, Debug, Serialize)]
pub struct MarkInfo {
    /// Name (for `restore --target-name`).
    pub name: String,
    /// LSN.
    pub lsn: Lsn,
    /// Timeline.
    pub timeline: u32,
    /// Server time at creation.
    pub time: String,
}

/// Gathers the information; with `server`, also the lag behind it.
///
/// # Errors
/// Store errors, or an empty repository.
pub async fn gather(
    repo: &Repository,
    server: Option<&ConnInfo>,
    count_keys: bool,
) -> Result<Info, storage::Error> {
    let manifest = repo
        .open_manifest()
        .await?
        .ok_or_else(|| storage::Error::BadManifest {
            key: layout::REPOSITORY_MANIFEST.into(),
            reason: "the repository is empty (no walvault.json)".into(),
        })?;
    let size = manifest.wal_segment_size;
    let crate::storage::BackupList {
        backups,
        locked: locked_backups,
    } = repo.list_backups_readable().await?;
    let wal_objects = repo.list(layout::WAL_PREFIX).await?;
    let record = repo.latest_expire_record().await?;
    let inv = WalInventory::from_listing(
        &wal_objects,
        record.as_ref().and_then(|(_, r)| r.floor_lsn),
        size,
    );
    let now = chrono::Utc::now();
    let pins: Vec<_> = repo
        .read_pins()
        .await?
        .into_iter()
        .filter(|p| p.holds_at(now))
        .collect();
    let marks = repo.read_marks().await?;
    let last_drill = repo.latest_drill().await?;
    let usage = if count_keys {
        Some(repo.key_usage().await?)
    } else {
        None
    };
    let write_key = repo.keyring().write_key().map(|k| k.id());
    let keys = manifest
        .key_ids
        .iter()
        .map(|&id| {
            let u = usage
                .as_ref()
                .map(|u| u.get(&Some(id)).copied().unwrap_or_default());
            KeyInfo {
                id,
                seals_new_objects: write_key == Some(id),
                objects: u.map(|u| u.objects),
                bytes: u.map(|u| u.bytes),
            }
        })
        .collect();

    // Systems held before an upgrade: their own WAL, their own backups.
    let stored = repo.stored_identity().cloned().unwrap_or(manifest.clone());
    let mut earlier = Vec::new();
    for e in &stored.earlier_systems {
        let handle = repo.for_system(&e.system_identifier)?;
        let objects = handle.list(layout::WAL_PREFIX).await?;
        let inventory = WalInventory::from_listing(&objects, None, e.wal_segment_size);
        earlier.push((e, handle, objects, inventory));
    }
    let restorable = |b: &crate::format::backup::BackupMetadata| {
        let (inv, size) = if b.system_identifier == manifest.system_identifier {
            (&inv, size)
        } else {
            match earlier
                .iter()
                .find(|(e, ..)| e.system_identifier == b.system_identifier)
            {
                Some((e, _, _, i)) => (i, e.wal_segment_size),
                None => return false,
            }
        };
        inv.first_missing(
            b.wal_range.timeline,
            b.wal_range.start_lsn,
            b.wal_range.stop_lsn,
            size,
        )
        .is_none()
    };
    let earlier_systems: Vec<EarlierSystemInfo> = earlier
        .iter()
        .map(|(e, handle, objects, _)| {
            let own = || {
                backups
                    .iter()
                    .filter(|b| b.system_identifier == e.system_identifier)
            };
            let first = own().find(|b| restorable(b));
            EarlierSystemInfo {
                system_identifier: e.system_identifier.clone(),
                pg_major: e.pg_major,
                until: to_text(&e.until),
                wal_prefix: handle.stored_key(layout::WAL_PREFIX),
                backups: own().count(),
                earliest_restorable_time: first.map(|b| to_text(&b.stop_time)),
                earliest_backup: first.map(|b| b.id.clone()),
                latest_wal_time: objects
                    .iter()
                    .map(|o| o.last_modified)
                    .max()
                    .map(|t| to_text(&t)),
            }
        })
        .collect();
    let backup_infos = backups
        .iter()
        .map(|b| BackupInfo {
            id: b.id.clone(),
            system_identifier: b.system_identifier.clone(),
            pg_major: b.pg_major,
            start_time: to_text(&b.start_time),
            stop_time: to_text(&b.stop_time),
            duration_seconds: b.duration_seconds,
            size_bytes: b.plain_bytes,
            stored_bytes: b.stored_bytes,
            timeline: b.timeline.get(),
            restorable: restorable(b),
            pinned: pins.iter().any(|p| p.backup_id == b.id),
            label: b.label.clone(),
            annotations: b.annotations.clone(),
        })
        .collect();

    let summary = crate::wal::summary::summarize(&inv, size);
    let mut timelines = Vec::new();
    for (&tli, t) in &inv.timelines {
        let held = summary.timelines.iter().find(|s| s.timeline == tli);
        let newest_stored = wal_objects
            .iter()
            .filter(|o| {
                o.key
                    .starts_with(&format!("{}{tli:08X}/", layout::WAL_PREFIX))
            })
            .map(|o| o.last_modified)
            .max();
        let mut earliest = None;
        for b in backups
            .iter()
            .filter(|b| b.system_identifier == manifest.system_identifier)
        {
            let plan = plan_restore(
                repo,
                vec![b.clone()],
                None,
                &RecoveryTarget::End,
                TimelineTarget::Number(tli),
            )
            .await;
            if plan.is_ok() {
                earliest = Some(b);
                break;
            }
        }
        timelines.push(TimelineInfo {
            timeline: tli.get(),
            earliest_restorable_time: earliest.map(|b| to_text(&b.stop_time)),
            // Never before the window's start: the plan found the WAL
            // through that backup's end, whenever it was stored.
            latest_restorable_time: earliest
                .map(|b| newest_stored.map_or(b.stop_time, |t| t.max(b.stop_time)))
                .map(|t| to_text(&t)),
            earliest_backup: earliest.map(|b| b.id.clone()),
            first_lsn: held.map(|h| h.start_lsn),
            first_segment: held.map(|h| h.first_segment.clone()),
            last_segment: held.map(|h| h.last_segment.clone()),
            archive_end_lsn: t.contiguous_end(size),
            stored_bytes: t.stored_bytes,
        });
    }

    let server = match server {
        Some(c) => server_lag(c, &inv, size).await,
        None => None,
    };
    let first = timelines
        .iter()
        .filter_map(|t| {
            Some((
                t.earliest_restorable_time.clone()?,
                t.earliest_backup.clone(),
            ))
        })
        .chain(earlier_systems.iter().filter_map(|e| {
            Some((
                e.earliest_restorable_time.clone()?,
                e.earliest_backup.clone(),
            ))
        }))
        .min();
    let (failures, _) = repo
        .read_audit(|_, operation| operation == "backup")
        .await?;
    let last_failed_backup = failures
        .iter()
        .rev()
        .find(|r| !r.succeeded())
        .map(|r| BackupEvent {
            time: to_text(&r.at),
            backup_id: r.target.clone(),
            host: Some(r.host.clone()),
            error: Some(r.detail.clone()),
        });
    let last_successful_backup = backups.last().map(|b| BackupEvent {
        time: to_text(&b.stop_time),
        backup_id: Some(b.id.clone()),
        host: Some(b.source.server.clone()),
        error: None,
    });
    let wal_age_seconds = wal_objects
        .iter()
        .map(|o| o.last_modified)
        .max()
        .map(|t| (now - t).num_seconds().max(0));
    Ok(Info {
        version: INFO_VERSION,
        repository: repo.display().to_string(),
        first_recoverable_time: first.as_ref().map(|(t, _)| t.clone()),
        first_recoverable_backup: first.and_then(|(_, b)| b),
        last_successful_backup,
        last_failed_backup,
        wal_age_seconds,
        system_identifier: manifest.system_identifier.clone(),
        pg_major: manifest.pg_major,
        encryption: manifest.encryption.clone(),
        backups: backup_infos,
        locked_backups,
        timelines,
        server,
        retention: record.map(|(_, r)| RetentionInfo {
            last_run: to_text(&r.time),
            policy: r.policy,
            floor_lsn: r.floor_lsn,
        }),
        pins: pins
            .into_iter()
            .map(|p| PinInfo {
                backup_id: p.backup_id,
                reason: p.reason,
                until: p.until.as_ref().map(to_text),
            })
            .collect(),
        marks: marks
            .into_iter()
            .map(|m| MarkInfo {
                name: m.name,
                lsn: m.lsn,
                timeline: m.timeline.get(),
                time: to_text(&m.time),
            })
            .collect(),
        last_drill,
        keys,
        earlier_systems,
    })
}

async fn server_lag(c: &ConnInfo, inv: &WalInventory, size: u64) -> Option<ServerLag> {
    let (conn, info) = match crate::protocol::server::connect(c).await {
        Ok(x) => x,
        Err(e) => {
            tracing::warn!(error = %crate::error::chain(&e), "cannot reach the server for the lag");
            return None;
        }
    };
    conn.terminate().await;
    let tli = info.identity.timeline;
    let pos = info.identity.xlogpos;
    let end = inv.timelines.get(&tli).and_then(|t| t.contiguous_end(size));
    Some(ServerLag {
        target: info.target,
        timeline: tli.get(),
        wal_lsn: pos,
        lag_bytes: end.map(|e| pos.0.saturating_sub(e.0)),
    })
}
