//! The WAL step of a backup: every byte from the start LSN to the stop LSN
//! in the repository before `backup.json` is written. Standalone, the backup
//! streams that range itself on a temporary slot made before the backup
//! started (as `pg_basebackup -X stream`); beside the sidecar it waits for
//! the sidecar's durable LSN and streams only what the repository lacks.

use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::lsn::{Lsn, SegmentName, TimelineId};
use crate::protocol::ReplicationConnection;
use crate::shutdown::Shutdown;
use crate::storage::{self, Repository};
use crate::wal::inventory::WalInventory;
use crate::wal::receiver::{self, StreamPlan, StreamSummary};

use super::{BackupOptions, Error, WalSource};

/// How long a sidecar backup waits for the stream to store its WAL.
const SIDECAR_WAL_WAIT: Duration = Duration::from_secs(600);

/// A stream of the backup's WAL on the temporary slot.
pub(super) type WalTask = tokio::task::JoinHandle<Result<StreamSummary, receiver::Error>>;

/// Streams WAL from `start` on the temporary `slot` of `conn` until the
/// LSN sent on `stop_at` is durable.
pub(super) fn spawn_wal_stream(
    opts: &BackupOptions,
    repo: &Repository,
    conn: ReplicationConnection,
    slot: &str,
    start: (TimelineId, Lsn),
    stop_at: watch::Receiver<Option<Lsn>>,
    shutdown: &Shutdown,
) -> WalTask {
    let mut stream_opts = opts.stream.clone();
    stream_opts.slot = slot.to_string();
    let repo = repo.clone();
    let shutdown = shutdown.clone();
    tokio::spawn(async move {
        let plan = StreamPlan {
            start: Some(start),
            stop_at: Some(stop_at),
            connection: Some(conn),
            slot_ready: true,
            durable: None,
            stats: None,
        };
        receiver::run(&stream_opts, &repo, &shutdown, plan).await
    })
}

/// Makes sure the WAL from `start` to `end` on `timeline` is in the
/// repository, by the way `wal` says.
///
/// # Errors
/// A failed WAL stream, a range still incomplete, or cancellation.
#[allow(clippy::too_many_arguments)]
pub(super) async fn secure_wal_range(
    opts: &BackupOptions,
    repo: &Repository,
    wal: WalSource,
    mut wal_task: Option<WalTask>,
    mut wal_conn: Option<ReplicationConnection>,
    slot: &str,
    (start, timeline, end): (Lsn, TimelineId, Lsn),
    segment_size: u64,
    (stop_tx, stop_rx): (watch::Sender<Option<Lsn>>, watch::Receiver<Option<Lsn>>),
    shutdown: &Shutdown,
) -> Result<(), Error> {
    match wal {
        WalSource::Standalone => {
            let task = wal_task.take().ok_or_else(|| {
                Error::Unsupported("the backup's WAL stream did not start".into())
            })?;
            let _ = stop_tx.send(Some(end));
            task.await
                .expect("WAL task does not panic")
                .map_err(Error::Stream)?;
        }
        WalSource::Sidecar(mut durable) => {
            let wait = async {
                tokio::time::timeout(SIDECAR_WAL_WAIT, durable.wait_for(|d| *d >= end))
                    .await
                    .is_ok_and(|r| r.is_ok())
            };
            let stored = tokio::select! {
                biased;
                () = shutdown.graceful.cancelled() => return Err(Error::Cancelled),
                ok = wait => ok,
            };
            if !stored {
                warn!(
                    "the sidecar stream did not store the backup's WAL in time; streaming it here"
                );
            }
            if missing_wal(repo, segment_size, timeline, start, end)
                .await?
                .is_some()
            {
                // The stream began after the backup's start (or fell behind):
                // fill in on the temporary slot.
                let conn = wal_conn.take().ok_or_else(|| {
                    Error::Unsupported("the WAL connection was used already".into())
                })?;
                let task = spawn_wal_stream(
                    opts,
                    repo,
                    conn,
                    slot,
                    (timeline, start),
                    stop_rx.clone(),
                    shutdown,
                );
                let _ = stop_tx.send(Some(end));
                task.await
                    .expect("WAL task does not panic")
                    .map_err(Error::Stream)?;
            }
        }
    }
    if let Some(missing) = missing_wal(repo, segment_size, timeline, start, end).await? {
        return Err(Error::WalMissing(missing.to_file_name(segment_size)));
    }
    if let Some(c) = wal_conn {
        c.terminate().await;
    }
    Ok(())
}

/// The first WAL segment of `[start, end)` on `timeline` the repository
/// lacks (the last one may be held as deltas reaching `end`), if any.
///
/// # Errors
/// Store errors.
pub async fn missing_wal(
    repo: &Repository,
    segment_size: u64,
    timeline: TimelineId,
    start: Lsn,
    end: Lsn,
) -> Result<Option<SegmentName>, storage::Error> {
    let inv = WalInventory::scan(repo, segment_size).await?;
    Ok(inv.first_missing(timeline, start, end, segment_size))
}

/// A child of `cancel` for the backup's own WAL stream: its graceful stop
/// drains what it holds, its abort drops it.
pub(super) fn wal_shutdown(cancel: &CancellationToken) -> Shutdown {
    Shutdown {
        graceful: cancel.child_token(),
        abort: cancel.child_token(),
    }
}
