//! The sidecar: the WAL stream, and beside it the backup scheduler, under
//! one shutdown. A scheduled backup runs on its own connection while WAL
//! keeps streaming and takes its WAL from the stream's durable LSN. A failed
//! (or panicked) backup is logged and counted and the schedule goes on.
//! With a retention policy, expire runs after every scheduled backup and on
//! its own interval; it removes nothing while a backup runs.

mod settings;

use std::sync::Arc;

use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::backup::{self, BackupOptions, WalSource};
use crate::format::lease::{LEASE_VERSION, Lease};
use crate::lsn::Lsn;
use crate::metrics::Metrics;
use crate::metrics::health::Thresholds;
use crate::retention::expire::ExpireOptions;
use crate::retention::policy::Policy;
use crate::schedule::Schedule;
use crate::shutdown::Shutdown;
use crate::storage::{self, Repository};
use crate::wal::receiver::{self, StreamPlan, StreamSummary};

pub use settings::{Sidecar, SidecarSettings};

/// Backups the sidecar takes.
#[derive(Clone, Debug)]
pub struct BackupSchedule {
    /// When.
    pub schedule: Schedule,
    /// How.
    pub options: BackupOptions,
}

/// What the scheduler did, for the stop log.
#[derive(Clone, Copy, Debug, Default)]
pub struct ScheduleSummary {
    /// Backups completed.
    pub completed: u64,
    /// Backups that failed or panicked.
    pub failed: u64,
}

/// Retention in the sidecar.
#[derive(Clone, Debug)]
pub struct ExpireSchedule {
    /// What to keep.
    pub policy: Policy,
    /// Time between runs (besides the run after each backup).
    pub interval: std::time::Duration,
}

/// Restore drills in the sidecar.
#[derive(Clone, Debug)]
pub struct DrillSchedule {
    /// When (cron, UTC).
    pub schedule: Schedule,
    /// How.
    pub options: crate::restore::drill::DrillOptions,
}

/// The metrics and health endpoint, and what it observes.
pub struct Monitoring {
    /// Shared with every task of the sidecar.
    pub metrics: Arc<Metrics>,
    /// The endpoint, bound at start so a taken address fails before
    /// streaming (`None`: no endpoint, only notifications).
    pub listener: Option<tokio::net::TcpListener>,
    /// Post incidents to this webhook.
    pub webhook: Option<String>,
    /// Limits for `/health`.
    pub thresholds: Thresholds,
    /// The server, for the slot's status (over an SQL session).
    pub conninfo: crate::protocol::ConnInfo,
    /// The slot.
    pub slot: String,
}

/// Runs the stream and, when given, the backup schedule and expire until
/// `shutdown.graceful` fires.
///
/// # Errors
/// A stream failure that reconnecting cannot fix.
///
/// # Cancel safety
/// Not cancel safe; use `shutdown`.
pub async fn run(
    sidecar: Sidecar,
    repo: &Repository,
    shutdown: &Shutdown,
) -> Result<(StreamSummary, ScheduleSummary), receiver::Error> {
    let Sidecar {
        stream,
        backups,
        expire,
        drills,
        monitoring,
    } = sidecar;
    let stream = &stream;
    // One writer of WAL per repository: refuse to run beside another. The
    // lease rests on create-only writes, so the store is probed for them
    // first (the result is reported where walvault.json is opened).
    repo.probe_create_only().await?;
    let lease = writer_lease(&stream.slot);
    repo.take_lease(&lease).await?;
    info!(holder = lease.holder, "took the repository's writer lease");
    let renewal = tokio::spawn(renew_lease(repo.clone(), lease.clone(), shutdown.clone()));
    let mut plan = StreamPlan::default();
    let backup_done = Arc::new(tokio::sync::Notify::new());
    let refresh = Arc::new(tokio::sync::Notify::new());
    let metrics = monitoring.as_ref().map(|m| m.metrics.clone());
    plan.stats = metrics.as_ref().map(|m| m.stream.clone());
    // The endpoint answers until the stream has drained: its tasks stop
    // after the stream, or at once with everything else on abort.
    let monitor_stop = shutdown.abort.child_token();
    let mut monitors = Vec::new();
    if let Some(m) = monitoring {
        if let Some(listener) = m.listener {
            monitors.push(tokio::spawn(crate::metrics::http::serve(
                listener,
                m.metrics.clone(),
                m.thresholds,
                monitor_stop.clone(),
            )));
        }
        if let Some(url) = m.webhook {
            monitors.push(tokio::spawn(crate::metrics::notify::run(
                url,
                m.metrics.clone(),
                m.thresholds,
                monitor_stop.clone(),
            )));
        }
        monitors.push(tokio::spawn(crate::metrics::observe(
            m.metrics,
            repo.clone(),
            m.conninfo,
            m.slot,
            refresh.clone(),
            monitor_stop.clone(),
        )));
    }
    let reporter = Reporter { metrics, refresh };
    let scheduler = backups.map(|b| {
        let (durable_tx, durable_rx) = watch::channel(Lsn::INVALID);
        plan.durable = Some(durable_tx);
        tokio::spawn(run_schedule(
            b,
            repo.clone(),
            durable_rx,
            shutdown.child(),
            backup_done.clone(),
            reporter.clone(),
        ))
    });
    let expirer = expire.map(|e| {
        tokio::spawn(run_expire(
            e,
            repo.clone(),
            shutdown.child(),
            backup_done,
            reporter.clone(),
        ))
    });
    let driller = drills.map(|d| {
        tokio::spawn(run_drills(
            d,
            repo.clone(),
            shutdown.child(),
            reporter.clone(),
        ))
    });
    let summary = receiver::run(stream, repo, shutdown, plan).await;
    shutdown.graceful.cancel();
    let lost = match renewal.await {
        Ok(lost) => lost,
        Err(e) => {
            error!(error = %e, "the lease renewal panicked");
            None
        }
    };
    repo.release_lease(&lease).await;
    monitor_stop.cancel();
    if let Some(task) = driller
        && let Err(e) = task.await
    {
        error!(error = %e, "the drill task panicked");
    }
    if let Some(task) = expirer
        && let Err(e) = task.await
    {
        error!(error = %e, "the expire task panicked");
    }
    let mut scheduled = ScheduleSummary::default();
    if let Some(task) = scheduler {
        match task.await {
            Ok(s) => scheduled = s,
            Err(e) => error!(error = %e, "the backup scheduler panicked"),
        }
    }
    for task in monitors {
        if let Err(e) = task.await {
            error!(error = %e, "a monitoring task panicked");
        }
    }
    let summary = summary?;
    if let Some(e) = lost {
        return Err(e.into());
    }
    Ok((summary, scheduled))
}

/// The lease this process takes: host, process and slot, with a random
/// part so that no two runs share an id.
fn writer_lease(slot: &str) -> Lease {
    let host = crate::telemetry::hostname();
    let safe: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    Lease {
        version: LEASE_VERSION,
        holder: format!(
            "{safe}-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ),
        host,
        pid: std::process::id(),
        slot: slot.to_string(),
        since: chrono::Utc::now(),
    }
}

/// Renews the writer's lease until shutdown. Returns the refusal when
/// another writer took the lease meanwhile (this one could not renew for
/// longer than its TTL): the command is aborted then (what is not stored
/// stays in the slot), so that two never write at once.
async fn renew_lease(repo: Repository, lease: Lease, shutdown: Shutdown) -> Option<storage::Error> {
    loop {
        tokio::select! {
            biased;
            () = shutdown.graceful.cancelled() => return None,
            () = tokio::time::sleep(storage::lease::LEASE_HEARTBEAT) => {}
        }
        match repo.renew_lease(&lease).await {
            Ok(()) => {}
            Err(e @ storage::Error::Leased { .. }) => {
                error!(error = %e, "lost the repository's writer lease: stopping the stream");
                shutdown.graceful.cancel();
                shutdown.abort.cancel();
                return Some(e);
            }
            Err(e) => {
                warn!(error = %crate::error::chain(&e), "could not renew the writer lease; retrying");
            }
        }
    }
}

/// Takes a backup at start if the repository has none, then one at every
/// time the schedule fires, until `shutdown`.
async fn run_schedule(
    b: BackupSchedule,
    repo: Repository,
    durable: watch::Receiver<Lsn>,
    shutdown: Shutdown,
    backup_done: Arc<tokio::sync::Notify>,
    reporter: Reporter,
) -> ScheduleSummary {
    let mut summary = ScheduleSummary::default();
    let mut due_now = match repo.list_backups().await {
        Ok(list) => list.is_empty(),
        Err(e) => {
            error!(error = %crate::error::chain(&e), "cannot list backups; the schedule starts anyway");
            false
        }
    };
    loop {
        if !due_now {
            let Some(next) = b.schedule.next_after(chrono::Utc::now()) else {
                warn!("the backup schedule never fires again");
                return summary;
            };
            info!(next = %next.to_rfc3339(), "next scheduled backup");
            let wait = (next - chrono::Utc::now()).to_std().unwrap_or_default();
            tokio::select! {
                biased;
                () = shutdown.graceful.cancelled() => return summary,
                () = tokio::time::sleep(wait) => {}
            }
        }
        due_now = false;
        if shutdown.graceful.is_cancelled() {
            return summary;
        }
        // The backup runs as its own task so that a panic in it is reported
        // here, not lost with the task.
        let (opts, repo2, wal) = (
            b.options.clone(),
            repo.clone(),
            WalSource::Sidecar(durable.clone()),
        );
        let cancel = shutdown.graceful.child_token();
        let task = tokio::spawn(async move { backup::run(&opts, &repo2, wal, &cancel).await });
        match task.await {
            Ok(Ok(meta)) => {
                summary.completed += 1;
                info!(
                    id = meta.id,
                    bytes = meta.plain_bytes,
                    "scheduled backup complete"
                );
                backup_done.notify_one();
                reporter.backup(true);
            }
            Ok(Err(e)) => {
                summary.failed += 1;
                error!(error = %crate::error::chain(&e), "scheduled backup failed");
                reporter.backup(false);
            }
            Err(e) => {
                summary.failed += 1;
                error!(error = %e, "scheduled backup panicked");
                reporter.backup(false);
            }
        }
    }
}

/// Runs expire every `interval` and after each scheduled backup, until
/// shutdown. Failures are logged; the next run tries again.
async fn run_expire(
    e: ExpireSchedule,
    repo: Repository,
    shutdown: Shutdown,
    backup_done: Arc<tokio::sync::Notify>,
    reporter: Reporter,
) {
    loop {
        tokio::select! {
            biased;
            () = shutdown.graceful.cancelled() => return,
            () = backup_done.notified() => {}
            () = tokio::time::sleep(e.interval) => {}
        }
        let segment_size = match repo.open_manifest().await {
            Ok(Some(m)) => m.wal_segment_size,
            Ok(None) => continue,
            Err(err) => {
                error!(error = %crate::error::chain(&err), "expire cannot read the repository");
                continue;
            }
        };
        let opts = ExpireOptions {
            policy: e.policy.clone(),
            now: chrono::Utc::now(),
            dry_run: false,
            orphan_grace: backup::DEFAULT_ORPHAN_GRACE,
        };
        match crate::retention::expire::run(&repo, segment_size, &opts).await {
            Ok(r) if r.skipped.is_some() => {
                info!(
                    reason = r.skipped.as_deref().unwrap_or_default(),
                    "expire skipped"
                );
            }
            Ok(r) => {
                info!(
                    backups_removed = r.removed.len(),
                    wal_objects_removed = r.wal_objects_removed,
                    floor = %r.floor_lsn.map_or("-".into(), |l| l.to_string()),
                    "expire complete"
                );
                reporter.expire(Some(&r));
            }
            Err(err) => {
                error!(error = %crate::error::chain(&err), "expire failed");
                reporter.expire(None);
            }
        }
    }
}

/// Runs a restore drill at every time the schedule fires, until shutdown.
async fn run_drills(d: DrillSchedule, repo: Repository, shutdown: Shutdown, reporter: Reporter) {
    loop {
        let Some(next) = d.schedule.next_after(chrono::Utc::now()) else {
            warn!("the drill schedule never fires again");
            return;
        };
        info!(next = %next.to_rfc3339(), "next restore drill");
        let wait = (next - chrono::Utc::now()).to_std().unwrap_or_default();
        tokio::select! {
            biased;
            () = shutdown.graceful.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
        // The drill's future is not Send (it holds borrows across awaits in
        // the start supervision): it runs on a blocking thread of its own.
        let (repo2, options) = (repo.clone(), d.options.clone());
        let cancel = shutdown.graceful.child_token();
        let handle = tokio::runtime::Handle::current();
        let record = match tokio::task::spawn_blocking(move || {
            handle.block_on(crate::restore::drill::run(&repo2, &options, &cancel))
        })
        .await
        {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                error!(error = %crate::error::chain(&e), "restore drill could not run (not recorded)");
                continue;
            }
            Err(e) => {
                error!(error = %e, "restore drill panicked");
                continue;
            }
        };
        if record.success {
            info!(
                backup = record.backup_id.as_deref().unwrap_or("-"),
                rto_seconds = record.rto_seconds,
                "restore drill succeeded"
            );
        } else {
            error!(
                backup = record.backup_id.as_deref().unwrap_or("-"),
                reason = record.message,
                "restore drill failed"
            );
        }
        reporter.refresh.notify_one();
    }
}

/// Tells the metrics (if any) what the schedule and expire did, and asks
/// the observer to read the repository again.
#[derive(Clone)]
struct Reporter {
    metrics: Option<Arc<Metrics>>,
    refresh: Arc<tokio::sync::Notify>,
}

impl Reporter {
    fn backup(&self, succeeded: bool) {
        if let Some(m) = &self.metrics {
            m.update(|s| {
                if succeeded {
                    s.backups_succeeded += 1;
                } else {
                    s.backups_failed += 1;
                }
                s.last_backup_failed = !succeeded;
            });
            self.refresh.notify_one();
        }
    }

    fn expire(&self, report: Option<&crate::retention::expire::ExpireReport>) {
        if let Some(m) = &self.metrics {
            m.update(|s| match report {
                Some(r) => {
                    s.expire_succeeded += 1;
                    s.last_expire = Some(chrono::Utc::now());
                    s.last_expire_failed = false;
                    s.expire_removed_backups += r.removed.len() as u64;
                    s.expire_removed_wal_objects += r.wal_objects_removed;
                }
                None => {
                    s.expire_failed += 1;
                    s.last_expire_failed = true;
                }
            });
            self.refresh.notify_one();
        }
    }
}
