//! The copy loop: XLogData into the segmenter, complete segments and
//! deltas into upload jobs, status updates on their own timer, reads paused
//! while the memory budget is full.

use std::time::Duration;

use bytes::Bytes;
use tokio::time::{Instant, MissedTickBehavior};
use tracing::{info, warn};

use crate::lsn::Lsn;
use crate::pipeline::upload::UploadJob;
use crate::protocol::connection::CopyEvent;
use crate::protocol::message::{ReplicationMessage, decode_replication_message};
use crate::protocol::{self, ReplicationConnection};
use crate::shutdown::Shutdown;

use super::super::segmenter::Segmenter;
use super::{CopyEnd, Error, Stream};

/// Largest XLogData payload the server sends (16 × 8 KiB pages); the memory
/// check before each read leaves room for one.
const MAX_XLOGDATA_BYTES: u64 = 128 * 1024 + 64;
/// How long a read paused on a full budget waits before looking again.
const MEMORY_RECHECK: Duration = Duration::from_millis(100);

impl Stream<'_> {
    /// Reads the stream until shutdown, a timeline end or an error.
    pub(super) async fn copy_loop(
        &mut self,
        conn: &mut ReplicationConnection,
        shutdown: &Shutdown,
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
        if let Some(m) = &self.stats {
            m.streaming
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
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
                () = shutdown.graceful.cancelled() => {
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
                    if self.opts.synchronous {
                        // An upload ended: what waited for a slot goes now.
                        self.queue_group_delta();
                    }
                }
                _ = status_tick.tick() => self.send_status(conn, false).await?,
                _ = flush_tick.tick(), if !self.opts.synchronous => self.queue_delta(),
                () = async { let _ = tokio::time::timeout(MEMORY_RECHECK, memory.released()).await; }, if !has_room => {}
                event = conn.next_copy_event(), if has_room => {
                    match event? {
                        CopyEvent::Data(payload) => {
                            match decode_replication_message(payload)? {
                                ReplicationMessage::XLogData(x) => {
                                    self.streamed = true;
                                    if let Some(m) = &self.stats {
                                        m.server_at(x.wal_end);
                                        m.received(x.start + x.data.len() as u64);
                                    }
                                    self.receive(x.start, x.data)?;
                                    if self.opts.synchronous && !conn.has_buffered_message() {
                                        self.queue_group_delta();
                                    }
                                }
                                ReplicationMessage::Keepalive(k) => {
                                    if let Some(m) = &self.stats {
                                        m.server_at(k.wal_end);
                                    }
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
    pub(super) fn stop_reached(&self) -> bool {
        let Some(rx) = &self.stop_at else {
            return false;
        };
        let stop = *rx.borrow();
        stop.is_some_and(|end| *self.durable_rx.borrow() >= end)
    }

    /// Adds received WAL to the open segment and queues completed segments.
    /// When a planned stop point has been received, queue the open segment's
    /// tail at once: whoever waits for the stop should not wait for a tick.
    pub(super) fn flush_if_past_stop(&mut self) {
        let stop = self.stop_at.as_ref().and_then(|rx| *rx.borrow());
        let position = self.segmenter.as_ref().map(Segmenter::position);
        if let (Some(stop), Some(position)) = (stop, position)
            && position >= stop
        {
            self.queue_delta();
        }
    }

    pub(super) fn receive(&mut self, start: Lsn, mut data: Bytes) -> Result<(), Error> {
        if let Some(limit) = self.limit {
            // A stream that fills a gap before another writer's WAL keeps
            // nothing at or past where that writer's WAL begins.
            if start >= limit {
                return Ok(());
            }
            data.truncate(data.len().min((limit.0 - start.0) as usize));
        }
        let seg = self.segmenter.as_mut().expect("streaming has a segmenter");
        let before = seg.position();
        let done = seg.push(start, data)?;
        let added = seg.position().0 - before.0;
        self.memory.add(added);
        // Completed segments first: a delta of the next segment queued
        // before them would make its end durable while they are in flight.
        for c in done {
            let end = c.segment.start_lsn(self.segment_size) + self.segment_size;
            let job = UploadJob::segment(c.segment, c.pieces, self.segment_size);
            self.queue(job, Some(end), self.segment_size);
        }
        self.flush_if_past_stop();
        Ok(())
    }

    /// Synchronous mode's group commit: queues the open segment's new bytes
    /// as a delta unless `upload_concurrency` deltas are already on their
    /// way. Then the bytes wait, and every commit that arrives meanwhile
    /// goes out in one delta when an upload ends, instead of one upload per
    /// commit queued behind the others.
    pub(super) fn queue_group_delta(&mut self) {
        let durable = *self.durable_rx.borrow();
        while self
            .sync_outstanding
            .front()
            .is_some_and(|end| *end <= durable)
        {
            self.sync_outstanding.pop_front();
        }
        if self.sync_outstanding.len() >= self.opts.upload_concurrency.max(1) {
            return;
        }
        let seg = self.segmenter.as_mut().expect("streaming has a segmenter");
        if let Some(d) = seg.take_delta() {
            let end = d.segment.start_lsn(self.segment_size) + d.end;
            let job = UploadJob::delta(d.segment, d.start, d.end, d.pieces, self.segment_size);
            self.queue(job, Some(end), 0);
            self.sync_outstanding.push_back(end);
        }
    }

    /// Queues the open segment's new bytes as a delta, if there are any.
    pub(super) fn queue_delta(&mut self) {
        let seg = self.segmenter.as_mut().expect("streaming has a segmenter");
        if let Some(d) = seg.take_delta() {
            let end = d.segment.start_lsn(self.segment_size) + d.end;
            let job = UploadJob::delta(d.segment, d.start, d.end, d.pieces, self.segment_size);
            self.queue(job, Some(end), 0);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;
    use tokio::sync::{mpsc, watch};

    use super::super::{Stream, StreamOptions};
    use crate::format::{Keyring, MasterKey, SealOptions};
    use crate::lsn::{Lsn, TimelineId};
    use crate::pipeline::memory::MemoryBudget;
    use crate::pipeline::upload::ObjectKind;
    use crate::protocol::ConnInfo;
    use crate::storage::Repository;
    use crate::wal::segmenter::Segmenter;

    const SEG: u64 = 1 << 20;

    /// One message that completes a segment and passes the planned stop in
    /// the next: the segment is queued before the next one's delta, so the
    /// upload stage (durable in queue order) never reports the stop durable
    /// while the segment is in flight.
    #[test]
    fn a_completed_segment_is_queued_before_the_next_delta() {
        let opts = StreamOptions {
            conninfo: ConnInfo::parse("host=127.0.0.1 user=u", &|_| None).unwrap(),
            slot: "s".into(),
            flush_interval: std::time::Duration::from_secs(1),
            synchronous: false,
            memory_budget_bytes: 64 * SEG,
            upload_concurrency: 1,
            shutdown_timeout: std::time::Duration::from_secs(1),
        };
        let repo = Repository::from_store(
            Arc::new(object_store::memory::InMemory::new()),
            "",
            "memory".into(),
            Keyring::single(MasterKey::from_hex(&"11".repeat(32)).unwrap()),
            SealOptions::default(),
        );
        let (jobs_tx, _jobs_rx) = mpsc::channel(4);
        let (_durable_tx, durable_rx) = watch::channel(Lsn::INVALID);
        let start = Lsn(3 * SEG);
        let stop = Lsn(4 * SEG + 100);
        let (_stop_tx, stop_rx) = watch::channel(Some(stop));
        let mut stream = Stream {
            opts: &opts,
            repo: &repo,
            segment_size: SEG,
            segmenter: Some(Segmenter::new(TimelineId::FIRST, start, SEG, Vec::new())),
            pending: Default::default(),
            jobs_tx,
            durable_rx,
            memory: Arc::new(MemoryBudget::new(64 * SEG)),
            stored_histories: Default::default(),
            last_reported: Lsn::INVALID,
            plan_start: None,
            stop_at: Some(stop_rx),
            limit: None,
            slot_ready: true,
            fallback_start: None,
            stats: None,
            streamed: false,
            sync_outstanding: Default::default(),
        };
        stream
            .receive(start, Bytes::from(vec![7u8; (SEG + 200) as usize]))
            .unwrap();
        let kinds: Vec<(bool, Option<Lsn>)> = stream
            .pending
            .iter()
            .map(|j| {
                (
                    matches!(j.kind, ObjectKind::Segment { .. }),
                    j.durable_after,
                )
            })
            .collect();
        assert_eq!(
            kinds,
            vec![
                (true, Some(Lsn(4 * SEG))),
                (false, Some(Lsn(4 * SEG + 200)))
            ]
        );
    }
}
