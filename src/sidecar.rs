//! The sidecar: the WAL stream, and beside it the backup scheduler, under
//! one shutdown. A scheduled backup runs on its own connection while WAL
//! keeps streaming and takes its WAL from the stream's durable LSN. A failed
//! (or panicked) backup is logged and counted and the schedule goes on.

use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::backup::{self, BackupOptions, WalSource};
use crate::lsn::Lsn;
use crate::schedule::Schedule;
use crate::shutdown::Shutdown;
use crate::storage::Repository;
use crate::wal::receiver::{self, StreamOptions, StreamPlan, StreamSummary};

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

/// Runs the stream and, when given, the backup schedule until
/// `shutdown.graceful` fires.
///
/// # Errors
/// A stream failure that reconnecting cannot fix.
///
/// # Cancel safety
/// Not cancel safe; use `shutdown`.
pub async fn run(
    stream: &StreamOptions,
    backups: Option<BackupSchedule>,
    repo: &Repository,
    shutdown: &Shutdown,
) -> Result<(StreamSummary, ScheduleSummary), receiver::Error> {
    let mut plan = StreamPlan::default();
    let scheduler = backups.map(|b| {
        let (durable_tx, durable_rx) = watch::channel(Lsn::INVALID);
        plan.durable = Some(durable_tx);
        tokio::spawn(run_schedule(b, repo.clone(), durable_rx, shutdown.child()))
    });
    let summary = receiver::run(stream, repo, shutdown, plan).await;
    shutdown.graceful.cancel();
    let mut scheduled = ScheduleSummary::default();
    if let Some(task) = scheduler {
        match task.await {
            Ok(s) => scheduled = s,
            Err(e) => error!(error = %e, "the backup scheduler panicked"),
        }
    }
    Ok((summary?, scheduled))
}

/// Takes a backup at start if the repository has none, then one at every
/// time the schedule fires, until `shutdown`.
async fn run_schedule(
    b: BackupSchedule,
    repo: Repository,
    durable: watch::Receiver<Lsn>,
    shutdown: Shutdown,
) -> ScheduleSummary {
    let mut summary = ScheduleSummary::default();
    let mut due_now = match backup::list_backups(&repo).await {
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
            }
            Ok(Err(e)) => {
                summary.failed += 1;
                error!(error = %crate::error::chain(&e), "scheduled backup failed");
            }
            Err(e) => {
                summary.failed += 1;
                error!(error = %e, "scheduled backup panicked");
            }
        }
    }
}
