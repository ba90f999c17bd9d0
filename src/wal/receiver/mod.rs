//! `walvault stream`: the replication loop, in named steps.
//!
//! One task reads XLogData, cuts segments and deltas, and queues upload jobs
//! (`copy`); the one upload stage ([`crate::pipeline::upload`]) stores them
//! and publishes the durable LSN; status updates report `flush` = durable
//! LSN only (`status`), which is where the flush position is decided. The
//! open segment, the jobs not yet stored and the upload stage survive
//! reconnects (this file's reconnect loop), so a dropped connection loses
//! nothing and restarts exactly where the stream stopped. `resume` chooses
//! where a fresh run starts, `timelines` archives history files and follows
//! switches, `drain` stores the tail at a graceful stop.

mod copy;
mod drain;
mod resume;
mod stats;
mod status;
mod timelines;

pub use stats::StreamStats;

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use crate::lsn::{Lsn, TimelineId};
use crate::pipeline::conflict::WalCheck;
use crate::pipeline::memory::MemoryBudget;
use crate::pipeline::upload::{self, Stage, UploadJob, UploadStats};
use crate::protocol::command::StartReplication;
use crate::protocol::server;
use crate::protocol::{self, ConnInfo, ReplicationConnection};
use crate::shutdown::Shutdown;
use crate::storage::{self, Repository};

use super::history::follow_history;
use super::segmenter::Segmenter;

/// Upload jobs handed to the upload stage at once (data is bounded by the
/// memory budget, this bounds the job count).
const UPLOAD_QUEUE_DEPTH: usize = 64;
/// Longest pause between reconnect attempts.
const MAX_RECONNECT_BACKOFF: Duration = Duration::from_secs(30);
/// First pause before reconnecting.
const FIRST_RECONNECT_BACKOFF: Duration = Duration::from_millis(500);

/// Settings of `walvault stream`.
#[derive(Clone, Debug)]
pub struct StreamOptions {
    /// The server.
    pub conninfo: ConnInfo,
    /// Physical slot name (created if missing).
    pub slot: String,
    /// How often the open segment's new bytes are stored as a delta.
    pub flush_interval: Duration,
    /// Store each batch as soon as it arrives (for synchronous replication).
    pub synchronous: bool,
    /// The one memory budget for WAL held in memory.
    pub memory_budget_bytes: u64,
    /// Uploads in flight at once.
    pub upload_concurrency: usize,
    /// How long a graceful shutdown may take to store the tail.
    pub shutdown_timeout: Duration,
}

/// What a stream run reports when it ends.
#[derive(Debug, Default, Clone, Copy)]
pub struct StreamSummary {
    /// The durable LSN at the end.
    pub durable: Lsn,
    /// Objects stored.
    pub objects: u64,
    /// Plaintext WAL bytes stored (deltas and segments both count).
    pub plain_bytes: u64,
}

/// A stream failure.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Talking to the server failed.
    #[error(transparent)]
    Protocol(#[from] protocol::Error),
    /// The repository failed in a way retrying cannot fix.
    #[error(transparent)]
    Storage(#[from] storage::Error),
    /// The server is not one walvault can archive.
    #[error(transparent)]
    Server(server::Error),
    /// The settings do not fit this server.
    #[error("{0}")]
    Unsupported(String),
    /// The stream does not continue where it should.
    #[error(transparent)]
    Gap(#[from] super::segmenter::GapError),
    /// The server no longer has WAL walvault needs.
    #[error(
        "the server no longer has the WAL the archive needs next ({0}); the archive has a gap from here on: take a new base backup once streaming runs again"
    )]
    WalRemoved(String),
    /// The upload stage ended early (its own error is reported instead when it has one).
    #[error("the upload stage stopped unexpectedly")]
    UploaderStopped,
    /// The stream must go on from elsewhere on a new connection.
    #[error("the stream goes on from another position")]
    Reconnect,
    /// Shutdown took longer than allowed.
    #[error("shutdown timed out with WAL still unstored (the slot keeps it on the server)")]
    ShutdownTimeout,
}

impl Error {
    /// Whether the user must change settings to fix it (wrong repository,
    /// wrong key, unsupported server).
    pub fn is_configuration(&self) -> bool {
        match self {
            Error::Storage(e) => e.is_configuration(),
            Error::Server(e) => e.is_configuration(),
            Error::Protocol(protocol::Error::ConnInfo(_)) | Error::Unsupported(_) => true,
            _ => false,
        }
    }

    /// Whether the slot is held by another connection (SQLSTATE 55006).
    fn is_slot_in_use(&self) -> bool {
        matches!(self, Error::Protocol(e) if e.sqlstate() == Some("55006"))
    }

    fn is_retryable(&self) -> bool {
        match self {
            Error::Protocol(e) => e.is_retryable(),
            Error::Storage(e) => e.is_retryable(),
            Error::Server(e) => e.is_retryable(),
            Error::Reconnect => true,
            _ => false,
        }
    }
}

impl From<server::Error> for Error {
    fn from(e: server::Error) -> Self {
        match e {
            server::Error::Protocol(p) => Error::Protocol(p),
            other => Error::Server(other),
        }
    }
}

/// State that outlives one connection.
struct Stream<'a> {
    opts: &'a StreamOptions,
    repo: &'a Repository,
    segment_size: u64,
    segmenter: Option<Segmenter>,
    pending: VecDeque<UploadJob>,
    jobs_tx: mpsc::Sender<UploadJob>,
    durable_rx: watch::Receiver<Lsn>,
    memory: Arc<MemoryBudget>,
    stored_histories: BTreeSet<TimelineId>,
    last_reported: Lsn,
    plan_start: Option<(TimelineId, Lsn)>,
    stop_at: Option<watch::Receiver<Option<Lsn>>>,
    /// See [`StreamPlan::limit`].
    limit: Option<Lsn>,
    slot_ready: bool,
    /// Where to go on when the server no longer has the WAL of a hole the
    /// run started at: the end of the archive's newest WAL.
    fallback_start: Option<(TimelineId, Lsn)>,
    stats: Option<Arc<StreamStats>>,
    /// WAL arrived since the last reconnect: the connection worked, and
    /// the next reconnect starts its backoff afresh.
    streamed: bool,
    /// Synchronous mode: the ends of the deltas queued and not yet durable.
    /// While `upload_concurrency` of them are outstanding, new WAL waits in
    /// the segmenter and goes out in the next delta (group commit).
    sync_outstanding: VecDeque<Lsn>,
}

/// Variations on the sidecar stream, for backups that need a WAL range.
#[derive(Default)]
pub struct StreamPlan {
    /// Start here instead of where the repository ends.
    pub start: Option<(TimelineId, Lsn)>,
    /// Store the tail and return once the durable LSN reaches the LSN sent here.
    pub stop_at: Option<watch::Receiver<Option<Lsn>>>,
    /// A connection made (and checked) by the caller, e.g. holding a temporary slot.
    pub connection: Option<ReplicationConnection>,
    /// The slot exists already (the caller created it); do not create it.
    pub slot_ready: bool,
    /// Keep no WAL at or past this LSN (a segment start): what lies there
    /// is another writer's. Use with `stop_at` at the same LSN.
    pub limit: Option<Lsn>,
    /// Publish the durable LSN here, for others to watch.
    pub durable: Option<watch::Sender<Lsn>>,
    /// Count into these (the sidecar's, which its metrics read).
    pub stats: Option<Arc<StreamStats>>,
}

/// Runs the stream until `shutdown.graceful` fires (then drains and
/// returns), or a failure that reconnecting cannot fix. `shutdown.abort`
/// drops what is not stored.
///
/// # Errors
/// Configuration problems (wrong server, wrong repository), lost WAL, or a
/// shutdown that could not store the tail in time.
///
/// # Cancel safety
/// Not cancel safe; use `shutdown`.
pub async fn run(
    opts: &StreamOptions,
    repo: &Repository,
    shutdown: &Shutdown,
    mut plan: StreamPlan,
) -> Result<StreamSummary, Error> {
    let abort = shutdown.abort.child_token();
    let memory = Arc::new(MemoryBudget::new(opts.memory_budget_bytes));
    let stats = plan
        .stats
        .as_ref()
        .map_or_else(|| Arc::new(UploadStats::default()), |s| s.upload.clone());
    if let Some(s) = &plan.stats {
        s.set_memory(memory.clone());
    }
    let durable_tx = plan
        .durable
        .take()
        .unwrap_or_else(|| watch::channel(Lsn::INVALID).0);
    let durable_rx = durable_tx.subscribe();
    let (jobs_tx, jobs_rx) = mpsc::channel(UPLOAD_QUEUE_DEPTH);

    // The first connection tells the segment size the upload stage needs.
    let first = match plan.connection.take() {
        Some(mut c) => {
            let size = c.wal_segment_size().await?;
            Some((c, size))
        }
        None => connect_checked(opts, repo, shutdown).await?,
    };
    let Some((mut conn, segment_size)) = first else {
        return Ok(StreamSummary::default());
    };
    if opts.memory_budget_bytes < 2 * segment_size {
        return Err(Error::Unsupported(format!(
            "the memory budget ({} bytes) must hold at least two WAL segments ({} bytes each); raise --memory-budget",
            opts.memory_budget_bytes, segment_size
        )));
    }
    let headroom = crate::pipeline::memory::upload_headroom(opts.upload_concurrency, segment_size);
    let wal_bytes = memory.set_headroom(headroom, 2 * segment_size);
    if wal_bytes + headroom > opts.memory_budget_bytes {
        warn!(
            budget = opts.memory_budget_bytes,
            wal = wal_bytes,
            uploads = headroom,
            "the memory budget is smaller than two WAL segments plus what the uploads in flight need: \
             the process may hold more than it; raise --memory-budget or lower --upload-concurrency"
        );
    } else {
        debug!(
            budget = opts.memory_budget_bytes,
            wal = wal_bytes,
            uploads = headroom,
            "memory budget: WAL held, and headroom for the uploads in flight"
        );
    }
    let uploader = tokio::spawn(upload::run(
        Stage {
            repo: repo.clone(),
            concurrency: opts.upload_concurrency.max(1),
            memory: Some(memory.clone()),
            stats: stats.clone(),
            durable: Some(durable_tx),
            stored: None,
            cancel: abort.clone(),
            wal_check: repo.read_manifest().await?.as_ref().map(WalCheck::of),
        },
        jobs_rx,
    ));
    let mut stream = Stream {
        opts,
        repo,
        segment_size,
        segmenter: None,
        pending: VecDeque::new(),
        jobs_tx,
        durable_rx,
        memory,
        stored_histories: BTreeSet::new(),
        last_reported: Lsn::INVALID,
        plan_start: plan.start,
        stop_at: plan.stop_at,
        limit: plan.limit,
        slot_ready: plan.slot_ready,
        fallback_start: None,
        stats: plan.stats.clone(),
        streamed: false,
        sync_outstanding: VecDeque::new(),
    };

    let mut backoff = FIRST_RECONNECT_BACKOFF;
    let result = loop {
        let outcome = stream.session(&mut conn, shutdown).await;
        // The backoff grows while connections fail or end before any WAL
        // arrives (a slot held by another connection, say), and starts
        // afresh once one streamed.
        if std::mem::take(&mut stream.streamed) {
            backoff = FIRST_RECONNECT_BACKOFF;
        }
        match outcome {
            Ok(()) => break Ok(()),
            Err(e) if e.is_retryable() && !shutdown.graceful.is_cancelled() => {
                if e.is_slot_in_use() {
                    warn!(slot = opts.slot, retry_in = ?backoff, error = %crate::error::chain(&e),
                        "the replication slot is in use by another connection (another walvault stream on this slot?); retrying");
                } else {
                    warn!(error = %crate::error::chain(&e), retry_in = ?backoff,
                        "replication connection lost; reconnecting");
                }
            }
            Err(e) => break Err(e),
        }
        // Reconnect, keeping what is held in memory.
        loop {
            tokio::select! {
                biased;
                () = shutdown.graceful.cancelled() => break,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(MAX_RECONNECT_BACKOFF);
            match connect_checked(opts, repo, shutdown).await {
                Ok(Some((c, size))) if size == segment_size => {
                    conn = c;
                    if let Some(m) = &stream.stats {
                        m.reconnects
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    break;
                }
                Ok(Some(_)) => {
                    return Err(Error::Unsupported(
                        "the server's WAL segment size changed".into(),
                    ));
                }
                Ok(None) => break,
                Err(e) if e.is_retryable() => {
                    warn!(error = %crate::error::chain(&e), "reconnect failed; retrying");
                }
                Err(e) => return Err(e),
            }
        }
        if shutdown.graceful.is_cancelled() {
            break stream.drain_without_server().await;
        }
    };

    // Stop the upload stage: close its input and wait for it (or abort on failure).
    let Stream {
        jobs_tx,
        durable_rx,
        pending,
        ..
    } = stream;
    drop(jobs_tx);
    if result.is_err() || !pending.is_empty() {
        abort.cancel();
    }
    let uploaded = match uploader.await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "the upload stage panicked");
            return Err(Error::UploaderStopped);
        }
    };
    uploaded?;
    result?;
    use std::sync::atomic::Ordering::Relaxed;
    Ok(StreamSummary {
        durable: *durable_rx.borrow(),
        objects: stats.objects.load(Relaxed),
        plain_bytes: stats.plain_bytes.load(Relaxed),
    })
}

/// Connects through the shared handshake and checks the repository fits
/// the server. `None` when shutdown fired first.
async fn connect_checked(
    opts: &StreamOptions,
    repo: &Repository,
    shutdown: &Shutdown,
) -> Result<Option<(ReplicationConnection, u64)>, Error> {
    let connect = async {
        let (conn, info) = server::connect(&opts.conninfo).await?;
        repo.ensure_manifest(
            &info.identity.system_identifier,
            info.major,
            info.segment_size_bytes,
        )
        .await?;
        info!(server = info.target, major = info.major, system_id = %info.identity.system_identifier,
              timeline = %info.identity.timeline, tls = conn.is_tls(), "connected for replication");
        Ok::<_, Error>((conn, info.segment_size_bytes))
    };
    tokio::select! {
        biased;
        () = shutdown.graceful.cancelled() => Ok(None),
        r = connect => r.map(Some),
    }
}

impl Stream<'_> {
    /// One connection's worth of streaming. `Ok` means shutdown completed.
    async fn session(
        &mut self,
        conn: &mut ReplicationConnection,
        shutdown: &Shutdown,
    ) -> Result<(), Error> {
        let identity = conn.identify_system().await?;
        if !self.slot_ready && conn.create_physical_slot(&self.opts.slot).await? {
            info!(slot = self.opts.slot, "created replication slot");
        }
        let history = self.store_histories(conn, identity.timeline).await?;
        let status_interval = status::status_interval(conn).await;

        if self.segmenter.is_none() {
            let (timeline, start, prefix) = match self.plan_start {
                Some((tli, lsn)) => (tli, lsn.segment_start(self.segment_size), Vec::new()),
                None => self.choose_start(conn, &identity, &history).await?,
            };
            info!(timeline = %timeline, start = %start, "streaming WAL from");
            let held: u64 = prefix.iter().map(|p| p.len() as u64).sum();
            self.memory.add(held);
            self.segmenter = Some(Segmenter::new(timeline, start, self.segment_size, prefix));
            self.sync_outstanding.clear();
            // Everything before the start is stored (or deliberately not archived).
            self.last_reported = start;
        }
        let seg = self.segmenter.as_ref().expect("set above");
        let (tli, pos, moved) = follow_history(
            &history,
            identity.timeline,
            seg.timeline(),
            seg.position(),
            self.segment_size,
        );
        if moved {
            self.switch_timeline(tli, pos);
        }

        loop {
            let seg = self.segmenter.as_ref().expect("set above");
            let (timeline, start) = (seg.timeline(), seg.position());
            let started = match conn
                .start_replication(Some(&self.opts.slot), start, timeline)
                .await
            {
                Ok(s) => s,
                Err(e) if e.sqlstate() == Some("58P01") => return self.wal_removed(e).await,
                Err(e) => return Err(Error::Protocol(e)),
            };
            match started {
                StartReplication::Streaming => {
                    debug!(timeline = %timeline, start = %start, "replication started");
                    // A removed segment is reported after CopyBothResponse.
                    let copied = self.copy_loop(conn, shutdown, status_interval).await;
                    if let Some(m) = &self.stats {
                        m.streaming
                            .store(false, std::sync::atomic::Ordering::Relaxed);
                    }
                    let ended = match copied {
                        Err(Error::Protocol(e)) if e.sqlstate() == Some("58P01") => {
                            return self.wal_removed(e).await;
                        }
                        other => other?,
                    };
                    match ended {
                        CopyEnd::Shutdown => return Ok(()),
                        CopyEnd::TimelineEnded {
                            next_timeline,
                            next_start,
                        } => {
                            self.timeline_ended(conn, next_timeline, next_start).await?;
                        }
                    }
                }
                StartReplication::TimelineEnded {
                    next_timeline,
                    next_start,
                } => {
                    self.timeline_ended(conn, next_timeline, next_start).await?;
                }
            }
        }
    }

    /// The server no longer has the WAL the stream asked for. When the run
    /// started at a hole in the archive, go on from the end of the
    /// archive's newest WAL (on a new connection) and say loudly that the
    /// archive has a gap; otherwise the archive cannot go on.
    async fn wal_removed(&mut self, e: protocol::Error) -> Result<(), Error> {
        let Some((tli, newest)) = self.fallback_start.take() else {
            return Err(Error::WalRemoved(e.to_string()));
        };
        let hole_from = self
            .segmenter
            .as_ref()
            .map_or(Lsn::INVALID, Segmenter::position);
        tracing::error!(timeline = %tli, hole_from = %hole_from, resume = %newest,
            error = %e,
            "the server no longer has the WAL of the archive's hole: the archive has a gap from here; restoring across it needs a base backup taken after it (walvault list and verify --wal name it)");
        let seg = crate::lsn::SegmentName::from_lsn(tli, newest, self.segment_size);
        let prefix = if newest.is_segment_start(self.segment_size) {
            Vec::new()
        } else {
            super::fetch::into_pieces(
                super::fetch::read_delta_chain(self.repo, seg, self.segment_size).await?,
            )
        };
        let start =
            seg.start_lsn(self.segment_size) + prefix.iter().map(|p| p.len() as u64).sum::<u64>();
        let held: u64 = prefix.iter().map(|p| p.len() as u64).sum();
        let old = self.segmenter.take().map_or(0, |s| s.held_bytes());
        self.memory.release(old);
        self.memory.add(held);
        self.segmenter = Some(Segmenter::new(tli, start, self.segment_size, prefix));
        self.sync_outstanding.clear();
        self.last_reported = start;
        Err(Error::Reconnect)
    }

    /// Queues a job for the upload stage.
    fn queue(&mut self, mut job: UploadJob, durable_after: Option<Lsn>, release_bytes: u64) {
        job.durable_after = durable_after;
        job.release_bytes = release_bytes;
        self.pending.push_back(job);
    }
}

/// How a copy stream ended.
enum CopyEnd {
    Shutdown,
    TimelineEnded {
        next_timeline: TimelineId,
        next_start: Lsn,
    },
}
