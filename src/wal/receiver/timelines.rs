//! Timelines: history files archived before any WAL of their timeline,
//! and the stream following a switch (a promoted standby) onto the next
//! timeline at the start of the switch segment.

use tracing::info;

use crate::lsn::{Lsn, TimelineId};
use crate::pipeline::upload::UploadJob;
use crate::protocol::{self, ReplicationConnection};

use super::super::history::{HistoryEntry, parse_history};
use super::super::inventory::WalInventory;
use super::super::segmenter::Segmenter;
use super::{Error, Stream};

impl Stream<'_> {
    /// Stores the tail of the old timeline and goes on with the next one.
    pub(super) async fn timeline_ended(
        &mut self,
        conn: &mut ReplicationConnection,
        next_timeline: TimelineId,
        next_start: Lsn,
    ) -> Result<(), Error> {
        info!(next_timeline = %next_timeline, next_start = %next_start, "timeline ended; following the switch");
        self.store_history(conn, next_timeline).await?;
        self.switch_timeline(next_timeline, next_start.segment_start(self.segment_size));
        Ok(())
    }

    /// Queues the open segment's tail as a delta and starts a new segmenter.
    pub(super) fn switch_timeline(&mut self, timeline: TimelineId, start: Lsn) {
        let old = self.segmenter.take().expect("a segmenter exists");
        let held = old.held_bytes();
        let mut old = old;
        match old.take_delta() {
            Some(d) => {
                let job = UploadJob::delta(d.segment, d.start, d.end, d.pieces, self.segment_size);
                self.queue(job, None, held);
            }
            None => self.memory.release(held),
        }
        self.segmenter = Some(Segmenter::new(
            timeline,
            start,
            self.segment_size,
            Vec::new(),
        ));
        self.sync_outstanding.clear();
    }

    /// Stores the history files of timelines 2..=current not yet stored and
    /// returns the current timeline's history.
    pub(super) async fn store_histories(
        &mut self,
        conn: &mut ReplicationConnection,
        current: TimelineId,
    ) -> Result<Vec<HistoryEntry>, Error> {
        if current.get() < 2 {
            return Ok(Vec::new());
        }
        if self.stored_histories.is_empty() {
            let inv = WalInventory::scan(self.repo, self.segment_size).await?;
            self.stored_histories = inv.histories;
        }
        for n in 2..current.get() {
            let tli = TimelineId::new(n).expect("from 2 up");
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
            // Queued before any WAL of the timeline: the durable LSN passes
            // that WAL only once the history file is stored too.
            self.queue(UploadJob::history(timeline, content.clone()), None, 0);
            self.stored_histories.insert(timeline);
        }
        Ok(content)
    }
}
