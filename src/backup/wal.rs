//! The WAL step of a backup: every byte from the start LSN to the stop LSN
//! in the repository before `backup.json` is written. Standalone, the backup
//! streams that range itself on a temporary slot made before the backup
//! started (as `pg_basebackup -X stream`); beside the sidecar it waits for
//! the sidecar's durable LSN, and beside another process's stream (the
//! holder of the repository's lease) for the archive to hold it; there it
//! streams only the gap before the other writer's first WAL.

use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::lsn::{Lsn, SegmentName, TimelineId};
use crate::protocol::ReplicationConnection;
use crate::shutdown::Shutdown;
use crate::storage::{self, Repository};
use crate::wal::inventory::WalInventory;
use crate::wal::receiver::{self, StreamPlan, StreamSummary};

use super::{BackupOptions, Error, WalSource};

/// How long a backup waits for another writer's stream to store its WAL.
const SIDECAR_WAL_WAIT: Duration = Duration::from_secs(600);
/// How often a backup beside another process's stream looks for its WAL.
const ARCHIVE_POLL: Duration = Duration::from_secs(2);
/// How often it checks that the other writer still holds the lease.
const LEASE_RECHECK: Duration = Duration::from_secs(15);

/// A stream of the backup's WAL on the temporary slot.
pub(super) type WalTask = tokio::task::JoinHandle<Result<StreamSummary, receiver::Error>>;

/// Streams WAL from `start` on the temporary `slot` of `conn` until the
/// LSN sent on `stop_at` is durable; with `limit`, nothing at or past it
/// is kept (another writer's WAL begins there).
#[allow(clippy::too_many_arguments)]
pub(super) fn spawn_wal_stream(
    opts: &BackupOptions,
    repo: &Repository,
    conn: ReplicationConnection,
    slot: &str,
    start: (TimelineId, Lsn),
    limit: Option<Lsn>,
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
            limit,
            connection: Some(conn),
            slot_ready: true,
            durable: None,
            stats: None,
        };
        receiver::run(&stream_opts, &repo, &shutdown, plan).await
    })
}

/// Makes sure the WAL from `start` to `end` on `timeline` is in the
/// repository, by the way `wal` says. Beside another writer (the sidecar
/// in this process, or one holding the repository's lease) the backup
/// stores only WAL that writer never will: the gap before where its WAL
/// begins. The rest it waits for, so no WAL object ever has two writers.
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
    let range = (timeline, start, end);
    // The temporary slot's connection streams once: `None` the second time.
    let mut fill = |from: SegmentName, limit: Option<Lsn>| {
        let conn = wal_conn.take()?;
        let task = spawn_wal_stream(
            opts,
            repo,
            conn,
            slot,
            (timeline, from.start_lsn(segment_size)),
            limit,
            stop_rx.clone(),
            shutdown,
        );
        let _ = stop_tx.send(Some(limit.unwrap_or(end)));
        Some(task)
    };
    let used = || Error::Unsupported("the WAL connection was used already".into());
    match wal {
        WalSource::Standalone => {
            let task = wal_task.take().ok_or_else(|| {
                Error::Unsupported("the backup's WAL stream did not start".into())
            })?;
            let _ = stop_tx.send(Some(end));
            await_stream(task).await?;
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
                    waited = ?SIDECAR_WAL_WAIT,
                    "the sidecar stream did not store the backup's WAL in time"
                );
            }
            // The stream began after the backup's start: fill in before it.
            if let Gap::BeforeWriter { from, limit } = gap(repo, segment_size, range).await? {
                await_stream(fill(from, Some(limit)).ok_or_else(used)?).await?;
            }
        }
        WalSource::Archive(holder) => {
            let waited_from = tokio::time::Instant::now();
            let mut last_lease_check = waited_from;
            info!(
                writer = holder.describe(),
                "another walvault streams this repository's WAL: waiting for it to store the backup's WAL"
            );
            loop {
                match gap(repo, segment_size, range).await? {
                    Gap::None => break,
                    Gap::BeforeWriter { from, limit } => {
                        await_stream(fill(from, Some(limit)).ok_or_else(used)?).await?;
                        continue;
                    }
                    Gap::Behind(from) => {
                        if last_lease_check.elapsed() >= LEASE_RECHECK {
                            last_lease_check = tokio::time::Instant::now();
                            if repo.live_lease_holder().await?.is_none() {
                                warn!(
                                    writer = holder.describe(),
                                    "the repository's WAL writer is gone: streaming the backup's WAL here"
                                );
                                await_stream(fill(from, None).ok_or_else(used)?).await?;
                                break;
                            }
                        }
                        if waited_from.elapsed() >= SIDECAR_WAL_WAIT {
                            return Err(Error::WalMissing(format!(
                                "{} (the stream of {} did not store it within {}s; is it behind, or is the store failing?)",
                                from.to_file_name(segment_size),
                                holder.describe(),
                                SIDECAR_WAL_WAIT.as_secs()
                            )));
                        }
                    }
                }
                tokio::select! {
                    biased;
                    () = shutdown.graceful.cancelled() => return Err(Error::Cancelled),
                    () = tokio::time::sleep(ARCHIVE_POLL) => {}
                }
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

async fn await_stream(task: WalTask) -> Result<(), Error> {
    task.await
        .expect("WAL task does not panic")
        .map(|_| ())
        .map_err(Error::Stream)
}

/// What the repository lacks of a backup's WAL range.
enum Gap {
    /// Nothing.
    None,
    /// Segments from `from` before the first one another writer stored
    /// (at `limit`): WAL that writer began after, which it never stores.
    BeforeWriter { from: SegmentName, limit: Lsn },
    /// The WAL from `from` on, which the writer has not reached yet.
    Behind(SegmentName),
}

async fn gap(
    repo: &Repository,
    segment_size: u64,
    (timeline, start, end): (TimelineId, Lsn, Lsn),
) -> Result<Gap, storage::Error> {
    let first = SegmentName::from_lsn(timeline, start, segment_size);
    let inv = WalInventory::scan_from(repo, segment_size, first).await?;
    let Some(missing) = inv.first_missing(timeline, start, end, segment_size) else {
        return Ok(Gap::None);
    };
    let held_after = inv.timelines.get(&timeline).and_then(|t| {
        if t.deltas.contains_key(&missing.number) {
            // The writer is inside this segment now.
            return None;
        }
        t.complete
            .iter()
            .chain(t.deltas.keys())
            .filter(|&&n| n > missing.number)
            .min()
            .copied()
    });
    Ok(match held_after {
        Some(number) => Gap::BeforeWriter {
            from: missing,
            limit: SegmentName { timeline, number }.start_lsn(segment_size),
        },
        None => Gap::Behind(missing),
    })
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
    let first = SegmentName::from_lsn(timeline, start, segment_size);
    let inv = WalInventory::scan_from(repo, segment_size, first).await?;
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
