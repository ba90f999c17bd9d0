//! `walvault stream`: the replication loop.
//!
//! One task reads XLogData, cuts segments and deltas, and queues upload jobs;
//! the uploader stores them and publishes the durable LSN; status updates
//! report `flush` = durable LSN only. The open segment, the jobs not yet
//! stored and the uploader survive reconnects, so a dropped connection loses
//! nothing and restarts exactly where the stream stopped.

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::lsn::{Lsn, TimelineId, now_pg_micros};
use crate::pipeline::memory::MemoryBudget;
use crate::pipeline::upload::{self, QueuedJob, UploadJob, UploadStats};
use crate::protocol::command::StartReplication;
use crate::protocol::connection::CopyEvent;
use crate::protocol::message::{
    ReplicationMessage, StandbyStatusUpdate, decode_replication_message,
};
use crate::protocol::{self, ConnInfo, ReplicationConnection};
use crate::storage::{self, Repository, layout};

use super::archive::{WalInventory, read_delta_chain};
use super::history::{HistoryEntry, follow_history, parse_history};
use super::segmenter::Segmenter;

/// Largest XLogData payload the server sends (16 × 8 KiB pages); the memory
/// check before each read leaves room for one.
const MAX_XLOGDATA_BYTES: u64 = 128 * 1024 + 64;
/// Upload jobs handed to the uploader at once (data is bounded by the memory
/// budget, this bounds the job count).
const UPLOAD_QUEUE_DEPTH: usize = 64;
/// Longest pause between reconnect attempts.
const MAX_RECONNECT_BACKOFF: Duration = Duration::from_secs(30);
/// Most often we send a status update without a reason.
const MAX_STATUS_INTERVAL: Duration = Duration::from_secs(10);
/// PostgreSQL majors walvault speaks to.
pub const SUPPORTED_MAJORS: std::ops::RangeInclusive<u32> = 14..=18;

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
    /// The uploader ended early (its own error is reported instead when it has one).
    #[error("the uploader stopped unexpectedly")]
    UploaderStopped,
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
            Error::Protocol(protocol::Error::ConnInfo(_)) | Error::Unsupported(_) => true,
            _ => false,
        }
    }

    fn is_retryable(&self) -> bool {
        match self {
            Error::Protocol(e) => e.is_retryable(),
            Error::Storage(e) => e.is_retryable(),
            _ => false,
        }
    }
}

/// State that outlives one connection.
struct Stream<'a> {
    opts: &'a StreamOptions,
    repo: &'a Repository,
    segment_size: u64,
    segmenter: Option<Segmenter>,
    pending: VecDeque<QueuedJob>,
    jobs_tx: mpsc::Sender<QueuedJob>,
    durable_rx: watch::Receiver<Lsn>,
    memory: Arc<MemoryBudget>,
    stored_histories: BTreeSet<TimelineId>,
    last_reported: Lsn,
    plan_start: Option<(TimelineId, Lsn)>,
    stop_at: Option<watch::Receiver<Option<Lsn>>>,
    slot_ready: bool,
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
    /// Publish the durable LSN here (the uploader's sender), for others to watch.
    pub durable: Option<watch::Sender<Lsn>>,
}

/// Runs the sidecar stream until `shutdown` fires (then drains and returns),
/// or a failure that reconnecting cannot fix.
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
    shutdown: &CancellationToken,
) -> Result<StreamSummary, Error> {
    run_plan(opts, repo, shutdown, StreamPlan::default()).await
}

/// [`run`] with a [`StreamPlan`].
///
/// # Errors
/// As [`run`].
///
/// # Cancel safety
/// Not cancel safe; use `shutdown`.
pub async fn run_plan(
    opts: &StreamOptions,
    repo: &Repository,
    shutdown: &CancellationToken,
    mut plan: StreamPlan,
) -> Result<StreamSummary, Error> {
    let abort = CancellationToken::new();
    let memory = Arc::new(MemoryBudget::new(opts.memory_budget_bytes));
    let stats = Arc::new(UploadStats::default());
    let durable_tx = plan
        .durable
        .take()
        .unwrap_or_else(|| watch::channel(Lsn::INVALID).0);
    let durable_rx = durable_tx.subscribe();
    let (jobs_tx, jobs_rx) = mpsc::channel(UPLOAD_QUEUE_DEPTH);

    // The first connection tells the segment size the uploader needs.
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
    let uploader = tokio::spawn(upload::run(
        repo.clone(),
        segment_size,
        opts.upload_concurrency.max(1),
        jobs_rx,
        durable_tx,
        memory.clone(),
        stats.clone(),
        abort.clone(),
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
        slot_ready: plan.slot_ready,
    };

    let mut backoff = Duration::from_millis(500);
    let result = loop {
        let outcome = stream.session(&mut conn, shutdown).await;
        match outcome {
            Ok(()) => break Ok(()),
            Err(e) if e.is_retryable() && !shutdown.is_cancelled() => {
                warn!(error = %crate::error::chain(&e), "replication connection lost; reconnecting");
            }
            Err(e) => break Err(e),
        }
        // Reconnect, keeping what is held in memory.
        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(MAX_RECONNECT_BACKOFF);
            match connect_checked(opts, repo, shutdown).await {
                Ok(Some((c, size))) if size == segment_size => {
                    conn = c;
                    backoff = Duration::from_millis(500);
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
        if shutdown.is_cancelled() {
            break stream.drain_without_server(&uploader).await;
        }
    };

    // Stop the uploader: close its input and wait for it (or abort on failure).
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
    let uploaded = uploader.await.expect("uploader does not panic");
    uploaded?;
    result?;
    use std::sync::atomic::Ordering::Relaxed;
    Ok(StreamSummary {
        durable: *durable_rx.borrow(),
        objects: stats.objects.load(Relaxed),
        plain_bytes: stats.plain_bytes.load(Relaxed),
    })
}

/// Connects and checks the server: supported major, matching repository.
/// `None` when shutdown fired first.
async fn connect_checked(
    opts: &StreamOptions,
    repo: &Repository,
    shutdown: &CancellationToken,
) -> Result<Option<(ReplicationConnection, u64)>, Error> {
    let connect = async {
        let mut conn = ReplicationConnection::connect(&opts.conninfo).await?;
        let major = conn.server_major().unwrap_or(0);
        if !SUPPORTED_MAJORS.contains(&major) {
            return Err(Error::Unsupported(format!(
                "server {} runs PostgreSQL {}, but walvault supports {} to {}",
                conn.target(),
                conn.parameter("server_version").unwrap_or("?"),
                SUPPORTED_MAJORS.start(),
                SUPPORTED_MAJORS.end()
            )));
        }
        let identity = conn.identify_system().await?;
        let segment_size = conn.wal_segment_size().await?;
        repo.ensure_manifest(&identity.system_identifier, major, segment_size)
            .await?;
        info!(server = conn.target(), major, system_id = %identity.system_identifier,
              timeline = identity.timeline, tls = conn.is_tls(), "connected for replication");
        Ok((conn, segment_size))
    };
    tokio::select! {
        biased;
        () = shutdown.cancelled() => Ok(None),
        r = connect => r.map(Some),
    }
}

impl Stream<'_> {
    /// One connection's worth of streaming. `Ok` means shutdown completed.
    async fn session(
        &mut self,
        conn: &mut ReplicationConnection,
        shutdown: &CancellationToken,
    ) -> Result<(), Error> {
        let identity = conn.identify_system().await?;
        if !self.slot_ready && conn.create_physical_slot(&self.opts.slot).await? {
            info!(slot = self.opts.slot, "created replication slot");
        }
        let history = self.store_histories(conn, identity.timeline).await?;
        let status_interval = status_interval(conn).await;

        if self.segmenter.is_none() {
            let (timeline, start, prefix) = match self.plan_start {
                Some((tli, lsn)) => (tli, lsn.segment_start(self.segment_size), Vec::new()),
                None => self.choose_start(conn, &identity, &history).await?,
            };
            info!(timeline, start = %start, "streaming WAL from");
            let held: u64 = prefix.iter().map(|p| p.len() as u64).sum();
            self.memory.add(held);
            self.segmenter = Some(Segmenter::new(timeline, start, self.segment_size, prefix));
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
            let started = conn
                .start_replication(Some(&self.opts.slot), start, timeline)
                .await
                .map_err(|e| match e.sqlstate() {
                    Some("58P01") => Error::WalRemoved(e.to_string()),
                    _ => Error::Protocol(e),
                })?;
            match started {
                StartReplication::Streaming => {
                    debug!(timeline, start = %start, "replication started");
                    match self.copy_loop(conn, shutdown, status_interval).await? {
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

    /// Stores the tail of the old timeline and goes on with the next one.
    async fn timeline_ended(
        &mut self,
        conn: &mut ReplicationConnection,
        next_timeline: TimelineId,
        next_start: Lsn,
    ) -> Result<(), Error> {
        info!(next_timeline, next_start = %next_start, "timeline ended; following the switch");
        self.store_history(conn, next_timeline).await?;
        self.switch_timeline(next_timeline, next_start.segment_start(self.segment_size));
        Ok(())
    }

    /// Queues the open segment's tail as a delta and starts a new segmenter.
    fn switch_timeline(&mut self, timeline: TimelineId, start: Lsn) {
        let old = self.segmenter.take().expect("a segmenter exists");
        let held = old.held_bytes();
        let mut old = old;
        match old.take_delta() {
            Some(d) => self.queue(
                UploadJob::Delta {
                    segment: d.segment,
                    start: d.start,
                    end: d.end,
                    pieces: d.pieces,
                },
                None,
                held,
            ),
            None => self.memory.release(held),
        }
        self.segmenter = Some(Segmenter::new(
            timeline,
            start,
            self.segment_size,
            Vec::new(),
        ));
    }

    /// Reads the stream until shutdown, a timeline end or an error.
    async fn copy_loop(
        &mut self,
        conn: &mut ReplicationConnection,
        shutdown: &CancellationToken,
        status_interval: Duration,
    ) -> Result<CopyEnd, Error> {
        let mut flush_tick = tokio::time::interval(self.opts.flush_interval);
        flush_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut status_tick = tokio::time::interval(status_interval);
        status_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut memory_full_since: Option<Instant> = None;
        let jobs_tx = self.jobs_tx.clone();
        let memory = self.memory.clone();
        self.send_status(conn, false).await?;
        loop {
            let has_room = self.memory.has_room_for(MAX_XLOGDATA_BYTES);
            match (has_room, memory_full_since) {
                (false, None) => {
                    warn!(
                        used = self.memory.used_bytes(),
                        limit = self.memory.limit_bytes(),
                        "memory budget full: pausing reads until uploads catch up"
                    );
                    memory_full_since = Some(Instant::now());
                }
                (true, Some(since)) => {
                    info!(paused_for = ?since.elapsed(), "uploads caught up: reading again");
                    memory_full_since = None;
                }
                _ => {}
            }
            let front_ready = !self.pending.is_empty();
            if self.stop_reached() {
                info!(durable = %*self.durable_rx.borrow(), "WAL range stored");
                self.drain(conn).await?;
                return Ok(CopyEnd::Shutdown);
            }
            tokio::select! {
                biased;
                () = shutdown.cancelled() => {
                    self.drain(conn).await?;
                    return Ok(CopyEnd::Shutdown);
                }
                changed = async {
                    match self.stop_at.as_mut() {
                        Some(rx) => rx.changed().await,
                        None => std::future::pending().await,
                    }
                } => {
                    if changed.is_err() {
                        // Whoever planned the stop is gone: store what we have and end.
                        self.drain(conn).await?;
                        return Ok(CopyEnd::Shutdown);
                    }
                    // Store what is held now rather than at the next tick.
                    self.flush_if_past_stop();
                }
                permit = jobs_tx.reserve(), if front_ready => {
                    let permit = permit.map_err(|_| Error::UploaderStopped)?;
                    permit.send(self.pending.pop_front().expect("front_ready"));
                }
                changed = self.durable_rx.changed() => {
                    if changed.is_err() {
                        return Err(Error::UploaderStopped);
                    }
                    self.send_status(conn, false).await?;
                }
                _ = status_tick.tick() => self.send_status(conn, false).await?,
                _ = flush_tick.tick(), if !self.opts.synchronous => self.queue_delta(),
                () = async { let _ = tokio::time::timeout(Duration::from_millis(100), memory.released()).await; }, if !has_room => {}
                event = conn.next_copy_event(), if has_room => {
                    match event? {
                        CopyEvent::Data(payload) => {
                            match decode_replication_message(payload)? {
                                ReplicationMessage::XLogData(x) => {
                                    self.receive(x.start, x.data)?;
                                    if self.opts.synchronous && !conn.has_buffered_message() {
                                        self.queue_delta();
                                    }
                                }
                                ReplicationMessage::Keepalive(k) => {
                                    if k.reply_requested {
                                        self.send_status(conn, false).await?;
                                    }
                                }
                            }
                        }
                        CopyEvent::Done => {
                            // A historic timeline was streamed to its end.
                            self.queue_delta();
                            let result = conn.end_copy(true).await?;
                            let next = protocol::command::parse_timeline_end(&result)?
                                .ok_or_else(|| protocol::Error::Protocol("timeline ended without a next timeline".into()))?;
                            return Ok(CopyEnd::TimelineEnded { next_timeline: next.0, next_start: next.1 });
                        }
                    }
                }
            }
        }
    }

    /// Whether a planned stop point is stored.
    fn stop_reached(&self) -> bool {
        let Some(rx) = &self.stop_at else {
            return false;
        };
        let stop = *rx.borrow();
        stop.is_some_and(|end| *self.durable_rx.borrow() >= end)
    }

    /// Adds received WAL to the open segment and queues completed segments.
    /// When a planned stop point has been received, queue the open segment's
    /// tail at once: whoever waits for the stop should not wait for a tick.
    fn flush_if_past_stop(&mut self) {
        let stop = self.stop_at.as_ref().and_then(|rx| *rx.borrow());
        let position = self.segmenter.as_ref().map(Segmenter::position);
        if let (Some(stop), Some(position)) = (stop, position)
            && position >= stop
        {
            self.queue_delta();
        }
    }

    fn receive(&mut self, start: Lsn, data: Bytes) -> Result<(), Error> {
        let seg = self.segmenter.as_mut().expect("streaming has a segmenter");
        let before = seg.position();
        let done = seg.push(start, data)?;
        let added = seg.position().0 - before.0;
        self.memory.add(added);
        self.flush_if_past_stop();
        for c in done {
            let end = c.segment.start_lsn(self.segment_size) + self.segment_size;
            self.queue(
                UploadJob::Segment {
                    segment: c.segment,
                    pieces: c.pieces,
                },
                Some(end),
                self.segment_size,
            );
        }
        Ok(())
    }

    /// Queues the open segment's new bytes as a delta, if there are any.
    fn queue_delta(&mut self) {
        let seg = self.segmenter.as_mut().expect("streaming has a segmenter");
        if let Some(d) = seg.take_delta() {
            let end = d.segment.start_lsn(self.segment_size) + d.end;
            self.queue(
                UploadJob::Delta {
                    segment: d.segment,
                    start: d.start,
                    end: d.end,
                    pieces: d.pieces,
                },
                Some(end),
                0,
            );
        }
    }

    fn queue(&mut self, job: UploadJob, durable_after: Option<Lsn>, release_bytes: u64) {
        self.pending.push_back(QueuedJob {
            job,
            durable_after,
            release_bytes,
        });
    }

    /// Reports the durable LSN as write, flush and apply.
    async fn send_status(
        &mut self,
        conn: &mut ReplicationConnection,
        reply: bool,
    ) -> Result<(), Error> {
        let durable = (*self.durable_rx.borrow_and_update()).max(self.last_reported);
        self.last_reported = durable;
        conn.send_status(&StandbyStatusUpdate {
            write: durable,
            flush: durable,
            apply: durable,
            client_time: now_pg_micros(),
            reply_requested: reply,
        })
        .await?;
        Ok(())
    }

    /// Graceful end: store the tail, report it, end the copy and close.
    async fn drain(&mut self, conn: &mut ReplicationConnection) -> Result<(), Error> {
        info!("shutting down: storing the open segment's tail");
        self.queue_delta();
        let target = self
            .segmenter
            .as_ref()
            .map_or(Lsn::INVALID, Segmenter::handed_out_position);
        let deadline = tokio::time::sleep(self.opts.shutdown_timeout);
        tokio::pin!(deadline);
        let mut status_tick = tokio::time::interval(Duration::from_secs(1));
        let jobs_tx = self.jobs_tx.clone();
        loop {
            if self.pending.is_empty() && *self.durable_rx.borrow() >= target {
                break;
            }
            tokio::select! {
                biased;
                () = &mut deadline => return Err(Error::ShutdownTimeout),
                permit = jobs_tx.reserve(), if !self.pending.is_empty() => {
                    let permit = permit.map_err(|_| Error::UploaderStopped)?;
                    permit.send(self.pending.pop_front().expect("not empty"));
                }
                changed = self.durable_rx.changed() => {
                    if changed.is_err() {
                        return Err(Error::UploaderStopped);
                    }
                }
                _ = status_tick.tick() => {
                    // Keep the walsender from timing out; the connection may be gone.
                    let _ = self.send_status(conn, false).await;
                }
            }
        }
        self.send_status(conn, false).await?;
        info!(durable = %self.last_reported, "tail stored; final status sent");
        // Ending the copy can fail if the server is already gone; the data is safe.
        let _ = tokio::time::timeout(Duration::from_secs(5), conn.end_copy(false)).await;
        Ok(())
    }

    /// Shutdown while disconnected: store what is held, without a server.
    async fn drain_without_server(
        &mut self,
        _uploader: &tokio::task::JoinHandle<Result<(), storage::Error>>,
    ) -> Result<(), Error> {
        self.queue_delta();
        let deadline = Instant::now() + self.opts.shutdown_timeout;
        while let Some(job) = self.pending.pop_front() {
            match tokio::time::timeout_at(deadline, self.jobs_tx.send(job)).await {
                Ok(Ok(())) => {}
                _ => return Err(Error::ShutdownTimeout),
            }
        }
        Ok(())
    }

    /// Stores the history files of timelines 2..=current not yet stored and
    /// returns the current timeline's history.
    async fn store_histories(
        &mut self,
        conn: &mut ReplicationConnection,
        current: TimelineId,
    ) -> Result<Vec<HistoryEntry>, Error> {
        if current < 2 {
            return Ok(Vec::new());
        }
        if self.stored_histories.is_empty() {
            let inv = WalInventory::scan(self.repo, self.segment_size).await?;
            self.stored_histories = inv.histories;
        }
        for tli in 2..current {
            if !self.stored_histories.contains(&tli) {
                match self.store_history(conn, tli).await {
                    Ok(_) => {}
                    // The server may not hold files of old ancestors any more.
                    Err(Error::Protocol(e)) if e.sqlstate() == Some("58P01") => {}
                    Err(e) => return Err(e),
                }
            }
        }
        let content = self.store_history(conn, current).await?;
        parse_history(&String::from_utf8_lossy(&content))
            .map_err(|e| Error::Protocol(protocol::Error::Protocol(e.to_string())))
    }

    /// Fetches a timeline's history file and stores it (before any WAL of it).
    async fn store_history(
        &mut self,
        conn: &mut ReplicationConnection,
        timeline: TimelineId,
    ) -> Result<Vec<u8>, Error> {
        let (_name, content) = conn.timeline_history(timeline).await?;
        if !self.stored_histories.contains(&timeline) {
            let cancel = CancellationToken::new();
            let key = layout::history_key(timeline);
            storage::retry(&key, Some(10), Duration::from_secs(10), &cancel, || {
                self.repo
                    .put_sealed(&key, vec![Bytes::copy_from_slice(&content)])
            })
            .await?;
            info!(timeline, "timeline history archived");
            self.stored_histories.insert(timeline);
        }
        Ok(content)
    }

    /// Where a fresh run starts: where the repository ends, else the slot's
    /// restart LSN, else the server's current segment.
    async fn choose_start(
        &mut self,
        conn: &mut ReplicationConnection,
        identity: &protocol::command::SystemIdentity,
        history: &[HistoryEntry],
    ) -> Result<(TimelineId, Lsn, Vec<Bytes>), Error> {
        let inv = WalInventory::scan(self.repo, self.segment_size).await?;
        let window = self.opts.upload_concurrency as u64 + 2;
        if let Some(tli) = inv.newest_timeline() {
            let resume = inv.timelines[&tli]
                .resume_point(self.segment_size, window)
                .expect("a timeline in the inventory holds WAL");
            let (t, lsn, moved) =
                follow_history(history, identity.timeline, tli, resume, self.segment_size);
            if moved || lsn.is_segment_start(self.segment_size) {
                return Ok((t, lsn, Vec::new()));
            }
            let seg = crate::lsn::SegmentName::from_lsn(t, lsn, self.segment_size);
            let prefix = read_delta_chain(self.repo, seg, self.segment_size).await?;
            let start = seg.start_lsn(self.segment_size) + prefix.len() as u64;
            info!(segment = %seg.to_file_name(self.segment_size), bytes = prefix.len(), "resuming inside a partly stored segment");
            return Ok((t, start, super::archive::into_pieces(prefix)));
        }
        let slot = if conn.server_major().unwrap_or(0) >= 15 {
            conn.read_replication_slot(&self.opts.slot).await?
        } else {
            None
        };
        if let Some(lsn) = slot.and_then(|s| s.restart_lsn) {
            let tli = slot
                .and_then(|s| s.restart_timeline)
                .unwrap_or(identity.timeline);
            let (t, l, _) = follow_history(
                history,
                identity.timeline,
                tli,
                lsn.segment_start(self.segment_size),
                self.segment_size,
            );
            return Ok((t, l.segment_start(self.segment_size), Vec::new()));
        }
        Ok((
            identity.timeline,
            identity.xlogpos.segment_start(self.segment_size),
            Vec::new(),
        ))
    }
}

enum CopyEnd {
    Shutdown,
    TimelineEnded {
        next_timeline: TimelineId,
        next_start: Lsn,
    },
}

/// How often to send status updates: a third of `wal_sender_timeout`, at most
/// [`MAX_STATUS_INTERVAL`], at least 1 s.
async fn status_interval(conn: &mut ReplicationConnection) -> Duration {
    let timeout = match conn.show("wal_sender_timeout").await {
        Ok(text) => parse_pg_duration(&text),
        Err(e) => {
            error!(error = %e, "cannot read wal_sender_timeout; assuming 60s");
            None
        }
    };
    match timeout {
        Some(t) if !t.is_zero() => (t / 3).clamp(Duration::from_secs(1), MAX_STATUS_INTERVAL),
        _ => MAX_STATUS_INTERVAL,
    }
}

/// Parses a time setting as SHOW prints it (`60s`, `1min`, `500ms`, `0`).
fn parse_pg_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let digits: String = text.chars().take_while(char::is_ascii_digit).collect();
    let n: u64 = digits.parse().ok()?;
    Some(match &text[digits.len()..] {
        "" | "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "min" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        "d" => Duration::from_secs(n * 86400),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sender_timeouts() {
        assert_eq!(parse_pg_duration("60s"), Some(Duration::from_secs(60)));
        assert_eq!(parse_pg_duration("1min"), Some(Duration::from_secs(60)));
        assert_eq!(parse_pg_duration("0"), Some(Duration::ZERO));
        assert_eq!(parse_pg_duration("soon"), None);
    }
}
