//! The WAL held in a repository: what is there, where it ends, and reading a
//! segment back (assembling deltas when the segment is not complete).

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use serde::Serialize;

use crate::lsn::{Lsn, SegmentName, TimelineId};
use crate::storage::layout::{self, WalObject};
use crate::storage::{self, Repository};

/// The WAL of one timeline in the repository.
#[derive(Clone, Debug, Default)]
pub struct TimelineWal {
    /// Complete segments, by number.
    pub complete: BTreeSet<u64>,
    /// Delta ranges by segment number: (start, end) offsets.
    pub deltas: BTreeMap<u64, Vec<(u64, u64)>>,
    /// Stored bytes of this timeline's objects.
    pub stored_bytes: u64,
}

impl TimelineWal {
    /// End offset of the delta chain of `segment` that is contiguous from 0.
    pub fn delta_chain_end(&self, segment: u64) -> u64 {
        let Some(ranges) = self.deltas.get(&segment) else {
            return 0;
        };
        chain_end(ranges)
    }

    /// The lowest segment number with any object.
    pub fn min_segment(&self) -> Option<u64> {
        let c = self.complete.iter().next().copied();
        let d = self.deltas.keys().next().copied();
        match (c, d) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The end of the WAL held without a hole from the first segment on:
    /// the point up to which this timeline can be replayed.
    pub fn contiguous_end(&self, segment_size_bytes: u64) -> Option<Lsn> {
        let mut s = self.min_segment()?;
        while self.complete.contains(&s) {
            s += 1;
        }
        Some(Lsn(s * segment_size_bytes + self.delta_chain_end(s)))
    }

    /// The highest segment number with any object.
    pub fn max_segment(&self) -> Option<u64> {
        let c = self.complete.iter().next_back().copied();
        let d = self.deltas.keys().next_back().copied();
        c.max(d)
    }

    /// Where the WAL of this timeline stops, looking for holes only within
    /// `window` segments below the highest one (uploads run concurrently, so a
    /// crash can leave a hole only there). Older holes are history.
    pub fn resume_point(&self, segment_size_bytes: u64, window: u64) -> Option<Lsn> {
        let max = self.max_segment()?;
        let low = max.saturating_sub(window);
        let lowest_held = self
            .complete
            .iter()
            .next()
            .copied()
            .into_iter()
            .chain(self.deltas.keys().next().copied())
            .min()
            .unwrap_or(max);
        for s in low.max(lowest_held)..=max {
            if !self.complete.contains(&s) {
                return Some(Lsn(s * segment_size_bytes + self.delta_chain_end(s)));
            }
        }
        Some(Lsn((max + 1) * segment_size_bytes))
    }
}

fn chain_end(ranges: &[(u64, u64)]) -> u64 {
    let mut sorted = ranges.to_vec();
    sorted.sort_unstable();
    let mut end = 0;
    for (s, e) in sorted {
        if s > end {
            break;
        }
        end = end.max(e);
    }
    end
}

/// Everything WAL-related in a repository.
#[derive(Clone, Debug, Default)]
pub struct WalInventory {
    /// Per timeline.
    pub timelines: BTreeMap<TimelineId, TimelineWal>,
    /// Timelines with a stored history file.
    pub histories: BTreeSet<TimelineId>,
}

impl WalInventory {
    /// Lists the `wal/` prefix of the repository.
    ///
    /// # Errors
    /// Store errors.
    pub async fn scan(repo: &Repository, segment_size_bytes: u64) -> Result<Self, storage::Error> {
        let objects = repo.list(layout::WAL_PREFIX).await?;
        let mut inv = WalInventory::default();
        for o in objects {
            match layout::parse_wal_key(&o.key, segment_size_bytes) {
                Some(WalObject::Segment { segment }) => {
                    let t = inv.timelines.entry(segment.timeline).or_default();
                    t.complete.insert(segment.number);
                    t.stored_bytes += o.size;
                }
                Some(WalObject::Delta {
                    segment,
                    start,
                    end,
                }) => {
                    let t = inv.timelines.entry(segment.timeline).or_default();
                    t.deltas
                        .entry(segment.number)
                        .or_default()
                        .push((start, end));
                    t.stored_bytes += o.size;
                }
                Some(WalObject::History { timeline }) => {
                    inv.histories.insert(timeline);
                }
                None => {}
            }
        }
        Ok(inv)
    }

    /// The highest timeline holding WAL.
    pub fn newest_timeline(&self) -> Option<TimelineId> {
        self.timelines.keys().next_back().copied()
    }
}

/// Reads back the bytes `[0, chain end)` of a segment from its deltas.
///
/// # Errors
/// Store or integrity errors (naming the object).
pub async fn read_delta_chain(
    repo: &Repository,
    segment: SegmentName,
    segment_size_bytes: u64,
) -> Result<Vec<u8>, storage::Error> {
    let objects = repo
        .list(&layout::delta_prefix(segment, segment_size_bytes))
        .await?;
    let mut ranges: Vec<(u64, u64, String)> = objects
        .into_iter()
        .filter_map(
            |o| match layout::parse_wal_key(&o.key, segment_size_bytes) {
                Some(WalObject::Delta { start, end, .. }) => Some((start, end, o.key)),
                _ => None,
            },
        )
        .collect();
    ranges.sort();
    let mut out: Vec<u8> = Vec::new();
    for (start, end, key) in ranges {
        let have = out.len() as u64;
        if start > have {
            break;
        }
        if end <= have {
            continue;
        }
        let Some(bytes) = repo.get_opened(&key).await? else {
            // Deleted meanwhile: the complete segment replaced it.
            break;
        };
        if bytes.len() as u64 != end - start {
            return Err(storage::Error::BadManifest {
                key,
                reason: format!("holds {} bytes, its name says {}", bytes.len(), end - start),
            });
        }
        out.extend_from_slice(&bytes[(have - start) as usize..]);
    }
    Ok(out)
}

/// A WAL file as `restore_command` must deliver it.
#[derive(Debug)]
pub enum FetchedWal {
    /// A complete segment.
    Complete(Vec<u8>),
    /// A segment assembled from deltas: `known` bytes, then zeros to the segment size.
    Partial {
        /// The segment, zero-padded to full size.
        bytes: Vec<u8>,
        /// How many bytes came from the archive.
        known: u64,
    },
    /// A history file.
    History(Vec<u8>),
}

/// Fetches a segment (complete, or assembled from deltas and zero-padded) or
/// a history file; `None` when the archive does not have it.
///
/// # Errors
/// Store or integrity errors.
pub async fn fetch_wal_file(
    repo: &Repository,
    file: crate::lsn::WalFileName,
    segment_size_bytes: u64,
) -> Result<Option<FetchedWal>, storage::Error> {
    match file {
        crate::lsn::WalFileName::History(tli) => Ok(repo
            .get_opened(&layout::history_key(tli))
            .await?
            .map(FetchedWal::History)),
        crate::lsn::WalFileName::Segment(seg) => {
            let key = layout::segment_key(seg, segment_size_bytes);
            if let Some(bytes) = repo.get_opened(&key).await? {
                if bytes.len() as u64 != segment_size_bytes {
                    return Err(storage::Error::BadManifest {
                        key,
                        reason: format!(
                            "segment holds {} bytes, expected {segment_size_bytes}",
                            bytes.len()
                        ),
                    });
                }
                return Ok(Some(FetchedWal::Complete(bytes)));
            }
            let mut bytes = read_delta_chain(repo, seg, segment_size_bytes).await?;
            if bytes.is_empty() {
                // The complete segment may have landed while we listed deltas.
                return Ok(repo.get_opened(&key).await?.map(FetchedWal::Complete));
            }
            let known = bytes.len() as u64;
            bytes.resize(segment_size_bytes as usize, 0);
            Ok(Some(FetchedWal::Partial { bytes, known }))
        }
    }
}

/// `walvault list --json`: one timeline.
#[derive(Debug, Serialize)]
pub struct TimelineSummary {
    /// Timeline id.
    pub timeline: TimelineId,
    /// First WAL LSN held.
    pub start_lsn: String,
    /// End of the WAL held without a hole from `start_lsn` (deltas included):
    /// replay on this timeline can reach this point.
    pub end_lsn: String,
    /// End of the newest WAL held anywhere on this timeline (past a hole, if any).
    pub newest_lsn: String,
    /// First segment file name.
    pub first_segment: String,
    /// Last segment file name (complete or partial).
    pub last_segment: String,
    /// Number of complete segments.
    pub complete_segments: usize,
    /// Segments held only as deltas.
    pub partial_segments: usize,
    /// End of the newest delta, if the last segment is partial.
    pub newest_delta_end_lsn: Option<String>,
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
        let newest_delta_end = (!t.complete.contains(&max)).then(|| newest.to_string());
        let missing = (first..=max)
            .filter(|n| !t.complete.contains(n) && !t.deltas.contains_key(n))
            .map(name)
            .collect();
        let partial = t.deltas.keys().filter(|n| !t.complete.contains(n)).count();
        timelines.push(TimelineSummary {
            timeline: tli,
            start_lsn: start.to_string(),
            end_lsn: end.to_string(),
            newest_lsn: newest.to_string(),
            first_segment: name(first),
            last_segment: name(max),
            complete_segments: t.complete.len(),
            partial_segments: partial,
            newest_delta_end_lsn: newest_delta_end,
            missing_segments: missing,
            has_history: tli == 1 || inv.histories.contains(&tli),
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

/// Keeps `Bytes` out of the public API of callers that only need a Vec.
pub fn into_pieces(bytes: Vec<u8>) -> Vec<Bytes> {
    if bytes.is_empty() {
        Vec::new()
    } else {
        vec![Bytes::from(bytes)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resume_point_finds_recent_holes_only() {
        let sz = 16;
        let mut t = TimelineWal::default();
        t.complete.extend([1, 2, 3, 5, 6, 8]);
        t.deltas.insert(9, vec![(0, 4), (4, 10), (12, 14)]);
        // Hole at 7 within the window: resume there.
        assert_eq!(t.resume_point(sz, 4), Some(Lsn(7 * sz)));
        t.complete.insert(7);
        // Hole at 4 is older than the window: history.
        assert_eq!(t.resume_point(sz, 4), Some(Lsn(9 * sz + 10)));
        t.complete.insert(9);
        assert_eq!(t.resume_point(sz, 4), Some(Lsn(10 * sz)));
        assert_eq!(TimelineWal::default().resume_point(sz, 4), None);
    }
}
