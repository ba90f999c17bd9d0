//! The WAL part of `walvault list`: per timeline, the range held, its end
//! without a hole, the newest delta and the segments missing.

use serde::Serialize;

use crate::lsn::{Lsn, SegmentName, TimelineId};

use super::inventory::WalInventory;

/// `walvault list --json`: one timeline.
#[derive(Debug, Serialize)]
pub struct TimelineSummary {
    /// Timeline id.
    pub timeline: TimelineId,
    /// First WAL LSN held.
    pub start_lsn: Lsn,
    /// End of the WAL held without a hole from `start_lsn` (deltas included):
    /// replay on this timeline can reach this point.
    pub end_lsn: Lsn,
    /// End of the newest WAL held anywhere on this timeline (past a hole, if any).
    pub newest_lsn: Lsn,
    /// First segment file name.
    pub first_segment: String,
    /// Last segment file name (complete or partial).
    pub last_segment: String,
    /// Number of complete segments.
    pub complete_segments: usize,
    /// Segments held only as deltas.
    pub partial_segments: usize,
    /// End of the newest delta, if the last segment is partial.
    pub newest_delta_end_lsn: Option<Lsn>,
    /// Segment numbers missing between first and last.
    pub missing_segments: Vec<String>,
    /// Whether the history file is stored (timelines ≥ 2).
    pub has_history: bool,
    /// Stored (sealed) bytes.
    pub stored_bytes: u64,
}

/// `walvault list --json`: the WAL part.
#[derive(Debug, Serialize)]
pub struct WalSummary {
    /// WAL segment size in bytes.
    pub wal_segment_size: u64,
    /// Timelines, oldest first.
    pub timelines: Vec<TimelineSummary>,
    /// Timelines with stored history files.
    pub history_files: Vec<String>,
}

/// Summarises the inventory for `list`.
pub fn summarize(inv: &WalInventory, segment_size_bytes: u64) -> WalSummary {
    let mut timelines = Vec::new();
    for (&tli, t) in &inv.timelines {
        let Some(max) = t.max_segment() else { continue };
        let first = t
            .complete
            .iter()
            .next()
            .copied()
            .into_iter()
            .chain(t.deltas.keys().next().copied())
            .min()
            .unwrap_or(max);
        let name = |n: u64| {
            SegmentName {
                timeline: tli,
                number: n,
            }
            .to_file_name(segment_size_bytes)
        };
        let start = Lsn(first * segment_size_bytes
            + if t.complete.contains(&first) {
                0
            } else {
                t.deltas[&first].iter().map(|r| r.0).min().unwrap_or(0)
            });
        let newest = if t.complete.contains(&max) {
            Lsn((max + 1) * segment_size_bytes)
        } else {
            Lsn(max * segment_size_bytes + t.delta_chain_end(max))
        };
        let end = t.contiguous_end(segment_size_bytes).unwrap_or(start);
        let newest_delta_end = (!t.complete.contains(&max)).then_some(newest);
        let missing = t.missing_segments().into_iter().map(name).collect();
        let partial = t.deltas.keys().filter(|n| !t.complete.contains(n)).count();
        timelines.push(TimelineSummary {
            timeline: tli,
            start_lsn: start,
            end_lsn: end,
            newest_lsn: newest,
            first_segment: name(first),
            last_segment: name(max),
            complete_segments: t.complete.len(),
            partial_segments: partial,
            newest_delta_end_lsn: newest_delta_end,
            missing_segments: missing,
            has_history: tli == TimelineId::FIRST || inv.histories.contains(&tli),
            stored_bytes: t.stored_bytes,
        });
    }
    WalSummary {
        wal_segment_size: segment_size_bytes,
        timelines,
        history_files: inv
            .histories
            .iter()
            .map(|t| crate::lsn::history_file_name(*t))
            .collect(),
    }
}
