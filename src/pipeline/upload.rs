//! The WAL uploader: seals and stores jobs concurrently, retrying without end
//! while the store is down, and publishes the durable LSN in job order.
//!
//! Invariant: the durable LSN only moves forward, and only past a job's end
//! once that job and every job before it are stored.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesOrdered;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::lsn::{Lsn, SegmentName, TimelineId};
use crate::storage::{self, Repository, layout};

use super::memory::MemoryBudget;

/// Longest pause between retries of one upload.
const MAX_RETRY_BACKOFF: Duration = Duration::from_secs(10);

/// One object to store.
#[derive(Debug)]
pub enum UploadJob {
    /// A complete segment; its deltas are deleted once it is stored.
    Segment {
        /// Which.
        segment: SegmentName,
        /// Its bytes.
        pieces: Vec<Bytes>,
    },
    /// Bytes `[start, end)` of an open segment.
    Delta {
        /// Which.
        segment: SegmentName,
        /// First offset.
        start: u64,
        /// One past the last offset.
        end: u64,
        /// The bytes.
        pieces: Vec<Bytes>,
    },
    /// A timeline history file.
    History {
        /// The timeline it describes.
        timeline: TimelineId,
        /// The file.
        content: Vec<u8>,
    },
}

/// A job and what its completion means.
#[derive(Debug)]
pub struct QueuedJob {
    /// The job.
    pub job: UploadJob,
    /// The WAL position durable once this job (and all before) are stored.
    pub durable_after: Option<Lsn>,
    /// Budget bytes to release once stored.
    pub release_bytes: u64,
}

/// Totals the uploader keeps for logs and tests.
#[derive(Debug, Default)]
pub struct UploadStats {
    /// Objects stored.
    pub objects: std::sync::atomic::AtomicU64,
    /// Plaintext bytes stored.
    pub plain_bytes: std::sync::atomic::AtomicU64,
    /// Sealed bytes stored.
    pub stored_bytes: std::sync::atomic::AtomicU64,
}

/// Runs the uploader until `jobs` closes and every job is stored, or until
/// `abort` fires (then queued jobs are dropped; the slot keeps their WAL).
///
/// # Cancel safety
/// Not meant to be cancelled: use `abort`.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    repo: Repository,
    segment_size_bytes: u64,
    concurrency: usize,
    mut jobs: mpsc::Receiver<QueuedJob>,
    durable: watch::Sender<Lsn>,
    memory: Arc<MemoryBudget>,
    stats: Arc<UploadStats>,
    abort: CancellationToken,
) -> Result<(), storage::Error> {
    let mut in_flight = FuturesOrdered::new();
    let mut waiting: VecDeque<QueuedJob> = VecDeque::new();
    let mut input_open = true;
    loop {
        while in_flight.len() < concurrency {
            let Some(q) = waiting.pop_front() else { break };
            let repo = repo.clone();
            let abort = abort.clone();
            let stats = stats.clone();
            in_flight.push_back(async move {
                let ok = store_job(&repo, segment_size_bytes, &q.job, &stats, &abort).await;
                (q, ok)
            });
        }
        if !input_open && in_flight.is_empty() && waiting.is_empty() {
            return Ok(());
        }
        tokio::select! {
            biased;
            () = abort.cancelled() => return Ok(()),
            Some((q, ok)) = in_flight.next(), if !in_flight.is_empty() => {
                if !ok? {
                    // Aborted while retrying.
                    return Ok(());
                }
                memory.release(q.release_bytes);
                if let Some(end) = q.durable_after {
                    durable.send_if_modified(|d| {
                        if end > *d { *d = end; true } else { false }
                    });
                }
            }
            job = jobs.recv(), if input_open && waiting.len() < concurrency => {
                match job {
                    Some(q) => waiting.push_back(q),
                    None => input_open = false,
                }
            }
        }
    }
}

/// Stores one job, retrying retryable failures until stored or aborted.
/// Returns `Ok(false)` only when aborted; an error that retrying cannot fix
/// (an object with other content, a wrong key) ends the stream.
async fn store_job(
    repo: &Repository,
    segment_size_bytes: u64,
    job: &UploadJob,
    stats: &UploadStats,
    abort: &CancellationToken,
) -> Result<bool, storage::Error> {
    use std::sync::atomic::Ordering::Relaxed;
    let (key, pieces) = match job {
        UploadJob::Segment { segment, pieces } => (
            layout::segment_key(*segment, segment_size_bytes),
            pieces.clone(),
        ),
        UploadJob::Delta {
            segment,
            start,
            end,
            pieces,
        } => (
            layout::delta_key(*segment, *start, *end, segment_size_bytes),
            pieces.clone(),
        ),
        UploadJob::History { timeline, content } => (
            layout::history_key(*timeline),
            vec![Bytes::copy_from_slice(content)],
        ),
    };
    let plain: u64 = pieces.iter().map(|p| p.len() as u64).sum();
    let mut outage_logged = false;
    loop {
        let result = storage::retry(&key, Some(3), MAX_RETRY_BACKOFF, abort, || {
            repo.put_sealed(&key, pieces.clone())
        })
        .await;
        match result {
            Ok(size) => {
                if outage_logged {
                    info!(key, "object store reachable again, upload resumed");
                }
                stats.objects.fetch_add(1, Relaxed);
                stats.plain_bytes.fetch_add(plain, Relaxed);
                stats.stored_bytes.fetch_add(size, Relaxed);
                match job {
                    UploadJob::Segment { segment, .. } => {
                        info!(segment = %segment.to_file_name(segment_size_bytes), bytes = size, "segment archived");
                        delete_deltas(repo, *segment, segment_size_bytes).await;
                    }
                    UploadJob::Delta { .. } => debug!(key, bytes = size, "delta archived"),
                    UploadJob::History { timeline, .. } => {
                        info!(timeline, "timeline history archived")
                    }
                }
                return Ok(true);
            }
            Err(_) if abort.is_cancelled() => return Ok(false),
            Err(e) if !e.is_retryable() => return Err(e),
            Err(e) => {
                if !outage_logged {
                    tracing::error!(key, error = %crate::error::chain(&e),
                        "object store unavailable; holding WAL in memory and retrying");
                    outage_logged = true;
                }
                tokio::select! {
                    biased;
                    () = abort.cancelled() => return Ok(false),
                    () = tokio::time::sleep(MAX_RETRY_BACKOFF) => {}
                }
            }
        }
    }
}

/// Deletes the deltas of a segment that is now stored whole (best effort:
/// a leftover delta is harmless, the complete segment wins on read).
async fn delete_deltas(repo: &Repository, segment: SegmentName, segment_size_bytes: u64) {
    let prefix = layout::delta_prefix(segment, segment_size_bytes);
    match repo.list(&prefix).await {
        Ok(objects) => {
            for o in objects {
                if let Err(e) = repo.delete(&o.key).await {
                    warn!(key = o.key, error = %crate::error::chain(&e), "could not delete a superseded delta");
                }
            }
        }
        Err(e) => {
            warn!(prefix, error = %crate::error::chain(&e), "could not list superseded deltas")
        }
    }
}
