//! Building the WAL index from a listing, and the inventory `list` and the
//! metrics observer make of the index and a listing of what came after it
//! (see [`crate::format::wal_index`]).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use crate::format::wal_index::{TimelineIndex, WAL_INDEX_VERSION, WalIndex};
use crate::lsn::{Lsn, SegmentName, TimelineId};
use crate::storage::layout::{self, WalObject};
use crate::storage::{self, Repository};

use super::inventory::WalInventory;

/// Bytes of WAL below a timeline's newest object that the index leaves to
/// the listing: uploads run concurrently and within the memory budget, so
/// a hole or an open segment can change only near the end.
const UNSETTLED_BYTES: u64 = 1 << 30;
/// At least this many segments are left to the listing.
const UNSETTLED_SEGMENTS: u64 = 64;

/// The segments a listing of a timeline leaves out of the index.
fn unsettled_segments(segment_size_bytes: u64) -> u64 {
    (UNSETTLED_BYTES / segment_size_bytes.max(1)).max(UNSETTLED_SEGMENTS)
}

/// The index of `objects` (a listing of `wal/` as it stands after the run's
/// deletions): per timeline, everything up to `unsettled_segments` below
/// its newest segment.
pub fn build(
    objects: &[storage::ObjectInfo],
    expire_seq: u64,
    time: DateTime<Utc>,
    segment_size_bytes: u64,
) -> WalIndex {
    let parsed: Vec<(WalObject, u64)> = objects
        .iter()
        .filter_map(|o| layout::parse_wal_key(&o.key, segment_size_bytes).map(|w| (w, o.size)))
        .collect();
    let mut span: BTreeMap<TimelineId, (u64, u64)> = BTreeMap::new();
    for (w, _) in &parsed {
        if let Some(segment) = segment_of(w) {
            let (min, max) = span
                .entry(segment.timeline)
                .or_insert((segment.number, segment.number));
            *min = (*min).min(segment.number);
            *max = (*max).max(segment.number);
        }
    }
    let margin = unsettled_segments(segment_size_bytes);
    let mut timelines: BTreeMap<TimelineId, TimelineIndex> = span
        .iter()
        .filter_map(|(&tli, &(min, max))| {
            let through = max.checked_sub(margin).filter(|t| *t >= min)?;
            Some((
                tli,
                TimelineIndex {
                    timeline: tli.get(),
                    through,
                    complete: Vec::new(),
                    deltas: Vec::new(),
                    stored_bytes: 0,
                },
            ))
        })
        .collect();
    let mut complete: BTreeMap<TimelineId, Vec<u64>> = BTreeMap::new();
    for (w, size) in &parsed {
        let Some(segment) = segment_of(w) else {
            continue;
        };
        let Some(t) = timelines.get_mut(&segment.timeline) else {
            continue;
        };
        if segment.number > t.through {
            continue;
        }
        t.stored_bytes += size;
        match *w {
            WalObject::Segment { .. } => complete
                .entry(segment.timeline)
                .or_default()
                .push(segment.number),
            WalObject::Delta { start, end, .. } => t.deltas.push((segment.number, start, end)),
            WalObject::History { .. } => {}
        }
    }
    for (tli, t) in &mut timelines {
        let mut numbers = complete.remove(tli).unwrap_or_default();
        numbers.sort_unstable();
        numbers.dedup();
        for n in numbers {
            match t.complete.last_mut() {
                Some((_, last)) if *last + 1 == n => *last = n,
                _ => t.complete.push((n, n)),
            }
        }
        t.deltas.sort_unstable();
    }
    WalIndex {
        version: WAL_INDEX_VERSION,
        expire_seq,
        time,
        wal_segment_size: segment_size_bytes,
        timelines: timelines.into_values().collect(),
    }
}

fn segment_of(w: &WalObject) -> Option<SegmentName> {
    match *w {
        WalObject::Segment { segment } | WalObject::Delta { segment, .. } => Some(segment),
        WalObject::History { .. } => None,
    }
}

/// The first key after every object of segment `through` (the segment and
/// its deltas, `….d/…`): `.d0` sorts after `.d/`, and before the next
/// segment's name.
fn key_after(timeline: TimelineId, through: u64, segment_size_bytes: u64) -> String {
    let segment = SegmentName {
        timeline,
        number: through,
    };
    format!("{}.d0", layout::segment_key(segment, segment_size_bytes))
}

impl WalInventory {
    /// The inventory from `index` and a listing of each timeline after the
    /// part it covers (S3's `StartAfter`): one listing of the `wal/` folder
    /// and one per timeline, whose cost follows the WAL written since the
    /// index. A timeline the folder listing does not show is left out, index
    /// or not.
    ///
    /// # Errors
    /// Store errors.
    pub async fn scan_indexed(
        repo: &Repository,
        segment_size_bytes: u64,
        index: &WalIndex,
        floor: Option<Lsn>,
    ) -> Result<(Self, usize), storage::Error> {
        let (folders, mut objects) = repo.list_folders(layout::WAL_PREFIX).await?;
        let by_timeline: BTreeMap<u32, &TimelineIndex> =
            index.timelines.iter().map(|t| (t.timeline, t)).collect();
        let mut used = Vec::new();
        for folder in folders {
            let Some(timeline) = layout::wal_folder_timeline(&folder) else {
                continue;
            };
            let covered = by_timeline.get(&timeline.get()).copied();
            let after = covered.map(|t| key_after(timeline, t.through, segment_size_bytes));
            objects.extend(repo.list_after(&folder, after.as_deref()).await?);
            used.extend(covered.map(|t| (timeline, t)));
        }
        let listed = objects.len();
        let mut inv = Self::from_listing(&objects, None, segment_size_bytes);
        for (timeline, t) in used {
            let held = inv.timelines.entry(timeline).or_default();
            for &(first, last) in &t.complete {
                held.complete.extend(first..=last);
            }
            for &(segment, start, end) in &t.deltas {
                held.deltas.entry(segment).or_default().push((start, end));
            }
            held.stored_bytes += t.stored_bytes;
        }
        inv.set_floor(floor, segment_size_bytes);
        Ok((inv, listed))
    }
}

/// How [`WalInventory::scan_latest`] read the archive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScanSource {
    /// When the expire run whose index was used listed `wal/`; `None` for
    /// a full listing.
    pub index_time: Option<DateTime<Utc>>,
    /// WAL objects listed from the store (the rest came from the index).
    pub listed_objects: usize,
}

/// Which step of [`WalInventory::scan_latest`] failed.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    /// The newest expire run's index is there but does not open, parse or
    /// hold together.
    #[error("the WAL index ({}) is unusable", layout::WAL_INDEX)]
    Index(#[source] storage::Error),
    /// Reading the expire record or listing failed.
    #[error(transparent)]
    Store(#[from] storage::Error),
}

impl WalInventory {
    /// The whole archive's inventory, with the newest expire run's floor:
    /// from that run's WAL index and a listing after it when `use_index`
    /// and the index belongs to that run (an index of an interrupted run,
    /// or an older copy put back, is ignored), else from a listing of every
    /// WAL object.
    ///
    /// # Errors
    /// [`ScanError::Index`] for an index that is there and unusable; store
    /// errors.
    pub async fn scan_latest(
        repo: &Repository,
        segment_size_bytes: u64,
        use_index: bool,
    ) -> Result<(Self, ScanSource), ScanError> {
        let record = repo.latest_expire_record().await?;
        let floor = record.as_ref().and_then(|(_, r)| r.floor_lsn);
        let index = match &record {
            Some((seq, _)) if use_index => repo
                .read_wal_index(*seq, segment_size_bytes)
                .await
                .map_err(ScanError::Index)?,
            _ => None,
        };
        if let Some(index) = index {
            let (inv, listed) = Self::scan_indexed(repo, segment_size_bytes, &index, floor).await?;
            return Ok((
                inv,
                ScanSource {
                    index_time: Some(index.time),
                    listed_objects: listed,
                },
            ));
        }
        let objects = repo.list(layout::WAL_PREFIX).await?;
        let inv = Self::from_listing(&objects, floor, segment_size_bytes);
        Ok((
            inv,
            ScanSource {
                index_time: None,
                listed_objects: objects.len(),
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::summary::summarize;

    fn object(key: String, size: u64) -> storage::ObjectInfo {
        storage::ObjectInfo {
            key,
            size,
            last_modified: Utc::now(),
        }
    }

    /// A listing with a hole, leftover deltas, a delta-only open segment
    /// and two timelines, one too short to index.
    fn listing(sz: u64) -> Vec<storage::ObjectInfo> {
        let seg = |tli: u32, n: u64| SegmentName {
            timeline: TimelineId::new(tli).unwrap(),
            number: n,
        };
        let mut out = Vec::new();
        for n in (3..300).filter(|n| *n != 40 && *n != 41) {
            out.push(object(layout::segment_key(seg(1, n), sz), 10 + n));
        }
        out.push(object(layout::delta_key(seg(1, 41), 0, 8, sz), 3));
        out.push(object(layout::delta_key(seg(1, 299), 0, 4, sz), 2));
        out.push(object(layout::delta_key(seg(1, 300), 0, 6, sz), 2));
        out.push(object(layout::history_key(TimelineId::new(2).unwrap()), 1));
        for n in 299..360 {
            out.push(object(layout::segment_key(seg(2, n), sz), 7));
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        out
    }

    #[test]
    fn index_covers_all_but_the_newest_segments() {
        let sz = 1 << 24;
        let ix = build(&listing(sz), 4, Utc::now(), sz);
        assert_eq!(ix.check(sz), Ok(()));
        assert_eq!(ix.expire_seq, 4);
        // Timeline 2 spans fewer segments than are left to the listing.
        assert_eq!(ix.timelines.len(), 1);
        let t = &ix.timelines[0];
        assert_eq!(t.through, 300 - 64);
        assert_eq!(t.complete, vec![(3, 39), (42, 236)]);
        assert_eq!(t.deltas, vec![(41, 0, 8)]);
        let expected: u64 = (3..=236)
            .filter(|n| *n != 40 && *n != 41)
            .map(|n| 10 + n)
            .sum();
        assert_eq!(t.stored_bytes, expected + 3);
    }

    #[test]
    fn keys_after_the_index_are_the_rest_of_the_listing() {
        let sz = 1 << 24;
        let all = listing(sz);
        let ix = build(&all, 1, Utc::now(), sz);
        let t = &ix.timelines[0];
        let after = key_after(TimelineId::FIRST, t.through, sz);
        let seg = |n| {
            layout::segment_key(
                SegmentName {
                    timeline: TimelineId::FIRST,
                    number: n,
                },
                sz,
            )
        };
        // The segment covered, its deltas, then the next segment.
        assert!(seg(236) < after);
        assert!(format!("{}.d/00000000-00000008", seg(236)) < after);
        assert!(after < seg(237));
        // The index and what sorts after it give the listing's inventory.
        let rest: Vec<_> = all
            .iter()
            .filter(|o| !o.key.starts_with("wal/00000001/") || o.key.as_str() > after.as_str())
            .cloned()
            .collect();
        let mut merged = WalInventory::from_listing(&rest, None, sz);
        let held = merged.timelines.entry(TimelineId::FIRST).or_default();
        for &(a, b) in &t.complete {
            held.complete.extend(a..=b);
        }
        for &(s, a, b) in &t.deltas {
            held.deltas.entry(s).or_default().push((a, b));
        }
        held.stored_bytes += t.stored_bytes;
        let whole = WalInventory::from_listing(&all, None, sz);
        assert_eq!(
            serde_json::to_value(summarize(&merged, sz)).unwrap(),
            serde_json::to_value(summarize(&whole, sz)).unwrap()
        );
    }

    #[test]
    fn small_segments_leave_a_gigabyte_to_the_listing() {
        assert_eq!(unsettled_segments(1 << 20), 1024);
        assert_eq!(unsettled_segments(1 << 24), 64);
        assert_eq!(unsettled_segments(1 << 30), 64);
    }
}
