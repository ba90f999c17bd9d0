//! Where a fresh run starts: where the repository ends, else the slot's
//! restart LSN, else the server's current segment; moved along the server's
//! timeline history when the repository's timeline has ended.

use bytes::Bytes;
use tracing::{error, info, warn};

use crate::lsn::{Lsn, SegmentName, TimelineId};
use crate::protocol::{self, ReplicationConnection};

use super::super::fetch::{into_pieces, read_delta_chain};
use super::super::history::{HistoryEntry, follow_history};
use super::super::inventory::WalInventory;
use super::{Error, Stream};

impl Stream<'_> {
    /// Where a fresh run starts: at the end of the WAL held without a hole
    /// on the repository's newest timeline (never past a hole: the flush
    /// position reported from there would tell the server that WAL is safe
    /// when it is not); else the slot's restart LSN, else the server's
    /// current segment. When the archive has a hole, the end of its newest
    /// WAL is kept as the fallback for a server that no longer has the
    /// hole's WAL.
    pub(super) async fn choose_start(
        &mut self,
        conn: &mut ReplicationConnection,
        identity: &protocol::command::SystemIdentity,
        history: &[HistoryEntry],
    ) -> Result<(TimelineId, Lsn, Vec<Bytes>), Error> {
        let inv = WalInventory::scan(self.repo, self.segment_size).await?;
        if let Some(tli) = inv.newest_timeline() {
            let t = &inv.timelines[&tli];
            let contiguous = t
                .contiguous_end(self.segment_size)
                .expect("a timeline in the inventory holds WAL");
            let newest = t
                .resume_point(self.segment_size, 0)
                .expect("a timeline in the inventory holds WAL");
            if newest > contiguous {
                let missing: Vec<String> = t
                    .missing_segments()
                    .into_iter()
                    .chain(std::iter::once(
                        contiguous.segment_number(self.segment_size),
                    ))
                    .map(|n| {
                        SegmentName {
                            timeline: tli,
                            number: n,
                        }
                        .to_file_name(self.segment_size)
                    })
                    .collect();
                error!(timeline = %tli, from = %contiguous, missing = missing.join(","),
                    "the archive has a hole: streaming it again from the server to fill it");
                self.fallback_start = Some((tli, newest));
            }
            return self.start_at(history, identity, tli, contiguous).await;
        }
        self.slot_start(conn, identity, history).await
    }

    /// Starts at `lsn` on `tli`, moved along the server's history, with the
    /// bytes of a partly stored segment read back.
    pub(super) async fn start_at(
        &mut self,
        history: &[HistoryEntry],
        identity: &protocol::command::SystemIdentity,
        tli: TimelineId,
        lsn: Lsn,
    ) -> Result<(TimelineId, Lsn, Vec<Bytes>), Error> {
        let (t, lsn, moved) =
            follow_history(history, identity.timeline, tli, lsn, self.segment_size);
        if moved || lsn.is_segment_start(self.segment_size) {
            return Ok((t, lsn, Vec::new()));
        }
        let seg = SegmentName::from_lsn(t, lsn, self.segment_size);
        let prefix = read_delta_chain(self.repo, seg, self.segment_size).await?;
        let start = seg.start_lsn(self.segment_size) + prefix.len() as u64;
        info!(segment = %seg.to_file_name(self.segment_size), bytes = prefix.len(), "resuming inside a partly stored segment");
        Ok((t, start, into_pieces(prefix)))
    }

    /// A start for an empty repository: the slot's restart LSN (by
    /// READ_REPLICATION_SLOT on 15+, from `pg_replication_slots` on 14),
    /// else the server's current segment.
    async fn slot_start(
        &mut self,
        conn: &mut ReplicationConnection,
        identity: &protocol::command::SystemIdentity,
        history: &[HistoryEntry],
    ) -> Result<(TimelineId, Lsn, Vec<Bytes>), Error> {
        let slot = if conn.server_major().unwrap_or(0) >= 15 {
            conn.read_replication_slot(&self.opts.slot).await?
        } else {
            self.slot_by_sql().await
        };
        if let Some(lsn) = slot.and_then(|s| s.restart_lsn) {
            let tli = slot
                .and_then(|s| s.restart_timeline)
                .unwrap_or_else(|| timeline_of(history, identity.timeline, lsn));
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

    /// PostgreSQL 14 has no READ_REPLICATION_SLOT: the slot's restart LSN
    /// comes from an ordinary SQL session to the same server. A server that
    /// refuses the session (`pg_hba.conf` admitting replication only) leaves
    /// the start at the current segment, as before, with a warning.
    async fn slot_by_sql(&self) -> Option<protocol::command::SlotState> {
        let sql = self.opts.conninfo.for_sql();
        let read = async {
            let mut c = ReplicationConnection::connect(&sql).await?;
            let slot = c.slot_restart_lsn_by_sql(&self.opts.slot).await;
            c.terminate().await;
            slot
        };
        match read.await {
            Ok(slot) => slot,
            Err(e) => {
                warn!(slot = self.opts.slot, error = %crate::error::chain(&e),
                    "could not read the slot's restart LSN over SQL (PostgreSQL 14 has no READ_REPLICATION_SLOT): starting at the server's current segment");
                None
            }
        }
    }
}

/// The timeline `lsn` lies on in the history of `current`: the first
/// ancestor whose switch point is past it, else `current`.
fn timeline_of(history: &[HistoryEntry], current: TimelineId, lsn: Lsn) -> TimelineId {
    history
        .iter()
        .find(|e| lsn < e.switch_lsn)
        .map_or(current, |e| e.timeline)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_lsn_lies_on_the_timeline_whose_switch_is_past_it() {
        let t = |n| TimelineId::new(n).unwrap();
        let history = [
            HistoryEntry {
                timeline: t(1),
                switch_lsn: Lsn(0x3000000),
            },
            HistoryEntry {
                timeline: t(2),
                switch_lsn: Lsn(0x5000000),
            },
        ];
        assert_eq!(timeline_of(&history, t(3), Lsn(0x1000000)), t(1));
        assert_eq!(timeline_of(&history, t(3), Lsn(0x3000000)), t(2));
        assert_eq!(timeline_of(&history, t(3), Lsn(0x5000000)), t(3));
        assert_eq!(timeline_of(&[], t(1), Lsn(0x5000000)), t(1));
    }
}
