//! What the sidecar knows about itself, for Prometheus (`/metrics`) and for
//! `/health`. The stream keeps its own counters ([`StreamStats`], with the
//! upload stage's) and they are read here at scrape time; the backup
//! schedule, expire and a slow observer (slot status, the repository's
//! backups) write the slower state here; the HTTP endpoint only reads. The
//! lag is measured against the repository: WAL received from the server but
//! not yet stored.

pub mod health;
pub mod http;
pub mod notify;
mod observer;

use std::fmt::Write as _;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use chrono::{DateTime, Utc};

use crate::lsn::Lsn;
use crate::storage::Repository;
use crate::wal::receiver::StreamStats;

pub use observer::observe;

/// The sidecar's state, shared by its tasks.
pub struct Metrics {
    started: Instant,
    repo: Repository,
    /// The WAL stream's own counters, read at scrape time.
    pub stream: Arc<StreamStats>,
    /// Backup, expire, slot and repository views.
    pub state: Mutex<State>,
}

/// The slower-changing part, updated as things happen.
#[derive(Clone, Debug, Default)]
pub struct State {
    /// Scheduled backups that succeeded and failed.
    pub backups_succeeded: u64,
    /// Scheduled backups that failed.
    pub backups_failed: u64,
    /// Whether the last scheduled backup failed.
    pub last_backup_failed: bool,
    /// The newest backup in the repository.
    pub newest_backup: Option<BackupFacts>,
    /// The stop time of the oldest backup whose WAL range is whole.
    pub earliest_restorable: Option<DateTime<Utc>>,
    /// Expire runs that succeeded.
    pub expire_succeeded: u64,
    /// Expire runs that failed.
    pub expire_failed: u64,
    /// When expire last completed.
    pub last_expire: Option<DateTime<Utc>>,
    /// Whether the last expire run failed.
    pub last_expire_failed: bool,
    /// Backups expire removed since start.
    pub expire_removed_backups: u64,
    /// WAL objects expire removed since start.
    pub expire_removed_wal_objects: u64,
    /// The slot, as `pg_replication_slots` shows it.
    pub slot: Option<SlotFacts>,
    /// The newest drill recorded in the repository.
    pub last_drill: Option<DrillFacts>,
}

/// The newest backup.
#[derive(Clone, Debug)]
pub struct BackupFacts {
    /// Its id.
    pub id: String,
    /// When it stopped.
    pub stop_time: DateTime<Utc>,
    /// Database bytes.
    pub size_bytes: u64,
    /// Stored bytes.
    pub stored_bytes: u64,
    /// How long it took.
    pub duration_seconds: f64,
}

/// The slot's status.
#[derive(Clone, Debug)]
pub struct SlotFacts {
    /// `wal_status`: reserved, extended, unreserved, lost (or missing).
    pub wal_status: String,
    /// `safe_wal_size` in bytes (`None` without `max_slot_wal_keep_size`).
    pub safe_wal_size: Option<i64>,
    /// `max_slot_wal_keep_size` in bytes (`None` for unlimited).
    pub max_keep_bytes: Option<i64>,
}

/// The newest restore drill.
#[derive(Clone, Debug)]
pub struct DrillFacts {
    /// Whether it succeeded.
    pub success: bool,
    /// When it ended.
    pub time: DateTime<Utc>,
}

impl Metrics {
    /// Fresh metrics for a sidecar writing to `repo`.
    pub fn new(repo: Repository) -> Arc<Self> {
        Arc::new(Metrics {
            started: Instant::now(),
            repo,
            stream: Arc::new(StreamStats::default()),
            state: Mutex::new(State::default()),
        })
    }

    /// A copy of the slower state.
    pub fn snapshot(&self) -> State {
        self.state.lock().expect("not poisoned").clone()
    }

    /// Updates the slower state.
    pub fn update(&self, f: impl FnOnce(&mut State)) {
        f(&mut self.state.lock().expect("not poisoned"));
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn render(&self, health: &health::Health) -> String {
        let s = self.snapshot();
        let w = &self.stream;
        let mut out = String::with_capacity(4096);
        let mut metric = |name: &str, kind: &str, help: &str, samples: &[(&str, f64)]| {
            let _ = writeln!(out, "# HELP walvault_{name} {help}");
            let _ = writeln!(out, "# TYPE walvault_{name} {kind}");
            for (labels, v) in samples {
                let _ = writeln!(out, "walvault_{name}{labels} {v}");
            }
        };
        let ts = |t: Option<DateTime<Utc>>| t.map_or(0.0, |t| t.timestamp() as f64);
        let b = |x: bool| if x { 1.0 } else { 0.0 };
        metric("up", "gauge", "1 while the sidecar runs.", &[("", 1.0)]);
        metric(
            "uptime_seconds",
            "gauge",
            "Seconds since the sidecar started.",
            &[("", self.started.elapsed().as_secs_f64())],
        );
        metric(
            "streaming",
            "gauge",
            "1 while a replication connection copies WAL.",
            &[("", b(w.streaming.load(Relaxed)))],
        );
        metric(
            "reconnects_total",
            "counter",
            "Replication connections made after the first.",
            &[("", w.reconnects.load(Relaxed) as f64)],
        );
        metric(
            "server_wal_lsn",
            "gauge",
            "The server's WAL position as last reported, as a byte number.",
            &[("", w.server_lsn().0 as f64)],
        );
        metric(
            "received_lsn",
            "gauge",
            "End of the WAL received, as a byte number.",
            &[("", w.received_lsn().0 as f64)],
        );
        metric(
            "durable_lsn",
            "gauge",
            "End of the WAL stored in the repository without a hole, as a byte number.",
            &[("", w.durable_lsn().0 as f64)],
        );
        metric(
            "lag_bytes",
            "gauge",
            "WAL on the server or received but not stored: the data-loss window in bytes.",
            &[("", w.lag_bytes() as f64)],
        );
        metric(
            "lag_seconds",
            "gauge",
            "How long the oldest WAL not yet stored has waited: the data-loss window in seconds.",
            &[("", w.lag_seconds())],
        );
        metric(
            "uploaded_objects_total",
            "counter",
            "WAL objects stored (segments, deltas, history files).",
            &[("", w.upload.objects.load(Relaxed) as f64)],
        );
        metric(
            "uploaded_bytes_total",
            "counter",
            "Plaintext WAL bytes stored.",
            &[("", w.upload.plain_bytes.load(Relaxed) as f64)],
        );
        metric(
            "stored_bytes_total",
            "counter",
            "Sealed bytes of stored WAL objects.",
            &[("", w.upload.stored_bytes.load(Relaxed) as f64)],
        );
        metric(
            "upload_errors_total",
            "counter",
            "Failed store attempts of WAL uploads.",
            &[("", w.upload.errors.load(Relaxed) as f64)],
        );
        metric(
            "upload_retries_total",
            "counter",
            "WAL uploads tried again after a failure.",
            &[("", w.upload.retries.load(Relaxed) as f64)],
        );
        metric(
            "wal_conflicts_total",
            "counter",
            "WAL objects another writer had stored with other bytes (the stored version, valid WAL, kept).",
            &[("", w.upload.wal_conflicts.load(Relaxed) as f64)],
        );
        metric(
            "store_unreachable",
            "gauge",
            "1 while the store fails every attempt and uploads wait.",
            &[("", b(w.store_unreachable()))],
        );
        let r = self.repo.requests();
        metric(
            "store_requests_total",
            "counter",
            "Requests to the object store by method.",
            &[
                ("{method=\"PUT\"}", r.put.load(Relaxed) as f64),
                ("{method=\"GET\"}", r.get.load(Relaxed) as f64),
                ("{method=\"LIST\"}", r.list.load(Relaxed) as f64),
                ("{method=\"DELETE\"}", r.delete.load(Relaxed) as f64),
            ],
        );
        let (used, limit) = w.memory_bytes();
        metric(
            "memory_used_bytes",
            "gauge",
            "WAL held in memory before it is stored.",
            &[("", used as f64)],
        );
        metric(
            "memory_budget_bytes",
            "gauge",
            "The memory budget (--memory-budget).",
            &[("", limit as f64)],
        );
        metric(
            "backups_total",
            "counter",
            "Scheduled backups by result.",
            &[
                ("{result=\"success\"}", s.backups_succeeded as f64),
                ("{result=\"failure\"}", s.backups_failed as f64),
            ],
        );
        metric(
            "last_backup_failed",
            "gauge",
            "1 when the last scheduled backup failed.",
            &[("", b(s.last_backup_failed))],
        );
        let nb = s.newest_backup.as_ref();
        metric(
            "last_backup_timestamp_seconds",
            "gauge",
            "Stop time of the newest backup in the repository (0: none).",
            &[("", ts(nb.map(|b| b.stop_time)))],
        );
        metric(
            "last_backup_size_bytes",
            "gauge",
            "Database size of the newest backup.",
            &[("", nb.map_or(0.0, |b| b.size_bytes as f64))],
        );
        metric(
            "last_backup_stored_bytes",
            "gauge",
            "Stored size of the newest backup.",
            &[("", nb.map_or(0.0, |b| b.stored_bytes as f64))],
        );
        metric(
            "last_backup_duration_seconds",
            "gauge",
            "How long the newest backup took.",
            &[("", nb.map_or(0.0, |b| b.duration_seconds))],
        );
        metric(
            "earliest_restorable_timestamp_seconds",
            "gauge",
            "Stop time of the oldest backup whose WAL range is whole (0: none).",
            &[("", ts(s.earliest_restorable))],
        );
        let latest = (w.durable_lsn() > Lsn::INVALID).then(|| {
            Utc::now() - chrono::Duration::milliseconds((w.lag_seconds() * 1000.0) as i64)
        });
        metric(
            "latest_restorable_timestamp_seconds",
            "gauge",
            "About the newest commit time the archive holds: now minus the lag.",
            &[("", ts(latest))],
        );
        let statuses = ["reserved", "extended", "unreserved", "lost", "missing"];
        let current = s.slot.as_ref().map(|x| x.wal_status.as_str());
        let slot_samples: Vec<(String, f64)> = statuses
            .iter()
            .map(|st| (format!("{{wal_status=\"{st}\"}}"), b(current == Some(*st))))
            .collect();
        let slot_refs: Vec<(&str, f64)> =
            slot_samples.iter().map(|(l, v)| (l.as_str(), *v)).collect();
        metric(
            "slot_wal_status",
            "gauge",
            "The slot's wal_status (1 for the current one).",
            &slot_refs,
        );
        metric(
            "slot_safe_wal_size_bytes",
            "gauge",
            "WAL the server may still write before the slot is lost (-1: unlimited or unknown).",
            &[(
                "",
                s.slot
                    .as_ref()
                    .and_then(|x| x.safe_wal_size)
                    .map_or(-1.0, |v| v as f64),
            )],
        );
        metric(
            "expire_runs_total",
            "counter",
            "Expire runs by result.",
            &[
                ("{result=\"success\"}", s.expire_succeeded as f64),
                ("{result=\"failure\"}", s.expire_failed as f64),
            ],
        );
        metric(
            "last_expire_timestamp_seconds",
            "gauge",
            "When expire last completed (0: never).",
            &[("", ts(s.last_expire))],
        );
        metric(
            "expire_removed_backups_total",
            "counter",
            "Backups expire removed.",
            &[("", s.expire_removed_backups as f64)],
        );
        metric(
            "expire_removed_wal_objects_total",
            "counter",
            "WAL objects expire removed.",
            &[("", s.expire_removed_wal_objects as f64)],
        );
        metric(
            "restore_test_success",
            "gauge",
            "1 when the newest restore drill succeeded, 0 when it failed (-1: none yet).",
            &[("", s.last_drill.as_ref().map_or(-1.0, |d| b(d.success)))],
        );
        metric(
            "restore_test_timestamp_seconds",
            "gauge",
            "When the newest restore drill ended (0: none).",
            &[("", ts(s.last_drill.as_ref().map(|d| d.time)))],
        );
        metric(
            "health_status",
            "gauge",
            "0 ok, 1 degraded, 2 failing (as /health).",
            &[("", f64::from(health.status.level()))],
        );
        out
    }
}
