//! What WAL a repository holds, per timeline, and the one walk that finds
//! where WAL held without a hole ends: along a path of timelines from a
//! start LSN. Backups (their WAL range), restore plans, `verify`, `list` and
//! the stream's resume point all ask this walk, never a walk of their own.

use std::collections::{BTreeMap, BTreeSet};

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
    /// Segments below this number were removed by retention (except kept
    /// backups' own ranges): their absence is no gap.
    pub floor_segment: u64,
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

    /// Where the archive of this timeline begins for gap checks: the first
    /// segment held at or above the retention floor (below it, only kept
    /// backups' ranges remain, by design), else the first held.
    pub fn chain_start(&self) -> Option<u64> {
        let floor = self.floor_segment;
        let c = self.complete.range(floor..).next().copied();
        let d = self.deltas.range(floor..).next().map(|(n, _)| *n);
        match (c, d) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (None, None) => self.min_segment(),
            (a, b) => a.or(b),
        }
    }

    /// The end of the WAL held without a hole from the chain's start on:
    /// the point up to which this timeline can be replayed.
    pub fn contiguous_end(&self, segment_size_bytes: u64) -> Option<Lsn> {
        Some(self.held_end_from(self.chain_start()?, segment_size_bytes))
    }

    /// The highest segment number with any object.
    pub fn max_segment(&self) -> Option<u64> {
        let c = self.complete.iter().next_back().copied();
        let d = self.deltas.keys().next_back().copied();
        c.max(d)
    }

    /// Where the WAL held without a hole from the start of segment `first`
    /// ends: past every complete segment from `first` on, then through the
    /// delta chain of the first segment that is not complete. This is the
    /// one walk every gap check uses.
    pub fn held_end_from(&self, first: u64, segment_size_bytes: u64) -> Lsn {
        let mut s = first;
        while self.complete.contains(&s) {
            s += 1;
        }
        Lsn(s * segment_size_bytes + self.delta_chain_end(s))
    }

    /// Where the WAL of this timeline stops, looking for holes only within
    /// `window` segments below the highest one (uploads run concurrently, so a
    /// crash can leave a hole only there). Older holes are history.
    pub fn resume_point(&self, segment_size_bytes: u64, window: u64) -> Option<Lsn> {
        let max = self.max_segment()?;
        let low = max.saturating_sub(window).max(self.chain_start()?);
        Some(self.held_end_from(low, segment_size_bytes))
    }

    /// Segment numbers from the chain's start to before the last one held
    /// that are not held whole: no object at all, or only deltas (a segment
    /// before the last must be complete for replay to pass it). The last may
    /// be open (deltas).
    pub fn missing_segments(&self) -> Vec<u64> {
        let (Some(first), Some(max)) = (self.chain_start(), self.max_segment()) else {
            return Vec::new();
        };
        (first..max)
            .filter(|n| !self.complete.contains(n))
            .collect()
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
    /// The retention floor, from the newest expire record.
    pub floor: Option<Lsn>,
}

impl WalInventory {
    /// Lists the `wal/` prefix of the repository.
    ///
    /// # Errors
    /// Store errors.
    pub async fn scan(repo: &Repository, segment_size_bytes: u64) -> Result<Self, storage::Error> {
        let objects = repo.list(layout::WAL_PREFIX).await?;
        let floor = repo
            .latest_expire_record()
            .await?
            .and_then(|(_, r)| r.floor_lsn);
        Ok(Self::from_listing(&objects, floor, segment_size_bytes))
    }

    /// What a restore from a backup that starts in segment `start` needs,
    /// without listing the whole archive: the history files, `start`'s
    /// timeline from that segment on, and each later timeline. One listing
    /// of the `wal/` folder (history files and timeline folders), then one
    /// listing per timeline that starts at a key (S3's `StartAfter`): its
    /// cost follows the WAL after the backup, not the archive's size.
    /// Earlier timelines and WAL before `start` are left out.
    ///
    /// # Errors
    /// Store errors.
    pub async fn scan_from(
        repo: &Repository,
        segment_size_bytes: u64,
        start: SegmentName,
    ) -> Result<Self, storage::Error> {
        let (folders, mut objects) = repo.list_folders(layout::WAL_PREFIX).await?;
        let mut earlier = Vec::new();
        for folder in folders {
            let Some(timeline) = layout::wal_folder_timeline(&folder) else {
                continue;
            };
            if timeline < start.timeline {
                // Known to hold WAL, not listed.
                earlier.push(timeline);
                continue;
            }
            // Keys after the previous segment's: `start` and its deltas on.
            let after = (timeline == start.timeline && start.number > 0).then(|| {
                layout::segment_key(
                    SegmentName {
                        timeline,
                        number: start.number - 1,
                    },
                    segment_size_bytes,
                )
            });
            objects.extend(repo.list_after(&folder, after.as_deref()).await?);
        }
        let floor = repo
            .latest_expire_record()
            .await?
            .and_then(|(_, r)| r.floor_lsn);
        let mut inv = Self::from_listing(&objects, floor, segment_size_bytes);
        for timeline in earlier {
            inv.timelines.entry(timeline).or_default();
        }
        Ok(inv)
    }

    /// The inventory of a `wal/` listing, with the retention floor.
    pub fn from_listing(
        objects: &[storage::ObjectInfo],
        floor: Option<Lsn>,
        segment_size_bytes: u64,
    ) -> Self {
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
        inv.set_floor(floor, segment_size_bytes);
        inv
    }

    /// Sets the retention floor on the inventory and each timeline.
    pub fn set_floor(&mut self, floor: Option<Lsn>, segment_size_bytes: u64) {
        self.floor = floor;
        if let Some(floor) = floor {
            for t in self.timelines.values_mut() {
                t.floor_segment = floor.segment_number(segment_size_bytes);
            }
        }
    }

    /// The highest timeline holding WAL.
    pub fn newest_timeline(&self) -> Option<TimelineId> {
        self.timelines.keys().next_back().copied()
    }
}

/// One timeline on a replay path: replay enters it at `begin` and leaves
/// it at `end` for the next step (`None` for the last).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PathStep {
    /// The timeline.
    pub timeline: TimelineId,
    /// Where replay enters it (a backup's start, or a switch point).
    pub begin: Lsn,
    /// Where it forks to the next step (`None` for the target timeline).
    pub end: Option<Lsn>,
}

/// The step of `path` recovery reads segment `n` from: the newest one that
/// had begun by then.
///
/// # Panics
/// If `path` is empty.
pub fn step_at(path: &[PathStep], n: u64, segment_size_bytes: u64) -> PathStep {
    *path
        .iter()
        .rev()
        .find(|s| s.begin.segment_number(segment_size_bytes) <= n)
        .unwrap_or(&path[0])
}

/// Where the walk along a path stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WalkEnd {
    /// The end of the WAL held without a hole.
    pub end: Lsn,
    /// The step the walk stopped on.
    pub step: PathStep,
}

impl WalkEnd {
    /// The segment where the WAL stops (the first one missing, or partly held).
    pub fn segment(&self, segment_size_bytes: u64) -> SegmentName {
        SegmentName::from_lsn(self.step.timeline, self.end, segment_size_bytes)
    }
}

impl WalInventory {
    /// Walks the segments from `start` along `path` the way recovery reads
    /// them: each segment from the newest step that had begun by then (the
    /// segment holding a switch point comes from the new timeline, whose copy
    /// holds the old bytes up to the switch), and returns where the WAL held
    /// without a hole ends.
    ///
    /// # Panics
    /// If `path` is empty.
    pub fn walk(&self, path: &[PathStep], start: Lsn, segment_size_bytes: u64) -> WalkEnd {
        let mut n = start.segment_number(segment_size_bytes);
        loop {
            let step = step_at(path, n, segment_size_bytes);
            let held = self.timelines.get(&step.timeline);
            if held.is_some_and(|t| t.complete.contains(&n)) {
                n += 1;
                continue;
            }
            let partial = held.map_or(0, |t| t.delta_chain_end(n));
            return WalkEnd {
                end: Lsn(n * segment_size_bytes + partial),
                step,
            };
        }
    }

    /// The first segment of `[start, end)` on `timeline` that the
    /// repository lacks (the last may be held as deltas reaching `end`).
    pub fn first_missing(
        &self,
        timeline: TimelineId,
        start: Lsn,
        end: Lsn,
        segment_size_bytes: u64,
    ) -> Option<SegmentName> {
        let path = [PathStep {
            timeline,
            begin: start,
            end: None,
        }];
        let reached = self.walk(&path, start, segment_size_bytes);
        (reached.end < end).then(|| reached.segment(segment_size_bytes))
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

    #[test]
    fn holes_below_the_retention_floor_are_no_gaps() {
        let sz = 16;
        let mut t = TimelineWal::default();
        // A pinned backup's range (2, 3), then the archive from 9 on.
        t.complete.extend([2, 3, 9, 10, 12]);
        t.deltas.insert(13, vec![(0, 5)]);
        assert_eq!(t.missing_segments(), [4, 5, 6, 7, 8, 11]);
        t.floor_segment = 9;
        assert_eq!(t.chain_start(), Some(9));
        assert_eq!(t.missing_segments(), [11]);
        assert_eq!(t.contiguous_end(sz), Some(Lsn(11 * sz)));
        t.complete.insert(11);
        assert_eq!(t.contiguous_end(sz), Some(Lsn(13 * sz + 5)));
        // The floor above everything held: the chain starts at the first held.
        t.floor_segment = 20;
        assert_eq!(t.chain_start(), Some(2));
    }
}
