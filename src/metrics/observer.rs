//! The slow half of the metrics: the slot's status from the server and the
//! backups the repository holds, read on an interval (and the repository
//! again whenever asked, e.g. after a backup or an expire run).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::{BackupFacts, DrillFacts, Metrics, SlotFacts};
use crate::protocol::{ConnInfo, ReplicationConnection};
use crate::storage::Repository;
use crate::wal::inventory::WalInventory;

/// How often the slot is read.
pub const SLOT_INTERVAL: Duration = Duration::from_secs(30);
/// The first slot read waits this long, for the stream to create the slot.
const SLOT_FIRST_DELAY: Duration = Duration::from_secs(5);
/// How often the repository's backups are read without being asked.
pub const REPOSITORY_INTERVAL: Duration = Duration::from_secs(300);
/// How often they are read while none is known: a backup taken beside the
/// sidecar (`walvault backup`) shows within this, so `/health` does not
/// claim for minutes that nothing can be restored.
pub const NO_BACKUP_INTERVAL: Duration = Duration::from_secs(10);

/// Reads the slot every [`SLOT_INTERVAL`] and the repository every
/// [`REPOSITORY_INTERVAL`] or when `refresh` is notified, until `cancel`.
pub async fn observe(
    metrics: Arc<Metrics>,
    repo: Repository,
    conninfo: ConnInfo,
    slot: String,
    refresh: Arc<Notify>,
    cancel: CancellationToken,
) {
    let mut slot_tick = tokio::time::interval_at(
        tokio::time::Instant::now() + SLOT_FIRST_DELAY,
        SLOT_INTERVAL,
    );
    let mut repo_tick = tokio::time::interval(REPOSITORY_INTERVAL);
    let mut empty_tick = tokio::time::interval(NO_BACKUP_INTERVAL);
    empty_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    repo_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let knows_a_backup = metrics.snapshot().newest_backup.is_some();
        tokio::select! {
            biased;
            () = cancel.cancelled() => return,
            _ = slot_tick.tick() => {
                // Before the stream first connects, the slot may not exist
                // yet: that is no finding.
                let streamed = metrics.stream.streaming.load(std::sync::atomic::Ordering::Relaxed)
                    || metrics.stream.reconnects.load(std::sync::atomic::Ordering::Relaxed) > 0;
                if let Some(facts) = read_slot(&conninfo, &slot).await
                    && (facts.wal_status != "missing" || streamed)
                {
                    metrics.update(|s| s.slot = Some(facts));
                }
            }
            _ = repo_tick.tick() => read_repository(&metrics, &repo).await,
            _ = empty_tick.tick(), if !knows_a_backup => read_repository(&metrics, &repo).await,
            () = refresh.notified() => read_repository(&metrics, &repo).await,
        }
    }
}

async fn read_slot(conninfo: &ConnInfo, slot: &str) -> Option<SlotFacts> {
    let mut conn = match ReplicationConnection::connect(&conninfo.for_sql()).await {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(error = %crate::error::chain(&e), "cannot read the slot's status");
            return None;
        }
    };
    let quoted = slot.replace('\'', "''");
    let q = conn
        .simple_query(&format!(
            "SELECT (SELECT wal_status FROM pg_replication_slots WHERE slot_name = '{quoted}'), \
             (SELECT safe_wal_size FROM pg_replication_slots WHERE slot_name = '{quoted}'), \
             pg_size_bytes(nullif(current_setting('max_slot_wal_keep_size'), '-1'))"
        ))
        .await
        .ok();
    conn.terminate().await;
    let q = q?;
    Some(SlotFacts {
        wal_status: q.get(0, 0).unwrap_or("missing").to_string(),
        safe_wal_size: q.get(0, 1).and_then(|v| v.parse().ok()),
        max_keep_bytes: q.get(0, 2).and_then(|v| v.parse().ok()),
    })
}

/// Reads the newest backup and the oldest restorable one.
pub async fn read_repository(metrics: &Metrics, repo: &Repository) {
    let backups = match repo.list_backups().await {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(error = %crate::error::chain(&e), "metrics: cannot list backups");
            return;
        }
    };
    let newest = backups.last().map(|b| BackupFacts {
        id: b.id.clone(),
        stop_time: b.stop_time,
        size_bytes: b.plain_bytes,
        stored_bytes: b.stored_bytes,
        duration_seconds: b.duration_seconds,
    });
    // The oldest backup whose WAL range is whole, in its own system's WAL
    // (an earlier system's after an upgrade).
    let mut inventories: std::collections::BTreeMap<&str, Option<WalInventory>> =
        std::collections::BTreeMap::new();
    let mut earliest = None;
    for b in &backups {
        if !inventories.contains_key(b.system_identifier.as_str()) {
            let scanned = match repo.for_system(&b.system_identifier) {
                Ok(handle) => WalInventory::scan(&handle, b.wal_segment_size).await.ok(),
                Err(_) => None,
            };
            inventories.insert(&b.system_identifier, scanned);
        }
        let whole = inventories[b.system_identifier.as_str()]
            .as_ref()
            .is_some_and(|inv| {
                inv.first_missing(
                    b.wal_range.timeline,
                    b.wal_range.start_lsn,
                    b.wal_range.stop_lsn,
                    b.wal_segment_size,
                )
                .is_none()
            });
        if whole {
            earliest = Some(b.stop_time);
            break;
        }
    }
    let drill = match repo.latest_drill().await {
        Ok(d) => d.map(|d| DrillFacts {
            success: d.success,
            time: d.time,
        }),
        Err(e) => {
            tracing::warn!(error = %crate::error::chain(&e), "metrics: cannot read the newest drill");
            None
        }
    };
    metrics.update(|s| {
        s.newest_backup = newest;
        s.earliest_restorable = earliest;
        s.last_drill = drill;
    });
}
