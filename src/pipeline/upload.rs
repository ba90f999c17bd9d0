//! The one seal-and-upload stage. WAL segments, deltas, history files and
//! base-backup parts all go through [`run`]: at most `concurrency` objects
//! are sealed (zstd, then AES-GCM, on the blocking pool) and stored at once,
//! each sealed once and its put retried by the one policy of
//! [`crate::storage::retry`] and then, while the store stays down, again
//! every [`OUTAGE_RETRY_INTERVAL`] until it is stored or the stage is
//! cancelled.
//!
//! Invariants:
//! - a job is taken from the input only when an upload slot is free, so the
//!   data held is the input queue plus `concurrency` jobs;
//! - the durable LSN only moves forward, and only past a job's
//!   `durable_after` once that job and every job queued before it are
//!   stored (uploads finish in any order; the LSN advances in queue order).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::format::{Compression, SealOptions};
use crate::lsn::{Lsn, SegmentName, TimelineId};
use crate::storage::{self, Repository, layout};

use super::conflict::{WalCheck, keep_stored_wal};
use super::memory::MemoryBudget;

/// Pause between attempt series while the store stays unreachable.
pub const OUTAGE_RETRY_INTERVAL: Duration = storage::retry::MAX_BACKOFF;

/// What an object is, for logs and for what follows its upload.
#[derive(Clone, Debug)]
pub enum ObjectKind {
    /// A complete WAL segment; its deltas (under `deltas`) are deleted once
    /// it is stored.
    Segment {
        /// Which.
        segment: SegmentName,
        /// The key prefix of its deltas.
        deltas: String,
    },
    /// Bytes of a segment that was not complete.
    Delta,
    /// A timeline history file.
    History(TimelineId),
    /// Part `index` of the tar stream of the tablespace at `tablespace` in
    /// the backup's list.
    BackupPart {
        /// Index of the tablespace.
        tablespace: usize,
        /// Index of the part.
        index: u32,
    },
}

/// One object to seal and store.
#[derive(Debug)]
pub struct UploadJob {
    /// Its key.
    pub key: String,
    /// Its plaintext, in pieces.
    pub pieces: Vec<Bytes>,
    /// Whether to compress (data the server compressed already is not).
    pub compress: bool,
    /// What it is.
    pub kind: ObjectKind,
    /// The WAL position durable once this job (and all before) are stored.
    pub durable_after: Option<Lsn>,
    /// Memory-budget bytes to release once stored.
    pub release_bytes: u64,
}

impl UploadJob {
    /// A job for `key` with nothing to report but the upload itself.
    pub fn new(key: String, pieces: Vec<Bytes>, kind: ObjectKind) -> Self {
        UploadJob {
            key,
            pieces,
            compress: true,
            kind,
            durable_after: None,
            release_bytes: 0,
        }
    }

    /// A complete WAL segment.
    pub fn segment(segment: SegmentName, pieces: Vec<Bytes>, segment_size_bytes: u64) -> Self {
        Self::new(
            layout::segment_key(segment, segment_size_bytes),
            pieces,
            ObjectKind::Segment {
                segment,
                deltas: layout::delta_prefix(segment, segment_size_bytes),
            },
        )
    }

    /// Bytes `[start, end)` of a segment.
    pub fn delta(
        segment: SegmentName,
        start: u64,
        end: u64,
        pieces: Vec<Bytes>,
        segment_size_bytes: u64,
    ) -> Self {
        Self::new(
            layout::delta_key(segment, start, end, segment_size_bytes),
            pieces,
            ObjectKind::Delta,
        )
    }

    /// A timeline history file.
    pub fn history(timeline: TimelineId, content: Vec<u8>) -> Self {
        Self::new(
            layout::history_key(timeline),
            vec![Bytes::from(content)],
            ObjectKind::History(timeline),
        )
    }
}

/// A stored job, handed to whoever asked to hear of it.
#[derive(Debug)]
pub struct Stored {
    /// The job (its pieces can be reused now).
    pub job: UploadJob,
    /// Bytes the sealed object takes in the store.
    pub stored_bytes: u64,
    /// CRC-32C of the plaintext (computed for backup parts only, else 0).
    pub crc32c: u32,
}

/// Totals the stage keeps for logs and tests.
#[derive(Debug, Default)]
pub struct UploadStats {
    /// Objects stored.
    pub objects: AtomicU64,
    /// Plaintext bytes stored.
    pub plain_bytes: AtomicU64,
    /// Sealed bytes stored.
    pub stored_bytes: AtomicU64,
    /// Failed store attempts.
    pub errors: AtomicU64,
    /// Attempts after a failure.
    pub retries: AtomicU64,
    /// Whether an upload is waiting out an outage now.
    pub unreachable: std::sync::atomic::AtomicBool,
    /// WAL objects another writer had stored with other bytes (the stored
    /// version kept; see [`super::conflict`]).
    pub wal_conflicts: AtomicU64,
}

/// Where the stage reports.
pub struct Stage {
    /// The repository.
    pub repo: Repository,
    /// Uploads at once.
    pub concurrency: usize,
    /// The budget jobs' memory is counted in, if any.
    pub memory: Option<Arc<MemoryBudget>>,
    /// Totals.
    pub stats: Arc<UploadStats>,
    /// The durable LSN, advanced in queue order.
    pub durable: Option<watch::Sender<Lsn>>,
    /// Every stored job, in completion order.
    pub stored: Option<mpsc::Sender<Stored>>,
    /// Stops the stage: queued and running jobs are dropped.
    pub cancel: CancellationToken,
    /// For WAL stages: how to read a stored version on a conflict.
    pub wal_check: Option<WalCheck>,
}

/// Deletions of superseded deltas running at once.
const MAX_CLEANUPS: usize = 8;

/// Runs the stage until `jobs` closes and every job is stored, or until
/// `cancel` fires (then queued and running jobs are dropped; for WAL the slot
/// keeps their bytes on the server).
///
/// # Errors
/// A store error that retrying cannot fix (an object with other content, a
/// wrong key, a permission error).
///
/// # Cancel safety
/// Not meant to be cancelled: use `stage.cancel`.
pub async fn run(stage: Stage, mut jobs: mpsc::Receiver<UploadJob>) -> Result<(), storage::Error> {
    let mut in_flight = FuturesUnordered::new();
    let mut next_seq: u64 = 0;
    // Completed jobs' durable positions, by queue order, until every job
    // before them is stored too.
    let mut completed: BTreeMap<u64, Option<Lsn>> = BTreeMap::new();
    let mut durable_seq: u64 = 0;
    let mut input_open = true;
    // Deletions of superseded deltas, off the path that makes WAL durable.
    let mut cleanup = tokio::task::JoinSet::new();
    loop {
        if !input_open && in_flight.is_empty() {
            while cleanup.join_next().await.is_some() {}
            return Ok(());
        }
        // A store that deletes slowly holds a bounded number of these.
        while cleanup.len() >= MAX_CLEANUPS {
            cleanup.join_next().await;
        }
        tokio::select! {
            biased;
            () = stage.cancel.cancelled() => return Ok(()),
            Some((seq, job, result)) = in_flight.next(), if !in_flight.is_empty() => {
                let Some((stored_bytes, crc32c)) = result? else {
                    // Cancelled while retrying.
                    return Ok(());
                };
                let job: UploadJob = job;
                if let Some(prefix) = after_stored(&stage, &job, stored_bytes) {
                    cleanup.spawn(delete_deltas(stage.repo.clone(), prefix));
                }
                completed.insert(seq, job.durable_after);
                while let Some(durable_after) = completed.remove(&durable_seq) {
                    durable_seq += 1;
                    if let (Some(end), Some(tx)) = (durable_after, &stage.durable) {
                        tx.send_if_modified(|d| {
                            if end > *d { *d = end; true } else { false }
                        });
                    }
                }
                if let Some(tx) = &stage.stored {
                    // A receiver that went away does not want to hear.
                    let _ = tx.send(Stored { job, stored_bytes, crc32c }).await;
                }
            }
            job = jobs.recv(), if input_open && in_flight.len() < stage.concurrency.max(1) => {
                match job {
                    Some(job) => {
                        let seq = next_seq;
                        next_seq += 1;
                        let repo = stage.repo.clone();
                        let cancel = stage.cancel.clone();
                        let stats = stage.stats.clone();
                        let wal_check = stage.wal_check;
                        in_flight.push(async move {
                            let r = match (store(&repo, &job, &cancel, &stats).await, wal_check) {
                                (Err(storage::Error::Conflict { difference, .. }), Some(check)) => {
                                    keep_stored_wal(&repo, &job, &check, difference, &stats)
                                        .await
                                        .map(|size| Some((size, 0)))
                                }
                                (r, _) => r,
                            };
                            (seq, job, r)
                        });
                    }
                    None => input_open = false,
                }
            }
        }
    }
}

/// Counts and logs a stored job; returns the delta prefix a stored segment
/// supersedes, to be deleted.
fn after_stored(stage: &Stage, job: &UploadJob, stored_bytes: u64) -> Option<String> {
    let plain: u64 = job.pieces.iter().map(|p| p.len() as u64).sum();
    stage.stats.objects.fetch_add(1, Relaxed);
    stage.stats.plain_bytes.fetch_add(plain, Relaxed);
    stage.stats.stored_bytes.fetch_add(stored_bytes, Relaxed);
    if let Some(memory) = &stage.memory {
        memory.release(job.release_bytes);
    }
    match &job.kind {
        ObjectKind::Segment { deltas, .. } => {
            info!(key = job.key, bytes = stored_bytes, "segment archived");
            return Some(deltas.clone());
        }
        ObjectKind::Delta => debug!(key = job.key, bytes = stored_bytes, "delta archived"),
        ObjectKind::History(timeline) => info!(%timeline, "timeline history archived"),
        ObjectKind::BackupPart { .. } => debug!(key = job.key, bytes = stored_bytes, "part stored"),
    }
    None
}

/// Seals and stores one job: the retry policy's attempts, then, while the
/// store stays unreachable, again every [`OUTAGE_RETRY_INTERVAL`] (logged
/// once). `Ok(None)` only when cancelled.
async fn store(
    repo: &Repository,
    job: &UploadJob,
    cancel: &CancellationToken,
    stats: &UploadStats,
) -> Result<Option<(u64, u32)>, storage::Error> {
    let crc32c = match job.kind {
        ObjectKind::BackupPart { .. } => {
            let pieces = job.pieces.clone();
            tokio::task::spawn_blocking(move || {
                pieces
                    .iter()
                    .fold(0, |crc, p| crc32c::crc32c_append(crc, p))
            })
            .await
            .expect("crc does not panic")
        }
        _ => 0,
    };
    let seal = (!job.compress).then(|| SealOptions {
        compression: Compression::None,
        ..SealOptions::default()
    });
    // Sealed once: every attempt, and every round of an outage, sends the
    // same bytes.
    let object = repo.seal(&job.key, &job.pieces, seal).await;
    let mut outage_logged = false;
    loop {
        let mut attempts = 0u32;
        let result = storage::retry(&job.key, cancel, || {
            attempts += 1;
            if attempts > 1 || outage_logged {
                stats.retries.fetch_add(1, Relaxed);
            }
            let object = &object;
            async move {
                let r = repo.put_prepared(object, &job.pieces).await;
                if r.is_err() {
                    stats.errors.fetch_add(1, Relaxed);
                }
                r
            }
        })
        .await;
        match result {
            Ok(size) => {
                if outage_logged {
                    stats.unreachable.store(false, Relaxed);
                    info!(
                        key = job.key,
                        "object store reachable again, upload resumed"
                    );
                }
                return Ok(Some((size, crc32c)));
            }
            Err(_) if cancel.is_cancelled() => return Ok(None),
            Err(e) if !e.is_retryable() => return Err(e),
            Err(e) => {
                if !outage_logged {
                    error!(key = job.key, error = %crate::error::chain(&e),
                        "object store unavailable; holding data in memory and retrying");
                    outage_logged = true;
                    stats.unreachable.store(true, Relaxed);
                }
                tokio::select! {
                    biased;
                    () = cancel.cancelled() => return Ok(None),
                    () = tokio::time::sleep(OUTAGE_RETRY_INTERVAL) => {}
                }
            }
        }
    }
}

/// Deletes the deltas of a segment that is now stored whole (best effort:
/// a leftover delta is harmless, the complete segment wins on read), in
/// batches where the store has a bulk delete. It runs beside the uploads:
/// a segment's hundreds of deltas never hold up the WAL behind it.
async fn delete_deltas(repo: Repository, prefix: String) {
    match repo.list(&prefix).await {
        Ok(objects) => {
            let keys: Vec<String> = objects.into_iter().map(|o| o.key).collect();
            if let Err(e) = repo.delete_many(&keys).await {
                warn!(prefix, error = %crate::error::chain(&e), "could not delete superseded deltas");
            }
        }
        Err(e) => {
            warn!(prefix, error = %crate::error::chain(&e), "could not list superseded deltas")
        }
    }
}
