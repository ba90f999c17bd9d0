//! Where a fresh run starts: where the repository ends, else the slot's
//! restart LSN, else the server's current segment; moved along the server's
//! timeline history when the repository's timeline has ended.

use bytes::Bytes;
use tracing::info;

use crate::lsn::{Lsn, SegmentName, TimelineId};
use crate::protocol::{self, ReplicationConnection};

use super::super::fetch::{into_pieces, read_delta_chain};
use super::super::history::{HistoryEntry, follow_history};
use super::super::inventory::WalInventory;
use super::{Error, Stream};

impl Stream<'_> {
    /// Where a fresh run starts: where the repository ends, else the slot's
    /// restart LSN, else the server's current segment.
    pub(super) async fn choose_start(
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
            let seg = SegmentName::from_lsn(t, lsn, self.segment_size);
            let prefix = read_delta_chain(self.repo, seg, self.segment_size).await?;
            let start = seg.start_lsn(self.segment_size) + prefix.len() as u64;
            info!(segment = %seg.to_file_name(self.segment_size), bytes = prefix.len(), "resuming inside a partly stored segment");
            return Ok((t, start, into_pieces(prefix)));
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
